/* Processes under dsmrun: fork without exec (child and parent check their heaps),
 * system() and posix_spawn().
 *
 * usage: forker          small heap: every way of starting a process must work
 *        forker MIB      large heap first: fork may be refused, the heap must survive */
#include <errno.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int check(uint64_t *p, size_t n, uint64_t salt) {
    for (size_t i = 0; i < n; i += 509)
        if (p[i] != i * 2654435761u + salt) return 0;
    return 1;
}

static void fill(uint64_t *p, size_t n, uint64_t salt) {
    for (size_t i = 0; i < n; i++) p[i] = i * 2654435761u + salt;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1;
    size_t n = mib * (1u << 20) / 8;
    uint64_t *heap = malloc(n * 8);
    if (!heap) { perror("malloc"); return 2; }
    fill(heap, n, 7);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        printf("fork refused: errno %d\n", errno);
    } else if (pid == 0) {
        int ok = check(heap, n, 7);
        uint64_t *more = malloc(1 << 20); /* the child keeps allocating */
        fill(more, (1 << 20) / 8, 9);
        fill(heap, n, 11); /* and writing: the parent must not see it */
        printf("child heap %s\n", ok && check(more, (1 << 20) / 8, 9) ? "ok" : "CORRUPT");
        fflush(stdout);
        _exit(ok ? 0 : 3);
    } else {
        int st = 0;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("child failed %d\n", st); return 4; }
    }
    printf("parent heap %s\n", check(heap, n, 7) ? "ok" : "CORRUPT");
    fflush(stdout);
    if (argc > 1) return 0;
    if (system("echo system ok") != 0) return 5;
    fflush(stdout);
    char *args[] = {"echo", "posix_spawn ok", NULL};
    pid_t sp;
    if (posix_spawnp(&sp, "echo", NULL, NULL, args, environ) != 0) return 6;
    int st;
    waitpid(sp, &st, 0);
    free(heap);
    return 0;
}
