/*
 * login.c — auth = router: pgrouter authenticates the client itself, then logs
 * in to servers as that client. It never holds a password.
 *
 *   StartupMessage ─▶ LOOKUP: the user's verifier (auth.c: trust list, auth_file,
 *        │                     auth_query cache) ── lookup fails ──▶ FATAL 08001
 *        ▼
 *      LOGIN: SCRAM-SHA-256[-PLUS] or md5 with the client, against the verifier
 *        │    (an unknown user gets a mock verifier: the same exchange, the same
 *        │     28P01 as a wrong password); SCRAM yields the client's ClientKey
 *        ▼ AuthenticationOk to the client
 *      (route, connect: session.c) ─▶ AUTH: the server's authentication requests
 *                                      are answered here (SCRAM proof made from
 *                                      the ClientKey, or the md5 hash), never
 *                                      shown to the client
 */
#include <errno.h>
#include <event2/buffer.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/router.h"

#define LOGIN_MESSAGE_MAX 8192 /* a password/SASL message from a client */
#define NONCE_BYTES 18         /* 24 base64 characters, as PostgreSQL's */

struct login {
	struct pgw_scram c;    /* with the client */
	struct pgw_scram s;    /* with the server */
	uint8_t md5_salt[4];
	uint8_t step;          /* client exchange: 0 initial response, 1 final */
	bool plus_offered, plus_chosen;
};

static void wipe_free(void *p, size_t n)
{
	if (p) {
		pgw_scram_wipe(p, n);
		free(p);
	}
}

void login_done(struct session *s)
{
	wipe_free(s->login, sizeof(*s->login));
	s->login = NULL;
}

/* What every user in auth_trust_users has: nothing to keep per session (never
 * written: only SCRAM and md5 exchanges write a session's record). */
static struct cred trust_cred = { .kind = CRED_TRUST };

void login_free(struct session *s)
{
	wipe_free(s->login, sizeof(*s->login));
	s->login = NULL;
	if (s->cred != &trust_cred)
		wipe_free(s->cred, sizeof(*s->cred));
	s->cred = NULL;
}

static bool send_client(struct session *s, const uint8_t *m, size_t n)
{
	if (!n || !end_queue(&s->c, m, n)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return false;
	}
	if (end_flush(&s->c) < 0) {
		s->dead = true;
		return false;
	}
	return true;
}

static bool send_server(struct session *s, const uint8_t *m, size_t n)
{
	if (!n || !end_queue(&s->s, m, n)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return false;
	}
	if (end_flush(&s->s) < 0) {
		session_fail(s, "08006", "pgrouter: lost server %s while logging in",
			     s->srv->name);
		return false;
	}
	return true;
}

static bool nonce(char *out, size_t cap)
{
	uint8_t raw[NONCE_BYTES];
	return random_bytes(raw, sizeof(raw)) && pgw_b64_encode(raw, sizeof(raw), out, cap) > 0;
}

/* ---- the client's side ------------------------------------------------- */

static void authenticated(struct session *s)
{
	/* AuthenticationOk goes out with what follows it (the server's
	 * parameters, or an error): one write instead of two */
	uint8_t ok[16];
	if (!end_queue(&s->c, ok, pgw_build_auth(ok, sizeof(ok), PGW_AUTH_OK, NULL, 0))) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	slog(LOG_DEBUG, s, "client authenticated by pgrouter (%s)",
	     s->cred->kind == CRED_TRUST ? "trust" : s->cred->kind == CRED_MD5 ? "md5"
					   : s->login->plus_chosen ? "SCRAM-SHA-256-PLUS"
								   : "SCRAM-SHA-256");
	session_authenticated(s);
}

/* Wrong password or unknown user: one message for both, as PostgreSQL's. */
static void wrong_password(struct session *s)
{
	stat_reject(s, REJ_AUTH_FAILED);
	slog(LOG_WARNING, s, "password authentication failed for user \"%s\" from %s%s", s->user,
	     s->peer, s->cred->mock ? " (no such user, or no password)" : "");
	if (!s->cred->mock)
		auth_forget(s->user); /* the password may have changed: ask again next time */
	session_fail(s, "28P01", "password authentication failed for user \"%s\"", s->user);
}

static void begin_exchange(struct session *s)
{
	session_set_state(s, SS_LOGIN);
	session_timer(s, cur_cfg->startup_timeout_ms);
	session_watch_client(s, EV_READ);
	if (!s->login && !(s->login = calloc(1, sizeof(*s->login)))) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	uint8_t m[128];
	switch (s->cred->kind) {
	case CRED_TRUST:
		authenticated(s);
		return;
	case CRED_MD5:
		if (!random_bytes(s->login->md5_salt, 4)) {
			session_fail(s, "53200", "pgrouter: no random bytes");
			return;
		}
		send_client(s, m, pgw_build_auth(m, sizeof(m), PGW_AUTH_MD5, s->login->md5_salt, 4));
		break;
	case CRED_SCRAM: {
		/* -PLUS where the client is on TLS with pgrouter's certificate */
		static const char plain[] = "SCRAM-SHA-256\0";
		static const char both[] = "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0";
		uint8_t cb[EVP_MAX_MD_SIZE];
		s->login->plus_offered = s->c.ssl && tls_cbind_data(&s->c, cb, sizeof(cb)) > 0;
		if (s->login->plus_offered)
			send_client(s, m, pgw_build_auth(m, sizeof(m), PGW_AUTH_SASL, both, sizeof(both)));
		else
			send_client(s, m, pgw_build_auth(m, sizeof(m), PGW_AUTH_SASL, plain, sizeof(plain)));
		break;
	}
	}
	/* anything the client sent along already */
	if (!s->dead && s->state == SS_LOGIN && s->in && evbuffer_get_length(s->in))
		login_client_read(s);
}

void login_start(struct session *s)
{
	if (s->cred == &trust_cred)
		s->cred = NULL; /* looked up again: never written */
	if (!s->cred && !(s->cred = calloc(1, sizeof(*s->cred)))) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	char why[512];
	switch (auth_lookup(s->w, s->user, s->cred, why, sizeof(why))) {
	case AUTH_FOUND:
		if (s->cred->kind == CRED_TRUST && !s->cred->mock) {
			free(s->cred);
			s->cred = &trust_cred;
		}
		begin_exchange(s);
		break;
	case AUTH_PENDING:
		if (s->state != SS_LOOKUP) {
			session_set_state(s, SS_LOOKUP);
			session_timer(s, cur_cfg->queue_timeout_ms);
			session_watch_client(s, EV_CLOSED);
		}
		break;
	default:
		session_fail(s, "08001",
			     "pgrouter: cannot look up the password verifier of user \"%s\": %s",
			     s->user, why);
		break;
	}
}

/* SCRAM: the client's SASLInitialResponse, then its SASLResponse. */
static void scram_message(struct session *s, const uint8_t *body, uint32_t len)
{
	struct login *lg = s->login;
	char out[PGW_SCRAM_MSG_MAX];
	uint8_t m[PGW_SCRAM_MSG_MAX + 64];
	if (lg->step == 0) {
		const char *mech;
		const uint8_t *data;
		uint32_t dl;
		if (pgw_sasl_initial_parse(body, len, &mech, &data, &dl) != 0 || !data) {
			session_fail(s, "08P01", "malformed SASL initial response");
			return;
		}
		lg->plus_chosen = strcmp(mech, "SCRAM-SHA-256-PLUS") == 0;
		if (strcmp(mech, "SCRAM-SHA-256") != 0 && !(lg->plus_chosen && lg->plus_offered)) {
			session_fail(s, "08P01",
				     "client selected an invalid SASL authentication mechanism");
			return;
		}
		char sn[40];
		if (!nonce(sn, sizeof(sn))) {
			session_fail(s, "53200", "pgrouter: no random bytes");
			return;
		}
		int n = pgw_scram_server_first(&lg->c, &s->cred->scram, data, dl, sn, out, sizeof(out));
		if (n == PGW_SCRAM_CBIND) {
			session_fail(s, "08P01", "unsupported SCRAM channel-binding type");
			return;
		}
		if (n < 0) {
			session_fail(s, "08P01", "malformed SCRAM message");
			return;
		}
		/* PostgreSQL's checks of the binding flag against the mechanism */
		if (lg->plus_chosen && lg->c.cbind_flag != 'p') {
			session_fail(s, "08P01",
				     "malformed SCRAM message: the client selected SCRAM-SHA-256-PLUS, "
				     "but the SCRAM message does not include channel binding data");
			return;
		}
		if (!lg->plus_chosen && lg->c.cbind_flag == 'p') {
			session_fail(s, "08P01",
				     "malformed SCRAM message: the client selected SCRAM-SHA-256 "
				     "without channel binding, but the SCRAM message includes channel "
				     "binding data");
			return;
		}
		if (lg->c.cbind_flag == 'y' && lg->plus_offered) {
			session_fail(s, "08P01",
				     "SCRAM channel binding negotiation error: the client supports "
				     "SCRAM channel binding but thinks the server does not; however, "
				     "this server does support channel binding");
			return;
		}
		lg->step = 1;
		send_client(s, m, pgw_build_auth(m, sizeof(m), PGW_AUTH_SASL_CONTINUE, out, (size_t)n));
		return;
	}
	uint8_t cb[EVP_MAX_MD_SIZE];
	int cbl = lg->plus_chosen ? tls_cbind_data(&s->c, cb, sizeof(cb)) : 0;
	int n = pgw_scram_server_final(&lg->c, &s->cred->scram, body, len, cbl > 0 ? cb : NULL,
				       cbl > 0 ? (size_t)cbl : 0, s->cred->client_key, out,
				       sizeof(out));
	if (n == PGW_SCRAM_BAD_PROOF || (n > 0 && s->cred->mock)) {
		wrong_password(s);
		return;
	}
	if (n == PGW_SCRAM_CBIND) {
		session_fail(s, "08P01", "SCRAM channel binding check failed");
		return;
	}
	if (n < 0) {
		session_fail(s, "08P01", "malformed SCRAM message");
		return;
	}
	s->cred->has_client_key = true;
	size_t fl = pgw_build_auth(m, sizeof(m), PGW_AUTH_SASL_FINAL, out, (size_t)n);
	if (!fl || !end_queue(&s->c, m, fl)) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return;
	}
	authenticated(s);
}

static void md5_message(struct session *s, const uint8_t *body, uint32_t len)
{
	if (len == 0 || body[len - 1] != 0) {
		session_fail(s, "08P01", "invalid password packet size");
		return;
	}
	if (!pgw_md5_check(s->cred->md5, s->login->md5_salt, (const char *)body, len - 1)) {
		wrong_password(s);
		return;
	}
	authenticated(s);
}

void login_client_read(struct session *s)
{
	if (!s->in && !(s->in = evbuffer_new())) {
		s->dead = true;
		return;
	}
	ssize_t n = end_recv(&s->c, s->w->scratch, sizeof(s->w->scratch));
	if (n > 0 && evbuffer_add(s->in, s->w->scratch, (size_t)n) != 0) {
		s->dead = true;
		return;
	}
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		/* psql leaves here to ask for the password, then comes back */
		slog(LOG_DEBUG, s, "client left during authentication");
		s->dead = true;
		return;
	}
	while (!s->dead && s->state == SS_LOGIN) {
		uint8_t type;
		uint32_t body;
		bool bad;
		const uint8_t *m = msg_next(s->in, LOGIN_MESSAGE_MAX, &type, &body, &bad);
		if (bad)
			session_fail(s, "08P01", "invalid message length during authentication");
		if (!m)
			return;
		if (type == PGW_MSG_TERMINATE) {
			s->dead = true;
			return;
		}
		if (type != PGW_MSG_PASSWORD) {
			session_fail(s, "08P01", "expected password response, got message type %d",
				     type);
			return;
		}
		uint8_t copy[LOGIN_MESSAGE_MAX];
		memcpy(copy, m + PGW_HEADER_LEN, body);
		evbuffer_drain(s->in, PGW_HEADER_LEN + body);
		if (s->cred->kind == CRED_MD5)
			md5_message(s, copy, body);
		else
			scram_message(s, copy, body);
		pgw_scram_wipe(copy, body);
	}
}

void login_lookups_answered(struct worker *w)
{
	struct session *s, *next;
	for (s = TAILQ_FIRST(&w->sessions); s; s = next) {
		next = TAILQ_NEXT(s, link);
		if (s->state == SS_LOOKUP) {
			login_start(s);
			session_finish(s);
		}
	}
}

/* ---- the server's side ------------------------------------------------- */

static void cannot_answer(struct session *s, const char *what)
{
	session_fail(s, "28000",
		     "pgrouter: server %s asks for %s for user \"%s\", which pgrouter cannot give "
		     "(it holds no passwords%s)",
		     s->srv->name, what, s->user,
		     s->cred->kind == CRED_TRUST ? "; the user is in auth_trust_users"
		     : s->cred->kind == CRED_MD5 ? "; the user's verifier is md5"
						 : "");
}

int login_server_auth(struct session *s, const uint8_t *body, uint32_t len)
{
	struct login *lg = s->login;
	if (!lg && !(lg = s->login = calloc(1, sizeof(*s->login)))) {
		session_fail(s, "53200", "pgrouter: out of memory");
		return LOGIN_STOP;
	}
	int32_t code = pgw_auth_code(body, len);
	const uint8_t *data = body + 4;
	uint32_t dl = len >= 4 ? len - 4 : 0;
	char out[PGW_SCRAM_MSG_MAX];
	uint8_t m[PGW_SCRAM_MSG_MAX + 64];
	int n;
	switch (code) {
	case PGW_AUTH_OK:
		slog(LOG_DEBUG, s, "logged in to %s as \"%s\"", s->srv->name, s->user);
		return LOGIN_SWALLOW;
	case PGW_AUTH_SASL:
		if (s->cred->kind != CRED_SCRAM || !s->cred->has_client_key) {
			cannot_answer(s, "SCRAM-SHA-256");
			return LOGIN_STOP;
		}
		if (!pgw_sasl_offers(data, dl, "SCRAM-SHA-256")) {
			cannot_answer(s, "a SASL mechanism other than SCRAM-SHA-256");
			return LOGIN_STOP;
		}
		char cn[40];
		if (!nonce(cn, sizeof(cn)) ||
		    (n = pgw_scram_client_first(&lg->s, cn, out, sizeof(out))) < 0) {
			session_fail(s, "53200", "pgrouter: cannot start SCRAM");
			return LOGIN_STOP;
		}
		return send_server(s, m, pgw_build_sasl_initial(m, sizeof(m), "SCRAM-SHA-256", out,
								 (size_t)n))
			       ? LOGIN_SWALLOW
			       : LOGIN_STOP;
	case PGW_AUTH_SASL_CONTINUE:
		n = pgw_scram_client_final(&lg->s, &s->cred->scram, s->cred->client_key, data, dl, out,
					   sizeof(out));
		if (n == PGW_SCRAM_MISMATCH) {
			auth_forget(s->user);
			session_fail(s, "28P01",
				     "pgrouter: server %s holds another password verifier for user "
				     "\"%s\" than the one pgrouter checked (was the password "
				     "changed?); reconnect",
				     s->srv->name, s->user);
			return LOGIN_STOP;
		}
		if (n < 0) {
			session_fail(s, "08P01", "server %s sent a malformed SCRAM message",
				     s->srv->name);
			return LOGIN_STOP;
		}
		return send_server(s, m, pgw_build_password(m, sizeof(m), out, (size_t)n))
			       ? LOGIN_SWALLOW
			       : LOGIN_STOP;
	case PGW_AUTH_SASL_FINAL:
		if (pgw_scram_client_verify(&lg->s, &s->cred->scram, data, dl) != 0) {
			session_fail(s, "28000",
				     "pgrouter: server %s did not prove it knows user \"%s\"'s "
				     "verifier (wrong SCRAM server signature)",
				     s->srv->name, s->user);
			return LOGIN_STOP;
		}
		return LOGIN_SWALLOW;
	case PGW_AUTH_MD5:
		if (s->cred->kind != CRED_MD5 || dl != 4) {
			cannot_answer(s, "an md5 password");
			return LOGIN_STOP;
		}
		pgw_md5_answer(s->cred->md5, data, out);
		return send_server(s, m, pgw_build_password(m, sizeof(m), out, PGW_MD5_LEN + 1))
			       ? LOGIN_SWALLOW
			       : LOGIN_STOP;
	case PGW_AUTH_CLEARTEXT:
		cannot_answer(s, "a cleartext password (use scram-sha-256 or md5 in pg_hba.conf)");
		return LOGIN_STOP;
	default:
		cannot_answer(s, "an authentication method pgrouter does not speak");
		return LOGIN_STOP;
	}
}
