// The emulated backend's side of the binding: the lock that serializes emulated launches and
// the fiber order tests choose.
#include <mutex>

#include "launch.h"
// After the binding's headers: simt.h defines CUDA spellings (threadIdx, __shared__) as macros.
#include "../cuda/simt/simt.h"

namespace cutloss {

namespace {
std::mutex gEmulatorMutex;
int gOrder = 0;
uint64_t gSeed = 0;
}  // namespace

void setEmulatorOrder(int order, uint64_t seed) {
  std::lock_guard<std::mutex> lock(gEmulatorMutex);
  gOrder = order;
  gSeed = seed;
}

void emulatorOrder(int* order, uint64_t* seed) {
  std::lock_guard<std::mutex> lock(gEmulatorMutex);
  *order = gOrder;
  *seed = gSeed;
}

namespace emulator {

const KernelTable kernels = {
#define CUTLOSS_KERNEL_ENTRY(name) &emu::name,
    CUTLOSS_KERNEL_NAMES(CUTLOSS_KERNEL_ENTRY)
#undef CUTLOSS_KERNEL_ENTRY
};

void run(const KernelLaunch& launch) {
  std::lock_guard<std::mutex> lock(gEmulatorMutex);
  // The order is per OS thread in simt, and jobs run on whichever pool thread is free.
  simt::setOrder(gOrder == 1 ? simt::Order::Reverse : gOrder == 2 ? simt::Order::Shuffled : simt::Order::Forward, gSeed);
  launch(kernels, nullptr);
}

}  // namespace emulator

}  // namespace cutloss
