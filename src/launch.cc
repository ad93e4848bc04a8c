#include "launch.h"

#include "cuda_host.h"

namespace cutloss {

#if CUTLOSS_WITH_CUDA
namespace {
const KernelTable kGpuKernels = {
#define CUTLOSS_KERNEL_ENTRY(name) &gpu::name,
    CUTLOSS_KERNEL_NAMES(CUTLOSS_KERNEL_ENTRY)
#undef CUTLOSS_KERNEL_ENTRY
};
}  // namespace
#endif

void runKernels(Backend backend, const KernelLaunch& launch) {
  if (backend == Backend::Emu) {
    emulator::run(launch);
    return;
  }
#if CUTLOSS_WITH_CUDA
  cudahost::requireAvailable();
  launch(kGpuKernels, nullptr);  // the default stream: calls are synchronous for JavaScript
  cudahost::synchronize();
#else
  (void)launch;
  cudahost::requireAvailable();
#endif
}

}  // namespace cutloss
