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
    fuzz_make_mailbox(ms, msgs, 3, 0);
    c = fuzz_conn(ms, PROTO_POP3, data[0] & 2 ? "203.0.113.9" : "127.0.0.1");
    fuzz_session(c, data + 1, size - 1, data[0], NULL);
    fuzz_conn_end(c);
    return 0;
}
