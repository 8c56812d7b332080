/* SPDX-License-Identifier: MIT */
/*
 * err.h - error codes shared by the daemon, the agent library and the tools.
 *
 * A function that can fail returns int: 0, or a negative code. System errors
 * are -errno (libuv's convention); our own codes live below EC_E_BASE so the
 * two never collide. The first block maps one to one onto the rejection codes
 * of the external contract (DESIGN 3.4, 5): ec_reject_code() names them.
 */
#ifndef EDGECOORD_ERR_H
#define EDGECOORD_ERR_H

#define EC_E_BASE (-10000)

enum ec_err {
	/* rejection codes of a submission or control message */
	EC_EMALFORMED = EC_E_BASE - 1,   /* "malformed" */
	EC_EUNKNOWN_FIELD = EC_E_BASE - 2, /* "unknown_field" */
	EC_EINVALID_FIELD = EC_E_BASE - 3, /* "invalid_field" */
	EC_ETOO_LARGE = EC_E_BASE - 4,   /* "too_large" */
	EC_ECYCLE = EC_E_BASE - 5,       /* "cycle" */
	EC_EUNKNOWN_DEP = EC_E_BASE - 6, /* "unknown_dependency" */
	EC_EDUPLICATE_ID = EC_E_BASE - 7, /* "duplicate_id" */
	EC_ECONFLICT = EC_E_BASE - 8,    /* "conflict" */
	EC_EQUOTA = EC_E_BASE - 9,       /* "quota_exceeded" */
	EC_ESTORE_FULL = EC_E_BASE - 10, /* "store_full" */
	EC_EUNKNOWN_TASK = EC_E_BASE - 11, /* "unknown_task" */
	EC_EUNKNOWN_WORKFLOW = EC_E_BASE - 12, /* "unknown_workflow" */
	EC_EUNKNOWN_AGENT = EC_E_BASE - 13, /* "unknown_agent" */
	EC_ENOT_DEAD = EC_E_BASE - 14,   /* "not_dead" */
	/* internal */
	EC_ENOTFOUND = EC_E_BASE - 20,   /* a lookup found nothing */
	EC_EILLEGAL = EC_E_BASE - 21,    /* an illegal state transition */
	EC_ESTORE = EC_E_BASE - 22,      /* the store failed (LMDB error) */
	EC_EPROTO = EC_E_BASE - 23,      /* a peer broke the protocol */
	EC_ECONFIG = EC_E_BASE - 24,     /* bad configuration */
	EC_EMAPFULL = EC_E_BASE - 25,    /* the map must grow; retry the txn */
	EC_ESTALE = EC_E_BASE - 26,      /* a lease that is no longer current */
	EC_ETRUNCATED = EC_E_BASE - 27,  /* the store's data file is shorter than its tree */
};

/* Text for any code (ours or -errno). Never NULL, static storage. */
const char *ec_strerror(int err);

/* The contract's rejection code ("malformed", ...) or NULL if err is not one. */
const char *ec_reject_code(int err);

#endif
