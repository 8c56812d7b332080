/* SPDX-License-Identifier: MIT */
/*
 * fuzz_frame.c - libFuzzer target for ec_frame_decode(), the decoder of every
 * byte an agent or a coordinator receives. A frame that decodes must encode
 * again, and the encoding must decode to a frame that encodes to the same
 * bytes (the codec is a fixed point after one round).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edgecoord/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ec_frame f, g;
	if (ec_frame_decode(data, size, &f, NULL) != 0)
		return 0;
	uint8_t *a = NULL, *b = NULL;
	size_t alen, blen;
	if (ec_frame_encode(&f, 1u << 20, &a, &alen) != 0)
		abort();
	if (ec_frame_decode(a + EC_FRAME_HDR, alen - EC_FRAME_HDR, &g, NULL) != 0)
		abort();
	if (ec_frame_encode(&g, 1u << 20, &b, &blen) != 0)
		abort();
	if (alen != blen || memcmp(a, b, alen) != 0)
		abort();
	ec_frame_fini(&f);
	ec_frame_fini(&g);
	free(a);
	free(b);
	return 0;
}
