/* Maps 64 MiB (which the preload serves from the global heap), writes every page, then
 * unmaps the upper half (a partial unmap of the block) and checks the lower half. */
#include <stdio.h>
#include <stdint.h>
#include <sys/mman.h>

int main(void) {
    const size_t len = 64 << 20, page = 4096;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t off = 0; off < len; off += page) *(uint64_t *)(p + off) = off / page + 1;
    if (munmap(p + len / 2, len / 2) != 0) { perror("munmap (upper half)"); return 1; }
    uint64_t sum = 0;
    size_t bad = 0;
    for (size_t off = 0; off < len / 2; off += page) {
        uint64_t v = *(uint64_t *)(p + off);
        bad += v != off / page + 1;
        sum += v;
    }
    if (munmap(p, len / 2) != 0) { perror("munmap (lower half)"); return 1; }
    printf("%zu bad, sum %llu\n", bad, (unsigned long long)sum);
    return bad != 0;
}
