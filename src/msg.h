/* SPDX-License-Identifier: MIT */
/*
 * msg.h - the payloads edgecoord publishes (DESIGN 2, 3.4, 5): task status
 * events, results, workflow status, rejections, answers on a Response Topic,
 * and the coordinator's own state. Each is built once as CBOR with the ec_cbor_w writer and,
 * for a JSON submitter, converted with codec_cbor_to_json(), so the two
 * encodings can never drift apart. Topics are built here too.
 *
 * Every builder returns 0 and a new buffer (*out, free()) or -ENOMEM /
 * EC_EMALFORMED. Pure functions; no I/O.
 */
#ifndef EC_MSG_H
#define EC_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"
#include "task.h"

#define MSG_TOPIC_MAX 512

/* P/tasks/ID/status, P/tasks/ID/result, P/workflows/ID/status,
 * P/rejected/SOURCE. Return 0 or -ENAMETOOLONG. */
int msg_topic(char *buf, size_t len, const char *prefix, const char *kind,
	      const char *id, const char *leaf);

int msg_status(const struct task_rec *r, int64_t ts_ms, enum encoding enc,
	       uint8_t **out, size_t *out_len);
int msg_result(const struct task_rec *r, const struct result_rec *res,
	       enum encoding enc, uint8_t **out, size_t *out_len);
int msg_workflow(const struct workflow_rec *w, int64_t ts_ms, enum encoding enc,
		 uint8_t **out, size_t *out_len);
/* {"error": CODE, "detail": TEXT, "task_id": ID or null} */
int msg_rejection(int code, const char *detail, const char *task_id,
		  enum encoding enc, uint8_t **out, size_t *out_len);

/* Answers on a Response Topic. */
int msg_answer_accepted(const struct submission *sub, enum encoding enc,
			uint8_t **out, size_t *out_len);
int msg_answer_duplicate(const char *id, const char *state, enum encoding enc,
			 uint8_t **out, size_t *out_len);
int msg_answer_error(int code, const char *detail, enum encoding enc,
		     uint8_t **out, size_t *out_len);
/* {"ok": true, "verb": VERB, KEY: ID} for a control message. */
int msg_answer_control(const char *verb, const char *key, const char *id,
		       enum encoding enc, uint8_t **out, size_t *out_len);

/* {"state": "online"|"offline", "node": NODE, "version": V, "ts": ms} (JSON) */
int msg_coordinator_state(const char *state, const char *node, int64_t ts_ms,
			  uint8_t **out, size_t *out_len);

#endif
