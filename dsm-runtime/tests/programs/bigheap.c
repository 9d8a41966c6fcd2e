/* Heaps far larger than the machine: an unmodified program's view of terabyte pooling.
 * usage: bigheap arrays | realloc | exhaust | sparse GIB TOUCH_MIB
 *   arrays   three 24 GiB arrays (malloc, posix_memalign, mmap) and a 100 GiB calloc;
 *            one word written every MiB across all of them, then every word checked
 *   realloc  a 1 GiB array grown to 21 GiB by realloc, and a 100 MiB one grown past
 *            1 GiB: contents kept, the grown part zero
 *   exhaust  malloc and mmap of 1 TiB fail with ENOMEM; then 1 MiB blocks are written
 *            until the pool is full (the runtime ends the job)
 *   sparse   GIB reserved, TOUCH_MIB of pages written spread across it; prints the
 *            growth of the process's resident memory and page tables
 *   fill     MIB blocks of 1 MiB, every byte written, then every block checked */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define GIB (1ull << 30)
#define MIB (1ull << 20)

static uint64_t word_for(uint64_t array, uint64_t i) {
    uint64_t x = (array + 1) * 0x9E3779B97F4A7C15ull ^ (i * 0xBF58476D1CE4E5B9ull);
    return x | 1; /* never zero: a lost page reads as zero */
}

static void fill(uint64_t *a, uint64_t bytes, uint64_t id) {
    for (uint64_t off = 0; off < bytes; off += MIB) a[off / 8] = word_for(id, off);
}

static uint64_t check(const uint64_t *a, uint64_t bytes, uint64_t id, const char *what) {
    uint64_t bad = 0;
    for (uint64_t off = 0; off < bytes; off += MIB) {
        if (a[off / 8] != word_for(id, off)) {
            if (bad++ < 5)
                printf("%s: word at %llu MiB is %llx, wrote %llx\n", what,
                       (unsigned long long)(off / MIB), (unsigned long long)a[off / 8],
                       (unsigned long long)word_for(id, off));
        }
        if (a[(off + MIB / 2) / 8] != 0 && bad++ < 5) printf("%s: unwritten word not zero\n", what);
    }
    return bad;
}

static int arrays(void) {
    uint64_t n = 24 * GIB, big = 100 * GIB;
    uint64_t *a = malloc(n);
    void *b = NULL;
    int rc = posix_memalign(&b, 2 * MIB, n);
    uint64_t *c = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *d = calloc(big / 8, 8);
    if (!a || rc || !b || c == MAP_FAILED || !d) {
        printf("allocation failed: malloc %p posix_memalign %d mmap %p calloc %p errno %d\n",
               (void *)a, rc, (void *)c, (void *)d, errno);
        return 1;
    }
    uint64_t *arr[4] = {a, b, c, d};
    uint64_t len[4] = {n, n, n, big};
    for (int i = 0; i < 4; i++) fill(arr[i], len[i], i);
    uint64_t bad = 0;
    const char *names[4] = {"malloc", "posix_memalign", "mmap", "calloc"};
    for (int i = 0; i < 4; i++) bad += check(arr[i], len[i], i, names[i]);
    printf("arrays: %llu GiB in 4 blocks, %llu words checked, %llu bad\n",
           (unsigned long long)((3 * n + big) / GIB), (unsigned long long)((3 * n + big) / MIB),
           (unsigned long long)bad);
    free(a);
    free(b);
    munmap(c, n);
    free(d);
    return bad != 0;
}

static int grow(void) {
    uint64_t small = 1 * GIB, large = 21 * GIB;
    uint64_t *a = malloc(small);
    if (!a) return printf("malloc 1 GiB failed\n"), 1;
    fill(a, small, 7);
    uint64_t *mid = realloc(a, 8 * GIB);
    uint64_t *b = mid ? realloc(mid, large) : NULL;
    if (!b) return printf("realloc to 21 GiB failed: errno %d\n", errno), 1;
    uint64_t bad = check(b, small, 7, "realloc kept");
    /* The grown part reads zero until written. */
    for (uint64_t off = small; off < large; off += 64 * MIB)
        if (b[off / 8] != 0 && bad++ < 5) printf("grown part not zero at %llu MiB\n", (unsigned long long)(off / MIB));
    fill(b, large, 8);
    bad += check(b, large, 8, "realloc grown");
    /* A block from the small-object heap grown past 1 GiB moves to the large heap. */
    uint64_t *m = malloc(100 * MIB);
    fill(m, 100 * MIB, 9);
    uint64_t *m2 = realloc(m, 2 * GIB);
    if (!m2) return printf("realloc 100 MiB -> 2 GiB failed\n"), 1;
    bad += check(m2, 100 * MIB, 9, "realloc moved");
    printf("realloc: 1 GiB -> %llu GiB and 100 MiB -> 2 GiB, %llu bad\n",
           (unsigned long long)(large / GIB), (unsigned long long)bad);
    free(b);
    free(m2);
    return bad != 0;
}

static int exhaust(void) {
    errno = 0;
    void *p = malloc(1024 * GIB);
    printf("malloc(1 TiB): %s errno %d\n", p ? "succeeded" : "NULL", errno);
    errno = 0;
    void *q = mmap(NULL, 1024 * GIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("mmap(1 TiB): %s errno %d\n", q == MAP_FAILED ? "MAP_FAILED" : "succeeded", errno);
    fflush(stdout);
    if (p || q != MAP_FAILED) return 1;
    for (uint64_t n = 0; n < 64 * 1024; n++) {
        char *b = malloc(MIB);
        if (!b) return printf("malloc 1 MiB failed after %llu MiB\n", (unsigned long long)n), 1;
        memset(b, (int)n | 1, MIB);
    }
    printf("wrote 64 GiB without running out\n");
    return 1;
}

static long status_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t k = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, k) && line[k] == ':') v = atol(line + k + 1);
    if (f) fclose(f);
    return v;
}

static int sparse(uint64_t gib, uint64_t touch_mib) {
    long rss0 = status_kib("VmRSS"), pte0 = status_kib("VmPTE");
    uint64_t bytes = gib * GIB, pages = touch_mib * MIB / 4096;
    uint64_t stride = bytes / pages / 4096 * 4096;
    uint64_t *a = malloc(bytes);
    if (!a) return printf("malloc %llu GiB failed: errno %d\n", (unsigned long long)gib, errno), 1;
    for (uint64_t i = 0; i < pages; i++) a[i * stride / 8] = word_for(3, i);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < pages; i++) bad += a[i * stride / 8] != word_for(3, i);
    long rss1 = status_kib("VmRSS"), pte1 = status_kib("VmPTE");
    printf("sparse: %llu GiB reserved, %llu pages touched every %llu KiB, %llu bad; "
           "rss_growth_kib %ld pte_growth_kib %ld\n",
           (unsigned long long)gib, (unsigned long long)pages, (unsigned long long)(stride >> 10),
           (unsigned long long)bad, rss1 - rss0, pte1 - pte0);
    return bad != 0;
}

static int fill_blocks(uint64_t mib) {
    uint64_t **blocks = malloc(mib * sizeof *blocks), bad = 0;
    for (uint64_t i = 0; i < mib; i++) {
        blocks[i] = malloc(MIB);
        if (!blocks[i]) return printf("malloc failed after %llu MiB\n", (unsigned long long)i), 1;
        for (uint64_t w = 0; w < MIB / 8; w++) blocks[i][w] = word_for(i, w);
    }
    for (uint64_t i = 0; i < mib; i++)
        for (uint64_t w = 0; w < MIB / 8; w += 511) bad += blocks[i][w] != word_for(i, w);
    printf("fill: %llu MiB written and checked, %llu bad\n", (unsigned long long)mib, (unsigned long long)bad);
    return bad != 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && !strcmp(argv[1], "arrays")) return arrays();
    if (argc > 1 && !strcmp(argv[1], "realloc")) return grow();
    if (argc > 1 && !strcmp(argv[1], "exhaust")) return exhaust();
    if (argc > 3 && !strcmp(argv[1], "sparse")) return sparse(strtoull(argv[2], 0, 0), strtoull(argv[3], 0, 0));
    if (argc > 2 && !strcmp(argv[1], "fill")) return fill_blocks(strtoull(argv[2], 0, 0));
    fprintf(stderr, "usage: bigheap arrays|realloc|exhaust|sparse GIB TOUCH_MIB|fill MIB\n");
    return 2;
}
