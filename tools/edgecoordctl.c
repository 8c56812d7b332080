/* SPDX-License-Identifier: MIT */
/*
 * edgecoordctl - the operator's command line (DESIGN 1).
 *
 * Queries (tasks, show, workflow, dot, mermaid, dead) open the daemon's LMDB
 * environment read-only on the same host; they never write. Changes (cancel,
 * retry, drain, undrain) are published on the control topics and wait for the
 * coordinator's answer on a Response Topic.
 *
 * With --json every list is a JSON array of objects with at least task_id (or
 * agent) and state, and `show` one object. JSON is written by building CBOR
 * with the ec_cbor_w writer and converting it with codec_cbor_to_json, the same path the
 * daemon's messages take. A list is streamed: each element is converted and
 * printed on its own, so memory does not grow with the store.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agentrec.h"
#include "edgecoord/proto.h"
#include "codec.h"
#include "edgecoord/err.h"
#include "log.h"
#include "loop.h"
#include "mqtt.h"
#include "store.h"

struct ctl {
	const char *data_dir;
	const char *broker;
	const char *prefix;
	bool json;
	struct store *store;
};

static void usage(FILE *f)
{
	fputs("usage: edgecoordctl [--data-dir DIR] [--broker URI] [--topic-prefix P] [--json]\n"
	      "                    COMMAND [ARGS]\n"
	      "queries (read the store in --data-dir, read-only; default ./edgecoord-data):\n"
	      "  tasks [--state S] [--workflow W]   list tasks\n"
	      "  show [--] ID                       one task: fields, state, result, history\n"
	      "  workflow [--] ID                   a workflow's steps as a tree\n"
	      "  dot ID | mermaid ID                a workflow's DAG, colored by state\n"
	      "  dead                               dead letters with their reasons\n"
	      "  agents                             every agent the coordinator knows, as last published\n"
	      "  fsck                               check every invariant of the store\n"
	      "changes (through the control topics at --broker; default tcp://127.0.0.1:1883):\n"
	      "  cancel [--] ID | cancel --workflow [--] ID\n"
	      "  retry [--] ID  | retry --workflow [--] ID\n"
	      "  drain [--] AGENT | undrain [--] AGENT\n"
	      "  (-- ends the options: before an id that starts with '-')\n"
	      "exit status: 0 ok, 1 failure or refusal, 2 bad usage\n",
	      f);
}

static int fail(int rc, const char *what)
{
	fprintf(stderr, "edgecoordctl: %s: %s\n", what, ec_strerror(rc));
	return 1;
}

/* A store iterator's callback returns this to stop a listing whose output
 * failed (a full disk, a closed pipe): main() reports it. */
#define STOP_OUTPUT 1

/* An id from the command line, checked before the store or the broker sees
 * it: LMDB refuses an empty key or one over 511 bytes (MDB_BAD_VALSIZE, which
 * read as "store failure"), and a control message over 512 bytes was cut
 * (the coordinator answered "malformed"). max: TASK_FULLID_MAX for a task,
 * TASK_ID_MAX for a workflow or an agent. */
static bool id_ok(const char *what, const char *id, size_t max)
{
	size_t n = strlen(id);
	if (n >= 1 && n <= max)
		return true;
	fprintf(stderr, "edgecoordctl: %s id of %zu characters: an id has 1 to %zu\n", what, n,
		max);
	return false;
}

/* The one ID argument of a query: `ID` or `-- ID`. */
static const char *id_arg(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--") == 0)
		return argv[2];
	return argc == 2 ? argv[1] : NULL;
}

static int out_errno; /* of the first failed write to stdout */

/* Whether stdout has failed; called right after printing, while errno is
 * still that of the failed write (stdio keeps only a flag). */
static bool out_failed(void)
{
	if (!ferror(stdout))
		return false;
	if (!out_errno)
		out_errno = errno;
	return true;
}

/* w (one CBOR item) as JSON text (new). Consumes w. */
static int to_json(struct ec_cbor_w *w, char **json, size_t *len)
{
	int rc = ec_cbor_w_finish(w);
	if (rc == 0)
		rc = codec_cbor_to_json(w->buf, w->len, json, len);
	ec_cbor_w_fini(w);
	return rc;
}

/* Render w (one CBOR item) as JSON on stdout. Consumes w. */
static int print_json(struct ec_cbor_w *w)
{
	char *json;
	size_t len;
	int rc = to_json(w, &json, &len);
	if (rc < 0)
		return fail(rc, "rendering JSON");
	printf("%s\n", json);
	out_failed();
	free(json);
	return 0;
}

/* Print w (one CBOR item) as the next element of a JSON array streamed on
 * stdout, opening the array at the first; json_list_end() closes it. Each
 * element is converted alone (about 1 KB of heap a task when a whole list
 * was). Consumes w. 0, or STOP_OUTPUT once something failed. */
static int json_elem(struct ec_cbor_w *w, size_t *n)
{
	char *json;
	size_t len;
	int rc = to_json(w, &json, &len);
	if (rc < 0) {
		fail(rc, "rendering JSON");
		return STOP_OUTPUT;
	}
	fputs((*n)++ ? "," : "[", stdout);
	fwrite(json, 1, len, stdout);
	free(json);
	return out_failed() ? STOP_OUTPUT : 0;
}

static void json_list_end(size_t n)
{
	fputs(n ? "]\n" : "[]\n", stdout);
}

static void fmt_time(int64_t ms, char *buf, size_t len)
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;
	if (ms <= 0) {
		snprintf(buf, len, "-");
		return;
	}
	gmtime_r(&s, &tm);
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/*
 * Text from outside (a submitter's description or source, an agent's error,
 * a history detail, a dead letter's reason, an agent's capabilities) in text
 * output: control characters as \n, \t, \r or \xHH (C1 ones too, which
 * UTF-8 spells 0xC2 0x80-0x9F) and the backslash as \\, so that a row stays
 * one line and no escape sequence reaches the terminal. JSON output is
 * escaped by its encoder.
 */
static void put_text(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '\\')
			fputs("\\\\", stdout);
		else if (*p == '\n')
			fputs("\\n", stdout);
		else if (*p == '\t')
			fputs("\\t", stdout);
		else if (*p == '\r')
			fputs("\\r", stdout);
		else if (*p < 0x20 || *p == 0x7f)
			printf("\\x%02x", *p);
		else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
			printf("\\xc2\\x%02x", *++p);
		else
			putchar(*p);
	}
}

/* "label:       text\n" with the text escaped. */
static void put_field(const char *label, const char *text)
{
	fputs(label, stdout);
	put_text(text);
	putchar('\n');
}

static void text_or_null(struct ec_cbor_w *w, const char *s)
{
	if (s && *s)
		ec_cbor_w_text(w, s);
	else
		ec_cbor_w_null(w);
}

/* ---- lists: tasks and dead ----------------------------------------------- */

struct list {
	int state;              /* filter, -1 = any */
	const char *workflow;   /* filter, NULL = any */
	bool json, dead;
	size_t n;               /* json: elements printed */
};

static int list_one(const struct task_rec *r, void *arg)
{
	struct list *l = arg;
	if (l->state >= 0 && (int)r->state != l->state)
		return 0;
	if (l->workflow && (!r->spec.workflow || strcmp(r->spec.workflow, l->workflow) != 0))
		return 0;
	if (!l->json) {
		char ts[48];
		fmt_time(r->updated_ms, ts, sizeof ts);
		if (l->dead) {
			printf("%-40s %-24s %3u  ", r->spec.id, ts, r->attempt);
			put_text(r->error ? r->error : "-");
			putchar('\n');
		} else
			printf("%-40s %-10s %3u  %-16s %s\n", r->spec.id,
			       task_state_name(r->state), r->attempt,
			       r->agent[0] ? r->agent : "-", r->spec.type);
		return out_failed() ? STOP_OUTPUT : 0;
	}
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 7);
	ec_cbor_w_text(&w, "task_id");
	ec_cbor_w_text(&w, r->spec.id);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, task_state_name(r->state));
	ec_cbor_w_text(&w, "type");
	ec_cbor_w_text(&w, r->spec.type);
	ec_cbor_w_text(&w, "workflow");
	text_or_null(&w, r->spec.workflow);
	ec_cbor_w_text(&w, "attempt");
	ec_cbor_w_uint(&w, r->attempt);
	ec_cbor_w_text(&w, "agent");
	text_or_null(&w, r->agent);
	ec_cbor_w_text(&w, "error");
	text_or_null(&w, r->error);
	return json_elem(&w, &l->n);
}

static int list_txn(struct store_txn *t, void *arg)
{
	struct list *l = arg;
	if (l->dead)
		return store_dead_scan(t, list_one, l);
	if (l->workflow)
		return store_workflow_steps(t, l->workflow, list_one, l);
	return store_tasks_scan(t, l->state, list_one, l);
}

static int run_list(struct ctl *c, struct list *l)
{
	if (!c->json && l->dead)
		printf("%-40s %-24s %3s  %s\n", "TASK", "DIED", "ATT", "REASON");
	else if (!c->json)
		printf("%-40s %-10s %3s  %-16s %s\n", "TASK", "STATE", "ATT", "AGENT", "TYPE");
	int rc = store_read(c->store, list_txn, l);
	if (rc < 0)
		return fail(rc, "reading the store");
	if (rc == STOP_OUTPUT)
		return 1;
	if (c->json)
		json_list_end(l->n);
	return 0;
}

static int cmd_tasks(struct ctl *c, int argc, char **argv)
{
	struct list l = { .state = -1, .json = c->json };
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--state") == 0 && i + 1 < argc) {
			l.state = task_state_parse(argv[++i]);
			if (l.state < 0) {
				fprintf(stderr, "edgecoordctl: unknown state '%s'\n", argv[i]);
				return 2;
			}
		} else if (strcmp(argv[i], "--workflow") == 0 && i + 1 < argc) {
			l.workflow = argv[++i];
			if (!id_ok("workflow", l.workflow, TASK_ID_MAX))
				return 2;
		} else {
			fprintf(stderr, "edgecoordctl: tasks: unexpected argument '%s'\n", argv[i]);
			return 2;
		}
	}
	return run_list(c, &l);
}

static int cmd_dead(struct ctl *c)
{
	struct list l = { .state = -1, .json = c->json, .dead = true };
	return run_list(c, &l);
}

/* ---- fsck ---------------------------------------------------------------- */

static int check_txn(struct store_txn *t, void *arg)
{
	return store_check(t, arg, 512);
}

/* Every invariant of store_check, on one consistent snapshot (the daemon may
 * run): after a power cut, or when something looks wrong. */
static int cmd_fsck(struct ctl *c)
{
	char why[512] = "";
	int rc = store_read(c->store, check_txn, why);
	if (rc == 0) {
		printf("store OK\n");
		return 0;
	}
	fprintf(stderr, "edgecoordctl: store check failed: %s\n", why[0] ? why : ec_strerror(rc));
	return 1;
}

/* ---- show ---------------------------------------------------------------- */

struct show {
	const char *id;
	bool json;
	struct task_rec rec;
	struct result_rec res;
	bool have_rec, have_res;
	struct history_ev *hist;
	size_t nhist;
};

static int show_hist(const struct history_ev *ev, void *arg)
{
	struct show *s = arg;
	struct history_ev *h = realloc(s->hist, (s->nhist + 1) * sizeof *h);
	if (!h)
		return -ENOMEM;
	h[s->nhist++] = *ev;
	s->hist = h;
	return 0;
}

static int show_txn(struct store_txn *t, void *arg)
{
	struct show *s = arg;
	int rc = store_task_get(t, s->id, &s->rec);
	if (rc < 0)
		return rc;
	s->have_rec = true;
	rc = store_result_get(t, s->id, &s->res);
	if (rc == 0)
		s->have_res = true;
	else if (rc != EC_ENOTFOUND)
		return rc;
	return store_history_scan(t, s->id, show_hist, s);
}

static void print_cbor_value(const uint8_t *cbor, size_t len)
{
	char *json;
	size_t jlen;
	if (!cbor || !len) {
		printf("null\n");
	} else if (codec_cbor_to_json(cbor, len, &json, &jlen) == 0) {
		printf("%s\n", json);
		free(json);
	} else {
		printf("(unprintable)\n");
	}
}

static void show_text(const struct show *s)
{
	const struct task_rec *r = &s->rec;
	const struct task_spec *t = &r->spec;
	char ts[48];

	printf("task_id:     %s\n", t->id);
	printf("state:       %s\n", task_state_name(r->state));
	printf("type:        %s\n", t->type);
	if (t->workflow)
		printf("workflow:    %s\n", t->workflow);
	if (t->description)
		put_field("description: ", t->description);
	printf("priority:    %u\n", t->priority ? t->priority : 5);
	printf("attempt:     %u\n", r->attempt);
	printf("agent:       %s\n", r->agent[0] ? r->agent : "-");
	put_field("source:      ", r->source);
	fmt_time(r->created_ms, ts, sizeof ts);
	printf("created:     %s\n", ts);
	fmt_time(r->updated_ms, ts, sizeof ts);
	printf("updated:     %s\n", ts);
	if (t->ndeps) {
		printf("depends_on: ");
		for (uint32_t i = 0; i < t->ndeps; i++)
			printf(" %s", t->deps[i]);
		printf("\n");
	}
	if (r->error)
		put_field("error:       ", r->error);
	printf("payload:     ");
	print_cbor_value(t->payload, t->payload_len);
	if (s->have_res) {
		printf("result:      ");
		if (s->res.ok)
			print_cbor_value(s->res.result, s->res.result_len);
		else
			put_field("error: ", s->res.error ? s->res.error : "");
	}
	printf("history:\n");
	for (size_t i = 0; i < s->nhist; i++) {
		const struct history_ev *h = &s->hist[i];
		fmt_time(h->ts_ms, ts, sizeof ts);
		printf("  %s  %-10s -> %-10s attempt %u%s%s%s", ts, task_state_name(h->from),
		       task_state_name(h->to), h->attempt, h->agent[0] ? "  agent " : "",
		       h->agent, h->detail[0] ? "  " : "");
		put_field("", h->detail);
	}
}

static int show_json(const struct show *s)
{
	const struct task_rec *r = &s->rec;
	const struct task_spec *t = &r->spec;
	struct ec_cbor_w w;

	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 13);
	ec_cbor_w_text(&w, "task_id");
	ec_cbor_w_text(&w, t->id);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, task_state_name(r->state));
	ec_cbor_w_text(&w, "type");
	ec_cbor_w_text(&w, t->type);
	ec_cbor_w_text(&w, "workflow");
	text_or_null(&w, t->workflow);
	ec_cbor_w_text(&w, "priority");
	ec_cbor_w_uint(&w, t->priority ? t->priority : 5);
	ec_cbor_w_text(&w, "attempt");
	ec_cbor_w_uint(&w, r->attempt);
	ec_cbor_w_text(&w, "agent");
	text_or_null(&w, r->agent);
	ec_cbor_w_text(&w, "source");
	ec_cbor_w_text(&w, r->source);
	ec_cbor_w_text(&w, "depends_on");
	ec_cbor_w_array(&w, t->ndeps);
	for (uint32_t i = 0; i < t->ndeps; i++)
		ec_cbor_w_text(&w, t->deps[i]);
	ec_cbor_w_text(&w, "error");
	text_or_null(&w, r->error);
	ec_cbor_w_text(&w, "payload");
	ec_cbor_w_raw(&w, t->payload, t->payload_len);
	ec_cbor_w_text(&w, "result");
	if (s->have_res && s->res.ok)
		ec_cbor_w_raw(&w, s->res.result, s->res.result_len);
	else
		ec_cbor_w_null(&w);
	ec_cbor_w_text(&w, "history");
	ec_cbor_w_array(&w, s->nhist);
	for (size_t i = 0; i < s->nhist; i++) {
		const struct history_ev *h = &s->hist[i];
		ec_cbor_w_map(&w, 6);
		ec_cbor_w_text(&w, "ts");
		ec_cbor_w_int(&w, h->ts_ms);
		ec_cbor_w_text(&w, "from");
		ec_cbor_w_text(&w, task_state_name(h->from));
		ec_cbor_w_text(&w, "to");
		ec_cbor_w_text(&w, task_state_name(h->to));
		ec_cbor_w_text(&w, "attempt");
		ec_cbor_w_uint(&w, h->attempt);
		ec_cbor_w_text(&w, "agent");
		text_or_null(&w, h->agent);
		ec_cbor_w_text(&w, "detail");
		text_or_null(&w, h->detail);
	}
	return print_json(&w);
}

static int cmd_show(struct ctl *c, int argc, char **argv)
{
	const char *id = id_arg(argc, argv);
	if (!id) {
		fprintf(stderr, "edgecoordctl: usage: show [--] ID\n");
		return 2;
	}
	if (!id_ok("task", id, TASK_FULLID_MAX))
		return 2;
	struct show s = { .id = id, .json = c->json };
	int rc = store_read(c->store, show_txn, &s);
	int ret;
	if (rc == EC_ENOTFOUND) {
		fprintf(stderr, "edgecoordctl: no task '%s'\n", id);
		ret = 1;
	} else if (rc < 0) {
		ret = fail(rc, "reading the store");
	} else if (c->json) {
		ret = show_json(&s);
	} else {
		show_text(&s);
		ret = 0;
	}
	if (s.have_rec)
		task_rec_fini(&s.rec);
	if (s.have_res)
		result_rec_fini(&s.res);
	free(s.hist);
	return ret;
}

/* ---- workflows: tree, dot, mermaid --------------------------------------- */

struct wf_view {
	const char *id;
	struct workflow_rec wf;
	bool have_wf;
	struct task_rec *steps; /* in id order */
	size_t n;
};

static int wf_step(const struct task_rec *r, void *arg)
{
	struct wf_view *v = arg;
	struct task_rec *s = realloc(v->steps, (v->n + 1) * sizeof *s);
	if (!s)
		return -ENOMEM;
	v->steps = s;
	/* Keep the few fields we print; the borrowed record's pointers die. */
	struct task_rec *d = &v->steps[v->n++];
	memset(d, 0, sizeof *d);
	memcpy(d->spec.id, r->spec.id, sizeof d->spec.id);
	memcpy(d->spec.type, r->spec.type, sizeof d->spec.type);
	d->state = r->state;
	d->attempt = r->attempt;
	memcpy(d->agent, r->agent, sizeof d->agent);
	d->spec.ndeps = r->spec.ndeps;
	if (r->spec.ndeps) {
		d->spec.deps = calloc(r->spec.ndeps, sizeof *d->spec.deps);
		if (!d->spec.deps)
			return -ENOMEM;
		for (uint32_t i = 0; i < r->spec.ndeps; i++)
			if (!(d->spec.deps[i] = strdup(r->spec.deps[i])))
				return -ENOMEM;
	}
	return 0;
}

static int wf_txn(struct store_txn *t, void *arg)
{
	struct wf_view *v = arg;
	int rc = store_workflow_get(t, v->id, &v->wf);
	if (rc < 0)
		return rc;
	v->have_wf = true;
	return store_workflow_steps(t, v->id, wf_step, v);
}

static void wf_view_fini(struct wf_view *v)
{
	for (size_t i = 0; i < v->n; i++)
		task_spec_fini(&v->steps[i].spec);
	free(v->steps);
	if (v->have_wf)
		workflow_rec_fini(&v->wf);
}

static const char *short_id(const char *full)
{
	const char *colon = strchr(full, ':');
	return colon ? colon + 1 : full;
}

static size_t step_index(const struct wf_view *v, const char *id)
{
	size_t lo = 0, hi = v->n; /* steps are in id order */
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(v->steps[mid].spec.id, id);
		if (c == 0)
			return mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return SIZE_MAX;
}

/*
 * Depth of each step = longest path from a root, computed iteratively in
 * rounds (Bellman-Ford style) so a long chain needs no recursion. Steps are
 * then printed by depth, which reads as a tree for the common shapes.
 */
static int print_tree(const struct wf_view *v)
{
	size_t *depth = calloc(v->n ? v->n : 1, sizeof *depth);
	if (!depth)
		return fail(-ENOMEM, "workflow");
	for (bool changed = true; changed;) {
		changed = false;
		for (size_t i = 0; i < v->n; i++) {
			const struct task_spec *t = &v->steps[i].spec;
			for (uint32_t d = 0; d < t->ndeps; d++) {
				size_t j = step_index(v, t->deps[d]);
				if (j != SIZE_MAX && depth[j] + 1 > depth[i]) {
					depth[i] = depth[j] + 1;
					changed = true;
				}
			}
		}
	}
	size_t maxd = 0;
	for (size_t i = 0; i < v->n; i++)
		maxd = depth[i] > maxd ? depth[i] : maxd;
	printf("%s  %s  (%u steps)\n", v->wf.id, workflow_state(&v->wf), v->wf.total);
	for (size_t d = 0; d <= maxd && v->n; d++) {
		for (size_t i = 0; i < v->n; i++) {
			if (depth[i] != d)
				continue;
			const struct task_rec *r = &v->steps[i];
			printf("%*s%s %-*s %-10s", (int)(2 + 2 * d), "", d ? "└─" : "•",
			       (int)(24 > 2 * d ? 24 - 2 * d : 1), short_id(r->spec.id),
			       task_state_name(r->state));
			if (r->spec.ndeps) {
				printf("  after");
				for (uint32_t k = 0; k < r->spec.ndeps; k++)
					printf(" %s", short_id(r->spec.deps[k]));
			}
			printf("\n");
		}
	}
	free(depth);
	return 0;
}

static const char *state_color(enum task_state s)
{
	switch (s) {
	case TS_SUCCEEDED: return "#8fd18f";
	case TS_DEAD: return "#e57373";
	case TS_FAILED: case TS_RETRY_WAIT: return "#ffb74d";
	case TS_RUNNING: case TS_DISPATCHED: return "#64b5f6";
	case TS_READY: return "#fff176";
	case TS_CANCELLED: case TS_SKIPPED: return "#bdbdbd";
	default: return "#ffffff";
	}
}

static void print_dot(const struct wf_view *v)
{
	printf("digraph \"%s\" {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\"];\n",
	       v->wf.id);
	for (size_t i = 0; i < v->n; i++) {
		const struct task_rec *r = &v->steps[i];
		printf("  \"%s\" [label=\"%s\\n%s\", fillcolor=\"%s\"];\n", short_id(r->spec.id),
		       short_id(r->spec.id), task_state_name(r->state), state_color(r->state));
	}
	for (size_t i = 0; i < v->n; i++)
		for (uint32_t d = 0; d < v->steps[i].spec.ndeps; d++)
			printf("  \"%s\" -> \"%s\";\n", short_id(v->steps[i].spec.deps[d]),
			       short_id(v->steps[i].spec.id));
	printf("}\n");
}

/* Mermaid node ids allow fewer characters than ours: number them. */
static void print_mermaid(const struct wf_view *v)
{
	printf("graph LR\n");
	for (int s = 0; s < TS__COUNT; s++)
		printf("  classDef %s fill:%s\n", task_state_name(s), state_color(s));
	for (size_t i = 0; i < v->n; i++) {
		const struct task_rec *r = &v->steps[i];
		printf("  n%zu[\"%s<br/>%s\"]:::%s\n", i, short_id(r->spec.id),
		       task_state_name(r->state), task_state_name(r->state));
	}
	for (size_t i = 0; i < v->n; i++)
		for (uint32_t d = 0; d < v->steps[i].spec.ndeps; d++) {
			size_t j = step_index(v, v->steps[i].spec.deps[d]);
			if (j != SIZE_MAX)
				printf("  n%zu --> n%zu\n", j, i);
		}
}

static int workflow_json(const struct wf_view *v)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 4);
	ec_cbor_w_text(&w, "workflow");
	ec_cbor_w_text(&w, v->wf.id);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, workflow_state(&v->wf));
	ec_cbor_w_text(&w, "total");
	ec_cbor_w_uint(&w, v->wf.total);
	ec_cbor_w_text(&w, "steps");
	ec_cbor_w_array(&w, v->n);
	for (size_t i = 0; i < v->n; i++) {
		const struct task_rec *r = &v->steps[i];
		ec_cbor_w_map(&w, 4);
		ec_cbor_w_text(&w, "task_id");
		ec_cbor_w_text(&w, r->spec.id);
		ec_cbor_w_text(&w, "state");
		ec_cbor_w_text(&w, task_state_name(r->state));
		ec_cbor_w_text(&w, "attempt");
		ec_cbor_w_uint(&w, r->attempt);
		ec_cbor_w_text(&w, "depends_on");
		ec_cbor_w_array(&w, r->spec.ndeps);
		for (uint32_t d = 0; d < r->spec.ndeps; d++)
			ec_cbor_w_text(&w, r->spec.deps[d]);
	}
	return print_json(&w);
}

static int cmd_workflow(struct ctl *c, const char *how, int argc, char **argv)
{
	const char *id = id_arg(argc, argv);
	if (!id) {
		fprintf(stderr, "edgecoordctl: usage: %s [--] ID\n", how);
		return 2;
	}
	if (!id_ok("workflow", id, TASK_ID_MAX))
		return 2;
	struct wf_view v = { .id = id };
	int rc = store_read(c->store, wf_txn, &v), ret = 0;
	if (rc == EC_ENOTFOUND) {
		fprintf(stderr, "edgecoordctl: no workflow '%s'\n", id);
		ret = 1;
	} else if (rc < 0) {
		ret = fail(rc, "reading the store");
	} else if (strcmp(how, "dot") == 0) {
		print_dot(&v);
	} else if (strcmp(how, "mermaid") == 0) {
		print_mermaid(&v);
	} else if (c->json) {
		ret = workflow_json(&v);
	} else {
		ret = print_tree(&v);
	}
	wf_view_fini(&v);
	return ret;
}


/* ---- agents ------------------------------------------------------------------ */

struct agents_ctx {
	bool json;
	size_t n;               /* json: elements printed */
};

static int agent_one(const char *agent, const uint8_t *blob, size_t len, void *arg)
{
	struct agents_ctx *c = arg;
	struct agentrec r;
	if (agentrec_decode(blob, len, &r) < 0) {
		fprintf(stderr, "edgecoordctl: the record of agent %s is unreadable\n", agent);
		return 0;
	}
	uint64_t done = r.ok + r.failed;
	double rate = done ? (double)r.ok / (double)done : 1.0;
	uint32_t p50 = agentrec_median(r.dur, r.ndur);
	if (!c->json) {
		char ts[48];
		fmt_time(r.last_seen_ms, ts, sizeof ts);
		printf("%-24s %-9s %5u %8llu %6.1f%% %7u  %-24s ", agent, r.state, r.slots,
		       (unsigned long long)done, 100.0 * rate, p50, ts);
		put_field("", r.caps);
		return out_failed() ? STOP_OUTPUT : 0;
	}
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 9);
	ec_cbor_w_text(&w, "agent");
	ec_cbor_w_text(&w, agent);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, r.state);
	ec_cbor_w_text(&w, "slots");
	ec_cbor_w_uint(&w, r.slots);
	ec_cbor_w_text(&w, "caps");
	size_t ncaps = 0;
	for (const char *p = r.caps; *p; p++)
		ncaps += *p == ',';
	ncaps += r.caps[0] != 0;
	ec_cbor_w_array(&w, ncaps);
	for (const char *p = r.caps; *p;) {
		size_t k = strcspn(p, ",");
		ec_cbor_w_textn(&w, p, k);
		p += k + (p[k] == ',');
	}
	ec_cbor_w_text(&w, "last_seen");
	ec_cbor_w_int(&w, r.last_seen_ms);
	ec_cbor_w_text(&w, "succeeded");
	ec_cbor_w_uint(&w, r.ok);
	ec_cbor_w_text(&w, "failed");
	ec_cbor_w_uint(&w, r.failed);
	ec_cbor_w_text(&w, "success_rate");
	ec_cbor_w_double(&w, rate);
	ec_cbor_w_text(&w, "p50_ms");
	ec_cbor_w_uint(&w, p50);
	return json_elem(&w, &c->n);
}

static int agents_txn(struct store_txn *t, void *arg)
{
	return store_agents_scan(t, agent_one, arg);
}

static int cmd_agents(struct ctl *c)
{
	struct agents_ctx a = { .json = c->json };
	if (!c->json)
		printf("%-24s %-9s %5s %8s %7s %7s  %-24s %s\n", "AGENT", "STATE", "SLOTS", "TASKS",
		       "OK", "P50_MS", "LAST_SEEN", "CAPS");
	int rc = store_read(c->store, agents_txn, &a);
	if (rc < 0)
		return fail(rc, "reading the store");
	if (rc == STOP_OUTPUT)
		return 1;
	if (c->json)
		json_list_end(a.n);
	return 0;
}

/* ---- changes: control topics ------------------------------------------------ */

#define CTL_TIMEOUT_MS 10000

/* Wait on the MQTT module's fd until cond holds or the deadline passes. */
static struct mqtt_msg *wait_reply(struct mqtt *m, int64_t until, bool *subscribed,
				   bool want_reply)
{
	struct pollfd pfd = { .fd = mqtt_fd(m), .events = POLLIN };
	for (int64_t now = loop_now_ms(); now < until; now = loop_now_ms()) {
		if (poll(&pfd, 1, (int)(until - now)) <= 0)
			continue;
		struct mqtt_events ev;
		mqtt_take_events(m, &ev);
		if (ev.subacks)
			*subscribed = true;
		struct mqtt_msg *msg = mqtt_take_inbound(m, SIZE_MAX);
		if (msg)
			return msg;
		if (!want_reply && *subscribed)
			return NULL;
	}
	return NULL;
}

/* [--workflow] [--] ID: "--" ends the options, so that an id starting with
 * '-' (legal) can be named. The one argument left is the id; NULL if there
 * is not exactly one, or an unknown option. */
static const char *control_id(int argc, char **argv, bool wf_ok, bool *wf)
{
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (!wf_ok || *wf || strcmp(argv[i], "--workflow") != 0)
			return NULL;
		*wf = true;
	}
	return i == argc - 1 ? argv[i] : NULL;
}

static int ctl_control(const char *broker, const char *prefix, bool json, int argc, char **argv)
{
	const char *verb = argv[0], *key, *id;
	bool wf = false;
	size_t max = TASK_ID_MAX;
	if (strcmp(verb, "cancel") == 0 || strcmp(verb, "retry") == 0) {
		id = control_id(argc, argv, true, &wf);
		key = wf ? "workflow" : "task_id";
		max = wf ? TASK_ID_MAX : TASK_FULLID_MAX;
		if (!id) {
			fprintf(stderr, "edgecoordctl: usage: %s [--] ID | %s --workflow [--] ID "
				"(-- before an id that starts with '-')\n", verb, verb);
			return 2;
		}
	} else if (strcmp(verb, "drain") == 0 || strcmp(verb, "undrain") == 0) {
		id = control_id(argc, argv, false, &wf);
		key = "agent";
		if (!id) {
			fprintf(stderr, "edgecoordctl: usage: %s [--] AGENT\n", verb);
			return 2;
		}
	} else {
		fprintf(stderr, "edgecoordctl: unknown command '%s'\n", verb);
		usage(stderr);
		return 2;
	}
	if (!id_ok(wf ? "workflow" : strcmp(key, "agent") == 0 ? "agent" : "task", id, max))
		return 2;

	char client[64], reply[256], topic[256], corr[32], payload[512];
	snprintf(client, sizeof client, "edgecoordctl-%d-%lld", (int)getpid(),
		 (long long)(loop_realtime_ms() % 1000000));
	snprintf(reply, sizeof reply, "%s/ctl/reply/%s", prefix, client);
	snprintf(topic, sizeof topic, "%s/control/%s", prefix, verb);
	snprintf(corr, sizeof corr, "%lld", (long long)loop_realtime_ms());
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 1);
	ec_cbor_w_text(&w, key);
	ec_cbor_w_text(&w, id);
	char *body;
	size_t body_len;
	if (ec_cbor_w_finish(&w) < 0 || codec_cbor_to_json(w.buf, w.len, &body, &body_len) < 0) {
		ec_cbor_w_fini(&w);
		return fail(-ENOMEM, "building the request");
	}
	ec_cbor_w_fini(&w);
	snprintf(payload, sizeof payload, "%s", body);
	free(body);

	const char *subs[] = { reply };
	struct mqtt_opts o = { .uri = broker, .client_id = client, .subs = subs, .n_subs = 1,
			       .session_expiry_s = 1, .reconnect_max_s = 2 };
	struct mqtt *m;
	int rc = mqtt_open(&o, &m);
	if (rc < 0)
		return fail(rc, broker);
	int64_t until = loop_now_ms() + CTL_TIMEOUT_MS;
	bool subscribed = false;
	int ret = 1;
	wait_reply(m, until, &subscribed, false);
	if (!subscribed) {
		fprintf(stderr, "edgecoordctl: no connection to %s\n", broker);
		goto out;
	}
	struct mqtt_pub p = { .topic = topic, .payload = payload, .len = strlen(payload),
			      .content_type = "application/json", .response_topic = reply,
			      .correlation = corr, .correlation_len = strlen(corr) };
	rc = mqtt_publish(m, &p);
	if (rc < 0) {
		fail(rc, "publishing");
		goto out;
	}
	mqtt_flush(m); /* hand it to the sender now, not one wake-up later */
	struct mqtt_msg *msg = wait_reply(m, until, &subscribed, true);
	if (!msg) {
		fprintf(stderr, "edgecoordctl: no answer from the coordinator on %s within %d s\n",
			broker, CTL_TIMEOUT_MS / 1000);
		goto out;
	}
	struct mqtt_msg *next = msg->next;
	static const uint8_t cbor_true = 0xf5;
	uint8_t *ans;
	size_t ans_len;
	bool ok = false;
	if (codec_json_to_cbor((const char *)msg->payload, msg->len, 8, &ans, &ans_len) == 0) {
		ok = codec_cbor_field_equals(ans, ans_len, "ok", &cbor_true, 1);
		free(ans);
	}
	if (json || !ok)
		printf("%.*s\n", (int)msg->len, (const char *)msg->payload);
	else
		printf("%s %s %s: ok\n", verb, key, id);
	mqtt_inbound_done(m, msg, true);
	for (msg = next; msg; msg = next) {
		next = msg->next;
		mqtt_inbound_done(m, msg, true);
	}
	ret = ok ? 0 : 1;
out:
	mqtt_close(m, 1000);
	return ret;
}

/* ---- main ---------------------------------------------------------------- */

static int no_args(const char *cmd, const char *arg)
{
	fprintf(stderr, "edgecoordctl: %s takes no argument ('%s')\n", cmd, arg);
	usage(stderr);
	return 2;
}

static bool is_query(const char *cmd)
{
	static const char *const q[] = { "tasks", "show", "workflow", "dot", "mermaid", "dead",
					  "agents", "fsck" };
	for (size_t i = 0; i < sizeof q / sizeof q[0]; i++)
		if (strcmp(cmd, q[i]) == 0)
			return true;
	return false;
}

static int run(int argc, char **argv)
{
	struct ctl c = { .data_dir = "./edgecoord-data", .broker = "tcp://127.0.0.1:1883",
			 .prefix = "edgecoord" };
	int i = 1;

	for (; i < argc && argv[i][0] == '-'; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--json") == 0) {
			c.json = true;
		} else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--version") == 0) {
			printf("edgecoordctl %s\n", EC_VERSION);
			return 0;
		} else if (i + 1 < argc && strcmp(a, "--data-dir") == 0) {
			c.data_dir = argv[++i];
		} else if (i + 1 < argc && strcmp(a, "--broker") == 0) {
			c.broker = argv[++i];
		} else if (i + 1 < argc && strcmp(a, "--topic-prefix") == 0) {
			c.prefix = argv[++i];
		} else {
			fprintf(stderr, "edgecoordctl: unknown option '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[i];
	argc -= i;
	argv += i;
	if (!is_query(cmd)) {
		log_init("edgecoordctl", LOG_LVL_WARN, 0); /* the MQTT module's info is noise here */
		return ctl_control(c.broker, c.prefix, c.json, argc, argv);
	}

	struct store_opts so = { .dir = c.data_dir, .read_only = true,
				 .map_size = 64u << 20, .max_map_size = 64u << 20 };
	int rc = store_open(&so, &c.store);
	if (rc < 0) {
		fprintf(stderr, "edgecoordctl: cannot open the store in %s: %s\n", c.data_dir,
			ec_strerror(rc));
		return 1;
	}
	int ret;
	if (strcmp(cmd, "tasks") == 0)
		ret = cmd_tasks(&c, argc, argv);
	else if (strcmp(cmd, "show") == 0)
		ret = cmd_show(&c, argc, argv);
	else if (argc > 1 && (strcmp(cmd, "dead") == 0 || strcmp(cmd, "agents") == 0 ||
			      strcmp(cmd, "fsck") == 0))
		ret = no_args(cmd, argv[1]);
	else if (strcmp(cmd, "dead") == 0)
		ret = cmd_dead(&c);
	else if (strcmp(cmd, "agents") == 0)
		ret = cmd_agents(&c);
	else if (strcmp(cmd, "fsck") == 0)
		ret = cmd_fsck(&c);
	else
		ret = cmd_workflow(&c, cmd, argc, argv);
	store_close(c.store);
	return ret;
}

/* Whatever was printed must have reached stdout: a full disk or a closed
 * pipe fails the command rather than truncating its output silently. */
static int output_done(int ret)
{
	int err = fflush(stdout) == EOF ? errno : out_errno;
	if (!err && !ferror(stdout))
		return ret;
	fprintf(stderr, "edgecoordctl: writing the output: %s\n",
		err ? strerror(err) : "write error");
	return 1;
}

int main(int argc, char **argv)
{
	/* A closed pipe (edgecoordctl tasks | head) is then a write error that
	 * ends the listing and its read transaction, not a signal that kills
	 * the process inside it: LMDB would keep the dead reader's slot. */
	signal(SIGPIPE, SIG_IGN);
	return output_done(run(argc, argv));
}
