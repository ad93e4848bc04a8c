#pragma once

#include <napi.h>

namespace cutloss {

/**
 * Exports the entry points that share device memory beyond one handle: exportBuffer and
 * importBuffer (CUDA IPC on cuda, POSIX shared memory on cuda-emu), wrapPointer (memory the
 * caller owns) and address (where a buffer is, for other native code).
 */
void registerSharing(Napi::Env env, Napi::Object exports);

}  // namespace cutloss
