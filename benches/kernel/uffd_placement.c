/* Userfaultfd round trip by CPU placement: a thread touches N missing pages of a
 * registered range; a handler thread installs each with UFFDIO_COPY. Prints the mean
 * cost per fault for one placement:
 *
 *   uffd_placement HANDLER_CPU FAULT_CPU SPIN IDLER
 *
 * SPIN=1: the handler polls a non-blocking userfaultfd instead of sleeping in poll(2).
 * IDLER=1: a SCHED_IDLE thread spins on the faulting CPU, so that CPU never halts while
 * the faulting thread waits (on a VM a halted vCPU is slow to wake).
 * Used by benches/kernel_costs.sh; see docs/performance.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGES 20000L
static int uffd, spin, handler_cpu, fault_cpu;
static volatile int stop;

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *handler(void *arg) {
  static char page[4096] __attribute__((aligned(4096)));
  (void)arg;
  pin(handler_cpu);
  memset(page, 1, sizeof page);
  for (;;) {
    struct uffd_msg m;
    if (!spin) {
      struct pollfd p = {uffd, POLLIN, 0};
      poll(&p, 1, -1);
    }
    if (read(uffd, &m, sizeof m) < 0) {
      if (errno == EAGAIN) {
        if (stop) return NULL;
        continue;
      }
      perror("read");
      exit(1);
    }
    struct uffdio_copy c = {.dst = m.arg.pagefault.address & ~4095UL,
                            .src = (unsigned long)page, .len = 4096};
    if (ioctl(uffd, UFFDIO_COPY, &c)) {
      perror("UFFDIO_COPY");
      exit(1);
    }
  }
}

static void *idler(void *arg) {
  struct sched_param sp = {0};
  (void)arg;
  pin(fault_cpu);
  pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
  while (!stop) __asm__ volatile("pause");
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s HANDLER_CPU FAULT_CPU SPIN IDLER\n", argv[0]);
    return 2;
  }
  handler_cpu = atoi(argv[1]);
  fault_cpu = atoi(argv[2]);
  spin = atoi(argv[3]);
  int idle = atoi(argv[4]);
  uffd = syscall(SYS_userfaultfd, O_CLOEXEC | (spin ? O_NONBLOCK : 0));
  struct uffdio_api api = {.api = UFFD_API};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
    perror("userfaultfd");
    return 1;
  }
  char *area = mmap(NULL, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  struct uffdio_register reg = {.range = {(unsigned long)area, PAGES * 4096},
                                .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (area == MAP_FAILED || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
    perror("register");
    return 1;
  }
  pthread_t h, i;
  pthread_create(&h, NULL, handler, NULL);
  if (idle) pthread_create(&i, NULL, idler, NULL);
  pin(fault_cpu);
  usleep(10000);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  long sum = 0;
  for (long k = 0; k < PAGES; k++) sum += ((volatile char *)area)[k * 4096];
  clock_gettime(CLOCK_MONOTONIC, &b);
  stop = 1;
  printf("handler on CPU %d, faults on CPU %d, %s handler%s: %.1f us per fault\n", handler_cpu,
         fault_cpu, spin ? "spinning" : "sleeping", idle ? ", SCHED_IDLE spinner on the faulting CPU" : "",
         ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / PAGES);
  fflush(stdout);
  _exit(sum == PAGES ? 0 : 1);
}
