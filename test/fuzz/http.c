/* libFuzzer: the HTTP API (section 12). The first byte picks what is fed:
 * even, a whole HTTP session (requests pipelined on a socketless connection,
 * as pop_session.c does) against a captured spool of three messages, Maildir
 * or mbox (bit 1), or a server that is not in capture mode (bit 2: HTTP Basic logins), from
 * loopback or not (bit 3);
 * odd, the pure parsers alone: a request head, a JSON body and a search
 * query, with their invariants checked. */
#define MAILSRV_NO_MAIN
#define MS_PBKDF2_ITER 2 /* a login costs next to nothing here */
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms_mdir, *ms_mbox, *ms_login;

static const char *const msgs[] = {
    "Return-Path: <a@example.org>\nFrom: A <a@example.org>\nTo: u@fuzz.test\nSubject: one\nMessage-ID: <1@x>\n\nfirst\n",
    "Return-Path: <b@example.org>\nSubject: =?koi8-r?B?8NLJ18XU?=\nMIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain; charset=koi8-r\n\n\xf0\xd2\xc9\n"
    "--b\nContent-Type: application/pdf; name=x.pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0=\n--b--\n",
    /* an HTML body with cid: images (http_html_cids) */
    "Subject: three\nMIME-Version: 1.0\nContent-Type: multipart/related; boundary=r\n\n"
    "--r\nContent-Type: text/html\n\n<p>hi</p><img src=\"cid:i%40x\"><img src=cid:>cid:i@x\n"
    "--r\nContent-Type: image/gif\nContent-ID: <i@x>\n\nGIF\n--r--\n",
};


/* What the session wrote in a turn begins with an HTTP/1.1 status line and holds a whole head. */
static void
check_answers(const char *out, size_t n)
{
    if (!n) return;
    assert(n > 12 && memcmp(out, "HTTP/1.1 ", 9) == 0 && isdigit((unsigned char)out[9]));
    assert(strstr(out, "\r\n\r\n") != NULL);
}

static void
pure(const uint8_t *data, size_t size)
{
    struct http_req r;
    struct json j;
    struct search_term t[MS_HTTP_TERMS];
    char *s = fuzz_cstr(data, size), out[512];
    long n = http_parse_head((const char *)data, size, &r);
    assert(n <= (long)size);
    if (n > 0) {
        assert(r.method >= 0 && r.method < HTTP_NMETHODS && (r.target[0] == '/' || r.target[0] == '*'));
        assert(r.length >= 0 && strlen(r.target) < sizeof r.target);
        http_query(r.target, "query", out, sizeof out);
    } else if (n < 0) {
        assert(n == -400 || n == -411 || n == -413 || n == -414 || n == -417 || n == -431 || n == -501 || n == -505);
    }
    if (json_parse(&j, (const char *)data, size) == 0) {
        struct buf b = {0};
        int k;
        assert(j.n >= 1 && j.t[0].next == j.n);
        for (k = 0; k < j.n; k++) {
            assert(j.t[k].start + j.t[k].len <= size && j.t[k].next > k && j.t[k].next <= j.n);
            b.len = 0;
            json_text(&j, k, &b);
            assert(!b.p || strlen(b.p) == b.len); /* no NUL inside */
        }
        json_get(&j, 0, "IDs");
        buf_free(&b);
        json_free(&j);
    }
    {
        struct buf b = {0};
        json_str(&b, (const char *)data, size);
        assert(b.len >= 2 && b.p[0] == '"' && b.p[b.len - 1] == '"');
        buf_free(&b);
    }
    assert(search_parse(s, t, MS_HTTP_TERMS) <= MS_HTTP_TERMS);
    free(s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mailsrv *ms;
    struct conn *c;
    if (size < 1) return 0;
    if (data[0] & 1) { pure(data + 1, size - 1); return 0; }
    if (!ms_mdir) {
        ms_mdir = fuzz_server("capture = yes\nhttp = 127.0.0.1:8025\n", "");
        ms_mbox = fuzz_server("capture = yes\nhttp = 127.0.0.1:8025\nstorage = mbox\n", "");
        ms_login = fuzz_server("http = 127.0.0.1:8025\nadmins = v@fuzz.test\n", ""); /* logins: HTTP Basic */
    }
    ms = data[0] & 4 ? ms_login : data[0] & 2 ? ms_mbox : ms_mdir;
    fuzz_make_mailbox(ms, msgs, 3, 1);
    c = fuzz_conn(ms, PROTO_HTTP, data[0] & 8 ? "203.0.113.9" : "127.0.0.1");
    fuzz_session(c, data + 1, size - 1, data[0], check_answers);
    fuzz_conn_end(c);
    return 0;
}
