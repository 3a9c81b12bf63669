/* auth.c — authentication messages pgrouter builds and reads, toward clients and servers. */
#include <string.h>

#include "pgwire/pgwire.h"

size_t pgw_build_auth(uint8_t *buf, size_t cap, uint32_t code, const void *data, size_t len)
{
	if (!pgw_put_header(buf, cap, PGW_MSG_AUTH, 4 + len))
		return 0;
	pgw_put32(buf + PGW_HEADER_LEN, code);
	if (len)
		memcpy(buf + PGW_HEADER_LEN + 4, data, len);
	return PGW_HEADER_LEN + 4 + len;
}

size_t pgw_build_password(uint8_t *buf, size_t cap, const void *data, size_t len)
{
	if (!pgw_put_header(buf, cap, PGW_MSG_PASSWORD, len))
		return 0;
	if (len)
		memcpy(buf + PGW_HEADER_LEN, data, len);
	return PGW_HEADER_LEN + len;
}

size_t pgw_build_sasl_initial(uint8_t *buf, size_t cap, const char *mech, const void *data,
			      size_t len)
{
	size_t ml = strlen(mech) + 1;
	if (!pgw_put_header(buf, cap, PGW_MSG_PASSWORD, ml + 4 + len))
		return 0;
	memcpy(buf + PGW_HEADER_LEN, mech, ml);
	pgw_put32(buf + PGW_HEADER_LEN + ml, (uint32_t)len);
	if (len)
		memcpy(buf + PGW_HEADER_LEN + ml + 4, data, len);
	return PGW_HEADER_LEN + ml + 4 + len;
}

size_t pgw_build_backend_key(uint8_t *buf, size_t cap, uint32_t pid, const uint8_t *key,
			     size_t key_len)
{
	if (key_len < 4 || key_len > PGW_CANCEL_KEY_MAX ||
	    !pgw_put_header(buf, cap, PGW_MSG_BACKEND_KEY, 4 + key_len))
		return 0;
	pgw_put32(buf + PGW_HEADER_LEN, pid);
	memcpy(buf + PGW_HEADER_LEN + 4, key, key_len);
	return PGW_HEADER_LEN + 4 + key_len;
}

size_t pgw_build_parameter_status(uint8_t *buf, size_t cap, const char *name, const char *value)
{
	size_t nl = strlen(name) + 1, vl = strlen(value) + 1;
	if (!pgw_put_header(buf, cap, PGW_MSG_PARAMETER_STATUS, nl + vl))
		return 0;
	memcpy(buf + PGW_HEADER_LEN, name, nl);
	memcpy(buf + PGW_HEADER_LEN + nl, value, vl);
	return PGW_HEADER_LEN + nl + vl;
}

int pgw_sasl_initial_parse(const uint8_t *body, uint32_t len, const char **mech,
			   const uint8_t **data, uint32_t *data_len)
{
	const uint8_t *nul = memchr(body, 0, len);
	if (!nul || (size_t)(body + len - nul - 1) < 4)
		return PGW_MALFORMED;
	const uint8_t *p = nul + 1;
	uint32_t n = pgw_get32(p), rest = (uint32_t)(body + len - p - 4);
	*mech = (const char *)body;
	if (n == 0xffffffffu) { /* -1: no initial response */
		if (rest != 0)
			return PGW_MALFORMED;
		*data = NULL;
		*data_len = 0;
		return 0;
	}
	if (n != rest)
		return PGW_MALFORMED;
	*data = p + 4;
	*data_len = n;
	return 0;
}

bool pgw_sasl_offers(const uint8_t *body, uint32_t len, const char *mech)
{
	const uint8_t *p = body, *end = body + len;
	while (p < end && *p) {
		const uint8_t *nul = memchr(p, 0, (size_t)(end - p));
		if (!nul)
			return false;
		if (strcmp((const char *)p, mech) == 0)
			return true;
		p = nul + 1;
	}
	return false;
}
