// The CPU kernels for AVX-512 (F, BW, DQ, VL; 512-bit vectors; FMA only where written out, as
// div_rn's and the bounded quantizer's: -ffp-contract=off fuses nothing else, so the arithmetic stays
// the reference's).  See kernels.h: everything before the pragma is compiled for the baseline.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>

#include "../adamw8_math.h"
#include "../nearest_lut.h"
#include "isa.h"
#include "kernel_args.h"

#ifdef ADAMW8_CPU_X86
#include <immintrin.h>

#pragma GCC push_options
ADAMW8_TARGET(ADAMW8_ISA_AVX512)
#define ADAMW8_CPU_NS avx512
#define ADAMW8_CPU_FMA 1
#define ADAMW8_CPU_NAME "avx512"
#define ADAMW8_CPU_PERMUTE_LOOKUPS 1
#include "kernels.h"
#pragma GCC pop_options
#endif
