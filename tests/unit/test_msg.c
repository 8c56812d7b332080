/* SPDX-License-Identifier: MIT */
/*
 * test_msg.c - the payloads edgecoord publishes (msg.c): JSON written
 * directly must read the same as the CBOR it mirrors, converted, and the
 * text must be what topics.md shows; topics are joined within their cap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <errno.h>

#include "codec.h"
#include "edgecoord/err.h"
#include "msg.h"
#include "store.h"

/* Both encodings of one message: the JSON must be the converted CBOR. */
#define SAME_BOTH_WAYS(call_with_enc, want_json)                                        \
	do {                                                                            \
		uint8_t *c_, *j_;                                                      \
		size_t cn_, jn_, vn_;                                                  \
		char *v_;                                                              \
		enum encoding enc;                                                     \
		enc = ENC_CBOR;                                                        \
		assert_int_equal(call_with_enc, 0);                                    \
		c_ = out, cn_ = out_len;                                               \
		enc = ENC_JSON;                                                        \
		assert_int_equal(call_with_enc, 0);                                    \
		j_ = out, jn_ = out_len;                                               \
		assert_int_equal(codec_cbor_to_json(c_, cn_, &v_, &vn_), 0);          \
		assert_int_equal(jn_, vn_);                                            \
		assert_memory_equal(j_, v_, vn_);                                      \
		assert_string_equal((char *)j_, want_json);                            \
		free(c_);                                                              \
		free(j_);                                                              \
		free(v_);                                                              \
	} while (0)

static void test_status(void **state)
{
	(void)state;
	uint8_t *out;
	size_t out_len;
	struct task_rec r;
	memset(&r, 0, sizeof r);
	snprintf(r.spec.id, sizeof r.spec.id, "wf:s1");
	r.spec.workflow = "wf";
	r.state = TS_DEAD;
	r.attempt = 3;
	snprintf(r.agent, sizeof r.agent, "a1");
	r.error = "exit \"2\"\n";
	SAME_BOTH_WAYS(msg_status(&r, -5, enc, &out, &out_len),
		       "{\"task_id\":\"wf:s1\",\"workflow\":\"wf\",\"state\":\"dead\","
		       "\"attempt\":3,\"agent\":\"a1\",\"ts\":-5,"
		       "\"error\":\"exit \\\"2\\\"\\u000a\"}");
	r.spec.workflow = NULL;
	r.agent[0] = '\0';
	r.error = NULL;
	r.state = TS_READY;
	SAME_BOTH_WAYS(msg_status(&r, 1763800000123, enc, &out, &out_len),
		       "{\"task_id\":\"wf:s1\",\"workflow\":null,\"state\":\"ready\","
		       "\"attempt\":3,\"agent\":null,\"ts\":1763800000123,\"error\":null}");
}

static void test_result_and_workflow(void **state)
{
	(void)state;
	uint8_t *out;
	size_t out_len;
	static const uint8_t item[] = { 0xa1, 0x61, 0x6e, 0x82, 0x01, 0xf6 }; /* {"n":[1,null]} */
	struct task_rec r;
	memset(&r, 0, sizeof r);
	snprintf(r.spec.id, sizeof r.spec.id, "t");
	struct result_rec res = { .attempt = 1, .ok = true, .result = (uint8_t *)item,
				  .result_len = sizeof item };
	snprintf(res.agent, sizeof res.agent, "x");
	SAME_BOTH_WAYS(msg_result(&r, &res, enc, &out, &out_len),
		       "{\"task_id\":\"t\",\"attempt\":1,\"agent\":\"x\",\"ok\":true,"
		       "\"result\":{\"n\":[1,null]}}");
	res.result = NULL;
	SAME_BOTH_WAYS(msg_result(&r, &res, enc, &out, &out_len),
		       "{\"task_id\":\"t\",\"attempt\":1,\"agent\":\"x\",\"ok\":true,"
		       "\"result\":null}");

	struct workflow_rec wf;
	memset(&wf, 0, sizeof wf);
	snprintf(wf.id, sizeof wf.id, "w");
	wf.total = 3;
	wf.counts[TS_SUCCEEDED] = 2;
	wf.counts[TS_RUNNING] = 1;
	SAME_BOTH_WAYS(msg_workflow(&wf, 7, enc, &out, &out_len),
		       "{\"workflow\":\"w\",\"state\":\"running\",\"total\":3,"
		       "\"counts\":{\"running\":1,\"succeeded\":2},\"percent\":66,\"ts\":7}");
	wf.total = 0;
	memset(wf.counts, 0, sizeof wf.counts);
	SAME_BOTH_WAYS(msg_workflow(&wf, 7, enc, &out, &out_len),
		       "{\"workflow\":\"w\",\"state\":\"succeeded\",\"total\":0,"
		       "\"counts\":{},\"percent\":100,\"ts\":7}");
}

static void test_answers(void **state)
{
	(void)state;
	uint8_t *out;
	size_t out_len;
	struct submission sub;
	struct task_spec tasks[2];
	memset(&sub, 0, sizeof sub);
	memset(tasks, 0, sizeof tasks);
	snprintf(tasks[0].id, sizeof tasks[0].id, "a");
	snprintf(tasks[1].id, sizeof tasks[1].id, "b");
	sub.kind = SUB_BATCH;
	sub.tasks = tasks;
	sub.ntasks = 2;
	SAME_BOTH_WAYS(msg_answer_accepted(&sub, enc, &out, &out_len),
		       "{\"ok\":true,\"task_id\":null,\"task_ids\":[\"a\",\"b\"],"
		       "\"state\":\"accepted\"}");
	sub.ntasks = 0;
	SAME_BOTH_WAYS(msg_answer_accepted(&sub, enc, &out, &out_len),
		       "{\"ok\":true,\"task_id\":null,\"task_ids\":[],\"state\":\"accepted\"}");
	SAME_BOTH_WAYS(msg_rejection(EC_EMALFORMED, "bad", NULL, enc, &out, &out_len),
		       "{\"error\":\"malformed\",\"detail\":\"bad\",\"task_id\":null}");
}

/* Joined within the buffer, its NUL included, or -ENAMETOOLONG. */
static void test_topic(void **state)
{
	(void)state;
	char b[MSG_TOPIC_MAX];
	assert_int_equal(msg_topic(b, sizeof b, "ec", "tasks", "t1", "status"), 0);
	assert_string_equal(b, "ec/tasks/t1/status");
	assert_int_equal(msg_topic(b, sizeof b, "ec", "rejected", "src", NULL), 0);
	assert_string_equal(b, "ec/rejected/src");
	assert_int_equal(msg_topic(b, 15, "ec", "tasks", "ab", "st"), 0); /* 14 + NUL */
	assert_string_equal(b, "ec/tasks/ab/st");
	assert_int_equal(msg_topic(b, 14, "ec", "tasks", "ab", "st"), -ENAMETOOLONG);
	assert_int_equal(msg_topic(b, 15, "ec", "tasks", "abc", "st"), -ENAMETOOLONG);
	assert_int_equal(msg_topic(b, 3, "ec", "tasks", "abc", NULL), -ENAMETOOLONG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status),
		cmocka_unit_test(test_result_and_workflow),
		cmocka_unit_test(test_answers),
		cmocka_unit_test(test_topic),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
