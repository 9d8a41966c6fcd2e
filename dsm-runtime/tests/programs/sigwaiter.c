/* A program that takes its signals with sigwait, as servers do: it blocks SIGUSR1 and
 * SIGALRM in its only thread, sends itself both while walking its heap, and takes them
 * with sigwait. Natively a blocked signal stays pending until taken; under dsmrun it must
 * too: the runtime's threads must not take the program's signals (SIGUSR1's default
 * action would end the process). Prints "sigwaiter ok" and exits 0.
 * Usage: sigwaiter MIB ROUNDS */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 64;
    int rounds = argc > 2 ? atoi(argv[2]) : 200;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGALRM);
    if (sigprocmask(SIG_BLOCK, &set, 0)) { perror("sigprocmask"); return 2; }
    size_t bytes = mib << 20;
    volatile unsigned char *a = malloc(bytes);
    if (!a) { perror("malloc"); return 2; }
    unsigned long sum = 0;
    for (int r = 0; r < rounds; r++) {
        kill(getpid(), r % 2 ? SIGUSR1 : SIGALRM);
        /* Fault through the heap while the signal is pending. */
        for (size_t p = (size_t)r * 4096 * 7 % bytes; p < bytes; p += 4096 * 61) {
            a[p] = (unsigned char)(a[p] + r);
            sum += a[p];
        }
        int sig = 0;
        if (sigwait(&set, &sig) || sig != (r % 2 ? SIGUSR1 : SIGALRM)) {
            printf("sigwaiter: round %d took signal %d\n", r, sig);
            return 1;
        }
    }
    printf("sigwaiter ok rounds=%d sum=%lu\n", rounds, sum);
    return 0;
}
