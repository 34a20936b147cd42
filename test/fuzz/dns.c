/* libFuzzer: a DNS answer (UDP payload) for a query of example.com. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static void
check_result(const struct dns_result *r)
{
    int i;
    assert(r->n >= 0 && r->n <= MS_DNS_RR_MAX);
    for (i = 0; i < r->n; i++) assert(strlen(r->rr[i].host) <= MS_DOMAIN_MAX);
}

int
LLVMFuzzerTestOneInput(const uint8_t *m, size_t len)
{
    static const int types[] = {DNS_MX, DNS_A, DNS_AAAA};
    struct dns_result r;
    char name[MS_DOMAIN_MAX + 1], small[16];
    size_t off, i;
    /* the id is the resolver's own: take it from the answer, so the fuzzer reaches the rest */
    unsigned id = len >= 2 ? dns_u16(m) : 0;
    for (i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (dns_parse_answer(m, len, id, "example.com", types[i], &r) == 0) check_result(&r);
        if (dns_parse_answer(m, len, id, "Example.COM.", types[i], &r) == 0) check_result(&r);
    }
    /* every name in the message, read with a roomy and a tight buffer */
    for (i = 12; i < len && i < 64; i++) {
        off = i;
        if (dns_read_name(m, len, &off, name, sizeof name) == 0) {
            assert(off > i && off <= len && strlen(name) <= MS_DOMAIN_MAX);
        }
        off = i;
        if (dns_read_name(m, len, &off, small, sizeof small) == 0) assert(strlen(small) < sizeof small);
    }
    return 0;
}
