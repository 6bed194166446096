"""The models' `Linear` (tokensampler.model.common): its float32 CPU kernels (the weight on the
left for a few rows, oneDNN for more) give `F.linear`'s product to float32 rounding, against a
float64 product as the oracle, for every row count around the switch between them, with and
without bias, in 2-D and 3-D; other dtypes and autograd take `F.linear` itself.
"""

from __future__ import annotations

import platform
import warnings

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tokensampler.model import common
from tokensampler.model.common import FEW_ROWS, Linear

ROWS = sorted({0, 1, 2, 3, FEW_ROWS, FEW_ROWS + 1, 9, 33, 150})


def _layer(k: int, n: int, bias: bool, seed: int) -> Linear:
    g = torch.Generator().manual_seed(seed)
    layer = Linear(k, n, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, k, generator=g))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(n, generator=g))
    return layer


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("m", ROWS)
def test_float32_equals_the_float64_product(m: int, bias: bool) -> None:
    layer = _layer(96, 1000, bias, seed=m)
    x = torch.randn(m, 96, generator=torch.Generator().manual_seed(100 + m))
    w64 = layer.weight.double()
    b64 = None if layer.bias is None else layer.bias.double()
    want = F.linear(x.double(), w64, b64)
    with torch.inference_mode():
        got = layer(x)
        ref = F.linear(x, layer.weight, layer.bias)
    assert got.shape == (m, 1000) and got.dtype == torch.float32 and got.is_contiguous()
    # |x| ~ 1, |w| ~ 1, K = 96: sums of magnitude ~10, float32 rounding well under 1e-4.
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (1, 3), (3, 7)])
def test_leading_dims_and_strided_input(shape: tuple[int, int]) -> None:
    layer = _layer(64, 300, True, seed=1)
    # A transposed (non-contiguous) input, as attention hands its output back.
    x = torch.randn(shape[1], shape[0], 64).transpose(0, 1)
    with torch.inference_mode():
        got = layer(x)
    assert got.shape == (*shape, 300)
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_f_linear(dtype: torch.dtype) -> None:
    layer = _layer(64, 300, True, seed=2).to(dtype)
    x = torch.randn(3, 64).to(dtype)
    with torch.inference_mode():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_no_input_features_is_f_linear() -> None:
    """in_features 0 (every output is its bias): oneDNN refuses an empty weight."""
    with warnings.catch_warnings():  # torch: "Initializing zero-element tensors is a no-op"
        warnings.simplefilter("ignore", UserWarning)
        layer = _layer(0, 7, True, seed=5)
    for m in (1, 3, FEW_ROWS + 2):
        with torch.inference_mode():
            got = layer(torch.randn(m, 0))
        assert torch.equal(got, layer.bias.detach().expand(m, -1))


def test_autograd_goes_through_f_linear() -> None:
    layer = _layer(32, 50, True, seed=3)
    x = torch.randn(2, 32, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(2, -1).detach())


@pytest.mark.skipif(
    not common._ONEDNN, reason="the own kernels need x86-64 and a torch built with oneDNN"
)
@pytest.mark.parametrize(("m", "kernel"), [(1, "aten::mm"), (FEW_ROWS, "aten::mm"),
                                           (FEW_ROWS + 1, "mkldnn::_linear_pointwise")])  # fmt: skip
def test_each_row_count_takes_its_kernel(m: int, kernel: str) -> None:
    """The kernel choice itself (the products above would pass through `F.linear` too)."""
    from torch.profiler import ProfilerActivity, profile

    layer = _layer(64, 300, False, seed=4)
    x = torch.randn(m, 64)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x)
    names = {e.key for e in prof.key_averages()}
    assert kernel in names and "aten::linear" not in names, names


def test_x86_64_with_onednn_uses_the_own_kernels() -> None:
    """On the machines this was measured on (x86-64, torch's oneDNN build) the own kernels
    are on; elsewhere `Linear` is `F.linear`."""
    if platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available():
        assert common._ONEDNN
