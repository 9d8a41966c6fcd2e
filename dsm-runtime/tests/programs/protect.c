/* mprotect on pooled memory, as JITs and guard pages use it.
 * usage: protect
 *  1. JIT: a 256 KiB anonymous mapping (pooled), x86-64 code written into it, then made
 *     read-execute and called; a write to it must fault (SIGSEGV), and the code must still
 *     run after 64 MiB of other memory pushed it out of the cache.
 *  2. Guard page: the last page of a 1 MiB mapping made PROT_NONE; touching it must
 *     fault; the rest keeps its data through eviction; made read-write again, the guard
 *     page reads what was written before it was protected.
 * Prints one line per check; exits 0 only if all hold. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static sigjmp_buf env;
static void on_segv(int sig) { (void)sig; siglongjmp(env, 1); }

/* Whether writing (or reading) `p` faults. */
static int faults(volatile uint8_t *p, int write) {
    if (sigsetjmp(env, 1)) return 1;
    if (write) *p = 1; else (void)*p;
    return 0;
}

/* Writes 64 MiB of other memory (volatile: the stores must happen) to push the pages
 * under test out of a small cache. */
static void churn(void) {
    size_t n = 64u << 20;
    volatile uint8_t *junk = malloc(n);
    for (size_t i = 0; i < n; i += 4096) junk[i] = (uint8_t)(i >> 12) | 1;
    free((void *)junk);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa = {0};
    sa.sa_handler = on_segv;
    sigaction(SIGSEGV, &sa, NULL);
    int ok = 1;

    size_t len = 256 << 10;
    uint8_t *code = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    static const uint8_t ret42[] = {0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3}; /* mov eax,42; ret */
    memcpy(code + 8192, ret42, sizeof ret42);
    if (mprotect(code, len, PROT_READ | PROT_EXEC) != 0) { perror("mprotect rx"); return 1; }
    int (*fn)(void) = (int (*)(void))(code + 8192);
    int r1 = faults(code + 8192, 0) ? -1 : fn();
    int w = faults(code + 8192, 1);
    churn();
    int r2 = fn();
    printf("jit: returned %d, write %s, after eviction returned %d\n", r1,
           w ? "faulted" : "did not fault", r2);
    ok &= r1 == 42 && w && r2 == 42;

    size_t glen = 1 << 20;
    uint8_t *g = mmap(NULL, glen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < glen; i++) g[i] = (uint8_t)(i * 7 + 1);
    uint8_t *guard = g + glen - 4096;
    if (mprotect(guard, 4096, PROT_NONE) != 0) { perror("mprotect none"); return 1; }
    int gr = faults(guard + 10, 0), gw = faults(guard + 10, 1);
    churn();
    size_t bad = 0;
    for (size_t i = 0; i < glen - 4096; i++) bad += g[i] != (uint8_t)(i * 7 + 1);
    if (mprotect(guard, 4096, PROT_READ | PROT_WRITE) != 0) { perror("mprotect rw"); return 1; }
    for (size_t i = glen - 4096; i < glen; i++) bad += g[i] != (uint8_t)(i * 7 + 1);
    printf("guard: read %s, write %s, %zu bad bytes after eviction and unprotecting\n",
           gr ? "faulted" : "did not fault", gw ? "faulted" : "did not fault", bad);
    ok &= gr && gw && bad == 0;
    printf("%s\n", ok ? "all protections held" : "PROTECTION BROKEN");
    return ok ? 0 : 1;
}
