// Which GEMM dimensions may a batch enter without changing an image's bits?
// Compares a block of one OpenBLAS sgemm with the smaller call computing only that
// block, in row-major terms: rows are M (a linear layer's batch), columns N (pixels).
//   cc -O2 tools/bench/gemm_bits.c -o /tmp/gemm_bits -lopenblas && /tmp/gemm_bits
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static float *rnd(size_t n, unsigned s) { float *p = malloc(n * 4); srand(s); for (size_t i = 0; i < n; i++) p[i] = rand() / (float)RAND_MAX - 0.5f; return p; }
/* C[M,N] = A[M,K] B[K,N]: does a block of rows (or columns) of one sgemm have the
   bits of the smaller sgemm that computes only that block? */
static void rows(int M1, int M2, int N, int K) {
  float *A = rnd((size_t)M2 * K, 1), *B = rnd((size_t)K * N, 2), *C1 = calloc((size_t)M1 * N, 4), *C2 = calloc((size_t)M2 * N, 4);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M1, N, K, 1, A, K, B, N, 0, C1, N);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M2, N, K, 1, A, K, B, N, 0, C2, N);
  float worst = 0; for (int i = 0; i < M1 * N; i++) { float d = C1[i] - C2[i]; if (d < 0) d = -d; if (d > worst) worst = d; }
  printf("rows M=%d vs M=%d (N=%d K=%d): %s max diff %g\n", M1, M2, N, K, memcmp(C1, C2, (size_t)M1 * N * 4) ? "DIFFERENT" : "identical", worst);
}
static void cols(int M, int N1, int N2, int K) {
  float *A = rnd((size_t)M * K, 3), *B = rnd((size_t)K * N2, 4), *C1 = calloc((size_t)M * N1, 4), *C2 = calloc((size_t)M * N2, 4);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N1, K, 1, A, K, B, N2, 0, C1, N1);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N2, K, 1, A, K, B, N2, 0, C2, N2);
  int same = 1; float worst = 0;
  for (int i = 0; i < M; i++) for (int j = 0; j < N1; j++) { float d = C1[i * N1 + j] - C2[i * N2 + j]; if (d) same = 0; if (d < 0) d = -d; if (d > worst) worst = d; }
  printf("cols N=%d vs N=%d (M=%d K=%d): %s max diff %g\n", N1, N2, M, K, same ? "identical" : "DIFFERENT", worst);
}
int main(void) {
  openblas_set_num_threads(1);
  rows(1, 8, 512, 512); rows(1, 2, 512, 512); rows(2, 8, 512, 512); rows(1, 8, 128, 512);
  cols(128, 512, 1024, 1152); cols(256, 64, 512, 2304); cols(256, 16, 128, 2304); cols(128, 256, 2048, 1152);
  openblas_set_num_threads(2);
  printf("two OpenBLAS threads:\n"); cols(128, 1024, 1024, 1152);
  return 0;
}
