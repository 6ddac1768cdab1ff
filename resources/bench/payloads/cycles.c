/* cycles ITERATIONS RUNS: a fixed amount of CPU work (pi by the midpoint rule over ITERATIONS
 * steps), timed with the time-stamp counter (RDTSC) and the monotonic clock, as in the reference
 * experiments' PI runs used to compare many small guests at once. Prints per run
 *   @@BENCH cycles iterations=I run=R mcycles=X seconds=S pi=P
 * Fixed work, so with several guests at once the spread of X (or S) over the guests shows how
 * fairly the host shares its CPUs. */
#include <stdint.h>

#include "common.h"

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: cycles ITERATIONS RUNS\n");
    return 2;
  }
  long iterations = arg_long(argv[1], "ITERATIONS");
  long runs = arg_long(argv[2], "RUNS");
  for (long r = 1; r <= runs; r++) {
    double h = 1.0 / (double)iterations, sum = 0.0;
    double t0 = now_seconds();
    uint64_t c0 = rdtsc();
    for (long i = 0; i < iterations; i++) {
      double x = h * ((double)i + 0.5);
      sum += 4.0 / (1.0 + x * x);
    }
    uint64_t c1 = rdtsc();
    double t = now_seconds() - t0;
    printf("@@BENCH cycles iterations=%ld run=%ld mcycles=%.3f seconds=%.6f pi=%.9f\n",
           iterations, r, (double)(c1 - c0) / 1e6, t, sum * h);
    fflush(stdout);
  }
  return 0;
}
