// The instruction sets of the CPU kernels' builds (csrc/cpu/kernels_<isa>.cpp), as GCC target
// strings, in one place: the builds turn theirs on with ADAMW8_TARGET, and so does the A/B tool
// that times kernels.h outside the extension (benchmarks/cpu_ab/ab_step8.cpp), so the two
// compile the same code.  Use between `#pragma GCC push_options` and `pop_options`.
#pragma once

#define ADAMW8_ISA_AVX2 "avx2,f16c,bmi,bmi2,fma"
#define ADAMW8_ISA_AVX512 "avx512f,avx512bw,avx512dq,avx512vl,avx2,f16c,bmi,bmi2,fma,prefer-vector-width=512"
#define ADAMW8_ISA_AVX512VBMI \
  "avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,avx2,f16c,bmi,bmi2,fma,prefer-vector-width=512"

#define ADAMW8_PRAGMA(x) _Pragma(#x)
// #pragma GCC target(isa), isa one of the strings above (a macro: _Pragma takes it expanded)
#define ADAMW8_TARGET(isa) ADAMW8_PRAGMA(GCC target(isa))
