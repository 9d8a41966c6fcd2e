/* Faults from one thread, then from two, for tests/placement.rs: the runtime should move
 * itself and the nodes to the one faulting thread's CPU, then let them all go.
 *
 * usage: follower HEAP_MIB DIR
 * Prints "pid=N" first. Phase 1: the main thread touches random pages of the heap until
 * DIR/two exists. Phase 2: a second thread does the same beside it until DIR/stop
 * exists. Each thread checks what it wrote; prints "ok" and exits 0, or exits 1. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t pages;
static uint64_t *heap;
static char two[4096], stop[4096];

static uint64_t next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Random pages: each holds its own number in one word (written at start). Returns 0 on
 * a wrong value. Stops when `until` exists (checked every 1024 accesses). */
static int walk(uint64_t seed, const char *until) {
    for (;;) {
        for (int i = 0; i < 1024; i++) {
            size_t p = next(&seed) % pages;
            if (heap[p * 512] != p)
                return 0;
        }
        if (access(until, F_OK) == 0)
            return 1;
    }
}

static void *second(void *arg) {
    (void)arg;
    return (void *)(intptr_t)walk(99, stop);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: follower HEAP_MIB DIR\n");
        return 2;
    }
    pages = (size_t)atol(argv[1]) << 8;
    snprintf(two, sizeof two, "%s/two", argv[2]);
    snprintf(stop, sizeof stop, "%s/stop", argv[2]);
    heap = malloc(pages * 4096);
    if (!heap)
        return 1;
    for (size_t p = 0; p < pages; p++)
        heap[p * 512] = p;
    printf("pid=%d\n", (int)getpid());
    fflush(stdout);
    if (!walk(1, two))
        return 1;
    pthread_t t;
    if (pthread_create(&t, NULL, second, NULL))
        return 1;
    int mine = walk(7, stop);
    void *theirs;
    pthread_join(t, &theirs);
    if (!mine || !theirs)
        return 1;
    printf("ok\n");
    return 0;
}
