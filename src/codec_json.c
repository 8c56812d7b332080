/* SPDX-License-Identifier: MIT */
/*
 * codec_json.c - JSON text in, canonical CBOR out; and sniffing which of the
 * two a payload is (DESIGN 2). Owns the only use of cJSON in edgecoord.
 *
 * cJSON recurses once per nesting level up to its own limit of 1000, so the
 * text is first scanned without recursion for its depth (and for what cJSON
 * would silently get wrong: a NUL byte ends its input early, "\u0000" ends a
 * string early). Only then is it parsed and converted; the conversion's
 * recursion is bounded by the depth already checked.
 *
 * cJSON keeps every number as a double: integers beyond 2^53 lose precision
 * (LIBNOTES 6). We do not try to recover them; ids are text.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec.h"
#include "codec_int.h"
#include "edgecoord/err.h"

static bool json_space(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t bom_len(const uint8_t *buf, size_t len)
{
	return len >= 3 && buf[0] == 0xef && buf[1] == 0xbb && buf[2] == 0xbf ? 3 : 0;
}

enum encoding codec_sniff(const uint8_t *buf, size_t len)
{
	if (!buf)
		return ENC_CBOR;
	size_t i = bom_len(buf, len);
	while (i < len && json_space(buf[i]))
		i++;
	return i < len && (buf[i] == '{' || buf[i] == '[') ? ENC_JSON : ENC_CBOR;
}

/* Depth of arrays/objects outside strings, plus the bytes cJSON mishandles. */
static int prescan(const uint8_t *s, size_t len, uint32_t max_depth)
{
	uint32_t depth = 0;
	bool in_str = false;
	for (size_t i = 0; i < len; i++) {
		uint8_t c = s[i];
		if (c == 0)
			return EC_EMALFORMED;
		if (in_str) {
			if (c == '\\') {
				if (i + 1 >= len)
					return EC_EMALFORMED;
				if (s[i + 1] == 'u' && len - i >= 6 && memcmp(s + i + 2, "0000", 4) == 0)
					return EC_EMALFORMED;
				i++;
			} else if (c == '"') {
				in_str = false;
			} else if (c < 0x20) {
				return EC_EMALFORMED;
			}
			continue;
		}
		if (c == '"') {
			in_str = true;
		} else if (c == '[' || c == '{') {
			if (++depth > max_depth)
				return EC_ETOO_LARGE;
		} else if (c == ']' || c == '}') {
			if (depth == 0)
				return EC_EMALFORMED;
			depth--;
		}
	}
	return 0;
}

struct jkey {
	uint8_t *k;
	size_t kn;
	const cJSON *v;
};

static int jkey_cmp(const void *a, const void *b)
{
	const struct jkey *x = a, *y = b;
	size_t m = x->kn < y->kn ? x->kn : y->kn;
	int c = m ? memcmp(x->k, y->k, m) : 0;
	if (c)
		return c;
	return (x->kn > y->kn) - (x->kn < y->kn);
}

static int conv(const cJSON *j, struct ec_cbor_w *w, char *dupkey);

static int conv_object(const cJSON *j, struct ec_cbor_w *w, char *dupkey)
{
	size_t n = 0;
	for (const cJSON *c = j->child; c; c = c->next)
		n++;
	ec_cbor_w_map(w, n);
	if (n == 0)
		return ec_cbor_w_finish(w);
	struct jkey *ks = calloc(n, sizeof *ks);
	if (!ks)
		return -ENOMEM;
	int rc = 0;
	size_t i = 0;
	for (const cJSON *c = j->child; c; c = c->next, i++) {
		const char *k = c->string ? c->string : "";
		size_t kl = strlen(k);
		if (!codec_utf8_valid((const uint8_t *)k, kl)) {
			rc = EC_EMALFORMED;
			goto out;
		}
		struct ec_cbor_w kw;
		ec_cbor_w_init(&kw);
		ec_cbor_w_textn(&kw, k, kl);
		if ((rc = ec_cbor_w_finish(&kw)) < 0) {
			ec_cbor_w_fini(&kw);
			goto out;
		}
		ks[i].k = ec_cbor_w_take(&kw, &ks[i].kn);
		ks[i].v = c;
	}
	qsort(ks, n, sizeof *ks, jkey_cmp);
	for (i = 0; i < n; i++) {
		if (i > 0 && jkey_cmp(&ks[i - 1], &ks[i]) == 0) {
			if (dupkey)
				snprintf(dupkey, CODEC_DUPKEY_MAX, "%s", ks[i].v->string);
			rc = CODEC_EDUPKEY;
			goto out;
		}
		ec_cbor_w_raw(w, ks[i].k, ks[i].kn);
		if ((rc = conv(ks[i].v, w, dupkey)) < 0)
			goto out;
	}
out:
	for (i = 0; i < n; i++)
		free(ks[i].k);
	free(ks);
	return rc;
}

/* Recursion depth is the text's nesting depth, checked by prescan(). */
static int conv(const cJSON *j, struct ec_cbor_w *w, char *dupkey)
{
	if (cJSON_IsFalse(j)) {
		ec_cbor_w_bool(w, false);
	} else if (cJSON_IsTrue(j)) {
		ec_cbor_w_bool(w, true);
	} else if (cJSON_IsNull(j)) {
		ec_cbor_w_null(w);
	} else if (cJSON_IsNumber(j)) {
		double d = j->valuedouble;
		if (!isfinite(d))
			return EC_EMALFORMED; /* 1e999: no double holds it */
		int64_t v;
		if (codec_int64_of(d, &v))
			ec_cbor_w_int(w, v);
		else
			ec_cbor_w_double(w, d);
	} else if (cJSON_IsString(j)) {
		size_t n = strlen(j->valuestring);
		if (!codec_utf8_valid((const uint8_t *)j->valuestring, n))
			return EC_EMALFORMED;
		ec_cbor_w_textn(w, j->valuestring, n);
	} else if (cJSON_IsArray(j)) {
		size_t n = 0;
		for (const cJSON *c = j->child; c; c = c->next)
			n++;
		ec_cbor_w_array(w, n);
		for (const cJSON *c = j->child; c; c = c->next) {
			int rc = conv(c, w, dupkey);
			if (rc < 0)
				return rc;
		}
	} else if (cJSON_IsObject(j)) {
		return conv_object(j, w, dupkey);
	} else {
		return EC_EMALFORMED;
	}
	return ec_cbor_w_finish(w);
}

int codec_json_canonical(const char *json, size_t len, uint32_t max_depth, uint8_t **out,
			 size_t *out_len, char *dupkey)
{
	if (!json)
		return EC_EMALFORMED;
	if (max_depth > CODEC_DEPTH_CAP)
		max_depth = CODEC_DEPTH_CAP;
	const uint8_t *s = (const uint8_t *)json;
	size_t skip = bom_len(s, len);
	s += skip;
	len -= skip;
	int rc = prescan(s, len, max_depth);
	if (rc < 0)
		return rc;
	/* cJSON wants a NUL-terminated string; the scan refused inner NULs */
	char *text = malloc(len + 1);
	if (!text)
		return -ENOMEM;
	memcpy(text, s, len);
	text[len] = 0;
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
	if (!root) {
		free(text);
		return EC_EMALFORMED;
	}
	struct ec_cbor_w w;
	ec_cbor_w_init(&w);
	rc = conv(root, &w, dupkey);
	if (rc == 0) {
		size_t n;
		uint8_t *p = ec_cbor_w_take(&w, &n);
		*out = p;
		*out_len = n;
	}
	ec_cbor_w_fini(&w);
	cJSON_Delete(root);
	free(text);
	return rc;
}

int codec_json_to_cbor(const char *json, size_t len, uint32_t max_depth, uint8_t **out,
		       size_t *out_len)
{
	int rc = codec_json_canonical(json, len, max_depth, out, out_len, NULL);
	return rc == CODEC_EDUPKEY ? EC_EMALFORMED : rc;
}
