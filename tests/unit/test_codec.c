/* SPDX-License-Identifier: MIT */
/*
 * test_codec.c - the codec (codec.h): CBOR checking and canonical form,
 * JSON <-> CBOR, field equality for `when`, and every way a submission or a
 * control message is refused, in both encodings.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <math.h>

#include "edgecoord/proto.h"
#include "codec.h"
#include "codec_int.h"
#include "edgecoord/err.h"

/* ---- helpers ---- */

static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
	size_t n = 0;
	for (; hex[0] && hex[1]; hex += 2) {
		unsigned v;
		sscanf(hex, "%2x", &v);
		assert_true(n < cap);
		out[n++] = (uint8_t)v;
	}
	return n;
}

static char *tohex(const uint8_t *p, size_t n)
{
	char *s = malloc(2 * n + 1);
	assert_non_null(s);
	for (size_t i = 0; i < n; i++)
		snprintf(s + 2 * i, 3, "%02x", p[i]);
	s[2 * n] = 0;
	return s;
}

/* Canonical form of the hex item in, compared with the hex want. */
static void expect_canonical(const char *in, const char *want)
{
	uint8_t buf[512];
	size_t n = unhex(in, buf, sizeof buf);
	uint8_t *out = NULL;
	size_t on = 0;
	int rc = codec_cbor_canonical(buf, n, 32, &out, &on);
	if (rc != 0)
		fail_msg("canonical(%s) = %d", in, rc);
	char *got = tohex(out, on);
	if (strcmp(got, want) != 0)
		fail_msg("canonical(%s) = %s, want %s", in, got, want);
	free(got);
	free(out);
}

static int check_hex(const char *in, uint32_t depth)
{
	uint8_t buf[512];
	size_t n = unhex(in, buf, sizeof buf);
	return codec_cbor_check(buf, n, depth);
}

static char *j2c_hex(const char *json)
{
	uint8_t *out = NULL;
	size_t on = 0;
	int rc = codec_json_to_cbor(json, strlen(json), 32, &out, &on);
	if (rc != 0)
		fail_msg("json_to_cbor(%s) = %d", json, rc);
	char *s = tohex(out, on);
	free(out);
	return s;
}

static void expect_j2c(const char *json, const char *want)
{
	char *got = j2c_hex(json);
	if (strcmp(got, want) != 0)
		fail_msg("json_to_cbor(%s) = %s, want %s", json, got, want);
	free(got);
}

static int j2c_rc(const char *json, uint32_t depth)
{
	uint8_t *out = NULL;
	size_t on = 0;
	int rc = codec_json_to_cbor(json, strlen(json), depth, &out, &on);
	free(out);
	return rc;
}

static void expect_c2j(const char *hex, const char *want)
{
	uint8_t buf[512];
	size_t n = unhex(hex, buf, sizeof buf);
	char *out = NULL;
	size_t on = 0;
	int rc = codec_cbor_to_json(buf, n, &out, &on);
	if (rc != 0)
		fail_msg("cbor_to_json(%s) = %d", hex, rc);
	assert_int_equal(on, strlen(out));
	if (strcmp(out, want) != 0)
		fail_msg("cbor_to_json(%s) = %s, want %s", hex, out, want);
	free(out);
}

/* ---- CBOR checking ---- */

static void test_cbor_check(void **state)
{
	(void)state;
	assert_int_equal(check_hex("00", 32), 0);
	assert_int_equal(check_hex("a26161016162820203", 32), 0);
	assert_int_equal(check_hex("9f0102ff", 32), 0);          /* indefinite array */
	assert_int_equal(check_hex("bf6161f5ff", 32), 0);        /* indefinite map */
	assert_int_equal(check_hex("7f616161626163ff", 32), 0);  /* chunked text */
	assert_int_equal(check_hex("c11a514b67b0", 32), 0);      /* tag 1 */
	assert_int_equal(codec_cbor_check(NULL, 0, 32), EC_EMALFORMED);
	assert_int_equal(check_hex("0101", 32), EC_EMALFORMED);  /* trailing */
	assert_int_equal(check_hex("1c", 32), EC_EMALFORMED);    /* reserved */
	assert_int_equal(check_hex("ff", 32), EC_EMALFORMED);    /* lone break */
	assert_int_equal(check_hex("8201ff", 32), EC_EMALFORMED); /* break in definite */
	assert_int_equal(check_hex("bf61610161ff", 32), EC_EMALFORMED); /* odd indef map */
	assert_int_equal(check_hex("7f4161ff", 32), EC_EMALFORMED); /* bytes chunk in text */
	assert_int_equal(check_hex("7f9fffff", 32), EC_EMALFORMED); /* array in text */
	assert_int_equal(check_hex("62c328", 32), EC_EMALFORMED);   /* bad UTF-8 */
	assert_int_equal(check_hex("63eda080", 32), EC_EMALFORMED); /* a surrogate */
	assert_int_equal(check_hex("c1", 32), EC_EMALFORMED);       /* tag of nothing */
	assert_int_equal(check_hex("e0", 32), EC_EMALFORMED);       /* simple value 0 */
	assert_int_equal(check_hex("830102", 32), EC_EMALFORMED);   /* truncated */
	/* arrays may claim no more items than bytes remain */
	assert_int_equal(check_hex("8301", 32), EC_EMALFORMED);
	assert_int_equal(check_hex("a20101", 32), EC_EMALFORMED);
}

/* LIBNOTES 3: six bytes claiming 2^24 and 2^28 map pairs. Refused from the
 * head alone; the canonical path (which would build) refuses them too. */
static void test_cbor_hostile_counts(void **state)
{
	(void)state;
	const uint8_t big24[] = { 0xba, 0x01, 0x00, 0x00, 0x00, 0x00 };
	const uint8_t big28[] = { 0xba, 0x10, 0x00, 0x00, 0x00, 0x00 };
	const uint8_t arr64[] = { 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00 };
	const uint8_t str64[] = { 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00 };
	assert_int_equal(codec_cbor_check(big24, sizeof big24, 32), EC_EMALFORMED);
	assert_int_equal(codec_cbor_check(big28, sizeof big28, 32), EC_EMALFORMED);
	assert_int_equal(codec_cbor_check(arr64, sizeof arr64, 32), EC_EMALFORMED);
	assert_int_equal(codec_cbor_check(str64, sizeof str64, 32), EC_EMALFORMED);
	uint8_t *out = NULL;
	size_t on = 0;
	assert_int_equal(codec_cbor_canonical(big28, sizeof big28, 32, &out, &on), EC_EMALFORMED);
	assert_null(out);
	char *js = NULL;
	assert_int_equal(codec_cbor_to_json(big24, sizeof big24, &js, &on), EC_EMALFORMED);
	assert_null(js);
}

static void test_cbor_depth(void **state)
{
	(void)state;
	uint8_t buf[64];
	/* 32 nested arrays around a 0 pass at depth 32; 33 do not */
	memset(buf, 0x81, 32);
	buf[32] = 0;
	assert_int_equal(codec_cbor_check(buf, 33, 32), 0);
	memset(buf, 0x81, 33);
	buf[33] = 0;
	assert_int_equal(codec_cbor_check(buf, 34, 32), EC_ETOO_LARGE);
	/* indefinite containers and tags count as well */
	memset(buf, 0x9f, 33);
	assert_int_equal(codec_cbor_check(buf, 33, 32), EC_ETOO_LARGE);
	memset(buf, 0xc1, 33);
	buf[33] = 0;
	assert_int_equal(codec_cbor_check(buf, 34, 32), EC_ETOO_LARGE);
}

static void test_cbor_canonical(void **state)
{
	(void)state;
	expect_canonical("1801", "01");                 /* shortest ints */
	expect_canonical("1b0000000000000064", "1864");
	expect_canonical("3a00000000", "20");
	expect_canonical("9f0102ff", "820102");        /* definite lengths */
	expect_canonical("bf6161f5ff", "a16161f5");
	expect_canonical("7f6161626263ff", "63616263");
	expect_canonical("5f4101ff", "4101");
	expect_canonical("5fff", "40");
	expect_canonical("f94000", "02");               /* 2.0 is the integer 2 */
	expect_canonical("fbc000000000000000", "21");   /* -2.0 */
	expect_canonical("f98000", "00");               /* -0.0 */
	expect_canonical("f93e00", "fb3ff8000000000000"); /* 1.5: float64 */
	expect_canonical("fa47c35000", "1a000186a0");   /* 100000.0 */
	expect_canonical("f97c00", "fb7ff0000000000000"); /* inf */
	expect_canonical("f97e00", "fb7ff8000000000000"); /* NaN */
	expect_canonical("c11a514b67b0", "c11a514b67b0"); /* tags kept */
	expect_canonical("d8011a514b67b0", "c11a514b67b0");
	/* tags 6..20: libcbor 0.8 refuses their one-byte form, we do not */
	expect_canonical("d90007f6", "c7f6");
	expect_canonical("c7f6", "c7f6");
	expect_canonical("d4f6", "d4f6");
	/* keys sorted by their encoded bytes: the example order of RFC 8949
	 * 4.2.1 (10, 100, -1, "z", "aa", [100], [-1], false), given reversed */
	expect_canonical("a8f400812000811864006261610061" "7a00200018640" "00a00",
			 "a80a00186400200061" "7a0062616100811864008120" "00f400");
	/* nested maps sorted too */
	expect_canonical("a261620161" "61a2616402616303", "a2616" "1a2616303616402616201");
}

static void test_cbor_canonical_dupkeys(void **state)
{
	(void)state;
	const char *dups[] = {
		"a2616101616102",   /* "a" twice */
		"a20100180100",     /* 1 and 1 in a longer form */
		"a20100f93c0000",   /* 1 and 1.0 */
		"81a2616101616102", /* deeper down */
	};
	for (size_t i = 0; i < sizeof dups / sizeof dups[0]; i++) {
		uint8_t buf[64];
		size_t n = unhex(dups[i], buf, sizeof buf);
		uint8_t *out = NULL;
		size_t on = 0;
		assert_int_equal(codec_cbor_check(buf, n, 32), 0); /* well-formed */
		assert_int_equal(codec_cbor_canonical(buf, n, 32, &out, &on), EC_EMALFORMED);
		assert_null(out);
	}
}

/* ---- JSON -> CBOR ---- */

static void test_json_to_cbor(void **state)
{
	(void)state;
	expect_j2c("0", "00");
	expect_j2c("[]", "80");
	expect_j2c("{}", "a0");
	expect_j2c(" [1, -1, 1.5, true, false, null] ", "8601" "20fb3ff8000000000000f5f4f6");
	expect_j2c("{\"b\": 1, \"a\": [2, 3]}", "a2616182020361" "6201");
	expect_j2c("{\"aa\": 1, \"b\": 2}", "a2616202626161" "01"); /* shorter key first */
	expect_j2c("2.0", "02");
	expect_j2c("-0", "00");
	expect_j2c("1e3", "1903e8");
	expect_j2c("9223372036854775807", "fb43e0000000000000"); /* rounds to 2^63 */
	expect_j2c("-9223372036854775808", "3b7fffffffffffffff");
	expect_j2c("1e300", "fb7e37e43c8800759c");
	expect_j2c("\"\\u00fc\\ud83d\\ude00\"", "6" "6c3bcf09f9880");
	expect_j2c("\xef\xbb\xbf{}", "a0"); /* a BOM is skipped */
	/* refusals */
	assert_int_equal(j2c_rc("", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("{", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("{}x", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("{} {}", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("[1,]", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("]", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("{\"a\":1,\"a\":2}", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("\"a\\u0000b\"", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("\"\xc3\x28\"", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("\"\x01\"", 32), EC_EMALFORMED);
	assert_int_equal(j2c_rc("1e999", 32), EC_EMALFORMED);
	/* an inner NUL must not hide what follows from the parser */
	uint8_t *out = NULL;
	size_t on = 0;
	assert_int_equal(codec_json_to_cbor("{}\0garbage", 10, 32, &out, &on), EC_EMALFORMED);
	assert_null(out);
	/* depth: brackets inside strings do not count */
	assert_int_equal(j2c_rc("[[[]]]", 3), 0);
	assert_int_equal(j2c_rc("[[[[]]]]", 3), EC_ETOO_LARGE);
	assert_int_equal(j2c_rc("[\"[[[[[[\"]", 3), 0);
	assert_int_equal(j2c_rc("[\"\\\"[[[[\"]", 3), 0);
}

/* 100,000 nested brackets: refused by the scan, before cJSON recurses. */
static void test_json_deep(void **state)
{
	(void)state;
	size_t n = 100000;
	char *s = malloc(2 * n + 1);
	assert_non_null(s);
	memset(s, '[', n);
	memset(s + n, ']', n);
	s[2 * n] = 0;
	uint8_t *out = NULL;
	size_t on = 0;
	assert_int_equal(codec_json_to_cbor(s, 2 * n, 32, &out, &on), EC_ETOO_LARGE);
	free(s);
}

/* ---- CBOR -> JSON ---- */

static void test_cbor_to_json(void **state)
{
	(void)state;
	expect_c2j("a26161016162820203", "{\"a\":1,\"b\":[2,3]}");
	expect_c2j("3bffffffffffffffff", "-18446744073709551616");
	expect_c2j("3b7fffffffffffffff", "-9223372036854775808");
	expect_c2j("1bffffffffffffffff", "18446744073709551615");
	expect_c2j("fb3ff199999999999a", "1.1");
	expect_c2j("fb3fb999999999999a", "0.1");
	expect_c2j("f97c00", "null");
	expect_c2j("f97e00", "null");
	expect_c2j("f7", "null");
	expect_c2j("c11a514b67b0", "1363896240");      /* tag dropped */
	expect_c2j("40", "\"\"");
	expect_c2j("4101", "\"AQ==\"");               /* base64, padded */
	expect_c2j("420102", "\"AQI=\"");
	expect_c2j("43010203", "\"AQID\"");
	expect_c2j("4bfbff000000000000000000", "\"+/8AAAAAAAAAAAA=\"");
	expect_c2j("6a0122225c0a1f7f61c3bc", "\"\\u0001\\\"\\\"\\\\\\u000a\\u001f\x7f" "a\xc3\xbc\"");
	expect_c2j("a2016161820102f5", "{\"1\":\"a\",\"[1,2]\":true}"); /* non-text keys */
	expect_c2j("a1a1616101f6", "{\"{\\\"a\\\":1}\":null}");
	expect_c2j("82a0a1808180", "[{},{\"[]\":[[]]}]");
	expect_c2j("9f9fffbfffff", "[[],{}]");
}

/* Keys that are maps whose keys are maps...: every level doubles the
 * escaping of the quotes inside. Thirty levels of that (a few dozen bytes)
 * are refused rather than grown to gigabytes; two levels convert. */
static void test_cbor_to_json_key_blowup(void **state)
{
	(void)state;
	uint8_t buf[256];
	size_t n = 0;
	buf[n++] = 0xa1, buf[n++] = 0x61, buf[n++] = 'a', buf[n++] = 0x01;
	for (int level = 0; level < 30; level++) {
		memmove(buf + 1, buf, n);
		buf[0] = 0xa1;
		buf[++n] = 0xf6;
		n++;
		char *js = NULL;
		size_t jn = 0;
		int rc = codec_cbor_to_json(buf, n, &js, &jn);
		if (level < 2) {
			assert_int_equal(rc, 0);
			if (level == 1)
				assert_string_equal(js, "{\"{\\\"{\\\\\\\"a\\\\\\\":1}\\\":null}\":null}");
			free(js);
		} else if (level == 29) {
			assert_int_equal(rc, EC_EMALFORMED);
			assert_null(js);
		} else {
			free(js);
		}
	}
	assert_int_equal(codec_cbor_check(buf, n, 32), 0);
}

static void roundtrip(const char *json)
{
	uint8_t *c1 = NULL, *c2 = NULL;
	size_t n1 = 0, n2 = 0;
	char *j1 = NULL;
	size_t jn = 0;
	assert_int_equal(codec_json_to_cbor(json, strlen(json), 32, &c1, &n1), 0);
	assert_int_equal(codec_cbor_to_json(c1, n1, &j1, &jn), 0);
	assert_int_equal(codec_json_to_cbor(j1, jn, 32, &c2, &n2), 0);
	if (n1 != n2 || memcmp(c1, c2, n1) != 0)
		fail_msg("%s -> %s does not come back", json, j1);
	free(c1);
	free(c2);
	free(j1);
}

static void test_roundtrip(void **state)
{
	(void)state;
	roundtrip("{\"z\": [1, 2.5, -3, 1e300, 0.1, 123456789.123], \"a\": {\"x\": null}}");
	roundtrip("[\"\\u0001\\n\\t\\\"\\\\\", \"\\u00e9\\ud83d\\ude00\", true, false]");
	roundtrip("[4.9e-324, 1.7976931348623157e308, -2.2250738585072014e-308, 1e21]");
	roundtrip("{\"\": \"\", \"b\": {\"c\": {\"d\": []}}}");
}

/* ---- field equality (`when`) ---- */

static void test_field_equals(void **state)
{
	(void)state;
	uint8_t *res = NULL, *ok = NULL, *two = NULL, *obj = NULL;
	size_t rn, okn, twon, objn;
	const char *result = "{\"verdict\": \"ok\", \"n\": 2, \"o\": {\"b\": 1, \"a\": 2}}";
	assert_int_equal(codec_json_to_cbor(result, strlen(result), 32, &res, &rn), 0);
	assert_int_equal(codec_json_to_cbor("\"ok\"", 4, 32, &ok, &okn), 0);
	assert_int_equal(codec_json_to_cbor("2", 1, 32, &two, &twon), 0);
	assert_int_equal(codec_json_to_cbor("{\"a\":2,\"b\":1}", 13, 32, &obj, &objn), 0);
	assert_true(codec_cbor_field_equals(res, rn, "verdict", ok, okn));
	assert_false(codec_cbor_field_equals(res, rn, "verdict", two, twon));
	assert_true(codec_cbor_field_equals(res, rn, "n", two, twon));
	assert_true(codec_cbor_field_equals(res, rn, "o", obj, objn));
	assert_false(codec_cbor_field_equals(res, rn, "missing", ok, okn));
	assert_false(codec_cbor_field_equals(res, rn, "verdic", ok, okn));
	/* a result from an agent: non-canonical CBOR, float 2.0, indefinite map */
	uint8_t agent[32];
	size_t an = unhex("bf616ef9400067" "76657264696374626f6b" "ff", agent, sizeof agent);
	assert_true(codec_cbor_field_equals(agent, an, "n", two, twon));
	assert_true(codec_cbor_field_equals(agent, an, "verdict", ok, okn));
	/* not a map, or not CBOR: never equal */
	assert_false(codec_cbor_field_equals(ok, okn, "verdict", ok, okn));
	assert_false(codec_cbor_field_equals(agent, an - 1, "n", two, twon));
	assert_false(codec_cbor_field_equals(NULL, 0, "n", two, twon));
	free(res);
	free(ok);
	free(two);
	free(obj);
}

/* ---- submissions ---- */

#define J(...) #__VA_ARGS__

static struct limits lim;

static int setup(void **state)
{
	(void)state;
	limits_default(&lim);
	return 0;
}

static int dec(const char *text, enum encoding enc, struct submission *s, struct sub_error *e)
{
	return codec_decode_submission((const uint8_t *)text, strlen(text), enc, &lim, s, e);
}

/* Decode JSON text, and the same as CBOR, expecting success in both; the
 * JSON result is returned, and the two must agree on every task id. */
static void dec_ok(const char *json, struct submission *s)
{
	struct sub_error e;
	int rc = dec(json, ENC_JSON, s, &e);
	if (rc != 0)
		fail_msg("%s: %d %s [%s]", json, rc, e.detail, e.task_id);
	uint8_t *cb = NULL;
	size_t cn = 0;
	assert_int_equal(codec_json_to_cbor(json, strlen(json), 32, &cb, &cn), 0);
	struct submission s2;
	rc = codec_decode_submission(cb, cn, ENC_CBOR, &lim, &s2, &e);
	if (rc != 0)
		fail_msg("CBOR of %s: %d %s", json, rc, e.detail);
	assert_int_equal(s2.ntasks, s->ntasks);
	assert_int_equal(s2.enc, ENC_CBOR);
	for (uint32_t i = 0; i < s->ntasks; i++)
		assert_string_equal(s2.tasks[i].id, s->tasks[i].id);
	submission_fini(&s2);
	free(cb);
}

/* Expect a refusal with code, a detail holding `detail`, and task_id, as
 * JSON and (when the JSON converts) as CBOR. *out must stay untouched. */
static void reject(const char *json, int code, const char *detail, const char *task_id)
{
	struct submission s;
	memset(&s, 0xa5, sizeof s);
	struct submission pristine = s;
	struct sub_error e;
	int rc = dec(json, ENC_JSON, &s, &e);
	if (rc != code)
		fail_msg("%s: got %d (%s), want %d", json, rc, e.detail, code);
	assert_int_equal(e.code, code);
	if (detail && !strstr(e.detail, detail))
		fail_msg("%s: detail '%s' lacks '%s'", json, e.detail, detail);
	if (task_id)
		assert_string_equal(e.task_id, task_id);
	assert_memory_equal(&s, &pristine, sizeof s);
	uint8_t *cb = NULL;
	size_t cn = 0;
	if (codec_json_to_cbor(json, strlen(json), 64, &cb, &cn) != 0)
		return;
	rc = codec_decode_submission(cb, cn, ENC_CBOR, &lim, &s, &e);
	free(cb);
	if (rc != code)
		fail_msg("CBOR of %s: got %d (%s), want %d", json, rc, e.detail, code);
	if (detail && !strstr(e.detail, detail))
		fail_msg("CBOR of %s: detail '%s' lacks '%s'", json, e.detail, detail);
	if (task_id)
		assert_string_equal(e.task_id, task_id);
	assert_memory_equal(&s, &pristine, sizeof s);
}

static void reject_cbor_hex(const char *hex, int code)
{
	uint8_t buf[1024];
	size_t n = unhex(hex, buf, sizeof buf);
	struct submission s;
	struct sub_error e;
	int rc = codec_decode_submission(buf, n, ENC_CBOR, &lim, &s, &e);
	if (rc != code)
		fail_msg("%s: got %d (%s), want %d", hex, rc, e.detail, code);
}

static void test_sub_task(void **state)
{
	(void)state;
	const char *json = J({
		"task_id": "analysis", "type": "analysis", "description": "Analyze findings",
		"payload": {"any": "json value", "n": [1, 2.5]},
		"depends_on": ["research", "inspect"], "priority": 5, "timeout": 300,
		"deadline": "2026-11-22T08:00:00Z",
		"retry_policy": {"max_attempts": 3, "backoff": "exponential",
				 "initial_delay": 1, "max_delay": 300.5, "jitter": true},
		"agent": "worker-3", "affinity": {"zone": "line-2", "arch": "arm"},
		"run_if": "all_done",
		"when": {"task": "inspect", "field": "verdict", "equals": "ok"}
	});
	struct submission s;
	dec_ok(json, &s);
	assert_int_equal(s.kind, SUB_TASK);
	assert_int_equal(s.enc, ENC_JSON);
	assert_string_equal(s.id, "analysis");
	assert_null(s.description);
	assert_int_equal(s.ntasks, 1);
	struct task_spec *t = &s.tasks[0];
	assert_string_equal(t->id, "analysis");
	assert_string_equal(t->type, "analysis");
	assert_null(t->workflow);
	assert_string_equal(t->description, "Analyze findings");
	char *hex = tohex(t->payload, t->payload_len);
	/* {"n": [1, 2.5], "any": "json value"}: shorter key first */
	assert_string_equal(hex, "a2616e8201fb4004000000000000" "63616e796a6a736f6e2076616c7565");
	free(hex);
	assert_int_equal(t->ndeps, 2);
	assert_string_equal(t->deps[0], "research");
	assert_string_equal(t->deps[1], "inspect");
	assert_int_equal(t->priority, 5);
	assert_int_equal(t->timeout_ms, 300000);
	assert_int_equal(t->deadline_ms, 1795334400000);
	assert_true(t->has_retry);
	assert_int_equal(t->retry.max_attempts, 3);
	assert_int_equal(t->retry.backoff, BACKOFF_EXPONENTIAL);
	assert_int_equal(t->retry.initial_ms, 1000);
	assert_int_equal(t->retry.max_ms, 300500);
	assert_int_equal(t->retry.jitter, 1);
	assert_string_equal(t->agent, "worker-3");
	assert_int_equal(t->naffinity, 2);
	assert_string_equal(t->affinity[0].key, "arch"); /* sorted */
	assert_string_equal(t->affinity[0].value, "arm");
	assert_string_equal(t->affinity[1].key, "zone");
	assert_string_equal(t->affinity[1].value, "line-2");
	assert_int_equal(t->run_if, RUN_IF_ALL_DONE);
	assert_string_equal(t->when_task, "inspect");
	assert_string_equal(t->when_field, "verdict");
	assert_int_equal(t->when_equals_len, 3);
	assert_memory_equal(t->when_equals, "\x62ok", 3);
	submission_fini(&s);
}

static void test_sub_unset(void **state)
{
	(void)state;
	struct submission s;
	dec_ok(J({"task_id": "a", "type": "t"}), &s);
	const struct task_spec *t = &s.tasks[0];
	assert_null(t->payload);
	assert_null(t->description);
	assert_int_equal(t->ndeps, 0);
	assert_int_equal(t->priority, 0);
	assert_int_equal(t->timeout_ms, -1);
	assert_int_equal(t->deadline_ms, 0);
	assert_false(t->has_retry);
	assert_int_equal(t->retry.max_attempts, -1);
	assert_int_equal(t->retry.backoff, BACKOFF_UNSET);
	assert_int_equal(t->retry.jitter, -1);
	assert_int_equal(t->retry.initial_ms, -1);
	assert_int_equal(t->retry.max_ms, -1);
	assert_null(t->agent);
	assert_int_equal(t->naffinity, 0);
	assert_int_equal(t->run_if, RUN_IF_ALL_SUCCEEDED);
	assert_null(t->when_task);
	submission_fini(&s);

	/* values at the edges of their ranges */
	dec_ok(J({"task_id": "a", "type": "t", "priority": 10, "timeout": 0.0001,
		  "deadline": "2000-02-29T23:59:59-05:30", "payload": null,
		  "retry_policy": {}, "affinity": {}, "depends_on": []}), &s);
	t = &s.tasks[0];
	assert_int_equal(t->priority, 10);
	assert_int_equal(t->timeout_ms, 1); /* rounded up, never to 0 */
	assert_int_equal(t->deadline_ms, 951888599000);
	assert_non_null(t->payload);
	assert_int_equal(t->payload_len, 1);
	assert_int_equal(t->payload[0], 0xf6);
	assert_true(t->has_retry);
	assert_int_equal(t->retry.max_attempts, -1);
	submission_fini(&s);

	dec_ok(J({"task_id": "a", "type": "t", "deadline": 1795334400000,
		  "retry_policy": {"initial_delay": 0, "max_delay": 0, "backoff": "none"}}), &s);
	assert_int_equal(s.tasks[0].deadline_ms, 1795334400000);
	assert_int_equal(s.tasks[0].retry.initial_ms, 0);
	assert_int_equal(s.tasks[0].retry.backoff, BACKOFF_NONE);
	submission_fini(&s);

	dec_ok(J({"task_id": "a", "type": "t", "deadline": "2026-11-22t08:00:00.5+01:00"}), &s);
	assert_int_equal(s.tasks[0].deadline_ms, 1795330800500);
	submission_fini(&s);
}

static void test_sub_workflow(void **state)
{
	(void)state;
	const char *json = J({
		"task_id": "project", "type": "collaborative_task", "description": "all of it",
		"priority": 7, "timeout": 10, "deadline": 1795334400000,
		"retry_policy": {"max_attempts": 2, "backoff": "fixed"},
		"affinity": {"zone": "a"},
		"steps": [
			{"task_id": "collect", "type": "collect"},
			{"task_id": "prep", "type": "prep", "depends_on": ["collect"],
			 "priority": 3, "retry_policy": {"jitter": false}, "affinity": {}},
			{"task_id": "analysis", "type": "analysis", "depends_on": ["prep", "collect"],
			 "when": {"task": "prep", "field": "ok", "equals": true}}
		]
	});
	struct submission s;
	dec_ok(json, &s);
	assert_int_equal(s.kind, SUB_WORKFLOW);
	assert_string_equal(s.id, "project");
	assert_string_equal(s.description, "all of it");
	assert_int_equal(s.ntasks, 3);
	const struct task_spec *c = &s.tasks[0], *p = &s.tasks[1], *a = &s.tasks[2];
	assert_string_equal(c->id, "project:collect");
	assert_string_equal(p->id, "project:prep");
	assert_string_equal(a->id, "project:analysis");
	for (int i = 0; i < 3; i++) {
		assert_string_equal(s.tasks[i].workflow, "project");
		assert_null(s.tasks[i].description);
		assert_int_equal(s.tasks[i].timeout_ms, 10000);
		assert_int_equal(s.tasks[i].deadline_ms, 1795334400000);
	}
	/* defaults copied in whole where a step does not set the field */
	assert_int_equal(c->priority, 7);
	assert_true(c->has_retry);
	assert_int_equal(c->retry.max_attempts, 2);
	assert_int_equal(c->retry.backoff, BACKOFF_FIXED);
	assert_int_equal(c->naffinity, 1);
	assert_string_equal(c->affinity[0].key, "zone");
	/* ... and replaced in whole where it does */
	assert_int_equal(p->priority, 3);
	assert_int_equal(p->retry.max_attempts, -1);
	assert_int_equal(p->retry.backoff, BACKOFF_UNSET);
	assert_int_equal(p->retry.jitter, 0);
	assert_int_equal(p->naffinity, 0);
	/* sibling ids become full ids */
	assert_int_equal(p->ndeps, 1);
	assert_string_equal(p->deps[0], "project:collect");
	assert_int_equal(a->ndeps, 2);
	assert_string_equal(a->deps[0], "project:prep");
	assert_string_equal(a->deps[1], "project:collect");
	assert_string_equal(a->when_task, "project:prep");
	assert_int_equal(a->when_equals_len, 1);
	assert_int_equal(a->when_equals[0], 0xf5);
	submission_fini(&s);
}

static void test_sub_batch(void **state)
{
	(void)state;
	struct submission s;
	dec_ok(J([{"task_id": "b", "type": "t", "depends_on": ["a", "old", "wf:step"]},
		  {"task_id": "a", "type": "t"}]), &s);
	assert_int_equal(s.kind, SUB_BATCH);
	assert_string_equal(s.id, "");
	assert_int_equal(s.ntasks, 2);
	assert_string_equal(s.tasks[0].id, "b");
	assert_string_equal(s.tasks[1].id, "a");
	assert_int_equal(s.tasks[0].ndeps, 3);
	assert_string_equal(s.tasks[0].deps[2], "wf:step");
	assert_null(s.tasks[0].workflow);
	submission_fini(&s);
}

static void test_sub_fields_refused(void **state)
{
	(void)state;
	const int INV = EC_EINVALID_FIELD, UNK = EC_EUNKNOWN_FIELD;
	reject(J({}), INV, "task_id: required", "");
	reject(J({"type": "t"}), INV, "task_id: required", "");
	reject(J({"task_id": "a"}), INV, "type: required", "a");
	reject(J({"task_id": "a b", "type": "t"}), INV, "task_id", "");
	reject(J({"task_id": "", "type": "t"}), INV, "task_id", "");
	reject(J({"task_id": "a:b", "type": "t"}), INV, "task_id", "");
	reject(J({"task_id": "a/b", "type": "t"}), INV, "task_id", "");
	reject(J({"task_id": 1, "type": "t"}), INV, "task_id", "");
	reject(J({"task_id": "a", "type": "t t"}), INV, "type", "a");
	reject(J({"task_id": "a", "type": ["t"]}), INV, "type", "a");
	reject(J({"task_id": "a", "type": "t", "prioity": 5}), UNK,
	       "task 'a': unknown field 'prioity'", "a");
	reject(J({"task_id": "a", "type": "t", "Priority": 5}), UNK, "'Priority'", "a");
	reject(J({"task_id": "a", "type": "t", "description": 5}), INV, "description", "a");
	reject(J({"task_id": "a", "type": "t", "priority": 0}), INV,
	       "priority: must be an integer 1..10", "a");
	reject(J({"task_id": "a", "type": "t", "priority": 11}), INV, "priority", "a");
	reject(J({"task_id": "a", "type": "t", "priority": 5.5}), INV, "priority", "a");
	reject(J({"task_id": "a", "type": "t", "priority": "5"}), INV, "priority", "a");
	reject(J({"task_id": "a", "type": "t", "priority": true}), INV, "priority", "a");
	reject(J({"task_id": "a", "type": "t", "timeout": 0}), INV, "timeout", "a");
	reject(J({"task_id": "a", "type": "t", "timeout": -1}), INV, "timeout", "a");
	reject(J({"task_id": "a", "type": "t", "timeout": "10"}), INV, "timeout", "a");
	reject(J({"task_id": "a", "type": "t", "timeout": 1e12}), INV, "timeout", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": -1}), INV, "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": 1.5}), INV, "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": "tomorrow"}), INV, "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": "2026-11-22T08:00:00"}), INV,
	       "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": "2026-11-22 08:00:00Z"}), INV,
	       "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": "2026-13-01T00:00:00Z"}), INV,
	       "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": "2025-02-29T00:00:00Z"}), INV,
	       "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": "2026-11-22T08:00:00.Z"}), INV,
	       "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": "2026-11-22T08:00:00+0100"}), INV,
	       "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "deadline": "1969-12-31T23:59:59Z"}), INV,
	       "deadline", "a");
	reject(J({"task_id": "a", "type": "t", "retry_policy": []}), INV, "retry_policy", "a");
	reject(J({"task_id": "a", "type": "t", "retry_policy": {"max_attempts": 0}}), INV,
	       "retry_policy.max_attempts", "a");
	reject(J({"task_id": "a", "type": "t", "retry_policy": {"max_attempts": 1001}}), INV,
	       "retry_policy.max_attempts", "a");
	reject(J({"task_id": "a", "type": "t", "retry_policy": {"backoff": "linear"}}), INV,
	       "retry_policy.backoff", "a");
	reject(J({"task_id": "a", "type": "t", "retry_policy": {"initial_delay": -1}}), INV,
	       "retry_policy.initial_delay", "a");
	reject(J({"task_id": "a", "type": "t", "retry_policy": {"max_delay": "1"}}), INV,
	       "retry_policy.max_delay", "a");
	reject(J({"task_id": "a", "type": "t",
		  "retry_policy": {"initial_delay": 10, "max_delay": 5}}), INV, "max_delay", "a");
	reject(J({"task_id": "a", "type": "t", "retry_policy": {"jitter": 1}}), INV,
	       "retry_policy.jitter", "a");
	reject(J({"task_id": "a", "type": "t", "retry_policy": {"attempts": 1}}), UNK,
	       "unknown field 'retry_policy.attempts'", "a");
	reject(J({"task_id": "a", "type": "t", "agent": "a b"}), INV, "agent", "a");
	reject(J({"task_id": "a", "type": "t", "agent": 3}), INV, "agent", "a");
	reject(J({"task_id": "a", "type": "t", "affinity": ["zone"]}), INV, "affinity", "a");
	reject(J({"task_id": "a", "type": "t", "affinity": {"zone": 1}}), INV, "affinity", "a");
	reject(J({"task_id": "a", "type": "t", "affinity": {"": "x"}}), INV, "affinity", "a");
	reject(J({"task_id": "a", "type": "t", "run_if": "sometimes"}), INV, "run_if", "a");
	reject(J({"task_id": "a", "type": "t", "depends_on": "b"}), INV, "depends_on", "a");
	reject(J({"task_id": "a", "type": "t", "depends_on": [1]}), INV, "depends_on", "a");
	reject(J({"task_id": "a", "type": "t", "depends_on": ["b b"]}), INV, "depends_on", "a");
	reject(J({"task_id": "a", "type": "t", "depends_on": ["b:"]}), INV, "depends_on", "a");
	reject(J({"task_id": "a", "type": "t", "depends_on": ["b", "c", "b"]}), INV,
	       "depends_on: 'b' given twice", "a");
	reject(J({"task_id": "a", "type": "t", "when": {"task": "b", "field": "f"}}), INV,
	       "when", "a");
	reject(J({"task_id": "a", "type": "t", "depends_on": ["b"],
		  "when": {"task": "c", "field": "f", "equals": 1}}), INV,
	       "when.task: 'c' is not in depends_on", "a");
	reject(J({"task_id": "a", "type": "t", "depends_on": ["b"],
		  "when": {"task": "b", "field": "f", "equals": 1, "else": 2}}), UNK,
	       "'when.else'", "a");
	reject(J({"task_id": "a", "type": "t", "depends_on": ["b"],
		  "when": {"task": "b", "field": "", "equals": 1}}), INV, "when.field", "a");
	reject(J({"task_id": "a", "type": "t", "when": "b"}), INV, "when", "a");
	/* a description of 1024 bytes passes, 1025 do not */
	char buf[1200];
	char desc[1026];
	memset(desc, 'x', 1025);
	desc[1025] = 0;
	snprintf(buf, sizeof buf, "{\"task_id\":\"a\",\"type\":\"t\",\"description\":\"%s\"}", desc);
	reject(buf, INV, "description", "a");
	desc[1024] = 0;
	snprintf(buf, sizeof buf, "{\"task_id\":\"a\",\"type\":\"t\",\"description\":\"%s\"}", desc);
	struct submission s;
	dec_ok(buf, &s);
	assert_int_equal(strlen(s.tasks[0].description), 1024);
	submission_fini(&s);
	/* ids of exactly 100 characters pass, 101 do not */
	char id[102];
	memset(id, 'i', 101);
	id[101] = 0;
	snprintf(buf, sizeof buf, "{\"task_id\":\"%s\",\"type\":\"t\"}", id);
	reject(buf, INV, "task_id", "");
	id[100] = 0;
	snprintf(buf, sizeof buf, "{\"task_id\":\"%s\",\"type\":\"%s\"}", id, id);
	dec_ok(buf, &s);
	assert_string_equal(s.tasks[0].id, id);
	assert_string_equal(s.tasks[0].type, id);
	submission_fini(&s);
}

static void test_sub_structure_refused(void **state)
{
	(void)state;
	const int INV = EC_EINVALID_FIELD, UNK = EC_EUNKNOWN_FIELD;
	reject(J([]), INV, "batch: must not be empty", "");
	reject(J([1]), INV, "map", "");
	reject(J([{"task_id": "a", "type": "t"}, "b"]), INV, "map", "");
	reject(J([{"task_id": "w", "type": "collaborative_task",
		   "steps": [{"task_id": "a", "type": "t"}]}]), INV, "batch", "w");
	reject(J([{"task_id": "w", "type": "t", "steps": [{"task_id": "a", "type": "t"}]}]), INV,
	       "steps", "w");
	reject(J({"task_id": "w", "type": "collaborative_task"}), INV, "needs steps", "w");
	reject(J({"task_id": "w", "type": "t", "steps": [{"task_id": "a", "type": "t"}]}), INV,
	       "steps", "w");
	reject(J({"task_id": "w", "type": "collaborative_task", "steps": []}), INV,
	       "steps: must not be empty", "w");
	reject(J({"task_id": "w", "type": "collaborative_task", "steps": {"a": 1}}), INV,
	       "steps", "w");
	reject(J({"task_id": "w", "type": "collaborative_task",
		  "steps": [{"task_id": "v", "type": "collaborative_task",
			     "steps": [{"task_id": "a", "type": "t"}]}]}), INV, "nest", "w:v");
	reject(J({"task_id": "w", "type": "collaborative_task", "payload": 1,
		  "steps": [{"task_id": "a", "type": "t"}]}), UNK, "unknown field 'payload'", "w");
	reject(J({"task_id": "w", "type": "collaborative_task", "depends_on": ["x"],
		  "steps": [{"task_id": "a", "type": "t"}]}), UNK, "'depends_on'", "w");
	reject(J({"task_id": "w", "type": "collaborative_task",
		  "steps": [{"task_id": "a", "type": "t", "priority": 0}]}), INV, "priority",
	       "w:a");
	reject(J({"task_id": "w", "type": "collaborative_task",
		  "steps": [{"task_id": "a", "type": "t", "depends_on": ["v:b"]}]}), INV,
	       "depends_on", "w:a");
	reject(J({"task_id": "w", "type": "collaborative_task",
		  "steps": [{"task_id": "a", "type": "t", "bogus": 1}]}), UNK,
	       "task 'w:a': unknown field 'bogus'", "w:a");
	/* the top level */
	reject("5", EC_EMALFORMED, "top level", "");
	reject("\"task\"", EC_EMALFORMED, "top level", "");
	reject("{", EC_EMALFORMED, NULL, "");
	reject("{}}", EC_EMALFORMED, NULL, "");
	reject("{\"task_id\": \"a\", \"type\": \"t\"} x", EC_EMALFORMED, NULL, "");
	reject("", EC_EMALFORMED, NULL, "");
	/* a key twice: invalid_field, in JSON here and in CBOR below */
	reject("{\"task_id\": \"a\", \"type\": \"t\", \"task_id\": \"b\"}", INV, "'task_id'", "");
	reject("{\"task_id\": \"a\", \"type\": \"t\", \"payload\": {\"k\": 1, \"k\": 2}}", INV,
	       "'k'", "");
}

static void test_sub_cbor_specific(void **state)
{
	(void)state;
	/* {"task_id":"a","type":"t","task_id":"b"} */
	reject_cbor_hex("a3677461736b5f6964616164747970656174677461736b5f69646162",
			EC_EINVALID_FIELD);
	/* {"task_id":"a","type":"t","payload":{"k":1,"k":2}} */
	reject_cbor_hex("a3677461736b5f696461616474797065617467706179" "6c6f6164a2616b01616b02",
			EC_EINVALID_FIELD);
	/* {"task_id":"a","type":"t",1:2}: a key that is not text */
	reject_cbor_hex("a3677461736b5f6964616164747970656174" "0102", EC_EUNKNOWN_FIELD);
	/* trailing byte, a scalar, a truncated map, reserved bytes */
	reject_cbor_hex("a2677461736b5f69646161647479706561" "7400", EC_EMALFORMED);
	reject_cbor_hex("05", EC_EMALFORMED);
	reject_cbor_hex("a2677461736b5f6964616164747970", EC_EMALFORMED);
	reject_cbor_hex("1c", EC_EMALFORMED);
	/* indefinite lengths, tags and odd encodings are fine:
	 * bf "task_id" (chunked "a") "type" tag(0,"t") "priority" 5.0 ff */
	uint8_t buf[128];
	size_t n = unhex("bf677461736b5f69647f6161ff6474797065c061746870726" "96f72697479f94500ff",
			 buf, sizeof buf);
	struct submission s;
	struct sub_error e;
	int rc = codec_decode_submission(buf, n, ENC_CBOR, &lim, &s, &e);
	if (rc != 0)
		fail_msg("%d %s", rc, e.detail);
	assert_string_equal(s.tasks[0].id, "a");
	assert_string_equal(s.tasks[0].type, "t");
	assert_int_equal(s.tasks[0].priority, 5);
	assert_int_equal(s.enc, ENC_CBOR);
	submission_fini(&s);
}

static void test_sub_graph_refused(void **state)
{
	(void)state;
	reject(J([{"task_id": "a", "type": "t"}, {"task_id": "a", "type": "u"}]),
	       EC_EDUPLICATE_ID, "'a'", "a");
	reject(J({"task_id": "w", "type": "collaborative_task",
		  "steps": [{"task_id": "a", "type": "t"}, {"task_id": "b", "type": "t"},
			    {"task_id": "a", "type": "t"}]}), EC_EDUPLICATE_ID, "'w:a'", "w:a");
	reject(J({"task_id": "w", "type": "collaborative_task",
		  "steps": [{"task_id": "a", "type": "t", "depends_on": ["nope"]}]}),
	       EC_EUNKNOWN_DEP, "'nope'", "w:a");
	reject(J({"task_id": "a", "type": "t", "depends_on": ["a"]}), EC_ECYCLE,
	       "cycle: a -> a", "a");
	reject(J([{"task_id": "x", "type": "t"},
		  {"task_id": "a", "type": "t", "depends_on": ["x", "b"]},
		  {"task_id": "b", "type": "t", "depends_on": ["c"]},
		  {"task_id": "c", "type": "t", "depends_on": ["ext", "a"]},
		  {"task_id": "d", "type": "t", "depends_on": ["a"]}]),
	       EC_ECYCLE, "cycle: a -> b -> c -> a", NULL);
	reject(J({"task_id": "w", "type": "collaborative_task",
		  "steps": [{"task_id": "a", "type": "t", "depends_on": ["b"]},
			    {"task_id": "b", "type": "t", "depends_on": ["a"]}]}),
	       EC_ECYCLE, "cycle: w:a -> w:b -> w:a", NULL);
	/* a task behind a cycle is not on it: d depends on the loop b <-> c */
	reject(J([{"task_id": "d", "type": "t", "depends_on": ["b"]},
		  {"task_id": "b", "type": "t", "depends_on": ["c"]},
		  {"task_id": "c", "type": "t", "depends_on": ["b"]}]),
	       EC_ECYCLE, "cycle: b -> c -> b", NULL);
}

static void test_sub_limits(void **state)
{
	(void)state;
	/* the message's own size, checked first */
	lim.max_message_bytes = 16; /* under both encodings' sizes */
	reject(J({"task_id": "a", "type": "t"}), EC_ETOO_LARGE, "message", "");
	limits_default(&lim);
	/* nesting anywhere */
	char buf[512];
	int k = snprintf(buf, sizeof buf, "{\"task_id\":\"a\",\"type\":\"t\",\"payload\":");
	for (int i = 0; i < 31; i++)
		buf[k++] = '[';
	for (int i = 0; i < 31; i++)
		buf[k++] = ']';
	snprintf(buf + k, sizeof buf - k, "}");
	struct submission s;
	dec_ok(buf, &s); /* 32 deep with the task map */
	submission_fini(&s);
	k = snprintf(buf, sizeof buf, "{\"task_id\":\"a\",\"type\":\"t\",\"payload\":");
	for (int i = 0; i < 32; i++)
		buf[k++] = '[';
	for (int i = 0; i < 32; i++)
		buf[k++] = ']';
	snprintf(buf + k, sizeof buf - k, "}");
	reject(buf, EC_ETOO_LARGE, "nested", "");
	lim.max_depth = 40;
	uint8_t *cb = NULL;
	size_t cn;
	assert_int_equal(codec_json_to_cbor(buf, strlen(buf), 40, &cb, &cn), 0);
	lim.max_depth = 32;
	struct sub_error e;
	assert_int_equal(codec_decode_submission(cb, cn, ENC_CBOR, &lim, &s, &e), EC_ETOO_LARGE);
	free(cb);
	/* a payload's encoded size */
	lim.max_payload_bytes = 8;
	reject(J({"task_id": "a", "type": "t", "payload": "12345678"}), EC_ETOO_LARGE, "payload", "a");
	dec_ok(J({"task_id": "a", "type": "t", "payload": "1234567"}), &s); /* 8 bytes */
	submission_fini(&s);
	reject(J({"task_id": "a", "type": "t", "depends_on": ["b"],
		  "when": {"task": "b", "field": "f", "equals": "12345678"}}), EC_ETOO_LARGE,
	       "when.equals", "a");
	limits_default(&lim);
	/* dependencies per task and tasks per submission */
	lim.max_deps_per_task = 2;
	reject(J({"task_id": "a", "type": "t", "depends_on": ["b", "c", "d"]}), EC_ETOO_LARGE,
	       "depends_on", "a");
	lim.max_tasks_per_submission = 2;
	reject(J([{"task_id": "a", "type": "t"}, {"task_id": "b", "type": "t"},
		  {"task_id": "c", "type": "t"}]), EC_ETOO_LARGE, "tasks", "");
	reject(J({"task_id": "w", "type": "collaborative_task",
		  "steps": [{"task_id": "a", "type": "t"}, {"task_id": "b", "type": "t"},
			    {"task_id": "c", "type": "t"}]}), EC_ETOO_LARGE, "steps", "w");
	limits_default(&lim);
}

/* 6-byte hostile CBOR as a whole submission: refused before anything big
 * is allocated (an ASan build would report a 256 MiB allocation attempt as
 * a failure of its own allocator limits well before we got here). */
static void test_sub_hostile(void **state)
{
	(void)state;
	reject_cbor_hex("ba0100000000", EC_EMALFORMED);
	reject_cbor_hex("ba1000000000", EC_EMALFORMED);
	reject_cbor_hex("9b7fffffffffffffff00", EC_EMALFORMED);
	reject_cbor_hex("a1677461736b5f69649a0fffffff", EC_EMALFORMED);
}

/* Every proper prefix of a valid submission is malformed, in both encodings. */
static void test_sub_truncations(void **state)
{
	(void)state;
	const char *json = J({"task_id": "w", "type": "collaborative_task", "priority": 7,
			      "steps": [{"task_id": "a", "type": "t", "payload": {"x": [1.5, -2, null]}},
					{"task_id": "b", "type": "t", "depends_on": ["a"],
					 "when": {"task": "a", "field": "ok", "equals": true}}]});
	size_t jn = strlen(json);
	uint8_t *cb = NULL;
	size_t cn;
	assert_int_equal(codec_json_to_cbor(json, jn, 32, &cb, &cn), 0);
	struct submission s;
	struct sub_error e;
	assert_int_equal(codec_decode_submission((const uint8_t *)json, jn, ENC_JSON, &lim, &s, &e), 0);
	submission_fini(&s);
	assert_int_equal(codec_decode_submission(cb, cn, ENC_CBOR, &lim, &s, &e), 0);
	submission_fini(&s);
	for (size_t n = 0; n < jn; n++) {
		int rc = codec_decode_submission((const uint8_t *)json, n, ENC_JSON, &lim, &s, &e);
		if (rc != EC_EMALFORMED)
			fail_msg("JSON prefix of %zu bytes: %d (%s)", n, rc, e.detail);
	}
	for (size_t n = 0; n < cn; n++) {
		int rc = codec_decode_submission(cb, n, ENC_CBOR, &lim, &s, &e);
		if (rc != EC_EMALFORMED)
			fail_msg("CBOR prefix of %zu bytes: %d (%s)", n, rc, e.detail);
	}
	free(cb);
}

/* DESIGN 3.3: key order, whitespace and JSON versus CBOR do not matter. */
static void test_sub_idempotent(void **state)
{
	(void)state;
	const char *a = J({"task_id": "a", "type": "t", "depends_on": ["b"],
			   "payload": {"z": 1, "a": [2.5, "x", {"q": null, "p": true}]},
			   "when": {"task": "b", "field": "f", "equals": {"y": 2, "x": 1}}});
	const char *b = "{ \"when\" : {\"equals\":{\"x\":1.0,\"y\":2},\"field\":\"f\",\"task\":\"b\"},\n"
			"\t\"payload\":{\"a\":[2.5,\"x\",{\"p\":true,\"q\":null}],\"z\":1e0},"
			"\"type\":\"t\",\"depends_on\":[\"b\"],\"task_id\":\"a\"}";
	/* the same in CBOR, keys in yet another order, indefinite and long forms */
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	ec_cbor_w_raw(&w, (const uint8_t *)"\xbf", 1); /* indefinite map */
	ec_cbor_w_text(&w, "payload");
	ec_cbor_w_raw(&w, (const uint8_t *)"\xbf", 1);
	ec_cbor_w_text(&w, "a");
	ec_cbor_w_raw(&w, (const uint8_t *)"\x9f", 1);
	ec_cbor_w_raw(&w, (const uint8_t *)"\xf9\x41\x00", 3); /* 2.5 as a half float */
	ec_cbor_w_text(&w, "x");
	ec_cbor_w_map(&w, 2);
	ec_cbor_w_text(&w, "q");
	ec_cbor_w_null(&w);
	ec_cbor_w_text(&w, "p");
	ec_cbor_w_bool(&w, true);
	ec_cbor_w_raw(&w, (const uint8_t *)"\xff", 1);
	ec_cbor_w_text(&w, "z");
	ec_cbor_w_raw(&w, (const uint8_t *)"\x1b\0\0\0\0\0\0\0\x01", 9); /* 1, long form */
	ec_cbor_w_raw(&w, (const uint8_t *)"\xff", 1);
	ec_cbor_w_text(&w, "task_id");
	ec_cbor_w_text(&w, "a");
	ec_cbor_w_text(&w, "when");
	ec_cbor_w_map(&w, 3);
	ec_cbor_w_text(&w, "task");
	ec_cbor_w_text(&w, "b");
	ec_cbor_w_text(&w, "equals");
	ec_cbor_w_map(&w, 2);
	ec_cbor_w_text(&w, "y");
	ec_cbor_w_double(&w, 2.0);
	ec_cbor_w_text(&w, "x");
	ec_cbor_w_uint(&w, 1);
	ec_cbor_w_text(&w, "field");
	ec_cbor_w_text(&w, "f");
	ec_cbor_w_text(&w, "depends_on");
	ec_cbor_w_array(&w, 1);
	ec_cbor_w_text(&w, "b");
	ec_cbor_w_text(&w, "type");
	ec_cbor_w_text(&w, "t");
	ec_cbor_w_raw(&w, (const uint8_t *)"\xff", 1);
	assert_int_equal(ec_cbor_w_finish(&w), 0);

	struct submission sa, sb, sc;
	struct sub_error e;
	assert_int_equal(dec(a, ENC_JSON, &sa, &e), 0);
	assert_int_equal(dec(b, ENC_JSON, &sb, &e), 0);
	int rc = codec_decode_submission(w.buf, w.len, ENC_CBOR, &lim, &sc, &e);
	if (rc != 0)
		fail_msg("%d %s", rc, e.detail);
	const struct task_spec *ta = &sa.tasks[0], *tb = &sb.tasks[0], *tc = &sc.tasks[0];
	assert_int_equal(ta->payload_len, tb->payload_len);
	assert_memory_equal(ta->payload, tb->payload, ta->payload_len);
	assert_int_equal(ta->payload_len, tc->payload_len);
	assert_memory_equal(ta->payload, tc->payload, ta->payload_len);
	assert_int_equal(ta->when_equals_len, tb->when_equals_len);
	assert_memory_equal(ta->when_equals, tb->when_equals, ta->when_equals_len);
	assert_int_equal(ta->when_equals_len, tc->when_equals_len);
	assert_memory_equal(ta->when_equals, tc->when_equals, ta->when_equals_len);
	/* and the bytes are the canonical form: a fixed point */
	uint8_t *again = NULL;
	size_t an;
	assert_int_equal(codec_cbor_canonical(ta->payload, ta->payload_len, 32, &again, &an), 0);
	assert_int_equal(an, ta->payload_len);
	assert_memory_equal(again, ta->payload, an);
	free(again);
	/* a different value is different bytes */
	struct submission sd;
	assert_int_equal(dec(J({"task_id": "a", "type": "t", "payload": {"z": 2}}), ENC_JSON, &sd,
			     &e), 0);
	assert_false(sd.tasks[0].payload_len == ta->payload_len &&
		     memcmp(sd.tasks[0].payload, ta->payload, ta->payload_len) == 0);
	submission_fini(&sa);
	submission_fini(&sb);
	submission_fini(&sc);
	submission_fini(&sd);
	ec_cbor_w_fini(&w);
}

/* 10,000 steps in a chain pass; closing the chain into a ring is a cycle
 * reported with its ids. Linear work, no recursion. */
static char *chain(uint32_t n, bool ring)
{
	size_t cap = (size_t)n * 80 + 128, len = 0;
	char *s = malloc(cap);
	assert_non_null(s);
	len += snprintf(s + len, cap - len,
			"{\"task_id\":\"w\",\"type\":\"collaborative_task\",\"steps\":[");
	for (uint32_t i = 0; i < n; i++) {
		len += snprintf(s + len, cap - len, "%s{\"task_id\":\"s%u\",\"type\":\"t\"", i ? "," : "", i);
		if (i > 0 || ring)
			len += snprintf(s + len, cap - len, ",\"depends_on\":[\"s%u\"]",
					i > 0 ? i - 1 : n - 1);
		len += snprintf(s + len, cap - len, "}");
	}
	snprintf(s + len, cap - len, "]}");
	return s;
}

static void test_sub_big(void **state)
{
	(void)state;
	char *ok = chain(10000, false);
	struct submission s;
	dec_ok(ok, &s);
	assert_int_equal(s.ntasks, 10000);
	assert_string_equal(s.tasks[9999].deps[0], "w:s9998");
	submission_fini(&s);
	free(ok);
	char *ring = chain(10000, true);
	struct sub_error e;
	assert_int_equal(dec(ring, ENC_JSON, &s, &e), EC_ECYCLE);
	assert_true(strncmp(e.detail, "cycle: w:s0 -> w:s9999 -> w:s9998 -> ", 37) == 0);
	assert_true(strlen(e.detail) < sizeof e.detail);
	assert_non_null(strstr(e.detail, "... -> "));
	free(ring);
	/* one more than the limit */
	char *big = chain(10001, false);
	assert_int_equal(dec(big, ENC_JSON, &s, &e), EC_ETOO_LARGE);
	free(big);
}

/* ---- control ---- */

static int ctrl(const char *json, unsigned allowed, int *key, char *id)
{
	struct sub_error e;
	int rc = codec_decode_control((const uint8_t *)json, strlen(json), ENC_JSON, allowed, key,
				      id, &e);
	if (rc != 0)
		assert_int_equal(e.code, rc);
	/* the CBOR form gives the same answer */
	uint8_t *cb = NULL;
	size_t cn;
	if (codec_json_to_cbor(json, strlen(json), 32, &cb, &cn) == 0) {
		int k2 = -1;
		char id2[TASK_FULLID_MAX + 1];
		int rc2 = codec_decode_control(cb, cn, ENC_CBOR, allowed, &k2, id2, &e);
		assert_int_equal(rc2, rc);
		if (rc == 0) {
			assert_int_equal(k2, *key);
			assert_string_equal(id2, id);
		}
		free(cb);
	}
	return rc;
}

static void test_control(void **state)
{
	(void)state;
	const unsigned TW = CTRL_KEY_TASK | CTRL_KEY_WORKFLOW;
	int key = 0;
	char id[TASK_FULLID_MAX + 1];
	assert_int_equal(ctrl(J({"task_id": "a"}), TW, &key, id), 0);
	assert_int_equal(key, CTRL_KEY_TASK);
	assert_string_equal(id, "a");
	assert_int_equal(ctrl(J({"task_id": "wf:step"}), TW, &key, id), 0);
	assert_string_equal(id, "wf:step");
	assert_int_equal(ctrl(J({"workflow": "wf"}), TW, &key, id), 0);
	assert_int_equal(key, CTRL_KEY_WORKFLOW);
	assert_int_equal(ctrl(J({"agent": "gw-1"}), CTRL_KEY_AGENT, &key, id), 0);
	assert_int_equal(key, CTRL_KEY_AGENT);
	assert_string_equal(id, "gw-1");
	assert_int_equal(ctrl(J({"agent": "gw-1"}), TW, &key, id), EC_EUNKNOWN_FIELD);
	assert_int_equal(ctrl(J({"task": "a"}), TW, &key, id), EC_EUNKNOWN_FIELD);
	assert_int_equal(ctrl(J({"task_id": "a", "x": 1}), TW, &key, id), EC_EUNKNOWN_FIELD);
	assert_int_equal(ctrl(J({}), TW, &key, id), EC_EINVALID_FIELD);
	assert_int_equal(ctrl(J({"task_id": "a", "workflow": "b"}), TW, &key, id),
			 EC_EINVALID_FIELD);
	assert_int_equal(ctrl(J({"task_id": "a b"}), TW, &key, id), EC_EINVALID_FIELD);
	assert_int_equal(ctrl(J({"task_id": "wf:"}), TW, &key, id), EC_EINVALID_FIELD);
	assert_int_equal(ctrl(J({"task_id": ":s"}), TW, &key, id), EC_EINVALID_FIELD);
	assert_int_equal(ctrl(J({"task_id": "a:b:c"}), TW, &key, id), EC_EINVALID_FIELD);
	assert_int_equal(ctrl(J({"workflow": "wf:step"}), TW, &key, id), EC_EINVALID_FIELD);
	assert_int_equal(ctrl(J({"task_id": 5}), TW, &key, id), EC_EINVALID_FIELD);
	assert_int_equal(ctrl(J(["a"]), TW, &key, id), EC_EMALFORMED);
	assert_int_equal(ctrl("\"a\"", TW, &key, id), EC_EMALFORMED);
	assert_int_equal(ctrl("{\"task_id\":", TW, &key, id), EC_EMALFORMED);
	assert_int_equal(ctrl("{\"task_id\":\"a\",\"task_id\":\"b\"}", TW, &key, id),
			 EC_EINVALID_FIELD);
	/* the id buffer takes the longest full id */
	char big[300];
	memset(id, 0, sizeof id);
	char a100[101];
	memset(a100, 'a', 100);
	a100[100] = 0;
	snprintf(big, sizeof big, "{\"task_id\":\"%s:%s\"}", a100, a100);
	assert_int_equal(ctrl(big, TW, &key, id), 0);
	assert_int_equal(strlen(id), TASK_FULLID_MAX);
}

static void test_sniff(void **state)
{
	(void)state;
	assert_int_equal(codec_sniff((const uint8_t *)"{}", 2), ENC_JSON);
	assert_int_equal(codec_sniff((const uint8_t *)" \t\r\n[", 5), ENC_JSON);
	assert_int_equal(codec_sniff((const uint8_t *)"\xef\xbb\xbf {", 5), ENC_JSON);
	assert_int_equal(codec_sniff((const uint8_t *)"\xa1\x61", 2), ENC_CBOR);
	assert_int_equal(codec_sniff((const uint8_t *)"\"x\"", 3), ENC_CBOR);
	assert_int_equal(codec_sniff((const uint8_t *)"   ", 3), ENC_CBOR);
	assert_int_equal(codec_sniff((const uint8_t *)"\xef\xbb", 2), ENC_CBOR);
	assert_int_equal(codec_sniff(NULL, 0), ENC_CBOR);
	/* 0x7b is '{' and also a CBOR text head: JSON wins, by contract */
	assert_int_equal(codec_sniff((const uint8_t *)"\x7b", 1), ENC_JSON);
}

/* The integral-double test both decoders use to normalize numbers, at the
 * edges of int64 and beyond. */
static void test_int64_of(void **state)
{
	(void)state;
	int64_t v;
	assert_true(codec_int64_of(0.0, &v) && v == 0);
	assert_true(codec_int64_of(-0.0, &v) && v == 0);
	assert_true(codec_int64_of(-3.0, &v) && v == -3);
	assert_true(codec_int64_of(-9223372036854775808.0, &v) && v == INT64_MIN);
	assert_true(codec_int64_of(9223372036854774784.0, &v) && v == INT64_C(9223372036854774784));
	assert_false(codec_int64_of(9223372036854775808.0, &v)); /* 2^63 */
	assert_false(codec_int64_of(-9223372036854777856.0, &v)); /* below INT64_MIN */
	assert_false(codec_int64_of(2.5, &v));
	assert_false(codec_int64_of(-0.5, &v));
	assert_false(codec_int64_of(1e300, &v));
	assert_false(codec_int64_of(INFINITY, &v));
	assert_false(codec_int64_of(-INFINITY, &v));
	assert_false(codec_int64_of(NAN, &v));
}

/* ---- the message writer ---- */

/* One random item, written on w: the same seed gives the same calls. */
static void w_random(struct codec_w *w, uint32_t depth)
{
	static const char *texts[] = { "", "task_id", "q\"uote", "back\\slash", "tab\there",
				       "nl\n\x01\x1f", "caf\xc3\xa9 \xe2\x82\xac", NULL };
	static const struct { uint8_t b[12]; size_t n; } items[] = {
		{ { 0xa1, 0x61, 0x6b, 0x43, 1, 2, 3 }, 7 },        /* {"k": h'010203'} */
		{ { 0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0 }, 9 },     /* 1.5 */
		{ { 0x82, 0xf5, 0xc1, 0x1a, 0, 1, 0, 0 }, 8 },     /* [true, 1(65536)] */
		{ { 0xa1, 0x01, 0x80 }, 3 },                       /* {1: []} */
		{ { 0 }, 0 },                                      /* null */
	};
	static const int64_t ints[] = { 0, 1, -1, 23, -24, -25, 255, -256, 65536,
					INT64_MAX, INT64_MIN, -1000000000000 };
	int k = rand() % (depth < CODEC_W_DEPTH ? 9 : 7);
	uint32_t n = (uint32_t)(rand() % 4);
	switch (k) {
	case 0: codec_w_text(w, texts[rand() % 8]); break;
	case 1: codec_w_uint(w, rand() % 2 ? UINT64_MAX : (uint64_t)rand()); break;
	case 2: codec_w_int(w, ints[rand() % 12]); break;
	case 3:
		if (rand() % 2)
			codec_w_bool(w, rand() % 2);
		else
			codec_w_double(w, (double)(rand() % 2001 - 1000) / (1 + rand() % 7));
		break;
	case 4: codec_w_null(w); break;
	case 5:
	case 6: {
		int i = rand() % 5;
		codec_w_cbor(w, items[i].n ? items[i].b : NULL, items[i].n);
		break;
	}
	case 7:
		codec_w_map(w, n);
		for (uint32_t i = 0; i < n; i++) {
			codec_w_text(w, texts[rand() % 7]);
			w_random(w, depth + 1);
		}
		break;
	default:
		codec_w_array(w, n);
		for (uint32_t i = 0; i < n; i++)
			w_random(w, depth + 1);
		break;
	}
}

/* JSON written directly is the text converting the CBOR gives (what the
 * messages were before the writer), for random items up to the depth. */
static void test_writer_same_as_converted(void **state)
{
	(void)state;
	for (unsigned seed = 1; seed <= 3000; seed++) {
		struct codec_w c, j;
		uint8_t *cb, *js;
		char *conv;
		size_t cn, jn, convn;
		codec_w_init(&c, ENC_CBOR);
		codec_w_init(&j, ENC_JSON);
		srand(seed);
		w_random(&c, 0);
		srand(seed);
		w_random(&j, 0);
		assert_int_equal(codec_w_take(&c, &cb, &cn), 0);
		assert_int_equal(codec_w_take(&j, &js, &jn), 0);
		assert_int_equal(codec_cbor_to_json(cb, cn, &conv, &convn), 0);
		if (jn != convn || memcmp(js, conv, jn) != 0)
			fail_msg("seed %u: written %.*s, converted %s", seed, (int)jn, js, conv);
		assert_int_equal(js[jn], 0);
		free(cb);
		free(js);
		free(conv);
	}
}

/* A writer used wrongly fails rather than write invalid JSON. */
static void test_writer_misuse(void **state)
{
	(void)state;
	struct codec_w w;
	uint8_t *out = NULL;
	size_t n;
	codec_w_init(&w, ENC_JSON); /* more items than the map said */
	codec_w_map(&w, 1);
	codec_w_text(&w, "a");
	codec_w_uint(&w, 1);
	codec_w_text(&w, "b");
	assert_int_equal(codec_w_take(&w, &out, &n), EC_EMALFORMED);
	codec_w_init(&w, ENC_JSON); /* left open */
	codec_w_array(&w, 2);
	codec_w_null(&w);
	assert_int_equal(codec_w_take(&w, &out, &n), EC_EMALFORMED);
	codec_w_init(&w, ENC_JSON); /* too deep */
	for (int i = 0; i <= CODEC_W_DEPTH; i++)
		codec_w_array(&w, 1);
	codec_w_null(&w);
	assert_int_equal(codec_w_take(&w, &out, &n), EC_EMALFORMED);
	codec_w_init(&w, ENC_JSON); /* an item that is not CBOR */
	codec_w_cbor(&w, (const uint8_t *)"\xa1\x61", 2);
	assert_int_equal(codec_w_take(&w, &out, &n), EC_EMALFORMED);
	assert_null(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_int64_of),
		cmocka_unit_test(test_cbor_check),
		cmocka_unit_test(test_cbor_hostile_counts),
		cmocka_unit_test(test_cbor_depth),
		cmocka_unit_test(test_cbor_canonical),
		cmocka_unit_test(test_cbor_canonical_dupkeys),
		cmocka_unit_test(test_json_to_cbor),
		cmocka_unit_test(test_json_deep),
		cmocka_unit_test(test_cbor_to_json),
		cmocka_unit_test(test_cbor_to_json_key_blowup),
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_field_equals),
		cmocka_unit_test_setup(test_sub_task, setup),
		cmocka_unit_test_setup(test_sub_unset, setup),
		cmocka_unit_test_setup(test_sub_workflow, setup),
		cmocka_unit_test_setup(test_sub_batch, setup),
		cmocka_unit_test_setup(test_sub_fields_refused, setup),
		cmocka_unit_test_setup(test_sub_structure_refused, setup),
		cmocka_unit_test_setup(test_sub_cbor_specific, setup),
		cmocka_unit_test_setup(test_sub_graph_refused, setup),
		cmocka_unit_test_setup(test_sub_limits, setup),
		cmocka_unit_test_setup(test_sub_hostile, setup),
		cmocka_unit_test_setup(test_sub_truncations, setup),
		cmocka_unit_test_setup(test_sub_idempotent, setup),
		cmocka_unit_test_setup(test_sub_big, setup),
		cmocka_unit_test_setup(test_control, setup),
		cmocka_unit_test(test_sniff),
		cmocka_unit_test(test_writer_same_as_converted),
		cmocka_unit_test(test_writer_misuse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
