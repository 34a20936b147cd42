/* libFuzzer: DNS over TCP framing (RFC 1035 4.2.2), as mta_dns_io reads a
 * truncated query's answer: a 2-byte length, then the message, arriving in
 * pieces. Input: one byte for the piece sizes, then the resolver's stream.
 * Oracle: dns_tcp_msg_len says "complete" exactly when the length the first
 * two bytes give (computed here) has arrived, with that length, and never
 * while there is no room left to read into; the message then parses from
 * bytes that have arrived (the buffer here is exactly as long as what came,
 * so ASan sees a read past it). */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int types[] = {DNS_MX, DNS_A, DNS_AAAA};
    unsigned char *ans = NULL;
    size_t alen = 0, want;
    unsigned seed;
    long got = -1;
    struct dns_result r;
    int i;
    if (size < 1) return 0;
    seed = data[0];
    data++, size--;
    want = size >= 2 ? 2 + ((size_t)data[0] << 8 | data[1]) : 0;
    while (alen < size) {
        size_t take;
        seed = seed * 1103515245u + 12345u;
        take = 1 + (seed >> 16) % 700;
        if (take > size - alen) take = size - alen;
        assert(65537 - alen > 0); /* mta_dns_io's net_recv has room: it never reads 0 bytes and gives up */
        if (take > 65537 - alen) take = 65537 - alen;
        ans = xrealloc(ans, alen + take);
        memcpy(ans + alen, data + alen, take);
        alen += take;
        got = dns_tcp_msg_len(ans, alen);
        if (alen < 2 || alen < want) {
            assert(got == -1);
        } else {
            assert(got == (long)want - 2);
            break; /* mta_dns_io stops reading here */
        }
    }
    if (got < 0) { free(ans); return 0; }
    for (i = 0; i < 3; i++) /* the id is the resolver's own: taken from the answer, as dns.c does */
        if (dns_parse_answer(ans + 2, (size_t)got, got >= 2 ? dns_u16(ans + 2) : 0, "example.com", types[i], &r) == 0)
            assert(r.n >= 0 && r.n <= MS_DNS_RR_MAX);
    free(ans);
    return 0;
}
