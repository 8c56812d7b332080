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

#include "cbw.h"
#include "codec.h"
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cbor_check),
		cmocka_unit_test(test_cbor_hostile_counts),
		cmocka_unit_test(test_cbor_depth),
		cmocka_unit_test(test_cbor_canonical),
		cmocka_unit_test(test_cbor_canonical_dupkeys),
		cmocka_unit_test(test_json_to_cbor),
		cmocka_unit_test(test_json_deep),
		cmocka_unit_test(test_cbor_to_json),
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_field_equals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
