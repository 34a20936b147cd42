/* libFuzzer: the parsers of mailing-list input (section 6): header fields
 * (hdr_get, hdr_is_automatic), delivery reports (dsn_failed) and the list
 * state file (list_state_parse), whose text must survive a round trip. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char v[256], out[8][MS_PATH_MAX], *text = fuzz_cstr(data, size);
    struct list_state st, again;
    struct buf t1 = {0}, t2 = {0};
    long seq;
    int i, n;
    static const char *const names[] = {"Subject", "List-Id", "Auto-Submitted", "Message-ID", "Content-Type"};
    for (i = 0; i < 5; i++) {
        if (hdr_get((const char *)data, size, names[i], v, sizeof v)) assert(strlen(v) < sizeof v);
        else assert(v[0] == 0);
    }
    (void)hdr_is_automatic((const char *)data, size);
    n = dsn_failed((const char *)data, size, out, 8, &seq);
    assert(n >= 0 && n <= 8 && seq >= -1);
    for (i = 0; i < n; i++) assert(strchr(out[i], '@') && !strchr(out[i], ' '));
    if (list_state_parse(text, &st) == 0) { /* what is written reads back the same */
        char *copy;
        list_state_text(&st, &t1);
        copy = xstrdup(t1.p);
        assert(list_state_parse(copy, &again) == 0);
        list_state_text(&again, &t2);
        assert(t1.len == t2.len && memcmp(t1.p, t2.p, t1.len) == 0);
        list_state_free(&again);
        free(copy);
        list_state_free(&st);
    }
    buf_free(&t1);
    buf_free(&t2);
    free(text);
    return 0;
}
