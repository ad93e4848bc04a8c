# The cutloss addon for node-gyp: the binding and the emulated kernels, without the CUDA part
# (CMakeLists.txt builds that with cmake-js where nvcc is found). node-gyp-build falls back to
# this build, and prebuildify uses it.
{
  "targets": [
    {
      "target_name": "cutloss",
      "sources": [
        "src/addon.cc",
        "src/bench_probe.cc",
        "src/boundary.cc",
        "src/cuda_host.cc",
        "src/device_buffer.cc",
        "src/emulator.cc",
        "src/job.cc",
        "src/launch.cc",
        "src/ops.cc",
        "src/sharing.cc",
        "src/scaleout/mpi.cc",
        "src/scaleout/nccl.cc",
        "cuda/simt/simt.cc",
        "src/emu/rowwise.cc",
        "src/emu/sparse.cc",
        "src/emu/gumbel.cc",
        "src/emu/cross_entropy.cc",
        "src/emu/linear_cross_entropy.cc",
        "src/emu/sigmoid_pair.cc",
        "src/emu/zscore.cc",
        "src/emu/normalize.cc",
        "src/cpu/binding.cc",
        "src/cpu/parallel.cc",
        "src/cpu/host_memory.cc"
      ],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except", "cutloss_cpu_kernels"],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "CUTLOSS_WITH_CUDA=0",
        "CUTLOSS_BUILD_TOOL=\"node-gyp\"",
        "CUTLOSS_WITHOUT_CUDA_REASON=\"built by node-gyp, which builds no CUDA part (nvcc was not on PATH when the addon was built)\""
      ],
      "cflags_cc!": ["-std=gnu++17", "-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "cflags!": ["-fno-exceptions"],
      "libraries": ["-ldl"]
    },
    {
      # The CPU backend's kernels (src/cpu): -O3 with SIMD clones (src/cpu/clones.h) and the
      # flags that let the compiler vectorize their loops without changing IEEE results (loops
      # are unswitched on the shared formulas' row-constant branches first, which GCC 12 cannot
      # vectorize as selects); and
      # OpenBLAS, linked statically when src/cpu/find-openblas.cjs finds it (as CMakeLists.txt
      # does), its symbols kept inside the addon. Without it, the portable GEMM.
      "target_name": "cutloss_cpu_kernels",
      "type": "static_library",
      "sources": [
        "src/cpu/rowwise.cc",
        "src/cpu/sparse.cc",
        "src/cpu/gumbel.cc",
        "src/cpu/cross_entropy.cc",
        "src/cpu/linear_cross_entropy.cc",
        "src/cpu/kept_exp_avx512.cc",
        "src/cpu/gemm.cc",
        "src/cpu/bf16_gemm.cc",
        "src/cpu/bf16_gemm_avx512.cc",
        "src/cpu/sigmoid_pair.cc",
        "src/cpu/zscore.cc",
        "src/cpu/unit_rows.cc"
      ],
      "defines": ["<!@(node src/cpu/find-openblas.cjs defines)"],
      "include_dirs": ["<!@(node src/cpu/find-openblas.cjs include)"],
      "cflags_cc!": ["-std=gnu++17", "-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "--param=max-unswitch-insns=2000", "--param=max-unswitch-level=8", "-Wall", "-Wextra"],
      "cflags!": ["-fno-exceptions"],
      "link_settings": {
        "libraries": ["<!@(node src/cpu/find-openblas.cjs libraries)"],
        "ldflags": ["-Wl,--exclude-libs,ALL"]
      }
    }
  ]
}
