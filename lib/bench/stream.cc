// The memory-bandwidth limit of S1 and S3: the time to stream a [rows, cols] float matrix as
// often as the fewest-pass row algorithm must, read twice and written once (pass 1: each
// row's max; pass 2: y = x − max), with no arithmetic to speak of. lib/bench/run.ts builds it
// (g++ -O3 -march=native -fopenmp) and runs it with the benchmark's thread count.
//   stream <rows> <cols> <runs>
// Prints one JSON line: median ms writing into an output written before (`warmMs`), and into
// a fresh allocation each time (`freshMs`: what any op returning a new array pays in page
// faults on top).
//   stream <rows> <cols> serve
// Sets up once, prints "ready", then for each line read from stdin runs one pass into the
// output written before and prints its ms: timed in turns with another contestant, with no
// allocation between its passes to disturb that contestant's memory.
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

static double nowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static void pass(const float* x, float* y, float* rowMax, long rows, long cols) {
#pragma omp parallel for schedule(static)
  for (long r = 0; r < rows; r++) {
    const float* xr = x + r * cols;
    float m = -3.4e38f;
#pragma omp simd reduction(max : m)
    for (long j = 0; j < cols; j++) m = xr[j] > m ? xr[j] : m;
    rowMax[r] = m;
  }
  // the second read comes from memory, as it must for a matrix larger than the caches
#pragma omp parallel for schedule(static)
  for (long r = 0; r < rows; r++) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float m = rowMax[r];
#pragma omp simd
    for (long j = 0; j < cols; j++) yr[j] = xr[j] - m;
  }
}

static float* fresh(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  return static_cast<float*>(p);
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: stream <rows> <cols> <runs>\n");
    return 2;
  }
  const long rows = std::atol(argv[1]), cols = std::atol(argv[2]);
  const bool serve = std::string(argv[3]) == "serve";
  const int runs = serve ? 0 : std::atoi(argv[3]);
  const size_t bytes = static_cast<size_t>(rows) * cols * sizeof(float);
  float* x = fresh(bytes);
#pragma omp parallel for schedule(static)
  for (long i = 0; i < rows * cols; i++) x[i] = static_cast<float>(i % 1021) * 0.001f;
  std::vector<float> rowMax(static_cast<size_t>(rows));
  float* warm = fresh(bytes);
  pass(x, warm, rowMax.data(), rows, cols);  // faults the output in once
  if (serve) {
    std::printf("ready\n");
    std::fflush(stdout);
    for (std::string line; std::getline(std::cin, line);) {
      const double t0 = nowMs();
      pass(x, warm, rowMax.data(), rows, cols);
      std::printf("%.3f\n", nowMs() - t0);
      std::fflush(stdout);
    }
    return 0;
  }
  std::vector<double> warmMs, freshMs;
  for (int i = 0; i < runs; i++) {
    double t0 = nowMs();
    pass(x, warm, rowMax.data(), rows, cols);
    warmMs.push_back(nowMs() - t0);
    t0 = nowMs();
    float* y = fresh(bytes);
    pass(x, y, rowMax.data(), rows, cols);
    freshMs.push_back(nowMs() - t0);
    munmap(y, bytes);
  }
  std::printf("{\"warmMs\": %.3f, \"freshMs\": %.3f, \"threads\": %d, \"gbPerSecond\": %.2f}\n", median(warmMs),
              median(freshMs), omp_get_max_threads(), 3.0 * bytes / (median(warmMs) * 1e6));
  return 0;
}
