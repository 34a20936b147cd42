/* libFuzzer: a whole SMTP server session, the client's byte stream fed to a
 * socketless connection (struct conn, conn_process as the poll loop runs it):
 * EHLO, AUTH, MAIL/RCPT, DATA into a real Maildir spool and relay queue under
 * /dev/shm, pipelining, long lines, NULs. The first byte picks the listener
 * (smtp or submission), the client address (loopback or not) and the piece
 * sizes. A mailing list (news@fuzz.test) takes posts, requests and reports.
 * Every reply must be well formed: "DDD " or "DDD-" lines in CRLF. */
#define MAILSRV_NO_MAIN
#define MS_PBKDF2_ITER 2 /* a login costs next to nothing here (the INI's passwords are hashed with it) */
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms;

static void
check_replies(const char *out, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const char *nl = memchr(out + i, '\n', n - i);
        assert(nl && nl > out + i + 4 && nl[-1] == '\r');
        assert(out[i] >= '2' && out[i] <= '5' && isdigit((unsigned char)out[i + 1]) &&
               isdigit((unsigned char)out[i + 2]) && (out[i + 3] == ' ' || out[i + 3] == '-'));
        assert(!memchr(out + i, '\r', (size_t)(nl - 1 - (out + i)))); /* no CR inside a reply */
        i = (size_t)(nl - out) + 1;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conn *c;
    if (size < 1) return 0;
    if (!ms) ms = fuzz_server("submission = 127.0.0.1:5870\nmax_message_size = 2K\nmax_recipients = 5\n",
                              "[domain other.test]\nw = Passw0rd3\n[alias other.test]\npostmaster = w\n"
                              "far = someone@remote.example\n"
                              "[list news@fuzz.test]\nowner = u@fuzz.test\npost = anyone\nreply_to = list\n"
                              "subject_prefix = [news]\n");
    c = fuzz_conn(ms, data[0] & 1 ? PROTO_SUBMISSION : PROTO_SMTP, data[0] & 2 ? "203.0.113.9" : "127.0.0.1");
    check_replies(c->out.p, c->out.len);
    fuzz_session(c, data + 1, size - 1, data[0], check_replies);
    fuzz_conn_end(c);
    fuzz_rm_tree(ms->cfg->spool);
    fuzz_rm_tree(ms->qdir);
    return 0;
}
