/* libFuzzer: a whole POP3 server session, the client's byte stream fed to a
 * socketless connection (as smtp_session.c does), on a mailbox of three
 * messages rebuilt for every input: USER/PASS, AUTH PLAIN, STAT, LIST, UIDL,
 * RETR, TOP, DELE, RSET, QUIT (which applies the deletions). The first byte
 * picks Maildir or mbox storage, the client address and the piece sizes. */
#define MAILSRV_NO_MAIN
#define MS_PBKDF2_ITER 2 /* a login costs next to nothing here (the INI's passwords are hashed with it) */
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms_mdir, *ms_mbox;

static const char *const msgs[] = {
    "Return-Path: <a@example.org>\nSubject: one\n\nfirst\n.starts with a dot\n",
    "Return-Path: <b@example.org>\nSubject: two\nX-UIDL: two-uidl\n\nsecond\n>From quoted\n\n",
    "Subject: three\n\n",
};

static void
make_mailbox(struct mailsrv *ms)
{
    char path[MS_PATH_MESSAGE], dir[MS_PATH_DOMAIN];
    struct buf b = {0};
    int i;
    fuzz_rm_tree(ms->cfg->spool);
    mkdir(ms->cfg->spool, 0700);
    if (ms->cfg->storage == STORE_MBOX) {
        snprintf(path, sizeof path, "%s/fuzz.test", ms->cfg->spool);
        mkdir(path, 0700);
        for (i = 0; i < 3; i++) buf_printf(&b, "From x@example.org Tue Nov 14 10:00:0%d 2023\n%s\n", i, msgs[i]);
        snprintf(path, sizeof path, "%s/fuzz.test/u.mbox", ms->cfg->spool);
        fuzz_write(path, b.p, b.len);
        buf_free(&b);
        return;
    }
    if (mdir_prepare(ms->cfg->spool, "u@fuzz.test", dir, sizeof dir, NULL) != 0) abort();
    for (i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s/170000000%d.M1P1Q%d.mx%s", dir, i == 1 ? "../cur" : ".", i, i,
                 i == 1 ? ":2,S" : "");
        fuzz_write(path, msgs[i], strlen(msgs[i]));
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mailsrv *ms;
    struct conn *c;
    if (size < 1) return 0;
    if (!ms_mdir) {
        ms_mdir = fuzz_server("", "");
        ms_mbox = fuzz_server("storage = mbox\n", "");
    }
    ms = data[0] & 1 ? ms_mbox : ms_mdir;
    make_mailbox(ms);
    c = fuzz_conn(ms, PROTO_POP3, data[0] & 2 ? "203.0.113.9" : "127.0.0.1");
    fuzz_session(c, data + 1, size - 1, data[0], NULL);
    fuzz_conn_end(c);
    return 0;
}
