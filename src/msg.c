/* SPDX-License-Identifier: MIT */
/*
 * msg.c - builders for every payload edgecoord publishes (see msg.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgecoord/proto.h"
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
static int finish(struct ec_cbor_w *w, enum encoding enc, uint8_t **out, size_t *out_len)
{
	int rc = ec_cbor_w_finish(w);
	if (rc < 0) {
		ec_cbor_w_fini(w);
		return rc;
	}
	if (enc == ENC_CBOR) {
		*out = ec_cbor_w_take(w, out_len);
		return 0;
	}
	char *json;
	size_t jlen;
	rc = codec_cbor_to_json(w->buf, w->len, &json, &jlen);
	ec_cbor_w_fini(w);
	if (rc < 0)
		return rc;
	*out = (uint8_t *)json;
	*out_len = jlen;
	return 0;
}

static void text_or_null(struct ec_cbor_w *w, const char *s)
{
	if (s && *s)
		ec_cbor_w_text(w, s);
	else
		ec_cbor_w_null(w);
}

int msg_status(const struct task_rec *r, int64_t ts_ms, enum encoding enc,
	       uint8_t **out, size_t *out_len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 7);
	ec_cbor_w_text(&w, "task_id");
	ec_cbor_w_text(&w, r->spec.id);
	ec_cbor_w_text(&w, "workflow");
	text_or_null(&w, r->spec.workflow);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, task_state_name(r->state));
	ec_cbor_w_text(&w, "attempt");
	ec_cbor_w_uint(&w, r->attempt);
	ec_cbor_w_text(&w, "agent");
	text_or_null(&w, r->agent);
	ec_cbor_w_text(&w, "ts");
	ec_cbor_w_int(&w, ts_ms);
	ec_cbor_w_text(&w, "error");
	text_or_null(&w, r->error);
	return finish(&w, enc, out, out_len);
}

int msg_result(const struct task_rec *r, const struct result_rec *res,
	       enum encoding enc, uint8_t **out, size_t *out_len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 5);
	ec_cbor_w_text(&w, "task_id");
	ec_cbor_w_text(&w, r->spec.id);
	ec_cbor_w_text(&w, "attempt");
	ec_cbor_w_uint(&w, res->attempt);
	ec_cbor_w_text(&w, "agent");
	text_or_null(&w, res->agent);
	ec_cbor_w_text(&w, "ok");
	ec_cbor_w_bool(&w, res->ok);
	if (res->ok) {
		ec_cbor_w_text(&w, "result");
		ec_cbor_w_raw(&w, res->result, res->result_len);
	} else {
		ec_cbor_w_text(&w, "error");
		ec_cbor_w_text(&w, res->error ? res->error : "");
	}
	return finish(&w, enc, out, out_len);
}

int msg_workflow(const struct workflow_rec *wf, int64_t ts_ms, enum encoding enc,
		 uint8_t **out, size_t *out_len)
{
	struct ec_cbor_w w;
	size_t nstates = 0;
	uint32_t done = 0;

	for (int s = 0; s < TS__COUNT; s++) {
		nstates += wf->counts[s] != 0;
		if (task_state_final(s))
			done += wf->counts[s];
	}
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 6);
	ec_cbor_w_text(&w, "workflow");
	ec_cbor_w_text(&w, wf->id);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, workflow_state(wf));
	ec_cbor_w_text(&w, "total");
	ec_cbor_w_uint(&w, wf->total);
	ec_cbor_w_text(&w, "counts");
	ec_cbor_w_map(&w, nstates);
	for (int s = 0; s < TS__COUNT; s++) {
		if (!wf->counts[s])
			continue;
		ec_cbor_w_text(&w, task_state_name(s));
		ec_cbor_w_uint(&w, wf->counts[s]);
	}
	ec_cbor_w_text(&w, "percent");
	ec_cbor_w_uint(&w, wf->total ? (uint64_t)done * 100 / wf->total : 100);
	ec_cbor_w_text(&w, "ts");
	ec_cbor_w_int(&w, ts_ms);
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
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 3);
	ec_cbor_w_text(&w, "error");
	ec_cbor_w_text(&w, code_name(code));
	ec_cbor_w_text(&w, "detail");
	ec_cbor_w_text(&w, detail ? detail : "");
	ec_cbor_w_text(&w, "task_id");
	text_or_null(&w, task_id);
	return finish(&w, enc, out, out_len);
}

int msg_answer_accepted(const struct submission *sub, enum encoding enc,
			uint8_t **out, size_t *out_len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 4);
	ec_cbor_w_text(&w, "ok");
	ec_cbor_w_bool(&w, true);
	ec_cbor_w_text(&w, "task_id");
	text_or_null(&w, sub->kind == SUB_BATCH ? NULL : sub->id);
	ec_cbor_w_text(&w, "task_ids");
	ec_cbor_w_array(&w, sub->ntasks);
	for (uint32_t i = 0; i < sub->ntasks; i++)
		ec_cbor_w_text(&w, sub->tasks[i].id);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, "accepted");
	return finish(&w, enc, out, out_len);
}

int msg_answer_duplicate(const char *id, const char *state, enum encoding enc,
			 uint8_t **out, size_t *out_len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 4);
	ec_cbor_w_text(&w, "ok");
	ec_cbor_w_bool(&w, true);
	ec_cbor_w_text(&w, "duplicate");
	ec_cbor_w_bool(&w, true);
	ec_cbor_w_text(&w, "task_id");
	text_or_null(&w, id);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, state);
	return finish(&w, enc, out, out_len);
}

int msg_answer_error(int code, const char *detail, enum encoding enc,
		     uint8_t **out, size_t *out_len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 3);
	ec_cbor_w_text(&w, "ok");
	ec_cbor_w_bool(&w, false);
	ec_cbor_w_text(&w, "error");
	ec_cbor_w_text(&w, code_name(code));
	ec_cbor_w_text(&w, "detail");
	ec_cbor_w_text(&w, detail ? detail : "");
	return finish(&w, enc, out, out_len);
}

int msg_answer_control(const char *verb, const char *key, const char *id,
		       enum encoding enc, uint8_t **out, size_t *out_len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 3);
	ec_cbor_w_text(&w, "ok");
	ec_cbor_w_bool(&w, true);
	ec_cbor_w_text(&w, "verb");
	ec_cbor_w_text(&w, verb);
	ec_cbor_w_text(&w, key);
	ec_cbor_w_text(&w, id);
	return finish(&w, enc, out, out_len);
}

int msg_coordinator_state(const char *state, const char *node, int64_t ts_ms,
			  uint8_t **out, size_t *out_len)
{
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_map(&w, 4);
	ec_cbor_w_text(&w, "state");
	ec_cbor_w_text(&w, state);
	ec_cbor_w_text(&w, "node");
	ec_cbor_w_text(&w, node);
	ec_cbor_w_text(&w, "version");
	ec_cbor_w_text(&w, EC_VERSION);
	ec_cbor_w_text(&w, "ts");
	ec_cbor_w_int(&w, ts_ms);
	return finish(&w, ENC_JSON, out, out_len);
}
