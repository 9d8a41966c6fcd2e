/* Scans that write, read back and rewrite a heap (the recycling test, tests/recycle.rs).
 * usage: rescan MIB
 * Writes four words of every page of a MIB MiB heap, reads them all back front to back,
 * then reads and rewrites each page, and reads everything back again; prints
 * "bad=N" (words that did not hold what was written) and exits 1 if N > 0. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define PAGE 4096ull
static const unsigned words[4] = {0, 129, 300, 511};

static uint64_t value(uint64_t page, unsigned w, uint64_t pass) {
    return ((page << 20 | w) * 0x9E3779B97F4A7C15ull ^ pass) | 1; /* never zero */
}

static uint64_t check(volatile uint64_t *a, uint64_t pages, uint64_t pass, int rewrite) {
    uint64_t bad = 0;
    for (uint64_t p = 0; p < pages; p++) {
        for (int i = 0; i < 4; i++) {
            uint64_t v = a[p * (PAGE / 8) + words[i]];
            if (v != value(p, words[i], pass) && bad++ < 5)
                printf("page %llu word %u: %llx, wrote %llx\n", (unsigned long long)p,
                       words[i], (unsigned long long)v,
                       (unsigned long long)value(p, words[i], pass));
        }
        if (rewrite)
            for (int i = 0; i < 4; i++) a[p * (PAGE / 8) + words[i]] = value(p, words[i], pass + 1);
    }
    return bad;
}

int main(int argc, char **argv) {
    uint64_t pages = (argc > 1 ? strtoull(argv[1], 0, 10) : 64) * 256;
    volatile uint64_t *a = malloc(pages * PAGE);
    if (!a) { printf("malloc failed\n"); return 1; }
    for (uint64_t p = 0; p < pages; p++)
        for (int i = 0; i < 4; i++) a[p * (PAGE / 8) + words[i]] = value(p, words[i], 1);
    uint64_t bad = check(a, pages, 1, 0);
    bad += check(a, pages, 1, 1);
    bad += check(a, pages, 2, 0);
    printf("rescan pages=%llu bad=%llu\n", (unsigned long long)pages, (unsigned long long)bad);
    return bad != 0;
}
