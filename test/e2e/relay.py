"""Relay: outbound queue, MX lookup, routes, smarthost, retries, bounces, relay access control."""
import glob
import os
import re
import time

import fakes  # test/ is on sys.path: it is the entry point's folder

from .harness import (BOTH, DOMAINS, Net, PASSWORDS, SENDER, Smtp, TestFailure, check, check_message,
                      dot_stuff, free_ports, make_msg, need_ipv6, plain, run_cli, secs, short, soft,
                      stored_tokens, test, tok, token_of, wait_for)
from .cli import check_cli


# =============================================================================================
# relay: outbound queue, MX lookup, routes, smarthost, retries, bounces, relay access control.
# The rest of the internet is played by test/fakes.py: one FakeDNS and SMTP sinks on
# 127.0.0.2-3 sharing one port ([relay] port); nothing listens on 127.0.0.4 (connection refused).

import email  # noqa: E402

def queue_cli(srv):
    r = run_cli(["-c", srv.ini, "queue"])
    check(r.returncode == 0, "queue: exit %d, stderr %s" % (r.returncode, short(r.stderr)))
    return r.stdout


def queue_files(srv):
    return sorted(glob.glob(os.path.join(srv.queue, "*.env")) + glob.glob(os.path.join(srv.queue, "*.msg")))


def wait_queue_empty(srv, timeout=10):
    try:
        wait_for(lambda: "queue is empty" in queue_cli(srv) and not queue_files(srv), timeout, "an empty queue", 0.2)
    except TestFailure as e:
        raise TestFailure("%s; `queue` says %s; files %s" % (e, short(queue_cli(srv), 300), queue_files(srv)))


def relay_mail(srv, rcpts, sender=SENDER, **kw):
    """Submit one message from 127.0.0.1 (inside the default relay_networks); returns (token, message)."""
    t = tok()
    msg = make_msg(t, to=rcpts[0], sender=sender, **kw)
    refused = srv.send(rcpts, msg, sender=sender)
    check(refused == {}, "recipients refused: %s" % refused)
    return t, msg


def sink_wait(sink, n, timeout, what="messages at the sink"):
    try:
        wait_for(lambda: len(sink.messages) >= n, timeout, "%d %s" % (n, what))
    except TestFailure as e:
        raise TestFailure("%s (got %d; the sink saw %s)" % (e, len(sink.messages), short(sink.events, 400)))
    return list(sink.messages)


def check_relayed(got, sent, what="relayed message"):
    """got: data as the remote received it; sent: the message as submitted."""
    gh, _, gb = got.partition(b"\r\n\r\n")
    sh, _, sb = sent.partition(b"\r\n\r\n")
    check(gb == sb, "%s: body differs: sent %s, got %s" % (what, short(sb, 300), short(gb, 300)))
    for l in sh.split(b"\r\n"):
        check(l in gh.split(b"\r\n"), "%s: header line %s missing in %s" % (what, short(l), short(gh, 400)))
    soft(gh.startswith(b"Received: "), "%s: does not start with a Received: header: %s" % (what, short(gh, 200)))
    soft(b"\r\nReturn-Path:" not in b"\r\n" + gh, "%s: a relay added Return-Path: %s" % (what, short(gh, 200)))


def bounces(srv, addr):
    return [g["data"] for g in srv.fetch(addr) if b"multipart/report" in g["data"]]


def check_dsn(data, want, token, diag=None, stored=True):
    """data: an RFC 3464 bounce; want: {final recipient: Status prefix}; token: the bounced message's."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if stored:
        check(lines[0] == b"Return-Path: <>", "bounce: first line %s, expected Return-Path: <>" % short(lines[0]))
    m = email.message_from_bytes(data)
    check(re.search(r"(?i)mailer-daemon@test\.local", m.get("From", "")), "bounce From: %s" % m.get("From"))
    soft(m.get("Subject", "").strip() == "Undelivered Mail Returned to Sender", "bounce Subject: %s" % m.get("Subject"))
    check(m.get_content_type() == "multipart/report" and m.get_param("report-type") == "delivery-status",
          "bounce Content-Type: %s" % m.get("Content-Type"))
    ds = [p for p in m.walk() if p.get_content_type() == "message/delivery-status"]
    check(len(ds) == 1, "bounce has %d message/delivery-status parts" % len(ds))
    blocks = ds[0].get_payload()  # per-message fields, then one block per recipient
    check(isinstance(blocks, list) and len(blocks) >= 2, "delivery-status part without recipient fields: %s" % short(data, 600))
    got = {}
    for b in blocks[1:]:
        f = {k.lower(): re.sub(r"\s+", " ", v).strip() for k, v in b.items()}
        fr = re.match(r"(?i)rfc822\s*;\s*<?([^>\s]+)>?$", f.get("final-recipient", ""))
        check(fr, "Final-Recipient %s" % f.get("final-recipient"))
        got[fr.group(1).lower()] = f
    check(set(got) == set(want), "bounce for %s, expected %s" % (sorted(got), sorted(want)))
    for rcpt, status in want.items():
        f = got[rcpt]
        check(f.get("action", "").lower() == "failed", "%s: Action: %s" % (rcpt, f.get("action")))
        check(f.get("status", "").startswith(status), "%s: Status: %s, expected %s" % (rcpt, f.get("status"), status))
        if diag:
            dc = f.get("diagnostic-code", "")
            check(re.match(r"(?i)smtp\s*;", dc) and diag in dc, "%s: Diagnostic-Code: %s, expected smtp; ...%s"
                  % (rcpt, dc, diag))
    heads = [p for p in m.walk() if p.get_content_type() == "text/rfc822-headers"]
    check(heads, "bounce without a text/rfc822-headers part")
    hb = heads[0].get_payload(decode=True) or b""
    check(("X-Test-Token: " + token).encode() in hb, "rfc822-headers part lacks the original headers: %s" % short(hb, 300))
    return got


@test(modes=BOTH)
def relay_mx_delivery(ctx, storage):
    net = Net(ctx)
    net.dns.mx("remote.test", [(10, "mx1.remote.test")])
    net.dns.a("mx1.remote.test", ["127.0.0.2"])
    sink = net.sink()
    srv = net.server(storage=storage).start()
    t = tok()
    msg = make_msg(t, to="user@remote.test", body="Hi\r\n.leading dot\r\n..two\r\n.\r\nend\r\n")
    refused = srv.send(["User@Remote.Test", "alice@example.test"], msg)
    check(refused == {}, "refused %s" % refused)
    got = sink_wait(sink, 1, 10)
    check(len(got) == 1, "%d transactions at the MX" % len(got))
    m = got[0]
    check(m["mail_from"] == SENDER, "MAIL FROM:<%s>" % m["mail_from"])
    check([r.lower() for r in m["rcpts"]] == ["user@remote.test"], "RCPT %s" % m["rcpts"])
    check(m["helo"] == "test.local", "EHLO %s, expected the hostname test.local" % m["helo"])
    check_relayed(m["data"], msg)
    local = srv.fetch("alice@example.test")
    check([g["token"] for g in local] == [t], "alice has %s" % [g["token"] for g in local])
    check_message(local[0]["data"], msg)
    check(net.dns.asked("remote.test", "MX"), "no MX query for remote.test: %s" % net.dns.queries)
    wait_queue_empty(srv)
    log = srv.log_text()
    soft(re.search(r"queued \S+ from=<%s> to=<user@remote\.test>" % re.escape(SENDER), log, re.I), "no `queued` log line")
    soft(re.search(r"relayed \S+ to=<user@remote\.test> via \S+\[127\.0\.0\.2\]:%d" % net.port, log, re.I),
         "no `relayed ... via HOST[127.0.0.2]:%d` log line" % net.port)


@test()
def relay_mx_order_fallback(ctx):
    net = Net(ctx)
    net.dns.mx("remote.test", [(30, "mx3.remote.test"), (10, "mx1.remote.test"), (20, "mx2.remote.test"),
                               (5, "gone.remote.test")])  # NXDOMAIN
    net.dns.a("mx1.remote.test", ["127.0.0.4"])  # connection refused
    net.dns.a("mx2.remote.test", ["127.0.0.2"])
    net.dns.a("mx3.remote.test", ["127.0.0.3"])
    busy = net.sink("127.0.0.2", greeting="421 4.3.2 too busy")
    good = net.sink("127.0.0.3")
    srv = net.server(relay={"retry": "1h"}).start()  # so only falling back within one attempt delivers in time
    t, _ = relay_mail(srv, ["user@remote.test"])
    got = sink_wait(good, 1, 10, "messages at the pref 30 MX")
    check(token_of(got[0]["data"]) == t, "wrong message at the MX")
    check(busy.connections >= 1, "the pref 20 MX (421 greeting) was never tried before pref 30")
    check(not busy.messages, "message accepted by the 421 MX?")
    wait_queue_empty(srv)


@test()
def relay_no_mx_uses_a(ctx):
    net = Net(ctx)
    net.dns.a("remote.test", ["127.0.0.2"])  # no MX records: NODATA
    sink = net.sink()
    srv = net.server().start()
    t, msg = relay_mail(srv, ["user@remote.test"])
    got = sink_wait(sink, 1, 10)
    check_relayed(got[0]["data"], msg)
    check(net.dns.asked("remote.test", "MX"), "MX not asked first: %s" % net.dns.queries)
    wait_queue_empty(srv)


@test()
def relay_null_mx_bounce(ctx):
    net = Net(ctx)
    net.dns.null_mx("remote.test")
    net.dns.a("remote.test", ["127.0.0.2"])  # must not be used: a null MX means no mail
    sink = net.sink()
    srv = net.server().start()
    t, msg = relay_mail(srv, ["user@remote.test"], sender="alice@example.test")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce in alice's mailbox")
    check_dsn(b[0], {"user@remote.test": "5."}, t)
    wait_queue_empty(srv)
    check(len(bounces(srv, "alice@example.test")) == 1, "more than one bounce")
    check(sink.connections == 0, "connected to the address of a null-MX domain")


@test()
def relay_nxdomain_bounce(ctx):
    net = Net(ctx)
    net.dns.nxdomain("nowhere.test")
    srv = net.server().start()
    t, msg = relay_mail(srv, ["user@nowhere.test"], sender="alice@example.test")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce in alice's mailbox")
    check_dsn(b[0], {"user@nowhere.test": "5."}, t)
    wait_queue_empty(srv)


@test()
def relay_static_route(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    net.domain("named.test")
    mx = net.sink("127.0.0.2")
    port2 = fakes.free_port_on(["127.0.0.3"])
    routed = net.sink("127.0.0.3", port2, ehlo=False, greeting="220-gw.routes.test\n220 multi-line greeting")
    net.dns.a("gw.routes.test", ["127.0.0.3"])
    srv = net.server(route={"remote.test": "127.0.0.3:%d" % port2, "named.test": "gw.routes.test:%d" % port2}).start()
    t1, m1 = relay_mail(srv, ["a@remote.test"])
    t2, m2 = relay_mail(srv, ["b@named.test"])
    got = sink_wait(routed, 2, 10)
    by = {token_of(g["data"]): g for g in got}
    check(set(by) == {t1, t2}, "routed host got %s" % sorted(by))
    check(by[t1]["rcpts"] == ["a@remote.test"] and by[t2]["rcpts"] == ["b@named.test"], "recipients %s" % [g["rcpts"] for g in got])
    check(all(g["helo_verb"] == "HELO" for g in got), "no HELO after EHLO got 502")
    check(mx.connections == 0, "the MX was contacted although a route exists")
    wait_queue_empty(srv)


@test()
def relay_smarthost(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    net.domain("far.test")
    mx = net.sink("127.0.0.2")
    smart = net.sink("127.0.0.3")
    srv = net.server(relay={"smarthost": "127.0.0.3:%d" % net.port, "helo": "out.test.local"}).start()
    _, msg = relay_mail(srv, ["a@remote.test", "b@far.test"])
    wait_for(lambda: sorted(r for g in smart.messages for r in g["rcpts"]) == ["a@remote.test", "b@far.test"], 10,
             "both recipients at the smarthost (got %s)" % [g["rcpts"] for g in smart.messages])
    for g in smart.messages:
        check_relayed(g["data"], msg)
        check(g["helo"] == "out.test.local", "EHLO %s, expected [relay] helo" % g["helo"])
    check(mx.connections == 0, "an MX was contacted although a smarthost is set")
    wait_queue_empty(srv)


@test()
def relay_dns_tcp_fallback(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    net.dns.truncate("remote.test")
    sink = net.sink()
    srv = net.server().start()
    t, msg = relay_mail(srv, ["user@remote.test"])
    got = sink_wait(sink, 1, 10)
    check(token_of(got[0]["data"]) == t, "wrong message")
    check(net.dns.asked("remote.test", "MX", "udp"), "no UDP query first: %s" % net.dns.queries)
    check(net.dns.asked("remote.test", "MX", "tcp"), "no TCP retry after TC=1: %s" % net.dns.queries)


@test()
def relay_retry_4xx(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    sink.script("data", ["451 4.3.0 try later"] * 2)
    srv = net.server(relay={"retry": "1"}).start()
    t, msg = relay_mail(srv, ["user@remote.test"])
    got = sink_wait(sink, 1, 15, "messages after two 451s (retry = 1s, doubling)")
    check(token_of(got[0]["data"]) == t, "wrong message")
    check(sink.stage_count("data") == 3, "%d DATA attempts, expected 3" % sink.stage_count("data"))
    wait_queue_empty(srv)
    check(len(sink.messages) == 1, "delivered %d times" % len(sink.messages))
    soft(re.search(r"deferred \S+ to=<user@remote\.test>: .*451", srv.log_text()), "no `deferred ... 451` log line")


@test(modes=BOTH)
def relay_bounce_5xx_rcpt(ctx, storage):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_replies={"nobody@remote.test": "550 5.1.1 <nobody@remote.test>: no such user"})
    srv = net.server(storage=storage).start()
    t, msg = relay_mail(srv, ["nobody@remote.test"], sender="alice@example.test")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce in alice's mailbox")
    check_dsn(b[0], {"nobody@remote.test": "5.1.1"}, t, diag="550 5.1.1 <nobody@remote.test>: no such user")
    wait_queue_empty(srv)
    check(len(bounces(srv, "alice@example.test")) == 1, "more than one bounce")
    check(sink.messages == [], "DATA sent with no accepted recipient")
    soft(re.search(r"bounced \S+ to=<nobody@remote\.test>: .*550", srv.log_text()), "no `bounced ... 550` log line")


@test(limit=45)
def relay_bounce_expiry(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_reply="451 4.2.1 mailbox busy")
    srv = net.server(relay={"retry": "1", "expire": "6s"}).start()
    t, msg = relay_mail(srv, ["user@remote.test"], sender="alice@example.test")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 25, "a bounce after expire = 6s", 0.3)
    check_dsn(b[0], {"user@remote.test": "4.4.7"}, t)
    soft(b"expir" in b[0].lower(), "bounce does not mention expiry: %s" % short(b[0], 600))
    check(sink.stage_count("rcpt") >= 2, "only %d attempts before expiry" % sink.stage_count("rcpt"))
    wait_queue_empty(srv)


@test()
def relay_no_bounce_of_bounce(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_reply="550 5.1.1 no such user")
    srv = net.server().start()
    c = srv.smtp()
    code, text = c.send_mail("", ["nobody@remote.test"], make_msg(tok(), to="nobody@remote.test"))
    check(code == 250, "MAIL FROM:<> to a remote address: %s" % short(text))
    c.expect("QUIT", 221)
    wait_for(lambda: sink.stage_count("rcpt") >= 1, 10, "the RCPT at the remote")
    wait_queue_empty(srv)
    check(sink.stage_count("mail") == 1, "more MAIL commands at the remote: %s" % short(sink.events, 400))
    for a in ("alice@example.test", "bob@example.test"):
        check(srv.fetch(a) == [], "%s (postmaster, other) got mail" % a)


@test()
def relay_mixed_rcpts(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_replies={"bad@remote.test": "550-5.1.1 no such user\n550 5.1.1 (multi-line reply)",
                                  "later@remote.test": ["451 4.2.0 try later", "250 2.1.5 Ok"]})
    srv = net.server(relay={"retry": "1"}).start()
    rc = ["ok1@remote.test", "bad@remote.test", "later@remote.test", "ok2@remote.test"]
    t, msg = relay_mail(srv, rc, sender="alice@example.test")
    got = sink_wait(sink, 2, 15)
    check(sorted(got[0]["rcpts"]) == ["ok1@remote.test", "ok2@remote.test"], "first transaction to %s" % got[0]["rcpts"])
    check(got[1]["rcpts"] == ["later@remote.test"], "retry transaction to %s" % got[1]["rcpts"])
    for g in got:
        check_relayed(g["data"], msg)
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce for bad@remote.test")
    check_dsn(b[0], {"bad@remote.test": "5.1.1"}, t, diag="5.1.1")
    wait_queue_empty(srv)
    check(len(sink.messages) == 2 and len(bounces(srv, "alice@example.test")) == 1,
          "%d transactions, %d bounces" % (len(sink.messages), len(bounces(srv, "alice@example.test"))))


@test()
def relay_grouping(ctx):
    net = Net(ctx)
    for d in ("one.test", "two.test"):
        net.dns.mx(d, [(10, "mx.shared.test")])
    net.dns.a("mx.shared.test", ["127.0.0.2"])
    sink = net.sink()
    srv = net.server().start()
    relay_mail(srv, ["a@one.test", "b@two.test", "c@one.test"])
    sink_wait(sink, 2, 10)
    wait_queue_empty(srv)
    got = sorted(sorted(g["rcpts"]) for g in sink.messages)
    check(got == [["a@one.test", "c@one.test"], ["b@two.test"]], "transactions %s: expected one per domain" % got)


RELAY_TRICKS = ["user%remote.test@example.test", '"user@remote.test"@example.test', "@example.test:user@remote.test",
                "remote.test!user@example.test", "user%remote.test@other.test", '"user@remote.test"@other.test',
                "remote.test!user@other.test", "@other.test:user@remote.test", "user@[127.0.0.2]",
                "user@remote.test.", "user@remote.test@example.test"]


@test()
def relay_denied_outsider(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    net.dns.a("remote.test", ["127.0.0.2"])
    sink = net.sink()
    srv = net.server(server={"relay_networks": "192.0.2.0/24"}).start()  # 127.0.0.1 is outside
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<user@remote.test>", 550, "5.7.1")
    for a in RELAY_TRICKS:
        c.expect5("RCPT TO:<%s>" % a)
    for a in ("alice@example.test", "alice@EXAMPLE.TEST.", "Bob@Example.Test"):
        c.expect("RCPT TO:<%s>" % a, 250)
    t = tok()
    msg = make_msg(t)
    c.expect("DATA", 354)
    c.send(dot_stuff(msg) + b".\r\n")
    code, text = c.reply()
    check(code == 250, "DATA: %s" % short(text))
    c.expect("QUIT", 221)
    check(stored_tokens(srv, "alice@example.test") == [t], "alice has %s" % stored_tokens(srv, "alice@example.test"))
    check(stored_tokens(srv, "bob@example.test") == [t], "bob has %s" % stored_tokens(srv, "bob@example.test"))
    check(srv.fetch("dave@other.test") == [], "the other.test catch-all got a relay trick")
    check(not queue_files(srv) and sink.connections == 0, "something was relayed: queue %s" % queue_files(srv))


@test()
def relay_after_auth(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server(server={"relay_networks": "192.0.2.0/24"}).start()
    sent = []
    for port in (srv.smtp_port, srv.sub_port):
        c = srv.smtp(port=port)
        c.expect("AUTH PLAIN " + plain("alice@example.test", PASSWORDS["alice@example.test"]), 235)
        t = tok()
        code, text = c.send_mail("alice@example.test", ["user@remote.test"], make_msg(t, to="user@remote.test"))
        check(code == 250, "port %d: end of DATA: %s" % (port, short(text)))
        c.expect("QUIT", 221)
        sent.append(t)
    sink_wait(sink, 2, 10)
    check(sorted(token_of(g["data"]) for g in sink.messages) == sorted(sent), "sink got %s" % [g["rcpts"] for g in sink.messages])


@test(limit=45)
def relay_queue_survives_kill9(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    srv = net.server(relay={"retry": "1"}).start()
    t, msg = relay_mail(srv, ["user@remote.test"])  # nothing listens yet: deferred
    wait_for(lambda: re.search(r"pending, tries=[1-9]", queue_cli(srv)), 10, "a failed attempt in `queue`", 0.2)
    check(queue_files(srv), "no queue files in %s" % srv.queue)
    srv.kill9()
    sink = net.sink()
    srv.start()
    sink_wait(sink, 1, 15)
    wait_queue_empty(srv)
    n = sum(token_of(g["data"]) == t for g in sink.messages)
    check(1 <= n <= 2, "delivered %d times" % n)
    soft(n == 1, "delivered twice after the restart")


@test()
def relay_blackhole_no_stall(ctx):
    net = Net(ctx)
    net.domain("remote.test", "127.0.0.2")
    net.domain("fine.test", "127.0.0.3")
    hole = net.sink("127.0.0.2", blackhole=True)
    fine = net.sink("127.0.0.3")
    srv = net.server(relay={"timeout": "300"}).start()
    relay_mail(srv, ["user@remote.test"])
    wait_for(lambda: hole.connections >= 1, 10, "the outbound session to the silent host")
    t0 = time.monotonic()
    toks = [srv.deliver()[0] for _ in range(3)]
    got = [g["token"] for g in srv.fetch("alice@example.test")]
    took = time.monotonic() - t0
    check(got == toks, "alice has %s, expected %s" % (got, toks))
    check(took < secs(3), "3 local deliveries and a POP3 fetch took %.1fs while a remote hangs" % took)
    relay_mail(srv, ["user@fine.test"])
    sink_wait(fine, 1, 5, "messages at another remote while the first hangs")


@test()
def relay_bounce_to_remote_sender(ctx):
    net = Net(ctx)
    net.domain("remote.test", "127.0.0.2")
    net.domain("far.test", "127.0.0.3")
    dest = net.sink("127.0.0.2", rcpt_replies={"nobody@remote.test": "550 5.1.1 no such user"})
    home = net.sink("127.0.0.3")
    srv = net.server().start()
    t, msg = relay_mail(srv, ["nobody@remote.test"], sender="someone@far.test")
    got = sink_wait(home, 1, 10, "bounces at the sender's MX")
    check(got[0]["mail_from"] == "", "bounce sent with MAIL FROM:<%s>, expected <>" % got[0]["mail_from"])
    check(got[0]["rcpts"] == ["someone@far.test"], "bounce to %s" % got[0]["rcpts"])
    check_dsn(got[0]["data"], {"nobody@remote.test": "5.1.1"}, t, diag="550 5.1.1", stored=False)
    # issue 18: the server knows what it wrote (7-bit, short lines): sent as it is, undeclared
    check("BODY=" not in got[0]["params"] and b"quoted-printable" not in got[0]["data"],
          "the bounce was declared 8-bit or converted: %r %s" % (got[0]["params"], short(got[0]["data"], 300)))
    wait_queue_empty(srv)
    check(len(home.messages) == 1 and dest.messages == [], "extra messages: %d at home, %d at dest"
          % (len(home.messages), len(dest.messages)))


@test()
def relay_queue_flush_cli(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    sink.script("data", ["451 4.3.0 try later"])
    srv = net.server(relay={"retry": "1h"}).start()  # only the flush brings the second attempt
    check("queue is empty" in queue_cli(srv), "`queue` on an empty queue: %s" % short(queue_cli(srv)))
    t, msg = relay_mail(srv, ["user@remote.test"])
    out = wait_for(lambda: (lambda o: o if "tries=1" in o else None)(queue_cli(srv)), 10, "tries=1 in `queue`", 0.2)
    m = re.search(r"(?m)^(\S+) age=\d+s from=<%s> size=(\d+)$" % re.escape(SENDER), out)
    check(m, "`queue` message line: %s" % short(out, 400))
    check(os.path.exists(os.path.join(srv.queue, m.group(1) + ".env")), "%s.env not in %s" % (m.group(1), srv.queue))
    check(int(m.group(2)) >= len(msg), "size=%s < %d" % (m.group(2), len(msg)))
    check(re.search(r"(?m)^\s+<user@remote\.test> pending, tries=1: .*451", out), "`queue` recipient line: %s" % short(out, 400))
    r = run_cli(["-c", srv.ini, "flush"])
    check(r.returncode == 0 and r.stdout.strip(), "flush: exit %d, stdout %s, stderr %s" % (r.returncode, short(r.stdout), short(r.stderr)))
    got = sink_wait(sink, 1, 6, "messages after flush")
    check(token_of(got[0]["data"]) == t, "wrong message")
    wait_queue_empty(srv)
    check(not os.path.exists(os.path.join(srv.queue, "flush")), "the flush file was not removed")


@test()
def relay_alias_remote_member(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    doms = DOMAINS.replace("dup = alice, bob, alice", "dup = alice, bob, alice\nmixed = alice, friend@remote.test")
    srv = net.server(domains=doms)
    r = check_cli(srv)
    check(r.returncode == 0, "check with a remote alias member: exit %d %s" % (r.returncode, short(r.stderr)))
    srv.start()
    t, msg = srv.deliver("mixed@example.test")
    got = sink_wait(sink, 1, 10)
    check(got[0]["rcpts"] == ["friend@remote.test"], "relayed to %s" % got[0]["rcpts"])
    check_relayed(got[0]["data"], msg)
    check(stored_tokens(srv, "alice@example.test") == [t], "alice has %s" % stored_tokens(srv, "alice@example.test"))


@test(limit=40)
def relay_two_servers(ctx):
    dns = ctx.track(fakes.FakeDNS())
    srvs = {}
    for d, user, pw in (("a.test", "ann", "Passw0rd1"), ("b.test", "ben", "Passw0rd2")):
        doms = "[domain %s]\n%s = %s\n\n[alias %s]\npostmaster = %s\n" % (d, user, pw, d, user)
        srvs[d] = ctx.server(server={"hostname": "mx." + d}, domains=doms,
                             sections={"relay": {"dns": dns.addr, "retry": "1"}})
    a, b = srvs["a.test"], srvs["b.test"]
    a.sections["route"] = {"b.test": "127.0.0.1:%d" % b.smtp_port}
    b.sections["route"] = {"a.test": "127.0.0.1:%d" % a.smtp_port}
    for s in (a, b):
        s.write_ini()
        s.start()
    for src, dst, sender, rcpt, pw in ((a, b, "ann@a.test", "ben@b.test", "Passw0rd2"),
                                       (b, a, "ben@b.test", "ann@a.test", "Passw0rd1")):
        t = tok()
        msg = make_msg(t, to=rcpt, sender=sender)
        check(src.send([rcpt], msg, sender=sender) == {}, "%s refused" % rcpt)
        got = wait_for(lambda: dst.fetch(rcpt, pw), 10, "the message in %s's mailbox" % rcpt, 0.2)
        check([g["token"] for g in got] == [t], "%s has %s" % (rcpt, [g["token"] for g in got]))
        check_message(got[0]["data"], msg, sender=sender)
        check(len(re.findall(rb"(?m)^Received: ", got[0]["data"])) >= 2, "one Received: header after two hops")


@test()
def relay_dns_servfail_defers(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    net.dns.servfail("remote.test")
    sink = net.sink()
    srv = net.server(relay={"retry": "1"}).start()
    t, msg = relay_mail(srv, ["user@remote.test"], sender="alice@example.test")
    wait_for(lambda: re.search(r"pending, tries=[1-9]", queue_cli(srv)), 10, "a deferral on SERVFAIL in `queue`", 0.2)
    check(srv.fetch("alice@example.test") == [], "SERVFAIL (temporary) bounced the message")
    net.dns.clear("remote.test")
    got = sink_wait(sink, 1, 10, "messages once DNS answers again")
    check(token_of(got[0]["data"]) == t, "wrong message")
    wait_queue_empty(srv)


@test()
def relay_dns_silent_no_stall(ctx):
    net = Net(ctx)
    net.dns.drop("remote.test")
    srv = net.server().start()
    relay_mail(srv, ["user@remote.test"])
    wait_for(lambda: net.dns.asked("remote.test"), 5, "the MX query for remote.test")
    t0 = time.monotonic()
    toks = [srv.deliver()[0] for _ in range(3)]
    got = [g["token"] for g in srv.fetch("alice@example.test")]
    took = time.monotonic() - t0
    check(got == toks, "alice has %s, expected %s" % (got, toks))
    check(took < secs(3), "3 local deliveries and a POP3 fetch took %.1fs while the resolver gets no answer" % took)
    wait_for(lambda: re.search(r"pending, tries=[1-9]", queue_cli(srv)), 30, "a deferral after the DNS timeout", 0.5)


@test()
def relay_remote_drops_retry(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    sink.script("data", ["DROP"])  # connection closed after the final dot, no reply
    sink.script("rcpt", ["DROP"])
    srv = net.server(relay={"retry": "1"}).start()
    t, msg = relay_mail(srv, ["user@remote.test"])
    sink_wait(sink, 1, 15, "messages after two dropped connections")
    wait_queue_empty(srv)
    check([token_of(g["data"]) for g in sink.messages] == [t], "sink got %s" % [token_of(g["data"]) for g in sink.messages])


@test(modes=BOTH)
def relay_large_message(ctx, storage):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server(storage=storage).start()
    t = tok()
    body = "".join(".%05d %s\r\n" % (i, "x" * (i % 97)) for i in range(1600))  # ~90 KB, every line dot-stuffed
    msg = make_msg(t, to="user@remote.test", body=body)
    check(srv.send(["user@remote.test", "alice@example.test"], msg) == {}, "refused")
    got = sink_wait(sink, 1, 10)
    check_relayed(got[0]["data"], msg)
    check_message(srv.fetch("alice@example.test")[0]["data"], msg)


# Issue 18: 8BITMIME (RFC 6152) and lines over 998 octets (RFC 5321 4.5.3.1.6) toward the next hop.
LONG_TEXT = "".join(chr(ord("a") + i % 26) for i in range(1500))


def mime_8bit(token, to, sender=SENDER, subject=None, long_line=True):
    """A multipart/mixed message in UTF-8: 8bit text (with '=', trailing spaces, a leading dot, a
    1,500-octet line), an alternative with 8bit HTML, a base64 attachment, a message/rfc822 (8bit)."""
    text = ("Gr\u00fc\u00dfe %s = f\u00fcnf  \r\n.dot line \u00e4\r\n%s\r\nFrom the end\t\r\n"
            % (token, LONG_TEXT if long_line else "short")).encode()
    html = "<p>\u00e9t\u00e9 %s</p>\r\n" % token
    att = bytes(range(256)) * 4
    import base64
    b64 = base64.encodebytes(att).replace(b"\n", b"\r\n")
    hdr = ["From: <%s>" % sender, "To: <%s>" % to, "Subject: %s" % (subject or "8bit " + token),
           "Message-ID: <%s@client.test>" % token, "X-Test-Token: %s" % token, "MIME-Version: 1.0",
           'Content-Type: multipart/mixed; boundary="outer b"']
    msg = ("\r\n".join(hdr) + "\r\n\r\npreamble\r\n--outer b\r\n"
           "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode() + text
    msg += ("--outer b  \r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n" + html + "--alt--\r\n"
            "--outer b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n").encode()
    msg += b64 + ("--outer b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                  "Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ninner \u00fc\r\n"
                  "--outer b--\r\n").encode()
    return msg, [text, html.encode(), att, "inner \u00fc\r\n".encode()]


def mime_leaf_payloads(data):
    """The decoded payloads of a message's leaf parts (in order, message/rfc822 opened), LF line ends."""
    out = []
    for p in email.message_from_bytes(data).walk():
        if p.is_multipart() or p.get_content_type() == "message/rfc822":
            continue
        b = p.get_payload(decode=True) or b""
        out.append(b if p.get_content_type() == "application/octet-stream" else b.replace(b"\r\n", b"\n"))
    return out


def check_7bit_text(data, what):
    """data (CRLF, or LF as Postfix stores it) as a hop without 8BITMIME must get it: 7-bit, no line over 998 octets."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    check(all(b < 128 for b in data), "%s has 8-bit octets: %s" % (what, short([l for l in lines if max(l or b"0") > 127][:3], 300)))
    check(max(len(l) for l in lines) <= 998, "%s has a line of %d octets" % (what, max(len(l) for l in lines)))


def check_leaves(got, sent, parts, what):
    """got: the leaf payloads as relayed; sent: the message as sent; parts: what was put in it."""
    want = mime_leaf_payloads(sent)
    check(len(want) == len(parts) and all(w == (p if i == 2 else p.replace(b"\r\n", b"\n")).rstrip(b"\n")
                                          for i, (w, p) in enumerate(zip(want, parts))),
          "the test's message does not parse as meant: %s" % short(want, 300))
    check(got == want, "%s: the decoded parts differ: got %s, want %s" % (what, short(got, 400), short(want, 400)))


@test(modes=BOTH)
def relay_8bitmime_declared(ctx, storage):
    """Issue 18.3, RFC 6152 2: to a hop offering 8BITMIME, 8-bit text goes as it is with
    MAIL FROM ... BODY=8BITMIME; 7-bit text without the parameter; a message with a 1,500-octet line
    (7-bit) arrives with every line within 998 octets, decoding to the same parts."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server(storage=storage).start()
    t = tok()
    msg, _ = mime_8bit(t, "user@remote.test", long_line=False)
    check(srv.send(["user@remote.test"], msg) == {}, "refused")
    got = sink_wait(sink, 1, 10)
    check("BODY=8BITMIME" in got[0]["params"].split(), "MAIL FROM parameters: %r" % got[0]["params"])
    check_relayed(got[0]["data"], msg)
    t2, m2 = relay_mail(srv, ["user@remote.test"])
    got = sink_wait(sink, 2, 10)
    check("BODY=" not in got[1]["params"], "7-bit text declared: %r" % got[1]["params"])
    check_relayed(got[1]["data"], m2)
    t3 = tok()
    m3 = make_msg(t3, to="user@remote.test", body="one\r\n" + LONG_TEXT + "\r\n.two\r\n")
    check(srv.send(["user@remote.test"], m3) == {}, "refused")
    got = sink_wait(sink, 3, 10)
    check("BODY=" not in got[2]["params"], "7-bit text declared: %r" % got[2]["params"])
    check_7bit_text(got[2]["data"], "the message with a long line")
    parsed = email.message_from_bytes(got[2]["data"])
    check(parsed["Content-Transfer-Encoding"] == "quoted-printable" and parsed["MIME-Version"] == "1.0",
          "long line: not quoted-printable: %s" % short(got[2]["data"], 300))
    check(parsed.get_payload(decode=True).replace(b"\r\n", b"\n") == ("one\n" + LONG_TEXT + "\n.two\n").encode(),
          "long line: decodes to %s" % short(parsed.get_payload(decode=True), 200))
    wait_queue_empty(srv)


@test(modes=BOTH)
def relay_8bit_downgrade(ctx, storage):
    """Issue 18.3, RFC 6152 3: to a hop without 8BITMIME, a multipart message with 8-bit text
    (nested alternative, base64 attachment, 8-bit message/rfc822, a 1,500-octet line) arrives as
    7-bit quoted-printable, undeclared, every part decoding to what was sent. A message with an
    8-bit Subject cannot be converted: its sender gets a bounce with 5.6.3, the hop gets nothing
    (QUIT instead of DATA); the same for 8-bit in a part's header (the connection closed in DATA)."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(extensions=["SIZE 10240000", "PIPELINING"])
    srv = net.server(storage=storage).start()
    t = tok()
    msg, parts = mime_8bit(t, "user@remote.test")
    check(srv.send(["user@remote.test"], msg) == {}, "refused")
    got = sink_wait(sink, 1, 10)
    check("BODY=" not in got[0]["params"], "BODY= to a hop without 8BITMIME: %r" % got[0]["params"])
    check_7bit_text(got[0]["data"], "the converted message")
    check_leaves(mime_leaf_payloads(got[0]["data"]), msg, parts, "the converted message")
    check(token_of(got[0]["data"]) == t, "the header changed")
    t2 = tok()
    m2, _ = mime_8bit(t2, "user@remote.test", sender="alice@example.test", subject="Gr\u00fc\u00dfe " + t2)
    n = len(sink.events)
    check(srv.send(["user@remote.test"], m2, sender="alice@example.test") == {}, "refused")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 20, "the bounce of the 8-bit Subject")
    check_dsn(b[0], {"user@remote.test": "5.6.3"}, t2)
    # found in the message's header before DATA: QUIT after RCPT, no DATA at all
    stages = wait_for(lambda: [e[0] for e in sink.events[n:]][-2:] == ["rcpt", "quit"] and [e[0] for e in sink.events[n:]],
                      10, "QUIT after RCPT at the sink (saw %s)" % [e[0] for e in sink.events[n:]])
    check("data" not in stages and "data-start" not in stages, "DATA was sent: %s" % stages)
    # 8-bit in a part's header (a raw UTF-8 file name) is found while the text goes out: the
    # connection is closed before the final dot, and the sender gets the same bounce
    t3 = tok()
    m3, _ = mime_8bit(t3, "user@remote.test", sender="alice@example.test")
    m3 = m3.replace(b"Content-Type: application/octet-stream\r\n",
                    b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"\xc3\xbc.bin\"\r\n")
    check(srv.send(["user@remote.test"], m3, sender="alice@example.test") == {}, "refused")
    b = wait_for(lambda: [x for x in bounces(srv, "alice@example.test") if t3.encode() in x], 20,
                 "the bounce of the 8-bit part header")
    check_dsn(b[0], {"user@remote.test": "5.6.3"}, t3)
    check(len(sink.messages) == 1, "the hop got %d messages" % len(sink.messages))
    wait_queue_empty(srv)


@test()
def relay_queue_entry_without_body_facts(ctx):
    """Issue 18: a queue entry written before issue 18 (no `body` or `longlines` line in ID.env) is
    taken as 8-bit with long lines, never scanned: it goes declared BODY=8BITMIME, its text as
    quoted-printable that decodes to the text queued. An entry saying `body 7bit` goes unchanged."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server()
    os.makedirs(srv.queue, exist_ok=True)
    toks = {}
    for name, extra in (("old", ""), ("new", "body 7bit\n")):
        t = toks[name] = tok()
        qid = "1700000000.M00000%sP1Q1" % ("1" if name == "old" else "2")
        text = ("Received: from x ([127.0.0.1])\n\tby test.local (mailsrv) with ESMTP id %s;\n\tMon, 1 Jan 2024 00:00:00 +0000\n"
                "Subject: %s entry\nX-Test-Token: %s\n\nplain = text %s\n.dot\n" % (qid, name, t, t)).encode()
        with open(os.path.join(srv.queue, qid + ".msg"), "wb") as f:
            f.write(text)
        with open(os.path.join(srv.queue, qid + ".env"), "w") as f:
            f.write("mailsrv-queue 1\nfrom <%s>\narrived %d\ntries 0\nnext 0\nsize %d\nlines 6\n%srcpt pending user@remote.test\n"
                    % (SENDER, int(time.time()), len(text), extra))
    srv.start()
    got = {token_of(g["data"]): g for g in sink_wait(sink, 2, 15)}
    check(set(got) == set(toks.values()), "the sink got %s" % sorted(got))
    old, new = got[toks["old"]], got[toks["new"]]
    check("BODY=8BITMIME" in old["params"].split(), "old entry: MAIL parameters %r" % old["params"])
    m = email.message_from_bytes(old["data"])
    check(m["Content-Transfer-Encoding"] == "quoted-printable", "old entry not converted: %s" % short(old["data"], 300))
    check(m.get_payload(decode=True).replace(b"\r\n", b"\n") == ("plain = text %s\n.dot\n" % toks["old"]).encode(),
          "old entry decodes to %s" % short(m.get_payload(decode=True)))
    check("BODY=" not in new["params"], "7bit entry: MAIL parameters %r" % new["params"])
    check(new["data"].endswith(("\r\n\r\nplain = text %s\r\n.dot\r\n" % toks["new"]).encode()),
          "7bit entry changed: %s" % short(new["data"], 300))
    wait_queue_empty(srv)


@test()
def relay_mx_ipv6(ctx):
    need_ipv6()
    net = Net(ctx)
    port = free_ports(1, "::1")[0]
    net.dns.mx("remote.test", [(10, "mx6.remote.test")])
    net.dns.aaaa("mx6.remote.test", ["::1"])
    sink = net.sink("::1", port)
    srv = net.server(relay={"port": port})
    six = free_ports(1, "::1")[0]
    srv.keys["smtp"] += ", [::1]:%d" % six
    srv.write_ini()
    srv.start()
    c = srv.smtp(port=six, host="::1")  # ::1 is in the default relay_networks
    t = tok()
    msg = make_msg(t, to="user@remote.test")
    code, text = c.send_mail(SENDER, ["user@remote.test"], msg)
    check(code == 250, "end of DATA: %s" % short(text))
    got = sink_wait(sink, 1, 10)
    check_relayed(got[0]["data"], msg)


@test()
def relay_networks_cidr(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server(server={"relay_networks": "10.0.0.0/8, 127.0.0.0/30"}).start()
    for source, code in (("127.0.0.2", 250), ("127.0.0.3", 250), ("127.0.0.5", 550), ("127.0.0.1", 250)):
        c = ctx.track(Smtp(srv.smtp_port, source=source))
        check(c.reply()[0] == 220, "greeting")
        c.expect("EHLO client.test", 250)
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<user@remote.test>", code, "2.1.5" if code == 250 else "5.7.1")
        c.expect("QUIT", 221)


# ---- the relay client's extensions: PIPELINING (RFC 2920), CHUNKING (RFC 3030), random equal-preference MX
# The sink numbers the packets it reads (fakes.SmtpSink.groups()): commands written at once share one.

@test()
def relay_pipelining_group(ctx):
    """A hop that offers PIPELINING gets MAIL, every RCPT and DATA in one write, DATA last (RFC 2920
    3.1); the text follows the 354. (relay_reuses_connection: later transactions on the connection.)"""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server(relay={"max_outbound": "1"}).start()
    rc = ["a@remote.test", "b@remote.test", "c@remote.test"]
    t, msg = relay_mail(srv, rc)
    got = sink_wait(sink, 1, 10)
    check(sorted(got[0]["rcpts"]) == rc, "RCPTs %s" % got[0]["rcpts"])
    check_relayed(got[0]["data"], msg)
    wait_queue_empty(srv)
    groups = sink.groups()
    check(["MAIL", "RCPT", "RCPT", "RCPT", "DATA"] in groups, "no MAIL+3 RCPT+DATA group; the sink read %s" % groups)
    check(groups[0] == ["EHLO"], "EHLO pipelined with something: %s" % groups)


@test()
def relay_pipelining_not_offered(ctx):
    """A hop that does not offer PIPELINING gets one command at a time, each after the last reply."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(extensions=["SIZE 10240000", "8BITMIME"])
    srv = net.server().start()
    t, msg = relay_mail(srv, ["a@remote.test", "b@remote.test"])
    got = sink_wait(sink, 1, 10)
    check_relayed(got[0]["data"], msg)
    wait_queue_empty(srv)
    groups = [g for g in sink.groups() if g[0] in ("EHLO", "MAIL", "RCPT", "DATA", "QUIT")]
    check(groups[:5] == [["EHLO"], ["MAIL"], ["RCPT"], ["RCPT"], ["DATA"]],
          "commands without PIPELINING grouped as %s" % groups)


@test()
def relay_pipelining_refused_rcpt(ctx):
    """Inside a pipelined group each RCPT reply is checked on its own (RFC 2920 3.1): a 550 bounces
    that recipient, a 451 defers it (retried alone later), the accepted ones get the message."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_replies={"bad@remote.test": "550 5.1.1 no such user",
                                  "later@remote.test": ["451 4.2.0 try later", "250 2.1.5 Ok"]})
    srv = net.server(relay={"retry": "1"}).start()
    rc = ["ok1@remote.test", "bad@remote.test", "later@remote.test", "ok2@remote.test"]
    t, msg = relay_mail(srv, rc, sender="alice@example.test")
    got = sink_wait(sink, 2, 15)
    check(sorted(got[0]["rcpts"]) == ["ok1@remote.test", "ok2@remote.test"], "first transaction to %s" % got[0]["rcpts"])
    check(got[1]["rcpts"] == ["later@remote.test"], "retry transaction to %s" % got[1]["rcpts"])
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce for bad@remote.test")
    check_dsn(b[0], {"bad@remote.test": "5.1.1"}, t, diag="5.1.1")
    wait_queue_empty(srv)
    groups = sink.groups()
    check(["MAIL", "RCPT", "RCPT", "RCPT", "RCPT", "DATA"] in groups, "the 4 recipients not in one group: %s" % groups)
    check(["MAIL", "RCPT", "DATA"] in groups, "the retry not pipelined: %s" % groups)


@test()
def relay_pipelining_all_rcpts_refused(ctx):
    """Every RCPT of a pipelined group refused: DATA, already sent, gets 554 and no text follows;
    the session ends with QUIT and the recipients bounce (RFC 2920 3.1)."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_reply="550 5.1.1 no such user")
    srv = net.server().start()
    t, msg = relay_mail(srv, ["x@remote.test", "y@remote.test"], sender="alice@example.test")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce")
    check_dsn(b[0], {"x@remote.test": "5.1.1", "y@remote.test": "5.1.1"}, t)
    wait_queue_empty(srv)
    check(sink.messages == [], "a message was accepted: %s" % sink.messages)
    check(sink.stage_count("data-start") == 1, "DATA not pipelined / not refused: %s" % short(sink.events, 400))
    lines = [c[2] for c in sink.commands]
    after = lines[[l.upper() for l in lines].index("DATA") + 1:]
    check(after == ["QUIT"], "after the refused DATA the sink read %s, expected only QUIT" % short(after, 300))


@test()
def relay_pipelining_mail_refused(ctx):
    """MAIL refused (5xx) inside a pipelined group: the RCPT and DATA replies that follow are read and
    not taken for results; everyone bounces with the MAIL reply, and no text is sent."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(mail_reply="553 5.7.1 sender refused")
    srv = net.server().start()
    t, msg = relay_mail(srv, ["x@remote.test", "y@remote.test"], sender="alice@example.test")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce")
    check_dsn(b[0], {"x@remote.test": "5.7.1", "y@remote.test": "5.7.1"}, t, diag="553 5.7.1 sender refused")
    wait_queue_empty(srv)
    check(sink.messages == [], "a message was accepted")
    lines = [c[2].upper() for c in sink.commands]
    check(lines[-4:] == ["RCPT TO:<X@REMOTE.TEST>", "RCPT TO:<Y@REMOTE.TEST>", "DATA", "QUIT"],
          "the sink read %s" % short(lines, 300))


@test()
def relay_pipelining_data_354_without_rcpt(ctx):
    """A hop that answers 354 to a pipelined DATA though it refused every RCPT gets a lone dot
    (RFC 2920 3.1), no text; the recipients bounce and nothing counts as delivered."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_reply="550 5.1.1 no such user", data_without_rcpts=True)
    srv = net.server().start()
    t, msg = relay_mail(srv, ["x@remote.test"], sender="alice@example.test")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce")
    check_dsn(b[0], {"x@remote.test": "5.1.1"}, t)
    wait_queue_empty(srv)
    check(sink.empty_data == [b""], "the sink got the text %s after 354, expected nothing" % short(sink.empty_data, 200))
    check(not re.search(r"relayed \S+ to=<x@remote\.test>", srv.log_text()), "logged as relayed")


@test()
def relay_bdat_chunks(ctx):
    """A hop that offers CHUNKING gets the text in BDAT chunks (RFC 3030): no DATA, no dot-stuffing,
    the chunk sizes sum to the text, the last chunk is LAST, and the message arrives whole. MAIL
    and the RCPTs are still one pipelined group; BDAT follows their replies."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(extensions=["SIZE 10240000", "PIPELINING", "8BITMIME", "CHUNKING"])
    srv = net.server(server={"max_message_size": "1M"}).start()
    t = tok()
    body = "".join(".%05d %s\r\n" % (i, "y" * (i % 113)) for i in range(3000))  # ~190 KB, lines with dots
    msg = make_msg(t, to="user@remote.test", body=body)
    check(srv.send(["user@remote.test", "u2@remote.test"], msg) == {}, "refused")
    got = sink_wait(sink, 1, 15)
    check_relayed(got[0]["data"], msg)
    chunks = got[0]["bdat"]
    check(chunks and sum(chunks) == len(got[0]["data"]), "BDAT chunks %s for %d bytes" % (chunks, len(got[0]["data"])))
    check(len(chunks) >= 3 and all(c >= 65536 for c in chunks[:-1]), "chunk sizes %s" % chunks)
    lines = [c[2].upper() for c in sink.commands]
    check("DATA" not in lines, "DATA sent to a CHUNKING hop: %s" % short(lines, 300))
    bdats = [l for l in lines if l.startswith("BDAT")]
    check(bdats == ["BDAT %d" % c for c in chunks[:-1]] + ["BDAT %d LAST" % chunks[-1]], "BDAT commands %s" % bdats)
    check(["MAIL", "RCPT", "RCPT"] in sink.groups(), "MAIL+RCPTs not pipelined: %s" % sink.groups())
    small_t, small = relay_mail(srv, ["user@remote.test"])
    got = sink_wait(sink, 2, 10)
    check_relayed(got[1]["data"], small)
    check(got[1]["bdat"] == [len(got[1]["data"])], "a small message in chunks %s" % got[1]["bdat"])
    wait_queue_empty(srv)


@test(limit=60)
def relay_bdat_refused_or_lost(ctx):
    """BDAT failures keep DATA's guarantees: a 451 to a chunk defers (retried), a connection lost in
    the middle of the chunks defers, a lost connection before the LAST chunk's reply defers; the
    message arrives once, after the final 250; a 554 to a chunk bounces."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(extensions=["SIZE 10240000", "PIPELINING", "CHUNKING"])
    sink.script("bdat", ["451 4.3.0 chunk refused", "DROP"])
    sink.script("data", ["DROP"])  # the LAST chunk's reply
    srv = net.server(relay={"retry": "1"}, server={"max_message_size": "1M"}).start()
    t = tok()
    msg = make_msg(t, to="user@remote.test", body="z" * 78 + "\r\n" * 1 + ("%s\r\n" % ("w" * 200)) * 1000)
    check(srv.send(["user@remote.test"], msg) == {}, "refused")
    got = sink_wait(sink, 1, 30, "messages after a 451 chunk, a drop mid-chunks and a drop before LAST's reply")
    check_relayed(got[0]["data"], msg)
    wait_queue_empty(srv, 20)
    check(len(sink.messages) == 1, "delivered %d times" % len(sink.messages))
    check(sink.connections >= 4, "%d connections, expected 4 attempts" % sink.connections)
    log = srv.log_text()
    check(re.search(r"deferred \S+ to=<user@remote\.test>: .*451 4\.3\.0 chunk refused", log), "no deferral for the 451")
    check(len(re.findall(r"deferred \S+ to=<user@remote\.test>: .*connection lost", log)) >= 2,
          "no deferrals for the lost connections")
    check(len(re.findall(r"relayed \S+ to=<user@remote\.test>", log)) == 1, "relayed logged more than once")
    sink.script("bdat", ["554 5.3.4 no thanks"])
    t2 = tok()
    msg2 = make_msg(t2, to="user@remote.test", sender="alice@example.test", body=("%s\r\n" % ("v" * 200)) * 1000)
    check(srv.send(["user@remote.test"], msg2, sender="alice@example.test") == {}, "refused")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce for the 554 chunk")
    check_dsn(b[0], {"user@remote.test": "5.3.4"}, t2, diag="554 5.3.4 no thanks")
    wait_queue_empty(srv)


@test(limit=60)
def relay_mx_equal_pref_random(ctx):
    """RFC 5321 5.1: MX hosts of equal preference are tried in random order. Two MX of preference 10
    (and a worse one never used): over at most 24 messages, one at a time, both get the first try;
    the chance that a fair choice shows only one is 2^-23."""
    net = Net(ctx)
    net.dns.mx("remote.test", [(20, "mx9.remote.test"), (10, "mx1.remote.test"), (10, "mx2.remote.test")])
    net.dns.a("mx1.remote.test", ["127.0.0.2"])
    net.dns.a("mx2.remote.test", ["127.0.0.3"])
    net.dns.a("mx9.remote.test", ["127.0.0.4"])
    s1, s2 = net.sink("127.0.0.2"), net.sink("127.0.0.3")
    srv = net.server().start()
    for n in range(1, 25):
        relay_mail(srv, ["user@remote.test"])
        wait_for(lambda: len(s1.messages) + len(s2.messages) >= n, 10, "message %d at one of the MX" % n)
        if s1.messages and s2.messages:
            break
    check(s1.messages and s2.messages, "%d messages all went to one MX (%d, %d)" % (n, len(s1.messages), len(s2.messages)))
    check(len(s1.messages) + len(s2.messages) == n, "extra transactions")
    check(s1.connections + s2.connections == n, "%d connections for %d messages: a first choice failed?"
          % (s1.connections + s2.connections, n))


@test()
def relay_pipelining_mail_refused_then_drop(ctx):
    """MAIL refused (5xx) in a pipelined group, then the connection drops before the other replies:
    every recipient is settled (bounced), so the next MX host is not bothered with the message."""
    net = Net(ctx)
    net.dns.mx("remote.test", [(10, "mx1.remote.test"), (20, "mx2.remote.test")])
    net.dns.a("mx1.remote.test", ["127.0.0.2"])
    net.dns.a("mx2.remote.test", ["127.0.0.3"])
    first = net.sink("127.0.0.2", mail_reply="554 5.7.1 sender refused")
    first.script("rcpt-without-mail", ["DROP"])
    second = net.sink("127.0.0.3")
    srv = net.server().start()
    t, msg = relay_mail(srv, ["x@remote.test"], sender="alice@example.test")
    b = wait_for(lambda: bounces(srv, "alice@example.test"), 10, "a bounce")
    check_dsn(b[0], {"x@remote.test": "5.7.1"}, t, diag="554 5.7.1 sender refused")
    wait_queue_empty(srv)
    check(second.connections == 0, "the second MX was contacted after every recipient was refused: %s"
          % short(second.events, 300))
