/* tests pgwire/scram.c: RFC 7677's vector, verifiers made by PostgreSQL 15, both ends. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>

#include "../test.h"

/* RFC 7677, section 3 (user "user", password "pencil") */
#define RFC_CLIENT_FIRST "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SERVER_FIRST                                                                   \
	"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==," \
	"i=4096"
#define RFC_CLIENT_FINAL                                         \
	"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0," \
	"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

/* Made by PostgreSQL 15: password_encryption = scram-sha-256, password 'wonderland';
 * md5: role bob, password 'builder'. */
#define PG_ALICE                                                                  \
	"SCRAM-SHA-256$4096:mc96yCC185h/2pTUynNUvQ==$k1wtEGLhglcg1rM4nSjWUvYXd80c65APSx" \
	"u1nZBHvco=:QkyASW9svaFklRj0/yTYtIu6oONgji1xYjRPy4AU+as="
#define PG_BOB "md58cc7ff7afbc8551bd526b65944c17b36"

static void rfc_verifier(struct pgw_scram_verifier *v)
{
	uint8_t salt[32];
	int sl = pgw_b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==", 24, salt, sizeof(salt));
	assert_int_equal(sl, 16);
	char text[256];
	assert_true(pgw_scram_build_verifier("pencil", salt, (size_t)sl, 4096, text, sizeof(text)) > 0);
	assert_int_equal(pgw_scram_parse_verifier(text, v), 0);
}

static void base64(void **state)
{
	char out[16];
	uint8_t back[16];
	assert_int_equal(pgw_b64_encode((const uint8_t *)"ab", 2, out, sizeof(out)), 4);
	assert_string_equal(out, "YWI=");
	assert_int_equal(pgw_b64_decode("YWI=", 4, back, sizeof(back)), 2);
	assert_memory_equal(back, "ab", 2);
	assert_int_equal(pgw_b64_decode("YWI", 3, back, sizeof(back)), -1);
	assert_int_equal(pgw_b64_decode("Y=I=", 4, back, sizeof(back)), -1);
	assert_int_equal(pgw_b64_decode("YW*=", 4, back, sizeof(back)), -1);
	assert_int_equal(pgw_b64_decode("YWI=YWI=", 8, back, sizeof(back)), -1); /* pad mid-way */
	assert_int_equal(pgw_b64_decode("YWJj", 4, back, 2), -1);                /* cap short */
	assert_int_equal(pgw_b64_encode((const uint8_t *)"abc", 3, out, 4), 0);
}

static void verifier_parse(void **state)
{
	struct pgw_scram_verifier v;
	assert_int_equal(pgw_scram_parse_verifier(PG_ALICE, &v), 0);
	assert_int_equal(v.iterations, 4096);
	assert_int_equal(v.salt_len, 16);
	assert_int_equal(pgw_scram_parse_verifier(PG_BOB, &v), PGW_MALFORMED);
	assert_int_equal(pgw_scram_parse_verifier("SCRAM-SHA-256$x:AA==$AA==:AA==", &v),
			 PGW_MALFORMED);
	assert_int_equal(pgw_scram_parse_verifier("SCRAM-SHA-256$4096:mc96yCC185h/2pTUynNUvQ==$"
						  "k1wtEGLh:QkyA",
						  &v),
			 PGW_MALFORMED);
	/* our builder makes what PostgreSQL makes */
	char text[256];
	assert_int_equal(pgw_scram_parse_verifier(PG_ALICE, &v), 0);
	assert_true(pgw_scram_build_verifier("wonderland", v.salt, v.salt_len, 4096, text,
					     sizeof(text)) > 0);
	assert_string_equal(text, PG_ALICE);
	assert_true(pgw_md5_verifier_ok(PG_BOB));
	assert_false(pgw_md5_verifier_ok("md5xyz"));
	char md5[PGW_MD5_LEN + 1];
	pgw_md5_password("builder", "bob", md5);
	assert_string_equal(md5, PG_BOB);
}

/* pgrouter as the server, against RFC 7677's client messages */
static void rfc_server(void **state)
{
	struct pgw_scram_verifier v;
	rfc_verifier(&v);
	struct pgw_scram st;
	char out[512];
	int n = pgw_scram_server_first(&st, &v, (const uint8_t *)RFC_CLIENT_FIRST,
				       strlen(RFC_CLIENT_FIRST), RFC_SERVER_NONCE, out, sizeof(out));
	assert_int_equal(n, strlen(RFC_SERVER_FIRST));
	assert_string_equal(out, RFC_SERVER_FIRST);
	assert_int_equal(st.cbind_flag, 'n');
	uint8_t ck[PGW_SCRAM_KEY_LEN];
	n = pgw_scram_server_final(&st, &v, (const uint8_t *)RFC_CLIENT_FINAL,
				   strlen(RFC_CLIENT_FINAL), NULL, 0, ck, out, sizeof(out));
	assert_int_equal(n, strlen(RFC_SERVER_FINAL));
	assert_string_equal(out, RFC_SERVER_FINAL);
	/* the recovered ClientKey hashes to StoredKey */
	uint8_t h[32];
	SHA256(ck, sizeof(ck), h);
	assert_memory_equal(h, v.stored_key, 32);

	/* one bit off in the proof: a wrong password */
	char bad[] = RFC_CLIENT_FINAL;
	bad[strlen(bad) - 3] = bad[strlen(bad) - 3] == 'A' ? 'B' : 'A';
	pgw_scram_server_first(&st, &v, (const uint8_t *)RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST),
			       RFC_SERVER_NONCE, out, sizeof(out));
	assert_int_equal(pgw_scram_server_final(&st, &v, (const uint8_t *)bad, strlen(bad), NULL, 0,
						ck, out, sizeof(out)),
			 PGW_SCRAM_BAD_PROOF);
	/* another nonce than ours */
	static const char other_nonce[] = "c=biws,r=rOprNGfwEbeRWgbNEkqOX,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
	assert_int_equal(pgw_scram_server_final(&st, &v, (const uint8_t *)other_nonce,
						strlen(other_nonce), NULL, 0, ck, out, sizeof(out)),
			 PGW_MALFORMED);
	/* binding header other than the one the client first sent */
	static const char other_cb[] = "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
	assert_int_equal(pgw_scram_server_final(&st, &v, (const uint8_t *)other_cb,
						strlen(other_cb), NULL, 0, ck, out, sizeof(out)),
			 PGW_SCRAM_CBIND);
}

/* pgrouter as the client, producing RFC 7677's messages from the ClientKey alone */
static void rfc_client(void **state)
{
	struct pgw_scram_verifier v;
	rfc_verifier(&v);
	/* ClientKey = HMAC(SaltedPassword, "Client Key"): what a client's proof reveals */
	uint8_t salted[32], ck[32];
	unsigned l = 32;
	PKCS5_PBKDF2_HMAC("pencil", 6, v.salt, (int)v.salt_len, 4096, EVP_sha256(), 32, salted);
	HMAC(EVP_sha256(), salted, 32, (const uint8_t *)"Client Key", 10, ck, &l);
	struct pgw_scram st;
	char out[512];
	int n = pgw_scram_client_first(&st, "rOprNGfwEbeRWgbNEkqO", out, sizeof(out));
	assert_true(n > 0);
	/* libpq and pgrouter send an empty user name: PostgreSQL uses the startup's */
	assert_string_equal(out, "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
	/* RFC's exchange used n=user; make ours match its AuthMessage to compare */
	strcpy(st.client_first_bare, "n=user,r=rOprNGfwEbeRWgbNEkqO");
	st.cfb_len = strlen(st.client_first_bare);
	n = pgw_scram_client_final(&st, &v, ck, (const uint8_t *)RFC_SERVER_FIRST,
				   strlen(RFC_SERVER_FIRST), out, sizeof(out));
	assert_int_equal(n, strlen(RFC_CLIENT_FINAL));
	assert_string_equal(out, RFC_CLIENT_FINAL);
	assert_int_equal(pgw_scram_client_verify(&st, &v, (const uint8_t *)RFC_SERVER_FINAL,
						 strlen(RFC_SERVER_FINAL)),
			 0);
	assert_int_equal(pgw_scram_client_verify(&st, &v, (const uint8_t *)"v=AAAA", 6),
			 PGW_MALFORMED);
	static const char forged[] = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
	assert_int_equal(pgw_scram_client_verify(&st, &v, (const uint8_t *)forged, strlen(forged)),
			 PGW_SCRAM_BAD_PROOF);
	/* a server with another salt (the password changed): the key does not fit */
	static const char other_salt[] = "r=rOprNGfwEbeRWgbNEkqOxyz,s=AAAAAAAAAAAAAAAAAAAAAA==,i=4096";
	pgw_scram_client_first(&st, "rOprNGfwEbeRWgbNEkqO", out, sizeof(out));
	assert_int_equal(pgw_scram_client_final(&st, &v, ck, (const uint8_t *)other_salt,
						strlen(other_salt), out, sizeof(out)),
			 PGW_SCRAM_MISMATCH);
	/* a server that does not extend our nonce */
	static const char foreign[] = "r=somebodyelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
	pgw_scram_client_first(&st, "rOprNGfwEbeRWgbNEkqO", out, sizeof(out));
	assert_int_equal(pgw_scram_client_final(&st, &v, ck, (const uint8_t *)foreign,
						strlen(foreign), out, sizeof(out)),
			 PGW_MALFORMED);
}

/* A client (libpq's arithmetic, from the password) through pgrouter's server side,
 * then pgrouter's client side with the recovered key, against PostgreSQL's verifier. */
static void pg_verifier_both_ends(void **state)
{
	struct pgw_scram_verifier v;
	assert_int_equal(pgw_scram_parse_verifier(PG_ALICE, &v), 0);
	uint8_t salted[32], ck[32], stored[32];
	unsigned l = 32;
	PKCS5_PBKDF2_HMAC("wonderland", 10, v.salt, (int)v.salt_len, 4096, EVP_sha256(), 32, salted);
	HMAC(EVP_sha256(), salted, 32, (const uint8_t *)"Client Key", 10, ck, &l);
	SHA256(ck, 32, stored);

	/* the client's side: first message */
	struct pgw_scram cli, srv;
	char cf[512], sf[512], cfin[512], sfin[512];
	int n = pgw_scram_client_first(&cli, "clientnonce123", cf, sizeof(cf));
	assert_true(n > 0);
	/* pgrouter's server side */
	n = pgw_scram_server_first(&srv, &v, (const uint8_t *)cf, strlen(cf), "servernonce456", sf,
				   sizeof(sf));
	assert_true(n > 0);
	n = pgw_scram_client_final(&cli, &v, ck, (const uint8_t *)sf, strlen(sf), cfin,
				   sizeof(cfin));
	assert_true(n > 0);
	uint8_t recovered[32];
	n = pgw_scram_server_final(&srv, &v, (const uint8_t *)cfin, strlen(cfin), NULL, 0, recovered,
				   sfin, sizeof(sfin));
	assert_true(n > 0);
	assert_memory_equal(recovered, ck, 32);
	assert_int_equal(pgw_scram_client_verify(&cli, &v, (const uint8_t *)sfin, strlen(sfin)), 0);

	/* channel binding: 'p' with the certificate hash, checked */
	static const uint8_t cbdata[32] = { 1, 2, 3 };
	static const char cfp[] = "p=tls-server-end-point,,n=,r=abcdef";
	n = pgw_scram_server_first(&srv, &v, (const uint8_t *)cfp, strlen(cfp), "XYZ", sf,
				   sizeof(sf));
	assert_true(n > 0);
	assert_int_equal(srv.cbind_flag, 'p');
	uint8_t cbin[64];
	size_t hl = strlen("p=tls-server-end-point,,");
	memcpy(cbin, "p=tls-server-end-point,,", hl);
	memcpy(cbin + hl, cbdata, sizeof(cbdata));
	char c64[128];
	pgw_b64_encode(cbin, hl + sizeof(cbdata), c64, sizeof(c64));
	/* build the proof by hand for "c=<c64>,r=abcdefXYZ" */
	char cfwp[256];
	snprintf(cfwp, sizeof(cfwp), "c=%s,r=abcdefXYZ", c64);
	char am[1024];
	snprintf(am, sizeof(am), "n=,r=abcdef,%s,%s", sf, cfwp);
	uint8_t sig[32], proof[32];
	HMAC(EVP_sha256(), stored, 32, (const uint8_t *)am, strlen(am), sig, &l);
	for (int i = 0; i < 32; i++)
		proof[i] = ck[i] ^ sig[i];
	char p64[64], fin[400];
	pgw_b64_encode(proof, 32, p64, sizeof(p64));
	snprintf(fin, sizeof(fin), "%s,p=%s", cfwp, p64);
	assert_true(pgw_scram_server_final(&srv, &v, (const uint8_t *)fin, strlen(fin), cbdata,
					   sizeof(cbdata), recovered, sfin, sizeof(sfin)) > 0);
	/* the same message bound to another certificate fails */
	static const uint8_t other[32] = { 9 };
	assert_int_equal(pgw_scram_server_final(&srv, &v, (const uint8_t *)fin, strlen(fin), other,
						sizeof(other), recovered, sfin, sizeof(sfin)),
			 PGW_SCRAM_CBIND);
	/* an unknown binding type */
	static const char cfu[] = "p=tls-unique,,n=,r=abcdef";
	assert_int_equal(pgw_scram_server_first(&srv, &v, (const uint8_t *)cfu, strlen(cfu), "XYZ",
						sf, sizeof(sf)),
			 PGW_SCRAM_CBIND);
}

static void malformed_client_first(void **state)
{
	struct pgw_scram_verifier v;
	assert_int_equal(pgw_scram_parse_verifier(PG_ALICE, &v), 0);
	struct pgw_scram st;
	char out[512];
	static const char *bad[] = {
		"", "n", "n,", "n,,", "n,,n=", "n,,n=u", "n,,r=abc", "x,,n=,r=abc",
		"n,a=authz,n=,r=abc", "n,,n=,r=", "n,,n=,r=\x01",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = pgw_scram_server_first(&st, &v, (const uint8_t *)bad[i], strlen(bad[i]),
					       "N", out, sizeof(out));
		assert_true(r < 0);
	}
	/* a NUL inside */
	assert_true(pgw_scram_server_first(&st, &v, (const uint8_t *)"n,,n=,r=a\0b", 11, "N", out,
					   sizeof(out)) < 0);
}

static void md5(void **state)
{
	static const uint8_t salt[4] = { 0x01, 0x02, 0x03, 0x04 };
	char ans[PGW_MD5_LEN + 1];
	pgw_md5_answer(PG_BOB, salt, ans);
	/* what libpq computes: md5(md5(password+user) hex + salt) */
	char inner[PGW_MD5_LEN + 1];
	pgw_md5_password("builder", "bob", inner);
	uint8_t buf[36], d[16];
	unsigned dl = 16;
	memcpy(buf, inner + 3, 32);
	memcpy(buf + 32, salt, 4);
	EVP_Digest(buf, 36, d, &dl, EVP_md5(), NULL);
	char want[36] = "md5";
	for (int i = 0; i < 16; i++)
		snprintf(want + 3 + 2 * i, 3, "%02x", d[i]);
	assert_string_equal(ans, want);
	assert_true(pgw_md5_check(PG_BOB, salt, want, PGW_MD5_LEN));
	want[10] ^= 1;
	assert_false(pgw_md5_check(PG_BOB, salt, want, PGW_MD5_LEN));
	assert_false(pgw_md5_check(PG_BOB, salt, ans, PGW_MD5_LEN - 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(base64),
		cmocka_unit_test(verifier_parse),
		cmocka_unit_test(rfc_server),
		cmocka_unit_test(rfc_client),
		cmocka_unit_test(pg_verifier_both_ends),
		cmocka_unit_test(malformed_client_first),
		cmocka_unit_test(md5),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
