// The CPU kernels for AVX2 (+F16C, BMI2, FMA: only where written out, as div_rn's; -ffp-contract=off
// fuses nothing else, so the arithmetic stays the reference's).  See kernels.h: everything
// before the pragma is compiled for the baseline.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>

#include "../adamw8_math.h"
#include "../nearest_lut.h"
#include "isa.h"
#include "kernel_args.h"

#ifdef ADAMW8_CPU_X86
#pragma GCC push_options
ADAMW8_TARGET(ADAMW8_ISA_AVX2)
#define ADAMW8_CPU_NS avx2
#define ADAMW8_CPU_FMA 1
#define ADAMW8_CPU_NAME "avx2"
#include "kernels.h"
#pragma GCC pop_options
#endif
