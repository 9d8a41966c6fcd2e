/* Allocates 1 MiB blocks, touching each, until malloc fails; reports how it failed.
 * usage: oom */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    size_t n = 0;
    for (;;) {
        errno = 0;
        char *p = malloc(1 << 20);
        if (!p) {
            printf("malloc returned NULL with errno %d (%s) after %zu MiB\n", errno, strerror(errno), n);
            break;
        }
        memset(p, (int)n, 1 << 20);
        n++;
        if (n > (1u << 20)) { printf("no limit\n"); return 1; }
    }
    /* The program can go on: small allocations after freeing some memory succeed. */
    void *q = calloc(1, 100);
    printf("after: %s\n", q ? "calloc ok" : "calloc failed");
    return 0;
}
