/*
 * config.c — the INI file (inih). Every error names FILE:LINE: key: reason.
 *
 * inih does not tell a handler which line it is on, so the file is read through
 * a line-counting reader: the handler runs right after its line was read.
 */
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "router/router.h"

struct parse_ctx {
	struct config *c;
	FILE *f;
	int line;
	char *err;
	size_t errlen;
	int bad_line;
	struct listener_config *cur_listener;
	char cur_section[80];
	int probe_interval_line, source_line;
};

static const char *const tsa_names[] = { "any", "read-write", "read-only",
					 "primary", "standby", "prefer-standby" };
static const char *const lb_names[] = { "round-robin", "random", "least-connections" };
static const char *const client_tls_names[] = { "disable", "allow", "require" };
static const char *const server_tls_names[] = { "disable", "prefer", "require", "verify-ca",
						"verify-full" };
static const char *const tls_keys[TK_N] = { "client_tls",	      "client_tls_cert",
					    "client_tls_key",	      "client_tls_ca",
					    "client_tls_min_version", "client_tls_ciphers" };

static const char *const auth_names[] = { "passthrough", "router" };
static const char *const pool_mode_names[] = { "none", "session" };

const char *pool_mode_name(enum pool_mode m)
{
	return pool_mode_names[m];
}

const char *auth_mode_name(enum auth_mode m)
{
	return auth_names[m];
}

const char *client_tls_name(enum client_tls m)
{
	return client_tls_names[m];
}

const char *server_tls_name(enum server_tls m)
{
	return server_tls_names[m];
}

const char *tsa_name(enum tsa t)
{
	return tsa_names[t];
}

const char *lb_name(enum lb b)
{
	return lb_names[b];
}

static char *counting_reader(char *str, int num, void *stream)
{
	struct parse_ctx *p = stream;
	char *r = fgets(str, num, p->f);
	if (r)
		p->line++;
	return r;
}

__attribute__((format(printf, 4, 5))) static int fail(struct parse_ctx *p, int line,
						      const char *key, const char *fmt, ...)
{
	int n = snprintf(p->err, p->errlen, "%s:%d: %s: ", p->c->path, line, key);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < p->errlen)
		vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	p->bad_line = line;
	return 0; /* inih: stop with an error */
}

/* "<non-negative number><spaces><unit>": the number and where the unit starts. */
static int split_number(const char *s, double *v, const char **unit)
{
	char *end;
	errno = 0;
	*v = strtod(s, &end);
	if (end == s || errno || *v < 0)
		return -1;
	while (isspace((unsigned char)*end))
		end++;
	*unit = end;
	return 0;
}

int parse_duration_ms(const char *s, unsigned *out)
{
	double v, mult;
	const char *end;
	if (split_number(s, &v, &end) != 0)
		return -1;
	if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		mult = 60000;
	else if (strcmp(end, "h") == 0)
		mult = 3600000;
	else if (*end == 0 && v == 0)
		mult = 0;
	else
		return -1;
	double ms = v * mult;
	if (ms > 86400000.0 * 7)
		return -1;
	*out = (unsigned)ms;
	return 0;
}

int parse_size(const char *s, int64_t *out)
{
	double v, mult;
	const char *end;
	if (split_number(s, &v, &end) != 0)
		return -1;
	if (*end == 0 || strcmp(end, "B") == 0)
		mult = 1;
	else if (strcmp(end, "kB") == 0 || strcasecmp(end, "KB") == 0)
		mult = 1024;
	else if (strcmp(end, "MB") == 0)
		mult = 1024.0 * 1024;
	else if (strcmp(end, "GB") == 0)
		mult = 1024.0 * 1024 * 1024;
	else if (strcmp(end, "TB") == 0)
		mult = 1024.0 * 1024 * 1024 * 1024;
	else
		return -1;
	double b = v * mult;
	if (b > 9.0e18)
		return -1;
	*out = (int64_t)b;
	return 0;
}

static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (end == s || *end || errno || v < min || v > max || *s == '-')
		return -1;
	*out = (unsigned)v;
	return 0;
}

/* "host:port", "[v6]:port", "host" (port 5432). Returns 0, or -1 with why set. */
static int parse_hostport(const char *s, char *host, size_t hostlen, char *port, size_t portlen,
			  const char *default_port, const char **why)
{
	const char *h = s, *colon;
	size_t hl;
	if (*s == '[') {
		const char *close = strchr(s, ']');
		if (!close) {
			*why = "missing ']' after IPv6 address";
			return -1;
		}
		h = s + 1;
		hl = (size_t)(close - h);
		colon = close[1] == ':' ? close + 1 : NULL;
		if (close[1] && !colon) {
			*why = "expected ':' after ']'";
			return -1;
		}
	} else {
		colon = strrchr(s, ':');
		if (colon && strchr(s, ':') != colon) {
			*why = "IPv6 addresses need brackets: [::1]:5432";
			return -1;
		}
		hl = colon ? (size_t)(colon - s) : strlen(s);
	}
	if (hl == 0 || hl >= hostlen) {
		*why = "missing or too long host";
		return -1;
	}
	memcpy(host, h, hl);
	host[hl] = 0;
	const char *p = colon ? colon + 1 : default_port;
	unsigned portnum;
	if (parse_uint(p, 1, 65535, &portnum) != 0) {
		*why = "port must be 1..65535";
		return -1;
	}
	snprintf(port, portlen, "%u", portnum);
	return 0;
}

static int set_string(struct parse_ctx *p, const char *key, const char *v, char *dst, size_t len)
{
	if (strlen(v) >= len)
		return fail(p, p->line, key, "value too long (at most %zu bytes)", len - 1);
	memcpy(dst, v, strlen(v) + 1);
	return 1;
}

static int set_duration(struct parse_ctx *p, const char *key, const char *v, unsigned *dst,
			bool zero_ok)
{
	if (parse_duration_ms(v, dst) != 0)
		return fail(p, p->line, key, "invalid duration \"%s\" (use ms, s or m, e.g. 3s)", v);
	if (!zero_ok && *dst == 0)
		return fail(p, p->line, key, "must be greater than 0");
	return 1;
}

static int set_on_off(struct parse_ctx *p, const char *key, const char *v, bool *dst)
{
	if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
		return fail(p, p->line, key, "must be on or off");
	*dst = strcmp(v, "on") == 0;
	return 1;
}

static int readable_file(struct parse_ctx *p, const char *k, const char *v, char *dst, size_t len)
{
	if (*v && access(v, R_OK) != 0)
		return fail(p, p->line, k, "cannot read %s: %s", v, strerror(errno));
	return set_string(p, k, v, dst, len);
}

/* client_tls* keys, in [pgrouter] or a [listener]. -1: k is not one of them. */
static int client_tls_key(struct parse_ctx *p, const char *k, const char *v, struct tls_config *t)
{
	int i = 0;
	while (i < TK_N && strcmp(k, tls_keys[i]) != 0)
		i++;
	if (i == TK_N)
		return -1;
	t->line[i] = p->line;
	switch (i) {
	case TK_MODE:
		for (unsigned m = 0; m < sizeof(client_tls_names) / sizeof(client_tls_names[0]); m++)
			if (strcmp(v, client_tls_names[m]) == 0) {
				t->mode = (enum client_tls)m;
				return 1;
			}
		return fail(p, p->line, k, "must be disable, allow or require");
	case TK_CERT:
		return readable_file(p, k, v, t->cert, sizeof(t->cert));
	case TK_KEY:
		return readable_file(p, k, v, t->key, sizeof(t->key));
	case TK_CA:
		return readable_file(p, k, v, t->ca, sizeof(t->ca));
	case TK_MIN_VERSION:
		if (strcmp(v, "TLSv1.2") != 0 && strcmp(v, "TLSv1.3") != 0)
			return fail(p, p->line, k, "must be TLSv1.2 or TLSv1.3");
		return set_string(p, k, v, t->min_version, sizeof(t->min_version));
	default:
		return set_string(p, k, v, t->ciphers, sizeof(t->ciphers));
	}
}

static int server_tls_key(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	if (strcmp(k, "server_tls") == 0) {
		c->server_tls_line[0] = p->line;
		for (unsigned m = 0; m < sizeof(server_tls_names) / sizeof(server_tls_names[0]); m++)
			if (strcmp(v, server_tls_names[m]) == 0) {
				c->server_tls = (enum server_tls)m;
				return 1;
			}
		return fail(p, p->line, k, "must be disable, prefer, require, verify-ca or verify-full");
	}
	if (strcmp(k, "server_tls_ca") == 0) {
		c->server_tls_line[1] = p->line;
		return readable_file(p, k, v, c->server_tls_ca, sizeof(c->server_tls_ca));
	}
	if (strcmp(k, "server_tls_cert") == 0) {
		c->server_tls_line[2] = p->line;
		return readable_file(p, k, v, c->server_tls_cert, sizeof(c->server_tls_cert));
	}
	if (strcmp(k, "server_tls_key") == 0) {
		c->server_tls_line[3] = p->line;
		return readable_file(p, k, v, c->server_tls_key, sizeof(c->server_tls_key));
	}
	return -1;
}

/* A key whose value is one of names: its index into *m, the line into *line. */
static int named_key(struct parse_ctx *p, const char *k, const char *v, const char *const *names,
		     unsigned n, int *m, int *line, const char *expected)
{
	for (unsigned i = 0; i < n; i++)
		if (strcmp(v, names[i]) == 0) {
			*m = (int)i;
			*line = p->line;
			return 1;
		}
	return fail(p, p->line, k, "must be %s", expected);
}

static int pool_mode_key(struct parse_ctx *p, const char *k, const char *v, enum pool_mode *m,
			 int *line)
{
	int i = *m, r = named_key(p, k, v, pool_mode_names, 2, &i, line, "none or session");
	*m = (enum pool_mode)i;
	return r;
}

static int auth_mode_key(struct parse_ctx *p, const char *k, const char *v, enum auth_mode *m,
			 int *line)
{
	int i = *m, r = named_key(p, k, v, auth_names, 2, &i, line, "passthrough or router");
	*m = (enum auth_mode)i;
	return r;
}

static int pgrouter_key(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	int r = client_tls_key(p, k, v, &c->client_tls);
	if (r < 0)
		r = server_tls_key(p, k, v);
	if (r >= 0)
		return r;
	if (strcmp(k, "workers") == 0) {
		if (parse_uint(v, 1, 256, &c->workers) != 0)
			return fail(p, p->line, k, "must be an integer 1..256");
		return 1;
	}
	if (strcmp(k, "worker_packing") == 0)
		return set_on_off(p, k, v, &c->worker_packing);
	if (strcmp(k, "io_uring") == 0)
		return set_on_off(p, k, v, &c->io_uring);
	if (strcmp(k, "debug_worker_shuffle") == 0)
		return set_on_off(p, k, v, &c->debug_worker_shuffle);
	if (strcmp(k, "worker_busy_limit") == 0) {
		if (parse_uint(v, 10, 100, &c->worker_busy_limit) != 0)
			return fail(p, p->line, k, "must be a percentage 10..100");
		return 1;
	}
	if (strcmp(k, "log_level") == 0) {
		int l = log_level_parse(v);
		if (l < 0)
			return fail(p, p->line, k, "must be error, warning, info or debug");
		c->log_level = l;
		return 1;
	}
	if (strcmp(k, "log_format") == 0) {
		if (strcmp(v, "text") != 0 && strcmp(v, "json") != 0)
			return fail(p, p->line, k, "must be text or json");
		c->log_json = strcmp(v, "json") == 0;
		return 1;
	}
	if (strcmp(k, "log_file") == 0)
		return set_string(p, k, v, c->log_file, sizeof(c->log_file));
	if (strcmp(k, "connect_timeout") == 0)
		return set_duration(p, k, v, &c->connect_timeout_ms, false);
	if (strcmp(k, "queue_timeout") == 0)
		return set_duration(p, k, v, &c->queue_timeout_ms, true);
	if (strcmp(k, "startup_timeout") == 0)
		return set_duration(p, k, v, &c->startup_timeout_ms, false);
	if (strcmp(k, "shutdown_timeout") == 0)
		return set_duration(p, k, v, &c->shutdown_timeout_ms, true);
	if (strcmp(k, "shed_grace") == 0)
		return set_duration(p, k, v, &c->shed_grace_ms, true);
	if (strcmp(k, "drain_timeout") == 0)
		return set_duration(p, k, v, &c->drain_timeout_ms, true);
	if (strcmp(k, "inspect_idle") == 0)
		return set_duration(p, k, v, &c->inspect_idle_ms, true);
	if (strcmp(k, "move_custom_settings") == 0) {
		/* names go into SQL unquoted: only what a custom setting's name may be */
		for (const char *q = v; *q; q++)
			if (!(isalnum((unsigned char)*q) || *q == '_' || *q == '.' || *q == ',' ||
			      *q == ' '))
				return fail(p, p->line, k,
					    "must be a comma-separated list of setting names "
					    "(letters, digits, '_' and '.')");
		return set_string(p, k, v, c->move_custom_settings, sizeof(c->move_custom_settings));
	}
	if (strcmp(k, "max_client_conn") == 0) {
		if (parse_uint(v, 1, 1000000, &c->max_client_conn) != 0)
			return fail(p, p->line, k, "must be an integer 1..1000000");
		return 1;
	}
	if (strcmp(k, "tcp_keepalive") == 0)
		return set_on_off(p, k, v, &c->tcp_keepalive);
	if (strcmp(k, "tcp_keepidle") == 0)
		return set_duration(p, k, v, &c->tcp_keepidle_ms, true);
	if (strcmp(k, "tcp_keepintvl") == 0)
		return set_duration(p, k, v, &c->tcp_keepintvl_ms, true);
	if (strcmp(k, "tcp_keepcnt") == 0) {
		if (parse_uint(v, 0, 127, &c->tcp_keepcnt) != 0)
			return fail(p, p->line, k, "must be an integer 0..127 (0: the kernel's)");
		return 1;
	}
	if (strcmp(k, "tcp_user_timeout") == 0)
		return set_duration(p, k, v, &c->tcp_user_timeout_ms, true);
	if (strcmp(k, "auth") == 0)
		return auth_mode_key(p, k, v, &c->auth, &c->auth_line);
	if (strcmp(k, "auth_query") == 0) {
		c->auth_query_line = p->line;
		if (!strstr(v, "$1"))
			return fail(p, p->line, k, "must take the user name as $1");
		return set_string(p, k, v, c->auth_query, sizeof(c->auth_query));
	}
	if (strcmp(k, "auth_user") == 0)
		return set_string(p, k, v, c->auth_user, sizeof(c->auth_user));
	if (strcmp(k, "auth_password") == 0) {
		c->auth_password_set = true;
		return set_string(p, k, v, c->auth_password, sizeof(c->auth_password));
	}
	if (strcmp(k, "auth_file") == 0) {
		c->auth_file_line = p->line;
		return readable_file(p, k, v, c->auth_file, sizeof(c->auth_file));
	}
	if (strcmp(k, "auth_trust_users") == 0)
		return set_string(p, k, v, c->auth_trust_users, sizeof(c->auth_trust_users));
	if (strcmp(k, "auth_cache_ttl") == 0)
		return set_duration(p, k, v, &c->auth_cache_ttl_ms, true);
	if (strcmp(k, "pool_mode") == 0)
		return pool_mode_key(p, k, v, &c->pool_mode, &c->pool_mode_line);
	if (strcmp(k, "pool_size") == 0) {
		if (parse_uint(v, 1, 100000, &c->pool_size) != 0)
			return fail(p, p->line, k, "must be an integer 1..100000");
		return 1;
	}
	if (strcmp(k, "server_reset_query") == 0)
		return set_string(p, k, v, c->server_reset_query, sizeof(c->server_reset_query));
	if (strcmp(k, "server_idle_timeout") == 0)
		return set_duration(p, k, v, &c->server_idle_timeout_ms, true);
	if (strcmp(k, "server_lifetime") == 0)
		return set_duration(p, k, v, &c->server_lifetime_ms, true);
	return fail(p, p->line, k, "unknown key in [pgrouter]");
}

static int parse_servers(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	char buf[4096];
	if (strlen(v) >= sizeof(buf))
		return fail(p, p->line, k, "list too long");
	strcpy(buf, v);
	c->nservers = 0;
	for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok;
	     tok = strtok_r(NULL, ", \t", &save)) {
		if (c->nservers == CONFIG_MAX_SERVERS)
			return fail(p, p->line, k, "more than %d servers", CONFIG_MAX_SERVERS);
		struct server_config *s = &c->servers[c->nservers];
		const char *why;
		if (parse_hostport(tok, s->host, sizeof(s->host), s->port, sizeof(s->port), "5432",
				   &why) != 0)
			return fail(p, p->line, k, "\"%s\": %s", tok, why);
		s->line = p->line;
		c->nservers++;
	}
	if (c->nservers == 0)
		return fail(p, p->line, k, "empty server list");
	return 1;
}

/* A list of http(s) URLs into urls[16][256], trailing slashes dropped. */
static int parse_urls(struct parse_ctx *p, const char *k, const char *v, char (*urls)[256],
		      unsigned *count)
{
	char buf[4096];
	if (strlen(v) >= sizeof(buf))
		return fail(p, p->line, k, "list too long");
	strcpy(buf, v);
	*count = 0;
	for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok;
	     tok = strtok_r(NULL, ", \t", &save)) {
		if (*count == 16)
			return fail(p, p->line, k, "more than 16 URLs");
		if (strncmp(tok, "http://", 7) != 0 && strncmp(tok, "https://", 8) != 0)
			return fail(p, p->line, k, "\"%s\": must start with http:// or https://", tok);
		size_t n = strlen(tok);
		while (n && tok[n - 1] == '/')
			tok[--n] = 0; /* paths are appended to it */
		if (n >= 256)
			return fail(p, p->line, k, "\"%s\": too long", tok);
		strcpy(urls[(*count)++], tok);
	}
	if (*count == 0)
		return fail(p, p->line, k, "empty list");
	return 1;
}

static int cluster_key(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	if (strcmp(k, "source") == 0) {
		if (strcmp(v, "static") != 0 && strcmp(v, "etcd") != 0 && strcmp(v, "patroni") != 0 &&
		    strcmp(v, "zookeeper") != 0 && strcmp(v, "stolon") != 0 &&
		    strcmp(v, "kubernetes") != 0)
			return fail(p, p->line, k,
				    "unknown source \"%s\" (supported: static, etcd, zookeeper, patroni, "
				    "stolon, kubernetes)",
				    v);
		p->source_line = p->line;
		return set_string(p, k, v, c->source, sizeof(c->source));
	}
	if (strcmp(k, "servers") == 0)
		return parse_servers(p, k, v);
	if (strcmp(k, "probe_interval") == 0) {
		p->probe_interval_line = p->line;
		return set_duration(p, k, v, &c->probe_interval_ms, true);
	}
	if (strcmp(k, "probe_user") == 0)
		return set_string(p, k, v, c->probe_user, sizeof(c->probe_user));
	if (strcmp(k, "probe_password") == 0)
		return set_string(p, k, v, c->probe_password, sizeof(c->probe_password));
	if (strcmp(k, "probe_dbname") == 0)
		return set_string(p, k, v, c->probe_dbname, sizeof(c->probe_dbname));
	if (strcmp(k, "etcd_endpoints") == 0)
		return parse_urls(p, k, v, c->etcd_endpoints, &c->netcd);
	if (strcmp(k, "zookeeper_hosts") == 0) {
		char buf[4096];
		if (strlen(v) >= sizeof(buf))
			return fail(p, p->line, k, "list too long");
		strcpy(buf, v);
		c->nzk = 0;
		for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok;
		     tok = strtok_r(NULL, ", \t", &save)) {
			if (c->nzk == 16 || strlen(tok) >= sizeof(c->zk_hosts[0]))
				return fail(p, p->line, k, "more than 16 hosts, or one too long");
			if (!strchr(tok, ':'))
				return fail(p, p->line, k, "\"%s\": needs host:port", tok);
			strcpy(c->zk_hosts[c->nzk++], tok);
		}
		if (c->nzk == 0)
			return fail(p, p->line, k, "empty list");
		return 1;
	}
	if (strcmp(k, "zookeeper_session_timeout") == 0)
		return set_duration(p, k, v, &c->zk_session_timeout_ms, false);
	if (strcmp(k, "patroni_urls") == 0)
		return parse_urls(p, k, v, c->patroni_urls, &c->npatroni);
	if (strcmp(k, "poll_interval") == 0)
		return set_duration(p, k, v, &c->poll_interval_ms, false);
	if (strcmp(k, "namespace") == 0)
		return set_string(p, k, v, c->namespace_, sizeof(c->namespace_));
	if (strcmp(k, "scope") == 0) {
		if (!*v || strchr(v, '/'))
			return fail(p, p->line, k, "must be a Patroni scope name without '/'");
		return set_string(p, k, v, c->scope, sizeof(c->scope));
	}
	if (strcmp(k, "stolon_cluster") == 0) {
		if (!*v || strchr(v, '/'))
			return fail(p, p->line, k, "must be a Stolon cluster name without '/'");
		return set_string(p, k, v, c->stolon_cluster, sizeof(c->stolon_cluster));
	}
	if (strcmp(k, "kubernetes_api") == 0) {
		if (strncmp(v, "https://", 8) != 0 && strncmp(v, "http://", 7) != 0)
			return fail(p, p->line, k, "must be an https:// URL");
		size_t n = strlen(v);
		while (n && v[n - 1] == '/')
			n--;
		if (n >= sizeof(c->k8s_api))
			return fail(p, p->line, k, "too long");
		memcpy(c->k8s_api, v, n);
		c->k8s_api[n] = 0;
		return 1;
	}
	if (strcmp(k, "kubernetes_token_file") == 0)
		return readable_file(p, k, v, c->k8s_token_file, sizeof(c->k8s_token_file));
	if (strcmp(k, "kubernetes_cacert") == 0)
		return readable_file(p, k, v, c->k8s_cacert, sizeof(c->k8s_cacert));
	if (strcmp(k, "kubernetes_namespace") == 0)
		return set_string(p, k, v, c->k8s_namespace, sizeof(c->k8s_namespace));
	if (strcmp(k, "kubernetes_selector") == 0)
		return set_string(p, k, v, c->k8s_selector, sizeof(c->k8s_selector));
	if (strcmp(k, "kubernetes_role_label") == 0)
		return set_string(p, k, v, c->k8s_role_label, sizeof(c->k8s_role_label));
	if (strcmp(k, "kubernetes_primary_values") == 0)
		return set_string(p, k, v, c->k8s_primary_values, sizeof(c->k8s_primary_values));
	if (strcmp(k, "kubernetes_replica_values") == 0)
		return set_string(p, k, v, c->k8s_replica_values, sizeof(c->k8s_replica_values));
	if (strcmp(k, "kubernetes_port") == 0) {
		unsigned port;
		if (parse_uint(v, 1, 65535, &port) != 0)
			return fail(p, p->line, k, "must be 1..65535");
		snprintf(c->k8s_port, sizeof(c->k8s_port), "%u", port);
		return 1;
	}
	if (strcmp(k, "kubernetes_patroni_scope") == 0) {
		if (strchr(v, '/'))
			return fail(p, p->line, k, "must be a Patroni scope name without '/'");
		return set_string(p, k, v, c->k8s_patroni_scope, sizeof(c->k8s_patroni_scope));
	}
	if (strcmp(k, "kubernetes_patroni_leader") == 0) {
		if (strcmp(v, "configmap") != 0 && strcmp(v, "endpoints") != 0 && strcmp(v, "off") != 0)
			return fail(p, p->line, k, "must be configmap, endpoints or off");
		return set_string(p, k, v, c->k8s_patroni_leader, sizeof(c->k8s_patroni_leader));
	}
	if (strcmp(k, "stolon_register") == 0)
		return set_on_off(p, k, v, &c->stolon_register);
	if (strcmp(k, "stolon_prefix") == 0) {
		size_t n = strlen(v);
		while (n && v[n - 1] == '/')
			n--;
		if (n == 0 || n >= sizeof(c->stolon_prefix))
			return fail(p, p->line, k, "must be Stolon's store prefix (default stolon/cluster)");
		memcpy(c->stolon_prefix, v, n);
		c->stolon_prefix[n] = 0;
		return 1;
	}
	if (strcmp(k, "etcd_user") == 0)
		return set_string(p, k, v, c->etcd_user, sizeof(c->etcd_user));
	if (strcmp(k, "etcd_password") == 0)
		return set_string(p, k, v, c->etcd_password, sizeof(c->etcd_password));
	if (strcmp(k, "etcd_cacert") == 0)
		return readable_file(p, k, v, c->etcd_cacert, sizeof(c->etcd_cacert));
	if (strcmp(k, "max_lag") == 0) {
		if (parse_size(v, &c->max_lag) != 0)
			return fail(p, p->line, k, "invalid size \"%s\" (use kB, MB, GB)", v);
		return 1;
	}
	return fail(p, p->line, k, "unknown key in [cluster]");
}

static int listener_key(struct parse_ctx *p, const char *k, const char *v)
{
	struct listener_config *l = p->cur_listener;
	int r = client_tls_key(p, k, v, &l->tls);
	if (r >= 0)
		return r;
	if (strcmp(k, "listen") == 0) {
		const char *why;
		l->line = p->line;
		if (parse_hostport(v, l->host, sizeof(l->host), l->port, sizeof(l->port), "6432",
				   &why) != 0)
			return fail(p, p->line, k, "\"%s\": %s", v, why);
		return 1;
	}
	if (strcmp(k, "target_session_attrs") == 0) {
		for (unsigned i = 0; i < sizeof(tsa_names) / sizeof(tsa_names[0]); i++)
			if (strcmp(v, tsa_names[i]) == 0) {
				l->tsa = (enum tsa)i;
				return 1;
			}
		return fail(p, p->line, k,
			    "must be any, read-write, read-only, primary, standby or prefer-standby");
	}
	if (strcmp(k, "load_balance") == 0) {
		for (unsigned i = 0; i < sizeof(lb_names) / sizeof(lb_names[0]); i++)
			if (strcmp(v, lb_names[i]) == 0) {
				l->lb = (enum lb)i;
				return 1;
			}
		return fail(p, p->line, k, "must be round-robin, random or least-connections");
	}
	if (strcmp(k, "auth") == 0)
		return auth_mode_key(p, k, v, &l->auth, &l->auth_line);
	if (strcmp(k, "pool_mode") == 0)
		return pool_mode_key(p, k, v, &l->pool_mode, &l->pool_mode_line);
	if (strcmp(k, "pool_size") == 0) {
		l->pool_size_line = p->line;
		if (parse_uint(v, 1, 100000, &l->pool_size) != 0)
			return fail(p, p->line, k, "must be an integer 1..100000");
		return 1;
	}
	return fail(p, p->line, k, "unknown key in [listener %s]", l->name);
}

/* The admin console's sockets: "host:port" (TCP) or "/dir:port" (a Unix
 * socket /dir/.s.PGSQL.port, where psql -h /dir -p port looks). */
static int parse_console(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	char buf[1024];
	if (strlen(v) >= sizeof(buf))
		return fail(p, p->line, k, "list too long");
	strcpy(buf, v);
	c->nconsole = 0;
	c->console_line = p->line;
	for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok;
	     tok = strtok_r(NULL, ", \t", &save)) {
		if (c->nconsole == sizeof(c->console) / sizeof(c->console[0]))
			return fail(p, p->line, k, "more than 4 addresses");
		struct console_listen *cl = &c->console[c->nconsole++];
		memset(cl, 0, sizeof(*cl));
		const char *why;
		if (*tok == '/') {
			char *colon = strrchr(tok, ':');
			unsigned port = 6432;
			if (colon) {
				*colon = 0;
				if (parse_uint(colon + 1, 1, 65535, &port) != 0)
					return fail(p, p->line, k, "\"%s\": port must be 1..65535", tok);
			}
			cl->unix_socket = true;
			snprintf(cl->port, sizeof(cl->port), "%u", port);
			snprintf(cl->host, sizeof(cl->host), "%s", tok);
			if ((size_t)snprintf(cl->path, sizeof(cl->path), "%s/.s.PGSQL.%u", tok, port) >=
			    sizeof(cl->path))
				return fail(p, p->line, k, "\"%s\": socket path too long", tok);
		} else if (parse_hostport(tok, cl->host, sizeof(cl->host), cl->port, sizeof(cl->port),
					  "6432", &why) != 0) {
			return fail(p, p->line, k, "\"%s\": %s", tok, why);
		}
	}
	if (c->nconsole == 0)
		return fail(p, p->line, k, "empty list");
	return 1;
}

static int admin_key(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	if (strcmp(k, "http_listen") == 0) {
		const char *why;
		c->http_line = p->line;
		if (parse_hostport(v, c->http_host, sizeof(c->http_host), c->http_port,
				   sizeof(c->http_port), "9930", &why) != 0)
			return fail(p, p->line, k, "\"%s\": %s", v, why);
		return 1;
	}
	if (strcmp(k, "ready_max_stale") == 0)
		return set_duration(p, k, v, &c->ready_max_stale_ms, true);
	if (strcmp(k, "listen") == 0)
		return parse_console(p, k, v);
	if (strcmp(k, "admin_users") == 0)
		return set_string(p, k, v, c->admin_users, sizeof(c->admin_users));
	return fail(p, p->line, k, "unknown key in [admin]");
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
	struct parse_ctx *p = user;
	struct config *c = p->c;

	if (c->nkv < sizeof(c->kv) / sizeof(c->kv[0])) {
		struct config_kv *kv = &c->kv[c->nkv++];
		snprintf(kv->section, sizeof(kv->section), "%s", section);
		snprintf(kv->key, sizeof(kv->key), "%s", name);
		snprintf(kv->value, sizeof(kv->value), "%s", value);
		kv->line = p->line;
	}
	if (strcmp(section, p->cur_section) != 0) {
		snprintf(p->cur_section, sizeof(p->cur_section), "%s", section);
		p->cur_listener = NULL;
		if (strncmp(section, "listener", 8) == 0) {
			const char *nm = section + 8;
			while (*nm == ' ' || *nm == '\t')
				nm++;
			if (nm == section + 8 || !*nm)
				return fail(p, p->line, section, "a listener section needs a name: [listener rw]");
			for (unsigned i = 0; i < c->nlisteners; i++)
				if (strcmp(c->listeners[i].name, nm) == 0)
					return fail(p, p->line, section, "listener \"%s\" defined twice", nm);
			if (c->nlisteners == CONFIG_MAX_LISTENERS)
				return fail(p, p->line, section, "more than %d listeners",
					    CONFIG_MAX_LISTENERS);
			p->cur_listener = &c->listeners[c->nlisteners++];
			memset(p->cur_listener, 0, sizeof(*p->cur_listener));
			snprintf(p->cur_listener->name, sizeof(p->cur_listener->name), "%s", nm);
			p->cur_listener->line = p->line;
			p->cur_listener->tsa = TSA_ANY;
		}
	}
	if (strcmp(section, "pgrouter") == 0)
		return pgrouter_key(p, name, value);
	if (strcmp(section, "admin") == 0)
		return admin_key(p, name, value);
	if (strcmp(section, "cluster") == 0)
		return cluster_key(p, name, value);
	if (p->cur_listener)
		return listener_key(p, name, value);
	return fail(p, p->line, name, "unknown section [%s]", section);
}

static void defaults(struct config *c)
{
	int refs = atomic_load(&c->refs); /* the generation's, not the file's */
	memset(c, 0, sizeof(*c));
	atomic_init(&c->refs, refs);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	c->workers = n > 0 ? (unsigned)n : 1;
	c->worker_packing = true;
	c->io_uring = true;
	c->worker_busy_limit = 75;
	c->log_level = LOG_INFO;
	c->connect_timeout_ms = 3000;
	c->queue_timeout_ms = 10000;
	c->startup_timeout_ms = 10000;
	c->shutdown_timeout_ms = 30000;
	c->shed_grace_ms = 5000;
	c->drain_timeout_ms = 5000;
	c->inspect_idle_ms = 1000;
	c->ready_max_stale_ms = 30000;
	c->max_client_conn = 10000;
	/* a silent peer is found within 50 s: idle or waiting on a long query
	 * (probes at 20, 30, 40 s; the user timeout ends it at 50), or with
	 * bytes unacknowledged (the user timeout) */
	c->tcp_keepalive = true;
	c->tcp_keepidle_ms = 20000;
	c->tcp_keepintvl_ms = 10000;
	c->tcp_keepcnt = 3;
	c->tcp_user_timeout_ms = 50000;
	strcpy(c->source, "static");
	c->probe_interval_ms = 1000;
	strcpy(c->probe_user, "postgres");
	strcpy(c->probe_dbname, "postgres");
	strcpy(c->namespace_, "/service/");
	strcpy(c->stolon_prefix, "stolon/cluster");
	strcpy(c->k8s_role_label, "role");
	strcpy(c->k8s_primary_values, "primary, master");
	strcpy(c->k8s_replica_values, "replica, secondary");
	strcpy(c->k8s_port, "5432");
	strcpy(c->k8s_patroni_leader, "configmap");
	strcpy(c->etcd_endpoints[0], "http://127.0.0.1:2379");
	c->netcd = 1;
	c->poll_interval_ms = 1000;
	c->zk_session_timeout_ms = 10000;
	c->max_lag = 16 * 1024 * 1024;
	strcpy(c->client_tls.min_version, "TLSv1.2");
	strcpy(c->auth_query, AUTH_QUERY_DEFAULT);
	c->auth_cache_ttl_ms = 60000;
	c->pool_size = 20;
	strcpy(c->server_reset_query, "DISCARD ALL");
	c->server_idle_timeout_ms = 600000;
	c->server_lifetime_ms = 3600000;
}

/* A listener's TLS settings: [pgrouter]'s, with the keys it sets itself on top. */
static void inherit_tls(struct tls_config *l, const struct tls_config *g)
{
	if (!l->line[TK_MODE])
		l->mode = g->mode;
	if (!l->line[TK_CERT])
		memcpy(l->cert, g->cert, sizeof(l->cert));
	if (!l->line[TK_KEY])
		memcpy(l->key, g->key, sizeof(l->key));
	if (!l->line[TK_CA])
		memcpy(l->ca, g->ca, sizeof(l->ca));
	if (!l->line[TK_MIN_VERSION])
		memcpy(l->min_version, g->min_version, sizeof(l->min_version));
	if (!l->line[TK_CIPHERS])
		memcpy(l->ciphers, g->ciphers, sizeof(l->ciphers));
	for (int i = 0; i < TK_N; i++)
		if (!l->line[i])
			l->line[i] = g->line[i];
}

static int tls_checks(struct config *c, char *err, size_t errlen)
{
	for (unsigned i = 0; i < c->nlisteners; i++) {
		struct tls_config *t = &c->listeners[i].tls;
		if (t->mode != CLIENT_TLS_DISABLE && (!t->cert[0] || !t->key[0])) {
			snprintf(err, errlen,
				 "%s:%d: client_tls: client_tls = %s needs client_tls_cert and "
				 "client_tls_key (listener %s)",
				 c->path, t->line[TK_MODE], client_tls_names[t->mode],
				 c->listeners[i].name);
			return -1;
		}
	}
	if (c->server_tls >= SERVER_TLS_VERIFY_CA && !c->server_tls_ca[0]) {
		snprintf(err, errlen, "%s:%d: server_tls: %s needs server_tls_ca (the CA file)",
			 c->path, c->server_tls_line[0], server_tls_names[c->server_tls]);
		return -1;
	}
	if (!c->server_tls_cert[0] != !c->server_tls_key[0]) {
		int line = c->server_tls_line[2] ? c->server_tls_line[2] : c->server_tls_line[3];
		snprintf(err, errlen, "%s:%d: server_tls_cert: set both server_tls_cert and server_tls_key",
			 c->path, line);
		return -1;
	}
	return 0;
}

#define SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount/"

/* Inside a pod: the API from the environment, the service account's token,
 * CA and namespace from their files — for what the file does not set. */
static int in_cluster_defaults(struct config *c, int line, char *err, size_t errlen)
{
	const char *host = getenv("KUBERNETES_SERVICE_HOST"), *port = getenv("KUBERNETES_SERVICE_PORT");
	if (!c->k8s_api[0] && host && port)
		snprintf(c->k8s_api, sizeof(c->k8s_api), strchr(host, ':') ? "https://[%s]:%s"
									   : "https://%s:%s",
			 host, port);
	if (!c->k8s_token_file[0] && access(SA_DIR "token", R_OK) == 0)
		strcpy(c->k8s_token_file, SA_DIR "token");
	if (!c->k8s_cacert[0] && access(SA_DIR "ca.crt", R_OK) == 0)
		strcpy(c->k8s_cacert, SA_DIR "ca.crt");
	if (!c->k8s_namespace[0]) {
		FILE *f = fopen(SA_DIR "namespace", "r");
		if (f) {
			if (fgets(c->k8s_namespace, sizeof(c->k8s_namespace), f))
				c->k8s_namespace[strcspn(c->k8s_namespace, "\r\n")] = 0;
			fclose(f);
		}
		if (!c->k8s_namespace[0])
			strcpy(c->k8s_namespace, "default");
	}
	if (!c->k8s_api[0]) {
		snprintf(err, errlen, "%s:%d: kubernetes_api: source = kubernetes needs the API's "
			 "URL (or KUBERNETES_SERVICE_HOST/PORT in the environment, as in a pod)",
			 c->path, line);
		return -1;
	}
	if (!c->k8s_selector[0]) {
		snprintf(err, errlen, "%s:%d: kubernetes_selector: source = kubernetes needs a label "
			 "selector for the cluster's pods (e.g. cnpg.io/cluster=pg1)", c->path, line);
		return -1;
	}
	return 0;
}

int config_load(const char *path, struct config *c, char *err, size_t errlen)
{
	defaults(c);
	snprintf(c->path, sizeof(c->path), "%s", path);
	struct parse_ctx p = { .c = c, .err = err, .errlen = errlen };
	err[0] = 0;

	p.f = fopen(path, "r");
	if (!p.f) {
		snprintf(err, errlen, "%s:0: file: %s", path, strerror(errno));
		return -1;
	}
	/* long server lists need more than inih's default 200-byte line */
	ini_use_stack = false;
	ini_max_line = 8192;
	int rc = ini_parse_stream(counting_reader, &p, handler, &p);
	fclose(p.f);
	if (rc != 0) {
		if (!err[0])
			snprintf(err, errlen, "%s:%d: syntax: expected [section] or key = value", path,
				 rc > 0 ? rc : 0);
		return -1;
	}

	/* whole-file checks, each pointing at the line that is wrong or missing */
	if (strcmp(c->source, "static") == 0) {
		if (c->nservers == 0) {
			snprintf(err, errlen, "%s:%d: servers: source = static needs a server list",
				 path, p.source_line);
			return -1;
		}
		if (c->probe_interval_ms == 0) {
			snprintf(err, errlen,
				 "%s:%d: probe_interval: source = static learns roles only by probing; "
				 "it cannot be 0",
				 path, p.probe_interval_line);
			return -1;
		}
	}
	if ((strcmp(c->source, "etcd") == 0 || strcmp(c->source, "zookeeper") == 0) && !c->scope[0]) {
		snprintf(err, errlen, "%s:%d: scope: source = %s needs the Patroni scope (cluster name)",
			 path, p.source_line, c->source);
		return -1;
	}
	if (strcmp(c->source, "stolon") == 0 && !c->stolon_cluster[0]) {
		snprintf(err, errlen, "%s:%d: stolon_cluster: source = stolon needs the Stolon cluster "
			 "name (stolonctl's --cluster-name)", path, p.source_line);
		return -1;
	}
	if (strcmp(c->source, "kubernetes") == 0 && in_cluster_defaults(c, p.source_line, err,
									errlen) != 0)
		return -1;
	if (strcmp(c->source, "zookeeper") == 0 && c->nzk == 0) {
		snprintf(err, errlen, "%s:%d: zookeeper_hosts: source = zookeeper needs host:port list",
			 path, p.source_line);
		return -1;
	}
	if (strcmp(c->source, "patroni") == 0 && c->npatroni == 0) {
		snprintf(err, errlen,
			 "%s:%d: patroni_urls: source = patroni needs the members' REST API URLs",
			 path, p.source_line);
		return -1;
	}
	if (strcmp(c->source, "static") != 0 && c->nservers) {
		snprintf(err, errlen, "%s:%d: servers: source = %s finds servers itself; remove servers",
			 path, c->servers[0].line, c->source);
		return -1;
	}
	if (c->nlisteners == 0) {
		snprintf(err, errlen, "%s:%d: listener: no [listener NAME] section", path, p.line);
		return -1;
	}
	/* credentials: auth_query or auth_file make pgrouter authenticate by default */
	if (!c->auth_line && (c->auth_query_line || c->auth_file_line))
		c->auth = AUTH_ROUTER;
	if (!c->auth_user[0])
		strcpy(c->auth_user, c->probe_user);
	if (!c->auth_password_set)
		strcpy(c->auth_password, c->probe_password);
	for (unsigned i = 0; i < c->nlisteners; i++) {
		struct listener_config *l = &c->listeners[i];
		l->cfg = c;
		l->slot = i;
		inherit_tls(&l->tls, &c->client_tls);
		if (!l->auth_line)
			l->auth = c->auth;
		if (!l->pool_mode_line) {
			l->pool_mode = c->pool_mode;
			l->pool_mode_line = c->pool_mode_line;
		}
		if (!l->pool_size_line)
			l->pool_size = c->pool_size;
		if (l->pool_mode == POOL_SESSION && l->auth != AUTH_ROUTER) {
			snprintf(err, errlen,
				 "%s:%d: pool_mode: pool_mode = session needs auth = router on listener "
				 "%s (a pooled server connection is logged in as its user: only a "
				 "client pgrouter authenticated may have it)",
				 path, l->pool_mode_line, l->name);
			return -1;
		}
		if (!l->host[0]) {
			snprintf(err, errlen, "%s:%d: listen: [listener %s] has no listen address",
				 path, l->line, l->name);
			return -1;
		}
		for (unsigned j = 0; j < i; j++)
			if (strcmp(c->listeners[j].host, l->host) == 0 &&
			    strcmp(c->listeners[j].port, l->port) == 0) {
				snprintf(err, errlen, "%s:%d: listen: %s:%s is also [listener %s]",
					 path, l->line, l->host, l->port, c->listeners[j].name);
				return -1;
			}
	}
	for (unsigned i = 0; i < c->nconsole; i++)
		if (!c->console[i].unix_socket && (!c->admin_users[0] || !c->auth_file[0])) {
			snprintf(err, errlen,
				 "%s:%d: listen: the admin console on TCP (%s:%s) needs admin_users, "
				 "whose SCRAM verifiers are in auth_file (a Unix socket needs neither: "
				 "it admits pgrouter's own OS user and root)",
				 path, c->console_line, c->console[i].host, c->console[i].port);
			return -1;
		}
	return tls_checks(c, err, errlen);
}
