/* Unit tests of mailsrv's parsers and helpers: includes mailsrv.c without main. */
#define MAILSRV_NO_MAIN
#include "../mailsrv.c"

#ifdef _WIN32
/* mingw-w64 has no mkdtemp, utimensat or 2-argument mkdir: the same through the CRT and mailsrv's
 * own platform layer. "/tmp" is the current drive's \tmp (Z:\tmp, i.e. /tmp, under wine). */
#include <sys/utime.h>
static char *
unit_mkdtemp(char *tmpl)
{
    os_mkdir("/tmp");
    return _mktemp(tmpl) && os_mkdir(tmpl) == 0 ? tmpl : NULL;
}
#define mkdtemp unit_mkdtemp
#endif

static int passed, failed;
#define ASSERT(cond) do { if (cond) passed++; else { failed++; \
    printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } } while (0)

/* Runs the DATA machine over input in chunks of `step` bytes; returns the
 * stored text, and the count of bytes consumed through the end marker. */
static char *
rx_run(const char *in, size_t step, int *done, size_t *used, struct data_rx *d)
{
    static char out[8192];
    size_t n = strlen(in), olen = 0;
    *used = 0;
    *done = 0;
    data_rx_init(d);
    while (*used < n && !*done) {
        size_t take = n - *used < step ? n - *used : step;
        *used += data_rx_feed(d, in + *used, take, out, sizeof out - 1, &olen, done);
    }
    out[olen] = 0;
    return out;
}

static void
test_data_rx(void)
{
    struct data_rx d;
    int done;
    size_t used, step;
    char *o;
    for (step = 1; step <= 64; step *= 4) {
        o = rx_run("Subject: x\r\n\r\nhello\r\n..dot\r\n.\r\nMAIL FROM:<x>\r\n", step, &done, &used, &d);
        ASSERT(done);
        ASSERT(strcmp(o, "Subject: x\n\nhello\n.dot\n") == 0);
        ASSERT(used == strlen("Subject: x\r\n\r\nhello\r\n..dot\r\n.\r\n"));
    }
    /* the message may be empty */
    o = rx_run(".\r\n", 1, &done, &used, &d);
    ASSERT(done && o[0] == 0 && used == 3);
    /* smuggling: none of these end the message */
    {
        static const char *const smug[] = {"a\n.\nMAIL", "a\r\n.\rMAIL", "a\n.\r\nMAIL", "a\r.\r\nMAIL",
                                           "a\r\n.\nMAIL", "a\r.\rMAIL", "a\n.\rMAIL"};
        size_t i;
        for (i = 0; i < sizeof smug / sizeof smug[0]; i++) {
            o = rx_run(smug[i], 1, &done, &used, &d);
            ASSERT(!done);
            ASSERT(strstr(o, "MAIL") != NULL);
        }
    }
    /* bare LF normalised to a line end; the end needs a real CRLF before it */
    o = rx_run("a\nb\r\n.\r\n", 3, &done, &used, &d);
    ASSERT(done && strcmp(o, "a\nb\n") == 0 && d.lines == 2);
    o = rx_run("x\n.\r\n.\r\n", 1, &done, &used, &d);
    ASSERT(done && strcmp(o, "x\n.\n") == 0);
    /* line length: 998 octets of text fit, 999 do not */
    {
        char big[MS_PATH_MAILBOX];
        memset(big, 'a', 998);
        strcpy(big + 998, "\r\n.\r\n");
        rx_run(big, 100, &done, &used, &d);
        ASSERT(done && !d.too_long);
        memset(big, 'a', 999);
        strcpy(big + 999, "\r\n.\r\n");
        rx_run(big, 100, &done, &used, &d);
        ASSERT(done && d.too_long && !d.eightbit);
        rx_run("a\xc3\xa4\r\n.\r\n", 2, &done, &used, &d);
        ASSERT(done && d.eightbit && !d.too_long);
    }
}

static void
test_smtp_path(void)
{
    char l[MS_PATH_MAX + 1], d[MS_DOMAIN_MAX + 1];
    const char *r;
    r = smtp_parse_path("<alice@example.org> SIZE=100", l, d);
    ASSERT(r && strcmp(l, "alice") == 0 && strcmp(d, "example.org") == 0 && strcmp(r, "SIZE=100") == 0);
    r = smtp_parse_path("<>", l, d);
    ASSERT(r && !l[0] && !d[0]);
    r = smtp_parse_path(" <a@b>", l, d);
    ASSERT(r && strcmp(l, "a") == 0);
    r = smtp_parse_path("<@relay.example:bob@example.org>", l, d);
    ASSERT(r && strcmp(l, "bob") == 0 && strcmp(d, "example.org") == 0);
    r = smtp_parse_path("<\"john doe\"@example.org>", l, d);
    ASSERT(r && strcmp(l, "john doe") == 0);
    r = smtp_parse_path("<Postmaster>", l, d);
    ASSERT(r && strcmp(l, "Postmaster") == 0 && !d[0]);
    ASSERT(smtp_parse_path("<a@b", l, d) == NULL);
    ASSERT(smtp_parse_path("<a@>", l, d) == NULL);
    ASSERT(smtp_parse_path("<@b>", l, d) == NULL);
    ASSERT(smtp_parse_path("<a<b@c>", l, d) == NULL);
    ASSERT(smtp_parse_path("<a@b>x", l, d) == NULL);
    r = smtp_parse_path("bare@example.org", l, d);
    ASSERT(r && strcmp(l, "bare") == 0);
    {
        char longp[400];
        memset(longp, 'a', sizeof longp);
        longp[0] = '<';
        strcpy(longp + 300, "@b>");
        ASSERT(smtp_parse_path(longp, l, d) == NULL);
    }
}

/* RFC 3461: xtext (4), MAIL FROM's RET and ENVID (4.3, 4.4), RCPT TO's NOTIFY and ORCPT (4.1, 4.2). */
static void
test_dsn_params(void)
{
    char out[64], orcpt[MS_ORCPT_MAX + 1], big[700];
    struct dsn_mail d;
    int notify;
    ASSERT(xtext_decode("a+2Bb+3Dc", 9, out, sizeof out) == 5 && strcmp(out, "a+b=c") == 0);
    ASSERT(xtext_decode("", 0, out, sizeof out) == 0 && !out[0]);
    ASSERT(xtext_decode("a+2b", 4, out, sizeof out) < 0);     /* hex digits are upper case */
    ASSERT(xtext_decode("a+2", 3, out, sizeof out) < 0);      /* cut short */
    ASSERT(xtext_decode("a+", 2, out, sizeof out) < 0);
    ASSERT(xtext_decode("a=b", 3, out, sizeof out) < 0);      /* "=" is never itself */
    ASSERT(xtext_decode("a b", 3, out, sizeof out) < 0);      /* nor a space */
    ASSERT(xtext_decode("+00", 3, out, sizeof out) < 0);      /* no NUL */
    ASSERT(xtext_decode("abcd", 4, out, 4) < 0);              /* does not fit */
    ASSERT(xtext_decode("abc", 3, out, 4) == 3);
    ASSERT(xtext_encode("a+b=c d\xe9", 8, out, sizeof out) == 16 && strcmp(out, "a+2Bb+3Dc+20d+E9") == 0);
    ASSERT(xtext_encode("a b", 3, out, 5) < 0 && xtext_encode("a b", 3, out, 6) == 5);
    { /* every octet but NUL survives the round trip */
        char raw[255], enc[800], dec[256];
        int i;
        for (i = 0; i < 255; i++) raw[i] = (char)(i + 1);
        ASSERT(xtext_encode(raw, 255, enc, sizeof enc) > 0);
        ASSERT(xtext_decode(enc, strlen(enc), dec, sizeof dec) == 255 && memcmp(raw, dec, 255) == 0);
    }
    memset(&d, 0, sizeof d);
    ASSERT(dsn_mail_param("SIZE=10", &d) == 0 && dsn_mail_param("AUTH=<>", &d) == 0);
    ASSERT(dsn_mail_param("ret=hdrs", &d) == 1 && d.ret == DSN_RET_HDRS);
    ASSERT(dsn_mail_param("RET=FULL", &d) < 0);               /* twice */
    memset(&d, 0, sizeof d);
    ASSERT(dsn_mail_param("RET=FULL", &d) == 1 && d.ret == DSN_RET_FULL);
    ASSERT(dsn_mail_param("ENVID=QQ+2B1", &d) == 1 && strcmp(d.envid, "QQ+2B1") == 0);
    ASSERT(dsn_mail_param("ENVID=x", &d) < 0);
    memset(&d, 0, sizeof d);
    ASSERT(dsn_mail_param("RET=", &d) < 0 && dsn_mail_param("RET=BODY", &d) < 0);
    ASSERT(dsn_mail_param("ENVID=", &d) < 0 && dsn_mail_param("ENVID=a+2", &d) < 0 && dsn_mail_param("ENVID=a=b", &d) < 0);
    memset(big, 'e', sizeof big);
    memcpy(big, "ENVID=", 6);
    big[6 + 100] = 0;
    ASSERT(dsn_mail_param(big, &d) == 1);                    /* 100 characters (4.4) */
    memset(&d, 0, sizeof d);
    big[6 + 100] = 'e';
    big[6 + 101] = 0;
    ASSERT(dsn_mail_param(big, &d) < 0);
    notify = 0;
    orcpt[0] = 0;
    ASSERT(dsn_rcpt_param("SIZE=1", &notify, orcpt) == 0);
    ASSERT(dsn_rcpt_param("NOTIFY=success,Failure", &notify, orcpt) == 1 && notify == (DSN_SUCCESS | DSN_FAILURE));
    ASSERT(dsn_rcpt_param("NOTIFY=DELAY", &notify, orcpt) < 0); /* twice */
    notify = 0;
    ASSERT(dsn_rcpt_param("NOTIFY=NEVER", &notify, orcpt) == 1 && notify == DSN_NEVER);
    notify = 0;
    ASSERT(dsn_rcpt_param("NOTIFY=NEVER,SUCCESS", &notify, orcpt) < 0 && dsn_rcpt_param("NOTIFY=SUCCESS,NEVER", &notify, orcpt) < 0);
    ASSERT(dsn_rcpt_param("NOTIFY=", &notify, orcpt) < 0 && dsn_rcpt_param("NOTIFY=SUCCESS,", &notify, orcpt) < 0);
    ASSERT(dsn_rcpt_param("NOTIFY=,SUCCESS", &notify, orcpt) < 0 && dsn_rcpt_param("NOTIFY=SUCCESS,SUCCESS", &notify, orcpt) < 0);
    ASSERT(dsn_rcpt_param("NOTIFY=SOMETIMES", &notify, orcpt) < 0 && notify == 0);
    ASSERT(dsn_rcpt_param("NOTIFY=DELAY,FAILURE,SUCCESS", &notify, orcpt) == 1);
    dsn_notify_text(notify, out, sizeof out);
    ASSERT(strcmp(out, "SUCCESS,FAILURE,DELAY") == 0);
    dsn_notify_text(DSN_NEVER, out, sizeof out);
    ASSERT(strcmp(out, "NEVER") == 0);
    dsn_notify_text(DSN_SUCCESS | DSN_DELAY, out, sizeof out);
    ASSERT(strcmp(out, "SUCCESS,DELAY") == 0);
    dsn_notify_text(DSN_DELAY, out, sizeof out);
    ASSERT(strcmp(out, "DELAY") == 0);
    dsn_notify_text(0, out, sizeof out);
    ASSERT(!out[0]);
    ASSERT(dsn_rcpt_param("ORCPT=rfc822;a+2Bb@c", &notify, orcpt) == 1 && strcmp(orcpt, "rfc822;a+2Bb@c") == 0);
    ASSERT(dsn_rcpt_param("ORCPT=rfc822;x@y", &notify, orcpt) < 0); /* twice */
    orcpt[0] = 0;
    ASSERT(dsn_rcpt_param("ORCPT=a@b", &notify, orcpt) < 0);       /* no addr-type */
    ASSERT(dsn_rcpt_param("ORCPT=;a@b", &notify, orcpt) < 0 && dsn_rcpt_param("ORCPT=rfc822;", &notify, orcpt) < 0);
    ASSERT(dsn_rcpt_param("ORCPT=rf c;a@b", &notify, orcpt) < 0 && dsn_rcpt_param("ORCPT=rfc822;a=b", &notify, orcpt) < 0);
    ASSERT(dsn_rcpt_param("ORCPT=rfc822;a+4", &notify, orcpt) < 0 && !orcpt[0]);
    memset(big, 'o', sizeof big);
    memcpy(big, "ORCPT=rfc822;", 13);
    big[6 + 500] = 0;
    ASSERT(dsn_rcpt_param(big, &notify, orcpt) == 1 && strlen(orcpt) == 500); /* 500 characters (4.2) */
    orcpt[0] = 0;
    big[6 + 500] = 'o';
    big[6 + 501] = 0;
    ASSERT(dsn_rcpt_param(big, &notify, orcpt) < 0);
}

static void
test_cmd_split(void)
{
    char verb[16];
    const char *a = cmd_split("mail FROM:<a@b>", verb, sizeof verb);
    ASSERT(strcmp(verb, "MAIL") == 0 && strcmp(a, "FROM:<a@b>") == 0);
    a = cmd_split("QUIT", verb, sizeof verb);
    ASSERT(strcmp(verb, "QUIT") == 0 && *a == 0);
    a = cmd_split("AVERYLONGVERBINDEEDXX arg", verb, sizeof verb);
    ASSERT(verb[0] == 0);
    ASSERT(pop_parse_num("1", 5) == 1 && pop_parse_num("5", 5) == 5);
    ASSERT(pop_parse_num("0", 5) < 0 && pop_parse_num("6", 5) < 0 && pop_parse_num("-1", 5) < 0);
    ASSERT(pop_parse_num("1x", 5) < 0 && pop_parse_num("", 5) < 0 && pop_parse_num("99999999999", 5) < 0);
}

static void
test_crypto(void)
{
    struct sha256 s;
    unsigned char h[32], dk[32], raw[64];
    char hex[65], b64[64];
    int i;
    sha256_init(&s);
    sha256_update(&s, "abc", 3);
    sha256_final(&s, h);
    for (i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", h[i]);
    ASSERT(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    /* RFC 7914 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1) */
    pbkdf2_sha256("passwd", (const unsigned char *)"salt", 4, 1, dk);
    for (i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", dk[i]);
    ASSERT(strcmp(hex, "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc") == 0);
    ASSERT(b64_encode((const unsigned char *)"\0alice\0pw", 9, b64, 1) == 12);
    ASSERT(strcmp(b64, "AGFsaWNlAHB3") == 0);
    ASSERT(b64_decode("AGFsaWNlAHB3", 12, raw, sizeof raw) == 9);
    ASSERT(b64_decode("AGF*", 4, raw, sizeof raw) < 0);
    ASSERT(b64_decode("QQ==", 4, raw, sizeof raw) == 1 && raw[0] == 'A');
    {
        char stored[160], u[64], p[64];
        pass_hash("Secr3tPass", 100, stored, sizeof stored);
        ASSERT(pass_is_hash(stored));
        ASSERT(pass_policy("Passw0rd1") == NULL);
        ASSERT(pass_policy("short1A") != NULL && pass_policy("alllowercase1") != NULL);
        ASSERT(pass_policy("NoDigitsHere") != NULL);
        ASSERT(sasl_plain_decode("AGFsaWNlAHB3", u, sizeof u, p, sizeof p) == 0);
        ASSERT(strcmp(u, "alice") == 0 && strcmp(p, "pw") == 0);
        b64_encode((const unsigned char *)"bob\0alice\0pw", 12, b64, 1);
        ASSERT(sasl_plain_decode(b64, u, sizeof u, p, sizeof p) != 0); /* proxy login refused */
        b64_encode((const unsigned char *)"alice\0alice\0pw", 14, b64, 1);
        ASSERT(sasl_plain_decode(b64, u, sizeof u, p, sizeof p) == 0);
        ASSERT(sasl_plain_decode("bm9udWxs", u, sizeof u, p, sizeof p) != 0);
    }
}

static const char *ini_ok =
    "[server]\n"
    "hostname = mx.example.org\n"
    "smtp = 127.0.0.1:2525, [::1]:2525\n"
    "pop3 = :1100\n"
    "max_message_size = 2M\n"
    "timeout = 5m\n"
    "[domain Example.ORG]\n"
    "alice = pw1\n"
    "bob = pw2\n"
    "[alias example.org]\n"
    "postmaster = alice\n"
    "team = alice, bob, alice\n"
    "all = team, bob\n"
    "* = bob\n";

static void
test_config(void)
{
    { /* inih cuts section and key names at 49 characters: those are refused, not cut */
        struct ms_config *lc = cfg_load("t.ini", "[server]\nsmtp = 127.0.0.1:25\n"
                                        "[domain a.oooooooooooooooooooooooooooooooooooooooooooooooovg]\npostmaster = x\n");
        ASSERT(lc->nerrors >= 1 && strstr(lc->errors.p, "t.ini:4: ") && strstr(lc->errors.p, "too long"));
        cfg_free(lc);
    }
    { /* inih would read the rest of a line over 198 characters as a line of its own */
        char t[400];
        struct ms_config *lc;
        snprintf(t, sizeof t, "[server]\nsmtp = 127.0.0.1:25 ;%0190d x = 1\n[domain a.org]\npostmaster = x\n", 0);
        lc = cfg_load("t.ini", t);
        ASSERT(lc->nerrors == 1 && strstr(lc->errors.p, "t.ini:2: line longer than 198 characters"));
        cfg_free(lc);
    }
    struct ms_config *c = cfg_load("/etc/x/test.ini", ini_ok);
    struct targets t = {0};
    ASSERT(c->nerrors == 0);
    if (c->nerrors) fputs(c->errors.p, stdout);
    ASSERT(strcmp(c->hostname, "mx.example.org") == 0);
    ASSERT(c->nlisten == 4); /* two smtp, pop3 on 0.0.0.0 and :: */
    ASSERT(c->max_message_size == 2 * 1024 * 1024 && c->timeout == 300);
    ASSERT(strcmp(c->spool, "/etc/x/spool") == 0);
    ASSERT(c->ndomains == 1 && strcmp(c->domains[0].name, "example.org") == 0);
    ASSERT(cfg_resolve(c, "team", "EXAMPLE.org.", &t, 0) == RES_OK && t.n == 2);
    t.n = 0;
    ASSERT(cfg_resolve(c, "all", "example.org", &t, 0) == RES_OK && t.n == 2);
    t.n = 0;
    ASSERT(cfg_resolve(c, "nobody", "example.org", &t, 0) == RES_OK && t.n == 1 && strcmp(t.v[0], "bob@example.org") == 0);
    t.n = 0;
    ASSERT(cfg_resolve(c, "alice", "elsewhere.org", &t, 0) == RES_NONLOCAL);
    ASSERT(cfg_resolve(c, "../etc", "example.org", &t, 0) == RES_UNKNOWN);
    targets_free(&t);
    cfg_free(c);

    c = cfg_load("t.ini", "[server]\nsmtp = :25\nbogus = 1\nmax_message_size = 10X\ntimeout = -3\n"
                          "storage = tape\n[domain a.org]\nx = y\n[other]\nk = v\n");
    ASSERT(c->nerrors == 5);
    ASSERT(strstr(c->errors.p, "t.ini:3: unknown key 'bogus'") != NULL);
    ASSERT(strstr(c->errors.p, "t.ini:4: max_message_size") != NULL);
    ASSERT(strstr(c->errors.p, "t.ini:5: timeout") != NULL);
    ASSERT(strstr(c->errors.p, "t.ini:6: storage") != NULL);
    ASSERT(strstr(c->errors.p, "t.ini:10: unknown section [other]") != NULL);
    cfg_free(c);

    c = cfg_load("t.ini", "[server]\nsmtp = :25\n[domain a.org]\nx = y\n");
    ASSERT(c->nerrors == 1 && strstr(c->errors.p, "t.ini:4: domain a.org has no postmaster") != NULL);
    cfg_free(c);
    c = cfg_load("t.ini", "[server]\nsmtp = :25\n[domain a.org]\nx = y\n[alias a.org]\npostmaster = x\nl = nobody\n");
    ASSERT(c->nerrors == 1 && strstr(c->errors.p, "t.ini:7:") != NULL);
    cfg_free(c);
    c = cfg_load("t.ini", "[server]\nsmtp = 1.2.3:25\n");
    ASSERT(c->nerrors >= 1 && strstr(c->errors.p, "t.ini:2: smtp") != NULL);
    cfg_free(c);
    c = cfg_load("t.ini", "[server]\nsmtp = :25\n[domain a.org]\n../x = y\nx = y\nX = z\n");
    ASSERT(strstr(c->errors.p, "t.ini:4:") != NULL && strstr(c->errors.p, "t.ini:6:") != NULL);
    cfg_free(c);

    ASSERT(cfg_safe_component("alice.smith", 64));
    ASSERT(!cfg_safe_component(".hidden", 64) && !cfg_safe_component("a/b", 64) && !cfg_safe_component("a\\b", 64));
    ASSERT(!cfg_safe_component("..", 64) && !cfg_safe_component("a..b", 64) && !cfg_safe_component("a\tb", 64));
    ASSERT(!cfg_safe_component("user%remote", 64) && !cfg_safe_component("remote!user", 64));
    ASSERT(cfg_valid_domain("a-b.example.org") && !cfg_valid_domain("a..b") && !cfg_valid_domain("a/b"));
}

static void
test_ini_edit(void)
{
    const char *text = "; top comment\n[server]\nsmtp = :25\n\n[domain a.org]\nx = y ; keep\n\n; trailing\n[alias a.org]\npostmaster = x\n";
    char err[128];
    char *e = cfg_edit_mailbox(text, strlen(text), "new", "a.org", "HASH", err, sizeof err);
    ASSERT(e && strcmp(e, "; top comment\n[server]\nsmtp = :25\n\n[domain a.org]\nx = y ; keep\nnew = HASH\n\n; trailing\n[alias a.org]\npostmaster = x\n") == 0);
    free(e);
    e = cfg_edit_mailbox(text, strlen(text), "u", "b.org", "H", err, sizeof err);
    ASSERT(e && strncmp(e, text, strlen(text)) == 0 && strcmp(e + strlen(text), "\n[domain b.org]\nu = H\n") == 0);
    free(e);
    e = cfg_edit_mailbox(text, strlen(text), "x", "a.org", NULL, err, sizeof err);
    ASSERT(e && strcmp(e, "; top comment\n[server]\nsmtp = :25\n\n[domain a.org]\n\n; trailing\n[alias a.org]\npostmaster = x\n") == 0);
    free(e);
    ASSERT(cfg_edit_mailbox(text, strlen(text), "zz", "a.org", NULL, err, sizeof err) == NULL);
    /* found by the INI fuzzer: a mailbox in a second [domain a.org] section */
    text = "[domain a.org]\nx = y\n[alias a.org]\npostmaster = x\n[domain a.org]\nz = w\n";
    e = cfg_edit_mailbox(text, strlen(text), "z", "a.org", NULL, err, sizeof err);
    ASSERT(e && strcmp(e, "[domain a.org]\nx = y\n[alias a.org]\npostmaster = x\n[domain a.org]\n") == 0);
    free(e);
    /* and one written "name: password", which inih also reads */
    text = "[domain a.org]\nx = y\nz: w\n";
    e = cfg_edit_mailbox(text, strlen(text), "z", "a.org", NULL, err, sizeof err);
    ASSERT(e && strcmp(e, "[domain a.org]\nx = y\n") == 0);
    free(e);
}

static void
test_mbox_and_uidl(void)
{
    char uidl[72];
    ASSERT(mbox_is_from_line("From x", 6, 0) && mbox_is_from_line(">>From x", 8, 0));
    ASSERT(!mbox_is_from_line("From x", 6, 1) && mbox_is_from_line(">From x", 7, 1));
    ASSERT(!mbox_is_from_line("Fro", 3, 0) && !mbox_is_from_line(">Frim", 5, 1));
    uidl_set(uidl, "abc", 3);
    ASSERT(strcmp(uidl, "abc") == 0);
    uidl_set(uidl, "a b", 3);
    ASSERT(strlen(uidl) == 32);
}

/* Delivery and the POP3 view through real files, both storage kinds. */
static void
test_storage(void)
{
    char dir[] = "/tmp/mailsrv-unit-XXXXXX";
    const char *body = "Return-Path: <s@x>\nSubject: t\n\nFrom the start\n>From quoted\n.dot\n";
    int kind;
    if (!mkdtemp(dir)) { ASSERT(0); return; }
    for (kind = 0; kind < 2; kind++) {
        struct ms_config *c = cfg_new("/tmp/x.ini");
        struct targets t = {0};
        struct store_msg m;
        struct pop_view v;
        const char *err;
        int i;
        c->storage = kind ? STORE_MBOX : STORE_MAILDIR;
        snprintf(c->spool, sizeof c->spool, "%s/%s", dir, kind ? "mbox" : "maildir");
        os_mkdir(c->spool);
        targets_add(&t, "u", "d.org", 0);
        for (i = 0; i < 3; i++) {
            memset(&m, 0, sizeof m);
            snprintf(m.id, sizeof m.id, "1.M1P1Q%d", i); /* msg_open's form: mbox trusts only that */
            snprintf(m.name, sizeof m.name, "id%d.host", i);
            snprintf(m.tmp_path, sizeof m.tmp_path, "%s/tmp%d", dir, i);
            strcpy(m.sender, "s@x");
            m.when = 1000000000;
            m.tmp_fd = os_open(m.tmp_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
            os_write_all(m.tmp_fd, body, strlen(body));
            m.size = (int64_t)strlen(body);
            m.lines = 6;
            ASSERT(store_deliver(c, &m, &t, &err, NULL, NULL, NULL) == 0);
            close(m.tmp_fd);
            unlink(m.tmp_path);
        }
        i = kind ? view_open_whole(&mbox_store, &v, c->spool, "u@d.org") : view_open_whole(&maildir_store, &v, c->spool, "u@d.org");
        ASSERT(i == 0 && v.n == 3);
        if (v.n == 3) {
            ASSERT(v.msgs[0].size == (int64_t)strlen(body) + 6 + (kind ? 18 : 0)); /* CRLF; mbox adds "X-UIDL: 1.M1P1QN" */
            char want[64]; /* Maildir: the name up to its flags, Dovecot's pop3_uidl_format = %f */
            snprintf(want, sizeof want, "id1.host,S=%d,W=%d", (int)strlen(body), (int)strlen(body) + 6);
            ASSERT(strcmp(v.msgs[1].uidl, kind ? "1.M1P1Q1" : want) == 0);
            v.msgs[1].deleted = 1;
            ASSERT(view_expunge(&v, INT64_MAX) == 1);
        }
        view_free(&v);
        i = kind ? view_open_whole(&mbox_store, &v, c->spool, "u@d.org") : view_open_whole(&maildir_store, &v, c->spool, "u@d.org");
        ASSERT(i == 0 && v.n == 2);
        if (v.n == 2) ASSERT(strncmp(v.msgs[1].uidl, kind ? "1.M1P1Q2" : "id2.host,S=", kind ? 9 : 11) == 0);
        view_free(&v);
        /* pop3_uidl = short: up to the first comma, the UIDLs of mailsrv 0.1 */
        ASSERT((kind ? &mbox_store : &maildir_store)->view_open(&v, c->spool, "u@d.org") == 0);
        v.uidl_short = 1;
        ASSERT(view_more(&v, INT64_MAX) == 1 && v.n == 2);
        if (v.n == 2) ASSERT(strcmp(v.msgs[1].uidl, kind ? "1.M1P1Q2" : "id2.host") == 0);
        if (kind && v.n == 2) {
            /* what another program appended stays, even unfinished (issue 11.1) */
            char path[MS_PATH_FILE];
            int fd;
            snprintf(path, sizeof path, "%s/d.org/u.mbox", c->spool);
            fd = os_open(path, O_WRONLY | O_APPEND, 0);
            ASSERT(write(fd, "From half\nSubject: cut", 22) == 22);
            close(fd);
            view_free(&v);
            ASSERT(view_open_whole(&mbox_store, &v, c->spool, "u@d.org") == 0 && v.n == 3);
        }
        view_free(&v);
        targets_free(&t);
        cfg_free(c);
    }
}

/* Appends a name in wire form; returns the new offset. */
static size_t
put_name(unsigned char *m, size_t o, const char *name)
{
    while (*name) {
        size_t l = strcspn(name, ".");
        m[o++] = (unsigned char)l;
        memcpy(m + o, name, l);
        o += l;
        name += l + (name[l] == '.');
    }
    m[o++] = 0;
    return o;
}

static size_t
put16(unsigned char *m, size_t o, unsigned v)
{
    m[o] = (unsigned char)(v >> 8);
    m[o + 1] = (unsigned char)v;
    return o + 2;
}

static void
test_dns(void)
{
    unsigned char q[300], m[600];
    struct dns_result r;
    char name[300];
    size_t o, off;
    int n = dns_build_query(q, sizeof q, 0xbeef, "Mx.Example.org", DNS_MX);
    ASSERT(n == 12 + 16 + 4);
    ASSERT(q[0] == 0xbe && q[1] == 0xef && q[2] == 0x01 && q[5] == 1);
    ASSERT(memcmp(q + 12, "\002Mx\007Example\003org\000", 16) == 0);
    ASSERT(dns_build_query(q, sizeof q, 1, "a..b", DNS_A) < 0);
    ASSERT(dns_build_query(q, sizeof q, 1, "x.y.", DNS_A) == 12 + 5 + 4);
    /* an answer: the question echoed, two MX with a compression pointer to it */
    n = dns_build_query(q, sizeof q, 0xbeef, "Mx.Example.org", DNS_MX);
    memcpy(m, q, (size_t)n);
    m[2] = 0x81; m[3] = 0x80; m[7] = 3;
    o = (size_t)n;
    o = put16(m, o, 0xc00c); o = put16(m, o, DNS_MX); o = put16(m, o, 1); o = put16(m, o, 0); o = put16(m, o, 60);
    o = put16(m, o, 2 + 6); o = put16(m, o, 20); m[o++] = 3; memcpy(m + o, "mx2", 3); o += 3; o = put16(m, o, 0xc00f);
    o = put16(m, o, 0xc00c); o = put16(m, o, DNS_MX); o = put16(m, o, 1); o = put16(m, o, 0); o = put16(m, o, 60);
    o = put16(m, o, 2 + 6); o = put16(m, o, 10); m[o++] = 3; memcpy(m + o, "mx1", 3); o += 3; o = put16(m, o, 0xc00f);
    /* a record for another name is ignored */
    o = put16(m, o, 0xc00f); o = put16(m, o, DNS_MX); o = put16(m, o, 1); o = put16(m, o, 0); o = put16(m, o, 60);
    o = put16(m, o, 2 + 1); o = put16(m, o, 5); m[o++] = 0;
    ASSERT(dns_parse_answer(m, o, 0xbeef, "mx.example.ORG", DNS_MX, &r) == 0);
    ASSERT(r.rcode == 0 && !r.tc && r.n == 2);
    ASSERT(r.rr[0].pref == 20 && strcmp(r.rr[0].host, "mx2.Example.org") == 0);
    ASSERT(r.rr[1].pref == 10 && strcmp(r.rr[1].host, "mx1.Example.org") == 0);
    /* not our answer: id, question name, type, or a truncated record */
    ASSERT(dns_parse_answer(m, o, 0xbeee, "mx.example.org", DNS_MX, &r) < 0);
    ASSERT(dns_parse_answer(m, o, 0xbeef, "other.example.org", DNS_MX, &r) < 0);
    ASSERT(dns_parse_answer(m, o, 0xbeef, "mx.example.org", DNS_A, &r) < 0);
    ASSERT(dns_parse_answer(m, o - 3, 0xbeef, "mx.example.org", DNS_MX, &r) < 0);
    m[2] = 0x01; /* a query, not a response */
    ASSERT(dns_parse_answer(m, o, 0xbeef, "mx.example.org", DNS_MX, &r) < 0);
    m[2] = 0x83; /* TC: the caller retries over TCP */
    ASSERT(dns_parse_answer(m, o, 0xbeef, "mx.example.org", DNS_MX, &r) == 0 && r.tc && r.n == 0);
    /* compression loops and forward jumps end */
    memset(m, 0, sizeof m);
    m[12] = 0xc0; m[13] = 12;
    off = 12;
    ASSERT(dns_read_name(m, 14, &off, name, sizeof name) < 0);
    m[12] = 0xc0; m[13] = 14; m[14] = 0xc0; m[15] = 12;
    off = 12;
    ASSERT(dns_read_name(m, 16, &off, name, sizeof name) < 0);
    m[12] = 0xc0; m[13] = 200;
    off = 12;
    ASSERT(dns_read_name(m, 14, &off, name, sizeof name) < 0);
    m[12] = 0; off = 12;
    ASSERT(dns_read_name(m, 13, &off, name, sizeof name) == 0 && name[0] == 0 && off == 13);
    /* null MX; a CNAME chain to an A record; NXDOMAIN */
    n = dns_build_query(q, sizeof q, 7, "n.org", DNS_MX);
    memcpy(m, q, (size_t)n);
    m[2] = 0x81; m[3] = 0x80; m[7] = 1;
    o = (size_t)n;
    o = put16(m, o, 0xc00c); o = put16(m, o, DNS_MX); o = put16(m, o, 1); o = put16(m, o, 0); o = put16(m, o, 60);
    o = put16(m, o, 3); o = put16(m, o, 0); m[o++] = 0;
    ASSERT(dns_parse_answer(m, o, 7, "n.org", DNS_MX, &r) == 0 && r.n == 1 && r.rr[0].pref == 0 && r.rr[0].host[0] == 0);
    n = dns_build_query(q, sizeof q, 9, "w.org", DNS_A);
    memcpy(m, q, (size_t)n);
    m[2] = 0x81; m[3] = 0x80; m[7] = 2;
    o = (size_t)n;
    o = put16(m, o, 0xc00c); o = put16(m, o, DNS_CNAME); o = put16(m, o, 1); o = put16(m, o, 0); o = put16(m, o, 60);
    o = put16(m, o, 4); m[o++] = 1; m[o++] = 'h'; o = put16(m, o, 0xc00e);
    o = put_name(m, o, "h.org"); o = put16(m, o, DNS_A); o = put16(m, o, 1); o = put16(m, o, 0); o = put16(m, o, 60);
    o = put16(m, o, 4); m[o++] = 127; m[o++] = 0; m[o++] = 0; m[o++] = 9;
    ASSERT(dns_parse_answer(m, o, 9, "w.org", DNS_A, &r) == 0 && r.n == 1 && r.rr[0].ip[3] == 9);
    m[3] = 0x83; m[7] = 0;
    ASSERT(dns_parse_answer(m, (size_t)n, 9, "w.org", DNS_A, &r) == 0 && r.rcode == DNS_NXDOMAIN && r.n == 0);
}

/* mta_mx_order: sorted by preference, equal ones shuffled (RFC 5321 5.1): a pref-10 pair
 * seen in both orders over 64 tries (a fair shuffle shows one order only with chance 2^-63),
 * the pref-5 host always first, the pref-20 always last. */
static void
test_mx_order(void)
{
    static const unsigned prefs[4] = {20, 10, 5, 10};
    static const char *names[4] = {"d", "b", "a", "c"};
    struct dns_rr mx[4];
    int i, k, seen_bc = 0, seen_cb = 0, sorted = 1;
    for (k = 0; k < 64; k++) {
        for (i = 0; i < 4; i++) {
            memset(&mx[i], 0, sizeof mx[i]);
            mx[i].pref = prefs[i];
            ms_strlcpy(mx[i].host, names[i], sizeof mx[i].host);
        }
        mta_mx_order(mx, 4);
        sorted &= strcmp(mx[0].host, "a") == 0 && strcmp(mx[3].host, "d") == 0 && mx[1].pref == 10 && mx[2].pref == 10;
        seen_bc |= strcmp(mx[1].host, "b") == 0;
        seen_cb |= strcmp(mx[1].host, "c") == 0;
    }
    ASSERT(sorted);
    ASSERT(seen_bc && seen_cb);
    mta_mx_order(mx, 1);
    ASSERT(mx[0].pref == 5);
}

static void
test_relay_parsers(void)
{
    struct ms_config *c;
    struct ms_addr a;
    struct cfg_hop h;
    int code;
    char err[256];
    ASSERT(smtp_reply_line("250-PIPELINING", &code) == 0 && code == 250);
    ASSERT(smtp_reply_line("550 5.1.1 no", &code) == 1 && code == 550);
    ASSERT(smtp_reply_line("220", &code) == 1 && code == 220);
    ASSERT(smtp_reply_line("2500 x", &code) < 0);
    ASSERT(smtp_reply_line("hello", &code) < 0);
    ASSERT(smtp_reply_line("150 x", &code) < 0);
    ASSERT(cfg_parse_hop("mx.example.org", &h, 25) == 0 && h.port == 25 && strcmp(h.host, "mx.example.org") == 0);
    ASSERT(cfg_parse_hop("192.168.1.12:2525", &h, 25) == 0 && h.port == 2525 && strcmp(h.host, "192.168.1.12") == 0);
    ASSERT(cfg_parse_hop("[::1]:26", &h, 25) == 0 && h.port == 26 && strcmp(h.host, "::1") == 0);
    ASSERT(cfg_parse_hop("fe80::1", &h, 25) == 0 && h.port == 25);
    ASSERT(cfg_parse_hop("host:0", &h, 25) < 0);
    ASSERT(cfg_parse_hop("bad host", &h, 25) < 0);
    ASSERT(cfg_parse_hop("[1.2.3.4]:25", &h, 25) < 0);
    c = cfg_load("t.ini", "[server]\nsmtp = :25\nrelay_networks = 10.0.0.0/8, 192.168.1.128/25, 2001:db8::/32\n"
                          "[domain a.org]\npostmaster = Passw0rd1\n");
    ASSERT(c->nerrors == 0 && c->nrelay_nets == 3);
    net_addr_parse("10.200.1.1", 0, &a);
    ASSERT(net_in_cidr(&c->relay_nets[0], &a) && !net_in_cidr(&c->relay_nets[1], &a));
    net_addr_parse("192.168.1.200", 0, &a);
    ASSERT(net_in_cidr(&c->relay_nets[1], &a));
    net_addr_parse("192.168.1.100", 0, &a);
    ASSERT(!net_in_cidr(&c->relay_nets[1], &a));
    net_addr_parse("2001:db8:ffff::1", 0, &a);
    ASSERT(net_in_cidr(&c->relay_nets[2], &a) && !net_in_cidr(&c->relay_nets[0], &a));
    cfg_free(c);
    /* defaults: loopback relays */
    c = cfg_load("t.ini", "[server]\nhostname = x\n");
    ASSERT(c->nrelay_nets == 2 && c->retry == 60 && c->expire == 5 * 86400 && c->relay_port == 25);
    cfg_free(c);
    c = cfg_load("t.ini", "[server]\nrelay_networks = 10.0.0.0/33\n[relay]\nexpire = 10x\nsmarthost = a b\n"
                          "dns = host.name\nbogus = 1\n[route]\nx.org = 1.2.3.4:99999\n");
    ASSERT(c->nerrors == 6);
    ASSERT(strstr(c->errors.p, "t.ini:2: relay_networks") && strstr(c->errors.p, "t.ini:4: expire"));
    ASSERT(strstr(c->errors.p, "t.ini:5: smarthost") && strstr(c->errors.p, "t.ini:6: dns"));
    ASSERT(strstr(c->errors.p, "t.ini:7: unknown key 'bogus' in [relay]") && strstr(c->errors.p, "t.ini:9: route for x.org"));
    ASSERT(c->nerrors == 6 || printf("%s", c->errors.p) < 0);
    cfg_free(c);
    c = cfg_load("t.ini", "[server]\nsmtp = :25\n[relay]\nsmarthost = [::1]:2525\ndns = 127.0.0.1:5353, ::1\n"
                          "retry = 2m\nexpire = 10s\n[route]\nStudy002.local = 192.168.1.12\n"
                          "[domain a.org]\nu = Passw0rd1\n[alias a.org]\npostmaster = u\nout = u, Friend@Remote.ORG\n");
    ASSERT(c->nerrors == 0);
    ASSERT(strcmp(c->smarthost.host, "::1") == 0 && c->smarthost.port == 2525);
    ASSERT(c->ndns == 2 && c->dns_port[0] == 5353 && c->dns_port[1] == 53 && c->retry == 120 && c->expire == 10);
    ASSERT(c->nroutes == 1 && strcmp(c->routes[0].domain, "study002.local") == 0 && c->routes[0].hop.port == 25);
    {
        struct targets t = {0};
        ASSERT(cfg_resolve(c, "out", "a.org", &t, 0) == RES_OK && t.n == 2);
        ASSERT(strcmp(t.v[1], "Friend@remote.org") == 0 && t.remote[1] && !t.remote[0]);
        ASSERT(cfg_resolve(c, "x", "remote.org", &t, 0) == RES_NONLOCAL);
        targets_free(&t);
    }
    cfg_free(c);
    ASSERT(addr_dot_string("a.b+c") && addr_dot_string("u%v") && !addr_dot_string("a..b") && !addr_dot_string("a@b") &&
           !addr_dot_string(".a") && !addr_dot_string("a b"));
    (void)err;
}

static void
test_queue_files(void)
{
    char dir[] = "/tmp/mailsrv-unit-qXXXXXX";
    struct qentry e, *back;
    struct qrcpt r[2];
    ASSERT(mkdtemp(dir) != NULL);
    memset(&e, 0, sizeof e);
    memset(r, 0, sizeof r);
    strcpy(e.id, "123.M1P2Q3");
    e.arrived = 1700000000;
    e.next_try = 1700000060;
    e.tries = 2;
    e.size = 4000;
    e.lines = 80;
    strcpy(r[0].addr, "Bob@remote.test");
    r[1].state = Q_BOUNCED;
    strcpy(r[1].addr, "x@nomail.test");
    strcpy(r[1].error, "550 5.1.1 <x@nomail.test>: no such user");
    e.r = r;
    e.nr = 2;
    ASSERT(queue_env_update(dir, &e) == 0);
    back = queue_env_read(dir, e.id);
    ASSERT(back != NULL);
    if (back) {
        ASSERT(back->from[0] == 0 && back->arrived == e.arrived && back->next_try == e.next_try && back->tries == 2);
        ASSERT(back->size == 4000 && back->lines == 80 && back->nr == 2);
        ASSERT(strcmp(back->r[0].addr, "Bob@remote.test") == 0 && back->r[0].state == Q_PENDING && !back->r[0].error[0]);
        ASSERT(back->r[1].state == Q_BOUNCED && strcmp(back->r[1].error, r[1].error) == 0);
        ASSERT(back->body == Q_BODY_UNKNOWN && !back->longlines); /* as an entry written before issue 18 */
        ASSERT(back->smtputf8 == 0);
        qentry_free(back);
    }
    e.body = Q_BODY_8BIT; /* the optional lines of issue 18 */
    e.longlines = 1;
    ASSERT(queue_env_update(dir, &e) == 0);
    back = queue_env_read(dir, e.id);
    ASSERT(back && back->body == Q_BODY_8BIT && back->longlines && back->nr == 2);
    qentry_free(back);
    e.body = Q_BODY_7BIT;
    e.longlines = 0;
    ASSERT(queue_env_update(dir, &e) == 0);
    back = queue_env_read(dir, e.id);
    ASSERT(back && back->body == Q_BODY_7BIT && !back->longlines);
    qentry_free(back);
    /* the optional "smtputf8 1" line (the client declared SMTPUTF8) and UTF-8 addresses come back */
    e.smtputf8 = 1;
    strcpy(e.from, "\xd0\xbf\xd1\x91\xd1\x82\xd1\x80@example.test");
    strcpy(r[0].addr, "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd@xn--80atdl2c.test");
    ASSERT(queue_env_update(dir, &e) == 0);
    back = queue_env_read(dir, e.id);
    ASSERT(back != NULL && back->smtputf8 == 1 && strcmp(back->from, e.from) == 0 && strcmp(back->r[0].addr, r[0].addr) == 0);
    qentry_free(back);
    e.smtputf8 = 0;
    e.from[0] = 0;
    strcpy(r[0].addr, "Bob@remote.test");
    { /* found by the .env fuzzer: a recipient without '@' makes the entry unreadable */
        FILE *f;
        char path[100];
        snprintf(path, sizeof path, "%s/bad.env", dir);
        f = fopen(path, "wb");
        fputs("mailsrv-queue 1\nfrom <a@b.c>\nrcpt pending x\n", f);
        fclose(f);
        ASSERT(queue_env_read(dir, "bad") == NULL);
        unlink(path);
    }
    { /* DSN lines (RFC 3461): written only when given, read back; an older entry stays readable */
        FILE *f;
        char path[100], text[2048];
        struct buf b = {0};
        e.ret = DSN_RET_HDRS;
        strcpy(e.envid, "QQ+2Bid");
        r[0].notify = DSN_SUCCESS | DSN_DELAY;
        strcpy(r[0].orcpt, "rfc822;bob+40remote.test");
        r[1].notify = DSN_NEVER;
        queue_env_text(&e, &b);
        ASSERT(b.p && strstr(b.p, "ret hdrs\nenvid QQ+2Bid\n") != NULL);
        ASSERT(b.p && strstr(b.p, "rcpt pending Bob@remote.test\ndsn SUCCESS,DELAY rfc822;bob+40remote.test\n") != NULL);
        ASSERT(b.p && strstr(b.p, "no such user\ndsn NEVER -\n") != NULL);
        buf_free(&b);
        ASSERT(queue_env_update(dir, &e) == 0);
        back = queue_env_read(dir, e.id);
        ASSERT(back != NULL);
        if (back) {
            ASSERT(back->ret == DSN_RET_HDRS && strcmp(back->envid, "QQ+2Bid") == 0 && back->nr == 2);
            ASSERT(back->r[0].notify == (DSN_SUCCESS | DSN_DELAY) && strcmp(back->r[0].orcpt, "rfc822;bob+40remote.test") == 0);
            ASSERT(back->r[1].notify == DSN_NEVER && !back->r[1].orcpt[0] && back->r[1].state == Q_BOUNCED);
            qentry_free(back);
        }
        snprintf(path, sizeof path, "%s/old.env", dir);
        f = fopen(path, "wb");
        fputs("mailsrv-queue 1\nfrom <a@b.c>\narrived 5\nrcpt pending x@y.z\n", f);
        fclose(f);
        back = queue_env_read(dir, "old");
        ASSERT(back && back->nr == 1 && !back->ret && !back->envid[0] && !back->r[0].notify && !back->r[0].orcpt[0]);
        qentry_free(back);
        static const char *const bad[] = {"dsn SUCCESS -\nrcpt pending x@y.z\n", "rcpt pending x@y.z\ndsn NEVER,SUCCESS -\n",
                                          "rcpt pending x@y.z\ndsn - bad\n", "rcpt pending x@y.z\ndsn -\n",
                                          "rcpt pending x@y.z\nret some\n", "rcpt pending x@y.z\nenvid a=b\n",
                                          "rcpt pending x@y.z\ndsn FAILURE -\ndsn FAILURE -\n"};
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            snprintf(text, sizeof text, "mailsrv-queue 1\nfrom <a@b.c>\n%s", bad[k]);
            f = fopen(path, "wb");
            fputs(text, f);
            fclose(f);
            ASSERT(queue_env_read(dir, "old") == NULL);
        }
        unlink(path);
        e.ret = 0;
        e.envid[0] = 0;
        memset(r, 0, sizeof r);
        strcpy(r[0].addr, "Bob@remote.test");
        r[1].state = Q_BOUNCED;
        strcpy(r[1].addr, "x@nomail.test");
        strcpy(r[1].error, "550 5.1.1 <x@nomail.test>: no such user");
    }
    {
        char st[16];
        relay_status("550 5.1.1 no such user", st, sizeof st);
        ASSERT(strcmp(st, "5.1.1") == 0);
        relay_status("451 try later", st, sizeof st);
        ASSERT(strcmp(st, "4.0.0") == 0);
        relay_status("5.1.10 null MX", st, sizeof st);
        ASSERT(strcmp(st, "5.1.10") == 0);
    }
    {
        char path[MS_PATH_FILE];
        snprintf(path, sizeof path, "%s/%s.env", dir, e.id);
        unlink(path);
        rmdir(dir);
    }
}

#if MAILSRV_ENABLE_TLS
static void
write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f) { fputs(text, f); fclose(f); }
}

static void
test_tls(void)
{
    char dir[] = "/tmp/mailsrv-unit-tlsXXXXXX", cert[200], key[200], cert2[200], key2[200], junk[200], err[2600];
    struct buf cb = {0}, kb = {0}, cb2 = {0}, kb2 = {0};
    struct tls_creds *t;
    ASSERT(mkdtemp(dir) != NULL);
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    snprintf(cert2, sizeof cert2, "%s/cert2.pem", dir);
    snprintf(key2, sizeof key2, "%s/key2.pem", dir);
    snprintf(junk, sizeof junk, "%s/junk.pem", dir);
    /* gencert's certificate: BearSSL decodes it and its key matches */
    ASSERT(tls_make_cert("mx.example.org", NULL, &cb, &kb) == 0);
    ASSERT(tls_make_cert("other.example.org", NULL, &cb2, &kb2) == 0);
    ASSERT(tls_write_pem(cert, cb.p, cb.len, "CERTIFICATE", 0644) == 0);
    ASSERT(tls_write_pem(key, kb.p, kb.len, BR_ENCODE_PEM_EC_RAW, 0600) == 0);
    ASSERT(tls_write_pem(cert2, cb2.p, cb2.len, "CERTIFICATE", 0644) == 0);
    ASSERT(tls_write_pem(key2, kb2.p, kb2.len, BR_ENCODE_PEM_EC_RAW, 0600) == 0);
    ASSERT(tls_write_pem(cert, cb.p, cb.len, "CERTIFICATE", 0644) != 0); /* never overwrites */
    t = tls_creds_load(cert, key, err, sizeof err);
    ASSERT(t && t->nchain == 1 && br_skey_decoder_key_type(&t->skey) == BR_KEYTYPE_EC);
    {
        br_x509_decoder_context dc;
        br_x509_decoder_init(&dc, NULL, NULL);
        br_x509_decoder_push(&dc, cb.p, cb.len);
        ASSERT(br_x509_decoder_get_pkey(&dc) != NULL && br_x509_decoder_last_error(&dc) == 0);
        ASSERT(br_x509_decoder_get_signer_key_type(&dc) == BR_KEYTYPE_EC);
    }
    tls_creds_release(t);
    /* errors name the file and say why */
    ASSERT(!tls_creds_load(cert, key2, err, sizeof err) && strstr(err, "does not belong"));
    ASSERT(!tls_creds_load(junk, key, err, sizeof err) && strstr(err, junk));
    write_text(junk, "not a pem file\n");
    ASSERT(!tls_creds_load(junk, key, err, sizeof err) && strstr(err, junk) && strstr(err, "no PEM object"));
    write_text(junk, "-----BEGIN CERTIFICATE-----\nMIIB\n");
    ASSERT(!tls_creds_load(junk, key, err, sizeof err) && strstr(err, junk));
    ASSERT(!tls_creds_load(key, key, err, sizeof err) && strstr(err, "no CERTIFICATE"));
    ASSERT(!tls_creds_load(cert, cert, err, sizeof err) && strstr(err, "no private key"));
    write_text(junk, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    ASSERT(!tls_creds_load(cert, junk, err, sizeof err) && strstr(err, junk));
    /* trust anchors: a self-signed leaf is trusted directly */
    t = tls_anchors_load(cert, err, sizeof err);
    ASSERT(t && t->nanchors == 1 && t->anchors[0].flags == 0 && t->anchors[0].dn.len > 0);
    tls_creds_release(t);
    ASSERT(!tls_anchors_load(key, err, sizeof err));
    tls_error_text(BR_ERR_X509_NOT_TRUSTED, err, sizeof err);
    ASSERT(strstr(err, "not trusted") != NULL);
    tls_error_text(BR_ERR_RECV_FATAL_ALERT + 40, err, sizeof err);
    ASSERT(strstr(err, "alert 40") != NULL);
    buf_free(&cb); buf_free(&kb); buf_free(&cb2); buf_free(&kb2);
    unlink(cert); unlink(key); unlink(cert2); unlink(key2); unlink(junk);
    rmdir(dir);
}
#endif

static void
test_lists(void)
{
    const char *h = "Return-Path: <a@b>\nSubject: first\n  folded\nList-Id: News <news.example.test>\n"
                    "Auto-Submitted: no\nPrecedence: bulk\n";
    char v[64], out[4][MS_PATH_MAX], text[600], *t;
    long seq;
    struct list_state st;
    struct buf b = {0};
    struct ms_config *c;
    const struct cfg_list *l;
    int kind;
    char token[MS_LOCAL_MAX + 1];
    ASSERT(hdr_get(h, strlen(h), "subject", v, sizeof v) && strcmp(v, "first  folded") == 0);
    ASSERT(hdr_get(h, strlen(h), "List-Id", v, sizeof v) && strcmp(v, "News <news.example.test>") == 0);
    ASSERT(!hdr_get(h, strlen(h), "From", v, sizeof v) && v[0] == 0);
    ASSERT(!hdr_auto_submitted(h, strlen(h)));       /* "no" is a person */
    ASSERT(hdr_is_automatic(h, strlen(h)));          /* Precedence: bulk */
    ASSERT(hdr_auto_submitted("Auto-Submitted: auto-replied\n", 28));
    ASSERT(!hdr_get("Subject: x\n\nFrom: y\n", 20, "From", v, sizeof v)); /* the body is not the header */
    /* RFC 3464 reports: failed recipients only, once each, and the post number */
    t = "Reporting-MTA: dns; x\n\nFinal-Recipient: rfc822; <a@x.test>\nAction: failed\n\n"
        "Final-Recipient: rfc822;b@x.test\r\nAction: delayed\r\n\r\nAction: failed\nFinal-Recipient: RFC822; c@x.test\n\n"
        "Final-Recipient: rfc822; a@x.test\nAction: failed\n\nX-Mailsrv-Seq: 42\n";
    ASSERT(dsn_failed(t, strlen(t), out, 4, &seq) == 2 && strcmp(out[0], "a@x.test") == 0 &&
           strcmp(out[1], "c@x.test") == 0 && seq == 42);
    ASSERT(dsn_failed("Final-Recipient: rfc822; z@x\nAction: failed", 43, out, 4, &seq) == 1 && seq == -1);
    ASSERT(dsn_failed("", 0, out, 4, &seq) == 0);
    /* the state file: round trip; anything malformed is refused whole */
    snprintf(text, sizeof text, "mailsrv-list 1\nseq 7\nmember a@x.test 100 127.0.0.1 <r@x> 200 ::1 - 2 6\n"
             "pending %s subscribe b@x.test 300 10.0.0.1 <q@y>\n", "0123456789abcdef01234567");
    ASSERT(list_state_parse(text, &st) == 0 && st.seq == 7 && st.nm == 1 && st.np == 1 &&
           st.m[0].conf_time == 200 && st.m[0].bounces == 2 && st.m[0].last_bounce == 6 && !st.p[0].unsub &&
           strcmp(st.p[0].ip, "10.0.0.1") == 0);
    list_state_text(&st, &b);
    ASSERT(strstr(b.p, "member a@x.test 100 127.0.0.1 <r@x> 200 ::1 - 2 6\n") != NULL);
    list_state_free(&st);
    buf_free(&b);
    snprintf(text, sizeof text, "mailsrv-list 1\nmember a@x.test 100 127.0.0.1\n");
    ASSERT(list_state_parse(text, &st) == -1 && st.nm == 0);
    snprintf(text, sizeof text, "mailsrv-list 1\npending short subscribe b@x.test 1 ip id\n");
    ASSERT(list_state_parse(text, &st) == -1);
    snprintf(text, sizeof text, "seq 1\n");
    ASSERT(list_state_parse(text, &st) == -1);
    /* list addresses */
    c = cfg_load("t.ini", "[server]\nsmtp = 127.0.0.1:2525\n[domain x.test]\nann = pw\n[alias x.test]\npostmaster = ann\n"
                 "[list News@X.test]\nowner = ann@x.test\n");
    ASSERT(c->nerrors == 0 && c->nlists == 1);
    l = list_match(c, "news-confirm-ABC", "x.test.", &kind, token, sizeof token);
    ASSERT(l && kind == LK_CONFIRM && strcmp(token, "ABC") == 0);
    ASSERT(list_match(c, "NEWS-Unsubscribe", "x.test", &kind, NULL, 0) && kind == LK_UNSUBSCRIBE);
    ASSERT(list_match(c, "news", "x.test", &kind, NULL, 0) && kind == LK_POST);
    ASSERT(!list_match(c, "news-confirm-", "x.test", &kind, NULL, 0));
    ASSERT(!list_match(c, "newsx", "x.test", &kind, NULL, 0) && !list_match(c, "news", "y.test", &kind, NULL, 0));
    cfg_free(c);
}

/* Issue 11.13b: duplicate UIDLs get a suffix that no other message has. */
static void
test_mbox_unique_uidls(void)
{
    struct pop_view v;
    const char *in[] = {"abc-2", "abc", "abc", "abc", "x"};
    int i;
    memset(&v, 0, sizeof v);
    for (i = 0; i < 5; i++) ms_strlcpy(view_add(&v)->uidl, in[i], sizeof v.msgs[0].uidl);
    view_unique_uidls(&v);
    ASSERT(strcmp(v.msgs[0].uidl, "abc-2") == 0 && strcmp(v.msgs[1].uidl, "abc") == 0);
    ASSERT(strcmp(v.msgs[2].uidl, "abc-3") == 0 && strcmp(v.msgs[3].uidl, "abc-4") == 0);
    ASSERT(strcmp(v.msgs[4].uidl, "x") == 0);
    view_free(&v);
    ASSERT(mbox_own_id("1796403659.M231384P11835Q1", 26) && !mbox_own_id("abc", 3) && !mbox_own_id("1.M2P3", 6));
}

static void
mbox_unit_file(const char *path, const char *text)
{
    int fd = os_open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT(fd >= 0 && write(fd, text, strlen(text)) == (long)strlen(text));
    close(fd);
}

static int
mbox_unit_is(const char *path, const char *text)
{
    char buf[4096];
    long n;
    int fd = os_open(path, O_RDONLY, 0);
    if (fd < 0) return 0;
    n = read(fd, buf, sizeof buf);
    close(fd);
    return n == (long)strlen(text) && memcmp(buf, text, (size_t)n) == 0;
}

/* the identity mailsrv's journal records for a file: os_fstat's (an inode; Windows' file index) */
static unsigned long long
mbox_unit_ino(const char *path)
{
    struct os_stat st;
    int fd = os_open(path, O_RDONLY, 0);
    st.ino = 0;
    if (fd >= 0) {
        os_fstat(fd, &st);
        os_close(fd);
    }
    return (unsigned long long)st.ino;
}

/* the journal record mbox_batch_append writes for the messages msg[0..n) appended at off */
static void
mbox_unit_batch(const char *jf, const char *mbox, size_t off, const char *const *msg, int n)
{
    char rec[200], list[2000], sum[33], dsum[33];
    size_t len = 0, ll = 0;
    int i;
    for (i = 0; i < n; i++) {
        size_t ml = strlen(msg[i]), pl = ml < MS_MBOX_PREFIX ? ml : MS_MBOX_PREFIX;
        mbox_piece_sum(msg[i], ml, sum);
        ll += (size_t)snprintf(list + ll, sizeof list - ll, "%lu %lu %s\n", (unsigned long)ml, (unsigned long)pl, sum);
        memcpy(list + ll, msg[i], pl);
        ll += pl;
        len += ml;
    }
    mbox_piece_sum(list, ll, dsum);
    snprintf(rec, sizeof rec, "batch %llu %lu %lu %d %lu %s\n", mbox_unit_ino(mbox), (unsigned long)off,
             (unsigned long)len, n, (unsigned long)ll, dsum);
    ASSERT(mbox_journal_put(jf, rec, strlen(rec), list, ll, 0) == 0);
}

/* mbox_unit_file(mbox, text), a batch journal for own[0..2) at off, then a lock (mbox_recover):
 * does the mbox hold want after it, and is the journal cleared? */
static int
mbox_unit_batch_recovers(const char *mbox, const char *jf, const char *text, size_t off, const char *const *own,
                         const char *want)
{
    int fd, created;
    char j[8];
    mbox_unit_file(mbox, text);
    mbox_unit_batch(jf, mbox, off, own, 2);
    fd = mbox_lock(mbox, jf, 0, &created);
    ASSERT(fd >= 0);
    if (fd >= 0) mbox_unlock(mbox, fd);
    fd = os_open(jf, O_RDONLY, 0);
    ASSERT(fd >= 0 && os_pread(fd, j, 5, 0) == 5 && memcmp(j, "none\n", 5) == 0);
    if (fd >= 0) os_close(fd);
    return mbox_unit_is(mbox, want);
}

/* Issue 14: a group commit's batch of appends to one mbox, interrupted: removed while the file
 * ends with (a prefix of) exactly the batch, its own From_ lines told from another program's
 * message by the checksums in the journal; anything else kept. */
static void
test_mbox_batch_journal(void)
{
    char dir[] = "/tmp/mailsrv-unit-XXXXXX", mbox[200], jf[200], text[2000];
    const char *old = "From a@b Mon Jan  1 00:00:00 2024\nSubject: old\n\nbody\n\n";
    const char *own[2] = {"From s@x Mon Jan  1 00:00:01 2024\nX-UIDL: 1.M1P1Q1\nSubject: mine\n\nmine\n\n",
                          "From t@x Mon Jan  1 00:00:01 2024\nX-UIDL: 1.M1P1Q2\nSubject: mine too, a longer one\n\n"
                          "mine too\n>From the quoted line\n\n"};
    const char *other = "From c@d Mon Jan  1 00:00:02 2024\nSubject: other\n\nother\n\n";
    size_t off = strlen(old);
    if (!mkdtemp(dir)) { ASSERT(0); return; }
    snprintf(mbox, sizeof mbox, "%s/u.mbox", dir);
    snprintf(jf, sizeof jf, "%s/.u.mbox.journal", dir);
    /* the whole batch, not yet cleared (never answered): removed */
    snprintf(text, sizeof text, "%s%s%s", old, own[0], own[1]);
    ASSERT(mbox_unit_batch_recovers(mbox, jf, text, off, own, old));
    /* the first message and half of the second: removed */
    snprintf(text, sizeof text, "%s%s%.60s", old, own[0], own[1]);
    ASSERT(mbox_unit_batch_recovers(mbox, jf, text, off, own, old));
    /* half of the first: removed */
    snprintf(text, sizeof text, "%s%.40s", old, own[0]);
    ASSERT(mbox_unit_batch_recovers(mbox, jf, text, off, own, old));
    /* just the From_ line of the second: removed */
    snprintf(text, sizeof text, "%s%s%.34s", old, own[0], own[1]);
    ASSERT(mbox_unit_batch_recovers(mbox, jf, text, off, own, old));
    /* the first message, then another program's, shorter than our second, at the boundary: kept */
    snprintf(text, sizeof text, "%s%s%s", old, own[0], other);
    ASSERT(strlen(other) < strlen(own[1]));
    ASSERT(mbox_unit_batch_recovers(mbox, jf, text, off, own, text));
    /* half of the first, then another program's: kept */
    snprintf(text, sizeof text, "%s%.40s\n%s", old, own[0], other);
    ASSERT(mbox_unit_batch_recovers(mbox, jf, text, off, own, text));
    /* the first message changed (not ours after all): kept */
    snprintf(text, sizeof text, "%s%s%s", old, own[0], own[1]);
    text[off + 45] = 'Z';
    ASSERT(mbox_unit_batch_recovers(mbox, jf, text, off, own, text));
    /* the whole batch and another program's message after it: kept */
    snprintf(text, sizeof text, "%s%s%s%s", old, own[0], own[1], other);
    ASSERT(mbox_unit_batch_recovers(mbox, jf, text, off, own, text));
    /* nothing of it was written: nothing to do */
    ASSERT(mbox_unit_batch_recovers(mbox, jf, old, off, own, old));
    unlink(mbox);
    unlink(jf);
    rmdir(dir);
}

/* Issue 11.1 and 11.9: the journal; an unfinished append of mailsrv's own is
 * removed only while the file ends with it; an interrupted deletion is finished. */
static void
test_mbox_journal(void)
{
    char dir[] = "/tmp/mailsrv-unit-XXXXXX", mbox[200], jf[200], rec[600];
    const char *old = "From a@b Mon Jan  1 00:00:00 2024\nSubject: old\n\nbody\n\n";
    const char *own = "From s@x Mon Jan  1 00:00:01 2024\nX-UIDL: 1.M1P1Q1\nSubject: mine\n\nmine\n\n";
    const char *other = "From c@d Mon Jan  1 00:00:02 2024\nSubject: other\n\nother\n\n";
    struct os_stat sb;
    char text[1000];
    int fd, created;
    if (!mkdtemp(dir)) { ASSERT(0); return; }
    snprintf(mbox, sizeof mbox, "%s/u.mbox", dir);
    snprintf(jf, sizeof jf, "%s/.u.mbox.journal", dir);
    /* half of our append at the end: removed */
    snprintf(text, sizeof text, "%s%.40s", old, own);
    mbox_unit_file(mbox, text);
    snprintf(rec, sizeof rec, "append %llu %lu %lu %lu\n%s", mbox_unit_ino(mbox), (unsigned long)strlen(old),
             (unsigned long)strlen(own), (unsigned long)strlen(own), own);
    ASSERT(mbox_journal_put(jf, rec, strlen(rec), NULL, 0, 0) == 0);
    fd = mbox_lock(mbox, jf, 0, &created);
    ASSERT(fd >= 0);
    if (fd >= 0) mbox_unlock(mbox, fd);
    ASSERT(mbox_unit_is(mbox, old));
    /* half of ours, then another program's message: all kept */
    snprintf(text, sizeof text, "%s%.40s\n%s", old, own, other);
    mbox_unit_file(mbox, text);
    ASSERT(mbox_journal_put(jf, rec, strlen(rec), NULL, 0, 0) == 0);
    fd = mbox_lock(mbox, jf, 0, &created);
    ASSERT(fd >= 0);
    if (fd >= 0) mbox_unlock(mbox, fd);
    ASSERT(mbox_unit_is(mbox, text));
    /* another program's append where ours was to go: kept */
    snprintf(text, sizeof text, "%s%s", old, other);
    mbox_unit_file(mbox, text);
    ASSERT(mbox_journal_put(jf, rec, strlen(rec), NULL, 0, 0) == 0);
    fd = mbox_lock(mbox, jf, 0, &created);
    if (fd >= 0) mbox_unlock(mbox, fd);
    ASSERT(mbox_unit_is(mbox, text));
    /* a deletion of "old" interrupted after 10 bytes moved: finished at the next lock */
    snprintf(text, sizeof text, "%s%s", old, other);
    memcpy(text, other, 10);
    mbox_unit_file(mbox, text);
    snprintf(rec, sizeof rec, "compact %llu 0 %lu %lu 10 0 -\n", mbox_unit_ino(mbox),
             (unsigned long)strlen(old), (unsigned long)strlen(text));
    ASSERT(mbox_journal_put(jf, rec, strlen(rec), NULL, 0, 0) == 0);
    fd = mbox_lock(mbox, jf, 0, &created);
    ASSERT(fd >= 0);
    if (fd >= 0) mbox_unlock(mbox, fd);
    ASSERT(mbox_unit_is(mbox, other));
    ASSERT(os_stat(jf, &sb) == 0 && sb.size == MS_MBOX_JOURNAL);
    /* a piece saved in the journal, its move half done and overlapping its source: written again from there */
    snprintf(text, sizeof text, "%s%s", old, other);
    mbox_unit_file(mbox, text);
    ASSERT(mbox_compact_rec(jf, mbox_unit_ino(mbox), 0, (int64_t)strlen(old), (int64_t)strlen(text), 0, other,
                            (int64_t)strlen(other)) == 0);
    memcpy(text, other, 20); /* the first 20 bytes got there before the crash */
    mbox_unit_file(mbox, text);
    fd = mbox_lock(mbox, jf, 0, &created);
    ASSERT(fd >= 0);
    if (fd >= 0) mbox_unlock(mbox, fd);
    ASSERT(mbox_unit_is(mbox, other));
    ASSERT(os_stat(jf, &sb) == 0 && sb.size == MS_MBOX_JOURNAL); /* the saved piece is given back */
    /* the dotlock: held by a running process, the mbox is busy; a dead one's is stale */
    snprintf(text, sizeof text, "%s.lock", mbox);
#ifndef _WIN32 /* no getppid there, and under wine the parent is no Windows process */
    snprintf(rec, sizeof rec, "%lu\n", (unsigned long)getppid());
    mbox_unit_file(text, rec);
    errno = 0;
    ASSERT(mbox_lock(mbox, jf, 0, &created) == -1 && errno == EAGAIN);
#endif
    mbox_unit_file(text, "no pid\n"); /* a fresh one without a PID: busy until MS_DOTLOCK_STALE */
    errno = 0;
    ASSERT(mbox_lock(mbox, jf, 0, &created) == -1 && errno == EAGAIN);
    mbox_unit_file(text, "999999999\n");
    fd = mbox_lock(mbox, jf, 0, &created);
    ASSERT(fd >= 0);
    if (fd >= 0) mbox_unlock(mbox, fd);
    ASSERT(os_stat(text, &sb) != 0);
    unlink(mbox);
    unlink(jf);
    rmdir(dir);
}

/* Issue 14: the mbox index. The messages of mbox as the index finds them
 * (mbox_index_scan, as a login does) are those a full scan of the file finds,
 * field by field; *same: they match. */
static void fs_backdate(const char *path, long seconds);
static void fs_mtime_at(const char *path, time_t t);
static int mbox_unit_differ_ok; /* a difference is what the case expects: not printed */

static int
mbox_index_agrees(const char *mbox, const char *jf)
{
    struct pop_view a, b;
    struct os_stat st;
    int i, created, same, fd = mbox_lock(mbox, jf, 0, &created);
    if (fd < 0) return 0;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    same = os_fstat(fd, &st) == 0 && mbox_index_scan(&a, fd, &st, jf) == 0 && mbox_scan_from(&b, fd, 0, st.size) == 0 &&
           a.n == b.n;
    for (i = 0; same && i < a.n; i++) {
        const struct pop_msg *x = &a.msgs[i], *y = &b.msgs[i];
        same = x->from_off == y->from_off && x->off == y->off && x->len == y->len && x->size == y->size &&
               strcmp(x->uidl, y->uidl) == 0;
        if (!same && !mbox_unit_differ_ok) printf("  message %d: index %lld %lld %lld %lld %s, scan %lld %lld %lld %lld %s\n", i,
                          (long long)x->from_off, (long long)x->off, (long long)x->len, (long long)x->size, x->uidl,
                          (long long)y->from_off, (long long)y->off, (long long)y->len, (long long)y->size, y->uidl);
    }
    if (a.n != b.n && !mbox_unit_differ_ok) printf("  index: %d messages, scan: %d\n", a.n, b.n);
    mbox_unlock(mbox, fd);
    view_free(&a);
    view_free(&b);
    return same;
}

static void
mbox_unit_append(const char *path, const char *text)
{
    int fd = os_open(path, O_WRONLY | O_APPEND, 0);
    ASSERT(fd >= 0 && write(fd, text, strlen(text)) == (long)strlen(text));
    close(fd);
}

/* Replaces the first `from` in the file by `to` (any length), as another program rewriting it would. */
static void
mbox_unit_edit(const char *path, const char *from, const char *to)
{
    static char buf[200000], out[200000];
    long n;
    char *at;
    int fd = os_open(path, O_RDONLY, 0);
    ASSERT(fd >= 0);
    n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : 0;
    if (fd >= 0) close(fd);
    buf[n > 0 ? n : 0] = 0;
    at = strstr(buf, from);
    ASSERT(at != NULL);
    if (!at) return;
    memcpy(out, buf, (size_t)(at - buf));
    strcpy(out + (at - buf), to);
    strcat(out, at + strlen(from));
    fd = os_open(path, O_WRONLY | O_TRUNC, 0); /* in place: the same inode, as mutt rewrites */
    ASSERT(fd >= 0 && write(fd, out, strlen(out)) == (long)strlen(out));
    close(fd);
}

static long
mbox_unit_size(const char *path)
{
    struct os_stat st;
    return os_stat(path, &st) == 0 ? (long)st.size : -1;
}

static int
mbox_unit_truncate(const char *path, long size) /* (no truncate() on Windows) */
{
    int r, fd = os_open(path, O_RDWR, 0);
    if (fd < 0) return -1;
    r = os_truncate(fd, size);
    os_close(fd);
    return r;
}

#ifndef _WIN32
/* Issue 14: an mtime is settled (an index may trust it) only once a later
 * change could not carry the same one. */
static void
test_mtime_settled(void)
{
    char path[] = "/tmp/mailsrv-unit-mtime-XXXXXX";
    struct timespec ts[2], now;
    struct os_stat st;
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    close(fd);
    clock_gettime(CLOCK_REALTIME, &now);
    ts[0] = ts[1] = now; /* just now, to the ns: not settled */
    ASSERT(utimensat(AT_FDCWD, path, ts, 0) == 0 && os_stat(path, &st) == 0 && st.mtime_ns == now.tv_nsec);
    ASSERT(os_mtime_ns(&st) == (int64_t)now.tv_sec * 1000000000 + now.tv_nsec && !os_mtime_settled(&st));
    ts[0].tv_sec = ts[1].tv_sec = now.tv_sec - 1; /* a second ago: settled */
    ASSERT(utimensat(AT_FDCWD, path, ts, 0) == 0 && os_stat(path, &st) == 0 && os_mtime_settled(&st));
    ts[0].tv_sec = ts[1].tv_sec = now.tv_sec + 1; /* whole seconds, the next one: not settled */
    ts[0].tv_nsec = ts[1].tv_nsec = 0;
    ASSERT(utimensat(AT_FDCWD, path, ts, 0) == 0 && os_stat(path, &st) == 0 && st.mtime_ns == 0 && !os_mtime_settled(&st));
    ts[0].tv_sec = ts[1].tv_sec = now.tv_sec - 1; /* whole seconds, an earlier one: settled */
    ASSERT(utimensat(AT_FDCWD, path, ts, 0) == 0 && os_stat(path, &st) == 0 && os_mtime_settled(&st));
    unlink(path);
}
#endif

static void
test_mbox_index(void)
{
    char dir[] = "/tmp/mailsrv-unit-XXXXXX", mbox[200], jf[200], ix[200], other[200], ojf[200], oix[200];
    char big[30000], text[40000];
    const char *own = "From s@x Mon Jan  1 00:00:01 2024\nReturn-Path: <s@x>\nX-UIDL: 1.M1P1Q%d\nStatus: RO\n"
                      "Subject: mine %d\n\nmine\n>From here\n\n";
    const char *foreign = "From a@b Mon Jan  1 00:00:00 2024\nSubject: foreign\nStatus: RO\n\nsame body\n\n";
    time_t old = time(NULL) - 100;
    int i;
    if (!mkdtemp(dir)) { ASSERT(0); return; }
    snprintf(mbox, sizeof mbox, "%s/u.mbox", dir);
    snprintf(jf, sizeof jf, "%s/.u.mbox.journal", dir);
    snprintf(ix, sizeof ix, "%s/.u.mbox.index", dir);
    snprintf(other, sizeof other, "%s/o.mbox", dir);
    snprintf(ojf, sizeof ojf, "%s/.o.mbox.journal", dir);
    snprintf(oix, sizeof oix, "%s/.o.mbox.index", dir);
    /* junk before the first From_, mailsrv's own messages, two copies of a foreign one (one UIDL, made unique) */
    strcpy(text, "junk line\n");
    for (i = 1; i <= 3; i++) snprintf(text + strlen(text), sizeof text - strlen(text), own, i, i);
    strcat(text, foreign);
    strcat(text, foreign);
    mbox_unit_file(mbox, text);
    fs_mtime_at(mbox, old);
    ASSERT(mbox_index_agrees(mbox, jf)); /* no index yet: a full scan, and the index written */
    ASSERT(os_lstat_kind(ix) == OS_FILE);
    ASSERT(mbox_index_agrees(mbox, jf)); /* the same file: the index alone */
    /* the index alone answers the same file: a change that keeps size and mtime, and is outside the
     * bytes the index checks, goes unseen (that is what the shortcut trusts; a real program's change
     * moves the mtime, the next cases) */
    mbox_unit_edit(mbox, ">From here", ">From\nhere"); /* one more line: its size grows by a CR */
    fs_mtime_at(mbox, old); /* the same mtime (fs_backdate twice could straddle a second: valgrind did) */
    mbox_unit_differ_ok = 1;
    ASSERT(!mbox_index_agrees(mbox, jf));
    mbox_unit_differ_ok = 0;
    unlink(ix);
    ASSERT(mbox_index_agrees(mbox, jf));
    /* and after an append only the tail is read: the same unseen change, then an append */
    mbox_unit_edit(mbox, ">From\nhere", ">From here");
    mbox_unit_append(mbox, foreign);
    mbox_unit_differ_ok = 1;
    ASSERT(!mbox_index_agrees(mbox, jf));
    mbox_unit_differ_ok = 0;
    unlink(ix);
    ASSERT(mbox_index_agrees(mbox, jf));

    /* appends by another MDA, and by mailsrv's own form: only the tail is read */
    snprintf(text, sizeof text, own, 4, 4);
    mbox_unit_append(mbox, text);
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_append(mbox, foreign);
    ASSERT(mbox_index_agrees(mbox, jf));
    /* a last message cut short (no final LF, a line longer than the line reader's buffer) that grows */
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = 0;
    snprintf(text, sizeof text, "From c@d Mon Jan  1 00:00:02 2024\nSubject: growing\n\n%s", big);
    mbox_unit_append(mbox, text);
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_append(mbox, "b tail\nFrom the middle of a line\n");
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_append(mbox, "\n");
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_append(mbox, foreign);
    ASSERT(mbox_index_agrees(mbox, jf));

    /* a same-length Status: rewrite (mutt), alone and then with an append (the index made of a file
     * whose mtime is settled, so that only the mtime tells) */
    fs_backdate(mbox, 100);
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_edit(mbox, "Status: RO\nSubject: mine 2", "Status: OR\nSubject: mine 2");
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_edit(mbox, "Status: RO\nSubject: mine 3", "Status: R \nSubject: mine 3");
    mbox_unit_append(mbox, foreign);
    ASSERT(mbox_index_agrees(mbox, jf));
    /* Dovecot inserts X-UID: lines (every offset after moves), then another append */
    mbox_unit_edit(mbox, "Subject: mine 1\n", "Subject: mine 1\nX-UID: 1\n");
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_edit(mbox, "Subject: mine 2\n", "Subject: mine 2\nX-UID: 2\n");
    mbox_unit_append(mbox, foreign);
    ASSERT(mbox_index_agrees(mbox, jf));
    /* a longer Status: line in the last message only, then an append */
    mbox_unit_edit(mbox, "Subject: growing\n", "Subject: growing\nStatus: RO\n");
    mbox_unit_append(mbox, foreign);
    ASSERT(mbox_index_agrees(mbox, jf));
    /* truncated: the last message gone */
    ASSERT(mbox_unit_truncate(mbox, mbox_unit_size(mbox) - (long)strlen(foreign)) == 0 && mbox_index_agrees(mbox, jf));
    /* a same-length rewrite of a UIDL (not a volatile field): the mtime moved, a full scan */
    fs_backdate(mbox, 100);
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_edit(mbox, "X-UIDL: 1.M1P1Q2\n", "X-UIDL: 1.M1P1Q5\n");
    ASSERT(mbox_index_agrees(mbox, jf));
    /* a message deleted by another program, then appends that make the file larger than before */
    snprintf(text, sizeof text, own, 2, 2);
    mbox_unit_edit(mbox, foreign, "");
    mbox_unit_append(mbox, foreign);
    mbox_unit_append(mbox, text);
    ASSERT(mbox_index_agrees(mbox, jf));
    /* another message deleted and the last one appended again */
    mbox_unit_edit(mbox, foreign, "");
    mbox_unit_append(mbox, text);
    ASSERT(mbox_index_agrees(mbox, jf));

    /* a damaged index: a digit changed, cut short, garbage, empty; each time scanned whole */
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_edit(ix, "\n1", "\n2");
    ASSERT(mbox_index_agrees(mbox, jf));
    ASSERT(mbox_unit_truncate(ix, mbox_unit_size(ix) / 2) == 0 && mbox_index_agrees(mbox, jf));
    mbox_unit_file(ix, "mailsrv mbox index 1\ngarbage\nend 0\n");
    ASSERT(mbox_index_agrees(mbox, jf));
    mbox_unit_file(ix, "");
    ASSERT(mbox_index_agrees(mbox, jf));
    /* an index made for another mbox (another inode), even of the same size and mtime */
    mbox_unit_file(other, "From z@z Mon Jan  1 00:00:00 2024\nSubject: other\n\nother\n\n");
    ASSERT(mbox_index_agrees(other, ojf));
    ASSERT(os_replace(oix, ix) == 0);
    ASSERT(mbox_index_agrees(mbox, jf));
    snprintf(text, sizeof text, "%s.copy", mbox);
    ASSERT(rename(mbox, text) == 0 && rename(other, mbox) == 0 && rename(text, other) == 0);
    ASSERT(mbox_index_agrees(mbox, jf));

    /* QUIT after DELE: the index written after the deletion is what a scan finds */
    unlink(ix);
    for (i = 5; i <= 8; i++) {
        snprintf(text, sizeof text, own, i, i);
        mbox_unit_append(mbox, text);
    }
    mbox_unit_append(mbox, foreign);
    ASSERT(mbox_index_agrees(mbox, jf));
    {
        struct pop_view w;
        memset(&w, 0, sizeof w);
        w.ops = &mbox_store;
        snprintf(w.path, sizeof w.path, "%s", mbox);
        snprintf(w.jf, sizeof w.jf, "%s", jf);
        {
            int fd, created;
            struct os_stat st;
            fd = mbox_lock(mbox, jf, 0, &created);
            ASSERT(fd >= 0 && os_fstat(fd, &st) == 0 && mbox_index_scan(&w, fd, &st, jf) == 0 && w.n == 6);
            if (fd >= 0) mbox_unlock(mbox, fd);
        }
        view_unique_uidls(&w);
        w.msgs[1].deleted = w.msgs[3].deleted = w.msgs[5].deleted = 1;
        ASSERT(mbox_expunge(&w, INT64_MAX) == 1);
        view_free(&w);
    }
    { /* the index written by the deletion describes the file as it is now */
        struct pop_view w;
        struct mbox_index mi;
        memset(&w, 0, sizeof w);
        ASSERT(mbox_index_read(jf, &w, &mi) == 0 && w.n == 3 && (long)mi.size == mbox_unit_size(mbox));
        view_free(&w);
    }
    ASSERT(mbox_index_agrees(mbox, jf));
    snprintf(text, sizeof text, own, 9, 9);
    mbox_unit_append(mbox, text);
    ASSERT(mbox_index_agrees(mbox, jf));
    { /* read in pieces (mbox_scan_piece, as a login and a QUIT read in slices): a file of several
       * pieces, with a message larger than two of them, finds what one scan finds */
        struct buf all = {0};
        int k;
        unlink(ix);
        for (i = 0; i < 3000; i++) {
            buf_printf(&all, i == 200 ? foreign : own, i, i);
            if (i == 200) /* a message of about 2.5 pieces */
                for (k = 0; k < MS_MBOX_SCAN / 40; k++) buf_adds(&all, "a body line of a large message, padded to one hundred bytes ......................................\n");
            if (i % 7 == 0) buf_adds(&all, "body line\nnot at a line start: From x\n");
        }
        buf_add(&all, "", 1);
        mbox_unit_append(mbox, all.p);
        buf_free(&all);
        ASSERT(mbox_unit_size(mbox) > 2 * MS_MBOX_SCAN);
        ASSERT(mbox_index_agrees(mbox, jf)); /* no index: read in pieces */
        mbox_unit_append(mbox, "From s@x Mon Jan  1 00:00:01 2024\nSubject: cut at the end\n\nno final newline");
        ASSERT(mbox_index_agrees(mbox, jf)); /* grown: its tail read in pieces */
    }
    unlink(mbox);
    unlink(other);
    unlink(ix);
    unlink(jf);
    unlink(ojf);
    rmdir(dir);
}

/* ---- trust (issue 11): mbox unit tests go above this line ---- */

/* issue 11 finding 2: a mailbox reached through a symbolic link is refused */
static void
fs_mkfile(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f) { fputs(text, f); fclose(f); }
}

static void
fs_backdate(const char *path, long seconds)
{
    fs_mtime_at(path, time(NULL) - seconds);
}

/* Sets a file's mtime (and atime) to t, a whole second. */
static void
fs_mtime_at(const char *path, time_t t)
{
    struct timespec ts[2];
    ts[0].tv_sec = ts[1].tv_sec = t;
    ts[0].tv_nsec = ts[1].tv_nsec = 0;
#ifndef _WIN32
    utimensat(AT_FDCWD, path, ts, 0);
#else
    {
        struct _utimbuf ut;
        ut.actime = ut.modtime = ts[0].tv_sec;
        _utime(path, &ut);
    }
#endif
}

static int fs_log_lines;
static void fs_count_log(void *user, const char *line) { (void)user; (void)line; fs_log_lines++; }

#ifndef _WIN32 /* symbolic links: Windows makes them only with a privilege, and wine as Linux links */
static void
test_fs_links(void)
{
    char dir[] = "/tmp/mailsrv-unit-XXXXXX", p[MS_PATH_FILE], q[MS_PATH_MESSAGE], victim[MS_PATH_FILE], spool[MS_PATH_DOMAIN];
    static const char *const subs[] = {"", "/new", "/cur", "/tmp"};
    int i, created, fd;
    struct os_stat st;
    if (!mkdtemp(dir)) { ASSERT(0); return; }
    snprintf(spool, sizeof spool, "%s/spool", dir);
    snprintf(victim, sizeof victim, "%s/passwd", dir);
    fs_mkfile(victim, "root:x:0:0::/root:/bin/sh\n");
    os_mkdir(spool);
    ASSERT(os_lstat_kind(spool) == OS_DIR && os_lstat_kind(victim) == OS_FILE);
    snprintf(p, sizeof p, "%s/none", dir);
    ASSERT(os_lstat_kind(p) == OS_MISSING);
    ASSERT(store_no_links(spool, "bob@x.test", 1) == 0); /* nothing yet: delivery creates it */
    snprintf(p, sizeof p, "%s/x.test", spool);
    os_mkdir(p);
    for (i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/x.test/bob%s", spool, subs[i]);
        os_mkdir(p);
    }
    ASSERT(store_no_links(spool, "bob@x.test", 1) == 0);
    for (i = 0; i < 4; i++) { /* the Maildir or any of new/cur/tmp as a link */
        snprintf(p, sizeof p, "%s/x.test/bob%s", spool, subs[i]);
        snprintf(q, sizeof q, "%s.real", p);
        ASSERT(rename(p, q) == 0 && symlink(dir, p) == 0);
        ASSERT(os_lstat_kind(p) == OS_LINK);
        errno = 0;
        ASSERT(store_no_links(spool, "bob@x.test", 1) == -1 && errno == ELOOP);
        ASSERT(unlink(p) == 0 && rename(q, p) == 0);
    }
    ASSERT(store_no_links(spool, "bob@x.test", 0) == 0);
    /* the mbox and its journal as links to a file standing in for /etc/passwd */
    snprintf(p, sizeof p, "%s/x.test/bob.mbox", spool);
    ASSERT(symlink(victim, p) == 0);
    ASSERT(store_no_links(spool, "bob@x.test", 0) == -1 && errno == ELOOP);
    ASSERT(store_no_links(spool, "bob@x.test", 1) == 0); /* not a Maildir's business */
    snprintf(q, sizeof q, "%s/x.test/.bob.mbox.journal", spool);
    ASSERT(mbox_lock(p, q, 1, &created) < 0); /* O_NOFOLLOW: the race is closed too */
    ASSERT(os_stat(victim, &st) == 0 && st.size == 26);
    unlink(p);
    ASSERT(symlink(victim, q) == 0);
    ASSERT(store_no_links(spool, "bob@x.test", 0) == -1 && errno == ELOOP);
    fd = os_open(p, O_RDWR | O_CREAT, 0600);
    ASSERT(fd >= 0 && mbox_journal_put(q, "x", 1, NULL, 0, 0) == -1);
    ASSERT(os_stat(victim, &st) == 0 && st.size == 26);
    if (fd >= 0) os_close(fd);
    unlink(p);
    unlink(q);
    /* the domain folder as a link */
    snprintf(p, sizeof p, "%s/y.test", spool);
    ASSERT(symlink(dir, p) == 0);
    ASSERT(store_no_links(spool, "bob@y.test", 0) == -1 && store_no_links(spool, "bob@y.test", 1) == -1);
    unlink(p);
    for (i = 3; i >= 0; i--) {
        snprintf(p, sizeof p, "%s/x.test/bob%s", spool, subs[i]);
        rmdir(p);
    }
    snprintf(p, sizeof p, "%s/x.test", spool);
    rmdir(p);
    rmdir(spool);
    unlink(victim);
    rmdir(dir);
}
#endif

/* issue 11 finding 10: SPOOL/.tmp leftovers older than 36 h go while the server runs, every hour */
static void
test_fs_tmp_clean(void)
{
    char dir[] = "/tmp/mailsrv-unit-XXXXXX", ini[MS_PATH_MESSAGE], tmp[MS_PATH_FILE], p[MS_PATH_MESSAGE];
    struct mailsrv *ms = mailsrv_create();
    int64_t now = 1000000;
    if (!ms || !mkdtemp(dir)) { ASSERT(0); mailsrv_destroy(ms); return; }
    snprintf(ini, sizeof ini, "[server]\nsmtp = 127.0.0.1:2525\nspool = %s\n[domain x.test]\nann = pw\n"
             "[alias x.test]\npostmaster = ann\n", dir);
    ms->cfg = cfg_load("/tmp/x.ini", ini);
    mailsrv_set_log(ms, fs_count_log, NULL);
    ASSERT(ms->cfg && ms->cfg->nerrors == 0);
    snprintf(tmp, sizeof tmp, "%s/.tmp", dir);
    os_mkdir(tmp);
    snprintf(p, sizeof p, "%s/old", tmp);
    fs_mkfile(p, "x");
    fs_backdate(p, MS_TMP_MAX_AGE + 60);
    snprintf(p, sizeof p, "%s/young", tmp);
    fs_mkfile(p, "x");
    fs_backdate(p, MS_TMP_MAX_AGE - 60);
#ifndef _WIN32 /* no symbolic links there (see test_fs_links) */
    snprintf(p, sizeof p, "%s/link", tmp); /* a link is not followed, nor removed */
    ASSERT(symlink(dir, p) == 0);
#endif
    fs_log_lines = 0;
    loop_clean_tmp(ms, now);
    snprintf(p, sizeof p, "%s/old", tmp);
    ASSERT(os_lstat_kind(p) == OS_MISSING && fs_log_lines == 1);
    snprintf(p, sizeof p, "%s/young", tmp);
    ASSERT(os_lstat_kind(p) == OS_FILE);
#ifndef _WIN32
    snprintf(p, sizeof p, "%s/link", tmp);
    ASSERT(os_lstat_kind(p) == OS_LINK);
#endif
    ASSERT(ms->next_tmp_clean == now + MS_TMP_CLEAN_MS);
    /* the next one an hour later, not before */
    snprintf(p, sizeof p, "%s/young", tmp);
    fs_backdate(p, MS_TMP_MAX_AGE + 60);
    loop_clean_tmp(ms, now + MS_TMP_CLEAN_MS - 1);
    ASSERT(os_lstat_kind(p) == OS_FILE);
    loop_clean_tmp(ms, now + MS_TMP_CLEAN_MS);
    ASSERT(os_lstat_kind(p) == OS_MISSING && fs_log_lines == 2);
#ifndef _WIN32
    snprintf(p, sizeof p, "%s/link", tmp);
    unlink(p);
#endif
    rmdir(tmp);
    rmdir(dir);
    mailsrv_destroy(ms);
}

/* issue 11 finding 10: the free-space reserve that MAIL needs */
static void
test_fs_free_space(void)
{
    ASSERT(os_free_space("/tmp") > 0);
    ASSERT(os_free_space("/nonexistent-mailsrv-folder") == -1); /* unknown: MAIL is not refused for it */
    ASSERT(MS_SPACE_RESERVE((int64_t)100 * 1024) == 150 * 1024);
    ASSERT(MS_SPACE_RESERVE(MS_DEF_MAX_MESSAGE) == 15L * 1024 * 1024);
}

/* ---- trust (issue 11): fs unit tests go above this line ---- */

/* A password against a key, at once (the server runs it in slices). */
static int
auth_key_matches(const struct pass_key *k, const char *given)
{
    unsigned char got[32];
    pbkdf2_sha256(given, k->salt, k->saltlen, k->iter, got);
    return ms_secret_eq(k->dk, 32, got, 32);
}

static void
test_auth_pbkdf2_slices(void)
{
    /* RFC 7914 11: PBKDF2-HMAC-SHA256("Password", "NaCl", 80000), its first 32 bytes */
    static const char want[] = "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56";
    unsigned budgets[] = {1, 7, MS_PBKDF2_STEP, 80000};
    struct pbkdf2 st;
    struct pass_key k;
    char stored[160], hex[65];
    unsigned char one[32];
    int i, j, turns;
    pbkdf2_sha256("Password", (const unsigned char *)"NaCl", 4, 80000, one);
    for (j = 0; j < 32; j++) sprintf(hex + 2 * j, "%02x", one[j]);
    ASSERT(strcmp(hex, want) == 0);
    for (i = 0; i < 4; i++) { /* any slicing gives the same result, and takes what it was given */
        unsigned b = budgets[i] == 1 ? 79998 : 0;
        pbkdf2_begin(&st, "Password", (const unsigned char *)"NaCl", 4, 80000);
        if (budgets[i] == 1) { ASSERT(!pbkdf2_step(&st, &b) && b == 0 && st.left == 1); }
        for (turns = 0; turns < 100000; turns++) {
            unsigned budget = budgets[i];
            int done = pbkdf2_step(&st, &budget);
            if (done) break;
            ASSERT(budget == 0);
        }
        ASSERT(st.left == 0 && memcmp(st.out, one, 32) == 0);
        ASSERT(turns == (budgets[i] == 1 ? 0 : (int)((79999 + budgets[i] - 1) / budgets[i]) - 1));
    }
    /* stored hashes and hashes made at load */
    pass_hash("Secr3tPass", 100, stored, sizeof stored);
    ASSERT(pass_key_parse(stored, &k) == 0 && k.iter == 100 && k.saltlen == 16);
    ASSERT(auth_key_matches(&k, "Secr3tPass") && !auth_key_matches(&k, "Secr3tPas"));
    ASSERT(pass_key_parse("$pbkdf2-sha256$0$c2FsdA$AAAA", &k) != 0);
    pass_key_make("plain", 10, &k);
    ASSERT(k.iter == 10 && auth_key_matches(&k, "plain") && !auth_key_matches(&k, "plainx"));
    ASSERT(pass_policy("weak") != NULL);
}

static void
test_auth_config(void)
{
    static const char ini[] = "[server]\nsmtp = 127.0.0.1:2525\n[domain a.test]\nann = Passw0rd1\nbo = %s\n"
                              "cy = Passw0rd3\n[alias a.test]\npostmaster = ann\nteam = ann, bo\nstaff = team, cy@b.test\n"
                              "ext = someone@far.test\n* = bo\n[domain b.test]\ncy = %s\n[alias b.test]\npostmaster = ann@a.test\n"
                              "[list news@a.test]\nowner = ann@a.test\n";
    char text[1024], hash[160];
    struct ms_config *c1, *c2, *c3;
    pass_hash("Hashed-Passw0rd", 50, hash, sizeof hash);
    snprintf(text, sizeof text, ini, hash, "Passw0rd4");
    c1 = cfg_load("t.ini", text);
    ASSERT(c1->nerrors == 0 && c1->sender_login == SL_STRICT);
    ASSERT(c1->domains[0].users[1].has_key && !c1->domains[0].users[0].has_key); /* a hash is parsed, plain text waits */
    ASSERT(cfg_hash_plain(c1, NULL) == 3);
    ASSERT(c1->domains[0].users[0].has_key && c1->domains[0].users[0].key.iter == MS_PBKDF2_ITER);
    ASSERT(auth_key_matches(&c1->domains[0].users[0].key, "Passw0rd1"));
    ASSERT(auth_key_matches(&c1->domains[0].users[1].key, "Hashed-Passw0rd"));
    /* a reload takes over what did not change, hashes what did */
    c2 = cfg_load("t.ini", text);
    ASSERT(cfg_hash_plain(c2, c1) == 0);
    ASSERT(memcmp(&c2->domains[0].users[0].key, &c1->domains[0].users[0].key, sizeof c1->domains[0].users[0].key) == 0);
    snprintf(text, sizeof text, ini, hash, "Changed-Passw0rd4");
    c3 = cfg_load("t.ini", text);
    ASSERT(cfg_hash_plain(c3, c2) == 1);
    ASSERT(auth_key_matches(&c3->domains[1].users[0].key, "Changed-Passw0rd4"));
    ASSERT(!auth_key_matches(&c3->domains[1].users[0].key, "Passw0rd4"));
    /* sender_login = strict: own address, aliases containing it (nested), nothing else */
    ASSERT(cfg_sender_owned(c1, "ann@a.test", "ann@a.test") && cfg_sender_owned(c1, "ANN@A.Test", "ann@a.test"));
    ASSERT(cfg_sender_owned(c1, "team@a.test", "ann@a.test") && cfg_sender_owned(c1, "staff@a.test", "bo@a.test"));
    ASSERT(cfg_sender_owned(c1, "postmaster@a.test", "ann@a.test") && cfg_sender_owned(c1, "postmaster@b.test", "ann@a.test"));
    ASSERT(cfg_sender_owned(c1, "staff@a.test", "cy@b.test") && !cfg_sender_owned(c1, "staff@a.test", "cy@a.test"));
    ASSERT(!cfg_sender_owned(c1, "bo@a.test", "ann@a.test") && !cfg_sender_owned(c1, "cy@b.test", "cy@a.test"));
    ASSERT(!cfg_sender_owned(c1, "anything@a.test", "bo@a.test")); /* the catch-all is not ownership */
    ASSERT(!cfg_sender_owned(c1, "*@a.test", "bo@a.test") && !cfg_sender_owned(c1, "news@a.test", "ann@a.test"));
    ASSERT(!cfg_sender_owned(c1, "ext@a.test", "ann@a.test") && !cfg_sender_owned(c1, "ann@far.test", "ann@a.test"));
    ASSERT(!cfg_sender_owned(c1, "ann", "ann@a.test") && cfg_sender_owned(c1, "team@a.test.", "ann@a.test"));
    cfg_free(c1);
    cfg_free(c2);
    cfg_free(c3);
    c1 = cfg_load("t.ini", "[server]\nsmtp = :25\nsender_login = OFF\n[domain a.test]\nann = x\n[alias a.test]\npostmaster = ann\n");
    ASSERT(c1->nerrors == 0 && c1->sender_login == SL_OFF);
    cfg_free(c1);
    c1 = cfg_load("t.ini", "[server]\nsmtp = :25\nsender_login = loose\n[domain a.test]\nann = x\n[alias a.test]\npostmaster = ann\n");
    ASSERT(c1->nerrors == 1 && strstr(c1->errors.p, "sender_login") && strstr(c1->errors.p, "off strict"));
    cfg_free(c1);
}

/* ---- trust (issue 11): auth unit tests go above this line ---- */

/* issue 11, 5: the per-client key groups IPv6 by /64 (max_per_ip, max_connect_rate, auth back-off) */
static char anvil_log[4096];
static void
anvil_log_fn(void *user, const char *line)
{
    size_t n = strlen(anvil_log);
    (void)user;
    snprintf(anvil_log + n, sizeof anvil_log - n, "%s\n", line);
}

static int
anvil_count(const char *hay, const char *needle)
{
    int n = 0;
    for (; (hay = strstr(hay, needle)) != NULL; hay++) n++;
    return n;
}

static void
test_anvil_client_key(void)
{
    char k[64], k2[64];
    client_key("192.0.2.7", k, sizeof k);
    ASSERT(strcmp(k, "192.0.2.7") == 0);
    client_key("::ffff:192.0.2.7", k, sizeof k);
    ASSERT(strcmp(k, "192.0.2.7") == 0);
    client_key("2001:db8:1:2:3:4:5:6", k, sizeof k);
    ASSERT(strcmp(k, "2001:db8:1:2::/64") == 0);
    client_key("2001:db8:1:2::ffff", k2, sizeof k2);
    ASSERT(strcmp(k, k2) == 0);
    client_key("2001:db8:1:3::6", k2, sizeof k2);
    ASSERT(strcmp(k, k2) != 0 && strcmp(k2, "2001:db8:1:3::/64") == 0);
    client_key("::1", k, sizeof k);
    ASSERT(strcmp(k, "::/64") == 0);
    client_key("fe80::1:2:3:4", k, sizeof k);
    ASSERT(strcmp(k, "fe80::/64") == 0);
    client_key("not an address", k, sizeof k);
    ASSERT(strcmp(k, "not an address") == 0);
}

static void
test_anvil_auth_by_64(void)
{
    struct mailsrv *ms = calloc(1, sizeof *ms);
    struct conn *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b), *o = calloc(1, sizeof *o);
    struct conn *cs[3];
    int i;
    cs[0] = a; cs[1] = b; cs[2] = o;
    ms->log_fn = anvil_log_fn;
    anvil_log[0] = 0;
    ms_strlcpy(a->peer, "2001:db8:0:1::a", sizeof a->peer);
    ms_strlcpy(b->peer, "2001:db8:0:1:ffff:1:2:3", sizeof b->peer);
    ms_strlcpy(o->peer, "2001:db8:0:2::a", sizeof o->peer);
    for (i = 0; i < 3; i++) {
        cs[i]->ms = ms;
        cs[i]->proto = PROTO_SMTP;
        cs[i]->ops = &smtp_ops;
        client_key(cs[i]->peer, cs[i]->client, sizeof cs[i]->client);
    }
    auth_failed(a, "x");
    auth_failed(b, "y"); /* another address of the same /64: its second failure */
    auth_failed(o, "z"); /* another /64: its first */
    /* the log line keeps its form (fail2ban) and names the address, not the /64 */
    ASSERT(strstr(anvil_log, "auth failed from 2001:db8:0:1::a user=<x> failures=1 delay=1000ms\n") != NULL);
    ASSERT(strstr(anvil_log, "auth failed from 2001:db8:0:1:ffff:1:2:3 user=<y> failures=2 delay=2000ms\n") != NULL);
    ASSERT(strstr(anvil_log, "auth failed from 2001:db8:0:2::a user=<z> failures=1 delay=1000ms\n") != NULL);
    auth_succeeded(a);
    anvil_log[0] = 0;
    auth_failed(b, "y");
    ASSERT(strstr(anvil_log, "failures=1 delay=1000ms") != NULL);
    free(a); free(b); free(o); free(ms);
}

/* Sessions per client (max_per_ip) kept as sessions come and go: a table that grows and empties
 * entries as their count drops to 0, checked against plain counts over 3,000 steps */
static void
test_client_counts(void)
{
    struct mailsrv *ms = calloc(1, sizeof *ms);
    long want[300] = {0};
    char key[48];
    unsigned r = 12345;
    int i, step, wrong = 0;
    size_t live;
    for (step = 0; step < 3000; step++) {
        r = r * 1103515245u + 12345u;
        i = (int)((r >> 8) % 300);
        snprintf(key, sizeof key, "10.0.%d.%d", i / 256, i % 256);
        if (want[i] && ((r >> 20) & 1)) { client_count_add(ms, key, -1); want[i]--; }
        else if (step < 2000) { client_count_add(ms, key, 1); want[i]++; }
        else { client_count_add(ms, key, -1); if (want[i]) want[i]--; } /* a key never counted stays absent */
    }
    for (i = 0, live = 0; i < 300; i++) {
        snprintf(key, sizeof key, "10.0.%d.%d", i / 256, i % 256);
        wrong += client_sessions(ms, key) != want[i];
        live += want[i] > 0;
    }
    ASSERT(wrong == 0);
    ASSERT(ms->nclients == live);
    ASSERT(ms->capclients >= 2 * ms->nclients);
    for (i = 0; i < 300; i++) { /* all gone: the table is empty */
        snprintf(key, sizeof key, "10.0.%d.%d", i / 256, i % 256);
        while (want[i]--) client_count_add(ms, key, -1);
    }
    ASSERT(ms->nclients == 0);
    for (i = 0, live = 0; (size_t)i < ms->capclients; i++) live += ms->per_client[i].n != 0;
    ASSERT(live == 0);
    free(ms->per_client);
    free(ms);
}

/* max_connect_rate in windows of a minute; refusals logged once per client and minute, then counted */
static void
test_anvil_rate_and_refusal_log(void)
{
    struct mailsrv *ms = calloc(1, sizeof *ms);
    struct ms_config *cfg = cfg_load("t.ini", "[server]\nsmtp = 127.0.0.1:25\nmax_connect_rate = 5\n");
    struct client_stat *s, *t;
    int64_t t0 = 1000000;
    int i, over = 0;
    ASSERT(cfg && cfg->max_connect_rate == 5); /* the key is read (the INI lacks a domain: no matter here) */
    ms->cfg = cfg;
    ms->log_fn = anvil_log_fn;
    anvil_log[0] = 0;
    s = client_stat(ms, "2001:db8::/64", t0);
    for (i = 0; i < 8; i++) over += client_rate_over(ms, s, t0 + i);
    ASSERT(over == 3);                                         /* the 6th, 7th, 8th */
    ASSERT(client_rate_over(ms, s, t0 + MS_RATE_WINDOW_MS - 1)); /* still the same minute */
    ASSERT(!client_rate_over(ms, s, t0 + MS_RATE_WINDOW_MS));    /* a new one */
    for (i = 0; i < 21; i++) client_refused(ms, s, t0 + i, "refused smtp from 2001:db8::%d: max_connect_rate", i);
    ASSERT(anvil_count(anvil_log, "refused smtp from") == 1);
    ASSERT(ms->clients_flush == t0 + MS_REFUSED_LOG_MS);
    client_flush(ms, t0 + MS_REFUSED_LOG_MS - 1);
    ASSERT(anvil_count(anvil_log, "more refusals") == 0);
    client_flush(ms, t0 + MS_REFUSED_LOG_MS);
    ASSERT(strstr(anvil_log, "refused from 2001:db8::/64: 20 more refusals in the last minute\n") != NULL);
    ASSERT(ms->clients_flush == 0);
    /* a client that keeps trying: one line a minute, the count */
    for (i = 0; i < 30; i++) client_refused(ms, s, t0 + MS_REFUSED_LOG_MS + 1 + i, "refused smtp from x: y");
    client_flush(ms, t0 + 2 * MS_REFUSED_LOG_MS);
    ASSERT(anvil_count(anvil_log, "refused smtp from") == 1);
    ASSERT(strstr(anvil_log, ": 30 more refusals in the last minute\n") != NULL);
    /* after a quiet minute, the next refusal is logged in full */
    client_flush(ms, t0 + 4 * MS_REFUSED_LOG_MS);
    client_refused(ms, s, t0 + 4 * MS_REFUSED_LOG_MS, "refused smtp from x: again");
    ASSERT(strstr(anvil_log, "refused smtp from x: again\n") != NULL);
    /* a forgotten client (the table is full) logs its count first */
    client_refused(ms, s, t0 + 4 * MS_REFUSED_LOG_MS + 1, "quiet");
    for (i = 0; i < MS_CLIENT_TRACK; i++) {
        char key[64];
        snprintf(key, sizeof key, "10.0.%d.%d", i / 256, i % 256);
        t = client_stat(ms, key, t0 + 5 * MS_REFUSED_LOG_MS + i);
        ASSERT(strcmp(t->key, key) == 0 && t->log_quiet == 0);
    }
    ASSERT(strstr(anvil_log, "refused from 2001:db8::/64: 1 more refusal in the last minute\n") != NULL);
    cfg_free(cfg);
    free(ms);
}

/* ---- trust (issue 11): anvil unit tests go above this line ---- */

/* listflood: the rate limits on list requests (per client address, IPv6 by /64, and per sender
 * domain) and the client key. */
static void
test_list_rate(void)
{
    static struct list_rate r[MS_LIST_REQ_TRACK];
    char k[MS_PATH_MAX];
    int64_t now = 1000000000, per = 3600000 / MS_LIST_REQ_PER_ADDR;
    int i, n;
    /* client_key itself: test_anvil_client_key */
    ASSERT(list_rate_hash('d', "Example.COM") == list_rate_hash('d', "example.com"));
    ASSERT(list_rate_hash('a', "example.com") != list_rate_hash('d', "example.com"));
    /* a burst of the address's limit, then refusals that count nothing */
    for (i = n = 0; i < 100; i++) n += list_rate_take(r, "192.0.2.7", "d1.test", now) == 0;
    ASSERT(n == MS_LIST_REQ_PER_ADDR);
    ASSERT(list_rate_take(r, "192.0.2.7", "other.test", now) == 1);
    /* another address of the same /64 is the same client; another /64 is not */
    for (i = 0; i < MS_LIST_REQ_PER_ADDR; i++) {
        char ip[64];
        snprintf(ip, sizeof ip, "2001:db8:1:2::%x", i + 1);
        client_key(ip, k, sizeof k);
        ASSERT(list_rate_take(r, k, "d2.test", now) == 0);
    }
    client_key("2001:db8:1:2::99", k, sizeof k);
    ASSERT(list_rate_take(r, k, "d3.test", now) == 1);
    client_key("2001:db8:1:3::1", k, sizeof k);
    ASSERT(list_rate_take(r, k, "d3.test", now) == 0);
    /* one more an hour/N later, not before */
    ASSERT(list_rate_take(r, "192.0.2.7", "d1.test", now + per - 1000) == 1);
    ASSERT(list_rate_take(r, "192.0.2.7", "d1.test", now + per) == 0);
    ASSERT(list_rate_take(r, "192.0.2.7", "d1.test", now + per) == 1);
    /* the domain's limit, from many addresses; the refused ones are not counted against them */
    for (i = n = 0; i < 100; i++) {
        snprintf(k, sizeof k, "198.51.100.%d", i);
        n += list_rate_take(r, k, "victim.test", now) == 0;
    }
    ASSERT(n == MS_LIST_REQ_PER_DOMAIN);
    ASSERT(list_rate_take(r, "198.51.100.99", "victim.test", now) == 2);
    ASSERT(list_rate_take(r, "198.51.100.99", "elsewhere.test", now) == 0);
    /* after an hour everything is forgotten */
    ASSERT(list_rate_take(r, "192.0.2.7", "victim.test", now + 2 * 3600000) == 0);
    /* more keys than slots: the table stays usable and new keys get their burst */
    for (i = 0; i < 3 * MS_LIST_REQ_TRACK; i++) {
        snprintf(k, sizeof k, "10.%d.%d.1", i / 256, i % 256);
        ASSERT(list_rate_take(r, k, k, now + 3 * 3600000) == 0);
    }
    /* a full table whose slot that empties first is the domain's own: the address and the
     * domain still get a slot each (they once shared it, and the address went uncounted) */
    {
        uint64_t ka = list_rate_hash('a', "203.0.113.9"), kd = list_rate_hash('d', "busy.test");
        int na = 0, nd = 0;
        for (i = 0; i < MS_LIST_REQ_TRACK; i++) {
            r[i].key = (uint64_t)i + 1;
            r[i].tat = now + 3600000;
        }
        r[7].key = kd;
        r[7].tat = now + 1000;
        ASSERT(list_rate_take(r, "203.0.113.9", "busy.test", now) == 0);
        for (i = 0; i < MS_LIST_REQ_TRACK; i++) {
            na += r[i].key == ka;
            nd += r[i].key == kd;
        }
        ASSERT(na == 1 && nd == 1 && r[7].key == kd);
    }
}

/* ---- trust (issue 11): listflood unit tests go above this line ---- */

/* Issue 11 (3): the system's generator works without a free descriptor (getentropy), and os_random
 * has no weak fallback: it gives 0 and random bytes, or -1 and zeros. */
#ifndef _WIN32
#include <sys/resource.h>
#endif
static void
test_cfg_random(void)
{
    unsigned char a[300], b[300], z[300];
    char hash[160];
    size_t i, same = 0;
#ifndef _WIN32
    struct rlimit old, none;
    int r1, r2, rh;
    ASSERT(getrlimit(RLIMIT_NOFILE, &old) == 0);
    none = old;
    none.rlim_cur = 0; /* no descriptor can be opened: every open() fails with EMFILE */
    ASSERT(setrlimit(RLIMIT_NOFILE, &none) == 0);
    ASSERT(open("/dev/null", O_RDONLY) < 0);
    r1 = os_random_bytes(a, sizeof a); /* more than getentropy's 256 bytes per call */
    r2 = os_random(b, sizeof b);
    rh = pass_hash("a password", 2, hash, sizeof hash);
    ASSERT(setrlimit(RLIMIT_NOFILE, &old) == 0);
    ASSERT(r1 == 0 && r2 == 0);
    ASSERT(rh == 0 && pass_is_hash(hash));
#else
    ASSERT(os_random_bytes(a, sizeof a) == 0 && os_random(b, sizeof b) == 0);
    ASSERT(pass_hash("a password", 2, hash, sizeof hash) == 0 && pass_is_hash(hash));
#endif
    memset(z, 0, sizeof z);
    ASSERT(memcmp(a, z, sizeof a) != 0 && memcmp(b, z, sizeof b) != 0);
    for (i = 0; i < sizeof a; i++) same += a[i] == b[i];
    ASSERT(same < 20); /* two draws agree on about 1 byte in 256 */
}

#if MAILSRV_ENABLE_TLS
/* Issue 11 (11): gencert's subjectAltName entries. */
static void
test_cfg_cert_names(void)
{
    struct cert_names cn;
    const char *names[] = {"MX.Extra.Test", "*.wild.test", "mx.extra.test"}, *ips[] = {"192.0.2.9", "2001:db8::9"};
    const char *badn[] = {"bad name"}, *badi[] = {"300.1.1.1"}, *ipname[] = {"10.0.0.1"}, *bad = NULL;
    int i, lo4 = 0, lo6 = 0, ext = 0;
    ASSERT(cert_names_collect(&cn, "Mail.Example.Test", names, 3, ips, 2, &bad) == 0);
    ASSERT(cn.nnames >= 4 && strcmp(cn.names[0], "mail.example.test") == 0);
    for (i = 0; i < cn.nnames; i++) ext += strcmp(cn.names[i], "mx.extra.test") == 0 || strcmp(cn.names[i], "localhost") == 0 ||
                                          strcmp(cn.names[i], "*.wild.test") == 0;
    ASSERT(ext == 3); /* each once, lower case */
    for (i = 0; i < cn.nips; i++) {
        lo4 += cn.ips[i].family == AF_INET && memcmp(cn.ips[i].ip, "\177\0\0\1", 4) == 0;
        lo6 += cn.ips[i].family == AF_INET6 && memcmp(cn.ips[i].ip, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
    }
    ASSERT(lo4 == 1 && lo6 == 1);
    ASSERT(cn.nips >= 4 && cn.ips[cn.nips - 1].family == AF_INET6 && cn.ips[cn.nips - 2].family == AF_INET);
    ASSERT(cert_names_collect(&cn, "h.test", badn, 1, NULL, 0, &bad) == -1 && bad == badn[0]);
    ASSERT(cert_names_collect(&cn, "h.test", NULL, 0, badi, 1, &bad) == -1 && bad == badi[0]);
    ASSERT(cert_names_collect(&cn, "h.test", ipname, 1, NULL, 0, &bad) == -1); /* an address goes with --ip */
}
#endif

/* Issue 11 (7): a reload keeps storage, spool, queue, user and the listeners, and says so. */
static void
cfg_reload_log(void *user, const char *line)
{
    struct buf *b = user;
    buf_printf(b, "%s\n", line);
}

static void
test_cfg_reload_keeps(void)
{
    static const char *ini1 = "[server]\nsmtp = 127.0.0.1:2525\nstorage = maildir\nspool = sp1\nuser = nobody\n"
                              "[domain x.test]\npostmaster = Passw0rd1\n";
    static const char *ini2 = "[server]\nsmtp = 127.0.0.1:2626\nstorage = mbox\nspool = sp2\nuser = daemon\n"
                              "[domain x.test]\npostmaster = Passw0rd1\nann = Passw0rd2\n";
    struct mailsrv *ms = mailsrv_create();
    struct buf log = {0};
    char spool[1024], queue[1024];
    ASSERT(ms != NULL);
    if (!ms) return;
    mailsrv_set_log(ms, cfg_reload_log, &log);
    ASSERT(mailsrv_load_ini_string(ms, ini1, "/srv/m.ini") == 0);
    memcpy(spool, ms->cfg->spool, sizeof spool);
    memcpy(queue, ms->cfg->queue, sizeof queue);
    ASSERT(mailsrv_load_ini_string(ms, ini2, "/srv/m.ini") == 0);
    ASSERT(ms->cfg->storage == STORE_MAILDIR && strcmp(ms->cfg->spool, spool) == 0 && strcmp(ms->cfg->queue, queue) == 0);
    ASSERT(strcmp(ms->cfg->user, "nobody") == 0 && ms->cfg->nlisten == 1 && ms->cfg->listen[0].port == 2525);
    ASSERT(cfg_find_user(cfg_find_domain(ms->cfg, "x.test"), "ann") != NULL); /* the rest applies */
    ASSERT(log.p && strstr(log.p, "storage = mbox takes effect after a restart; maildir stays in use"));
    ASSERT(log.p && strstr(log.p, "sp2 takes effect after a restart"));
    ASSERT(log.p && strstr(log.p, "user = daemon takes effect after a restart"));
    ASSERT(log.p && strstr(log.p, "listener changes take effect after a restart"));
    mailsrv_destroy(ms);
    buf_free(&log);
}

/* ---- trust (issue 11): cfg unit tests go above this line ---- */

/* Finding 13c: RFC 5321 4.5.3.1.3's 256 octets, brackets included; what does not fit is an error. */
/* UTF-8 checks (RFC 3629), Punycode (RFC 3492 7.1's samples), the A-label
 * form of domains, and the SMTPUTF8 rule for paths (RFC 6531 3.3). */
static void
test_utf8_idna(void)
{
    static const struct { uint32_t cp[32]; size_t n; const char *puny; } s[] = {
        /* (A) Arabic (Egyptian) */
        {{0x644, 0x64A, 0x647, 0x645, 0x627, 0x628, 0x62A, 0x643, 0x644, 0x645, 0x648, 0x634, 0x639, 0x631, 0x628,
          0x64A, 0x61F}, 17, "egbpdaj6bu4bxfgehfvwxn"},
        /* (B) Chinese (simplified) */
        {{0x4ED6, 0x4EEC, 0x4E3A, 0x4EC0, 0x4E48, 0x4E0D, 0x8BF4, 0x4E2D, 0x6587}, 9, "ihqwcrb4cv8a8dqg056pqjye"},
        /* (D) Czech, with basic code points */
        {{0x50, 0x72, 0x6F, 0x10D, 0x70, 0x72, 0x6F, 0x73, 0x74, 0x11B, 0x6E, 0x65, 0x6D, 0x6C, 0x75, 0x76, 0xED, 0x10D,
          0x65, 0x73, 0x6B, 0x79}, 22, "Proprostnemluvesky-uyb24dma41a"},
        /* (I) Russian (the RFC's "D" is a mixed-case annotation: compared without case) */
        {{0x43F, 0x43E, 0x447, 0x435, 0x43C, 0x443, 0x436, 0x435, 0x43E, 0x43D, 0x438, 0x43D, 0x435, 0x433, 0x43E,
          0x432, 0x43E, 0x440, 0x44F, 0x442, 0x43F, 0x43E, 0x440, 0x443, 0x441, 0x441, 0x43A, 0x438}, 28,
         "b1abfaaepdrnnbgefbaDotcwatmq2g4l"},
        /* (L) 3<nen>B<gumi><kinpachi><sensei> */
        {{0x33, 0x5E74, 0x42, 0x7D44, 0x91D1, 0x516B, 0x5148, 0x751F}, 8, "3B-ww4c5e180e575a65lsy2b"},
        /* (S) -> $1.00 <- : all basic */
        {{0x2D, 0x3E, 0x20, 0x24, 0x31, 0x2E, 0x30, 0x30, 0x20, 0x3C, 0x2D}, 11, "-> $1.00 <--"},
    };
    char out[128], a[MS_DOMAIN_MAX + 1];
    uint32_t cp[64];
    size_t i, len;
    for (i = 0; i < sizeof s / sizeof s[0]; i++) {
        ASSERT(puny_encode(s[i].cp, s[i].n, out, sizeof out) == (int)strlen(s[i].puny));
        ASSERT(ms_strcaseeq(out, s[i].puny));
        ASSERT(puny_decode(s[i].puny, strlen(s[i].puny), cp, 64) == (int)s[i].n);
        ASSERT(memcmp(cp, s[i].cp, s[i].n * sizeof *cp) == 0);
    }
    ASSERT(puny_encode(s[0].cp, s[0].n, out, 10) == -1);        /* does not fit: refused, not cut */
    ASSERT(puny_decode("egbpdaj6bu4bxfgehfvwxn", 22, cp, 5) == -1); /* more code points than room */
    ASSERT(puny_decode("ab-c!", 5, cp, 64) == -1);                /* not a digit */
    ASSERT(puny_decode("99999999999", 11, cp, 64) == -1);         /* overflows */
    ASSERT(puny_decode("b", 1, cp, 64) == -1);                    /* cut short */
    /* UTF-8: well-formed, and no overlongs, surrogates, values over U+10FFFF or controls */
    ASSERT(utf8_decode((const unsigned char *)"\xd0\xb8", 2, &len) == 0x438 && len == 2);
    ASSERT(utf8_decode((const unsigned char *)"\xf0\x9f\x98\x80", 4, &len) == 0x1F600 && len == 4);
    ASSERT(utf8_valid("\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd", 8));    /* иван */
    ASSERT(utf8_valid("plain ascii", 11));
    ASSERT(!utf8_valid("\xc0\xaf", 2));          /* overlong '/' */
    ASSERT(!utf8_valid("\xe0\x80\xaf", 3));      /* overlong, 3 bytes */
    ASSERT(!utf8_valid("\xf0\x80\x80\xaf", 4));  /* overlong, 4 bytes */
    ASSERT(!utf8_valid("\xed\xa0\x80", 3));      /* U+D800, a surrogate */
    ASSERT(!utf8_valid("\xf4\x90\x80\x80", 4));  /* U+110000 */
    ASSERT(!utf8_valid("\xd0", 1));              /* cut short */
    ASSERT(!utf8_valid("\x80", 1));              /* a lone continuation byte */
    ASSERT(!utf8_valid("\xc2\x85", 2));          /* U+0085 NEL, a C1 control */
    ASSERT(!utf8_valid("a\tb", 3));              /* a C0 control */
    ASSERT(!utf8_valid("a\x7f", 2));             /* DEL */
    ASSERT(!utf8_valid("\xfe", 1) && !utf8_valid("\xff", 1));
    /* domains: the lower-case A-label form; U-labels and A-labels name the same domain */
    ASSERT(idna_to_ascii("\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test", a, sizeof a) == 0); /* школа.test */
    ASSERT(strcmp(a, "xn--80atdl2c.test") == 0);
    ASSERT(idna_to_ascii("\xd0\xa8\xd0\x9a\xd0\x9e\xd0\x9b\xd0\x90.Test", a, sizeof a) == 0); /* ШКОЛА.Test */
    ASSERT(strcmp(a, "xn--80atdl2c.test") == 0);
    ASSERT(idna_to_ascii("XN--80ATDL2C.test", a, sizeof a) == 0 && strcmp(a, "xn--80atdl2c.test") == 0);
    ASSERT(idna_to_ascii("Example.ORG", a, sizeof a) == 0 && strcmp(a, "example.org") == 0);
    ASSERT(idna_to_ascii("xn--!!.test", a, sizeof a) == -1);   /* an A-label that does not decode */
    ASSERT(idna_to_ascii("xn--.test", a, sizeof a) == -1);     /* RFC 5891 5.4: no U-label behind it */
    ASSERT(idna_to_ascii("xn--abc-.test", a, sizeof a) == -1); /* decodes to ASCII "abc" */
    ASSERT(idna_to_ascii("a..b", a, sizeof a) == -1);
    ASSERT(idna_to_ascii("a.", a, sizeof a) == -1);
    ASSERT(idna_to_ascii("\xc0\xaf.test", a, sizeof a) == -1); /* ill-formed UTF-8 */
    ASSERT(idna_to_ascii("\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test", a, 10) == -1); /* no room: refused */
    /* "яюэ...аб...й" (42 letters): its A-label is 64 octets, over RFC 5890's 63 */
    ASSERT(idna_to_ascii("\xd1\x8f\xd1\x8e\xd1\x8d\xd1\x8c\xd1\x8b\xd1\x8a\xd1\x89\xd1\x88\xd1\x87\xd1\x86\xd1\x85\xd1\x84\xd1\x83\xd1\x82\xd1\x81\xd1\x80\xd0\xbf\xd0\xbe\xd0\xbd\xd0\xbc\xd0\xbb\xd0\xba\xd0\xb9\xd0\xb8\xd0\xb7\xd0\xb6\xd0\xb5\xd0\xb4\xd0\xb3\xd0\xb2\xd0\xb1\xd0\xb0\xd0\xb0\xd0\xb1\xd0\xb2\xd0\xb3\xd0\xb4\xd0\xb5\xd0\xb6\xd0\xb7\xd0\xb8\xd0\xb9", a, sizeof a) == -1);
    ASSERT(idna_to_ascii("\xd1\x8f\xd1\x8e\xd1\x8d\xd1\x8c\xd1\x8b\xd1\x8a\xd1\x89\xd1\x88\xd1\x87\xd1\x86\xd1\x85\xd1\x84\xd1\x83\xd1\x82\xd1\x81\xd1\x80\xd0\xbf\xd0\xbe\xd0\xbd\xd0\xbc\xd0\xbb\xd0\xba\xd0\xb9\xd0\xb8\xd0\xb7\xd0\xb6\xd0\xb5\xd0\xb4\xd0\xb3\xd0\xb2\xd0\xb1\xd0\xb0", a, sizeof a) == 0 && strlen(a) == 4 + 40); /* the 32 letters of Я..А */
    /* and back, for people to read (mailsrv users) */
    ASSERT(idna_to_unicode("xn--80atdl2c.test", a, sizeof a) == 0 && strcmp(a, "\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test") == 0);
    ASSERT(idna_to_unicode("example.org", a, sizeof a) == 0 && strcmp(a, "example.org") == 0);
    ASSERT(idna_to_unicode("xn--!!.test", a, sizeof a) == -1);
    ASSERT(idna_to_unicode("xn--80atdl2c.test", a, 12) == -1);
    /* INI editing finds [domain NAME] by either form */
    ASSERT(edit_name_eq("\xd0\xa8\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test", "xn--80atdl2c.TEST"));
    ASSERT(edit_name_eq("Example.org", "example.ORG"));
    ASSERT(!edit_name_eq("\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb.test", "xn--80atdl2c.test"));
    {
        struct ms_config c;
        struct cfg_domain d[2];
        memset(&c, 0, sizeof c);
        memset(d, 0, sizeof d);
        d[0].name = "example.org";
        d[1].name = "xn--80atdl2c.test";
        c.domains = d;
        c.ndomains = 2;
        ASSERT(cfg_find_domain(&c, "\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test") == &d[1]);
        ASSERT(cfg_find_domain(&c, "\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test.") == &d[1]);
        ASSERT(cfg_find_domain(&c, "XN--80atdl2c.TEST") == &d[1]);
        ASSERT(cfg_find_domain(&c, "Example.org") == &d[0]);
        ASSERT(cfg_find_domain(&c, "\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb.test") == NULL); /* школ.test */
    }
    { /* an INI with an IDN domain and list in U-labels: kept as A-labels, found by either form */
        struct ms_config *c = cfg_load("unit-idn.ini", "[server]\nsmtp = 127.0.0.1:2525\n[domain \xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test]\n"
                                       "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd = Passw0rd7\n[alias xn--80atdl2c.test]\n"
                                       "postmaster = \xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd\n"
                                       "[list news@\xd0\xa8\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test]\nowner = x@example.org\n"
                                       "[route]\n\xd1\x82\xd0\xb5\xd1\x81\xd1\x82.test = 127.0.0.1:25\n");
        int kind;
        struct targets t = {0};
        ASSERT(c->nerrors == 0 && c->ndomains == 1 && strcmp(c->domains[0].name, "xn--80atdl2c.test") == 0);
        ASSERT(c->nlists == 1 && strcmp(c->lists[0].domain, "xn--80atdl2c.test") == 0);
        ASSERT(c->nroutes == 1 && strcmp(c->routes[0].domain, "xn--e1aybc.test") == 0);
        ASSERT(list_match(c, "news", "\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test", &kind, NULL, 0) == &c->lists[0]);
        ASSERT(list_match(c, "news-subscribe", "XN--80ATDL2C.test.", &kind, NULL, 0) == &c->lists[0] && kind == LK_SUBSCRIBE);
        ASSERT(cfg_resolve(c, "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd", "\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test", &t, 0) == RES_OK);
        ASSERT(t.n == 1 && strcmp(t.v[0], "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd@xn--80atdl2c.test") == 0);
        targets_free(&t);
        ASSERT(cfg_sender_owned(c, "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd@\xd0\xa8\xd0\x9a\xd0\x9e\xd0\x9b\xd0\x90.test",
                                "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd@xn--80atdl2c.test"));
        cfg_free(c);
    }
    /* local parts: UTF-8 is a safe path component where names may be UTF-8; ill-formed never */
    ASSERT(cfg_safe_component("\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd", MS_LOCAL_MAX) == MS_UTF8_NAMES);
    ASSERT(!cfg_safe_component("\xd0\xb8\xc0\xaf", MS_LOCAL_MAX));
    ASSERT(!cfg_safe_component("\xc2\x85x", MS_LOCAL_MAX));
    /* SMTPUTF8 (RFC 6531 3.3): non-ASCII paths only when MAIL declared it */
    ASSERT(smtp_path_utf8("ivan", "example.org", 0) == 0);
    ASSERT(smtp_path_utf8("\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd", "example.org", 0) == 1);
    ASSERT(smtp_path_utf8("ivan", "\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test", 0) == 1);
    ASSERT(smtp_path_utf8("\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd", "example.org", 1) == 0);
    ASSERT(smtp_path_utf8("\xd0\xb8\xed\xa0\x80", "example.org", 1) == -1);
    ASSERT(smtp_path_utf8("\xd0\xb8\xc2\x9b", "example.org", 1) == -1);
    {
        char l[MS_PATH_MAX + 1], d[MS_DOMAIN_MAX + 1], p[300];
        const char *r = smtp_parse_path("<\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd@\xd1\x88\xd0\xba\xd0\xbe\xd0\xbb\xd0\xb0.test> SMTPUTF8", l, d);
        ASSERT(r && strcmp(r, "SMTPUTF8") == 0 && strcmp(l, "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd") == 0);
        /* the local part's limit counts octets (RFC 6531 3.3): 32 Cyrillic letters fit, 33 do not */
        memset(p, 0, sizeof p);
        p[0] = '<';
        for (i = 0; i < 33; i++) memcpy(p + 1 + 2 * i, "\xd0\xb0", 2);
        memcpy(p + 67, "@a.b>", 5);
        ASSERT(smtp_parse_path(p, l, d) == NULL && errno == ENAMETOOLONG);
        memcpy(p + 65, "@a.b>", 6);
        ASSERT(smtp_parse_path(p, l, d) != NULL && strlen(l) == 64);
    }
}

static void
test_smtpfix_path_limits(void)
{
    char l[MS_PATH_MAX + 1], d[MS_DOMAIN_MAX + 1], p[400], want[300];
    struct targets t = {0};
    const char *r;
    size_t n;
    for (n = 250; n <= 260; n++) { /* "<" + 64-octet local part + "@" + domain + ">" = n octets */
        size_t dl = n - 2 - 65;
        memset(p, 'x', sizeof p);
        p[0] = '<';
        p[65] = '@';
        p[66 + 60] = '.'; /* labels of at most 63 */
        p[66 + 120] = '.';
        p[n - 1] = '>';
        p[n] = 0;
        errno = 0;
        r = smtp_parse_path(p, l, d);
        if (n <= 256) {
            ASSERT(r && *r == 0 && strlen(l) == 64 && strlen(d) == dl);
            ASSERT(targets_add(&t, l, d, 1) == 0);
        } else {
            ASSERT(r == NULL && errno == ENAMETOOLONG);
        }
        /* the same address without brackets counts as if it had them */
        p[n - 1] = 0;
        r = smtp_parse_path(p + 1, l, d);
        ASSERT(n <= 256 ? r != NULL : r == NULL && errno == ENAMETOOLONG);
    }
    ASSERT(t.n == 7);
    /* a source route is part of the path */
    memset(p, 0, sizeof p);
    strcpy(p, "<@relay.example:");
    memset(p + strlen(p), 'y', 64);
    strcat(p, "@");
    n = strlen(p);
    memset(p + n, 'z', 256 - 1 - n);
    memcpy(p + n + 60, ".", 1);
    memcpy(p + n + 120, ".", 1);
    strcat(p, ">");
    ASSERT(strlen(p) == 256 && smtp_parse_path(p, l, d) != NULL);
    memcpy(p + 255, "z>", 3);
    ASSERT(smtp_parse_path(p, l, d) == NULL && errno == ENAMETOOLONG);
    /* local part over 64, domain over 255; other errors are not "too long" */
    memset(p, 0, sizeof p);
    p[0] = '<';
    memset(p + 1, 'a', 65);
    strcat(p, "@b.org>");
    ASSERT(smtp_parse_path(p, l, d) == NULL && errno == ENAMETOOLONG);
    ASSERT(smtp_parse_path("<a@b", l, d) == NULL && errno != ENAMETOOLONG);
    ASSERT(smtp_parse_path("<@b>", l, d) == NULL && errno != ENAMETOOLONG);
    /* the target list refuses what does not fit (255 octets and the NUL) instead of dropping it */
    memset(want, 'q', 254);
    want[254] = 0;
    n = (size_t)t.n;
    ASSERT(targets_add(&t, "p", want, 1) == -1 && (size_t)t.n == n); /* 256 octets: does not fit */
    want[253] = 0;
    ASSERT(targets_add(&t, "p", want, 1) == 0 && (size_t)t.n == n + 1);
    targets_free(&t);
}

/* The relay queue: a sender that does not fit makes the entry unreadable (logged), never cut. */
static void
test_smtpfix_queue_from(void)
{
    char dir[] = "/tmp/mailsrv-unit-sfXXXXXX", path[100], from[300];
    struct qentry *e;
    FILE *f;
    ASSERT(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/q.env", dir);
    memset(from, 's', sizeof from);
    from[64] = '@';
    from[MS_PATH_MAX - 1] = 0; /* 255 octets: fits */
    f = fopen(path, "wb");
    fprintf(f, "mailsrv-queue 1\nfrom <%s>\nrcpt pending a@b.test\n", from);
    fclose(f);
    e = queue_env_read(dir, "q");
    ASSERT(e != NULL && e && strcmp(e->from, from) == 0);
    if (e) qentry_free(e);
    from[MS_PATH_MAX - 1] = 's';
    from[MS_PATH_MAX] = 0; /* 256 */
    f = fopen(path, "wb");
    fprintf(f, "mailsrv-queue 1\nfrom <%s>\nrcpt pending a@b.test\n", from);
    fclose(f);
    ASSERT(queue_env_read(dir, "q") == NULL);
    unlink(path);
    rmdir(dir);
}


#if MAILSRV_ENABLE_HTTP
/* ---- HTTP (issue 15): the request parser, JSON, search queries ---- */

static long
head(const char *s, struct http_req *r)
{
    return http_parse_head(s, strlen(s), r);
}

static void
test_http_parse_head(void)
{
    struct http_req r;
    const char *ok = "GET /api/v1/messages?start=0&limit=5 HTTP/1.1\r\nHost: h:8025\r\nAuthorization: Basic eDp5\r\n\r\nNEXT";
    ASSERT(head(ok, &r) == (long)strlen(ok) - 4);
    ASSERT(r.method == HTTP_GET && r.minor == 1 && r.keep_alive && r.length == 0);
    ASSERT(strcmp(r.target, "/api/v1/messages?start=0&limit=5") == 0);
    ASSERT(strcmp(r.auth, "Basic eDp5") == 0);
    ASSERT(head("GET / HTTP/1.1\r\nHost: h\r\n", &r) == 0); /* not all there yet */
    ASSERT(head("\r\nGET / HTTP/1.1\nHost: h\n\n", &r) > 0);  /* LF alone; an empty line before */
    ASSERT(head("GET / HTTP/1.0\r\n\r\n", &r) > 0 && !r.keep_alive);
    ASSERT(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r) > 0 && r.keep_alive);
    ASSERT(head("GET / HTTP/1.1\r\nHost: h\r\nConnection: x, close\r\n\r\n", &r) > 0 && !r.keep_alive);
    ASSERT(head("GET http://h:1/x?y HTTP/1.1\r\nHost: h\r\n\r\n", &r) > 0 && strcmp(r.target, "/x?y") == 0);
    ASSERT(head("PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n", &r) > 0 && r.length == 12);
    ASSERT(head("PUT /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", &r) > 0 && r.expect_continue);
    /* smuggling and the rest: one answer each */
    ASSERT(head("PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", &r) == -400);
    ASSERT(head("PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\n", &r) == -400);
    ASSERT(head("PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", &r) == -400);
    ASSERT(head("PUT /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", &r) == -411);
    ASSERT(head("PUT /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", &r) == -400);
    ASSERT(head("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", &r) == -400);
    ASSERT(head("GET / HTTP/1.1\r\nHost : h\r\n\r\n", &r) == -400);
    ASSERT(head("GET / HTTP/1.1\r\nHost: h\rX\r\n\r\n", &r) == -400);
    ASSERT(head("GET / HTTP/1.1\r\n\r\n", &r) == -400);
    ASSERT(head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &r) == -400);
    ASSERT(head("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", &r) == -400);
    ASSERT(head("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", &r) == -400);
    ASSERT(head("GET x HTTP/1.1\r\nHost: h\r\n\r\n", &r) == -400);
    ASSERT(head("GET / HTTP/2.0\r\nHost: h\r\n\r\n", &r) == -505);
    ASSERT(head("GET / HTTX/1.1\r\nHost: h\r\n\r\n", &r) == -400);
    ASSERT(head("PATCH / HTTP/1.1\r\nHost: h\r\n\r\n", &r) == -501);
    ASSERT(head("GET / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n", &r) == -417);
    /* cross-site (issue 16): what a browser says of the page that sent the request */
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h:8025\r\n\r\n", &r) > 0 && !r.cross_site); /* not a browser */
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h:8025\r\nOrigin: http://h:8025\r\n\r\n", &r) > 0 && !r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nOrigin: https://H:8025\r\nHost: h:8025\r\n\r\n", &r) > 0 && !r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h:8025\r\nOrigin: http://h:8026\r\n\r\n", &r) > 0 && r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h:8025\r\nOrigin: http://h:8025.evil\r\n\r\n", &r) > 0 && r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h:8025\r\nOrigin: http://h\r\n\r\n", &r) > 0 && r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h:8025\r\nOrigin: null\r\n\r\n", &r) > 0 && r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h:8025\r\nSec-Fetch-Site: cross-site\r\n\r\n", &r) > 0 && r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h\r\nSec-Fetch-Site: same-site\r\nOrigin: http://h\r\n\r\n", &r) > 0 && r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h\r\nSec-Fetch-Site: same-origin\r\nOrigin: http://h\r\n\r\n", &r) > 0 &&
           !r.cross_site);
    ASSERT(head("POST /a HTTP/1.1\r\nHost: in:8025\r\nSec-Fetch-Site: same-origin\r\nOrigin: https://out\r\n\r\n", &r) > 0 &&
           !r.cross_site && r.browser && !r.requested_with); /* a proxy rewrote Host: the browser's word counts */
    ASSERT(head("POST /a HTTP/1.1\r\nHost: h\r\nX-Requested-With: mailsrv\r\n\r\n", &r) > 0 && r.requested_with && !r.browser);
    {   /* a message's API ID: its UIDL without a Maildir name's sizes (IDs stayed when UIDLs took them in) */
        char id[72];
        http_msg_id("1.M2P3Q4.host,S=10,W=12", id, sizeof id);
        ASSERT(strcmp(id, "1.M2P3Q4.host") == 0);
        http_msg_id("1.M2P3Q4.host", id, sizeof id);
        ASSERT(strcmp(id, "1.M2P3Q4.host") == 0);
        http_msg_id("a,b", id, sizeof id);
        ASSERT(id[0] == 'h' && strlen(id) == 33);
        http_msg_id("a b,S=1", id, sizeof id);
        ASSERT(id[0] == 'h' && strlen(id) == 33);
    }
    ASSERT(http_host_is_loopback("localhost") && http_host_is_loopback("LocalHost:8025") && http_host_is_loopback("127.0.0.1:1"));
    ASSERT(http_host_is_loopback("127.1.2.3") && http_host_is_loopback("[::1]") && http_host_is_loopback("[::1]:8025"));
    ASSERT(!http_host_is_loopback("127.0.0.1.evil.test") && !http_host_is_loopback("localhost.evil:1") &&
           !http_host_is_loopback("[::1].x") && !http_host_is_loopback("evil") && !http_host_is_loopback(""));
    {
        char big[MS_HTTP_HEAD_MAX + 64];
        memset(big, 'a', sizeof big - 1);
        big[sizeof big - 1] = 0;
        memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
        ASSERT(head(big, &r) == -431);
        memset(big, 'a', sizeof big - 1);
        memcpy(big, "GET /", 5);
        ASSERT(head(big, &r) == -431 || head(big, &r) == -414);
    }
}

static void
test_http_query_and_json(void)
{
    char v[64];
    struct json j;
    struct buf b = {0};
    int k, ids, n;
    ASSERT(http_query("/s?query=subject%3A%22a+b%22&limit=2", "query", v, sizeof v) == 1 && strcmp(v, "subject:\"a b\"") == 0);
    ASSERT(http_query("/s?query=x&limit=2", "limit", v, sizeof v) == 1 && strcmp(v, "2") == 0);
    ASSERT(http_query("/s?query=x", "start", v, sizeof v) == 0);
    ASSERT(http_query("/s?q=%zz", "q", v, sizeof v) == -1 && http_query("/s?q=%00", "q", v, sizeof v) == -1);
    ASSERT(http_query("/s?q=%4", "q", v, sizeof v) == -1);
    /* JSON in */
    {
        const char *in = "{\"IDs\":[\"a\",\"b\\u00e9\\ud83d\\ude00\"],\"Read\":true,\"N\":[{},[]]}";
        ASSERT(json_parse(&j, in, strlen(in)) == 0);
    }
    ids = json_get(&j, 0, "IDs");
    ASSERT(ids > 0 && j.t[ids].type == JSON_ARR && j.t[ids].size == 2);
    k = json_item(&j, ids, ids);
    json_text(&j, k, &b);
    ASSERT(strcmp(b.p, "a") == 0);
    b.len = 0;
    k = json_item(&j, ids, k);
    json_text(&j, k, &b);
    ASSERT(strcmp(b.p, "b\xc3\xa9\xf0\x9f\x98\x80") == 0);
    ASSERT(json_item(&j, ids, k) == -1);
    ASSERT(json_true(&j, json_get(&j, 0, "Read")) && json_get(&j, 0, "Nope") == -1);
    json_free(&j);
    ASSERT(json_parse(&j, "{\"a\":1,}", 8) == -1 && json_parse(&j, "[1 2]", 5) == -1 && json_parse(&j, "\"x", 2) == -1);
    ASSERT(json_parse(&j, "{} x", 4) == -1 && json_parse(&j, "", 0) == -1);
    {
        char deep[200];
        memset(deep, '[', sizeof deep);
        ASSERT(json_parse(&j, deep, sizeof deep) == -1); /* MS_JSON_DEPTH */
    }
    /* JSON out: escapes, and every byte that is not UTF-8 as U+FFFD */
    b.len = 0;
    json_str(&b, "a\"\\\n\x01\xd0\x9f\xff\xc0\xaf", 10);
    ASSERT(strcmp(b.p, "\"a\\\"\\\\\\n\\u0001\xd0\x9f\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"") == 0);
    buf_free(&b);
    (void)n;
}

static void
test_mime(void)
{
    static struct mime_part pt[MIME_MAX_PARTS];
    const char *m =
        "From: =?koi8-r?B?8NLJ18XU?= <a@b.test>\nSubject: =?utf-8?Q?caf=C3=A9?= =?utf-8?Q?_ok?= end\n"
        "Content-Type: multipart/mixed; boundary=\"o\"\n\npreamble\n--o\n"
        "Content-Type: multipart/alternative; boundary=i\n\n--i\nContent-Type: text/plain; charset=windows-1251\n"
        "Content-Transfer-Encoding: quoted-printable\n\n=CF=F0=E8=E2=E5=F2 soft=\nbreak =3D\n--i\nContent-Type: text/html\n\n<p>x</p>\n--i--\n"
        "--o  \nContent-Type: application/pdf; name=old.pdf\n"
        "Content-Disposition: attachment; filename*0*=utf-8''%D0%9F; filename*1*=%D1%80.pdf\n"
        "Content-Transfer-Encoding: base64\n\nJVB\n ERi0x\n--o--\nepilogue\n";
    struct buf b = {0};
    struct mime_addr a[8];
    int n = mime_parse(m, strlen(m), pt, MIME_MAX_PARTS), off;
    int64_t t;
    ASSERT(n == 5);
    ASSERT(pt[0].multipart && pt[0].id[0] == 0 && strcmp(pt[0].type, "multipart/mixed") == 0);
    ASSERT(strcmp(pt[1].id, "1") == 0 && pt[1].multipart);
    ASSERT(strcmp(pt[2].id, "1.1") == 0 && strcmp(pt[2].charset, "windows-1251") == 0);
    ASSERT(strcmp(pt[3].id, "1.2") == 0 && strcmp(pt[3].type, "text/html") == 0);
    ASSERT(strcmp(pt[4].id, "2") == 0 && strcmp(pt[4].disposition, "attachment") == 0);
    ASSERT(strcmp(pt[4].filename, "\xd0\x9f\xd1\x80.pdf") == 0); /* RFC 2231 over Content-Type's name */
    mime_text(m, &pt[2], &b);
    ASSERT(strcmp(b.p, "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 softbreak =") == 0);
    b.len = 0;
    mime_body(m, &pt[4], &b);
    ASSERT(b.len == 6 && memcmp(b.p, "%PDF-1", 6) == 0);
    b.len = 0;
    ASSERT(mime_header(m, pt[0].head_len, "Subject", &b) && strcmp(b.p, "caf\xc3\xa9 ok end") == 0);
    b.len = 0;
    ASSERT(mime_header(m, pt[0].head_len, "From", &b) && strcmp(b.p, "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 <a@b.test>") == 0);
    /* no boundary, none given, no end: never an error */
    ASSERT(mime_parse("Content-Type: multipart/mixed\n\nx\n", 32, pt, MIME_MAX_PARTS) == 1 && strcmp(pt[0].id, "1") == 0);
    {
        const char *open = "Content-Type: multipart/mixed; boundary=z\n\n--z\n\nopen";
        ASSERT(mime_parse(open, strlen(open), pt, MIME_MAX_PARTS) == 2 && pt[1].body_len == 4);
    }
    {   /* nesting and part counts are bounded */
        struct buf deep = {0};
        int i;
        for (i = 0; i < 100; i++) buf_printf(&deep, "Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n", i, i);
        n = mime_parse(deep.p, deep.len, pt, MIME_MAX_PARTS);
        ASSERT(n <= MIME_MAX_DEPTH + 2);
        deep.len = 0;
        buf_adds(&deep, "Content-Type: multipart/mixed; boundary=q\n\n");
        for (i = 0; i < 1000; i++) buf_adds(&deep, "--q\n\nx\n");
        ASSERT(mime_parse(deep.p, deep.len, pt, MIME_MAX_PARTS) == MIME_MAX_PARTS);
        buf_free(&deep);
    }
    /* charsets: each table against its code points */
    {
        static const struct { const char *cs, *in, *out; } c[] = {
            {"koi8-r", "\xf0\xd2\xc9\xd7\xc5\xd4\xa3\xb3", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82\xd1\x91\xd0\x81"},
            {"windows-1251", "\xcf\xf0\xe8\xa8\xb8\x98", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\x81\xd1\x91\xef\xbf\xbd"},
            {"cp866", "\x8f\xe0\xa8\xf0\xf1", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\x81\xd1\x91"},
            {"ISO-8859-5", "\xbf\xe0\xd8\xa1\xf0", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\x81\xe2\x84\x96"},
            {"windows-1252", "\x80\x93\xe9\x81", "\xe2\x82\xac\xe2\x80\x9c\xc3\xa9\xef\xbf\xbd"},
            {"latin1", "\xe9\x80", "\xc3\xa9\xc2\x80"},
            {"utf-8", "ok \xd0\x9f \xff\xc0\xaf", "ok \xd0\x9f \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
            {"x-unknown", "\xe9", "\xef\xbf\xbd"},
        };
        size_t i;
        for (i = 0; i < sizeof c / sizeof c[0]; i++) {
            b.len = 0;
            mime_to_utf8(&b, c[i].cs, c[i].in, strlen(c[i].in));
            ASSERT(strcmp(b.p, c[i].out) == 0);
        }
    }
    b.len = 0;
    {
        const char *v = " =?windows-1251?Q?=CF=F0=E8=E2=E5=F2?=\n\t=?koi8-r?b?8NLJ18XU?= =?bogus?Q?x?= caf\xe9";
        mime_header_text(&b, v, strlen(v));
    }
    ASSERT(strcmp(b.p, "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 =?bogus?Q?x?= caf\xc3\xa9") == 0);
    /* addresses: quoted commas, comments, groups, routes */
    {
        const char *v = " \"Bob, B.\" <bob@x.test>, carol@y.test (Carol C), Team: d@z.test, e@z.test;, undisclosed-recipients:;,"
                        " <@relay.test:f@w.test>, =?utf-8?B?0JjQstCw0L0=?= <ivan@q.test>, \"=?utf-8?Q?J=C3=BCrgen?=\" <j@q.test>";
        n = mime_addresses(v, strlen(v), a, 8);
        ASSERT(n == 7);
        ASSERT(strcmp(a[0].name, "Bob, B.") == 0 && strcmp(a[0].addr, "bob@x.test") == 0);
        ASSERT(strcmp(a[1].name, "Carol C") == 0 && strcmp(a[1].addr, "carol@y.test") == 0);
        ASSERT(strcmp(a[2].addr, "d@z.test") == 0 && strcmp(a[3].addr, "e@z.test") == 0 && !a[2].name[0]);
        ASSERT(strcmp(a[4].addr, "f@w.test") == 0);
        ASSERT(strcmp(a[5].name, "\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd") == 0 && strcmp(a[6].name, "J\xc3\xbcrgen") == 0);
        ASSERT(mime_addresses("", 0, a, 8) == 0 && mime_addresses("<<<>>>,,;;\"", 11, a, 8) == 0);
    }
    /* dates: zones, obsolete forms */
    ASSERT(mime_date("Fri, 04 Dec 2026 10:00:00 +0300", 31, &t, &off) == 0 && t == 1796367600 && off == 180);
    ASSERT(mime_date("4 Dec 26 07:00 GMT (UTC)", 24, &t, &off) == 0 && t == 1796367600 && off == 0);
    ASSERT(mime_date("Thu, 3 Dec 2026 23:00:00 EST", 28, &t, &off) == 0 && t == 1796356800 && off == -300);
    ASSERT(mime_date("yesterday", 9, &t, &off) == -1 && mime_date("Fri, 32 Dec 2026 10:00 +0000", 28, &t, &off) == -1);
    buf_free(&b);
}

/* cid: references (RFC 2392) become the API's part URLs; nothing else of the HTML changes */
static void
test_http_html_cids(void)
{
    static struct http_doc d;
    struct buf out = {0};
    const char *m = "Content-Type: multipart/related; boundary=b\n\n--b\nContent-Type: text/html\n\nx\n"
                    "--b\nContent-Type: image/png\nContent-ID: <logo@x>\n\nPNG\n--b\nContent-Type: image/gif\n"
                    "Content-ID: <a b>\n\nGIF\n--b--\n";
    const char *html = "<img src=\"cid:logo@x\"><img src='CID:logo%40x'><img src=cid:nope>xcid:logo@x cid:ab";
    memset(&d, 0, sizeof d);
    buf_adds(&d.text, m);
    d.nparts = mime_parse(d.text.p, d.text.len, d.part, MIME_MAX_PARTS);
    http_html_cids(&out, html, strlen(html), &d, "ID1");
    ASSERT(out.p && strcmp(out.p, "<img src=\"/api/v1/message/ID1/part/2\"><img src='/api/v1/message/ID1/part/2'>"
                               "<img src=cid:nope>xcid:logo@x /api/v1/message/ID1/part/3") == 0);
    buf_free(&out);
    http_html_cids(&out, "", 0, &d, "ID1");
    ASSERT(out.len == 0);
    buf_free(&out);
    buf_free(&d.text);
}

static void
test_http_search_parse(void)
{
    struct search_term t[MS_HTTP_TERMS];
    int n = search_parse("hello \"big world\" -from:bob !subject:\"a b\" is:unread has:attachments larger:10k smaller:1M "
                         "after:2026-01-02 to:x", t, MS_HTTP_TERMS);
    ASSERT(n == 10);
    ASSERT(t[0].kind == SQ_TEXT && strcmp(t[0].text, "hello") == 0 && !t[0].neg);
    ASSERT(t[1].kind == SQ_TEXT && strcmp(t[1].text, "big world") == 0);
    ASSERT(t[2].kind == SQ_FROM && t[2].neg && strcmp(t[2].text, "bob") == 0);
    ASSERT(t[3].kind == SQ_SUBJECT && t[3].neg && strcmp(t[3].text, "a b") == 0);
    ASSERT(t[4].kind == SQ_IS_UNREAD && t[5].kind == SQ_HAS_ATTACHMENT);
    ASSERT(t[6].kind == SQ_LARGER && t[6].num == 10240 && t[7].kind == SQ_SMALLER && t[7].num == 1048576);
    ASSERT(t[8].kind == SQ_AFTER && t[8].num == 1767312000 && t[9].kind == SQ_TO);
    ASSERT(search_parse("larger:big", t, MS_HTTP_TERMS) == -1 && search_parse("after:2026-13-01", t, MS_HTTP_TERMS) == -1);
    /* a size no int64_t holds, or not a number at all (UBSan: the conversion was undefined; fuzz http) */
    ASSERT(search_parse("larger:1e300", t, MS_HTTP_TERMS) == -1 && search_parse("smaller:9e18k", t, MS_HTTP_TERMS) == -1);
    ASSERT(search_parse("larger:nan", t, MS_HTTP_TERMS) == -1 && search_parse("larger:inf", t, MS_HTTP_TERMS) == -1);
    ASSERT(search_parse("larger:1e15", t, MS_HTTP_TERMS) == 1 && t[0].num == 1000000000000000LL);
    ASSERT(search_parse("", t, MS_HTTP_TERMS) == 0 && search_parse("   ", t, MS_HTTP_TERMS) == 0);
    ASSERT(search_parse("a b c d e f g h i j k l m n o p q", t, MS_HTTP_TERMS) == -1); /* too many */
    ASSERT(ms_days_from_civil(1970, 1, 1) == 0 && ms_days_from_civil(2000, 3, 1) == 11017);
}
#endif

/* ---- the relay's conversion for the next hop (issue 18: long lines, 8BITMIME downgrade) ---- */

/* Runs mime_conv over text (LF lines), each line in pieces of at most `piece` octets as lr_next
 * gives a long line; returns the output (static) and *rc (0, or -1: cannot be converted). */
static char *
mc_run(const char *text, int need7, size_t piece, int *rc)
{
    static struct buf out;
    struct mime_conv mc;
    const char *p = text;
    mc_init(&mc, need7);
    out.len = 0;
    buf_adds(&out, "");
    *rc = 0;
    while (*p && !*rc) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        do {
            size_t k = n > piece ? piece : n;
            int last = k == n;
            *rc = mc_line(&mc, p, k, last && nl, &out);
            p += k;
            n -= k;
            if (last) break;
        } while (!*rc);
        if (nl) p++;
    }
    if (!*rc) *rc = mc_end(&mc, &out);
    return out.p;
}

/* Every line of s is at most max octets (and 7-bit when seven). */
static int
mc_lines_ok(const char *s, size_t max, int seven)
{
    size_t col = 0;
    for (; *s; s++) {
        if (seven && ((unsigned char)*s & 0x80)) return 0;
        if (*s == '\n') col = 0;
        else if (++col > max) return 0;
    }
    return 1;
}

/* Decodes quoted-printable text (RFC 2045 6.7) into a static buffer. */
static char *
qp_decode_text(const char *s, size_t n)
{
    static char out[300000];
    size_t o = 0, i;
    for (i = 0; i < n && o + 1 < sizeof out; i++) {
        if (s[i] == '=' && i + 1 < n && s[i + 1] == '\n') { i++; continue; }
        if (s[i] == '=' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
            char h[3] = {s[i + 1], s[i + 2], 0};
            out[o++] = (char)strtol(h, NULL, 16);
            i += 2;
            continue;
        }
        out[o++] = s[i];
    }
    out[o] = 0;
    return out;
}

/* The text between the first blank line after `after` and the line starting with `until` (or the end). */
static char *
mc_part_body(const char *s, const char *after, const char *until)
{
    static char out[300000];
    const char *a = strstr(s, after), *b, *e;
    if (!a || !(b = strstr(a, "\n\n"))) return NULL;
    b += 2;
    e = until ? strstr(b, until) : b + strlen(b);
    if (!e || (size_t)(e - b) >= sizeof out) return NULL;
    memcpy(out, b, (size_t)(e - b));
    out[e - b] = 0;
    return out;
}

static void
test_mime_conv(void)
{
    static char big[200000];
    char *o, *d;
    int rc;
    size_t i;
    /* a plain (non-MIME) message with a 1500-octet line: quoted-printable, MIME-Version added,
     * lines of at most 76 octets, decoding gives the text back; the same when fed in pieces */
    strcpy(big, "Received: from x\n\tby y\nSubject: long\n\nfirst = line  \n");
    for (i = 0; i < 1500; i++) big[strlen(big) + 1] = 0, big[strlen(big)] = (char)('a' + i % 26);
    strcat(big, "\n.dot line\nlast\n");
    for (i = 0; i < 2; i++) {
        o = mc_run(big, 0, i ? 100 : 16384, &rc);
        ASSERT(rc == 0 && mc_lines_ok(o, 76, 1));
        ASSERT(strstr(o, "MIME-Version: 1.0\nContent-Transfer-Encoding: quoted-printable\n\n") != NULL);
        ASSERT(strncmp(o, "Received: from x\n\tby y\nSubject: long\n", 37) == 0);
        ASSERT(strstr(o, "first =3D line =20\n") != NULL); /* '=' and the trailing space (rule 3) encoded */
        d = mc_part_body(o, "Subject:", NULL);
        ASSERT(d && strcmp(qp_decode_text(d, strlen(d)), strstr(big, "\n\n") + 2) == 0);
    }
    /* 8-bit for a hop without 8BITMIME: the Content-Transfer-Encoding field is replaced (wherever it was),
     * a MIME-Version kept; 8-bit octets and CR encoded */
    o = mc_run("MIME-Version: 1.0\nContent-Transfer-Encoding: 8bit\nContent-Type: text/plain; charset=utf-8\n\n"
               "Gr\xc3\xbc\xc3\x9f" "e\r\n", 1, 16384, &rc);
    ASSERT(rc == 0 && strcmp(o, "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                                "Content-Transfer-Encoding: quoted-printable\n\nGr=C3=BC=C3=9Fe=0D\n") == 0);
    /* an 8-bit header field cannot be converted: an error for a 7-bit hop only; folded when long */
    mc_run("Subject: Gr\xc3\xbc\xc3\x9f" "e\n\nbody\n", 1, 16384, &rc);
    ASSERT(rc == -1);
    o = mc_run("Subject: Gr\xc3\xbc\xc3\x9f" "e\n\nbody\n", 0, 16384, &rc);
    ASSERT(rc == 0 && strstr(o, "Subject: Gr\xc3\xbc\xc3\x9f" "e\n") != NULL);
    strcpy(big, "To: ");
    for (i = 0; i < 300; i++) strcat(big, "someone@example.org, ");
    strcat(big, "\n\nx\n");
    o = mc_run(big, 0, 16384, &rc);
    ASSERT(rc == 0 && mc_lines_ok(o, 998, 1));
    {   /* folded before white space: unfolding (dropping the LFs) gives the field back */
        static char unf[200000];
        size_t k = 0;
        const char *q;
        for (q = o; *q && !(q[0] == '\n' && q[1] == '\n'); q++)
            if (*q != '\n') unf[k++] = *q;
        unf[k] = 0;
        k = (size_t)(strstr(big, "\n\n") - big);
        ASSERT(strncmp(unf, big, k) == 0 && strncmp(unf + k, "MIME-Version: 1.0", 17) == 0);
    }
    /* nested multipart: boundaries with transport padding, an alternative inside, base64 left,
     * message/rfc822 converted inside and then 7bit, the preamble and epilogue kept */
    {
        const char *msg =
            "MIME-Version: 1.0\nContent-Type: multipart/mixed;\n boundary=\"out er\"\n\npreamble\n"
            "--out er  \nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\xc3\xa4 =\n"
            "--out er\nContent-Type: multipart/alternative; boundary=in\n\n"
            "--in\nContent-Type: text/html\n\n<p>\xc3\xb6</p>\n--in--\t\nepi-in\n"
            "--out er\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAAEC\n"
            "--out er\nContent-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\nSubject: inner\n\n\xc3\xbc\n"
            "--out er--\nepilogue\n";
        o = mc_run(msg, 1, 16384, &rc);
        ASSERT(rc == 0 && mc_lines_ok(o, 76, 1));
        ASSERT(strstr(o, "\npreamble\n--out er  \nContent-Type: text/plain; charset=utf-8\n"
                         "Content-Transfer-Encoding: quoted-printable\n\n=C3=A4 =3D\n--out er\n") != NULL);
        ASSERT(strstr(o, "--in\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n"
                         "<p>=C3=B6</p>\n--in--\t\nepi-in\n") != NULL);
        ASSERT(strstr(o, "Content-Transfer-Encoding: base64\n\nAAEC\n") != NULL);
        ASSERT(strstr(o, "Content-Type: message/rfc822\nContent-Transfer-Encoding: 7bit\n\nSubject: inner\n"
                         "MIME-Version: 1.0\nContent-Transfer-Encoding: quoted-printable\n\n=C3=BC\n--out er--\n"
                         "epilogue\n") != NULL);
        ASSERT(strncmp(o, "MIME-Version: 1.0\nContent-Type: multipart/mixed;\n boundary=\"out er\"\n\n", 67) == 0);
        o = mc_run(msg, 0, 30, &rc); /* for a hop with 8BITMIME (long lines elsewhere), in pieces: 8bit stays */
        ASSERT(rc == 0 && strstr(o, "Content-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n") != NULL);
    }
    /* 8-bit octets in a part left as it is (base64, the preamble): an error for a 7-bit hop */
    mc_run("Content-Type: application/x; name=a\nContent-Transfer-Encoding: base64\n\nAA\xff\n", 1, 16384, &rc);
    ASSERT(rc == -1);
    mc_run("Content-Type: multipart/mixed; boundary=b\n\n\xff\n--b\n\nx\n--b--\n", 1, 16384, &rc);
    ASSERT(rc == -1);
    /* long lines in a part left as it is: 998 octets stay, 999 are broken (base64: LF SPACE, as Postfix;
     * quoted-printable: a soft break, never inside an =XX) */
    strcpy(big, "Content-Transfer-Encoding: base64\n\n");
    i = strlen(big);
    memset(big + i, 'Q', 998);
    memcpy(big + i + 998, "\n", 2);
    i = strlen(big);
    memset(big + i, 'R', 999);
    memcpy(big + i + 999, "\n", 2);
    o = mc_run(big, 0, 16384, &rc);
    ASSERT(rc == 0 && mc_lines_ok(o, 998, 1));
    d = strstr(o, "\n\n");
    ASSERT(d && strlen(d) == 2 + 998 + 1 + 998 + 2 + 1 + 1 && d[2 + 998] == '\n' && d[2 + 999 + 998] == '\n' &&
           d[2 + 999 + 999] == ' ' && d[2 + 999 + 1000] == 'R');
    strcpy(big, "Content-Transfer-Encoding: quoted-printable\n\n");
    for (i = 0; i < 1200; i++) strcat(big, i % 2 ? "=C3" : "x");
    strcat(big, "\n");
    o = mc_run(big, 0, 16384, &rc);
    ASSERT(rc == 0 && mc_lines_ok(o, 998, 1));
    d = mc_part_body(o, "Content-Transfer-Encoding", NULL);
    ASSERT(d && strcmp(qp_decode_text(d, strlen(d)), qp_decode_text(strstr(big, "\n\n") + 2, strlen(big) - 2 -
           (size_t)(strstr(big, "\n\n") - big))) == 0);
    /* a header without body, and a last line without LF */
    o = mc_run("Subject: s\nContent-Transfer-Encoding: 7bit", 1, 16384, &rc);
    ASSERT(rc == 0 && strcmp(o, "Subject: s\nContent-Transfer-Encoding: 7bit") == 0);
    o = mc_run("Subject: s\n\nend", 1, 16384, &rc);
    ASSERT(rc == 0 && strcmp(o, "Subject: s\nMIME-Version: 1.0\nContent-Transfer-Encoding: quoted-printable\n\nend") == 0);
}

/* ---- trust (issue 11): smtpfix unit tests go above this line ---- */

int
main(void)
{
    test_data_rx();
    test_mime_conv();
    test_smtp_path();
    test_dsn_params();
    test_cmd_split();
    test_crypto();
    test_config();
    test_ini_edit();
    test_mbox_and_uidl();
    test_storage();
    test_dns();
    test_relay_parsers();
    test_mx_order();
    test_queue_files();
    test_lists();
#if MAILSRV_ENABLE_TLS
    test_tls();
#endif

    test_mbox_unique_uidls();
    test_mbox_journal();
    test_mbox_batch_journal();
    test_mbox_index();
#ifndef _WIN32
    test_mtime_settled();
#endif
    /* trust (issue 11): mbox test calls above this line */

#ifndef _WIN32
    test_fs_links();
#endif
    test_fs_tmp_clean();

    test_fs_free_space();

    /* trust (issue 11): fs test calls above this line */

    test_auth_pbkdf2_slices();
    test_auth_config();

    /* trust (issue 11): auth test calls above this line */

    test_anvil_client_key();
    test_anvil_auth_by_64();
    test_client_counts();
    test_anvil_rate_and_refusal_log();
    /* trust (issue 11): anvil test calls above this line */

    test_list_rate();
    /* trust (issue 11): listflood test calls above this line */

    test_cfg_random();
#if MAILSRV_ENABLE_TLS
    test_cfg_cert_names();
#endif
    test_cfg_reload_keeps();
    /* trust (issue 11): cfg test calls above this line */

    test_smtpfix_path_limits();
    test_utf8_idna();

    test_smtpfix_queue_from();

    /* trust (issue 11): smtpfix test calls above this line */

#if MAILSRV_ENABLE_HTTP
    test_http_parse_head();
    test_http_query_and_json();
    test_http_search_parse();
    test_mime();
    test_http_html_cids();
#endif

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
