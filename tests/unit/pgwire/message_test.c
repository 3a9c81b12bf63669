/* tests pgwire/message.c */
#include "../test.h"

static void auth_and_key(void **state)
{
	uint8_t b[300];
	pgw_put32(b, 10);
	assert_int_equal(pgw_auth_code(b, 4), 10);
	assert_int_equal(pgw_auth_code(b, 3), -1);
	uint32_t pid, klen;
	const uint8_t *key;
	pgw_put32(b, 777);
	pgw_put32(b + 4, 0x01020304);
	assert_int_equal(pgw_backend_key(b, 8, &pid, &key, &klen), 0);
	assert_int_equal(pid, 777);
	assert_int_equal(klen, 4);
	assert_int_equal(pgw_backend_key(b, 7, &pid, &key, &klen), PGW_MALFORMED);
	memset(b + 4, 9, 256);
	assert_int_equal(pgw_backend_key(b, 4 + 256, &pid, &key, &klen), 0);
	assert_int_equal(klen, 256);
	assert_int_equal(pgw_backend_key(b, 4 + 257, &pid, &key, &klen), PGW_MALFORMED);
}

static void parameter_status(void **state)
{
	const char *n, *v;
	static const uint8_t ok[] = "in_hot_standby\0on";
	assert_int_equal(pgw_parameter_status(ok, sizeof(ok), &n, &v), 0);
	assert_string_equal(n, "in_hot_standby");
	assert_string_equal(v, "on");
	static const uint8_t novalue[] = "in_hot_standby";
	assert_int_equal(pgw_parameter_status(novalue, sizeof(novalue), &n, &v), PGW_MALFORMED);
	static const uint8_t unterminated[] = { 'a', 0, 'b' };
	assert_int_equal(pgw_parameter_status(unterminated, 3, &n, &v), PGW_MALFORMED);
	assert_int_equal(pgw_parameter_status(ok, 0, &n, &v), PGW_MALFORMED);
}

static void ready(void **state)
{
	assert_int_equal(pgw_ready_status((const uint8_t *)"I", 1), 'I');
	assert_int_equal(pgw_ready_status((const uint8_t *)"E", 1), 'E');
	assert_int_equal(pgw_ready_status((const uint8_t *)"X", 1), -1);
	assert_int_equal(pgw_ready_status((const uint8_t *)"II", 2), -1);
}

static void error_fields(void **state)
{
	static const uint8_t e[] = "SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0";
	struct pgw_error_fields f;
	assert_int_equal(pgw_error_parse(e, sizeof(e), &f), 0);
	assert_string_equal(f.severity, "FATAL");
	assert_string_equal(f.sqlstate, "57P03");
	assert_string_equal(f.message, "the database system is starting up");
	assert_null(f.detail);
	/* missing final terminator */
	assert_int_equal(pgw_error_parse(e, sizeof(e) - 1, &f), PGW_MALFORMED);
	/* field without NUL */
	static const uint8_t bad[] = { 'C', '5', '7' };
	assert_int_equal(pgw_error_parse(bad, sizeof(bad), &f), PGW_MALFORMED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(auth_and_key),
		cmocka_unit_test(parameter_status),
		cmocka_unit_test(ready),
		cmocka_unit_test(error_fields),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
