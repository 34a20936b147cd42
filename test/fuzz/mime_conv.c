/* libFuzzer: the relay's conversion of a message for the next hop (mime_conv,
 * issue 18). The first byte chooses the hop (with or without 8BITMIME) and the
 * size of the pieces a long line comes in (as lr_next gives it); the rest is
 * the message as stored (LF lines, any octets). Checks:
 *  - no output line is over 998 octets (RFC 5321 4.5.3.1.6);
 *  - for a hop without 8BITMIME, converted output has no octet over 127, and an
 *    error stops the conversion for good;
 *  - the output stays within a bounded multiple of the input (no runaway). */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mime_conv mc;
    struct buf out = {0};
    const char *p = (const char *)data + 1, *end;
    size_t piece, col = 0, i;
    int need7, rc = 0;
    if (size < 1) return 0;
    need7 = data[0] & 1;
    piece = 1 + (data[0] >> 1) * 9; /* 1..1144: pieces shorter and longer than 998 */
    end = (const char *)data + size;
    mc_init(&mc, need7);
    while (p < end && !rc) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        for (;;) {
            size_t k = n > piece ? piece : n;
            rc = mc_line(&mc, p, k, k == n && nl, &out);
            p += k;
            n -= k;
            if (!n || rc) break;
        }
        if (nl && !rc) p++;
    }
    if (!rc) rc = mc_end(&mc, &out);
    else assert(mc_line(&mc, "x", 1, 1, &out) == -1 && mc_end(&mc, &out) == -1);
    assert(out.len <= 4 * size + 64 * (size / 2 + 1));
    for (i = 0; i < out.len; i++) {
        if (need7 && !rc) assert(!((unsigned char)out.p[i] & 0x80));
        if (out.p[i] == '\n') col = 0;
        else assert(++col <= MC_LINE_MAX);
    }
    buf_free(&out);
    return 0;
}
