/* SPDX-License-Identifier: MIT */
/*
 * fuzz_control.c - codec_decode_control() on arbitrary bytes, with the set
 * of allowed keys taken from the first byte. An accepted message names an
 * allowed key and a valid id; a refused one carries a rejection code.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "edgecoord/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned allowed = data[0] & 7;
	data++, size--;
	for (int e = 0; e < 2; e++) {
		enum encoding enc = e ? ENC_CBOR : ENC_JSON;
		int key = -1;
		char id[TASK_FULLID_MAX + 1];
		struct sub_error err;
		int rc = codec_decode_control(data, size, enc, allowed, &key, id, &err);
		if (rc != 0) {
			if (!ec_reject_code(rc) || err.code != rc)
				abort();
			continue;
		}
		if (!(allowed & (unsigned)key) || (key & (key - 1)))
			abort();
		const char *colon = strchr(id, ':');
		if (colon && (key != CTRL_KEY_TASK || !task_id_valid(id, (size_t)(colon - id)) ||
			      !task_id_valid(colon + 1, strlen(colon + 1))))
			abort();
		if (!colon && !task_id_valid(id, strlen(id)))
			abort();
	}
	return 0;
}
