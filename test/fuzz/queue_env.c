/* libFuzzer: a relay queue envelope, QUEUE/ID.env, as queue_env_read() reads
 * it at start. Checks that writing the entry back and reading it again gives
 * the same text, then hands it to the queue runner (relay_run) as the server
 * does, which starts one outbound session per destination domain. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

#define ID "1700000000.M123456P42Q1.mx.fuzz.test"

static struct mailsrv *ms;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[MS_PATH_FILE];
    struct qentry *e, *again;
    struct buf t1 = {0}, t2 = {0};
    int i;
    if (!ms) ms = fuzz_server("", "");
    snprintf(path, sizeof path, "%s/" ID ".env", ms->qdir);
    fuzz_write(path, data, size);
    e = queue_env_read(ms->qdir, ID);
    if (!e) return 0;
    /* the round trip: what queue_env_update() writes reads back as the same entry */
    queue_env_text(e, &t1);
    fuzz_write(path, t1.p, t1.len);
    again = queue_env_read(ms->qdir, ID);
    assert(again);
    queue_env_text(again, &t2);
    assert(t1.len == t2.len && memcmp(t1.p, t2.p, t1.len) == 0);
    qentry_free(again);
    buf_free(&t1);
    buf_free(&t2);
    /* the queue runner: sessions are made, not started (that happens in the timers) */
    e->next_try = 0;
    ms->queue = xrealloc(ms->queue, sizeof *ms->queue);
    ms->queue[0] = e;
    ms->nqueue = 1;
    relay_run(ms);
    for (i = 0; i < ms->nout; i++) mta_free(ms->out[i]);
    ms->nout = 0;
    ms->nqueue = 0;
    qentry_free(e);
    return 0;
}
