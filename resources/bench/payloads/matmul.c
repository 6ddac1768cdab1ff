/* matmul THREADS RUNS MIN_SECONDS N...: dense double-precision C = A x B for each size N (from
 * in-cache to in-memory sizes), split by rows over THREADS POSIX threads, as in the reference
 * experiments' matrix-multiplication runs. Each of RUNS measurements repeats the product until at
 * least MIN_SECONDS have passed (so tiny sizes are not timer noise) and prints
 *   @@BENCH matmul threads=T n=N run=R mflops=X
 * where X = 2 N^3 * repetitions / seconds / 1e6. The i-k-j loop order streams rows of B and C,
 * the textbook cache-friendly form without blocking: the cache hierarchy shows in the curve. */
#include <pthread.h>
#include <string.h>

#include "common.h"

struct job {
  const double *a, *b;
  double *c;
  long n, row0, row1;
};

static void *multiply_rows(void *p) {
  struct job *j = p;
  long n = j->n;
  for (long i = j->row0; i < j->row1; i++) {
    double *ci = j->c + i * n;
    memset(ci, 0, sizeof(double) * n);
    for (long k = 0; k < n; k++) {
      double aik = j->a[i * n + k];
      const double *bk = j->b + k * n;
      for (long x = 0; x < n; x++) ci[x] += aik * bk[x];
    }
  }
  return NULL;
}

static void multiply(const double *a, const double *b, double *c, long n, long threads) {
  pthread_t tid[threads];
  struct job jobs[threads];
  for (long t = 0; t < threads; t++) {
    jobs[t] = (struct job){a, b, c, n, n * t / threads, n * (t + 1) / threads};
    if (t > 0 && pthread_create(&tid[t], NULL, multiply_rows, &jobs[t]) != 0) {
      perror("pthread_create");
      exit(1);
    }
  }
  multiply_rows(&jobs[0]);
  for (long t = 1; t < threads; t++) pthread_join(tid[t], NULL);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: matmul THREADS RUNS MIN_SECONDS N...\n");
    return 2;
  }
  long threads = arg_long(argv[1], "THREADS");
  long runs = arg_long(argv[2], "RUNS");
  double min_seconds = arg_double(argv[3], "MIN_SECONDS");
  for (int s = 4; s < argc; s++) {
    long n = arg_long(argv[s], "N");
    double *a = malloc(sizeof(double) * n * n), *b = malloc(sizeof(double) * n * n),
           *c = malloc(sizeof(double) * n * n);
    if (!a || !b || !c) {
      fprintf(stderr, "matmul: out of memory for n=%ld\n", n);
      return 1;
    }
    for (long i = 0; i < n * n; i++) {
      a[i] = (double)(i % 7) * 0.5;
      b[i] = (double)(i % 5) * 0.25;
    }
    multiply(a, b, c, n, threads); /* warm-up: page faults and caches */
    for (long r = 1; r <= runs; r++) {
      long reps = 0;
      double t0 = now_seconds(), t;
      do {
        multiply(a, b, c, n, threads);
        reps++;
        t = now_seconds() - t0;
      } while (t < min_seconds);
      double mflops = 2.0 * (double)n * n * n * reps / t / 1e6;
      printf("@@BENCH matmul threads=%ld n=%ld run=%ld mflops=%.3f check=%.1f\n", threads, n, r,
             mflops, c[(n / 2) * n + n / 3]);
      fflush(stdout);
    }
    free(a);
    free(b);
    free(c);
  }
  return 0;
}
