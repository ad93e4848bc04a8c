// Every shared formula of cutloss in one include: cuda/math/ mirrors lib/js/math.ts one to
// one (test/math-parity.test.ts holds them equal), and kernels compose nothing else.
#pragma once

#include "bf16.cuh"
#include "filter.cuh"
#include "harmonic.cuh"
#include "loss.cuh"
#include "lse.cuh"
#include "michelot.cuh"
#include "philox.cuh"
#include "row_sums.cuh"
#include "scalar.cuh"
#include "softcap.cuh"
#include "stablemax.cuh"
