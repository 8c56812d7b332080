/* SPDX-License-Identifier: MIT */
/*
 * loop.c - the epoll loop of loop.h: a table of watches indexed by fd, an
 * eventfd for wake-ups from other threads, a signalfd, and the turn that
 * ties them to the caller's next-due time and before-sleep hook.
 *
 * Each epoll event carries the fd and the generation of its watch. A
 * callback may remove another watch whose readiness was collected in the same
 * epoll_wait, or even close that fd and watch a new one that got the same
 * number; the generation tells the stale event apart so it is dropped rather
 * than delivered to the wrong owner (redis checks only the mask, which does
 * not catch the reuse).
 *
 * It keeps no timers and does no I/O on the watched fds.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

#define MAX_EVENTS 64
/* epoll data of our own descriptors: above any fd's watch key. */
#define KEY_WAKE UINT64_MAX
#define KEY_SIGNAL (UINT64_MAX - 1)

struct watch {
	loop_fd_cb cb;
	void *arg;
	unsigned events;
	uint32_t gen;   /* 0 = not watched */
};

struct loop {
	int epfd, wakefd, sigfd;
	struct watch *w;        /* indexed by fd */
	size_t nw;
	uint32_t next_gen;
	atomic_bool stop;
	atomic_bool woken;      /* a wake is pending: no need to write again */
	uint64_t turns;
	int64_t now_ms;

	loop_cb wake_cb;
	void *wake_arg;
	loop_signal_cb sig_cb;
	void *sig_arg;
	loop_due_fn due;
	loop_cb on_due;
	void *due_arg;
	loop_cb before_sleep;
	void *before_arg;
	loop_cb idle;
	void *idle_arg;
};

static int64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t loop_now_ms(void) { return clock_ms(CLOCK_MONOTONIC); }
int64_t loop_realtime_ms(void) { return clock_ms(CLOCK_REALTIME); }

static void sigset_ours(sigset_t *s)
{
	sigemptyset(s);
	sigaddset(s, SIGTERM);
	sigaddset(s, SIGINT);
	sigaddset(s, SIGHUP);
}

int loop_block_signals(void)
{
	sigset_t s;
	sigset_ours(&s);
	return -pthread_sigmask(SIG_BLOCK, &s, NULL);
}

static void default_signal(struct loop *l, int signo, void *arg)
{
	(void)arg;
	if (signo == SIGTERM || signo == SIGINT)
		loop_stop(l);
}

int loop_open(struct loop **out)
{
	struct epoll_event ev = { .events = EPOLLIN };
	sigset_t s;
	int rc;

	struct loop *l = calloc(1, sizeof *l);
	if (!l)
		return -ENOMEM;
	l->epfd = l->wakefd = l->sigfd = -1;
	l->next_gen = 1;
	l->sig_cb = default_signal;
	atomic_init(&l->stop, false);
	atomic_init(&l->woken, false);

	if ((rc = loop_block_signals()) < 0)
		goto fail;
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		goto fail_errno;
	sigset_ours(&s);
	if ((l->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    (l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
	    (l->sigfd = signalfd(-1, &s, SFD_CLOEXEC | SFD_NONBLOCK)) < 0)
		goto fail_errno;
	ev.data.u64 = KEY_WAKE;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) < 0)
		goto fail_errno;
	ev.data.u64 = KEY_SIGNAL;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->sigfd, &ev) < 0)
		goto fail_errno;
	l->now_ms = loop_now_ms();
	*out = l;
	return 0;

fail_errno:
	rc = -errno;
fail:
	loop_close(l);
	return rc;
}

void loop_close(struct loop *l)
{
	if (!l)
		return;
	if (l->sigfd >= 0)
		close(l->sigfd);
	if (l->wakefd >= 0)
		close(l->wakefd);
	if (l->epfd >= 0)
		close(l->epfd);
	free(l->w);
	free(l);
}

static uint32_t to_epoll(unsigned events)
{
	return (events & LOOP_READ ? EPOLLIN : 0) | (events & LOOP_WRITE ? EPOLLOUT : 0);
}

static struct watch *find(struct loop *l, int fd)
{
	if (fd < 0 || (size_t)fd >= l->nw || l->w[fd].gen == 0)
		return NULL;
	return &l->w[fd];
}

static int ctl(struct loop *l, int op, int fd, const struct watch *w)
{
	struct epoll_event ev = { .events = to_epoll(w->events) };
	ev.data.u64 = (uint64_t)w->gen << 32 | (uint32_t)fd;
	return epoll_ctl(l->epfd, op, fd, &ev) < 0 ? -errno : 0;
}

int loop_add(struct loop *l, int fd, unsigned events, loop_fd_cb cb, void *arg)
{
	int rc;

	if (fd < 0 || !cb || (events & ~(unsigned)(LOOP_READ | LOOP_WRITE)))
		return -EINVAL;
	if (find(l, fd))
		return -EEXIST;
	if ((size_t)fd >= l->nw) {
		size_t n = l->nw ? l->nw : 64;
		while (n <= (size_t)fd)
			n *= 2;
		struct watch *nw = realloc(l->w, n * sizeof *nw);
		if (!nw)
			return -ENOMEM;
		memset(nw + l->nw, 0, (n - l->nw) * sizeof *nw);
		l->w = nw;
		l->nw = n;
	}
	struct watch *w = &l->w[fd];
	*w = (struct watch){ .cb = cb, .arg = arg, .events = events, .gen = l->next_gen };
	if (++l->next_gen == 0)
		l->next_gen = 1;
	if ((rc = ctl(l, EPOLL_CTL_ADD, fd, w)) < 0)
		w->gen = 0;
	return rc;
}

int loop_mod(struct loop *l, int fd, unsigned events)
{
	struct watch *w = find(l, fd);

	if (!w)
		return -ENOENT;
	if (events & ~(unsigned)(LOOP_READ | LOOP_WRITE))
		return -EINVAL;
	unsigned old = w->events;
	w->events = events;
	int rc = ctl(l, EPOLL_CTL_MOD, fd, w);
	if (rc < 0)
		w->events = old;
	return rc;
}

int loop_del(struct loop *l, int fd)
{
	struct watch *w = find(l, fd);

	if (!w)
		return -ENOENT;
	/* EBADF if the caller closed fd first: the kernel has dropped it then
	 * (unless duplicated), and our table is what matters. */
	(void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
	memset(w, 0, sizeof *w);
	return 0;
}

void loop_on_wake(struct loop *l, loop_cb cb, void *arg)
{
	l->wake_cb = cb;
	l->wake_arg = arg;
}

void loop_on_signal(struct loop *l, loop_signal_cb cb, void *arg)
{
	l->sig_cb = cb ? cb : default_signal;
	l->sig_arg = arg;
}

void loop_set_due(struct loop *l, loop_due_fn due, loop_cb on_due, void *arg)
{
	l->due = due;
	l->on_due = on_due;
	l->due_arg = arg;
}

void loop_set_idle(struct loop *l, loop_cb cb, void *arg)
{
	l->idle = cb;
	l->idle_arg = arg;
}

void loop_set_before_sleep(struct loop *l, loop_cb cb, void *arg)
{
	l->before_sleep = cb;
	l->before_arg = arg;
}

void loop_stop(struct loop *l)
{
	atomic_store(&l->stop, true);
	loop_wake(l);
}

void loop_wake(struct loop *l)
{
	uint64_t one = 1;

	/* One write per batch of wakes. The loop reads the eventfd and only
	 * then clears the flag: a wake that finds it still set is seen by the
	 * callback that follows the clear; one that finds it clear writes. */
	if (atomic_exchange(&l->woken, true))
		return;
	(void)!write(l->wakefd, &one, sizeof one);
}

uint64_t loop_turns(const struct loop *l) { return l->turns; }
int64_t loop_time_ms(const struct loop *l) { return l->now_ms; }

/* Milliseconds to wait: until DUE (rounded up so that we never wake before
 * it and spin), -1 without one, 0 when it has passed. */
static int wait_ms(struct loop *l)
{
	if (atomic_load(&l->stop))
		return 0;
	if (!l->due)
		return -1;
	int64_t due = l->due(l->due_arg);
	if (due < 0)
		return -1;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	int64_t now_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
	int64_t left_ns = due * 1000000 - now_ns;
	if (left_ns <= 0)
		return 0;
	int64_t ms = (left_ns + 999999) / 1000000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

static void on_wakefd(struct loop *l)
{
	uint64_t n;

	/* Read, then clear: cleared first, a wake landing in between would
	 * write a count that this read eats, leaving the flag set with nothing
	 * to read, and every later wake would skip its write. */
	(void)!read(l->wakefd, &n, sizeof n);
	atomic_store(&l->woken, false);
	if (l->wake_cb)
		l->wake_cb(l, l->wake_arg);
}

static void on_sigfd(struct loop *l)
{
	struct signalfd_siginfo si;

	while (read(l->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
		l->sig_cb(l, (int)si.ssi_signo, l->sig_arg);
}

static int turn(struct loop *l)
{
	struct epoll_event ev[MAX_EVENTS];
	int n;

	if (l->before_sleep)
		l->before_sleep(l, l->before_arg);
	int ms = wait_ms(l);
	n = epoll_wait(l->epfd, ev, MAX_EVENTS, l->idle && ms ? 0 : ms);
	if (n == 0 && l->idle && ms) { /* nothing ready: idle, then wait */
		l->idle(l, l->idle_arg);
		n = epoll_wait(l->epfd, ev, MAX_EVENTS, wait_ms(l));
	}
	l->turns++;
	l->now_ms = loop_now_ms();
	if (n < 0) {
		if (errno == EINTR)
			return 0;
		return -errno;
	}
	for (int i = 0; i < n; i++) {
		uint64_t key = ev[i].data.u64;
		if (key == KEY_WAKE) {
			on_wakefd(l);
			continue;
		}
		if (key == KEY_SIGNAL) {
			on_sigfd(l);
			continue;
		}
		int fd = (int)(uint32_t)key;
		struct watch *w = find(l, fd);
		if (!w || w->gen != (uint32_t)(key >> 32))
			continue; /* removed, or the fd number now belongs to another */
		unsigned got = (ev[i].events & EPOLLIN ? LOOP_READ : 0) |
			       (ev[i].events & EPOLLOUT ? LOOP_WRITE : 0) |
			       (ev[i].events & (EPOLLERR | EPOLLHUP) ? LOOP_ERROR : 0);
		/* An error or hang-up also wakes what the watch waits for, so
		 * that its read or write meets the EOF or the error (as libuv
		 * does); it is reported even for a parked watch. */
		if (got & LOOP_ERROR)
			got |= w->events;
		got &= w->events | LOOP_ERROR;
		if (got)
			w->cb(l, fd, got, w->arg); /* w may be gone after this */
	}
	if (l->due && l->on_due) {
		int64_t due = l->due(l->due_arg);
		if (due >= 0 && due <= loop_now_ms())
			l->on_due(l, l->due_arg);
	}
	return 0;
}

int loop_run(struct loop *l)
{
	int rc = 0;

	while (!atomic_load(&l->stop))
		if ((rc = turn(l)) < 0)
			break;
	atomic_store(&l->stop, false); /* so that loop_run can run again */
	return rc;
}
