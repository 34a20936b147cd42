/* libFuzzer: an mbox file as the POP3 view reads it (mbox_view_open: From_
 * lines, X-UIDL, mboxrd unquoting). Checks: UIDLs are unique and valid, the
 * size LIST announces is what RETR sends, and after DELE of every other
 * message and QUIT (view_commit rewrites the file) the kept ones read back
 * the same. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[1300];
    struct pop_view v, w;
    int i, j;
    if (!ms) ms = fuzz_server("storage = mbox\n", "");
    fuzz_rm_tree(ms->cfg->spool);
    snprintf(path, sizeof path, "%s/fuzz.test", ms->cfg->spool);
    mkdir(ms->cfg->spool, 0700);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/fuzz.test/u.mbox", ms->cfg->spool);
    fuzz_write(path, data, size);
    if (mbox_view_open(&v, ms->cfg->spool, "u@fuzz.test") != 0) abort();
    for (i = 0; i < v.n; i++) {
        const char *u = v.msgs[i].uidl;
        assert(strlen(u) >= 1 && strlen(u) <= 70);
        for (j = 0; u[j]; j++) assert(u[j] > 0x20 && u[j] < 0x7f);
        for (j = 0; j < i; j++) assert(strcmp(v.msgs[j].uidl, u) != 0);
        assert(v.msgs[i].off + v.msgs[i].len <= (int64_t)size);
        assert(fuzz_retr(ms, &v, i, -1, NULL) == v.msgs[i].size);
        fuzz_retr(ms, &v, i, 1, NULL);
    }
    for (i = 0; i < v.n; i += 2) v.msgs[i].deleted = 1;
    if (view_commit(&v) != 0) abort();
    if (mbox_view_open(&w, ms->cfg->spool, "u@fuzz.test") != 0) abort();
    assert(w.n == v.n / 2);
    for (i = 0; i < w.n; i++) assert(w.msgs[i].size == v.msgs[2 * i + 1].size);
    view_free(&w);
    view_free(&v);
    return 0;
}
