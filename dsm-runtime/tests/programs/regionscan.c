/* A scan for whole-region prefetching (`huge_regions`): writes N MiB, reads it all back,
 * rewrites every third page (writes to pages of regions moved in whole must be tracked
 * and go home), and reads everything back again. Four words of each page are checked,
 * spread over the page, so that a region moved in at the wrong place or half moved
 * shows. Prints "regionscan ok pages=N" and exits 0, or the first bad page and exits 1.
 * Usage: regionscan MIB */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static const size_t WORDS[4] = {0, 129, 300, 511};

static uint64_t value(size_t page, size_t word, uint64_t pass) {
    return ((((uint64_t)page << 20) | word) * 0x9E3779B97F4A7C15ull ^ pass) | 1;
}

static int check(volatile uint64_t *a, size_t page, uint64_t pass, const char *when) {
    for (int i = 0; i < 4; i++) {
        uint64_t v = a[page * 512 + WORDS[i]];
        if (v != value(page, WORDS[i], pass)) {
            printf("regionscan bad page %zu word %zu %s: %llx\n", page, WORDS[i], when,
                   (unsigned long long)v);
            return 1;
        }
    }
    return 0;
}

static void put(volatile uint64_t *a, size_t page, uint64_t pass) {
    for (int i = 0; i < 4; i++) a[page * 512 + WORDS[i]] = value(page, WORDS[i], pass);
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 96;
    size_t pages = (mib << 20) / 4096;
    volatile uint64_t *a = malloc(mib << 20);
    if (!a) { perror("malloc"); return 2; }
    for (size_t p = 0; p < pages; p++) put(a, p, 1);
    for (size_t p = 0; p < pages; p++)
        if (check(a, p, 1, "on the first read")) return 1;
    for (size_t p = 0; p < pages; p += 3) {
        if (check(a, p, 1, "before its rewrite")) return 1;
        put(a, p, 2);
    }
    for (size_t p = 0; p < pages; p++)
        if (check(a, p, p % 3 == 0 ? 2 : 1, "on the last read")) return 1;
    printf("regionscan ok pages=%zu\n", pages);
    return 0;
}
