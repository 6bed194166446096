"""The one device bridge: how logits leave an accelerator and sampled ids go back.

The sampling API (`sample`, `probs`, `Sampler`), the generate loop and `tokensampler.hf` all
move tensors between a device and the host through `BRIDGE`:

- `DeviceBridge.to_host` copies a device tensor (the (B, V) logits) in its own dtype
  (bfloat16 stays bfloat16) into a host buffer that is reused for that (shape, dtype) on the
  calling thread, pinned when the device needs it and torch can pin (CUDA, XPU), and then
  waits for the copy with the synchronization that is right for the device type
  (`sync_rule`): the current CUDA stream, ``torch.mps.synchronize()``,
  ``torch.xpu.synchronize(device)``, or, for any other device type, a blocking copy. A CPU
  tensor is returned as is: no copy at all.
- `DeviceBridge.to_device` sends host arrays (the outputs the caller asked for, nothing
  else) to a device in ONE copy: they are packed into one reused host buffer, copied, and
  handed back as views of the device buffer.
- `DeviceBridge.counters` counts the device->host copies, the host->device copies and the
  synchronizations (`reset_counters` starts again), and `DeviceBridge.pretend` is the test
  switch: inside it, CPU tensors take the device code path (copies, buffers, the sync rule
  of the pretended device type), so that tests count copies and syncs on a machine without
  an accelerator. Under it, a non-blocking device->host copy only lands in the host buffer
  at the next synchronization (what an accelerator does), so a missing sync reads garbage.

A host tensor `to_host` returns is valid until the next `to_host` of the same shape and
dtype on the same thread; nothing in tokensampler keeps one longer than a call.

torch stays optional: this module only looks at it when the caller already imported it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BRIDGE", "Counters", "DeviceBridge", "SyncRule", "sync_rule"]

# Host buffers kept per thread (least recently used first out): a generate loop uses one
# logits shape and one result layout; a few more cover callers that alternate batch sizes.
_MAX_BUFFERS = 8
# Each output is placed at a multiple of this many bytes in the packed host->device buffer,
# so that every slice of the device buffer can be viewed as its dtype.
_ALIGN = 8


def _torch() -> Any:
    return sys.modules.get("torch")


@dataclass(frozen=True)
class Counters:
    """What the bridge has done since the last `DeviceBridge.reset_counters`.

    Attributes:
        d2h: device->host copies.
        h2d: host->device copies.
        syncs: times the host waited for a device (a synchronization, or a blocking copy on
            a device type without a known synchronization).
        d2h_bytes, h2d_bytes: the bytes those copies moved.
    """

    d2h: int = 0
    h2d: int = 0
    syncs: int = 0
    d2h_bytes: int = 0
    h2d_bytes: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.d2h - other.d2h,
            self.h2d - other.h2d,
            self.syncs - other.syncs,
            self.d2h_bytes - other.d2h_bytes,
            self.h2d_bytes - other.h2d_bytes,
        )


@dataclass(frozen=True)
class SyncRule:
    """How copies to and from one device type are waited for.

    Attributes:
        name: "cuda-stream", "mps", "xpu" or "blocking-copy".
        non_blocking: whether copies are issued asynchronously (then `synchronize` must run
            before the host reads what a device->host copy wrote).
        synchronize: waits until the work queued on the device (the copy included) is done;
            None for "blocking-copy", where the copy itself waits.
    """

    name: str
    non_blocking: bool
    synchronize: Callable[[Any], None] | None


def _sync_cuda(device: Any) -> None:
    _torch().cuda.current_stream(device).synchronize()


def _sync_mps(device: Any) -> None:
    _torch().mps.synchronize()


def _sync_xpu(device: Any) -> None:
    _torch().xpu.synchronize(device)


_RULES = {
    "cuda": SyncRule("cuda-stream", True, _sync_cuda),
    "mps": SyncRule("mps", True, _sync_mps),
    "xpu": SyncRule("xpu", True, _sync_xpu),
}
_BLOCKING = SyncRule("blocking-copy", False, None)


def sync_rule(device_type: str) -> SyncRule:
    """The synchronization rule for a device type ("cuda", "mps", "xpu"; anything else gets
    blocking copies, which are complete when they return on every torch backend)."""
    return _RULES.get(device_type, _BLOCKING)


@functools.lru_cache(maxsize=32)
def _torch_dtype(dt: np.dtype[Any]) -> Any:
    return _torch().from_numpy(np.zeros(1, dtype=dt)).dtype


@functools.lru_cache(maxsize=8)
def _can_pin(device_type: str) -> bool:
    """Whether host buffers for this device type are pinned: page-locked memory is what lets
    CUDA and XPU copies run asynchronously; other devices (MPS shares memory) gain nothing."""
    torch = _torch()
    mod = getattr(torch, device_type, None) if device_type in ("cuda", "xpu") else None
    if mod is None:
        return False
    return bool(mod.is_available())


class _Slot:
    """A reused host buffer, and what must finish before it may be written again."""

    __slots__ = ("event", "host", "ticket")

    def __init__(self, host: Any) -> None:
        self.host = host
        self.event: Any = None  # CUDA: the event recorded after the last copy out of it
        self.ticket = 0  # other devices: a sync started at or after this ticket covers it


class DeviceBridge:
    """Moves tensors between devices and the host; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._d2h = self._h2d = self._syncs = self._d2h_bytes = self._h2d_bytes = 0
        # Synchronizations as tickets: one is taken when a sync starts, and `_done` is the
        # highest ticket whose sync has returned (host->device buffer reuse on MPS / XPU).
        self._next_ticket = 1
        self._done: dict[str, int] = {}
        # The test switch: the pretended device type, the callback standing in for its
        # synchronization, whether the real rule runs too, and the pending copies.
        self._pretend: str | None = None
        self._pretend_sync: Callable[[Any], None] | None = None
        self._pretend_real = False
        self._pending: list[tuple[Any, Any]] = []
        self._host_ptrs: set[int] = set()

    # ---- counters ----------------------------------------------------------------------------

    def counters(self) -> Counters:
        """A snapshot of the counters (subtract two snapshots for what happened between)."""
        with self._lock:
            return Counters(self._d2h, self._h2d, self._syncs, self._d2h_bytes, self._h2d_bytes)

    def reset_counters(self) -> None:
        """Sets every counter back to 0."""
        with self._lock:
            self._d2h = self._h2d = self._syncs = self._d2h_bytes = self._h2d_bytes = 0

    def _count(self, d2h: int = 0, h2d: int = 0, syncs: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self._d2h += d2h
            self._h2d += h2d
            self._syncs += syncs
            if d2h:
                self._d2h_bytes += nbytes
            if h2d:
                self._h2d_bytes += nbytes

    # ---- the test switch ---------------------------------------------------------------------

    @contextlib.contextmanager
    def pretend(
        self,
        device_type: str = "cuda",
        *,
        on_sync: Callable[[Any], None] | None = None,
        real_sync: bool = False,
    ) -> Iterator[DeviceBridge]:
        """Test switch: CPU tensors (other than the bridge's own host buffers) take the device
        code path of `device_type`, with `sync_rule(device_type)`.

        Args:
            device_type: the device type whose rule is followed.
            on_sync: called with the device at each synchronization the rule makes.
            real_sync: also call the rule's own synchronization (tests replace
                ``torch.mps.synchronize`` and friends by fakes); by default it is skipped,
                since the pretended device does not exist.

        Not thread-safe against other bridge users: tests only.
        """
        if self._pretend is not None:
            raise RuntimeError("DeviceBridge.pretend does not nest")
        self._pretend, self._pretend_sync, self._pretend_real = device_type, on_sync, real_sync
        try:
            yield self
        finally:
            self._pretend, self._pretend_sync, self._pretend_real = None, None, False
            self._pending.clear()

    @property
    def pretending(self) -> str | None:
        """The pretended device type, or None outside `pretend`."""
        return self._pretend

    # ---- what is a device tensor -------------------------------------------------------------

    def is_device(self, t: Any) -> bool:
        """Whether `t` (a torch tensor) must be copied to reach the host."""
        if t.device.type != "cpu":
            return True
        if self._pretend is None:
            return False
        return int(t.untyped_storage().data_ptr()) not in self._host_ptrs

    def needs_copy(self, device: Any) -> bool:
        """Whether arrays bound for `device` (a torch.device) must be copied there."""
        return device is not None and (device.type != "cpu" or self._pretend is not None)

    def _device_type(self, device: Any) -> str:
        return self._pretend if self._pretend is not None else str(device.type)

    # ---- host buffers ------------------------------------------------------------------------

    def _slot(self, key: tuple[Any, ...], make: Callable[[bool], Any], device_type: str) -> _Slot:
        slots: OrderedDict[tuple[Any, ...], _Slot] | None = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = OrderedDict()
        slot = slots.get(key)
        if slot is not None:
            slots.move_to_end(key)
            return slot
        pin = self._pretend is None and _can_pin(device_type)
        # A normal tensor even when the first call runs under torch.inference_mode (the
        # generate loops): an inference tensor could not be written outside that mode.
        with _torch().inference_mode(False):
            try:
                host = make(pin)
            except RuntimeError:  # pinning refused (no driver, limits): pageable memory works
                host = make(False)
        slot = slots[key] = _Slot(host)
        if len(slots) > _MAX_BUFFERS:
            slots.popitem(last=False)
        ptr = int(host.untyped_storage().data_ptr())
        with self._lock:
            self._host_ptrs.add(ptr)
        weakref.finalize(host, self._forget, ptr)
        return slot

    def _forget(self, ptr: int) -> None:
        with self._lock:
            self._host_ptrs.discard(ptr)

    # ---- synchronization ---------------------------------------------------------------------

    def synchronize(self, device: Any) -> None:
        """Waits for `device` with the rule of its type (counted as one sync)."""
        rule = sync_rule(self._device_type(device))
        with self._lock:
            ticket = self._next_ticket
            self._next_ticket += 1
        if self._pretend is not None:
            if self._pretend_real and rule.synchronize is not None:
                rule.synchronize(device)
            if self._pretend_sync is not None:
                self._pretend_sync(device)
            # The pretended device's non-blocking copies land now.
            for dst, src in self._pending:
                dst.copy_(src)
            self._pending.clear()
        elif rule.synchronize is not None:
            rule.synchronize(device)
        key = _key(device)
        with self._lock:
            self._done[key] = max(self._done.get(key, 0), ticket)
            self._syncs += 1

    def _copy_d2h(self, host: Any, t: Any, non_blocking: bool) -> None:
        if self._pretend is not None and non_blocking:
            # An accelerator's async copy: the host buffer only holds the data after a sync.
            if host.is_floating_point():
                host.fill_(float("nan"))
            else:
                host.fill_(-1)
            self._pending.append((host, t))
        else:
            host.copy_(t, non_blocking=non_blocking)

    # ---- the two directions ------------------------------------------------------------------

    def to_host(self, t: Any) -> Any:
        """`t` on the host, ready to read: `t` itself when it is a CPU tensor; otherwise one
        copy in `t`'s dtype into a reused host buffer, then one synchronization."""
        if not self.is_device(t):
            return t
        torch = _torch()
        device_type = self._device_type(t.device)
        rule = sync_rule(device_type)
        shape, dtype = tuple(t.shape), t.dtype
        slot = self._slot(
            ("d2h", shape, dtype),
            lambda pin: torch.empty(shape, dtype=dtype, pin_memory=pin),
            device_type,
        )
        host = slot.host
        self._copy_d2h(host, t, rule.non_blocking)
        self._count(d2h=1, nbytes=host.numel() * host.element_size())
        if rule.non_blocking:
            self.synchronize(t.device)
        else:
            self._count(syncs=1)  # the blocking copy was the wait
        return host

    def to_device(self, arrays: Sequence[np.ndarray | None], device: Any) -> list[Any]:
        """Torch tensors of `arrays` (None stays None) on `device`.

        For a device: ONE host->device copy of all of them (packed into a reused host buffer)
        and views of the device buffer back. For the CPU: `torch.from_numpy`, no copy."""
        torch = _torch()
        if not self.needs_copy(device):
            return [None if a is None else _from_numpy(torch, a) for a in arrays]
        present = [_contiguous(a) for a in arrays if a is not None]
        offsets, total = [], 0
        for a in present:
            offsets.append(total)
            total += -(-a.nbytes // _ALIGN) * _ALIGN
        if total == 0:  # nothing to move: empty tensors of the right shapes
            it = iter(present)
            return [None if a is None else _empty(torch, next(it), device) for a in arrays]
        device_type = self._device_type(device)
        rule = sync_rule(device_type)
        key = ("h2d", tuple((a.shape, a.dtype.str) for a in present))
        slot = self._slot(key, lambda pin: torch.empty(total, dtype=torch.uint8, pin_memory=pin),
                          device_type)  # fmt: skip
        self._wait_for_reuse(slot, device)
        host = slot.host.numpy()
        for a, off in zip(present, offsets):
            host[off : off + a.nbytes] = a.reshape(-1).view(np.uint8)
        dev = torch.empty(total, dtype=torch.uint8, device=device)
        dev.copy_(slot.host, non_blocking=rule.non_blocking)
        self._count(h2d=1, nbytes=total)
        if rule.non_blocking and self._pretend is None:
            self._mark_in_flight(slot, device, device_type)
        outs = []
        for a, off in zip(present, offsets):
            part = dev[off : off + a.nbytes].view(_torch_dtype(a.dtype))
            outs.append(part.view(a.shape))
        it = iter(outs)
        return [None if a is None else next(it) for a in arrays]

    def _mark_in_flight(self, slot: _Slot, device: Any, device_type: str) -> None:
        if device_type == "cuda":
            ev = _torch().cuda.Event()
            ev.record(_torch().cuda.current_stream(device))
            slot.event = ev
        else:
            with self._lock:
                slot.ticket = self._next_ticket

    def _wait_for_reuse(self, slot: _Slot, device: Any) -> None:
        """Before a host buffer is written again, the async copy out of it must be done: on
        CUDA its event; elsewhere a device sync that started after that copy (the next step's
        logits copy has made one, so this rarely waits)."""
        if slot.event is not None:
            ev, slot.event = slot.event, None
            if not ev.query():
                ev.synchronize()
                self._count(syncs=1)
        elif slot.ticket:
            with self._lock:
                covered = self._done.get(_key(device), 0) >= slot.ticket
            slot.ticket = 0
            if not covered:
                self.synchronize(device)


def _key(device: Any) -> str:
    # "mps" and "mps:0" are one device.
    return f"{device.type}:{device.index or 0}"


def _contiguous(a: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    return a if a.flags.c_contiguous else a.copy(order="C")


def _from_numpy(torch: Any, a: np.ndarray) -> Any:
    return torch.from_numpy(_contiguous(a))


def _empty(torch: Any, a: np.ndarray, device: Any) -> Any:
    return torch.empty(a.shape, dtype=_torch_dtype(a.dtype), device=device)


BRIDGE = DeviceBridge()
"""The bridge every tokensampler module uses."""
