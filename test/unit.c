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
        qentry_free(back);
    }
    { /* found by the .env fuzzer: a recipient without '@' makes the entry unreadable */
        FILE *f;
        char path[100];
        snprintf(path, sizeof path, "%s/bad.env", dir);
        f = fopen(path, "w");
        fputs("mailsrv-queue 1\nfrom <a@b.c>\nrcpt pending x\n", f);
        fclose(f);
        ASSERT(queue_env_read(dir, "bad") == NULL);
        unlink(path);
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
        char path[1300];
        snprintf(path, sizeof path, "%s/%s.env", dir, e.id);
        unlink(path);
        rmdir(dir);
    }
}

#if MAILSRV_ENABLE_TLS
static void
write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
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
    ASSERT(tls_make_cert("mx.example.org", &cb, &kb) == 0);
    ASSERT(tls_make_cert("other.example.org", &cb2, &kb2) == 0);
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

/* ---- trust (issue 11): mbox unit tests go above this line ---- */

/* ---- trust (issue 11): fs unit tests go above this line ---- */

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

/* ---- trust (issue 11): listflood unit tests go above this line ---- */

/* ---- trust (issue 11): cfg unit tests go above this line ---- */

/* ---- trust (issue 11): smtpfix unit tests go above this line ---- */

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
    test_dns();
    test_relay_parsers();
    test_queue_files();
    test_lists();
#if MAILSRV_ENABLE_TLS
    test_tls();
#endif

    /* trust (issue 11): mbox test calls above this line */

    /* trust (issue 11): fs test calls above this line */

    /* trust (issue 11): auth test calls above this line */

    test_anvil_client_key();
    test_anvil_auth_by_64();
    test_anvil_rate_and_refusal_log();
    /* trust (issue 11): anvil test calls above this line */

    /* trust (issue 11): listflood test calls above this line */

    /* trust (issue 11): cfg test calls above this line */

    /* trust (issue 11): smtpfix test calls above this line */

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
