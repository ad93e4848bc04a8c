# The cutloss addon for node-gyp: the binding and the emulated kernels, without the CUDA part
# (CMakeLists.txt builds that with cmake-js where nvcc is found). node-gyp-build falls back to
# this build, and prebuildify uses it.
{
  "targets": [
    {
      "target_name": "cutloss",
      "sources": [
        "src/addon.cc",
        "src/boundary.cc",
        "src/cuda_host.cc",
        "src/device_buffer.cc",
        "src/emulator.cc",
        "src/job.cc",
        "src/launch.cc",
        "src/ops.cc",
        "cuda/simt/simt.cc",
        "src/emu/rowwise.cc",
        "src/emu/sparse.cc",
        "src/emu/gumbel.cc",
        "src/emu/cross_entropy.cc"
      ],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "CUTLOSS_WITH_CUDA=0",
        "CUTLOSS_BUILD_TOOL=\"node-gyp\"",
        "CUTLOSS_WITHOUT_CUDA_REASON=\"built by node-gyp, which builds no CUDA part (nvcc was not on PATH at install, or this is a prebuilt binary)\""
      ],
      "cflags_cc!": ["-std=gnu++17", "-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "cflags!": ["-fno-exceptions"]
    }
  ]
}
