/* libFuzzer: SMTP STARTTLS and POP3 STLS with commands pipelined behind them
 * (the command injection of CVE-2011-0411: bytes a man in the middle adds
 * after STARTTLS in the clear must not run as if they came over TLS).
 * Input: one byte (bit 0: POP3, bit 1: submission, bit 2: a client that is
 * not loopback), then the client's packets, separated by 0xFF bytes; each
 * packet is one read. Oracle: when the reply to STARTTLS/STLS is out, the
 * input buffer is empty (the rest of the packet and anything read before
 * is dropped unread), that reply is the last one (nothing after it ran),
 * and the session is back at its start (no EHLO, AUTH, USER or transaction
 * survives). The handshake is then taken as done: the next packets are
 * the TLS session's bytes (in the clear here; c->tls stays NULL). */
#define MAILSRV_NO_MAIN
#define MS_PBKDF2_ITER 2 /* a login costs next to nothing here (the INI's passwords are hashed with it) */
#include "../../mailsrv.c"
#include "fuzz.h"

static const char pem[] = /* test/fuzz/corpus/pem/ec_sec1: mx.fuzz.test, P-256, until 2036 */
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBgzCCASmgAwIBAgIUCylanETn/VpGyVJmW38gF8NYr2AwCgYIKoZIzj0EAwIw\n"
    "FzEVMBMGA1UEAwwMbXguZnV6ei50ZXN0MB4XDTI2MTEyODAzNDUwMFoXDTM2MTEy\n"
    "NTAzNDUwMFowFzEVMBMGA1UEAwwMbXguZnV6ei50ZXN0MFkwEwYHKoZIzj0CAQYI\n"
    "KoZIzj0DAQcDQgAEp5FBXFSeP1Gm4OeaDupHFSn30h0l3mssi7c+QuTup4HQL6Cg\n"
    "8D4L6+n9vYoMghXieigL0GlB6Bls06zCrPQ07aNTMFEwHQYDVR0OBBYEFLowiK6/\n"
    "RNXBgYjgjF+kn8zaUij9MB8GA1UdIwQYMBaAFLowiK6/RNXBgYjgjF+kn8zaUij9\n"
    "MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgRXZg4Szzn5RI/egg\n"
    "JmRdML2oTEYNEPufVDACvk6EPfMCIQCHG3R71q3qBxCf5XvongKz/VT4coFmlIOO\n"
    "zqKaCE5m/w==\n"
    "-----END CERTIFICATE-----\n"
    "-----BEGIN EC PRIVATE KEY-----\n"
    "MHcCAQEEIBcVDzRIvxd9Q0W+C7X7q6bB1mPuE5L0duqNLXyaLVL9oAoGCCqGSM49\n"
    "AwEHoUQDQgAEp5FBXFSeP1Gm4OeaDupHFSn30h0l3mssi7c+QuTup4HQL6Cg8D4L\n"
    "6+n9vYoMghXieigL0GlB6Bls06zCrPQ07Q==\n"
    "-----END EC PRIVATE KEY-----\n";

static struct mailsrv *ms;

/* After each turn of the protocol: the checks, then the handshake "done". */
static void
check_turn(struct conn *c)
{
    int pop = c->proto == PROTO_POP3;
    if (c->tls_after_flush) {
        const char *want = pop ? "+OK Begin TLS negotiation\r\n" : "220 2.0.0 Ready to start TLS\r\n";
        size_t wl = strlen(want);
        assert(c->io.inlen == 0); /* the bytes behind STARTTLS are dropped unread */
        assert(c->io.out.len >= wl && memcmp(c->io.out.p + c->io.out.len - wl, want, wl) == 0); /* no command after it ran */
        if (pop) {
            assert(c->u.pop.state == POP_S_AUTH && !c->u.pop.user[0] && !c->u.pop.auth_wait);
        } else {
            const struct smtp_sess *s = &c->u.smtp;
            assert(s->state == SMTP_S_GREET && !s->esmtp && !s->helo[0] && !s->auth_user[0] && !s->from[0] &&
                   s->nrcpt == 0 && s->auth_step == 0);
        }
        c->tls_after_flush = 0; /* the handshake is over: from here the packets are the TLS session's */
    }
    if (getenv("FUZZ_SHOW") && c->io.out.len) fprintf(stderr, "%.*s", (int)c->io.out.len, c->io.out.p);
    c->io.out.len = c->io.out_off = 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conn *c;
    size_t used = 1;
    int turns = 0;
    if (size < 1) return 0;
    if (!ms) {
        char ini[600];
        snprintf(ini, sizeof ini, "%s/tls.pem", fuzz_dir());
        fuzz_write(ini, pem, sizeof pem - 1);
        snprintf(ini, sizeof ini, "submission = 127.0.0.1:5870\ntls_cert = %s/tls.pem\ntls_key = %s/tls.pem\n",
                 fuzz_dir(), fuzz_dir());
        ms = fuzz_server(ini, "");
        assert(ms->cfg->tls);
    }
    c = fuzz_conn(ms, data[0] & 1 ? PROTO_POP3 : data[0] & 2 ? PROTO_SUBMISSION : PROTO_SMTP,
                  data[0] & 4 ? "203.0.113.9" : "127.0.0.1");
    check_turn(c);
    while (!c->is_closing && !c->close_after_flush && used < size) {
        /* one packet: up to the next 0xFF (a longer one is read in as many turns as the buffer needs) */
        const uint8_t *ff = memchr(data + used, 0xff, size - used);
        size_t end = ff ? (size_t)(ff - data) : size, take = end - used;
        if (take > MS_IN_SIZE - c->io.inlen) take = MS_IN_SIZE - c->io.inlen;
        memcpy(c->io.in + c->io.inlen, data + used, take);
        c->io.inlen += take;
        used += take;
        if (used == end && ff) used++;
        c->hold_until = 0;
        conn_process(c);
        check_turn(c);
        while (c->login) { /* a login's PBKDF2, then its answer (as fuzz_session does) */
            unsigned all = ~0u;
            pbkdf2_step(&c->login->st, &all);
            login_done(c);
            c->hold_until = 0;
            conn_process(c);
            check_turn(c);
        }
        if (c->commit_pending) {
            c->ms->commit_dirs.n = 0;
            c->ops->group_committed(c, 1);
            conn_process(c);
            check_turn(c);
        }
        assert(++turns < 100000);
    }
    fuzz_conn_end(c);
    fuzz_rm_tree(ms->cfg->spool);
    fuzz_rm_tree(ms->qdir);
    return 0;
}
