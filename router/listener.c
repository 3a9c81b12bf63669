/*
 * listener.c — one listening socket per [listener] per worker, all bound to the
 * same address with SO_REUSEPORT, so the kernel spreads new connections across
 * workers and no accept lock is shared.
 *
 * Sockets are indexed by the listener's slot, which stays the listener's for
 * the life of the process (metrics and PAUSE bits use it too): a reload that
 * adds a listener binds it here (main thread) and each worker takes its socket
 * when it switches to the new configuration; a removed one is closed by the
 * workers then.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/router.h"

/* v in decimal at p; returns the end */
static char *put_uint(char *p, unsigned v)
{
	char t[10];
	int n = 0;
	do
		t[n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	while (n)
		*p++ = t[--n];
	return p;
}

void sockaddr_describe(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (sa->sa_family == AF_INET && len >= sizeof("255.255.255.255:65535")) {
		/* every connection's: digits by hand, not through snprintf */
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		const uint8_t *a = (const uint8_t *)&in->sin_addr;
		char *p = buf;
		for (int i = 0; i < 4; i++) {
			p = put_uint(p, a[i]);
			*p++ = i < 3 ? '.' : ':';
		}
		*put_uint(p, ntohs(in->sin_port)) = '\0';
		return;
	}
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		evutil_inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		evutil_inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
	}
	snprintf(buf, len, sa->sa_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

static int sysctl_int(const char *path, int fallback)
{
	FILE *f = fopen(path, "re");
	int v = 0;
	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v > 0 ? v : fallback;
}

/* No Nagle, and the keepalive and user timeout that find a peer that went
 * away without a word (a partition, a frozen host): the kernel then fails
 * the socket with ETIMEDOUT. Best effort: a Unix socket takes none of it.
 * Set on a listening socket, Linux copies all of it to each socket accepted
 * there (no system call per client). */
void tcp_tune(int fd, const struct config *c)
{
	int one = 1, keep = c->tcp_keepalive;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &keep, sizeof(keep));
	if (keep) {
		/* whole seconds, at least one, as the kernel counts them; 0: the
		 * system's default, set explicitly (a listening socket may hold an
		 * earlier configuration's value) */
		int idle = (int)((c->tcp_keepidle_ms + 999) / 1000);
		int intvl = (int)((c->tcp_keepintvl_ms + 999) / 1000);
		int cnt = (int)c->tcp_keepcnt;
		idle = idle ? idle : sysctl_int("/proc/sys/net/ipv4/tcp_keepalive_time", 7200);
		intvl = intvl ? intvl : sysctl_int("/proc/sys/net/ipv4/tcp_keepalive_intvl", 75);
		cnt = cnt ? cnt : sysctl_int("/proc/sys/net/ipv4/tcp_keepalive_probes", 9);
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	}
	unsigned ut = c->tcp_user_timeout_ms; /* 0: the system's default */
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof(ut));
}

static int bind_one(const struct addrinfo *ai, bool reuseport)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (ai->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int bind_listener(struct router *r, const struct config *c, const struct listener_config *l,
			 char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE };
	struct addrinfo *ai = NULL;
	int rc = getaddrinfo(l->host, l->port, &hints, &ai);
	if (rc != 0) {
		snprintf(err, errlen, "%s:%d: listen: cannot resolve %s: %s", c->path, l->line,
			 l->host, gai_strerror(rc));
		return -1;
	}
	/* SO_REUSEPORT would let us share a port with another running pgrouter:
	 * bind once without it first so "address in use" is reported. */
	int probe = bind_one(ai, false);
	if (probe < 0) {
		snprintf(err, errlen, "%s:%d: listen: cannot listen on %s:%s: %s", c->path, l->line,
			 l->host, l->port, strerror(errno));
		freeaddrinfo(ai);
		return -1;
	}
	close(probe);
	for (unsigned w = 0; w < r->nworkers; w++) {
		int fd = bind_one(ai, true);
		if (fd < 0) {
			snprintf(err, errlen, "%s:%d: listen: cannot listen on %s:%s: %s", c->path,
				 l->line, l->host, l->port, strerror(errno));
			freeaddrinfo(ai);
			return -1;
		}
		r->listen_fds[w][l->slot] = fd;
	}
	freeaddrinfo(ai);
	return 0;
}

static void close_slot(struct router *r, unsigned slot)
{
	for (unsigned w = 0; w < r->nworkers; w++)
		if (r->listen_fds[w][slot] >= 0) {
			close(r->listen_fds[w][slot]);
			r->listen_fds[w][slot] = -1;
		}
}

int listeners_bind(struct router *r, const struct config *c, const struct config *old, char *err,
		   size_t errlen)
{
	if (!r->listen_fds) {
		r->listen_fds = calloc(r->nworkers, sizeof(*r->listen_fds));
		if (!r->listen_fds) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		for (unsigned w = 0; w < r->nworkers; w++)
			for (unsigned i = 0; i < CONFIG_MAX_LISTENERS; i++)
				r->listen_fds[w][i] = -1;
	}
	for (unsigned i = 0; i < c->nlisteners; i++) {
		const struct listener_config *l = &c->listeners[i];
		if (old && config_listener((struct config *)old, l->name))
			continue;
		if (bind_listener(r, c, l, err, errlen) != 0) {
			for (unsigned j = 0; j <= i; j++)
				if (!old || !config_listener((struct config *)old, c->listeners[j].name))
					close_slot(r, c->listeners[j].slot);
			return -1;
		}
	}
	return 0;
}

void listeners_unbind_unclaimed(struct router *r)
{
	for (unsigned i = 0; r->listen_fds && i < CONFIG_MAX_LISTENERS; i++)
		close_slot(r, i);
}

static bool slot_live(const struct config *c, unsigned slot)
{
	for (unsigned i = 0; i < c->nlisteners; i++)
		if (c->listeners[i].slot == slot)
			return true;
	return false;
}

int listeners_assign_slots(struct router *r, struct config *c, const struct config *old,
			   char *err, size_t errlen)
{
	bool taken[CONFIG_MAX_LISTENERS] = { false };
	for (unsigned i = 0; i < c->nlisteners; i++) {
		struct listener_config *o =
			old ? config_listener((struct config *)old, c->listeners[i].name) : NULL;
		c->listeners[i].slot = o ? o->slot : CONFIG_MAX_LISTENERS;
		if (o)
			taken[o->slot] = true;
	}
	for (unsigned i = 0; i < c->nlisteners; i++) {
		struct listener_config *l = &c->listeners[i];
		if (l->slot < CONFIG_MAX_LISTENERS)
			continue;
		/* a slot never used; else one whose listener is gone and has no client left */
		unsigned pick = CONFIG_MAX_LISTENERS;
		for (unsigned k = 0; k < CONFIG_MAX_LISTENERS && pick == CONFIG_MAX_LISTENERS; k++)
			if (!taken[k] && !r->slot_names[k][0])
				pick = k;
		for (unsigned k = 0; k < CONFIG_MAX_LISTENERS && pick == CONFIG_MAX_LISTENERS; k++)
			if (!taken[k] && !(old && slot_live(old, k)) &&
			    stats_sum_i(STATS_OFF(l[k].clients)) == 0)
				pick = k;
		if (pick == CONFIG_MAX_LISTENERS) {
			snprintf(err, errlen,
				 "%s:%d: listener: no room for [listener %s]: %d listeners, or removed "
				 "ones whose sessions are still open",
				 c->path, l->line, l->name, CONFIG_MAX_LISTENERS);
			return -1;
		}
		taken[pick] = true;
		l->slot = pick;
	}
	for (unsigned i = 0; i < c->nlisteners; i++)
		snprintf(r->slot_names[c->listeners[i].slot], sizeof(r->slot_names[0]), "%s",
			 c->listeners[i].name);
	return 0;
}
