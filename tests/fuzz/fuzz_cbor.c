/* SPDX-License-Identifier: MIT */
/*
 * fuzz_cbor.c - the CBOR side of the codec on arbitrary bytes: check,
 * canonical form, conversion to JSON and field equality. Properties: a
 * canonical form passes the check and is its own canonical form; an item the check accepts either canonicalizes or holds a
 * duplicate key (EC_EMALFORMED); JSON of any accepted item converts back or
 * is refused cleanly.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "edgecoord/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int rc = codec_cbor_check(data, size, 32);
	if (rc != 0 && rc != EC_EMALFORMED && rc != EC_ETOO_LARGE)
		abort();
	uint8_t *canon = NULL;
	size_t cn = 0;
	int rc2 = codec_cbor_canonical(data, size, 32, &canon, &cn);
	if (rc != 0 && rc2 != rc)
		abort(); /* canonical never accepts what check refuses */
	if (rc == 0 && rc2 != 0 && rc2 != EC_EMALFORMED)
		abort();
	char *json = NULL;
	size_t jn = 0;
	int rc3 = codec_cbor_to_json(data, size, &json, &jn);
	/* only a non-text key whose JSON text is over 4 KiB is refused */
	if (rc == 0 && rc3 != 0 && rc3 != EC_EMALFORMED)
		abort();
	if (rc3 == 0) {
		if (strlen(json) != jn)
			abort();
		uint8_t *back = NULL;
		size_t bn = 0;
		int rc4 = codec_json_to_cbor(json, jn, 1024, &back, &bn);
		/* a refusal is fine: two keys may meet as the same JSON text,
		 * a text may hold a NUL JSON cannot carry to us */
		if (rc4 != 0 && rc4 != EC_EMALFORMED)
			abort();
		free(back);
		free(json);
	}
	if (rc2 == 0) {
		if (codec_cbor_check(canon, cn, 32) != 0)
			abort();
		uint8_t *again = NULL;
		size_t an = 0;
		if (codec_cbor_canonical(canon, cn, 32, &again, &an) != 0 || an != cn ||
		    memcmp(again, canon, cn) != 0)
			abort();
		free(again);
		/* every item equals itself under `when` */
		static const uint8_t one[] = { 0x01 };
		bool eq = codec_cbor_field_equals(data, size, "a", one, sizeof one);
		uint8_t wrap[4096];
		if (cn + 3 <= sizeof wrap) {
			wrap[0] = 0xa1, wrap[1] = 0x61, wrap[2] = 'a';
			memcpy(wrap + 3, canon, cn);
			if (!codec_cbor_field_equals(wrap, cn + 3, "a", canon, cn))
				abort();
			if (!codec_cbor_field_equals(wrap, cn + 3, "a", data, size))
				abort();
		}
		(void)eq;
		free(canon);
	}
	return 0;
}
