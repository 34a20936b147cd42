/* libFuzzer: PEM files, i.e. tls_cert / tls_key (tls_creds_load: the chain, the
 * key, and the check that they belong together) and [relay] ca_file
 * (tls_anchors_load). The input is one file holding both, as a combined
 * cert+key PEM does. Needs TLS (MAILSRV_ENABLE_TLS=1, -lbearssl).
 * With FUZZ_PEM_DUMP set it prints what it read (certs, key type, whether
 * the key is the first certificate's): test/fuzz/pem_openssl.sh compares
 * that with openssl on the seed corpus. */
#define MAILSRV_NO_MAIN
#include "../../mailsrv.c"
#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[256];
    char err[2600];
    struct tls_creds *t;
    int dump = getenv("FUZZ_PEM_DUMP") != NULL;
    if (!path[0]) snprintf(path, sizeof path, "%s/tls.pem", fuzz_dir());
    fuzz_write(path, data, size);
    if ((t = tls_creds_load(path, path, err, sizeof err)) != NULL) {
        int type = br_skey_decoder_key_type(&t->skey);
        assert(t->nchain >= 1 && type != 0);
        if (dump) printf("creds ok: chain %d, key %s\n", (int)t->nchain, type == BR_KEYTYPE_RSA ? "rsa" : "ec");
        tls_creds_release(t);
    } else {
        assert(strlen(err) > 0 && strlen(err) < sizeof err);
        if (dump) printf("creds refused\n");
    }
    if ((t = tls_anchors_load(path, err, sizeof err)) != NULL) {
        assert(t->nanchors >= 1);
        if (dump) printf("anchors %d\n", (int)t->nanchors);
        tls_creds_release(t);
    } else if (dump) {
        printf("anchors 0\n");
    }
    return 0;
}
