"""POP3."""
import os
import poplib
import re
import socket
import time

from .harness import (BOTH, PASSWORDS, Pop, SENDER, WINDOWS, check, check_message, make_msg, mbox_path, plain, secs,
                      short, soft, stored, stored_tokens, test, tok, token_of, wait_for)


# =============================================================================================
# POP3


@test()
def pop3_capa(ctx):
    srv = ctx.server().start()
    p = srv.pop()
    p.ok("CAPA")
    caps = [l.decode().upper() for l in p.multi()]
    words = [c.split()[0] for c in caps if c.split()]
    for need in ("USER", "UIDL", "TOP", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE", "IMPLEMENTATION"):
        check(need in words, "CAPA lacks %s: %s" % (need, caps))
    sasl = [c.split() for c in caps if c.startswith("SASL")]
    check(sasl and "PLAIN" in sasl[0], "CAPA lacks SASL PLAIN: %s" % caps)
    p.quit()


@test()
def pop3_login_methods(ctx):
    srv = ctx.server().start()
    t, _ = srv.deliver()
    p = srv.pop()
    p.ok("user alice@example.test")
    p.ok("pass Passw0rd1")
    check(p.stat()[0] == 1, "STAT after USER/PASS")
    p.quit()
    p = srv.pop()
    p.ok("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"))
    check(p.stat()[0] == 1, "STAT after AUTH PLAIN")
    p.quit()
    p = srv.pop()
    r = p.cmd("AUTH PLAIN")
    check(r.startswith(b"+"), "AUTH PLAIN without initial response: %s" % short(r))
    p.ok(plain("alice@example.test", "Passw0rd1"))
    p.quit()
    pp = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=secs(10))
    try:
        pp.user("alice@example.test")
        pp.pass_("Passw0rd1")
        check(pp.stat()[0] == 1, "poplib STAT")
        pp.quit()
    finally:
        pp.close()


@test()
def pop3_bad_password(ctx):
    srv = ctx.server().start()
    p = srv.pop()
    p.ok("USER alice@example.test")
    t0 = time.monotonic()
    r = p.err("PASS wrong")
    check(r.startswith(b"-ERR [AUTH]"), "bad password: %s, expected -ERR [AUTH]" % short(r))
    check(time.monotonic() - t0 >= 0.5, "no delay after a failed login")
    r = p.cmd("STAT")
    check(r.startswith(b"-ERR"), "STAT after failed login: %s" % short(r))
    p.login("alice@example.test", "Passw0rd1")  # may retry in the same session
    p.quit()
    p = srv.pop()
    r = p.err("AUTH PLAIN " + plain("nosuch@example.test", "Passw0rd1"))
    check(r.startswith(b"-ERR [AUTH]"), "AUTH PLAIN unknown user: %s" % short(r))


@test()
def pop3_bare_local_part(ctx):
    srv = ctx.server().start()
    srv.deliver()
    p = srv.pop("alice", "Passw0rd1")
    check(p.stat()[0] == 1, "bare local part login sees wrong mailbox")
    p.quit()
    p = srv.pop("dave", "Passw0rd5")
    p.quit()
    p = srv.pop()
    p.cmd("USER carol")  # carol is in two domains: ambiguous
    r = p.cmd("PASS Passw0rd3")
    check(r.startswith(b"-ERR"), "ambiguous bare login carol: %s" % short(r))
    p = srv.pop("carol@other.test", "Passw0rd4")
    p.quit()


@test()
def pop3_state_errors(ctx):
    srv = ctx.server().start()
    srv.deliver()
    srv.deliver()
    p = srv.pop()
    p.err("STAT")
    p.err("RETR 1")
    p.err("PASS Passw0rd1")  # PASS without USER
    p.login("alice@example.test", "Passw0rd1")
    p.err("RETR 3")
    p.err("RETR 0")
    p.err("LIST 9")
    p.err("TOP 7 1")
    p.err("XYZZY")
    p.err("RETR abc")
    p.err("TOP 1")
    p.err("LIST -1")
    p.err("DELE")
    p.ok("DELE 1")
    p.err("RETR 1")
    p.err("DELE 1")
    p.err("LIST 1")
    p.ok("NOOP")
    p.quit()


@test()
def pop3_pipelining(ctx):
    srv = ctx.server().start()
    srv.deliver()
    p = srv.pop("alice@example.test")
    p.send("STAT\r\nLIST\r\nUIDL\r\nNOOP\r\nRETR 1\r\nQUIT\r\n")
    r = p.line()
    check(r.startswith(b"+OK 1 "), "pipelined STAT: %s" % short(r))
    check(p.line().startswith(b"+OK"), "pipelined LIST")
    l = p.multi()
    check(len(l) == 1, "LIST: %s" % l)
    check(p.line().startswith(b"+OK"), "pipelined UIDL")
    check(len(p.multi()) == 1, "UIDL")
    check(p.line().startswith(b"+OK"), "pipelined NOOP")
    check(p.line().startswith(b"+OK"), "pipelined RETR")
    check(token_of(b"\r\n".join(p.multi())), "RETR content")
    check(p.line().startswith(b"+OK"), "pipelined QUIT")
    p.read_eof()


@test(limit=60)
def pop3_pipelined_command_after_full_output(ctx):
    """A RETR whose answer ends just over the output high-water mark (32 KiB, MS_OUT_HIGH), with
    NOOP pipelined behind it and nothing more from the client: NOOP is answered. The session
    stopped taking commands while its output was high, then sent that output all at once and
    waited for input that never came (`make bench`'s pipelined RETR hung on it, at the end)."""
    high = 32 * 1024
    srv = ctx.server().start()
    line = "x" * 58 + "\r\n"
    srv.deliver(body=line * 10)
    p = srv.pop("alice@example.test")
    probe = p.list()[1]
    p.quit()
    # the answer's length before the terminator ".\r\n": "+OK N octets\r\n" and the N octets;
    # with HIGH-2 or HIGH-1 of it buffered, the terminator takes the output over HIGH
    for target in (high - 2, high - 1):
        ok_len = len("+OK %d octets\r\n" % (target - 20))
        more = target - ok_len - probe - 2  # the probe's body, then lines of 60 and one of 2..61
        srv.deliver(body=line * (10 + more // 60) + "y" * (more % 60) + "\r\n")
    p = srv.pop("alice@example.test")
    sizes = p.list()
    hits = [n for n in (2, 3) if len("+OK %d octets\r\n" % sizes[n]) + sizes[n] in (high - 2, high - 1)]
    check(hits, "no message of the right size: LIST %s (probe %d)" % (sizes, probe))
    for n in hits:
        p.send("RETR %d\r\nNOOP\r\n" % n)
        check(p.line().startswith(b"+OK"), "RETR %d" % n)
        check(len(b"".join(l + b"\r\n" for l in p.multi())) == sizes[n], "RETR %d: not %d octets" % (n, sizes[n]))
        check(p.line().startswith(b"+OK"), "the NOOP pipelined after RETR %d" % n)
    p.quit()


@test(limit=60)
def pop3_commands_served_after_client_half_close(ctx):
    """A client that sends its commands and then shuts its side of the connection (`printf ... |
    nc`) gets every answer: RETR of a message larger than the output high-water mark (its stream
    needs several turns), then QUIT, both sent before the shutdown. The input already buffered
    is served before the session ends; the RETR is not cut without its final dot."""
    srv = ctx.server().start()
    t, _ = srv.deliver(body="".join("line %d %s\r\n" % (i, "z" * 70) for i in range(1100)))
    p = srv.pop("alice@example.test")
    size = p.list()[1]
    p.send("RETR 1\r\nQUIT\r\n")
    p.sock.shutdown(socket.SHUT_WR)
    check(p.line().startswith(b"+OK"), "RETR 1")
    data = b"".join(l + b"\r\n" for l in p.multi())
    check(len(data) == size and token_of(data) == t, "RETR after the half-close: %d of %d octets" % (len(data), size))
    check(p.line().startswith(b"+OK"), "QUIT after the half-close")
    p.read_eof()


@test(modes=BOTH)
def pop3_stat_list_sizes(ctx, storage):
    srv = ctx.server(storage=storage).start()
    srv.deliver(body=".\r\n..\r\n.dot\r\nFrom x\r\n>From y\r\n")
    srv.deliver(body="".join("line %d %s\r\n" % (i, "q" * 70) for i in range(300)))
    srv.deliver(body="short\r\n")
    p = srv.pop("alice@example.test")
    count, total = p.stat()
    sizes = p.list()
    check(count == 3 and sorted(sizes) == [1, 2, 3], "STAT %d, LIST %s" % (count, sizes))
    check(total == sum(sizes.values()), "STAT total %d != sum of LIST %d" % (total, sum(sizes.values())))
    for n in (1, 2, 3):
        r = p.ok("LIST %d" % n)
        check(r.split()[1:3] == [str(n).encode(), str(sizes[n]).encode()], "LIST %d: %s vs %s" % (n, short(r), sizes[n]))
        data = p.retr(n)
        soft(len(data) == sizes[n], "message %d: LIST %d octets, RETR sent %d" % (n, sizes[n], len(data)))
        check(data.count(b"\r\n") == data.count(b"\n"), "RETR %d has bare LF" % n)
    p.quit()


@test(modes=BOTH)
def pop3_retr_large_message(ctx, storage):
    srv = ctx.server(storage=storage).start()
    body = "".join("%05d %s\r\n" % (i, "y" * 72) for i in range(1200))  # ~94 KB, under the 100K limit
    t, msg = srv.deliver(body=body)
    p = srv.pop("alice@example.test")
    size = p.list()[1]
    for what in ("RETR", "TOP"):
        t0 = time.monotonic()
        data = p.retr(1) if what == "RETR" else p.top(1, 100000)
        el = time.monotonic() - t0
        soft(el < secs(1.0), "%s of a %d-octet message over loopback took %.2fs" % (what, size, el))
        check_message(data, msg)
        soft(len(data) == size, "%s sent %d octets, LIST says %d" % (what, len(data), size))
    p.quit()


@test(modes=BOTH)
def pop3_uidl(ctx, storage):
    srv = ctx.server(storage=storage).start()
    for _ in range(3):
        srv.deliver()
    p = srv.pop("alice@example.test")
    u = p.uidl()
    check(len(set(u.values())) == 3, "UIDLs not unique: %s" % u)
    for n, v in u.items():
        check(re.match(r"^[\x21-\x7e]{1,70}$", v), "bad UIDL %r" % v)
        r = p.ok("UIDL %d" % n)
        check(r.split()[1:3] == [str(n).encode(), v.encode()], "UIDL %d: %s" % (n, short(r)))
    p.quit()
    p = srv.pop("alice@example.test")
    check(p.uidl() == u, "UIDLs changed between sessions")
    p.quit()


@test(modes=BOTH)
def pop3_top(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t, msg = srv.deliver(body="b1\r\n.b2\r\nb3\r\n\r\nb5\r\n")
    p = srv.pop("alice@example.test")
    full = p.retr(1)
    head, _, body = full.partition(b"\r\n\r\n")
    check(p.top(1, 0) == head + b"\r\n\r\n", "TOP 1 0: %s" % short(p.top(1, 0)))
    check(p.top(1, 2) == head + b"\r\n\r\nb1\r\n.b2\r\n", "TOP 1 2: %s" % short(p.top(1, 2)))
    check(p.top(1, 4) == head + b"\r\n\r\nb1\r\n.b2\r\nb3\r\n\r\n", "TOP 1 4")
    check(p.top(1, 100) == full, "TOP 1 100 differs from RETR")
    p.quit()


@test(modes=BOTH)
def pop3_dele_rset(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t1, _ = srv.deliver()
    t2, _ = srv.deliver()
    p = srv.pop("alice@example.test")
    n0, s0 = p.stat()
    p.ok("DELE 1")
    n1, s1 = p.stat()
    check(n1 == 1 and s1 < s0, "STAT after DELE: %d %d (before %d %d)" % (n1, s1, n0, s0))
    p.err("LIST 1")
    p.ok("RSET")
    check(p.stat() == (n0, s0), "STAT after RSET: %s" % (p.stat(),))
    p.retr(1)
    p.quit()
    got = srv.fetch("alice@example.test")
    check([g["token"] for g in got] == [t1, t2], "after DELE+RSET+QUIT: %s" % [g["token"] for g in got])
    check(len(stored(srv, "alice@example.test")) == 2, "files on disk after RSET")


@test(modes=BOTH)
def pop3_dele_quit_deletes(ctx, storage):
    srv = ctx.server(storage=storage).start()
    toks = [srv.deliver()[0] for _ in range(3)]
    p = srv.pop("alice@example.test")
    p.ok("DELE 2")
    p.quit()
    got = srv.fetch("alice@example.test")
    check([g["token"] for g in got] == [toks[0], toks[2]], "after DELE 2 + QUIT: %s" % [g["token"] for g in got])
    check(sorted(stored_tokens(srv, "alice@example.test")) == sorted([toks[0], toks[2]]),
          "on disk after DELE 2 + QUIT: %s" % stored_tokens(srv, "alice@example.test"))
    p = srv.pop("alice@example.test")
    p.ok("DELE 1")
    p.ok("DELE 2")
    p.quit()
    check(srv.fetch("alice@example.test") == [], "mailbox not empty after deleting all")
    check(stored(srv, "alice@example.test") == [], "messages left on disk after deleting all")


def pop_login_retry(srv, user, timeout=5):
    """Login, retrying while the mailbox is still [IN-USE] by a session the server has not reaped yet."""
    def attempt():
        p = Pop(srv.pop3_port)
        p.greet()
        p.ok("USER " + user)
        r = p.cmd("PASS " + PASSWORDS[user])
        if r.startswith(b"+OK"):
            return srv.ctx.track(p)
        p.close()
        check(r.startswith(b"-ERR [IN-USE]"), "login: %s" % short(r))
        return None
    return wait_for(attempt, timeout, "login to %s after the previous session" % user, 0.1)


@test(modes=BOTH)
def pop3_dele_dropped_connection(ctx, storage):
    srv = ctx.server(storage=storage).start()
    toks = [srv.deliver()[0] for _ in range(2)]
    p = srv.pop("alice@example.test")
    p.ok("DELE 1")
    p.ok("DELE 2")
    p.sock.shutdown(socket.SHUT_RDWR)
    p.close()  # dropped, no QUIT
    p = pop_login_retry(srv, "alice@example.test")
    check(p.stat()[0] == 2, "messages deleted by a dropped session: STAT %s" % (p.stat(),))
    p.quit()
    check(sorted(stored_tokens(srv, "alice@example.test")) == sorted(toks), "on disk: %s" % stored_tokens(srv, "alice@example.test"))


@test(modes=BOTH)
def pop3_snapshot_and_delivery_during_session(ctx, storage):
    srv = ctx.server(storage=storage).start()
    t1, _ = srv.deliver()
    t2, _ = srv.deliver()
    p = srv.pop("alice@example.test")
    n, s = p.stat()
    check(n == 2, "STAT %d" % n)
    t0 = time.monotonic()
    t3, m3 = srv.deliver()  # must get 250 at once although the mailbox is open
    el = time.monotonic() - t0
    check(el < secs(3), "delivery to a mailbox open in POP3 took %.2fs" % el)
    check(p.stat() == (n, s), "STAT changed during the session: %s" % (p.stat(),))
    p.err("LIST 3")
    p.err("RETR 3")
    check(len(p.uidl()) == 2, "UIDL shows new mail during the session")
    p.ok("DELE 1")
    p.quit()  # UPDATE: must keep the message that arrived meanwhile (mbox rewrite!)
    got = srv.fetch("alice@example.test")
    check([g["token"] for g in got] == [t2, t3], "next session sees %s, expected %s" % ([g["token"] for g in got], [t2, t3]))
    check_message(got[1]["data"], m3)


@test(modes=BOTH)
def pop3_in_use(ctx, storage):
    srv = ctx.server(storage=storage).start()
    srv.deliver()
    p1 = srv.pop("alice@example.test")
    p2 = srv.pop()
    p2.ok("USER alice@example.test")
    r = p2.cmd("PASS Passw0rd1")
    check(r.startswith(b"-ERR [IN-USE]"), "second login: %s, expected -ERR [IN-USE]" % short(r))
    p3 = srv.pop()
    r = p3.cmd("AUTH PLAIN " + plain("alice", "Passw0rd1"))
    check(r.startswith(b"-ERR [IN-USE]"), "second login (AUTH PLAIN, bare name): %s" % short(r))
    pb = srv.pop("bob@example.test")  # other mailboxes are not locked
    pb.quit()
    t0 = time.monotonic()
    c = srv.smtp()
    code, text = c.send_mail(SENDER, ["alice@example.test"], make_msg(tok()))
    check(code == 250 and time.monotonic() - t0 < secs(3), "delivery while in use: %s after %.2fs" % (short(text), time.monotonic() - t0))
    p1.quit()
    p = pop_login_retry(srv, "alice@example.test")
    check(p.stat()[0] == 2, "after the first session ended: STAT %s" % (p.stat(),))
    p.quit()


@test(modes=BOTH)
def pop3_uidl_stable_restart_delete(ctx, storage):
    srv = ctx.server(storage=storage).start()
    toks = [srv.deliver()[0] for _ in range(3)]
    u0 = {g["token"]: g["uid"] for g in srv.fetch("alice@example.test")}
    check(len(set(u0.values())) == 3, "UIDLs not unique: %s" % u0)
    p = srv.pop("alice@example.test")
    p.ok("DELE 2")
    p.quit()
    u1 = {g["token"]: g["uid"] for g in srv.fetch("alice@example.test")}
    check(u1 == {toks[0]: u0[toks[0]], toks[2]: u0[toks[2]]}, "UIDLs after deleting another message: %s, before %s" % (u1, u0))
    srv.restart()
    u2 = {g["token"]: g["uid"] for g in srv.fetch("alice@example.test")}
    check(u2 == u1, "UIDLs after restart: %s, before %s" % (u2, u1))
    t4, _ = srv.deliver()
    u3 = {g["token"]: g["uid"] for g in srv.fetch("alice@example.test")}
    check(u3[t4] not in u0.values(), "new message reuses an old UIDL %s" % u3[t4])
    check({k: v for k, v in u3.items() if k != t4} == u1, "UIDLs changed after a new delivery")


@test(modes=BOTH)
def forged_x_uidl_header(ctx, storage):
    """A sender's own X-UIDL: header must not make UIDLs collide (clients would skip or delete the wrong mail)."""
    srv = ctx.server(storage=storage).start()
    t0, _ = srv.deliver()
    u0 = srv.fetch("alice@example.test")[0]["uid"]
    forged = [("X-UIDL: " + u0 + "\r\n").encode(), b"X-UIDL: forged-same-id\r\n", b"X-UIDL: forged-same-id\r\n"]
    for f in forged:
        srv.send(["alice@example.test"], f + make_msg(tok()))
    g = srv.fetch("alice@example.test")
    uids = [x["uid"] for x in g]
    check(len(g) == 4 and len(set(uids)) == 4, "UIDLs collide after forged X-UIDL headers: %s" % uids)
    check(uids[0] == u0, "the first message's UIDL changed: %s -> %s" % (u0, uids[0]))
    srv.restart()
    check([x["uid"] for x in srv.fetch("alice@example.test")] == uids, "UIDLs changed across restart")


@test()
def mbox_foreign_messages_uidl(ctx):
    srv = ctx.server(storage="mbox")
    os.makedirs(os.path.join(srv.spool, "example.test"))
    msgs = []
    for i, who in enumerate(["one", "two", "three", "same", "same"]):
        msgs.append(("From %s@old.test Mon Jan  1 00:00:0%d 2024\n" % (who, i if who != "same" else 9)) +
                    "From: %s@old.test\nSubject: old %s\nX-Test-Token: old%s\n\nold body %s\n>From quoted\n\n" % (who, who, who, who))
    with open(mbox_path(srv, "alice@example.test"), "w") as f:
        f.write("".join(msgs))
    srv.start()
    g0 = srv.fetch("alice@example.test")
    check(len(g0) == 5, "foreign mbox: %d messages" % len(g0))
    check(len(set(g["uid"] for g in g0)) == 5, "derived UIDLs not unique: %s" % [g["uid"] for g in g0])
    check(b"\r\nFrom quoted\r\n" in g0[0]["data"], "mboxrd quoting not removed: %s" % short(g0[0]["data"]))
    u0 = [g["uid"] for g in g0]
    check([g["uid"] for g in srv.fetch("alice@example.test")] == u0, "derived UIDLs change between sessions")
    p = srv.pop("alice@example.test")
    p.ok("DELE 1")
    p.quit()
    u1 = [g["uid"] for g in srv.fetch("alice@example.test")]
    check(u1 == u0[1:], "UIDLs after deleting message 1 (rewrite): %s, before %s" % (u1, u0))
    srv.restart()
    check([g["uid"] for g in srv.fetch("alice@example.test")] == u1, "UIDLs changed across restart")
    t, _ = srv.deliver()
    g = srv.fetch("alice@example.test")
    check([x["uid"] for x in g][:4] == u1 and g[4]["token"] == t and g[4]["uid"] not in u0, "after a new delivery: %s" % [x["uid"] for x in g])


# ---------------------------------------------------------------------------------------------
# Maildirs written by other programs: the view made in slices, the sizes index (issue 14)

def foreign_maildir(srv, addr, n, start=0):
    """n messages named as Dovecot or getmail name them (no ,S= or ,W=), with LF, CRLF and no
    final newline, every third one read (cur/, ":2,S"). Returns {unique name: (bytes, CRLF size)}."""
    user, dom = addr.split("@")
    root = os.path.join(srv.spool, dom, user)
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    out = {}
    for i in range(start, start + n):
        body = "Subject: foreign %d\nX-Test-Token: foreign%d\n\n" % (i, i) + "line %d\n" % i * (1 + i % 7)
        if i % 5 == 1:
            body = body.replace("\n", "\r\n")
        if i % 5 == 2:
            body = body.rstrip("\n") + "\nno final newline"
        data = body.encode()
        uniq = "1733%06d.M%dP%d.otherhost" % (i, i * 7 % 1000, 4000 + i)
        name = os.path.join("cur", uniq + ":2,S") if i % 3 == 0 else os.path.join("new", uniq)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        lines = data.split(b"\n")
        crlf = sum(len(l[:-1] if l.endswith(b"\r") else l) + 2 for l in lines[:-1]) + (len(lines[-1]) + 2 if lines[-1] else 0)
        out[uniq] = (data, crlf)
    return out


def check_foreign_view(p, msgs, what):
    """LIST, UIDL and RETR of a POP3 session agree with the files (in name order)."""
    want = sorted(msgs)
    sizes = p.list()
    uidls = p.uidl()
    check(len(sizes) == len(want) and len(uidls) == len(want),
          "%s: LIST %d, UIDL %d, files %d" % (what, len(sizes), len(uidls), len(want)))
    for k, uniq in enumerate(want):
        check(uidls.get(k + 1) == uniq, "%s: UIDL %d is %s, expected %s" % (what, k + 1, uidls.get(k + 1), uniq))
        check(sizes.get(k + 1) == msgs[uniq][1], "%s: LIST %d = %s, the file makes %d" % (what, k + 1, sizes.get(k + 1), msgs[uniq][1]))
    for k in (0, len(want) // 2, len(want) - 1):
        if not want:
            break
        got = p.retr(k + 1)
        check(len(got) == msgs[want[k]][1], "%s: RETR %d sent %d octets, LIST said %d" % (what, k + 1, len(got), msgs[want[k]][1]))


def sizes_index(srv, addr):
    user, dom = addr.split("@")
    path = os.path.join(srv.spool, dom, user, "mailsrv-sizes")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def index_entries(idx):
    """The "SIZE NAME" lines of a mailsrv-sizes index: {unique name (up to the flags): size}."""
    out = {}
    for l in idx.split(b"\n")[1:-1]:
        if l.startswith(b"dirs ") or l.startswith(b"end "):
            continue
        size, name = l.split(b" ", 1)
        out[name.decode()[4:].split(":")[0]] = int(size)
    return out


@test(limit=120)
def pop3_foreign_maildir_sizes_index(ctx):
    """A Maildir written by another program (names without W=): the view made at the first login,
    with the sizes it had to read, is kept in the mailbox's mailsrv-sizes index; while new/ and cur/
    do not change, the next login takes the view from it (a file slipped into new/ with the
    folder's mtime put back is not seen, as with Dovecot's index); the index follows messages that
    others add and delete, and a malformed or cut one is never believed."""
    srv = ctx.server().start()
    addr = "alice@example.test"
    msgs = foreign_maildir(srv, addr, 40)
    user, dom = addr.split("@")
    root = os.path.join(srv.spool, dom, user)
    old = time.time() - 100
    for sub in ("new", "cur"):
        os.utime(os.path.join(root, sub), (old, old))  # changed last in an earlier second than the index
    p = srv.pop(addr)
    check_foreign_view(p, msgs, "first login")
    p.quit()
    idx = sizes_index(srv, addr)
    check(idx is not None and idx.startswith(b"mailsrv-sizes 3\ndirs "), "no index after the first login: %r" % (idx,))
    ent = index_entries(idx)
    check(sorted(ent) == sorted(msgs), "the index lists %d entries, not the 40 messages: %r" % (len(ent), idx[:200]))
    names = [l.split(b" ", 1)[1][4:] for l in idx.split(b"\n")[2:-2]]
    check(names == sorted(names, key=lambda n: (n.split(b":")[0], n)), "the index is not in name order")
    for uniq, size in ent.items():
        check(size == msgs[uniq][1], "index: %s has %d, the file makes %d" % (uniq, size, msgs[uniq][1]))
    p = srv.pop(addr)
    check_foreign_view(p, msgs, "second login (from the index)")
    p.quit()
    # a file slipped into new/ without moving the folder's mtime: the index is the view
    hidden = foreign_maildir(srv, addr, 1, start=500)
    for sub in ("new", "cur"):
        os.utime(os.path.join(root, sub), (old, old))
    p = srv.pop(addr)
    # (Windows lists every time: FAT never moves a folder's mtime, MS_DIR_MTIMES)
    want = 41 if WINDOWS else 40
    check(p.stat()[0] == want, "new/ unchanged (mtime): STAT %s, expected %d messages" % (p.stat(), want))
    p.quit()
    msgs.update(hidden)
    os.utime(os.path.join(root, "new"), (old + 1, old + 1))
    p = srv.pop(addr)
    check_foreign_view(p, msgs, "after new/ changed")
    p.quit()
    # another program delivers 5 more and deletes 3: the index follows
    msgs.update(foreign_maildir(srv, addr, 5, start=100))
    for uniq in sorted(msgs)[:3]:
        for sub, suffix in (("new", ""), ("cur", ":2,S")):
            if os.path.exists(os.path.join(root, sub, uniq + suffix)):
                os.unlink(os.path.join(root, sub, uniq + suffix))
        del msgs[uniq]
    p = srv.pop(addr)
    check_foreign_view(p, msgs, "after 5 added and 3 deleted by another program")
    p.quit()
    ent = index_entries(sizes_index(srv, addr))
    check(sorted(ent) == sorted(msgs), "the index was not brought up to date: %d entries for %d messages" % (len(ent), len(msgs)))
    # a name that is not one file of new/ or cur/ is never believed, even under the folders' true state
    for sub in ("new", "cur"):
        os.utime(os.path.join(root, sub), (old + 2, old + 2))
    st = [os.stat(os.path.join(root, sub)) for sub in ("new", "cur")]
    dirs = [b"dirs %d %d 1 %d %d 1" % (st[0].st_ino, st[0].st_mtime_ns, st[1].st_ino, st[1].st_mtime_ns)]
    for evil in (b"5 cur/../../../bob/cur/x\n", b"5 new/.hidden\n"):
        with open(os.path.join(root, "mailsrv-sizes"), "wb") as f:
            f.write(b"mailsrv-sizes 3\n" + b"".join(d + b"\n" for d in dirs) + evil + b"end 1\n")
        p = srv.pop(addr)
        check_foreign_view(p, msgs, "after the index named %r" % evil)
        p.quit()
    # an index cut at the end of a line (its last lines never reached the disk before a crash) under
    # the folders' true state is not the view either: it must end with its "end COUNT" line
    idx = sizes_index(srv, addr)
    lines = idx.split(b"\n")
    check(lines[-2] == b"end %d" % len(msgs), "the index does not end with its count: %r" % lines[-3:])
    for cut in (lines[:-2], lines[:-7], lines[:-2] + [b"end 99999"], lines[:-1] + [lines[-3]]):
        with open(os.path.join(root, "mailsrv-sizes"), "wb") as f:
            f.write(b"\n".join(cut) + b"\n")
        p = srv.pop(addr)
        check_foreign_view(p, msgs, "after the index was cut to %d lines" % len(cut))
        p.quit()
    # malformed or cut indexes are never believed
    first = sorted(msgs)[0]
    for bad in (b"garbage\n", b"mailsrv-sizes 3\n12 new/zzz\n5 new/aaa\nend 2\n", b"mailsrv-sizes 3\n1x2 new/" + first.encode() + b"\nend 1\n",
                b"mailsrv-sizes 3\n7 " + first.encode() + b"\nend 1\n",
                b"mailsrv-sizes 3\n" + b"".join(b"1 new/" + u.encode() + b"\n" for u in sorted(msgs))[:-1]):
        with open(os.path.join(root, "mailsrv-sizes"), "wb") as f:
            f.write(bad)
        p = srv.pop(addr)
        check_foreign_view(p, msgs, "after the index was replaced by %r" % bad[:40])
        p.quit()


@test(limit=180)
def pop3_large_foreign_maildir_sliced(ctx):
    """A login to 6,000 foreign messages is made in slices while commands pipelined after PASS
    wait for it; another login to the mailbox while the session is open gets [IN-USE]; a QUIT that deletes
    4,000 of them is carried out in slices too, even when the client leaves without reading the
    answer; the next login sees exactly the 2,000 others."""
    srv = ctx.server(server={"timeout": "120"}).start()
    addr = "alice@example.test"
    msgs = foreign_maildir(srv, addr, 6000)
    want = sorted(msgs)
    p = srv.pop()
    p.ok("USER " + addr)
    p.send("PASS %s\r\nSTAT\r\n" % PASSWORDS[addr])
    first = p.line()
    check(first.startswith(b"+OK 6000 messages"), "PASS: %s" % short(first))
    st = p.line()
    check(st == b"+OK 6000 %d" % sum(s for _, s in msgs.values()), "STAT pipelined after PASS: %s" % short(st))
    check_foreign_view(p, msgs, "6,000 foreign messages")
    other = srv.pop()
    other.ok("USER " + addr)
    r = other.cmd("PASS " + PASSWORDS[addr])
    check(r.startswith(b"-ERR [IN-USE]"), "a second login to a mailbox in use: %s" % short(r))
    other.close()
    batch = "".join("DELE %d\r\n" % k for k in range(1, 4001))
    p.send(batch)
    for k in range(4000):
        r = p.line()
        check(r.startswith(b"+OK"), "DELE %d: %s" % (k + 1, short(r)))
    p.send("QUIT\r\n")
    p.sock.shutdown(socket.SHUT_RDWR)  # gone before the answer: the deletions are still made
    p.close()
    user, dom = addr.split("@")
    root = os.path.join(srv.spool, dom, user)

    def left():
        n = len(os.listdir(os.path.join(root, "new"))) + len(os.listdir(os.path.join(root, "cur")))
        return n == 2000 or None
    wait_for(left, 60, "the 4,000 deletions after QUIT")
    p = pop_login_retry(srv, addr, timeout=30)
    kept = {u: msgs[u] for u in want[4000:]}
    check_foreign_view(p, kept, "after deleting 4,000")
    p.quit()
    check(re.search(r"deleted 4000 messages from alice@example.test", srv.log_text()), "the log does not say 4000 deleted")
