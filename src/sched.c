/* SPDX-License-Identifier: MIT */
/*
 * sched.c - the scheduling core (see sched.h): retry policy and backoff, the
 * in-memory ready index with aging, the scheduler's view of agents with
 * per-type figures and circuit breakers, and the dispatch decision.
 *
 * Layout of the ready index. Each task type has, per base priority level,
 * two FIFO lists ordered by (ready_ms, arrival): "plain" tasks (no pin, no
 * affinity), which any agent able to run the type can take, and
 * "constrained" tasks (an `agent` pin or affinity), which only some can.
 * Within one list every task has the same base priority, and effective
 * priority never decreases with waiting, so the head of a list is its best
 * task. The best task overall is therefore the best of the list heads of the
 * types that have an eligible agent at all; a type without one costs O(1)
 * per pick call however many tasks it holds. Only constrained lists need a
 * scan past ineligible entries, and that scan is bounded (sched_pick).
 *
 * Within one sched_pick call resources only shrink (slots fill, type counts
 * grow, a half-open breaker's trial is taken), so anything found ineligible
 * stays ineligible until the call ends: blocked types and scan positions are
 * remembered per call with a generation number instead of being recomputed.
 *
 * Strings that repeat (types, agent names used as pins) are interned once;
 * a ready task costs one node (about 70 bytes plus its id) and, with
 * affinity, one block holding its key/value copies. Interned strings live
 * until sched_free: types and agent names are a small, slowly changing set.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "edgecoord/err.h"
#include "sched.h"

#define NLEVELS SCHED_PRIO_MAX
#define EWMA_ALPHA 0.1
#define PERMILLE 1000u

/* --- Randomness ------------------------------------------------------------- */

void sched_rng_seed(struct sched_rng *r, uint64_t seed)
{
	r->s = seed;
}

uint64_t sched_rng_next(struct sched_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

uint64_t sched_rng_below(struct sched_rng *r, uint64_t n)
{
	if (n == 0)
		return 0;
	/* Reject the top partial block so every residue is equally likely. */
	uint64_t limit = UINT64_MAX - UINT64_MAX % n;
	uint64_t x;
	do
		x = sched_rng_next(r);
	while (x >= limit);
	return x % n;
}

/* --- Policy ------------------------------------------------------------------- */

void sched_defaults_init(struct sched_defaults *d)
{
	d->retry.max_attempts = 3;
	d->retry.backoff = BACKOFF_EXPONENTIAL;
	d->retry.jitter = 1;
	d->retry.initial_ms = 1000;
	d->retry.max_ms = 300000;
	d->task_timeout_ms = 3600000;
	d->max_lost = 10;
}

void sched_policy_resolve(const struct task_spec *t, const struct sched_defaults *d,
			  struct retry_policy *out)
{
	struct retry_policy p = d->retry;
	if (t && t->has_retry) {
		const struct retry_policy *r = &t->retry;
		if (r->max_attempts >= 1)
			p.max_attempts = r->max_attempts;
		if (r->backoff != BACKOFF_UNSET)
			p.backoff = r->backoff;
		if (r->jitter == 0 || r->jitter == 1)
			p.jitter = r->jitter;
		if (r->initial_ms >= 0)
			p.initial_ms = r->initial_ms;
		if (r->max_ms >= 0)
			p.max_ms = r->max_ms;
	}
	/* Defaults come from a validated config, but a bad one must not make a
	 * task retry forever or wait a negative time. */
	if (p.max_attempts < 1)
		p.max_attempts = 1;
	if (p.backoff == BACKOFF_UNSET || p.backoff > BACKOFF_EXPONENTIAL)
		p.backoff = BACKOFF_EXPONENTIAL;
	if (p.jitter != 0)
		p.jitter = 1;
	if (p.initial_ms < 0)
		p.initial_ms = 0;
	if (p.max_ms < 0)
		p.max_ms = 0;
	*out = p;
}

int64_t sched_timeout_ms(const struct task_spec *t, const struct sched_defaults *d)
{
	if (t && t->timeout_ms > 0)
		return t->timeout_ms;
	return d->task_timeout_ms;
}

int64_t sched_backoff_ms(const struct retry_policy *p, uint32_t k, struct sched_rng *rng)
{
	int64_t delay;
	if (k == 0)
		k = 1;
	switch (p->backoff) {
	case BACKOFF_NONE:
		return 0;
	case BACKOFF_FIXED:
		delay = p->initial_ms;
		break;
	default: {
		/* min(max, initial * 2^(k-1)) without computing a product that can
		 * overflow: initial * 2^e >= max  <=>  initial >= ceil(max / 2^e). */
		uint32_t e = k - 1;
		int64_t init = p->initial_ms, max = p->max_ms;
		if (init <= 0)
			delay = 0;
		else if (init >= max)
			delay = max;
		else if (e >= 63 || init > (max >> e))
			delay = max;
		else if ((init << e) >= max)
			delay = max;
		else
			delay = init << e;
		break;
	}
	}
	if (delay < 0)
		delay = 0;
	if (p->jitter == 1 && rng && delay > 0) {
		int64_t lo = delay / 2;
		delay = lo + (int64_t)sched_rng_below(rng, (uint64_t)(delay - lo) + 1);
	}
	return delay;
}

enum sched_verdict sched_after_failure(const struct retry_policy *p, uint32_t attempt,
				       int64_t now_ms, struct sched_rng *rng,
				       int64_t *due_ms)
{
	if (p->max_attempts < 1 || attempt >= (uint32_t)p->max_attempts)
		return SCHED_DEAD;
	int64_t d = sched_backoff_ms(p, attempt, rng);
	if (due_ms)
		*due_ms = d > INT64_MAX - now_ms ? INT64_MAX : now_ms + d;
	return SCHED_RETRY;
}

enum sched_verdict sched_after_lost(const struct sched_defaults *d, uint32_t lost)
{
	if (d->max_lost > 0 && lost > d->max_lost)
		return SCHED_DEAD;
	return SCHED_RETRY;
}

/* --- Names ---------------------------------------------------------------------- */

static const char *const routing_names[] = { "least_loaded", "round_robin", "performance" };

int sched_routing_parse(const char *s)
{
	for (int i = 0; i < 3; i++)
		if (s && strcmp(s, routing_names[i]) == 0)
			return i;
	return -EINVAL;
}

const char *sched_routing_name(enum sched_routing r)
{
	return (unsigned)r < 3 ? routing_names[r] : "?";
}

int sched_backoff_parse(const char *s)
{
	if (!s)
		return -EINVAL;
	if (strcmp(s, "none") == 0)
		return BACKOFF_NONE;
	if (strcmp(s, "fixed") == 0)
		return BACKOFF_FIXED;
	if (strcmp(s, "exponential") == 0)
		return BACKOFF_EXPONENTIAL;
	return -EINVAL;
}

const char *sched_breaker_name(enum sched_breaker_state b)
{
	switch (b) {
	case SCHED_BREAKER_CLOSED: return "closed";
	case SCHED_BREAKER_OPEN: return "open";
	case SCHED_BREAKER_HALF_OPEN: return "half_open";
	}
	return "?";
}

/* --- Data ---------------------------------------------------------------------- */

struct node {
	struct node *prev, *next;   /* in its (type, level, kind) list */
	struct node *hnext;         /* in the id hash chain */
	int64_t ready_ms;
	uint64_t seq;               /* arrival order, the last tie-break */
	uint32_t type;
	int32_t pin;                /* name id, or -1 */
	struct kv *aff;             /* one block: pairs then strings, or NULL */
	uint32_t naff;
	uint8_t prio;               /* 1..10 */
	uint8_t constrained;
	char id[];
};

struct list {
	struct node *head, *tail;
	struct node *resume;        /* constrained lists: where the tail scan resumes */
};

/* One pick call's scan of a constrained list. */
struct scan {
	struct node *cur;
	uint64_t gen;
	uint32_t used;
	uint8_t phase;              /* 0 from the head, 1 from resume, 2 done */
};

struct cand {
	uint32_t agent;
	uint32_t cap;               /* index into the agent's caps */
};

struct stype {
	char *name;                 /* borrowed from the type table */
	uint32_t limit;             /* 0 = none */
	uint32_t active;            /* dispatched + running fleet-wide */
	uint32_t nready;
	int32_t active_idx;         /* in s->active, or -1 */
	int32_t rr_last;            /* round robin: last agent index chosen */
	struct list plain[NLEVELS], constr[NLEVELS];
	struct scan scan[NLEVELS];
	uint64_t cand_gen, blocked_gen;
	struct cand *cand;          /* agents able to run it, this pick call */
	uint32_t ncand, capcand;
};

struct scap {
	uint32_t type;
	uint32_t failures;          /* consecutive */
	uint8_t state;              /* enum sched_breaker_state, OPEN stored lazily */
	bool trial;                 /* half-open trial in flight */
	int64_t open_until;
	int64_t cooldown;           /* last cool-down used, 0 = none yet */
	double success, latency;
	uint64_t samples, lat_samples;
};

struct sagent {
	uint32_t name;              /* name id */
	uint32_t slots, running;
	uint32_t held;              /* slots taken by unanswered leases (sched.h) */
	uint8_t state;              /* enum sched_agent_state */
	bool draining;
	struct scap *caps;
	uint32_t ncaps;
	struct kv *labels;          /* one block, sorted by key then value */
	uint32_t nlabels;
};

/* An interning table: string -> dense id. */
struct strtab {
	char **str;
	uint32_t n, cap;
	uint32_t *slot;             /* open addressing: id + 1, 0 = empty */
	uint32_t nslot;             /* power of two */
};

struct sched {
	struct sched_opts opts;
	struct sched_rng rng;
	uint64_t gen, seq;

	struct node **bucket;       /* id hash */
	size_t nbucket, nready;

	struct strtab types;
	struct stype **type;        /* by type id */
	uint32_t captype;
	uint32_t *active;           /* type ids with ready tasks */
	uint32_t nactive, capactive;

	struct strtab names;
	int32_t *agent_of;          /* by name id: agent index or -1 */
	uint32_t agent_of_cap;
	struct sagent **agent;
	uint32_t nagent, capagent;
	struct cand *scratch;       /* route's eligible agents, >= nagent long */
	uint32_t capscratch;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static int grow(void **p, uint32_t *cap, uint32_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	uint32_t n = *cap ? *cap : 8;
	while (n < need)
		n *= 2;
	void *q = realloc(*p, (size_t)n * elem);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = n;
	return 0;
}

static int strtab_find(const struct strtab *t, const char *s)
{
	if (!t->nslot)
		return -1;
	for (uint32_t i = (uint32_t)hash_str(s) & (t->nslot - 1);; i = (i + 1) & (t->nslot - 1)) {
		uint32_t v = t->slot[i];
		if (!v)
			return -1;
		if (strcmp(t->str[v - 1], s) == 0)
			return (int)(v - 1);
	}
}

static int strtab_rehash(struct strtab *t, uint32_t nslot)
{
	uint32_t *slot = calloc(nslot, sizeof *slot);
	if (!slot)
		return -ENOMEM;
	for (uint32_t id = 0; id < t->n; id++) {
		uint32_t i = (uint32_t)hash_str(t->str[id]) & (nslot - 1);
		while (slot[i])
			i = (i + 1) & (nslot - 1);
		slot[i] = id + 1;
	}
	free(t->slot);
	t->slot = slot;
	t->nslot = nslot;
	return 0;
}

/* *id on success; *created tells whether the string is new. */
static int strtab_intern(struct strtab *t, const char *s, uint32_t *id, bool *created)
{
	int f = strtab_find(t, s);
	if (f >= 0) {
		*id = (uint32_t)f;
		if (created)
			*created = false;
		return 0;
	}
	if ((t->n + 1) * 2 > t->nslot && strtab_rehash(t, t->nslot ? t->nslot * 2 : 16) < 0)
		return -ENOMEM;
	if (grow((void **)&t->str, &t->cap, t->n + 1, sizeof *t->str) < 0)
		return -ENOMEM;
	char *c = strdup(s);
	if (!c)
		return -ENOMEM;
	t->str[t->n] = c;
	uint32_t i = (uint32_t)hash_str(s) & (t->nslot - 1);
	while (t->slot[i])
		i = (i + 1) & (t->nslot - 1);
	t->slot[i] = t->n + 1;
	*id = t->n++;
	if (created)
		*created = true;
	return 0;
}

static void strtab_fini(struct strtab *t)
{
	for (uint32_t i = 0; i < t->n; i++)
		free(t->str[i]);
	free(t->str);
	free(t->slot);
}

/* Copy n pairs into one block; NULL for n == 0. */
static int kv_copy(const struct kv *in, uint32_t n, struct kv **out)
{
	if (n == 0) {
		*out = NULL;
		return 0;
	}
	size_t len = (size_t)n * sizeof(struct kv);
	for (uint32_t i = 0; i < n; i++) {
		if (!in[i].key || !in[i].value)
			return -EINVAL;
		len += strlen(in[i].key) + strlen(in[i].value) + 2;
	}
	struct kv *b = malloc(len);
	if (!b)
		return -ENOMEM;
	char *p = (char *)(b + n);
	for (uint32_t i = 0; i < n; i++) {
		size_t kl = strlen(in[i].key) + 1, vl = strlen(in[i].value) + 1;
		b[i].key = memcpy(p, in[i].key, kl);
		p += kl;
		b[i].value = memcpy(p, in[i].value, vl);
		p += vl;
	}
	*out = b;
	return 0;
}

static int kv_cmp(const void *a, const void *b)
{
	const struct kv *x = a, *y = b;
	int c = strcmp(x->key, y->key);
	return c ? c : strcmp(x->value, y->value);
}

/* Labels sorted by key then value: does the agent hold key=value? */
static bool labels_hold(const struct sagent *a, const struct kv *want)
{
	uint32_t lo = 0, hi = a->nlabels;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (kv_cmp(&a->labels[mid], want) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < a->nlabels && kv_cmp(&a->labels[lo], want) == 0;
}

/* --- Lifecycle ---------------------------------------------------------------- */

void sched_opts_default(struct sched_opts *o)
{
	memset(o, 0, sizeof *o);
	o->routing = SCHED_LEAST_LOADED;
	o->aging_ms = 30000;
	o->breaker_failures = 5;
	o->breaker_cooldown_ms = 30000;
	o->breaker_cooldown_max_ms = 0;
	o->explore_permille = 100;
	o->scan_budget = 64;
	o->seed = 0x5eed;
}

static int opts_check(const struct sched_opts *o)
{
	if ((unsigned)o->routing > SCHED_PERFORMANCE || o->aging_ms < 0 ||
	    o->breaker_cooldown_ms < 0 || o->breaker_cooldown_max_ms < 0 ||
	    o->explore_permille > PERMILLE)
		return -EINVAL;
	return 0;
}

int sched_new(const struct sched_opts *o, struct sched **out)
{
	struct sched_opts def;
	if (!o) {
		sched_opts_default(&def);
		o = &def;
	}
	if (opts_check(o) < 0)
		return -EINVAL;
	struct sched *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	s->opts = *o;
	if (s->opts.scan_budget == 0)
		s->opts.scan_budget = 1;
	sched_rng_seed(&s->rng, o->seed);
	s->nbucket = 1024;
	s->bucket = calloc(s->nbucket, sizeof *s->bucket);
	if (!s->bucket) {
		free(s);
		return -ENOMEM;
	}
	*out = s;
	return 0;
}

int sched_reconfigure(struct sched *s, const struct sched_opts *o)
{
	if (opts_check(o) < 0)
		return -EINVAL;
	struct sched_rng keep = s->rng;
	s->opts = *o;
	if (s->opts.scan_budget == 0)
		s->opts.scan_budget = 1;
	s->rng = keep;
	return 0;
}

void sched_free(struct sched *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->nbucket; i++) {
		for (struct node *n = s->bucket[i], *next; n; n = next) {
			next = n->hnext;
			free(n->aff);
			free(n);
		}
	}
	free(s->bucket);
	for (uint32_t i = 0; i < s->types.n; i++) {
		free(s->type[i]->cand);
		free(s->type[i]);
	}
	free(s->type);
	free(s->active);
	strtab_fini(&s->types);
	for (uint32_t i = 0; i < s->nagent; i++) {
		free(s->agent[i]->caps);
		free(s->agent[i]->labels);
		free(s->agent[i]);
	}
	free(s->agent);
	free(s->agent_of);
	free(s->scratch);
	strtab_fini(&s->names);
	free(s);
}

/* --- Types and agents -------------------------------------------------------- */

static struct stype *type_find(const struct sched *s, const char *name)
{
	int id = strtab_find(&s->types, name);
	return id < 0 ? NULL : s->type[id];
}

static int type_get(struct sched *s, const char *name, uint32_t *id_out)
{
	if (!name || !*name || strlen(name) > TASK_ID_MAX)
		return -EINVAL;
	int f = strtab_find(&s->types, name);
	if (f >= 0) {
		*id_out = (uint32_t)f;
		return 0;
	}
	/* Make room for the record first, so that a failure interns nothing. */
	if (grow((void **)&s->type, &s->captype, s->types.n + 1, sizeof *s->type) < 0 ||
	    grow((void **)&s->active, &s->capactive, s->types.n + 1, sizeof *s->active) < 0)
		return -ENOMEM;
	struct stype *t = calloc(1, sizeof *t);
	uint32_t id;
	if (!t || strtab_intern(&s->types, name, &id, NULL) < 0) {
		free(t);
		return -ENOMEM;
	}
	t->name = s->types.str[id];
	t->active_idx = -1;
	t->rr_last = -1;
	s->type[id] = t;
	*id_out = id;
	return 0;
}

static int name_get(struct sched *s, const char *name, uint32_t *id_out)
{
	uint32_t id;
	if (!name || !*name || strlen(name) > TASK_ID_MAX)
		return -EINVAL;
	int rc = strtab_intern(&s->names, name, &id, NULL);
	if (rc < 0)
		return rc;
	uint32_t old = s->agent_of_cap;
	if (grow((void **)&s->agent_of, &s->agent_of_cap, s->names.n, sizeof *s->agent_of) < 0)
		return -ENOMEM;
	for (uint32_t i = old; i < s->agent_of_cap; i++)
		s->agent_of[i] = -1;
	*id_out = id;
	return 0;
}

static struct sagent *agent_find(const struct sched *s, const char *name)
{
	int id = strtab_find(&s->names, name);
	if (id < 0 || s->agent_of[id] < 0)
		return NULL;
	return s->agent[s->agent_of[id]];
}

static int agent_get(struct sched *s, const char *name, struct sagent **out)
{
	uint32_t id;
	int rc = name_get(s, name, &id);
	if (rc < 0)
		return rc;
	if (s->agent_of[id] >= 0) {
		*out = s->agent[s->agent_of[id]];
		return 0;
	}
	if (grow((void **)&s->agent, &s->capagent, s->nagent + 1, sizeof *s->agent) < 0 ||
	    grow((void **)&s->scratch, &s->capscratch, s->nagent + 1, sizeof *s->scratch) < 0)
		return -ENOMEM;
	struct sagent *a = calloc(1, sizeof *a);
	if (!a)
		return -ENOMEM;
	a->name = id;
	a->state = SCHED_AGENT_OFFLINE;
	s->agent_of[id] = (int32_t)s->nagent;
	s->agent[s->nagent++] = a;
	*out = a;
	return 0;
}

static const char *agent_name(const struct sched *s, const struct sagent *a)
{
	return s->names.str[a->name];
}

static struct scap *cap_find(struct sagent *a, uint32_t type)
{
	for (uint32_t i = 0; i < a->ncaps; i++)
		if (a->caps[i].type == type)
			return &a->caps[i];
	return NULL;
}

int sched_set_limit(struct sched *s, const char *type, uint32_t n)
{
	uint32_t id;
	int rc = type_get(s, type, &id);
	if (rc < 0)
		return rc;
	s->type[id]->limit = n;
	return 0;
}

int sched_agent_up(struct sched *s, const struct sched_agent_hello *h)
{
	if (!h || (h->ncaps && !h->caps) || (h->nlabels && !h->labels))
		return -EINVAL;
	/* Intern everything first so that a failure leaves the agent as it was. */
	uint32_t *tids = h->ncaps ? malloc(h->ncaps * sizeof *tids) : NULL;
	struct kv *labels = NULL;
	struct scap *caps = NULL;
	struct sagent *a;
	uint32_t ncaps = 0;
	int rc = -ENOMEM;
	if (h->ncaps && !tids)
		goto out;
	for (uint32_t i = 0; i < h->ncaps; i++) {
		uint32_t id;
		if ((rc = type_get(s, h->caps[i], &id)) < 0)
			goto out;
		bool dup = false;
		for (uint32_t j = 0; j < ncaps; j++)
			dup |= tids[j] == id;
		if (!dup)
			tids[ncaps++] = id;
	}
	if ((rc = kv_copy(h->labels, h->nlabels, &labels)) < 0)
		goto out;
	rc = -ENOMEM;
	if (ncaps && !(caps = calloc(ncaps, sizeof *caps)))
		goto out;
	if ((rc = agent_get(s, h->name, &a)) < 0)
		goto out;
	for (uint32_t i = 0; i < ncaps; i++) {
		struct scap *old = cap_find(a, tids[i]);
		if (old) {
			caps[i] = *old;
		} else {
			caps[i].type = tids[i];
			caps[i].success = 1.0;
		}
	}
	if (h->nlabels)
		qsort(labels, h->nlabels, sizeof *labels, kv_cmp);
	free(a->caps);
	free(a->labels);
	a->caps = caps;
	a->ncaps = ncaps;
	a->labels = labels;
	a->nlabels = h->nlabels;
	a->slots = h->slots;
	a->state = SCHED_AGENT_ONLINE;
	caps = NULL;
	labels = NULL;
	rc = 0;
out:
	free(tids);
	free(caps);
	free(labels);
	return rc;
}

int sched_agent_set_state(struct sched *s, const char *name, enum sched_agent_state st)
{
	if ((unsigned)st > SCHED_AGENT_SUSPECT || !name)
		return -EINVAL;
	struct sagent *a = agent_find(s, name);
	if (!a)
		return EC_EUNKNOWN_AGENT;
	a->state = st;
	return 0;
}

int sched_agent_down(struct sched *s, const char *name)
{
	return sched_agent_set_state(s, name, SCHED_AGENT_OFFLINE);
}

int sched_agent_drain(struct sched *s, const char *name, bool on)
{
	struct sagent *a = name ? agent_find(s, name) : NULL;
	if (!a)
		return EC_EUNKNOWN_AGENT;
	a->draining = on;
	return 0;
}

int sched_agent_set_held(struct sched *s, const char *name, uint32_t held)
{
	struct sagent *a = name ? agent_find(s, name) : NULL;
	if (!a)
		return EC_EUNKNOWN_AGENT;
	a->held = held;
	return 0;
}

/* Slots in use as a dispatch sees them: running tasks and held leases. */
static uint64_t busy(const struct sagent *a)
{
	return (uint64_t)a->running + a->held;
}

/* --- The ready index ---------------------------------------------------------- */

static struct node **bucket_of(const struct sched *s, const char *id)
{
	return &s->bucket[hash_str(id) & (s->nbucket - 1)];
}

static struct node *node_find(const struct sched *s, const char *id)
{
	for (struct node *n = *bucket_of(s, id); n; n = n->hnext)
		if (strcmp(n->id, id) == 0)
			return n;
	return NULL;
}

static void rehash(struct sched *s)
{
	size_t nb = s->nbucket * 2;
	struct node **b = calloc(nb, sizeof *b);
	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < s->nbucket; i++) {
		for (struct node *n = s->bucket[i], *next; n; n = next) {
			next = n->hnext;
			struct node **h = &b[hash_str(n->id) & (nb - 1)];
			n->hnext = *h;
			*h = n;
		}
	}
	free(s->bucket);
	s->bucket = b;
	s->nbucket = nb;
}

static struct list *list_of(struct stype *t, const struct node *n)
{
	return n->constrained ? &t->constr[n->prio - 1] : &t->plain[n->prio - 1];
}

static void type_activate(struct sched *s, struct stype *t, uint32_t id)
{
	if (t->nready++ == 0) {
		t->active_idx = (int32_t)s->nactive;
		s->active[s->nactive++] = id;
	}
}

static void type_deactivate(struct sched *s, struct stype *t)
{
	if (--t->nready == 0) {
		uint32_t last = s->active[--s->nactive];
		s->active[t->active_idx] = last;
		s->type[last]->active_idx = t->active_idx;
		t->active_idx = -1;
	}
}

int sched_ready_add(struct sched *s, const struct sched_task *in)
{
	if (!in || !in->id || !in->type || in->priority > SCHED_PRIO_MAX ||
	    (in->naffinity && !in->affinity))
		return -EINVAL;
	size_t idlen = strlen(in->id);
	if (idlen == 0 || idlen > TASK_FULLID_MAX)
		return -EINVAL;
	if (node_find(s, in->id))
		return -EEXIST;
	uint32_t tid, pin = 0;
	int rc = type_get(s, in->type, &tid);
	if (rc < 0)
		return rc;
	if (in->agent && (rc = name_get(s, in->agent, &pin)) < 0)
		return rc;
	/* The id starts inside the struct's tail padding: a node is one malloc
	 * chunk size smaller for many id lengths (one per ready task). */
	struct node *n = malloc(offsetof(struct node, id) + idlen + 1);
	if (!n)
		return -ENOMEM;
	if ((rc = kv_copy(in->affinity, in->naffinity, &n->aff)) < 0) {
		free(n);
		return rc;
	}
	memcpy(n->id, in->id, idlen + 1);
	n->naff = in->naffinity;
	n->ready_ms = in->ready_ms;
	n->seq = s->seq++;
	n->type = tid;
	n->pin = in->agent ? (int32_t)pin : -1;
	n->prio = in->priority ? in->priority : SCHED_PRIO_DEFAULT;
	n->constrained = in->agent || in->naffinity;

	struct stype *t = s->type[tid];
	struct list *l = list_of(t, n);
	/* Keep the list in (ready_ms, seq) order; appending in time order is O(1). */
	struct node *after = l->tail;
	while (after && after->ready_ms > n->ready_ms)
		after = after->prev;
	n->prev = after;
	n->next = after ? after->next : l->head;
	if (n->next)
		n->next->prev = n;
	else
		l->tail = n;
	if (after)
		after->next = n;
	else
		l->head = n;

	struct node **h = bucket_of(s, n->id);
	n->hnext = *h;
	*h = n;
	type_activate(s, t, tid);
	if (++s->nready > s->nbucket)
		rehash(s);
	return 0;
}

int sched_ready_add_spec(struct sched *s, const struct task_spec *spec, int64_t ready_ms)
{
	if (!spec)
		return -EINVAL;
	struct sched_task t = {
		.id = spec->id, .type = spec->type, .priority = spec->priority,
		.ready_ms = ready_ms, .agent = spec->agent, .affinity = spec->affinity,
		.naffinity = spec->naffinity,
	};
	return sched_ready_add(s, &t);
}

/* Unlink n from its list and the hash, and free it. */
static void node_remove(struct sched *s, struct node *n)
{
	struct stype *t = s->type[n->type];
	struct list *l = list_of(t, n);
	if (l->resume == n)
		l->resume = n->next;
	if (n->constrained && t->scan[n->prio - 1].cur == n)
		t->scan[n->prio - 1].cur = n->next;
	if (n->prev)
		n->prev->next = n->next;
	else
		l->head = n->next;
	if (n->next)
		n->next->prev = n->prev;
	else
		l->tail = n->prev;
	for (struct node **h = bucket_of(s, n->id); *h; h = &(*h)->hnext) {
		if (*h == n) {
			*h = n->hnext;
			break;
		}
	}
	type_deactivate(s, t);
	s->nready--;
	free(n->aff);
	free(n);
}

int sched_ready_remove(struct sched *s, const char *id)
{
	struct node *n = id ? node_find(s, id) : NULL;
	if (!n)
		return EC_ENOTFOUND;
	node_remove(s, n);
	return 0;
}

bool sched_ready_has(const struct sched *s, const char *id)
{
	return id && node_find(s, id);
}

size_t sched_ready_count(const struct sched *s)
{
	return s->nready;
}

static int eff_prio(const struct sched *s, const struct node *n, int64_t now)
{
	int p = n->prio;
	if (s->opts.aging_ms > 0 && now > n->ready_ms) {
		uint64_t waited = (uint64_t)now - (uint64_t)n->ready_ms;
		uint64_t steps = waited / (uint64_t)s->opts.aging_ms;
		if (steps >= (uint64_t)(SCHED_EFF_PRIO_CAP - p))
			return SCHED_EFF_PRIO_CAP;
		p += (int)steps;
	}
	return p;
}

int sched_effective_priority(const struct sched *s, const char *id, int64_t now_ms)
{
	const struct node *n = id ? node_find(s, id) : NULL;
	return n ? eff_prio(s, n, now_ms) : EC_ENOTFOUND;
}

/* Is a to be served before b (NULL: anything beats nothing)? */
static bool better(const struct sched *s, const struct node *a, const struct node *b,
		   int64_t now)
{
	if (!b)
		return true;
	int ea = eff_prio(s, a, now), eb = eff_prio(s, b, now);
	if (ea != eb)
		return ea > eb;
	if (a->ready_ms != b->ready_ms)
		return a->ready_ms < b->ready_ms;
	return a->seq < b->seq;
}

/* --- Eligibility and routing --------------------------------------------------- */

static int64_t cooldown_max(const struct sched *s)
{
	int64_t m = s->opts.breaker_cooldown_max_ms;
	if (m == 0)
		m = s->opts.breaker_cooldown_ms > INT64_MAX / 16 ? INT64_MAX
								: s->opts.breaker_cooldown_ms * 16;
	return m < s->opts.breaker_cooldown_ms ? s->opts.breaker_cooldown_ms : m;
}

static enum sched_breaker_state breaker_now(const struct scap *c, int64_t now)
{
	if (c->state == SCHED_BREAKER_OPEN && now >= c->open_until)
		return SCHED_BREAKER_HALF_OPEN;
	return c->state;
}

static bool breaker_allows(const struct scap *c, int64_t now)
{
	switch (breaker_now(c, now)) {
	case SCHED_BREAKER_CLOSED: return true;
	case SCHED_BREAKER_HALF_OPEN: return !c->trial;
	default: return false;
	}
}

static bool agent_free(const struct sched *s, const struct cand *c, int64_t now)
{
	const struct sagent *a = s->agent[c->agent];
	return a->state != SCHED_AGENT_OFFLINE && !a->draining && busy(a) < a->slots &&
	       breaker_allows(&a->caps[c->cap], now);
}

static bool agent_takes(const struct sched *s, const struct node *n, const struct cand *c)
{
	const struct sagent *a = s->agent[c->agent];
	if (n->pin >= 0 && (uint32_t)n->pin != a->name)
		return false;
	for (uint32_t i = 0; i < n->naff; i++)
		if (!labels_hold(a, &n->aff[i]))
			return false;
	return true;
}

/* Can any agent take tasks of this type now (ignoring pins and affinity)? */
static bool type_open(const struct sched *s, const struct stype *t, int64_t now)
{
	if (t->cand_gen != s->gen)
		return false;
	if (t->limit && t->active >= t->limit)
		return false;
	for (uint32_t i = 0; i < t->ncand; i++)
		if (agent_free(s, &t->cand[i], now))
			return true;
	return false;
}

static bool node_eligible(const struct sched *s, const struct stype *t,
			  const struct node *n, int64_t now)
{
	for (uint32_t i = 0; i < t->ncand; i++)
		if (agent_free(s, &t->cand[i], now) && agent_takes(s, n, &t->cand[i]))
			return true;
	return false;
}

/* The best eligible task of a constrained list within this call's budget
 * (see sched_pick in sched.h), or NULL. */
static struct node *constrained_next(struct sched *s, struct stype *t, int lvl, int64_t now)
{
	struct list *l = &t->constr[lvl];
	struct scan *sc = &t->scan[lvl];
	uint32_t budget = s->opts.scan_budget;
	if (sc->gen != s->gen) {
		sc->gen = s->gen;
		sc->cur = l->head;
		sc->used = 0;
		sc->phase = 0;
	}
	if (sc->phase == 0) {
		while (sc->cur && sc->used < budget) {
			if (node_eligible(s, t, sc->cur, now))
				return sc->cur;
			sc->cur = sc->cur->next;
			sc->used++;
		}
		if (!sc->cur) {
			sc->phase = 2; /* the whole list was examined */
			return NULL;
		}
		sc->phase = 1;
		sc->cur = l->resume ? l->resume : l->head;
		sc->used = 0;
	}
	if (sc->phase == 1) {
		while (sc->cur && sc->used < budget) {
			if (node_eligible(s, t, sc->cur, now)) {
				l->resume = sc->cur;
				return sc->cur;
			}
			sc->cur = sc->cur->next;
			sc->used++;
		}
		l->resume = sc->cur; /* NULL: start again from the head */
		sc->phase = 2;
	}
	return NULL;
}

/* least_loaded order: lower busy/slots, then fewer busy, then name (held
 * slots weigh like running tasks: the agent is as busy either way). */
static bool less_loaded(const struct sched *s, const struct sagent *a, const struct sagent *b)
{
	uint64_t x = busy(a) * b->slots, y = busy(b) * a->slots;
	if (x != y)
		return x < y;
	if (busy(a) != busy(b))
		return busy(a) < busy(b);
	return strcmp(agent_name(s, a), agent_name(s, b)) < 0;
}

static double perf_score(const struct scap *c, double lat_default)
{
	double lat = c->lat_samples ? c->latency : lat_default;
	return c->success / (lat < 1.0 ? 1.0 : lat);
}

/* Choose among the eligible agents for n: index into s->scratch. */
static uint32_t route(struct sched *s, struct stype *t, uint32_t ne)
{
	struct cand *e = s->scratch;
	uint32_t best = 0;
	switch (s->opts.routing) {
	case SCHED_ROUND_ROBIN:
		/* Candidates are in agent-index order: take the first after the
		 * type's last choice, wrapping. */
		for (uint32_t i = 0; i < ne; i++) {
			if ((int32_t)e[i].agent > t->rr_last) {
				best = i;
				break;
			}
		}
		t->rr_last = (int32_t)e[best].agent;
		return best;
	case SCHED_PERFORMANCE: {
		/* An agent without figures is scored with the best latency seen
		 * among the others and wins ties by having fewer samples, so a
		 * newcomer is tried at once. */
		double lat_default = 0;
		for (uint32_t i = 0; i < ne; i++) {
			const struct scap *c = &s->agent[e[i].agent]->caps[e[i].cap];
			if (c->lat_samples && (lat_default == 0 || c->latency < lat_default))
				lat_default = c->latency;
		}
		double bs = -1;
		for (uint32_t i = 0; i < ne; i++) {
			const struct sagent *a = s->agent[e[i].agent];
			double sc = perf_score(&a->caps[e[i].cap], lat_default);
			const struct sagent *b = s->agent[e[best].agent];
			uint64_t na = a->caps[e[i].cap].samples, nb = b->caps[e[best].cap].samples;
			if (sc > bs || (sc == bs && (na < nb || (na == nb && less_loaded(s, a, b))))) {
				bs = sc;
				best = i;
			}
		}
		/* Exploration keeps every agent's figures current. */
		if (ne >= 2 && sched_rng_below(&s->rng, PERMILLE) < s->opts.explore_permille) {
			uint32_t r = (uint32_t)sched_rng_below(&s->rng, ne - 1);
			best = r >= best ? r + 1 : r;
		}
		return best;
	}
	default:
		for (uint32_t i = 1; i < ne; i++)
			if (less_loaded(s, s->agent[e[i].agent], s->agent[e[best].agent]))
				best = i;
		return best;
	}
}

static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* Gather, per active type, the agents that could run it in this call. */
static int build_candidates(struct sched *s)
{
	for (uint32_t i = 0; i < s->nagent; i++) {
		struct sagent *a = s->agent[i];
		if (a->state == SCHED_AGENT_OFFLINE || a->draining || a->slots == 0)
			continue;
		for (uint32_t c = 0; c < a->ncaps; c++) {
			struct stype *t = s->type[a->caps[c].type];
			if (t->nready == 0)
				continue;
			if (t->cand_gen != s->gen) {
				t->cand_gen = s->gen;
				t->ncand = 0;
			}
			if (grow((void **)&t->cand, &t->capcand, t->ncand + 1, sizeof *t->cand) < 0)
				return -ENOMEM;
			t->cand[t->ncand++] = (struct cand){ .agent = i, .cap = c };
		}
	}
	return 0;
}

int sched_pick(struct sched *s, int64_t now_ms, struct sched_decision *out, size_t max)
{
	if (max && !out)
		return -EINVAL;
	if (max > INT32_MAX)
		max = INT32_MAX;
	if (max == 0 || s->nready == 0)
		return 0;
	s->gen++;
	int rc = build_candidates(s);
	if (rc < 0)
		return rc;
	size_t n = 0;
	while (n < max) {
		struct node *best = NULL;
		for (uint32_t i = 0; i < s->nactive; i++) {
			struct stype *t = s->type[s->active[i]];
			if (t->blocked_gen == s->gen)
				continue;
			if (!type_open(s, t, now_ms)) {
				t->blocked_gen = s->gen; /* stays blocked for this call */
				continue;
			}
			for (int lvl = 0; lvl < NLEVELS; lvl++) {
				struct node *c = t->plain[lvl].head;
				if (c && better(s, c, best, now_ms))
					best = c;
				if (t->constr[lvl].head) {
					c = constrained_next(s, t, lvl, now_ms);
					if (c && better(s, c, best, now_ms))
						best = c;
				}
			}
		}
		if (!best)
			break;
		struct stype *t = s->type[best->type];
		uint32_t ne = 0;
		for (uint32_t i = 0; i < t->ncand; i++)
			if (agent_free(s, &t->cand[i], now_ms) && agent_takes(s, best, &t->cand[i]))
				s->scratch[ne++] = t->cand[i];
		if (ne == 0) {
			/* Cannot happen: best was found eligible this very pass. */
			t->blocked_gen = s->gen;
			continue;
		}
		struct cand ch = s->scratch[route(s, t, ne)];
		struct sagent *a = s->agent[ch.agent];
		struct scap *cap = &a->caps[ch.cap];
		struct sched_decision *d = &out[n++];
		copy_str(d->task_id, sizeof d->task_id, best->id);
		copy_str(d->agent, sizeof d->agent, agent_name(s, a));
		copy_str(d->type, sizeof d->type, t->name);
		d->trial = false;
		if (breaker_now(cap, now_ms) == SCHED_BREAKER_HALF_OPEN) {
			cap->state = SCHED_BREAKER_HALF_OPEN;
			cap->trial = true;
			d->trial = true;
		}
		a->running++;
		t->active++;
		node_remove(s, best);
	}
	return (int)n;
}

/* --- Outcomes ------------------------------------------------------------------- */

int sched_task_adopt(struct sched *s, const char *agent, const char *type)
{
	uint32_t tid;
	struct sagent *a;
	int rc = type_get(s, type, &tid);
	if (rc < 0 || (rc = agent_get(s, agent, &a)) < 0)
		return rc;
	a->running++;
	s->type[tid]->active++;
	return 0;
}

static void breaker_open(struct sched *s, struct scap *c, int64_t cooldown, int64_t now)
{
	c->state = SCHED_BREAKER_OPEN;
	c->trial = false;
	c->cooldown = cooldown;
	c->open_until = cooldown > INT64_MAX - now ? INT64_MAX : now + cooldown;
}

static void breaker_update(struct sched *s, struct scap *c, enum sched_outcome out,
			   int64_t now)
{
	bool trial = c->state == SCHED_BREAKER_HALF_OPEN && c->trial;
	if (out == SCHED_OUT_LOST || out == SCHED_OUT_ABORT) {
		if (trial)
			c->trial = false; /* no verdict: allow another trial */
		return;
	}
	if (out == SCHED_OUT_OK) {
		c->failures = 0;
		if (trial) {
			c->state = SCHED_BREAKER_CLOSED;
			c->trial = false;
			c->cooldown = 0;
		}
		return;
	}
	c->failures++;
	if (trial) {
		int64_t cd = c->cooldown > INT64_MAX / 2 ? INT64_MAX : c->cooldown * 2;
		int64_t max = cooldown_max(s);
		breaker_open(s, c, cd > max ? max : cd, now);
	} else if (c->state == SCHED_BREAKER_CLOSED && s->opts.breaker_failures &&
		   c->failures >= s->opts.breaker_failures) {
		breaker_open(s, c, s->opts.breaker_cooldown_ms, now);
	}
}

int sched_task_finished(struct sched *s, const char *agent, const char *type,
			enum sched_outcome out, int64_t duration_ms, int64_t now_ms)
{
	if (!agent || !type || (unsigned)out > SCHED_OUT_ABORT)
		return -EINVAL;
	struct stype *t = type_find(s, type);
	if (t && t->active > 0)
		t->active--;
	struct sagent *a = agent_find(s, agent);
	if (!a)
		return EC_EUNKNOWN_AGENT;
	if (a->running > 0)
		a->running--;
	struct scap *c = t ? cap_find(a, (uint32_t)strtab_find(&s->types, type)) : NULL;
	if (!c)
		return 0; /* the agent no longer advertises the type: no figures */
	if (out == SCHED_OUT_OK || out == SCHED_OUT_FAIL) {
		double ok = out == SCHED_OUT_OK;
		c->samples++;
		c->success += EWMA_ALPHA * (ok - c->success);
		if (out == SCHED_OUT_OK) {
			double d = duration_ms < 0 ? 0 : (double)duration_ms;
			c->latency = c->lat_samples++ ? c->latency + EWMA_ALPHA * (d - c->latency) : d;
		}
	}
	breaker_update(s, c, out, now_ms);
	return 0;
}

/* --- Fleet figures ---------------------------------------------------------------- */

int sched_agent_get(const struct sched *s, const char *name, int64_t now_ms,
		    struct sched_agent_view *out)
{
	struct sagent *a = name ? agent_find(s, name) : NULL;
	if (!a)
		return EC_EUNKNOWN_AGENT;
	struct sched_agent_view v = {
		.state = a->state, .draining = a->draining, .slots = a->slots,
		.running = a->running, .held = a->held, .success_rate = 1.0,
	};
	double ws = 0, wl = 0;
	uint64_t ns = 0, nl = 0;
	for (uint32_t i = 0; i < a->ncaps; i++) {
		const struct scap *c = &a->caps[i];
		ws += c->success * (double)c->samples;
		ns += c->samples;
		wl += c->latency * (double)c->lat_samples;
		nl += c->lat_samples;
		v.breakers_open += breaker_now(c, now_ms) != SCHED_BREAKER_CLOSED;
	}
	if (ns)
		v.success_rate = ws / (double)ns;
	if (nl)
		v.latency_ms = wl / (double)nl;
	*out = v;
	return 0;
}

int sched_breakers_each(const struct sched *s, int64_t now_ms, sched_breaker_fn fn,
			void *arg)
{
	for (uint32_t i = 0; i < s->nagent; i++) {
		const struct sagent *a = s->agent[i];
		for (uint32_t j = 0; j < a->ncaps; j++) {
			const struct scap *c = &a->caps[j];
			struct sched_breaker_view v = {
				.agent = agent_name(s, a), .type = s->types.str[c->type],
				.state = breaker_now(c, now_ms), .failures = c->failures,
				.open_until_ms = c->state == SCHED_BREAKER_OPEN ? c->open_until : 0,
				.cooldown_ms = c->cooldown, .success_rate = c->success,
				.latency_ms = c->latency, .samples = c->samples,
			};
			int rc = fn(&v, arg);
			if (rc)
				return rc;
		}
	}
	return 0;
}

/* A square root without libm, which costs the daemon 300 kB of resident
 * memory for this one figure (and -O0 builds do not inline sqrt()): Newton's
 * method from above, for x > 0. */
static double root(double x)
{
	double r = x > 1 ? x : 1;
	for (int i = 0; i < 200; i++) {
		double next = 0.5 * (r + x / r);
		if (next >= r)
			break;
		r = next;
	}
	return r;
}

double sched_load_cv(const struct sched *s)
{
	double sum = 0, sq = 0;
	uint32_t n = 0;
	for (uint32_t i = 0; i < s->nagent; i++) {
		const struct sagent *a = s->agent[i];
		if (a->state == SCHED_AGENT_OFFLINE || a->draining || a->slots == 0)
			continue;
		double x = (double)a->running / a->slots;
		sum += x;
		sq += x * x;
		n++;
	}
	if (n == 0 || sum == 0)
		return 0;
	double mean = sum / n;
	double var = sq / n - mean * mean;
	return var <= 0 ? 0 : root(var) / mean;
}

int64_t sched_next_due(const struct sched *s, int64_t now_ms)
{
	int64_t due = -1;
	for (uint32_t i = 0; i < s->nagent; i++) {
		const struct sagent *a = s->agent[i];
		for (uint32_t j = 0; j < a->ncaps; j++) {
			const struct scap *c = &a->caps[j];
			if (c->state == SCHED_BREAKER_OPEN && c->open_until > now_ms &&
			    (due < 0 || c->open_until < due))
				due = c->open_until;
		}
	}
	return due;
}
