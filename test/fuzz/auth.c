/* libFuzzer: AUTH responses, i.e. the base64 a client sends after AUTH PLAIN
 * or AUTH LOGIN (SMTP) and AUTH PLAIN (POP3): b64_decode and sasl_plain_decode. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line, user[MS_PATH_MAX], pass[256], tiny_u[4], tiny_p[4], *enc;
    unsigned char raw[600], again[600];
    long n, m;
    if (size > MS_SMTP_LINE_MAX) return 0; /* the server's longest line */
    line = fuzz_cstr(data, size);
    /* as smtp_auth_step (AUTH LOGIN) calls it */
    n = b64_decode(line, strlen(line), raw, 511);
    if (n >= 0) {
        assert(n <= 511 && (size_t)n <= strlen(line) * 3 / 4);
        enc = xrealloc(NULL, (size_t)n * 4 / 3 + 8);
        b64_encode(raw, (size_t)n, enc, 1); /* a canonical re-encoding decodes to the same bytes */
        m = b64_decode(enc, strlen(enc), again, sizeof again);
        assert(m == n && memcmp(raw, again, (size_t)n) == 0);
        free(enc);
    }
    if (sasl_plain_decode(line, user, sizeof user, pass, sizeof pass) == 0) {
        assert(strlen(user) < sizeof user && strlen(pass) < sizeof pass);
    }
    if (sasl_plain_decode(line, tiny_u, sizeof tiny_u, tiny_p, sizeof tiny_p) == 0) {
        assert(strlen(tiny_u) < sizeof tiny_u && strlen(tiny_p) < sizeof tiny_p);
    }
    /* any bytes survive encode + decode */
    enc = xrealloc(NULL, size * 4 / 3 + 8);
    b64_encode(data, size, enc, size & 1);
    n = b64_decode(enc, strlen(enc), raw, sizeof raw); /* size <= 512 */
    assert(n == (long)size && memcmp(raw, data, size) == 0);
    free(enc);
    free(line);
    return 0;
}
