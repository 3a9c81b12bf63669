/* tests pgwire/auth.c */
#include "../test.h"

static void builders(void **state)
{
	uint8_t b[128];
	size_t n = pgw_build_auth(b, sizeof(b), PGW_AUTH_OK, NULL, 0);
	assert_int_equal(n, 9);
	assert_memory_equal(b, "R\0\0\0\x08\0\0\0\0", 9);
	static const uint8_t salt[4] = { 1, 2, 3, 4 };
	n = pgw_build_auth(b, sizeof(b), PGW_AUTH_MD5, salt, 4);
	assert_int_equal(n, 13);
	assert_int_equal(pgw_auth_code(b + 5, 8), PGW_AUTH_MD5);
	assert_int_equal(pgw_build_auth(b, 12, PGW_AUTH_MD5, salt, 4), 0);

	n = pgw_build_sasl_initial(b, sizeof(b), "SCRAM-SHA-256", "n,,n=,r=x", 9);
	assert_int_equal(b[0], 'p');
	const char *mech;
	const uint8_t *data;
	uint32_t dl;
	assert_int_equal(pgw_sasl_initial_parse(b + 5, (uint32_t)n - 5, &mech, &data, &dl), 0);
	assert_string_equal(mech, "SCRAM-SHA-256");
	assert_int_equal(dl, 9);
	assert_memory_equal(data, "n,,n=,r=x", 9);
	/* length -1: no data */
	static const uint8_t none[] = "SCRAM-SHA-256\0\xff\xff\xff\xff";
	assert_int_equal(pgw_sasl_initial_parse(none, sizeof(none) - 1, &mech, &data, &dl), 0);
	assert_null(data);
	/* declared length longer than the body */
	static const uint8_t lie[] = "M\0\0\0\0\x09" "abc";
	assert_int_equal(pgw_sasl_initial_parse(lie, sizeof(lie) - 1, &mech, &data, &dl),
			 PGW_MALFORMED);
	static const uint8_t nonul[] = "SCRAM";
	assert_int_equal(pgw_sasl_initial_parse(nonul, 5, &mech, &data, &dl), PGW_MALFORMED);

	static const uint8_t key[4] = { 9, 8, 7, 6 };
	n = pgw_build_backend_key(b, sizeof(b), 42, key, 4);
	uint32_t pid, kl;
	const uint8_t *k;
	assert_int_equal(pgw_backend_key(b + 5, (uint32_t)n - 5, &pid, &k, &kl), 0);
	assert_int_equal(pid, 42);
	assert_memory_equal(k, key, 4);
	assert_int_equal(pgw_build_backend_key(b, sizeof(b), 42, key, 3), 0);

	n = pgw_build_parameter_status(b, sizeof(b), "TimeZone", "UTC");
	const char *pn, *pv;
	assert_int_equal(pgw_parameter_status(b + 5, (uint32_t)n - 5, &pn, &pv), 0);
	assert_string_equal(pn, "TimeZone");
	assert_string_equal(pv, "UTC");

	n = pgw_build_password(b, sizeof(b), "md5abc", 7);
	assert_int_equal(n, 12);
	assert_int_equal(b[0], 'p');
}

static void offers(void **state)
{
	static const uint8_t list[] = "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0";
	assert_true(pgw_sasl_offers(list, sizeof(list) - 1, "SCRAM-SHA-256"));
	assert_true(pgw_sasl_offers(list, sizeof(list) - 1, "SCRAM-SHA-256-PLUS"));
	assert_false(pgw_sasl_offers(list, sizeof(list) - 1, "SCRAM-SHA-1"));
	static const uint8_t cut[] = { 'S', 'C' };
	assert_false(pgw_sasl_offers(cut, 2, "SC"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(builders),
		cmocka_unit_test(offers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
