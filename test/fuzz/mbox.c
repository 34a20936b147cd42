/* libFuzzer: an mbox file as the POP3 view reads it (mbox_view_open: From_
 * lines, X-UIDL, mboxrd unquoting). Checks: UIDLs are unique and valid, the
 * size LIST announces is what RETR sends, and after DELE of every other
 * message and QUIT (view_expunge rewrites the file) the kept ones read back
 * the same. Oracle: a reference reader written here from the README's words
 * alone (ref_parse) must find the same messages, and RETR must send each
 * one's text byte for byte as the reference makes it. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms;

/* README: "mboxrd format (a `From ` line before each message, `>From `
 * quoting added on delivery and removed on retrieval)". So: a message
 * begins after each whole line (LF-ended) that starts with "From "; bytes
 * before the first are not mail; the blank line before the next From_ line
 * (or the end) only separates. What POP3 sends (RFC 1939): each line with
 * CRLF (a CR already before the LF is not doubled, a last line without LF
 * gets one), a line ^>+From_ with one '>' less. Returns the number of
 * messages; (*texts)[i] is message i as RETR must send it. */
static int
ref_parse(const uint8_t *d, size_t n, struct buf **texts)
{
    size_t s = 0, e, k, nfrom = 0, *from = xrealloc(NULL, sizeof *from * (n / 6 + 2)); /* the From_ lines' starts */
    int i;
    for (s = 0; s < n; s = e) {
        const uint8_t *nl = memchr(d + s, '\n', n - s);
        e = nl ? (size_t)(nl - d) + 1 : n;
        if (nl && e - s >= 6 && memcmp(d + s, "From ", 5) == 0) from[nfrom++] = s;
    }
    *texts = xrealloc(NULL, sizeof **texts * (nfrom + 1));
    memset(*texts, 0, sizeof **texts * (nfrom + 1));
    for (i = 0; i < (int)nfrom; i++) {
        size_t end = i + 1 < (int)nfrom ? from[i + 1] : n;
        struct buf *t = &(*texts)[i];
        s = (size_t)((const uint8_t *)memchr(d + from[i], '\n', n - from[i]) - d) + 1;
        if (end - s >= 1 && d[end - 1] == '\n' && (end - s == 1 || d[end - 2] == '\n')) end--; /* the separator */
        for (; s < end; s = e) {
            const uint8_t *nl = memchr(d + s, '\n', end - s);
            size_t len;
            e = nl ? (size_t)(nl - d) + 1 : end;
            len = e - s - (nl ? 1 : 0);
            if (nl && len && d[s + len - 1] == '\r') len--;
            for (k = 0; k < len && d[s + k] == '>'; k++) {}
            if (k > 0 && len - k >= 5 && memcmp(d + s + k, "From ", 5) == 0) { s++; len--; }
            buf_add(t, d + s, len);
            buf_adds(t, "\r\n");
        }
    }
    free(from);
    return (int)nfrom;
}

static void
same_text(const struct buf *got, const struct buf *want)
{
    if (got->len == want->len && (got->len == 0 || memcmp(got->p, want->p, got->len) == 0)) return;
    fprintf(stderr, "RETR sent %zu bytes, the reference %zu:\n[%.*s]\n[%.*s]\n", got->len, want->len, (int)got->len,
            got->p ? got->p : "", (int)want->len, want->p ? want->p : "");
    abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[MS_PATH_FILE];
    struct pop_view v, w;
    struct buf *ref, text = {0};
    int i, j, nref = ref_parse(data, size, &ref);
    if (!ms) ms = fuzz_server("storage = mbox\n", "");
    fuzz_rm_tree(ms->cfg->spool);
    snprintf(path, sizeof path, "%s/fuzz.test", ms->cfg->spool);
    mkdir(ms->cfg->spool, 0700);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/fuzz.test/u.mbox", ms->cfg->spool);
    fuzz_write(path, data, size);
    if (view_open_whole(&mbox_store, &v, ms->cfg->spool, "u@fuzz.test") != 0) abort();
    if (v.n != nref) { fprintf(stderr, "mailsrv sees %d messages, the reference %d\n", v.n, nref); abort(); }
    for (i = 0; i < v.n; i++) {
        const char *u = v.msgs[i].uidl;
        assert(strlen(u) >= 1 && strlen(u) <= 70);
        for (j = 0; u[j]; j++) assert(u[j] > 0x20 && u[j] < 0x7f);
        for (j = 0; j < i; j++) assert(strcmp(v.msgs[j].uidl, u) != 0);
        assert(v.msgs[i].off + v.msgs[i].len <= (int64_t)size);
        text.len = 0;
        assert(fuzz_retr(ms, &v, i, -1, &text) == v.msgs[i].size);
        same_text(&text, &ref[i]);
        fuzz_retr(ms, &v, i, 1, NULL);
    }
    for (i = 0; i < v.n; i += 2) v.msgs[i].deleted = 1;
    if (view_expunge(&v, INT64_MAX) != 1) abort();
    if (view_open_whole(&mbox_store, &w, ms->cfg->spool, "u@fuzz.test") != 0) abort();
    assert(w.n == v.n / 2);
    for (i = 0; i < w.n; i++) {
        assert(w.msgs[i].size == v.msgs[2 * i + 1].size);
        text.len = 0;
        fuzz_retr(ms, &w, i, -1, &text);
        same_text(&text, &ref[2 * i + 1]); /* the rewrite kept it byte for byte */
    }
    view_free(&w);
    view_free(&v);
    for (i = 0; i < nref; i++) buf_free(&ref[i]);
    free(ref);
    buf_free(&text);
    return 0;
}
