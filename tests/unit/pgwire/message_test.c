/* tests pgwire/message.c */
#include <stdlib.h>

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

static void data_row(void **state)
{
	/* 3 columns: "ab", NULL, "" */
	const uint8_t row[] = { 0, 3, 0, 0, 0, 2, 'a', 'b', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0 };
	const uint8_t *v[3];
	int32_t l[3];
	assert_int_equal(pgw_data_row(row, sizeof(row), 3, v, l), 3);
	assert_int_equal(l[0], 2);
	assert_memory_equal(v[0], "ab", 2);
	assert_int_equal(l[1], -1);
	assert_int_equal(l[2], 0);
	/* fewer slots than columns: the count is still 3 */
	assert_int_equal(pgw_data_row(row, sizeof(row), 1, v, l), 3);
	/* a length past the end, bytes left over, a length below -1 */
	assert_int_equal(pgw_data_row(row, sizeof(row) - 1, 3, v, l), PGW_MALFORMED);
	const uint8_t extra[] = { 0, 0, 'x' };
	assert_int_equal(pgw_data_row(extra, sizeof(extra), 3, v, l), PGW_MALFORMED);
	const uint8_t neg[] = { 0, 1, 0xff, 0xff, 0xff, 0xfe };
	assert_int_equal(pgw_data_row(neg, sizeof(neg), 3, v, l), PGW_MALFORMED);
	assert_int_equal(pgw_data_row(row, 1, 3, v, l), PGW_MALFORMED);
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

/* AuthenticationSASL message: 'R', length, 10, names..., "" */
static size_t sasl_msg(uint8_t *b, const char *const *names, unsigned n)
{
	size_t o = 9;
	b[0] = 'R';
	pgw_put32(b + 5, 10);
	for (unsigned i = 0; i < n; i++) {
		memcpy(b + o, names[i], strlen(names[i]) + 1);
		o += strlen(names[i]) + 1;
	}
	b[o++] = 0;
	pgw_put32(b + 1, (uint32_t)(o - 1));
	return o;
}

static void sasl_drop(void **state)
{
	uint8_t in[200], out[200], want[200];
	static const char *const both[] = { "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256" };
	static const char *const plain[] = { "SCRAM-SHA-256" };
	size_t n = sasl_msg(in, both, 2), w = sasl_msg(want, plain, 1);
	int r = pgw_sasl_drop_mechanism(in, n, "SCRAM-SHA-256-PLUS", out, sizeof(out));
	assert_int_equal(r, (int)w);
	assert_memory_equal(out, want, w);
	/* not listed: the same message back */
	r = pgw_sasl_drop_mechanism(want, w, "SCRAM-SHA-256-PLUS", out, sizeof(out));
	assert_int_equal(r, (int)w);
	assert_memory_equal(out, want, w);
	/* a prefix of a name is not the name */
	r = pgw_sasl_drop_mechanism(in, n, "SCRAM-SHA-256-PL", out, sizeof(out));
	assert_int_equal(r, (int)n);
	/* malformed: no terminating empty name, bytes after it, wrong code, wrong
	 * length field, too small an output */
	assert_int_equal(pgw_sasl_drop_mechanism(in, n - 1, "X", out, sizeof(out)), PGW_MALFORMED);
	uint8_t extra[200];
	memcpy(extra, in, n);
	extra[n] = 'x';
	pgw_put32(extra + 1, (uint32_t)n);
	assert_int_equal(pgw_sasl_drop_mechanism(extra, n + 1, "X", out, sizeof(out)), PGW_MALFORMED);
	memcpy(extra, in, n);
	pgw_put32(extra + 5, 11);
	assert_int_equal(pgw_sasl_drop_mechanism(extra, n, "X", out, sizeof(out)), PGW_MALFORMED);
	pgw_put32(extra + 5, 10);
	pgw_put32(extra + 1, 3);
	assert_int_equal(pgw_sasl_drop_mechanism(extra, n, "X", out, sizeof(out)), PGW_MALFORMED);
	assert_int_equal(pgw_sasl_drop_mechanism(in, n, "X", out, 12), PGW_MALFORMED);
	assert_int_equal(pgw_sasl_drop_mechanism(in, 8, "X", out, sizeof(out)), PGW_MALFORMED);
	/* every truncation is refused, never read past */
	for (size_t k = 0; k < n; k++) {
		uint8_t *t = malloc(k ? k : 1);
		memcpy(t, in, k);
		assert_int_equal(pgw_sasl_drop_mechanism(t, k, "X", out, sizeof(out)), PGW_MALFORMED);
		free(t);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(auth_and_key),
		cmocka_unit_test(parameter_status),
		cmocka_unit_test(ready),
		cmocka_unit_test(data_row),
		cmocka_unit_test(error_fields),
		cmocka_unit_test(sasl_drop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
