// Function multiversioning for the CPU kernels: a hot function marked CUTLOSS_CPU_CLONES is
// compiled three times (AVX-512 as x86-64-v4, AVX2+FMA as x86-64-v3, and the baseline) and
// the loader picks the widest the CPU supports (an ifunc, resolved once). Loops are written
// plainly and vectorized by the compiler (-O3). `flatten` inlines everything such a function
// calls (helpers, lambdas, the shared formulas) into each clone, so all of it is compiled for
// the clone's instruction set; a helper left out of line would be baseline SSE2.
#pragma once

// CUTLOSS_CPU_NO_CLONES compiles one version for the -march given (test/cpu/isa_test.cc builds
// the kernels that way for each instruction set, to run the clones this CPU would not pick).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(CUTLOSS_CPU_NO_CLONES)
#define CUTLOSS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#define CUTLOSS_CPU_HAS_CLONES 1
#else
#define CUTLOSS_CPU_CLONES __attribute__((flatten))
#define CUTLOSS_CPU_HAS_CLONES 0
#endif

// Helpers and the lambdas of hot loops are inlined always: out of line they would be compiled
// for the baseline instruction set, and a loop calling them would not vectorize.
#if defined(__GNUC__)
#define CUTLOSS_CPU_INLINE inline __attribute__((always_inline))
#define CUTLOSS_CPU_LAMBDA __attribute__((always_inline))
#else
#define CUTLOSS_CPU_INLINE inline
#define CUTLOSS_CPU_LAMBDA
#endif
