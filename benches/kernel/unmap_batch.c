/* Cost of dropping scattered pages: one madvise(MADV_DONTNEED) per page against one
 * process_madvise(PIDFD_SELF, MADV_DONTNEED) per 128 pages (Linux 6.13+ for the advice on
 * oneself, 6.14+ for PIDFD_SELF). Every other page of a 512 MiB mapping is dropped, as
 * eviction drops scattered victims. Used by benches/kernel_costs.sh. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define N 65536L
#define BATCH 128
#define PIDFD_SELF_THREAD (-10000)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void touch(char *a) {
  for (long i = 0; i < 2 * N; i++) a[i * 4096] = 1;
}

int main(void) {
  char *a = mmap(NULL, 2 * N * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  for (int round = 0; round < 3; round++) {
    touch(a);
    double t0 = now();
    for (long i = 0; i < N; i++) madvise(a + 2 * i * 4096, 4096, MADV_DONTNEED);
    double t1 = now();
    touch(a);
    struct iovec v[BATCH];
    double t2 = now();
    for (long i = 0; i < N; i += BATCH) {
      for (int k = 0; k < BATCH; k++) {
        v[k].iov_base = a + 2 * (i + k) * 4096;
        v[k].iov_len = 4096;
      }
      if (syscall(SYS_process_madvise, PIDFD_SELF_THREAD, v, BATCH, MADV_DONTNEED, 0) < 0) {
        perror("process_madvise(PIDFD_SELF, MADV_DONTNEED)");
        return 1;
      }
    }
    double t3 = now();
    for (long i = 0; i < N; i++)
      if (a[2 * i * 4096] != 0) {
        fprintf(stderr, "page %ld was not dropped\n", 2 * i);
        return 1;
      }
    printf("round %d: madvise per page %.2f us/page, process_madvise x%d %.2f us/page\n", round,
           (t1 - t0) * 1e6 / N, BATCH, (t3 - t2) * 1e6 / N);
  }
  return 0;
}
