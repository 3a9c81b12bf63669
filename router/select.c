/*
 * select.c — libpq's target_session_attrs over a topology snapshot.
 *
 * The meaning of each policy is libpq's (PostgreSQL 14+):
 *   any             every reachable server
 *   read-write      not in hot standby and default_transaction_read_only off
 *   read-only       in hot standby or default_transaction_read_only on
 *   primary         not in hot standby
 *   standby         in hot standby
 *   prefer-standby  standby if one is eligible, else any
 * Standbys lagging more than max_lag, or tagged noloadbalance, are not
 * eligible where a standby is asked for (read-only, standby, prefer-standby).
 */
#include <stdio.h>
#include <stdlib.h>

#include "router/router.h"

static bool standby_usable(const struct topo_entry *e, int64_t max_lag)
{
	if (e->noloadbalance)
		return false;
	return max_lag <= 0 || e->lag_bytes < 0 || e->lag_bytes <= max_lag;
}

bool select_eligible(enum tsa t, const struct topo_entry *e, int64_t max_lag)
{
	if (!e->reachable || e->draining || e->admin != DISC_ADMIN_READY)
		return false;
	bool known = e->role != DISC_ROLE_UNKNOWN;
	switch (t) {
	case TSA_ANY:
		return true;
	case TSA_READ_WRITE:
		return known && !e->in_hot_standby && !e->default_read_only;
	case TSA_READ_ONLY:
		if (!known)
			return false;
		if (e->in_hot_standby)
			return standby_usable(e, max_lag);
		return e->default_read_only;
	case TSA_PRIMARY:
		return known && !e->in_hot_standby;
	case TSA_STANDBY:
	case TSA_PREFER_STANDBY: /* first pass; select_server falls back to any */
		return known && e->in_hot_standby && standby_usable(e, max_lag);
	}
	return false;
}

bool select_still_fits(enum tsa t, const struct topo_entry *e)
{
	if (!e->reachable)
		return false;
	switch (t) {
	case TSA_ANY:
	case TSA_PREFER_STANDBY:
		return true;
	case TSA_READ_WRITE:
		return e->role != DISC_ROLE_UNKNOWN && !e->in_hot_standby && !e->default_read_only;
	case TSA_READ_ONLY:
		return e->role != DISC_ROLE_UNKNOWN && (e->in_hot_standby || e->default_read_only);
	case TSA_PRIMARY:
		return e->role != DISC_ROLE_UNKNOWN && !e->in_hot_standby;
	case TSA_STANDBY:
		return e->role != DISC_ROLE_UNKNOWN && e->in_hot_standby;
	}
	return false;
}

bool select_lagging(enum tsa t, const struct topo_entry *e, int64_t max_lag)
{
	bool standby_policy = t == TSA_READ_ONLY || t == TSA_STANDBY || t == TSA_PREFER_STANDBY;
	return standby_policy && e->in_hot_standby && max_lag > 0 && e->lag_bytes > max_lag;
}

bool select_other_eligible(const struct topology *topo, enum tsa t, int64_t max_lag,
			   const struct disc_server *srv)
{
	for (unsigned i = 0; topo && i < topo->n; i++)
		if (topo->e[i].srv != srv && select_eligible(t, &topo->e[i], max_lag))
			return true;
	return false;
}

bool tsa_writes(enum tsa t)
{
	return t == TSA_READ_WRITE || t == TSA_PRIMARY;
}

bool tried_has(const struct tried *tr, uint32_t id)
{
	for (unsigned i = 0; tr && i < tr->n; i++)
		if (tr->id[i] == id)
			return true;
	return false;
}

bool tried_add(struct tried **trp, uint32_t id)
{
	struct tried *tr = *trp;
	if (tried_has(tr, id))
		return true;
	if (!tr && !(tr = *trp = calloc(1, sizeof(*tr))))
		return false;
	if (tr->n == TRIED_MAX)
		return false;
	tr->id[tr->n++] = id;
	return true;
}

void tried_clear(struct tried **trp)
{
	free(*trp);
	*trp = NULL;
}

static int pick(const struct topology *topo, enum tsa t, enum lb b, int64_t max_lag,
		atomic_uint *rr, const struct tried *tried)
{
	int cand[CONFIG_MAX_SERVERS * 4];
	unsigned n = 0;
	for (unsigned i = 0; i < topo->n && n < sizeof(cand) / sizeof(cand[0]); i++)
		if (select_eligible(t, &topo->e[i], max_lag) && !tried_has(tried, topo->e[i].srv->id))
			cand[n++] = (int)i;
	if (n == 0)
		return -1;
	if (n == 1)
		return cand[0];
	switch (b) {
	case LB_RANDOM:
		return cand[(unsigned)random() % n];
	case LB_LEAST_CONNECTIONS: {
		/* ties go round-robin so equal servers share new sessions */
		unsigned start = atomic_fetch_add_explicit(rr, 1, memory_order_relaxed) % n;
		int best = -1, best_load = 0;
		for (unsigned k = 0; k < n; k++) {
			int i = cand[(start + k) % n];
			int load = atomic_load_explicit(&topo->e[i].srv->sessions, memory_order_relaxed);
			if (best < 0 || load < best_load) {
				best = i;
				best_load = load;
			}
		}
		return best;
	}
	case LB_ROUND_ROBIN:
	default:
		return cand[atomic_fetch_add_explicit(rr, 1, memory_order_relaxed) % n];
	}
}

int select_server(const struct topology *topo, enum tsa t, enum lb b, int64_t max_lag,
		  atomic_uint *rr, const struct tried *tried)
{
	if (!topo)
		return -1;
	int i = pick(topo, t, b, max_lag, rr, tried);
	if (i < 0 && t == TSA_PREFER_STANDBY)
		i = pick(topo, TSA_ANY, b, max_lag, rr, tried);
	return i;
}

bool select_params_fit(enum tsa t, int hot_standby, int read_only)
{
	/* a server too old to report these is judged by the topology alone */
	switch (t) {
	case TSA_ANY:
	case TSA_PREFER_STANDBY:
		return true;
	case TSA_READ_WRITE:
		return hot_standby != 1 && read_only != 1;
	case TSA_READ_ONLY:
		return hot_standby != 0 || read_only != 0;
	case TSA_PRIMARY:
		return hot_standby != 1;
	case TSA_STANDBY:
		return hot_standby != 0;
	}
	return false;
}

void select_describe(const struct topology *topo, char *buf, size_t len)
{
	unsigned known = topo ? topo->n : 0, reachable = 0, primary = 0, standby = 0;
	for (unsigned i = 0; i < known; i++) {
		const struct topo_entry *e = &topo->e[i];
		if (!e->reachable)
			continue;
		reachable++;
		if (e->role == DISC_ROLE_PRIMARY)
			primary++;
		else if (e->role == DISC_ROLE_STANDBY)
			standby++;
	}
	snprintf(buf, len, "%u known, %u reachable, %u primary, %u standby%s", known, reachable,
		 primary, standby, topo && topo->stale ? ", cluster state stale" : "");
}
