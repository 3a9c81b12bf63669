/* tests discovery/stolon.c on clusterdata in the shape Stolon's sentinel writes
 * (format version 1: internal/cluster/cluster.go's JSON tags, trimmed of the
 * fields routing does not read) */
#include "../test.h"

#include "discovery/internal.h"

/* a healthy cluster: master db aa11 on 5433, standbys bb22 (following it,
 * 4096 bytes behind) and cc33 (not healthy), dd44 following bb22 (cascading) */
static const char healthy[] =
	"{\"formatVersion\":1,\"changeTime\":\"2026-11-23T20:00:00Z\","
	"\"cluster\":{\"uid\":\"c1\",\"generation\":1,\"spec\":{\"initMode\":\"new\"},"
	"\"status\":{\"currentGeneration\":1,\"phase\":\"normal\",\"master\":\"aa11\"}},"
	"\"keepers\":{\"k1\":{\"uid\":\"k1\",\"status\":{\"healthy\":true}}},"
	"\"dbs\":{"
	"\"aa11\":{\"uid\":\"aa11\",\"generation\":3,\"spec\":{\"keeperUID\":\"k1\","
	"\"role\":\"master\",\"followers\":[\"bb22\",\"cc33\"]},\"status\":{\"healthy\":true,"
	"\"currentGeneration\":3,\"listenAddress\":\"127.0.0.1\",\"port\":\"5433\","
	"\"timelineID\":2,\"xLogPos\":100000}},"
	"\"bb22\":{\"uid\":\"bb22\",\"generation\":2,\"spec\":{\"keeperUID\":\"k2\","
	"\"role\":\"standby\",\"followConfig\":{\"type\":\"internal\",\"dbuid\":\"aa11\"}},"
	"\"status\":{\"healthy\":true,\"listenAddress\":\"127.0.0.1\",\"port\":\"5434\","
	"\"timelineID\":2,\"xLogPos\":95904}},"
	"\"cc33\":{\"uid\":\"cc33\",\"spec\":{\"role\":\"standby\",\"followConfig\":{\"type\":"
	"\"internal\",\"dbuid\":\"aa11\"}},\"status\":{\"listenAddress\":\"127.0.0.1\","
	"\"port\":\"5435\",\"timelineID\":2,\"xLogPos\":1}},"
	"\"dd44\":{\"uid\":\"dd44\",\"spec\":{\"role\":\"standby\",\"followConfig\":{\"type\":"
	"\"internal\",\"dbuid\":\"bb22\"}},\"status\":{\"healthy\":true,\"listenAddress\":"
	"\"127.0.0.1\",\"port\":\"5436\",\"timelineID\":2,\"xLogPos\":90000}}},"
	"\"proxy\":{\"uid\":\"p1\",\"generation\":7,\"spec\":{\"masterDbUid\":\"aa11\","
	"\"enabledProxies\":[\"proxy1\"]},\"status\":{}}}";

static struct stolon_cd cd;
static struct disc_view_entry v[STOLON_MAX_DBS];

static const struct disc_view_entry *entry(unsigned n, const char *port)
{
	for (unsigned i = 0; i < n; i++)
		if (strcmp(v[i].srv->port, port) == 0)
			return &v[i];
	fail_msg("no entry for port %s", port);
	return NULL;
}

static void master_and_standbys(void **state)
{
	assert_int_equal(stolon_parse(healthy, strlen(healthy), &cd), 0);
	assert_int_equal(cd.n, 4);
	assert_int_not_equal(cd.primary, 0);
	assert_string_equal(cd.db[cd.primary - 1].uid, "aa11");
	assert_int_equal(cd.generation, 7);
	assert_string_equal(cd.enabled, "proxy1");
	assert_int_equal(cd.proxy_timeout_ms, 15000); /* Stolon's default */
	unsigned n = stolon_view(&cd, v);
	assert_int_equal(n, 4);
	const struct disc_view_entry *m = entry(n, "5433"), *s = entry(n, "5434");
	assert_int_equal(m->role, DISC_ROLE_PRIMARY);
	assert_true(m->routable);
	assert_int_equal(s->role, DISC_ROLE_STANDBY);
	assert_true(s->routable);
	assert_int_equal(s->lag_bytes, 4096);
	/* healthy missing: not healthy */
	assert_false(entry(n, "5435")->routable);
	assert_non_null(strstr(entry(n, "5435")->why, "not healthy"));
	/* following a standby, not the master */
	assert_false(entry(n, "5436")->routable);
	assert_non_null(strstr(entry(n, "5436")->why, "follows bb22"));
}

/* replace the first occurrence of from with to in healthy, into out */
static const char *variant(char *out, size_t cap, const char *from, const char *to)
{
	const char *p = strstr(healthy, from);
	assert_non_null(p);
	snprintf(out, cap, "%.*s%s%s", (int)(p - healthy), healthy, to, p + strlen(from));
	return out;
}

static void no_primary_cases(void **state)
{
	static char buf[sizeof(healthy) + 64];
	static const char *const cases[][3] = {
		/* the sentinel's failover: masterDbUid emptied first */
		{ "\"masterDbUid\":\"aa11\"", "\"masterDbUid\":\"\"", "empty" },
		{ "\"masterDbUid\":\"aa11\",", "", "empty" }, /* omitempty: absent */
		{ "\"masterDbUid\":\"aa11\"", "\"masterDbUid\":\"zz99\"", "names no db" },
		{ "\"formatVersion\":1", "\"formatVersion\":2", "format version 2" },
		{ "\"proxy\":{\"uid\"", "\"proxy\":null,\"x\":{\"uid\"", "no proxy spec" },
	};
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *j = variant(buf, sizeof(buf), cases[i][0], cases[i][1]);
		assert_int_equal(stolon_parse(j, strlen(j), &cd), 0);
		assert_int_equal(cd.primary, 0);
		assert_non_null(strstr(cd.no_primary, cases[i][2]));
		unsigned n = stolon_view(&cd, v);
		/* nothing is a primary; the old master is not routable; healthy
		 * standbys still serve reads */
		for (unsigned k = 0; k < n; k++)
			assert_int_not_equal(v[k].role, DISC_ROLE_PRIMARY);
		assert_false(entry(n, "5433")->routable);
		assert_true(entry(n, "5434")->routable);
		assert_int_equal(entry(n, "5434")->lag_bytes, -1);
	}
	assert_int_equal(stolon_parse("[]", 2, &cd), -1);
	assert_int_equal(cd.primary, 0);
	assert_int_equal(stolon_parse("{\"formatVersion\":", 17, &cd), -1);
}

static void promoted_standby_and_odd_fields(void **state)
{
	static char buf[sizeof(healthy) + 64];
	/* the failover's end: masterDbUid names the promoted standby */
	const char *j = variant(buf, sizeof(buf), "\"masterDbUid\":\"aa11\"",
				"\"masterDbUid\":\"bb22\"");
	assert_int_equal(stolon_parse(j, strlen(j), &cd), 0);
	unsigned n = stolon_view(&cd, v);
	assert_int_equal(entry(n, "5434")->role, DISC_ROLE_PRIMARY);
	assert_int_equal(entry(n, "5433")->role, DISC_ROLE_UNKNOWN);
	assert_false(entry(n, "5433")->routable);
	/* the cascading standby follows the new master now */
	assert_true(entry(n, "5436")->routable);
	/* no address yet (a db being initialized): left out */
	j = variant(buf, sizeof(buf), "\"listenAddress\":\"127.0.0.1\",\"port\":\"5434\",", "");
	assert_int_equal(stolon_parse(j, strlen(j), &cd), 0);
	assert_int_equal(stolon_view(&cd, v), 3);
	/* a port that is not a number */
	j = variant(buf, sizeof(buf), "\"port\":\"5434\"", "\"port\":\"x\"");
	assert_int_equal(stolon_parse(j, strlen(j), &cd), 0);
	assert_int_equal(stolon_view(&cd, v), 3);
}

static void go_durations(void **state)
{
	assert_int_equal(stolon_duration_ms("15s"), 15000);
	assert_int_equal(stolon_duration_ms("1m30s"), 90000);
	assert_int_equal(stolon_duration_ms("500ms"), 500);
	assert_int_equal(stolon_duration_ms("1h"), 3600000);
	assert_int_equal(stolon_duration_ms("1.5s"), 1500);
	assert_int_equal(stolon_duration_ms("15"), -1);
	assert_int_equal(stolon_duration_ms(""), -1);
	assert_int_equal(stolon_duration_ms("s"), -1);
	static char buf[sizeof(healthy) + 64];
	const char *j = variant(buf, sizeof(buf), "\"spec\":{\"initMode\":\"new\"}",
				"\"spec\":{\"initMode\":\"new\",\"proxyTimeout\":\"20s\"}");
	assert_int_equal(stolon_parse(j, strlen(j), &cd), 0);
	assert_int_equal(cd.proxy_timeout_ms, 20000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(master_and_standbys),
		cmocka_unit_test(no_primary_cases),
		cmocka_unit_test(promoted_standby_and_odd_fields),
		cmocka_unit_test(go_durations),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
