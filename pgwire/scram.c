/*
 * scram.c — SCRAM-SHA-256 (RFC 5802, RFC 7677) and md5 password arithmetic,
 * both ends of the exchange, without I/O.
 *
 *   client ──client-first──▶ pgrouter (server side)      pgrouter (client side) ──▶ server
 *          ◀─server-first───  salt, iterations from         client-first ──▶
 *          ──client-final──▶  the stored verifier           ◀── server-first (same salt!)
 *          ◀─server-final───  ClientKey recovered            client-final: proof made from
 *                                                             the recovered ClientKey ──▶
 *                                                           ◀── server-final (ServerKey)
 *
 * pgrouter never sees a password. Checking a client's proof against the stored
 * verifier yields the client's ClientKey (proof XOR HMAC(StoredKey, AuthMessage));
 * with it pgrouter can answer any server holding the same verifier, as that user.
 * Keys are wiped (OPENSSL_cleanse) by pgw_scram_wipe(). Crypto is libcrypto's;
 * randomness is the caller's (nonces are passed in), so every function here is
 * deterministic and testable on RFC 7677's vector.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgwire/pgwire.h"

/* ---- base64 (RFC 4648, padded, strict) -------------------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t pgw_b64_encode(const uint8_t *in, size_t n, char *out, size_t cap)
{
	size_t need = (n + 2) / 3 * 4;
	if (cap < need + 1)
		return 0;
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = b64[(v >> 18) & 63];
		out[o++] = b64[(v >> 12) & 63];
		out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? b64[v & 63] : '=';
	}
	out[o] = 0;
	return o;
}

static int b64_value(char c)
{
	const char *p = c ? strchr(b64, c) : NULL;
	return p ? (int)(p - b64) : -1;
}

int pgw_b64_decode(const char *in, size_t n, uint8_t *out, size_t cap)
{
	if (n % 4 != 0)
		return -1;
	size_t o = 0;
	for (size_t i = 0; i < n; i += 4) {
		int v[4], pad = 0;
		for (int k = 0; k < 4; k++) {
			if (in[i + k] == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
			} else if (pad || (v[k] = b64_value(in[i + k])) < 0) {
				return -1; /* data after padding, or not base64 */
			}
		}
		uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
			     (uint32_t)v[3];
		uint8_t bytes[3] = { (uint8_t)(x >> 16), (uint8_t)(x >> 8), (uint8_t)x };
		size_t k = 3 - (size_t)pad;
		if (o + k > cap)
			return -1;
		memcpy(out + o, bytes, k);
		o += k;
	}
	return (int)o;
}

/* ---- primitives --------------------------------------------------------- */

static void hmac(const uint8_t *key, size_t klen, const void *msg, size_t mlen,
		 uint8_t out[PGW_SCRAM_KEY_LEN])
{
	unsigned olen = PGW_SCRAM_KEY_LEN;
	HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &olen);
}

static void sha256(const uint8_t *in, size_t n, uint8_t out[PGW_SCRAM_KEY_LEN])
{
	SHA256(in, n, out);
}

void pgw_scram_wipe(void *p, size_t n)
{
	OPENSSL_cleanse(p, n);
}

/* ---- verifiers ---------------------------------------------------------- */

int pgw_scram_parse_verifier(const char *s, struct pgw_scram_verifier *v)
{
	/* SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> */
	static const char prefix[] = "SCRAM-SHA-256$";
	memset(v, 0, sizeof(*v));
	if (strncmp(s, prefix, sizeof(prefix) - 1) != 0)
		return PGW_MALFORMED;
	s += sizeof(prefix) - 1;
	char *end;
	long it = strtol(s, &end, 10);
	if (end == s || *end != ':' || it < 1 || it > 100000000)
		return PGW_MALFORMED;
	v->iterations = (int)it;
	const char *salt = end + 1, *dollar = strchr(salt, '$');
	if (!dollar)
		return PGW_MALFORMED;
	int n = pgw_b64_decode(salt, (size_t)(dollar - salt), v->salt, sizeof(v->salt));
	if (n <= 0)
		return PGW_MALFORMED;
	v->salt_len = (size_t)n;
	const char *sk = dollar + 1, *colon = strchr(sk, ':');
	if (!colon || pgw_b64_decode(sk, (size_t)(colon - sk), v->stored_key,
				     sizeof(v->stored_key)) != PGW_SCRAM_KEY_LEN ||
	    pgw_b64_decode(colon + 1, strlen(colon + 1), v->server_key, sizeof(v->server_key)) !=
		    PGW_SCRAM_KEY_LEN)
		return PGW_MALFORMED;
	return 0;
}

int pgw_scram_build_verifier(const char *password, const uint8_t *salt, size_t salt_len,
			     int iterations, char *out, size_t cap)
{
	uint8_t salted[PGW_SCRAM_KEY_LEN], ck[PGW_SCRAM_KEY_LEN], stored[PGW_SCRAM_KEY_LEN],
		server[PGW_SCRAM_KEY_LEN];
	if (!PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)salt_len, iterations,
			       EVP_sha256(), sizeof(salted), salted))
		return PGW_MALFORMED;
	hmac(salted, sizeof(salted), "Client Key", 10, ck);
	sha256(ck, sizeof(ck), stored);
	hmac(salted, sizeof(salted), "Server Key", 10, server);
	char s64[100], st64[64], sv64[64];
	if (!pgw_b64_encode(salt, salt_len, s64, sizeof(s64)))
		return PGW_MALFORMED;
	pgw_b64_encode(stored, sizeof(stored), st64, sizeof(st64));
	pgw_b64_encode(server, sizeof(server), sv64, sizeof(sv64));
	pgw_scram_wipe(salted, sizeof(salted));
	pgw_scram_wipe(ck, sizeof(ck));
	int n = snprintf(out, cap, "SCRAM-SHA-256$%d:%s$%s:%s", iterations, s64, st64, sv64);
	return n > 0 && (size_t)n < cap ? n : PGW_MALFORMED;
}

static bool hex32(const char *s)
{
	for (int i = 0; i < 32; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return s[32] == 0;
}

bool pgw_md5_verifier_ok(const char *s)
{
	return strncmp(s, "md5", 3) == 0 && hex32(s + 3);
}

static void md5_hex(const void *in, size_t n, char out[33])
{
	uint8_t d[16];
	unsigned dl = 16;
	EVP_Digest(in, n, d, &dl, EVP_md5(), NULL);
	for (int i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

void pgw_md5_password(const char *password, const char *user, char out[PGW_MD5_LEN + 1])
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "%s%s", password, user);
	memcpy(out, "md5", 3);
	md5_hex(buf, n > 0 && (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1, out + 3);
	pgw_scram_wipe(buf, sizeof(buf));
}

void pgw_md5_answer(const char *verifier, const uint8_t salt[4], char out[PGW_MD5_LEN + 1])
{
	uint8_t buf[36];
	memcpy(buf, verifier + 3, 32);
	memcpy(buf + 32, salt, 4);
	memcpy(out, "md5", 3);
	md5_hex(buf, sizeof(buf), out + 3);
}

bool pgw_md5_check(const char *verifier, const uint8_t salt[4], const char *answer, size_t len)
{
	char want[PGW_MD5_LEN + 1];
	pgw_md5_answer(verifier, salt, want);
	return len == PGW_MD5_LEN && CRYPTO_memcmp(want, answer, PGW_MD5_LEN) == 0;
}

/* ---- message pieces ----------------------------------------------------- */

/* Append text to dst (capacity cap, NUL kept); false when it does not fit. */
static bool append(char *dst, size_t *len, size_t cap, const char *src, size_t n)
{
	if (*len + n + 1 > cap)
		return false;
	memcpy(dst + *len, src, n);
	*len += n;
	dst[*len] = 0;
	return true;
}

/* A printable nonce: %x21-7E except ','. */
static bool nonce_ok(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
			return false;
	return true;
}

/* Find attribute `a=` at p (within end): sets *val, *vlen, returns the byte
 * after the value (its ',' or end). NULL if p does not start with it. */
static const char *attr(const char *p, const char *end, char a, const char **val, size_t *vlen)
{
	if (end - p < 2 || p[0] != a || p[1] != '=')
		return NULL;
	const char *v = p + 2, *c = memchr(v, ',', (size_t)(end - v));
	if (!c)
		c = end;
	*val = v;
	*vlen = (size_t)(c - v);
	return c;
}

/* HMAC(key, AuthMessage), AuthMessage = client-first-bare "," server-first ","
 * client-final-without-proof. */
static void auth_message(const struct pgw_scram *st, const char *cfwp, size_t cfwp_len,
			 const uint8_t key[PGW_SCRAM_KEY_LEN], uint8_t out[PGW_SCRAM_KEY_LEN])
{
	char am[3 * PGW_SCRAM_MSG_MAX + 2];
	size_t n = 0;
	append(am, &n, sizeof(am), st->client_first_bare, st->cfb_len);
	append(am, &n, sizeof(am), ",", 1);
	append(am, &n, sizeof(am), st->server_first, st->sf_len);
	append(am, &n, sizeof(am), ",", 1);
	append(am, &n, sizeof(am), cfwp, cfwp_len < PGW_SCRAM_MSG_MAX ? cfwp_len : 0);
	hmac(key, PGW_SCRAM_KEY_LEN, am, n, out);
}

/* ---- pgrouter as the server: checking a client ---------------------------- */

int pgw_scram_server_first(struct pgw_scram *st, const struct pgw_scram_verifier *v,
			   const uint8_t *msg, size_t len, const char *server_nonce, char *out,
			   size_t cap)
{
	memset(st, 0, sizeof(*st));
	const char *p = (const char *)msg, *end = p + len;
	if (memchr(msg, 0, len))
		return PGW_MALFORMED;
	/* gs2-cbind-flag: n | y | p=<name> */
	const char *comma = memchr(p, ',', len);
	if (!comma)
		return PGW_MALFORMED;
	if (comma - p == 1 && (p[0] == 'n' || p[0] == 'y')) {
		st->cbind_flag = p[0];
	} else if (comma - p > 2 && p[0] == 'p' && p[1] == '=') {
		if ((size_t)(comma - p - 2) != strlen(PGW_SCRAM_CBIND_TYPE) ||
		    memcmp(p + 2, PGW_SCRAM_CBIND_TYPE, (size_t)(comma - p - 2)) != 0)
			return PGW_SCRAM_CBIND; /* unsupported channel binding type */
		st->cbind_flag = 'p';
	} else {
		return PGW_MALFORMED;
	}
	/* authzid: PostgreSQL does not support one, nor do we */
	const char *q = comma + 1;
	if (q >= end || *q != ',')
		return PGW_MALFORMED;
	q++;
	size_t gs2_len = (size_t)(q - p);
	if (gs2_len >= sizeof(st->gs2_header))
		return PGW_MALFORMED;
	memcpy(st->gs2_header, p, gs2_len);
	st->gs2_len = gs2_len;
	/* client-first-message-bare: n=<user>,r=<nonce>[,ext] */
	const char *val;
	size_t vlen;
	const char *r = attr(q, end, 'n', &val, &vlen);
	if (!r || r >= end || *r != ',')
		return PGW_MALFORMED;
	r = attr(r + 1, end, 'r', &val, &vlen);
	if (!r || !nonce_ok(val, vlen))
		return PGW_MALFORMED;
	size_t cfb = (size_t)(end - q);
	if (cfb >= sizeof(st->client_first_bare))
		return PGW_MALFORMED;
	memcpy(st->client_first_bare, q, cfb);
	st->cfb_len = cfb;
	size_t nl = 0;
	if (!append(st->nonce, &nl, sizeof(st->nonce), val, vlen) ||
	    !append(st->nonce, &nl, sizeof(st->nonce), server_nonce, strlen(server_nonce)))
		return PGW_MALFORMED;
	st->nonce_len = nl;
	/* server-first-message: r=<nonce>,s=<salt>,i=<iterations> */
	char salt[120];
	if (!pgw_b64_encode(v->salt, v->salt_len, salt, sizeof(salt)))
		return PGW_MALFORMED;
	int n = snprintf(st->server_first, sizeof(st->server_first), "r=%s,s=%s,i=%d", st->nonce,
			 salt, v->iterations);
	if (n < 0 || (size_t)n >= sizeof(st->server_first) || (size_t)n >= cap)
		return PGW_MALFORMED;
	st->sf_len = (size_t)n;
	memcpy(out, st->server_first, (size_t)n + 1);
	return n;
}

int pgw_scram_server_final(struct pgw_scram *st, const struct pgw_scram_verifier *v,
			   const uint8_t *msg, size_t len, const uint8_t *cbind_data,
			   size_t cbind_len, uint8_t client_key[PGW_SCRAM_KEY_LEN], char *out,
			   size_t cap)
{
	const char *p = (const char *)msg, *end = p + len;
	const char *val;
	size_t vlen;
	if (memchr(msg, 0, len))
		return PGW_MALFORMED;
	/* c=<base64(gs2 header + binding data)> */
	const char *q = attr(p, end, 'c', &val, &vlen);
	if (!q || q >= end)
		return PGW_MALFORMED;
	uint8_t cb[sizeof(st->gs2_header) + 128];
	int cbn = pgw_b64_decode(val, vlen, cb, sizeof(cb));
	if (cbn < (int)st->gs2_len || memcmp(cb, st->gs2_header, st->gs2_len) != 0)
		return PGW_SCRAM_CBIND;
	if (st->cbind_flag == 'p') {
		if (!cbind_data || (size_t)cbn - st->gs2_len != cbind_len ||
		    CRYPTO_memcmp(cb + st->gs2_len, cbind_data, cbind_len) != 0)
			return PGW_SCRAM_CBIND;
	} else if ((size_t)cbn != st->gs2_len) {
		return PGW_SCRAM_CBIND;
	}
	/* r=<nonce>: exactly the one we sent */
	q = attr(q + 1, end, 'r', &val, &vlen);
	if (!q || vlen != st->nonce_len || memcmp(val, st->nonce, vlen) != 0)
		return PGW_MALFORMED;
	/* extensions, then p=<proof> last */
	const char *proof_at = NULL;
	while (q < end) {
		if (*q != ',')
			return PGW_MALFORMED;
		if (end - q > 2 && q[1] == 'p' && q[2] == '=') {
			proof_at = q;
			break;
		}
		const char *c = memchr(q + 1, ',', (size_t)(end - q - 1));
		q = c ? c : end;
	}
	if (!proof_at || !attr(proof_at + 1, end, 'p', &val, &vlen) || val + vlen != end)
		return PGW_MALFORMED;
	uint8_t proof[PGW_SCRAM_KEY_LEN];
	if (pgw_b64_decode(val, vlen, proof, sizeof(proof)) != PGW_SCRAM_KEY_LEN)
		return PGW_MALFORMED;
	uint8_t sig[PGW_SCRAM_KEY_LEN], stored[PGW_SCRAM_KEY_LEN];
	if ((size_t)(proof_at - p) >= PGW_SCRAM_MSG_MAX)
		return PGW_MALFORMED;
	auth_message(st, p, (size_t)(proof_at - p), v->stored_key, sig);
	for (int i = 0; i < PGW_SCRAM_KEY_LEN; i++)
		client_key[i] = proof[i] ^ sig[i];
	sha256(client_key, PGW_SCRAM_KEY_LEN, stored);
	if (CRYPTO_memcmp(stored, v->stored_key, PGW_SCRAM_KEY_LEN) != 0) {
		pgw_scram_wipe(client_key, PGW_SCRAM_KEY_LEN);
		return PGW_SCRAM_BAD_PROOF;
	}
	/* server-final-message: v=<ServerSignature> */
	uint8_t ssig[PGW_SCRAM_KEY_LEN];
	auth_message(st, p, (size_t)(proof_at - p), v->server_key, ssig);
	char s64[64];
	pgw_b64_encode(ssig, sizeof(ssig), s64, sizeof(s64));
	int n = snprintf(out, cap, "v=%s", s64);
	return n > 0 && (size_t)n < cap ? n : PGW_MALFORMED;
}

/* ---- pgrouter as the client: logging in to a server ----------------------- */

int pgw_scram_client_first(struct pgw_scram *st, const char *client_nonce, char *out, size_t cap)
{
	memset(st, 0, sizeof(*st));
	size_t nl = strlen(client_nonce);
	if (!nonce_ok(client_nonce, nl))
		return PGW_MALFORMED;
	/* no channel binding toward servers: "n" (the client does not support it) */
	memcpy(st->gs2_header, "n,,", 3);
	st->gs2_len = 3;
	st->cbind_flag = 'n';
	int n = snprintf(st->client_first_bare, sizeof(st->client_first_bare), "n=,r=%s",
			 client_nonce);
	if (n < 0 || (size_t)n >= sizeof(st->client_first_bare))
		return PGW_MALFORMED;
	st->cfb_len = (size_t)n;
	size_t l = 0;
	if (!append(st->nonce, &l, sizeof(st->nonce), client_nonce, nl))
		return PGW_MALFORMED;
	st->nonce_len = l;
	int m = snprintf(out, cap, "%s%s", "n,,", st->client_first_bare);
	return m > 0 && (size_t)m < cap ? m : PGW_MALFORMED;
}

int pgw_scram_client_final(struct pgw_scram *st, const struct pgw_scram_verifier *v,
			   const uint8_t client_key[PGW_SCRAM_KEY_LEN], const uint8_t *msg,
			   size_t len, char *out, size_t cap)
{
	const char *p = (const char *)msg, *end = p + len, *val;
	size_t vlen;
	if (memchr(msg, 0, len) || len >= sizeof(st->server_first))
		return PGW_MALFORMED;
	/* r=<our nonce + server's>,s=<salt>,i=<iterations> */
	const char *q = attr(p, end, 'r', &val, &vlen);
	if (!q || vlen <= st->nonce_len || memcmp(val, st->nonce, st->nonce_len) != 0 ||
	    !nonce_ok(val, vlen) || vlen >= sizeof(st->nonce))
		return PGW_MALFORMED;
	memcpy(st->nonce, val, vlen);
	st->nonce[vlen] = 0;
	st->nonce_len = vlen;
	if (q >= end || !(q = attr(q + 1, end, 's', &val, &vlen)))
		return PGW_MALFORMED;
	uint8_t salt[sizeof(v->salt)];
	int sl = pgw_b64_decode(val, vlen, salt, sizeof(salt));
	if (sl <= 0 || q >= end || !(q = attr(q + 1, end, 'i', &val, &vlen)))
		return PGW_MALFORMED;
	char num[16];
	if (vlen == 0 || vlen >= sizeof(num))
		return PGW_MALFORMED;
	memcpy(num, val, vlen);
	num[vlen] = 0;
	long it = strtol(num, NULL, 10);
	/* The ClientKey only fits a server whose verifier is the one we checked
	 * the client against: same salt, same iterations. */
	if ((size_t)sl != v->salt_len || memcmp(salt, v->salt, v->salt_len) != 0 ||
	    it != v->iterations)
		return PGW_SCRAM_MISMATCH;
	memcpy(st->server_first, p, len);
	st->server_first[len] = 0;
	st->sf_len = len;
	/* client-final-message-without-proof: c=biws,r=<nonce> */
	char cfwp[PGW_SCRAM_MSG_MAX];
	int n = snprintf(cfwp, sizeof(cfwp), "c=biws,r=%s", st->nonce);
	if (n < 0 || (size_t)n >= sizeof(cfwp))
		return PGW_MALFORMED;
	uint8_t stored[PGW_SCRAM_KEY_LEN], sig[PGW_SCRAM_KEY_LEN], proof[PGW_SCRAM_KEY_LEN];
	sha256(client_key, PGW_SCRAM_KEY_LEN, stored);
	auth_message(st, cfwp, (size_t)n, stored, sig);
	for (int i = 0; i < PGW_SCRAM_KEY_LEN; i++)
		proof[i] = client_key[i] ^ sig[i];
	/* keep the AuthMessage's last part for checking the server's signature */
	memcpy(st->client_final, cfwp, (size_t)n + 1);
	st->cf_len = (size_t)n;
	char p64[64];
	pgw_b64_encode(proof, sizeof(proof), p64, sizeof(p64));
	pgw_scram_wipe(proof, sizeof(proof));
	int m = snprintf(out, cap, "%s,p=%s", cfwp, p64);
	return m > 0 && (size_t)m < cap ? m : PGW_MALFORMED;
}

int pgw_scram_client_verify(const struct pgw_scram *st, const struct pgw_scram_verifier *v,
			    const uint8_t *msg, size_t len)
{
	const char *p = (const char *)msg, *end = p + len, *val;
	size_t vlen;
	if (!attr(p, end, 'v', &val, &vlen))
		return PGW_MALFORMED;
	uint8_t got[PGW_SCRAM_KEY_LEN], want[PGW_SCRAM_KEY_LEN];
	if (pgw_b64_decode(val, vlen, got, sizeof(got)) != PGW_SCRAM_KEY_LEN)
		return PGW_MALFORMED;
	auth_message(st, st->client_final, st->cf_len, v->server_key, want);
	return CRYPTO_memcmp(got, want, sizeof(got)) == 0 ? 0 : PGW_SCRAM_BAD_PROOF;
}
