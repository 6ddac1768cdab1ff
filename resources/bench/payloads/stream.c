/* stream N RUNS MIN_SECONDS: STREAM-style memory bandwidth, one thread, arrays of N doubles
 * (choose 3 * 8 * N well above the last-level cache). For each of RUNS measurements and each
 * kernel (copy c=a, scale b=s*c, add c=a+b, triad a=b+s*c) the kernel is repeated until
 * MIN_SECONDS have passed and the bytes it moved (2 or 3 arrays per pass, counted as STREAM
 * counts them) over the time give
 *   @@BENCH stream kernel=K n=N run=R mbps=X      (X in MB/s, 1 MB = 1e6 bytes) */
#include "common.h"

static double *a, *b, *c;

static void kernel(int k, long n, double s) {
  switch (k) {
  case 0: for (long i = 0; i < n; i++) c[i] = a[i]; break;
  case 1: for (long i = 0; i < n; i++) b[i] = s * c[i]; break;
  case 2: for (long i = 0; i < n; i++) c[i] = a[i] + b[i]; break;
  default: for (long i = 0; i < n; i++) a[i] = b[i] + s * c[i]; break;
  }
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: stream N RUNS MIN_SECONDS\n");
    return 2;
  }
  long n = arg_long(argv[1], "N");
  long runs = arg_long(argv[2], "RUNS");
  double min_seconds = arg_double(argv[3], "MIN_SECONDS");
  static const char *names[] = {"copy", "scale", "add", "triad"};
  static const int arrays[] = {2, 2, 3, 3};
  a = malloc(sizeof(double) * n);
  b = malloc(sizeof(double) * n);
  c = malloc(sizeof(double) * n);
  if (!a || !b || !c) {
    fprintf(stderr, "stream: out of memory for n=%ld\n", n);
    return 1;
  }
  for (long i = 0; i < n; i++) a[i] = 1.0, b[i] = 2.0, c[i] = 0.0;
  for (int k = 0; k < 4; k++) kernel(k, n, 3.0); /* warm-up: page faults */
  for (long r = 1; r <= runs; r++) {
    for (int k = 0; k < 4; k++) {
      long reps = 0;
      double t0 = now_seconds(), t;
      do {
        kernel(k, n, 3.0);
        reps++;
        t = now_seconds() - t0;
      } while (t < min_seconds);
      double mbps = (double)arrays[k] * sizeof(double) * n * reps / t / 1e6;
      printf("@@BENCH stream kernel=%s n=%ld run=%ld mbps=%.1f\n", names[k], n, r, mbps);
      fflush(stdout);
    }
  }
  return a[n / 2] > 0 ? 0 : 1; /* keeps the stores observable */
}
