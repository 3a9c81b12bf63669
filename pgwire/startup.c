/*
 * startup.c — the untyped first packet: StartupMessage (3.0, 3.2), SSLRequest,
 * GSSENCRequest and CancelRequest (4-byte key in 3.0, up to 256 bytes in 3.2).
 */
#include <string.h>
#include <strings.h>

#include "pgwire/pgwire.h"

int pgw_first_len(const uint8_t *p, size_t n)
{
	if (n < 4)
		return PGW_NEED_MORE;
	uint32_t len = pgw_get32(p);
	if (len < 8 || len > PGW_STARTUP_MAX)
		return PGW_BAD_LENGTH;
	return (int)len;
}

/* The string at p (bounded by end) is NUL-terminated inside the bound. Returns the
 * position after its NUL, or NULL. */
static const uint8_t *cstring(const uint8_t *p, const uint8_t *end)
{
	const uint8_t *nul = memchr(p, 0, (size_t)(end - p));
	return nul ? nul + 1 : NULL;
}

/* PostgreSQL's parse_bool: case-insensitive prefixes of true/false/yes/no,
 * on/off (two letters at least), 1/0. 1 true, 0 false, -1 not a boolean. */
static int pg_bool(const char *v)
{
	size_t n = strlen(v);
	if (n == 0)
		return -1;
	size_t m = n > 2 ? n : 2;
	switch (v[0]) {
	case 't': case 'T': return strncasecmp(v, "true", n) == 0 && n <= 4 ? 1 : -1;
	case 'f': case 'F': return strncasecmp(v, "false", n) == 0 && n <= 5 ? 0 : -1;
	case 'y': case 'Y': return strncasecmp(v, "yes", n) == 0 && n <= 3 ? 1 : -1;
	case 'n': case 'N': return strncasecmp(v, "no", n) == 0 && n <= 2 ? 0 : -1;
	case 'o': case 'O':
		if (n <= 2 && strncasecmp(v, "on", m) == 0)
			return 1;
		return n <= 3 && strncasecmp(v, "off", m) == 0 ? 0 : -1;
	case '1': return n == 1 ? 1 : -1;
	case '0': return n == 1 ? 0 : -1;
	}
	return -1;
}

static int parse_startup(const uint8_t *p, size_t n, struct pgw_first *out)
{
	const uint8_t *q = p + 8, *end = p + n;

	/* key\0value\0 ... \0 — the final NUL must be the packet's last byte */
	while (q < end && *q != 0) {
		const uint8_t *name = q, *value;
		if (!(value = cstring(q, end)) || value >= end)
			return PGW_MALFORMED;
		if (!(q = cstring(value, end)))
			return PGW_MALFORMED;
		const char *k = (const char *)name, *v = (const char *)value;
		if (strcmp(k, "user") == 0)
			out->user = v;
		else if (strcmp(k, "database") == 0)
			out->database = v;
		else if (strcmp(k, "application_name") == 0)
			out->application_name = v;
		else if (strcmp(k, "replication") == 0) {
			/* as PostgreSQL: a boolean, or "database" (logical replication) */
			int b = strcmp(v, "database") == 0 ? 1 : pg_bool(v);
			if (b < 0) {
				out->bad_value = v;
				return PGW_BAD_REPLICATION;
			}
			out->replication = b == 1;
		}
		if (out->nparams == PGW_MAX_PARAMS)
			return PGW_TOO_MANY_PARAMS;
		out->params[out->nparams++] = (struct pgw_param){ k, v };
	}
	if (q != end - 1)
		return PGW_MALFORMED;
	if (!out->user || !*out->user)
		return PGW_NO_USER;
	if (!out->database || !*out->database)
		out->database = out->user;
	return (int)n;
}

int pgw_first_parse(const uint8_t *p, size_t n, struct pgw_first *out)
{
	int len = pgw_first_len(p, n);
	if (len <= 0)
		return len == PGW_NEED_MORE ? PGW_MALFORMED : len;
	if ((size_t)len != n)
		return PGW_MALFORMED;

	memset(out, 0, sizeof(*out));
	out->len = (uint32_t)len;
	uint32_t code = pgw_get32(p + 4);
	switch (code) {
	case PGW_CODE_SSL:
	case PGW_CODE_GSSENC:
		/* PostgreSQL reads the code and ignores whatever follows it */
		out->kind = code == PGW_CODE_SSL ? PGW_FIRST_SSL : PGW_FIRST_GSSENC;
		return len;
	case PGW_CODE_CANCEL:
		/* len(4) code(4) pid(4) key(4..256) */
		if (n < 16 || n > 12 + PGW_CANCEL_KEY_MAX)
			return PGW_BAD_CANCEL;
		out->kind = PGW_FIRST_CANCEL;
		out->cancel_pid = pgw_get32(p + 8);
		out->cancel_key = p + 12;
		out->cancel_key_len = (uint32_t)(n - 12);
		return len;
	}
	/* A StartupMessage: PostgreSQL serves major version 3, minors are negotiated
	 * down by the server (NegotiateProtocolVersion), so any 3.x passes through. */
	if (PGW_PROTO_MAJOR(code) != 3)
		return PGW_BAD_VERSION;
	out->kind = PGW_FIRST_STARTUP;
	out->version = code;
	return parse_startup(p, n, out);
}
