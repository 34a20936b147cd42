/* libFuzzer: a whole SMTP server session, the client's byte stream fed to a
 * socketless connection (struct conn, conn_process as the poll loop runs it):
 * EHLO, AUTH, MAIL/RCPT, DATA or BDAT chunks into a real Maildir spool and relay queue under
 * /dev/shm, pipelining, long lines, NULs. The first byte picks the listener
 * (smtp, submission or lmtp), the client address (loopback or not) and the piece
 * sizes. A mailing list (news@fuzz.test) takes posts, requests and reports.
 * Every reply must be well formed: "DDD " or "DDD-" lines in CRLF.
 * Oracle: "250 after DATA" (or BDAT LAST) <=> the message is stored. After the session every
 * message file in the spool and the queue is found by the id in the
 * Received: line mailsrv wrote (a list's copy of a post keeps the post's);
 * each must have had its 250 "as ID", and each 250 must have its file,
 * unless only mailing lists took the message (a request or a report is
 * not stored). A group commit fails (the fsync answer) when the seed says so:
 * then the copies must be gone (451). */
#define MAILSRV_NO_MAIN
#define MS_PBKDF2_ITER 2 /* a login costs next to nothing here (the INI's passwords are hashed with it) */
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms;

/* The ids of the 250s after DATA, and which of their transactions had
 * only list recipients (seen at the commit, before the reply). */
static struct { char id[64]; int lists_only, ok, got250; } tx[512];
static int ntx, fail_bits;

static int
commit_ok(struct conn *c)
{
    struct smtp_sess *s = &c->u.smtp;
    assert(ntx < (int)(sizeof tx / sizeof tx[0]));
    ms_strlcpy(tx[ntx].id, s->msg.id, sizeof tx[ntx].id);
    tx[ntx].lists_only = s->targets.n == 0;
    tx[ntx].ok = !(fail_bits & (1 << (ntx % 8)));
    tx[ntx].got250 = 0;
    return tx[ntx++].ok;
}

static void
check_replies(const char *out, size_t n);

static int lmtp; /* this session is LMTP: one 250 per recipient, "250 2.0.0 <RCPT> Ok: ..." */

static void
note_replies(const char *out, size_t n)
{
    static const char *const ok[] = {"Ok: queued as ", "Ok: delivered as "};
    size_t i = 0, k;
    int t;
    check_replies(out, n);
    while (i < n) {
        const char *nl = memchr(out + i, '\n', n - i), *p = out + i + 10;
        if ((size_t)(nl - out) - i > 10 && memcmp(out + i, "250 2.0.0 ", 10) == 0) {
            if (lmtp && *p == '<') { /* the recipient: up to "> " */
                const char *gt = memchr(p, '>', (size_t)(nl - p));
                assert(gt && gt + 1 < nl && gt[1] == ' ');
                p = gt + 2;
            }
            for (k = 0; k < 2; k++) {
                size_t pl = strlen(ok[k]), idl;
                if (nl - 1 - p <= (long)pl || memcmp(p, ok[k], pl) != 0) continue;
                idl = (size_t)(nl - 1 - (p + pl));
                for (t = 0; t < ntx; t++)
                    if (idl == strlen(tx[t].id) && memcmp(p + pl, tx[t].id, idl) == 0) break;
                assert(t < ntx && tx[t].ok && (lmtp || !tx[t].got250)); /* a failed commit gets 451, never 250 */
                tx[t].got250++;
            }
        }
        i = (size_t)(nl - out) + 1;
    }
}

/* The id in the Received: line mailsrv writes at the top of a message
 * ("\tby HOST (mailsrv) with PROTO id ID"); "" for one it wrote itself. */
static void
stored_id(const char *path, char *id, size_t n)
{
    char head[4096];
    const char *p, *e;
    long k;
    int fd = open(path, O_RDONLY);
    id[0] = 0;
    if (fd < 0) abort();
    k = read(fd, head, sizeof head - 1);
    close(fd);
    head[k > 0 ? k : 0] = 0;
    if (strncmp(head, "Return-Path: <", 14) != 0) return;
    if (!(p = strstr(head, "\n\tby mx.fuzz.test (mailsrv) with ")) || !(p = strstr(p, " id "))) return;
    p += 4;
    e = p + strcspn(p, ";\n");
    if ((size_t)(e - p) < n) { memcpy(id, p, (size_t)(e - p)); id[e - p] = 0; }
}

static int
had_250(const char *id)
{
    int i;
    for (i = 0; i < ntx; i++)
        if (strcmp(tx[i].id, id) == 0) return tx[i].got250;
    return 0;
}

/* Walks dir: marks found[i] for the transactions whose copies are there
 * and checks that every message there had its 250. */
static void
walk(const char *dir, int *found)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[MS_PATH_MESSAGE], id[64];
    struct stat st;
    int i;
    if (!d) return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) != 0) abort();
        if (S_ISDIR(st.st_mode)) { walk(path, found); continue; }
        stored_id(path, id, sizeof id);
        if (!id[0]) continue;
        if (!had_250(id)) {
            fprintf(stderr, "stored without a 250: %s\n", path);
            abort();
        }
        for (i = 0; i < ntx; i++)
            if (strcmp(tx[i].id, id) == 0) found[i] = 1;
    }
    closedir(d);
}

static void
check_stored(void)
{
    int found[sizeof tx / sizeof tx[0]] = {0}, i;
    walk(ms->cfg->spool, found);
    walk(ms->qdir, found);
    for (i = 0; i < ntx; i++) {
        assert((tx[i].got250 != 0) == tx[i].ok); /* one answer per commit (LMTP: per recipient): 250 if it worked */
        if (tx[i].got250 && !found[i] && !tx[i].lists_only) {
            fprintf(stderr, "250 for %s, but it is not stored\n", tx[i].id);
            abort();
        }
    }
}

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
    lmtp = (data[0] & 13) == 8; /* smtp, without failing commits: LMTP instead */
    c = fuzz_conn(ms, data[0] & 1 ? PROTO_SUBMISSION : lmtp ? PROTO_LMTP : PROTO_SMTP, data[0] & 2 ? "203.0.113.9" : "127.0.0.1");
    check_replies(c->io.out.p, c->io.out.len);
    ntx = 0;
    fail_bits = data[0] & 4 ? data[0] >> 3 : 0; /* which commits (mod 8) fail */
    fuzz_commit_ok = commit_ok;
    fuzz_session(c, data + 1, size - 1, data[0], note_replies);
    fuzz_conn_end(c);
    check_stored();
    fuzz_rm_tree(ms->cfg->spool);
    fuzz_rm_tree(ms->qdir);
    return 0;
}
