#include "blas_core.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

char *openblas_get_corename(void);
void gotoblas_dynamic_init(void);
void gotoblas_dynamic_quit(void);

static pthread_once_t selected = PTHREAD_ONCE_INIT;

static void select_core(void) {
    if (getenv("OPENBLAS_CORETYPE") != NULL) return;  // the operator's choice stands
    if (strcmp(openblas_get_corename(), "Prescott") != 0) return;  // a CPU OpenBLAS knows
    __builtin_cpu_init();
    const char *core = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        core = "SkylakeX";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        core = "Haswell";
    }
    if (core == NULL) return;
    gotoblas_dynamic_quit();
    setenv("OPENBLAS_CORETYPE", core, 0);
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE");  // child processes detect for themselves
}

const char *dfn_blas_select_core(void) {
    pthread_once(&selected, select_core);
    return openblas_get_corename();
}
