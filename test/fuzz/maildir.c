/* libFuzzer: Maildir file names (",S=", ",W=", ":2,FLAGS") as the POP3 view
 * reads them (mdir_list_step, mdir_size_step). Input: two file names, one per line, then the
 * text both files hold. STAT, LIST and UIDL run on the view; RETR must send
 * what LIST announced when the name has no W=; DELE + QUIT removes a file. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

static struct mailsrv *ms;

/* The next line of the input as a file name that is one path component. */
static void
take_name(const uint8_t **p, const uint8_t *end, char *name, size_t cap)
{
    size_t n = 0;
    name[n++] = 'm'; /* never "", ".", ".." or hidden */
    for (; *p < end && **p != '\n'; (*p)++)
        if (n + 1 < cap) name[n++] = **p == '/' || **p == 0 ? '_' : (char)**p;
    if (*p < end) (*p)++;
    name[n] = 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    char names[2][200], path[MS_PATH_MESSAGE], dir[MS_PATH_DOMAIN];
    struct pop_view v;
    struct conn *c;
    int i;
    if (!ms) ms = fuzz_server("", "");
    take_name(&p, end, names[0], sizeof names[0]);
    take_name(&p, end, names[1], sizeof names[1]);
    if (strcmp(names[0], names[1]) == 0) return 0;
    fuzz_rm_tree(ms->cfg->spool);
    mkdir(ms->cfg->spool, 0700);
    if (mdir_prepare(ms->cfg->spool, "u@fuzz.test", dir, sizeof dir, NULL) != 0) abort();
    for (i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s/%s", dir, i ? "../cur" : ".", names[i]);
        fuzz_write(path, p, (size_t)(end - p));
    }
    if (view_open_whole(&maildir_store, &v, ms->cfg->spool, "u@fuzz.test") != 0) abort();
    assert(v.n == 2);
    c = fuzz_pop_conn(ms, &v);
    pop_command(c, "STAT", "");
    pop_command(c, "LIST", "");
    pop_command(c, "UIDL", "");
    pop_command(c, "LIST", "2");
    buf_free(&c->io.out);
    free(c);
    for (i = 0; i < 2; i++) {
        const char *name = strchr(v.msgs[i].name, '/') + 1;
        assert(strlen(v.msgs[i].uidl) >= 1 && strlen(v.msgs[i].uidl) <= 70);
        if (!strstr(name, ",W=")) assert(fuzz_retr(ms, &v, i, -1, NULL) == v.msgs[i].size);
        else assert(fuzz_retr(ms, &v, i, -1, NULL) >= 0);
    }
    v.msgs[0].deleted = 1;
    if (view_expunge(&v, INT64_MAX) != 1) abort();
    snprintf(path, sizeof path, "%s/%s", v.path, v.msgs[0].name);
    assert(access(path, F_OK) != 0);
    view_free(&v);
    return 0;
}
