/* SPDX-License-Identifier: MIT */
/*
 * powercut.c - a fault injector that test_powercut.sh preloads into the
 * daemon (LD_PRELOAD): it shows what a power cut would leave of the store.
 *
 * It watches one file (the first opened whose path ends in $POWERCUT_FILE)
 * and keeps $POWERCUT_IMAGE equal to that file as of its last completed
 * sync: when fdatasync or fsync on it returns, and after a write to it
 * through an O_SYNC/O_DSYNC descriptor. Writes made since then are what a
 * power cut loses. At the $POWERCUT_AT-th sync (1-based; 0 or unset: never)
 * it SIGKILLs the process before the sync happens, so the image is exactly
 * the disk after a cut at that instant: the test restores it and starts the
 * daemon again. A SIGKILL alone would not do: the page cache would keep
 * every write.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define FDS 4096

static char path[PATH_MAX];       /* the watched file, once opened */
static unsigned char watched[FDS]; /* 1: plain, 2: opened O_SYNC/O_DSYNC */
static unsigned long syncs;

#define REAL(ret, name, ...)                                                  \
	static ret (*real_##name)(__VA_ARGS__);                               \
	if (!real_##name)                                                     \
		real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

static void die(const char *what)
{
	fprintf(stderr, "powercut: %s failed\n", what);
	abort();
}

/* POWERCUT_IMAGE := the watched file now (via a temporary and a rename, so
 * that a kill in the middle leaves the previous image). */
static void snapshot(void)
{
	const char *image = getenv("POWERCUT_IMAGE");
	char tmp[PATH_MAX + 8];
	char buf[1 << 16];
	ssize_t n;
	if (!image)
		return;
	snprintf(tmp, sizeof tmp, "%s.tmp", image);
	REAL(int, open, const char *, int, ...);
	int in = real_open(path, O_RDONLY | O_CLOEXEC);
	int out = real_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (in < 0 || out < 0)
		die("open");
	while ((n = read(in, buf, sizeof buf)) > 0)
		if (write(out, buf, (size_t)n) != n)
			die("write");
	if (n < 0)
		die("read");
	close(in);
	close(out);
	if (rename(tmp, image) < 0)
		die("rename");
}

static void opened(int fd, const char *p, int flags)
{
	const char *want = getenv("POWERCUT_FILE");
	size_t lp = strlen(p), lw = want ? strlen(want) : 0;
	if (fd < 0 || fd >= FDS || !lw || lp < lw || strcmp(p + lp - lw, want) != 0)
		return;
	if (!path[0]) {
		snprintf(path, sizeof path, "%s", p);
		snapshot(); /* what is found at open is on the disk */
	}
	if (strcmp(p, path) == 0)
		watched[fd] = (flags & (O_SYNC | O_DSYNC)) ? 2 : 1;
}

static int is(int fd, int kind)
{
	return fd >= 0 && fd < FDS && watched[fd] >= kind;
}

/* Before a sync of the watched file: the cut, if this is the one. */
static void before_sync(void)
{
	const char *at = getenv("POWERCUT_AT");
	if (at && strtoul(at, NULL, 10) == ++syncs) {
		fprintf(stderr, "powercut: power cut at sync %lu\n", syncs);
		kill(getpid(), SIGKILL);
	}
}

static mode_t mode_arg(int flags, va_list ap)
{
	return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *p, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t m = mode_arg(flags, ap);
	va_end(ap);
	REAL(int, open, const char *, int, ...);
	int fd = real_open(p, flags, m);
	opened(fd, p, flags);
	return fd;
}

int open64(const char *p, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t m = mode_arg(flags, ap);
	va_end(ap);
	REAL(int, open64, const char *, int, ...);
	int fd = real_open64(p, flags, m);
	opened(fd, p, flags);
	return fd;
}

int openat(int dirfd, const char *p, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t m = mode_arg(flags, ap);
	va_end(ap);
	REAL(int, openat, int, const char *, int, ...);
	int fd = real_openat(dirfd, p, flags, m);
	opened(fd, p, flags);
	return fd;
}

int close(int fd)
{
	REAL(int, close, int);
	if (fd >= 0 && fd < FDS)
		watched[fd] = 0;
	return real_close(fd);
}

int fdatasync(int fd)
{
	REAL(int, fdatasync, int);
	if (is(fd, 1))
		before_sync();
	int rc = real_fdatasync(fd);
	if (rc == 0 && is(fd, 1))
		snapshot();
	return rc;
}

int fsync(int fd)
{
	REAL(int, fsync, int);
	if (is(fd, 1))
		before_sync();
	int rc = real_fsync(fd);
	if (rc == 0 && is(fd, 1))
		snapshot();
	return rc;
}

/* A write through a synchronous descriptor is a sync of its own. */
#define SYNC_WRITE(call, fd)                                                   \
	do {                                                                   \
		if (is(fd, 2))                                                 \
			before_sync();                                         \
		ssize_t r_ = (call);                                           \
		if (r_ >= 0 && is(fd, 2))                                      \
			snapshot();                                            \
		return r_;                                                     \
	} while (0)

ssize_t pwrite(int fd, const void *b, size_t n, off_t off)
{
	REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
	SYNC_WRITE(real_pwrite(fd, b, n, off), fd);
}

ssize_t pwrite64(int fd, const void *b, size_t n, off_t off)
{
	REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
	SYNC_WRITE(real_pwrite64(fd, b, n, off), fd);
}

ssize_t write(int fd, const void *b, size_t n)
{
	REAL(ssize_t, write, int, const void *, size_t);
	SYNC_WRITE(real_write(fd, b, n), fd);
}

ssize_t writev(int fd, const struct iovec *v, int c)
{
	REAL(ssize_t, writev, int, const struct iovec *, int);
	SYNC_WRITE(real_writev(fd, v, c), fd);
}
