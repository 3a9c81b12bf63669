/* tests pgwire/startup.c */
#include "../test.h"

#include <stdio.h>

static const char kv[] = "user\0alice\0database\0shop\0application_name\0psql\0";

static void startup_30(void **state)
{
	uint8_t buf[256];
	size_t n = build_startup(buf, PGW_PROTO(3, 0), kv, sizeof(kv) - 1);
	assert_int_equal(pgw_first_len(buf, n), (int)n);
	struct pgw_first f;
	assert_int_equal(pgw_first_parse(buf, n, &f), (int)n);
	assert_int_equal(f.kind, PGW_FIRST_STARTUP);
	assert_int_equal(f.version, PGW_PROTO(3, 0));
	assert_string_equal(f.user, "alice");
	assert_string_equal(f.database, "shop");
	assert_string_equal(f.application_name, "psql");
	assert_int_equal(f.nparams, 3);
	assert_false(f.replication);
}

static void startup_32_and_database_default(void **state)
{
	static const char only_user[] = "user\0bob\0replication\0database\0";
	uint8_t buf[256];
	size_t n = build_startup(buf, PGW_PROTO(3, 2), only_user, sizeof(only_user) - 1);
	struct pgw_first f;
	assert_int_equal(pgw_first_parse(buf, n, &f), (int)n);
	assert_int_equal(f.version, PGW_PROTO(3, 2));
	assert_string_equal(f.database, "bob");
	assert_true(f.replication);
}

static void startup_rejects(void **state)
{
	uint8_t buf[256];
	struct pgw_first f;
	/* no user */
	static const char nouser[] = "database\0x\0";
	size_t n = build_startup(buf, PGW_PROTO(3, 0), nouser, sizeof(nouser) - 1);
	assert_int_equal(pgw_first_parse(buf, n, &f), PGW_NO_USER);
	/* replication: PostgreSQL's booleans or "database"; anything else is refused */
	static const char *const yes[] = { "true", "TRUE", "t", "tr", "yes", "y", "on", "1",
					   "database" };
	static const char *const no[] = { "false", "f", "no", "n", "off", "of", "0" };
	static const char *const bad[] = { "", "o", "maybe", "truex", "2", "onn", "Database" };
	for (unsigned i = 0; i < sizeof(yes) / sizeof(*yes) + sizeof(no) / sizeof(*no) +
				 sizeof(bad) / sizeof(*bad); i++) {
		unsigned ny = sizeof(yes) / sizeof(*yes), nn = sizeof(no) / sizeof(*no);
		const char *v = i < ny ? yes[i] : i < ny + nn ? no[i - ny] : bad[i - ny - nn];
		char kvr[64];
		size_t k = (size_t)snprintf(kvr, sizeof(kvr), "user%cu%creplication%c%s%c", 0, 0, 0, v, 0);
		n = build_startup(buf, PGW_PROTO(3, 0), kvr, k);
		int r = pgw_first_parse(buf, n, &f);
		if (i < ny + nn) {
			assert_int_equal(r, (int)n);
			assert_int_equal(f.replication, i < ny);
		} else {
			assert_int_equal(r, PGW_BAD_REPLICATION);
			assert_string_equal(f.bad_value, v);
		}
	}
	/* value missing its NUL: drop the final terminator and the value's NUL */
	n = build_startup(buf, PGW_PROTO(3, 0), kv, sizeof(kv) - 1);
	pgw_put32(buf, (uint32_t)(n - 2));
	assert_int_equal(pgw_first_parse(buf, n - 2, &f), PGW_MALFORMED);
	/* protocol 2.0 */
	n = build_startup(buf, PGW_PROTO(2, 0), kv, sizeof(kv) - 1);
	assert_int_equal(pgw_first_parse(buf, n, &f), PGW_BAD_VERSION);
	/* bytes after the terminator */
	n = build_startup(buf, PGW_PROTO(3, 0), kv, sizeof(kv) - 1);
	buf[n] = 'x';
	pgw_put32(buf, (uint32_t)n + 1);
	assert_int_equal(pgw_first_parse(buf, n + 1, &f), PGW_MALFORMED);
}

static void lengths(void **state)
{
	uint8_t b[8] = { 0 };
	assert_int_equal(pgw_first_len(b, 3), PGW_NEED_MORE);
	pgw_put32(b, 7); /* below the minimum */
	assert_int_equal(pgw_first_len(b, 4), PGW_BAD_LENGTH);
	pgw_put32(b, PGW_STARTUP_MAX + 1); /* oversize */
	assert_int_equal(pgw_first_len(b, 4), PGW_BAD_LENGTH);
	pgw_put32(b, 0x80000000u); /* negative as int32 */
	assert_int_equal(pgw_first_len(b, 4), PGW_BAD_LENGTH);
	pgw_put32(b, PGW_STARTUP_MAX);
	assert_int_equal(pgw_first_len(b, 4), (int)PGW_STARTUP_MAX);
	/* length says 100 but only 8 bytes given: parse refuses */
	pgw_put32(b, 100);
	pgw_put32(b + 4, PGW_PROTO(3, 0));
	struct pgw_first f;
	assert_true(pgw_first_parse(b, 8, &f) < 0);
}

static void ssl_gss_cancel(void **state)
{
	uint8_t b[300];
	struct pgw_first f;
	pgw_put32(b, 8);
	pgw_put32(b + 4, PGW_CODE_SSL);
	assert_int_equal(pgw_first_parse(b, 8, &f), 8);
	assert_int_equal(f.kind, PGW_FIRST_SSL);
	pgw_put32(b + 4, PGW_CODE_GSSENC);
	assert_int_equal(pgw_first_parse(b, 8, &f), 8);
	assert_int_equal(f.kind, PGW_FIRST_GSSENC);
	/* SSLRequest with more bytes: PostgreSQL reads the code only */
	pgw_put32(b, 12);
	pgw_put32(b + 4, PGW_CODE_SSL);
	assert_int_equal(pgw_first_parse(b, 12, &f), 12);
	assert_int_equal(f.kind, PGW_FIRST_SSL);
	/* 3.0 cancel: 4-byte key */
	pgw_put32(b, 16);
	pgw_put32(b + 4, PGW_CODE_CANCEL);
	pgw_put32(b + 8, 4242);
	pgw_put32(b + 12, 0xdeadbeef);
	assert_int_equal(pgw_first_parse(b, 16, &f), 16);
	assert_int_equal(f.kind, PGW_FIRST_CANCEL);
	assert_int_equal(f.cancel_pid, 4242);
	assert_int_equal(f.cancel_key_len, 4);
	assert_int_equal(pgw_get32(f.cancel_key), 0xdeadbeef);
	/* 3.2 cancel: 32-byte key */
	pgw_put32(b, 12 + 32);
	memset(b + 12, 7, 32);
	assert_int_equal(pgw_first_parse(b, 44, &f), 44);
	assert_int_equal(f.cancel_key_len, 32);
	/* key longer than 256 bytes */
	pgw_put32(b, 12 + 257);
	assert_int_equal(pgw_first_parse(b, 12 + 257, &f), PGW_BAD_CANCEL);
	/* key shorter than 4 bytes */
	pgw_put32(b, 14);
	assert_int_equal(pgw_first_parse(b, 14, &f), PGW_BAD_CANCEL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(startup_30),     cmocka_unit_test(startup_32_and_database_default),
		cmocka_unit_test(startup_rejects), cmocka_unit_test(lengths),
		cmocka_unit_test(ssl_gss_cancel),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
