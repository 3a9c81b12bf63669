/* tests router/select.c: libpq's target_session_attrs over snapshots */
#include "../test.h"

#include <stdlib.h>

#include "router/router.h"

static struct disc_server srv[4];

static struct topology *topo4(void)
{
	/* 0 primary, 1 standby, 2 standby lagging 100 MB, 3 unreachable */
	struct topology *t = topo_new(4, "test");
	for (unsigned i = 0; i < 4; i++) {
		srv[i].id = i;
		atomic_init(&srv[i].sessions, 0);
		t->e[i] = (struct topo_entry){ .srv = &srv[i], .reachable = true, .lag_bytes = 0 };
	}
	t->e[0].role = DISC_ROLE_PRIMARY;
	t->e[1].role = DISC_ROLE_STANDBY;
	t->e[1].in_hot_standby = true;
	t->e[2].role = DISC_ROLE_STANDBY;
	t->e[2].in_hot_standby = true;
	t->e[2].lag_bytes = 100 << 20;
	t->e[3].reachable = false;
	return t;
}

#define MAXLAG (16 << 20)

static unsigned picks(struct topology *t, enum tsa p, enum lb b, unsigned tried_entries)
{
	/* which entries a policy can pick: run it enough times to see them all */
	struct tried *tr = NULL;
	for (unsigned i = 0; i < t->n; i++)
		if (tried_entries >> i & 1)
			assert_true(tried_add(&tr, t->e[i].srv->id));
	atomic_uint rr = 0;
	unsigned mask = 0;
	for (int k = 0; k < 64; k++) {
		int i = select_server(t, p, b, MAXLAG, &rr, tr);
		if (i >= 0)
			mask |= 1u << i;
	}
	tried_clear(&tr);
	assert_null(tr);
	return mask;
}

static void policies(void **state)
{
	struct topology *t = topo4();
	assert_int_equal(picks(t, TSA_ANY, LB_ROUND_ROBIN, 0), 0x7);
	assert_int_equal(picks(t, TSA_READ_WRITE, LB_ROUND_ROBIN, 0), 0x1);
	assert_int_equal(picks(t, TSA_PRIMARY, LB_ROUND_ROBIN, 0), 0x1);
	assert_int_equal(picks(t, TSA_READ_ONLY, LB_ROUND_ROBIN, 0), 0x2); /* 2 lags */
	assert_int_equal(picks(t, TSA_STANDBY, LB_ROUND_ROBIN, 0), 0x2);
	assert_int_equal(picks(t, TSA_PREFER_STANDBY, LB_ROUND_ROBIN, 0), 0x2);
	/* the only good standby refused: prefer-standby falls back to any */
	assert_int_equal(picks(t, TSA_PREFER_STANDBY, LB_ROUND_ROBIN, 1u << 1), 0x5);
	assert_int_equal(picks(t, TSA_STANDBY, LB_ROUND_ROBIN, 1u << 1), 0);
	/* max_lag 0 disables the lag check */
	atomic_uint rr = 0;
	unsigned m = 0;
	for (int k = 0; k < 8; k++)
		m |= 1u << select_server(t, TSA_STANDBY, LB_ROUND_ROBIN, 0, &rr, 0);
	assert_int_equal(m, 0x6);
	topo_release(t);
}

static void read_only_primary(void **state)
{
	/* a primary with default_transaction_read_only=on is read-only, not read-write */
	struct topology *t = topo4();
	t->e[0].default_read_only = true;
	assert_int_equal(picks(t, TSA_READ_WRITE, LB_ROUND_ROBIN, 0), 0);
	assert_int_equal(picks(t, TSA_PRIMARY, LB_ROUND_ROBIN, 0), 0x1);
	assert_int_equal(picks(t, TSA_READ_ONLY, LB_ROUND_ROBIN, 0), 0x3);
	/* unknown role (reachable, not probed): only "any" */
	t->e[1].role = DISC_ROLE_UNKNOWN;
	t->e[1].in_hot_standby = false;
	assert_int_equal(picks(t, TSA_READ_ONLY, LB_ROUND_ROBIN, 0), 0x1);
	assert_int_equal(picks(t, TSA_ANY, LB_ROUND_ROBIN, 0), 0x7);
	/* noloadbalance standbys are not read targets */
	t->e[2].lag_bytes = 0;
	t->e[2].noloadbalance = true;
	assert_int_equal(picks(t, TSA_STANDBY, LB_ROUND_ROBIN, 0), 0);
	topo_release(t);
}

static void balancing(void **state)
{
	struct topology *t = topo4();
	t->e[2].lag_bytes = 0;
	atomic_uint rr = 0;
	int count[4] = { 0 };
	for (int k = 0; k < 100; k++)
		count[select_server(t, TSA_STANDBY, LB_ROUND_ROBIN, MAXLAG, &rr, 0)]++;
	assert_int_equal(count[1], 50);
	assert_int_equal(count[2], 50);
	memset(count, 0, sizeof(count));
	for (int k = 0; k < 1000; k++)
		count[select_server(t, TSA_STANDBY, LB_RANDOM, MAXLAG, &rr, 0)]++;
	assert_true(count[1] > 350 && count[2] > 350);
	/* least-connections goes to the emptier server */
	atomic_store(&srv[1].sessions, 5);
	atomic_store(&srv[2].sessions, 1);
	for (int k = 0; k < 10; k++)
		assert_int_equal(select_server(t, TSA_STANDBY, LB_LEAST_CONNECTIONS, MAXLAG, &rr, 0), 2);
	atomic_store(&srv[2].sessions, 5);
	memset(count, 0, sizeof(count));
	for (int k = 0; k < 10; k++)
		count[select_server(t, TSA_STANDBY, LB_LEAST_CONNECTIONS, MAXLAG, &rr, 0)]++;
	assert_int_equal(count[1], 5); /* ties share */
	topo_release(t);
}

static void params(void **state)
{
	assert_true(select_params_fit(TSA_READ_WRITE, 0, 0));
	assert_false(select_params_fit(TSA_READ_WRITE, 1, 0));
	assert_false(select_params_fit(TSA_READ_WRITE, 0, 1));
	assert_true(select_params_fit(TSA_READ_ONLY, 0, 1));
	assert_false(select_params_fit(TSA_READ_ONLY, 0, 0));
	assert_true(select_params_fit(TSA_PRIMARY, 0, 1));
	assert_false(select_params_fit(TSA_PRIMARY, 1, 1));
	assert_true(select_params_fit(TSA_STANDBY, 1, 1));
	assert_false(select_params_fit(TSA_STANDBY, 0, 0));
	assert_true(select_params_fit(TSA_PREFER_STANDBY, 0, 0));
	assert_true(select_params_fit(TSA_ANY, 1, 1));
	/* not reported (old server): trust the topology */
	assert_true(select_params_fit(TSA_READ_WRITE, -1, -1));
}

static void draining_and_still_fits(void **state)
{
	struct topology *t = topo4();
	/* a draining primary takes no new session, but its sessions still fit */
	t->e[0].draining = true;
	assert_int_equal(picks(t, TSA_READ_WRITE, LB_ROUND_ROBIN, 0), 0);
	assert_int_equal(picks(t, TSA_ANY, LB_ROUND_ROBIN, 0), 0x6);
	assert_true(select_still_fits(TSA_READ_WRITE, &t->e[0]));
	/* lag and noloadbalance steer new sessions only */
	t->e[2].noloadbalance = true;
	assert_true(select_still_fits(TSA_STANDBY, &t->e[2]));
	/* a demoted primary no longer fits writers; it fits readers and any */
	t->e[0].in_hot_standby = true;
	t->e[0].role = DISC_ROLE_STANDBY;
	assert_false(select_still_fits(TSA_READ_WRITE, &t->e[0]));
	assert_false(select_still_fits(TSA_PRIMARY, &t->e[0]));
	assert_true(select_still_fits(TSA_READ_ONLY, &t->e[0]));
	assert_true(select_still_fits(TSA_ANY, &t->e[0]));
	/* a promoted standby no longer fits standby sessions */
	t->e[1].in_hot_standby = false;
	t->e[1].role = DISC_ROLE_PRIMARY;
	assert_false(select_still_fits(TSA_STANDBY, &t->e[1]));
	assert_true(select_still_fits(TSA_PREFER_STANDBY, &t->e[1]));
	/* an unreachable server fits nobody */
	assert_false(select_still_fits(TSA_ANY, &t->e[3]));
	assert_true(tsa_writes(TSA_READ_WRITE) && tsa_writes(TSA_PRIMARY));
	assert_false(tsa_writes(TSA_PREFER_STANDBY));
	topo_release(t);
}

/* Sessions that can move leave a standby lagging past max_lag, when another
 * standby takes them. */
static void lagging_and_other(void **state)
{
	struct topology *t = topo4();
	assert_true(select_lagging(TSA_STANDBY, &t->e[2], MAXLAG));
	assert_true(select_lagging(TSA_READ_ONLY, &t->e[2], MAXLAG));
	assert_true(select_lagging(TSA_PREFER_STANDBY, &t->e[2], MAXLAG));
	assert_false(select_lagging(TSA_ANY, &t->e[2], MAXLAG)); /* lag does not matter there */
	assert_false(select_lagging(TSA_STANDBY, &t->e[1], MAXLAG));
	assert_false(select_lagging(TSA_STANDBY, &t->e[2], 0)); /* max_lag = 0: no limit */
	assert_true(select_other_eligible(t, TSA_STANDBY, MAXLAG, &srv[2]));   /* 1 */
	assert_false(select_other_eligible(t, TSA_STANDBY, MAXLAG, &srv[1]));  /* 2 lags */
	assert_false(select_other_eligible(t, TSA_PREFER_STANDBY, MAXLAG, &srv[1]));
	assert_true(select_other_eligible(t, TSA_READ_WRITE, MAXLAG, &srv[1])); /* 0 */
	assert_false(select_other_eligible(t, TSA_READ_WRITE, MAXLAG, &srv[0]));
	topo_release(t);
}

static void describe(void **state)
{
	struct topology *t = topo4();
	char buf[160];
	select_describe(t, buf, sizeof(buf));
	assert_string_equal(buf, "4 known, 3 reachable, 1 primary, 2 standby");
	topo_release(t);
}

static void tried_by_id(void **state)
{
	/* server ids only grow: one past 64 is remembered like any other */
	struct topology *t = topo4();
	srv[1].id = 1000;
	assert_int_equal(picks(t, TSA_STANDBY, LB_ROUND_ROBIN, 0), 0x2);
	assert_int_equal(picks(t, TSA_STANDBY, LB_ROUND_ROBIN, 1u << 1), 0);
	struct tried *tr = NULL; /* made by the first refusal */
	for (uint32_t id = 0; id < TRIED_MAX; id++)
		assert_true(tried_add(&tr, 2000 + id));
	assert_non_null(tr);
	assert_true(tried_add(&tr, 2000)); /* already there */
	assert_false(tried_add(&tr, 1000)); /* full */
	tried_clear(&tr);
	srv[1].id = 1;
	topo_release(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(policies),  cmocka_unit_test(read_only_primary), cmocka_unit_test(tried_by_id),
		cmocka_unit_test(balancing), cmocka_unit_test(params),
		cmocka_unit_test(lagging_and_other), cmocka_unit_test(describe),   cmocka_unit_test(draining_and_still_fits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
