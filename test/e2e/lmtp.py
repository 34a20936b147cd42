"""Inbound CHUNKING (RFC 3030: BDAT) and the LMTP listener (RFC 2033)."""
import os
import re
import shutil
import smtplib
import socket
import stat
import subprocess

from .harness import (BOTH, PASSWORDS, SENDER, TESTS, WINDOWS, Smtp, b64, check, check_message, dot_stuff, free_ports,
                      make_msg, need_root, run_cli, secs, short, stored, stored_tokens, test, tok, token_of, wait_for)
from .cli import expect_check_error
from .hardening import FAULT_TESTS, fault_fired, fault_last_round, fault_start
from .peers import PostfixInstance


# =============================================================================================
# BDAT (RFC 3030) through raw sockets


def after_trace(data):
    """A stored message without the lines mailsrv put on top (Return-Path:, Received:): from the client's From: on."""
    i = data.find(b"From: <")
    check(i > 0, "stored message has no From: header: %s" % short(data))
    return data[i:]


def bdat(c, chunk, last=False):
    """One BDAT chunk; returns its (code, text)."""
    c.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
    return c.reply()


@test(modes=BOTH)
def bdat_chunks_stored_as_data(ctx, storage):
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    code, text = c.cmd("EHLO client.test")
    check("CHUNKING" in [l[4:].strip().upper() for l in text.split("\n")[1:]], "EHLO lacks CHUNKING: %s" % short(text))
    body = "line one\r\n.a line with a leading dot\r\n..two dots\r\nend\r\n"
    t1, t2, t3 = tok(), tok(), tok()
    m1, m2, m3 = (make_msg(t, body=body) for t in (t1, t2, t3))
    code, text = c.send_mail(SENDER, ["alice@example.test"], m1)
    check(code == 250, "DATA: %s" % short(text))
    # the same text in BDAT chunks, one of them cut between the CR and the LF of a line end
    cut = m2.index(b"\r\n.a line") + 1
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    for part in (m2[:cut], m2[cut:cut + 7]):
        code, text = bdat(c, part)
        check(code == 250, "BDAT %d: %s" % (len(part), short(text)))
    code, text = bdat(c, m2[cut + 7:], last=True)
    check(code == 250 and "delivered as" in text, "BDAT LAST: %s" % short(text))
    # pipelined: MAIL, RCPT, three BDATs and a NOOP in one write (RFC 3030 4.2), one reply each in order
    parts = [m3[:10], m3[10:200], m3[200:]]
    c.send(("MAIL FROM:<%s>\r\nRCPT TO:<alice@example.test>\r\n" % SENDER).encode() +
           b"".join(b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == 2 else b"") + p for i, p in enumerate(parts)) + b"NOOP\r\n")
    codes = [c.reply() for _ in range(6)]
    check([k for k, _ in codes] == [250] * 6, "pipelined BDAT transaction: %s" % short(codes, 600))
    check("octets received" in codes[2][1] and "delivered as" in codes[4][1], "pipelined replies: %s" % short(codes, 600))
    c.expect("QUIT", 221)
    got = stored(srv, "alice@example.test")
    check([m for m in stored_tokens(srv, "alice@example.test")] == [t1, t2, t3], "stored: %s" % stored_tokens(srv, "alice@example.test"))
    want = after_trace(got[0]).replace(t1.encode(), b"T")
    for i, t in ((1, t2), (2, t3)):
        check(after_trace(got[i]).replace(t.encode(), b"T") == want,
              "BDAT message %d stored as %s, DATA's as %s" % (i, short(got[i], 400), short(got[0], 400)))
    check(b"\n.a line with a leading dot\n..two dots\n" in got[1], "BDAT text was dot-unstuffed: %s" % short(got[1], 400))
    check(b"\r" not in got[1], "stored with CR: %s" % short(got[1], 400))
    # a line over 998 octets in a chunk that is not the last: the chunk is taken (250 ... octets
    # received), and the message ends only with the LAST one, whole (it was once delivered cut
    # after the first chunk, and the LAST chunk refused with 503)
    t4, long = tok(), "x" * 1500
    m4 = make_msg(t4, body="before\r\n%s\r\nafter the long line\r\n" % long)
    cut = m4.index(b"after the long line")
    c = srv.smtp()
    c.cmd("EHLO client.test")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, m4[:cut])
    check(code == 250 and "octets received" in text, "BDAT with a long line, not LAST: %s" % short(text))
    code, text = bdat(c, m4[cut:], last=True)
    check(code == 250 and "delivered as" in text, "BDAT LAST after a long line: %s" % short(text))
    c.expect("QUIT", 221)
    got = stored(srv, "alice@example.test")
    check(len(got) == 4 and ("\n%s\nafter the long line\n" % long).encode() in got[3],
          "the long-line message stored as %s" % short(got[-1][-200:], 300))


@test(modes=BOTH)
def bdat_last_empty_and_unterminated(ctx, storage):
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    t = tok()
    msg = make_msg(t, body="no line end at the end")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, msg)
    check(code == 250, "BDAT: %s" % short(text))
    code, text = bdat(c, b"", last=True)  # BDAT 0 LAST ends it
    check(code == 250 and "delivered as" in text, "BDAT 0 LAST: %s" % short(text))
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<bob@example.test>", 250)
    code, text = bdat(c, b"", last=True)  # an empty message: only mailsrv's own lines
    check(code == 250, "BDAT 0 LAST alone: %s" % short(text))
    c.expect("QUIT", 221)
    got = stored(srv, "alice@example.test")
    check(len(got) == 1 and got[0].endswith(b"\n\nno line end at the end\n"), "stored: %s" % short(got, 400))
    got = stored(srv, "bob@example.test")
    check(len(got) == 1 and got[0].startswith(b"Return-Path: <%s>\n" % SENDER.encode()) and b"From: " not in got[0],
          "empty BDAT message stored as %s" % short(got, 400))


@test(modes=BOTH)
def bdat_refusals_keep_in_step(ctx, storage):
    srv = ctx.server(storage=storage).start()  # max_message_size 100K
    c = srv.smtp()
    evil = b"QUIT\r\nMAIL FROM:<x@y.test>\r\n"  # octets of a refused chunk are never read as commands
    code, text = bdat(c, evil)
    check(code == 503, "BDAT without MAIL: %s" % short(text))
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    code, text = bdat(c, evil, last=True)
    check(code == 503, "BDAT without RCPT: %s" % short(text))
    c.expect("RCPT TO:<alice@example.test>", 250)
    t1 = tok()
    code, text = bdat(c, make_msg(t1))
    check(code == 250, "BDAT: %s" % short(text))
    c.expect("DATA", 503)  # RFC 3030 2: not in a BDAT transaction
    c.expect("RCPT TO:<bob@example.test>", 503)
    c.expect("MAIL FROM:<%s>" % SENDER, 503)
    c.expect("RSET", 250)  # the chunks are dropped
    code, text = bdat(c, b"x\r\n", last=True)
    check(code == 503, "BDAT after RSET: %s" % short(text))
    # too big: 552 once the octets are read, and the session goes on
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    big = (b"y" * 70 + b"\r\n") * 800  # 57 KB a chunk
    code, text = bdat(c, big)
    check(code == 250, "first chunk: %s" % short(text))
    code, text = bdat(c, big)
    check(code == 552 and "5.3.4" in text, "chunk over max_message_size: %s" % short(text))
    code, text = bdat(c, big, last=True)  # the transaction is over (the client should not send it)
    check(code == 503, "BDAT after 552: %s" % short(text))
    c.expect("NOOP", 250)
    t2 = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, make_msg(t2), last=True)
    check(code == 250, "BDAT LAST after the refusals: %s" % short(text))
    # a size that is not a number: the octets cannot be found, the session ends
    code, text = c.cmd("BDAT 12x")
    check(code == 501, "BDAT 12x: %s" % short(text))
    c.read_eof()
    check(stored_tokens(srv, "alice@example.test") == [t2], "stored: %s" % stored_tokens(srv, "alice@example.test"))
    check(stored_tokens(srv, "bob@example.test") == [], "bob got %s" % stored_tokens(srv, "bob@example.test"))


@test(modes=BOTH)
def bdat_alias_and_capture(ctx, storage):
    """BDAT LAST ends as DATA's final dot does: an alias's members each get the message, and capture mode
    stores it for any address (a message for one recipient names it in Received: ... for <>)."""
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    t = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<team@example.test>", 250)
    code, text = bdat(c, make_msg(t, to="team@example.test"), last=True)
    check(code == 250, "BDAT LAST to an alias: %s" % short(text))
    c.expect("QUIT", 221)
    for a in ("alice@example.test", "bob@example.test"):
        check(stored_tokens(srv, a) == [t], "%s: %s" % (a, stored_tokens(srv, a)))
    check(b"for <team@example.test>" in stored(srv, "alice@example.test")[0], "Received: lacks for <team@example.test>")
    cap = ctx.server(storage=storage, server={"capture": "yes"}).start()
    c = cap.smtp()
    t2 = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<Someone@Capture.Example>", 250)
    c.expect("RCPT TO:<other@else.where>", 250)
    code, text = bdat(c, make_msg(t2)[:50])
    check(code == 250, "BDAT in capture mode: %s" % short(text))
    code, text = bdat(c, make_msg(t2)[50:], last=True)
    check(code == 250, "BDAT LAST in capture mode: %s" % short(text))
    c.expect("QUIT", 221)
    for a in ("someone@capture.example", "other@else.where"):
        check(stored_tokens(cap, a) == [t2], "capture %s: %s" % (a, stored_tokens(cap, a)))


@test(modes=BOTH)
def bdat_disconnect_mid_chunk(ctx, storage):
    srv = ctx.server(storage=storage).start()
    tmp = os.path.join(srv.spool, ".tmp")
    c = srv.smtp()
    t1 = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, make_msg(t1), last=True)
    check(code == 250, "BDAT LAST: %s" % short(text))
    t2 = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, make_msg(t2)[:100])
    check(code == 250, "BDAT: %s" % short(text))
    c.send(b"BDAT 5000 LAST\r\n" + make_msg(t2)[100:])
    wait_for(lambda: os.listdir(tmp), 10, "the message's file in spool/.tmp")
    c.close()
    wait_for(lambda: "connection lost during DATA" in srv.log_text(), 10, "the server to see the client go")
    # the line is logged just before the file is removed (an emulated ARM run once saw it between)
    wait_for(lambda: os.listdir(tmp) == [], 10, "spool/.tmp to be emptied after the client went")
    check(stored_tokens(srv, "alice@example.test") == [t1], "stored: %s" % stored_tokens(srv, "alice@example.test"))


# =============================================================================================
# LMTP (RFC 2033): a listener for another MTA's final delivery


def lmtp_server(ctx, storage="maildir", path=None, **keys):
    """A server with an lmtp listener on a free loopback port (and path, a Unix socket, if given)."""
    port = free_ports(1)[0]
    srv = ctx.server(storage=storage, server=dict({"lmtp": "127.0.0.1:%d" % port + (", " + path if path else "")}, **keys))
    srv.lmtp_port = port
    return srv


def lmtp_conn(srv):
    c = srv.ctx.track(Smtp(srv.lmtp_port))
    code, text = c.reply()
    check(code == 220 and "LMTP" in text, "LMTP greeting: %s" % short(text))
    return c


def replies(c, n):
    return [c.reply() for _ in range(n)]


@test(modes=BOTH)
def lmtp_one_reply_per_recipient(ctx, storage):
    srv = lmtp_server(ctx, storage, max_message_size="20K").start()
    c = lmtp_conn(srv)
    c.expect("EHLO client.test", 500)  # RFC 2033 4.1
    c.expect("HELO client.test", 500)
    text = c.expect("LHLO client.test", 250)
    kws = [l[4:].strip().upper() for l in text.split("\n")[1:]]
    for need in ("PIPELINING", "SIZE 20480", "8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES"):
        check(need in kws, "LHLO lacks %s: %s" % (need, kws))
    check(not [k for k in kws if k.startswith("AUTH") or k == "STARTTLS"], "LHLO offers AUTH or STARTTLS: %s" % kws)
    c.expect("AUTH PLAIN %s" % b64("\0alice@example.test\0" + PASSWORDS["alice@example.test"]), 502)
    t = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<bob@example.test>", 250)
    c.expect("RCPT TO:<nobody@example.test>", 550, "5.1.1")
    c.expect("RCPT TO:<someone@remote.test>", 550, "5.1.2")  # never relayed, even from loopback
    c.expect("RCPT TO:<Alice@Example.test>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(make_msg(t)) + b".\r\n")
    got = replies(c, 2)  # one per accepted RCPT, in RCPT order (RFC 2033 4.2)
    check([k for k, _ in got] == [250, 250], "after the final dot: %s" % short(got, 400))
    check("<bob@example.test>" in got[0][1] and "<Alice@Example.test>" in got[1][1], "replies not in RCPT order: %s" % short(got, 400))
    c.expect("NOOP", 250)  # nothing more came after the two
    # BDAT LAST: the same
    t2 = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("RCPT TO:<bob@example.test>", 250)
    m2 = make_msg(t2)
    c.send(b"BDAT 10\r\n" + m2[:10] + b"BDAT %d LAST\r\n" % (len(m2) - 10) + m2[10:])
    got = replies(c, 3)
    check([k for k, _ in got] == [250] * 3 and "octets" in got[0][1] and "<alice@example.test>" in got[1][1] and
          "<bob@example.test>" in got[2][1], "BDAT in LMTP: %s" % short(got, 400))
    # too big: each recipient gets the 552
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("RCPT TO:<bob@example.test>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(make_msg(tok(), body="z" * 70 + "\r\n") + (b"z" * 70 + b"\r\n") * 400) + b".\r\n")
    got = replies(c, 2)
    check([k for k, _ in got] == [552, 552], "too big over LMTP: %s" % short(got, 400))
    c.expect("QUIT", 221)
    for a in ("alice@example.test", "bob@example.test"):
        check(stored_tokens(srv, a) == [t, t2], "%s: stored %s" % (a, stored_tokens(srv, a)))
    check(stored_tokens(srv, "postmaster@example.test") == [], "something else was stored")
    m = stored(srv, "alice@example.test")[0]
    check(b"with LMTP id " in m, "Received: does not say LMTP (RFC 3848): %s" % short(m, 400))


@test()
def lmtp_refuses_what_lhlo_does_not_offer(ctx):
    """LHLO offers no DSN (the MTA in front reports, and a report from here too would be a second
    one): its parameters get 555 as any extension not offered (RFC 5321 4.1.1.11). HELP and the
    503 before LHLO speak of LMTP's commands."""
    srv = lmtp_server(ctx).start()
    c = lmtp_conn(srv)
    text = c.expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1")
    check("LHLO" in text and "HELO" not in text, "MAIL before LHLO: %s" % text)
    help_text = c.expect("HELP", 214)
    check("LHLO" in help_text and not re.search(r"\b(HELO|EHLO|AUTH|STARTTLS)\b", help_text), "HELP over LMTP: %s" % help_text)
    text = c.expect("LHLO client.test", 250)
    check("DSN" not in text.split(), "LHLO offers DSN: %s" % short(text))
    for bad in ("RET=HDRS", "ENVID=x1"):
        c.expect("MAIL FROM:<%s> %s" % (SENDER, bad), 555, "5.5.4")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    for bad in ("NOTIFY=SUCCESS", "ORCPT=rfc822;alice@example.test"):
        c.expect("RCPT TO:<alice@example.test> %s" % bad, 555, "5.5.4")
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("QUIT", 221)


@test(unix_only=True, modes=BOTH)
def lmtp_unix_socket(ctx, storage):
    sockdir = os.path.join(ctx.dir, "run")
    os.mkdir(sockdir)
    path = os.path.join(sockdir, "lmtp")
    with open(path, "w") as f:  # a file in its place is never removed
        f.write("keep")
    srv = lmtp_server(ctx, storage, path=path)
    srv.start(wait=False)
    wait_for(lambda: srv.proc.poll() is not None, 20, "the server to refuse the path")
    check("not a socket" in srv.log_text() and open(path).read() == "keep", "a file at the socket's path: %s"
          % short(srv.log_text()[-400:], 400))
    os.unlink(path)
    os.symlink(os.path.join(sockdir, "elsewhere"), path)  # nor a symbolic link
    srv.start(wait=False)
    wait_for(lambda: srv.proc.poll() is not None, 20, "the server to refuse the link")
    check(os.path.islink(path) and not os.path.exists(os.path.join(sockdir, "elsewhere")), "the link was followed or removed")
    os.unlink(path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a socket left by an earlier run: replaced
    stale.bind(path)
    stale.close()
    srv.start()
    st = os.stat(path)
    check(stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666, "the socket: mode %o" % st.st_mode)
    t = tok()
    with smtplib.LMTP(path, timeout=secs(10)) as l:
        code, text = l.ehlo("client.test")  # smtplib.LMTP sends LHLO
        check(code == 250 and l.has_extn("chunking"), "LHLO over the socket: %d %s" % (code, text))
        check(l.sendmail(SENDER, ["alice@example.test"], make_msg(t)) == {}, "refused over the socket")
    check(stored_tokens(srv, "alice@example.test") == [t], "stored: %s" % stored_tokens(srv, "alice@example.test"))
    check(re.search(r"connect lmtp from local\b", srv.log_text()), "log: %s" % short(srv.log_text()[-400:], 400))
    # a second server on the same live socket is refused, and leaves the first one's socket alone
    srv2 = ctx.server(storage=storage, server={"lmtp": path, "smtp": None, "pop3": None, "submission": None},
                      domains=srv.domains)
    srv2.start(wait=False)
    wait_for(lambda: srv2.proc.poll() is not None, 30, "the second server to give up")
    with smtplib.LMTP(path, timeout=secs(10)) as l:
        check(l.ehlo("client.test")[0] == 250, "the first server's socket is gone")


@test(unix_only=True)
def lmtp_socket_clients_not_limited_per_ip(ctx):
    """A Unix socket's clients (all "local") are exempt from max_per_ip and max_connect_rate, as
    relay_networks are: four sessions at once with max_per_ip = 2 are all greeted, while over TCP
    from 127.0.0.1 (outside relay_networks here) the third session is refused with 421."""
    sockdir = os.path.join(ctx.dir, "run")
    os.mkdir(sockdir)
    path = os.path.join(sockdir, "lmtp")
    srv = lmtp_server(ctx, path=path, max_per_ip="2", relay_networks="").start()
    conns = []
    for i in range(4):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(secs(10))
        s.connect(path)
        conns.append(s)
        greeting = s.recv(200)
        check(greeting.startswith(b"220 ") and b"LMTP" in greeting, "socket session %d: %s" % (i + 1, short(greeting)))
    tcp = [lmtp_conn(srv), lmtp_conn(srv)]
    third = ctx.track(Smtp(srv.lmtp_port))
    code, text = third.reply()
    check(code == 421, "a third TCP session from 127.0.0.1 with max_per_ip = 2: %s" % short(text))
    for s in conns:
        s.close()
    del tcp


@test()
def lmtp_socket_path_config(ctx):
    """lmtp = a path: a Unix socket on POSIX; on Windows a config error at its FILE:LINE."""
    srv = lmtp_server(ctx, path="/run/mailsrv/lmtp")
    if WINDOWS:
        n = srv.ini_text().split("\n").index("lmtp = %s" % srv.keys["lmtp"]) + 1
        expect_check_error(srv, [n], "an lmtp socket path on Windows", "Unix socket")
        return
    r = run_cli(["-c", srv.ini, "check"])
    check(r.returncode == 0, "check with an lmtp socket path: %d %s" % (r.returncode, short(r.stderr, 400)))
    srv.keys["lmtp"] = "/" + "x" * 110
    srv.write_ini()
    n = srv.ini_text().split("\n").index("lmtp = %s" % srv.keys["lmtp"]) + 1
    expect_check_error(srv, [n], "a socket path too long", "104")


@test(limit=120, unix_only=True)
def lmtp_postfix_delivers(ctx):
    """A real Postfix takes mail on its smtpd and delivers it with its lmtp client into mailsrv, over TCP
    (lmtp:inet:) for example.test and a Unix socket (lmtp:unix:) for other.test; a recipient mailsrv
    refuses (unknown) is bounced by Postfix for that recipient only, the others are delivered."""
    need_root()
    port = free_ports(1)[0]
    pf = PostfixInstance(ctx, 200000, master=["lmtp unix - - n - - lmtp"])
    sock = os.path.join(pf.dir, "mailsrv-lmtp")
    with open(os.path.join(pf.etc, "main.cf"), "a") as f:
        f.write("transport_maps = inline:{example.test=lmtp:inet:127.0.0.1:%d, other.test=lmtp:unix:%s}\n" % (port, sock))
    r = subprocess.run([pf.postfix, "-c", pf.etc, "reload"], capture_output=True, timeout=secs(30))
    check(r.returncode == 0, "postfix reload: %s" % short(r.stderr))
    srv = ctx.server(server={"lmtp": "127.0.0.1:%d, %s" % (port, sock)}).start()
    t = tok()
    try:
        with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.test", timeout=secs(20)) as s:
            refused = s.sendmail(SENDER, ["alice@example.test", "nobody@example.test", "bob@example.test", "carol@other.test"],
                                 make_msg(t))
    except smtplib.SMTPException as e:
        refused = e
    check(refused == {}, "Postfix's smtpd refused %s; its log: %s" % (refused, pf.log_text()[-1500:]))
    for a in ("alice@example.test", "bob@example.test", "carol@other.test"):
        wait_for(lambda: stored_tokens(srv, a) == [t], 30, "the message in %s's mailbox (Postfix log: %s)"
                 % (a, pf.log_text()[-800:]))
    def logged(pattern, what):
        return wait_for(lambda: re.search(pattern, pf.log_text()), 30, "Postfix's log of %s (its log: %s)"
                        % (what, pf.log_text()[-1500:]))
    logged(r"to=<nobody@example.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=bounced .*550 5\.1\.1" % port,
           "nobody@example.test bounced")
    for a in ("alice@example.test", "bob@example.test"):
        logged(r"to=<%s>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=sent \(250 2\.0\.0 <%s> Ok" % (a, port, a), a)
    line = logged(r"to=<carol@other.test>, relay=(\S+),.*status=sent \(250 2\.0\.0 <carol@other.test> Ok", "carol").group(0)
    check(sock in line, "carol@other.test not delivered over the socket: %s" % line)
    check("connect lmtp from local" in srv.log_text() and "connect lmtp from 127.0.0.1" in srv.log_text(),
          "mailsrv's log: %s" % short(srv.log_text()[-600:], 600))


@test(modes=BOTH)
def lmtp_failing_mailbox_fails_all(ctx, storage):
    """A mailbox that cannot take the message (a file where bob's Maildir goes, a folder where his mbox
    goes: root ignores modes) fails the delivery: every recipient gets the same 451, in RCPT order, and
    no copy stays in alice's mailbox (the delivery is one transaction, as in SMTP)."""
    srv = lmtp_server(ctx, storage).start()
    srv.deliver("bob@example.test")  # his folder exists, then is replaced
    bob = os.path.join(srv.spool, "example.test", "bob")
    if storage == "maildir":
        shutil.rmtree(bob)
        with open(bob, "w") as f:
            f.write("not a folder")
    else:
        os.unlink(bob + ".mbox")
        os.mkdir(bob + ".mbox")
    c = lmtp_conn(srv)
    c.expect("LHLO client.test", 250)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("RCPT TO:<bob@example.test>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(make_msg(tok())) + b".\r\n")
    got = replies(c, 2)
    check([k for k, _ in got] == [451, 451] and "<alice@example.test>" in got[0][1] and "<bob@example.test>" in got[1][1],
          "a failing mailbox: %s" % short(got, 400))
    c.expect("NOOP", 250)
    check(stored(srv, "alice@example.test") == [], "alice kept a copy: %s" % short(stored(srv, "alice@example.test"), 300))


# ---- fault injection (a build with -DMAILSRV_FAULTS=1, `make fault-test`): BDAT's way to the 250 ----


def fault_bdat_rounds(ctx, op, ns, storage, least):
    """For N in ns: a server whose Nth `op` fails gets a message for alice in three BDAT chunks, the last
    a LAST. The reply that ends it must be 250 (then alice has it, whole, after a restart without the
    fault) or a 4xx (then she has nothing): never a 250 for a message not durably stored, nor a 5xx for
    a local fault. Stops at the first round whose fault never fired, which must get 250."""
    outcomes = []
    for n in ns:
        srv = ctx.server(storage=storage)
        srv.env = dict(os.environ, MAILSRV_FAULT="%s:%d" % (op, n))
        if not fault_start(srv, op, n, outcomes):
            srv.env = None
            continue
        t = tok()
        msg = make_msg(t, body="line\r\n" * 300)
        c = srv.smtp()
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<alice@example.test>", 250)
        code = 250
        for i, part in enumerate((msg[:100], msg[100:1000], msg[1000:])):
            code, text = bdat(c, part, last=i == 2)
            if code != 250:
                break
        check(code == 250 or 400 <= code < 500, "N=%d: reply %d after a %s fault: must be 250 or 4xx" % (n, code, op))
        c.expect("QUIT", 221)
        srv.stop()
        hit = fault_fired(srv, op, n)
        srv.env = None
        srv.start()
        local = [g["data"] for g in srv.fetch("alice@example.test")]
        if code == 250:
            check(len(local) == 1 and token_of(local[0]) == t, "N=%d: 250 but alice has %d messages" % (n, len(local)))
            check_message(local[0], msg, what="N=%d: the message after 250" % n)
        else:
            check(local == [], "N=%d: reply %d but alice has %d messages" % (n, code, len(local)))
        srv.stop()
        outcomes.append((n, code if hit else "%s, no fault" % code))
        if not hit:
            break
    fault_last_round(op, outcomes, least, "250", "BDAT: ")


for _op, _ns, _least in (("write", range(1, 30), {"maildir": 2, "mbox": 3}),
                         ("fsync", range(1, 30), {"maildir": 5, "mbox": 5})):
    for _m in BOTH:
        _name = "fault_bdat_%s[%s]" % (_op, _m)
        TESTS.append((_name, lambda ctx, storage, op=_op, ns=_ns, least=_least: fault_bdat_rounds(ctx, op, ns, storage, least[storage]),
                      {"storage": _m}, 240))
        FAULT_TESTS.add(_name)
