/* SPDX-License-Identifier: MIT */
/*
 * fuzz_json.c - codec_json_to_cbor() on arbitrary text. Whatever it accepts
 * must be well-formed CBOR, already canonical (a fixed point of
 * codec_cbor_canonical), and come back byte for byte through
 * codec_cbor_to_json() and codec_json_to_cbor() again.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "edgecoord/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *cbor = NULL;
	size_t n = 0;
	int rc = codec_json_to_cbor((const char *)data, size, 32, &cbor, &n);
	if (rc != 0) {
		if (rc != EC_EMALFORMED && rc != EC_ETOO_LARGE)
			abort();
		return 0;
	}
	if (codec_cbor_check(cbor, n, 32) != 0)
		abort();
	uint8_t *canon = NULL;
	size_t cn = 0;
	if (codec_cbor_canonical(cbor, n, 32, &canon, &cn) != 0 || cn != n ||
	    memcmp(canon, cbor, n) != 0)
		abort();
	char *json = NULL;
	size_t jn = 0;
	if (codec_cbor_to_json(cbor, n, &json, &jn) != 0 || strlen(json) != jn)
		abort();
	uint8_t *back = NULL;
	size_t bn = 0;
	if (codec_json_to_cbor(json, jn, 32, &back, &bn) != 0 || bn != n ||
	    memcmp(back, cbor, n) != 0)
		abort();
	free(back);
	free(json);
	free(canon);
	free(cbor);
	return 0;
}
