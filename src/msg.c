/* SPDX-License-Identifier: MIT */
/*
 * msg.c - builders for every payload edgecoord publishes (see msg.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbw.h"
#include "codec.h"
#include "edgecoord/err.h"
#include "msg.h"

int msg_topic(char *buf, size_t len, const char *prefix, const char *kind,
	      const char *id, const char *leaf)
{
	int n = leaf ? snprintf(buf, len, "%s/%s/%s/%s", prefix, kind, id, leaf)
		     : snprintf(buf, len, "%s/%s/%s", prefix, kind, id);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Hand w's CBOR out as is, or converted to JSON text. Consumes w. */
static int finish(struct cbw *w, enum encoding enc, uint8_t **out, size_t *out_len)
{
	int rc = cbw_finish(w);
	if (rc < 0) {
		cbw_fini(w);
		return rc;
	}
	if (enc == ENC_CBOR) {
		*out = cbw_take(w, out_len);
		return 0;
	}
	char *json;
	size_t jlen;
	rc = codec_cbor_to_json(w->buf, w->len, &json, &jlen);
	cbw_fini(w);
	if (rc < 0)
		return rc;
	*out = (uint8_t *)json;
	*out_len = jlen;
	return 0;
}

static void text_or_null(struct cbw *w, const char *s)
{
	if (s && *s)
		cbw_text(w, s);
	else
		cbw_null(w);
}

int msg_status(const struct task_rec *r, int64_t ts_ms, enum encoding enc,
	       uint8_t **out, size_t *out_len)
{
	struct cbw w;
	cbw_init(&w);
	cbw_map(&w, 7);
	cbw_text(&w, "task_id");
	cbw_text(&w, r->spec.id);
	cbw_text(&w, "workflow");
	text_or_null(&w, r->spec.workflow);
	cbw_text(&w, "state");
	cbw_text(&w, task_state_name(r->state));
	cbw_text(&w, "attempt");
	cbw_uint(&w, r->attempt);
	cbw_text(&w, "agent");
	text_or_null(&w, r->agent);
	cbw_text(&w, "ts");
	cbw_int(&w, ts_ms);
	cbw_text(&w, "error");
	text_or_null(&w, r->error);
	return finish(&w, enc, out, out_len);
}

int msg_result(const struct task_rec *r, const struct result_rec *res,
	       enum encoding enc, uint8_t **out, size_t *out_len)
{
	struct cbw w;
	cbw_init(&w);
	cbw_map(&w, 5);
	cbw_text(&w, "task_id");
	cbw_text(&w, r->spec.id);
	cbw_text(&w, "attempt");
	cbw_uint(&w, res->attempt);
	cbw_text(&w, "agent");
	text_or_null(&w, res->agent);
	cbw_text(&w, "ok");
	cbw_bool(&w, res->ok);
	if (res->ok) {
		cbw_text(&w, "result");
		cbw_raw(&w, res->result, res->result_len);
	} else {
		cbw_text(&w, "error");
		cbw_text(&w, res->error ? res->error : "");
	}
	return finish(&w, enc, out, out_len);
}

int msg_workflow(const struct workflow_rec *wf, int64_t ts_ms, enum encoding enc,
		 uint8_t **out, size_t *out_len)
{
	struct cbw w;
	size_t nstates = 0;
	uint32_t done = 0;

	for (int s = 0; s < TS__COUNT; s++) {
		nstates += wf->counts[s] != 0;
		if (task_state_final(s))
			done += wf->counts[s];
	}
	cbw_init(&w);
	cbw_map(&w, 6);
	cbw_text(&w, "workflow");
	cbw_text(&w, wf->id);
	cbw_text(&w, "state");
	cbw_text(&w, workflow_state(wf));
	cbw_text(&w, "total");
	cbw_uint(&w, wf->total);
	cbw_text(&w, "counts");
	cbw_map(&w, nstates);
	for (int s = 0; s < TS__COUNT; s++) {
		if (!wf->counts[s])
			continue;
		cbw_text(&w, task_state_name(s));
		cbw_uint(&w, wf->counts[s]);
	}
	cbw_text(&w, "percent");
	cbw_uint(&w, wf->total ? (uint64_t)done * 100 / wf->total : 100);
	cbw_text(&w, "ts");
	cbw_int(&w, ts_ms);
	return finish(&w, enc, out, out_len);
}

static const char *code_name(int code)
{
	const char *name = ec_reject_code(code);
	return name ? name : "internal";
}

int msg_rejection(int code, const char *detail, const char *task_id,
		  enum encoding enc, uint8_t **out, size_t *out_len)
{
	struct cbw w;
	cbw_init(&w);
	cbw_map(&w, 3);
	cbw_text(&w, "error");
	cbw_text(&w, code_name(code));
	cbw_text(&w, "detail");
	cbw_text(&w, detail ? detail : "");
	cbw_text(&w, "task_id");
	text_or_null(&w, task_id);
	return finish(&w, enc, out, out_len);
}

int msg_answer_accepted(const struct submission *sub, enum encoding enc,
			uint8_t **out, size_t *out_len)
{
	struct cbw w;
	cbw_init(&w);
	cbw_map(&w, 4);
	cbw_text(&w, "ok");
	cbw_bool(&w, true);
	cbw_text(&w, "task_id");
	text_or_null(&w, sub->kind == SUB_BATCH ? NULL : sub->id);
	cbw_text(&w, "task_ids");
	cbw_array(&w, sub->ntasks);
	for (uint32_t i = 0; i < sub->ntasks; i++)
		cbw_text(&w, sub->tasks[i].id);
	cbw_text(&w, "state");
	cbw_text(&w, "accepted");
	return finish(&w, enc, out, out_len);
}

int msg_answer_duplicate(const char *id, const char *state, enum encoding enc,
			 uint8_t **out, size_t *out_len)
{
	struct cbw w;
	cbw_init(&w);
	cbw_map(&w, 4);
	cbw_text(&w, "ok");
	cbw_bool(&w, true);
	cbw_text(&w, "duplicate");
	cbw_bool(&w, true);
	cbw_text(&w, "task_id");
	text_or_null(&w, id);
	cbw_text(&w, "state");
	cbw_text(&w, state);
	return finish(&w, enc, out, out_len);
}

int msg_answer_error(int code, const char *detail, enum encoding enc,
		     uint8_t **out, size_t *out_len)
{
	struct cbw w;
	cbw_init(&w);
	cbw_map(&w, 3);
	cbw_text(&w, "ok");
	cbw_bool(&w, false);
	cbw_text(&w, "error");
	cbw_text(&w, code_name(code));
	cbw_text(&w, "detail");
	cbw_text(&w, detail ? detail : "");
	return finish(&w, enc, out, out_len);
}

int msg_answer_control(const char *verb, const char *key, const char *id,
		       enum encoding enc, uint8_t **out, size_t *out_len)
{
	struct cbw w;
	cbw_init(&w);
	cbw_map(&w, 3);
	cbw_text(&w, "ok");
	cbw_bool(&w, true);
	cbw_text(&w, "verb");
	cbw_text(&w, verb);
	cbw_text(&w, key);
	cbw_text(&w, id);
	return finish(&w, enc, out, out_len);
}

int msg_coordinator_state(const char *state, const char *node, int64_t ts_ms,
			  uint8_t **out, size_t *out_len)
{
	struct cbw w;
	cbw_init(&w);
	cbw_map(&w, 4);
	cbw_text(&w, "state");
	cbw_text(&w, state);
	cbw_text(&w, "node");
	cbw_text(&w, node);
	cbw_text(&w, "version");
	cbw_text(&w, EC_VERSION);
	cbw_text(&w, "ts");
	cbw_int(&w, ts_ms);
	return finish(&w, ENC_JSON, out, out_len);
}
