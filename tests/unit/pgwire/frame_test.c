/* tests pgwire/frame.c */
#include "../test.h"

static void header(void **state)
{
	uint8_t b[5], t;
	uint32_t len;
	build_msg(b, 'Q', NULL, 0);
	assert_int_equal(pgw_header(b, PGW_MESSAGE_MAX, &t, &len), 0);
	assert_int_equal(t, 'Q');
	assert_int_equal(len, 0);
	pgw_put32(b + 1, 3); /* below 4 */
	assert_int_equal(pgw_header(b, PGW_MESSAGE_MAX, &t, &len), PGW_BAD_LENGTH);
	pgw_put32(b + 1, 0xffffffffu); /* negative */
	assert_int_equal(pgw_header(b, PGW_MESSAGE_MAX, &t, &len), PGW_BAD_LENGTH);
	pgw_put32(b + 1, 1000);
	assert_int_equal(pgw_header(b, 999, &t, &len), PGW_BAD_LENGTH);
}

/* A backend stream: RowDescription-ish, two DataRows, CommandComplete, ReadyForQuery 'T'. */
static size_t backend_stream(uint8_t *b)
{
	size_t n = 0;
	n += build_msg(b + n, 'T', "abcdefgh", 8);
	n += build_msg(b + n, 'D', "0123456789", 10);
	n += build_msg(b + n, 'D', "x", 1);
	n += build_msg(b + n, 'C', "SELECT 2", 9);
	n += build_msg(b + n, 'Z', "T", 1);
	return n;
}

static void scan_whole_and_bytewise(void **state)
{
	uint8_t b[256];
	size_t n = backend_stream(b);
	for (size_t chunk = 1; chunk <= n; chunk++) {
		struct pgw_scanner s;
		pgw_scanner_init(&s, 0, false);
		for (size_t off = 0; off < n; off += chunk) {
			size_t k = n - off < chunk ? n - off : chunk;
			assert_int_equal(pgw_scan(&s, b + off, k), 0);
			if (off + k < n)
				assert_false(pgw_scan_idle(&s));
		}
		assert_true(pgw_scan_at_boundary(&s));
		assert_int_equal(s.messages, 5);
		assert_int_equal(s.last_type, 'Z');
		assert_int_equal(s.txn_status, 'T');
		assert_int_equal(s.sync_points, 1);
		assert_false(pgw_scan_idle(&s)); /* 'T' is inside a transaction */
	}
}

static void scan_idle_and_partial(void **state)
{
	uint8_t b[64];
	size_t n = build_msg(b, 'Z', "I", 1);
	struct pgw_scanner s;
	pgw_scanner_init(&s, 0, false);
	assert_int_equal(pgw_scan(&s, b, n - 1), 0);
	assert_false(pgw_scan_at_boundary(&s)); /* status byte missing */
	assert_int_equal(pgw_scan(&s, b + n - 1, 1), 0);
	assert_true(pgw_scan_idle(&s));
	/* a header split over chunks is not a boundary */
	n = build_msg(b, 'D', "abc", 3);
	assert_int_equal(pgw_scan(&s, b, 2), 0);
	assert_false(pgw_scan_at_boundary(&s));
	assert_int_equal(pgw_scan(&s, b + 2, n - 2), 0);
	assert_true(pgw_scan_at_boundary(&s));
	assert_false(pgw_scan_idle(&s));
}

static void scan_bad_lengths(void **state)
{
	uint8_t b[16] = { 'Q', 0, 0, 0, 2 };
	struct pgw_scanner s;
	pgw_scanner_init(&s, 0, true);
	assert_int_equal(pgw_scan(&s, b, 5), PGW_BAD_LENGTH);
	pgw_scanner_init(&s, 1024, true);
	b[0] = 'd';
	pgw_put32(b + 1, 2000);
	assert_int_equal(pgw_scan(&s, b, 5), PGW_BAD_LENGTH);
	b[0] = 'd';
	pgw_put32(b + 1, 0x80000004u);
	pgw_scanner_init(&s, 0, true);
	assert_int_equal(pgw_scan(&s, b, 5), PGW_BAD_LENGTH);
}

static void frontend_sync_points(void **state)
{
	uint8_t b[128];
	size_t n = 0;
	/* extended protocol: Parse Bind Execute Sync, then a simple Query */
	n += build_msg(b + n, 'P', "\0SELECT 1\0\0\0", 13);
	n += build_msg(b + n, 'B', "\0\0\0\0\0\0\0\0", 8);
	n += build_msg(b + n, 'E', "\0\0\0\0\0", 5);
	n += build_msg(b + n, 'S', NULL, 0);
	n += build_msg(b + n, 'Q', "SELECT 1", 9);
	struct pgw_scanner s;
	pgw_scanner_init(&s, 0, true);
	assert_int_equal(pgw_scan(&s, b, n), 0);
	assert_int_equal(s.sync_points, 2);
	/* on the frontend stream 'Z' means nothing and no status byte is read */
	n = build_msg(b, 'S', NULL, 0);
	assert_int_equal(pgw_scan(&s, b, n), 0);
	assert_int_equal(s.sync_points, 3);
	assert_true(pgw_scan_at_boundary(&s));
}

/* Asynchronous messages after ReadyForQuery 'I' leave the stream idle; a
 * reply does not. */
static void async_messages_keep_idle(void **state)
{
	uint8_t b[128];
	size_t n = 0;
	n += build_msg(b + n, 'Z', "I", 1);
	n += build_msg(b + n, 'A', "\0\0\0\1chan\0hello\0", 16);
	n += build_msg(b + n, 'N', "SNOTICE\0\0", 9);
	n += build_msg(b + n, 'S', "TimeZone\0UTC\0", 13);
	struct pgw_scanner s;
	pgw_scanner_init(&s, 0, false);
	assert_int_equal(pgw_scan(&s, b, n), 0);
	assert_true(pgw_scan_idle(&s));
	assert_int_equal(s.sync_points, 1);
	n = build_msg(b, 'C', "SELECT 1", 9);
	assert_int_equal(pgw_scan(&s, b, n), 0);
	assert_false(pgw_scan_idle(&s));
}

/* Extended-protocol messages are unsettled until their Sync. */
static void frontend_unsynced(void **state)
{
	uint8_t b[128];
	struct pgw_scanner s;
	pgw_scanner_init(&s, 0, true);
	assert_true(pgw_scan_settled(&s));
	const char types[] = "PBEDCH";
	for (const char *t = types; *t; t++) {
		size_t n = build_msg(b, (uint8_t)*t, "\0\0\0\0", 4);
		assert_int_equal(pgw_scan(&s, b, n), 0);
		assert_false(pgw_scan_settled(&s));
	}
	assert_int_equal(s.sync_points, 0);
	size_t n = build_msg(b, 'S', NULL, 0);
	assert_int_equal(pgw_scan(&s, b, n - 1), 0); /* Sync cut short */
	assert_false(pgw_scan_settled(&s));
	assert_int_equal(pgw_scan(&s, b + n - 1, 1), 0);
	assert_true(pgw_scan_settled(&s));
	assert_int_equal(s.sync_points, 1);
	n = build_msg(b, 'Q', "SELECT 1", 9);
	assert_int_equal(pgw_scan(&s, b, n), 0);
	assert_true(pgw_scan_settled(&s)); /* a Query is answered whole */
}

static void names(void **state)
{
	assert_string_equal(pgw_msg_name('Z', true), "ReadyForQuery");
	assert_string_equal(pgw_msg_name('S', false), "Sync");
	assert_string_equal(pgw_msg_name('S', true), "ParameterStatus");
	assert_string_equal(pgw_result_name(PGW_BAD_LENGTH), "invalid length");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(header),	      cmocka_unit_test(scan_whole_and_bytewise),
		cmocka_unit_test(scan_idle_and_partial), cmocka_unit_test(scan_bad_lengths),
		cmocka_unit_test(frontend_sync_points),  cmocka_unit_test(async_messages_keep_idle),
		cmocka_unit_test(frontend_unsynced),     cmocka_unit_test(names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
