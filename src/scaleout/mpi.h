// MPI_COMM_WORLD for cutloss/mpi: libmpi is dlopen'ed on first use, so the addon has no
// link-time MPI dependency and loads where MPI is absent.
#pragma once
#include <napi.h>

namespace cutloss {
void registerMpi(Napi::Env env, Napi::Object exports);
void registerNccl(Napi::Env env, Napi::Object exports);
}  // namespace cutloss
