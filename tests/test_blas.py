"""MLX's float32 products on Linux go through edged.engine._blasshim to the wheel's OpenBLAS, and give the
sums numpy gives, one-row products (sent to sgemv) and wider ones (sgemm), every transposition."""

from __future__ import annotations

import ctypes
import importlib.util
import sys

import mlx.core as mx
import numpy as np
import pytest

from edged.engine.blas import loaded_blas

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="macOS uses Accelerate")


def _shim() -> ctypes.CDLL:
    spec = importlib.util.find_spec("edged.engine._blasshim")
    assert spec is not None and spec.origin, "edged.engine._blasshim was not built (is a C compiler installed?)"
    return ctypes.CDLL(spec.origin)


def test_the_wheels_openblas_is_bound_through_the_shim():
    assert (
        loaded_blas() is not None
        and "scipy_openblas" in loaded_blas()
        and loaded_blas().endswith("via edged.engine._blasshim")
    )
    resolved = ctypes.cast(ctypes.CDLL(None).cblas_sgemm, ctypes.c_void_p).value
    assert resolved == ctypes.cast(_shim().cblas_sgemm, ctypes.c_void_p).value  # the global scope answers with ours


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_products_match_numpy_and_are_routed_by_shape(rows, transpose_a, transpose_b):
    shim = _shim()
    shim.edged_blas_routed.restype = ctypes.c_long
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, 96), dtype=np.float32)
    b = rng.standard_normal((96, 200), dtype=np.float32)
    ma = mx.array(a.T.copy()).T if transpose_a else mx.array(a)  # a column-major view: transposed to BLAS
    mb = mx.array(b.T.copy()).T if transpose_b else mx.array(b)
    before = shim.edged_blas_routed(0), shim.edged_blas_routed(1)
    got = np.array(ma @ mb)
    after = shim.edged_blas_routed(0), shim.edged_blas_routed(1)
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)
    assert (after[0] - before[0], after[1] - before[1]) == ((1, 0) if rows == 1 else (0, 1))
