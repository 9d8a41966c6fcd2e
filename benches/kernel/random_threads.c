/* Random access by many threads (issue 22, point 5): fill a heap of MIB MiB, then
 * THREADS threads each make ACCESSES random page accesses (3 reads to 1 write, each
 * checked against what the page must hold). Prints "random_threads ... accesses_per_s=..".
 * Unmodified C: run it under dsmrun with a cache smaller than the heap. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned char *heap;
static size_t pages, accesses;
static unsigned long bad;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Each page holds its number in its first word; writes keep it there and bump a
 * counter in the page's second word (no two threads' values are compared). */
static void *worker(void *arg) {
    unsigned long x = 88172645463325252ul ^ (unsigned long)(size_t)arg * 2654435761ul;
    unsigned long wrong = 0;
    for (size_t i = 0; i < accesses; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t p = x % pages;
        size_t *w = (size_t *)(heap + p * 4096);
        if (__atomic_load_n(&w[0], __ATOMIC_RELAXED) != p) wrong++;
        if ((x >> 32) % 4 == 0) __atomic_fetch_add(&w[1], 1, __ATOMIC_RELAXED);
    }
    __atomic_fetch_add(&bad, wrong, __ATOMIC_RELAXED);
    return 0;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
    int threads = argc > 2 ? atoi(argv[2]) : 4;
    accesses = argc > 3 ? strtoul(argv[3], 0, 10) : 50000;
    if (threads < 1 || threads > 256 || mib == 0) {
        fprintf(stderr, "usage: random_threads MIB THREADS ACCESSES_PER_THREAD\n");
        return 2;
    }
    pages = (mib << 20) / 4096;
    heap = malloc(mib << 20);
    if (!heap) { perror("malloc"); return 1; }
    for (size_t p = 0; p < pages; p++) {
        memset(heap + p * 4096, 0, 4096);
        ((size_t *)(heap + p * 4096))[0] = p;
    }
    pthread_t t[256];
    double t0 = now();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, worker, (void *)(size_t)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
    double s = now() - t0;
    printf("random_threads mib=%zu threads=%d accesses=%zu s=%.3f accesses_per_s=%.0f bad=%lu\n",
           mib, threads, accesses * threads, s, accesses * threads / s, bad);
    return bad != 0;
}
