/* tests discovery/topology.c: publication and the server registry */
#include "../test.h"

#include "discovery/discovery.h"

static int woken;
static void wake(void *arg)
{
	(*(int *)arg)++;
}

static struct topology *one(struct disc_server *s, bool reachable, int64_t lag)
{
	struct topology *t = topo_new(1, "test");
	t->e[0] = (struct topo_entry){ .srv = s, .reachable = reachable, .lag_bytes = lag,
				       .role = DISC_ROLE_STANDBY, .in_hot_standby = true };
	return t;
}

static void publish(void **state)
{
	char err[128];
	struct disc_server *s = disc_server_get("127.0.0.1", "5432", err, sizeof(err));
	assert_non_null(s);
	assert_ptr_equal(disc_server_get("127.0.0.1", "5432", err, sizeof(err)), s);
	assert_string_equal(s->name, "127.0.0.1:5432");
	struct disc_server *v6 = disc_server_get("::1", "5433", err, sizeof(err));
	assert_non_null(v6);
	assert_string_equal(v6->name, "[::1]:5433");
	assert_null(disc_server_get("no-such-host.invalid", "1", err, sizeof(err)));

	topo_subscribe(wake, &woken);
	assert_true(topo_publish(one(s, true, 10), 1000));
	assert_int_equal(woken, 1);
	uint64_t g = topo_generation();
	struct topology *held = topo_acquire();
	/* same routing view (lag changed but still under max_lag): not published */
	assert_false(topo_publish(one(s, true, 20), 1000));
	assert_int_equal(woken, 1);
	assert_int_equal(topo_generation(), g);
	/* lag crosses max_lag: published */
	assert_true(topo_publish(one(s, true, 2000), 1000));
	assert_int_equal(woken, 2);
	/* the held snapshot is still the old one, intact */
	assert_int_equal(held->e[0].lag_bytes, 10);
	struct topology *cur = topo_acquire();
	assert_int_equal(cur->e[0].lag_bytes, 2000);
	assert_true(cur->generation > held->generation);
	topo_release(cur);
	topo_release(held);
	assert_true(topo_publish(one(s, false, -1), 1000));
	assert_int_equal(woken, 3);
	topo_reset();
	disc_servers_free();
}

int main(void)
{
	const struct CMUnitTest tests[] = { cmocka_unit_test(publish) };
	return cmocka_run_group_tests(tests, NULL, NULL);
}
