/*
 * static.c — a fixed server list whose roles pgrouter learns by probing.
 *
 * Each probe result updates this source's view of one server; the view becomes
 * a snapshot, published only when something routing looks at changed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/internal.h"

struct server_view {
	struct probe_result last;
	bool probed;
};

struct disc_static {
	const struct disc_probe_config *pc;
	unsigned n;
	struct disc_server **servers;
	struct server_view *view;
	struct probe **probes;
};

static void publish(struct disc_static *s)
{
	struct topology *t = topo_new(s->n, "static");
	if (!t)
		return;
	/* lag is measured against the primary's WAL position from its latest probe */
	int64_t primary_wal = -1;
	unsigned primaries = 0;
	for (unsigned i = 0; i < s->n; i++) {
		const struct probe_result *r = &s->view[i].last;
		if (r->reachable && !r->in_hot_standby) {
			primaries++;
			primary_wal = r->wal_bytes;
		}
	}
	if (primaries != 1)
		primary_wal = -1;
	for (unsigned i = 0; i < s->n; i++) {
		const struct probe_result *r = &s->view[i].last;
		struct topo_entry *e = &t->e[i];
		e->srv = s->servers[i];
		e->reachable = r->reachable;
		e->lag_bytes = -1;
		if (!r->reachable) {
			e->role = DISC_ROLE_UNKNOWN;
			continue;
		}
		e->in_hot_standby = r->in_hot_standby;
		e->default_read_only = r->default_read_only;
		e->role = r->in_hot_standby ? DISC_ROLE_STANDBY : DISC_ROLE_PRIMARY;
		if (r->in_hot_standby && primary_wal >= 0 && r->wal_bytes >= 0)
			e->lag_bytes = primary_wal > r->wal_bytes ? primary_wal - r->wal_bytes : 0;
	}
	if (!topo_publish(t, s->pc->max_lag))
		return;
	for (unsigned i = 0; i < s->n; i++) {
		const struct topo_entry *e = &t->e[i];
		if (e->reachable)
			disc_log(DISC_LOG_INFO, "topology: %s %s%s lag=%lld", e->srv->name,
				 disc_role_name(e->role), e->default_read_only ? " read-only" : "",
				 (long long)e->lag_bytes);
		else
			disc_log(DISC_LOG_INFO, "topology: %s unreachable (%s)", e->srv->name,
				 s->view[i].last.error);
	}
}

static void probe_done(void *arg, unsigned index, const struct probe_result *r)
{
	struct disc_static *s = arg;
	struct server_view *v = &s->view[index];
	if (v->probed && v->last.reachable != r->reachable)
		disc_log(r->reachable ? DISC_LOG_INFO : DISC_LOG_WARNING, "probe: %s %s%s%s",
			 s->servers[index]->name, r->reachable ? "reachable again" : "unreachable",
			 r->reachable ? "" : ": ", r->error);
	else if (!v->probed && !r->reachable)
		disc_log(DISC_LOG_WARNING, "probe: %s unreachable: %s", s->servers[index]->name,
			 r->error);
	v->last = *r;
	v->probed = true;
	publish(s);
}

struct disc_static *disc_static_start(struct event_base *base, struct disc_server **servers,
				      unsigned n, const struct disc_probe_config *pc, char *err,
				      size_t errlen)
{
	struct disc_static *s = calloc(1, sizeof(*s));
	if (!s)
		goto oom;
	s->pc = pc;
	s->n = n;
	s->servers = calloc(n, sizeof(*s->servers));
	s->view = calloc(n, sizeof(*s->view));
	s->probes = calloc(n, sizeof(*s->probes));
	if (!s->servers || !s->view || !s->probes)
		goto oom;
	memcpy(s->servers, servers, n * sizeof(*servers));
	for (unsigned i = 0; i < n; i++) {
		s->view[i].last = (struct probe_result){ .wal_bytes = -1 };
		snprintf(s->view[i].last.error, sizeof(s->view[i].last.error), "not probed yet");
	}
	publish(s); /* everything unknown until the first round answers */
	for (unsigned i = 0; i < n; i++)
		if (!(s->probes[i] = probe_new(base, servers[i], i, pc, probe_done, s)))
			goto oom;
	return s;
oom:
	snprintf(err, errlen, "out of memory");
	disc_static_stop(s);
	return NULL;
}

void disc_static_stop(struct disc_static *s)
{
	if (!s)
		return;
	for (unsigned i = 0; s->probes && i < s->n; i++)
		probe_free(s->probes[i]);
	free(s->probes);
	free(s->view);
	free(s->servers);
	free(s);
}
