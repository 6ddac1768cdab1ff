/* Shared helpers of kvmrun's benchmark payloads: a monotonic clock and argument parsing.
 * Every payload prints one line per measurement, "@@BENCH <payload> key=value ...", which
 * `kvmrun bench` reads back from the host's or the guest's console output. */
#ifndef KVMRUN_BENCH_COMMON_H
#define KVMRUN_BENCH_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline long arg_long(const char *s, const char *what) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v <= 0) {
    fprintf(stderr, "bad %s '%s': want a positive whole number\n", what, s);
    exit(2);
  }
  return v;
}

static inline double arg_double(const char *s, const char *what) {
  char *end;
  double v = strtod(s, &end);
  if (*s == '\0' || *end != '\0' || !(v > 0)) {
    fprintf(stderr, "bad %s '%s': want a positive number\n", what, s);
    exit(2);
  }
  return v;
}

#endif
