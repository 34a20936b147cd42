/* Unit tests of mailsrv's parsers and helpers: includes mailsrv.c without main. */
#define MAILSRV_NO_MAIN
#include "../mailsrv.c"

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
            ASSERT(d.bare);
        }
    }
    /* bare LF normalised to a line end; the end needs a real CRLF before it */
    o = rx_run("a\nb\r\n.\r\n", 3, &done, &used, &d);
    ASSERT(done && strcmp(o, "a\nb\n") == 0 && d.lines == 2);
    o = rx_run("x\n.\r\n.\r\n", 1, &done, &used, &d);
    ASSERT(done && strcmp(o, "x\n.\n") == 0);
    /* line length: 998 octets of text fit, 999 do not */
    {
        char big[1200];
        memset(big, 'a', 998);
        strcpy(big + 998, "\r\n.\r\n");
        rx_run(big, 100, &done, &used, &d);
        ASSERT(done && !d.too_long);
        memset(big, 'a', 999);
        strcpy(big + 999, "\r\n.\r\n");
        rx_run(big, 100, &done, &used, &d);
        ASSERT(done && d.too_long);
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
        ASSERT(pass_verify(stored, "Secr3tPass"));
        ASSERT(!pass_verify(stored, "Secr3tPas"));
        ASSERT(pass_verify("plain", "plain") && !pass_verify("plain", "plainx"));
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
    free(t.v);
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
        targets_add(&t, "u", "d.org");
        for (i = 0; i < 3; i++) {
            memset(&m, 0, sizeof m);
            snprintf(m.id, sizeof m.id, "id%d", i);
            snprintf(m.name, sizeof m.name, "id%d.host", i);
            snprintf(m.tmp_path, sizeof m.tmp_path, "%s/tmp%d", dir, i);
            strcpy(m.sender, "s@x");
            m.when = 1000000000;
            m.tmp_fd = open(m.tmp_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
            os_write_all(m.tmp_fd, body, strlen(body));
            m.size = (int64_t)strlen(body);
            m.lines = 6;
            ASSERT(store_deliver(c, &m, &t, &err, NULL, NULL, NULL) == 0);
            close(m.tmp_fd);
            unlink(m.tmp_path);
        }
        i = kind ? mbox_view_open(&v, c->spool, "u@d.org") : mdir_view_open(&v, c->spool, "u@d.org");
        ASSERT(i == 0 && v.n == 3);
        if (v.n == 3) {
            ASSERT(v.msgs[0].size == (int64_t)strlen(body) + 6 + (kind ? 13 : 0)); /* CRLF; mbox adds "X-UIDL: idN" */
            ASSERT(strcmp(v.msgs[1].uidl, kind ? "id1" : "id1.host") == 0);
            v.msgs[1].deleted = 1;
            ASSERT(view_commit(&v) == 0);
        }
        view_free(&v);
        i = kind ? mbox_view_open(&v, c->spool, "u@d.org") : mdir_view_open(&v, c->spool, "u@d.org");
        ASSERT(i == 0 && v.n == 2);
        if (v.n == 2) ASSERT(strcmp(v.msgs[1].uidl, kind ? "id2" : "id2.host") == 0);
        if (kind && v.n == 2) {
            /* a crashed append past the committed length is invisible and cut */
            char path[1300];
            int fd;
            snprintf(path, sizeof path, "%s/d.org/u.mbox", c->spool);
            fd = open(path, O_WRONLY | O_APPEND);
            ASSERT(write(fd, "From half\nSubject: cut", 22) == 22);
            close(fd);
            view_free(&v);
            ASSERT(mbox_view_open(&v, c->spool, "u@d.org") == 0 && v.n == 2);
        }
        view_free(&v);
        free(t.v);
        cfg_free(c);
    }
}

int
main(void)
{
    test_data_rx();
    test_smtp_path();
    test_cmd_split();
    test_crypto();
    test_config();
    test_ini_edit();
    test_mbox_and_uidl();
    test_storage();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
