/* libFuzzer: PEM files, i.e. tls_cert / tls_key (tls_creds_load: the chain, the
 * key, and the check that they belong together) and [relay] ca_file
 * (tls_anchors_load). The input is one file holding both, as a combined
 * cert+key PEM does. Needs TLS (MAILSRV_ENABLE_TLS=1, -lbearssl). */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[256];
    char err[2600];
    struct tls_creds *t;
    if (!path[0]) snprintf(path, sizeof path, "%s/tls.pem", fuzz_dir());
    fuzz_write(path, data, size);
    if ((t = tls_creds_load(path, path, err, sizeof err)) != NULL) {
        assert(t->nchain >= 1 && br_skey_decoder_key_type(&t->skey) != 0);
        tls_creds_release(t);
    } else {
        assert(strlen(err) > 0 && strlen(err) < sizeof err);
    }
    if ((t = tls_anchors_load(path, err, sizeof err)) != NULL) {
        assert(t->nanchors >= 1);
        tls_creds_release(t);
    }
    return 0;
}
