/* libFuzzer: the copy of a post a mailing list sends its members
 * (list_write_post: List-* header fields, subject prefix, footer, and a
 * multipart/mixed wrapper for a body that is not plain text). Input: one
 * byte (bit 0 picks the list: news, with reply_to = list and a subject
 * prefix, or ann, owner-only with neither), then the post as stored (the
 * header block, a blank line, the body). Oracles: the body (found here, as
 * RFC 5322 2.1 and msg_read_header's cap say) follows the new header block
 * (or the wrapper's first part header) byte for byte, then only the footer;
 * each field the list adds appears exactly once in the new header block. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms;

/* Where the body starts: after the first blank line; with none, the whole
 * input is header (no body); a header longer than MS_HEADER_MAX is cut at
 * its last line within it, and the rest counts as body. */
static size_t
ref_body(const uint8_t *d, size_t n)
{
    size_t i, cap = n < MS_HEADER_MAX ? n : MS_HEADER_MAX, last = 0;
    for (i = 0; i < cap; i++) {
        if (d[i] == '\n' && (i == 0 || d[i - 1] == '\n')) return i + 1;
        if (d[i] == '\n') last = i + 1;
    }
    return n <= MS_HEADER_MAX ? n : last;
}

/* Fields named `name` in the header block h (continuation lines left out). */
static int
count_field(const char *h, size_t n, const char *name)
{
    size_t i = 0, k = strlen(name);
    int count = 0;
    while (i < n) {
        const char *nl = memchr(h + i, '\n', n - i);
        size_t e = nl ? (size_t)(nl - h) : n;
        if (e - i > k && h[i + k] == ':' && ms_strncaseeq(h + i, name, k)) count++;
        i = e + 1;
    }
    return count;
}

static const char *
find(const char *p, size_t n, const char *s)
{
    size_t k = strlen(s), i;
    for (i = 0; i + k <= n; i++)
        if (memcmp(p + i, s, k) == 0) return p + i;
    return NULL;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const once[] = {"Return-Path", "List-Id", "List-Post", "List-Help", "List-Subscribe",
                                       "List-Unsubscribe", "List-Owner", "Precedence", "X-Mailsrv-Seq"};
    char path[300], token[64], unsub[MS_PATH_MAX], footer[600], want_ct[200];
    const struct cfg_list *l;
    struct store_msg in, m;
    struct buf h = {0}, out = {0};
    const char *hend, *body;
    size_t i, blen, hlen, rb;
    int64_t body_off;
    int kind, wrap, fd;
    if (size < 1) return 0;
    if (!ms) ms = fuzz_server("", "[list news@fuzz.test]\nowner = u@fuzz.test\npost = anyone\nreply_to = list\n"
                                  "subject_prefix = [news]\n[list ann@fuzz.test]\nowner = u@fuzz.test\npost = owner\n");
    l = list_match(ms->cfg, data[0] & 1 ? "ann" : "news", "fuzz.test", &kind, token, sizeof token);
    assert(l && kind == LK_POST);
    data++, size--;
    memset(&in, 0, sizeof in);
    memset(&m, 0, sizeof m);
    snprintf(path, sizeof path, "%s/post", fuzz_dir());
    fuzz_write(path, data, size);
    if ((in.tmp_fd = open(path, O_RDONLY)) < 0) abort();
    in.size = (int64_t)size;
    snprintf(path, sizeof path, "%s/copy", fuzz_dir());
    if ((m.tmp_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600)) < 0) abort();
    strcpy(m.id, "1700000000.M1P1Q1");
    list_address(l, LK_BOUNCES, "", m.sender, sizeof m.sender);

    body_off = msg_read_header(in.tmp_fd, in.size, &h);
    rb = ref_body(data, size);
    assert(body_off == (int64_t)rb);
    list_write_post(l, &m, 7, &in, h.p, h.len, body_off);
    assert(!m.write_failed);
    close(in.tmp_fd);
    buf_reserve(&out, (size_t)m.size + 1);
    assert(os_pread(m.tmp_fd, out.p, (size_t)m.size, 0) == (long)m.size);
    out.len = (size_t)m.size;
    fd = m.tmp_fd;
    close(fd);
    if (getenv("FUZZ_SHOW")) fprintf(stderr, "----\n%.*s", (int)out.len, out.p); /* FUZZ_SHOW=1: print the copy */

    /* the new header block and each field the list adds, once */
    hend = find(out.p, out.len, "\n\n");
    assert(hend);
    hlen = (size_t)(hend - out.p) + 1;
    for (i = 0; i < sizeof once / sizeof once[0]; i++) assert(count_field(out.p, hlen, once[i]) == 1);
    if (l->reply_to_list) assert(count_field(out.p, hlen, "Reply-To") == 1);
    snprintf(want_ct, sizeof want_ct, "\nContent-Type: multipart/mixed; boundary=\"=_mailsrv_%s\"\n", m.id);
    wrap = hlen >= strlen(want_ct) && memcmp(out.p + hlen - strlen(want_ct), want_ct, strlen(want_ct)) == 0;
    if (wrap) {
        assert(count_field(out.p, hlen, "MIME-Version") == 1 && count_field(out.p, hlen, "Content-Type") == 1);
        body = find(hend + 1, out.len - hlen, "\n--=_mailsrv_1700000000.M1P1Q1\n"); /* the first part */
        assert(body && (body = find(body + 1, out.len - (size_t)(body + 1 - out.p), "\n\n")));
        body += 2;
    } else {
        body = hend + 2;
    }

    /* the body, byte for byte, then only the footer */
    blen = size - rb;
    assert((size_t)(out.p + out.len - body) >= blen && memcmp(body, data + rb, blen) == 0);
    body += blen;
    list_address(l, LK_UNSUBSCRIBE, "", unsub, sizeof unsub);
    if (wrap)
        snprintf(footer, sizeof footer, "\n--=_mailsrv_%s\nContent-Type: text/plain; charset=us-ascii\n"
                 "Content-Transfer-Encoding: 7bit\nContent-Disposition: inline\n\n", m.id);
    else
        snprintf(footer, sizeof footer, "%s", blen && data[size - 1] != '\n' ? "\n" : "");
    snprintf(footer + strlen(footer), sizeof footer - strlen(footer),
             "_______________________________________________\n%s@%s mailing list\n"
             "To unsubscribe, send a message to %s\n%s%s%s", l->name, l->domain, unsub,
             wrap ? "\n--=_mailsrv_" : "", wrap ? m.id : "", wrap ? "--\n" : "");
    assert((size_t)(out.p + out.len - body) == strlen(footer) && memcmp(body, footer, strlen(footer)) == 0);
    buf_free(&h);
    buf_free(&out);
    return 0;
}
