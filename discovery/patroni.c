/*
 * patroni.c — Patroni's keys (leader, members/<name>, status, config,
 * optime/leader) turned into routing facts. Shared by the etcd and ZooKeeper
 * sources; pure (no I/O, no registry) so it is unit-tested on captured values.
 *
 * A member is writable only when the leader key names it, its role is
 * "master" or "primary" and its state is "running". A standby_leader is never
 * writable. A replica is a read target when "running"; its lag is
 * status.optime - xlog_location. Anything else is not routable.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/internal.h"

/* ---- the key store ---- */

void patroni_keys_init(struct patroni_keys *k)
{
	memset(k, 0, sizeof(*k));
}

void patroni_keys_clear(struct patroni_keys *k)
{
	for (unsigned i = 0; i < k->n; i++) {
		free(k->kv[i].key);
		free(k->kv[i].value);
	}
	free(k->kv);
	memset(k, 0, sizeof(*k));
}

static int find(const struct patroni_keys *k, const char *key)
{
	for (unsigned i = 0; i < k->n; i++)
		if (strcmp(k->kv[i].key, key) == 0)
			return (int)i;
	return -1;
}

int patroni_keys_put(struct patroni_keys *k, const char *key, const char *value, size_t len)
{
	char *v = malloc(len + 1);
	if (!v)
		return -1;
	memcpy(v, value, len);
	v[len] = 0;
	int i = find(k, key);
	if (i >= 0) {
		free(k->kv[i].value);
		k->kv[i].value = v;
		k->kv[i].len = len;
		return 0;
	}
	if (k->n == k->cap) {
		unsigned cap = k->cap ? k->cap * 2 : 16;
		struct patroni_kv *kv = realloc(k->kv, cap * sizeof(*kv));
		if (!kv) {
			free(v);
			return -1;
		}
		k->kv = kv;
		k->cap = cap;
	}
	char *kk = strdup(key);
	if (!kk) {
		free(v);
		return -1;
	}
	k->kv[k->n++] = (struct patroni_kv){ kk, v, len };
	return 0;
}

void patroni_keys_del(struct patroni_keys *k, const char *key)
{
	int i = find(k, key);
	if (i < 0)
		return;
	free(k->kv[i].key);
	free(k->kv[i].value);
	k->kv[i] = k->kv[--k->n];
}

const char *patroni_keys_get(const struct patroni_keys *k, const char *key)
{
	int i = find(k, key);
	return i >= 0 ? k->kv[i].value : NULL;
}

/* ---- parsing ---- */

/* "postgres://host:port/db?x", "postgresql://[::1]:5433/db" → host, port. */
int patroni_parse_conn_url(const char *url, char *host, size_t hostlen, char *port,
			   size_t portlen)
{
	const char *p = strstr(url, "://");
	if (!p)
		return -1;
	p += 3;
	const char *at = strpbrk(p, "@/?");
	if (at && *at == '@')
		p = at + 1; /* credentials are not expected, but skip them */
	const char *h = p, *hend, *port_start = NULL;
	if (*p == '[') {
		h = p + 1;
		hend = strchr(h, ']');
		if (!hend)
			return -1;
		if (hend[1] == ':')
			port_start = hend + 2;
	} else {
		hend = h + strcspn(h, ":/?,");
		if (*hend == ':')
			port_start = hend + 1;
	}
	size_t hl = (size_t)(hend - h);
	if (hl == 0 || hl >= hostlen)
		return -1;
	memcpy(host, h, hl);
	host[hl] = 0;
	if (port_start) {
		size_t pl = strspn(port_start, "0123456789");
		if (pl == 0 || pl >= portlen || pl > 5)
			return -1;
		memcpy(port, port_start, pl);
		port[pl] = 0;
		long v = strtol(port, NULL, 10);
		if (v < 1 || v > 65535)
			return -1;
	} else {
		snprintf(port, portlen, "5432");
	}
	return 0;
}

static int64_t json_int(json_t *v)
{
	if (json_is_integer(v))
		return (int64_t)json_integer_value(v);
	if (json_is_string(v)) { /* some payloads carry numbers as strings; "unknown" is -1 */
		const char *s = json_string_value(v);
		char *end;
		long long n = strtoll(s, &end, 10);
		return end != s && *end == 0 && n >= 0 ? n : -1;
	}
	return -1;
}

static bool json_truthy(json_t *v)
{
	if (json_is_boolean(v))
		return json_is_true(v);
	if (json_is_string(v))
		return strcmp(json_string_value(v), "true") == 0 ||
		       strcmp(json_string_value(v), "on") == 0;
	return json_is_integer(v) && json_integer_value(v) != 0;
}

static void copy_str(char *dst, size_t len, const char *src)
{
	snprintf(dst, len, "%s", src ? src : "");
}

static int parse_member(struct patroni_member *m, const char *name, const char *value)
{
	memset(m, 0, sizeof(*m));
	copy_str(m->name, sizeof(m->name), name);
	m->xlog_location = -1;
	m->lag_bytes = -1;
	/* the old format: a bare connection URL */
	if (strncmp(value, "postgres", 8) == 0) {
		copy_str(m->conn_url, sizeof(m->conn_url), value);
		copy_str(m->state, sizeof(m->state), "running");
		m->legacy = true;
		return 0;
	}
	json_error_t jerr;
	json_t *j = json_loads(value, JSON_DECODE_ANY, &jerr);
	if (!j || !json_is_object(j)) {
		json_decref(j);
		return -1;
	}
	copy_str(m->conn_url, sizeof(m->conn_url), json_string_value(json_object_get(j, "conn_url")));
	copy_str(m->role, sizeof(m->role), json_string_value(json_object_get(j, "role")));
	copy_str(m->state, sizeof(m->state), json_string_value(json_object_get(j, "state")));
	m->xlog_location = json_int(json_object_get(j, "xlog_location"));
	m->timeline = json_int(json_object_get(j, "timeline"));
	json_t *tags = json_object_get(j, "tags");
	if (json_is_object(tags)) {
		m->noloadbalance = json_truthy(json_object_get(tags, "noloadbalance"));
		m->nofailover = json_truthy(json_object_get(tags, "nofailover"));
	}
	json_decref(j);
	return 0;
}

const char *patroni_route_name(enum patroni_route r)
{
	switch (r) {
	case PATRONI_PRIMARY: return "primary";
	case PATRONI_STANDBY: return "standby";
	case PATRONI_PROMOTING: return "promoting";
	default: return "not routable";
	}
}

int patroni_parse(const struct patroni_keys *k, struct patroni_cluster *c)
{
	memset(c, 0, sizeof(*c));
	c->optime = -1;
	const char *leader = patroni_keys_get(k, "leader");
	if (leader) {
		/* plain text; be lenient about surrounding whitespace */
		size_t n = strcspn(leader, " \t\r\n");
		if (n >= sizeof(c->leader))
			n = sizeof(c->leader) - 1;
		memcpy(c->leader, leader, n);
		c->leader[n] = 0;
	}
	const char *status = patroni_keys_get(k, "status");
	if (status) {
		json_t *j = json_loads(status, JSON_DECODE_ANY, NULL);
		if (json_is_object(j))
			c->optime = json_int(json_object_get(j, "optime"));
		json_decref(j);
	}
	const char *legacy_optime = patroni_keys_get(k, "optime/leader");
	if (c->optime < 0 && legacy_optime)
		c->optime = strtoll(legacy_optime, NULL, 10);
	/* patronictl switchover/failover writes {"leader": old, "member": new}; the
	 * leader acts on it within loop_wait. A scheduled one ("scheduled_at") is
	 * not treated as pending: its time is not ours to judge. */
	const char *failover = patroni_keys_get(k, "failover");
	if (failover && c->leader[0]) {
		json_t *j = json_loads(failover, JSON_DECODE_ANY, NULL);
		if (json_is_object(j) && !json_object_get(j, "scheduled_at")) {
			const char *from = json_string_value(json_object_get(j, "leader"));
			const char *to = json_string_value(json_object_get(j, "member"));
			/* moving away from the current leader (named, or implied by a target) */
			if ((from && strcmp(from, c->leader) == 0) ||
			    (!from && to && strcmp(to, c->leader) != 0))
				c->switchover_pending = true;
		}
		json_decref(j);
	}
	const char *config = patroni_keys_get(k, "config");
	if (config) {
		json_t *j = json_loads(config, JSON_DECODE_ANY, NULL);
		if (json_is_object(j))
			c->paused = json_truthy(json_object_get(j, "pause"));
		json_decref(j);
	}

	for (unsigned i = 0; i < k->n; i++) {
		const char *key = k->kv[i].key;
		if (strncmp(key, "members/", 8) != 0 || !key[8] || strchr(key + 8, '/'))
			continue;
		if (c->n == PATRONI_MAX_MEMBERS) {
			c->skipped++;
			continue;
		}
		struct patroni_member *m = &c->m[c->n];
		if (parse_member(m, key + 8, k->kv[i].value) != 0 ||
		    patroni_parse_conn_url(m->conn_url, m->host, sizeof(m->host), m->port,
					   sizeof(m->port)) != 0) {
			c->skipped++;
			continue;
		}
		bool is_leader = c->leader[0] && strcmp(c->leader, m->name) == 0;
		bool running = strcmp(m->state, "running") == 0;
		if (m->legacy) {
			m->route = is_leader ? PATRONI_PRIMARY : PATRONI_STANDBY;
		} else if (!running) {
			m->route = PATRONI_NONE;
		} else if (strcmp(m->role, "master") == 0 || strcmp(m->role, "primary") == 0) {
			/* a primary the leader key does not name is not trusted with writes */
			m->route = is_leader ? PATRONI_PRIMARY : PATRONI_NONE;
		} else if (is_leader && (strcmp(m->role, "promoted") == 0 ||
					 strcmp(m->role, "replica") == 0 ||
					 strcmp(m->role, "sync_standby") == 0)) {
			/* Patroni took the lock and is promoting; its member key says
			 * "promoted" a loop later, "master" a loop after that. The server's
			 * own word (a probe) settles it sooner. */
			m->route = PATRONI_PROMOTING;
		} else if (strcmp(m->role, "replica") == 0 || strcmp(m->role, "standby_leader") == 0 ||
			   strcmp(m->role, "sync_standby") == 0) {
			m->route = PATRONI_STANDBY;
		} else {
			m->route = PATRONI_NONE; /* demoted, uninitialized, unknown */
		}
		m->draining = m->route == PATRONI_PRIMARY && c->switchover_pending;
		if (m->route == PATRONI_STANDBY && c->optime >= 0 && m->xlog_location >= 0)
			m->lag_bytes = c->optime > m->xlog_location ? c->optime - m->xlog_location : 0;
		c->n++;
	}
	return 0;
}

/* ---- Patroni's REST API: GET /cluster ---- */

int patroni_parse_rest(const char *body, size_t len, struct patroni_cluster *c)
{
	memset(c, 0, sizeof(*c));
	c->optime = -1;
	json_error_t jerr;
	json_t *j = json_loadb(body, len, 0, &jerr);
	json_t *members = json_object_get(j, "members");
	if (!json_is_object(j) || !json_is_array(members)) {
		json_decref(j);
		return -1;
	}
	c->paused = json_truthy(json_object_get(j, "pause"));
	size_t i;
	json_t *mj;
	json_array_foreach(members, i, mj)
	{
		const char *name = json_string_value(json_object_get(mj, "name"));
		const char *host = json_string_value(json_object_get(mj, "host"));
		int64_t port = json_int(json_object_get(mj, "port"));
		if (!json_is_object(mj) || !name || !host || port < 1 || port > 65535 ||
		    c->n == PATRONI_MAX_MEMBERS || strlen(host) >= sizeof(c->m[0].host)) {
			c->skipped++;
			continue;
		}
		struct patroni_member *m = &c->m[c->n++];
		memset(m, 0, sizeof(*m));
		copy_str(m->name, sizeof(m->name), name);
		copy_str(m->host, sizeof(m->host), host);
		snprintf(m->port, sizeof(m->port), "%d", (int)port);
		copy_str(m->role, sizeof(m->role), json_string_value(json_object_get(mj, "role")));
		copy_str(m->state, sizeof(m->state), json_string_value(json_object_get(mj, "state")));
		m->timeline = json_int(json_object_get(mj, "timeline"));
		m->xlog_location = -1;
		m->lag_bytes = json_int(json_object_get(mj, "lag")); /* -1 for "unknown" */
		json_t *tags = json_object_get(mj, "tags");
		if (json_is_object(tags)) {
			m->noloadbalance = json_truthy(json_object_get(tags, "noloadbalance"));
			m->nofailover = json_truthy(json_object_get(tags, "nofailover"));
		}
		/* replicas report "streaming" in newer Patroni, "running" in older */
		bool up = strcmp(m->state, "running") == 0 || strcmp(m->state, "streaming") == 0;
		if (!up)
			m->route = PATRONI_NONE;
		else if (strcmp(m->role, "leader") == 0 || strcmp(m->role, "master") == 0 ||
			 strcmp(m->role, "primary") == 0) {
			/* /cluster calls the lock holder "leader" while it may still be
			 * promoting: a primary once its server says it left recovery */
			copy_str(c->leader, sizeof(c->leader), name);
			m->route = PATRONI_PROMOTING;
		} else if (strcmp(m->role, "replica") == 0 || strcmp(m->role, "sync_standby") == 0 ||
			   strcmp(m->role, "quorum_standby") == 0 ||
			   strcmp(m->role, "standby_leader") == 0) {
			m->route = PATRONI_STANDBY;
		} else {
			m->route = PATRONI_NONE;
		}
	}
	json_decref(j);
	return 0;
}
