/* Installing a streaming region 2 MiB at a time as one PMD-mapped transparent huge page
 * moved in with UFFDIO_MOVE (issue 22 point 1: the read pass of a sequential scan within
 * 2x of pread), against what the runtime does today (4 KiB pages: uffd_copy_runs.c,
 * uffd_move_runs.c). The steady state of a scan through a 32 MiB window of a userfaultfd
 * range (131072 pages = 256 regions of 2 MiB, window 8192 pages = 16 regions), per page:
 *   copy64:     UFFDIO_COPY (write-protect mode) of runs of 64 pages, MADV_DONTNEED of
 *               the run 8192 pages behind (the runtime without recycling);
 *   move4k:     runs of 64 pages recycled with 4 KiB UFFDIO_MOVEs: the run behind moved
 *               out to a staging buffer, refilled (4 KiB memcpy a page), moved in,
 *               write-protected (the runtime's `recycle_pages`);
 *   thp:        a fresh THP per region: touch a 2 MiB aligned MADV_HUGEPAGE staging
 *               buffer (the kernel allocates and zeroes a huge page), fill it (4 KiB
 *               memcpy a page from a source buffer, standing in for the node read),
 *               UFFDIO_MOVE 2 MiB into the range (move_pages_huge_pmd: one PMD), then
 *               UFFDIO_WRITEPROTECT the 2 MiB; the region 16 behind dropped with one
 *               MADV_DONTNEED of 2 MiB;
 *   thprecycle: the region 16 behind moved out (UFFDIO_MOVE 2 MiB) to the staging buffer
 *               and refilled: no huge page allocated, zeroed or freed in the steady state;
 *   thpfault:   as thp, but the region is moved in by a handler thread on the first
 *               (missing) fault in it, a reader thread touching one byte a page: one fault
 *               round trip per 512 pages (the runtime's handler shape);
 *   thpfaultrc: thpfault with thprecycle's recycling;
 *   thpfaultnh: thpfaultrc in a range with no THP advice, as the runtime's global range
 *               (THP enabled = madvise): the fault then allocates a page table under the
 *               PMD, which the handler frees with a 2 MiB MADV_DONTNEED (the kernel's
 *               PT_RECLAIM) before the move, else the move would split the huge page;
 *   pread:      the reference: pread of a 512 MiB tmpfs file (/dev/shm), 4 KiB a read;
 *   edges:      correctness conditions, one line each (destination PMD emptied by
 *               MADV_DONTNEED, missing and write faults in huge regions, partial
 *               unprotect, drop or move of a huge PMD).
 * A second argument "spin" runs a thread of the same process spinning on another CPU
 * (default 1), as the runtime's threads do: every page-table change then needs a TLB
 * shootdown IPI (once per 2 MiB region in the thp modes, once per run or page in the
 * 4 KiB ones).
 * Whether a region is PMD-mapped is read from /proc/self/smaps (AnonHugePages of its VMA).
 * Every region carries its index in its first 8 bytes and the source's bytes after; the
 * last window is compared (memcmp) after the pass.
 * Usage: uffd_move_thp copy64|move4k|thp|thprecycle|thpfault|thpfaultrc|thpfaultnh|pread|edges [spin CPU] */
#define _GNU_SOURCE
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "uffd_move_compat.h"

#define P 4096UL
#define HP (2UL << 20)
#define R (HP / P) /* pages per region */
static const size_t N = 131072, W = 8192, RUN = 64;
static int uffd;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* len bytes at a 2 MiB boundary, with PROT_NONE guards on both sides so that the VMA
 * merges with no neighbour (smaps then reports this buffer alone). */
static char *area(size_t len, int advice) {
  char *m = mmap(0, len + 3 * HP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) { perror("mmap"); exit(1); }
  char *a = (char *)(((uintptr_t)m + 2 * HP - 1) & ~(HP - 1));
  mprotect(a - P, P, PROT_NONE);
  mprotect(a + len, P, PROT_NONE);
  madvise(a, len, advice);
  return a;
}

static void reg(char *at, size_t len, int mode) {
  struct uffdio_register r = {.range = {(long)at, len}, .mode = mode};
  if (ioctl(uffd, UFFDIO_REGISTER, &r)) { perror("register"); exit(1); }
}

/* Returns the bytes moved, or -errno. */
static long move(char *dst, char *src, size_t len) {
  struct uffdio_move m = {.dst = (long)dst, .src = (long)src, .len = len, .mode = UFFDIO_MOVE_MODE_DONTWAKE};
  if (ioctl(uffd, UFFDIO_MOVE, &m)) return m.move > 0 ? m.move : -errno;
  return m.move;
}

static void must_move(char *dst, char *src, size_t len) {
  long n = move(dst, src, len);
  if (n != (long)len) {
    fprintf(stderr, "move %zu bytes: %s (moved %ld)\n", len, n < 0 ? strerror(-n) : "short", n);
    exit(1);
  }
}

static int wp(char *at, size_t len, int on) {
  struct uffdio_writeprotect w = {.range = {(long)at, len}, .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
  if (ioctl(uffd, UFFDIO_WRITEPROTECT, &w)) { perror("writeprotect"); exit(1); }
  return 0;
}

static void copy(char *dst, char *src, size_t len) {
  struct uffdio_copy c = {.dst = (long)dst, .src = (long)src, .len = len, .mode = UFFDIO_COPY_MODE_WP};
  if (ioctl(uffd, UFFDIO_COPY, &c)) { perror("copy"); exit(1); }
}

static void wake(char *at, size_t len) {
  struct uffdio_range r = {(long)at, len};
  if (ioctl(uffd, UFFDIO_WAKE, &r)) { perror("wake"); exit(1); }
}

/* AnonHugePages (kB) of the VMA holding addr: the PMD-mapped part only. */
static long huge_kb(void *addr) {
  FILE *f = fopen("/proc/self/smaps", "r");
  char line[256];
  int in = 0;
  long kb = -1;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long s, e;
    if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' '))
      in = (uintptr_t)addr >= s && (uintptr_t)addr < e;
    else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
      break;
  }
  if (f) fclose(f);
  return kb;
}

/* A counter of /proc/vmstat (system-wide: nothing else here uses huge pages). */
static long vm(const char *name) {
  FILE *f = fopen("/proc/vmstat", "r");
  char key[64];
  long v, r = -1;
  while (f && fscanf(f, "%63s %ld", key, &v) == 2)
    if (!strcmp(key, name)) { r = v; break; }
  if (f) fclose(f);
  return r;
}

static long split0[3];
static void splits_mark(void) {
  split0[0] = vm("thp_split_pmd");
  split0[1] = vm("thp_deferred_split_page");
  split0[2] = vm("thp_split_page");
}
/* PMDs split, huge pages queued for a deferred split (partly unmapped: the unmapped part
 * stays allocated until the shrinker splits them), huge pages split, since the mark. */
static const char *splits(void) {
  static char s[96];
  snprintf(s, sizeof s, " [PMD splits +%ld, deferred +%ld, page splits +%ld]", vm("thp_split_pmd") - split0[0],
           vm("thp_deferred_split_page") - split0[1], vm("thp_split_page") - split0[2]);
  return s;
}

static char *src; /* one region of source bytes: page k holds byte k*7+1 */

/* The node read, standing in: 4 KiB memcpy a page, then the region's index. */
static void fill(char *at, size_t pages, size_t region) {
  for (size_t k = 0; k < pages; k++) memcpy(at + k * P, src + k * P, P);
  memcpy(at, &region, sizeof region);
}

static size_t check(char *heap, size_t from, size_t to) {
  size_t bad = 0;
  for (size_t j = from; j < to; j++) {
    char *at = heap + j * HP;
    size_t idx;
    memcpy(&idx, at, sizeof idx);
    bad += idx != j || memcmp(at + 8, src + 8, HP - 8) != 0;
  }
  return bad;
}

/* ---- the 4 KiB modes (as uffd_move_runs.c, runs of 64; regions stamped too) ---- */
static void run4k(char *heap, int recycle, double *t) {
  char *staging = area(RUN * P, MADV_NOHUGEPAGE);
  reg(staging, RUN * P, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
  char *buf = area(HP, MADV_NOHUGEPAGE); /* one region's bytes, as the node read returns them */
  for (size_t i = 0; i < N; i += RUN) {
    char *at = heap + i * P;
    size_t region = i / R, k0 = i % R;
    if (k0 == 0) fill(buf, R, region); /* not timed: both copy modes read this buffer */
    double a = now();
    if (!recycle || i < W) {
      copy(at, buf + k0 * P, RUN * P);
      double b = now();
      if (i >= W) madvise(heap + (i - W) * P, RUN * P, MADV_DONTNEED);
      t[3] += b - a;
      t[0] += now() - b;
      continue;
    }
    must_move(staging, heap + (i - W) * P, RUN * P);
    double b = now();
    for (size_t k = 0; k < RUN; k++) memcpy(staging + k * P, buf + (k0 + k) * P, P);
    double c = now();
    must_move(at, staging, RUN * P);
    wp(at, RUN * P, 1);
    double d = now();
    t[0] += b - a; t[2] += c - b; t[3] += d - c;
  }
}

/* ---- the 2 MiB modes ---- */
static char *staging;

/* Evict region j (drop, or move out to the staging buffer), then bring region `in` into
 * the staging buffer: touch (fresh THP) unless recycled, fill. t: out, touch, fill. */
static void prepare(char *heap, size_t in, int recycle, double *t) {
  double a = now();
  int recycled = 0;
  if (in >= W / R) {
    char *victim = heap + (in - W / R) * HP;
    if (recycle) {
      must_move(staging, victim, HP);
      recycled = 1;
    } else {
      madvise(victim, HP, MADV_DONTNEED);
    }
  }
  double b = now();
  if (!recycled) staging[0] = 0; /* the fault allocates and zeroes a huge page */
  double c = now();
  fill(staging, R, in);
  double d = now();
  t[0] += b - a; t[1] += c - b; t[2] += d - c;
}

static void install(char *heap, size_t j, double *t) {
  double a = now();
  must_move(heap + j * HP, staging, HP);
  wp(heap + j * HP, HP, 1);
  t[3] += now() - a;
}

static volatile int stop;

static void *spin(void *arg) {
  cpu_set_t c;
  CPU_ZERO(&c);
  CPU_SET(*(int *)arg, &c);
  sched_setaffinity(0, sizeof c, &c);
  while (!stop) {
  }
  return 0;
}

static size_t faults, wp_faults;
static char *fheap;
static int frecycle, fdrop;
static double ft[4];

static void *handler(void *arg) {
  (void)arg;
  while (!stop) {
    struct pollfd p = {uffd, POLLIN, 0};
    if (poll(&p, 1, 10) <= 0) continue;
    struct uffd_msg m;
    if (read(uffd, &m, sizeof m) != sizeof m) continue;
    if (m.event != UFFD_EVENT_PAGEFAULT) continue;
    if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
      wp_faults++;
      wake((char *)(uintptr_t)(m.arg.pagefault.address & ~(P - 1)), P);
      continue;
    }
    faults++;
    size_t j = ((uintptr_t)m.arg.pagefault.address - (uintptr_t)fheap) / HP;
    prepare(fheap, j, frecycle, ft);
    double a = now();
    if (fdrop) madvise(fheap + j * HP, HP, MADV_DONTNEED);
    long n = move(fheap + j * HP, staging, HP);
    if (n == -EEXIST) { /* already there (a second fault raced in): drop the staged copy */
      madvise(staging, HP, MADV_DONTNEED);
    } else if (n != (long)HP) {
      fprintf(stderr, "fault move: %ld\n", n);
      exit(1);
    } else {
      wp(fheap + j * HP, HP, 1);
    }
    wake(fheap + j * HP, HP);
    ft[3] += now() - a;
  }
  return 0;
}

static int pread_mode(void) {
  const char *path = "/dev/shm/uffd_move_thp.pread";
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) { perror(path); return 1; }
  char *buf = aligned_alloc(P, HP);
  memset(buf, 1, HP);
  for (size_t j = 0; j < N / R; j++)
    if (write(fd, buf, HP) != (ssize_t)HP) { perror("write"); return 1; }
  double t0 = now();
  long sum = 0;
  for (size_t i = 0; i < N; i++) {
    if (pread(fd, buf, P, i * P) != (ssize_t)P) { perror("pread"); return 1; }
    sum += buf[0];
  }
  double t = now() - t0;
  unlink(path);
  printf("pread tmpfs 4 KiB: %.2f us/page (%ld)\n", t * 1e6 / N, sum);
  return 0;
}

/* ---- edge cases ---- */
/* A fresh staging buffer (WP-registered, MADV_HUGEPAGE) holding a huge page of bytes:
 * each edge case gets its own, as a move that splits leaves its source with a page table
 * under the PMD (later touches would then get 4 KiB pages). */
static char *fresh(size_t region) {
  char *s = area(HP, MADV_HUGEPAGE);
  reg(s, HP, UFFDIO_REGISTER_MODE_WP);
  s[0] = 0;
  fill(s, R, region);
  if (huge_kb(s) < 2048) printf("  (staging buffer did not get a huge page)\n");
  return s;
}

/* A registered region with a fresh PMD-mapped huge page moved in. */
static char *moved_region(int advice, int mode) {
  char *r = area(HP, advice);
  reg(r, HP, mode);
  long n = move(r, fresh(7), HP);
  if (n != (long)HP) printf("  move into a fresh region: %s\n", n < 0 ? strerror(-n) : "short");
  return r;
}

static const char *hugeness(char *at) {
  static char s[64];
  long kb = huge_kb(at);
  snprintf(s, sizeof s, "%s (AnonHugePages %ld kB)", kb >= 2048 ? "huge" : "NOT huge", kb);
  return s;
}

static const char *result(long n, long want) {
  return n == want ? "ok" : n < 0 ? strerror((int)-n) : "short";
}

static volatile int unprotect_whole;
static char *missing_src; /* on a missing fault: move this in (2 MiB), protect, wake */
static volatile int drop_first; /* ... after a 2 MiB MADV_DONTNEED (frees an empty page table) */
static double fault_served;
static void *edge_handler(void *arg) {
  (void)arg;
  while (!stop) {
    struct pollfd p = {uffd, POLLIN, 0};
    if (poll(&p, 1, 10) <= 0) continue;
    struct uffd_msg m;
    if (read(uffd, &m, sizeof m) != sizeof m || m.event != UFFD_EVENT_PAGEFAULT) continue;
    uintptr_t a = m.arg.pagefault.address;
    if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
      wp_faults++;
      if (unprotect_whole) wp((char *)(a & ~(HP - 1)), HP, 0); /* mode 0 wakes */
      else wp((char *)(a & ~(P - 1)), P, 0);
    } else if (missing_src) {
      faults++;
      char *at = (char *)(a & ~(HP - 1));
      if (drop_first) madvise(at, HP, MADV_DONTNEED);
      long n = move(at, missing_src, HP);
      if (n != (long)HP) printf("  move on fault: %s\n", result(n, HP));
      if (!(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE)) wp(at, HP, 1);
      fault_served = now();
      wake(at, HP);
    } else {
      fprintf(stderr, "unexpected missing fault at %lx\n", (unsigned long)a);
      exit(1);
    }
  }
  return 0;
}

static int edges(void) {
  const int MW = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
  pthread_t h;
  pthread_create(&h, 0, edge_handler, 0);
  double a, b;
  long n;
  char *s = fresh(0);
  printf("0  staging buffer (MADV_HUGEPAGE, registered WP only) after one touch: %s\n", hugeness(s));

  /* 1. fresh region, MISSING|WP, MADV_HUGEPAGE / MADV_NOHUGEPAGE / no advice */
  char *r = moved_region(MADV_HUGEPAGE, MW);
  printf("1a move 2 MiB into a fresh MISSING|WP MADV_HUGEPAGE region: %s, bytes %s\n", hugeness(r),
         memcmp(r + 8, src + 8, HP - 8) ? "WRONG" : "right");
  wp(r, HP, 1);
  printf("1b after UFFDIO_WRITEPROTECT of the 2 MiB: %s\n", hugeness(r));
  printf("1c move into a MADV_NOHUGEPAGE region: %s\n", hugeness(moved_region(MADV_NOHUGEPAGE, MW)));
  printf("1d move into a region with no advice (THP enabled=madvise): %s\n",
         hugeness(moved_region(MADV_NORMAL, MW)));

  /* 2. destination PMD that held 4 KiB pages, emptied by MADV_DONTNEED */
  const char *what[] = {"512 pages UFFDIO_COPY'd, 2 MiB MADV_DONTNEED",
                        "64 pages UFFDIO_COPY'd, those 64 MADV_DONTNEED",
                        "64 pages UFFDIO_COPY'd, 2 MiB MADV_DONTNEED",
                        "512 pages UFFDIO_COPY'd, 8 x 256 KiB MADV_DONTNEED"};
  for (int variant = 0; variant < 4; variant++) {
    char *d = area(HP, MADV_HUGEPAGE);
    reg(d, HP, MW);
    size_t pages = variant == 0 || variant == 3 ? R : 64;
    copy(d, src, pages * P); /* 4 KiB PTEs: a page table under the PMD */
    if (variant == 3)
      for (size_t k = 0; k < R; k += 64) madvise(d + k * P, 64 * P, MADV_DONTNEED);
    else
      madvise(d, variant == 1 ? pages * P : HP, MADV_DONTNEED);
    s = fresh(9);
    splits_mark();
    n = move(d, s, HP);
    printf("2%c dst PMD emptied (%s): move %s, %s%s\n", 'a' + variant, what[variant], result(n, HP), hugeness(d),
           splits());
    if (variant == 1) { /* the split left the source a page table: does a 2 MiB drop free it? */
      madvise(s, HP, MADV_DONTNEED);
      s[0] = 0;
      printf("   its split source, 2 MiB MADV_DONTNEED then touched again: %s\n", hugeness(s));
    }
  }
  /* 2e. a staging buffer of 4 KiB pages: the move goes page by page */
  {
    char *s4 = area(HP, MADV_NOHUGEPAGE);
    reg(s4, HP, UFFDIO_REGISTER_MODE_WP);
    fill(s4, R, 3);
    char *d = area(HP, MADV_HUGEPAGE);
    reg(d, HP, MW);
    a = now();
    n = move(d, s4, HP);
    printf("2e move 2 MiB of 4 KiB pages: %s in %.0f us, %s\n", result(n, HP), (now() - a) * 1e6, hugeness(d));
  }

  /* 3. write faults on a protected huge PMD */
  {
    char *d = moved_region(MADV_HUGEPAGE, MW);
    wp(d, HP, 1);
    size_t before = wp_faults;
    unprotect_whole = 0;
    splits_mark();
    a = now();
    d[5 * P] = 42; /* the handler unprotects 4 KiB */
    b = now();
    printf("3a 1-byte write to a write-protected huge PMD: %zu WP fault(s), handler unprotects 4 KiB: "
           "%.0f us, then %s, bytes %s%s\n", wp_faults - before, (b - a) * 1e6, hugeness(d),
           d[5 * P] == 42 && !memcmp(d + 6 * P, src + 6 * P, HP - 6 * P) ? "right" : "WRONG", splits());
    d[9 * P] = 1;
    printf("3b write to another page of it: %zu WP faults in all (2 expected: the rest stays protected)\n",
           wp_faults - before);
    char *e = moved_region(MADV_HUGEPAGE, MW);
    wp(e, HP, 1);
    before = wp_faults;
    unprotect_whole = 1;
    a = now();
    e[5 * P] = 42;
    b = now();
    printf("3c the same, handler unprotects the whole 2 MiB: %zu WP fault(s), %.0f us, then %s\n",
           wp_faults - before, (b - a) * 1e6, hugeness(e));
    unprotect_whole = 0;
  }

  /* 4. partial drop and partial moves of a huge PMD */
  {
    char *d = moved_region(MADV_HUGEPAGE, MW);
    wp(d, HP, 1);
    splits_mark();
    a = now();
    madvise(d + 64 * P, 64 * P, MADV_DONTNEED);
    b = now();
    printf("4a MADV_DONTNEED of 64 of its pages: %.0f us, then %s, other pages %s%s\n", (b - a) * 1e6,
           hugeness(d), !memcmp(d + 128 * P, src + 128 * P, HP - 128 * P) ? "intact" : "WRONG", splits());
    a = now();
    madvise(d, HP, MADV_DONTNEED);
    b = now();
    n = move(d, fresh(1), HP);
    printf("   then the rest dropped (2 MiB MADV_DONTNEED, %.0f us) and a huge page moved in: %s, %s\n",
           (b - a) * 1e6, result(n, HP), hugeness(d));
    char *e = moved_region(MADV_HUGEPAGE, MW);
    char *s4 = area(HP, MADV_HUGEPAGE);
    reg(s4, HP, MW);
    splits_mark();
    a = now();
    n = move(s4, e + 64 * P, P);
    b = now();
    printf("4b UFFDIO_MOVE of 4 KiB out of a huge PMD: %s, %.0f us, then %s%s\n", result(n, P), (b - a) * 1e6,
           hugeness(e), splits());
    char *f = moved_region(MADV_HUGEPAGE, MW);
    char *s5 = area(HP, MADV_HUGEPAGE);
    reg(s5, HP, MW);
    splits_mark();
    a = now();
    n = move(s5, f, HP / 2);
    b = now();
    printf("4c UFFDIO_MOVE of the first 1 MiB out of a huge PMD: %s, %.0f us, then %s%s\n", result(n, HP / 2),
           (b - a) * 1e6, hugeness(f), splits());
    char *g = moved_region(MADV_HUGEPAGE, MW);
    wp(g, HP, 1);
    a = now();
    madvise(g, HP, MADV_DONTNEED);
    b = now();
    n = move(g, fresh(1), HP);
    printf("4d MADV_DONTNEED of a whole write-protected huge PMD: %.0f us; a huge page moved in again: %s, %s\n",
           (b - a) * 1e6, result(n, HP), hugeness(g));
    char *o = area(HP, MADV_HUGEPAGE);
    reg(o, HP, UFFDIO_REGISTER_MODE_WP);
    a = now();
    n = move(o, g, HP);
    b = now();
    printf("4e UFFDIO_MOVE of a whole write-protected huge PMD out (recycling): %s, %.0f us, "
           "the region left: %s, the buffer: %s\n", result(n, HP), (b - a) * 1e6,
           huge_kb(g) == 0 ? "empty" : "?", hugeness(o));
  }

  /* 5. first touch of a MISSING|WP MADV_HUGEPAGE region from this thread: the handler
   * moves a huge page in on the missing fault */
  for (int t = 0; t < 4; t++) {
    int write = t >= 2;
    char *d = area(HP, MADV_HUGEPAGE);
    reg(d, HP, MW);
    missing_src = fresh(5);
    size_t before = faults;
    a = now();
    if (write) d[100 * P] = 3;
    else (void)((volatile char *)d)[100 * P];
    b = now();
    printf("5%c first %s of a page of an empty MADV_HUGEPAGE region, handler moves 2 MiB in%s: %zu missing "
           "fault(s), %.0f us (handler done after %.0f us), %s, bytes %s\n", 'a' + t,
           write ? "write" : "read", write ? " unprotected" : " and protects it", faults - before, (b - a) * 1e6, (fault_served - a) * 1e6, hugeness(d),
           !memcmp(d + 8, src + 8, HP - 8) || (write && d[100 * P] == 3) ? "right" : "WRONG");
  }
  {
    char *d = area(HP, MADV_NOHUGEPAGE);
    reg(d, HP, MW);
    missing_src = fresh(5);
    (void)((volatile char *)d)[100 * P];
    printf("5e first read in a MADV_NOHUGEPAGE region, handler moves 2 MiB in: %s\n", hugeness(d));
    for (int advice = 0; advice < 2; advice++) {
      d = area(HP, advice ? MADV_NORMAL : MADV_NOHUGEPAGE);
      reg(d, HP, MW);
      missing_src = fresh(5);
      drop_first = 1;
      size_t f0 = faults;
      a = now();
      (void)((volatile char *)d)[100 * P];
      b = now();
      printf("5%c the same in a %s region, handler drops the 2 MiB first (MADV_DONTNEED: frees the empty page "
             "table the fault made), then moves: %zu fault(s), %.0f us, %s, bytes %s\n", 'f' + advice,
             advice ? "no-advice" : "MADV_NOHUGEPAGE", faults - f0, (b - a) * 1e6, hugeness(d),
             !memcmp(d + 8, src + 8, HP - 8) ? "right" : "WRONG");
      drop_first = 0;
    }
  }
  /* 6. the kernel's own first write in an unregistered MADV_HUGEPAGE region (what 5c/5d
   * pay before the handler hears of the fault) */
  for (int t = 0; t < 2; t++) {
    char *d = area(HP, MADV_HUGEPAGE);
    a = now();
    d[100 * P] = 1;
    b = now();
    printf("6%c first write in an unregistered MADV_HUGEPAGE region (the kernel's own huge page fault): %.0f us, %s\n",
           'a' + t, (b - a) * 1e6, hugeness(d));
  }
  stop = 1;
  pthread_join(h, 0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s copy64|move4k|thp|thprecycle|thpfault|thpfaultrc|thpfaultnh|pread|edges [spin CPU]\n",
            argv[0]);
    return 2;
  }
  const char *mode = argv[1];
  if (!strcmp(mode, "pread")) return pread_mode();
  int k4 = !strcmp(mode, "copy64") || !strcmp(mode, "move4k");
  int fault = !strncmp(mode, "thpfault", 8);
  int nh = !strcmp(mode, "thpfaultnh");
  int recycle = !strcmp(mode, "move4k") || !strcmp(mode, "thprecycle") || !strcmp(mode, "thpfaultrc") || nh;
  if (!k4 && !fault && strcmp(mode, "thp") && strcmp(mode, "thprecycle") && strcmp(mode, "edges")) {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MOVE};
  if (ioctl(uffd, UFFDIO_API, &api)) { perror("api (UFFD_FEATURE_MOVE needs Linux 6.8)"); return 1; }
  src = area(HP, MADV_NOHUGEPAGE);
  for (size_t k = 0; k < R; k++) memset(src + k * P, (int)(k * 7 + 1), P);
  /* The staging buffer: WP-only registration, so that a touch is the kernel's own fault
   * (a huge page) yet the buffer can be a move's destination (recycling). */
  staging = area(HP, MADV_HUGEPAGE);
  reg(staging, HP, UFFDIO_REGISTER_MODE_WP);
  if (!strcmp(mode, "edges")) return edges();

  pthread_t spinner, fault_thread;
  int cpu = argc > 3 ? atoi(argv[3]) : 1, spinning = argc > 2 && !strcmp(argv[2], "spin");
  if (spinning) pthread_create(&spinner, 0, spin, &cpu);
  char *heap = area(N * P, k4 ? MADV_NOHUGEPAGE : nh ? MADV_NORMAL : MADV_HUGEPAGE);
  reg(heap, N * P, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
  long alloc0 = vm("thp_fault_alloc");
  splits_mark();
  double t[4] = {0}; /* out (drop or move out), touch, fill, in (install + write-protect) */
  double t0 = now(), total;
  if (k4) {
    run4k(heap, recycle, t);
    total = now() - t0;
  } else if (!fault) {
    for (size_t j = 0; j < N / R; j++) {
      prepare(heap, j, recycle, t);
      install(heap, j, t);
    }
    total = now() - t0;
  } else {
    fheap = heap;
    frecycle = recycle;
    fdrop = nh;
    pthread_create(&fault_thread, 0, handler, 0);
    long sum = 0;
    t0 = now();
    for (size_t i = 0; i < N; i++) sum += ((volatile char *)heap)[i * P];
    total = now() - t0;
    memcpy(t, ft, sizeof t);
    if (sum == 0) printf("(sum 0)\n");
  }
  stop = 1;
  if (spinning) pthread_join(spinner, 0);
  if (fault) pthread_join(fault_thread, 0);
  size_t bad = check(heap, N / R - W / R, N / R);
  long kb = huge_kb(heap);
  printf("%s%s: %.2f us/page total, out %.2f, touch %.2f, fill %.2f, in %.2f", mode,
         spinning ? " (spinning thread on another CPU)" : "", total * 1e6 / N,
         t[0] * 1e6 / N, t[1] * 1e6 / N, t[2] * 1e6 / N, t[3] * 1e6 / N);
  if (fault) printf(", %zu missing faults, %zu WP faults", faults, wp_faults);
  printf("\n  last window: %s; range AnonHugePages %ld kB (%s); huge pages allocated %ld%s\n",
         bad ? "WRONG BYTES" : "bytes right", kb,
         kb == (long)(W * P / 1024) ? "all 16 regions PMD-mapped" : kb == 0 ? "4 KiB pages" : "some regions split",
         vm("thp_fault_alloc") - alloc0, splits());
  return bad != 0;
}
