/* Works on its heap while it holds a pipe open: a process the checkpointer must refuse
 * (a pipe cannot be saved), and which must run on unharmed after the refusal. The
 * output depends only on the arguments.
 *
 * usage: pipeholder MIB ROUNDS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: pipeholder MIB ROUNDS\n"); return 2; }
    size_t n = strtoul(argv[1], 0, 10) << 17, rounds = strtoul(argv[2], 0, 10);
    int p[2];
    if (pipe(p)) { perror("pipe"); return 1; }
    uint64_t *a = malloc(n * sizeof *a);
    if (!a) { perror("malloc"); return 1; }
    for (size_t i = 0; i < n; i++) a[i] = i;
    uint64_t s = 88172645463325252ULL, sum = 0;
    for (size_t r = 0; r < rounds; r++)
        for (size_t i = 0; i < n; i++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            a[i] += s;
            sum ^= a[i] * (r + 1); /* sequential passes: a fault per page */
        }
    char c = 'x';
    if (write(p[1], &c, 1) != 1 || read(p[0], &c, 1) != 1) { perror("pipe"); return 1; }
    printf("pipeholder %s MiB %zu rounds: %016llx\n", argv[1], rounds, (unsigned long long)sum);
    return 0;
}
