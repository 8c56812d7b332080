/* SPDX-License-Identifier: MIT */
/*
 * test_loop.c - the epoll loop: readiness dispatch, removal (and fd reuse)
 * inside a callback, wake-ups from another thread, the wait sized by the next
 * due time (counted in turns, never timed), the before-sleep hook, signals
 * through the signalfd, and stop. An alarm(10) per test turns a hang into a
 * failure.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "loop.h"

struct fx {
	struct loop *l;
	int p[2], q[2];
	int calls;
	int last_fd;
	unsigned last_events;
	int64_t due;
	int64_t fired_at;
	int before;
	int wakes;
	int signo;
	pthread_t main;
	bool on_loop_thread;
};

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof *fx);
	if (!fx)
		return -1;
	fx->p[0] = fx->p[1] = fx->q[0] = fx->q[1] = -1;
	fx->due = -1;
	fx->main = pthread_self();
	if (loop_open(&fx->l) < 0)
		return -1;
	alarm(10);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	alarm(0);
	loop_close(fx->l);
	for (int i = 0; i < 2; i++) {
		if (fx->p[i] >= 0)
			close(fx->p[i]);
		if (fx->q[i] >= 0)
			close(fx->q[i]);
	}
	free(fx);
	return 0;
}

static void on_fd_stop(struct loop *l, int fd, unsigned events, void *arg)
{
	struct fx *fx = arg;
	char buf[16];
	fx->calls++;
	fx->last_fd = fd;
	fx->last_events = events;
	if (events & LOOP_READ)
		(void)!read(fd, buf, sizeof buf);
	loop_stop(l);
}

static void test_readiness(void **state)
{
	struct fx *fx = *state;

	assert_int_equal(pipe(fx->p), 0);
	assert_int_equal(loop_add(fx->l, fx->p[0], LOOP_READ, on_fd_stop, fx), 0);
	assert_int_equal(write(fx->p[1], "x", 1), 1);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->calls, 1);
	assert_int_equal(fx->last_fd, fx->p[0]);
	assert_int_equal(fx->last_events, LOOP_READ);

	/* The write end is writable at once; parked (0), it is not reported. */
	assert_int_equal(loop_add(fx->l, fx->p[1], LOOP_WRITE, on_fd_stop, fx), 0);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->calls, 2);
	assert_int_equal(fx->last_fd, fx->p[1]);
	assert_int_equal(fx->last_events, LOOP_WRITE);
	assert_int_equal(loop_mod(fx->l, fx->p[1], 0), 0);

	/* Closing the write end: a hang-up, read to see EOF. */
	assert_int_equal(loop_del(fx->l, fx->p[1]), 0);
	close(fx->p[1]);
	fx->p[1] = -1;
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->calls, 3);
	assert_int_equal(fx->last_fd, fx->p[0]);
	assert_int_equal(fx->last_events, LOOP_READ | LOOP_ERROR);
	assert_int_equal(loop_del(fx->l, fx->p[0]), 0);
}

static void test_add_errors(void **state)
{
	struct fx *fx = *state;

	assert_int_equal(pipe(fx->p), 0);
	assert_int_equal(loop_add(fx->l, -1, LOOP_READ, on_fd_stop, fx), -EINVAL);
	assert_int_equal(loop_add(fx->l, fx->p[0], LOOP_READ, NULL, fx), -EINVAL);
	assert_int_equal(loop_add(fx->l, fx->p[0], 0x80, on_fd_stop, fx), -EINVAL);
	assert_int_equal(loop_add(fx->l, fx->p[0], LOOP_READ, on_fd_stop, fx), 0);
	assert_int_equal(loop_add(fx->l, fx->p[0], LOOP_READ, on_fd_stop, fx), -EEXIST);
	assert_int_equal(loop_mod(fx->l, fx->p[1], LOOP_READ), -ENOENT);
	assert_int_equal(loop_del(fx->l, fx->p[1]), -ENOENT);
	assert_int_equal(loop_add(fx->l, 100000, LOOP_READ, on_fd_stop, fx), -EBADF);
	assert_int_equal(loop_mod(fx->l, 100000, LOOP_READ), -ENOENT);
	assert_int_equal(loop_del(fx->l, fx->p[0]), 0);
	assert_int_equal(loop_del(fx->l, fx->p[0]), -ENOENT);
}

/* Whichever of the two ready pipes is dispatched first removes the other,
 * closes it, and watches a new pipe that takes the same fd number: the
 * readiness already collected for the old one must reach nobody. */
static void on_first(struct loop *l, int fd, unsigned events, void *arg)
{
	struct fx *fx = arg;
	int other = fd == fx->p[0] ? fx->q[0] : fx->p[0];
	int fresh[2];

	fx->calls++;
	assert_int_equal(loop_del(l, other), 0);
	close(other);
	assert_int_equal(pipe(fresh), 0);
	assert_int_equal(fresh[0], other); /* the lowest free number */
	assert_int_equal(write(fresh[1], "y", 1), 1); /* readable, but not yet collected */
	assert_int_equal(loop_add(l, fresh[0], LOOP_READ, on_fd_stop, fx), 0);
	if (other == fx->q[0])
		fx->q[1] = (close(fx->q[1]), fresh[1]);
	else
		fx->p[1] = (close(fx->p[1]), fresh[1]);
	/* Also remove ourselves: a watch may go inside its own callback. */
	assert_int_equal(loop_del(l, fd), 0);
	(void)events;
}

static void count_turn(struct loop *l, void *arg)
{
	struct fx *fx = arg;
	(void)l;
	fx->before++;
}

static void test_remove_inside_callback(void **state)
{
	struct fx *fx = *state;

	assert_int_equal(pipe(fx->p), 0);
	assert_int_equal(pipe(fx->q), 0);
	assert_int_equal(loop_add(fx->l, fx->p[0], LOOP_READ, on_first, fx), 0);
	assert_int_equal(loop_add(fx->l, fx->q[0], LOOP_READ, on_first, fx), 0);
	assert_int_equal(write(fx->p[1], "a", 1), 1);
	assert_int_equal(write(fx->q[1], "b", 1), 1);
	loop_set_before_sleep(fx->l, count_turn, fx);
	assert_int_equal(loop_run(fx->l), 0);
	/* Turn 1: one on_first, nothing else; turn 2: the new pipe's watch. */
	assert_int_equal(fx->calls, 2);
	assert_int_equal(loop_turns(fx->l), 2);
	assert_int_equal(fx->last_events, LOOP_READ);
}

static void on_wake(struct loop *l, void *arg)
{
	struct fx *fx = arg;
	fx->wakes++;
	fx->on_loop_thread = pthread_equal(pthread_self(), fx->main);
	loop_stop(l);
}

static void *waker(void *arg)
{
	struct fx *fx = arg;
	loop_wake(fx->l);
	return NULL;
}

static pthread_t thread;

static void start_waker(struct loop *l, void *arg)
{
	struct fx *fx = arg;
	(void)l;
	if (fx->before++ == 0)
		assert_int_equal(pthread_create(&thread, NULL, waker, fx), 0);
}

static void test_wake_from_thread(void **state)
{
	struct fx *fx = *state;

	/* No due time: without the wake the loop would block for ever. */
	loop_on_wake(fx->l, on_wake, fx);
	loop_set_before_sleep(fx->l, start_waker, fx);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(pthread_join(thread, NULL), 0);
	assert_int_equal(fx->wakes, 1);
	assert_true(fx->on_loop_thread);

	/* Wakes before the loop reads them coalesce into one callback. */
	for (int i = 0; i < 1000; i++)
		loop_wake(fx->l);
	loop_set_before_sleep(fx->l, NULL, NULL);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->wakes, 2);
}

/* Wakes from another thread, each published before its loop_wake(), two at
 * a time as the store's syncer sends them (a flush done, the next one done
 * soon after): the loop must see every one. A wake that lands between the
 * loop's reading of the eventfd and its clearing of the flag must not be
 * swallowed, or every later wake is lost with it. Timed, not counted: the
 * race needs many rounds, and a lost wake shows as a round never seen. */
static atomic_ulong wk_posted, wk_seen;
static atomic_bool wk_lost;

static void on_wake_seen(struct loop *l, void *arg)
{
	(void)l;
	(void)arg;
	atomic_store(&wk_seen, atomic_load(&wk_posted));
}

static int64_t tick_due(void *arg)
{
	(void)arg;
	return loop_now_ms() + 50;
}

static void tick(struct loop *l, void *arg)
{
	(void)l;
	(void)arg;
}

static int64_t mono_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void *pair_waker(void *arg)
{
	struct loop *l = arg;
	unsigned seed = 1;
	int64_t end = mono_ns() + 3000000000LL;
	for (unsigned long round = 1; mono_ns() < end; round++) {
		loop_wake(l);
		/* the second wake somewhere in the loop's wake-up and its read */
		int64_t until = mono_ns() + rand_r(&seed) % 40000;
		while (mono_ns() < until)
			;
		atomic_store(&wk_posted, round);
		loop_wake(l);
		/* a lost wake leaves the loop asleep for good: give it 500 ms */
		int64_t give_up = mono_ns() + 500000000;
		while (atomic_load(&wk_seen) < round) {
			if (mono_ns() > give_up) {
				atomic_store(&wk_lost, true);
				loop_stop(l);
				return NULL;
			}
		}
	}
	loop_stop(l);
	return NULL;
}

static void test_no_wake_lost(void **state)
{
	struct fx *fx = *state;
	pthread_t th;

	loop_on_wake(fx->l, on_wake_seen, fx);
	/* A tick, so that the loop still ends (sees its stop) when wakes are
	 * lost; it never calls on_wake_seen. */
	loop_set_due(fx->l, tick_due, tick, fx);
	assert_int_equal(pthread_create(&th, NULL, pair_waker, fx->l), 0);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_false(atomic_load(&wk_lost));
}

static void *stopper(void *arg)
{
	loop_stop(arg);
	return NULL;
}

static void start_stopper(struct loop *l, void *arg)
{
	struct fx *fx = arg;
	if (fx->before++ == 0)
		assert_int_equal(pthread_create(&thread, NULL, stopper, l), 0);
}

static void test_stop_from_thread(void **state)
{
	struct fx *fx = *state;

	loop_set_before_sleep(fx->l, start_stopper, fx);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(pthread_join(thread, NULL), 0);
	assert_true(loop_turns(fx->l) >= 1);

	/* A stop before the run makes it return at once; then it runs again. */
	loop_stop(fx->l);
	uint64_t turns = loop_turns(fx->l);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(loop_turns(fx->l), turns);
}

static int64_t next_due(void *arg)
{
	return ((struct fx *)arg)->due;
}

static void fire(struct loop *l, void *arg)
{
	struct fx *fx = arg;
	fx->calls++;
	fx->fired_at = loop_now_ms();
	fx->due = -1;
	loop_stop(l);
}

static void test_next_due_sizes_wait(void **state)
{
	struct fx *fx = *state;

	loop_set_before_sleep(fx->l, count_turn, fx);
	loop_set_due(fx->l, next_due, fire, fx);

	/* 50 ms ahead: one wait, not a spin, and never early. */
	fx->due = loop_now_ms() + 50;
	int64_t due = fx->due;
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->calls, 1);
	assert_true(fx->fired_at >= due);
	assert_in_range(loop_turns(fx->l), 1, 3);
	assert_true(loop_time_ms(fx->l) >= due);

	/* Already due: fires in the first turn without blocking. */
	fx->due = loop_now_ms() - 5;
	uint64_t t0 = loop_turns(fx->l);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->calls, 2);
	assert_int_equal(loop_turns(fx->l) - t0, 1);

	/* Before-sleep ran once per turn. */
	assert_int_equal((uint64_t)fx->before, loop_turns(fx->l));
}

/* Five wakes in a row, one per turn: before-sleep runs before each wait. */
static void rewake(struct loop *l, void *arg)
{
	struct fx *fx = arg;
	if (++fx->wakes == 5)
		loop_stop(l);
	else
		loop_wake(l);
}

static void test_before_sleep_each_turn(void **state)
{
	struct fx *fx = *state;

	loop_set_before_sleep(fx->l, count_turn, fx);
	loop_on_wake(fx->l, rewake, fx);
	loop_wake(fx->l);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->wakes, 5);
	assert_int_equal(loop_turns(fx->l), 5);
	assert_int_equal(fx->before, 5);
}

static void on_signal(struct loop *l, int signo, void *arg)
{
	struct fx *fx = arg;
	fx->signo = signo;
	fx->calls++;
	loop_stop(l);
}

static void test_signals(void **state)
{
	struct fx *fx = *state;
	sigset_t cur;

	/* Blocked in this thread, so raise() leaves them to the signalfd. */
	assert_int_equal(pthread_sigmask(SIG_BLOCK, NULL, &cur), 0);
	assert_true(sigismember(&cur, SIGHUP));
	assert_true(sigismember(&cur, SIGTERM));
	assert_true(sigismember(&cur, SIGINT));

	loop_on_signal(fx->l, on_signal, fx);
	assert_int_equal(raise(SIGHUP), 0);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->signo, SIGHUP);
	assert_int_equal(fx->calls, 1);

	/* The default: SIGTERM stops the loop, SIGHUP does not. */
	loop_on_signal(fx->l, NULL, NULL);
	loop_set_before_sleep(fx->l, count_turn, fx);
	assert_int_equal(raise(SIGHUP), 0);
	assert_int_equal(raise(SIGTERM), 0);
	assert_int_equal(loop_run(fx->l), 0);
	assert_int_equal(fx->calls, 1);
	assert_int_equal(fx->before, 1);

	/* SIGPIPE is ignored: a write to a closed pipe fails with EPIPE. */
	assert_int_equal(pipe(fx->p), 0);
	close(fx->p[0]);
	fx->p[0] = -1;
	assert_int_equal(write(fx->p[1], "x", 1), -1);
	assert_int_equal(errno, EPIPE);
}

static void test_clocks(void **state)
{
	(void)state;
	int64_t a = loop_now_ms(), b = loop_now_ms();
	assert_true(b >= a);
	int64_t rt = loop_realtime_ms();
	int64_t t = (int64_t)time(NULL) * 1000;
	assert_in_range(rt, t - 2000, t + 2000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_readiness, setup, teardown),
		cmocka_unit_test_setup_teardown(test_add_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remove_inside_callback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wake_from_thread, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_wake_lost, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_from_thread, setup, teardown),
		cmocka_unit_test_setup_teardown(test_next_due_sizes_wait, setup, teardown),
		cmocka_unit_test_setup_teardown(test_before_sleep_each_turn, setup, teardown),
		cmocka_unit_test_setup_teardown(test_signals, setup, teardown),
		cmocka_unit_test(test_clocks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
