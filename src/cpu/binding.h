#pragma once

#include <napi.h>

namespace cutloss::cpu {

/**
 * Exports the CPU backend: every op as `cpu<Op>` (synchronous) and `cpu<Op>Async` (a Promise,
 * run on the libuv pool), plus cpuInfo, cpuSetThreads, cpuSetGemm and cpuSgemm.
 */
void registerCpu(Napi::Env env, Napi::Object exports);

}  // namespace cutloss::cpu
