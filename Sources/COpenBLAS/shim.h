// OpenBLAS's CBLAS interface and its threading controls (openblas_set_num_threads).
#include <cblas.h>
