/* libFuzzer: the MIME reader of the HTTP API (section 6): a message as stored
 * (any bytes) split into parts, each decoded and converted to UTF-8, its
 * header fields decoded (RFC 2047), its address lists and date read. Checks:
 * parts lie within the message, leaves have a part number, and every text
 * the API would put into JSON is valid UTF-8. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static void
check_utf8(const struct buf *b)
{
    size_t i = 0;
    while (i < b->len) {
        size_t k = utf8_seq((const unsigned char *)b->p + i, b->len - i);
        assert(k > 0 && b->p[i] != 0);
        i += k;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct mime_part parts[MIME_MAX_PARTS];
    const char *msg = (const char *)data;
    struct mime_addr a[8];
    struct buf b = {0};
    int n, i, k, off;
    int64_t t;
    n = mime_parse(msg, size, parts, MIME_MAX_PARTS);
    assert(n >= 1 && n <= MIME_MAX_PARTS);
    for (i = 0; i < n; i++) {
        const struct mime_part *p = &parts[i];
        assert(p->head + p->head_len <= size && p->body <= size && p->body + p->body_len <= size);
        assert(p->depth <= MIME_MAX_DEPTH + 1);
        assert(p->multipart || p->id[0]);
        b.len = 0;
        mime_body(msg, p, &b);
        b.len = 0;
        mime_text(msg, p, &b);
        check_utf8(&b);
        assert(strlen(p->filename) < sizeof p->filename);
    }
    for (i = 0; i < 3; i++) {
        static const char *const f[] = {"Subject", "From", "To"};
        b.len = 0;
        mime_header(msg, parts[0].head_len, f[i], &b);
        check_utf8(&b);
        if (i && b.p) {
            k = mime_addresses(b.p, b.len, a, 8);
            assert(k >= 0 && k <= 8);
        }
    }
    {   /* the raw value too, as http_addresses reads it */
        size_t pos = 0, fl;
        const char *fld;
        while (hdr_next_field(msg, parts[0].head_len, &pos, &fld, &fl)) {
            k = mime_addresses(fld, fl, a, 8);
            assert(k >= 0 && k <= 8);
            mime_date(fld, fl, &t, &off);
        }
    }
    buf_free(&b);
    return 0;
}
