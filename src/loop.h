/* SPDX-License-Identifier: MIT */
/*
 * loop.h - the main thread's event loop: one epoll set, after redis's ae.c.
 *
 * It watches file descriptors (read/write readiness, changeable), an eventfd
 * other threads use to wake it (loop_wake), and a signalfd for SIGTERM,
 * SIGINT and SIGHUP. It owns no timers: the caller supplies a "next due"
 * function (the scheduler's earliest deadline, CLOCK_MONOTONIC ms) that sizes
 * each wait, and an on_due callback run when that time has come. A
 * before-sleep hook runs every turn just before the loop may block: the
 * daemon commits the turn's batch and flushes the outbox there.
 *
 * An idle hook runs when the loop would block: nothing is ready and nothing
 * is due (the daemon makes its last commit durable there).
 *
 * One turn:  before_sleep -> [idle, if nothing is ready] -> wait (up to next
 *            due) -> fd callbacks, wake, signals -> on_due if due.
 *
 * Threads: every function runs on the loop's thread except loop_wake() and
 * loop_stop(), which any thread may call. Signals: loop_open() blocks
 * SIGTERM, SIGINT and SIGHUP in the calling thread so that only the signalfd
 * sees them; threads inherit the mask of their creator, so call loop_open()
 * (or loop_block_signals()) before any thread is created. It also ignores
 * SIGPIPE process-wide: a write to a closed socket then fails with EPIPE.
 */
#ifndef EC_LOOP_H
#define EC_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct loop;

/* Readiness bits, for loop_add/loop_mod and as given to callbacks. */
#define LOOP_READ 0x1
#define LOOP_WRITE 0x2
#define LOOP_ERROR 0x4  /* given only: EPOLLERR or EPOLLHUP, always together
			 * with the watch's own events, so that its read or
			 * write meets the EOF or error; level-triggered like
			 * the rest: a parked watch that ignores it spins. */

/* Called on the loop thread with what is ready. It may add, change or remove
 * any watch, its own included, and call loop_stop(). */
typedef void (*loop_fd_cb)(struct loop *l, int fd, unsigned events, void *arg);
/* After one or more loop_wake() calls (they coalesce). */
typedef void (*loop_cb)(struct loop *l, void *arg);
/* After a blocked signal arrived (SIGTERM, SIGINT, SIGHUP). */
typedef void (*loop_signal_cb)(struct loop *l, int signo, void *arg);
/* The next due time in CLOCK_MONOTONIC ms, or -1 for none. */
typedef int64_t (*loop_due_fn)(void *arg);

/* Blocks SIGTERM, SIGINT and SIGHUP in the calling thread. 0 or -errno. */
int loop_block_signals(void);

/* A new loop in *OUT (free with loop_close). Blocks the signals (above).
 * Until loop_on_signal() says otherwise, SIGTERM and SIGINT stop the loop
 * and SIGHUP is ignored. Returns 0 or -errno. */
int loop_open(struct loop **out);
/* Closes the loop's own descriptors; watched fds stay the caller's. NULL ok. */
void loop_close(struct loop *l);

/* Watches FD (borrowed: the caller closes it, after loop_del) for EVENTS
 * (LOOP_READ|LOOP_WRITE, may be 0 to park it). Returns 0, -EEXIST if FD is
 * watched already, -EINVAL, or -errno from epoll. */
int loop_add(struct loop *l, int fd, unsigned events, loop_fd_cb cb, void *arg);
/* Changes the events of a watched FD. 0, -ENOENT, -errno. */
int loop_mod(struct loop *l, int fd, unsigned events);
/* Stops watching FD; a readiness already collected for it this turn is
 * dropped. 0 or -ENOENT. */
int loop_del(struct loop *l, int fd);

void loop_on_wake(struct loop *l, loop_cb cb, void *arg);
void loop_on_signal(struct loop *l, loop_signal_cb cb, void *arg);
/* DUE sizes each wait; ON_DUE runs (after the fd callbacks of the turn) when
 * DUE's time has come. Either may be NULL. */
void loop_set_due(struct loop *l, loop_due_fn due, loop_cb on_due, void *arg);
void loop_set_before_sleep(struct loop *l, loop_cb cb, void *arg);
void loop_set_idle(struct loop *l, loop_cb cb, void *arg);

/* Runs turns until loop_stop() (one called before returns at once). Returns
 * 0, or -errno if epoll fails. */
int loop_run(struct loop *l);
/* Makes loop_run return after the current turn. Any thread. */
void loop_stop(struct loop *l);
/* Wakes the loop and runs the wake callback on its thread. Any thread;
 * async-signal-safe. */
void loop_wake(struct loop *l);

/* Turns run so far (for tests and statistics). */
uint64_t loop_turns(const struct loop *l);
/* CLOCK_MONOTONIC at the end of the last wait, ms: one reading per turn. */
int64_t loop_time_ms(const struct loop *l);

/* Clocks in ms: monotonic for timers, realtime (epoch) for timestamps. */
int64_t loop_now_ms(void);
int64_t loop_realtime_ms(void);

#endif
