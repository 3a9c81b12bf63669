/* tests pgwire/error.c: what we build, our own parser reads back */
#include "../test.h"

static void roundtrip(void **state)
{
	uint8_t b[512], t;
	uint32_t len;
	size_t n = pgw_build_error(b, sizeof(b), "FATAL", "08001", "no server", "detail", NULL);
	assert_true(n > 5);
	assert_int_equal(pgw_header(b, PGW_MESSAGE_MAX, &t, &len), 0);
	assert_int_equal(t, 'E');
	assert_int_equal(len + 5, n);
	struct pgw_error_fields f;
	assert_int_equal(pgw_error_parse(b + 5, len, &f), 0);
	assert_string_equal(f.severity, "FATAL");
	assert_string_equal(f.sqlstate, "08001");
	assert_string_equal(f.message, "no server");
	assert_string_equal(f.detail, "detail");
}

static void truncates(void **state)
{
	char longmsg[2000];
	memset(longmsg, 'x', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = 0;
	uint8_t b[128], t;
	uint32_t len;
	size_t n = pgw_build_error(b, sizeof(b), "FATAL", "57P01", longmsg, NULL, NULL);
	assert_true(n <= sizeof(b));
	assert_int_equal(pgw_header(b, PGW_MESSAGE_MAX, &t, &len), 0);
	struct pgw_error_fields f;
	assert_int_equal(pgw_error_parse(b + 5, len, &f), 0);
	assert_string_equal(f.sqlstate, "57P01");
	assert_true(strlen(f.message) > 10);
	assert_int_equal(pgw_build_error(b, 10, "FATAL", "57P01", "m", NULL, NULL), 0);
	assert_int_equal(pgw_build_terminate(b, 5), 5);
	assert_int_equal(b[0], 'X');
}

/* A named Parse with parameter types, as PostgreSQL reads it. */
static void parse_named(void **state)
{
	const uint32_t types[2] = { 23, 25 };
	uint8_t b[64];
	size_t n = pgw_build_parse(b, sizeof(b), "s1", "select $1, $2", 2, types);
	assert_int_equal(n, pgw_parse_len("s1", "select $1, $2", 2));
	const uint8_t want[] = "P\0\0\0\x1f" "s1\0select $1, $2\0\0\x02\0\0\0\x17\0\0\0\x19";
	assert_int_equal(n, sizeof(want) - 1);
	assert_memory_equal(b, want, n);
	assert_int_equal(pgw_build_parse(b, n - 1, "s1", "select $1, $2", 2, types), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = { cmocka_unit_test(roundtrip), cmocka_unit_test(truncates),
					    cmocka_unit_test(parse_named) };
	return cmocka_run_group_tests(tests, NULL, NULL);
}
