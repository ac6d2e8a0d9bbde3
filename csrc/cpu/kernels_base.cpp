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
#define ADAMW8_CPU_NAME "base"
#include "kernels.h"
