/* SPDX-License-Identifier: MIT */
/*
 * test_sched.c - the scheduling core against a fake clock and a seeded PRNG:
 * backoff and retry policy, ready ordering and the aging bound, pins,
 * affinity, concurrency limits, blocked heads, draining and liveness, slots
 * held by unanswered leases, routing, circuit breakers, the load figure, and
 * a 100,000-task run.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "edgecoord/err.h"
#include "sched.h"

/* --- helpers ----------------------------------------------------------------- */

static struct sched *mk(enum sched_routing r, int64_t aging_ms)
{
	struct sched_opts o;
	sched_opts_default(&o);
	o.routing = r;
	o.aging_ms = aging_ms;
	o.seed = 42;
	struct sched *s = NULL;
	assert_int_equal(sched_new(&o, &s), 0);
	return s;
}

static void add_full(struct sched *s, const char *id, const char *type, int prio,
		     int64_t ready, const char *pin, const char *aff)
{
	struct kv kv[4];
	char buf[128];
	uint32_t n = 0;
	if (aff) {
		snprintf(buf, sizeof buf, "%s", aff);
		for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
		     tok = strtok_r(NULL, ",", &save)) {
			char *eq = strchr(tok, '=');
			*eq = '\0';
			kv[n++] = (struct kv){ tok, eq + 1 };
		}
	}
	struct sched_task t = { .id = id, .type = type, .priority = (uint8_t)prio,
				.ready_ms = ready, .agent = pin, .affinity = kv,
				.naffinity = n };
	assert_int_equal(sched_ready_add(s, &t), 0);
}

static void add(struct sched *s, const char *id, const char *type, int prio, int64_t ready)
{
	add_full(s, id, type, prio, ready, NULL, NULL);
}

/* caps "a,b", labels "k=v,k2=v2" or NULL */
static void up(struct sched *s, const char *name, const char *caps, uint32_t slots,
	       const char *labels)
{
	char cb[256], lb[256];
	const char *cv[16];
	struct kv kv[8];
	uint32_t nc = 0, nl = 0;
	snprintf(cb, sizeof cb, "%s", caps);
	for (char *save = NULL, *tok = strtok_r(cb, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save))
		cv[nc++] = tok;
	if (labels) {
		snprintf(lb, sizeof lb, "%s", labels);
		for (char *save = NULL, *tok = strtok_r(lb, ",", &save); tok;
		     tok = strtok_r(NULL, ",", &save)) {
			char *eq = strchr(tok, '=');
			*eq = '\0';
			kv[nl++] = (struct kv){ tok, eq + 1 };
		}
	}
	struct sched_agent_hello h = { .name = name, .caps = cv, .ncaps = nc, .slots = slots,
				       .labels = kv, .nlabels = nl };
	assert_int_equal(sched_agent_up(s, &h), 0);
}

static int pick(struct sched *s, int64_t now, struct sched_decision *d, size_t max)
{
	int n = sched_pick(s, now, d, max);
	assert_true(n >= 0);
	return n;
}

/* Pick one; returns 1 and fills d, or 0. */
static int pick1(struct sched *s, int64_t now, struct sched_decision *d)
{
	return pick(s, now, d, 1);
}

static void done(struct sched *s, const struct sched_decision *d, enum sched_outcome o,
		 int64_t dur, int64_t now)
{
	assert_int_equal(sched_task_finished(s, d->agent, d->type, o, dur, now), 0);
}

/* --- policy ------------------------------------------------------------------ */

static void test_backoff_exact(void **state)
{
	(void)state;
	struct retry_policy p = { .max_attempts = 10, .backoff = BACKOFF_NONE, .jitter = 0,
				  .initial_ms = 1000, .max_ms = 300000 };
	for (uint32_t k = 1; k < 20; k++)
		assert_int_equal(sched_backoff_ms(&p, k, NULL), 0);
	p.backoff = BACKOFF_FIXED;
	for (uint32_t k = 1; k < 20; k++)
		assert_int_equal(sched_backoff_ms(&p, k, NULL), 1000);
	p.backoff = BACKOFF_EXPONENTIAL;
	static const int64_t want[] = { 1000, 2000, 4000, 8000, 16000, 32000, 64000,
					128000, 256000, 300000, 300000, 300000 };
	for (uint32_t k = 1; k <= 12; k++)
		assert_int_equal(sched_backoff_ms(&p, k, NULL), want[k - 1]);
	assert_int_equal(sched_backoff_ms(&p, 0, NULL), 1000); /* k=0 taken as 1 */
	/* no overflow however large k or the delays */
	assert_int_equal(sched_backoff_ms(&p, 1000, NULL), 300000);
	assert_int_equal(sched_backoff_ms(&p, UINT32_MAX, NULL), 300000);
	p.initial_ms = INT64_MAX / 3;
	p.max_ms = INT64_MAX;
	assert_int_equal(sched_backoff_ms(&p, 1, NULL), INT64_MAX / 3);
	assert_int_equal(sched_backoff_ms(&p, 2, NULL), (INT64_MAX / 3) * 2);
	assert_int_equal(sched_backoff_ms(&p, 3, NULL), INT64_MAX);
	assert_int_equal(sched_backoff_ms(&p, 1000, NULL), INT64_MAX);
	p.initial_ms = 1;
	assert_int_equal(sched_backoff_ms(&p, 63, NULL), INT64_C(1) << 62);
	assert_int_equal(sched_backoff_ms(&p, 64, NULL), INT64_MAX);
	/* initial above max: max (the formula's min) */
	p.initial_ms = 5000;
	p.max_ms = 3000;
	assert_int_equal(sched_backoff_ms(&p, 1, NULL), 3000);
	p.initial_ms = 0;
	assert_int_equal(sched_backoff_ms(&p, 5, NULL), 0);
}

static void test_backoff_jitter(void **state)
{
	(void)state;
	struct sched_rng r;
	sched_rng_seed(&r, 7);
	struct retry_policy p = { .max_attempts = 3, .backoff = BACKOFF_FIXED, .jitter = 1,
				  .initial_ms = 1000, .max_ms = 300000 };
	int64_t lo = INT64_MAX, hi = 0;
	static unsigned char seen[1001];
	int distinct = 0;
	for (int i = 0; i < 10000; i++) {
		int64_t d = sched_backoff_ms(&p, 1, &r);
		assert_true(d >= 500 && d <= 1000);
		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
		if (!seen[d]++)
			distinct++;
	}
	/* spread over the whole range, not constant */
	assert_true(lo <= 510 && hi >= 990);
	assert_true(distinct > 400);
	p.backoff = BACKOFF_EXPONENTIAL;
	int64_t first = sched_backoff_ms(&p, 1000, &r);
	bool varied = false;
	for (int i = 0; i < 1000; i++) {
		int64_t d = sched_backoff_ms(&p, 1000, &r);
		assert_true(d >= 150000 && d <= 300000);
		varied |= d != first;
	}
	assert_true(varied);
	/* jitter of a 1 ms delay stays in [0, 1] */
	p.backoff = BACKOFF_FIXED;
	p.initial_ms = 1;
	for (int i = 0; i < 100; i++) {
		int64_t d = sched_backoff_ms(&p, 1, &r);
		assert_true(d == 0 || d == 1);
	}
}

static void test_rng_deterministic(void **state)
{
	(void)state;
	struct sched_rng a, b;
	sched_rng_seed(&a, 99);
	sched_rng_seed(&b, 99);
	for (int i = 0; i < 100; i++)
		assert_true(sched_rng_next(&a) == sched_rng_next(&b));
	int count[3] = { 0 };
	for (int i = 0; i < 30000; i++)
		count[sched_rng_below(&a, 3)]++;
	for (int i = 0; i < 3; i++)
		assert_true(count[i] > 9000 && count[i] < 11000);
	assert_true(sched_rng_below(&a, 0) == 0);
}

static void test_after_failure(void **state)
{
	(void)state;
	struct retry_policy p = { .max_attempts = 3, .backoff = BACKOFF_EXPONENTIAL,
				  .jitter = 0, .initial_ms = 1000, .max_ms = 300000 };
	int64_t due = -7;
	assert_int_equal(sched_after_failure(&p, 1, 50000, NULL, &due), SCHED_RETRY);
	assert_int_equal(due, 51000);
	assert_int_equal(sched_after_failure(&p, 2, 50000, NULL, &due), SCHED_RETRY);
	assert_int_equal(due, 52000);
	due = -7;
	assert_int_equal(sched_after_failure(&p, 3, 50000, NULL, &due), SCHED_DEAD);
	assert_int_equal(due, -7); /* untouched */
	assert_int_equal(sched_after_failure(&p, 4, 50000, NULL, &due), SCHED_DEAD);
	p.max_attempts = 1;
	assert_int_equal(sched_after_failure(&p, 1, 0, NULL, &due), SCHED_DEAD);
	p.max_attempts = 1000;
	assert_int_equal(sched_after_failure(&p, 999, INT64_MAX - 10, NULL, &due), SCHED_RETRY);
	assert_true(due == INT64_MAX); /* saturates */

	struct sched_defaults d;
	sched_defaults_init(&d);
	assert_int_equal(sched_after_lost(&d, 1), SCHED_RETRY);
	assert_int_equal(sched_after_lost(&d, d.max_lost), SCHED_RETRY);
	assert_int_equal(sched_after_lost(&d, d.max_lost + 1), SCHED_DEAD);
	d.max_lost = 0;
	assert_int_equal(sched_after_lost(&d, 1000000), SCHED_RETRY);
}

static void test_policy_resolve(void **state)
{
	(void)state;
	struct sched_defaults d;
	sched_defaults_init(&d);
	assert_int_equal(d.retry.max_attempts, 3);
	assert_int_equal(d.retry.backoff, BACKOFF_EXPONENTIAL);
	assert_int_equal(d.task_timeout_ms, 3600000);
	d.retry.initial_ms = 2000; /* as a config would set it */

	struct task_spec t;
	memset(&t, 0, sizeof t);
	t.timeout_ms = -1;
	struct retry_policy p;
	sched_policy_resolve(&t, &d, &p);
	assert_int_equal(p.max_attempts, 3);
	assert_int_equal(p.backoff, BACKOFF_EXPONENTIAL);
	assert_int_equal(p.jitter, 1);
	assert_int_equal(p.initial_ms, 2000);
	assert_int_equal(p.max_ms, 300000);
	assert_int_equal(sched_timeout_ms(&t, &d), 3600000);

	/* a step's own policy with some fields unset: those come from defaults */
	t.has_retry = true;
	t.retry = (struct retry_policy){ .max_attempts = 5, .backoff = BACKOFF_UNSET,
					 .jitter = 0, .initial_ms = -1, .max_ms = 10000 };
	t.timeout_ms = 2500;
	sched_policy_resolve(&t, &d, &p);
	assert_int_equal(p.max_attempts, 5);
	assert_int_equal(p.backoff, BACKOFF_EXPONENTIAL);
	assert_int_equal(p.jitter, 0);
	assert_int_equal(p.initial_ms, 2000);
	assert_int_equal(p.max_ms, 10000);
	assert_int_equal(sched_timeout_ms(&t, &d), 2500);

	t.retry = (struct retry_policy){ .max_attempts = -1, .backoff = BACKOFF_FIXED,
					 .jitter = -1, .initial_ms = 0, .max_ms = -1 };
	sched_policy_resolve(&t, &d, &p);
	assert_int_equal(p.max_attempts, 3);
	assert_int_equal(p.backoff, BACKOFF_FIXED);
	assert_int_equal(p.jitter, 1);
	assert_int_equal(p.initial_ms, 0);
	assert_int_equal(sched_backoff_ms(&p, 4, NULL), 0);

	/* a broken default never yields zero attempts or negative delays */
	d.retry.max_attempts = 0;
	d.retry.initial_ms = -5;
	t.has_retry = false;
	sched_policy_resolve(&t, &d, &p);
	assert_int_equal(p.max_attempts, 1);
	assert_int_equal(p.initial_ms, 0);
}

static void test_names(void **state)
{
	(void)state;
	for (int r = 0; r < 3; r++)
		assert_int_equal(sched_routing_parse(sched_routing_name(r)), r);
	assert_int_equal(sched_routing_parse("fastest"), -EINVAL);
	assert_int_equal(sched_backoff_parse("none"), BACKOFF_NONE);
	assert_int_equal(sched_backoff_parse("fixed"), BACKOFF_FIXED);
	assert_int_equal(sched_backoff_parse("exponential"), BACKOFF_EXPONENTIAL);
	assert_int_equal(sched_backoff_parse("linear"), -EINVAL);
	assert_string_equal(sched_breaker_name(SCHED_BREAKER_HALF_OPEN), "half_open");
}

/* --- the ready index ----------------------------------------------------------- */

static void test_index_basics(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 0);
	add(s, "a", "t", 5, 100);
	struct sched_task dup = { .id = "a", .type = "t", .priority = 5 };
	assert_int_equal(sched_ready_add(s, &dup), -EEXIST);
	struct sched_task bad = { .id = "b", .type = "t", .priority = 11 };
	assert_int_equal(sched_ready_add(s, &bad), -EINVAL);
	bad.priority = 1;
	bad.type = "";
	assert_int_equal(sched_ready_add(s, &bad), -EINVAL);
	bad.type = "t";
	bad.id = "";
	assert_int_equal(sched_ready_add(s, &bad), -EINVAL);
	char longid[TASK_FULLID_MAX + 2];
	memset(longid, 'x', sizeof longid - 1);
	longid[sizeof longid - 1] = '\0';
	bad.id = longid;
	assert_int_equal(sched_ready_add(s, &bad), -EINVAL);
	/* priority 0 = default 5 */
	struct sched_task def = { .id = "d", .type = "t", .priority = 0, .ready_ms = 100 };
	assert_int_equal(sched_ready_add(s, &def), 0);
	assert_int_equal(sched_effective_priority(s, "d", 100), 5);
	assert_int_equal(sched_ready_count(s), 2);
	assert_true(sched_ready_has(s, "a"));
	assert_int_equal(sched_ready_remove(s, "a"), 0);
	assert_false(sched_ready_has(s, "a"));
	assert_int_equal(sched_ready_remove(s, "a"), EC_ENOTFOUND);
	assert_int_equal(sched_effective_priority(s, "a", 0), EC_ENOTFOUND);
	assert_int_equal(sched_ready_count(s), 1);

	/* from a task_spec */
	struct task_spec sp;
	memset(&sp, 0, sizeof sp);
	strcpy(sp.id, "wf:step");
	strcpy(sp.type, "t");
	sp.priority = 9;
	assert_int_equal(sched_ready_add_spec(s, &sp, 50), 0);
	up(s, "w", "t", 10, NULL);
	struct sched_decision d[4];
	assert_int_equal(pick(s, 1000, d, 4), 2);
	assert_string_equal(d[0].task_id, "wf:step");
	assert_string_equal(d[1].task_id, "d");
	assert_int_equal(sched_ready_count(s), 0);
	sched_free(s);
	sched_free(NULL);
}

static void test_ready_order(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 0);
	add(s, "p5-old", "t", 5, 100);
	add(s, "p10-new", "t", 10, 900);
	add(s, "p5-new", "t", 5, 500);
	add(s, "p1", "u", 1, 0);
	add(s, "p10-old", "u", 10, 200);
	add(s, "p5-tie-a", "u", 5, 500); /* same ready_ms as p5-new: arrival order */
	add(s, "p5-oldest", "t", 5, 50); /* appended late but older: goes first */
	up(s, "w", "t,u", 100, NULL);
	static const char *const want[] = { "p10-old", "p10-new", "p5-oldest", "p5-old",
					    "p5-new", "p5-tie-a", "p1" };
	struct sched_decision d[16];
	int n = pick(s, 1000, d, 16);
	assert_int_equal(n, 7);
	for (int i = 0; i < n; i++)
		assert_string_equal(d[i].task_id, want[i]);

	/* with aging, an old low-priority task overtakes a fresh high one */
	sched_free(s);
	s = mk(SCHED_LEAST_LOADED, 1000);
	add(s, "old-p3", "t", 3, 0);
	add(s, "new-p9", "t", 9, 6500);
	up(s, "w", "t", 1, NULL);
	assert_int_equal(sched_effective_priority(s, "old-p3", 6500), 9);
	assert_int_equal(sched_effective_priority(s, "old-p3", 7000), 10);
	assert_int_equal(sched_effective_priority(s, "old-p3", 1000000000), SCHED_EFF_PRIO_CAP);
	assert_int_equal(sched_effective_priority(s, "new-p9", 6000), 9); /* clock behind */
	assert_int_equal(pick1(s, 6500, d), 1);
	assert_string_equal(d[0].task_id, "old-p3"); /* 9 = 9, older wins */
	sched_free(s);
}

/*
 * One priority-1 task against a steady stream of priority-10 tasks, one
 * agent with one slot. `per_tick` new tasks arrive each 100 ms tick and one
 * is picked: per_tick 1 is a fleet that keeps up, 2 an overloaded one.
 * Returns the time the priority-1 task was picked, or -1 within `horizon`.
 */
static int64_t starve_run(int64_t aging_ms, int per_tick, int64_t horizon)
{
	struct sched *s = mk(SCHED_LEAST_LOADED, aging_ms);
	up(s, "w", "t", 1, NULL);
	add(s, "low", "t", 1, 0);
	int64_t picked = -1;
	char id[32];
	int seq = 0;
	for (int64_t now = 0; now <= horizon && picked < 0; now += 100) {
		for (int i = 0; i < per_tick; i++) {
			snprintf(id, sizeof id, "hi%d", seq++);
			add(s, id, "t", 10, now);
		}
		struct sched_decision d;
		assert_int_equal(pick1(s, now, &d), 1);
		if (strcmp(d.task_id, "low") == 0)
			picked = now;
		done(s, &d, SCHED_OUT_OK, 50, now);
	}
	sched_free(s);
	return picked;
}

static void test_aging_bound(void **state)
{
	(void)state;
	const int64_t A = 1000;
	for (int per_tick = 1; per_tick <= 2; per_tick++) {
		int64_t t = starve_run(A, per_tick, 30 * A);
		printf("aging %lld ms, %d arrivals per pick: priority 1 picked at %lld ms\n",
		       (long long)A, per_tick, (long long)t);
		/* within the documented bound (10 - 1 + 1) * aging ... */
		assert_true(t >= 0 && t <= 10 * A);
		/* ... and not before aging lifted it to priority 10 */
		assert_true(t >= 9 * A);
		/* without aging it is never picked while the stream lasts */
		assert_int_equal(starve_run(0, per_tick, 30 * A), -1);
	}
}

/* --- constraints ------------------------------------------------------------ */

static void test_pin_affinity(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 0);
	up(s, "a", "t", 10, "zone=1,rack=x");
	up(s, "b", "t", 10, "zone=2");
	add_full(s, "pin-b", "t", 9, 0, "b", NULL);
	add_full(s, "zone1", "t", 9, 1, NULL, "zone=1");
	add_full(s, "zone1-rack-y", "t", 9, 2, NULL, "zone=1,rack=y");
	add_full(s, "pin-c", "t", 9, 3, "c", NULL);
	add_full(s, "pin-b-zone1", "t", 9, 4, "b", "zone=1");
	for (int i = 0; i < 6; i++) {
		char id[8];
		snprintf(id, sizeof id, "p%d", i);
		add(s, id, "t", 1, 10 + i);
	}
	struct sched_decision d[32];
	int n = pick(s, 100, d, 32);
	assert_int_equal(n, 8);
	int seen_plain = 0;
	for (int i = 0; i < n; i++) {
		if (strcmp(d[i].task_id, "pin-b") == 0)
			assert_string_equal(d[i].agent, "b");
		else if (strcmp(d[i].task_id, "zone1") == 0)
			assert_string_equal(d[i].agent, "a");
		else if (d[i].task_id[0] == 'p' && d[i].task_id[1] != 'i')
			seen_plain++;
		else
			fail_msg("%s should not be dispatched", d[i].task_id);
	}
	assert_int_equal(seen_plain, 6);
	assert_true(sched_ready_has(s, "pin-c") && sched_ready_has(s, "zone1-rack-y") &&
		    sched_ready_has(s, "pin-b-zone1"));
	/* the pinned agent appears: its task goes to it, and only to it */
	up(s, "c", "t", 1, NULL);
	n = pick(s, 200, d, 32);
	assert_int_equal(n, 1);
	assert_string_equal(d[0].task_id, "pin-c");
	assert_string_equal(d[0].agent, "c");
	sched_free(s);
}

static void test_concurrency_limit(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 0);
	assert_int_equal(sched_set_limit(s, "gpu", 2), 0);
	up(s, "a", "gpu,cpu", 5, NULL);
	up(s, "b", "gpu,cpu", 5, NULL);
	for (int i = 0; i < 6; i++) {
		char id[8];
		snprintf(id, sizeof id, "g%d", i);
		add(s, id, "gpu", 10, i);
		snprintf(id, sizeof id, "c%d", i);
		add(s, id, "cpu", 1, i);
	}
	struct sched_decision d[16];
	int n = pick(s, 100, d, 16);
	int gpu = 0, cpu = 0;
	for (int i = 0; i < n; i++)
		*(strcmp(d[i].type, "gpu") == 0 ? &gpu : &cpu) += 1;
	assert_int_equal(gpu, 2);
	assert_int_equal(cpu, 6); /* the limited type does not hold up the other */
	assert_int_equal(pick(s, 100, d, 16), 0);
	/* one gpu task finishes: exactly one more may start */
	assert_int_equal(sched_task_finished(s, "a", "gpu", SCHED_OUT_OK, 10, 100), 0);
	assert_int_equal(sched_task_finished(s, "a", "cpu", SCHED_OUT_OK, 10, 100), 0);
	assert_int_equal(sched_task_finished(s, "b", "cpu", SCHED_OUT_OK, 10, 100), 0);
	n = pick(s, 101, d, 16);
	assert_int_equal(n, 1);
	assert_string_equal(d[0].type, "gpu");
	/* lifting the limit lets the remaining 3 go (5 slots free) */
	assert_int_equal(sched_set_limit(s, "gpu", 0), 0);
	assert_int_equal(sched_task_finished(s, "b", "cpu", SCHED_OUT_OK, 10, 100), 0);
	n = pick(s, 102, d, 16);
	assert_int_equal(n, 3);
	/* adopted (recovered) tasks count against the limit too */
	struct sched *r = mk(SCHED_LEAST_LOADED, 0);
	assert_int_equal(sched_set_limit(r, "gpu", 1), 0);
	assert_int_equal(sched_task_adopt(r, "a", "gpu"), 0);
	up(r, "a", "gpu", 5, NULL);
	add(r, "g", "gpu", 5, 0);
	assert_int_equal(pick(r, 1, d, 4), 0);
	assert_int_equal(sched_task_finished(r, "a", "gpu", SCHED_OUT_LOST, 0, 2), 0);
	assert_int_equal(pick(r, 3, d, 4), 1);
	sched_free(r);
	sched_free(s);
}

static void test_blocked_head(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 1000);
	/* many high-priority tasks of a type no agent runs, older than the rest */
	char id[32];
	for (int i = 0; i < 5000; i++) {
		snprintf(id, sizeof id, "gpu%d", i);
		add(s, id, "gpu", 10, i);
	}
	for (int i = 0; i < 5; i++) {
		snprintf(id, sizeof id, "cpu%d", i);
		add(s, id, "cpu", 1, 10000 + i);
	}
	up(s, "a", "cpu", 10, NULL);
	struct sched_decision d[16];
	int n = pick(s, 20000, d, 16);
	assert_int_equal(n, 5);
	for (int i = 0; i < n; i++)
		assert_string_equal(d[i].type, "cpu");
	assert_int_equal(sched_ready_count(s), 5000);
	sched_free(s);
}

/* Pinned tasks blocked at the head of their list are examined within a
 * budget per call, and whatever sits behind them is reached within a few
 * calls; plain tasks of the same type and level never wait behind them. */
static void test_scan_budget(void **state)
{
	(void)state;
	struct sched_opts o;
	sched_opts_default(&o);
	o.aging_ms = 0;
	o.scan_budget = 4;
	struct sched *s = NULL;
	assert_int_equal(sched_new(&o, &s), 0);
	char id[32];
	for (int i = 0; i < 20; i++) {
		snprintf(id, sizeof id, "pin-x%d", i);
		add_full(s, id, "t", 10, i, "x", NULL); /* x never connects */
	}
	add_full(s, "zone-a", "t", 10, 100, NULL, "zone=a");
	add(s, "plain", "t", 10, 200);
	up(s, "w", "t", 10, "zone=a");
	struct sched_decision d[4];
	assert_int_equal(pick(s, 1000, d, 4), 1);
	assert_string_equal(d[0].task_id, "plain");
	int calls = 1;
	while (calls < 100 && pick(s, 1000, d, 4) == 0)
		calls++;
	printf("affinity task behind 20 blocked pins found after %d calls (budget 4)\n",
	       calls + 1);
	assert_string_equal(d[0].task_id, "zone-a");
	/* 21 constrained tasks, 4 from the resume point per call: within 6 calls,
	 * and not in the first (the budget is real) */
	assert_true(calls >= 2 && calls <= 7);
	sched_free(s);
}

static void test_drain_and_liveness(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 0);
	up(s, "a", "t", 10, NULL);
	up(s, "b", "t", 10, NULL);
	assert_int_equal(sched_agent_drain(s, "a", true), 0);
	assert_int_equal(sched_agent_drain(s, "nobody", true), EC_EUNKNOWN_AGENT);
	char id[16];
	for (int i = 0; i < 8; i++) {
		snprintf(id, sizeof id, "t%d", i);
		add(s, id, "t", 5, i);
	}
	struct sched_decision d[16];
	int n = pick(s, 100, d, 4);
	assert_int_equal(n, 4);
	for (int i = 0; i < n; i++)
		assert_string_equal(d[i].agent, "b");
	/* suspect still receives work; offline does not */
	assert_int_equal(sched_agent_set_state(s, "b", SCHED_AGENT_SUSPECT), 0);
	assert_int_equal(pick(s, 101, d, 1), 1);
	assert_string_equal(d[0].agent, "b");
	assert_int_equal(sched_agent_down(s, "b"), 0);
	assert_int_equal(pick(s, 102, d, 16), 0);
	struct sched_agent_view v;
	assert_int_equal(sched_agent_get(s, "b", 102, &v), 0);
	assert_int_equal(v.state, SCHED_AGENT_OFFLINE);
	assert_int_equal(v.running, 5); /* released only by the daemon's LOST reports */
	/* undrain a */
	assert_int_equal(sched_agent_drain(s, "a", false), 0);
	assert_int_equal(pick(s, 103, d, 16), 3);
	for (int i = 0; i < 3; i++)
		assert_string_equal(d[i].agent, "a");
	assert_int_equal(sched_agent_down(s, "nobody"), EC_EUNKNOWN_AGENT);
	sched_free(s);
}

/* A cancelled dispatch whose agent has not answered yet keeps its slot: the
 * agent still runs it, and would refuse work beyond its slots. */
static void test_held_slots(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 0);
	up(s, "a", "t", 1, NULL);
	add(s, "t1", "t", 5, 1);
	add(s, "t2", "t", 5, 2);
	struct sched_decision d[4], d1;
	assert_int_equal(pick1(s, 100, &d1), 1);
	assert_string_equal(d1.task_id, "t1");
	/* t1 is cancelled: its task is released at once, its slot is held */
	done(s, &d1, SCHED_OUT_ABORT, 0, 101);
	assert_int_equal(sched_agent_set_held(s, "a", 1), 0);
	assert_int_equal(pick(s, 102, d, 4), 0);
	struct sched_agent_view v;
	assert_int_equal(sched_agent_get(s, "a", 102, &v), 0);
	assert_int_equal(v.running, 0); /* tasks only */
	assert_int_equal(v.held, 1);
	assert_true(sched_load_cv(s) == 0);
	/* a reconnect keeps it; only the daemon releases it */
	up(s, "a", "t", 1, NULL);
	assert_int_equal(sched_agent_set_state(s, "a", SCHED_AGENT_SUSPECT), 0);
	assert_int_equal(pick(s, 103, d, 4), 0);
	/* the agent answered t1's lease: t2 goes there */
	assert_int_equal(sched_agent_set_held(s, "a", 0), 0);
	assert_int_equal(pick(s, 104, d, 4), 1);
	assert_string_equal(d[0].task_id, "t2");
	assert_string_equal(d[0].agent, "a");
	assert_int_equal(sched_agent_set_held(s, "nobody", 1), EC_EUNKNOWN_AGENT);
	sched_free(s);

	/* With room left, a held slot counts as load: b (1 held of 2) and c
	 * (1 running of 2) tie on load and both lose to d; more slots than
	 * running + held still take work. */
	s = mk(SCHED_LEAST_LOADED, 0);
	up(s, "b", "t", 2, NULL);
	up(s, "c", "t", 2, NULL);
	up(s, "d", "t", 2, NULL);
	assert_int_equal(sched_agent_set_held(s, "b", 1), 0);
	assert_int_equal(sched_task_adopt(s, "c", "t"), 0);
	add(s, "u1", "t", 5, 1);
	add(s, "u2", "t", 5, 2);
	add(s, "u3", "t", 5, 3);
	add(s, "u4", "t", 5, 4);
	add(s, "u5", "t", 5, 5);
	assert_int_equal(pick(s, 100, d, 4), 4);
	assert_string_equal(d[0].agent, "d"); /* 0/2 */
	assert_string_equal(d[1].agent, "b"); /* 1/2 each: name order */
	assert_string_equal(d[2].agent, "c");
	assert_string_equal(d[3].agent, "d");
	assert_int_equal(pick(s, 101, d, 4), 0); /* b: 1 running + 1 held = 2 */
	assert_int_equal(sched_agent_get(s, "b", 101, &v), 0);
	assert_int_equal(v.running, 1);
	assert_int_equal(v.held, 1);
	sched_free(s);
}

/* --- routing ------------------------------------------------------------------ */

static void test_least_loaded(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 0);
	up(s, "a", "t", 10, NULL);
	up(s, "b", "t", 10, NULL);
	up(s, "c", "t", 10, NULL);
	up(s, "d", "t", 20, NULL);
	char id[16];
	for (int i = 0; i < 60; i++) {
		snprintf(id, sizeof id, "t%d", i);
		add(s, id, "t", 5, i);
	}
	struct sched_decision d[64];
	/* 5 picks: one each to a, b, c (name order on ties), two fill the
	 * double-sized d as fast as the others in proportion */
	int n = pick(s, 100, d, 64);
	assert_int_equal(n, 50); /* 50 slots: never more */
	assert_int_equal(pick(s, 101, d, 64), 0);
	assert_int_equal(sched_ready_count(s), 10);
	int cnt[4] = { 0 };
	for (int i = 0; i < n; i++)
		cnt[d[i].agent[0] - 'a']++;
	assert_int_equal(cnt[0], 10);
	assert_int_equal(cnt[1], 10);
	assert_int_equal(cnt[2], 10);
	assert_int_equal(cnt[3], 20);
	assert_true(sched_load_cv(s) < 1e-9);
	/* the first four went one to each (spread, not fill) */
	assert_string_equal(d[0].agent, "a");
	assert_string_equal(d[1].agent, "b");
	assert_string_equal(d[2].agent, "c");
	assert_string_equal(d[3].agent, "d");
	sched_free(s);
}

static void test_round_robin(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_ROUND_ROBIN, 0);
	up(s, "a", "t", 100, NULL);
	up(s, "b", "t", 100, NULL);
	up(s, "c", "t", 100, NULL);
	char id[16];
	for (int i = 0; i < 9; i++) {
		snprintf(id, sizeof id, "t%d", i);
		add(s, id, "t", 5, i);
	}
	struct sched_decision d;
	const char *want = "abcabcabc";
	for (int i = 0; i < 9; i++) {
		assert_int_equal(pick1(s, 100, &d), 1);
		assert_int_equal(d.agent[0], want[i]);
		if (i == 4) /* finishing work does not disturb the rotation */
			done(s, &d, SCHED_OUT_OK, 5, 100);
	}
	/* an agent that cannot take work is skipped, the rotation goes on */
	for (int i = 0; i < 4; i++) {
		snprintf(id, sizeof id, "u%d", i);
		add(s, id, "t", 5, 100 + i);
	}
	assert_int_equal(sched_agent_drain(s, "b", true), 0);
	const char *want2 = "acac";
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pick1(s, 200, &d), 1);
		assert_int_equal(d.agent[0], want2[i]);
	}
	sched_free(s);
}

static void test_performance(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_PERFORMANCE, 0);
	up(s, "fast", "t", 4, NULL);
	up(s, "slow", "t", 4, NULL);
	/* figures: fast always succeeds in 100 ms; slow fails half its tasks
	 * and takes 500 ms */
	for (int i = 0; i < 40; i++) {
		assert_int_equal(sched_task_adopt(s, "fast", "t"), 0);
		assert_int_equal(sched_task_finished(s, "fast", "t", SCHED_OUT_OK, 100, 0), 0);
		assert_int_equal(sched_task_adopt(s, "slow", "t"), 0);
		assert_int_equal(sched_task_finished(s, "slow", "t",
						     i % 2 ? SCHED_OUT_OK : SCHED_OUT_FAIL, 500, 0),
				 0);
	}
	struct sched_agent_view vf, vs;
	assert_int_equal(sched_agent_get(s, "fast", 0, &vf), 0);
	assert_int_equal(sched_agent_get(s, "slow", 0, &vs), 0);
	assert_true(vf.success_rate > 0.99 && vf.latency_ms > 99 && vf.latency_ms < 101);
	assert_true(vs.success_rate > 0.3 && vs.success_rate < 0.7);
	assert_true(vs.latency_ms > 499 && vs.latency_ms < 501);
	assert_int_equal(vs.breakers_open, 0); /* failures never consecutive */

	int to_slow = 0;
	const int N = 10000;
	char id[16];
	for (int i = 0; i < N; i++) {
		snprintf(id, sizeof id, "t%d", i);
		add(s, id, "t", 5, i);
		struct sched_decision d;
		assert_int_equal(pick1(s, i, &d), 1);
		to_slow += strcmp(d.agent, "slow") == 0;
		done(s, &d, SCHED_OUT_ABORT, 0, i); /* keep the figures as they are */
	}
	printf("performance routing: %d of %d picks to the worse agent (share 100 permille)\n",
	       to_slow, N);
	assert_true(to_slow >= 700 && to_slow <= 1300);

	/* a newcomer without figures is tried first: it scores like the best
	 * and wins the tie by having fewer samples */
	up(s, "new", "t", 4, NULL);
	struct sched_decision d;
	int to_new = 0;
	for (int i = 0; i < 20; i++) {
		snprintf(id, sizeof id, "n%d", i);
		add(s, id, "t", 5, i);
		assert_int_equal(pick1(s, N + i, &d), 1);
		to_new += strcmp(d.agent, "new") == 0;
		done(s, &d, SCHED_OUT_ABORT, 0, N + i);
	}
	assert_true(to_new >= 14);
	sched_free(s);
}

/* --- breaker ----------------------------------------------------------------- */

struct bk_find {
	const char *agent, *type;
	struct sched_breaker_view v;
	int found;
};

static int bk_cb(const struct sched_breaker_view *v, void *arg)
{
	struct bk_find *f = arg;
	if (strcmp(v->agent, f->agent) == 0 && strcmp(v->type, f->type) == 0) {
		f->v = *v;
		f->found++;
	}
	return 0;
}

static struct sched_breaker_view breaker(struct sched *s, const char *agent,
					 const char *type, int64_t now)
{
	struct bk_find f = { .agent = agent, .type = type };
	assert_int_equal(sched_breakers_each(s, now, bk_cb, &f), 0);
	assert_int_equal(f.found, 1);
	return f.v;
}

static void test_breaker(void **state)
{
	(void)state;
	struct sched_opts o;
	sched_opts_default(&o);
	o.aging_ms = 0;
	o.breaker_failures = 3;
	o.breaker_cooldown_ms = 1000;
	o.breaker_cooldown_max_ms = 4000;
	struct sched *s = NULL;
	assert_int_equal(sched_new(&o, &s), 0);
	up(s, "a", "t,u", 10, NULL);
	char id[16];
	int seq = 0;
#define ADD() do { snprintf(id, sizeof id, "k%d", seq++); add(s, id, "t", 5, 0); } while (0)
	struct sched_decision d;
	int64_t now = 0;
	/* two failures, a success, two failures: never three in a row */
	for (int i = 0; i < 5; i++) {
		ADD();
		assert_int_equal(pick1(s, now, &d), 1);
		done(s, &d, i == 2 ? SCHED_OUT_OK : SCHED_OUT_FAIL, 10, now);
	}
	assert_int_equal(breaker(s, "a", "t", now).state, SCHED_BREAKER_CLOSED);
	assert_int_equal(breaker(s, "a", "t", now).failures, 2);
	/* the third consecutive failure opens it */
	ADD();
	assert_int_equal(pick1(s, now, &d), 1);
	assert_false(d.trial);
	done(s, &d, SCHED_OUT_FAIL, 10, now = 100);
	struct sched_breaker_view v = breaker(s, "a", "t", now);
	assert_int_equal(v.state, SCHED_BREAKER_OPEN);
	assert_int_equal(v.open_until_ms, 1100);
	assert_int_equal(sched_next_due(s, now), 1100);
	/* no work of that type during the cool-down; other types still flow */
	ADD();
	add(s, "u-task", "u", 1, 0);
	assert_int_equal(pick1(s, 1099, &d), 1);
	assert_string_equal(d.task_id, "u-task");
	assert_int_equal(pick1(s, 1099, &d), 0);
	struct sched_agent_view av;
	assert_int_equal(sched_agent_get(s, "a", 1099, &av), 0);
	assert_int_equal(av.breakers_open, 1);
	/* half-open: exactly one trial */
	assert_int_equal(breaker(s, "a", "t", 1100).state, SCHED_BREAKER_HALF_OPEN);
	ADD();
	struct sched_decision two[2];
	assert_int_equal(pick(s, 1100, two, 2), 1);
	assert_true(two[0].trial);
	/* the trial fails: open again for twice as long */
	done(s, &two[0], SCHED_OUT_FAIL, 10, now = 1200);
	v = breaker(s, "a", "t", now);
	assert_int_equal(v.state, SCHED_BREAKER_OPEN);
	assert_int_equal(v.cooldown_ms, 2000);
	assert_int_equal(v.open_until_ms, 3200);
	assert_int_equal(pick1(s, 3199, &d), 0); /* k7 waits */
	assert_int_equal(pick1(s, 3200, &d), 1);
	assert_true(d.trial);
	done(s, &d, SCHED_OUT_FAIL, 10, now = 3300); /* 4000 */
	assert_int_equal(breaker(s, "a", "t", now).cooldown_ms, 4000);
	ADD();
	assert_int_equal(pick1(s, 7299, &d), 0);
	assert_int_equal(pick1(s, 7300, &d), 1);
	done(s, &d, SCHED_OUT_FAIL, 10, now = 7300); /* capped at 4000 */
	v = breaker(s, "a", "t", now);
	assert_int_equal(v.cooldown_ms, 4000);
	assert_int_equal(v.open_until_ms, 11300);
	/* a lost trial gives no verdict: another trial is allowed */
	ADD();
	assert_int_equal(pick1(s, 11300, &d), 1);
	assert_true(d.trial);
	done(s, &d, SCHED_OUT_LOST, 0, 11400);
	assert_int_equal(breaker(s, "a", "t", 11400).state, SCHED_BREAKER_HALF_OPEN);
	ADD();
	assert_int_equal(pick1(s, 11400, &d), 1);
	assert_true(d.trial);
	/* success closes it and resets the cool-down */
	done(s, &d, SCHED_OUT_OK, 10, now = 11500);
	v = breaker(s, "a", "t", now);
	assert_int_equal(v.state, SCHED_BREAKER_CLOSED);
	assert_int_equal(v.failures, 0);
	assert_int_equal(sched_next_due(s, now), -1);
	for (int i = 0; i < 5; i++)
		ADD();
	struct sched_decision many[8];
	assert_int_equal(pick(s, now, many, 8), 5);
	for (int i = 0; i < 5; i++) {
		assert_false(many[i].trial);
		done(s, &many[i], SCHED_OUT_FAIL, 10, now);
	}
	/* reopened: the first cool-down again */
	v = breaker(s, "a", "t", now);
	assert_int_equal(v.state, SCHED_BREAKER_OPEN);
	assert_int_equal(v.cooldown_ms, 1000);
	/* another agent of the type takes the work meanwhile */
	up(s, "b", "t", 1, NULL);
	ADD();
	assert_int_equal(pick1(s, now, &d), 1);
	assert_string_equal(d.agent, "b");
	assert_int_equal(breaker(s, "b", "t", now).state, SCHED_BREAKER_CLOSED);
#undef ADD
	sched_free(s);
}

/* --- load figure ----------------------------------------------------------------- */

static void test_load_cv(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 0);
	assert_true(sched_load_cv(s) == 0);
	up(s, "a", "t", 4, NULL);
	up(s, "b", "t", 4, NULL);
	up(s, "c", "t", 8, NULL);
	up(s, "d", "t", 4, NULL);
	assert_true(sched_load_cv(s) == 0); /* none loaded */
	for (int i = 0; i < 2; i++) {
		assert_int_equal(sched_task_adopt(s, "a", "t"), 0);
		assert_int_equal(sched_task_adopt(s, "b", "t"), 0);
		assert_int_equal(sched_task_adopt(s, "d", "t"), 0);
	}
	for (int i = 0; i < 4; i++)
		assert_int_equal(sched_task_adopt(s, "c", "t"), 0);
	assert_true(sched_load_cv(s) < 1e-9); /* all at half */
	/* unbalanced: 0, 0, 0, 1 -> mean 0.25, stddev sqrt(0.1875), cv sqrt(3) */
	struct sched *u = mk(SCHED_LEAST_LOADED, 0);
	up(u, "a", "t", 4, NULL);
	up(u, "b", "t", 4, NULL);
	up(u, "c", "t", 4, NULL);
	up(u, "d", "t", 4, NULL);
	up(u, "e", "t", 4, NULL); /* loaded but draining: not counted */
	for (int i = 0; i < 4; i++) {
		assert_int_equal(sched_task_adopt(u, "d", "t"), 0);
		assert_int_equal(sched_task_adopt(u, "e", "t"), 0);
	}
	assert_int_equal(sched_agent_drain(u, "e", true), 0);
	double cv = sched_load_cv(u);
	assert_true(cv > 1.7320 && cv < 1.7321);
	sched_free(u);
	sched_free(s);
}

/* --- scale -------------------------------------------------------------------- */

static double secs(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_scale(void **state)
{
	(void)state;
	struct sched *s = mk(SCHED_LEAST_LOADED, 30000);
	static const char *const types[] = { "t0", "t1", "t2", "t3", "t4" };
	char name[32], caps[32], lab[32];
	for (int i = 0; i < 100; i++) {
		snprintf(name, sizeof name, "agent-%03d", i);
		snprintf(caps, sizeof caps, "%s,%s", types[i % 5], types[(i + 1) % 5]);
		snprintf(lab, sizeof lab, "zone=%d", i % 4);
		up(s, name, caps, 10, lab);
	}
	const int N = 100000;
	char id[32];
	int expect = 0;
	double t0 = secs();
	for (int i = 0; i < N; i++) {
		snprintf(id, sizeof id, "task-%06d", i);
		if (i % 10 == 0) {
			/* a type nobody runs, interleaved with the rest */
			add(s, id, "nobody", 1 + i % 10, i);
		} else if (i % 7 == 0) {
			snprintf(lab, sizeof lab, "zone=%d", i % 4);
			add_full(s, id, types[i % 5], 1 + i % 10, i, NULL, lab);
			expect++;
		} else if (i % 13 == 0) {
			snprintf(name, sizeof name, "agent-%03d", i % 100);
			add_full(s, id, types[i % 5], 1 + i % 10, i, name, NULL);
			expect++;
		} else {
			add(s, id, types[i % 5], 1 + i % 10, i);
			expect++;
		}
	}
	double t1 = secs();
	struct sched_decision *d = malloc(1000 * sizeof *d);
	assert_non_null(d);
	int total = 0, rounds = 0;
	int64_t now = N;
	for (;;) {
		int n = pick(s, now, d, 1000);
		if (n == 0)
			break;
		total += n;
		rounds++;
		for (int i = 0; i < n; i++)
			done(s, &d[i], SCHED_OUT_OK, 20, now);
		now += 100;
	}
	double t2 = secs();
	printf("scale: %d tasks indexed in %.3f s; %d picked in %d calls in %.3f s "
	       "(100 agents, %zu left of a type nobody runs)\n",
	       N, t1 - t0, total, rounds, t2 - t1, sched_ready_count(s));
	assert_int_equal(total, expect);
	assert_int_equal(sched_ready_count(s), (size_t)(N - expect));
	free(d);
	sched_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff_exact),
		cmocka_unit_test(test_backoff_jitter),
		cmocka_unit_test(test_rng_deterministic),
		cmocka_unit_test(test_after_failure),
		cmocka_unit_test(test_policy_resolve),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_index_basics),
		cmocka_unit_test(test_ready_order),
		cmocka_unit_test(test_aging_bound),
		cmocka_unit_test(test_pin_affinity),
		cmocka_unit_test(test_concurrency_limit),
		cmocka_unit_test(test_blocked_head),
		cmocka_unit_test(test_scan_budget),
		cmocka_unit_test(test_drain_and_liveness),
		cmocka_unit_test(test_held_slots),
		cmocka_unit_test(test_least_loaded),
		cmocka_unit_test(test_round_robin),
		cmocka_unit_test(test_performance),
		cmocka_unit_test(test_breaker),
		cmocka_unit_test(test_load_cv),
		cmocka_unit_test(test_scale),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
