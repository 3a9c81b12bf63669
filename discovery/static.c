/*
 * static.c — a fixed server list whose roles pgrouter learns by probing.
 */
#include <stdio.h>
#include <stdlib.h>

#include "discovery/internal.h"

struct disc_static {
	struct disc_cluster *cluster;
};

struct disc_static *disc_static_start(struct event_base *base, struct disc_server **servers,
				      unsigned n, const struct disc_probe_config *pc, char *err,
				      size_t errlen)
{
	struct disc_static *s = calloc(1, sizeof(*s));
	struct disc_view_entry *v = calloc(n ? n : 1, sizeof(*v));
	if (!s || !v)
		goto fail;
	for (unsigned i = 0; i < n; i++)
		v[i] = (struct disc_view_entry){ .srv = servers[i], .routable = true, .lag_bytes = -1 };
	s->cluster = disc_cluster_new(base, "static", pc, true);
	if (!s->cluster || disc_cluster_set(s->cluster, v, n) != 0)
		goto fail;
	free(v);
	return s;
fail:
	snprintf(err, errlen, "out of memory");
	free(v);
	disc_static_stop(s);
	return NULL;
}

void disc_static_stop(struct disc_static *s)
{
	if (!s)
		return;
	disc_cluster_free(s->cluster);
	free(s);
}
