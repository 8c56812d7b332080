/* SPDX-License-Identifier: MIT */
/*
 * store_testutil.h - helpers shared by test_store.c and test_crash.c: temp
 * directories, submissions built by hand (no codec), and one-operation write
 * transactions. Header-only (static functions) because each test file is its
 * own executable.
 */
#ifndef EC_STORE_TESTUTIL_H
#define EC_STORE_TESTUTIL_H

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "edgecoord/err.h"
#include "store.h"
#include "task.h"

static inline char *tu_mkdtemp(void)
{
	const char *base = getenv("TMPDIR");
	char tmpl[512];
	snprintf(tmpl, sizeof tmpl, "%s/ec-store-XXXXXX", base && *base ? base : "/tmp");
	char *d = mkdtemp(tmpl);
	return d ? strdup(d) : NULL;
}

static inline int tu_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
	(void)sb;
	(void)flag;
	(void)f;
	return remove(p);
}

static inline void tu_rmrf(char *dir)
{
	if (!dir)
		return;
	nftw(dir, tu_rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

static inline int64_t tu_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline double tu_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A spec with every optional field unset. deps: NULL-terminated or NULL. */
static inline void tu_spec(struct task_spec *s, const char *id, const char *wf,
			   const char *const *deps)
{
	memset(s, 0, sizeof *s);
	snprintf(s->id, sizeof s->id, "%s", id);
	snprintf(s->type, sizeof s->type, "work");
	if (wf)
		s->workflow = strdup(wf);
	s->timeout_ms = -1;
	uint32_t n = 0;
	while (deps && deps[n])
		n++;
	if (n) {
		s->deps = calloc(n, sizeof *s->deps);
		for (uint32_t i = 0; i < n; i++)
			s->deps[i] = strdup(deps[i]);
		s->ndeps = n;
	}
}

static inline void tu_sub_init(struct submission *sub, enum sub_kind kind, const char *id,
			       uint32_t n)
{
	memset(sub, 0, sizeof *sub);
	sub->kind = kind;
	snprintf(sub->id, sizeof sub->id, "%s", id ? id : "");
	sub->tasks = calloc(n ? n : 1, sizeof *sub->tasks);
	sub->ntasks = n;
}

/* One plain task with deps given as a NULL-terminated list. */
static inline void tu_sub_task(struct submission *sub, const char *id, const char *const *deps)
{
	tu_sub_init(sub, SUB_TASK, id, 1);
	tu_spec(&sub->tasks[0], id, NULL, deps);
}

/* A workflow of n steps "wf:s<i>"; chain: step i depends on step i-1. */
static inline void tu_sub_chain(struct submission *sub, const char *wf, uint32_t n, bool chain)
{
	tu_sub_init(sub, SUB_WORKFLOW, wf, n);
	for (uint32_t i = 0; i < n; i++) {
		char id[TASK_FULLID_MAX + 1], dep[TASK_FULLID_MAX + 1];
		snprintf(id, sizeof id, "%s:s%u", wf, i);
		snprintf(dep, sizeof dep, "%s:s%u", wf, i ? i - 1 : 0);
		const char *deps[] = { dep, NULL };
		tu_spec(&sub->tasks[i], id, wf, chain && i ? deps : NULL);
	}
}

/* --- one operation per write transaction --------------------------------- */

struct tu_submit {
	const struct submission *sub;
	const char *source;
	uint32_t max_pending;
	int64_t now;
	struct submit_result res;
	struct sub_error err;
};

static inline int tu_submit_fn(struct store_txn *t, void *arg)
{
	struct tu_submit *a = arg;
	return store_submit(t, a->sub, a->source, a->max_pending, a->now, &a->res, &a->err);
}

static inline int tu_submit(struct store *s, const struct submission *sub, struct submit_result *res)
{
	struct tu_submit a = { .sub = sub, .source = "src", .now = tu_now_ms() };
	int rc = store_write(s, tu_submit_fn, &a);
	if (res)
		*res = a.res;
	return rc;
}

struct tu_tr {
	const char *id;
	struct transition tr;
	uint64_t lease;
};

static inline int tu_tr_fn(struct store_txn *t, void *arg)
{
	struct tu_tr *a = arg;
	return store_transition(t, a->id, &a->tr, &a->lease);
}

/* Move id to `to` with lease (0 = unchecked); *lease_out gets the lease. */
static inline int tu_move(struct store *s, const char *id, enum task_state to, uint64_t lease,
			  uint64_t *lease_out)
{
	struct tu_tr a = { .id = id,
			   .tr = { .to = to, .now_ms = tu_now_ms(), .lease = lease, .agent = "ag1" } };
	int rc = store_write(s, tu_tr_fn, &a);
	if (rc == 0 && lease_out)
		*lease_out = a.lease;
	return rc;
}

struct tu_get {
	const char *id;
	struct task_rec rec;
	int rc;
};

static inline int tu_get_fn(struct store_txn *t, void *arg)
{
	struct tu_get *a = arg;
	a->rc = store_task_get(t, a->id, &a->rec);
	return 0;
}

/* The task's state, or -1 if it is not stored. */
static inline int tu_state(struct store *s, const char *id)
{
	struct tu_get a = { .id = id };
	if (store_read(s, tu_get_fn, &a) != 0 || a.rc != 0)
		return -1;
	int st = a.rec.state;
	task_rec_fini(&a.rec);
	return st;
}

struct tu_check {
	char why[256];
	int rc;
};

static inline int tu_check_fn(struct store_txn *t, void *arg)
{
	struct tu_check *a = arg;
	a->rc = store_check(t, a->why, sizeof a->why);
	return 0;
}

/* 0 if every invariant holds, else prints why and returns the error. */
static inline int tu_check(struct store *s)
{
	struct tu_check a = { "", 0 };
	int rc = store_read(s, tu_check_fn, &a);
	if (rc == 0)
		rc = a.rc;
	if (rc)
		fprintf(stderr, "store_check: %s\n", a.why);
	return rc;
}

#endif
