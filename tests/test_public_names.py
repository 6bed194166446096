"""`import tokensampler` exposes its public API and nothing else (issue #13).

Names not starting with "_" are public; the package's own submodules (``tokensampler.sampling``
and, once imported, ``hf``, ``generate``, ...) are attributes of any package and are left out.
Everything else public must be in ``__all__``: no helper imported for the package's own use
(``version``, ``PackageNotFoundError``, ``annotations``, ``np``, ...).
"""

from __future__ import annotations

import subprocess
import sys
import types

import tokensampler as ts


def _public_names(module: types.ModuleType) -> set[str]:
    own_submodule = f"{module.__name__}."
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not (
            isinstance(getattr(module, name), types.ModuleType)
            and getattr(module, name).__name__.startswith(own_submodule)
        )
    }


def test_public_names_equal_all() -> None:
    assert _public_names(ts) == {n for n in ts.__all__ if not n.startswith("_")}
    for name in ts.__all__:
        assert hasattr(ts, name), name
    assert isinstance(ts.__version__, str) and ts.__version__


def test_public_names_of_a_fresh_import() -> None:
    """The same in a new interpreter, where no other test imported anything first."""
    code = (
        "import tokensampler as ts, types; "
        "print(sorted(n for n in dir(ts) if not n.startswith('_') and not "
        "(isinstance(getattr(ts, n), types.ModuleType) and "
        "getattr(ts, n).__name__.startswith('tokensampler.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == repr(sorted(n for n in ts.__all__ if not n.startswith("_")))
