/*
 * relay.c — moving bytes between a client and its server.
 *
 *   readable(from)
 *     to->out empty ──▶ read(from) into the worker's scratch ──▶ scan ──▶ write(to)
 *        │                                                        │ partial write
 *        │                                                        ▼
 *     to->out busy ──▶ readv(from) straight into to->out ──▶ scan   to->out += rest, watch to
 *                                                                 │ > high watermark
 *                                                                 ▼
 *                                                      stop reading from until to
 *                                                      drains below the low watermark
 *
 * In the common case a round trip costs one read and one write per direction
 * and no allocation: the bytes pass through a buffer the worker owns. Only
 * when the peer's socket is full does anything stay in user space, and then
 * reads go directly into the pending evbuffer's own chains (no copy). The
 * scanner reads headers only; bodies are never touched or copied.
 *
 * A TLS end reads and writes through end_recv/end_send (tls.c); the path is
 * the same, with OpenSSL's record buffer in front of the socket, and the
 * records a message makes staged like a plaintext message.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "router/router.h"

_Static_assert((EV_READ | EV_WRITE | EV_CLOSED) <= UINT8_MAX, "an end keeps event flags in a byte");

/* cb: the owner's callback, which calls end_dispatch; the event keeps it */
void end_setup(struct end *e, struct event_base *base, int fd, event_callback_fn cb)
{
	e->fd = fd;
	e->rd_what = EV_READ;
	e->armed = 0;
	event_assign(&e->ev, base, fd, EV_READ | EV_PERSIST, cb, e);
	e->rd_on = e->wr_on = e->paused = false;
}

/* Register e's event for what rd_on and wr_on ask (the worker's changelist
 * makes a delete and an add in one loop turn a single epoll_ctl). */
static void end_arm(struct end *e)
{
	uint8_t want = (uint8_t)((e->rd_on ? e->rd_what : 0) | (e->wr_on ? EV_WRITE : 0));
	if (want == e->armed)
		return;
	struct event_base *base = event_get_base(&e->ev);
	event_del(&e->ev);
	e->armed = want;
	if (!want)
		return;
	event_assign(&e->ev, base, e->fd, want | EV_PERSIST, event_get_callback(&e->ev), e);
	event_add(&e->ev, NULL);
	/* records OpenSSL already holds will not make the socket readable */
	if (e->rd_on && e->ssl && SSL_has_pending(e->ssl))
		event_active(&e->ev, EV_READ, 0);
}

void end_detach(struct end *e)
{
	end_settle(e);
	if (e->fd >= 0 && e->armed)
		event_del(&e->ev);
}

void end_attach(struct end *e, struct event_base *base)
{
	if (e->fd < 0)
		return;
	event_assign(&e->ev, base, e->fd, (e->armed ? e->armed : EV_READ) | EV_PERSIST,
		     event_get_callback(&e->ev), e);
	if (!e->armed)
		return;
	event_add(&e->ev, NULL);
	if (e->rd_on && e->ssl && SSL_has_pending(e->ssl))
		event_active(&e->ev, EV_READ, 0);
}

void end_read(struct end *e, bool on)
{
	if (e->fd < 0 || e->rd_on == on)
		return;
	e->rd_on = on;
	end_arm(e);
}

void end_read_what(struct end *e, short what)
{
	if (e->fd < 0 || e->rd_what == what)
		return;
	e->rd_what = (uint8_t)what;
	end_arm(e);
}

void end_kick_read(struct end *e)
{
	if (e->rd_on && e->fd >= 0)
		event_active(&e->ev, EV_READ, 0);
}

void end_write(struct end *e, bool on)
{
	if (e->fd < 0 || e->wr_on == on)
		return;
	e->wr_on = on;
	end_arm(e);
}

void end_close(struct end *e)
{
	end_settle(e); /* what the relay took for the peer goes before the close */
	if (e->fd >= 0) {
		e->rd_on = e->wr_on = false;
		end_arm(e);
		close(e->fd);
		e->fd = -1;
	}
	if (e->ssl) {
		SSL_free(e->ssl);
		e->ssl = NULL;
	}
	e->rd_wants_wr = e->wr_wants_rd = e->held = false;
	if (e->out) {
		evbuffer_free(e->out);
		e->out = NULL;
	}
}

static bool ensure_out(struct end *e)
{
	if (!e->out)
		e->out = evbuffer_new();
	return e->out != NULL;
}

bool end_queue(struct end *e, const void *p, size_t n)
{
	return ensure_out(e) && evbuffer_add(e->out, p, n) == 0;
}

/* TLS: write the head chain by chain. A record OpenSSL could not send stays
 * pending with its bytes still at the head of out, as the retry needs. */
static int flush_tls(struct end *e)
{
	struct evbuffer_iovec v;
	while (evbuffer_peek(e->out, -1, NULL, &v, 1) > 0 && v.iov_len) {
		ssize_t n = end_send(e, v.iov_base, v.iov_len);
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		evbuffer_drain(e->out, (size_t)n);
		if ((size_t)n < v.iov_len)
			return 0;
	}
	return 0;
}

ssize_t end_flush(struct end *e)
{
	end_settle(e);
	if (e->rd_wants_wr) {
		/* the socket a TLS read waited for is writable: read again */
		e->rd_wants_wr = false;
		end_kick_read(e);
	}
	if (e->held) {
		/* ciphertext first: nothing is encrypted behind it until it is gone */
		ssize_t held = tls_flush_held(e);
		if (held < 0)
			return -1;
		if (held) {
			end_write(e, true);
			return held + (ssize_t)(e->out ? evbuffer_get_length(e->out) : 0);
		}
	}
	if (!e->out) {
		end_write(e, false);
		return 0;
	}
	size_t len = evbuffer_get_length(e->out);
	if (len && e->fd >= 0) {
		if (e->ssl) {
			if (flush_tls(e) < 0)
				return -1;
		} else {
			int n = evbuffer_write(e->out, e->fd);
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				return -1;
		}
		len = evbuffer_get_length(e->out);
	}
	if (!len) { /* an idle session keeps no buffer */
		evbuffer_free(e->out);
		e->out = NULL;
	}
	end_write(e, len > 0);
	return (ssize_t)len;
}

const uint8_t *msg_next(struct evbuffer *in, uint32_t max, uint8_t *type, uint32_t *body,
		       bool *bad)
{
	uint8_t hdr[PGW_HEADER_LEN];
	size_t have = evbuffer_get_length(in);
	*bad = false;
	if (have < PGW_HEADER_LEN)
		return NULL;
	evbuffer_copyout(in, hdr, sizeof(hdr));
	if (pgw_header(hdr, max, type, body) != 0) {
		*bad = true;
		return NULL;
	}
	if (have < PGW_HEADER_LEN + (size_t)*body)
		return NULL;
	return evbuffer_pullup(in, PGW_HEADER_LEN + (ssize_t)*body);
}

void relay_resume(struct end *from, struct end *to)
{
	if (from->paused && (!to->out || evbuffer_get_length(to->out) < RELAY_LOW_WATERMARK)) {
		from->paused = false;
		end_read(from, true);
	}
}

static int scan(struct end *from, const uint8_t *p, size_t n)
{
	return pgw_scan(&from->scan, p, n) == 0 ? 0 : -2;
}

/* Relayed bytes, by server and direction (metrics.c): one store, no lock. */
static void count_bytes(struct session *s, const struct end *from, size_t n)
{
	if (!s->srv)
		return;
	unsigned id = s->srv->id < METRIC_SERVERS ? s->srv->id : METRIC_SERVERS - 1;
	struct server_stats *st = &s->w->stats->s[id];
	stat_add(from == &s->s ? &st->bytes_received : &st->bytes_sent, n);
}

int relay_move(struct session *s, struct end *from, struct end *to, bool batch)
{
	ssize_t n;
	if (from->wr_wants_rd) {
		/* a TLS write to `from` waited for it to be readable: retry it */
		from->wr_wants_rd = false;
		if (end_flush(from) < 0)
			return -1;
		if (from->paused) {
			/* end_send turned reading on for it: backpressure stands */
			end_read(from, false);
			return 0;
		}
	}

	if (to->fd >= 0 && !end_busy(to)) {
		/* fast path: through the worker's scratch buffer */
		uint8_t *buf = s->w->scratch;
		n = end_recv(from, buf, sizeof(s->w->scratch));
		if (n <= 0)
			goto read_failed;
		count_bytes(s, from, (size_t)n);
		if (scan(from, buf, (size_t)n) != 0)
			return -2;
		if (from->scan.last_type == PGW_MSG_TERMINATE && s->sc && from == &s->c &&
		    !s->client_quit && pgw_scan_at_boundary(&from->scan) && n >= 5) {
			/* a pooled connection outlives its client: its Terminate (the
			 * last message it sends, so the chunk's last 5 bytes) stays here */
			s->client_quit = true;
			if ((n -= 5) == 0)
				return 0;
		}
		if (batch && !to->ssl && batch_add(to, buf, (size_t)n))
			return 0; /* sent at the end of the loop turn (batch.c) */
		/* TLS: its records are staged by its BIO (tls.c) */
		ssize_t w = batch && to->ssl ? end_send_staged(to, buf, (size_t)n)
					     : end_send(to, buf, (size_t)n);
		if (w < 0) {
			if (errno != EAGAIN && errno != EINTR) {
				/* kept: what `to` never took may go elsewhere (session.c) */
				int e = errno;
				end_queue(to, buf, (size_t)n);
				errno = e;
				return RELAY_TO_FAILED;
			}
			w = 0;
		}
		if (w == n)
			return 0;
		/* the peer is slower: keep the rest and watch it */
		if (!end_queue(to, buf + w, (size_t)(n - w)))
			return -1;
		end_write(to, true);
	} else {
		/* slow path: the peer has a backlog (or no socket yet), append to it */
		if (!ensure_out(to))
			return -1;
		struct evbuffer_iovec v[2];
		int nv = evbuffer_reserve_space(to->out, 32 * 1024, v, 2);
		if (nv <= 0)
			return -1;
		struct iovec iov[2];
		for (int i = 0; i < nv; i++)
			iov[i] = (struct iovec){ v[i].iov_base, v[i].iov_len };
		/* OpenSSL reads into one buffer */
		n = from->ssl ? end_recv(from, iov[0].iov_base, iov[0].iov_len)
			      : readv(from->fd, iov, nv);
		if (n <= 0) {
			evbuffer_commit_space(to->out, v, 0);
			goto read_failed;
		}
		count_bytes(s, from, (size_t)n);
		size_t left = (size_t)n;
		int used = 0;
		for (; used < nv && left; used++) {
			size_t k = v[used].iov_len < left ? v[used].iov_len : left;
			v[used].iov_len = k;
			left -= k;
			if (scan(from, v[used].iov_base, k) != 0) {
				evbuffer_commit_space(to->out, v, 0);
				return -2;
			}
		}
		evbuffer_commit_space(to->out, v, used);
		if (from->scan.last_type == PGW_MSG_TERMINATE && s->sc && from == &s->c)
			s->quit_passed = true; /* queued behind a backlog: the server gets it */
		if (to->fd >= 0 && end_flush(to) < 0)
			return RELAY_TO_FAILED;
	}
	if (to->out && evbuffer_get_length(to->out) > RELAY_HIGH_WATERMARK) {
		from->paused = true;
		end_read(from, false);
	}
	return 0;

read_failed:
	if (n == 0) {
		errno = 0;
		return -1;
	}
	if (errno == EAGAIN || errno == EINTR)
		return 0;
	return -1;
}
