/* SPDX-License-Identifier: MIT */
/*
 * codec_sub.c - validating submissions and control messages (placeholder
 * until the walker lands).
 */
#include <errno.h>

#include "codec.h"

int codec_decode_submission(const uint8_t *buf, size_t len, enum encoding enc,
			    const struct limits *lim, struct submission *out,
			    struct sub_error *err)
{
	return -ENOSYS;
}

int codec_decode_control(const uint8_t *buf, size_t len, enum encoding enc,
			 unsigned allowed, int *key, char *id, struct sub_error *err)
{
	return -ENOSYS;
}
