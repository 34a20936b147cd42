/*
 * mailsrv.c - a small mail server in one portable C99 file.
 *
 * SMTP in (RFC 5321) with local delivery to Maildir or mbox, POP3 out
 * (RFC 1939, 2449), configured by one INI file (parsed with inih).
 *
 * Architecture: one process, one thread, one poll() loop over non-blocking
 * sockets. Every session, inbound (struct conn, holding a protocol state
 * machine) or outbound (struct mta_sess, the relay), embeds one struct
 * transport: its socket, TLS state and buffers, polled and dispatched alike.
 * Protocol code appends replies to the output buffer and never calls send()
 * itself. Message text received with DATA streams into a file in
 * SPOOL/.tmp; at the final dot the message is fsynced, hard-linked into each
 * recipient's Maildir new/ (or appended to the mbox), the directories are
 * fsynced, and only then is 250 sent. POP3 sessions work on a snapshot taken
 * at login and apply deletions at QUIT. Work that can take long (a login's
 * PBKDF2, a large mailbox's snapshot, a QUIT's deletions) is a session's
 * `work`: the loop runs it in short slices between the other sessions'
 * turns (loop_work), and the session takes no input until it is done.
 *
 * Sections (PLEASE KEEP THIS ORDER; `grep -n '^/\*====' mailsrv.c` is the map):
 *   1. Build options
 *   2. Limits and defaults
 *   3. Platform layer (the only place for OS differences)
 *      Contents: one prototype per function, by section (`make toc` writes it)
 *   4. Utilities: buffers, strings, time, logging, SHA-256, base64, PBKDF2
 *   5. Config: INI loading, validation, address resolution, INI editing
 *   6. Pure parsers (fuzzed): SMTP commands and paths, the DATA byte machine,
 *      AUTH, DNS messages, queue envelopes, remote replies, mboxrd, headers
 *   7. Storage: Maildir and mbox behind one ops table (delivery, its undo, the
 *      mbox journal, locks and index, the POP3 mailbox view), the relay queue files
 *   8. TLS glue: BearSSL engines between sockets and session buffers; the
 *      transport (a socket, plain or TLS, with its buffers) every session uses
 *   9. Connections: the server, connection and session structs, protocol ops;
 *      replies; a connection's turn; logins for every protocol and relay
 *      rights; slots and per-client limits; messages the server writes
 *  10. SMTP server session
 *  11. POP3 server session
 *  12. HTTP: the Mailpit-compatible API (requests, logins, routes, the
 *      store's views per request, searches, deletions, read marks)
 *  13. Relay: DNS client, outbound SMTP sessions, the queue runner, bounces
 *  14. Mailing lists: confirmed subscription, posts, bounce counting
 *  15. Event loop: listeners, accept, long work in slices, group commit, timers,
 *      reload, stop, and the loop turn itself (mailsrv_poll)
 *  16. Public API (mailsrv.h): create, configure, listen, run, destroy
 *  17. Command line and main(): check, add/del/users, queue, gencert, passwd,
 *      checkpassword (mailsrv's passwords for Dovecot)
 *
 * Build macros: MAILSRV_NO_MAIN leaves out main() (unit tests include this
 * file). MAILSRV_ENABLE_TLS=1 adds TLS with BearSSL (section 8).
 */

/*==== 1. Build options ====*/

#ifdef _WIN32
#define _WIN32_WINNT 0x0600 /* Vista: WSAPoll; must come before any include */
#else
#define _POSIX_C_SOURCE 200809L /* and no GNU or BSD extensions */
#endif

#include "mailsrv.h"

#define INI_HANDLER_LINENO 1 /* Debian builds libinih this way: the handler is told each line number */
#include <ini.h>

#ifndef MAILSRV_ENABLE_TLS
#define MAILSRV_ENABLE_TLS 0 /* the Makefile passes 1 unless TLS=0 */
#endif
#if MAILSRV_ENABLE_TLS
#include <bearssl.h>
#endif
#ifndef MAILSRV_ENABLE_HTTP
#define MAILSRV_ENABLE_HTTP 1 /* the Makefile passes 0 with HTTP=0: no HTTP API, no MIME reader */
#endif
#ifndef MAILSRV_FAULTS
#define MAILSRV_FAULTS 0 /* 1: fault injection for the tests (`make fault-test`); never in a real build */
#endif

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*==== 2. Limits and defaults ====*/

#define MS_SMTP_LINE_MAX 512      /* RFC 5321 4.5.3.1.4: command line incl. CRLF */
/* A non-ASCII path in a transaction without SMTPUTF8: 553 and X.6.7 "Non-ASCII addresses not
 * permitted for that sender/recipient" (RFC 6531's enhanced status code, in RFC 5248's registry) */
#define MS_SMTP_NEED_UTF8 "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter of MAIL FROM"
#define MS_TEXT_LINE_MAX 1000     /* RFC 5321 4.5.3.1.6: text line incl. CRLF */
#define MS_PATH_MAX 256           /* RFC 5321 4.5.3.1.3: reverse/forward path */
#define MS_LOCAL_MAX 64           /* RFC 5321 4.5.3.1.1 */
#define MS_DOMAIN_MAX 255         /* RFC 5321 4.5.3.1.2 */
#define MS_ENVID_MAX 100          /* RFC 3461 4.4: the ENVID parameter (xtext) */
#define MS_ORCPT_MAX 500          /* RFC 3461 4.2: the ORCPT parameter (addr-type ";" xtext) */
#define MS_DSN_MAIL_EXTRA 112     /* RFC 3461 4: a MAIL line may be this much longer (RET, ENVID) */
#define MS_DSN_RCPT_EXTRA 500     /* ... and a RCPT line this much (NOTIFY, ORCPT) */
/* File names below the spool or beside the INI file (either at most 1023
 * bytes). Each size leaves room for what the next level adds to a name; a name
 * that does not fit is refused (ms_fmt), never cut. */
#define MS_PATH_DOMAIN 1100       /* a folder in the spool: SPOOL/DOMAIN, .tmp, the queue; a file beside the INI */
#define MS_PATH_MAILBOX 1200      /* a mailbox: SPOOL/DOMAIN/USER (Maildir) or its mbox journal */
#define MS_PATH_FILE 1300         /* a file in those: the mbox, a lock, a queue entry, a Maildir subfolder */
#define MS_PATH_MESSAGE 1400      /* a message in a Maildir subfolder, or a text that names one */
#define MS_POP_ARG_MAX 40         /* popa3d: no POP3 argument is longer */
#define MS_IN_SIZE 4096           /* per-connection input buffer */
#define MS_OUT_HIGH (32 * 1024)   /* above this, no more commands are taken: a client that
                                     never reads its replies only fills its socket */
#define MS_DATA_BUF 16384         /* DATA write buffer, allocated only in DATA */
#define MS_AUTH_DELAY_MS 1000     /* after a failed login; doubles with each recent failure */
#define MS_AUTH_DELAY_MAX_MS 30000 /* ... from the same address, up to this */
#define MS_AUTH_FORGET_S 900      /* an address's failures count for 15 minutes */
#define MS_AUTH_TRACK 256         /* addresses remembered (the oldest is forgotten first) */
#define MS_AUTH_MAX_FAILS 3       /* then the connection is closed */
#define MS_CLIENT_TRACK 256       /* clients (addresses, IPv6 /64s) whose connection rate and
                                     refusals are counted (the least recently seen is forgotten) */
#define MS_RATE_WINDOW_MS 60000   /* max_connect_rate counts per minute (Postfix anvil_rate_time_unit) */
#define MS_REFUSED_LOG_MS 60000   /* one "refused" line per client and minute, then a count */
#define MS_RESERVE_PCT 10         /* of max_clients, kept for relay_networks clients */
#define MS_EVICT_AGE_MS 5000      /* when full, a newcomer closes the oldest session that has not
                                     logged in, is idle between transactions and is older than this */
#define MS_ALIAS_DEPTH 8          /* nested group addresses */
#define MS_RELOAD_CHECK_MS 1000   /* how often the INI file's size, mtime and inode are checked */
#define MS_RELOAD_STABLE_MS 3000  /* a change is loaded once they stay the same this long: a file
                                     still being written (an editor, scp) is never loaded half-way */
#define MS_STOP_GRACE_MS 30000    /* SIGTERM: time given to sessions in flight */
#ifndef MS_PBKDF2_ITER            /* (the fuzz harnesses make logins cheap) */
#define MS_PBKDF2_ITER 10000      /* cost of `mailsrv passwd` hashes, of the INI's plain-text
                                     passwords (hashed at load) and of an unknown name's login */
#endif
#define MS_WORK_SLICE_US 1000     /* long work (logins' hashes, mailbox views, deletions, deliveries
                                     to many mailboxes, the group commit) runs at most this long per
                                     loop turn, over all sessions */
#define MS_PBKDF2_STEP 64         /* PBKDF2 iterations between two looks at the clock (~50 us) */
#define MS_DATA_SYNC_BYTES (1024 * 1024) /* DATA: the file is fsynced every this many bytes, so
                                     that the fsync at the final dot (in the loop's turn) has at most
                                     this much to write: 50 MB at once took 50-60 ms */
#define MS_MAX_LISTENERS 16
#define MS_FD_SPARE 64            /* descriptors kept beyond sessions, listeners and outbound sessions
                                     for the files opened meanwhile: messages being received, mailbox
                                     locks and files, the queue's, group commit folders, the log */
#define MS_ACCEPT_REST_MS 250     /* out of descriptors at accept: the listeners rest this long, or
                                     until a session ends, instead of waking the loop at once */
#define MS_TMP_MAX_AGE (36 * 3600) /* Maildir convention for stale tmp files */
#define MS_TMP_CLEAN_MS (3600 * 1000) /* SPOOL/.tmp is cleaned this often (and at start and reload) */
#define MS_SPACE_RESERVE(max) ((max) / 2 * 3) /* free space MAIL needs: Postfix's queue_minfree floor */
#define MS_DOTLOCK_STALE 300      /* an mbox dotlock older than 5 minutes is stale (liblockfile) */
#define MS_DOTLOCK_MAX_AGE 3600   /* ... and one older than an hour even with a live PID (a reused one) */
#define MS_MBOX_JOURNAL 2560      /* size of an mbox's journal file (fixed: rewritten on a full disk) */
#define MS_MBOX_HEAD 2048         /* first bytes of an append kept in the journal to know it again */
#define MS_MBOX_PREFIX 512        /* first bytes of each message of a batch that the journal keeps */
#define MS_MBOX_MOVE (1024 * 1024) /* largest piece moved at once when deleting from an mbox */
#define MS_MBOX_SCAN (1024 * 1024) /* piece of an mbox read at once by a login or a QUIT (more for a larger message) */
#define MS_MBOX_PROBES 64         /* From_ lines an mbox index checks before it trusts a grown file */
#define MS_MBOX_PROBE_TAIL 4096   /* ... and the first and last bytes of its last message */
#define MS_MBOX_INDEX_MAX (1 << 30) /* a larger index file is not read (damaged): the mbox is scanned */

#define MS_DNS_TRY_MS 2000        /* per DNS query attempt (resolv.conf's timeout is 5 s) */
#define MS_DNS_TRIES 4            /* attempts per query, over the resolvers in turn */
#define MS_DNS_MAX_NS 3           /* resolv.conf: MAXNS */
#define MS_DNS_UDP_MAX 512        /* RFC 1035 4.2.1: without EDNS, larger answers set TC */
#define MS_DNS_RR_MAX 16          /* records kept from one answer */
#define MS_DNS_PTR_MAX 32         /* compression pointers followed in one name */
#define MS_MX_MAX 8               /* MX hosts tried per attempt */
#define MS_RELAY_NETS_MAX 32
#define MS_RETRY_CAP 3600         /* retry back-off cap (issue: doubling, capped at 1 h) */
#define MS_HOPS_MAX 30            /* Received: lines before we call it a loop (RFC 5321 6.3) */
#define MS_QUEUE_CHECK_MS 2000    /* how often QUEUE/flush is looked for */
#define MS_OUT_TX_MAX 100         /* transactions per outbound connection */
#define MS_BDAT_CHUNK 65536       /* outbound BDAT chunk size (RFC 3030): a chunk ends at the first line end past it */

#define MS_TLS_OBUF (4096 + 85)   /* TLS output buffer: records of 4 KB (the input must take 16 KB) */
#define MS_TLS_CACHE (32 * 1024)  /* session resumption cache: about 300 sessions */
#define MS_CERT_NAMES 32          /* gencert: subjectAltName names, and addresses, at most */
#define MS_LISTEN_TLS 0x100       /* listener flag: implicit TLS (RFC 8314) */

#define MS_LIST_TOKEN_LEN 24      /* confirmation codes: 96 random bits in hex */
#define MS_LIST_TOKEN_TTL (7L * 86400)
#define MS_LIST_RESEND 600        /* a repeated request within 10 min sends no new mail */
#define MS_LIST_PENDING_MAX 1000  /* open requests kept per list (then the oldest is evicted) */
#define MS_LIST_REQ_PER_ADDR 10   /* requests (subscribe, unsubscribe, help) an hour from one client
                                     address, an IPv6 /64 as one, across lists: then 450 4.7.1 */
#define MS_LIST_REQ_PER_DOMAIN 20 /* ... for senders of one domain (forged: mail to strangers there) */
#define MS_LIST_REQ_TRACK 1024    /* addresses and domains counted (an idle one is forgotten first) */
#define MS_LIST_NAME_MAX 31       /* NAME-confirm-TOKEN must fit in 64 octets */
#define MS_HEADER_MAX (64 * 1024) /* header block read from a message (lists, bounces) */

#define MS_DEF_RETRY 60
#define MS_DEF_EXPIRE (5L * 86400)
#define MS_DEF_MAX_OUTBOUND 20
#define MS_DEF_MAX_MESSAGE (10L * 1024 * 1024)
#define MS_DEF_MAX_RCPT 100
#define MS_DEF_MAX_CLIENTS 512
#define MS_DEF_MAX_PER_IP 50      /* Postfix's smtpd_client_connection_count_limit */
#define MS_DEF_CONNECT_RATE 60    /* per minute and client; Postfix's smtpd_client_connection_rate_limit */
#define MS_DEF_JUNK_COMMANDS 100  /* Postfix's smtpd_junk_command_limit */
#define MS_DEF_SESSION_TIME 3600  /* max_session_time: then ended between two transactions */
#define MS_DEF_TIMEOUT 300        /* RFC 5321 4.5.3.2: 5 minutes */

#define MS_HTTP_HEAD_MAX 16384    /* a request's head (nginx's large_client_header_buffers: 4 x 8 KB) */
#define MS_HTTP_TARGET_MAX 2048   /* its path and query */
#define MS_HTTP_AUTH_MAX 512      /* its Authorization field (Basic: a 380-byte address and password) */
#define MS_HTTP_FIELDS_MAX 100    /* its header fields (Go's net/http reads up to 1 MB; Mailpit clients send 5-10) */
#define MS_HTTP_ARG_MAX 80        /* an {ID} (72 at most) or {PartID} in a path */
#define MS_HTTP_BODY_MAX (1024 * 1024) /* a request's body (JSON: IDs to delete, a search) */
#define MS_HTTP_ADDRS 100         /* addresses shown of one field */
#define MS_HTTP_TERMS 16          /* terms of one search */
#define MS_HTTP_LIST_MAX 1000     /* messages in one list answer (limit=) */
#define MS_HTTP_FIELDS_SHOWN 1000 /* header fields of a message /headers shows */
#define MS_HTTP_HEAD_ONLY 0       /* http_read_msg: the header block only */
#define MS_HTTP_SUMMARY_READ (256 * 1024) /* of each message listed or searched (the snippet, the parts) */
#define MS_HTTP_MSG_MAX (64L * 1024 * 1024) /* of a message shown whole (max_message_size is at most ...) */
#define MS_HTTP_LOGINS 64         /* Basic logins remembered, so that a client's next request is not hashed again */
#define MS_HTTP_LOGIN_TTL_MS 300000 /* ... for 5 minutes (Dovecot's auth_cache_ttl is 1 hour) */
#define MS_JSON_DEPTH 32
#define MS_JSON_TOKENS 100000

/* Mailpit's chaos triggers (the HTTP API sets them): SMTP answers MAIL, RCPT or AUTH with an
 * error, with a probability, so that applications can test their retries. */
enum { CHAOS_SENDER, CHAOS_RCPT, CHAOS_AUTH, CHAOS_N };

/* The protocols a listener speaks; SMTP, submission and LMTP share one session code. */
enum proto { PROTO_SMTP, PROTO_SUBMISSION, PROTO_POP3, PROTO_HTTP, PROTO_LMTP, PROTO_N };
static const char *const proto_names[] = {"smtp", "submission", "pop3", "http", "lmtp"};

/* The moments every session shares, which each protocol answers in its own
 * words (struct proto_ops' say[]). */
enum conn_say {
    SAY_LINE_TOO_LONG, SAY_JUNK, SAY_SESSION_OVER, SAY_EVICTED, SAY_TIMEOUT, SAY_SHUTDOWN,
    SAY_LOGIN_FAILED, SAY_LOGIN_CLOSING,           /* a failed login; the last one allowed */
    SAY_TLS_GO, SAY_TLS_ACTIVE, SAY_TLS_UNAVAILABLE, /* STARTTLS / STLS */
    SAY_BUSY, SAY_RATE, /* at accept, before there is a session (no host name) */
    SAY_N
};

/*==== 3. Platform layer ====*/
/*
 * The only section that may mention _WIN32, Winsock or a POSIX-only call:
 * sockets, poll, files, locks, directories, signals, time and random. The
 * rest of the file calls the os_ and net_ functions below. POSIX.1-2008
 * (Linux, BSD, macOS, musl) first, then Windows (mingw-w64, WSAPoll).
 * Paths use '/' everywhere: Windows accepts it.
 */

/* Fault injection (test builds): MAILSRV_FAULT=OP:N makes the Nth call of
 * OP fail, OP:N+ every call from the Nth on (a full disk stays full). */
enum { F_WRITE, F_FSYNC, F_RENAME, F_LINK, F_MALLOC, F_RANDOM, F_NOPS };
#if MAILSRV_FAULTS
static int
fault(int op)
{
    static const char *const names[] = {"write", "fsync", "rename", "link", "malloc", "random"};
    static long count[F_NOPS], at = -1;
    static int which = -1, from_on;
    if (at < 0) {
        const char *v = getenv("MAILSRV_FAULT"), *colon = v ? strchr(v, ':') : NULL;
        char *end;
        at = 0;
        for (which = 0; colon && which < F_NOPS; which++)
            if (strlen(names[which]) == (size_t)(colon - v) && strncmp(v, names[which], (size_t)(colon - v)) == 0) break;
        if (colon && which < F_NOPS && (at = strtol(colon + 1, &end, 10)) > 0) from_on = *end == '+';
    }
    if (op != which || at <= 0 || (++count[op] != at && !(from_on && count[op] > at))) return 0;
    fprintf(stderr, "FAULT: %s call %ld fails\n", names[op], count[op]);
    errno = op == F_WRITE ? ENOSPC : EIO;
    return 1;
}
#define FAULT(op) fault(op)
#else
#define FAULT(op) 0
#endif

/* What os_lstat_kind() finds at a path, without following a link: a plain
 * file, a folder, a symbolic link (on Windows a reparse point: a link or a
 * junction), anything else (a FIFO, a socket, a device), or nothing. */
enum { OS_MISSING, OS_DIR, OS_FILE, OS_LINK, OS_OTHER };

#ifndef _WIN32 /* ---------------- POSIX ---------------- */

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

typedef int ms_sock_t;
#define MS_AF_LOCAL AF_UNIX /* listeners on a Unix socket path (lmtp) */
#define MS_BAD_SOCK (-1)
#define MS_MAILDIR_INFO ':'
#define MS_DIR_MTIMES 1 /* POSIX: link(), rename() and unlink() update the folder's mtime */
#define MS_UTF8_NAMES 1 /* file names are bytes: a UTF-8 mailbox name is its folder's name */
typedef struct pollfd ms_pollfd;

static int64_t
os_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
os_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
os_wallclock(int64_t *sec, long *usec)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *sec = (int64_t)ts.tv_sec;
    *usec = ts.tv_nsec / 1000;
}

#if MAILSRV_ENABLE_HTTP
/* A number for the day of the local calendar at sec: it changes at local midnight (the status
 * page's messages today; HTTP only, as static musl's localtime_r brings 8 KB of time zone code). */
static long
os_local_day(int64_t sec)
{
    time_t t = (time_t)sec;
    struct tm tm;
    if (!localtime_r(&t, &tm)) return (long)(sec / 86400);
    return (long)tm.tm_year * 400 + tm.tm_yday;
}
#endif

static unsigned long
os_pid(void)
{
    static unsigned long pid;
    if (!pid) pid = (unsigned long)getpid();
    return pid;
}
/* Is that process running (mbox dotlocks hold their maker's PID)? */
static int os_pid_alive(unsigned long pid) { return kill((pid_t)pid, 0) == 0 || errno == EPERM; }

/* getentropy(): the system's generator without a descriptor or a file, so it works with every
 * descriptor in use and in a chroot without /dev. Not in POSIX.1-2008 (it is in POSIX.1-2024):
 * glibc >= 2.25 and musl >= 1.1.20 declare it in <unistd.h> only with _DEFAULT_SOURCE, macOS
 * >= 10.12 in <sys/random.h>, so it is declared here, as setgroups is below. Older systems:
 * -DMS_HAVE_GETENTROPY=0, and /dev/urandom alone. */
#ifndef MS_HAVE_GETENTROPY
#if defined(__GLIBC__) && (__GLIBC__ < 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ < 25))
#define MS_HAVE_GETENTROPY 0
#else
#define MS_HAVE_GETENTROPY 1
#endif
#endif
#if MS_HAVE_GETENTROPY
int getentropy(void *buf, size_t n);
#endif

/* Fills buf from the system's generator: getentropy, else (a kernel without it: Linux before
 * 3.17 answers ENOSYS) /dev/urandom. Returns -1 if it could not. */
static int
os_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    size_t got = 0;
    int fd;
#if MS_HAVE_GETENTROPY
    while (got < n) {
        size_t k = n - got < 256 ? n - got : 256; /* its limit per call */
        if (getentropy(p + got, k) != 0) break;
        got += k;
    }
    if (got == n) return 0;
    got = 0;
#endif
    if ((fd = open("/dev/urandom", O_RDONLY)) < 0) return -1;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    return got == n ? 0 : -1;
}

static int net_error(void) { return errno; }
static int net_would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }
static const char *net_strerror(int e) { return strerror(e); }
static int net_addr_in_use(int e) { return e == EADDRINUSE; }
/* With SO_REUSEADDR, "in use" means another program has the port: no waiting. */
#define MS_BIND_WAIT_S 0
/* The queue of connections not yet accepted: the kernel caps it at its own maximum
 * (net.core.somaxconn, kern.ipc.somaxconn), but a C library's SOMAXCONN may be lower (musl: 128),
 * and a burst of clients past it waits for SYN retries, seconds each. */
#define MS_LISTEN_BACKLOG 4096
static void net_close(ms_sock_t s) { close(s); }
static long net_recv(ms_sock_t s, void *buf, size_t n) { return (long)recv(s, buf, n, 0); }
static long net_send(ms_sock_t s, const void *buf, size_t n) { return (long)send(s, buf, n, 0); }
static int os_poll(ms_pollfd *fds, int n, int timeout_ms) { return poll(fds, (nfds_t)n, timeout_ms); }
static void os_sleep_ms(int ms) { poll(NULL, 0, ms); }

static int net_in_progress(int e) { return e == EINPROGRESS || e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }
/* accept() failed for want of a descriptor or of kernel memory: the client stays in the backlog,
 * and the listener stays readable until something is freed. */
static int net_out_of_descriptors(int e) { return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM; }

/* Raises the soft limit on descriptors (ulimit -n) towards want, never past the hard limit: any
 * process may do that, while raising the hard limit is the service manager's business (systemd's
 * LimitNOFILE=, ulimit -Hn). Never lowers it. Returns the soft limit now in force and sets *before
 * to the one found (LONG_MAX: none; -1: it cannot be read). */
static long
os_raise_fd_limit(long want, long *before)
{
    struct rlimit rl, up;
    int ok;
    *before = -1;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    *before = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)LONG_MAX ? LONG_MAX : (long)rl.rlim_cur;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)want) {
        up = rl;
        up.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < (rlim_t)want ? rl.rlim_max : (rlim_t)want;
        ok = setrlimit(RLIMIT_NOFILE, &up) == 0;
#ifdef OPEN_MAX /* macOS refuses a soft limit over OPEN_MAX, even under an unlimited hard limit */
        if (!ok && up.rlim_cur > OPEN_MAX && rl.rlim_cur < OPEN_MAX) {
            up.rlim_cur = OPEN_MAX;
            ok = setrlimit(RLIMIT_NOFILE, &up) == 0;
        }
#endif
        if (ok) rl.rlim_cur = up.rlim_cur;
    }
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)LONG_MAX ? LONG_MAX : (long)rl.rlim_cur;
}

/* The outcome of a non-blocking connect(), once the socket is writable. */
static int
net_sock_error(ms_sock_t s)
{
    int e = 0;
    socklen_t len = sizeof e;
    if (getsockopt(s, SOL_SOCKET, SO_ERROR, (void *)&e, &len) != 0) return errno;
    return e;
}

/* The system's resolvers: "nameserver" lines of /etc/resolv.conf. */
static int
os_dns_servers(char (*out)[64], int max)
{
    char line[256], *p;
    int n = 0;
    FILE *f = fopen("/etc/resolv.conf", "r");
    if (!f) return 0;
    while (n < max && fgets(line, sizeof line, f)) {
        size_t len;
        for (p = line; *p == ' ' || *p == '\t'; p++) {}
        if (strncmp(p, "nameserver", 10) != 0 || (p[10] != ' ' && p[10] != '\t')) continue;
        for (p += 10; *p == ' ' || *p == '\t'; p++) {}
        if ((len = strcspn(p, " \t\r\n#;")) > 0) snprintf(out[n++], 64, "%.*s", (int)len, p);
    }
    fclose(f);
    return n;
}

#if MAILSRV_ENABLE_TLS /* for gencert only */
/* This machine's name, "" if it has none. */
static void
os_machine_name(char *out, size_t n)
{
    if (gethostname(out, n) != 0) out[0] = 0;
    out[n - 1] = 0;
}

/* This machine's own addresses (text), for gencert: getifaddrs, not POSIX but in Linux (glibc,
 * musl), the BSDs and macOS, lists what clients connect to; resolving the machine's name would
 * give /etc/hosts' answer instead (127.0.1.1 on Debian). IPv6 link-local ones need a zone: left out. */
static int
os_local_addrs(char (*out)[64], int max)
{
    struct ifaddrs *all, *i;
    int n = 0;
    if (getifaddrs(&all) != 0) return 0;
    for (i = all; i && n < max; i = i->ifa_next) {
        const struct sockaddr *sa = i->ifa_addr;
        if (!sa) continue;
        if (sa->sa_family == AF_INET) {
            if (inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out[n], 64)) n++;
        } else if (sa->sa_family == AF_INET6) {
            const unsigned char *b = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
            if (!(b[0] == 0xfe && (b[1] & 0xc0) == 0x80) && inet_ntop(AF_INET6, b, out[n], 64)) n++;
        }
    }
    freeifaddrs(all);
    return n;
}
#endif

static int
net_set_nonblock(ms_sock_t s)
{
    int fl = fcntl(s, F_GETFL, 0);
    if (fl < 0 || fcntl(s, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    fcntl(s, F_SETFD, FD_CLOEXEC);
    return 0;
}

static void
net_listen_opts(ms_sock_t s)
{
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, (const void *)&one, sizeof one);
}

/* Files are descriptors. MS_O_NOFOLLOW: open fails (ELOOP) on a symbolic link. MS_O_NOBLOCK:
 * a FIFO put in a file's place opens and is read or written without waiting for a peer (on a
 * plain file it changes nothing). */
#define MS_O_NOFOLLOW O_NOFOLLOW
#define MS_O_NOBLOCK O_NONBLOCK
#define MS_O_LINKS 0 /* POSIX removes any link of an open file */
static int os_open(const char *path, int flags, int mode) { return open(path, flags, (mode_t)mode); }
static int os_close(int fd) { return close(fd); }
static long os_pread(int fd, void *buf, size_t n, int64_t off) { return (long)pread(fd, buf, n, (off_t)off); }
static long os_pwrite(int fd, const void *buf, size_t n, int64_t off) { return (long)pwrite(fd, buf, n, (off_t)off); }
static long os_write(int fd, const void *buf, size_t n) { return (long)write(fd, buf, n); }
static long os_read(int fd, void *buf, size_t n) { return (long)read(fd, buf, n); }
static int os_fsync(int fd) { return FAULT(F_FSYNC) ? -1 : fsync(fd); }
static int os_truncate(int fd, int64_t len) { return ftruncate(fd, (off_t)len); }
static int os_mkdir(const char *p) { return mkdir(p, 0700); }
static int os_link(const char *from, const char *to) { return FAULT(F_LINK) ? -1 : link(from, to); }
static int os_unlink(const char *p) { return unlink(p); }
static int os_replace(const char *from, const char *to) { return FAULT(F_RENAME) ? -1 : rename(from, to); }

/* fsync a directory so that entries created or removed in it are durable. */
static int
os_fsync_dir(const char *path)
{
    int r, fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    r = FAULT(F_FSYNC) ? -1 : fsync(fd);
    close(fd);
    return r;
}

struct os_stat { int64_t size, mtime; long mtime_ns; uint64_t ino; int mode; }; /* mtime_ns: 0 where unknown */
static void
os_fill_stat(const struct stat *sb, struct os_stat *st)
{
    st->size = (int64_t)sb->st_size;
    st->mtime = (int64_t)sb->st_mtime;
    st->mtime_ns = (long)sb->st_mtim.tv_nsec; /* POSIX.1-2008 */
    st->ino = (uint64_t)sb->st_ino;
    st->mode = (int)(sb->st_mode & 07777);
}
static int
os_stat(const char *path, struct os_stat *st)
{
    struct stat sb;
    if (stat(path, &sb) != 0) return -1;
    os_fill_stat(&sb, st);
    return 0;
}
/* st->ino identifies the file: it changes when another file is renamed over the name. */
static int
os_fstat(int fd, struct os_stat *st)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0) return -1;
    os_fill_stat(&sb, st);
    return 0;
}

/* What a path itself is (OS_*, above); -1 if it cannot be told. */
static int
os_lstat_kind(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0) return errno == ENOENT ? OS_MISSING : -1;
    return S_ISLNK(sb.st_mode) ? OS_LINK : S_ISDIR(sb.st_mode) ? OS_DIR : S_ISREG(sb.st_mode) ? OS_FILE : OS_OTHER;
}

/* Bytes free for an unprivileged writer on path's file system; -1 if unknown. */
static int64_t
os_free_space(const char *path)
{
    struct statvfs sv;
    if (statvfs(path, &sv) != 0) return -1;
    return (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
}

/* mbox locking: a non-blocking whole-file write lock (fcntl, as mutt and
 * procmail use); mailsrv never waits for a lock held by another program. */
static int
os_lock(int fd, int lock)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = lock ? F_WRLCK : F_UNLCK;
    fl.l_whence = SEEK_SET;
    return fcntl(fd, F_SETLK, &fl);
}

/* A folder read one entry at a time (os_list_dir, or a Maildir listed in
 * slices): every name not starting with '.', then NULL. */
static void *os_dir_open(const char *path) { return opendir(path); }
static void os_dir_close(void *dir) { closedir(dir); }
static const char *
os_dir_next(void *dir)
{
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.') return e->d_name;
    return NULL;
}

static int os_path_is_absolute(const char *p) { return p[0] == '/'; }
static const char *os_last_sep(const char *p) { return strrchr(p, '/'); }

/* main's arguments are bytes already: UTF-8 where the names are. */
static void os_args_utf8(int *argc, char ***argv) { (void)argc; (void)argv; }

/* Signals only set flags; the loop acts on them. */
static struct mailsrv *os_signal_target;
static void os_on_stop(int sig) { (void)sig; if (os_signal_target) mailsrv_stop(os_signal_target); }
static void os_on_hup(int sig) { (void)sig; if (os_signal_target) mailsrv_request_reload(os_signal_target); }
static void
os_install_signals(struct mailsrv *ms)
{
    struct sigaction sa;
    os_signal_target = ms;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = os_on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = os_on_hup;
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN; /* a closed peer must not kill the server (no portable send flag) */
    sigaction(SIGPIPE, &sa, NULL);
}

static int os_net_start(void) { return 0; }
static void os_net_stop(void) {}

/* Services: here the system's own service manager starts mailsrv (packaging/mailsrv.service for
 * systemd); only on Windows does mailsrv register itself (`mailsrv service install`). */
static int
os_service_install(const char *ini, char *err, size_t n)
{
    (void)ini;
    snprintf(err, n, "`service` is for Windows; with systemd, install packaging/mailsrv.service (see README)");
    return -1;
}
static int os_service_remove(char *err, size_t n) { return os_service_install(NULL, err, n); }
static int os_service_dispatch(int (*serve)(void)) { return serve(); }
static void os_service_running(void) {}

/* `checkpassword`: NAME=VALUE into the environment, then the program argv[0] (looked up in PATH)
 * in place of this process; returns only if that failed. */
static int os_setenv(const char *name, const char *value) { return setenv(name, value, 1); }
static int os_exec(char **argv) { return execvp(argv[0], argv); }

/* Not in POSIX, but in every Unix; strict POSIX headers hide it. */
int setgroups(size_t n, const gid_t *groups);

static int os_is_root(void) { return geteuid() == 0; }

/* Gives the folder `name` (in the folder at, or AT_FDCWD) to uid/gid through
 * a descriptor opened without following a link: whoever owns the account
 * may have replaced it with a link to /etc/shadow or another folder. */
static int
os_give_dir(int at, const char *name, const char *path, uid_t uid, gid_t gid, const char *user, char *err, size_t n,
            int *fd_out)
{
    struct stat sb;
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISDIR(sb.st_mode) || fchown(fd, uid, gid) != 0) {
        int e = errno;
        struct stat lsb;
        if (fd < 0 && lstat(path, &lsb) == 0 && S_ISLNK(lsb.st_mode))
            snprintf(err, n, "%s is a symbolic link: refusing to give it to %s (name the real folder in the INI)", path, user);
        else
            snprintf(err, n, "cannot give %s to %s: %s", path, user, strerror(e));
        if (fd >= 0) close(fd);
        return -1;
    }
    if (fd_out) *fd_out = fd;
    else close(fd);
    return 0;
}

/* Becomes `user` for good, once the ports are bound; first gives it the
 * folders it must write in (as Dovecot does with its own): spool, spool/sub
 * and queue, none of them through a symbolic link. */
static int
os_drop_root(const char *user, const char *spool, const char *sub, const char *subpath, const char *queue, char *err,
             size_t n)
{
    struct passwd *pw = getpwnam(user);
    uid_t uid;
    gid_t gid;
    int sfd, r;
    if (!pw) { snprintf(err, n, "user = %s: no such user", user); return -1; }
    uid = pw->pw_uid;
    gid = pw->pw_gid;
    if (uid == 0) { snprintf(err, n, "user = %s: that is root", user); return -1; }
    if (os_give_dir(AT_FDCWD, spool, spool, uid, gid, user, err, n, &sfd) != 0) return -1;
    r = os_give_dir(sfd, sub, subpath, uid, gid, user, err, n, NULL); /* relative to the spool opened above */
    close(sfd);
    if (r != 0 || os_give_dir(AT_FDCWD, queue, queue, uid, gid, user, err, n, NULL) != 0) return -1;
    if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
        snprintf(err, n, "cannot become %s: %s", user, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) { snprintf(err, n, "root came back after becoming %s", user); return -1; }
    return 0;
}

/* A listener on a Unix socket path (lmtp = /path). What is at the path is
 * looked at without following a link: a socket no server answers on (left
 * by an earlier run) is removed; a live one is EADDRINUSE; anything else (a
 * link, a file) is never removed: EEXIST. The socket is made srw-rw-rw-, as
 * Dovecot's lmtp listeners commonly are: who may connect is decided by the
 * folder it is put in (a client needs search rights there). */
static ms_sock_t
net_listen_unix(const char *path, int *err)
{
    struct sockaddr_un sa;
    struct stat sb;
    size_t len = strlen(path);
    mode_t old;
    ms_sock_t s;
    int r;
    memset(&sa, 0, sizeof sa);
    if (len >= sizeof sa.sun_path) { *err = ENAMETOOLONG; return MS_BAD_SOCK; }
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, len + 1);
    if (lstat(path, &sb) == 0) {
        if (!S_ISSOCK(sb.st_mode)) { *err = EEXIST; return MS_BAD_SOCK; }
        if ((s = socket(AF_UNIX, SOCK_STREAM, 0)) < 0) { *err = errno; return MS_BAD_SOCK; }
        r = connect(s, (struct sockaddr *)&sa, sizeof sa);
        close(s);
        if (r == 0) { *err = EADDRINUSE; return MS_BAD_SOCK; }
        if (unlink(path) != 0) { *err = errno; return MS_BAD_SOCK; }
    } else if (errno != ENOENT) {
        *err = errno;
        return MS_BAD_SOCK;
    }
    if ((s = socket(AF_UNIX, SOCK_STREAM, 0)) < 0) { *err = errno; return MS_BAD_SOCK; }
    old = umask(0111); /* single-threaded: no other file is made meanwhile */
    r = bind(s, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (r != 0 || listen(s, MS_LISTEN_BACKLOG) != 0 || net_set_nonblock(s) != 0) {
        *err = errno;
        close(s);
        return MS_BAD_SOCK;
    }
    return s;
}

#else /* ---------------- Windows (mingw-w64; WSAPoll needs Vista) ---------------- */

#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <iphlpapi.h>
#include <direct.h>
#include <fcntl.h>
#include <io.h>
#include <process.h>
#include <signal.h>
#include <sys/stat.h>

typedef SOCKET ms_sock_t;
#define MS_BAD_SOCK INVALID_SOCKET
#define MS_AF_LOCAL (-1) /* no Unix socket listeners: the INI refuses a path for lmtp */
#define MS_MAILDIR_INFO '!' /* ':' would name an NTFS alternate data stream */
#define MS_DIR_MTIMES 0 /* FAT and exFAT never update a folder's mtime: a Maildir is always listed */
#define MS_UTF8_NAMES 1 /* file names go through the wide API as UTF-8 (os_wide) */
typedef WSAPOLLFD ms_pollfd;

static int64_t os_now_ms(void) { return (int64_t)GetTickCount64(); }
static int64_t
os_now_us(void)
{
    LARGE_INTEGER t, f;
    QueryPerformanceCounter(&t);
    QueryPerformanceFrequency(&f);
    return (int64_t)(t.QuadPart / f.QuadPart * 1000000 + t.QuadPart % f.QuadPart * 1000000 / f.QuadPart);
}

static void
os_wallclock(int64_t *sec, long *usec)
{
    FILETIME ft;
    uint64_t t;
    GetSystemTimeAsFileTime(&ft);
    t = ((uint64_t)ft.dwHighDateTime << 32 | ft.dwLowDateTime) / 10 - 11644473600000000ULL;
    *sec = (int64_t)(t / 1000000);
    *usec = (long)(t % 1000000);
}

#if MAILSRV_ENABLE_HTTP
static long
os_local_day(int64_t sec)
{
    time_t t = (time_t)sec;
    struct tm tm;
    if (localtime_s(&tm, &t) != 0) return (long)(sec / 86400);
    return (long)tm.tm_year * 400 + tm.tm_yday;
}
#endif

static unsigned long os_pid(void) { return (unsigned long)GetCurrentProcessId(); }
/* Is that process running (mbox dotlocks hold their maker's PID)? */
static int
os_pid_alive(unsigned long pid)
{
    HANDLE h = OpenProcess(SYNCHRONIZE, FALSE, (DWORD)pid);
    DWORD r;
    if (!h) return GetLastError() != ERROR_INVALID_PARAMETER;
    r = WaitForSingleObject(h, 0);
    CloseHandle(h);
    return r == WAIT_TIMEOUT;
}

/* RtlGenRandom, exported by advapi32 as SystemFunction036. */
static int
os_random_bytes(void *buf, size_t n)
{
    typedef BOOLEAN (WINAPI *gen_fn)(PVOID, ULONG);
    HMODULE lib = LoadLibraryA("advapi32.dll");
    gen_fn gen = lib ? (gen_fn)(void (*)(void))GetProcAddress(lib, "SystemFunction036") : NULL;
    int ok = gen && gen(buf, (ULONG)n);
    if (lib) FreeLibrary(lib);
    return ok ? 0 : -1;
}

static int net_error(void) { return WSAGetLastError(); }
static int net_would_block(int e) { return e == WSAEWOULDBLOCK || e == WSAEINTR; }
static const char *
net_strerror(int e)
{
    static char msg[256];
    if (!FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, (DWORD)e, 0, msg,
                        sizeof msg, NULL))
        snprintf(msg, sizeof msg, "Winsock error %d", e);
    msg[strcspn(msg, "\r\n")] = 0;
    return msg;
}
static int net_addr_in_use(int e) { return e == WSAEADDRINUSE; }
/* SO_EXCLUSIVEADDRUSE keeps a port busy while connections of a crashed
 * predecessor sit in TIME_WAIT (up to 4 minutes): a restart waits for it. */
#define MS_BIND_WAIT_S 240
#define MS_LISTEN_BACKLOG SOMAXCONN /* Winsock: "a reasonable maximum" */
static void net_close(ms_sock_t s) { closesocket(s); }
static long net_recv(ms_sock_t s, void *buf, size_t n) { return (long)recv(s, buf, (int)n, 0); }
static long net_send(ms_sock_t s, const void *buf, size_t n) { return (long)send(s, buf, (int)n, 0); }
static void os_sleep_ms(int ms) { Sleep((DWORD)ms); }
static int
os_poll(ms_pollfd *fds, int n, int timeout_ms)
{
    if (n == 0) { Sleep((DWORD)timeout_ms); return 0; } /* WSAPoll fails without sockets */
    return WSAPoll(fds, (ULONG)n, timeout_ms);
}

static int net_in_progress(int e) { return e == WSAEWOULDBLOCK || e == WSAEINPROGRESS || e == WSAEINTR; }
static int net_out_of_descriptors(int e) { return e == WSAEMFILE || e == WSAENOBUFS; }
/* Winsock has no per-process limit on sockets like RLIMIT_NOFILE, and WSAPoll none on the size of its
 * set (select()'s FD_SETSIZE is not used): there is nothing to raise. */
static long os_raise_fd_limit(long want, long *before) { (void)want; return *before = LONG_MAX; }
static int
net_sock_error(ms_sock_t s)
{
    int e = 0, len = sizeof e;
    if (getsockopt(s, SOL_SOCKET, SO_ERROR, (char *)&e, &len) != 0) return WSAGetLastError();
    return e;
}

/* The system's resolvers: the DNS servers of the network adapters. */
static int
os_dns_servers(char (*out)[64], int max)
{
    ULONG len = 0;
    FIXED_INFO *fi;
    IP_ADDR_STRING *a;
    int n = 0;
    if (GetNetworkParams(NULL, &len) != ERROR_BUFFER_OVERFLOW || !(fi = malloc(len))) return 0;
    if (GetNetworkParams(fi, &len) == NO_ERROR)
        for (a = &fi->DnsServerList; a && n < max; a = a->Next)
            if (a->IpAddress.String[0]) snprintf(out[n++], 64, "%s", a->IpAddress.String);
    free(fi);
    return n;
}

#if MAILSRV_ENABLE_TLS /* for gencert only */
static void
os_machine_name(char *out, size_t n)
{
    DWORD len = (DWORD)n;
    if (!GetComputerNameExA(ComputerNameDnsHostname, out, &len)) out[0] = 0;
    out[n - 1] = 0;
}

/* This machine's own addresses (text), for gencert; IPv6 link-local ones need a zone: left out. */
static int
os_local_addrs(char (*out)[64], int max)
{
    ULONG len = 16384;
    IP_ADAPTER_ADDRESSES *all = NULL, *a;
    IP_ADAPTER_UNICAST_ADDRESS *u;
    int n = 0, tries;
    for (tries = 0; tries < 3; tries++) {
        ULONG r;
        free(all);
        if (!(all = malloc(len))) return 0;
        r = GetAdaptersAddresses(AF_UNSPEC, GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER,
                                 NULL, all, &len);
        if (r == NO_ERROR) break;
        if (r != ERROR_BUFFER_OVERFLOW) tries = 3;
    }
    for (a = tries < 3 ? all : NULL; a && n < max; a = a->Next)
        for (u = a->FirstUnicastAddress; u && n < max; u = u->Next) {
            const struct sockaddr *sa = u->Address.lpSockaddr;
            if (sa->sa_family == AF_INET) {
                if (inet_ntop(AF_INET, (void *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr, out[n], 64)) n++;
            } else if (sa->sa_family == AF_INET6) {
                const unsigned char *b = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
                if (!(b[0] == 0xfe && (b[1] & 0xc0) == 0x80) && inet_ntop(AF_INET6, (void *)b, out[n], 64)) n++;
            }
        }
    free(all);
    return n;
}
#endif

static int
net_set_nonblock(ms_sock_t s)
{
    u_long one = 1;
    return ioctlsocket(s, FIONBIO, &one) == 0 ? 0 : -1;
}

static void
net_listen_opts(ms_sock_t s)
{
    BOOL one = TRUE; /* SO_REUSEADDR would let another process steal the port */
    setsockopt(s, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, (const char *)&one, sizeof one);
}

/* Files: CRT descriptors in binary mode; durability through _commit
 * (FlushFileBuffers). Names are UTF-8 in mailsrv (mailbox names may be:
 * MS_UTF8_NAMES; the command line is made UTF-8: os_args_utf8) and go to the
 * wide ("W") API; one that is not UTF-8 is read in the ANSI code page. */
#define MS_O_NOFOLLOW 0 /* os_lstat_kind() tells links (reparse points) */
#define MS_O_NOBLOCK 0  /* no FIFOs among files */
/* MS_O_LINKS (with O_RDWR | O_CREAT | O_EXCL only): a file that gets hard links (a message in
 * SPOOL/.tmp and its Maildir copies), opened with FILE_SHARE_DELETE: without it Windows refuses
 * to remove any of its links while it is open, and a delivery taken back (store_rollback) before
 * the file is closed left its copies in place. */
#define MS_O_LINKS 0x40000000
static int os_open(const char *path, int flags, int mode);
#define MS_WPATH MS_PATH_MESSAGE /* wide characters: no name mailsrv makes is longer in bytes */
static wchar_t *
os_wide(const char *path, wchar_t *w)
{
    if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, w, MS_WPATH) > 0 ||
        MultiByteToWideChar(CP_ACP, 0, path, -1, w, MS_WPATH) > 0)
        return w;
    errno = ENAMETOOLONG;
    return NULL;
}
static int os_close(int fd) { return _close(fd); }
static long os_write(int fd, const void *buf, size_t n) { return (long)_write(fd, buf, (unsigned)n); }
static long os_read(int fd, void *buf, size_t n) { return (long)_read(fd, buf, (unsigned)n); }
/* One thread uses each descriptor, so seek + read is as good as pread. */
static long
os_pread(int fd, void *buf, size_t n, int64_t off)
{
    if (_lseeki64(fd, off, SEEK_SET) < 0) return -1;
    return (long)_read(fd, buf, (unsigned)n);
}
static long
os_pwrite(int fd, const void *buf, size_t n, int64_t off)
{
    if (_lseeki64(fd, off, SEEK_SET) < 0) return -1;
    return (long)_write(fd, buf, (unsigned)n);
}
static int os_fsync(int fd) { return _commit(fd); }
static int os_truncate(int fd, int64_t len) { return _chsize_s(fd, len) == 0 ? 0 : -1; }
static int os_mkdir(const char *p) { wchar_t w[MS_WPATH]; return os_wide(p, w) ? _wmkdir(w) : -1; }
static int os_unlink(const char *p) { wchar_t w[MS_WPATH]; return os_wide(p, w) ? _wunlink(w) : -1; }

static void
os_set_errno(void)
{
    DWORD e = GetLastError();
    errno = (e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND) ? ENOENT
          : (e == ERROR_ALREADY_EXISTS || e == ERROR_FILE_EXISTS) ? EEXIST
          : (e == ERROR_SHARING_VIOLATION || e == ERROR_LOCK_VIOLATION) ? EAGAIN : EIO;
}
static int
os_open(const char *path, int flags, int mode)
{
    HANDLE h;
    int fd;
    wchar_t w[MS_WPATH];
    if (!os_wide(path, w)) return -1;
    if (!(flags & MS_O_LINKS)) return _wopen(w, flags | _O_BINARY | _O_NOINHERIT, mode);
    h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                    CREATE_NEW, FILE_ATTRIBUTE_NORMAL, NULL); /* not inherited: no security attributes */
    if (h == INVALID_HANDLE_VALUE) { os_set_errno(); return -1; }
    if ((fd = _open_osfhandle((intptr_t)h, _O_RDWR | _O_BINARY)) < 0) CloseHandle(h);
    return fd;
}
static int
os_link(const char *from, const char *to)
{
    wchar_t wf[MS_WPATH], wt[MS_WPATH];
    if (!os_wide(from, wf) || !os_wide(to, wt)) return -1;
    if (CreateHardLinkW(wt, wf, NULL)) return 0;
    os_set_errno();
    return -1;
}
/* rename() does not replace an existing file on Windows. */
static int
os_replace(const char *from, const char *to)
{
    wchar_t wf[MS_WPATH], wt[MS_WPATH];
    if (!os_wide(from, wf) || !os_wide(to, wt)) return -1;
    if (MoveFileExW(wf, wt, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) return 0;
    os_set_errno();
    return -1;
}
/* NTFS journals directory changes itself; a directory cannot be flushed. */
static int os_fsync_dir(const char *path) { (void)path; return 0; }

struct os_stat { int64_t size, mtime; long mtime_ns; uint64_t ino; int mode; }; /* mtime_ns: 0 where unknown */
static int
os_stat(const char *path, struct os_stat *st)
{
    struct _stati64 sb;
    wchar_t w[MS_WPATH];
    if (!os_wide(path, w) || _wstati64(w, &sb) != 0) return -1;
    st->size = (int64_t)sb.st_size;
    st->mtime = (int64_t)sb.st_mtime;
    st->mtime_ns = 0;
    st->ino = 0;
    st->mode = 0600;
    return 0;
}
/* The file index plays the inode's part. */
static int
os_fstat(int fd, struct os_stat *st)
{
    BY_HANDLE_FILE_INFORMATION fi;
    HANDLE h = (HANDLE)_get_osfhandle(fd);
    if (h == INVALID_HANDLE_VALUE || !GetFileInformationByHandle(h, &fi)) return -1;
    st->size = (int64_t)((uint64_t)fi.nFileSizeHigh << 32 | fi.nFileSizeLow);
    /* 100 ns since 1601 to seconds since 1970 (an mbox dotlock's age is judged by it) */
    st->mtime = (int64_t)(((uint64_t)fi.ftLastWriteTime.dwHighDateTime << 32 | fi.ftLastWriteTime.dwLowDateTime) /
                          10000000 - 11644473600ULL);
    st->mtime_ns = (long)(((uint64_t)fi.ftLastWriteTime.dwHighDateTime << 32 | fi.ftLastWriteTime.dwLowDateTime) %
                          10000000 * 100);
    st->ino = (uint64_t)fi.nFileIndexHigh << 32 | fi.nFileIndexLow;
    st->mode = 0600;
    return 0;
}

/* A symbolic link or junction is a reparse point. */
static int
os_lstat_kind(const char *path)
{
    wchar_t w[MS_WPATH];
    DWORD a = os_wide(path, w) ? GetFileAttributesW(w) : INVALID_FILE_ATTRIBUTES;
    if (a == INVALID_FILE_ATTRIBUTES) {
        DWORD e = GetLastError();
        return e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND ? OS_MISSING : -1;
    }
    return (a & FILE_ATTRIBUTE_REPARSE_POINT) ? OS_LINK : (a & FILE_ATTRIBUTE_DIRECTORY) ? OS_DIR : OS_FILE;
}

static int64_t
os_free_space(const char *path)
{
    ULARGE_INTEGER avail;
    wchar_t w[MS_WPATH];
    if (!os_wide(path, w) || !GetDiskFreeSpaceExW(w, &avail, NULL, NULL)) return -1;
    return (int64_t)avail.QuadPart;
}

static int
os_lock(int fd, int lock)
{
    OVERLAPPED ov;
    HANDLE h = (HANDLE)_get_osfhandle(fd);
    memset(&ov, 0, sizeof ov);
    if (lock) return LockFileEx(h, LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY, 0, MAXDWORD, MAXDWORD, &ov) ? 0 : -1;
    return UnlockFileEx(h, 0, MAXDWORD, MAXDWORD, &ov) ? 0 : -1;
}

/* Entries come back as UTF-8 (name: MAX_PATH UTF-16 units, 3 bytes each at most). */
struct os_dir { HANDLE h; WIN32_FIND_DATAW found; int unread; char name[MAX_PATH * 3 + 1]; };
static void *
os_dir_open(const char *path)
{
    char pattern[MS_PATH_MESSAGE];
    wchar_t w[MS_WPATH];
    struct os_dir *d;
    if (snprintf(pattern, sizeof pattern, "%s/*", path) >= (int)sizeof pattern || !os_wide(pattern, w) ||
        !(d = malloc(sizeof *d)))
        return NULL;
    d->h = FindFirstFileW(w, &d->found);
    if (d->h == INVALID_HANDLE_VALUE) { free(d); return NULL; }
    d->unread = 1; /* FindFirstFile has read the first entry */
    return d;
}
static void os_dir_close(void *dir) { struct os_dir *d = dir; FindClose(d->h); free(d); }
static const char *
os_dir_next(void *dir)
{
    struct os_dir *d = dir;
    for (;;) {
        if (d->unread) d->unread = 0;
        else if (!FindNextFileW(d->h, &d->found)) return NULL;
        if (d->found.cFileName[0] != L'.' &&
            WideCharToMultiByte(CP_UTF8, 0, d->found.cFileName, -1, d->name, (int)sizeof d->name, NULL, NULL) > 0)
            return d->name;
    }
}

static int
os_path_is_absolute(const char *p)
{
    return p[0] == '/' || p[0] == '\\' || (isalpha((unsigned char)p[0]) && p[1] == ':');
}
static const char *
os_last_sep(const char *p)
{
    const char *a = strrchr(p, '/'), *b = strrchr(p, '\\');
    return a > b ? a : b;
}

/* main's arguments come in the ANSI code page, which cannot hold every name
 * (иван@школа.test): the command line again, as UTF-8 (shell32's splitting,
 * the CRT's rules). Left as they are if that fails. Kept for the process's life, and
 * shell32 stays loaded. */
static void
os_args_utf8(int *argc, char ***argv)
{
    typedef LPWSTR *(WINAPI *split_fn)(LPCWSTR, int *);
    HMODULE lib = LoadLibraryA("shell32.dll");
    split_fn split = lib ? (split_fn)(void (*)(void))GetProcAddress(lib, "CommandLineToArgvW") : NULL;
    int i, n = 0, ok;
    LPWSTR *w = split ? split(GetCommandLineW(), &n) : NULL;
    char **v = NULL;
    ok = w != NULL && n == *argc && (v = calloc((size_t)n + 1, sizeof *v)) != NULL;
    for (i = 0; ok && i < n; i++) {
        int k = WideCharToMultiByte(CP_UTF8, 0, w[i], -1, NULL, 0, NULL, NULL);
        ok = k > 0 && (v[i] = malloc((size_t)k)) != NULL && WideCharToMultiByte(CP_UTF8, 0, w[i], -1, v[i], k, NULL, NULL) > 0;
    }
    if (ok) *argv = v; /* else the ANSI ones stay (v's strings are not freed: a failure at start) */
    if (w) LocalFree(w);
}

/* Ctrl+C, Ctrl+Break and console close stop the server cleanly. */
static struct mailsrv *os_signal_target;
static BOOL WINAPI
os_on_console(DWORD ev)
{
    (void)ev;
    if (os_signal_target) mailsrv_stop(os_signal_target);
    return TRUE;
}
static void
os_install_signals(struct mailsrv *ms)
{
    os_signal_target = ms;
    SetConsoleCtrlHandler(os_on_console, TRUE);
}

/* The service manager: `mailsrv service install|remove`, and `--service`, with which it starts
 * mailsrv. It runs ServiceMain (os_svc_main) in a thread of its own while the main thread waits in
 * the dispatcher and calls os_svc_control on a stop: the server still runs in one thread, and the
 * handler only sets its stop flag, as Ctrl+C does. */
static SERVICE_STATUS_HANDLE os_svc_handle;
static SERVICE_STATUS os_svc_status;
static int (*os_svc_serve)(void);
static int os_svc_rc = 1;
static char os_svc_name[] = "mailsrv";

static void
os_svc_report(DWORD state, DWORD exit_code, DWORD wait_ms)
{
    if (!os_svc_handle) return; /* not a service: a console */
    os_svc_status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    os_svc_status.dwCurrentState = state;
    os_svc_status.dwControlsAccepted = state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN : 0;
    os_svc_status.dwWin32ExitCode = exit_code ? ERROR_SERVICE_SPECIFIC_ERROR : NO_ERROR;
    os_svc_status.dwServiceSpecificExitCode = exit_code;
    os_svc_status.dwWaitHint = wait_ms;
    os_svc_status.dwCheckPoint = state == SERVICE_RUNNING || state == SERVICE_STOPPED ? 0 : os_svc_status.dwCheckPoint + 1;
    SetServiceStatus(os_svc_handle, &os_svc_status);
}

static DWORD WINAPI
os_svc_control(DWORD ctl, DWORD type, LPVOID data, LPVOID ctx)
{
    (void)type; (void)data; (void)ctx;
    if (ctl == SERVICE_CONTROL_STOP || ctl == SERVICE_CONTROL_SHUTDOWN) {
        os_svc_report(SERVICE_STOP_PENDING, 0, MS_STOP_GRACE_MS + 5000);
        if (os_signal_target) mailsrv_stop(os_signal_target);
        return NO_ERROR;
    }
    return ctl == SERVICE_CONTROL_INTERROGATE ? NO_ERROR : ERROR_CALL_NOT_IMPLEMENTED;
}

static void WINAPI
os_svc_main(DWORD argc, LPSTR *argv)
{
    (void)argc; (void)argv;
    if (!(os_svc_handle = RegisterServiceCtrlHandlerExA(os_svc_name, os_svc_control, NULL))) return;
    os_svc_report(SERVICE_START_PENDING, 0, 10000);
    os_svc_rc = os_svc_serve();
    os_svc_report(SERVICE_STOPPED, (DWORD)os_svc_rc, 0);
}

static int
os_service_dispatch(int (*serve)(void))
{
    SERVICE_TABLE_ENTRYA table[] = {{os_svc_name, os_svc_main}, {NULL, NULL}};
    os_svc_serve = serve;
    if (!StartServiceCtrlDispatcherA(table)) {
        fprintf(stderr, "mailsrv: --service is for the service manager (%s); in a console, run mailsrv without it\n",
                net_strerror((int)GetLastError()));
        return 1;
    }
    return os_svc_rc;
}

/* Listening: the service manager may say "running". */
static void os_service_running(void) { os_svc_report(SERVICE_RUNNING, 0, 0); }

/* Registers mailsrv as the service "mailsrv", started at boot as LocalSystem with this INI. */
static int
os_service_install(const char *ini, char *err, size_t n)
{
    char exe[MAX_PATH], full[MAX_PATH], cmd[3 * MAX_PATH + 32];
    SC_HANDLE scm, svc;
    DWORD e;
    if (!GetModuleFileNameA(NULL, exe, sizeof exe) || !GetFullPathNameA(ini, sizeof full, full, NULL) ||
        snprintf(cmd, sizeof cmd, "\"%s\" -c \"%s\" --service", exe, full) >= (int)sizeof cmd) {
        snprintf(err, n, "the program's or the INI's path is too long");
        return -1;
    }
    if (!(scm = OpenSCManagerA(NULL, NULL, SC_MANAGER_CREATE_SERVICE))) {
        snprintf(err, n, "cannot open the service manager (run this as Administrator): %s", net_strerror((int)GetLastError()));
        return -1;
    }
    svc = CreateServiceA(scm, os_svc_name, "mailsrv mail server", SERVICE_QUERY_STATUS, SERVICE_WIN32_OWN_PROCESS,
                         SERVICE_AUTO_START, SERVICE_ERROR_NORMAL, cmd, NULL, NULL, NULL, NULL, NULL);
    e = GetLastError();
    if (svc) CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    if (!svc) {
        snprintf(err, n, e == ERROR_SERVICE_EXISTS ? "the service mailsrv exists already (mailsrv service remove first)"
                                                   : "cannot create the service: %s", net_strerror((int)e));
        return -1;
    }
    snprintf(err, n, "%s", cmd);
    return 0;
}

/* Stops the service mailsrv if it runs (as `sc stop` would), then removes it. */
static int
os_service_remove(char *err, size_t n)
{
    SC_HANDLE scm, svc;
    SERVICE_STATUS st;
    int waited, r = 0;
    if (!(scm = OpenSCManagerA(NULL, NULL, SC_MANAGER_CONNECT))) {
        snprintf(err, n, "cannot open the service manager (run this as Administrator): %s", net_strerror((int)GetLastError()));
        return -1;
    }
    if (!(svc = OpenServiceA(scm, os_svc_name, DELETE | SERVICE_STOP | SERVICE_QUERY_STATUS))) {
        snprintf(err, n, "no service mailsrv: %s", net_strerror((int)GetLastError()));
        CloseServiceHandle(scm);
        return -1;
    }
    if (ControlService(svc, SERVICE_CONTROL_STOP, &st))
        for (waited = 0; waited < MS_STOP_GRACE_MS + 5000 && QueryServiceStatus(svc, &st) &&
                         st.dwCurrentState != SERVICE_STOPPED; waited += 100)
            Sleep(100);
    if (!DeleteService(svc)) {
        snprintf(err, n, "cannot remove the service: %s", net_strerror((int)GetLastError()));
        r = -1;
    }
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return r;
}

/* Windows services get their account from the service manager instead. */
static int os_is_root(void) { return 0; }
/* `checkpassword` is the Unix interface of qmail and Dovecot: no descriptor 3, no exec here. */
static int os_setenv(const char *name, const char *value) { return _putenv_s(name, value) == 0 ? 0 : -1; }
static int os_exec(char **argv) { (void)argv; errno = ENOSYS; return -1; }
static int
os_drop_root(const char *user, const char *spool, const char *sub, const char *subpath, const char *queue, char *err,
             size_t n)
{
    (void)user; (void)spool; (void)sub; (void)subpath; (void)queue;
    snprintf(err, n, "user = has no effect on Windows");
    return -1;
}

static int
os_net_start(void)
{
    WSADATA wd;
    return WSAStartup(MAKEWORD(2, 2), &wd) == 0 ? 0 : -1;
}
static void os_net_stop(void) { WSACleanup(); }

static ms_sock_t
net_listen_unix(const char *path, int *err)
{
    (void)path;
    *err = WSAEAFNOSUPPORT;
    return MS_BAD_SOCK;
}

#endif /* ---------------- common to both ---------------- */

/* The system's generator or nothing: 0, or -1 with buf zeroed. There is no fallback (a
 * time+pid generator made guessable list codes, DNS ids and salts): every caller fails
 * closed, and the server does not start without it (mailsrv_listen). */
static int
os_random(void *buf, size_t n)
{
    if (!FAULT(F_RANDOM) && os_random_bytes(buf, n) == 0) return 0;
    memset(buf, 0, n);
    return -1;
}

static long
os_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    size_t done = 0;
    while (done < n) {
        long w = FAULT(F_WRITE) ? -1 : os_write(fd, p + done, n - done);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        done += (size_t)w;
    }
    return (long)done;
}

static long
os_pwrite_all(int fd, const void *buf, size_t n, int64_t off)
{
    const char *p = buf;
    size_t done = 0;
    while (done < n) {
        long w = FAULT(F_WRITE) ? -1 : os_pwrite(fd, p + done, n - done, off + (int64_t)done);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        done += (size_t)w;
    }
    return (long)done;
}

/* A TLS flight is several records, each its own send(): without this,
 * Nagle holds the second one for the peer's delayed ACK (40 ms). */
static void
net_nodelay(ms_sock_t s)
{
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, (const void *)&one, sizeof one);
}

/* A numeric address and port (next hops, resolvers, relay_networks). */
struct ms_addr { int family; unsigned char ip[16]; unsigned port; };

static int
net_addr_parse(const char *s, unsigned port, struct ms_addr *a)
{
    memset(a, 0, sizeof *a);
    a->port = port;
    if (inet_pton(AF_INET, s, a->ip) == 1) a->family = AF_INET;
    else if (inet_pton(AF_INET6, s, a->ip) == 1) a->family = AF_INET6;
    else return -1;
    return 0;
}

static void
net_addr_str(const struct ms_addr *a, char *out, size_t n)
{
    if (!inet_ntop(a->family, a->ip, out, (socklen_t)n)) snprintf(out, n, "?");
}

/* The sockaddr for a; returns its length. */
static socklen_t
net_sockaddr(const struct ms_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (a->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((unsigned short)a->port);
        memcpy(&in->sin_addr, a->ip, 4);
        return sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((unsigned short)a->port);
        memcpy(&in6->sin6_addr, a->ip, 16);
        return sizeof *in6;
    }
}

/* Creates, binds and listens on a numeric address. IPv6 sockets are v6-only
 * so that "0.0.0.0:25" and "[::]:25" are separate listeners everywhere. */
static ms_sock_t
net_listen(int family, const char *addr, unsigned port, int *err)
{
    struct sockaddr_storage ss;
    struct ms_addr a;
    socklen_t len;
    int one = 1;
    ms_sock_t s;
    if (net_addr_parse(addr, port, &a) != 0 || a.family != family) { *err = EINVAL; return MS_BAD_SOCK; }
    len = net_sockaddr(&a, &ss);
    s = socket(family, SOCK_STREAM, 0);
    if (s == MS_BAD_SOCK) { *err = net_error(); return s; }
    net_listen_opts(s);
    if (family == AF_INET6) setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, (const void *)&one, sizeof one);
    if (bind(s, (struct sockaddr *)&ss, len) != 0 || listen(s, MS_LISTEN_BACKLOG) != 0 || net_set_nonblock(s) != 0) {
        *err = net_error();
        net_close(s);
        return MS_BAD_SOCK;
    }
    return s;
}

/* Accepted sockets do not inherit O_NONBLOCK on Linux: set it explicitly. */
static ms_sock_t
net_accept(ms_sock_t ls, char *peer, size_t peerlen, int *is_loopback)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    ms_sock_t s = accept(ls, (struct sockaddr *)&ss, &len);
    *is_loopback = 0;
    if (s == MS_BAD_SOCK) return s;
    if (net_set_nonblock(s) != 0) { net_close(s); return MS_BAD_SOCK; }
    net_nodelay(s);
    peer[0] = 0;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, peer, (socklen_t)peerlen);
        *is_loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        static const unsigned char lo[16] = {0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1};
        static const unsigned char v4[12] = {0,0,0,0,0,0,0,0,0,0,0xff,0xff};
        inet_ntop(AF_INET6, &in6->sin6_addr, peer, (socklen_t)peerlen);
        *is_loopback = memcmp(in6->sin6_addr.s6_addr, lo, 16) == 0 ||
            (memcmp(in6->sin6_addr.s6_addr, v4, 12) == 0 && in6->sin6_addr.s6_addr[12] == 127);
    } else { /* a Unix socket's client (POSIX): a program on this machine */
        snprintf(peer, peerlen, "local");
        *is_loopback = 1;
    }
    return s;
}

#if MAILSRV_ENABLE_HTTP
/* The local address a connection came to, as text ("" if unknown): what the client used to
 * reach this host (the HTTP API's client setup documents name it). */
static void
net_local_name(ms_sock_t s, char *out, size_t n)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    out[0] = 0;
    if (getsockname(s, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET) inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)n);
    else if (ss.ss_family == AF_INET6) inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)n);
}
#endif

/* A non-blocking connect (TCP) or a connected UDP socket with a random
 * source port (RFC 5452 9.2). *err is set when it fails at once. */
static ms_sock_t
net_connect(const struct ms_addr *a, int udp, int *err)
{
    struct sockaddr_storage ss, src;
    socklen_t len = net_sockaddr(a, &ss);
    ms_sock_t s;
    int tries, e;
    s = socket(a->family, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    if (s == MS_BAD_SOCK) { *err = net_error(); return s; }
    if (net_set_nonblock(s) != 0) { *err = net_error(); net_close(s); return MS_BAD_SOCK; }
    if (!udp) net_nodelay(s);
    for (tries = 0; udp && tries < 8; tries++) {
        struct ms_addr any = {0, {0}, 0};
        unsigned short r;
        if (os_random(&r, sizeof r) != 0) break; /* the system picks one */
        any.family = a->family;
        any.port = 1024 + r % 64511u;
        net_sockaddr(&any, &src);
        if (bind(s, (struct sockaddr *)&src, len) == 0) break; /* else the system picks one */
    }
    if (connect(s, (struct sockaddr *)&ss, len) != 0 && !net_in_progress(e = net_error())) {
        *err = e;
        net_close(s);
        return MS_BAD_SOCK;
    }
    return s;
}

/* Calls fn for every entry of a folder not starting with '.', until fn returns non-zero. */
static int
os_list_dir(const char *path, int (*fn)(void *ctx, const char *name), void *ctx)
{
    void *d = os_dir_open(path);
    const char *name;
    if (!d) return -1;
    while ((name = os_dir_next(d)) != NULL && fn(ctx, name) == 0) {}
    os_dir_close(d);
    return 0;
}

/* A file's mtime in nanoseconds since 1970, and whether it is settled:
 * clearly before now, so that a later change cannot carry the same mtime
 * (an index that describes the file may then be trusted while the mtime
 * stays). File times come from a coarse clock (a few ms): with sub-second
 * mtimes, 100 ms before now; where they are whole seconds (a file system
 * that keeps no more, Windows' stat of a folder, or an exact second by
 * chance), an earlier second, as Dovecot and git judge it. */
static int64_t os_mtime_ns(const struct os_stat *st) { return st->mtime * 1000000000 + st->mtime_ns; }
static int
os_mtime_settled(const struct os_stat *st)
{
    int64_t sec;
    long usec;
    os_wallclock(&sec, &usec);
    if (st->mtime_ns) return os_mtime_ns(st) + 100000000 < sec * 1000000000 + usec * 1000LL;
    return st->mtime < sec;
}

/* Writes a whole file atomically: temp file, fsync, replace. Keeps the mode. */
static int
os_write_file_atomic(const char *path, const char *data, size_t len)
{
    char tmp[MS_PATH_DOMAIN];
    struct os_stat st;
    int fd, mode = 0600;
    if (os_stat(path, &st) == 0) mode = st.mode;
    if (snprintf(tmp, sizeof tmp, "%s.tmp%lu", path, os_pid()) >= (int)sizeof tmp) return -1;
    fd = os_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) return -1;
    if (os_write_all(fd, data, len) < 0 || os_fsync(fd) != 0) { os_close(fd); os_unlink(tmp); return -1; }
    if (os_close(fd) != 0 || os_replace(tmp, path) != 0) { os_unlink(tmp); return -1; }
    return 0;
}

/* Reads a password line from stdin. */
static int
os_read_password(char *buf, size_t n)
{
    size_t len;
    if (!fgets(buf, (int)n, stdin)) return -1;
    len = strlen(buf);
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = 0;
    return 0;
}

/*==== Contents: every function, by section ====*/
/*
 * One prototype for each function of sections 3-16, in the order of the
 * file: the table of contents, and what lets any function call any other
 * wherever it stands. Helpers that exist in one build only (one
 * platform, TLS) are left to their section. `make toc` writes this block.
 */

/* the structs they take, defined in their sections */
struct buf; struct cfg_alias; struct cfg_domain; struct cfg_hop; struct cfg_key; struct cfg_list;
struct cfg_net; struct cfg_route; struct cfg_user; struct client_count; struct client_stat;
struct conn; struct data_rx; struct dirset; struct dns_result; struct dns_rr; struct dsn_item;
struct dsn_mail; struct edit_span; struct hmac_key; struct line_reader; struct list_post;
struct list_rate; struct list_state; struct listener; struct mailsrv; struct mbox_index;
struct mbox_move; struct mbox_paths; struct mbox_pending; struct mdir_open; struct mime_conv;
struct ms_addr; struct ms_config; struct mta_sess; struct os_stat; struct pass_key; struct pbkdf2;
struct pop_msg; struct pop_view; struct proto_ops; struct qentry; struct qrcpt; struct sha256;
struct smtp_sess; struct sockaddr_storage; struct store_job; struct store_msg; struct store_ops;
struct store_undo; struct targets; struct tls_creds; struct tls_sess; struct transport;

/* 3. Platform layer */
static int64_t os_now_ms(void);
static int64_t os_now_us(void);
static void os_wallclock(int64_t *sec, long *usec);
static unsigned long os_pid(void);
static int os_pid_alive(unsigned long pid);
static int os_random_bytes(void *buf, size_t n);
static int net_error(void);
static int net_would_block(int e);
static const char *net_strerror(int e);
static int net_addr_in_use(int e);
static void net_close(ms_sock_t s);
static long net_recv(ms_sock_t s, void *buf, size_t n);
static long net_send(ms_sock_t s, const void *buf, size_t n);
static int os_poll(ms_pollfd *fds, int n, int timeout_ms);
static void os_sleep_ms(int ms);
static int net_in_progress(int e);
static int net_out_of_descriptors(int e);
static long os_raise_fd_limit(long want, long *before);
static int net_sock_error(ms_sock_t s);
static int os_dns_servers(char (*out)[64], int max);
static int net_set_nonblock(ms_sock_t s);
static void net_listen_opts(ms_sock_t s);
static int os_open(const char *path, int flags, int mode);
static int os_close(int fd);
static long os_pread(int fd, void *buf, size_t n, int64_t off);
static long os_pwrite(int fd, const void *buf, size_t n, int64_t off);
static long os_write(int fd, const void *buf, size_t n);
static long os_read(int fd, void *buf, size_t n);
static int os_fsync(int fd);
static int os_truncate(int fd, int64_t len);
static int os_mkdir(const char *p);
static int os_link(const char *from, const char *to);
static int os_unlink(const char *p);
static int os_replace(const char *from, const char *to);
static int os_fsync_dir(const char *path);
static int os_stat(const char *path, struct os_stat *st);
static int os_fstat(int fd, struct os_stat *st);
static int os_lstat_kind(const char *path);
static int64_t os_free_space(const char *path);
static int os_lock(int fd, int lock);
static void *os_dir_open(const char *path);
static void os_dir_close(void *dir);
static const char * os_dir_next(void *dir);
static int os_path_is_absolute(const char *p);
static const char *os_last_sep(const char *p);
static void os_args_utf8(int *argc, char ***argv);
static void os_install_signals(struct mailsrv *ms);
static int os_net_start(void);
static void os_net_stop(void);
static int os_service_install(const char *ini, char *err, size_t n);
static int os_service_remove(char *err, size_t n);
static int os_service_dispatch(int (*serve)(void));
static void os_service_running(void);
static int os_setenv(const char *name, const char *value);
static int os_exec(char **argv);
static int os_is_root(void);
static int os_drop_root(const char *user, const char *spool, const char *sub, const char *subpath, const char *queue, char *err, size_t n);
static ms_sock_t net_listen_unix(const char *path, int *err);
static int os_random(void *buf, size_t n);
static long os_write_all(int fd, const void *buf, size_t n);
static long os_pwrite_all(int fd, const void *buf, size_t n, int64_t off);
static void net_nodelay(ms_sock_t s);
static int net_addr_parse(const char *s, unsigned port, struct ms_addr *a);
static void net_addr_str(const struct ms_addr *a, char *out, size_t n);
static socklen_t net_sockaddr(const struct ms_addr *a, struct sockaddr_storage *ss);
static ms_sock_t net_listen(int family, const char *addr, unsigned port, int *err);
static ms_sock_t net_accept(ms_sock_t ls, char *peer, size_t peerlen, int *is_loopback);
static ms_sock_t net_connect(const struct ms_addr *a, int udp, int *err);
static int os_list_dir(const char *path, int (*fn)(void *ctx, const char *name), void *ctx);
static int64_t os_mtime_ns(const struct os_stat *st);
static int os_mtime_settled(const struct os_stat *st);
static int os_write_file_atomic(const char *path, const char *data, size_t len);
static int os_read_password(char *buf, size_t n);

/* 4. Utilities */
static void * xrealloc(void *p, size_t n);
static char * xstrdup(const char *s);
static int ms_strlcpy(char *dst, const char *src, size_t n);
static int ms_fmt(char *dst, size_t n, const char *fmt, ...);
static void ms_lower(char *s);
static int ms_strcaseeq(const char *a, const char *b);
static int ms_strncaseeq(const char *a, const char *b, size_t n);
static char * ms_trim(char *s);
static char * ms_next_item(char **cursor, char sep);
static char * ms_word(char **cursor);
static int ms_word_num(char **cursor, long long *v);
static int ms_secret_eq(const void *a, size_t alen, const void *b, size_t blen);
static void ms_wipe(void *p, size_t n);
static void ms_visible(char *dst, size_t n, const char *src, size_t srclen);
static void ms_rfc5322_date(char *buf, size_t n, time_t t);
static void ms_utc_time(char *buf, size_t n, int64_t t, char sep, const char *end);
static void buf_reserve(struct buf *b, size_t extra);
static void buf_add(struct buf *b, const void *p, size_t n);
static void buf_adds(struct buf *b, const char *s);
static void buf_vprintf(struct buf *b, const char *fmt, va_list ap);
static void buf_printf(struct buf *b, const char *fmt, ...);
static void buf_free(struct buf *b);
static void buf_consume(struct buf *b, size_t n);
static void sha256_block(uint32_t hs[8], const unsigned char *p);
static void sha256_put(const uint32_t h[8], unsigned char out[32]);
static void sha256_init(struct sha256 *s);
static void sha256_update(struct sha256 *s, const void *data, size_t n);
static void sha256_final(struct sha256 *s, unsigned char out[32]);
static void hmac_key_init(struct hmac_key *k, const void *key, size_t keylen);
static void hmac_sha256(const struct hmac_key *k, const void *msg, size_t n, unsigned char out[32]);
static void pbkdf2_begin(struct pbkdf2 *st, const char *pass, const unsigned char *salt, size_t saltlen, unsigned iter);
static int pbkdf2_step(struct pbkdf2 *st, unsigned *budget);
static void pbkdf2_sha256(const char *pass, const unsigned char *salt, size_t saltlen, unsigned iter, unsigned char out[32]);
static size_t b64_encode(const unsigned char *in, size_t n, char *out, int pad);
static long b64_decode(const char *in, size_t n, unsigned char *out, size_t outmax);
static long utf8_decode(const unsigned char *s, size_t n, size_t *len);
static int utf8_valid(const char *s, size_t n);
static int ms_is_ascii(const char *s);
static long uc_lower(long v);
static uint32_t puny_adapt(uint32_t delta, uint32_t npoints, int first);
static uint32_t puny_t(uint32_t k, uint32_t bias);
static int puny_encode(const uint32_t *cp, size_t n, char *out, size_t cap);
static int puny_decode(const char *in, size_t n, uint32_t *cp, size_t cap);
static size_t utf8_put(char *out, uint32_t cp);
static int idna_to_unicode(const char *in, char *out, size_t cap);
static int idna_to_ascii(const char *in, char *out, size_t cap);
static int pass_hash(const char *pass, unsigned iter, char *out, size_t n);
static int pass_is_hash(const char *stored);
static int pass_parse_hash(const char *stored, unsigned *iter, unsigned char *salt, size_t *saltlen, unsigned char hash[32]);
static void pass_key_make(const char *pass, unsigned iter, struct pass_key *k);
static int pass_key_parse(const char *stored, struct pass_key *k);
static const char * pass_policy(const char *p);

/* 5. Config */
static void cfg_error(struct ms_config *c, int line, const char *fmt, ...);
static int cfg_parse_str(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_size(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_count(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_time(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_choice(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_add_listen(struct ms_config *c, int proto, int family, const char *addr, unsigned port, int optional);
static int cfg_parse_listen(struct ms_config *c, const char *v, void *dst, long proto, char *err, size_t n);
static int cfg_parse_lmtp(struct ms_config *c, const char *v, void *dst, long proto, char *err, size_t n);
static int cfg_parse_path(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_hop(const char *v, struct cfg_hop *h, unsigned def_port);
static int cfg_parse_smarthost(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_dns(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_admins(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_nets(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_parse_optstr(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);
static int cfg_safe_component(const char *s, size_t max);
static int cfg_valid_domain(const char *s);
static struct cfg_domain * cfg_find_domain(const struct ms_config *c, const char *name);
static struct cfg_user * cfg_find_user(const struct cfg_domain *d, const char *name);
static struct cfg_alias * cfg_find_alias(const struct cfg_domain *d, const char *name);
static int list_is_address(const struct cfg_list *l, const char *local, const char *domain, int *kind, char *token, size_t tn);
static const struct cfg_list * list_match(const struct ms_config *c, const char *local, const char *domain, int *kind, char *token, size_t tn);
static struct cfg_domain * cfg_domain_for_section(struct ms_config *c, const char *dname, int line);
static struct cfg_list * cfg_list_for_section(struct ms_config *c, const char *addr, int line);
static void cfg_set_key(struct ms_config *c, const struct cfg_key *k, void *base, const char *section, const char *name, const char *value, int line);
static int cfg_on_key(void *user, const char *section, const char *name, const char *value, int line);
static void cfg_free(struct ms_config *c);
static int targets_add(struct targets *t, const char *user, const char *domain, int remote);
static void targets_free(struct targets *t);
static void targets_set_dsn(struct targets *t, int from, int notify, const char *orcpt);
static int targets_remote(const struct targets *t);
static int addr_dot_string(const char *s);
static int addr_remote_domain(char *domain);
static int cfg_expand_members(const struct ms_config *c, const char *members, const char *domain, struct targets *out, int depth);
static int cfg_resolve(const struct ms_config *c, const char *local, const char *domain, struct targets *out, int depth);
static int addr_targets(const struct ms_config *c, const char *addr, struct targets *t);
static int cfg_sender_owned(const struct ms_config *c, const char *from, const char *user);
static int cfg_hash_plain(struct ms_config *c, const struct ms_config *old);
static void cfg_validate_lists(struct ms_config *c);
static void cfg_validate(struct ms_config *c);
static struct ms_config * cfg_new(const char *path);
static char * cfg_read_file(const char *path, size_t *len);
static struct ms_config * cfg_load_ex(const char *path, const char *text, int tls_files);
static struct ms_config *cfg_load(const char *path, const char *text);
static int cfg_listens_beyond_loopback(const struct ms_config *c);
static const char * edit_line_end(const char *p, const char *end);
static int edit_name_eq(const char *a, const char *b);
static void edit_find_section(const char *text, size_t len, size_t from, const char *kind, const char *name, struct edit_span *sp);
static void edit_line_key(const char *p, const char *e, char *key, size_t n);
static char * cfg_edit_mailbox(const char *text, size_t len, const char *user, const char *domain, const char *hash, char *err, size_t errn);

/* 6. Pure parsers */
static const char * cmd_split(const char *line, char *verb, size_t n);
static const char * smtp_parse_path(const char *s, char *local, char *domain);
static int xtext_hex(int c);
static long xtext_decode(const char *in, size_t len, char *out, size_t n);
static long xtext_encode(const char *in, size_t len, char *out, size_t n);
static int dsn_mail_param(const char *param, struct dsn_mail *d);
static int dsn_rcpt_param(const char *param, int *notify, char *orcpt);
static void dsn_notify_text(int notify, char *out, size_t n);
static int smtp_path_utf8(const char *local, const char *domain, int smtputf8);
static void data_rx_init(struct data_rx *d);
static size_t data_rx_feed(struct data_rx *d, const char *in, size_t n, char *out, size_t cap, size_t *olen, int *done);
static size_t data_rx_finish(struct data_rx *d, char *out);
static int mbox_is_from_line(const char *p, size_t n, int quoted_only);
static int pop_parse_num(const char *s, int max);
static int sasl_plain_decode(const char *b64, char *user, size_t ulen, char *pass, size_t plen);
static int net_in_cidr(const struct cfg_net *n, const struct ms_addr *a);
static void client_key(const char *peer, char *key, size_t n);
static int dns_build_query(unsigned char *out, size_t cap, unsigned id, const char *name, int type);
static int dns_read_name(const unsigned char *m, size_t len, size_t *off, char *out, size_t cap);
static unsigned dns_u16(const unsigned char *p);
static int dns_parse_answer(const unsigned char *m, size_t len, unsigned id, const char *qname, int qtype, struct dns_result *r);
static int smtp_reply_line(const char *line, int *code);
static int hdr_next_field(const char *h, size_t n, size_t *pos, const char **f, size_t *flen);
static int hdr_is(const char *f, size_t flen, const char *name);
static int hdr_get(const char *h, size_t n, const char *name, char *out, size_t on);
static int hdr_auto_submitted(const char *h, size_t n);
static int hdr_is_automatic(const char *h, size_t n);
static int dsn_failed(const char *text, size_t n, char (*out)[MS_PATH_MAX], int max, long *seq);
static void list_state_free(struct list_state *st);
static void list_state_text(const struct list_state *st, struct buf *b);
static int list_word(char **cur, char *out, size_t n);
static void * list_grow(void *p, int n, size_t size);
static int list_state_parse(char *text, struct list_state *st);
static void mc_init(struct mime_conv *mc, int need7);
static void mc_eol(struct mime_conv *mc, struct buf *out);
static int mc_has8(const char *p, size_t n);
static void mc_put(struct mime_conv *mc, struct buf *out, const char *p, size_t n, int how);
static void mc_put_lines(struct mime_conv *mc, struct buf *out, const char *p, size_t n);
static void mc_qp(struct mime_conv *mc, struct buf *out, const char *p, size_t n, int complete);
static void mc_token(const char *v, size_t n, char *tok, size_t cap);
static size_t mc_boundary_param(const char *v, size_t n, char *b);
static void mc_head_end(struct mime_conv *mc, struct buf *out);
static int mc_boundary(struct mime_conv *mc, const char *p, size_t n, struct buf *out);
static int mc_line(struct mime_conv *mc, const char *p, size_t n, int complete, struct buf *out);
static int mc_end(struct mime_conv *mc, struct buf *out);

/* 7. Storage */
static void lr_init(struct line_reader *lr, int fd, int64_t start, int64_t end);
static void lr_free(struct line_reader *lr);
static int lr_next(struct line_reader *lr, const char **line, size_t *len, int *complete, int64_t *off);
static int store_mkdir(const char *path, const char *parent);
static int store_mkdir_owed(const char *path, const char *parent, struct dirset *ds);
static int store_user_dir(const char *spool, const char *addr, char *dom_dir, size_t dn, char *user_out, size_t un);
static int store_no_links(const char *spool, const char *addr, int maildir);
static int mdir_prepare(const char *spool, const char *addr, char *newdir, size_t n, struct dirset *ds);
static int mbox_paths(const char *spool, const char *addr, struct mbox_paths *mp);
static int store_fsync_parent(const char *path);
static int mbox_journal_put(const char *jf, const char *rec, size_t n, const char *data, size_t dn, int shrink);
static int mbox_journal_clear(const char *jf);
static void mbox_piece_sum(const char *data, size_t n, char out[33]);
static int mbox_compact_rec(const char *jf, uint64_t ino, int64_t a, int64_t b, int64_t end, int64_t done, const char *data, int64_t plen);
static int mbox_is_own_tail(int fd, int64_t off, int64_t size, const char *head, size_t hl);
static int mbox_file_sum(int fd, int64_t off, int64_t n, char out[33]);
static int mbox_is_own_batch(int fd, int64_t off, int64_t size, const char *list, size_t ln);
static void mbox_move_start(struct mbox_move *mv, int64_t a, int64_t b, int64_t end, int64_t done);
static void mbox_move_free(struct mbox_move *mv);
static int mbox_move_step(int fd, const char *jf, uint64_t ino, struct mbox_move *mv);
static int mbox_compact(int fd, const char *jf, uint64_t ino, int64_t a, int64_t b, int64_t end, int64_t done, const char *saved, int64_t plen);
static void mbox_noted(const char *jf, const char *what);
static int mbox_recover(int fd, const char *jf);
static void mbox_unlock(const char *mbox, int fd);
static int mbox_dotlock_stale(const char *lock);
static int mbox_dotlock_make(const char *lock, const char *tmp);
static int mbox_is_held(const char *mbox);
static void mbox_hold(const char *mbox, int held);
static int mbox_lock(const char *mbox, const char *jf, int create, int *created);
static int64_t mbox_append(int fd, int64_t at, int tmp_fd, int64_t tmp_len, const char *from_line, const char *uidl, int after, char *head, size_t *hl, struct sha256 *sum);
static const struct store_ops * store_of(const struct ms_config *cfg);
static void store_rollback(struct store_undo *u, int n);
static void file_undo(const struct store_undo *u);
static void mbox_undo(const struct store_undo *u);
static void dirset_add(struct dirset *d, const char *dir);
static void dirset_forget(struct dirset *d, const struct store_msg *m, int in_commit);
static struct mbox_pending * dirset_mbox_slot(struct dirset *d);
static void dirset_move(struct dirset *to, struct dirset *from);
static int mdir_deliver(const struct ms_config *cfg, struct store_msg *m, const char *addr, struct store_undo *u, struct dirset *ds, const char **err);
static void mbox_from_line(const struct store_msg *m, int nl, char *out, size_t n);
static int mbox_batch_append(struct mbox_pending **v, int n, const char **err);
static int mbox_deliver(const struct ms_config *cfg, struct store_msg *m, const char *addr, struct store_undo *u, struct dirset *ds, const char **err);
static int store_commit_mbox(struct dirset *ds, int i);
static void store_commit_begin(struct dirset *ds);
static int store_commit_undo(struct dirset *ds, int i);
static void store_job_begin(struct store_job *j, struct store_msg *m, const struct targets *t, struct dirset *ds);
static void store_job_abort(struct store_job *j);
static int store_job_step(struct store_job *j, const struct ms_config *cfg, int64_t until_us);
static int store_deliver(const struct ms_config *cfg, struct store_msg *m, const struct targets *t, const char **err, struct dirset *ds, struct store_undo **undo_out, int *nundo_out);
static void qentry_free(struct qentry *e);
static void queue_env_text(const struct qentry *e, struct buf *b);
static int queue_env_update(const char *qdir, const struct qentry *e);
static struct qentry * queue_env_read(const char *qdir, const char *id);
static int store_copy(int from_fd, int64_t size, const char *to);
static int queue_create(const char *qdir, const char *base, const struct store_msg *m, const struct targets *t, struct dirset *ds, struct store_undo **undo, int *nundo);
static int store_message(const struct ms_config *cfg, const char *qdir, struct store_msg *m, const struct targets *t, const char **err, struct dirset *ds, struct store_undo **undo, int *nundo);
static void view_free(struct pop_view *v);
static void view_clear(struct pop_view *v);
static struct pop_msg * view_add(struct pop_view *v);
static size_t mdir_uidl_len(const struct pop_view *v, const char *name);
static void uidl_set(char *dst, const char *src, size_t n);
static size_t mdir_key_len(const char *base);
static const char *mdir_base(const struct pop_msg *m);
static int mdir_key_cmp(const char *a, size_t na, const char *b, size_t nb);
static int view_cmp_name(const struct pop_msg *x, const struct pop_msg *y);
static void mdir_open_free(struct mdir_open *o);
static int sizes_parse(struct mdir_open *o, int lines);
static int sizes_read_step(struct pop_view *v, struct mdir_open *o);
static int mdir_list_step(struct pop_view *v, struct mdir_open *o);
static int mdir_sort_step(struct pop_view *v, struct mdir_open *o);
static int mdir_same_key(const struct pop_msg *x, const struct pop_msg *y);
static void mdir_drop_gone(struct pop_view *v);
static int mdir_size_step(struct pop_view *v, struct mdir_open *o, int64_t until);
static int mdir_write_step(struct pop_view *v, struct mdir_open *o);
static int mdir_index_current(struct pop_view *v, struct mdir_open *o);
static int mdir_copy_step(struct pop_view *v, struct mdir_open *o);
static int mdir_view_more(struct pop_view *v, int64_t until);
static int view_cmp_uidl(const void *a, const void *b);
static int view_cmp_str(const void *a, const void *b);
static int view_uidls_distinct(const struct pop_view *v);
static void view_unique_uidls(struct pop_view *v);
static int mdir_view_open(struct pop_view *v, const char *spool, const char *addr);
static int mbox_volatile_field(const char *line, size_t len);
static int mbox_own_id(const char *s, size_t n);
static void mbox_msg_close(struct pop_msg *m, int64_t end, int last_blank, int hashed, struct sha256 *h, int64_t hsize);
static int mbox_scan_from(struct pop_view *v, int fd, int64_t start, int64_t end);
static uint64_t mbox_index_sum(uint64_t h, const void *p, size_t n);
static int mbox_index_path(const char *jf, char *out, size_t n, const char *suffix);
static int mbox_probe_add(int fd, int64_t a, int64_t b, uint64_t *h, char *buf);
static int mbox_index_probe(int fd, const struct pop_view *v, int64_t size, uint64_t *out);
static void mbox_index_write(const char *jf, int fd, const struct pop_view *v, const struct os_stat *st);
static int mbox_index_num(const char **p, int base, char sep, uint64_t *out);
static int mbox_index_read(const char *jf, struct pop_view *v, struct mbox_index *ix);
static int mbox_index_start(struct pop_view *v, int fd, const struct os_stat *st, const char *jf, int64_t *from);
static int mbox_scan_piece(struct pop_view *v, int fd, int64_t *from, int64_t end);
static int mbox_index_scan(struct pop_view *v, int fd, const struct os_stat *st, const char *jf);
static struct pop_view *mbox_work_view(struct pop_view *v);
static void mbox_work_end(struct pop_view *v);
static int mbox_work_begin(struct pop_view *v, int quit);
static int mbox_work_scan(struct pop_view *v, int64_t until);
static int mbox_view_open(struct pop_view *v, const char *spool, const char *addr);
static int mbox_view_more(struct pop_view *v, int64_t until);
static int view_cmp_uidl_key(const void *key, const void *b);
static int mbox_view_refresh(struct pop_view *v);
static int view_more(struct pop_view *v, int64_t until);
static int view_open_whole(const struct store_ops *ops, struct pop_view *v, const char *spool, const char *addr);
static int view_expunge(struct pop_view *v, int64_t until);
static int mdir_expunge(struct pop_view *v, int64_t until);
static void mbox_update_mark(struct pop_view *v);
static void mbox_update_index(struct pop_view *v);
static int mbox_expunge(struct pop_view *v, int64_t until);
static int mdir_msg_text(struct pop_view *v, struct pop_msg *m, char *path, size_t n, int64_t *start, int64_t *end);
static int mdir_seek_one(void *ctx, const char *name);
static int mdir_relocate(struct pop_view *v, struct pop_msg *m);
static int mbox_msg_text(struct pop_view *v, struct pop_msg *m, char *path, size_t n, int64_t *start, int64_t *end);

/* 8. TLS glue (BearSSL) */
static void tls_creds_release(struct tls_creds *t);
static struct tls_sess * tls_server_new(struct tls_creds *creds, void **cache);
static struct tls_sess * tls_client_new(struct tls_creds *anchors, const char *server_name);
static void tls_free(struct tls_sess *t);
static int tls_pump(struct tls_sess *t, ms_sock_t fd);
static long tls_recv(struct tls_sess *t, ms_sock_t fd, void *buf, size_t cap);
static long tls_send(struct tls_sess *t, ms_sock_t fd, const void *buf, size_t n);
static short tls_events(const struct tls_sess *t, int app_out);
static int tls_app_ready(const struct tls_sess *t);
static int tls_unsent(const struct tls_sess *t);
static int tls_done(const struct tls_sess *t);
static int tls_error(const struct tls_sess *t);
static void tls_error_text(int e, char *out, size_t n);
static void tls_close(struct tls_sess *t, ms_sock_t fd);
static int tls_report(struct tls_sess *t, char *out, size_t n);
static void cfg_load_tls_files(struct ms_config *c);
static int cli_gencert(const char *path, const char *const *names, int nnames, const char *const *ips, int nips);
static void io_init(struct transport *io, ms_sock_t fd, char *in, size_t insize, void (*on_io)(struct transport *, short));
static long io_read(struct transport *io);
static size_t io_line(const struct transport *io);
static void io_consume(struct transport *io, size_t n);
static size_t io_pending(const struct transport *io);
static int io_write(struct transport *io);
static short io_events(const struct transport *io, int want_in, int want_out);
static int io_tls_input(const struct transport *io);
static int io_unsent(const struct transport *io);
static void io_close_notify(struct transport *io);
static void io_close(struct transport *io);

/* 9. Connections */
static void ms_count_sessions(const struct mailsrv *ms, int n[PROTO_N], int *relaying);
static void ms_log(struct mailsrv *ms, const char *fmt, ...);
static void conn_log(struct conn *c, const char *fmt, ...);
static void conn_reply(struct conn *c, const char *fmt, ...);
static void conn_say(struct conn *c, enum conn_say what);
static void conn_close_after_reply(struct conn *c);
static void conn_drop(struct conn *c);
static void conn_send(struct conn *c);
static int conn_starttls(struct conn *c);
static void conn_tls_start(struct conn *c);
static void conn_tls_report(struct conn *c);
static void conn_free(struct conn *c);
static void conn_process(struct conn *c);
static void conn_read(struct conn *c);
static int conn_may_go_on(const struct conn *c);
static short conn_watch(struct conn *c, int64_t now, int64_t *wake);
static void conn_on_io(struct transport *io, short revents);
static void conn_run(struct conn *c);
static int conn_plaintext_ok(const struct conn *c);
static const struct pass_key * auth_find(struct ms_config *cfg, const char *login, struct cfg_user **u, const struct cfg_domain **d);
static void auth_begin(struct conn *c, const char *login, const char *pass);
static int64_t auth_failed(struct conn *c, const char *user);
static void auth_succeeded(struct conn *c);
static void conn_login_failed(struct conn *c, const char *user);
static void conn_work_done(struct conn *c);
static void login_done(struct conn *c);
static int login_step(struct conn *c, int64_t until);
static int cfg_in_relay_nets(const struct ms_config *cfg, const char *peer);
static int conn_logged_in(const struct conn *c);
static int conn_may_relay(const struct conn *c);
static int conn_busy(const struct conn *c);
static int conn_junk(struct conn *c);
static void conn_session_over(struct conn *c);
static int conn_session_expired(const struct conn *c, int64_t now);
static void client_log_quiet(struct mailsrv *ms, struct client_stat *s);
static struct client_stat * client_stat(struct mailsrv *ms, const char *key, int64_t now);
static int client_rate_over(const struct mailsrv *ms, struct client_stat *s, int64_t now);
static void client_refused(struct mailsrv *ms, struct client_stat *s, int64_t now, const char *fmt, ...);
static void client_flush(struct mailsrv *ms, int64_t now);
static size_t client_count_home(const struct mailsrv *ms, const char *key);
static struct client_count * client_count_slot(struct mailsrv *ms, const char *key);
static long client_sessions(struct mailsrv *ms, const char *key);
static void client_count_remove(struct mailsrv *ms, struct client_count *e);
static void client_count_add(struct mailsrv *ms, const char *key, long delta);
static void conn_count(struct conn *c, int delta);
static struct conn * slots_victim(struct mailsrv *ms, int64_t now);
static void slots_evict(struct conn *v, int64_t now);
static int msg_open(struct mailsrv *ms, struct store_msg *m);
static int msg_write(struct store_msg *m, const char *p, size_t n);
static int msg_inject(struct mailsrv *ms, struct store_msg *m, const struct targets *t, const char **err);
static int chaos_fires(struct mailsrv *ms, int which);

/* 10. SMTP server session */
static void smtp_tx_reset(struct conn *c);
static void smtp_greet(struct conn *c);
static void lmtp_greet(struct conn *c);
static void smtp_tx_reply(struct conn *c, const char *fmt, ...);
static void smtp_hello(struct conn *c, const char *args, int esmtp);
static void smtp_auth_fail(struct conn *c, const char *user);
static void smtp_auth_try(struct conn *c, const char *user, const char *pass);
static void smtp_auth_done(struct conn *c, const char *mailbox, const char *user);
static void smtp_auth_step(struct conn *c, const char *line);
static void smtp_do_auth(struct conn *c, const char *args);
static const char * smtp_after_prefix(const char *args, const char *prefix);
static int smtp_low_space(struct conn *c, int64_t size);
static void smtp_do_mail(struct conn *c, const char *args);
static void smtp_rcpt_dsn(struct conn *c, int n0, int notify, const char *orcpt, const char *local, const char *domain);
static void smtp_do_rcpt(struct conn *c, const char *args);
static int smtp_write_data(struct smtp_sess *s, const char *p, size_t n);
static const char * smtp_with(const struct conn *c);
static int smtp_msg_begin(struct conn *c, int raw);
static void smtp_do_data(struct conn *c, const char *args);
static void smtp_do_bdat(struct conn *c, const char *args);
static void smtp_data_end(struct conn *c);
static void smtp_deliver_next(struct conn *c);
static int smtp_deliver_step(struct conn *c, int64_t until_us);
static void smtp_dsn_success(struct conn *c);
static void smtp_group_committed(struct conn *c, int ok);
static size_t smtp_data_feed(struct conn *c, const char *in, size_t n);
static size_t smtp_bdat_feed(struct conn *c, const char *in, size_t n);
static void smtp_do_starttls(struct conn *c, const char *args);
static void smtp_do_ehlo(struct conn *c, const char *a);
static void smtp_do_lhlo(struct conn *c, const char *a);
static void smtp_do_helo(struct conn *c, const char *a);
static void smtp_do_noop(struct conn *c, const char *a);
static void smtp_do_rset(struct conn *c, const char *a);
static void smtp_do_vrfy(struct conn *c, const char *a);
static void smtp_do_help(struct conn *c, const char *a);
static void smtp_do_quit(struct conn *c, const char *a);
static void smtp_line(struct conn *c, char *line, size_t len);
static int smtp_pump(struct conn *c);
static int smtp_logged_in(const struct conn *c);
static int smtp_busy(const struct conn *c);
static int smtp_in_data(const struct conn *c);
static int smtp_streaming(const struct conn *c);
static const char * smtp_tmp_file(const struct conn *c);

/* 11. POP3 server session */
static void pop_greet(struct conn *c);
static void pop_stream_end(struct conn *c);
static void pop_pump(struct conn *c);
static void pop_stream_start(struct conn *c, struct pop_msg *m, long body_lines);
static int pop_msg_number(const struct pop_view *v, const char *arg);
static int pop_in_use(struct mailsrv *ms, const struct conn *self, const char *mailbox);
static void pop_login_done(struct conn *c, const char *mailbox, const char *user);
static int pop_open_step(struct conn *c, int64_t until);
static void pop_opened(struct conn *c, int r);
static const char * pop_auth_plain(struct conn *c, const char *b64);
static const char * pop_do_user(struct conn *c, const char *args);
static const char * pop_do_pass(struct conn *c, const char *args);
static const char * pop_do_auth(struct conn *c, const char *args);
static const char * pop_do_stls(struct conn *c, const char *args);
static const char * pop_do_capa(struct conn *c, const char *args);
static const char * pop_do_utf8(struct conn *c, const char *args);
static const char * pop_do_quit(struct conn *c, const char *args);
static int pop_update_step(struct conn *c, int64_t until);
static const char * pop_do_stat(struct conn *c, const char *args);
static const char * pop_scan_list(struct conn *c, const char *args, int uidl);
static const char * pop_do_list(struct conn *c, const char *args);
static const char * pop_do_uidl(struct conn *c, const char *args);
static const char * pop_do_retr(struct conn *c, const char *args);
static const char * pop_do_top(struct conn *c, const char *args);
static const char * pop_do_dele(struct conn *c, const char *args);
static const char * pop_do_rset(struct conn *c, const char *args);
static const char * pop_do_noop(struct conn *c, const char *args);
static void pop_command(struct conn *c, const char *verb, const char *args);
static void pop_line(struct conn *c, char *line, size_t len);
static int pop_pump_stream(struct conn *c);
static int pop_logged_in(const struct conn *c);
static int pop_busy(const struct conn *c);
static int pop_streaming(const struct conn *c);
static void pop_free(struct conn *c);

/* 12. HTTP: the Mailpit-compatible API */
static void http_notify(struct mailsrv *ms, const char *type, const char *uidl, const struct targets *t, const char *mailbox);
static void http_forget_logins(struct mailsrv *ms);
static const struct proto_ops * proto_ops_of(enum proto p);

/* 13. Relay: DNS client, outbound SMTP, queue runner */
static void mta_log(struct mta_sess *o, const char *fmt, ...);
static void mta_close_body(struct mta_sess *o);
static void mta_close_fd(struct mta_sess *o);
static void mta_send(struct mta_sess *o, const char *fmt, ...);
static void mta_dns_send(struct mta_sess *o);
static void mta_dns_query(struct mta_sess *o, const char *name, int type);
static void mta_dns_timeout(struct mta_sess *o);
static long dns_tcp_msg_len(const unsigned char *a, size_t alen);
static void mta_dns_io(struct mta_sess *o, short re);
static void mta_connect(struct mta_sess *o);
static void mta_resolve_host(struct mta_sess *o);
static void mta_next(struct mta_sess *o);
static int mta_mx_cmp(const void *a, const void *b);
static void mta_mx_order(struct dns_rr *mx, int n);
static void mta_dns_answer(struct mta_sess *o, int rc, const struct dns_result *r);
static int mta_next_rcpt(struct mta_sess *o, int from);
static void mta_fail_session(struct mta_sess *o, const char *why);
static void mta_broken(struct mta_sess *o, const char *why);
static int mta_needs_utf8(const struct mta_sess *o);
static int mta_utf8_refused(struct mta_sess *o);
static void mta_set_accepted(struct mta_sess *o, int result, const char *reply);
static void mta_dsn_params(const struct mta_sess *o, const struct qrcpt *r, char *out, size_t n);
static void mta_send_mail(struct mta_sess *o);
static void mta_send_rcpt(struct mta_sess *o, int at);
static void mta_mail_from(struct mta_sess *o);
static int mta_open_body(struct mta_sess *o);
static int mta_body_line(struct mta_sess *o, const char **line, size_t *len, int *complete, int64_t *off);
static void mta_unconvertible(struct mta_sess *o, int in_data);
static int mta_head_8bit(int fd, int64_t start, int64_t end);
static void mta_pump_body(struct mta_sess *o);
static void mta_start_text(struct mta_sess *o);
static void mta_after_ehlo(struct mta_sess *o);
static void mta_tls_failed(struct mta_sess *o);
static int mta_tls_progress(struct mta_sess *o);
static void mta_tls_begin(struct mta_sess *o);
static void mta_quit(struct mta_sess *o);
static void mta_on_reply(struct mta_sess *o, int code, const char *line);
static void mta_read(struct mta_sess *o);
static void mta_io(struct mta_sess *o, short re);
static void mta_on_io(struct transport *io, short revents);
static int mta_watch(struct mta_sess *o, int64_t now, int64_t *wake);
static void mta_timer(struct mta_sess *o, int64_t now);
static void mta_finish(struct mta_sess *o, int perm);
static void mta_give_up(struct mta_sess *o, int perm);
static int mta_take_next(struct mta_sess *o);
static const struct cfg_route * cfg_find_route(const struct ms_config *c, const char *domain);
static void mta_begin(struct mta_sess *o);
static void relay_start(struct mailsrv *ms, struct qentry *e, const char *domain, const int *ri, int nri);
static void mta_free(struct mta_sess *o);
static int queue_count_hops(const char *qdir, const char *id);
static void relay_status(const char *err, char *out, size_t n);
static void dsn_decoded(const char *x, char *out, size_t n);
static void dsn_add_original(struct store_msg *m, int fd, int full);
static int dsn_report(struct mailsrv *ms, const char *to, const char *about, const char *envid, int ret, time_t arrived, const struct dsn_item *it, int n, int fd);
static int relay_report(struct mailsrv *ms, const struct qentry *e, const struct dsn_item *it, int n);
static int relay_bounce(struct mailsrv *ms, struct qentry *e);
static int relay_success_report(struct mailsrv *ms, struct qentry *e);
static void relay_remove(struct mailsrv *ms, struct qentry *e);
static void relay_finish(struct mailsrv *ms, struct qentry *e);
static int qentry_first_of_domain(const struct qentry *e, int j);
static void relay_run(struct mailsrv *ms);
static void relay_enqueue(struct mailsrv *ms, const char *id);
static int relay_scan_entry(void *ctx, const char *name);
static void relay_check_flush(struct mailsrv *ms, int64_t now);
static void relay_flush(struct mailsrv *ms);

/* 14. Mailing lists */
static int64_t msg_read_header(int fd, int64_t size, struct buf *h);
static void msg_copy_range(struct store_msg *m, int fd, int64_t from, int64_t to);
static int list_address(const struct cfg_list *l, int kind, const char *token, char *out, size_t n);
static int list_state_path(const struct ms_config *cfg, const struct cfg_list *l, char *dir, size_t dn, char *path, size_t pn);
static int list_load(const struct ms_config *cfg, const struct cfg_list *l, struct list_state *st);
static int list_save(const struct ms_config *cfg, const struct cfg_list *l, struct list_state *st, struct dirset *ds);
static int list_find_member(const struct list_state *st, const char *addr);
static int list_find_pending(const struct list_state *st, const char *token);
static void list_clean_id(char *out, size_t n, const char *h, size_t hn);
static int list_send(struct mailsrv *ms, const struct cfg_list *l, const char *to, const char *token, const char *subject, const char *body);
static void list_help_text(const struct cfg_list *l, struct buf *b);
static int list_request(struct mailsrv *ms, const struct cfg_list *l, const char *sender, const char *peer, int unsub, const char *h, size_t hn);
static int list_confirm(struct mailsrv *ms, const struct cfg_list *l, const char *token, const char *peer, const char *h, size_t hn);
static int list_count_bounce(struct mailsrv *ms, const struct cfg_list *l, struct list_state *st, const char *addr, long seq);
static int list_count_bounces(struct mailsrv *ms, const struct cfg_list *l, char (*addr)[MS_PATH_MAX], int n, long seq);
static int list_relay_bounce(struct mailsrv *ms, struct qentry *e);
static int list_drops_field(const struct cfg_list *l, const char *f, size_t n);
static void list_write_post(const struct cfg_list *l, struct store_msg *m, long seq, const struct store_msg *in, const char *h, size_t hn, int64_t body_off);
static int list_post(struct mailsrv *ms, const struct cfg_list *l, struct smtp_sess *s, const char *h, size_t hn, int64_t body_off);
static void list_post_done(struct mailsrv *ms, const struct list_post *p, const char *in_id, const char *in_sender);
static void list_post_failed(struct mailsrv *ms, const struct list_post *p, const char *err);
static void list_post_clear(struct list_post *p);
static void list_posts_free(struct list_post *p, int n);
static uint64_t list_rate_hash(char kind, const char *s);
static struct list_rate * list_rate_find(struct list_rate *r, uint64_t key, int64_t now);
static struct list_rate * list_rate_free(struct list_rate *r, const struct list_rate *avoid);
static int64_t list_rate_next(const struct list_rate *e, uint64_t key, int64_t now, int per_hour);
static int list_rate_take(struct list_rate *r, const char *client, const char *domain, int64_t now);
static int list_rcpt(struct conn *c, const struct cfg_list *l, int kind, const char *token, const char *rcpt);
static int list_incoming(struct conn *c);

/* 15. Event loop */
static void loop_work(struct mailsrv *ms);
static void loop_refuse(ms_sock_t s, enum proto proto, int rate);
static void loop_fit_fd_limit(struct mailsrv *ms);
static void loop_accept_rest(struct mailsrv *ms, int err);
static void loop_accept(struct mailsrv *ms, struct listener *l);
static int commit_seal(struct mailsrv *ms);
static int commit_step(struct mailsrv *ms, int64_t until_us);
static void loop_group_commit(struct mailsrv *ms);
static void loop_commit_rest(struct mailsrv *ms);
static void loop_timers(struct mailsrv *ms, int64_t now);
static void loop_sweep(struct mailsrv *ms);
static void loop_close_listeners(struct mailsrv *ms);
static void loop_stop_sessions(struct mailsrv *ms);
static void loop_check_reload(struct mailsrv *ms, int64_t now);
static void loop_control_done(struct mailsrv *ms, const char *name);
static void loop_write_status(struct mailsrv *ms);
static void loop_check_control(struct mailsrv *ms, int64_t now);
static int loop_clean_tmp_entry(void *ctx, const char *name);
static void loop_clean_tmp(struct mailsrv *ms, int64_t now);
static void loop_watch(struct mailsrv *ms, int *nfds, ms_sock_t fd, short events, struct transport *io);
static int loop_watch_all(struct mailsrv *ms, int64_t now, int64_t *wake);
static void loop_dispatch(struct mailsrv *ms, int nfds, int ready);

/* 16. Public API */
static void default_log(void *user, const char *line);
static void ms_log_reopen(struct mailsrv *ms, const char *path);
static void ms_keep_start_keys(struct mailsrv *ms, struct ms_config *c);
static int ms_install_config(struct mailsrv *ms, struct ms_config *c);

/* 17. Command line and main() */
static int cli_split_address(const char *arg, char *user, char *domain);
static int cli_print_errors(const struct ms_config *c);
static int cli_check(const char *path);
static const struct cfg_alias * cli_alias_naming(const struct ms_config *c, const struct cfg_domain *md, const char *user, const char **in);
static int cli_edit(const char *path, const char *addr, int add);
static int cli_users(const char *path);
static int cli_queue_entry(void *ctx, const char *name);
static int cli_queue_cmp(const void *a, const void *b);
static int cli_queue(const char *path);
static int cli_make_flag(const struct ms_config *c, const char *name, char *flag, size_t size);
static int cli_flush(const char *path);
static int cli_passwd(void);
static int cli_checkpassword(const char *path, char **prog);
static int cli_list(const char *path, const char *addr);
static int cli_reload(const char *path);
static int cli_wait_gone(const char *flag, int ms);
static int cli_control(const char *path, const char *name);
static void cli_usage(void);
static int cli_service(const char *path, const char *what);
static int serve(void);

/* ---- end of contents ---- */

/*==== 4. Utilities ====*/

static void *
xrealloc(void *p, size_t n)
{
    void *q = FAULT(F_MALLOC) ? NULL : realloc(p, n ? n : 1);
    if (!q) { fputs("mailsrv: out of memory\n", stderr); abort(); }
    return q;
}
static char *
xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

/* Copies with truncation; returns -1 when truncated. */
static int
ms_strlcpy(char *dst, const char *src, size_t n)
{
    size_t len = strlen(src);
    if (n == 0) return -1;
    if (len >= n) { memcpy(dst, src, n - 1); dst[n - 1] = 0; return -1; }
    memcpy(dst, src, len + 1);
    return 0;
}

/* snprintf that reports truncation as -1 (paths must never be cut). */
static int
ms_fmt(char *dst, size_t n, const char *fmt, ...)
{
    int r;
    va_list ap;
    va_start(ap, fmt);
    r = vsnprintf(dst, n, fmt, ap);
    va_end(ap);
    return (r < 0 || (size_t)r >= n) ? -1 : r;
}

static void
ms_lower(char *s)
{
    for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

static int
ms_strcaseeq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return *a == *b;
}

static int
ms_strncaseeq(const char *a, const char *b, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i])) return 0;
        if (!a[i]) return 1;
    }
    return 1;
}

static char *
ms_trim(char *s)
{
    char *e;
    while (*s == ' ' || *s == '\t') s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) *--e = 0;
    return s;
}

/* Splits a list in place: returns the next item (untrimmed) or NULL. */
static char *
ms_next_item(char **cursor, char sep)
{
    char *item = *cursor, *end;
    if (!item) return NULL;
    end = strchr(item, sep);
    if (end) { *end = 0; *cursor = end + 1; }
    else *cursor = NULL;
    return item;
}

/* The next word of a line, split in place at blanks; NULL when none is left. */
static char *
ms_word(char **cursor)
{
    char *s = *cursor, *e;
    while (*s == ' ' || *s == '\t') s++;
    if (!*s) { *cursor = s; return NULL; }
    for (e = s; *e && *e != ' ' && *e != '\t'; e++) {}
    *cursor = *e ? e + 1 : e;
    *e = 0;
    return s;
}

/* The next word as a decimal number: 0, or -1 if it is missing or not one. */
static int
ms_word_num(char **cursor, long long *v)
{
    char *w = ms_word(cursor), *end;
    if (!w) return -1;
    errno = 0;
    *v = strtoll(w, &end, 10);
    return end == w || *end || errno ? -1 : 0;
}

/* Constant-time comparison for secrets. */
static int
ms_secret_eq(const void *a, size_t alen, const void *b, size_t blen)
{
    const unsigned char *x = a, *y = b;
    unsigned diff = (unsigned)(alen ^ blen);
    size_t i;
    for (i = 0; i < alen && i < blen; i++) diff |= (unsigned)(x[i] ^ y[i]);
    return diff == 0;
}

/* Clears a secret (through volatile: the stores are not optimised away). */
static void
ms_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--) *v++ = 0;
}

/* Escapes control bytes and non-ASCII for log lines (OpenSMTPD's strnvis). */
static void
ms_visible(char *dst, size_t n, const char *src, size_t srclen)
{
    size_t o = 0, i;
    for (i = 0; i < srclen && o + 5 < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') dst[o++] = (char)ch;
        else o += (size_t)sprintf(dst + o, "\\x%02x", ch);
    }
    if (i < srclen && o + 4 < n) { memcpy(dst + o, "...", 3); o += 3; }
    dst[o] = 0;
}

/* English names whatever the locale (mailsrv never sets one). */
static const char *const ms_days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const ms_months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* RFC 5322 date-time, in UTC. */
static void
ms_rfc5322_date(char *buf, size_t n, time_t t)
{
    struct tm tm;
    struct tm *g = gmtime(&t);
    if (!g) { ms_strlcpy(buf, "Thu, 1 Jan 1970 00:00:00 +0000", n); return; }
    tm = *g;
    snprintf(buf, n, "%s, %d %s %d %02d:%02d:%02d +0000", ms_days[tm.tm_wday], tm.tm_mday,
             ms_months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* "2026-11-28T03:36:48Z" (sep 'T', end "Z") or "2026-11-28 03:36:48 UTC". No
 * strftime: in a static musl build it brings the time zone code (4 KB). */
static void
ms_utc_time(char *buf, size_t n, int64_t t, char sep, const char *end)
{
    time_t tt = (time_t)t;
    struct tm *g = gmtime(&tt);
    if (!g) { ms_strlcpy(buf, "?", n); return; }
    ms_fmt(buf, n, "%04d-%02d-%02d%c%02d:%02d:%02d%s", g->tm_year + 1900, g->tm_mon + 1, g->tm_mday, sep, g->tm_hour,
             g->tm_min, g->tm_sec, end);
}

/* ---- growable byte buffer (callers bound its size) ---- */
struct buf { char *p; size_t len, cap; };

static void
buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + extra + 1) cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
}
static void
buf_add(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void buf_adds(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }
static void
buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    size_t room = b->cap - b->len; /* formatted once where it fits (a UIDL listing: 50,000 lines) */
    int n;
    va_copy(ap2, ap);
    n = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap2);
    va_end(ap2);
    if (n < 0) return;
    if ((size_t)n >= room) {
        buf_reserve(b, (size_t)n);
        vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    }
    b->len += (size_t)n;
}
static void
buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(b, fmt, ap);
    va_end(ap);
}
static void buf_free(struct buf *b) { free(b->p); b->p = NULL; b->len = b->cap = 0; }
static void
buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) { b->len = 0; return; }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

/* ---- SHA-256 (FIPS 180-4), for password hashes and derived UIDLs ---- */
struct sha256 { uint32_t h[8]; uint64_t len; unsigned char blk[64]; size_t n; };

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define SHA_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
/* One round, eight of them unrolled with the roles of a..h turning, instead
 * of moving each word one place down every round (the compression is most of
 * a login's PBKDF2: with the fixed blocks of pbkdf2_step, 10,000 iterations
 * went from 9.1 to 6.3 ms with gcc -O2). */
#define SHA_ROUND(a, b, c, d, e, f, g, h, i)                                                            \
    do {                                                                                                 \
        uint32_t t1_ = (h) + (SHA_ROR(e, 6) ^ SHA_ROR(e, 11) ^ SHA_ROR(e, 25)) + ((g) ^ ((e) & ((f) ^ (g)))) + \
                       sha256_k[i] + w[i];                                                               \
        (d) += t1_;                                                                                      \
        (h) = t1_ + (SHA_ROR(a, 2) ^ SHA_ROR(a, 13) ^ SHA_ROR(a, 22)) + (((a) & (b)) | ((c) & ((a) | (b)))); \
    } while (0)

static void
sha256_block(uint32_t hs[8], const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, h;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = SHA_ROR(w[i - 15], 7) ^ SHA_ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = SHA_ROR(w[i - 2], 17) ^ SHA_ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = hs[0]; b = hs[1]; c = hs[2]; d = hs[3];
    e = hs[4]; f = hs[5]; g = hs[6]; h = hs[7];
    for (i = 0; i < 64; i += 8) {
        SHA_ROUND(a, b, c, d, e, f, g, h, i);
        SHA_ROUND(h, a, b, c, d, e, f, g, i + 1);
        SHA_ROUND(g, h, a, b, c, d, e, f, i + 2);
        SHA_ROUND(f, g, h, a, b, c, d, e, i + 3);
        SHA_ROUND(e, f, g, h, a, b, c, d, i + 4);
        SHA_ROUND(d, e, f, g, h, a, b, c, i + 5);
        SHA_ROUND(c, d, e, f, g, h, a, b, i + 6);
        SHA_ROUND(b, c, d, e, f, g, h, a, i + 7);
    }
    hs[0] += a; hs[1] += b; hs[2] += c; hs[3] += d;
    hs[4] += e; hs[5] += f; hs[6] += g; hs[7] += h;
}

/* The state's words, big-endian: the digest. */
static void
sha256_put(const uint32_t h[8], unsigned char out[32])
{
    int i;
    for (i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static void
sha256_init(struct sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->n = 0;
}

static void
sha256_update(struct sha256 *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    s->len += n;
    while (n) {
        size_t take = 64 - s->n;
        if (take > n) take = n;
        memcpy(s->blk + s->n, p, take);
        s->n += take; p += take; n -= take;
        if (s->n == 64) { sha256_block(s->h, s->blk); s->n = 0; }
    }
}

static void
sha256_final(struct sha256 *s, unsigned char out[32])
{
    static const unsigned char zeros[64] = {0x80};
    uint64_t bits = s->len * 8;
    unsigned char lenb[8];
    int i;
    sha256_update(s, zeros, 1 + (119 - s->n) % 64); /* 0x80, then zeros up to 56 bytes into a block */
    for (i = 0; i < 8; i++) lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, lenb, 8);
    sha256_put(s->h, out);
}

/* HMAC-SHA256 (RFC 2104) with the key already padded into ipad/opad states. */
struct hmac_key { struct sha256 inner, outer; };

static void
hmac_key_init(struct hmac_key *k, const void *key, size_t keylen)
{
    unsigned char kb[64], pad[64];
    int i;
    memset(kb, 0, sizeof kb);
    if (keylen > 64) {
        struct sha256 s;
        sha256_init(&s);
        sha256_update(&s, key, keylen);
        sha256_final(&s, kb);
    } else {
        memcpy(kb, key, keylen);
    }
    for (i = 0; i < 64; i++) pad[i] = kb[i] ^ 0x36;
    sha256_init(&k->inner);
    sha256_update(&k->inner, pad, 64);
    for (i = 0; i < 64; i++) pad[i] = kb[i] ^ 0x5c;
    sha256_init(&k->outer);
    sha256_update(&k->outer, pad, 64);
}

static void
hmac_sha256(const struct hmac_key *k, const void *msg, size_t n, unsigned char out[32])
{
    struct sha256 s = k->inner;
    unsigned char ih[32];
    sha256_update(&s, msg, n);
    sha256_final(&s, ih);
    s = k->outer;
    sha256_update(&s, ih, 32);
    sha256_final(&s, out);
}

/* PBKDF2-HMAC-SHA256 (RFC 8018 5.2), one 32-byte block, in steps: a login
 * runs a few hundred iterations per loop turn (section 15). The state holds
 * no copy of the password, only the HMAC key's pads. */
struct pbkdf2 { struct hmac_key k; unsigned char u[32], out[32]; unsigned left; };

static void
pbkdf2_begin(struct pbkdf2 *st, const char *pass, const unsigned char *salt, size_t saltlen, unsigned iter)
{
    unsigned char msg[64 + 4];
    hmac_key_init(&st->k, pass, strlen(pass));
    if (saltlen > 64) saltlen = 64;
    memcpy(msg, salt, saltlen);
    msg[saltlen] = 0; msg[saltlen + 1] = 0; msg[saltlen + 2] = 0; msg[saltlen + 3] = 1;
    hmac_sha256(&st->k, msg, saltlen + 4, st->u); /* U1 */
    memcpy(st->out, st->u, 32);
    st->left = iter > 1 ? iter - 1 : 0;
}

/* Runs up to *budget iterations (taken from it); 1 once st->out is the result.
 * An iteration is hmac_sha256 of 32 bytes: each of its two hashes is one
 * block after the key's pad (64 bytes hashed already), laid out here once:
 * the 32 bytes, 0x80, zeros, and the length, 96 bytes in bits (0x300). */
static int
pbkdf2_step(struct pbkdf2 *st, unsigned *budget)
{
    unsigned n = st->left < *budget ? st->left : *budget, i;
    unsigned char blk[64] = {0};
    uint32_t h[8];
    int j;
    blk[32] = 0x80;
    blk[62] = 0x03;
    for (i = 0; i < n; i++) {
        memcpy(blk, st->u, 32);
        memcpy(h, st->k.inner.h, sizeof h);
        sha256_block(h, blk);
        sha256_put(h, blk);
        memcpy(h, st->k.outer.h, sizeof h);
        sha256_block(h, blk);
        sha256_put(h, st->u);
        for (j = 0; j < 32; j++) st->out[j] ^= st->u[j];
    }
    ms_wipe(blk, sizeof blk);
    st->left -= n;
    *budget -= n;
    return st->left == 0;
}

static void
pbkdf2_sha256(const char *pass, const unsigned char *salt, size_t saltlen, unsigned iter,
              unsigned char out[32])
{
    struct pbkdf2 st;
    unsigned all = iter;
    pbkdf2_begin(&st, pass, salt, saltlen, iter);
    pbkdf2_step(&st, &all);
    memcpy(out, st.out, 32);
    ms_wipe(&st, sizeof st);
}

/* ---- base64 (RFC 4648), used by SASL and password hashes ---- */
static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t
b64_encode(const unsigned char *in, size_t n, char *out, int pad)
{
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_chars[v >> 18]; out[o++] = b64_chars[(v >> 12) & 63];
        out[o++] = b64_chars[(v >> 6) & 63]; out[o++] = b64_chars[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = b64_chars[v >> 18];
        out[o++] = b64_chars[(v >> 12) & 63];
        if (i + 1 < n) out[o++] = b64_chars[(v >> 6) & 63];
        else if (pad) out[o++] = '=';
        if (pad) out[o++] = '=';
    }
    out[o] = 0;
    return o;
}

/* Decodes strictly (no whitespace, optional padding); -1 on bad input. */
static long
b64_decode(const char *in, size_t n, unsigned char *out, size_t outmax)
{
    uint32_t v = 0;
    size_t o = 0, i, bits = 0;
    while (n && in[n - 1] == '=') n--;
    for (i = 0; i < n; i++) {
        const char *c = strchr(b64_chars, in[i]);
        if (!in[i] || !c) return -1;
        v = (v << 6) | (uint32_t)(c - b64_chars);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= outmax) return -1;
            out[o++] = (unsigned char)(v >> bits);
        }
    }
    if (bits >= 6) return -1; /* a lone trailing character */
    return (long)o;
}


/* ---- UTF-8 (RFC 3629) and IDNA's Punycode (RFC 3492) ---- */

/* One code point of well-formed UTF-8 at s (n bytes left): its value, and
 * its length in *len; -1 for an ill-formed sequence: a stray continuation
 * byte, one cut short, an overlong form, a surrogate (U+D800..DFFF) or a
 * value above U+10FFFF (RFC 3629 3 and 10). */
static long
utf8_decode(const unsigned char *s, size_t n, size_t *len)
{
    static const long min[4] = {0, 0x80, 0x800, 0x10000};
    long v;
    size_t k, i;
    if (n == 0) return -1;
    if (s[0] < 0x80) { *len = 1; return s[0]; }
    if (s[0] < 0xc2 || s[0] > 0xf4) return -1; /* C0/C1 lead bytes are overlong; F5..FF above U+10FFFF */
    k = s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : 4;
    if (n < k) return -1;
    v = s[0] & (0x7f >> k);
    for (i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) return -1;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min[k - 1] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return -1;
    *len = k;
    return v;
}

/* Text for an address or a name: well-formed UTF-8 without control
 * characters (C0, DEL, C1 U+0080..009F: RFC 6532 3.2's UTF8-non-ascii and
 * RFC 5198's advice), so that nothing invisible is matched or stored. */
static int
utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, len;
    while (i < n) {
        long v = utf8_decode(p + i, n - i, &len);
        if (v < 0x20 || v == 0x7f || (v >= 0x80 && v <= 0x9f)) return 0;
        i += len;
    }
    return 1;
}

/* Whether s has no byte above 0x7f. */
static int
ms_is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

/* A lower-case code point where that is cheap: ASCII, Latin-1, Greek and
 * Cyrillic capitals (no other scripts, no full Unicode case folding). */
static long
uc_lower(long v)
{
    if (v >= 'A' && v <= 'Z') return v + 32;
    if ((v >= 0xc0 && v <= 0xde && v != 0xd7) || (v >= 0x391 && v <= 0x3ab && v != 0x3a2) || (v >= 0x410 && v <= 0x42f))
        return v + 32;
    if (v >= 0x400 && v <= 0x40f) return v + 80;
    return v;
}

#define PUNY_BASE 36 /* RFC 3492 5: the parameters for IDNA */
#define PUNY_TMIN 1
#define PUNY_TMAX 26

static uint32_t
puny_adapt(uint32_t delta, uint32_t npoints, int first) /* RFC 3492 6.1 */
{
    uint32_t k = 0;
    delta = first ? delta / 700 : delta / 2; /* damp 700 */
    delta += delta / npoints;
    while (delta > ((PUNY_BASE - PUNY_TMIN) * PUNY_TMAX) / 2) {
        delta /= PUNY_BASE - PUNY_TMIN;
        k += PUNY_BASE;
    }
    return k + (PUNY_BASE - PUNY_TMIN + 1) * delta / (delta + 38); /* skew 38 */
}

static uint32_t
puny_t(uint32_t k, uint32_t bias)
{
    return k <= bias ? PUNY_TMIN : k >= bias + PUNY_TMAX ? PUNY_TMAX : k - bias;
}

/* RFC 3492 6.3: n code points to Punycode (lower-case digits, basic code
 * points as they are), NUL-terminated in out. Its length, or -1 if it does
 * not fit in cap or overflows. */
static int
puny_encode(const uint32_t *cp, size_t n, char *out, size_t cap)
{
    uint32_t m, q, k, t, delta = 0, bias = 72, cur = 128, h, b = 0;
    size_t o = 0, j;
#define PUNY_PUT(ch) do { if (o + 1 >= cap) return -1; out[o++] = (char)(ch); } while (0)
#define PUNY_DIGIT(d) ((d) < 26 ? 'a' + (d) : '0' + (d) - 26)
    for (j = 0; j < n; j++)
        if (cp[j] < 0x80) { PUNY_PUT(cp[j]); b++; }
    h = b;
    if (b > 0) PUNY_PUT('-');
    while (h < n) {
        for (m = UINT32_MAX, j = 0; j < n; j++)
            if (cp[j] >= cur && cp[j] < m) m = cp[j];
        if (m - cur > (UINT32_MAX - delta) / (h + 1)) return -1;
        delta += (m - cur) * (h + 1);
        cur = m;
        for (j = 0; j < n; j++) {
            if (cp[j] < cur && ++delta == 0) return -1;
            if (cp[j] != cur) continue;
            for (q = delta, k = PUNY_BASE;; k += PUNY_BASE) {
                t = puny_t(k, bias);
                if (q < t) break;
                PUNY_PUT(PUNY_DIGIT(t + (q - t) % (PUNY_BASE - t)));
                q = (q - t) / (PUNY_BASE - t);
            }
            PUNY_PUT(PUNY_DIGIT(q));
            bias = puny_adapt(delta, h + 1, h == b);
            delta = 0;
            h++;
        }
        delta++;
        cur++;
    }
#undef PUNY_PUT
#undef PUNY_DIGIT
    out[o] = 0;
    return (int)o;
}

/* RFC 3492 6.2: Punycode (n bytes, without "xn--") to at most cap code
 * points; how many, or -1 if malformed, over cap, or not a Unicode scalar value. */
static int
puny_decode(const char *in, size_t n, uint32_t *cp, size_t cap)
{
    uint32_t i = 0, cur = 128, bias = 72, oldi, w, k, t, d;
    size_t o = 0, b = 0, j;
    for (j = 0; j < n; j++)
        if (in[j] == '-') b = j;
    for (j = 0; j < b; j++) {
        if ((unsigned char)in[j] >= 0x80 || o >= cap) return -1;
        cp[o++] = (unsigned char)in[j];
    }
    for (j = b > 0 ? b + 1 : 0; j < n;) {
        for (oldi = i, w = 1, k = PUNY_BASE;; k += PUNY_BASE) {
            unsigned char ch;
            if (j >= n) return -1;
            ch = (unsigned char)in[j++];
            if (ch >= '0' && ch <= '9') d = ch - '0' + 26u;
            else if (ch >= 'a' && ch <= 'z') d = ch - 'a';
            else if (ch >= 'A' && ch <= 'Z') d = ch - 'A';
            else return -1;
            if (d > (UINT32_MAX - i) / w) return -1;
            i += d * w;
            t = puny_t(k, bias);
            if (d < t) break;
            if (w > UINT32_MAX / (PUNY_BASE - t)) return -1;
            w *= PUNY_BASE - t;
        }
        if (o >= cap) return -1;
        bias = puny_adapt(i - oldi, (uint32_t)o + 1, oldi == 0);
        if (i / (o + 1) > UINT32_MAX - cur) return -1;
        cur += i / ((uint32_t)o + 1);
        i %= (uint32_t)o + 1;
        if (cur > 0x10ffff || (cur >= 0xd800 && cur <= 0xdfff) || cur < 0x80) return -1;
        memmove(cp + i + 1, cp + i, (o - i) * sizeof *cp);
        cp[i++] = cur;
        o++;
    }
    return (int)o;
}

/* Writes code point cp as UTF-8 (1 to 4 bytes): how many. */
static size_t
utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A domain name for people to read: each A-label as its U-label (RFC 3492
 * decoding), the rest as it is. -1 if an A-label does not decode or out
 * (cap bytes) is too small. */
static int
idna_to_unicode(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    while (*in) {
        size_t len = strcspn(in, "."), i;
        uint32_t cp[64];
        int n;
        char u[4];
        if (len > 4 && ms_strncaseeq(in, "xn--", 4) && (n = puny_decode(in + 4, len - 4, cp, 63)) > 0) {
            for (i = 0; i < (size_t)n; i++) {
                size_t k = utf8_put(u, cp[i]);
                if (o + k >= cap) return -1;
                memcpy(out + o, u, k);
                o += k;
            }
        } else if (len > 4 && ms_strncaseeq(in, "xn--", 4)) {
            return -1;
        } else {
            if (o + len >= cap) return -1;
            memcpy(out + o, in, len);
            o += len;
        }
        in += len;
        if (*in == '.') {
            if (o + 1 >= cap) return -1;
            out[o++] = *in++;
        }
    }
    if (o >= cap) return -1;
    out[o] = 0;
    return 0;
}

/*
 * A domain name in the form mailsrv compares and stores: ASCII lower case,
 * each label with non-ASCII characters as its A-label "xn--" + Punycode
 * (RFC 5890 2.3.2.1, RFC 5891 4.4), after the cheap lower-casing of
 * uc_lower. Neither NFC (RFC 5891 5.2) nor IDNA2008's code point tables
 * (RFC 5892) are applied: a name that differs from another only there is
 * another name. An A-label that is given is kept as it is (lower-cased) once
 * it decodes. -1 for ill-formed UTF-8, a control character, an A-label that
 * does not decode, a label over 63 octets or a name over MS_DOMAIN_MAX.
 */
static int
idna_to_ascii(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    const char *p = in;
    if (cap == 0) return -1;
    out[0] = 0;
    while (*p) {
        size_t len = strcspn(p, "."), need, i = 0, l, n = 0;
        char label[64];
        uint32_t cp[64];
        if (len == 0 || len > MS_DOMAIN_MAX || !utf8_valid(p, len)) return -1;
        for (i = 0; i < len && (unsigned char)p[i] < 0x80; i++) {}
        if (i == len) { /* an ASCII label */
            if (len > 63) return -1;
            memcpy(label, p, len);
            label[len] = 0;
            ms_lower(label);
            if (strncmp(label, "xn--", 4) == 0) { /* RFC 5891 5.4: an A-label stands for a non-ASCII U-label */
                long k = puny_decode(label + 4, len - 4, cp, 63);
                while (k > 0 && cp[k - 1] < 0x80) k--;
                if (k <= 0) return -1; /* undecodable, "xn--", or "xn--abc-" (plain "abc") */
            }
        } else {
            for (i = 0; i < len; i += l) {
                long v = utf8_decode((const unsigned char *)p + i, len - i, &l);
                if (n >= 63) return -1;
                cp[n++] = (uint32_t)uc_lower(v);
            }
            memcpy(label, "xn--", 4);
            if (puny_encode(cp, n, label + 4, sizeof label - 4) < 0) return -1;
        }
        need = strlen(label);
        if (o + need + (o ? 1 : 0) >= cap || o + need + (o ? 1 : 0) > MS_DOMAIN_MAX) return -1;
        if (o) out[o++] = '.';
        memcpy(out + o, label, need + 1);
        o += need;
        p += len;
        if (*p == '.' && !*++p) return -1; /* "a." : the caller drops a root dot first */
    }
    return o ? 0 : -1;
}
/* ---- password hashes: $pbkdf2-sha256$ITER$SALT$HASH (base64, no padding) ---- */
#define MS_HASH_PREFIX "$pbkdf2-sha256$"

/* -1 (out empty) if the system's generator failed: no salt is made of anything else. */
static int
pass_hash(const char *pass, unsigned iter, char *out, size_t n)
{
    unsigned char salt[16], dk[32];
    char s64[32], h64[48];
    if (n) out[0] = 0;
    if (os_random(salt, sizeof salt) != 0) return -1;
    pbkdf2_sha256(pass, salt, sizeof salt, iter, dk);
    b64_encode(salt, sizeof salt, s64, 0);
    b64_encode(dk, sizeof dk, h64, 0);
    snprintf(out, n, MS_HASH_PREFIX "%u$%s$%s", iter, s64, h64);
    return 0;
}

static int
pass_is_hash(const char *stored)
{
    return strncmp(stored, MS_HASH_PREFIX, sizeof MS_HASH_PREFIX - 1) == 0;
}

/* Parses a stored hash; 0 if well formed. */
static int
pass_parse_hash(const char *stored, unsigned *iter, unsigned char *salt, size_t *saltlen,
                unsigned char hash[32])
{
    const char *p = stored + sizeof MS_HASH_PREFIX - 1, *d1, *d2;
    char *end;
    unsigned long it;
    long sl, hl;
    if (!pass_is_hash(stored)) return -1;
    it = strtoul(p, &end, 10);
    if (end == p || *end != '$' || it < 1 || it > 10000000UL) return -1;
    d1 = end + 1;
    d2 = strchr(d1, '$');
    if (!d2) return -1;
    sl = b64_decode(d1, (size_t)(d2 - d1), salt, 64);
    hl = b64_decode(d2 + 1, strlen(d2 + 1), hash, 32);
    if (sl < 1 || hl != 32) return -1;
    *iter = (unsigned)it;
    *saltlen = (size_t)sl;
    return 0;
}

/* What a login checks against: a hash from the INI, or one made at load from
 * an INI plain-text password, so that every login costs one PBKDF2. */
struct pass_key { unsigned iter; size_t saltlen; unsigned char salt[64], dk[32]; };

static void
pass_key_make(const char *pass, unsigned iter, struct pass_key *k)
{
    /* A fixed salt: this key never leaves memory, where the plain-text
     * password lies beside it, so a random one would protect nothing (and
     * the generator is kept for what it does protect: os_random). */
    static const char salt[16] = "mailsrv-in-mem.";
    k->iter = iter;
    k->saltlen = sizeof salt;
    memcpy(k->salt, salt, sizeof salt);
    pbkdf2_sha256(pass, k->salt, k->saltlen, iter, k->dk);
}

/* A hash from the INI; 0 if well formed. */
static int
pass_key_parse(const char *stored, struct pass_key *k)
{
    return pass_parse_hash(stored, &k->iter, k->salt, &k->saltlen, k->dk);
}

/* The one rule for new passwords: `mailsrv add` and `mailsrv passwd`. */
static const char *
pass_policy(const char *p)
{
    int up = 0, lo = 0, dig = 0;
    const char *s;
    if (strlen(p) < 8) return "the password needs at least 8 characters";
    for (s = p; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f) return "the password contains a control character";
        if (isupper(c)) up = 1;
        if (islower(c)) lo = 1;
        if (isdigit(c)) dig = 1;
    }
    if (!up || !lo || !dig) return "the password needs upper case, lower case and a digit";
    return NULL;
}

/*==== 5. Config ====*/
/*
 * The inih callback fills a struct ms_config; cfg_validate() then checks what
 * needs the whole file (postmaster, alias members). A reload builds a new
 * config and swaps it in only if it is valid. Sessions never keep pointers
 * into the config, so a swap is safe at any time.
 */

enum { STORE_MAILDIR, STORE_MBOX };
enum { UIDL_DOVECOT, UIDL_SHORT }; /* pop3_uidl */
enum { PT_NO, PT_YES, PT_LOCAL };
enum { SL_OFF, SL_STRICT };
enum { RTLS_NO, RTLS_YES, RTLS_VERIFY };

/* family MS_AF_LOCAL: addr is a Unix socket's path (port 0) */
struct cfg_listen { int proto; int tls; int family; char addr[108]; unsigned port; int optional; };
struct cfg_user {
    char *name; char *pass; int line;
    struct pass_key key; int has_key;  /* pass as a hash; plain text is hashed at load (ms_install_config) */
};
struct cfg_alias { char *name; char *members; int line; };
struct cfg_domain {
    char *name;
    struct cfg_user *users; int nusers;
    struct cfg_alias *aliases; int naliases;
    int line, alias_line;
};

struct cfg_net { int family; unsigned char ip[16]; int bits; };
struct cfg_hop { char host[MS_DOMAIN_MAX + 1]; unsigned port; };  /* host: a name or a numeric address */
struct cfg_route { char *domain; struct cfg_hop hop; };
enum { LIST_POST_MEMBERS, LIST_POST_ANYONE, LIST_POST_OWNER };
struct cfg_list {
    char name[MS_LOCAL_MAX + 1], domain[MS_DOMAIN_MAX + 1];  /* lower case */
    char owner[MS_PATH_MAX];
    int post, reply_to_list;
    char subject_prefix[64];
    long bounce_limit;
    int line;
};

struct ms_config {
    char *path;            /* as given, for messages */
    char *dir;             /* the INI's folder: base of relative paths */
    char hostname[256];
    struct cfg_listen listen[MS_MAX_LISTENERS]; int nlisten;
    int storage;
    char spool[1024];
    int64_t max_message_size;
    long max_recipients, max_clients, max_per_ip, timeout;
    long max_connect_rate, max_junk_commands, max_session_time;
    int plaintext_auth, sender_login, capture, allow_root;
    int pop3_uidl;         /* UIDL_DOVECOT or UIDL_SHORT: what a Maildir message's UIDL is (mdir_uidl_len) */
    char log[1024];        /* the log file ("": standard error), reopened at each reload */
    char admins[1024];     /* addresses whose HTTP login sees every mailbox, comma-separated, lower case */
    char public_host[256]; /* the name mail clients are told to use (HTTP client setup); "": the address reached */
    char user[64];         /* Unix: the account to run as once the ports are bound */
    struct cfg_domain *domains; int ndomains;
    /* relay */
    char queue[1024];
    struct cfg_net relay_nets[MS_RELAY_NETS_MAX]; int nrelay_nets;
    struct cfg_hop smarthost;  /* host[0] == 0: deliver by MX */
    char dns[MS_DNS_MAX_NS][64]; int ndns; unsigned dns_port[MS_DNS_MAX_NS];
    long relay_port, retry, expire, max_outbound, relay_timeout;
    char helo[256];
    struct cfg_route *routes; int nroutes;
    struct cfg_list *lists; int nlists;
    /* TLS */
    char tls_cert[1024], tls_key[1024], ca_file[1024];
    int relay_tls;
    struct tls_creds *tls, *ca;  /* loaded by cfg_validate; shared with sessions */
    struct buf errors;     /* "FILE:LINE: reason\n" lines */
    int nerrors;
};

static void
cfg_error(struct ms_config *c, int line, const char *fmt, ...)
{
    va_list ap;
    if (line > 0) buf_printf(&c->errors, "%s:%d: ", c->path, line);
    else buf_printf(&c->errors, "%s: ", c->path);
    va_start(ap, fmt);
    buf_vprintf(&c->errors, fmt, ap);
    va_end(ap);
    buf_adds(&c->errors, "\n");
    c->nerrors++;
}

/* ---- value parsers: 0 on success, else a reason in err ---- */
typedef int (*cfg_parse_fn)(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n);

static int
cfg_parse_str(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    (void)c;
    if (!*v || ms_strlcpy(dst, v, (size_t)arg) != 0) { snprintf(err, n, "empty or too long"); return -1; }
    return 0;
}

/* Sizes: bytes with an optional K (1024) or M suffix. */
static int
cfg_parse_size(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    char *end;
    unsigned long long x;
    (void)c; (void)arg;
    errno = 0;
    x = strtoull(v, &end, 10);
    if (end == v || errno || *v == '-') goto bad;
    if (*end == 'K' || *end == 'k') { x *= 1024; end++; }
    else if (*end == 'M' || *end == 'm') { x *= 1024 * 1024; end++; }
    if (*end || x < 1024 || x > (1ULL << 40)) goto bad;
    *(int64_t *)dst = (int64_t)x;
    return 0;
bad:
    snprintf(err, n, "'%s' is not a size (a number of bytes of at least 1K, with optional K or M)", v);
    return -1;
}

static int
cfg_parse_count(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    char *end;
    long x;
    (void)c;
    errno = 0;
    x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < 1 || x > arg) {
        snprintf(err, n, "'%s' is not a number from 1 to %ld", v, arg);
        return -1;
    }
    *(long *)dst = x;
    return 0;
}

/* Times: seconds, or with an s/m/h/d suffix. */
static int
cfg_parse_time(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    char *end;
    long x, mul = 1;
    (void)c; (void)arg;
    errno = 0;
    x = strtol(v, &end, 10);
    if (*end == 's') end++;
    else if (*end == 'm') { mul = 60; end++; }
    else if (*end == 'h') { mul = 3600; end++; }
    else if (*end == 'd') { mul = 86400; end++; }
    if (end == v || *end || errno || x < 1 || x > 365L * 86400 / mul) {
        snprintf(err, n, "'%s' is not a time (seconds, or with s/m/h/d)", v);
        return -1;
    }
    *(long *)dst = x * mul;
    return 0;
}

/* Keyword values: arg picks the word list; the value stored is the word's index. */
enum { CH_BOOL, CH_STORAGE, CH_PLAINTEXT, CH_SENDER_LOGIN, CH_RELAY_TLS, CH_LIST_POST, CH_REPLY_TO, CH_POP3_UIDL };
static const char *const *const cfg_choices[] = {
    (const char *const[]){"no", "yes", NULL},
    (const char *const[]){"maildir", "mbox", NULL},        /* STORE_* */
    (const char *const[]){"no", "yes", "local", NULL},     /* PT_* */
    (const char *const[]){"off", "strict", NULL},          /* SL_* */
    (const char *const[]){"no", "yes", "verify", NULL},    /* RTLS_* */
    (const char *const[]){"members", "anyone", "owner", NULL}, /* LIST_POST_* */
    (const char *const[]){"sender", "list", NULL},
    (const char *const[]){"dovecot", "short", NULL},       /* UIDL_* */
};

static int
cfg_parse_choice(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    const char *const *names = cfg_choices[arg];
    int i;
    (void)c;
    for (i = 0; names[i]; i++)
        if (ms_strcaseeq(v, names[i])) { *(int *)dst = i; return 0; }
    snprintf(err, n, "'%s' is not one of:", v);
    for (i = 0; names[i]; i++) {
        size_t l = strlen(err);
        snprintf(err + l, n - l, " %s", names[i]);
    }
    return -1;
}

/* proto may carry MS_LISTEN_TLS. */
static int
cfg_add_listen(struct ms_config *c, int proto, int family, const char *addr, unsigned port, int optional)
{
    struct cfg_listen *l;
    if (c->nlisten >= MS_MAX_LISTENERS) return -1;
    l = &c->listen[c->nlisten++];
    l->proto = proto & 0xff;
    l->tls = (proto & MS_LISTEN_TLS) != 0;
    l->family = family;
    ms_strlcpy(l->addr, addr, sizeof l->addr);
    l->port = port;
    l->optional = optional;
    return 0;
}

/* "ADDR:PORT, [V6]:PORT, :PORT" - addresses are numeric (no DNS here). */
static int
cfg_parse_listen(struct ms_config *c, const char *v, void *dst, long proto, char *err, size_t n)
{
    char tmp[256], *item, *save = NULL;
    (void)dst;
    if (ms_strlcpy(tmp, v, sizeof tmp) != 0) { snprintf(err, n, "too long"); return -1; }
    for (save = tmp; (item = ms_next_item(&save, ',')) != NULL;) {
        char *s = ms_trim(item), *colon, *host, *end;
        unsigned long port;
        unsigned char abuf[16];
        int family;
        if (*s == '[') {
            char *rb = strchr(s, ']');
            if (!rb || rb[1] != ':') goto bad;
            *rb = 0;
            host = s + 1;
            colon = rb + 1;
        } else {
            colon = strrchr(s, ':');
            if (!colon) goto bad;
            *colon = 0;
            host = s;
        }
        port = strtoul(colon + 1, &end, 10);
        if (end == colon + 1 || *end || port < 1 || port > 65535) goto bad;
        if (!*host) {
            if (cfg_add_listen(c, (int)proto, AF_INET, "0.0.0.0", (unsigned)port, 0) ||
                cfg_add_listen(c, (int)proto, AF_INET6, "::", (unsigned)port, 1))
                goto many;
            continue;
        }
        if (inet_pton(AF_INET, host, abuf) == 1) family = AF_INET;
        else if (inet_pton(AF_INET6, host, abuf) == 1) family = AF_INET6;
        else if (ms_strcaseeq(host, "localhost")) { host = "127.0.0.1"; family = AF_INET; }
        else { snprintf(err, n, "'%s' is not a numeric IPv4 or [IPv6] address", host); return -1; }
        if (cfg_add_listen(c, (int)proto, family, host, (unsigned)port, 0)) goto many;
    }
    return 0;
bad:
    snprintf(err, n, "'%s' is not a list of [address]:port", v);
    return -1;
many:
    snprintf(err, n, "more than %d listeners", MS_MAX_LISTENERS);
    return -1;
}

/* lmtp: listeners as cfg_parse_listen's, and absolute paths: Unix sockets
 * (POSIX only; on Windows a path is an error at its line). */
static int
cfg_parse_lmtp(struct ms_config *c, const char *v, void *dst, long proto, char *err, size_t n)
{
    char tmp[256], *item, *save;
    if (ms_strlcpy(tmp, v, sizeof tmp) != 0) { snprintf(err, n, "too long"); return -1; }
    for (save = tmp; (item = ms_next_item(&save, ',')) != NULL;) {
        char *s = ms_trim(item);
        if (!os_path_is_absolute(s) && s[0] != '/') {
            if (cfg_parse_listen(c, s, dst, proto, err, n) != 0) return -1;
            continue;
        }
        if (MS_AF_LOCAL < 0) {
            snprintf(err, n, "'%s': a Unix socket path, which Windows does not have: give an address:port", s);
            return -1;
        }
        if (strlen(s) >= 104) { /* sun_path: 104 octets on BSD and macOS, 108 on Linux, with its NUL */
            snprintf(err, n, "'%s': a Unix socket path must be under 104 octets", s);
            return -1;
        }
        if (cfg_add_listen(c, (int)proto, MS_AF_LOCAL, s, 0, 0)) {
            snprintf(err, n, "more than %d listeners", MS_MAX_LISTENERS);
            return -1;
        }
    }
    return 0;
}

static int
cfg_parse_path(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    int r;
    if (!*v) { snprintf(err, n, "empty path"); return -1; }
    if (os_path_is_absolute(v) || !c->dir[0]) r = ms_fmt(dst, (size_t)arg, "%s", v);
    else r = ms_fmt(dst, (size_t)arg, "%s/%s", c->dir, v);
    if (r < 0) { snprintf(err, n, "path too long"); return -1; }
    return 0;
}

/* "host[:port]", "[v6]:port" or a bare v6 address; host is a name or numeric. */
static int
cfg_parse_hop(const char *v, struct cfg_hop *h, unsigned def_port)
{
    char tmp[300], *host = tmp, *portp = NULL, *end;
    unsigned char ip[16];
    unsigned long p = def_port;
    if (ms_strlcpy(tmp, v, sizeof tmp) != 0) return -1;
    if (tmp[0] == '[') {
        char *rb = strchr(tmp, ']');
        if (!rb || (rb[1] && rb[1] != ':')) return -1;
        *rb = 0;
        host = tmp + 1;
        if (rb[1]) portp = rb + 2;
        if (inet_pton(AF_INET6, host, ip) != 1) return -1;
    } else if (inet_pton(AF_INET6, tmp, ip) != 1) {
        char *colon = strchr(tmp, ':');
        if (colon) { *colon = 0; portp = colon + 1; }
        if (inet_pton(AF_INET, host, ip) != 1 && !cfg_valid_domain(host)) return -1;
    }
    if (portp) {
        p = strtoul(portp, &end, 10);
        if (end == portp || *end || p < 1 || p > 65535) return -1;
    }
    if (ms_strlcpy(h->host, host, sizeof h->host) != 0) return -1;
    h->port = (unsigned)p;
    return 0;
}

static int
cfg_parse_smarthost(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    (void)c; (void)arg;
    if (!*v) { ((struct cfg_hop *)dst)->host[0] = 0; return 0; }
    if (cfg_parse_hop(v, dst, 25) == 0) return 0;
    snprintf(err, n, "'%s' is not host[:port]", v);
    return -1;
}

/* Resolvers: "ip[:port]" list, numeric only; empty = the system's. */
static int
cfg_parse_dns(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    char tmp[256], *item, *save;
    (void)dst; (void)arg;
    c->ndns = 0;
    if (ms_strlcpy(tmp, v, sizeof tmp) != 0) goto bad;
    for (save = tmp; (item = ms_next_item(&save, ',')) != NULL;) {
        struct cfg_hop h;
        struct ms_addr a;
        char *it = ms_trim(item);
        if (!*it) continue;
        if (c->ndns == MS_DNS_MAX_NS || cfg_parse_hop(it, &h, 53) != 0 || net_addr_parse(h.host, h.port, &a) != 0)
            goto bad;
        ms_strlcpy(c->dns[c->ndns], h.host, sizeof c->dns[0]);
        c->dns_port[c->ndns++] = h.port;
    }
    return 0;
bad:
    snprintf(err, n, "'%s' is not a list of up to %d numeric ip[:port]", v, MS_DNS_MAX_NS);
    return -1;
}

/* "127.0.0.0/8, ::1, 192.168.0.0/16"; empty = nobody relays without AUTH. */
/* admins = ADDRESS, ...: mailboxes whose HTTP login sees every mailbox. */
static int
cfg_parse_admins(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    char tmp[1024], *item, *cur = tmp;
    (void)c;
    if (ms_strlcpy(tmp, v, sizeof tmp) != 0 || ms_strlcpy(dst, "", (size_t)arg) != 0) { snprintf(err, n, "too long"); return -1; }
    while ((item = ms_next_item(&cur, ',')) != NULL) {
        const char *at = strrchr(item = ms_trim(item), '@');
        if (!*item) continue;
        if (!at || at == item || !at[1]) { snprintf(err, n, "'%s' is not an address (user@domain)", item); return -1; }
        ms_lower(item);
        if (*(char *)dst) strcat(dst, ",");
        strcat(dst, item);
    }
    return 0;
}

static int
cfg_parse_nets(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    char tmp[1024], *item, *save;
    (void)dst; (void)arg;
    c->nrelay_nets = 0;
    if (ms_strlcpy(tmp, v, sizeof tmp) != 0) { snprintf(err, n, "too long"); return -1; }
    for (save = tmp; (item = ms_next_item(&save, ',')) != NULL;) {
        char *it = ms_trim(item), *slash = strchr(it, '/'), *end;
        struct ms_addr a;
        struct cfg_net *net;
        long bits;
        if (!*it) continue;
        if (slash) *slash = 0;
        if (net_addr_parse(it, 0, &a) != 0) goto bad;
        bits = a.family == AF_INET ? 32 : 128;
        if (slash) {
            long max = bits;
            bits = strtol(slash + 1, &end, 10);
            if (end == slash + 1 || *end || bits < 0 || bits > max) goto bad;
        }
        if (c->nrelay_nets == MS_RELAY_NETS_MAX) { snprintf(err, n, "more than %d networks", MS_RELAY_NETS_MAX); return -1; }
        net = &c->relay_nets[c->nrelay_nets++];
        net->family = a.family;
        memcpy(net->ip, a.ip, 16);
        net->bits = (int)bits;
    }
    return 0;
bad:
    snprintf(err, n, "'%s' is not a list of networks (address or address/bits)", v);
    return -1;
}

static int
cfg_parse_optstr(struct ms_config *c, const char *v, void *dst, long arg, char *err, size_t n)
{
    (void)c;
    if (ms_strlcpy(dst, v, (size_t)arg) != 0) { snprintf(err, n, "too long"); return -1; }
    return 0;
}

/* Keys of [server], [relay] and [list]: adding a key is one line here plus a field. */
struct cfg_key {
    const char *name;
    cfg_parse_fn parse;
    size_t off;
    long arg;
};
static const struct cfg_key cfg_relay_keys[] = {
    {"smarthost", cfg_parse_smarthost, offsetof(struct ms_config, smarthost), 0},
    {"dns", cfg_parse_dns, 0, 0},
    {"port", cfg_parse_count, offsetof(struct ms_config, relay_port), 65535},
    {"retry", cfg_parse_time, offsetof(struct ms_config, retry), 0},
    {"expire", cfg_parse_time, offsetof(struct ms_config, expire), 0},
    {"helo", cfg_parse_optstr, offsetof(struct ms_config, helo), 256},
    {"max_outbound", cfg_parse_count, offsetof(struct ms_config, max_outbound), 1000},
    {"timeout", cfg_parse_time, offsetof(struct ms_config, relay_timeout), 0},
    {"tls", cfg_parse_choice, offsetof(struct ms_config, relay_tls), CH_RELAY_TLS},
    {"ca_file", cfg_parse_path, offsetof(struct ms_config, ca_file), 1024},
    {NULL, NULL, 0, 0},
};
static const struct cfg_key cfg_list_keys[] = {
    {"owner", cfg_parse_str, offsetof(struct cfg_list, owner), MS_PATH_MAX},
    {"post", cfg_parse_choice, offsetof(struct cfg_list, post), CH_LIST_POST},
    {"reply_to", cfg_parse_choice, offsetof(struct cfg_list, reply_to_list), CH_REPLY_TO},
    {"subject_prefix", cfg_parse_optstr, offsetof(struct cfg_list, subject_prefix), 64},
    {"bounce_limit", cfg_parse_count, offsetof(struct cfg_list, bounce_limit), 1000},
    {NULL, NULL, 0, 0},
};
static const struct cfg_key cfg_server_keys[] = {
    {"hostname", cfg_parse_str, offsetof(struct ms_config, hostname), 256},
    {"smtp", cfg_parse_listen, 0, PROTO_SMTP},
    {"submission", cfg_parse_listen, 0, PROTO_SUBMISSION},
    {"pop3", cfg_parse_listen, 0, PROTO_POP3},
    {"smtps", cfg_parse_listen, 0, PROTO_SUBMISSION | MS_LISTEN_TLS}, /* RFC 8314: submission over TLS */
    {"pop3s", cfg_parse_listen, 0, PROTO_POP3 | MS_LISTEN_TLS},
    {"http", cfg_parse_listen, 0, PROTO_HTTP},
    {"https", cfg_parse_listen, 0, PROTO_HTTP | MS_LISTEN_TLS},
    {"lmtp", cfg_parse_lmtp, 0, PROTO_LMTP}, /* RFC 2033: local delivery from another MTA */
    {"admins", cfg_parse_admins, offsetof(struct ms_config, admins), 1024},
    {"public_host", cfg_parse_optstr, offsetof(struct ms_config, public_host), 256},
    {"tls_cert", cfg_parse_path, offsetof(struct ms_config, tls_cert), 1024},
    {"tls_key", cfg_parse_path, offsetof(struct ms_config, tls_key), 1024},
    {"storage", cfg_parse_choice, offsetof(struct ms_config, storage), CH_STORAGE},
    {"spool", cfg_parse_path, offsetof(struct ms_config, spool), 1024},
    {"max_message_size", cfg_parse_size, offsetof(struct ms_config, max_message_size), 0},
    {"max_recipients", cfg_parse_count, offsetof(struct ms_config, max_recipients), 100000},
    {"max_clients", cfg_parse_count, offsetof(struct ms_config, max_clients), 100000},
    {"max_per_ip", cfg_parse_count, offsetof(struct ms_config, max_per_ip), 100000},
    {"max_connect_rate", cfg_parse_count, offsetof(struct ms_config, max_connect_rate), 100000},
    {"max_junk_commands", cfg_parse_count, offsetof(struct ms_config, max_junk_commands), 100000},
    {"max_session_time", cfg_parse_time, offsetof(struct ms_config, max_session_time), 0},
    {"timeout", cfg_parse_time, offsetof(struct ms_config, timeout), 0},
    {"plaintext_auth", cfg_parse_choice, offsetof(struct ms_config, plaintext_auth), CH_PLAINTEXT},
    {"sender_login", cfg_parse_choice, offsetof(struct ms_config, sender_login), CH_SENDER_LOGIN},
    {"capture", cfg_parse_choice, offsetof(struct ms_config, capture), CH_BOOL},
    {"queue", cfg_parse_path, offsetof(struct ms_config, queue), 1024},
    {"relay_networks", cfg_parse_nets, 0, 0},
    {"user", cfg_parse_optstr, offsetof(struct ms_config, user), 64},
    {"allow_root", cfg_parse_choice, offsetof(struct ms_config, allow_root), CH_BOOL},
    {"pop3_uidl", cfg_parse_choice, offsetof(struct ms_config, pop3_uidl), CH_POP3_UIDL},
    {"log", cfg_parse_path, offsetof(struct ms_config, log), 1024},
    {NULL, NULL, 0, 0},
};

/* A local part or domain label that is safe as one path component: ASCII,
 * or well-formed UTF-8 without control characters where file names can be
 * UTF-8 (MS_UTF8_NAMES). */
static int
cfg_safe_component(const char *s, size_t max)
{
    size_t n = strlen(s), i;
    if (n == 0 || n > max || s[0] == '.') return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch == 0x7f || ch == '/' || ch == '\\' || ch == ':' || ch == '"' ||
            ch == '*' || ch == '?' || ch == '<' || ch == '>' || ch == '|' || ch == '@' ||
            ch == ',' || ch == ';' || ch == '%' || ch == '!' || ch == '(' || ch == ')' ||
            ch == '[' || ch == ']')
            return 0;
        if (ch == '.' && s[i + 1] == '.') return 0;
    }
    return ms_is_ascii(s) || (MS_UTF8_NAMES && utf8_valid(s, n)); /* UTF-8 names: RFC 6531 3.3 */
}

static int
cfg_valid_domain(const char *s)
{
    size_t i, n = strlen(s);
    if (n == 0 || n > MS_DOMAIN_MAX || s[0] == '.' || s[0] == '-' || s[n - 1] == '.') return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(isalnum(ch) || ch == '-' || ch == '.' || ch == '_')) return 0;
        if (ch == '.' && s[i + 1] == '.') return 0;
    }
    return 1;
}

static struct cfg_domain *
cfg_find_domain(const struct ms_config *c, const char *name)
{
    char a[MS_DOMAIN_MAX + 1];
    int i;
    size_t n = strlen(name);
    if (n && name[n - 1] == '.') n--; /* "example.org." is the same domain */
    if (!ms_is_ascii(name)) { /* a U-label: the domain of its A-label (domains are kept so: cfg_domain_for_section) */
        char u[MS_DOMAIN_MAX + 1];
        if (n > MS_DOMAIN_MAX) return NULL;
        memcpy(u, name, n);
        u[n] = 0;
        if (idna_to_ascii(u, a, sizeof a) != 0) return NULL;
        name = a;
        n = strlen(a);
    }
    for (i = 0; i < c->ndomains; i++)
        if (strlen(c->domains[i].name) == n && ms_strncaseeq(c->domains[i].name, name, n))
            return &c->domains[i];
    return NULL;
}

static struct cfg_user *
cfg_find_user(const struct cfg_domain *d, const char *name)
{
    int i;
    for (i = 0; i < d->nusers; i++)
        if (ms_strcaseeq(d->users[i].name, name)) return &d->users[i];
    return NULL;
}

static struct cfg_alias *
cfg_find_alias(const struct cfg_domain *d, const char *name)
{
    int i;
    for (i = 0; i < d->naliases; i++)
        if (ms_strcaseeq(d->aliases[i].name, name)) return &d->aliases[i];
    return NULL;
}

/* The addresses of a list (as in ezmlm and mlmmj): NAME for posts, and
 * NAME-subscribe, -unsubscribe, -help, -confirm-TOKEN, -bounces, -owner. */
enum { LK_POST, LK_SUBSCRIBE, LK_UNSUBSCRIBE, LK_HELP, LK_CONFIRM, LK_BOUNCES, LK_OWNER };
static const char *const list_suffixes[] = {"", "-subscribe", "-unsubscribe", "-help", "-confirm-", "-bounces", "-owner"};

/* Whether local@domain is an address of list l, and which (*kind). For
 * LK_CONFIRM, token gets the rest of the local part (maybe not a valid code). */
static int
list_is_address(const struct cfg_list *l, const char *local, const char *domain, int *kind, char *token, size_t tn)
{
    size_t n = strlen(l->name), dn = strlen(domain);
    int k;
    if (dn && domain[dn - 1] == '.') dn--;
    if (strlen(l->domain) != dn || !ms_strncaseeq(l->domain, domain, dn) || !ms_strncaseeq(local, l->name, n)) return 0;
    for (k = LK_POST; k <= LK_OWNER; k++) {
        const char *rest = local + n, *suf = list_suffixes[k];
        size_t sn = strlen(suf);
        if (k == LK_CONFIRM ? !ms_strncaseeq(rest, suf, sn) || !rest[sn] : !ms_strcaseeq(rest, suf)) continue;
        *kind = k;
        if (token && ms_strlcpy(token, k == LK_CONFIRM ? rest + sn : "", tn) != 0) token[0] = 0;
        return 1;
    }
    return 0;
}

static const struct cfg_list *
list_match(const struct ms_config *c, const char *local, const char *domain, int *kind, char *token, size_t tn)
{
    char a[MS_DOMAIN_MAX + 1];
    int i;
    if (!ms_is_ascii(domain)) { /* an IDN: lists are kept by the A-label (cfg_list_for_section) */
        size_t n = strlen(domain);
        char u[MS_DOMAIN_MAX + 1];
        if (n && domain[n - 1] == '.') n--;
        if (n > MS_DOMAIN_MAX) return NULL;
        memcpy(u, domain, n);
        u[n] = 0;
        if (idna_to_ascii(u, a, sizeof a) != 0) return NULL;
        domain = a;
    }
    for (i = 0; i < c->nlists; i++)
        if (list_is_address(&c->lists[i], local, domain, kind, token, tn)) return &c->lists[i];
    return NULL;
}

static struct cfg_domain *
cfg_domain_for_section(struct ms_config *c, const char *dname, int line)
{
    struct cfg_domain *d = cfg_find_domain(c, dname);
    char low[MS_DOMAIN_MAX + 1];
    if (d) return d;
    /* an IDN in either form is kept as its lower-case A-label (idna_to_ascii): one name, one folder */
    if (idna_to_ascii(dname, low, sizeof low) != 0 || !cfg_valid_domain(low)) {
        cfg_error(c, line, "'%s' is not a valid domain name", dname);
        return NULL;
    }
    c->domains = xrealloc(c->domains, sizeof *c->domains * (size_t)(c->ndomains + 1));
    d = &c->domains[c->ndomains++];
    memset(d, 0, sizeof *d);
    d->name = xstrdup(low);
    d->line = line;
    return d;
}

/* "[list NAME@DOMAIN]": the list, made on its first key with the defaults. */
static struct cfg_list *
cfg_list_for_section(struct ms_config *c, const char *addr, int line)
{
    char local[MS_PATH_MAX], dom[MS_DOMAIN_MAX + 1], *at;
    struct cfg_list *l;
    int i;
    while (*addr == ' ') addr++;
    if (ms_strlcpy(local, addr, sizeof local) != 0 || !(at = strrchr(local, '@'))) goto bad;
    *at = 0;
    ms_lower(local);
    /* an IDN: its A-label, as [domain] keeps it */
    if (idna_to_ascii(at + 1, dom, sizeof dom) != 0 || (size_t)(at + 1 - local) + strlen(dom) >= sizeof local) goto bad;
    strcpy(at + 1, dom);
    if (!cfg_safe_component(local, MS_LIST_NAME_MAX) || !cfg_valid_domain(at + 1)) goto bad;
    for (i = 0; i < c->nlists; i++)
        if (strcmp(c->lists[i].name, local) == 0 && strcmp(c->lists[i].domain, at + 1) == 0) return &c->lists[i];
    c->lists = xrealloc(c->lists, sizeof *c->lists * (size_t)(c->nlists + 1));
    l = &c->lists[c->nlists++];
    memset(l, 0, sizeof *l);
    ms_strlcpy(l->name, local, sizeof l->name);
    ms_strlcpy(l->domain, at + 1, sizeof l->domain);
    l->bounce_limit = 5;
    l->line = line;
    return l;
bad:
    cfg_error(c, line, "[list %s]: not a list address (NAME@DOMAIN, NAME at most %d characters)", addr,
              MS_LIST_NAME_MAX);
    return NULL;
}

static void
cfg_set_key(struct ms_config *c, const struct cfg_key *k, void *base, const char *section, const char *name,
            const char *value, int line)
{
    char err[256];
    for (; k->name; k++) {
        if (!ms_strcaseeq(name, k->name)) continue;
        err[0] = 0;
        if (k->parse(c, value, (char *)base + k->off, k->arg, err, sizeof err) != 0)
            cfg_error(c, line, "%s: %s", k->name, err);
        return;
    }
    cfg_error(c, line, "unknown key '%s' in [%s]", name, section);
}

/* inih keeps 49 characters of a section or key name (its MAX_SECTION and
 * MAX_NAME are 50) and silently drops the rest: such a name is refused. Its
 * line buffer (INI_MAX_LINE, 200) takes 198 characters and the line end. */
#define MS_INI_NAME_MAX 48
#define MS_INI_LINE_MAX 198

static int
cfg_on_key(void *user, const char *section, const char *name, const char *value, int line)
{
    struct ms_config *c = user;
    if (strlen(section) > MS_INI_NAME_MAX || strlen(name) > MS_INI_NAME_MAX) {
        cfg_error(c, line, "'%s' is too long: section and key names have at most %d characters here (inih cuts them)",
                  strlen(section) > MS_INI_NAME_MAX ? section : name, MS_INI_NAME_MAX);
    } else if (ms_strcaseeq(section, "server")) {
        cfg_set_key(c, cfg_server_keys, c, section, name, value, line);
    } else if (ms_strcaseeq(section, "relay")) {
        cfg_set_key(c, cfg_relay_keys, c, section, name, value, line);
    } else if (ms_strncaseeq(section, "list ", 5)) {
        struct cfg_list *l = cfg_list_for_section(c, section + 5, line);
        if (l) cfg_set_key(c, cfg_list_keys, l, section, name, value, line);
    } else if (ms_strcaseeq(section, "route")) {
        struct cfg_route r;
        int i;
        char a[MS_DOMAIN_MAX + 1];
        if (idna_to_ascii(name, a, sizeof a) != 0 || !cfg_valid_domain(a)) {
            cfg_error(c, line, "'%s' is not a valid domain name", name);
            return 1;
        }
        if (cfg_parse_hop(value, &r.hop, 25) != 0) { cfg_error(c, line, "route for %s: '%s' is not host[:port]", name, value); return 1; }
        for (i = 0; i < c->nroutes; i++)
            if (strcmp(c->routes[i].domain, a) == 0) { cfg_error(c, line, "a second route for %s", name); return 1; }
        r.domain = xstrdup(a); /* the A-label of an IDN, lower case, as addr_remote_domain makes a recipient's */
        c->routes = xrealloc(c->routes, sizeof *c->routes * (size_t)(c->nroutes + 1));
        c->routes[c->nroutes++] = r;
    } else if (ms_strncaseeq(section, "domain ", 7) || ms_strncaseeq(section, "alias ", 6)) {
        int is_alias = section[0] == 'a' || section[0] == 'A';
        const char *dname = section + (is_alias ? 6 : 7);
        struct cfg_domain *d;
        char key[MS_LOCAL_MAX + 1];
        while (*dname == ' ') dname++;
        if (!(d = cfg_domain_for_section(c, dname, line))) return 1;
        if (ms_strlcpy(key, name, sizeof key) != 0 ||
            !(cfg_safe_component(key, MS_LOCAL_MAX) || (is_alias && strcmp(key, "*") == 0))) {
            cfg_error(c, line, "'%s' is not a valid local part", name);
            return 1;
        }
        ms_lower(key);
        if (cfg_find_user(d, key) || cfg_find_alias(d, key)) {
            cfg_error(c, line, "'%s@%s' is defined twice", key, d->name);
            return 1;
        }
        if (!*value) {
            cfg_error(c, line, "'%s' has no %s", key, is_alias ? "members" : "password");
            return 1;
        }
        if (is_alias) {
            d->aliases = xrealloc(d->aliases, sizeof *d->aliases * (size_t)(d->naliases + 1));
            d->aliases[d->naliases].name = xstrdup(key);
            d->aliases[d->naliases].members = xstrdup(value);
            d->aliases[d->naliases++].line = line;
            if (!d->alias_line) d->alias_line = line;
        } else {
            struct cfg_user *u;
            struct pass_key k;
            if (pass_is_hash(value) && pass_key_parse(value, &k) != 0) {
                cfg_error(c, line, "the password hash of '%s' is malformed", key);
                return 1;
            }
            d->users = xrealloc(d->users, sizeof *d->users * (size_t)(d->nusers + 1));
            u = &d->users[d->nusers++];
            memset(u, 0, sizeof *u);
            u->name = xstrdup(key);
            u->pass = xstrdup(value);
            u->line = line;
            if ((u->has_key = pass_is_hash(value)) != 0) u->key = k;
        }
    } else {
        cfg_error(c, line, "unknown section [%s]", section);
    }
    return 1;
}

static void
cfg_free(struct ms_config *c)
{
    int i, j;
    if (!c) return;
    for (i = 0; i < c->ndomains; i++) {
        struct cfg_domain *d = &c->domains[i];
        for (j = 0; j < d->nusers; j++) { free(d->users[j].name); free(d->users[j].pass); }
        for (j = 0; j < d->naliases; j++) { free(d->aliases[j].name); free(d->aliases[j].members); }
        free(d->users);
        free(d->aliases);
        free(d->name);
    }
    for (i = 0; i < c->nroutes; i++) free(c->routes[i].domain);
    free(c->routes);
    free(c->lists);
    tls_creds_release(c->tls);
    tls_creds_release(c->ca);
    free(c->domains);
    free(c->path);
    free(c->dir);
    buf_free(&c->errors);
    free(c);
}

/* ---- address resolution: local part + domain -> mailboxes ---- */
/* notify and orcpt: each target's DSN request (RFC 3461: NOTIFY bits, 0 if not given; ORCPT as
 * received or NULL), set by the SMTP session for the targets of each RCPT (targets_set_dsn) */
struct targets { char (*v)[MS_PATH_MAX]; char *remote; unsigned char *notify; char **orcpt; int n, cap; };

/* Local mailboxes are lower case; a remote local part keeps its case
 * (RFC 5321 2.4: only the destination host may interpret it). -1 if the
 * address does not fit (over 255 octets): never dropped without a word. */
static int
targets_add(struct targets *t, const char *user, const char *domain, int remote)
{
    char a[MS_PATH_MAX];
    int i;
    if (ms_fmt(a, sizeof a, "%s@%s", user, domain) < 0) return -1;
    ms_lower(remote ? strrchr(a, '@') : a);
    for (i = 0; i < t->n; i++)
        if (strcmp(t->v[i], a) == 0) return 0; /* one copy per mailbox */
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 4;
        t->v = xrealloc(t->v, sizeof *t->v * (size_t)t->cap);
        t->remote = xrealloc(t->remote, (size_t)t->cap);
        t->notify = xrealloc(t->notify, (size_t)t->cap);
        t->orcpt = xrealloc(t->orcpt, sizeof *t->orcpt * (size_t)t->cap);
    }
    t->remote[t->n] = (char)remote;
    t->notify[t->n] = 0;
    t->orcpt[t->n] = NULL;
    memcpy(t->v[t->n++], a, sizeof a);
    return 0;
}

static void
targets_free(struct targets *t)
{
    int i;
    for (i = 0; i < t->n; i++) free(t->orcpt[i]);
    free(t->v);
    free(t->remote);
    free(t->notify);
    free(t->orcpt);
    memset(t, 0, sizeof *t);
}

/* The DSN request of one RCPT for its targets from index `from` on (those it added). */
static void
targets_set_dsn(struct targets *t, int from, int notify, const char *orcpt)
{
    for (; from < t->n; from++) {
        t->notify[from] = (unsigned char)notify;
        free(t->orcpt[from]);
        t->orcpt[from] = orcpt && orcpt[0] ? xstrdup(orcpt) : NULL;
    }
}

static int
targets_remote(const struct targets *t)
{
    int i, n = 0;
    for (i = 0; i < t->n; i++) n += t->remote[i];
    return n;
}

/* A local part we relay: RFC 5321 Dot-string (no quoted strings), its atext
 * with UTF-8 (RFC 6531 3.3: UTF8-non-ascii) when well-formed. */
static int
addr_dot_string(const char *s)
{
    size_t i, n = strlen(s);
    if (n == 0 || n > MS_LOCAL_MAX || s[0] == '.' || s[n - 1] == '.') return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x80) continue;
        if (ch == '.' ? s[i + 1] == '.' : !(isalnum(ch) || strchr("!#$%&'*+-/=?^_`{|}~", ch))) return 0;
    }
    return ms_is_ascii(s) || utf8_valid(s, n);
}

/* A remote domain we relay to: a host name; no address literals. An IDN
 * becomes its A-label here (idna_to_ascii): DNS and the next hop get ASCII. */
static int
addr_remote_domain(char *domain)
{
    char a[MS_DOMAIN_MAX + 1];
    size_t n = strlen(domain);
    if (n && domain[n - 1] == '.') domain[n - 1] = 0;
    if (idna_to_ascii(domain, a, sizeof a) != 0) return 0;
    strcpy(domain, a); /* domain holds MS_DOMAIN_MAX + 1 bytes, and a fits in them */
    return cfg_valid_domain(domain);
}

enum { RES_OK = 0, RES_UNKNOWN = -1, RES_NONLOCAL = -2, RES_LOOP = -3, RES_TOOLONG = -4 };

static int cfg_resolve(const struct ms_config *c, const char *local, const char *domain,
                       struct targets *out, int depth);

/* Expands an alias's comma-separated members (bare names mean the alias's domain). */
static int
cfg_expand_members(const struct ms_config *c, const char *members, const char *domain,
                   struct targets *out, int depth)
{
    char tmp[1024], *item, *save = NULL;
    if (ms_strlcpy(tmp, members, sizeof tmp) != 0) return RES_UNKNOWN;
    for (save = tmp; (item = ms_next_item(&save, ',')) != NULL;) {
        char *m = ms_trim(item), *at = strrchr(m, '@');
        int r;
        if (!*m) continue;
        if (at) { *at = 0; r = cfg_resolve(c, m, at + 1, out, depth + 1); }
        else r = cfg_resolve(c, m, domain, out, depth + 1);
        if (r != RES_OK) return r;
    }
    return RES_OK;
}

/* Expands an address to mailboxes; remote members of aliases are relayed.
 * Depth 0 (the RCPT itself) reports a remote domain as RES_NONLOCAL. */
static int
cfg_resolve(const struct ms_config *c, const char *local, const char *domain, struct targets *out,
            int depth)
{
    const struct cfg_domain *d;
    const struct cfg_alias *a;
    int kind;
    if (depth > MS_ALIAS_DEPTH) return RES_LOOP;
    if (!(d = cfg_find_domain(c, domain))) {
        char dom[MS_DOMAIN_MAX + 1];
        if (depth == 0) return RES_NONLOCAL;
        if (!addr_dot_string(local) || ms_strlcpy(dom, domain, sizeof dom) != 0 || !addr_remote_domain(dom))
            return RES_UNKNOWN;
        return targets_add(out, local, dom, 1) == 0 ? RES_OK : RES_TOOLONG;
    }
    if (!cfg_safe_component(local, MS_LOCAL_MAX)) return RES_UNKNOWN;
    if (cfg_find_user(d, local)) return targets_add(out, local, d->name, 0) == 0 ? RES_OK : RES_TOOLONG;
    if ((a = cfg_find_alias(d, local))) return cfg_expand_members(c, a->members, d->name, out, depth);
    if (list_match(c, local, d->name, &kind, NULL, 0)) return RES_UNKNOWN; /* the SMTP session handles lists */
    if ((a = cfg_find_alias(d, "*")))
        return cfg_expand_members(c, a->members, d->name, out, depth);
    return RES_UNKNOWN;
}

/* One address (local or remote) as a recipient of mail the server writes itself. */
static int
addr_targets(const struct ms_config *c, const char *addr, struct targets *t)
{
    char local[MS_PATH_MAX], *at;
    if (ms_strlcpy(local, addr, sizeof local) != 0 || !(at = strrchr(local, '@'))) return RES_UNKNOWN;
    *at = 0;
    return cfg_resolve(c, local, at + 1, t, 1);
}

/* sender_login = strict: may a session logged in as mailbox `user` use
 * `from` in MAIL FROM? Its own address, or a named alias whose members
 * (nested too) include it; not the catch-all, a list, or another domain's
 * address. As Postfix's reject_sender_login_mismatch with the aliases as
 * smtpd_sender_login_maps. <> is the caller's business. */
static int
cfg_sender_owned(const struct ms_config *c, const char *from, const char *user)
{
    char local[MS_PATH_MAX], *at;
    const struct cfg_domain *d;
    const struct cfg_alias *a;
    struct targets t = {0};
    int i, owned = 0;
    if (ms_strlcpy(local, from, sizeof local) != 0 || !(at = strrchr(local, '@'))) return 0;
    ms_lower(local);
    if (strcmp(local, user) == 0) return 1;
    *at = 0;
    if ((d = cfg_find_domain(c, at + 1)) != NULL) { /* user is LOCAL@A-LABEL: the domain as the INI keeps it */
        char own[MS_PATH_MAX];
        if (ms_fmt(own, sizeof own, "%s@%s", local, d->name) >= 0 && strcmp(own, user) == 0) return 1;
    }
    if (!(d = cfg_find_domain(c, at + 1)) || strcmp(local, "*") == 0 || !(a = cfg_find_alias(d, local))) return 0;
    if (cfg_expand_members(c, a->members, d->name, &t, 0) == RES_OK)
        for (i = 0; i < t.n && !owned; i++) owned = !t.remote[i] && strcmp(t.v[i], user) == 0;
    targets_free(&t);
    return owned;
}

/* Hashes the plain-text passwords of a config about to be served, as
 * `mailsrv passwd` would: then a login costs one PBKDF2 whatever the INI
 * holds. One the previous config (old) hashed already is taken over, so a
 * reload pays only for new or changed ones. Returns how many it hashed. */
static int
cfg_hash_plain(struct ms_config *c, const struct ms_config *old)
{
    int i, j, n = 0;
    for (i = 0; i < c->ndomains; i++) {
        const struct cfg_domain *od = old ? cfg_find_domain(old, c->domains[i].name) : NULL;
        for (j = 0; j < c->domains[i].nusers; j++) {
            struct cfg_user *u = &c->domains[i].users[j];
            const struct cfg_user *ou = od ? cfg_find_user(od, u->name) : NULL;
            if (u->has_key) continue;
            if (ou && ou->has_key && !pass_is_hash(ou->pass) && strcmp(ou->pass, u->pass) == 0) {
                u->key = ou->key;
            } else {
                pass_key_make(u->pass, MS_PBKDF2_ITER, &u->key);
                n++;
            }
            u->has_key = 1;
        }
    }
    return n;
}

static void
cfg_validate_lists(struct ms_config *c)
{
    int i, j, kind;
    for (i = 0; i < c->nlists; i++) {
        const struct cfg_list *l = &c->lists[i];
        const struct cfg_domain *d = cfg_find_domain(c, l->domain);
        struct targets t = {0};
        if (!d) {
            cfg_error(c, l->line, "list %s@%s: %s is not a [domain] of this server", l->name, l->domain, l->domain);
            continue;
        }
        if (!l->owner[0]) cfg_error(c, l->line, "list %s@%s has no owner (owner = ADDRESS)", l->name, l->domain);
        else if (addr_targets(c, l->owner, &t) != RES_OK || t.n == 0)
            cfg_error(c, l->line, "list %s@%s: the owner '%s' is neither a mailbox here nor a valid remote address",
                      l->name, l->domain, l->owner);
        targets_free(&t);
        for (j = 0; j < d->nusers + d->naliases; j++) {
            const char *name = j < d->nusers ? d->users[j].name : d->aliases[j - d->nusers].name;
            if (list_is_address(l, name, d->name, &kind, NULL, 0))
                cfg_error(c, l->line, "'%s@%s' is both a %s and an address of the list %s@%s", name, d->name,
                          j < d->nusers ? "mailbox" : "group address", l->name, l->domain);
        }
        for (j = 0; j < c->nlists; j++)
            if (j != i && list_is_address(l, c->lists[j].name, c->lists[j].domain, &kind, NULL, 0))
                cfg_error(c, c->lists[j].line, "the list %s@%s has an address of the list %s@%s", c->lists[j].name,
                          c->lists[j].domain, l->name, l->domain);
    }
}

static void
cfg_validate(struct ms_config *c)
{
    int i, j, k;
    if (!c->nlisten) cfg_error(c, 0, "no listener: set smtp, submission or pop3 in [server]");
    for (i = 0; i < c->nlisten; i++)
        for (j = 0; j < i; j++)
            if (c->listen[i].port == c->listen[j].port && c->listen[i].family == c->listen[j].family &&
                strcmp(c->listen[i].addr, c->listen[j].addr) == 0)
                cfg_error(c, 0, "%s and %s both listen on %s port %u", proto_names[c->listen[j].proto],
                          proto_names[c->listen[i].proto], c->listen[i].addr, c->listen[i].port);
    for (i = 0; i < c->nlisten && !MAILSRV_ENABLE_HTTP; i++)
        if (c->listen[i].proto == PROTO_HTTP) {
            cfg_error(c, 0, "http and https need the HTTP API, which this build leaves out (make HTTP=0)");
            break;
        }
    if (!c->ndomains && !c->capture) cfg_error(c, 0, "no [domain NAME] section: no mail can be delivered");
    for (i = 0; i < c->ndomains; i++) {
        struct cfg_domain *d = &c->domains[i];
        for (j = 0; j < d->naliases; j++) {
            struct targets t = {0};
            int r = cfg_expand_members(c, d->aliases[j].members, d->name, &t, 0);
            if (r == RES_LOOP)
                cfg_error(c, d->aliases[j].line, "'%s@%s' is part of an alias loop", d->aliases[j].name, d->name);
            else if (r == RES_TOOLONG)
                cfg_error(c, d->aliases[j].line, "'%s@%s' names a member whose address is over 254 octets "
                          "(RFC 5321 4.5.3.1.3: a path is at most 256 with its brackets)", d->aliases[j].name, d->name);
            else if (r != RES_OK)
                cfg_error(c, d->aliases[j].line, "'%s@%s' names a member that is neither a mailbox, an alias "
                          "nor a valid remote address",
                          d->aliases[j].name, d->name);
            targets_free(&t);
        }
        for (k = 0; k < d->nusers; k++)
            if (cfg_find_alias(d, d->users[k].name))
                cfg_error(c, d->users[k].line, "'%s@%s' is both a mailbox and an alias", d->users[k].name, d->name);
        /* RFC 5321 4.5.1: postmaster must work for every domain */
        if (!cfg_find_user(d, "postmaster") && !cfg_find_alias(d, "postmaster"))
            cfg_error(c, d->line, "domain %s has no postmaster: add 'postmaster = USER' to [alias %s] "
                      "(RFC 5321 4.5.1)", d->name, d->name);
    }
    cfg_validate_lists(c);
}

static struct ms_config *
cfg_new(const char *path)
{
    struct ms_config *c = xrealloc(NULL, sizeof *c);
    const char *slash = os_last_sep(path);
    memset(c, 0, sizeof *c);
    c->path = xstrdup(path);
    c->dir = xstrdup(path);
    if (slash) c->dir[slash - path] = 0;
    else c->dir[0] = 0;
    if (slash == path) ms_strlcpy(c->dir, "/", 2);
    ms_strlcpy(c->hostname, "localhost", sizeof c->hostname);
    c->storage = STORE_MAILDIR;
    if (ms_fmt(c->spool, sizeof c->spool, "%s%sspool", c->dir, c->dir[0] ? "/" : "") < 0)
        ms_strlcpy(c->spool, "spool", sizeof c->spool);
    c->max_message_size = MS_DEF_MAX_MESSAGE;
    c->max_recipients = MS_DEF_MAX_RCPT;
    c->max_clients = MS_DEF_MAX_CLIENTS;
    c->max_per_ip = MS_DEF_MAX_PER_IP;
    c->max_connect_rate = MS_DEF_CONNECT_RATE;
    c->max_junk_commands = MS_DEF_JUNK_COMMANDS;
    c->max_session_time = MS_DEF_SESSION_TIME;
    c->timeout = MS_DEF_TIMEOUT;
    c->plaintext_auth = PT_LOCAL;
    c->sender_login = SL_STRICT;
    if (ms_fmt(c->queue, sizeof c->queue, "%s%squeue", c->dir, c->dir[0] ? "/" : "") < 0)
        ms_strlcpy(c->queue, "queue", sizeof c->queue);
    cfg_parse_nets(c, "127.0.0.0/8, ::1", NULL, 0, NULL, 0);
    c->relay_port = 25;
    c->retry = MS_DEF_RETRY;
    c->expire = MS_DEF_EXPIRE;
    c->max_outbound = MS_DEF_MAX_OUTBOUND;
    c->relay_timeout = MS_DEF_TIMEOUT;
    c->relay_tls = RTLS_YES;
    return c;
}

static char *
cfg_read_file(const char *path, size_t *len)
{
    int fd = os_open(path, O_RDONLY, 0); /* (Windows: a UTF-8 name through the wide API, as every file's) */
    struct buf b = {0};
    char chunk[4096];
    long n;
    if (fd < 0) return NULL;
    while ((n = os_read(fd, chunk, sizeof chunk)) > 0) buf_add(&b, chunk, (size_t)n);
    os_close(fd);
    if (n < 0) { buf_free(&b); return NULL; }
    if (!b.p) buf_adds(&b, "");
    *len = b.len;
    return b.p;
}

/* Loads from a file (text == NULL) or from text. Always returns a config;
 * check c->nerrors. tls_files = 0 skips reading the TLS files (gencert). */
static struct ms_config *
cfg_load_ex(const char *path, const char *text, int tls_files)
{
    struct ms_config *c = cfg_new(path);
    char *owned = NULL;
    size_t len, i, start;
    int line = 1, bad_line = 0, r;
    if (!text && !(text = owned = cfg_read_file(path, &len))) {
        cfg_error(c, 0, "cannot open: %s", strerror(errno));
        return c;
    }
    if (owned && strlen(owned) != len) cfg_error(c, 0, "the file contains a NUL byte");
    /* inih reads a line in pieces of 199 bytes (its 200-byte buffer) and takes
     * each piece for a line of its own: a longer line could become anything */
    for (i = start = 0;; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch && ch < 0x20 && ch != '\t' && ch != '\r' && ch != '\n' && bad_line != line) {
            cfg_error(c, line, "a control character (0x%02x): inih and mailsrv's own editor would read it differently", ch);
            bad_line = line;
        }
        if (text[i] && text[i] != '\n') continue;
        if (i - start > MS_INI_LINE_MAX) cfg_error(c, line, "line longer than %d characters", MS_INI_LINE_MAX);
        if (!text[i]) break;
        start = i + 1;
        line++;
    }
    if (!c->nerrors) {
        r = ini_parse_string(text, cfg_on_key, c);
        if (r == -2) cfg_error(c, 0, "out of memory");
        else if (r > 0) cfg_error(c, r, "syntax error (expected [section] or key = value)");
    }
    free(owned);
    if (!c->nerrors) cfg_validate(c);
    if (!c->nerrors && tls_files) cfg_load_tls_files(c);
    return c;
}
static struct ms_config *cfg_load(const char *path, const char *text) { return cfg_load_ex(path, text, 1); }

static int
cfg_listens_beyond_loopback(const struct ms_config *c)
{
    int i;
    for (i = 0; i < c->nlisten; i++)
        if (c->listen[i].family != MS_AF_LOCAL && strncmp(c->listen[i].addr, "127.", 4) != 0 &&
            strcmp(c->listen[i].addr, "::1") != 0)
            return 1;
    return 0;
}

/* ---- INI editing for `add` and `del`: every other byte stays as it was ---- */

/* Finds "[domain NAME]" and the span of its lines. Offsets into text. */
struct edit_span { size_t head, body_end, last_key_end; int found; };

static const char *
edit_line_end(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl ? nl + 1 : end;
}

/* The first [KIND NAME] section at or after offset from. */
/* A section's name is the one looked for: in any case, and an IDN in either
 * form (its U-labels or A-labels: idna_to_ascii). */
static int
edit_name_eq(const char *a, const char *b)
{
    char x[MS_DOMAIN_MAX + 1], y[MS_DOMAIN_MAX + 1];
    if (ms_strcaseeq(a, b)) return 1;
    return idna_to_ascii(a, x, sizeof x) == 0 && idna_to_ascii(b, y, sizeof y) == 0 && strcmp(x, y) == 0;
}

static void
edit_find_section(const char *text, size_t len, size_t from, const char *kind, const char *name, struct edit_span *sp)
{
    const char *p = text + from, *end = text + len;
    int in = 0;
    memset(sp, 0, sizeof *sp);
    while (p < end) {
        const char *e = edit_line_end(p, end), *s = p;
        while (s < e && *s != '\n' && isspace((unsigned char)*s)) s++; /* as inih skips */
        if (s < e && *s == '[') {
            char sec[300];
            const char *rb = memchr(s, ']', (size_t)(e - s));
            if (in) { sp->body_end = (size_t)(p - text); return; }
            if (rb && (size_t)(rb - s - 1) < sizeof sec) {
                char *t;
                memcpy(sec, s + 1, (size_t)(rb - s - 1));
                sec[rb - s - 1] = 0;
                t = ms_trim(sec);
                if (ms_strncaseeq(t, kind, strlen(kind)) && t[strlen(kind)] == ' ' &&
                    edit_name_eq(ms_trim(t + strlen(kind) + 1), name)) {
                    in = sp->found = 1;
                    sp->head = (size_t)(p - text);
                    sp->last_key_end = (size_t)(e - text);
                }
            }
        } else if (in && s < e && *s != ';' && *s != '#' && *s != '\r' && *s != '\n') {
            sp->last_key_end = (size_t)(e - text);
        }
        p = e;
    }
    if (in) sp->body_end = len;
}

/* Name of the key on the line at p, lower-cased, or "" */
static void
edit_line_key(const char *p, const char *e, char *key, size_t n)
{
    const char *s = p, *eq;
    size_t k;
    key[0] = 0;
    while (s < e && *s != '\n' && isspace((unsigned char)*s)) s++;
    for (eq = s; eq < e && *eq != '=' && *eq != ':'; eq++) {} /* inih takes either */
    if (eq == e || *s == ';' || *s == '#' || *s == '[') return;
    while (eq > s && isspace((unsigned char)eq[-1])) eq--;
    k = (size_t)(eq - s);
    if (k >= n) return;
    memcpy(key, s, k);
    key[k] = 0;
    ms_lower(key);
}

/* Returns a new text with the mailbox added (or removed); NULL + err if not possible. */
static char *
cfg_edit_mailbox(const char *text, size_t len, const char *user, const char *domain, const char *hash,
                 char *err, size_t errn)
{
    struct edit_span sp;
    struct buf out = {0};
    edit_find_section(text, len, 0, "domain", domain, &sp);
    if (hash) {
        if (!sp.found) {
            buf_add(&out, text, len);
            if (len && text[len - 1] != '\n') buf_adds(&out, "\n");
            buf_printf(&out, "\n[domain %s]\n%s = %s\n", domain, user, hash);
        } else {
            buf_add(&out, text, sp.last_key_end);
            if (sp.last_key_end && text[sp.last_key_end - 1] != '\n') buf_adds(&out, "\n");
            buf_printf(&out, "%s = %s\n", user, hash);
            buf_add(&out, text + sp.last_key_end, len - sp.last_key_end);
        }
        return out.p;
    }
    /* inih merges repeated sections, so the mailbox may be in any [domain NAME] */
    for (; sp.found; edit_find_section(text, len, sp.body_end, "domain", domain, &sp)) {
        const char *p = text + sp.head, *end = text + sp.body_end;
        while (p < end) {
            const char *e = edit_line_end(p, end);
            char key[MS_LOCAL_MAX + 1];
            edit_line_key(p, e, key, sizeof key);
            if (strcmp(key, user) == 0) {
                buf_add(&out, text, (size_t)(p - text));
                buf_add(&out, e, (size_t)(text + len - e));
                return out.p ? out.p : xstrdup("");
            }
            p = e;
        }
    }
    snprintf(err, errn, "%s@%s is not a mailbox in this file", user, domain);
    return NULL;
}

/*==== 6. Pure parsers ====*/
/*
 * No I/O and no globals here: each parser takes bytes and returns a result,
 * so the unit tests and fuzzers can drive them directly.
 */

/* Splits "VERB args": copies the verb upper-cased, returns the args. */
static const char *
cmd_split(const char *line, char *verb, size_t n)
{
    size_t i = 0;
    while (*line && *line != ' ' && i + 1 < n) verb[i++] = (char)toupper((unsigned char)*line++);
    verb[i] = 0;
    if (*line && *line != ' ') { verb[0] = 0; return line; } /* verb too long */
    while (*line == ' ') line++;
    return line;
}

/*
 * Parses an SMTP path after "FROM:" or "TO:" (RFC 5321 4.1.2): "<>" or
 * "<[@route,...:]local@domain>". A quoted local part is unquoted; the caller
 * checks that what comes out is safe. Returns a pointer past the path (to the
 * ESMTP parameters) or NULL when malformed; errno is then ENAMETOOLONG for a
 * path, local part or domain over RFC 5321's limits, so that the reply can say so.
 */
static const char *
smtp_parse_path(const char *s, char *local, char *domain)
{
    char addr[MS_PATH_MAX + 1];
    size_t n = 0;
    int bracket, quoted = 0;
    const char *at = NULL, *start;
    local[0] = domain[0] = 0;
    errno = EINVAL;
    while (*s == ' ') s++; /* "MAIL FROM: <a@b>" is common */
    start = s;
    bracket = *s == '<';
    if (bracket) s++;
    if (bracket && *s == '@') { /* source route: accepted and ignored (RFC 5321 C) */
        const char *colon = strchr(s, ':');
        if (!colon) return NULL;
        s = colon + 1;
    }
    for (; *s; s++) {
        if (quoted) {
            if (*s == '\\' && s[1]) s++;
            else if (*s == '"') { quoted = 0; continue; }
        } else if (*s == '"') { quoted = 1; continue; }
        else if (bracket ? *s == '>' : *s == ' ') break;
        else if (*s == '<' || *s == '>' || *s == ' ') return NULL;
        else if (*s == '@') at = addr + n;
        /* RFC 5321 4.5.3.1.3: "The maximum total length of a reverse-path or forward-path is 256
         * octets (including the punctuation and element separators)": the octets as sent, from
         * "<" (a source route too) to ">", counted for a path sent without brackets as well */
        if ((size_t)(s - start) + (bracket ? 2 : 3) > MS_PATH_MAX || n >= MS_PATH_MAX) {
            errno = ENAMETOOLONG;
            return NULL;
        }
        addr[n++] = *s;
    }
    if (quoted || (bracket && *s != '>') || (!bracket && n == 0)) return NULL;
    if ((size_t)(s - start) + (bracket ? 1 : 2) > MS_PATH_MAX) { errno = ENAMETOOLONG; return NULL; }
    if (bracket) s++;
    addr[n] = 0;
    if (*s && *s != ' ') return NULL;
    while (*s == ' ') s++;
    if (n == 0) return s; /* the null path <> */
    if (!at) { /* "Postmaster" alone is allowed for RCPT (RFC 5321 4.5.1) */
        if (n > MS_LOCAL_MAX) { errno = ENAMETOOLONG; return NULL; }
        memcpy(local, addr, n + 1);
        return s;
    }
    if (at == addr || !at[1]) return NULL;
    if ((size_t)(at - addr) > MS_LOCAL_MAX || strlen(at + 1) > MS_DOMAIN_MAX) { /* 4.5.3.1.1, 4.5.3.1.2 */
        errno = ENAMETOOLONG;
        return NULL;
    }
    memcpy(local, addr, (size_t)(at - addr));
    local[at - addr] = 0;
    ms_strlcpy(domain, at + 1, MS_DOMAIN_MAX + 1);
    return s;
}

/*
 * DSN parameters (RFC 3461). Values travel as xtext (RFC 3461 4: octets
 * "!".."~" but "+" and "=" as themselves, any other as "+" and two upper-case
 * hex digits). ENVID is kept as received (xtext, at most 100 characters, 4.4)
 * and ORCPT as "addr-type;xtext" (at most 500, 4.2): both are passed on as
 * they are and decoded only for a report.
 */
enum { DSN_NEVER = 1, DSN_SUCCESS = 2, DSN_FAILURE = 4, DSN_DELAY = 8 }; /* NOTIFY; 0: not given */
enum { DSN_RET_NONE, DSN_RET_FULL, DSN_RET_HDRS };
struct dsn_mail { int ret; char envid[MS_ENVID_MAX + 1]; };
/* One recipient of a delivery status notification (RFC 3464 2.3). */
struct dsn_item {
    const char *addr;       /* Final-Recipient */
    const char *orcpt;      /* ORCPT as received (addr-type;xtext) or NULL */
    const char *action;     /* failed, delivered, relayed, expanded */
    const char *status;     /* 5.1.1, 2.0.0, ... */
    const char *remote_mta; /* or NULL */
    const char *diag;       /* a remote reply ("250 ...", "550 ...") or our text, or NULL */
};

static int
xtext_hex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; /* upper case only (4) */
}

/* Decodes len octets of xtext into out (n with its NUL): the length, or -1
 * when malformed, when it does not fit, or for an encoded NUL. */
static long
xtext_decode(const char *in, size_t len, char *out, size_t n)
{
    size_t i, o = 0;
    for (i = 0; i < len; i++) {
        int c = (unsigned char)in[i];
        if (c == '+') {
            int h, l;
            if (i + 2 >= len || (h = xtext_hex((unsigned char)in[i + 1])) < 0 ||
                (l = xtext_hex((unsigned char)in[i + 2])) < 0 || !(c = h * 16 + l))
                return -1;
            i += 2;
        } else if (c < '!' || c > '~' || c == '=') {
            return -1;
        }
        if (o + 1 >= n) return -1;
        out[o++] = (char)c;
    }
    if (!n) return -1;
    out[o] = 0;
    return (long)o;
}

/* Encodes len octets as xtext into out (n with its NUL); -1 if it does not fit. */
static long
xtext_encode(const char *in, size_t len, char *out, size_t n)
{
    size_t i, o = 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c >= '!' && c <= '~' && c != '+' && c != '=') {
            if (o + 1 >= n) return -1;
            out[o++] = (char)c;
        } else {
            if (o + 3 >= n) return -1;
            out[o++] = '+';
            out[o++] = "0123456789ABCDEF"[c >> 4];
            out[o++] = "0123456789ABCDEF"[c & 15];
        }
    }
    if (!n) return -1;
    out[o] = 0;
    return (long)o;
}

/* A MAIL FROM parameter: 1 a DSN one (RET, ENVID) taken into d, 0 not one,
 * -1 malformed or given twice (the caller answers 501 5.5.4). */
static int
dsn_mail_param(const char *param, struct dsn_mail *d)
{
    char tmp[MS_ENVID_MAX + 1];
    if (ms_strncaseeq(param, "RET=", 4)) {
        if (d->ret) return -1;
        if (ms_strcaseeq(param + 4, "FULL")) d->ret = DSN_RET_FULL;
        else if (ms_strcaseeq(param + 4, "HDRS")) d->ret = DSN_RET_HDRS;
        else return -1;
        return 1;
    }
    if (ms_strncaseeq(param, "ENVID=", 6)) {
        size_t n = strlen(param + 6);
        if (d->envid[0] || !n || n > MS_ENVID_MAX || xtext_decode(param + 6, n, tmp, sizeof tmp) < 0) return -1;
        memcpy(d->envid, param + 6, n + 1);
        return 1;
    }
    return 0;
}

/* A RCPT TO parameter: 1 a DSN one (NOTIFY, ORCPT) taken, 0 not one, -1
 * malformed or given twice. NOTIFY is NEVER alone or a list of SUCCESS,
 * FAILURE and DELAY (RFC 3461 4.1); ORCPT is addr-type ";" xtext (4.2),
 * orcpt having MS_ORCPT_MAX + 1 octets. */
static int
dsn_rcpt_param(const char *param, int *notify, char *orcpt)
{
    if (ms_strncaseeq(param, "NOTIFY=", 7)) {
        const char *p = param + 7;
        int v = 0;
        if (*notify) return -1;
        for (;;) {
            size_t n = strcspn(p, ",");
            int bit = n == 5 && ms_strncaseeq(p, "NEVER", 5) ? DSN_NEVER
                    : n == 7 && ms_strncaseeq(p, "SUCCESS", 7) ? DSN_SUCCESS
                    : n == 7 && ms_strncaseeq(p, "FAILURE", 7) ? DSN_FAILURE
                    : n == 5 && ms_strncaseeq(p, "DELAY", 5) ? DSN_DELAY : 0;
            if (!bit || (v & bit)) return -1;
            v |= bit;
            if (!p[n]) break;
            p += n + 1;
        }
        if ((v & DSN_NEVER) && v != DSN_NEVER) return -1; /* NEVER stands alone */
        *notify = v;
        return 1;
    }
    if (ms_strncaseeq(param, "ORCPT=", 6)) {
        const char *v = param + 6, *semi = strchr(v, ';');
        char tmp[MS_ORCPT_MAX + 1];
        size_t i, n = strlen(v);
        if (orcpt[0] || !semi || semi == v || !semi[1] || n > MS_ORCPT_MAX) return -1;
        for (i = 0; v + i < semi; i++) /* addr-type is an atom (RFC 5322 atext) */
            if (!isalnum((unsigned char)v[i]) && !strchr("!#$%&'*+-/=?^_`{|}~", v[i])) return -1;
        if (xtext_decode(semi + 1, strlen(semi + 1), tmp, sizeof tmp) < 0) return -1;
        memcpy(orcpt, v, n + 1);
        return 1;
    }
    return 0;
}

/* NOTIFY's text: "NEVER" or the list, as it is passed on (RFC 3461 4.1). */
static void
dsn_notify_text(int notify, char *out, size_t n)
{
    snprintf(out, n, "%s%s%s%s", notify & DSN_NEVER ? "NEVER" : "", notify & DSN_SUCCESS ? "SUCCESS" : "",
             (notify & DSN_SUCCESS) && (notify & (DSN_FAILURE | DSN_DELAY)) ? "," : "",
             notify & DSN_FAILURE ? (notify & DSN_DELAY ? "FAILURE,DELAY" : "FAILURE") : notify & DSN_DELAY ? "DELAY" : "");
}

/*
 * RFC 6531 3.3: a path may hold UTF-8 (in its local part, and U-labels in its
 * domain) only in a transaction whose MAIL declared SMTPUTF8. 0 if the path
 * is fine; 1 if it holds non-ASCII without SMTPUTF8 (MS_SMTP_NEED_UTF8); -1
 * if it is not well-formed UTF-8 or holds a control character (utf8_valid).
 * Lengths stay in octets (RFC 6531 3.3: 64 for the local part).
 */
static int
smtp_path_utf8(const char *local, const char *domain, int smtputf8)
{
    if (ms_is_ascii(local) && ms_is_ascii(domain)) return 0;
    if (!utf8_valid(local, strlen(local)) || !utf8_valid(domain, strlen(domain))) return -1;
    return smtputf8 ? 0 : 1;
}

/*
 * The DATA byte machine (qmail's blast(), hardened against SMTP smuggling,
 * CVE-2023-51764 class): only CRLF "." CRLF, where the line before ended in
 * CRLF, ends the message. A bare LF or bare CR is normalised to a line end
 * (as Postfix 3.9's "normalize") but can never start an end-of-data marker.
 * Leading dots are unstuffed (RFC 5321 4.5.2). Output is LF-terminated lines.
 */
enum { D_BOL, D_TEXT, D_CR, D_DOT, D_DOTCR };
struct data_rx {
    int st, strict;        /* strict: this line started after a CRLF */
    int raw;               /* BDAT chunks (RFC 3030 2): no dot-stuffing, no end marker; line ends as DATA's */
    size_t line_len;
    int64_t lines, bytes;  /* stored lines and bytes */
    int too_long;          /* a line over 998 octets seen (accepted: the relay wraps it, mime_conv) */
    int eightbit;          /* an octet over 127 seen (the relay declares BODY=8BITMIME or converts) */
};

static void
data_rx_init(struct data_rx *d)
{
    memset(d, 0, sizeof *d);
    d->st = D_BOL;
    d->strict = 1; /* the DATA command's CRLF */
}

/* Consumes input, writes at most cap - *olen bytes of output. Sets *done at
 * the end marker (the bytes after it are not consumed). Returns bytes read. */
static size_t
data_rx_feed(struct data_rx *d, const char *in, size_t n, char *out, size_t cap, size_t *olen, int *done)
{
    size_t i = 0, o = *olen;
    *done = 0;
    while (i < n && o + 2 <= cap) {
        unsigned char ch = (unsigned char)in[i];
        switch (d->st) {
        case D_BOL:
            d->line_len = 0;
            if (ch == '.' && !d->raw) { d->st = D_DOT; i++; }
            else d->st = D_TEXT;
            break;
        case D_TEXT:
            if (ch == '\r') { d->st = D_CR; i++; break; }
            if (ch == '\n') { /* bare LF */
                out[o++] = '\n'; d->lines++;
                d->strict = 0; d->st = D_BOL; i++;
                break;
            }
            out[o++] = (char)ch;
            if (ch & 0x80) d->eightbit = 1;
            if (++d->line_len > MS_TEXT_LINE_MAX - 2) d->too_long = 1;
            i++;
            break;
        case D_CR:
            out[o++] = '\n'; d->lines++;
            d->st = D_BOL;
            if (ch == '\n') { d->strict = 1; i++; }
            else d->strict = 0; /* bare CR: a line end; ch is read again */
            break;
        case D_DOT:
            if (ch == '\r') { d->st = D_DOTCR; i++; break; }
            if (ch == '\n') { /* ".\n" is a line holding a dot, never the end */
                out[o++] = '.'; out[o++] = '\n'; d->lines++;
                d->strict = 0; d->st = D_BOL; i++;
                break;
            }
            d->st = D_TEXT; /* a stuffed dot: dropped */
            break;
        case D_DOTCR:
            if (ch == '\n' && d->strict) { *done = 1; i++; d->bytes += (int64_t)(o - *olen); *olen = o; return i; }
            out[o++] = '.'; out[o++] = '\n'; d->lines++;
            d->st = D_BOL;
            if (ch == '\n') { d->strict = 1; i++; }
            else d->strict = 0;
            break;
        }
    }
    d->bytes += (int64_t)(o - *olen);
    *olen = o;
    return i;
}

/* BDAT LAST (raw): the end of the text. A last line without its line end
 * gets one (a CR the last chunk ended with is one), so a message stored
 * from BDAT chunks ends in LF as one from DATA always does. Writes at most
 * 1 byte to out; returns how many. */
static size_t
data_rx_finish(struct data_rx *d, char *out)
{
    if (d->st != D_TEXT && d->st != D_CR) return 0;
    out[0] = '\n';
    d->lines++;
    d->bytes++;
    d->st = D_BOL;
    return 1;
}

/* mboxrd: a line matching ^>*From_ gets one more '>' when stored, loses one when read. */
static int
mbox_is_from_line(const char *p, size_t n, int quoted_only)
{
    size_t i = 0;
    while (i < n && p[i] == '>') i++;
    if (quoted_only && i == 0) return 0;
    return n - i >= 5 && memcmp(p + i, "From ", 5) == 0;
}

/* POP3 message number argument: 1..max, digits only (popa3d pop_get_int). */
static int
pop_parse_num(const char *s, int max)
{
    long v = 0;
    if (!*s || strlen(s) > 9) return -1;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s)) return -1;
        v = v * 10 + (*s - '0');
    }
    return (v >= 1 && v <= max) ? (int)v : -1;
}

/* SASL PLAIN (RFC 4616): authzid NUL authcid NUL passwd, base64. */
static int
sasl_plain_decode(const char *b64, char *user, size_t ulen, char *pass, size_t plen)
{
    unsigned char raw[768];
    long n = b64_decode(b64, strlen(b64), raw, sizeof raw - 1);
    const char *authz, *authc, *pw;
    size_t i, nul1, nul2;
    if (n < 3) return -1;
    raw[n] = 0;
    for (i = 0; i < (size_t)n && raw[i]; i++) {}
    nul1 = i;
    for (i = nul1 + 1; i < (size_t)n && raw[i]; i++) {}
    nul2 = i;
    if (nul1 >= (size_t)n || nul2 >= (size_t)n) return -1;
    authz = (const char *)raw;
    authc = (const char *)raw + nul1 + 1;
    pw = (const char *)raw + nul2 + 1;
    if (strlen(pw) != (size_t)n - nul2 - 1) return -1; /* a third NUL */
    if (*authz && strcmp(authz, authc) != 0) return -1; /* no proxy logins */
    if (ms_strlcpy(user, authc, ulen) != 0 || ms_strlcpy(pass, pw, plen) != 0) return -1;
    return 0;
}

/* ---- relay_networks: is an address inside a network? ---- */
static int
net_in_cidr(const struct cfg_net *n, const struct ms_addr *a)
{
    int full = n->bits / 8, rest = n->bits % 8;
    if (n->family != a->family) return 0;
    if (memcmp(n->ip, a->ip, (size_t)full) != 0) return 0;
    return rest == 0 || ((n->ip[full] ^ a->ip[full]) & (0xff << (8 - rest))) == 0;
}

/* The client an address belongs to, for every per-client limit (max_per_ip,
 * max_connect_rate, the auth back-off): the IPv4 address itself (also when
 * IPv4-mapped), or the IPv6 /64: one host or site usually holds a whole /64
 * (RFC 6177; RFC 4291 2.5.1) and picks addresses inside it at will (RFC 8981),
 * so a limit per IPv6 address limits nothing. */
static void
client_key(const char *peer, char *key, size_t n)
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    struct ms_addr a;
    char s[64];
    if (net_addr_parse(peer, 0, &a) != 0 || a.family != AF_INET6) { ms_strlcpy(key, peer, n); return; }
    if (memcmp(a.ip, v4mapped, 12) == 0) {
        memmove(a.ip, a.ip + 12, 4);
        a.family = AF_INET;
        net_addr_str(&a, key, n);
        return;
    }
    memset(a.ip + 8, 0, 8);
    net_addr_str(&a, s, sizeof s);
    if (ms_fmt(key, n, "%s/64", s) < 0) ms_strlcpy(key, peer, n);
}

/* ---- DNS messages (RFC 1035 4.1) ---- */
enum { DNS_A = 1, DNS_CNAME = 5, DNS_MX = 15, DNS_AAAA = 28 };
enum { DNS_NOERROR = 0, DNS_SERVFAIL = 2, DNS_NXDOMAIN = 3 };

struct dns_rr { unsigned pref; char host[MS_DOMAIN_MAX + 1]; unsigned char ip[16]; };
struct dns_result {
    int rcode, tc;
    int n;                         /* records of the asked type for the asked name */
    struct dns_rr rr[MS_DNS_RR_MAX];
};

/* A query with RD set; returns its length or -1. */
static int
dns_build_query(unsigned char *out, size_t cap, unsigned id, const char *name, int type)
{
    size_t o = 12;
    const char *p = name;
    if (cap < 12 + strlen(name) + 6 || strlen(name) > MS_DOMAIN_MAX) return -1;
    memset(out, 0, 12);
    out[0] = (unsigned char)(id >> 8);
    out[1] = (unsigned char)id;
    out[2] = 0x01; /* RD */
    out[5] = 1;    /* QDCOUNT */
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == 0 || len > 63) return -1;
        out[o++] = (unsigned char)len;
        memcpy(out + o, p, len);
        o += len;
        p += len + (dot ? 1 : 0);
        if (dot && !*p) break; /* a trailing dot */
    }
    out[o++] = 0;
    out[o++] = 0; out[o++] = (unsigned char)type;
    out[o++] = 0; out[o++] = 1; /* IN */
    return (int)o;
}

/* Reads a possibly compressed name at *off into out (dotted, no trailing
 * dot; "" is the root). Pointers are followed at most MS_DNS_PTR_MAX times,
 * so a pointer loop ends. Advances *off past the name's bytes. */
static int
dns_read_name(const unsigned char *m, size_t len, size_t *off, char *out, size_t cap)
{
    size_t p = *off, o = 0;
    int jumps = 0;
    out[0] = 0;
    for (;;) {
        unsigned l;
        if (p >= len) return -1;
        l = m[p];
        if ((l & 0xc0) == 0xc0) {
            if (p + 1 >= len || ++jumps > MS_DNS_PTR_MAX) return -1;
            if (jumps == 1) *off = p + 2;
            p = (size_t)(l & 0x3f) << 8 | m[p + 1];
            continue;
        }
        if (l & 0xc0) return -1; /* the reserved label types */
        p++;
        if (l == 0) break;
        if (p + l > len || o + l + 2 > cap || o + l + 1 > MS_DOMAIN_MAX) return -1;
        if (o) out[o++] = '.';
        memcpy(out + o, m + p, l);
        o += l;
        out[o] = 0;
        p += l;
    }
    if (!jumps) *off = p;
    return 0;
}

static unsigned dns_u16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

/* Checks that m answers our query (id, QR, the question echoed) and fills r
 * with the records of qtype owned by qname or by the CNAME chain from it.
 * Returns -1 for anything that is not a well-formed answer to our question. */
static int
dns_parse_answer(const unsigned char *m, size_t len, unsigned id, const char *qname, int qtype,
                 struct dns_result *r)
{
    char name[MS_DOMAIN_MAX + 1], owner[MS_DOMAIN_MAX + 1], want[MS_DOMAIN_MAX + 1];
    size_t off = 12;
    unsigned an, i;
    int cnames = 0;
    memset(r, 0, sizeof *r);
    if (len < 12 || dns_u16(m) != (id & 0xffff) || !(m[2] & 0x80) || (m[2] & 0x78) != 0 || dns_u16(m + 4) != 1)
        return -1;
    r->tc = (m[2] & 0x02) != 0;
    r->rcode = m[3] & 0x0f;
    if (dns_read_name(m, len, &off, name, sizeof name) != 0 || off + 4 > len) return -1;
    if (ms_strlcpy(want, qname, sizeof want) != 0) return -1;
    if (want[0] && want[strlen(want) - 1] == '.') want[strlen(want) - 1] = 0;
    if (!ms_strcaseeq(name, want) || dns_u16(m + off) != (unsigned)qtype || dns_u16(m + off + 2) != 1) return -1;
    off += 4;
    if (r->tc) return 0;
    an = dns_u16(m + 6);
    for (i = 0; i < an; i++) {
        unsigned type, class, rdlen;
        size_t rd;
        if (dns_read_name(m, len, &off, owner, sizeof owner) != 0 || off + 10 > len) return -1;
        type = dns_u16(m + off);
        class = dns_u16(m + off + 2);
        rdlen = dns_u16(m + off + 8);
        rd = off + 10;
        if (rd + rdlen > len) return -1;
        off = rd + rdlen;
        if (class != 1 || !ms_strcaseeq(owner, want)) continue;
        if (type == DNS_CNAME && type != (unsigned)qtype) { /* answers for the alias follow (RFC 1034 3.6.2) */
            size_t p = rd;
            if (++cnames > 8 || dns_read_name(m, len, &p, want, sizeof want) != 0 || p != rd + rdlen) return -1;
            continue;
        }
        if (type != (unsigned)qtype || r->n == MS_DNS_RR_MAX) continue;
        if (type == DNS_A && rdlen == 4) memcpy(r->rr[r->n++].ip, m + rd, 4);
        else if (type == DNS_AAAA && rdlen == 16) memcpy(r->rr[r->n++].ip, m + rd, 16);
        else if (type == DNS_MX && rdlen >= 3) {
            size_t p = rd + 2;
            if (dns_read_name(m, len, &p, r->rr[r->n].host, sizeof r->rr[0].host) != 0 || p != rd + rdlen) return -1;
            r->rr[r->n++].pref = dns_u16(m + rd);
        }
    }
    return 0;
}

/* ---- replies of a remote SMTP server (RFC 5321 4.2) ---- */
/* 1 for the last line of a reply, 0 for a continuation line ("250-"),
 * -1 if the line is not a reply line. */
static int
smtp_reply_line(const char *line, int *code)
{
    if (!isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) || !isdigit((unsigned char)line[2]) ||
        line[0] < '2' || line[0] > '5' || (line[3] && line[3] != ' ' && line[3] != '-'))
        return -1;
    *code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    return line[3] != '-';
}

/* ---- message header fields (RFC 5322 2.2; LF line ends as stored) ---- */

/* The next field with its folded continuation lines, from *pos; 0 at the
 * blank line or the end of the block. */
static int
hdr_next_field(const char *h, size_t n, size_t *pos, const char **f, size_t *flen)
{
    size_t p = *pos, e = p;
    if (p >= n || h[p] == '\n') return 0;
    do {
        const char *nl = memchr(h + e, '\n', n - e);
        e = nl ? (size_t)(nl - h) + 1 : n;
    } while (e < n && (h[e] == ' ' || h[e] == '\t'));
    *f = h + p;
    *flen = e - p;
    *pos = e;
    return 1;
}

static int
hdr_is(const char *f, size_t flen, const char *name)
{
    size_t k = strlen(name);
    return flen > k && f[k] == ':' && ms_strncaseeq(f, name, k);
}

/* The first `name` field's value, unfolded and trimmed (out is "" if absent). */
static int
hdr_get(const char *h, size_t n, const char *name, char *out, size_t on)
{
    size_t pos = 0, i, o = 0, flen;
    const char *f;
    out[0] = 0;
    while (hdr_next_field(h, n, &pos, &f, &flen)) {
        if (!hdr_is(f, flen, name)) continue;
        for (i = strlen(name) + 1; i < flen && o + 1 < on; i++)
            if (f[i] != '\n' && f[i] != '\r') out[o++] = f[i] == '\t' ? ' ' : f[i];
        out[o] = 0;
        f = ms_trim(out);
        memmove(out, f, strlen(f) + 1);
        return 1;
    }
    return 0;
}

/* RFC 3834 5: Auto-Submitted present and not "no". */
static int
hdr_auto_submitted(const char *h, size_t n)
{
    char v[64];
    return hdr_get(h, n, "Auto-Submitted", v, sizeof v) && !(ms_strncaseeq(v, "no", 2) && (!v[2] || strchr(" ;(", v[2])));
}

/* Mail that must not get an automatic answer (RFC 3834 2, and Precedence as in practice). */
static int
hdr_is_automatic(const char *h, size_t n)
{
    char v[64];
    if (hdr_auto_submitted(h, n)) return 1;
    hdr_get(h, n, "Precedence", v, sizeof v);
    return ms_strcaseeq(v, "bulk") || ms_strcaseeq(v, "junk") || ms_strcaseeq(v, "list");
}

/* The recipients a delivery report says failed (RFC 3464 2.3: a block of
 * fields per recipient, Final-Recipient and Action), and the list post
 * number from the returned header (seq: -1 if absent). Returns how many. */
static int
dsn_failed(const char *text, size_t n, char (*out)[MS_PATH_MAX], int max, long *seq)
{
    char rcpt[MS_PATH_MAX] = "";
    size_t pos = 0;
    int failed = 0, count = 0, i;
    *seq = -1;
    while (pos <= n) {
        const char *line = text + pos, *nl = memchr(line, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - line) : n - pos;
        char v[MS_PATH_MAX + 16], *a;
        pos += len + 1;
        if (len && line[len - 1] == '\r') len--;
        if (len && len < sizeof v) {
            memcpy(v, line, len);
            v[len] = 0;
            if (ms_strncaseeq(v, "Final-Recipient:", 16) && (a = strchr(v, ';')) != NULL) {
                a = ms_trim(a + 1);
                if (*a == '<' && a[strlen(a) - 1] == '>') { a[strlen(a) - 1] = 0; a++; }
                if (strchr(a, '@') && !strchr(a, ' ')) ms_strlcpy(rcpt, a, sizeof rcpt);
            } else if (ms_strncaseeq(v, "Action:", 7)) {
                failed = ms_strncaseeq(ms_trim(v + 7), "failed", 6);
            } else if (*seq < 0 && ms_strncaseeq(v, "X-Mailsrv-Seq:", 14)) {
                char *end;
                long x = strtol(v + 14, &end, 10);
                if (end != v + 14 && x >= 0) *seq = x;
            }
        }
        if (len == 0 || !nl) { /* the end of a block */
            for (i = 0; i < count && !ms_strcaseeq(out[i], rcpt); i++) {}
            if (failed && rcpt[0] && i == count && count < max) ms_strlcpy(out[count++], rcpt, sizeof out[0]);
            rcpt[0] = 0;
            failed = 0;
        }
    }
    return count;
}

/* ---- the state of a mailing list: members with the proof of their
 * consent, open requests and the post counter. One text file, written whole. */
struct list_member {
    char addr[MS_PATH_MAX];
    int64_t req_time, conf_time;
    char req_ip[64], conf_ip[64];
    char req_id[200], conf_id[200];   /* Message-IDs of the request and the confirmation */
    int bounces;                      /* posts in a row that bounced */
    long last_bounce;                 /* the last of them */
};
struct list_pending {
    char token[MS_LIST_TOKEN_LEN + 1];
    int unsub;
    char addr[MS_PATH_MAX];
    int64_t time;
    char ip[64], id[200];
};
struct list_state {
    long seq;                         /* posts sent so far */
    struct list_member *m; int nm;
    struct list_pending *p; int np;
};

static void
list_state_free(struct list_state *st)
{
    free(st->m);
    free(st->p);
    memset(st, 0, sizeof *st);
}

static void
list_state_text(const struct list_state *st, struct buf *b)
{
    int i;
    buf_printf(b, "mailsrv-list 1\nseq %ld\n", st->seq);
    for (i = 0; i < st->nm; i++) {
        const struct list_member *m = &st->m[i];
        buf_printf(b, "member %s %lld %s %s %lld %s %s %d %ld\n", m->addr, (long long)m->req_time, m->req_ip, m->req_id,
                   (long long)m->conf_time, m->conf_ip, m->conf_id, m->bounces, m->last_bounce);
    }
    for (i = 0; i < st->np; i++) {
        const struct list_pending *p = &st->p[i];
        buf_printf(b, "pending %s %s %s %lld %s %s\n", p->token, p->unsub ? "unsubscribe" : "subscribe", p->addr,
                   (long long)p->time, p->ip, p->id);
    }
}

/* Copies the next word into out; -1 if it is missing or does not fit. */
static int
list_word(char **cur, char *out, size_t n)
{
    char *w = ms_word(cur);
    return w && ms_strlcpy(out, w, n) == 0 ? 0 : -1;
}

/* The array p of n elements, with room for one more: its size doubles at
 * each power of two, so a state of 1,000 open requests (a flood's) is not
 * copied 1,000 times over while it is read. */
static void *
list_grow(void *p, int n, size_t size)
{
    return n & (n - 1) ? p : xrealloc(p, size * (size_t)(n ? 2 * n : 1));
}

/* 0, or -1 if the text is not a list state (nothing is then dropped). */
static int
list_state_parse(char *text, struct list_state *st)
{
    char *line, *save, *cur, *key, kind[16];
    long long t1, t2, b1, b2;
    int ok = 0, bad = 0;
    memset(st, 0, sizeof *st);
    for (save = text; !bad && (line = ms_next_item(&save, '\n')) != NULL;) {
        cur = line;
        if (!(key = ms_word(&cur))) continue;
        if (strcmp(line, "mailsrv-list") == 0 && strcmp(cur, "1") == 0) { ok = 1; continue; }
        if (!ok) break;
        if (strcmp(key, "seq") == 0) {
            bad = ms_word_num(&cur, &t1) != 0 || t1 < 0 || t1 > LONG_MAX;
            st->seq = (long)t1;
        } else if (strcmp(key, "member") == 0) {
            struct list_member m;
            memset(&m, 0, sizeof m);
            bad = list_word(&cur, m.addr, sizeof m.addr) || !strchr(m.addr, '@') || ms_word_num(&cur, &t1) ||
                  list_word(&cur, m.req_ip, sizeof m.req_ip) || list_word(&cur, m.req_id, sizeof m.req_id) ||
                  ms_word_num(&cur, &t2) || list_word(&cur, m.conf_ip, sizeof m.conf_ip) ||
                  list_word(&cur, m.conf_id, sizeof m.conf_id) || ms_word_num(&cur, &b1) || ms_word_num(&cur, &b2) ||
                  b1 < 0 || b1 > INT_MAX || b2 < -1 || b2 > LONG_MAX;
            if (bad) break;
            m.req_time = t1;
            m.conf_time = t2;
            m.bounces = (int)b1;
            m.last_bounce = (long)b2;
            st->m = list_grow(st->m, st->nm, sizeof *st->m);
            st->m[st->nm++] = m;
        } else if (strcmp(key, "pending") == 0) {
            struct list_pending p;
            memset(&p, 0, sizeof p);
            bad = list_word(&cur, p.token, sizeof p.token) || strlen(p.token) != MS_LIST_TOKEN_LEN ||
                  list_word(&cur, kind, sizeof kind) || (strcmp(kind, "subscribe") != 0 && strcmp(kind, "unsubscribe") != 0) ||
                  list_word(&cur, p.addr, sizeof p.addr) || !strchr(p.addr, '@') || ms_word_num(&cur, &t1) ||
                  list_word(&cur, p.ip, sizeof p.ip) || list_word(&cur, p.id, sizeof p.id);
            if (bad) break;
            p.unsub = kind[0] == 'u';
            p.time = t1;
            st->p = list_grow(st->p, st->np, sizeof *st->p);
            st->p[st->np++] = p;
        } else {
            bad = 1;
        }
        if (ms_word(&cur)) bad = 1; /* words left over */
    }
    if (bad || !ok) { list_state_free(st); return -1; }
    return 0;
}

#if MAILSRV_ENABLE_HTTP
/* ---- small codecs the HTTP API shares: hex digits, UTF-8, civil dates ---- */

static int
ms_hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Four hex digits (JSON's \uXXXX): 0, or -1. */
static int
ms_hex4(const char *s, uint32_t *v)
{
    int i;
    *v = 0;
    for (i = 0; i < 4; i++) {
        int d = ms_hexval((unsigned char)s[i]);
        if (d < 0) return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* Days from 1970-01-01 to a proleptic Gregorian date (no timegm: not in POSIX.1-2008). */
static int64_t
ms_days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

/* An HTTP date (RFC 9110 5.6.7, IMF-fixdate): "Sun, 06 Nov 1994 08:49:37 GMT". */
static void
ms_http_date(char *buf, size_t n, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm *g = gmtime(&tt);
    if (!g) { ms_strlcpy(buf, "Thu, 01 Jan 1970 00:00:00 GMT", n); return; }
    ms_fmt(buf, n, "%s, %02d %s %d %02d:%02d:%02d GMT", ms_days[g->tm_wday], g->tm_mday, ms_months[g->tm_mon],
           g->tm_year + 1900, g->tm_hour, g->tm_min, g->tm_sec);
}


/* ---- HTTP/1.1 requests (RFC 9112), the API's JSON and its search queries ---- */

enum { HTTP_GET, HTTP_HEAD, HTTP_POST, HTTP_PUT, HTTP_DELETE, HTTP_OPTIONS, HTTP_NMETHODS };
static const char *const http_methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"};

/* A request's head, as http_parse_head reads it. */
struct http_req {
    int method;
    int minor;                         /* HTTP/1.minor */
    int keep_alive;                    /* RFC 9112 9.3: 1.1 unless "close", 1.0 only with "keep-alive" */
    int expect_continue;               /* Expect: 100-continue (curl sends it for large bodies) */
    int64_t length;                    /* Content-Length (0 if none) */
    char target[MS_HTTP_TARGET_MAX];   /* the path and query, as sent */
    char auth[MS_HTTP_AUTH_MAX];       /* Authorization */
    int cross_site;                    /* a browser sent it from another site's page (http_is_cross_site) */
    int browser;                       /* ... a browser sent it (Origin or Sec-Fetch-Site) */
    int requested_with;                /* X-Requested-With: the page's own requests (not simple: CORS-preflighted) */
    int host_local;                    /* Host names this machine's loopback (http_host_is_loopback) */
};

static int
http_tchar(int ch)
{
    return ch > 0x20 && ch < 0x7f && !strchr("\"(),/:;<=>?@[\\]{}", ch); /* RFC 9110 5.6.2 token */
}

/* Does the comma-separated list v name `token` (any case)? */
static int
http_list_has(const char *v, const char *token)
{
    size_t k = strlen(token);
    while (*v) {
        size_t n;
        while (*v == ' ' || *v == '\t' || *v == ',') v++;
        n = strcspn(v, ", \t");
        if (n == k && ms_strncaseeq(v, token, k)) return 1;
        v += n;
        while (*v && *v != ',') v++;
    }
    return 0;
}

/*
 * Reads a request head from p[0..n): its length once the blank line that ends
 * it is there, 0 if more is needed, or minus the status to answer (and then
 * close). Strict where leniency lets two parsers disagree on where a request
 * ends (request smuggling): a body only by Content-Length (Transfer-Encoding is
 * refused, 411, and with Content-Length 400: RFC 9112 6.1, 6.3), one
 * Content-Length value, no white space before a field's colon (5.1), no
 * folded lines (5.2), no bare CR, one Host in HTTP/1.1 (3.2). Lines may end
 * in LF alone (2.2), and empty lines before the request line are skipped.
 */
/* Did a browser send the request from another site's page? Browsers say where a request comes
 * from (Fetch: Sec-Fetch-Site; RFC 6454 7: Origin on every POST, PUT, DELETE); a client that says
 * nothing is not a browser, whose cached Basic login another page could use (CSRF). */
static int
http_is_cross_site(const char *host, const char *origin, const char *fetch_site)
{
    const char *o = origin;
    /* the browser's own word first: behind a proxy that rewrites Host, Origin would not match */
    if (fetch_site[0]) return strcmp(fetch_site, "same-origin") != 0 && strcmp(fetch_site, "none") != 0;
    if (!origin[0]) return 0;
    if (ms_strncaseeq(o, "http://", 7)) o += 7;
    else if (ms_strncaseeq(o, "https://", 8)) o += 8;
    else return 1; /* "null": a sandboxed frame, a file, a redirect across sites */
    return strlen(o) != strlen(host) || !ms_strncaseeq(o, host, strlen(host));
}

/* Does a Host value name the loopback (localhost, 127.0.0.0/8, [::1], with any port)? Capture
 * mode trusts loopback clients without a login; a page of another site whose name was made to
 * resolve to 127.0.0.1 (DNS rebinding) reaches us as a loopback client, but with its own name. */
static int
http_host_is_loopback(const char *host)
{
    char name[64];
    const char *end;
    size_t n;
    struct ms_addr a;
    if (host[0] == '[') { /* [IPv6]:PORT */
        if (!(end = strchr(++host, ']')) || (end[1] && end[1] != ':')) return 0;
    } else if (!(end = strchr(host, ':'))) {
        end = host + strlen(host);
    }
    if ((n = (size_t)(end - host)) >= sizeof name) return 0;
    memcpy(name, host, n);
    name[n] = 0;
    if (ms_strcaseeq(name, "localhost")) return 1;
    if (net_addr_parse(name, 0, &a) != 0) return 0;
    return a.family == AF_INET ? a.ip[0] == 127 : memcmp(a.ip, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
}

static long
http_parse_head(const char *p, size_t n, struct http_req *r)
{
    size_t pos = 0, end, len;
    int nfields = 0, hosts = 0, te = 0, conn_close = 0, conn_keep = 0, found = 0;
    int64_t cl = -1;
    char host[256] = "", origin[256] = "", fetch_site[32] = "";
    const char *sp1, *sp2, *line;
    memset(r, 0, sizeof *r);
    while (pos < n && pos < 8 && (p[pos] == '\r' || p[pos] == '\n')) pos++;
    for (end = pos; end < n; end++) { /* the head's end: an empty line */
        if (p[end] != '\n') continue;
        if (end + 1 < n && p[end + 1] == '\n') { end += 2; found = 1; break; }
        if (end + 2 < n && p[end + 1] == '\r' && p[end + 2] == '\n') { end += 3; found = 1; break; }
    }
    if (!found) return n >= MS_HTTP_HEAD_MAX ? -431 : 0;
    if (end > MS_HTTP_HEAD_MAX) return -431;
    /* the request line */
    line = p + pos;
    len = (size_t)((const char *)memchr(line, '\n', end - pos) - line);
    pos += len + 1;
    if (len && line[len - 1] == '\r') len--;
    sp1 = memchr(line, ' ', len);
    sp2 = sp1 ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - line)) : NULL;
    if (!sp1 || !sp2 || sp1 == line || sp2 == sp1 + 1) return -400;
    for (r->method = 0; r->method < HTTP_NMETHODS; r->method++)
        if (strlen(http_methods[r->method]) == (size_t)(sp1 - line) && memcmp(line, http_methods[r->method], (size_t)(sp1 - line)) == 0)
            break;
    if (line + len - (sp2 + 1) != 8 || memcmp(sp2 + 1, "HTTP/", 5) != 0 || !isdigit((unsigned char)sp2[6]) ||
        sp2[7] != '.' || !isdigit((unsigned char)sp2[8]))
        return -400;
    if (sp2[6] != '1') return -505;
    r->minor = sp2[8] - '0';
    {
        const char *t = sp1 + 1;
        size_t tl = (size_t)(sp2 - t), i;
        for (i = 0; i < tl; i++)
            if (t[i] <= 0x20 || t[i] >= 0x7f) return -400;
        if (tl > 7 && (ms_strncaseeq(t, "http://", 7) || (tl > 8 && ms_strncaseeq(t, "https://", 8)))) {
            const char *slash = memchr(t + 8, '/', tl - 8); /* absolute-form (RFC 9112 3.2.2) */
            tl = slash ? tl - (size_t)(slash - t) : 1;
            t = slash ? slash : "/";
        }
        if (t[0] != '/' && !(tl == 1 && t[0] == '*')) return -400;
        if (tl >= sizeof r->target) return -414;
        memcpy(r->target, t, tl);
        r->target[tl] = 0;
    }
    if (r->method == HTTP_NMETHODS) return -501;
    /* the header fields */
    while (pos < end) {
        const char *f = p + pos, *colon, *v;
        size_t fl = (size_t)((const char *)memchr(f, '\n', end - pos) - f), vl, i;
        pos += fl + 1;
        if (fl && f[fl - 1] == '\r') fl--;
        if (fl == 0) break;
        if (++nfields > MS_HTTP_FIELDS_MAX) return -431;
        if (f[0] == ' ' || f[0] == '\t') return -400; /* obs-fold */
        colon = memchr(f, ':', fl);
        if (!colon || colon == f) return -400;
        for (i = 0; f + i < colon; i++)
            if (!http_tchar((unsigned char)f[i])) return -400;
        v = colon + 1;
        vl = fl - (size_t)(v - f);
        for (i = 0; i < vl; i++)
            if (v[i] == 0 || v[i] == '\r' || v[i] == '\n') return -400;
        while (vl && (*v == ' ' || *v == '\t')) v++, vl--;
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
#define FIELD_IS(name) ((size_t)(colon - f) == sizeof name - 1 && ms_strncaseeq(f, name, sizeof name - 1))
#define FIELD_COPY(dst) do { if (vl >= sizeof dst) return -431; memcpy(dst, v, vl); dst[vl] = 0; } while (0)
        if (FIELD_IS("Content-Length")) {
            int64_t x = 0;
            if (vl == 0 || vl > 15) return vl > 15 ? -413 : -400;
            for (i = 0; i < vl; i++) {
                if (!isdigit((unsigned char)v[i])) return -400;
                x = x * 10 + (v[i] - '0');
            }
            if (cl >= 0 && x != cl) return -400;
            cl = x;
        } else if (FIELD_IS("Transfer-Encoding")) {
            te = 1;
        } else if (FIELD_IS("Host")) {
            hosts++;
            FIELD_COPY(host);
        } else if (FIELD_IS("Origin")) {
            FIELD_COPY(origin);
        } else if (FIELD_IS("Sec-Fetch-Site")) {
            FIELD_COPY(fetch_site);
        } else if (FIELD_IS("X-Requested-With")) {
            r->requested_with = 1;
        } else if (FIELD_IS("Authorization")) {
            FIELD_COPY(r->auth);
        } else if (FIELD_IS("Connection")) {
            char tmp[256];
            if (vl >= sizeof tmp) vl = sizeof tmp - 1;
            FIELD_COPY(tmp);
            conn_close |= http_list_has(tmp, "close");
            conn_keep |= http_list_has(tmp, "keep-alive");
        } else if (FIELD_IS("Expect")) {
            if (vl != 12 || !ms_strncaseeq(v, "100-continue", 12)) return -417;
            r->expect_continue = 1;
        }
#undef FIELD_IS
#undef FIELD_COPY
    }
    if (te) return cl >= 0 ? -400 : -411;
    if (r->minor >= 1 && hosts != 1) return -400;
    if (hosts > 1) return -400;
    r->length = cl < 0 ? 0 : cl;
    r->cross_site = http_is_cross_site(host, origin, fetch_site);
    r->browser = origin[0] || fetch_site[0];
    r->host_local = http_host_is_loopback(host);
    r->keep_alive = !conn_close && (r->minor >= 1 || conn_keep);
    if (!r->length || r->minor == 0) r->expect_continue = 0; /* RFC 9110 10.1.1: HTTP/1.0 knows no 100 */
    return (long)end;
}

/* Percent-decodes s[0..n) into out (and '+' as a space in a query): -1 on a
 * bad escape, a NUL, or no room. */
static int
http_unescape(const char *s, size_t n, char *out, size_t on, int plus)
{
    size_t i, o = 0;
    for (i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            int hi, lo;
            if (i + 2 >= n) return -1;
            hi = ms_hexval(s[i + 1]);
            lo = ms_hexval(s[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            ch = hi * 16 + lo;
            i += 2;
        } else if (ch == '+' && plus) {
            ch = ' ';
        }
        if (ch == 0 || o + 1 >= on) return -1;
        out[o++] = (char)ch;
    }
    out[o] = 0;
    return 0;
}

/* The value of query parameter `name` in target's query, decoded: 1 if
 * present, 0 if not, -1 if malformed. */
static int
http_query(const char *target, const char *name, char *out, size_t on)
{
    const char *q = strchr(target, '?');
    size_t k = strlen(name);
    out[0] = 0;
    if (!q) return 0;
    for (q++; *q;) {
        size_t n = strcspn(q, "&");
        const char *eq = memchr(q, '=', n);
        size_t nl = eq ? (size_t)(eq - q) : n;
        if (nl == k && memcmp(q, name, k) == 0)
            return http_unescape(eq ? eq + 1 : q + n, eq ? n - nl - 1 : 0, out, on, 1) == 0 ? 1 : -1;
        q += n;
        if (*q) q++;
    }
    return 0;
}

/* ---- JSON (RFC 8259): written into a buf, and read with a small tokenizer ---- */

/* The length of the valid UTF-8 sequence at s (at most n bytes), or 0 if there is none (RFC 3629 4). */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
    size_t k;
    return utf8_decode(s, n, &k) < 0 ? 0 : k;
}

/* A JSON string of s[0..n): escaped, with each byte that is not valid UTF-8 as U+FFFD. */
static void
json_str(struct buf *b, const char *s, size_t n)
{
    size_t i = 0;
    buf_reserve(b, n + 2);
    buf_add(b, "\"", 1);
    while (i < n) {
        unsigned char ch = (unsigned char)s[i];
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (ch == '"' || ch == '\\') { buf_add(b, "\\", 1); buf_add(b, s + i, 1); i++; }
        else if (ch == '\n') { buf_add(b, "\\n", 2); i++; }
        else if (ch == '\r') { buf_add(b, "\\r", 2); i++; }
        else if (ch == '\t') { buf_add(b, "\\t", 2); i++; }
        else if (ch < 0x20 || ch == 0x7f) { buf_printf(b, "\\u%04x", ch); i++; }
        else if (!k) { buf_add(b, "\xEF\xBF\xBD", 3); i++; }
        else {
            size_t run = i + k; /* the plain run from here on, at once */
            while (run < n && (unsigned char)s[run] >= 0x20 && s[run] != '"' && s[run] != '\\' && s[run] != 0x7f) {
                size_t kk = utf8_seq((const unsigned char *)s + run, n - run);
                if (!kk) break;
                run += kk;
            }
            buf_add(b, s + i, run - i);
            i = run;
        }
    }
    buf_add(b, "\"", 1);
}
static void json_strs(struct buf *b, const char *s) { json_str(b, s, strlen(s)); }

/* "KEY":"VALUE", for objects written field by field (sep: the comma before, or ""). */
static void
json_kv(struct buf *b, const char *sep, const char *key, const char *v)
{
    buf_printf(b, "%s\"%s\":", sep, key);
    json_strs(b, v);
}

/* A tokenized JSON text (jsmn's way): each value a token, with its children
 * after it; strings still escaped (json_text decodes them). */
enum { JSON_NULL, JSON_BOOL, JSON_NUM, JSON_STR, JSON_ARR, JSON_OBJ };
struct json_tok { int type; size_t start, len; int size, next; }; /* size: members; next: the token after it and its children */
struct json { const char *s; struct json_tok *t; int n, cap; };

static int
json_value(struct json *j, size_t *pos, size_t n, int depth)
{
    const char *s = j->s;
    size_t p = *pos;
    int me;
    while (p < n && s[p] && strchr(" \t\r\n", s[p])) p++;
    if (p >= n || depth > MS_JSON_DEPTH || j->n >= MS_JSON_TOKENS) return -1;
    if (j->n == j->cap) {
        j->cap = j->cap ? j->cap * 2 : 32;
        j->t = xrealloc(j->t, sizeof *j->t * (size_t)j->cap);
    }
    me = j->n++;
    j->t[me].start = p;
    j->t[me].size = 0;
    if (s[p] == '{' || s[p] == '[') {
        char close = s[p] == '{' ? '}' : ']';
        j->t[me].type = s[p] == '{' ? JSON_OBJ : JSON_ARR;
        p++;
        for (;;) {
            while (p < n && s[p] && strchr(" \t\r\n", s[p])) p++;
            if (p < n && s[p] == close && j->t[me].size == 0) { p++; break; }
            if (j->t[me].type == JSON_OBJ) {
                if (p >= n || s[p] != '"' || json_value(j, &p, n, depth + 1) < 0) return -1;
                while (p < n && s[p] && strchr(" \t\r\n", s[p])) p++;
                if (p >= n || s[p] != ':') return -1;
                p++;
            }
            if (json_value(j, &p, n, depth + 1) < 0) return -1;
            j->t[me].size++;
            while (p < n && s[p] && strchr(" \t\r\n", s[p])) p++;
            if (p < n && s[p] == ',') { p++; continue; }
            if (p < n && s[p] == close) { p++; break; }
            return -1;
        }
    } else if (s[p] == '"') {
        j->t[me].type = JSON_STR;
        for (p++; p < n && s[p] != '"'; p++) {
            if ((unsigned char)s[p] < 0x20) return -1;
            if (s[p] == '\\' && (++p >= n || !s[p] || !strchr("\"\\/bfnrtu", s[p]))) return -1; /* RFC 8259 7 */
        }
        if (p >= n) return -1;
        p++;
    } else {
        size_t q = p;
        while (q < n && (isalnum((unsigned char)s[q]) || (s[q] && strchr("+-.", s[q])))) q++;
        if (q == p) return -1;
        if (q - p == 4 && memcmp(s + p, "null", 4) == 0) j->t[me].type = JSON_NULL;
        else if ((q - p == 4 && memcmp(s + p, "true", 4) == 0) || (q - p == 5 && memcmp(s + p, "false", 5) == 0))
            j->t[me].type = JSON_BOOL;
        else if (s[p] == '-' || isdigit((unsigned char)s[p])) j->t[me].type = JSON_NUM;
        else return -1;
        p = q;
    }
    j->t[me].len = p - j->t[me].start;
    j->t[me].next = j->n;
    *pos = p;
    return me;
}

/* Tokenizes s[0..n): 0, or -1 if it is not one JSON value (then j is empty). */
static int
json_parse(struct json *j, const char *s, size_t n)
{
    size_t pos = 0;
    memset(j, 0, sizeof *j);
    j->s = s;
    if (json_value(j, &pos, n, 0) < 0) { free(j->t); memset(j, 0, sizeof *j); return -1; }
    while (pos < n && s[pos] && strchr(" \t\r\n", s[pos])) pos++;
    if (pos != n) { free(j->t); memset(j, 0, sizeof *j); return -1; }
    return 0;
}
static void json_free(struct json *j) { free(j->t); memset(j, 0, sizeof *j); }

/* A string token's text, unescaped into UTF-8 (a lone surrogate: U+FFFD); other tokens as written. */
static void
json_text(const struct json *j, int k, struct buf *out)
{
    const char *s = j->s + j->t[k].start;
    size_t n = j->t[k].len, i;
    buf_add(out, "", 0);
    if (j->t[k].type != JSON_STR) { buf_add(out, s, n); return; }
    for (i = 1; i + 1 < n; i++) {
        uint32_t cp;
        char u[4];
        if (s[i] != '\\') { buf_add(out, s + i, 1); continue; }
        switch (s[++i]) {
        case 'n': buf_add(out, "\n", 1); continue;
        case 'r': buf_add(out, "\r", 1); continue;
        case 't': buf_add(out, "\t", 1); continue;
        case 'b': buf_add(out, "\b", 1); continue;
        case 'f': buf_add(out, "\f", 1); continue;
        case 'u': break;
        default: buf_add(out, s + i, 1); continue;
        }
        if (i + 4 >= n || ms_hex4(s + i + 1, &cp) != 0) { buf_add(out, "\xEF\xBF\xBD", 3); continue; }
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 < n && s[i + 1] == '\\' && s[i + 2] == 'u') {
            uint32_t lo;
            if (ms_hex4(s + i + 3, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
        if (cp == 0) cp = 0xFFFD; /* no NUL inside C strings */
        buf_add(out, u, utf8_put(u, cp));
    }
}

/* The member `key` of object token k, or -1. */
static int
json_get(const struct json *j, int k, const char *key)
{
    int i, m;
    size_t kl = strlen(key);
    if (k < 0 || j->t[k].type != JSON_OBJ) return -1;
    for (i = 0, m = k + 1; i < j->t[k].size; i++) {
        int v = j->t[m].next;
        if (j->t[m].len == kl + 2 && ms_strncaseeq(j->s + j->t[m].start + 1, key, kl)) return v; /* as Go's encoding/json */
        m = j->t[v].next;
    }
    return -1;
}

/* The item after item k of an array (k the array itself: its first), or -1. */
static int
json_item(const struct json *j, int arr, int k)
{
    int next = k == arr ? arr + 1 : j->t[k].next;
    return next < j->t[arr].next ? next : -1;
}

/* A number token's value (a whole number, clamped), or dflt for any other token. */
static long
json_long(const struct json *j, int k, long dflt)
{
    char tmp[24];
    long v;
    if (k < 0 || j->t[k].type != JSON_NUM || j->t[k].len >= sizeof tmp) return dflt;
    memcpy(tmp, j->s + j->t[k].start, j->t[k].len);
    tmp[j->t[k].len] = 0;
    v = strtol(tmp, NULL, 10);
    return v < -1000000 ? -1000000 : v > 1000000 ? 1000000 : v;
}

static int json_true(const struct json *j, int k) { return k >= 0 && j->t[k].type == JSON_BOOL && j->s[j->t[k].start] == 't'; }


/* ---- MIME (RFC 2045-2049), read for the HTTP API: parts, transfer encodings, charsets ---- */

#define MIME_MAX_PARTS 64    /* parts read from one message (more are not split) */
#define MIME_MAX_DEPTH 8     /* multipart nesting followed */

/* A part of a message as mime_parse finds it; offsets are into the message. */
struct mime_part {
    char id[32];             /* IMAP's part number (RFC 3501 6.4.5), Mailpit's PartID: "1", "1.2"; "" the top multipart */
    size_t head, head_len;   /* its header block */
    size_t body, body_len;   /* its body as stored (still transfer-encoded) */
    char type[96];           /* lower case type/subtype (default text/plain, RFC 2045 5.2) */
    char charset[40];        /* lower case; "" if none */
    char encoding[24];       /* lower case Content-Transfer-Encoding; "" 7bit */
    char disposition[16];    /* "attachment", "inline" or "" */
    char filename[256];      /* UTF-8 (RFC 2231, 2047) */
    char content_id[200];    /* without its angle brackets */
    int depth, multipart;    /* 0: the message; a multipart's children follow it */
};

/* The 8-bit charsets classroom clients send: code points of bytes 0x80-0xFF (U+FFFD: none),
 * as the Unicode Consortium's mapping files give them (generated from Python's codecs). */
static const unsigned short cs_koi8r[128] = {
    0x2500, 0x2502, 0x250C, 0x2510, 0x2514, 0x2518, 0x251C, 0x2524, 0x252C, 0x2534, 0x253C, 0x2580,
    0x2584, 0x2588, 0x258C, 0x2590, 0x2591, 0x2592, 0x2593, 0x2320, 0x25A0, 0x2219, 0x221A, 0x2248,
    0x2264, 0x2265, 0x00A0, 0x2321, 0x00B0, 0x00B2, 0x00B7, 0x00F7, 0x2550, 0x2551, 0x2552, 0x0451,
    0x2553, 0x2554, 0x2555, 0x2556, 0x2557, 0x2558, 0x2559, 0x255A, 0x255B, 0x255C, 0x255D, 0x255E,
    0x255F, 0x2560, 0x2561, 0x0401, 0x2562, 0x2563, 0x2564, 0x2565, 0x2566, 0x2567, 0x2568, 0x2569,
    0x256A, 0x256B, 0x256C, 0x00A9, 0x044E, 0x0430, 0x0431, 0x0446, 0x0434, 0x0435, 0x0444, 0x0433,
    0x0445, 0x0438, 0x0439, 0x043A, 0x043B, 0x043C, 0x043D, 0x043E, 0x043F, 0x044F, 0x0440, 0x0441,
    0x0442, 0x0443, 0x0436, 0x0432, 0x044C, 0x044B, 0x0437, 0x0448, 0x044D, 0x0449, 0x0447, 0x044A,
    0x042E, 0x0410, 0x0411, 0x0426, 0x0414, 0x0415, 0x0424, 0x0413, 0x0425, 0x0418, 0x0419, 0x041A,
    0x041B, 0x041C, 0x041D, 0x041E, 0x041F, 0x042F, 0x0420, 0x0421, 0x0422, 0x0423, 0x0416, 0x0412,
    0x042C, 0x042B, 0x0417, 0x0428, 0x042D, 0x0429, 0x0427, 0x042A,
};

static const unsigned short cs_cp1251[128] = {
    0x0402, 0x0403, 0x201A, 0x0453, 0x201E, 0x2026, 0x2020, 0x2021, 0x20AC, 0x2030, 0x0409, 0x2039,
    0x040A, 0x040C, 0x040B, 0x040F, 0x0452, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0xFFFD, 0x2122, 0x0459, 0x203A, 0x045A, 0x045C, 0x045B, 0x045F, 0x00A0, 0x040E, 0x045E, 0x0408,
    0x00A4, 0x0490, 0x00A6, 0x00A7, 0x0401, 0x00A9, 0x0404, 0x00AB, 0x00AC, 0x00AD, 0x00AE, 0x0407,
    0x00B0, 0x00B1, 0x0406, 0x0456, 0x0491, 0x00B5, 0x00B6, 0x00B7, 0x0451, 0x2116, 0x0454, 0x00BB,
    0x0458, 0x0405, 0x0455, 0x0457, 0x0410, 0x0411, 0x0412, 0x0413, 0x0414, 0x0415, 0x0416, 0x0417,
    0x0418, 0x0419, 0x041A, 0x041B, 0x041C, 0x041D, 0x041E, 0x041F, 0x0420, 0x0421, 0x0422, 0x0423,
    0x0424, 0x0425, 0x0426, 0x0427, 0x0428, 0x0429, 0x042A, 0x042B, 0x042C, 0x042D, 0x042E, 0x042F,
    0x0430, 0x0431, 0x0432, 0x0433, 0x0434, 0x0435, 0x0436, 0x0437, 0x0438, 0x0439, 0x043A, 0x043B,
    0x043C, 0x043D, 0x043E, 0x043F, 0x0440, 0x0441, 0x0442, 0x0443, 0x0444, 0x0445, 0x0446, 0x0447,
    0x0448, 0x0449, 0x044A, 0x044B, 0x044C, 0x044D, 0x044E, 0x044F,
};

static const unsigned short cs_cp866[128] = {
    0x0410, 0x0411, 0x0412, 0x0413, 0x0414, 0x0415, 0x0416, 0x0417, 0x0418, 0x0419, 0x041A, 0x041B,
    0x041C, 0x041D, 0x041E, 0x041F, 0x0420, 0x0421, 0x0422, 0x0423, 0x0424, 0x0425, 0x0426, 0x0427,
    0x0428, 0x0429, 0x042A, 0x042B, 0x042C, 0x042D, 0x042E, 0x042F, 0x0430, 0x0431, 0x0432, 0x0433,
    0x0434, 0x0435, 0x0436, 0x0437, 0x0438, 0x0439, 0x043A, 0x043B, 0x043C, 0x043D, 0x043E, 0x043F,
    0x2591, 0x2592, 0x2593, 0x2502, 0x2524, 0x2561, 0x2562, 0x2556, 0x2555, 0x2563, 0x2551, 0x2557,
    0x255D, 0x255C, 0x255B, 0x2510, 0x2514, 0x2534, 0x252C, 0x251C, 0x2500, 0x253C, 0x255E, 0x255F,
    0x255A, 0x2554, 0x2569, 0x2566, 0x2560, 0x2550, 0x256C, 0x2567, 0x2568, 0x2564, 0x2565, 0x2559,
    0x2558, 0x2552, 0x2553, 0x256B, 0x256A, 0x2518, 0x250C, 0x2588, 0x2584, 0x258C, 0x2590, 0x2580,
    0x0440, 0x0441, 0x0442, 0x0443, 0x0444, 0x0445, 0x0446, 0x0447, 0x0448, 0x0449, 0x044A, 0x044B,
    0x044C, 0x044D, 0x044E, 0x044F, 0x0401, 0x0451, 0x0404, 0x0454, 0x0407, 0x0457, 0x040E, 0x045E,
    0x00B0, 0x2219, 0x00B7, 0x221A, 0x2116, 0x00A4, 0x25A0, 0x00A0,
};

static const unsigned short cs_cp1252[32] = {
    0x20AC, 0xFFFD, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0xFFFD, 0x017D, 0xFFFD, 0xFFFD, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0xFFFD, 0x017E, 0x0178,
};

/* A charset's table: 1 Latin-1, 2 ISO-8859-5 (a formula), 3 windows-1252, 4 a 128-entry table
 * in *t; 0 UTF-8 (and US-ASCII, and unknown ones: see mime_to_utf8). */
static int
mime_charset(const char *cs, const unsigned short **t)
{
    static const struct { const char *name; int kind; const unsigned short *t; } known[] = {
        {"iso-8859-1", 1, NULL}, {"iso8859-1", 1, NULL}, {"latin1", 1, NULL}, {"l1", 1, NULL}, {"iso_8859-1", 1, NULL},
        {"iso-8859-5", 2, NULL}, {"iso8859-5", 2, NULL}, {"iso_8859-5", 2, NULL}, {"cyrillic", 2, NULL},
        {"windows-1252", 3, NULL}, {"cp1252", 3, NULL}, {"x-cp1252", 3, NULL},
        {"koi8-r", 4, cs_koi8r}, {"koi8r", 4, cs_koi8r}, {"cskoi8r", 4, cs_koi8r},
        {"windows-1251", 4, cs_cp1251}, {"cp1251", 4, cs_cp1251}, {"x-cp1251", 4, cs_cp1251},
        {"cp866", 4, cs_cp866}, {"ibm866", 4, cs_cp866}, {"866", 4, cs_cp866}, {"csibm866", 4, cs_cp866},
    };
    size_t i;
    *t = NULL;
    for (i = 0; i < sizeof known / sizeof known[0]; i++)
        if (ms_strcaseeq(cs, known[i].name)) { *t = known[i].t; return known[i].kind; }
    return 0;
}

static int
mime_charset_known(const char *cs)
{
    const unsigned short *t;
    return mime_charset(cs, &t) || !*cs || ms_strcaseeq(cs, "utf-8") || ms_strcaseeq(cs, "utf8") ||
           ms_strcaseeq(cs, "us-ascii") || ms_strcaseeq(cs, "ascii");
}

/* n bytes in charset cs as UTF-8, appended to out. UTF-8, US-ASCII (clients send UTF-8 labelled
 * so) and unknown charsets: valid UTF-8 stays, each other byte becomes U+FFFD; a NUL too. */
static void
mime_to_utf8(struct buf *out, const char *cs, const char *p, size_t n)
{
    const unsigned short *t;
    int kind = mime_charset(cs, &t);
    size_t i = 0;
    buf_reserve(out, n + n / 2);
    while (i < n) {
        unsigned char ch = (unsigned char)p[i];
        uint32_t cp;
        char u[4];
        if (ch && ch < 0x80) { buf_add(out, p + i, 1); i++; continue; }
        if (kind == 0) {
            size_t k = ch ? utf8_seq((const unsigned char *)p + i, n - i) : 0;
            if (k) buf_add(out, p + i, k);
            else buf_add(out, "\xEF\xBF\xBD", 3);
            i += k ? k : 1;
            continue;
        }
        if (!ch) cp = 0xFFFD;
        else if (kind == 1) cp = ch;
        else if (kind == 2) cp = ch < 0xA1 ? ch : ch == 0xAD ? 0xAD : ch == 0xF0 ? 0x2116 : ch == 0xFD ? 0xA7 : ch - 0xA0u + 0x400u;
        else if (kind == 3) cp = ch < 0xA0 ? cs_cp1252[ch - 0x80] : ch;
        else cp = t[ch - 0x80];
        buf_add(out, u, utf8_put(u, cp));
        i++;
    }
}

/* base64, leniently (RFC 2045 6.8: characters outside the alphabet are ignored), to the first '='. */
/* base64 digits' values, -1 for the other bytes (a table: the digits of random data defeat branches) */
static const signed char mime_b64_values[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

static void
mime_base64(struct buf *out, const char *p, size_t n)
{
    uint32_t v = 0;
    int bits = 0, d;
    size_t i;
    unsigned char *o;
    buf_reserve(out, n / 4 * 3 + 3);
    o = (unsigned char *)out->p + out->len;
    for (i = 0; i < n && p[i] != '='; i++) {
        if ((d = mime_b64_values[(unsigned char)p[i]]) < 0) continue;
        v = v << 6 | (uint32_t)d;
        if ((bits += 6) >= 8) *o++ = (unsigned char)(v >> (bits -= 8));
    }
    out->len = (size_t)((char *)o - out->p);
    out->p[out->len] = 0;
}


/* quoted-printable (RFC 2045 6.7): =XY, soft line breaks ("=" at a line's end), trailing white
 * space dropped; a malformed '=' is kept as it is. */
static void
mime_qp(struct buf *out, const char *p, size_t n, int header)
{
    size_t i = 0;
    while (i < n) {
        if (p[i] == '=') {
            int hi = i + 1 < n ? ms_hexval((unsigned char)p[i + 1]) : -1, lo = i + 2 < n ? ms_hexval((unsigned char)p[i + 2]) : -1;
            size_t k = i + 1;
            if (hi >= 0 && lo >= 0) { unsigned char b = (unsigned char)(hi * 16 + lo); buf_add(out, &b, 1); i += 3; continue; }
            while (k < n && (p[k] == ' ' || p[k] == '\t')) k++;
            if (k < n && p[k] == '\r') k++;
            if (k >= n || p[k] == '\n') { i = k < n ? k + 1 : n; continue; } /* soft line break */
        } else if (p[i] == '_' && header) {
            buf_add(out, " ", 1);
            i++;
            continue;
        } else if (p[i] == ' ' || p[i] == '\t') { /* trailing white space is padding */
            size_t k = i;
            while (k < n && (p[k] == ' ' || p[k] == '\t')) k++;
            if (k < n && p[k] == '\r') k++;
            if (k >= n || p[k] == '\n') { i = k; continue; }
        }
        buf_add(out, p + i, 1);
        i++;
    }
}

/* An RFC 2047 encoded word at p (n bytes left): its length, its UTF-8 text into out (NULL: only
 * its length); 0 if there is none. */
static size_t
mime_word(struct buf *out, const char *p, size_t n)
{
    char cs[48];
    const char *q, *enc, *end;
    struct buf raw = {0};
    size_t cl;
    if (n < 8 || p[0] != '=' || p[1] != '?') return 0;
    if (!(q = memchr(p + 2, '?', n - 2)) || (cl = (size_t)(q - p - 2)) == 0 || cl >= sizeof cs) return 0;
    enc = q + 1;
    if ((size_t)(enc - p) + 3 > n || enc[1] != '?') return 0;
    for (end = enc + 2; end + 1 < p + n && !(end[0] == '?' && end[1] == '='); end++)
        if (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r') return 0;
    if (end + 1 >= p + n) return 0;
    memcpy(cs, p + 2, cl);
    cs[cl] = 0;
    if ((q = strchr(cs, '*')) != NULL) cs[q - cs] = 0; /* RFC 2231 5: a language after the charset */
    if (!mime_charset_known(cs)) return 0;
    if (*enc != 'B' && *enc != 'b' && *enc != 'Q' && *enc != 'q') return 0;
    if (!out) return (size_t)(end + 2 - p); /* only asked whether one is there */
    if (*enc == 'B' || *enc == 'b') mime_base64(&raw, enc + 2, (size_t)(end - enc - 2));
    else mime_qp(&raw, enc + 2, (size_t)(end - enc - 2), 1);
    mime_to_utf8(out, cs, raw.p ? raw.p : "", raw.len);
    buf_free(&raw);
    return (size_t)(end + 2 - p);
}

/* A header field's value as UTF-8 text: unfolded, trimmed, encoded words decoded (the white
 * space between two of them dropped: RFC 2047 6.2), 8-bit bytes kept if UTF-8, else read as
 * windows-1252 (what such mailers mean). */
static void
mime_header_text(struct buf *out, const char *v, size_t n)
{
    size_t i = 0, start = out->len;
    int space = 0, after_word = 0;
    buf_add(out, "", 0);
    while (i < n) {
        size_t e = i, k;
        if (v[i] == ' ' || v[i] == '\t' || v[i] == '\r' || v[i] == '\n') { /* unfolded: one space */
            space = out->len > start || after_word;
            i++;
            continue;
        }
        while (e < n && v[e] != ' ' && v[e] != '\t' && v[e] != '\r' && v[e] != '\n') e++;
        if ((k = mime_word(NULL, v + i, e - i)) > 0) { /* encoded words: the space between two goes */
            if (space && !after_word) buf_add(out, " ", 1);
            while ((k = mime_word(out, v + i, e - i)) > 0) i += k;
            after_word = i == e;
            space = 0;
            if (i == e) continue;
        } else if (space) {
            buf_add(out, " ", 1);
        }
        space = after_word = 0;
        for (k = i; k < e && (unsigned char)v[k] < 0x80 && v[k]; k++) {}
        if (k == e) { buf_add(out, v + i, e - i); }
        else { /* 8-bit: UTF-8 if it is, else what such mailers mean: windows-1252 */
            int utf8 = 1;
            for (k = i; k < e && utf8;) {
                size_t l = v[k] ? utf8_seq((const unsigned char *)v + k, e - k) : 0;
                utf8 = l > 0;
                k += l;
            }
            mime_to_utf8(out, utf8 ? "utf-8" : "windows-1252", v + i, e - i);
        }
        i = e;
    }
}

/* The first field `name` of the header block h as mime_header_text gives it: 1 if there is one. */
/* The value of field name (raw, not decoded) in the block h: a pointer and length, or NULL. */
static const char *
mime_field_raw(const char *h, size_t n, const char *name, size_t *vl)
{
    size_t pos = 0, flen, k = strlen(name) + 1;
    const char *f;
    while (hdr_next_field(h, n, &pos, &f, &flen))
        if (hdr_is(f, flen, name)) { *vl = flen - k; return f + k; }
    return NULL;
}

static int
mime_header(const char *h, size_t n, const char *name, struct buf *out)
{
    size_t vl;
    const char *v = mime_field_raw(h, n, name, &vl);
    if (v) mime_header_text(out, v, vl);
    return v != NULL;
}

/* A parameter of a structured field (RFC 2045 5.1: token or quoted string), with RFC 2231
 * continuations (name*0, name*1*) and charsets (name*=utf-8''%D0%9F), and the RFC 2047 words
 * that clients put in quoted names. The value as UTF-8 into out; 1 if present. */
static int
mime_param(const char *v, size_t n, const char *name, struct buf *out)
{
    size_t kl = strlen(name);
    int found = 0, part;
    char cs[48] = "";
    out->len = 0;
    buf_add(out, "", 0);
    for (part = -1; part < 100; part++) { /* -1: the plain name; then name*0, name*1, ... */
        size_t i = 0;
        int got = 0;
        while (i < n && !got) {
            size_t s, e, j;
            int ext = 0;
            char key[80];
            while (i < n && v[i] != ';' && v[i] != '"') i++;
            if (i < n && v[i] == '"') { for (i++; i < n && v[i] != '"'; i++) if (v[i] == '\\') i++; i++; continue; }
            if (i >= n) break;
            for (i++; i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == '\r' || v[i] == '\n'); i++) {}
            for (s = i; i < n && v[i] != '=' && v[i] != ';'; i++) {}
            if (i >= n || v[i] != '=') continue;
            for (e = i; e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'); e--) {}
            if (part < 0) snprintf(key, sizeof key, "%s", name);
            else snprintf(key, sizeof key, "%s*%d", name, part);
            if (e - s == strlen(key) + 1 && v[e - 1] == '*' && ms_strncaseeq(v + s, key, e - s - 1)) ext = 1;
            else if (!(e - s == strlen(key) && ms_strncaseeq(v + s, key, e - s))) continue;
            if (part < 0 && e - s == kl + 1 && v[e - 1] == '*') ext = 1;
            for (i++; i < n && (v[i] == ' ' || v[i] == '\t'); i++) {}
            got = 1;
            if (i < n && v[i] == '"') {
                struct buf raw = {0};
                for (i++; i < n && v[i] != '"'; i++) {
                    if (v[i] == '\\' && i + 1 < n) i++;
                    if (v[i] != '\r' && v[i] != '\n') buf_add(&raw, v + i, 1);
                }
                if (raw.p) mime_header_text(out, raw.p, raw.len);
                buf_free(&raw);
            } else {
                for (j = i; j < n && v[j] != ';' && v[j] != ' ' && v[j] != '\t' && v[j] != '\r' && v[j] != '\n'; j++) {}
                if (ext) { /* charset'language'%XX... (RFC 2231 4), the charset in the first part only */
                    const char *q1 = part <= 0 ? memchr(v + i, '\'', j - i) : NULL, *q2 = q1 ? memchr(q1 + 1, '\'', (size_t)(v + j - q1 - 1)) : NULL;
                    struct buf raw = {0};
                    size_t k;
                    if (q2) {
                        size_t l = (size_t)(q1 - (v + i)) < sizeof cs ? (size_t)(q1 - (v + i)) : sizeof cs - 1;
                        memcpy(cs, v + i, l);
                        cs[l] = 0;
                        i = (size_t)(q2 + 1 - v);
                    }
                    for (k = i; k < j; k++) {
                        int hi, lo;
                        if (v[k] == '%' && k + 2 < j + 1 && (hi = ms_hexval((unsigned char)v[k + 1])) >= 0 &&
                            k + 2 < n && (lo = ms_hexval((unsigned char)v[k + 2])) >= 0) {
                            unsigned char b = (unsigned char)(hi * 16 + lo);
                            buf_add(&raw, &b, 1);
                            k += 2;
                        } else {
                            buf_add(&raw, v + k, 1);
                        }
                    }
                    mime_to_utf8(out, cs, raw.p ? raw.p : "", raw.len);
                    buf_free(&raw);
                } else {
                    mime_header_text(out, v + i, j - i);
                }
            }
        }
        if (got) found = 1;
        if (part == -1 && got) return 1; /* a plain name=value needs no continuations */
        if (part >= 0 && !got) break;
    }
    return found;
}

/* The lower-case type/subtype of a Content-Type value (RFC 2045 5.1), "" if malformed. */
static void
mime_type(const char *v, size_t n, char *out, size_t on)
{
    size_t i = 0, o = 0;
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == '\r' || v[i] == '\n')) i++;
    for (; i < n && v[i] != ';' && v[i] != ' ' && v[i] != '\t' && v[i] != '\r' && v[i] != '\n' && v[i] != '('; i++)
        if (o + 1 < on) out[o++] = (char)tolower((unsigned char)v[i]);
    out[o] = 0;
    if (!strchr(out, '/') || out[0] == '/' || out[o - 1] == '/') out[0] = 0;
}


/* Fills p's fields from its header block (its body must be set already). */
static void
mime_part_fields(const char *msg, struct mime_part *p, int in_digest)
{
    const char *h = msg + p->head, *v;
    size_t vl;
    struct buf t = {0};
    p->type[0] = p->charset[0] = p->encoding[0] = p->disposition[0] = p->filename[0] = p->content_id[0] = 0;
    if ((v = mime_field_raw(h, p->head_len, "Content-Type", &vl)) != NULL) {
        mime_type(v, vl, p->type, sizeof p->type);
        if (mime_param(v, vl, "charset", &t)) { ms_strlcpy(p->charset, t.p, sizeof p->charset); ms_lower(p->charset); }
        if (mime_param(v, vl, "name", &t)) ms_strlcpy(p->filename, t.p, sizeof p->filename);
    }
    {   /* a type and charset are tokens (RFC 2045 5.1): anything else (a CR LF decoded from RFC 2231) is dropped,
         * as they go into the HTTP answer's Content-Type */
        size_t i;
        for (i = 0; p->type[i]; i++)
            if (!http_tchar((unsigned char)p->type[i]) && p->type[i] != '/') p->type[0] = 0;
        for (i = 0; p->charset[i]; i++)
            if (!http_tchar((unsigned char)p->charset[i])) p->charset[0] = 0;
    }
    if (!p->type[0]) ms_strlcpy(p->type, in_digest ? "message/rfc822" : "text/plain", sizeof p->type); /* RFC 2045 5.2, 2046 5.1.5 */
    if ((v = mime_field_raw(h, p->head_len, "Content-Transfer-Encoding", &vl)) != NULL) {
        mime_type(v, vl, p->encoding, sizeof p->encoding); /* (a token: no '/': it comes out "") */
        {
            size_t i = 0, o = 0;
            while (i < vl && (v[i] == ' ' || v[i] == '\t')) i++;
            for (; i < vl && o + 1 < sizeof p->encoding && v[i] != ' ' && v[i] != '\t' && v[i] != '\r' && v[i] != '\n' && v[i] != ';'; i++)
                p->encoding[o++] = (char)tolower((unsigned char)v[i]);
            p->encoding[o] = 0;
        }
    }
    if ((v = mime_field_raw(h, p->head_len, "Content-Disposition", &vl)) != NULL) {
        char d[32];
        size_t i = 0, o = 0;
        while (i < vl && (v[i] == ' ' || v[i] == '\t')) i++;
        for (; i < vl && o + 1 < sizeof d && v[i] != ';' && v[i] != ' ' && v[i] != '\r' && v[i] != '\n'; i++) d[o++] = (char)tolower((unsigned char)v[i]);
        d[o] = 0;
        if (strcmp(d, "attachment") == 0 || strcmp(d, "inline") == 0) ms_strlcpy(p->disposition, d, sizeof p->disposition);
        if (mime_param(v, vl, "filename", &t) && t.len) ms_strlcpy(p->filename, t.p, sizeof p->filename);
    }
    if ((v = mime_field_raw(h, p->head_len, "Content-ID", &vl)) != NULL) {
        size_t i = 0, o = 0;
        for (; i < vl && o + 1 < sizeof p->content_id; i++)
            if (v[i] != '<' && v[i] != '>' && v[i] != ' ' && v[i] != '\t' && v[i] != '\r' && v[i] != '\n') p->content_id[o++] = v[i];
        p->content_id[o] = 0;
    }
    {   /* a cut filename must stay UTF-8 (it goes into JSON) */
        size_t l = strlen(p->filename);
        while (l && ((unsigned char)p->filename[l - 1] & 0xC0) == 0x80) l--;
        if (l && (unsigned char)p->filename[l - 1] >= 0xC0 && utf8_seq((unsigned char *)p->filename + l - 1, strlen(p->filename) - l + 1) == 0)
            p->filename[l - 1] = 0;
    }
    buf_free(&t);
}

/* Is line s (to e) the boundary delimiter "--B" (close: "--B--"), white space after it allowed (RFC 2046 5.1.1)? */
static int
mime_is_delim(const char *s, const char *e, const char *b, size_t bl, int *close)
{
    if ((size_t)(e - s) < bl + 2 || s[0] != '-' || s[1] != '-' || memcmp(s + 2, b, bl) != 0) return 0;
    s += bl + 2;
    *close = e - s >= 2 && s[0] == '-' && s[1] == '-';
    if (*close) s += 2;
    while (s < e && (*s == ' ' || *s == '\t' || *s == '\r')) s++;
    return s == e;
}

/* Splits body [bs, be) of multipart part k into its children (appended to parts); recursive to MIME_MAX_DEPTH. */
static void
mime_split(const char *msg, struct mime_part *parts, int *np, int max, int k)
{
    struct buf t = {0};
    char b[80];
    size_t bl, pos = parts[k].body, end = parts[k].body + parts[k].body_len, start = 0;
    const char *v;
    size_t vl;
    int child = 0, in_part = 0, close = 0, digest = strcmp(parts[k].type, "multipart/digest") == 0;
    v = mime_field_raw(msg + parts[k].head, parts[k].head_len, "Content-Type", &vl);
    if (!v || !mime_param(v, vl, "boundary", &t) || !t.len || t.len >= sizeof b) { buf_free(&t); return; }
    memcpy(b, t.p, t.len + 1);
    bl = t.len;
    buf_free(&t);
    while (pos < end && *np < max) {
        const char *nl = memchr(msg + pos, '\n', end - pos);
        size_t le = nl ? (size_t)(nl - msg) : end, next = nl ? le + 1 : end;
        if (mime_is_delim(msg + pos, msg + le, b, bl, &close)) {
            if (in_part) { /* the part before ends at the line break before the delimiter */
                struct mime_part *c = &parts[*np - 1];
                size_t stop = pos;
                if (stop > start && msg[stop - 1] == '\n') stop--;
                if (stop > start && msg[stop - 1] == '\r') stop--;
                c->body_len = stop > c->body ? stop - c->body : 0;
            }
            if (close) { in_part = 0; break; }
            { /* a new part: its header block, then its body */
                struct mime_part *c = &parts[(*np)++];
                const char *blank;
                size_t hs = next, he;
                memset(c, 0, sizeof *c);
                c->depth = parts[k].depth + 1;
                ms_fmt(c->id, sizeof c->id, "%s%s%d", parts[k].id, parts[k].id[0] ? "." : "", ++child); /* at most 26 bytes */
                if (next < end && (msg[next] == '\n' || (msg[next] == '\r' && next + 1 < end && msg[next + 1] == '\n'))) {
                    he = hs; /* no header fields */
                    c->body = msg[next] == '\n' ? next + 1 : next + 2;
                } else {
                    blank = NULL;
                    for (he = hs; he < end; he++)
                        if (msg[he] == '\n' && he + 1 < end && (msg[he + 1] == '\n' || (msg[he + 1] == '\r' && he + 2 < end && msg[he + 2] == '\n'))) {
                            blank = msg + he;
                            break;
                        }
                    if (blank) { he = (size_t)(blank - msg) + 1; c->body = msg[he] == '\n' ? he + 1 : he + 2; }
                    else { he = end; c->body = end; }
                }
                c->head = hs;
                c->head_len = he - hs;
                c->body_len = end > c->body ? end - c->body : 0; /* till the next delimiter, or the end */
                in_part = 1;
                start = c->body;
                mime_part_fields(msg, c, digest);
            }
        }
        pos = next;
    }
}

/* Splits a message into its parts, parts[0] the message itself; returns the count (>= 1).
 * Children follow their multipart (document order); malformed MIME is never an error: a
 * multipart without a boundary is one leaf, a missing close delimiter ends at the message's end. */
static int
mime_parse(const char *msg, size_t n, struct mime_part *parts, int max)
{
    int np = 1, i;
    const char *blank = NULL;
    size_t he, k;
    memset(&parts[0], 0, sizeof parts[0]);
    for (k = 0; k < n; k++) /* the header block ends at the first empty line */
        if (msg[k] == '\n' && (k == 0 || (k + 1 < n && (msg[k + 1] == '\n' || (msg[k + 1] == '\r' && k + 2 < n && msg[k + 2] == '\n'))))) {
            blank = msg + k;
            break;
        }
    if (n && msg[0] == '\n') { he = 0; parts[0].body = 1; }
    else if (blank) { he = (size_t)(blank - msg) + 1; parts[0].body = msg[he] == '\n' ? he + 1 : he + 2; }
    else { he = n; parts[0].body = n; }
    parts[0].head = 0;
    parts[0].head_len = he;
    parts[0].body_len = n > parts[0].body ? n - parts[0].body : 0;
    mime_part_fields(msg, &parts[0], 0);
    /* breadth by depth: split each multipart found, its children appended; then order them */
    for (i = 0; i < np && np < max; i++) {
        if (strncmp(parts[i].type, "multipart/", 10) != 0 || parts[i].depth >= MIME_MAX_DEPTH) continue;
        {
            int before = np;
            mime_split(msg, parts, &np, max, i);
            if (np > before) parts[i].multipart = 1;
        }
    }
    if (!parts[0].multipart) ms_strlcpy(parts[0].id, "1", sizeof parts[0].id); /* RFC 3501 6.4.5: a single part is "1" */
    { /* document order: by position in the message (a parent's head comes before its children) */
        for (i = 1; i < np; i++) {
            struct mime_part tmp = parts[i];
            int j = i - 1;
            while (j >= 0 && parts[j].head > tmp.head) { parts[j + 1] = parts[j]; j--; }
            parts[j + 1] = tmp;
        }
    }
    return np;
}

/* A part's body with its transfer encoding undone, appended to out. */
static void
mime_body(const char *msg, const struct mime_part *p, struct buf *out)
{
    buf_add(out, "", 0);
    if (strcmp(p->encoding, "base64") == 0) mime_base64(out, msg + p->body, p->body_len);
    else if (strcmp(p->encoding, "quoted-printable") == 0) mime_qp(out, msg + p->body, p->body_len, 0);
    else buf_add(out, msg + p->body, p->body_len);
}

/* A text part as UTF-8. */
static void
mime_text(const char *msg, const struct mime_part *p, struct buf *out)
{
    struct buf raw = {0};
    mime_body(msg, p, &raw);
    mime_to_utf8(out, p->charset, raw.p ? raw.p : "", raw.len);
    buf_free(&raw);
}

/* The size of a part's body once decoded, without decoding it (base64: 3 bytes per 4 characters). */
static size_t
mime_body_size(const char *msg, const struct mime_part *p)
{
    size_t i, k = 0;
    if (strcmp(p->encoding, "base64") == 0) {
        for (i = 0; i < p->body_len && msg[p->body + i] != '='; i++) k += mime_b64_values[(unsigned char)msg[p->body + i]] >= 0;
        return k / 4 * 3 + (k % 4 ? k % 4 - 1 : 0);
    }
    if (strcmp(p->encoding, "quoted-printable") == 0) {
        struct buf b = {0};
        mime_body(msg, p, &b);
        k = b.len;
        buf_free(&b);
        return k;
    }
    return p->body_len;
}

struct mime_addr { char name[256]; char addr[320]; };

/* An address list (RFC 5322 3.4): "Name" <a@b>, a@b (Name), Name <a@b>, groups (G: a@b, c@d;)
 * flattened; names decoded. How many were stored (at most max). */
static int
mime_addresses(const char *v, size_t n, struct mime_addr *out, int max)
{
    int count = 0;
    size_t i = 0;
    while (i < n && count < max) {
        struct buf name = {0}, comment = {0}, word = {0};
        char addr[320] = "";
        int angle = 0, quoted;
        /* one mailbox: up to a ',' or ';' outside quotes, comments and angle brackets */
        while (i < n && v[i] != ',' && v[i] != ';') {
            char ch = v[i];
            if (ch == '"') {
                buf_add(&word, "\"", 1);
                for (i++; i < n && v[i] != '"'; i++) {
                    if (v[i] == '\\' && i + 1 < n) i++;
                    if (v[i] != '\r' && v[i] != '\n') buf_add(&word, v + i, 1);
                }
                buf_add(&word, "\"", 1);
                i++;
            } else if (ch == '(') {
                int depth = 1;
                for (i++; i < n && depth; i++) {
                    if (v[i] == '\\' && i + 1 < n) { i++; buf_add(&comment, v + i, 1); continue; }
                    depth += v[i] == '(' ? 1 : v[i] == ')' ? -1 : 0;
                    if (depth) buf_add(&comment, v + i, 1);
                }
            } else if (ch == '<') {
                const char *gt = memchr(v + i, '>', n - i), *route;
                size_t s = i + 1, e = gt ? (size_t)(gt - v) : n;
                route = memchr(v + s, ':', e - s); /* obsolete route <@a,@b:x@y> */
                if (route && v[s] == '@') s = (size_t)(route - v) + 1;
                while (s < e && (v[s] == ' ' || v[s] == '\t')) s++;
                while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
                snprintf(addr, sizeof addr, "%.*s", (int)(e - s), v + s);
                angle = 1;
                i = gt ? (size_t)(gt - v) + 1 : n;
                buf_add(&name, word.p ? word.p : "", word.len);
                word.len = 0;
            } else if (ch == ':' && !angle) { /* a group's display name: dropped */
                word.len = 0;
                i++;
            } else {
                buf_add(&word, v + i, 1);
                i++;
            }
        }
        i++;
        if (!angle) { /* a bare address: the words are it; a comment is its name */
            const char *w = word.p ? word.p : "";
            size_t s = 0, e = word.len;
            while (s < e && strchr(" \t\r\n", w[s])) s++;
            while (e > s && strchr(" \t\r\n", w[e - 1])) e--;
            snprintf(addr, sizeof addr, "%.*s", (int)(e - s), w + s);
            buf_free(&name);
            if (comment.p) buf_add(&name, comment.p, comment.len);
        } else if (!name.len && comment.p) {
            buf_add(&name, comment.p, comment.len);
        }
        if (addr[0] && strchr(addr, '@') && !strpbrk(addr, " \t\"")) {
            struct buf dec = {0};
            char *nm;
            size_t l;
            quoted = 0;
            if (name.p) mime_header_text(&dec, name.p, name.len);
            nm = dec.p ? dec.p : "";
            l = strlen(nm);
            /* the quotes of a quoted display name go; an encoded word inside them is decoded too */
            if (l >= 2 && nm[0] == '"' && nm[l - 1] == '"') { nm[l - 1] = 0; nm++; quoted = 1; }
            if (quoted && strstr(nm, "=?")) {
                struct buf d2 = {0};
                mime_header_text(&d2, nm, strlen(nm));
                ms_strlcpy(out[count].name, d2.p ? d2.p : "", sizeof out[count].name);
                buf_free(&d2);
            } else {
                ms_strlcpy(out[count].name, nm, sizeof out[count].name);
            }
            ms_strlcpy(out[count].addr, addr, sizeof out[count].addr);
            count++;
            buf_free(&dec);
        }
        buf_free(&name);
        buf_free(&comment);
        buf_free(&word);
    }
    return count;
}

/* An RFC 5322 3.3 date-time (with the obsolete forms of 4.3): seconds since 1970 UTC and the
 * zone's offset in minutes; -1 if it is not one. */
static int
mime_date(const char *v, size_t n, int64_t *utc, int *offset_min)
{
    static const char *const zones[] = {"UT", "GMT", "Z", "EST", "EDT", "CST", "CDT", "MST", "MDT", "PST", "PDT"};
    static const int zoff[] = {0, 0, 0, -300, -240, -360, -300, -420, -360, -480, -420};
    char s[128], mon[16], zone[16] = "";
    int day, year, h, mi, sec = 0, m, k, used = 0;
    const char *p;
    size_t i, o = 0;
    for (i = 0; i < n && o + 1 < sizeof s; i++) { /* comments out, folding to spaces */
        if (v[i] == '(') {
            int d = 1;
            for (i++; i < n && d; i++) d += v[i] == '(' ? 1 : v[i] == ')' ? -1 : 0;
            i--;
            continue;
        }
        s[o++] = v[i] == '\t' || v[i] == '\r' || v[i] == '\n' ? ' ' : v[i];
    }
    s[o] = 0;
    p = s;
    while (*p == ' ') p++;
    if (isalpha((unsigned char)*p)) { /* the day's name */
        while (isalpha((unsigned char)*p)) p++;
        while (*p == ',' || *p == ' ') p++;
    }
    if (sscanf(p, "%d %15s %d %n", &day, mon, &year, &used) < 3 || !used) return -1;
    p += used;
    used = 0;
    if (sscanf(p, "%d:%d%n", &h, &mi, &used) < 2 || !used) return -1;
    p += used;
    if (*p == ':' && sscanf(p + 1, "%d%n", &sec, &used) == 1) p += 1 + used; /* seconds are optional */
    sscanf(p, " %15s", zone);
    for (m = 0; m < 12; m++)
        if (ms_strncaseeq(mon, ms_months[m], 3)) break;
    if (m == 12 || day < 1 || day > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 60 || year < 0 || year > 9999)
        return -1;
    if (year < 50) year += 2000; /* RFC 5322 4.3: two digits */
    else if (year < 1000) year += 1900;
    *offset_min = 0;
    if ((zone[0] == '+' || zone[0] == '-') && strlen(zone) == 5 && strspn(zone + 1, "0123456789") == 4) {
        int hh = (zone[1] - '0') * 10 + (zone[2] - '0'), mm = (zone[3] - '0') * 10 + (zone[4] - '0');
        *offset_min = (zone[0] == '-' ? -1 : 1) * (hh * 60 + mm);
    } else {
        for (k = 0; k < (int)(sizeof zones / sizeof zones[0]); k++) /* others (military ones) count as +0000 (4.3) */
            if (ms_strcaseeq(zone, zones[k])) { *offset_min = zoff[k]; break; }
    }
    *utc = ms_days_from_civil(year, m + 1, day) * 86400 + h * 3600 + mi * 60 + sec - *offset_min * 60;
    return 0;
}

/* A search in Mailpit's syntax: words and "quoted phrases", each may be
 * negated (- or !) and prefixed by a field (from:, subject:"a b", is:read,
 * larger:10k ...); all must match. */
enum { SQ_TEXT, SQ_FROM, SQ_TO, SQ_CC, SQ_BCC, SQ_REPLY_TO, SQ_ADDRESSED, SQ_SUBJECT, SQ_MESSAGE_ID, SQ_TAG,
       SQ_IS_READ, SQ_IS_UNREAD, SQ_IS_TAGGED, SQ_HAS_ATTACHMENT, SQ_HAS_INLINE, SQ_AFTER, SQ_BEFORE, SQ_LARGER,
       SQ_SMALLER, SQ_NONE };
struct search_term { int kind, neg; int64_t num; char text[200]; };

/* The date "YYYY-MM-DD" (or with "THH:MM[:SS]") as seconds, UTC; -1 if it is none. */
static int64_t
ms_parse_day(const char *s)
{
    int y, mo, d, h = 0, mi = 0, se = 0, n = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || mo < 1 || mo > 12 || d < 1 || d > 31) return -1;
    if (s[n] == 'T' || s[n] == ' ') sscanf(s + n + 1, "%2d:%2d:%2d", &h, &mi, &se);
    return ms_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
}

/* Parses q into at most max terms: how many, or -1 if a value is malformed (a size, a date). */
static int
search_parse(const char *q, struct search_term *t, int max)
{
    static const char *const fields[] = {"", "from:", "to:", "cc:", "bcc:", "reply-to:", "addressed:", "subject:",
                                         "message-id:", "tag:"};
    int n = 0;
    while (*q) {
        struct search_term *x = &t[n];
        char word[sizeof x->text];
        size_t o = 0;
        int k;
        while (*q == ' ' || *q == '\t') q++;
        if (!*q) break;
        if (n == max) return -1;
        memset(x, 0, sizeof *x);
        if (*q == '-' || *q == '!') { x->neg = 1; q++; }
        for (k = SQ_TAG; k > SQ_TEXT; k--)
            if (ms_strncaseeq(q, fields[k], strlen(fields[k]))) break;
        x->kind = k;
        if (k == SQ_TEXT) {
            if (ms_strncaseeq(q, "is:", 3) || ms_strncaseeq(q, "has:", 4) || ms_strncaseeq(q, "after:", 6) ||
                ms_strncaseeq(q, "before:", 7) || ms_strncaseeq(q, "larger:", 7) || ms_strncaseeq(q, "smaller:", 8)) {
                size_t c = strcspn(q, ":");
                char key[16];
                memcpy(key, q, c + 1);
                key[c + 1] = 0;
                x->kind = SQ_NONE;
                q += c + 1;
                if (ms_strcaseeq(key, "after:")) x->kind = SQ_AFTER;
                else if (ms_strcaseeq(key, "before:")) x->kind = SQ_BEFORE;
                else if (ms_strcaseeq(key, "larger:")) x->kind = SQ_LARGER;
                else if (ms_strcaseeq(key, "smaller:")) x->kind = SQ_SMALLER;
                else if (ms_strcaseeq(key, "is:")) x->kind = SQ_IS_READ; /* which one: below */
                else x->kind = SQ_HAS_ATTACHMENT;
            }
        } else {
            q += strlen(fields[k]);
        }
        if (*q == '"') { /* a phrase: to the closing quote */
            for (q++; *q && *q != '"'; q++)
                if (o + 1 < sizeof word) word[o++] = *q;
            if (*q) q++;
        } else {
            for (; *q && *q != ' ' && *q != '\t'; q++)
                if (o + 1 < sizeof word) word[o++] = *q;
        }
        word[o] = 0;
        ms_strlcpy(x->text, word, sizeof x->text);
        if (x->kind == SQ_IS_READ) {
            if (ms_strcaseeq(word, "read")) x->kind = SQ_IS_READ;
            else if (ms_strcaseeq(word, "unread")) x->kind = SQ_IS_UNREAD;
            else if (ms_strcaseeq(word, "tagged")) x->kind = SQ_IS_TAGGED;
            else x->kind = SQ_NONE;
        } else if (x->kind == SQ_HAS_ATTACHMENT) {
            if (ms_strncaseeq(word, "attachment", 10)) x->kind = SQ_HAS_ATTACHMENT;
            else if (ms_strncaseeq(word, "inline", 6)) x->kind = SQ_HAS_INLINE;
            else x->kind = SQ_NONE;
        } else if (x->kind == SQ_AFTER || x->kind == SQ_BEFORE) {
            if ((x->num = ms_parse_day(word)) < 0) return -1;
        } else if (x->kind == SQ_LARGER || x->kind == SQ_SMALLER) {
            char *end;
            double v = strtod(word, &end);
            if (end == word || !(v >= 0)) return -1; /* NaN too */
            if (*end == 'k' || *end == 'K') v *= 1024, end++;
            else if (*end == 'm' || *end == 'M') v *= 1024 * 1024, end++;
            if (*end == 'b' || *end == 'B') end++;
            if (*end || !(v < 9e18)) return -1; /* converting a size no int64_t holds is undefined (C99 6.3.1.4) */
            x->num = (int64_t)v;
        }
        if (x->kind == SQ_NONE) continue; /* an unknown is:/has: word matches nothing: dropped, as Mailpit ignores it */
        if (x->kind <= SQ_TAG && !word[0]) continue;
        n++;
    }
    return n;
}
#endif /* MAILSRV_ENABLE_HTTP */

/*
 * The relay's conversion of a message's text for a next hop (mime_conv):
 * RFC 6152 3 (a hop without 8BITMIME gets 7-bit text: convert or bounce) and
 * RFC 5321 4.5.3.1.6 (no line over 998 octets). The server accepts both as
 * sent and stores them unchanged; only what leaves for such a hop changes.
 * A streaming, line-at-a-time MIME reader with bounded state: a stack of
 * multipart boundaries (RFC 2046 5.1.1), and of each header only its
 * Content-Type (as far as MC_FIELD_MAX) and Content-Transfer-Encoding field;
 * no part is ever held whole. Input and output are LF-terminated lines; an
 * input line may come in pieces (the line reader's), the output lines are at
 * most 998 octets. The framing (dot-stuffing, CRLF) is the caller's. What is chosen:
 *  - a leaf part with no, 7bit, 8bit or binary encoding (text or not) is
 *    re-encoded quoted-printable (RFC 2045 6.7: lines of at most 76 octets, soft
 *    breaks, trailing white space encoded) and its header says so; a message
 *    header without MIME-Version gets MIME-Version: 1.0 (RFC 2045 4);
 *  - a multipart is followed by its boundary, message/rfc822 inside (RFC 2046
 *    5.2.1 allows it no other encoding: its 8bit becomes 7bit once its insides
 *    are converted); other message types and parts already in base64 or
 *    quoted-printable are left as they are;
 *  - a header field with an 8-bit octet cannot be converted (RFC 2047 words would
 *    change what it says), nor can 8-bit octets in a part that is left as it is:
 *    for a hop without 8BITMIME that is an error (the relay bounces, 5.6.3);
 *  - a line still over 998 octets is broken: a header field is folded before
 *    the last space or tab that fits (RFC 5322 2.2.3, unfolding restores it),
 *    else, like a body line, by inserting LF SPACE, as Postfix's
 *    smtp_line_length_limit does (base64 decoders skip the space, RFC 2045 6.8);
 *    a quoted-printable part's line gets a soft break ("=" LF) instead, never
 *    inside an =XX, so that it decodes to the same octets.
 * A multipart's preamble and epilogue are left as they are (broken if long; 8-bit
 * octets there: an error for a 7-bit hop). While a header is converted, its
 * Content-Transfer-Encoding field is kept back and goes out (as it was, or
 * replaced) at the header's end: fields may come in any order (RFC 5322 3.6).
 */
#define MC_LINE_MAX 998          /* RFC 5321 4.5.3.1.6: a text line without its CRLF */
#define MC_QP_LINE 76            /* RFC 2045 6.7 (5): an encoded line, with its soft break's "=" */
#define MC_DEPTH 16              /* nested multiparts followed; a deeper one is left as it is */
#define MC_FIELD_MAX 1024        /* of Content-Type and Content-Transfer-Encoding, kept per header */
#define MC_BOUNDARY_MAX 70       /* RFC 2046 5.1.1 */
#define MC_NAMED(p, n, name) ((n) >= sizeof name - 1 && ms_strncaseeq(p, name, sizeof name - 1))
enum { MC_HEAD, MC_BODY };                         /* mime_conv.state */
enum { MC_WRAP_SPACE, MC_WRAP_FOLD, MC_WRAP_QP, MC_QP }; /* how a body (or a header line) goes out */
enum { MC_F_OTHER, MC_F_CT, MC_F_CTE };            /* the header field being read */
enum { MC_CTE_NONE, MC_CTE_IDENTITY, MC_CTE_QP, MC_CTE_B64, MC_CTE_OTHER };

struct mime_conv {
    int need7;                   /* the hop lacks 8BITMIME: no 8-bit octet may go out */
    int err;                     /* it cannot be converted for this hop */
    int state, mode;             /* MC_HEAD or MC_BODY; the body's MC_WRAP_* or MC_QP */
    int msg_head, mime_version;  /* the header read is a message's (top, message/rfc822); it has MIME-Version */
    int field, piece;            /* MC_F_*; the last input line had no end yet (the next is its rest) */
    int digest;                  /* the part's default type is message/rfc822 (in multipart/digest) */
    size_t col;                  /* octets on the output line so far */
    char ct[MC_FIELD_MAX];       /* Content-Type's value, unfolded, cut at MC_FIELD_MAX */
    size_t ctlen;
    char cte[MC_FIELD_MAX];      /* the Content-Transfer-Encoding field as sent (LF-separated lines) */
    size_t ctelen;
    int cte_out;                 /* ... too long to keep: it went out, the part is left as it is */
    int nb;
    struct { char b[MC_BOUNDARY_MAX + 1]; size_t n; int digest; } bnd[MC_DEPTH];
};

static void
mc_init(struct mime_conv *mc, int need7)
{
    memset(mc, 0, sizeof *mc);
    mc->need7 = need7;
    mc->state = MC_HEAD;
    mc->msg_head = 1;
}

static void mc_eol(struct mime_conv *mc, struct buf *out) { buf_adds(out, "\n"); mc->col = 0; }

static int
mc_has8(const char *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)p[i] & 0x80) return 1;
    return 0;
}

/* Appends text to the output line, breaking it (as `how` says) where it would pass 998 octets. */
static void
mc_put(struct mime_conv *mc, struct buf *out, const char *p, size_t n, int how)
{
    while (n) {
        size_t lim = how == MC_WRAP_QP ? MC_LINE_MAX - 1 : MC_LINE_MAX; /* room for the soft break's "=" */
        size_t room = mc->col < lim ? lim - mc->col : 0, k = room;
        if (n <= room) { buf_add(out, p, n); mc->col += n; return; }
        if (how == MC_WRAP_FOLD) { /* before the last white space that fits (p[room] exists: n > room) */
            size_t j = room;
            while (j > 0 && p[j] != ' ' && p[j] != '\t') j--;
            if ((p[j] == ' ' || p[j] == '\t') && (j > 0 || mc->col > 0)) {
                buf_add(out, p, j);
                mc_eol(mc, out);
                p += j;
                n -= j;
                continue;
            }
        }
        if (how == MC_WRAP_QP) { /* never inside an =XX */
            if (k >= 1 && p[k - 1] == '=') k -= 1;
            else if (k >= 2 && p[k - 2] == '=') k -= 2;
        }
        buf_add(out, p, k);
        p += k;
        n -= k;
        if (how == MC_WRAP_QP) { buf_adds(out, "=\n"); mc->col = 0; }
        else { buf_adds(out, "\n "); mc->col = 1; }
    }
}

/* Text lines kept of a header (LF-separated, the last maybe without its end) go out. */
static void
mc_put_lines(struct mime_conv *mc, struct buf *out, const char *p, size_t n)
{
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t k = nl ? (size_t)(nl - p) : n;
        mc_put(mc, out, p, k, MC_WRAP_FOLD);
        if (nl) { mc_eol(mc, out); k++; }
        p += k;
        n -= k;
    }
}

/* Quoted-printable (RFC 2045 6.7): rules 1-5; a space or tab at the end of a
 * piece is encoded too (it may end the line). */
static void
mc_qp(struct mime_conv *mc, struct buf *out, const char *p, size_t n, int complete)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        char t[3];
        size_t tn = 1;
        if ((ch >= 33 && ch <= 126 && ch != '=') || ((ch == ' ' || ch == '\t') && i + 1 < n)) t[0] = (char)ch;
        else { t[0] = '='; t[1] = hex[ch >> 4]; t[2] = hex[ch & 15]; tn = 3; }
        if (mc->col + tn > MC_QP_LINE - 1) { buf_adds(out, "=\n"); mc->col = 0; } /* rule 5: a soft break */
        buf_add(out, t, tn);
        mc->col += tn;
    }
    if (complete) mc_eol(mc, out);
}

/* The first word of a header field's value, lower case ("text/plain", "base64"). */
static void
mc_token(const char *v, size_t n, char *tok, size_t cap)
{
    size_t i = 0, o = 0;
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == '\n')) i++;
    for (; i < n && v[i] != ';' && v[i] != ' ' && v[i] != '\t' && v[i] != '\n' && v[i] != '(' && o + 1 < cap; i++)
        tok[o++] = (char)tolower((unsigned char)v[i]);
    tok[o] = 0;
}

/* Content-Type's boundary parameter (RFC 2045 5.1: token or quoted string); 0 without a good one. */
static size_t
mc_boundary_param(const char *v, size_t n, char *b)
{
    size_t i, o = 0;
    for (i = 0; i + 9 <= n; i++) {
        if ((i && v[i - 1] != ';' && v[i - 1] != ' ' && v[i - 1] != '\t') || !ms_strncaseeq(v + i, "boundary=", 9))
            continue;
        i += 9;
        if (i < n && v[i] == '"') {
            for (i++; i < n && v[i] != '"'; i++) {
                if (v[i] == '\\' && i + 1 < n) i++;
                if (o == MC_BOUNDARY_MAX) return 0;
                b[o++] = v[i];
            }
            if (i >= n) return 0;
        } else {
            for (; i < n && v[i] != ';' && v[i] != ' ' && v[i] != '\t'; i++) {
                if (o == MC_BOUNDARY_MAX) return 0;
                b[o++] = v[i];
            }
        }
        b[o] = 0;
        return o;
    }
    return 0;
}

/* The end of a part's header: what its body becomes, and the fields that say so. */
static void
mc_head_end(struct mime_conv *mc, struct buf *out)
{
    char type[80], enc[40], b[MC_BOUNDARY_MAX + 1];
    const char *colon = memchr(mc->cte, ':', mc->ctelen);
    size_t bn;
    int cte = MC_CTE_NONE, multi, rfc822;
    if (mc->ctlen) mc_token(mc->ct, mc->ctlen, type, sizeof type);
    else ms_strlcpy(type, mc->digest ? "message/rfc822" : "text/plain", sizeof type); /* RFC 2045 5.2, 2046 5.1.5 */
    if (mc->cte_out) cte = MC_CTE_OTHER;
    else if (mc->ctelen) {
        mc_token(colon ? colon + 1 : mc->cte, colon ? mc->ctelen - (size_t)(colon + 1 - mc->cte) : 0, enc, sizeof enc);
        cte = !strcmp(enc, "7bit") || !strcmp(enc, "8bit") || !strcmp(enc, "binary") ? MC_CTE_IDENTITY
              : !strcmp(enc, "quoted-printable") ? MC_CTE_QP : !strcmp(enc, "base64") ? MC_CTE_B64 : MC_CTE_OTHER;
    }
    multi = !strncmp(type, "multipart/", 10);
    rfc822 = !strcmp(type, "message/rfc822");
    bn = multi ? mc_boundary_param(mc->ct, mc->ctlen, b) : 0;
    mc->state = MC_BODY;
    mc->mode = MC_WRAP_SPACE;
    if ((multi || rfc822) && cte <= MC_CTE_IDENTITY && (rfc822 || (bn && mc->nb < MC_DEPTH))) {
        /* followed inside: with 8-bit converted there, the container is 7bit (RFC 2046 5.1.1, 5.2.1) */
        if (mc->need7 && cte == MC_CTE_IDENTITY) buf_adds(out, "Content-Transfer-Encoding: 7bit\n");
        else mc_put_lines(mc, out, mc->cte, mc->ctelen);
        if (rfc822) {
            mc->state = MC_HEAD; /* the message's own header follows the blank line */
            mc->msg_head = 1;
            mc->mime_version = mc->digest = 0;
        } else {
            memcpy(mc->bnd[mc->nb].b, b, bn + 1);
            mc->bnd[mc->nb].n = bn;
            mc->bnd[mc->nb++].digest = !strcmp(type, "multipart/digest");
        }
    } else if (!multi && strncmp(type, "message/", 8) != 0 && cte <= MC_CTE_IDENTITY) {
        if (mc->msg_head && !mc->mime_version) buf_adds(out, "MIME-Version: 1.0\n");
        buf_adds(out, "Content-Transfer-Encoding: quoted-printable\n");
        mc->mode = MC_QP;
    } else {
        mc_put_lines(mc, out, mc->cte, mc->ctelen);
        if (cte == MC_CTE_QP) mc->mode = MC_WRAP_QP;
    }
    mc->ctlen = mc->ctelen = 0;
    mc->cte_out = 0;
    mc->field = MC_F_OTHER;
}

/* A boundary line of an enclosing multipart (RFC 2046 5.1.1: "--" boundary, "--" for the last,
 * then transport padding), the innermost first: it ends the part (and any inside it). */
static int
mc_boundary(struct mime_conv *mc, const char *p, size_t n, struct buf *out)
{
    int i;
    if (n < 3 || p[0] != '-' || p[1] != '-') return 0;
    for (i = mc->nb - 1; i >= 0; i--) {
        size_t bn = mc->bnd[i].n, k = 2 + bn;
        int last = 0;
        if (n < k || memcmp(p + 2, mc->bnd[i].b, bn) != 0) continue;
        if (n >= k + 2 && p[k] == '-' && p[k + 1] == '-') { last = 1; k += 2; }
        while (k < n && (p[k] == ' ' || p[k] == '\t')) k++;
        if (k != n) continue;
        if (mc->state == MC_HEAD) mc_put_lines(mc, out, mc->cte, mc->ctelen); /* a part with no body */
        mc_put(mc, out, p, n, MC_WRAP_SPACE);
        mc_eol(mc, out);
        mc->ctlen = mc->ctelen = 0;
        mc->cte_out = 0;
        mc->field = MC_F_OTHER;
        if (last) { /* the epilogue, left as it is */
            mc->nb = i;
            mc->state = MC_BODY;
            mc->mode = MC_WRAP_SPACE;
        } else {
            mc->nb = i + 1;
            mc->state = MC_HEAD;
            mc->msg_head = mc->mime_version = 0;
            mc->digest = mc->bnd[i].digest;
        }
        return 1;
    }
    return 0;
}

/* One input line (complete: it ended with LF) or a piece of one; 0, or -1 when
 * the text cannot be converted for the hop (and from then on). */
static int
mc_line(struct mime_conv *mc, const char *p, size_t n, int complete, struct buf *out)
{
    int piece = mc->piece;
    mc->piece = !complete;
    if (mc->err) return -1;
    if (!piece && mc->nb && mc_boundary(mc, p, n, out)) return 0;
    if (mc->state == MC_HEAD) {
        if (!piece && n == 0) { /* the blank line */
            mc_head_end(mc, out);
            if (complete) mc_eol(mc, out);
            return 0;
        }
        if (mc->need7 && mc_has8(p, n)) { mc->err = 1; return -1; }
        if (!piece && p[0] != ' ' && p[0] != '\t') { /* a field (named in its first piece: lr_next's are long) */
            mc->field = MC_NAMED(p, n, "Content-Type:") ? MC_F_CT
                        : MC_NAMED(p, n, "Content-Transfer-Encoding:") ? MC_F_CTE : MC_F_OTHER;
            if (mc->field == MC_F_CT && mc->ctlen) mc->field = MC_F_OTHER; /* a second one: the first counts */
            if (MC_NAMED(p, n, "MIME-Version:")) mc->mime_version = 1;
        }
        if (mc->field == MC_F_CTE && !mc->cte_out) {
            if (mc->ctelen + n + 1 <= sizeof mc->cte) { /* kept: it goes out at the end of the header */
                memcpy(mc->cte + mc->ctelen, p, n);
                mc->ctelen += n;
                if (complete) mc->cte[mc->ctelen++] = '\n';
                return 0;
            }
            mc_put_lines(mc, out, mc->cte, mc->ctelen); /* too long to be any encoding: out as it is */
            mc->ctelen = 0;
            mc->cte_out = 1;
        }
        if (mc->field == MC_F_CT) { /* its value, unfolded (a folded line starts with its white space) */
            size_t skip = !piece && MC_NAMED(p, n, "Content-Type:") ? 13 : 0, k = n - skip;
            if (k > MC_FIELD_MAX - mc->ctlen) k = MC_FIELD_MAX - mc->ctlen;
            memcpy(mc->ct + mc->ctlen, p + skip, k);
            mc->ctlen += k;
        }
        mc_put(mc, out, p, n, MC_WRAP_FOLD);
        if (complete) mc_eol(mc, out);
        return 0;
    }
    if (mc->mode == MC_QP) { mc_qp(mc, out, p, n, complete); return 0; }
    if (mc->need7 && mc_has8(p, n)) { mc->err = 1; return -1; }
    mc_put(mc, out, p, n, mc->mode);
    if (complete) mc_eol(mc, out);
    return 0;
}

/* The end of the text: 0, or -1 when it cannot be converted for the hop. */
static int
mc_end(struct mime_conv *mc, struct buf *out)
{
    if (mc->err) return -1;
    if (mc->state == MC_HEAD) mc_put_lines(mc, out, mc->cte, mc->ctelen); /* a header without a body */
    mc->ctelen = 0;
    return 0;
}

/*==== 7. Storage ====*/
/*
 * Delivery: the message text is first written to SPOOL/.tmp/NAME (LF line
 * ends, Return-Path and Received on top) and fsynced. Maildir: hard link into
 * SPOOL/DOMAIN/USER/new/NAME,S=bytes,W=crlf-bytes and fsync new/. mbox:
 * append to SPOOL/DOMAIN/USER.mbox under fcntl lock and dotlock, with the
 * append announced in a journal first (see "---- mbox ----" below), so that
 * a crashed append of mailsrv's own is removed and nothing else ever is. If
 * any recipient fails, the ones already done are rolled back and the client
 * gets 451, so a retry creates no duplicates.
 *
 * The POP3 view is a snapshot of the mailbox taken at login (a Maildir's
 * in slices, with the sizes it had to read kept in an index); with mbox it
 * is read again when another program changed the file, and the deletions
 * are applied at QUIT to the file as it is then. What a read of an mbox
 * learned is kept in its index (see "the mbox index"), so that a login to an
 * unchanged mbox reads none of it, and one to a grown mbox only what was added.
 */

/* Reads a file region as lines; a line longer than the buffer comes in pieces. */
#define LR_BUF 16384
struct line_reader { int fd; int64_t pos, end; char *buf; size_t blen, boff; };

static void
lr_init(struct line_reader *lr, int fd, int64_t start, int64_t end)
{
    lr->fd = fd;
    lr->pos = start;
    lr->end = end;
    lr->buf = xrealloc(NULL, LR_BUF);
    lr->blen = lr->boff = 0;
}
static void lr_free(struct line_reader *lr) { free(lr->buf); lr->buf = NULL; }

/* 1 with a line (*complete = it ended with LF, which is not included), 0 at
 * the end, -1 on a read error. *off is the line's file offset. */
static int
lr_next(struct line_reader *lr, const char **line, size_t *len, int *complete, int64_t *off)
{
    char *nl;
    if (lr->boff >= lr->blen || !memchr(lr->buf + lr->boff, '\n', lr->blen - lr->boff)) {
        size_t keep = lr->blen - lr->boff;
        long r;
        int64_t want = lr->end - lr->pos;
        memmove(lr->buf, lr->buf + lr->boff, keep);
        lr->blen = keep;
        lr->boff = 0;
        if (want > (int64_t)(LR_BUF - keep)) want = (int64_t)(LR_BUF - keep);
        if (want > 0) {
            r = os_pread(lr->fd, lr->buf + keep, (size_t)want, lr->pos);
            if (r < 0) return -1;
            lr->pos += r;
            lr->blen += (size_t)r;
        }
        if (lr->blen == 0) return 0;
    }
    *off = lr->pos - (int64_t)lr->blen + (int64_t)lr->boff;
    *line = lr->buf + lr->boff;
    nl = memchr(lr->buf + lr->boff, '\n', lr->blen - lr->boff);
    if (nl) {
        *len = (size_t)(nl - *line);
        *complete = 1;
        lr->boff += *len + 1;
    } else {
        *len = lr->blen - lr->boff;
        *complete = 0;
        lr->boff = lr->blen;
    }
    return 1;
}

/* ---- Maildir ---- */

/* mkdir that fsyncs the parent when it created something. */
static int
store_mkdir(const char *path, const char *parent)
{
    return store_mkdir_owed(path, parent, NULL);
}

/* ... or, with ds, leaves that fsync to the group commit (see struct dirset):
 * one fsync for all the folders a batch created, instead of one each. */
static int
store_mkdir_owed(const char *path, const char *parent, struct dirset *ds)
{
    if (os_mkdir(path) != 0) return errno == EEXIST ? 0 : -1;
    if (!ds) return os_fsync_dir(parent);
    dirset_add(ds, parent);
    return 0;
}

static int
store_user_dir(const char *spool, const char *addr, char *dom_dir, size_t dn, char *user_out, size_t un)
{
    const char *at = strchr(addr, '@');
    if (!at || (size_t)(at - addr) >= un) return -1;
    memcpy(user_out, addr, (size_t)(at - addr));
    user_out[at - addr] = 0;
    return ms_fmt(dom_dir, dn, "%s/%s", spool, at + 1) < 0 ? -1 : 0;
}

/* Where an address's mbox lives: its domain folder, the mbox, and the journal
 * of mailsrv's own unfinished writes beside it (and beside that the index,
 * SPOOL/DOMAIN/.USER.mbox.index: mbox_index_path). */
struct mbox_paths {
    char dir[MS_PATH_DOMAIN];
    char mbox[MS_PATH_FILE];
    char journal[MS_PATH_FILE];
};

/* Refuses (errno ELOOP) a mailbox reached through a symbolic link under the
 * spool: its DOMAIN folder; the Maildir, its new/, cur/ and tmp/; or the mbox
 * and its journal. Whoever owns the service account owns everything under
 * the spool and could point a mailbox at /etc/passwd or at another folder.
 * Missing parts are fine: delivery creates them. (The mbox is also opened
 * with O_NOFOLLOW, which closes the race on its last component.) */
static int
store_no_links(const char *spool, const char *addr, int maildir)
{
    static const char *const mdir[] = {"", "/new", "/cur", "/tmp"};
    char dom[MS_PATH_DOMAIN], user[MS_LOCAL_MAX + 1], path[4][MS_PATH_FILE];
    int i, n = maildir ? 4 : 2, k;
    if (store_user_dir(spool, addr, dom, sizeof dom, user, sizeof user) != 0) return -1;
    for (i = 0; maildir && i < n; i++)
        if (ms_fmt(path[i], sizeof path[i], "%s/%s%s", dom, user, mdir[i]) < 0) return -1;
    if (!maildir) {
        struct mbox_paths mp;
        if (mbox_paths(spool, addr, &mp) != 0) return -1;
        strcpy(path[0], mp.mbox); /* same sizes */
        strcpy(path[1], mp.journal);
    }
    if ((k = os_lstat_kind(dom)) == OS_MISSING) return 0;
    for (i = 0; k != OS_LINK && i < n; i++) k = os_lstat_kind(path[i]);
    if (k != OS_LINK) return 0;
    errno = ELOOP;
    return -1;
}

/* Creates what is missing of addr's Maildir; the fsyncs of the folders it
 * creates are done here, or left to ds (the delivery's group commit). */
static int
mdir_prepare(const char *spool, const char *addr, char *newdir, size_t n, struct dirset *ds)
{
    char dom[MS_PATH_DOMAIN], user[MS_LOCAL_MAX + 1], udir[MS_PATH_MAILBOX], sub[MS_PATH_FILE];
    if (store_user_dir(spool, addr, dom, sizeof dom, user, sizeof user) != 0 || store_mkdir_owed(dom, spool, ds) != 0)
        return -1;
    if (ms_fmt(udir, sizeof udir, "%s/%s", dom, user) < 0 || store_mkdir_owed(udir, dom, ds) != 0) return -1;
    if (ms_fmt(sub, sizeof sub, "%s/tmp", udir) < 0 || store_mkdir_owed(sub, udir, ds) != 0) return -1;
    if (ms_fmt(sub, sizeof sub, "%s/cur", udir) < 0 || store_mkdir_owed(sub, udir, ds) != 0) return -1;
    if (ms_fmt(newdir, n, "%s/new", udir) < 0 || store_mkdir_owed(newdir, udir, ds) != 0) return -1;
    return 0;
}

/* ---- mbox ----
 * An mbox is shared with MUAs (mutt, neomutt), Dovecot and other MDAs
 * (procmail, dotlockfile). Every append and every rewrite takes the two
 * locks Debian policy 11.6 asks for: an fcntl write lock on the file, then
 * the dotlock MBOX.lock (holding the PID from the start: mbox_dotlock_make;
 * stale as liblockfile judges it: mbox_dotlock_stale), and
 * holds both until the file is final. Neither is waited for: a busy mbox
 * defers the delivery (451, as Postfix's local(8) does) or the POP3 login
 * ([IN-USE]). A file another program changed is simply read again.
 *
 * The journal SPOOL/DOMAIN/.USER.mbox.journal (a record of MS_MBOX_JOURNAL
 * bytes, rewritten in place and never shrunk below that, so that it can be
 * written on a full disk; a batch's list or a piece being moved follows it)
 * says what mailsrv is in the middle of; it is fsynced before the mbox is
 * touched:
 *   "append INO OFF LEN HEADLEN\n" and the first HEADLEN bytes of the append
 *       (written by versions before the group commit; still recovered)
 *   "batch INO OFF LEN N DLEN SUM\n": N messages appended one after the
 *       other from OFF, LEN bytes in all; after the record (DLEN bytes,
 *       checksum SUM), for each message "MLEN PLEN MSUM\n" and its first
 *       PLEN bytes (up to MS_MBOX_PREFIX); MSUM: the checksum of all of it
 *       (mbox_batch_append, one group commit)
 *   "compact INO A B END DONE PLEN SUM\n": [A,B) goes, [B,END) moves down to
 *       A; the first DONE bytes of it are moved and fsynced; the next PLEN
 *       bytes, if not 0, are saved after the record (SUM: their checksum)
 *   "none\n"
 * At the next lock, an unfinished append of its own is removed only if the
 * file still ends with exactly (a prefix of) it; else everything is kept and
 * logged. In a batch, a whole message must match its checksum, and the one
 * the file ends in its first bytes: a From_ line there is the batch's own,
 * not another program's message appended after a crash (mbox_is_own_batch).
 * An unfinished compaction is finished (to the file's end, if
 * another program appended meanwhile).
 */

static int
mbox_paths(const char *spool, const char *addr, struct mbox_paths *mp)
{
    char user[MS_LOCAL_MAX + 1];
    if (store_user_dir(spool, addr, mp->dir, sizeof mp->dir, user, sizeof user) != 0) return -1;
    if (ms_fmt(mp->mbox, sizeof mp->mbox, "%s/%s.mbox", mp->dir, user) < 0 ||
        ms_fmt(mp->journal, sizeof mp->journal, "%s/.%s.mbox.journal", mp->dir, user) < 0)
        return -1;
    return 0;
}

static char mbox_note[MS_PATH_MESSAGE]; /* what mbox_recover found, until the loop logs it */

static int
store_fsync_parent(const char *path)
{
    char dir[MS_PATH_MAILBOX];
    const char *slash = os_last_sep(path);
    if (!slash || (size_t)(slash - path) >= sizeof dir) return 0;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = 0;
    return os_fsync_dir(dir);
}

/* Writes the journal record rec (n bytes) padded to its fixed size, after
 * data (dn bytes, a piece being moved) if any, and fsyncs it; shrink: cut
 * off a piece saved before. */
static int
mbox_journal_put(const char *jf, const char *rec, size_t n, const char *data, size_t dn, int shrink)
{
    char buf[MS_MBOX_JOURNAL];
    struct os_stat st;
    int fd, r, created = os_stat(jf, &st) != 0;
    if (n > sizeof buf) return -1;
    memcpy(buf, rec, n);
    memset(buf + n, '\n', sizeof buf - n);
    fd = os_open(jf, O_WRONLY | O_CREAT | MS_O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    /* the data first: a record naming it is only written once it is all there */
    r = (dn && os_pwrite_all(fd, data, dn, MS_MBOX_JOURNAL) < 0) || os_pwrite_all(fd, buf, sizeof buf, 0) < 0 ||
        (shrink && os_truncate(fd, MS_MBOX_JOURNAL) != 0) || os_fsync(fd) != 0 ? -1 : 0;
    os_close(fd);
    if (r == 0 && created) r = store_fsync_parent(jf);
    return r;
}
static int mbox_journal_clear(const char *jf) { return mbox_journal_put(jf, "none\n", 5, NULL, 0, 1); }

static void
mbox_piece_sum(const char *data, size_t n, char out[33])
{
    struct sha256 h;
    unsigned char d[32];
    int i;
    sha256_init(&h);
    sha256_update(&h, data, n);
    sha256_final(&h, d);
    for (i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

/* "compact INO A B END DONE PLEN SUM": DONE bytes are moved and durable;
 * with PLEN, the next PLEN bytes (checksum SUM) are saved in the journal. */
static int
mbox_compact_rec(const char *jf, uint64_t ino, int64_t a, int64_t b, int64_t end, int64_t done, const char *data,
                 int64_t plen)
{
    char rec[200], sum[33] = "-";
    if (plen) mbox_piece_sum(data, (size_t)plen, sum);
    snprintf(rec, sizeof rec, "compact %llu %lld %lld %lld %lld %lld %s\n", (unsigned long long)ino, (long long)a,
             (long long)b, (long long)end, (long long)done, (long long)plen, sum);
    return mbox_journal_put(jf, rec, strlen(rec), data, (size_t)plen, 0);
}

/* Does [off, size) hold only (a prefix of) the append that began with head? */
static int
mbox_is_own_tail(int fd, int64_t off, int64_t size, const char *head, size_t hl)
{
    char buf[MS_MBOX_JOURNAL];
    struct line_reader lr;
    const char *line;
    size_t len, n = (size_t)(size - off < (int64_t)hl ? size - off : (int64_t)hl);
    int complete, r, bol = 1, own = 1;
    int64_t loff;
    if (os_pread(fd, buf, n, off) != (long)n || memcmp(buf, head, n) != 0) return 0;
    lr_init(&lr, fd, off, size);
    while (own && (r = lr_next(&lr, &line, &len, &complete, &loff)) > 0) {
        /* mailsrv quotes every From_ line it appends: one here is another message */
        if (bol && loff >= off + (int64_t)n && len >= 5 && memcmp(line, "From ", 5) == 0) own = 0;
        bol = complete;
    }
    lr_free(&lr);
    return own && r == 0;
}

/* The checksum of [off, off+n) of the mbox, as mbox_piece_sum gives it; -1 if unreadable. */
static int
mbox_file_sum(int fd, int64_t off, int64_t n, char out[33])
{
    char buf[16384];
    struct sha256 h;
    unsigned char d[32];
    int i;
    sha256_init(&h);
    while (n > 0) {
        long want = n < (int64_t)sizeof buf ? (long)n : (long)sizeof buf, got = os_pread(fd, buf, (size_t)want, off);
        if (got != want) return -1;
        sha256_update(&h, buf, (size_t)got);
        off += got;
        n -= got;
    }
    sha256_final(&h, d);
    for (i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", d[i]);
    return 0;
}

/* Does [off, size) hold only (a prefix of) the batch the journal's list
 * (ln bytes) describes? Each whole message must match its checksum; the one
 * the file ends in must begin as it did (its first bytes, kept in the list)
 * and hold no other From_ line (mbox_is_own_tail). So another program's
 * message appended after a crash is never taken for the batch's next one. */
static int
mbox_is_own_batch(int fd, int64_t off, int64_t size, const char *list, size_t ln)
{
    char got[33], sum[33];
    const char *end = list + ln;
    long long len;
    unsigned long pl;
    int k = 0;
    while (off < size) {
        if (sscanf(list, "%lld %lu %32s%n", &len, &pl, sum, &k) != 3 || list[k] != '\n' || len <= 0 ||
            pl > MS_MBOX_PREFIX || (long long)pl > len || (size_t)(end - list) < (size_t)k + 1 + pl)
            return 0;
        list += k + 1;
        if (size < off + len) return mbox_is_own_tail(fd, off, size, list, (size_t)pl); /* the file ends in it */
        if (mbox_file_sum(fd, off, len, got) != 0 || strcmp(got, sum) != 0) return 0; /* whole: exactly ours */
        list += pl;
        off += len;
    }
    return 1;
}

/* The removal of [a,b) from an mbox by moving [b,end) down to a: DONE
 * bytes moved so far (mbox_compact, mbox_move_step). */
struct mbox_move {
    int64_t a, b, end, done;
    int small;
    int phase;          /* the next step: 0 record that nothing is in flight, 1 save the piece, 2 move it */
    char *piece;        /* ... read from b + done (phases 1-2) */
    int64_t n;
};

static void
mbox_move_start(struct mbox_move *mv, int64_t a, int64_t b, int64_t end, int64_t done)
{
    memset(mv, 0, sizeof *mv);
    mv->a = a;
    mv->b = b;
    mv->end = end;
    mv->done = done;
}

static void mbox_move_free(struct mbox_move *mv) { free(mv->piece); mv->piece = NULL; }

/* One step of a removal, each with one fsync: a piece (up to MS_MBOX_MOVE)
 * is first saved in the journal, so a restart writes the piece in flight
 * again from there, then moved. Where the journal cannot grow (a full
 * disk), a piece is at most b-a long: it never overwrites its own source,
 * so a restart can move it again from the file. After the last piece the
 * file is cut and the journal cleared. 1 when the removal is complete, 0
 * when more remains, -1 on failure. */
static int
mbox_move_step(int fd, const char *jf, uint64_t ino, struct mbox_move *mv)
{
    int64_t n = mv->end - mv->b - mv->done < MS_MBOX_MOVE ? mv->end - mv->b - mv->done : MS_MBOX_MOVE;
    if (mv->phase == 0) {
        if (n <= 0) {
            if (os_truncate(fd, mv->end - (mv->b - mv->a)) != 0 || os_fsync(fd) != 0) return -1;
            return mbox_journal_clear(jf) == 0 ? 1 : -1;
        }
        /* nothing in flight: every move before done is durable */
        if (mbox_compact_rec(jf, ino, mv->a, mv->b, mv->end, mv->done, NULL, 0) != 0) return -1;
        mv->phase = 1;
        return 0;
    }
    if (mv->phase == 1) {
        if (mv->small && n > mv->b - mv->a) n = mv->b - mv->a;
        mv->piece = xrealloc(mv->piece, (size_t)n);
        if (os_pread(fd, mv->piece, (size_t)n, mv->b + mv->done) != (long)n) return -1;
        if (!mv->small && mbox_compact_rec(jf, ino, mv->a, mv->b, mv->end, mv->done, mv->piece, n) != 0) {
            mv->small = 1; /* no room for the piece: small ones, moved from the file again after a crash */
            if (n > mv->b - mv->a) n = mv->b - mv->a;
        }
        mv->n = n;
        mv->phase = 2;
        return 0;
    }
    if (os_pwrite_all(fd, mv->piece, (size_t)mv->n, mv->a + mv->done) < 0 || os_fsync(fd) != 0) return -1;
    mv->done += mv->n;
    mv->phase = 0;
    mbox_move_free(mv);
    return 0;
}

/* Removes [a,b) by moving [b,end) down to a, from done on, in place (a
 * full disk is no obstacle: nothing grows but the journal, and only when
 * it can), all at once (a restart's recovery). saved/plen: a piece the
 * journal held at a restart. */
static int
mbox_compact(int fd, const char *jf, uint64_t ino, int64_t a, int64_t b, int64_t end, int64_t done,
             const char *saved, int64_t plen)
{
    struct mbox_move mv;
    int r;
    if (plen > 0) {
        if (os_pwrite_all(fd, saved, (size_t)plen, a + done) < 0 || os_fsync(fd) != 0) return -1;
        done += plen;
    }
    mbox_move_start(&mv, a, b, end, done);
    while ((r = mbox_move_step(fd, jf, ino, &mv)) == 0) {}
    mbox_move_free(&mv);
    return r > 0 ? 0 : -1;
}

static void
mbox_noted(const char *jf, const char *what)
{
    snprintf(mbox_note, sizeof mbox_note, "%s: %s", jf, what);
}

/* Finishes or undoes what the journal says mailsrv left unfinished (the mbox is locked). */
static int
mbox_recover(int fd, const char *jf)
{
    char j[MS_MBOX_JOURNAL + 1];
    unsigned long long ino, x1, x2, x3, x4, x5;
    struct os_stat st;
    long n;
    char sum[33];
    int k = 0, jd = os_open(jf, O_RDONLY, 0);
    if (jd < 0) return errno == ENOENT ? 0 : -1;
    n = os_pread(jd, j, MS_MBOX_JOURNAL, 0);
    os_close(jd);
    if (n < 0 || os_fstat(fd, &st) != 0) return -1;
    j[n] = 0;
    if (sscanf(j, "append %llu %llu %llu %llu%n", &ino, &x1, &x2, &x3, &k) == 4 && j[k] == '\n' &&
        x3 <= (unsigned long long)(n - k - 1)) {
        /* x1 offset, x2 length, x3 head length */
        if (ino == st.ino && (unsigned long long)st.size > x1) {
            if ((unsigned long long)st.size <= x1 + x2 &&
                mbox_is_own_tail(fd, (int64_t)x1, st.size, j + k + 1, (size_t)x3)) {
                if (os_truncate(fd, (int64_t)x1) != 0 || os_fsync(fd) != 0) return -1;
                mbox_noted(jf, "removed an unfinished append of its own");
            } else {
                mbox_noted(jf, "kept the data after an unfinished append of its own (another program wrote after it)");
            }
        }
        return mbox_journal_clear(jf);
    }
    if (sscanf(j, "batch %llu %llu %llu %llu %llu %32s%n", &ino, &x1, &x2, &x3, &x5, sum, &k) == 6 && j[k] == '\n') {
        /* x1 offset, x2 length, x3 messages, x5 the list's length */
        if (ino == st.ino && (unsigned long long)st.size > x1) {
            char *list = NULL, got[33];
            int own = 0;
            if ((unsigned long long)st.size <= x1 + x2 && x5 > 0 && x5 < (1u << 30)) {
                list = xrealloc(NULL, (size_t)x5 + 1);
                jd = os_open(jf, O_RDONLY, 0);
                if (jd >= 0 && os_pread(jd, list, (size_t)x5, MS_MBOX_JOURNAL) == (long)x5) {
                    list[x5] = 0;
                    mbox_piece_sum(list, (size_t)x5, got);
                    own = strcmp(got, sum) == 0 && mbox_is_own_batch(fd, (int64_t)x1, st.size, list, (size_t)x5);
                }
                if (jd >= 0) os_close(jd);
                free(list);
            }
            if (own) {
                if (os_truncate(fd, (int64_t)x1) != 0 || os_fsync(fd) != 0) return -1;
                mbox_noted(jf, "removed an unfinished append of its own");
            } else {
                mbox_noted(jf, "kept the data after an unfinished append of its own (another program wrote after it)");
            }
        }
        return mbox_journal_clear(jf);
    }
    if (sscanf(j, "compact %llu %llu %llu %llu %llu %llu %32s", &ino, &x1, &x2, &x3, &x4, &x5, sum) == 7) {
        /* x1 A, x2 B, x3 END, x4 DONE, x5 PLEN. The file may have grown past END
         * since the crash: the dead PID's dotlock let another program append. The
         * region from B on, the unmoved tail, is still whole, so the move goes on
         * to the new end and carries what was appended down with it. */
        if (ino == st.ino && x1 < x2 && x2 <= x3 && x4 <= x3 - x2 && x5 <= x3 - x2 - x4 && x5 <= MS_MBOX_MOVE &&
            (unsigned long long)st.size >= x3) {
            x3 = (unsigned long long)st.size;
            char *saved = NULL, got[33];
            int r;
            if (x5) { /* the piece in flight, if the journal holds all of it */
                saved = xrealloc(NULL, (size_t)x5);
                jd = os_open(jf, O_RDONLY, 0);
                if (jd < 0 || os_pread(jd, saved, (size_t)x5, MS_MBOX_JOURNAL) != (long)x5) x5 = 0;
                if (jd >= 0) os_close(jd);
                if (x5) mbox_piece_sum(saved, (size_t)x5, got);
                if (x5 && strcmp(got, sum) != 0) x5 = 0;
            }
            mbox_noted(jf, "finished an interrupted deletion");
            r = mbox_compact(fd, jf, ino, (int64_t)x1, (int64_t)x2, (int64_t)x3, (int64_t)x4, saved, (int64_t)x5);
            free(saved);
            return r;
        }
        if (!(ino == st.ino && x4 == x3 - x2 && (unsigned long long)st.size == x3 - (x2 - x1)))
            mbox_noted(jf, "an interrupted deletion: the mbox changed meanwhile, left as it is");
        return mbox_journal_clear(jf);
    }
    return 0; /* "none", or not ours to judge */
}

static void
mbox_unlock(const char *mbox, int fd)
{
    char lock[MS_PATH_FILE];
    if (ms_fmt(lock, sizeof lock, "%s.lock", mbox) >= 0) os_unlink(lock);
    os_lock(fd, 0);
    os_close(fd);
}

/* A dotlock is stale as liblockfile judges it: its PID is not running (or
 * is ours: mailsrv keeps one across loop turns only for an mbox in
 * mbox_held, which mbox_lock refuses before looking; a crash left it), or,
 * without a PID, it is older than MS_DOTLOCK_STALE; and any is stale past
 * MS_DOTLOCK_MAX_AGE, so a crashed writer's PID taken by another process
 * cannot lock the mailbox for ever. */
static int
mbox_dotlock_stale(const char *lock)
{
    char txt[32], *end;
    unsigned long pid;
    struct os_stat st;
    long n;
    int fd = os_open(lock, O_RDONLY, 0);
    if (fd < 0) return errno == ENOENT;
    n = os_pread(fd, txt, sizeof txt - 1, 0);
    if (os_fstat(fd, &st) != 0) n = -1;
    os_close(fd);
    if (n < 0) return 0;
    txt[n] = 0;
    pid = strtoul(txt, &end, 10);
    /* a live PID may be another process's by now: past MS_DOTLOCK_MAX_AGE no MUA or MDA still writes */
    if (st.mtime + MS_DOTLOCK_MAX_AGE < (int64_t)time(NULL)) return 1;
    if (end != txt && pid > 0 && pid <= INT_MAX && (*end == '\n' || !*end)) return pid == os_pid() || !os_pid_alive(pid);
    return st.mtime + MS_DOTLOCK_STALE < (int64_t)time(NULL);
}

/* Makes the dotlock `lock` with the PID in it, the way liblockfile does: the
 * PID goes into a file of mailsrv's own (tmp) that is then linked to the
 * lock's name, so the lock never exists without its PID. Made O_EXCL and
 * written after, a kill -9 between the two would leave a lock that can only
 * be judged by its age: the mailbox busy for MS_DOTLOCK_STALE. Where links
 * fail (FAT) or the PID cannot be written (a full disk), it is made O_EXCL.
 * Returns 0, or -1 with errno (EEXIST: someone holds it). */
static int
mbox_dotlock_make(const char *lock, const char *tmp)
{
    char pid[32];
    int fd, r = -1, e;
    snprintf(pid, sizeof pid, "%lu\n", os_pid());
    os_unlink(tmp); /* left by a crash: the name is this mailbox's, and mailsrv is one process */
    fd = os_open(tmp, O_WRONLY | O_CREAT | O_EXCL | MS_O_NOFOLLOW, 0644);
    if (fd >= 0) {
        r = os_write_all(fd, pid, strlen(pid)) < 0 ? -1 : 0;
        os_close(fd);
        if (r == 0) r = os_link(tmp, lock);
        e = errno;
        os_unlink(tmp);
        if (r == 0 || e == EEXIST) { errno = e; return r; }
    }
    fd = os_open(lock, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) return -1;
    os_write_all(fd, pid, strlen(pid)); /* without it the lock is judged by its age */
    os_close(fd);
    return 0;
}

/* The mboxes whose locks this process holds across loop turns (a QUIT's
 * deletions, made in slices): mbox_lock refuses them at once, without
 * opening the file, since closing any descriptor of a file drops all of the
 * process's fcntl locks on it. */
static char (*mbox_held)[MS_PATH_FILE];
static int mbox_nheld;

static int
mbox_is_held(const char *mbox)
{
    int i;
    for (i = 0; i < mbox_nheld; i++)
        if (strcmp(mbox_held[i], mbox) == 0) return 1;
    return 0;
}

static void
mbox_hold(const char *mbox, int held)
{
    int i;
    for (i = 0; i < mbox_nheld && strcmp(mbox_held[i], mbox) != 0; i++) {}
    if (!held && i < mbox_nheld) { /* the last takes its place */
        mbox_nheld--;
        memmove(mbox_held[i], mbox_held[mbox_nheld], sizeof mbox_held[0]);
    }
    if (held && i == mbox_nheld) {
        mbox_held = xrealloc(mbox_held, sizeof *mbox_held * (size_t)(mbox_nheld + 1));
        ms_strlcpy(mbox_held[mbox_nheld++], mbox, sizeof mbox_held[0]);
    }
}

/* Opens an mbox, takes both locks and recovers (mbox_recover). Returns the
 * fd; -2 if there is no mbox (and create is 0); -1 with errno EAGAIN if
 * another program, or a QUIT of this one (mbox_held), holds a lock. */
static int
mbox_lock(const char *mbox, const char *jf, int create, int *created)
{
    char lock[MS_PATH_FILE], tmp[MS_PATH_FILE];
    const char *base = os_last_sep(mbox);
    struct os_stat st;
    int fd, r, e;
    *created = 0;
    if (mbox_is_held(mbox)) { errno = EAGAIN; return -1; }
    base = base ? base + 1 : mbox;
    /* tmp: hidden beside the journal, SPOOL/DOMAIN/.USER.mbox.lock.tmp */
    if (ms_fmt(lock, sizeof lock, "%s.lock", mbox) < 0 ||
        ms_fmt(tmp, sizeof tmp, "%.*s.%s.lock.tmp", (int)(base - mbox), mbox, base) < 0)
        return -1;
    if (os_stat(mbox, &st) != 0) {
        if (!create) return -2; /* no mailbox yet */
        *created = 1;
    }
    fd = os_open(mbox, O_RDWR | (create ? O_CREAT : 0) | MS_O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    if (os_lock(fd, 1) != 0) { os_close(fd); errno = EAGAIN; return -1; }
    r = mbox_dotlock_make(lock, tmp);
    if (r != 0 && errno == EEXIST) {
        if (mbox_dotlock_stale(lock)) {
            os_unlink(lock);
            r = mbox_dotlock_make(lock, tmp);
        } else
            errno = EEXIST; /* the staleness check's calls may set errno (musl's strtoul: EINVAL for "no pid") */
    }
    if (r != 0) {
        e = errno;
        os_lock(fd, 0);
        os_close(fd);
        errno = e == EEXIST ? EAGAIN : e;
        return -1;
    }
    if (mbox_recover(fd, jf) != 0) { e = errno; mbox_unlock(mbox, fd); errno = e; return -1; }
    return fd;
}

/* The mboxrd form of the stored message (tmp_fd) with its X-UIDL after the
 * first `after` lines: written at `at` if fd >= 0, else only measured.
 * Returns its length (and its first bytes in head, its checksum in sum), or -1. */
static int64_t
mbox_append(int fd, int64_t at, int tmp_fd, int64_t tmp_len, const char *from_line, const char *uidl, int after,
            char *head, size_t *hl, struct sha256 *sum)
{
    struct line_reader lr;
    struct buf out = {0};
    const char *line;
    size_t len;
    int complete, r, bol = 1, rc = 0, in_head = 1, skipping = 0;
    int64_t off, pos = at;
    int nlines = 0;
    buf_adds(&out, from_line);
    if (after <= 0) buf_printf(&out, "X-UIDL: %s\n", uidl);
    lr_init(&lr, tmp_fd, 0, tmp_len);
    while ((r = lr_next(&lr, &line, &len, &complete, &off)) > 0) {
        /* the sender's own X-UIDL headers go: the UIDL is mailsrv's */
        if (in_head && nlines >= after) {
            if (bol && len >= 7 && ms_strncaseeq(line, "X-UIDL:", 7)) skipping = 1;
            else if (bol && !(len && (line[0] == ' ' || line[0] == '\t'))) skipping = 0; /* not a folded line */
            if (skipping) { bol = complete; continue; }
        }
        if (bol && in_head && (len == 0 || (len == 1 && line[0] == '\r'))) in_head = 0;
        if (bol && mbox_is_from_line(line, len, 0)) buf_adds(&out, ">");
        buf_add(&out, line, len);
        if (complete) buf_adds(&out, "\n");
        if (complete && ++nlines == after) buf_printf(&out, "X-UIDL: %s\n", uidl); /* after Received: */
        bol = complete;
        if (head && *hl == 0 && out.len >= MS_MBOX_HEAD) {
            memcpy(head, out.p, MS_MBOX_HEAD);
            *hl = MS_MBOX_HEAD;
        }
        if (out.len >= 65536) {
            if (sum) sha256_update(sum, out.p, out.len);
            if (fd >= 0 && os_pwrite_all(fd, out.p, out.len, pos) < 0) { rc = -1; break; }
            pos += (int64_t)out.len;
            out.len = 0;
        }
    }
    if (r < 0) rc = -1;
    if (rc == 0) {
        if (!bol) buf_adds(&out, "\n");
        buf_adds(&out, "\n"); /* the blank line before the next From_ */
        if (head && *hl == 0) {
            *hl = out.len < MS_MBOX_HEAD ? out.len : MS_MBOX_HEAD;
            memcpy(head, out.p, *hl);
        }
        if (sum) sha256_update(sum, out.p, out.len);
        if (fd >= 0 && os_pwrite_all(fd, out.p, out.len, pos) < 0) rc = -1;
        pos += (int64_t)out.len;
    }
    lr_free(&lr);
    buf_free(&out);
    return rc == 0 ? pos - at : -1;
}

/* ---- delivery of one received message to all its mailboxes ---- */
struct store_msg {
    char tmp_path[MS_PATH_DOMAIN];
    int tmp_fd;
    int64_t size, lines;       /* stored bytes and lines */
    char id[64];               /* unique id: time, pid, counter */
    char name[128];            /* unique base name: id.host */
    char sender[MS_PATH_MAX];
    struct dsn_mail dsn;       /* RET and ENVID (RFC 3461), kept in its queue entry */
    time_t when;
    int hdr_lines;             /* Return-Path and Received lines on top */
    int smtputf8;              /* MAIL FROM declared SMTPUTF8 (the queue keeps it for the relay) */
    int write_failed;          /* msg_write: a write failed */
    int body_known;            /* eightbit and longlines were seen at receipt or by msg_write (else the relay
                                * assumes both) */
    int eightbit, longlines;   /* the text has an octet over 127; a line over 998 octets */
    size_t line_len;           /* msg_write: octets of the line written so far */
    const char *commit_err;    /* its mbox batch failed in the group commit (store_commit_mbox): why */
    int commit_errno;
};


/* What differs between Maildir and mbox, chosen once from `storage`
 * (store_of): deliveries, their undo, and the POP3 view of a mailbox. */
struct store_ops {
    const char *name;                 /* as `storage =` spells it */
    int maildir;                      /* store_no_links: which names to check */
    /* one local copy of m for addr; on failure nothing of it stays */
    int (*deliver)(const struct ms_config *cfg, struct store_msg *m, const char *addr, struct store_undo *u,
                   struct dirset *ds, const char **err);
    void (*undo)(const struct store_undo *u); /* takes back a delivered copy */
    int (*view_open)(struct pop_view *v, const char *spool, const char *addr);
    int (*view_more)(struct pop_view *v, int64_t until); /* NULL: view_open made it whole */
    int (*expunge)(struct pop_view *v, int64_t until);   /* RFC 1939 6: the deletions (view_expunge) */
    /* where message m's text is: its file, first and end offset (-1: the file's end);
     * else MSG_UNREADABLE, MSG_LOCKED (by another program) or MSG_CHANGED (by another program) */
    int (*msg_text)(struct pop_view *v, struct pop_msg *m, char *path, size_t n, int64_t *start, int64_t *end);
    int from_quoted;                  /* mbox: a body line ">From " was "From " */
};
static const struct store_ops maildir_store, mbox_store;
enum { MSG_UNREADABLE = -1, MSG_LOCKED = -2, MSG_CHANGED = -3 };

static const struct store_ops *
store_of(const struct ms_config *cfg)
{
    return cfg->storage == STORE_MBOX ? &mbox_store : &maildir_store;
}

struct store_undo {
    char path[MS_PATH_FILE];
    char jf[MS_PATH_FILE];
    void (*undo)(const struct store_undo *u); /* how to take it back */
    int64_t off, len;          /* mbox: where the append went */
    size_t hl;
    char head[MS_MBOX_HEAD];   /* mbox: its first bytes */
};

static void
store_rollback(struct store_undo *u, int n)
{
    int i;
    for (i = 0; i < n; i++) u[i].undo(&u[i]);
}

/* A file of its own (a Maildir copy, a queue file): removed. */
static void
file_undo(const struct store_undo *u)
{
    os_unlink(u->path);
}

static void
mbox_undo(const struct store_undo *u)
{
    /* only if the mbox still ends with exactly this append of ours */
    struct os_stat st;
    int created, fd;
    if (u->off < 0) return; /* still queued for the group commit: dirset_forget drops it */
    fd = mbox_lock(u->path, u->jf, 0, &created);
    if (fd >= 0) {
        if (os_fstat(fd, &st) == 0 && st.size == u->off + u->len &&
            mbox_is_own_tail(fd, u->off, st.size, u->head, u->hl) && os_truncate(fd, u->off) == 0)
            os_fsync(fd);
        mbox_unlock(u->path, fd);
    }
}

/* What a batch of deliveries still owes (group commit): the fsync of each
 * Maildir or queue folder (and of each folder created for a new Maildir),
 * once for all the messages of the batch, and the mbox appends, queued at
 * the delivery and made together per mbox (store_commit_mbox) once the
 * batch's folders are durable, before any of its messages is answered. */
struct mbox_pending {
    struct store_msg *m;       /* its message: its .tmp file stays open until the answer; NULL: forgotten */
    const void *tx;            /* the transaction it belongs to (all its messages fail together), or NULL */
    struct mbox_paths mp;
    struct store_undo u;       /* where it went, once appended */
    char from_line[MS_PATH_MAX + 65];
};
struct dirset {
    char (*v)[MS_PATH_FILE];
    int n, cap;
    struct mbox_pending *mb;
    int nmb, capmb;
};

static void
dirset_add(struct dirset *d, const char *dir)
{
    int i;
    for (i = 0; i < d->n; i++)
        if (strcmp(d->v[i], dir) == 0) return;
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 16;
        d->v = xrealloc(d->v, sizeof *d->v * (size_t)d->cap);
    }
    ms_strlcpy(d->v[d->n++], dir, sizeof d->v[0]);
}

/* The queued mbox appends of m are dropped: its transaction ended before
 * the group commit did (refused, or the session went away). In a batch
 * being committed (in_commit) they are only marked, since the commit goes
 * through its entries in order (store_commit_mbox). */
static void
dirset_forget(struct dirset *d, const struct store_msg *m, int in_commit)
{
    int i, k = 0;
    for (i = 0; i < d->nmb; i++) {
        if (d->mb[i].m == m) {
            d->mb[i].m = NULL;
            if (!in_commit) continue;
        }
        if (k != i) d->mb[k] = d->mb[i];
        k++;
    }
    d->nmb = k;
}

/* A free entry for one more queued mbox append. */
static struct mbox_pending *
dirset_mbox_slot(struct dirset *d)
{
    if (d->nmb == d->capmb) {
        d->capmb = d->capmb ? d->capmb * 2 : 16;
        d->mb = xrealloc(d->mb, sizeof *d->mb * (size_t)d->capmb);
    }
    return &d->mb[d->nmb++];
}

/* Adds the folders and the mbox appends of from to to (from is left empty). */
static void
dirset_move(struct dirset *to, struct dirset *from)
{
    int i;
    if (!to->n && !to->nmb) { /* the usual case, and no name compared */
        struct dirset t = *to;
        *to = *from;
        *from = t;
    } else {
        for (i = 0; i < from->n; i++) dirset_add(to, from->v[i]);
        for (i = 0; i < from->nmb; i++) *dirset_mbox_slot(to) = from->mb[i];
    }
    from->n = from->nmb = 0;
}

/* Maildir: a hard link of the received file in new/; the folder's fsync is
 * added to ds (the group commit) or done here. */
static int
mdir_deliver(const struct ms_config *cfg, struct store_msg *m, const char *addr, struct store_undo *u,
             struct dirset *ds, const char **err)
{
    char newdir[MS_PATH_FILE];
    const char *at = strchr(addr, '@');
    /* the Maildir usually exists: link first, create the folders only on ENOENT */
    if (!at || ms_fmt(newdir, sizeof newdir, "%s/%s/%.*s/new", cfg->spool, at + 1, (int)(at - addr), addr) < 0 ||
        ms_fmt(u->path, sizeof u->path, "%s/%s,S=%lld,W=%lld", newdir, m->name,
               (long long)m->size, (long long)(m->size + m->lines)) < 0)
        return -1;
    if (os_link(m->tmp_path, u->path) != 0) {
        if (errno != ENOENT || mdir_prepare(cfg->spool, addr, newdir, sizeof newdir, ds) != 0) {
            *err = "cannot create the Maildir";
            return -1;
        }
        if (os_link(m->tmp_path, u->path) != 0) return -1;
    }
    if (ds) dirset_add(ds, newdir);
    else if (os_fsync_dir(newdir) != 0) { os_unlink(u->path); return -1; }
    return 0;
}

/* The From_ line of m; nl: the mbox does not end with a newline (another
 * program left it so), the line still goes at a line start. */
static void
mbox_from_line(const struct store_msg *m, int nl, char *out, size_t n)
{
    struct tm tm, *g = gmtime(&m->when);
    memset(&tm, 0, sizeof tm);
    if (g) tm = *g;
    snprintf(out, n, "%sFrom %s %s %s %2d %02d:%02d:%02d %d\n", nl ? "\n" : "",
             m->sender[0] ? m->sender : "MAILER-DAEMON", ms_days[tm.tm_wday], ms_months[tm.tm_mon],
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year + 1900);
}

/* Appends a batch of messages to one mbox (all of v, the same mp): one lock,
 * one journal record, one fsync, one journal clear for all of them. The
 * record ("batch", see the journal above) is written and fsynced before the
 * first byte is appended: it gives the batch's start and length, and for
 * each message its length, checksum and first bytes, so that mbox_recover
 * can tell the batch's own From_ lines from another program's message and
 * remove exactly the batch. Each v[i]->u says
 * where its message went. On failure nothing of the batch stays, *err says
 * why (errno set). */
static int
mbox_batch_append(struct mbox_pending **v, int n, const char **err)
{
    const struct mbox_paths *mp = &v[0]->mp;
    char rec[200], last, sum[33], dsum[33];
    struct buf data = {0};
    struct os_stat st;
    struct sha256 h;
    unsigned char d[32];
    int created, fd, i, j, e, rc = -1;
    int64_t off, end;
    size_t pl;
    fd = mbox_lock(mp->mbox, mp->journal, 1, &created);
    if (fd < 0) {
        *err = errno != EAGAIN ? "cannot open the mbox"
               : mbox_is_held(mp->mbox) ? "the mbox is being rewritten after a POP3 QUIT"
               : "the mbox is locked by another program";
        return -1;
    }
    *err = "cannot write the message";
    if (os_fstat(fd, &st) != 0) goto out;
    /* a file another program left without a final newline still gets its From_ at a line start */
    last = '\n';
    if (st.size > 0 && os_pread(fd, &last, 1, st.size - 1) != 1) goto out;
    off = end = st.size;
    for (i = 0; i < n; i++) { /* measured first: the journal says what is about to be appended, where */
        struct store_undo *u = &v[i]->u;
        struct store_msg *m = v[i]->m;
        mbox_from_line(m, i == 0 && last != '\n', v[i]->from_line, sizeof v[i]->from_line);
        memcpy(u->path, mp->mbox, sizeof mp->mbox);
        memcpy(u->jf, mp->journal, sizeof mp->journal);
        u->off = end;
        u->hl = 0;
        sha256_init(&h);
        u->len = mbox_append(-1, 0, m->tmp_fd, m->size, v[i]->from_line, m->id, m->hdr_lines, u->head, &u->hl, &h);
        if (u->len < 0) goto out;
        sha256_final(&h, d);
        for (j = 0; j < 16; j++) sprintf(sum + 2 * j, "%02x", d[j]);
        pl = u->hl < MS_MBOX_PREFIX ? u->hl : MS_MBOX_PREFIX;
        buf_printf(&data, "%lld %lu %s\n", (long long)u->len, (unsigned long)pl, sum);
        buf_add(&data, u->head, pl);
        end += u->len;
    }
    if (!data.p) goto out;
    mbox_piece_sum(data.p, data.len, dsum);
    snprintf(rec, sizeof rec, "batch %llu %lld %lld %d %lu %s\n", (unsigned long long)st.ino, (long long)off,
             (long long)(end - off), n, (unsigned long)data.len, dsum);
    if (mbox_journal_put(mp->journal, rec, strlen(rec), data.p, data.len, 0) != 0) goto out;
    for (i = 0; i < n; i++) {
        struct store_msg *m = v[i]->m;
        if (mbox_append(fd, v[i]->u.off, m->tmp_fd, m->size, v[i]->from_line, m->id, m->hdr_lines, NULL, NULL, NULL) !=
            v[i]->u.len)
            break;
    }
    /* the list stays behind the cleared record (it is read only after a "batch" one): cutting it
     * would change the journal's size, and so its metadata, at every fsync */
    if (i < n || os_fsync(fd) != 0 || (created && os_fsync_dir(mp->dir) != 0) ||
        mbox_journal_put(mp->journal, "none\n", 5, NULL, 0, 0) != 0) {
        /* still under our locks: what follows off is ours */
        e = errno;
        if (os_truncate(fd, off) == 0 && os_fsync(fd) == 0) mbox_journal_put(mp->journal, "none\n", 5, NULL, 0, 0);
        errno = e;
        goto out;
    }
    rc = 0;
out:
    e = errno;
    buf_free(&data);
    mbox_unlock(mp->mbox, fd);
    if (rc != 0)
        for (i = 0; i < n; i++) v[i]->u.off = -1; /* nothing of it to take back */
    errno = e;
    return rc;
}

/* mbox: queued for the group commit (ds: store_commit_mbox appends it with
 * the batch's other messages to the same mbox), or appended now (ds NULL). The
 * mbox's folder is made here, the lock is taken at the append. */
static int
mbox_deliver(const struct ms_config *cfg, struct store_msg *m, const char *addr, struct store_undo *u,
             struct dirset *ds, const char **err)
{
    struct mbox_pending one, *p = &one;
    memset(u, 0, sizeof *u);
    u->off = -1;
    if (ds) p = dirset_mbox_slot(ds);
    memset(p, 0, sizeof *p);
    p->m = m;
    p->u.off = -1;
    if (mbox_paths(cfg->spool, addr, &p->mp) != 0 || store_mkdir(p->mp.dir, cfg->spool) != 0) {
        if (ds) ds->nmb--; /* not queued */
        return -1;
    }
    memcpy(u->path, p->mp.mbox, sizeof u->path);
    memcpy(u->jf, p->mp.journal, sizeof u->jf);
    if (ds) return 0;
    if (mbox_batch_append(&p, 1, err) != 0) return -1;
    *u = p->u;
    return 0;
}

/* The group commit's mbox appends, one mbox a step (the commit runs in
 * slices: a list post may owe a thousand mboxes): from ds->mb[i] on, the
 * queued messages of the next mbox are appended as one batch
 * (mbox_batch_append: one lock, one journal record, one fsync). Entries are
 * marked u.len == -2 while queued (store_commit_begin). When a batch fails,
 * every message of its transactions gets m->commit_err (a list post and the
 * message that brought it: the client's 451 covers both), and their entries
 * still queued are not appended; those appended before are taken back by
 * store_commit_undo. Returns where the next step starts (ds->nmb: done). */
static int
store_commit_mbox(struct dirset *ds, int i)
{
    struct mbox_pending **v;
    const char *err;
    int j, k, n = 0;
#define QUEUED(e) ((e)->u.len == -2 && (e)->m && !(e)->m->commit_err)
    while (i < ds->nmb && !QUEUED(&ds->mb[i])) i++;
    if (i == ds->nmb) return i;
    v = xrealloc(NULL, sizeof *v * (size_t)(ds->nmb - i));
    for (j = i; j < ds->nmb; j++) /* this mbox's messages, in the order they came */
        if (QUEUED(&ds->mb[j]) && strcmp(ds->mb[j].mp.mbox, ds->mb[i].mp.mbox) == 0) {
            ds->mb[j].u.len = -1;
            v[n++] = &ds->mb[j];
        }
    if (mbox_batch_append(v, n, &err) != 0) {
        int e = errno;
        for (j = 0; j < n; j++)
            for (k = 0; k < ds->nmb; k++) {
                struct store_msg *m = ds->mb[k].m;
                if (m && !m->commit_err && (&ds->mb[k] == v[j] || (v[j]->tx && ds->mb[k].tx == v[j]->tx))) {
                    m->commit_err = err;
                    m->commit_errno = e;
                }
            }
    }
    free(v);
    while (i < ds->nmb && !QUEUED(&ds->mb[i])) i++;
#undef QUEUED
    return i;
}

/* A sealed batch's queued mbox appends are marked to be made. */
static void
store_commit_begin(struct dirset *ds)
{
    int i;
    for (i = 0; i < ds->nmb; i++) ds->mb[i].u.len = -2;
}

/* After the mbox appends of a batch, one step of taking back the copies of
 * the transactions that failed, the last first, below ds->mb[i]: returns
 * where the next step ends (0: done). store_rollback takes back their other
 * copies, the sessions' undo lists. A copy that another transaction's follows
 * in the same mbox stays (mbox_undo cuts only the file's tail): its client
 * got 451 and may send it again, a duplicate, never a loss. */
static int
store_commit_undo(struct dirset *ds, int i)
{
    while (i > 0) {
        const struct mbox_pending *e = &ds->mb[--i];
        if (e->m && e->m->commit_err && e->u.off >= 0) {
            mbox_undo(&e->u);
            break;
        }
    }
    return i;
}

/* A delivery of m to the local targets of t, in steps (a list post goes to
 * a thousand mailboxes: the loop serves other sessions between two slices).
 * ds as for store_deliver. Each step is given the configuration in force
 * (a reload between two frees the one before). */
struct store_job {
    struct store_msg *m;
    const struct targets *t;
    struct dirset *ds;
    int next;                        /* the next target; -1: m's file is not fsynced yet */
    struct store_undo *undo;         /* the copies made so far */
    int nundo;
    const char *err;                 /* why it failed */
};

static void
store_job_begin(struct store_job *j, struct store_msg *m, const struct targets *t, struct dirset *ds)
{
    j->m = m;
    j->t = t;
    j->ds = ds;
    j->next = -1;
    j->undo = xrealloc(NULL, sizeof *j->undo * (size_t)(t->n ? t->n : 1));
    j->nundo = 0;
    j->err = "cannot write the message";
}

/* Takes back every copy j made (and ends it). */
static void
store_job_abort(struct store_job *j)
{
    store_rollback(j->undo, j->nundo);
    free(j->undo);
    j->undo = NULL;
    j->nundo = 0;
}

/* Delivers to j's targets until until_us (at least one step): 1 when all
 * are delivered (j->undo lists the copies), 0 when more is to do, -1 on
 * failure: j->err says why and no copy of j stays. */
static int
store_job_step(struct store_job *j, const struct ms_config *cfg, int64_t until_us)
{
    static char why[MS_PATH_MAX + 64];
    const struct store_ops *store = store_of(cfg);
    const char *addr;
    do {
        if (j->next < 0) { /* the text first: the copies are links to it */
            /* the received file itself is kept only as a Maildir or queue link; an mbox gets a copy,
             * fsynced there */
            if ((store->maildir || targets_remote(j->t)) && os_fsync(j->m->tmp_fd) != 0) goto fail;
            j->next = 0;
            continue;
        }
        if (j->next == j->t->n) return 1;
        addr = j->t->v[j->next];
        if (j->t->remote[j->next++]) continue; /* queued by queue_create */
        if (store_no_links(cfg->spool, addr, store->maildir) != 0) {
            /* 4xx: a local fault to repair; a 5xx after DATA would bounce the mail for every recipient */
            snprintf(why, sizeof why, "the mailbox of %s is a symbolic link: refused", addr);
            if (errno == ELOOP) j->err = why;
            goto fail;
        }
        if (store->deliver(cfg, j->m, addr, &j->undo[j->nundo], j->ds, &j->err) != 0) goto fail;
        j->undo[j->nundo++].undo = store->undo;
    } while (os_now_us() < until_us);
    return j->next == j->t->n ? 1 : 0;
fail:
    store_job_abort(j);
    return -1;
}

/* Delivers to every target. With ds == NULL, returns 0 only when all copies
 * are durable; otherwise the fsync of the Maildir folders is left to the
 * caller (added to ds), who gets the undo list to roll back if it fails. On
 * failure *err says why and nothing stays delivered. */
static int
store_deliver(const struct ms_config *cfg, struct store_msg *m, const struct targets *t, const char **err,
              struct dirset *ds, struct store_undo **undo_out, int *nundo_out)
{
    struct store_job j;
    store_job_begin(&j, m, t, ds);
    if (store_job_step(&j, cfg, INT64_MAX) != 1) { *err = j.err; return -1; }
    if (undo_out) { *undo_out = j.undo; *nundo_out = j.nundo; }
    else free(j.undo);
    return 0;
}

/* ---- the relay queue ----
 * QUEUE/ID.msg is the message as stored locally (LF line ends, Return-Path
 * first); QUEUE/ID.env is the envelope with each recipient's state, as text.
 * The .env is the commit record: it is written after the .msg, both are
 * fsynced with the folder before the 250, and after each delivery attempt
 * it is replaced atomically. A .msg without its .env is a crashed receipt. */
enum { Q_PENDING, Q_DELIVERED, Q_BOUNCED };
/* The optional `body 7bit|8bit` line (and `longlines`) came with issue 18: an entry without it
 * (older, or a receipt that did not record it) is taken as 8-bit with long lines, the worst case:
 * the relay then converts it for a hop without 8BITMIME, harmless for 7-bit text (no scan of the file). */
enum { Q_BODY_UNKNOWN, Q_BODY_7BIT, Q_BODY_8BIT };
static const char *const q_state_names[] = {"pending", "delivered", "bounced"};

struct qrcpt {
    char addr[MS_PATH_MAX];
    int state;
    int result;          /* this attempt: 0 not tried, 2 accepted, 4 deferred, 5 refused */
    char error[400];     /* the last failure */
    int notify;          /* RFC 3461 NOTIFY bits, 0 if not given */
    char orcpt[MS_ORCPT_MAX + 1]; /* ORCPT as received, or "" */
    int relayed;         /* this attempt: accepted by a hop without DSN, SUCCESS asked (a "relayed" report) */
    char remote_mta[MS_DOMAIN_MAX + 1]; /* ... that hop */
};
struct qentry {
    char id[64];
    char from[MS_PATH_MAX];
    int64_t arrived, next_try;   /* wall-clock seconds */
    int64_t size, lines;
    int tries, active;           /* active: outbound sessions working on it */
    int ret;                     /* RFC 3461 RET (DSN_RET_*) */
    char envid[MS_ENVID_MAX + 1]; /* ENVID as received (xtext), or "" */
    int body;                    /* Q_BODY_*: what the receipt saw of the text (the `body` line) */
    int longlines;               /* a line over 998 octets (the `longlines` line) */
    int smtputf8;                /* its client declared SMTPUTF8: passed on where offered */
    struct qrcpt *r;
    int nr;
};

static void qentry_free(struct qentry *e) { if (e) { free(e->r); free(e); } }

static void
queue_env_text(const struct qentry *e, struct buf *b)
{
    int i;
    buf_printf(b, "mailsrv-queue 1\nfrom <%s>\narrived %lld\ntries %d\nnext %lld\nsize %lld\nlines %lld\n", e->from,
               (long long)e->arrived, e->tries, (long long)e->next_try, (long long)e->size, (long long)e->lines);
    if (e->body != Q_BODY_UNKNOWN) buf_printf(b, "body %s\n", e->body == Q_BODY_8BIT ? "8bit" : "7bit");
    if (e->longlines) buf_adds(b, "longlines\n");
    if (e->smtputf8) buf_adds(b, "smtputf8 1\n"); /* optional: older readers skip it */
    /* DSN (RFC 3461): optional lines that older versions skip; "dsn NOTIFY ORCPT" belongs to the
     * rcpt line before it ("-": not given) */
    if (e->ret) buf_printf(b, "ret %s\n", e->ret == DSN_RET_FULL ? "full" : "hdrs");
    if (e->envid[0]) buf_printf(b, "envid %s\n", e->envid);
    for (i = 0; i < e->nr; i++) {
        char notify[32];
        buf_printf(b, "rcpt %s %s%s%s\n", q_state_names[e->r[i].state], e->r[i].addr, e->r[i].error[0] ? " " : "",
                   e->r[i].error);
        if (!e->r[i].notify && !e->r[i].orcpt[0]) continue;
        dsn_notify_text(e->r[i].notify, notify, sizeof notify);
        buf_printf(b, "dsn %s %s\n", notify[0] ? notify : "-", e->r[i].orcpt[0] ? e->r[i].orcpt : "-");
    }
}

/* Replaces ID.env after a delivery attempt (atomic, then the folder fsync). */
static int
queue_env_update(const char *qdir, const struct qentry *e)
{
    char path[MS_PATH_FILE];
    struct buf b = {0};
    int r;
    queue_env_text(e, &b);
    r = ms_fmt(path, sizeof path, "%s/%s.env", qdir, e->id) < 0 || os_write_file_atomic(path, b.p, b.len) != 0 ||
        os_fsync_dir(qdir) != 0 ? -1 : 0;
    buf_free(&b);
    return r;
}

/* Reads QUEUE/ID.env; NULL if it is missing or malformed. */
static struct qentry *
queue_env_read(const char *qdir, const char *id)
{
    char path[MS_PATH_FILE], *text, *line, *save;
    size_t len;
    struct qentry *e;
    int ok = 0;
    if (ms_fmt(path, sizeof path, "%s/%s.env", qdir, id) < 0 || !(text = cfg_read_file(path, &len))) return NULL;
    e = xrealloc(NULL, sizeof *e);
    memset(e, 0, sizeof *e);
    ms_strlcpy(e->id, id, sizeof e->id);
    for (save = text; (line = ms_next_item(&save, '\n')) != NULL;) {
        long long v;
        char *cur = line, *key, *state, *addr;
        int i;
        if (strcmp(line, "mailsrv-queue 1") == 0) ok = 1;
        else if (strncmp(line, "from <", 6) == 0 && line[strlen(line) - 1] == '>') {
            line[strlen(line) - 1] = 0;
            if (ms_strlcpy(e->from, line + 6, sizeof e->from) != 0) { ok = 0; break; } /* never relayed cut */
        } else if (!(key = ms_word(&cur))) continue;
        else if (strcmp(key, "longlines") == 0) e->longlines = 1;
        else if (strcmp(key, "body") == 0) {
            const char *v = ms_word(&cur);
            e->body = v && strcmp(v, "7bit") == 0 ? Q_BODY_7BIT : v && strcmp(v, "8bit") == 0 ? Q_BODY_8BIT : Q_BODY_UNKNOWN;
        } else if (strcmp(key, "rcpt") == 0) {
            struct qrcpt *r;
            const char *at;
            if (!(state = ms_word(&cur)) || !(addr = ms_word(&cur)) || strlen(addr) >= sizeof r->addr ||
                !(at = strrchr(addr, '@')) || at == addr || !at[1]) { /* the relay needs local@domain */
                ok = 0;
                break;
            }
            for (i = 0; i < 3 && strcmp(state, q_state_names[i]) != 0; i++) {}
            if (i == 3) { ok = 0; break; }
            e->r = xrealloc(e->r, sizeof *e->r * (size_t)(e->nr + 1));
            r = &e->r[e->nr++];
            memset(r, 0, sizeof *r);
            r->state = i;
            ms_strlcpy(r->addr, addr, sizeof r->addr);
            while (*cur == ' ') cur++;
            ms_strlcpy(r->error, cur, sizeof r->error);
        } else if (strcmp(key, "dsn") == 0) { /* the last rcpt's NOTIFY and ORCPT, as dsn_rcpt_param took them */
            char param[MS_ORCPT_MAX + 8], *w;
            struct qrcpt *r = e->nr ? &e->r[e->nr - 1] : NULL;
            int notify = 0;
            if (!r || r->notify || r->orcpt[0] || !(w = ms_word(&cur))) { ok = 0; break; }
            if (strcmp(w, "-") != 0 && (ms_fmt(param, sizeof param, "NOTIFY=%s", w) < 0 ||
                                        dsn_rcpt_param(param, &notify, r->orcpt) != 1)) { ok = 0; break; }
            if (!(w = ms_word(&cur))) { ok = 0; break; }
            if (strcmp(w, "-") != 0 && (ms_fmt(param, sizeof param, "ORCPT=%s", w) < 0 ||
                                        dsn_rcpt_param(param, &notify, r->orcpt) != 1)) { ok = 0; break; }
            r->notify = notify;
        } else if (strcmp(key, "ret") == 0 || strcmp(key, "envid") == 0) {
            char param[MS_ENVID_MAX + 8], *w = ms_word(&cur);
            struct dsn_mail d;
            memset(&d, 0, sizeof d);
            if (!w || ms_fmt(param, sizeof param, "%s=%s", key, w) < 0 || dsn_mail_param(param, &d) != 1) { ok = 0; break; }
            if (d.ret) e->ret = d.ret;
            else memcpy(e->envid, d.envid, sizeof e->envid);
        } else if (ms_word_num(&cur, &v) == 0) {
            if (strcmp(key, "arrived") == 0) e->arrived = v;
            else if (strcmp(key, "tries") == 0) e->tries = (int)v;
            else if (strcmp(key, "next") == 0) e->next_try = v;
            else if (strcmp(key, "size") == 0) e->size = v;
            else if (strcmp(key, "lines") == 0) e->lines = v;
            else if (strcmp(key, "smtputf8") == 0) e->smtputf8 = v != 0;
        }
    }
    free(text);
    if (!ok || e->nr == 0) { qentry_free(e); return NULL; }
    return e;
}

/* Copies a file when a hard link is not possible (another file system). */
static int
store_copy(int from_fd, int64_t size, const char *to)
{
    char chunk[16384];
    int64_t off = 0;
    int fd = os_open(to, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) return -1;
    while (off < size) {
        long n = os_pread(from_fd, chunk, sizeof chunk, off);
        if (n <= 0 || os_write_all(fd, chunk, (size_t)n) < 0) break;
        off += n;
    }
    if (off < size || os_fsync(fd) != 0) { os_close(fd); os_unlink(to); return -1; }
    return os_close(fd);
}

/* Queues a received message for its remote recipients: ID.msg, then ID.env.
 * Appends both files to the undo list; the folder fsync is left to ds as
 * in store_deliver (or done here when ds is NULL). */
static int
queue_create(const char *qdir, const char *base, const struct store_msg *m, const struct targets *t,
             struct dirset *ds, struct store_undo **undo, int *nundo)
{
    struct qentry e;
    struct buf b = {0};
    int i, fd, rc = -1;
    struct store_undo *u;
    if (store_mkdir(qdir, base) != 0) return -1;
    *undo = xrealloc(*undo, sizeof **undo * (size_t)(*nundo + 2));
    u = *undo + *nundo;
    memset(u, 0, 2 * sizeof *u);
    u[0].undo = u[1].undo = file_undo;
    if (ms_fmt(u[0].path, sizeof u[0].path, "%s/%s.msg", qdir, m->id) < 0 ||
        ms_fmt(u[1].path, sizeof u[1].path, "%s/%s.env", qdir, m->id) < 0)
        return -1;
    if (os_link(m->tmp_path, u[0].path) != 0 && store_copy(m->tmp_fd, m->size, u[0].path) != 0) return -1;
    (*nundo)++;
    memset(&e, 0, sizeof e);
    ms_strlcpy(e.from, m->sender, sizeof e.from);
    e.arrived = e.next_try = (int64_t)m->when;
    e.size = m->size;
    e.lines = m->lines;
    e.ret = m->dsn.ret;
    memcpy(e.envid, m->dsn.envid, sizeof e.envid);
    e.body = !m->body_known ? Q_BODY_UNKNOWN : m->eightbit ? Q_BODY_8BIT : Q_BODY_7BIT;
    e.longlines = m->body_known && m->longlines;
    e.smtputf8 = m->smtputf8;
    e.r = xrealloc(NULL, sizeof *e.r * (size_t)(t->n ? t->n : 1));
    for (i = 0; i < t->n; i++) {
        if (!t->remote[i]) continue;
        memset(&e.r[e.nr], 0, sizeof e.r[0]);
        e.r[e.nr].notify = t->notify[i];
        if (t->orcpt[i]) ms_strlcpy(e.r[e.nr].orcpt, t->orcpt[i], sizeof e.r[0].orcpt);
        ms_strlcpy(e.r[e.nr++].addr, t->v[i], sizeof e.r[0].addr);
    }
    queue_env_text(&e, &b);
    free(e.r);
    fd = os_open(u[1].path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
        (*nundo)++;
        if (os_write_all(fd, b.p, b.len) >= 0 && os_fsync(fd) == 0) rc = 0;
        if (os_close(fd) != 0) rc = -1;
    }
    buf_free(&b);
    if (rc == 0) {
        if (ds) dirset_add(ds, qdir);
        else if (os_fsync_dir(qdir) != 0) rc = -1;
    }
    return rc;
}

/* Stores a message for all its targets: local copies, then the queue entry
 * for the remote ones. On failure nothing stays and *err says why. */
static int
store_message(const struct ms_config *cfg, const char *qdir, struct store_msg *m, const struct targets *t,
             const char **err, struct dirset *ds, struct store_undo **undo, int *nundo)
{
    struct store_undo *u = NULL;
    int nu = 0;
    if (store_deliver(cfg, m, t, err, ds, &u, &nu) != 0) return -1;
    if (targets_remote(t) && queue_create(qdir, cfg->dir[0] ? cfg->dir : ".", m, t, ds, &u, &nu) != 0) {
        *err = "cannot write to the relay queue";
        store_rollback(u, nu);
        free(u);
        return -1;
    }
    if (undo) { *undo = u; *nundo = nu; }
    else free(u);
    return 0;
}

/* ---- the POP3 view of a mailbox ---- */
struct pop_msg {
    char *name;           /* Maildir: "new/NAME" or "cur/NAME" */
    int64_t from_off;     /* mbox: the From_ line */
    int64_t off, len;     /* mbox: the message text */
    int64_t size;         /* octets as RETR sends them (CRLF) */
    char uidl[72];
    int deleted;
    int size_read;        /* Maildir: named without W=, its size was read (now or for the index) */
    size_t klen;          /* Maildir: the length of its name's key (mdir_key_len) */
};

struct pop_view {
    const struct store_ops *ops;     /* the store it was opened from */
    char path[MS_PATH_FILE];   /* Maildir folder, or the mbox file */
    char jf[MS_PATH_FILE];     /* mbox: its journal */
    struct os_stat seen;       /* mbox: the file as scanned (mbox_view_refresh) */
    struct pop_msg *msgs;
    int n, cap;
    struct mdir_open *opening; /* Maildir: the view is being made (mdir_view_more) */
    struct mbox_work *mbox_work; /* mbox: read at login, or its deletions made after QUIT (locks held) */
    int expunged, expunge_failed; /* Maildir: messages the deletion has looked at; one stayed */
    int uidl_short;            /* Maildir: UIDLs as pop3_uidl = short makes them (mdir_uidl_len) */
};

static void
view_free(struct pop_view *v)
{
    view_clear(v);
    mdir_open_free(v->opening);
    v->opening = NULL;
    mbox_work_end(v);
}

/* Empties the list of messages (the work on the view goes on). */
static void
view_clear(struct pop_view *v)
{
    int i;
    for (i = 0; i < v->n; i++) free(v->msgs[i].name);
    free(v->msgs);
    v->msgs = NULL;
    v->n = v->cap = 0;
}

static struct pop_msg *
view_add(struct pop_view *v)
{
    struct pop_msg *m;
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->msgs = xrealloc(v->msgs, sizeof *v->msgs * (size_t)v->cap);
    }
    m = &v->msgs[v->n++];
    memset(m, 0, sizeof *m);
    return m;
}

/* A Maildir message's UIDL: its name up to the flags (":2,S"), which is what Dovecot gives with
 * pop3_uidl_format = %f, so that POP3 clients that leave mail on the server keep their place when
 * Dovecot takes the spool over. pop3_uidl = short: up to the first comma, as mailsrv 0.1 did. */
static size_t
mdir_uidl_len(const struct pop_view *v, const char *name)
{
    static const char dovecot[] = {':', MS_MAILDIR_INFO, 0}, old[] = {',', ':', MS_MAILDIR_INFO, 0};
    return strcspn(name, v->uidl_short ? old : dovecot);
}

/* A UIDL is 1-70 characters 0x21-0x7E (RFC 1939 7); anything else is hashed. */
static void
uidl_set(char *dst, const char *src, size_t n)
{
    size_t i;
    int ok = n >= 1 && n <= 70;
    for (i = 0; ok && i < n; i++)
        if ((unsigned char)src[i] < 0x21 || (unsigned char)src[i] > 0x7e) ok = 0;
    if (ok) {
        memcpy(dst, src, n);
        dst[n] = 0;
    } else {
        struct sha256 s;
        unsigned char h[32];
        sha256_init(&s);
        sha256_update(&s, src, n);
        sha256_final(&s, h);
        for (i = 0; i < 16; i++) sprintf(dst + 2 * i, "%02x", h[i]);
    }
}

/* A Maildir message's name up to its flags (":2,S"): what stays when a
 * client or Dovecot marks it read, the index's key. */
static size_t
mdir_key_len(const char *base)
{
    return strcspn(base, ":!");
}

static const char *mdir_base(const struct pop_msg *m) { return m->name + 4; } /* after "new/" or "cur/" */

static int
mdir_key_cmp(const char *a, size_t na, const char *b, size_t nb)
{
    int r = memcmp(a, b, na < nb ? na : nb);
    return r ? r : (na > nb) - (na < nb);
}

/* The order of a Maildir's messages: by the name up to the flags (delivery
 * time first, whatever the folder), then by the whole name. */
static int
view_cmp_name(const struct pop_msg *x, const struct pop_msg *y)
{
    int r = mdir_key_cmp(mdir_base(x), x->klen, mdir_base(y), y->klen);
    return r ? r : strcmp(mdir_base(x), mdir_base(y));
}

/* ---- a Maildir's POP3 view, made in slices ----
 * The names come from new/ and cur/ a few at a time; a message named
 * without W= by another program (Dovecot, getmail, a copy) must be read
 * to learn its size with CRLF line ends, and a mailbox of such messages
 * would be read whole at every login. The view is kept in the mailbox's
 * folder, in MS_SIZES_FILE, the way Dovecot keeps dovecot-uidlist: a
 * header line; "dirs" with the inode and mtime (ns) of new/ and cur/ when
 * it was made, and whether each mtime was settled when it was written
 * (os_mtime_settled: a later change cannot carry the same mtime); then
 * "SIZE NAME" for every message in the view's order; "end COUNT". A cache,
 * written to a new file renamed over the old one, without fsync: ignored
 * and rebuilt when missing, malformed or cut short (its end line is the
 * last one written: a file whose last lines never reached the disk before a
 * crash must not hide their messages). When neither
 * folder changed since and both were settled, the index is the view, and
 * nothing is listed or read, as Dovecot skips a Maildir whose folders'
 * mtimes did not move.
 * Otherwise the folders are listed, and a size is read only for a name
 * without W= that the index does not know (by the name up to its flags:
 * a Maildir message's text never changes, only its flags do). Each part
 * of the work (one name, one merge of the sort, one piece of a file, one
 * index line) is short, and mdir_view_more stops when its time is up: the
 * loop serves the other sessions in between. */
#define MS_SIZES_FILE "mailsrv-sizes"
#define MS_SIZES_HEAD "mailsrv-sizes 3\n"
#define MS_SIZES_MAX (64L * 1024 * 1024) /* a larger index is ignored */
#define MS_SIZES_CHUNK (256 * 1024)        /* index bytes read per step */

struct sizes_ent { int64_t size; size_t name, nlen, klen; };  /* name: offset into the index text ("new/..." or "cur/...") */

struct mdir_open {
    enum { MO_INDEX, MO_COPY, MO_LIST, MO_SORT, MO_SIZES, MO_WRITE, MO_DONE } phase;
    struct os_stat now[2];        /* new/ and cur/ as they are (before the listing) */
    int now_settled[2];           /* ... settled then: a change after that stat cannot carry its mtime */
    unsigned long long said_ino[2]; /* ... as the index says: inode, mtime (ns), settled when it was written */
    long long said_ns[2];
    int said_settled[2], said;    /* said: the index has its "dirs" line */
    int sub;                      /* MO_LIST: 0 new/, 1 cur/ */
    void *dir;                    /* the folder being listed */
    int fd;                       /* the index being read or written, or the message being measured */
    char *text;                   /* the index as read */
    size_t tlen, tcap, parsed;
    struct sizes_ent *ent;        /* its entries, in key order */
    int nent, capent, bad, ended; /* bad: malformed, rewritten; ended: its "end COUNT" line was read */
    struct pop_msg **sorted, **tmp; /* MO_SORT: a bottom-up merge sort of pointers to the messages */
    int width, at;
    int next;                     /* MO_COPY: the next entry; MO_SIZES: the message being sized; MO_WRITE: the next to write */
    int lines;                    /* MO_WRITE: the entries the index holds (names without a line end) */
    struct line_reader lr;        /* ... when it is read: where, and its size so far */
    int64_t size;
    int bol;
    struct buf out;               /* MO_WRITE: index text not yet written */
};

static void
mdir_open_free(struct mdir_open *o)
{
    if (!o) return;
    if (o->dir) os_dir_close(o->dir);
    if (o->fd >= 0) os_close(o->fd);
    if (o->lr.buf) lr_free(&o->lr);
    free(o->text);
    free(o->ent);
    free(o->sorted);
    free(o->tmp);
    buf_free(&o->out);
    free(o);
}

/* Parses up to `lines` of the complete lines read so far (1: some are
 * left); a line that is not what the index holds, or a name out of key
 * order, makes it untrusted (o->bad). */
static int
sizes_parse(struct mdir_open *o, int lines)
{
    for (; !o->bad && o->parsed < o->tlen; lines--) {
        char *line = o->text + o->parsed, *nl = memchr(line, '\n', o->tlen - o->parsed), *sp;
        struct sizes_ent *e;
        int n;
        if (!nl) return 0; /* the rest of it comes with the next read */
        if (!lines) return 1;
        o->parsed = (size_t)(nl + 1 - o->text);
        if (o->ended) { o->bad = 1; return 0; } /* nothing comes after the end */
        if (line != o->text && memcmp(line, "end ", 4) == 0) {
            *nl = 0;
            o->ended = 1;
            o->bad = strtol(line + 4, &sp, 10) != o->nent || *sp;
            *nl = '\n';
            continue;
        }
        if (line == o->text) { /* the header line */
            o->bad = (size_t)(nl + 1 - line) != strlen(MS_SIZES_HEAD) || memcmp(line, MS_SIZES_HEAD, strlen(MS_SIZES_HEAD)) != 0;
            continue;
        }
        if (memcmp(line, "dirs ", 5) == 0 && !o->said && !o->nent) {
            *nl = 0;
            n = sscanf(line, "dirs %llu %lld %d %llu %lld %d", &o->said_ino[0], &o->said_ns[0], &o->said_settled[0],
                       &o->said_ino[1], &o->said_ns[1], &o->said_settled[1]);
            *nl = '\n';
            o->said = n == 6;
            o->bad = n != 6;
            continue;
        }
        sp = memchr(line, ' ', (size_t)(nl - line));
        /* a name is one file of new/ or cur/, as os_dir_next gives them: it becomes a path (RETR, DELE) */
        if (!sp || sp == line || nl - sp < 6 || sp - line > 15 || (memcmp(sp + 1, "new/", 4) != 0 && memcmp(sp + 1, "cur/", 4) != 0) ||
            sp[5] == '.' || memchr(sp + 5, '/', (size_t)(nl - sp - 5)) || memchr(sp + 5, '\\', (size_t)(nl - sp - 5)) ||
            memchr(sp + 5, 0, (size_t)(nl - sp - 5))) {
            o->bad = 1;
            return 0;
        }
        if (o->nent == o->capent) {
            o->capent = o->capent ? 2 * o->capent : 1024;
            o->ent = xrealloc(o->ent, sizeof *o->ent * (size_t)o->capent);
        }
        e = &o->ent[o->nent];
        e->size = 0;
        for (; line < sp; line++) {
            if (*line < '0' || *line > '9') { o->bad = 1; return 0; }
            e->size = e->size * 10 + (*line - '0');
        }
        e->name = (size_t)(sp + 1 - o->text);
        e->nlen = (size_t)(nl - sp - 1);
        for (e->klen = 0; e->klen < e->nlen - 4 && sp[5 + e->klen] != ':' && sp[5 + e->klen] != '!'; e->klen++) {}
        if (o->nent && mdir_key_cmp(o->text + o->ent[o->nent - 1].name + 4, o->ent[o->nent - 1].klen, sp + 5, e->klen) > 0) {
            o->bad = 1;
            return 0;
        }
        o->nent++;
    }
    return 0;
}

/* One read of the index, or the parsing of some of its lines: 1 when it
 * is all read (or unusable: then empty). */
static int
sizes_read_step(struct pop_view *v, struct mdir_open *o)
{
    long n;
    if (o->fd < 0) {
        char path[MS_PATH_FILE];
        struct os_stat st;
        if (ms_fmt(path, sizeof path, "%s/" MS_SIZES_FILE, v->path) < 0 ||
            (o->fd = os_open(path, O_RDONLY | MS_O_NOFOLLOW, 0)) < 0)
            return 1; /* none yet */
        if (os_fstat(o->fd, &st) != 0 || st.size > MS_SIZES_MAX) o->bad = 1;
        else o->text = xrealloc(NULL, o->tcap = (size_t)st.size + MS_SIZES_CHUNK); /* (read at once into its place) */
    }
    if (!o->bad && sizes_parse(o, 2048)) return 0;
    if (!o->bad) {
        if (o->tlen + MS_SIZES_CHUNK > o->tcap) { /* grown since */
            if (o->tlen > (size_t)MS_SIZES_MAX) o->bad = 1;
            else o->text = xrealloc(o->text, o->tcap = o->tlen + MS_SIZES_CHUNK);
        }
        n = o->bad ? 0 : os_pread(o->fd, o->text + o->tlen, MS_SIZES_CHUNK, (int64_t)o->tlen);
        if (n > 0) {
            o->tlen += (size_t)n;
            return 0;
        }
        if (n < 0 || o->parsed != o->tlen || !o->ended) o->bad = 1; /* cut short */
    }
    os_close(o->fd);
    o->fd = -1;
    if (o->bad) o->nent = 0; /* measured again, and a new index written */
    return 1;
}

/* One name of new/ or cur/ into the view: 1 when both are listed. */
static int
mdir_list_step(struct pop_view *v, struct mdir_open *o)
{
    static const char *const subs[] = {"new", "cur"};
    const char *name, *w;
    struct pop_msg *m;
    if (!o->dir) {
        char dir[MS_PATH_FILE];
        if (o->sub == 2) return 1;
        if (ms_fmt(dir, sizeof dir, "%s/%s", v->path, subs[o->sub]) < 0) return -1;
        if ((o->dir = os_dir_open(dir)) == NULL) { o->sub++; return 0; } /* not made yet: no messages */
    }
    if ((name = os_dir_next(o->dir)) == NULL) {
        os_dir_close(o->dir);
        o->dir = NULL;
        o->sub++;
        return 0;
    }
    m = view_add(v);
    m->name = xrealloc(NULL, strlen(name) + 5);
    memcpy(m->name, subs[o->sub], 3);
    m->name[3] = '/';
    memcpy(m->name + 4, name, strlen(name) + 1);
    m->size = -1;
    if ((w = strstr(name, ",W=")) != NULL) {
        char *end;
        long long x = strtoll(w + 3, &end, 10);
        if (end != w + 3 && x >= 0 && x < (1LL << 40)) m->size = x; /* else a made-up name: measure it */
    }
    m->size_read = m->size < 0;
    m->klen = mdir_key_len(name);
    uidl_set(m->uidl, name, mdir_uidl_len(v, name));
    return 0;
}

/* One merge of two sorted runs (a bottom-up merge sort, so that a large
 * mailbox is sorted a piece at a time): 1 when the view is in order. */
static int
mdir_sort_step(struct pop_view *v, struct mdir_open *o)
{
    int lo = o->at, mid, hi, i, j, k = lo;
    if (!o->sorted) {
        o->sorted = xrealloc(NULL, sizeof *o->sorted * (size_t)(v->n ? v->n : 1));
        o->tmp = xrealloc(NULL, sizeof *o->tmp * (size_t)(v->n ? v->n : 1));
        for (i = 0; i < v->n; i++) o->sorted[i] = &v->msgs[i];
    }
    if (o->width >= v->n) { /* in order: the messages move to their places at once */
        struct pop_msg *m = xrealloc(NULL, sizeof *m * (size_t)(v->n ? v->n : 1));
        for (i = 0; i < v->n; i++) m[i] = *o->sorted[i];
        free(v->msgs);
        v->msgs = m;
        v->cap = v->n;
        return 1;
    }
    mid = lo + o->width < v->n ? lo + o->width : v->n;
    hi = mid + o->width < v->n ? mid + o->width : v->n;
    for (i = lo, j = mid; i < mid && j < hi;)
        o->tmp[k++] = view_cmp_name(o->sorted[j], o->sorted[i]) < 0 ? o->sorted[j++] : o->sorted[i++];
    while (i < mid) o->tmp[k++] = o->sorted[i++];
    while (j < hi) o->tmp[k++] = o->sorted[j++];
    o->at = hi;
    if (o->at >= v->n) { /* a pass is done: its runs are twice as long */
        struct pop_msg **t = o->sorted;
        o->sorted = o->tmp;
        o->tmp = t;
        o->at = 0;
        o->width *= 2;
    }
    return 0;
}

static int
mdir_same_key(const struct pop_msg *x, const struct pop_msg *y)
{
    return mdir_key_cmp(mdir_base(x), x->klen, mdir_base(y), y->klen) == 0;
}

/* Drops the messages listed twice (a client that marked one read while
 * new/ was listed moved it to cur/, where it was listed again; in key
 * order, the name in new/ comes first, and it is gone) and those whose
 * size could not be learned (gone since). */
static void
mdir_drop_gone(struct pop_view *v)
{
    int i, j = 0;
    for (i = 0; i < v->n; i++) {
        struct pop_msg *m = &v->msgs[i];
        char path[MS_PATH_MESSAGE];
        struct os_stat st;
        int moved = i + 1 < v->n && strncmp(m->name, "new/", 4) == 0 && strncmp(v->msgs[i + 1].name, "cur/", 4) == 0 &&
                    mdir_same_key(m, &v->msgs[i + 1]) && ms_fmt(path, sizeof path, "%s/%s", v->path, m->name) >= 0 &&
                    os_stat(path, &st) != 0 && errno == ENOENT;
        if (moved || m->size < 0) { free(m->name); continue; }
        v->msgs[j++] = *m;
    }
    v->n = j;
}

/* Sizes message o->next: from its name or the index, else by reading it a
 * piece at a time. 1 when every message has its size. */
static int
mdir_size_step(struct pop_view *v, struct mdir_open *o, int64_t until)
{
    struct pop_msg *m;
    const char *line;
    size_t len;
    int complete, r, k;
    int64_t off;
    if (o->next >= v->n) { mdir_drop_gone(v); return 1; }
    m = &v->msgs[o->next];
    if (m->size >= 0) { o->next++; return 0; }
    if (!o->lr.buf) {
        const char *base = mdir_base(m);
        size_t kl = m->klen;
        int lo = 0, hi = o->nent;
        char path[MS_PATH_MESSAGE];
        while (lo < hi) { /* the index, in key order */
            int mid = lo + (hi - lo) / 2, c = mdir_key_cmp(base, kl, o->text + o->ent[mid].name + 4, o->ent[mid].klen);
            if (c == 0) { m->size = o->ent[mid].size; o->next++; return 0; }
            if (c < 0) hi = mid;
            else lo = mid + 1;
        }
        if (ms_fmt(path, sizeof path, "%s/%s", v->path, m->name) < 0 || (o->fd = os_open(path, O_RDONLY, 0)) < 0) {
            o->next++; /* gone: dropped at the end */
            return 0;
        }
        lr_init(&o->lr, o->fd, 0, INT64_MAX);
        o->size = 0;
        o->bol = 1;
    }
    for (k = 0; (r = lr_next(&o->lr, &line, &len, &complete, &off)) > 0; k++) { /* its size with CRLF line ends */
        if (complete && len && line[len - 1] == '\r') len--;
        o->size += (int64_t)len + (complete ? 2 : 0);
        o->bol = complete;
        if ((k & 255) == 255 && os_now_us() >= until) return 0;
    }
    m->size = r < 0 ? -1 : o->size + (o->bol ? 0 : 2);
    lr_free(&o->lr);
    os_close(o->fd);
    o->fd = -1;
    o->next++;
    return 0;
}

/* Writes the index again after a listing, 64 KB per step, then replaces
 * it at once. 1 when done (a failure only costs the next login some
 * reading). A name holding a newline cannot be written: the folders'
 * state is then left out, so that the index is never the whole view. */
static int
mdir_write_step(struct pop_view *v, struct mdir_open *o)
{
    char path[MS_PATH_FILE], tmp[MS_PATH_FILE];
    if (ms_fmt(path, sizeof path, "%s/" MS_SIZES_FILE, v->path) < 0 ||
        ms_fmt(tmp, sizeof tmp, "%s/" MS_SIZES_FILE ".new", v->path) < 0)
        return 1;
    if (o->fd < 0) {
        struct os_stat st;
        int i;
        o->fd = os_open(tmp, O_WRONLY | O_CREAT | O_EXCL | MS_O_NOFOLLOW, 0600);
        if (o->fd < 0 && errno == EEXIST && os_stat(tmp, &st) == 0 && st.mtime < (int64_t)time(NULL) - 60) {
            os_unlink(tmp); /* left by a writer that died */
            o->fd = os_open(tmp, O_WRONLY | O_CREAT | O_EXCL | MS_O_NOFOLLOW, 0600);
        }
        if (o->fd < 0) return 1; /* another writer is at it, or a folder we cannot write */
        for (o->lines = i = 0; i < v->n; i++) o->lines += strchr(v->msgs[i].name, '\n') == NULL;
        buf_adds(&o->out, MS_SIZES_HEAD);
        if (o->lines == v->n) /* a name with a line end is left out: then the index is not the whole view */
            buf_printf(&o->out, "dirs %llu %lld %d %llu %lld %d\n", (unsigned long long)o->now[0].ino,
                       (long long)os_mtime_ns(&o->now[0]), o->now_settled[0], (unsigned long long)o->now[1].ino,
                       (long long)os_mtime_ns(&o->now[1]), o->now_settled[1]);
        o->next = 0;
    }
    for (; o->next < v->n && o->out.len < 65536; o->next++) {
        const struct pop_msg *m = &v->msgs[o->next];
        if (!strchr(m->name, '\n')) buf_printf(&o->out, "%lld %s\n", (long long)m->size, m->name);
    }
    if (os_write_all(o->fd, o->out.p, o->out.len) < 0) o->next = -1;
    o->out.len = 0;
    if (o->next >= 0 && o->next < v->n) return 0;
    if (o->next >= 0) {
        buf_printf(&o->out, "end %d\n", o->lines);
        if (os_write_all(o->fd, o->out.p, o->out.len) < 0) o->next = -1;
        o->out.len = 0;
    }
    if (os_close(o->fd) != 0 || o->next < 0 || os_replace(tmp, path) != 0) os_unlink(tmp);
    o->fd = -1;
    return 1;
}

/* Is the index the whole view? new/ and cur/ as it says, both settled
 * when it was written. Their state now is kept for
 * the index written after a listing (taken before it: a change made during
 * the listing shows at the next login). */
static int
mdir_index_current(struct pop_view *v, struct mdir_open *o)
{
    char dir[MS_PATH_FILE];
    int k, same = MS_DIR_MTIMES && !o->bad && o->said;
    for (k = 0; k < 2; k++) {
        if (ms_fmt(dir, sizeof dir, k ? "%s/cur" : "%s/new", v->path) < 0 || os_stat(dir, &o->now[k]) != 0)
            memset(&o->now[k], 0, sizeof o->now[k]);
        /* judged now, at the stat: a message added while the listing runs, in the same mtime,
         * must not be hidden behind an index that calls that mtime settled */
        o->now_settled[k] = o->now[k].ino != 0 && os_mtime_settled(&o->now[k]);
        same &= o->now[k].ino != 0 && o->now[k].ino == o->said_ino[k] && os_mtime_ns(&o->now[k]) == o->said_ns[k] &&
                o->said_settled[k];
    }
    return same;
}

/* Some messages of the view from the index (when it is the whole view): 1 when all are in. */
static int
mdir_copy_step(struct pop_view *v, struct mdir_open *o)
{
    int k;
    if (!o->next) { /* room for them all at once */
        v->msgs = xrealloc(v->msgs, sizeof *v->msgs * (size_t)(o->nent ? o->nent : 1));
        v->cap = o->nent;
    }
    for (k = 0; k < 64 && o->next < o->nent; k++) { /* (64: about 10 us) */
        const struct sizes_ent *e = &o->ent[o->next++];
        struct pop_msg *m = view_add(v);
        const char *w;
        m->name = xrealloc(NULL, e->nlen + 1);
        memcpy(m->name, o->text + e->name, e->nlen);
        m->name[e->nlen] = 0;
        m->size = e->size;
        m->klen = e->klen;
        w = strstr(mdir_base(m), ",W=");
        m->size_read = !w || w[3] < '0' || w[3] > '9';
        uidl_set(m->uidl, mdir_base(m), mdir_uidl_len(v, mdir_base(m)));
    }
    return o->next >= o->nent;
}

/* Goes on with a Maildir's view until it is made (1), or until the time
 * is up (0; at least one step is taken). -1 on failure. */
static int
mdir_view_more(struct pop_view *v, int64_t until)
{
    struct mdir_open *o = v->opening;
    int r = 0;
    if (!o) return 1;
    do {
        switch (o->phase) {
        case MO_INDEX: r = sizes_read_step(v, o); break;
        case MO_COPY: r = mdir_copy_step(v, o); break;
        case MO_LIST: r = mdir_list_step(v, o); break;
        case MO_SORT: r = mdir_sort_step(v, o); break;
        case MO_SIZES: r = mdir_size_step(v, o, until); break;
        case MO_WRITE: r = mdir_write_step(v, o); break;
        case MO_DONE: r = 1; break;
        }
        if (r < 0) return -1;
        if (r > 0 && o->phase == MO_INDEX) o->phase = mdir_index_current(v, o) ? MO_COPY : MO_LIST;
        else if (r > 0 && o->phase == MO_COPY) o->phase = MO_DONE;
        else if (r > 0 && o->phase != MO_DONE) o->phase++;
    } while (o->phase != MO_DONE && os_now_us() < until);
    if (o->phase != MO_DONE) return 0;
    mdir_open_free(o);
    v->opening = NULL;
    return 1;
}

/* Orders by UIDL, then by position, so that duplicates are numbered in
 * mailbox order. */
static int
view_cmp_uidl(const void *a, const void *b)
{
    const struct pop_msg *const *x = a, *const *y = b;
    int r = strcmp((*x)->uidl, (*y)->uidl);
    return r ? r : (*x < *y ? -1 : *x > *y);
}

static int view_cmp_str(const void *a, const void *b) { return strcmp(a, b); }

/* Are the view's UIDLs all different? A hash set of them, in one pass (a
 * login to 10,000 messages: a sort by UIDL took 2-3 ms). */
static int
view_uidls_distinct(const struct pop_view *v)
{
    size_t cap = 64, mask, i;
    const struct pop_msg **set;
    int k, distinct = 1;
    while (cap < 2 * (size_t)v->n) cap *= 2;
    mask = cap - 1;
    set = xrealloc(NULL, sizeof *set * cap);
    memset(set, 0, sizeof *set * cap);
    for (k = 0; k < v->n && distinct; k++) {
        const unsigned char *u = (const unsigned char *)v->msgs[k].uidl;
        uint32_t h = 2166136261u; /* FNV-1a */
        for (; *u; u++) h = (h ^ *u) * 16777619u;
        for (i = h & mask; set[i]; i = (i + 1) & mask)
            if (strcmp(set[i]->uidl, v->msgs[k].uidl) == 0) { distinct = 0; break; }
        set[i] = &v->msgs[k];
    }
    free(set);
    return distinct;
}

/* Makes UIDLs unique in the view (copied mbox messages may share one): a
 * later copy gets "-k", the lowest k >= 2 that no other message has. */
static void
view_unique_uidls(struct pop_view *v)
{
    struct pop_msg **p;
    char (*orig)[72];
    char (*taken)[72] = NULL;
    int i, k = 1, nt = 0, ct = 0;
    if (view_uidls_distinct(v)) return;
    p = xrealloc(NULL, sizeof *p * (size_t)(v->n ? v->n : 1));
    orig = xrealloc(NULL, sizeof *orig * (size_t)(v->n ? v->n : 1));
    for (i = 0; i < v->n; i++) p[i] = &v->msgs[i];
    qsort(p, (size_t)v->n, sizeof *p, view_cmp_uidl);
    for (i = 0; i < v->n; i++) memcpy(orig[i], p[i]->uidl, sizeof orig[i]); /* sorted */
    for (i = 0; i < v->n; i++) {
        char cand[72];
        int j;
        if (i == 0 || strcmp(orig[i], orig[i - 1]) != 0) { k = 1; continue; }
        for (;;) { /* free: neither an original nor given to an earlier copy */
            snprintf(cand, sizeof cand, "%.58s-%d", orig[i], ++k); /* at most 70 octets (RFC 1939 7) */
            if (bsearch(cand, orig, (size_t)v->n, sizeof *orig, view_cmp_str)) continue;
            for (j = 0; j < nt && strcmp(taken[j], cand) != 0; j++) {}
            if (j == nt) break;
        }
        if (nt == ct) {
            ct = ct ? 2 * ct : 16;
            taken = xrealloc(taken, sizeof *taken * (size_t)ct);
        }
        memcpy(taken[nt++], cand, sizeof cand);
        memcpy(p[i]->uidl, cand, sizeof cand);
    }
    free(taken);
    free(orig);
    free(p);
}

/* Begins a Maildir's view (mdir_view_more makes it). */
static int
mdir_view_open(struct pop_view *v, const char *spool, const char *addr)
{
    char dom[MS_PATH_DOMAIN], user[MS_LOCAL_MAX + 1];
    struct mdir_open *o;
    memset(v, 0, sizeof *v);
    v->ops = &maildir_store;
    if (store_user_dir(spool, addr, dom, sizeof dom, user, sizeof user) != 0 ||
        ms_fmt(v->path, sizeof v->path, "%s/%s", dom, user) < 0)
        return -1;
    o = v->opening = xrealloc(NULL, sizeof *o);
    memset(o, 0, sizeof *o);
    o->fd = -1;
    o->width = 1;
    return 0;
}

/* Header fields that MUAs and Dovecot add or rewrite in place (mutt's
 * Status, Dovecot's X-IMAPbase, X-UID, X-Keywords, ...): a derived UIDL
 * ignores them, so it stays when only flags change. */
static int
mbox_volatile_field(const char *line, size_t len)
{
    static const char *const names[] = {"Status:", "X-Status:", "X-Keywords:", "X-UID:", "X-IMAPbase:", "X-IMAP:",
                                        "Content-Length:", "Lines:", "X-UIDL:", NULL};
    int i;
    for (i = 0; names[i]; i++)
        if (len >= strlen(names[i]) && ms_strncaseeq(line, names[i], strlen(names[i]))) return 1;
    return 0;
}

/* mailsrv's own message ids: SECONDS.MusecPpidQcounter (msg_open) */
static int
mbox_own_id(const char *s, size_t n)
{
    static const char *const seps[] = {".M", "P", "Q", ""};
    size_t i = 0, d, k;
    for (k = 0; k < 4; k++) {
        for (d = 0; i < n && s[i] >= '0' && s[i] <= '9'; d++) i++;
        if (!d || n - i < strlen(seps[k]) || memcmp(s + i, seps[k], strlen(seps[k])) != 0) return 0;
        i += strlen(seps[k]);
    }
    return i == n;
}

/* Finishes an mbox message found by the scan: drops the separator blank
 * line; without a UIDL of mailsrv's, derives one from the header (less the
 * volatile fields) and the body's size. */
static void
mbox_msg_close(struct pop_msg *m, int64_t end, int last_blank, int hashed, struct sha256 *h, int64_t hsize)
{
    m->len = end - m->off;
    if (last_blank) { m->len -= 1; m->size -= 2; }
    if (hashed) {
        unsigned char d[32];
        int i;
        char tmp[32];
        int64_t body = hsize < 0 || m->size < hsize ? 0 : m->size - hsize;
        snprintf(tmp, sizeof tmp, "%lld", (long long)body);
        sha256_update(h, tmp, strlen(tmp));
        sha256_final(h, d);
        for (i = 0; i < 16; i++) sprintf(m->uidl + 2 * i, "%02x", d[i]);
    }
}

/* Reads the messages of a locked mbox from start (0, or a From_ line) to end
 * into v, after those it holds. The UIDL is mailsrv's X-UIDL, trusted only
 * where mailsrv writes it (the first X-UIDL, after nothing but Return-Path
 * and Received, in mailsrv's id form; senders' X-UIDL headers are dropped at
 * delivery), else derived (mbox_msg_close). UIDLs are left as found: copies
 * may share one (view_unique_uidls). Every message found depends only on the
 * bytes from its From_ line to the next one, so a scan from a From_ line
 * finds what a scan from 0 finds there (the mbox index relies on it). */
static int
mbox_scan_from(struct pop_view *v, int fd, int64_t start, int64_t end)
{
    int64_t off, hsize = -1;
    int r, complete, bol = 1, in_head = 0, last_blank = 0, hashing = 0, lead = 0, skip = 0;
    struct line_reader lr;
    const char *line;
    size_t len;
    struct pop_msg *m = NULL;
    struct sha256 h;
    lr_init(&lr, fd, start, end);
    while ((r = lr_next(&lr, &line, &len, &complete, &off)) > 0) {
        int body_starts = 0;
        if (bol && len >= 5 && memcmp(line, "From ", 5) == 0 && complete) {
            if (m) mbox_msg_close(m, off, last_blank, hashing, &h, hsize);
            m = view_add(v);
            m->from_off = off;
            m->off = off + (int64_t)len + 1;
            in_head = hashing = lead = 1;
            skip = last_blank = 0;
            hsize = -1;
            sha256_init(&h);
            bol = 1;
            continue;
        }
        if (!m) { bol = complete; continue; } /* junk before the first From_ */
        if (in_head) {
            if (bol && (len == 0 || (len == 1 && line[0] == '\r'))) {
                in_head = 0;
                body_starts = 1;
            } else if (bol && (line[0] == ' ' || line[0] == '\t')) {
                /* a folded line: part of the field before */
            } else if (bol) {
                skip = mbox_volatile_field(line, len);
                if (len > 8 && ms_strncaseeq(line, "X-UIDL: ", 8)) {
                    size_t ul = len - 8;
                    while (ul && (line[8 + ul - 1] == '\r' || line[8 + ul - 1] == ' ')) ul--;
                    if (lead && hashing && complete && ul <= 70 && mbox_own_id(line + 8, ul)) {
                        memcpy(m->uidl, line + 8, ul);
                        m->uidl[ul] = 0;
                        hashing = 0;
                    }
                    lead = 0;
                } else if (!(len >= 12 && ms_strncaseeq(line, "Return-Path:", 12)) &&
                           !(len >= 9 && ms_strncaseeq(line, "Received:", 9))) {
                    lead = 0;
                }
            }
            if (in_head && hashing && !skip) {
                sha256_update(&h, line, len);
                if (complete) sha256_update(&h, "\n", 1);
            }
        }
        last_blank = bol && complete && len == 0;
        {
            size_t l = len;
            if (bol && mbox_is_from_line(line, len, 1)) l--;
            if (complete && l && line[len - 1] == '\r') l--;
            m->size += (int64_t)l + (complete ? 2 : 0);
        }
        if (body_starts) hsize = m->size;
        bol = complete;
    }
    if (m) {
        if (!bol) m->size += 2;
        mbox_msg_close(m, end, last_blank, hashing, &h, hsize);
    }
    lr_free(&lr);
    return r < 0 ? -1 : 0;
}

/* ---- the mbox index ----
 * SPOOL/DOMAIN/.USER.mbox.index keeps what mbox_scan_from learned, so that a
 * login, a RETR after a delivery and a QUIT do not read the whole mbox again
 * (Dovecot keeps an index beside an mbox the same way). It is a cache, read
 * and written only under both mbox locks: written whole under a temporary
 * name (O_EXCL, O_NOFOLLOW) and renamed, never fsynced; when it is missing,
 * unreadable, damaged (the checksum, any number out of order), made for
 * another file or stale, the mbox is scanned whole and a new one written.
 *   "mailsrv mbox index 2\n"
 *   "INO SIZE MTIME SETTLED N PROBE\n"   the file state it describes (MTIME in ns)
 *   N x "FROM_OFF OFF LEN SIZE UIDL\n"   as mbox_scan_from found them (UIDLs
 *                                        before view_unique_uidls)
 *   "end SUM\n"                          SUM: FNV-1a 64 of all the text before
 * (INO, MTIME, PROBE and SUM in hex.) How mbox_index_scan judges the file now:
 * - same inode, size and mtime, and settled: the index is the answer. An
 *   mtime that was still too recent when the index was written (within
 *   100 ms, or the same second where mtimes count whole seconds:
 *   os_mtime_settled) is not settled, as a later change might carry the
 *   same mtime (Dovecot's rule for its mbox mtimes too).
 * - same inode and larger: appended to (mailsrv's own deliveries, another
 *   MDA's). Then only the last indexed message (it may have been cut short)
 *   and what follows are scanned, and the rest kept.
 * - anything else (smaller; same size with another mtime, such as a
 *   same-length Status: rewrite; another inode; no message): a full scan.
 * Both shortcuts first check the probe (mbox_index_probe): the bytes at
 * MS_MBOX_PROBES From_ lines spread over the file (with the LF before each)
 * and the first and last MS_MBOX_PROBE_TAIL bytes of the last message up to
 * the indexed end are still what they were. A few reads, and why they are
 * enough: a program that rewrites an mbox in place either keeps every
 * length (mutt's Status:, Dovecot's padded X-Keywords: and X-UID: rewritten
 * in place: volatile fields, which neither sizes, offsets nor UIDLs read, so
 * what the index says stays true) or changes one (a message deleted, a
 * Status: or X-UID: line inserted, Content-Length: grown): then everything
 * after the change moves, so the last message's From_ line and the indexed
 * end are no longer where the index has them and the probe fails. It could
 * only pass if the bytes that moved there were the same, that is if the
 * move were exactly the distance between two copies of the last message
 * identical in every probed byte, From_ line included, and the same held at
 * each probed From_ line; mailsrv's own messages never are such copies (each
 * has its own X-UIDL). A deletion at QUIT (mbox_expunge) writes the index of
 * what it left, computed, not read.
 */

static uint64_t
mbox_index_sum(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}
#define MBOX_SUM_START 14695981039346656037ULL

/* The index beside the journal: SPOOL/DOMAIN/.USER.mbox.index (suffix: its temporary name). */
static int
mbox_index_path(const char *jf, char *out, size_t n, const char *suffix)
{
    size_t l = strlen(jf);
    if (l < 7 || strcmp(jf + l - 7, "journal") != 0) return -1;
    return ms_fmt(out, n, "%.*sindex%s", (int)(l - 7), jf, suffix) < 0 ? -1 : 0;
}

/* Adds [a, b) of the file, and where it is, to the probe h; -1 if it cannot be read whole. */
static int
mbox_probe_add(int fd, int64_t a, int64_t b, uint64_t *h, char *buf)
{
    char where[64];
    int n = snprintf(where, sizeof where, "%lld+%lld;", (long long)a, (long long)(b - a));
    *h = mbox_index_sum(*h, where, (size_t)n);
    if (b <= a) return 0;
    if (os_pread(fd, buf, (size_t)(b - a), a) != (long)(b - a)) return -1;
    *h = mbox_index_sum(*h, buf, (size_t)(b - a));
    return 0;
}

/* What the index checks before it trusts v, the messages of [0, size), for
 * the file fd now (see "the mbox index" above): -1 if it cannot be read. */
static int
mbox_index_probe(int fd, const struct pop_view *v, int64_t size, uint64_t *out)
{
    char buf[MS_MBOX_PROBE_TAIL];
    uint64_t h = MBOX_SUM_START;
    int k, r = 0;
    int64_t last, tail;
    *out = h;
    if (v->n == 0) return 0;
    for (k = 0; r == 0 && k < MS_MBOX_PROBES; k++) {
        int64_t f = v->msgs[(int64_t)k * (v->n - 1) / (MS_MBOX_PROBES - 1)].from_off;
        r = mbox_probe_add(fd, f > 0 ? f - 1 : 0, f + 64 < size ? f + 64 : size, &h, buf);
    }
    last = v->msgs[v->n - 1].from_off;
    tail = size - last < MS_MBOX_PROBE_TAIL ? size - last : MS_MBOX_PROBE_TAIL;
    if (r == 0) r = mbox_probe_add(fd, last, last + tail, &h, buf);
    if (r == 0) r = mbox_probe_add(fd, size - tail, size, &h, buf);
    *out = h;
    return r;
}

/* Writes the index of v, the messages (UIDLs as found) of the locked mbox
 * fd in the state st. A cache: a failure only leaves the old one, which the
 * next look finds stale. */
static void
mbox_index_write(const char *jf, int fd, const struct pop_view *v, const struct os_stat *st)
{
    char path[MS_PATH_FILE], tmp[MS_PATH_FILE];
    struct buf b = {0};
    uint64_t probe;
    int i, tfd, ok;
    if (mbox_index_path(jf, path, sizeof path, "") != 0 || mbox_index_path(jf, tmp, sizeof tmp, ".tmp") != 0 ||
        mbox_index_probe(fd, v, st->size, &probe) != 0)
        return;
    buf_printf(&b, "mailsrv mbox index 2\n%llx %lld %llx %d %d %llx\n", (unsigned long long)st->ino,
               (long long)st->size, (unsigned long long)os_mtime_ns(st), os_mtime_settled(st), v->n,
               (unsigned long long)probe);
    for (i = 0; i < v->n; i++) {
        const struct pop_msg *m = &v->msgs[i];
        buf_printf(&b, "%lld %lld %lld %lld %s\n", (long long)m->from_off, (long long)m->off, (long long)m->len,
                   (long long)m->size, m->uidl);
    }
    buf_printf(&b, "end %llx\n", (unsigned long long)mbox_index_sum(MBOX_SUM_START, b.p, b.len));
    os_unlink(tmp); /* left by a crash: the name is this mailbox's, and its locks are held */
    tfd = os_open(tmp, O_WRONLY | O_CREAT | O_EXCL | MS_O_NOFOLLOW, 0600);
    ok = tfd >= 0 && os_write_all(tfd, b.p, b.len) >= 0;
    if (tfd >= 0 && os_close(tfd) != 0) ok = 0;
    if (tfd >= 0 && (!ok || os_replace(tmp, path) != 0)) os_unlink(tmp);
    buf_free(&b);
}

/* A number of an index line in base 10 or 16 and the separator after it. */
static int
mbox_index_num(const char **p, int base, char sep, uint64_t *out)
{
    const char *s = *p;
    uint64_t x = 0;
    int d;
    for (d = 0; d < (base == 16 ? 16 : 18); d++, s++) {
        int c = *s >= '0' && *s <= '9' ? *s - '0' : base == 16 && *s >= 'a' && *s <= 'f' ? *s - 'a' + 10 : -1;
        if (c < 0) break;
        x = x * (uint64_t)base + (uint64_t)c;
    }
    if (d == 0 || *s != sep) return -1;
    *out = x;
    *p = s + 1;
    return 0;
}

struct mbox_index { uint64_t ino, size, mtime, settled, probe; };

/* Reads the index into v (empty) and ix: -1 if it is missing, unreadable or
 * damaged in any way (v is then empty again). */
static int
mbox_index_read(const char *jf, struct pop_view *v, struct mbox_index *ix)
{
    static const char magic[] = "mailsrv mbox index 2\n";
    char path[MS_PATH_FILE];
    struct os_stat st;
    const char *p, *end;
    char *text;
    uint64_t n, k, sum, x[4], prev_end = 0;
    long got;
    int fd;
    if (mbox_index_path(jf, path, sizeof path, "") != 0) return -1;
    fd = os_open(path, O_RDONLY | MS_O_NOFOLLOW, 0);
    if (fd < 0) return -1;
    if (os_fstat(fd, &st) != 0 || st.size < (int64_t)sizeof magic || st.size > MS_MBOX_INDEX_MAX) {
        os_close(fd);
        return -1;
    }
    text = xrealloc(NULL, (size_t)st.size + 1);
    got = os_pread(fd, text, (size_t)st.size, 0);
    os_close(fd);
    if (got != (long)st.size) goto bad;
    text[got] = 0;
    /* the last line is "end SUM" over all before it */
    for (end = text + got - 1; end > text && end[-1] != '\n'; end--) {}
    p = end;
    if (strncmp(p, "end ", 4) != 0) goto bad;
    p += 4;
    if (mbox_index_num(&p, 16, '\n', &sum) != 0 || p != text + got ||
        sum != mbox_index_sum(MBOX_SUM_START, text, (size_t)(end - text)))
        goto bad;
    if (strncmp(text, magic, sizeof magic - 1) != 0) goto bad;
    p = text + sizeof magic - 1;
    if (mbox_index_num(&p, 16, ' ', &ix->ino) != 0 || mbox_index_num(&p, 10, ' ', &ix->size) != 0 ||
        mbox_index_num(&p, 16, ' ', &ix->mtime) != 0 || mbox_index_num(&p, 10, ' ', &ix->settled) != 0 ||
        mbox_index_num(&p, 10, ' ', &n) != 0 || mbox_index_num(&p, 16, '\n', &ix->probe) != 0 || n > INT_MAX / 2)
        goto bad;
    for (k = 0; k < n; k++) {
        struct pop_msg *m;
        const char *u = NULL;
        int j;
        for (j = 0; j < 4; j++)
            if (mbox_index_num(&p, 10, ' ', &x[j]) != 0) goto bad;
        /* in file order, each within the file, no two overlapping */
        if (x[0] < prev_end || x[1] <= x[0] || x[1] + x[2] > ix->size) goto bad;
        prev_end = x[1] + x[2];
        for (u = p; p < end && *p > 0x20 && *p < 0x7f; p++) {}
        if (p == u || p - u > 70 || *p != '\n') goto bad;
        m = view_add(v);
        m->from_off = (int64_t)x[0];
        m->off = (int64_t)x[1];
        m->len = (int64_t)x[2];
        m->size = (int64_t)x[3];
        memcpy(m->uidl, u, (size_t)(p - u));
        m->uidl[p - u] = 0;
        p++;
    }
    if (p != end) goto bad;
    free(text);
    return 0;
bad:
    free(text);
    view_clear(v);
    return -1;
}

/* The messages of the locked mbox fd, now in the state st, as
 * mbox_scan_from(v, fd, 0, st->size) finds them: from the index where it
 * holds (see "the mbox index" above), else read. mbox_index_start puts in v
 * what the index holds: 1 when that is all; 0 when the rest must be read
 * from *from (0: the whole file), a piece at a time (mbox_scan_piece). */
static int
mbox_index_start(struct pop_view *v, int fd, const struct os_stat *st, const char *jf, int64_t *from)
{
    struct mbox_index ix;
    uint64_t probe;
    if (mbox_index_read(jf, v, &ix) == 0 && ix.ino == st->ino && v->n > 0 && (uint64_t)st->size >= ix.size &&
        mbox_index_probe(fd, v, (int64_t)ix.size, &probe) == 0 && probe == ix.probe) {
        if ((uint64_t)st->size == ix.size && ix.settled && ix.mtime == (uint64_t)os_mtime_ns(st)) return 1;
        if ((uint64_t)st->size > ix.size) { /* appended to: the last message again, and what follows */
            *from = v->msgs[--v->n].from_off;
            return 0;
        }
    }
    view_clear(v);
    *from = 0;
    return 0;
}

/* One piece of a scan of a locked mbox, from *from (0 or a From_ line) to
 * end: MS_MBOX_SCAN bytes, or more when one message is larger. The last
 * message a piece finds may be cut by its end: it is dropped, and the next
 * piece starts at its From_ line (mbox_scan_from finds there what a scan
 * from 0 finds). 1 when v holds every message up to end, 0 when more
 * remains, -1 on failure. */
static int
mbox_scan_piece(struct pop_view *v, int fd, int64_t *from, int64_t end)
{
    int64_t piece = MS_MBOX_SCAN;
    int n0 = v->n;
    for (;;) {
        if (end - *from <= piece) return mbox_scan_from(v, fd, *from, end) == 0 ? 1 : -1;
        if (mbox_scan_from(v, fd, *from, *from + piece) != 0) return -1;
        if (v->n > n0 + 1) break; /* a whole message at least, before the one cut */
        v->n = n0;                /* (an mbox message holds no name to free) */
        piece *= 2;
    }
    *from = v->msgs[--v->n].from_off;
    return 0;
}

/* All at once (a RETR after another program's change, the tests); the
 * index is written again when it changed. -1 on a read error (v empty). */
static int
mbox_index_scan(struct pop_view *v, int fd, const struct os_stat *st, const char *jf)
{
    int64_t from;
    int r;
    if (mbox_index_start(v, fd, st, jf, &from)) return 0;
    while ((r = mbox_scan_piece(v, fd, &from, st->size)) == 0) {}
    if (r < 0) { view_clear(v); return -1; }
    mbox_index_write(jf, fd, v, st);
    return 0;
}

/* An mbox whose locks a session holds across loop turns (in mbox_held)
 * for work made in slices: a login's reading of it (into the view itself),
 * or a QUIT's deletions (the file read again into `now`, then the runs of
 * deleted messages removed). Nobody sees the file half-way. */
struct mbox_work {
    int fd;
    struct os_stat st;          /* the file when the locks were taken */
    int quit;                   /* for a QUIT (else a login) */
    int64_t from;               /* the reading's next piece (-1: read) */
    struct pop_view now;        /* QUIT: the messages as they are now */
    char (*raw)[72];            /* ... their UIDLs as read, before view_unique_uidls (the index keeps those) */
    int marked;                 /* ... the deleted ones are found in it */
    int next;                   /* ... the last message not yet looked at, from the end */
    int64_t end;                /* ... the file's end so far */
    struct mbox_move mv;        /* ... the run being removed */
    int moving;
};

static struct pop_view *mbox_work_view(struct pop_view *v) { return v->mbox_work->quit ? &v->mbox_work->now : v; }

static void
mbox_work_end(struct pop_view *v)
{
    struct mbox_work *w = v->mbox_work;
    if (!w) return;
    mbox_unlock(v->path, w->fd);
    mbox_hold(v->path, 0);
    mbox_move_free(&w->mv);
    view_free(&w->now);
    free(w->raw);
    free(w);
    v->mbox_work = NULL;
}

/* Takes the locks and puts in the view what the index holds (mbox_index_start).
 * 1: there is no mbox (nothing to do); -1 on failure (mbox_work_end cleans up). */
static int
mbox_work_begin(struct pop_view *v, int quit)
{
    struct mbox_work *w;
    int created, fd = mbox_lock(v->path, v->jf, 0, &created);
    if (fd == -2) return 1;
    if (fd < 0) return -1;
    w = v->mbox_work = xrealloc(NULL, sizeof *w);
    memset(w, 0, sizeof *w);
    w->fd = fd;
    w->quit = quit;
    mbox_hold(v->path, 1);
    if (os_fstat(fd, &w->st) != 0) return -1;
    if (mbox_index_start(mbox_work_view(v), fd, &w->st, v->jf, &w->from)) w->from = -1;
    return 0;
}

/* Reads the mbox a piece per step until the time is up: 1 when it is read
 * (the index written again, for a login: a QUIT writes it at the end), 0
 * when more remains, -1 on failure. */
static int
mbox_work_scan(struct pop_view *v, int64_t until)
{
    struct mbox_work *w = v->mbox_work;
    struct pop_view *into = mbox_work_view(v);
    int r = 1;
    while (w->from >= 0) {
        if ((r = mbox_scan_piece(into, w->fd, &w->from, w->st.size)) != 0) break;
        if (os_now_us() >= until) return 0;
    }
    if (r < 0) return -1;
    if (w->from >= 0) {
        w->from = -1;
        if (!w->quit) mbox_index_write(v->jf, w->fd, into, &w->st);
    }
    return 1;
}

/* The POP3 snapshot at login: begun here (the locks taken, -1 with errno
 * EAGAIN if another program holds one), read by mbox_view_more. */
static int
mbox_view_open(struct pop_view *v, const char *spool, const char *addr)
{
    struct mbox_paths mp;
    int r;
    memset(v, 0, sizeof *v);
    v->ops = &mbox_store;
    if (mbox_paths(spool, addr, &mp) != 0) return -1;
    memcpy(v->path, mp.mbox, sizeof mp.mbox);
    memcpy(v->jf, mp.journal, sizeof mp.journal);
    if ((r = mbox_work_begin(v, 0)) < 0) {
        int e = errno;
        mbox_work_end(v);
        errno = e;
        return -1;
    }
    return 0; /* (r > 0: never delivered to, empty) */
}

/* Goes on reading the mbox for the view, a piece per step (mbox_scan_piece). */
static int
mbox_view_more(struct pop_view *v, int64_t until)
{
    int r;
    if (!v->mbox_work) return 1;
    if ((r = mbox_work_scan(v, until)) == 0) return 0;
    if (r > 0) {
        view_unique_uidls(v);
        v->seen = v->mbox_work->st;
    }
    mbox_work_end(v);
    return r;
}

static int
view_cmp_uidl_key(const void *key, const void *b)
{
    const struct pop_msg *const *y = b;
    return strcmp(key, (*y)->uidl);
}

/* Before a RETR or TOP: if another program changed the mbox since it was
 * read (a MUA rewrote Status: lines, Dovecot its X-UID, ...), the messages
 * may have moved: read it again and find them by UIDL. A message no longer
 * found gets len -1 (it cannot be served). -1 with errno EAGAIN if locked. */
static int
mbox_view_refresh(struct pop_view *v)
{
    struct pop_view now;
    struct pop_msg **p;
    struct os_stat st;
    int i, created, fd;
    if (os_stat(v->path, &st) == 0 && st.ino == v->seen.ino && st.size == v->seen.size && st.mtime == v->seen.mtime)
        return 0;
    fd = mbox_lock(v->path, v->jf, 0, &created);
    if (fd < 0) return -1;
    memset(&now, 0, sizeof now);
    if (os_fstat(fd, &st) != 0 || mbox_index_scan(&now, fd, &st, v->jf) != 0) { mbox_unlock(v->path, fd); return -1; }
    mbox_unlock(v->path, fd);
    view_unique_uidls(&now);
    p = xrealloc(NULL, sizeof *p * (size_t)(now.n ? now.n : 1));
    for (i = 0; i < now.n; i++) p[i] = &now.msgs[i];
    qsort(p, (size_t)now.n, sizeof *p, view_cmp_uidl);
    for (i = 0; i < v->n; i++) {
        struct pop_msg **f = bsearch(v->msgs[i].uidl, p, (size_t)now.n, sizeof *p, view_cmp_uidl_key);
        if (f) {
            v->msgs[i].from_off = (*f)->from_off;
            v->msgs[i].off = (*f)->off;
            v->msgs[i].len = (*f)->len;
            v->msgs[i].size = (*f)->size;
        } else {
            v->msgs[i].len = -1;
        }
    }
    v->seen = st;
    free(p);
    view_free(&now);
    return 0;
}

/* Goes on making a view (a Maildir's is made in slices): 1 when it is
 * made, 0 when the time is up first, -1 on failure. */
static int
view_more(struct pop_view *v, int64_t until)
{
    return v->ops->view_more ? v->ops->view_more(v, until) : 1;
}

/* A whole view at once (the command line, the tests). */
static int
view_open_whole(const struct store_ops *ops, struct pop_view *v, const char *spool, const char *addr)
{
    if (ops->view_open(v, spool, addr) != 0) return -1;
    if (view_more(v, INT64_MAX) < 0) { view_free(v); return -1; }
    return 0;
}

/* Applies the deletions of a POP3 session (the UPDATE state, RFC 1939 6),
 * until the time is up: 1 when done, 0 when there is more to do, -1 when
 * some messages could not be deleted. */
static int
view_expunge(struct pop_view *v, int64_t until)
{
    int i, ndel = 0;
    for (i = 0; i < v->n; i++) ndel += v->msgs[i].deleted;
    return ndel ? v->ops->expunge(v, until) : 1;
}

static int
mdir_expunge(struct pop_view *v, int64_t until)
{
    char path[MS_PATH_MESSAGE];
    do { /* one message per step, then the fsync of new/, then that of cur/ */
        int k = v->expunged++;
        if (k < v->n) {
            struct pop_msg *m = &v->msgs[k];
            if (!m->deleted) continue;
            if (ms_fmt(path, sizeof path, "%s/%s", v->path, m->name) < 0) { v->expunge_failed = 1; continue; }
            if (os_unlink(path) == 0) continue;
            if (errno == ENOENT && mdir_relocate(v, m) == 0 && ms_fmt(path, sizeof path, "%s/%s", v->path, m->name) >= 0 &&
                os_unlink(path) == 0) /* moved since the view was made (a read mark) */
                continue;
            if (errno != ENOENT) v->expunge_failed = 1;
            continue;
        }
        if (ms_fmt(path, sizeof path, k == v->n ? "%s/new" : "%s/cur", v->path) >= 0) os_fsync_dir(path);
        if (k > v->n) return v->expunge_failed ? -1 : 1;
    } while (os_now_us() < until);
    return 0;
}

/* QUIT: the messages to delete, found again by UIDL in the file as it is
 * now (another program may have appended, rewritten Status: lines,
 * deleted); one no longer found stays. */
static void
mbox_update_mark(struct pop_view *v)
{
    struct mbox_work *w = v->mbox_work;
    struct pop_msg **p;
    int i;
    w->raw = xrealloc(NULL, sizeof *w->raw * (size_t)(w->now.n > 0 ? w->now.n : 1));
    for (i = 0; i < w->now.n; i++) memcpy(w->raw[i], w->now.msgs[i].uidl, sizeof w->raw[i]);
    view_unique_uidls(&w->now);
    p = xrealloc(NULL, sizeof *p * (size_t)(w->now.n ? w->now.n : 1));
    for (i = 0; i < w->now.n; i++) p[i] = &w->now.msgs[i];
    qsort(p, (size_t)w->now.n, sizeof *p, view_cmp_uidl);
    for (i = 0; i < v->n; i++) {
        struct pop_msg **f;
        if (!v->msgs[i].deleted) continue;
        f = bsearch(v->msgs[i].uidl, p, (size_t)w->now.n, sizeof *p, view_cmp_uidl_key);
        if (f) (*f)->deleted = 1;
    }
    free(p);
    w->end = w->st.size;
    w->next = w->now.n - 1;
    w->marked = 1;
}

/* The messages kept are where they were less what went before them: that
 * is the new index (what a scan would find, as each message depends only
 * on its own bytes), written without reading again. */
static void
mbox_update_index(struct pop_view *v)
{
    struct mbox_work *w = v->mbox_work;
    struct pop_view kept;
    struct os_stat st;
    int64_t gone = 0;
    int i;
    memset(&kept, 0, sizeof kept);
    for (i = 0; i < w->now.n; i++) {
        struct pop_msg *m = &w->now.msgs[i];
        if (m->deleted) {
            gone += (i + 1 < w->now.n ? w->now.msgs[i + 1].from_off : w->st.size) - m->from_off;
            continue;
        }
        *view_add(&kept) = *m;
        kept.msgs[kept.n - 1].from_off -= gone;
        kept.msgs[kept.n - 1].off -= gone;
        memcpy(kept.msgs[kept.n - 1].uidl, w->raw[i], sizeof w->raw[i]);
    }
    if (gone && os_fstat(w->fd, &st) == 0 && st.size == w->end) mbox_index_write(v->jf, w->fd, &kept, &st);
    view_free(&kept);
}

/* RFC 1939 6, in slices: the file is read again (mbox_work_scan), then
 * each run of deleted messages is removed in place, the last first, in
 * pieces (mbox_move_step: a journal record, the piece saved in the journal,
 * the piece moved, each a step with its fsync); no space needed. The locks
 * are held from the first step to the last; deliveries to the mbox
 * meanwhile get 451 (mbox_held), as when another program holds it. */
static int
mbox_expunge(struct pop_view *v, int64_t until)
{
    struct mbox_work *w;
    int r;
    if (!v->mbox_work && (r = mbox_work_begin(v, 1)) != 0) {
        mbox_work_end(v);
        return r > 0 ? 1 : -1;
    }
    w = v->mbox_work;
    if (!w->marked) {
        if ((r = mbox_work_scan(v, until)) == 0) return 0;
        if (r < 0) { mbox_work_end(v); return -1; }
        mbox_update_mark(v);
    }
    do {
        int i, j;
        if (w->moving) {
            if ((r = mbox_move_step(w->fd, v->jf, w->st.ino, &w->mv)) < 0) { mbox_work_end(v); return -1; }
            if (r > 0) {
                w->end -= w->mv.b - w->mv.a;
                w->moving = 0;
            }
            continue;
        }
        for (i = w->next; i >= 0 && !w->now.msgs[i].deleted; i--) {}
        if (i < 0) {
            mbox_update_index(v);
            mbox_work_end(v);
            return 1;
        }
        for (j = i; j > 0 && w->now.msgs[j - 1].deleted; j--) {}
        mbox_move_start(&w->mv, w->now.msgs[j].from_off, i + 1 < w->now.n ? w->now.msgs[i + 1].from_off : w->end,
                        w->end, 0);
        w->moving = 1;
        w->next = j - 1;
    } while (os_now_us() < until);
    return 0;
}

static int
mdir_msg_text(struct pop_view *v, struct pop_msg *m, char *path, size_t n, int64_t *start, int64_t *end)
{
    *start = 0;
    *end = -1;
    if (ms_fmt(path, n, "%s/%s", v->path, m->name) < 0) return MSG_UNREADABLE;
    if (os_lstat_kind(path) == OS_MISSING && mdir_relocate(v, m) == 0 && ms_fmt(path, n, "%s/%s", v->path, m->name) < 0)
        return MSG_UNREADABLE;
    return 0;
}

/* A message another program moved since the view was made (a MUA, or the HTTP API's read mark:
 * from new/ to cur/, or other flags): found again by its key in cur/ or new/, and its name in
 * the view updated. 0, or -1 if it is gone. A directory scan: only for a message that moved. */
struct mdir_seek { char key[MS_PATH_MESSAGE]; size_t klen; char found[MS_PATH_MESSAGE]; };

static int
mdir_seek_one(void *ctx, const char *name)
{
    struct mdir_seek *s = ctx;
    if (!s->found[0] && mdir_key_len(name) == s->klen && memcmp(name, s->key, s->klen) == 0)
        ms_strlcpy(s->found, name, sizeof s->found);
    return 0;
}

static int
mdir_relocate(struct pop_view *v, struct pop_msg *m)
{
    static const char *const subs[] = {"cur", "new"};
    struct mdir_seek *s = xrealloc(NULL, sizeof *s);
    char dir[MS_PATH_FILE], name[MS_PATH_MESSAGE];
    int i, r = -1;
    ms_strlcpy(s->key, mdir_base(m), sizeof s->key);
    s->klen = mdir_key_len(s->key);
    for (i = 0; i < 2 && r != 0; i++) {
        s->found[0] = 0;
        if (ms_fmt(dir, sizeof dir, "%s/%s", v->path, subs[i]) < 0) continue;
        os_list_dir(dir, mdir_seek_one, s);
        if (s->found[0] && ms_fmt(name, sizeof name, "%s/%s", subs[i], s->found) >= 0) {
            free(m->name);
            m->name = xstrdup(name);
            r = 0;
        }
    }
    free(s);
    return r;
}

static int
mbox_msg_text(struct pop_view *v, struct pop_msg *m, char *path, size_t n, int64_t *start, int64_t *end)
{
    if (mbox_view_refresh(v) != 0) return errno == EAGAIN ? MSG_LOCKED : MSG_UNREADABLE;
    if (m->len < 0) return MSG_CHANGED;
    if (ms_fmt(path, n, "%s", v->path) < 0) return MSG_UNREADABLE;
    *start = m->off;
    *end = m->off + m->len;
    return 0;
}

static const struct store_ops maildir_store = {
    "maildir", 1, mdir_deliver, file_undo, mdir_view_open, mdir_view_more, mdir_expunge, mdir_msg_text, 0,
};
static const struct store_ops mbox_store = {
    "mbox", 0, mbox_deliver, mbox_undo, mbox_view_open, mbox_view_more, mbox_expunge, mbox_msg_text, 1,
};

/*==== 8. TLS glue (BearSSL) ====*/
/*
 * The TLS #if of the file (besides the include and gencert's two platform
 * helpers): with MAILSRV_ENABLE_TLS=0, the #else block after the BearSSL code
 * defines the same functions as stubs (as Mongoose's tls_dummy.c does), so
 * the rest of the file calls them in both builds. That build never makes a
 * TLS session, so the stubs that take one are never reached; the others
 * say "no": no certificate, no session, no gencert.
 *
 * With BearSSL: the certificate chain and key are
 * loaded with the configuration and shared, reference-counted, by the
 * sessions that use them, so a reload never frees a key in use. A TLS
 * session is a BearSSL engine between the socket and the session's
 * plain-text buffers: tls_recv() and tls_send() behave like recv() and
 * send() (returning -2 for "would block"), tls_events() says what the
 * engine waits for. Plain-text sessions carry no TLS state at all.
 */
#if MAILSRV_ENABLE_TLS

#define TLS_BUILT_IN "BearSSL, TLS 1.2" /* for `mailsrv -V` */

struct tls_creds {
    int refs;
    br_x509_certificate *chain;
    int nchain;
    br_skey_decoder_context skey;    /* the private key; BearSSL points into it */
    br_x509_trust_anchor *anchors;   /* [relay] ca_file */
    int nanchors;
};

struct tls_noverify {                /* [relay] tls = yes: take the key, check nothing */
    const br_x509_class *vtable;
    br_x509_decoder_context dc;
    int depth, ok;
};

struct tls_sess {
    union { br_ssl_server_context s; br_ssl_client_context c; } u;
    br_ssl_engine_context *eng;
    union { br_x509_minimal_context minimal; struct tls_noverify nv; } x509;
    struct tls_creds *creds;
    int reported;                    /* the handshake's outcome was logged */
    int dead;                        /* the socket failed: nothing more goes in or out */
    unsigned char ibuf[BR_SSL_BUFSIZE_INPUT], obuf[MS_TLS_OBUF];
};

static void
tls_creds_release(struct tls_creds *t)
{
    int i;
    if (!t || --t->refs > 0) return;
    for (i = 0; i < t->nchain; i++) free(t->chain[i].data);
    for (i = 0; i < t->nanchors; i++) {
        free(t->anchors[i].dn.data);
        free(t->anchors[i].pkey.key_type == BR_KEYTYPE_RSA ? t->anchors[i].pkey.key.rsa.n : t->anchors[i].pkey.key.ec.q);
        if (t->anchors[i].pkey.key_type == BR_KEYTYPE_RSA) free(t->anchors[i].pkey.key.rsa.e);
    }
    free(t->chain);
    free(t->anchors);
    free(t);
}

static void tls_buf_append(void *ctx, const void *p, size_t n) { buf_add(ctx, p, n); }

/* Reads a PEM file; calls fn for each object (its banner and DER bytes). */
static int
tls_read_pem(const char *path, int (*fn)(void *ctx, const char *name, struct buf *der, char *err, size_t n),
             void *ctx, char *err, size_t n)
{
    size_t len, off = 0;
    char *text = cfg_read_file(path, &len), name[128];
    br_pem_decoder_context pc;
    struct buf obj = {0};
    int in_obj = 0, rc = 0, objects = 0;
    if (!text) { snprintf(err, n, "%s: %s", path, strerror(errno)); return -1; }
    br_pem_decoder_init(&pc);
    while (rc == 0 && off <= len) {
        /* a final newline: the decoder needs one after the END line */
        off += off < len ? br_pem_decoder_push(&pc, text + off, len - off) : br_pem_decoder_push(&pc, "\n", 1) + 1;
        switch (br_pem_decoder_event(&pc)) {
        case BR_PEM_BEGIN_OBJ:
            ms_strlcpy(name, br_pem_decoder_name(&pc), sizeof name);
            obj.len = 0;
            br_pem_decoder_setdest(&pc, tls_buf_append, &obj);
            in_obj = 1;
            break;
        case BR_PEM_END_OBJ:
            if (in_obj && obj.len && (rc = fn(ctx, name, &obj, err, n)) != 0) { /* name the file */
                char why[400];
                ms_strlcpy(why, err, sizeof why);
                snprintf(err, n, "%s: %s", path, why);
            }
            objects += in_obj;
            in_obj = 0;
            break;
        case BR_PEM_ERROR:
            snprintf(err, n, "%s: not a valid PEM file", path);
            rc = -1;
            break;
        }
    }
    if (rc == 0 && (in_obj || !objects)) { snprintf(err, n, "%s: %s", path, in_obj ? "a PEM object is cut off" : "no PEM object found"); rc = -1; }
    free(text);
    buf_free(&obj);
    return rc;
}

static int
tls_add_cert(void *ctx, const char *name, struct buf *der, char *err, size_t n)
{
    struct tls_creds *t = ctx;
    (void)err; (void)n;
    if (strcmp(name, "CERTIFICATE") != 0 && strcmp(name, "X509 CERTIFICATE") != 0) return 0;
    t->chain = xrealloc(t->chain, sizeof *t->chain * (size_t)(t->nchain + 1));
    t->chain[t->nchain].data = xrealloc(NULL, der->len);
    memcpy(t->chain[t->nchain].data, der->p, der->len);
    t->chain[t->nchain++].data_len = der->len;
    return 0;
}

static int
tls_add_key(void *ctx, const char *name, struct buf *der, char *err, size_t n)
{
    struct tls_creds *t = ctx;
    if (strcmp(name, "RSA PRIVATE KEY") != 0 && strcmp(name, "EC PRIVATE KEY") != 0 && strcmp(name, "PRIVATE KEY") != 0)
        return 0; /* e.g. "EC PARAMETERS" before the key */
    br_skey_decoder_init(&t->skey);
    br_skey_decoder_push(&t->skey, der->p, der->len);
    if (br_skey_decoder_last_error(&t->skey) != 0) {
        snprintf(err, n, "the %s is not an RSA or EC key BearSSL can read (error %d)", name, br_skey_decoder_last_error(&t->skey));
        return -1;
    }
    return 0;
}

/* The key must belong to the leaf certificate: compare the public parts. */
static int
tls_key_matches(struct tls_creds *t, char *err, size_t n)
{
    br_x509_decoder_context dc;
    const br_x509_pkey *pk;
    unsigned char tmp[BR_EC_KBUF_PUB_MAX_SIZE > 512 ? BR_EC_KBUF_PUB_MAX_SIZE : 512];
    size_t len;
    br_x509_decoder_init(&dc, NULL, NULL);
    br_x509_decoder_push(&dc, t->chain[0].data, t->chain[0].data_len);
    if (!(pk = br_x509_decoder_get_pkey(&dc))) {
        snprintf(err, n, "the first certificate cannot be decoded (error %d)", br_x509_decoder_last_error(&dc));
        return -1;
    }
    if (pk->key_type != br_skey_decoder_key_type(&t->skey)) goto mismatch;
    if (pk->key_type == BR_KEYTYPE_RSA) {
        const br_rsa_private_key *sk = br_skey_decoder_get_rsa(&t->skey);
        const unsigned char *m = pk->key.rsa.n;
        size_t mlen = pk->key.rsa.nlen;
        if ((len = br_rsa_compute_modulus_get_default()(NULL, sk)) == 0 || len > sizeof tmp) goto mismatch;
        br_rsa_compute_modulus_get_default()(tmp, sk);
        while (mlen && !*m) { m++; mlen--; }
        if (len != mlen || memcmp(tmp, m, len) != 0) goto mismatch;
    } else {
        const br_ec_private_key *sk = br_skey_decoder_get_ec(&t->skey);
        len = br_ec_compute_pub(br_ec_get_default(), NULL, tmp, sk);
        if (!len || sk->curve != pk->key.ec.curve || len != pk->key.ec.qlen || memcmp(tmp, pk->key.ec.q, len) != 0)
            goto mismatch;
    }
    return 0;
mismatch:
    snprintf(err, n, "the key does not belong to the first certificate");
    return -1;
}

/* Loads tls_cert (chain, leaf first) and tls_key. */
static struct tls_creds *
tls_creds_load(const char *cert, const char *key, char *err, size_t n)
{
    struct tls_creds *t = xrealloc(NULL, sizeof *t);
    char why[300];
    memset(t, 0, sizeof *t);
    t->refs = 1;
    if (tls_read_pem(cert, tls_add_cert, t, err, n) != 0) goto fail;
    if (!t->nchain) { snprintf(err, n, "%s: no CERTIFICATE in it", cert); goto fail; }
    br_skey_decoder_init(&t->skey);
    if (tls_read_pem(key, tls_add_key, t, err, n) != 0) goto fail;
    if (br_skey_decoder_key_type(&t->skey) == 0) { snprintf(err, n, "%s: no private key in it", key); goto fail; }
    if (tls_key_matches(t, why, sizeof why) != 0) { snprintf(err, n, "%s and %s: %s", cert, key, why); goto fail; }
    return t;
fail:
    tls_creds_release(t);
    return NULL;
}

struct tls_dn { struct buf b; };
static void tls_dn_append(void *ctx, const void *p, size_t n) { buf_add(&((struct tls_dn *)ctx)->b, p, n); }

static int
tls_add_anchor(void *ctx, const char *name, struct buf *der, char *err, size_t n)
{
    struct tls_creds *t = ctx;
    struct tls_dn dn = {{0}};
    br_x509_decoder_context dc;
    const br_x509_pkey *pk;
    br_x509_trust_anchor *ta;
    if (strcmp(name, "CERTIFICATE") != 0 && strcmp(name, "X509 CERTIFICATE") != 0) return 0;
    br_x509_decoder_init(&dc, tls_dn_append, &dn);
    br_x509_decoder_push(&dc, der->p, der->len);
    if (!(pk = br_x509_decoder_get_pkey(&dc))) {
        snprintf(err, n, "a certificate cannot be decoded (error %d)", br_x509_decoder_last_error(&dc));
        buf_free(&dn.b);
        return -1;
    }
    t->anchors = xrealloc(t->anchors, sizeof *t->anchors * (size_t)(t->nanchors + 1));
    ta = &t->anchors[t->nanchors++];
    memset(ta, 0, sizeof *ta);
    ta->dn.data = (unsigned char *)dn.b.p;
    ta->dn.len = dn.b.len;
    /* a CA signs the chain; any other certificate is trusted directly (BearSSL's "direct trust") */
    ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
    ta->pkey = *pk;
    if (pk->key_type == BR_KEYTYPE_RSA) {
        ta->pkey.key.rsa.n = xrealloc(NULL, pk->key.rsa.nlen);
        memcpy(ta->pkey.key.rsa.n, pk->key.rsa.n, pk->key.rsa.nlen);
        ta->pkey.key.rsa.e = xrealloc(NULL, pk->key.rsa.elen);
        memcpy(ta->pkey.key.rsa.e, pk->key.rsa.e, pk->key.rsa.elen);
    } else {
        ta->pkey.key.ec.q = xrealloc(NULL, pk->key.ec.qlen);
        memcpy(ta->pkey.key.ec.q, pk->key.ec.q, pk->key.ec.qlen);
    }
    return 0;
}

/* [relay] ca_file: the trust anchors for tls = verify. */
static struct tls_creds *
tls_anchors_load(const char *path, char *err, size_t n)
{
    struct tls_creds *t = xrealloc(NULL, sizeof *t);
    memset(t, 0, sizeof *t);
    t->refs = 1;
    if (tls_read_pem(path, tls_add_anchor, t, err, n) != 0) { tls_creds_release(t); return NULL; }
    if (!t->nanchors) { snprintf(err, n, "%s: no CERTIFICATE in it", path); tls_creds_release(t); return NULL; }
    return t;
}

/* TLS 1.2 (BearSSL 0.6 has no 1.3; RFC 8996 rules out 1.0 and 1.1), ECDHE
 * with AEAD ciphers only. */
static const uint16_t tls_suites[] = {
    BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
};

static const char *
tls_suite_name(unsigned s)
{
    switch (s) {
    case BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: return "ECDHE-ECDSA-CHACHA20-POLY1305";
    case BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256: return "ECDHE-RSA-CHACHA20-POLY1305";
    case BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: return "ECDHE-ECDSA-AES128-GCM-SHA256";
    case BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: return "ECDHE-RSA-AES128-GCM-SHA256";
    case BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: return "ECDHE-ECDSA-AES256-GCM-SHA384";
    case BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384: return "ECDHE-RSA-AES256-GCM-SHA384";
    default: return "?";
    }
}

static void
tls_engine_setup(struct tls_sess *t)
{
    br_ssl_engine_set_versions(t->eng, BR_TLS12, BR_TLS12);
    br_ssl_engine_set_suites(t->eng, tls_suites, sizeof tls_suites / sizeof tls_suites[0]);
    br_ssl_engine_set_buffers_bidi(t->eng, t->ibuf, sizeof t->ibuf, t->obuf, sizeof t->obuf);
    /* No renegotiation either way (a full handshake's CPU each, for nothing mail needs): a server
     * answers a ClientHello, a client a HelloRequest, with a no_renegotiation alert (RFC 5246 7.2.2). */
    br_ssl_engine_add_flags(t->eng, BR_OPT_NO_RENEGOTIATION);
}

/* A server session; *cache: the session resumption cache, one LRU for the
 * whole server, made on first use (the caller frees it). */
static struct tls_sess *
tls_server_new(struct tls_creds *creds, void **cache)
{
    struct tls_sess *t = xrealloc(NULL, sizeof *t);
    if (!*cache) {
        struct { br_ssl_session_cache_lru lru; unsigned char store[MS_TLS_CACHE]; } *lru = xrealloc(NULL, sizeof *lru);
        br_ssl_session_cache_lru_init(&lru->lru, lru->store, sizeof lru->store);
        *cache = lru;
    }
    memset(t, 0, offsetof(struct tls_sess, ibuf));
    t->creds = creds;
    creds->refs++;
    if (br_skey_decoder_key_type(&creds->skey) == BR_KEYTYPE_RSA)
        br_ssl_server_init_full_rsa(&t->u.s, creds->chain, (size_t)creds->nchain, br_skey_decoder_get_rsa(&creds->skey));
    else
        br_ssl_server_init_full_ec(&t->u.s, creds->chain, (size_t)creds->nchain, BR_KEYTYPE_EC,
                                   br_skey_decoder_get_ec(&creds->skey));
    t->eng = &t->u.s.eng;
    tls_engine_setup(t);
    br_ssl_server_set_cache(&t->u.s, &((br_ssl_session_cache_lru *)*cache)->vtable);
    br_ssl_server_reset(&t->u.s);
    return t;
}

/* ---- tls = yes: any certificate; only its public key is taken ---- */
static void
nv_start_chain(const br_x509_class **ctx, const char *server_name)
{
    struct tls_noverify *v = (struct tls_noverify *)(void *)ctx;
    (void)server_name;
    v->depth = 0;
    v->ok = 0;
}
static void
nv_start_cert(const br_x509_class **ctx, uint32_t length)
{
    struct tls_noverify *v = (struct tls_noverify *)(void *)ctx;
    (void)length;
    if (v->depth == 0) br_x509_decoder_init(&v->dc, NULL, NULL);
}
static void
nv_append(const br_x509_class **ctx, const unsigned char *buf, size_t len)
{
    struct tls_noverify *v = (struct tls_noverify *)(void *)ctx;
    if (v->depth == 0) br_x509_decoder_push(&v->dc, buf, len);
}
static void
nv_end_cert(const br_x509_class **ctx)
{
    struct tls_noverify *v = (struct tls_noverify *)(void *)ctx;
    if (v->depth++ == 0) v->ok = br_x509_decoder_get_pkey(&v->dc) != NULL;
}
static unsigned
nv_end_chain(const br_x509_class **ctx)
{
    struct tls_noverify *v = (struct tls_noverify *)(void *)ctx;
    return v->ok ? 0 : BR_ERR_X509_EMPTY_CHAIN; /* no usable key */
}
static const br_x509_pkey *
nv_get_pkey(const br_x509_class *const *ctx, unsigned *usages)
{
    struct tls_noverify *v = (struct tls_noverify *)(void *)ctx;
    if (usages) *usages = BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN;
    return br_x509_decoder_get_pkey(&v->dc);
}
static const br_x509_class nv_vtable = {
    sizeof(struct tls_noverify), nv_start_chain, nv_start_cert, nv_append, nv_end_cert, nv_end_chain, nv_get_pkey,
};

/* A client session: verified against anchors when given (with the host
 * name when it is one), else opportunistic. */
static struct tls_sess *
tls_client_new(struct tls_creds *anchors, const char *server_name)
{
    struct tls_sess *t = xrealloc(NULL, sizeof *t);
    memset(t, 0, offsetof(struct tls_sess, ibuf));
    if (anchors) {
        t->creds = anchors;
        anchors->refs++;
        br_ssl_client_init_full(&t->u.c, &t->x509.minimal, anchors->anchors, (size_t)anchors->nanchors);
    } else {
        br_ssl_client_init_full(&t->u.c, &t->x509.minimal, NULL, 0);
        t->x509.nv.vtable = &nv_vtable;
        br_ssl_engine_set_x509(&t->u.c.eng, &t->x509.nv.vtable);
    }
    t->eng = &t->u.c.eng;
    tls_engine_setup(t);
    br_ssl_client_reset(&t->u.c, server_name, 0);
    return t;
}

static void
tls_free(struct tls_sess *t)
{
    if (!t) return;
    tls_creds_release(t->creds);
    free(t);
}

/* Moves records between the socket and the engine until nothing moves.
 * -1: the connection is over (closed, failed, or the peer hung up). */
static int
tls_pump(struct tls_sess *t, ms_sock_t fd)
{
    if (t->dead) return -1;
    for (;;) {
        unsigned st = br_ssl_engine_current_state(t->eng);
        unsigned char *b;
        size_t len;
        long n;
        int moved = 0;
        if (st & BR_SSL_CLOSED) return -1;
        if (st & BR_SSL_SENDREC) {
            b = br_ssl_engine_sendrec_buf(t->eng, &len);
            n = net_send(fd, b, len);
            if (n > 0) { br_ssl_engine_sendrec_ack(t->eng, (size_t)n); moved = 1; }
            else if (!net_would_block(net_error())) { t->dead = 1; return -1; }
        }
        if (st & BR_SSL_RECVREC) {
            b = br_ssl_engine_recvrec_buf(t->eng, &len);
            n = net_recv(fd, b, len);
            if (n > 0) { br_ssl_engine_recvrec_ack(t->eng, (size_t)n); moved = 1; }
            else if (n == 0 || !net_would_block(net_error())) { t->dead = 1; return -1; }
        }
        if (!moved) return 0;
    }
}

/* recv() through TLS: bytes, 0 at the end, -1 on error, -2 for "later". */
static long
tls_recv(struct tls_sess *t, ms_sock_t fd, void *buf, size_t cap)
{
    unsigned st;
    int pumped = tls_pump(t, fd);
    st = br_ssl_engine_current_state(t->eng);
    if ((st & BR_SSL_RECVAPP) && cap) {
        size_t len;
        unsigned char *b = br_ssl_engine_recvapp_buf(t->eng, &len);
        if (len > cap) len = cap;
        memcpy(buf, b, len);
        br_ssl_engine_recvapp_ack(t->eng, len);
        tls_pump(t, fd);
        return (long)len;
    }
    if (st & BR_SSL_RECVAPP) return -2; /* it waits for room */
    if (pumped < 0 || (st & BR_SSL_CLOSED)) return br_ssl_engine_last_error(t->eng) == BR_ERR_OK ? 0 : -1;
    return -2;
}

/* send() through TLS (nothing goes before the handshake is done). */
static long
tls_send(struct tls_sess *t, ms_sock_t fd, const void *buf, size_t n)
{
    unsigned st;
    if (tls_pump(t, fd) < 0) return -1;
    st = br_ssl_engine_current_state(t->eng);
    if (st & BR_SSL_SENDAPP) {
        size_t len;
        unsigned char *b = br_ssl_engine_sendapp_buf(t->eng, &len);
        if (len > n) len = n;
        memcpy(b, buf, len);
        br_ssl_engine_sendapp_ack(t->eng, len);
        br_ssl_engine_flush(t->eng, 0);
        if (tls_pump(t, fd) < 0) return -1;
        return (long)len;
    }
    return -2;
}

/* What the engine waits for; app_out: the session has plain text to send,
 * which the engine takes only once the handshake is done. */
static short
tls_events(const struct tls_sess *t, int app_out)
{
    unsigned st = t->dead ? 0 : br_ssl_engine_current_state(t->eng);
    return (short)(((st & BR_SSL_SENDREC) || (app_out && (st & BR_SSL_SENDAPP)) ? POLLOUT : 0) |
                   ((st & BR_SSL_RECVREC) ? POLLIN : 0));
}

static int tls_app_ready(const struct tls_sess *t) { return (br_ssl_engine_current_state(t->eng) & BR_SSL_RECVAPP) != 0; }
static int tls_unsent(const struct tls_sess *t) { return !t->dead && (br_ssl_engine_current_state(t->eng) & BR_SSL_SENDREC) != 0; }
static int tls_done(const struct tls_sess *t) { return (br_ssl_engine_current_state(t->eng) & (BR_SSL_SENDAPP | BR_SSL_RECVAPP)) != 0; }
static int tls_error(const struct tls_sess *t) { return br_ssl_engine_last_error(t->eng); }

/* BearSSL's error codes that a log reader can act on. */
static void
tls_error_text(int e, char *out, size_t n)
{
    const char *t = e == BR_ERR_X509_NOT_TRUSTED ? "certificate not trusted"
                  : e == BR_ERR_X509_BAD_SERVER_NAME ? "certificate is for another name"
                  : e == BR_ERR_X509_EXPIRED ? "certificate expired or not yet valid"
                  : e == BR_ERR_UNSUPPORTED_VERSION || e == BR_ERR_BAD_VERSION ? "no common TLS version (TLS 1.2 only)"
                  : e == BR_ERR_BAD_CIPHER_SUITE ? "no common cipher suite"
                  : e == BR_ERR_IO ? "connection lost" : NULL;
    if (t) snprintf(out, n, "%s, BearSSL error %d", t, e);
    else if (e >= BR_ERR_SEND_FATAL_ALERT) snprintf(out, n, "sent fatal alert %d", e - BR_ERR_SEND_FATAL_ALERT);
    else if (e >= BR_ERR_RECV_FATAL_ALERT) snprintf(out, n, "the peer sent fatal alert %d", e - BR_ERR_RECV_FATAL_ALERT);
    else snprintf(out, n, "BearSSL error %d", e);
}

/* "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256" (resumed) for the logs. */
static void
tls_describe(const struct tls_sess *t, char *out, size_t n)
{
    br_ssl_session_parameters sp;
    br_ssl_engine_get_session_parameters(t->eng, &sp);
    snprintf(out, n, "TLSv1.%d %s", sp.version - 0x0301, tls_suite_name(sp.cipher_suite));
}

/* Sends close_notify as far as the socket takes it. */
static void
tls_close(struct tls_sess *t, ms_sock_t fd)
{
    if (t->dead) return;
    br_ssl_engine_close(t->eng);
    tls_pump(t, fd);
}

/* The outcome of the handshake, once: 1 with the log line in out, 0 while
 * it goes on or once told. */
static int
tls_report(struct tls_sess *t, char *out, size_t n)
{
    char what[128];
    if (t->reported) return 0;
    if (tls_done(t)) {
        tls_describe(t, what, sizeof what);
        snprintf(out, n, "tls ok %s", what);
    } else if (tls_error(t)) {
        tls_error_text(tls_error(t), what, sizeof what);
        snprintf(out, n, "tls handshake failed: %s", what);
    } else {
        return 0;
    }
    t->reported = 1;
    return 1;
}

/* The certificate, key and CA files: loaded here, so `check` reports them. */
static void
cfg_load_tls_files(struct ms_config *c)
{
    char err[2600];
    int i, tls_listen = 0;
    for (i = 0; i < c->nlisten; i++) tls_listen |= c->listen[i].tls;
    if (c->tls_cert[0] || c->tls_key[0]) {
        if (!c->tls_cert[0] || !c->tls_key[0]) cfg_error(c, 0, "tls_cert and tls_key go together");
        else if (!(c->tls = tls_creds_load(c->tls_cert, c->tls_key, err, sizeof err))) cfg_error(c, 0, "TLS: %s", err);
    } else if (tls_listen) {
        cfg_error(c, 0, "smtps, pop3s and https need tls_cert and tls_key (`mailsrv gencert` makes a pair)");
    }
    if (c->relay_tls == RTLS_VERIFY) {
        if (!c->ca_file[0]) cfg_error(c, 0, "[relay] tls = verify needs ca_file");
        else if (!(c->ca = tls_anchors_load(c->ca_file, err, sizeof err))) cfg_error(c, 0, "[relay] ca_file: %s", err);
    }
}

/* ---- gencert: a self-signed ECDSA P-256 certificate, written in DER by hand ---- */

static void
der_add(struct buf *b, unsigned tag, const void *p, size_t n)
{
    unsigned char h[4];
    size_t hl = 0;
    h[hl++] = (unsigned char)tag;
    if (n < 0x80) h[hl++] = (unsigned char)n;
    else if (n < 0x100) { h[hl++] = 0x81; h[hl++] = (unsigned char)n; }
    else { h[hl++] = 0x82; h[hl++] = (unsigned char)(n >> 8); h[hl++] = (unsigned char)n; }
    buf_add(b, h, hl);
    if (n) buf_add(b, p, n);
}

/* Wraps what `in` holds in one TLV appended to out; frees in. */
static void
der_wrap(struct buf *out, unsigned tag, struct buf *in)
{
    der_add(out, tag, in->p, in->len);
    buf_free(in);
}

static void
der_name(struct buf *out, const char *cn)
{
    static const unsigned char oid_cn[] = {0x55, 0x04, 0x03};
    struct buf atv = {0}, set = {0}, seq = {0};
    der_add(&atv, 0x06, oid_cn, sizeof oid_cn);
    der_add(&atv, 0x0c, cn, strlen(cn)); /* UTF8String */
    der_wrap(&set, 0x30, &atv);
    der_wrap(&seq, 0x31, &set);
    der_wrap(out, 0x30, &seq);
}

/* RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime after. */
static void
der_time(struct buf *out, time_t t)
{
    char s[32];
    struct tm tm, *g = gmtime(&t);
    memset(&tm, 0, sizeof tm);
    if (g) tm = *g;
    if (tm.tm_year + 1900 < 2050) {
        snprintf(s, sizeof s, "%02d%02d%02d%02d%02d%02dZ", tm.tm_year % 100, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        der_add(out, 0x17, s, strlen(s));
    } else {
        snprintf(s, sizeof s, "%04d%02d%02d%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        der_add(out, 0x18, s, strlen(s));
    }
}

static int
tls_write_pem(const char *path, const void *der, size_t len, const char *banner, int mode)
{
    size_t n = br_pem_encode(NULL, der, len, banner, BR_PEM_LINE64);
    char *pem = xrealloc(NULL, n + 1);
    int fd, rc = -1;
    br_pem_encode(pem, der, len, banner, BR_PEM_LINE64);
    if ((fd = os_open(path, O_WRONLY | O_CREAT | O_EXCL, mode)) >= 0) {
        rc = os_write_all(fd, pem, n) < 0 || os_fsync(fd) != 0 ? -1 : 0;
        if (os_close(fd) != 0) rc = -1;
    }
    free(pem);
    return rc;
}

/* The subjectAltName of gencert's certificate (RFC 5280 4.2.1.6): what clients connect to,
 * by name (dNSName, lower case) and by address (iPAddress, RFC 6125 6.4: an IP is never
 * matched against a dNSName). Each entry once. */
struct cert_names {
    int nnames, nips;
    char names[MS_CERT_NAMES][MS_DOMAIN_MAX + 1];
    struct ms_addr ips[MS_CERT_NAMES];
};

/* Adds a host name ("*." allowed first) or an address; 0 (also when already there), -1 if it is
 * neither or the list is full. */
static int
cert_names_add(struct cert_names *cn, const char *s, int ip)
{
    int i;
    if (ip) {
        struct ms_addr a;
        if (net_addr_parse(s, 0, &a) != 0) return -1;
        for (i = 0; i < cn->nips; i++)
            if (cn->ips[i].family == a.family && memcmp(cn->ips[i].ip, a.ip, a.family == AF_INET ? 4 : 16) == 0) return 0;
        if (cn->nips >= MS_CERT_NAMES) return -1;
        cn->ips[cn->nips++] = a;
    } else {
        struct ms_addr a;
        char low[MS_DOMAIN_MAX + 1];
        size_t k;
        if (ms_strlcpy(low, s, sizeof low) != 0 || net_addr_parse(s, 0, &a) == 0 ||
            !cfg_valid_domain(strncmp(s, "*.", 2) == 0 ? s + 2 : s))
            return -1;
        for (k = 0; low[k]; k++) low[k] = (char)tolower((unsigned char)low[k]);
        for (i = 0; i < cn->nnames; i++)
            if (strcmp(cn->names[i], low) == 0) return 0;
        if (cn->nnames >= MS_CERT_NAMES) return -1;
        memcpy(cn->names[cn->nnames++], low, sizeof low);
    }
    return 0;
}

/* gencert's names: hostname (also the CN), the machine's name, localhost, 127.0.0.1, ::1, the
 * machine's own addresses, then the --name and --ip options: -1 naming the first that is not a
 * host name or an address, or that no longer fits. */
static int
cert_names_collect(struct cert_names *cn, const char *host, const char *const *names, int nnames,
                   const char *const *ips, int nips, const char **bad)
{
    char machine[MS_DOMAIN_MAX + 1], addrs[MS_CERT_NAMES][64];
    int i, n;
    memset(cn, 0, sizeof *cn);
    cert_names_add(cn, host, 0);
    os_machine_name(machine, sizeof machine);
    if (machine[0]) cert_names_add(cn, machine, 0); /* a machine name that is no host name is left out */
    cert_names_add(cn, "localhost", 0);
    cert_names_add(cn, "127.0.0.1", 1);
    cert_names_add(cn, "::1", 1);
    n = os_local_addrs(addrs, MS_CERT_NAMES / 2); /* room for the options */
    for (i = 0; i < n; i++) cert_names_add(cn, addrs[i], 1);
    for (i = 0; i < nnames; i++)
        if (cert_names_add(cn, names[i], 0) != 0) { *bad = names[i]; return -1; }
    for (i = 0; i < nips; i++)
        if (cert_names_add(cn, ips[i], 1) != 0) { *bad = ips[i]; return -1; }
    return 0;
}

/* Builds the certificate for `host`, valid from an hour ago for ten years, with the host as
 * CN and the entries of san (or, without san, the host alone) as subjectAltName. */
static int
tls_make_cert(const char *host, const struct cert_names *san, struct buf *cert, struct buf *key)
{
    static const unsigned char oid_ecdsa_sha256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
    static const unsigned char oid_ec_pub[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
    static const unsigned char oid_p256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static const unsigned char oid_san[] = {0x55, 0x1d, 0x11};
    static const unsigned char v3[] = {0x02, 0x01, 0x02};
    br_hmac_drbg_context rng;
    br_ec_private_key sk;
    br_ec_public_key pk;
    unsigned char seed[32], kbuf[BR_EC_KBUF_PRIV_MAX_SIZE], pbuf[BR_EC_KBUF_PUB_MAX_SIZE], serial[16], hash[32];
    unsigned char sig[80], bits[BR_EC_KBUF_PUB_MAX_SIZE + 1], kder[200];
    struct buf tbs = {0}, alg = {0}, tmp = {0}, tmp2 = {0}, spki = {0}, ext = {0}, all = {0};
    br_sha256_context h;
    size_t siglen, klen;
    int i;
    time_t now = time(NULL);
    if (os_random(seed, sizeof seed) != 0 || os_random(serial, sizeof serial) != 0) return -1;
    br_hmac_drbg_init(&rng, &br_sha256_vtable, seed, sizeof seed);
    if (!br_ec_keygen(&rng.vtable, br_ec_get_default(), &sk, kbuf, BR_EC_secp256r1) ||
        !br_ec_compute_pub(br_ec_get_default(), &pk, pbuf, &sk))
        return -1;
    serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x01); /* positive, 16 bytes */
    der_add(&alg, 0x06, oid_ecdsa_sha256, sizeof oid_ecdsa_sha256);
    der_add(&tmp, 0xa0, v3, sizeof v3);                           /* version v3 */
    der_add(&tmp, 0x02, serial, sizeof serial);
    der_add(&tmp, 0x30, alg.p, alg.len);
    der_name(&tmp, host);                                        /* issuer */
    der_time(&tmp2, now - 3600);
    der_time(&tmp2, now + 10L * 365 * 86400);
    der_wrap(&tmp, 0x30, &tmp2);                                 /* validity */
    der_name(&tmp, host);                                        /* subject */
    der_add(&tmp2, 0x06, oid_ec_pub, sizeof oid_ec_pub);
    der_add(&tmp2, 0x06, oid_p256, sizeof oid_p256);
    der_wrap(&spki, 0x30, &tmp2);
    bits[0] = 0;
    memcpy(bits + 1, pk.q, pk.qlen);
    der_add(&spki, 0x03, bits, pk.qlen + 1);
    der_wrap(&tmp, 0x30, &spki);                                 /* subjectPublicKeyInfo */
    if (!san) der_add(&tmp2, 0x82, host, strlen(host));          /* dNSName */
    for (i = 0; san && i < san->nnames; i++) der_add(&tmp2, 0x82, san->names[i], strlen(san->names[i]));
    for (i = 0; san && i < san->nips; i++)                       /* iPAddress: 4 or 16 octets */
        der_add(&tmp2, 0x87, san->ips[i].ip, san->ips[i].family == AF_INET ? 4 : 16);
    der_wrap(&ext, 0x30, &tmp2);                                 /* GeneralNames */
    der_add(&tmp2, 0x06, oid_san, sizeof oid_san);
    der_wrap(&tmp2, 0x04, &ext);
    der_wrap(&ext, 0x30, &tmp2);                                 /* Extension */
    der_wrap(&tmp2, 0x30, &ext);                                 /* Extensions */
    der_wrap(&tmp, 0xa3, &tmp2);
    der_wrap(&tbs, 0x30, &tmp);
    br_sha256_init(&h);
    br_sha256_update(&h, tbs.p, tbs.len);
    br_sha256_out(&h, hash);
    siglen = br_ecdsa_sign_asn1_get_default()(br_ec_get_default(), &br_sha256_vtable, hash, &sk, sig);
    klen = br_encode_ec_raw_der(kder, &sk, &pk);
    if (!siglen || !klen) { buf_free(&tbs); buf_free(&alg); return -1; }
    bits[0] = 0;
    memcpy(bits + 1, sig, siglen);
    buf_add(&all, tbs.p, tbs.len);
    der_add(&all, 0x30, alg.p, alg.len);
    der_add(&all, 0x03, bits, siglen + 1);
    der_wrap(cert, 0x30, &all);
    buf_add(key, kder, klen);
    buf_free(&tbs);
    buf_free(&alg);
    memset(kbuf, 0, sizeof kbuf);
    memset(kder, 0, sizeof kder);
    return 0;
}

/* `gencert [--name NAME]... [--ip ADDR]...`: a self-signed certificate and key at tls_cert /
 * tls_key (default cert.pem and key.pem beside the INI) for hostname and what else clients
 * connect to (cert_names_collect); never overwrites. */
static int
cli_gencert(const char *path, const char *const *names, int nnames, const char *const *ips, int nips)
{
    struct ms_config *c = cfg_load_ex(path, NULL, 0);
    char cert[MS_PATH_DOMAIN], key[MS_PATH_DOMAIN], addr[64];
    struct buf cb = {0}, kb = {0};
    struct os_stat st;
    struct cert_names *san = xrealloc(NULL, sizeof *san);
    const char *bad = NULL;
    int rc = 1, set = 0, i;
    if (cli_print_errors(c)) { cfg_free(c); free(san); return 1; }
    if (cert_names_collect(san, c->hostname, names, nnames, ips, nips, &bad) != 0) {
        fprintf(stderr, "mailsrv: gencert: '%s' is not a host name or an IP address (or too many names: %d at most)\n",
                bad, MS_CERT_NAMES);
        cfg_free(c);
        free(san);
        return 1;
    }
    set = c->tls_cert[0] && c->tls_key[0];
    if (ms_fmt(cert, sizeof cert, "%s", c->tls_cert[0] ? c->tls_cert : "") < 0 || !cert[0])
        ms_fmt(cert, sizeof cert, "%s%scert.pem", c->dir, c->dir[0] ? "/" : "");
    if (ms_fmt(key, sizeof key, "%s", c->tls_key[0] ? c->tls_key : "") < 0 || !key[0])
        ms_fmt(key, sizeof key, "%s%skey.pem", c->dir, c->dir[0] ? "/" : "");
    if (os_stat(cert, &st) == 0 || os_stat(key, &st) == 0) {
        fprintf(stderr, "mailsrv: %s exists: gencert never overwrites; remove it first\n", os_stat(cert, &st) == 0 ? cert : key);
    } else if (tls_make_cert(c->hostname, san, &cb, &kb) != 0) {
        fprintf(stderr, "mailsrv: cannot make a key (is the system's random generator working?)\n");
    } else if (tls_write_pem(key, kb.p, kb.len, BR_ENCODE_PEM_EC_RAW, 0600) != 0 ||
               tls_write_pem(cert, cb.p, cb.len, "CERTIFICATE", 0644) != 0) {
        fprintf(stderr, "mailsrv: cannot write %s / %s: %s\n", cert, key, strerror(errno));
    } else {
        printf("wrote %s (self-signed, ECDSA P-256, for %s, valid 10 years) and its key %s\nnames:", cert, c->hostname, key);
        for (i = 0; i < san->nnames; i++) printf(" %s", san->names[i]);
        for (i = 0; i < san->nips; i++) {
            net_addr_str(&san->ips[i], addr, sizeof addr);
            printf(" %s", addr);
        }
        printf("\n");
        if (!set) printf("add to [server] in %s:\n    tls_cert = %s\n    tls_key = %s\n", path, cert, key);
        rc = 0;
    }
    if (kb.p) memset(kb.p, 0, kb.len);
    buf_free(&kb);
    buf_free(&cb);
    cfg_free(c);
    free(san);
    return rc;
}

#else /* MAILSRV_ENABLE_TLS: the stubs */

#define TLS_BUILT_IN "no"

/* No session is ever made, so these are never reached with one. */
static void tls_creds_release(struct tls_creds *t) { (void)t; }
static struct tls_sess *tls_server_new(struct tls_creds *creds, void **cache) { (void)creds; (void)cache; return NULL; }
static struct tls_sess *tls_client_new(struct tls_creds *anchors, const char *server_name) { (void)anchors; (void)server_name; return NULL; }
static void tls_free(struct tls_sess *t) { (void)t; }
static int tls_pump(struct tls_sess *t, ms_sock_t fd) { (void)t; (void)fd; return -1; }
static long tls_recv(struct tls_sess *t, ms_sock_t fd, void *buf, size_t cap) { (void)t; (void)fd; (void)buf; (void)cap; return -1; }
static long tls_send(struct tls_sess *t, ms_sock_t fd, const void *buf, size_t n) { (void)t; (void)fd; (void)buf; (void)n; return -1; }
static short tls_events(const struct tls_sess *t, int app_out) { (void)t; (void)app_out; return 0; }
static int tls_app_ready(const struct tls_sess *t) { (void)t; return 0; }
static int tls_unsent(const struct tls_sess *t) { (void)t; return 0; }
static int tls_done(const struct tls_sess *t) { (void)t; return 0; }
static int tls_error(const struct tls_sess *t) { (void)t; return 0; }
static void tls_error_text(int e, char *out, size_t n) { (void)e; (void)out; (void)n; }
static int tls_report(struct tls_sess *t, char *out, size_t n) { (void)t; (void)out; (void)n; return 0; }
static void tls_close(struct tls_sess *t, ms_sock_t fd) { (void)t; (void)fd; }

/* A config that needs TLS is an error, with the same words as ever. */
static void
cfg_load_tls_files(struct ms_config *c)
{
    int i, tls_listen = 0;
    for (i = 0; i < c->nlisten; i++) tls_listen |= c->listen[i].tls;
    if (tls_listen || c->tls_cert[0] || c->tls_key[0] || c->relay_tls == RTLS_VERIFY)
        cfg_error(c, 0, "TLS is not available: this mailsrv was built without it (make TLS=0)");
}

static int
cli_gencert(const char *path, const char *const *names, int nnames, const char *const *ips, int nips)
{
    (void)path;
    (void)names;
    (void)nnames;
    (void)ips;
    (void)nips;
    fprintf(stderr, "mailsrv: this mailsrv was built without TLS (make TLS=0): no gencert\n");
    return 1;
}

#endif /* MAILSRV_ENABLE_TLS */

/* ---- the transport: a socket, plain or through TLS, and its buffers ----
 * Inbound sessions (struct conn) and relay sessions (struct mta_sess) each
 * embed one, and read, send and poll through these functions (the relay's
 * DNS queries use the socket directly); the loop polls and dispatches both
 * kinds alike (mailsrv_poll). */

struct transport {
    ms_sock_t fd;
    struct tls_sess *tls;          /* NULL: plain text */
    char *in;                      /* the owner's input buffer: insize bytes, inlen used */
    size_t insize, inlen;
    struct buf out;                /* to send, from out_off on */
    size_t out_off;
    int64_t deadline;
    /* the loop's: what poll() said this turn (0: nothing), and who handles it
     * (every turn the session is polled, also with 0: decrypted input may wait
     * in the TLS engine) */
    short revents;
    void (*on_io)(struct transport *io, short revents);
};

/* The session that embeds io as its member `member`. */
#define IO_OWNER(io, type, member) ((type *)(void *)((char *)(io) - offsetof(type, member)))

static void
io_init(struct transport *io, ms_sock_t fd, char *in, size_t insize, void (*on_io)(struct transport *, short))
{
    io->fd = fd;
    io->in = in;
    io->insize = insize;
    io->on_io = on_io;
}

/* Reads what fits into the input buffer: bytes added, 0 at the end, -2 for
 * "later" (or no room), -1 when the connection failed. */
static long
io_read(struct transport *io)
{
    long r;
    size_t room = io->insize - io->inlen;
    if (io->tls) r = tls_recv(io->tls, io->fd, io->in + io->inlen, room);
    else if (room == 0) r = -2;
    else if ((r = net_recv(io->fd, io->in + io->inlen, room)) < 0) r = net_would_block(net_error()) ? -2 : -1;
    if (r > 0) io->inlen += (size_t)r;
    return r;
}

/* The length of the first input line with its LF, 0 while there is none. */
static size_t
io_line(const struct transport *io)
{
    const char *nl = memchr(io->in, '\n', io->inlen);
    return nl ? (size_t)(nl - io->in) + 1 : 0;
}

/* Drops the first n bytes of the input: they have been taken. */
static void
io_consume(struct transport *io, size_t n)
{
    memmove(io->in, io->in + n, io->inlen - n);
    io->inlen -= n;
}

static size_t io_pending(const struct transport *io) { return io->out.len - io->out_off; }

/* Sends the output until it is all out or the socket is full; -1 when the
 * connection failed. A RETR-sized buffer is given back once empty. */
static int
io_write(struct transport *io)
{
    while (io_pending(io)) {
        long n;
        if (io->tls) n = tls_send(io->tls, io->fd, io->out.p + io->out_off, io_pending(io));
        else if ((n = net_send(io->fd, io->out.p + io->out_off, io_pending(io))) < 0)
            n = net_would_block(net_error()) ? -2 : -1;
        if (n == -1) return -1;
        if (n < 0) break;
        io->out_off += (size_t)n;
    }
    /* TLS: push records already made */
    if (io->tls && tls_pump(io->tls, io->fd) < 0 && io_pending(io)) return -1;
    if (!io_pending(io)) {
        io->out.len = io->out_off = 0;
        if (io->out.cap > 65536) buf_free(&io->out);
    } else if (io->out_off > 65536) {
        buf_consume(&io->out, io->out_off);
        io->out_off = 0;
    }
    return 0;
}

/* What to poll for: a TLS engine says itself what it waits for. */
static short
io_events(const struct transport *io, int want_in, int want_out)
{
    if (io->tls) return tls_events(io->tls, want_out);
    return (short)((want_in && io->inlen < io->insize ? POLLIN : 0) | (want_out ? POLLOUT : 0));
}

/* Decrypted input waits in the engine while there is room for it: it needs
 * a turn without a socket event. */
static int
io_tls_input(const struct transport *io)
{
    return io->tls && io->inlen < io->insize && tls_app_ready(io->tls);
}

/* TLS records not yet on the socket: a close waits for them. */
static int
io_unsent(const struct transport *io)
{
    return io->tls && tls_unsent(io->tls);
}

/* Before closing: TLS close_notify, as far as the socket takes it. */
static void
io_close_notify(struct transport *io)
{
    if (io->tls) tls_close(io->tls, io->fd);
}

/* Closes the socket and forgets the buffers and the TLS session. */
static void
io_close(struct transport *io)
{
    if (io->fd != MS_BAD_SOCK) net_close(io->fd);
    io->fd = MS_BAD_SOCK;
    io->inlen = io->out.len = io->out_off = 0;
    tls_free(io->tls);
    io->tls = NULL;
}

/*==== 9. Connections ====*/
/*
 * The server and its connections: what every protocol's session shares. A
 * connection owns its transport (section 8). Protocol code appends replies
 * with conn_reply(); the loop sends them. A connection ends only through the
 * sweep in loop_sweep(), after dispatch.
 */

/* SMTP_S_BDAT: a BDAT transaction between its chunks (RFC 3030); a chunk's
 * octets are read in any state while smtp_sess.bdat_left is not 0 */
enum { SMTP_S_GREET, SMTP_S_READY, SMTP_S_MAIL, SMTP_S_RCPT, SMTP_S_BDAT, SMTP_S_DATA };
enum { AUTH_NONE, AUTH_PLAIN_WAIT, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };
enum { TXERR_NONE, TXERR_TOO_BIG, TXERR_IO };

/* A post to a list, made at the final dot (list_incoming) and delivered to
 * the members with the message that brought it (smtp_deliver_step). */
struct list_post {
    struct store_msg m;              /* the members' copy */
    struct targets t;                /* the members */
    char list[MS_LOCAL_MAX + MS_DOMAIN_MAX + 2]; /* NAME@DOMAIN, for the log */
    long seq;
};

/* A RCPT whose NOTIFY asked for SUCCESS and that the delivery at the final
 * dot completes: a local mailbox (delivered) or an alias of several
 * (expanded, RFC 3461 6.2.7.3); reported once the message is durable. */
struct dsn_note {
    char addr[MS_PATH_MAX];
    char orcpt[MS_ORCPT_MAX + 1];
    int expanded;
};

struct smtp_sess {
    int state, esmtp, auth_step;
    char helo[MS_DOMAIN_MAX + 6];    /* a 255-octet name, visible (ms_visible keeps 5 spare) */
    char auth_user[MS_PATH_MAX];     /* "" until AUTH succeeds */
    char login_user[MS_PATH_MAX];    /* AUTH LOGIN: the user between the two steps */
    char from[MS_PATH_MAX];
    char first_rcpt[MS_PATH_MAX];
    int nrcpt, tx_error;
    int utf8;                        /* MAIL FROM declared SMTPUTF8 (RFC 6531 3.4) */
    struct targets targets;
    struct dsn_mail dsn;             /* MAIL FROM's RET and ENVID (RFC 3461) */
    struct dsn_note *notes;          /* SUCCESS reports owed once the message is durable */
    int nnotes;
    char (*lists)[MS_PATH_MAX];      /* recipients that are list addresses (section 14) */
    char (*rcpts)[MS_PATH_MAX];      /* LMTP: the accepted RCPTs (nrcpt), in order: one answer each at the end */
    int nlists;
    struct data_rx rx;
    int64_t bdat_left, bdat_size;    /* octets of the BDAT chunk being read still to come, of all of it */
    int bdat_last;                   /* ... it is the LAST one */
    int bdat_skip;                   /* ... it was refused (answered): its octets are read and dropped */
    char *wbuf;                      /* only while receiving DATA or BDAT chunks */
    size_t wlen;
    int64_t written, synced;         /* DATA: bytes in msg's file, and fsynced (MS_DATA_SYNC_BYTES) */
    int sync_data;                   /* ... the file itself is kept (a Maildir or queue link): fsynced as it comes */
    struct store_msg msg;
    struct store_undo *undo;         /* the copies made (all of them once commit_pending is set) */
    int nundo;
    /* the delivery at the final dot, in slices (smtp_deliver_step): each list
     * post (list_incoming), then the message itself; undo gets each one's copies */
    struct list_post *posts;
    int nposts;
    int delivering;                  /* which: 0 none, k + 1 posts[k] (k < nposts) or the message */
    struct store_job job;            /* its local copies */
    struct dirset dirs;              /* the folders they owe, given to the group commit once all are made
                                        (a batch sealed meanwhile must not take a part of them) */
};

/* RFC 1939's states; OPENING: logged in, the view being made; UPDATE: the
 * deletions after QUIT being made (no input is taken in either). */
enum { POP_S_AUTH, POP_S_TRANS, POP_S_OPENING, POP_S_UPDATE };

struct pop_sess {
    int state, auth_wait;
    int utf8;                         /* the client sent UTF8 (RFC 6856 2) */
    char user[MS_PATH_MAX];           /* from USER */
    char mailbox[MS_PATH_MAX];        /* user@domain once logged in */
    struct pop_view view;
    /* RETR/TOP streaming */
    int stream_fd, streaming, st_bol, st_in_head;
    long st_body_left;                /* TOP: body lines still to send; -1 = all */
    struct line_reader lr;
};

#if MAILSRV_ENABLE_HTTP
/* An HTTP session (section 12): one request at a time. */
enum { H_HEAD, H_BODY, H_LOGIN, H_WORK, H_EVENTS };
#define HTTP_LOGIN_ONLY 2

struct http_sess {
    int state;
    struct http_req req;
    char *bigin;                     /* input buffer once a head outgrew c->inbuf (MS_HTTP_HEAD_MAX) */
    struct buf body;                 /* the request's body */
    struct buf resp;                 /* the answer's body, being made */
    int all;                         /* the client sees every mailbox */
    char mailbox[MS_PATH_MAX];       /* ... else this one ("": nobody logged in yet) */
    unsigned char auth_key[32];      /* SHA-256 of the Authorization value that logged in */
    int started;                     /* bytes of a request have come (a timeout answers 408) */
    const struct http_route *route;
    char arg[2][MS_HTTP_ARG_MAX];    /* the route's {ID} and {PartID}, decoded */
    struct http_job *job;            /* the request's views of the store */
};
#endif

/* A login in progress: section 15 runs its PBKDF2 a slice per loop turn.
 * The name as given (for the log), the mailbox it names, the hash to match. */
struct login {
    struct pbkdf2 st;
    unsigned char want[32];
    int found, no_check;
    char user[MS_PATH_MAX], mailbox[MS_PATH_MAX];
};

struct conn {
    struct mailsrv *ms;
    struct transport io;             /* the socket and its buffers */
    unsigned id;
    int login_fails;                 /* failed logins (MS_AUTH_MAX_FAILS) */
    enum proto proto;
    const struct proto_ops *ops;     /* what the connection and loop code need of its protocol */
    char peer[64];
    char client[48];                 /* client_key(peer): the address or IPv6 /64 */
    int is_loopback;
    int64_t hold_until;
    int64_t born;                    /* accepted at (max_session_time) */
    long junk;                       /* junk commands (max_junk_commands) */
    unsigned is_closing : 1, close_after_flush : 1, discarding : 1, is_eof : 1;
    unsigned tls_after_flush : 1;    /* STARTTLS/STLS: TLS begins once the reply is out */
    unsigned commit_pending : 1;     /* delivered: the folders' fsync (loop_group_commit) and the answer are owed */
    unsigned commit_sealed : 1;      /* ... and its folders are in the batch being fsynced */
    unsigned out_full : 1;           /* conn_process stopped at MS_OUT_HIGH: it goes on once the output is back under it */
    unsigned in_relay_nets : 1;      /* peer is in relay_networks: set at accept, again at each reload */
    /* Long work, run in slices by the loop (loop_work): a login's hash, a
     * mailbox's view, its deletions, a delivery to many mailboxes. No input
     * is processed meanwhile. Returns 1 when done, having answered (or, a
     * delivery, set commit_pending) and called conn_work_done. */
    int (*work)(struct conn *c, int64_t until_us);
    unsigned work_must_finish : 1;   /* ... even if the client goes away (deletions after QUIT) */
    unsigned work_started : 1;       /* ... it has had a slice (commit_seal) */
    struct login *login;             /* the login being hashed */
    char inbuf[MS_IN_SIZE];          /* io's input */
    union {
        struct smtp_sess smtp;
        struct pop_sess pop;
#if MAILSRV_ENABLE_HTTP
        struct http_sess http;
#endif
    } u;
};

struct listener { ms_sock_t fd; enum proto proto; int tls; int local; char name[112]; }; /* local: a Unix socket */

/* What the connection and loop code need of a protocol (Mongoose's one
 * handler per connection, OpenSMTPD's session callbacks), so that they have
 * no branch on which protocol a session speaks. SMTP and submission share one. */
struct proto_ops {
    char log_tag;                    /* [s1] or [p1] in the log */
    void (*greet)(struct conn *c);
    /* Input other than a command line (the DATA bytes), or output made in
     * pieces (a RETR stream): 0 to go on with command lines, 1 when it did
     * something (call again), -1 to wait for the next turn. */
    int (*pump)(struct conn *c);
    void (*line)(struct conn *c, char *line, size_t len);
    void (*login_done)(struct conn *c, const char *mailbox, const char *user);
    void (*group_committed)(struct conn *c, int ok); /* after loop_group_commit, where commit_pending was set;
                                                       * ok: the folders' fsync (an mbox batch: store_msg.commit_err) */
    int (*logged_in)(const struct conn *c);
    int (*busy)(const struct conn *c);            /* the protocol's part of conn_busy() */
    int (*in_transfer)(const struct conn *c);     /* message bytes flowing: a stop lets it finish */
    int (*streaming)(const struct conn *c);       /* output still to be made: poll for POLLOUT */
    const char *(*tmp_file)(const struct conn *c); /* a file in SPOOL/.tmp it writes, or NULL */
    void (*free)(struct conn *c);
    const char *lost_log;            /* logged when the client goes away in_transfer (NULL: nothing) */
    const char *say[SAY_N];          /* reply formats; they may use the host name (one %s) */
    void (*said)(struct conn *c, enum conn_say what); /* instead of say[] (HTTP: an answer only to a request begun) */
};

struct mailsrv {
    struct ms_config *cfg;
    char *ini_path;
    int64_t ini_mtime, ini_size, next_ini_check;
    uint64_t ini_ino;
    int64_t next_tmp_clean;          /* when SPOOL/.tmp is next cleaned (0: at the next turn) */
    int64_t seen_mtime, seen_size, seen_since; /* a change waiting to be stable (seen_since 0: none) */
    uint64_t seen_ino;
    int64_t last_load;               /* wall clock of the last loading of the INI (`mailsrv status`) */
    int last_load_errors;            /* ... its errors (0: in force) */
    int64_t next_control_check;      /* QUEUE/stop and QUEUE/status (loop_check_control) */
    int stop_by_cli;                 /* QUEUE/stopping is ours to remove once stopped */
    int allow_root;                  /* --allow-root on the command line (`make run` as root) */
    int log_fd;                      /* [server] log (default_log); -1: standard error */
    char log_path[1024];             /* ... the file it is, "" for standard error */
    char log_default[1024];          /* the log when [server] names none ("": standard error; a service's file) */
    struct listener lst[MS_MAX_LISTENERS];
    int nlst;
    struct conn **conns;
    int nconns, capconns;
    ms_pollfd *pfds;                 /* this turn's poll set: the listeners, then sessions */
    struct transport **watched;      /* for each pfds entry, its session's transport (NULL: a listener) */
    int capfds;
    unsigned next_id, msg_counter;
    unsigned work_last;              /* the connection whose work ran last (round-robin) */
    volatile sig_atomic_t stop_requested, reload_requested;
    int stopping;
    int64_t stop_deadline;
    mailsrv_log_fn log_fn;
    void *log_user;
    int verbose;
    struct dirset commit_dirs;       /* owed by sessions with commit_pending, not commit_sealed */
    struct dirset commit_batch;      /* being fsynced, for the sessions with commit_sealed */
    int commit_next, commit_ok;      /* ... the first commit_next folders are fsynced; none failed */
    int commit_mb_next;              /* ... its mbox appends from this one on are still to make */
    int commit_undo_next;            /* ... then the failed ones' appends below this one to take back */
    int committing;                  /* a batch is sealed (loop_group_commit) */
    int commit_waited;               /* the seal waited a turn for deliveries not begun (commit_seal) */
    int commit_again;                /* the next turn must not sleep: a batch to go on with or to seal */
    /* relay */
    char qdir[1024];                 /* the queue folder, fixed at listen */
    struct qentry **queue;
    int nqueue, capqueue;
    struct mta_sess **out;              /* outbound sessions */
    int nout, capout;
    unsigned next_oid;
    int relay_kick;                  /* run the queue at the end of this turn */
    int64_t relay_wake, next_flush_check;
    void *tls_cache;                 /* the session resumption cache, made on first use */
    struct auth_penalty { char ip[64]; int fails; int64_t last; } pen[MS_AUTH_TRACK]; /* failed logins, by client_key */
    struct list_rate { uint64_t key; int64_t tat; } lrate[MS_LIST_REQ_TRACK]; /* list requests (section 14) */
    struct client_stat {             /* by client_key: connection rate and refusals logged */
        char key[48];
        int64_t seen, rate_start, log_start;
        long rate_n, log_quiet;      /* connections in the rate window; refusals not logged */
    } clients[MS_CLIENT_TRACK];
    int64_t clients_flush;           /* when the next count of refusals not logged is due (0: none) */
    /* sessions not closing, as loop_accept counts them (conn_count, conn_drop) */
    long nlive, nlive_outside;       /* all, and those outside relay_networks */
    struct client_count { char key[48]; long n; } *per_client; /* by client_key: open addressing, n 0 = empty */
    size_t capclients, nclients;     /* capclients: a power of 2, at least twice nclients */
    /* descriptors (loop_fit_fd_limit) */
    long max_sessions;               /* max_clients, or fewer when ulimit -n cannot hold them */
    long fd_need, fd_limit;          /* what the configuration needs and the limit, as last logged */
    int64_t accept_rest_until;       /* out of descriptors: the listeners are not polled until then */
    int64_t fd_short_logged;         /* when running out of them was last logged */
    int64_t started_ms;              /* mailsrv_create (the API's uptime) */
    long today, today_count;         /* messages that came on this local day (ms_messages_today) */
    struct { int code, prob; } chaos[CHAOS_N]; /* SMTP failures on demand (percent; 0: never) */
    unsigned char http_salt[16];     /* keys the remembered HTTP logins (random, at the first login) */
    int http_salted;                 /* ... it is made (no generator: no login is remembered) */
    struct http_login_cache { unsigned char key[32]; char mailbox[MS_PATH_MAX]; int64_t until; } http_logins[MS_HTTP_LOGINS];
};

/* Sessions open, by protocol (enum proto), and queued messages being relayed now. */
static void
ms_count_sessions(const struct mailsrv *ms, int n[PROTO_N], int *relaying)
{
    int i;
    for (i = 0; i < PROTO_N; i++) n[i] = 0;
    *relaying = 0;
    for (i = 0; i < ms->nconns; i++)
        if (!ms->conns[i]->is_closing) n[ms->conns[i]->proto]++;
    for (i = 0; i < ms->nqueue; i++) *relaying += ms->queue[i]->active;
}

/* ---- logging, replies, closing ---- */

static void
ms_log(struct mailsrv *ms, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ms->log_fn(ms->log_user, line);
}

static void
conn_log(struct conn *c, const char *fmt, ...)
{
    char line[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ms_log(c->ms, "[%c%u] %s", c->ops->log_tag, c->id, line);
}

static void
conn_reply(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    size_t start = c->io.out.len;
    va_start(ap, fmt);
    buf_vprintf(&c->io.out, fmt, ap);
    va_end(ap);
    if (c->ms->verbose) {
        char vis[600];
        ms_visible(vis, sizeof vis, c->io.out.p + start, c->io.out.len - start);
        conn_log(c, "> %s", vis);
    }
    buf_adds(&c->io.out, "\r\n");
}

/* The protocol's reply to a moment every session shares. */
static void
conn_say(struct conn *c, enum conn_say what)
{
    if (c->ops->said) { c->ops->said(c, what); return; }
    conn_reply(c, c->ops->say[what], c->ms->cfg->hostname);
}

/* Closes c once the replies queued so far are sent. */
static void
conn_close_after_reply(struct conn *c)
{
    c->close_after_flush = 1;
}

/* Closes c at the end of this loop turn, sending nothing more. */
static void
conn_drop(struct conn *c)
{
    if (!c->is_closing) conn_count(c, -1);
    c->is_closing = 1;
}

/* ---- a connection's turn: input, commands, replies, the start of TLS ---- */

/* Sends what it can; once all is out, what waited for that (TLS, the close). */
static void
conn_send(struct conn *c)
{
    if (io_write(&c->io) < 0) conn_drop(c);
    if (c->io.tls) conn_tls_report(c);
    if (io_pending(&c->io)) return;
    if (c->tls_after_flush) conn_tls_start(c);
    if (c->close_after_flush && !io_unsent(&c->io)) io_close_notify(&c->io);
    if (c->close_after_flush && !io_unsent(&c->io)) conn_drop(c);
}

/* STARTTLS / STLS (RFC 3207 4, RFC 2595 4): the go-ahead, then TLS once it
 * is sent; input pipelined behind the command is dropped unread (the command
 * injection of CVE-2011-0411). -1, having said why, when TLS cannot start. */
static int
conn_starttls(struct conn *c)
{
    if (c->io.tls) { conn_say(c, SAY_TLS_ACTIVE); return -1; }
    if (!c->ms->cfg->tls) { conn_say(c, SAY_TLS_UNAVAILABLE); return -1; }
    conn_say(c, SAY_TLS_GO);
    c->io.inlen = 0;
    c->tls_after_flush = 1;
    return 0;
}

/* After "220 Ready to start TLS" / "+OK Begin TLS negotiation" is out. */
static void
conn_tls_start(struct conn *c)
{
    c->tls_after_flush = 0;
    /* a reload took the certificate away (a build without TLS never has one) */
    if (!c->ms->cfg->tls) { conn_drop(c); return; }
    c->io.tls = tls_server_new(c->ms->cfg->tls, &c->ms->tls_cache);
}

/* Logs the outcome of a handshake once. */
static void
conn_tls_report(struct conn *c)
{
    char line[200];
    if (c->io.tls && tls_report(c->io.tls, line, sizeof line)) conn_log(c, "%s", line);
}

static void
conn_free(struct conn *c)
{
    while (c->work && c->work_must_finish && !c->work(c, INT64_MAX)) {} /* stopping: no one else to serve */
    c->ops->free(c);
    if (c->login) { ms_wipe(c->login, sizeof *c->login); free(c->login); }
    io_close(&c->io);
    buf_free(&c->io.out);
    free(c);
}

/* Runs the protocol over buffered input until it needs more, is held, or
 * has produced enough output for now. */
static void
conn_process(struct conn *c)
{
    char line[MS_SMTP_LINE_MAX + MS_DSN_RCPT_EXTRA + 1];
    /* SMTP: the longest a DSN RCPT line may be; smtp_line holds the other commands to 512 */
    size_t max = c->proto == PROTO_SMTP || c->proto == PROTO_SUBMISSION ? MS_SMTP_LINE_MAX + MS_DSN_RCPT_EXTRA
                                                                        : MS_SMTP_LINE_MAX;
    c->out_full = 0;
    if (c->work) return; /* pipelined commands wait for the login's (or the view's) outcome */
    if (c->hold_until) {
        if (os_now_ms() < c->hold_until) return;
        c->hold_until = 0;
    }
    while (!c->is_closing && !c->close_after_flush && !c->hold_until && !c->tls_after_flush && !c->work) {
        size_t len;
        int r;
        if (io_pending(&c->io) > MS_OUT_HIGH) { c->out_full = 1; break; }
        if (c->commit_pending) break;
        if ((r = c->ops->pump(c)) < 0) break;
        if (r > 0) continue;
        if ((len = io_line(&c->io)) == 0) {
            if (c->io.inlen >= max) { /* one reply, then skip to the LF (popa3d) */
                if (!c->discarding) conn_say(c, SAY_LINE_TOO_LONG);
                c->discarding = 1;
                c->io.inlen = 0;
            }
            break;
        }
        len--; /* without its LF */
        if (c->discarding) { c->discarding = 0; io_consume(&c->io, len + 1); continue; }
        if (len + 1 > max) {
            conn_say(c, SAY_LINE_TOO_LONG);
            io_consume(&c->io, len + 1);
            continue;
        }
        if (!conn_busy(c) && conn_session_expired(c, os_now_ms())) { /* between two transactions */
            conn_session_over(c);
            break;
        }
        memcpy(line, c->io.in, len);
        io_consume(&c->io, len + 1);
        if (len && line[len - 1] == '\r') len--;
        line[len] = 0;
        c->io.deadline = os_now_ms() + c->ms->cfg->timeout * 1000;
        c->ops->line(c, line, len);
    }
}

static void
conn_read(struct conn *c)
{
    long n;
    if (c->tls_after_flush) return; /* the next bytes are a TLS handshake */
    n = io_read(&c->io);
    if (n == 0) c->is_eof = 1; /* input already buffered is still served */
    else if (n == -1) conn_drop(c);
    if (c->io.tls) conn_tls_report(c);
}

/* conn_process stopped because the output was high, and it has gone out
 * since (often at once, into a large socket buffer): pipelined commands wait
 * in c->io.in, and the client, waiting for their answers, sends nothing that
 * would wake the session. */
static int
conn_may_go_on(const struct conn *c)
{
    return c->out_full && io_pending(&c->io) <= MS_OUT_HIGH;
}

/* What to poll c for this turn, and when it needs a turn anyway (*wake). */
static short
conn_watch(struct conn *c, int64_t now, int64_t *wake)
{
    short ev = 0;
    if (c->hold_until) { if (c->hold_until < *wake) *wake = c->hold_until; }
    else if (c->work) *wake = now; /* no input meanwhile, the next slice at once */
    else {
        ev = io_events(&c->io, !c->close_after_flush && !c->is_eof && !c->tls_after_flush,
                       io_pending(&c->io) || c->ops->streaming(c));
        if (io_tls_input(&c->io) || conn_may_go_on(c)) *wake = now;
    }
    if (c->io.deadline < *wake) *wake = c->io.deadline;
    if (!c->close_after_flush) { /* max_session_time: once, then twice over if busy then */
        int64_t end = c->born + c->ms->cfg->max_session_time * 1000LL;
        if (end <= now) end += c->ms->cfg->max_session_time * 1000LL;
        if (end < *wake) *wake = end;
    }
    return ev;
}

/* What poll() said of c (0: nothing, but decrypted input may wait). */
static void
conn_on_io(struct transport *io, short revents)
{
    struct conn *c = IO_OWNER(io, struct conn, io);
    if (!revents) {
        if (!io_tls_input(io) || c->hold_until || c->work) return;
        revents = POLLIN;
    }
    io->revents = revents; /* conn_run's turn comes */
    if (revents & (POLLIN | POLLERR | POLLHUP | POLLNVAL)) conn_read(c);
    if (revents & POLLOUT) conn_send(c);
}

/* One turn of a session: its buffered input, then its replies. */
static void
conn_run(struct conn *c)
{
    conn_process(c);
    /* the client sent all it will: the end, once the commands it sent before are answered
     * (output over MS_OUT_HIGH or a RETR stream still to go: later turns, on POLLOUT) */
    if (c->is_eof && !c->hold_until && !c->work && !c->commit_pending && !c->out_full && !c->ops->streaming(c)) {
        if (c->ops->lost_log && c->ops->in_transfer(c)) conn_log(c, "%s", c->ops->lost_log);
        conn_close_after_reply(c);
    }
    if (!c->hold_until) conn_send(c); /* answer now rather than a turn later */
}

/* ---- logins for every protocol (hashed in slices, failures slowed), relay rights ---- */

/* Plain-text logins are allowed here? (plaintext_auth = yes | no | local) */
static int
conn_plaintext_ok(const struct conn *c)
{
    int pt = c->ms->cfg->plaintext_auth;
    return c->io.tls || pt == PT_YES || (pt == PT_LOCAL && c->is_loopback);
}

/* What a login is checked against, for every protocol and `checkpassword`:
 * the key of the mailbox that login names, "user@domain" or a bare local
 * part that is a mailbox of exactly one domain (*u set, and *d its domain),
 * else a dummy key of the same cost (*u NULL). A plain-text password of a
 * config that was not served (cfg_hash_plain) is hashed here. */
static const struct pass_key auth_dummy_key = {MS_PBKDF2_ITER, 16, "mailsrv:no-such!", {0}};
static const struct pass_key *
auth_find(struct ms_config *cfg, const char *login, struct cfg_user **u, const struct cfg_domain **d)
{
    const char *at = strrchr(login, '@');
    char local[MS_LOCAL_MAX + 1];
    int i, found = 0;
    *u = NULL;
    *d = NULL;
    if (at && (size_t)(at - login) <= MS_LOCAL_MAX) {
        memcpy(local, login, (size_t)(at - login));
        local[at - login] = 0;
        if ((*d = cfg_find_domain(cfg, at + 1)) != NULL) *u = cfg_find_user(*d, local);
    } else if (!at) {
        for (i = 0; i < cfg->ndomains; i++) {
            struct cfg_user *x = cfg_find_user(&cfg->domains[i], login);
            if (x) { found++; *u = x; *d = &cfg->domains[i]; }
        }
        if (found != 1) *u = NULL;
    }
    if (!*u) return &auth_dummy_key;
    if (!(*u)->has_key) {
        pass_key_make((*u)->pass, MS_PBKDF2_ITER, &(*u)->key);
        (*u)->has_key = 1;
    }
    return &(*u)->key;
}

/* Starts a login (auth_find). Every attempt costs one PBKDF2 of
 * MS_PBKDF2_ITER iterations (INI plain-text passwords were hashed at load; a
 * name that is no mailbox runs the same against a dummy), so its time does
 * not tell which mailboxes exist. The loop runs it (login_step), then
 * login_done() answers. */
static void
auth_begin(struct conn *c, const char *login, const char *pass)
{
    const char *at = strrchr(login, '@');
    const struct pass_key *k;
    const struct cfg_domain *d;
    struct cfg_user *u;
    struct login *l = xrealloc(NULL, sizeof *l);
    char local[MS_LOCAL_MAX + 1];
    memset(l, 0, sizeof *l);
    ms_strlcpy(l->user, login, sizeof l->user);
    c->login = l;
    c->work = login_step;
    if (c->ms->cfg->capture && at && (size_t)(at - login) <= MS_LOCAL_MAX) { /* any captured address, any password */
        char a[MS_DOMAIN_MAX + 1]; /* an IDN by its A-label, as the capture stored it (smtp_do_rcpt) */
        memcpy(local, login, (size_t)(at - login));
        local[at - login] = 0;
        l->no_check = cfg_safe_component(local, MS_LOCAL_MAX) && idna_to_ascii(at + 1, a, sizeof a) == 0 &&
                      cfg_valid_domain(a) && ms_fmt(l->mailbox, sizeof l->mailbox, "%s@%s", local, a) >= 0;
        ms_lower(l->mailbox);
        return;
    }
    k = auth_find(c->ms->cfg, login, &u, &d);
    if (u && ms_fmt(l->mailbox, sizeof l->mailbox, "%s@%s", u->name, d->name) >= 0) l->found = 1;
    else k = &auth_dummy_key;
    memcpy(l->want, k->dk, 32);
    pbkdf2_begin(&l->st, pass, k->salt, k->saltlen, k->iter);
}

/* A failed login: logged in one fixed form for fail2ban, and answered after
 * a delay that doubles with each failure from the same client (address or
 * IPv6 /64: client_key) in the last 15 minutes (1, 2, 4 ... 30 s), so
 * guessing from many connections is as slow as from one. Returns when the
 * answer may go out. */
static int64_t
auth_failed(struct conn *c, const char *user)
{
    struct mailsrv *ms = c->ms;
    struct auth_penalty *p = NULL;
    char vis[100];
    int64_t now = os_now_ms(), delay = MS_AUTH_DELAY_MS;
    int i;
    for (i = 0; i < MS_AUTH_TRACK && !p; i++)
        if (strcmp(ms->pen[i].ip, c->client) == 0) p = &ms->pen[i];
    if (p && now - p->last > MS_AUTH_FORGET_S * 1000LL) p->fails = 0;
    if (!p) { /* a free slot, or the one that failed longest ago */
        for (p = &ms->pen[0], i = 1; i < MS_AUTH_TRACK; i++)
            if (ms->pen[i].last < p->last) p = &ms->pen[i];
        ms_strlcpy(p->ip, c->client, sizeof p->ip);
        p->fails = 0;
    }
    p->last = now;
    for (i = ++p->fails; i > 1 && delay < MS_AUTH_DELAY_MAX_MS; i--) delay *= 2;
    if (delay > MS_AUTH_DELAY_MAX_MS) delay = MS_AUTH_DELAY_MAX_MS;
    ms_visible(vis, sizeof vis, user, strlen(user));
    conn_log(c, "auth failed from %s user=<%s> failures=%d delay=%lldms", c->peer, vis, p->fails, (long long)delay);
    return now + delay;
}

static void
auth_succeeded(struct conn *c)
{
    int i;
    for (i = 0; i < MS_AUTH_TRACK; i++)
        if (strcmp(c->ms->pen[i].ip, c->client) == 0) c->ms->pen[i].fails = 0;
}

/* A failed login, in any protocol: the answer waits (auth_failed), and the
 * last failure allowed (MS_AUTH_MAX_FAILS) ends the session. */
static void
conn_login_failed(struct conn *c, const char *user)
{
    c->hold_until = auth_failed(c, user);
    if (++c->login_fails < MS_AUTH_MAX_FAILS) {
        conn_say(c, SAY_LOGIN_FAILED);
        return;
    }
    conn_say(c, SAY_LOGIN_CLOSING);
    conn_close_after_reply(c);
}

/* A session's long work is over (its answer is written or its next work set after this). */
static void
conn_work_done(struct conn *c)
{
    c->work = NULL;
    c->work_must_finish = c->work_started = 0;
}

/* A login's hash is done: the constant-time comparison, then the session's answer. */
static void
login_done(struct conn *c)
{
    struct login *l = c->login;
    int ok = l->no_check || (l->found & ms_secret_eq(l->want, 32, l->st.out, 32));
    c->login = NULL;
    conn_work_done(c);
    c->ops->login_done(c, ok ? l->mailbox : NULL, l->user);
    ms_wipe(l, sizeof *l);
    free(l);
}

/* A slice of a login's PBKDF2 (the session's work while it hashes). */
static int
login_step(struct conn *c, int64_t until)
{
    do {
        unsigned budget = MS_PBKDF2_STEP;
        if (pbkdf2_step(&c->login->st, &budget)) {
            login_done(c);
            return 1;
        }
    } while (os_now_us() < until);
    return 0;
}

static int
cfg_in_relay_nets(const struct ms_config *cfg, const char *peer)
{
    struct ms_addr a;
    int i;
    if (net_addr_parse(peer, 0, &a) != 0) return 0;
    for (i = 0; i < cfg->nrelay_nets; i++)
        if (net_in_cidr(&cfg->relay_nets[i], &a)) return 1;
    return 0;
}

/* Logged in (AUTH in SMTP, USER/PASS or AUTH in POP3): never closed to make
 * room, and may relay. */
static int
conn_logged_in(const struct conn *c)
{
    return c->ops->logged_in(c);
}

/* Relay permission: a client in relay_networks, or after AUTH. */
static int
conn_may_relay(const struct conn *c)
{
    if (conn_logged_in(c)) return 1;
    return c->in_relay_nets;
}

/* ---- Slots: nobody holds one forever (junk commands, session time, rate, room) ---- */

/* In the middle of something that ending would waste: the message's data
 * (from DATA to the 250), an AUTH exchange or a login being hashed, a
 * RETR/TOP stream, a delayed answer, a TLS start. Between MAIL and DATA a
 * session is not busy: MAIL and RCPTs cost a holder nothing to repeat (an
 * unknown RCPT every few minutes would keep a slot), and a client whose
 * transaction ends before DATA has been acknowledged nothing and retries. */
static int
conn_busy(const struct conn *c)
{
    return c->hold_until || c->tls_after_flush || c->work || c->commit_pending || c->ops->busy(c);
}

/* A junk command: NOOP, RSET, VRFY, HELP or an unknown one in SMTP (Postfix's
 * smtpd_junk_command_limit counts NOOP, VRFY, ETRN and RSET, and resets after
 * a delivered message); NOOP, RSET or an unknown one in POP3. Past
 * max_junk_commands the session ends: a NOOP loop cannot hold a slot. Returns
 * 1 when it did. */
static int
conn_junk(struct conn *c)
{
    if (++c->junk <= c->ms->cfg->max_junk_commands) return 0;
    conn_log(c, "too many junk commands (max_junk_commands = %ld): closing", c->ms->cfg->max_junk_commands);
    conn_say(c, SAY_JUNK);
    conn_close_after_reply(c);
    return 1;
}

/* max_session_time is over: called between two transactions (SMTP) or two
 * commands (POP3, outside a RETR stream), never in the middle of one. A POP3
 * session ended so does not apply its DELE marks (RFC 1939 6: no QUIT). */
static void
conn_session_over(struct conn *c)
{
    conn_log(c, "max_session_time (%lds) reached: closing", c->ms->cfg->max_session_time);
    conn_say(c, SAY_SESSION_OVER);
    conn_close_after_reply(c);
}

static int
conn_session_expired(const struct conn *c, int64_t now)
{
    return now - c->born >= c->ms->cfg->max_session_time * 1000LL;
}

static void
client_log_quiet(struct mailsrv *ms, struct client_stat *s)
{
    if (s->log_quiet)
        ms_log(ms, "refused from %s: %ld more refusal%s in the last minute", s->key, s->log_quiet, s->log_quiet > 1 ? "s" : "");
    s->log_quiet = 0;
}

/* The entry of a client (client_key); the one seen longest ago makes room. */
static struct client_stat *
client_stat(struct mailsrv *ms, const char *key, int64_t now)
{
    struct client_stat *s = NULL, *old = &ms->clients[0];
    int i;
    for (i = 0; i < MS_CLIENT_TRACK && !s; i++) {
        if (strcmp(ms->clients[i].key, key) == 0) s = &ms->clients[i];
        else if (ms->clients[i].seen < old->seen) old = &ms->clients[i];
    }
    if (!s) {
        s = old;
        client_log_quiet(ms, s);
        memset(s, 0, sizeof *s);
        ms_strlcpy(s->key, key, sizeof s->key);
    }
    s->seen = now;
    return s;
}

/* max_connect_rate: connections per minute from one client, refused ones
 * included, in fixed windows that start with the first connection (as
 * Postfix's anvil with anvil_rate_time_unit = 60s). Returns 1 when over. */
static int
client_rate_over(const struct mailsrv *ms, struct client_stat *s, int64_t now)
{
    if (now - s->rate_start >= MS_RATE_WINDOW_MS) { s->rate_start = now; s->rate_n = 0; }
    return ++s->rate_n > ms->cfg->max_connect_rate;
}

/* A refusal: logged when it is the client's first one in a minute; the
 * others are counted, and client_flush() logs the count when the minute is
 * over. A client that keeps trying costs one line a minute. */
static void
client_refused(struct mailsrv *ms, struct client_stat *s, int64_t now, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    if (s->log_start && now - s->log_start < MS_REFUSED_LOG_MS) {
        s->log_quiet++;
        if (!ms->clients_flush || s->log_start + MS_REFUSED_LOG_MS < ms->clients_flush)
            ms->clients_flush = s->log_start + MS_REFUSED_LOG_MS;
        return;
    }
    client_log_quiet(ms, s);
    s->log_start = now;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ms_log(ms, "%s", line);
}

/* The counts of refusals not logged, once their minute is over; the count
 * line starts the client's next minute. */
static void
client_flush(struct mailsrv *ms, int64_t now)
{
    int i;
    if (!ms->clients_flush || now < ms->clients_flush) return;
    ms->clients_flush = 0;
    for (i = 0; i < MS_CLIENT_TRACK; i++) {
        struct client_stat *s = &ms->clients[i];
        if (!s->log_quiet) continue;
        if (now - s->log_start >= MS_REFUSED_LOG_MS) {
            client_log_quiet(ms, s);
            s->log_start = now;
        } else if (!ms->clients_flush || s->log_start + MS_REFUSED_LOG_MS < ms->clients_flush) {
            ms->clients_flush = s->log_start + MS_REFUSED_LOG_MS;
        }
    }
}

/* ---- Sessions per client: what loop_accept counts, kept as sessions come and go ---- */

static size_t
client_count_home(const struct mailsrv *ms, const char *key)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *key; key++) h = (h ^ (unsigned char)*key) * 16777619u;
    return h & (ms->capclients - 1);
}

/* key's entry in ms->per_client, or the empty one where it would go (linear probing). */
static struct client_count *
client_count_slot(struct mailsrv *ms, const char *key)
{
    size_t i = client_count_home(ms, key);
    while (ms->per_client[i].n && strcmp(ms->per_client[i].key, key) != 0) i = (i + 1) & (ms->capclients - 1);
    return &ms->per_client[i];
}

static long
client_sessions(struct mailsrv *ms, const char *key)
{
    return ms->capclients ? client_count_slot(ms, key)->n : 0;
}

/* Empties e, moving back the entries after it that probing could no longer find. */
static void
client_count_remove(struct mailsrv *ms, struct client_count *e)
{
    size_t mask = ms->capclients - 1, hole = (size_t)(e - ms->per_client), j = hole, home;
    for (;;) {
        j = (j + 1) & mask;
        if (!ms->per_client[j].n) break;
        home = client_count_home(ms, ms->per_client[j].key);
        if (((j - home) & mask) >= ((j - hole) & mask)) { /* its home is not between the hole and j */
            ms->per_client[hole] = ms->per_client[j];
            hole = j;
        }
    }
    ms->per_client[hole].n = 0;
    ms->nclients--;
}

static void
client_count_add(struct mailsrv *ms, const char *key, long delta)
{
    struct client_count *e;
    if (delta < 0 && !client_sessions(ms, key)) return; /* never counted (the fuzz harnesses' sessions) */
    if ((ms->nclients + 1) * 2 > ms->capclients) { /* grow: every entry finds its new home */
        struct client_count *old = ms->per_client;
        size_t i, cap = ms->capclients;
        ms->capclients = cap ? cap * 2 : 64;
        ms->per_client = xrealloc(NULL, sizeof *old * ms->capclients);
        memset(ms->per_client, 0, sizeof *old * ms->capclients);
        for (i = 0; i < cap; i++)
            if (old[i].n) *client_count_slot(ms, old[i].key) = old[i];
        free(old);
    }
    e = client_count_slot(ms, key);
    if (!e->n) { ms_strlcpy(e->key, key, sizeof e->key); ms->nclients++; }
    e->n += delta;
    if (e->n <= 0) client_count_remove(ms, e);
}

/* A session begins (+1) or starts closing (-1): the counts loop_accept reads. */
static void
conn_count(struct conn *c, int delta)
{
    c->ms->nlive += delta;
    if (!c->in_relay_nets) c->ms->nlive_outside += delta;
    client_count_add(c->ms, c->client, delta);
}

/* Every slot is taken: the session to close for a newcomer, as Dovecot's
 * login processes close the oldest connection that has not logged in. Here:
 * the oldest that has not logged in, is not busy (conn_busy), is not from
 * relay_networks, has no reply waiting, and is MS_EVICT_AGE_MS old, so that
 * a newcomer is not closed by the next one. NULL if there is none. */
static struct conn *
slots_victim(struct mailsrv *ms, int64_t now)
{
    struct conn *v = NULL;
    int i;
    for (i = 0; i < ms->nconns; i++) {
        struct conn *c = ms->conns[i];
        if (c->is_closing || c->close_after_flush || conn_logged_in(c) || conn_busy(c) || io_pending(&c->io) ||
            now - c->born < MS_EVICT_AGE_MS || c->in_relay_nets)
            continue;
        if (!v || c->born < v->born) v = c;
    }
    return v;
}

static void
slots_evict(struct conn *v, int64_t now)
{
    conn_log(v, "closed to make room for a new client: not logged in, %llds old",
             (long long)((now - v->born) / 1000));
    if (!v->io.tls || tls_done(v->io.tls)) /* no reply can go out before the handshake */
    {
        conn_say(v, SAY_EVICTED);
        conn_send(v);
    }
    conn_drop(v);
}

/* ---- messages: DATA's file in SPOOL/.tmp, and those the server writes itself ---- */

/* A new message: its id, unique name and the open SPOOL/.tmp file. */
static int
msg_open(struct mailsrv *ms, struct store_msg *m)
{
    char dir[MS_PATH_DOMAIN];
    int64_t sec;
    long usec;
    int n;
    os_wallclock(&sec, &usec);
    m->when = (time_t)sec;
    snprintf(m->id, sizeof m->id, "%lld.M%06ldP%luQ%u", (long long)sec, usec, os_pid(), ++ms->msg_counter);
    /* The host part is cut so that the Maildir name with its sizes (",S=...,W=...", mdir_deliver)
     * stays a UIDL of at most 70 characters (RFC 1939 7): Dovecot's, the whole name, is not hashed */
    n = 70 - (int)strlen(m->id) - 1 - 2 * (3 + snprintf(NULL, 0, "%lld", 2 * (long long)ms->cfg->max_message_size));
    snprintf(m->name, sizeof m->name, "%s.%.*s", m->id, n < 1 ? 1 : n > 20 ? 20 : n, ms->cfg->hostname);
    for (n = 0; m->name[n]; n++) /* the host part must stay one path component */
        if (m->name[n] == '/' || m->name[n] == MS_MAILDIR_INFO || m->name[n] == ',') m->name[n] = '_';
    m->tmp_fd = -1;
    m->commit_err = NULL;
    if (ms_fmt(dir, sizeof dir, "%s/.tmp", ms->cfg->spool) < 0 ||
        ms_fmt(m->tmp_path, sizeof m->tmp_path, "%s/%s", dir, m->name) < 0)
        return -1;
    if ((m->tmp_fd = os_open(m->tmp_path, O_RDWR | O_CREAT | O_EXCL | MS_O_LINKS, 0600)) < 0 && errno == ENOENT &&
        store_mkdir(ms->cfg->spool, ms->cfg->dir) == 0 && store_mkdir(dir, ms->cfg->spool) == 0)
        m->tmp_fd = os_open(m->tmp_path, O_RDWR | O_CREAT | O_EXCL | MS_O_LINKS, 0600); /* the spool was removed */
    if (m->tmp_fd < 0) m->tmp_fd = -1;
    return m->tmp_fd < 0 ? -1 : 0;
}

/* Text of a message the server writes itself; counts its size and lines. */
static int
msg_write(struct store_msg *m, const char *p, size_t n)
{
    size_t i;
    if (m->write_failed || os_write_all(m->tmp_fd, p, n) < 0) { m->write_failed = 1; return -1; }
    m->size += (int64_t)n;
    for (i = 0; i < n; i++) { /* and what the relay needs to know of it (mime_conv), as DATA's end records */
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\n') { m->lines++; m->line_len = 0; continue; }
        if (ch & 0x80) m->eightbit = 1;
        if (++m->line_len > MS_TEXT_LINE_MAX - 2) m->longlines = 1;
    }
    m->body_known = 1; /* every octet of a message the server writes passes here */
    return 0;
}

/* Stores a message the server wrote (its first line is Return-Path) for t,
 * durably before returning, queues it for remote targets, and closes it. */
static int
msg_inject(struct mailsrv *ms, struct store_msg *m, const struct targets *t, const char **err)
{
    int r = -1;
    *err = NULL;
    m->hdr_lines = 1;
    if (!m->write_failed) r = store_message(ms->cfg, ms->qdir, m, t, err, NULL, NULL, NULL);
    if (r == 0) http_notify(ms, "new", store_of(ms->cfg)->maildir ? m->name : m->id, t, NULL);
    if (r == 0 && targets_remote(t)) relay_enqueue(ms, m->id);
    if (r != 0 && !*err) *err = "cannot write the message";
    os_close(m->tmp_fd);
    os_unlink(m->tmp_path);
    m->tmp_fd = -1;
    return r;
}

/* Does a chaos trigger fire now? Its SMTP code if so, else 0. */
static int
chaos_fires(struct mailsrv *ms, int which)
{
    unsigned char r[2];
    if (ms->chaos[which].prob <= 0 || os_random(r, sizeof r) != 0) return 0;
    return (r[0] << 8 | r[1]) % 100 < ms->chaos[which].prob ? ms->chaos[which].code : 0;
}

/*==== 10. SMTP server session ====*/
/*
 * RFC 5321 with PIPELINING (2920), SIZE (1870), 8BITMIME (6152),
 * ENHANCEDSTATUSCODES (2034, 3463), CHUNKING (3030: BDAT), AUTH PLAIN/LOGIN (4954)
 * and SMTPUTF8 (6531: UTF-8 paths in a transaction that declares it; headers
 * in UTF-8, RFC 6532, are taken in any transaction, as 8BITMIME's 8-bit text).
 * Handlers reply through conn_reply(); smtp_line() dispatches them through smtp_cmds[].
 */

static void
smtp_tx_reset(struct conn *c)
{
    struct smtp_sess *s = &c->u.smtp;
    struct dirset *owed[2];
    int i, k;
    /* mbox appends queued for a commit it will not see, or still being made: the group commit's
     * batch to come and the one being committed (its own set, s->dirs, is freed below) */
    owed[0] = &c->ms->commit_dirs;
    owed[1] = &c->ms->commit_batch;
    for (i = 0; i < 2; i++) {
        dirset_forget(owed[i], &s->msg, i == 1);
        for (k = 0; k < s->nposts; k++) dirset_forget(owed[i], &s->posts[k].m, i == 1);
    }
    if (s->msg.tmp_fd >= 0) {
        os_close(s->msg.tmp_fd);
        os_unlink(s->msg.tmp_path);
    }
    s->msg.tmp_fd = -1;
    s->msg.body_known = s->msg.eightbit = s->msg.longlines = 0; /* a receipt that does not say: the worst case */
    free(s->wbuf);
    s->wbuf = NULL;
    s->wlen = 0;
    targets_free(&s->targets);
    memset(&s->dsn, 0, sizeof s->dsn);
    free(s->notes);
    s->notes = NULL;
    s->nnotes = 0;
    free(s->lists);
    s->lists = NULL;
    free(s->rcpts);
    s->rcpts = NULL;
    s->nlists = 0;
    if (s->delivering) { /* refused or gone half-way: no copy stays (a session whose commit is owed */
        store_job_abort(&s->job); /* is not freed before it ends: loop_sweep, loop_commit_rest) */
        store_rollback(s->undo, s->nundo);
        s->delivering = 0;
    }
    free(s->undo);
    s->undo = NULL;
    s->nundo = 0;
    list_posts_free(s->posts, s->nposts);
    s->posts = NULL;
    s->nposts = 0;
    free(s->dirs.v);
    free(s->dirs.mb);
    memset(&s->dirs, 0, sizeof s->dirs);
    if (c->work == smtp_deliver_step) conn_work_done(c);
    c->commit_pending = c->commit_sealed = 0;
    s->from[0] = s->first_rcpt[0] = 0;
    s->nrcpt = 0;
    s->utf8 = 0;
    s->tx_error = TXERR_NONE;
    if (s->state > SMTP_S_READY) s->state = SMTP_S_READY;
    s->rx.raw = 0;
}

static void
smtp_greet(struct conn *c)
{
    c->u.smtp.msg.tmp_fd = -1;
    conn_reply(c, "220 %s ESMTP mailsrv", c->ms->cfg->hostname);
}

static void
lmtp_greet(struct conn *c)
{
    c->u.smtp.msg.tmp_fd = -1;
    conn_reply(c, "220 %s LMTP mailsrv", c->ms->cfg->hostname); /* RFC 2033 4.1 */
}

/* The answer that ends a transaction (after the final dot or BDAT LAST, or
 * its refusal): in LMTP one for each accepted RCPT, in their order, the
 * recipient after the enhanced code (RFC 2033 4.2). fmt begins "DDD X.Y.Z ". */
static void
smtp_tx_reply(struct conn *c, const char *fmt, ...)
{
    struct smtp_sess *s = &c->u.smtp;
    char text[512];
    size_t pre = 4;
    va_list ap;
    int i;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (c->proto != PROTO_LMTP || !s->rcpts || (s->state == SMTP_S_BDAT && !s->bdat_last)) { /* a BDAT chunk's error */
        conn_reply(c, "%s", text);
        return;
    }
    if (isdigit((unsigned char)text[pre])) pre += strcspn(text + pre, " ") + 1;
    if (pre > strlen(text)) pre = strlen(text);
    for (i = 0; i < s->nrcpt; i++) conn_reply(c, "%.*s<%s> %s", (int)pre, text, s->rcpts[i], text + pre);
}

static void
smtp_hello(struct conn *c, const char *args, int esmtp)
{
    struct smtp_sess *s = &c->u.smtp;
    if (!*args || strchr(args, ' ') || strlen(args) > MS_DOMAIN_MAX) { /* RFC 5321 4.5.3.1.2 */
        conn_reply(c, "501 5.5.4 Syntax: %s hostname", c->proto == PROTO_LMTP ? "LHLO" : esmtp ? "EHLO" : "HELO");
        return;
    }
    smtp_tx_reset(c);
    ms_visible(s->helo, sizeof s->helo, args, strlen(args));
    s->esmtp = esmtp;
    s->state = SMTP_S_READY;
    if (!esmtp) { conn_reply(c, "250 %s", c->ms->cfg->hostname); return; }
    conn_reply(c, "250-%s", c->ms->cfg->hostname);
    if (c->proto == PROTO_LMTP) { /* no STARTTLS, no AUTH: nobody logs in; mail only for here */
        conn_reply(c, "250-PIPELINING");
        conn_reply(c, "250-SIZE %lld", (long long)c->ms->cfg->max_message_size);
        conn_reply(c, "250-8BITMIME");
        conn_reply(c, "250-CHUNKING");
        conn_reply(c, "250-SMTPUTF8"); /* an MTA delivers UTF-8 addresses only where it is offered */
        conn_reply(c, "250 ENHANCEDSTATUSCODES");
        return;
    }
    conn_reply(c, "250-PIPELINING");
    conn_reply(c, "250-SIZE %lld", (long long)c->ms->cfg->max_message_size);
    conn_reply(c, "250-8BITMIME");
    conn_reply(c, "250-CHUNKING"); /* RFC 3030 */
    conn_reply(c, "250-DSN"); /* RFC 3461 */
    conn_reply(c, "250-SMTPUTF8"); /* RFC 6531 3.1 */
    if (c->ms->cfg->tls && !c->io.tls) conn_reply(c, "250-STARTTLS");
    if (conn_plaintext_ok(c) && !c->ms->cfg->capture) conn_reply(c, "250-AUTH PLAIN LOGIN");
    conn_reply(c, "250 ENHANCEDSTATUSCODES");
}

static void
smtp_auth_fail(struct conn *c, const char *user)
{
    c->u.smtp.auth_step = AUTH_NONE;
    conn_login_failed(c, user); /* RFC 4954 does not forbid slowing guesses */
}

static void
smtp_auth_try(struct conn *c, const char *user, const char *pass)
{
    c->u.smtp.auth_step = AUTH_NONE;
    auth_begin(c, user, pass); /* smtp_auth_done() answers once it is hashed */
}

/* The outcome of a login: mailbox NULL if it failed. */
static void
smtp_auth_done(struct conn *c, const char *mailbox, const char *user)
{
    struct smtp_sess *s = &c->u.smtp;
    if (!mailbox) { smtp_auth_fail(c, user); return; }
    auth_succeeded(c);
    ms_strlcpy(s->auth_user, mailbox, sizeof s->auth_user);
    conn_log(c, "auth ok %s", mailbox);
    conn_reply(c, "235 2.7.0 Authentication successful");
}

/* One line of an AUTH exchange (after a 334). */
static void
smtp_auth_step(struct conn *c, const char *line)
{
    struct smtp_sess *s = &c->u.smtp;
    unsigned char raw[512];
    char user[MS_PATH_MAX], pass[256];
    long n;
    if (strcmp(line, "*") == 0) { /* RFC 4954 4: the client cancels */
        s->auth_step = AUTH_NONE;
        conn_reply(c, "501 5.0.0 Authentication cancelled");
        return;
    }
    if (s->auth_step == AUTH_PLAIN_WAIT) {
        if (sasl_plain_decode(line, user, sizeof user, pass, sizeof pass) != 0) { smtp_auth_fail(c, "?"); return; }
        smtp_auth_try(c, user, pass);
        return;
    }
    n = b64_decode(line, strlen(line), raw, sizeof raw - 1);
    if (n < 0) { s->auth_step = AUTH_NONE; conn_reply(c, "501 5.5.2 Cannot decode response"); return; }
    raw[n] = 0;
    if (s->auth_step == AUTH_LOGIN_USER) {
        if (ms_strlcpy(s->login_user, (char *)raw, sizeof s->login_user) != 0 || strlen((char *)raw) != (size_t)n) {
            smtp_auth_fail(c, "?");
            return;
        }
        s->auth_step = AUTH_LOGIN_PASS;
        conn_reply(c, "334 UGFzc3dvcmQ6"); /* "Password:" */
        return;
    }
    if (strlen((char *)raw) != (size_t)n) { smtp_auth_fail(c, s->login_user); return; }
    smtp_auth_try(c, s->login_user, (char *)raw);
}

static void
smtp_do_auth(struct conn *c, const char *args)
{
    struct smtp_sess *s = &c->u.smtp;
    char mech[32];
    const char *init = cmd_split(args, mech, sizeof mech);
    int chaos;
    if (s->auth_user[0]) { conn_reply(c, "503 5.5.1 Already authenticated"); return; }
    if ((chaos = chaos_fires(c->ms, CHAOS_AUTH)) != 0) { conn_reply(c, "%d Chaos: authentication refused", chaos); return; }
    if (c->ms->cfg->capture) { conn_reply(c, "503 5.5.1 AUTH is not needed in capture mode"); return; }
    if (!conn_plaintext_ok(c)) { conn_reply(c, "538 5.7.11 Encryption required for requested authentication mechanism"); return; }
    if (strcmp(mech, "PLAIN") == 0) {
        s->auth_step = AUTH_PLAIN_WAIT;
        if (*init && strcmp(init, "=") != 0) smtp_auth_step(c, init);
        else if (*init) smtp_auth_fail(c, "?");
        else conn_reply(c, "334 ");
    } else if (strcmp(mech, "LOGIN") == 0) {
        if (*init) { s->auth_step = AUTH_LOGIN_USER; smtp_auth_step(c, init); }
        else { s->auth_step = AUTH_LOGIN_USER; conn_reply(c, "334 VXNlcm5hbWU6"); } /* "Username:" */
    } else {
        conn_reply(c, "504 5.5.4 Unrecognized authentication type");
    }
}

/* "FROM:" / "TO:" prefix, case-insensitive. */
static const char *
smtp_after_prefix(const char *args, const char *prefix)
{
    size_t n = strlen(prefix);
    return ms_strncaseeq(args, prefix, n) ? args + n : NULL;
}

/* Free space: MAIL is refused while the spool's or the queue's file system
 * has less than 1.5 x max_message_size (plus a declared SIZE) free, as Postfix
 * refuses below queue_minfree (which it raises to that floor). A statvfs per
 * MAIL and folder, as Postfix's smtpd does per MAIL: a few microseconds. */
static int
smtp_low_space(struct conn *c, int64_t size)
{
    const struct mailsrv *ms = c->ms;
    int64_t need = MS_SPACE_RESERVE(ms->cfg->max_message_size) + size, free_b;
    int i;
    for (i = 0; i < 2; i++) { /* the queue only once it exists (else: no relaying yet) */
        const char *dir = i ? ms->qdir : ms->cfg->spool;
        if ((free_b = os_free_space(dir)) < 0 || free_b >= need) continue;
        conn_log(c, "MAIL refused: %s has %lld KB free, less than %lld KB (1.5 x max_message_size%s)", dir,
                 (long long)(free_b / 1024), (long long)(need / 1024), size ? " + SIZE" : "");
        return 1;
    }
    return 0;
}

static void
smtp_do_mail(struct conn *c, const char *args)
{
    struct smtp_sess *s = &c->u.smtp;
    char local[MS_PATH_MAX + 1], domain[MS_DOMAIN_MAX + 1], param[MS_SMTP_LINE_MAX + MS_DSN_MAIL_EXTRA];
    const char *p = smtp_after_prefix(args, "FROM:"), *rest;
    struct dsn_mail dsn;
    int64_t size = 0;
    int chaos, k, bad, utf8 = 0, seen_size = 0, seen_body = 0;
    memset(&dsn, 0, sizeof dsn);
    if (c->proto == PROTO_SUBMISSION && !s->auth_user[0]) { conn_reply(c, "530 5.7.0 Authentication required"); return; }
    if ((chaos = chaos_fires(c->ms, CHAOS_SENDER)) != 0) { conn_reply(c, "%d Chaos: sender refused", chaos); return; }
    if (!p || !(rest = smtp_parse_path(p, local, domain)) || (local[0] && !domain[0])) {
        /* RFC 5321 4.5.3.1.10: "501 Path too long"; RFC 3463 X.1.7: bad sender address syntax */
        conn_reply(c, "501 5.1.7 %s", p && !rest && errno == ENAMETOOLONG ? "Path too long" : "Bad sender address syntax");
        return;
    }
    while (*rest) { /* ESMTP parameters (RFC 5321 4.1.2 Mail-parameters) */
        size_t n = strcspn(rest, " ");
        memcpy(param, rest, n);
        param[n] = 0;
        rest += n;
        while (*rest == ' ') rest++;
        if (!s->esmtp) { conn_reply(c, "555 5.5.4 Parameters need EHLO"); return; }
        if (ms_strncaseeq(param, "SIZE=", 5)) {
            /* RFC 1870 5: size-value ::= 1*20DIGIT (strtoull alone would take "-1" and "+5") */
            const char *d = param + 5;
            unsigned long long v = 0;
            for (; isdigit((unsigned char)*d) && d - param < 5 + 20; d++) /* 20 digits may not fit: then "too big" */
                v = v > (ULLONG_MAX - 9) / 10 ? ULLONG_MAX : v * 10 + (unsigned)(*d - '0');
            if (d == param + 5 || *d || seen_size++) { conn_reply(c, "501 5.5.4 Bad or repeated SIZE parameter"); return; }
            if (v > (unsigned long long)c->ms->cfg->max_message_size) { /* RFC 1870 6.1 */
                conn_reply(c, "552 5.3.4 Message size exceeds fixed maximum message size");
                return;
            }
            size = (int64_t)v;
        } else if (ms_strncaseeq(param, "BODY=", 5)) {
            if ((!ms_strcaseeq(param + 5, "7BIT") && !ms_strcaseeq(param + 5, "8BITMIME")) || seen_body++) {
                conn_reply(c, "501 5.5.4 Unsupported or repeated BODY parameter");
                return;
            }
        } else if (c->proto != PROTO_LMTP && (k = dsn_mail_param(param, &dsn)) != 0) { /* RFC 3461 4.3, 4.4 */
            if (k < 0) { conn_reply(c, "501 5.5.4 Bad or repeated DSN parameter (RET, ENVID)"); return; }
        } else if (ms_strcaseeq(param, "SMTPUTF8")) { /* RFC 6531 3.4: no value */
            if (utf8++) { conn_reply(c, "501 5.5.4 Repeated SMTPUTF8 parameter"); return; }
        } else if (!ms_strncaseeq(param, "AUTH=", 5)) {
            conn_reply(c, "555 5.5.4 Unsupported parameter");
            return;
        }
    }
    if ((bad = smtp_path_utf8(local, domain, utf8)) != 0) {
        conn_reply(c, "%s", bad > 0 ? MS_SMTP_NEED_UTF8 : "501 5.1.7 Bad sender address syntax");
        return;
    }
    if (local[0]) {
        /* it goes into headers: no control character, no backslash, no space (and UTF-8 only as above) */
        if (ms_fmt(s->from, sizeof s->from, "%s@%s", local, domain) < 0) { conn_reply(c, "501 5.1.7 Sender too long"); return; }
        if (!utf8_valid(s->from, strlen(s->from)) || strpbrk(s->from, " \\")) {
            s->from[0] = 0;
            conn_reply(c, "501 5.1.7 Bad sender address syntax");
            return;
        }
        if (s->auth_user[0] && c->ms->cfg->sender_login == SL_STRICT && !cfg_sender_owned(c->ms->cfg, s->from, s->auth_user)) {
            /* Postfix's reject_sender_login_mismatch, in its words; RFC 3463 5.7.1: not authorised */
            conn_log(c, "sender <%s> refused: not owned by %s", s->from, s->auth_user);
            conn_reply(c, "553 5.7.1 <%s>: Sender address rejected: not owned by user %s", s->from, s->auth_user);
            s->from[0] = 0;
            return;
        }
    } else {
        s->from[0] = 0;
    }
    if (smtp_low_space(c, size)) { /* RFC 1870 6.1, RFC 3463 X.3.1: mail system full */
        conn_reply(c, "452 4.3.1 Insufficient system storage");
        return;
    }
    s->dsn = dsn;
    s->state = SMTP_S_MAIL;
    s->utf8 = utf8;
    conn_reply(c, "250 2.1.0 Ok");
}

/* The DSN request of the RCPT that added targets n0.. (RFC 3461 6.2.7): one
 * mailbox keeps it (its SUCCESS is reported here once the message is
 * durable if the mailbox is local, by the relay if not); an alias of
 * several is "expanded" now (its SUCCESS is reported here) and its members
 * keep the rest of it. */
static void
smtp_rcpt_dsn(struct conn *c, int n0, int notify, const char *orcpt, const char *local, const char *domain)
{
    struct smtp_sess *s = &c->u.smtp;
    int n = s->targets.n - n0;
    struct dsn_note *d;
    if (n <= 0) return; /* a mailbox already named: its first RCPT's request stands */
    if ((notify & DSN_SUCCESS) && (n > 1 || !s->targets.remote[n0])) {
        s->notes = xrealloc(s->notes, sizeof *s->notes * (size_t)(s->nnotes + 1));
        d = &s->notes[s->nnotes++];
        memset(d, 0, sizeof *d);
        if (n == 1) ms_strlcpy(d->addr, s->targets.v[n0], sizeof d->addr);
        else if (ms_fmt(d->addr, sizeof d->addr, "%s@%s", local, domain) < 0) ms_strlcpy(d->addr, local, sizeof d->addr);
        ms_strlcpy(d->orcpt, orcpt, sizeof d->orcpt);
        d->expanded = n > 1;
        if (n > 1 && (notify &= ~DSN_SUCCESS) == 0) notify = DSN_NEVER;
    }
    targets_set_dsn(&s->targets, n0, notify, orcpt);
}

static void
smtp_do_rcpt(struct conn *c, const char *args)
{
    struct smtp_sess *s = &c->u.smtp;
    const struct ms_config *cfg = c->ms->cfg;
    char local[MS_PATH_MAX + 1], domain[MS_DOMAIN_MAX + 1], token[MS_LOCAL_MAX + 1], rcpt[MS_PATH_MAX];
    char param[MS_SMTP_LINE_MAX + MS_DSN_RCPT_EXTRA], orcpt[MS_ORCPT_MAX + 1];
    const char *p = smtp_after_prefix(args, "TO:"), *rest;
    const struct cfg_list *l;
    int r, kind, n0 = s->targets.n, notify = 0;
    if (!p || !(rest = smtp_parse_path(p, local, domain)) || !local[0]) {
        /* RFC 5321 4.5.3.1.10: "501 Path too long"; RFC 3463 X.1.3: bad destination address syntax
         * (as Postfix's 501 5.1.3); refused here, never accepted and then lost (4.5.3.1.3) */
        conn_reply(c, "501 5.1.3 %s", p && !rest && errno == ENAMETOOLONG ? "Path too long" : "Bad recipient address syntax");
        return;
    }
    orcpt[0] = 0;
    while (*rest) { /* RFC 3461 4.1, 4.2: NOTIFY, ORCPT */
        size_t n = strcspn(rest, " ");
        memcpy(param, rest, n);
        param[n] = 0;
        rest += n;
        while (*rest == ' ') rest++;
        if (!s->esmtp) { conn_reply(c, "555 5.5.4 Parameters need EHLO"); return; }
        if (c->proto == PROTO_LMTP || (r = dsn_rcpt_param(param, &notify, orcpt)) == 0) {
            conn_reply(c, "555 5.5.4 Unsupported parameter"); /* LHLO offers no DSN: the MTA in front reports */
            return;
        }
        if (r < 0) { conn_reply(c, "501 5.5.4 Bad or repeated DSN parameter (NOTIFY, ORCPT)"); return; }
    }
    if ((r = smtp_path_utf8(local, domain, s->utf8)) != 0) {
        conn_reply(c, "%s", r > 0 ? MS_SMTP_NEED_UTF8 : "501 5.1.3 Bad recipient address syntax");
        return;
    }
    if (s->nrcpt >= cfg->max_recipients) { conn_reply(c, "452 4.5.3 Too many recipients"); return; }
    if ((r = chaos_fires(c->ms, CHAOS_RCPT)) != 0) { conn_reply(c, "%d Chaos: recipient refused", r); return; }
    if (!domain[0]) {
        /* RFC 5321 4.5.1: <Postmaster> without a domain must be accepted */
        if (!ms_strcaseeq(local, "postmaster") || cfg->ndomains == 0) {
            conn_reply(c, "501 5.1.3 Bad recipient address syntax");
            return;
        }
        ms_strlcpy(domain, cfg->domains[0].name, sizeof domain);
    }
    if (!cfg->capture && !cfg_find_domain(cfg, domain) && c->proto == PROTO_LMTP) {
        conn_reply(c, "550 5.1.2 Not a domain of this server (LMTP delivers only here)"); /* the domain is not checked: not echoed */
        return;
    } else if (!cfg->capture && !cfg_find_domain(cfg, domain)) {
        /* RFC 5321 3.6.2: a relay only for its own clients. Source routes were
         * dropped by the parser; '%' and '!' are plain characters here. */
        if (!conn_may_relay(c)) { conn_reply(c, "550 5.7.1 Relaying denied"); return; }
        if (!addr_dot_string(local) || !addr_remote_domain(domain)) {
            conn_reply(c, "553 5.1.3 Cannot relay to this address (quoted local part or address literal)");
            return;
        }
        r = targets_add(&s->targets, local, domain, 1) == 0 ? RES_OK : RES_TOOLONG;
    } else if (!cfg_safe_component(local, MS_LOCAL_MAX)) {
        conn_reply(c, "550 5.1.3 Bad recipient address syntax");
        return;
    } else if (cfg->capture) {
        char a[MS_DOMAIN_MAX + 1]; /* an IDN as its A-label, as the domains of the INI (cfg_find_domain) */
        if (idna_to_ascii(domain, a, sizeof a) != 0 || !cfg_valid_domain(a)) {
            conn_reply(c, "550 5.1.2 Bad destination domain");
            return;
        }
        ms_strlcpy(domain, a, sizeof domain);
        r = targets_add(&s->targets, local, domain, 0) == 0 ? RES_OK : RES_TOOLONG;
    } else if ((l = list_match(cfg, local, domain, &kind, token, sizeof token)) != NULL) {
        if (ms_fmt(rcpt, sizeof rcpt, "%s@%s", local, l->domain) < 0) r = RES_TOOLONG;
        else if (list_rcpt(c, l, kind, token, rcpt) != 0) { s->targets.n = n0; return; }
        else r = RES_OK;
    } else {
        r = cfg_resolve(cfg, local, domain, &s->targets, 0);
    }
    if (r != RES_OK) s->targets.n = n0; /* a refused RCPT leaves no part of a group behind */
    if (r == RES_UNKNOWN) { conn_reply(c, "550 5.1.1 <%s@%s>: User unknown", local, domain); return; }
    if (r == RES_TOOLONG) { /* the parser keeps paths to 256 octets: only a member of a group can be longer */
        conn_log(c, "<%s@%s>: an address it stands for does not fit in 255 octets", local, domain);
        conn_reply(c, "550 5.1.3 <%s@%s>: an address it stands for is too long", local, domain);
        return;
    }
    if (r != RES_OK) { conn_reply(c, "550 5.4.6 Routing loop detected"); return; }
    smtp_rcpt_dsn(c, n0, notify, orcpt, local, domain);
    if (!s->nrcpt && ms_fmt(s->first_rcpt, sizeof s->first_rcpt, "%s@%s", local, domain) < 0)
        s->first_rcpt[0] = 0; /* <Postmaster> of a long first domain: Received: has no "for" (it is optional) */
    if (c->proto == PROTO_LMTP) {
        char given[MS_PATH_MAX + MS_DOMAIN_MAX + 2];
        s->rcpts = xrealloc(s->rcpts, sizeof *s->rcpts * (size_t)(s->nrcpt + 1));
        snprintf(given, sizeof given, "%s@%s", local, domain);
        ms_visible(s->rcpts[s->nrcpt], sizeof s->rcpts[0], given, strlen(given)); /* it goes into a reply line */
    }
    s->nrcpt++;
    s->state = SMTP_S_RCPT;
    conn_reply(c, "250 2.1.5 Ok");
}

static int
smtp_write_data(struct smtp_sess *s, const char *p, size_t n)
{
    if (s->tx_error) return -1;
    if (os_write_all(s->msg.tmp_fd, p, n) < 0) { s->tx_error = TXERR_IO; return -1; }
    s->written += (int64_t)n;
    if (s->sync_data && s->written - s->synced >= MS_DATA_SYNC_BYTES) { /* a large message: to disk as it comes */
        if (os_fsync(s->msg.tmp_fd) != 0) { s->tx_error = TXERR_IO; return -1; }
        s->synced = s->written;
    }
    return 0;
}

/* The Received: header's "with" (RFC 5321 4.4, RFC 3848; RFC 6531 3.7.3 for SMTPUTF8). */
static const char *
smtp_with(const struct conn *c)
{
    const struct smtp_sess *s = &c->u.smtp;
    if (c->proto == PROTO_LMTP) return s->utf8 ? "UTF8LMTP" : "LMTP"; /* no AUTH or TLS on LMTP */
    if (s->utf8) {
        static const char *const w[4] = {"UTF8SMTP", "UTF8SMTPA", "UTF8SMTPS", "UTF8SMTPSA"};
        return w[(s->auth_user[0] ? 1 : 0) + (c->io.tls ? 2 : 0)];
    }
    return s->auth_user[0] ? "ESMTPA" : s->esmtp ? "ESMTP" : "SMTP";
}

/* The message's file in SPOOL/.tmp and its first lines (Return-Path:,
 * Received:), for DATA or the first BDAT; -1 (answered 451) if it cannot be made. */
static int
smtp_msg_begin(struct conn *c, int raw)
{
    struct smtp_sess *s = &c->u.smtp;
    struct mailsrv *ms = c->ms;
    char date[64];
    struct buf hdr = {0};
    const char *host = ms->cfg->hostname;
    /* Received: ... for <the one recipient>, an ASCII one: a UTF-8 address (SMTPUTF8) there would
     * make 8-bit header text of the server's own, which the text's facts (8-bit or not, as the client
     * sent it) would not show: relayed by an alias to a hop without 8BITMIME, it would go out as it is */
    int for1 = s->nrcpt == 1 && s->first_rcpt[0] && ms_is_ascii(s->first_rcpt);
    if (msg_open(ms, &s->msg) != 0) {
        conn_log(c, "cannot create %s: %s", s->msg.tmp_path, strerror(errno));
        conn_reply(c, "451 4.3.0 Local error: cannot store the message now");
        return -1;
    }
    ms_strlcpy(s->msg.sender, s->from, sizeof s->msg.sender);
    s->msg.dsn = s->dsn;
    s->msg.smtputf8 = s->utf8;
    ms_rfc5322_date(date, sizeof date, s->msg.when);
    /* a growing buffer: with the longest sender, HELO name, host name and recipient the header
     * is over 1 KB (a fixed buffer once let snprintf's untruncated length send stack bytes) */
    buf_printf(&hdr, "Return-Path: <%s>\nReceived: from %s ([%s])\n\tby %s (mailsrv) with %s id %s%s%s%s;\n\t%s\n",
               s->from, s->helo, c->peer, host,
               smtp_with(c), s->msg.id,
               for1 ? "\n\tfor <" : "", for1 ? s->first_rcpt : "", for1 ? ">" : "", date);
    data_rx_init(&s->rx);
    s->rx.raw = raw;
    s->msg.size = (int64_t)hdr.len;
    s->msg.lines = s->msg.hdr_lines = 4 + for1; /* the header lines written above */
    s->wbuf = xrealloc(NULL, MS_DATA_BUF);
    s->wlen = 0;
    s->written = s->synced = 0;
    s->sync_data = store_of(ms->cfg)->maildir || targets_remote(&s->targets); /* an mbox gets a copy, fsynced there */
    if (!hdr.p) s->tx_error = TXERR_IO; /* vsnprintf failed: refused at the final dot */
    else smtp_write_data(s, hdr.p, hdr.len);
    buf_free(&hdr);
    return 0;
}

static void
smtp_do_data(struct conn *c, const char *args)
{
    struct smtp_sess *s = &c->u.smtp;
    if (*args) { conn_reply(c, "501 5.5.4 DATA takes no arguments"); return; }
    if (smtp_msg_begin(c, 0) != 0) return;
    s->state = SMTP_S_DATA;
    conn_reply(c, "354 End data with <CR><LF>.<CR><LF>");
}

/* BDAT chunk-size [LAST] (RFC 3030 2, 4.2): the chunk's octets follow the
 * line at once, and are read (smtp_bdat_feed) even when the command is
 * refused, so that the session stays in step with the client. */
static void
smtp_do_bdat(struct conn *c, const char *args)
{
    struct smtp_sess *s = &c->u.smtp;
    char num[24];
    const char *rest = cmd_split(args, num, sizeof num), *p;
    int64_t n = 0;
    for (p = num; *p && isdigit((unsigned char)*p) && p - num < 18; p++) n = n * 10 + (*p - '0');
    if (!num[0] || *p || (*rest && !ms_strcaseeq(rest, "LAST"))) {
        /* the octets that follow cannot be told from commands: the session cannot go on */
        conn_reply(c, "501 5.5.4 Syntax: BDAT chunk-size [LAST]");
        conn_close_after_reply(c);
        return;
    }
    s->bdat_left = s->bdat_size = n;
    s->bdat_last = *rest != 0;
    s->bdat_skip = 1; /* a refusal is answered now: the chunk's octets make no answer of their own */
    if (s->state < SMTP_S_RCPT) /* as DATA's */
        conn_reply(c, "503 5.5.1 %s", s->state == SMTP_S_MAIL ? "No valid recipients" : "Need MAIL and RCPT first");
    else if (s->state == SMTP_S_RCPT && smtp_msg_begin(c, 1) != 0) {} /* answered 451 */
    else { s->bdat_skip = 0; s->state = SMTP_S_BDAT; }
    if (n == 0) smtp_bdat_feed(c, "", 0);
}

/* The final dot: refuse, or deliver and answer only once all copies are durable. */
static void
smtp_data_end(struct conn *c)
{
    struct smtp_sess *s = &c->u.smtp;
    int64_t body = s->rx.bytes;
    s->msg.size += body;
    s->msg.lines += s->rx.lines;
    /* Lines over 998 octets (RFC 5321 4.5.3.1.6) are accepted and stored as sent, as Postfix does
     * (its line_length_limit only bounds memory): the file is written as the bytes come, no line
     * is ever held whole. The relay wraps or re-encodes them for the next hop (mime_conv). */
    s->msg.body_known = 1;
    s->msg.eightbit = s->rx.eightbit;
    s->msg.longlines = s->rx.too_long;
    if (s->tx_error == TXERR_TOO_BIG) smtp_tx_reply(c, "552 5.3.4 Message size exceeds fixed maximum message size");
    else if (s->tx_error) smtp_tx_reply(c, "451 4.3.0 Local error in processing");
    else if (!s->targets.n && !s->nlists) { /* every RCPT adds one or is refused: never 250 for nothing */
        conn_log(c, "%s: accepted recipients but no mailbox to store it in", s->msg.id);
        smtp_tx_reply(c, "451 4.3.0 Local error: no mailbox for this message");
    } else {
        /* what the lists do with it and the delivery run in slices (smtp_deliver_step, loop_work);
         * smtp_group_committed() answers after the folders' fsync and the mbox appends */
        c->work = smtp_deliver_step;
        return;
    }
    if (s->tx_error) conn_log(c, "message refused from=<%s> (%s)", s->from,
                              s->tx_error == TXERR_TOO_BIG ? "too big" : "write error");
    smtp_tx_reset(c);
}

/* Begins the next delivery of the message: a list post's, or its own. */
static void
smtp_deliver_next(struct conn *c)
{
    struct smtp_sess *s = &c->u.smtp;
    int k = s->delivering++;
    if (k < s->nposts) store_job_begin(&s->job, &s->posts[k].m, &s->posts[k].t, &s->dirs);
    else store_job_begin(&s->job, &s->msg, &s->targets, &s->dirs);
}

/* A slice of the delivery at the final dot (the session's work): the
 * members' copies of each list post, then the message's own copies and its
 * queue entry. Then the session waits for the group commit; on a failure
 * every copy made so far is taken back and the client gets 451. */
static int
smtp_deliver_step(struct conn *c, int64_t until_us)
{
    struct smtp_sess *s = &c->u.smtp;
    struct mailsrv *ms = c->ms;
    const char *base = ms->cfg->dir[0] ? ms->cfg->dir : ".";
    int k, r;
    if (!s->delivering) { /* first what the lists do with it (a post: its state saved, its copy written) */
        if (s->nlists && list_incoming(c) != 0) {
            conn_log(c, "list mail %s failed: cannot write the list's state or messages (%s)", s->msg.id,
                     strerror(errno));
            smtp_tx_reply(c, "451 4.3.0 Local error: cannot store the list's mail now");
            smtp_tx_reset(c);
            return 1;
        }
        smtp_deliver_next(c);
        if (os_now_us() >= until_us) return 0;
    }
    do {
        k = s->delivering - 1;
        if ((r = store_job_step(&s->job, ms->cfg, until_us)) == 0) return 0;
        if (r > 0) { /* its copies join the transaction's */
            s->undo = xrealloc(s->undo, sizeof *s->undo * (size_t)(s->nundo + s->job.nundo + 2));
            memcpy(s->undo + s->nundo, s->job.undo, sizeof *s->undo * (size_t)s->job.nundo);
            s->nundo += s->job.nundo;
            free(s->job.undo);
            s->job.undo = NULL;
            s->job.nundo = 0;
        }
        if (k < s->nposts) {
            struct list_post *p = &s->posts[k];
            if (r > 0 && targets_remote(&p->t) &&
                queue_create(ms->qdir, base, &p->m, &p->t, &s->dirs, &s->undo, &s->nundo) != 0) {
                s->job.err = "cannot write to the relay queue";
                r = -1;
            }
            if (r < 0) {
                list_post_failed(ms, p, s->job.err);
                conn_log(c, "list mail %s failed: cannot write the list's state or messages (%s)", s->msg.id,
                         strerror(errno));
                smtp_tx_reply(c, "451 4.3.0 Local error: cannot store the list's mail now");
                break;
            }
            /* its file stays open until the answer (list_post_clear): an mbox copies it at the commit;
             * its members are logged then */
        } else {
            if (r > 0 && targets_remote(&s->targets) &&
                queue_create(ms->qdir, base, &s->msg, &s->targets, &s->dirs, &s->undo, &s->nundo) != 0) {
                s->job.err = "cannot write to the relay queue";
                r = -1;
            }
            if (r < 0) {
                conn_log(c, "delivery of %s failed: %s (%s)", s->msg.id, s->job.err, strerror(errno));
                smtp_tx_reply(c, "451 4.3.0 Local error: %s", s->job.err);
                break;
            }
            s->delivering = 0;
            conn_work_done(c);
            for (k = 0; k < s->dirs.nmb; k++) s->dirs.mb[k].tx = s; /* one failure fails them all */
            dirset_move(&ms->commit_dirs, &s->dirs);
            c->commit_pending = 1;
            return 1;
        }
        smtp_deliver_next(c);
    } while (os_now_us() < until_us);
    if (r > 0) return 0;
    smtp_tx_reset(c); /* takes back the copies made so far */
    return 1;
}

/* The message is durable: the SUCCESS reports its RCPTs asked for (RFC 3461
 * 6.2.7: "delivered" to a local mailbox, "expanded" for an alias of several),
 * one report to the sender, never to <> (RFC 3461 6.2). */
static void
smtp_dsn_success(struct conn *c)
{
    struct smtp_sess *s = &c->u.smtp;
    struct dsn_item *it;
    int i;
    if (!s->nnotes || !s->from[0]) return;
    if (c->ms->cfg->capture) { /* it stores what the application sent, and nothing of its own */
        conn_log(c, "no success report for %s in capture mode", s->msg.id);
        return;
    }
    it = xrealloc(NULL, sizeof *it * (size_t)s->nnotes);
    for (i = 0; i < s->nnotes; i++) {
        memset(&it[i], 0, sizeof it[i]);
        it[i].addr = s->notes[i].addr;
        it[i].orcpt = s->notes[i].orcpt;
        it[i].action = s->notes[i].expanded ? "expanded" : "delivered";
        it[i].status = "2.0.0";
    }
    if (dsn_report(c->ms, s->from, s->msg.id, s->dsn.envid, s->dsn.ret, s->msg.when, it, s->nnotes, s->msg.tmp_fd) != 0)
        conn_log(c, "no success report for %s: it could not be stored", s->msg.id);
    free(it);
}

/* The end of a group commit: the folders are fsynced (ok) or not. */
static void
smtp_group_committed(struct conn *c, int ok)
{
    struct smtp_sess *s = &c->u.smtp;
    const struct store_msg *failed = s->msg.commit_err ? &s->msg : NULL; /* an mbox batch failed */
    int i;
    for (i = 0; i < s->nposts && !failed; i++)
        if (s->posts[i].m.commit_err) failed = &s->posts[i].m;
    for (i = 0; i < s->nposts; i++) {
        if (!ok) list_post_failed(c->ms, &s->posts[i], "cannot fsync a Maildir folder");
        else if (failed) list_post_failed(c->ms, &s->posts[i], failed->commit_err);
        else list_post_done(c->ms, &s->posts[i], s->msg.id, s->msg.sender);
    }
    if (ok && !failed) {
        c->junk = 0; /* as Postfix: the junk count starts again after a delivered message */
        for (i = 0; i < s->targets.n; i++)
            conn_log(c, "%s %s from=<%s> to=<%s> size=%lld", s->targets.remote[i] ? "queued" : "delivered", s->msg.id,
                     s->from, s->targets.v[i], (long long)s->msg.size);
        http_notify(c->ms, "new", store_of(c->ms->cfg)->maildir ? s->msg.name : s->msg.id, &s->targets, NULL);
        if (targets_remote(&s->targets)) {
            relay_enqueue(c->ms, s->msg.id);
            smtp_tx_reply(c, "250 2.0.0 Ok: queued as %s", s->msg.id);
        } else {
            smtp_tx_reply(c, "250 2.0.0 Ok: delivered as %s", s->msg.id);
        }
        smtp_dsn_success(c);
    } else if (ok && failed != &s->msg) { /* a post's mbox batch: as a post that failed at its delivery */
        store_rollback(s->undo, s->nundo);
        conn_log(c, "list mail %s failed: cannot write the list's state or messages (%s)", s->msg.id,
                 strerror(failed->commit_errno));
        smtp_tx_reply(c, "451 4.3.0 Local error: cannot store the list's mail now");
    } else if (ok) { /* its mbox batch failed: as a failed append always answered */
        store_rollback(s->undo, s->nundo);
        conn_log(c, "delivery of %s failed: %s (%s)", s->msg.id, s->msg.commit_err, strerror(s->msg.commit_errno));
        smtp_tx_reply(c, "451 4.3.0 Local error: %s", s->msg.commit_err);
    } else {
        store_rollback(s->undo, s->nundo);
        conn_log(c, "delivery of %s failed: cannot fsync a Maildir folder", s->msg.id);
        smtp_tx_reply(c, "451 4.3.0 Local error: cannot write the message");
    }
    smtp_tx_reset(c);
}

/* DATA bytes: returns how many were consumed. */
static size_t
smtp_data_feed(struct conn *c, const char *in, size_t n)
{
    struct smtp_sess *s = &c->u.smtp;
    const struct ms_config *cfg = c->ms->cfg;
    size_t used = 0;
    int done = 0;
    int64_t lines0 = s->rx.lines;
    while (used < n && !done) {
        used += data_rx_feed(&s->rx, in + used, n - used, s->wbuf, MS_DATA_BUF, &s->wlen, &done);
        if (s->rx.bytes > cfg->max_message_size && !s->tx_error) s->tx_error = TXERR_TOO_BIG;
        if (s->wlen + 64 > MS_DATA_BUF || done) {
            smtp_write_data(s, s->wbuf, s->wlen);
            s->wlen = 0;
        }
    }
    if (s->rx.lines != lines0) c->io.deadline = os_now_ms() + cfg->timeout * 1000;
    if (done) smtp_data_end(c);
    return used;
}

/* A BDAT chunk's octets (at most bdat_left of them): returns how many were
 * consumed. They are stored as DATA's text is (line ends as LF, a CRLF split
 * between two chunks included), without dot-stuffing. At the chunk's end:
 * 250, or an error (as DATA's, the transaction ends), or, after LAST, the
 * delivery through DATA's final dot (smtp_data_end). */
static size_t
smtp_bdat_feed(struct conn *c, const char *in, size_t n)
{
    struct smtp_sess *s = &c->u.smtp;
    const struct ms_config *cfg = c->ms->cfg;
    size_t take = (uint64_t)s->bdat_left < (uint64_t)n ? (size_t)s->bdat_left : n, used = 0;
    int done;
    if (s->bdat_skip) used = take;
    while (used < take) {
        used += data_rx_feed(&s->rx, in + used, take - used, s->wbuf, MS_DATA_BUF, &s->wlen, &done);
        if (s->rx.bytes > cfg->max_message_size && !s->tx_error) s->tx_error = TXERR_TOO_BIG;
        if (s->wlen + 64 > MS_DATA_BUF) {
            smtp_write_data(s, s->wbuf, s->wlen);
            s->wlen = 0;
        }
    }
    s->bdat_left -= (int64_t)used;
    if (used) c->io.deadline = os_now_ms() + cfg->timeout * 1000;
    if (s->bdat_left) return used;
    if (s->bdat_skip) { s->bdat_skip = 0; return used; }
    if (s->bdat_last) {
        s->wlen += data_rx_finish(&s->rx, s->wbuf + s->wlen);
        if (s->rx.bytes > cfg->max_message_size && !s->tx_error) s->tx_error = TXERR_TOO_BIG;
    }
    if (s->bdat_last || s->tx_error) { /* (a long line is no error: it is stored as sent) */
        smtp_write_data(s, s->wbuf, s->wlen);
        s->wlen = 0;
        smtp_data_end(c); /* answers an error, or delivers (RFC 3030 2: the 250 after LAST means it is taken) */
    } else {
        conn_reply(c, "250 2.0.0 %lld octets received", (long long)s->bdat_size);
    }
    return used;
}

/* RFC 3207 (conn_starttls); the session starts over. */
static void
smtp_do_starttls(struct conn *c, const char *args)
{
    struct smtp_sess *s = &c->u.smtp;
    if (*args) { conn_reply(c, "501 5.5.4 Syntax: STARTTLS"); return; }
    if (conn_starttls(c) != 0) return;
    smtp_tx_reset(c);
    s->state = SMTP_S_GREET; /* RFC 3207 4.2: forget EHLO and AUTH */
    s->esmtp = 0;
    s->helo[0] = s->auth_user[0] = 0;
}

static void smtp_do_ehlo(struct conn *c, const char *a) { smtp_hello(c, a, 1); }
static void smtp_do_lhlo(struct conn *c, const char *a) { smtp_hello(c, a, 1); }
static void smtp_do_helo(struct conn *c, const char *a) { smtp_hello(c, a, 0); }
static void smtp_do_noop(struct conn *c, const char *a) { (void)a; conn_reply(c, "250 2.0.0 Ok"); }
static void smtp_do_rset(struct conn *c, const char *a) { (void)a; smtp_tx_reset(c); conn_reply(c, "250 2.0.0 Ok"); }
static void
smtp_do_vrfy(struct conn *c, const char *a)
{
    (void)a; /* never reveal mailboxes (RFC 5321 3.5.3) */
    conn_reply(c, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}
static void
smtp_do_help(struct conn *c, const char *a)
{
    (void)a;
    if (c->proto == PROTO_LMTP) conn_reply(c, "214-2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY");
    else conn_reply(c, "214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY AUTH STARTTLS");
    conn_reply(c, "214 2.0.0 mailsrv " MAILSRV_VERSION);
}
static void
smtp_do_quit(struct conn *c, const char *a)
{
    (void)a;
    conn_reply(c, "221 2.0.0 Bye");
    conn_close_after_reply(c);
}

#define IN_TRANSACTION(cmd) cmd " not allowed during a mail transaction"
#define NEED_MAIL "Need MAIL before RCPT"
#define NEED_RCPT "Need MAIL and RCPT first"

/* The commands, and in which states each is refused with which 503 text
 * (NULL: allowed; commands are read in every state but DATA). */
static const struct smtp_cmd {
    const char *verb;
    void (*fn)(struct conn *c, const char *args);
    const char *refused[SMTP_S_DATA]; /* GREET, READY, MAIL, RCPT, BDAT */
    int junk;                        /* counts towards max_junk_commands */
} smtp_cmds[] = {
    {"EHLO", smtp_do_ehlo, {NULL, NULL, NULL, NULL, NULL}, 0},
    {"HELO", smtp_do_helo, {NULL, NULL, NULL, NULL, NULL}, 0},
    {"LHLO", smtp_do_lhlo, {NULL, NULL, NULL, NULL, NULL}, 0}, /* LMTP only (smtp_line) */
    {"MAIL", smtp_do_mail, {"Send HELO/EHLO first", NULL, "Nested MAIL command", "Nested MAIL command", "Nested MAIL command"}, 0},
    {"RCPT", smtp_do_rcpt, {NEED_MAIL, NEED_MAIL, NULL, NULL, "RCPT not allowed after BDAT"}, 0},
    /* RFC 3030 2: DATA and BDAT are not mixed in one transaction */
    {"DATA", smtp_do_data, {NEED_RCPT, NEED_RCPT, "No valid recipients", NULL, "DATA not allowed after BDAT"}, 0},
    {"BDAT", smtp_do_bdat, {NULL, NULL, NULL, NULL, NULL}, 0}, /* refused by itself: its octets are read */
    {"RSET", smtp_do_rset, {NULL, NULL, NULL, NULL, NULL}, 1},
    {"NOOP", smtp_do_noop, {NULL, NULL, NULL, NULL, NULL}, 1},
    {"QUIT", smtp_do_quit, {NULL, NULL, NULL, NULL, NULL}, 0},
    {"HELP", smtp_do_help, {NULL, NULL, NULL, NULL, NULL}, 1},
    {"VRFY", smtp_do_vrfy, {NULL, NULL, NULL, NULL, NULL}, 1},
    {"AUTH", smtp_do_auth, {"Send EHLO first", NULL, IN_TRANSACTION("AUTH"), IN_TRANSACTION("AUTH"), IN_TRANSACTION("AUTH")}, 0},
    {"STARTTLS", smtp_do_starttls, {NULL, NULL, IN_TRANSACTION("STARTTLS"), IN_TRANSACTION("STARTTLS"), IN_TRANSACTION("STARTTLS")}, 0},
};

static void
smtp_line(struct conn *c, char *line, size_t len)
{
    struct smtp_sess *s = &c->u.smtp;
    char verb[16];
    const char *args;
    size_t i;
    if (c->ms->verbose) {
        char vis[600];
        if (s->auth_step != AUTH_NONE || ms_strncaseeq(line, "AUTH ", 5)) ms_visible(vis, sizeof vis, line, len > 10 ? 10 : len);
        else ms_visible(vis, sizeof vis, line, len);
        conn_log(c, "< %s", vis);
    }
    if (len + 2 > MS_SMTP_LINE_MAX) { /* with its CRLF; RFC 3461 4: DSN's MAIL and RCPT may be longer */
        size_t extra = s->auth_step != AUTH_NONE ? 0 : ms_strncaseeq(line, "RCPT ", 5) ? MS_DSN_RCPT_EXTRA
                     : ms_strncaseeq(line, "MAIL ", 5) ? MS_DSN_MAIL_EXTRA : 0;
        if (len + 2 > MS_SMTP_LINE_MAX + extra) {
            conn_say(c, SAY_LINE_TOO_LONG); /* an AUTH exchange goes on, as when conn_process refuses it */
            return;
        }
    }
    if (memchr(line, 0, len)) { conn_reply(c, "500 5.5.2 Syntax error (NUL)"); s->auth_step = AUTH_NONE; return; }
    if (s->auth_step != AUTH_NONE) { smtp_auth_step(c, line); return; }
    args = cmd_split(line, verb, sizeof verb);
    if (c->proto == PROTO_LMTP && (strcmp(verb, "HELO") == 0 || strcmp(verb, "EHLO") == 0)) {
        conn_reply(c, "500 5.5.1 This is LMTP: LHLO, not %s (RFC 2033 4.1)", verb);
        return;
    }
    if (c->proto == PROTO_LMTP && (strcmp(verb, "AUTH") == 0 || strcmp(verb, "STARTTLS") == 0)) {
        conn_reply(c, "502 5.5.1 %s is not offered over LMTP", verb);
        return;
    }
    for (i = 0; i < sizeof smtp_cmds / sizeof smtp_cmds[0]; i++) {
        const struct smtp_cmd *cmd = &smtp_cmds[i];
        if (strcmp(verb, cmd->verb) != 0 || (cmd->fn == smtp_do_lhlo && c->proto != PROTO_LMTP)) continue;
        if (cmd->junk && conn_junk(c)) return;
        if (s->state < SMTP_S_DATA && cmd->refused[s->state])
            conn_reply(c, "503 5.5.1 %s", c->proto == PROTO_LMTP && s->state == SMTP_S_GREET ? "Send LHLO first"
                                                                                        : cmd->refused[s->state]);
        else cmd->fn(c, args);
        return;
    }
    if (strcmp(verb, "GET") == 0 || strcmp(verb, "POST") == 0 || strcmp(verb, "CONNECT") == 0) {
        conn_reply(c, "554 5.7.0 This is a mail server"); /* cross-protocol requests (as Redis) */
        conn_close_after_reply(c);
        return;
    }
    if (conn_junk(c)) return;
    conn_reply(c, "500 5.5.2 Command unrecognized");
}

static int
smtp_pump(struct conn *c)
{
    if (c->u.smtp.bdat_left) {
        if (!c->io.inlen) return -1;
        io_consume(&c->io, smtp_bdat_feed(c, c->io.in, c->io.inlen));
        return 1;
    }
    if (c->u.smtp.state != SMTP_S_DATA) return 0;
    if (!c->io.inlen) return -1;
    io_consume(&c->io, smtp_data_feed(c, c->io.in, c->io.inlen));
    return 1;
}

static int
smtp_logged_in(const struct conn *c)
{
    return c->u.smtp.auth_user[0] != 0;
}

static int
smtp_busy(const struct conn *c)
{
    return smtp_in_data(c) || c->u.smtp.auth_step != AUTH_NONE;
}

/* In DATA, in a BDAT transaction (between its chunks too), or reading a refused chunk's octets */
static int
smtp_in_data(const struct conn *c)
{
    return c->u.smtp.state >= SMTP_S_BDAT || c->u.smtp.bdat_left;
}

static int
smtp_streaming(const struct conn *c)
{
    (void)c;
    return 0;
}

static const char *
smtp_tmp_file(const struct conn *c)
{
    return c->u.smtp.msg.tmp_fd >= 0 ? c->u.smtp.msg.tmp_path : NULL;
}

/* SMTP's and LMTP's answers to what the connection code says (enum conn_say) */
#define SMTP_SAYS                                                                                          \
    {[SAY_LINE_TOO_LONG] = "500 5.5.2 Line too long",                                                      \
     [SAY_JUNK] = "421 4.7.0 %s Error: too many junk commands", /* as Postfix */                           \
     [SAY_SESSION_OVER] = "421 4.4.2 %s Maximum session time reached, closing",                            \
     [SAY_EVICTED] = "421 4.3.2 %s Too many connections, closing the oldest session",                      \
     [SAY_TIMEOUT] = "421 4.4.2 %s Timeout, closing",                                                      \
     [SAY_SHUTDOWN] = "421 4.3.2 %s Server shutting down",                                                 \
     [SAY_LOGIN_FAILED] = "535 5.7.8 Authentication credentials invalid",                                  \
     [SAY_LOGIN_CLOSING] = "421 4.7.0 Too many failed logins, closing",                                    \
     [SAY_TLS_GO] = "220 2.0.0 Ready to start TLS",                                                        \
     [SAY_TLS_ACTIVE] = "503 5.5.1 TLS is already active",                                                 \
     [SAY_TLS_UNAVAILABLE] = "454 4.7.0 TLS not available",                                                \
     [SAY_BUSY] = "421 4.3.2 Too many connections, try again later",                                       \
     [SAY_RATE] = "421 4.7.0 Error: too many connections from your address, try again later"}

/* RFC 2033, with SMTP's session code: what differs is in smtp_line (LHLO),
 * smtp_hello (its keywords), smtp_do_rcpt (only mail for here) and
 * smtp_tx_reply (an answer per recipient). */
static const struct proto_ops lmtp_ops = {
    'l', lmtp_greet, smtp_pump, smtp_line, smtp_auth_done, smtp_group_committed, smtp_logged_in, smtp_busy,
    smtp_in_data, smtp_streaming, smtp_tmp_file, smtp_tx_reset, "connection lost during DATA: message discarded",
    SMTP_SAYS, NULL,
};

static const struct proto_ops smtp_ops = {
    's', smtp_greet, smtp_pump, smtp_line, smtp_auth_done, smtp_group_committed, smtp_logged_in, smtp_busy,
    smtp_in_data, smtp_streaming, smtp_tmp_file, smtp_tx_reset, "connection lost during DATA: message discarded",
    SMTP_SAYS, NULL,
};

/*==== 11. POP3 server session ====*/
/*
 * RFC 1939 with CAPA, RESP-CODES and AUTH-RESP-CODE (2449, 3206), AUTH
 * PLAIN (5034) and UTF8 (6856). The mailbox is a snapshot taken at login; DELE only marks,
 * and the marks are applied at QUIT (the UPDATE state).
 */

static void
pop_greet(struct conn *c)
{
    c->u.pop.stream_fd = -1;
    conn_reply(c, "+OK mailsrv POP3 server ready");
}

static void
pop_stream_end(struct conn *c)
{
    struct pop_sess *p = &c->u.pop;
    if (p->stream_fd >= 0) os_close(p->stream_fd);
    p->stream_fd = -1;
    if (p->streaming) lr_free(&p->lr);
    p->streaming = 0;
}

/* Produces more of a RETR/TOP answer: CRLF line ends, dot-stuffing, mboxrd
 * unquoting, then the final dot. */
static void
pop_pump(struct conn *c)
{
    struct pop_sess *p = &c->u.pop;
    const char *line;
    size_t len;
    int complete, r;
    int64_t off;
    while (p->streaming && io_pending(&c->io) < MS_OUT_HIGH) {
        r = p->st_body_left == 0 && !p->st_in_head ? 0 : lr_next(&p->lr, &line, &len, &complete, &off);
        if (r <= 0) {
            if (r < 0) { /* the client cannot be told after +OK: cut the session */
                conn_log(c, "read error while sending a message");
                conn_drop(c);
            }
            if (!p->st_bol) buf_adds(&c->io.out, "\r\n");
            buf_adds(&c->io.out, ".\r\n");
            pop_stream_end(c);
            return;
        }
        if (p->st_bol) {
            if (p->view.ops->from_quoted && mbox_is_from_line(line, len, 1)) { line++; len--; }
            if (len && line[0] == '.') buf_adds(&c->io.out, "."); /* RFC 1939 3: byte-stuffing */
        }
        if (complete && len && line[len - 1] == '\r') len--;
        buf_add(&c->io.out, line, len);
        if (complete) {
            buf_adds(&c->io.out, "\r\n");
            if (p->st_bol && p->st_in_head && len == 0) p->st_in_head = 0;
            else if (!p->st_in_head && p->st_body_left > 0) p->st_body_left--; /* a long line's last piece too */
        }
        p->st_bol = complete;
    }
}

static void
pop_stream_start(struct conn *c, struct pop_msg *m, long body_lines)
{
    struct pop_sess *p = &c->u.pop;
    char path[MS_PATH_MESSAGE];
    int64_t start, end;
    struct os_stat st;
    int r = p->view.ops->msg_text(&p->view, m, path, sizeof path, &start, &end);
    if (r == MSG_LOCKED) { /* RFC 2449 8.1.1 gives IN-USE to logins; this is a passing failure of one command */
        conn_reply(c, "-ERR [SYS/TEMP] The mailbox is locked by another program, try again");
        return;
    }
    if (r == MSG_CHANGED) {
        conn_reply(c, "-ERR [SYS/TEMP] Message %s was changed by another program", m->uidl);
        return;
    }
    p->stream_fd = r == 0 ? os_open(path, O_RDONLY, 0) : -1;
    if (p->stream_fd < 0 || os_fstat(p->stream_fd, &st) != 0) {
        if (p->stream_fd >= 0) os_close(p->stream_fd);
        p->stream_fd = -1;
        conn_reply(c, "-ERR [SYS/TEMP] Message %s cannot be read", m->uidl);
        return;
    }
    if (end < 0) end = st.size;
    if (body_lines < 0) conn_reply(c, "+OK %lld octets", (long long)m->size);
    else conn_reply(c, "+OK top of message follows");
    lr_init(&p->lr, p->stream_fd, start, end);
    p->streaming = 1;
    p->st_bol = 1;
    p->st_in_head = 1;
    p->st_body_left = body_lines;
    pop_pump(c);
}

/* The number of message ARG (1-based) if it exists and is not deleted, else -1. */
static int
pop_msg_number(const struct pop_view *v, const char *arg)
{
    int n = pop_parse_num(arg, v->n);
    return n < 0 || v->msgs[n - 1].deleted ? -1 : n;
}

static int
pop_in_use(struct mailsrv *ms, const struct conn *self, const char *mailbox)
{
    int i;
    for (i = 0; i < ms->nconns; i++) {
        const struct conn *o = ms->conns[i];
        if (o != self && o->proto == PROTO_POP3 && (!o->is_closing || o->work_must_finish) &&
            o->u.pop.state != POP_S_AUTH &&
            strcmp(o->u.pop.mailbox, mailbox) == 0)
            return 1;
    }
    return 0;
}

/* The outcome of a login: mailbox NULL if it failed. A good one opens the
 * mailbox: its view is made in slices (pop_open_step), then answered. */
static void
pop_login_done(struct conn *c, const char *mailbox, const char *user)
{
    struct pop_sess *p = &c->u.pop;
    struct mailsrv *ms = c->ms;
    int r;
    if (!mailbox) {
        conn_login_failed(c, user);
        return;
    }
    auth_succeeded(c);
    if (pop_in_use(ms, c, mailbox)) { /* RFC 2449 8.1.1 */
        conn_reply(c, "-ERR [IN-USE] Mailbox is locked by another POP3 session");
        return;
    }
    /* a mailbox reached through a link is refused here as at delivery: DELE would remove files elsewhere */
    errno = 0; /* EAGAIN below comes from the mbox lock, never from an earlier call */
    r = store_no_links(ms->cfg->spool, mailbox, store_of(ms->cfg)->maildir) != 0 ? -1
        : store_of(ms->cfg)->view_open(&p->view, ms->cfg->spool, mailbox);
    p->view.uidl_short = ms->cfg->pop3_uidl == UIDL_SHORT;
    if (r != 0 && errno == EAGAIN) { /* an mbox locked by another program (RFC 2449 8.1.1) */
        conn_log(c, "mailbox %s is locked by another program", mailbox);
        conn_reply(c, "-ERR [IN-USE] Mailbox is locked by another program");
        view_free(&p->view);
        return;
    }
    ms_strlcpy(p->mailbox, mailbox, sizeof p->mailbox);
    if (r != 0) {
        pop_opened(c, -1);
        return;
    }
    p->state = POP_S_OPENING; /* the mailbox is taken (pop_in_use) */
    c->work = pop_open_step;
}

/* A slice of making the view at login (the session's work). */
static int
pop_open_step(struct conn *c, int64_t until)
{
    int r = view_more(&c->u.pop.view, until);
    if (r == 0) return 0;
    conn_work_done(c);
    pop_opened(c, r);
    return 1;
}

/* The view is made (r > 0) or could not be (r < 0): the answer to the login. */
static void
pop_opened(struct conn *c, int r)
{
    struct pop_sess *p = &c->u.pop;
    int64_t total = 0;
    int i;
    if (r < 0) {
        conn_log(c, "cannot open mailbox %s: %s", p->mailbox, strerror(errno));
        conn_reply(c, "-ERR [SYS/TEMP] Cannot open the mailbox");
        view_free(&p->view);
        p->state = POP_S_AUTH;
        return;
    }
    p->state = POP_S_TRANS;
    for (i = 0; i < p->view.n; i++) total += p->view.msgs[i].size;
    conn_log(c, "login %s: %d messages, %lld octets", p->mailbox, p->view.n, (long long)total);
    conn_reply(c, "+OK %d messages (%lld octets)", p->view.n, (long long)total);
}

/* The AUTH PLAIN answer (RFC 5034 4), given with AUTH or after "+ ":
 * pop_login_done() answers once its hash is done. */
static const char *
pop_auth_plain(struct conn *c, const char *b64)
{
    char user[MS_PATH_MAX], pass[256];
    if (sasl_plain_decode(b64, user, sizeof user, pass, sizeof pass) != 0) auth_begin(c, "", "");
    else auth_begin(c, user, pass);
    return NULL;
}

/* The command handlers. Each returns its one-line reply, or NULL when it
 * answered itself: in several lines (CAPA, LIST, UIDL), as a stream (RETR,
 * TOP) or later (a login, once its hash is done). */

static const char *
pop_do_user(struct conn *c, const char *args)
{
    struct pop_sess *p = &c->u.pop;
    if (!*args || strlen(args) >= sizeof p->user) return "-ERR Bad user name";
    ms_strlcpy(p->user, args, sizeof p->user);
    return "+OK";
}

static const char *
pop_do_pass(struct conn *c, const char *args)
{
    struct pop_sess *p = &c->u.pop;
    char user[MS_PATH_MAX], pass[256];
    if (!p->user[0]) return "-ERR USER first";
    ms_strlcpy(pass, args, sizeof pass);
    ms_strlcpy(user, p->user, sizeof user);
    p->user[0] = 0;
    auth_begin(c, user, pass); /* pop_login_done() answers once it is hashed */
    return NULL;
}

static const char *
pop_do_auth(struct conn *c, const char *args)
{
    char mech[32];
    const char *init = cmd_split(args, mech, sizeof mech);
    if (!mech[0]) { /* RFC 5034 4: the list of mechanisms */
        conn_reply(c, "+OK");
        conn_reply(c, "PLAIN");
        return ".";
    }
    if (strcmp(mech, "PLAIN") != 0) return "-ERR Unsupported authentication mechanism";
    if (*init) return pop_auth_plain(c, init);
    c->u.pop.auth_wait = 1;
    return "+ ";
}

/* RFC 2595 4 (conn_starttls); USER is forgotten. */
static const char *
pop_do_stls(struct conn *c, const char *args)
{
    (void)args;
    if (conn_starttls(c) == 0) c->u.pop.user[0] = 0;
    return NULL;
}

static const char *
pop_do_capa(struct conn *c, const char *args)
{
    (void)args;
    conn_reply(c, "+OK Capability list follows");
    if (c->u.pop.state == POP_S_AUTH && c->ms->cfg->tls && !c->io.tls) conn_reply(c, "STLS");
    if (c->u.pop.state == POP_S_AUTH && conn_plaintext_ok(c)) {
        conn_reply(c, "USER");
        conn_reply(c, "SASL PLAIN");
    }
    conn_reply(c, "TOP");
    conn_reply(c, "UIDL");
    conn_reply(c, "PIPELINING");
    conn_reply(c, "RESP-CODES");
    conn_reply(c, "AUTH-RESP-CODE");
    conn_reply(c, "UTF8 USER"); /* RFC 6856 2: UTF-8 in USER and PASS too */
    conn_reply(c, "IMPLEMENTATION mailsrv-" MAILSRV_VERSION);
    return ".";
}

/* RFC 6856 2: UTF-8 mode, asked for before the login. Messages are sent as
 * they are stored in any mode (no downgrade, RFC 6856 3's other choice). */
static const char *
pop_do_utf8(struct conn *c, const char *args)
{
    if (*args) return "-ERR UTF8 takes no arguments";
    c->u.pop.utf8 = 1;
    return "+OK UTF8 enabled";
}

/* Logged in, QUIT applies the DELE marks (RFC 1939 6, the UPDATE state):
 * in slices (pop_update_step), then the answer. */
static const char *
pop_do_quit(struct conn *c, const char *args)
{
    struct pop_sess *p = &c->u.pop;
    (void)args;
    if (p->state != POP_S_TRANS) {
        conn_close_after_reply(c);
        return "+OK Bye";
    }
    p->state = POP_S_UPDATE;
    c->work = pop_update_step;
    c->work_must_finish = 1; /* the client asked for them: made even if it leaves before the answer */
    return NULL;
}

/* A slice of the deletions after QUIT (the session's work), then the answer. */
static int
pop_update_step(struct conn *c, int64_t until)
{
    struct pop_sess *p = &c->u.pop;
    int i, ndel = 0, r = view_expunge(&p->view, until);
    if (r == 0) return 0;
    conn_work_done(c);
    for (i = 0; i < p->view.n; i++) ndel += p->view.msgs[i].deleted;
    if (r < 0) {
        conn_log(c, "update of %s failed: %s", p->mailbox, strerror(errno));
        conn_reply(c, "-ERR [SYS/TEMP] Some deleted messages were not removed");
    } else {
        if (ndel) conn_log(c, "deleted %d messages from %s", ndel, p->mailbox);
        for (i = 0; i < p->view.n; i++) /* the HTTP API's event streams (a no-op without HTTP) */
            if (p->view.msgs[i].deleted) http_notify(c->ms, "delete", p->view.msgs[i].uidl, NULL, p->mailbox);
        conn_reply(c, "+OK Bye");
    }
    p->state = POP_S_AUTH; /* the mailbox is free again */
    conn_close_after_reply(c);
    return 1;
}

static const char *
pop_do_stat(struct conn *c, const char *args)
{
    struct pop_view *v = &c->u.pop.view;
    int i, n = 0;
    int64_t total = 0;
    (void)args;
    for (i = 0; i < v->n; i++)
        if (!v->msgs[i].deleted) { n++; total += v->msgs[i].size; }
    conn_reply(c, "+OK %d %lld", n, (long long)total);
    return NULL;
}

/* LIST and UIDL (RFC 1939 5 and 7): one message, or all that are not deleted. */
static const char *
pop_scan_list(struct conn *c, const char *args, int uidl)
{
    struct pop_view *v = &c->u.pop.view;
    int i, n;
    if (*args) {
        if ((n = pop_msg_number(v, args)) < 0) return "-ERR No such message";
        if (uidl) conn_reply(c, "+OK %d %s", n, v->msgs[n - 1].uidl);
        else conn_reply(c, "+OK %d %lld", n, (long long)v->msgs[n - 1].size);
        return NULL;
    }
    buf_adds(&c->io.out, "+OK\r\n"); /* (not logged line by line: a listing can be 50,000 lines) */
    for (i = 0; i < v->n; i++) {
        if (v->msgs[i].deleted) continue;
        if (uidl) buf_printf(&c->io.out, "%d %s\r\n", i + 1, v->msgs[i].uidl);
        else buf_printf(&c->io.out, "%d %lld\r\n", i + 1, (long long)v->msgs[i].size);
    }
    buf_adds(&c->io.out, ".\r\n");
    return NULL;
}

static const char *
pop_do_list(struct conn *c, const char *args)
{
    return pop_scan_list(c, args, 0);
}

static const char *
pop_do_uidl(struct conn *c, const char *args)
{
    return pop_scan_list(c, args, 1);
}

static const char *
pop_do_retr(struct conn *c, const char *args)
{
    struct pop_view *v = &c->u.pop.view;
    int n = pop_msg_number(v, args);
    if (n < 0) return "-ERR No such message";
    conn_log(c, "retr %s %s", c->u.pop.mailbox, v->msgs[n - 1].uidl);
    pop_stream_start(c, &v->msgs[n - 1], -1);
    return NULL;
}

static const char *
pop_do_top(struct conn *c, const char *args)
{
    struct pop_view *v = &c->u.pop.view;
    char num[16], *end;
    const char *lines = cmd_split(args, num, sizeof num);
    long nl = strtol(lines, &end, 10);
    int n;
    if (!*lines || *end || nl < 0 || strlen(lines) > 9) return "-ERR Syntax: TOP msg lines";
    if ((n = pop_msg_number(v, num)) < 0) return "-ERR No such message";
    pop_stream_start(c, &v->msgs[n - 1], nl);
    return NULL;
}

static const char *
pop_do_dele(struct conn *c, const char *args)
{
    struct pop_view *v = &c->u.pop.view;
    int n = pop_msg_number(v, args);
    if (n < 0) return "-ERR No such message";
    v->msgs[n - 1].deleted = 1;
    return "+OK Message deleted";
}

static const char *
pop_do_rset(struct conn *c, const char *args)
{
    struct pop_view *v = &c->u.pop.view;
    int i;
    (void)args;
    for (i = 0; i < v->n; i++) v->msgs[i].deleted = 0;
    return "+OK";
}

static const char *
pop_do_noop(struct conn *c, const char *args)
{
    (void)c;
    (void)args;
    return "+OK";
}

/* The commands (popa3d's table): the states they are allowed in (RFC 1939
 * 4 and 5: AUTHORIZATION, TRANSACTION), whether they count towards
 * max_junk_commands, and whether they send a password (only where plain-text
 * logins are allowed: plaintext_auth). */
#define POP_IN_AUTH (1u << POP_S_AUTH)
#define POP_IN_TRANS (1u << POP_S_TRANS)
static const struct pop_cmd {
    const char *verb;
    const char *(*fn)(struct conn *c, const char *args);
    unsigned states;
    int junk, login;
} pop_cmds[] = {
    {"USER", pop_do_user, POP_IN_AUTH, 0, 1},  {"PASS", pop_do_pass, POP_IN_AUTH, 0, 1},
    {"AUTH", pop_do_auth, POP_IN_AUTH, 0, 1},  {"STLS", pop_do_stls, POP_IN_AUTH, 0, 0},
    {"CAPA", pop_do_capa, POP_IN_AUTH | POP_IN_TRANS, 0, 0},
    {"UTF8", pop_do_utf8, POP_IN_AUTH, 0, 0},
    {"QUIT", pop_do_quit, POP_IN_AUTH | POP_IN_TRANS, 0, 0},
    {"STAT", pop_do_stat, POP_IN_TRANS, 0, 0}, {"LIST", pop_do_list, POP_IN_TRANS, 0, 0},
    {"UIDL", pop_do_uidl, POP_IN_TRANS, 0, 0}, {"RETR", pop_do_retr, POP_IN_TRANS, 0, 0},
    {"TOP", pop_do_top, POP_IN_TRANS, 0, 0},   {"DELE", pop_do_dele, POP_IN_TRANS, 0, 0},
    {"RSET", pop_do_rset, POP_IN_TRANS, 1, 0}, {"NOOP", pop_do_noop, POP_IN_TRANS, 1, 0},
};

/* One command: the table's checks, in this order, then its handler. A junk
 * command past max_junk_commands has been answered by conn_junk(). */
static void
pop_command(struct conn *c, const char *verb, const char *args)
{
    const struct pop_cmd *cmd = NULL;
    const char *reply;
    int logged_in = c->u.pop.state == POP_S_TRANS;
    size_t i;
    for (i = 0; i < sizeof pop_cmds / sizeof pop_cmds[0] && !cmd; i++)
        if (strcmp(verb, pop_cmds[i].verb) == 0) cmd = &pop_cmds[i];
    if (cmd && cmd->login && logged_in) {
        reply = "-ERR Already logged in";
    } else if (!cmd || !(cmd->states & (1u << c->u.pop.state))) {
        if (conn_junk(c)) return;
        reply = logged_in ? "-ERR Unknown command" : "-ERR Unknown command or not logged in";
    } else if (cmd->login && !conn_plaintext_ok(c)) {
        reply = c->ms->cfg->tls ? "-ERR [AUTH] Plain-text logins are not allowed from this address without TLS (STLS)"
                                : "-ERR [AUTH] Plain-text logins are not allowed from this address";
    } else if (cmd->junk && conn_junk(c)) {
        return;
    } else {
        reply = cmd->fn(c, args);
    }
    if (reply) conn_reply(c, "%s", reply);
}

static void
pop_line(struct conn *c, char *line, size_t len)
{
    struct pop_sess *p = &c->u.pop;
    char verb[8];
    const char *args;
    if (c->ms->verbose) {
        char vis[600];
        int secret = p->auth_wait || ms_strncaseeq(line, "PASS", 4) || ms_strncaseeq(line, "AUTH ", 5);
        ms_visible(vis, sizeof vis, line, secret && len > 4 ? 4 : len);
        conn_log(c, "< %s", vis);
    }
    if (memchr(line, 0, len)) { conn_reply(c, "-ERR NUL in command"); p->auth_wait = 0; return; }
    if (p->auth_wait) { /* the AUTH PLAIN continuation */
        p->auth_wait = 0;
        if (strcmp(line, "*") == 0) conn_reply(c, "-ERR Authentication cancelled");
        else pop_auth_plain(c, line);
        return;
    }
    args = cmd_split(line, verb, sizeof verb);
    if (strcmp(verb, "PASS") != 0 && strcmp(verb, "AUTH") != 0 && strlen(args) > MS_POP_ARG_MAX * 2) {
        conn_reply(c, "-ERR Argument too long");
        return;
    }
    pop_command(c, verb, args);
}

static int
pop_pump_stream(struct conn *c)
{
    if (!c->u.pop.streaming) return 0;
    pop_pump(c);
    return c->u.pop.streaming ? -1 : 1;
}

static int
pop_logged_in(const struct conn *c)
{
    return c->u.pop.state != POP_S_AUTH;
}

static int
pop_busy(const struct conn *c)
{
    return c->u.pop.streaming || c->u.pop.auth_wait;
}

static int
pop_streaming(const struct conn *c)
{
    return c->u.pop.streaming;
}

static void
pop_free(struct conn *c)
{
    pop_stream_end(c);
    view_free(&c->u.pop.view);
}

static const struct proto_ops pop_ops = {
    'p', pop_greet, pop_pump_stream, pop_line, pop_login_done, NULL, pop_logged_in, pop_busy,
    pop_streaming, pop_streaming, NULL, pop_free, NULL,
    {[SAY_LINE_TOO_LONG] = "-ERR Line too long",
     [SAY_JUNK] = "-ERR Error: too many junk commands, closing",
     [SAY_SESSION_OVER] = "-ERR Maximum session time reached, closing",
     [SAY_EVICTED] = "-ERR [SYS/TEMP] Too many connections, closing the oldest session",
     [SAY_TIMEOUT] = "-ERR Timeout, closing",
     [SAY_SHUTDOWN] = "-ERR [SYS/TEMP] Server shutting down",
     [SAY_LOGIN_FAILED] = "-ERR [AUTH] Invalid login",
     [SAY_LOGIN_CLOSING] = "-ERR [AUTH] Invalid login, closing",
     [SAY_TLS_GO] = "+OK Begin TLS negotiation",
     [SAY_TLS_ACTIVE] = "-ERR TLS is already active",
     [SAY_TLS_UNAVAILABLE] = "-ERR TLS not available",
     [SAY_BUSY] = "-ERR [SYS/TEMP] Too many connections, try again later",
     [SAY_RATE] = "-ERR [SYS/TEMP] Too many connections from your address, try again later"},
    NULL,
};


/*==== 12. HTTP: the Mailpit-compatible API ====*/
#if MAILSRV_ENABLE_HTTP
/*
 * HTTP/1.1 (RFC 9110, 9112) on the same loop as the mail sessions: a
 * request's head is read into the connection's input buffer (a larger one of
 * its own once it outgrows it), its body by Content-Length, and one request
 * is answered at a time (pipelined ones wait in the buffer). The API is
 * Mailpit's v1: the same paths and JSON, so that test helpers written for
 * Mailpit work unchanged. Each request that reads mail makes views of the
 * mailboxes it may see (the POP3 views of section 7, in slices as the
 * session's work), answers from them, and drops them: nothing of the store is
 * cached between requests. A message's ID is its UIDL, the same in every
 * mailbox a delivery reached, so that a capture's list shows one message
 * per delivery, as Mailpit does.
 *
 * Who sees what: in capture mode, a loopback client every mailbox without a
 * login; otherwise HTTP Basic with a mailbox's address and password (the
 * logins of section 9: hashed in slices, failures slowed per client), which
 * sees its own mailbox, or every mailbox if `admins` names it.
 */

/* (the contents block lists only what every build has) */
struct http_sweep;
static void http_sweep_free(struct http_sweep *s);
static void http_login(struct conn *c);
static int http_views_step(struct conn *c, int64_t until);
static int http_sweep_step(struct conn *c, int64_t until);
static int http_expunge_step(struct conn *c, int64_t until);

/* ---- answers ---- */

static const char *
http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

/* The answer to the request: status, its fields, and h->resp as the body (HEAD: none). */
static void
http_answer_extra(struct conn *c, int status, const char *ctype, const char *fields)
{
    struct http_sess *h = &c->u.http;
    char date[40];
    int64_t sec;
    long usec;
    int close = !h->req.keep_alive || c->ms->stopping || status == 400 || status == 408 || status == 411 ||
                status == 413 || status == 414 || status == 431 || status == 505 || status == 501;
    os_wallclock(&sec, &usec);
    ms_http_date(date, sizeof date, sec);
    buf_printf(&c->io.out, "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %lu\r\n"
               "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nCross-Origin-Resource-Policy: same-origin\r\n%s%s\r\n",
               status, http_reason(status), date, ctype, (unsigned long)h->resp.len, fields ? fields : "",
               close ? "Connection: close\r\n" : h->req.minor == 0 ? "Connection: keep-alive\r\n" : "");
    if (h->req.method != HTTP_HEAD) buf_add(&c->io.out, h->resp.p ? h->resp.p : "", h->resp.len);
    if (c->ms->verbose) conn_log(c, "> %d %s (%lu bytes)", status, http_reason(status), (unsigned long)h->resp.len);
    buf_free(&h->resp);
    buf_free(&h->body);
    h->state = H_HEAD;
    h->started = 0;
    h->route = NULL;
    c->io.deadline = os_now_ms() + c->ms->cfg->timeout * 1000LL;
    if (close) conn_close_after_reply(c);
}
static void http_answer(struct conn *c, int status, const char *ctype) { http_answer_extra(c, status, ctype, NULL); }

/* A plain-text answer (Mailpit answers its mutations "ok" and its errors in plain text). */
static void
http_text(struct conn *c, int status, const char *text)
{
    buf_free(&c->u.http.resp);
    buf_adds(&c->u.http.resp, text);
    http_answer(c, status, "text/plain; charset=utf-8");
}

/* An error in JSON, as Mailpit's /send answers: {"Error":"..."}. */
static void
http_json_error(struct conn *c, int status, const char *text)
{
    struct buf *b = &c->u.http.resp;
    buf_free(b);
    buf_adds(b, "{");
    json_kv(b, "", "Error", text);
    buf_adds(b, "}");
    http_answer(c, status, "application/json");
}

static void http_json(struct conn *c) { http_answer(c, 200, "application/json"); }

static void
http_unauthorized(struct conn *c)
{
    buf_free(&c->u.http.resp);
    buf_adds(&c->u.http.resp, "Login with a mailbox's address and password\n");
    http_answer_extra(c, 401, "text/plain; charset=utf-8", "WWW-Authenticate: Basic realm=\"mailsrv\", charset=\"UTF-8\"\r\n");
}

/* ---- the store: views of the mailboxes a request may see ---- */

struct http_box {
    char addr[MS_PATH_MAX];
    struct pop_view v;
    int opened, ndel;                /* its view is made; messages marked deleted in it */
};
/* A message as the API lists it: the first mailbox (and index there) holding its ID. */
struct http_msg { int box, idx; int64_t when_us; };

struct http_job {
    struct http_box *boxes;
    int nbox, capbox, next;          /* next: the box whose view is being made, or expunged */
    struct http_msg *msgs;           /* every message once the views are made, newest first */
    int n;
    void (*then)(struct conn *c);    /* the handler, once the views are made */
    int pos, found;                  /* a search's progress: the next message, the matches so far */
    int *match;                      /* ... the matches */
    int deleting;                    /* -1: a deletion failed */
    struct http_sweep *sweep;        /* a search or a change of many messages (http_sweep_step) */
};

static void
http_job_free(struct http_job *j)
{
    int i;
    if (!j) return;
    for (i = 0; i < j->nbox; i++) view_free(&j->boxes[i].v);
    free(j->boxes);
    free(j->msgs);
    free(j->match);
    http_sweep_free(j->sweep);
    free(j);
}

/* A mailbox to view (the spool's folders and the configured mailboxes are each named once). */
static void
http_job_add_box(struct http_job *j, const char *addr)
{
    if (j->nbox == j->capbox) { /* doubling: a capture spool may hold thousands of addresses */
        j->capbox = j->capbox ? j->capbox * 2 : 4;
        j->boxes = xrealloc(j->boxes, sizeof *j->boxes * (size_t)j->capbox);
    }
    memset(&j->boxes[j->nbox], 0, sizeof *j->boxes);
    ms_strlcpy(j->boxes[j->nbox++].addr, addr, MS_PATH_MAX);
}

/* ?mailbox=ADDRESS (mailsrv's, for the page's mailbox views): only that one of the mailboxes the
 * login sees. */
static void
http_job_only(struct http_job *j, const char *target)
{
    char want[MS_PATH_MAX];
    int i, n = 0;
    if (http_query(target, "mailbox", want, sizeof want) <= 0 || !want[0]) return;
    for (i = 0; i < j->nbox; i++)
        if (ms_strcaseeq(j->boxes[i].addr, want)) j->boxes[n++] = j->boxes[i];
    j->nbox = n;
}

/* The mailboxes under the spool (capture mode: every address that got mail). */
struct http_scan { struct http_job *j; const char *spool, *domain; int mbox; };

static int
http_scan_user(void *ctx, const char *name)
{
    struct http_scan *s = ctx;
    char local[MS_LOCAL_MAX + 8], addr[MS_PATH_MAX];
    size_t n = strlen(name);
    if (s->mbox) {
        if (n <= 5 || n - 5 > MS_LOCAL_MAX || strcmp(name + n - 5, ".mbox") != 0) return 0;
        n -= 5;
    } else if (n > MS_LOCAL_MAX) {
        return 0;
    }
    memcpy(local, name, n);
    local[n] = 0;
    if (cfg_safe_component(local, MS_LOCAL_MAX) && ms_fmt(addr, sizeof addr, "%s@%s", local, s->domain) >= 0)
        http_job_add_box(s->j, addr);
    return 0;
}

static int
http_scan_domain(void *ctx, const char *name)
{
    struct http_scan *s = ctx, sub = *s;
    char dir[MS_PATH_DOMAIN];
    if (!cfg_safe_component(name, MS_DOMAIN_MAX) || !strchr(name, '.') ||
        ms_fmt(dir, sizeof dir, "%s/%s", s->spool, name) < 0 || os_lstat_kind(dir) != OS_DIR)
        return 0;
    sub.domain = name;
    os_list_dir(dir, http_scan_user, &sub);
    return 0;
}

/* The mailboxes c may see. */
static struct http_job *
http_job_new(struct conn *c)
{
    const struct ms_config *cfg = c->ms->cfg;
    struct http_job *j = xrealloc(NULL, sizeof *j);
    int i, k;
    memset(j, 0, sizeof *j);
    if (!c->u.http.all) {
        http_job_add_box(j, c->u.http.mailbox);
    } else if (cfg->capture) {
        struct http_scan s;
        s.j = j;
        s.spool = cfg->spool;
        s.domain = NULL;
        s.mbox = cfg->storage == STORE_MBOX;
        os_list_dir(cfg->spool, http_scan_domain, &s);
    } else {
        for (i = 0; i < cfg->ndomains; i++)
            for (k = 0; k < cfg->domains[i].nusers; k++) {
                char addr[MS_PATH_MAX];
                if (ms_fmt(addr, sizeof addr, "%s@%s", cfg->domains[i].users[k].name, cfg->domains[i].name) >= 0)
                    http_job_add_box(j, addr);
            }
    }
    http_job_only(j, c->u.http.req.target);
    return j;
}

/* When a message came: a UIDL that mailsrv made begins with the time of its delivery ("SEC.MUSEC..."). */
static int64_t
http_uidl_time(const char *u)
{
    int64_t sec = 0, usec = 0;
    int i;
    for (i = 0; isdigit((unsigned char)u[i]) && i < 12; i++) sec = sec * 10 + (u[i] - '0');
    if (i == 0 || u[i] != '.' || u[i + 1] != 'M') return 0;
    for (i += 2; isdigit((unsigned char)u[i]); i++) usec = usec * 10 + (u[i] - '0');
    return sec * 1000000 + usec % 1000000;
}

static int
http_msg_cmp(const void *a, const void *b)
{
    const struct http_msg *x = a, *y = b;
    if (x->when_us != y->when_us) return x->when_us > y->when_us ? -1 : 1; /* newest first */
    if (x->box != y->box) return x->box - y->box;
    return y->idx - x->idx; /* the last delivered first */
}

/* Lists the messages of the views made, one per ID, newest first. */
static void
http_job_list(struct http_job *j)
{
    int b, i, n = 0;
    for (b = 0; b < j->nbox; b++) n += j->boxes[b].v.n;
    j->msgs = xrealloc(NULL, sizeof *j->msgs * (size_t)(n ? n : 1));
    j->n = 0;
    for (b = 0; b < j->nbox; b++)
        for (i = 0; i < j->boxes[b].v.n; i++) {
            struct http_msg *m = &j->msgs[j->n++];
            m->box = b;
            m->idx = i;
            m->when_us = http_uidl_time(j->boxes[b].v.msgs[i].uidl);
        }
    qsort(j->msgs, (size_t)j->n, sizeof *j->msgs, http_msg_cmp);
    if (j->nbox > 1) { /* one per delivery: copies share a UIDL (and, sorted, a time; another
                        * program's messages have none, and are not compared: n^2) */
        int k = 0;
        for (i = 0; i < j->n; i++) {
            int d, dup = 0;
            for (d = k - 1; d >= 0 && j->msgs[i].when_us && j->msgs[d].when_us == j->msgs[i].when_us && !dup; d--)
                dup = strcmp(j->boxes[j->msgs[d].box].v.msgs[j->msgs[d].idx].uidl,
                             j->boxes[j->msgs[i].box].v.msgs[j->msgs[i].idx].uidl) == 0;
            if (!dup) j->msgs[k++] = j->msgs[i];
        }
        j->n = k;
    }
}

static const struct pop_msg *
http_pm(const struct http_job *j, const struct http_msg *m)
{
    return &j->boxes[m->box].v.msgs[m->idx];
}

/* A message's ID in the API: its UIDL, where that is safe in a URL path; else a hash of it. A
 * Maildir UIDL's sizes (",S=...,W=...") are left out: the ID stays what it was before UIDLs took
 * them in (mdir_uidl_len), and is the name as it was in SPOOL/.tmp (http_store). */
static void
http_msg_id(const char *uidl, char *out, size_t n)
{
    size_t i;
    const char *sizes = strstr(uidl, ",S=");
    for (i = 0; uidl + i != sizes && uidl[i]; i++)
        if (!isalnum((unsigned char)uidl[i]) && !strchr("._-", uidl[i])) break;
    if ((!uidl[i] || uidl + i == sizes) && i < n) { memcpy(out, uidl, i); out[i] = 0; return; }
    {
        struct sha256 s;
        unsigned char d[32];
        sha256_init(&s);
        sha256_update(&s, uidl, strlen(uidl));
        sha256_final(&s, d);
        for (i = 0; i < 16 && 2 * i + 3 < n; i++) sprintf(out + 1 + 2 * i, "%02x", d[i]);
        out[0] = 'h';
    }
}

/* The message with that ID ("latest": the newest), or NULL. */
static struct http_msg *
http_find(struct http_job *j, const char *id)
{
    int i;
    char mine[72];
    if (strcmp(id, "latest") == 0) return j->n ? &j->msgs[0] : NULL;
    for (i = 0; i < j->n; i++) {
        http_msg_id(http_pm(j, &j->msgs[i])->uidl, mine, sizeof mine);
        if (strcmp(mine, id) == 0) return &j->msgs[i];
    }
    return NULL;
}

/* Is it read? Maildir: in cur/ with the S flag (maildir.html, "info"); an mbox keeps no such mark here. */
static int
http_is_read(const struct pop_msg *m)
{
    const char *info;
    if (!m->name || strncmp(m->name, "cur/", 4) != 0) return 0;
    info = strrchr(m->name, MS_MAILDIR_INFO);
    return info && strncmp(info + 1, "2,", 2) == 0 && strchr(info + 3, 'S') != NULL;
}

/* Reads a message's text into out (at most limit bytes; MS_HTTP_HEAD_ONLY: its header block),
 * LF line ends as stored; an mbox's ">From " lines unquoted (mboxrd). 0, or what msg_text
 * said (MSG_*). */
static int
http_read_msg(struct http_job *j, const struct http_msg *hm, struct buf *out, size_t limit)
{
    struct http_box *bx = &j->boxes[hm->box];
    struct pop_msg *m = &bx->v.msgs[hm->idx];
    char path[MS_PATH_MESSAGE];
    int64_t start, end, at;
    int r = bx->v.ops->msg_text(&bx->v, m, path, sizeof path, &start, &end), fd;
    size_t base = out->len;
    if (r != 0) return r;
    if ((fd = os_open(path, O_RDONLY, 0)) < 0) return MSG_UNREADABLE;
    for (at = start; end < 0 || at < end;) {
        int head = limit == MS_HTTP_HEAD_ONLY;
        size_t want = head ? 16384 : 65536;
        long got;
        if (end >= 0 && (int64_t)want > end - at) want = (size_t)(end - at);
        buf_reserve(out, want);
        if ((got = os_pread(fd, out->p + out->len, want, at)) <= 0) break;
        out->len += (size_t)got;
        out->p[out->len] = 0;
        at += got;
        if (head && (strstr(out->p + base, "\n\n") || out->len - base >= MS_HEADER_MAX)) break;
        if (!head && out->len - base >= limit) break;
    }
    os_close(fd);
    if (bx->v.ops->from_quoted) { /* mboxrd: ">From " lines lose one '>' */
        size_t i = base, o = base;
        int bol = 1;
        while (i < out->len) {
            if (bol && out->p[i] == '>') {
                size_t k = i;
                while (k < out->len && out->p[k] == '>') k++;
                if (out->len - k >= 5 && memcmp(out->p + k, "From ", 5) == 0) i++;
            }
            bol = out->p[i] == '\n';
            out->p[o++] = out->p[i++];
        }
        out->len = o;
        out->p[o] = 0;
    }
    return 0;
}

/* ---- messages as Mailpit shows them ---- */

/* A message read and split into its MIME parts. */
struct http_doc {
    struct buf text;
    struct mime_part part[MIME_MAX_PARTS];
    int nparts;
    size_t hlen;                     /* its header block */
    int text_part, html_part;        /* the bodies shown (-1: none) */
};

/* Which leaves are attachments, inline parts, or the text and HTML shown:
 * the first text/plain and text/html leaves that are not attachments are the
 * bodies; a leaf with a Content-ID or "inline" disposition that is not text
 * is inline (Mailpit's Inline); every other leaf is an attachment. */
enum { PART_BODY, PART_INLINE, PART_ATTACHMENT, PART_CONTAINER };
static int
http_part_kind(const struct http_doc *d, int i)
{
    const struct mime_part *p = &d->part[i];
    if (p->multipart) return PART_CONTAINER;
    if (i == d->text_part || i == d->html_part) return PART_BODY;
    if (strcmp(p->disposition, "attachment") != 0 && (p->content_id[0] || strcmp(p->disposition, "inline") == 0) &&
        strncmp(p->type, "text/", 5) != 0)
        return PART_INLINE;
    if (strcmp(p->disposition, "attachment") != 0 && !p->filename[0] &&
        (strcmp(p->type, "text/plain") == 0 || strcmp(p->type, "text/html") == 0))
        return PART_BODY; /* a second text body (a client's alternative): not an attachment */
    return PART_ATTACHMENT;
}

static int
http_doc_read(struct http_job *j, const struct http_msg *hm, struct http_doc *d, size_t limit)
{
    int i, r;
    const char *e;
    memset(d, 0, sizeof *d);
    d->text_part = d->html_part = -1;
    if ((r = http_read_msg(j, hm, &d->text, limit)) != 0) { buf_free(&d->text); return r; }
    if (!d->text.p) buf_add(&d->text, "", 0);
    e = strstr(d->text.p, "\n\n");
    d->hlen = e ? (size_t)(e - d->text.p) + 1 : d->text.len;
    if (limit == MS_HTTP_HEAD_ONLY) return 0;
    d->nparts = mime_parse(d->text.p, d->text.len, d->part, MIME_MAX_PARTS);
    for (i = 0; i < d->nparts; i++) {
        const struct mime_part *p = &d->part[i];
        if (p->multipart || strcmp(p->disposition, "attachment") == 0) continue;
        if (d->text_part < 0 && strcmp(p->type, "text/plain") == 0) d->text_part = i;
        if (d->html_part < 0 && strcmp(p->type, "text/html") == 0) d->html_part = i;
    }
    return 0;
}

/* A header field as UTF-8 text (into a buf reused by the caller). */
static const char *
http_field(const struct http_doc *d, const char *name, struct buf *tmp)
{
    tmp->len = 0;
    buf_add(tmp, "", 0);
    mime_header(d->text.p, d->hlen, name, tmp);
    return tmp->p;
}

/* An address list field as Mailpit's [{"Name":..,"Address":..}] (never null). */
static void
http_addresses(struct buf *b, const struct http_doc *d, const char *field, int one)
{
    struct mime_addr *a = xrealloc(NULL, sizeof *a * MS_HTTP_ADDRS); /* 57 KB: not on the stack */
    int n = 0, i;
    size_t pos = 0, flen;
    const char *f;
    while (hdr_next_field(d->text.p, d->hlen, &pos, &f, &flen)) /* every such field: To may come twice */
        if (hdr_is(f, flen, field)) {
            size_t k = strlen(field) + 1;
            n += mime_addresses(f + k, flen - k, a + n, MS_HTTP_ADDRS - n);
        }
    if (one) {
        if (!n) { buf_adds(b, "null"); free(a); return; }
        n = 1;
    } else {
        buf_adds(b, "[");
    }
    for (i = 0; i < n; i++) {
        buf_adds(b, i ? ",{" : "{");
        json_kv(b, "", "Name", a[i].name);
        json_kv(b, ",", "Address", a[i].addr);
        buf_adds(b, "}");
    }
    if (!one) buf_adds(b, "]");
    free(a);
}

/* Text with its white space runs made one space, at most max bytes (cut at a character's start). */
static void
http_snippet(struct buf *b, const char *s, size_t n, size_t max)
{
    struct buf t = {0};
    size_t i;
    int space = 1;
    for (i = 0; i < n && t.len < max; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ') { if (!space) buf_add(&t, " ", 1); space = 1; continue; }
        space = 0;
        buf_add(&t, s + i, 1);
    }
    while (t.len && ((unsigned char)t.p[t.len - 1] == ' ' || ((unsigned char)t.p[t.len - 1] & 0xC0) == 0x80 ||
                     (i < n && (unsigned char)t.p[t.len - 1] >= 0xC0)))
        t.len--; /* no half character at the cut */
    json_str(b, t.p ? t.p : "", t.len);
    buf_free(&t);
}

/* HTML as plain text for a snippet: tags, and the content of style and script, dropped. */
static void
http_html_text(struct buf *out, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] == '<') {
            int skip = (n - i > 6 && ms_strncaseeq(s + i, "<style", 6)) || (n - i > 7 && ms_strncaseeq(s + i, "<script", 7));
            const char *gt = memchr(s + i, '>', n - i);
            i = gt ? (size_t)(gt - s) + 1 : n;
            if (skip) {
                while (i < n && !(s[i] == '<' && i + 1 < n && s[i + 1] == '/')) i++;
            }
            buf_add(out, " ", 1);
            continue;
        }
        if (s[i] == '&') {
            static const char *const ents[][2] = {{"&nbsp;", " "}, {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&#39;", "'"}};
            size_t e;
            for (e = 0; e < sizeof ents / sizeof ents[0]; e++)
                if (n - i >= strlen(ents[e][0]) && ms_strncaseeq(s + i, ents[e][0], strlen(ents[e][0]))) break;
            if (e < sizeof ents / sizeof ents[0]) { buf_adds(out, ents[e][1]); i += strlen(ents[e][0]); continue; }
        }
        buf_add(out, s + i, 1);
        i++;
    }
}

/* The received time as RFC 3339: from the UIDL's time, else the Date field. */
static int64_t
http_created(const struct http_msg *hm, const struct http_doc *d)
{
    struct buf t = {0};
    int64_t utc = hm->when_us / 1000000;
    int off;
    if (!utc && mime_header(d->text.p, d->hlen, "Date", &t) && mime_date(t.p, t.len, &utc, &off) != 0) utc = 0;
    buf_free(&t);
    return utc;
}

static void
http_time(struct buf *b, const char *sep, const char *key, int64_t t)
{
    char when[40];
    ms_utc_time(when, sizeof when, t, 'T', "Z");
    json_kv(b, sep, key, when);
}

/* The count of attachments (and inline parts: inline) of a read document. */
static int
http_count_parts(const struct http_doc *d, int kind)
{
    int i, n = 0;
    for (i = 0; i < d->nparts; i++) n += http_part_kind(d, i) == kind;
    return n;
}

/* A message's summary as Mailpit's list shows it (MessageSummary). */
static void
http_summary(struct conn *c, struct http_job *j, const struct http_msg *hm, const struct http_doc *d)
{
    struct buf *b = &c->u.http.resp, tmp = {0};
    const struct pop_msg *m = http_pm(j, hm);
    char id[72];
    http_msg_id(m->uidl, id, sizeof id);
    buf_adds(b, "{");
    json_kv(b, "", "ID", id);
    http_field(d, "Message-ID", &tmp);
    if (tmp.len && tmp.p[0] == '<') { memmove(tmp.p, tmp.p + 1, tmp.len); tmp.len--; if (tmp.len && tmp.p[tmp.len - 1] == '>') tmp.p[--tmp.len] = 0; }
    json_kv(b, ",", "MessageID", tmp.p);
    buf_printf(b, ",\"Read\":%s,\"From\":", http_is_read(m) ? "true" : "false");
    http_addresses(b, d, "From", 1);
    buf_adds(b, ",\"To\":");
    http_addresses(b, d, "To", 0);
    buf_adds(b, ",\"Cc\":");
    http_addresses(b, d, "Cc", 0);
    buf_adds(b, ",\"Bcc\":");
    http_addresses(b, d, "Bcc", 0);
    buf_adds(b, ",\"ReplyTo\":");
    http_addresses(b, d, "Reply-To", 0);
    json_kv(b, ",", "Subject", http_field(d, "Subject", &tmp));
    http_time(b, ",", "Created", http_created(hm, d));
    json_kv(b, ",", "Username", "");
    buf_printf(b, ",\"Tags\":[],\"Size\":%lld,\"Attachments\":%d,\"Snippet\":", (long long)m->size,
               http_count_parts(d, PART_ATTACHMENT));
    tmp.len = 0;
    if (d->text_part >= 0) mime_text(d->text.p, &d->part[d->text_part], &tmp);
    else if (d->html_part >= 0) {
        struct buf html = {0};
        mime_text(d->text.p, &d->part[d->html_part], &html);
        http_html_text(&tmp, html.p ? html.p : "", html.len);
        buf_free(&html);
    }
    http_snippet(b, tmp.p ? tmp.p : "", tmp.len, 250);
    buf_adds(b, "}");
    buf_free(&tmp);
}

/* The parts of a kind as Mailpit's Attachments or Inline array. */
static void
http_parts_json(struct buf *b, const struct http_doc *d, int kind)
{
    int i, first = 1;
    buf_adds(b, "[");
    for (i = 0; i < d->nparts; i++) {
        const struct mime_part *p = &d->part[i];
        if (http_part_kind(d, i) != kind) continue;
        buf_adds(b, first ? "{" : ",{");
        first = 0;
        json_kv(b, "", "PartID", p->id);
        json_kv(b, ",", "FileName", p->filename);
        json_kv(b, ",", "ContentType", p->type);
        json_kv(b, ",", "ContentID", p->content_id);
        buf_printf(b, ",\"Size\":%lu}", (unsigned long)mime_body_size(d->text.p, p));
    }
    buf_adds(b, "]");
}

/* GET /api/v1/message/{ID}: the whole message (Mailpit's Message). */
static void
http_message_json(struct conn *c, struct http_job *j, const struct http_msg *hm, const struct http_doc *d)
{
    struct buf *b = &c->u.http.resp, tmp = {0};
    size_t at;
    http_summary(c, j, hm, d);
    at = b->len - 1; /* reopen the object: the summary's fields, then the message's */
    b->len = at;
    buf_adds(b, ",\"ReturnPath\":");
    http_field(d, "Return-Path", &tmp);
    {
        struct mime_addr rp;
        json_strs(b, mime_addresses(tmp.p, tmp.len, &rp, 1) == 1 ? rp.addr : "");
    }
    http_field(d, "Date", &tmp);
    {
        int64_t utc;
        int off;
        if (mime_date(tmp.p, tmp.len, &utc, &off) != 0) utc = http_created(hm, d);
        http_time(b, ",", "Date", utc);
    }
    buf_adds(b, ",\"Text\":");
    tmp.len = 0;
    if (d->text_part >= 0) mime_text(d->text.p, &d->part[d->text_part], &tmp);
    json_str(b, tmp.p ? tmp.p : "", tmp.len);
    buf_adds(b, ",\"HTML\":");
    tmp.len = 0;
    if (d->html_part >= 0) mime_text(d->text.p, &d->part[d->html_part], &tmp);
    json_str(b, tmp.p ? tmp.p : "", tmp.len);
    buf_adds(b, ",\"Inline\":");
    http_parts_json(b, d, PART_INLINE);
    buf_adds(b, ",\"Attachments\":");
    http_parts_json(b, d, PART_ATTACHMENT);
    buf_adds(b, ",\"ListUnsubscribe\":{");
    json_kv(b, "", "Header", http_field(d, "List-Unsubscribe", &tmp));
    buf_adds(b, ",\"Links\":[],\"Errors\":\"\",");
    json_kv(b, "", "HeaderPost", http_field(d, "List-Unsubscribe-Post", &tmp));
    buf_adds(b, "}}");
    buf_free(&tmp);
}

/* A field name as Mailpit (Go's textproto) writes it: "Message-Id", "X-Mailer". */
static void
http_canonical_name(char *out, const char *f, size_t n)
{
    size_t i;
    int up = 1;
    for (i = 0; i < n; i++) {
        out[i] = (char)(up ? toupper((unsigned char)f[i]) : tolower((unsigned char)f[i]));
        up = f[i] == '-';
    }
    out[n] = 0;
}

/* GET /api/v1/message/{ID}/headers: {"Name":["value",...]}, names in order of first appearance. */
static void
http_headers_json(struct buf *b, const struct http_doc *d)
{
    size_t pos = 0, flen, p2, fl2;
    const char *f, *f2;
    int first = 1, nf = 0;
    buf_adds(b, "{");
    while (hdr_next_field(d->text.p, d->hlen, &pos, &f, &flen) && ++nf <= MS_HTTP_FIELDS_SHOWN) { /* each looks back: n^2 */
        const char *colon = memchr(f, ':', flen);
        char name[128];
        int seen = 0, vfirst = 1;
        size_t nl;
        if (!colon || (nl = (size_t)(colon - f)) >= sizeof name || nl == 0) continue;
        for (p2 = 0; p2 < (size_t)(f - d->text.p) && hdr_next_field(d->text.p, d->hlen, &p2, &f2, &fl2);)
            if (fl2 > nl && f2[nl] == ':' && ms_strncaseeq(f2, f, nl)) { seen = 1; break; }
        if (seen) continue; /* listed with its first */
        http_canonical_name(name, f, nl);
        buf_adds(b, first ? "" : ",");
        first = 0;
        json_strs(b, name);
        buf_adds(b, ":[");
        for (p2 = pos - flen; hdr_next_field(d->text.p, d->hlen, &p2, &f2, &fl2);) {
            struct buf v = {0};
            if (!(fl2 > nl && f2[nl] == ':' && ms_strncaseeq(f2, f, nl))) continue;
            mime_header_text(&v, f2 + nl + 1, fl2 - nl - 1);
            buf_adds(b, vfirst ? "" : ",");
            vfirst = 0;
            json_str(b, v.p ? v.p : "", v.len);
            buf_free(&v);
        }
        buf_adds(b, "]");
    }
    buf_adds(b, "}");
}

/* ---- the requests ---- */

struct http_route {
    int method;                      /* HTTP_NMETHODS: any (the handler says which it takes) */
    const char *path;                /* '*' stands for one segment ({ID}, {PartID}), taken into h->arg */
    int store;                       /* 1: the views of the store are made first (http_views_step);
                                        HTTP_LOGIN_ONLY: a login, no views; 0: neither */
    void (*fn)(struct conn *c);
};

/* Makes the views (as the session's work), then runs the route's handler. */
static void
http_with_store(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    if (h->route->store == HTTP_LOGIN_ONLY) { h->route->fn(c); return; }
    http_job_free(h->job);
    h->job = http_job_new(c);
    h->state = H_WORK;
    c->work = http_views_step;
}

/* The request's end: the views dropped, the answer made. */
static void
http_done(struct conn *c)
{
    http_job_free(c->u.http.job);
    c->u.http.job = NULL;
}

static int
http_views_step(struct conn *c, int64_t until)
{
    struct http_sess *h = &c->u.http;
    struct http_job *j = h->job;
    const struct ms_config *cfg = c->ms->cfg;
    while (j->next < j->nbox) {
        struct http_box *bx = &j->boxes[j->next];
        int r;
        if (!bx->opened) {
            errno = 0;
            r = store_no_links(cfg->spool, bx->addr, store_of(cfg)->maildir) != 0 ? -1
                : store_of(cfg)->view_open(&bx->v, cfg->spool, bx->addr);
            bx->opened = 1;
            if (r != 0) {
                int locked = errno == EAGAIN;
                conn_log(c, "cannot open mailbox %s: %s", bx->addr, locked ? "locked by another program" : strerror(errno));
                conn_work_done(c);
                http_done(c);
                buf_adds(&h->resp, locked ? "Mailbox is locked by another program, try again\n" : "Cannot open the mailbox\n");
                http_answer_extra(c, 503, "text/plain; charset=utf-8", "Retry-After: 2\r\n");
                return 1;
            }
        }
        if ((r = view_more(&bx->v, until)) == 0) return 0;
        if (r < 0) {
            conn_log(c, "cannot read mailbox %s: %s", bx->addr, strerror(errno));
            conn_work_done(c);
            http_done(c);
            http_text(c, 503, "Cannot read the mailbox\n");
            return 1;
        }
        j->next++;
        if (os_now_us() >= until) return 0;
    }
    http_job_list(j);
    conn_work_done(c);
    h->route->fn(c);
    return c->work ? 0 : 1;
}

/* start and limit of a list (Mailpit's defaults: 0 and 50). -1 if malformed. */
static int
http_page(struct conn *c, int *start, int *limit)
{
    char v[32];
    char *end;
    long x;
    *start = 0;
    *limit = 50;
    if (http_query(c->u.http.req.target, "start", v, sizeof v) > 0 && v[0]) {
        if ((x = strtol(v, &end, 10)) < 0 || *end || x > INT_MAX) return -1;
        *start = (int)x;
    }
    if (http_query(c->u.http.req.target, "limit", v, sizeof v) > 0 && v[0]) {
        if ((x = strtol(v, &end, 10)) < 0 || *end || x > INT_MAX) return -1;
        *limit = x ? (int)x : 50;
        if (*limit > MS_HTTP_LIST_MAX) *limit = MS_HTTP_LIST_MAX; /* each is read for its summary in one turn */
    }
    return 0;
}

/* Mailpit's MessagesSummary around the messages listed: idx[0..n), of total matches. */
static void
http_list_json(struct conn *c, const int *idx, int n, int total, int start, int limit)
{
    struct http_sess *h = &c->u.http;
    struct http_job *j = h->job;
    struct buf *b = &h->resp;
    int i, unread = 0, shown = 0;
    int unread_listed = 0;
    for (i = 0; i < j->n; i++) unread += !http_is_read(http_pm(j, &j->msgs[i]));
    for (i = 0; i < n; i++) unread_listed += !http_is_read(http_pm(j, &j->msgs[idx ? idx[i] : i]));
    buf_printf(b, "{\"total\":%d,\"unread\":%d,\"count\":%d,\"messages_count\":%d,\"messages_unread\":%d,"
               "\"start\":%d,\"tags\":[],\"messages\":[",
               j->n, unread, start < n ? (n - start < limit ? n - start : limit) : 0, total, unread_listed, start);
    for (i = start; i < n && shown < limit; i++, shown++) {
        struct http_doc d;
        const struct http_msg *hm = &j->msgs[idx ? idx[i] : i];
        if (shown) buf_adds(b, ",");
        if (http_doc_read(j, hm, &d, MS_HTTP_SUMMARY_READ) != 0) memset(&d, 0, sizeof d), buf_add(&d.text, "", 0), d.text_part = d.html_part = -1;
        http_summary(c, j, hm, &d);
        buf_free(&d.text);
    }
    buf_adds(b, "]}");
}

/* GET /api/v1/messages */
static void
http_get_messages(struct conn *c)
{
    int start, limit;
    if (http_page(c, &start, &limit) != 0) { http_done(c); http_text(c, 400, "Invalid start or limit\n"); return; }
    http_list_json(c, NULL, c->u.http.job->n, c->u.http.job->n, start, limit);
    http_done(c);
    http_json(c);
}

/* The policy of a message's body in the page's frame: no script, form or plugin, nothing loaded
 * but the images img allows; framed only by the page (a frame of another site could dress mail up). */
#define HTTP_VIEW_CSP(img) "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; " img "; base-uri 'none'; " \
    "form-action 'none'; frame-ancestors 'self'; sandbox allow-same-origin allow-popups allow-popups-to-escape-sandbox\r\n" \
    "Referrer-Policy: no-referrer\r\n"

/* A message's HTML with its cid: references (RFC 2392: cid:CONTENT-ID, %-encoded) made into the
 * API's URLs of those parts, so its inline images show under a policy that loads nothing else. */
static void
http_html_cids(struct buf *out, const char *html, size_t n, const struct http_doc *d, const char *id)
{
    size_t i = 0, done = 0;
    while (i + 4 <= n) {
        char cid[sizeof d->part[0].content_id];
        size_t e = i + 4, k = 0;
        int p;
        if (!ms_strncaseeq(html + i, "cid:", 4) || (i && (isalnum((unsigned char)html[i - 1]) || html[i - 1] == '-'))) {
            i++;
            continue;
        }
        while (e < n && !strchr("\"' \t\r\n)>", html[e]) && k + 1 < sizeof cid) {
            if (html[e] == '%' && e + 2 < n && isxdigit((unsigned char)html[e + 1]) && isxdigit((unsigned char)html[e + 2])) {
                char hex[3] = {html[e + 1], html[e + 2], 0};
                cid[k++] = (char)strtol(hex, NULL, 16);
                e += 3;
            } else {
                cid[k++] = html[e++];
            }
        }
        cid[k] = 0;
        for (p = 0; p < d->nparts && (d->part[p].multipart || !k || strcmp(d->part[p].content_id, cid) != 0); p++) {}
        if (p < d->nparts) {
            buf_add(out, html + done, i - done);
            buf_printf(out, "/api/v1/message/%s/part/%s", id, d->part[p].id);
            done = e;
        }
        i = e;
    }
    buf_add(out, html + done, n - done);
}

/* GET /api/v1/message/{ID} and its /headers, /raw, /part/{PartID}; GET /view/{ID}.html|.txt */
enum { SHOW_MESSAGE, SHOW_HEADERS, SHOW_RAW, SHOW_PART, SHOW_HTML, SHOW_TEXT };
static void
http_show(struct conn *c, int what)
{
    struct http_sess *h = &c->u.http;
    struct http_job *j = h->job;
    struct http_msg *hm;
    struct http_doc d;
    char id[MS_HTTP_ARG_MAX];
    int r, i;
    ms_strlcpy(id, h->arg[0], sizeof id);
    if (what == SHOW_HTML || what == SHOW_TEXT) id[strlen(id) - (what == SHOW_HTML ? 5 : 4)] = 0;
    if ((hm = http_find(j, id)) == NULL) { http_done(c); http_text(c, 404, "Message not found\n"); return; }
    r = http_doc_read(j, hm, &d, what == SHOW_HEADERS ? MS_HTTP_HEAD_ONLY : MS_HTTP_MSG_MAX);
    if (r != 0) {
        http_done(c);
        http_text(c, r == MSG_LOCKED ? 503 : 404, r == MSG_LOCKED ? "Mailbox is locked by another program\n" : "Message not found\n");
        return;
    }
    switch (what) {
    case SHOW_MESSAGE:
        http_message_json(c, j, hm, &d);
        http_done(c);
        http_json(c);
        break;
    case SHOW_HEADERS:
        http_headers_json(&h->resp, &d);
        http_done(c);
        http_json(c);
        break;
    case SHOW_RAW: { /* as it came: CRLF line ends */
        const char *p = d.text.p, *end = d.text.p + d.text.len, *nl;
        buf_reserve(&h->resp, d.text.len + d.text.len / 32);
        for (; p < end; p = nl + 1) {
            nl = memchr(p, '\n', (size_t)(end - p));
            if (!nl) { buf_add(&h->resp, p, (size_t)(end - p)); break; }
            buf_add(&h->resp, p, (size_t)(nl - p));
            buf_add(&h->resp, "\r\n", 2);
        }
        http_done(c);
        http_answer(c, 200, "text/plain; charset=utf-8");
        break;
    }
    case SHOW_PART:
        for (i = 0; i < d.nparts; i++)
            if (!d.part[i].multipart && strcmp(d.part[i].id, h->arg[1]) == 0) break;
        http_done(c);
        if (i == d.nparts) { http_text(c, 404, "Part not found\n"); break; }
        mime_body(d.text.p, &d.part[i], &h->resp);
        {
            char ctype[160], disp[700];
            const struct mime_part *p = &d.part[i];
            ms_fmt(ctype, sizeof ctype, "%s%s%s", p->type, p->charset[0] ? "; charset=" : "", p->charset);
            /* the sender's content on the API's origin: sandboxed (no script, nothing loaded), and saved
             * rather than shown unless it is an image */
            ms_strlcpy(disp, "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox\r\n",
                       sizeof disp);
            if (strncmp(p->type, "image/", 6) != 0 && !p->filename[0])
                ms_strlcpy(disp + strlen(disp), "Content-Disposition: attachment\r\n", sizeof disp - strlen(disp));
            if (p->filename[0]) { /* RFC 6266 4.3: the UTF-8 name percent-encoded (RFC 8187) */
                size_t o, k;
                ms_strlcpy(disp + strlen(disp), strncmp(p->type, "image/", 6) == 0 ? "Content-Disposition: inline; filename*=UTF-8''"
                           : "Content-Disposition: attachment; filename*=UTF-8''", sizeof disp - strlen(disp));
                o = strlen(disp);
                for (k = 0; p->filename[k] && o + 8 < sizeof disp; k++) {
                    unsigned char ch = (unsigned char)p->filename[k];
                    if (isalnum(ch) || strchr("!#$&+-.^_`|~", ch)) disp[o++] = (char)ch;
                    else o += (size_t)sprintf(disp + o, "%%%02X", ch);
                }
                ms_strlcpy(disp + o, "\r\n", sizeof disp - o);
            }
            http_answer_extra(c, 200, ctype, disp);
        }
        break;
    default: /* the bodies, for the page's frame: the HTML may run no script, submit no form, and load
              * nothing but its own inline images, or remote images too once the reader asks (?remote=1) */
        if (what == SHOW_HTML && d.html_part >= 0) {
            struct buf html = {0};
            char remote[4];
            mime_text(d.text.p, &d.part[d.html_part], &html);
            /* links open a tab of their own: in the frame, the page's policy would block them (the
             * first <base> counts, so the mail's own cannot come before) */
            buf_adds(&h->resp, "<base target=\"_blank\">");
            http_html_cids(&h->resp, html.p ? html.p : "", html.len, &d, id);
            buf_free(&html);
            http_done(c);
            http_answer_extra(c, 200, "text/html; charset=utf-8", http_query(h->req.target, "remote", remote, sizeof remote) > 0 &&
                              strcmp(remote, "1") == 0 ? HTTP_VIEW_CSP("img-src 'self' data: https: http:") : HTTP_VIEW_CSP("img-src 'self' data:"));
            break;
        }
        if (what == SHOW_TEXT && d.text_part >= 0) mime_text(d.text.p, &d.part[d.text_part], &h->resp);
        http_done(c);
        if ((what == SHOW_HTML ? d.html_part : d.text_part) < 0) { http_text(c, 404, "The message has no such part\n"); break; }
        http_answer_extra(c, 200, "text/plain; charset=utf-8", HTTP_VIEW_CSP("img-src data:"));
        break;
    }
    buf_free(&d.text);
}
static void http_get_message(struct conn *c) { http_show(c, SHOW_MESSAGE); }
static void http_get_headers(struct conn *c) { http_show(c, SHOW_HEADERS); }
static void http_get_raw(struct conn *c) { http_show(c, SHOW_RAW); }
static void http_get_part(struct conn *c) { http_show(c, SHOW_PART); }

static void
http_get_view(struct conn *c)
{
    size_t n = strlen(c->u.http.arg[0]);
    if (n > 5 && strcmp(c->u.http.arg[0] + n - 5, ".html") == 0) http_show(c, SHOW_HTML);
    else if (n > 4 && strcmp(c->u.http.arg[0] + n - 4, ".txt") == 0) http_show(c, SHOW_TEXT);
    else { http_done(c); http_text(c, 404, "404 page not found\n"); }
}

/* ---- searches, and changes to many messages: one message per step, as the session's work ---- */

/* The character at s (n bytes left) in lower case, for searches: ASCII, Latin-1 and Cyrillic,
 * the scripts of the mail classrooms write (a byte that is not UTF-8 stands for itself, apart
 * from every character); *len its length. */
static uint32_t
utf8_lower_at(const char *s, size_t n, size_t *len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t k = utf8_seq(u, n);
    uint32_t cp;
    *len = k ? k : 1;
    if (k == 0) return 0x110000u | u[0];
    if (k == 1) return u[0] >= 'A' && u[0] <= 'Z' ? u[0] + 32u : u[0];
    if (k == 2) cp = (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F);
    else if (k == 3) cp = (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F);
    else return 0x10000; /* beyond the BMP: no case here */
    if ((cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) || (cp >= 0x410 && cp <= 0x42F)) return cp + 0x20;
    if (cp >= 0x400 && cp <= 0x40F) return cp + 0x50; /* Ё and the others above А */
    return cp;
}

/* Does hay[0..n) contain needle, letters in any case (utf8_lower_at)? Mailpit's SQLite LIKE
 * folds ASCII only; Cyrillic mail is searched here as its writers expect. */
static int
ms_contains(const char *hay, size_t n, const char *needle)
{
    size_t nl = strlen(needle), i, step;
    if (!nl) return 1;
    for (i = 0; i < n; i += step) {
        size_t h = i, k = 0, a, b;
        utf8_lower_at(hay + i, n - i, &step);
        while (k < nl && h < n && utf8_lower_at(hay + h, n - h, &a) == utf8_lower_at(needle + k, nl - k, &b)) {
            h += a;
            k += b;
        }
        if (k == nl) return 1;
    }
    return 0;
}

static int
http_field_has(const struct http_doc *d, const char *name, const char *needle, struct buf *tmp)
{
    size_t pos = 0, flen;
    const char *f;
    while (hdr_next_field(d->text.p, d->hlen, &pos, &f, &flen)) {
        size_t k = strlen(name) + 1;
        if (!hdr_is(f, flen, name)) continue;
        tmp->len = 0;
        mime_header_text(tmp, f + k, flen - k);
        if (tmp->p && ms_contains(tmp->p, tmp->len, needle)) return 1;
    }
    return 0;
}

/* Does the message match every term? (body: the terms need more than its header) */
static int
http_match(struct http_job *j, const struct http_msg *hm, const struct search_term *t, int nt, int body)
{
    const struct pop_msg *m = http_pm(j, hm);
    struct http_doc d;
    struct buf tmp = {0}, text = {0};
    int i, ok = 1;
    if (http_doc_read(j, hm, &d, body ? MS_HTTP_SUMMARY_READ : MS_HTTP_HEAD_ONLY) != 0) return 0;
    for (i = 0; i < nt && ok; i++) {
        int r = 0;
        const char *s = t[i].text;
        switch (t[i].kind) {
        case SQ_TEXT:
            if (!text.p) {
                static const char *const shown[] = {"Subject", "From", "To", "Cc", "Bcc", "Reply-To"};
                size_t f;
                int p;
                buf_add(&text, "", 0);
                for (f = 0; f < sizeof shown / sizeof shown[0]; f++) {
                    mime_header(d.text.p, d.hlen, shown[f], &text);
                    buf_add(&text, "\n", 1);
                }
                for (p = 0; p < d.nparts; p++) {
                    if (p == d.text_part) mime_text(d.text.p, &d.part[p], &text);
                    else if (p == d.html_part) {
                        tmp.len = 0;
                        mime_text(d.text.p, &d.part[p], &tmp);
                        http_html_text(&text, tmp.p ? tmp.p : "", tmp.len);
                    } else {
                        buf_adds(&text, d.part[p].filename);
                    }
                    buf_add(&text, "\n", 1);
                }
            }
            r = ms_contains(text.p, text.len, s);
            break;
        case SQ_FROM: r = http_field_has(&d, "From", s, &tmp); break;
        case SQ_TO: r = http_field_has(&d, "To", s, &tmp); break;
        case SQ_CC: r = http_field_has(&d, "Cc", s, &tmp); break;
        case SQ_BCC: r = http_field_has(&d, "Bcc", s, &tmp); break;
        case SQ_REPLY_TO: r = http_field_has(&d, "Reply-To", s, &tmp); break;
        case SQ_ADDRESSED:
            r = http_field_has(&d, "To", s, &tmp) || http_field_has(&d, "Cc", s, &tmp) || http_field_has(&d, "Bcc", s, &tmp);
            break;
        case SQ_SUBJECT: r = http_field_has(&d, "Subject", s, &tmp); break;
        case SQ_MESSAGE_ID: r = http_field_has(&d, "Message-ID", s, &tmp); break;
        case SQ_IS_READ: r = http_is_read(m); break;
        case SQ_IS_UNREAD: r = !http_is_read(m); break;
        case SQ_HAS_ATTACHMENT: r = http_count_parts(&d, PART_ATTACHMENT) > 0; break;
        case SQ_HAS_INLINE: r = http_count_parts(&d, PART_INLINE) > 0; break;
        case SQ_AFTER: r = http_created(hm, &d) > t[i].num; break;
        case SQ_BEFORE: r = http_created(hm, &d) < t[i].num; break;
        case SQ_LARGER: r = m->size > t[i].num; break;
        case SQ_SMALLER: r = m->size < t[i].num; break;
        default: r = 0; break; /* tag:, is:tagged: mailsrv keeps no tags */
        }
        ok = r != t[i].neg;
    }
    buf_free(&tmp);
    buf_free(&text);
    buf_free(&d.text);
    return ok;
}

/* What a sweep over the messages does with each one chosen, then at the end. */
enum { SWEEP_LIST, SWEEP_DELETE, SWEEP_READ, SWEEP_UNREAD };

struct http_sweep {
    struct search_term t[MS_HTTP_TERMS];
    int nt, body, all, action;       /* all: no search, no IDs: every message */
    char (*ids)[72];                 /* the IDs given */
    int nids;
};

/* A change of a message's read mark (Maildir: moved to cur/ with the S flag, or the flag taken off). */
static void
http_set_read(struct http_job *j, const struct http_msg *hm, int read)
{
    struct http_box *bx;
    int b;
    const char *uidl = http_pm(j, hm)->uidl;
    for (b = 0; b < j->nbox; b++) { /* each copy: in every mailbox that got it */
        int i;
        bx = &j->boxes[b];
        if (!bx->v.ops->maildir) continue;
        for (i = 0; i < bx->v.n; i++) {
            struct pop_msg *m = &bx->v.msgs[i];
            char from[MS_PATH_MESSAGE], to[MS_PATH_MESSAGE], flags[32] = "";
            const char *base, *info;
            size_t k = 0, f;
            if (strcmp(m->uidl, uidl) != 0 || http_is_read(m) == read) continue;
            base = strchr(m->name, '/') + 1;
            info = strrchr(base, MS_MAILDIR_INFO);
            if (info && strncmp(info + 1, "2,", 2) == 0)
                for (f = 3; info[f] && k + 2 < sizeof flags; f++)
                    if (info[f] != 'S') flags[k++] = info[f];
            if (read) flags[k++] = 'S';
            flags[k] = 0;
            { /* flags in ASCII order (maildir.html) */
                size_t x, y;
                for (x = 0; x < k; x++)
                    for (y = x + 1; y < k; y++)
                        if (flags[y] < flags[x]) { char tmpc = flags[x]; flags[x] = flags[y]; flags[y] = tmpc; }
            }
            if (ms_fmt(from, sizeof from, "%s/%s", bx->v.path, m->name) < 0 ||
                ms_fmt(to, sizeof to, "%s/cur/%.*s%c2,%s", bx->v.path, (int)(info ? (size_t)(info - base) : strlen(base)),
                       base, MS_MAILDIR_INFO, flags) < 0 ||
                os_replace(from, to) != 0)
                continue;
            free(m->name);
            m->name = xstrdup(to + strlen(bx->v.path) + 1);
        }
    }
}

/* Is message hm one the sweep takes (before its search)? */
static int
http_sweep_chosen(const struct http_job *j, const struct http_sweep *s, const struct http_msg *hm)
{
    char id[72];
    int i;
    if (!s->nids) return 1;
    http_msg_id(http_pm(j, hm)->uidl, id, sizeof id);
    for (i = 0; i < s->nids; i++)
        if (strcmp(s->ids[i], id) == 0) return 1;
    return 0;
}

static void
http_sweep_free(struct http_sweep *s)
{
    if (!s) return;
    free(s->ids);
    free(s);
}

/* A message per turn of the loop below, until the time is up; then the answer. */
static int
http_sweep_step(struct conn *c, int64_t until)
{
    struct http_sess *h = &c->u.http;
    struct http_job *j = h->job;
    struct http_sweep *s = j->sweep;
    int b;
    while (j->pos < j->n) {
        const struct http_msg *hm = &j->msgs[j->pos++];
        if (http_sweep_chosen(j, s, hm) && (!s->nt || http_match(j, hm, s->t, s->nt, s->body))) {
            if (s->action == SWEEP_LIST) j->match[j->found++] = (int)(hm - j->msgs);
            else if (s->action == SWEEP_READ || s->action == SWEEP_UNREAD) http_set_read(j, hm, s->action == SWEEP_READ);
            else { /* every copy */
                const char *uidl = http_pm(j, hm)->uidl;
                for (b = 0; b < j->nbox; b++) {
                    int i;
                    for (i = 0; i < j->boxes[b].v.n; i++)
                        if (!j->boxes[b].v.msgs[i].deleted && strcmp(j->boxes[b].v.msgs[i].uidl, uidl) == 0) {
                            j->boxes[b].v.msgs[i].deleted = 1;
                            j->boxes[b].ndel++;
                        }
                }
                j->found++;
            }
        }
        if (os_now_us() >= until) return 0;
    }
    if (s->action == SWEEP_DELETE) { /* then the deletions, which must finish (as a POP3 QUIT's) */
        j->next = 0;
        c->work = http_expunge_step;
        c->work_must_finish = 1;
        return 0;
    }
    conn_work_done(c);
    if (s->action == SWEEP_LIST) {
        int start, limit;
        http_page(c, &start, &limit);
        http_list_json(c, j->match, j->found, j->found, start, limit);
        http_done(c);
        http_json(c);
    } else {
        http_done(c);
        http_text(c, 200, "ok");
    }
    return 1;
}

/* The deletions, mailbox by mailbox (view_expunge: as a POP3 QUIT makes them). */
static int
http_expunge_step(struct conn *c, int64_t until)
{
    struct http_job *j = c->u.http.job;
    int failed = 0;
    while (j->next < j->nbox) {
        struct http_box *bx = &j->boxes[j->next];
        int r = bx->ndel ? view_expunge(&bx->v, until) : 1;
        if (r == 0) return 0;
        if (r < 0) {
            conn_log(c, "cannot delete from mailbox %s: %s", bx->addr, strerror(errno));
            j->deleting = -1;
        } else if (bx->ndel) {
            int i;
            conn_log(c, "deleted %d messages from %s", bx->ndel, bx->addr);
            for (i = 0; i < bx->v.n; i++)
                if (bx->v.msgs[i].deleted) http_notify(c->ms, "delete", bx->v.msgs[i].uidl, NULL, bx->addr);
        }
        j->next++;
        if (os_now_us() >= until && j->next < j->nbox) return 0;
    }
    failed = j->deleting < 0;
    conn_work_done(c);
    http_done(c);
    if (failed) http_text(c, 503, "Some messages could not be deleted\n");
    else http_text(c, 200, "ok");
    return 1;
}

/* Reads a request's JSON body into a sweep: IDs, Read, Search (PUT and DELETE /api/v1/messages). */
static int
http_sweep_body(struct conn *c, struct http_sweep *s, int *read)
{
    struct http_sess *h = &c->u.http;
    struct json js;
    int k, ids, srch;
    s->all = 1;
    *read = -1;
    if (!h->body.len) return 0;
    if (json_parse(&js, h->body.p, h->body.len) != 0) return -1;
    if (js.t[0].type != JSON_OBJ) { json_free(&js); return -1; }
    {   /* every key known and of its type: a misspelt one must not turn "these" into "all" */
        int i, m;
        for (i = 0, m = 1; i < js.t[0].size; i++) {
            int v = js.t[m].next, ok = 0;
            if (js.t[m].len == 5 && ms_strncaseeq(js.s + js.t[m].start, "\"IDs\"", 5)) ok = js.t[v].type == JSON_ARR;
            else if (js.t[m].len == 6 && ms_strncaseeq(js.s + js.t[m].start, "\"Read\"", 6)) ok = js.t[v].type == JSON_BOOL;
            else if (js.t[m].len == 8 && ms_strncaseeq(js.s + js.t[m].start, "\"Search\"", 8)) ok = js.t[v].type == JSON_STR;
            if (!ok) { json_free(&js); return -1; }
            m = js.t[v].next;
        }
    }
    if ((ids = json_get(&js, 0, "IDs")) >= 0 && js.t[ids].type == JSON_ARR) {
        s->ids = xrealloc(NULL, sizeof *s->ids * (size_t)(js.t[ids].size + 1));
        for (k = json_item(&js, ids, ids); k >= 0; k = json_item(&js, ids, k)) {
            struct buf t = {0};
            json_text(&js, k, &t);
            ms_strlcpy(s->ids[s->nids++], t.p, sizeof s->ids[0]);
            buf_free(&t);
        }
        s->all = 0;
        if (!s->nids) s->all = -1; /* an empty list: nothing */
    }
    if ((k = json_get(&js, 0, "Read")) >= 0) *read = json_true(&js, k);
    if ((srch = json_get(&js, 0, "Search")) >= 0 && js.t[srch].type == JSON_STR) {
        struct buf t = {0};
        json_text(&js, srch, &t);
        if ((s->nt = search_parse(t.p, s->t, MS_HTTP_TERMS)) < 0) { buf_free(&t); json_free(&js); return -1; }
        buf_free(&t);
        s->all = 0;
    }
    json_free(&js);
    return 0;
}

/* Starts a sweep once the views are made. */
static void
http_sweep_start(struct conn *c, struct http_sweep *s)
{
    struct http_job *j = c->u.http.job;
    int i;
    for (i = 0; i < s->nt; i++)
        s->body |= s->t[i].kind == SQ_TEXT || s->t[i].kind == SQ_HAS_ATTACHMENT || s->t[i].kind == SQ_HAS_INLINE;
    j->sweep = s;
    j->pos = 0;
    if (s->all < 0) j->pos = j->n; /* IDs: [] */
    j->match = xrealloc(NULL, sizeof *j->match * (size_t)(j->n ? j->n : 1));
    c->work = http_sweep_step;
}

/* The mbox of a POP3 session cannot be changed under it (its QUIT rewrites the file). */
static int
http_pop_holds(struct conn *c)
{
    struct http_job *j = c->u.http.job;
    int b;
    if (store_of(c->ms->cfg)->maildir) return 0;
    for (b = 0; b < j->nbox; b++)
        if (pop_in_use(c->ms, c, j->boxes[b].addr)) return 1;
    return 0;
}

/* PUT /api/v1/messages: {"IDs":[...],"Read":true} or {"Search":"...","Read":false}; no IDs: all. */
static void
http_put_messages(struct conn *c)
{
    struct http_sweep *s = xrealloc(NULL, sizeof *s);
    int read;
    memset(s, 0, sizeof *s);
    if (http_sweep_body(c, s, &read) != 0 || read < 0) {
        http_sweep_free(s);
        http_done(c);
        http_text(c, 400, "Expected a JSON object with Read, and IDs or Search\n");
        return;
    }
    s->action = read ? SWEEP_READ : SWEEP_UNREAD;
    http_sweep_start(c, s);
}

/* DELETE /api/v1/messages: {"IDs":[...]}, or every message without a body or IDs. */
static void
http_delete_messages(struct conn *c)
{
    struct http_sweep *s = xrealloc(NULL, sizeof *s);
    int read;
    memset(s, 0, sizeof *s);
    if (http_sweep_body(c, s, &read) != 0) {
        http_sweep_free(s);
        http_done(c);
        http_text(c, 400, "Expected a JSON object with IDs\n");
        return;
    }
    if (http_pop_holds(c)) {
        http_sweep_free(s);
        http_done(c);
        buf_adds(&c->u.http.resp, "A POP3 session has the mailbox open, try again\n");
        http_answer_extra(c, 503, "text/plain; charset=utf-8", "Retry-After: 5\r\n");
        return;
    }
    s->action = SWEEP_DELETE;
    http_sweep_start(c, s);
}

/* GET and DELETE /api/v1/search?query=... */
static void
http_search(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    struct http_sweep *s = xrealloc(NULL, sizeof *s);
    char q[MS_HTTP_TARGET_MAX];
    int start, limit;
    memset(s, 0, sizeof *s);
    if (http_query(h->req.target, "query", q, sizeof q) <= 0 || (s->nt = search_parse(q, s->t, MS_HTTP_TERMS)) < 0 ||
        http_page(c, &start, &limit) != 0) {
        http_sweep_free(s);
        http_done(c);
        http_text(c, 400, "Expected a valid query\n");
        return;
    }
    if (!s->nt) s->all = 1;
    s->action = h->req.method == HTTP_DELETE ? SWEEP_DELETE : SWEEP_LIST;
    if (s->action == SWEEP_DELETE && http_pop_holds(c)) {
        http_sweep_free(s);
        http_done(c);
        buf_adds(&h->resp, "A POP3 session has the mailbox open, try again\n");
        http_answer_extra(c, 503, "text/plain; charset=utf-8", "Retry-After: 5\r\n");
        return;
    }
    http_sweep_start(c, s);
}

/* ---- sending: POST /api/v1/send and /api/v1/message/{ID}/release ---- */

/* A recipient of mail the API sends, resolved as RCPT TO would be (smtp_do_rcpt): captured,
 * local (aliases expanded), or relayed, which a login may do as SMTP AUTH may. NULL, or why not. */
static const char *
http_rcpt(struct conn *c, const char *addr, struct targets *t)
{
    const struct ms_config *cfg = c->ms->cfg;
    char local[MS_PATH_MAX], *domain;
    int r;
    if (ms_strlcpy(local, addr, sizeof local) != 0 || !(domain = strrchr(local, '@')) || domain == local)
        return "is not an address";
    *domain++ = 0;
    if (!cfg_valid_domain(domain)) return "has a bad domain";
    if (cfg->capture) {
        if (!cfg_safe_component(local, MS_LOCAL_MAX)) return "has a bad local part";
        ms_lower(local);
        ms_lower(domain);
        return targets_add(t, local, domain, 0) == 0 ? NULL : "is too long";
    }
    if (!cfg_find_domain(cfg, domain)) {
        if (!addr_dot_string(local) || !addr_remote_domain(domain)) return "cannot be relayed to";
        return targets_add(t, local, domain, 1) == 0 ? NULL : "is too long";
    }
    r = cfg_resolve(cfg, local, domain, t, 0);
    return r == RES_OK ? NULL : r == RES_UNKNOWN ? "is unknown here (lists take mail over SMTP only)" : "cannot be resolved";
}

/* The Return-Path line, then text (LF line ends), stored for the recipients as a message that
 * came over SMTP would be (msg_inject: durably, remote ones queued). Its UIDL into uidl. On an
 * error, *status is what to answer: 413 for a message too large, 503 when it could not be
 * written (a full disk: the client should try again later, as SMTP's 452 says, RFC 5321 4.2.5). */
static const char *
http_store(struct conn *c, const char *from, const struct targets *t, const char *text, size_t n, char *uidl, size_t un,
           int *status)
{
    struct mailsrv *ms = c->ms;
    struct store_msg m;
    const char *err = NULL;
    memset(&m, 0, sizeof m);
    *status = 413;
    if ((int64_t)n > ms->cfg->max_message_size) return "the message exceeds max_message_size";
    *status = 503;
    if (msg_open(ms, &m) != 0) return "cannot write the message";
    ms_strlcpy(m.sender, from, sizeof m.sender);
    {
        char line[MS_PATH_MAX + 32];
        int k = snprintf(line, sizeof line, "Return-Path: <%s>\n", from);
        msg_write(&m, line, (size_t)k);
    }
    msg_write(&m, text, n);
    if (msg_inject(ms, &m, t, &err) != 0) return err ? err : "cannot write the message";
    ms_strlcpy(uidl, store_of(ms->cfg)->maildir ? m.name : m.id, un);
    conn_log(c, "stored %s from=<%s> recipients=%d size=%lld via HTTP", m.id, from, t->n, (long long)m.size);
    return NULL;
}

/* UTF-8 text as RFC 2047 words (base64, at most 75 characters each, whole characters), sep between them. */
static void
http_put_words(struct buf *b, const char *v, const char *sep)
{
    size_t i, n = strlen(v);
    for (i = 0; i < n;) {
        char enc[64];
        size_t take = n - i < 39 ? n - i : 39;
        while (take < n - i && take && ((unsigned char)v[i + take] & 0xC0) == 0x80) take--;
        if (!take) take = 1;
        b64_encode((const unsigned char *)v + i, take, enc, 1);
        buf_printf(b, "%s=?UTF-8?B?%s?=", i ? sep : "", enc);
        i += take;
    }
}

/* Appends a header field: its value as is when it is printable ASCII, else as RFC 2047 words. */
static void
http_put_field(struct buf *b, const char *name, const char *v)
{
    size_t i, n = strlen(v);
    for (i = 0; i < n && (unsigned char)v[i] >= 0x20 && (unsigned char)v[i] < 0x7f; i++) {}
    buf_printf(b, "%s: ", name);
    if (i == n) buf_adds(b, v);
    else http_put_words(b, v, "\n ");
    buf_adds(b, "\n");
}

/* A display name and address as a header field wants it: "Name" <a@b>, or a@b. */
static void
http_put_mailbox(struct buf *b, const char *name, const char *addr)
{
    size_t i;
    int ascii = 1;
    if (!name[0]) { buf_adds(b, addr); return; }
    for (i = 0; name[i]; i++) ascii &= (unsigned char)name[i] >= 0x20 && (unsigned char)name[i] < 0x7f && name[i] != '"' && name[i] != '\\';
    if (ascii) { buf_printf(b, "\"%s\" <%s>", name, addr); return; }
    http_put_words(b, name, " ");
    buf_printf(b, " <%s>", addr);
}

/* base64 in lines of 76 (RFC 2045 6.8). */
static void
http_put_base64(struct buf *b, const unsigned char *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i += 57) {
        char enc[80];
        b64_encode(p + i, n - i < 57 ? n - i : 57, enc, 1);
        buf_adds(b, enc);
        buf_adds(b, "\n");
    }
}

/* The string member key of object k (as UTF-8) into out; "" if absent. */
static const char *
http_json_str(const struct json *j, int k, const char *key, struct buf *out)
{
    int v = json_get(j, k, key);
    out->len = 0;
    buf_add(out, "", 0);
    if (v >= 0 && j->t[v].type == JSON_STR) json_text(j, v, out);
    return out->p;
}

/* An address given to /send must be one (no field injection: no CR, LF, comma, angle brackets). */
static int
http_addr_ok(const char *a)
{
    const char *at = strrchr(a, '@');
    return at && at != a && at[1] && strlen(a) < MS_PATH_MAX && strcspn(a, "\r\n,<>\" ;()") == strlen(a);
}

/* POST /api/v1/send: Mailpit's SendRequest made into a MIME message and stored or relayed as if
 * the logged-in user had sent it over SMTP (sender_login = strict holds for its From). */
static void
http_post_send(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    const struct ms_config *cfg = c->ms->cfg;
    struct json j;
    struct buf msg = {0}, s1 = {0}, s2 = {0}, text = {0}, html = {0};
    struct targets t = {0};
    char from[MS_PATH_MAX], uidl[MS_PATH_MESSAGE], id[72], boundary[80], date[64];
    const char *err = NULL;
    int k, lists[3], f, natt = 0, att, status = 400;
    static const char *const fields[3] = {"To", "Cc", "ReplyTo"};
    if (json_parse(&j, h->body.p ? h->body.p : "", h->body.len) != 0 || j.t[0].type != JSON_OBJ) {
        json_free(&j);
        http_json_error(c, 400, "Expected a JSON object (Mailpit's SendRequest)");
        return;
    }
    k = json_get(&j, 0, "From");
    ms_strlcpy(from, http_json_str(&j, k, "Email", &s1), sizeof from);
    if (!http_addr_ok(from)) { err = "From.Email is not an address"; goto out; }
    if (!h->all && cfg->sender_login == SL_STRICT && !cfg_sender_owned(cfg, from, h->mailbox)) {
        err = "From.Email is not an address of the logged-in mailbox (sender_login = strict)";
        goto out;
    }
    ms_rfc5322_date(date, sizeof date, time(NULL));
    buf_adds(&msg, "From: ");
    http_put_mailbox(&msg, http_json_str(&j, k, "Name", &s2), from);
    buf_adds(&msg, "\n");
    for (f = 0; f < 3; f++) { /* To, Cc, Reply-To: [{Email, Name}]; Bcc: ["a@b"] below */
        int it, first = 1;
        lists[f] = json_get(&j, 0, fields[f]);
        if (lists[f] < 0 || j.t[lists[f]].type != JSON_ARR || !j.t[lists[f]].size) continue;
        buf_adds(&msg, f == 2 ? "Reply-To: " : f ? "Cc: " : "To: ");
        for (it = json_item(&j, lists[f], lists[f]); it >= 0; it = json_item(&j, lists[f], it)) {
            const char *a = http_json_str(&j, it, "Email", &s1);
            if (!http_addr_ok(a)) { err = "an Email is not an address"; goto out; }
            if (f < 2 && (err = http_rcpt(c, a, &t)) != NULL) goto out;
            buf_adds(&msg, first ? "" : ",\n ");
            first = 0;
            http_put_mailbox(&msg, http_json_str(&j, it, "Name", &s2), a);
        }
        buf_adds(&msg, "\n");
    }
    if ((k = json_get(&j, 0, "Bcc")) >= 0 && j.t[k].type == JSON_ARR) {
        int it;
        for (it = json_item(&j, k, k); it >= 0; it = json_item(&j, k, it)) {
            s1.len = 0;
            json_text(&j, it, &s1);
            if (!http_addr_ok(s1.p)) { err = "a Bcc is not an address"; goto out; }
            if ((err = http_rcpt(c, s1.p, &t)) != NULL) goto out;
        }
    }
    if (!t.n) { err = "no recipient (To, Cc or Bcc)"; goto out; }
    http_put_field(&msg, "Subject", http_json_str(&j, 0, "Subject", &s1));
    buf_printf(&msg, "Date: %s\n", date);
    {
        unsigned char rnd[12];
        char hex[25];
        int i;
        if (os_random(rnd, sizeof rnd) != 0) memset(rnd, 0, sizeof rnd);
        for (i = 0; i < 12; i++) sprintf(hex + 2 * i, "%02x", rnd[i]);
        buf_printf(&msg, "Message-ID: <%s@%s>\n", hex, cfg->hostname);
        ms_fmt(boundary, sizeof boundary, "=_mailsrv_%s", hex);
    }
    if ((k = json_get(&j, 0, "Headers")) >= 0 && j.t[k].type == JSON_OBJ) {
        int m, i;
        for (i = 0, m = k + 1; i < j.t[k].size; i++) {
            int v = j.t[m].next;
            s1.len = s2.len = 0;
            json_text(&j, m, &s1);
            json_text(&j, v, &s2);
            for (f = 0; s1.p[f] && http_tchar((unsigned char)s1.p[f]); f++) {}
            if (s1.p[f] || !f || !s2.p || strpbrk(s2.p, "\r\n")) { err = "a header in Headers is not a field name and a one-line value"; goto out; }
            if (http_list_has("from,sender,to,cc,bcc,reply-to,subject,date,message-id,mime-version,return-path,received",
                              s1.p) || ms_strncaseeq(s1.p, "content-", 8)) {
                err = "Headers may not set a field the message is made of (From, To, Subject, Content-*, ...)";
                goto out;
            }
            http_put_field(&msg, s1.p, s2.p);
            m = j.t[v].next;
        }
    }
    http_json_str(&j, 0, "Text", &text);
    http_json_str(&j, 0, "HTML", &html);
    att = json_get(&j, 0, "Attachments");
    if (att >= 0 && j.t[att].type == JSON_ARR) natt = j.t[att].size;
    buf_adds(&msg, "MIME-Version: 1.0\n");
    if (natt) buf_printf(&msg, "Content-Type: multipart/mixed; boundary=\"%s\"\n\n--%s\n", boundary, boundary);
    if (text.len && html.len) buf_printf(&msg, "Content-Type: multipart/alternative; boundary=\"%s_alt\"\n\n--%s_alt\n", boundary, boundary);
    if (text.len || !html.len) {
        buf_adds(&msg, "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n");
        http_put_base64(&msg, (const unsigned char *)text.p, text.len);
    }
    if (text.len && html.len) buf_printf(&msg, "--%s_alt\n", boundary);
    if (html.len) {
        buf_adds(&msg, "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n");
        http_put_base64(&msg, (const unsigned char *)html.p, html.len);
    }
    if (text.len && html.len) buf_printf(&msg, "--%s_alt--\n", boundary);
    if (natt) {
        int it;
        for (it = json_item(&j, att, att); it >= 0; it = json_item(&j, att, it)) {
            const char *name = http_json_str(&j, it, "Filename", &s1), *ctype, *cid;
            unsigned char *bytes;
            long n;
            buf_printf(&msg, "--%s\n", boundary);
            ctype = http_json_str(&j, it, "ContentType", &s2);
            if (!*ctype) ctype = "application/octet-stream";
            if (strpbrk(ctype, "\r\n\";") || strpbrk(name, "\r\n\"\\")) { err = "a bad Filename or ContentType"; goto out; }
            buf_printf(&msg, "Content-Type: %s\nContent-Transfer-Encoding: base64\n", ctype);
            cid = http_json_str(&j, it, "ContentID", &s2);
            if (strpbrk(cid, "\r\n<>")) { err = "a bad ContentID"; goto out; }
            if (*cid) buf_printf(&msg, "Content-ID: <%s>\nContent-Disposition: inline; filename=\"%s\"\n\n", cid, name);
            else buf_printf(&msg, "Content-Disposition: attachment; filename=\"%s\"\n\n", name);
            http_json_str(&j, it, "Content", &s2);
            bytes = xrealloc(NULL, s2.len + 1);
            if ((n = b64_decode(s2.p, s2.len, bytes, s2.len + 1)) < 0) { free(bytes); err = "an attachment's Content is not base64"; goto out; }
            http_put_base64(&msg, bytes, (size_t)n);
            free(bytes);
        }
        buf_printf(&msg, "--%s--\n", boundary);
    }
    err = http_store(c, from, &t, msg.p, msg.len, uidl, sizeof uidl, &status);
out:
    json_free(&j);
    buf_free(&s1);
    buf_free(&s2);
    buf_free(&text);
    buf_free(&html);
    buf_free(&msg);
    targets_free(&t);
    if (err) { http_json_error(c, status, err); return; }
    http_msg_id(uidl, id, sizeof id);
    buf_adds(&h->resp, "{");
    json_kv(&h->resp, "", "ID", id);
    buf_adds(&h->resp, "}");
    http_json(c);
}

/* POST /api/v1/message/{ID}/release: the message as it is, to other addresses ({"To":[...]}, or
 * the array alone as the mailpit-api client sends it), through local delivery or the queue. */
static void
http_release(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    struct http_job *jb = h->job;
    struct http_msg *hm = http_find(jb, h->arg[0]);
    struct json j;
    struct targets t = {0};
    struct buf a = {0}, text = {0};
    char uidl[MS_PATH_MESSAGE], from[MS_PATH_MAX];
    const char *err = NULL, *body;
    int arr, it, r, status = 400;
    if (!hm) { http_done(c); http_text(c, 404, "Message not found\n"); return; }
    if (json_parse(&j, h->body.p ? h->body.p : "", h->body.len) != 0) { http_done(c); http_text(c, 400, "Expected {\"To\":[...]}\n"); return; }
    arr = j.t[0].type == JSON_ARR ? 0 : json_get(&j, 0, "To");
    if (arr < 0 || j.t[arr].type != JSON_ARR || !j.t[arr].size) err = "no recipient (To)";
    for (it = err ? -1 : json_item(&j, arr, arr); it >= 0 && !err; it = json_item(&j, arr, it)) {
        a.len = 0;
        json_text(&j, it, &a);
        err = !a.p || !http_addr_ok(a.p) ? "a To is not an address" : http_rcpt(c, a.p, &t);
    }
    json_free(&j);
    buf_free(&a);
    if (!err && (r = http_read_msg(jb, hm, &text, MS_HTTP_MSG_MAX)) != 0) err = r == MSG_LOCKED ? "the mailbox is locked" : "cannot read the message";
    body = text.p ? text.p : "";
    from[0] = 0;
    if (!err) { /* its Return-Path stays the sender; the old one is not kept twice */
        struct buf rp = {0};
        size_t hl = strstr(body, "\n\n") ? (size_t)(strstr(body, "\n\n") - body) + 1 : text.len;
        struct mime_addr ra;
        if (mime_header(body, hl, "Return-Path", &rp) && mime_addresses(rp.p, rp.len, &ra, 1) == 1) ms_strlcpy(from, ra.addr, sizeof from);
        if (!h->all) ms_strlcpy(from, h->mailbox, sizeof from); /* a mailbox sends on as itself (sender_login) */
        buf_free(&rp);
        if (strncmp(body, "Return-Path:", 12) == 0) {
            size_t pos = 0, fl;
            const char *f;
            hdr_next_field(body, text.len, &pos, &f, &fl);
            body += pos;
        }
        err = http_store(c, from, &t, body, text.len - (size_t)(body - text.p), uidl, sizeof uidl, &status);
    }
    buf_free(&text);
    targets_free(&t);
    http_done(c);
    if (err) http_text(c, status, err);
    else http_text(c, 200, "ok");
}

/* ---- chaos: Mailpit's failure triggers for SMTP (GET and PUT /api/v1/chaos) ---- */

static const char *const chaos_names[CHAOS_N] = {"Sender", "Recipient", "Authentication"};

static void
http_chaos_json(struct conn *c)
{
    struct buf *b = &c->u.http.resp;
    int i;
    buf_adds(b, "{");
    for (i = 0; i < CHAOS_N; i++)
        buf_printf(b, "%s\"%s\":{\"ErrorCode\":%d,\"Probability\":%d}", i ? "," : "", chaos_names[i],
                   c->ms->chaos[i].code, c->ms->chaos[i].prob);
    buf_adds(b, "}");
    http_json(c);
}

static void
http_chaos(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    struct json j;
    int i, code[CHAOS_N], prob[CHAOS_N];
    http_done(c);
    if (!h->all) { http_text(c, 403, "Only an admin may set chaos triggers (they act on every SMTP client)\n"); return; }
    if (h->req.method == HTTP_GET) { http_chaos_json(c); return; }
    if (h->body.len && (json_parse(&j, h->body.p, h->body.len) != 0 || j.t[0].type != JSON_OBJ)) {
        json_free(&j);
        http_text(c, 400, "Expected a JSON object\n");
        return;
    }
    for (i = 0; i < CHAOS_N; i++) { /* an omitted trigger is reset (0%) */
        int k = h->body.len ? json_get(&j, 0, chaos_names[i]) : -1;
        code[i] = i == CHAOS_AUTH ? 535 : 451;
        prob[i] = 0;
        if (k >= 0 && j.t[k].type == JSON_OBJ) {
            int e = json_get(&j, k, "ErrorCode"), p = json_get(&j, k, "Probability");
            code[i] = (int)json_long(&j, e, code[i]);
            prob[i] = (int)json_long(&j, p, prob[i]);
            if (code[i] < 400 || code[i] > 599 || prob[i] < 0 || prob[i] > 100) {
                json_free(&j);
                http_text(c, 400, "ErrorCode must be 400-599 and Probability 0-100\n");
                return;
            }
        }
    }
    if (h->body.len) json_free(&j);
    for (i = 0; i < CHAOS_N; i++) { c->ms->chaos[i].code = code[i]; c->ms->chaos[i].prob = prob[i]; }
    conn_log(c, "chaos: sender %d%% %d, recipient %d%% %d, authentication %d%% %d", prob[0], code[0], prob[1], code[1], prob[2], code[2]);
    http_chaos_json(c);
}

/* ---- live events: GET /api/v1/events, a Server-Sent Events stream (WHATWG HTML 9.2) ---- */

/* The stream's head; then the session only writes events (http_notify) until the client goes
 * or its `timeout` passes without one (EventSource then reconnects by itself). */
static void
http_events(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    char date[40];
    int64_t sec;
    long usec;
    http_done(c);
    os_wallclock(&sec, &usec);
    ms_http_date(date, sizeof date, sec);
    buf_printf(&c->io.out, "HTTP/1.1 200 OK\r\nDate: %s\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
               "Connection: close\r\n\r\n: mailsrv events (new, delete)\n\n", date); /* no length: it ends with the connection */
    h->state = H_EVENTS;
    h->started = 0;
    c->io.deadline = os_now_ms() + c->ms->cfg->timeout * 1000LL;
}

/* Messages that came on this local day (SMTP, /send, releases, the server's own: each http_notify
 * "new"), after counting add more; for the status page. */
static long
ms_messages_today(struct mailsrv *ms, int add)
{
    int64_t sec;
    long usec, day;
    os_wallclock(&sec, &usec);
    day = os_local_day(sec);
    if (day != ms->today) {
        ms->today = day;
        ms->today_count = 0;
    }
    return ms->today_count += add;
}

/* Tells the event streams that may see it: a message stored for the local targets of t ("new"),
 * or deleted from mailbox ("delete", t NULL). The message's ID as the API shows it. */
static void
http_notify(struct mailsrv *ms, const char *type, const char *uidl, const struct targets *t, const char *mailbox)
{
    char id[72];
    int i, k;
    if (t) ms_messages_today(ms, 1);
    http_msg_id(uidl, id, sizeof id);
    for (i = 0; i < ms->nconns; i++) {
        struct conn *c = ms->conns[i];
        struct http_sess *h = &c->u.http;
        const char *box = NULL;
        if (c->proto != PROTO_HTTP || h->state != H_EVENTS || c->is_closing) continue;
        if (io_pending(&c->io) > MS_OUT_HIGH) { conn_drop(c); continue; } /* a stream nobody reads */
        for (k = 0; t && k < t->n && !box; k++)
            if (!t->remote[k] && (h->all || strcmp(t->v[k], h->mailbox) == 0)) box = t->v[k];
        if (!t && (h->all || strcmp(mailbox, h->mailbox) == 0)) box = mailbox;
        if (!box) continue;
        buf_printf(&c->io.out, "event: %s\ndata: {\"Type\":\"%s\",\"Data\":{", type, type);
        json_kv(&c->io.out, "", "ID", id);
        json_kv(&c->io.out, ",", "Mailbox", box);
        buf_adds(&c->io.out, "}}\n\n");
        c->io.deadline = os_now_ms() + ms->cfg->timeout * 1000LL;
        conn_send(c);
    }
}

/* ---- client setup: Thunderbird's autoconfig, Outlook's autodiscover, an Apple profile ---- */

/* XML text (XML 1.0 2.4): the five that must be escaped, and no control characters. */
static void
xml_text(struct buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '<') buf_adds(b, "&lt;");
        else if (*s == '>') buf_adds(b, "&gt;");
        else if (*s == '&') buf_adds(b, "&amp;");
        else if (*s == '"') buf_adds(b, "&quot;");
        else if (*s == '\'') buf_adds(b, "&apos;");
        else if ((unsigned char)*s >= 0x20 || *s == '\t') buf_add(b, s, 1);
    }
}

/* One way in that a mail client may use: a listener, how it is secured, its port. */
struct http_way { int pop3, tls, starttls; unsigned port; };

/* The listeners clients may use, best first (RFC 8314 4: implicit TLS, then STARTTLS, then
 * plain): POP3 in the first *npop, then SMTP for sending (submission before smtp). */
static int
http_ways(const struct ms_config *cfg, struct http_way *w, int max, int *npop)
{
    int n = 0, kind, pass, i;
    for (kind = 0; kind < 2; kind++) { /* 0: POP3, 1: SMTP */
        for (pass = 0; pass < 3; pass++) /* implicit TLS, STARTTLS, plain */
            for (i = 0; i < cfg->nlisten && n < max; i++) {
                const struct cfg_listen *l = &cfg->listen[i];
                int pop = l->proto == PROTO_POP3, smtp = l->proto == PROTO_SUBMISSION || l->proto == PROTO_SMTP;
                if (kind == 0 ? !pop : !smtp) continue;
                if (pass == 0 ? !l->tls : l->tls || (pass == 1) != (cfg->tls != NULL)) continue;
                if (kind == 1 && l->proto == PROTO_SMTP && !cfg->capture) { /* port 25 takes mail in; submission sends */
                    int j, sub = 0;
                    for (j = 0; j < cfg->nlisten; j++) sub |= cfg->listen[j].proto == PROTO_SUBMISSION;
                    if (sub) continue;
                }
                w[n].pop3 = pop;
                w[n].tls = l->tls;
                w[n].starttls = !l->tls && cfg->tls != NULL;
                w[n].port = l->port;
                n++;
            }
        if (kind == 0) *npop = n;
    }
    return n;
}

/* The address asked about (?emailaddress=, or Outlook's <EMailAddress>), and the host to name. */
static int
http_setup_args(struct conn *c, char *addr, size_t an, char *host, size_t hn)
{
    struct http_sess *h = &c->u.http;
    const char *at;
    addr[0] = 0;
    if (h->req.method == HTTP_POST && h->body.p) {
        const char *s = strstr(h->body.p, "<EMailAddress>"), *e;
        if (s && (e = strstr(s += 14, "</EMailAddress>")) != NULL && (size_t)(e - s) < an) {
            memcpy(addr, s, (size_t)(e - s));
            addr[e - s] = 0;
        }
    } else if (http_query(h->req.target, "emailaddress", addr, an) < 0) {
        addr[0] = 0;
    }
    at = strrchr(addr, '@');
    if (!at || at == addr || !cfg_valid_domain(at + 1) || strpbrk(addr, "<>&\"' \r\n")) return -1;
    if (c->ms->cfg->public_host[0]) ms_strlcpy(host, c->ms->cfg->public_host, hn);
    else net_local_name(c->io.fd, host, hn);
    if (!host[0]) ms_strlcpy(host, c->ms->cfg->hostname, hn);
    return 0;
}

enum { SETUP_THUNDERBIRD, SETUP_OUTLOOK, SETUP_APPLE };
static void
http_setup(struct conn *c, int kind)
{
    struct buf *b = &c->u.http.resp;
    const struct ms_config *cfg = c->ms->cfg;
    struct http_way w[MS_MAX_LISTENERS];
    char addr[MS_PATH_MAX], host[MS_DOMAIN_MAX + 1];
    int n, npop = 0, i;
    if (http_setup_args(c, addr, sizeof addr, host, sizeof host) != 0) {
        http_text(c, 400, "Expected ?emailaddress=user@domain (Outlook: <EMailAddress> in the request)\n");
        return;
    }
    n = http_ways(cfg, w, MS_MAX_LISTENERS, &npop);
    if (kind == SETUP_THUNDERBIRD) { /* https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat */
        buf_adds(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  <emailProvider id=\"");
        xml_text(b, strrchr(addr, '@') + 1);
        buf_adds(b, "\">\n    <domain>");
        xml_text(b, strrchr(addr, '@') + 1);
        buf_adds(b, "</domain>\n    <displayName>mailsrv</displayName>\n    <displayShortName>mailsrv</displayShortName>\n");
        for (i = 0; i < n; i++) {
            buf_printf(b, "    <%s type=\"%s\">\n      <hostname>", w[i].pop3 ? "incomingServer" : "outgoingServer", w[i].pop3 ? "pop3" : "smtp");
            xml_text(b, host);
            buf_printf(b, "</hostname>\n      <port>%u</port>\n      <socketType>%s</socketType>\n"
                       "      <username>%%EMAILADDRESS%%</username>\n      <authentication>%s</authentication>\n%s    </%s>\n",
                       w[i].port, w[i].tls ? "SSL" : w[i].starttls ? "STARTTLS" : "plain",
                       cfg->capture && !w[i].pop3 ? "none" : "password-cleartext",
                       w[i].pop3 ? "      <pop3><leaveMessagesOnServer>true</leaveMessagesOnServer></pop3>\n" : "",
                       w[i].pop3 ? "incomingServer" : "outgoingServer");
        }
        buf_adds(b, "  </emailProvider>\n</clientConfig>\n");
        http_answer(c, 200, "application/xml; charset=utf-8");
    } else if (kind == SETUP_OUTLOOK) { /* [MS-OXDSCLI] 2.2.4, the POX response of Outlook 2007 on */
        buf_adds(b, "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
                    "<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n"
                    "  <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n"
                    "    <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n");
        for (i = 0; i < n; i++) {
            if (i != 0 && i != npop) continue; /* the best of each */
            buf_printf(b, "      <Protocol>\n        <Type>%s</Type>\n        <Server>", w[i].pop3 ? "POP3" : "SMTP");
            xml_text(b, host);
            buf_printf(b, "</Server>\n        <Port>%u</Port>\n        <LoginName>", w[i].port);
            xml_text(b, addr);
            buf_printf(b, "</LoginName>\n        <DomainRequired>off</DomainRequired>\n        <SPA>off</SPA>\n"
                       "        <Encryption>%s</Encryption>\n        <AuthRequired>%s</AuthRequired>\n      </Protocol>\n",
                       w[i].tls ? "SSL" : w[i].starttls ? "TLS" : "None", cfg->capture && !w[i].pop3 ? "off" : "on");
        }
        buf_adds(b, "    </Account>\n  </Response>\n</Autodiscover>\n");
        http_answer(c, 200, "application/xml; charset=utf-8");
    } else { /* Apple's Configuration Profile Reference: com.apple.mail.managed */
        unsigned char d[32];
        struct sha256 s;
        char uuid[2][40];
        int k;
        const struct http_way *in = npop ? &w[0] : NULL, *out = n > npop ? &w[npop] : NULL;
        sha256_init(&s);
        sha256_update(&s, addr, strlen(addr));
        sha256_update(&s, host, strlen(host));
        sha256_final(&s, d);
        for (k = 0; k < 2; k++) /* stable per address and host: installing it again replaces it */
            ms_fmt(uuid[k], sizeof uuid[k], "%02X%02X%02X%02X-%02X%02X-4%X%02X-8%X%02X-%02X%02X%02X%02X%02X%02X",
                   d[16 * k], d[16 * k + 1], d[16 * k + 2], d[16 * k + 3], d[16 * k + 4], d[16 * k + 5], d[16 * k + 6] & 15,
                   d[16 * k + 7], d[16 * k + 8] & 15, d[16 * k + 9], d[16 * k + 10], d[16 * k + 11], d[16 * k + 12],
                   d[16 * k + 13], d[16 * k + 14], d[16 * k + 15]);
        buf_adds(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
                    "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n"
                    "  <key>PayloadContent</key>\n  <array>\n    <dict>\n      <key>EmailAccountType</key><string>EmailTypePOP</string>\n"
                    "      <key>EmailAddress</key><string>");
        xml_text(b, addr);
        buf_adds(b, "</string>\n");
        for (k = 0; k < 2; k++) {
            const struct http_way *x = k ? out : in;
            const char *side = k ? "Outgoing" : "Incoming";
            if (!x) continue;
            buf_printf(b, "      <key>%sMailServerHostName</key><string>", side);
            xml_text(b, host);
            buf_printf(b, "</string>\n      <key>%sMailServerPortNumber</key><integer>%u</integer>\n"
                       "      <key>%sMailServerUseSSL</key><%s/>\n      <key>%sMailServerAuthentication</key><string>%s</string>\n"
                       "      <key>%sMailServerUsername</key><string>", side, x->port, side, x->tls || x->starttls ? "true" : "false",
                       side, cfg->capture && k ? "EmailAuthNone" : "EmailAuthPassword", side);
            xml_text(b, addr);
            buf_adds(b, "</string>\n");
        }
        buf_printf(b, "      <key>PayloadIdentifier</key><string>mailsrv.mail.%s</string>\n"
                      "      <key>PayloadType</key><string>com.apple.mail.managed</string>\n"
                      "      <key>PayloadUUID</key><string>%s</string>\n      <key>PayloadVersion</key><integer>1</integer>\n"
                      "    </dict>\n  </array>\n  <key>PayloadDisplayName</key><string>Mail (mailsrv)</string>\n"
                      "  <key>PayloadIdentifier</key><string>mailsrv.%s</string>\n"
                      "  <key>PayloadType</key><string>Configuration</string>\n  <key>PayloadUUID</key><string>%s</string>\n"
                      "  <key>PayloadVersion</key><integer>1</integer>\n</dict>\n</plist>\n", uuid[0], uuid[0], uuid[1], uuid[1]);
        http_answer_extra(c, 200, "application/x-apple-aspen-config",
                          "Content-Disposition: attachment; filename=\"mailsrv.mobileconfig\"\r\n");
    }
}
static void http_setup_thunderbird(struct conn *c) { http_setup(c, SETUP_THUNDERBIRD); }
static void http_setup_outlook(struct conn *c) { http_setup(c, SETUP_OUTLOOK); }
static void http_setup_apple(struct conn *c) { http_setup(c, SETUP_APPLE); }

/* GET /api/v1/info (Mailpit's AppInformation) */
static void
http_get_info(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    struct http_job *j = h->job;
    struct buf *b = &h->resp;
    int i, unread = 0;
    int64_t size = 0;
    for (i = 0; i < j->n; i++) {
        unread += !http_is_read(http_pm(j, &j->msgs[i]));
        size += http_pm(j, &j->msgs[i])->size;
    }
    buf_adds(b, "{");
    json_kv(b, "", "Version", "mailsrv " MAILSRV_VERSION);
    json_kv(b, ",", "LatestVersion", "");
    json_kv(b, ",", "Database", c->ms->cfg->spool);
    buf_printf(b, ",\"DatabaseSize\":%lld,\"Messages\":%d,\"Unread\":%d,\"Tags\":{},\"RuntimeStats\":"
               "{\"Uptime\":%lld,\"Memory\":0,\"MessagesDeleted\":0,\"SMTPAccepted\":0,\"SMTPAcceptedSize\":0,"
               "\"SMTPRejected\":0,\"SMTPIgnored\":0}}",
               (long long)size, j->n, unread, (long long)((os_now_ms() - c->ms->started_ms) / 1000));
    http_done(c);
    http_json(c);
}

/* GET /api/v1/webui (Mailpit's WebUIConfiguration): releases go through mailsrv itself, no spam check. */
static void
http_get_webui(struct conn *c)
{
    buf_adds(&c->u.http.resp, "{\"Label\":\"mailsrv\",\"MessageRelay\":{\"Enabled\":false,\"SMTPServer\":\"\",\"ReturnPath\":\"\","
             "\"AllowedRecipients\":\"\",\"BlockedRecipients\":\"\",\"OverrideFrom\":\"\",\"PreserveMessageIDs\":false},"
             "\"SpamAssassin\":false,\"ChaosEnabled\":true,\"DuplicatesIgnored\":false,\"HideDeleteAllButton\":false}");
    http_json(c);
}

/* Mailpit endpoints mailsrv does not offer (tags, checks, thumbnails): a clear JSON 404. */
static void
http_not_offered(struct conn *c)
{
    http_json_error(c, 404, "mailsrv does not offer this Mailpit endpoint (tags, HTML, link and spam checks, thumbnails)");
}

static void http_get_ok(struct conn *c) { http_text(c, 200, "ok"); }

/* ---- the web page (issue 16): one page, compiled in, that uses only the API ---- */

/* BEGIN web/: written by `make page` from web/index.html, app.css and app.js; edit those */
static const struct {
    char c0[3948], c1[2521];
} web_index_html = {
    "<!DOCTYPE html>\n"
    "<html lang=\"en\">\n"
    "<head>\n"
    "<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<meta name=\"color-scheme\" content=\"light dark\">\n"
    "<meta name=\"referrer\" content=\"no-referrer\">\n"
    "<title>mailsrv</title>\n"
    "<link rel=\"icon\" href=\"data:,\">\n"
    "<link rel=\"stylesheet\" href=\"/app.css\">\n"
    "<script src=\"/app.js\" defer></script>\n"
    "</head>\n"
    "<body>\n"
    "<a class=\"skip\" href=\"#main\" data-i18n=\"skip\">Skip to content</a>\n"
    "\n"
    "<header class=\"topbar\">\n"
    "  <h1 class=\"brand\"><a href=\"#/\">mailsrv</a></h1>\n"
    "  <form id=\"search-form\" class=\"search\" role=\"search\">\n"
    "    <label for=\"search\" class=\"vh\" data-i18n=\"search\">Search</label>\n"
    "    <input id=\"search\" type=\"search\" name=\"q\" autocomplete=\"off\" spellcheck=\"false\"\n"
    "           data-i18n-ph=\"searchPlaceholder\" placeholder=\"Search mail\">\n"
    "    <button type=\"submit\" data-i18n=\"searchButton\">Search</button>\n"
    "  </form>\n"
    "  <span id=\"user\" class=\"user\"></span>\n"
    "</header>\n"
    "\n"
    "<div class=\"layout\">\n"
    "  <nav id=\"nav\" class=\"nav\" data-i18n-aria=\"navLabel\" aria-label=\"Navigation\">\n"
    "    <h2 class=\"nav-title\" data-i18n=\"mailboxes\">Mailboxes</h2>\n"
    "    <ul id=\"mailboxes\" class=\"nav-list\"></ul>\n"
    "    <div id=\"nav-admin\" hidden>\n"
    "      <h2 class=\"nav-title\" data-i18n=\"admin\">Administration</h2>\n"
    "      <ul class=\"nav-list\">\n"
    "        <li><a id=\"nav-queue\" href=\"#/queue\" hidden data-i18n=\"queue\">Queue</a></li>\n"
    "        <li><a id=\"nav-lists\" href=\"#/lists\" hidden data-i18n=\"lists\">Mailing lists</a></li>\n"
    "        <li><a id=\"nav-status\" href=\"#/status\" hidden data-i18n=\"status\">Status</a></li>\n"
    "      </ul>\n"
    "    </div>\n"
    "  </nav>\n"
    "\n"
    "  <main id=\"main\" class=\"main\" tabindex=\"-1\">\n"
    "    <div id=\"error\" class=\"error\" role=\"alert\"></div>\n"
    "\n"
    "    <!-- the message list -->\n"
    "    <section id=\"view-list\" aria-labelledby=\"list-title\">\n"
    "      <h2 id=\"list-title\" class=\"view-title\" data-i18n=\"allMail\">All messages</h2>\n"
    "      <div class=\"toolbar\">\n"
    "        <label class=\"check\">\n"
    "          <input id=\"sel-all\" type=\"checkbox\">\n"
    "          <span data-i18n=\"selectAll\">Select all</span>\n"
    "        </label>\n"
    "        <button id=\"btn-read-selected\" type=\"button\" disabled data-i18n=\"readSelected\">Mark as read</button>\n"
    "        <button id=\"btn-unread-selected\" type=\"button\" disabled data-i18n=\"unreadSelected\">Mark as unread</button>\n"
    "        <button id=\"btn-delete-selected\" type=\"button\" class=\"danger\" disabled data-i18n=\"deleteSelected\">Delete selected</button>\n"
    "        <button id=\"btn-delete-all\" type=\"button\" class=\"danger\" data-i18n=\"deleteAll\">Delete all</button>\n"
    "        <span id=\"list-count\" class=\"muted\"></span>\n"
    "      </div>\n"
    "      <div id=\"list\" class=\"list\" role=\"grid\" data-i18n-aria=\"messages\" aria-label=\"Messages\"></div>\n"
    "      <p id=\"empty\" class=\"empty\" hidden data-i18n=\"empty\">No messages</p>\n"
    "      <p class=\"more\"><button id=\"btn-more\" type=\"button\" hidden data-i18n=\"loadMore\">Load more</button></p>\n"
    "    </section>\n"
    "\n"
    "    <!-- one message -->\n"
    "    <section id=\"view-message\" hidden aria-labelledby=\"msg-subject\">\n"
    "      <div class=\"toolbar\">\n"
    "        <button id=\"btn-back\" type=\"button\" data-i18n=\"back\">Back to list</button>\n"
    "        <button id=\"btn-unread\" type=\"button\" data-i18n=\"markUnread\">Mark as unread</button>\n"
    "        <button id=\"btn-delete\" type=\"button\" class=\"danger\" data-i18n=\"delete\">Delete</button>\n"
    "      </div>\n"
    "      <h2 id=\"msg-subject\" class=\"msg-subject\"></h2>\n"
    "      <dl class=\"meta\">\n"
    "        <dt data-i18n=\"from\">From</dt><dd id=\"msg-from\"></dd>\n"
    "        <dt data-i18n=\"to\">To</dt><dd id=\"msg-to\"></dd>\n"
    "        <dt id=\"msg-cc-label\" data-i18n=\"cc\">Cc</dt><dd id=\"msg-cc\"></dd>\n"
    "        <dt data-i18n=\"date\">Date</dt><dd id=\"msg-date\"></dd>\n"
    "      </dl>\n"
    "      <div id=\"msg-attachments-box\" class=\"attachments\" hidden>\n"
    "        <h3 id=\"att-title\" data-i18n=\"attachments\">Attachments</h3>\n"
    "        <ul id=\"msg-attachments\" aria-labelledby=\"att-title\"></ul>\n"
    "      </div>\n"
    "      <div class=\"tabs\" role=\"tablist\">\n"
    "        <button id=\"tab-html\" type=\"button\" role=\"tab\" data-tab=\"html\" aria-controls=\"panel-html\">HTML</button>\n",
    "        <button id=\"tab-text\" type=\"button\" role=\"tab\" data-tab=\"text\" aria-controls=\"panel-text\" data-i18n=\"tabText\">Text</button>\n"
    "        <button id=\"tab-headers\" type=\"button\" role=\"tab\" data-tab=\"headers\" aria-controls=\"panel-headers\" data-i18n=\"tabHeaders\">Headers</button>\n"
    "        <button id=\"tab-raw\" type=\"button\" role=\"tab\" data-tab=\"raw\" aria-controls=\"panel-raw\" data-i18n=\"tabRaw\">Source</button>\n"
    "      </div>\n"
    "      <div id=\"panel-html\" class=\"panel\" role=\"tabpanel\" aria-labelledby=\"tab-html\">\n"
    "        <p class=\"remote\"><button id=\"btn-remote\" type=\"button\" data-i18n=\"showRemote\">Show remote images</button></p>\n"
    "        <iframe id=\"msg-html\" sandbox=\"allow-popups allow-popups-to-escape-sandbox allow-same-origin\"\n"
    "                referrerpolicy=\"no-referrer\" data-i18n-title=\"frameTitle\" title=\"Message body\"></iframe>\n"
    "      </div>\n"
    "      <div id=\"panel-text\" class=\"panel\" role=\"tabpanel\" aria-labelledby=\"tab-text\" hidden>\n"
    "        <pre id=\"msg-text\" class=\"pre\"></pre>\n"
    "      </div>\n"
    "      <div id=\"panel-headers\" class=\"panel\" role=\"tabpanel\" aria-labelledby=\"tab-headers\" hidden>\n"
    "        <table id=\"msg-headers\" class=\"table headers\"></table>\n"
    "      </div>\n"
    "      <div id=\"panel-raw\" class=\"panel\" role=\"tabpanel\" aria-labelledby=\"tab-raw\" hidden>\n"
    "        <pre id=\"msg-raw\" class=\"pre\"></pre>\n"
    "      </div>\n"
    "      <form id=\"release-form\" class=\"release\">\n"
    "        <label for=\"release-to\" data-i18n=\"forwardTo\">Forward to</label>\n"
    "        <input id=\"release-to\" type=\"email\" required autocomplete=\"email\">\n"
    "        <button type=\"submit\" data-i18n=\"forward\">Forward</button>\n"
    "      </form>\n"
    "      <p id=\"msg-status\" class=\"status\" role=\"status\"></p>\n"
    "    </section>\n"
    "\n"
    "    <!-- administration -->\n"
    "    <section id=\"view-queue\" hidden aria-labelledby=\"queue-title\">\n"
    "      <h2 id=\"queue-title\" class=\"view-title\" data-i18n=\"queue\">Queue</h2>\n"
    "      <div class=\"toolbar\">\n"
    "        <button id=\"btn-flush\" type=\"button\" data-i18n=\"flush\">Retry delivery now</button>\n"
    "        <span id=\"queue-status\" class=\"muted\" role=\"status\"></span>\n"
    "      </div>\n"
    "      <div id=\"queue-body\"></div>\n"
    "    </section>\n"
    "\n"
    "    <section id=\"view-lists\" hidden aria-labelledby=\"lists-title\">\n"
    "      <h2 id=\"lists-title\" class=\"view-title\" data-i18n=\"lists\">Mailing lists</h2>\n"
    "      <div id=\"lists-body\"></div>\n"
    "    </section>\n"
    "\n"
    "    <section id=\"view-status\" hidden aria-labelledby=\"status-title\">\n"
    "      <h2 id=\"status-title\" class=\"view-title\" data-i18n=\"status\">Status</h2>\n"
    "      <div id=\"status-body\"></div>\n"
    "    </section>\n"
    "  </main>\n"
    "</div>\n"
    "</body>\n"
    "</html>\n"
};
static const unsigned short web_index_html_chunks[] = {3947, 2520, 0};
typedef char web_index_html_is_whole[sizeof web_index_html == 6469 ? 1 : -1]; /* its chunks and their NULs, no padding */
static const struct {
    char c0[3989], c1[3997], c2[3382];
} web_app_css = {
    "/* mailsrv web page: a calm light theme (and a dark one), one column on phones. */\n"
    "\n"
    ":root {\n"
    "  --bg: #f6f7f9;\n"
    "  --panel: #ffffff;\n"
    "  --text: #1d2330;\n"
    "  --muted: #596275;\n"
    "  --line: #dde1e7;\n"
    "  --accent: #1f5fbf;\n"
    "  --accent-text: #ffffff;\n"
    "  --hover: #eef3fb;\n"
    "  --current: #dce8fa;\n"
    "  --danger: #b3261e;\n"
    "  --error-bg: #fdecea;\n"
    "  --focus: #1f5fbf;\n"
    "  --radius: 6px;\n"
    "  color-scheme: light;\n"
    "}\n"
    "\n"
    "@media (prefers-color-scheme: dark) {\n"
    "  :root {\n"
    "    --bg: #15181d;\n"
    "    --panel: #1d2128;\n"
    "    --text: #e6e9ee;\n"
    "    --muted: #a4adbb;\n"
    "    --line: #343a44;\n"
    "    --accent: #7fb0ff;\n"
    "    --accent-text: #0d1420;\n"
    "    --hover: #252b35;\n"
    "    --current: #203450;\n"
    "    --danger: #ff8a80;\n"
    "    --error-bg: #3b1f1e;\n"
    "    --focus: #7fb0ff;\n"
    "    color-scheme: dark;\n"
    "  }\n"
    "}\n"
    "\n"
    "* { box-sizing: border-box; }\n"
    "\n"
    "html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }\n"
    "\n"
    "body {\n"
    "  margin: 0;\n"
    "  background: var(--bg);\n"
    "  color: var(--text);\n"
    "  font: 15px/1.45 system-ui, -apple-system, \"Segoe UI\", Roboto, \"Helvetica Neue\", Arial, sans-serif;\n"
    "}\n"
    "\n"
    "[hidden] { display: none !important; }\n"
    "\n"
    "a { color: var(--accent); }\n"
    "\n"
    ":focus-visible { outline: 2px solid var(--focus); outline-offset: 2px; }\n"
    "\n"
    "/* text only for screen readers */\n"
    ".vh {\n"
    "  position: absolute !important;\n"
    "  width: 1px; height: 1px;\n"
    "  overflow: hidden;\n"
    "  clip: rect(0 0 0 0);\n"
    "  white-space: nowrap;\n"
    "}\n"
    "\n"
    ".skip { position: absolute; left: -9999px; }\n"
    ".skip:focus { left: 8px; top: 8px; z-index: 10; background: var(--panel); padding: 6px 10px; }\n"
    "\n"
    ".muted { color: var(--muted); }\n"
    "\n"
    "/* ---- buttons and inputs ---- */\n"
    "\n"
    "button {\n"
    "  font: inherit;\n"
    "  color: var(--text);\n"
    "  background: var(--panel);\n"
    "  border: 1px solid var(--line);\n"
    "  border-radius: var(--radius);\n"
    "  padding: 5px 11px;\n"
    "  cursor: pointer;\n"
    "}\n"
    "button:hover:not(:disabled) { background: var(--hover); }\n"
    "button:disabled { opacity: 0.5; cursor: default; }\n"
    "button.danger { color: var(--danger); }\n"
    "button.primary, .search button, .release button {\n"
    "  background: var(--accent);\n"
    "  color: var(--accent-text);\n"
    "  border-color: var(--accent);\n"
    "}\n"
    "\n"
    "input[type=\"search\"], input[type=\"email\"] {\n"
    "  font: inherit;\n"
    "  color: var(--text);\n"
    "  background: var(--panel);\n"
    "  border: 1px solid var(--line);\n"
    "  border-radius: var(--radius);\n"
    "  padding: 5px 9px;\n"
    "  min-width: 0;\n"
    "}\n"
    "\n"
    "input[type=\"checkbox\"] { width: 16px; height: 16px; margin: 0; accent-color: var(--accent); }\n"
    "\n"
    "/* ---- header bar ---- */\n"
    "\n"
    ".topbar {\n"
    "  position: sticky;\n"
    "  top: 0;\n"
    "  z-index: 5;\n"
    "  display: flex;\n"
    "  align-items: center;\n"
    "  gap: 16px;\n"
    "  padding: 8px 16px;\n"
    "  background: var(--panel);\n"
    "  border-bottom: 1px solid var(--line);\n"
    "}\n"
    ".brand { margin: 0; font-size: 1.2rem; }\n"
    ".brand a { color: var(--text); text-decoration: none; }\n"
    ".search { display: flex; gap: 6px; flex: 1; max-width: 560px; }\n"
    ".search input { flex: 1; }\n"
    ".user { margin-left: auto; color: var(--muted); overflow-wrap: anywhere; }\n"
    "\n"
    "/* ---- layout: nav on the left, the view on the right ---- */\n"
    "\n"
    ".layout {\n"
    "  display: grid;\n"
    "  grid-template-columns: 230px minmax(0, 1fr);\n"
    "  min-height: calc(100vh - 52px);\n"
    "}\n"
    "\n"
    ".nav {\n"
    "  border-right: 1px solid var(--line);\n"
    "  padding: 12px 8px;\n"
    "  background: var(--panel);\n"
    "}\n"
    ".nav-title {\n"
    "  margin: 10px 8px 4px;\n"
    "  font-size: 0.75rem;\n"
    "  text-transform: uppercase;\n"
    "  letter-spacing: 0.05em;\n"
    "  color: var(--muted);\n"
    "}\n"
    ".nav-list { list-style: none; margin: 0; padding: 0; }\n"
    ".nav-list a {\n"
    "  display: flex;\n"
    "  justify-content: space-between;\n"
    "  gap: 8px;\n"
    "  padding: 6px 8px;\n"
    "  border-radius: var(--radius);\n"
    "  color: var(--text);\n"
    "  text-decoration: none;\n"
    "}\n"
    ".nav-list a:hover { background: var(--hover); }\n"
    ".nav-list a[aria-current=\"page\"] { background: var(--current); font-weight: 600; }\n"
    ".nav-list .name { overflow-wrap: anywhere; min-width: 0; }\n"
    ".nav-list .count { color: var(--muted); font-variant-numeric: tabular-nums; }\n"
    ".nav-list .count.has-unread { color: var(--accent); font-weight: 600; }\n"
    "\n"
    ".main { padding: 12px 20px 40px; min-width: 0; }\n"
    ".main:focus { outline: none; }\n"
    "\n"
    ".view-title { margin: 4px 0 10px; font-size: 1.25rem; overflow-wrap: anywhere; }\n"
    "\n"
    ".error:empty { display: none; }\n"
    ".error {\n",
    "  background: var(--error-bg);\n"
    "  color: var(--danger);\n"
    "  border: 1px solid var(--danger);\n"
    "  border-radius: var(--radius);\n"
    "  padding: 8px 12px;\n"
    "  margin-bottom: 12px;\n"
    "  overflow-wrap: anywhere;\n"
    "}\n"
    "\n"
    ".toolbar {\n"
    "  display: flex;\n"
    "  flex-wrap: wrap;\n"
    "  align-items: center;\n"
    "  gap: 8px;\n"
    "  margin-bottom: 10px;\n"
    "}\n"
    ".check { display: inline-flex; align-items: center; gap: 6px; padding: 0 6px; }\n"
    "\n"
    "/* ---- the message list: one grid row per message ---- */\n"
    "\n"
    ".list {\n"
    "  background: var(--panel);\n"
    "  border: 1px solid var(--line);\n"
    "  border-radius: var(--radius);\n"
    "}\n"
    ".list:empty { display: none; }\n"
    "\n"
    ".msg {\n"
    "  display: grid;\n"
    "  grid-template-columns: 28px 14px minmax(0, 13rem) minmax(0, 1fr) 24px 8.5rem 5rem;\n"
    "  grid-template-areas:\n"
    "    \"sel mark from subject att date size\"\n"
    "    \"sel mark from snippet att date size\";\n"
    "  column-gap: 8px;\n"
    "  align-items: center;\n"
    "  padding: 7px 10px;\n"
    "  border-bottom: 1px solid var(--line);\n"
    "  cursor: pointer;\n"
    "}\n"
    ".msg:last-child { border-bottom: 0; }\n"
    ".msg:hover { background: var(--hover); }\n"
    ".msg.current { background: var(--current); box-shadow: inset 3px 0 0 var(--accent); }\n"
    "\n"
    ".msg .sel { grid-area: sel; display: flex; align-items: center; }\n"
    ".msg .mark { grid-area: mark; color: var(--accent); font-size: 0.7rem; }\n"
    ".msg .from { grid-area: from; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }\n"
    ".msg .subject { grid-area: subject; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }\n"
    ".msg .subject a { color: var(--text); text-decoration: none; }\n"
    ".msg .subject a:hover { text-decoration: underline; }\n"
    ".msg .snippet {\n"
    "  grid-area: snippet;\n"
    "  color: var(--muted);\n"
    "  font-size: 0.85rem;\n"
    "  overflow: hidden; text-overflow: ellipsis; white-space: nowrap;\n"
    "}\n"
    ".msg .attcell { grid-area: att; text-align: center; }\n"
    ".table button { white-space: nowrap; }\n"
    "/* a paperclip drawn here: an emoji needs a font many systems lack */\n"
    ".att {\n"
    "  display: inline-block;\n"
    "  width: 14px;\n"
    "  height: 14px;\n"
    "  vertical-align: middle;\n"
    "  background: no-repeat center / contain url(\"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' stroke='%23667' stroke-width='2' stroke-linecap='round'%3E%3Cpath d='M21 11.5l-8.5 8.5a5 5 0 0 1-7-7L14 4.5a3.5 3.5 0 0 1 5 5l-8.5 8.5a2 2 0 0 1-3-3L15 7.5'/%3E%3C/svg%3E\");\n"
    "}\n"
    ".msg .date { grid-area: date; color: var(--muted); text-align: right; white-space: nowrap; font-size: 0.9rem; }\n"
    ".msg .size { grid-area: size; color: var(--muted); text-align: right; white-space: nowrap; font-size: 0.85rem; }\n"
    ".msg.unread .from, .msg.unread .subject a { font-weight: 700; }\n"
    ".msg.unread .date { color: var(--text); }\n"
    "\n"
    ".empty { color: var(--muted); padding: 24px 8px; text-align: center; }\n"
    ".more { text-align: center; }\n"
    "\n"
    "/* ---- one message ---- */\n"
    "\n"
    ".msg-subject { margin: 6px 0 8px; font-size: 1.35rem; overflow-wrap: anywhere; }\n"
    "/* name: value lists (a message's header summary; the facts of a list and of the status page) */\n"
    ".meta, .facts {\n"
    "  display: grid;\n"
    "  grid-template-columns: max-content minmax(0, 1fr);\n"
    "  gap: 2px 12px;\n"
    "  margin: 0 0 12px;\n"
    "}\n"
    ".facts { gap: 4px 16px; margin-bottom: 16px; }\n"
    ".meta dt, .facts dt { color: var(--muted); }\n"
    ".meta dd, .facts dd { margin: 0; overflow-wrap: anywhere; }\n"
    "\n"
    ".attachments {\n"
    "  border: 1px solid var(--line);\n"
    "  border-radius: var(--radius);\n"
    "  background: var(--panel);\n"
    "  padding: 6px 12px;\n"
    "  margin-bottom: 12px;\n"
    "}\n"
    ".attachments h3 { margin: 2px 0 4px; font-size: 0.95rem; }\n"
    ".attachments ul { margin: 0; padding-left: 1.2em; }\n"
    ".attachments li { overflow-wrap: anywhere; }\n"
    ".attachments .size { color: var(--muted); margin-left: 6px; }\n"
    "\n"
    ".tabs { display: flex; flex-wrap: wrap; gap: 2px; border-bottom: 1px solid var(--line); }\n"
    ".tabs button {\n"
    "  border: 1px solid transparent;\n"
    "  border-bottom: 0;\n"
    "  border-radius: var(--radius) var(--radius) 0 0;\n"
    "  background: transparent;\n"
    "  margin-bottom: -1px;\n"
    "}\n"
    ".tabs button[aria-selected=\"true\"] {\n"
    "  background: var(--panel);\n"
    "  border-color: var(--line);\n"
    "  font-weight: 600;\n"
    "}\n"
    ".panel {\n"
    "  background: var(--panel);\n"
    "  border: 1px solid var(--line);\n",
    "  border-top: 0;\n"
    "  border-radius: 0 0 var(--radius) var(--radius);\n"
    "  padding: 10px;\n"
    "  margin-bottom: 14px;\n"
    "  overflow-x: auto;\n"
    "}\n"
    ".remote { margin: 0 0 8px; }\n"
    "#msg-html {\n"
    "  display: block;\n"
    "  width: 100%;\n"
    "  height: 300px;\n"
    "  border: 0;\n"
    "  background: #ffffff;   /* mail is written for white paper */\n"
    "}\n"
    ".pre {\n"
    "  margin: 0;\n"
    "  white-space: pre-wrap;\n"
    "  overflow-wrap: anywhere;\n"
    "  font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, \"Liberation Mono\", monospace;\n"
    "}\n"
    "\n"
    ".release { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; }\n"
    ".release input { flex: 1; max-width: 320px; }\n"
    ".status { min-height: 1.4em; color: var(--muted); overflow-wrap: anywhere; }\n"
    "\n"
    "/* ---- tables (headers, queue, lists, status) ---- */\n"
    "\n"
    ".table {\n"
    "  width: 100%;\n"
    "  border-collapse: collapse;\n"
    "  background: var(--panel);\n"
    "  font-size: 0.92rem;\n"
    "}\n"
    ".table th, .table td {\n"
    "  text-align: left;\n"
    "  vertical-align: top;\n"
    "  padding: 5px 8px;\n"
    "  border-bottom: 1px solid var(--line);\n"
    "  overflow-wrap: anywhere;\n"
    "}\n"
    ".table thead th { color: var(--muted); font-weight: 600; white-space: nowrap; }\n"
    ".table tr.active td { background: var(--hover); }\n"
    ".headers th { width: 1%; white-space: nowrap; }\n"
    ".table-wrap { overflow-x: auto; margin-bottom: 16px; border: 1px solid var(--line); border-radius: var(--radius); }\n"
    ".table-wrap .table tr:last-child > * { border-bottom: 0; }\n"
    ".rcpts { list-style: none; margin: 0; padding: 0; }\n"
    ".state-delivered { color: #1b7f3b; }\n"
    ".state-bounced { color: var(--danger); }\n"
    ".num { text-align: right !important; font-variant-numeric: tabular-nums; }\n"
    ".small { font-size: 0.85rem; color: var(--muted); }\n"
    "\n"
    ".card {\n"
    "  background: var(--panel);\n"
    "  border: 1px solid var(--line);\n"
    "  border-radius: var(--radius);\n"
    "  padding: 10px 14px;\n"
    "  margin-bottom: 18px;\n"
    "}\n"
    ".card h3 { margin: 4px 0 8px; overflow-wrap: anywhere; }\n"
    ".card h4 { margin: 14px 0 6px; font-size: 0.95rem; }\n"
    "\n"
    "@media (prefers-color-scheme: dark) {\n"
    "  .state-delivered { color: #7bd88f; }\n"
    "}\n"
    "\n"
    "/* ---- phones: one column, the nav a row of links on top ---- */\n"
    "\n"
    "@media (max-width: 700px) {\n"
    "  body { font-size: 15px; }\n"
    "  .topbar { flex-wrap: wrap; gap: 8px; padding: 8px 10px; }\n"
    "  .search { order: 3; flex-basis: 100%; max-width: none; }\n"
    "  .layout { display: block; min-height: 0; }\n"
    "  .nav {\n"
    "    border-right: 0;\n"
    "    border-bottom: 1px solid var(--line);\n"
    "    padding: 6px 8px;\n"
    "  }\n"
    "  .nav-title { display: none; }\n"
    "  .nav-list, #nav-admin { display: flex; flex-wrap: nowrap; gap: 4px; flex: none; }\n"
    "  .nav-list { display: contents; }\n"
    "  /* one row that scrolls sideways: a class of thirty mailboxes does not push the mail off the screen */\n"
    "  .nav { display: flex; flex-wrap: nowrap; gap: 4px; overflow-x: auto; white-space: nowrap; }\n"
    "  .nav-list a { padding: 4px 8px; border: 1px solid var(--line); }\n"
    "  .main { padding: 10px 10px 32px; }\n"
    "\n"
    "  .msg {\n"
    "    grid-template-columns: 24px 12px minmax(0, 1fr) auto auto;\n"
    "    grid-template-areas:\n"
    "      \"sel mark from att date\"\n"
    "      \"sel mark subject subject size\"\n"
    "      \"sel mark snippet snippet snippet\";\n"
    "    padding: 8px;\n"
    "  }\n"
    "  .msg .date { font-size: 0.8rem; }\n"
    "\n"
    "  .table thead { display: none; }\n"
    "  .table.stack tr { display: block; border-bottom: 1px solid var(--line); padding: 4px 0; }\n"
    "  .table.stack td { display: block; border: 0; padding: 2px 8px; }\n"
    "  .table.stack td[data-label]::before {\n"
    "    content: attr(data-label) \": \";\n"
    "    color: var(--muted);\n"
    "  }\n"
    "  .num { text-align: left !important; }\n"
    "}\n"
};
static const unsigned short web_app_css_chunks[] = {3988, 3996, 3381, 0};
typedef char web_app_css_is_whole[sizeof web_app_css == 11368 ? 1 : -1]; /* its chunks and their NULs, no padding */
static const struct {
    char c0[3990], c1[3996], c2[3998], c3[3975], c4[3980], c5[3974], c6[3992], c7[3967], c8[3972], c9[3973], c10[3918], c11[3974], c12[1536];
} web_app_js = {
    "/* mailsrv web page.\n"
    " *\n"
    " * One file, no framework. How it fits together:\n"
    " *   1. DICT: every UI string, in English and Russian; t(key, ...args) picks one.\n"
    " *   2. el(): builds DOM nodes. Data from the server only ever goes into text nodes or\n"
    " *      safe attributes: no innerHTML anywhere in this file.\n"
    " *   3. api(): fetch() with error handling; state-changing requests carry X-Requested-With.\n"
    " *   4. route(): the hash (#/, #/mailbox/ADDR, #/search/Q, #/message/ID, #/queue, #/lists,\n"
    " *      #/status) decides which view is shown; the Back button just changes the hash.\n"
    " *   5. Views: the message list, one message, and the admin pages (queue, lists, status).\n"
    " *   6. Live updates from /api/v1/events (Server-Sent Events) and the keyboard shortcuts.\n"
    " */\n"
    "(function () {\n"
    "  'use strict';\n"
    "\n"
    "  /* ---------------------------------------------------------------- 1. strings */\n"
    "\n"
    "  const DICT = {\n"
    "    en: {\n"
    "      skip: 'Skip to content',\n"
    "      navLabel: 'Navigation',\n"
    "      search: 'Search',\n"
    "      searchPlaceholder: 'Search mail',\n"
    "      searchButton: 'Search',\n"
    "      mailboxes: 'Mailboxes',\n"
    "      allMail: 'All messages',\n"
    "      inbox: 'Inbox',\n"
    "      searchResults: 'Search: {0}',\n"
    "      admin: 'Administration',\n"
    "      queue: 'Queue',\n"
    "      lists: 'Mailing lists',\n"
    "      status: 'Status',\n"
    "      captureMode: 'Capture mode',\n"
    "      messages: 'Messages',\n"
    "      selectAll: 'Select all',\n"
    "      selectMessage: 'Select: {0}',\n"
    "      readSelected: 'Mark as read',\n"
    "      unreadSelected: 'Mark as unread',\n"
    "      deleteSelected: 'Delete selected',\n"
    "      deleteAll: 'Delete all',\n"
    "      loadMore: 'Load more',\n"
    "      loading: 'Loading\342\200\246',\n"
    "      empty: 'No messages',\n"
    "      countOf: '{0} of {1}',\n"
    "      noSubject: '(no subject)',\n"
    "      unread: 'Unread',\n"
    "      hasAttachments: 'Has attachments',\n"
    "      mailboxCount: '{0} unread of {1}',\n"
    "      back: 'Back to list',\n"
    "      delete: 'Delete',\n"
    "      markUnread: 'Mark as unread',\n"
    "      markedUnread: 'Marked as unread.',\n"
    "      from: 'From',\n"
    "      to: 'To',\n"
    "      cc: 'Cc',\n"
    "      date: 'Date',\n"
    "      tabText: 'Text',\n"
    "      tabHeaders: 'Headers',\n"
    "      tabRaw: 'Source',\n"
    "      attachments: 'Attachments',\n"
    "      attachment: 'attachment {0}',\n"
    "      showRemote: 'Show remote images',\n"
    "      frameTitle: 'Message body',\n"
    "      noText: '(this message has no text part)',\n"
    "      forwardTo: 'Forward to',\n"
    "      forward: 'Forward',\n"
    "      forwarding: 'Forwarding\342\200\246',\n"
    "      forwarded: 'Forwarded to {0}.',\n"
    "      login: 'Log in: reload the page',\n"
    "      netError: 'Network error: {0}',\n"
    "      httpError: 'Error {0}: {1}',\n"
    "      badJson: 'The server sent an answer the page cannot read.',\n"
    "      confirmDeleteAll: 'Delete all {0} messages in this view\? This cannot be undone.',\n"
    "      confirmQueueDelete: 'Remove message {0} from the queue\? It will not be delivered.',\n"
    "      flush: 'Retry delivery now',\n"
    "      flushed: 'Delivery started for {0} messages.',\n"
    "      queueEmpty: 'The queue is empty.',\n"
    "      queueMore: 'And {0} more messages in the queue.',\n"
    "      qId: 'ID',\n"
    "      qFrom: 'Sender',\n"
    "      qArrived: 'Arrived',\n"
    "      qSize: 'Size',\n"
    "      qTries: 'Attempts',\n"
    "      qNext: 'Next attempt',\n"
    "      qRcpts: 'Recipients',\n"
    "      qActions: 'Actions',\n"
    "      qActive: 'being delivered now',\n"
    "      qNow: 'now',\n"
    "      removeFromQueue: 'Delete',\n"
    "      st_pending: 'pending',\n"
    "      st_delivered: 'delivered',\n"
    "      st_bounced: 'bounced',\n"
    "      listsEmpty: 'There are no mailing lists.',\n"
    "      owner: 'Owner',\n"
    "      post: 'Who may post',\n"
    "      post_owner: 'the owner only',\n"
    "      post_members: 'members',\n"
    "      post_anyone: 'anyone',\n"
    "      posts: 'Messages posted',\n"
    "      members: 'Members ({0})',\n"
    "      pending: 'Waiting for confirmation ({0})',\n"
    "      noMembers: 'No members.',\n"
    "      noPending: 'Nothing is waiting for confirmation.',\n"
    "      address: 'Address',\n"
    "      requested: 'Requested',\n"
    "      confirmed: 'Confirmed',\n"
    "      bounces: 'Bounces',\n"
    "      request: 'Request',\n"
    "      kind_subscribe: 'subscribe',\n"
    "      kind_unsubscribe: 'unsubscribe',\n"
    "      time: 'Time',\n"
    "      version: 'Version',\n",
    "      uptime: 'Uptime',\n"
    "      sessions: 'Open sessions',\n"
    "      messagesToday: 'Messages today',\n"
    "      queueLength: 'Messages in the queue',\n"
    "      listeners: 'Listeners',\n"
    "      protocol: 'Protocol',\n"
    "      tls: 'TLS',\n"
    "      tls_none: 'none',\n"
    "      tls_starttls: 'STARTTLS',\n"
    "      tls_implicit: 'implicit TLS',\n"
    "      days: '{0} d',\n"
    "      hours: '{0} h',\n"
    "      minutes: '{0} min',\n"
    "      seconds: '{0} s',\n"
    "      kb: '{0} KB',\n"
    "      mb: '{0} MB',\n"
    "      none: '\342\200\224',\n"
    "    },\n"
    "    ru: {\n"
    "      skip: '\320\237\320\265\321\200\320\265\320\271\321\202\320\270 \320\272 \321\201\320\276\320\264\320\265\321\200\320\266\320\270\320\274\320\276\320\274\321\203',\n"
    "      navLabel: '\320\235\320\260\320\262\320\270\320\263\320\260\321\206\320\270\321\217',\n"
    "      search: '\320\237\320\276\320\270\321\201\320\272',\n"
    "      searchPlaceholder: '\320\237\320\276\320\270\321\201\320\272 \320\277\320\270\321\201\320\265\320\274',\n"
    "      searchButton: '\320\235\320\260\320\271\321\202\320\270',\n"
    "      mailboxes: '\320\237\320\276\321\207\321\202\320\276\320\262\321\213\320\265 \321\217\321\211\320\270\320\272\320\270',\n"
    "      allMail: '\320\222\321\201\320\265 \320\277\320\270\321\201\321\214\320\274\320\260',\n"
    "      inbox: '\320\222\321\205\320\276\320\264\321\217\321\211\320\270\320\265',\n"
    "      searchResults: '\320\237\320\276\320\270\321\201\320\272: {0}',\n"
    "      admin: '\320\220\320\264\320\274\320\270\320\275\320\270\321\201\321\202\321\200\320\270\321\200\320\276\320\262\320\260\320\275\320\270\320\265',\n"
    "      queue: '\320\236\321\207\320\265\321\200\320\265\320\264\321\214',\n"
    "      lists: '\320\240\320\260\321\201\321\201\321\213\320\273\320\272\320\270',\n"
    "      status: '\320\241\320\276\321\201\321\202\320\276\321\217\320\275\320\270\320\265',\n"
    "      captureMode: '\320\240\320\265\320\266\320\270\320\274 \320\277\320\265\321\200\320\265\321\205\320\262\320\260\321\202\320\260',\n"
    "      messages: '\320\237\320\270\321\201\321\214\320\274\320\260',\n"
    "      selectAll: '\320\222\321\213\320\261\321\200\320\260\321\202\321\214 \320\262\321\201\320\265',\n"
    "      selectMessage: '\320\222\321\213\320\261\321\200\320\260\321\202\321\214: {0}',\n"
    "      readSelected: '\320\236\321\202\320\274\320\265\321\202\320\270\321\202\321\214 \320\272\320\260\320\272 \320\277\321\200\320\276\321\207\320\270\321\202\320\260\320\275\320\275\321\213\320\265',\n"
    "      unreadSelected: '\320\236\321\202\320\274\320\265\321\202\320\270\321\202\321\214 \320\272\320\260\320\272 \320\275\320\265\320\277\321\200\320\276\321\207\320\270\321\202\320\260\320\275\320\275\321\213\320\265',\n"
    "      deleteSelected: '\320\243\320\264\320\260\320\273\320\270\321\202\321\214 \320\262\321\213\320\261\321\200\320\260\320\275\320\275\321\213\320\265',\n"
    "      deleteAll: '\320\243\320\264\320\260\320\273\320\270\321\202\321\214 \320\262\321\201\320\265',\n"
    "      loadMore: '\320\237\320\276\320\272\320\260\320\267\320\260\321\202\321\214 \320\265\321\211\321\221',\n"
    "      loading: '\320\227\320\260\320\263\321\200\321\203\320\267\320\272\320\260\342\200\246',\n"
    "      empty: '\320\237\320\270\321\201\320\265\320\274 \320\275\320\265\321\202',\n"
    "      countOf: '{0} \320\270\320\267 {1}',\n"
    "      noSubject: '(\320\261\320\265\320\267 \321\202\320\265\320\274\321\213)',\n"
    "      unread: '\320\235\320\265 \320\277\321\200\320\276\321\207\320\270\321\202\320\260\320\275\320\276',\n"
    "      hasAttachments: '\320\225\321\201\321\202\321\214 \320\262\320\273\320\276\320\266\320\265\320\275\320\270\321\217',\n"
    "      mailboxCount: '\320\235\320\265\320\277\321\200\320\276\321\207\320\270\321\202\320\260\320\275\320\275\321\213\321\205: {0} \320\270\320\267 {1}',\n"
    "      back: '\320\232 \321\201\320\277\320\270\321\201\320\272\321\203 \320\277\320\270\321\201\320\265\320\274',\n"
    "      delete: '\320\243\320\264\320\260\320\273\320\270\321\202\321\214',\n"
    "      markUnread: '\320\236\321\202\320\274\320\265\321\202\320\270\321\202\321\214 \320\272\320\260\320\272 \320\275\320\265\320\277\321\200\320\276\321\207\320\270\321\202\320\260\320\275\320\275\320\276\320\265',\n"
    "      markedUnread: '\320\237\320\270\321\201\321\214\320\274\320\276 \320\276\321\202\320\274\320\265\321\207\320\265\320\275\320\276 \320\272\320\260\320\272 \320\275\320\265\320\277\321\200\320\276\321\207\320\270\321\202\320\260\320\275\320\275\320\276\320\265.',\n"
    "      from: '\320\236\321\202',\n"
    "      to: '\320\232\320\276\320\274\321\203',\n"
    "      cc: '\320\232\320\276\320\277\320\270\321\217',\n"
    "      date: '\320\224\320\260\321\202\320\260',\n"
    "      tabText: '\320\242\320\265\320\272\321\201\321\202',\n"
    "      tabHeaders: '\320\227\320\260\320\263\320\276\320\273\320\276\320\262\320\272\320\270',\n"
    "      tabRaw: '\320\230\321\201\321\205\320\276\320\264\320\275\321\213\320\271 \321\202\320\265\320\272\321\201\321\202',\n"
    "      attachments: '\320\222\320\273\320\276\320\266\320\265\320\275\320\270\321\217',\n"
    "      attachment: '\320\262\320\273\320\276\320\266\320\265\320\275\320\270\320\265 {0}',\n"
    "      showRemote: '\320\237\320\276\320\272\320\260\320\267\320\260\321\202\321\214 \320\262\320\275\320\265\321\210\320\275\320\270\320\265 \320\270\320\267\320\276\320\261\321\200\320\260\320\266\320\265\320\275\320\270\321\217',\n"
    "      frameTitle: '\320\242\320\265\320\272\321\201\321\202 \320\277\320\270\321\201\321\214\320\274\320\260',\n"
    "      noText: '(\320\262 \320\277\320\270\321\201\321\214\320\274\320\265 \320\275\320\265\321\202 \321\202\320\265\320\272\321\201\321\202\320\276\320\262\320\276\320\271 \321\207\320\260\321\201\321\202\320\270)',\n"
    "      forwardTo: '\320\237\320\265\321\200\320\265\321\201\320\273\320\260\321\202\321\214 \320\275\320\260 \320\260\320\264\321\200\320\265\321\201',\n"
    "      forward: '\320\237\320\265\321\200\320\265\321\201\320\273\320\260\321\202\321\214',\n"
    "      forwarding: '\320\237\320\265\321\200\320\265\321\201\321\213\320\273\320\260\320\265\320\274\342\200\246',\n"
    "      forwarded: '\320\237\320\270\321\201\321\214\320\274\320\276 \320\277\320\265\321\200\320\265\321\201\320\273\320\260\320\275\320\276 \320\275\320\260 \320\260\320\264\321\200\320\265\321\201 {0}.',\n"
    "      login: '\320\222\320\276\320\271\320\264\320\270\321\202\320\265 \320\267\320\260\320\275\320\276\320\262\320\276: \320\277\320\265\321\200\320\265\320\267\320\260\320\263\321\200\321\203\320\267\320\270\321\202\320\265 \321\201\321\202\321\200\320\260\320\275\320\270\321\206\321\203',\n"
    "      netError: '\320\236\321\210\320\270\320\261\320\272\320\260 \321\201\320\265\321\202\320\270: {0}',\n"
    "      httpError: '\320\236\321\210\320\270\320\261\320\272\320\260 {0}: {1}',\n"
    "      badJson: '\320\241\320\265\321\200\320\262\320\265\321\200 \320\277\321\200\320\270\321\201\320\273\320\260\320\273 \320\276\321\202\320\262\320\265\321\202, \320\272\320\276\321\202\320\276\321\200\321\213\320\271 \321\201\321\202\321\200\320\260\320\275\320\270\321\206\320\260 \320\275\320\265 \320\274\320\276\320\266\320\265\321\202 \320\277\321\200\320\276\321\207\320\270\321\202\320\260\321\202\321\214.',\n"
    "      confirmDeleteAll: '\320\243\320\264\320\260\320\273\320\270\321\202\321\214 \320\262\321\201\320\265 \320\277\320\270\321\201\321\214\320\274\320\260 \320\262 \321\215\321\202\320\276\320\274 \321\201\320\277\320\270\321\201\320\272\320\265 ({0})\? \320\236\321\202\320\274\320\265\320\275\320\270\321\202\321\214 \321\215\321\202\320\276 \320\261\321\203\320\264\320\265\321\202 \320\275\320\265\320\273\321\214\320\267\321\217.',\n"
    "      confirmQueueDelete: '\320\243\320\264\320\260\320\273\320\270\321\202\321\214 \320\277\320\270\321\201\321\214\320\274\320\276 {0} \320\270\320\267 \320\276\321\207\320\265\321\200\320\265\320\264\320\270\? \320\236\320\275\320\276 \320\275\320\265 \320\261\321\203\320\264\320\265\321\202 \320\264\320\276\321\201\321\202\320\260\320\262\320\273\320\265\320\275\320\276.',\n"
    "      flush: '\320\236\321\202\320\277\321\200\320\260\320\262\320\270\321\202\321\214 \321\201\320\265\320\271\321\207\320\260\321\201',\n"
    "      flushed: '\320\235\320\260\321\207\320\260\321\202\320\260 \320\264\320\276\321\201\321\202\320\260\320\262\320\272\320\260 \320\277\320\270\321\201\320\265\320\274: {0}.',\n"
    "      queueEmpty: '\320\236\321\207\320\265\321\200\320\265\320\264\321\214 \320\277\321\203\321\201\321\202\320\260.',\n"
    "      queueMore: '\320\230 \320\265\321\211\321\221 \320\277\320\270\321\201\320\265\320\274 \320\262 \320\276\321\207\320\265\321\200\320\265\320\264\320\270: {0}.',\n"
    "      qId: 'ID',\n"
    "      qFrom: '\320\236\321\202\320\277\321\200\320\260\320\262\320\270\321\202\320\265\320\273\321\214',\n"
    "      qArrived: '\320\237\320\276\320\273\321\203\321\207\320\265\320\275\320\276',\n"
    "      qSize: '\320\240\320\260\320\267\320\274\320\265\321\200',\n"
    "      qTries: '\320\237\320\276\320\277\321\213\321\202\320\272\320\270',\n"
    "      qNext: '\320\241\320\273\320\265\320\264\321\203\321\216\321\211\320\260\321\217 \320\277\320\276\320\277\321\213\321\202\320\272\320\260',\n"
    "      qRcpts: '\320\237\320\276\320\273\321\203\321\207\320\260\321\202\320\265\320\273\320\270',\n"
    "      qActions: '\320\224\320\265\320\271\321\201\321\202\320\262\320\270\321\217',\n"
    "      qActive: '\320\264\320\276\321\201\321\202\320\260\320\262\320\273\321\217\320\265\321\202\321\201\321\217 \321\201\320\265\320\271\321\207\320\260\321\201',\n"
    "      qNow: '\321\201\320\265\320\271\321\207\320\260\321\201',\n"
    "      removeFromQueue: '\320\243\320\264\320\260\320\273\320\270\321\202\321\214',\n"
    "      st_pending: '\320\276\320\266\320\270\320\264\320\260\320\265\321\202',\n"
    "      st_delivered: '\320\264\320\276\321\201\321\202\320\260\320\262\320\273\320\265\320\275\320\276',\n"
    "      st_bounced: '\320\262\320\276\320\267\320\262\321\200\320\260\321\211\320\265\320\275\320\276',\n",
    "      listsEmpty: '\320\240\320\260\321\201\321\201\321\213\320\273\320\276\320\272 \320\275\320\265\321\202.',\n"
    "      owner: '\320\222\320\273\320\260\320\264\320\265\320\273\320\265\321\206',\n"
    "      post: '\320\232\321\202\320\276 \320\274\320\276\320\266\320\265\321\202 \320\277\320\270\321\201\320\260\321\202\321\214',\n"
    "      post_owner: '\321\202\320\276\320\273\321\214\320\272\320\276 \320\262\320\273\320\260\320\264\320\265\320\273\320\265\321\206',\n"
    "      post_members: '\321\203\321\207\320\260\321\201\321\202\320\275\320\270\320\272\320\270',\n"
    "      post_anyone: '\320\262\321\201\320\265',\n"
    "      posts: '\320\237\320\270\321\201\320\265\320\274 \320\262 \321\200\320\260\321\201\321\201\321\213\320\273\320\272\320\265',\n"
    "      members: '\320\243\321\207\320\260\321\201\321\202\320\275\320\270\320\272\320\270 ({0})',\n"
    "      pending: '\320\236\320\266\320\270\320\264\320\260\321\216\321\202 \320\277\320\276\320\264\321\202\320\262\320\265\321\200\320\266\320\264\320\265\320\275\320\270\321\217 ({0})',\n"
    "      noMembers: '\320\243\321\207\320\260\321\201\321\202\320\275\320\270\320\272\320\276\320\262 \320\275\320\265\321\202.',\n"
    "      noPending: '\320\235\320\265\321\202 \320\267\320\260\320\277\321\200\320\276\321\201\320\276\320\262, \320\276\320\266\320\270\320\264\320\260\321\216\321\211\320\270\321\205 \320\277\320\276\320\264\321\202\320\262\320\265\321\200\320\266\320\264\320\265\320\275\320\270\321\217.',\n"
    "      address: '\320\220\320\264\321\200\320\265\321\201',\n"
    "      requested: '\320\227\320\260\320\277\321\200\320\276\321\201',\n"
    "      confirmed: '\320\237\320\276\320\264\321\202\320\262\320\265\321\200\320\266\320\264\320\265\320\275\320\270\320\265',\n"
    "      bounces: '\320\222\320\276\320\267\320\262\321\200\320\260\321\202\321\213',\n"
    "      request: '\320\227\320\260\320\277\321\200\320\276\321\201',\n"
    "      kind_subscribe: '\320\277\320\276\320\264\320\277\320\270\321\201\320\272\320\260',\n"
    "      kind_unsubscribe: '\320\276\321\202\320\277\320\270\321\201\320\272\320\260',\n"
    "      time: '\320\222\321\200\320\265\320\274\321\217',\n"
    "      version: '\320\222\320\265\321\200\321\201\320\270\321\217',\n"
    "      uptime: '\320\222\321\200\320\265\320\274\321\217 \321\200\320\260\320\261\320\276\321\202\321\213',\n"
    "      sessions: '\320\236\321\202\320\272\321\200\321\213\321\202\321\213\320\265 \321\201\320\265\320\260\320\275\321\201\321\213',\n"
    "      messagesToday: '\320\237\320\270\321\201\320\265\320\274 \320\267\320\260 \321\201\320\265\320\263\320\276\320\264\320\275\321\217',\n"
    "      queueLength: '\320\237\320\270\321\201\320\265\320\274 \320\262 \320\276\321\207\320\265\321\200\320\265\320\264\320\270',\n"
    "      listeners: '\320\237\321\200\320\276\321\201\320\273\321\203\321\210\320\270\320\262\320\260\320\265\320\274\321\213\320\265 \320\260\320\264\321\200\320\265\321\201\320\260',\n"
    "      protocol: '\320\237\321\200\320\276\321\202\320\276\320\272\320\276\320\273',\n"
    "      tls: 'TLS',\n"
    "      tls_none: '\320\275\320\265\321\202',\n"
    "      tls_starttls: 'STARTTLS',\n"
    "      tls_implicit: 'TLS \321\201 \320\277\320\265\321\200\320\262\320\276\320\263\320\276 \320\261\320\260\320\271\321\202\320\260',\n"
    "      days: '{0} \320\264',\n"
    "      hours: '{0} \321\207',\n"
    "      minutes: '{0} \320\274\320\270\320\275',\n"
    "      seconds: '{0} \321\201',\n"
    "      kb: '{0} \320\232\320\221',\n"
    "      mb: '{0} \320\234\320\221',\n"
    "      none: '\342\200\224',\n"
    "    },\n"
    "  };\n"
    "\n"
    "  /* The first of the browser's languages that we have; English otherwise. */\n"
    "  function pickLang() {\n"
    "    const wanted = (navigator.languages && navigator.languages.length)\n"
    "      \? navigator.languages : [navigator.language || 'en'];\n"
    "    for (const l of wanted) {\n"
    "      const code = String(l).toLowerCase();\n"
    "      if (code.startsWith('ru')) return 'ru';\n"
    "      if (code.startsWith('en')) return 'en';\n"
    "    }\n"
    "    return 'en';\n"
    "  }\n"
    "\n"
    "  const LANG = pickLang();\n"
    "\n"
    "  /* t('forwarded', addr): the string for key, with {0}, {1}... replaced by the arguments. */\n"
    "  function t(key, ...args) {\n"
    "    let s = DICT[LANG][key];\n"
    "    if (s === undefined) s = DICT.en[key];\n"
    "    if (s === undefined) return key;\n"
    "    args.forEach((a, i) => { s = s.split('{' + i + '}').join(String(a)); });\n"
    "    return s;\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- 2. DOM helpers */\n"
    "\n"
    "  const $ = (id) => document.getElementById(id);\n"
    "\n"
    "  /* el('a', {href: '#/', class: 'x'}, 'text', otherNode): a new element. Strings become text\n"
    "   * nodes; keys starting with \"on\" are event listeners; hidden/disabled/checked are properties. */\n"
    "  function el(tag, attrs, ...children) {\n"
    "    const node = document.createElement(tag);\n"
    "    for (const [k, v] of Object.entries(attrs || {})) {\n"
    "      if (v === null || v === undefined || v === false) continue;\n"
    "      if (k === 'class') node.className = v;\n"
    "      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);\n"
    "      else if (k === 'hidden' || k === 'disabled' || k === 'checked') node[k] = true;\n"
    "      else node.setAttribute(k, v === true \? '' : String(v));\n"
    "    }\n"
    "    append(node, children);\n"
    "    return node;\n"
    "  }\n"
    "\n"
    "  function append(node, children) {\n"
    "    for (const c of children) {\n"
    "      if (c === null || c === undefined || c === false) continue;\n"
    "      if (Array.isArray(c)) append(node, c);\n"
    "      else node.appendChild(typeof c === 'string' || typeof c === 'number'\n"
    "        \? document.createTextNode(String(c)) : c);\n"
    "    }\n"
    "  }\n"
    "\n"
    "  /* Replaces all children of node (by id or node) with the given ones. */\n"
    "  function fill(node, ...children) {\n"
    "    if (typeof node === 'string') node = $(node);\n"
    "    node.textContent = '';\n"
    "    append(node, children);\n"
    "    return node;\n"
    "  }\n"
    "\n"
    "  const enc = encodeURIComponent;\n"
    "\n"
    "  /* ---------------------------------------------------------------- formatting */\n"
    "\n"
    "  function fmtDate(iso, long) {\n"
    "    if (!iso) return t('none');\n"
    "    const d = new Date(iso);\n"
    "    if (isNaN(d.getTime())) return String(iso);\n"
    "    if (long) return d.toLocaleString(LANG);\n"
    "    const now = new Date();\n",
    "    if (d.toDateString() === now.toDateString())\n"
    "      return d.toLocaleTimeString(LANG, { hour: '2-digit', minute: '2-digit' });\n"
    "    if (d.getFullYear() === now.getFullYear())\n"
    "      return d.toLocaleDateString(LANG, { day: 'numeric', month: 'short' });\n"
    "    return d.toLocaleDateString(LANG, { year: 'numeric', month: 'short', day: 'numeric' });\n"
    "  }\n"
    "\n"
    "  function fmtSize(bytes) {\n"
    "    const kb = (Number(bytes) || 0) / 1024;\n"
    "    if (kb >= 1024) return t('mb', (Math.round(kb / 102.4) / 10).toLocaleString(LANG));\n"
    "    const n = kb < 10 \? Math.max(0.1, Math.round(kb * 10) / 10) : Math.round(kb);\n"
    "    return t('kb', n.toLocaleString(LANG));\n"
    "  }\n"
    "\n"
    "  function fmtUptime(sec) {\n"
    "    sec = Math.max(0, Math.floor(Number(sec) || 0));\n"
    "    const d = Math.floor(sec / 86400), h = Math.floor(sec / 3600) % 24;\n"
    "    const m = Math.floor(sec / 60) % 60, s = sec % 60;\n"
    "    const parts = [];\n"
    "    if (d) parts.push(t('days', d));\n"
    "    if (d || h) parts.push(t('hours', h));\n"
    "    if (!d) parts.push(t('minutes', m));\n"
    "    if (!d && !h) parts.push(t('seconds', s));\n"
    "    return parts.join(' ');\n"
    "  }\n"
    "\n"
    "  /* \"Name <address>\", or the address alone. */\n"
    "  function fmtAddr(a) {\n"
    "    if (!a) return '';\n"
    "    if (a.Name && a.Address) return a.Name + ' <' + a.Address + '>';\n"
    "    return a.Name || a.Address || '';\n"
    "  }\n"
    "\n"
    "  function fmtAddrs(list) {\n"
    "    return (list || []).map(fmtAddr).filter(Boolean).join(', ');\n"
    "  }\n"
    "\n"
    "  /* A translated word for a value the server sends (a state, a policy), or the value itself. */\n"
    "  function word(prefix, value) {\n"
    "    const key = prefix + String(value || '').toLowerCase();\n"
    "    return (DICT[LANG][key] !== undefined || DICT.en[key] !== undefined) \? t(key) : String(value || '');\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- 3. the API */\n"
    "\n"
    "  function showError(text) { $('error').textContent = text; }\n"
    "  function clearError() { $('error').textContent = ''; }\n"
    "\n"
    "  /* api('GET', '/api/v1/messages'): the parsed JSON (or the text) of the answer. On failure the\n"
    "   * error is shown in #error and the promise rejects (callers that need not react use quiet()). */\n"
    "  async function api(method, path, body) {\n"
    "    const opts = { method, headers: {}, credentials: 'same-origin', cache: 'no-store' };\n"
    "    if (method !== 'GET') {\n"
    "      opts.headers['X-Requested-With'] = 'mailsrv';\n"
    "      opts.headers['Content-Type'] = 'application/json';\n"
    "      if (body !== undefined) opts.body = JSON.stringify(body);\n"
    "    }\n"
    "    let res;\n"
    "    try {\n"
    "      res = await fetch(path, opts);\n"
    "    } catch (e) {\n"
    "      throw fail(t('netError', e.message || e));\n"
    "    }\n"
    "    const text = await res.text().catch(() => '');\n"
    "    if (res.status === 401) throw fail(t('login'));\n"
    "    if (!res.ok) throw fail(t('httpError', res.status, text.trim().slice(0, 300) || res.statusText));\n"
    "    clearError();\n"
    "    const type = res.headers.get('Content-Type') || '';\n"
    "    if (!type.includes('json')) return text;\n"
    "    try {\n"
    "      return JSON.parse(text);\n"
    "    } catch (e) {\n"
    "      throw fail(t('badJson'));\n"
    "    }\n"
    "  }\n"
    "\n"
    "  function fail(message) {\n"
    "    showError(message);\n"
    "    const err = new Error(message);\n"
    "    err.shown = true;\n"
    "    return err;\n"
    "  }\n"
    "\n"
    "  /* For calls whose failure is already shown in #error and needs nothing more. */\n"
    "  function quiet(promise) {\n"
    "    return promise.catch((e) => { if (!e || !e.shown) console.error(e); });\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- state */\n"
    "\n"
    "  const PAGE = 50;\n"
    "  let newSince = 0; // \"new\" events since the list was last fetched (see loadList)\n"
    "\n"
    "  const app = {\n"
    "    me: { User: '', Admin: false, Capture: false, Mailboxes: [] },\n"
    "    view: '',            // 'list', 'message', 'queue', 'lists' or 'status'\n"
    "    ready: false,        // has the first view been rendered\?\n"
    "    list: newList(null, null, '#/'),\n"
    "    msg: null,           // the open message (GET /api/v1/message/ID)\n"
    "    msgId: '',           // the ID asked for (set before the answer arrives)\n"
    "    tab: 'text',\n"
    "    remote: false,       // remote images shown for the open message\n",
    "    loaded: {},          // tabs fetched on demand for the open message: headers, raw\n"
    "  };\n"
    "\n"
    "  /* The list shown (or last shown): its filter, the messages loaded and the selection. */\n"
    "  function newList(mailbox, query, hash) {\n"
    "    return {\n"
    "      key: JSON.stringify([mailbox, query]),\n"
    "      mailbox, query, hash,\n"
    "      messages: [],\n"
    "      total: 0,            // matches in all, not only those loaded\n"
    "      unread: 0,\n"
    "      loaded: false,\n"
    "      loading: false,\n"
    "      seq: 0,              // loads begun (loadList drops an answer older than the last)\n"
    "      selected: new Set(), // IDs\n"
    "      cur: '',             // ID of the current row (j/k)\n"
    "      rows: new Map(),     // ID -> row element\n"
    "      scrollY: 0,\n"
    "    };\n"
    "  }\n"
    "\n"
    "  function markReady() {\n"
    "    if (app.ready) return;\n"
    "    app.ready = true;\n"
    "    document.body.dataset.ready = '1';\n"
    "    try { performance.mark('mailsrv-first-render'); } catch (e) { /* old browser */ }\n"
    "  }\n"
    "\n"
    "  function isAdmin() { return !!(app.me.Admin || app.me.Capture); }\n"
    "\n"
    "  function updateTitle() {\n"
    "    const n = app.list.unread;\n"
    "    document.title = n > 0 \? '(' + n + ') mailsrv' : 'mailsrv';\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- 4. routing */\n"
    "\n"
    "  const VIEWS = ['list', 'message', 'queue', 'lists', 'status'];\n"
    "\n"
    "  function showView(name) {\n"
    "    if (app.view === 'list' && name !== 'list') app.list.scrollY = window.scrollY;\n"
    "    if (app.view === 'message' && name !== 'message') leaveMessage();\n"
    "    app.view = name;\n"
    "    for (const v of VIEWS) $('view-' + v).hidden = v !== name;\n"
    "  }\n"
    "\n"
    "  function route() {\n"
    "    const hash = location.hash || '#/';\n"
    "    const path = hash.replace(/^#\\/\?/, '');\n"
    "    const slash = path.indexOf('/');\n"
    "    const kind = slash < 0 \? path : path.slice(0, slash);\n"
    "    let arg = slash < 0 \? '' : path.slice(slash + 1);\n"
    "    try { arg = decodeURIComponent(arg); } catch (e) { /* keep it as it is */ }\n"
    "\n"
    "    $('search').value = kind === 'search' \? arg : '';\n"
    "    if (kind === 'mailbox' && arg) showList(arg, null, hash);\n"
    "    else if (kind === 'search' && arg.trim()) showList(null, arg, hash);\n"
    "    else if (kind === 'message' && arg) showMessage(arg);\n"
    "    else if (kind === 'queue') showQueue();\n"
    "    else if (kind === 'lists') showLists();\n"
    "    else if (kind === 'status') showStatus();\n"
    "    else showList(null, null, '#/');\n"
    "    markNav(kind === 'mailbox' \? arg : kind === '' \? '' : null, kind);\n"
    "  }\n"
    "\n"
    "  /* aria-current on the nav link of the view shown. */\n"
    "  function markNav(mailbox, kind) {\n"
    "    for (const a of $('nav').querySelectorAll('a')) {\n"
    "      const on = (a.dataset.all !== undefined && mailbox === '') ||\n"
    "        (a.dataset.mailbox !== undefined && a.dataset.mailbox === mailbox) ||\n"
    "        (a.id === 'nav-' + kind);\n"
    "      if (on) a.setAttribute('aria-current', 'page');\n"
    "      else a.removeAttribute('aria-current');\n"
    "    }\n"
    "  }\n"
    "\n"
    "  function go(hash) {\n"
    "    if (location.hash === hash) route();\n"
    "    else location.hash = hash;\n"
    "  }\n"
    "\n"
    "  function messageHash(id) { return '#/message/' + enc(id); }\n"
    "\n"
    "  /* ---------------------------------------------------------------- nav: mailboxes */\n"
    "\n"
    "  async function loadMailboxes() {\n"
    "    const me = await api('GET', '/api/v1/mailboxes');\n"
    "    app.me = {\n"
    "      User: me.User || '',\n"
    "      Admin: !!me.Admin,\n"
    "      Capture: !!me.Capture,\n"
    "      Mailboxes: Array.isArray(me.Mailboxes) \? me.Mailboxes : [],\n"
    "    };\n"
    "    renderNav();\n"
    "  }\n"
    "\n"
    "  function renderNav() {\n"
    "    const me = app.me;\n"
    "    $('user').textContent = me.User || (me.Capture \? t('captureMode') : '');\n"
    "    const allLabel = (!me.Capture && me.Mailboxes.length <= 1) \? t('inbox') : t('allMail');\n"
    "    const items = [el('li', null, el('a', { href: '#/', 'data-all': '' }, el('span', { class: 'name' }, allLabel)))];\n"
    "    for (const mb of me.Mailboxes) {\n"
    "      const unread = Number(mb.Unread) || 0, total = Number(mb.Total) || 0;\n"
    "      items.push(el('li', null,\n"
    "        el('a', { href: '#/mailbox/' + enc(mb.Address), 'data-mailbox': mb.Address },\n"
    "          el('span', { class: 'name' }, mb.Address),\n"
    "          el('span', {\n",
    "            class: unread \? 'count has-unread' : 'count',\n"
    "            title: t('mailboxCount', unread, total),\n"
    "          }, unread \? unread + ' / ' + total : String(total)))));\n"
    "    }\n"
    "    fill('mailboxes', items);\n"
    "    const admin = isAdmin();\n"
    "    $('nav-admin').hidden = !admin;\n"
    "    for (const id of ['nav-queue', 'nav-lists', 'nav-status']) $(id).hidden = !admin;\n"
    "    const h = location.hash.replace(/^#\\/\?/, '');\n"
    "    const kind = h.split('/')[0];\n"
    "    let arg = h.slice(kind.length + 1);\n"
    "    try { arg = decodeURIComponent(arg); } catch (e) { /* as it is */ }\n"
    "    markNav(kind === 'mailbox' \? arg : kind === '' \? '' : null, kind);\n"
    "    if (app.list.key === JSON.stringify([null, null])) $('list-title').textContent = allLabel;\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- 5a. the message list */\n"
    "\n"
    "  function listUrl(start, limit) {\n"
    "    const L = app.list;\n"
    "    const p = new URLSearchParams();\n"
    "    if (L.query !== null) p.set('query', L.query);\n"
    "    p.set('start', String(start));\n"
    "    p.set('limit', String(limit));\n"
    "    if (L.mailbox) p.set('mailbox', L.mailbox);\n"
    "    return (L.query !== null \? '/api/v1/search\?' : '/api/v1/messages\?') + p.toString();\n"
    "  }\n"
    "\n"
    "  function showList(mailbox, query, hash) {\n"
    "    const key = JSON.stringify([mailbox, query]);\n"
    "    showView('list');\n"
    "    const L0 = app.list;\n"
    "    if (L0.key !== key) {\n"
    "      app.list = newList(mailbox, query, hash);\n"
    "      $('list-title').textContent = query !== null \? t('searchResults', query)\n"
    "        : mailbox \? mailbox\n"
    "        : (!app.me.Capture && app.me.Mailboxes.length <= 1) \? t('inbox') : t('allMail');\n"
    "      renderList();\n"
    "      quiet(loadList(false));\n"
    "    } else {\n"
    "      app.list.hash = hash;\n"
    "      renderList();\n"
    "      window.scrollTo(0, app.list.scrollY);\n"
    "      const row = app.list.rows.get(app.list.cur);\n"
    "      if (row) row.scrollIntoView({ block: 'nearest' });\n"
    "      quiet(loadList(false)); // the same list again: show it at once, then bring it up to date\n"
    "    }\n"
    "  }\n"
    "\n"
    "  /* Fetches the first page (or, on refresh, as many as are loaded), or with more the next page.\n"
    "   * Each load has a number: an answer that comes after a newer load began is dropped, so a slow\n"
    "   * refresh cannot overwrite a \"Load more\" or a later refresh. */\n"
    "  async function loadList(more) {\n"
    "    const L = app.list;\n"
    "    const seq = ++L.seq;\n"
    "    const start = more \? L.messages.length : 0;\n"
    "    // a refresh asks for as many as are shown, plus those that arrived since (so none drop off),\n"
    "    // in pages of at most 1,000 (the API's limit)\n"
    "    let want = more \? PAGE : Math.max(PAGE, L.messages.length + newSince);\n"
    "    if (!more) newSince = 0;\n"
    "    L.loading = true;\n"
    "    updateMore();\n"
    "    let r, got = [];\n"
    "    try {\n"
    "      for (let at = start; want > 0; ) {\n"
    "        const n = Math.min(1000, want);\n"
    "        r = await api('GET', listUrl(at, n));\n"
    "        const page = Array.isArray(r.messages) \? r.messages : [];\n"
    "        got = got.concat(page);\n"
    "        if (page.length < n) break;\n"
    "        at += n;\n"
    "        want -= n;\n"
    "      }\n"
    "    } finally {\n"
    "      if (L.seq === seq) L.loading = false;\n"
    "      if (app.list === L) updateMore();\n"
    "    }\n"
    "    if (app.list !== L || L.seq !== seq) return; // another list was opened, or a newer load began\n"
    "    if (more) {\n"
    "      const have = new Set(L.messages.map((m) => m.ID));\n"
    "      for (const m of got) if (!have.has(m.ID)) L.messages.push(m);\n"
    "    } else {\n"
    "      L.messages = got;\n"
    "    }\n"
    "    L.total = Number(r.messages_count !== undefined \? r.messages_count : r.total) || 0;\n"
    "    L.unread = Number(r.messages_unread !== undefined \? r.messages_unread : r.unread) || 0;\n"
    "    L.loaded = true;\n"
    "    const ids = new Set(L.messages.map((m) => m.ID));\n"
    "    for (const id of L.selected) if (!ids.has(id)) L.selected.delete(id);\n"
    "    const y = window.scrollY;\n"
    "    renderList();\n"
    "    if (app.view === 'list') window.scrollTo(0, y);\n"
    "    markReady();\n"
    "  }\n"
    "\n"
    "  function renderList() {\n"
    "    const L = app.list;\n"
    "    L.rows = new Map();\n"
    "    const rows = L.messages.map((m) => {\n"
    "      const row = renderRow(m);\n",
    "      L.rows.set(m.ID, row);\n"
    "      return row;\n"
    "    });\n"
    "    fill('list', rows);\n"
    "    $('empty').hidden = !(L.loaded && L.messages.length === 0);\n"
    "    $('list-count').textContent = L.loaded && L.total\n"
    "      \? t('countOf', L.messages.length.toLocaleString(LANG), L.total.toLocaleString(LANG)) : '';\n"
    "    updateMore();\n"
    "    updateToolbar();\n"
    "    updateTitle();\n"
    "    highlight(false);\n"
    "  }\n"
    "\n"
    "  function renderRow(m) {\n"
    "    const L = app.list;\n"
    "    const subject = m.Subject || t('noSubject');\n"
    "    const from = m.From \? (m.From.Name || m.From.Address || '') : '';\n"
    "    const box = el('input', {\n"
    "      type: 'checkbox',\n"
    "      'aria-label': t('selectMessage', subject),\n"
    "      checked: L.selected.has(m.ID),\n"
    "    });\n"
    "    box.addEventListener('change', () => {\n"
    "      if (box.checked) L.selected.add(m.ID); else L.selected.delete(m.ID);\n"
    "      updateToolbar();\n"
    "    });\n"
    "    return el('div', {\n"
    "      class: m.Read \? 'msg' : 'msg unread',\n"
    "      'data-id': m.ID,\n"
    "      role: 'row',\n"
    "      'aria-selected': 'false',\n"
    "    },\n"
    "    el('div', { class: 'sel', role: 'gridcell' }, box),\n"
    "    el('div', { class: 'mark', role: 'gridcell' },\n"
    "      m.Read \? null : [el('span', { 'aria-hidden': 'true' }, '\342\227\217'), el('span', { class: 'vh' }, t('unread'))]),\n"
    "    el('div', { class: 'from', role: 'gridcell', title: m.From \? m.From.Address || '' : '' }, from),\n"
    "    el('div', { class: 'subject', role: 'gridcell' }, el('a', { href: messageHash(m.ID) }, subject)),\n"
    "    el('div', { class: 'snippet', role: 'gridcell' }, m.Snippet || ''),\n"
    "    el('div', { class: 'attcell', role: 'gridcell' },\n"
    "      m.Attachments > 0 \? el('span', { class: 'att', role: 'img', 'aria-label': t('hasAttachments'), title: t('hasAttachments') }) : null),\n"
    "    el('div', { class: 'date', role: 'gridcell' }, el('time', { datetime: m.Created || '' }, fmtDate(m.Created))),\n"
    "    el('div', { class: 'size', role: 'gridcell' }, fmtSize(m.Size)));\n"
    "  }\n"
    "\n"
    "  function hasMore() { return app.list.loaded && app.list.messages.length < app.list.total; }\n"
    "\n"
    "  function updateMore() {\n"
    "    const b = $('btn-more');\n"
    "    b.hidden = !hasMore();\n"
    "    b.disabled = app.list.loading;\n"
    "  }\n"
    "\n"
    "  function updateToolbar() {\n"
    "    const L = app.list;\n"
    "    const n = L.selected.size;\n"
    "    for (const id of ['btn-read-selected', 'btn-unread-selected', 'btn-delete-selected']) $(id).disabled = n === 0;\n"
    "    $('btn-delete-all').disabled = !L.loaded || L.total === 0;\n"
    "    const all = $('sel-all');\n"
    "    all.checked = n > 0 && n === L.messages.length;\n"
    "    all.indeterminate = n > 0 && n < L.messages.length;\n"
    "    for (const [id, row] of L.rows) {\n"
    "      const on = L.selected.has(id);\n"
    "      row.classList.toggle('selected', on);\n"
    "      row.querySelector('input').checked = on;\n"
    "    }\n"
    "  }\n"
    "\n"
    "  /* Marks the current row (class \"current\", aria-selected); scroll brings it into view. */\n"
    "  function highlight(scroll) {\n"
    "    const L = app.list;\n"
    "    for (const [id, row] of L.rows) {\n"
    "      const on = id === L.cur;\n"
    "      row.classList.toggle('current', on);\n"
    "      row.setAttribute('aria-selected', on \? 'true' : 'false');\n"
    "      if (on && scroll) row.scrollIntoView({ block: 'nearest' });\n"
    "    }\n"
    "  }\n"
    "\n"
    "  /* Read or unread in the list's copy, the row, the unread count and the title. */\n"
    "  function setReadLocal(id, read) {\n"
    "    const L = app.list;\n"
    "    const m = L.messages.find((x) => x.ID === id);\n"
    "    if (m && !!m.Read !== read) {\n"
    "      m.Read = read;\n"
    "      L.unread = Math.max(0, L.unread + (read \? -1 : 1));\n"
    "      const old = L.rows.get(id);\n"
    "      if (old) {\n"
    "        const row = renderRow(m);\n"
    "        old.replaceWith(row);\n"
    "        L.rows.set(id, row);\n"
    "        highlight(false);\n"
    "        updateToolbar();\n"
    "      }\n"
    "    }\n"
    "    if (app.msg && app.msg.ID === id) app.msg.Read = read;\n"
    "    updateTitle();\n"
    "  }\n"
    "\n"
    "  /* Drops messages from the list's copy (deleted here or by someone else), then draws the list\n"
    "   * once (a render per message made deleting 1,000 selected ones take minutes). */\n"
    "  function removeLocal(ids) {\n"
    "    const L = app.list;\n"
    "    const gone = new Set(ids);\n"
    "    const i = L.messages.findIndex((m) => gone.has(m.ID));\n",
    "    if (i < 0) return;\n"
    "    if (gone.has(L.cur)) {\n"
    "      const next = L.messages.slice(L.messages.findIndex((m) => m.ID === L.cur)).find((m) => !gone.has(m.ID)) ||\n"
    "        L.messages.slice(0, i).reverse().find((m) => !gone.has(m.ID));\n"
    "      L.cur = next \? next.ID : '';\n"
    "    }\n"
    "    const kept = [];\n"
    "    for (const m of L.messages) {\n"
    "      if (!gone.has(m.ID)) { kept.push(m); continue; }\n"
    "      if (!m.Read) L.unread = Math.max(0, L.unread - 1);\n"
    "      L.total = Math.max(0, L.total - 1);\n"
    "      L.selected.delete(m.ID);\n"
    "    }\n"
    "    L.messages = kept;\n"
    "    renderList();\n"
    "  }\n"
    "\n"
    "  /* The message after id in the list (or before it, at the end). */\n"
    "  function neighbour(id) {\n"
    "    const list = app.list.messages;\n"
    "    const i = list.findIndex((m) => m.ID === id);\n"
    "    if (i < 0) return '';\n"
    "    return (list[i + 1] || list[i - 1] || {}).ID || '';\n"
    "  }\n"
    "\n"
    "  async function bulk(action) {\n"
    "    const L = app.list;\n"
    "    const ids = [...L.selected];\n"
    "    if (!ids.length) return;\n"
    "    if (action === 'delete') {\n"
    "      await api('DELETE', '/api/v1/messages', { IDs: ids });\n"
    "      removeLocal(ids);\n"
    "      quiet(loadList(false));\n"
    "    } else {\n"
    "      const read = action === 'read';\n"
    "      await api('PUT', '/api/v1/messages', { IDs: ids, Read: read });\n"
    "      for (const id of ids) setReadLocal(id, read);\n"
    "    }\n"
    "    L.selected.clear();\n"
    "    updateToolbar();\n"
    "    refreshNavSoon();\n"
    "  }\n"
    "\n"
    "  async function deleteAll() {\n"
    "    const L = app.list;\n"
    "    if (!confirm(t('confirmDeleteAll', L.total.toLocaleString(LANG)))) return;\n"
    "    // what the list shows: a search's matches or all messages, of one mailbox (\?mailbox=) or all\n"
    "    const p = new URLSearchParams();\n"
    "    if (L.query !== null) p.set('query', L.query);\n"
    "    if (L.mailbox) p.set('mailbox', L.mailbox);\n"
    "    await api('DELETE', (L.query !== null \? '/api/v1/search\?' : '/api/v1/messages\?') + p.toString(),\n"
    "      L.query !== null \? undefined : {});\n"
    "    L.selected.clear();\n"
    "    L.cur = '';\n"
    "    await loadList(false);\n"
    "    refreshNavSoon();\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- 5b. one message */\n"
    "\n"
    "  const frame = () => $('msg-html');\n"
    "\n"
    "  function leaveMessage() {\n"
    "    frame().src = 'about:blank';\n"
    "    app.msg = null;\n"
    "    app.msgId = '';\n"
    "  }\n"
    "\n"
    "  /* The list is needed for j/k and \"delete, then the next one\" even on a direct link. */\n"
    "  function ensureList() {\n"
    "    if (!app.list.loaded && !app.list.loading) quiet(loadList(false));\n"
    "  }\n"
    "\n"
    "  async function showMessage(id) {\n"
    "    showView('message');\n"
    "    window.scrollTo(0, 0);\n"
    "    ensureList();\n"
    "    app.msgId = id;\n"
    "    app.msg = null;\n"
    "    app.list.cur = id;\n"
    "    highlight(false);\n"
    "    app.remote = false;\n"
    "    app.loaded = {};\n"
    "    $('msg-subject').textContent = t('loading');\n"
    "    for (const f of ['msg-from', 'msg-to', 'msg-cc', 'msg-date', 'msg-text', 'msg-raw', 'msg-status'])\n"
    "      $(f).textContent = '';\n"
    "    fill('msg-headers');\n"
    "    fill('msg-attachments');\n"
    "    $('msg-attachments-box').hidden = true;\n"
    "    frame().src = 'about:blank';\n"
    "\n"
    "    const m = await api('GET', '/api/v1/message/' + enc(id)).catch(() => null);\n"
    "    if (app.msgId !== id || app.view !== 'message') return; // the user went elsewhere meanwhile\n"
    "    if (!m) { $('msg-subject').textContent = ''; markReady(); return; }\n"
    "    app.msg = m;\n"
    "    renderMessage(m);\n"
    "    markReady();\n"
    "    if (!m.Read) {\n"
    "      quiet(api('PUT', '/api/v1/messages', { IDs: [id], Read: true }).then(() => {\n"
    "        setReadLocal(id, true);\n"
    "        refreshNavSoon();\n"
    "      }));\n"
    "    }\n"
    "  }\n"
    "\n"
    "  function renderMessage(m) {\n"
    "    $('msg-subject').textContent = m.Subject || t('noSubject');\n"
    "    $('msg-from').textContent = fmtAddr(m.From);\n"
    "    $('msg-to').textContent = fmtAddrs(m.To);\n"
    "    const cc = fmtAddrs(m.Cc);\n"
    "    $('msg-cc').textContent = cc;\n"
    "    $('msg-cc').hidden = $('msg-cc-label').hidden = !cc;\n"
    "    $('msg-date').textContent = fmtDate(m.Date || m.Created, true);\n"
    "    $('msg-text').textContent = m.Text || t('noText');\n"
    "\n"
    "    const atts = Array.isArray(m.Attachments) \? m.Attachments : [];\n"
    "    fill('msg-attachments', atts.map((a) => {\n",
    "      const name = a.FileName || t('attachment', a.PartID);\n"
    "      return el('li', null,\n"
    "        el('a', {\n"
    "          href: '/api/v1/message/' + enc(m.ID) + '/part/' + enc(a.PartID),\n"
    "          download: name,\n"
    "        }, name),\n"
    "        el('span', { class: 'size' }, fmtSize(a.Size)));\n"
    "    }));\n"
    "    $('msg-attachments-box').hidden = atts.length === 0;\n"
    "\n"
    "    const hasHtml = !!(m.HTML && String(m.HTML).trim());\n"
    "    $('tab-html').hidden = !hasHtml;\n"
    "    $('btn-remote').disabled = false;\n"
    "    selectTab(hasHtml \? 'html' : 'text');\n"
    "  }\n"
    "\n"
    "  function htmlUrl() {\n"
    "    return '/view/' + enc(app.msgId) + '.html' + (app.remote \? '\?remote=1' : '');\n"
    "  }\n"
    "\n"
    "  function selectTab(name) {\n"
    "    app.tab = name;\n"
    "    for (const b of document.querySelectorAll('[data-tab]')) {\n"
    "      const on = b.dataset.tab === name;\n"
    "      b.setAttribute('aria-selected', on \? 'true' : 'false');\n"
    "      b.tabIndex = on \? 0 : -1;\n"
    "    }\n"
    "    for (const p of ['html', 'text', 'headers', 'raw']) $('panel-' + p).hidden = p !== name;\n"
    "    const id = app.msgId;\n"
    "    if (!id) return;\n"
    "    if (name === 'html') {\n"
    "      const url = htmlUrl();\n"
    "      if (frame().getAttribute('src') !== url) frame().src = url;\n"
    "      else fitFrame();\n"
    "    } else if (name === 'headers' && !app.loaded.headers) {\n"
    "      app.loaded.headers = true;\n"
    "      api('GET', '/api/v1/message/' + enc(id) + '/headers').then((h) => {\n"
    "        if (app.msgId === id) renderHeaders(h);\n"
    "      }).catch(() => { app.loaded.headers = false; });\n"
    "    } else if (name === 'raw' && !app.loaded.raw) {\n"
    "      app.loaded.raw = true;\n"
    "      $('msg-raw').textContent = t('loading');\n"
    "      api('GET', '/api/v1/message/' + enc(id) + '/raw').then((text) => {\n"
    "        if (app.msgId === id) $('msg-raw').textContent = typeof text === 'string' \? text : JSON.stringify(text);\n"
    "      }).catch(() => { app.loaded.raw = false; $('msg-raw').textContent = ''; });\n"
    "    }\n"
    "  }\n"
    "\n"
    "  function renderHeaders(h) {\n"
    "    const rows = [];\n"
    "    for (const [name, values] of Object.entries(h || {})) {\n"
    "      for (const v of (Array.isArray(values) \? values : [values]))\n"
    "        rows.push(el('tr', null, el('th', { scope: 'row' }, name), el('td', null, String(v))));\n"
    "    }\n"
    "    fill('msg-headers', el('tbody', null, rows));\n"
    "  }\n"
    "\n"
    "  /* The iframe as tall as its document (allow-same-origin lets us read it; scripts stay off). */\n"
    "  function fitFrame() {\n"
    "    try {\n"
    "      const doc = frame().contentDocument;\n"
    "      if (!doc || !doc.documentElement || $('panel-html').hidden) return;\n"
    "      const h = Math.max(doc.documentElement.scrollHeight, doc.body \? doc.body.scrollHeight : 0);\n"
    "      frame().style.height = Math.max(60, Math.min(h + 20, 100000)) + 'px';\n"
    "    } catch (e) {\n"
    "      /* not readable: keep the height from the style sheet */\n"
    "    }\n"
    "  }\n"
    "\n"
    "  async function deleteOpen() {\n"
    "    const id = app.msgId;\n"
    "    if (!id) return;\n"
    "    const next = neighbour(id);\n"
    "    await api('DELETE', '/api/v1/messages', { IDs: [id] });\n"
    "    removeLocal([id]);\n"
    "    refreshNavSoon();\n"
    "    if (next) location.replace(messageHash(next));\n"
    "    else go(app.list.hash);\n"
    "  }\n"
    "\n"
    "  async function markUnreadOpen() {\n"
    "    const id = app.msgId;\n"
    "    if (!id) return;\n"
    "    await api('PUT', '/api/v1/messages', { IDs: [id], Read: false });\n"
    "    setReadLocal(id, false);\n"
    "    $('msg-status').textContent = t('markedUnread');\n"
    "    refreshNavSoon();\n"
    "  }\n"
    "\n"
    "  async function release(ev) {\n"
    "    ev.preventDefault();\n"
    "    const id = app.msgId;\n"
    "    const input = $('release-to');\n"
    "    const to = input.value.trim();\n"
    "    if (!id || !to) return;\n"
    "    const button = $('release-form').querySelector('button');\n"
    "    button.disabled = true;\n"
    "    $('msg-status').textContent = t('forwarding');\n"
    "    try {\n"
    "      await api('POST', '/api/v1/message/' + enc(id) + '/release', { To: [to] });\n"
    "      $('msg-status').textContent = t('forwarded', to);\n"
    "      input.value = '';\n"
    "    } catch (e) {\n"
    "      $('msg-status').textContent = e.message;\n"
    "    } finally {\n"
    "      button.disabled = false;\n"
    "    }\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- 5c. admin pages */\n"
    "\n",
    "  /* A table: head is a list of column titles; rows a list of lists of cells (strings or nodes).\n"
    "   * On phones the cells stack, each labelled with its column title (class \"stack\"). */\n"
    "  function table(head, rows, extra) {\n"
    "    return el('div', { class: 'table-wrap' },\n"
    "      el('table', { class: 'table stack' + (extra \? ' ' + extra : '') },\n"
    "        el('thead', null, el('tr', null, head.map((h) => el('th', { scope: 'col' }, h)))),\n"
    "        el('tbody', null, rows.map((cells) => {\n"
    "          const tr = el('tr', cells.rowClass \? { class: cells.rowClass } : null);\n"
    "          cells.forEach((c, i) => tr.appendChild(\n"
    "            el('td', { 'data-label': head[i], class: cells.numeric && cells.numeric.includes(i) \? 'num' : null }, c)));\n"
    "          return tr;\n"
    "        }))));\n"
    "  }\n"
    "\n"
    "  /* No event announces the end of a relay attempt: while one is going on, the view looks again\n"
    "   * each second, so \"being relayed now\" does not stay on the screen after it is over. */\n"
    "  let queueTimer = 0;\n"
    "  const QUEUE_SHOWN = 100; // the first ones of the queue; the rest counted below them\n"
    "\n"
    "  async function showQueue() {\n"
    "    clearTimeout(queueTimer);\n"
    "    showView('queue');\n"
    "    const r = await api('GET', '/api/v1/queue\?limit=' + QUEUE_SHOWN).catch(() => null);\n"
    "    markReady();\n"
    "    if (!r || app.view !== 'queue') return;\n"
    "    const entries = Array.isArray(r.Entries) \? r.Entries : [];\n"
    "    if (!entries.length) { fill('queue-body', el('p', { class: 'empty' }, t('queueEmpty'))); return; }\n"
    "    const rows = entries.map((q) => {\n"
    "      const rcpts = el('ul', { class: 'rcpts' }, (q.Recipients || []).map((rc) =>\n"
    "        el('li', null,\n"
    "          rc.Address || '', ' ',\n"
    "          el('span', { class: 'state-' + String(rc.State || '').toLowerCase().replace(/[^a-z]/g, '') },\n"
    "            '(' + word('st_', rc.State) + ')'),\n"
    "          rc.Error \? el('div', { class: 'small' }, rc.Error) : null)));\n"
    "      const cells = [\n"
    "        el('code', null, q.ID || ''),\n"
    "        q.From || '<>',\n"
    "        fmtDate(q.Arrived, true),\n"
    "        fmtSize(q.Size),\n"
    "        String(q.Tries || 0),\n"
    "        [Date.parse(q.NextTry) <= Date.now() \? t('qNow') : fmtDate(q.NextTry, true),\n"
    "          q.Active \? el('div', { class: 'small' }, t('qActive')) : null],\n"
    "        rcpts,\n"
    "        el('button', { type: 'button', class: 'q-delete danger', 'data-id': q.ID || '' }, t('removeFromQueue')),\n"
    "      ];\n"
    "      cells.numeric = [3, 4];\n"
    "      if (q.Active) cells.rowClass = 'active';\n"
    "      return cells;\n"
    "    });\n"
    "    const more = (r.Total || 0) - entries.length;\n"
    "    fill('queue-body', table([t('qId'), t('qFrom'), t('qArrived'), t('qSize'), t('qTries'), t('qNext'),\n"
    "      t('qRcpts'), t('qActions')], rows), more > 0 \? el('p', { class: 'small' }, t('queueMore', more)) : null);\n"
    "    if (entries.some((q) => q.Active))\n"
    "      queueTimer = setTimeout(() => { if (app.view === 'queue') quiet(showQueue()); }, 1000);\n"
    "  }\n"
    "\n"
    "  async function deleteQueued(id) {\n"
    "    if (!confirm(t('confirmQueueDelete', id))) return;\n"
    "    await api('DELETE', '/api/v1/queue/' + enc(id));\n"
    "    await showQueue();\n"
    "  }\n"
    "\n"
    "  async function flushQueue() {\n"
    "    const r = await api('POST', '/api/v1/queue/flush');\n"
    "    $('queue-status').textContent = t('flushed', r && r.Flushed !== undefined \? r.Flushed : 0);\n"
    "    await showQueue();\n"
    "  }\n"
    "\n"
    "  /* \"time, IP, message id\" of a subscription step, one per line. */\n"
    "  function step(s) {\n"
    "    if (!s || !s.Time) return t('none');\n"
    "    return [fmtDate(s.Time, true), s.IP \? el('div', { class: 'small' }, s.IP) : null,\n"
    "      s.MessageID \? el('div', { class: 'small' }, s.MessageID) : null];\n"
    "  }\n"
    "\n"
    "  async function showLists() {\n"
    "    showView('lists');\n"
    "    const r = await api('GET', '/api/v1/lists').catch(() => null);\n"
    "    markReady();\n"
    "    if (!r || app.view !== 'lists') return;\n"
    "    const lists = Array.isArray(r.Lists) \? r.Lists : [];\n"
    "    if (!lists.length) { fill('lists-body', el('p', { class: 'empty' }, t('listsEmpty'))); return; }\n"
    "    fill('lists-body', lists.map((l) => {\n"
    "      const members = Array.isArray(l.Members) \? l.Members : [];\n",
    "      const pending = Array.isArray(l.Pending) \? l.Pending : [];\n"
    "      return el('section', { class: 'card list-card' },\n"
    "        el('h3', null, l.Address || ''),\n"
    "        el('dl', { class: 'facts' },\n"
    "          el('dt', null, t('owner')), el('dd', null, l.Owner || t('none')),\n"
    "          el('dt', null, t('post')), el('dd', null, word('post_', l.Post)),\n"
    "          el('dt', null, t('posts')), el('dd', null, String(l.Posts || 0))),\n"
    "        el('h4', null, t('members', members.length)),\n"
    "        members.length\n"
    "          \? table([t('address'), t('requested'), t('confirmed'), t('bounces')],\n"
    "            members.map((mb) => {\n"
    "              const cells = [mb.Address || '', step(mb.Requested), step(mb.Confirmed), String(mb.Bounces || 0)];\n"
    "              cells.numeric = [3];\n"
    "              return cells;\n"
    "            }), 'members')\n"
    "          : el('p', { class: 'muted' }, t('noMembers')),\n"
    "        el('h4', null, t('pending', pending.length)),\n"
    "        pending.length\n"
    "          \? table([t('address'), t('request'), t('time'), 'IP'],\n"
    "            pending.map((p) => [p.Address || '', word('kind_', p.Kind), fmtDate(p.Time, true), p.IP || '']), 'pending')\n"
    "          : el('p', { class: 'muted' }, t('noPending')));\n"
    "    }));\n"
    "  }\n"
    "\n"
    "  async function showStatus() {\n"
    "    showView('status');\n"
    "    const s = await api('GET', '/api/v1/status').catch(() => null);\n"
    "    markReady();\n"
    "    if (!s || app.view !== 'status') return;\n"
    "    const sessions = Object.entries(s.Sessions || {}).map(([p, n]) => p + ': ' + n).join(', ');\n"
    "    const listeners = Array.isArray(s.Listeners) \? s.Listeners : [];\n"
    "    fill('status-body',\n"
    "      el('dl', { class: 'facts' },\n"
    "        el('dt', null, t('version')), el('dd', null, s.Version || ''),\n"
    "        el('dt', null, t('uptime')), el('dd', null, fmtUptime(s.Uptime)),\n"
    "        el('dt', null, t('sessions')), el('dd', null, sessions || '0'),\n"
    "        el('dt', null, t('messagesToday')), el('dd', null, String(s.MessagesToday || 0)),\n"
    "        el('dt', null, t('queueLength')), el('dd', null, String(s.Queue || 0))),\n"
    "      el('h3', null, t('listeners')),\n"
    "      table([t('protocol'), t('address'), t('tls')],\n"
    "        listeners.map((l) => [l.Protocol || '', l.Address || '', word('tls_', l.TLS)]), 'listeners'));\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- 6. live updates */\n"
    "\n"
    "  let refreshTimer = 0;\n"
    "  let navTimer = 0;\n"
    "\n"
    "  /* Many events in a row (a burst of mail) make one refresh, 300 ms after the first: a timer\n"
    "   * that each event restarted would never fire while mail keeps coming. */\n"
    "  function refreshSoon() {\n"
    "    if (refreshTimer) return;\n"
    "    refreshTimer = setTimeout(() => {\n"
    "      refreshTimer = 0;\n"
    "      quiet(loadMailboxes());\n"
    "      if (app.list.loaded) quiet(loadList(false));\n"
    "      if (app.view === 'queue') quiet(showQueue());\n"
    "      if (app.view === 'status') quiet(showStatus());\n"
    "    }, 300);\n"
    "  }\n"
    "\n"
    "  function refreshNavSoon() {\n"
    "    clearTimeout(navTimer);\n"
    "    navTimer = setTimeout(() => quiet(loadMailboxes()), 300);\n"
    "  }\n"
    "\n"
    "  function onEvent(ev) {\n"
    "    let data = null;\n"
    "    try { data = JSON.parse(ev.data); } catch (e) { return; }\n"
    "    const d = (data && data.Data) || {};\n"
    "    if (ev.type === 'delete' && d.ID) removeLocal([String(d.ID)]);\n"
    "    if (ev.type === 'new') newSince++;\n"
    "    refreshSoon();\n"
    "  }\n"
    "\n"
    "  let reconnected = false;\n"
    "\n"
    "  function connectEvents() {\n"
    "    if (!window.EventSource) return;\n"
    "    const es = new EventSource('/api/v1/events');\n"
    "    es.addEventListener('new', onEvent);\n"
    "    es.addEventListener('delete', onEvent);\n"
    "    es.onerror = () => {\n"
    "      es.close();\n"
    "      setTimeout(() => { connectEvents(); reconnected = true; }, 5000);\n"
    "    };\n"
    "    es.onopen = () => { // what came while the stream was down was not announced\n"
    "      if (reconnected) refreshSoon();\n"
    "    };\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- keyboard */\n"
    "\n"
    "  function moveBy(step) {\n"
    "    const L = app.list;\n"
    "    const list = L.messages;\n"
    "    if (!list.length) return;\n",
    "    let i = list.findIndex((m) => m.ID === (app.view === 'message' \? app.msgId : L.cur));\n"
    "    if (app.view === 'message') {\n"
    "      const next = i < 0 \? null : list[i + step];\n"
    "      if (next) location.replace(messageHash(next.ID));\n"
    "      return;\n"
    "    }\n"
    "    i = i < 0 \? 0 : Math.max(0, Math.min(list.length - 1, i + step));\n"
    "    L.cur = list[i].ID;\n"
    "    highlight(true);\n"
    "    if (i === list.length - 1 && step > 0 && hasMore() && !L.loading) quiet(loadList(true));\n"
    "  }\n"
    "\n"
    "  function onKey(e) {\n"
    "    if (e.ctrlKey || e.metaKey || e.altKey) return;\n"
    "    const tg = e.target;\n"
    "    if (tg && (tg.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(tg.tagName))) {\n"
    "      if (e.key === 'Escape' && tg.id === 'search') tg.blur();\n"
    "      return;\n"
    "    }\n"
    "    const inList = app.view === 'list', inMsg = app.view === 'message';\n"
    "    const cur = inMsg \? app.msgId : app.list.cur;\n"
    "    // letters by their place on the keyboard (e.code), so that j, k and u work in a Russian layout too\n"
    "    const key = { KeyJ: 'j', KeyK: 'k', KeyU: 'u', Slash: '/' }[e.code] || e.key;\n"
    "    switch (key) {\n"
    "      case 'j': if (!inList && !inMsg) return; moveBy(1); break;\n"
    "      case 'k': if (!inList && !inMsg) return; moveBy(-1); break;\n"
    "      case 'Enter':\n"
    "        if (!inList || !cur || /^(BUTTON|A)$/.test(tg.tagName)) return;\n"
    "        go(messageHash(cur));\n"
    "        break;\n"
    "      case 'Delete':\n"
    "      case '#':\n"
    "        if (inMsg) quiet(deleteOpen());\n"
    "        else if (inList && cur) {\n"
    "          quiet(api('DELETE', '/api/v1/messages', { IDs: [cur] }).then(() => {\n"
    "            removeLocal([cur]);\n"
    "            highlight(true);\n"
    "            refreshNavSoon();\n"
    "          }));\n"
    "        } else return;\n"
    "        break;\n"
    "      case '/': $('search').focus(); $('search').select(); break;\n"
    "      case 'Escape': if (!inMsg) return; go(app.list.hash); break;\n"
    "      case 'u':\n"
    "        if (inMsg) quiet(markUnreadOpen());\n"
    "        else if (inList && cur) {\n"
    "          quiet(api('PUT', '/api/v1/messages', { IDs: [cur], Read: false }).then(() => {\n"
    "            setReadLocal(cur, false);\n"
    "            refreshNavSoon();\n"
    "          }));\n"
    "        } else return;\n"
    "        break;\n"
    "      default: return;\n"
    "    }\n"
    "    e.preventDefault();\n"
    "  }\n"
    "\n"
    "  /* ---------------------------------------------------------------- start */\n"
    "\n"
    "  /* Static text in index.html is English; data-i18n* attributes name the strings to put there. */\n"
    "  function translatePage() {\n"
    "    document.documentElement.lang = LANG;\n"
    "    for (const n of document.querySelectorAll('[data-i18n]')) n.textContent = t(n.dataset.i18n);\n"
    "    for (const n of document.querySelectorAll('[data-i18n-ph]')) n.placeholder = t(n.dataset.i18nPh);\n"
    "    for (const n of document.querySelectorAll('[data-i18n-aria]')) n.setAttribute('aria-label', t(n.dataset.i18nAria));\n"
    "    for (const n of document.querySelectorAll('[data-i18n-title]')) n.title = t(n.dataset.i18nTitle);\n"
    "  }\n"
    "\n"
    "  function wire() {\n"
    "    $('search-form').addEventListener('submit', (e) => {\n"
    "      e.preventDefault();\n"
    "      const q = $('search').value.trim();\n"
    "      go(q \? '#/search/' + enc(q) : '#/');\n"
    "    });\n"
    "\n"
    "    // the list: a click anywhere on a row opens it (the checkbox and the link do their own thing)\n"
    "    $('list').addEventListener('click', (e) => {\n"
    "      const row = e.target.closest('.msg');\n"
    "      if (!row || e.target.closest('input, a, label')) return;\n"
    "      go(messageHash(row.dataset.id));\n"
    "    });\n"
    "    $('sel-all').addEventListener('change', (e) => {\n"
    "      const L = app.list;\n"
    "      if (e.target.checked) for (const m of L.messages) L.selected.add(m.ID);\n"
    "      else L.selected.clear();\n"
    "      updateToolbar();\n"
    "    });\n"
    "    $('btn-read-selected').addEventListener('click', () => quiet(bulk('read')));\n"
    "    $('btn-unread-selected').addEventListener('click', () => quiet(bulk('unread')));\n"
    "    $('btn-delete-selected').addEventListener('click', () => quiet(bulk('delete')));\n"
    "    $('btn-delete-all').addEventListener('click', () => quiet(deleteAll()));\n"
    "    $('btn-more').addEventListener('click', () => quiet(loadList(true)));\n"
    "\n"
    "    // one message\n",
    "    $('btn-back').addEventListener('click', () => go(app.list.hash));\n"
    "    $('btn-delete').addEventListener('click', () => quiet(deleteOpen()));\n"
    "    $('btn-unread').addEventListener('click', () => quiet(markUnreadOpen()));\n"
    "    $('btn-remote').addEventListener('click', () => {\n"
    "      app.remote = true;\n"
    "      $('btn-remote').disabled = true;\n"
    "      selectTab('html');\n"
    "    });\n"
    "    for (const b of document.querySelectorAll('[data-tab]'))\n"
    "      b.addEventListener('click', () => selectTab(b.dataset.tab));\n"
    "    $('release-form').addEventListener('submit', release);\n"
    "    frame().addEventListener('load', fitFrame);\n"
    "    window.addEventListener('resize', () => { if (app.view === 'message' && app.tab === 'html') fitFrame(); });\n"
    "\n"
    "    // admin\n"
    "    $('btn-flush').addEventListener('click', () => quiet(flushQueue()));\n"
    "    $('queue-body').addEventListener('click', (e) => {\n"
    "      const b = e.target.closest('.q-delete');\n"
    "      if (b) quiet(deleteQueued(b.dataset.id));\n"
    "    });\n"
    "\n"
    "    document.addEventListener('keydown', onKey);\n"
    "    window.addEventListener('hashchange', route);\n"
    "  }\n"
    "\n"
    "  async function start() {\n"
    "    translatePage();\n"
    "    wire();\n"
    "    // the mailboxes (which views to offer) and the first list are asked for at once: each takes the\n"
    "    // server a pass over the store, and the list need not wait for the nav\n"
    "    renderNav();\n"
    "    const nav = quiet(loadMailboxes());\n"
    "    route();\n"
    "    connectEvents();\n"
    "    await nav;\n"
    "  }\n"
    "\n"
    "  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);\n"
    "  else start();\n"
    "})();\n"
};
static const unsigned short web_app_js_chunks[] = {3989, 3995, 3997, 3974, 3979, 3973, 3991, 3966, 3971, 3972, 3917, 3973, 1535, 0};
typedef char web_app_js_is_whole[sizeof web_app_js == 49245 ? 1 : -1]; /* its chunks and their NULs, no padding */
/* END web/ */

/* A file of the page: its chunks one after the other, each followed by its NUL (web/embed.py). */
struct web_file { const char *path, *type, *text; const unsigned short *chunks; };
static const struct web_file web_files[] = {
    {"/", "text/html; charset=utf-8", (const char *)&web_index_html, web_index_html_chunks},
    {"/app.css", "text/css; charset=utf-8", (const char *)&web_app_css, web_app_css_chunks},
    {"/app.js", "text/javascript; charset=utf-8", (const char *)&web_app_js, web_app_js_chunks},
};

/* GET /, /app.css, /app.js. The page may run only its own script and style and talk only to its
 * own origin (so mail shown as text can run nothing even if it slipped into the markup); no other
 * site may frame it (clickjacking); the mail's HTML is framed from /view/, sandboxed there. */
static void
http_get_page(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    size_t i, k, n = strcspn(h->req.target, "?");
    const char *p;
    for (i = 0; i < sizeof web_files / sizeof web_files[0]; i++)
        if (strlen(web_files[i].path) == n && memcmp(web_files[i].path, h->req.target, n) == 0) break;
    if (i == sizeof web_files / sizeof web_files[0]) { http_text(c, 404, "404 page not found\n"); return; }
    for (p = web_files[i].text, k = 0; web_files[i].chunks[k]; p += web_files[i].chunks[k++] + 1)
        buf_add(&h->resp, p, web_files[i].chunks[k]);
    http_answer_extra(c, 200, web_files[i].type,
                      "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                      "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'\r\n"
                      "X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n");
}

/* GET /api/v1/mailboxes (mailsrv's): who is logged in, and the mailboxes the login sees with
 * their counts, which the page lists (an admin's: every configured one; capture: every address). */
static void
http_get_mailboxes(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    struct http_job *j = h->job;
    struct buf *b = &h->resp;
    int i, k, unread;
    buf_adds(b, "{");
    json_kv(b, "", "User", h->all && c->ms->cfg->capture ? "" : h->mailbox);
    buf_printf(b, ",\"Admin\":%s,\"Capture\":%s,\"Mailboxes\":[", h->all ? "true" : "false",
               c->ms->cfg->capture ? "true" : "false");
    for (i = 0; i < j->nbox; i++) {
        for (k = unread = 0; k < j->boxes[i].v.n; k++) unread += !http_is_read(&j->boxes[i].v.msgs[k]);
        buf_adds(b, i ? ",{" : "{");
        json_kv(b, "", "Address", j->boxes[i].addr);
        buf_printf(b, ",\"Total\":%d,\"Unread\":%d}", j->boxes[i].v.n, unread);
    }
    buf_adds(b, "]}");
    http_done(c);
    http_json(c);
}

/* The pages only an admin sees (capture mode's loopback client is one: it sees every mailbox). */
static int
http_admin_only(struct conn *c)
{
    if (c->u.http.all) return 0;
    http_json_error(c, 403, "only the admins (the [server] admins key) see this");
    return -1;
}

/* GET /api/v1/status (mailsrv's): uptime, sessions, today's mail, the queue, the listeners. */
static void
http_get_status(struct conn *c)
{
    struct mailsrv *ms = c->ms;
    struct buf *b = &c->u.http.resp;
    int i, n[PROTO_N], relaying;
    if (http_admin_only(c)) return;
    ms_count_sessions(ms, n, &relaying);
    buf_printf(b, "{\"Version\":\"%s\",\"Uptime\":%lld,\"Sessions\":{\"smtp\":%d,\"submission\":%d,\"pop3\":%d,"
               "\"http\":%d,\"lmtp\":%d,\"relay\":%d},\"MessagesToday\":%ld,\"Queue\":%d,\"Listeners\":[",
               MAILSRV_VERSION, (long long)((os_now_ms() - ms->started_ms) / 1000), n[PROTO_SMTP], n[PROTO_SUBMISSION],
               n[PROTO_POP3], n[PROTO_HTTP], n[PROTO_LMTP], relaying, ms_messages_today(ms, 0), ms->nqueue);
    for (i = 0; i < ms->nlst; i++) {
        const struct listener *l = &ms->lst[i];
        buf_adds(b, i ? ",{" : "{");
        json_kv(b, "", "Protocol", l->proto == PROTO_HTTP && l->tls ? "https" : proto_names[l->proto]);
        json_kv(b, ",", "Address", l->name);
        json_kv(b, ",", "TLS", l->tls ? "implicit" : ms->cfg->tls && l->proto != PROTO_HTTP ? "starttls" : "none");
        buf_adds(b, "}");
    }
    buf_adds(b, "]}");
    http_json(c);
}

/* GET /api/v1/queue (mailsrv's): what waits to be relayed, from the server's own list; a page of
 * it (start, limit) as the message lists, so that one answer is built in a short loop turn
 * however long the queue grows (the web page asks again each second while a retry goes on). */
static void
http_get_queue(struct conn *c)
{
    struct mailsrv *ms = c->ms;
    struct buf *b = &c->u.http.resp;
    int i, k, start, limit;
    if (http_admin_only(c)) return;
    if (http_page(c, &start, &limit) != 0) { http_text(c, 400, "Invalid start or limit\n"); return; }
    buf_printf(b, "{\"Total\":%d,\"Start\":%d,\"Entries\":[", ms->nqueue, start);
    for (i = start; i < ms->nqueue && i - start < limit; i++) {
        const struct qentry *e = ms->queue[i];
        buf_adds(b, i > start ? ",{" : "{");
        json_kv(b, "", "ID", e->id);
        json_kv(b, ",", "From", e->from);
        http_time(b, ",", "Arrived", e->arrived);
        http_time(b, ",", "NextTry", e->next_try);
        buf_printf(b, ",\"Size\":%lld,\"Tries\":%d,\"Active\":%s,\"Recipients\":[", (long long)e->size, e->tries,
                   e->active ? "true" : "false");
        for (k = 0; k < e->nr; k++) {
            buf_adds(b, k ? ",{" : "{");
            json_kv(b, "", "Address", e->r[k].addr);
            json_kv(b, ",", "State", q_state_names[e->r[k].state]);
            json_kv(b, ",", "Error", e->r[k].error);
            buf_adds(b, "}");
        }
        buf_adds(b, "]}");
    }
    buf_adds(b, "]}");
    http_json(c);
}

/* POST /api/v1/queue/flush: retry everything now, as `mailsrv flush`. */
static void
http_queue_flush(struct conn *c)
{
    struct mailsrv *ms = c->ms;
    if (http_admin_only(c)) return;
    conn_log(c, "flush requested by %s: retrying %d queued messages now", c->u.http.mailbox[0] ? c->u.http.mailbox : "capture",
             ms->nqueue);
    relay_flush(ms);
    buf_printf(&c->u.http.resp, "{\"Flushed\":%d}", ms->nqueue);
    http_json(c);
}

/* DELETE /api/v1/queue/{ID}: give up an entry without a bounce (the admin's decision, logged). */
static void
http_queue_delete(struct conn *c)
{
    struct mailsrv *ms = c->ms;
    int i;
    if (http_admin_only(c)) return;
    for (i = 0; i < ms->nqueue && strcmp(ms->queue[i]->id, c->u.http.arg[0]) != 0; i++) {}
    if (i == ms->nqueue) { http_text(c, 404, "No such queue entry\n"); return; }
    if (ms->queue[i]->active) { http_text(c, 409, "The message is being relayed now; try again in a moment\n"); return; }
    conn_log(c, "queue entry %s deleted by %s without a bounce", ms->queue[i]->id,
             c->u.http.mailbox[0] ? c->u.http.mailbox : "capture");
    relay_remove(ms, ms->queue[i]);
    http_text(c, 200, "ok");
}

/* GET /api/v1/lists (mailsrv's): each list with its members' proof of consent and the open
 * requests, as `mailsrv list ADDRESS` prints them. */
static void
http_get_lists(struct conn *c)
{
    const struct ms_config *cfg = c->ms->cfg;
    struct buf *b = &c->u.http.resp;
    struct list_state st;
    char addr[MS_PATH_MAX];
    int i, k;
    if (http_admin_only(c)) return;
    buf_adds(b, "{\"Lists\":[");
    for (i = 0; i < cfg->nlists; i++) {
        const struct cfg_list *l = &cfg->lists[i];
        int ok = list_load(cfg, l, &st) == 0;
        ms_fmt(addr, sizeof addr, "%s@%s", l->name, l->domain);
        buf_adds(b, i ? ",{" : "{");
        json_kv(b, "", "Address", addr);
        json_kv(b, ",", "Owner", l->owner);
        json_kv(b, ",", "Post", l->post == LIST_POST_OWNER ? "owner" : l->post == LIST_POST_ANYONE ? "anyone" : "members");
        json_kv(b, ",", "Error", ok ? "" : "its state cannot be read");
        buf_printf(b, ",\"Posts\":%ld,\"Members\":[", ok ? st.seq : 0L);
        for (k = 0; ok && k < st.nm; k++) {
            const struct list_member *m = &st.m[k];
            buf_adds(b, k ? ",{" : "{");
            json_kv(b, "", "Address", m->addr);
            http_time(b, ",\"Requested\":{", "Time", m->req_time);
            json_kv(b, ",", "IP", m->req_ip);
            json_kv(b, ",", "MessageID", m->req_id);
            http_time(b, "},\"Confirmed\":{", "Time", m->conf_time);
            json_kv(b, ",", "IP", m->conf_ip);
            json_kv(b, ",", "MessageID", m->conf_id);
            buf_printf(b, "},\"Bounces\":%d}", m->bounces);
        }
        buf_adds(b, "],\"Pending\":[");
        for (k = 0; ok && k < st.np; k++) {
            buf_adds(b, k ? ",{" : "{");
            json_kv(b, "", "Address", st.p[k].addr);
            json_kv(b, ",", "Kind", st.p[k].unsub ? "unsubscribe" : "subscribe");
            http_time(b, ",", "Time", st.p[k].time);
            json_kv(b, ",", "IP", st.p[k].ip);
            buf_adds(b, "}");
        }
        buf_adds(b, "]}");
        list_state_free(&st);
    }
    buf_adds(b, "]}");
    http_json(c);
}

/* The routes (OpenSMTPD's command table): the first whose path matches; a path
 * that matches with another method answers 405. */
static const struct http_route http_routes[] = {
    {HTTP_GET, "/api/v1/messages", 1, http_get_messages},
    {HTTP_PUT, "/api/v1/messages", 1, http_put_messages},
    {HTTP_DELETE, "/api/v1/messages", 1, http_delete_messages},
    {HTTP_GET, "/api/v1/message/*", 1, http_get_message},
    {HTTP_GET, "/api/v1/message/*/headers", 1, http_get_headers},
    {HTTP_GET, "/api/v1/message/*/raw", 1, http_get_raw},
    {HTTP_GET, "/api/v1/message/*/part/*", 1, http_get_part},
    {HTTP_GET, "/api/v1/search", 1, http_search},
    {HTTP_DELETE, "/api/v1/search", 1, http_search},
    {HTTP_GET, "/api/v1/info", 1, http_get_info},
    {HTTP_GET, "/api/v1/events", HTTP_LOGIN_ONLY, http_events},
    {HTTP_GET, "/api/v1/webui", 0, http_get_webui},
    {HTTP_POST, "/api/v1/send", HTTP_LOGIN_ONLY, http_post_send},
    {HTTP_POST, "/api/v1/message/*/release", 1, http_release},
    {HTTP_GET, "/api/v1/chaos", HTTP_LOGIN_ONLY, http_chaos},
    {HTTP_PUT, "/api/v1/chaos", HTTP_LOGIN_ONLY, http_chaos},
    {HTTP_GET, "/view/*", 1, http_get_view},
    {HTTP_GET, "/mail/config-v1.1.xml", 0, http_setup_thunderbird},
    {HTTP_GET, "/.well-known/autoconfig/mail/config-v1.1.xml", 0, http_setup_thunderbird},
    {HTTP_POST, "/autodiscover/autodiscover.xml", 0, http_setup_outlook},
    {HTTP_POST, "/Autodiscover/Autodiscover.xml", 0, http_setup_outlook},
    {HTTP_GET, "/apple/mail.mobileconfig", 0, http_setup_apple},
    {HTTP_GET, "/livez", 0, http_get_ok},
    {HTTP_GET, "/readyz", 0, http_get_ok},
    {HTTP_GET, "/api/v1/mailboxes", 1, http_get_mailboxes},
    {HTTP_GET, "/api/v1/status", HTTP_LOGIN_ONLY, http_get_status},
    {HTTP_GET, "/api/v1/queue", HTTP_LOGIN_ONLY, http_get_queue},
    {HTTP_POST, "/api/v1/queue/flush", HTTP_LOGIN_ONLY, http_queue_flush},
    {HTTP_DELETE, "/api/v1/queue/*", HTTP_LOGIN_ONLY, http_queue_delete},
    {HTTP_GET, "/api/v1/lists", HTTP_LOGIN_ONLY, http_get_lists},
    {HTTP_GET, "/", HTTP_LOGIN_ONLY, http_get_page},
    {HTTP_GET, "/app.css", HTTP_LOGIN_ONLY, http_get_page},
    {HTTP_GET, "/app.js", HTTP_LOGIN_ONLY, http_get_page},
    {HTTP_NMETHODS, "/api/v1/tags", 0, http_not_offered},
    {HTTP_NMETHODS, "/api/v1/tags/*", 0, http_not_offered},
    {HTTP_NMETHODS, "/api/v1/message/*/html-check", 0, http_not_offered},
    {HTTP_NMETHODS, "/api/v1/message/*/link-check", 0, http_not_offered},
    {HTTP_NMETHODS, "/api/v1/message/*/sa-check", 0, http_not_offered},
    {HTTP_NMETHODS, "/api/v1/message/*/part/*/thumb", 0, http_not_offered},
};

/* Does path match pattern? The '*' segments are decoded into args (at most 2). */
static int
http_route_match(const char *pattern, const char *path, char args[][MS_HTTP_ARG_MAX])
{
    int k = 0;
    while (*pattern && *path) {
        if (*pattern == '*') {
            size_t n = strcspn(path, "/");
            if (n == 0 || k == 2 || http_unescape(path, n, args[k], MS_HTTP_ARG_MAX, 0) != 0 || strchr(args[k], '/'))
                return 0;
            k++;
            pattern++;
            path += n;
        } else if (*pattern++ != *path++) {
            return 0;
        }
    }
    return !*pattern && !*path;
}

/* Who may see what (see the section's head), then the route. */
static void
http_route(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    const struct ms_config *cfg = c->ms->cfg;
    char path[MS_HTTP_TARGET_MAX];
    size_t i, n = strcspn(h->req.target, "?");
    int allowed = 0;
    memcpy(path, h->req.target, n);
    path[n] = 0;
    if (h->req.method == HTTP_OPTIONS) { /* no cross-origin use is allowed: no CORS fields */
        http_answer_extra(c, 200, "text/plain", "Allow: GET, HEAD, PUT, DELETE, POST, OPTIONS\r\n");
        return;
    }
    for (i = 0; i < sizeof http_routes / sizeof http_routes[0]; i++) {
        const struct http_route *r = &http_routes[i];
        char args[2][MS_HTTP_ARG_MAX];
        if (!http_route_match(r->path, path, args)) continue;
        if (r->method != HTTP_NMETHODS && r->method != h->req.method &&
            !(r->method == HTTP_GET && h->req.method == HTTP_HEAD)) {
            allowed = 1;
            continue;
        }
        h->route = r;
        memcpy(h->arg, args, sizeof args);
        break;
    }
    if (!h->route) { http_text(c, allowed ? 405 : 404, allowed ? "Method not allowed\n" : "404 page not found\n"); return; }
    if (h->req.method != HTTP_GET && h->req.method != HTTP_HEAD && (h->req.cross_site || (h->req.browser && !h->req.requested_with))) {
        /* another site's page, using the browser's cached login or the loopback trust (CSRF): the
         * browser says where it comes from, and the page's own writes carry X-Requested-With,
         * which no other site can add without a CORS preflight that is never granted */
        conn_log(c, "refused a cross-site %s %s", http_methods[h->req.method], path);
        http_text(c, 403, "Cross-site request refused\n");
        return;
    }
    if (!h->route->store) { h->route->fn(c); return; }
    if (cfg->capture && c->is_loopback && !h->req.host_local && h->req.browser) { /* DNS rebinding */
        conn_log(c, "refused a browser's request for Host other than localhost in capture mode");
        http_text(c, 403, "Capture mode: open http://localhost or http://127.0.0.1 (another name could be another site's)\n");
        return;
    }
    if (cfg->capture && c->is_loopback) { /* as Mailpit: the captured mail is the local developer's */
        h->all = 1;
        http_with_store(c);
        return;
    }
    if (cfg->capture) { /* where any password logs in, no one else may look */
        http_text(c, 403, "Capture mode: the API answers loopback clients only\n");
        return;
    }
    http_login(c);
}

/* ---- logins: HTTP Basic (RFC 7617), through the logins of section 9 ---- */

/* Is this mailbox in `admins`? */
static int
http_is_admin(const struct ms_config *cfg, const char *mailbox)
{
    return http_list_has(cfg->admins, mailbox);
}

static void
http_logged_in_as(struct conn *c, const char *mailbox)
{
    struct http_sess *h = &c->u.http;
    ms_strlcpy(h->mailbox, mailbox, sizeof h->mailbox);
    h->all = http_is_admin(c->ms->cfg, mailbox);
    http_with_store(c);
}

/* A request's login: the one this connection made with the same Authorization, one made
 * lately by another (a client that opens a connection per request), or a new one hashed. */
static void
http_login(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    struct mailsrv *ms = c->ms;
    unsigned char key[32], dec[MS_HTTP_AUTH_MAX];
    struct sha256 s;
    char *colon;
    const char *v = h->req.auth;
    long n;
    int i;
    int64_t now = os_now_ms();
    if (!ms_strncaseeq(v, "Basic ", 6)) { http_unauthorized(c); return; }
    for (v += 6; *v == ' '; v++) {}
    if (!conn_plaintext_ok(c)) { http_text(c, 403, "Logins need TLS here (plaintext_auth)\n"); return; }
    if (!ms->http_salted) ms->http_salted = os_random(ms->http_salt, sizeof ms->http_salt) == 0 ? 1 : -1;
    sha256_init(&s);
    sha256_update(&s, ms->http_salt, sizeof ms->http_salt);
    sha256_update(&s, v, strlen(v));
    sha256_final(&s, key);
    if (h->mailbox[0] && memcmp(key, h->auth_key, 32) == 0) { http_logged_in_as(c, h->mailbox); return; }
    for (i = 0; i < MS_HTTP_LOGINS && ms->http_salted > 0; i++) {
        struct http_login_cache *e = &ms->http_logins[i];
        if (e->until > now && memcmp(e->key, key, 32) == 0) {
            memcpy(h->auth_key, key, 32);
            http_logged_in_as(c, e->mailbox);
            return;
        }
    }
    n = b64_decode(v, strlen(v), dec, sizeof dec - 1);
    if (n < 0 || memchr(dec, 0, (size_t)n) || (dec[n] = 0, colon = strchr((char *)dec, ':')) == NULL) {
        http_unauthorized(c);
        return;
    }
    *colon = 0;
    memcpy(h->auth_key, key, 32);
    h->state = H_LOGIN;
    auth_begin(c, (char *)dec, colon + 1);
    ms_wipe(dec, sizeof dec);
}

/* The login's outcome (section 9's login_done): mailbox NULL if it failed. */
static void
http_login_done(struct conn *c, const char *mailbox, const char *user)
{
    struct http_sess *h = &c->u.http;
    struct mailsrv *ms = c->ms;
    struct http_login_cache *e = &ms->http_logins[0];
    int i;
    if (!mailbox) {
        memset(h->auth_key, 0, sizeof h->auth_key);
        h->mailbox[0] = 0;
        c->hold_until = auth_failed(c, user);
        if (++c->login_fails >= MS_AUTH_MAX_FAILS) h->req.keep_alive = 0;
        http_unauthorized(c);
        return;
    }
    auth_succeeded(c);
    for (i = 1; i < MS_HTTP_LOGINS; i++) /* the oldest is forgotten */
        if (ms->http_logins[i].until < e->until) e = &ms->http_logins[i];
    if (ms->http_salted > 0) {
        memcpy(e->key, h->auth_key, 32);
        ms_strlcpy(e->mailbox, mailbox, sizeof e->mailbox);
        e->until = os_now_ms() + MS_HTTP_LOGIN_TTL_MS;
    }
    conn_log(c, "login %s", mailbox);
    http_logged_in_as(c, mailbox);
}

/* A reload: the logins remembered are made again (a password may have changed); a request being
 * answered keeps the login it began with. */
static void
http_forget_logins(struct mailsrv *ms)
{
    int i;
    memset(ms->http_logins, 0, sizeof ms->http_logins);
    for (i = 0; i < ms->nconns; i++)
        if (ms->conns[i]->proto == PROTO_HTTP) memset(ms->conns[i]->u.http.auth_key, 0, sizeof ms->conns[i]->u.http.auth_key);
}

/* ---- the session: reading requests ---- */

static void
http_greet(struct conn *c)
{
    (void)c; /* the client speaks first */
}

/* May this request's body be a message with its attachments in base64? /api/v1/send from a client
 * that may send: one that has logged in on this connection, says who it is, or is a loopback one
 * in capture mode. Anyone else's body stays small before its login is checked. */
static int
http_may_send_big(const struct conn *c)
{
    const struct http_sess *h = &c->u.http;
    size_t n = strcspn(h->req.target, "?");
    if (n != 12 || strncmp(h->req.target, "/api/v1/send", 12) != 0) return 0;
    return (c->ms->cfg->capture && c->is_loopback) || (!c->ms->cfg->capture && (h->mailbox[0] || h->req.auth[0]));
}

/* Reads the head and the body of the next request, then routes it: 1 to go on, -1 to wait. */
static int
http_pump(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    long r;
    if (h->state == H_HEAD) {
        if (!c->io.inlen) return -1;
        h->started = 1;
        if ((r = http_parse_head(c->io.in, c->io.inlen, &h->req)) == 0) {
            if (c->io.inlen == c->io.insize && !h->bigin) { /* a head larger than the usual input buffer */
                h->bigin = xrealloc(NULL, MS_HTTP_HEAD_MAX + 1);
                memcpy(h->bigin, c->io.in, c->io.inlen);
                c->io.in = h->bigin;
                c->io.insize = MS_HTTP_HEAD_MAX + 1;
            }
            return -1;
        }
        if (r < 0) {
            char vis[120];
            const char *nl = memchr(c->io.in, '\n', c->io.inlen); /* (the input is not a C string) */
            ms_visible(vis, sizeof vis, c->io.in, nl ? (size_t)(nl - c->io.in) : c->io.inlen);
            conn_log(c, "bad request (%ld): %s", -r, vis);
            h->req.keep_alive = 0;
            c->io.inlen = 0;
            http_text(c, (int)-r, http_reason((int)-r));
            return -1;
        }
        if (c->ms->verbose) conn_log(c, "< %s %s", http_methods[h->req.method], h->req.target);
        io_consume(&c->io, (size_t)r);
        buf_free(&h->body);
        if (h->req.length > (http_may_send_big(c) ? c->ms->cfg->max_message_size / 3 * 4 + MS_HTTP_BODY_MAX : MS_HTTP_BODY_MAX)) {
            h->req.keep_alive = 0;
            http_text(c, 413, "The request's body is too large\n");
            return -1;
        }
        if (h->req.length) {
            h->state = H_BODY;
            if (h->req.expect_continue) buf_adds(&c->io.out, "HTTP/1.1 100 Continue\r\n\r\n");
            return 1;
        }
    } else if (h->state == H_BODY) {
        size_t take = c->io.inlen, need = (size_t)h->req.length - h->body.len;
        if (!take) return -1;
        if (take > need) take = need;
        buf_add(&h->body, c->io.in, take);
        io_consume(&c->io, take);
        c->io.deadline = os_now_ms() + c->ms->cfg->timeout * 1000LL; /* a large body coming slowly is no idle client */
        if (h->body.len < (size_t)h->req.length) return -1;
    } else {
        if (h->state == H_EVENTS) c->io.inlen = 0; /* a stream takes no more requests */
        return -1; /* a login or the store's work: the loop runs it */
    }
    http_route(c);
    return 1;
}

/* What the server says at the moments every session shares: only a request that has begun gets
 * an answer (an idle keep-alive connection is closed without one, RFC 9112 9.6). */
static void
http_say(struct conn *c, enum conn_say what)
{
    struct http_sess *h = &c->u.http;
    if (!h->started || h->state == H_WORK || h->state == H_LOGIN) return;
    h->req.keep_alive = 0;
    if (what == SAY_TIMEOUT) http_text(c, 408, "Request timeout\n");
    else if (what == SAY_SHUTDOWN || what == SAY_EVICTED) http_text(c, 503, "Server shutting down\n");
}

static int http_logged_in(const struct conn *c) { (void)c; return 0; } /* idle keep-alives may make room */
static int http_busy(const struct conn *c) { return c->u.http.started; }
static int http_in_transfer(const struct conn *c) { return c->u.http.state == H_BODY; }
static int http_streaming(const struct conn *c) { (void)c; return 0; }

static void
http_free(struct conn *c)
{
    struct http_sess *h = &c->u.http;
    http_job_free(h->job);
    h->job = NULL;
    buf_free(&h->body);
    buf_free(&h->resp);
    free(h->bigin);
    h->bigin = NULL;
    if (c->io.fd != MS_BAD_SOCK) { /* what the client sent beyond an answered error is read first: a socket
                                     * closed with unread input resets the connection, and the client may
                                     * lose the answer (RFC 9112 9.6) */
        char junk[4096];
        int k;
        for (k = 0; k < 64 && net_recv(c->io.fd, junk, sizeof junk) > 0; k++) {}
    }
}

#define HTTP_BUSY "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nRetry-After: 10\r\nConnection: close\r\n"
static const struct proto_ops http_ops = {
    'h', http_greet, http_pump, NULL, http_login_done, NULL, http_logged_in, http_busy,
    http_in_transfer, http_streaming, NULL, http_free, NULL,
    {[SAY_BUSY] = HTTP_BUSY, [SAY_RATE] = HTTP_BUSY},
    http_say,
};
#else
static void http_forget_logins(struct mailsrv *ms) { (void)ms; }
static void
http_notify(struct mailsrv *ms, const char *type, const char *uidl, const struct targets *t, const char *mailbox)
{
    (void)ms; (void)type; (void)uidl; (void)t; (void)mailbox; /* no HTTP, no event streams */
}
#endif /* MAILSRV_ENABLE_HTTP */

static const struct proto_ops *
proto_ops_of(enum proto p)
{
#if MAILSRV_ENABLE_HTTP
    if (p == PROTO_HTTP) return &http_ops;
#endif
    if (p == PROTO_LMTP) return &lmtp_ops;
    return p == PROTO_POP3 ? &pop_ops : &smtp_ops;
}

/*==== 13. Relay: DNS client, outbound SMTP, queue runner ====*/
/*
 * Queue entries live in ms->queue. relay_run() starts one outbound session
 * per destination domain of each due entry (at most max_outbound at once).
 * A session finds its next hop ([route], smarthost, or MX records through
 * its own DNS queries), then speaks SMTP to it; DNS and SMTP use the
 * session's one non-blocking socket in the poll loop. When the last session
 * of an entry ends, relay_finish() bounces refused recipients, schedules a
 * retry for deferred ones, and rewrites or removes the entry.
 */

/* O_BODY: message text is being pumped (after 354, or into BDAT chunks); O_BDAT: a chunk
 * that is not the last is out, its reply awaited; O_DOT: the final dot or the LAST chunk is out. */
enum { O_START, O_DNS, O_CONNECT, O_GREET, O_EHLO, O_HELO, O_STARTTLS, O_TLS, O_MAIL, O_RCPT, O_DATA, O_BODY, O_BDAT,
       O_DOT, O_QUIT };

struct dnsq {
    int type, tcp, ns, tries;
    unsigned id;
    char name[MS_DOMAIN_MAX + 1];
    unsigned char q[MS_DOMAIN_MAX + 20];
    int qlen;
    size_t sent;                 /* TCP: bytes of the length-prefixed query sent */
    unsigned char *ans;          /* the answer (TCP: with its 2-byte length) */
    size_t alen;
};

struct mta_sess {
    struct mailsrv *ms;
    unsigned id;
    struct qentry *e;            /* NULL once the results are handed back */
    char domain[MS_DOMAIN_MAX + 1];
    int *ri, nri;                /* the entry's recipients for this domain */
    struct dns_rr mx[MS_MX_MAX];
    int nmx, mxi, no_address;    /* no_address: every host so far had no address record */
    unsigned port;
    struct ms_addr addr[2 * MS_DNS_RR_MAX];
    int naddr, addri;
    char hop[MS_DOMAIN_MAX + 80]; /* "host[ip]:port", for logs */
    struct dnsq dq;
    char dns_ns[MS_DNS_MAX_NS][64];
    unsigned dns_port[MS_DNS_MAX_NS];
    int ndns;
    int state, is_done;
    struct transport io;         /* the DNS query's socket, then the SMTP session's */
    char inbuf[1023];            /* io's input: a reply line */
    int ext_size, ext_starttls, ext_dsn, rcpt_at, naccepted, ntx;
    int ext_8bitmime;            /* the hop offers 8BITMIME (RFC 6152) */
    int ext_pipelining, ext_chunking; /* EHLO keywords of this hop (RFC 2920, RFC 3030) */
    int pipelined;               /* this transaction's MAIL, RCPTs (and DATA) went out as one group */
    int nrcpt_sent, data_sent;   /* RCPTs in the group, and whether DATA closed it */
    int mail_refused;            /* pipelined: MAIL got 5xx, the group's other replies are still due */
    int bdat;                    /* the text goes in BDAT chunks, not after DATA */
    struct buf chunk;            /* BDAT: the chunk being filled */
    int ext_smtputf8;            /* the hop's EHLO offers SMTPUTF8 (RFC 6531) */
    int tls_refused;             /* this address failed the handshake: plain text (tls = yes) */
    int reply_code;              /* of a multi-line reply's first lines */
    int msg_fd, bol, body_eof;
    struct line_reader lr;
    struct mime_conv *mc;        /* the text is converted for this hop (mta_body_line), else NULL */
    struct buf cout;             /* ... its output lines, from coff on not yet sent */
    size_t coff;
    int conv_eof;
    char error[400];             /* the last session-level failure */
};

static void
mta_log(struct mta_sess *o, const char *fmt, ...)
{
    char line[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ms_log(o->ms, "[o%u] %s", o->id, line);
}

/* Windows cannot remove a file that is open: the text is closed as soon as it is sent. */
static void
mta_close_body(struct mta_sess *o)
{
    if (o->msg_fd >= 0) { lr_free(&o->lr); os_close(o->msg_fd); }
    o->msg_fd = -1;
    free(o->mc);
    o->mc = NULL;
    buf_free(&o->cout);
}

static void
mta_close_fd(struct mta_sess *o)
{
    io_close(&o->io);
    free(o->dq.ans);
    o->dq.ans = NULL;
    o->reply_code = 0;
    mta_close_body(o);
}

static void
mta_send(struct mta_sess *o, const char *fmt, ...)
{
    va_list ap;
    size_t start = o->io.out.len;
    va_start(ap, fmt);
    buf_vprintf(&o->io.out, fmt, ap);
    va_end(ap);
    if (o->ms->verbose) mta_log(o, "> %.*s", (int)(o->io.out.len - start), o->io.out.p + start);
    buf_adds(&o->io.out, "\r\n");
    o->io.deadline = os_now_ms() + o->ms->cfg->relay_timeout * 1000;
}

/* ---- DNS queries: UDP, then TCP when the answer is truncated ---- */

static void
mta_dns_send(struct mta_sess *o)
{
    struct dnsq *q = &o->dq;
    struct ms_addr a;
    int err = 0;
    if (o->io.fd != MS_BAD_SOCK) net_close(o->io.fd);
    o->io.fd = MS_BAD_SOCK;
    q->sent = q->alen = 0;
    if (net_addr_parse(o->dns_ns[q->ns], o->dns_port[q->ns], &a) == 0) o->io.fd = net_connect(&a, !q->tcp, &err);
    o->io.deadline = os_now_ms() + MS_DNS_TRY_MS * (q->tcp ? 2 : 1);
    if (o->io.fd != MS_BAD_SOCK && !q->tcp) net_send(o->io.fd, q->q, (size_t)q->qlen); /* lost: the timeout retries */
}

static void
mta_dns_query(struct mta_sess *o, const char *name, int type)
{
    struct dnsq *q = &o->dq;
    unsigned short id;
    int rnd = os_random(&id, sizeof id);
    q->id = id;
    q->type = type;
    q->tcp = q->tries = 0;
    q->ns = 0;
    ms_strlcpy(q->name, name, sizeof q->name);
    if (rnd != 0) { /* a guessable id invites forged answers: a temporary failure instead */
        mta_log(o, "DNS query for %s: the system's random generator failed", name);
        mta_dns_answer(o, -1, NULL);
        return;
    }
    if (o->ndns == 0) { mta_dns_answer(o, -1, NULL); return; } /* no resolver known: a temporary failure */
    q->qlen = dns_build_query(q->q, sizeof q->q, q->id, name, type);
    if (q->qlen < 0) { mta_dns_answer(o, DNS_NXDOMAIN, NULL); return; }
    o->state = O_DNS;
    if (o->ms->verbose) mta_log(o, "dns query %s type %d", name, type);
    mta_dns_send(o);
}

static void
mta_dns_timeout(struct mta_sess *o)
{
    struct dnsq *q = &o->dq;
    if (++q->tries >= MS_DNS_TRIES) { mta_dns_answer(o, -1, NULL); return; }
    q->ns = (q->ns + 1) % o->ndns;
    mta_dns_send(o);
}

/* DNS over TCP (RFC 1035 4.2.2): the answer comes behind its 2-byte length.
 * After alen bytes of a: the answer's length once all of it is in (it
 * starts at a + 2), else -1 (read more; a 65537-byte buffer always has room). */
static long
dns_tcp_msg_len(const unsigned char *a, size_t alen)
{
    return alen < 2 || alen < 2 + (size_t)dns_u16(a) ? -1 : (long)dns_u16(a);
}

static void
mta_dns_io(struct mta_sess *o, short re)
{
    struct dnsq *q = &o->dq;
    struct dns_result r;
    unsigned char buf[MS_DNS_UDP_MAX + 1];
    long n, mlen;
    if (!q->tcp) {
        n = net_recv(o->io.fd, buf, sizeof buf);
        if (n <= 0) return; /* ICMP errors and strays: the timeout decides */
        if (dns_parse_answer(buf, (size_t)n, q->id, q->name, q->type, &r) != 0) return; /* not ours (RFC 5452) */
        if (r.tc) { q->tcp = 1; mta_dns_send(o); return; }
        mta_dns_answer(o, r.rcode, &r);
        return;
    }
    if (q->sent < (size_t)q->qlen + 2 && (re & POLLOUT)) {
        unsigned char pkt[sizeof q->q + 2];
        pkt[0] = (unsigned char)(q->qlen >> 8);
        pkt[1] = (unsigned char)q->qlen;
        memcpy(pkt + 2, q->q, (size_t)q->qlen);
        n = net_send(o->io.fd, pkt + q->sent, (size_t)q->qlen + 2 - q->sent);
        if (n < 0 && !net_would_block(net_error())) { mta_dns_timeout(o); return; }
        if (n > 0) q->sent += (size_t)n;
        return;
    }
    if (!(re & (POLLIN | POLLHUP | POLLERR))) return;
    if (!q->ans) q->ans = xrealloc(NULL, 65537);
    n = net_recv(o->io.fd, q->ans + q->alen, 65537 - q->alen);
    if (n <= 0) { if (n == 0 || !net_would_block(net_error())) mta_dns_timeout(o); return; }
    q->alen += (size_t)n;
    if ((mlen = dns_tcp_msg_len(q->ans, q->alen)) < 0) return;
    if (dns_parse_answer(q->ans + 2, (size_t)mlen, q->id, q->name, q->type, &r) != 0 || r.tc) { mta_dns_timeout(o); return; }
    mta_dns_answer(o, r.rcode, &r);
}

/* ---- choosing hosts and addresses ---- */

static void
mta_connect(struct mta_sess *o)
{
    char ip[64];
    int err = 0;
    mta_close_fd(o);
    net_addr_str(&o->addr[o->addri], ip, sizeof ip);
    snprintf(o->hop, sizeof o->hop, "%s[%s]:%u", o->mx[o->mxi].host, ip, o->addr[o->addri].port);
    o->io.fd = net_connect(&o->addr[o->addri], 0, &err);
    o->state = O_CONNECT;
    o->io.deadline = os_now_ms() + o->ms->cfg->relay_timeout * 1000;
    o->ext_size = o->ext_starttls = o->ext_dsn = o->ext_8bitmime = o->ext_pipelining = o->ext_chunking = o->ext_smtputf8 = 0;
    if (o->io.fd == MS_BAD_SOCK) {
        snprintf(o->error, sizeof o->error, "4.4.1 cannot connect to %s: %s", o->hop, net_strerror(err));
        o->io.deadline = 0; /* the timer moves on to the next address */
    }
}

/* Resolves a host: a numeric address directly, a name by A then AAAA. */
static void
mta_resolve_host(struct mta_sess *o)
{
    struct ms_addr a;
    o->naddr = o->addri = 0;
    if (net_addr_parse(o->mx[o->mxi].host, o->port, &a) == 0) {
        o->addr[o->naddr++] = a;
        o->no_address = 0;
        mta_connect(o);
        return;
    }
    mta_dns_query(o, o->mx[o->mxi].host, DNS_A);
}

/* The current address failed: the next address, the next MX, or give up. */
static void
mta_next(struct mta_sess *o)
{
    mta_close_fd(o);
    o->tls_refused = 0;
    if (++o->addri < o->naddr) { mta_connect(o); return; }
    if (++o->mxi < o->nmx) { mta_resolve_host(o); return; }
    mta_give_up(o, o->no_address); /* no host had an address: the domain cannot receive mail */
}

static int
mta_mx_cmp(const void *a, const void *b)
{
    const struct dns_rr *x = a, *y = b;
    return x->pref < y->pref ? -1 : x->pref > y->pref;
}

/* RFC 5321 5.1: hosts of equal preference are tried in random order, to
 * spread the load over them. Sorted by preference, each run of equal ones is
 * shuffled (Fisher-Yates); without the system's generator they stay as sorted. */
static void
mta_mx_order(struct dns_rr *mx, int n)
{
    unsigned char rnd[MS_MX_MAX];
    int s, e, i;
    qsort(mx, (size_t)n, sizeof mx[0], mta_mx_cmp);
    if (n < 2 || n > MS_MX_MAX || os_random(rnd, sizeof rnd) != 0) return;
    for (s = 0; s < n; s = e) {
        for (e = s + 1; e < n && mx[e].pref == mx[s].pref; e++) {}
        for (i = e - 1; i > s; i--) {
            int j = s + rnd[i] % (i - s + 1); /* a bias of at most 8 in 256: harmless for spreading load */
            struct dns_rr t = mx[i];
            mx[i] = mx[j];
            mx[j] = t;
        }
    }
}

static void
mta_dns_answer(struct mta_sess *o, int rc, const struct dns_result *r)
{
    int i;
    struct dnsq *q = &o->dq;
    if (o->io.fd != MS_BAD_SOCK) net_close(o->io.fd);
    o->io.fd = MS_BAD_SOCK;
    if (rc != DNS_NOERROR && rc != DNS_NXDOMAIN) {
        snprintf(o->error, sizeof o->error, "4.4.3 DNS lookup of %s (type %d) failed: %s", q->name, q->type,
                 rc < 0 ? "no answer" : "server failure");
        if (q->type == DNS_MX) { mta_give_up(o, 0); return; }
        o->no_address = 0; /* an address may exist: a temporary failure */
        if (q->type == DNS_A) { mta_dns_query(o, q->name, DNS_AAAA); return; }
        if (o->naddr > 0) { /* RFC 5321 5.1: the A lookup gave addresses, try them (issue 18) */
            o->addri = 0;
            mta_connect(o);
            return;
        }
        mta_next(o);
        return;
    }
    if (q->type == DNS_MX) {
        if (rc == DNS_NXDOMAIN) {
            snprintf(o->error, sizeof o->error, "5.1.2 domain %s does not exist (DNS: NXDOMAIN)", o->domain);
            mta_give_up(o, 1);
            return;
        }
        /* RFC 7505: one MX of preference 0 naming the root means "no mail" */
        if (r->n == 1 && r->rr[0].host[0] == 0) {
            snprintf(o->error, sizeof o->error, "5.1.10 domain %s accepts no mail (null MX, RFC 7505)", o->domain);
            mta_give_up(o, 1);
            return;
        }
        o->nmx = 0;
        for (i = 0; i < r->n && o->nmx < MS_MX_MAX; i++)
            if (r->rr[i].host[0]) o->mx[o->nmx++] = r->rr[i];
        if (o->nmx == 0) { /* RFC 5321 5.1: no MX, the domain itself is the host */
            ms_strlcpy(o->mx[0].host, o->domain, sizeof o->mx[0].host);
            o->nmx = 1;
        }
        mta_mx_order(o->mx, o->nmx);
        o->mxi = 0;
        mta_resolve_host(o);
        return;
    }
    for (i = 0; rc == DNS_NOERROR && i < r->n && o->naddr < (int)(sizeof o->addr / sizeof o->addr[0]); i++) {
        struct ms_addr *a = &o->addr[o->naddr++];
        memset(a, 0, sizeof *a);
        a->family = q->type == DNS_A ? AF_INET : AF_INET6;
        memcpy(a->ip, r->rr[i].ip, 16);
        a->port = o->port;
    }
    if (q->type == DNS_A) { mta_dns_query(o, q->name, DNS_AAAA); return; }
    if (o->naddr == 0) {
        snprintf(o->error, sizeof o->error, "5.4.4 host %s has no address", q->name);
        o->addri = 0;
        if (++o->mxi < o->nmx) { mta_resolve_host(o); return; }
        mta_give_up(o, o->no_address);
        return;
    }
    o->no_address = 0;
    o->addri = 0;
    mta_connect(o);
}

/* ---- the SMTP client ---- */

/* Recipients still to try at this host (not refused with 5xx). */
static int
mta_next_rcpt(struct mta_sess *o, int from)
{
    for (; from < o->nri; from++)
        if (o->e->r[o->ri[from]].result != 5) return from;
    return -1;
}

/* A session-level failure: keep the refusals, try the next host. */
static void
mta_fail_session(struct mta_sess *o, const char *why)
{
    int i;
    ms_strlcpy(o->error, why, sizeof o->error);
    for (i = 0; i < o->nri; i++)
        if (o->e->r[o->ri[i]].result != 5) o->e->r[o->ri[i]].result = 0;
    mta_log(o, "%s: %s", o->hop, why);
    mta_next(o);
}

/* The connection broke or spoke nonsense; after our QUIT that is just the end. */

static void
mta_broken(struct mta_sess *o, const char *why)
{
    if (o->state == O_QUIT) { mta_close_fd(o); o->is_done = 1; return; }
    if (o->state == O_TLS) { mta_tls_failed(o); return; }
    if (mta_next_rcpt(o, 0) < 0) { mta_give_up(o, 0); return; } /* all refused already (a pipelined MAIL's 5xx) */
    mta_fail_session(o, why);
}

/* RFC 6531 3.4: does this transaction need a hop that offers SMTPUTF8? When
 * its sender or one of its recipients has UTF-8 (a local part; domains are
 * A-labels by then: addr_remote_domain). A message whose client declared
 * SMTPUTF8 but whose envelope is ASCII goes to any hop (its UTF-8 headers as
 * 8-bit text, no downgrade: RFC 6857 is not done). */
static int
mta_needs_utf8(const struct mta_sess *o)
{
    int i;
    if (!ms_is_ascii(o->e->from)) return 1;
    for (i = 0; i < o->nri; i++)
        if (o->e->r[o->ri[i]].result != 5 && !ms_is_ascii(o->e->r[o->ri[i]].addr)) return 1;
    return 0;
}

/* A hop without SMTPUTF8 and a transaction that needs it: its recipients
 * fail for good (RFC 6531 3.4: a bounce, as Postfix's "SMTPUTF8 is required,
 * but was not offered"), and the session ends. 1 if so. */
static int
mta_utf8_refused(struct mta_sess *o)
{
    char why[MS_DOMAIN_MAX + 160];
    int i;
    if (o->ext_smtputf8 || !mta_needs_utf8(o)) return 0;
    snprintf(why, sizeof why, "553 5.6.7 %s does not offer SMTPUTF8, which a non-ASCII address needs (RFC 6531)", o->hop);
    for (i = 0; i < o->nri; i++) {
        struct qrcpt *r = &o->e->r[o->ri[i]];
        if (r->result == 5) continue;
        r->result = 5;
        ms_strlcpy(r->error, why, sizeof r->error);
    }
    mta_quit(o);
    return 1;
}

static void
mta_set_accepted(struct mta_sess *o, int result, const char *reply)
{
    int i;
    for (i = 0; i < o->nri; i++) {
        struct qrcpt *r = &o->e->r[o->ri[i]];
        if (r->result != 2) continue;
        r->result = result;
        ms_strlcpy(r->error, reply, sizeof r->error);
    }
}

/* The DSN parameters passed on to a hop that offers DSN (RFC 3461 6.2):
 * MAIL FROM's RET and ENVID, or RCPT TO's NOTIFY and ORCPT (r), each with
 * its leading space; "" for a hop without DSN or when none were given. */
static void
mta_dsn_params(const struct mta_sess *o, const struct qrcpt *r, char *out, size_t n)
{
    char notify[32];
    out[0] = 0;
    if (!o->ext_dsn) return;
    if (!r) {
        snprintf(out, n, "%s%s%s", o->e->ret == DSN_RET_FULL ? " RET=FULL" : o->e->ret == DSN_RET_HDRS ? " RET=HDRS" : "",
                 o->e->envid[0] ? " ENVID=" : "", o->e->envid);
        return;
    }
    dsn_notify_text(r->notify, notify, sizeof notify);
    if (r->orcpt[0] || !r->notify) {
        snprintf(out, n, "%s%s%s%s", notify[0] ? " NOTIFY=" : "", notify, r->orcpt[0] ? " ORCPT=" : "", r->orcpt);
    } else { /* RFC 3461 4.2: a relay MAY add the ORCPT it was not given (as Postfix does) */
        char x[MS_ORCPT_MAX + 1];
        if (xtext_encode(r->addr, strlen(r->addr), x, sizeof x) < 0) x[0] = 0;
        snprintf(out, n, " NOTIFY=%s%s%s", notify, x[0] ? " ORCPT=rfc822;" : "", x);
    }
}

/* The one place the MAIL command is built (its parameters go here). SIZE
 * counts the text as it leaves: every line end as CRLF (RFC 1870 3). */
static void
mta_send_mail(struct mta_sess *o)
{
    /* RFC 6152 2: 8-bit text is declared (an entry of unknown text is taken as 8-bit); to a hop
     * without 8BITMIME it goes converted to 7 bits (mta_open_body) and undeclared */
    const char *body = o->ext_8bitmime && o->e->body != Q_BODY_7BIT ? " BODY=8BITMIME" : "";
    /* RFC 6531 3.4: declared where the client declared it or an address needs it (mta_utf8_refused
     * kept such a transaction from a hop without SMTPUTF8) */
    const char *utf8 = o->ext_smtputf8 && (o->e->smtputf8 || mta_needs_utf8(o)) ? " SMTPUTF8" : "";
    char dsn[MS_ENVID_MAX + 32];
    mta_dsn_params(o, NULL, dsn, sizeof dsn);
    if (o->ext_size)
        mta_send(o, "MAIL FROM:<%s>%s SIZE=%lld%s%s", o->e->from, body, (long long)(o->e->size + o->e->lines), utf8, dsn);
    else mta_send(o, "MAIL FROM:<%s>%s%s%s", o->e->from, body, utf8, dsn);
}

/* The one place an RCPT command is built: for the recipient at o->ri[at], with
 * its DSN parameters. */
static void
mta_send_rcpt(struct mta_sess *o, int at)
{
    char dsn[MS_ORCPT_MAX + 64];
    mta_dsn_params(o, &o->e->r[o->ri[at]], dsn, sizeof dsn);
    mta_send(o, "RCPT TO:<%s>%s", o->e->r[o->ri[at]].addr, dsn);
}

/* Starts a transaction. When the hop offers PIPELINING (RFC 2920 3.1) MAIL,
 * every RCPT and DATA go out as one group, DATA last; the replies are then
 * taken in order, each checked. With CHUNKING the group ends at the last RCPT:
 * BDAT carries text, so it waits until a recipient is accepted. */
static void
mta_mail_from(struct mta_sess *o)
{
    int i;
    if (mta_utf8_refused(o)) return;
    o->state = O_MAIL;
    o->naccepted = o->nrcpt_sent = o->data_sent = o->mail_refused = 0;
    o->pipelined = o->ext_pipelining && mta_next_rcpt(o, 0) >= 0;
    o->bdat = o->ext_chunking;
    mta_send_mail(o);
    if (!o->pipelined) return;
    for (i = mta_next_rcpt(o, 0); i >= 0; i = mta_next_rcpt(o, i + 1), o->nrcpt_sent++) mta_send_rcpt(o, i);
    /* a text that cannot be opened leaves DATA out: the last RCPT reply decides, as without pipelining */
    if (!o->bdat && mta_open_body(o) == 0) { o->data_sent = 1; mta_send(o, "DATA"); }
}

/* Opens the queued text before DATA, so a missing file never leaves the
 * remote server waiting for text. */
static int
mta_open_body(struct mta_sess *o)
{
    char path[MS_PATH_FILE], first[16];
    int64_t start = 0;
    struct os_stat st;
    if (ms_fmt(path, sizeof path, "%s/%s.msg", o->ms->qdir, o->e->id) < 0 ||
        (o->msg_fd = os_open(path, O_RDONLY, 0)) < 0 || os_fstat(o->msg_fd, &st) != 0) {
        if (o->msg_fd >= 0) os_close(o->msg_fd);
        o->msg_fd = -1;
        return -1;
    }
    /* the next hop adds its own Return-Path (RFC 5321 4.4): skip ours */
    if (os_pread(o->msg_fd, first, sizeof first, 0) == (long)sizeof first && ms_strncaseeq(first, "Return-Path:", 12)) {
        char c;
        while (os_pread(o->msg_fd, &c, 1, start) == 1 && (start++, c != '\n')) {}
    }
    lr_init(&o->lr, o->msg_fd, start, st.size);
    o->bol = 1;
    o->body_eof = 0;
    o->chunk.len = 0;
    /* converted (mime_conv) when it has 8-bit text and the hop lacks 8BITMIME (RFC 6152 3), or
     * lines over 998 octets (RFC 5321 4.5.3.1.6); an entry without the facts: both assumed */
    free(o->mc);
    o->mc = NULL;
    o->cout.len = 0;
    if ((o->e->body != Q_BODY_7BIT && !o->ext_8bitmime) || o->e->longlines || o->e->body == Q_BODY_UNKNOWN) {
        o->mc = xrealloc(NULL, sizeof *o->mc);
        mc_init(o->mc, o->e->body != Q_BODY_7BIT && !o->ext_8bitmime);
        o->coff = 0;
        o->conv_eof = 0;
        if (o->mc->need7 && mta_head_8bit(o->msg_fd, start, st.size)) { /* known now: no DATA for nothing */
            mta_unconvertible(o, 0);
            mta_close_body(o);
            return -1; /* the caller sends QUIT; the recipients keep their 5.6.3 */
        }
    }
    return 0;
}

/* The next line of text for the hop (as lr_next): as stored, or as mime_conv
 * made it; -2 when it cannot be converted for this hop. */
static int
mta_body_line(struct mta_sess *o, const char **line, size_t *len, int *complete, int64_t *off)
{
    const char *in, *nl;
    size_t n;
    int r, c;
    if (!o->mc) return lr_next(&o->lr, line, len, complete, off);
    *off = 0;
    while (!(nl = o->cout.len > o->coff ? memchr(o->cout.p + o->coff, '\n', o->cout.len - o->coff) : NULL) &&
           !o->conv_eof) {
        if (o->coff) { /* what was sent goes */
            memmove(o->cout.p, o->cout.p + o->coff, o->cout.len - o->coff);
            o->cout.len -= o->coff;
            o->coff = 0;
        }
        if ((r = lr_next(&o->lr, &in, &n, &c, off)) < 0) return -1;
        if (r == 0) o->conv_eof = 1;
        if (r == 0 ? mc_end(o->mc, &o->cout) : mc_line(o->mc, in, n, c, &o->cout)) return -2;
    }
    if (o->coff >= o->cout.len) return 0;
    *line = o->cout.p + o->coff;
    *len = nl ? (size_t)(nl - *line) : o->cout.len - o->coff; /* without nl: the text's end had no LF */
    *complete = nl != NULL;
    o->coff += *len + (nl != NULL);
    return 1;
}

/* The text cannot be converted for a hop without 8BITMIME (RFC 6152 3): the recipients
 * it accepted are refused with RFC 3463's 5.6.3 (they get a bounce). Found in the
 * message's own header, before DATA: the caller ends the session with QUIT. Found while
 * the text goes out: the connection is closed before the final dot, so the hop keeps
 * nothing (RFC 5321 4.1.1.4). */
static void
mta_unconvertible(struct mta_sess *o, int in_data)
{
    char why[600];
    snprintf(why, sizeof why, "5.6.3 Conversion required but not supported: %s does not offer 8BITMIME and "
             "the message has 8-bit octets in a header or in a part that cannot be converted", o->hop);
    mta_log(o, "%s: %s", o->e->id, why);
    mta_set_accepted(o, 5, why);
    if (in_data) mta_give_up(o, 0);
}

/* An 8-bit octet in the message's own header, as far as its first MTA_HEAD_SCAN octets go
 * (0: none there, or the header is longer: then mime_conv finds it while the text goes out). */
#define MTA_HEAD_SCAN 65536
static int
mta_head_8bit(int fd, int64_t start, int64_t end)
{
    char buf[4096];
    char prev = '\n';
    int64_t off = start;
    while (off < end && off - start < MTA_HEAD_SCAN) {
        long n = os_pread(fd, buf, sizeof buf, off), i;
        if (n <= 0) return 0;
        for (i = 0; i < n; i++) {
            if (buf[i] == '\n' && prev == '\n') return 0; /* the blank line: the header's end */
            if ((unsigned char)buf[i] & 0x80) return 1;
            prev = buf[i];
        }
        off += n;
    }
    return 0;
}

/* Fills the output with message text: CRLF line ends; after DATA
 * dot-stuffed and ended by the dot, with BDAT (RFC 3030 2) as they are, into
 * o->chunk, which goes out as "BDAT n" once it holds MS_BDAT_CHUNK bytes, or
 * as "BDAT n LAST" at the end. A chunk's reply is awaited before the next one
 * (O_BDAT): with PIPELINING they could follow each other unanswered, but one
 * round trip per 64 KB costs little and a refusal stops the text at once. */
static void
mta_pump_body(struct mta_sess *o)
{
    struct buf *dst = o->bdat ? &o->chunk : &o->io.out;
    while (!o->body_eof && (o->bdat ? o->chunk.len < MS_BDAT_CHUNK : o->io.out.len - o->io.out_off < 32768)) {
        const char *line;
        size_t len;
        int complete, r;
        int64_t off;
        r = mta_body_line(o, &line, &len, &complete, &off);
        if (r == -2) { mta_unconvertible(o, 1); return; }
        if (r < 0) { mta_fail_session(o, "4.3.0 cannot read the queued message"); return; }
        if (r == 0) {
            if (!o->bol) buf_adds(dst, "\r\n");
            if (!o->bdat) buf_adds(dst, ".\r\n");
            mta_close_body(o);
            o->body_eof = 1;
            o->state = O_DOT;
            o->io.deadline = os_now_ms() + o->ms->cfg->relay_timeout * 1000;
            break;
        }
        if (!o->bdat && o->bol && len && line[0] == '.') buf_adds(dst, "."); /* RFC 5321 4.5.2 */
        buf_add(dst, line, len);
        if (complete) buf_adds(dst, "\r\n");
        o->bol = complete;
    }
    if (o->bdat && (o->body_eof || o->chunk.len >= MS_BDAT_CHUNK)) {
        mta_send(o, "BDAT %lu%s", (unsigned long)o->chunk.len, o->body_eof ? " LAST" : "");
        buf_add(&o->io.out, o->chunk.p ? o->chunk.p : "", o->chunk.len);
        o->chunk.len = 0;
        if (!o->body_eof) o->state = O_BDAT;
    }
}

/* The recipients are settled and some accepted: the text follows, after
 * DATA's 354 or in BDAT chunks. */
static void
mta_start_text(struct mta_sess *o)
{
    if (!o->bdat) { o->state = O_DATA; mta_send(o, "DATA"); return; }
    o->chunk.len = 0;
    o->state = O_BODY;
    mta_pump_body(o);
}

/* After EHLO/HELO: STARTTLS when the hop offers it ([relay] tls), else MAIL. */
static void
mta_after_ehlo(struct mta_sess *o)
{
    int mode = o->ms->cfg->relay_tls;
    if (!MAILSRV_ENABLE_TLS || mode == RTLS_NO || o->io.tls || (o->tls_refused && mode == RTLS_YES)) {
        mta_mail_from(o);
    } else if (o->ext_starttls && o->state == O_EHLO) {
        o->state = O_STARTTLS;
        mta_send(o, "STARTTLS");
    } else if (mode == RTLS_VERIFY) {
        char why[400];
        snprintf(why, sizeof why, "4.7.4 %s does not offer STARTTLS, and [relay] tls = verify", o->hop);
        mta_fail_session(o, why);
    } else {
        mta_mail_from(o);
    }
}

/* The handshake failed: tls = verify defers; tls = yes tries this
 * address again in plain text (Postfix's opportunistic TLS does the same). */
static void
mta_tls_failed(struct mta_sess *o)
{
    char why[600], what[128] = "TLS is not built in";
    if (o->io.tls) tls_error_text(tls_error(o->io.tls), what, sizeof what);
    snprintf(why, sizeof why, "4.7.5 TLS handshake with %s failed: %s", o->hop, what);
    if (o->ms->cfg->relay_tls == RTLS_VERIFY) { mta_fail_session(o, why); return; }
    mta_log(o, "%s; trying again without TLS", why);
    mta_close_fd(o);
    o->tls_refused = 1;
    mta_connect(o);
}

/* The handshake may finish inside any pump: then EHLO again (RFC 3207 4.2).
 * 0 while it is still going on. */
static int
mta_tls_progress(struct mta_sess *o)
{
    if (o->state != O_TLS || !tls_done(o->io.tls)) return o->state != O_TLS;
    o->state = O_EHLO;
    o->ext_size = o->ext_starttls = o->ext_dsn = o->ext_8bitmime = o->ext_pipelining = o->ext_chunking = o->ext_smtputf8 = 0;
    mta_send(o, "EHLO %s", o->ms->cfg->helo[0] ? o->ms->cfg->helo : o->ms->cfg->hostname);
    return 1;
}

static void
mta_tls_begin(struct mta_sess *o)
{
    const struct ms_config *cfg = o->ms->cfg;
    struct ms_addr a;
    const char *name = o->mx[o->mxi].host;
    int verify = cfg->relay_tls == RTLS_VERIFY && cfg->ca;
    /* the name is checked against the certificate only when it is a name */
    o->io.tls = tls_client_new(verify ? cfg->ca : NULL, net_addr_parse(name, 0, &a) != 0 ? name : NULL);
    if (!o->io.tls) { mta_tls_failed(o); return; } /* a build without TLS */
    o->io.inlen = 0;
    o->state = O_TLS;
    o->io.deadline = os_now_ms() + cfg->relay_timeout * 1000;
    if (tls_pump(o->io.tls, o->io.fd) < 0) mta_tls_failed(o);
    else mta_tls_progress(o);
}

/* The transaction is over: results go back to the entry, QUIT goes out. */
static void
mta_quit(struct mta_sess *o)
{
    o->state = O_QUIT;
    mta_send(o, "QUIT");
    mta_finish(o, 0);
}

/* One complete reply (its last line) in the current state. */
static void
mta_on_reply(struct mta_sess *o, int code, const char *line)
{
    struct qrcpt *r;
    int i;
    switch (o->state) {
    case O_GREET:
        if (code / 100 != 2) { mta_fail_session(o, line); return; }
        o->state = O_EHLO;
        mta_send(o, "EHLO %s", o->ms->cfg->helo[0] ? o->ms->cfg->helo : o->ms->cfg->hostname);
        return;
    case O_EHLO:
    case O_HELO:
        if (code / 100 == 2) { mta_after_ehlo(o); return; }
        if (o->state == O_EHLO && code / 100 == 5) { /* an old server: HELO (RFC 5321 3.2) */
            o->state = O_HELO;
            o->ext_size = o->ext_starttls = o->ext_dsn = o->ext_8bitmime = o->ext_pipelining = o->ext_chunking =
                o->ext_smtputf8 = 0; /* no extensions after HELO */
            mta_send(o, "HELO %s", o->ms->cfg->helo[0] ? o->ms->cfg->helo : o->ms->cfg->hostname);
            return;
        }
        mta_fail_session(o, line);
        return;
    case O_STARTTLS:
        if (code == 220) { mta_tls_begin(o); return; }
        if (o->ms->cfg->relay_tls == RTLS_VERIFY) { mta_fail_session(o, line); return; }
        mta_mail_from(o);
        return;
    case O_MAIL:
        /* a 4xx drops the connection (the next host), pipelined replies still due or not */
        if (code / 100 == 4) { mta_fail_session(o, line); return; }
        if (code / 100 != 2) {
            for (i = 0; i < o->nri; i++) {
                r = &o->e->r[o->ri[i]];
                r->result = 5;
                ms_strlcpy(r->error, line, sizeof r->error);
            }
            if (!o->pipelined) { mta_quit(o); return; }
            o->mail_refused = 1; /* the group's RCPT (and DATA) replies come next: read, not used */
            o->rcpt_at = o->nrcpt_sent;
            o->state = O_RCPT;
            return;
        }
        if ((o->rcpt_at = mta_next_rcpt(o, 0)) < 0) { mta_quit(o); return; }
        o->state = O_RCPT;
        if (!o->pipelined) mta_send_rcpt(o, o->rcpt_at);
        return;
    case O_RCPT:
        if (o->mail_refused) {
            if (--o->rcpt_at > 0) return;
        } else {
            r = &o->e->r[o->ri[o->rcpt_at]];
            r->result = code / 100 == 2 ? 2 : code / 100 == 5 ? 5 : 4;
            if (r->result != 2) ms_strlcpy(r->error, line, sizeof r->error);
            else o->naccepted++;
            o->rcpt_at = mta_next_rcpt(o, o->rcpt_at + 1);
            if (o->rcpt_at >= 0) { if (!o->pipelined) mta_send_rcpt(o, o->rcpt_at); return; }
        }
        if (o->data_sent) { o->state = O_DATA; return; } /* its reply comes next */
        if (o->naccepted && !o->mail_refused && mta_open_body(o) == 0) { mta_start_text(o); return; }
        if (o->naccepted) mta_set_accepted(o, 4, "4.3.0 cannot read the queued message");
        mta_quit(o);
        return;
    case O_DATA:
        if (code == 354 && (!o->naccepted || o->mail_refused)) {
            /* RFC 2920 3.1: DATA accepted though no recipient was: a lone dot ends it */
            mta_close_body(o);
            o->state = O_DOT;
            buf_adds(&o->io.out, ".\r\n");
            return;
        }
        if (code == 354) { o->state = O_BODY; mta_pump_body(o); return; }
        mta_set_accepted(o, code / 100 == 5 ? 5 : 4, line);
        mta_quit(o);
        return;
    case O_BDAT: /* RFC 3030 2: each chunk is answered; a refusal ends the transaction */
        if (code / 100 == 2) { o->state = O_BODY; mta_pump_body(o); return; }
        mta_set_accepted(o, code / 100 == 5 ? 5 : 4, line);
        mta_quit(o);
        return;
    case O_DOT:
        if (!o->naccepted || o->mail_refused) { mta_quit(o); return; } /* the lone dot's reply */
        if (code / 100 == 2) {
            for (i = 0; i < o->nri; i++) {
                r = &o->e->r[o->ri[i]];
                if (r->result != 2) continue;
                r->state = Q_DELIVERED;
                mta_log(o, "relayed %s to=<%s> via %s: %s tls=%s", o->e->id, r->addr, o->hop, line, o->io.tls ? "yes" : "no");
                if ((r->notify & DSN_SUCCESS) && !o->ext_dsn) { /* RFC 3461 6.2.6: we report it "relayed" */
                    r->relayed = 1;
                    ms_strlcpy(r->remote_mta, o->mx[o->mxi].host, sizeof r->remote_mta);
                    ms_strlcpy(r->error, line, sizeof r->error);
                }
            }
            if (mta_take_next(o) == 0) return;
        } else {
            mta_set_accepted(o, code / 100 == 5 ? 5 : 4, line);
        }
        mta_quit(o);
        return;
    case O_QUIT:
        mta_close_fd(o);
        o->is_done = 1;
        return;
    }
}

static void
mta_read(struct mta_sess *o)
{
    long n;
    size_t len;
    if ((n = io_read(&o->io)) == -2) return;
    if (n <= 0) {
        mta_broken(o, "4.4.2 connection lost");
        return;
    }
    while ((len = io_line(&o->io)) != 0) {
        char line[sizeof o->inbuf + 1];
        size_t text = len - 1; /* without the LF */
        int code, last;
        if (text && o->io.in[text - 1] == '\r') text--;
        ms_visible(line, sizeof line, o->io.in, text); /* printable: it goes into logs and bounces */
        io_consume(&o->io, len);
        if (o->ms->verbose) mta_log(o, "< %s", line);
        /* RFC 5321 4.2.1: every line of a reply carries the same code */
        if ((last = smtp_reply_line(line, &code)) < 0 || (o->reply_code && code != o->reply_code)) {
            mta_broken(o, "4.5.0 malformed reply from the remote server");
            return;
        }
        /* EHLO keywords: every line of the reply but the first (RFC 5321 4.1.1.1) */
        if (o->state == O_EHLO && o->reply_code && line[3]) {
            if (ms_strncaseeq(line + 4, "SIZE", 4) && (!line[8] || line[8] == ' ')) o->ext_size = 1;
            if (ms_strcaseeq(line + 4, "STARTTLS")) o->ext_starttls = 1;
            if (ms_strcaseeq(line + 4, "DSN")) o->ext_dsn = 1;
            if (ms_strcaseeq(line + 4, "8BITMIME")) o->ext_8bitmime = 1;
            if (ms_strcaseeq(line + 4, "PIPELINING")) o->ext_pipelining = 1;
            if (ms_strcaseeq(line + 4, "CHUNKING")) o->ext_chunking = 1;
            if (ms_strcaseeq(line + 4, "SMTPUTF8")) o->ext_smtputf8 = 1;
        }
        o->reply_code = last ? 0 : code;
        if (!last) continue;
        o->io.deadline = os_now_ms() + o->ms->cfg->relay_timeout * 1000;
        mta_on_reply(o, code, line);
        if (o->io.fd == MS_BAD_SOCK || o->is_done) return;
    }
    if (o->io.inlen == o->io.insize) mta_broken(o, "4.5.0 reply line too long");
}

static void
mta_io(struct mta_sess *o, short re)
{
    if (o->state == O_DNS) { mta_dns_io(o, re); return; }
    if (o->state == O_CONNECT) {
        int err;
        if (!(re & (POLLOUT | POLLERR | POLLHUP))) return;
        if ((err = net_sock_error(o->io.fd)) != 0) {
            snprintf(o->error, sizeof o->error, "4.4.1 cannot connect to %s: %s", o->hop, net_strerror(err));
            mta_log(o, "%s", o->error);
            mta_next(o);
            return;
        }
        o->state = O_GREET;
        return;
    }
    if (o->io.tls) {
        if (tls_pump(o->io.tls, o->io.fd) < 0 && !tls_app_ready(o->io.tls)) { mta_broken(o, "4.4.2 connection lost"); return; }
        if (!mta_tls_progress(o)) return;
        if (tls_app_ready(o->io.tls)) re |= POLLIN;
    }
    if (re & (POLLIN | POLLERR | POLLHUP)) mta_read(o);
    while (o->io.fd != MS_BAD_SOCK && !o->is_done) {
        if (o->state == O_BODY) mta_pump_body(o);
        if (o->io.fd == MS_BAD_SOCK || !io_pending(&o->io)) break;
        if (io_write(&o->io) < 0) {
            mta_broken(o, "4.4.2 connection lost");
            break;
        }
        if (io_pending(&o->io) || o->state != O_BODY) break; /* the socket is full, or a command is out */
    }
}

/* What poll() said of o (0: nothing, but decrypted replies may wait). */
static void
mta_on_io(struct transport *io, short revents)
{
    struct mta_sess *o = IO_OWNER(io, struct mta_sess, io);
    if (o->is_done || (!revents && !io_tls_input(io))) return;
    mta_io(o, revents ? revents : POLLIN);
}

/* What to poll o for this turn (-1: it has no socket now), and when it
 * needs a turn anyway (*wake). */
static int
mta_watch(struct mta_sess *o, int64_t now, int64_t *wake)
{
    if (o->io.deadline < *wake) *wake = o->io.deadline;
    if (!o->is_done && io_tls_input(&o->io)) *wake = now;
    if (o->io.fd == MS_BAD_SOCK) return -1;
    if (o->state == O_DNS) return o->dq.tcp && o->dq.sent < (size_t)o->dq.qlen + 2 ? POLLOUT : POLLIN;
    if (o->state == O_CONNECT) return POLLOUT;
    return io_events(&o->io, 1, io_pending(&o->io) || o->state == O_BODY);
}

static void
mta_timer(struct mta_sess *o, int64_t now)
{
    if (o->is_done || now < o->io.deadline) return;
    switch (o->state) {
    case O_START: mta_begin(o); return;
    case O_DNS: mta_dns_timeout(o); return;
    case O_CONNECT:
        if (o->io.fd != MS_BAD_SOCK)
            snprintf(o->error, sizeof o->error, "4.4.1 cannot connect to %s: timeout", o->hop);
        mta_log(o, "%s", o->error);
        mta_next(o);
        return;
    case O_QUIT: mta_close_fd(o); o->is_done = 1; return;
    default: {
        char why[512];
        snprintf(why, sizeof why, "4.4.2 timeout after %lds waiting for %s", o->ms->cfg->relay_timeout, o->hop);
        mta_fail_session(o, why);
    }
    }
}

/* ---- the queue runner ---- */

/* Hands the results back to the entry: recipients not settled get o->error,
 * as a refusal when perm (the domain cannot receive mail) or a deferral. */
static void
mta_finish(struct mta_sess *o, int perm)
{
    struct qentry *e = o->e;
    int i;
    if (!e) return;
    for (i = 0; i < o->nri; i++) {
        struct qrcpt *r = &e->r[o->ri[i]];
        if (r->result == 0) {
            r->result = perm ? 5 : 4;
            ms_strlcpy(r->error, o->error[0] ? o->error : "4.4.0 delivery failed", sizeof r->error);
        }
        if (r->result == 4) mta_log(o, "deferred %s to=<%s>: %s", e->id, r->addr, r->error);
    }
    o->e = NULL;
    mta_close_body(o);
    if (--e->active == 0) relay_finish(o->ms, e);
}

/* No (more) hosts to try: settle the recipients and end the session. */
static void
mta_give_up(struct mta_sess *o, int perm)
{
    mta_close_fd(o);
    o->is_done = 1;
    mta_finish(o, perm);
}

/* After a delivered transaction, the same connection takes the next due
 * entry whose recipients are all in this domain (Postfix's connection
 * reuse): no new connect, greeting and EHLO per message. -1 if there is none. */
static int
mta_take_next(struct mta_sess *o)
{
    struct mailsrv *ms = o->ms;
    struct qentry *next = NULL;
    int64_t now;
    long usec;
    int i, j, n = 0;
    if (ms->stopping || ++o->ntx >= MS_OUT_TX_MAX) return -1;
    os_wallclock(&now, &usec);
    for (i = 0; i < ms->nqueue && !next; i++) {
        struct qentry *e = ms->queue[i];
        if (e->active || e->next_try > now) continue;
        for (j = 0, n = 0; j < e->nr && n >= 0; j++)
            if (e->r[j].state == Q_PENDING) n = ms_strcaseeq(strrchr(e->r[j].addr, '@') + 1, o->domain) ? n + 1 : -1;
        if (n > 0) next = e;
    }
    if (!next) return -1;
    mta_finish(o, 0);
    o->e = next;
    next->active++;
    o->ri = xrealloc(o->ri, sizeof *o->ri * (size_t)next->nr);
    for (j = 0, o->nri = 0; j < next->nr; j++)
        if (next->r[j].state == Q_PENDING) o->ri[o->nri++] = j;
    mta_mail_from(o);
    return 0;
}

static const struct cfg_route *
cfg_find_route(const struct ms_config *c, const char *domain)
{
    int i;
    for (i = 0; i < c->nroutes; i++)
        if (ms_strcaseeq(c->routes[i].domain, domain)) return &c->routes[i];
    return NULL;
}

/* Picks the next hop (RFC 5321 5.1, and the issue's order): the [route]
 * entry, else the smarthost, else MX records. */
static void
mta_begin(struct mta_sess *o)
{
    const struct ms_config *cfg = o->ms->cfg;
    const struct cfg_route *rt = cfg_find_route(cfg, o->domain);
    const struct cfg_hop *hop = rt ? &rt->hop : cfg->smarthost.host[0] ? &cfg->smarthost : NULL;
    int i;
    if (cfg->ndns) {
        for (i = 0; i < cfg->ndns; i++) { ms_strlcpy(o->dns_ns[i], cfg->dns[i], 64); o->dns_port[i] = cfg->dns_port[i]; }
        o->ndns = cfg->ndns;
    } else {
        o->ndns = os_dns_servers(o->dns_ns, MS_DNS_MAX_NS);
        for (i = 0; i < o->ndns; i++) o->dns_port[i] = 53;
    }
    o->no_address = 1;
    if (hop) {
        ms_strlcpy(o->mx[0].host, hop->host, sizeof o->mx[0].host);
        o->nmx = 1;
        o->mxi = 0;
        o->port = hop->port;
        mta_resolve_host(o);
    } else {
        o->port = (unsigned)cfg->relay_port;
        mta_dns_query(o, o->domain, DNS_MX);
    }
}

/* A session for the recipients of e in one domain; it starts from the
 * timers, never inside relay_run's loop. */
static void
relay_start(struct mailsrv *ms, struct qentry *e, const char *domain, const int *ri, int nri)
{
    struct mta_sess *o = xrealloc(NULL, sizeof *o);
    memset(o, 0, sizeof *o);
    o->ms = ms;
    o->id = ++ms->next_oid;
    o->e = e;
    e->active++;
    io_init(&o->io, MS_BAD_SOCK, o->inbuf, sizeof o->inbuf, mta_on_io);
    o->msg_fd = -1;
    ms_strlcpy(o->domain, domain, sizeof o->domain);
    o->ri = xrealloc(NULL, sizeof *o->ri * (size_t)nri);
    memcpy(o->ri, ri, sizeof *o->ri * (size_t)nri);
    o->nri = nri;
    o->state = O_START;
    o->io.deadline = 0;
    if (ms->nout == ms->capout) {
        ms->capout = ms->capout ? ms->capout * 2 : 16;
        ms->out = xrealloc(ms->out, sizeof *ms->out * (size_t)ms->capout);
    }
    ms->out[ms->nout++] = o;
}

static void
mta_free(struct mta_sess *o)
{
    mta_close_fd(o);
    buf_free(&o->io.out);
    buf_free(&o->chunk);
    free(o->ri);
    free(o);
}

/* Received: lines in the queued message's header (loop detection). */
static int
queue_count_hops(const char *qdir, const char *id)
{
    char path[MS_PATH_FILE];
    struct line_reader lr;
    const char *line;
    size_t len;
    int complete, hops = 0, fd, n = 0;
    int64_t off;
    if (ms_fmt(path, sizeof path, "%s/%s.msg", qdir, id) < 0 || (fd = os_open(path, O_RDONLY, 0)) < 0) return 0;
    lr_init(&lr, fd, 0, 65536);
    while (lr_next(&lr, &line, &len, &complete, &off) == 1 && len && n++ < 2000)
        if (len >= 9 && ms_strncaseeq(line, "Received:", 9)) hops++;
    lr_free(&lr);
    os_close(fd);
    return hops;
}

/* The enhanced status code (RFC 3463) in an error text, or class.0.0. */
static void
relay_status(const char *err, char *out, size_t n)
{
    const char *p = err;
    if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[2]) && p[3] == ' ') p += 4;
    if ((p[0] == '2' || p[0] == '4' || p[0] == '5') && p[1] == '.' && isdigit((unsigned char)p[2])) {
        size_t l = strspn(p, "0123456789.");
        snprintf(out, n, "%.*s", (int)(l < 12 ? l : 12), p);
    } else {
        snprintf(out, n, "%c.0.0", err[0] == '4' ? '4' : '5');
    }
}

/* A decoded xtext value as one visible header line (RFC 3464 2.2.1, 2.3.1:
 * Original-Envelope-Id and Original-Recipient carry it decoded). */
static void
dsn_decoded(const char *x, char *out, size_t n)
{
    char raw[MS_ORCPT_MAX + 1];
    long k = xtext_decode(x, strlen(x), raw, sizeof raw);
    ms_visible(out, n, k < 0 ? x : raw, k < 0 ? strlen(x) : (size_t)k);
}

/* Appends the original message to a report from fd (its Return-Path line
 * left out): all of it (message/rfc822, RET=FULL) or its header
 * (text/rfc822-headers). */
static void
dsn_add_original(struct store_msg *m, int fd, int full)
{
    struct line_reader lr;
    struct os_stat st;
    const char *line;
    size_t len;
    int complete, first = 1;
    int64_t off;
    if (os_fstat(fd, &st) != 0) return;
    lr_init(&lr, fd, 0, full || st.size < MS_HEADER_MAX ? st.size : MS_HEADER_MAX);
    while (lr_next(&lr, &line, &len, &complete, &off) == 1 && (len || full)) {
        if (!(first && ms_strncaseeq(line, "Return-Path:", 12))) {
            msg_write(m, line, len);
            if (complete) msg_write(m, "\n", 1);
        }
        first = 0;
    }
    lr_free(&lr);
}

/* A delivery status notification (RFC 3464) from MAILER-DAEMON with the
 * null sender (it never causes another: RFC 3461 6.2) to `to`, about the
 * message in fd: failures (a bounce) or successes, by the items' Action.
 * -1 if it could not be stored. */
static int
dsn_report(struct mailsrv *ms, const char *to, const char *about, const char *envid, int ret, time_t arrived,
           const struct dsn_item *it, int n, int fd)
{
    const struct ms_config *cfg = ms->cfg;
    struct targets t = {0};
    struct store_msg m;
    struct buf b = {0};
    char date[64], arrival[64], vis[MS_ORCPT_MAX + 8];
    const char *err = NULL;
    int i, rc = 0, failed = strcmp(it[0].action, "failed") == 0, full = ret == DSN_RET_FULL && fd >= 0;
    if (addr_targets(cfg, to, &t) != RES_OK || t.n == 0) {
        ms_log(ms, "no report for %s: the sender <%s> cannot receive mail", about, to);
        targets_free(&t);
        return 0;
    }
    memset(&m, 0, sizeof m);
    if (msg_open(ms, &m) != 0) {
        ms_log(ms, "cannot write a report for %s: %s", about, strerror(errno));
        targets_free(&t);
        return -1;
    }
    ms_rfc5322_date(date, sizeof date, m.when);
    ms_rfc5322_date(arrival, sizeof arrival, arrived);
    buf_printf(&b, "Return-Path: <>\nFrom: Mail Delivery System <MAILER-DAEMON@%s>\nTo: <%s>\n"
               "Subject: %s\nDate: %s\nMessage-ID: <%s@%s>\n"
               "Auto-Submitted: auto-replied\nMIME-Version: 1.0\n"
               "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"%s/%s\"\n\n"
               "This is a MIME-encapsulated message.\n\n--%s/%s\nContent-Description: Notification\n"
               "Content-Type: text/plain; charset=us-ascii\n\nThis is the mail system at host %s.\n\n%s\n\n",
               cfg->hostname, to, failed ? "Undelivered Mail Returned to Sender" : "Successful Mail Delivery Report",
               date, m.id, cfg->hostname, m.id, cfg->hostname, m.id, cfg->hostname, cfg->hostname,
               failed ? "Your message could not be delivered to one or more recipients."
                      : "Your message was delivered to the recipients below, or passed on to a system that\n"
                        "sends no delivery reports (relayed) or to the members of an alias (expanded).");
    for (i = 0; i < n; i++)
        buf_printf(&b, "<%s>: %s\n", it[i].addr, failed ? it[i].diag : it[i].action);
    buf_printf(&b, "\n--%s/%s\nContent-Description: Delivery report\nContent-Type: message/delivery-status\n\n"
               "Reporting-MTA: dns; %s\n", m.id, cfg->hostname, cfg->hostname);
    if (envid && envid[0]) {
        dsn_decoded(envid, vis, sizeof vis);
        buf_printf(&b, "Original-Envelope-Id: %s\n", vis);
    }
    buf_printf(&b, "X-Mailsrv-Queue-ID: %s\nArrival-Date: %s\n", about, arrival);
    for (i = 0; i < n; i++) {
        const struct dsn_item *d = &it[i];
        buf_adds(&b, "\n");
        if (d->orcpt && d->orcpt[0]) {
            const char *semi = strchr(d->orcpt, ';');
            dsn_decoded(semi ? semi + 1 : d->orcpt, vis, sizeof vis);
            buf_printf(&b, "Original-Recipient: %.*s;%s\n", semi ? (int)(semi - d->orcpt) : 6, semi ? d->orcpt : "rfc822", vis);
        }
        buf_printf(&b, "Final-Recipient: rfc822; %s\nAction: %s\nStatus: %s\n", d->addr, d->action, d->status);
        if (d->remote_mta && d->remote_mta[0]) buf_printf(&b, "Remote-MTA: dns; %s\n", d->remote_mta);
        if (d->diag && d->diag[0]) {
            if (isdigit((unsigned char)d->diag[0]) && isdigit((unsigned char)d->diag[1]) && d->diag[3] == ' ')
                buf_printf(&b, "Diagnostic-Code: smtp; %s\n", d->diag);
            else
                buf_printf(&b, "Diagnostic-Code: X-mailsrv; %s\n", d->diag);
        }
    }
    buf_printf(&b, "\n--%s/%s\nContent-Description: %s\nContent-Type: %s\n\n", m.id, cfg->hostname,
               full ? (failed ? "Undelivered Message" : "Delivered Message")
                    : (failed ? "Undelivered Message Headers" : "Message Headers"),
               full ? "message/rfc822" : "text/rfc822-headers");
    msg_write(&m, b.p, b.len);
    b.len = 0;
    if (fd >= 0) dsn_add_original(&m, fd, full);
    buf_printf(&b, "\n--%s/%s--\n", m.id, cfg->hostname);
    msg_write(&m, b.p, b.len);
    if (msg_inject(ms, &m, &t, &err) != 0) {
        ms_log(ms, "cannot store the report for %s: %s (%s)", about, err ? err : "write error", strerror(errno));
        rc = -1;
    } else
        ms_log(ms, "%s for %s sent to <%s> as %s", failed ? "bounce" : "success report", about, to, m.id);
    buf_free(&b);
    targets_free(&t);
    return rc;
}

/* Writes the report on the n recipients of it for entry e (RFC 3464), with
 * the queued message as its third part; 0 when n is 0. */
static int
relay_report(struct mailsrv *ms, const struct qentry *e, const struct dsn_item *it, int n)
{
    char path[MS_PATH_FILE];
    int fd = -1, rc;
    if (!n) return 0;
    if (ms_fmt(path, sizeof path, "%s/%s.msg", ms->qdir, e->id) >= 0) fd = os_open(path, O_RDONLY, 0);
    rc = dsn_report(ms, e->from, e->id, e->envid, e->ret, (time_t)e->arrived, it, n, fd);
    if (fd >= 0) os_close(fd);
    return rc;
}

/* One RFC 3464 report for the recipients refused in this round (result 5)
 * whose NOTIFY allows it (absent or with FAILURE: RFC 3461 4.1), to the
 * original sender; never for a message whose sender was <>.
 * -1: the report could not be stored (the caller keeps the entry to retry). */
static int
relay_bounce(struct mailsrv *ms, struct qentry *e)
{
    char (*status)[16];
    struct dsn_item *it;
    int i, n = 0, rc;
    if (!e->from[0]) { ms_log(ms, "no bounce for %s: its sender was <> (RFC 5321 6.1)", e->id); return 0; }
    if (list_relay_bounce(ms, e)) return 0;
    it = xrealloc(NULL, sizeof *it * (size_t)e->nr);
    status = xrealloc(NULL, sizeof *status * (size_t)e->nr);
    for (i = 0; i < e->nr; i++) {
        const struct qrcpt *q = &e->r[i];
        if (q->result != 5 || q->state != Q_PENDING) continue;
        if (q->notify && !(q->notify & DSN_FAILURE)) {
            ms_log(ms, "no bounce for %s to=<%s>: NOTIFY=%s", e->id, q->addr, q->notify & DSN_NEVER ? "NEVER" : "without FAILURE");
            continue;
        }
        relay_status(q->error, status[n], sizeof status[n]);
        memset(&it[n], 0, sizeof it[n]);
        it[n].addr = q->addr;
        it[n].orcpt = q->orcpt;
        it[n].action = "failed";
        it[n].status = status[n];
        it[n].diag = q->error;
        n++;
    }
    rc = relay_report(ms, e, it, n);
    free(it);
    free(status);
    return rc;
}

/* A report for the recipients a hop without DSN accepted in this round that
 * asked for SUCCESS (RFC 3461 6.2.6: "relayed"). As relay_bounce. */
static int
relay_success_report(struct mailsrv *ms, struct qentry *e)
{
    struct dsn_item *it;
    int i, n = 0, rc;
    size_t want = 0;
    if (!e->from[0]) return 0;
    for (i = 0; i < e->nr; i++) want += e->r[i].relayed != 0;
    /* none asked for one: nothing is allocated between the next hop's 250 and the entry's removal,
     * where a failure would send the message twice (fault_malloc) */
    if (!want) return 0;
    it = xrealloc(NULL, sizeof *it * want);
    for (i = 0; i < e->nr; i++) {
        const struct qrcpt *q = &e->r[i];
        if (!q->relayed) continue;
        memset(&it[n], 0, sizeof it[n]);
        it[n].addr = q->addr;
        it[n].orcpt = q->orcpt;
        it[n].action = "relayed";
        it[n].status = "2.0.0";
        it[n].remote_mta = q->remote_mta;
        it[n].diag = q->error;
        n++;
    }
    rc = relay_report(ms, e, it, n);
    free(it);
    return rc;
}

static void
relay_remove(struct mailsrv *ms, struct qentry *e)
{
    char path[MS_PATH_FILE];
    int i;
    if (ms_fmt(path, sizeof path, "%s/%s.env", ms->qdir, e->id) >= 0) os_unlink(path);
    os_fsync_dir(ms->qdir); /* the entry is gone before its text is */
    if (ms_fmt(path, sizeof path, "%s/%s.msg", ms->qdir, e->id) >= 0) os_unlink(path);
    for (i = 0; i < ms->nqueue && ms->queue[i] != e; i++) {}
    if (i < ms->nqueue) {
        memmove(ms->queue + i, ms->queue + i + 1, sizeof *ms->queue * (size_t)(ms->nqueue - i - 1));
        ms->nqueue--;
    }
    qentry_free(e);
}

/* All sessions of e are done: bounce refusals (and expired deferrals),
 * schedule the retry or remove the entry. The bounce is stored before the
 * entry is updated, so a crash can repeat a bounce but never lose one. */
static void
relay_finish(struct mailsrv *ms, struct qentry *e)
{
    const struct ms_config *cfg = ms->cfg;
    int64_t now, delay;
    long usec;
    int i, pending = 0, refused = 0;
    os_wallclock(&now, &usec);
    /* domains left out by max_outbound (relay_run) are this attempt's still: due at once, the
     * results so far kept (the tried ones are not started again) */
    for (i = 0; i < e->nr && !(e->r[i].state == Q_PENDING && !e->r[i].result); i++) {}
    if (i < e->nr) { e->next_try = now; ms->relay_kick = 1; return; }
    for (i = 0; i < e->nr; i++) {
        if (e->r[i].state != Q_PENDING) continue;
        if (e->r[i].result == 5) refused++;
        else pending++;
    }
    if (pending && now - e->arrived >= cfg->expire) {
        for (i = 0; i < e->nr; i++) {
            struct qrcpt *r = &e->r[i];
            char last[300];
            if (r->state != Q_PENDING || r->result == 5) continue;
            ms_strlcpy(last, r->error[0] ? r->error : "none", sizeof last);
            snprintf(r->error, sizeof r->error, "4.4.7 delivery time expired after %lds; last error: %s", cfg->expire, last);
            r->result = 5;
        }
        refused += pending;
        pending = 0;
    }
    if (refused && relay_bounce(ms, e) != 0) { /* no report stored: the refused stay to be tried (and reported) again */
        pending += refused;
        refused = 0;
    }
    if (relay_success_report(ms, e) != 0) /* they are delivered: not tried again for a report */
        ms_log(ms, "no success report for %s: it could not be stored", e->id);
    for (i = 0; i < e->nr; i++) {
        struct qrcpt *r = &e->r[i];
        if (r->state == Q_PENDING && r->result == 5 && refused) {
            r->state = Q_BOUNCED;
            ms_log(ms, "bounced %s to=<%s>: %s", e->id, r->addr, r->error);
        }
        if (r->relayed) r->error[0] = 0; /* the 250 was only for the report: not a failure to keep */
        r->result = r->relayed = 0;
    }
    ms->relay_kick = 1;
    if (!pending) { relay_remove(ms, e); return; }
    for (delay = cfg->retry, i = 0; i < e->tries && delay < MS_RETRY_CAP; i++) delay *= 2;
    e->tries++;
    e->next_try = now + (delay < MS_RETRY_CAP ? delay : MS_RETRY_CAP);
    if (queue_env_update(ms->qdir, e) != 0)
        ms_log(ms, "cannot update the queue entry %s: %s", e->id, strerror(errno));
}

/* Is recipient j the first pending one of its domain (the one that starts its session)? Only
 * recipients not tried yet in this attempt count (result 0: see relay_finish). */
static int
qentry_first_of_domain(const struct qentry *e, int j)
{
    const char *dj = strrchr(e->r[j].addr, '@');
    int k;
    if (e->r[j].state != Q_PENDING || e->r[j].result) return 0;
    for (k = 0; k < j; k++)
        if (e->r[k].state == Q_PENDING && !e->r[k].result && ms_strcaseeq(strrchr(e->r[k].addr, '@'), dj)) return 0;
    return 1;
}

/* Starts sessions for due entries, one per destination domain. */
static void
relay_run(struct mailsrv *ms)
{
    int64_t now, next = INT64_MAX;
    long usec;
    struct qentry **due;
    int i, j, k, ndue = 0;
    int *ri;
    ms->relay_kick = 0;
    ms->relay_wake = INT64_MAX;
    if (ms->stopping || !ms->nqueue) return;
    os_wallclock(&now, &usec);
    due = xrealloc(NULL, sizeof *due * (size_t)ms->nqueue);
    for (i = 0; i < ms->nqueue; i++) {
        struct qentry *e = ms->queue[i];
        if (e->active) continue;
        if (e->next_try <= now) due[ndue++] = e;
        else if (e->next_try < next) next = e->next_try;
    }
    if (next != INT64_MAX) ms->relay_wake = os_now_ms() + (next - now) * 1000;
    for (i = 0; i < ndue; i++) { /* relay_finish may change ms->queue: walk the copy */
        struct qentry *e = due[i];
        int groups = 0;
        if (queue_count_hops(ms->qdir, e->id) > MS_HOPS_MAX) {
            for (j = 0; j < e->nr; j++) {
                e->r[j].result = 5;
                snprintf(e->r[j].error, sizeof e->r[j].error, "5.4.6 more than %d Received: lines (a mail loop?)", MS_HOPS_MAX);
            }
            relay_finish(ms, e);
            continue;
        }
        for (j = 0; j < e->nr; j++) groups += qentry_first_of_domain(e, j);
        if (ms->nout && ms->nout + groups > ms->cfg->max_outbound) break; /* a session's end kicks us again */
        ri = xrealloc(NULL, sizeof *ri * (size_t)e->nr);
        /* more domains than max_outbound: the rest start when these end (relay_finish) */
        for (j = 0; j < e->nr && ms->nout < ms->cfg->max_outbound; j++) {
            const char *dj = strrchr(e->r[j].addr, '@');
            int n = 0;
            if (!qentry_first_of_domain(e, j)) continue;
            for (k = j; k < e->nr; k++)
                if (e->r[k].state == Q_PENDING && ms_strcaseeq(strrchr(e->r[k].addr, '@'), dj)) ri[n++] = k;
            relay_start(ms, e, dj + 1, ri, n);
        }
        free(ri);
    }
    free(due);
}

/* Takes a committed entry into the runner (after a receipt, at start). */
static void
relay_enqueue(struct mailsrv *ms, const char *id)
{
    struct qentry *e = queue_env_read(ms->qdir, id);
    if (!e) { ms_log(ms, "queue entry %s is unreadable; left in %s", id, ms->qdir); return; }
    if (ms->nqueue == ms->capqueue) {
        ms->capqueue = ms->capqueue ? ms->capqueue * 2 : 64;
        ms->queue = xrealloc(ms->queue, sizeof *ms->queue * (size_t)ms->capqueue);
    }
    ms->queue[ms->nqueue++] = e;
    ms->relay_kick = 1;
}

/* At start: load ID.env entries; remove what a crash left half made. */
static int
relay_scan_entry(void *ctx, const char *name)
{
    struct mailsrv *ms = ctx;
    char id[64], path[MS_PATH_FILE];
    size_t n = strlen(name);
    struct os_stat st;
    if (n < 5 || n - 4 >= sizeof id) return 0;
    memcpy(id, name, n - 4);
    id[n - 4] = 0;
    if (strcmp(name + n - 4, ".env") == 0) {
        relay_enqueue(ms, id);
    } else if (strcmp(name + n - 4, ".msg") == 0) {
        if (ms_fmt(path, sizeof path, "%s/%s.env", ms->qdir, id) >= 0 && os_stat(path, &st) != 0 &&
            ms_fmt(path, sizeof path, "%s/%s", ms->qdir, name) >= 0)
            os_unlink(path); /* never acknowledged */
    } else if (strstr(name, ".env.tmp") && ms_fmt(path, sizeof path, "%s/%s", ms->qdir, name) >= 0) {
        os_unlink(path);
    }
    return 0;
}

/* `mailsrv flush` leaves QUEUE/flush: retry everything now. */
static void
relay_check_flush(struct mailsrv *ms, int64_t now)
{
    char path[MS_PATH_FILE];
    struct os_stat st;
    if (now < ms->next_flush_check) return;
    ms->next_flush_check = now + MS_QUEUE_CHECK_MS;
    if (ms_fmt(path, sizeof path, "%s/flush", ms->qdir) < 0 || os_stat(path, &st) != 0) return;
    os_unlink(path);
    ms_log(ms, "flush requested: retrying %d queued messages now", ms->nqueue);
    relay_flush(ms);
}

/* Every queued message is due now (`mailsrv flush`, the web page's "Retry delivery now"). */
static void
relay_flush(struct mailsrv *ms)
{
    int i;
    for (i = 0; i < ms->nqueue; i++) ms->queue[i]->next_try = 0;
    ms->relay_kick = 1;
}

/*==== 14. Mailing lists ====*/
/*
 * [list NAME@DOMAIN] sections. Subscribing and unsubscribing are confirmed
 * by mail (a random code valid 7 days, sent to the envelope sender), so
 * nobody can subscribe or remove someone else. A post is copied once for all
 * members with the RFC 2369/2919 headers and a footer, from NAME-bounces so
 * failures come back to the list, which counts them per post. The state of
 * a list is one text file, SPOOL/DOMAIN/.lists/NAME/state, replaced whole.
 */

/* The header block of a stored message (at most MS_HEADER_MAX); returns
 * where the body starts. */
static int64_t
msg_read_header(int fd, int64_t size, struct buf *h)
{
    size_t cap = size < MS_HEADER_MAX ? (size_t)size : MS_HEADER_MAX, i;
    long n;
    h->len = 0;
    buf_reserve(h, cap);
    n = os_pread(fd, h->p, cap, 0);
    if (n <= 0) { h->p[0] = 0; return size; }
    for (i = 0; i < (size_t)n; i++)
        if (h->p[i] == '\n' && (i == 0 || h->p[i - 1] == '\n')) {
            h->len = i ? i : 0;
            h->p[h->len] = 0;
            return (int64_t)i + 1;
        }
    h->len = (size_t)n;
    if ((int64_t)n < size) /* an endless header: cut at its last line */
        while (h->len && h->p[h->len - 1] != '\n') h->len--;
    h->p[h->len] = 0;
    return (int64_t)h->len;
}

/* Copies [from, to) of fd into m. */
static void
msg_copy_range(struct store_msg *m, int fd, int64_t from, int64_t to)
{
    char chunk[16384];
    while (from < to && !m->write_failed) {
        long n = os_pread(fd, chunk, (size_t)(to - from < (int64_t)sizeof chunk ? to - from : (int64_t)sizeof chunk), from);
        if (n <= 0) { m->write_failed = 1; break; }
        msg_write(m, chunk, (size_t)n);
        from += n;
    }
}

static int
list_address(const struct cfg_list *l, int kind, const char *token, char *out, size_t n)
{
    return ms_fmt(out, n, "%s%s%s@%s", l->name, list_suffixes[kind], kind == LK_CONFIRM ? token : "", l->domain);
}

static int
list_state_path(const struct ms_config *cfg, const struct cfg_list *l, char *dir, size_t dn, char *path, size_t pn)
{
    if (ms_fmt(dir, dn, "%s/%s/.lists/%s", cfg->spool, l->domain, l->name) < 0) return -1;
    return ms_fmt(path, pn, "%s/state", dir) < 0 ? -1 : 0;
}

/* A missing file is an empty list; -1 if it cannot be read or parsed. */
static int
list_load(const struct ms_config *cfg, const struct cfg_list *l, struct list_state *st)
{
    char dir[MS_PATH_MAILBOX], path[MS_PATH_FILE], *text;
    size_t len;
    int r;
    memset(st, 0, sizeof *st);
    if (list_state_path(cfg, l, dir, sizeof dir, path, sizeof path) != 0) return -1;
    if (!(text = cfg_read_file(path, &len))) return errno == ENOENT ? 0 : -1;
    r = list_state_parse(text, st);
    free(text);
    return r;
}

/* Written whole and atomically; expired requests are dropped here. */
static int
list_save(const struct ms_config *cfg, const struct cfg_list *l, struct list_state *st, struct dirset *ds)
{
    char dir[MS_PATH_MAILBOX], path[MS_PATH_FILE], dom[MS_PATH_MAILBOX], lists[MS_PATH_MAILBOX];
    struct buf b = {0};
    int64_t now;
    long usec;
    int i, j, r = -1;
    os_wallclock(&now, &usec);
    for (i = j = 0; i < st->np; i++)
        if (now - st->p[i].time < MS_LIST_TOKEN_TTL) st->p[j++] = st->p[i];
    st->np = j;
    if (list_state_path(cfg, l, dir, sizeof dir, path, sizeof path) != 0) return -1;
    /* each new folder is made durable in its parent: DOMAIN in SPOOL, .lists in DOMAIN, NAME in .lists */
    if (ms_fmt(dom, sizeof dom, "%s/%s", cfg->spool, l->domain) < 0 || store_mkdir(dom, cfg->spool) != 0 ||
        ms_fmt(lists, sizeof lists, "%s/.lists", dom) < 0 || store_mkdir(lists, dom) != 0 || store_mkdir(dir, lists) != 0)
        return -1;
    list_state_text(st, &b);
    if (os_write_file_atomic(path, b.p, b.len) == 0) {
        if (ds) { dirset_add(ds, dir); r = 0; } /* first in the batch: before any member's copy */
        else if (os_fsync_dir(dir) == 0) r = 0;
    }
    buf_free(&b);
    return r;
}

static int
list_find_member(const struct list_state *st, const char *addr)
{
    int i;
    for (i = 0; i < st->nm; i++)
        if (ms_strcaseeq(st->m[i].addr, addr)) return i;
    return -1;
}

/* An open request with this code, not expired; -1 if none. */
static int
list_find_pending(const struct list_state *st, const char *token)
{
    int64_t now;
    long usec;
    int i;
    os_wallclock(&now, &usec);
    for (i = 0; i < st->np; i++)
        if (ms_strcaseeq(st->p[i].token, token) && now - st->p[i].time < MS_LIST_TOKEN_TTL) return i;
    return -1;
}

/* A Message-ID as one visible word for the state file ("-" if none). */
static void
list_clean_id(char *out, size_t n, const char *h, size_t hn)
{
    char v[400];
    size_t i;
    hdr_get(h, hn, "Message-ID", v, sizeof v);
    ms_visible(out, n, v, strlen(v));
    for (i = 0; out[i]; i++)
        if (out[i] == ' ') out[i] = '_';
    if (!out[0]) ms_strlcpy(out, "-", n);
}

/* A message from the list to one address: confirmation requests (from and
 * reply-to the confirmation address), notices and help (from NAME-owner).
 * Its envelope sender is NAME-bounces. -1 if it could not be stored, 1 if
 * the address is not one mail can go to (nothing sent). */
static int
list_send(struct mailsrv *ms, const struct cfg_list *l, const char *to, const char *token, const char *subject,
          const char *body)
{
    const struct ms_config *cfg = ms->cfg;
    struct targets t = {0};
    struct store_msg m;
    struct buf b = {0};
    char from[MS_PATH_MAX], date[64];
    const char *err;
    int r;
    if (addr_targets(cfg, to, &t) != RES_OK || t.n == 0) {
        ms_log(ms, "list %s@%s: no message to <%s>: not an address mail can go to", l->name, l->domain, to);
        targets_free(&t);
        return 1;
    }
    memset(&m, 0, sizeof m);
    if (msg_open(ms, &m) != 0) { targets_free(&t); return -1; }
    list_address(l, LK_BOUNCES, "", m.sender, sizeof m.sender);
    list_address(l, token ? LK_CONFIRM : LK_OWNER, token, from, sizeof from);
    ms_rfc5322_date(date, sizeof date, m.when);
    buf_printf(&b, "Return-Path: <%s>\nFrom: \"%s mailing list\" <%s>\nTo: <%s>\nSubject: %s\nDate: %s\n"
               "Message-ID: <%s@%s>\nAuto-Submitted: auto-replied\nList-Id: <%s.%s>\n%s%s%s"
               "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\n%s",
               m.sender, l->name, from, to, subject, date, m.id, cfg->hostname, l->name, l->domain,
               token ? "Reply-To: <" : "", token ? from : "", token ? ">\n" : "", body);
    msg_write(&m, b.p, b.len);
    r = msg_inject(ms, &m, &t, &err);
    if (r != 0) ms_log(ms, "list %s@%s: cannot store a message to <%s>: %s", l->name, l->domain, to, err);
    buf_free(&b);
    targets_free(&t);
    return r;
}

static void
list_help_text(const struct cfg_list *l, struct buf *b)
{
    static const char *const what[] = {"post to the list", "subscribe", "unsubscribe", "get this help"};
    static const int kinds[] = {LK_POST, LK_SUBSCRIBE, LK_UNSUBSCRIBE, LK_HELP};
    char a[MS_PATH_MAX];
    int i;
    buf_printf(b, "This is the mailing list %s@%s. Write to:\n\n", l->name, l->domain);
    for (i = 0; i < 4; i++) {
        list_address(l, kinds[i], "", a, sizeof a);
        buf_printf(b, "  %-40s to %s\n", a, what[i]);
    }
    buf_printf(b, "\nThe subject and text of a request do not matter. Subscribing and\n"
               "unsubscribing are confirmed by a reply, so nobody can do either for you.\n");
    if (l->post != LIST_POST_ANYONE)
        buf_printf(b, "Only %s may post.\n", l->post == LIST_POST_OWNER ? "the owner" : "members");
    list_address(l, LK_OWNER, "", a, sizeof a);
    buf_printf(b, "A person reads %s.\n", a);
}

/* (Un)subscribe request: a code goes to the envelope sender; nothing changes
 * until it comes back. A repeat within MS_LIST_RESEND sends nothing. An open
 * request is kept only once its confirmation is stored (else -1: the client
 * gets 451 and retries); with MS_LIST_PENDING_MAX open, the oldest goes, as
 * refusing new ones would lock the list for the 7 days of a flood's codes. */
static int
list_request(struct mailsrv *ms, const struct cfg_list *l, const char *sender, const char *peer, int unsub,
             const char *h, size_t hn)
{
    struct list_state st;
    struct list_pending p;
    struct buf b = {0};
    char subject[700], when[64], a[MS_PATH_MAX];
    unsigned char rnd[MS_LIST_TOKEN_LEN / 2];
    int64_t now;
    long usec;
    int i, member, r = -1;
    if (list_load(ms->cfg, l, &st) != 0) return -1;
    os_wallclock(&now, &usec);
    member = list_find_member(&st, sender) >= 0;
    if (member != unsub) {
        snprintf(subject, sizeof subject, "You are %s subscribed to %s@%s", member ? "already" : "not", l->name, l->domain);
        buf_printf(&b, "<%s> is %s a member of the mailing list %s@%s.\n\n", sender, member ? "already" : "not",
                   l->name, l->domain);
        list_help_text(l, &b);
        r = list_send(ms, l, sender, NULL, subject, b.p) < 0 ? -1 : 0;
        goto out;
    }
    for (i = 0; i < st.np; i++) {
        if (!ms_strcaseeq(st.p[i].addr, sender) || st.p[i].unsub != unsub) continue;
        if (now - st.p[i].time < MS_LIST_RESEND) {
            ms_log(ms, "list %s@%s: %s request from <%s> repeated within %ds: no new mail", l->name, l->domain,
                   unsub ? "unsubscribe" : "subscribe", sender, MS_LIST_RESEND);
            r = 0;
            goto out;
        }
        st.p[i--] = st.p[--st.np]; /* the new code replaces the old */
    }
    while (st.np >= MS_LIST_PENDING_MAX) {
        int old = 0;
        for (i = 1; i < st.np; i++)
            if (st.p[i].time < st.p[old].time) old = i;
        ms_log(ms, "list %s@%s: %d open requests: the oldest, %s <%s> [%s], evicted for <%s>", l->name, l->domain,
               st.np, st.p[old].unsub ? "unsubscribe" : "subscribe", st.p[old].addr, st.p[old].ip, sender);
        st.p[old] = st.p[--st.np];
    }
    memset(&p, 0, sizeof p);
    if (os_random(rnd, sizeof rnd) != 0) { /* never a guessable code: 451, the sender retries */
        ms_log(ms, "list %s@%s: %s request from <%s>: the system's random generator failed", l->name, l->domain,
               unsub ? "unsubscribe" : "subscribe", sender);
        goto out;
    }
    for (i = 0; i < (int)sizeof rnd; i++) sprintf(p.token + 2 * i, "%02x", rnd[i]);
    p.unsub = unsub;
    ms_strlcpy(p.addr, sender, sizeof p.addr);
    p.time = now;
    ms_strlcpy(p.ip, peer, sizeof p.ip);
    list_clean_id(p.id, sizeof p.id, h, hn);
    ms_rfc5322_date(when, sizeof when, (time_t)now);
    list_address(l, LK_CONFIRM, p.token, a, sizeof a);
    snprintf(subject, sizeof subject, "Confirm: %s <%s> %s %s@%s", unsub ? "unsubscribe" : "subscribe", sender,
             unsub ? "from" : "to", l->name, l->domain);
    buf_printf(&b, "Someone, probably you, asked to %s <%s> %s the mailing list\n%s@%s.\n"
               "The request came from [%s] on %s.\n\n"
               "To confirm, reply to this message, or send any message to\n\n  %s\n\n"
               "This code is valid for 7 days. If you did not ask for this, ignore this\n"
               "message: %s\n",
               unsub ? "unsubscribe" : "subscribe", sender, unsub ? "from" : "to", l->name, l->domain, peer, when, a,
               unsub ? "you will stay subscribed." : "you will not be subscribed.");
    if (list_send(ms, l, sender, p.token, subject, b.p) != 0) goto out;
    st.p = xrealloc(st.p, sizeof *st.p * (size_t)(st.np + 1));
    st.p[st.np++] = p;
    r = list_save(ms->cfg, l, &st, NULL);
    if (r == 0) ms_log(ms, "list %s@%s: %s request from <%s> [%s]: confirmation sent", l->name, l->domain,
                       unsub ? "unsubscribe" : "subscribe", sender, peer);
out:
    buf_free(&b);
    list_state_free(&st);
    return r;
}

/* Mail to NAME-confirm-TOKEN: carries out the request, keeping the proof. */
static int
list_confirm(struct mailsrv *ms, const struct cfg_list *l, const char *token, const char *peer, const char *h, size_t hn)
{
    struct list_state st;
    struct list_pending p;
    struct buf b = {0};
    char subject[700];
    int i, r;
    if (list_load(ms->cfg, l, &st) != 0) return -1;
    if ((i = list_find_pending(&st, token)) < 0) { list_state_free(&st); return 0; }
    p = st.p[i];
    st.p[i] = st.p[--st.np];
    i = list_find_member(&st, p.addr);
    if (!p.unsub && i < 0) {
        struct list_member m;
        int64_t now;
        long usec;
        memset(&m, 0, sizeof m);
        os_wallclock(&now, &usec);
        ms_strlcpy(m.addr, p.addr, sizeof m.addr);
        m.req_time = p.time;
        ms_strlcpy(m.req_ip, p.ip, sizeof m.req_ip);
        ms_strlcpy(m.req_id, p.id, sizeof m.req_id);
        m.conf_time = now;
        ms_strlcpy(m.conf_ip, peer, sizeof m.conf_ip);
        list_clean_id(m.conf_id, sizeof m.conf_id, h, hn);
        m.last_bounce = -1;
        st.m = xrealloc(st.m, sizeof *st.m * (size_t)(st.nm + 1));
        st.m[st.nm++] = m;
    } else if (p.unsub && i >= 0) {
        memmove(st.m + i, st.m + i + 1, sizeof *st.m * (size_t)(st.nm - i - 1));
        st.nm--;
    }
    r = list_save(ms->cfg, l, &st, NULL);
    list_state_free(&st);
    if (r != 0) return -1;
    ms_log(ms, "list %s@%s: <%s> %s (confirmed from [%s])", l->name, l->domain, p.addr,
           p.unsub ? "unsubscribed" : "subscribed", peer);
    snprintf(subject, sizeof subject, "%s %s@%s", p.unsub ? "Goodbye from" : "Welcome to", l->name, l->domain);
    buf_printf(&b, "<%s> is %s the mailing list %s@%s.\n\n", p.addr, p.unsub ? "no longer a member of" : "now a member of",
               l->name, l->domain);
    list_help_text(l, &b);
    list_send(ms, l, p.addr, NULL, subject, b.p); /* done already: a lost notice is no reason to refuse */
    buf_free(&b);
    return 0;
}

/* One failed delivery of post `seq` to addr: a member is removed after
 * bounce_limit posts in a row, and the owner told. 1 if st changed. */
static int
list_count_bounce(struct mailsrv *ms, const struct cfg_list *l, struct list_state *st, const char *addr, long seq)
{
    struct buf b = {0};
    char subject[700];
    int i = list_find_member(st, addr);
    struct list_member *m;
    if (i < 0 || seq <= st->m[i].last_bounce) return 0; /* a second report for one post counts once */
    m = &st->m[i];
    m->bounces = m->last_bounce == seq - 1 ? m->bounces + 1 : 1;
    m->last_bounce = seq;
    ms_log(ms, "list %s@%s: post %ld to <%s> bounced (%d in a row)", l->name, l->domain, seq, addr, m->bounces);
    if (m->bounces < l->bounce_limit) return 1;
    snprintf(subject, sizeof subject, "%s removed from %s@%s", addr, l->name, l->domain);
    buf_printf(&b, "<%s> was removed from the mailing list %s@%s: the last %d posts sent\n"
               "to it bounced (bounce_limit = %ld).\n", addr, l->name, l->domain, m->bounces, l->bounce_limit);
    memmove(st->m + i, st->m + i + 1, sizeof *st->m * (size_t)(st->nm - i - 1));
    st->nm--;
    ms_log(ms, "list %s@%s: <%s> removed after %ld bounced posts", l->name, l->domain, addr, l->bounce_limit);
    list_send(ms, l, l->owner, NULL, subject, b.p);
    buf_free(&b);
    return 1;
}

static int
list_count_bounces(struct mailsrv *ms, const struct cfg_list *l, char (*addr)[MS_PATH_MAX], int n, long seq)
{
    struct list_state st;
    int i, changed = 0, r = 0;
    if (list_load(ms->cfg, l, &st) != 0) return -1;
    if (seq < 0) seq = st.seq; /* a report without the post number: take the latest post */
    for (i = 0; i < n; i++) changed |= list_count_bounce(ms, l, &st, addr[i], seq);
    if (changed) r = list_save(ms->cfg, l, &st, NULL);
    list_state_free(&st);
    return r;
}

/* Our relay gave up on recipients of mail from NAME-bounces: counted here,
 * with no delivery report. 0 if the entry is not a list's. */
static int
list_relay_bounce(struct mailsrv *ms, struct qentry *e)
{
    char local[MS_PATH_MAX], *at, path[MS_PATH_FILE], v[32], token[8];
    char (*failed)[MS_PATH_MAX];
    const struct cfg_list *l = NULL;
    struct buf h = {0};
    int kind, i, n = 0, fd;
    long seq = -1;
    ms_strlcpy(local, e->from, sizeof local);
    if ((at = strrchr(local, '@')) != NULL) {
        *at = 0;
        l = list_match(ms->cfg, local, at + 1, &kind, token, sizeof token);
    }
    if (!l || kind != LK_BOUNCES) return 0;
    if (ms_fmt(path, sizeof path, "%s/%s.msg", ms->qdir, e->id) >= 0 && (fd = os_open(path, O_RDONLY, 0)) >= 0) {
        struct os_stat st;
        if (os_fstat(fd, &st) == 0) msg_read_header(fd, st.size, &h);
        os_close(fd);
        if (h.p && hdr_get(h.p, h.len, "X-Mailsrv-Seq", v, sizeof v)) seq = strtol(v, NULL, 10);
    }
    failed = xrealloc(NULL, sizeof *failed * (size_t)(e->nr ? e->nr : 1));
    for (i = 0; i < e->nr; i++)
        if (e->r[i].result == 5 && e->r[i].state == Q_PENDING) ms_strlcpy(failed[n++], e->r[i].addr, sizeof failed[0]);
    if (seq >= 0 && list_count_bounces(ms, l, failed, n, seq) != 0)
        ms_log(ms, "list %s@%s: cannot record the bounces of %s", l->name, l->domain, e->id);
    free(failed);
    buf_free(&h);
    return 1;
}

/* Header fields a list replaces or must not pass on. */
static int
list_drops_field(const struct cfg_list *l, const char *f, size_t n)
{
    static const char *const names[] = {"Return-Path", "List-Id", "List-Post", "List-Help", "List-Subscribe",
                                        "List-Unsubscribe", "List-Unsubscribe-Post", "List-Owner", "List-Archive",
                                        "Precedence", "X-Mailsrv-Seq", "Errors-To", NULL};
    int i;
    for (i = 0; names[i]; i++)
        if (hdr_is(f, n, names[i])) return 1;
    return l->reply_to_list && hdr_is(f, n, "Reply-To");
}

/* The copy of a post for the members: list headers, subject prefix and a
 * footer. A text/plain body (not base64 or quoted-printable) gets the footer
 * at its end; anything else is wrapped, untouched, as the first part of a
 * multipart/mixed with the footer as the second (as Mailman does). */
static void
list_write_post(const struct cfg_list *l, struct store_msg *m, long seq, const struct store_msg *in,
                const char *h, size_t hn, int64_t body_off)
{
    struct buf b = {0}, inner = {0};
    char ct[128], cte[64], v[8], a[MS_PATH_MAX], boundary[96];
    const char *f;
    size_t pos = 0, flen;
    int k, wrap, subject = 0;
    static const int kinds[] = {LK_POST, LK_HELP, LK_SUBSCRIBE, LK_UNSUBSCRIBE, LK_OWNER};
    static const char *const names[] = {"List-Post", "List-Help", "List-Subscribe", "List-Unsubscribe", "List-Owner"};
    hdr_get(h, hn, "Content-Type", ct, sizeof ct);
    hdr_get(h, hn, "Content-Transfer-Encoding", cte, sizeof cte);
    wrap = !((!ct[0] || ms_strncaseeq(ct, "text/plain", 10)) &&
             (!cte[0] || ms_strcaseeq(cte, "7bit") || ms_strcaseeq(cte, "8bit") || ms_strcaseeq(cte, "binary")));
    snprintf(boundary, sizeof boundary, "=_mailsrv_%s", m->id);
    buf_printf(&b, "Return-Path: <%s>\n", m->sender);
    while (hdr_next_field(h, hn, &pos, &f, &flen)) {
        if (list_drops_field(l, f, flen) || (wrap && hdr_is(f, flen, "MIME-Version"))) continue;
        if (wrap && ms_strncaseeq(f, "Content-", 8)) { buf_add(&inner, f, flen); continue; }
        if (hdr_is(f, flen, "Subject") && l->subject_prefix[0] && !subject) {
            char s[1000];
            subject = 1;
            hdr_get(f, flen, "Subject", s, sizeof s);
            if (!strstr(s, l->subject_prefix)) { /* replies keep one prefix: "Re: [news] ..." */
                size_t skip = 8;
                while (skip < flen && (f[skip] == ' ' || f[skip] == '\t')) skip++;
                buf_printf(&b, "Subject: %s ", l->subject_prefix);
                buf_add(&b, f + skip, flen - skip);
                continue;
            }
        }
        buf_add(&b, f, flen);
    }
    if (b.len && b.p[b.len - 1] != '\n') buf_adds(&b, "\n");
    if (inner.len && inner.p[inner.len - 1] != '\n') buf_adds(&inner, "\n");
    if (!subject && l->subject_prefix[0]) buf_printf(&b, "Subject: %s\n", l->subject_prefix);
    /* RFC 2919 List-Id; RFC 2369 List-* (List-Post: NO on an announcement list) */
    buf_printf(&b, "List-Id: <%s.%s>\n", l->name, l->domain);
    for (k = 0; k < 5; k++) {
        list_address(l, kinds[k], "", a, sizeof a);
        if (k == 0 && l->post == LIST_POST_OWNER) buf_adds(&b, "List-Post: NO\n");
        else buf_printf(&b, "%s: <mailto:%s>\n", names[k], a);
    }
    buf_printf(&b, "Precedence: list\nX-Mailsrv-Seq: %ld\n", seq);
    if (l->reply_to_list) buf_printf(&b, "Reply-To: <%s@%s>\n", l->name, l->domain);
    if (wrap) { /* the part's fields by length: a NUL in one must not cut them (and the blank line) off */
        buf_printf(&b, "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"%s\"\n\n"
                   "This is a multi-part message in MIME format.\n\n--%s\n", boundary, boundary);
        if (inner.len) buf_add(&b, inner.p, inner.len);
    }
    buf_adds(&b, "\n");
    msg_write(m, b.p, b.len);
    msg_copy_range(m, in->tmp_fd, body_off, in->size);
    b.len = 0;
    list_address(l, LK_UNSUBSCRIBE, "", a, sizeof a);
    if (wrap) {
        buf_printf(&b, "\n--%s\nContent-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n"
                   "Content-Disposition: inline\n\n", boundary);
    } else if (in->size > body_off && (os_pread(in->tmp_fd, v, 1, in->size - 1) != 1 || v[0] != '\n')) {
        buf_adds(&b, "\n");
    }
    buf_printf(&b, "_______________________________________________\n%s@%s mailing list\n"
               "To unsubscribe, send a message to %s\n", l->name, l->domain, a);
    if (wrap) buf_printf(&b, "\n--%s--\n", boundary);
    msg_write(m, b.p, b.len);
    buf_free(&b);
    buf_free(&inner);
}

/* A post: one copy for all members, from NAME-bounces, added to the
 * session's posts; smtp_deliver_step delivers it with the message (a list
 * of a thousand members takes many loop turns), the group commit makes it
 * durable, and the client's 250 says that both are stored. */
static int
list_post(struct mailsrv *ms, const struct cfg_list *l, struct smtp_sess *s, const char *h, size_t hn,
          int64_t body_off)
{
    const struct store_msg *in = &s->msg;
    struct list_state st;
    struct list_post *p;
    int i, r = 0;
    if (list_load(ms->cfg, l, &st) != 0) return -1;
    st.seq++; /* saved first: a number is never used twice */
    if (list_save(ms->cfg, l, &st, &s->dirs) != 0) { list_state_free(&st); return -1; } /* its folder: in the commit */
    s->posts = xrealloc(s->posts, sizeof *s->posts * (size_t)(s->nposts + 1));
    p = &s->posts[s->nposts];
    memset(p, 0, sizeof *p);
    p->m.tmp_fd = -1;
    p->seq = st.seq;
    snprintf(p->list, sizeof p->list, "%s@%s", l->name, l->domain);
    for (i = 0; i < st.nm; i++)
        if (addr_targets(ms->cfg, st.m[i].addr, &p->t) != RES_OK)
            ms_log(ms, "list %s@%s: member <%s> is not an address mail can go to", l->name, l->domain, st.m[i].addr);
    if (!p->t.n) ms_log(ms, "list %s@%s: post %ld (%s) from <%s>: no members", l->name, l->domain, st.seq, in->id, in->sender);
    else if ((r = msg_open(ms, &p->m)) == 0) {
        list_address(l, LK_BOUNCES, "", p->m.sender, sizeof p->m.sender);
        list_write_post(l, &p->m, st.seq, in, h, hn, body_off);
        p->m.hdr_lines = 1; /* its first line is Return-Path (as msg_inject) */
        if (!p->m.write_failed) s->nposts++;
        else {
            list_post_failed(ms, p, "cannot write the message");
            r = -1;
        }
    }
    if (p == &s->posts[s->nposts]) list_post_clear(p); /* not taken */
    list_state_free(&st);
    return r;
}

/* A post of the session's message is stored (after its group commit). */
static void
list_post_done(struct mailsrv *ms, const struct list_post *p, const char *in_id, const char *in_sender)
{
    ms_log(ms, "list %s: post %ld (%s) from <%s> sent to %d members as %s", p->list, p->seq, in_id, in_sender, p->t.n,
           p->m.id);
    if (targets_remote(&p->t)) relay_enqueue(ms, p->m.id);
}

static void
list_post_failed(struct mailsrv *ms, const struct list_post *p, const char *err)
{
    ms_log(ms, "list %s: cannot store post %ld: %s", p->list, p->seq, err);
}

/* A post's file, if still open, is removed (its copies are links), and its members forgotten. */
static void
list_post_clear(struct list_post *p)
{
    if (p->m.tmp_fd >= 0) {
        os_close(p->m.tmp_fd);
        os_unlink(p->m.tmp_path);
        p->m.tmp_fd = -1;
    }
    targets_free(&p->t);
}

static void
list_posts_free(struct list_post *p, int n)
{
    int i;
    for (i = 0; i < n; i++) list_post_clear(&p[i]);
    free(p);
}

/* ---- request rate limits. Each request (subscribe, unsubscribe, help)
 * mails its envelope sender, so forged ones mail strangers (backscatter).
 * They are counted per client address and per sender domain across lists;
 * past either limit the RCPT gets 450 4.7.1, which the client's MTA retries
 * later (Postfix answers its anvil rate limits so). relay_networks and
 * logged-in clients are not counted, as Postfix exempts mynetworks. Each key
 * keeps a GCRA "theoretical arrival time": a burst of N, then one every
 * hour/N. Keys are 64-bit FNV-1a hashes (a collision only shares a count). */

static uint64_t
list_rate_hash(char kind, const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    h = (h ^ (unsigned char)kind) * 1099511628211ULL;
    for (; *s; s++) h = (h ^ (unsigned char)tolower((unsigned char)*s)) * 1099511628211ULL;
    return h;
}

/* key's own slot while it counts, else NULL. */
static struct list_rate *
list_rate_find(struct list_rate *r, uint64_t key, int64_t now)
{
    int i;
    for (i = 0; i < MS_LIST_REQ_TRACK; i++)
        if (r[i].key == key && r[i].tat > now) return &r[i];
    return NULL;
}

/* The slot that empties first, other than avoid: a key that finds no slot of
 * its own starts from empty there. */
static struct list_rate *
list_rate_free(struct list_rate *r, const struct list_rate *avoid)
{
    struct list_rate *e = NULL;
    int i;
    for (i = 0; i < MS_LIST_REQ_TRACK; i++)
        if (&r[i] != avoid && (!e || r[i].tat < e->tat)) e = &r[i];
    return e;
}

/* When key's count would empty with one request more. */
static int64_t
list_rate_next(const struct list_rate *e, uint64_t key, int64_t now, int per_hour)
{
    return (e->key == key && e->tat > now ? e->tat : now) + 3600000 / per_hour;
}

/* One more request from client (a client_key: an address, or an IPv6 /64) for a
 * sender at domain, at now (ms): counted and 0 if both limits allow it,
 * else 1 (the client's limit) or 2 (the domain's), and nothing counted. */
static int
list_rate_take(struct list_rate *r, const char *client, const char *domain, int64_t now)
{
    uint64_t ka = list_rate_hash('a', client), kd = list_rate_hash('d', domain);
    struct list_rate *a = list_rate_find(r, ka, now), *d = list_rate_find(r, kd, now);
    if (!a) a = list_rate_free(r, d); /* both own slots first: a full table never gives them one slot */
    if (!d) d = list_rate_free(r, a);
    int64_t na, nd;
    na = list_rate_next(a, ka, now, MS_LIST_REQ_PER_ADDR);
    nd = list_rate_next(d, kd, now, MS_LIST_REQ_PER_DOMAIN);
    if (na - now > 3600000) return 1;
    if (nd - now > 3600000) return 2;
    a->key = ka;
    a->tat = na;
    d->key = kd;
    d->tat = nd;
    return 0;
}

/* RCPT to an address of list l. Refuses in the SMTP dialogue what can be
 * refused there (no backscatter): posts by non-members (RFC 3463 5.7.2),
 * unknown or expired codes, requests from a sender no answer can reach and
 * requests past the rate limits. 0 if accepted, -1 after a refusal. */
static int
list_rcpt(struct conn *c, const struct cfg_list *l, int kind, const char *token, const char *rcpt)
{
    struct smtp_sess *s = &c->u.smtp;
    struct list_state st;
    int ok = 1, i;
    if (kind == LK_OWNER) {
        if (addr_targets(c->ms->cfg, l->owner, &s->targets) == RES_OK) return 0;
        conn_log(c, "list %s@%s: the owner <%s> is not an address mail can go to", l->name, l->domain, l->owner);
        conn_reply(c, "451 4.3.0 <%s>: local error, try again later", rcpt);
        return -1;
    }
    for (i = 0; i < s->nlists; i++)
        if (ms_strcaseeq(s->lists[i], rcpt)) return 0;
    if ((kind == LK_SUBSCRIBE || kind == LK_UNSUBSCRIBE || kind == LK_HELP) && s->from[0]) {
        /* a null sender gets no answer (list_incoming): nothing to check */
        struct targets t = {0};
        int r = addr_targets(c->ms->cfg, s->from, &t) == RES_OK && t.n > 0 ? 0 : -1;
        targets_free(&t);
        if (r != 0) { /* as Postfix's reject_unlisted_sender answers */
            conn_reply(c, "550 5.1.0 <%s>: Sender address rejected: User unknown, the list could not answer", s->from);
            return -1;
        }
        if (!conn_may_relay(c) &&
            (r = list_rate_take(c->ms->lrate, c->client, strrchr(s->from, '@') + 1, os_now_ms())) != 0) {
            conn_log(c, "list %s@%s: request from <%s> [%s] refused: over %d an hour from %s", l->name, l->domain,
                     s->from, c->peer, r == 1 ? MS_LIST_REQ_PER_ADDR : MS_LIST_REQ_PER_DOMAIN,
                     r == 1 ? c->client : strrchr(s->from, '@') + 1);
            conn_reply(c, "450 4.7.1 <%s>: too many list requests from %s, try again later", rcpt,
                       r == 1 ? "your address" : "your sender domain");
            return -1;
        }
    }
    if (kind == LK_POST && l->post == LIST_POST_OWNER) {
        /* an announcement list: a local owner must also be logged in or on a relay network */
        const char *at = strrchr(l->owner, '@');
        ok = ms_strcaseeq(s->from, l->owner) && (!cfg_find_domain(c->ms->cfg, at ? at + 1 : "") || conn_may_relay(c));
        if (!ok) { conn_reply(c, "550 5.7.2 <%s>: only the list owner may post here", rcpt); return -1; }
    } else if ((kind == LK_POST && l->post == LIST_POST_MEMBERS) || kind == LK_CONFIRM) {
        if (list_load(c->ms->cfg, l, &st) != 0) {
            conn_log(c, "list %s@%s: cannot read its state", l->name, l->domain);
            conn_reply(c, "451 4.3.0 <%s>: local error, try again later", rcpt);
            return -1;
        }
        if (kind == LK_POST) ok = ms_strcaseeq(s->from, l->owner) || list_find_member(&st, s->from) >= 0;
        else ok = list_find_pending(&st, token) >= 0;
        list_state_free(&st);
        if (!ok && kind == LK_POST) { conn_reply(c, "550 5.7.2 <%s>: only members may post to this list", rcpt); return -1; }
        if (!ok) { conn_reply(c, "550 5.1.1 <%s>: unknown or expired confirmation code", rcpt); return -1; }
    }
    s->lists = xrealloc(s->lists, sizeof *s->lists * (size_t)(s->nlists + 1));
    ms_strlcpy(s->lists[s->nlists++], rcpt, sizeof s->lists[0]);
    return 0;
}

/* At the final dot, for each list address among the recipients. Mail that
 * a list does not act on goes to the owner (added to the session's targets).
 * -1 if something could not be stored: the client gets 451. */
static int
list_incoming(struct conn *c)
{
    struct smtp_sess *s = &c->u.smtp;
    struct mailsrv *ms = c->ms;
    struct buf h = {0};
    char local[MS_PATH_MAX], token[MS_LOCAL_MAX + 1], v[512], *at;
    int i, kind, r = 0;
    int64_t body_off = msg_read_header(s->msg.tmp_fd, s->msg.size, &h);
    int automatic = hdr_is_automatic(h.p, h.len), daemon;
    hdr_get(h.p, h.len, "From", v, sizeof v);
    daemon = !s->from[0] || ms_strncaseeq(s->from, "mailer-daemon@", 14) || strstr(v, "MAILER-DAEMON");
    for (i = 0; i < s->nlists && r == 0; i++) {
        const struct cfg_list *l;
        ms_strlcpy(local, s->lists[i], sizeof local);
        if (!(at = strrchr(local, '@'))) continue;
        *at = 0;
        if (!(l = list_match(ms->cfg, local, at + 1, &kind, token, sizeof token))) continue; /* gone in a reload */
        if (kind == LK_BOUNCES) {
            char (*failed)[MS_PATH_MAX] = xrealloc(NULL, sizeof *failed * 32);
            struct buf all = {0};
            long seq;
            int n;
            int64_t len = s->msg.size < 256 * 1024 ? s->msg.size : 256 * 1024;
            buf_reserve(&all, (size_t)len);
            if (os_pread(s->msg.tmp_fd, all.p, (size_t)len, 0) == (long)len) all.len = (size_t)len;
            if ((n = dsn_failed(all.p, all.len, failed, 32, &seq)) > 0) r = list_count_bounces(ms, l, failed, n, seq);
            else addr_targets(ms->cfg, l->owner, &s->targets); /* not a delivery report: a person should see it */
            free(failed);
            buf_free(&all);
        } else if (kind == LK_POST) {
            char want[400];
            hdr_get(h.p, h.len, "List-Id", v, sizeof v);
            snprintf(want, sizeof want, "<%s.%s>", l->name, l->domain);
            if (ms_strncaseeq(v, want, strlen(want)) || strstr(v, want)) {
                conn_log(c, "list %s@%s: %s carries its own List-Id: a loop, dropped", l->name, l->domain, s->msg.id);
            } else if (daemon || hdr_auto_submitted(h.p, h.len)) {
                conn_log(c, "list %s@%s: %s is automatic mail: given to the owner, not sent to the list", l->name,
                         l->domain, s->msg.id);
                addr_targets(ms->cfg, l->owner, &s->targets);
            } else {
                r = list_post(ms, l, s, h.p, h.len, body_off);
            }
        } else if (daemon || automatic) {
            conn_log(c, "list %s@%s: no answer to automatic mail %s from <%s>", l->name, l->domain, s->msg.id, s->from);
        } else if (kind == LK_CONFIRM) {
            r = list_confirm(ms, l, token, c->peer, h.p, h.len);
        } else if (kind == LK_HELP) {
            struct buf b = {0};
            char subject[700];
            snprintf(subject, sizeof subject, "Help for %s@%s", l->name, l->domain);
            list_help_text(l, &b);
            r = list_send(ms, l, s->from, NULL, subject, b.p) < 0 ? -1 : 0;
            buf_free(&b);
        } else {
            r = list_request(ms, l, s->from, c->peer, kind == LK_UNSUBSCRIBE, h.p, h.len);
        }
    }
    buf_free(&h);
    return r;
}

/*==== 15. Event loop ====*/
/*
 * Each turn (mailsrv_poll, at the end): build the poll set, where every
 * session says what to poll for and when it needs a turn anyway (POLLIN
 * while there is input room and it is not held, POLLOUT while output is
 * pending); poll until the nearest deadline; hand each ready socket to its
 * listener or transport (accept, read, send); run the protocols over complete
 * lines; a slice of the sessions' long work (loop_work: logins, mailbox
 * views, deletions, deliveries to many mailboxes); a slice of the group
 * commit (the folders' fsyncs, then the mbox appends); timers; the relay;
 * then free the sessions marked closing (those whose commit or QUIT
 * deletions are still being made stay until they are done).
 */

/* Sessions with long work in progress (a login's hash, a mailbox's view,
 * deletions after QUIT) share MS_WORK_SLICE_US per turn, round-robin from
 * the connection after the one served last: however many there are and
 * however large their mailboxes, a turn works that long (plus one step) and
 * the loop goes on serving the others in between (the design stays
 * single-threaded). A closing session's work is dropped, unless it must
 * finish (deletions the client asked for with QUIT). */
static void
loop_work(struct mailsrv *ms)
{
    int64_t until = os_now_us() + MS_WORK_SLICE_US;
    int i, k, n = ms->nconns, start = 0, ran = 0;
    for (i = 0; i < n; i++) /* ms->conns is in order of id */
        if (ms->conns[i]->id > ms->work_last) { start = i; break; }
    for (k = 0; k < n; k++) {
        struct conn *c = ms->conns[(start + k) % n];
        if (!c->work) continue;
        if ((c->is_closing || c->close_after_flush) && !c->work_must_finish) { /* its answer would go nowhere */
            conn_drop(c); /* (its work ends when it is freed: a login, a view, a delivery taken back) */
            continue;
        }
        if (ran++ && os_now_us() >= until) break;
        ms->work_last = c->id;
        c->work_started = 1;
        if (c->work(c, until) && !c->is_closing) conn_run(c);
    }
}

/* Refuses a new connection with one write into an empty socket buffer (it cannot block). */
static void
loop_refuse(ms_sock_t s, enum proto proto, int rate)
{
    char msg[160];
    int n = snprintf(msg, sizeof msg, "%s\r\n", proto_ops_of(proto)->say[rate ? SAY_RATE : SAY_BUSY]);
    net_send(s, msg, (size_t)n);
    net_close(s);
}

/* Descriptors for the configuration: two per session (its socket, and the file of the message it
 * receives or of the mailbox it reads), one per listener, two per outbound session (its socket and
 * its message file), and MS_FD_SPARE for the files opened meanwhile. The soft limit is raised
 * towards that (os_raise_fd_limit). Where the hard limit is lower, the sessions are capped at two
 * thirds of what it leaves (a quarter of the limit at least, max_clients at most): idle sessions
 * hold one descriptor, and the last third is for the files of those receiving or reading at once
 * (a session that finds none answers 451 or -ERR: nothing is lost). The log says so once for each
 * new shortfall below max_clients. At listen and at each reload. */
static void
loop_fit_fd_limit(struct mailsrv *ms)
{
    const struct ms_config *c = ms->cfg;
    long others = c->nlisten + 2 * c->max_outbound + MS_FD_SPARE, need = 2 * c->max_clients + others, before;
    long limit = os_raise_fd_limit(need, &before);
    ms->max_sessions = c->max_clients;
    ms->fd_limit = limit;
    if (limit > before && before >= 0)
        ms_log(ms, "descriptor limit (ulimit -n) raised from %ld to %ld for max_clients = %ld", before, limit,
               c->max_clients);
    if (limit < 0 || limit >= need) { ms->fd_need = 0; return; }
    ms->max_sessions = (limit - others) * 2 / 3 > limit / 4 ? (limit - others) * 2 / 3 : limit / 4;
    if (ms->max_sessions < 1) ms->max_sessions = 1;
    if (ms->max_sessions >= c->max_clients) { /* short of two each, but all of max_clients fit */
        ms->max_sessions = c->max_clients;
        ms->fd_need = 0;
        return;
    }
    if (ms->fd_need == need) return; /* said already */
    ms->fd_need = need;
    ms_log(ms, "max_clients = %ld needs about %ld descriptors but the limit is %ld (ulimit -n; its hard limit "
           "is set by the service manager, e.g. LimitNOFILE=): at most %ld sessions", c->max_clients, need, limit,
           ms->max_sessions);
}

/* accept() found no descriptor (or no kernel memory): the client stays in the listen queue and the
 * listener stays readable, so polling it again at once would spin. The listeners rest
 * MS_ACCEPT_REST_MS, or until a session ends (loop_sweep); the log says why once a minute. */
static void
loop_accept_rest(struct mailsrv *ms, int err)
{
    int64_t now = os_now_ms();
    ms->accept_rest_until = now + MS_ACCEPT_REST_MS;
    if (ms->fd_short_logged && now - ms->fd_short_logged < MS_REFUSED_LOG_MS) return;
    ms->fd_short_logged = now;
    ms_log(ms, "cannot accept a client: %s; new clients wait until a session ends (%d sessions)", net_strerror(err),
           ms->nconns);
}

/* A new client, before any other work: its connection rate (not for
 * relay_networks), its sessions (max_per_ip, by client_key), then a slot: of
 * max_clients (or fewer: max_sessions), MS_RESERVE_PCT are kept for
 * relay_networks; when the slots a client may take are all taken, the oldest
 * idle session that has not logged in makes room (slots_victim), else the
 * newcomer is refused. The counts are kept as sessions come and go
 * (conn_count): an accept costs the same with 10 sessions or 10,000. */
static void
loop_accept(struct mailsrv *ms, struct listener *l)
{
    int k;
    for (k = 0; k < 64; k++) {
        char peer[64], key[48];
        int lo, relay;
        long max = ms->max_sessions, reserve = max * MS_RESERVE_PCT / 100, all = ms->nlive, outside = ms->nlive_outside;
        int64_t now;
        struct conn *c, *v = NULL;
        struct client_stat *st;
        ms_sock_t s = net_accept(l->fd, peer, sizeof peer, &lo);
        if (s == MS_BAD_SOCK) {
            int err = net_error();
            if (net_out_of_descriptors(err)) loop_accept_rest(ms, err);
            break;
        }
        now = os_now_ms();
        client_key(peer, key, sizeof key);
        relay = l->local || cfg_in_relay_nets(ms->cfg, peer); /* a Unix socket's clients: as relay_networks' */
        st = client_stat(ms, key, now);
        if (!relay && client_rate_over(ms, st, now)) {
            client_refused(ms, st, now, "refused %s from %s: max_connect_rate (%ld a minute) reached", proto_names[l->proto],
                           peer, ms->cfg->max_connect_rate);
            loop_refuse(s, l->proto, 1);
            continue;
        }
        if (!relay && client_sessions(ms, key) >= ms->cfg->max_per_ip) {
            client_refused(ms, st, now, "refused %s from %s: max_per_ip (%ld) reached", proto_names[l->proto], peer,
                           ms->cfg->max_per_ip);
            loop_refuse(s, l->proto, 0);
            continue;
        }
        if ((all >= max || (!relay && outside >= max - reserve)) && (v = slots_victim(ms, now)) != NULL) {
            slots_evict(v, now); /* always outside relay_networks: both counts drop */
            all--;
            outside--;
        }
        if (all >= max || (!relay && outside >= max - reserve)) {
            if (max < ms->cfg->max_clients)
                client_refused(ms, st, now, "refused %s from %s: %ld sessions%s, all that ulimit -n (%ld) allows",
                               proto_names[l->proto], peer, max, relay || !reserve ? "" : " (some kept for relay_networks)",
                               ms->fd_limit);
            else
                client_refused(ms, st, now, "refused %s from %s: max_clients (%ld%s) reached", proto_names[l->proto],
                               peer, ms->cfg->max_clients, relay || !reserve ? "" : ", some kept for relay_networks");
            loop_refuse(s, l->proto, 0);
            continue;
        }
        c = xrealloc(NULL, sizeof *c);
        memset(c, 0, sizeof *c);
        c->ms = ms;
        io_init(&c->io, s, c->inbuf, sizeof c->inbuf, conn_on_io);
        c->id = ++ms->next_id;
        c->proto = l->proto;
        c->ops = proto_ops_of(l->proto);
        c->is_loopback = lo;
        c->in_relay_nets = relay != 0;
        ms_strlcpy(c->peer, peer, sizeof c->peer);
        ms_strlcpy(c->client, key, sizeof c->client);
        c->born = now;
        c->io.deadline = now + ms->cfg->timeout * 1000;
        if (ms->nconns == ms->capconns) {
            ms->capconns = ms->capconns ? ms->capconns * 2 : 64;
            ms->conns = xrealloc(ms->conns, sizeof *ms->conns * (size_t)ms->capconns);
        }
        ms->conns[ms->nconns++] = c;
        conn_count(c, +1);
        conn_log(c, "connect %s%s from %s", proto_names[c->proto], l->tls ? " (TLS)" : "", peer);
        if (l->tls) conn_tls_start(c);
        c->ops->greet(c);
        conn_send(c);
    }
}

/* Seals the next batch of the group commit: the folders and mbox appends
 * owed by the sessions waiting now; those that deliver meanwhile wait for
 * the batch after (so that a steady stream of deliveries never holds an
 * answer back). 0 if no session waits. */
static int
commit_seal(struct mailsrv *ms)
{
    struct dirset spare = ms->commit_batch;
    int i, n = 0, unstarted = 0;
    for (i = 0; i < ms->nconns; i++) {
        n += ms->conns[i]->commit_pending;
        unstarted |= ms->conns[i]->work && !ms->conns[i]->work_started;
    }
    if (!n) return 0;
    /* final dots read in the same turn share a batch (one append per mbox) even when this turn's
     * slice of work ended before every delivery began: the seal waits one turn for them, no more
     * (the round-robin gives them the next turn's slice first) */
    if (unstarted && !ms->commit_waited) { ms->commit_waited = 1; return 0; }
    ms->commit_waited = 0;
    for (i = 0; i < ms->nconns; i++)
        if (ms->conns[i]->commit_pending) ms->conns[i]->commit_sealed = 1;
    ms->commit_batch = ms->commit_dirs;
    spare.n = spare.nmb = 0;
    ms->commit_dirs = spare;
    store_commit_begin(&ms->commit_batch);
    ms->commit_next = ms->commit_mb_next = 0;
    ms->commit_undo_next = ms->commit_batch.nmb;
    ms->commit_ok = 1;
    ms->committing = 1;
    return 1;
}

/* One slice of the sealed batch's commit, until until_us (at least one
 * step): the fsync of each folder, then, all of them durable, the appends
 * of each mbox (store_commit_mbox), then the appends of the transactions
 * that failed taken back (store_commit_undo). 1 when all are done or a
 * folder's fsync failed (the batch fails as a whole; no mbox append is made). */
static int
commit_step(struct mailsrv *ms, int64_t until_us)
{
    struct dirset *b = &ms->commit_batch;
    while (ms->commit_ok && (ms->commit_next < b->n || ms->commit_mb_next < b->nmb || ms->commit_undo_next > 0)) {
        if (ms->commit_next < b->n) {
            if (os_fsync_dir(b->v[ms->commit_next++]) != 0) ms->commit_ok = 0;
        } else if (ms->commit_mb_next < b->nmb) {
            ms->commit_mb_next = store_commit_mbox(b, ms->commit_mb_next);
        } else {
            ms->commit_undo_next = store_commit_undo(b, ms->commit_undo_next);
        }
        if (os_now_us() >= until_us) return 0;
    }
    return 1;
}

/* Group commit: one fsync per Maildir or queue folder and one append per
 * mbox for all the messages of a batch, a few each turn (MS_WORK_SLICE_US:
 * a list post owes a thousand), then the batch's 250s (or 451s, their
 * copies taken back), then those sessions go on with their pipelined
 * commands. */
static void
loop_group_commit(struct mailsrv *ms)
{
    int i, waiting = 0;
    ms->commit_again = 0;
    if (!ms->committing && !commit_seal(ms)) {
        if (ms->commit_waited) ms->commit_again = 1;
        return;
    }
    if (!commit_step(ms, os_now_us() + MS_WORK_SLICE_US)) { ms->commit_again = 1; return; }
    ms->committing = 0;
    ms->commit_batch.n = ms->commit_batch.nmb = 0;
    for (i = 0; i < ms->nconns; i++) {
        struct conn *c = ms->conns[i];
        if (!c->commit_sealed) { waiting |= c->commit_pending; continue; }
        c->commit_pending = c->commit_sealed = 0;
        c->ops->group_committed(c, ms->commit_ok);
        if (!c->is_closing) conn_run(c);
        waiting |= c->commit_pending; /* its next message, pipelined */
    }
    if (waiting) ms->commit_again = 1; /* their batch is sealed at the next turn */
}

/* At the end (the stop's grace time is over): the batch being committed and
 * those owed are made before their sessions go, which take no more commands.
 * Their copies are made: a session freed before its commit would leave its
 * message half-delivered. Their answers are sent where a socket takes them
 * at once (a client that gets none sends the message again). */
static void
loop_commit_rest(struct mailsrv *ms)
{
    int i, owed;
    for (i = 0; i < ms->nconns; i++) conn_drop(ms->conns[i]);
    do {
        loop_group_commit(ms);
        for (owed = ms->committing, i = 0; i < ms->nconns && !owed; i++) owed = ms->conns[i]->commit_pending;
    } while (owed);
    for (i = 0; i < ms->nconns; i++) conn_send(ms->conns[i]); /* their 250s, where a socket takes them now */
}

static void
loop_timers(struct mailsrv *ms, int64_t now)
{
    int i;
    for (i = 0; i < ms->nconns; i++) {
        struct conn *c = ms->conns[i];
        if (!c->is_closing && !c->close_after_flush && conn_session_expired(c, now)) {
            if (!conn_busy(c)) { /* idle between two transactions: end it now */
                conn_session_over(c);
                c->io.deadline = now + 10000;
                conn_send(c);
                continue;
            }
            if (now - c->born >= 2 * ms->cfg->max_session_time * 1000LL) { /* still busy at twice the time */
                conn_log(c, "max_session_time (%lds) reached twice over in a transaction: closing", ms->cfg->max_session_time);
                conn_drop(c);
                continue;
            }
        }
        if (c->is_closing) continue;
        if (!c->close_after_flush && (c->work || c->commit_pending)) { /* the client waits for us: as Postfix's */
            c->io.deadline = now + ms->cfg->timeout * 1000LL; /* smtpd_timeout, only its own silence counts */
            continue;
        }
        if (now < c->io.deadline) continue;
        if (c->close_after_flush) { conn_drop(c); continue; } /* it never read its last reply */
        if (c->io.tls && !tls_done(c->io.tls)) { /* no reply can go out before the handshake */
            conn_log(c, "timeout during the TLS handshake");
            conn_drop(c);
            continue;
        }
        conn_log(c, "timeout");
        conn_say(c, SAY_TIMEOUT);
        conn_close_after_reply(c);
        c->io.deadline = now + 10000;
        conn_send(c);
    }
}

static void
loop_sweep(struct mailsrv *ms)
{
    int i, j = 0;
    for (i = 0; i < ms->nconns; i++) {
        struct conn *c = ms->conns[i];
        /* deletions after QUIT are finished first (loop_work), and a delivery's commit (loop_group_commit):
         * its copies are made, and freed half-way it would stay half-delivered */
        if (c->is_closing && !(c->work && c->work_must_finish) && !c->commit_pending) {
            conn_log(c, "disconnect");
            conn_free(c);
        } else {
            ms->conns[j++] = c;
        }
    }
    if (j < ms->nconns) ms->accept_rest_until = 0; /* descriptors were freed: a waiting client may have one */
    ms->nconns = j;
    for (i = j = 0; i < ms->nout; i++) {
        if (ms->out[i]->is_done || ms->stopping) { mta_free(ms->out[i]); ms->relay_kick = 1; }
        else ms->out[j++] = ms->out[i];
    }
    if (j < ms->nout) ms->accept_rest_until = 0;
    ms->nout = j;
}

static void
loop_close_listeners(struct mailsrv *ms)
{
    int i;
    for (i = 0; i < ms->nlst; i++) net_close(ms->lst[i].fd);
    ms->nlst = 0;
}

/* Stopping: idle sessions are told and closed; busy ones finish first. */
static void
loop_stop_sessions(struct mailsrv *ms)
{
    int i;
    for (i = 0; i < ms->nconns; i++) {
        struct conn *c = ms->conns[i];
        if (c->is_closing || c->close_after_flush || c->work || c->ops->in_transfer(c)) continue;
        conn_say(c, SAY_SHUTDOWN);
        conn_close_after_reply(c);
        conn_send(c);
    }
}

/* Reloads the INI on SIGHUP or `mailsrv reload` (QUEUE/reload, removed once loaded: the command
 * waits for that) at once, and on a change of the file once its size, mtime and inode have stayed
 * the same for MS_RELOAD_STABLE_MS: a file still being written is not loaded half-way (a cut but
 * valid file would drop domains, aliases and lists: 550 until the rest came). */
static void
loop_check_reload(struct mailsrv *ms, int64_t now)
{
    struct os_stat st;
    char flag[MS_PATH_FILE];
    int by_cli = 0;
    if (!ms->ini_path) return;
    if (!ms->reload_requested) {
        if (now < ms->next_ini_check) return;
        ms->next_ini_check = now + MS_RELOAD_CHECK_MS;
        by_cli = ms->qdir[0] && ms_fmt(flag, sizeof flag, "%s/reload", ms->qdir) >= 0 && os_stat(flag, &st) == 0;
        if (by_cli) {
            ms_log(ms, "reload requested (mailsrv reload)");
        } else if (os_stat(ms->ini_path, &st) != 0 ||
                   (st.mtime == ms->ini_mtime && st.size == ms->ini_size && st.ino == ms->ini_ino)) {
            ms->seen_since = 0;
            return;
        } else if (!ms->seen_since || st.mtime != ms->seen_mtime || st.size != ms->seen_size || st.ino != ms->seen_ino) {
            ms->seen_mtime = st.mtime; /* changed (again): wait until it stays so */
            ms->seen_size = st.size;
            ms->seen_ino = st.ino;
            ms->seen_since = now;
            return;
        } else if (now - ms->seen_since < MS_RELOAD_STABLE_MS) {
            return;
        } else {
            ms_log(ms, "%s changed: reloading", ms->ini_path);
        }
    } else {
        ms_log(ms, "reload requested");
    }
    ms->reload_requested = 0;
    ms->seen_since = 0;
    mailsrv_load_ini(ms, ms->ini_path);
    ms->next_tmp_clean = 0; /* a reload also cleans SPOOL/.tmp */
    if (by_cli) os_unlink(flag); /* after the load: the command returns once it is in force */
}

/* Removes QUEUE/NAME, a control file: the command that made it waits for that. */
static void
loop_control_done(struct mailsrv *ms, const char *name)
{
    char path[MS_PATH_FILE];
    if (ms_fmt(path, sizeof path, "%s/%s", ms->qdir, name) >= 0) os_unlink(path);
}

/* `mailsrv status` (QUEUE/status): what the server is doing, written to QUEUE/status.txt. */
static void
loop_write_status(struct mailsrv *ms)
{
    char path[MS_PATH_FILE], t[64];
    struct buf b = {0};
    int i, n[PROTO_N], relaying;
    int64_t now, up = (os_now_ms() - ms->started_ms) / 1000;
    long usec;
    os_wallclock(&now, &usec);
    ms_count_sessions(ms, n, &relaying);
    ms_utc_time(t, sizeof t, now - up, ' ', " UTC");
    buf_printf(&b, "pid: %lu\nversion: %s\nconfig: %s\nstarted: %s\nuptime: %lldd %02lld:%02lld:%02lld\n", os_pid(),
               MAILSRV_VERSION, ms->ini_path ? ms->ini_path : "(none)", t, (long long)(up / 86400),
               (long long)(up / 3600 % 24), (long long)(up / 60 % 60), (long long)(up % 60));
    buf_adds(&b, "sessions:");
    for (i = 0; i < PROTO_N; i++) buf_printf(&b, " %s %d,", proto_names[i], n[i]);
    ms_utc_time(t, sizeof t, ms->last_load, ' ', " UTC");
    buf_printf(&b, " relay %d\nqueue: %d message%s\nlast load: %s, ", relaying, ms->nqueue, ms->nqueue == 1 ? "" : "s", t);
    if (ms->last_load_errors)
        buf_printf(&b, "refused (%d error%s; the configuration before it stays in force)\n", ms->last_load_errors,
                   ms->last_load_errors == 1 ? "" : "s");
    else
        buf_adds(&b, "ok\n");
    buf_printf(&b, "log: %s\n", ms->log_path[0] ? ms->log_path : "standard error");
    if (ms->stopping) buf_adds(&b, "stopping: yes\n");
    if (!b.p || ms_fmt(path, sizeof path, "%s/status.txt", ms->qdir) < 0 || os_write_file_atomic(path, b.p, b.len) != 0)
        ms_log(ms, "cannot write %s/status.txt: %s", ms->qdir, strerror(errno));
    free(b.p);
}

/* The requests of `mailsrv stop` and `mailsrv status`: control files in the queue, looked for
 * every MS_RELOAD_CHECK_MS, as QUEUE/reload and QUEUE/flush are. They work alike on every
 * platform, need no pid file (which the service account could point at another process), and
 * reach the server with the rights of who may write its queue: root or that account. Stopping,
 * the server renames QUEUE/stop to QUEUE/stopping and removes it once it has stopped. */
static void
loop_check_control(struct mailsrv *ms, int64_t now)
{
    char path[MS_PATH_FILE], stopping[MS_PATH_FILE];
    struct os_stat st;
    if (now < ms->next_control_check) return;
    ms->next_control_check = now + MS_RELOAD_CHECK_MS;
    if (ms_fmt(path, sizeof path, "%s/status", ms->qdir) >= 0 && os_stat(path, &st) == 0) {
        loop_write_status(ms);
        os_unlink(path);
    }
    if (ms_fmt(path, sizeof path, "%s/stop", ms->qdir) >= 0 && os_stat(path, &st) == 0 &&
        ms_fmt(stopping, sizeof stopping, "%s/stopping", ms->qdir) >= 0 && os_replace(path, stopping) == 0) {
        ms_log(ms, "stop requested (mailsrv stop)");
        ms->stop_by_cli = 1;
        mailsrv_stop(ms);
    }
}

/* Removes SPOOL/.tmp files left by a crash or kill -9 (never acknowledged)
 * once they are older than 36 h, as Dovecot cleans Maildir tmp/; never the
 * file of a session still in DATA, however slow. */
struct tmp_clean { struct mailsrv *ms; const char *dir; int64_t now; };

static int
loop_clean_tmp_entry(void *ctx, const char *name)
{
    struct tmp_clean *tc = ctx;
    char path[MS_PATH_MESSAGE];
    struct os_stat st;
    int i;
    if (ms_fmt(path, sizeof path, "%s/%s", tc->dir, name) < 0 || os_lstat_kind(path) != OS_FILE ||
        os_stat(path, &st) != 0 || tc->now - st.mtime <= MS_TMP_MAX_AGE)
        return 0;
    for (i = 0; i < tc->ms->nconns; i++) {
        const struct conn *c = tc->ms->conns[i];
        const char *used = c->ops->tmp_file ? c->ops->tmp_file(c) : NULL;
        if (used && strcmp(used, path) == 0) return 0;
    }
    if (os_unlink(path) == 0) ms_log(tc->ms, "removed %s: left by a crash, older than %d h", path, MS_TMP_MAX_AGE / 3600);
    return 0;
}

static void
loop_clean_tmp(struct mailsrv *ms, int64_t now)
{
    char dir[MS_PATH_DOMAIN];
    struct tmp_clean tc;
    int64_t sec;
    long usec;
    if (now < ms->next_tmp_clean) return;
    ms->next_tmp_clean = now + MS_TMP_CLEAN_MS;
    if (ms_fmt(dir, sizeof dir, "%s/.tmp", ms->cfg->spool) < 0) return;
    os_wallclock(&sec, &usec);
    tc.ms = ms;
    tc.dir = dir;
    tc.now = sec;
    os_list_dir(dir, loop_clean_tmp_entry, &tc);
}

/* Adds fd to this turn's poll set; io: the session's (NULL: a listener). */
static void
loop_watch(struct mailsrv *ms, int *nfds, ms_sock_t fd, short events, struct transport *io)
{
    ms->pfds[*nfds].fd = fd;
    ms->pfds[*nfds].events = events;
    ms->pfds[*nfds].revents = 0;
    ms->watched[(*nfds)++] = io;
    if (io) io->revents = 0;
}

/* The poll set: the listeners (unless they rest: loop_accept_rest), then
 * every session with a socket, but for those kept only to finish their
 * work or commit after they closed. *wake comes down to when the first of them
 * needs a turn anyway. */
static int
loop_watch_all(struct mailsrv *ms, int64_t now, int64_t *wake)
{
    int i, ev, nfds = 0, n = ms->nlst + ms->nconns + ms->nout;
    if (n > ms->capfds) {
        ms->capfds = n + 64;
        ms->pfds = xrealloc(ms->pfds, sizeof *ms->pfds * (size_t)ms->capfds);
        ms->watched = xrealloc(ms->watched, sizeof *ms->watched * (size_t)ms->capfds);
    }
    if (ms->accept_rest_until && now >= ms->accept_rest_until) ms->accept_rest_until = 0;
    if (ms->accept_rest_until && ms->accept_rest_until < *wake) *wake = ms->accept_rest_until;
    for (i = 0; i < ms->nlst && !ms->accept_rest_until; i++) loop_watch(ms, &nfds, ms->lst[i].fd, POLLIN, NULL);
    for (i = 0; i < ms->nconns; i++) {
        struct conn *c = ms->conns[i];
        if (c->is_closing) { /* kept only for its work or its commit (loop_sweep): nothing to poll */
            if (c->work) *wake = now;
            continue;
        }
        loop_watch(ms, &nfds, c->io.fd, conn_watch(c, now, wake), &c->io);
    }
    for (i = 0; i < ms->nout; i++) { /* Windows refuses a bad socket in the poll set: only those with one */
        struct mta_sess *o = ms->out[i];
        if ((ev = mta_watch(o, now, wake)) >= 0) loop_watch(ms, &nfds, o->io.fd, (short)ev, &o->io);
    }
    return nfds;
}

/* Hands what poll() said to the listeners and the sessions; those with
 * nothing (any: !ready) still see whether decrypted input waits. */
static void
loop_dispatch(struct mailsrv *ms, int nfds, int ready)
{
    int i;
    for (i = 0; i < nfds; i++) {
        short re = ready ? ms->pfds[i].revents : 0;
        struct transport *io = ms->watched[i];
        if (io) io->on_io(io, re);
        else if (re & POLLIN) loop_accept(ms, &ms->lst[i]);
    }
}

/* see mailsrv.h */
int
mailsrv_poll(struct mailsrv *ms, int timeout_ms)
{
    int64_t now = os_now_ms(), wake = now + timeout_ms;
    int i, nfds, r;
    if (ms->stop_requested && !ms->stopping) {
        ms->stopping = 1;
        ms->stop_deadline = now + MS_STOP_GRACE_MS;
        loop_close_listeners(ms);
        ms_log(ms, "stopping: %d sessions in flight", ms->nconns);
    }
    if (ms->stopping) {
        loop_stop_sessions(ms);
        loop_sweep(ms);
        if (ms->nconns == 0 || now >= ms->stop_deadline) return 1;
    }
    nfds = loop_watch_all(ms, now, &wake);
    if (ms->ini_path && ms->next_ini_check < wake) wake = ms->next_ini_check;
    if (ms->nlst && ms->next_flush_check < wake) wake = ms->next_flush_check;
    if (ms->qdir[0] && ms->next_control_check < wake) wake = ms->next_control_check;
    if (ms->nlst && ms->next_tmp_clean < wake) wake = ms->next_tmp_clean;
    if (ms->relay_wake < wake) wake = ms->relay_wake;
    if (ms->commit_again || ms->relay_kick) wake = now;
    if (ms->stopping && ms->stop_deadline < wake) wake = ms->stop_deadline;
    if (mbox_note[0]) { ms_log(ms, "%s", mbox_note); mbox_note[0] = 0; } /* found by the last turn's mbox_recover */
    if (ms->clients_flush && ms->clients_flush < wake) wake = ms->clients_flush;
    r = os_poll(ms->pfds, nfds, wake > now ? (int)(wake - now) : 0);
    if (r < 0 && errno != EINTR) { ms_log(ms, "poll: %s", strerror(errno)); return -1; }
    loop_dispatch(ms, nfds, r > 0);
    now = os_now_ms();
    for (i = 0; i < ms->nconns; i++) { /* idle sessions cost nothing; new ones were greeted in loop_accept */
        struct conn *c = ms->conns[i];
        if (!c->is_closing && (c->io.revents || conn_may_go_on(c) || (c->hold_until && now >= c->hold_until))) conn_run(c);
    }
    loop_work(ms);
    loop_group_commit(ms);
    loop_timers(ms, now);
    for (i = 0; i < ms->nout; i++) mta_timer(ms->out[i], now);
    if (ms->relay_kick || now >= ms->relay_wake) relay_run(ms);
    loop_sweep(ms);
    client_flush(ms, now);
    loop_check_reload(ms, now);
    if (ms->nlst) relay_check_flush(ms, now);
    if (ms->qdir[0]) loop_check_control(ms, now); /* stopping too: status answers, a second stop waits */
    if (ms->nlst) loop_clean_tmp(ms, now);
    return 0;
}

/*==== 16. Public API ====*/

/* The log: standard error, or [server] log, a file appended to (O_APPEND: one write per line, so
 * lines of other writers are never cut). */
static void
default_log(void *user, const char *line)
{
    const struct mailsrv *ms = user;
    char ts[32], out[2100];
    int n;
    ms_utc_time(ts, sizeof ts, (int64_t)time(NULL), 'T', "Z");
    if (!ms || ms->log_fd < 0) {
        fprintf(stderr, "%s %s\n", ts, line);
        fflush(stderr);
        return;
    }
    n = snprintf(out, sizeof out, "%s %s\n", ts, line);
    if (n >= (int)sizeof out) { n = (int)sizeof out - 1; out[n - 1] = '\n'; }
    os_write_all(ms->log_fd, out, (size_t)n);
}

/* Opens [server] log again, at start and at every reload (SIGHUP, `mailsrv reload`): logrotate
 * renames the file, then asks for a reload, and the next line goes to a new file. A file that
 * cannot be opened leaves the log where it was, saying so there. No link is followed: the
 * account the server becomes may own the log's folder. */
static void
ms_log_reopen(struct mailsrv *ms, const char *path)
{
    int fd = -1;
    if (!path[0]) path = ms->log_default;
    if (path[0] && (fd = os_open(path, O_WRONLY | O_APPEND | O_CREAT | MS_O_NOFOLLOW | MS_O_NOBLOCK, 0640)) < 0) {
        ms_log(ms, "cannot open the log %s: %s; logging to %s", path, strerror(errno),
               ms->log_path[0] ? ms->log_path : "standard error");
        return;
    }
    if (ms->log_fd >= 0) os_close(ms->log_fd);
    ms->log_fd = fd;
    ms_strlcpy(ms->log_path, path, sizeof ms->log_path);
}

/* see mailsrv.h */
struct mailsrv *
mailsrv_create(void)
{
    struct mailsrv *ms = calloc(1, sizeof *ms);
    if (!ms) return NULL;
    if (os_net_start() != 0) { free(ms); return NULL; }
    ms->log_fn = default_log;
    ms->log_user = ms;
    ms->log_fd = -1;
    ms->started_ms = os_now_ms();
    ms->chaos[CHAOS_SENDER].code = ms->chaos[CHAOS_RCPT].code = 451;
    ms->chaos[CHAOS_AUTH].code = 535;
    return ms;
}

/* see mailsrv.h */
void
mailsrv_destroy(struct mailsrv *ms)
{
    int i;
    if (!ms) return;
    loop_commit_rest(ms);
    for (i = 0; i < ms->nconns; i++) conn_free(ms->conns[i]);
    for (i = 0; i < ms->nout; i++) mta_free(ms->out[i]);
    for (i = 0; i < ms->nqueue; i++) qentry_free(ms->queue[i]);
    free(ms->out);
    free(ms->queue);
    free(ms->tls_cache);
    loop_close_listeners(ms);
    free(ms->conns);
    free(ms->per_client);
    free(ms->pfds);
    free(ms->watched);
    free(ms->commit_dirs.v);
    free(ms->commit_dirs.mb);
    free(ms->commit_batch.v);
    free(ms->commit_batch.mb);
    free(ms->ini_path);
    if (ms->stop_by_cli) loop_control_done(ms, "stopping"); /* `mailsrv stop` returns: the server is gone */
    cfg_free(ms->cfg);
    if (ms->log_fd >= 0) os_close(ms->log_fd);
    if (os_signal_target == ms) os_signal_target = NULL;
    free(ms);
    os_net_stop();
}

/* see mailsrv.h */
void
mailsrv_set_log(struct mailsrv *ms, mailsrv_log_fn fn, void *user)
{
    ms->log_fn = fn ? fn : default_log;
    ms->log_user = fn ? user : ms;
}

/* see mailsrv.h */
void mailsrv_set_verbose(struct mailsrv *ms, int verbose) { ms->verbose = verbose; }

/* see mailsrv.h */
void mailsrv_stop(struct mailsrv *ms) { ms->stop_requested = 1; }

/* see mailsrv.h */
void mailsrv_request_reload(struct mailsrv *ms) { ms->reload_requested = 1; }

/* A reload keeps what is only read at start, saying so (Postfix's "postfix reload" likewise leaves
 * queue_directory and mail_owner to a restart): listeners, storage and spool (a switch from
 * maildir to mbox would hide every message), the queue, user. */
static void
ms_keep_start_keys(struct mailsrv *ms, struct ms_config *c)
{
    const struct ms_config *o = ms->cfg;
    if (o->nlisten != c->nlisten || memcmp(o->listen, c->listen, sizeof c->listen[0] * (size_t)c->nlisten) != 0) {
        ms_log(ms, "listener changes take effect after a restart");
        memcpy(c->listen, o->listen, sizeof o->listen);
        c->nlisten = o->nlisten;
    }
    if (c->storage != o->storage) {
        ms_log(ms, "storage = %s takes effect after a restart; %s stays in use", store_of(c)->name, store_of(o)->name);
        c->storage = o->storage;
    }
    if (strcmp(c->spool, o->spool) != 0) {
        ms_log(ms, "spool = %s takes effect after a restart; %s stays in use", c->spool, o->spool);
        memcpy(c->spool, o->spool, sizeof c->spool);
    }
    if (strcmp(c->queue, o->queue) != 0) {
        ms_log(ms, "queue = %s takes effect after a restart; %s stays in use", c->queue, o->queue);
        memcpy(c->queue, o->queue, sizeof c->queue);
    }
    if (strcmp(c->user, o->user) != 0) {
        ms_log(ms, "user = %s takes effect after a restart", c->user[0] ? c->user : "(none)");
        memcpy(c->user, o->user, sizeof c->user);
    }
}

static int
ms_install_config(struct mailsrv *ms, struct ms_config *c)
{
    int i;
    long usec;
    os_wallclock(&ms->last_load, &usec);
    ms->last_load_errors = c->nerrors;
    if (c->nerrors) {
        const char *p = c->errors.p, *e;
        while (p && *p && (e = strchr(p, '\n')) != NULL) {
            ms_log(ms, "config error: %.*s", (int)(e - p), p);
            p = e + 1;
        }
        if (ms->cfg) ms_log(ms, "new configuration refused; the previous one stays in force");
        cfg_free(c);
        ms_log_reopen(ms, ms->cfg ? ms->cfg->log : ""); /* logrotate's reload: the file was renamed all the same */
        return -1;
    }
    if (ms->cfg) ms_keep_start_keys(ms, c);
    ms_log_reopen(ms, c->log);
    {   /* one blocking moment, before serving or at a reload: see README (Security) */
        int64_t t0 = os_now_ms();
        int n = cfg_hash_plain(c, ms->cfg);
        if (n) ms_log(ms, "hashed %d plain-text password%s of %s in %lld ms (`mailsrv passwd` makes hashes for the INI)",
                      n, n == 1 ? "" : "s", c->path, (long long)(os_now_ms() - t0));
    }
    if (c->capture && cfg_listens_beyond_loopback(c))
        ms_log(ms, "WARNING: capture mode accepts mail for every address and listens beyond loopback");
    if (ms->cfg) {
        int n = 0;
        for (i = 0; i < c->ndomains; i++) n += c->domains[i].nusers;
        ms_log(ms, "configuration loaded: %d domains, %d mailboxes", c->ndomains, n);
    }
    cfg_free(ms->cfg);
    ms->cfg = c;
    ms->nlive_outside = 0;
    for (i = 0; i < ms->nconns; i++) { /* relay_networks may have changed */
        struct conn *o = ms->conns[i];
        o->in_relay_nets = strcmp(o->peer, "local") == 0 || cfg_in_relay_nets(c, o->peer) != 0; /* local: a Unix socket's */
        ms->nlive_outside += !o->is_closing && !o->in_relay_nets;
    }
    http_forget_logins(ms); /* passwords and admins may have changed */
    if (ms->nlst) loop_fit_fd_limit(ms); /* serving: max_clients may have changed */
    return 0;
}

/* see mailsrv.h */
int
mailsrv_load_ini(struct mailsrv *ms, const char *path)
{
    struct os_stat st;
    if (os_stat(path, &st) == 0) { ms->ini_mtime = st.mtime; ms->ini_size = st.size; ms->ini_ino = st.ino; }
    if (ms->ini_path != path) {
        free(ms->ini_path);
        ms->ini_path = xstrdup(path);
    }
    ms->next_ini_check = os_now_ms() + MS_RELOAD_CHECK_MS;
    return ms_install_config(ms, cfg_load(path, NULL));
}

/* see mailsrv.h */
int
mailsrv_load_ini_string(struct mailsrv *ms, const char *text, const char *path)
{
    return ms_install_config(ms, cfg_load(path, text));
}

/* see mailsrv.h */
int
mailsrv_listen(struct mailsrv *ms)
{
    int i, gives;
    char tmpdir[MS_PATH_DOMAIN], err[MS_PATH_FILE];
    const struct ms_config *c = ms->cfg;
    if (!c) { ms_log(ms, "no configuration loaded"); return -1; }
    gives = c->user[0] && os_is_root();
    if (os_random(err, 16) != 0) { /* fail closed: list codes, DNS ids and salts need it */
        ms_log(ms, "the system's random generator does not work (getentropy, /dev/urandom): refusing to start");
        return -1;
    }
    if (os_is_root() && !c->user[0] && !c->allow_root && !ms->allow_root) {
        ms_log(ms, "%s: refusing to run as root: set user = ACCOUNT in [server] (mailsrv binds its ports, then "
               "becomes that account), or allow_root = yes, or to try it out, run mailsrv --allow-root", c->path);
        return -1;
    }
    if (os_is_root() && !c->user[0])
        ms_log(ms, "WARNING: running as root (%s): fine for trying mailsrv out; a real server runs as an account "
               "of its own (the systemd unit's mailsrv, or user = ACCOUNT)", ms->allow_root ? "--allow-root" : "allow_root = yes");
    /* Root gives spool, spool/.tmp and queue to `user`: whoever owns that
     * account may have replaced them with links (to /etc/shadow, to any
     * folder), so a link is refused before anything is done there: spool and
     * queue when root gives them away, spool/.tmp always (postfix-script
     * likewise complains about its queue folders). */
    for (i = 0; gives && i < 2; i++)
        if (os_lstat_kind(i ? c->queue : c->spool) == OS_LINK) {
            ms_log(ms, "%s: %s is a symbolic link: refusing to give it to %s (name the real folder in the INI)", c->path,
                   i ? c->queue : c->spool, c->user);
            return -1;
        }
    if (store_mkdir(c->spool, c->dir[0] ? c->dir : ".") != 0 || ms_fmt(tmpdir, sizeof tmpdir, "%s/.tmp", c->spool) < 0) {
        ms_log(ms, "cannot create the spool %s: %s", c->spool, strerror(errno));
        return -1;
    }
    if (os_lstat_kind(tmpdir) == OS_LINK) {
        ms_log(ms, "%s is a symbolic link: refusing to use it (mailsrv makes that folder itself: remove the link)", tmpdir);
        return -1;
    }
    if (store_mkdir(tmpdir, c->spool) != 0 || (gives && store_mkdir(c->queue, c->dir[0] ? c->dir : ".") != 0)) {
        ms_log(ms, "cannot create the spool %s: %s", c->spool, strerror(errno));
        return -1;
    }
    ms_strlcpy(ms->qdir, c->queue, sizeof ms->qdir);
    loop_control_done(ms, "stop"); /* a stop asked of no server, or one that was killed stopping */
    loop_control_done(ms, "stopping");
    ms->relay_wake = INT64_MAX;
    loop_fit_fd_limit(ms); /* said at start, before the listeners */
    for (i = 0; i < c->nlisten; i++) {
        const struct cfg_listen *l = &c->listen[i];
        int err = 0, waited, local = l->family == MS_AF_LOCAL;
        char name[sizeof ms->lst[0].name];
        ms_sock_t s;
        if (local) ms_strlcpy(name, l->addr, sizeof name);
        else snprintf(name, sizeof name, "%s%s%s:%u", l->family == AF_INET6 ? "[" : "", l->addr,
                      l->family == AF_INET6 ? "]" : "", l->port);
        s = local ? net_listen_unix(l->addr, &err) : net_listen(l->family, l->addr, l->port, &err);
        for (waited = 0; s == MS_BAD_SOCK && net_addr_in_use(err) && waited < MS_BIND_WAIT_S; waited++) {
            if (!waited) ms_log(ms, "%s is still in use; waiting up to %d s for it", name, MS_BIND_WAIT_S);
            os_sleep_ms(1000); /* nothing else is running yet */
            s = local ? net_listen_unix(l->addr, &err) : net_listen(l->family, l->addr, l->port, &err);
        }
        if (s == MS_BAD_SOCK) {
            if (l->optional) { ms_log(ms, "no IPv6 listener on port %u: %s", l->port, net_strerror(err)); continue; }
            ms_log(ms, "cannot listen on %s (%s): %s%s", name, proto_names[l->proto], net_strerror(err),
                   local && err == EEXIST ? " (not a socket: mailsrv replaces only a socket no server answers on)" : "");
            loop_close_listeners(ms);
            return -1;
        }
        ms->lst[ms->nlst].fd = s;
        ms->lst[ms->nlst].proto = (enum proto)l->proto;
        ms->lst[ms->nlst].tls = l->tls;
        ms->lst[ms->nlst].local = local;
        ms_strlcpy(ms->lst[ms->nlst].name, name, sizeof ms->lst[0].name);
        ms_log(ms, "listening for %s%s on %s", proto_names[l->proto], l->tls ? " over TLS" : "", ms->lst[ms->nlst].name);
        if (l->proto == PROTO_LMTP && !local && strncmp(l->addr, "127.", 4) != 0 && strcmp(l->addr, "::1") != 0)
            ms_log(ms, "warning: lmtp on %s: whoever reaches it delivers to the local mailboxes without a login; "
                   "listen on 127.0.0.1 or a Unix socket", name);
        ms->nlst++;
    }
    if (c->user[0] && !os_is_root()) {
        ms_log(ms, "user = %s has no effect: not started as root", c->user);
    } else if (c->user[0]) { /* before any client byte is read */
        if (os_drop_root(c->user, c->spool, ".tmp", tmpdir, c->queue, err, sizeof err) != 0) {
            ms_log(ms, "%s: %s", c->path, err);
            loop_close_listeners(ms);
            return -1;
        }
        ms_log(ms, "running as %s", c->user);
    }
    /* what a crash left in .tmp and the queue is removed as `user`, not as root */
    ms->next_tmp_clean = 0;
    loop_clean_tmp(ms, os_now_ms());
    os_list_dir(ms->qdir, relay_scan_entry, ms);
    if (ms->nqueue) ms_log(ms, "%d messages in the relay queue %s", ms->nqueue, ms->qdir);
    return 0;
}

/* see mailsrv.h */
int
mailsrv_run(struct mailsrv *ms)
{
    while (mailsrv_poll(ms, 1000) == 0) {}
    ms_log(ms, "stopped");
    return 0;
}

/*==== 17. Command line and main() ====*/

static int
cli_split_address(const char *arg, char *user, char *domain)
{
    char a[MS_DOMAIN_MAX + 1];
    const char *at = strrchr(arg, '@');
    if (!at || (size_t)(at - arg) > MS_LOCAL_MAX || strlen(at + 1) > MS_DOMAIN_MAX) return -1;
    memcpy(user, arg, (size_t)(at - arg));
    user[at - arg] = 0;
    strcpy(domain, at + 1);
    ms_lower(user);
    ms_lower(domain); /* ASCII only: a U-label stays as it is typed, and the INI gets it so */
    return cfg_safe_component(user, MS_LOCAL_MAX) && idna_to_ascii(domain, a, sizeof a) == 0 && cfg_valid_domain(a) ? 0 : -1;
}

static int
cli_print_errors(const struct ms_config *c)
{
    if (!c->nerrors) return 0;
    fputs(c->errors.p, stderr);
    return 1;
}

static int
cli_check(const char *path)
{
    struct ms_config *c = cfg_load(path, NULL);
    int i, users = 0, aliases = 0;
    if (cli_print_errors(c)) { cfg_free(c); return 1; }
    for (i = 0; i < c->ndomains; i++) { users += c->domains[i].nusers; aliases += c->domains[i].naliases; }
    printf("%s: ok: %d domain%s, %d mailbox%s, %d alias%s, %d list%s, %d listener%s, %s storage in %s%s\n", path,
           c->ndomains, c->ndomains == 1 ? "" : "s", users, users == 1 ? "" : "es", aliases,
           aliases == 1 ? "" : "es", c->nlists, c->nlists == 1 ? "" : "s", c->nlisten, c->nlisten == 1 ? "" : "s",
           store_of(c)->name, c->spool, c->capture ? ", CAPTURE MODE" : "");
    if (c->capture && cfg_listens_beyond_loopback(c))
        fprintf(stderr, "%s: WARNING: capture mode accepts mail for every address, and a listener is "
                        "reachable beyond loopback\n", path);
    cfg_free(c);
    return 0;
}

/* del: the alias that names mailbox `user` of domain `md` as a member (bare in md's own
 * aliases, or user@domain in any domain's), or NULL; *in is the alias's domain. The
 * check of the edited file finds most of these, but not in a domain with a catch-all
 * (* =), where the member would then silently resolve to the catch-all. */
static const struct cfg_alias *
cli_alias_naming(const struct ms_config *c, const struct cfg_domain *md, const char *user, const char **in)
{
    int i, j;
    for (i = 0; i < c->ndomains; i++) {
        const struct cfg_domain *d = &c->domains[i];
        for (j = 0; j < d->naliases; j++) {
            char tmp[1024], *item, *save;
            if (ms_strlcpy(tmp, d->aliases[j].members, sizeof tmp) != 0) continue; /* never: an INI line holds 198 characters (inih) */
            for (save = tmp; (item = ms_next_item(&save, ',')) != NULL;) {
                char *m = ms_trim(item), *at = strrchr(m, '@');
                if (at) *at++ = 0;
                if ((at ? cfg_find_domain(c, at) : d) == md && ms_strcaseeq(m, user)) {
                    *in = d->name;
                    return &d->aliases[j];
                }
            }
        }
    }
    return NULL;
}

/* add / del: edit the text, check the result as a whole, then write it. */
static int
cli_edit(const char *path, const char *addr, int add)
{
    char user[MS_LOCAL_MAX + 1], domain[MS_DOMAIN_MAX + 1], err[512], pw[512], hash[160];
    struct ms_config *c;
    struct cfg_domain *d;
    const struct cfg_alias *a;
    const char *in;
    size_t len;
    char *text, *edited;
    int rc = 1;
    if (cli_split_address(addr, user, domain) != 0) {
        fprintf(stderr, "mailsrv: '%s' is not a valid address for a mailbox (user@domain)\n", addr);
        return 1;
    }
    c = cfg_load(path, NULL);
    if (cli_print_errors(c)) { fprintf(stderr, "mailsrv: fix %s first\n", path); cfg_free(c); return 1; }
    d = cfg_find_domain(c, domain);
    if (add && d && (cfg_find_user(d, user) || cfg_find_alias(d, user))) {
        fprintf(stderr, "mailsrv: %s@%s already exists\n", user, domain);
        cfg_free(c);
        return 1;
    }
    if (!add && d && cfg_find_user(d, user) && (a = cli_alias_naming(c, d, user, &in)) != NULL) {
        fprintf(stderr, "mailsrv: %s@%s is a member of the alias %s@%s: remove it there first\n", user, domain,
                a->name, in);
        cfg_free(c);
        return 1;
    }
    if (add) {
        const char *why;
        if (os_read_password(pw, sizeof pw) != 0) { fprintf(stderr, "mailsrv: no password on stdin\n"); cfg_free(c); return 1; }
        if ((why = pass_policy(pw)) != NULL) { fprintf(stderr, "mailsrv: %s\n", why); cfg_free(c); return 1; }
        if (pass_hash(pw, MS_PBKDF2_ITER, hash, sizeof hash) != 0) {
            fprintf(stderr, "mailsrv: the system's random generator failed: no password hash\n");
            cfg_free(c);
            return 1;
        }
    }
    if (!(text = cfg_read_file(path, &len))) { fprintf(stderr, "mailsrv: %s: %s\n", path, strerror(errno)); cfg_free(c); return 1; }
    edited = cfg_edit_mailbox(text, len, user, domain, add ? hash : NULL, err, sizeof err);
    if (edited && add && !d) { /* a new domain needs a postmaster (RFC 5321 4.5.1): this mailbox */
        struct buf b = {0};
        buf_adds(&b, edited);
        buf_printf(&b, "\n[alias %s]\npostmaster = %s\n", domain, user);
        free(edited);
        edited = b.p;
    }
    cfg_free(c);
    if (!edited) { fprintf(stderr, "mailsrv: %s\n", err); free(text); return 1; }
    c = cfg_load(path, edited);
    if (c->nerrors) {
        fprintf(stderr, "mailsrv: the file would not be valid after this change:\n");
        cli_print_errors(c);
    } else if (os_write_file_atomic(path, edited, strlen(edited)) != 0) {
        fprintf(stderr, "mailsrv: cannot write %s: %s\n", path, strerror(errno));
    } else {
        printf("%s %s@%s in %s%s\n", add ? "added" : "removed", user, domain, path,
               add && !d ? " (new domain; it is also its postmaster)" : add ? "" : " (its mail stays on disk)");
        rc = 0;
    }
    cfg_free(c);
    free(text);
    free(edited);
    return rc;
}

static int
cli_users(const char *path)
{
    struct ms_config *c = cfg_load(path, NULL);
    int i, j, k;
    if (cli_print_errors(c)) { cfg_free(c); return 1; }
    for (i = 0; i < c->ndomains; i++) {
        struct cfg_domain *d = &c->domains[i];
        char u[MS_DOMAIN_MAX * 2 + 1];
        if (idna_to_unicode(d->name, u, sizeof u) == 0 && strcmp(u, d->name) != 0) printf("domain %s (%s)\n", d->name, u);
        else printf("domain %s\n", d->name);
        for (j = 0; j < d->nusers; j++) {
            struct pop_view v;
            char addr[MS_PATH_MAX];
            int64_t bytes = 0;
            snprintf(addr, sizeof addr, "%s@%s", d->users[j].name, d->name);
            if (view_open_whole(store_of(c), &v, c->spool, addr) != 0) memset(&v, 0, sizeof v);
            for (k = 0; k < v.n; k++) bytes += v.msgs[k].size;
            printf("  mailbox %s messages=%d bytes=%lld\n", addr, v.n, (long long)bytes);
            view_free(&v);
        }
        for (j = 0; j < d->naliases; j++) {
            struct targets t = {0};
            cfg_expand_members(c, d->aliases[j].members, d->name, &t, 0);
            printf("  alias %s@%s ->", d->aliases[j].name, d->name);
            for (k = 0; k < t.n; k++) printf("%s %s", k ? "," : "", t.v[k]);
            printf("\n");
            targets_free(&t);
        }
    }
    cfg_free(c);
    return 0;
}

struct cli_queue { struct qentry **v; int n, bad; const char *dir; };

static int
cli_queue_entry(void *ctx, const char *name)
{
    struct cli_queue *q = ctx;
    char id[64];
    size_t n = strlen(name);
    struct qentry *e;
    if (n < 5 || n - 4 >= sizeof id || strcmp(name + n - 4, ".env") != 0) return 0;
    memcpy(id, name, n - 4);
    id[n - 4] = 0;
    if (!(e = queue_env_read(q->dir, id))) {
        fprintf(stderr, "mailsrv: %s/%s: not a readable queue entry\n", q->dir, name);
        q->bad++;
        return 0;
    }
    q->v = xrealloc(q->v, sizeof *q->v * (size_t)(q->n + 1));
    q->v[q->n++] = e;
    return 0;
}

static int
cli_queue_cmp(const void *a, const void *b)
{
    const struct qentry *x = *(const struct qentry *const *)a, *y = *(const struct qentry *const *)b;
    return x->arrived < y->arrived ? -1 : x->arrived > y->arrived ? 1 : strcmp(x->id, y->id);
}

/* `queue`: what waits for relaying, oldest first. */
static int
cli_queue(const char *path)
{
    struct ms_config *c = cfg_load(path, NULL);
    struct cli_queue q = {NULL, 0, 0, NULL};
    int64_t now;
    long usec;
    int i, j;
    if (cli_print_errors(c)) { cfg_free(c); return 1; }
    q.dir = c->queue;
    os_list_dir(c->queue, cli_queue_entry, &q);
    if (q.n > 1) qsort(q.v, (size_t)q.n, sizeof *q.v, cli_queue_cmp);
    os_wallclock(&now, &usec);
    for (i = 0; i < q.n; i++) {
        struct qentry *e = q.v[i];
        printf("%s age=%llds from=<%s> size=%lld\n", e->id, (long long)(now - e->arrived), e->from, (long long)e->size);
        for (j = 0; j < e->nr; j++)
            printf("    <%s> %s, tries=%d%s%s\n", e->r[j].addr, q_state_names[e->r[j].state], e->tries,
                   e->r[j].error[0] ? ": " : "", e->r[j].error);
        qentry_free(e);
    }
    if (q.n == 0 && !q.bad) printf("queue is empty\n");
    else printf("%d message%s queued in %s%s\n", q.n, q.n == 1 ? "" : "s", c->queue, q.bad ? " (and unreadable entries)" : "");
    free(q.v);
    cfg_free(c);
    return 0;
}

/* Creates QUEUE/NAME, the control file through which `flush` and `reload` reach the running
 * server (every platform, no pid file). Root may run them, and the service account owns the
 * queue: only a new file is created (O_EXCL follows no link and opens no FIFO, which would
 * block); one already there is a request not yet taken, if it is a plain file. */
static int
cli_make_flag(const struct ms_config *c, const char *name, char *flag, size_t size)
{
    int fd = -1;
    if (ms_fmt(flag, size, "%s/%s", c->queue, name) >= 0 && store_mkdir(c->queue, c->dir[0] ? c->dir : ".") == 0) {
        fd = os_open(flag, O_WRONLY | O_CREAT | O_EXCL | MS_O_NOFOLLOW, 0600);
        if (fd < 0 && errno == EEXIST && os_lstat_kind(flag) == OS_FILE) return 0;
        if (fd < 0 && errno == EEXIST) errno = EINVAL; /* a link, a FIFO, a folder: not ours */
    }
    if (fd < 0) {
        fprintf(stderr, "mailsrv: cannot create %s: %s\n", flag, strerror(errno));
        return -1;
    }
    os_close(fd);
    return 0;
}

/* `flush`: a control file the running server looks for every 2 s (this
 * works on Windows too, where there are no signals to send). */
static int
cli_flush(const char *path)
{
    struct ms_config *c = cfg_load(path, NULL);
    char flag[MS_PATH_FILE];
    if (cli_print_errors(c)) { cfg_free(c); return 1; }
    if (cli_make_flag(c, "flush", flag, sizeof flag) != 0) { cfg_free(c); return 1; }
    printf("flush requested (%s): the running server retries every queued message within %d s\n", flag,
           MS_QUEUE_CHECK_MS / 1000);
    cfg_free(c);
    return 0;
}

static int
cli_passwd(void)
{
    char pw[512], hash[160];
    const char *why;
    if (os_read_password(pw, sizeof pw) != 0 || !pw[0]) {
        fprintf(stderr, "mailsrv: give the password on stdin\n");
        return 1;
    }
    if ((why = pass_policy(pw)) != NULL) { fprintf(stderr, "mailsrv: %s\n", why); return 1; } /* as `add` */
    if (pass_hash(pw, MS_PBKDF2_ITER, hash, sizeof hash) != 0) {
        fprintf(stderr, "mailsrv: the system's random generator failed: no password hash\n");
        return 1;
    }
    printf("%s\n", hash);
    return 0;
}

/* `checkpassword PROGRAM [ARGS...]`: mailsrv's passwords (hashed or plain text, and names
 * as logins give them: auth_find) for Dovecot after a move, through qmail's checkpassword
 * interface (http://cr.yp.to/checkpwd/interface.html) as Dovecot 2.3 uses it (passdb or
 * userdb driver = checkpassword; src/auth/db-checkpassword.c): descriptor 3 holds
 * "login\0password\0timestamp\0", under 512 bytes. The right password: PROGRAM (Dovecot's
 * checkpassword-reply) runs in mailsrv's place with USER=the mailbox, which it hands back as
 * the user name. A wrong one, or no such mailbox: exit 1. With AUTHORIZED=1 (Dovecot's userdb
 * lookup, no password) PROGRAM runs with AUTHORIZED=2 if the mailbox exists, else exit 3.
 * Exit 2: input not in that form; 111: a temporary failure (the INI, reading, the exec). */
static int
cli_checkpassword(const char *path, char **prog)
{
    char in[512], mailbox[MS_PATH_MAX];
    unsigned char dk[32] = {0};
    const char *pass, *authorized = getenv("AUTHORIZED");
    const struct pass_key *k;
    const struct cfg_domain *d;
    struct cfg_user *u;
    struct ms_config *c;
    size_t len = 0;
    long n;
    int lookup = authorized && strcmp(authorized, "1") == 0, ok;
    while ((n = os_read(3, in + len, sizeof in - len)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { fprintf(stderr, "mailsrv: checkpassword: descriptor 3: %s\n", strerror(errno)); return 111; }
        if ((len += (size_t)n) == sizeof in) return 1; /* as qmail's checkpassword */
    }
    if (!(pass = memchr(in, 0, len)) || !memchr(pass + 1, 0, len - (size_t)(pass + 1 - in))) return 2;
    pass++;
    c = cfg_load_ex(path, NULL, 0); /* not the TLS files: Dovecot's auth process need not read the key */
    if (cli_print_errors(c)) { cfg_free(c); ms_wipe(in, sizeof in); return 111; }
    k = auth_find(c, in, &u, &d);
    if (!lookup) pbkdf2_sha256(pass, k->salt, k->saltlen, k->iter, dk);
    ok = u && ms_fmt(mailbox, sizeof mailbox, "%s@%s", u->name, d->name) >= 0 &&
         (lookup || ms_secret_eq(dk, sizeof dk, k->dk, sizeof dk));
    ms_wipe(in, sizeof in);
    cfg_free(c);
    if (!ok) return lookup ? 3 : 1;
    if (os_setenv("USER", mailbox) != 0 || (lookup && os_setenv("AUTHORIZED", "2") != 0)) return 111;
    os_exec(prog);
    fprintf(stderr, "mailsrv: checkpassword: cannot run %s: %s\n", prog[0], strerror(errno));
    return 111;
}

/* `list [ADDRESS]`: the lists, or one list's members with the proof of
 * their consent. For the admin only: no mail command shows this. */
static int
cli_list(const char *path, const char *addr)
{
    struct ms_config *c = cfg_load(path, NULL);
    char local[MS_PATH_MAX], *at, token[MS_LOCAL_MAX + 1], t1[64], t2[64];
    const struct cfg_list *l = NULL;
    struct list_state st;
    int i, kind, rc = 1;
    if (c->nerrors) { fputs(c->errors.p, stderr); cfg_free(c); return 1; }
    if (!addr) {
        for (i = 0; i < c->nlists; i++) {
            l = &c->lists[i];
            if (list_load(c, l, &st) != 0) printf("%s@%s: cannot read its state\n", l->name, l->domain);
            else printf("%s@%s: %d members, %d open requests, %ld posts; owner %s, post = %s\n", l->name, l->domain,
                        st.nm, st.np, st.seq, l->owner, l->post == LIST_POST_OWNER ? "owner" :
                        l->post == LIST_POST_ANYONE ? "anyone" : "members");
            list_state_free(&st);
        }
        if (!c->nlists) printf("no [list ...] section in %s\n", path);
        cfg_free(c);
        return 0;
    }
    ms_strlcpy(local, addr, sizeof local);
    if ((at = strrchr(local, '@')) != NULL) {
        *at = 0;
        l = list_match(c, local, at + 1, &kind, token, sizeof token);
    }
    if (!l || kind != LK_POST) fprintf(stderr, "mailsrv: %s is not a list in %s\n", addr, path);
    else if (list_load(c, l, &st) != 0) fprintf(stderr, "mailsrv: the state of %s cannot be read\n", addr);
    else {
        printf("%s@%s: %d members, %ld posts\n", l->name, l->domain, st.nm, st.seq);
        for (i = 0; i < st.nm; i++) {
            const struct list_member *m = &st.m[i];
            ms_utc_time(t1, sizeof t1, m->req_time, ' ', " UTC");
            ms_utc_time(t2, sizeof t2, m->conf_time, ' ', " UTC");
            printf("%s\n  requested %s from [%s], message %s\n  confirmed %s from [%s], message %s\n", m->addr, t1,
                   m->req_ip, m->req_id, t2, m->conf_ip, m->conf_id);
            if (m->bounces) printf("  bounced: %d posts in a row, the last post %ld\n", m->bounces, m->last_bounce);
        }
        for (i = 0; i < st.np; i++) {
            ms_utc_time(t1, sizeof t1, st.p[i].time, ' ', " UTC");
            printf("open request: %s %s, %s from [%s]\n", st.p[i].unsub ? "unsubscribe" : "subscribe", st.p[i].addr,
                   t1, st.p[i].ip);
        }
        list_state_free(&st);
        rc = 0;
    }
    cfg_free(c);
    return rc;
}

/* `reload`: checks the INI, then asks the running server to load it now through QUEUE/reload
 * (as `flush` does: every platform, no pid file) and waits until the server has loaded it. */
static int
cli_reload(const char *path)
{
    struct ms_config *c = cfg_load(path, NULL);
    char flag[MS_PATH_FILE];
    struct os_stat st;
    int waited;
    if (cli_print_errors(c)) {
        fprintf(stderr, "mailsrv: fix %s first; the running server keeps its configuration\n", path);
        cfg_free(c);
        return 1;
    }
    if (cli_make_flag(c, "reload", flag, sizeof flag) != 0) { cfg_free(c); return 1; }
    cfg_free(c);
    for (waited = 0; waited < 3 * MS_RELOAD_CHECK_MS; waited += 50) {
        if (os_stat(flag, &st) != 0) {
            printf("reloaded: the running server loaded %s\n", path);
            return 0;
        }
        os_sleep_ms(50);
    }
    os_unlink(flag);
    fprintf(stderr, "mailsrv: no running server took the request within %d s (is one running with %s?)\n",
            3 * MS_RELOAD_CHECK_MS / 1000, path);
    return 1;
}

/* Waits up to ms milliseconds for the control file to be gone: 0 when it is. */
static int
cli_wait_gone(const char *flag, int ms)
{
    struct os_stat st;
    int waited;
    for (waited = 0; waited < ms; waited += 50) {
        if (os_stat(flag, &st) != 0) return 0;
        os_sleep_ms(50);
    }
    return os_stat(flag, &st) != 0 ? 0 : -1;
}

/* `stop` and `status`: a control file for the running server (loop_check_control), which takes it
 * within MS_RELOAD_CHECK_MS; then `stop` waits until the server has stopped (sessions in flight
 * get MS_STOP_GRACE_MS) and `status` prints QUEUE/status.txt. When no server takes the request:
 * "not running", exit 0 for stop and 3 for status, as LSB init scripts answer. */
static int
cli_control(const char *path, const char *name)
{
    struct ms_config *c = cfg_load(path, NULL);
    char flag[MS_PATH_FILE], file[MS_PATH_FILE], text[4096];
    int stop = strcmp(name, "stop") == 0, fd;
    long n;
    if (c->nerrors) { /* the running server kept the configuration before these: it is still asked */
        fputs(c->errors.p, stderr);
        fprintf(stderr, "mailsrv: %s has errors (a running server keeps its configuration before them)\n", path);
    }
    if (cli_make_flag(c, name, flag, sizeof flag) != 0) { cfg_free(c); return 1; }
    if (ms_fmt(file, sizeof file, "%s/%s", c->queue, stop ? "stopping" : "status.txt") < 0) file[0] = 0;
    cfg_free(c);
    if (cli_wait_gone(flag, 3 * MS_RELOAD_CHECK_MS) != 0) {
        os_unlink(flag);
        printf("mailsrv is not running (no server with %s took the request within %d s)\n", path,
               3 * MS_RELOAD_CHECK_MS / 1000);
        return stop ? 0 : 3;
    }
    if (stop) {
        if (cli_wait_gone(file, MS_STOP_GRACE_MS + 5000) != 0) {
            fprintf(stderr, "mailsrv: the server is still stopping after %d s\n", MS_STOP_GRACE_MS / 1000 + 5);
            return 1;
        }
        printf("stopped\n");
        return 0;
    }
    /* the service account owns the queue: no link is followed, a FIFO is not waited on, and no
     * more than a status is read */
    if ((fd = os_open(file, O_RDONLY | MS_O_NOFOLLOW | MS_O_NOBLOCK, 0)) < 0 || (n = os_pread(fd, text, sizeof text - 1, 0)) < 0) {
        fprintf(stderr, "mailsrv: cannot read %s: %s\n", file, strerror(errno));
        if (fd >= 0) os_close(fd);
        return 1;
    }
    os_close(fd);
    text[n] = 0;
    fputs(text, stdout);
    return 0;
}

static void
cli_usage(void)
{
    fputs("usage: mailsrv [-c FILE] [-v] [--allow-root]\n"
          "                                         run the server (default FILE: ./mailsrv.ini); as root, only\n"
          "                                         with user = or allow_root = in FILE, or --allow-root\n"
          "       mailsrv [-c FILE] check           validate the configuration\n"
          "       mailsrv passwd                    hash a password read on stdin\n"
          "       mailsrv [-c FILE] add ADDRESS     add a mailbox (password on stdin)\n"
          "       mailsrv [-c FILE] del ADDRESS     remove a mailbox (its mail stays)\n"
          "       mailsrv [-c FILE] users           list domains, mailboxes and aliases\n"
          "       mailsrv [-c FILE] queue           list the messages waiting to be relayed\n"
          "       mailsrv [-c FILE] flush           make the running server retry them now\n"
          "       mailsrv [-c FILE] reload          make the running server load FILE (and reopen its log) now\n"
          "       mailsrv [-c FILE] stop            stop the running server, waiting until it has stopped\n"
          "       mailsrv [-c FILE] status          pid, uptime, sessions, queue and last reload of the running server\n"
          "       mailsrv [-c FILE] gencert [--name NAME]... [--ip ADDR]...\n"
          "                                         write a self-signed certificate and key for hostname,\n"
          "                                         this machine's name and addresses, localhost, and more\n"
          "       mailsrv [-c FILE] list [ADDRESS]  the mailing lists, or one list's members and their consent\n"
          "       mailsrv [-c FILE] checkpassword PROGRAM [ARGS...]\n"
          "                                         check a mailbox's password for Dovecot (qmail's checkpassword\n"
          "                                         interface: login and password on descriptor 3), then run PROGRAM\n"
          "       mailsrv [-c FILE] service install|remove\n"
          "                                         Windows: register mailsrv with the service manager, started at\n"
          "                                         boot with FILE (as mailsrv -c FILE --service), or remove it\n"
          "       mailsrv -V                        print the version\n",
          stderr);
}

/* `service install|remove` (Windows): the service manager starts mailsrv -c FILE --service. */
static int
cli_service(const char *path, const char *what)
{
    char msg[3 * MS_PATH_DOMAIN];
    struct ms_config *c;
    if (strcmp(what, "remove") == 0) {
        if (os_service_remove(msg, sizeof msg) != 0) { fprintf(stderr, "mailsrv: %s\n", msg); return 1; }
        printf("service mailsrv removed\n");
        return 0;
    }
    if (strcmp(what, "install") != 0) { cli_usage(); return 2; }
    c = cfg_load(path, NULL);
    if (cli_print_errors(c)) { cfg_free(c); return 1; }
    cfg_free(c);
    if (os_service_install(path, msg, sizeof msg) != 0) { fprintf(stderr, "mailsrv: %s\n", msg); return 1; }
    printf("service mailsrv installed, started at boot as LocalSystem: %s\n"
           "start it now with: sc start mailsrv (its log: [server] log, else mailsrv.log beside the INI)\n", msg);
    return 0;
}

/* The server's options from the command line (serve() is called through the service manager on Windows). */
static struct { const char *path; int verbose, allow_root, service; } cli_run;

static int
serve(void)
{
    struct mailsrv *ms;
    const char *sep = os_last_sep(cli_run.path);
    int rc;
    if (!(ms = mailsrv_create())) return 1;
    mailsrv_set_verbose(ms, cli_run.verbose);
    ms->allow_root = cli_run.allow_root;
    if (cli_run.service) /* no console: the log goes to a file unless the INI names one */
        ms_fmt(ms->log_default, sizeof ms->log_default, "%.*smailsrv.log", sep ? (int)(sep - cli_run.path + 1) : 0,
               cli_run.path);
    if (mailsrv_load_ini(ms, cli_run.path) != 0 || mailsrv_listen(ms) != 0) {
        mailsrv_destroy(ms);
        return 1;
    }
    os_install_signals(ms);
    ms_log(ms, "mailsrv %s started (%s storage in %s)%s%s", MAILSRV_VERSION,
           store_of(ms->cfg)->name, ms->cfg->spool,
           ms->cfg->capture ? " in CAPTURE MODE: every recipient is accepted and stored locally" : "",
           cli_run.service ? " as a service" : "");
    os_service_running();
    rc = mailsrv_run(ms);
    mailsrv_destroy(ms);
    return rc;
}

#ifndef MAILSRV_NO_MAIN
int
main(int argc, char **argv)
{
    const char *path = "mailsrv.ini", *cmd = NULL, *arg = NULL, *names[MS_CERT_NAMES], *ips[MS_CERT_NAMES];
    char **prog = NULL; /* checkpassword's: every argument after it */
    int i, verbose = 0, nnames = 0, nips = 0, allow_root = 0, service = 0;
    os_args_utf8(&argc, &argv); /* Windows: names in UTF-8, as everywhere */
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) path = argv[++i];
        else if (strcmp(argv[i], "-v") == 0) verbose = 1;
        else if (strcmp(argv[i], "--allow-root") == 0) allow_root = 1;
        else if (strcmp(argv[i], "--service") == 0) service = 1;
        else if (strcmp(argv[i], "-V") == 0) {
            printf("mailsrv %s (TLS: %s; HTTP: %s)%s\n", MAILSRV_VERSION, TLS_BUILT_IN, MAILSRV_ENABLE_HTTP ? "yes" : "no",
                   MAILSRV_FAULTS ? " FAULT INJECTION BUILD" : "");
            return 0;
        }
        else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc && nnames < MS_CERT_NAMES) names[nnames++] = argv[++i];
        else if (strcmp(argv[i], "--ip") == 0 && i + 1 < argc && nips < MS_CERT_NAMES) ips[nips++] = argv[++i];
        else if (argv[i][0] == '-') { cli_usage(); return 2; }
        else if (!cmd && strcmp(argv[i], "checkpassword") == 0) { cmd = argv[i]; prog = argv + i + 1; break; }
        else if (!cmd) cmd = argv[i];
        else if (!arg) arg = argv[i];
        else { cli_usage(); return 2; }
    }
    if ((nnames || nips) && (!cmd || strcmp(cmd, "gencert") != 0)) { cli_usage(); return 2; } /* gencert's */
    if ((allow_root || service) && cmd) { cli_usage(); return 2; } /* the server's */
    if (cmd) {
        if (strcmp(cmd, "check") == 0 && !arg) return cli_check(path);
        if (strcmp(cmd, "passwd") == 0 && !arg) return cli_passwd();
        if (strcmp(cmd, "users") == 0 && !arg) return cli_users(path);
        if (strcmp(cmd, "queue") == 0 && !arg) return cli_queue(path);
        if (strcmp(cmd, "flush") == 0 && !arg) return cli_flush(path);
        if (strcmp(cmd, "reload") == 0 && !arg) return cli_reload(path);
        if ((strcmp(cmd, "stop") == 0 || strcmp(cmd, "status") == 0) && !arg) return cli_control(path, cmd);
        if (strcmp(cmd, "gencert") == 0 && !arg) return cli_gencert(path, names, nnames, ips, nips);
        if (strcmp(cmd, "list") == 0) return cli_list(path, arg);
        if (prog && prog[0]) return cli_checkpassword(path, prog);
        if (strcmp(cmd, "service") == 0 && arg) return cli_service(path, arg);
        if ((strcmp(cmd, "add") == 0 || strcmp(cmd, "del") == 0) && arg) return cli_edit(path, arg, cmd[0] == 'a');
        cli_usage();
        return 2;
    }
    cli_run.path = path;
    cli_run.verbose = verbose;
    cli_run.allow_root = allow_root;
    cli_run.service = service;
    return service ? os_service_dispatch(serve) : serve();
}
#endif
