/* Fills MIB MiB of heap, then keeps going over it until killed: reading it ("r") or
 * writing every page ("w", so that every cached page is dirty when a suspend comes).
 * For benches/suspend.sh. usage: fill MIB r|w */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: fill MIB r|w\n"); return 2; }
    size_t bytes = strtoul(argv[1], 0, 10) << 20;
    int write = argv[2][0] == 'w';
    volatile uint8_t *p = malloc(bytes);
    if (!p) { perror("malloc"); return 1; }
    memset((void *)p, 1, bytes);
    uint64_t sum = 0;
    for (uint8_t round = 0;; round++)
        for (size_t i = 0; i < bytes; i += 4096) {
            if (write) p[i] = round; else sum += p[i];
        }
    return (int)sum;
}
