/* SPDX-License-Identifier: MIT */
/*
 * test_crash.c - durability under SIGKILL. A child process opens the store
 * and loops over random write transactions (single and grouped: plain tasks,
 * small workflows, batches with dependencies, a refused submission now and
 * then, and random legal transitions: dispatch, start, succeed, fail, retry
 * wait, lost, cancel, retry of dead). After each commit returns it reports
 * every task state the transaction produced (seen through the observer) on a
 * pipe. The parent kills it at a random moment, reopens the store, runs
 * store_check and verifies that everything reported is there.
 *
 * Every transaction uses a fresh sequence number as its clock, so the
 * history says which transaction made each change: the parent requires that
 * all changes the child did not report belong to one single transaction (the
 * one in flight when it died, which may or may not have committed) and that
 * they continue from the reported state. Then the next child goes on with the
 * same store.
 *
 * A second loop kills a child that prunes (retention) while it adds work,
 * and runs store_check after each kill.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "store_testutil.h"

#define ROUNDS 120

/* --- the child ----------------------------------------------------------- */

struct sbuf {
	char *p;
	size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		abort();
	if (b->len + (size_t)n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 4096;
		while (cap < b->len + (size_t)n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			abort();
		b->cap = cap;
	}
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

struct ids {
	char **v;
	size_t n, cap;
};

static void ids_add(struct ids *l, const char *id)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 256;
		l->v = realloc(l->v, l->cap * sizeof *l->v);
		if (!l->v)
			abort();
	}
	l->v[l->n++] = strdup(id);
}

struct child {
	struct store *s;
	unsigned round, ctr;
	int64_t seq;          /* the clock of the transaction being built */
	struct sbuf out;      /* what this transaction changed */
	struct ids known;     /* committed task ids */
	struct ids fresh;     /* ids created by the transaction being built */
};

static int child_obs(struct store_txn *t, const struct store_event *ev, void *arg)
{
	(void)t;
	struct child *c = arg;
	if (ev->kind == STORE_EV_TASK)
		sb_add(&c->out, "S %d %s\n", ev->task->state, ev->task->spec.id);
	return 0;
}

static const char *pick(struct child *c)
{
	return c->known.n ? c->known.v[(size_t)rand() % c->known.n] : NULL;
}

static int submit_random(struct store_txn *t, struct child *c)
{
	struct submission sub;
	char id[64];
	int kind = rand() % 4;
	snprintf(id, sizeof id, "r%u-%u", c->round, c->ctr++);
	if (kind == 0) { /* a plain task, maybe on stored tasks */
		const char *deps[3] = { NULL, NULL, NULL };
		int nd = rand() % 3;
		for (int i = 0; i < nd; i++)
			deps[i] = pick(c);
		tu_sub_task(&sub, id, deps);
		sub.tasks[0].run_if = (uint8_t)(rand() % 3);
	} else if (kind == 1) { /* a small workflow: chain or diamond */
		uint32_t n = 2 + (uint32_t)(rand() % 4);
		tu_sub_chain(&sub, id, n, true);
		if (n >= 3 && rand() % 2) {
			char a[80];
			snprintf(a, sizeof a, "%s:s0", id);
			free(sub.tasks[2].deps[0]);
			sub.tasks[2].deps[0] = strdup(a); /* s1 and s2 both after s0 */
		}
		for (uint32_t i = 0; i < n; i++)
			sub.tasks[i].run_if = (uint8_t)(rand() % 3);
	} else if (kind == 2) { /* a batch with deps inside */
		uint32_t n = 2 + (uint32_t)(rand() % 3);
		tu_sub_init(&sub, SUB_BATCH, NULL, n);
		for (uint32_t i = 0; i < n; i++) {
			char tid[80], dep[80];
			snprintf(tid, sizeof tid, "%s-b%u", id, i);
			snprintf(dep, sizeof dep, "%s-b%u", id, i ? i - 1 : 0);
			const char *deps[] = { dep, NULL };
			tu_spec(&sub.tasks[i], tid, NULL, i ? deps : NULL);
		}
	} else { /* refused: an unknown dependency after a good task */
		tu_sub_init(&sub, SUB_BATCH, NULL, 2);
		char tid[80];
		snprintf(tid, sizeof tid, "%s-x", id);
		const char *deps[] = { "never-there", NULL };
		tu_spec(&sub.tasks[0], id, NULL, NULL);
		tu_spec(&sub.tasks[1], tid, NULL, deps);
	}
	size_t mark = c->out.len;
	struct submit_result r;
	struct sub_error e;
	int rc = store_submit(t, &sub, "crash", 0, c->seq, &r, &e);
	if (rc == 0) {
		for (uint32_t i = 0; i < sub.ntasks; i++)
			ids_add(&c->fresh, sub.tasks[i].id);
	} else if (rc == EC_EUNKNOWN_DEP && kind == 3) {
		c->out.len = mark; /* rolled back with its nested transaction */
		if (c->out.p)
			c->out.p[mark] = 0;
		rc = 0;
	}
	submission_fini(&sub);
	return rc;
}

static int transition_random(struct store_txn *t, struct child *c)
{
	const char *id = pick(c);
	struct task_rec r;
	if (!id)
		return 0;
	int rc = store_task_get(t, id, &r);
	if (rc)
		return rc;
	struct transition tr = { .now_ms = c->seq, .lease = r.lease, .agent = "ag" };
	enum task_state st = r.state;
	task_rec_fini(&r);
	int dice = rand() % 10;
	if (dice == 0 && !task_state_final(st)) {
		const char *colon = strchr(id, ':');
		if (colon && rand() % 4 == 0) { /* the whole workflow */
			char wf[TASK_ID_MAX + 1];
			snprintf(wf, sizeof wf, "%.*s", (int)(colon - id), id);
			return store_cancel_workflow(t, wf, c->seq);
		}
		return store_cancel(t, id, c->seq);
	}
	switch (st) {
	case TS_READY:
		tr.to = TS_DISPATCHED;
		tr.lease = 0;
		tr.timeout_due_ms = c->seq + 1000;
		break;
	case TS_DISPATCHED:
	case TS_RUNNING:
		if (dice < 3) {
			tr.to = TS_READY;
			tr.lost = true;
		} else if (dice < 6) {
			tr.to = TS_FAILED;
			tr.error = "boom";
		} else if (dice < 8 && st == TS_DISPATCHED) {
			tr.to = TS_RUNNING;
		} else {
			tr.to = TS_SUCCEEDED;
			tr.result = (const uint8_t *)"\xa0"; /* {} */
			tr.result_len = 1;
		}
		break;
	case TS_FAILED:
		tr.to = dice < 6 ? TS_RETRY_WAIT : TS_DEAD;
		tr.retry_due_ms = c->seq + 5;
		break;
	case TS_RETRY_WAIT:
		tr.to = TS_READY;
		break;
	case TS_DEAD:
		rc = store_retry(t, id, c->seq);
		return rc == EC_ENOT_DEAD ? 0 : rc; /* its workflow was cancelled */
	default:
		return 0; /* waiting or final: nothing to do */
	}
	return store_transition(t, id, &tr, NULL);
}

static int child_txn(struct store_txn *t, void *arg)
{
	struct child *c = arg;
	c->out.len = 0;
	for (size_t i = 0; i < c->fresh.n; i++)
		free(c->fresh.v[i]);
	c->fresh.n = 0;
	int nops = rand() % 3 == 0 ? 1 + rand() % 20 : 1; /* single or grouped */
	for (int i = 0; i < nops; i++) {
		int rc = rand() % 3 == 0 ? submit_random(t, c) : transition_random(t, c);
		if (rc)
			return rc;
	}
	return 0;
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0)
			_exit(3);
		p += w;
		n -= (size_t)w;
	}
}

static int known_cb(const struct task_rec *r, void *arg)
{
	ids_add(arg, r->spec.id);
	return 0;
}

static int known_fn(struct store_txn *t, void *arg)
{
	return store_tasks_scan(t, -1, known_cb, arg);
}

static int child_main(const char *dir, int fd, unsigned round, int64_t seq)
{
	struct child c = { .round = round, .seq = seq };
	struct store_opts o = { .dir = dir, .map_size = 1 << 20, .max_map_size = 256 << 20 };
	srand((unsigned)getpid() ^ round * 2654435761u);
	if (store_open(&o, &c.s))
		return 2;
	/* Known ids: everything stored. */
	if (store_read(c.s, known_fn, &c.known))
		return 2;
	store_set_observer(c.s, child_obs, &c);
	for (;;) {
		c.seq++;
		int rc = store_write(c.s, child_txn, &c);
		if (rc)
			return 4;
		struct sbuf line = { 0 };
		sb_add(&line, "C %lld\n", (long long)c.seq);
		if (c.out.len)
			sb_add(&line, "%s", c.out.p);
		sb_add(&line, "E %lld\n", (long long)c.seq);
		write_all(fd, line.p, line.len);
		free(line.p);
		for (size_t i = 0; i < c.fresh.n; i++) {
			ids_add(&c.known, c.fresh.v[i]);
			free(c.fresh.v[i]);
		}
		c.fresh.n = 0;
	}
}

/* --- the parent ------------------------------------------------------------ */

/* id -> reported state; open addressing, grows. */
struct map {
	char **keys;
	int *vals;
	size_t cap, n;
};

static size_t h(const char *s)
{
	size_t x = 1469598103934665603ull;
	while (*s)
		x = (x ^ (unsigned char)*s++) * 1099511628211ull;
	return x;
}

static int *map_slot(struct map *m, const char *k, bool create)
{
	if (create && (m->n + 1) * 2 > m->cap) {
		struct map nm = { .cap = m->cap ? m->cap * 2 : 1024 };
		nm.keys = calloc(nm.cap, sizeof *nm.keys);
		nm.vals = calloc(nm.cap, sizeof *nm.vals);
		for (size_t i = 0; i < m->cap; i++)
			if (m->keys[i]) {
				size_t j = h(m->keys[i]) & (nm.cap - 1);
				while (nm.keys[j])
					j = (j + 1) & (nm.cap - 1);
				nm.keys[j] = m->keys[i];
				nm.vals[j] = m->vals[i];
			}
		nm.n = m->n;
		free(m->keys);
		free(m->vals);
		*m = nm;
	}
	if (!m->cap)
		return NULL;
	size_t j = h(k) & (m->cap - 1);
	while (m->keys[j]) {
		if (strcmp(m->keys[j], k) == 0)
			return &m->vals[j];
		j = (j + 1) & (m->cap - 1);
	}
	if (!create)
		return NULL;
	m->keys[j] = strdup(k);
	m->n++;
	return &m->vals[j];
}

static void map_fini(struct map *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->keys[i]);
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof *m);
}

/* Apply the complete transactions in buf (text from the child). */
static void apply_reports(struct map *m, char *buf, int64_t *reported, int *ntxn)
{
	char *line = buf, *nl;
	struct { int st; char id[TASK_FULLID_MAX + 1]; } *pend = NULL;
	size_t np = 0, capp = 0;
	bool in = false;
	while ((nl = strchr(line, '\n'))) {
		*nl = 0;
		long long seq;
		int st;
		char id[TASK_FULLID_MAX + 1];
		if (sscanf(line, "C %lld", &seq) == 1) {
			in = true;
			np = 0;
		} else if (in && sscanf(line, "S %d %201s", &st, id) == 2) {
			if (np == capp) {
				capp = capp ? capp * 2 : 64;
				pend = realloc(pend, capp * sizeof *pend);
			}
			pend[np].st = st;
			snprintf(pend[np].id, sizeof pend[np].id, "%s", id);
			np++;
		} else if (in && sscanf(line, "E %lld", &seq) == 1) {
			for (size_t i = 0; i < np; i++)
				*map_slot(m, pend[i].id, true) = pend[i].st;
			*reported = seq;
			(*ntxn)++;
			in = false;
		}
		line = nl + 1;
	}
	free(pend);
}

struct verify {
	struct store_txn *t;
	struct map *m;
	int64_t reported;     /* last reported transaction */
	int64_t extra;        /* the one unreported transaction seen, or 0 */
	int64_t max_ts;
	size_t seen_reported;
	char err[400];
	/* per task */
	int64_t first_from;   /* from of the first event after `reported`, or -1 */
};

struct hv {
	struct verify *v;
	int first_from;
	int64_t bad_ts;
};

static int hist_cb(const struct history_ev *ev, void *arg)
{
	struct hv *x = arg;
	struct verify *v = x->v;
	if (ev->ts_ms > v->max_ts)
		v->max_ts = ev->ts_ms;
	if (ev->ts_ms <= v->reported)
		return 0;
	if (v->extra == 0)
		v->extra = ev->ts_ms;
	if (ev->ts_ms != v->extra)
		x->bad_ts = ev->ts_ms;

	if (x->first_from < 0)
		x->first_from = ev->from;
	return 0;
}

static int verify_task(const struct task_rec *r, void *arg)
{
	struct verify *v = arg;
	struct hv x = { v, -1, 0 };
	int rc = store_history_scan(v->t, r->spec.id, hist_cb, &x);
	if (rc)
		return rc;
	if (x.bad_ts) {
		snprintf(v->err, sizeof v->err, "%s: changes from two unreported txns", r->spec.id);
		return -1;
	}
	int *rep = map_slot(v->m, r->spec.id, false);
	if (rep)
		v->seen_reported++;
	if (x.first_from < 0) {
		/* Untouched since the last report: exactly as reported. */
		if (!rep || *rep != (int)r->state) {
			snprintf(v->err, sizeof v->err, "%s: stored %s, reported %s", r->spec.id,
				 task_state_name(r->state), rep ? task_state_name(*rep) : "nothing");
			return -1;
		}
	} else if (rep && x.first_from != *rep) {
		snprintf(v->err, sizeof v->err, "%s: unreported change from %s, reported %s",
			 r->spec.id, task_state_name(x.first_from), task_state_name(*rep));
		return -1;
	}
	return 0;
}

static int verify_fn(struct store_txn *t, void *arg)
{
	struct verify *v = arg;
	v->t = t;
	char why[256];
	if (store_check(t, why, sizeof why)) {
		snprintf(v->err, sizeof v->err, "store_check: %s", why);
		return -1;
	}
	return store_tasks_scan(t, -1, verify_task, v);
}

static int resync_task(const struct task_rec *r, void *arg)
{
	*map_slot(arg, r->spec.id, true) = r->state;
	return 0;
}

static int resync_fn(struct store_txn *t, void *arg)
{
	return store_tasks_scan(t, -1, resync_task, arg);
}

static void test_kill_loop(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	struct map m = { 0 };
	int64_t reported = 0, next_seq = 0;
	int total_txns = 0, rounds_with_unreported = 0;
	double t0 = tu_mono();
	srand((unsigned)getpid());
	assert_non_null(dir);
	for (unsigned round = 0; round < ROUNDS; round++) {
		int fds[2];
		assert_int_equal(pipe(fds), 0);
		fcntl(fds[0], F_SETPIPE_SZ, 1 << 20);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			close(fds[0]);
			_exit(child_main(dir, fds[1], round, next_seq));
		}
		close(fds[1]);
		usleep((useconds_t)(rand() % 20001));
		kill(pid, SIGKILL);
		int status;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (!WIFSIGNALED(status))
			fail_msg("child exited by itself with status %d", WEXITSTATUS(status));

		struct sbuf got = { 0 };
		char chunk[65536];
		ssize_t n;
		while ((n = read(fds[0], chunk, sizeof chunk)) > 0) {
			if (got.len + (size_t)n + 1 > got.cap) {
				got.cap = (got.len + (size_t)n + 1) * 2;
				got.p = realloc(got.p, got.cap);
			}
			memcpy(got.p + got.len, chunk, (size_t)n);
			got.len += (size_t)n;
			got.p[got.len] = 0;
		}
		close(fds[0]);
		int before_txns = total_txns;
		if (got.p)
			apply_reports(&m, got.p, &reported, &total_txns);
		if (getenv("EC_CRASH_DEBUG"))
			fprintf(stderr, "round %u: %d txns, %zu bytes\n", round,
				total_txns - before_txns, got.len);
		free(got.p);

		struct store_opts o = { .dir = dir, .map_size = 1 << 20, .max_map_size = 256 << 20 };
		struct store *s = NULL;
		assert_int_equal(store_open(&o, &s), 0);
		struct verify v = { .m = &m, .reported = reported };
		int rc = store_read(s, verify_fn, &v);
		if (rc)
			fail_msg("round %u: %s", round, v.err);
		/* Everything reported is stored. */
		assert_int_equal(v.seen_reported, m.n);
		if (v.extra)
			rounds_with_unreported++;
		/* Adopt what is stored (the unreported txn, if it committed). */
		assert_int_equal(store_read(s, resync_fn, &m), 0);
		store_close(s);
		next_seq = v.max_ts > reported ? v.max_ts : reported;
		reported = next_seq;
	}
	print_message("%d kills, %d reported txns, %d with an unreported commit, %zu tasks, %.1fs\n",
		      ROUNDS, total_txns, rounds_with_unreported, m.n, tu_mono() - t0);
	assert_true(total_txns > ROUNDS); /* the children did work */
	map_fini(&m);
	tu_rmrf(dir);
}

/* --- kills during retention ------------------------------------------------ */

/* A child keeps adding finished tasks and workflows and pruning them a few
 * rows at a time; it is SIGKILLed at random moments, 40 times. After each
 * kill the store must hold every invariant: no workflow half deleted, no history,
 * result, dead letter or edge left behind (store_check). */
struct pruner {
	struct store *s;
	unsigned n;
};

static int prune_some(struct store_txn *t, void *arg)
{
	unsigned removed;
	bool wrapped;
	(void)arg;
	return store_prune(t, INT64_MAX, 20, &removed, &wrapped);
}

static int pruner_main(const char *dir, unsigned round)
{
	struct store_opts o = { .dir = dir, .map_size = 1 << 20, .max_map_size = 256 << 20 };
	struct pruner p = { .n = round * 100000 };
	if (store_open(&o, &p.s))
		return 2;
	for (;;) {
		char id[32], up[32];
		struct submission sub;
		struct submit_result r;
		snprintf(id, sizeof id, "w%u", p.n);
		tu_sub_chain(&sub, id, 3, true);
		if (tu_submit(p.s, &sub, &r))
			return 3;
		submission_fini(&sub);
		for (int i = 0; i < 3; i++) {
			uint64_t lease;
			snprintf(id, sizeof id, "w%u:s%d", p.n, i);
			if (tu_move(p.s, id, TS_DISPATCHED, 0, &lease) ||
			    tu_move(p.s, id, TS_RUNNING, lease, NULL) ||
			    tu_move(p.s, id, i == 2 && p.n % 3 == 0 ? TS_FAILED : TS_SUCCEEDED,
				    lease, NULL))
				return 4;
		}
		snprintf(up, sizeof up, "u%u", p.n);
		snprintf(id, sizeof id, "d%u", p.n);
		const char *const deps[] = { up, NULL };
		tu_sub_task(&sub, up, NULL);
		if (tu_submit(p.s, &sub, &r))
			return 3;
		submission_fini(&sub);
		tu_sub_task(&sub, id, deps);
		if (tu_submit(p.s, &sub, &r))
			return 3;
		submission_fini(&sub);
		if (tu_move(p.s, up, TS_DEAD, 0, NULL) || store_write(p.s, prune_some, NULL))
			return 5;
		p.n++;
	}
}

static int count_states(struct store_txn *t, void *arg)
{
	return store_state_counts(t, arg);
}

static void test_kill_during_prune(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	assert_non_null(dir);
	for (unsigned round = 0; round < 40; round++) {
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0)
			_exit(pruner_main(dir, round));
		usleep((useconds_t)(5000 + rand() % 30001));
		kill(pid, SIGKILL);
		int status;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (!WIFSIGNALED(status))
			fail_msg("round %u: the child exited with status %d", round,
				 WEXITSTATUS(status));
		struct store_opts o = { .dir = dir, .map_size = 1 << 20, .max_map_size = 256 << 20 };
		struct store *s = NULL;
		assert_int_equal(store_open(&o, &s), 0);
		assert_int_equal(tu_check(s), 0);
		if (getenv("EC_CRASH_DEBUG")) {
			uint64_t c[TS__COUNT] = { 0 }, n = 0;
			assert_int_equal(store_read(s, count_states, c), 0);
			for (int i = 0; i < TS__COUNT; i++)
				n += c[i];
			fprintf(stderr, "round %u: %llu tasks stored, %llu succeeded\n", round,
				(unsigned long long)n, (unsigned long long)c[TS_SUCCEEDED]);
		}
		store_close(s);
	}
	tu_rmrf(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kill_loop),
		cmocka_unit_test(test_kill_during_prune),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
