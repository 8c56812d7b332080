// SPDX-License-Identifier: MIT
/*
 * edgecoord-pki - a development PKI for a fleet, made with mbedtls.
 *
 *   edgecoord-pki init DIR        DIR (0700): ca.crt ca.key coordinator.crt
 *                                 coordinator.key
 *   edgecoord-pki issue DIR NAME  DIR/NAME.crt + DIR/NAME.key, CN = NAME
 *
 * Keys are ECDSA P-256 (PEM, SEC1), certificates X.509 v3 signed with
 * SHA-256. The fleet CA may sign end-entity certificates only (pathlen 0);
 * the coordinator's certificate is for serverAuth, an agent's for
 * clientAuth. mbedtls 2.28 has no writer for subjectAltName or
 * extendedKeyUsage, so ext_san() and ext_eku() build that DER here.
 *
 * Files are never overwritten: each is written to a temporary file and then
 * link()ed to its name, which fails if the name exists. A command that fails
 * part way removes what it created, so it changes nothing. Every
 * certificate is parsed back and checked with mbedtls (chain, key usage,
 * extended key usage) before anything reaches the disk.
 *
 * This is a tool for development fleets and small deployments; it keeps no
 * serial database and makes no CRLs (see docs/pki.md for rotation and for
 * using a real CA instead).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>

#define PROG "edgecoord-pki"
#define CA_CN_DEFAULT "edgecoord fleet CA"
#define COORD_CN_DEFAULT "edgecoord-coordinator"
#define CA_DAYS_DEFAULT 3650
#define LEAF_DAYS_DEFAULT 825
#define MAX_DAYS 36500
#define MAX_SAN 32
#define NAME_MAX_LEN 100 /* agent ids: [A-Za-z0-9._-]{1,100} */
#define CN_MAX_LEN 64    /* X.520 ub-common-name */
#define BACKDATE_SECS 3600 /* tolerate gateways whose clock runs behind */
#define PEM_BUF 16384
#define KEY_BUF 2048

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

struct san {
	int is_ip;
	size_t len;              /* of ip */
	unsigned char ip[16];
	char dns[254];
};

struct opts {
	const char *ca_cn;
	const char *cn;
	long days;
	long ca_days;
	const char *not_before; /* YYYYMMDDhhmmss, UTC */
	const char *not_after;
	struct san san[MAX_SAN];
	size_t nsan;
	int init_only; /* an option that only init takes was given */
};

/* What one run created (four files at most), so a failure can take it back. */
struct created {
	char path[8][PATH_MAX];
	size_t n;
};

static struct created g_created;
static mbedtls_ctr_drbg_context g_drbg;
static mbedtls_entropy_context g_entropy;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " [options] init DIR\n"
		"       " PROG " [options] issue DIR NAME\n"
		"\n"
		"init   creates DIR (0700) with a fleet CA (ca.crt, ca.key) and the\n"
		"       coordinator's server certificate (coordinator.crt, .key)\n"
		"issue  writes DIR/NAME.crt and DIR/NAME.key, a client certificate\n"
		"       with CN = NAME signed by DIR/ca.key; NAME is an agent id\n"
		"       [A-Za-z0-9._-]{1,100}\n"
		"Nothing is ever overwritten: if a file exists, nothing changes\n"
		"and the exit status is 1.\n"
		"\n"
		"options:\n"
		"  --days N             validity of the certificate issued (default\n"
		"                       %d days; init: of coordinator.crt)\n"
		"  --not-before TIME    validity start, TIME = YYYYMMDDhhmmss UTC\n"
		"  --not-after TIME     validity end (for tests: a past TIME makes\n"
		"                       an expired certificate)\n"
		"  --ca-cn NAME         init: the CA's CN (default \"%s\")\n"
		"  --ca-days N          init: the CA's validity (default %d days)\n"
		"  --cn NAME            init: the coordinator's CN (default \"%s\")\n"
		"  --san NAME|IP        init: another subjectAltName of the\n"
		"                       coordinator (repeatable); localhost, this\n"
		"                       host's name, 127.0.0.1 and ::1 are always in\n"
		"  --help, --version\n"
		"exit status: 0 success, 1 failure (nothing changed), 2 bad usage\n",
		LEAF_DAYS_DEFAULT, CA_CN_DEFAULT, CA_DAYS_DEFAULT, COORD_CN_DEFAULT);
}

static int bad_usage(const char *fmt, const char *arg)
{
	fprintf(stderr, PROG ": ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	usage(stderr);
	return EXIT_USAGE;
}

static const char *tls_err(int ret)
{
	static char buf[160];

	mbedtls_strerror(ret, buf, sizeof buf);
	return buf;
}

/* ---- validation of names and times ---- */

static int valid_agent_id(const char *s)
{
	size_t n = strlen(s);

	if (n < 1 || n > NAME_MAX_LEN)
		return 0;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			 "0123456789._-") == n;
}

/*
 * A CN goes through mbedtls's "CN=..." name parser, which gives ',', '\\'
 * and '+' meanings; printable ASCII without those is all a fleet needs.
 */
static int valid_cn(const char *s)
{
	size_t n = strlen(s);

	if (n < 1 || n > CN_MAX_LEN)
		return 0;
	for (const char *c = s; *c; c++)
		if (*c < 0x20 || *c > 0x7e || strchr(",\\+\"", *c))
			return 0;
	return 1;
}

/* LDH labels of 1..63, at most 253 in all; "*" allowed as the first label. */
static int valid_dns(const char *s)
{
	size_t n = strlen(s), label = 0;

	if (n < 1 || n > 253)
		return 0;
	if (s[0] == '*' && s[1] == '.')
		s += 2;
	for (const char *c = s;; c++) {
		if (*c == '.' || *c == '\0') {
			if (label == 0 || label > 63 || c[-1] == '-')
				return 0;
			if (*c == '\0')
				return 1;
			label = 0;
		} else if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
			   (*c >= '0' && *c <= '9') || (*c == '-' && label > 0)) {
			label++;
		} else {
			return 0;
		}
	}
}

/* Adds v unless it is already there. */
static int san_push(struct opts *o, const struct san *v)
{
	for (size_t i = 0; i < o->nsan; i++) {
		const struct san *w = &o->san[i];

		if (w->is_ip == v->is_ip &&
		    (v->is_ip ? w->len == v->len && !memcmp(w->ip, v->ip, v->len)
			      : !strcasecmp(w->dns, v->dns)))
			return 0;
	}
	if (o->nsan == MAX_SAN)
		return -E2BIG;
	o->san[o->nsan++] = *v;
	return 0;
}

/* Adds s, an IP address (as iPAddress) or a DNS name (as dNSName). */
static int san_add(struct opts *o, const char *s)
{
	struct san v = { 0 };

	if (inet_pton(AF_INET, s, v.ip) == 1) {
		v.is_ip = 1;
		v.len = 4;
	} else if (inet_pton(AF_INET6, s, v.ip) == 1) {
		v.is_ip = 1;
		v.len = 16;
	} else if (valid_dns(s)) {
		snprintf(v.dns, sizeof v.dns, "%s", s);
	} else {
		return -EINVAL;
	}
	return san_push(o, &v);
}

/*
 * mbedtls 2.28 matches a client's hostname against dNSName entries only, so
 * an mbedtls agent told to reach "127.0.0.1" would refuse a certificate that
 * lists the address as iPAddress alone. Each IPv4 address is therefore
 * listed as a dNSName too; other TLS stacks match the iPAddress entry.
 */
static int san_add_ip_as_dns(struct opts *o)
{
	for (size_t i = 0, n = o->nsan; i < n; i++) {
		struct san v = { 0 };

		if (o->san[i].is_ip && o->san[i].len == 4 &&
		    inet_ntop(AF_INET, o->san[i].ip, v.dns, sizeof v.dns) &&
		    san_push(o, &v) != 0)
			return -E2BIG;
	}
	return 0;
}

/* "YYYYMMDDhhmmss" (UTC) -> time_t, only if it names a real instant. */
static int parse_time(const char *s, time_t *out)
{
	struct tm tm = { 0 }, back;
	time_t t;

	if (strlen(s) != 14 || strspn(s, "0123456789") != 14)
		return -EINVAL;
	if (sscanf(s, "%4d%2d%2d%2d%2d%2d", &tm.tm_year, &tm.tm_mon,
		   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
		return -EINVAL;
	if (tm.tm_year < 1970)
		return -EINVAL;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	back = tm;
	t = timegm(&tm);
	/* timegm normalises 20240230 to March 1st: refuse what moved */
	if (t == (time_t)-1 || tm.tm_year != back.tm_year ||
	    tm.tm_mon != back.tm_mon || tm.tm_mday != back.tm_mday ||
	    tm.tm_hour != back.tm_hour || tm.tm_min != back.tm_min ||
	    tm.tm_sec != back.tm_sec)
		return -EINVAL;
	*out = t;
	return 0;
}

static int format_time(time_t t, char out[15])
{
	struct tm tm;

	if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999)
		return -ERANGE;
	return strftime(out, 15, "%Y%m%d%H%M%S", &tm) == 14 ? 0 : -ERANGE;
}

/*
 * The validity of a certificate: [now - BACKDATE_SECS, + days], with
 * --not-before / --not-after overriding either end; given only one end,
 * the other is days away from it.
 */
static int validity(const struct opts *o, long days, int is_ca,
		    char nb[15], char na[15])
{
	time_t from = time(NULL) - BACKDATE_SECS, to;
	time_t span = (time_t)days * 86400;

	if (!is_ca && o->not_before && parse_time(o->not_before, &from))
		return -EINVAL;
	to = from + span;
	if (!is_ca && o->not_after) {
		if (parse_time(o->not_after, &to))
			return -EINVAL;
		if (!o->not_before)
			from = to - span;
	}
	if (to <= from)
		return -EINVAL;
	if (format_time(from, nb) || format_time(to, na))
		return -ERANGE;
	return 0;
}

/* ---- keys and files ---- */

static int gen_key(mbedtls_pk_context *pk)
{
	int ret;

	mbedtls_pk_init(pk);
	ret = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
	if (ret == 0)
		ret = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk),
					  mbedtls_ctr_drbg_random, &g_drbg);
	if (ret != 0) {
		fprintf(stderr, PROG ": cannot generate a key: %s\n", tls_err(ret));
		mbedtls_pk_free(pk);
	}
	return ret;
}

static int join(char out[PATH_MAX], const char *dir, const char *name,
		const char *ext)
{
	int n = snprintf(out, PATH_MAX, "%s/%s%s", dir, name, ext);

	if (n < 0 || n >= PATH_MAX) {
		fprintf(stderr, PROG ": path too long: %s/%s%s\n", dir, name, ext);
		return -ENAMETOOLONG;
	}
	return 0;
}

/*
 * Writes buf to path with mode, only if path does not exist. The bytes go to
 * a temporary file in the same directory first and are fsync()ed; link()
 * then gives them their name atomically, and fails with EEXIST rather than
 * replace anything, even if another run raced us to the name.
 */
static int write_file(const char *path, const void *buf, size_t len,
		      mode_t mode)
{
	char tmp[PATH_MAX];
	const char *slash = strrchr(path, '/');
	int fd, ret = 0, n;

	n = snprintf(tmp, sizeof tmp, "%.*s/.%s.XXXXXX", (int)(slash - path),
		     path, slash + 1);
	if (n < 0 || n >= (int)sizeof tmp)
		return -ENAMETOOLONG;
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		fprintf(stderr, PROG ": cannot create a file in %.*s: %s\n",
			(int)(slash - path), path, strerror(errno));
		return ret;
	}
	if (fchmod(fd, mode) != 0)
		ret = -errno;
	for (size_t off = 0; ret == 0 && off < len;) {
		ssize_t w = write(fd, (const char *)buf + off, len - off);

		if (w < 0 && errno != EINTR)
			ret = -errno;
		else if (w == 0)
			ret = -EIO;
		else if (w > 0)
			off += (size_t)w;
	}
	if (ret == 0 && fsync(fd) != 0)
		ret = -errno;
	if (close(fd) != 0 && ret == 0)
		ret = -errno;
	if (ret == 0 && link(tmp, path) != 0)
		ret = -errno;
	unlink(tmp);
	if (ret == -EEXIST) {
		fprintf(stderr, PROG ": %s already exists\n", path);
	} else if (ret != 0) {
		fprintf(stderr, PROG ": cannot write %s: %s\n", path, strerror(-ret));
	} else if (g_created.n < sizeof g_created.path / sizeof g_created.path[0]) {
		snprintf(g_created.path[g_created.n++], PATH_MAX, "%s", path);
	}
	return ret;
}

/* Makes the new names in dir durable (the files were fsync()ed). */
static int sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret = 0;

	if (fd < 0 || fsync(fd) != 0) {
		ret = -errno;
		fprintf(stderr, PROG ": cannot sync %s: %s\n", dir, strerror(errno));
	}
	if (fd >= 0)
		close(fd);
	return ret;
}

/* Removes what this run wrote, so that a failed command changes nothing. */
static void undo_created(void)
{
	while (g_created.n > 0)
		unlink(g_created.path[--g_created.n]);
}

static int write_key(const char *dir, const char *name, mbedtls_pk_context *pk)
{
	unsigned char pem[KEY_BUF];
	char path[PATH_MAX];
	int ret = mbedtls_pk_write_key_pem(pk, pem, sizeof pem);

	if (ret != 0) {
		fprintf(stderr, PROG ": cannot encode a key: %s\n", tls_err(ret));
		return ret;
	}
	ret = join(path, dir, name, ".key");
	if (ret == 0)
		ret = write_file(path, pem, strlen((char *)pem), 0600);
	mbedtls_platform_zeroize(pem, sizeof pem);
	return ret;
}

/* ---- extensions mbedtls 2.28 cannot write ---- */

/* Adds ret (a byte count or a negative error) to *len; returns the error. */
static int asn1_add(size_t *len, int ret)
{
	if (ret < 0)
		return ret;
	*len += (size_t)ret;
	return 0;
}

/*
 * subjectAltName ::= GeneralNames ::= SEQUENCE OF GeneralName, where
 * dNSName is [2] IA5String and iPAddress is [7] OCTET STRING, both IMPLICIT
 * (RFC 5280 4.2.1.6). DER is written backwards by mbedtls's asn1write, which
 * also encodes the lengths (long form past 127 bytes), so the names are
 * taken in reverse to keep their order.
 */
static int ext_san(mbedtls_x509write_cert *crt, const struct san *san, size_t n)
{
	unsigned char buf[MAX_SAN * 260 + 8];
	unsigned char *p = buf + sizeof buf;
	size_t len = 0;
	int ret = 0;

	for (size_t i = n; i-- > 0 && ret == 0;) {
		const struct san *s = &san[i];

		if (s->is_ip) {
			size_t l = 0;

			ret = asn1_add(&l, mbedtls_asn1_write_raw_buffer(&p, buf, s->ip, s->len));
			if (ret == 0)
				ret = asn1_add(&l, mbedtls_asn1_write_len(&p, buf, l));
			if (ret == 0)
				ret = asn1_add(&l, mbedtls_asn1_write_tag(&p, buf,
					MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7));
			len += l;
		} else {
			ret = asn1_add(&len, mbedtls_asn1_write_tagged_string(&p, buf,
				MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2, s->dns, strlen(s->dns)));
		}
	}
	if (ret == 0)
		ret = asn1_add(&len, mbedtls_asn1_write_len(&p, buf, len));
	if (ret == 0)
		ret = asn1_add(&len, mbedtls_asn1_write_tag(&p, buf,
			MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
	/* not critical: the subject is not empty (RFC 5280 4.2.1.6) */
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_extension(crt,
			MBEDTLS_OID_SUBJECT_ALT_NAME,
			MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, p, len);
	return ret;
}

/* extKeyUsage ::= SEQUENCE SIZE (1..MAX) OF KeyPurposeId (one here). */
static int ext_eku(mbedtls_x509write_cert *crt, const char *oid, size_t oid_len)
{
	unsigned char buf[32];
	unsigned char *p = buf + sizeof buf;
	size_t len = 0;
	int ret;

	ret = asn1_add(&len, mbedtls_asn1_write_oid(&p, buf, oid, oid_len));
	if (ret == 0)
		ret = asn1_add(&len, mbedtls_asn1_write_len(&p, buf, len));
	if (ret == 0)
		ret = asn1_add(&len, mbedtls_asn1_write_tag(&p, buf,
			MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_extension(crt,
			MBEDTLS_OID_EXTENDED_KEY_USAGE,
			MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0, p, len);
	return ret;
}

/* ---- certificates ---- */

enum cert_kind { CERT_CA, CERT_SERVER, CERT_CLIENT };

struct cert_req {
	enum cert_kind kind;
	const char *cn;
	const char *issuer;          /* issuer DN as text, e.g. "CN=..." */
	mbedtls_pk_context *key;      /* the subject's key, borrowed */
	mbedtls_pk_context *ca_key;   /* the signer's key, borrowed */
	const char *not_before, *not_after;
	const struct san *san;
	size_t nsan;
};

/* A random positive serial of 16 bytes (RFC 5280: at most 20 octets). */
static int random_serial(mbedtls_mpi *serial)
{
	unsigned char b[16];
	int ret = mbedtls_ctr_drbg_random(&g_drbg, b, sizeof b);

	b[0] = (b[0] & 0x7f) | 0x40; /* positive, and always 16 bytes long */
	if (ret == 0)
		ret = mbedtls_mpi_read_binary(serial, b, sizeof b);
	return ret;
}

/* Builds and signs one certificate into pem (NUL-terminated). */
static int make_cert(const struct cert_req *r, unsigned char *pem, size_t size)
{
	mbedtls_x509write_cert crt;
	mbedtls_mpi serial;
	char subject[8 + CN_MAX_LEN];
	unsigned int ku;
	int ret;

	mbedtls_x509write_crt_init(&crt);
	mbedtls_mpi_init(&serial);
	snprintf(subject, sizeof subject, "CN=%s", r->cn);
	mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
	mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
	mbedtls_x509write_crt_set_subject_key(&crt, r->key);
	mbedtls_x509write_crt_set_issuer_key(&crt, r->ca_key);
	ret = random_serial(&serial);
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_serial(&crt, &serial);
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_validity(&crt, r->not_before, r->not_after);
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_subject_name(&crt, subject);
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_issuer_name(&crt, r->issuer);
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_basic_constraints(&crt,
			r->kind == CERT_CA, r->kind == CERT_CA ? 0 : -1);
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_subject_key_identifier(&crt);
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_authority_key_identifier(&crt);
	switch (r->kind) {
	case CERT_CA:
		ku = MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN;
		break;
	case CERT_SERVER:
		/* keyAgreement too, for static-ECDH suites some peers offer */
		ku = MBEDTLS_X509_KU_DIGITAL_SIGNATURE | MBEDTLS_X509_KU_KEY_AGREEMENT;
		break;
	default:
		ku = MBEDTLS_X509_KU_DIGITAL_SIGNATURE;
		break;
	}
	if (ret == 0)
		ret = mbedtls_x509write_crt_set_key_usage(&crt, ku);
	if (ret == 0 && r->kind == CERT_SERVER)
		ret = ext_eku(&crt, MBEDTLS_OID_SERVER_AUTH,
			      MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH));
	if (ret == 0 && r->kind == CERT_CLIENT)
		ret = ext_eku(&crt, MBEDTLS_OID_CLIENT_AUTH,
			      MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH));
	if (ret == 0 && r->nsan > 0)
		ret = ext_san(&crt, r->san, r->nsan);
	if (ret == 0)
		ret = mbedtls_x509write_crt_pem(&crt, pem, size,
						mbedtls_ctr_drbg_random, &g_drbg);
	if (ret != 0)
		fprintf(stderr, PROG ": cannot make the certificate for %s: %s\n",
			r->cn, tls_err(ret));
	mbedtls_mpi_free(&serial);
	mbedtls_x509write_crt_free(&crt);
	return ret;
}

/*
 * Parses pem back with mbedtls and checks it the way the coordinator and the
 * agents will: it chains to ca (or is ca), carries the key usage and the
 * extended key usage of its kind. Only the validity dates are not held
 * against it, since tests ask for expired certificates on purpose.
 */
static int check_cert(const unsigned char *pem, enum cert_kind kind,
		      mbedtls_x509_crt *ca)
{
	mbedtls_x509_crt crt;
	uint32_t flags = 0;
	char info[256];
	int ret;

	mbedtls_x509_crt_init(&crt);
	ret = mbedtls_x509_crt_parse(&crt, pem, strlen((const char *)pem) + 1);
	if (ret == 0) {
		ret = mbedtls_x509_crt_verify(&crt, ca ? ca : &crt, NULL, NULL,
					      &flags, NULL, NULL);
		flags &= ~(uint32_t)(MBEDTLS_X509_BADCERT_EXPIRED |
				     MBEDTLS_X509_BADCERT_FUTURE);
		if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && flags == 0)
			ret = 0;
	}
	if (ret == 0 && kind == CERT_CA &&
	    mbedtls_x509_crt_check_key_usage(&crt, MBEDTLS_X509_KU_KEY_CERT_SIGN))
		ret = MBEDTLS_ERR_X509_BAD_INPUT_DATA;
	if (ret == 0 && kind != CERT_CA &&
	    (mbedtls_x509_crt_check_key_usage(&crt, MBEDTLS_X509_KU_DIGITAL_SIGNATURE) ||
	     mbedtls_x509_crt_check_extended_key_usage(&crt,
		kind == CERT_SERVER ? MBEDTLS_OID_SERVER_AUTH : MBEDTLS_OID_CLIENT_AUTH,
		MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH))))
		ret = MBEDTLS_ERR_X509_BAD_INPUT_DATA;
	if (ret != 0) {
		mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
		fprintf(stderr, PROG ": self-check of a new certificate failed: %s%s%s\n",
			tls_err(ret), flags ? "; " : "", flags ? info : "");
	}
	mbedtls_x509_crt_free(&crt);
	return ret;
}

static int write_cert(const char *dir, const char *name, const struct cert_req *r,
		      mbedtls_x509_crt *ca)
{
	static unsigned char pem[PEM_BUF];
	char path[PATH_MAX];
	int ret;

	ret = make_cert(r, pem, sizeof pem);
	if (ret == 0)
		ret = check_cert(pem, r->kind, ca);
	if (ret == 0)
		ret = join(path, dir, name, ".crt");
	if (ret == 0)
		ret = write_file(path, pem, strlen((char *)pem), 0644);
	return ret;
}

/* ---- commands ---- */

static int exists(const char *dir, const char *name, const char *ext)
{
	char path[PATH_MAX];
	struct stat st;

	if (join(path, dir, name, ext) != 0)
		return 1; /* cannot be created either */
	return lstat(path, &st) == 0 || errno != ENOENT;
}

/*
 * mkdir -p; the last component 0700 (parents: 0755 less the umask). *made
 * tells whether DIR itself is new, so that a failed init can remove it.
 */
static int make_dir(const char *dir, int *made)
{
	char buf[PATH_MAX];
	struct stat st;
	size_t n = strlen(dir);

	if (n == 0 || n >= sizeof buf)
		return -ENAMETOOLONG;
	memcpy(buf, dir, n + 1);
	for (char *s = buf + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(buf, 0755) != 0 && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	*made = mkdir(dir, 0700) == 0;
	if (!*made) {
		if (errno != EEXIST)
			return -errno;
		if (stat(dir, &st) != 0)
			return -errno;
		if (!S_ISDIR(st.st_mode))
			return -ENOTDIR;
		if (st.st_mode & 077)
			fprintf(stderr, PROG ": warning: %s is open to other users "
				"(mode %04o); keys there stay 0600\n", dir,
				(unsigned)(st.st_mode & 07777));
	}
	return 0;
}

static int cmd_init(const char *dir, struct opts *o)
{
	static const char *const files[] = { "ca.crt", "ca.key",
		"coordinator.crt", "coordinator.key" };
	mbedtls_pk_context ca_key, key;
	mbedtls_x509_crt ca;
	char path[PATH_MAX], host[256] = "", issuer[8 + CN_MAX_LEN];
	char ca_nb[15], ca_na[15], nb[15], na[15];
	struct cert_req ca_req, req;
	int ret, made_dir = 0;

	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		if (exists(dir, files[i], "")) {
			fprintf(stderr, PROG ": %s already holds a CA or a "
				"coordinator certificate (%s); nothing changed\n",
				dir, files[i]);
			return EXIT_FAIL;
		}
	}
	/* the coordinator's names: localhost, this host, loopback, --san */
	ret = san_add(o, "localhost");
	if (ret == 0 && gethostname(host, sizeof host - 1) == 0 && valid_dns(host))
		ret = san_add(o, host);
	if (ret == 0)
		ret = san_add(o, "127.0.0.1");
	if (ret == 0)
		ret = san_add(o, "::1");
	if (ret == 0)
		ret = san_add_ip_as_dns(o);
	if (ret != 0) {
		fprintf(stderr, PROG ": too many subject alternative names "
			"(at most %d in all)\n", MAX_SAN);
		return EXIT_USAGE;
	}
	if (validity(o, o->ca_days, 1, ca_nb, ca_na) != 0 ||
	    validity(o, o->days, 0, nb, na) != 0) {
		fprintf(stderr, PROG ": the validity ends after the year 9999\n");
		return EXIT_USAGE;
	}
	ret = make_dir(dir, &made_dir);
	if (ret != 0) {
		fprintf(stderr, PROG ": cannot create %s: %s\n", dir, strerror(-ret));
		return EXIT_FAIL;
	}

	mbedtls_x509_crt_init(&ca);
	mbedtls_pk_init(&key);
	snprintf(issuer, sizeof issuer, "CN=%s", o->ca_cn);
	ret = gen_key(&ca_key);
	if (ret != 0) {
		if (made_dir)
			rmdir(dir);
		return EXIT_FAIL;
	}
	ca_req = (struct cert_req){ .kind = CERT_CA, .cn = o->ca_cn,
				    .issuer = issuer, .key = &ca_key,
				    .ca_key = &ca_key, .not_before = ca_nb,
				    .not_after = ca_na };
	req = (struct cert_req){ .kind = CERT_SERVER, .cn = o->cn,
				 .issuer = issuer, .key = &key, .ca_key = &ca_key,
				 .not_before = nb, .not_after = na,
				 .san = o->san, .nsan = o->nsan };
	ret = gen_key(&key);
	/* keys first: a certificate on disk always has its key beside it */
	if (ret == 0)
		ret = write_key(dir, "ca", &ca_key);
	if (ret == 0)
		ret = write_cert(dir, "ca", &ca_req, NULL);
	/* the coordinator's certificate is checked against ca.crt as written */
	if (ret == 0)
		ret = join(path, dir, "ca", ".crt");
	if (ret == 0 && (ret = mbedtls_x509_crt_parse_file(&ca, path)) != 0)
		fprintf(stderr, PROG ": cannot read back %s: %s\n", path, tls_err(ret));
	if (ret == 0)
		ret = write_key(dir, "coordinator", &key);
	if (ret == 0)
		ret = write_cert(dir, "coordinator", &req, &ca);
	if (ret == 0 && sync_dir(dir) != 0)
		ret = -EIO;
	if (ret != 0) {
		undo_created();
		if (made_dir)
			rmdir(dir);
	} else {
		printf("%s: fleet CA \"%s\" and coordinator certificate \"%s\" "
		       "(valid %s to %s UTC) written\n", dir, o->ca_cn, o->cn, nb, na);
	}
	mbedtls_x509_crt_free(&ca);
	mbedtls_pk_free(&key);
	mbedtls_pk_free(&ca_key);
	return ret == 0 ? EXIT_OK : EXIT_FAIL;
}

static int cmd_issue(const char *dir, const char *name, const struct opts *o)
{
	mbedtls_pk_context ca_key, key;
	mbedtls_x509_crt ca;
	char path[PATH_MAX], issuer[512], nb[15], na[15];
	struct cert_req r;
	int ret;

	if (exists(dir, name, ".crt") || exists(dir, name, ".key")) {
		fprintf(stderr, PROG ": %s/%s.crt or %s.key already exists; "
			"nothing changed\n", dir, name, name);
		return EXIT_FAIL;
	}
	if (validity(o, o->days, 0, nb, na) != 0) {
		fprintf(stderr, PROG ": the validity ends after the year 9999\n");
		return EXIT_USAGE;
	}
	mbedtls_x509_crt_init(&ca);
	mbedtls_pk_init(&ca_key);
	ret = join(path, dir, "ca", ".crt");
	if (ret == 0 && (ret = mbedtls_x509_crt_parse_file(&ca, path)) != 0)
		fprintf(stderr, PROG ": cannot read %s (run " PROG " init %s "
			"first?): %s\n", path, dir, tls_err(ret));
	if (ret == 0)
		ret = join(path, dir, "ca", ".key");
	if (ret == 0 && (ret = mbedtls_pk_parse_keyfile(&ca_key, path, NULL)) != 0)
		fprintf(stderr, PROG ": cannot read %s: %s\n", path, tls_err(ret));
	if (ret == 0 && (ret = mbedtls_pk_check_pair(&ca.pk, &ca_key)) != 0)
		fprintf(stderr, PROG ": %s/ca.key is not the key of %s/ca.crt\n",
			dir, dir);
	if (ret == 0 && !ca.ca_istrue) {
		fprintf(stderr, PROG ": %s/ca.crt is not a CA certificate\n", dir);
		ret = -EINVAL;
	}
	if (ret == 0 && mbedtls_x509_dn_gets(issuer, sizeof issuer, &ca.subject) < 0) {
		fprintf(stderr, PROG ": the subject of %s/ca.crt is too long\n", dir);
		ret = -EINVAL;
	}
	if (ret != 0) {
		mbedtls_pk_free(&ca_key);
		mbedtls_x509_crt_free(&ca);
		return EXIT_FAIL;
	}

	ret = gen_key(&key);
	if (ret == 0) {
		r = (struct cert_req){ .kind = CERT_CLIENT, .cn = name,
				       .issuer = issuer, .key = &key,
				       .ca_key = &ca_key, .not_before = nb,
				       .not_after = na };
		ret = write_key(dir, name, &key);
		if (ret == 0)
			ret = write_cert(dir, name, &r, &ca);
		if (ret == 0 && sync_dir(dir) != 0)
			ret = -EIO;
		if (ret != 0)
			undo_created();
		else
			printf("%s/%s.crt: client certificate for \"%s\", valid "
			       "%s to %s UTC\n", dir, name, name, nb, na);
		mbedtls_pk_free(&key);
	}
	mbedtls_pk_free(&ca_key);
	mbedtls_x509_crt_free(&ca);
	return ret == 0 ? EXIT_OK : EXIT_FAIL;
}

static int parse_days(const char *s, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 1 || v > MAX_DAYS)
		return -EINVAL;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "days", required_argument, NULL, 'd' },
		{ "ca-days", required_argument, NULL, 'D' },
		{ "not-before", required_argument, NULL, 'b' },
		{ "not-after", required_argument, NULL, 'a' },
		{ "cn", required_argument, NULL, 'n' },
		{ "ca-cn", required_argument, NULL, 'N' },
		{ "san", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	static struct opts o = { .ca_cn = CA_CN_DEFAULT, .cn = COORD_CN_DEFAULT,
				 .days = LEAF_DAYS_DEFAULT,
				 .ca_days = CA_DAYS_DEFAULT };
	static const char pers[] = "edgecoord-pki";
	const char *cmd;
	time_t t;
	int c, ret;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case 'd':
			if (parse_days(optarg, &o.days))
				return bad_usage("--days: not a number of days "
						 "in 1..36500: %s", optarg);
			break;
		case 'D':
			if (parse_days(optarg, &o.ca_days))
				return bad_usage("--ca-days: not a number of days "
						 "in 1..36500: %s", optarg);
			o.init_only = 1;
			break;
		case 'b':
		case 'a':
			if (parse_time(optarg, &t))
				return bad_usage("not a time YYYYMMDDhhmmss (UTC): %s",
						 optarg);
			*(c == 'b' ? &o.not_before : &o.not_after) = optarg;
			break;
		case 'n':
		case 'N':
			if (!valid_cn(optarg))
				return bad_usage("a CN is 1..64 printable characters "
						 "without , \\ + \": %s", optarg);
			*(c == 'n' ? &o.cn : &o.ca_cn) = optarg;
			o.init_only = 1;
			break;
		case 's':
			ret = san_add(&o, optarg);
			if (ret == -E2BIG)
				return bad_usage("too many --san: %s", optarg);
			if (ret)
				return bad_usage("--san: not a DNS name or an IP "
						 "address: %s", optarg);
			o.init_only = 1;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		case 'V':
			printf(PROG " " EC_VERSION "\n");
			return EXIT_OK;
		case ':':
			return bad_usage("option needs a value: %s", argv[optind - 1]);
		default:
			return bad_usage("unknown option: %s", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return bad_usage("%s", "no command given");
	cmd = argv[optind++];
	if (strcmp(cmd, "init") == 0) {
		if (argc - optind != 1)
			return bad_usage("%s", "init takes one argument: DIR");
	} else if (strcmp(cmd, "issue") == 0) {
		if (argc - optind != 2)
			return bad_usage("%s", "issue takes two arguments: DIR NAME");
		if (!valid_agent_id(argv[optind + 1]))
			return bad_usage("NAME must match [A-Za-z0-9._-]{1,100}: %s",
					 argv[optind + 1]);
		if (o.init_only)
			return bad_usage("%s", "--cn, --ca-cn, --ca-days and --san "
					 "apply to init only");
	} else {
		return bad_usage("unknown command: %s", cmd);
	}
	if (o.not_before && o.not_after && strcmp(o.not_after, o.not_before) <= 0)
		return bad_usage("--not-after is not after --not-before: %s",
				 o.not_after);
	if (argv[optind][0] == '\0')
		return bad_usage("%s", "DIR is empty");

	mbedtls_entropy_init(&g_entropy);
	mbedtls_ctr_drbg_init(&g_drbg);
	ret = mbedtls_ctr_drbg_seed(&g_drbg, mbedtls_entropy_func, &g_entropy,
				    (const unsigned char *)pers, sizeof pers - 1);
	if (ret != 0) {
		fprintf(stderr, PROG ": cannot seed the random generator: %s\n",
			tls_err(ret));
		ret = EXIT_FAIL;
	} else if (strcmp(cmd, "init") == 0) {
		ret = cmd_init(argv[optind], &o);
	} else {
		ret = cmd_issue(argv[optind], argv[optind + 1], &o);
	}
	mbedtls_ctr_drbg_free(&g_drbg);
	mbedtls_entropy_free(&g_entropy);
	return ret;
}
