/* error.c — builders for the messages the router itself sends. */
#include <string.h>

#include "pgwire/pgwire.h"

/* Append field code + string, cut to fit while leaving room for `reserve` bytes. */
static size_t put_field(uint8_t *buf, size_t pos, size_t cap, size_t reserve, uint8_t code,
			const char *s)
{
	if (!s || pos + 2 + reserve > cap)
		return pos;
	size_t room = cap - pos - 2 - reserve, n = strlen(s);
	if (n > room)
		n = room;
	buf[pos++] = code;
	memcpy(buf + pos, s, n);
	pos += n;
	buf[pos++] = 0;
	return pos;
}

size_t pgw_build_error(uint8_t *buf, size_t cap, const char *severity, const char *sqlstate,
		       const char *message, const char *detail, const char *hint)
{
	/* header + S/V + C(5) fields need about 5 + 2*(2+7) + 2+6 + 1 */
	if (cap < 64)
		return 0;
	size_t pos = 5;
	/* the fixed fields are small; message, detail and hint share what is left */
	pos = put_field(buf, pos, cap, 1, 'S', severity);
	pos = put_field(buf, pos, cap, 1, 'V', severity);
	pos = put_field(buf, pos, cap, 1, 'C', sqlstate);
	pos = put_field(buf, pos, cap, 1, 'M', message ? message : "");
	pos = put_field(buf, pos, cap, 1, 'D', detail);
	pos = put_field(buf, pos, cap, 1, 'H', hint);
	buf[pos++] = 0;
	buf[0] = PGW_MSG_ERROR;
	pgw_put32(buf + 1, (uint32_t)(pos - 1));
	return pos;
}

size_t pgw_build_terminate(uint8_t *buf, size_t cap)
{
	if (cap < 5)
		return 0;
	buf[0] = PGW_MSG_TERMINATE;
	pgw_put32(buf + 1, 4);
	return 5;
}

size_t pgw_put_header(uint8_t *buf, size_t cap, uint8_t type, size_t body)
{
	if (body > PGW_MESSAGE_MAX - 4 || cap < PGW_HEADER_LEN + body)
		return 0;
	buf[0] = type;
	pgw_put32(buf + 1, (uint32_t)(body + 4));
	return PGW_HEADER_LEN;
}

size_t pgw_build_query(uint8_t *buf, size_t cap, const char *sql)
{
	size_t n = strlen(sql) + 1;
	if (!pgw_put_header(buf, cap, 'Q', n))
		return 0;
	memcpy(buf + PGW_HEADER_LEN, sql, n);
	return PGW_HEADER_LEN + n;
}

size_t pgw_parse_len(const char *name, const char *sql, unsigned ntypes)
{
	return PGW_HEADER_LEN + strlen(name) + 1 + strlen(sql) + 1 + 2 + 4 * (size_t)ntypes;
}

size_t pgw_build_parse(uint8_t *buf, size_t cap, const char *name, const char *sql,
		       unsigned ntypes, const uint32_t *types)
{
	size_t nl = strlen(name) + 1, n = strlen(sql) + 1;
	if (ntypes > 0xffff || !pgw_put_header(buf, cap, 'P', nl + n + 2 + 4 * (size_t)ntypes))
		return 0;
	uint8_t *p = buf + PGW_HEADER_LEN;
	memcpy(p, name, nl);
	p += nl;
	memcpy(p, sql, n);
	p += n;
	*p++ = (uint8_t)(ntypes >> 8);
	*p++ = (uint8_t)ntypes;
	for (unsigned i = 0; i < ntypes; i++, p += 4)
		pgw_put32(p, types[i]);
	return (size_t)(p - buf);
}

size_t pgw_build_bind(uint8_t *buf, size_t cap, unsigned n, const char *const *values)
{
	size_t body = 1 + 1 + 2 + 2 + 2;
	for (unsigned i = 0; i < n; i++)
		body += 4 + strlen(values[i]);
	if (n > 0xffff || !pgw_put_header(buf, cap, 'B', body))
		return 0;
	uint8_t *p = buf + PGW_HEADER_LEN;
	*p++ = 0; /* unnamed portal */
	*p++ = 0; /* unnamed statement */
	*p++ = 0; /* no format codes: all text */
	*p++ = 0;
	*p++ = (uint8_t)(n >> 8);
	*p++ = (uint8_t)n;
	for (unsigned i = 0; i < n; i++) {
		size_t l = strlen(values[i]);
		pgw_put32(p, (uint32_t)l);
		memcpy(p + 4, values[i], l);
		p += 4 + l;
	}
	*p++ = 0; /* results in text */
	*p++ = 0;
	return (size_t)(p - buf);
}

size_t pgw_build_execute(uint8_t *buf, size_t cap)
{
	if (!pgw_put_header(buf, cap, 'E', 5))
		return 0;
	memset(buf + PGW_HEADER_LEN, 0, 5); /* unnamed portal, no row limit */
	return PGW_HEADER_LEN + 5;
}

size_t pgw_build_sync(uint8_t *buf, size_t cap)
{
	return pgw_put_header(buf, cap, 'S', 0);
}

size_t pgw_build_startup(uint8_t *buf, size_t cap, uint32_t version, unsigned n,
			 const char *const *names, const char *const *values)
{
	size_t len = 8 + 1;
	for (unsigned i = 0; i < n; i++)
		len += strlen(names[i]) + 1 + strlen(values[i]) + 1;
	if (len > cap || len > PGW_STARTUP_MAX)
		return 0;
	pgw_put32(buf, (uint32_t)len);
	pgw_put32(buf + 4, version);
	uint8_t *p = buf + 8;
	for (unsigned i = 0; i < n; i++) {
		size_t a = strlen(names[i]) + 1, b = strlen(values[i]) + 1;
		memcpy(p, names[i], a);
		memcpy(p + a, values[i], b);
		p += a + b;
	}
	*p++ = 0;
	return len;
}
