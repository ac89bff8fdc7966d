/* edged.engine._blasshim: MLX's single-precision matrix product, routed to an OpenBLAS that edged chooses.
 *
 * MLX's Linux CPU wheel calls cblas_sgemm from a bundled reference BLAS. Loaded into the global
 * symbol scope (edged.blas), this library's cblas_sgemm answers instead and forwards to the library
 * bound with edged_blas_bind(): any OpenBLAS, including scipy-openblas32 from PyPI, whose symbols
 * carry a "scipy_" prefix. A product with one row (a decode step: one token times a weight matrix)
 * goes to cblas_sgemv, which reads the weights once; OpenBLAS's sgemm packs them first and is ~1.5x
 * slower there. Nothing else changes: the same sums, in the library's own kernels.
 */
#define _GNU_SOURCE
#include <Python.h>
#include <dlfcn.h>
#include <stdio.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
typedef void (*gemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *,
                        int);
typedef void (*gemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float, float *, int);

static gemm_fn bound_gemm;
static gemv_fn bound_gemv;
static long routed[2]; /* products sent to sgemv, to sgemm (read by the tests) */

long edged_blas_routed(int which) { return routed[which != 0]; }

/* 0 when `path` provides `<prefix>cblas_sgemm` and `<prefix>cblas_sgemv`; before any product runs. */
int edged_blas_bind(const char *path, const char *prefix) {
    char name[64];
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) return 1;
    snprintf(name, sizeof name, "%scblas_sgemm", prefix);
    gemm_fn gemm = (gemm_fn)dlsym(lib, name);
    snprintf(name, sizeof name, "%scblas_sgemv", prefix);
    gemv_fn gemv = (gemv_fn)dlsym(lib, name);
    if (gemm == NULL || gemv == NULL) return 2;
    bound_gemm = gemm;
    bound_gemv = gemv;
    return 0;
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc) {
    if (order == ROW_MAJOR && m == 1) { /* c (1 x n) = alpha * a (1 x k) . op(b) (k x n) + beta * c */
        int inc_a = trans_a == NO_TRANS ? 1 : lda;
        routed[0]++;
        if (trans_b == NO_TRANS) /* b is k x n: c = b^T a */
            bound_gemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, inc_a, beta, c, 1);
        else /* b is n x k: c = b a */
            bound_gemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, inc_a, beta, c, 1);
        return;
    }
    routed[1]++;
    bound_gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blasshim", "see edged.engine.blas", -1, NULL};

PyMODINIT_FUNC PyInit__blasshim(void) { return PyModule_Create(&module); }
