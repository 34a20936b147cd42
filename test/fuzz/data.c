/* libFuzzer: the DATA byte machine (data_rx_feed), the SMTP smuggling path.
 * The first byte seeds the chunk sizes and the output room, so the same text
 * is fed in random pieces into a small output buffer that is flushed when full
 * (as smtp_data_feed does). Checked against a plain specification:
 *  - the message ends exactly after the first CRLF "." CRLF, where the DATA
 *    command's own CRLF counts as the one before the first line; nothing else
 *    (LF.LF, CR.CR, LF.CRLF ...) ends it;
 *  - lines and bytes are counted as stored, the output never outgrows the input;
 *  - too_long is set exactly when a stored line is over 998 octets, eightbit
 *    exactly when a stored octet is over 127. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static size_t
expected_end(const char *in, size_t n, int *done)
{
    size_t i;
    /* "\r\n" + in contains "\r\n.\r\n": where does its first occurrence end in `in`? */
    if (n >= 3 && memcmp(in, ".\r\n", 3) == 0) { *done = 1; return 3; }
    for (i = 0; i + 5 <= n; i++)
        if (memcmp(in + i, "\r\n.\r\n", 5) == 0) { *done = 1; return i + 5; }
    *done = 0;
    return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct data_rx d;
    const char *in = (const char *)data + 1;
    size_t n, used = 0, olen = 0, total = 0, cap, want_used, i, line = 0, maxline = 0, steps = 0;
    char out[80], *all;
    unsigned seed;
    int done = 0, want_done;
    int64_t lines = 0;
    int eight = 0;
    if (size < 1) return 0;
    seed = data[0] * 2654435761u + 1;
    n = size - 1;
    cap = 2 + data[0] % (sizeof out - 2); /* 2..79 bytes of output room */
    all = xrealloc(NULL, n + 1);
    data_rx_init(&d);
    while (used < n && !done) {
        size_t take, r;
        seed = seed * 1103515245u + 12345u;
        take = 1 + (seed >> 16) % 97;
        if (take > n - used) take = n - used;
        r = data_rx_feed(&d, in + used, take, out, cap, &olen, &done);
        used += r;
        if (olen + 2 > cap || done || used == n) { memcpy(all + total, out, olen); total += olen; olen = 0; }
        assert(++steps < 4 * n + 8); /* progress */
    }
    want_used = expected_end(in, n, &want_done);
    assert(done == want_done);
    assert(used == want_used);
    assert(total <= used);
    assert(d.bytes == (int64_t)total);
    for (i = 0; i < total; i++) {
        if ((unsigned char)all[i] & 0x80) eight = 1;
        if (all[i] == '\n') { lines++; line = 0; continue; }
        if (++line > maxline) maxline = line;
    }
    assert(d.lines == lines);
    assert(d.too_long == (maxline > MS_TEXT_LINE_MAX - 2));
    assert(d.eightbit == eight);
    free(all);
    return 0;
}
