/*
 * mailsrv.h - the public API of mailsrv, for embedding it in another program.
 *
 * mailsrv is one C99 file (mailsrv.c): an SMTP server with local delivery to
 * Maildir or mbox, and a POP3 server, all in one single-threaded poll() loop.
 * Everything not declared here is static inside mailsrv.c; tests and fuzzers
 * reach the internals by defining MAILSRV_NO_MAIN and including mailsrv.c.
 *
 * Typical use:
 *     struct mailsrv *ms = mailsrv_create();
 *     if (mailsrv_load_ini(ms, "mailsrv.ini") != 0) ...;   errors went to the log hook
 *     if (mailsrv_listen(ms) != 0) ...;
 *     mailsrv_run(ms);                    returns after mailsrv_stop()
 *     mailsrv_destroy(ms);
 */
#ifndef MAILSRV_H
#define MAILSRV_H

#ifdef __cplusplus
extern "C" {
#endif

#define MAILSRV_VERSION "0.1.0"

#ifndef MAILSRV_API
#define MAILSRV_API
#endif

struct mailsrv;

/* Receives one log line (no trailing newline). The default hook writes the
 * line with a time stamp to stderr. */
typedef void (*mailsrv_log_fn)(void *user, const char *line);

/* A server with no configuration; NULL if out of memory. */
MAILSRV_API struct mailsrv *mailsrv_create(void);

/* Closes every socket and frees everything; sessions in flight are dropped
 * (nothing acknowledged is lost: a 250 is only sent after the fsync). */
MAILSRV_API void mailsrv_destroy(struct mailsrv *ms);

/* Routes log lines to fn (NULL restores the default). verbose != 0 also logs
 * every protocol line (passwords are masked). */
MAILSRV_API void mailsrv_set_log(struct mailsrv *ms, mailsrv_log_fn fn, void *user);
MAILSRV_API void mailsrv_set_verbose(struct mailsrv *ms, int verbose);

/* Loads and validates an INI file, or INI text (path is then only used for
 * messages and as the base of relative paths). Returns 0, or -1 after logging
 * one "FILE:LINE: reason" line per error; the previous configuration, if any,
 * stays in force. Calling it on a running server reloads domains, mailboxes
 * and aliases; listener changes need a restart. */
MAILSRV_API int mailsrv_load_ini(struct mailsrv *ms, const char *path);
MAILSRV_API int mailsrv_load_ini_string(struct mailsrv *ms, const char *text, const char *path);

/* Opens the listening sockets of the loaded configuration. 0 or -1. */
MAILSRV_API int mailsrv_listen(struct mailsrv *ms);

/* One turn of the event loop: waits at most timeout_ms for network events,
 * serves them, runs timers. Returns 0 while running, 1 once a stop has
 * completed (all sessions finished or the grace time is over). */
MAILSRV_API int mailsrv_poll(struct mailsrv *ms, int timeout_ms);

/* Calls mailsrv_poll until the server has stopped. Returns 0. */
MAILSRV_API int mailsrv_run(struct mailsrv *ms);

/* Asks the server to stop: no new connections, sessions in flight finish.
 * Only sets a flag, so it is safe to call from a signal handler. */
MAILSRV_API void mailsrv_stop(struct mailsrv *ms);

/* Asks for a configuration reload at the next loop turn (safe from a signal
 * handler, e.g. SIGHUP). The file is also re-read when it changes. */
MAILSRV_API void mailsrv_request_reload(struct mailsrv *ms);

#ifdef __cplusplus
}
#endif
#endif /* MAILSRV_H */
