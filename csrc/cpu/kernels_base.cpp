// The CPU kernels for the baseline instruction set (x86-64: SSE2; elsewhere the compiler's
// default).  See kernels.h.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>

#include "../adamw8_math.h"
#include "../nearest_lut.h"
#include "kernel_args.h"

#define ADAMW8_CPU_NS base
// div_rn only where the baseline has the FMA instruction (not x86-64's)
#if defined(__FMA__) || defined(__aarch64__)
#define ADAMW8_CPU_FMA 1
#else
#define ADAMW8_CPU_FMA 0
#endif
#define ADAMW8_CPU_NAME "base"
#include "kernels.h"
