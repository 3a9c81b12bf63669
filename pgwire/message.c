/* message.c — decoders for the backend messages the router reads before relaying. */
#include <string.h>

#include "pgwire/pgwire.h"

int32_t pgw_auth_code(const uint8_t *body, uint32_t len)
{
	if (len < 4)
		return -1;
	uint32_t code = pgw_get32(body);
	return code > 0x7fffffffu ? -1 : (int32_t)code;
}

int pgw_backend_key(const uint8_t *body, uint32_t len, uint32_t *pid, const uint8_t **key,
		    uint32_t *key_len)
{
	if (len < 8 || len > 4 + PGW_CANCEL_KEY_MAX)
		return PGW_MALFORMED;
	*pid = pgw_get32(body);
	*key = body + 4;
	*key_len = len - 4;
	return 0;
}

int pgw_parameter_status(const uint8_t *body, uint32_t len, const char **name, const char **value)
{
	const uint8_t *end = body + len;
	const uint8_t *nul = memchr(body, 0, len);
	if (!nul || nul + 1 >= end)
		return PGW_MALFORMED;
	const uint8_t *v = nul + 1;
	const uint8_t *nul2 = memchr(v, 0, (size_t)(end - v));
	if (!nul2 || nul2 != end - 1)
		return PGW_MALFORMED;
	*name = (const char *)body;
	*value = (const char *)v;
	return 0;
}

int pgw_data_row(const uint8_t *body, uint32_t len, unsigned max, const uint8_t **vals,
		 int32_t *lens)
{
	if (len < 2)
		return PGW_MALFORMED;
	unsigned n = (unsigned)body[0] << 8 | body[1];
	uint32_t o = 2;
	for (unsigned i = 0; i < n; i++) {
		if (len - o < 4)
			return PGW_MALFORMED;
		int32_t l = (int32_t)pgw_get32(body + o);
		o += 4;
		if (l < -1 || (l > 0 && (uint32_t)l > len - o))
			return PGW_MALFORMED;
		if (i < max) {
			vals[i] = body + o;
			lens[i] = l;
		}
		if (l > 0)
			o += (uint32_t)l;
	}
	return o == len ? (int)n : PGW_MALFORMED;
}

int pgw_ready_status(const uint8_t *body, uint32_t len)
{
	if (len != 1 || (body[0] != 'I' && body[0] != 'T' && body[0] != 'E'))
		return -1;
	return body[0];
}

int pgw_error_parse(const uint8_t *body, uint32_t len, struct pgw_error_fields *out)
{
	const uint8_t *p = body, *end = body + len;
	memset(out, 0, sizeof(*out));
	while (p < end && *p != 0) {
		uint8_t code = *p++;
		const uint8_t *nul = memchr(p, 0, (size_t)(end - p));
		if (!nul)
			return PGW_MALFORMED;
		const char *s = (const char *)p;
		switch (code) {
		case 'V': out->severity = s; break;
		case 'S': if (!out->severity) out->severity = s; break;
		case 'C': out->sqlstate = s; break;
		case 'M': out->message = s; break;
		case 'D': out->detail = s; break;
		}
		p = nul + 1;
	}
	if (p != end - 1)
		return PGW_MALFORMED;
	return 0;
}

int pgw_sasl_drop_mechanism(const uint8_t *msg, size_t len, const char *mech, uint8_t *out,
			    size_t cap)
{
	if (len < PGW_HEADER_LEN + 4 || msg[0] != PGW_MSG_AUTH || pgw_get32(msg + 1) != len - 1 ||
	    pgw_get32(msg + PGW_HEADER_LEN) != PGW_AUTH_SASL || cap < PGW_HEADER_LEN + 4)
		return PGW_MALFORMED;
	size_t o = PGW_HEADER_LEN + 4, mlen = strlen(mech) + 1;
	memcpy(out, msg, o);
	const uint8_t *p = msg + o, *end = msg + len;
	for (;;) {
		const uint8_t *nul = memchr(p, 0, (size_t)(end - p));
		if (!nul)
			return PGW_MALFORMED;
		size_t n = (size_t)(nul - p) + 1;
		bool last = n == 1;
		if (last && nul + 1 != end)
			return PGW_MALFORMED; /* bytes after the list's end */
		if (last || n != mlen || memcmp(p, mech, n) != 0) {
			if (o + n > cap)
				return PGW_MALFORMED;
			memcpy(out + o, p, n);
			o += n;
		}
		if (last)
			break;
		p = nul + 1;
	}
	pgw_put32(out + 1, (uint32_t)(o - 1));
	return (int)o;
}
