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
  try {
    launch(kGpuKernels, nullptr);  // the default stream: calls are synchronous for JavaScript
  } catch (const KernelError& e) {
    cudahost::noteError(e.code, e.name, e.what());  // a sticky error surfaces at the next launch
    throw;
  }
  cudahost::synchronize();
#else
  (void)launch;
  cudahost::requireAvailable();
#endif
}

}  // namespace cutloss
