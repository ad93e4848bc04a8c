#pragma once

#include <napi.h>

namespace cutloss {

/** Exports every kernel entry point, as `name` (synchronous) and `nameAsync` (a Promise). */
void registerOps(Napi::Env env, Napi::Object exports);

}  // namespace cutloss
