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
 * daemon again. With $POWERCUT_AT_MS instead, the cut comes that many ms
 * after the start, wherever the process is (between two syncs, say). A SIGKILL alone would not do: the page cache would keep
 * every write. Syncs from several threads (the store flushes on one of its
 * own) are taken one at a time.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define FDS 4096

static char path[PATH_MAX];       /* the watched file, once opened */
static unsigned char watched[FDS]; /* 1: plain, 2: opened O_SYNC/O_DSYNC */
static unsigned long syncs;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* syncs and snapshots */
static char buf[1 << 16];         /* snapshot(), under mu */

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

static void *cut_later(void *arg)
{
	long ms = (long)arg;
	struct timespec ts = { ms / 1000, ms % 1000 * 1000000 };
	nanosleep(&ts, NULL);
	pthread_mutex_lock(&mu); /* not in the middle of an image */
	fprintf(stderr, "powercut: power cut at %ld ms\n", ms);
	kill(getpid(), SIGKILL);
	return NULL;
}

__attribute__((constructor)) static void start(void)
{
	const char *at = getenv("POWERCUT_AT_MS");
	pthread_t th;
	if (at && pthread_create(&th, NULL, cut_later, (void *)strtol(at, NULL, 10)) == 0)
		pthread_detach(th);
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

/* A sync of the watched file (CALL, on FD of at least KIND): the cut, or the
 * sync and a new image. */
#define SYNCING(type, call, fd, kind)                                          \
	do {                                                                   \
		if (!is(fd, kind))                                             \
			return (call);                                         \
		pthread_mutex_lock(&mu);                                       \
		before_sync();                                                 \
		type r_ = (call);                                              \
		if (r_ >= 0)                                                   \
			snapshot();                                            \
		pthread_mutex_unlock(&mu);                                     \
		return r_;                                                     \
	} while (0)

int fdatasync(int fd)
{
	REAL(int, fdatasync, int);
	SYNCING(int, real_fdatasync(fd), fd, 1);
}

int fsync(int fd)
{
	REAL(int, fsync, int);
	SYNCING(int, real_fsync(fd), fd, 1);
}

/* A write through a synchronous descriptor is a sync of its own. */
#define SYNC_WRITE(call, fd) SYNCING(ssize_t, call, fd, 2)

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
