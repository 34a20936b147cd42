"""Debian's own programs as the other side (section peers); the fsyncs behind a 250 to DATA,
seen under strace (section durability)."""
import email
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile

import fakes  # test/ is on sys.path: it is the entry point's folder

from .harness import (BOTH, Dnsmasq, Net, SENDER, TestFailure, accepts, check, free_ports, maildir_files, make_msg,
                      mbox_path, need_ipv6, need_native, need_program, need_root, secs, short, test, tok, token_of,
                      wait_for)
from .cli import read
from .relay import (bounces, check_7bit_text, check_dsn, check_leaves, check_relayed, mime_8bit,
                    mime_leaf_payloads, queue_cli, relay_mail, sink_wait, wait_queue_empty)
from .tls import make_cert
from .lists import LIST, confirm, list_req, local_confirmation, members


# (section: peers)
# Debian's own programs as the other side, where the suite had only its own models of them.


def dnsmasq_net(ctx, args, local=False, forward=()):
    """A Net whose resolver is dnsmasq answering from its own records (args); names under the
    domains in forward it asks the test's fake DNS for (net.fake)."""
    net = Net(ctx)
    net.fake = net.dns
    if net.resolver is not net.dns:
        net.resolver.close()  # (MAILSRV_TEST_RESOLVER=dnsmasq's own, forwarding everything)
    args = args + ["--server=/%s/%s#%d" % (d, net.fake.host, net.fake.port) for d in forward]
    net.dns = net.resolver = ctx.track(Dnsmasq(args, local))
    return net


@test()
def peers_dnsmasq_mx_ipv4_only(ctx):
    # Issue 18: dnsmasq answers REFUSED to AAAA for a name it has only an A record for. The A
    # lookup succeeded, so RFC 5321 5.1 says try those addresses; the first MX refuses the
    # connection, the second must receive the message.
    net = dnsmasq_net(ctx, ["--mx-host=far.test,mx1.far.test,10", "--mx-host=far.test,mx2.far.test,20",
                            "--host-record=mx1.far.test,127.0.0.4", "--host-record=mx2.far.test,127.0.0.2"])
    sink = net.sink()
    srv = net.server(relay={"retry": "1h"}).start()  # only delivery within the first attempt counts
    t, msg = relay_mail(srv, ["user@far.test"])
    got = sink_wait(sink, 1, 10, "messages at mx2.far.test")
    check(len(got) == 1 and token_of(got[0]["data"]) == t, "wrong message(s) at mx2: %d" % len(got))
    check_relayed(got[0]["data"], msg)
    wait_queue_empty(srv)


@test()
def peers_dnsmasq_mx_cname(ctx):
    # the MX names an alias (CNAME to the real host): dnsmasq answers A and AAAA with the CNAME chain
    net = dnsmasq_net(ctx, ["--mx-host=far.test,alias.far.test,10", "--cname=alias.far.test,real.far.test",
                            "--host-record=real.far.test,127.0.0.3"], local=True)
    sink = net.sink("127.0.0.3")
    srv = net.server(relay={"retry": "1h"}).start()
    t, msg = relay_mail(srv, ["user@far.test"])
    got = sink_wait(sink, 1, 10, "messages at the CNAME's target")
    check(len(got) == 1 and token_of(got[0]["data"]) == t, "wrong message(s) at the CNAME target: %d" % len(got))
    wait_queue_empty(srv)


@test()
def peers_dnsmasq_implicit_mx(ctx):
    # no MX record (dnsmasq with --local answers NODATA): the domain's own A record is the host
    net = dnsmasq_net(ctx, ["--host-record=plain.test,127.0.0.2"], local=True)
    sink = net.sink()
    srv = net.server(relay={"retry": "1h"}).start()
    t, msg = relay_mail(srv, ["user@plain.test"])
    got = sink_wait(sink, 1, 10, "messages at plain.test's A record")
    check(len(got) == 1 and token_of(got[0]["data"]) == t, "wrong message(s) at plain.test: %d" % len(got))
    wait_queue_empty(srv)


@test()
def peers_dnsmasq_mx_ipv6_only(ctx):
    # the MX host has only an AAAA record: dnsmasq answers REFUSED to its A query, and the AAAA
    # lookup's address is used (the mirror of peers_dnsmasq_mx_ipv4_only)
    need_ipv6()
    port = free_ports(1, "::1")[0]
    net = dnsmasq_net(ctx, ["--mx-host=six.test,mx.six.test,10", "--host-record=mx.six.test,::1"])
    sink = net.sink("::1", port)
    srv = net.server(relay={"retry": "1h", "port": port}).start()
    t, msg = relay_mail(srv, ["user@six.test"])
    got = sink_wait(sink, 1, 10, "messages at mx.six.test's IPv6 address")
    check(len(got) == 1 and token_of(got[0]["data"]) == t, "wrong message(s) at mx.six.test: %d" % len(got))
    wait_queue_empty(srv)


@test(limit=60)  # two lookups of 4 x 2 s time out first
def peers_dnsmasq_one_mx_unresolvable(ctx):
    # Issue 18 item 7: every lookup of the first MX host fails (dnsmasq forwards its name to the
    # fake DNS, which never answers it), the second resolves: the message goes to the second within
    # the first attempt instead of waiting for the first host's name to resolve again
    net = dnsmasq_net(ctx, ["--mx-host=far.test,mx1.far.test,10", "--mx-host=far.test,mx2.far.test,20",
                            "--host-record=mx2.far.test,127.0.0.2"], forward=["mx1.far.test"])
    net.fake.drop("mx1.far.test")
    sink = net.sink()
    srv = net.server(relay={"retry": "1h"}).start()
    t, msg = relay_mail(srv, ["user@far.test"])
    got = sink_wait(sink, 1, 30, "messages at mx2.far.test")
    check(len(got) == 1 and token_of(got[0]["data"]) == t, "wrong message(s) at mx2: %d" % len(got))
    check(net.fake.asked("mx1.far.test"), "dnsmasq never asked the fake DNS for mx1.far.test: the test proves nothing")
    wait_queue_empty(srv)


@test()
def peers_dnsmasq_nxdomain_and_null_mx(ctx):
    # dnsmasq's NXDOMAIN for an unknown name under --local, and a null MX (RFC 7505: "MX 0 .") each
    # bounce at once, with the status each deserves; a message to a good domain in the same
    # transaction is delivered
    net = dnsmasq_net(ctx, ["--mx-host=nomail.test,.,0", "--mx-host=good.test,mx.good.test,10",
                            "--host-record=mx.good.test,127.0.0.2"], local=True)
    sink = net.sink()
    srv = net.server(relay={"retry": "1h"}).start()
    t, msg = relay_mail(srv, ["user@nowhere.test", "user@nomail.test", "user@good.test"], sender="alice@example.test")
    got = sink_wait(sink, 1, 10, "the message at good.test")
    check(len(got) == 1 and token_of(got[0]["data"]) == t, "wrong message(s) at good.test: %d" % len(got))
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce in alice's mailbox")
    check_dsn(b[0], {"user@nowhere.test": "5.1.2", "user@nomail.test": "5.1.10"}, t)
    wait_queue_empty(srv)


class GarbageTLS:
    """Stands in for the sink's ssl.SSLContext: after `220 Ready to start TLS` it answers the
    ClientHello with bytes that are no TLS record, and the sink closes the connection."""

    def wrap_socket(self, conn, server_side=True):
        conn.recv(4096)  # the ClientHello
        conn.sendall(b"this is not a TLS record\r\n" * 4)
        raise OSError("garbage instead of a ServerHello")


def tls13_only():
    """An OpenSSL server context that refuses TLS 1.2 (BearSSL's highest): the handshake fails with an alert."""
    folder = tempfile.mkdtemp(prefix="tls13")
    cert, key = make_cert(folder, "ec-pkcs8", host="mx.remote.test")
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.load_cert_chain(cert, key)
    c.minimum_version = ssl.TLSVersion.TLSv1_3
    shutil.rmtree(folder)
    return c


@test(tls=True, limit=60)
def peers_tls_failed_handshake_plain_retry(ctx):
    # README (TLS, Relaying): with tls = yes a failed handshake is retried in plain text at the
    # same host. Two ways to fail: garbage instead of a ServerHello, and a TLS 1.3-only peer.
    for what, bad in (("garbage", GarbageTLS()), ("TLS 1.3 only", tls13_only())):
        net = Net(ctx)
        net.domain("remote.test")
        sink = net.sink(tls_context=bad)
        srv = net.server(relay={"retry": "1h"}).start()  # the retry must happen within this attempt
        t, msg = relay_mail(srv, ["user@remote.test"])
        got = sink_wait(sink, 1, 10, "messages at the sink (%s)" % what)
        wait_queue_empty(srv)
        check(len(sink.messages) == 1 and token_of(got[0]["data"]) == t and got[0]["tls"] is None,
              "%s: %d messages at the sink, tls %s" % (what, len(sink.messages), got[0]["tls"]))
        check_relayed(got[0]["data"], msg)
        check(sink.connections == 2, "%s: %d connections, expected the TLS one and the plain one" % (what, sink.connections))
        log = srv.log_text()
        check(re.search(r"TLS handshake with \S+ failed: .*; trying again without TLS", log), "%s: no `trying again without TLS` line" % what)
        check(re.search(r"relayed \S+ to=<user@remote\.test> .* tls=no\s*$", log, re.M), "%s: no `relayed ... tls=no` line" % what)
        srv.stop()


@test(tls=True, limit=60)
def peers_tls_failed_handshake_verify_defers(ctx):
    # README: `tls = verify` ... a hop that fails the check is deferred, never sent in the clear
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(tls_context=GarbageTLS())
    srv = net.server(relay={"tls": "verify", "ca_file": "ca.pem", "retry": "1"})
    make_cert(srv.dir, "ec-pkcs8", host="mx.remote.test")
    shutil.copyfile(os.path.join(srv.dir, "cert.pem"), os.path.join(srv.dir, "ca.pem"))
    srv.start()
    relay_mail(srv, ["user@remote.test"])
    wait_for(lambda: re.search(r"pending, tries=([2-9]|\d\d)", queue_cli(srv)), 20, "two deferred attempts", 0.3)
    check(sink.messages == [], "tls = verify and a failed handshake: %d messages sent in the clear" % len(sink.messages))
    check(re.search(r"deferred \S+ to=<user@remote\.test>: 4\.7\.5 TLS handshake", srv.log_text()),
          "no `deferred ... 4.7.5 TLS handshake` line: %s" % short(srv.log_text()[-500:], 500))



# The body as a next hop must read it: mailsrv un-stuffs only after CRLF; the "." after a bare LF
# stays a "." line; every line leaves with CRLF and a leading dot doubled, so all of them arrive as
# lines of the one message.
DOTS_BODY_READ = b"Hi\n.leading\n..two\n.\nbare\nlf\ncr\n.\nMAIL FROM:<evil@client.test>\nend\n"


def send_dots_and_bare_line_ends(srv, rcpt):
    """Sends, by raw SMTP, a message whose body holds lines that start with a dot, a "." line, a bare LF
    and a bare CR, one of them in the smuggling sequence LF . LF; returns its token."""
    c = srv.smtp()
    t = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % rcpt, 250)
    c.expect("DATA", 354)
    c.send(b"From: <sender@client.test>\r\nSubject: dots\r\nX-Test-Token: " + t.encode() + b"\r\n\r\n"
           b"Hi\r\n..leading\r\n...two\r\n..\r\nbare\nlf\rcr\n.\nMAIL FROM:<evil@client.test>\r\nend\r\n.\r\n")
    code, text = c.reply()
    check(code == 250, "end of data: %s" % short(text))
    c.expect("QUIT", 221)
    return t


@test(limit=60)
def peers_postfix_smtp_sink_dot_stuffing(ctx):
    # Postfix's smtp-sink as the next hop: it un-stuffs dots and ends DATA at a "." line as Postfix
    # does, and its dump (-d) shows the message as it read it. The body holds lines that start with
    # a dot, a "." line, and a bare LF and a bare CR (README, SMTP: a line end inside the message),
    # one of them in the smuggling sequence LF . LF: all must arrive as lines of the one message.
    exe = need_program("smtp-sink", "postfix")
    net = Net(ctx)
    net.domain("remote.test")
    dump = tempfile.mkdtemp(prefix="ms-smtp-sink-")  # not in ctx.dir: nobody may not enter that
    os.chmod(dump, 0o777)  # smtp-sink writes as nobody when started as root
    cmd = [exe] + (["-u", "nobody"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []) + \
        ["-d", os.path.join(dump, "m."), "127.0.0.2:%d" % net.port, "10"]
    errf = open(os.path.join(ctx.dir, "smtp-sink.err"), "wb+")
    sink = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)

    class Stop:
        def close(self):
            if sink.poll() is None:
                sink.terminate()
                sink.wait(10)
            errf.close()
            shutil.rmtree(dump, ignore_errors=True)
    ctx.track(Stop())

    def listening():
        check(sink.poll() is None, "smtp-sink exited: %s" % short(read(errf.name)))
        return accepts("127.0.0.2", net.port)
    wait_for(listening, 10, "smtp-sink listening", 0.1)
    srv = net.server(relay={"retry": "1h"}).start()
    t = send_dots_and_bare_line_ends(srv, "user@remote.test")
    wait_queue_empty(srv, 15)
    files = os.listdir(dump)
    check(len(files) == 1, "smtp-sink dumped %d transactions: %s" % (len(files), files))
    got = read(os.path.join(dump, files[0]))
    head, _, body = got.partition(b"\n\n")
    check(b"\nX-Mail-Args: <%s>" % SENDER.encode() in head, "MAIL FROM at smtp-sink: %s" % short(head, 400))
    check(b"\nX-Rcpt-Args: <user@remote.test>\n" in head, "RCPT TO at smtp-sink: %s" % short(head, 400))
    check(("X-Test-Token: " + t).encode() in head, "the token header did not arrive: %s" % short(head, 400))
    check(body == DOTS_BODY_READ + b"\n", "smtp-sink read the body as %r" % body)  # (its dump ends with a blank line)


class PostfixInstance:
    """A private, strict Postfix (Debian's postfix) of the test's own: its own config, queue and log
    in a folder under /tmp (the postfix user must reach it), smtpd on 127.0.0.1:port refusing bare
    LF (smtpd_forbid_bare_newline = reject, for every client) and messages over size_limit (SIZE in
    EHLO), delivering b.test to the Maildir mail/ben/. Started and stopped with postfix -c, which
    acts on this instance only. Root: Postfix's master runs as root."""
    DAEMONS = ("pickup unix n - n 60 1 pickup", "cleanup unix n - n - 0 cleanup", "qmgr unix n - n 300 1 qmgr",
               "rewrite unix - - n - - trivial-rewrite", "bounce unix - - n - 0 bounce", "defer unix - - n - 0 bounce",
               "trace unix - - n - 0 bounce", "verify unix - - n - 1 verify", "proxymap unix - - n - - proxymap",
               "smtp unix - - n - - smtp", "showq unix n - n - - showq", "error unix - - n - - error",
               "retry unix - - n - - error", "discard unix - - n - - discard", "virtual unix - n n - - virtual",
               "anvil unix - - n - 1 anvil", "scache unix - - n - 1 scache", "postlog unix-dgram n - n - 1 postlogd")

    def __init__(self, ctx, size_limit, main=(), master=()):
        # main, master: further lines for this instance's main.cf and master.cf (a test's own transports)
        import pwd
        need_root()
        self.postfix = need_program("postfix", "postfix")
        pw = pwd.getpwnam("postfix")
        self.dir = tempfile.mkdtemp(prefix="ms-postfix-")
        os.chmod(self.dir, 0o755)
        self.etc, self.mail, self.log = (os.path.join(self.dir, n) for n in ("etc", "mail", "maillog"))
        for d in ("etc", "spool", "data", "mail"):
            os.mkdir(os.path.join(self.dir, d))
        for d in ("data", "mail"):
            os.chown(os.path.join(self.dir, d), pw.pw_uid, pw.pw_gid)
        self.port = free_ports(1)[0]
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write("\n".join([
                "compatibility_level = 3.6", "queue_directory = %s/spool" % self.dir, "data_directory = %s/data" % self.dir,
                "maillog_file = %s" % self.log, "maillog_file_prefixes = %s" % self.dir,
                "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4", "myhostname = mx.b.test", "mydestination =",
                "mynetworks = 127.0.0.0/8", "smtpd_recipient_restrictions = permit_mynetworks, reject",
                "smtpd_forbid_bare_newline = reject", "smtpd_forbid_bare_newline_exclusions =",
                "message_size_limit = %d" % size_limit, "virtual_mailbox_domains = b.test",
                "virtual_mailbox_base = %s" % self.mail, "virtual_mailbox_maps = static:ben/",
                "virtual_uid_maps = static:%d" % pw.pw_uid, "virtual_gid_maps = static:%d" % pw.pw_gid] + list(main) + [""]))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("127.0.0.1:%d inet n - n - - smtpd\n" % self.port + "".join(d + "\n" for d in self.DAEMONS + tuple(master)))
        self.started = False
        ctx.track(self)
        r = subprocess.run([self.postfix, "-c", self.etc, "start"], capture_output=True, timeout=secs(30))
        self.started = r.returncode == 0
        check(self.started, "postfix start: exit %d %s; log %s" % (r.returncode, short(r.stderr), short(self.log_text(), 400)))
        wait_for(lambda: accepts("127.0.0.1", self.port), 20, "Postfix's smtpd listening", 0.1)

    def log_text(self):
        try:
            return read(self.log).decode(errors="replace")
        except OSError:
            return ""

    def messages(self):
        d = os.path.join(self.mail, "ben", "new")
        return [read(os.path.join(d, n)) for n in sorted(os.listdir(d))] if os.path.isdir(d) else []

    def close(self):
        if self.started:
            subprocess.run([self.postfix, "-c", self.etc, "stop"], capture_output=True, timeout=secs(30))
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


@test(limit=90, unix_only=True)
def peers_postfix_smtpd_strict(ctx):
    """Issue 12.3: a strict Postfix smtpd as the next hop (bare LF refused with 550 for every client,
    SIZE 200000). A message the client sent with bare LF and CR, leading dots and a "." line after a
    bare LF arrives whole, every line as Postfix reads it: what leaves mailsrv is CRLF-only and
    dot-stuffed. A 300 KB message is refused by Postfix at MAIL FROM ... SIZE= (RFC 1870) and comes back
    to its local sender as a bounce naming the size; Postfix keeps nothing of it."""
    pf = PostfixInstance(ctx, 200000)
    srv = ctx.server(server={"max_message_size": "1M"},
                     sections={"relay": {"retry": "1h", "timeout": "10"}, "route": {"b.test": "127.0.0.1:%d" % pf.port}}).start()
    t = send_dots_and_bare_line_ends(srv, "ben@b.test")
    wait_queue_empty(srv, 20)
    got = wait_for(pf.messages, 20, "the message in Postfix's Maildir")
    check(len(got) == 1, "Postfix stored %d messages" % len(got))
    head, _, body = got[0].partition(b"\n\n")
    check(("X-Test-Token: " + t).encode() in head, "the token header did not arrive: %s" % short(head, 400))
    check(body == DOTS_BODY_READ, "Postfix stored the body as %r" % body)
    check("bare <LF>" not in pf.log_text(), "Postfix saw a bare LF: %s" % short(pf.log_text()[-600:], 600))
    big = tok()
    msg = make_msg(big, to="ben@b.test", sender="alice@example.test", body=("%s 300 KB\r\n" % big) * 15000)
    check(srv.send(["ben@b.test"], msg, sender="alice@example.test") == {}, "the big message was refused by mailsrv")
    bounce = wait_for(lambda: bounces(srv, "alice@example.test"), 20, "the bounce of the 300 KB message")
    check(b"5.3.4" in bounce[0] and big.encode() in bounce[0], "the bounce does not name 5.3.4 and the message: %s"
          % short(bounce[0], 600))
    check(re.search(r"reject: MAIL from \S+: 552 5\.3\.4 Message size exceeds fixed limit", pf.log_text()),
          "Postfix did not refuse the size at MAIL FROM: %s" % short(pf.log_text()[-600:], 600))
    check(len(pf.messages()) == 1, "Postfix stored the 300 KB message")


@test(limit=120, unix_only=True)
def peers_postfix_8bitmime(ctx):
    """Issue 18.2-3 with Postfix's smtpd as the next hop (root). One offering 8BITMIME gets 8-bit
    text as it was sent, declared with BODY=8BITMIME (its debug log shows the MAIL command), and a
    100,000-octet line re-encoded: every line within 998 octets, decoding to the text sent. One not
    offering it (smtpd_discard_ehlo_keywords = 8bitmime) gets a multipart 8-bit message as 7-bit
    quoted-printable whose parts decode (Python's email package) to the parts sent; a message with an
    8-bit Subject is bounced to its sender with 5.6.3 and that Postfix keeps nothing of it."""
    pf = PostfixInstance(ctx, 2000000, main=["debug_peer_list = 127.0.0.1"])
    pf7 = PostfixInstance(ctx, 2000000, main=["virtual_mailbox_domains = c.test", "smtpd_discard_ehlo_keywords = 8bitmime"])
    srv = ctx.server(server={"max_message_size": "1M"},
                     sections={"relay": {"retry": "1h", "timeout": "10"},
                               "route": {"b.test": "127.0.0.1:%d" % pf.port, "c.test": "127.0.0.1:%d" % pf7.port}}).start()
    t1 = tok()
    m1, _ = mime_8bit(t1, "ben@b.test", long_line=False)
    check(srv.send(["ben@b.test"], m1) == {}, "refused")
    got = wait_for(pf.messages, 20, "the 8-bit message in Postfix's Maildir")
    check(m1.partition(b"\r\n\r\n")[2].replace(b"\r\n", b"\n") == got[0].partition(b"\n\n")[2],
          "the 8-bit body changed on the way: %s" % short(got[0][-300:], 300))
    check(re.search(r"< \S+\[127\.0\.0\.1\]: MAIL FROM:<%s> BODY=8BITMIME" % re.escape(SENDER), pf.log_text()),
          "MAIL FROM without BODY=8BITMIME: %s" % short(re.findall(r".*MAIL FROM.*", pf.log_text()), 400))
    t2 = tok()
    long = "".join("%05d," % i for i in range(100000 // 6))
    m2 = make_msg(t2, to="ben@b.test", body="one\r\n" + long + "\r\n.two\r\n")
    check(srv.send(["ben@b.test"], m2) == {}, "refused")
    got = wait_for(lambda: [g for g in pf.messages() if t2.encode() in g], 20, "the long-line message at Postfix")
    check_7bit_text(got[0], "the message with a 100,000-octet line")
    dec = email.message_from_bytes(got[0]).get_payload(decode=True).replace(b"\r\n", b"\n")
    check(dec == ("one\n" + long + "\n.two\n").encode(), "the long line decodes to %s" % short(dec, 200))
    t3 = tok()
    m3, parts = mime_8bit(t3, "ben@c.test")
    check(srv.send(["ben@c.test"], m3) == {}, "refused")
    got = wait_for(pf7.messages, 20, "the converted message at the Postfix without 8BITMIME")
    check_7bit_text(got[0], "the converted message")
    check_leaves(mime_leaf_payloads(got[0]), m3, parts, "the converted message at Postfix")
    check(("X-Test-Token: " + t3).encode() in got[0], "the header did not arrive")
    t4 = tok()
    m4, _ = mime_8bit(t4, "ben@c.test", sender="alice@example.test", subject="Gr\u00fc\u00dfe " + t4)
    check(srv.send(["ben@c.test"], m4, sender="alice@example.test") == {}, "refused")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 20, "the bounce of the 8-bit Subject")
    check_dsn(b[0], {"ben@c.test": "5.6.3"}, t4)
    check(len(pf7.messages()) == 1, "the Postfix without 8BITMIME stored %d messages" % len(pf7.messages()))
    wait_queue_empty(srv, 20)


def postfix_big_body(t):
    """A ~200 KB body of lines with dots and varied lengths (several 64 KB BDAT chunks); and the
    body as Postfix stores it (LF line ends)."""
    body = "".join(".%05d %s %s\r\n" % (i, t, "q" * (i % 131)) for i in range(2500))
    return body, body.replace("\r\n", "\n").encode()


def postfix_commands(pf):
    """The per-command counts of smtpd's disconnect lines (ehlo=1 mail=1 ... commands=N)."""
    return re.findall(r"disconnect from \S+ (.*)", pf.log_text())


@test(limit=90, unix_only=True)
def peers_postfix_chunking(ctx):
    """Postfix's smtpd offers PIPELINING and CHUNKING: mailsrv sends the text in BDAT chunks (RFC
    3030), and both messages arrive byte-exact: one with dots, a "." line, bare LF and CR, one of
    ~200 KB (four chunks). smtpd counts the BDAT commands and no DATA at disconnect."""
    pf = PostfixInstance(ctx, 10000000)
    srv = ctx.server(server={"max_message_size": "1M"},
                     sections={"relay": {"retry": "1h", "timeout": "10"}, "route": {"b.test": "127.0.0.1:%d" % pf.port}}).start()
    t = send_dots_and_bare_line_ends(srv, "ben@b.test")
    wait_for(lambda: len(pf.messages()) >= 1, 20, "the first message in Postfix's Maildir")
    big = tok()
    body, stored = postfix_big_body(big)
    check(srv.send(["ben@b.test"], make_msg(big, to="ben@b.test", body=body)) == {}, "the big message was refused")
    got = wait_for(lambda: pf.messages() if len(pf.messages()) >= 2 else None, 20, "both messages in Postfix's Maildir")
    wait_queue_empty(srv, 20)
    bodies = {token_of(m): m.partition(b"\n\n")[2] for m in got}
    check(bodies.get(t) == DOTS_BODY_READ, "Postfix stored the dots body as %r" % short(bodies.get(t), 300))
    check(bodies.get(big) == stored, "the 200 KB body differs (%d bytes stored, %d sent)"
          % (len(bodies.get(big) or b""), len(stored)))
    counts = " ".join(postfix_commands(pf))
    check(re.search(r"\bbdat=\d", counts) and not re.search(r"\bdata=", counts),
          "smtpd's command counts show no BDAT, or DATA: %s" % short(counts, 300))
    check(re.search(r"\bbdat=([5-9]|\d\d)", counts) or len(re.findall(r"\bbdat=", counts)) > 1,
          "too few BDAT commands for a 200 KB message: %s" % short(counts, 300))


@test(limit=90, unix_only=True)
def peers_postfix_no_chunking_no_pipelining(ctx):
    """Postfix's smtpd with CHUNKING and then also PIPELINING taken out of its EHLO
    (smtpd_discard_ehlo_keywords): mailsrv uses DATA and the message arrives byte-exact. (That no
    command goes ahead of its reply without PIPELINING is relay_pipelining_not_offered's: Postfix
    3.7's smtpd_forbid_unauth_pipelining did not notice a client made to pipeline regardless.)"""
    for discard in ("chunking", "chunking, pipelining"):
        pf = PostfixInstance(ctx, 10000000, main=["smtpd_discard_ehlo_keywords = " + discard])
        srv = ctx.server(server={"max_message_size": "1M"},
                         sections={"relay": {"retry": "1h", "timeout": "10"}, "route": {"b.test": "127.0.0.1:%d" % pf.port}}).start()
        big = tok()
        body, stored = postfix_big_body(big)
        check(srv.send(["ben@b.test"], make_msg(big, to="ben@b.test", body=body)) == {}, "refused")
        got = wait_for(pf.messages, 20, "the message in Postfix's Maildir (discarded: %s)" % discard)
        wait_queue_empty(srv, 20)
        check(got[0].partition(b"\n\n")[2] == stored, "the body differs (discarded: %s)" % discard)
        counts = " ".join(postfix_commands(pf))
        check(re.search(r"\bdata=1", counts) and "bdat=" not in counts,
              "smtpd's command counts (discarded: %s): %s" % (discard, short(counts, 300)))
        pf.close()
        srv.stop()

# end of section: peers


# ======================================================================================# durability: the fsyncs behind a 250 to DATA, seen in the server's system calls (issue 12: 1)
# (section: durability)
# A kill -9 test cannot see a missing fsync (the page cache outlives the process) and the fault
# tests only make fsync fail. These run the server under strace and check the order that makes a
# 250 a promise: the message's file fsynced after its last write, and each folder that got a new
# entry on the way to it (link, rename, create, mkdir) fsynced after that entry, before the 250.

STRACE_CALLS = ("?open,openat,?mkdir,mkdirat,?link,linkat,?rename,renameat,renameat2,write,pwrite64,writev,sendto,"
                "fsync,fdatasync,close,?accept,accept4,dup,?dup2,dup3")  # ?: a call this machine lacks (arm64: open)


def strace_start(srv):
    """Starts srv under strace; returns the trace file. strace -D runs as a detached grandchild: the
    server keeps its PID, signals and exit status, and a SIGKILL to it ends the trace too."""
    need_native("strace traces the server process")  # the emulator or valgrind would be traced; LSan refuses ptrace
    trace = os.path.join(srv.dir, "strace.out")
    srv.wrap = [need_program("strace", "strace"), "-D", "-f", "-tt", "-e", "trace=" + STRACE_CALLS, "-o", trace]
    srv.start()
    return trace


def strace_stop(srv, trace):
    """Stops srv; its trace once strace has written the end."""
    rc, killed = srv.stop()
    check(not killed and rc == 0, "SIGTERM: exit status %s%s" % (rc, " (had to SIGKILL)" if killed else ""))

    def ended():
        with open(trace) as f:
            text = f.read()
        return "+++ exited with" in text and text
    return wait_for(ended, 10, "the end of the trace")


STRACE_LINE = re.compile(r"^\d+ +[\d:.]+ (\w+)\((.*)\) += (-?\d+)")  # PID TIME call(args) = result
STRACE_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


class FsyncOrder:
    """The trace up to the nth 250 the server wrote to a client after a 354 (the answer to a final
    dot). Writes and fsyncs count per file, not per name (a link or rename names a file again):
    self.ino numbers the files."""

    def __init__(self, text, cwd, nth=1):
        self.ino, self.created, self.last = {}, {}, 0  # path -> inode; path -> line where its folder got the entry
        self.written, self.synced = {}, {}  # inode -> line of its last write, of its last fsync
        fds, after354, self.at = {}, set(), None  # fd -> inode or "socket"; sockets that sent a 354
        for n, line in enumerate(text.splitlines(), 1):
            m = STRACE_LINE.match(line)  # (a call split by another process's would be missed: a failure)
            if not m or int(m.group(3)) < 0:
                continue
            call, args, ret = m.group(1), m.group(2), int(m.group(3))
            paths = [os.path.normpath(os.path.join(cwd, s)) for s in STRACE_STR.findall(args)]
            fd = int(args.split(",")[0]) if args[:1].isdigit() else None
            if call in ("open", "openat"):
                if "O_CREAT" in args and paths[0] not in self.ino:
                    self.created[paths[0]] = n
                fds[ret] = self.inode(paths[0])
            elif call in ("mkdir", "mkdirat"):
                self.created[paths[0]] = n
                self.inode(paths[0], new=True)
            elif call in ("link", "linkat", "rename", "renameat", "renameat2"):
                self.ino[paths[1]] = self.inode(paths[0])
                self.created[paths[1]] = n
                if call.startswith("rename"):
                    del self.ino[paths[0]]
            elif call in ("accept", "accept4"):
                fds[ret] = "socket"
            elif call.startswith("dup"):
                fds[ret] = fds.get(fd)
            elif call == "close":
                fds.pop(fd, None)
                after354.discard(fd)
            elif call in ("fsync", "fdatasync"):
                self.synced[fds.get(fd)] = n
            elif fds.get(fd) == "socket":  # write, sendto, writev: a reply
                if fd in after354 and '"250 ' in args:
                    nth -= 1
                    if nth == 0:
                        self.at = n
                        return
                after354.discard(fd)
                if '"354 ' in args:
                    after354.add(fd)
            elif fd in fds:
                self.written[fds[fd]] = n

    def inode(self, path, new=False):
        """path's inode: a new one for a path not seen yet, or made again (mkdir)."""
        if new or path not in self.ino:
            self.last += 1
            self.ino[path] = self.last
        return self.ino[path]

    def problems(self, path):
        """What the trace says is not durable about path when the 250 was sent."""
        if self.at is None:
            return ["the trace has no 250 after a 354"]
        i = self.ino.get(path)
        if i is None or path not in self.created:
            return ["%s: never created in the trace" % path]
        out = []
        if i not in self.written:
            out.append("%s: the trace shows no write of its text" % path)
        elif self.synced.get(i, 0) < self.written[i]:
            out.append("%s: its last write (line %d) was not fsynced" % (path, self.written[i]))
        while path in self.created:  # the new entry, and the folders made for it
            folder = os.path.dirname(path)
            if self.synced.get(self.ino.get(folder, -1), 0) < self.created[path]:  # -1: not an fd's (None)
                out.append("folder %s: not fsynced after %s appeared in it (line %d)"
                           % (folder, os.path.basename(path), self.created[path]))
            path = folder
        return out


def check_durable(text, srv, paths, nths=(1,)):
    """paths were durable at the nth 250 to a final dot, for each n in nths."""
    bad = []
    for nth in nths:
        order = FsyncOrder(text, srv.dir, nth)
        found = list(dict.fromkeys(p for path in paths for p in order.problems(path)))  # folders shared by paths once
        if found:
            bad.append("the 250 #%d (trace line %s): %s" % (nth, order.at, "; ".join(found)))
    check(not bad, ("not durable before " + " | ".join(bad)).replace(srv.dir + "/", "").replace(srv.dir, "."))


@test(modes=BOTH, unix_only=True)
def durability_delivery_fsynced_before_250(ctx, storage):
    """(a) Maildir: the .tmp file fsynced, linked into new/, new/ fsynced (and the Maildir's folders
    made on the way); (b) mbox: the mbox fsynced after the append, its folder after creating it."""
    srv = ctx.server(storage=storage)
    trace = strace_start(srv)
    code, text = srv.smtp().send_mail(SENDER, ["alice@example.test"], make_msg(tok()))
    check(code == 250, "final dot: %s" % text)
    text = strace_stop(srv, trace)
    path = maildir_files(srv, "alice@example.test")[0] if storage == "maildir" else mbox_path(srv, "alice@example.test")
    check_durable(text, srv, [path])


@test(unix_only=True)
def durability_queue_entry_fsynced_before_250(ctx):
    """(c) A relayed message: QUEUE/ID.msg (linked from the fsynced .tmp file) and ID.env fsynced,
    and the queue folder fsynced after both appeared (and its parent after creating it)."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server()
    trace = strace_start(srv)
    code, text = srv.smtp().send_mail(SENDER, ["user@remote.test"], make_msg(tok(), to="user@remote.test"))
    check(code == 250 and "queued as " in text, "final dot: %s" % text)
    qid = text.split("queued as ")[1].strip()
    sink_wait(sink, 1, 10)  # the entry did its work
    text = strace_stop(srv, trace)
    check_durable(text, srv, [os.path.join(srv.queue, qid + ext) for ext in (".msg", ".env")])


@test(unix_only=True)
def durability_list_state_fsynced_before_250(ctx):
    """(d) The list state file (written to a temporary file, fsynced, renamed) and its folder
    fsynced after the rename, before the 250: for the subscribe request (the first one also makes
    SPOOL/DOMAIN/.lists/NAME) and for its confirmation."""
    srv = ctx.server(sections={"list " + LIST: {"owner": "alice@example.test", "post": "members"}})
    trace = strace_start(srv)
    check(list_req(srv, "carol@example.test", "subscribe") == {}, "subscribe request refused")
    check(confirm(srv, "carol@example.test", local_confirmation(srv, "carol@example.test")) == {}, "confirmation refused")
    check(members(srv) == ["carol@example.test"], "members: %s" % members(srv))
    text = strace_stop(srv, trace)
    state = os.path.join(srv.spool, "example.test", ".lists", "news", "state")
    check_durable(text, srv, [state], nths=(1, 2))

# end of section: durability
