/* UFFDIO_MOVE (Linux 6.8) for the benchmarks that use it: Debian 12's installed uapi
 * header predates it. Include after <linux/userfaultfd.h>. */
#ifndef UFFD_MOVE_COMPAT_H
#define UFFD_MOVE_COMPAT_H
#ifndef UFFDIO_MOVE
struct uffdio_move {
  __u64 dst, src, len;
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
  __u64 mode;
  __s64 move;
};
#define _UFFDIO_MOVE (0x05)
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#endif
