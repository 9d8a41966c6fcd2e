/* The restarter: maps a process image (see src/checkpoint/format.rs) back at its
 * addresses and enters the restored program's restart hook.
 *
 * It must live where no image does, so it is a static program without libc, linked at
 * 0x3f0000000000 (RESTARTER_ZONE in format.rs), with its stack in its own bss. It is run
 * by dsm_runtime::checkpoint::restart::exec_restarter (ASLR disabled) as
 *     restarter IMAGE JOB_ENV
 * and either becomes the restored process or exits with status 1 and a message. */

typedef unsigned long u64;
typedef long i64;

#define PAGE 4096UL
#define ZONE_START 0x3f0000000000UL
#define ZONE_END 0x3f0100000000UL
#define META_AT 0x3f0080000000UL
#define STACK_BYTES (8UL << 20)
#define STACK_ROOM (8UL << 20)
#define MAGIC 0x3154504b434d5344UL /* "DSMCKPT1" little-endian */
#define VERSION 1
#define MM_FIELDS 11
#define SIGNALS 64
#define KIND_STACK 1
#define FD_PATH 1

char dsm_stack[STACK_BYTES] __attribute__((aligned(16)));
static char job_env[4096];
static char maps_text[1 << 20];
static const char *image_path;

/* Entry: switch to our own stack at once (the kernel's is where the image's may be). */
__asm__(".globl _start\n_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  lea dsm_stack+8388608(%rip), %rsp\n"
        "  call entry\n"
        "  ud2\n");

static i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f) {
    register i64 r10 __asm__("r10") = d;
    register i64 r8 __asm__("r8") = e;
    register i64 r9 __asm__("r9") = f;
    i64 ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define sys3(n, a, b, c) sys6(n, (i64)(a), (i64)(b), (i64)(c), 0, 0, 0)

enum {
    SYS_read = 0, SYS_write = 1, SYS_open = 2, SYS_close = 3, SYS_lseek = 8, SYS_mmap = 9,
    SYS_mprotect = 10, SYS_munmap = 11, SYS_rt_sigaction = 13, SYS_rt_sigprocmask = 14,
    SYS_pread = 17, SYS_dup2 = 33, SYS_prctl = 157, SYS_arch_prctl = 158,
    SYS_exit_group = 231, SYS_close_range = 436
};

void *memset(void *d, int c, u64 n) {
    char *p = d;
    while (n--) *p++ = (char)c;
    return d;
}
void *memcpy(void *d, const void *s, u64 n) {
    char *p = d;
    const char *q = s;
    while (n--) *p++ = *q++;
    return d;
}

static u64 len(const char *s) {
    u64 n = 0;
    while (s[n]) n++;
    return n;
}

static void say(const char *s) { sys3(SYS_write, 2, s, len(s)); }

static void say_hex(u64 v) {
    char b[19] = "0x";
    for (int i = 0; i < 16; i++) b[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
    b[18] = 0;
    say(b);
}

static void say_num(i64 v) {
    char b[24];
    int i = 23;
    b[i] = 0;
    u64 u = v < 0 ? -v : v;
    do { b[--i] = '0' + u % 10; u /= 10; } while (u);
    if (v < 0) b[--i] = '-';
    say(b + i);
}

static void __attribute__((noreturn)) die(const char *what, const char *why) {
    say("dsm-restart: ");
    say(image_path ? image_path : "");
    say(": ");
    say(what);
    if (why) { say(": "); say(why); }
    say("\n");
    for (;;) sys3(SYS_exit_group, 1, 0, 0);
}

static void __attribute__((noreturn)) die_errno(const char *what, i64 err) {
    say("dsm-restart: ");
    say(what);
    say(": error ");
    say_num(-err);
    say("\n");
    for (;;) sys3(SYS_exit_group, 1, 0, 0);
}

static u64 hash_words(const u64 *w, u64 n) {
    u64 h = 0xcbf29ce484222325UL;
    for (u64 i = 0; i < n; i++) h = (h ^ w[i]) * 0x100000001b3UL;
    return h;
}

static void pread_all(int fd, void *to, u64 n, u64 at) {
    char *p = to;
    while (n) {
        i64 r = sys6(SYS_pread, fd, (i64)p, n, at, 0, 0);
        if (r <= 0) die("the image is truncated or unreadable", 0);
        p += r; n -= r; at += r;
    }
}

/* Reads the metadata words one by one, refusing to run past their end. */
struct cursor { const u64 *w; u64 n, at; };
static u64 next(struct cursor *c) {
    if (c->at >= c->n) die("the image is damaged", "its metadata ends too early");
    return c->w[c->at++];
}

struct special { u64 start, end; };

/* Finds [vdso], [vvar] and [vsyscall] here, and unmaps everything else outside the
 * zone when `unmap` is set. */
static void scan_maps(struct special *vdso, struct special *vvar, int unmap) {
    int fd = sys3(SYS_open, "/proc/self/maps", 0, 0);
    if (fd < 0) die_errno("opening /proc/self/maps", fd);
    u64 n = 0;
    for (;;) {
        i64 r = sys3(SYS_read, fd, maps_text + n, sizeof maps_text - 1 - n);
        if (r <= 0) break;
        n += r;
    }
    sys3(SYS_close, fd, 0, 0);
    maps_text[n] = 0;
    char *line = maps_text;
    while (*line) {
        char *end = line;
        while (*end && *end != '\n') end++;
        u64 start = 0, stop = 0;
        char *p = line;
        for (; *p != '-'; p++) start = start * 16 + (*p <= '9' ? *p - '0' : *p - 'a' + 10);
        for (p++; *p != ' '; p++) stop = stop * 16 + (*p <= '9' ? *p - '0' : *p - 'a' + 10);
        char *name = end;
        while (name > line && name[-1] != ' ') name--;
        int is_vdso = end - name == 6 && !__builtin_memcmp(name, "[vdso]", 6);
        int is_vvar = end - name == 6 && !__builtin_memcmp(name, "[vvar]", 6);
        /* Newer kernels split the vvar area: [vvar], [vvar_vclock]. */
        int is_vvar_part = end - name > 5 && !__builtin_memcmp(name, "[vvar", 5);
        int is_vsys = end - name == 10 && !__builtin_memcmp(name, "[vsyscall]", 10);
        if (is_vdso) { vdso->start = start; vdso->end = stop; }
        if (is_vvar) { vvar->start = start; vvar->end = stop; }
        int ours = start >= ZONE_START && stop <= ZONE_END;
        if (unmap && !ours && !is_vdso && !is_vvar_part && !is_vsys)
            sys3(SYS_munmap, start, stop - start, 0);
        line = *end ? end + 1 : end;
    }
}

/* Puts the vDSO (and its vvar area just below it) where the image has it: the kernel
 * maps a fresh one at a given address once the old one is gone (ARCH_MAP_VDSO_64). */
static void move_vdso(struct special *vdso, struct special *vvar, u64 vdso_start, u64 vvar_start) {
    if (vdso->start == vdso_start && vvar->start == vvar_start) return;
    /* The usual layout, here and in the image: the vvar area, then the vDSO. */
    if (!vdso_start || !vvar_start || vdso->start - vvar->start != vdso_start - vvar_start)
        return; /* check_special says what differs */
    sys3(SYS_munmap, vvar->start, vdso->end - vvar->start, 0);
    i64 r = sys3(SYS_arch_prctl, 0x2003 /* ARCH_MAP_VDSO_64 */, vvar_start, 0);
    if (r < 0) die_errno("mapping the vDSO where the image has it", r);
    scan_maps(vdso, vvar, 0);
}

static void check_special(const char *name, struct special here, u64 start, u64 end) {
    if (here.start == start && here.end == end) return;
    say("dsm-restart: the ");
    say(name);
    say(" is at ");
    say_hex(here.start);
    say(" here and at ");
    say_hex(start);
    say(" in the image: the image comes from another kernel\n");
    for (;;) sys3(SYS_exit_group, 1, 0, 0);
}

static void *map_fixed(u64 at, u64 bytes) {
    i64 r = sys6(SYS_mmap, at, bytes, 3 /* rw */, 0x32 /* PRIVATE|FIXED|ANON */, -1, 0);
    if (r != (i64)at) die_errno("mapping a region of the image", r);
    return (void *)at;
}

/* Maps one saved mapping and reads its runs in, checking each run's hash. */
static void restore_mapping(struct cursor *c, int fd) {
    u64 start = next(c), end = next(c), prot = next(c), kind = next(c), runs = next(c);
    if (start >= end || (start % PAGE) || (end % PAGE) || (end > ZONE_START && start < ZONE_END))
        die("the image is damaged", "a mapping is malformed or overlaps the restarter");
    map_fixed(start, end - start);
    if (kind == KIND_STACK && end - start < STACK_ROOM)
        map_fixed(end - STACK_ROOM, STACK_ROOM - (end - start));
    for (u64 i = 0; i < runs; i++) {
        u64 addr = next(c), bytes = next(c), off = next(c), hash = next(c);
        if (addr < start || addr + bytes > end || bytes % 8)
            die("the image is damaged", "a run of pages lies outside its mapping");
        pread_all(fd, (void *)addr, bytes, off);
        if (hash_words((const u64 *)addr, bytes / 8) != hash)
            die("the image is damaged", "a run of pages does not match its checksum");
    }
    i64 r = sys3(SYS_mprotect, start, end - start, prot);
    if (r) die_errno("setting a mapping's protection", r);
}

struct prctl_mm_map {
    u64 start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
    u64 arg_start, arg_end, env_start, env_end;
    u64 *auxv;
    unsigned auxv_size, exe_fd;
};

static u64 auxv_copy[512];

static void restore_mm(const u64 *mm, struct cursor *c) {
    struct prctl_mm_map m;
    m.start_code = mm[0]; m.end_code = mm[1]; m.start_data = mm[2]; m.end_data = mm[3];
    m.start_brk = mm[4]; m.brk = mm[5]; m.start_stack = mm[6]; m.arg_start = mm[7];
    m.arg_end = mm[8]; m.env_start = mm[9]; m.env_end = mm[10];
    u64 n = next(c);
    if (n > 512) die("the image is damaged", "its auxiliary vector is too long");
    for (u64 i = 0; i < n; i++) auxv_copy[i] = next(c);
    m.auxv = auxv_copy;
    m.auxv_size = n * 8;
    m.exe_fd = (unsigned)-1;
    i64 r = sys6(SYS_prctl, 35 /* PR_SET_MM */, 14 /* PR_SET_MM_MAP */, (i64)&m, sizeof m, 0, 0);
    if (r) {
        say("dsm-restart: warning: the program break and argument area could not be restored ");
        say("(prctl PR_SET_MM_MAP: error ");
        say_num(-r);
        say(")\n");
    }
}

static void restore_signals(struct cursor *c) {
    for (int sig = 1; sig <= SIGNALS; sig++) {
        u64 act[4];
        for (int i = 0; i < 4; i++) act[i] = next(c);
        if (sig != 9 && sig != 19) sys6(SYS_rt_sigaction, sig, (i64)act, 0, 8, 0, 0);
    }
}

static char path_buf[4096];

static void restore_fds(struct cursor *c) {
    u64 n = next(c);
    for (u64 i = 0; i < n; i++) {
        u64 fd = next(c), kind = next(c), flags = next(c), off = next(c), plen = next(c);
        if (plen >= sizeof path_buf) die("the image is damaged", "a file path is too long");
        for (u64 w = 0; w < (plen + 7) / 8; w++) {
            u64 word = next(c);
            memcpy(path_buf + w * 8, &word, 8);
        }
        path_buf[plen] = 0;
        if (kind != FD_PATH) continue;
        /* O_CREAT, O_EXCL, O_TRUNC would change the file: never again. */
        i64 nfd = sys3(SYS_open, path_buf, flags & ~(0100UL | 0200UL | 01000UL), 0);
        if (nfd < 0) {
            say("dsm-restart: cannot reopen descriptor ");
            say_num(fd);
            say(" (");
            say(path_buf);
            say("): error ");
            say_num(-nfd);
            say("\n");
            for (;;) sys3(SYS_exit_group, 1, 0, 0);
        }
        sys3(SYS_lseek, nfd, off, 0);
        if ((u64)nfd != fd) {
            sys3(SYS_dup2, nfd, fd, 0);
            sys3(SYS_close, nfd, 0, 0);
        }
    }
}

void __attribute__((noreturn, used)) entry(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    if (argc != 3) {
        say("usage: dsm-restarter IMAGE JOB_ENV (run by dsmrun, not by hand)\n");
        for (;;) sys3(SYS_exit_group, 2, 0, 0);
    }
    u64 all = ~0UL;
    sys6(SYS_rt_sigprocmask, 2 /* SIG_SETMASK */, (i64)&all, 0, 8, 0, 0);
    static char image_copy[4096];
    if (len(argv[1]) >= sizeof image_copy || len(argv[2]) >= sizeof job_env)
        die("path too long", 0);
    memcpy(image_copy, argv[1], len(argv[1]) + 1);
    memcpy(job_env, argv[2], len(argv[2]) + 1);
    image_path = image_copy;
    i64 fd = sys3(SYS_open, image_path, 0, 0);
    if (fd < 0) die_errno("opening the image", fd);
    u64 h[6];
    pread_all(fd, h, sizeof h, 0);
    if (h[0] != MAGIC) die("not a process image", "bad magic");
    if (h[1] != VERSION) die("the image was written by another version", 0);
    if (hash_words(h, 5) != h[5]) die("the image is damaged", "its header does not match its checksum");
    u64 meta_bytes = (h[3] + PAGE - 1) & ~(PAGE - 1);
    if (h[3] % 8 || meta_bytes > (256UL << 20)) die("the image is damaged", "bad metadata size");
    u64 *meta = map_fixed(META_AT, meta_bytes ? meta_bytes : PAGE);
    pread_all(fd, meta, h[3], h[2]);
    if (hash_words(meta, h[3] / 8) != h[4]) die("the image is damaged", "its metadata does not match its checksum");
    struct cursor c = {meta, h[3] / 8, 0};
    u64 hook = next(&c);
    next(&c); next(&c); next(&c); /* slot base and bytes, main tid: for the hook's checks */
    u64 fs_base = next(&c);
    u64 mm[MM_FIELDS];
    for (int i = 0; i < MM_FIELDS; i++) mm[i] = next(&c);
    struct cursor auxv_at = c;
    u64 aux_n = next(&c);
    for (u64 i = 0; i < aux_n; i++) next(&c);
    u64 vdso_start = next(&c), vdso_end = next(&c), vvar_start = next(&c), vvar_end = next(&c);
    struct special vdso = {0, 0}, vvar = {0, 0};
    scan_maps(&vdso, &vvar, 0);
    move_vdso(&vdso, &vvar, vdso_start, vvar_start);
    check_special("vDSO", vdso, vdso_start, vdso_end);
    check_special("vvar area", vvar, vvar_start, vvar_end);
    struct cursor signals = c;
    for (int i = 0; i < SIGNALS * 4; i++) next(&c);
    scan_maps(&vdso, &vvar, 1);
    u64 maps = next(&c);
    for (u64 i = 0; i < maps; i++) restore_mapping(&c, fd);
    restore_mm(mm, &auxv_at);
    restore_signals(&signals);
    sys3(SYS_close, fd, 0, 0);
    sys3(SYS_close_range, 3, ~0U, 0);
    restore_fds(&c);
    i64 r = sys3(SYS_arch_prctl, 0x1002 /* ARCH_SET_FS */, fs_base, 0);
    if (r) die_errno("setting the main thread's TLS", r);
    ((void (*)(const char *))hook)(job_env);
    die("the restart hook returned", 0);
}
