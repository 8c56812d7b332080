/* SPDX-License-Identifier: MIT */
/*
 * vec.h - growing arrays: the one helper coord and fleet share for their
 * per-turn lists. vec_grow() makes room for `need` elements of `elem` bytes
 * in *arr (capacity *cap, doubling); 0 or -ENOMEM, *arr untouched on failure.
 */
#ifndef EC_VEC_H
#define EC_VEC_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

static inline int vec_grow(void **arr, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t ncap = *cap ? *cap * 2 : 16;
	while (ncap < need)
		ncap *= 2;
	if (ncap > SIZE_MAX / elem)
		return -ENOMEM;
	void *p = realloc(*arr, ncap * elem);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = ncap;
	return 0;
}

#endif
