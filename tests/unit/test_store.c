/* SPDX-License-Identifier: MIT */
/*
 * test_store.c - the store against a temporary LMDB directory: every
 * transition through store_transition (state index, history), leases and
 * attempts, submission idempotency, unknown dependencies, quotas, atomicity
 * inside a group commit, DAG propagation (diamond, wide, a 10,000-step
 * chain), skip rules, cancel and retry, timers, the outbox, reopening, map
 * growth and store_full, and a read-only opener beside the writer.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <lmdb.h>

#include "edgecoord/proto.h"
#include "store_testutil.h"

static const char *self_path;

struct fx {
	char *dir;
	struct store *s;
};

static struct store *open_at(const char *dir, size_t map, size_t max, bool ro)
{
	struct store_opts o = { .dir = dir, .map_size = map, .max_map_size = max, .read_only = ro };
	struct store *s = NULL;
	assert_int_equal(store_open(&o, &s), 0);
	return s;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	f->dir = tu_mkdtemp();
	assert_non_null(f->dir);
	f->s = open_at(f->dir, 8 << 20, 256 << 20, false);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	store_close(f->s);
	tu_rmrf(f->dir);
	free(f);
	return 0;
}

static void submit_ok(struct store *s, struct submission *sub)
{
	struct submit_result r;
	assert_int_equal(tu_submit(s, sub, &r), 0);
	assert_false(r.duplicate);
	submission_fini(sub);
}

static void add_task(struct store *s, const char *id, const char *const *deps)
{
	struct submission sub;
	tu_sub_task(&sub, id, deps);
	submit_ok(s, &sub);
}

/* Run a ready task to success with an optional result. */
struct finish {
	const char *id;
	const uint8_t *result;
	size_t len;
};

static int finish_fn(struct store_txn *t, void *arg)
{
	struct finish *a = arg;
	int64_t now = tu_now_ms();
	uint64_t lease;
	struct transition d = { .to = TS_DISPATCHED, .now_ms = now, .agent = "ag1" };
	int rc = store_transition(t, a->id, &d, &lease);
	if (rc)
		return rc;
	struct transition r = { .to = TS_RUNNING, .now_ms = now, .lease = lease };
	if ((rc = store_transition(t, a->id, &r, NULL)))
		return rc;
	struct transition ok = { .to = TS_SUCCEEDED, .now_ms = now, .lease = lease,
				 .result = a->result, .result_len = a->len };
	return store_transition(t, a->id, &ok, NULL);
}

static void finish(struct store *s, const char *id, const uint8_t *res, size_t len)
{
	struct finish a = { id, res, len };
	assert_int_equal(store_write(s, finish_fn, &a), 0);
}

static void kill_task(struct store *s, const char *id)
{
	assert_int_equal(tu_move(s, id, TS_DEAD, 0, NULL), 0);
}

/* --- history ------------------------------------------------------------- */

struct hist {
	struct history_ev last;
	int n;
	bool saw_lost;
};

static int hist_cb(const struct history_ev *ev, void *arg)
{
	struct hist *h = arg;
	h->last = *ev;
	h->n++;
	if (strcmp(ev->detail, "lost") == 0)
		h->saw_lost = true;
	return 0;
}

struct hist_arg {
	const char *id;
	struct hist h;
};

static int hist_read(struct store_txn *t, void *arg)
{
	struct hist_arg *a = arg;
	return store_history_scan(t, a->id, hist_cb, &a->h);
}

static struct hist history(struct store *s, const char *id)
{
	struct hist_arg a = { .id = id };
	assert_int_equal(store_read(s, hist_read, &a), 0);
	return a.h;
}

struct in_state {
	const char *id;
	bool found;
};

static int in_state_cb(const struct task_rec *r, void *arg)
{
	struct in_state *a = arg;
	if (strcmp(r->spec.id, a->id) == 0)
		a->found = true;
	return 0;
}

struct scan_arg {
	int state;
	struct in_state is;
};

static int scan_fn(struct store_txn *t, void *arg)
{
	struct scan_arg *a = arg;
	return store_tasks_scan(t, a->state, in_state_cb, &a->is);
}

static bool indexed_as(struct store *s, const char *id, int state)
{
	struct scan_arg a = { state, { id, false } };
	assert_int_equal(store_read(s, scan_fn, &a), 0);
	return a.is.found;
}

/* --- every transition ------------------------------------------------------ */

/* Bring task `id` (with upstream `up`) into state st using legal moves. */
static void drive(struct store *s, const char *id, const char *up, enum task_state st)
{
	const char *deps[] = { up, NULL };
	uint64_t lease = 0;
	add_task(s, up, NULL);
	add_task(s, id, deps);
	assert_int_equal(tu_state(s, id), TS_WAITING);
	switch (st) {
	case TS_WAITING:
		return;
	case TS_SKIPPED:
		kill_task(s, up);
		assert_int_equal(tu_state(s, id), TS_SKIPPED);
		return;
	default:
		break;
	}
	finish(s, up, NULL, 0);
	assert_int_equal(tu_state(s, id), TS_READY);
	static const enum task_state path[TS__COUNT][4] = {
		[TS_READY] = { TS__COUNT },
		[TS_DISPATCHED] = { TS_DISPATCHED, TS__COUNT },
		[TS_RUNNING] = { TS_DISPATCHED, TS_RUNNING, TS__COUNT },
		[TS_SUCCEEDED] = { TS_DISPATCHED, TS_RUNNING, TS_SUCCEEDED, TS__COUNT },
		[TS_FAILED] = { TS_DISPATCHED, TS_RUNNING, TS_FAILED, TS__COUNT },
		[TS_RETRY_WAIT] = { TS_DISPATCHED, TS_FAILED, TS_RETRY_WAIT, TS__COUNT },
		[TS_DEAD] = { TS_DEAD, TS__COUNT },
		[TS_CANCELLED] = { TS_CANCELLED, TS__COUNT },
	};
	for (int i = 0; path[st][i] != TS__COUNT; i++)
		assert_int_equal(tu_move(s, id, path[st][i], 0, &lease), 0);
	assert_int_equal(tu_state(s, id), st);
}

static void test_every_transition(void **state)
{
	struct fx *f = *state;
	int legal = 0, refused = 0;
	for (int from = TS_WAITING; from < TS__COUNT; from++) {
		for (int to = 0; to < TS__COUNT; to++) {
			char id[64], up[64];
			snprintf(id, sizeof id, "t-%d-%d", from, to);
			snprintf(up, sizeof up, "u-%d-%d", from, to);
			drive(f->s, id, up, from);
			struct hist before = history(f->s, id);
			int rc = tu_move(f->s, id, to, 0, NULL);
			/* Callers may not make the DAG's own moves. */
			bool want = task_transition_legal(from, to) && to != TS_WAITING &&
				    to != TS_SKIPPED && to != TS_ACCEPTED && from != TS_SKIPPED &&
				    (from != TS_WAITING || to == TS_CANCELLED || to == TS_DEAD);
			if (want) {
				assert_int_equal(rc, 0);
				assert_int_equal(tu_state(f->s, id), to);
				assert_true(indexed_as(f->s, id, to));
				assert_false(indexed_as(f->s, id, from));
				struct hist h = history(f->s, id);
				assert_int_equal(h.last.from, from);
				assert_int_equal(h.last.to, to);
				assert_int_equal(h.n, before.n + 1);
				legal++;
			} else {
				assert_int_equal(rc, EC_EILLEGAL);
				assert_int_equal(tu_state(f->s, id), from);
				assert_true(indexed_as(f->s, id, from));
				assert_int_equal(history(f->s, id).n, before.n);
				refused++;
			}
		}
	}
	assert_true(legal >= 20 && refused >= 60);
	assert_int_equal(tu_move(f->s, "nope", TS_READY, 0, NULL), EC_ENOTFOUND);
	assert_int_equal(tu_check(f->s), 0);
}

/* --- leases and attempts --------------------------------------------------- */

struct rec_arg {
	const char *id;
	struct task_rec r;
};

static int rec_fn(struct store_txn *t, void *arg)
{
	struct rec_arg *a = arg;
	return store_task_get(t, a->id, &a->r);
}

static uint32_t attempt_of(struct store *s, const char *id, uint64_t *lease)
{
	struct rec_arg a = { .id = id };
	assert_int_equal(store_read(s, rec_fn, &a), 0);
	uint32_t n = a.r.attempt;
	if (lease)
		*lease = a.r.lease;
	task_rec_fini(&a.r);
	return n;
}

static void test_leases_attempts(void **state)
{
	struct fx *f = *state;
	uint64_t l1 = 0, l2 = 0, l3 = 0, cur = 0;
	add_task(f->s, "a", NULL);
	assert_int_equal(attempt_of(f->s, "a", NULL), 0);
	assert_int_equal(tu_move(f->s, "a", TS_DISPATCHED, 0, &l1), 0);
	assert_true(l1 > 0);
	assert_int_equal(attempt_of(f->s, "a", &cur), 1);
	assert_int_equal(cur, l1);
	assert_int_equal(tu_move(f->s, "a", TS_RUNNING, l1 + 1, NULL), EC_ESTALE);
	assert_int_equal(tu_state(f->s, "a"), TS_DISPATCHED);
	assert_int_equal(tu_move(f->s, "a", TS_RUNNING, l1, NULL), 0);

	/* Lost: back to ready, the attempt is not charged, "lost" in history. */
	struct tu_tr lost = { .id = "a", .tr = { .to = TS_READY, .now_ms = tu_now_ms(), .lease = l1,
						 .lost = true } };
	assert_int_equal(store_write(f->s, tu_tr_fn, &lost), 0);
	assert_int_equal(attempt_of(f->s, "a", NULL), 0);
	assert_true(history(f->s, "a").saw_lost);

	assert_int_equal(tu_move(f->s, "a", TS_DISPATCHED, 0, &l2), 0);
	assert_true(l2 > l1);
	assert_int_equal(attempt_of(f->s, "a", NULL), 1);
	/* The lost dispatch's late report is fenced. */
	assert_int_equal(tu_move(f->s, "a", TS_SUCCEEDED, l1, NULL), EC_ESTALE);
	assert_int_equal(tu_move(f->s, "a", TS_FAILED, l2, NULL), 0);
	assert_int_equal(tu_move(f->s, "a", TS_RETRY_WAIT, 0, NULL), 0);
	assert_int_equal(tu_move(f->s, "a", TS_READY, 0, NULL), 0);
	assert_int_equal(tu_move(f->s, "a", TS_DISPATCHED, 0, &l3), 0);
	assert_true(l3 > l2);
	assert_int_equal(attempt_of(f->s, "a", NULL), 2);
	assert_int_equal(tu_move(f->s, "a", TS_SUCCEEDED, l3, NULL), 0);
	assert_int_equal(tu_check(f->s), 0);
}

/* A dispatch that is aborted, or lost with the process, may already have been
 * sent (fleet.c sends work before the commit): its lease is never reused. */
static int dispatch_then_fail(struct store_txn *t, void *arg)
{
	struct transition d = { .to = TS_DISPATCHED, .now_ms = tu_now_ms(), .agent = "ag1" };
	int rc = store_transition(t, "b", &d, arg);
	return rc ? rc : EC_ESTORE; /* as if the commit had failed */
}

/* What a schema-2 store had that schema 3 does not: a state index entry for
 * every task, not only those at an agent. Written with LMDB directly, the
 * way an older build left it. */
/* Schema 4 -> 3 layout: the rows meta's tree holds for the state index,
 * the timers and the pending counts (behind bytes 1, 2, 3) go back to
 * tables of their own; and the schema says ver. */
static void old_layout(MDB_txn *txn, uint8_t ver)
{
	static const char *const tables[] = { "state", "timers", "pending" };
	MDB_dbi meta, own[3];
	MDB_cursor *c;
	MDB_val k, v;
	struct { uint8_t k[600], v[64]; size_t kn, vn; } *row = calloc(256, sizeof *row);
	size_t n = 0;
	assert_non_null(row);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(mdb_dbi_open(txn, tables[i], 0, &own[i]), 0);
	assert_int_equal(mdb_cursor_open(txn, meta, &c), 0);
	for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		uint8_t b = ((const uint8_t *)k.mv_data)[0];
		if (b < 1 || b > 3)
			continue;
		assert_true(n < 256 && k.mv_size <= sizeof row[n].k && v.mv_size <= sizeof row[n].v);
		memcpy(row[n].k, k.mv_data, row[n].kn = k.mv_size);
		memcpy(row[n].v, v.mv_data, row[n].vn = v.mv_size);
		n++;
	}
	mdb_cursor_close(c);
	for (size_t i = 0; i < n; i++) {
		MDB_val mk = { row[i].kn, row[i].k }, ok = { row[i].kn - 1, row[i].k + 1 };
		MDB_val val = { row[i].vn, row[i].v };
		assert_int_equal(mdb_put(txn, own[row[i].k[0] - 1], &ok, &val, 0), 0);
		assert_int_equal(mdb_del(txn, meta, &mk, NULL), 0);
	}
	free(row);
	uint8_t vb[4] = { ver, 0, 0, 0 };
	MDB_val key = { 6, (void *)"schema" }, val = { 4, vb };
	assert_int_equal(mdb_put(txn, meta, &key, &val, 0), 0);
}

static MDB_env *raw_open(const char *dir, MDB_txn **txn)
{
	MDB_env *env;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 32), 0);
	assert_int_equal(mdb_env_set_mapsize(env, 8 << 20), 0);
	assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, txn), 0);
	return env;
}

static void make_schema3(const char *dir)
{
	MDB_txn *txn;
	MDB_env *env = raw_open(dir, &txn);
	old_layout(txn, 3);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

static void make_schema2(const char *dir, const char *const *ids, const enum task_state *st,
			 size_t n)
{
	MDB_txn *txn;
	MDB_dbi state;
	MDB_env *env = raw_open(dir, &txn);
	old_layout(txn, 2);
	assert_int_equal(mdb_dbi_open(txn, "state", 0, &state), 0);
	for (size_t i = 0; i < n; i++) {
		uint8_t k[64];
		k[0] = (uint8_t)st[i];
		memcpy(k + 1, ids[i], strlen(ids[i]));
		MDB_val key = { strlen(ids[i]) + 1, k }, val = { 0, (void *)"" };
		assert_int_equal(mdb_put(txn, state, &key, &val, 0), 0);
	}
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/* Schema 2 -> 3: the state index keeps the tasks at an agent only; every
 * state is still found, read-only before the upgrade and after it. */
static void test_upgrade_state_index(void **state)
{
	struct fx *f = *state;
	static const char *const ids[] = { "r", "d", "u", "s" };
	static const enum task_state st[] = { TS_READY, TS_DISPATCHED, TS_RUNNING,
					      TS_SUCCEEDED };
	uint64_t lease = 0, lu = 0;
	for (size_t i = 0; i < 4; i++)
		add_task(f->s, ids[i], NULL);
	assert_int_equal(tu_move(f->s, "d", TS_DISPATCHED, 0, &lease), 0);
	assert_int_equal(tu_move(f->s, "u", TS_DISPATCHED, 0, &lu), 0);
	assert_int_equal(tu_move(f->s, "u", TS_RUNNING, lu, NULL), 0);
	assert_int_equal(tu_move(f->s, "s", TS_DISPATCHED, 0, &lease), 0);
	assert_int_equal(tu_move(f->s, "s", TS_RUNNING, lease, NULL), 0);
	assert_int_equal(tu_move(f->s, "s", TS_SUCCEEDED, lease, NULL), 0);
	store_close(f->s);
	make_schema2(f->dir, ids, st, 4);

	struct store *ro = open_at(f->dir, 8 << 20, 256 << 20, true);
	for (size_t i = 0; i < 4; i++)
		assert_true(indexed_as(ro, ids[i], st[i]));
	assert_int_equal(tu_check(ro), 0); /* edgecoordctl fsck before the upgrade */
	store_close(ro);

	f->s = open_at(f->dir, 8 << 20, 256 << 20, false);
	assert_int_equal(tu_check(f->s), 0); /* fails if r and s kept their entries */
	for (size_t i = 0; i < 4; i++)
		assert_true(indexed_as(f->s, ids[i], st[i]));
	assert_false(indexed_as(f->s, "r", TS_SUCCEEDED));
	assert_int_equal(tu_move(f->s, "u", TS_SUCCEEDED, lu, NULL), 0);
	assert_int_equal(tu_check(f->s), 0);
}

static int next_fn(struct store_txn *t, void *arg);
static int due_fn(struct store_txn *t, void *arg);
struct fired {
	char ids[8][32];
	int kinds[8];
	int n;
};
struct due_arg {
	int64_t now;
	struct fired f;
};

/* Rows of a table of its own (raw LMDB), or -1 without that table. */
static long raw_rows(const char *dir, const char *db)
{
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_stat st;
	MDB_env *env = raw_open(dir, &txn);
	long n = mdb_dbi_open(txn, db, 0, &dbi) == 0 && mdb_stat(txn, dbi, &st) == 0 ?
			 (long)st.ms_entries : -1;
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return n;
}

/* Schema 3 -> 4: the state index, the timers and the pending counts move
 * into meta's tree. A schema-3 store reads as it is (edgecoordctl before
 * the daemon upgrades it), and after the upgrade every timer, index entry
 * and count is where the store looks, and the old tables are empty. */
static void test_upgrade_to_meta(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	int64_t next;
	add_task(f->s, "t1", NULL);
	add_task(f->s, "t2", NULL);
	tu_sub_task(&sub, "t3", NULL);
	sub.tasks[0].deadline_ms = 5000;
	submit_ok(f->s, &sub);
	struct tu_tr d = { .id = "t1", .tr = { .to = TS_DISPATCHED, .now_ms = 1, .agent = "a",
					       .timeout_due_ms = 3000 } };
	assert_int_equal(store_write(f->s, tu_tr_fn, &d), 0);
	store_close(f->s);
	make_schema3(f->dir);
	assert_int_equal(raw_rows(f->dir, "timers"), 2);
	assert_int_equal(raw_rows(f->dir, "state"), 1);

	struct store *ro = open_at(f->dir, 8 << 20, 256 << 20, true);
	assert_int_equal(tu_check(ro), 0);
	assert_int_equal(store_read(ro, next_fn, &next), 0);
	assert_int_equal(next, 3000);
	assert_true(indexed_as(ro, "t1", TS_DISPATCHED));
	store_close(ro);

	f->s = open_at(f->dir, 8 << 20, 256 << 20, false);
	assert_int_equal(raw_rows(f->dir, "timers"), 0);
	assert_int_equal(raw_rows(f->dir, "state"), 0);
	assert_int_equal(raw_rows(f->dir, "pending"), 0);
	assert_int_equal(tu_check(f->s), 0);
	assert_true(indexed_as(f->s, "t1", TS_DISPATCHED));
	assert_int_equal(store_read(f->s, next_fn, &next), 0);
	assert_int_equal(next, 3000);
	struct due_arg a = { .now = 3500 };
	assert_int_equal(store_write(f->s, due_fn, &a), 0);
	assert_int_equal(a.f.n, 1);
	assert_string_equal(a.f.ids[0], "t1");
	assert_int_equal(store_read(f->s, next_fn, &next), 0);
	assert_int_equal(next, 5000);
	assert_int_equal(tu_move(f->s, "t2", TS_DISPATCHED, 0, NULL), 0);
	assert_true(indexed_as(f->s, "t2", TS_DISPATCHED));
	assert_int_equal(tu_move(f->s, "t3", TS_CANCELLED, 0, NULL), 0);
	assert_int_equal(store_read(f->s, next_fn, &next), EC_ENOTFOUND);
	assert_int_equal(tu_check(f->s), 0);
}

/* Put one row into table `db` with LMDB directly, as a damaged store or a
 * foreign writer would have it (the store must be closed). */
static void raw_putn(const char *dir, const char *db, const void *key, size_t klen,
		     const void *val, size_t len)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 32), 0);
	assert_int_equal(mdb_env_set_mapsize(env, 8 << 20), 0);
	assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
	MDB_val k = { klen, (void *)key }, v = { len, (void *)val };
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

static void raw_put(const char *dir, const char *db, const char *key, const void *val,
		    size_t len)
{
	raw_putn(dir, db, key, strlen(key), val, len);
}

/* A pending count, in meta's tree behind byte 3 (schema 4). */
static void raw_pending(const char *dir, const char *source, const void *val)
{
	char k[64];
	k[0] = 3;
	size_t n = strlen(source);
	memcpy(k + 1, source, n);
	raw_putn(dir, "meta", k, n + 1, val, 8);
}

/* store_check's verdict and its reason. */
static int check_why(struct store *s, char *why, size_t len)
{
	struct tu_check a = { "", 0 };
	int rc = store_read(s, tu_check_fn, &a);
	snprintf(why, len, "%s", a.why);
	return rc ? rc : a.rc;
}

/* meta["ctr"] with its word w (0 lease, 1 seq) set to v, written raw. */
static void raw_counter(const char *dir, int w, uint64_t v)
{
	MDB_txn *txn;
	MDB_dbi meta;
	MDB_val k = { 3, (void *)"ctr" }, val;
	uint8_t b[256];
	MDB_env *env = raw_open(dir, &txn);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
	assert_int_equal(mdb_get(txn, meta, &k, &val), 0);
	assert_true(val.mv_size <= sizeof b);
	memcpy(b, val.mv_data, val.mv_size);
	for (int i = 0; i < 8; i++)
		b[8 * w + i] = (uint8_t)(v >> (8 * i));
	val.mv_data = b;
	assert_int_equal(mdb_put(txn, meta, &k, &val, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/* fsck finds a counter behind what is stored: the next lease, ready or dead
 * key would be handed out again. */
static void test_check_counters(void **state)
{
	struct fx *f = *state;
	char why[256];
	add_task(f->s, "a", NULL);
	add_task(f->s, "b", NULL);
	assert_int_equal(tu_move(f->s, "a", TS_DISPATCHED, 0, NULL), 0);
	assert_int_equal(tu_check(f->s), 0);
	store_close(f->s);
	raw_counter(f->dir, 0, 1);
	f->s = open_at(f->dir, 8 << 20, 256 << 20, true);
	assert_int_equal(check_why(f->s, why, sizeof why), EC_ESTORE);
	assert_string_equal(why, "lease counter behind a stored one");
	store_close(f->s);
	raw_counter(f->dir, 0, 1ull << 40);
	raw_counter(f->dir, 1, 0);
	f->s = open_at(f->dir, 8 << 20, 256 << 20, true);
	assert_int_equal(check_why(f->s, why, sizeof why), EC_ESTORE);
	assert_string_equal(why, "sequence counter behind a stored one");
}

/* fsck names the key of a task record it cannot decode (it used to pass
 * bad() arguments that did not match its format). */
static void test_check_undecodable(void **state)
{
	struct fx *f = *state;
	char why[256];
	add_task(f->s, "fine", NULL);
	store_close(f->s);
	raw_put(f->dir, "tasks", "broken-1", "\xff\xff\xff", 3);
	f->s = open_at(f->dir, 8 << 20, 256 << 20, true);
	assert_int_equal(check_why(f->s, why, sizeof why), EC_ESTORE);
	assert_string_equal(why, "task record broken-1 undecodable");
}

struct sources {
	int n;
};

static int sources_fn(struct store_txn *t, void *arg)
{
	struct sources *a = arg;
	for (int i = 0; i < a->n; i++) {
		struct submission sub;
		struct submit_result r;
		struct sub_error e;
		char id[32], src[32];
		snprintf(id, sizeof id, "s%06d", i);
		snprintf(src, sizeof src, "source-%06d", i);
		tu_sub_task(&sub, id, NULL);
		int rc = store_submit(t, &sub, src, 0, 1, &r, &e);
		submission_fini(&sub);
		if (rc)
			return rc;
	}
	return 0;
}

/* fsck matches sources by hash, not by a linear search per task and per
 * counter (60,000 sources took 14 s), and still finds a wrong counter. */
static void test_check_many_sources(void **state)
{
	struct fx *f = *state;
	struct sources a = { 40000 };
	char why[256];
	assert_int_equal(store_write(f->s, sources_fn, &a), 0);
	double t0 = tu_mono();
	assert_int_equal(check_why(f->s, why, sizeof why), 0);
	double t1 = tu_mono();
	print_message("fsck of %d sources: %.2f s (tools/bench has no case; the old search "
		      "took 5 s and more)\n", a.n, t1 - t0);
	store_close(f->s);
	uint8_t two[8] = { 2 };
	raw_pending(f->dir, "source-012345", two);
	f->s = open_at(f->dir, 8 << 20, 256 << 20, true);
	assert_int_equal(check_why(f->s, why, sizeof why), EC_ESTORE);
	assert_string_equal(why, "pending count of source 'source-012345' wrong");
	store_close(f->s);
	raw_pending(f->dir, "nobody", two);
	raw_pending(f->dir, "source-012345", (uint8_t[8]){ 1 });
	f->s = open_at(f->dir, 8 << 20, 256 << 20, true);
	assert_int_equal(check_why(f->s, why, sizeof why), EC_ESTORE);
	assert_string_equal(why, "pending count of source 'nobody' wrong");
}

/* kB of the data file mapped in this process (smaps Rss of data.mdb). */
static long mapped_kb(void)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	long kb = 0;
	bool in = false;
	assert_non_null(f);
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		long v;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) /* a mapping's first line */
			in = strstr(line, "/data.mdb\n") != NULL;
		else if (in && sscanf(line, "Rss: %ld kB", &v) == 1)
			kb += v;
	}
	fclose(f);
	return kb;
}

/* store_unmap lets go of the map pages a transaction read; what is read
 * next comes back, unchanged. */
static void test_unmap(void **state)
{
	struct fx *f = *state;
	char id[32];
	for (int i = 0; i < 400; i++) {
		snprintf(id, sizeof id, "m%03d", i);
		add_task(f->s, id, NULL);
	}
	assert_int_equal(tu_check(f->s), 0); /* reads every page */
	long before = mapped_kb();
	assert_true(before >= 64);
	store_unmap(f->s);
	assert_true(mapped_kb() < before / 4);
	assert_int_equal(tu_state(f->s, "m123"), TS_READY);
	assert_int_equal(tu_check(f->s), 0);
}

static int write_nothing(struct store_txn *t, void *arg)
{
	(void)t, (void)arg;
	return 0;
}

/* lazy_meta: a commit is durable once the next one (or store_sync) synced;
 * without it, at once. A write that changes nothing moves neither. */
static void test_lazy_meta(void **state)
{
	struct fx *f = *state;
	add_task(f->s, "a", NULL);
	assert_true(store_durable(f->s) == store_written(f->s)); /* not lazy */
	store_close(f->s);

	struct store_opts o = { .dir = f->dir, .map_size = 8 << 20, .max_map_size = 256 << 20,
				.lazy_meta = true };
	assert_int_equal(store_open(&o, &f->s), 0);
	uint64_t w0 = store_written(f->s);
	assert_true(store_durable(f->s) == w0); /* what it opened with */
	add_task(f->s, "b", NULL);
	uint64_t w1 = store_written(f->s);
	assert_true(w1 > w0);
	assert_true(store_durable(f->s) == w0);
	assert_int_equal(store_write(f->s, write_nothing, NULL), 0);
	assert_true(store_written(f->s) == w1 && store_durable(f->s) == w0);
	add_task(f->s, "c", NULL);
	assert_true(store_written(f->s) > w1);
	assert_true(store_durable(f->s) == w1); /* its sync took b's meta along */
	assert_int_equal(store_sync(f->s), 0);
	assert_true(store_durable(f->s) == store_written(f->s));
	assert_int_equal(store_sync(f->s), 0); /* nothing to do */
	assert_int_equal(tu_state(f->s, "c"), TS_READY);
}

/* LMDB's flushes come here (the test binary's definition interposes libc's
 * for liblmdb): fail_syncs > 0 fails that many with EIO, as a device may. */
static atomic_int fail_syncs, syncs;

int fdatasync(int fd)
{
	atomic_fetch_add(&syncs, 1);
	if (atomic_load(&fail_syncs) > 0) {
		atomic_fetch_sub(&fail_syncs, 1);
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_fdatasync, fd);
}

static void count_notify(void *arg)
{
	atomic_fetch_add((atomic_int *)arg, 1);
}

/*
 * After a failed flush nothing written before it counts as durable until a
 * commit made after it has flushed its own meta page: Linux reports a
 * writeback error to one fdatasync only and marks the page clean, so a later
 * flush that succeeds proves nothing about a meta page the failed one held.
 */
static void test_sync_failure(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	atomic_int notified = 0;
	store_close(f->s);
	struct store_opts o = { .dir = f->dir, .map_size = 8 << 20, .max_map_size = 256 << 20,
				.lazy_meta = true };
	assert_int_equal(store_open(&o, &f->s), 0);
	uint64_t w0 = store_written(f->s);
	add_task(f->s, "a", NULL);
	uint64_t w1 = store_written(f->s);

	/* The background flush of a fails: a stays where it was. */
	store_set_sync_notify(f->s, count_notify, &notified);
	atomic_store(&fail_syncs, 1);
	assert_int_equal(store_sync_background(f->s), 0);
	for (int i = 0; i < 5000 && atomic_load(&notified) == 0; i++)
		usleep(1000);
	assert_int_equal(atomic_load(&notified), 1);
	assert_true(store_durable(f->s) == w0);

	/* The next commit's data flush does not take a's meta page along as
	 * it would otherwise; it flushes its own, and that covers both. */
	int s0 = atomic_load(&syncs);
	add_task(f->s, "b", NULL);
	uint64_t w2 = store_written(f->s);
	assert_true(w2 > w1);
	assert_true(store_durable(f->s) == w2);
	assert_int_equal(atomic_load(&syncs) - s0, 2);
	/* ... and the store is back to one flush per commit. */
	s0 = atomic_load(&syncs);
	add_task(f->s, "c", NULL);
	assert_true(store_durable(f->s) == w2);
	assert_int_equal(atomic_load(&syncs) - s0, 1);

	/* A commit whose flush fails commits nothing; what waited still waits
	 * (its flush may have taken the error of c's meta page). */
	uint64_t w3 = store_written(f->s);
	atomic_store(&fail_syncs, 1);
	tu_sub_task(&sub, "d", NULL);
	assert_int_not_equal(tu_submit(f->s, &sub, NULL), 0);
	submission_fini(&sub);
	assert_true(store_written(f->s) == w3 && store_durable(f->s) == w2);
	/* A blocking sync then commits anew and flushes that commit's meta. */
	assert_int_equal(store_sync(f->s), 0);
	assert_true(store_written(f->s) > w3);
	assert_true(store_durable(f->s) == store_written(f->s));
	assert_int_equal(tu_state(f->s, "c"), TS_READY);
	assert_int_equal(tu_state(f->s, "d"), -1);

	/* A blocking sync that fails claims nothing, and the next one
	 * recovers the same way. */
	add_task(f->s, "e", NULL);
	uint64_t w4 = store_written(f->s), d4 = store_durable(f->s);
	atomic_store(&fail_syncs, 1);
	assert_int_not_equal(store_sync(f->s), 0);
	assert_true(store_durable(f->s) == d4 && d4 < w4);
	assert_int_equal(store_sync(f->s), 0);
	assert_true(store_durable(f->s) == store_written(f->s));
	store_set_sync_notify(f->s, NULL, NULL);
	assert_int_equal(tu_check(f->s), 0);
}

static void test_leases_never_reused(void **state)
{
	struct fx *f = *state;
	uint64_t l1 = 0, lost = 0, l2 = 0, l3 = 0, l4 = 0;
	add_task(f->s, "a", NULL);
	add_task(f->s, "b", NULL);
	add_task(f->s, "c", NULL);
	assert_int_equal(tu_move(f->s, "a", TS_DISPATCHED, 0, &l1), 0);

	/* Aborted: the counter is not advanced in the store ... */
	assert_int_equal(store_write(f->s, dispatch_then_fail, &lost), EC_ESTORE);
	assert_true(lost == l1 + 1);
	assert_int_equal(tu_state(f->s, "b"), TS_READY);
	/* ... so without a floor the same number would come again. */
	store_lease_floor(f->s, lost);
	store_lease_floor(f->s, 1); /* a lower floor changes nothing */
	assert_int_equal(tu_move(f->s, "b", TS_DISPATCHED, 0, &l2), 0);
	assert_true(l2 == lost + 1);

	/* Dispatched but not committed when the process died: a reopen skips
	 * a whole gap past the last committed lease. */
	store_close(f->s);
	f->s = open_at(f->dir, 8 << 20, 256 << 20, false);
	assert_int_equal(tu_move(f->s, "c", TS_DISPATCHED, 0, &l3), 0);
	assert_true(l3 == l2 + STORE_LEASE_GAP + 1);
	/* A read-only open (edgecoordctl) moves nothing. */
	struct store *ro = open_at(f->dir, 8 << 20, 256 << 20, true);
	store_close(ro);
	assert_int_equal(tu_move(f->s, "b", TS_RUNNING, l2, NULL), 0);
	assert_int_equal(tu_move(f->s, "b", TS_FAILED, l2, NULL), 0);
	assert_int_equal(tu_move(f->s, "b", TS_RETRY_WAIT, 0, NULL), 0);
	assert_int_equal(tu_move(f->s, "b", TS_READY, 0, NULL), 0);
	assert_int_equal(tu_move(f->s, "b", TS_DISPATCHED, 0, &l4), 0);
	assert_true(l4 == l3 + 1);
	assert_int_equal(tu_check(f->s), 0);
}

/* --- submissions ----------------------------------------------------------- */

static void test_submit_idempotency(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	struct submit_result r;

	tu_sub_task(&sub, "t1", NULL);
	sub.tasks[0].payload = (uint8_t *)strdup("\x01");
	sub.tasks[0].payload_len = 1;
	assert_int_equal(tu_submit(f->s, &sub, &r), 0);
	assert_false(r.duplicate);
	/* Same content (the encoding does not matter): a duplicate. */
	sub.enc = ENC_CBOR;
	assert_int_equal(tu_submit(f->s, &sub, &r), 0);
	assert_true(r.duplicate);
	assert_int_equal(r.state, TS_READY);
	/* Different content: a conflict. */
	sub.tasks[0].payload[0] = 2;
	struct tu_submit a = { .sub = &sub, .source = "src", .now = 1 };
	assert_int_equal(store_write(f->s, tu_submit_fn, &a), EC_ECONFLICT);
	assert_int_equal(a.err.code, EC_ECONFLICT);
	assert_string_equal(a.err.task_id, "t1");
	submission_fini(&sub);

	/* Workflows: the record and every step. */
	tu_sub_chain(&sub, "wf", 3, true);
	sub.description = strdup("three");
	assert_int_equal(tu_submit(f->s, &sub, &r), 0);
	assert_false(r.duplicate);
	assert_int_equal(tu_submit(f->s, &sub, &r), 0);
	assert_true(r.duplicate);

	free(sub.description);
	sub.description = strdup("other");
	assert_int_equal(tu_submit(f->s, &sub, &r), EC_ECONFLICT);
	free(sub.description);
	sub.description = strdup("three");
	sub.tasks[2].priority = 9;
	assert_int_equal(tu_submit(f->s, &sub, &r), EC_ECONFLICT);
	sub.tasks[2].priority = 0;
	sub.ntasks = 2; /* fewer steps */
	assert_int_equal(tu_submit(f->s, &sub, &r), EC_ECONFLICT);
	sub.ntasks = 3;
	assert_int_equal(tu_submit(f->s, &sub, &r), 0);
	assert_true(r.duplicate);
	submission_fini(&sub);

	assert_int_equal(tu_check(f->s), 0);
}

static int counts_fn(struct store_txn *t, void *arg)
{
	return store_state_counts(t, arg);
}

static void test_duplicate_writes_nothing(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	struct submit_result r;
	uint64_t before[TS__COUNT], after[TS__COUNT];
	size_t u1, u2, m;
	tu_sub_chain(&sub, "w", 4, true);
	assert_int_equal(tu_submit(f->s, &sub, &r), 0);
	assert_int_equal(store_read(f->s, counts_fn, before), 0);
	assert_int_equal(before[TS_READY], 1);
	assert_int_equal(before[TS_WAITING], 3);
	assert_int_equal(store_usage(f->s, &u1, &m), 0);
	for (int i = 0; i < 20; i++) {
		assert_int_equal(tu_submit(f->s, &sub, &r), 0);
		assert_true(r.duplicate);
	}
	assert_int_equal(store_read(f->s, counts_fn, after), 0);
	assert_memory_equal(before, after, sizeof before);
	assert_int_equal(store_usage(f->s, &u2, &m), 0);
	assert_true(u2 <= u1 + 4 * 4096); /* only empty commits' meta churn */
	submission_fini(&sub);
}

static void test_unknown_dep(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	const char *deps[] = { "ghost", NULL };
	tu_sub_task(&sub, "orphan", deps);
	struct tu_submit a = { .sub = &sub, .source = "src", .now = 1 };
	assert_int_equal(store_write(f->s, tu_submit_fn, &a), EC_EUNKNOWN_DEP);
	assert_int_equal(a.err.code, EC_EUNKNOWN_DEP);
	assert_string_equal(a.err.task_id, "orphan");
	assert_non_null(strstr(a.err.detail, "ghost"));
	assert_int_equal(tu_state(f->s, "orphan"), -1);
	submission_fini(&sub);

	/* Inside a batch, given in any order. */
	tu_sub_init(&sub, SUB_BATCH, NULL, 2);
	const char *d2[] = { "b2", NULL };
	tu_spec(&sub.tasks[0], "b1", NULL, d2);
	tu_spec(&sub.tasks[1], "b2", NULL, NULL);
	submit_ok(f->s, &sub);
	assert_int_equal(tu_state(f->s, "b1"), TS_WAITING);
	assert_int_equal(tu_state(f->s, "b2"), TS_READY);
	/* On a stored task. */
	add_task(f->s, "b3", d2);
	assert_int_equal(tu_state(f->s, "b3"), TS_WAITING);
	assert_int_equal(tu_check(f->s), 0);
}

static int pending_fn(struct store_txn *t, void *arg)
{
	return store_pending_count(t, "src", arg);
}

/* The store as a whole holds at most max_unfinished tasks that are not
 * final, whatever their source: the scheduler's memory grows with them. */
static void test_max_unfinished(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	store_close(f->s);
	struct store_opts o = { .dir = f->dir, .map_size = 8 << 20, .max_map_size = 256 << 20,
				.max_unfinished = 3 };
	assert_int_equal(store_open(&o, &f->s), 0);
	add_task(f->s, "u0", NULL);
	add_task(f->s, "u1", NULL);
	/* A workflow of two would make four: refused whole, named. */
	tu_sub_chain(&sub, "wf", 2, true);
	struct tu_submit a = { .sub = &sub, .source = "other", .now = 1 };
	assert_int_equal(store_write(f->s, tu_submit_fn, &a), EC_ESTORE_FULL);
	assert_int_equal(a.err.code, EC_ESTORE_FULL);
	assert_non_null(strstr(a.err.detail, "holds 2 unfinished tasks"));
	assert_int_equal(tu_state(f->s, "wf:s0"), -1);
	/* A final task makes room; a duplicate of a stored one is no new task. */
	assert_int_equal(tu_move(f->s, "u0", TS_CANCELLED, 0, NULL), 0);
	assert_int_equal(store_write(f->s, tu_submit_fn, &a), 0);
	assert_int_equal(tu_state(f->s, "wf:s0"), TS_READY);
	memset(&a.res, 0, sizeof a.res);
	assert_int_equal(store_write(f->s, tu_submit_fn, &a), 0);
	assert_true(a.res.duplicate);
	submission_fini(&sub);
	assert_int_equal(tu_check(f->s), 0);
}

static void test_quota(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	for (int i = 0; i < 3; i++) {
		char id[16];
		snprintf(id, sizeof id, "q%d", i);
		tu_sub_task(&sub, id, NULL);
		struct tu_submit a = { .sub = &sub, .source = "src", .max_pending = 3, .now = 1 };
		assert_int_equal(store_write(f->s, tu_submit_fn, &a), 0);
		submission_fini(&sub);
	}
	uint64_t pend;
	assert_int_equal(store_read(f->s, pending_fn, &pend), 0);
	assert_int_equal(pend, 3);
	tu_sub_task(&sub, "q3", NULL);
	struct tu_submit a = { .sub = &sub, .source = "src", .max_pending = 3, .now = 1 };
	assert_int_equal(store_write(f->s, tu_submit_fn, &a), EC_EQUOTA);
	assert_int_equal(a.err.code, EC_EQUOTA);
	/* Another source is not affected. */
	a.source = "other";
	assert_int_equal(store_write(f->s, tu_submit_fn, &a), 0);
	assert_int_equal(tu_move(f->s, "q3", TS_CANCELLED, 0, NULL), 0);
	/* A final task frees its slot. */
	assert_int_equal(tu_move(f->s, "q0", TS_CANCELLED, 0, NULL), 0);
	assert_int_equal(store_read(f->s, pending_fn, &pend), 0);
	assert_int_equal(pend, 2);
	submission_fini(&sub);
	tu_sub_task(&sub, "q4", NULL);
	a.sub = &sub;
	a.source = "src";
	assert_int_equal(store_write(f->s, tu_submit_fn, &a), 0);
	submission_fini(&sub);
	assert_int_equal(tu_check(f->s), 0);
}

/* One store_write: a good submission, a refused one, another good one, and a
 * transition. The refusal must leave the rest intact. */
struct mixed {
	struct submission good1, bad, good2;
	int bad_rc;
};

static int mixed_fn(struct store_txn *t, void *arg)
{
	struct mixed *m = arg;
	struct submit_result r;
	struct sub_error e;
	int rc = store_submit(t, &m->good1, "src", 0, 1, &r, &e);
	if (rc)
		return rc;
	m->bad_rc = store_submit(t, &m->bad, "src", 0, 1, &r, &e);
	if ((rc = store_submit(t, &m->good2, "src", 0, 1, &r, &e)))
		return rc;
	struct transition tr = { .to = TS_DISPATCHED, .now_ms = 1, .agent = "x" };
	return store_transition(t, "pre", &tr, NULL);
}

static void test_atomic_refusal(void **state)
{
	struct fx *f = *state;
	struct mixed m;
	add_task(f->s, "pre", NULL);
	tu_sub_task(&m.good1, "g1", NULL);
	/* The bad batch: b1 would be fine, b2 names an unknown dependency. */
	tu_sub_init(&m.bad, SUB_BATCH, NULL, 2);
	tu_spec(&m.bad.tasks[0], "b1", NULL, NULL);
	const char *deps[] = { "ghost", NULL };
	tu_spec(&m.bad.tasks[1], "b2", NULL, deps);
	tu_sub_chain(&m.good2, "g2", 2, true);
	assert_int_equal(store_write(f->s, mixed_fn, &m), 0);
	assert_int_equal(m.bad_rc, EC_EUNKNOWN_DEP);
	assert_int_equal(tu_state(f->s, "g1"), TS_READY);
	assert_int_equal(tu_state(f->s, "g2:s0"), TS_READY);
	assert_int_equal(tu_state(f->s, "g2:s1"), TS_WAITING);
	assert_int_equal(tu_state(f->s, "pre"), TS_DISPATCHED);
	assert_int_equal(tu_state(f->s, "b1"), -1);
	assert_int_equal(tu_state(f->s, "b2"), -1);
	assert_int_equal(tu_check(f->s), 0);
	submission_fini(&m.good1);
	submission_fini(&m.bad);
	submission_fini(&m.good2);
}

/* --- DAG ------------------------------------------------------------------- */

static void test_diamond(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	tu_sub_init(&sub, SUB_WORKFLOW, "d", 4);
	const char *a[] = { "d:a", NULL }, *bc[] = { "d:b", "d:c", NULL };
	tu_spec(&sub.tasks[0], "d:a", "d", NULL);
	tu_spec(&sub.tasks[1], "d:b", "d", a);
	tu_spec(&sub.tasks[2], "d:c", "d", a);
	tu_spec(&sub.tasks[3], "d:d", "d", bc);
	submit_ok(f->s, &sub);
	assert_int_equal(tu_state(f->s, "d:a"), TS_READY);
	assert_int_equal(tu_state(f->s, "d:d"), TS_WAITING);
	finish(f->s, "d:a", NULL, 0);
	assert_int_equal(tu_state(f->s, "d:b"), TS_READY);
	assert_int_equal(tu_state(f->s, "d:c"), TS_READY);
	finish(f->s, "d:b", NULL, 0);
	assert_int_equal(tu_state(f->s, "d:d"), TS_WAITING);
	assert_int_equal(tu_check(f->s), 0);
	finish(f->s, "d:c", NULL, 0);
	assert_int_equal(tu_state(f->s, "d:d"), TS_READY);
	finish(f->s, "d:d", NULL, 0);
	assert_int_equal(tu_check(f->s), 0);
}

static int wf_get_fn(struct store_txn *t, void *arg)
{
	struct workflow_rec *w = arg;
	return store_workflow_get(t, w->id, w);
}

static const char *wf_state_of(struct store *s, const char *id, struct workflow_rec *out)
{
	static char buf[32];
	struct workflow_rec w;
	memset(&w, 0, sizeof w);
	snprintf(w.id, sizeof w.id, "%s", id);
	assert_int_equal(store_read(s, wf_get_fn, &w), 0);
	snprintf(buf, sizeof buf, "%s", workflow_state(&w));
	if (out)
		*out = w;
	else
		workflow_rec_fini(&w);
	return buf;
}

struct fanin_arg {
	char (*ids)[32];
	int from, to;
};

static int fanin_fn(struct store_txn *t, void *arg)
{
	struct fanin_arg *a = arg;
	for (int i = a->from; i < a->to; i++) {
		struct finish fa = { a->ids[i], NULL, 0 };
		int rc = finish_fn(t, &fa);
		if (rc)
			return rc;
	}
	return 0;
}

static void test_wide(void **state)
{
	struct fx *f = *state;
	enum { N = 1000 };
	struct submission sub;
	/* Fan-out: one root, N children. */
	tu_sub_init(&sub, SUB_BATCH, NULL, N + 1);
	tu_spec(&sub.tasks[0], "root", NULL, NULL);
	const char *r[] = { "root", NULL };
	for (int i = 0; i < N; i++) {
		char id[32];
		snprintf(id, sizeof id, "kid%d", i);
		tu_spec(&sub.tasks[i + 1], id, NULL, r);
	}
	submit_ok(f->s, &sub);
	uint64_t c[TS__COUNT];
	assert_int_equal(store_read(f->s, counts_fn, c), 0);
	assert_int_equal(c[TS_WAITING], N);
	finish(f->s, "root", NULL, 0);
	assert_int_equal(store_read(f->s, counts_fn, c), 0);
	assert_int_equal(c[TS_READY], N);
	assert_int_equal(c[TS_WAITING], 0);

	/* Fan-in: N roots, one sink. */
	tu_sub_init(&sub, SUB_WORKFLOW, "fin", N + 1);
	const char **deps = calloc(N + 1, sizeof *deps);
	char (*ids)[32] = calloc(N, sizeof *ids);
	for (int i = 0; i < N; i++) {
		snprintf(ids[i], sizeof ids[i], "fin:r%d", i);
		deps[i] = ids[i];
		tu_spec(&sub.tasks[i], ids[i], "fin", NULL);
	}
	tu_spec(&sub.tasks[N], "fin:sink", "fin", deps);
	submit_ok(f->s, &sub);
	/* 100 upstreams per commit (fsyncs are slow; the counting is the same). */
	for (int i = 0; i < N; i += 100) {
		assert_int_equal(tu_state(f->s, "fin:sink"), TS_WAITING);
		struct fanin_arg fa = { ids, i, i + 100 };
		assert_int_equal(store_write(f->s, fanin_fn, &fa), 0);
	}
	assert_int_equal(tu_state(f->s, "fin:sink"), TS_READY);
	assert_string_equal(wf_state_of(f->s, "fin", NULL), "running");
	finish(f->s, "fin:sink", NULL, 0);
	assert_string_equal(wf_state_of(f->s, "fin", NULL), "succeeded");
	assert_int_equal(tu_check(f->s), 0);
	free(deps);
	free(ids);
}

/* Complete `per` steps of the chain per store_write. */
struct chain_arg {
	uint32_t from, to;
};

static int chain_fn(struct store_txn *t, void *arg)
{
	struct chain_arg *a = arg;
	for (uint32_t i = a->from; i < a->to; i++) {
		char id[32];
		snprintf(id, sizeof id, "ch:s%u", i);
		struct finish fa = { id, NULL, 0 };
		int rc = finish_fn(t, &fa);
		if (rc)
			return rc;
	}
	return 0;
}

static void test_chain_10000(void **state)
{
	struct fx *f = *state;
	enum { N = 10000 };
	struct submission sub;
	double t0 = tu_mono();
	tu_sub_chain(&sub, "ch", N, true);
	submit_ok(f->s, &sub);
	double t1 = tu_mono();
	uint64_t c[TS__COUNT];
	assert_int_equal(store_read(f->s, counts_fn, c), 0);
	assert_int_equal(c[TS_READY], 1);
	assert_int_equal(c[TS_WAITING], N - 1);
	/* Step by step: each success makes exactly the next one ready. */
	for (uint32_t i = 0; i < N; i += 500) {
		struct chain_arg a = { i, i + 500 };
		assert_int_equal(store_write(f->s, chain_fn, &a), 0);
		char id[32];
		snprintf(id, sizeof id, "ch:s%u", i + 500);
		if (i + 500 < N)
			assert_int_equal(tu_state(f->s, id), TS_READY);
	}
	double t2 = tu_mono();
	assert_string_equal(wf_state_of(f->s, "ch", NULL), "succeeded");
	assert_int_equal(tu_check(f->s), 0);

	/* Skip propagation down 9,999 steps in one transition (iterative). */
	tu_sub_chain(&sub, "sk", N, true);
	submit_ok(f->s, &sub);
	double t3 = tu_mono();
	kill_task(f->s, "sk:s0");
	double t4 = tu_mono();
	assert_int_equal(tu_state(f->s, "sk:s9999"), TS_SKIPPED);
	struct workflow_rec w;
	assert_string_equal(wf_state_of(f->s, "sk", &w), "failed");
	assert_int_equal(w.counts[TS_SKIPPED], N - 1);
	workflow_rec_fini(&w);
	assert_int_equal(tu_check(f->s), 0);
	print_message("chain %d: submit %.2fs, complete %.2fs, skip-propagate %.2fs\n", N,
		      t1 - t0, t2 - t1, t4 - t3);
}

static uint8_t *result_map(const char *field, const char *value, size_t *len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 1);
	ec_cbor_w_text(&w, field);
	ec_cbor_w_text(&w, value);
	assert_int_equal(ec_cbor_w_finish(&w), 0);
	return ec_cbor_w_take(&w, len);
}

static void set_when(struct task_spec *s, const char *task, const char *field, const char *eq)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_text(&w, eq);
	assert_int_equal(ec_cbor_w_finish(&w), 0);
	s->when_task = strdup(task);
	s->when_field = strdup(field);
	s->when_equals = ec_cbor_w_take(&w, &s->when_equals_len);
}

static void test_skip_rules(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	/* a dies. b all_succeeded -> skipped; c all_done -> ready; d any_failed
	 * -> ready; e (on b, all_done) -> ready; g (on b, all_succeeded) -> skipped
	 * transitively; h (on g) -> skipped. */
	tu_sub_init(&sub, SUB_WORKFLOW, "s", 7);
	const char *a[] = { "s:a", NULL }, *b[] = { "s:b", NULL }, *g[] = { "s:g", NULL };
	tu_spec(&sub.tasks[0], "s:a", "s", NULL);
	tu_spec(&sub.tasks[1], "s:b", "s", a);
	tu_spec(&sub.tasks[2], "s:c", "s", a);
	sub.tasks[2].run_if = RUN_IF_ALL_DONE;
	tu_spec(&sub.tasks[3], "s:d", "s", a);
	sub.tasks[3].run_if = RUN_IF_ANY_FAILED;
	tu_spec(&sub.tasks[4], "s:e", "s", b);
	sub.tasks[4].run_if = RUN_IF_ALL_DONE;
	tu_spec(&sub.tasks[5], "s:g", "s", b);
	tu_spec(&sub.tasks[6], "s:h", "s", g);
	submit_ok(f->s, &sub);
	kill_task(f->s, "s:a");
	assert_int_equal(tu_state(f->s, "s:b"), TS_SKIPPED);
	assert_int_equal(tu_state(f->s, "s:c"), TS_READY);
	assert_int_equal(tu_state(f->s, "s:d"), TS_READY);
	assert_int_equal(tu_state(f->s, "s:e"), TS_READY);
	assert_int_equal(tu_state(f->s, "s:g"), TS_SKIPPED);
	assert_int_equal(tu_state(f->s, "s:h"), TS_SKIPPED);

	/* any_failed when every upstream succeeded -> skipped. */
	tu_sub_init(&sub, SUB_WORKFLOW, "ok", 2);
	const char *x[] = { "ok:x", NULL };
	tu_spec(&sub.tasks[0], "ok:x", "ok", NULL);
	tu_spec(&sub.tasks[1], "ok:comp", "ok", x);
	sub.tasks[1].run_if = RUN_IF_ANY_FAILED;
	submit_ok(f->s, &sub);
	finish(f->s, "ok:x", NULL, 0);
	assert_int_equal(tu_state(f->s, "ok:comp"), TS_SKIPPED);
	assert_string_equal(wf_state_of(f->s, "ok", NULL), "succeeded");

	/* when: yes runs on verdict ok, no is skipped. */
	tu_sub_init(&sub, SUB_WORKFLOW, "w", 3);
	const char *in[] = { "w:inspect", NULL };
	tu_spec(&sub.tasks[0], "w:inspect", "w", NULL);
	tu_spec(&sub.tasks[1], "w:yes", "w", in);
	set_when(&sub.tasks[1], "w:inspect", "verdict", "ok");
	tu_spec(&sub.tasks[2], "w:no", "w", in);
	set_when(&sub.tasks[2], "w:inspect", "verdict", "bad");
	submit_ok(f->s, &sub);
	size_t rl;
	uint8_t *res = result_map("verdict", "ok", &rl);
	finish(f->s, "w:inspect", res, rl);
	free(res);
	assert_int_equal(tu_state(f->s, "w:yes"), TS_READY);
	assert_int_equal(tu_state(f->s, "w:no"), TS_SKIPPED);
	assert_int_equal(tu_check(f->s), 0);
}

static int cancel_fn(struct store_txn *t, void *arg)
{
	return store_cancel(t, arg, tu_now_ms());
}
static int cancel_wf_fn(struct store_txn *t, void *arg)
{
	return store_cancel_workflow(t, arg, tu_now_ms());
}
static int retry_fn(struct store_txn *t, void *arg)
{
	return store_retry(t, arg, tu_now_ms());
}
static int retry_wf_fn(struct store_txn *t, void *arg)
{
	return store_retry_workflow(t, arg, tu_now_ms());
}

/* A deadline passes while the task waits on an upstream: dead, as DESIGN
 * 3.1 says (the move was refused, and the deadline lost: the task ran
 * later). Retried while the upstream is still open, it waits for it again
 * rather than run without its input. */
static void test_deadline_while_waiting(void **state)
{
	struct fx *f = *state;
	const char *d[] = { "up", NULL };
	add_task(f->s, "up", NULL);
	add_task(f->s, "dn", d);
	assert_int_equal(tu_state(f->s, "dn"), TS_WAITING);
	assert_int_equal(tu_move(f->s, "dn", TS_DEAD, 0, NULL), 0); /* the deadline timer */
	assert_int_equal(tu_state(f->s, "dn"), TS_DEAD);
	assert_int_equal(tu_check(f->s), 0);
	assert_int_equal(store_write(f->s, retry_fn, "dn"), 0);
	assert_int_equal(tu_state(f->s, "dn"), TS_WAITING);
	assert_int_equal(tu_check(f->s), 0);
	finish(f->s, "up", NULL, 0);
	assert_int_equal(tu_state(f->s, "dn"), TS_READY);
	assert_int_equal(tu_check(f->s), 0);
	/* dead again (now ready), then retried with nothing open: ready */
	assert_int_equal(tu_move(f->s, "dn", TS_DEAD, 0, NULL), 0);
	assert_int_equal(store_write(f->s, retry_fn, "dn"), 0);
	assert_int_equal(tu_state(f->s, "dn"), TS_READY);
	assert_int_equal(tu_check(f->s), 0);
	/* dead again, and its upstream now dead too: a retry finds it
	 * skipped, as the DAG would have (it used to run without it). */
	add_task(f->s, "up2", NULL);
	const char *d2[] = { "up2", NULL };
	add_task(f->s, "dn2", d2);
	assert_int_equal(tu_move(f->s, "dn2", TS_DEAD, 0, NULL), 0);
	kill_task(f->s, "up2");
	assert_int_equal(store_write(f->s, retry_fn, "dn2"), 0);
	assert_int_equal(tu_state(f->s, "dn2"), TS_SKIPPED);
	assert_int_equal(tu_check(f->s), 0);
}

/* retry --workflow reopens every dead step before it looks at any: a
 * downstream step (run_if all_done, so it ran after its upstream died)
 * waits for its retried upstream whether its id sorts before or after
 * it (it used to be ready at once when it sorted first). */
static void test_retry_workflow_any_order(void **state)
{
	struct fx *f = *state;
	const char *names[2][2] = { { "o1:a", "o1:b" }, { "o2:b", "o2:a" } }; /* up, down */
	for (int w = 0; w < 2; w++) {
		const char *wf = w ? "o2" : "o1", *up = names[w][0], *dn = names[w][1];
		const char *deps[] = { up, NULL };
		struct submission sub;
		tu_sub_init(&sub, SUB_WORKFLOW, wf, 2);
		tu_spec(&sub.tasks[0], up, wf, NULL);
		tu_spec(&sub.tasks[1], dn, wf, deps);
		sub.tasks[1].run_if = RUN_IF_ALL_DONE;
		submit_ok(f->s, &sub);
		kill_task(f->s, up);
		assert_int_equal(tu_state(f->s, dn), TS_READY);
		kill_task(f->s, dn);
		assert_int_equal(store_write(f->s, retry_wf_fn, (void *)wf), 0);
		assert_int_equal(tu_state(f->s, up), TS_READY);
		assert_int_equal(tu_state(f->s, dn), TS_WAITING);
		assert_int_equal(tu_check(f->s), 0);
	}
}

/* A cancelled workflow is over: retry refuses it, and its dead steps
 * (workflows.md, Cancel); before, a retry ran them again under a workflow
 * still reported cancelled, and cancelled the rest when they finished. */
static void test_no_retry_after_cancel(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	tu_sub_chain(&sub, "cw", 3, false);
	submit_ok(f->s, &sub);
	assert_int_equal(tu_move(f->s, "cw:s0", TS_DEAD, 0, NULL), 0);
	assert_int_equal(store_write(f->s, cancel_wf_fn, "cw"), 0);
	assert_int_equal(tu_state(f->s, "cw:s1"), TS_CANCELLED);
	assert_int_equal(store_write(f->s, retry_wf_fn, "cw"), EC_ENOT_DEAD);
	assert_int_equal(store_write(f->s, retry_fn, "cw:s0"), EC_ENOT_DEAD);
	assert_int_equal(tu_state(f->s, "cw:s0"), TS_DEAD);
	assert_int_equal(tu_state(f->s, "cw:s1"), TS_CANCELLED);
	assert_int_equal(tu_check(f->s), 0);
}

/* Cancelling a workflow that is over changes nothing, as for a task: it
 * used to turn a succeeded or failed workflow into a cancelled one (no
 * step changed, so no status said so, and a failed one could no longer be
 * retried). */
static void test_cancel_final_workflow(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	tu_sub_chain(&sub, "fw", 2, true);
	submit_ok(f->s, &sub);
	finish(f->s, "fw:s0", NULL, 0);
	finish(f->s, "fw:s1", NULL, 0);
	assert_string_equal(wf_state_of(f->s, "fw", NULL), "succeeded");
	assert_int_equal(store_write(f->s, cancel_wf_fn, "fw"), 0);
	assert_string_equal(wf_state_of(f->s, "fw", NULL), "succeeded");
	tu_sub_chain(&sub, "gw", 2, true);
	submit_ok(f->s, &sub);
	kill_task(f->s, "gw:s0");
	assert_string_equal(wf_state_of(f->s, "gw", NULL), "failed");
	assert_int_equal(store_write(f->s, cancel_wf_fn, "gw"), 0);
	assert_string_equal(wf_state_of(f->s, "gw", NULL), "failed");
	assert_int_equal(store_write(f->s, retry_wf_fn, "gw"), 0);
	assert_int_equal(tu_state(f->s, "gw:s0"), TS_READY);
	assert_int_equal(tu_state(f->s, "gw:s1"), TS_WAITING);
	assert_int_equal(tu_check(f->s), 0);
}


static int dead_cb(const struct task_rec *r, void *arg)
{
	(void)r;
	(*(int *)arg)++;
	return 0;
}
static int dead_fn(struct store_txn *t, void *arg)
{
	return store_dead_scan(t, dead_cb, arg);
}

static void test_cancel_retry(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	int ndead = 0;
	/* a -> b -> c, plus d (all_done on b). */
	tu_sub_chain(&sub, "r", 3, true);
	submit_ok(f->s, &sub);
	assert_int_equal(tu_move(f->s, "r:s0", TS_DISPATCHED, 0, NULL), 0);
	assert_int_equal(tu_move(f->s, "r:s0", TS_DEAD, 0, NULL), 0);
	assert_int_equal(tu_state(f->s, "r:s1"), TS_SKIPPED);
	assert_int_equal(tu_state(f->s, "r:s2"), TS_SKIPPED);
	assert_string_equal(wf_state_of(f->s, "r", NULL), "failed");
	assert_int_equal(store_read(f->s, dead_fn, &ndead), 0);
	assert_int_equal(ndead, 1);
	assert_int_equal(store_write(f->s, retry_fn, "r:s1"), EC_ENOT_DEAD);
	assert_int_equal(store_write(f->s, retry_fn, "zz"), EC_EUNKNOWN_TASK);
	/* Retry: attempts reset, skipped dependents wait again. */
	assert_int_equal(store_write(f->s, retry_fn, "r:s0"), 0);
	assert_int_equal(tu_state(f->s, "r:s0"), TS_READY);
	assert_int_equal(attempt_of(f->s, "r:s0", NULL), 0);
	assert_int_equal(tu_state(f->s, "r:s1"), TS_WAITING);
	assert_int_equal(tu_state(f->s, "r:s2"), TS_WAITING);
	assert_string_equal(wf_state_of(f->s, "r", NULL), "running");
	ndead = 0;
	assert_int_equal(store_read(f->s, dead_fn, &ndead), 0);
	assert_int_equal(ndead, 0);
	assert_int_equal(tu_check(f->s), 0);
	finish(f->s, "r:s0", NULL, 0);
	assert_int_equal(tu_state(f->s, "r:s1"), TS_READY);

	/* Retry under a diamond: b depends on a, z on a and b (b sorts first, so it is re-opened before z is counted). Both skipped;
	 * after the retry z must count a and b once each. */
	tu_sub_init(&sub, SUB_WORKFLOW, "dm", 3);
	const char *da[] = { "dm:a", NULL }, *dab[] = { "dm:a", "dm:b", NULL };
	tu_spec(&sub.tasks[0], "dm:a", "dm", NULL);
	tu_spec(&sub.tasks[1], "dm:b", "dm", da);
	tu_spec(&sub.tasks[2], "dm:z", "dm", dab);
	submit_ok(f->s, &sub);
	kill_task(f->s, "dm:a");
	assert_int_equal(tu_state(f->s, "dm:z"), TS_SKIPPED);
	assert_int_equal(store_write(f->s, retry_fn, "dm:a"), 0);
	assert_int_equal(tu_state(f->s, "dm:b"), TS_WAITING);
	assert_int_equal(tu_state(f->s, "dm:z"), TS_WAITING);
	assert_int_equal(tu_check(f->s), 0);
	finish(f->s, "dm:a", NULL, 0);
	assert_int_equal(tu_state(f->s, "dm:z"), TS_WAITING);
	finish(f->s, "dm:b", NULL, 0);
	assert_int_equal(tu_state(f->s, "dm:z"), TS_READY);

	/* Cancel one task: all_succeeded dependent skipped, all_done runs. */
	tu_sub_init(&sub, SUB_BATCH, NULL, 3);
	const char *x[] = { "cx", NULL };
	tu_spec(&sub.tasks[0], "cx", NULL, NULL);
	tu_spec(&sub.tasks[1], "cy", NULL, x);
	tu_spec(&sub.tasks[2], "cz", NULL, x);
	sub.tasks[2].run_if = RUN_IF_ALL_DONE;
	submit_ok(f->s, &sub);
	assert_int_equal(store_write(f->s, cancel_fn, "cx"), 0);
	assert_int_equal(tu_state(f->s, "cx"), TS_CANCELLED);
	assert_int_equal(tu_state(f->s, "cy"), TS_SKIPPED);
	assert_int_equal(tu_state(f->s, "cz"), TS_READY);
	/* Again, or a task already over: nothing changes, and no error (a
	 * cancel may cross the task's end). */
	assert_int_equal(store_write(f->s, cancel_fn, "cx"), 0);
	assert_int_equal(tu_state(f->s, "cx"), TS_CANCELLED);
	assert_int_equal(store_write(f->s, cancel_fn, "nope"), EC_EUNKNOWN_TASK);

	/* Cancel a workflow: every non-final step cancelled, even an all_done
	 * step whose upstream is cancelled first. */
	tu_sub_init(&sub, SUB_WORKFLOW, "cw", 4);
	const char *p[] = { "cw:a", NULL };
	tu_spec(&sub.tasks[0], "cw:a", "cw", NULL);
	tu_spec(&sub.tasks[1], "cw:b", "cw", p);
	sub.tasks[1].run_if = RUN_IF_ALL_DONE;
	tu_spec(&sub.tasks[2], "cw:c", "cw", p);
	tu_spec(&sub.tasks[3], "cw:done", "cw", NULL);
	submit_ok(f->s, &sub);
	finish(f->s, "cw:done", NULL, 0);
	assert_int_equal(store_write(f->s, cancel_wf_fn, "cw"), 0);
	assert_int_equal(tu_state(f->s, "cw:a"), TS_CANCELLED);
	assert_int_equal(tu_state(f->s, "cw:b"), TS_CANCELLED);
	assert_int_equal(tu_state(f->s, "cw:c"), TS_CANCELLED);
	assert_int_equal(tu_state(f->s, "cw:done"), TS_SUCCEEDED);
	assert_string_equal(wf_state_of(f->s, "cw", NULL), "cancelled");
	assert_int_equal(store_write(f->s, cancel_wf_fn, "none"), EC_EUNKNOWN_WORKFLOW);

	/* Workflow retry: every dead step. */
	tu_sub_chain(&sub, "rw", 2, false);
	submit_ok(f->s, &sub);
	assert_int_equal(store_write(f->s, retry_wf_fn, "rw"), EC_ENOT_DEAD);
	kill_task(f->s, "rw:s0");
	kill_task(f->s, "rw:s1");
	assert_int_equal(store_write(f->s, retry_wf_fn, "rw"), 0);
	assert_int_equal(tu_state(f->s, "rw:s0"), TS_READY);
	assert_int_equal(tu_state(f->s, "rw:s1"), TS_READY);
	assert_int_equal(tu_check(f->s), 0);
}

/* --- timers ---------------------------------------------------------------- */

static int fire_cb(struct store_txn *t, const char *id, enum timer_kind k, void *arg)
{
	(void)t;
	struct fired *f = arg;
	if (f->n < 8) {
		snprintf(f->ids[f->n], sizeof f->ids[0], "%s", id);
		f->kinds[f->n] = k;
	}
	f->n++;
	return 0;
}

static int due_fn(struct store_txn *t, void *arg)
{
	struct due_arg *a = arg;
	return store_timers_due(t, a->now, fire_cb, &a->f);
}

static int next_fn(struct store_txn *t, void *arg)
{
	return store_timer_next(t, arg);
}

static void test_timers(void **state)
{
	struct fx *f = *state;
	int64_t next;
	struct submission sub;
	assert_int_equal(store_read(f->s, next_fn, &next), EC_ENOTFOUND);
	add_task(f->s, "t1", NULL);
	add_task(f->s, "t2", NULL);
	tu_sub_task(&sub, "t3", NULL);
	sub.tasks[0].deadline_ms = 5000;
	submit_ok(f->s, &sub);
	assert_int_equal(store_read(f->s, next_fn, &next), 0);
	assert_int_equal(next, 5000);

	struct tu_tr d = { .id = "t1", .tr = { .to = TS_DISPATCHED, .now_ms = 1, .agent = "a",
					       .timeout_due_ms = 3000 } };
	assert_int_equal(store_write(f->s, tu_tr_fn, &d), 0);
	assert_int_equal(tu_move(f->s, "t2", TS_DISPATCHED, 0, NULL), 0);
	assert_int_equal(tu_move(f->s, "t2", TS_FAILED, 0, NULL), 0);
	struct tu_tr rw = { .id = "t2", .tr = { .to = TS_RETRY_WAIT, .now_ms = 1,
						.retry_due_ms = 1000 } };
	assert_int_equal(store_write(f->s, tu_tr_fn, &rw), 0);
	assert_int_equal(store_read(f->s, next_fn, &next), 0);
	assert_int_equal(next, 1000);
	assert_int_equal(tu_check(f->s), 0);

	/* Leaving the state clears the timer: t1 running keeps its timeout,
	 * succeeding clears it. */
	assert_int_equal(tu_move(f->s, "t1", TS_RUNNING, 0, NULL), 0);
	assert_int_equal(tu_check(f->s), 0);
	struct due_arg a = { .now = 3500 };
	/* Earliest first; only those due; each removed before the callback. */
	assert_int_equal(store_write(f->s, due_fn, &a), 0);
	assert_int_equal(a.f.n, 2);
	assert_string_equal(a.f.ids[0], "t2");
	assert_int_equal(a.f.kinds[0], TIMER_RETRY);
	assert_string_equal(a.f.ids[1], "t1");
	assert_int_equal(a.f.kinds[1], TIMER_TIMEOUT);
	assert_int_equal(store_read(f->s, next_fn, &next), 0);
	assert_int_equal(next, 5000);
	assert_int_equal(tu_check(f->s), 0);

	/* A final state clears the deadline. */
	assert_int_equal(tu_move(f->s, "t3", TS_CANCELLED, 0, NULL), 0);
	assert_int_equal(store_read(f->s, next_fn, &next), EC_ENOTFOUND);

	/* Leaving retry_wait early (cancel) clears the retry timer. */
	assert_int_equal(tu_move(f->s, "t2", TS_READY, 0, NULL), 0);
	assert_int_equal(tu_move(f->s, "t2", TS_DISPATCHED, 0, NULL), 0);
	assert_int_equal(tu_move(f->s, "t2", TS_FAILED, 0, NULL), 0);
	rw.tr.retry_due_ms = 9000;
	assert_int_equal(store_write(f->s, tu_tr_fn, &rw), 0);
	assert_int_equal(store_read(f->s, next_fn, &next), 0);
	assert_int_equal(next, 9000);
	assert_int_equal(tu_move(f->s, "t2", TS_CANCELLED, 0, NULL), 0);
	assert_int_equal(store_read(f->s, next_fn, &next), EC_ENOTFOUND);
	assert_int_equal(tu_check(f->s), 0);
}

/* --- outbox and observer ----------------------------------------------------- */

struct obox {
	uint64_t seqs[16];
	char topics[16][32];
	int n;
};

static int obox_cb(uint64_t seq, const char *topic, const uint8_t *p, size_t len,
		   unsigned flags, void *arg)
{
	struct obox *o = arg;
	(void)p;
	(void)len;
	(void)flags;
	if (o->n == 16)
		return 1;
	o->seqs[o->n] = seq;
	snprintf(o->topics[o->n], sizeof o->topics[0], "%s", topic);
	o->n++;
	return 0;
}

struct oput {
	int n;
	uint64_t last;
};

static int oput_fn(struct store_txn *t, void *arg)
{
	struct oput *a = arg;
	for (int i = 0; i < a->n; i++) {
		char topic[32];
		snprintf(topic, sizeof topic, "t/%d", i);
		int rc = store_outbox_put(t, topic, (const uint8_t *)"xy", 2, OUTBOX_RETAIN, &a->last);
		if (rc)
			return rc;
	}
	return 0;
}

struct oscan {
	uint64_t after;
	struct obox o;
};

static int oscan_fn(struct store_txn *t, void *arg)
{
	struct oscan *a = arg;
	return store_outbox_scan(t, a->after, obox_cb, &a->o);
}

static int odel_fn(struct store_txn *t, void *arg)
{
	return store_outbox_del(t, *(uint64_t *)arg);
}

static int ocount_fn(struct store_txn *t, void *arg)
{
	return store_outbox_count(t, arg);
}

static void test_outbox(void **state)
{
	struct fx *f = *state;
	struct oput p = { .n = 5 };
	assert_int_equal(store_write(f->s, oput_fn, &p), 0);
	uint64_t first_last = p.last;
	struct oscan sc = { 0 };
	assert_int_equal(store_read(f->s, oscan_fn, &sc), 0);
	assert_int_equal(sc.o.n, 5);
	for (int i = 0; i < 5; i++) {
		char want[8];
		snprintf(want, sizeof want, "t/%d", i);
		assert_string_equal(sc.o.topics[i], want);
		if (i)
			assert_true(sc.o.seqs[i] > sc.o.seqs[i - 1]);
	}
	/* Delete the first and the last; the sequence never goes back. */
	assert_int_equal(store_write(f->s, odel_fn, &sc.o.seqs[0]), 0);
	assert_int_equal(store_write(f->s, odel_fn, &sc.o.seqs[4]), 0);
	p.n = 1;
	assert_int_equal(store_write(f->s, oput_fn, &p), 0);
	assert_true(p.last > first_last);
	uint64_t cnt;
	assert_int_equal(store_read(f->s, ocount_fn, &cnt), 0);
	assert_int_equal(cnt, 4);
	struct oscan sc2 = { .after = sc.o.seqs[1] };
	assert_int_equal(store_read(f->s, oscan_fn, &sc2), 0);
	assert_int_equal(sc2.o.n, 3);
	assert_int_equal(sc2.o.seqs[0], sc.o.seqs[2]);
	assert_int_equal(sc2.o.seqs[2], p.last);
}

struct obs {
	int task, wf, result;
	int accepted_then_ready; /* "a": accepted event then ready event */
	int last_a;
	bool fail;
};

static int observer(struct store_txn *t, const struct store_event *ev, void *arg)
{
	struct obs *o = arg;
	if (o->fail)
		return -EIO;
	switch (ev->kind) {
	case STORE_EV_TASK:
		o->task++;
		if (strcmp(ev->task->spec.id, "oa") == 0) {
			if (ev->task->state == TS_ACCEPTED)
				o->last_a = 1;
			else if (ev->task->state == TS_READY && o->last_a == 1 && ev->from == TS_ACCEPTED)
				o->accepted_then_ready++;
		}
		if (ev->task->spec.workflow)
			assert_non_null(ev->workflow);
		break;
	case STORE_EV_WORKFLOW:
		o->wf++;
		break;
	case STORE_EV_RESULT:
		o->result++;
		assert_true(ev->result->ok);
		break;
	}
	return store_outbox_put(t, "ev", (const uint8_t *)"", 0, 0, NULL);
}

static void test_observer(void **state)
{
	struct fx *f = *state;
	struct obs o = { 0 };
	uint64_t cnt;
	store_set_observer(f->s, observer, &o);
	add_task(f->s, "oa", NULL);
	assert_int_equal(o.accepted_then_ready, 1);
	assert_int_equal(o.task, 2);
	struct submission sub;
	tu_sub_chain(&sub, "ow", 2, true);
	submit_ok(f->s, &sub);
	assert_int_equal(o.task, 6);
	assert_int_equal(o.wf, 1); /* one per operation and workflow */
	finish(f->s, "ow:s0", NULL, 0);
	assert_int_equal(o.result, 1);
	assert_int_equal(store_read(f->s, ocount_fn, &cnt), 0);
	assert_int_equal(cnt, (uint64_t)(o.task + o.wf + o.result));
	/* A failing observer aborts the whole write. */
	o.fail = true;
	assert_int_equal(tu_move(f->s, "oa", TS_DISPATCHED, 0, NULL), -EIO);
	o.fail = false;
	assert_int_equal(tu_state(f->s, "oa"), TS_READY);
	store_set_observer(f->s, NULL, NULL);
	assert_int_equal(tu_check(f->s), 0);
}

/* --- read API ---------------------------------------------------------------- */

struct ready_list {
	char ids[8][32];
	int64_t ms[8];
	int n;
};

static int ready_cb(const char *id, int64_t ready_ms, void *arg)
{
	struct ready_list *l = arg;
	if (l->n < 8) {
		snprintf(l->ids[l->n], sizeof l->ids[0], "%s", id);
		l->ms[l->n] = ready_ms;
	}
	l->n++;
	return 0;
}

struct ready_arg {
	int prio;
	struct ready_list l;
};

static int ready_fn(struct store_txn *t, void *arg)
{
	struct ready_arg *a = arg;
	return store_ready_scan(t, a->prio, ready_cb, &a->l);
}

static int count_cb(const struct task_rec *r, void *arg)
{
	(void)r;
	(*(int *)arg)++;
	return 0;
}

static int wf_count_cb(const struct workflow_rec *w, void *arg)
{
	(void)w;
	(*(int *)arg)++;
	return 0;
}

struct reads {
	int steps, wfs;
	struct result_rec res;
	int res_rc;
};

static int reads_fn(struct store_txn *t, void *arg)
{
	struct reads *a = arg;
	int rc = store_workflow_steps(t, "rd", count_cb, &a->steps);
	if (rc == 0)
		rc = store_workflows_scan(t, wf_count_cb, &a->wfs);
	a->res_rc = store_result_get(t, "rd:s0", &a->res);
	return rc;
}

static int long_wf_fn(struct store_txn *t, void *arg)
{
	char wf[301];
	memset(wf, 'w', 300);
	wf[300] = 0;
	return store_workflow_steps(t, wf, count_cb, arg);
}

/* A workflow id longer than any can be has no steps; its prefix key used to
 * be as long as snprintf wanted, read past a 102-byte buffer (ASan). */
static void test_steps_long_id(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	char wf[TASK_ID_MAX + 1];
	memset(wf, 'w', TASK_ID_MAX);
	wf[TASK_ID_MAX] = 0;
	tu_sub_chain(&sub, wf, 2, false);
	submit_ok(f->s, &sub);
	int n = 0;
	assert_int_equal(store_read(f->s, long_wf_fn, &n), 0);
	assert_int_equal(n, 0);
}

struct loop_arg {
	const char *id;
	int n;
};

/* n dispatch/lost cycles in one transaction: 2n history events. */
static int lost_loop_fn(struct store_txn *t, void *arg)
{
	struct loop_arg *a = arg;
	for (int i = 0; i < a->n; i++) {
		struct transition d = { .to = TS_DISPATCHED, .now_ms = i, .agent = "x" };
		struct transition l = { .to = TS_READY, .now_ms = i, .lost = true };
		int rc = store_transition(t, a->id, &d, NULL);
		if (rc || (rc = store_transition(t, a->id, &l, NULL)))
			return rc;
	}
	return 0;
}

/* Failed attempts with long errors: their events fill the record's history
 * budget in bytes before its count. */
static int fail_loop_fn(struct store_txn *t, void *arg)
{
	struct loop_arg *a = arg;
	char err[200];
	memset(err, 'e', sizeof err - 1);
	err[sizeof err - 1] = 0;
	for (int i = 0; i < a->n; i++) {
		uint64_t lease;
		struct transition d = { .to = TS_DISPATCHED, .now_ms = i, .agent = "x" };
		int rc = store_transition(t, a->id, &d, &lease);
		struct transition fl = { .to = TS_FAILED, .now_ms = i, .lease = lease, .error = err };
		struct transition w = { .to = TS_RETRY_WAIT, .now_ms = i };
		struct transition r = { .to = TS_READY, .now_ms = i };
		if (rc || (rc = store_transition(t, a->id, &fl, NULL)) ||
		    (rc = store_transition(t, a->id, &w, NULL)) ||
		    (rc = store_transition(t, a->id, &r, NULL)))
			return rc;
	}
	return 0;
}

static void test_reads(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	/* The ready queue: per priority, in the order tasks became ready. */
	add_task(f->s, "p5a", NULL);
	tu_sub_task(&sub, "p9", NULL);
	sub.tasks[0].priority = 9;
	submit_ok(f->s, &sub);
	add_task(f->s, "p5b", NULL);
	struct ready_arg r5 = { .prio = 5 }, r9 = { .prio = 9 }, r1 = { .prio = 1 };
	assert_int_equal(store_read(f->s, ready_fn, &r5), 0);
	assert_int_equal(store_read(f->s, ready_fn, &r9), 0);
	assert_int_equal(store_read(f->s, ready_fn, &r1), 0);
	assert_int_equal(r5.l.n, 2);
	assert_string_equal(r5.l.ids[0], "p5a");
	assert_string_equal(r5.l.ids[1], "p5b");
	assert_true(r5.l.ms[0] > 0 && r5.l.ms[0] <= r5.l.ms[1]);
	assert_int_equal(r9.l.n, 1);
	assert_string_equal(r9.l.ids[0], "p9");
	assert_int_equal(r1.l.n, 0);
	/* Requeued at the back of its level. */
	assert_int_equal(tu_move(f->s, "p5a", TS_DISPATCHED, 0, NULL), 0);
	struct tu_tr lost = { .id = "p5a", .tr = { .to = TS_READY, .now_ms = tu_now_ms(),
						   .lost = true } };
	assert_int_equal(store_write(f->s, tu_tr_fn, &lost), 0);
	struct ready_arg again = { .prio = 5 };
	assert_int_equal(store_read(f->s, ready_fn, &again), 0);
	assert_int_equal(again.l.n, 2);
	assert_string_equal(again.l.ids[0], "p5b");
	assert_string_equal(again.l.ids[1], "p5a");

	/* Workflow scans and results. */
	tu_sub_chain(&sub, "rd", 3, true);
	submit_ok(f->s, &sub);
	tu_sub_chain(&sub, "rd2", 1, false);
	submit_ok(f->s, &sub);
	add_task(f->s, "rd-plain", NULL); /* shares the prefix, not a step */
	finish(f->s, "rd:s0", (const uint8_t *)"\xf5", 1);
	struct reads a = { 0 };
	assert_int_equal(store_read(f->s, reads_fn, &a), 0);
	assert_int_equal(a.steps, 3);
	assert_int_equal(a.wfs, 2);
	assert_int_equal(a.res_rc, 0);
	assert_true(a.res.ok);
	assert_int_equal(a.res.attempt, 1);
	assert_string_equal(a.res.agent, "ag1");
	assert_int_equal(a.res.result_len, 1);
	assert_int_equal(a.res.result[0], 0xf5);
	result_rec_fini(&a.res);

	/* History is bounded: the oldest events go. */
	add_task(f->s, "hist", NULL);
	struct loop_arg la = { "hist", 40 };
	assert_int_equal(store_write(f->s, lost_loop_fn, &la), 0);
	struct hist h = history(f->s, "hist");
	assert_int_equal(h.n, STORE_HISTORY_MAX);
	assert_int_equal(h.last.to, TS_READY);
	assert_int_equal(h.last.ts_ms, 39);
	/* ... and its bytes are bounded too (HIST_BYTES_MAX in store.c), the
	 * newest event always kept. */
	add_task(f->s, "hist-long", NULL);
	struct loop_arg fa = { "hist-long", 12 };
	assert_int_equal(store_write(f->s, fail_loop_fn, &fa), 0);
	h = history(f->s, "hist-long");
	assert_true(h.n >= 4 && h.n < STORE_HISTORY_MAX);
	assert_int_equal(h.last.to, TS_READY);
	assert_int_equal(h.last.ts_ms, 11);
	assert_int_equal(tu_check(f->s), 0);
}

/* --- persistence, growth, read-only ------------------------------------------- */

/* Agent figures: opaque blobs by agent id, replaced on put, kept across a reopen. */
static int agents_put_fn(struct store_txn *t, void *arg)
{
	(void)arg;
	static const uint8_t a1[] = { 1, 2, 3 }, a2[] = { 9 }, a1b[] = { 4, 5 };
	int rc = store_agent_put(t, "b-agent", a2, sizeof a2);
	if (rc == 0)
		rc = store_agent_put(t, "a-agent", a1, sizeof a1);
	if (rc == 0)
		rc = store_agent_put(t, "a-agent", a1b, sizeof a1b); /* replaces */
	return rc;
}

static int agents_collect(const char *agent, const uint8_t *blob, size_t len, void *arg)
{
	char *out = arg;
	size_t n = strlen(out);
	n += (size_t)snprintf(out + n, 256 - n, "%s:", agent);
	for (size_t i = 0; i < len; i++)
		n += (size_t)snprintf(out + n, 256 - n, "%u", blob[i]);
	snprintf(out + n, 256 - n, ";");
	return 0;
}

static int agents_scan_fn(struct store_txn *t, void *arg)
{
	return store_agents_scan(t, agents_collect, arg);
}

static int agents_bad_fn(struct store_txn *t, void *arg)
{
	(void)arg;
	return store_agent_put(t, "", (const uint8_t *)"x", 1);
}

static void test_agents(void **state)
{
	struct fx *f = *state;
	char seen[256] = "";
	assert_int_equal(store_read(f->s, agents_scan_fn, seen), 0);
	assert_string_equal(seen, "");
	assert_int_equal(store_write(f->s, agents_put_fn, NULL), 0);
	assert_int_equal(store_write(f->s, agents_bad_fn, NULL), -EINVAL);
	store_close(f->s);
	f->s = open_at(f->dir, 1 << 20, 256 << 20, false);
	assert_int_equal(store_read(f->s, agents_scan_fn, seen), 0);
	assert_string_equal(seen, "a-agent:45;b-agent:9;");
}

/* --- retention ------------------------------------------------------------- */

struct prune_arg {
	int64_t cutoff;
	unsigned budget, removed;
	bool wrapped;
};

static int prune_fn(struct store_txn *t, void *arg)
{
	struct prune_arg *a = arg;
	return store_prune(t, a->cutoff, a->budget, &a->removed, &a->wrapped);
}

/* One full pass over the tasks; returns how many were deleted. */
static unsigned prune_all(struct store *s, int64_t cutoff, unsigned budget)
{
	unsigned total = 0;
	for (int calls = 0; calls < 100; calls++) {
		struct prune_arg a = { cutoff, budget, 0, false };
		assert_int_equal(store_write(s, prune_fn, &a), 0);
		total += a.removed;
		if (a.wrapped)
			return total;
	}
	fail_msg("store_prune never wrapped around");
	return total;
}

static void test_prune(void **state)
{
	struct fx *f = *state;
	const char *const on_up[] = { "up", NULL };
	struct submission sub;

	add_task(f->s, "a", NULL);          /* succeeded: goes */
	finish(f->s, "a", (const uint8_t *)"\x01", 1);
	add_task(f->s, "b", NULL);          /* ready: stays */
	add_task(f->s, "d", NULL);          /* dead: goes with its dead letter */
	kill_task(f->s, "d");
	add_task(f->s, "up", NULL);         /* succeeded, but "down" depends on it */
	finish(f->s, "up", NULL, 0);
	add_task(f->s, "down", on_up);
	tu_sub_chain(&sub, "p", 3, true);   /* a finished workflow: goes whole */
	submit_ok(f->s, &sub);
	finish(f->s, "p:s0", NULL, 0);
	finish(f->s, "p:s1", NULL, 0);
	finish(f->s, "p:s2", NULL, 0);
	tu_sub_chain(&sub, "q", 2, true);   /* half done: stays whole */
	submit_ok(f->s, &sub);
	finish(f->s, "q:s0", NULL, 0);
	tu_sub_chain(&sub, "r", 2, true);   /* finished, but "x" depends on r:s1 */
	submit_ok(f->s, &sub);
	finish(f->s, "r:s0", NULL, 0);
	finish(f->s, "r:s1", NULL, 0);
	const char *const on_r[] = { "r:s1", NULL };
	add_task(f->s, "x", on_r);
	assert_int_equal(tu_check(f->s), 0);

	int64_t now = tu_now_ms();
	/* Nothing ended before an hour ago. */
	assert_int_equal(prune_all(f->s, now - 3600 * 1000, 1000), 0);
	/* Everything old enough: a, d, p:s0..2; a budget of 1 still gets round. */
	assert_int_equal(prune_all(f->s, now + 1000, 1), 5);
	assert_int_equal(tu_check(f->s), 0);
	assert_int_equal(tu_state(f->s, "a"), -1);
	assert_int_equal(tu_state(f->s, "d"), -1);
	assert_int_equal(tu_state(f->s, "p:s1"), -1);
	struct workflow_rec w = { .id = "p" };
	assert_int_equal(store_read(f->s, wf_get_fn, &w), EC_ENOTFOUND);
	assert_int_equal(tu_state(f->s, "b"), TS_READY);
	assert_int_equal(tu_state(f->s, "up"), TS_SUCCEEDED);
	assert_int_equal(tu_state(f->s, "q:s0"), TS_SUCCEEDED);
	assert_int_equal(tu_state(f->s, "r:s1"), TS_SUCCEEDED);
	uint64_t c[TS__COUNT];
	assert_int_equal(store_read(f->s, counts_fn, c), 0);
	assert_int_equal(c[TS_DEAD], 0);

	/* Once its dependent is done, "up" goes in the same pass ("down" sorts
	 * first); r goes in the pass after "x" (which sorts after it). */
	finish(f->s, "down", NULL, 0);
	finish(f->s, "x", NULL, 0);
	assert_int_equal(prune_all(f->s, tu_now_ms() + 1000, 1000), 3);
	assert_int_equal(tu_state(f->s, "up"), -1);
	assert_int_equal(tu_state(f->s, "r:s0"), TS_SUCCEEDED);
	assert_int_equal(tu_check(f->s), 0);
	assert_int_equal(prune_all(f->s, tu_now_ms() + 1000, 1000), 2);
	assert_int_equal(tu_state(f->s, "r:s0"), -1);
	assert_int_equal(tu_check(f->s), 0);

	/* A pruned id is free again: a new task, not a duplicate. */
	add_task(f->s, "a", NULL);
	assert_int_equal(tu_state(f->s, "a"), TS_READY);
	assert_int_equal(tu_check(f->s), 0);
}

static void test_reopen(void **state)
{
	struct fx *f = *state;
	struct submission sub;
	tu_sub_chain(&sub, "p", 5, true);
	submit_ok(f->s, &sub);
	finish(f->s, "p:s0", NULL, 0);
	assert_int_equal(tu_move(f->s, "p:s1", TS_DISPATCHED, 0, NULL), 0);
	add_task(f->s, "solo", NULL);
	kill_task(f->s, "solo");
	struct oput p = { .n = 3 };
	assert_int_equal(store_write(f->s, oput_fn, &p), 0);
	store_close(f->s);
	f->s = open_at(f->dir, 1 << 20, 256 << 20, false);
	assert_int_equal(tu_state(f->s, "p:s0"), TS_SUCCEEDED);
	assert_int_equal(tu_state(f->s, "p:s1"), TS_DISPATCHED);
	assert_int_equal(tu_state(f->s, "p:s4"), TS_WAITING);
	assert_int_equal(tu_state(f->s, "solo"), TS_DEAD);
	uint64_t cnt;
	assert_int_equal(store_read(f->s, ocount_fn, &cnt), 0);
	assert_int_equal(cnt, 3);
	assert_int_equal(tu_check(f->s), 0);
	/* Counters survive: the next outbox row continues the sequence. */
	uint64_t before = p.last;
	p.n = 1;
	assert_int_equal(store_write(f->s, oput_fn, &p), 0);
	assert_int_equal(p.last, before + 1);
}

struct many {
	int from, n;
	int rc_last;
	int refused;
};

static int many_fn(struct store_txn *t, void *arg)
{
	struct many *m = arg;
	m->refused = 0;
	for (int i = m->from; i < m->from + m->n; i++) {
		char id[32];
		struct submission sub;
		struct submit_result r;
		struct sub_error e;
		snprintf(id, sizeof id, "m%06d", i);
		tu_sub_task(&sub, id, NULL);
		sub.tasks[0].description = calloc(1, 401);
		memset(sub.tasks[0].description, 'd', 400);
		int rc = store_submit(t, &sub, "src", 0, 1, &r, &e);
		submission_fini(&sub);
		if (rc == EC_ESTORE_FULL) {
			m->refused++;
			continue;
		}
		if (rc)
			return rc;
	}
	return 0;
}

static void test_map_growth(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	struct store *s = open_at(dir, 256 << 10, 64 << 20, false);
	size_t used, map;
	assert_int_equal(store_usage(s, &used, &map), 0);
	assert_int_equal(map, 256 << 10);
	for (int i = 0; i < 4000; i += 400) {
		struct many m = { .from = i, .n = 400 };
		assert_int_equal(store_write(s, many_fn, &m), 0);
		assert_int_equal(m.refused, 0);
	}
	assert_int_equal(store_usage(s, &used, &map), 0);
	assert_true(map > (256 << 10));
	assert_int_equal(tu_state(s, "m003999"), TS_READY);
	assert_int_equal(tu_check(s), 0);
	store_close(s);
	tu_rmrf(dir);
}

static void test_store_full(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	struct store *s = open_at(dir, 256 << 10, 2 << 20, false);
	int refused = 0, i = 0;
	for (; i < 20000 && !refused; i += 50) {
		struct many m = { .from = i, .n = 50 };
		int rc = store_write(s, many_fn, &m);
		assert_true(rc == 0 || rc == EC_ESTORE_FULL);
		refused = rc ? 1 : m.refused;
	}
	assert_true(refused > 0);
	/* Refused ones left nothing; stored work still progresses. */
	size_t used, map;
	assert_int_equal(store_usage(s, &used, &map), 0);
	assert_int_equal(map, 2 << 20);
	int moved = 0;
	for (int j = 0; j < i && moved < 300; j++) {
		char id[32];
		snprintf(id, sizeof id, "m%06d", j);
		if (tu_state(s, id) != TS_READY)
			continue;
		finish(s, id, NULL, 0);
		moved++;
	}
	assert_int_equal(moved, 300);
	struct many m = { .from = 900000, .n = 1 };
	assert_int_equal(store_write(s, many_fn, &m), 0);
	assert_int_equal(m.refused, 1);
	assert_int_equal(tu_check(s), 0);
	store_close(s);
	tu_rmrf(dir);
}

/* The read-only side runs in a separate process (LMDB: never open one
 * environment twice in a process): this binary re-executed. */
static int ro_child(const char *dir, const char *id, const char *want)
{
	struct store *s = open_at(dir, 0, 0, true);
	int st = tu_state(s, id);
	int rc = st >= 0 && strcmp(task_state_name(st), want) == 0 ? 0 : 1;
	if (rc == 0 && tu_check(s) != 0)
		rc = 2;
	/* A write must be refused. */
	if (rc == 0 && tu_move(s, id, TS_CANCELLED, 0, NULL) == 0)
		rc = 3;
	store_close(s);
	return rc;
}

static int run_child(const char *dir, const char *id, const char *want)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl(self_path, self_path, "--ro-child", dir, id, want, (char *)NULL);
		_exit(127);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void test_read_only_beside_writer(void **state)
{
	struct fx *f = *state;
	add_task(f->s, "ro", NULL);
	assert_int_equal(run_child(f->dir, "ro", "ready"), 0);
	assert_int_equal(tu_move(f->s, "ro", TS_DISPATCHED, 0, NULL), 0);
	assert_int_equal(run_child(f->dir, "ro", "dispatched"), 0);
	assert_int_equal(run_child(f->dir, "ro", "ready"), 1);
	/* Many more rows written by the writer: the reader sees them all. */
	struct many m = { .from = 0, .n = 3000 };
	assert_int_equal(store_write(f->s, many_fn, &m), 0);
	assert_int_equal(run_child(f->dir, "m002999", "ready"), 0);
}

static void test_open_errors(void **state)
{
	(void)state;
	/* Read-only on a directory that holds no store: an error, not a crash. */
	char *dir = tu_mkdtemp();
	struct store_opts o = { .dir = dir, .read_only = true };
	struct store *x = NULL;
	assert_true(store_open(&o, &x) < 0);
	assert_null(x);
	tu_rmrf(dir);
}

/* The child of test_stale_reader: dies inside a read transaction, the way
 * `edgecoordctl tasks | head` did, leaving its reader slot behind. */
static int die_reading_fn(struct store_txn *t, void *arg)
{
	(void)t;
	(void)arg;
	raise(SIGKILL);
	return 0;
}

static int die_reading_child(const char *dir)
{
	struct store *s = open_at(dir, 0, 0, true);
	store_read(s, die_reading_fn, NULL);
	return 1;
}

static void die_reading(const char *dir)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl(self_path, self_path, "--die-reading", dir, (char *)NULL);
		_exit(127);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

struct churn {
	unsigned n;
};

static int churn_fn(struct store_txn *t, void *arg)
{
	struct churn *c = arg;
	uint8_t blob[2000];
	memset(blob, (int)(c->n++ & 0xff), sizeof blob);
	return store_agent_put(t, "churn", blob, sizeof blob);
}

/* A stale reader slot pins every page freed after its snapshot. A write
 * that fills the map clears it before growing the map (which used to grow
 * instead, 13-fold under load), and store_reader_check() clears and counts
 * such slots for the daemon's periodic check. */
static void test_stale_reader(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	struct store *s = open_at(dir, 256 << 10, 64 << 20, false);
	struct churn c = { 0 };
	size_t used, map;
	assert_int_equal(store_write(s, churn_fn, &c), 0);
	die_reading(dir);
	for (int i = 0; i < 300; i++)
		assert_int_equal(store_write(s, churn_fn, &c), 0);
	assert_int_equal(store_usage(s, &used, &map), 0);
	assert_int_equal(map, 256 << 10);
	die_reading(dir); /* its open cleared no slot: there was none */
	assert_int_equal(store_reader_check(s), 1);
	assert_int_equal(store_reader_check(s), 0);
	store_close(s);
	tu_rmrf(dir);
}

/* A data file cut short is refused at open, read-only or not, with what it
 * has and what it needs; it used to open, and every read past its end died
 * of SIGBUS inside LMDB. */
static void test_truncated_file(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp(), path[600];
	struct store *s = open_at(dir, 8 << 20, 8 << 20, false);
	struct many m = { .from = 0, .n = 3000 };
	assert_int_equal(store_write(s, many_fn, &m), 0);
	store_close(s);
	snprintf(path, sizeof path, "%s/data.mdb", dir);
	struct stat sb;
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(truncate(path, sb.st_size / 2), 0);
	for (int ro = 0; ro < 2; ro++) {
		struct store_opts o = { .dir = dir, .read_only = ro };
		struct store *x = NULL;
		assert_int_equal(store_open(&o, &x), EC_ETRUNCATED);
		assert_null(x);
	}
	tu_rmrf(dir);
}

int main(int argc, char **argv)
{
	self_path = argv[0];
	if (argc == 5 && strcmp(argv[1], "--ro-child") == 0)
		return ro_child(argv[2], argv[3], argv[4]);
	if (argc == 3 && strcmp(argv[1], "--die-reading") == 0)
		return die_reading_child(argv[2]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_every_transition, setup, teardown),
		cmocka_unit_test_setup_teardown(test_leases_attempts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_submit_idempotency, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_writes_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_dep, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quota, setup, teardown),
		cmocka_unit_test_setup_teardown(test_max_unfinished, setup, teardown),
		cmocka_unit_test_setup_teardown(test_atomic_refusal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_diamond, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wide, setup, teardown),
		cmocka_unit_test_setup_teardown(test_chain_10000, setup, teardown),
		cmocka_unit_test_setup_teardown(test_skip_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_retry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_outbox, setup, teardown),
		cmocka_unit_test_setup_teardown(test_observer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_leases_never_reused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_prune, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agents, setup, teardown),
		cmocka_unit_test(test_map_growth),
		cmocka_unit_test(test_store_full),
		cmocka_unit_test_setup_teardown(test_read_only_beside_writer, setup, teardown),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_truncated_file),
		cmocka_unit_test(test_stale_reader),
		cmocka_unit_test_setup_teardown(test_lazy_meta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sync_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deadline_while_waiting, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retry_workflow_any_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_final_workflow, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_retry_after_cancel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upgrade_state_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upgrade_to_meta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_undecodable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_counters, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_many_sources, setup, teardown),
		cmocka_unit_test_setup_teardown(test_steps_long_id, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmap, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
