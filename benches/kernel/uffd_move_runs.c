/* Recycling evicted pages with UFFDIO_MOVE instead of allocating and freeing them
 * (issue 22 point 1), against what the runtime does today (uffd_copy_runs.c). The steady
 * state of a scan through a 32 MiB window of a userfaultfd range (131072 pages, window
 * 8192), per page, in runs of RUN pages:
 *   copy:   UFFDIO_COPY (write-protect mode) of the run from a source buffer, then
 *           MADV_DONTNEED of the run 8192 pages behind (the runtime today);
 *   move:   UFFDIO_MOVE of the run 8192 pages behind out to a staging buffer (registered
 *           with the same userfaultfd: the kernel wants the destination registered, and
 *           the same page protection on both sides), fill each staging page with a 4 KiB
 *           memcpy from the source buffer (standing in for the node read that the copy
 *           mode's UFFDIO_COPY source stands for), UFFDIO_MOVE the run into the range
 *           (DONTWAKE), then UFFDIO_WRITEPROTECT it (a moved-in page arrives writable
 *           and dirty: the kernel builds the PTE afresh and carries no uffd-wp bit);
 *   moveck: move, plus a memcmp of each moved-in page against its source after the
 *           write-protect: the only way found to notice a program write that landed
 *           between the move in and the write-protect (see docs/performance.md).
 * A second argument "spin" runs a thread of the same process spinning on another CPU,
 * as the runtime's threads do: every page table change then needs a TLB shootdown IPI
 * (UFFDIO_MOVE flushes each page it moves; MADV_DONTNEED and UFFDIO_WRITEPROTECT flush
 * once per run).
 * Usage: uffd_move_runs copy|move|moveck RUN [spin CPU] */
#define _GNU_SOURCE
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "uffd_move_compat.h"

#define P 4096UL
static const size_t N = 131072, W = 8192;
static volatile int stop;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *spin(void *arg) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(*(int *)arg, &s);
  sched_setaffinity(0, sizeof s, &s);
  while (!stop) {
  }
  return 0;
}

static int move(int uffd, char *dst, char *src, size_t len) {
  struct uffdio_move m = {.dst = (long)dst, .src = (long)src, .len = len,
                          .mode = UFFDIO_MOVE_MODE_DONTWAKE};
  if (ioctl(uffd, UFFDIO_MOVE, &m) || m.move != (long)len) {
    fprintf(stderr, "move: %s (moved %lld of %zu)\n", strerror(errno), (long long)m.move, len);
    return -1;
  }
  return 0;
}

static int wp(int uffd, char *at, size_t len) {
  struct uffdio_writeprotect w = {.range = {(long)at, len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (ioctl(uffd, UFFDIO_WRITEPROTECT, &w)) { perror("writeprotect"); return -1; }
  return 0;
}

static int copy(int uffd, char *dst, char *src, size_t len) {
  struct uffdio_copy c = {.dst = (long)dst, .src = (long)src, .len = len, .mode = UFFDIO_COPY_MODE_WP};
  if (ioctl(uffd, UFFDIO_COPY, &c)) { perror("copy"); return -1; }
  return 0;
}

static char *registered(int uffd, size_t len) {
  char *r = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  madvise(r, len, MADV_NOHUGEPAGE);
  /* Same registration (so the same page protection) as the range: UFFDIO_MOVE refuses
   * VMAs whose protections differ, and wants its destination registered. */
  struct uffdio_register reg = {.range = {(long)r, len},
                                .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("register"); exit(1); }
  return r;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s copy|move|moveck RUN [spin CPU]\n", argv[0]); return 2; }
  const char *mode = argv[1];
  size_t run = atoi(argv[2]);
  int moving = strcmp(mode, "copy") != 0, check = strcmp(mode, "moveck") == 0;
  pthread_t spinner;
  int cpu = argc > 4 ? atoi(argv[4]) : 1;
  if (argc > 3 && strcmp(argv[3], "spin") == 0) pthread_create(&spinner, 0, spin, &cpu);
  int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  struct uffdio_api api = {.api = UFFD_API,
                           .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | (moving ? UFFD_FEATURE_MOVE : 0)};
  if (ioctl(uffd, UFFDIO_API, &api)) { perror("api (UFFD_FEATURE_MOVE needs Linux 6.8)"); return 1; }
  char *r = registered(uffd, N * P);
  char *staging = registered(uffd, run * P);
  char *src = mmap(0, run * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  memset(src, 1, run * P);
  size_t mismatched = 0;
  double t0 = now(), tout = 0, tfill = 0, tin = 0;
  for (size_t i = 0; i < N; i += run) {
    char *at = r + i * P;
    double a = now();
    if (!moving || i < W) {
      /* copy mode, and the first window in move modes (nothing to recycle yet) */
      if (copy(uffd, at, src, run * P)) return 1;
      double b = now();
      tin += b - a;
      if (i >= W) madvise(r + (i - W) * P, run * P, MADV_DONTNEED);
      tout += now() - b;
      continue;
    }
    if (move(uffd, staging, r + (i - W) * P, run * P)) return 1;
    double b = now();
    for (size_t k = 0; k < run; k++) memcpy(staging + k * P, src + k * P, P);
    double c = now();
    if (move(uffd, at, staging, run * P) || wp(uffd, at, run * P)) return 1;
    if (check)
      for (size_t k = 0; k < run; k++) mismatched += memcmp(at + k * P, src + k * P, P) != 0;
    double d = now();
    tout += b - a; tfill += c - b; tin += d - c;
  }
  double total = now() - t0;
  stop = 1;
  /* The pages must hold the source's bytes and be write-protected (a write would fault:
   * not tested here, the registration has no reader). */
  for (size_t i = N - W; i < N; i++)
    if (r[i * P] != 1) { fprintf(stderr, "page %zu lost its bytes\n", i); return 1; }
  printf("%s run=%zu%s: %.2f us/page total, out %.2f, fill %.2f, in %.2f%s\n", mode, run,
         argc > 3 ? " (spinning thread on another CPU)" : "", total * 1e6 / N, tout * 1e6 / N,
         tfill * 1e6 / N, tin * 1e6 / N, mismatched ? " MISMATCH" : "");
  return 0;
}
