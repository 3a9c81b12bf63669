/*
 * cluster.c — one source's view of the cluster, checked by SQL probes, turned
 * into published snapshots.
 *
 * A source (static list, etcd, ZooKeeper, Patroni REST) says which servers
 * exist and, for a DCS, which role each has. The probes give a second opinion:
 *   - static source: roles come from the probes alone;
 *   - DCS source: the DCS decides roles; a probe that finds a server
 *     unreachable, or in recovery, makes it ineligible for writes at once.
 * When the DCS changes a server's role, the probe's older answer is dropped
 * and the server is probed again at once, so a promotion is not held back by a
 * probe taken before it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/internal.h"

struct member {
	struct disc_view_entry v;
	struct probe *probe;
	struct probe_result last;
	bool probed;    /* last holds a result taken under the current DCS role */
	bool probes_on; /* probe_interval > 0 */
};

struct disc_cluster {
	struct event_base *base;
	const char *source;
	const struct disc_probe_config *pc;
	bool roles_from_probes;
	bool stale;
	bool hold_empty; /* taken over at a reload: an empty view is not published */
	unsigned n, cap;
	struct member *m;
};

static struct member *member_of(struct disc_cluster *c, const struct disc_server *srv)
{
	for (unsigned i = 0; i < c->n; i++)
		if (c->m[i].v.srv == srv)
			return &c->m[i];
	return NULL;
}

static void fill_from_probes(struct topo_entry *e, const struct member *m, int64_t primary_wal)
{
	const struct probe_result *r = &m->last;
	e->reachable = m->probed && r->reachable;
	if (!e->reachable) {
		e->role = DISC_ROLE_UNKNOWN;
		return;
	}
	e->in_hot_standby = r->in_hot_standby;
	e->default_read_only = r->default_read_only;
	e->role = r->in_hot_standby ? DISC_ROLE_STANDBY : DISC_ROLE_PRIMARY;
	if (r->in_hot_standby && primary_wal >= 0 && r->wal_bytes >= 0)
		e->lag_bytes = primary_wal > r->wal_bytes ? primary_wal - r->wal_bytes : 0;
}

static void fill_from_dcs(struct topo_entry *e, const struct member *m, int64_t primary_wal)
{
	const struct probe_result *r = &m->last;
	bool probe_says = m->probed && m->probes_on;
	e->role = m->v.role;
	e->reachable = m->v.routable && (!probe_says || r->reachable);
	if (m->v.needs_probe && !(probe_says && r->reachable && !r->in_hot_standby)) {
		/* promoting: not a primary until its own server says so */
		e->reachable = false;
		return;
	}
	e->in_hot_standby = m->v.role != DISC_ROLE_PRIMARY ||
			    (probe_says && r->reachable && r->in_hot_standby);
	e->default_read_only = probe_says && r->reachable && r->default_read_only;
	e->lag_bytes = m->v.lag_bytes;
	if (probe_says && r->reachable && r->in_hot_standby && primary_wal >= 0 &&
	    r->wal_bytes >= 0)
		e->lag_bytes = primary_wal > r->wal_bytes ? primary_wal - r->wal_bytes : 0;
}

static void publish(struct disc_cluster *c)
{
	struct topology *t = topo_new(c->n, c->source);
	if (!t)
		return;
	t->stale = c->stale;
	/* lag is measured against the primary's WAL position from its latest probe */
	int64_t primary_wal = -1;
	unsigned primaries = 0;
	for (unsigned i = 0; i < c->n; i++) {
		const struct member *m = &c->m[i];
		if (m->probed && m->last.reachable && !m->last.in_hot_standby &&
		    (c->roles_from_probes || m->v.role == DISC_ROLE_PRIMARY)) {
			primaries++;
			primary_wal = m->last.wal_bytes;
		}
	}
	if (primaries != 1)
		primary_wal = -1;
	for (unsigned i = 0; i < c->n; i++) {
		struct topo_entry *e = &t->e[i];
		const struct member *m = &c->m[i];
		e->srv = m->v.srv;
		e->noloadbalance = m->v.noloadbalance;
		e->draining = m->v.draining;
		e->lag_bytes = -1;
		if (c->roles_from_probes)
			fill_from_probes(e, m, primary_wal);
		else
			fill_from_dcs(e, m, primary_wal);
	}
	if (!topo_publish(t, c->pc->max_lag))
		return;
	for (unsigned i = 0; i < c->n; i++) {
		const struct topo_entry *e = &t->e[i];
		const struct member *m = &c->m[i];
		if (e->reachable)
			disc_log(DISC_LOG_INFO, "topology: %s %s%s%s%s%s lag=%lld%s", e->srv->name,
				 disc_role_name(e->role),
				 e->role == DISC_ROLE_PRIMARY && e->in_hot_standby ? " (in recovery)" : "",
				 e->default_read_only ? " read-only" : "",
				 e->noloadbalance ? " noloadbalance" : "",
				 e->draining ? " draining (switchover pending)" : "",
				 (long long)e->lag_bytes, t->stale ? " (stale)" : "");
		else
			disc_log(DISC_LOG_INFO, "topology: %s not routable (%s)%s", e->srv->name,
				 !m->v.routable ? m->v.why
				 : m->v.needs_probe ? "promoting; waiting for its server to leave recovery"
						    : m->last.error,
				 t->stale ? " (stale)" : "");
	}
}

static void probe_done(void *arg, struct disc_server *srv, const struct probe_result *r)
{
	struct disc_cluster *c = arg;
	struct member *m = member_of(c, srv);
	if (!m)
		return;
	/* log the first failure, and every change after that */
	if (m->probed ? m->last.reachable != r->reachable : !r->reachable)
		disc_log(r->reachable ? DISC_LOG_INFO : DISC_LOG_WARNING, "probe: %s %s%s%s",
			 srv->name, r->reachable ? "reachable again" : "unreachable",
			 r->reachable ? "" : ": ", r->reachable ? "" : r->error);
	m->last = *r;
	m->probed = true;
	/* a promotion is awaited: look again soon rather than at the next interval */
	if (m->v.needs_probe && (!r->reachable || r->in_hot_standby))
		probe_soon(m->probe, 100);
	publish(c);
}

/* A reload that restarts the source: the stopped source's cluster waits here
 * for the next one started (disc_reload_begin/end). */
static bool park_next;
static struct disc_cluster *parked;

static void cluster_free(struct disc_cluster *c)
{
	for (unsigned i = 0; i < c->n; i++)
		probe_free(c->m[i].probe);
	free(c->m);
	free(c);
}

void disc_reload_begin(void)
{
	park_next = true;
}

void disc_reload_end(void)
{
	park_next = false;
	if (parked)
		cluster_free(parked);
	parked = NULL;
}

/* The parked cluster, now the new source's: same members and probe results
 * (probed again with the new settings), and its last view stays published
 * until the new source has one of its own. */
static struct disc_cluster *adopt(struct event_base *base, const char *source,
				  const struct disc_probe_config *pc)
{
	struct disc_cluster *c = parked;
	parked = NULL;
	c->base = base;
	c->source = source;
	c->pc = pc;
	c->hold_empty = true;
	for (unsigned i = 0; i < c->n; i++) {
		struct member *m = &c->m[i];
		probe_free(m->probe);
		m->probe = pc->interval_ms ? probe_new(base, m->v.srv, pc, probe_done, c) : NULL;
		m->probes_on = pc->interval_ms > 0;
	}
	disc_log(DISC_LOG_INFO, "%s: source restarted; keeping the last view until it has its own",
		 source);
	return c;
}

struct disc_cluster *disc_cluster_new(struct event_base *base, const char *source,
				      const struct disc_probe_config *pc, bool roles_from_probes)
{
	if (parked && parked->roles_from_probes == roles_from_probes)
		return adopt(base, source, pc);
	struct disc_cluster *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->base = base;
	c->source = source;
	c->pc = pc;
	c->roles_from_probes = roles_from_probes;
	return c;
}

int disc_cluster_set(struct disc_cluster *c, const struct disc_view_entry *v, unsigned n)
{
	if (n == 0 && c->hold_empty)
		return 0; /* "nothing known yet" from a restarted source: the last view stays */
	if (c->hold_empty)
		c->stale = false; /* its own view now (disc_cluster_no_view may have marked the old) */
	c->hold_empty = false;
	struct member *next = calloc(n ? n : 1, sizeof(*next));
	if (!next)
		return -1;
	for (unsigned i = 0; i < n; i++) {
		struct member *old = member_of(c, v[i].srv);
		struct member *m = &next[i];
		if (old) {
			*m = *old;
			old->probe = NULL; /* moved */
			if (!c->roles_from_probes &&
			    (old->v.role != v[i].role || old->v.needs_probe != v[i].needs_probe)) {
				/* the DCS changed its role: what the probe saw before no longer counts */
				m->probed = false;
				if (m->probe)
					probe_kick(m->probe);
			}
		} else {
			m->last = (struct probe_result){ .wal_bytes = -1 };
			snprintf(m->last.error, sizeof(m->last.error), "not probed yet");
			if (c->pc->interval_ms)
				m->probe = probe_new(c->base, v[i].srv, c->pc, probe_done, c);
		}
		m->v = v[i];
		m->probes_on = c->pc->interval_ms > 0;
	}
	/* servers that left the view: stop probing them */
	for (unsigned i = 0; i < c->n; i++)
		probe_free(c->m[i].probe);
	free(c->m);
	c->m = next;
	c->n = n;
	publish(c);
	return 0;
}

void disc_cluster_set_stale(struct disc_cluster *c, bool stale)
{
	if (c->stale == stale)
		return;
	c->stale = stale;
	if (!stale)
		disc_log(DISC_LOG_INFO, "%s: cluster state is current again", c->source);
	publish(c);
}

void disc_cluster_no_view(struct disc_cluster *c)
{
	if (c->hold_empty)
		disc_cluster_set_stale(c, true);
}

void disc_cluster_free(struct disc_cluster *c)
{
	if (!c)
		return;
	if (park_next && !parked) {
		parked = c;
		return;
	}
	cluster_free(c);
}

unsigned patroni_view(const struct patroni_cluster *pc, bool probes_on, const char *source,
		      struct disc_view_entry *v)
{
	unsigned n = 0;
	for (unsigned i = 0; i < pc->n; i++) {
		const struct patroni_member *m = &pc->m[i];
		char err[300];
		struct disc_server *srv = disc_server_get(m->host, m->port, err, sizeof(err));
		if (!srv) {
			disc_log(DISC_LOG_WARNING, "%s: member %s: %s", source, m->name, err);
			continue;
		}
		/* a promoting leader needs its server's word; without probes there is
		 * none, so it waits for Patroni to say master (etcd) or is trusted (REST) */
		bool promoting = m->route == PATRONI_PROMOTING;
		bool routable = m->route != PATRONI_NONE &&
				!(promoting && !probes_on && strcmp(source, "etcd") == 0);
		struct disc_view_entry *ve = &v[n++];
		*ve = (struct disc_view_entry){
			.srv = srv,
			.role = m->route == PATRONI_PRIMARY || promoting ? DISC_ROLE_PRIMARY
				: m->route == PATRONI_STANDBY		 ? DISC_ROLE_STANDBY
									 : DISC_ROLE_UNKNOWN,
			.routable = routable,
			.needs_probe = promoting && probes_on,
			.noloadbalance = m->noloadbalance,
			.draining = m->draining,
			.lag_bytes = m->lag_bytes,
		};
		bool unled_primary = m->route == PATRONI_NONE && strcmp(m->state, "running") == 0 &&
				     (strcmp(m->role, "master") == 0 || strcmp(m->role, "primary") == 0);
		snprintf(ve->why, sizeof(ve->why), "member %s role=%s state=%s%s", m->name,
			 m->role[0] ? m->role : "?", m->state, unled_primary ? ", not the leader" : "");
	}
	return n;
}

void patroni_publish_keys(struct disc_cluster *c, const struct patroni_keys *k, bool probes_on,
			  const char *source, char *leader, const char *note)
{
	static struct patroni_cluster pc; /* main thread only; large */
	patroni_parse(k, &pc);
	if (strcmp(pc.leader, leader) != 0) {
		disc_log(DISC_LOG_INFO, "%s: leader key %s%s%s", source,
			 pc.leader[0] ? "now names " : "is gone", pc.leader, note);
		snprintf(leader, 128, "%s", pc.leader);
	}
	if (pc.skipped)
		disc_log(DISC_LOG_WARNING, "%s: %u member(s) could not be read", source, pc.skipped);
	struct disc_view_entry v[PATRONI_MAX_MEMBERS];
	unsigned n = patroni_view(&pc, probes_on, source, v);
	disc_cluster_set(c, v, n);
}

void patroni_base_path(char *buf, size_t len, const char *namespace_, const char *scope)
{
	const char *ns = namespace_ && *namespace_ ? namespace_ : "/service/";
	size_t nl = strlen(ns);
	snprintf(buf, len, "%s%s%s%s", ns[0] == '/' ? "" : "/", ns, ns[nl - 1] == '/' ? "" : "/",
		 scope);
}
