"""SMTP protocol, storage specifics, AUTH and submission."""
import glob
import os
import poplib
import re
import shutil
import smtplib
import socket
import subprocess
import time

from .harness import (BOTH, DOMAINS, Pop, SENDER, STOP_SIGNAL, Smtp, TESTS, TestFailure, b64, check,
                      check_message, dot_stuff, header, maildir_files, make_msg, mbox_path, parse_mbox, plain,
                      run_cli, secs, short, soft, stored, stored_tokens, test, tok, token_of, tree, wait_for)
from .cli import read


# =============================================================================================
# SMTP protocol


@test()
def greeting_ehlo_keywords(ctx):
    srv = ctx.server().start()
    c = ctx.track(Smtp(srv.smtp_port))
    code, text = c.reply()
    check(code == 220 and "test.local" in text.split("\n")[0], "greeting %s: expected 220 with the hostname" % short(text))
    code, text = c.cmd("EHLO client.test")
    check(code == 250, "EHLO: %s" % short(text))
    lines = text.split("\n")
    check("test.local" in lines[0], "EHLO first line lacks the hostname: %s" % short(lines[0]))
    kws = [l[4:].strip().upper() for l in lines[1:]]
    for need in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 102400"):
        check(need in kws, "EHLO lacks %s: %s" % (need, kws))
    auth = [k.split() for k in kws if k.startswith("AUTH ")]
    check(auth and "PLAIN" in auth[0] and "LOGIN" in auth[0], "EHLO lacks AUTH PLAIN LOGIN: %s" % kws)
    c.expect("QUIT", 221)
    c.read_eof()


@test()
def helo_and_lowercase_commands(ctx):
    srv = ctx.server().start()
    c = srv.smtp(ehlo=None)
    c.expect("HELO client.test", 250)
    t = tok()
    c.expect("mail from:<%s>" % SENDER, 250)
    c.expect("rcpt to:<alice@example.test>", 250)
    c.expect("data", 354)
    c.send(dot_stuff(make_msg(t)) + b".\r\n")
    code, text = c.reply()
    check(code == 250, "end of data after HELO: %s" % short(text))
    c.expect("quit", 221)
    check(stored_tokens(srv, "alice@example.test") == [t], "message sent after HELO not stored")


@test()
def vrfy_252(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    # README (Protocols): "VRFY (always 252)": it never tells a mailbox from a non-mailbox (RFC 5321
    # 7.3): the whole reply to a known user is the one to an unknown user, bare name or full address
    for known, unknown in (("alice", "nosuchuser"), ("alice@example.test", "nosuchuser@example.test"),
                           ("<bob@example.test>", "<nobody@example.test>")):
        t1 = c.expect("VRFY " + known, 252)
        t2 = c.expect("VRFY " + unknown, 252)
        check(t1 == t2, "VRFY %s and VRFY %s differ: %r vs %r (a mailbox is disclosed)" % (known, unknown, t1, t2))
        check("alice" not in t1 and "bob" not in t1, "VRFY reveals the mailbox: %s" % short(t1))


@test()
def help_noop_rset_quit(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("HELP", 214)
    c.expect("NOOP", 250)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("RSET", 250)
    c.expect("DATA", 503, "5.5.1")  # RSET forgot the transaction
    c.expect("MAIL FROM:<%s>" % SENDER, 250)  # and MAIL is allowed again
    c.expect("QUIT", 221)
    c.read_eof()


@test()
def sequence_errors_503(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("RCPT TO:<alice@example.test>", 503, "5.5.1")
    c.expect("DATA", 503, "5.5.1")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1")
    c.expect("DATA", 503, "5.5.1")
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("NOOP", 250)
    check(stored(srv, "alice@example.test") == [], "something was stored")


@test()
def unknown_user_550(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<nobody@example.test>", 550, "5.1.1")
    c.expect("RCPT TO:<dave@example.test>", 550, "5.1.1")  # dave exists only in other.test
    c.expect("RCPT TO:<alice@example.test>", 250)


@test()
def non_local_550(ctx):
    srv = ctx.server(server={"relay_networks": "192.0.2.0/24"}).start()  # 127.0.0.1 may not relay
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<someone@elsewhere.example>", 550, "5.7.1")
    c.expect("RCPT TO:<alice@example.test.evil>", 550, "5.7.1")
    c.expect("RCPT TO:<alice@example.test>", 250)


@test()
def long_command_line_500(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("NOOP " + "x" * (512 - 2 - 5), 250)  # exactly 512 octets with CRLF
    c.expect("NOOP " + "x" * 600, 500, "5.5.2")
    c.expect("NOOP", 250)
    # a huge line, then a command in the same packet: one 500 for the line, then the command
    c.send("MAIL FROM:<" + "a" * 20000 + "@client.test>\r\nNOOP\r\n")
    code, text = c.reply()
    check(code == 500 and "5.5.2" in text, "20000-octet MAIL line: %s" % short(text))
    code, text = c.reply()
    check(code == 250, "NOOP after the long line: %s (expected one reply per line)" % short(text))
    t = tok()
    code, text = c.send_mail(SENDER, ["alice@example.test"], make_msg(t))
    check(code == 250, "delivery after long lines: %s" % short(text))
    check(stored_tokens(srv, "alice@example.test") == [t], "message after long lines not stored")


LONG_1500 = "".join(chr(ord("a") + i % 26) for i in range(1500))
LONG_100K = "".join("%05d," % i for i in range(100000 // 6)) + "end"  # 100,003 octets, no two 16 KB pieces alike


@test(modes=BOTH)
def long_text_line(ctx, storage):
    """Issue 18.2: text lines over 998 octets are accepted (as Postfix does; 500 5.5.2 before) and
    stored as sent, one of 1,500 and one of 100,000 octets (this one dot-stuffed and with "From "
    where the line reader's 16 KB pieces meet, which must not look like a line start to the mbox code):
    POP3 RETR and TOP give them back whole (RFC 1939 has no line limit). 998 + CRLF stays intact."""
    srv = ctx.server(storage=storage, server={"max_message_size": "1M"}).start()
    c = srv.smtp()
    t = tok()
    big = "." + LONG_100K[:16383] + "From " + LONG_100K[16388:]
    msg = make_msg(t, body="before\r\n" + LONG_1500 + "\r\n" + big + "\r\nFrom me\r\nafter\r\n")
    code, text = c.send_mail(SENDER, ["alice@example.test"], msg)
    check(code == 250, "message with a 1,500- and a 100,000-octet line: %s (expected 250)" % short(text))
    c.expect("NOOP", 250)
    t2 = tok()
    edge = "E" * 998
    msg2 = make_msg(t2, body="x\r\n" + edge + "\r\n" + "." + "D" * 997 + "\r\n" + "M" * 999 + "\r\n")
    code, text = c.send_mail(SENDER, ["alice@example.test"], msg2)
    check(code == 250, "message with 1000- and 1001-octet lines: %s" % short(text))
    got = srv.fetch("alice@example.test")
    check(sorted(g["token"] for g in got) == sorted([t, t2]), "stored: %s" % [g["token"] for g in got])
    by = {g["token"]: g["data"] for g in got}
    check_message(by[t], msg)
    check_message(by[t2], msg2)
    p = srv.pop("alice@example.test")
    n = [g["n"] for g in got if g["token"] == t][0]
    top = p.top(n, 3)
    check(top.endswith(b"\r\n\r\nbefore\r\n" + LONG_1500.encode() + b"\r\n" + big.encode() + b"\r\n"),
          "TOP %d 3: %s" % (n, short(top[-200:], 200)))
    p.quit()


@test()
def size_param_552(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s> SIZE=200000" % SENDER, 552, "5.3.4")
    c.expect("MAIL FROM:<%s> SIZE=1000" % SENDER, 250)
    c.expect("RSET", 250)
    c.expect("MAIL FROM:<%s> SIZE=102400" % SENDER, 250)
    c.expect("RSET", 250)
    # RFC 1870 5: size-value is 1*20DIGIT; a parameter is not given twice (RFC 5321 4.1.2)
    for bad in ("SIZE=-1", "SIZE=+5", "SIZE=", "SIZE=1k", "SIZE=1 SIZE=2", "BODY=7BIT BODY=8BITMIME",
                "SMTPUTF8 SMTPUTF8", "BODY=BINARYMIME"):
        c.expect("MAIL FROM:<%s> %s" % (SENDER, bad), 501, "5.5.4")
    c.expect("MAIL FROM:<%s> SIZE=%s" % (SENDER, "9" * 21), 501, "5.5.4")
    c.expect("MAIL FROM:<%s> SIZE=%s" % (SENDER, "9" * 20), 552, "5.3.4")  # valid, and too big
    c.expect("MAIL FROM:<%s> SIZE=100 BODY=8BITMIME SMTPUTF8" % SENDER, 250)


@test(modes=BOTH)
def oversize_message_552(ctx, storage):
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    t = tok()
    body = "".join("%s line %05d %s\r\n" % (t, i, "z" * 60) for i in range(2000))  # ~180 KB > 100K
    code, text = c.send_mail(SENDER, ["alice@example.test", "bob@example.test"], make_msg(t, body=body))
    check(code == 552 and "5.3.4" in text, "150 KB message with max 100K: %s, expected 552 5.3.4" % short(text))
    check(stored(srv, "alice@example.test") == [] and stored(srv, "bob@example.test") == [],
          "oversize message was stored")
    t2 = tok()
    code, text = c.send_mail(SENDER, ["alice@example.test"], make_msg(t2))
    check(code == 250, "small message after the 552: %s" % short(text))
    check(stored_tokens(srv, "alice@example.test") == [t2], "stored tokens %s" % stored_tokens(srv, "alice@example.test"))


@test()
def too_many_recipients_452(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    rc = ["alice@example.test", "bob@example.test", "carol@example.test", "carol@other.test", "dave@other.test"]
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    for r in rc:
        c.expect("RCPT TO:<%s>" % r, 250)
    c.expect("RCPT TO:<team@example.test>", 452, "4.5.3")
    c.expect("DATA", 354)
    t = tok()
    c.send(dot_stuff(make_msg(t)) + b".\r\n")
    code, text = c.reply()
    check(code == 250, "DATA: %s" % short(text))
    for r in rc:
        check(stored_tokens(srv, r) == [t], "%s: stored %s" % (r, stored_tokens(srv, r)))


@test()
def max_clients_421(ctx):
    srv = ctx.server(server={"max_clients": "3"}).start()
    c1 = srv.smtp(ehlo=None)
    p1 = srv.pop()
    c3 = srv.smtp(port=srv.sub_port, ehlo=None)
    c4 = ctx.track(Smtp(srv.smtp_port))
    code, text = c4.reply()
    check(code == 421 and text[4:].startswith("4.3.2"), "4th session (SMTP) got %s, expected 421 4.3.2" % short(text))
    c4.read_eof()
    p5 = ctx.track(Pop(srv.pop3_port))
    l = p5.readline()
    check(l is not None and l.startswith(b"-ERR"), "4th session (POP3) got %s, expected -ERR" % short(l))
    p5.read_eof()
    c1.expect("QUIT", 221)
    c1.read_eof()

    def slot():
        c = Smtp(srv.smtp_port)
        try:
            code, _ = c.reply()
            return code == 220
        finally:
            c.close()
    wait_for(slot, 3, "a free session slot after one client quit")
    p1.ok("CAPA")
    p1.multi()
    c3.expect("NOOP", 250)


@test()
def idle_timeout_421(ctx):
    srv = ctx.server(server={"timeout": "2"}).start()
    c = srv.smtp()
    p = srv.pop()
    t0 = time.monotonic()
    c.sock.settimeout(secs(12))
    code, text = c.reply()
    el = time.monotonic() - t0
    check(code == 421 and "4.4.2" in text, "idle SMTP session got %s, expected 421 4.4.2" % short(text))
    check(el >= 1.0, "SMTP idle timeout after only %.2fs (timeout = 2)" % el)
    c.read_eof()
    p.read_eof(timeout=12)
    el = time.monotonic() - t0
    check(el >= 1.0, "POP3 idle timeout after only %.2fs" % el)


def pipelined_batch(ctx, srv, with_ehlo):
    c = ctx.track(Smtp(srv.smtp_port))
    code, _ = c.reply()
    check(code == 220, "greeting")
    t1, t2 = tok(), tok()
    m1, m2 = make_msg(t1), make_msg(t2, to="bob@example.test")
    batch = b""
    if with_ehlo:
        batch += b"EHLO client.test\r\n"
    else:
        c.expect("EHLO client.test", 250)
    batch += (b"MAIL FROM:<pipe@client.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\n"
              b"RCPT TO:<bob@example.test>\r\nDATA\r\n" + dot_stuff(m1) + b".\r\n"
              b"MAIL FROM:<pipe@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + dot_stuff(m2) + b".\r\n"
              b"QUIT\r\n")
    c.sock.sendall(batch)  # one send()
    want = ([250] if with_ehlo else []) + [250, 250, 550, 250, 354, 250, 250, 250, 354, 250, 221]
    got = []
    for _ in want:
        got.append(c.reply()[0])
    check(got == want, "pipelined replies %s, expected %s" % (got, want))
    c.read_eof()
    check(stored_tokens(srv, "alice@example.test") == [t1], "alice has %s" % stored_tokens(srv, "alice@example.test"))
    check(sorted(stored_tokens(srv, "bob@example.test")) == sorted([t1, t2]), "bob has %s" % stored_tokens(srv, "bob@example.test"))


@test(modes=BOTH)
def pipelining_one_send(ctx, storage):
    pipelined_batch(ctx, ctx.server(storage=storage).start(), False)


@test()
def pipelining_with_ehlo_one_send(ctx):
    pipelined_batch(ctx, ctx.server().start(), True)


SMUGGLE = {"lf_dot_lf": b"\n.\n", "crlf_dot_cr": b"\r\n.\r", "lf_dot_crlf": b"\n.\r\n", "cr_dot_crlf": b"\r.\r\n",
           "crlf_dot_lf": b"\r\n.\n", "cr_dot_cr": b"\r.\r", "crlf_dot_crlf_nocr_end": b"\r\n.\n\r\n"}


def smuggle(ctx, seq):
    srv = ctx.server().start()
    c = srv.smtp()
    t, t2 = tok(), tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    payload = (b"From: <sender@client.test>\r\nSubject: first\r\nX-Test-Token: " + t.encode() + b"\r\n\r\nbody one" + seq +
               b"MAIL FROM:<evil@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
               b"Subject: smuggled\r\nX-Test-Token: " + t2.encode() + b"\r\n\r\nsmuggled body " + t2.encode() +
               b"\r\n.\r\n")
    c.send(payload)
    code, text = c.reply()
    if code == 421:
        c.read_eof()
    else:
        check(code == 250 or 500 <= code <= 599, "end of data: %s" % short(text))
        c.send("QUIT\r\n")
        rest = c.read_eof()
        check(rest.startswith(b"221") and rest.count(b"\r\n") == 1,
              "after the real end of data, QUIT got %s: the server saw extra commands (smuggling)" % short(rest))
    check(stored(srv, "bob@example.test") == [], "smuggled message delivered to bob: %s" % short(stored(srv, "bob@example.test")))
    a = stored(srv, "alice@example.test")
    check(len(a) <= 1, "alice got %d messages" % len(a))
    if code == 250:
        check(len(a) == 1, "250 but nothing stored for alice")
        check(("smuggled body " + t2).encode() in a[0], "the smuggled text is not part of the first message: %s" % short(a[0], 400))
    else:
        check(a == [], "message refused with %d but stored" % code)


for _name, _seq in SMUGGLE.items():
    def _mk(seq):
        return lambda ctx: smuggle(ctx, seq)
    TESTS.append(("smuggling_" + _name, _mk(_seq), {}, 30))


@test(modes=BOTH)
def path_traversal_refused(ctx, storage):
    srv = ctx.server(storage=storage).start()
    srv.deliver("alice@example.test")
    esc = "e2e_escape_" + tok()
    before = tree(srv.dir, skip={"server.log"})
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    bad = ["../x", '"../x"', "a/b", ".hidden", '"a\\\\b"', "a\\b", "..", '".."', '"a/../../x"',
           "../../../../../../../../../../tmp/" + esc, "x\x01y", '"x\\\x7fy"', "x/", "./alice"]
    for dom in ("example.test", "other.test"):  # other.test has a catch-all
        for lp in bad:
            c.expect5("RCPT TO:<%s@%s>" % (lp, dom))
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(make_msg(tok())) + b".\r\n")
    code, text = c.reply()
    check(code == 250, "DATA after refused recipients: %s" % short(text))
    after = tree(srv.dir, skip={"server.log"})
    newp = sorted(after - before)
    prefix = os.path.join("spool", "example.test", "alice")
    check(all(p.startswith(prefix) for p in newp), "paths created outside alice's mailbox: %s" % newp)
    check(not glob.glob("/tmp/" + esc + "*") and not glob.glob(os.path.join(ctx.dir, "**", esc + "*"), recursive=True),
          "escape file created")
    check(len(stored(srv, "alice@example.test")) == 2, "alice should have 2 messages")


@test(modes=BOTH)
def dot_stuffing_roundtrip(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t = tok()
    body = "\r\n".join([".", "..", ".x", "..y", "...", ". ", "a.", ".\t", "end", "."]) + "\r\n"
    msg = make_msg(t, body=body)
    c = srv.smtp()
    code, text = c.send_mail(SENDER, ["alice@example.test"], msg)
    check(code == 250, "DATA: %s" % short(text))
    disk = stored(srv, "alice@example.test")
    check(len(disk) == 1 and disk[0].endswith(body.replace("\r\n", "\n").encode()),
          "stored body is not the unstuffed text: %s" % short(disk[0][-120:] if disk else None))
    got = srv.fetch("alice@example.test")
    check_message(got[0]["data"], msg)
    # also with poplib
    p = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=secs(10))
    try:
        p.user("alice@example.test")
        p.pass_("Passw0rd1")
        _, lines, octets = p.retr(1)
        check(b"\r\n".join(lines) + b"\r\n" == got[0]["data"], "poplib RETR differs from raw RETR")
        soft(octets == got[0]["size"], "poplib counted %d octets, LIST says %d" % (octets, got[0]["size"]))
        p.quit()
    finally:
        p.close()


@test(modes=BOTH)
def from_lines_roundtrip(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t = tok()
    body = "From here\r\n>From there\r\n>>From x\r\nFrom\r\n From y\r\nFromage\r\n\r\nFrom the start of a paragraph\r\n"
    msg = make_msg(t, body=body)
    srv.send(["alice@example.test"], msg)
    t2, m2 = srv.deliver()
    got = srv.fetch("alice@example.test")
    check(len(got) == 2, "expected 2 messages, got %d" % len(got))
    check_message(got[0]["data"], msg)
    check_message(got[1]["data"], m2)
    if storage == "mbox":
        raw = read(mbox_path(srv, "alice@example.test"))
        for q in (b"\n>From here\n", b"\n>>From there\n", b"\n>>>From x\n", b"\nFrom\n", b"\n From y\n", b"\n>From the start"):
            check(q in raw, "mbox lacks mboxrd-quoted line %s" % short(q))
        check(len([l for l in raw.split(b"\n") if l.startswith(b"From ")]) == 2, "mbox has extra 'From ' separator lines")


@test(modes=BOTH)
def eight_bit_and_mail_params(ctx, storage):
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    t = tok()
    body = "Gr\u00fc\u00dfe \u2014 \u00fcn\u00ef\u00e7\u00f6d\u00e9 \u65e5\u672c\r\n"
    msg = make_msg(t, body=body)
    c.expect("MAIL FROM:<%s> BODY=8BITMIME SIZE=%d" % (SENDER, len(msg)), 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(msg) + b".\r\n")
    code, text = c.reply()
    check(code == 250, "8BITMIME DATA: %s" % short(text))
    c.expect("MAIL FROM:<%s> BODY=7BIT" % SENDER, 250)
    c.expect("RSET", 250)
    c.expect5("MAIL FROM:<%s> NOSUCHPARAM=1" % SENDER)
    got = srv.fetch("alice@example.test")
    check_message(got[0]["data"], msg)


@test(modes=BOTH)
def deliver_smtplib_read_poplib(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t = tok()
    msg = make_msg(t)
    refused = srv.send(["alice@example.test"], msg)
    check(refused == {}, "refused %s" % refused)
    p = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=secs(10))
    try:
        p.user("alice@example.test")
        p.pass_("Passw0rd1")
        count, total = p.stat()
        check(count == 1, "STAT count %d" % count)
        _, lines, octets = p.retr(1)
        data = b"\r\n".join(lines) + b"\r\n"
        check_message(data, msg)
        soft(octets == total, "RETR gave %d octets, STAT says %d" % (octets, total))
        uid = p.uidl(1)
        check(uid.startswith(b"+OK 1 "), "UIDL 1: %s" % short(uid))
        p.quit()
    finally:
        p.close()


@test(modes=BOTH)
def received_and_return_path(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t, msg = srv.deliver()
    c = srv.smtp()
    t2 = tok()
    m2 = make_msg(t2)
    code, text = c.send_mail("", ["alice@example.test"], m2)  # null reverse-path (a bounce)
    check(code == 250, "MAIL FROM:<> delivery: %s" % short(text))
    got = {g["token"]: g["data"] for g in srv.fetch("alice@example.test")}
    check_message(got[t], msg)
    check_message(got[t2], m2, sender="")
    rec = header(got[t], "Received")
    check("127.0.0.1" in rec, "Received header lacks the client address literal: %s" % rec)
    check("test.local" in rec, "Received header lacks the server hostname: %s" % rec)
    for d in stored(srv, "alice@example.test"):
        soft(d.startswith(b"Return-Path: <"), "stored message does not start with Return-Path: %s" % short(d[:80]))
        soft(d.split(b"\n")[1].startswith(b"Received: from "), "stored second line: %s" % short(d.split(b"\n")[1]))


def curl(*args, input=None, timeout=20):
    if not shutil.which("curl"):
        raise TestFailure("curl is not installed")
    return subprocess.run(["curl", "-sS", "--max-time", str(int(secs(timeout)))] + list(args), input=input,
                          capture_output=True, timeout=secs(timeout + 5))


@test(modes=BOTH)
def deliver_curl_read_curl(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t = tok()
    msg = make_msg(t, body="curl body\r\n.leading dot\r\n..two dots\r\nlast\r\n")
    f = os.path.join(ctx.dir, "mail.eml")
    with open(f, "wb") as fh:
        fh.write(msg)
    r = curl("smtp://127.0.0.1:%d/client.test" % srv.smtp_port, "--mail-from", SENDER, "--mail-rcpt", "alice@example.test",
             "--mail-rcpt", "bob@example.test", "--upload-file", f)
    check(r.returncode == 0, "curl smtp upload: exit %d %s" % (r.returncode, short(r.stderr)))
    r = curl("pop3://127.0.0.1:%d/1" % srv.pop3_port, "-u", "alice@example.test:Passw0rd1")
    check(r.returncode == 0, "curl pop3 RETR: exit %d %s" % (r.returncode, short(r.stderr)))
    check_message(r.stdout, msg, what="curl RETR")
    r = curl("pop3://127.0.0.1:%d/" % srv.pop3_port, "-u", "bob@example.test:Passw0rd2", "--sasl-ir")
    check(r.returncode == 0, "curl pop3 LIST: exit %d %s" % (r.returncode, short(r.stderr)))
    m = re.match(rb"^1 (\d+)\r?\n$", r.stdout)
    check(m, "curl pop3 LIST output %s" % short(r.stdout))
    r2 = curl("pop3://127.0.0.1:%d/1" % srv.pop3_port, "-u", "bob@example.test:Passw0rd2")
    check(r2.returncode == 0, "curl pop3 RETR: %s" % short(r2.stderr))
    soft(int(m.group(1)) == len(r2.stdout), "LIST size %s but curl RETR got %d octets"
          % (m.group(1), len(r2.stdout)))
    r = curl("pop3://127.0.0.1:%d/" % srv.pop3_port, "-u", "bob@example.test:Passw0rd2", "-X", "UIDL")
    check(r.returncode == 0 and re.match(rb"^1 [\x21-\x7e]{1,70}\r?\n$", r.stdout), "curl UIDL: %s %s" % (short(r.stdout), short(r.stderr)))
    r = curl("pop3://127.0.0.1:%d/1" % srv.pop3_port, "-u", "bob@example.test:wrongpass")
    check(r.returncode != 0, "curl pop3 with a wrong password succeeded")


@test(modes=BOTH)
def multiple_recipients(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t = tok()
    msg = make_msg(t)
    rc = ["alice@example.test", "bob@example.test", "nobody@example.test", "carol@other.test"]
    refused = srv.send(rc, msg)
    check(list(refused) == ["nobody@example.test"] and refused["nobody@example.test"][0] == 550,
          "refused: %s" % refused)
    for r in ("alice@example.test", "bob@example.test", "carol@other.test"):
        got = srv.fetch(r)
        check(len(got) == 1 and got[0]["token"] == t, "%s got %s" % (r, [g["token"] for g in got]))
        check_message(got[0]["data"], msg)
    check(stored(srv, "carol@example.test") == [], "carol@example.test got a copy meant for carol@other.test")


@test(modes=BOTH)
def alias_expansion_dedup(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t1, _ = srv.deliver("team@example.test")
    t2, _ = srv.deliver("dup@example.test")  # dup = alice, bob, alice
    check(stored_tokens(srv, "alice@example.test") == [t1, t2] or sorted(stored_tokens(srv, "alice@example.test")) == sorted([t1, t2]),
          "alice has %s, expected one copy each of %s" % (stored_tokens(srv, "alice@example.test"), [t1, t2]))
    check(sorted(stored_tokens(srv, "bob@example.test")) == sorted([t1, t2]),
          "bob has %s, expected %s" % (stored_tokens(srv, "bob@example.test"), [t1, t2]))
    check(not os.path.exists(os.path.join(srv.spool, "example.test", "team")) and
          not os.path.exists(os.path.join(srv.spool, "example.test", "team.mbox")), "a mailbox was created for the alias")


@test()
def alias_member_also_rcpt_one_copy(ctx):
    srv = ctx.server().start()
    t = tok()
    refused = srv.send(["team@example.test", "alice@example.test", "ALICE@example.test"], make_msg(t))
    check(refused == {}, "refused %s" % refused)
    check(stored_tokens(srv, "alice@example.test") == [t], "alice (in team and named directly) has %s, expected one copy"
          % stored_tokens(srv, "alice@example.test"))
    check(stored_tokens(srv, "bob@example.test") == [t], "bob has %s" % stored_tokens(srv, "bob@example.test"))


@test(modes=BOTH)
def catch_all(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t1, _ = srv.deliver("whoever@other.test")
    t2, _ = srv.deliver("Some.One@Other.Test")
    check(sorted(stored_tokens(srv, "dave@other.test")) == sorted([t1, t2]), "dave (catch-all) has %s"
          % stored_tokens(srv, "dave@other.test"))
    names = os.listdir(os.path.join(srv.spool, "other.test"))
    check(not [n for n in names if "whoever" in n or "some" in n], "catch-all created mailboxes: %s" % names)
    check(srv.rcpt_code("whoever@example.test")[0] == 550, "example.test has no catch-all but accepted whoever")


@test(modes=BOTH)
def postmaster_without_domain(ctx, storage):
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    t = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<Postmaster>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(make_msg(t, to="Postmaster")) + b".\r\n")
    code, text = c.reply()
    check(code == 250, "DATA: %s" % short(text))
    t2, _ = srv.deliver("postmaster@other.test")
    check(stored_tokens(srv, "alice@example.test") == [t], "first domain's postmaster (alice) has %s"
          % stored_tokens(srv, "alice@example.test"))
    check(stored_tokens(srv, "dave@other.test") == [t2], "postmaster@other.test (dave) has %s" % stored_tokens(srv, "dave@other.test"))


@test(modes=BOTH)
def names_lower_cased(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t, msg = srv.deliver("ALICE@Example.TEST")
    check(stored_tokens(srv, "alice@example.test") == [t], "ALICE@Example.TEST not stored for alice")
    names = tree(srv.spool)
    check(all(n == n.lower() or "/new/" in n or "/cur/" in n or "/tmp/" in n for n in names),
          "upper-case names in the spool: %s" % sorted(names))
    p = srv.pop("Alice@Example.Test", "Passw0rd1")
    check(p.stat()[0] == 1, "login with upper-case address sees no mail")
    p.quit()


# ---- storage specifics


@test()
def maildir_layout_and_sizes(ctx):
    srv = ctx.server(storage="maildir").start()
    toks = [srv.deliver(body="line %d\r\n.dot\r\n" % i)[0] for i in range(2)]
    base = os.path.join(srv.spool, "example.test", "alice")
    for sub in ("tmp", "new", "cur"):
        check(os.path.isdir(os.path.join(base, sub)), "maildir lacks %s/" % sub)
    check(os.listdir(os.path.join(base, "tmp")) == [], "tmp/ not empty after delivery")
    files = maildir_files(srv, "alice@example.test", ("new",))
    check(sorted(token_of(read(f)) for f in files) == sorted(toks), "new/ holds %s" % [os.path.basename(f) for f in files])
    sizes = {}
    for p in files:
        data = read(p)
        m = re.search(r",S=(\d+),W=(\d+)", os.path.basename(p))
        check(m, "file name %s lacks ,S=<n>,W=<n>" % os.path.basename(p))
        check(b"\r" not in data, "stored file has CR characters (expected LF line ends)")
        soft(int(m.group(1)) == len(data), "S=%s but the file has %d bytes" % (m.group(1), len(data)))
        w = len(data.replace(b"\n", b"\r\n"))
        soft(int(m.group(2)) == w, "W=%s but the CRLF size is %d" % (m.group(2), w))
        sizes[token_of(data)] = w
    for g in srv.fetch("alice@example.test"):
        soft(g["size"] == sizes[g["token"]], "POP3 size %d != W=%d" % (g["size"], sizes[g["token"]]))


@test()
def mbox_format(ctx):
    srv = ctx.server(storage="mbox").start()
    toks = [srv.deliver()[0] for _ in range(2)]
    raw = read(mbox_path(srv, "alice@example.test"))
    check(raw.startswith(b"From "), "mbox does not start with a From line: %s" % short(raw[:80]))
    check(b"\r" not in raw, "mbox has CR characters")
    msgs = parse_mbox(raw)
    check([token_of(m) for _, m in msgs] == toks, "mbox holds %s, expected %s in order" % ([token_of(m) for _, m in msgs], toks))
    uids = []
    for frm, m in msgs:
        soft(frm.startswith(b"From %s " % SENDER.encode()), "mbox separator line %s lacks the envelope sender" % short(frm))
        soft(m.startswith(b"Return-Path: <%s>\n" % SENDER.encode()), "mbox message starts with %s" % short(m[:60]))
        u = header(m, "X-UIDL")
        check(u, "mbox message without X-UIDL header: %s" % short(m[:300]))
        uids.append(u)
    check(len(set(uids)) == 2, "X-UIDL values not unique: %s" % uids)
    got = srv.fetch("alice@example.test")
    check(sorted(g["uid"] for g in got) == sorted(uids), "UIDL %s differs from X-UIDL %s" % ([g["uid"] for g in got], uids))


# =============================================================================================
# AUTH and submission


@test()
def auth_plain_login_235(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235, "2.7.0")
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 503)  # only once per session
    c = srv.smtp()
    c.expect("AUTH PLAIN", 334)
    c.expect(plain("bob@example.test", "Passw0rd2"), 235, "2.7.0")
    c = srv.smtp()
    t = c.expect("AUTH LOGIN", 334)
    c.expect(b64("alice@example.test"), 334)
    c.expect(b64("Passw0rd1"), 235, "2.7.0")
    c = srv.smtp()
    c.expect("AUTH LOGIN " + b64("carol@other.test"), 334)
    c.expect(b64("Passw0rd4"), 235, "2.7.0")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10)) as s:
        s.ehlo()
        s.user, s.password = "dave@other.test", "Passw0rd5"
        code, _ = s.auth("LOGIN", s.auth_login)
        check(code == 235, "smtplib AUTH LOGIN: %d" % code)
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10)) as s:
        code, _ = s.login("bob@example.test", "Passw0rd2")
        check(code == 235, "smtplib login: %d" % code)


@test()
def auth_bad_password_535(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    t0 = time.monotonic()
    c.expect("AUTH PLAIN " + plain("alice@example.test", "wrong"), 535, "5.7.8")
    check(time.monotonic() - t0 >= 0.5, "no delay after a failed AUTH (%.2fs)" % (time.monotonic() - t0))
    c.expect("AUTH LOGIN", 334)
    c.expect(b64("nosuch@example.test"), 334)
    c.expect(b64("Passw0rd1"), 535, "5.7.8")
    c.expect("NOOP", 250)
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)


@test()
def auth_unknown_mechanism_504(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("AUTH CRAM-MD5", 504, "5.5.4")
    c.expect("AUTH X-NOSUCH abc", 504, "5.5.4")
    c.expect("NOOP", 250)


@test()
def auth_three_failures_disconnect(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    codes = []
    for i in range(3):
        code, text = c.cmd("AUTH PLAIN " + plain("alice@example.test", "bad%d" % i))
        codes.append(code)
        if code == 421:
            break
    rest = c.read_eof(timeout=8)
    codes += [int(l[:3]) for l in rest.split(b"\r\n") if l[:3].isdigit()]
    check(codes[:2] == [535, 535], "replies to bad AUTH: %s" % codes)
    check(421 in codes and len(codes) <= 4, "after 3 failures expected 421 and close, got %s" % codes)


@test()
def submission_requires_auth(ctx):
    srv = ctx.server().start()
    c = srv.smtp(port=srv.sub_port)
    c.expect("MAIL FROM:<alice@example.test>", 530, "5.7.0")
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)
    t = tok()
    code, text = c.send_mail("alice@example.test", ["bob@example.test"], make_msg(t, sender="alice@example.test"))
    check(code == 250, "submission after AUTH: %s" % short(text))
    check(stored_tokens(srv, "bob@example.test") == [t], "bob has %s" % stored_tokens(srv, "bob@example.test"))
    with smtplib.SMTP("127.0.0.1", srv.sub_port, local_hostname="client.test", timeout=secs(10)) as s:
        s.login("bob@example.test", "Passw0rd2")
        check(s.sendmail("bob@example.test", ["alice@example.test"], make_msg(tok())) == {}, "smtplib submission refused")


@test()
def plaintext_auth_no(ctx):
    srv = ctx.server(server={"plaintext_auth": "no"}).start()
    c = srv.smtp()
    code, text = c.cmd("EHLO client.test")
    check(not any(l[4:].upper().startswith("AUTH") for l in text.split("\n")), "EHLO advertises AUTH: %s" % short(text))
    code, text = c.cmd("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"))
    check(500 <= code <= 599, "AUTH with plaintext_auth = no: %s" % short(text))
    p = srv.pop()
    r = p.cmd("USER alice@example.test")
    if r.startswith(b"+OK"):
        p.err("PASS Passw0rd1")
    p = srv.pop()
    p.err("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"))
    c = srv.smtp(port=srv.sub_port)
    c.expect("MAIL FROM:<alice@example.test>", 530)


@test()
def ehlo_resets_transaction(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("EHLO client.test", 250)  # RFC 5321 4.1.4: like RSET
    c.expect("DATA", 503, "5.5.1")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)


@test()
def auth_plain_authzid_mismatch(ctx):
    """AUTH PLAIN with alice's credentials but authzid bob must not log in as bob (RFC 4616)."""
    srv = ctx.server().start()
    srv.deliver("bob@example.test")
    forged = b64("bob@example.test\0alice@example.test\0Passw0rd1")
    c = srv.smtp()
    code, text = c.cmd("AUTH PLAIN " + forged)
    check(code != 235, "SMTP AUTH PLAIN as bob with alice's password: %s" % short(text))
    c = srv.smtp()
    c.expect("AUTH PLAIN " + b64("alice@example.test\0alice@example.test\0Passw0rd1"), 235)
    p = srv.pop()
    r = p.cmd("AUTH PLAIN " + forged)
    if r.startswith(b"+OK"):
        n, _ = p.stat()
        raise TestFailure("POP3 AUTH PLAIN with authzid bob and alice's password logged in (STAT %d)" % n)
    check(r.startswith(b"-ERR"), "POP3 forged authzid: %s" % short(r))


@test()
def auth_cancel_501(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("AUTH LOGIN", 334)
    c.expect("*", 501)  # RFC 4954 4: the client cancels
    c.expect("AUTH PLAIN", 334)
    c.expect("*", 501)
    c.expect("NOOP", 250)
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)
    p = srv.pop()
    r = p.cmd("AUTH PLAIN")
    check(r.startswith(b"+"), "POP3 AUTH PLAIN: %s" % short(r))
    p.err("*")  # RFC 5034 4
    p.login("alice@example.test", "Passw0rd1")


LONG_USER = "firstname.middlename.lastname"  # with @example.test: 42 octets, like many real addresses
LONG_PW = "Correct-Horse-Battery-Staple-Passw0rd-2024!"


@test()
def long_credentials(ctx):
    srv = ctx.server(domains=DOMAINS.replace("carol = Passw0rd3", "%s = %s" % (LONG_USER, LONG_PW)))
    srv.start()
    addr = LONG_USER + "@example.test"
    t, _ = srv.deliver(addr)
    p = srv.pop(addr, LONG_PW)
    check(p.stat()[0] == 1, "STAT after a long USER/PASS login")
    p.quit()
    p = srv.pop()
    p.ok("AUTH PLAIN " + plain(addr, LONG_PW))
    p.quit()
    p = srv.pop()
    r = p.cmd("AUTH PLAIN")
    check(r.startswith(b"+"), "POP3 AUTH PLAIN: %s" % short(r))
    p.ok(plain(addr, LONG_PW))
    p.quit()
    c = srv.smtp()
    c.expect("AUTH PLAIN " + plain(addr, LONG_PW), 235)
    c = srv.smtp()
    c.expect("AUTH LOGIN " + b64(addr), 334)
    c.expect(b64(LONG_PW), 235)


@test(modes=BOTH)
def dropped_during_data_stores_nothing(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t0, _ = srv.deliver()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("RCPT TO:<bob@example.test>", 250)
    c.expect("DATA", 354)
    t = tok()
    c.send(make_msg(t, body="x" * 500 + "\r\n" + "half a message\r\n" * 200))
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    srv.deliver()  # the server carries on; this also orders the checks after the dropped session
    check(t not in stored_tokens(srv, "alice@example.test"), "an interrupted DATA was stored for alice")
    check(stored(srv, "bob@example.test") == [], "an interrupted DATA was stored for bob")
    got = srv.fetch("alice@example.test")
    check(len(got) == 2 and t not in [g["token"] for g in got], "alice sees %s" % [g["token"] for g in got])
    for g in got:
        check(b"half a message" not in g["data"], "part of the interrupted message leaked into another one")


@test()
def timeout_during_data_stores_nothing(ctx):
    srv = ctx.server(server={"timeout": "2"}).start()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    t = tok()
    c.send(make_msg(t))  # and then nothing: no final dot
    c.sock.settimeout(secs(12))
    code, text = c.reply()
    check(code == 421, "stalled DATA got %s, expected 421" % short(text))
    c.read_eof()
    check(stored(srv, "alice@example.test") == [], "a timed-out DATA was stored")


@test()
def sigterm_finishes_in_flight_data(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    t = tok()
    msg = make_msg(t, body="first part\r\n" * 50 + "second part\r\n")
    half = msg.index(b"second part")
    c.send(msg[:half])
    size0 = len(srv.log_text())
    srv.proc.send_signal(STOP_SIGNAL)
    wait_for(lambda: len(srv.log_text()) > size0, 3, "a log line about stopping")
    try:  # stop accepting: a new client is refused or closed, never greeted
        n = Smtp(srv.smtp_port)
        try:
            n.sock.settimeout(secs(3))
            l = n.readline()
            check(l is None or not l.startswith(b"220"), "a new client was greeted after SIGTERM: %s" % short(l))
        finally:
            n.close()
    except (ConnectionRefusedError, ConnectionResetError):
        pass
    c.send(msg[half:] + b".\r\n")
    code, text = c.reply()
    check(code == 250, "DATA in flight at SIGTERM: %s, expected 250" % short(text))
    try:
        rc = srv.proc.wait(timeout=secs(10))
    except subprocess.TimeoutExpired:
        raise TestFailure("server still running 10s after SIGTERM once the in-flight message was done")
    check(rc == 0, "exit status %s after SIGTERM" % rc)
    check(stored_tokens(srv, "alice@example.test") == [t], "message finished after SIGTERM not stored")



@test(limit=240)
def big_message_to_100_mailboxes_whole(ctx):
    """Issue 14: a 50 MB message to 100 local mailboxes that have no Maildir yet: its file is written
    back to disk while it arrives, the copies are made a few per loop turn and their folders fsynced a
    few per turn; after the 250 each of the 100 holds the message once, whole (every copy's size; the
    text of the first, a middle and the last copy compared byte for byte with what was sent)."""
    r = run_cli(["passwd"], input="Passw0rdR\n")
    hashed = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    check(hashed.startswith("$"), "passwd: exit %d, %s" % (r.returncode, short(r.stdout + r.stderr)))
    rcpts = ["r%03d@many.test" % i for i in range(1, 101)]
    domains = (DOMAINS + "\n[alias many.test]\npostmaster = alice@example.test\n\n[domain many.test]\n" +
               "".join("%s = %s\n" % (a.split("@")[0], hashed) for a in rcpts))
    srv = ctx.server(domains=domains, server={"max_message_size": "60M", "max_recipients": "100"}).start()
    t = tok()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-big-message-line\r\n"
    msg = (b"From: <big@client.test>\r\nTo: <many@many.test>\r\nSubject: 50 MB\r\nX-Test-Token: %s\r\n\r\n"
           % t.encode()) + line * (50 * 1000 * 1000 // len(line))
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(120)) as s:
        refused = s.sendmail(SENDER, rcpts, msg)
    check(refused == {}, "refused: %s" % refused)
    want = msg.replace(b"\r\n", b"\n")
    size = None
    for a in rcpts:
        files = maildir_files(srv, a)
        check(len(files) == 1, "%s holds %d messages, expected 1" % (a, len(files)))
        size = size or os.path.getsize(files[0])
        check(os.path.getsize(files[0]) == size and size > len(want),
              "%s: a copy of %d bytes, the first %d, the message %d" % (a, os.path.getsize(files[0]), size, len(want)))
    for a in (rcpts[0], rcpts[49], rcpts[-1]):
        with open(maildir_files(srv, a)[0], "rb") as f:
            data = f.read()
        check(data.endswith(want) and data.startswith(b"Return-Path: <%s>\n" % SENDER.encode()),
              "%s: the copy is not the message sent (%d bytes)" % (a, len(data)))
