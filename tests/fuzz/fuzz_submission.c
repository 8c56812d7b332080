/* SPDX-License-Identifier: MIT */
/*
 * fuzz_submission.c - codec_decode_submission() on arbitrary bytes, in the
 * encoding codec_sniff() picks and in the other one, with default limits.
 * A refusal must carry a rejection code and a NUL-terminated detail; an
 * acceptance must respect every limit and hold only canonical CBOR that
 * converts to JSON.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "edgecoord/err.h"

static void check_item(const uint8_t *p, size_t n, const struct limits *lim)
{
	if (!p)
		return;
	if (n > lim->max_payload_bytes || codec_cbor_check(p, n, lim->max_depth) != 0)
		abort();
	uint8_t *c = NULL;
	size_t cn = 0;
	if (codec_cbor_canonical(p, n, lim->max_depth, &c, &cn) != 0 || cn != n ||
	    memcmp(c, p, n) != 0)
		abort();
	free(c);
	char *json = NULL;
	size_t jn = 0;
	if (codec_cbor_to_json(p, n, &json, &jn) != 0)
		abort();
	free(json);
}

static void run(const uint8_t *data, size_t size, enum encoding enc, const struct limits *lim)
{
	struct submission s;
	struct sub_error e;
	memset(&e, 0x5a, sizeof e);
	int rc = codec_decode_submission(data, size, enc, lim, &s, &e);
	if (rc != 0) {
		if (!ec_reject_code(rc) || e.code != rc ||
		    !memchr(e.detail, 0, sizeof e.detail) || !memchr(e.task_id, 0, sizeof e.task_id))
			abort();
		return;
	}
	if (s.ntasks == 0 || s.ntasks > lim->max_tasks_per_submission)
		abort();
	for (uint32_t i = 0; i < s.ntasks; i++) {
		const struct task_spec *t = &s.tasks[i];
		if (t->ndeps > lim->max_deps_per_task || t->priority > 10 || t->timeout_ms == 0 ||
		    t->timeout_ms < -1 || !task_id_valid(t->type, strlen(t->type)))
			abort();
		if ((s.kind == SUB_WORKFLOW) != (t->workflow != NULL))
			abort();
		for (uint32_t k = 1; k < t->naffinity; k++)
			if (strcmp(t->affinity[k - 1].key, t->affinity[k].key) >= 0)
				abort();
		if (t->when_task) {
			bool found = false;
			for (uint32_t k = 0; k < t->ndeps; k++)
				found |= strcmp(t->deps[k], t->when_task) == 0;
			if (!found || !t->when_equals)
				abort();
		}
		check_item(t->payload, t->payload_len, lim);
		check_item(t->when_equals, t->when_equals_len, lim);
	}
	submission_fini(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct limits lim;
	limits_default(&lim);
	enum encoding enc = codec_sniff(data, size);
	run(data, size, enc, &lim);
	run(data, size, enc == ENC_JSON ? ENC_CBOR : ENC_JSON, &lim);
	return 0;
}
