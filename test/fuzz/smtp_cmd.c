/* libFuzzer: one SMTP or POP3 command line as the sessions parse it:
 * cmd_split (verb and arguments), smtp_parse_path (MAIL FROM / RCPT TO)
 * and its SMTPUTF8 check (smtp_path_utf8, with the A-label of the domain),
 * the DSN parameters and xtext (RFC 3461), pop_parse_num, the mboxrd From_
 * test and the log escaper. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static void
check_path(const char *s)
{
    char local[MS_PATH_MAX + 1], domain[MS_DOMAIN_MAX + 1];
    const char *rest = smtp_parse_path(s, local, domain);
    if (!rest) return;
    assert(rest >= s && rest <= s + strlen(s));
    assert(strlen(local) <= MS_LOCAL_MAX && strlen(domain) <= MS_DOMAIN_MAX);
    assert(!domain[0] || local[0]); /* no "@domain" without a local part */
    {
        int ascii = smtp_path_utf8(local, domain, 0), utf8 = smtp_path_utf8(local, domain, 1);
        char a[MS_DOMAIN_MAX + 1];
        assert(ascii >= -1 && ascii <= 1 && (ascii == 1 ? utf8 == 0 : utf8 == ascii));
        assert(ascii != 0 || (ms_is_ascii(local) && ms_is_ascii(domain)));
        if (idna_to_ascii(domain, a, sizeof a) == 0) assert(ms_is_ascii(a) && strlen(a) <= MS_DOMAIN_MAX);
    }
}

static void
check_dsn(const char *s, size_t n)
{
    struct dsn_mail d;
    char orcpt[MS_ORCPT_MAX + 1], dec[MS_SMTP_LINE_MAX], enc[3 * MS_SMTP_LINE_MAX + 1], dec2[MS_SMTP_LINE_MAX];
    int notify = 0;
    long k;
    memset(&d, 0, sizeof d);
    orcpt[0] = 0;
    if (dsn_mail_param(s, &d) > 0) assert(d.ret || (strlen(d.envid) && strlen(d.envid) <= MS_ENVID_MAX));
    if (dsn_rcpt_param(s, &notify, orcpt) > 0) {
        assert(notify || (strchr(orcpt, ';') && strlen(orcpt) <= MS_ORCPT_MAX));
        assert(!(notify & DSN_NEVER) || notify == DSN_NEVER);
    }
    if ((k = xtext_decode(s, n, dec, sizeof dec)) >= 0) { /* decode, encode, decode: the same octets */
        long e = xtext_encode(dec, (size_t)k, enc, sizeof enc);
        assert((size_t)k <= n && e >= 0 && xtext_decode(enc, (size_t)e, dec2, sizeof dec2) == k && memcmp(dec, dec2, (size_t)k) == 0);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line, verb[16], pverb[8], mech[32], vis[600];
    const char *args, *p;
    int k;
    if (size >= MS_SMTP_LINE_MAX) return 0; /* conn_process refuses longer lines */
    line = fuzz_cstr(data, size);
    args = cmd_split(line, verb, sizeof verb);
    assert(strlen(verb) < sizeof verb && args >= line && args <= line + strlen(line));
    if ((p = smtp_after_prefix(args, "FROM:")) != NULL) check_path(p);
    if ((p = smtp_after_prefix(args, "TO:")) != NULL) check_path(p);
    check_path(args);
    check_dsn(line, strlen(line));
    args = cmd_split(args, mech, sizeof mech); /* AUTH MECH initial-response */
    args = cmd_split(line, pverb, sizeof pverb); /* POP3 */
    k = pop_parse_num(args, 1000);
    assert(k == -1 || (k >= 1 && k <= 1000));
    mbox_is_from_line(line, size, 0);
    mbox_is_from_line(line, size, 1);
    ms_visible(vis, sizeof vis, (const char *)data, size);
    assert(strlen(vis) < sizeof vis);
    free(line);
    return 0;
}
