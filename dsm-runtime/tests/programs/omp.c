/* OpenMP over a large heap: every thread allocates and fills its own arrays, then a
 * parallel reduction reads all of them in a strided order.
 * usage: omp MIB */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 64;
    size_t chunks = mib, words = (1u << 20) / 8;
    uint64_t **a = calloc(chunks, sizeof *a);
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        a[c] = malloc(words * 8);
        for (size_t w = 0; w < words; w++) a[c][w] = (c * words + w) * 0x9E3779B97F4A7C15ULL;
    }
    uint64_t sum = 0;
    #pragma omp parallel for reduction(^:sum) schedule(dynamic, 1)
    for (size_t k = 0; k < chunks * 4; k++) {
        size_t c = (k * 7919) % chunks;
        for (size_t w = k % 64; w < words; w += 64 * 17) sum ^= a[c][w] + w;
    }
    printf("omp %zu MiB: %016llx\n", mib, (unsigned long long)sum);
    for (size_t c = 0; c < chunks; c++) free(a[c]);
    free(a);
    return 0;
}
