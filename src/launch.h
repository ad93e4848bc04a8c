// Runs kernel launchers on a backend: the real GPU (cutloss::gpu, then a synchronize) or the
// SIMT emulator (cutloss::emu). Both sets share the signatures of cuda/kernels.h.
#pragma once

#include <cstdint>
#include <functional>

#include "../cuda/kernels.h"
#include "device_buffer.h"

namespace cutloss {

#define CUTLOSS_KERNEL_NAMES(X)                                                                     \
  X(logSumExp) X(softmax) X(softmaxBackward) X(stablemax) X(stablemaxBackward) X(sparsemax)         \
  X(sparsemaxBackward) X(entmax15) X(entmax15Backward) X(gumbelSoftmax) X(gumbelSoftmaxBackward)    \
  X(crossEntropyForward) X(crossEntropyBackward) X(linearCrossEntropy) X(sigmoidPairLoss)  \
  X(zscoreLinear) X(unitRows) X(unitRowsBackward)

struct KernelTable {
#define CUTLOSS_KERNEL_FIELD(name) decltype(&emu::name) name;
  CUTLOSS_KERNEL_NAMES(CUTLOSS_KERNEL_FIELD)
#undef CUTLOSS_KERNEL_FIELD
};

using KernelLaunch = std::function<void(const KernelTable&, Stream)>;

/** Runs `launch` to completion on the backend. Any thread; throws KernelError. */
void runKernels(Backend backend, const KernelLaunch& launch);

/** Fiber order of later emulated launches: 0 forward, 1 reverse, 2 shuffled (with seed). */
void setEmulatorOrder(int order, uint64_t seed);
void emulatorOrder(int* order, uint64_t* seed);

namespace emulator {
/** The emulator runs one launch at a time in the process (kernels' __shared__ are statics). */
void run(const KernelLaunch& launch);
extern const KernelTable kernels;
}  // namespace emulator

}  // namespace cutloss
