/* libFuzzer: the INI file (inih + cfg_on_key + cfg_validate), without the TLS
 * files. A valid file is then edited as `mailsrv add` / `mailsrv del` do
 * (cfg_edit_mailbox): an added mailbox must load, a removed one must be gone. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

#define PATH "/nonexistent/mailsrv.ini"

static void
check_edits(const char *text, const struct cfg_domain *d)
{
    char err[512], *edited;
    struct ms_config *c;
    const struct cfg_domain *nd;
    if (!cfg_find_user(d, "zz9") && !cfg_find_alias(d, "zz9")) {
        edited = cfg_edit_mailbox(text, strlen(text), "zz9", d->name, "Passw0rdZ", err, sizeof err);
        assert(edited);
        c = cfg_load_ex(PATH, edited, 0);
        /* `add` writes only a result that loads: the inserted line can make an indented
         * line after it inih's continuation of it ("defined twice"), which add refuses */
        nd = cfg_find_domain(c, d->name);
        if (!c->nerrors) assert(nd && cfg_find_user(nd, "zz9"));
        cfg_free(c);
        free(edited);
    }
    if (d->nusers) {
        edited = cfg_edit_mailbox(text, strlen(text), d->users[0].name, d->name, NULL, err, sizeof err);
        assert(edited); /* also when the mailbox is in a repeated [domain X] section */
        c = cfg_load_ex(PATH, edited, 0);
        nd = cfg_find_domain(c, d->name); /* gone if that was its only entry */
        if (!c->nerrors && nd) assert(!cfg_find_user(nd, d->users[0].name));
        cfg_free(c);
        free(edited);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    struct ms_config *c = cfg_load_ex(PATH, text, 0);
    int i;
    if (!c->nerrors) {
        for (i = 0; i < c->ndomains; i++) {
            struct targets t = {0};
            cfg_resolve(c, "postmaster", c->domains[i].name, &t, 0);
            cfg_resolve(c, "nobody", c->domains[i].name, &t, 0);
            targets_free(&t);
        }
        if (c->ndomains) check_edits(text, &c->domains[0]);
    }
    cfg_free(c);
    free(text);
    return 0;
}
