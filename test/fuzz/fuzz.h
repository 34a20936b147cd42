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

/* One private folder per process under /dev/shm (tmpfs: fsync is cheap) or /tmp. */
static const char *
fuzz_dir(void)
{
    static char dir[64];
    if (!dir[0]) {
        strcpy(dir, "/dev/shm/mailsrv-fuzz-XXXXXX");
        if (!mkdtemp(dir)) {
            strcpy(dir, "/tmp/mailsrv-fuzz-XXXXXX");
            if (!mkdtemp(dir)) abort();
        }
    }
    return dir;
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
 * fuzz.test with mailboxes u and v (plain-text passwords: no PBKDF2 per try).
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
 * the caller frees the view; free the connection with buf_free(&c->out), free(c)). */
static struct conn *
fuzz_pop_conn(struct mailsrv *ms, struct pop_view *v)
{
    struct conn *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->ms = ms;
    c->fd = MS_BAD_SOCK;
    c->proto = PROTO_POP3;
    c->u.pop.stream_fd = -1;
    c->u.pop.state = POP_S_TRANS;
    c->u.pop.view = *v;
    return c;
}

/* RETR (top < 0) or TOP of message i of a POP3 view through a socketless
 * connection: checks the framing and returns the octets of the message as
 * sent (the +OK line, byte-stuffing and the final dot left out), or -1 if
 * it could not be read. */
static int64_t
fuzz_retr(struct mailsrv *ms, struct pop_view *v, int i, long top)
{
    struct conn *c = fuzz_pop_conn(ms, v);
    int64_t n = -1;
    size_t k;
    pop_stream_start(c, &v->msgs[i], top);
    while (c->u.pop.streaming && !c->is_closing) {
        size_t before = c->out.len;
        c->out_off = c->out.len; /* all "sent" (kept for the checks) */
        pop_pump(c);
        if (c->u.pop.streaming && c->out.len == before) abort(); /* no progress */
    }
    if (!c->is_closing && c->out.len >= 3 && memcmp(c->out.p, "+OK", 3) == 0) {
        const char *p = c->out.p;
        size_t end = c->out.len - 3, body = (size_t)((const char *)memchr(p, '\n', c->out.len) - p) + 1;
        assert(end >= body && memcmp(p + end, ".\r\n", 3) == 0); /* the final dot */
        n = (int64_t)(end - body);
        for (k = body; k < end; k++) {
            if (p[k] == '\n') assert(p[k - 1] == '\r'); /* CRLF line ends only */
            if (p[k] == '.' && (k == body || p[k - 1] == '\n')) n--; /* byte-stuffing */
        }
        assert(end == body || p[end - 1] == '\n');
    }
    pop_stream_end(c);
    buf_free(&c->out);
    free(c);
    return n;
}

#endif
