/* Shared by the unit tests: cmocka and small packet builders. */
#ifndef TESTS_UNIT_TEST_H
#define TESTS_UNIT_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgwire/pgwire.h"

/* Build a StartupMessage for version v from NUL-separated "k\0v\0k\0v\0" (len bytes). */
static inline size_t build_startup(uint8_t *buf, uint32_t v, const char *kv, size_t kvlen)
{
	size_t n = 8 + kvlen + 1;
	pgw_put32(buf, (uint32_t)n);
	pgw_put32(buf + 4, v);
	memcpy(buf + 8, kv, kvlen);
	buf[8 + kvlen] = 0;
	return n;
}

/* Build a typed message: type, body. */
static inline size_t build_msg(uint8_t *buf, uint8_t type, const void *body, uint32_t len)
{
	buf[0] = type;
	pgw_put32(buf + 1, len + 4);
	if (len)
		memcpy(buf + 5, body, len);
	return 5 + len;
}

#endif
