// The CPU backend's elementary functions (src/cpu/cpu_math.h) against the C library in
// double precision: the largest error in ulps of float over a sweep of every 2^k-th float of
// each range, and the special values. expNonPositive is also held bit for bit to expf where
// its contract says so. Prints one line per function: "<name> <max ulp> <failures>".
#include "../../src/cpu/cpu_math.h"
// after cpu_math.h
#include <cmath>
#include <cstdio>
#include <initializer_list>

namespace {

using cutloss::floatBits;
using cutloss::floatFromBits;

/** |got − want| in units of the last place of float at want (subnormal spacing below 2^-126). */
double ulpError(float got, double want) {
  if (std::isnan(want)) return std::isnan(got) ? 0.0 : 1e9;
  if (std::fabs(want) > 3.4028234663852886e38) return got == static_cast<float>(want) ? 0.0 : 1e9;  // overflows: ±inf
  const double a = std::fabs(want);
  const int e = a < 1.1754943508222875e-38 ? -126 : std::ilogb(a);
  return std::fabs(static_cast<double>(got) - want) / std::ldexp(1.0, e - 23);
}

struct Sweep {
  const char* name;
  double maxUlp = 0;
  long failures = 0;
  void check(bool ok) { failures += ok ? 0 : 1; }
  void measure(float got, double want) {
    const double u = ulpError(got, want);
    if (u > maxUlp) maxUlp = u;
  }
  void print() const { std::printf("%s %.3f %ld\n", name, maxUlp, failures); }
};

/** Calls f on every 97th float bit pattern in [lo, hi] (both finite, same sign or lo ≤ 0 ≤ hi). */
template <class F>
void sweep(float lo, float hi, F f) {
  for (float x = lo; x <= hi;) {
    f(x);
    const uint32_t b = floatBits(x);
    // step 97 patterns toward +inf: down the negative bit patterns, up the positive ones
    if (x < 0.0f) {
      x = b - 97 > 0x80000000u ? floatFromBits(b - 97) : 0.0f;
    } else {
      x = floatFromBits(b + 97);
    }
  }
}

}  // namespace

int main() {
  Sweep ex{"expf"}, en{"expNonPositive"}, lg{"logf"}, l1{"log1pf"}, th{"tanhf"};
  sweep(-104.0f, 89.0f, [&](float x) { ex.measure(cutloss::expf(x), std::exp(static_cast<double>(x))); });
  sweep(-120.0f, 0.0f, [&](float x) {
    const float got = cutloss::expNonPositive(x);
    if (x >= -86.0f) {
      en.check(floatBits(got) == floatBits(cutloss::expf(x)));
      en.measure(got, std::exp(static_cast<double>(x)));
    } else {
      en.check(got == 0.0f);
    }
  });
  sweep(1e-6f, 1e-3f, [&](float x) { en.check(floatBits(cutloss::expNonPositive(x)) == floatBits(cutloss::expf(x))); });
  en.check(cutloss::expNonPositive(-INFINITY) == 0.0f && std::isnan(cutloss::expNonPositive(NAN)) &&
           cutloss::expNonPositive(0.0f) == 1.0f && cutloss::expNonPositive(-0.0f) == 1.0f);
  ex.check(cutloss::expf(-INFINITY) == 0.0f && cutloss::expf(INFINITY) == INFINITY && std::isnan(cutloss::expf(NAN)) &&
           cutloss::expf(89.0f) == INFINITY);
  sweep(1e-37f, 3e38f, [&](float x) { lg.measure(cutloss::logf(x), std::log(static_cast<double>(x))); });
  sweep(1e-44f, 1e-37f, [&](float x) { lg.measure(cutloss::logf(x), std::log(static_cast<double>(x))); });
  lg.check(cutloss::logf(0.0f) == -INFINITY && std::isnan(cutloss::logf(-1.0f)) && cutloss::logf(INFINITY) == INFINITY &&
           std::isnan(cutloss::logf(NAN)) && cutloss::logf(1.0f) == 0.0f);
  sweep(-0.999f, 1e30f, [&](float x) { l1.measure(cutloss::log1pf(x), std::log1p(static_cast<double>(x))); });
  l1.check(cutloss::log1pf(-1.0f) == -INFINITY && cutloss::log1pf(INFINITY) == INFINITY && cutloss::log1pf(1e-30f) == 1e-30f);
  sweep(-20.0f, 20.0f, [&](float x) { th.measure(cutloss::tanhf(x), std::tanh(static_cast<double>(x))); });
  th.check(cutloss::tanhf(INFINITY) == 1.0f && cutloss::tanhf(-INFINITY) == -1.0f && std::isnan(cutloss::tanhf(NAN)));
  for (const Sweep* s : {&ex, &en, &lg, &l1, &th}) s->print();
  return 0;
}
