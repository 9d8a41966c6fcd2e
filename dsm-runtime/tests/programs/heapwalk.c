/* A multithreaded program with a large heap and random access, for running unmodified
 * under dsmrun. Each thread owns an array of blocks allocated with a mix of allocation
 * calls; it writes deterministic values at random, then every thread reads everything
 * back and sums it. Output depends only on the arguments, so a native run and a run on
 * pooled memory must print the same bytes.
 *
 * usage: heapwalk MIB THREADS ROUNDS SEED */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <malloc.h>

#define BLOCK (1u << 20)

static size_t blocks_per_thread, rounds;
static int threads;
static uint64_t seed;
static uint64_t **blocks; /* [threads * blocks_per_thread] */
static uint64_t sums[64];

static uint64_t next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void *alloc_block(size_t i) {
    void *p = NULL;
    switch (i % 4) {
    case 0: p = malloc(BLOCK); break;
    case 1: p = calloc(1, BLOCK); break;
    case 2: if (posix_memalign(&p, 4096, BLOCK)) p = NULL; break;
    case 3: p = mmap(NULL, BLOCK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) p = NULL; break;
    }
    if (!p) { perror("allocation"); exit(2); }
    memset(p, 0, BLOCK);
    return p;
}

static void *writer(void *arg) {
    int t = (int)(intptr_t)arg;
    uint64_t s = seed * 1000003u + (uint64_t)t + 1;
    uint64_t **mine = blocks + (size_t)t * blocks_per_thread;
    size_t words = BLOCK / 8;
    for (size_t b = 0; b < blocks_per_thread; b++) mine[b] = alloc_block(b);
    size_t n = rounds * blocks_per_thread * 64;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = next(&s);
        size_t b = r % blocks_per_thread, w = (r >> 20) % words;
        mine[b][w] += r | 1;
        /* some churn through realloc and small objects */
        if ((r & 0xfff) == 0) {
            char *tmp = malloc(64 + (r >> 40) % 4000);
            tmp = realloc(tmp, 8192);
            tmp[0] = 1;
            free(tmp);
        }
    }
    return NULL;
}

static void *reader(void *arg) {
    int t = (int)(intptr_t)arg;
    uint64_t sum = 0;
    size_t words = BLOCK / 8, total = (size_t)threads * blocks_per_thread;
    /* every thread reads every block, starting at a different place */
    for (size_t k = 0; k < total; k++) {
        uint64_t *blk = blocks[(k + (size_t)t * 7) % total];
        for (size_t w = 0; w < words; w += 61) sum = sum * 31 + blk[w];
    }
    sums[t] = sum;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: heapwalk MIB THREADS ROUNDS SEED\n"); return 2; }
    size_t mib = strtoul(argv[1], 0, 10);
    threads = atoi(argv[2]);
    rounds = strtoul(argv[3], 0, 10);
    seed = strtoull(argv[4], 0, 10);
    if (threads < 1 || threads > 64 || mib < (size_t)threads) { fprintf(stderr, "bad args\n"); return 2; }
    blocks_per_thread = mib / (size_t)threads;
    blocks = calloc((size_t)threads * blocks_per_thread, sizeof *blocks);
    pthread_t th[64];
    for (int t = 0; t < threads; t++) pthread_create(&th[t], 0, writer, (void *)(intptr_t)t);
    for (int t = 0; t < threads; t++) pthread_join(th[t], 0);
    for (int t = 0; t < threads; t++) pthread_create(&th[t], 0, reader, (void *)(intptr_t)t);
    for (int t = 0; t < threads; t++) pthread_join(th[t], 0);
    uint64_t all = 0;
    for (int t = 0; t < threads; t++) { printf("thread %d sum %016llx\n", t, (unsigned long long)sums[t]); all ^= sums[t]; }
    printf("heapwalk %zu MiB %d threads: %016llx\n", blocks_per_thread * threads, threads, (unsigned long long)all);
    size_t total = (size_t)threads * blocks_per_thread;
    for (size_t i = 0; i < total; i++) {
        if (i % 4 == 3) munmap(blocks[i], BLOCK); else free(blocks[i]);
    }
    free(blocks);
    return 0;
}
