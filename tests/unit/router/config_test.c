/* tests router/config.c */
#include "../test.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "router/router.h"

static char path[64];

static int load(const char *text, struct config *c, char *err)
{
	strcpy(path, "/tmp/pgrouter-config-test-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	int rc = config_load(path, c, err, 512);
	unlink(path);
	return rc;
}

static const char good[] = "[pgrouter]\n"
			   "workers = 3            ; comment\n"
			   "worker_busy_limit = 50\n"
			   "log_level = debug\n"
			   "connect_timeout = 250ms\n"
			   "queue_timeout = 1m\n"
			   "max_client_conn = 50\n"
			   "[cluster]\n"
			   "source = static\n"
			   "servers = 127.0.0.1:5432, [::1]:5433 ,db3\n"
			   "probe_interval = 2s\n"
			   "max_lag = 4MB\n"
			   "[listener rw]\n"
			   "listen = 127.0.0.1:6432\n"
			   "target_session_attrs = read-write\n"
			   "load_balance = least-connections\n"
			   "[listener ro]\n"
			   "listen = 127.0.0.1:6433\n"
			   "target_session_attrs = prefer-standby\n";

static void loads(void **state)
{
	static struct config c;
	char err[512];
	assert_int_equal(load(good, &c, err), 0);
	assert_int_equal(c.workers, 3);
	assert_int_equal(c.worker_busy_limit, 50);
	assert_true(c.worker_packing); /* default */
	assert_true(c.io_uring);       /* default */
	assert_false(c.debug_worker_shuffle);
	assert_int_equal(c.log_level, LOG_DEBUG);
	assert_int_equal(c.connect_timeout_ms, 250);
	assert_int_equal(c.queue_timeout_ms, 60000);
	assert_int_equal(c.startup_timeout_ms, 10000); /* default */
	assert_int_equal(c.max_client_conn, 50);
	assert_int_equal(c.nservers, 3);
	assert_string_equal(c.servers[1].host, "::1");
	assert_string_equal(c.servers[1].port, "5433");
	assert_string_equal(c.servers[2].host, "db3");
	assert_string_equal(c.servers[2].port, "5432");
	assert_int_equal(c.probe_interval_ms, 2000);
	assert_int_equal(c.max_lag, 4 << 20);
	assert_int_equal(c.nlisteners, 2);
	assert_string_equal(c.listeners[0].name, "rw");
	assert_int_equal(c.listeners[0].tsa, TSA_READ_WRITE);
	assert_int_equal(c.listeners[0].lb, LB_LEAST_CONNECTIONS);
	assert_int_equal(c.listeners[1].tsa, TSA_PREFER_STANDBY);
	assert_int_equal(c.listeners[1].lb, LB_ROUND_ROBIN);
}

static void expect_error(const char *text, const char *want)
{
	static struct config c;
	char err[512];
	assert_int_equal(load(text, &c, err), -1);
	/* the message starts with the file name; compare what follows it */
	const char *rest = err + strlen(path);
	if (strncmp(rest, want, strlen(want)) != 0)
		fail_msg("got \"%s\", want \"%s...\"", rest, want);
}

static void errors(void **state)
{
	expect_error("[pgrouter]\nworkers = 0\n", ":2: workers: must be an integer 1..256");
	expect_error("[pgrouter]\nworker_busy_limit = 5\n",
		     ":2: worker_busy_limit: must be a percentage 10..100");
	expect_error("[pgrouter]\nworker_packing = maybe\n", ":2: worker_packing: must be on or off");
	expect_error("[pgrouter]\nio_uring = maybe\n", ":2: io_uring: must be on or off");
	expect_error("[pgrouter]\n\nconnect_timeout = 3 fortnights\n",
		     ":3: connect_timeout: invalid duration");
	expect_error("[pgrouter]\nlog_levle = info\n", ":2: log_levle: unknown key in [pgrouter]");
	expect_error("[cluster]\nservers = 127.0.0.1:99999\n", ":2: servers: \"127.0.0.1:99999\"");
	expect_error("[cluster]\nservers = ::1:5432\n", ":2: servers: \"::1:5432\": IPv6");
	expect_error("[cluster]\nsource = consul\n", ":2: source: unknown source");
	expect_error("[cluster]\nservers = a\n[listener x]\nlisten = 127.0.0.1:1\n"
		     "target_session_attrs = writable\n",
		     ":5: target_session_attrs: must be any");
	expect_error("[cluster]\nservers = a\n[listener x]\nlisten = 127.0.0.1:1\n"
		     "[listener y]\nlisten = 127.0.0.1:1\n",
		     ":6: listen: 127.0.0.1:1 is also [listener x]");
	expect_error("[cluster]\nservers = a\n", ":2: listener: no [listener NAME] section");
	expect_error("[cluster]\nservers = a\nprobe_interval = 0\n[listener x]\nlisten = :1\n",
		     ":5: listen: \":1\": missing");
	expect_error("[cluster]\nservers = a\nprobe_interval = 0\n[listener x]\nlisten = h:1\n",
		     ":3: probe_interval: source = static learns roles only by probing");
	expect_error("this is not ini\n", ":1: syntax");
	expect_error("[weird]\nx = 1\n", ":2: x: unknown section [weird]");
}

static void moving_keys(void **state)
{
	static struct config c;
	char err[512];
	assert_int_equal(load(good, &c, err), 0);
	assert_int_equal(c.drain_timeout_ms, 5000); /* defaults */
	assert_int_equal(c.inspect_idle_ms, 1000);
	assert_string_equal(c.move_custom_settings, "");
	assert_int_equal(load("[pgrouter]\ndrain_timeout = 2s\ninspect_idle = 0\n"
			      "move_custom_settings = app.tenant, my_app.user_id\n"
			      "[cluster]\nservers = a\n[listener x]\nlisten = 127.0.0.1:1\n",
			      &c, err),
			 0);
	assert_int_equal(c.drain_timeout_ms, 2000);
	assert_int_equal(c.inspect_idle_ms, 0);
	assert_string_equal(c.move_custom_settings, "app.tenant, my_app.user_id");
	/* names go into SQL: nothing that could quote or end a string */
	expect_error("[pgrouter]\nmove_custom_settings = app.x'); drop table t; --\n",
		     ":2: move_custom_settings: must be a comma-separated list");
	expect_error("[pgrouter]\ndrain_timeout = soon\n", ":2: drain_timeout: invalid duration");
}

static void admin_keys(void **state)
{
	static struct config c;
	char err[512];
	assert_int_equal(load(good, &c, err), 0);
	assert_string_equal(c.http_host, ""); /* off */
	assert_int_equal(c.ready_max_stale_ms, 30000);
	assert_int_equal(load("[admin]\nhttp_listen = 127.0.0.1\nready_max_stale = 5s\n"
			      "[cluster]\nservers = a\n[listener x]\nlisten = 127.0.0.1:1\n",
			      &c, err),
			 0);
	assert_string_equal(c.http_host, "127.0.0.1");
	assert_string_equal(c.http_port, "9930");
	assert_int_equal(c.ready_max_stale_ms, 5000);
	expect_error("[admin]\nhttp_listen = 127.0.0.1:99999\n", ":2: http_listen: \"127.0.0.1:99999\"");
	expect_error("[admin]\nhttp = 1\n", ":2: http: unknown key in [admin]");
	expect_error("[pgrouter]\nlog_format = xml\n", ":2: log_format: must be text or json");
}

static void etcd_source(void **state)
{
	static struct config c;
	char err[512];
	assert_int_equal(load("[pgrouter]\nshed_grace = 2s\n[cluster]\nsource = etcd\n"
			      "etcd_endpoints = http://127.0.0.1:2379/, https://10.0.0.2:2379\n"
			      "scope = demo\n[listener rw]\nlisten = 127.0.0.1:6432\n",
			      &c, err),
			 0);
	assert_int_equal(c.shed_grace_ms, 2000);
	assert_string_equal(c.source, "etcd");
	assert_int_equal(c.netcd, 2);
	assert_string_equal(c.etcd_endpoints[0], "http://127.0.0.1:2379");
	assert_string_equal(c.namespace_, "/service/");
	assert_string_equal(c.scope, "demo");
	assert_int_equal(load("[cluster]\nsource = patroni\npatroni_urls = http://a:8008, http://b:8008/\n"
			      "poll_interval = 250ms\n[listener rw]\nlisten = 127.0.0.1:6432\n",
			      &c, err),
			 0);
	assert_int_equal(c.npatroni, 2);
	assert_string_equal(c.patroni_urls[1], "http://b:8008");
	assert_int_equal(c.poll_interval_ms, 250);
	assert_int_equal(load("[cluster]\nsource = zookeeper\nscope = demo\nzookeeper_hosts = "
			      "127.0.0.1:2181, 127.0.0.1:2182/chroot\nzookeeper_session_timeout = 4s\n"
			      "[listener rw]\nlisten = 127.0.0.1:6432\n",
			      &c, err),
			 0);
	assert_int_equal(c.nzk, 2);
	assert_string_equal(c.zk_hosts[1], "127.0.0.1:2182/chroot");
	assert_int_equal(c.zk_session_timeout_ms, 4000);
	expect_error("[cluster]\nsource = zookeeper\nscope = d\nzookeeper_hosts = zk1\n",
		     ":4: zookeeper_hosts: \"zk1\": needs host:port");
	expect_error("[cluster]\nsource = zookeeper\nzookeeper_hosts = a:1\n[listener x]\nlisten = h:1\n",
		     ":2: scope: source = zookeeper needs the Patroni scope");
	expect_error("[cluster]\nsource = patroni\n[listener x]\nlisten = h:1\n",
		     ":2: patroni_urls: source = patroni needs");
	expect_error("[cluster]\nsource = etcd\n[listener x]\nlisten = h:1\n",
		     ":2: scope: source = etcd needs the Patroni scope");
	expect_error("[cluster]\nsource = etcd\netcd_endpoints = 127.0.0.1:2379\n",
		     ":3: etcd_endpoints: \"127.0.0.1:2379\": must start with http://");
	expect_error("[cluster]\nsource = etcd\nscope = d\netcd_cacert = /nonexistent/ca.pem\n",
		     ":4: etcd_cacert: cannot read /nonexistent/ca.pem");
	expect_error("[cluster]\nsource = etcd\nscope = d\nservers = a\n[listener x]\n"
		     "listen = h:1\n",
		     ":4: servers: source = etcd finds servers itself");
}

/* client_tls*: [pgrouter] gives the defaults, a listener's own keys win */
static void tls_keys(void **state)
{
	static struct config c;
	char err[512];
	/* any readable file passes the parser; tls.c loads them */
	assert_int_equal(load("[pgrouter]\nclient_tls = allow\nclient_tls_cert = /etc/hostname\n"
			      "client_tls_key = /etc/hostname\nclient_tls_min_version = TLSv1.3\n"
			      "server_tls = verify-full\nserver_tls_ca = /etc/hostname\n"
			      "[cluster]\nservers = a\n"
			      "[listener a]\nlisten = h:1\nclient_tls = require\n"
			      "[listener b]\nlisten = h:2\nclient_tls_ciphers = HIGH\n"
			      "[listener c]\nlisten = h:3\nclient_tls = disable\n",
			      &c, err),
			 0);
	assert_int_equal(c.listeners[0].tls.mode, CLIENT_TLS_REQUIRE);
	assert_int_equal(c.listeners[0].tls.line[TK_MODE], 12);
	assert_string_equal(c.listeners[0].tls.cert, "/etc/hostname");
	assert_int_equal(c.listeners[0].tls.line[TK_CERT], 3); /* inherited, with its line */
	assert_string_equal(c.listeners[0].tls.min_version, "TLSv1.3");
	assert_int_equal(c.listeners[1].tls.mode, CLIENT_TLS_ALLOW);
	assert_string_equal(c.listeners[1].tls.ciphers, "HIGH");
	assert_string_equal(c.listeners[0].tls.ciphers, "");
	assert_int_equal(c.listeners[2].tls.mode, CLIENT_TLS_DISABLE);
	assert_int_equal(c.server_tls, SERVER_TLS_VERIFY_FULL);
	assert_string_equal(c.server_tls_ca, "/etc/hostname");
	/* defaults: no TLS either way, TLS 1.2 at least */
	assert_int_equal(load(good, &c, err), 0);
	assert_int_equal(c.listeners[0].tls.mode, CLIENT_TLS_DISABLE);
	assert_string_equal(c.listeners[0].tls.min_version, "TLSv1.2");
	assert_int_equal(c.server_tls, SERVER_TLS_DISABLE);

	expect_error("[pgrouter]\nclient_tls = on\n", ":2: client_tls: must be disable, allow or require");
	expect_error("[pgrouter]\nclient_tls_cert = /nonexistent.crt\n",
		     ":2: client_tls_cert: cannot read /nonexistent.crt");
	expect_error("[cluster]\nservers = a\n[listener x]\nlisten = h:1\nclient_tls = require\n",
		     ":5: client_tls: client_tls = require needs client_tls_cert and client_tls_key "
		     "(listener x)");
	expect_error("[cluster]\nservers = a\n[listener x]\nlisten = h:1\nclient_tls_ca = /nope\n",
		     ":5: client_tls_ca: cannot read /nope");
	expect_error("[pgrouter]\nserver_tls = verify\n",
		     ":2: server_tls: must be disable, prefer, require, verify-ca or verify-full");
	expect_error("[pgrouter]\nserver_tls = verify-ca\n[cluster]\nservers = a\n[listener x]\n"
		     "listen = h:1\n",
		     ":2: server_tls: verify-ca needs server_tls_ca");
	expect_error("[pgrouter]\nserver_tls_cert = /etc/hostname\n[cluster]\nservers = a\n"
		     "[listener x]\nlisten = h:1\n",
		     ":2: server_tls_cert: set both server_tls_cert and server_tls_key");
}

static void units(void **state)
{
	unsigned ms;
	int64_t b;
	assert_int_equal(parse_duration_ms("1.5s", &ms), 0);
	assert_int_equal(ms, 1500);
	assert_int_equal(parse_duration_ms("0", &ms), 0);
	assert_int_equal(ms, 0);
	assert_int_equal(parse_duration_ms("10", &ms), -1);
	assert_int_equal(parse_duration_ms("-1s", &ms), -1);
	assert_int_equal(parse_size("512kB", &b), 0);
	assert_int_equal(b, 512 * 1024);
	assert_int_equal(parse_size("1GB", &b), 0);
	assert_int_equal(b, 1 << 30);
	assert_int_equal(parse_size("12 parsecs", &b), -1);
}

static void auth_and_pool_keys(void **state)
{
	static struct config c;
	char err[512];
	static const char listeners[] = "[cluster]\nservers = 127.0.0.1\n"
					"[listener a]\nlisten = 127.0.0.1:6000\n"
					"[listener b]\nlisten = 127.0.0.1:6001\nauth = passthrough\n";
	/* defaults: passthrough, no pool */
	char text[1024];
	snprintf(text, sizeof(text), "%s", listeners);
	assert_int_equal(load(text, &c, err), 0);
	assert_int_equal(c.listeners[0].auth, AUTH_PASSTHROUGH);
	assert_int_equal(c.listeners[0].pool_mode, POOL_NONE);
	assert_int_equal(c.auth_cache_ttl_ms, 60000);
	assert_int_equal(c.pool_size, 20);
	assert_string_equal(c.server_reset_query, "DISCARD ALL");
	assert_string_equal(c.auth_user, "postgres"); /* probe_user */
	assert_true(strstr(c.auth_query, "pg_authid") != NULL);
	/* auth_query set: auth = router becomes the default, listeners may opt out */
	snprintf(text, sizeof(text),
		 "[pgrouter]\nauth_query = SELECT u, p FROM f($1)\npool_mode = session\n"
		 "pool_size = 5\nserver_idle_timeout = 30s\nserver_lifetime = 0\n"
		 "auth_cache_ttl = 5s\n%s",
		 "[cluster]\nservers = 127.0.0.1\nprobe_user = mon\nprobe_password = x\n"
		 "[listener a]\nlisten = 127.0.0.1:6000\npool_size = 9\n"
		 "[listener b]\nlisten = 127.0.0.1:6001\npool_mode = none\n");
	assert_int_equal(load(text, &c, err), 0);
	assert_int_equal(c.listeners[0].auth, AUTH_ROUTER);
	assert_int_equal(c.listeners[0].pool_mode, POOL_SESSION);
	assert_int_equal(c.listeners[0].pool_size, 9);
	assert_int_equal(c.listeners[1].pool_mode, POOL_NONE);
	assert_int_equal(c.listeners[1].pool_size, 5);
	assert_int_equal(c.server_idle_timeout_ms, 30000);
	assert_int_equal(c.server_lifetime_ms, 0);
	assert_int_equal(c.auth_cache_ttl_ms, 5000);
	assert_string_equal(c.auth_user, "mon");
	assert_string_equal(c.auth_password, "x");
	/* a pool needs pgrouter to have authenticated the client */
	snprintf(text, sizeof(text), "[pgrouter]\npool_mode = session\n%s", listeners);
	assert_int_equal(load(text, &c, err), -1);
	assert_true(strstr(err, ":2: pool_mode: pool_mode = session needs auth = router on "
				"listener a") != NULL);
	snprintf(text, sizeof(text), "[pgrouter]\npool_size = 0\n%s", listeners);
	assert_int_equal(load(text, &c, err), -1);
	assert_true(strstr(err, ":2: pool_size: must be an integer") != NULL);
	snprintf(text, sizeof(text), "[pgrouter]\npool_mode = transaction\n%s", listeners);
	assert_int_equal(load(text, &c, err), -1);
	assert_true(strstr(err, ":2: pool_mode: must be none or session") != NULL);
	snprintf(text, sizeof(text), "[pgrouter]\nauth_query = select 1\n%s", listeners);
	assert_int_equal(load(text, &c, err), -1);
	assert_true(strstr(err, ":2: auth_query: must take the user name as $1") != NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = { cmocka_unit_test(loads), cmocka_unit_test(errors),
					    cmocka_unit_test(auth_and_pool_keys),
					    cmocka_unit_test(moving_keys),
					    cmocka_unit_test(admin_keys),
		cmocka_unit_test(etcd_source),
					    cmocka_unit_test(tls_keys),
					    cmocka_unit_test(units) };
	return cmocka_run_group_tests(tests, NULL, NULL);
}
