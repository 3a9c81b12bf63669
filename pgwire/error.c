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
