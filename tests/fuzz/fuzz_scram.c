/* libFuzzer: SCRAM messages from an untrusted peer, both ends, and the auth
 * message parsers. The first byte picks what the rest is fed to. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgwire/pgwire.h"

/* PostgreSQL 15's verifier for password "wonderland" */
static const char verifier[] = "SCRAM-SHA-256$4096:mc96yCC185h/2pTUynNUvQ==$k1wtEGLhglcg1rM4nSjWUv"
			       "YXd80c65APSxu1nZBHvco=:QkyASW9svaFklRj0/yTYtIu6oONgji1xYjRPy4AU+as=";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 4096)
		return 0;
	struct pgw_scram_verifier v;
	if (pgw_scram_parse_verifier(verifier, &v) != 0)
		abort();
	struct pgw_scram st;
	char out[PGW_SCRAM_MSG_MAX];
	uint8_t key[PGW_SCRAM_KEY_LEN] = { 0 };
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	switch (data[0] % 6) {
	case 0: /* a client's first message */
		(void)pgw_scram_server_first(&st, &v, p, n, "servernonce", out, sizeof(out));
		break;
	case 1: { /* a client's final message after a valid first one */
		static const char first[] = "n,,n=,r=clientnonce";
		if (pgw_scram_server_first(&st, &v, (const uint8_t *)first, sizeof(first) - 1, "sn",
					   out, sizeof(out)) < 0)
			abort();
		int r = pgw_scram_server_final(&st, &v, p, n, NULL, 0, key, out, sizeof(out));
		if (r > 0) /* a proof that passes without the password: impossible */
			abort();
		break;
	}
	case 2: /* a server's first message, then its final one */
		if (pgw_scram_client_first(&st, "clientnonce", out, sizeof(out)) < 0)
			abort();
		if (pgw_scram_client_final(&st, &v, key, p, n, out, sizeof(out)) > 0)
			(void)pgw_scram_client_verify(&st, &v, p, n);
		break;
	case 3: { /* verifier text */
		char text[600];
		size_t t = n < sizeof(text) - 1 ? n : sizeof(text) - 1;
		memcpy(text, p, t);
		text[t] = 0;
		(void)pgw_scram_parse_verifier(text, &v);
		(void)pgw_md5_verifier_ok(text);
		break;
	}
	case 4: { /* base64 round trip */
		uint8_t bin[4096];
		char text[6000];
		(void)pgw_b64_decode((const char *)p, n, bin, sizeof(bin));
		size_t e = pgw_b64_encode(p, n, text, sizeof(text));
		if (n && (!e || pgw_b64_decode(text, e, bin, sizeof(bin)) != (int)n ||
			  memcmp(bin, p, n)))
			abort();
		break;
	}
	default: { /* SASL messages */
		const char *mech;
		const uint8_t *d;
		uint32_t dl;
		if (pgw_sasl_initial_parse(p, (uint32_t)n, &mech, &d, &dl) == 0 && d &&
		    (d < p || d + dl > p + n))
			abort();
		(void)pgw_sasl_offers(p, (uint32_t)n, "SCRAM-SHA-256");
		break;
	}
	}
	return 0;
}
