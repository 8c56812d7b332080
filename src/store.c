/* SPDX-License-Identifier: MIT */
/*
 * store.c - the LMDB schema of edgecoord and every change to it (store.h).
 * This is the only file that includes lmdb.h: it translates LMDB's errors
 * (MAP_FULL -> grow and rerun, everything else -> EC_ESTORE) and never lets
 * a pointer into the map escape a transaction.
 *
 * It owns the record formats (docs/store.md), the state machine's side
 * effects (indexes, timers, results, dead letters, history, workflow counts,
 * per-source pending counters) and the DAG bookkeeping: each task keeps the
 * number of its upstreams that are not final; when a task becomes final its
 * dependents (rdeps) are decremented and, at zero, judged by dag.c. Both that
 * propagation and its reverse (an operator's retry re-opening skipped
 * dependents) run on an explicit worklist, never by recursion.
 *
 * It does not decide scheduling (sched), backoff (sched) or what an event
 * publishes (the observer writes outbox rows).
 */
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "dag.h"
#include "edgecoord/err.h"
#include "log.h"
#include "store.h"

/* Tables. One DBI each, opened together at store_open; from schema 4 the
 * state index, the timers and the pending counts live in meta's B-tree
 * instead, their keys behind a byte of their own (vpre): a commit then
 * writes one leaf for the four small tables every turn touches, where it
 * wrote six pages (W2), two of them roots left empty as a turn took their
 * last entries out before putting new ones in. Their own tables stay, empty,
 * for older stores read as they are. */
enum {
	DB_META,     /* "schema" -> u32 LE; "ctr" -> counters (struct meta) */
	DB_TASKS,    /* full id -> task record */
	DB_RDEPS,    /* dupsort: upstream id -> dependent id */
	DB_STATE,    /* [u8 state][id] -> "", dispatched and running only */
	DB_READY,    /* [u8 priority][u64 BE seq] -> [i64 BE ready_ms][id] */
	DB_TIMERS,   /* [u64 BE due^sign][u8 kind][id] -> "" */
	DB_RESULTS,  /* id -> result record */
	DB_HISTORY,  /* [id]\0[u32 BE n] -> event */
	DB_DEAD,     /* [u64 BE seq] -> [id]\0[reason] */
	DB_OUTBOX,   /* [u64 BE seq] -> [u8 flags][u16 BE topic len][topic][payload] */
	DB_WORKFLOWS,/* id -> workflow record */
	DB_PENDING,  /* source -> u64 LE count of non-final tasks */
	DB_AGENTS,   /* agent id -> the fleet's figures (opaque here) */
	DB__COUNT
};
static const char *const db_names[DB__COUNT] = {
	"meta", "tasks", "rdeps", "state", "ready", "timers", "results",
	"history", "dead", "outbox", "workflows", "pending", "agents",
};
/* meta's own keys are "schema" and "ctr": no byte of these starts them */
static const uint8_t vpre[DB__COUNT] = { [DB_STATE] = 1, [DB_TIMERS] = 2, [DB_PENDING] = 3 };
#define KEY_MAX 511             /* LMDB's default */

#define REC_VERSION 1
/* A task record of version 2 carries its own history (trec.hist); version 1
 * records, from schema 1, had theirs in the history table only. */
#define TREC_VERSION 2
#define HIST_BYTES_MAX 1024     /* events kept in a record: <= 32 and <= this */
#define FULL_PERCENT 90 /* submissions refused above this use of a maxed map */

/* Counters kept in one meta row, cached for the length of a write
 * transaction and written back once before commit. */
struct meta {
	uint64_t lease;       /* last lease handed out */
	uint64_t seq;         /* ready queue and dead letter order */
	uint64_t outbox_seq;  /* last outbox row */
	uint64_t counts[TS__COUNT];
};
#define META_WORDS (3 + TS__COUNT)

struct store {
	MDB_env *env;
	MDB_dbi dbi[DB__COUNT];
	bool read_only, lazy_meta;
	size_t map_size, max_map_size;
	uint64_t written, durable; /* txn ids: store_written(), store_durable() */
	bool suspect;             /* a flush or commit failed: see committed() */
	uint32_t schema;          /* as stored (older only when read-only) */
	uint64_t max_unfinished;  /* store_opts */
	struct syncer *sy;        /* store_sync_background(), once started */
	void (*sy_notify)(void *arg);
	void *sy_arg;
	uint64_t lease_floor;     /* store_lease_floor() */
	char prune_at[TASK_FULLID_MAX + 2]; /* store_prune() goes on from this key */
	size_t prune_len;
	store_observer_fn obs;
	void *obs_arg;
};

struct store_txn {
	struct store *s;
	MDB_txn *txn;
	bool write;
	bool map_full;            /* sticky: an LMDB call hit MAP_FULL */
	struct meta *m;           /* write txns: the cached counters */
	bool m_loaded;
	size_t base_pages;        /* txn_pages() when first asked (near_full) */
	bool base_set;
	char **dirty_wf;          /* workflows whose counts this operation changed */
	size_t ndirty, capdirty;
};

/* ------------------------------------------------------------------------ */
/* LMDB error translation */

static size_t txn_pages(struct store_txn *t);

static int xl(struct store_txn *t, int rc)
{
	if (rc == 0)
		return 0;
	if (rc == MDB_NOTFOUND)
		return EC_ENOTFOUND;
	if (rc == MDB_MAP_FULL) {
		t->map_full = true;
		return EC_EMAPFULL;
	}
	log_warnx("STORE-ERROR %s", mdb_strerror(rc));
	return EC_ESTORE;
}

static MDB_val mv(const void *p, size_t n)
{
	MDB_val v = { .mv_size = n, .mv_data = (void *)p };
	return v;
}

static bool in_meta(const struct store *s, int db)
{
	return vpre[db] && s->schema >= 4;
}

/* The B-tree and the key of key k of table db: in meta's tree, behind its
 * table's byte (copied into buf) when in_meta(). 0 length for a key too
 * long, which LMDB refuses anyway. */
static MDB_dbi where(const struct store *s, int db, const void *k, size_t kn, uint8_t *buf,
		     MDB_val *key)
{
	if (!in_meta(s, db)) {
		*key = mv(k, kn);
		return s->dbi[db];
	}
	buf[0] = vpre[db];
	if (kn && kn < KEY_MAX)
		memcpy(buf + 1, k, kn);
	*key = mv(buf, kn < KEY_MAX ? kn + 1 : 0);
	return s->dbi[DB_META];
}

static int db_get(struct store_txn *t, int db, const void *k, size_t kn, MDB_val *out)
{
	uint8_t b[KEY_MAX];
	MDB_val key;
	MDB_dbi d = where(t->s, db, k, kn, b, &key);
	return xl(t, mdb_get(t->txn, d, &key, out));
}

static int db_put(struct store_txn *t, int db, const void *k, size_t kn, const void *v,
		  size_t vn, unsigned flags)
{
	uint8_t b[KEY_MAX];
	MDB_val key, val = mv(v, vn);
	MDB_dbi d = where(t->s, db, k, kn, b, &key);
	return xl(t, mdb_put(t->txn, d, &key, &val, flags));
}

/* Deleting what is not there is not an error for any caller here. */
static int db_del(struct store_txn *t, int db, const void *k, size_t kn)
{
	uint8_t b[KEY_MAX];
	MDB_val key;
	MDB_dbi d = where(t->s, db, k, kn, b, &key);
	int rc = mdb_del(t->txn, d, &key, NULL);
	return rc == MDB_NOTFOUND ? 0 : xl(t, rc);
}

/* The first key of table db (its table's byte taken off), or EC_ENOTFOUND;
 * valid until the transaction writes. */
static int db_first(struct store_txn *t, int db, MDB_val *k)
{
	uint8_t b[KEY_MAX];
	MDB_val v;
	MDB_cursor *c;
	MDB_dbi d = where(t->s, db, "", 0, b, k);
	int rc = xl(t, mdb_cursor_open(t->txn, d, &c));
	if (rc < 0)
		return rc;
	rc = xl(t, mdb_cursor_get(c, k, &v, k->mv_size ? MDB_SET_RANGE : MDB_FIRST));
	if (rc == 0 && in_meta(t->s, db)) {
		if (((const uint8_t *)k->mv_data)[0] != vpre[db])
			rc = EC_ENOTFOUND;
		*k = mv((const uint8_t *)k->mv_data + 1, k->mv_size - 1);
	}
	mdb_cursor_close(c);
	return rc;
}

static void be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t rd_be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t rd_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Signed epoch ms as an order-preserving unsigned key. */
static uint64_t ms_key(int64_t ms)
{
	return (uint64_t)ms ^ (1ull << 63);
}

/* ------------------------------------------------------------------------ */
/* Record encoding: varints (LEB128), zigzag for signed, strings and byte
 * strings as varint length (+1 when nullable, 0 = NULL) then bytes. */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	int err;
};

static void w_need(struct wbuf *w, size_t n)
{
	if (w->err || w->len + n <= w->cap)
		return;
	size_t cap = w->cap ? w->cap : 128;
	while (cap < w->len + n)
		cap *= 2;
	uint8_t *p = realloc(w->p, cap);
	if (!p) {
		w->err = -ENOMEM;
		return;
	}
	w->p = p;
	w->cap = cap;
}

static void w_raw(struct wbuf *w, const void *p, size_t n)
{
	w_need(w, n);
	if (w->err || n == 0)
		return;
	memcpy(w->p + w->len, p, n);
	w->len += n;
}

static void w_u8(struct wbuf *w, uint8_t v)
{
	w_raw(w, &v, 1);
}

static void w_var(struct wbuf *w, uint64_t v)
{
	uint8_t b[10];
	size_t n = 0;
	do {
		b[n] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v)
			b[n] |= 0x80;
		n++;
	} while (v);
	w_raw(w, b, n);
}

static void w_zz(struct wbuf *w, int64_t v)
{
	w_var(w, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

static void w_str(struct wbuf *w, const char *s)
{
	size_t n = strlen(s);
	w_var(w, n);
	w_raw(w, s, n);
}

static void w_nstr(struct wbuf *w, const char *s)
{
	if (!s) {
		w_var(w, 0);
		return;
	}
	size_t n = strlen(s);
	w_var(w, n + 1);
	w_raw(w, s, n);
}

static void w_nbytes(struct wbuf *w, const uint8_t *p, size_t n, bool present)
{
	if (!present) {
		w_var(w, 0);
		return;
	}
	w_var(w, n + 1);
	w_raw(w, p, n);
}

struct rbuf {
	const uint8_t *p, *end;
	bool bad;
};

static uint64_t r_var(struct rbuf *r)
{
	uint64_t v = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (r->p >= r->end) {
			r->bad = true;
			return 0;
		}
		uint8_t b = *r->p++;
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return v;
	}
	r->bad = true;
	return 0;
}

static int64_t r_zz(struct rbuf *r)
{
	uint64_t u = r_var(r);
	return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

static uint8_t r_u8(struct rbuf *r)
{
	if (r->p >= r->end) {
		r->bad = true;
		return 0;
	}
	return *r->p++;
}

static const uint8_t *r_take(struct rbuf *r, size_t n)
{
	if (r->bad || (size_t)(r->end - r->p) < n) {
		r->bad = true;
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	return p;
}

/* Into a fixed buffer of cap bytes (NUL-terminated). */
static void r_strbuf(struct rbuf *r, char *dst, size_t cap)
{
	uint64_t n = r_var(r);
	const uint8_t *p = r_take(r, n);
	if (!p || n >= cap) {
		r->bad = true;
		dst[0] = 0;
		return;
	}
	memcpy(dst, p, n);
	dst[n] = 0;
}

/* Nullable string, new. */
static char *r_nstr(struct rbuf *r)
{
	uint64_t n = r_var(r);
	if (n == 0 || r->bad)
		return NULL;
	const uint8_t *p = r_take(r, n - 1);
	if (!p)
		return NULL;
	char *s = malloc(n);
	if (!s) {
		r->bad = true;
		return NULL;
	}
	memcpy(s, p, n - 1);
	s[n - 1] = 0;
	return s;
}

static char *r_str(struct rbuf *r)
{
	uint64_t n = r_var(r);
	const uint8_t *p = r_take(r, n);
	if (!p)
		return NULL;
	char *s = malloc(n + 1);
	if (!s) {
		r->bad = true;
		return NULL;
	}
	memcpy(s, p, n);
	s[n] = 0;
	return s;
}

static uint8_t *r_nbytes(struct rbuf *r, size_t *len)
{
	uint64_t n = r_var(r);
	*len = 0;
	if (n == 0 || r->bad)
		return NULL;
	const uint8_t *p = r_take(r, n - 1);
	if (!p)
		return NULL;
	uint8_t *b = malloc(n - 1 ? n - 1 : 1);
	if (!b) {
		r->bad = true;
		return NULL;
	}
	memcpy(b, p, n - 1);
	*len = n - 1;
	return b;
}

/* The spec, deterministically: field order fixed, every field written, so
 * that equal specs give equal bytes (the duplicate/conflict test). */
static void spec_encode(struct wbuf *w, const struct task_spec *s)
{
	w_str(w, s->id);
	w_str(w, s->type);
	w_nstr(w, s->workflow);
	w_nstr(w, s->description);
	w_nbytes(w, s->payload, s->payload_len, s->payload != NULL);
	w_var(w, s->ndeps);
	for (uint32_t i = 0; i < s->ndeps; i++)
		w_str(w, s->deps[i]);
	w_u8(w, s->priority);
	w_u8(w, s->run_if);
	w_zz(w, s->timeout_ms);
	w_zz(w, s->deadline_ms);
	w_u8(w, s->has_retry);
	if (s->has_retry) {
		w_zz(w, s->retry.max_attempts);
		w_u8(w, s->retry.backoff);
		w_zz(w, s->retry.jitter);
		w_zz(w, s->retry.initial_ms);
		w_zz(w, s->retry.max_ms);
	}
	w_nstr(w, s->agent);
	w_var(w, s->naffinity);
	for (uint32_t i = 0; i < s->naffinity; i++) {
		w_str(w, s->affinity[i].key);
		w_str(w, s->affinity[i].value);
	}
	w_nstr(w, s->when_task);
	if (s->when_task) {
		w_str(w, s->when_field ? s->when_field : "");
		w_nbytes(w, s->when_equals, s->when_equals_len, true);
	}
}

static int spec_decode(struct rbuf *r, struct task_spec *s)
{
	memset(s, 0, sizeof *s);
	r_strbuf(r, s->id, sizeof s->id);
	r_strbuf(r, s->type, sizeof s->type);
	s->workflow = r_nstr(r);
	s->description = r_nstr(r);
	s->payload = r_nbytes(r, &s->payload_len);
	uint64_t nd = r_var(r);
	if (!r->bad && nd > (uint64_t)(r->end - r->p))
		r->bad = true;
	if (!r->bad && nd) {
		s->deps = calloc(nd, sizeof *s->deps);
		if (!s->deps)
			r->bad = true;
		else
			s->ndeps = (uint32_t)nd;
		for (uint32_t i = 0; i < s->ndeps && !r->bad; i++)
			s->deps[i] = r_str(r);
	}
	s->priority = r_u8(r);
	s->run_if = r_u8(r);
	s->timeout_ms = r_zz(r);
	s->deadline_ms = r_zz(r);
	s->has_retry = r_u8(r) != 0;
	if (s->has_retry) {
		s->retry.max_attempts = (int32_t)r_zz(r);
		s->retry.backoff = r_u8(r);
		s->retry.jitter = (int8_t)r_zz(r);
		s->retry.initial_ms = r_zz(r);
		s->retry.max_ms = r_zz(r);
	}
	s->agent = r_nstr(r);
	uint64_t na = r_var(r);
	if (!r->bad && na > (uint64_t)(r->end - r->p))
		r->bad = true;
	if (!r->bad && na) {
		s->affinity = calloc(na, sizeof *s->affinity);
		if (!s->affinity)
			r->bad = true;
		else
			s->naffinity = (uint32_t)na;
		for (uint32_t i = 0; i < s->naffinity && !r->bad; i++) {
			s->affinity[i].key = r_str(r);
			s->affinity[i].value = r_str(r);
		}
	}
	s->when_task = r_nstr(r);
	if (s->when_task) {
		s->when_field = r_str(r);
		s->when_equals = r_nbytes(r, &s->when_equals_len);
	}
	if (r->bad) {
		task_spec_fini(s);
		return EC_ESTORE;
	}
	return 0;
}

/* A task record as stored: the public task_rec plus what the store needs to
 * find the task's rows in the other tables. */
struct trec {
	struct task_rec r;
	uint8_t *spec_raw;       /* the encoded spec, written back verbatim */
	size_t spec_len;
	uint64_t ready_seq;      /* key in DB_READY while ready */
	uint64_t dead_seq;       /* key in DB_DEAD while dead */
	uint32_t hist_next;      /* history table rows 0..hist_next-1 (schema 1 only) */
	int64_t deadline_due;    /* armed deadline timer, 0 = none */
	uint8_t *hist;           /* the last history events, oldest first */
	size_t hist_len;
	uint32_t nhist;
};

static void trec_fini(struct trec *t)
{
	task_rec_fini(&t->r);
	free(t->spec_raw);
	free(t->hist);
	memset(t, 0, sizeof *t);
}

/* [ver][spec len][spec][state][enc][source][attempt][lease][unfinished]
 * [agent][error][created][updated][ready_ms][retry_due][timeout_due]
 * [deadline_due][ready_seq][dead_seq][hist_next][nhist][hist_len][hist] */
static int trec_encode(const struct trec *t, struct wbuf *w)
{
	const struct task_rec *r = &t->r;
	w_u8(w, TREC_VERSION);
	w_var(w, t->spec_len);
	w_raw(w, t->spec_raw, t->spec_len);
	w_u8(w, (uint8_t)r->state);
	w_u8(w, (uint8_t)r->enc);
	w_str(w, r->source);
	w_var(w, r->attempt);
	w_var(w, r->lease);
	w_var(w, r->unfinished);
	w_str(w, r->agent);
	w_nstr(w, r->error);
	w_zz(w, r->created_ms);
	w_zz(w, r->updated_ms);
	w_zz(w, r->ready_ms);
	w_zz(w, r->retry_due_ms);
	w_zz(w, r->timeout_due_ms);
	w_zz(w, t->deadline_due);
	w_var(w, t->ready_seq);
	w_var(w, t->dead_seq);
	w_var(w, t->hist_next);
	w_var(w, t->nhist);
	w_var(w, t->hist_len);
	w_raw(w, t->hist, t->hist_len);
	return w->err;
}

/* The state index holds the tasks at an agent (dispatched, running): what
 * recovery and a reconnecting agent look up. A task elsewhere is found by a
 * scan of the tasks table (edgecoordctl), so that the other transitions, most
 * of a task's, write no index page (schema 3; before, every state was). */
static bool state_indexed(enum task_state st)
{
	return st == TS_DISPATCHED || st == TS_RUNNING;
}

static int trec_decode(const MDB_val *v, struct trec *t)
{
	struct rbuf r = { v->mv_data, (const uint8_t *)v->mv_data + v->mv_size, false };
	memset(t, 0, sizeof *t);
	uint8_t ver = r_u8(&r);
	if (ver != REC_VERSION && ver != TREC_VERSION)
		return EC_ESTORE;
	uint64_t sl = r_var(&r);
	const uint8_t *sp = r_take(&r, sl);
	if (!sp)
		return EC_ESTORE;
	struct rbuf rs = { sp, sp + sl, false };
	if (spec_decode(&rs, &t->r.spec) < 0 || rs.p != rs.end)
		goto bad;
	t->spec_raw = malloc(sl ? sl : 1);
	if (!t->spec_raw)
		goto bad;
	memcpy(t->spec_raw, sp, sl);
	t->spec_len = sl;
	struct task_rec *rec = &t->r;
	rec->state = r_u8(&r);
	rec->enc = r_u8(&r);
	r_strbuf(&r, rec->source, sizeof rec->source);
	rec->attempt = (uint32_t)r_var(&r);
	rec->lease = r_var(&r);
	rec->unfinished = (uint32_t)r_var(&r);
	r_strbuf(&r, rec->agent, sizeof rec->agent);
	rec->error = r_nstr(&r);
	rec->created_ms = r_zz(&r);
	rec->updated_ms = r_zz(&r);
	rec->ready_ms = r_zz(&r);
	rec->retry_due_ms = r_zz(&r);
	rec->timeout_due_ms = r_zz(&r);
	t->deadline_due = r_zz(&r);
	t->ready_seq = r_var(&r);
	t->dead_seq = r_var(&r);
	t->hist_next = (uint32_t)r_var(&r);
	if (ver == TREC_VERSION) {
		t->nhist = (uint32_t)r_var(&r);
		uint64_t hl = r_var(&r);
		const uint8_t *hp = r_take(&r, hl);
		if (!hp || t->nhist > STORE_HISTORY_MAX || hl > HIST_BYTES_MAX)
			goto bad;
		if (hl && !(t->hist = malloc(hl)))
			goto bad;
		memcpy(t->hist, hp, hl);
		t->hist_len = hl;
	}
	if (r.bad || r.p != r.end || (unsigned)rec->state >= TS__COUNT)
		goto bad;
	return 0;
bad:
	trec_fini(t);
	return EC_ESTORE;
}

/* The state of a stored record without decoding its spec. */
static int peek_state(const MDB_val *v, enum task_state *st)
{
	struct rbuf r = { v->mv_data, (const uint8_t *)v->mv_data + v->mv_size, false };
	uint8_t ver = r_u8(&r);
	if (ver != REC_VERSION && ver != TREC_VERSION)
		return EC_ESTORE;
	uint64_t sl = r_var(&r);
	if (!r_take(&r, sl))
		return EC_ESTORE;
	uint8_t s = r_u8(&r);
	if (r.bad || s >= TS__COUNT)
		return EC_ESTORE;
	*st = s;
	return 0;
}

/* The spec bytes of a stored record (borrowed from the map). */
static int peek_spec(const MDB_val *v, const uint8_t **p, size_t *n)
{
	struct rbuf r = { v->mv_data, (const uint8_t *)v->mv_data + v->mv_size, false };
	uint8_t ver = r_u8(&r);
	if (ver != REC_VERSION && ver != TREC_VERSION)
		return EC_ESTORE;
	uint64_t sl = r_var(&r);
	const uint8_t *sp = r_take(&r, sl);
	if (!sp)
		return EC_ESTORE;
	*p = sp;
	*n = sl;
	return 0;
}

static int task_load(struct store_txn *t, const char *id, struct trec *out)
{
	MDB_val v;
	int rc = db_get(t, DB_TASKS, id, strlen(id), &v);
	if (rc < 0)
		return rc;
	return trec_decode(&v, out);
}

static int task_save(struct store_txn *t, const struct trec *tr)
{
	struct wbuf w = { 0 };
	int rc = trec_encode(tr, &w);
	if (rc == 0)
		rc = db_put(t, DB_TASKS, tr->r.spec.id, strlen(tr->r.spec.id), w.p, w.len, 0);
	free(w.p);
	return rc;
}

static int task_state_of(struct store_txn *t, const char *id, enum task_state *st)
{
	MDB_val v;
	int rc = db_get(t, DB_TASKS, id, strlen(id), &v);
	if (rc < 0)
		return rc;
	return peek_state(&v, st);
}

/* Workflow record: [ver][description][enc][source][total][counts x N]
 * [cancelled][created][updated] */
static int wf_encode(const struct workflow_rec *wf, struct wbuf *w)
{
	w_u8(w, REC_VERSION);
	w_nstr(w, wf->description);
	w_u8(w, (uint8_t)wf->enc);
	w_str(w, wf->source);
	w_var(w, wf->total);
	for (int i = 0; i < TS__COUNT; i++)
		w_var(w, wf->counts[i]);
	w_u8(w, wf->cancelled);
	w_zz(w, wf->created_ms);
	w_zz(w, wf->updated_ms);
	return w->err;
}

static int wf_decode(const char *id, const MDB_val *v, struct workflow_rec *wf)
{
	struct rbuf r = { v->mv_data, (const uint8_t *)v->mv_data + v->mv_size, false };
	memset(wf, 0, sizeof *wf);
	if (strlen(id) > TASK_ID_MAX || r_u8(&r) != REC_VERSION)
		return EC_ESTORE;
	strcpy(wf->id, id);
	wf->description = r_nstr(&r);
	wf->enc = r_u8(&r);
	r_strbuf(&r, wf->source, sizeof wf->source);
	wf->total = (uint32_t)r_var(&r);
	for (int i = 0; i < TS__COUNT; i++)
		wf->counts[i] = (uint32_t)r_var(&r);
	wf->cancelled = r_u8(&r) != 0;
	wf->created_ms = r_zz(&r);
	wf->updated_ms = r_zz(&r);
	if (r.bad) {
		workflow_rec_fini(wf);
		return EC_ESTORE;
	}
	return 0;
}

static int wf_load(struct store_txn *t, const char *id, struct workflow_rec *out)
{
	MDB_val v;
	int rc = db_get(t, DB_WORKFLOWS, id, strlen(id), &v);
	if (rc < 0)
		return rc;
	return wf_decode(id, &v, out);
}

static int wf_save(struct store_txn *t, const struct workflow_rec *wf)
{
	struct wbuf w = { 0 };
	int rc = wf_encode(wf, &w);
	if (rc == 0)
		rc = db_put(t, DB_WORKFLOWS, wf->id, strlen(wf->id), w.p, w.len, 0);
	free(w.p);
	return rc;
}

/* Result record: [ver][attempt][agent][ok][result][error][ts] */
static int result_put(struct store_txn *t, const char *id, const struct result_rec *res)
{
	struct wbuf w = { 0 };
	w_u8(&w, REC_VERSION);
	w_var(&w, res->attempt);
	w_str(&w, res->agent);
	w_u8(&w, res->ok);
	w_nbytes(&w, res->result, res->result_len, res->result != NULL);
	w_nstr(&w, res->error);
	w_zz(&w, res->ts_ms);
	int rc = w.err ? w.err : db_put(t, DB_RESULTS, id, strlen(id), w.p, w.len, 0);
	free(w.p);
	return rc;
}

static int result_decode(const MDB_val *v, struct result_rec *res)
{
	struct rbuf r = { v->mv_data, (const uint8_t *)v->mv_data + v->mv_size, false };
	memset(res, 0, sizeof *res);
	if (r_u8(&r) != REC_VERSION)
		return EC_ESTORE;
	res->attempt = (uint32_t)r_var(&r);
	r_strbuf(&r, res->agent, sizeof res->agent);
	res->ok = r_u8(&r) != 0;
	res->result = r_nbytes(&r, &res->result_len);
	res->error = r_nstr(&r);
	res->ts_ms = r_zz(&r);
	if (r.bad) {
		result_rec_fini(res);
		return EC_ESTORE;
	}
	return 0;
}

void task_rec_fini(struct task_rec *r)
{
	if (!r)
		return;
	task_spec_fini(&r->spec);
	free(r->error);
	r->error = NULL;
}

void workflow_rec_fini(struct workflow_rec *w)
{
	if (!w)
		return;
	free(w->description);
	w->description = NULL;
}

void result_rec_fini(struct result_rec *r)
{
	if (!r)
		return;
	free(r->result);
	free(r->error);
	r->result = NULL;
	r->error = NULL;
}

const char *workflow_state(const struct workflow_rec *w)
{
	if (w->cancelled)
		return "cancelled";
	uint32_t fin = w->counts[TS_SUCCEEDED] + w->counts[TS_DEAD] + w->counts[TS_CANCELLED] +
		       w->counts[TS_SKIPPED];
	if (fin < w->total)
		return "running";
	return w->counts[TS_DEAD] + w->counts[TS_CANCELLED] ? "failed" : "succeeded";
}

/* ------------------------------------------------------------------------ */
/* Counters */

static void meta_decode(const MDB_val *v, struct meta *m)
{
	memset(m, 0, sizeof *m);
	uint64_t w[META_WORDS] = { 0 };
	size_t n = v->mv_size / 8;
	if (n > META_WORDS)
		n = META_WORDS;
	for (size_t i = 0; i < n; i++)
		w[i] = rd_le64((const uint8_t *)v->mv_data + 8 * i);
	m->lease = w[0];
	m->seq = w[1];
	m->outbox_seq = w[2];
	for (int i = 0; i < TS__COUNT; i++)
		m->counts[i] = w[3 + i];
}

static int meta_read(struct store_txn *t, struct meta *m)
{
	MDB_val v;
	int rc = db_get(t, DB_META, "ctr", 3, &v);
	if (rc == EC_ENOTFOUND) {
		memset(m, 0, sizeof *m);
		return 0;
	}
	if (rc < 0)
		return rc;
	meta_decode(&v, m);
	return 0;
}

/* The counters of a write transaction, loaded once. */
static int meta_get(struct store_txn *t, struct meta **out)
{
	if (!t->m_loaded) {
		int rc = meta_read(t, t->m);
		if (rc < 0)
			return rc;
		t->m_loaded = true;
	}
	*out = t->m;
	return 0;
}

static int meta_flush(struct store_txn *t)
{
	if (!t->m_loaded)
		return 0;
	uint8_t buf[8 * META_WORDS];
	le64(buf, t->m->lease);
	le64(buf + 8, t->m->seq);
	le64(buf + 16, t->m->outbox_seq);
	for (int i = 0; i < TS__COUNT; i++)
		le64(buf + 24 + 8 * i, t->m->counts[i]);
	return db_put(t, DB_META, "ctr", 3, buf, sizeof buf, 0);
}

static int pending_add(struct store_txn *t, const char *source, int64_t delta)
{
	MDB_val v;
	uint64_t n = 0;
	size_t sl = strlen(source);
	int rc = db_get(t, DB_PENDING, source, sl, &v);
	if (rc == 0 && v.mv_size == 8)
		n = rd_le64(v.mv_data);
	else if (rc < 0 && rc != EC_ENOTFOUND)
		return rc;
	if (delta < 0 && n < (uint64_t)-delta)
		n = 0; /* never wraps; store_check reports a mismatch */
	else
		n += (uint64_t)delta;
	uint8_t b[8];
	le64(b, n);
	return db_put(t, DB_PENDING, source, sl, b, 8, 0);
}

/* ------------------------------------------------------------------------ */
/* Opening, transactions */

static int open_dbis(struct store *s, MDB_txn *txn, bool create)
{
	for (int i = 0; i < DB__COUNT; i++) {
		unsigned fl = create ? MDB_CREATE : 0;
		if (i == DB_RDEPS)
			fl |= MDB_DUPSORT;
		int rc = mdb_dbi_open(txn, db_names[i], fl, &s->dbi[i]);
		if (rc) {
			log_warnx("STORE-OPEN table %s: %s", db_names[i], mdb_strerror(rc));
			return rc == MDB_NOTFOUND ? -ENOENT : EC_ESTORE;
		}
	}
	return 0;
}

/* Schema 2 -> 3: the state index keeps only the tasks at an agent. Rebuilt
 * from the task records, in the open transaction. */
static int rebuild_state_index(struct store *s, MDB_txn *txn, size_t *kept)
{
	MDB_cursor *c;
	MDB_val k, v;
	uint8_t key[9 + TASK_FULLID_MAX];
	int rc = mdb_drop(txn, s->dbi[DB_STATE], 0);
	if (rc == 0)
		rc = mdb_cursor_open(txn, s->dbi[DB_TASKS], &c);
	if (rc)
		return EC_ESTORE;
	*kept = 0;
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		enum task_state st;
		if (peek_state(&v, &st) < 0 || k.mv_size > TASK_FULLID_MAX) {
			rc = EC_ESTORE;
			break;
		}
		if (!state_indexed(st))
			continue;
		key[0] = (uint8_t)st;
		memcpy(key + 1, k.mv_data, k.mv_size);
		MDB_val sk = mv(key, k.mv_size + 1), sv = mv("", 0);
		if ((rc = mdb_put(txn, s->dbi[DB_STATE], &sk, &sv, 0)) != 0)
			break;
		(*kept)++;
	}
	mdb_cursor_close(c);
	return rc == MDB_NOTFOUND ? 0 : EC_ESTORE;
}

/* Schema 3 -> 4: the rows of table db move into meta's tree, behind the
 * table's byte; its own table stays, empty. */
static int move_into_meta(struct store *s, MDB_txn *txn, int db, size_t *moved)
{
	MDB_cursor *c;
	MDB_val k, v;
	uint8_t key[KEY_MAX];
	int rc = mdb_cursor_open(txn, s->dbi[db], &c);
	if (rc)
		return EC_ESTORE;
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (k.mv_size + 1 > KEY_MAX) {
			rc = EC_ESTORE;
			break;
		}
		key[0] = vpre[db];
		memcpy(key + 1, k.mv_data, k.mv_size);
		MDB_val mk = mv(key, k.mv_size + 1);
		if ((rc = mdb_put(txn, s->dbi[DB_META], &mk, &v, 0)) != 0)
			break;
		(*moved)++;
	}
	mdb_cursor_close(c);
	if (rc != MDB_NOTFOUND)
		return EC_ESTORE;
	return mdb_drop(txn, s->dbi[db], 0) ? EC_ESTORE : 0;
}

/* Older schemas are read as they are (read-only) or upgraded in the open
 * transaction:
 * - 1 kept every history event in the history table; from 2 on a task
 *   record carries its own. Nothing is rewritten: a schema-1 record keeps
 *   its rows until the task is pruned, and its new events go into the record.
 * - up to 2 the state index held every task; from 3 only those at an agent.
 *   A reader finds the other states by a scan either way.
 * - up to 3 the state index, the timers and the pending counts had tables of
 *   their own; from 4 they live in meta's tree (in_meta). */
static int check_schema(struct store *s, MDB_txn *txn, bool create)
{
	MDB_val k = mv("schema", 6), v;
	uint8_t b[4] = { STORE_SCHEMA_VERSION, 0, 0, 0 };
	MDB_val nv = mv(b, 4);
	int rc = mdb_get(txn, s->dbi[DB_META], &k, &v);
	s->schema = STORE_SCHEMA_VERSION;
	if (rc == MDB_NOTFOUND && create)
		return mdb_put(txn, s->dbi[DB_META], &k, &nv, 0) ? EC_ESTORE : 0;
	if (rc || v.mv_size != 4)
		return EC_ESTORE;
	const uint8_t *p = v.mv_data;
	uint32_t ver = p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
	if (ver < 1 || ver > STORE_SCHEMA_VERSION) {
		log_warnx("STORE-SCHEMA version %u, this build knows %u", ver,
			  STORE_SCHEMA_VERSION);
		return EC_ESTORE;
	}
	if (ver == STORE_SCHEMA_VERSION)
		return 0;
	if (!create) {
		s->schema = ver;
		return 0;
	}
	size_t kept = 0, moved = 0;
	if (ver < 3 && rebuild_state_index(s, txn, &kept) < 0)
		return EC_ESTORE;
	if (ver < 3)
		log_info("STORE-SCHEMA state index: %zu task(s) at agents", kept);
	if (move_into_meta(s, txn, DB_STATE, &moved) < 0 ||
	    move_into_meta(s, txn, DB_TIMERS, &moved) < 0 ||
	    move_into_meta(s, txn, DB_PENDING, &moved) < 0)
		return EC_ESTORE;
	log_info("STORE-SCHEMA upgraded from %u to %u (%zu row(s) of state, timers and pending "
		 "moved into meta)", ver, STORE_SCHEMA_VERSION, moved);
	return mdb_put(txn, s->dbi[DB_META], &k, &nv, 0) ? EC_ESTORE : 0;
}

/* Leases the last run may have sent before their dispatch committed are
 * never handed out again (fleet.c, send_work_early). */
static int skip_leases(struct store_txn *t)
{
	struct meta *m;
	int rc = meta_get(t, &m);
	if (rc == 0)
		m->lease += STORE_LEASE_GAP;
	return rc;
}

int store_reader_check(struct store *s)
{
	int dead = 0;
	if (mdb_reader_check(s->env, &dead) != 0)
		return EC_ESTORE;
	if (dead)
		log_info("STORE-READERS cleared %d stale reader slot(s)", dead);
	return dead;
}

void store_lease_floor(struct store *s, uint64_t lease)
{
	if (lease > s->lease_floor)
		s->lease_floor = lease;
}

/*
 * A data file shorter than the pages its last meta page uses (a copy cut
 * short, a full disk while restoring) is mapped all the same, and the first
 * read past its end kills the process with SIGBUS inside LMDB. The meta
 * pages are read with read(), not through the map, so this is known before
 * any page is touched.
 */
static int check_file_size(struct store *s, const char *dir)
{
	MDB_envinfo info;
	MDB_stat st;
	struct stat sb;
	int fd;
	if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st) ||
	    mdb_env_get_fd(s->env, &fd) || fstat(fd, &sb) < 0)
		return EC_ESTORE;
	uint64_t need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
	if ((uint64_t)sb.st_size >= need)
		return 0;
	log_warnx("STORE-OPEN %s: data file truncated: %lld bytes, the store needs %llu", dir,
		  (long long)sb.st_size, (unsigned long long)need);
	return EC_ETRUNCATED;
}

int store_open(const struct store_opts *o, struct store **out)
{
	struct store *s = calloc(1, sizeof *s);
	MDB_txn *txn = NULL;
	int rc;
	if (!s)
		return -ENOMEM;
	s->read_only = o->read_only;
	s->map_size = o->map_size ? o->map_size : (size_t)64 << 20;
	s->max_map_size = o->max_map_size > s->map_size ? o->max_map_size : s->map_size;
	if (!o->read_only && mkdir(o->dir, 0700) < 0 && errno != EEXIST) {
		rc = -errno;
		goto fail;
	}
	if ((rc = mdb_env_create(&s->env)) != 0) {
		rc = EC_ESTORE;
		goto fail;
	}
	mdb_env_set_maxdbs(s->env, DB__COUNT);
	mdb_env_set_mapsize(s->env, s->map_size);
	/* Never NOSYNC: an acknowledged task must survive power loss. With
	 * NOMETASYNC (lazy_meta) the caller holds what a commit lets out until
	 * the next sync (store.h). NOTLS: read txns are not tied to a thread
	 * slot, so a read may run while another is open. */
	s->lazy_meta = o->lazy_meta && !o->read_only;
	s->max_unfinished = o->max_unfinished;
	rc = mdb_env_open(s->env, o->dir,
			  MDB_NOTLS | (o->read_only ? MDB_RDONLY : 0) |
			  (s->lazy_meta ? MDB_NOMETASYNC : 0), 0600);
	if (rc) {
		log_warnx("STORE-OPEN %s: %s", o->dir, mdb_strerror(rc));
		rc = rc > 0 ? -rc : EC_ESTORE;
		goto fail;
	}
	if ((rc = check_file_size(s, o->dir)) < 0)
		goto fail;
	store_reader_check(s);
	MDB_envinfo info;
	mdb_env_info(s->env, &info);
	s->map_size = info.me_mapsize;
	if (s->max_map_size < s->map_size)
		s->max_map_size = s->map_size;
	if ((rc = mdb_txn_begin(s->env, NULL, o->read_only ? MDB_RDONLY : 0, &txn)) != 0) {
		rc = EC_ESTORE;
		goto fail;
	}
	if ((rc = open_dbis(s, txn, !o->read_only)) < 0)
		goto fail;
	if ((rc = check_schema(s, txn, !o->read_only)) < 0)
		goto fail;
	if (!o->read_only) { /* in the same commit */
		struct meta m;
		struct store_txn t = { .s = s, .txn = txn, .write = true, .m = &m };
		if ((rc = skip_leases(&t)) < 0 || (rc = meta_flush(&t)) < 0)
			goto fail;
	}
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc == 0 && s->lazy_meta)
		rc = mdb_env_sync(s->env, 1); /* what we open with is durable */
	if (rc) {
		rc = EC_ESTORE;
		goto fail;
	}
	mdb_env_info(s->env, &info);
	s->written = s->durable = info.me_last_txnid;
	*out = s;
	return 0;
fail:
	if (txn)
		mdb_txn_abort(txn);
	if (s->env)
		mdb_env_close(s->env);
	free(s);
	return rc;
}

static void syncer_stop(struct store *s);

void store_close(struct store *s)
{
	if (!s)
		return;
	syncer_stop(s);
	store_sync(s);
	mdb_env_close(s->env);
	free(s);
}

void store_set_observer(struct store *s, store_observer_fn fn, void *arg)
{
	s->obs = fn;
	s->obs_arg = arg;
}

/* LMDB does not say where its map is (me_mapaddr is set for MDB_FIXEDMAP
 * only), but what a read transaction returns points into it: the mapping
 * that holds the schema row is the map. (Not matched by the data file's
 * device and inode: on overlayfs or a btrfs subvolume those in
 * /proc/self/maps are not the ones fstat() gives.) */
static int map_addr_fn(struct store_txn *t, void *arg)
{
	MDB_val k = mv("schema", 6), v;
	if (mdb_get(t->txn, t->s->dbi[DB_META], &k, &v) != 0)
		return EC_ESTORE;
	*(uintptr_t *)arg = (uintptr_t)v.mv_data;
	return 0;
}

void store_unmap(struct store *s)
{
	uintptr_t at = 0;
	char line[512];
	FILE *f;
	if (store_read(s, map_addr_fn, &at) != 0 || !(f = fopen("/proc/self/maps", "re")))
		return;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && lo <= at && at < hi) {
			madvise((void *)lo, hi - lo, MADV_DONTNEED);
			break;
		}
	}
	fclose(f);
}

int store_usage(struct store *s, size_t *used, size_t *map_size)
{
	MDB_envinfo info;
	MDB_stat st;
	if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st))
		return EC_ESTORE;
	*used = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
	*map_size = info.me_mapsize;
	return 0;
}

static void txn_clear_dirty(struct store_txn *t)
{
	for (size_t i = 0; i < t->ndirty; i++)
		free(t->dirty_wf[i]);
	t->ndirty = 0;
}

static void txn_fini(struct store_txn *t)
{
	txn_clear_dirty(t);
	free(t->dirty_wf);
}

uint64_t store_written(const struct store *s)
{
	return s->written;
}

/*
 * The background flush (lazy_meta): one thread that makes what was written
 * durable when asked, so that the loop does not wait for a flush when it has
 * nothing else to do: the next input may come while the device works, and
 * the commit it causes makes its own flush on the loop anyway. Only
 * mdb_env_sync() runs on the thread (an fdatasync of the data file); the
 * loop learns of it from store_durable() after the notify callback.
 */
struct syncer {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t want, tried;           /* under mu: asked up to; last flush started for */
	bool quit;
	_Atomic uint64_t done;          /* durable up to this, by the thread's flushes */
	_Atomic bool busy;              /* a flush is under way */
	_Atomic bool failed;            /* a flush failed (sticky) */
};

static void *syncer_main(void *arg)
{
	struct store *s = arg;
	struct syncer *y = s->sy;
	pthread_mutex_lock(&y->mu);
	for (;;) {
		while (!y->quit && y->want <= y->tried)
			pthread_cond_wait(&y->cv, &y->mu);
		if (y->quit)
			break;
		uint64_t target = y->tried = y->want; /* its meta page was written before */
		pthread_mutex_unlock(&y->mu);
		atomic_store(&y->busy, true);
		int rc = mdb_env_sync(s->env, 1);
		if (rc == 0) {
			atomic_store(&y->done, target);
		} else {
			atomic_store(&y->failed, true);
			log_warnx("STORE-SYNC %s", mdb_strerror(rc));
		}
		atomic_store(&y->busy, false);
		if (s->sy_notify) /* not changed while the thread runs */
			s->sy_notify(s->sy_arg);
		pthread_mutex_lock(&y->mu);
	}
	pthread_mutex_unlock(&y->mu);
	return NULL;
}

static int syncer_start(struct store *s)
{
	struct syncer *y = calloc(1, sizeof *y);
	pthread_attr_t at;
	sigset_t all, old;
	if (!y)
		return -ENOMEM;
	pthread_mutex_init(&y->mu, NULL);
	pthread_cond_init(&y->cv, NULL);
	s->sy = y;
	/* No signal for it (the loop takes them from a signalfd), and a small
	 * stack: it only calls mdb_env_sync (what is touched of it is resident;
	 * room for an interposer such as a sanitizer). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 256 << 10);
	int rc = pthread_create(&y->th, &at, syncer_main, s);
	pthread_attr_destroy(&at);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		s->sy = NULL;
		free(y);
		return -rc;
	}
	return 0;
}

static void syncer_stop(struct store *s)
{
	struct syncer *y = s->sy;
	if (!y)
		return;
	pthread_mutex_lock(&y->mu);
	y->quit = true;
	pthread_cond_signal(&y->cv);
	pthread_mutex_unlock(&y->mu);
	pthread_join(y->th, NULL);
	if (atomic_load(&y->failed))
		s->suspect = true;
	else if (!s->suspect && atomic_load(&y->done) > s->durable)
		s->durable = atomic_load(&y->done); /* a flush it finished */
	pthread_mutex_destroy(&y->mu);
	pthread_cond_destroy(&y->cv);
	free(y);
	s->sy = NULL;
}

void store_set_sync_notify(struct store *s, void (*fn)(void *arg), void *arg)
{
	syncer_stop(s); /* it called the old fn; the next request starts it anew */
	s->sy_notify = fn;
	s->sy_arg = arg;
}

/*
 * A failed flush breaks the rule that lets the store count a commit durable
 * without flushing its meta page itself: "the next flush takes it along".
 * Linux reports a writeback error once, to one fdatasync, and marks the page
 * clean: a meta page that failed to reach the device stays in the page cache
 * as if written, and a later flush succeeds without writing it. So after a
 * failure (suspect) nothing written before it counts until a commit made
 * after it has had its own meta page flushed (flush_own_meta, on the loop,
 * with the syncer stopped so that no other flush can take the error): the
 * next commit's, or one store_sync() makes for it (touch_fn).
 * PostgreSQL's answer to the same kernel behaviour is to stop; LMDB can go
 * on, because every meta page describes the whole tree and each commit's
 * data pages had their own, successful, flush.
 */
static int touch_fn(struct store_txn *t, void *arg)
{
	(void)arg;
	struct meta *m;
	return meta_get(t, &m); /* rewritten by meta_flush: a commit */
}

int store_sync_background(struct store *s)
{
	int rc;
	if (store_durable(s) == s->written) /* also folds a failed flush into suspect */
		return 0;
	if (s->suspect)
		return store_sync(s);
	if (!s->sy && (rc = syncer_start(s)) < 0)
		return rc;
	pthread_mutex_lock(&s->sy->mu);
	if (s->sy->want < s->written) {
		s->sy->want = s->written;
		pthread_cond_signal(&s->sy->cv);
	}
	pthread_mutex_unlock(&s->sy->mu);
	return 0;
}

uint64_t store_durable(struct store *s)
{
	if (s->sy && !s->suspect) {
		if (atomic_load(&s->sy->failed))
			s->suspect = true; /* done may cover a page the error lost */
		else if (atomic_load(&s->sy->done) > s->durable)
			s->durable = atomic_load(&s->sy->done);
	}
	return s->durable;
}

/* With the syncer stopped (no other flush to take an error), flush the meta
 * page of the last commit, made after the failure: what it describes is
 * then on the device, whatever was lost before. */
static void flush_own_meta(struct store *s)
{
	syncer_stop(s);
	int rc = mdb_env_sync(s->env, 1);
	if (rc) {
		log_warnx("STORE-SYNC %s (still holding what waits for it)", mdb_strerror(rc));
		s->suspect = true;
		return;
	}
	s->durable = s->written;
	if (s->suspect)
		log_info("STORE-SYNC recovered: flushes succeed again");
	s->suspect = false;
}

int store_sync(struct store *s)
{
	if (store_durable(s) == s->written)
		return 0;
	syncer_stop(s); /* no flush of its beside ours; its failure, if any, is now ours */
	if (s->suspect) {
		/* a commit after the failure; committed() flushes its meta page */
		int rc = store_write(s, touch_fn, NULL);
		return rc < 0 ? rc : s->suspect ? EC_ESTORE : 0;
	}
	flush_own_meta(s);
	return s->durable == s->written ? 0 : EC_ESTORE;
}

/* After a successful commit. LMDB skips a transaction that changed nothing
 * (no new id, no sync). Otherwise its data sync also flushed the meta page
 * the commit before left unsynced, so that commit is durable now, unless a
 * flush has failed (see above) or the syncer's flush ran beside ours and may
 * have taken an error meant for us. (busy is read before failed: the syncer
 * sets failed before it clears busy.) */
static void committed(struct store *s)
{
	MDB_envinfo info;
	if (mdb_env_info(s->env, &info) != 0 || info.me_last_txnid == s->written)
		return;
	uint64_t prev = s->written;
	s->written = info.me_last_txnid;
	if (!s->lazy_meta) {
		s->durable = s->written;
		return;
	}
	if (s->sy && !s->suspect) {
		bool busy = atomic_load(&s->sy->busy);
		if (atomic_load(&s->sy->failed))
			s->suspect = true;
		else if (busy)
			return; /* prev waits for the syncer or the next commit */
	}
	if (s->suspect)
		flush_own_meta(s);
	else
		s->durable = prev;
}

int store_write(struct store *s, store_txn_fn fn, void *arg)
{
	if (s->read_only)
		return -EROFS;
	for (;;) {
		struct meta m;
		struct store_txn t = { .s = s, .write = true, .m = &m };
		int rc = mdb_txn_begin(s->env, NULL, 0, &t.txn);
		if (rc)
			return xl(&t, rc);
		if (s->map_size >= s->max_map_size) {
			t.base_pages = txn_pages(&t);
			t.base_set = true;
		}
		rc = fn(&t, arg);
		if (rc == 0 && !t.map_full)
			rc = meta_flush(&t);
		if (rc == 0 && !t.map_full) {
			/* One commit for everything fn did: mdb_txn_commit writes the
			 * pages, syncs them, then writes the meta page and (unless
			 * lazy_meta) syncs it. */
			int mrc = mdb_txn_commit(t.txn);
			txn_fini(&t);
			if (mrc == 0) {
				committed(s);
				return 0;
			}
			if (mrc != MDB_MAP_FULL)
				s->suspect = true; /* its flush may have taken another's error */
			rc = xl(&t, mrc);
			if (!t.map_full)
				return rc;
		} else {
			mdb_txn_abort(t.txn);
			txn_fini(&t);
		}
		if (!t.map_full)
			return rc;
		/* MAP_FULL anywhere, even if fn swallowed it: grow and rerun. No
		 * transaction of this process is open here, as set_mapsize needs.
		 * A reader that died in a transaction pins every page freed since
		 * its snapshot: free them first, and the map may not need to. */
		if (store_reader_check(s) > 0)
			continue;
		if (s->map_size >= s->max_map_size)
			return EC_ESTORE_FULL;
		size_t grow = s->map_size * 2;
		if (grow > s->max_map_size || grow < s->map_size)
			grow = s->max_map_size;
		/* The syncer's mdb_env_sync must not run while the map moves
		 * (LMDB 0.9.24's reads no map field, later versions' do). */
		syncer_stop(s);
		if (mdb_env_set_mapsize(s->env, grow) != 0)
			return EC_ESTORE;
		log_info("STORE-GROW map %zu -> %zu bytes", s->map_size, grow);
		s->map_size = grow;
	}
}

int store_read(struct store *s, store_txn_fn fn, void *arg)
{
	struct store_txn t = { .s = s, .write = false };
	int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t.txn);
	if (rc == MDB_MAP_RESIZED) {
		/* The writer grew the map: adopt its size (LIBNOTES 5). */
		mdb_env_set_mapsize(s->env, 0);
		rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t.txn);
	}
	if (rc)
		return xl(&t, rc);
	rc = fn(&t, arg);
	mdb_txn_abort(t.txn);
	return rc;
}

int store_nested(struct store_txn *t, store_txn_fn fn, void *arg)
{
	if (!t->write)
		return -EROFS;
	struct meta m;
	if (t->m_loaded)
		m = *t->m;
	struct store_txn c = { .s = t->s, .write = true, .m = &m, .m_loaded = t->m_loaded,
			       .base_pages = t->base_pages, .base_set = t->base_set };
	int rc = mdb_txn_begin(t->s->env, t->txn, 0, &c.txn);
	if (rc)
		return xl(t, rc);
	rc = fn(&c, arg);
	if (rc == 0 && !c.map_full) {
		rc = xl(&c, mdb_txn_commit(c.txn));
		if (rc == 0) {
			*t->m = m;
			t->m_loaded = c.m_loaded;
		}
	} else {
		mdb_txn_abort(c.txn);
	}
	txn_fini(&c);
	if (c.map_full) {
		/* Growable: make the whole write rerun on a bigger map. At the
		 * maximum: refuse only this part; the parent is intact. */
		if (t->s->map_size < t->s->max_map_size)
			t->map_full = true;
		return EC_ESTORE_FULL;
	}
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Indexes */

static size_t state_key(uint8_t *k, enum task_state st, const char *id)
{
	size_t n = strlen(id);
	k[0] = (uint8_t)st;
	memcpy(k + 1, id, n);
	return n + 1;
}

static size_t timer_key(uint8_t *k, int64_t due, enum timer_kind kind, const char *id)
{
	size_t n = strlen(id);
	be64(k, ms_key(due));
	k[8] = (uint8_t)kind;
	memcpy(k + 9, id, n);
	return n + 9;
}

static int timer_set(struct store_txn *t, int64_t due, enum timer_kind kind, const char *id)
{
	uint8_t k[9 + TASK_FULLID_MAX];
	return db_put(t, DB_TIMERS, k, timer_key(k, due, kind, id), "", 0, 0);
}

static int timer_del(struct store_txn *t, int64_t due, enum timer_kind kind, const char *id)
{
	uint8_t k[9 + TASK_FULLID_MAX];
	return db_del(t, DB_TIMERS, k, timer_key(k, due, kind, id));
}

static int ready_priority(const struct task_spec *s)
{
	return s->priority >= 1 && s->priority <= 10 ? s->priority : 5;
}

static size_t ready_key(uint8_t *k, int prio, uint64_t seq)
{
	k[0] = (uint8_t)prio;
	be64(k + 1, seq);
	return 9;
}

static size_t hist_key(uint8_t *k, const char *id, uint32_t n)
{
	size_t l = strlen(id);
	memcpy(k, id, l);
	k[l] = 0;
	k[l + 1] = (uint8_t)(n >> 24);
	k[l + 2] = (uint8_t)(n >> 16);
	k[l + 3] = (uint8_t)(n >> 8);
	k[l + 4] = (uint8_t)n;
	return l + 5;
}

/* One encoded history event (a record's, or a schema-1 row). */
static int hist_event(struct rbuf *r, struct history_ev *ev)
{
	memset(ev, 0, sizeof *ev);
	ev->ts_ms = r_zz(r);
	ev->from = r_u8(r);
	ev->to = r_u8(r);
	ev->attempt = (uint32_t)r_var(r);
	r_strbuf(r, ev->agent, sizeof ev->agent);
	r_strbuf(r, ev->detail, sizeof ev->detail);
	return r->bad ? EC_ESTORE : 0;
}

/* Append an event to the record's own history (written with the record: no
 * table of its own to touch), dropping the oldest past STORE_HISTORY_MAX
 * events or HIST_BYTES_MAX bytes. */
static int history_add(struct store_txn *t, struct trec *tr, enum task_state from,
		       enum task_state to, int64_t now, const char *detail)
{
	(void)t;
	struct wbuf w = { 0 };
	w_raw(&w, tr->hist, tr->hist_len);
	w_zz(&w, now);
	w_u8(&w, (uint8_t)from);
	w_u8(&w, (uint8_t)to);
	w_var(&w, tr->r.attempt);
	w_str(&w, tr->r.agent);
	char d[sizeof ((struct history_ev *)0)->detail];
	snprintf(d, sizeof d, "%s", detail ? detail : "");
	w_str(&w, d);
	if (w.err) {
		free(w.p);
		return w.err;
	}
	uint32_t n = tr->nhist + 1;
	struct rbuf r = { w.p, w.p + w.len, false };
	while (n > 1 && (n > STORE_HISTORY_MAX || (size_t)(r.end - r.p) > HIST_BYTES_MAX)) {
		struct history_ev oldest;
		if (hist_event(&r, &oldest) < 0) {
			free(w.p);
			return EC_ESTORE;
		}
		n--;
	}
	size_t keep = (size_t)(r.end - r.p);
	memmove(w.p, r.p, keep);
	free(tr->hist);
	tr->hist = w.p;
	tr->hist_len = keep;
	tr->nhist = n;
	return 0;
}

static int emit(struct store_txn *t, const struct store_event *ev)
{
	return t->s->obs ? t->s->obs(t, ev, t->s->obs_arg) : 0;
}

static int mark_dirty(struct store_txn *t, const char *wf)
{
	for (size_t i = 0; i < t->ndirty; i++)
		if (strcmp(t->dirty_wf[i], wf) == 0)
			return 0;
	if (t->ndirty == t->capdirty) {
		size_t cap = t->capdirty ? t->capdirty * 2 : 4;
		char **p = realloc(t->dirty_wf, cap * sizeof *p);
		if (!p)
			return -ENOMEM;
		t->dirty_wf = p;
		t->capdirty = cap;
	}
	if (!(t->dirty_wf[t->ndirty] = strdup(wf)))
		return -ENOMEM;
	t->ndirty++;
	return 0;
}

/* End of one public operation: one WORKFLOW event per workflow it touched. */
static int op_end(struct store_txn *t, int rc)
{
	for (size_t i = 0; i < t->ndirty && rc == 0; i++) {
		struct workflow_rec wf;
		rc = wf_load(t, t->dirty_wf[i], &wf);
		if (rc == 0) {
			struct store_event ev = { .kind = STORE_EV_WORKFLOW, .workflow = &wf };
			rc = emit(t, &ev);
			workflow_rec_fini(&wf);
		}
	}
	txn_clear_dirty(t);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* The worklist of tasks whose finality changed */

enum { WL_FINAL = 0, WL_REOPEN = 1 };
struct wl_item {
	char *id;
	int kind;
};
struct worklist {
	struct wl_item *v;
	size_t n, cap;
};

static int wl_push(struct worklist *wl, const char *id, int kind)
{
	if (wl->n == wl->cap) {
		size_t cap = wl->cap ? wl->cap * 2 : 16;
		struct wl_item *p = realloc(wl->v, cap * sizeof *p);
		if (!p)
			return -ENOMEM;
		wl->v = p;
		wl->cap = cap;
	}
	if (!(wl->v[wl->n].id = strdup(id)))
		return -ENOMEM;
	wl->v[wl->n++].kind = kind;
	return 0;
}

static void wl_fini(struct worklist *wl)
{
	for (size_t i = 0; i < wl->n; i++)
		free(wl->v[i].id);
	free(wl->v);
	memset(wl, 0, sizeof *wl);
}

static bool state_runs(enum task_state s)
{
	return s == TS_DISPATCHED || s == TS_RUNNING;
}

static int set_error(struct task_rec *r, const char *e)
{
	free(r->error);
	r->error = NULL;
	if (e && !(r->error = strdup(e)))
		return -ENOMEM;
	return 0;
}

/*
 * Move one loaded task to `to` and write every row that follows; the caller
 * then runs the worklist. tr may be NULL for the store's own moves. detail
 * goes to the history.
 */
static int apply(struct store_txn *t, struct trec *x, enum task_state to,
		 const struct transition *tr, int64_t now, const char *detail,
		 struct worklist *wl)
{
	struct task_rec *r = &x->r;
	const char *id = r->spec.id;
	enum task_state from = r->state;
	struct meta *m;
	uint8_t k[9 + TASK_FULLID_MAX];
	int rc;

	if (!task_transition_legal(from, to))
		return EC_EILLEGAL;
	if ((rc = meta_get(t, &m)) < 0)
		return rc;
	if ((state_indexed(from) && (rc = db_del(t, DB_STATE, k, state_key(k, from, id))) < 0) ||
	    (state_indexed(to) && (rc = db_put(t, DB_STATE, k, state_key(k, to, id), "", 0, 0)) < 0))
		return rc;
	m->counts[from]--;
	m->counts[to]++;

	/* Leaving. */
	if (from == TS_READY && (rc = db_del(t, DB_READY, k, ready_key(k, ready_priority(&r->spec),
								      x->ready_seq))) < 0)
		return rc;
	if (from == TS_RETRY_WAIT && r->retry_due_ms) {
		if ((rc = timer_del(t, r->retry_due_ms, TIMER_RETRY, id)) < 0)
			return rc;
		r->retry_due_ms = 0;
	}
	if (state_runs(from) && r->timeout_due_ms &&
	    (!state_runs(to) || (tr && tr->timeout_due_ms > 0))) {
		if ((rc = timer_del(t, r->timeout_due_ms, TIMER_TIMEOUT, id)) < 0)
			return rc;
		r->timeout_due_ms = 0;
	}
	if (from == TS_DEAD) {
		be64(k, x->dead_seq);
		if ((rc = db_del(t, DB_DEAD, k, 8)) < 0 ||
		    (rc = db_del(t, DB_RESULTS, id, strlen(id))) < 0)
			return rc;
		x->dead_seq = 0;
		r->attempt = 0;
		if ((rc = set_error(r, NULL)) < 0)
			return rc;
	}

	/* Entering. */
	const char *err = tr && tr->error ? tr->error : NULL;
	switch (to) {
	case TS_DISPATCHED:
		r->attempt++;
		if (m->lease < t->s->lease_floor)
			m->lease = t->s->lease_floor;
		r->lease = ++m->lease;
		snprintf(r->agent, sizeof r->agent, "%s", tr && tr->agent ? tr->agent : "");
		/* fall through */
	case TS_RUNNING:
		if (tr && tr->timeout_due_ms > 0) {
			if ((rc = timer_set(t, tr->timeout_due_ms, TIMER_TIMEOUT, id)) < 0)
				return rc;
			r->timeout_due_ms = tr->timeout_due_ms;
		}
		break;
	case TS_READY:
		if (tr && tr->lost && state_runs(from)) {
			if (r->attempt)
				r->attempt--;
			detail = "lost";
		}
		r->lease = 0; /* fences the previous dispatch's late reports */
		x->ready_seq = ++m->seq;
		r->ready_ms = now;
		{
			uint8_t v[8 + TASK_FULLID_MAX];
			size_t n = strlen(id);
			be64(v, ms_key(now));
			memcpy(v + 8, id, n);
			if ((rc = db_put(t, DB_READY, k, ready_key(k, ready_priority(&r->spec),
								  x->ready_seq), v, 8 + n, 0)) < 0)
				return rc;
		}
		break;
	case TS_RETRY_WAIT:
		if (tr && tr->retry_due_ms > 0) {
			if ((rc = timer_set(t, tr->retry_due_ms, TIMER_RETRY, id)) < 0)
				return rc;
			r->retry_due_ms = tr->retry_due_ms;
		}
		break;
	case TS_FAILED:
		if ((rc = set_error(r, err ? err : "failed")) < 0)
			return rc;
		break;
	case TS_CANCELLED:
		if ((rc = set_error(r, err ? err : "cancelled")) < 0)
			return rc;
		break;
	case TS_DEAD: {
		if ((rc = set_error(r, err ? err : "dead")) < 0)
			return rc;
		x->dead_seq = ++m->seq;
		struct wbuf w = { 0 };
		w_raw(&w, id, strlen(id) + 1);
		w_raw(&w, r->error, strlen(r->error));
		be64(k, x->dead_seq);
		rc = w.err ? w.err : db_put(t, DB_DEAD, k, 8, w.p, w.len, 0);
		free(w.p);
		if (rc < 0)
			return rc;
		break;
	}
	case TS_SUCCEEDED:
		if ((rc = set_error(r, NULL)) < 0)
			return rc;
		break;
	default:
		break;
	}
	if (!detail && (to == TS_FAILED || to == TS_DEAD || to == TS_CANCELLED))
		detail = r->error;

	bool fin_to = task_state_final(to), fin_from = task_state_final(from);
	if (fin_to && !fin_from) {
		if (x->deadline_due) {
			if ((rc = timer_del(t, x->deadline_due, TIMER_DEADLINE, id)) < 0)
				return rc;
			x->deadline_due = 0;
		}
		if ((rc = pending_add(t, r->source, -1)) < 0 || (rc = wl_push(wl, id, WL_FINAL)) < 0)
			return rc;
	} else if (fin_from && !fin_to) {
		/* An operator's retry: a deadline still ahead is armed again; one
		 * already past would only kill the task at once. */
		if (r->spec.deadline_ms > now) {
			if ((rc = timer_set(t, r->spec.deadline_ms, TIMER_DEADLINE, id)) < 0)
				return rc;
			x->deadline_due = r->spec.deadline_ms;
		}
		if ((rc = pending_add(t, r->source, 1)) < 0 || (rc = wl_push(wl, id, WL_REOPEN)) < 0)
			return rc;
	}

	r->state = to;
	r->updated_ms = now;
	if (to != TS_ACCEPTED && to != TS_WAITING)
		r->unfinished = 0; /* counted only while it waits (store_check) */
	if ((rc = history_add(t, x, from, to, now, detail)) < 0 || (rc = task_save(t, x)) < 0)
		return rc;

	struct result_rec res = { .attempt = r->attempt, .ok = to == TS_SUCCEEDED, .ts_ms = now };
	if (to == TS_SUCCEEDED || to == TS_DEAD) {
		snprintf(res.agent, sizeof res.agent, "%s", r->agent);
		if (to == TS_SUCCEEDED && tr && tr->result) {
			res.result = (uint8_t *)tr->result;
			res.result_len = tr->result_len;
		}
		res.error = to == TS_DEAD ? r->error : NULL;
		if ((rc = result_put(t, id, &res)) < 0)
			return rc;
	}

	struct workflow_rec wf;
	bool have_wf = false;
	if (r->spec.workflow) {
		if ((rc = wf_load(t, r->spec.workflow, &wf)) < 0)
			return rc;
		have_wf = true;
		if (wf.counts[from])
			wf.counts[from]--;
		wf.counts[to]++;
		wf.updated_ms = now;
		if ((rc = wf_save(t, &wf)) < 0 || (rc = mark_dirty(t, wf.id)) < 0)
			goto out;
	}
	struct store_event ev = { .kind = STORE_EV_TASK, .task = r, .from = from,
				  .workflow = have_wf ? &wf : NULL };
	if ((rc = emit(t, &ev)) < 0)
		goto out;
	if (to == TS_SUCCEEDED || to == TS_DEAD) {
		struct store_event rev = { .kind = STORE_EV_RESULT, .task = r, .result = &res };
		rc = emit(t, &rev);
	}
out:
	if (have_wf)
		workflow_rec_fini(&wf);
	return rc;
}

/* The dependents of id, copied out (the caller frees each and the array). */
static int rdeps_of(struct store_txn *t, const char *id, char ***out, size_t *n)
{
	MDB_cursor *c;
	MDB_val k = mv(id, strlen(id)), v;
	char **list = NULL;
	size_t cnt = 0, cap = 0;
	int rc = xl(t, mdb_cursor_open(t->txn, t->s->dbi[DB_RDEPS], &c));
	if (rc < 0)
		return rc;
	int mrc = mdb_cursor_get(c, &k, &v, MDB_SET_KEY);
	while (mrc == 0) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 8;
			char **p = realloc(list, cap * sizeof *p);
			if (!p) {
				rc = -ENOMEM;
				break;
			}
			list = p;
		}
		if (!(list[cnt] = strndup(v.mv_data, v.mv_size))) {
			rc = -ENOMEM;
			break;
		}
		cnt++;
		mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP);
	}
	if (rc == 0 && mrc != MDB_NOTFOUND)
		rc = xl(t, mrc);
	mdb_cursor_close(c);
	if (rc < 0) {
		for (size_t i = 0; i < cnt; i++)
			free(list[i]);
		free(list);
		return rc;
	}
	*out = list;
	*n = cnt;
	return 0;
}

/* A dependency listed twice is one edge (rdeps holds each pair once). */
static bool dep_repeated(const struct task_spec *s, uint32_t i)
{
	for (uint32_t j = 0; j < i; j++)
		if (strcmp(s->deps[j], s->deps[i]) == 0)
			return true;
	return false;
}

static int count_unfinished(struct store_txn *t, const struct task_spec *s, uint32_t *out)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < s->ndeps; i++) {
		enum task_state st;
		if (dep_repeated(s, i))
			continue;
		int rc = task_state_of(t, s->deps[i], &st);
		if (rc < 0)
			return rc;
		if (!task_state_final(st))
			n++;
	}
	*out = n;
	return 0;
}

static bool wf_final(const struct workflow_rec *wf)
{
	for (int s = 0; s < TS__COUNT; s++)
		if (wf->counts[s] && !task_state_final((enum task_state)s))
			return false;
	return true;
}

/* Whether workflow wfid was cancelled (wf_load's errors otherwise). */
static int wf_cancelled(struct store_txn *t, const char *wfid, bool *out)
{
	struct workflow_rec wf;
	int rc = wf_load(t, wfid, &wf);
	if (rc == 0) {
		*out = wf.cancelled;
		workflow_rec_fini(&wf);
	}
	return rc;
}

/* All upstreams of x are final: ready, skipped, or (in a cancelled
 * workflow) cancelled. */
static int judge(struct store_txn *t, struct trec *x, int64_t now, struct worklist *wl)
{
	const struct task_spec *s = &x->r.spec;
	if (s->workflow) {
		bool cancelled = false;
		int rc = wf_cancelled(t, s->workflow, &cancelled);
		if (rc < 0)
			return rc;
		if (cancelled) {
			struct transition tr = { .to = TS_CANCELLED, .error = "workflow cancelled" };
			return apply(t, x, TS_CANCELLED, &tr, now, NULL, wl);
		}
	}
	struct dag_upstream *ups = calloc(s->ndeps ? s->ndeps : 1, sizeof *ups);
	struct result_rec res = { 0 };
	bool have_res = false;
	int rc = 0, w = dag_when_index(s);
	if (!ups)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->ndeps && rc == 0; i++) {
		rc = task_state_of(t, s->deps[i], &ups[i].state);
		if (rc == 0 && (int)i == w && ups[i].state == TS_SUCCEEDED) {
			MDB_val v;
			rc = db_get(t, DB_RESULTS, s->deps[i], strlen(s->deps[i]), &v);
			if (rc == 0 && (rc = result_decode(&v, &res)) == 0) {
				have_res = true;
				ups[i].result = res.result;
				ups[i].result_len = res.result_len;
			} else if (rc == EC_ENOTFOUND) {
				rc = 0;
			}
		}
	}
	if (rc == 0) {
		char why[128];
		enum dag_verdict d = dag_judge(s, ups, why, sizeof why);
		rc = apply(t, x, d == DAG_RUN ? TS_READY : TS_SKIPPED, NULL, now,
			   d == DAG_RUN ? NULL : why, wl);
	}
	if (have_res)
		result_rec_fini(&res);
	free(ups);
	return rc;
}

/* Drain the worklist: dependents of tasks that became final are counted
 * down and judged at zero; skipped dependents of tasks that left a final
 * state are re-opened (waiting) and propagate in turn. Iterative: a
 * 10,000-step chain is 10,000 turns of this loop, not 10,000 stack frames.
 *
 * Re-opening does not count incrementally: a task re-opened through two
 * paths (a diamond below a retried task) would have an upstream counted
 * twice. Every task a re-opening touches is recounted from scratch once the
 * worklist is empty; a recount is idempotent and costs its own edges. */
static int propagate(struct store_txn *t, struct worklist *wl, int64_t now)
{
	struct worklist recount = { 0 };
	int rc = 0;
	while (wl->n && rc == 0) {
		struct wl_item it = wl->v[--wl->n];
		char **deps = NULL;
		size_t nd = 0;
		rc = rdeps_of(t, it.id, &deps, &nd);
		for (size_t i = 0; i < nd && rc == 0; i++) {
			struct trec d;
			if ((rc = task_load(t, deps[i], &d)) < 0)
				break;
			enum task_state st = d.r.state;
			bool open = st == TS_ACCEPTED || st == TS_WAITING;
			if (it.kind == WL_FINAL) {
				if (open && d.r.unfinished > 0) {
					d.r.unfinished--;
					rc = d.r.unfinished == 0 ? judge(t, &d, now, wl) : task_save(t, &d);
				}
			} else if (open) {
				rc = wl_push(&recount, deps[i], WL_REOPEN);
			} else if (st == TS_SKIPPED) {
				rc = apply(t, &d, TS_WAITING, NULL, now, "upstream retried", wl);
				if (rc == 0)
					rc = wl_push(&recount, deps[i], WL_REOPEN);
			}
			trec_fini(&d);
		}
		for (size_t i = 0; i < nd; i++)
			free(deps[i]);
		free(deps);
		free(it.id);
	}
	for (size_t i = 0; i < recount.n && rc == 0; i++) {
		struct trec d;
		uint32_t n;
		if ((rc = task_load(t, recount.v[i].id, &d)) < 0)
			break;
		if ((d.r.state == TS_ACCEPTED || d.r.state == TS_WAITING) &&
		    (rc = count_unfinished(t, &d.r.spec, &n)) == 0 && n != d.r.unfinished) {
			d.r.unfinished = n;
			rc = task_save(t, &d);
		}
		trec_fini(&d);
	}
	wl_fini(&recount);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Transitions and operator actions */

/* Moves only the DAG makes: into waiting or skipped, out of skipped, and out
 * of accepted/waiting except by cancel or (waiting) a deadline. A caller
 * making them would break the unfinished-upstream counts. */
static bool dag_own_move(enum task_state from, enum task_state to)
{
	if (to == TS_ACCEPTED || to == TS_WAITING || to == TS_SKIPPED || from == TS_SKIPPED)
		return true;
	if (from == TS_WAITING && to == TS_DEAD)
		return false; /* its deadline passed while it waited */
	return (from == TS_ACCEPTED || from == TS_WAITING) && to != TS_CANCELLED;
}

static int transition_op(struct store_txn *t, const char *id, const struct transition *tr,
			 const char *detail, uint64_t *lease_out)
{
	struct trec x;
	struct worklist wl = { 0 };
	int rc = task_load(t, id, &x);
	if (rc < 0)
		return rc;
	if (tr->lease && tr->lease != x.r.lease)
		rc = EC_ESTALE;
	else if (dag_own_move(x.r.state, tr->to))
		rc = EC_EILLEGAL;
	if (rc == 0)
		rc = apply(t, &x, tr->to, tr, tr->now_ms, detail, &wl);
	if (rc == 0)
		rc = propagate(t, &wl, tr->now_ms);
	if (rc == 0 && lease_out)
		*lease_out = x.r.lease;
	trec_fini(&x);
	wl_fini(&wl);
	return op_end(t, rc);
}

int store_transition(struct store_txn *t, const char *id, const struct transition *tr,
		     uint64_t *lease_out)
{
	if (!t->write)
		return -EROFS;
	return transition_op(t, id, tr, NULL, lease_out);
}

int store_cancel(struct store_txn *t, const char *id, int64_t now_ms)
{
	enum task_state st;
	int rc = task_state_of(t, id, &st);
	if (rc == EC_ENOTFOUND)
		return EC_EUNKNOWN_TASK;
	if (rc < 0)
		return rc;
	if (task_state_final(st))
		return 0; /* already over: nothing to cancel (a cancel may come twice) */
	struct transition tr = { .to = TS_CANCELLED, .now_ms = now_ms, .error = "cancelled" };
	return transition_op(t, id, &tr, "cancelled by operator", NULL);
}

/* A retry in two halves, so that a retried step sees its retried upstreams
 * open whatever the order of their ids. reopen: a dead task leaves dead,
 * for ready if it has no upstreams, else for waiting. */
static int reopen(struct store_txn *t, const char *id, int64_t now, struct worklist *wl)
{
	struct trec x;
	int rc = task_load(t, id, &x);
	if (rc < 0)
		return rc;
	enum task_state to = x.r.spec.ndeps ? TS_WAITING : TS_READY;
	struct transition tr = { .to = to, .now_ms = now };
	rc = apply(t, &x, to, &tr, now, "retried by operator", wl);
	trec_fini(&x);
	return rc;
}

/* settle, once every task of the retry has reopened: a waiting one waits
 * for its open upstreams, or is judged now like any dependent whose last
 * upstream ended (it runs, or its upstreams' outcome skips it). */
static int settle(struct store_txn *t, const char *id, int64_t now, struct worklist *wl)
{
	struct trec x;
	uint32_t open;
	int rc = task_load(t, id, &x);
	if (rc < 0)
		return rc;
	if (x.r.state == TS_WAITING && (rc = count_unfinished(t, &x.r.spec, &open)) == 0) {
		x.r.unfinished = open;
		rc = open ? task_save(t, &x) : judge(t, &x, now, wl);
	}
	trec_fini(&x);
	return rc;
}

int store_retry(struct store_txn *t, const char *id, int64_t now_ms)
{
	enum task_state st;
	int rc = task_state_of(t, id, &st);
	if (rc == EC_ENOTFOUND)
		return EC_EUNKNOWN_TASK;
	if (rc < 0)
		return rc;
	if (st != TS_DEAD)
		return EC_ENOT_DEAD;
	struct trec x;
	bool cancelled = false;
	if ((rc = task_load(t, id, &x)) < 0)
		return rc;
	if (x.r.spec.workflow && (rc = wf_cancelled(t, x.r.spec.workflow, &cancelled)) == EC_ENOTFOUND)
		rc = 0;
	trec_fini(&x);
	if (rc < 0)
		return rc;
	if (cancelled)
		return EC_ENOT_DEAD; /* its workflow was cancelled: it stays over */
	struct worklist wl = { 0 };
	if ((rc = reopen(t, id, now_ms, &wl)) == 0 && (rc = settle(t, id, now_ms, &wl)) == 0)
		rc = propagate(t, &wl, now_ms);
	wl_fini(&wl);
	return op_end(t, rc);
}

/* The ids of a workflow's steps, copied out. */
struct idlist {
	char **v;
	size_t n, cap;
};

static void idlist_fini(struct idlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	memset(l, 0, sizeof *l);
}

/* "wf:", the keys of wf's steps start with it. 0 if wf is longer than an id
 * can be: no step has it (snprintf's return, the length it wanted to
 * write, read past the buffer). */
static size_t steps_prefix(const char *wf, char prefix[TASK_ID_MAX + 2])
{
	size_t l = strlen(wf);
	if (l > TASK_ID_MAX)
		return 0;
	memcpy(prefix, wf, l);
	prefix[l] = ':';
	return l + 1;
}

static int step_ids(struct store_txn *t, const char *wf, struct idlist *out)
{
	char prefix[TASK_ID_MAX + 2];
	size_t pl = steps_prefix(wf, prefix);
	if (!pl)
		return 0;
	MDB_cursor *c;
	MDB_val k = mv(prefix, pl), v;
	int rc = xl(t, mdb_cursor_open(t->txn, t->s->dbi[DB_TASKS], &c));
	if (rc < 0)
		return rc;
	int mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	while (mrc == 0 && k.mv_size > pl && memcmp(k.mv_data, prefix, pl) == 0) {
		if (out->n == out->cap) {
			size_t cap = out->cap ? out->cap * 2 : 16;
			char **p = realloc(out->v, cap * sizeof *p);
			if (!p) {
				rc = -ENOMEM;
				break;
			}
			out->v = p;
			out->cap = cap;
		}
		if (!(out->v[out->n] = strndup(k.mv_data, k.mv_size))) {
			rc = -ENOMEM;
			break;
		}
		out->n++;
		mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND)
		rc = xl(t, mrc);
	mdb_cursor_close(c);
	return rc;
}

int store_cancel_workflow(struct store_txn *t, const char *wfid, int64_t now_ms)
{
	struct workflow_rec wf;
	struct idlist ids = { 0 };
	int rc = wf_load(t, wfid, &wf);
	if (rc == EC_ENOTFOUND)
		return EC_EUNKNOWN_WORKFLOW;
	if (rc < 0)
		return rc;
	if (wf_final(&wf)) {
		workflow_rec_fini(&wf);
		return 0; /* already over, as for a task: it keeps its outcome */
	}
	/* Mark first: a step judged while we go (its upstream just cancelled)
	 * is then cancelled too instead of running or being skipped. */
	wf.cancelled = true;
	wf.updated_ms = now_ms;
	if ((rc = wf_save(t, &wf)) < 0 || (rc = mark_dirty(t, wfid)) < 0 ||
	    (rc = step_ids(t, wfid, &ids)) < 0)
		goto out;
	for (size_t i = 0; i < ids.n && rc == 0; i++) {
		enum task_state st;
		if ((rc = task_state_of(t, ids.v[i], &st)) < 0 || task_state_final(st))
			continue;
		struct transition tr = { .to = TS_CANCELLED, .now_ms = now_ms,
					 .error = "workflow cancelled" };
		rc = transition_op(t, ids.v[i], &tr, "workflow cancelled by operator", NULL);
		if (rc == 0)
			rc = mark_dirty(t, wfid);
	}
out:
	workflow_rec_fini(&wf);
	idlist_fini(&ids);
	return op_end(t, rc);
}

int store_retry_workflow(struct store_txn *t, const char *wfid, int64_t now_ms)
{
	struct idlist ids = { 0 };
	struct worklist wl = { 0 };
	bool cancelled = false;
	int rc = wf_cancelled(t, wfid, &cancelled);
	if (rc == EC_ENOTFOUND)
		return EC_EUNKNOWN_WORKFLOW;
	if (rc < 0)
		return rc;
	if (cancelled)
		return EC_ENOT_DEAD; /* a cancelled workflow is over (workflows.md) */
	/* Every dead step reopens before any is settled (reopen); the others
	 * drop out of ids. */
	size_t n = 0;
	rc = step_ids(t, wfid, &ids);
	for (size_t i = 0; i < ids.n && rc == 0; i++) {
		enum task_state st;
		if ((rc = task_state_of(t, ids.v[i], &st)) < 0 || st != TS_DEAD)
			continue;
		if ((rc = reopen(t, ids.v[i], now_ms, &wl)) == 0) {
			char *keep = ids.v[n];
			ids.v[n++] = ids.v[i];
			ids.v[i] = keep;
		}
	}
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = settle(t, ids.v[i], now_ms, &wl);
	if (rc == 0)
		rc = n ? propagate(t, &wl, now_ms) : EC_ENOT_DEAD;
	idlist_fini(&ids);
	wl_fini(&wl);
	return op_end(t, rc);
}

/* ------------------------------------------------------------------------ */
/* Submissions */

struct submit_ctx {
	const struct submission *sub;
	const char *source;
	uint32_t max_pending;
	int64_t now;
	struct submit_result *res;
	struct sub_error *err;
};

static int sub_fail(struct sub_error *e, int code, const char *task, const char *fmt,
		    const char *arg)
{
	if (e) {
		e->code = code;
		snprintf(e->task_id, sizeof e->task_id, "%s", task ? task : "");
		snprintf(e->detail, sizeof e->detail, fmt, arg);
	}
	return code;
}

static int spec_bytes(const struct task_spec *s, struct wbuf *w)
{
	spec_encode(w, s);
	return w->err;
}

static bool str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* 1: every task (and the workflow) is stored with this content; 0: nothing
 * of it is stored; else EC_ECONFLICT with *err filled. */
static int compare_stored(struct store_txn *t, struct submit_ctx *c)
{
	const struct submission *sub = c->sub;
	uint32_t same = 0, absent = 0;
	const char *first_diff = NULL;
	int rc;
	MDB_val v;

	if (sub->kind == SUB_WORKFLOW) {
		rc = db_get(t, DB_WORKFLOWS, sub->id, strlen(sub->id), &v);
		if (rc == 0) {
			struct workflow_rec wf;
			if ((rc = wf_decode(sub->id, &v, &wf)) < 0)
				return rc;
			bool eq = str_eq(wf.description, sub->description) && wf.total == sub->ntasks;
			workflow_rec_fini(&wf);
			if (!eq)
				return sub_fail(c->err, EC_ECONFLICT, sub->id,
						"workflow %s exists with different content", sub->id);
		} else if (rc != EC_ENOTFOUND) {
			return rc;
		} else if (db_get(t, DB_TASKS, sub->id, strlen(sub->id), &v) == 0) {
			return sub_fail(c->err, EC_ECONFLICT, sub->id,
					"%s exists as a task", sub->id);
		}
	}
	for (uint32_t i = 0; i < sub->ntasks; i++) {
		const struct task_spec *s = &sub->tasks[i];
		rc = db_get(t, DB_TASKS, s->id, strlen(s->id), &v);
		if (rc == EC_ENOTFOUND) {
			if (sub->kind != SUB_WORKFLOW &&
			    db_get(t, DB_WORKFLOWS, s->id, strlen(s->id), &v) == 0)
				return sub_fail(c->err, EC_ECONFLICT, s->id,
						"%s exists as a workflow", s->id);
			absent++;
			continue;
		}
		if (rc < 0)
			return rc;
		const uint8_t *sp;
		size_t sl;
		if ((rc = peek_spec(&v, &sp, &sl)) < 0)
			return rc;
		struct wbuf w = { 0 };
		if ((rc = spec_bytes(s, &w)) < 0) {
			free(w.p);
			return rc;
		}
		bool eq = w.len == sl && memcmp(w.p, sp, sl) == 0;
		free(w.p);
		if (eq) {
			same++;
			if (i == 0)
				peek_state(&v, &c->res->state);
		} else if (!first_diff) {
			first_diff = s->id;
		}
	}
	if (first_diff)
		return sub_fail(c->err, EC_ECONFLICT, first_diff,
				"task %s exists with different content", first_diff);
	if (same == sub->ntasks)
		return 1;
	if (same == 0 && (sub->kind != SUB_WORKFLOW ||
			  db_get(t, DB_WORKFLOWS, sub->id, strlen(sub->id), &v) == EC_ENOTFOUND))
		return 0;
	/* Part of it stored: this is not a resubmission of the same thing. */
	for (uint32_t i = 0; i < sub->ntasks; i++)
		if (db_get(t, DB_TASKS, sub->tasks[i].id, strlen(sub->tasks[i].id), &v) == 0)
			return sub_fail(c->err, EC_ECONFLICT, sub->tasks[i].id,
					"task %s already exists", sub->tasks[i].id);
	return sub_fail(c->err, EC_ECONFLICT, sub->id, "workflow %s exists with different steps",
			sub->id);
}

static int insert_task(struct store_txn *t, struct submit_ctx *c, const struct task_spec *s,
		       struct workflow_rec *wf)
{
	struct trec x;
	struct meta *m;
	struct wbuf w = { 0 };
	int rc;

	memset(&x, 0, sizeof x);
	if ((rc = spec_bytes(s, &w)) < 0) {
		free(w.p);
		return rc;
	}
	x.spec_raw = w.p;
	x.spec_len = w.len;
	/* The record owns a deep copy of the spec: decode what we encoded. */
	struct rbuf r = { w.p, w.p + w.len, false };
	if ((rc = spec_decode(&r, &x.r.spec)) < 0) {
		free(w.p);
		return rc;
	}
	x.r.state = TS_ACCEPTED;
	x.r.enc = c->sub->enc;
	snprintf(x.r.source, sizeof x.r.source, "%s", c->source);
	x.r.created_ms = x.r.updated_ms = c->now;
	if ((rc = meta_get(t, &m)) < 0)
		goto out;
	m->counts[TS_ACCEPTED]++;
	if (s->deadline_ms) {
		if ((rc = timer_set(t, s->deadline_ms, TIMER_DEADLINE, s->id)) < 0)
			goto out;
		x.deadline_due = s->deadline_ms;
	}
	if ((rc = history_add(t, &x, TS_ACCEPTED, TS_ACCEPTED, c->now, NULL)) < 0 ||
	    (rc = task_save(t, &x)) < 0)
		goto out;
	if (wf) {
		wf->counts[TS_ACCEPTED]++;
		if ((rc = wf_save(t, wf)) < 0)
			goto out;
	}
	struct store_event ev = { .kind = STORE_EV_TASK, .task = &x.r, .from = TS_ACCEPTED,
				  .workflow = wf };
	rc = emit(t, &ev);
out:
	trec_fini(&x);
	return rc;
}

static int submit_fn(struct store_txn *t, void *arg)
{
	struct submit_ctx *c = arg;
	const struct submission *sub = c->sub;
	struct workflow_rec wf = { 0 };
	struct worklist wl = { 0 };
	bool is_wf = sub->kind == SUB_WORKFLOW;
	int rc;

	if (c->max_pending) {
		uint64_t pend = 0;
		if ((rc = store_pending_count(t, c->source, &pend)) < 0)
			return rc;
		if (pend + sub->ntasks > c->max_pending)
			return sub_fail(c->err, EC_EQUOTA, NULL,
					"source %s has too many pending tasks", c->source);
	}
	if (is_wf) {
		snprintf(wf.id, sizeof wf.id, "%s", sub->id);
		wf.description = sub->description;  /* borrowed: not fini'd below */
		wf.enc = sub->enc;
		snprintf(wf.source, sizeof wf.source, "%s", c->source);
		wf.total = sub->ntasks;
		wf.created_ms = wf.updated_ms = c->now;
		if ((rc = mark_dirty(t, wf.id)) < 0)
			return rc;
	}
	/* Pass 1: every record, so that dependencies inside the batch resolve. */
	for (uint32_t i = 0; i < sub->ntasks; i++)
		if ((rc = insert_task(t, c, &sub->tasks[i], is_wf ? &wf : NULL)) < 0)
			goto out;
	if (is_wf && sub->ntasks == 0 && (rc = wf_save(t, &wf)) < 0)
		goto out;
	if ((rc = pending_add(t, c->source, sub->ntasks)) < 0)
		goto out;
	/* Pass 2: edges, counts, and the first move of each task. */
	for (uint32_t i = 0; i < sub->ntasks && rc == 0; i++) {
		const struct task_spec *s = &sub->tasks[i];
		struct trec x;
		for (uint32_t j = 0; j < s->ndeps; j++) {
			enum task_state st;
			rc = task_state_of(t, s->deps[j], &st);
			if (rc == EC_ENOTFOUND) {
				rc = sub_fail(c->err, EC_EUNKNOWN_DEP, s->id,
					      "unknown dependency %s", s->deps[j]);
				goto out;
			}
			if (rc < 0)
				goto out;
			MDB_val ek = mv(s->deps[j], strlen(s->deps[j])), ev = mv(s->id, strlen(s->id));
			int mrc = mdb_put(t->txn, t->s->dbi[DB_RDEPS], &ek, &ev, MDB_NODUPDATA);
			/* KEYEXIST: a dependency listed twice is one edge. */
			if (mrc && mrc != MDB_KEYEXIST && (rc = xl(t, mrc)) < 0)
				goto out;
		}
		if ((rc = task_load(t, s->id, &x)) < 0)
			goto out;
		if (x.r.state == TS_ACCEPTED) {
			rc = count_unfinished(t, &x.r.spec, &x.r.unfinished);
			if (rc == 0)
				rc = x.r.unfinished ? apply(t, &x, TS_WAITING, NULL, c->now, NULL, &wl)
						    : judge(t, &x, c->now, &wl);
			if (rc == 0)
				rc = propagate(t, &wl, c->now);
		}
		trec_fini(&x);
	}
out:
	wl_fini(&wl);
	return op_end(t, rc);
}

/* Pages in use as this transaction sees them: every table's pages plus the
 * main and free-list trees. Pages on the free list are reusable and not
 * counted, unlike the file's high-water mark. */
static size_t txn_pages(struct store_txn *t)
{
	size_t n = 0;
	MDB_stat st;
	for (int i = -2; i < DB__COUNT; i++) {
		MDB_dbi d = i < 0 ? (MDB_dbi)(i + 2) : t->s->dbi[i]; /* 0 free, 1 main */
		if (mdb_stat(t->txn, d, &st) == 0)
			n += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
	}
	return n;
}

/*
 * At the largest map and above FULL_PERCENT of it: submissions are refused
 * so that the headroom is left for the work already stored. "Used" is the
 * file's high-water mark as last committed (pages freed by the last commits
 * are not reusable yet, so free-list pages cannot be counted on) plus what
 * this transaction has added since it began.
 */
static bool near_full(struct store_txn *t)
{
	struct store *s = t->s;
	MDB_envinfo info;
	MDB_stat st;
	if (s->map_size < s->max_map_size || mdb_env_info(s->env, &info) ||
	    mdb_env_stat(s->env, &st))
		return false;
	size_t now = txn_pages(t);
	if (!t->base_set) {
		t->base_pages = now;
		t->base_set = true;
	}
	size_t grown = now > t->base_pages ? now - t->base_pages : 0;
	size_t used = (info.me_last_pgno + 1 + grown) * (size_t)st.ms_psize;
	return used > s->map_size / 100 * FULL_PERCENT;
}

/* Every unfinished task may become ready, and a ready one costs the
 * scheduler's index memory: past max_unfinished a gateway would run out of
 * it, at once or at the next start, when the index is built again. */
static int too_many(struct store_txn *t, uint32_t adding, struct sub_error *err)
{
	struct meta *m;
	uint64_t n = 0;
	int rc;
	if (!t->s->max_unfinished)
		return 0;
	if ((rc = meta_get(t, &m)) < 0)
		return rc;
	for (int i = 0; i < TS__COUNT; i++)
		if (!task_state_final(i))
			n += m->counts[i];
	if (n + adding <= t->s->max_unfinished)
		return 0;
	char held[24];
	snprintf(held, sizeof held, "%llu", (unsigned long long)n);
	return sub_fail(err, EC_ESTORE_FULL, NULL,
			"the store holds %s unfinished tasks (coordinator.max_unfinished)", held);
}

int store_submit(struct store_txn *t, const struct submission *sub, const char *source,
		 uint32_t max_pending, int64_t now_ms, struct submit_result *res,
		 struct sub_error *err)
{
	struct submit_ctx c = { sub, source ? source : "", max_pending, now_ms, res, err };
	struct submit_result r = { 0 };
	int rc;
	if (!t->write)
		return -EROFS;
	c.res = &r;
	if (sub->ntasks == 0)
		return sub_fail(err, EC_EINVALID_FIELD, NULL, "empty submission%s", "");
	rc = compare_stored(t, &c);
	if (rc < 0)
		return rc;
	if (rc == 1) {
		r.duplicate = true;
		*res = r;
		if (sub->kind == SUB_WORKFLOW) {
			/* The workflow status is published again (DESIGN 3.3). */
			if ((rc = mark_dirty(t, sub->id)) < 0)
				return rc;
			return op_end(t, 0);
		}
		return 0;
	}
	if (near_full(t))
		return sub_fail(err, EC_ESTORE_FULL, NULL, "the store is full%s", "");
	if ((rc = too_many(t, sub->ntasks, err)) != 0)
		return rc;
	rc = store_nested(t, submit_fn, &c);
	if (rc == EC_ESTORE_FULL)
		sub_fail(err, EC_ESTORE_FULL, NULL, "the store is full%s", "");
	if (rc == 0) {
		r.state = TS_ACCEPTED;
		*res = r;
	}
	return rc;
}

/* ---- retention ----------------------------------------------------------------- */

/* Every row of a final task (see store_prune); its dependents are gone or go
 * with it. */
static int task_drop(struct store_txn *t, const struct trec *x)
{
	const char *id = x->r.spec.id;
	size_t idl = strlen(id);
	uint8_t k[TASK_FULLID_MAX + 5];
	struct meta *m;
	int rc;
	if ((rc = meta_get(t, &m)) < 0 || /* only now: a scan that deletes nothing writes nothing */
	    (rc = db_del(t, DB_TASKS, id, idl)) < 0 ||
	    (rc = db_del(t, DB_RESULTS, id, idl)) < 0 ||
	    (rc = db_del(t, DB_RDEPS, id, idl)) < 0)
		return rc;
	uint32_t n = x->hist_next > STORE_HISTORY_MAX ? x->hist_next - STORE_HISTORY_MAX : 0;
	for (; n < x->hist_next; n++)
		if ((rc = db_del(t, DB_HISTORY, k, hist_key(k, id, n))) < 0)
			return rc;
	if (x->dead_seq) {
		be64(k, x->dead_seq);
		if ((rc = db_del(t, DB_DEAD, k, 8)) < 0)
			return rc;
	}
	for (uint32_t i = 0; i < x->r.spec.ndeps; i++) {
		const char *dep = x->r.spec.deps[i];
		MDB_val ek = mv(dep, strlen(dep)), ev = mv(id, idl);
		int mrc = mdb_del(t->txn, t->s->dbi[DB_RDEPS], &ek, &ev);
		if (mrc && mrc != MDB_NOTFOUND)
			return xl(t, mrc);
	}
	if (m->counts[x->r.state])
		m->counts[x->r.state]--;
	return 0;
}

/* A workflow and its steps, if it ended before cutoff and nothing outside
 * it depends on a step. */
static int prune_workflow(struct store_txn *t, const char *wfid,
			  int64_t cutoff, unsigned *removed)
{
	struct workflow_rec wf;
	int rc = wf_load(t, wfid, &wf);
	if (rc == EC_ENOTFOUND)
		return 0;
	if (rc < 0)
		return rc;
	bool old = wf.updated_ms < cutoff && wf_final(&wf);
	workflow_rec_fini(&wf);
	if (!old)
		return 0;
	struct idlist steps = { 0 };
	size_t pl = strlen(wfid);
	bool outside = false;
	rc = step_ids(t, wfid, &steps);
	for (size_t i = 0; rc == 0 && i < steps.n && !outside; i++) {
		char **dep = NULL;
		size_t nd = 0;
		rc = rdeps_of(t, steps.v[i], &dep, &nd);
		for (size_t j = 0; j < nd; j++) {
			outside |= strncmp(dep[j], wfid, pl) != 0 || dep[j][pl] != ':';
			free(dep[j]);
		}
		free(dep);
	}
	for (size_t i = 0; rc == 0 && !outside && i < steps.n; i++) {
		struct trec x;
		if ((rc = task_load(t, steps.v[i], &x)) == 0) {
			rc = task_drop(t, &x);
			trec_fini(&x);
		}
	}
	if (rc == 0 && !outside) {
		rc = db_del(t, DB_WORKFLOWS, wfid, pl);
		*removed += (unsigned)steps.n;
	}
	idlist_fini(&steps);
	return rc;
}

int store_prune(struct store_txn *t, int64_t cutoff_ms, unsigned budget, unsigned *removed,
		bool *wrapped)
{
	struct store *s = t->s;
	int rc = 0;
	*removed = 0;
	*wrapped = false;
	for (unsigned looked = 0; rc == 0 && looked < budget; looked++) {
		/* No cursor is held across the deletes: find the next id afresh. */
		MDB_cursor *c;
		MDB_val k = mv(s->prune_at, s->prune_len), v;
		char id[TASK_FULLID_MAX + 1];
		if ((rc = xl(t, mdb_cursor_open(t->txn, s->dbi[DB_TASKS], &c))) < 0)
			break;
		int mrc = k.mv_size ? mdb_cursor_get(c, &k, &v, MDB_SET_RANGE)
				    : mdb_cursor_get(c, &k, &v, MDB_FIRST);
		if (mrc == 0 && k.mv_size < sizeof id) {
			memcpy(id, k.mv_data, k.mv_size);
			id[k.mv_size] = 0;
		}
		mdb_cursor_close(c);
		if (mrc == MDB_NOTFOUND) {
			s->prune_len = 0;
			*wrapped = true;
			break;
		}
		if (mrc)
			return xl(t, mrc);
		if (k.mv_size >= sizeof id)
			return EC_ESTORE;
		char *colon = strchr(id, ':');
		if (colon) {
			/* a step: the workflow goes as a whole; next, what sorts
			 * after all its steps (';' follows ':') */
			*colon = 0;
			rc = prune_workflow(t, id, cutoff_ms, removed);
			s->prune_len = (size_t)snprintf(s->prune_at, sizeof s->prune_at, "%s;", id);
			continue;
		}
		/* a plain task; next, the key right after it: id + "\0" */
		size_t idl = strlen(id);
		memcpy(s->prune_at, id, idl + 1);
		s->prune_len = idl + 1;
		struct trec x;
		if ((rc = task_load(t, id, &x)) < 0)
			break;
		MDB_val dv;
		int drc = db_get(t, DB_RDEPS, id, idl, &dv);
		if (drc < 0 && drc != EC_ENOTFOUND) {
			trec_fini(&x);
			return drc;
		}
		if (task_state_final(x.r.state) && x.r.updated_ms < cutoff_ms && drc != 0) {
			rc = task_drop(t, &x);
			if (rc == 0)
				++*removed;
		}
		trec_fini(&x);
	}
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Reads */

int store_task_get(struct store_txn *t, const char *id, struct task_rec *out)
{
	struct trec x;
	int rc = task_load(t, id, &x);
	if (rc < 0)
		return rc;
	*out = x.r;
	free(x.spec_raw);
	free(x.hist);
	return 0;
}

int store_workflow_get(struct store_txn *t, const char *id, struct workflow_rec *out)
{
	return wf_load(t, id, out);
}

int store_result_get(struct store_txn *t, const char *id, struct result_rec *out)
{
	MDB_val v;
	int rc = db_get(t, DB_RESULTS, id, strlen(id), &v);
	if (rc < 0)
		return rc;
	return result_decode(&v, out);
}

static int call_task(struct store_txn *t, const MDB_val *v, store_task_fn fn, void *arg)
{
	struct trec x;
	int rc = trec_decode(v, &x);
	if (rc < 0)
		return rc;
	rc = fn(&x.r, arg);
	trec_fini(&x);
	return rc;
}

/* Iterate keys of db starting at (prefix), while they start with it. */
typedef int (*kv_fn)(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg);
static int scan_prefix(struct store_txn *t, int db, const void *prefix, size_t pl, kv_fn fn,
		       void *arg)
{
	MDB_cursor *c;
	MDB_val k, v;
	uint8_t b[KEY_MAX];
	size_t skip = in_meta(t->s, db); /* its table's byte */
	MDB_dbi d = where(t->s, db, prefix, pl, b, &k);
	if (skip && !k.mv_size)
		return 0; /* a prefix longer than a key: nothing has it */
	prefix = k.mv_data;
	pl = k.mv_size;
	int rc = xl(t, mdb_cursor_open(t->txn, d, &c));
	if (rc < 0)
		return rc;
	int mrc = pl ? mdb_cursor_get(c, &k, &v, MDB_SET_RANGE) : mdb_cursor_get(c, &k, &v, MDB_FIRST);
	while (mrc == 0 && rc == 0 && k.mv_size >= pl && (pl == 0 || memcmp(k.mv_data, prefix, pl) == 0)) {
		MDB_val key = mv((const uint8_t *)k.mv_data + skip, k.mv_size - skip);
		rc = fn(t, &key, &v, arg);
		if (rc == 0)
			mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND)
		rc = xl(t, mrc);
	mdb_cursor_close(c);
	return rc;
}

struct task_cb {
	store_task_fn fn;
	void *arg;
	int state;                      /* scan_unindexed_cb */
};

static int scan_tasks_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	struct task_cb *cb = arg;
	return call_task(t, v, cb->fn, cb->arg);
}

static int scan_unindexed_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	struct task_cb *cb = arg;
	enum task_state st;
	int rc = peek_state(v, &st);
	if (rc < 0)
		return rc;
	return (int)st == cb->state ? call_task(t, v, cb->fn, cb->arg) : 0;
}

static int scan_state_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	struct task_cb *cb = arg;
	MDB_val tv;
	int rc = db_get(t, DB_TASKS, (const char *)k->mv_data + 1, k->mv_size - 1, &tv);
	if (rc < 0)
		return rc == EC_ENOTFOUND ? EC_ESTORE : rc;
	return call_task(t, &tv, cb->fn, cb->arg);
}

int store_tasks_scan(struct store_txn *t, int state, store_task_fn fn, void *arg)
{
	struct task_cb cb = { fn, arg, state };
	if (state < 0)
		return scan_prefix(t, DB_TASKS, NULL, 0, scan_tasks_cb, &cb);
	if (state >= TS__COUNT)
		return -EINVAL;
	if (!state_indexed(state))
		return scan_prefix(t, DB_TASKS, NULL, 0, scan_unindexed_cb, &cb);
	uint8_t p = (uint8_t)state;
	return scan_prefix(t, DB_STATE, &p, 1, scan_state_cb, &cb);
}

int store_workflow_steps(struct store_txn *t, const char *wf, store_task_fn fn, void *arg)
{
	char prefix[TASK_ID_MAX + 2];
	size_t pl = steps_prefix(wf, prefix);
	struct task_cb cb = { fn, arg, -1 };
	return pl ? scan_prefix(t, DB_TASKS, prefix, pl, scan_tasks_cb, &cb) : 0;
}

struct wf_cb {
	store_wf_fn fn;
	void *arg;
};

static int scan_wf_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	struct wf_cb *cb = arg;
	char id[TASK_ID_MAX + 1];
	struct workflow_rec wf;
	if (k->mv_size > TASK_ID_MAX)
		return EC_ESTORE;
	memcpy(id, k->mv_data, k->mv_size);
	id[k->mv_size] = 0;
	int rc = wf_decode(id, v, &wf);
	if (rc < 0)
		return rc;
	rc = cb->fn(&wf, cb->arg);
	workflow_rec_fini(&wf);
	return rc;
}

int store_workflows_scan(struct store_txn *t, store_wf_fn fn, void *arg)
{
	struct wf_cb cb = { fn, arg };
	return scan_prefix(t, DB_WORKFLOWS, NULL, 0, scan_wf_cb, &cb);
}

struct hist_cb {
	store_hist_fn fn;
	void *arg;
};

static int scan_hist_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	struct hist_cb *cb = arg;
	struct rbuf r = { v->mv_data, (const uint8_t *)v->mv_data + v->mv_size, false };
	struct history_ev ev;
	int rc = hist_event(&r, &ev);
	return rc ? rc : cb->fn(&ev, cb->arg);
}

/* The rows of the history table (schema 1: older events of records written
 * then), then the events in the record. */
int store_history_scan(struct store_txn *t, const char *id, store_hist_fn fn, void *arg)
{
	uint8_t p[TASK_FULLID_MAX + 1];
	size_t l = strlen(id);
	if (l > TASK_FULLID_MAX)
		return EC_ENOTFOUND;
	memcpy(p, id, l);
	p[l] = 0;
	struct hist_cb cb = { fn, arg };
	int rc = scan_prefix(t, DB_HISTORY, p, l + 1, scan_hist_cb, &cb);
	struct trec x;
	if (rc != 0 || (rc = task_load(t, id, &x)) < 0)
		return rc;
	struct rbuf r = { x.hist, x.hist + x.hist_len, false };
	for (uint32_t i = 0; rc == 0 && i < x.nhist; i++) {
		struct history_ev ev;
		rc = hist_event(&r, &ev);
		if (rc == 0)
			rc = fn(&ev, arg);
	}
	trec_fini(&x);
	return rc;
}

static int scan_dead_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	struct task_cb *cb = arg;
	size_t il = strnlen(v->mv_data, v->mv_size);
	MDB_val tv;
	int rc = db_get(t, DB_TASKS, v->mv_data, il, &tv);
	if (rc < 0)
		return rc == EC_ENOTFOUND ? EC_ESTORE : rc;
	return call_task(t, &tv, cb->fn, cb->arg);
}

int store_dead_scan(struct store_txn *t, store_task_fn fn, void *arg)
{
	struct task_cb cb = { fn, arg, -1 };
	return scan_prefix(t, DB_DEAD, NULL, 0, scan_dead_cb, &cb);
}

struct ready_cb {
	store_ready_fn fn;
	void *arg;
};

static int scan_ready_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	struct ready_cb *cb = arg;
	char id[TASK_FULLID_MAX + 1];
	if (v->mv_size < 9 || v->mv_size - 8 > TASK_FULLID_MAX)
		return EC_ESTORE;
	memcpy(id, (const uint8_t *)v->mv_data + 8, v->mv_size - 8);
	id[v->mv_size - 8] = 0;
	int64_t ms = (int64_t)(rd_be64(v->mv_data) ^ (1ull << 63));
	return cb->fn(id, ms, cb->arg);
}

int store_ready_scan(struct store_txn *t, int priority, store_ready_fn fn, void *arg)
{
	if (priority < 1 || priority > 10)
		return -EINVAL;
	uint8_t p = (uint8_t)priority;
	struct ready_cb cb = { fn, arg };
	return scan_prefix(t, DB_READY, &p, 1, scan_ready_cb, &cb);
}

int store_state_counts(struct store_txn *t, uint64_t counts[TS__COUNT])
{
	struct meta mm, *m = &mm;
	int rc = t->write ? meta_get(t, &m) : meta_read(t, &mm);
	if (rc < 0)
		return rc;
	memcpy(counts, m->counts, sizeof m->counts);
	return 0;
}

int store_pending_count(struct store_txn *t, const char *source, uint64_t *out)
{
	MDB_val v;
	int rc = db_get(t, DB_PENDING, source, strlen(source), &v);
	if (rc == EC_ENOTFOUND) {
		*out = 0;
		return 0;
	}
	if (rc < 0)
		return rc;
	*out = v.mv_size == 8 ? rd_le64(v.mv_data) : 0;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Timers */

int store_timer_next(struct store_txn *t, int64_t *due_ms)
{
	MDB_val k;
	int rc = db_first(t, DB_TIMERS, &k);
	if (rc == 0 && k.mv_size < 10)
		rc = EC_ESTORE;
	if (rc == 0)
		*due_ms = (int64_t)(rd_be64(k.mv_data) ^ (1ull << 63));
	return rc;
}

int store_timers_due(struct store_txn *t, int64_t now_ms, store_timer_fn fn, void *arg)
{
	MDB_stat st;
	int rc = xl(t, mdb_stat(t->txn, t->s->dbi[in_meta(t->s, DB_TIMERS) ? DB_META : DB_TIMERS],
				&st));
	if (rc < 0)
		return rc;
	/* At most the timers present now (or the rows of meta's tree, which
	 * holds them): a callback that arms a timer already due does not make
	 * this loop run forever. */
	for (size_t left = st.ms_entries; left > 0; left--) {
		MDB_val k;
		uint8_t key[9 + TASK_FULLID_MAX];
		rc = db_first(t, DB_TIMERS, &k);
		if (rc == 0 && (k.mv_size < 10 || k.mv_size > sizeof key))
			rc = EC_ESTORE;
		size_t kl = rc == 0 ? k.mv_size : 0;
		if (rc == 0)
			memcpy(key, k.mv_data, kl);
		if (rc == EC_ENOTFOUND)
			return 0;
		if (rc < 0)
			return rc;
		int64_t due = (int64_t)(rd_be64(key) ^ (1ull << 63));
		if (due > now_ms)
			return 0;
		enum timer_kind kind = key[8];
		char id[TASK_FULLID_MAX + 1];
		memcpy(id, key + 9, kl - 9);
		id[kl - 9] = 0;
		if (!t->write)
			return -EROFS;
		if ((rc = db_del(t, DB_TIMERS, key, kl)) < 0)
			return rc;
		/* The record mirrors its timers: clear the mirror with the row. */
		struct trec x;
		if ((rc = task_load(t, id, &x)) < 0)
			return rc;
		if (kind == TIMER_RETRY && x.r.retry_due_ms == due)
			x.r.retry_due_ms = 0;
		else if (kind == TIMER_TIMEOUT && x.r.timeout_due_ms == due)
			x.r.timeout_due_ms = 0;
		else if (kind == TIMER_DEADLINE && x.deadline_due == due)
			x.deadline_due = 0;
		rc = task_save(t, &x);
		trec_fini(&x);
		if (rc < 0)
			return rc;
		if ((rc = fn(t, id, kind, arg)) != 0)
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Outbox */

int store_outbox_put(struct store_txn *t, const char *topic, const uint8_t *payload,
		     size_t len, unsigned flags, uint64_t *seq_out)
{
	struct meta *m;
	size_t tl = strlen(topic);
	int rc;
	if (!t->write)
		return -EROFS;
	if (tl > 0xffff)
		return -EINVAL;
	if ((rc = meta_get(t, &m)) < 0)
		return rc;
	struct wbuf w = { 0 };
	uint8_t hdr[3] = { (uint8_t)flags, (uint8_t)(tl >> 8), (uint8_t)tl };
	w_raw(&w, hdr, 3);
	w_raw(&w, topic, tl);
	w_raw(&w, payload, len);
	uint8_t k[8];
	uint64_t seq = m->outbox_seq + 1;
	be64(k, seq);
	rc = w.err ? w.err : db_put(t, DB_OUTBOX, k, 8, w.p, w.len, MDB_APPEND);
	free(w.p);
	if (rc < 0)
		return rc;
	m->outbox_seq = seq;
	if (seq_out)
		*seq_out = seq;
	return 0;
}

int store_outbox_scan(struct store_txn *t, uint64_t after, store_outbox_fn fn, void *arg)
{
	MDB_cursor *c;
	uint8_t kb[8];
	be64(kb, after + 1);
	MDB_val k = mv(kb, 8), v;
	int rc = xl(t, mdb_cursor_open(t->txn, t->s->dbi[DB_OUTBOX], &c));
	if (rc < 0)
		return rc;
	int mrc = after == UINT64_MAX ? MDB_NOTFOUND : mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	while (mrc == 0 && rc == 0) {
		const uint8_t *p = v.mv_data;
		size_t tl;
		char buf[512], *topic = buf;
		if (k.mv_size != 8 || v.mv_size < 3 || (tl = (size_t)p[1] << 8 | p[2]) > v.mv_size - 3) {
			rc = EC_ESTORE;
			break;
		}
		/* up to 64 KiB (an older store may hold such a Response Topic) */
		if (tl >= sizeof buf && !(topic = malloc(tl + 1))) {
			rc = -ENOMEM;
			break;
		}
		memcpy(topic, p + 3, tl);
		topic[tl] = 0;
		rc = fn(rd_be64(k.mv_data), topic, p + 3 + tl, v.mv_size - 3 - tl, p[0], arg);
		if (topic != buf)
			free(topic);
		if (rc == 0)
			mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	if (rc == 1)
		rc = 0;
	else if (rc == 0 && mrc != MDB_NOTFOUND)
		rc = xl(t, mrc);
	mdb_cursor_close(c);
	return rc;
}

int store_outbox_del(struct store_txn *t, uint64_t seq)
{
	uint8_t k[8];
	be64(k, seq);
	MDB_val key = mv(k, 8);
	return xl(t, mdb_del(t->txn, t->s->dbi[DB_OUTBOX], &key, NULL));
}

/* ------------------------------------------------------------------------ */
/* Agents */

int store_agent_put(struct store_txn *t, const char *agent, const uint8_t *blob, size_t len)
{
	if (!t->write)
		return -EROFS;
	size_t kl = strlen(agent);
	if (kl == 0 || kl > TASK_ID_MAX)
		return -EINVAL;
	return db_put(t, DB_AGENTS, agent, kl, blob, len, 0);
}

struct agent_cb {
	store_agent_fn fn;
	void *arg;
};

static int scan_agent_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	struct agent_cb *cb = arg;
	char id[TASK_ID_MAX + 1];
	if (k->mv_size == 0 || k->mv_size > TASK_ID_MAX)
		return EC_ESTORE;
	memcpy(id, k->mv_data, k->mv_size);
	id[k->mv_size] = 0;
	return cb->fn(id, v->mv_data, v->mv_size, cb->arg);
}

int store_agents_scan(struct store_txn *t, store_agent_fn fn, void *arg)
{
	struct agent_cb cb = { fn, arg };
	return scan_prefix(t, DB_AGENTS, NULL, 0, scan_agent_cb, &cb);
}

int store_outbox_last(struct store_txn *t, uint64_t *out)
{
	struct meta m; /* not meta_get(): asking must not make the commit write */
	int rc = 0;
	if (t->m_loaded)
		m = *t->m;
	else
		rc = meta_read(t, &m);
	if (rc == 0)
		*out = m.outbox_seq;
	return rc;
}

int store_outbox_count(struct store_txn *t, uint64_t *out)
{
	MDB_stat st;
	int rc = xl(t, mdb_stat(t->txn, t->s->dbi[DB_OUTBOX], &st));
	if (rc == 0)
		*out = st.ms_entries;
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Invariants */

struct check {
	char *why;
	size_t why_len;
	uint64_t counts[TS__COUNT];
	uint64_t edges, timers, ready, dead, results, history;
	uint64_t lease, seq;    /* the largest stored: the counters are ahead */
	struct { char name[STORE_SOURCE_MAX + 1]; uint64_t n; } *src;
	size_t nsrc, capsrc;
	uint32_t *slot;         /* open addressing: 1 + index into src, 0 = free */
	size_t nslot;           /* a power of two, at least twice nsrc */
};

static int bad(struct check *k, const char *fmt, const char *a, const char *b)
{
	if (k->why && k->why_len)
		snprintf(k->why, k->why_len, fmt, a, b);
	return EC_ESTORE;
}

/* Sources are looked up once per non-final task and once per counter: by
 * hash, since a linear search made fsck quadratic (60,000 sources, 14 s). */
static size_t src_slot(const struct check *k, const char *name)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (const char *p = name; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	size_t mask = k->nslot - 1, i = h & mask;
	while (k->slot[i] && strcmp(k->src[k->slot[i] - 1].name, name) != 0)
		i = (i + 1) & mask;
	return i;
}

static uint64_t *src_count(const struct check *k, const char *name)
{
	size_t i = k->nslot ? src_slot(k, name) : 0;
	return k->nslot && k->slot[i] ? &k->src[k->slot[i] - 1].n : NULL;
}

static int src_rehash(struct check *k)
{
	size_t n = k->nslot ? k->nslot * 2 : 64;
	uint32_t *slot = calloc(n, sizeof *slot);
	if (!slot)
		return -ENOMEM;
	free(k->slot);
	k->slot = slot;
	k->nslot = n;
	for (size_t i = 0; i < k->nsrc; i++)
		k->slot[src_slot(k, k->src[i].name)] = (uint32_t)i + 1;
	return 0;
}

static int check_source(struct check *k, const char *name)
{
	uint64_t *n = src_count(k, name);
	if (n) {
		(*n)++;
		return 0;
	}
	if (2 * (k->nsrc + 1) > k->nslot && src_rehash(k) < 0)
		return -ENOMEM;
	if (k->nsrc == k->capsrc) {
		size_t cap = k->capsrc ? k->capsrc * 2 : 8;
		void *p = realloc(k->src, cap * sizeof *k->src);
		if (!p)
			return -ENOMEM;
		k->src = p;
		k->capsrc = cap;
	}
	snprintf(k->src[k->nsrc].name, sizeof k->src[k->nsrc].name, "%s", name);
	k->src[k->nsrc++].n = 1;
	k->slot[src_slot(k, k->src[k->nsrc - 1].name)] = (uint32_t)k->nsrc;
	return 0;
}

static int has_key(struct store_txn *t, int db, const void *key, size_t kl, MDB_val *v)
{
	MDB_val tmp;
	return db_get(t, db, key, kl, v ? v : &tmp) == 0;
}

static int check_task(struct store_txn *t, const MDB_val *kv, const MDB_val *vv, void *arg)
{
	struct check *k = arg;
	struct trec x;
	uint8_t key[9 + TASK_FULLID_MAX];
	MDB_val v;
	int rc = trec_decode(vv, &x);
	if (rc < 0) {
		/* bad() takes strings: the key, cut to what an id can be */
		char kid[TASK_FULLID_MAX + 1];
		size_t l = kv->mv_size < TASK_FULLID_MAX ? kv->mv_size : TASK_FULLID_MAX;
		memcpy(kid, kv->mv_data, l);
		kid[l] = 0;
		return bad(k, "task record %s undecodable%s", kid, "");
	}
	const struct task_rec *r = &x.r;
	const char *id = r->spec.id;
	enum task_state st = r->state;
	if (kv->mv_size != strlen(id) || memcmp(kv->mv_data, id, kv->mv_size) != 0) {
		rc = bad(k, "task key does not match id %s%s", id, "");
		goto out;
	}
	k->counts[st]++;
	if (r->lease > k->lease)
		k->lease = r->lease;
	if (st == TS_READY && x.ready_seq > k->seq)
		k->seq = x.ready_seq;
	if (st == TS_DEAD && x.dead_seq > k->seq)
		k->seq = x.dead_seq;
	/* up to schema 2 (a read-only open has not upgraded) every task is */
	if ((t->s->schema < 3 || state_indexed(st)) &&
	    !has_key(t, DB_STATE, key, state_key(key, st, id), NULL)) {
		rc = bad(k, "task %s has no state index entry for %s", id, task_state_name(st));
		goto out;
	}
	/* Upstreams and edges. */
	uint32_t open = 0;
	bool all_ok = true;
	for (uint32_t i = 0; i < r->spec.ndeps; i++) {
		const char *d = r->spec.deps[i];
		enum task_state ds;
		if (task_state_of(t, d, &ds) < 0) {
			rc = bad(k, "task %s: upstream %s missing", id, d);
			goto out;
		}
		bool dup = dep_repeated(&r->spec, i);
		if (!task_state_final(ds) && !dup)
			open++;
		if (ds != TS_SUCCEEDED)
			all_ok = false;
		MDB_val ek = mv(d, strlen(d)), ev = mv(id, strlen(id));
		MDB_cursor *c;
		if ((rc = xl(t, mdb_cursor_open(t->txn, t->s->dbi[DB_RDEPS], &c))) < 0)
			goto out;
		int mrc = mdb_cursor_get(c, &ek, &ev, MDB_GET_BOTH);
		mdb_cursor_close(c);
		if (mrc) {
			rc = bad(k, "edge %s -> %s missing from rdeps", d, id);
			goto out;
		}
		if (!dup)
			k->edges++;
	}
	if (st == TS_ACCEPTED || st == TS_WAITING) {
		if (r->unfinished != open) {
			rc = bad(k, "task %s: unfinished count wrong (%s)", id, "stored vs upstreams");
			goto out;
		}
		if (st == TS_WAITING && open == 0) {
			rc = bad(k, "task %s waits with every upstream final%s", id, "");
			goto out;
		}
	} else if (r->unfinished != 0) {
		rc = bad(k, "task %s: %s with a non-zero unfinished count", id, task_state_name(st));
		goto out;
	}
	/* all_succeeded can only have run after every upstream succeeded (no
	 * upstream of it can be re-opened: only dead tasks are retried, and a
	 * dead upstream skips it). all_done/any_failed dependents may see an
	 * upstream re-opened by an operator's retry after they started. */
	if ((st == TS_READY || state_runs(st)) && r->spec.run_if == RUN_IF_ALL_SUCCEEDED &&
	    !all_ok) {
		rc = bad(k, "task %s is %s before its upstreams succeeded", id, task_state_name(st));
		goto out;
	}
	/* Ready queue. */
	if (st == TS_READY) {
		if (!has_key(t, DB_READY, key, ready_key(key, ready_priority(&r->spec), x.ready_seq), &v) ||
		    v.mv_size != 8 + strlen(id) || memcmp((uint8_t *)v.mv_data + 8, id, strlen(id))) {
			rc = bad(k, "ready task %s not in the ready queue%s", id, "");
			goto out;
		}
		k->ready++;
	}
	/* Timers mirror the record. */
	if (r->retry_due_ms) {
		if (st != TS_RETRY_WAIT || !has_key(t, DB_TIMERS, key, timer_key(key, r->retry_due_ms,
									      TIMER_RETRY, id), NULL)) {
			rc = bad(k, "task %s: retry timer does not match (%s)", id, task_state_name(st));
			goto out;
		}
		k->timers++;
	}
	if (r->timeout_due_ms) {
		if (!state_runs(st) || !has_key(t, DB_TIMERS, key, timer_key(key, r->timeout_due_ms,
									       TIMER_TIMEOUT, id), NULL)) {
			rc = bad(k, "task %s: timeout timer does not match (%s)", id, task_state_name(st));
			goto out;
		}
		k->timers++;
	}
	if (x.deadline_due) {
		if (task_state_final(st) || !has_key(t, DB_TIMERS, key, timer_key(key, x.deadline_due,
										     TIMER_DEADLINE, id), NULL)) {
			rc = bad(k, "task %s: deadline timer does not match (%s)", id, task_state_name(st));
			goto out;
		}
		k->timers++;
	}
	/* Dead letters and results. */
	if (st == TS_DEAD) {
		be64(key, x.dead_seq);
		if (!has_key(t, DB_DEAD, key, 8, &v) || strnlen(v.mv_data, v.mv_size) != strlen(id) ||
		    memcmp(v.mv_data, id, strlen(id))) {
			rc = bad(k, "dead task %s has no dead letter%s", id, "");
			goto out;
		}
		k->dead++;
	}
	if ((st == TS_SUCCEEDED || st == TS_DEAD) && !has_key(t, DB_RESULTS, id, strlen(id), NULL)) {
		rc = bad(k, "final task %s has no result row%s", id, "");
		goto out;
	}
	k->results += st == TS_SUCCEEDED || st == TS_DEAD;
	k->history += x.hist_next < STORE_HISTORY_MAX ? x.hist_next : STORE_HISTORY_MAX;
	if (r->spec.workflow && !has_key(t, DB_WORKFLOWS, r->spec.workflow,
					  strlen(r->spec.workflow), NULL)) {
		rc = bad(k, "step %s: workflow %s missing", id, r->spec.workflow);
		goto out;
	}
	if (!task_state_final(st))
		rc = check_source(k, r->source);
out:
	trec_fini(&x);
	return rc;
}

struct wf_check {
	struct check *k;
	uint32_t counts[TS__COUNT];
	uint32_t total;
};

static int wf_step_count(const struct task_rec *r, void *arg)
{
	struct wf_check *w = arg;
	w->counts[r->state]++;
	w->total++;
	return 0;
}

static int check_wf_cb(struct store_txn *t, const MDB_val *kv, const MDB_val *vv, void *arg)
{
	struct check *k = arg;
	char id[TASK_ID_MAX + 1];
	struct workflow_rec wf;
	if (kv->mv_size > TASK_ID_MAX)
		return bad(k, "workflow key too long%s%s", "", "");
	memcpy(id, kv->mv_data, kv->mv_size);
	id[kv->mv_size] = 0;
	if (wf_decode(id, vv, &wf) < 0)
		return bad(k, "workflow %s undecodable%s", id, "");
	struct wf_check w = { .k = k };
	int rc = store_workflow_steps(t, id, wf_step_count, &w);
	if (rc == 0 && (w.total != wf.total || memcmp(w.counts, wf.counts, sizeof w.counts)))
		rc = bad(k, "workflow %s: counts do not match its steps%s", id, "");
	workflow_rec_fini(&wf);
	return rc;
}

static int count_cb(struct store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
	(*(uint64_t *)arg)++;
	return 0;
}

static int count_entries(struct store_txn *t, int db, uint64_t *n)
{
	MDB_stat st;
	if (in_meta(t->s, db)) {
		*n = 0;
		return scan_prefix(t, db, NULL, 0, count_cb, n);
	}
	int rc = xl(t, mdb_stat(t->txn, t->s->dbi[db], &st));
	if (rc == 0)
		*n = st.ms_entries;
	return rc;
}

static int check_pending_cb(struct store_txn *t, const MDB_val *kv, const MDB_val *vv, void *arg)
{
	struct check *k = arg;
	char name[STORE_SOURCE_MAX + 1];
	uint64_t want = 0, have = vv->mv_size == 8 ? rd_le64(vv->mv_data) : UINT64_MAX;
	size_t l = kv->mv_size < STORE_SOURCE_MAX ? kv->mv_size : STORE_SOURCE_MAX;
	memcpy(name, kv->mv_data, l);
	name[l] = 0;
	uint64_t *n = src_count(k, name);
	if (n) {
		want = *n;
		*n = 0; /* seen */
	}
	if (want != have)
		return bad(k, "pending count of source '%s' wrong%s", name, "");
	return 0;
}

int store_check(struct store_txn *t, char *why, size_t why_len)
{
	struct check k = { .why = why, .why_len = why_len };
	struct meta mm, *m = &mm;
	uint64_t n;
	int rc;
	if (why && why_len)
		why[0] = 0;
	if ((rc = scan_prefix(t, DB_TASKS, NULL, 0, check_task, &k)) < 0)
		goto out;
	if ((rc = t->write ? meta_get(t, &m) : meta_read(t, &mm)) < 0)
		goto out;
	uint64_t all = 0;
	for (int i = 0; i < TS__COUNT; i++) {
		if (k.counts[i] != m->counts[i]) {
			rc = bad(&k, "count of state %s wrong%s", task_state_name(i), "");
			goto out;
		}
		all += k.counts[i];
	}
	/* A counter behind what is stored would hand out a lease again (a
	 * stale result taken for a new one) or a ready or dead key again (a
	 * row overwritten). */
	if (m->lease < k.lease || m->seq < k.seq) {
		rc = bad(&k, "%s counter behind a stored one%s", m->lease < k.lease ? "lease" : "sequence",
			 "");
		goto out;
	}
	/* Each table's entries, against what the task records account for. */
	const struct { int db; uint64_t want; const char *what; } tables[] = {
		{ DB_STATE, t->s->schema < 3 ? all : k.counts[TS_DISPATCHED] + k.counts[TS_RUNNING],
		  "state index has entries for tasks not at an agent" },
		{ DB_RDEPS, k.edges, "rdeps holds edges no task declares" },
		{ DB_READY, k.ready, "ready queue holds tasks that are not ready" },
		{ DB_TIMERS, k.timers, "timers table holds timers no task mirrors" },
		{ DB_DEAD, k.dead, "dead letters for tasks that are not dead" },
		{ DB_RESULTS, k.results, "result rows of tasks that are gone or not final" },
		{ DB_HISTORY, k.history, "history rows of tasks that are gone" },
	};
	for (size_t i = 0; i < sizeof tables / sizeof *tables; i++) {
		if ((rc = count_entries(t, tables[i].db, &n)) < 0)
			goto out;
		if (n != tables[i].want) {
			rc = bad(&k, "%s%s", tables[i].what, "");
			goto out;
		}
	}
	if ((rc = scan_prefix(t, DB_WORKFLOWS, NULL, 0, check_wf_cb, &k)) < 0)
		goto out;
	if ((rc = scan_prefix(t, DB_PENDING, NULL, 0, check_pending_cb, &k)) < 0)
		goto out;
	for (size_t i = 0; i < k.nsrc; i++)
		if (k.src[i].n) {
			rc = bad(&k, "source '%s' has pending tasks but no counter%s", k.src[i].name, "");
			goto out;
		}
out:
	free(k.src);
	free(k.slot);
	return rc < 0 ? (rc == -ENOMEM ? rc : EC_ESTORE) : 0;
}
