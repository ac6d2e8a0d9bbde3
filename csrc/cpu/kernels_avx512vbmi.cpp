// The CPU kernels for AVX-512 with VBMI (Ice Lake and later, Zen 4 and later): the avx512 build
// (kernels_avx512.cpp) whose 8-bit dequantize reads the maps as four byte planes with vpermi2b,
// 64 codes at a time (avx512_lookup.h, dequantize_vbmi), instead of two word planes 32 at a
// time.  The same bits.  See kernels.h: everything before the pragma is compiled for the
// baseline.
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
ADAMW8_TARGET(ADAMW8_ISA_AVX512VBMI)
#define ADAMW8_CPU_NS avx512vbmi
#define ADAMW8_CPU_NAME "avx512vbmi"
#define ADAMW8_CPU_FMA 1
#define ADAMW8_CPU_PERMUTE_LOOKUPS 1
#define ADAMW8_CPU_VBMI 1
#include "kernels.h"
#pragma GCC pop_options
#endif
