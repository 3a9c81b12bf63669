/* tests discovery/patroni.c on values captured from a real Patroni 3.0.2 cluster on etcd */
#include "../test.h"

#include "discovery/internal.h"

/* captured with tests/harness/patroni.py (keys relative to /service/<scope>/) */
static const char *const captured[][2] = {
	{ "config", "{\"ttl\":10,\"loop_wait\":1,\"retry_timeout\":5,\"maximum_lag_on_failover\":"
		    "16777216,\"postgresql\":{\"use_pg_rewind\":true,\"use_slots\":true}}" },
	{ "initialize", "7710814739328780090" },
	{ "leader", "pg1" },
	{ "members/pg1", "{\"conn_url\":\"postgres://127.0.0.1:49421/postgres\",\"api_url\":"
			 "\"http://127.0.0.1:59783/patroni\",\"state\":\"running\",\"role\":"
			 "\"master\",\"version\":\"3.0.2\",\"xlog_location\":67108864,"
			 "\"timeline\":1}" },
	{ "members/pg2", "{\"conn_url\":\"postgres://127.0.0.1:39875/postgres\",\"api_url\":"
			 "\"http://127.0.0.1:56571/patroni\",\"state\":\"running\",\"role\":"
			 "\"replica\",\"version\":\"3.0.2\",\"xlog_location\":67108864,"
			 "\"timeline\":1}" },
	{ "members/pg3", "{\"conn_url\":\"postgres://127.0.0.1:58203/postgres\",\"api_url\":"
			 "\"http://127.0.0.1:37915/patroni\",\"state\":\"running\",\"role\":"
			 "\"replica\",\"version\":\"3.0.2\",\"xlog_location\":67100000,"
			 "\"timeline\":1}" },
	{ "status", "{\"optime\":67108864}" },
};

static struct patroni_keys keys;
static struct patroni_cluster pc;

static void load(void)
{
	patroni_keys_clear(&keys);
	for (unsigned i = 0; i < sizeof(captured) / sizeof(captured[0]); i++)
		assert_int_equal(patroni_keys_put(&keys, captured[i][0], captured[i][1],
						  strlen(captured[i][1])), 0);
}

static void put(const char *k, const char *v)
{
	assert_int_equal(patroni_keys_put(&keys, k, v, strlen(v)), 0);
}

static const struct patroni_member *member(const char *name)
{
	for (unsigned i = 0; i < pc.n; i++)
		if (strcmp(pc.m[i].name, name) == 0)
			return &pc.m[i];
	fail_msg("no member %s", name);
	return NULL;
}

static void healthy_cluster(void **state)
{
	load();
	patroni_parse(&keys, &pc);
	assert_string_equal(pc.leader, "pg1");
	assert_int_equal(pc.n, 3);
	assert_int_equal(pc.optime, 67108864);
	assert_int_equal(member("pg1")->route, PATRONI_PRIMARY);
	assert_string_equal(member("pg1")->host, "127.0.0.1");
	assert_string_equal(member("pg1")->port, "49421");
	assert_int_equal(member("pg2")->route, PATRONI_STANDBY);
	assert_int_equal(member("pg2")->lag_bytes, 0);
	assert_int_equal(member("pg3")->lag_bytes, 67108864 - 67100000);
	assert_false(pc.switchover_pending);
}

static void switchover_windows(void **state)
{
	/* 1. patronictl wrote the failover key: the leader drains */
	load();
	put("failover", "{\"leader\":\"pg1\",\"member\":\"pg2\"}");
	patroni_parse(&keys, &pc);
	assert_true(pc.switchover_pending);
	assert_true(member("pg1")->draining);
	assert_false(member("pg2")->draining);
	/* a scheduled one is not pending now */
	put("failover", "{\"leader\":\"pg1\",\"member\":\"pg2\",\"scheduled_at\":\"2030-01-01T00:00:00+00:00\"}");
	patroni_parse(&keys, &pc);
	assert_false(pc.switchover_pending);
	patroni_keys_del(&keys, "failover");
	/* 2. old leader demoted, leader key deleted: no primary */
	put("members/pg1", "{\"conn_url\":\"postgres://127.0.0.1:49421/postgres\",\"state\":"
			   "\"stopping\",\"role\":\"demoted\"}");
	patroni_keys_del(&keys, "leader");
	patroni_parse(&keys, &pc);
	assert_int_equal(member("pg1")->route, PATRONI_NONE);
	for (unsigned i = 0; i < pc.n; i++)
		assert_int_not_equal(pc.m[i].route, PATRONI_PRIMARY);
	/* 3a. leader key names pg2 whose member key still says replica: promoting */
	put("leader", "pg2");
	patroni_parse(&keys, &pc);
	assert_int_equal(member("pg2")->route, PATRONI_PROMOTING);
	/* a standby_leader holding the key stays a standby (standby cluster) */
	put("members/pg2", "{\"conn_url\":\"postgres://127.0.0.1:39875/postgres\",\"state\":"
			   "\"running\",\"role\":\"standby_leader\"}");
	patroni_parse(&keys, &pc);
	assert_int_equal(member("pg2")->route, PATRONI_STANDBY);
	/* 3b. leader key names pg2, "promoted": primary only once a probe confirms */
	put("leader", "pg2\n");
	put("members/pg2", "{\"conn_url\":\"postgres://127.0.0.1:39875/postgres\",\"state\":"
			   "\"running\",\"role\":\"promoted\"}");
	patroni_parse(&keys, &pc);
	assert_string_equal(pc.leader, "pg2");
	assert_int_equal(member("pg2")->route, PATRONI_PROMOTING);
	/* "promoted" without the leader key is nothing */
	put("members/pg3", "{\"conn_url\":\"postgres://127.0.0.1:58203/postgres\",\"state\":"
			   "\"running\",\"role\":\"promoted\"}");
	patroni_parse(&keys, &pc);
	assert_int_equal(member("pg3")->route, PATRONI_NONE);
	/* 4. pg2 master and running: the primary */
	put("members/pg2", "{\"conn_url\":\"postgres://127.0.0.1:39875/postgres\",\"state\":"
			   "\"running\",\"role\":\"primary\"}");
	patroni_parse(&keys, &pc);
	assert_int_equal(member("pg2")->route, PATRONI_PRIMARY);
	/* a "master" the leader key does not name is never writable */
	put("members/pg1", "{\"conn_url\":\"postgres://127.0.0.1:49421/postgres\",\"state\":"
			   "\"running\",\"role\":\"master\"}");
	patroni_parse(&keys, &pc);
	assert_int_equal(member("pg1")->route, PATRONI_NONE);
}

static void roles_states_tags(void **state)
{
	load();
	put("members/pg3", "{\"conn_url\":\"postgres://127.0.0.1:58203/postgres\",\"state\":"
			   "\"running\",\"role\":\"replica\",\"tags\":{\"noloadbalance\":true,"
			   "\"nofailover\":true}}");
	put("members/pg4", "{\"conn_url\":\"postgresql://[::1]:5440/postgres?sslmode=require\","
			   "\"state\":\"running\",\"role\":\"standby_leader\"}");
	put("members/pg5", "{\"conn_url\":\"postgres://10.0.0.5/postgres\",\"state\":"
			   "\"creating replica\",\"role\":\"replica\"}");
	put("members/pg6", "{\"conn_url\":\"postgres://10.0.0.6:5432/postgres\",\"state\":"
			   "\"running\",\"role\":\"something-new\"}");
	put("members/pg7", "postgres://10.0.0.7:5433/postgres"); /* old bare-URL format */
	put("members/bad", "{not json");
	put("members/nourl", "{\"state\":\"running\",\"role\":\"replica\"}");
	patroni_parse(&keys, &pc);
	assert_true(member("pg3")->noloadbalance);
	assert_true(member("pg3")->nofailover);
	assert_int_equal(member("pg3")->route, PATRONI_STANDBY);
	assert_int_equal(member("pg4")->route, PATRONI_STANDBY); /* standby_leader: never writable */
	assert_string_equal(member("pg4")->host, "::1");
	assert_string_equal(member("pg4")->port, "5440");
	assert_int_equal(member("pg5")->route, PATRONI_NONE);
	assert_string_equal(member("pg5")->port, "5432");
	assert_int_equal(member("pg6")->route, PATRONI_NONE);
	assert_int_equal(member("pg7")->route, PATRONI_STANDBY);
	assert_int_equal(pc.skipped, 2);
	/* legacy optime key when status is missing; lag clamps at 0 */
	patroni_keys_del(&keys, "status");
	put("optime/leader", "100");
	put("members/pg2", "{\"conn_url\":\"postgres://127.0.0.1:1/x\",\"state\":\"running\","
			   "\"role\":\"replica\",\"xlog_location\":150}");
	patroni_parse(&keys, &pc);
	assert_int_equal(pc.optime, 100);
	assert_int_equal(member("pg2")->lag_bytes, 0);
	/* paused cluster */
	put("config", "{\"pause\":true}");
	patroni_parse(&keys, &pc);
	assert_true(pc.paused);
}

static void conn_urls(void **state)
{
	char h[64], p[8];
	assert_int_equal(patroni_parse_conn_url("postgres://h:1/db", h, sizeof(h), p, sizeof(p)), 0);
	assert_string_equal(h, "h");
	assert_string_equal(p, "1");
	assert_int_equal(patroni_parse_conn_url("postgres://[fe80::1]/db", h, sizeof(h), p,
						sizeof(p)), 0);
	assert_string_equal(h, "fe80::1");
	assert_string_equal(p, "5432");
	assert_int_equal(patroni_parse_conn_url("h:1", h, sizeof(h), p, sizeof(p)), -1);
	assert_int_equal(patroni_parse_conn_url("postgres://h:99999/db", h, sizeof(h), p, sizeof(p)),
			 -1);
	assert_int_equal(patroni_parse_conn_url("postgres://[::1/db", h, sizeof(h), p, sizeof(p)), -1);
	assert_int_equal(patroni_parse_conn_url("postgres:///db", h, sizeof(h), p, sizeof(p)), -1);
}

/* GET /cluster from the same Patroni 3.0.2 cluster, mid-switchover (captured) */
static const char rest_switchover[] =
	"{\"members\": [{\"name\": \"pg1\", \"role\": \"replica\", \"state\": \"stopping\", "
	"\"api_url\": \"http://127.0.0.1:54049/patroni\", \"host\": \"127.0.0.1\", \"port\": 37147, "
	"\"lag\": \"unknown\"}, {\"name\": \"pg2\", \"role\": \"leader\", \"state\": \"running\", "
	"\"api_url\": \"http://127.0.0.1:57273/patroni\", \"host\": \"127.0.0.1\", \"port\": 39489, "
	"\"timeline\": 1}, {\"name\": \"pg3\", \"role\": \"replica\", \"state\": \"running\", "
	"\"api_url\": \"http://127.0.0.1:52501/patroni\", \"host\": \"127.0.0.1\", \"port\": 35041, "
	"\"timeline\": 1, \"lag\": 224, \"tags\": {\"noloadbalance\": true}}]}";

static void rest_cluster(void **state)
{
	assert_int_equal(patroni_parse_rest(rest_switchover, strlen(rest_switchover), &pc), 0);
	assert_int_equal(pc.n, 3);
	assert_string_equal(pc.leader, "pg2");
	assert_int_equal(member("pg1")->route, PATRONI_NONE);     /* stopping */
	assert_int_equal(member("pg1")->lag_bytes, -1);           /* "unknown" */
	assert_int_equal(member("pg2")->route, PATRONI_PROMOTING); /* leader: needs its server's word */
	assert_string_equal(member("pg2")->port, "39489");
	assert_int_equal(member("pg3")->route, PATRONI_STANDBY);
	assert_int_equal(member("pg3")->lag_bytes, 224);
	assert_true(member("pg3")->noloadbalance);
	/* newer Patroni: replicas "streaming"; bad input */
	static const char streaming[] = "{\"members\":[{\"name\":\"a\",\"role\":\"sync_standby\","
					"\"state\":\"streaming\",\"host\":\"::1\",\"port\":5432},"
					"{\"name\":\"b\",\"role\":\"replica\",\"state\":\"running\","
					"\"host\":\"h\",\"port\":70000},{\"role\":\"replica\"}],"
					"\"pause\":true}";
	assert_int_equal(patroni_parse_rest(streaming, strlen(streaming), &pc), 0);
	assert_int_equal(pc.n, 1);
	assert_int_equal(pc.skipped, 2);
	assert_true(pc.paused);
	assert_int_equal(member("a")->route, PATRONI_STANDBY);
	assert_int_equal(patroni_parse_rest("[]", 2, &pc), -1);
	assert_int_equal(patroni_parse_rest("{\"members\":", 12, &pc), -1);
}

static int teardown(void **state)
{
	patroni_keys_clear(&keys);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(healthy_cluster),
		cmocka_unit_test(switchover_windows),
		cmocka_unit_test(roles_states_tags),
		cmocka_unit_test(conn_urls),
		cmocka_unit_test(rest_cluster),
	};
	return cmocka_run_group_tests(tests, NULL, teardown);
}
