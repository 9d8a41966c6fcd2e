/* The sequential scan of issue 22: write N MiB, then read it front to back one byte
 * per page, timing each pass. Prints "scan write_us_per_page=.. read_us_per_page=..".
 * Unmodified C: run it under dsmrun (the heap is in the global range). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 512;
    size_t bytes = mib << 20, pages = bytes / 4096;
    unsigned char *a = malloc(bytes);
    if (!a) { perror("malloc"); return 1; }
    double t0 = now();
    for (size_t p = 0; p < pages; p++) memset(a + p * 4096, (int)(p * 7 + 1), 4096);
    double t1 = now();
    unsigned long sum = 0, bad = 0;
    for (size_t p = 0; p < pages; p++) {
        unsigned char v = a[p * 4096 + (p % 4096)];
        sum += v;
        bad += v != (unsigned char)(p * 7 + 1);
    }
    double t2 = now();
    printf("scan mib=%zu write_us_per_page=%.2f read_us_per_page=%.2f read_s=%.3f sum=%lu bad=%lu\n",
           mib, (t1 - t0) * 1e6 / pages, (t2 - t1) * 1e6 / pages, t2 - t1, sum, bad);
    return bad != 0;
}
