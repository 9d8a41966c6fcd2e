/* What a fault costs on this machine, by who serves it (all on one CPU, 20,000 pages):
 *
 *   uffd_modes MODE
 *
 * poll:    a handler thread sleeps in poll(2), reads the event, installs with UFFDIO_COPY
 *          (the runtime's design; its remote fault adds the fetch and bookkeeping);
 * read:    the same handler blocking in read(2) instead of poll(2);
 * sigbus:  UFFD_FEATURE_SIGBUS: the faulting thread serves its own fault in a SIGBUS
 *          handler (no second thread, no switch; not usable by the runtime, since a fault
 *          taken inside a system call then fails with EFAULT instead of waiting);
 * kernel:  no userfaultfd: the kernel's own first-touch fault on anonymous memory (what
 *          a swap-in costs at least), and a futex round trip between two threads (the
 *          floor of any hand-over to another thread).
 * Used by benches/kernel_costs.sh; see docs/performance.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGES 20000L
static int uffd, use_poll;
static char page[4096] __attribute__((aligned(4096)));
static int futex_word;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void install(unsigned long addr) {
  struct uffdio_copy c = {.dst = addr & ~4095UL, .src = (unsigned long)page, .len = 4096};
  if (ioctl(uffd, UFFDIO_COPY, &c)) {
    perror("UFFDIO_COPY");
    _exit(1);
  }
}

static void *handler(void *arg) {
  (void)arg;
  for (;;) {
    struct uffd_msg m;
    if (use_poll) {
      struct pollfd p = {uffd, POLLIN, 0};
      poll(&p, 1, -1);
    }
    if (read(uffd, &m, sizeof m) < 0) {
      if (errno == EAGAIN) continue;
      perror("read");
      _exit(1);
    }
    install(m.arg.pagefault.address);
  }
  return NULL;
}

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
  (void)sig;
  (void)ctx;
  install((unsigned long)si->si_addr);
}

static void *futex_peer(void *arg) {
  (void)arg;
  for (;;) {
    while (__atomic_load_n(&futex_word, __ATOMIC_ACQUIRE) == 0)
      syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    __atomic_store_n(&futex_word, 0, __ATOMIC_RELEASE);
    syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  }
  return NULL;
}

static double touch_all(char *area) {
  long sum = 0;
  double a = now_us();
  for (long k = 0; k < PAGES; k++) sum += ((volatile char *)area)[k * 4096];
  double b = now_us();
  if (sum != PAGES) { /* every installed page holds ones */
    fprintf(stderr, "wrong contents\n");
    _exit(1);
  }
  return (b - a) / PAGES;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s poll|read|sigbus|kernel\n", argv[0]);
    return 2;
  }
  const char *mode = argv[1];
  memset(page, 1, sizeof page);
  char *area = mmap(NULL, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (area == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  if (!strcmp(mode, "kernel")) {
    double a = now_us();
    for (long k = 0; k < PAGES; k++) ((volatile char *)area)[k * 4096] = 1;
    printf("kernel first-touch write fault on anonymous memory: %.2f us\n", (now_us() - a) / PAGES);
    pthread_t t;
    pthread_create(&t, NULL, futex_peer, NULL);
    usleep(10000);
    a = now_us();
    for (long k = 0; k < PAGES; k++) {
      __atomic_store_n(&futex_word, 1, __ATOMIC_RELEASE);
      syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
      while (__atomic_load_n(&futex_word, __ATOMIC_ACQUIRE) == 1)
        syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 1, NULL, NULL, 0);
    }
    printf("futex round trip between two threads: %.2f us\n", (now_us() - a) / PAGES);
    fflush(stdout);
    _exit(0);
  }
  int sigbus = !strcmp(mode, "sigbus");
  use_poll = !strcmp(mode, "poll");
  if (!sigbus && !use_poll && strcmp(mode, "read")) {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  uffd = syscall(SYS_userfaultfd, O_CLOEXEC | (use_poll ? O_NONBLOCK : 0));
  struct uffdio_api api = {.api = UFFD_API, .features = sigbus ? UFFD_FEATURE_SIGBUS : 0};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
    perror("userfaultfd");
    return 1;
  }
  struct uffdio_register reg = {.range = {(unsigned long)area, PAGES * 4096},
                                .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
    perror("UFFDIO_REGISTER");
    return 1;
  }
  if (sigbus) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sa, NULL);
  } else {
    pthread_t h;
    pthread_create(&h, NULL, handler, NULL);
    usleep(10000);
  }
  printf("userfaultfd missing fault served by %s: %.2f us\n",
         sigbus ? "the faulting thread (SIGBUS)" : use_poll ? "a handler thread in poll" : "a handler thread in read",
         touch_all(area));
  fflush(stdout);
  _exit(0);
}
