/*
 * tls.c — OpenSSL on both ends of a session.
 *
 * No bufferevents: a TLS end is the same `struct end` as a plain one, with an
 * SSL on its socket, and relay.c's path stays one read and one write per hop
 * (SSL_read into the worker's scratch buffer, SSL_write out of it). What TLS
 * adds is handled here:
 *
 *   read-ahead     OpenSSL reads as much as the socket has; records it
 *                  buffered are read before the socket is polled again
 *                  (end_recv loops while SSL_has_pending, end_read re-arms).
 *   partial write  SSL_write returns per record; a record that did not fit
 *                  stays in OpenSSL and its bytes stay at the head of end->out,
 *                  which is exactly what the retry must present.
 *   batched write  the relay's records go into the loop turn's batch through
 *                  pgrouter's BIO; a short send leaves ciphertext that the
 *                  end holds, first in line (see "the socket").
 *   want read/write  a read that needs the socket writable (or the reverse)
 *                  sets a flag and arms the other event; rare without
 *                  renegotiation, which is off.
 *
 * Contexts: one per listener with client_tls != disable, one for servers.
 * Built at start (and by --check, so a bad file is a config error) and again
 * on SIGHUP; a swap happens under ctx_lock, and SSLs keep their own reference.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/router.h"

static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;

static const unsigned char alpn_postgresql[] = "\x0apostgresql";

/* The first queued OpenSSL error, or fallback. */
static const char *tls_why(char *buf, size_t len, const char *fallback)
{
	unsigned long e = ERR_get_error();
	if (!e) {
		snprintf(buf, len, "%s", fallback);
		return buf;
	}
	ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
		       const unsigned char *in, unsigned int inlen, void *arg)
{
	unsigned char *sel;
	if (SSL_select_next_proto(&sel, outlen, alpn_postgresql, sizeof(alpn_postgresql) - 1, in,
				  inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_ALERT_FATAL; /* as PostgreSQL: only "postgresql" is spoken */
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

static void common_options(SSL_CTX *ctx)
{
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
				      SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
}

/* A certificate chain and its key into ctx: 0, or which of them failed:
 * 1 the certificate, 2 the key, 3 a key that does not match (OpenSSL's error queued). */
static int use_pair(SSL_CTX *ctx, const char *cert, const char *key)
{
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
		return 1;
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
		return 2;
	return SSL_CTX_check_private_key(ctx) == 1 ? 0 : 3;
}

#define FAIL_AT(line, key, ...) \
	do { \
		int n_ = snprintf(err, errlen, "%s:%d: %s: ", c->path, (line), (key)); \
		if (n_ > 0 && (size_t)n_ < errlen) \
			snprintf(err + n_, errlen - (size_t)n_, __VA_ARGS__); \
		goto fail; \
	} while (0)

/* A context for clients to connect to (pgrouter is the TLS server). */
static SSL_CTX *listener_ctx(const struct config *c, const struct tls_config *t, char *err,
			     size_t errlen)
{
	char why[256];
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		FAIL_AT(t->line[TK_MODE], "client_tls", "%s", tls_why(why, sizeof(why), "SSL_CTX_new"));
	common_options(ctx);
	SSL_CTX_set_num_tickets(ctx, 0);
	int minv = strcmp(t->min_version, "TLSv1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
	if (!SSL_CTX_set_min_proto_version(ctx, minv))
		FAIL_AT(t->line[TK_MIN_VERSION], "client_tls_min_version", "%s",
			tls_why(why, sizeof(why), "not supported"));
	if (t->ciphers[0] && !SSL_CTX_set_cipher_list(ctx, t->ciphers))
		FAIL_AT(t->line[TK_CIPHERS], "client_tls_ciphers", "no usable cipher in \"%s\"",
			t->ciphers);
	switch (use_pair(ctx, t->cert, t->key)) {
	case 1:
		FAIL_AT(t->line[TK_CERT], "client_tls_cert", "%s: %s", t->cert,
			tls_why(why, sizeof(why), "cannot load"));
	case 2:
		FAIL_AT(t->line[TK_KEY], "client_tls_key", "%s: %s", t->key,
			tls_why(why, sizeof(why), "cannot load"));
	case 3:
		FAIL_AT(t->line[TK_KEY], "client_tls_key", "%s does not match %s", t->key, t->cert);
	}
	if (t->ca[0]) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->ca);
		if (!names || SSL_CTX_load_verify_locations(ctx, t->ca, NULL) != 1) {
			sk_X509_NAME_pop_free(names, X509_NAME_free);
			FAIL_AT(t->line[TK_CA], "client_tls_ca", "%s: %s", t->ca,
				tls_why(why, sizeof(why), "no certificate in it"));
		}
		SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* The context pgrouter connects to servers with (pgrouter is the TLS client). */
static SSL_CTX *server_ctx(const struct config *c, char *err, size_t errlen)
{
	char why[256];
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		FAIL_AT(c->server_tls_line[0], "server_tls", "%s",
			tls_why(why, sizeof(why), "SSL_CTX_new"));
	common_options(ctx);
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* libpq: require with a root certificate verifies it, as verify-ca does */
	if (c->server_tls_ca[0]) {
		if (SSL_CTX_load_verify_locations(ctx, c->server_tls_ca, NULL) != 1)
			FAIL_AT(c->server_tls_line[1], "server_tls_ca", "%s: %s", c->server_tls_ca,
				tls_why(why, sizeof(why), "no certificate in it"));
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	int bad = c->server_tls_cert[0] ? use_pair(ctx, c->server_tls_cert, c->server_tls_key) : 0;
	if (bad == 1)
		FAIL_AT(c->server_tls_line[2], "server_tls_cert", "%s: %s", c->server_tls_cert,
			tls_why(why, sizeof(why), "cannot load"));
	if (bad)
		FAIL_AT(c->server_tls_line[3], "server_tls_key", "%s: %s", c->server_tls_key,
			tls_why(why, sizeof(why), "does not match server_tls_cert"));
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

#undef FAIL_AT

/* notAfter of the certificate ctx presents, in Unix seconds; 0 without one. */
static long long cert_expiry(SSL_CTX *ctx)
{
	X509 *x = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
	struct tm tm;
	if (!x || ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
		return 0;
	return (long long)timegm(&tm);
}

int tls_setup(struct config *c, char *err, size_t errlen)
{
	SSL_CTX *ctx[CONFIG_MAX_LISTENERS] = { 0 }, *sctx = NULL;
	for (unsigned i = 0; i < c->nlisteners; i++)
		if (c->listeners[i].tls.mode != CLIENT_TLS_DISABLE &&
		    !(ctx[i] = listener_ctx(c, &c->listeners[i].tls, err, errlen)))
			goto fail;
	if (c->server_tls != SERVER_TLS_DISABLE && !(sctx = server_ctx(c, err, errlen)))
		goto fail;
	/* all built: swap them in; sessions already using the old ones keep them */
	pthread_mutex_lock(&ctx_lock);
	for (unsigned i = 0; i < c->nlisteners; i++) {
		SSL_CTX *old = c->listeners[i].ssl_ctx;
		c->listeners[i].ssl_ctx = ctx[i];
		atomic_store(&c->listeners[i].cert_not_after, cert_expiry(ctx[i]));
		ctx[i] = old;
	}
	SSL_CTX *old = c->server_ssl_ctx;
	c->server_ssl_ctx = sctx;
	sctx = old;
	pthread_mutex_unlock(&ctx_lock);
	for (unsigned i = 0; i < c->nlisteners; i++)
		SSL_CTX_free(ctx[i]);
	SSL_CTX_free(sctx);
	return 0;
fail:
	for (unsigned i = 0; i < c->nlisteners; i++)
		SSL_CTX_free(ctx[i]);
	SSL_CTX_free(sctx);
	return -1;
}

void tls_teardown(struct config *c)
{
	for (unsigned i = 0; i < c->nlisteners; i++) {
		SSL_CTX_free(c->listeners[i].ssl_ctx);
		c->listeners[i].ssl_ctx = NULL;
	}
	SSL_CTX_free(c->server_ssl_ctx);
	c->server_ssl_ctx = NULL;
}

/* ---- the socket, and the loop turn's batch --------------------------------
 *
 * An SSL reads and writes its end's socket through pgrouter's BIO: reads as
 * OpenSSL's socket BIO would; writes too, except that the records of a
 * message the relay sends (end_send_staged) go into the worker's batch like
 * a plaintext message (batch.c) and OpenSSL counts them written. A full
 * socket otherwise leaves a record in OpenSSL (SSL_write: WANT_WRITE, its
 * bytes still at the head of end->out). The one new case is a staged record
 * the socket did not take whole: its rest is ciphertext OpenSSL is done
 * with, so pgrouter holds it (end->held) ahead of anything encrypted after
 * it, which joins it, until end_flush has sent it all.
 */
struct tls_sock {
	struct end *e;         /* the end the SSL is on (tls_rehome when it moves) */
	struct evbuffer *held; /* ciphertext for the socket, in order */
};

static __thread const struct end *staging; /* end_send_staged's end */

static int sock_read(BIO *b, char *p, size_t n, size_t *done)
{
	struct tls_sock *t = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	ssize_t r = read(t->e->fd, p, n);
	if (r > 0) {
		*done = (size_t)r;
		return 1;
	}
	if (r == 0)
		BIO_set_flags(b, BIO_FLAGS_IN_EOF); /* OpenSSL tells EOF from an error by it */
	else if (errno == EAGAIN || errno == EINTR)
		BIO_set_retry_read(b);
	return 0;
}

static int sock_write(BIO *b, const char *p, size_t n, size_t *done)
{
	struct tls_sock *t = BIO_get_data(b);
	struct end *e = t->e;
	BIO_clear_retry_flags(b);
	end_settle(e); /* a second record in one turn: the first goes first */
	if (e->held) {
		if (evbuffer_add(t->held, p, n) != 0)
			return 0;
		*done = n;
		return 1;
	}
	if (staging == e && batch_add(e, p, n)) {
		*done = n;
		return 1;
	}
	ssize_t r = send(e->fd, p, n, MSG_NOSIGNAL);
	if (r < 0) {
		if (errno == EAGAIN || errno == EINTR)
			BIO_set_retry_write(b);
		return 0;
	}
	*done = (size_t)r;
	return 1;
}

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)num, (void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1; /* nothing waits here between calls */
	case BIO_CTRL_EOF:
		return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
	default:
		return 0;
	}
}

static int sock_destroy(BIO *b)
{
	struct tls_sock *t = BIO_get_data(b);
	if (t) {
		if (t->held)
			evbuffer_free(t->held);
		free(t);
		BIO_set_data(b, NULL);
	}
	return 1;
}

static BIO_METHOD *sock_method;

static void sock_method_make(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pgrouter socket");
	if (m && (!BIO_meth_set_read_ex(m, sock_read) || !BIO_meth_set_write_ex(m, sock_write) ||
		  !BIO_meth_set_ctrl(m, sock_ctrl) || !BIO_meth_set_destroy(m, sock_destroy))) {
		BIO_meth_free(m);
		m = NULL;
	}
	sock_method = m;
}

static struct tls_sock *sock_of(const struct end *e)
{
	return BIO_get_data(SSL_get_wbio(e->ssl));
}

void tls_rehome(struct end *e)
{
	if (e->ssl)
		sock_of(e)->e = e;
}

struct evbuffer **tls_held_buffer(struct end *e)
{
	return &sock_of(e)->held;
}

ssize_t tls_flush_held(struct end *e)
{
	struct tls_sock *t = sock_of(e);
	if (evbuffer_write(t->held, e->fd) < 0 && errno != EAGAIN && errno != EINTR)
		return -1;
	size_t left = evbuffer_get_length(t->held);
	if (!left) { /* an idle session keeps no buffer */
		evbuffer_free(t->held);
		t->held = NULL;
		e->held = false;
	}
	return (ssize_t)left;
}

ssize_t end_send_staged(struct end *e, const void *buf, size_t len)
{
	staging = e;
	ssize_t n = end_send(e, buf, len);
	staging = NULL;
	return n;
}

static SSL *new_ssl(SSL_CTX **slot, struct end *e)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, sock_method_make);
	if (!sock_method)
		return NULL;
	pthread_mutex_lock(&ctx_lock);
	SSL *ssl = *slot ? SSL_new(*slot) : NULL;
	pthread_mutex_unlock(&ctx_lock);
	if (!ssl)
		return NULL;
	BIO *b = BIO_new(sock_method);
	struct tls_sock *t = calloc(1, sizeof(*t));
	if (!b || !t) {
		BIO_free(b);
		free(t);
		SSL_free(ssl);
		return NULL;
	}
	t->e = e;
	BIO_set_data(b, t);
	BIO_set_init(b, 1);
	SSL_set_bio(ssl, b, b); /* one reference, for both */
	return ssl;
}

SSL *tls_accept_ssl(struct listener_config *l, struct end *e)
{
	SSL *ssl = new_ssl(&l->ssl_ctx, e);
	if (ssl)
		SSL_set_accept_state(ssl);
	return ssl;
}

SSL *tls_connect_ssl(const struct disc_server *srv, struct end *e)
{
	SSL *ssl = new_ssl(&cur_cfg->server_ssl_ctx, e);
	if (!ssl)
		return NULL;
	SSL_set_connect_state(ssl);
	unsigned char ip[16];
	bool is_ip = inet_pton(AF_INET, srv->host, ip) == 1 || inet_pton(AF_INET6, srv->host, ip) == 1;
	/* as libpq: SNI carries host names, never addresses (RFC 6066) */
	if (!is_ip)
		SSL_set_tlsext_host_name(ssl, srv->host);
	if (cur_cfg->server_tls == SERVER_TLS_VERIFY_FULL) {
		X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
		int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, srv->host)
			       : X509_VERIFY_PARAM_set1_host(vp, srv->host, 0);
		if (ok != 1) {
			SSL_free(ssl);
			return NULL;
		}
	}
	return ssl;
}

int end_handshake(struct end *e, char *why, size_t whylen)
{
	ERR_clear_error();
	int r = SSL_do_handshake(e->ssl);
	if (r == 1) {
		end_write(e, e->out && evbuffer_get_length(e->out) > 0);
		end_read(e, true);
		return 1;
	}
	int err = SSL_get_error(e->ssl, r);
	switch (err) {
	case SSL_ERROR_WANT_READ:
		end_write(e, false);
		end_read(e, true);
		return 0;
	case SSL_ERROR_WANT_WRITE:
		end_write(e, true);
		return 0;
	case SSL_ERROR_SYSCALL:
		if (!ERR_peek_error()) {
			snprintf(why, whylen, "%s", errno ? strerror(errno) : "peer closed the connection");
			return -1;
		}
		/* fall through */
	default: {
		long v = SSL_get_verify_result(e->ssl);
		tls_why(why, whylen, "handshake failed");
		if (v != X509_V_OK) {
			size_t n = strlen(why);
			snprintf(why + n, whylen - n, " (%s)", X509_verify_cert_error_string(v));
		}
		return -1;
	}
	}
}

ssize_t end_recv(struct end *e, void *buf, size_t len)
{
	if (!e->ssl)
		return read(e->fd, buf, len);
	size_t got = 0;
	ERR_clear_error();
	while (got < len) {
		size_t want = len - got < INT_MAX ? len - got : INT_MAX;
		int n = SSL_read(e->ssl, (char *)buf + got, (int)want);
		if (n > 0) {
			got += (size_t)n;
			if (!SSL_has_pending(e->ssl))
				break;
			continue;
		}
		if (got)
			break; /* give what arrived; the condition shows again on the next call */
		int err = SSL_get_error(e->ssl, n);
		switch (err) {
		case SSL_ERROR_WANT_WRITE:
			e->rd_wants_wr = true;
			end_write(e, true);
			/* fall through */
		case SSL_ERROR_WANT_READ:
			errno = EAGAIN;
			return -1;
		case SSL_ERROR_ZERO_RETURN:
			return 0;
		case SSL_ERROR_SYSCALL:
			if (!ERR_peek_error()) {
				if (errno == 0 || errno == ECONNRESET)
					return 0; /* EOF without close_notify: a client that just left */
				return -1;
			}
			/* fall through */
		default:
			ERR_clear_error();
			errno = EPROTO;
			return -1;
		}
	}
	/* records OpenSSL holds will not make the socket readable again */
	if (got == len && SSL_has_pending(e->ssl))
		end_kick_read(e);
	return (ssize_t)got;
}

ssize_t end_send(struct end *e, const void *buf, size_t len)
{
	end_settle(e);
	if (!e->ssl)
		return send(e->fd, buf, len, MSG_NOSIGNAL);
	size_t done = 0;
	ERR_clear_error();
	while (done < len) {
		size_t want = len - done < INT_MAX ? len - done : INT_MAX;
		int n = SSL_write(e->ssl, (const char *)buf + done, (int)want);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		int err = SSL_get_error(e->ssl, n);
		if (err == SSL_ERROR_WANT_READ) {
			e->wr_wants_rd = true;
			end_read(e, true);
			break;
		}
		if (err == SSL_ERROR_WANT_WRITE)
			break;
		if (done)
			break;
		if (err != SSL_ERROR_SYSCALL || ERR_peek_error())
			errno = EPROTO;
		ERR_clear_error();
		return -1;
	}
	if (done == 0) {
		errno = EAGAIN;
		return -1;
	}
	return (ssize_t)done;
}

void end_shutdown_wr(struct end *e)
{
	end_settle(e);
	if (e->fd < 0)
		return;
	if (e->ssl) {
		ERR_clear_error();
		SSL_shutdown(e->ssl); /* close_notify, best effort */
		ERR_clear_error();
	}
	shutdown(e->fd, SHUT_WR);
}

bool tls_same_certificate(const struct end *c, const struct end *s)
{
	if (!c->ssl || !s->ssl)
		return false;
	X509 *mine = SSL_get_certificate(c->ssl);
	X509 *theirs = SSL_get0_peer_certificate(s->ssl);
	return mine && theirs && X509_cmp(mine, theirs) == 0;
}

void tls_describe(const struct end *e, char *buf, size_t len)
{
	if (!e->ssl) {
		snprintf(buf, len, "plaintext");
		return;
	}
	snprintf(buf, len, "%s %s", SSL_get_version(e->ssl), SSL_get_cipher_name(e->ssl));
}

int tls_cbind_data(const struct end *c, uint8_t *out, size_t cap)
{
	/* RFC 5929 tls-server-end-point: the hash of the certificate pgrouter
	 * presented, with its signature's hash (SHA-256 for MD5 and SHA-1) */
	X509 *mine = c->ssl ? SSL_get_certificate(c->ssl) : NULL;
	if (!mine)
		return -1;
	int md_nid, pk_nid;
	if (!OBJ_find_sigid_algs(X509_get_signature_nid(mine), &md_nid, &pk_nid))
		return -1;
	const EVP_MD *md = md_nid == NID_md5 || md_nid == NID_sha1 ? EVP_sha256()
								 : EVP_get_digestbynid(md_nid);
	unsigned n = 0;
	if (!md || (size_t)EVP_MD_get_size(md) > cap || !X509_digest(mine, md, out, &n))
		return -1;
	return (int)n;
}
