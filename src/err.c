/* SPDX-License-Identifier: MIT */
/*
 * err.c - names of the error codes of include/edgecoord/err.h.
 */
#include <string.h>

#include "edgecoord/err.h"

static const struct {
	int code;
	const char *reject; /* contract name, NULL for internal codes */
	const char *text;
} errs[] = {
	{ EC_EMALFORMED, "malformed", "malformed input" },
	{ EC_EUNKNOWN_FIELD, "unknown_field", "unknown field" },
	{ EC_EINVALID_FIELD, "invalid_field", "invalid field" },
	{ EC_ETOO_LARGE, "too_large", "over a limit" },
	{ EC_ECYCLE, "cycle", "dependency cycle" },
	{ EC_EUNKNOWN_DEP, "unknown_dependency", "unknown dependency" },
	{ EC_EDUPLICATE_ID, "duplicate_id", "duplicate id" },
	{ EC_ECONFLICT, "conflict", "id exists with different content" },
	{ EC_EQUOTA, "quota_exceeded", "quota exceeded" },
	{ EC_ESTORE_FULL, "store_full", "store full" },
	{ EC_EUNKNOWN_TASK, "unknown_task", "unknown task" },
	{ EC_EUNKNOWN_WORKFLOW, "unknown_workflow", "unknown workflow" },
	{ EC_EUNKNOWN_AGENT, "unknown_agent", "unknown agent" },
	{ EC_ENOT_DEAD, "not_dead", "task is not dead" },
	{ EC_ENOTFOUND, NULL, "not found" },
	{ EC_EILLEGAL, NULL, "illegal state transition" },
	{ EC_ESTORE, NULL, "store failure" },
	{ EC_EPROTO, NULL, "protocol violation" },
	{ EC_ECONFIG, NULL, "configuration error" },
	{ EC_EMAPFULL, NULL, "store map full" },
	{ EC_ESTALE, NULL, "stale lease" },
	{ EC_ETRUNCATED, NULL, "data file truncated" },
};

const char *ec_strerror(int err)
{
	if (err == 0)
		return "success";
	if (err < 0 && err > EC_E_BASE)
		return strerror(-err);
	for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
		if (errs[i].code == err)
			return errs[i].text;
	return "unknown error";
}

const char *ec_reject_code(int err)
{
	for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
		if (errs[i].code == err)
			return errs[i].reject;
	return NULL;
}
