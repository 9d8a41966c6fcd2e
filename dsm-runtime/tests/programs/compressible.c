/* Pages that compress well and pages that do not, written, rewritten and read back many
 * times over a heap much larger than the cache: for the compressed tier.
 * usage: compressible MIB [random|mixed]
 *   mixed (default): two pages in three patterned (lz4 packs each to about an eighth),
 *   one in three pseudo-random (incompressible); random: every page pseudo-random.
 * Every page's contents follow from its index and version, so each read is checked
 * against what was written. Prints "ok <fnv-1a of every byte>" and exits 0, or the
 * first mismatches and exits 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static int all_random;

static int patterned(uint64_t i) { return !all_random && i % 3 != 2; }

/* Word j of page i at version v. A patterned page repeats a 64-word block eight times. */
static uint64_t word(uint64_t i, uint64_t j, uint64_t v) {
    if (patterned(i)) return ((i * 64 + (j & 63)) * 0x100000001ull) ^ (v << 56);
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ (j + 1) * 0xBF58476D1CE4E5B9ull ^ v;
    x ^= x >> 31;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 29);
}

static void put(uint64_t *p, uint64_t i, uint64_t v) {
    for (uint64_t j = 0; j < WORDS; j++) p[j] = word(i, j, v);
}

static uint64_t bad;

static void check(const uint64_t *p, uint64_t i, uint64_t v, const char *when) {
    for (uint64_t j = 0; j < WORDS; j++)
        if (p[j] != word(i, j, v)) {
            if (bad++ < 5)
                printf("%s: page %llu word %llu is %llx, wrote %llx\n", when,
                       (unsigned long long)i, (unsigned long long)j,
                       (unsigned long long)p[j], (unsigned long long)word(i, j, v));
            return;
        }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: compressible MIB [random|mixed]\n");
        return 2;
    }
    all_random = argc > 2 && strcmp(argv[2], "random") == 0;
    uint64_t n = strtoull(argv[1], NULL, 10) * 256;
    uint64_t *heap = malloc(n * PAGE);
    unsigned char *version = calloc(n, 1);
    if (!heap || !version) return 3;
    for (uint64_t i = 0; i < n; i++) put(heap + i * WORDS, i, version[i] = 1);
    /* Scattered reads: pages come back from wherever they went. */
    for (uint64_t k = 0; k < n; k++) {
        uint64_t i = k * 7919 % n;
        check(heap + i * WORDS, i, version[i], "first read");
    }
    /* Rewrite a quarter of them (dirty again), twice over, reading in between. */
    for (int round = 2; round <= 3; round++) {
        for (uint64_t i = round; i < n; i += 4) put(heap + i * WORDS, i, version[i] = round);
        for (uint64_t k = 0; k < n; k++) {
            uint64_t i = k * 104729 % n;
            check(heap + i * WORDS, i, version[i], "after a rewrite");
        }
    }
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = n; i-- > 0;) {
        check(heap + i * WORDS, i, version[i], "last read");
        const unsigned char *b = (const unsigned char *)(heap + i * WORDS);
        for (int k = 0; k < PAGE; k++) h = (h ^ b[k]) * 0x100000001b3ull;
    }
    if (bad) {
        printf("%llu pages differ\n", (unsigned long long)bad);
        return 1;
    }
    printf("ok %016llx\n", (unsigned long long)h);
    return 0;
}
