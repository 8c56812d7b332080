/* SPDX-License-Identifier: MIT */
/*
 * codec_sub.c - validating a submission (a task, a workflow, a batch) or a
 * control message and filling the task model (task.h) from it.
 *
 * Both encodings arrive here as the same tree (codec_int.h): JSON is first
 * converted to canonical CBOR, CBOR is built directly. One walker then checks
 * every field against DESIGN 3.1/3.2, copies workflow defaults into steps,
 * and checks what needs the whole submission: duplicate ids, dependencies
 * between steps and cycles. That last part is iterative and linear (a hash
 * table of ids, Kahn's algorithm, then a walk over what Kahn could not
 * order), because a submission may hold max_tasks_per_submission tasks.
 *
 * Deliberately not here: anything that needs the store (a plain task's
 * dependency on an existing task, idempotency, quotas) and defaults from
 * configuration (unset fields stay unset, task.h).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "codec_int.h"
#include "edgecoord/err.h"

/* Durations (timeout, retry delays) longer than ten years are refused. */
#define DURATION_MAX_S (10.0 * 365 * 86400)
/* 9999-12-31T23:59:59.999Z */
#define DEADLINE_MAX_MS INT64_C(253402300799999)
#define AFFINITY_KEY_MAX TASK_ID_MAX
#define AFFINITY_VALUE_MAX 256
#define WHEN_FIELD_MAX 256

enum field {
	FD_TASK_ID, FD_TYPE, FD_DESCRIPTION, FD_PAYLOAD, FD_DEPENDS_ON, FD_PRIORITY,
	FD_TIMEOUT, FD_DEADLINE, FD_RETRY, FD_AGENT, FD_AFFINITY, FD_RUN_IF, FD_WHEN,
	FD_STEPS, FD__COUNT
};

static const char *const field_names[FD__COUNT] = {
	"task_id", "type", "description", "payload", "depends_on", "priority",
	"timeout", "deadline", "retry_policy", "agent", "affinity", "run_if", "when",
	"steps",
};

#define BIT(f) (1u << (f))
/* DESIGN 3.1 for a task or a step; 3.2 for a workflow */
#define TASK_FIELDS (BIT(FD__COUNT) - 1 - BIT(FD_STEPS))
#define WORKFLOW_FIELDS                                                                    \
	(BIT(FD_TASK_ID) | BIT(FD_TYPE) | BIT(FD_DESCRIPTION) | BIT(FD_STEPS) |            \
	 BIT(FD_PRIORITY) | BIT(FD_TIMEOUT) | BIT(FD_DEADLINE) | BIT(FD_RETRY) |           \
	 BIT(FD_AFFINITY))
/* what a step inherits from its workflow when it does not set it */
#define DEFAULT_FIELDS                                                                     \
	(BIT(FD_PRIORITY) | BIT(FD_TIMEOUT) | BIT(FD_DEADLINE) | BIT(FD_RETRY) |           \
	 BIT(FD_AFFINITY))

#define COLLAB_TYPE "collaborative_task"

enum ctx { CTX_TASK, CTX_BATCH, CTX_STEP, CTX_WORKFLOW };

struct walk {
	const struct ctree *t;
	const struct limits *lim;
	struct sub_error *err;
	const char *wf;          /* the workflow's id while walking its steps */
	const char *task;        /* full id of the task being walked, or "" */
};

/* ---- errors ---- */

static int failv(struct sub_error *e, int code, const char *task, const char *fmt, va_list ap)
{
	e->code = code;
	snprintf(e->task_id, sizeof e->task_id, "%s", task ? task : "");
	vsnprintf(e->detail, sizeof e->detail, fmt, ap);
	return code;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int fail(struct walk *w, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	failv(w->err, code, w->task, fmt, ap);
	va_end(ap);
	return code;
}

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int fail_err(struct sub_error *e, int code, const char *task, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	failv(e, code, task, fmt, ap);
	va_end(ap);
	return code;
}

/* Untrusted text made safe to quote in a detail: at most 40 bytes, printable
 * ASCII only. */
static const char *show(const uint8_t *s, size_t n, char out[48])
{
	size_t k = 0;
	for (size_t i = 0; i < n && k < 40; i++)
		out[k++] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'' ? (char)s[i] : '?';
	if (n > 40) {
		memcpy(out + k, "...", 3);
		k += 3;
	}
	out[k] = 0;
	return out;
}

/* ---- reading nodes ---- */

static const struct cnode *node(const struct walk *w, uint32_t i)
{
	return &w->t->n[ctree_untag(w->t, i)];
}

static bool text_is(const struct cnode *n, const char *lit)
{
	size_t l = strlen(lit);
	return n->type == CN_TEXT && n->n == l && memcmp(n->s, lit, l) == 0;
}

static bool get_int(const struct cnode *n, int64_t *v)
{
	if (n->type == CN_UINT && n->u <= INT64_MAX) {
		*v = (int64_t)n->u;
		return true;
	}
	if (n->type == CN_NEGINT && n->u <= INT64_MAX) {
		*v = -1 - (int64_t)n->u;
		return true;
	}
	return false;
}

static bool get_number(const struct cnode *n, double *v)
{
	int64_t i;
	if (get_int(n, &i)) {
		*v = (double)i;
		return true;
	}
	if (n->type == CN_UINT || n->type == CN_NEGINT) { /* beyond int64: huge */
		*v = n->type == CN_UINT ? 1e20 : -1e20;
		return true;
	}
	if (n->type == CN_FLOAT) {
		*v = n->d;
		return true;
	}
	return false;
}

/* Seconds (fractions allowed) -> milliseconds, rounded up so that any
 * positive duration stays positive. */
static bool get_duration(const struct cnode *n, bool zero_ok, int64_t *ms)
{
	double s;
	if (!get_number(n, &s) || !isfinite(s) || s < 0 || (s == 0 && !zero_ok) ||
	    s > DURATION_MAX_S)
		return false;
	double x = s * 1000.0;
	*ms = (int64_t)x; /* truncation; DURATION_MAX_S keeps it in range */
	if ((double)*ms < x)
		++*ms;
	return true;
}

static bool id_ok(const struct cnode *n)
{
	return n->type == CN_TEXT && task_id_valid((const char *)n->s, n->n);
}

/* "ID" or "WORKFLOW:STEP", both halves ids. */
static bool fullid_ok(const uint8_t *s, size_t n)
{
	const uint8_t *colon = memchr(s, ':', n);
	if (!colon)
		return task_id_valid((const char *)s, n);
	size_t a = (size_t)(colon - s);
	return task_id_valid((const char *)s, a) &&
	       task_id_valid((const char *)colon + 1, n - a - 1);
}

/* Text without NUL, at most max bytes, copied (new). */
static int dup_text(struct walk *w, const struct cnode *n, size_t max, const char *what,
		    char **out)
{
	if (n->type != CN_TEXT)
		return fail(w, EC_EINVALID_FIELD, "%s: must be text", what);
	if (n->n > max)
		return fail(w, EC_EINVALID_FIELD, "%s: longer than %zu bytes", what, max);
	if (memchr(n->s, 0, n->n))
		return fail(w, EC_EINVALID_FIELD, "%s: must not contain NUL", what);
	char *s = malloc(n->n + 1);
	if (!s)
		return fail(w, -ENOMEM, "out of memory");
	if (n->n)
		memcpy(s, n->s, n->n);
	s[n->n] = 0;
	*out = s;
	return 0;
}

static char *join_id(const char *wf, const uint8_t *s, size_t n)
{
	size_t wl = wf ? strlen(wf) + 1 : 0;
	char *r = malloc(wl + n + 1);
	if (!r)
		return NULL;
	if (wf) {
		memcpy(r, wf, wl - 1);
		r[wl - 1] = ':';
	}
	memcpy(r + wl, s, n);
	r[wl + n] = 0;
	return r;
}

/* Canonical CBOR of any value (new), within max_payload_bytes. */
static int canonical(struct walk *w, uint32_t i, const char *what, uint8_t **out, size_t *len)
{
	struct ec_cbor_w cw;
	ec_cbor_w_init(&cw);
	int rc = ctree_encode(w->t, i, &cw);
	if (rc == CODEC_EDUPKEY) {
		ec_cbor_w_fini(&cw);
		return fail(w, EC_EINVALID_FIELD, "%s: a map holds the same key twice", what);
	}
	if (rc < 0) {
		ec_cbor_w_fini(&cw);
		return fail(w, rc, "out of memory");
	}
	if (cw.len > w->lim->max_payload_bytes) {
		size_t n = cw.len;
		ec_cbor_w_fini(&cw);
		return fail(w, EC_ETOO_LARGE, "%s: %zu bytes encoded, over the limit of %zu", what,
			    n, w->lim->max_payload_bytes);
	}
	/* whatever is stored must be publishable to a JSON submitter later:
	 * only a non-text map key whose JSON text is huge is not */
	char *json = NULL;
	size_t jn;
	rc = codec_cbor_to_json(cw.buf, cw.len, &json, &jn);
	free(json);
	if (rc < 0) {
		ec_cbor_w_fini(&cw);
		if (rc == -ENOMEM)
			return fail(w, rc, "out of memory");
		return fail(w, EC_EINVALID_FIELD, "%s: a map key too large to show as JSON", what);
	}
	*out = ec_cbor_w_take(&cw, len);
	return 0;
}

/* ---- RFC 3339 ---- */

static bool digits(const char *s, int n, int *v)
{
	*v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		*v = *v * 10 + (s[i] - '0');
	}
	return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/* YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM), 'T'/'Z' in either case. */
static bool parse_rfc3339(const uint8_t *p, size_t n, int64_t *ms)
{
	char s[64];
	if (n < 20 || n >= sizeof s)
		return false;
	memcpy(s, p, n);
	s[n] = 0;
	int Y, M, D, h, m, sec;
	if (!digits(s, 4, &Y) || s[4] != '-' || !digits(s + 5, 2, &M) || s[7] != '-' ||
	    !digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2, &h) ||
	    s[13] != ':' || !digits(s + 14, 2, &m) || s[16] != ':' || !digits(s + 17, 2, &sec))
		return false;
	static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
	if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] + (M == 2 && leap) || h > 23 ||
	    m > 59 || sec > 60)
		return false;
	size_t i = 19;
	int frac = 0;
	if (s[i] == '.') {
		int k = 0;
		i++;
		while (i < n && s[i] >= '0' && s[i] <= '9') {
			if (k < 3)
				frac = frac * 10 + (s[i] - '0');
			k++, i++;
		}
		if (k == 0)
			return false;
		for (; k < 3; k++)
			frac *= 10;
	}
	int off = 0;
	if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
		i++;
	} else if (i < n && (s[i] == '+' || s[i] == '-')) {
		int oh, om;
		if (n - i != 6 || !digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
		    !digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
			return false;
		off = (oh * 60 + om) * (s[i] == '-' ? -1 : 1);
		i += 6;
	} else {
		return false;
	}
	if (i != n)
		return false;
	int64_t t = days_from_civil(Y, M, D) * 86400 + h * 3600 + m * 60 + sec - off * 60;
	int64_t r = t * 1000 + frac;
	if (r < 0)
		return false;
	*ms = r;
	return true;
}

/* ---- one task ---- */

struct parsed {
	struct task_spec ts;
	unsigned set;          /* BIT(field) for every field present */
};

static int parse_priority(struct walk *w, const struct cnode *n, struct task_spec *ts)
{
	int64_t v;
	if (!get_int(n, &v) || v < 1 || v > 10)
		return fail(w, EC_EINVALID_FIELD, "priority: must be an integer 1..10");
	ts->priority = (uint8_t)v;
	return 0;
}

static int parse_timeout(struct walk *w, const struct cnode *n, struct task_spec *ts)
{
	if (!get_duration(n, false, &ts->timeout_ms))
		return fail(w, EC_EINVALID_FIELD,
			    "timeout: must be a number of seconds > 0 and at most %.0f",
			    DURATION_MAX_S);
	return 0;
}

static int parse_deadline(struct walk *w, const struct cnode *n, struct task_spec *ts)
{
	int64_t v;
	if (n->type == CN_TEXT && parse_rfc3339(n->s, n->n, &v) && v <= DEADLINE_MAX_MS) {
		ts->deadline_ms = v;
		return 0;
	}
	if (get_int(n, &v) && v >= 0 && v <= DEADLINE_MAX_MS) {
		ts->deadline_ms = v;
		return 0;
	}
	return fail(w, EC_EINVALID_FIELD,
		    "deadline: must be an RFC 3339 time or epoch milliseconds >= 0");
}

static int parse_retry(struct walk *w, uint32_t mi, struct task_spec *ts)
{
	const struct ctree *t = w->t;
	mi = ctree_untag(t, mi);
	if (t->n[mi].type != CN_MAP)
		return fail(w, EC_EINVALID_FIELD, "retry_policy: must be a map");
	static const char *const keys[] = { "max_attempts", "backoff", "initial_delay",
					    "max_delay", "jitter" };
	struct retry_policy rp = { .max_attempts = -1, .backoff = BACKOFF_UNSET, .jitter = -1,
				   .initial_ms = -1, .max_ms = -1 };
	unsigned seen = 0;
	char sh[48];
	for (uint32_t k = mi + 1; k < t->n[mi].end; k = t->n[t->n[k].end].end) {
		const struct cnode *key = node(w, k), *v = node(w, t->n[k].end);
		int f = -1;
		for (int j = 0; j < 5 && f < 0; j++)
			if (text_is(key, keys[j]))
				f = j;
		if (f < 0)
			return fail(w, EC_EUNKNOWN_FIELD, "task '%s': unknown field 'retry_policy.%s'",
				    w->task, key->type == CN_TEXT ? show(key->s, key->n, sh) : "?");
		if (seen & BIT(f))
			return fail(w, EC_EINVALID_FIELD, "retry_policy: '%s' given twice", keys[f]);
		seen |= BIT(f);
		int64_t i;
		switch (f) {
		case 0:
			if (!get_int(v, &i) || i < 1 || i > 1000)
				return fail(w, EC_EINVALID_FIELD,
					    "retry_policy.max_attempts: must be an integer 1..1000");
			rp.max_attempts = (int32_t)i;
			break;
		case 1:
			if (text_is(v, "none"))
				rp.backoff = BACKOFF_NONE;
			else if (text_is(v, "fixed"))
				rp.backoff = BACKOFF_FIXED;
			else if (text_is(v, "exponential"))
				rp.backoff = BACKOFF_EXPONENTIAL;
			else
				return fail(w, EC_EINVALID_FIELD,
					    "retry_policy.backoff: must be none, fixed or exponential");
			break;
		case 2:
		case 3:
			if (!get_duration(v, true, f == 2 ? &rp.initial_ms : &rp.max_ms))
				return fail(w, EC_EINVALID_FIELD,
					    "retry_policy.%s: must be a number of seconds >= 0 and at most %.0f",
					    keys[f], DURATION_MAX_S);
			break;
		case 4:
			if (v->type != CN_TRUE && v->type != CN_FALSE)
				return fail(w, EC_EINVALID_FIELD, "retry_policy.jitter: must be a boolean");
			rp.jitter = v->type == CN_TRUE;
			break;
		}
	}
	if (rp.initial_ms >= 0 && rp.max_ms >= 0 && rp.max_ms < rp.initial_ms)
		return fail(w, EC_EINVALID_FIELD,
			    "retry_policy: max_delay must not be less than initial_delay");
	ts->has_retry = true;
	ts->retry = rp;
	return 0;
}

static int kv_cmp(const void *a, const void *b)
{
	return strcmp(((const struct kv *)a)->key, ((const struct kv *)b)->key);
}

static int parse_affinity(struct walk *w, uint32_t mi, struct task_spec *ts)
{
	const struct ctree *t = w->t;
	mi = ctree_untag(t, mi);
	if (t->n[mi].type != CN_MAP)
		return fail(w, EC_EINVALID_FIELD, "affinity: must be a map of text to text");
	uint64_t np = t->n[mi].u;
	if (np == 0)
		return 0;
	struct kv *kv = calloc(np, sizeof *kv);
	if (!kv)
		return fail(w, -ENOMEM, "out of memory");
	ts->affinity = kv; /* freed with ts from here on */
	for (uint32_t k = mi + 1; k < t->n[mi].end; k = t->n[t->n[k].end].end) {
		const struct cnode *key = node(w, k), *v = node(w, t->n[k].end);
		if (key->type != CN_TEXT || key->n == 0)
			return fail(w, EC_EINVALID_FIELD, "affinity: keys must be non-empty text");
		int rc = dup_text(w, key, AFFINITY_KEY_MAX, "affinity key", &kv[ts->naffinity].key);
		if (rc < 0)
			return rc;
		rc = dup_text(w, v, AFFINITY_VALUE_MAX, "affinity value", &kv[ts->naffinity].value);
		ts->naffinity++;
		if (rc < 0)
			return rc;
	}
	qsort(kv, ts->naffinity, sizeof *kv, kv_cmp);
	for (uint32_t i = 1; i < ts->naffinity; i++)
		if (strcmp(kv[i - 1].key, kv[i].key) == 0) {
			char sh[48];
			return fail(w, EC_EINVALID_FIELD, "affinity: key '%s' given twice",
				    show((const uint8_t *)kv[i].key, strlen(kv[i].key), sh));
		}
	return 0;
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int parse_deps(struct walk *w, uint32_t ai, struct task_spec *ts)
{
	const struct ctree *t = w->t;
	ai = ctree_untag(t, ai);
	if (t->n[ai].type != CN_ARRAY)
		return fail(w, EC_EINVALID_FIELD, "depends_on: must be an array of ids");
	uint64_t n = t->n[ai].u;
	if (n > w->lim->max_deps_per_task)
		return fail(w, EC_ETOO_LARGE, "depends_on: %llu dependencies, over the limit of %u",
			    (unsigned long long)n, w->lim->max_deps_per_task);
	if (n == 0)
		return 0;
	ts->deps = calloc(n, sizeof *ts->deps);
	if (!ts->deps)
		return fail(w, -ENOMEM, "out of memory");
	for (uint32_t c = ai + 1; c < t->n[ai].end; c = t->n[c].end) {
		const struct cnode *d = node(w, c);
		bool ok = d->type == CN_TEXT &&
			  (w->wf ? task_id_valid((const char *)d->s, d->n) : fullid_ok(d->s, d->n));
		if (!ok)
			return fail(w, EC_EINVALID_FIELD, w->wf ?
				    "depends_on: must hold sibling step ids ([A-Za-z0-9._-]{1,100})" :
				    "depends_on: must hold task ids ([A-Za-z0-9._-]{1,100}, or WORKFLOW:STEP)");
		if (!(ts->deps[ts->ndeps] = join_id(w->wf, d->s, d->n)))
			return fail(w, -ENOMEM, "out of memory");
		ts->ndeps++;
	}
	char **sorted = malloc(ts->ndeps * sizeof *sorted);
	if (!sorted)
		return fail(w, -ENOMEM, "out of memory");
	memcpy(sorted, ts->deps, ts->ndeps * sizeof *sorted);
	qsort(sorted, ts->ndeps, sizeof *sorted, str_cmp);
	int rc = 0;
	for (uint32_t i = 1; i < ts->ndeps && rc == 0; i++)
		if (strcmp(sorted[i - 1], sorted[i]) == 0)
			rc = fail(w, EC_EINVALID_FIELD, "depends_on: '%s' given twice", sorted[i]);
	free(sorted);
	return rc;
}

static int parse_when(struct walk *w, uint32_t mi, struct task_spec *ts)
{
	const struct ctree *t = w->t;
	mi = ctree_untag(t, mi);
	if (t->n[mi].type != CN_MAP)
		return fail(w, EC_EINVALID_FIELD, "when: must be a map of task, field and equals");
	uint32_t vi[3] = { 0, 0, 0 };
	static const char *const keys[] = { "task", "field", "equals" };
	unsigned seen = 0;
	char sh[48];
	for (uint32_t k = mi + 1; k < t->n[mi].end; k = t->n[t->n[k].end].end) {
		const struct cnode *key = node(w, k);
		int f = -1;
		for (int j = 0; j < 3 && f < 0; j++)
			if (text_is(key, keys[j]))
				f = j;
		if (f < 0)
			return fail(w, EC_EUNKNOWN_FIELD, "task '%s': unknown field 'when.%s'", w->task,
				    key->type == CN_TEXT ? show(key->s, key->n, sh) : "?");
		if (seen & BIT(f))
			return fail(w, EC_EINVALID_FIELD, "when: '%s' given twice", keys[f]);
		seen |= BIT(f);
		vi[f] = t->n[k].end;
	}
	if (seen != 7)
		return fail(w, EC_EINVALID_FIELD, "when: needs task, field and equals");
	const struct cnode *task = node(w, vi[0]), *field = node(w, vi[1]);
	if (!(w->wf ? id_ok(task) : task->type == CN_TEXT && fullid_ok(task->s, task->n)))
		return fail(w, EC_EINVALID_FIELD, "when.task: must be a task id");
	if (field->type != CN_TEXT || field->n == 0)
		return fail(w, EC_EINVALID_FIELD, "when.field: must be non-empty text");
	int rc = dup_text(w, field, WHEN_FIELD_MAX, "when.field", &ts->when_field);
	if (rc < 0)
		return rc;
	if (!(ts->when_task = join_id(w->wf, task->s, task->n)))
		return fail(w, -ENOMEM, "out of memory");
	return canonical(w, vi[2], "when.equals", &ts->when_equals, &ts->when_equals_len);
}

/*
 * One task map: a plain task, a batch item, a step (w->wf set) or the
 * workflow itself (CTX_WORKFLOW: only its own fields, which become the
 * defaults of its steps). Fills p; on failure p->ts may hold allocations the
 * caller frees.
 */
static int parse_task(struct walk *w, uint32_t mi, enum ctx ctx, struct parsed *p)
{
	const struct ctree *t = w->t;
	struct task_spec *ts = &p->ts;
	ts->timeout_ms = -1;
	ts->run_if = RUN_IF_ALL_SUCCEEDED;
	ts->retry = (struct retry_policy){ -1, BACKOFF_UNSET, -1, -1, -1 };
	w->task = "";
	mi = ctree_untag(t, mi);
	if (t->n[mi].type != CN_MAP)
		return fail(w, EC_EINVALID_FIELD, ctx == CTX_STEP ? "steps: each step must be a map" :
			    "each task in a batch must be a map");

	/* first pass: which fields, the id, duplicates, the first unknown key */
	uint32_t val[FD__COUNT] = { 0 };
	uint32_t unknown = 0;
	bool has_unknown = false;
	char sh[48];
	for (uint32_t k = mi + 1; k < t->n[mi].end; k = t->n[t->n[k].end].end) {
		const struct cnode *key = node(w, k);
		int f = -1;
		for (int j = 0; j < FD__COUNT && f < 0; j++)
			if (text_is(key, field_names[j]))
				f = j;
		if (f < 0) {
			if (!has_unknown)
				unknown = k, has_unknown = true;
			continue;
		}
		if (p->set & BIT(f))
			return fail(w, EC_EINVALID_FIELD, "'%s' given twice", field_names[f]);
		p->set |= BIT(f);
		val[f] = t->n[k].end;
	}
	if (!(p->set & BIT(FD_TASK_ID)))
		return fail(w, EC_EINVALID_FIELD, "task_id: required");
	const struct cnode *id = node(w, val[FD_TASK_ID]);
	if (!id_ok(id))
		return fail(w, EC_EINVALID_FIELD, "task_id: must be 1..100 of [A-Za-z0-9._-]");
	if (w->wf && ctx != CTX_WORKFLOW)
		snprintf(ts->id, sizeof ts->id, "%s:%.*s", w->wf, (int)id->n, (const char *)id->s);
	else
		snprintf(ts->id, sizeof ts->id, "%.*s", (int)id->n, (const char *)id->s);
	w->task = ts->id;

	if (!(p->set & BIT(FD_TYPE)))
		return fail(w, EC_EINVALID_FIELD, "type: required");
	const struct cnode *type = node(w, val[FD_TYPE]);
	if (!id_ok(type))
		return fail(w, EC_EINVALID_FIELD, "type: must be 1..100 of [A-Za-z0-9._-]");
	bool collab = text_is(type, COLLAB_TYPE), steps = p->set & BIT(FD_STEPS);
	if (ctx == CTX_BATCH && (collab || steps))
		return fail(w, EC_EINVALID_FIELD, "a batch cannot hold a workflow (%s)",
			    steps ? "steps" : "type " COLLAB_TYPE);
	if (ctx == CTX_STEP && (collab || steps))
		return fail(w, EC_EINVALID_FIELD, "workflows do not nest (%s in a step)",
			    steps ? "steps" : "type " COLLAB_TYPE);
	if (steps && !collab)
		return fail(w, EC_EINVALID_FIELD, "steps: only a task of type " COLLAB_TYPE
			    " has steps");
	if (collab && !steps)
		return fail(w, EC_EINVALID_FIELD, "type: a " COLLAB_TYPE " needs steps");

	unsigned allowed = ctx == CTX_WORKFLOW ? WORKFLOW_FIELDS : TASK_FIELDS;
	if (has_unknown || (p->set & ~allowed)) {
		const struct cnode *key = NULL;
		if (has_unknown)
			key = node(w, unknown);
		if (key && key->type == CN_TEXT)
			return fail(w, EC_EUNKNOWN_FIELD, "task '%s': unknown field '%s'", ts->id,
				    show(key->s, key->n, sh));
		if (key)
			return fail(w, EC_EUNKNOWN_FIELD, "task '%s': a key that is not text", ts->id);
		for (int f = 0; f < FD__COUNT; f++)
			if ((p->set & ~allowed) & BIT(f))
				return fail(w, EC_EUNKNOWN_FIELD, "task '%s': unknown field '%s'%s",
					    ts->id, field_names[f],
					    ctx == CTX_WORKFLOW ? " (not allowed on a workflow)" : "");
	}
	memcpy(ts->type, type->s, type->n);
	ts->type[type->n] = 0;

	int rc = 0;
	for (int f = FD_DESCRIPTION; f < FD__COUNT && rc == 0; f++) {
		if (!(p->set & BIT(f)))
			continue;
		const struct cnode *v = node(w, val[f]);
		switch (f) {
		case FD_DESCRIPTION:
			rc = dup_text(w, v, TASK_DESC_MAX, "description", &ts->description);
			break;
		case FD_PAYLOAD:
			rc = canonical(w, val[f], "payload", &ts->payload, &ts->payload_len);
			break;
		case FD_DEPENDS_ON:
			rc = parse_deps(w, val[f], ts);
			break;
		case FD_PRIORITY:
			rc = parse_priority(w, v, ts);
			break;
		case FD_TIMEOUT:
			rc = parse_timeout(w, v, ts);
			break;
		case FD_DEADLINE:
			rc = parse_deadline(w, v, ts);
			break;
		case FD_RETRY:
			rc = parse_retry(w, val[f], ts);
			break;
		case FD_AGENT:
			if (!id_ok(v))
				return fail(w, EC_EINVALID_FIELD, "agent: must be an agent id");
			rc = dup_text(w, v, TASK_ID_MAX, "agent", &ts->agent);
			break;
		case FD_AFFINITY:
			rc = parse_affinity(w, val[f], ts);
			break;
		case FD_RUN_IF:
			if (text_is(v, "all_succeeded"))
				ts->run_if = RUN_IF_ALL_SUCCEEDED;
			else if (text_is(v, "all_done"))
				ts->run_if = RUN_IF_ALL_DONE;
			else if (text_is(v, "any_failed"))
				ts->run_if = RUN_IF_ANY_FAILED;
			else
				rc = fail(w, EC_EINVALID_FIELD,
					  "run_if: must be all_succeeded, all_done or any_failed");
			break;
		case FD_WHEN:
			rc = parse_when(w, val[f], ts);
			break;
		default: /* steps: walked by the caller */
			break;
		}
	}
	if (rc < 0)
		return rc;
	if (ts->when_task) {
		bool found = false;
		for (uint32_t i = 0; i < ts->ndeps && !found; i++)
			found = strcmp(ts->deps[i], ts->when_task) == 0;
		if (!found)
			return fail(w, EC_EINVALID_FIELD, "when.task: '%s' is not in depends_on",
				    ts->when_task);
	}
	return 0;
}

/* ---- the whole submission: ids, dependencies, cycles ---- */

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211u;
	return h;
}

struct idmap {
	uint32_t *slot; /* task index + 1; 0 = empty */
	uint32_t mask;
};

static int idmap_init(struct idmap *m, uint32_t n)
{
	uint32_t cap = 16;
	while (cap < 2 * n)
		cap *= 2;
	m->slot = calloc(cap, sizeof *m->slot);
	m->mask = cap - 1;
	return m->slot ? 0 : -ENOMEM;
}

/* Index of id, or -1. */
static int64_t idmap_get(const struct idmap *m, const struct task_spec *tasks, const char *id)
{
	for (uint32_t h = (uint32_t)hash_str(id) & m->mask;; h = (h + 1) & m->mask) {
		uint32_t s = m->slot[h];
		if (s == 0)
			return -1;
		if (strcmp(tasks[s - 1].id, id) == 0)
			return s - 1;
	}
}

/* Insert task i; false if its id is already there. */
static bool idmap_put(struct idmap *m, const struct task_spec *tasks, uint32_t i)
{
	for (uint32_t h = (uint32_t)hash_str(tasks[i].id) & m->mask;; h = (h + 1) & m->mask) {
		uint32_t s = m->slot[h];
		if (s == 0) {
			m->slot[h] = i + 1;
			return true;
		}
		if (strcmp(tasks[s - 1].id, tasks[i].id) == 0)
			return false;
	}
}

static void append(char *buf, size_t cap, const char *s)
{
	size_t l = strlen(buf);
	if (l + 1 < cap)
		snprintf(buf + l, cap - l, "%s", s);
}

/*
 * Kahn's algorithm over the edges inside the submission; whatever it cannot
 * order lies on or behind a cycle, and every such task has a dependency that
 * is also unordered, so following those from any one of them must come back
 * to a task already seen: that loop is the cycle reported.
 */
static int check_graph(struct walk *w, struct task_spec *tasks, uint32_t n)
{
	struct idmap m = { 0 };
	uint32_t *off = NULL, *dep = NULL, *outdeg_off = NULL, *out = NULL, *indeg = NULL;
	uint32_t *queue = NULL, *pos = NULL;
	int rc = -ENOMEM;
	if (idmap_init(&m, n) < 0)
		goto out;
	for (uint32_t i = 0; i < n; i++) {
		if (!idmap_put(&m, tasks, i)) {
			w->task = tasks[i].id;
			rc = fail(w, EC_EDUPLICATE_ID, "task_id '%s' given twice", tasks[i].id);
			goto out;
		}
	}
	/* resolve dependencies to indexes: off/dep is CSR, one row per task */
	size_t ne = 0;
	for (uint32_t i = 0; i < n; i++)
		ne += tasks[i].ndeps;
	off = calloc((size_t)n + 1, sizeof *off);
	dep = malloc((ne ? ne : 1) * sizeof *dep);
	outdeg_off = calloc((size_t)n + 1, sizeof *outdeg_off);
	out = malloc((ne ? ne : 1) * sizeof *out);
	indeg = calloc(n, sizeof *indeg);
	queue = malloc((size_t)n * sizeof *queue);
	pos = malloc((size_t)n * sizeof *pos);
	if (!off || !dep || !outdeg_off || !out || !indeg || !queue || !pos)
		goto out;
	uint32_t e = 0;
	for (uint32_t i = 0; i < n; i++) {
		off[i] = e;
		for (uint32_t d = 0; d < tasks[i].ndeps; d++) {
			int64_t j = idmap_get(&m, tasks, tasks[i].deps[d]);
			if (j < 0) {
				if (w->wf) {
					w->task = tasks[i].id;
					rc = fail(w, EC_EUNKNOWN_DEP,
						  "depends_on: '%s' is not a step of workflow '%s'",
						  tasks[i].deps[d] + strlen(w->wf) + 1, w->wf);
					goto out;
				}
				continue; /* outside the batch: the store checks it */
			}
			dep[e++] = (uint32_t)j;
			indeg[i]++;
			outdeg_off[j + 1]++;
		}
	}
	off[n] = e;
	for (uint32_t i = 0; i < n; i++)
		outdeg_off[i + 1] += outdeg_off[i];
	/* out: for each task, the tasks that depend on it */
	memcpy(pos, outdeg_off, (size_t)n * sizeof *pos);
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t k = off[i]; k < off[i + 1]; k++)
			out[pos[dep[k]]++] = i;

	uint32_t head = 0, tail = 0;
	for (uint32_t i = 0; i < n; i++)
		if (indeg[i] == 0)
			queue[tail++] = i;
	while (head < tail) {
		uint32_t i = queue[head++];
		for (uint32_t k = outdeg_off[i]; k < outdeg_off[i + 1]; k++)
			if (--indeg[out[k]] == 0)
				queue[tail++] = out[k];
	}
	if (tail == n) {
		rc = 0;
		goto out;
	}
	/* indeg[i] > 0 now marks the unordered; pos[] becomes the walk order */
	uint32_t start = 0;
	while (indeg[start] == 0)
		start++;
	const uint32_t unseen = UINT32_MAX;
	for (uint32_t i = 0; i < n; i++)
		pos[i] = unseen;
	uint32_t steps = 0, cur = start;
	while (pos[cur] == unseen) {
		pos[cur] = steps;
		queue[steps++] = cur; /* the path walked */
		uint32_t next = cur;
		for (uint32_t k = off[cur]; k < off[cur + 1]; k++)
			if (indeg[dep[k]] > 0) {
				next = dep[k];
				break;
			}
		cur = next;
	}
	char detail[sizeof w->err->detail];
	snprintf(detail, sizeof detail, "cycle: ");
	const size_t room = sizeof detail - 32;
	for (uint32_t s = pos[cur]; s < steps; s++) {
		if (strlen(detail) + strlen(tasks[queue[s]].id) + 4 >= room) {
			append(detail, sizeof detail, "... -> ");
			break;
		}
		append(detail, sizeof detail, tasks[queue[s]].id);
		append(detail, sizeof detail, " -> ");
	}
	append(detail, sizeof detail, tasks[cur].id);
	w->task = tasks[cur].id;
	rc = fail(w, EC_ECYCLE, "%s", detail);
out:
	if (rc == -ENOMEM)
		fail(w, rc, "out of memory");
	free(m.slot);
	free(off);
	free(dep);
	free(outdeg_off);
	free(out);
	free(indeg);
	free(queue);
	free(pos);
	return rc;
}

/* Copy the workflow's defaults into a step that does not set them. */
static int inherit(struct parsed *step, const struct parsed *wf)
{
	struct task_spec *s = &step->ts;
	const struct task_spec *d = &wf->ts;
	unsigned take = wf->set & ~step->set & DEFAULT_FIELDS;
	if (take & BIT(FD_PRIORITY))
		s->priority = d->priority;
	if (take & BIT(FD_TIMEOUT))
		s->timeout_ms = d->timeout_ms;
	if (take & BIT(FD_DEADLINE))
		s->deadline_ms = d->deadline_ms;
	if (take & BIT(FD_RETRY)) {
		s->has_retry = d->has_retry;
		s->retry = d->retry;
	}
	if ((take & BIT(FD_AFFINITY)) && d->naffinity) {
		s->affinity = calloc(d->naffinity, sizeof *s->affinity);
		if (!s->affinity)
			return -ENOMEM;
		for (uint32_t i = 0; i < d->naffinity; i++) {
			s->affinity[i].key = strdup(d->affinity[i].key);
			s->affinity[i].value = strdup(d->affinity[i].value);
			s->naffinity++;
			if (!s->affinity[i].key || !s->affinity[i].value)
				return -ENOMEM;
		}
	}
	return 0;
}

/* The tasks of a batch or the steps of a workflow, array ai. */
static int parse_list(struct walk *w, uint32_t ai, enum ctx ctx, const struct parsed *wf,
		      struct submission *sub)
{
	const struct ctree *t = w->t;
	uint64_t n = t->n[ai].u;
	const char *what = ctx == CTX_STEP ? "steps" : "batch";
	w->task = wf ? wf->ts.id : "";
	if (n == 0)
		return fail(w, EC_EINVALID_FIELD, "%s: must not be empty", what);
	if (n > w->lim->max_tasks_per_submission)
		return fail(w, EC_ETOO_LARGE, "%s: %llu tasks, over the limit of %u", what,
			    (unsigned long long)n, w->lim->max_tasks_per_submission);
	sub->tasks = calloc(n, sizeof *sub->tasks);
	if (!sub->tasks)
		return fail(w, -ENOMEM, "out of memory");
	for (uint32_t c = ai + 1; c < t->n[ai].end; c = t->n[c].end) {
		struct parsed p = { 0 };
		sub->ntasks++; /* so that submission_fini frees it whatever happens */
		int rc = parse_task(w, c, ctx, &p);
		if (rc == 0 && wf) {
			if (inherit(&p, wf) < 0)
				rc = fail(w, -ENOMEM, "out of memory");
			else if (!(p.ts.workflow = strdup(wf->ts.id)))
				rc = fail(w, -ENOMEM, "out of memory");
		}
		sub->tasks[sub->ntasks - 1] = p.ts;
		if (rc < 0)
			return rc;
	}
	return check_graph(w, sub->tasks, sub->ntasks);
}

static int walk_submission(struct walk *w, uint32_t root, struct submission *sub)
{
	const struct ctree *t = w->t;
	root = ctree_untag(t, root);
	if (t->n[root].type == CN_ARRAY) {
		sub->kind = SUB_BATCH;
		return parse_list(w, root, CTX_BATCH, NULL, sub);
	}
	/* a map: a task, or a workflow when it says so by type or by steps */
	bool wf = false;
	for (uint32_t k = root + 1; k < t->n[root].end; k = t->n[t->n[k].end].end) {
		const struct cnode *key = node(w, k);
		if (text_is(key, "steps") ||
		    (text_is(key, "type") && text_is(node(w, t->n[k].end), COLLAB_TYPE)))
			wf = true;
	}
	if (!wf) {
		sub->kind = SUB_TASK;
		sub->tasks = calloc(1, sizeof *sub->tasks);
		if (!sub->tasks)
			return fail(w, -ENOMEM, "out of memory");
		struct parsed p = { 0 };
		int rc = parse_task(w, root, CTX_TASK, &p);
		sub->tasks[0] = p.ts;
		sub->ntasks = 1;
		if (rc == 0)
			memcpy(sub->id, p.ts.id, strlen(p.ts.id) + 1);
		/* only a task that names itself can form a cycle here */
		return rc < 0 ? rc : check_graph(w, sub->tasks, 1);
	}
	sub->kind = SUB_WORKFLOW;
	struct parsed wfp = { 0 };
	int rc = parse_task(w, root, CTX_WORKFLOW, &wfp);
	if (rc == 0) {
		uint32_t steps = 0;
		for (uint32_t k = root + 1; k < t->n[root].end; k = t->n[t->n[k].end].end)
			if (text_is(node(w, k), "steps"))
				steps = ctree_untag(t, t->n[k].end);
		memcpy(sub->id, wfp.ts.id, strlen(wfp.ts.id) + 1); /* a plain id: fits */
		sub->description = wfp.ts.description;
		wfp.ts.description = NULL;
		if (t->n[steps].type != CN_ARRAY) {
			w->task = wfp.ts.id;
			rc = fail(w, EC_EINVALID_FIELD, "steps: must be an array of steps");
		} else {
			w->wf = wfp.ts.id;
			rc = parse_list(w, steps, CTX_STEP, &wfp, sub);
		}
	}
	task_spec_fini(&wfp.ts);
	return rc;
}

/* ---- entry points ---- */

/* Bytes -> tree, whatever the encoding. *cbor receives the converted JSON
 * (new), which the tree points into. */
static int front(const uint8_t *buf, size_t len, enum encoding enc, const struct limits *lim,
		 struct ctree *t, uint8_t **cbor, struct sub_error *err)
{
	*cbor = NULL;
	if (len > lim->max_message_bytes)
		return fail_err(err, EC_ETOO_LARGE, "", "message is %zu bytes, over the limit of %zu",
				len, lim->max_message_bytes);
	if (enc == ENC_JSON) {
		size_t n;
		char dupkey[CODEC_DUPKEY_MAX] = "", sh[48];
		int rc = codec_json_canonical((const char *)buf, len, lim->max_depth, cbor, &n, dupkey);
		if (rc == CODEC_EDUPKEY)
			return fail_err(err, EC_EINVALID_FIELD, "", "key '%s' given twice in one object",
					show((const uint8_t *)dupkey, strlen(dupkey), sh));
		if (rc == EC_ETOO_LARGE)
			return fail_err(err, rc, "", "nested deeper than %u", lim->max_depth);
		if (rc == EC_EMALFORMED)
			return fail_err(err, rc, "", "not valid JSON");
		if (rc < 0)
			return fail_err(err, rc, "", "out of memory");
		buf = *cbor;
		len = n;
	}
	int rc = ctree_build(t, buf, len, lim->max_depth);
	if (rc < 0) {
		free(*cbor);
		*cbor = NULL;
		if (rc == EC_ETOO_LARGE)
			return fail_err(err, rc, "", "nested deeper than %u", lim->max_depth);
		if (rc == EC_EMALFORMED)
			return fail_err(err, rc, "", "not valid CBOR: %s", t->why ? t->why : "?");
		return fail_err(err, rc, "", "out of memory");
	}
	uint32_t root = ctree_untag(t, 0);
	if (t->n[root].type != CN_MAP && t->n[root].type != CN_ARRAY) {
		ctree_fini(t);
		free(*cbor);
		*cbor = NULL;
		return fail_err(err, EC_EMALFORMED, "", "the top level must be a map or an array");
	}
	return 0;
}

int codec_decode_submission(const uint8_t *buf, size_t len, enum encoding enc,
			    const struct limits *lim, struct submission *out,
			    struct sub_error *err)
{
	struct limits def;
	if (!lim) {
		limits_default(&def);
		lim = &def;
	}
	struct sub_error scratch;
	if (!err)
		err = &scratch;
	memset(err, 0, sizeof *err);
	struct ctree t;
	uint8_t *cbor;
	int rc = front(buf, len, enc, lim, &t, &cbor, err);
	if (rc < 0)
		return rc;
	struct walk w = { .t = &t, .lim = lim, .err = err, .task = "" };
	struct submission sub = { .enc = enc };
	rc = walk_submission(&w, 0, &sub);
	ctree_fini(&t);
	free(cbor);
	if (rc < 0) {
		submission_fini(&sub);
		return rc;
	}
	*out = sub;
	return 0;
}

int codec_decode_control(const uint8_t *buf, size_t len, enum encoding enc,
			 unsigned allowed, int *key, char *id, struct sub_error *err)
{
	static const struct {
		const char *name;
		int key;
	} keys[] = {
		{ "task_id", CTRL_KEY_TASK },
		{ "workflow", CTRL_KEY_WORKFLOW },
		{ "agent", CTRL_KEY_AGENT },
	};
	struct limits lim;
	limits_default(&lim);
	struct sub_error scratch;
	if (!err)
		err = &scratch;
	memset(err, 0, sizeof *err);
	struct ctree t;
	uint8_t *cbor;
	int rc = front(buf, len, enc, &lim, &t, &cbor, err);
	if (rc < 0)
		return rc;
	uint32_t root = ctree_untag(&t, 0);
	int found = 0;
	uint32_t val = 0;
	char sh[48];
	if (t.n[root].type != CN_MAP) {
		rc = fail_err(err, EC_EMALFORMED, "", "a control message must be a map");
		goto out;
	}
	for (uint32_t k = root + 1; k < t.n[root].end; k = t.n[t.n[k].end].end) {
		const struct cnode *kn = &t.n[ctree_untag(&t, k)];
		int which = 0;
		for (size_t j = 0; j < sizeof keys / sizeof keys[0]; j++)
			if (text_is(kn, keys[j].name) && (allowed & (unsigned)keys[j].key))
				which = keys[j].key;
		if (!which) {
			rc = fail_err(err, EC_EUNKNOWN_FIELD, "", "unknown field '%s'",
				      kn->type == CN_TEXT ? show(kn->s, kn->n, sh) : "?");
			goto out;
		}
		if (found) {
			rc = fail_err(err, EC_EINVALID_FIELD, "", found == which ?
				      "a key given twice" : "give exactly one id");
			goto out;
		}
		found = which;
		val = t.n[k].end;
	}
	if (!found) {
		rc = fail_err(err, EC_EINVALID_FIELD, "", "give exactly one id");
		goto out;
	}
	const struct cnode *v = &t.n[ctree_untag(&t, val)];
	bool ok = v->type == CN_TEXT &&
		  (found == CTRL_KEY_TASK ? fullid_ok(v->s, v->n) :
		   task_id_valid((const char *)v->s, v->n));
	const char *name = found == CTRL_KEY_TASK ? "task_id" :
			   found == CTRL_KEY_WORKFLOW ? "workflow" : "agent";
	if (!ok) {
		rc = fail_err(err, EC_EINVALID_FIELD, "", "%s: must be an id", name);
		goto out;
	}
	memcpy(id, v->s, v->n);
	id[v->n] = 0;
	*key = found;
	rc = 0;
out:
	ctree_fini(&t);
	free(cbor);
	return rc;
}
