/*
 * bench_load.c - SMTP load generator for test/bench.py (C99, POSIX, no dependencies).
 *
 * One poll() loop drives C concurrent SMTP sessions on loopback. Every session
 * sends EHLO once, then messages one after another over the same connection
 * (MAIL, RCPT, DATA pipelined in one write when the server offers PIPELINING,
 * else lock-step), until M messages in total have been acknowledged with a
 * 2xx after the final dot; then QUIT. Bounded: a global deadline (-T seconds)
 * ends the run whatever happens.
 *
 * Usage: bench_load -p PORT -c SESSIONS -m MESSAGES [-s BODY_BYTES] [-t RCPT]
 *                   [-f FROM] [-T SECONDS] [-L] [-r N] [-H HOST]
 *   -L   lock-step: never pipeline MAIL/RCPT/DATA.
 *   -r N send at most N messages per connection, then QUIT and connect again
 *        (-r 1 = one message per connection, like smtp-source without -d).
 * Prints one line of key=value pairs on stdout (see the end of main()).
 * Exit status: 0 when every message was acknowledged, 1 otherwise, 2 on usage error.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum st { S_CONNECT, S_GREET, S_EHLO, S_ENVELOPE, S_DATA, S_QUIT, S_DONE };

struct sess {
    int fd;
    enum st st;
    int pipelining;
    int want;           /* replies still expected in S_ENVELOPE */
    int env_ok;         /* envelope replies seen OK so far */
    char in[8192];
    size_t inlen;
    char *out;
    size_t outlen, outoff, outcap;
    double t_start;     /* when the current message's MAIL was sent */
    long msgno;
    long on_conn;       /* messages started on this connection */
    unsigned gen;       /* bumped at every (re)connect */
};

static const char *rcpt = "user1@bench.local";
static const char *from = "loadgen@bench.test";
static const char *host = "127.0.0.1";
static int port, lockstep;
static long per_conn;  /* -r: messages per connection, 0 = no limit */
static long connections;
static struct sockaddr_in sa;
static long total, claimed, acked, rejected, errors, sessions_failed;
static char first_error[256];
static char *body;   /* shared message body, CRLF lines, dot-stuffed, ends with CRLF . CRLF */
static size_t bodylen;
static double *lat;  /* per acknowledged message latency, seconds */

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
note_error(const char *what, const char *detail)
{
    errors++;
    if (!first_error[0]) {
        size_t i;
        snprintf(first_error, sizeof first_error, "%s: %s", what, detail ? detail : "");
        for (i = 0; first_error[i]; i++)
            if (first_error[i] == '\r' || first_error[i] == '\n' || first_error[i] == '"') first_error[i] = ' ';
    }
}

static void
out_add(struct sess *s, const char *p, size_t n)
{
    if (s->outoff == s->outlen) s->outoff = s->outlen = 0;
    if (s->outlen + n > s->outcap) {
        size_t cap = s->outcap ? s->outcap : 8192;
        while (cap < s->outlen + n) cap *= 2;
        s->out = realloc(s->out, cap);
        if (!s->out) { perror("realloc"); exit(2); }
        s->outcap = cap;
    }
    memcpy(s->out + s->outlen, p, n);
    s->outlen += n;
}

static void
out_str(struct sess *s, const char *str) { out_add(s, str, strlen(str)); }

static void
sess_close(struct sess *s, int failed)
{
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
    if (failed) {
        sessions_failed++;
        if (s->msgno) claimed--; /* give the unfinished message back to the pool */
        s->msgno = 0;
    }
    s->st = S_DONE;
}

static void
sess_connect(struct sess *s)
{
    int one = 1;
    s->inlen = 0;
    s->outlen = s->outoff = 0;
    s->on_conn = 0;
    s->pipelining = 0;
    s->gen++;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->fd < 0) { note_error("socket", strerror(errno)); s->st = S_DONE; sessions_failed++; return; }
    fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    connections++;
    if (connect(s->fd, (struct sockaddr *)&sa, sizeof sa) == 0) s->st = S_GREET;
    else if (errno == EINPROGRESS) s->st = S_CONNECT;
    else { note_error("connect", strerror(errno)); sess_close(s, 1); }
}

static void
send_envelope(struct sess *s)
{
    char line[600];
    s->on_conn++;
    s->msgno = ++claimed;
    s->t_start = now();
    snprintf(line, sizeof line, "MAIL FROM:<%s> SIZE=%lu\r\n", from, (unsigned long)(bodylen + 200));
    out_str(s, line);
    snprintf(line, sizeof line, "RCPT TO:<%s>\r\n", rcpt);
    if (s->pipelining) {
        out_str(s, line);
        out_str(s, "DATA\r\n");
        s->want = 3;
    } else {
        s->want = 1;
    }
    s->env_ok = 0;
    s->st = S_ENVELOPE;
}

static void
next_or_quit(struct sess *s)
{
    if (claimed < total && (!per_conn || s->on_conn < per_conn)) {
        send_envelope(s);
    } else {
        out_str(s, "QUIT\r\n");
        s->st = S_QUIT;
    }
}

static void
send_message(struct sess *s)
{
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr,
                     "From: Load Generator <%s>\r\nTo: <%s>\r\nSubject: bench message %ld\r\n"
                     "Date: Thu, 27 Nov 2026 12:00:00 +0000\r\nMessage-ID: <%ld.%ld@bench.test>\r\n\r\n",
                     from, rcpt, s->msgno, (long)getpid(), s->msgno);
    out_add(s, hdr, (size_t)n);
    out_add(s, body, bodylen);
    s->st = S_DATA;
}

/* Handles one complete reply (all its lines); code is its 3-digit code. */
static void
on_reply(struct sess *s, int code, const char *text)
{
    switch (s->st) {
    case S_GREET:
        if (code != 220) { note_error("greeting", text); sess_close(s, 1); return; }
        out_str(s, "EHLO bench-client.local\r\n");
        s->st = S_EHLO;
        return;
    case S_EHLO:
        if (code != 250) { note_error("EHLO", text); sess_close(s, 1); return; }
        next_or_quit(s);
        return;
    case S_ENVELOPE: {
        int expect = s->pipelining ? (s->want == 1 ? 354 : 250) : 0;
        if (!s->pipelining) {
            /* lock-step: MAIL -> RCPT -> DATA, one at a time (env_ok counts steps) */
            int want_code = s->env_ok < 2 ? 250 : 354;
            if (code != want_code) {
                note_error(s->env_ok == 0 ? "MAIL" : s->env_ok == 1 ? "RCPT" : "DATA", text);
                out_str(s, "RSET\r\n");
                sess_close(s, 1);
                return;
            }
            s->env_ok++;
            if (s->env_ok == 1) {
                char line[600];
                snprintf(line, sizeof line, "RCPT TO:<%s>\r\n", rcpt);
                out_str(s, line);
            } else if (s->env_ok == 2) {
                out_str(s, "DATA\r\n");
            } else {
                send_message(s);
            }
            return;
        }
        if (code == expect) s->env_ok++;
        else note_error(s->want == 3 ? "MAIL" : s->want == 2 ? "RCPT" : "DATA", text);
        if (--s->want > 0) return;
        if (s->env_ok == 3) { send_message(s); return; }
        /* envelope failed; if DATA got 354 anyway we cannot recover cleanly: drop the session */
        sess_close(s, 1);
        return;
    }
    case S_DATA:
        if (code >= 200 && code < 300) {
            lat[acked] = now() - s->t_start;
            acked++;
        } else {
            rejected++;
            note_error("after DATA", text);
            claimed--; /* not stored: someone must send it again */
        }
        s->msgno = 0;
        next_or_quit(s);
        return;
    case S_QUIT:
        sess_close(s, 0);
        if (claimed < total) sess_connect(s); /* -r: next connection */
        return;
    default:
        note_error("unexpected reply", text);
        sess_close(s, 1);
        return;
    }
}

/* Parses complete replies out of s->in. */
static void
parse_input(struct sess *s)
{
    size_t start = 0, i;
    unsigned gen = s->gen;
    for (i = 0; i < s->inlen && s->st != S_DONE; i++) {
        if (s->in[i] != '\n') continue;
        /* line s->in[start..i] */
        if (i - start >= 3) {
            const char *l = s->in + start;
            int last = (i - start < 4) || l[3] != '-';
            if (s->st == S_EHLO && !lockstep && i - start >= 14 && strncmp(l + 4, "PIPELINING", 10) == 0)
                s->pipelining = 1;
            if (last) {
                char text[200];
                size_t n = i - start < sizeof text - 1 ? i - start : sizeof text - 1;
                int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
                memcpy(text, l, n);
                text[n] = 0;
                on_reply(s, code, text);
                if (s->gen != gen) return; /* reconnected: the old input is gone */
            }
        } else {
            note_error("short reply line", NULL);
            sess_close(s, 1);
            return;
        }
        start = i + 1;
    }
    if (s->st == S_DONE) { s->inlen = 0; return; }
    if (start > 0) {
        memmove(s->in, s->in + start, s->inlen - start);
        s->inlen -= start;
    }
    if (s->inlen == sizeof s->in) { note_error("reply line too long", NULL); sess_close(s, 1); }
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
    int conc = 1, opt, i;
    long body_bytes = 4096;
    double limit = 120.0, t0, t_end, deadline;
    struct sess *ss;
    struct pollfd *pf;

    while ((opt = getopt(argc, argv, "H:p:c:m:s:t:f:T:Lr:")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': conc = atoi(optarg); break;
        case 'm': total = atol(optarg); break;
        case 's': body_bytes = atol(optarg); break;
        case 't': rcpt = optarg; break;
        case 'f': from = optarg; break;
        case 'T': limit = atof(optarg); break;
        case 'L': lockstep = 1; break;
        case 'r': per_conn = atol(optarg); break;
        default: fprintf(stderr, "usage: see the comment at the top of bench_load.c\n"); return 2;
        }
    }
    if (port <= 0 || conc <= 0 || total <= 0 || body_bytes < 0 || limit <= 0 || per_conn < 0) {
        fprintf(stderr, "bench_load: need -p PORT -c N -m N\n");
        return 2;
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || (ntohl(sa.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "bench_load: %s is not a loopback IPv4 address\n", host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    /* Body: lines of 76 characters + CRLF; total body_bytes octets, then CRLF.CRLF */
    body = malloc((size_t)body_bytes + 16);
    lat = calloc((size_t)total, sizeof *lat);
    ss = calloc((size_t)conc, sizeof *ss);
    pf = calloc((size_t)conc, sizeof *pf);
    if (!body || !lat || !ss || !pf) { perror("malloc"); return 2; }
    {
        long n = 0, col = 0;
        static const char alpha[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,-";
        while (n < body_bytes) {
            if (body_bytes - n <= 2 || col == 76) {
                if (body_bytes - n >= 2) { body[n++] = '\r'; body[n++] = '\n'; }
                else body[n++] = 'x';
                col = 0;
                continue;
            }
            body[n] = alpha[(n * 7 + col) % (long)(sizeof alpha - 1)];
            n++;
            col++;
        }
        /* make sure the body ends with CRLF */
        if (n >= 2) { body[n - 2] = '\r'; body[n - 1] = '\n'; }
        memcpy(body + n, ".\r\n", 3);
        bodylen = (size_t)n + 3;
    }

    t0 = now();
    deadline = t0 + limit;
    for (i = 0; i < conc; i++) sess_connect(&ss[i]);

    for (;;) {
        int active = 0, r, ms;
        double t = now();
        if (t >= deadline) break;
        for (i = 0; i < conc; i++) {
            struct sess *s = &ss[i];
            pf[i].fd = s->st == S_DONE ? -1 : s->fd;
            pf[i].events = 0;
            pf[i].revents = 0;
            if (s->st == S_DONE) continue;
            active++;
            if (s->st == S_CONNECT || s->outoff < s->outlen) pf[i].events |= POLLOUT;
            if (s->st != S_CONNECT) pf[i].events |= POLLIN;
        }
        if (!active || errors > 1000) break;
        ms = (int)((deadline - t) * 1000) + 1;
        if (ms > 1000) ms = 1000;
        r = poll(pf, (nfds_t)conc, ms);
        if (r < 0) {
            if (errno == EINTR) continue;
            perror("poll");
            break;
        }
        for (i = 0; i < conc; i++) {
            struct sess *s = &ss[i];
            if (s->st == S_DONE || !pf[i].revents) continue;
            if (s->st == S_CONNECT) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) { note_error("connect", strerror(err)); sess_close(s, 1); continue; }
                s->st = S_GREET;
                continue;
            }
            if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                long n = recv(s->fd, s->in + s->inlen, sizeof s->in - s->inlen, 0);
                if (n > 0) {
                    s->inlen += (size_t)n;
                    parse_input(s);
                } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                    int was_quit = s->st == S_QUIT;
                    if (!was_quit) note_error("connection closed by server", n == 0 ? "EOF" : strerror(errno));
                    sess_close(s, !was_quit);
                    if (was_quit && claimed < total) sess_connect(s);
                    continue;
                }
            }
            if (s->st != S_DONE && s->outoff < s->outlen) {
                long n = send(s->fd, s->out + s->outoff, s->outlen - s->outoff, 0);
                if (n > 0) s->outoff += (size_t)n;
                else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                    note_error("send", strerror(errno));
                    sess_close(s, 1);
                }
            }
        }
    }
    t_end = now();
    for (i = 0; i < conc; i++)
        if (ss[i].st != S_DONE) { if (ss[i].st != S_QUIT) note_error("deadline", "session still busy"); sess_close(&ss[i], 0); }

    {
        double el = t_end - t0, p50 = 0, p99 = 0, mx = 0;
        if (acked > 0) {
            qsort(lat, (size_t)acked, sizeof *lat, cmp_double);
            p50 = lat[acked / 2];
            p99 = lat[(long)((double)acked * 0.99) < acked ? (long)((double)acked * 0.99) : acked - 1];
            mx = lat[acked - 1];
        }
        printf("acked=%ld rejected=%ld errors=%ld sessions_failed=%ld connections=%ld elapsed=%.4f rate=%.1f "
               "lat_p50_ms=%.3f lat_p99_ms=%.3f lat_max_ms=%.3f pipelining=%d first_error=\"%s\"\n",
               acked, rejected, errors, sessions_failed, connections, el, el > 0 ? (double)acked / el : 0.0,
               p50 * 1e3, p99 * 1e3, mx * 1e3, ss[0].pipelining, first_error);
    }
    return acked == total ? 0 : 1;
}
