/*
 * stolon.c — Stolon's cluster data into a view.
 *
 * Stolon's sentinel keeps the whole cluster in one etcd key,
 * <stolon_prefix>/<stolon_cluster>/clusterdata: a JSON ClusterData of format
 * version 1 (Stolon's internal/cluster/cluster.go). What routing needs:
 *
 *   proxy.spec.masterDbUid     the primary, exactly as stolon-proxy decides it
 *   proxy.generation           what a proxy reports it applied
 *   dbs.<uid>.spec.role        "master" / "standby"
 *   dbs.<uid>.spec.followConfig {type: "internal", dbuid}: whom a standby follows
 *   dbs.<uid>.status.healthy   missing means false
 *   dbs.<uid>.status.listenAddress, .port (a string), .xLogPos, .timelineID
 *
 * No primary — stolon-proxy then closes every connection and accepts none —
 * when masterDbUid is empty or names no db, when proxy is null, or when the
 * format version is not 1. Standbys are the healthy dbs following the primary
 * (any healthy standby while there is none); their lag is the primary's xLogPos
 * minus theirs on the same timeline.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/internal.h"

static void copy(char *dst, size_t cap, const char *s)
{
	snprintf(dst, cap, "%s", s ? s : "");
}

static int64_t num(json_t *j)
{
	if (json_is_integer(j))
		return (int64_t)json_integer_value(j);
	if (json_is_real(j))
		return (int64_t)json_real_value(j);
	if (json_is_string(j))
		return strtoll(json_string_value(j), NULL, 10);
	return -1;
}

int64_t stolon_duration_ms(const char *s)
{
	if (!s || !*s)
		return -1;
	double ms = 0;
	while (*s) {
		char *end;
		double v = strtod(s, &end);
		if (end == s || v < 0)
			return -1;
		s = end;
		double unit;
		if (strncmp(s, "ms", 2) == 0)
			unit = 1, s += 2;
		else if (*s == 'h')
			unit = 3600000, s++;
		else if (*s == 'm')
			unit = 60000, s++;
		else if (*s == 's')
			unit = 1000, s++;
		else
			return -1;
		ms += v * unit;
	}
	return (int64_t)ms;
}

int stolon_parse(const char *json, size_t len, struct stolon_cd *cd)
{
	memset(cd, 0, sizeof(*cd));
	cd->generation = -1;
	cd->proxy_timeout_ms = 15000; /* Stolon's DefaultProxyTimeout */
	json_error_t jerr;
	json_t *j = json_loadb(json, len, 0, &jerr);
	if (!json_is_object(j)) {
		json_decref(j);
		snprintf(cd->no_primary, sizeof(cd->no_primary), "clusterdata is not a JSON object");
		return -1;
	}
	int64_t version = num(json_object_get(j, "formatVersion"));
	json_t *proxy = json_object_get(j, "proxy");
	const char *master = json_string_value(
		json_object_get(json_object_get(proxy, "spec"), "masterDbUid"));
	if (json_is_object(proxy))
		cd->generation = num(json_object_get(proxy, "generation"));
	int64_t pt = stolon_duration_ms(json_string_value(json_object_get(
		json_object_get(json_object_get(j, "cluster"), "spec"), "proxyTimeout")));
	if (pt > 0)
		cd->proxy_timeout_ms = pt;
	size_t k;
	json_t *en;
	json_array_foreach(json_object_get(json_object_get(proxy, "spec"), "enabledProxies"), k, en)
	{
		size_t l = strlen(cd->enabled);
		if (json_is_string(en))
			snprintf(cd->enabled + l, sizeof(cd->enabled) - l, "%s%s", l ? "," : "",
				 json_string_value(en));
	}
	json_t *dbs = json_object_get(j, "dbs");
	const char *uid;
	json_t *db;
	json_object_foreach(dbs, uid, db)
	{
		json_t *spec = json_object_get(db, "spec"), *st = json_object_get(db, "status");
		const char *host = json_string_value(json_object_get(st, "listenAddress"));
		json_t *pj = json_object_get(st, "port");
		int64_t port = num(pj);
		if (!json_is_object(db) || cd->n == STOLON_MAX_DBS || strlen(uid) >= sizeof(cd->db[0].uid)) {
			cd->skipped++;
			continue;
		}
		struct stolon_db *d = &cd->db[cd->n++];
		copy(d->uid, sizeof(d->uid), uid);
		copy(d->host, sizeof(d->host), host);
		if (port > 0 && port < 65536)
			snprintf(d->port, sizeof(d->port), "%d", (int)port);
		const char *role = json_string_value(json_object_get(spec, "role"));
		d->standby = role && strcmp(role, "standby") == 0;
		json_t *follow = json_object_get(spec, "followConfig");
		const char *ftype = json_string_value(json_object_get(follow, "type"));
		if (!ftype || strcmp(ftype, "internal") == 0)
			copy(d->follows, sizeof(d->follows),
			     json_string_value(json_object_get(follow, "dbuid")));
		d->healthy = json_is_true(json_object_get(st, "healthy"));
		d->xlog = num(json_object_get(st, "xLogPos"));
		d->timeline = num(json_object_get(st, "timelineID"));
	}
	if (version != 1)
		snprintf(cd->no_primary, sizeof(cd->no_primary), "clusterdata format version %lld "
			 "(only 1 is known)", (long long)version);
	else if (!json_is_object(proxy))
		snprintf(cd->no_primary, sizeof(cd->no_primary), "no proxy spec");
	else if (!master || !*master)
		snprintf(cd->no_primary, sizeof(cd->no_primary), "proxy.spec.masterDbUid is empty");
	else {
		for (unsigned i = 0; i < cd->n; i++)
			if (strcmp(cd->db[i].uid, master) == 0)
				cd->primary = (int)i + 1;
		if (!cd->primary)
			snprintf(cd->no_primary, sizeof(cd->no_primary),
				 "proxy.spec.masterDbUid names no db (%.64s)", master);
	}
	json_decref(j);
	return 0;
}

unsigned stolon_view(const struct stolon_cd *cd, struct disc_view_entry *v)
{
	const struct stolon_db *m = cd->primary ? &cd->db[cd->primary - 1] : NULL;
	unsigned n = 0;
	for (unsigned i = 0; i < cd->n; i++) {
		const struct stolon_db *d = &cd->db[i];
		if (!d->host[0] || !d->port[0]) {
			disc_log(DISC_LOG_DEBUG, "stolon: db %s has no address yet", d->uid);
			continue;
		}
		char err[300];
		struct disc_server *srv = disc_server_get(d->host, d->port, err, sizeof(err));
		if (!srv) {
			disc_log(DISC_LOG_WARNING, "stolon: db %s: %s", d->uid, err);
			continue;
		}
		struct disc_view_entry *e = &v[n++];
		memset(e, 0, sizeof(*e));
		e->srv = srv;
		e->lag_bytes = -1;
		if (d == m) {
			e->role = DISC_ROLE_PRIMARY;
			e->routable = true;
			continue;
		}
		e->role = d->standby ? DISC_ROLE_STANDBY : DISC_ROLE_UNKNOWN;
		if (!d->standby)
			snprintf(e->why, sizeof(e->why), "db %s is not a standby and not the master",
				 d->uid);
		else if (!d->healthy)
			snprintf(e->why, sizeof(e->why), "db %s is not healthy", d->uid);
		else if (m && strcmp(d->follows, m->uid) != 0)
			snprintf(e->why, sizeof(e->why), "db %s follows %s, not the master %s", d->uid,
				 d->follows[0] ? d->follows : "nothing", m->uid);
		else
			e->routable = true;
		if (e->routable && m && m->timeline == d->timeline && m->xlog >= 0 && d->xlog >= 0)
			e->lag_bytes = m->xlog > d->xlog ? m->xlog - d->xlog : 0;
	}
	return n;
}

void stolon_publish(struct disc_cluster *c, const char *value, size_t len, char *master,
		    const char *uid, int64_t *generation, int64_t *proxy_timeout_ms)
{
	static struct stolon_cd cd; /* main thread only; large */
	if (!value) {
		stolon_parse("", 0, &cd);
		snprintf(cd.no_primary, sizeof(cd.no_primary), "no clusterdata key");
	} else {
		stolon_parse(value, len, &cd);
	}
	if (uid && cd.primary && !disc_list_has(cd.enabled, uid)) {
		/* stolon-proxy's rule: the sentinel has not seen this proxy yet, so it
		 * would not wait for it when electing another master */
		cd.primary = 0;
		snprintf(cd.no_primary, sizeof(cd.no_primary),
			 "proxy %s not in proxy.spec.enabledProxies yet", uid);
	}
	*generation = cd.generation;
	*proxy_timeout_ms = cd.proxy_timeout_ms;
	const char *now = cd.primary ? cd.db[cd.primary - 1].uid : "";
	if (strcmp(now, master) != 0) {
		if (*now)
			disc_log(DISC_LOG_INFO, "stolon: master db now %s (proxy generation %lld)", now,
				 (long long)cd.generation);
		else
			disc_log(DISC_LOG_WARNING, "stolon: no master: %s (proxy generation %lld)",
				 cd.no_primary, (long long)cd.generation);
		snprintf(master, 128, "%s", now);
	}
	if (cd.skipped)
		disc_log(DISC_LOG_WARNING, "stolon: %u db(s) could not be read", cd.skipped);
	struct disc_view_entry v[STOLON_MAX_DBS];
	unsigned n = stolon_view(&cd, v);
	disc_cluster_set(c, v, n);
}
