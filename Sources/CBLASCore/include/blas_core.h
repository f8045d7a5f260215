// Which kernels OpenBLAS runs: its DYNAMIC_ARCH build picks them by CPU model,
// and a CPU newer than the build (0.3.21 predates Sapphire Rapids) falls back
// to Prescott's SSE3 kernels, 4-5x slower. OpenBLAS exports no call to choose,
// only its own re-initialisation, which reads OPENBLAS_CORETYPE.
#ifndef DIFFUSION_BLAS_CORE_H
#define DIFFUSION_BLAS_CORE_H

/// When OpenBLAS fell back to Prescott on a CPU with AVX-512 (F, BW, DQ, VL) or
/// AVX2 + FMA, re-initialises it with SkylakeX's or Haswell's kernels, unless
/// OPENBLAS_CORETYPE is set. Call before any BLAS work; once is enough, more is
/// harmless. Returns the core OpenBLAS runs now (its name, static storage).
const char *dfn_blas_select_core(void);

#endif
