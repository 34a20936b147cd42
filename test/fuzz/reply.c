/* libFuzzer: what a remote SMTP server sends to mailsrv's relay client
 * (greeting, EHLO reply with its keywords, MAIL/RCPT/DATA/dot replies).
 * A real outbound session (struct mta_sess) reads the bytes from a socketpair
 * with mta_read(), so smtp_reply_line(), the EHLO keyword scan and the client
 * state machine all run as in the server. The first byte picks [relay] tls
 * (odd: yes, so STARTTLS is answered with a real BearSSL handshake). */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms_plain, *ms_tls;

static void
init(void)
{
    static const char msg[] = "Return-Path: <a@fuzz.test>\nReceived: from x\nSubject: hi\n\nline\n.dot line\nFrom me\n";
    char path[MS_PATH_FILE];
    ms_plain = fuzz_server("", "[relay]\ntls = no\n");
    ms_tls = fuzz_server("", "[relay]\ntls = yes\n");
    snprintf(path, sizeof path, "%s/Q1.msg", ms_plain->qdir);
    fuzz_write(path, msg, sizeof msg - 1);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const rcpts[] = {"x@dest.test", "y@dest.test", "z@dest.test"};
    struct mailsrv *ms;
    struct qentry *e;
    struct mta_sess *o;
    int sv[2], ri[3], i, turns;
    if (!ms_plain) init();
    if (size < 1) return 0;
    ms = data[0] & 1 ? ms_tls : ms_plain;
    data++, size--;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) abort();
    if (size && os_write_all(sv[1], data, size) < 0) abort(); /* the socket buffer takes libFuzzer's 4 KB */
    shutdown(sv[1], SHUT_WR);

    e = xrealloc(NULL, sizeof *e);
    memset(e, 0, sizeof *e);
    strcpy(e->id, "Q1");
    strcpy(e->from, "a@fuzz.test");
    e->size = 80;
    e->lines = 7;
    e->nr = 3;
    e->r = xrealloc(NULL, sizeof *e->r * 3);
    memset(e->r, 0, sizeof *e->r * 3);
    for (i = 0; i < 3; i++) { strcpy(e->r[i].addr, rcpts[i]); ri[i] = i; }
    e->active = 1; /* held by the harness: the session's end never runs relay_finish() */
    relay_start(ms, e, "dest.test", ri, 3);
    o = ms->out[--ms->nout];
    strcpy(o->mx[0].host, "mx.dest.test");
    o->nmx = o->naddr = 1; /* family 0: any reconnect fails at socket() */
    strcpy(o->hop, "mx.dest.test[0.0.0.0]:25");
    o->io.fd = sv[0];
    o->state = O_GREET;
    net_set_nonblock(sv[0]);
    /* the poll loop's turns: mta_io() reads, pumps the body and sends (into the unread socket) */
    for (turns = 0; o->io.fd == sv[0] && !o->is_done && turns < 10000; turns++) {
        mta_io(o, POLLIN);
        assert(o->io.inlen < o->io.insize);
    }
    assert(turns < 10000);
    for (i = 0; i < 3; i++) assert(e->r[i].result == 0 || e->r[i].result == 2 || e->r[i].result == 4 || e->r[i].result == 5);
    mta_free(o); /* closes sv[0] unless the session did */
    close(sv[1]);
    qentry_free(e);
    return 0;
}
