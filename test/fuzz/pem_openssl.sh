#!/bin/sh
# The PEM oracle: what mailsrv reads from each file (build/fuzz/pem with FUZZ_PEM_DUMP
# set) against what openssl reads: the number of certificates (as ca_file anchors), and
# as tls_cert + tls_key the chain length, the key type, and that mailsrv takes the pair
# exactly when openssl finds the key is the first certificate's. Seeds only: on fuzzed
# inputs the two decoders differ by design (openssl forgives more in base64 and DER).
# Usage: test/fuzz/pem_openssl.sh [FILE...]   (default: test/fuzz/corpus/pem/*; run by `make fuzz`)
[ $# -gt 0 ] || set -- test/fuzz/corpus/pem/*
fail=0
for f in "$@"; do
    ours=$(FUZZ_PEM_DUMP=1 ./build/fuzz/pem "$f" 2>/dev/null | awk '!seen[$0]++') # libFuzzer may run it twice
    certs=$(openssl storeutl -noout -certs "$f" 2>/dev/null | sed -n 's/^Total found: //p')
    key=$(openssl pkey -in "$f" -pubout -outform DER 2>/dev/null | openssl asn1parse -inform DER 2>/dev/null |
          grep -o -m1 'rsaEncryption\|id-ecPublicKey')
    case $key in rsaEncryption) key=rsa;; id-ecPublicKey) key=ec;; esac
    certpub=$(openssl x509 -in "$f" -noout -pubkey 2>/dev/null)
    keypub=$(openssl pkey -in "$f" -pubout 2>/dev/null)
    if [ -n "$key" ] && [ -n "$certpub" ] && [ "$certpub" = "$keypub" ]; then
        want="creds ok: chain ${certs:-0}, key $key"
    else
        want="creds refused"
    fi
    want="$want
anchors ${certs:-0}"
    if [ "$ours" = "$want" ]; then
        echo "pem vs openssl: $f: same"
    else
        printf 'pem vs openssl: %s DIFFERS\n  mailsrv: %s\n  openssl: %s\n' "$f" "$(echo $ours)" "$(echo $want)"
        fail=1
    fi
done
exit $fail
