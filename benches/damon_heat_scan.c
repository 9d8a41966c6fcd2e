// Present pages of a range of another process, and a DAMON-less accessed-bit proxy, for
// benches/damon_heat.sh.
//
// Usage: damon_heat_scan PID START END   (hex or decimal addresses)
// Prints one line per run of present pages: "START_HEX NPAGES", then "# present N".
//
// Usage: damon_heat_scan PID START END refs WINDOW_MS
// Clears the accessed bits of the process's page tables (/proc/PID/clear_refs, 1),
// sleeps WINDOW_MS, then sums smaps's Rss and Referenced (KiB) over the mappings that
// start inside [START, END) and prints "RSS_KIB REFERENCED_KIB ELAPSED_US", elapsed
// from the clear to the end of the read. Referenced counts pages whose accessed bit
// was set again (touched, or installed: a new PTE is made young) within the window.
// Uses the PAGEMAP_SCAN ioctl (Linux 6.7+) on /proc/PID/pagemap, which walks only the
// populated page tables: a 4 TiB reservation with a few MiB resident costs about as
// much as the resident part. Falls back to reading pagemap entries (bit 63 = present)
// when the ioctl is missing; that reads 8 bytes per page of the range, so the caller
// must then pass the used part of the heap, not the whole reservation.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <unistd.h>

// From include/uapi/linux/fs.h (6.7); the build machine's headers may be older.
struct page_region {
	uint64_t start, end, categories;
};
struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGE_IS_PRESENT (1 << 3)
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define VEC 4096

static uint64_t now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static int refs(const char *pid, uint64_t start, uint64_t end, long window_ms)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%s/clear_refs", pid);
	int fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, "1", 1) != 1) {
		perror(path);
		return 1;
	}
	close(fd);
	uint64_t t0 = now_us();
	struct timespec w = { window_ms / 1000, (window_ms % 1000) * 1000000L };
	nanosleep(&w, NULL);
	snprintf(path, sizeof path, "/proc/%s/smaps", pid);
	FILE *f = fopen(path, "r");
	if (!f) {
		perror(path);
		return 1;
	}
	uint64_t rss = 0, ref = 0, kib;
	int inside = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long long a, b;
		if (sscanf(line, "%llx-%llx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
			inside = a >= start && a < end;
		else if (inside && sscanf(line, "Rss: %" SCNu64, &kib) == 1)
			rss += kib;
		else if (inside && sscanf(line, "Referenced: %" SCNu64, &kib) == 1)
			ref += kib;
	}
	fclose(f);
	printf("%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", rss, ref, now_us() - t0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[4], "refs") == 0)
		return refs(argv[1], strtoull(argv[2], NULL, 0), strtoull(argv[3], NULL, 0), atol(argv[5]));
	if (argc != 4) {
		fprintf(stderr, "usage: %s PID START END [refs WINDOW_MS]\n", argv[0]);
		return 2;
	}
	char path[64];
	snprintf(path, sizeof path, "/proc/%s/pagemap", argv[1]);
	uint64_t start = strtoull(argv[2], NULL, 0), end = strtoull(argv[3], NULL, 0);
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	long psz = sysconf(_SC_PAGESIZE);
	static struct page_region vec[VEC];
	uint64_t present = 0, at = start;
	while (at < end) {
		struct pm_scan_arg a = {
			.size = sizeof a, .start = at, .end = end,
			.vec = (uintptr_t)vec, .vec_len = VEC,
			.category_mask = PAGE_IS_PRESENT, .return_mask = PAGE_IS_PRESENT,
		};
		int n = ioctl(fd, PAGEMAP_SCAN, &a);
		if (n < 0 && (errno == ENOTTY || errno == EINVAL) && at == start)
			goto fallback;
		if (n < 0) {
			if (errno == ESRCH)
				break; /* the process ended */
			perror("PAGEMAP_SCAN");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			uint64_t np = (vec[i].end - vec[i].start) / psz;
			printf("%" PRIx64 " %" PRIu64 "\n", vec[i].start, np);
			present += np;
		}
		if (a.walk_end <= at)
			break;
		at = a.walk_end;
	}
	printf("# present %" PRIu64 "\n", present);
	return 0;

fallback:;
	static uint64_t e[VEC];
	uint64_t run_start = 0, run = 0;
	for (at = start; at < end;) {
		size_t want = (end - at) / psz < VEC ? (end - at) / psz : VEC;
		ssize_t got = pread(fd, e, want * 8, (at / psz) * 8);
		if (got <= 0)
			break;
		for (size_t i = 0; i < (size_t)got / 8; i++, at += psz) {
			if (e[i] >> 63) {
				if (!run)
					run_start = at;
				run++;
				present++;
			} else if (run) {
				printf("%" PRIx64 " %" PRIu64 "\n", run_start, run);
				run = 0;
			}
		}
	}
	if (run)
		printf("%" PRIx64 " %" PRIu64 "\n", run_start, run);
	printf("# present %" PRIu64 "\n", present);
	return 0;
}
