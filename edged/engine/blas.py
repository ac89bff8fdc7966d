"""Use an optimised BLAS for MLX on Linux.

MLX's Linux CPU wheel bundles the reference BLAS. Loading OpenBLAS into the global symbol
scope before MLX is first imported makes MLX's matrix products use it instead (measured here:
~10x faster prefill for float32 weights). Must run before ``import mlx``; on macOS MLX uses
Accelerate and Metal, and nothing is done.

``auto`` prefers the OpenBLAS of the ``scipy-openblas32`` wheel (a dependency on Linux: current
kernels, no system package) reached through ``edged.engine._blasshim``, a small C extension that answers
MLX's ``cblas_sgemm`` and sends one-row products (decode steps) to ``sgemv``; measured on SmolLM2
float32 with a 1,200-token context: a decode step 89 ms -> 63 ms. Without the extension (no C
compiler at install), a system OpenBLAS is loaded globally as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform
import sys
from pathlib import Path

import structlog

log = structlog.get_logger("edged.blas")

CANDIDATES = (
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",  # Debian/Ubuntu libopenblas0-pthread
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",  # Fedora/RHEL
    "/usr/lib/libopenblas.so.0",  # Arch, Alpine
)
_loaded: str | None = None


def find_openblas() -> str | None:
    arch = platform.machine()
    for pattern in CANDIDATES:
        path = pattern.format(arch=arch)
        if Path(path).is_file():
            return path
    return ctypes.util.find_library("openblas")


def _wheel_openblas() -> str | None:
    """The library of the scipy-openblas32 wheel, if installed (its symbols carry a ``scipy_`` prefix)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return next((str(p) for p in sorted(lib.glob("libscipy_openblas*.so*"))), None)


def _through_shim(path: str, prefix: str) -> bool:
    """Bind edged's cblas_sgemm to ``path`` and put it in the global symbol scope; False if unavailable."""
    spec = importlib.util.find_spec("edged.engine._blasshim")
    if spec is None or spec.origin is None:
        return False
    shim = ctypes.CDLL(spec.origin, mode=os.RTLD_LOCAL)
    if shim.edged_blas_bind(path.encode(), prefix.encode()) != 0:
        log.warning("blas_bind_failed", path=path)
        return False
    ctypes.CDLL(spec.origin, mode=os.RTLD_GLOBAL)  # from now on MLX's products resolve here
    return True


def preload_blas(setting: str = "auto") -> str | None:
    """Route MLX's products to OpenBLAS (``auto``: the best found; ``off``; or a library path).
    Returns what is used: the library's path, with ``via edged.engine._blasshim`` when routed by the shim."""
    global _loaded
    if _loaded is not None or setting == "off" or sys.platform != "linux":
        return _loaded
    if "mlx.core" in sys.modules:
        log.warning("blas_preload_too_late", reason="mlx was imported first; the bundled reference BLAS stays")
        return None
    path = find_openblas() if setting == "auto" else setting
    if setting == "auto":
        for candidate, prefix in ((_wheel_openblas(), "scipy_"), (path, "")):
            if candidate is not None and _through_shim(candidate, prefix):
                _loaded = f"{candidate} via edged.engine._blasshim"
                log.info("blas_loaded", path=candidate, via="edged.engine._blasshim")
                return _loaded
    if path is None:
        log.warning("blas_reference", reason="no OpenBLAS found; pip install scipy-openblas32 for ~10x faster prefill")
        return None
    ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    _loaded = path
    log.info("blas_loaded", path=path, via="global")
    return path


def loaded_blas() -> str | None:
    return _loaded
