// What the benchmark reads beside its timings (lib/bench): device memory as cutloss's
// allocator and the device see it, and the time of a call on the device's own clock.
#pragma once

#include <napi.h>

namespace cutloss {

void registerBenchProbe(Napi::Env env, Napi::Object exports);

}  // namespace cutloss
