/*
 * status_cli.c — `pgrouter --status -c FILE`: asks the running pgrouter's
 * HTTP endpoint ([admin] http_listen) for /status and prints it as a table,
 * the way `patronictl list` shows a cluster.
 */
#include <jansson.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "router/router.h"

/* GET path from host:port (HTTP/1.0, blocking, 5 s); the body, malloc'd. */
static char *http_get(const char *host, const char *port, const char *path, char *err,
		      size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	int rc = getaddrinfo(host, port, &hints, &ai);
	if (rc != 0) {
		snprintf(err, errlen, "%s: %s", host, gai_strerror(rc));
		return NULL;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = { 5, 0 };
	if (fd >= 0) {
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		snprintf(err, errlen, "cannot reach pgrouter's HTTP endpoint %s:%s (is it running, "
				      "with [admin] http_listen?)", host, port);
		freeaddrinfo(ai);
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	freeaddrinfo(ai);
	char req[256];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	if (!buf || write(fd, req, (size_t)n) != n) {
		snprintf(err, errlen, "cannot send the request");
		free(buf);
		close(fd);
		return NULL;
	}
	for (;;) {
		if (len + 1 == cap) {
			char *b = realloc(buf, cap *= 2);
			if (!b)
				break;
			buf = b;
		}
		ssize_t r = read(fd, buf + len, cap - len - 1);
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = 0;
	char *body = strstr(buf, "\r\n\r\n");
	if (strncmp(buf, "HTTP/1.", 7) != 0 || !body || strncmp(buf + 9, "200", 3) != 0) {
		snprintf(err, errlen, "unexpected answer from %s:%s: %.60s", host, port, buf);
		free(buf);
		return NULL;
	}
	memmove(buf, body + 4, strlen(body + 4) + 1);
	return buf;
}

static const char *str(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

int status_print(const struct config *c, FILE *out)
{
	char err[700];
	if (!c->http_host[0]) {
		fprintf(stderr, "%s: no [admin] http_listen: --status asks the running pgrouter "
				"through it\n", c->path);
		return 1;
	}
	char *body = http_get(c->http_host, c->http_port, "/status", err, sizeof(err));
	if (!body) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	json_error_t je;
	json_t *j = json_loads(body, 0, &je);
	free(body);
	if (!j) {
		fprintf(stderr, "invalid /status answer: %s\n", je.text);
		return 1;
	}
	json_t *d = json_object_get(j, "discovery");
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	double age = (double)now.tv_sec + now.tv_nsec / 1e9 -
		     json_real_value(json_object_get(d, "updated"));
	fprintf(out, "pgrouter %s, source %s%s, view confirmed %.1fs ago%s\n", str(j, "version"),
		str(d, "source"), json_is_true(json_object_get(d, "stale")) ? " (STALE)" : "", age,
		json_is_true(json_object_get(j, "draining")) ? ", DRAINING" : "");
	fprintf(out, "%-24s %-20s %-8s %-12s %12s %9s\n", "Server", "Member", "Role", "State",
		"Lag (bytes)", "Sessions");
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(j, "servers"), i, s) {
		const char *state = !json_is_true(json_object_get(s, "reachable")) ? "unreachable"
				    : json_is_true(json_object_get(s, "draining"))  ? "draining"
										   : "running";
		json_t *lag = json_object_get(s, "lag_bytes");
		char lagbuf[24] = "-";
		if (json_is_integer(lag))
			snprintf(lagbuf, sizeof(lagbuf), "%lld", (long long)json_integer_value(lag));
		fprintf(out, "%-24s %-20s %-8s %-12s %12s %9lld\n", str(s, "server"), str(s, "name"),
			str(s, "role"), state, lagbuf,
			(long long)json_integer_value(json_object_get(s, "sessions")));
	}
	fprintf(out, "%-12s %-22s %-15s %8s %7s\n", "Listener", "Address", "Policy", "Clients",
		"Queued");
	json_array_foreach(json_object_get(j, "listeners"), i, s)
		fprintf(out, "%-12s %-22s %-15s %8lld %7lld\n", str(s, "name"), str(s, "listen"),
			str(s, "target_session_attrs"),
			(long long)json_integer_value(json_object_get(s, "clients")),
			(long long)json_integer_value(json_object_get(s, "queued")));
	json_decref(j);
	return 0;
}
