/* Helpers shared by the libFuzzer harnesses. Each harness first does
 *   #define MAILSRV_NO_MAIN
 *   #include "../../mailsrv.c"
 * (as test/unit.c does), then includes this file. */
#ifndef FUZZ_H
#define FUZZ_H

#include <assert.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as a NUL-terminated string (stops at its first NUL); free() it. */
static char *
fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = xrealloc(NULL, size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* One private folder per process under /dev/shm (tmpfs: fsync is cheap) or
 * /tmp, removed at exit (a crash leaves it for the post-mortem). */
static char fuzz_dir_path[64];
static void fuzz_rm_tree(const char *dir);
static void fuzz_dir_remove(void) { fuzz_rm_tree(fuzz_dir_path); rmdir(fuzz_dir_path); }
static const char *
fuzz_dir(void)
{
    if (!fuzz_dir_path[0]) {
        strcpy(fuzz_dir_path, "/dev/shm/mailsrv-fuzz-XXXXXX");
        if (!mkdtemp(fuzz_dir_path)) {
            strcpy(fuzz_dir_path, "/tmp/mailsrv-fuzz-XXXXXX");
            if (!mkdtemp(fuzz_dir_path)) abort();
        }
        atexit(fuzz_dir_remove);
    }
    return fuzz_dir_path;
}

/* Writes a whole file (truncating it). */
static void
fuzz_write(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || os_write_all(fd, p, n) < 0) abort();
    close(fd);
}

/* Empties a folder (rm -r of its contents, dot files included). */
static void
fuzz_rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1400];
    if (!d) return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (ms_fmt(path, sizeof path, "%s/%s", dir, e->d_name) < 0) continue;
        if (unlink(path) != 0) { fuzz_rm_tree(path); rmdir(path); }
    }
    closedir(d);
}

/* Swallows log lines. */
static void fuzz_no_log(void *user, const char *line) { (void)user; (void)line; }

/* A server with a config in fuzz_dir(): spool/ and queue/ there, one domain
 * fuzz.test with mailboxes u and v (plain-text passwords, hashed at load).
 * `server` is added to [server]; `more` ends the file. Not listening. */
static struct mailsrv *
fuzz_server(const char *server, const char *more)
{
    char ini[4096], path[256];
    struct mailsrv *ms = mailsrv_create();
    snprintf(ini, sizeof ini,
             "[server]\nhostname = mx.fuzz.test\nsmtp = 127.0.0.1:2525\npop3 = 127.0.0.1:1100\n"
             "spool = %s/spool\nqueue = %s/queue\n%s\n[domain fuzz.test]\nu = Passw0rd1\nv = Passw0rd2\n"
             "[alias fuzz.test]\npostmaster = u\nall = u, v\n%s",
             fuzz_dir(), fuzz_dir(), server, more);
    snprintf(path, sizeof path, "%s/mailsrv.ini", fuzz_dir());
    if (mailsrv_load_ini_string(ms, ini, path) != 0) abort(); /* the errors went to stderr */
    mailsrv_set_log(ms, fuzz_no_log, NULL);
    ms_strlcpy(ms->qdir, ms->cfg->queue, sizeof ms->qdir);
    mkdir(ms->qdir, 0700);
    return ms;
}

/* A socketless POP3 connection in the TRANSACTION state on view v (borrowed:
 * the caller frees the view; free the connection with buf_free(&c->io.out), free(c)). */
static struct conn *
fuzz_pop_conn(struct mailsrv *ms, struct pop_view *v)
{
    struct conn *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->ms = ms;
    io_init(&c->io, MS_BAD_SOCK, c->inbuf, sizeof c->inbuf, conn_on_io);
    c->proto = PROTO_POP3;
    c->ops = &pop_ops;
    c->u.pop.stream_fd = -1;
    c->u.pop.state = POP_S_TRANS;
    c->u.pop.view = *v;
    return c;
}

/* RETR (top < 0) or TOP of message i of a POP3 view through a socketless
 * connection: checks the framing and returns the octets of the message as
 * sent (the +OK line, byte-stuffing and the final dot left out), or -1 if
 * it could not be read. text (or NULL) gets those octets. */
static int64_t
fuzz_retr(struct mailsrv *ms, struct pop_view *v, int i, long top, struct buf *text)
{
    struct conn *c = fuzz_pop_conn(ms, v);
    int64_t n = -1;
    size_t k;
    pop_stream_start(c, &v->msgs[i], top);
    while (c->u.pop.streaming && !c->is_closing) {
        size_t before = c->io.out.len;
        c->io.out_off = c->io.out.len; /* all "sent" (kept for the checks) */
        pop_pump(c);
        if (c->u.pop.streaming && c->io.out.len == before) abort(); /* no progress */
    }
    if (!c->is_closing && c->io.out.len >= 3 && memcmp(c->io.out.p, "+OK", 3) == 0) {
        const char *p = c->io.out.p;
        size_t end = c->io.out.len - 3, body = (size_t)((const char *)memchr(p, '\n', c->io.out.len) - p) + 1;
        assert(end >= body && memcmp(p + end, ".\r\n", 3) == 0); /* the final dot */
        n = (int64_t)(end - body);
        for (k = body; k < end; k++) {
            if (p[k] == '\n') assert(p[k - 1] == '\r'); /* CRLF line ends only */
            if (p[k] == '.' && (k == body || p[k - 1] == '\n')) n--; /* byte-stuffing */
            else if (text) buf_add(text, p + k, 1);
        }
        assert(end == body || p[end - 1] == '\n');
    }
    pop_stream_end(c);
    buf_free(&c->io.out);
    free(c);
    return n;
}


/* A spool with one mailbox, u@fuzz.test, holding msgs[0..n) (LF line ends), rebuilt for each
 * input: Maildir (the second one in cur/ with the S flag) or mbox (uidl: each with an X-UIDL
 * of the Maildir names' form, as mailsrv's own deliveries have). */
static void
fuzz_make_mailbox(struct mailsrv *ms, const char *const *msgs, int n, int uidl)
{
    char path[MS_PATH_MESSAGE], dir[MS_PATH_DOMAIN];
    struct buf b = {0};
    int i;
    fuzz_rm_tree(ms->cfg->spool);
    mkdir(ms->cfg->spool, 0700);
    if (ms->cfg->storage == STORE_MBOX) {
        snprintf(path, sizeof path, "%s/fuzz.test", ms->cfg->spool);
        mkdir(path, 0700);
        for (i = 0; i < n; i++) {
            buf_printf(&b, "From x@example.org Tue Nov 14 10:00:0%d 2023\n", i);
            if (uidl) buf_printf(&b, "X-UIDL: 170000000%d.M1P1Q%d.mx\n", i, i);
            buf_printf(&b, "%s\n", msgs[i]);
        }
        snprintf(path, sizeof path, "%s/fuzz.test/u.mbox", ms->cfg->spool);
        fuzz_write(path, b.p, b.len);
        buf_free(&b);
        return;
    }
    if (mdir_prepare(ms->cfg->spool, "u@fuzz.test", dir, sizeof dir, NULL) != 0) abort();
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s/170000000%d.M1P1Q%d.mx%s", dir, i == 1 ? "../cur" : ".", i, i,
                 i == 1 ? ":2,S" : "");
        fuzz_write(path, msgs[i], strlen(msgs[i]));
    }
}

/* A socketless server-side connection, as loop_accept() makes it (greeted),
 * registered in ms->conns. Free it with fuzz_conn_end(). */
static struct conn *
fuzz_conn(struct mailsrv *ms, enum proto proto, const char *peer)
{
    struct conn *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->ms = ms;
    io_init(&c->io, MS_BAD_SOCK, c->inbuf, sizeof c->inbuf, conn_on_io);
    c->id = ++ms->next_id;
    c->proto = proto;
    c->ops = proto_ops_of(proto);
    c->born = os_now_ms(); /* as loop_accept() does: else max_session_time has passed at once */
    ms_strlcpy(c->peer, peer, sizeof c->peer);
    c->is_loopback = strcmp(peer, "127.0.0.1") == 0;
    ms->conns = xrealloc(ms->conns, sizeof *ms->conns);
    ms->conns[0] = c;
    ms->nconns = 1;
    c->ops->greet(c);
    return c;
}

static void
fuzz_conn_end(struct conn *c)
{
    struct mailsrv *ms = c->ms;
    int i;
    conn_free(c);
    ms->nconns = 0;
    for (i = 0; i < ms->nqueue; i++) qentry_free(ms->queue[i]); /* relay_enqueue()'d by a 250 */
    ms->nqueue = 0;
}

/* A harness may set this: called at each SMTP group commit, it answers
 * whether the folder fsyncs worked (NULL: they always do). */
static int (*fuzz_commit_ok)(struct conn *c);

/* The poll loop's turns for one connection: the client's bytes arrive in
 * pieces of 1..512 bytes (sizes drawn from seed), the protocol runs over
 * them, replies are "sent" (handed to check(), then dropped), a group commit
 * is answered at once, a login's hash and a delivery are done at once, and a failed login's delay has always passed. Ends when
 * the session closes or the input is used up and nothing more happens. */
static void
fuzz_session(struct conn *c, const uint8_t *data, size_t size, unsigned seed,
             void (*check)(const char *out, size_t n))
{
    static int show = -1;
    size_t used = 0;
    int idle = 0, turns = 0;
    while (!c->is_closing && !c->close_after_flush && !c->tls_after_flush && idle < 2) {
        size_t take;
        seed = seed * 1103515245u + 12345u;
        take = 1 + (seed >> 16) % 512;
        if (take > size - used) take = size - used;
        if (take > c->io.insize - c->io.inlen) take = c->io.insize - c->io.inlen; /* HTTP: larger for a long head */
        memcpy(c->io.in + c->io.inlen, data + used, take);
        c->io.inlen += take;
        used += take;
        c->hold_until = 0;
        conn_process(c);
        while (c->work) { /* a login's PBKDF2, a mailbox's view, QUIT's deletions, a delivery (loop_work() runs them
                            * in slices), then the answer */
            c->work(c, INT64_MAX);
            c->hold_until = 0;
            conn_process(c);
        }
        if (c->commit_pending) {
            c->ms->commit_dirs.n = 0; /* tmpfs: the folder fsyncs are skipped */
            c->ops->group_committed(c, fuzz_commit_ok ? fuzz_commit_ok(c) : 1);
        }
        assert(c->io.inlen <= c->io.insize);
        if (check) check(c->io.out.p, c->io.out.len);
        if (show < 0) show = getenv("FUZZ_SHOW") != NULL; /* FUZZ_SHOW=1: print the replies */
        if (show && c->io.out.len) fprintf(stderr, "%.*s", (int)c->io.out.len, c->io.out.p);
        idle = used == size && c->io.out.len == 0 ? idle + 1 : 0;
        c->io.out.len = c->io.out_off = 0;
        assert(++turns < 100000);
    }
}

#endif
