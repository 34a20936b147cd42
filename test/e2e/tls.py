"""TLS: STARTTLS/STLS, implicit TLS, certificates, versions and suites, resumption, outbound STARTTLS."""
import os
import poplib
import re
import shutil
import smtplib
import subprocess
import tempfile
import time

import fakes  # test/ is on sys.path: it is the entry point's folder

from .harness import (BIN, Conn, Net, Pop, SENDER, SLACK, Skip, Smtp, TESTS, TLS_TESTS, TestFailure, WINDOWS,
                      b64, check, check_message, dot_stuff, make_msg, plain, run_cli, secs, short, soft,
                      stored, stored_tokens, test, tls_client_ctx, tok, token_of, wait_for)
from .cli import check_cli, read
from .smtp import curl
from .relay import check_relayed, queue_cli, relay_mail, sink_wait


# =============================================================================================
# TLS (BearSSL): STARTTLS/STLS, implicit TLS (smtps, pop3s), certificates (gencert, openssl-made
# RSA/EC keys in PKCS#8 and traditional PEM, chains), plaintext_auth, protocol versions and
# suites, session resumption, a stalled handshake, outbound STARTTLS for the relay.
# Every test here is skipped when `mailsrv -V` says "TLS: no". Certificates are made in the
# test's temporary folder with `mailsrv gencert` or the openssl command.

import ssl  # noqa: E402
import warnings  # noqa: E402

TLS_HOST = "test.local"  # Server's default [server] hostname: gencert's CN and subjectAltName
GOOD_SUITE = re.compile(r"^ECDHE-(RSA|ECDSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$")
_TLS_BUILT = []


def tls_built():
    """True when the binary under test has TLS (`mailsrv -V` prints "TLS: <library>", not "TLS: no")."""
    if not _TLS_BUILT:
        try:
            r = run_cli(["-V"])
            m = re.search(r"(?i)\bTLS:\s*([\w.-]+)", r.stdout + r.stderr)
            _TLS_BUILT.append(bool(m) and m.group(1).lower() != "no")
        except (OSError, subprocess.SubprocessError) as e:  # run them: failures say more than a silent skip
            print("# `%s -V` failed (%s): running the TLS tests anyway" % (BIN, e), flush=True)
            _TLS_BUILT.append(True)
    return _TLS_BUILT[0]


def tls_params(sock):
    v, suite = sock.version(), (sock.cipher() or ("?",))[0]
    return v, suite


def check_tls12(sock, what, key=None):
    """The session is TLS 1.2 with an ECDHE + AEAD suite (ECDSA or RSA as key says)."""
    v, suite = tls_params(sock)
    check(v == "TLSv1.2", "%s: negotiated %s (%s), expected TLSv1.2" % (what, v, suite))
    check(GOOD_SUITE.match(suite), "%s: suite %s is not ECDHE with AES-GCM or ChaCha20-Poly1305" % (what, suite))
    if key:
        check(suite.startswith("ECDHE-%s-" % key), "%s: suite %s with a %s key" % (what, suite, key))
    return v, suite


def openssl(*args, input=None, ok=True):
    if not shutil.which("openssl"):
        raise TestFailure("the openssl command is not installed")
    r = subprocess.run(["openssl"] + list(args), input=input, capture_output=True, text=True, timeout=secs(60))
    if ok:
        check(r.returncode == 0, "openssl %s: exit %d %s" % (" ".join(args), r.returncode, short(r.stderr, 300)))
    return r


KEY_PEM = {"rsa-pkcs8": "-----BEGIN PRIVATE KEY-----", "rsa-trad": "-----BEGIN RSA PRIVATE KEY-----",
           "ec-pkcs8": "-----BEGIN PRIVATE KEY-----", "ec-trad": "-----BEGIN EC PRIVATE KEY-----",
           "ec-trad-params": "-----BEGIN EC PARAMETERS-----"}


def make_key(path, kind):
    """A private key made the usual openssl ways; kind is a KEY_PEM key."""
    if kind.startswith("rsa"):
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path)
    elif kind == "ec-pkcs8":
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    elif kind == "ec-trad":
        openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", path)
    elif kind == "ec-trad-params":  # the plain `ecparam -genkey`: an EC PARAMETERS block, then the key
        openssl("ecparam", "-genkey", "-name", "prime256v1", "-out", path)
    if kind == "rsa-trad":
        openssl("rsa", "-in", path, "-out", path + ".trad", "-traditional")
        os.replace(path + ".trad", path)
    check(read(path).decode().startswith(KEY_PEM[kind]), "openssl made %s: %s" % (kind, short(read(path)[:60])))
    return path


def make_cert(folder, kind, host=TLS_HOST, cert="cert.pem", key="key.pem"):
    """A self-signed certificate for host (CN and subjectAltName) made by the openssl command:
    rsa-pkcs8 with `openssl req -x509 -newkey rsa:2048`, the others from a key made first."""
    c, k = os.path.join(folder, cert), os.path.join(folder, key)
    subj = ["-days", "30", "-subj", "/CN=" + host, "-addext", "subjectAltName=DNS:" + host]
    if kind == "rsa-pkcs8":
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", k, "-out", c, *subj)
        check(read(k).decode().startswith(KEY_PEM[kind]), "openssl req made %s" % short(read(k)[:60]))
    else:
        make_key(k, kind)
        openssl("req", "-x509", "-new", "-key", k, "-out", c, *subj)
    return c, k


def make_chain(folder, host=TLS_HOST):
    """root CA -> intermediate CA -> RSA leaf for host. Writes root.pem and cert.pem (leaf, then the
    intermediate) and key.pem (the leaf's, PKCS#8). Returns the root's path."""
    def f(n):
        return os.path.join(folder, n)
    make_key(f("root.key"), "ec-pkcs8")
    openssl("req", "-x509", "-new", "-key", f("root.key"), "-out", f("root.pem"), "-days", "30", "-subj", "/CN=mailsrv test root",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(f("ca.ext"), "w") as fh:
        fh.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                 "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    with open(f("leaf.ext"), "w") as fh:
        fh.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                 "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s\nauthorityKeyIdentifier=keyid\n" % host)
    make_key(f("inter.key"), "ec-pkcs8")
    openssl("req", "-new", "-key", f("inter.key"), "-out", f("inter.csr"), "-subj", "/CN=mailsrv test intermediate")
    openssl("x509", "-req", "-in", f("inter.csr"), "-CA", f("root.pem"), "-CAkey", f("root.key"), "-set_serial", "2",
            "-days", "30", "-extfile", f("ca.ext"), "-out", f("inter.pem"))
    make_key(f("key.pem"), "rsa-pkcs8")
    openssl("req", "-new", "-key", f("key.pem"), "-out", f("leaf.csr"), "-subj", "/CN=" + host)
    openssl("x509", "-req", "-in", f("leaf.csr"), "-CA", f("inter.pem"), "-CAkey", f("inter.key"), "-set_serial", "3",
            "-days", "30", "-extfile", f("leaf.ext"), "-out", f("leaf.pem"))
    with open(f("cert.pem"), "w") as fh:
        fh.write(read(f("leaf.pem")).decode() + read(f("inter.pem")).decode())
    return f("root.pem")


def pem_to_der(path):
    return ssl.PEM_cert_to_DER_cert(read(path).decode())


def gencert(srv, cwd=None):
    r = run_cli(["-c", srv.ini, "gencert"], cwd=cwd or srv.ctx.dir)
    check(r.returncode == 0, "gencert: exit %d, stdout %s, stderr %s" % (r.returncode, short(r.stdout), short(r.stderr, 300)))
    return r


def tls_server(ctx, cert="gencert", implicit=True, server=None, **kw):
    """A Server with tls_cert = cert.pem and tls_key = key.pem beside its INI, made by `mailsrv gencert`
    (cert="gencert"), by openssl (cert = a KEY_PEM kind), or none (cert=None); implicit: smtps and pop3s
    listeners. srv.cert is the certificate's path (None without one)."""
    keys = {}
    if cert:
        keys.update({"tls_cert": "cert.pem", "tls_key": "key.pem"})
    if implicit:
        keys.update({"smtps": "auto", "pop3s": "auto"})
    keys.update(server or {})
    srv = ctx.server(server=keys, **kw)
    if cert == "gencert":
        gencert(srv)
    elif cert == "chain":
        srv.root = make_chain(srv.dir, srv.keys["hostname"])
    elif cert:
        make_cert(srv.dir, cert, srv.keys["hostname"])
    srv.cert = os.path.join(srv.dir, "cert.pem") if cert else None
    return srv


def ehlo_words(text):
    """EHLO keywords (upper case) from a multi-line 250 reply."""
    return [l[4:].split()[0].upper() for l in text.split("\n")[1:] if len(l) > 4 and l[4:].split()]


def ehlo_auth(text):
    """The AUTH mechanisms EHLO lists ([] when it lists no AUTH)."""
    for l in text.split("\n")[1:]:
        w = l[4:].upper().split()
        if w and w[0] == "AUTH":
            return w[1:]
    return []


def pop_capa(p):
    p.ok("CAPA")
    return [l.decode("latin-1").upper() for l in p.multi()]


def capa_words(caps):
    return [c.split()[0] for c in caps if c.split()]


def capa_sasl(caps):
    for c in caps:
        w = c.split()
        if w and w[0] == "SASL":
            return w[1:]
    return []


def handshake(conn, context, what, **kw):
    try:
        return conn.starttls(context, **kw)
    except (ssl.SSLError, OSError) as e:
        raise TestFailure("%s: TLS handshake failed: %s" % (what, e))


def smtps_conn(srv, context=None, ehlo="client.test", hostname=None, session=None):
    """An implicit-TLS SMTP session on srv's smtps port: handshake, greeting, EHLO."""
    c = srv.ctx.track(Smtp(srv.smtps_port))
    handshake(c, context or tls_client_ctx(), "smtps", server_hostname=hostname, session=session)
    code, text = c.reply()
    check(code == 220, "smtps greeting: %s" % short(text))
    if ehlo:
        c.ehlo_text = c.expect("EHLO " + ehlo, 250)
    return c


def starttls_conn(srv, port=None, context=None, hostname=None, session=None):
    """A plain SMTP session upgraded with STARTTLS, then EHLO again."""
    c = srv.smtp(port=port)
    c.expect("STARTTLS", 220, "2.0.0")
    handshake(c, context or tls_client_ctx(), "STARTTLS", server_hostname=hostname, session=session)
    c.ehlo_text = c.expect("EHLO client.test", 250)
    return c


def pop3s_conn(srv, context=None, hostname=None, session=None):
    p = srv.ctx.track(Pop(srv.pop3s_port))
    handshake(p, context or tls_client_ctx(), "pop3s", server_hostname=hostname, session=session)
    p.greet()
    return p


def stls_conn(srv, context=None, hostname=None, session=None):
    p = srv.pop()
    r = p.ok("STLS")
    soft(r.startswith(b"+OK Begin TLS"), "STLS reply %s, expected '+OK Begin TLS negotiation'" % short(r))
    handshake(p, context or tls_client_ctx(), "STLS", server_hostname=hostname, session=session)
    return p


def tls_log_ok(srv, n=1, timeout=5):
    """Waits for n `tls ok TLSv1.2 ECDHE_...` connection log lines."""
    pat = r"tls ok TLSv1\.2 ECDHE[-_]"
    try:
        wait_for(lambda: len(re.findall(pat, srv.log_text())) >= n, timeout, "%d log line(s) with `tls ok TLSv1.2 ECDHE-...`" % n)
    except TestFailure as e:
        soft(False, "%s; log: %s" % (e, short(srv.log_text()[-600:], 600)))


def big_body(token, n=1200):
    """~75 KB in lines of varying length (several TLS records each way), some dot-stuffed."""
    return "".join("%s%05d %s %s\r\n" % ("." if i % 7 == 0 else "", i, token, "y" * (i % 83)) for i in range(n))


# ---- certificates and configuration


@test(tls=True, limit=60)
def tls_gencert(ctx):
    srv = ctx.server(server={"hostname": "mail.gen.test"})  # no tls_cert/tls_key: cert.pem and key.pem beside the INI
    cert, key = os.path.join(srv.dir, "cert.pem"), os.path.join(srv.dir, "key.pem")
    r = gencert(srv, cwd=ctx.dir)
    out = r.stdout + r.stderr
    check(os.path.exists(cert) and os.path.exists(key), "gencert without tls_cert/tls_key did not write cert.pem and key.pem "
          "beside the INI; folder has %s; output %s" % (sorted(os.listdir(srv.dir)), short(out, 300)))
    check(not os.path.exists(os.path.join(ctx.dir, "cert.pem")), "gencert wrote cert.pem in the working folder")
    check("cert.pem" in out and "key.pem" in out, "gencert output does not say what it wrote: %s" % short(out, 300))
    check(read(cert).decode().startswith("-----BEGIN CERTIFICATE-----"), "cert.pem: %s" % short(read(cert)[:80]))
    check(b"PRIVATE KEY-----" in read(key), "key.pem: %s" % short(read(key)[:40]))
    text = openssl("x509", "-in", cert, "-noout", "-text").stdout
    check("prime256v1" in text or "P-256" in text, "the certificate's key is not ECDSA P-256: %s" % short(text, 800))
    check(re.search(r"Subject:.*CN\s*=\s*mail\.gen\.test", text), "the subject's CN is not mail.gen.test: %s" % short(text, 800))
    check("DNS:mail.gen.test" in text, "no subjectAltName DNS:mail.gen.test: %s" % short(text, 1200))
    pub_c = openssl("x509", "-in", cert, "-noout", "-pubkey").stdout
    pub_k = openssl("pkey", "-in", key, "-pubout").stdout
    check(pub_c == pub_k, "key.pem is not the certificate's key")
    v = openssl("verify", "-CAfile", cert, cert, ok=False)
    check(v.returncode == 0, "openssl verify of the self-signed certificate (signature, dates): %s %s" % (v.stdout, v.stderr))
    if os.name == "posix" and not WINDOWS:
        soft(os.stat(key).st_mode & 0o077 == 0, "key.pem is readable by others: mode %o" % (os.stat(key).st_mode & 0o777))
    # refuses to overwrite, leaving both files as they were
    before = (read(cert), read(key))
    r = run_cli(["-c", srv.ini, "gencert"], cwd=ctx.dir)
    check(r.returncode == 1, "gencert with both files present: exit %d (expected 1), output %s" % (r.returncode, short(r.stdout + r.stderr)))
    check((read(cert), read(key)) == before, "gencert overwrote existing files")
    soft("cert.pem" in r.stdout + r.stderr, "gencert's refusal does not name the file: %s" % short(r.stdout + r.stderr))
    os.remove(cert)
    r = run_cli(["-c", srv.ini, "gencert"], cwd=ctx.dir)
    check(r.returncode == 1, "gencert with key.pem present (cert.pem absent): exit %d, expected 1" % r.returncode)
    check(read(key) == before[1], "gencert overwrote an existing key.pem")
    # explicit paths (relative to the INI), then a server using them, started from another folder
    srv2 = ctx.server(server={"hostname": "mail.gen.test", "tls_cert": "my-cert.pem", "tls_key": "my-key.pem",
                              "smtps": "auto", "pop3s": "auto"})
    r = check_cli(srv2)
    check(r.returncode == 1, "check with tls_cert/tls_key files that do not exist yet: exit %d" % r.returncode)
    gencert(srv2)
    c2 = os.path.join(srv2.dir, "my-cert.pem")
    check(os.path.exists(c2) and os.path.exists(os.path.join(srv2.dir, "my-key.pem")),
          "gencert did not write tls_cert/tls_key: %s" % sorted(os.listdir(srv2.dir)))
    r = check_cli(srv2)
    check(r.returncode == 0, "check with gencert's files: exit %d %s" % (r.returncode, short(r.stderr, 300)))
    srv2.start(cwd=ctx.dir)
    c = smtps_conn(srv2, tls_client_ctx(cafile=c2), hostname="mail.gen.test")
    check_tls12(c.sock, "smtps with gencert's certificate", "ECDSA")
    check(c.sock.getpeercert(binary_form=True) == pem_to_der(c2), "the server sent another certificate")
    c.expect("QUIT", 221)
    p = stls_conn(srv2, tls_client_ctx(cafile=c2), hostname="mail.gen.test")
    check_tls12(p.sock, "STLS with gencert's certificate", "ECDSA")
    p.quit()


def expect_tls_error(srv, what, names):
    """`check` exits 1 naming one of names (file names) in its output."""
    srv.write_ini()
    r = check_cli(srv)
    out = r.stdout + r.stderr
    if soft(r.returncode == 1, "check with %s: exit %d (expected 1), output %s" % (what, r.returncode, short(out, 300))):
        soft(any(n in out for n in names), "check with %s does not name %s: %s" % (what, " or ".join(names), short(out, 300)))
    return r


@test(tls=True, limit=90)
def tls_check_errors(ctx):
    srv = tls_server(ctx, cert="ec-pkcs8")
    r = check_cli(srv)
    check(r.returncode == 0, "check with a good certificate: exit %d %s" % (r.returncode, short(r.stderr, 300)))
    d = srv.dir

    def put(name, data):
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(data)
    good_cert, good_key = read(os.path.join(d, "cert.pem")), read(os.path.join(d, "key.pem"))
    os.mkdir(os.path.join(d, "other"))
    make_cert(os.path.join(d, "other"), "ec-pkcs8")
    make_cert(os.path.join(d, "other"), "rsa-pkcs8", cert="rsa-cert.pem", key="rsa-key.pem")
    put("wrong-key.pem", read(os.path.join(d, "other", "key.pem")))
    put("rsa-key.pem", read(os.path.join(d, "other", "rsa-key.pem")))
    put("cut-cert.pem", good_cert[:len(good_cert) // 2])
    put("junk-cert.pem", b"this is not a certificate\n")
    put("bad-b64-cert.pem", b"-----BEGIN CERTIFICATE-----\nMIIB!!not*base64\n-----END CERTIFICATE-----\n")
    put("junk-key.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    cases = [("a truncated certificate", {"tls_cert": "cut-cert.pem"}, ["cut-cert.pem"]),
             ("a certificate file without PEM", {"tls_cert": "junk-cert.pem"}, ["junk-cert.pem"]),
             ("a certificate with bad base64", {"tls_cert": "bad-b64-cert.pem"}, ["bad-b64-cert.pem"]),
             ("a missing certificate file", {"tls_cert": "no-such-cert.pem"}, ["no-such-cert.pem"]),
             ("a missing key file", {"tls_key": "no-such-key.pem"}, ["no-such-key.pem"]),
             ("a broken key file", {"tls_key": "junk-key.pem"}, ["junk-key.pem"]),
             ("an EC key of another certificate", {"tls_key": "wrong-key.pem"}, ["wrong-key.pem", "cert.pem"]),
             ("an RSA key with an EC certificate", {"tls_key": "rsa-key.pem"}, ["rsa-key.pem", "cert.pem"])]
    for what, keys, names in cases:
        srv.keys.update({"tls_cert": "cert.pem", "tls_key": "key.pem"})
        srv.keys.update(keys)
        expect_tls_error(srv, what, names)
    listeners = {"smtps": srv.keys["smtps"], "pop3s": srv.keys["pop3s"]}
    for key in ("smtps", "pop3s"):
        srv.keys.update({"tls_cert": None, "tls_key": None, "smtps": None, "pop3s": None})
        srv.keys[key] = listeners[key]
        srv.write_ini()
        r = check_cli(srv)
        soft(r.returncode == 1, "check with %s but no tls_cert/tls_key: exit %d, output %s"
             % (key, r.returncode, short(r.stdout + r.stderr)))
    srv.keys.update(listeners)
    # and at start: exit status 1, the file named in the log
    for what, keys, name in (("a key of another certificate", {"tls_key": "wrong-key.pem"}, "wrong-key.pem"),
                             ("a truncated certificate", {"tls_cert": "cut-cert.pem"}, "cut-cert.pem")):
        srv.keys.update({"tls_cert": "cert.pem", "tls_key": "key.pem"})
        srv.keys.update(keys)
        srv.write_ini()
        srv.start(wait=False)
        try:
            rc = srv.proc.wait(timeout=secs(10))
        except subprocess.TimeoutExpired:
            raise TestFailure("server with %s is still running after 10s" % what)
        soft(rc == 1, "start with %s: exit status %s, expected 1" % (what, rc))
        soft(name in srv.log_text() or "cert.pem" in srv.log_text(),
             "start with %s: the log does not name %s: %s" % (what, name, short(srv.log_text()[-400:], 400)))
    srv.keys.update({"tls_cert": "cert.pem", "tls_key": "key.pem"})
    srv.write_ini()
    r = check_cli(srv)
    check(r.returncode == 0, "check with the good files again: exit %d %s" % (r.returncode, short(r.stderr, 300)))


def cert_kind(ctx, kind):
    srv = tls_server(ctx, cert=kind, server={"plaintext_auth": "no"})
    r = check_cli(srv)
    check(r.returncode == 0, "check with an openssl %s certificate: exit %d %s" % (kind, r.returncode, short(r.stderr, 300)))
    srv.start()
    alg = "RSA" if kind.startswith("rsa") else "ECDSA"
    verify = tls_client_ctx(cafile=srv.cert)
    c = smtps_conn(srv, verify, hostname=TLS_HOST)
    check_tls12(c.sock, "smtps with a %s key" % kind, alg)
    check(c.sock.getpeercert(binary_form=True) == pem_to_der(srv.cert), "the server sent another certificate")
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)
    t = tok()
    msg = make_msg(t, to="bob@example.test", sender="alice@example.test")
    code, text = c.send_mail("alice@example.test", ["bob@example.test"], msg)
    check(code == 250, "end of DATA over smtps: %s" % short(text))
    c.expect("QUIT", 221)
    c = starttls_conn(srv, port=srv.sub_port, context=verify, hostname=TLS_HOST)
    check_tls12(c.sock, "STARTTLS with a %s key" % kind, alg)
    c.expect("QUIT", 221)
    p = pop3s_conn(srv, verify, hostname=TLS_HOST)
    check_tls12(p.sock, "pop3s with a %s key" % kind, alg)
    p.login("bob@example.test", "Passw0rd2")
    check_message(p.retr(1), msg, sender="alice@example.test")
    p.quit()
    tls_log_ok(srv, 3)


for _kind in ("rsa-pkcs8", "rsa-trad", "ec-pkcs8", "ec-trad", "ec-trad-params"):
    TESTS.append(("tls_cert_" + _kind.replace("-", "_"), (lambda k: lambda ctx: cert_kind(ctx, k))(_kind), {}, 60))
    TLS_TESTS.add("tls_cert_" + _kind.replace("-", "_"))


@test(tls=True, limit=60)
def tls_cert_chain(ctx):
    """cert.pem = leaf + intermediate: a client trusting only the root verifies the chain the server sends."""
    srv = tls_server(ctx, cert="chain")
    r = check_cli(srv)
    check(r.returncode == 0, "check with a certificate chain: exit %d %s" % (r.returncode, short(r.stderr, 300)))
    srv.start()
    verify = tls_client_ctx(cafile=srv.root)
    c = smtps_conn(srv, verify, hostname=TLS_HOST)
    check_tls12(c.sock, "smtps with a chain", "RSA")
    c.expect("QUIT", 221)
    p = stls_conn(srv, verify, hostname=TLS_HOST)
    p.quit()


# ---- clients: smtplib, poplib, curl, openssl s_client


@test(tls=True, limit=60)
def tls_smtplib_starttls_auth_deliver(ctx):
    srv = tls_server(ctx, implicit=False, server={"plaintext_auth": "no"}).start()
    t = tok()
    msg = make_msg(t, to="bob@example.test", sender="alice@example.test", body=big_body(t))
    with smtplib.SMTP("127.0.0.1", srv.sub_port, local_hostname="client.test", timeout=secs(20)) as s:
        s.ehlo()
        check(s.has_extn("starttls"), "EHLO does not offer STARTTLS: %s" % s.esmtp_features)
        check(not s.has_extn("auth"), "EHLO offers AUTH in the clear with plaintext_auth = no: %s" % s.esmtp_features)
        s.starttls(context=tls_client_ctx())
        check_tls12(s.sock, "smtplib starttls")
        s.ehlo()
        check(not s.has_extn("starttls"), "EHLO inside TLS still offers STARTTLS: %s" % s.esmtp_features)
        check("PLAIN" in s.esmtp_features.get("auth", "").upper().split(), "EHLO inside TLS lacks AUTH PLAIN: %s" % s.esmtp_features)
        s.login("alice@example.test", "Passw0rd1")
        refused = s.sendmail("alice@example.test", ["bob@example.test"], msg)
        check(refused == {}, "refused %s" % refused)
    p = stls_conn(srv)
    p.login("bob@example.test", "Passw0rd2")
    check_message(p.retr(1), msg, sender="alice@example.test", what="~75 KB message sent and read over TLS")
    p.quit()
    tls_log_ok(srv, 2)


@test(tls=True, limit=60)
def tls_poplib_stls(ctx):
    srv = tls_server(ctx, implicit=False, server={"plaintext_auth": "no"}).start()
    t, msg = srv.deliver()
    pp = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=secs(10))
    try:
        caps = pp.capa()
        check("STLS" in caps, "CAPA lacks STLS: %s" % caps)
        check("USER" not in caps, "CAPA lists USER before TLS with plaintext_auth = no: %s" % caps)
        pp.stls(context=tls_client_ctx())
        check_tls12(pp.sock, "poplib stls")
        caps = pp.capa()
        check("STLS" not in caps, "CAPA inside TLS still lists STLS: %s" % caps)
        check("USER" in caps and "PLAIN" in [w.upper() for w in caps.get("SASL", [])], "CAPA inside TLS: %s" % caps)
        pp.user("alice@example.test")
        pp.pass_("Passw0rd1")
        check(pp.stat()[0] == 1, "STAT over STLS")
        resp, lines, octets = pp.retr(1)
        check_message(b"\r\n".join(lines) + b"\r\n", msg, what="poplib RETR over STLS")
        pp.quit()
    finally:
        pp.close()


@test(tls=True, limit=60)
def tls_implicit_smtplib_poplib(ctx):
    srv = tls_server(ctx, server={"plaintext_auth": "no"}).start()
    t = tok()
    msg = make_msg(t, to="bob@example.test", sender="alice@example.test")
    with smtplib.SMTP_SSL("127.0.0.1", srv.smtps_port, local_hostname="client.test", context=tls_client_ctx(),
                          timeout=secs(10)) as s:
        check_tls12(s.sock, "SMTP_SSL")
        s.ehlo()
        check(not s.has_extn("starttls"), "EHLO on smtps offers STARTTLS: %s" % s.esmtp_features)
        check(s.has_extn("auth"), "EHLO on smtps lacks AUTH: %s" % s.esmtp_features)
        code, text = s.mail("alice@example.test")
        check(code == 530, "MAIL before AUTH on smtps (like submission): %d %s" % (code, text))
        s.rset()
        s.login("alice@example.test", "Passw0rd1")
        check(s.sendmail("alice@example.test", ["bob@example.test"], msg) == {}, "refused")
    pp = poplib.POP3_SSL("127.0.0.1", srv.pop3s_port, context=tls_client_ctx(), timeout=secs(10))
    try:
        check_tls12(pp.sock, "POP3_SSL")
        caps = pp.capa()
        check("STLS" not in caps, "CAPA on pop3s lists STLS: %s" % caps)
        check("USER" in caps, "CAPA on pop3s lacks USER: %s" % caps)
        pp.user("bob@example.test")
        pp.pass_("Passw0rd2")
        resp, lines, octets = pp.retr(1)
        check_message(b"\r\n".join(lines) + b"\r\n", msg, sender="alice@example.test", what="poplib RETR over pop3s")
        pp.quit()
    finally:
        pp.close()
    tls_log_ok(srv, 2)


@test(tls=True, limit=90)
def tls_curl(ctx):
    srv = tls_server(ctx, cert="ec-pkcs8", server={"plaintext_auth": "no"}).start()
    t1, t2 = tok(), tok()
    m1 = make_msg(t1, to="bob@example.test", sender="alice@example.test", body="curl starttls\r\n.dot\r\nend\r\n")
    m2 = make_msg(t2, to="carol@example.test", sender="alice@example.test", body=big_body(t2, 300))
    f1, f2 = os.path.join(ctx.dir, "m1.eml"), os.path.join(ctx.dir, "m2.eml")
    for f, m in ((f1, m1), (f2, m2)):
        with open(f, "wb") as fh:
            fh.write(m)
    res = "--resolve"
    r = curl("--ssl-reqd", "-k", "smtp://127.0.0.1:%d/client.test" % srv.sub_port, "-u", "alice@example.test:Passw0rd1",
             "--mail-from", "alice@example.test", "--mail-rcpt", "bob@example.test", "--upload-file", f1)
    check(r.returncode == 0, "curl --ssl-reqd smtp (STARTTLS, -k): exit %d %s" % (r.returncode, short(r.stderr)))
    r = curl("--cacert", srv.cert, res, "%s:%d:127.0.0.1" % (TLS_HOST, srv.smtps_port),
             "smtps://%s:%d/client.test" % (TLS_HOST, srv.smtps_port), "-u", "alice@example.test:Passw0rd1",
             "--mail-from", "alice@example.test", "--mail-rcpt", "carol@example.test", "--upload-file", f2)
    check(r.returncode == 0, "curl smtps --cacert: exit %d %s" % (r.returncode, short(r.stderr)))
    r = curl("--ssl-reqd", "-k", "pop3://127.0.0.1:%d/" % srv.pop3_port, "-u", "bob@example.test:Passw0rd2")
    check(r.returncode == 0, "curl --ssl-reqd pop3 LIST: exit %d %s" % (r.returncode, short(r.stderr)))
    check(re.match(rb"^1 \d+\r?\n$", r.stdout), "curl pop3 LIST over STLS: %s" % short(r.stdout))
    r = curl("--ssl-reqd", "-k", "pop3://127.0.0.1:%d/1" % srv.pop3_port, "-u", "bob@example.test:Passw0rd2")
    check(r.returncode == 0, "curl --ssl-reqd pop3 RETR: exit %d %s" % (r.returncode, short(r.stderr)))
    check_message(r.stdout, m1, sender="alice@example.test", what="curl RETR over STLS")
    r = curl("--cacert", srv.cert, res, "%s:%d:127.0.0.1" % (TLS_HOST, srv.pop3s_port),
             "pop3s://%s:%d/1" % (TLS_HOST, srv.pop3s_port), "-u", "carol@example.test:Passw0rd3")
    check(r.returncode == 0, "curl pop3s --cacert RETR: exit %d %s" % (r.returncode, short(r.stderr)))
    check_message(r.stdout, m2, sender="alice@example.test", what="curl RETR over pop3s")
    r = curl("--cacert", srv.cert, res, "%s:%d:127.0.0.1" % (TLS_HOST, srv.pop3s_port),
             "pop3s://%s:%d/" % (TLS_HOST, srv.pop3s_port), "-u", "carol@example.test:Passw0rd3")
    check(r.returncode == 0 and re.match(rb"^1 \d+\r?\n$", r.stdout), "curl pop3s LIST: %s %s" % (short(r.stdout), short(r.stderr)))
    # without TLS, plaintext_auth = no leaves curl nothing to log in with
    r = curl("pop3://127.0.0.1:%d/" % srv.pop3_port, "-u", "bob@example.test:Passw0rd2")
    check(r.returncode != 0, "curl pop3 without TLS logged in with plaintext_auth = no: %s" % short(r.stdout))


def s_client(port, proto, script, cafile):
    args = ["s_client", "-connect", "127.0.0.1:%d" % port, "-starttls", proto, "-crlf", "-ign_eof",
            "-servername", TLS_HOST, "-CAfile", cafile, "-verify_return_error", "-verify_hostname", TLS_HOST]
    if not shutil.which("openssl"):
        raise TestFailure("the openssl command is not installed")
    try:
        r = subprocess.run(["openssl"] + args, input=script, capture_output=True, text=True, timeout=secs(30))
    except subprocess.TimeoutExpired as e:
        raise TestFailure("openssl s_client -starttls %s still running after 30s: %s" % (proto, short(e.stdout, 400)))
    out = r.stdout + r.stderr
    m = re.search(r"New, (TLSv[\d.]+), Cipher is (\S+)", out)
    check(m, "openssl s_client -starttls %s: no session (exit %d): %s" % (proto, r.returncode, short(out, 600)))
    check(m.group(1) == "TLSv1.2", "s_client -starttls %s negotiated %s" % (proto, m.group(1)))
    check(GOOD_SUITE.match(m.group(2)), "s_client -starttls %s: suite %s" % (proto, m.group(2)))
    check(re.search(r"Verify return code: 0 \(ok\)", out), "s_client -starttls %s: certificate not verified: %s"
          % (proto, short(out, 600)))
    return r.stdout.split("---\n")[-1] if "---\n" in r.stdout else r.stdout  # what came after the session summary


@test(tls=True, limit=90)
def tls_openssl_s_client(ctx):
    srv = tls_server(ctx, cert="rsa-trad", implicit=False, server={"plaintext_auth": "no"}).start()
    t, msg = srv.deliver("bob@example.test")
    out = s_client(srv.sub_port, "smtp", "EHLO client.test\nAUTH PLAIN %s\nMAIL FROM:<alice@example.test>\n"
                   "RCPT TO:<bob@example.test>\nRSET\nQUIT\n" % plain("alice@example.test", "Passw0rd1"), srv.cert)
    lines = out.replace("\r", "").split("\n")
    ehlo = [l for l in lines if l.startswith("250-") or l.startswith("250 ")]
    check(ehlo, "no EHLO reply inside TLS: %s" % short(out, 500))
    check(not any("STARTTLS" in l.upper() for l in lines), "EHLO inside TLS lists STARTTLS: %s" % short(out, 500))
    check(any(l[4:].upper().startswith("AUTH") for l in ehlo), "EHLO inside TLS lacks AUTH: %s" % short(out, 500))
    check(any(l.startswith("235 ") for l in lines), "AUTH PLAIN over s_client STARTTLS: %s" % short(out, 500))
    check(any(l.startswith("221 ") for l in lines), "no 221 for QUIT: %s" % short(out, 500))
    out = s_client(srv.pop3_port, "pop3", "CAPA\nUSER bob@example.test\nPASS Passw0rd2\nSTAT\nQUIT\n", srv.cert)
    lines = out.replace("\r", "").split("\n")
    check("STLS" not in lines, "CAPA inside TLS lists STLS: %s" % short(out, 500))
    check("USER" in lines, "CAPA inside TLS lacks USER: %s" % short(out, 500))
    check(any(re.match(r"^\+OK 1 \d+", l) for l in lines), "STAT over s_client STLS: %s" % short(out, 500))


# ---- protocol rules


@test(tls=True)
def tls_smtp_starttls_rules(ctx):
    srv = tls_server(ctx).start()
    c = srv.smtp(ehlo=None)
    code, text = c.cmd("EHLO client.test")
    check(code == 250 and "STARTTLS" in ehlo_words(text), "EHLO with a certificate lacks STARTTLS: %s" % short(text))
    c.expect("STARTTLS now", 501)
    c.expect("STARTTLS", 220, "2.0.0")
    handshake(c, tls_client_ctx(), "STARTTLS")
    check_tls12(c.sock, "STARTTLS")
    c.expect("MAIL FROM:<%s>" % SENDER, 503)  # the session starts over: EHLO first
    text = c.expect("EHLO client.test", 250)
    check("STARTTLS" not in ehlo_words(text), "EHLO inside TLS lists STARTTLS: %s" % short(text))
    c.expect("STARTTLS", 503)
    t = tok()
    msg = make_msg(t)
    code, text = c.send_mail(SENDER, ["alice@example.test"], msg)
    check(code == 250, "delivery inside TLS: %s" % short(text))
    c.expect("QUIT", 221)
    check(stored_tokens(srv, "alice@example.test") == [t], "alice has %s" % stored_tokens(srv, "alice@example.test"))
    # transaction state from before STARTTLS is gone
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = c.cmd("STARTTLS")  # may be refused mid-transaction, but must not keep the transaction
    if code == 220:
        handshake(c, tls_client_ctx(), "STARTTLS during a transaction")
        c.expect("EHLO client.test", 250)
        c.expect("DATA", 503)
    else:
        check(code == 503, "STARTTLS during a transaction: %s, expected 220 or 503" % short(text))
    c.expect("QUIT", 221)
    # implicit TLS never offers STARTTLS
    c = smtps_conn(srv)
    check("STARTTLS" not in ehlo_words(c.ehlo_text), "EHLO on smtps lists STARTTLS: %s" % short(c.ehlo_text))
    c.expect("STARTTLS", 503)
    c.expect("NOOP", 250)
    # no certificate: not offered, 454 4.7.0
    plain_srv = ctx.server().start()
    c = plain_srv.smtp(ehlo=None)
    code, text = c.cmd("EHLO client.test")
    check("STARTTLS" not in ehlo_words(text), "EHLO without a certificate lists STARTTLS: %s" % short(text))
    c.expect("STARTTLS", 454, "4.7.0")
    c.expect("NOOP", 250)


@test(tls=True)
def tls_pop3_stls_rules(ctx):
    srv = tls_server(ctx).start()
    srv.deliver()
    p = srv.pop()
    caps = pop_capa(p)
    check("STLS" in capa_words(caps), "CAPA with a certificate lacks STLS: %s" % caps)
    p.ok("STLS")
    handshake(p, tls_client_ctx(), "STLS")
    check_tls12(p.sock, "STLS")
    caps = pop_capa(p)
    check("STLS" not in capa_words(caps), "CAPA inside TLS lists STLS: %s" % caps)
    p.err("STLS")
    p.login("alice@example.test", "Passw0rd1")
    check(p.stat()[0] == 1, "STAT inside TLS")
    p.quit()
    p = srv.pop("alice@example.test")  # TRANSACTION state
    p.err("STLS")
    check(p.stat()[0] == 1, "STAT after a refused STLS")
    p.quit()
    p = pop3s_conn(srv)
    caps = pop_capa(p)
    check("STLS" not in capa_words(caps), "CAPA on pop3s lists STLS: %s" % caps)
    p.err("STLS")
    p.login("alice@example.test", "Passw0rd1")
    p.quit()
    plain_srv = ctx.server().start()
    p = plain_srv.pop()
    caps = pop_capa(p)
    check("STLS" not in capa_words(caps), "CAPA without a certificate lists STLS: %s" % caps)
    p.err("STLS")
    p.login("alice@example.test", "Passw0rd1")
    p.quit()


@test(tls=True, limit=45)
def tls_plaintext_auth_no(ctx):
    srv = tls_server(ctx, server={"plaintext_auth": "no"}).start()
    srv.deliver("bob@example.test")
    for port in (srv.sub_port, srv.smtp_port):
        c = srv.smtp(port=port, ehlo=None)
        code, text = c.cmd("EHLO client.test")
        check("STARTTLS" in ehlo_words(text), "EHLO lacks STARTTLS: %s" % short(text))
        check(not ehlo_auth(text), "EHLO lists AUTH before TLS with plaintext_auth = no: %s" % short(text))
        c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 538, "5.7.11")
        c.expect("AUTH LOGIN", 538, "5.7.11")
        if port == srv.sub_port:
            c.expect("MAIL FROM:<alice@example.test>", 530)
        c.expect("STARTTLS", 220)
        handshake(c, tls_client_ctx(), "STARTTLS")
        text = c.expect("EHLO client.test", 250)
        check("PLAIN" in ehlo_auth(text), "EHLO inside TLS lacks AUTH PLAIN: %s" % short(text))
        c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235, "2.7.0")
        t = tok()
        code, text = c.send_mail("alice@example.test", ["bob@example.test"], make_msg(t, sender="alice@example.test"))
        check(code == 250, "submission after STARTTLS + AUTH: %s" % short(text))
        c.expect("QUIT", 221)
    c = smtps_conn(srv)
    check("PLAIN" in ehlo_auth(c.ehlo_text), "EHLO on smtps lacks AUTH PLAIN: %s" % short(c.ehlo_text))
    c.expect("AUTH LOGIN", 334)
    c.expect(b64("alice@example.test"), 334)
    c.expect(b64("Passw0rd1"), 235)
    c.expect("QUIT", 221)
    # POP3
    p = srv.pop()
    caps = pop_capa(p)
    check("STLS" in capa_words(caps), "CAPA lacks STLS: %s" % caps)
    check("USER" not in capa_words(caps), "CAPA lists USER before TLS with plaintext_auth = no: %s" % caps)
    check("PLAIN" not in capa_sasl(caps), "CAPA lists SASL PLAIN before TLS with plaintext_auth = no: %s" % caps)
    r = p.cmd("USER bob@example.test")
    if r.startswith(b"+OK"):
        r = p.cmd("PASS Passw0rd2")
    check(r.startswith(b"-ERR [AUTH]"), "USER/PASS before TLS with plaintext_auth = no: %s, expected -ERR [AUTH] ..." % short(r))
    p = srv.pop()
    r = p.cmd("AUTH PLAIN " + plain("bob@example.test", "Passw0rd2"))
    check(r.startswith(b"-ERR [AUTH]"), "AUTH PLAIN before TLS with plaintext_auth = no: %s, expected -ERR [AUTH] ..." % short(r))
    p = stls_conn(srv)
    caps = pop_capa(p)
    check("USER" in capa_words(caps) and "PLAIN" in capa_sasl(caps), "CAPA inside TLS: %s" % caps)
    p.login("bob@example.test", "Passw0rd2")
    check(p.stat()[0] == 3, "bob's STAT inside TLS (3 messages expected)")
    p.quit()
    p = stls_conn(srv)
    p.ok("AUTH PLAIN " + plain("bob@example.test", "Passw0rd2"))
    p.quit()
    p = pop3s_conn(srv)
    p.login("bob@example.test", "Passw0rd2")
    p.quit()


@test(tls=True)
def tls_starttls_injection_smtp(ctx):
    """CVE-2011-0411 class: commands sent in the clear after STARTTLS, in the same packet, are discarded."""
    srv = tls_server(ctx, implicit=False).start()
    c = srv.smtp()
    c.send("STARTTLS\r\nRSET\r\n")
    code, text = c.reply()
    check(code == 220, "STARTTLS (with RSET after it in the same packet): %s" % short(text))
    try:
        c.starttls(tls_client_ctx())
    except ssl.SSLError as e:
        raise TestFailure("handshake after `STARTTLS\\r\\nRSET\\r\\n` in one packet failed (%s): did the server answer "
                          "RSET in the clear?" % e)
    c.send("EHLO client.test\r\n")
    code, text = c.reply()
    check(code == 250 and "\n" in text and TLS_HOST in text.split("\n")[0],
          "first reply inside TLS is %s, expected the EHLO reply: the RSET sent in the clear was executed" % short(text))
    c.send("QUIT\r\n")
    rest = c.read_eof()
    check(rest.startswith(b"221") and rest.count(b"\r\n") == 1, "after EHLO, QUIT got %s" % short(rest))


@test(tls=True)
def tls_stls_injection_pop3(ctx):
    srv = tls_server(ctx, implicit=False).start()
    srv.deliver()
    p = srv.pop()
    p.send("STLS\r\nUSER alice@example.test\r\n")
    r = p.line()
    check(r.startswith(b"+OK"), "STLS (with USER after it in the same packet): %s" % short(r))
    try:
        p.starttls(tls_client_ctx())
    except ssl.SSLError as e:
        raise TestFailure("handshake after `STLS\\r\\nUSER ...\\r\\n` in one packet failed (%s): did the server answer "
                          "USER in the clear?" % e)
    r = p.cmd("PASS Passw0rd1")
    check(r.startswith(b"-ERR"), "PASS inside TLS got %s: the USER sent in the clear before the handshake was kept" % short(r))
    p.send("QUIT\r\n")
    rest = p.read_eof()
    check(rest.startswith(b"+OK") and rest.count(b"\r\n") == 1, "QUIT got %s" % short(rest))


# ---- versions, suites, resumption, stalls


def client_hello(context):
    """The first flight this client context sends (its ClientHello record)."""
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(i, o)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return o.read()


def offers_only(context, top):
    """True if this client really sends a ClientHello whose highest version is top (0x0301/0x0302):
    a local OpenSSL may refuse to even try TLS 1.0/1.1."""
    try:
        d = client_hello(context)
    except ssl.SSLError:
        return False
    return len(d) > 11 and d[0] == 0x16 and d[5] == 1 and d[9:11] == bytes([3, top & 0xff])


def tls_refused(port, context, what, pop_stls=False):
    """A handshake that must fail; returns the failure text."""
    c = Pop(port)
    try:
        if pop_stls:
            c.greet()
            c.ok("STLS")
        try:
            c.starttls(context)
        except (ssl.SSLError, OSError) as e:
            return str(e)
        v, suite = tls_params(c.sock)
    finally:
        c.close()
    raise TestFailure("%s: the handshake succeeded with %s %s" % (what, v, suite))


@test(tls=True, limit=45)
def tls_old_versions_refused(ctx):
    srv = tls_server(ctx).start()
    tried = []
    for name, v, top in (("TLS 1.0", ssl.TLSVersion.TLSv1, 0x0301), ("TLS 1.1", ssl.TLSVersion.TLSv1_1, 0x0302)):
        old = tls_client_ctx(minv=ssl.TLSVersion.TLSv1, maxv=v, ciphers="ALL:@SECLEVEL=0")
        if not offers_only(old, top):
            continue
        tried.append(name)
        tls_refused(srv.smtps_port, old, "smtps with a client offering at most %s" % name)
        tls_refused(srv.pop3_port, old, "STLS with a client offering at most %s" % name, pop_stls=True)
    if not tried:
        raise Skip("the local OpenSSL does not offer TLS 1.0/1.1 even when asked to")
    c = smtps_conn(srv)  # the server still serves TLS 1.2 clients
    check_tls12(c.sock, "smtps after refused old clients")
    c.expect("QUIT", 221)
    soft(re.search(r"(?i)tls.*(fail|error|alert|refus|version|protocol)", srv.log_text()),
         "no handshake failure (with a reason) in the log: %s" % short(srv.log_text()[-500:], 500))


@test(tls=True, limit=60)
def tls_suites(ctx):
    ec = tls_server(ctx).start()
    rsa = tls_server(ctx, cert="rsa-pkcs8").start()
    for srv, alg in ((ec, "ECDSA"), (rsa, "RSA")):
        c = smtps_conn(srv)  # a client offering TLS 1.3 and 1.2, default suites
        check_tls12(c.sock, "default client, %s key" % alg, alg)
        c.expect("QUIT", 221)
        for suite in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305"):
            full = "ECDHE-%s-%s" % (alg, suite)
            try:
                c = smtps_conn(srv, tls_client_ctx(maxv=ssl.TLSVersion.TLSv1_2, ciphers=full))
            except TestFailure as e:
                soft(False, "client offering only %s: %s" % (full, e))
                continue
            soft(tls_params(c.sock) == ("TLSv1.2", full), "offering only %s negotiated %s" % (full, tls_params(c.sock)))
            c.expect("QUIT", 221)
        weak = ["ECDHE-%s-AES128-SHA256" % alg, "ECDHE-%s-AES256-SHA" % alg, "ECDHE-%s-AES128-SHA" % alg]
        if alg == "RSA":
            weak += ["AES128-GCM-SHA256", "AES256-SHA256", "DHE-RSA-AES128-GCM-SHA256"]
        for suite in weak:
            try:
                cc = tls_client_ctx(maxv=ssl.TLSVersion.TLSv1_2, ciphers=suite + ":@SECLEVEL=0")
            except ssl.SSLError:
                continue  # this OpenSSL lacks the suite
            tls_refused(srv.smtps_port, cc, "a client offering only %s (%s key)" % (suite, alg))


@test(tls=True, limit=45)
def tls_session_resumption(ctx):
    srv = tls_server(ctx).start()
    cc = tls_client_ctx()

    def smtp_s(session):
        return smtps_conn(srv, cc, session=session)

    def smtp_st(session):
        return starttls_conn(srv, context=cc, session=session)

    def pop_s(session):
        return pop3s_conn(srv, cc, session=session)

    def pop_st(session):
        return stls_conn(srv, cc, session=session)
    for what, opener, bye in (("smtps", smtp_s, "smtp"), ("STARTTLS", smtp_st, "smtp"), ("pop3s", pop_s, "pop"),
                              ("STLS", pop_st, "pop")):
        c1 = opener(None)
        sess = c1.sock.session
        check(sess is not None and not c1.sock.session_reused, "%s: first connection: session %s, reused %s"
              % (what, sess, c1.sock.session_reused))
        for c in (c1, opener(sess)):
            if c is not c1:
                check(c.sock.session_reused, "%s: a second connection offering the first one's session did not resume it" % what)
                check_tls12(c.sock, "%s resumed" % what)
            if bye == "smtp":
                c.expect("NOOP", 250)
                c.expect("QUIT", 221)
            else:
                pop_capa(c)
                c.quit()
    c = smtps_conn(srv, tls_client_ctx())
    check(not c.sock.session_reused, "a fresh client context resumed a session")


@test(tls=True, limit=45)
def tls_stalled_handshake(ctx):
    srv = tls_server(ctx, server={"timeout": "3"}).start()
    hello = client_hello(tls_client_ctx())
    check(len(hello) > 60, "client hello of %d bytes" % len(hello))
    stalls = []
    s1 = ctx.track(Conn(srv.smtps_port))  # half a ClientHello on smtps, then nothing
    s1.send(hello[:len(hello) // 2])
    stalls.append(("half a ClientHello on smtps", s1))
    s2 = ctx.track(Smtp(srv.smtp_port))  # STARTTLS, then half a ClientHello
    s2.reply()
    s2.expect("EHLO client.test", 250)
    s2.expect("STARTTLS", 220)
    s2.send(hello[:40])
    stalls.append(("half a ClientHello after STARTTLS", s2))
    s3 = ctx.track(Conn(srv.pop3s_port))  # nothing at all on pop3s
    stalls.append(("nothing on pop3s", s3))
    t0 = time.monotonic()
    t, msg = srv.deliver()
    c = smtps_conn(srv)
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)
    c.expect("QUIT", 221)
    p = pop3s_conn(srv)
    p.login("alice@example.test", "Passw0rd1")
    check(p.stat()[0] == 1, "STAT over pop3s while others stall")
    p.quit()
    took = time.monotonic() - t0
    check(took < secs(2.5), "a delivery, an smtps login and a pop3s session took %.1fs while 3 clients stall "
          "in their handshakes (timeout = 3)" % took)
    for what, conn in stalls:  # the session timeout closes them (no 421 can be sent mid-handshake)
        try:
            conn.read_eof(timeout=max(0.5, 7 - (time.monotonic() - t0) / SLACK))
        except TestFailure:
            raise TestFailure("%s: still open %.1fs after it began (timeout = 3)" % (what, time.monotonic() - t0))
    c = smtps_conn(srv)
    c.expect("QUIT", 221)


@test(tls=True, limit=45)
def tls_pipelining_inside_tls(ctx):
    """Several commands in one TLS record: all answered (the server must not wait on the socket while
    decrypted input is still buffered)."""
    srv = tls_server(ctx).start()
    c = smtps_conn(srv)
    t1, t2 = tok(), tok()
    m1, m2 = make_msg(t1), make_msg(t2, to="bob@example.test")
    batch = ("AUTH PLAIN %s\r\n" % plain("alice@example.test", "Passw0rd1")).encode()
    batch += (b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\n"
              b"RCPT TO:<bob@example.test>\r\nDATA\r\n" + dot_stuff(m1) + b".\r\n"
              b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + dot_stuff(m2) + b".\r\n"
              b"NOOP\r\n")
    c.send(batch)
    want = [235, 250, 250, 550, 250, 354, 250, 250, 250, 354, 250, 250]
    got = [c.reply()[0] for _ in want]
    check(got == want, "pipelined replies over smtps %s, expected %s" % (got, want))
    c.expect("QUIT", 221)
    p = pop3s_conn(srv)
    p.send("USER bob@example.test\r\nPASS Passw0rd2\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nNOOP\r\n")
    for _ in range(3):
        check(p.line().startswith(b"+OK"), "pipelined USER/PASS/STAT over pop3s")
    got = []
    for _ in range(2):
        check(p.line().startswith(b"+OK"), "pipelined RETR over pop3s")
        got.append(token_of(b"\r\n".join(p.multi())))
    check(sorted(got) == sorted([t1, t2]), "pipelined RETRs gave %s" % got)
    check(p.line().startswith(b"+OK"), "pipelined NOOP over pop3s")
    p.quit()


# ---- outbound: the relay's STARTTLS to a second mailsrv (hostname mx.b.test, gencert's certificate)

B_DOMAINS = "[domain b.test]\nben = Passw0rd2\n\n[alias b.test]\npostmaster = ben\n"
A_DOMAINS = "[domain a.test]\nann = Passw0rd1\n\n[alias a.test]\npostmaster = ann\n"


def tls_hop(ctx, dns, cert=True):
    """The next hop: a mailsrv for b.test named mx.b.test (127.0.0.1 in the fake DNS), with gencert's
    certificate when cert is true (then it offers STARTTLS)."""
    keys = {"hostname": "mx.b.test"}
    if cert:
        keys.update({"tls_cert": "cert.pem", "tls_key": "key.pem"})
    b = ctx.server(server=keys, domains=B_DOMAINS)
    if cert:
        gencert(b)
    dns.a("mx.b.test", ["127.0.0.1"])
    dns.a("other.b.test", ["127.0.0.1"])
    return b.start()


def tls_relay(ctx, dns, b, tls=None, ca=None, via="mx.b.test"):
    """The sender: a mailsrv for a.test routing b.test to via:port-of-b; [relay] tls and ca_file (a copy
    of the file ca, as ca.pem beside the INI)."""
    relay = {"dns": dns.addr, "retry": "1", "timeout": "10"}
    if tls:
        relay["tls"] = tls
    if ca:
        relay["ca_file"] = "ca.pem"
    a = ctx.server(server={"hostname": "mx.a.test"}, domains=A_DOMAINS,
                   sections={"relay": relay, "route": {"b.test": "%s:%d" % (via, b.smtp_port)}})
    if ca:
        shutil.copyfile(ca, os.path.join(a.dir, "ca.pem"))
    return a.start()


def relay_one(a, rcpt="ben@b.test"):
    t = tok()
    msg = make_msg(t, to=rcpt, sender="ann@a.test")
    check(a.send([rcpt], msg, sender="ann@a.test") == {}, "%s refused" % rcpt)
    return t, msg


def relayed_line(a, via, port, tls_word, timeout=15):
    pat = r"(?m)relayed \S+ to=<ben@b\.test> via %s\[127\.0\.0\.1\]:%d: .* tls=%s\s*$" % (re.escape(via), port, tls_word)
    try:
        return wait_for(lambda: re.search(pat, a.log_text()), timeout, "a `relayed ... tls=%s` log line" % tls_word)
    except TestFailure as e:
        raise TestFailure("%s; sender's log: %s" % (e, short(a.log_text()[-700:], 700)))


def wait_ben(b, tokens, timeout=15):
    got = wait_for(lambda: b.fetch("ben@b.test", "Passw0rd2"), timeout, "the message in ben@b.test's mailbox", 0.2)
    check([g["token"] for g in got] == tokens, "ben has %s, expected %s" % ([g["token"] for g in got], tokens))
    return got


def check_deferred(a, b, what, tries=2, timeout=20):
    """The message stays queued (at least `tries` attempts) and never reaches the hop."""
    try:
        wait_for(lambda: re.search(r"pending, tries=([%d-9]|\d\d)" % tries, queue_cli(a)), timeout,
                 "%d deferred attempts in `queue`" % tries, 0.3)
    except TestFailure as e:
        raise TestFailure("%s: %s; queue: %s; ben has %d messages; sender's log: %s" % (
            what, e, short(queue_cli(a), 300), len(stored(b, "ben@b.test")), short(a.log_text()[-700:], 700)))
    check(stored(b, "ben@b.test") == [], "%s: delivered anyway (in the clear or without verification)" % what)
    soft(re.search(r"deferred \S+ to=<ben@b\.test>", a.log_text()), "%s: no `deferred ... to=<ben@b.test>` log line" % what)
    soft(not re.search(r"relayed \S+ to=<ben@b\.test>", a.log_text()), "%s: a `relayed` log line" % what)


@test(tls=True, limit=60)
def tls_relay_starttls_yes(ctx):
    dns = ctx.track(fakes.FakeDNS())
    b = tls_hop(ctx, dns)
    a = tls_relay(ctx, dns, b)  # [relay] tls defaults to yes: STARTTLS without verification
    t, msg = relay_one(a)
    relayed_line(a, "mx.b.test", b.smtp_port, "yes")
    got = wait_ben(b, [t])
    check_message(got[0]["data"], msg, sender="ann@a.test")
    tls_log_ok(b)


@test(tls=True, limit=60)
def tls_relay_verify_ok(ctx):
    dns = ctx.track(fakes.FakeDNS())
    b = tls_hop(ctx, dns)
    a = tls_relay(ctx, dns, b, tls="verify", ca=os.path.join(b.dir, "cert.pem"))
    t, msg = relay_one(a)
    relayed_line(a, "mx.b.test", b.smtp_port, "yes")
    wait_ben(b, [t])


@test(tls=True, limit=90)
def tls_relay_verify_refuses(ctx):
    """tls = verify: an untrusted certificate or one for another name defers the message; nothing in the clear."""
    dns = ctx.track(fakes.FakeDNS())
    b = tls_hop(ctx, dns)
    os.mkdir(os.path.join(ctx.dir, "stranger"))
    stranger, _ = make_cert(os.path.join(ctx.dir, "stranger"), "ec-pkcs8", host="mx.b.test")  # same name, other key
    a1 = tls_relay(ctx, dns, b, tls="verify", ca=stranger)
    a2 = tls_relay(ctx, dns, b, tls="verify", ca=os.path.join(b.dir, "cert.pem"), via="other.b.test")
    relay_one(a1)
    relay_one(a2)
    check_deferred(a1, b, "verify against another certificate's ca_file")
    check_deferred(a2, b, "verify with the hop's certificate reached as other.b.test")


@test(tls=True, limit=60)
def tls_relay_verify_no_starttls(ctx):
    """tls = verify and a hop that does not offer STARTTLS: deferred, not sent in the clear."""
    dns = ctx.track(fakes.FakeDNS())
    b = tls_hop(ctx, dns, cert=False)
    a = tls_relay(ctx, dns, b, tls="verify", ca=make_cert(ctx.dir, "ec-pkcs8", host="mx.b.test")[0])
    relay_one(a)
    check_deferred(a, b, "verify with a hop without STARTTLS")


@test(tls=True, limit=60)
def tls_relay_no(ctx):
    dns = ctx.track(fakes.FakeDNS())
    b = tls_hop(ctx, dns)  # offers STARTTLS
    a = tls_relay(ctx, dns, b, tls="no")
    t, msg = relay_one(a)
    relayed_line(a, "mx.b.test", b.smtp_port, "no")
    wait_ben(b, [t])
    check(not re.search(r"tls ok", b.log_text()), "tls = no, but the hop logged a TLS session: %s" % short(b.log_text()[-500:], 500))


@test(tls=True, limit=60)
def tls_relay_yes_without_starttls(ctx):
    """tls = yes and a hop without STARTTLS: delivered in the clear, logged tls=no."""
    dns = ctx.track(fakes.FakeDNS())
    b = tls_hop(ctx, dns, cert=False)
    a = tls_relay(ctx, dns, b, tls="yes")
    t, msg = relay_one(a)
    relayed_line(a, "mx.b.test", b.smtp_port, "no")
    wait_ben(b, [t])


# ---- outbound to a Python (OpenSSL) STARTTLS sink


def tls_sink(net, kind="ec-pkcs8", host="mx.remote.test", **attrs):
    """A fakes.SmtpSink on 127.0.0.2 offering STARTTLS with an openssl-made certificate for host;
    sink.cert is its path."""
    folder = tempfile.mkdtemp(prefix="sink", dir=net.ctx.dir)
    cert, key = make_cert(folder, kind, host=host)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    sink = net.sink(tls_context=sctx, **attrs)
    sink.cert = cert
    return sink


@test(tls=True, limit=60)
def tls_relay_starttls_last_ehlo_line(ctx):
    """The next hop lists STARTTLS on the last EHLO line ("250 STARTTLS"): the relay still uses it."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = tls_sink(net, starttls_last=True)
    srv = net.server().start()
    t, msg = relay_mail(srv, ["user@remote.test"])
    got = sink_wait(sink, 1, 10)
    check(got[0]["tls"] == "TLSv1.2", "EHLO's last line was `250 STARTTLS` and the relay sent the message %s"
          % ("in the clear" if not got[0]["tls"] else "over " + got[0]["tls"]))
    check_relayed(got[0]["data"], msg)


@test(tls=True, limit=60)
def tls_relay_pipelining_chunking(ctx):
    """Over STARTTLS to a hop offering PIPELINING and CHUNKING (in the EHLO after the handshake too):
    STARTTLS goes alone, then MAIL and the RCPTs in one group, then BDAT chunks; the message
    arrives whole over TLS."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = tls_sink(net, extensions=["SIZE 10240000", "PIPELINING", "CHUNKING"])
    srv = net.server(server={"max_message_size": "1M"}).start()
    body = "".join(".%05d %s\r\n" % (i, "t" * (i % 89)) for i in range(2500))  # ~130 KB
    t, msg = relay_mail(srv, ["user@remote.test", "u2@remote.test"], body=body)
    got = sink_wait(sink, 1, 15)
    check(got[0]["tls"] == "TLSv1.2", "sent %s" % ("in the clear" if not got[0]["tls"] else "over " + got[0]["tls"]))
    check_relayed(got[0]["data"], msg)
    chunks = got[0]["bdat"]
    check(chunks and len(chunks) >= 2 and sum(chunks) == len(got[0]["data"]), "BDAT chunks %s" % chunks)
    groups = sink.groups()
    check(["STARTTLS"] in groups and ["MAIL", "RCPT", "RCPT"] in groups, "command groups %s" % groups)


@test(tls=True, limit=60)
def tls_relay_verify_openssl_peer(ctx):
    """tls = verify against an OpenSSL server with an RSA certificate for the MX name."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = tls_sink(net, kind="rsa-pkcs8")
    srv = net.server(relay={"tls": "verify", "ca_file": "ca.pem"})
    shutil.copyfile(sink.cert, os.path.join(srv.dir, "ca.pem"))
    srv.start()
    t, msg = relay_mail(srv, ["user@remote.test"])
    got = sink_wait(sink, 1, 10)
    check(got[0]["tls"] == "TLSv1.2", "relayed %s" % ("in the clear" if not got[0]["tls"] else "over " + got[0]["tls"]))
    check_relayed(got[0]["data"], msg)
    wait_for(lambda: re.search(r"relayed \S+ to=<user@remote\.test> via mx\.remote\.test\[127\.0\.0\.2\]:%d: .* tls=yes\s*$"
                               % net.port, srv.log_text(), re.M), 5, "a `relayed ... tls=yes` log line")


@test(tls=True, limit=90)
def tls_relay_starttls_in_a_row(ctx):
    """40 relay sessions with STARTTLS one after the other, each delivered at once: a next hop that
    finishes its side of the handshake quickly must not leave the session waiting."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = tls_sink(net)
    srv = net.server(relay={"timeout": "20"}).start()
    for i in range(40):
        t0 = time.monotonic()
        relay_mail(srv, ["user@remote.test"])
        try:
            wait_for(lambda: len(sink.messages) > i, 4, "message %d at the sink" % (i + 1))
        except TestFailure as e:
            raise TestFailure("%s (sent %.1fs ago; the sink saw %s)" % (e, time.monotonic() - t0, short(sink.events[-3:], 300)))
    check(all(m["tls"] == "TLSv1.2" for m in sink.messages), "not all over TLS: %s" % [m["tls"] for m in sink.messages])
