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

/* Joined by hand: snprintf cost as much as the status message itself. */
int msg_topic(char *buf, size_t len, const char *prefix, const char *kind,
	      const char *id, const char *leaf)
{
	const char *part[] = { prefix, kind, id, leaf };
	size_t at = 0;

	for (int i = 0; i < 4 && part[i]; i++) {
		size_t n = strlen(part[i]);
		if (at + (i > 0) + n >= len)
			return -ENAMETOOLONG;
		if (i > 0)
			buf[at++] = '/';
		memcpy(buf + at, part[i], n);
		at += n;
	}
	buf[at] = '\0';
	return 0;
}

static void text_or_null(struct codec_w *w, const char *s)
{
	if (s && *s)
		codec_w_text(w, s);
	else
		codec_w_null(w);
}

int msg_status(const struct task_rec *r, int64_t ts_ms, enum encoding enc,
	       uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	codec_w_init(&w, enc);
	codec_w_map(&w, 7);
	codec_w_text(&w, "task_id");
	codec_w_text(&w, r->spec.id);
	codec_w_text(&w, "workflow");
	text_or_null(&w, r->spec.workflow);
	codec_w_text(&w, "state");
	codec_w_text(&w, task_state_name(r->state));
	codec_w_text(&w, "attempt");
	codec_w_uint(&w, r->attempt);
	codec_w_text(&w, "agent");
	text_or_null(&w, r->agent);
	codec_w_text(&w, "ts");
	codec_w_int(&w, ts_ms);
	codec_w_text(&w, "error");
	text_or_null(&w, r->error);
	return codec_w_take(&w, out, out_len);
}

int msg_result(const struct task_rec *r, const struct result_rec *res,
	       enum encoding enc, uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	codec_w_init(&w, enc);
	codec_w_map(&w, 5);
	codec_w_text(&w, "task_id");
	codec_w_text(&w, r->spec.id);
	codec_w_text(&w, "attempt");
	codec_w_uint(&w, res->attempt);
	codec_w_text(&w, "agent");
	text_or_null(&w, res->agent);
	codec_w_text(&w, "ok");
	codec_w_bool(&w, res->ok);
	if (res->ok) {
		codec_w_text(&w, "result");
		codec_w_cbor(&w, res->result, res->result_len);
	} else {
		codec_w_text(&w, "error");
		codec_w_text(&w, res->error ? res->error : "");
	}
	return codec_w_take(&w, out, out_len);
}

int msg_workflow(const struct workflow_rec *wf, int64_t ts_ms, enum encoding enc,
		 uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	size_t nstates = 0;
	uint32_t done = 0;

	for (int s = 0; s < TS__COUNT; s++) {
		nstates += wf->counts[s] != 0;
		if (task_state_final(s))
			done += wf->counts[s];
	}
	codec_w_init(&w, enc);
	codec_w_map(&w, 6);
	codec_w_text(&w, "workflow");
	codec_w_text(&w, wf->id);
	codec_w_text(&w, "state");
	codec_w_text(&w, workflow_state(wf));
	codec_w_text(&w, "total");
	codec_w_uint(&w, wf->total);
	codec_w_text(&w, "counts");
	codec_w_map(&w, nstates);
	for (int s = 0; s < TS__COUNT; s++) {
		if (!wf->counts[s])
			continue;
		codec_w_text(&w, task_state_name(s));
		codec_w_uint(&w, wf->counts[s]);
	}
	codec_w_text(&w, "percent");
	codec_w_uint(&w, wf->total ? (uint64_t)done * 100 / wf->total : 100);
	codec_w_text(&w, "ts");
	codec_w_int(&w, ts_ms);
	return codec_w_take(&w, out, out_len);
}

static const char *code_name(int code)
{
	const char *name = ec_reject_code(code);
	return name ? name : "internal";
}

int msg_rejection(int code, const char *detail, const char *task_id,
		  enum encoding enc, uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	codec_w_init(&w, enc);
	codec_w_map(&w, 3);
	codec_w_text(&w, "error");
	codec_w_text(&w, code_name(code));
	codec_w_text(&w, "detail");
	codec_w_text(&w, detail ? detail : "");
	codec_w_text(&w, "task_id");
	text_or_null(&w, task_id);
	return codec_w_take(&w, out, out_len);
}

int msg_answer_accepted(const struct submission *sub, enum encoding enc,
			uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	codec_w_init(&w, enc);
	codec_w_map(&w, 4);
	codec_w_text(&w, "ok");
	codec_w_bool(&w, true);
	codec_w_text(&w, "task_id");
	text_or_null(&w, sub->kind == SUB_BATCH ? NULL : sub->id);
	codec_w_text(&w, "task_ids");
	codec_w_array(&w, sub->ntasks);
	for (uint32_t i = 0; i < sub->ntasks; i++)
		codec_w_text(&w, sub->tasks[i].id);
	codec_w_text(&w, "state");
	codec_w_text(&w, "accepted");
	return codec_w_take(&w, out, out_len);
}

int msg_answer_duplicate(const char *id, const char *state, enum encoding enc,
			 uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	codec_w_init(&w, enc);
	codec_w_map(&w, 4);
	codec_w_text(&w, "ok");
	codec_w_bool(&w, true);
	codec_w_text(&w, "duplicate");
	codec_w_bool(&w, true);
	codec_w_text(&w, "task_id");
	text_or_null(&w, id);
	codec_w_text(&w, "state");
	codec_w_text(&w, state);
	return codec_w_take(&w, out, out_len);
}

int msg_answer_error(int code, const char *detail, enum encoding enc,
		     uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	codec_w_init(&w, enc);
	codec_w_map(&w, 3);
	codec_w_text(&w, "ok");
	codec_w_bool(&w, false);
	codec_w_text(&w, "error");
	codec_w_text(&w, code_name(code));
	codec_w_text(&w, "detail");
	codec_w_text(&w, detail ? detail : "");
	return codec_w_take(&w, out, out_len);
}

int msg_answer_control(const char *verb, const char *key, const char *id,
		       enum encoding enc, uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	codec_w_init(&w, enc);
	codec_w_map(&w, 3);
	codec_w_text(&w, "ok");
	codec_w_bool(&w, true);
	codec_w_text(&w, "verb");
	codec_w_text(&w, verb);
	codec_w_text(&w, key);
	codec_w_text(&w, id);
	return codec_w_take(&w, out, out_len);
}

int msg_coordinator_state(const char *state, const char *node, int64_t ts_ms,
			  uint8_t **out, size_t *out_len)
{
	struct codec_w w;
	codec_w_init(&w, ENC_JSON);
	codec_w_map(&w, 4);
	codec_w_text(&w, "state");
	codec_w_text(&w, state);
	codec_w_text(&w, "node");
	codec_w_text(&w, node);
	codec_w_text(&w, "version");
	codec_w_text(&w, EC_VERSION);
	codec_w_text(&w, "ts");
	codec_w_int(&w, ts_ms);
	return codec_w_take(&w, out, out_len);
}
