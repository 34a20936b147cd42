"""Trust (issue 11): AUTH cost and password policy, connection slots (anvil), mailing lists under a
flood of forged requests. Sections auth, anvil and listflood."""
import collections
import os
import random
import re
import smtplib
import subprocess
import threading
import time

from .harness import (DOMAINS, Net, PASSWORDS, Pop, RUN, SANLOG, SENDER, SLACK, Smtp, TestFailure, b64, check,
                      deadline, dot_stuff, maildir_files, make_msg, need_program, need_real_time, need_root,
                      plain, run_cli, secs, short, test, tok, wait_for)
from .cli import HASH_RE, add_cli
from .relay import sink_wait
from .lists import LIST, confirm, confirmations, members


# =============================================================================================
# trust: AUTH costs the same whatever the name, PBKDF2 never stalls the loop; password policy; sender_login (issue 11: 4, 10)
# (section: auth)

# AUTH timing and the loop (finding 4). The three kinds of failed login (a name that is no mailbox,
# a plain-text password from the INI, a hashed one) must cost the same; PBKDF2 runs in slices across
# loop turns, so parallel logins never stall the other sessions.

AUTH_PW = "Hashed-Passw0rd"


def auth_hash(pw=AUTH_PW):
    r = run_cli(["passwd"], input=pw + "\n")
    check(r.returncode == 0, "passwd: exit %d, stderr %s" % (r.returncode, short(r.stderr)))
    return r.stdout.strip().splitlines()[-1].strip()


def auth_ready_conns(srv, sources, port=None):
    """One EHLO'd raw SMTP connection per source address (non-blocking sockets, ready for select)."""
    out = []
    for src in sources:
        c = ctx_track_smtp(srv, src, port)
        out.append(c)
    return out


def ctx_track_smtp(srv, src, port=None):
    c = srv.ctx.track(Smtp(port or srv.smtp_port, source=src))
    code, text = c.reply()
    check(code == 220, "greeting from %s: %s" % (src, short(text)))
    c.expect("EHLO client.test", 250)
    return c


def auth_collect(pending, timeout):
    """Waits up to timeout for replies on pending {conn: t_sent}; returns [(conn, t_reply, line)]."""
    import select
    got = []
    end = time.monotonic() + timeout
    while pending:
        left = end - time.monotonic()
        if left <= 0:
            break
        socks = {c.sock: c for c in pending}
        r, _, _ = select.select(list(socks), [], [], left)
        now = time.perf_counter()
        for s in r:
            c = socks[s]
            data = s.recv(4096)
            c.buf += data
            if b"\r\n" in c.buf or not data:
                line, _, c.buf = c.buf.partition(b"\r\n")
                got.append((c, now, line))
                del pending[c]
    return got


@test(limit=90)
def authcost_timing(ctx):
    """Failed AUTHs: median reply times (minus the fixed 1 s delay) of an unknown name, a wrong
    plain-text INI password and a wrong hashed password, 30 each, interleaved, each try from its
    own loopback address (the back-off is per address: each one's first failure waits 1 s)."""
    need_real_time()
    h = auth_hash()
    srv = ctx.server(server={"max_clients": "200", "timeout": "60"},
                     domains=DOMAINS.replace("bob = Passw0rd2", "bob = " + h)).start()
    n = 30
    cases = [("unknown", "nobody@example.test", "Wrong-Passw0rd9"),
             ("plain", "alice@example.test", "Wrong-Passw0rd9"),
             ("hashed", "bob@example.test", "Wrong-Passw0rd9")]
    order = []
    for i in range(n):
        o = list(range(3))
        random.shuffle(o)
        order += o
    conns = auth_ready_conns(srv, ["127.0.%d.%d" % (10 + k // 200, 1 + k % 200) for k in range(len(order))])
    times = {name: [] for name, _, _ in cases}
    sent = {}
    pending = {}
    gap = secs(0.06)  # the next try starts once this one's hashing is long done (its 1 s wait overlaps)
    for k, ci in enumerate(order):
        c = conns[k]
        c.send("AUTH PLAIN %s\r\n" % plain(cases[ci][1], cases[ci][2]))
        t = time.perf_counter()
        sent[c] = (ci, t)
        pending[c] = t
        for c2, tr, line in auth_collect(pending, max(0.0, t + gap - time.perf_counter())):
            check(line.startswith(b"535"), "failed AUTH answered %s" % short(line))
            i2, t2 = sent[c2]
            times[cases[i2][0]].append((tr - t2 - 1.0) * 1000)
    for c2, tr, line in auth_collect(pending, secs(10)):
        check(line.startswith(b"535"), "failed AUTH answered %s" % short(line))
        i2, t2 = sent[c2]
        times[cases[i2][0]].append((tr - t2 - 1.0) * 1000)
    check(not pending, "%d AUTHs got no answer" % len(pending))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    spread = max(med.values()) - min(med.values())
    # identical work gives medians within noise of each other; the old code's 1.5 / 0.7 / 8.5 ms
    # (a spread near 90 % of the largest) fails at any load
    tol = max(4.0, 0.35 * max(med.values()))
    print("    AUTH failure medians after the 1 s delay (%d each): unknown %.2f ms, plain-text %.2f ms, "
          "hashed %.2f ms; spread %.2f ms (tolerance %.2f)" % (n, med["unknown"], med["plain"], med["hashed"], spread, tol))
    check(spread <= tol, "AUTH cost tells the cases apart: unknown %.2f ms, plain-text %.2f ms, hashed %.2f ms "
          "(spread %.2f ms > %.2f)" % (med["unknown"], med["plain"], med["hashed"], spread, tol))


@test(limit=60)
def authcost_no_stall(ctx):
    """50 parallel successful AUTHs against a hashed password, from 10 loopback addresses, while
    another session sends NOOPs one after the other: the longest NOOP round trip is bounded."""
    need_real_time()
    import select
    h = auth_hash()
    srv = ctx.server(server={"max_clients": "200", "timeout": "60", "max_junk_commands": "100000"},
                     domains=DOMAINS.replace("bob = Passw0rd2", "bob = " + h)).start()
    conns = auth_ready_conns(srv, ["127.0.20.%d" % (1 + k % 10) for k in range(50)])
    noop = ctx_track_smtp(srv, "127.0.0.1")
    for _ in range(20):  # warm up: the NOOP path alone
        noop.expect("NOOP", 250)
    line = ("AUTH PLAIN %s\r\n" % plain("bob@example.test", AUTH_PW)).encode()
    lat = []
    pending = set(conns)
    noop.send("NOOP\r\n")
    t_noop = time.perf_counter()
    t0 = time.perf_counter()
    for c in conns:
        c.sock.sendall(line)
    end = deadline(30)
    while pending and time.monotonic() < end:
        socks = {c.sock: c for c in pending}
        socks[noop.sock] = noop
        r, _, _ = select.select(list(socks), [], [], 1.0)
        now = time.perf_counter()
        for s in r:
            c = socks[s]
            data = s.recv(4096)
            check(data, "the server closed a connection")
            c.buf += data
            while b"\r\n" in c.buf:
                l, _, c.buf = c.buf.partition(b"\r\n")
                if c is noop:
                    check(l.startswith(b"250"), "NOOP answered %s" % short(l))
                    lat.append((now - t_noop) * 1000)
                    noop.send("NOOP\r\n")
                    t_noop = time.perf_counter()
                else:
                    check(l.startswith(b"235"), "AUTH answered %s" % short(l))
                    pending.discard(c)
    total = (time.perf_counter() - t0) * 1000
    check(not pending, "%d of 50 AUTHs got no answer in 30 s" % len(pending))
    lat.sort()
    worst = lat[-1] if lat else total
    # a slice is ~0.4 ms; the bound leaves room for a loaded 2-core CI machine's scheduling (the
    # old code, one whole PBKDF2 per AUTH in a turn, made a NOOP wait the 50 hashes: ~400 ms)
    bound = 50 * SLACK
    print("    50 parallel AUTHs (hashed) took %.0f ms; %d NOOPs meanwhile: median %.2f ms, 99th percentile %.2f ms, "
          "longest %.2f ms (bound %.0f)" % (total, len(lat), lat[len(lat) // 2] if lat else 0,
                                            lat[len(lat) * 99 // 100] if lat else 0, worst, bound))
    check(worst <= bound, "a NOOP waited %.1f ms while 50 AUTHs ran (bound %.0f ms)" % (worst, bound))
    check(len(lat) >= 5, "only %d NOOPs answered while 50 AUTHs ran %.0f ms" % (len(lat), total))


@test()
def authcost_pipelined(ctx):
    """Commands pipelined after a login wait for its outcome: SMTP (PIPELINING, RFC 2920) and POP3
    (RFC 2449 PIPELINING), hashed and plain-text passwords, a wrong one too."""
    h = auth_hash()
    srv = ctx.server(domains=DOMAINS.replace("bob = Passw0rd2", "bob = " + h)).start()
    c = srv.smtp()
    c.send("AUTH PLAIN %s\r\nMAIL FROM:<bob@example.test>\r\nRSET\r\n" % plain("bob@example.test", AUTH_PW))
    for want in (235, 250, 250):
        code, text = c.reply()
        check(code == want, "pipelined after AUTH: got %s, expected %d" % (short(text), want))
    c = srv.smtp()
    c.send("AUTH LOGIN %s\r\n" % b64("alice@example.test"))
    code, text = c.reply()
    check(code == 334, "AUTH LOGIN: %s" % short(text))
    c.send("%s\r\nNOOP\r\n" % b64("Passw0rd1"))
    for want in (235, 250):
        code, text = c.reply()
        check(code == want, "pipelined after AUTH LOGIN: got %s, expected %d" % (short(text), want))
    p = srv.pop()
    p.send("USER bob@example.test\r\nPASS %s\r\nSTAT\r\n" % AUTH_PW)
    for want in (b"+OK", b"+OK", b"+OK 0 0"):
        l = p.line()
        check(l.startswith(want), "POP3 pipelined login: got %s, expected %s" % (short(l), want))
    p = srv.pop()
    p.send("AUTH PLAIN %s\r\nSTAT\r\n" % plain("alice@example.test", "Passw0rd1"))
    for want in (b"+OK", b"+OK 0 0"):
        l = p.line()
        check(l.startswith(want), "POP3 pipelined AUTH PLAIN: got %s, expected %s" % (short(l), want))
    p = srv.pop()
    p.send("USER bob@example.test\r\nPASS Wrong-Passw0rd9\r\nCAPA\r\n")
    for want in (b"+OK", b"-ERR [AUTH]", b"+OK"):
        l = p.line()
        check(l.startswith(want), "POP3 failed login: got %s, expected %s" % (short(l), want))


@test()
def authcost_passwd_policy(ctx):
    """`mailsrv passwd` and `mailsrv add` apply one password policy: both refuse a weak password
    with the same reason, both take a strong one."""
    srv = ctx.server()
    for weak in ("weak", "alllowercase1", "NoDigitsHere", "Short1A"):
        r = run_cli(["passwd"], input=weak + "\n")
        a = add_cli(srv, "weakling@example.test", weak)
        check(r.returncode != 0 and not re.search(r"\$pbkdf2", r.stdout),
              "passwd took the weak password %r: exit %d, stdout %s" % (weak, r.returncode, short(r.stdout)))
        check(a.returncode != 0, "add took the weak password %r" % weak)
        check(r.stderr.strip() and r.stderr.strip() == a.stderr.strip(),
              "passwd and add give different reasons for %r: %s / %s" % (weak, short(r.stderr), short(a.stderr)))
    r = run_cli(["passwd"], input="Str0ng-Enough\n")
    check(r.returncode == 0 and re.match(HASH_RE, r.stdout.strip()), "passwd refused a strong password: %s"
          % short(r.stdout + r.stderr))
    a = add_cli(srv, "strong@example.test", "Str0ng-Enough")
    check(a.returncode == 0, "add refused a strong password: %s" % short(a.stderr))


@test()
def authcost_reload(ctx):
    """Plain-text INI passwords are hashed at load: a reload that changes one takes the new one,
    one that keeps them keeps the logins working."""
    srv = ctx.server().start()
    srv.pop("alice@example.test").quit()
    text = srv.ini_text().replace("alice = Passw0rd1", "alice = Changed-Passw0rd1")
    srv.write_ini(text)
    wait_for(lambda: srv.log_text().count("configuration loaded") >= 1, 10, "the reload")
    p = srv.pop()
    p.ok("USER alice@example.test")
    p.ok("PASS Changed-Passw0rd1")
    p.quit()
    srv.pop("bob@example.test").quit()


# sender_login (finding 10): a logged-in session may only use its own addresses in MAIL FROM.

SENDER_DOMAINS = DOMAINS.replace("dup = alice, bob, alice", "dup = alice, bob, alice\nstaff = team\nothers = bob, carol")


def sender_session(srv, port, user="alice@example.test"):
    c = srv.smtp(port=port)
    c.expect("AUTH PLAIN " + plain(user, PASSWORDS[user]), 235)
    return c


@test()
def sender_login_strict(ctx):
    """Default (strict) on submission and, for a logged-in session, on port 25: the user's own
    address, an alias that contains it (nested too), <> pass; anything else is 553 5.7.1."""
    srv = ctx.server(domains=SENDER_DOMAINS).start()
    for port in (srv.sub_port, srv.smtp_port):
        c = sender_session(srv, port)
        for ok in ("alice@example.test", "ALICE@Example.TEST", "team@example.test", "staff@example.test", "dup@example.test",
                   "postmaster@example.test", ""):
            c.expect("MAIL FROM:<%s>" % ok, 250, "2.1.0")
            c.expect("RSET", 250)
        for bad in ("bob@example.test", "others@example.test", "carol@other.test",
                    "whatever@other.test", "someone@elsewhere.test"):
            t = c.expect("MAIL FROM:<%s>" % bad, 553, "5.7.1")
            check("not owned by user alice@example.test" in t, "553 names no owner: %s" % short(t))
        # the message can still go out from an owned address
        t = tok()
        code, text = c.send_mail("team@example.test", ["bob@example.test"], make_msg(t, to="bob@example.test", sender="team@example.test"))
        check(code == 250, "message from an alias: %s" % short(text))
        c.expect("QUIT", 221)


@test()
def sender_login_unauthenticated(ctx):
    """A session that did not log in is not affected (port 25: mail from anyone to local mailboxes)."""
    srv = ctx.server(domains=SENDER_DOMAINS).start()
    c = srv.smtp()
    c.expect("MAIL FROM:<bob@example.test>", 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("RSET", 250)
    c.expect("MAIL FROM:<someone@elsewhere.test>", 250)


@test()
def sender_login_off(ctx):
    """sender_login = off: a logged-in user may use any sender; a bad value is a config error."""
    srv = ctx.server(domains=SENDER_DOMAINS, server={"sender_login": "off"}).start()
    c = sender_session(srv, srv.sub_port)
    for any_from in ("bob@example.test", "someone@elsewhere.test", ""):
        c.expect("MAIL FROM:<%s>" % any_from, 250)
        c.expect("RSET", 250)
    bad = ctx.server(server={"sender_login": "sometimes"})
    r = run_cli(["-c", bad.ini, "check"])
    check(r.returncode != 0 and "sender_login" in r.stderr + r.stdout and "strict" in r.stderr + r.stdout,
          "sender_login = sometimes accepted: %s" % short(r.stdout + r.stderr))
    ok = ctx.server(server={"sender_login": "strict"})
    r = run_cli(["-c", ok.ini, "check"])
    check(r.returncode == 0, "sender_login = strict refused: %s" % short(r.stdout + r.stderr))


# end of section: auth


# =============================================================================================
# trust: connection slots cannot be held: junk commands, session lifetime, connection rate, IPv6 /64, reserved slots (issue 11: 5)
# (section: anvil)

# Hostile clients that hold slots: (Smtp, source) pairs kept alive with a NOOP now and then, as in the
# issue's report (a NOOP every 20 s past a 300 s timeout; here every second past a 3 s timeout).
ANVIL_KEYS = {"max_clients": "64", "max_per_ip": "10", "timeout": "3", "relay_networks": "192.0.2.0/24"}


def anvil_fill(ctx, srv, sources, want, host="127.0.0.1", port=None):
    """Opens sessions from the sources in turn until `want` are greeted or each source is refused;
    returns the greeted ones."""
    held, refused = [], set()
    i = 0
    while len(held) < want and len(refused) < len(sources) and i < 4 * want:
        src = sources[i % len(sources)]
        i += 1
        if src in refused:
            continue
        c = ctx.track(Smtp(port or srv.smtp_port, host, source=src))
        code, _ = c.reply()
        if code == 220:
            held.append(c)
        else:
            c.close()
            refused.add(src)
    return held


def anvil_keep(held, step):
    """step(c) on each holder (True: the server still answers it); returns those still open (the
    others were closed by the server)."""
    alive = []
    for c in held:
        try:
            if step(c):
                alive.append(c)
                continue
        except (OSError, TestFailure):
            pass
        c.close()
    return alive


def anvil_noop(held):
    """One NOOP on each holder."""
    return anvil_keep(held, lambda c: c.cmd("NOOP")[0] == 250)


def anvil_try(srv, source, host="127.0.0.1", deliver=True):
    """A real client: greeting, EHLO, one message. Returns (served, ms from connect to the last reply)."""
    t0 = time.monotonic()
    c = Smtp(srv.smtp_port, host, source=source)
    try:
        code, text = c.reply()
        if code != 220:
            return False, (time.monotonic() - t0) * 1000, text
        c.expect("EHLO client.test", 250)
        if deliver:
            t = tok()
            code, text = c.send_mail(SENDER, ["alice@example.test"], make_msg(t))
            if code != 250:
                return False, (time.monotonic() - t0) * 1000, text
        c.expect("QUIT", 221)
        return True, (time.monotonic() - t0) * 1000, ""
    finally:
        c.close()


def anvil_rcpt(held):
    """Like anvil_noop, but each holder sits in a mail transaction: EHLO and MAIL once, then one RCPT
    to an unknown mailbox (550) each time; no junk command."""
    def step(c):
        if not getattr(c, "in_mail", False):
            c.cmd("EHLO holder.test")
            c.in_mail = c.cmd("MAIL FROM:<>")[0] == 250
        return c.in_mail and c.cmd("RCPT TO:<nobody-%s@example.test>" % tok())[0] == 550
    return anvil_keep(held, step)


def anvil_holders(ctx, srv, sources, client, host="127.0.0.1", hold=12, keep=None, poke=anvil_noop):
    """The issue's scenario: holders from `sources` take every slot they can, then keep them with NOOPs
    (or `poke`); a real client from `client` tries once a second. Returns (first success ms since the
    holders were in place or None, attempts, slots held)."""
    held = anvil_fill(ctx, srv, sources, 64, host)
    nheld = len(held)
    t0 = time.monotonic()
    attempts = 0
    while time.monotonic() - t0 < secs(hold):
        held = poke(held)
        if keep:
            keep()
        attempts += 1
        ok, ms, text = anvil_try(srv, client, host)
        if ok:
            return (time.monotonic() - t0) * 1000, ms, attempts, nheld
        time.sleep(0.5)
    return None, None, attempts, nheld


@test(limit=60)
def anvil_slots_held_by_noop(ctx):
    # issue 11, 5: 64 sessions from 7 loopback addresses filled max_clients = 64; NOOPs kept them past
    # `timeout`; a real client got 421 for minutes. Now the oldest idle session that has not logged in
    # makes room (as Dovecot's login processes do), and 10% of the slots are kept for relay_networks.
    srv = ctx.server(server=dict(ANVIL_KEYS)).start()
    sources = ["127.0.0.%d" % i for i in range(2, 9)]
    user = ctx.track(Pop(srv.pop3_port, source="127.0.0.8"))  # logged in, and the oldest: never closed for room
    user.greet()
    user.login("alice@example.test", PASSWORDS["alice@example.test"])
    after, ms, attempts, nheld = anvil_holders(ctx, srv, sources, "127.0.0.9", keep=lambda: user.ok("NOOP"))
    print("#   %d holders from 7 addresses; the real client: %s" % (nheld, "served %.0f ms after the holders were in place (attempt %d, session %.0f ms)" % (after, attempts, ms) if after is not None else "421 for the whole test (%d attempts)" % attempts))
    check(after is not None, "a real client was refused for the whole test (%d attempts, %d holders)" % (attempts, nheld))
    ok, ms2, text = anvil_try(srv, "127.0.0.9")  # the holders are older than 5 s now: at once
    check(ok, "a second real client was refused: %s" % short(text))
    print("#   with the holders in place for over 5 s, the next real client was served at once, in %.0f ms" % ms2)
    user.ok("STAT")
    log = srv.log_text()
    check(re.search(r"closed to make room", log), "no log line for the session closed to make room")
    # refusals are logged once per client and minute, not once per refusal
    for src in sources:
        n = len(re.findall(r"refused smtp from %s\b" % re.escape(src), log))
        check(n <= 1, "%d refusal lines for %s within a minute" % (n, src))


@test(limit=60)
def anvil_slots_held_in_transaction(ctx):
    # the same holders, each inside a mail transaction (MAIL, then an unknown RCPT every second):
    # between MAIL and DATA a session has had nothing acknowledged, so it still makes room
    srv = ctx.server(server=dict(ANVIL_KEYS)).start()
    after, ms, attempts, nheld = anvil_holders(ctx, srv, ["127.0.0.%d" % i for i in range(2, 9)], "127.0.0.9",
                                              poke=anvil_rcpt)
    print("#   %d holders in MAIL/RCPT; the real client: %s" % (nheld, "served %.0f ms after the holders were in place (attempt %d)" % (after, attempts) if after is not None else "421 for the whole test (%d attempts)" % attempts))
    check(after is not None, "holders in a transaction kept every slot (%d attempts, %d holders)" % (attempts, nheld))


@test(limit=60)
def anvil_reserved_for_relay_networks(ctx):
    # of max_clients = 20, 2 (10%) are kept for relay_networks: holders from outside get 18
    keys = dict(ANVIL_KEYS, max_clients="20", relay_networks="127.0.0.1/32")
    srv = ctx.server(server=keys).start()
    held = anvil_fill(ctx, srv, ["127.0.0.%d" % i for i in range(2, 9)], 20)
    check(len(held) == 18, "holders from outside relay_networks got %d of 20 slots, expected 18" % len(held))
    ok, ms, text = anvil_try(srv, "127.0.0.1")
    check(ok, "a relay_networks client was refused while holders were in place: %s" % short(text))
    print("#   holders got %d of 20 slots; the relay_networks client was served in %.0f ms" % (len(held), ms))


@test()
def anvil_junk_commands(ctx):
    # Postfix smtpd_junk_command_limit = 100: NOOP, RSET, VRFY, HELP and unknown commands; reset by a
    # delivered message. Past it: 421 4.7.0 and close.
    srv = ctx.server(server={"relay_networks": "192.0.2.0/24"}).start()
    c = srv.smtp()
    verbs = ["NOOP", "RSET", "VRFY alice", "HELP", "XYZZY"]
    for i in range(90):
        c.cmd(verbs[i % len(verbs)])
    code, text = c.send_mail(SENDER, ["alice@example.test"], make_msg(tok()))
    check(code == 250, "delivery among junk: %s" % short(text))
    for i in range(100):
        code, text = c.cmd(verbs[i % len(verbs)])
        check(code != 421, "junk command %d after a delivery got %s (the count is reset by a delivery)" % (i + 1, short(text)))
    code, text = c.cmd("NOOP")
    check(code == 421 and "4.7.0" in text and "too many junk commands" in text,
          "the 101st junk command got %s, expected 421 4.7.0" % short(text))
    c.read_eof()
    check("too many junk commands" in srv.log_text(), "no log line for the junk limit")
    # POP3: NOOP, RSET and unknown commands count the same way (before and after login)
    p = srv.pop()
    for i in range(100):
        p.cmd("NOOP")
    l = p.cmd("NOOP")
    check(l.startswith(b"-ERR") and b"too many" in l, "POP3: the 101st junk command got %s" % short(l))
    p.read_eof()
    p = srv.pop("alice@example.test")
    for i in range(100):
        p.cmd(["NOOP", "RSET", "XYZZY"][i % 3])
    l = p.cmd("NOOP")
    check(l.startswith(b"-ERR") and b"too many" in l, "POP3 (logged in): the 101st junk command got %s" % short(l))
    p.read_eof()


@test()
def anvil_session_lifetime(ctx):
    # max_session_time: a NOOP every 0.5 s keeps a session past `timeout`, not past its lifetime;
    # a session in the middle of DATA is ended at the next command, not cut; one still in DATA at twice
    # the time is cut (a slow drip cannot hold a slot either).
    import select
    srv = ctx.server(server={"relay_networks": "192.0.2.0/24", "timeout": "30", "max_session_time": "3"}).start()
    c = srv.smtp()
    d = srv.smtp()
    d.expect("MAIL FROM:<%s>" % SENDER, 250)
    d.expect("RCPT TO:<alice@example.test>", 250)
    d.expect("DATA", 354)
    e = srv.smtp()
    e.expect("MAIL FROM:<%s>" % SENDER, 250)
    e.expect("RCPT TO:<alice@example.test>", 250)
    e.expect("DATA", 354)
    p = srv.pop("alice@example.test")
    t0 = time.monotonic()
    code, text, n = 250, "", 0
    while code == 250 and time.monotonic() - t0 < secs(10):
        if select.select([c.sock], [], [], 0.5)[0]:  # closed by the server between two NOOPs
            code, text = c.reply()
            break
        code, text = c.cmd("NOOP")
        n += 1
        d.send("line %d\r\n" % n)
        e.send("line %d\r\n" % n)
    took = time.monotonic() - t0
    check(code == 421 and "4.4.2" in text, "a NOOP holder got %s after %.1fs, expected 421 4.4.2" % (short(text), took))
    check(2.5 <= took <= secs(6), "the holder was closed after %.1fs, lifetime 3s" % took)
    c.read_eof()
    code, text = d.cmd(".")
    check(code == 250, "a message in DATA at the end of the lifetime got %s" % short(text))
    code, text = d.cmd("NOOP")
    check(code == 421, "after the message, the next command got %s, expected 421" % short(text))
    d.read_eof()
    p.sock.settimeout(secs(5))
    l = p.readline()
    check(l is not None and l.startswith(b"-ERR"), "POP3 session past its lifetime: %s" % short(l))
    p.read_eof()
    cut = None
    while cut is None and time.monotonic() - t0 < secs(12):
        try:
            e.send("line\r\n")
            if select.select([e.sock], [], [], 0.5)[0] and not e.sock.recv(4096):
                cut = time.monotonic() - t0
        except OSError:
            cut = time.monotonic() - t0
    check(cut is not None and 5.5 <= cut, "a session dripping DATA was cut after %s s, expected at twice the time (6 s)" % cut)
    print("#   a NOOP holder was closed after %.1fs, a DATA dripper cut after %.1fs (max_session_time = 3s, timeout = 30s)"
          % (took, cut))


@test(limit=100)
def anvil_connection_rate(ctx):
    # max_connect_rate = 5 (per minute and client): the 6th connection within the minute is refused with
    # 421 4.7.0 before any other work; other addresses and relay_networks are not; one log line per
    # client and minute, with the number of refusals not logged; after the minute the client is served.
    srv = ctx.server(server={"relay_networks": "127.0.0.1/32", "max_connect_rate": "5"}).start()
    t0 = time.monotonic()
    for i in range(5):
        ok, ms, text = anvil_try(srv, "127.0.0.2", deliver=False)
        check(ok, "connection %d of 5 in the minute refused: %s" % (i + 1, short(text)))
    for i in range(20):
        c = ctx.track(Smtp(srv.smtp_port, source="127.0.0.2"))
        code, text = c.reply()
        check(code == 421 and "4.7.0" in text, "connection %d in the minute got %s, expected 421 4.7.0" % (i + 6, short(text)))
        c.read_eof()
    p = ctx.track(Pop(srv.pop3_port, source="127.0.0.2"))
    l = p.readline()
    check(l is not None and l.startswith(b"-ERR [SYS/TEMP]"), "POP3 past the rate: %s" % short(l))
    for src in ("127.0.0.3", "127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1"):
        ok, ms, text = anvil_try(srv, src, deliver=False)
        check(ok, "%s refused: %s" % (src, short(text)))
    log = srv.log_text()
    n = len(re.findall(r"refused (smtp|pop3) from 127\.0\.0\.2\b", log))
    check(n == 1, "%d refusal lines for 127.0.0.2 within the minute, expected 1" % n)
    if RUN or SANLOG or SLACK != 1.0:
        return  # the minute's end is checked in the native run: each other run would wait 60 s for it
    # after the minute: the summary line, and the client is served again
    wait_for(lambda: re.search(r"127\.0\.0\.2: 20 more refusals? in the last minute", srv.log_text()), 75,
             "the per-minute summary of refusals", 0.5)
    ok, ms, text = wait_for(lambda: anvil_try(srv, "127.0.0.2", deliver=False)[0] and (True, 0, ""), 10,
                            "127.0.0.2 to be served after the minute", 0.5)
    print("#   21 refusals in the minute from 127.0.0.2, %d log lines + 1 summary; served again after %.0fs"
          % (n, time.monotonic() - t0))



class AnvilNetns:
    """A network namespace made by the test, with IPv6 addresses of two /64s on its own loopback
    (the host's loopback has only ::1). The test's thread enters it (setns(2) acts on the calling
    thread only), so its sockets and the server it starts (a child inherits the thread's namespace)
    live there; other tests' threads are not affected. Leaves it and deletes it at exit."""
    NS_ADDRS = ["fd00:0:0:1::%x" % i for i in range(1, 9)] + ["fd00:0:0:2::9"]

    def __init__(self, ctx):
        import ctypes
        self.ip = need_program("ip", "iproute2")
        self.name = "mailsrv-anvil-%d-%d" % (os.getpid(), threading.get_ident() % 100000)
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.home = None

    def __enter__(self):
        subprocess.run([self.ip, "netns", "add", self.name], check=True, capture_output=True)
        try:
            ex = [self.ip, "netns", "exec", self.name, self.ip]
            subprocess.run(ex + ["link", "set", "lo", "up"], check=True, capture_output=True)
            for a in self.NS_ADDRS:
                subprocess.run(ex + ["-6", "addr", "add", a + "/128", "dev", "lo", "nodad"], check=True, capture_output=True)
            self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            fd = os.open("/var/run/netns/" + self.name, os.O_RDONLY)
            try:
                check(self.libc.setns(fd, 0x40000000) == 0, "setns: errno %d" % ctypes_errno(self.libc))  # CLONE_NEWNET
            finally:
                os.close(fd)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *a):
        if self.home is not None:
            self.libc.setns(self.home, 0x40000000)
            os.close(self.home)
            self.home = None
        subprocess.run([self.ip, "netns", "del", self.name], capture_output=True)


def ctypes_errno(libc):
    import ctypes
    return ctypes.get_errno()


@test(limit=60, unix_only=True)
def anvil_ipv6_64_holders(ctx):
    # The same hostile holders, from 7 addresses of ONE IPv6 /64 (a host may use its whole /64):
    # max_per_ip counts the /64, so they get 10 slots, not 64, and a client of another /64 is served at
    # once. The auth back-off counts the /64 too. In a network namespace of the test's own (root).
    need_root()
    with AnvilNetns(ctx) as ns:
        host = "fd00:0:0:1::1"
        keys = dict(ANVIL_KEYS, smtp="[%s]:25" % host, submission=None, pop3="[%s]:110" % host, plaintext_auth="yes")
        srv = ctx.server(server=keys)
        srv.smtp_port, srv.pop3_port = 25, 110
        srv.start()
        sources = ns.NS_ADDRS[1:8]
        held = anvil_fill(ctx, srv, sources, 64, host)
        check(len(held) == 10, "holders from one /64 got %d slots, expected max_per_ip = 10" % len(held))
        t0 = time.monotonic()
        ok, ms, text = anvil_try(srv, "fd00:0:0:2::9", host)
        check(ok, "a client of another /64 was refused while one /64 held slots: %s" % short(text))
        print("#   7 addresses of one /64 got %d slots; a client of another /64 was served in %.0f ms (first attempt)"
              % (len(held), ms))
        log = srv.log_text()
        n = len(re.findall(r"refused smtp from fd00:0:0:1::", log))
        check(n == 1, "%d refusal lines for one /64 within a minute, expected 1" % n)
        held = anvil_noop(held)
        for c in held:
            c.close()

        def open_from_64():  # sessions the server still counts for the /64 (logged at connect, freed at disconnect)
            log = srv.log_text()
            return set(re.findall(r"\[(\w+)\] connect \w+ from fd00:0:0:1::", log)) - set(re.findall(r"\[(\w+)\] disconnect", log))
        wait_for(lambda: not open_from_64(), 10, "the server to free the holders' slots")  # (CI, SAN: it was still counting them)
        # the auth back-off: a failure from one address of the /64 doubles the delay for another one
        for i, src in enumerate(sources[:2]):
            p = ctx.track(Pop(110, host, source=src))
            p.greet()
            p.ok("USER alice@example.test")
            p.err("PASS wrong%d" % i)
        log = srv.log_text()
        check(re.search(r"auth failed from %s user=<alice@example.test> failures=1 delay=1000ms" % re.escape(sources[0]), log) and
              re.search(r"auth failed from %s user=<alice@example.test> failures=2 delay=2000ms" % re.escape(sources[1]), log),
              "the auth back-off does not count the /64: %s" % [l for l in log.splitlines() if "auth failed" in l])

# end of section: anvil


# =============================================================================================
# trust: mailing lists under a flood of forged requests (issue 11: 6)
# (section: listflood)
# The limits the server promises (mailsrv.c section 2): requests (subscribe, unsubscribe, help) per
# hour from one client address (an IPv6 /64 counts as one) and for one sender domain, across lists.
LF_PER_ADDR = 10
LF_PER_DOMAIN = 20
LF_PENDING_MAX = 1000


def lf_domains(n, prefix="f"):
    """[domain] sections PREFIX0.test ... each with a catch-all to dave@other.test: confirmations to
    forged senders there are stored locally, where they can be counted."""
    out = ""
    for i in range(n):
        d = "%s%d.test" % (prefix, i)
        out += "\n[domain %s]\n\n[alias %s]\npostmaster = dave@other.test\n* = dave@other.test\n" % (d, d)
    return out


def lf_server(ctx, net=None, domains="", **server):
    """A list server where loopback is not a relay network (relay_networks are exempt from the limits).
    The flood comes in sessions of 10 requests, more than max_connect_rate allows from one address:
    the connection limits are not what these tests are about."""
    keys = {"relay_networks": "", "max_clients": "40", "max_connect_rate": "100000"}
    keys.update(server)
    sections = {"list " + LIST: {"owner": "alice@example.test", "post": "members"}}
    if net:
        srv = net.server(server=keys, domains=DOMAINS + domains)
        srv.sections.update(sections)
        srv.write_ini()
        return srv.start()
    return ctx.server(server=keys, domains=DOMAINS + domains, sections=sections).start()


def lf_request_msg(sender, kind="subscribe"):
    return ("From: <%s>\r\nTo: <news-%s@example.test>\r\nSubject: %s\r\nMessage-ID: <%s@flood.test>\r\n\r\nplease\r\n"
            % (sender, kind, kind, tok())).encode()


def lf_flood(srv, source, senders, kind="subscribe", per_session=10, progress=None):
    """Requests from the address `source`, per_session to a session: MAIL, RCPT news-KIND, then DATA when
    the RCPT is taken, RSET when not. Returns (taken: senders whose request got 250 at the dot,
    refused: (sender, code, text) for each refusal, at the greeting, RCPT or the dot)."""
    taken, refused = [], []
    i = 0
    while i < len(senders):
        c = srv.ctx.track(Smtp(srv.smtp_port, "127.0.0.1", source=source))
        code, text = c.reply()
        if code != 220:  # a connection limit: a refusal too
            refused.append((senders[i], code, text))
            i += 1
            c.close()
            continue
        c.expect("EHLO flood.test", 250)
        for s in senders[i:i + per_session]:
            i += 1
            c.expect("MAIL FROM:<%s>" % s, 250)
            code, text = c.cmd("RCPT TO:<news-%s@example.test>" % kind)
            if code == 250:
                c.expect("DATA", 354)
                c.send(dot_stuff(lf_request_msg(s, kind)) + b".\r\n")
                code, text = c.reply()
                if code == 250:
                    taken.append(s)
            if code != 250:
                refused.append((s, code, text))
                if code == 421:
                    break
                c.expect("RSET", 250)
            if progress is not None:
                progress[0] += 1
        c.close()
    return taken, refused


def lf_pending(srv):
    """(code, kind, address, time) of each open request in the list's state file."""
    path = os.path.join(srv.spool, "example.test", ".lists", "news", "state")
    try:
        with open(path) as f:
            return [tuple(l.split()[1:5]) for l in f.read().splitlines() if l.startswith("pending ")]
    except FileNotFoundError:
        return []


def lf_subscribe(srv, addr, source, timeout=10):
    """A real subscriber at a local mailbox, writing from `source`: asks, waits for the confirmation
    and replies to it. Returns "confirmed" or what went wrong."""
    before = len(confirmations(g["data"] for g in srv.fetch(addr)))
    try:
        with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="real.test", timeout=secs(10),
                          source_address=(source, 0)) as s:
            s.sendmail(addr, ["news-subscribe@example.test"], lf_request_msg(addr))
    except smtplib.SMTPRecipientsRefused as e:
        return "request refused: %s" % e.recipients
    except smtplib.SMTPResponseException as e:
        return "request refused: %d %s" % (e.smtp_code, e.smtp_error)
    try:
        code = wait_for(lambda: (lambda c: len(c) > before and c[before])(confirmations(g["data"] for g in srv.fetch(addr))),
                        timeout, "the confirmation for %s" % addr)
    except TestFailure:
        return "250, then no confirmation within %ds" % timeout
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="real.test", timeout=secs(10),
                      source_address=(source, 0)) as s:
        s.sendmail(addr, ["news-confirm-%s@example.test" % code],
                   ("From: <%s>\r\nSubject: Re: Confirm\r\n\r\nyes\r\n" % addr).encode())
    return "confirmed" if addr in members(srv) else "confirmed, but not a member: %s" % members(srv)


def lf_reply(r):
    """smtplib's (code, bytes) as (code, str)."""
    return r[0], r[1].decode("latin-1")


def lf_all_450(refused):
    """Every refusal is 450 4.7.1, but for 421s of connection limits (another defence) if any."""
    return all((c == 450 and t.split()[1] == "4.7.1") or c == 421 for _, c, t in refused) and \
        any(c == 450 for _, c, t in refused)


def lf_codes(refused):
    return sorted(set("%d %s" % (c, t.split()[1] if len(t.split()) > 1 else "") for _, c, t in refused))


@test(limit=150)
def listflood_one_address(ctx):
    srv = lf_server(ctx, domains=lf_domains(100))
    senders = ["victim%d@f%d.test" % (i, i % 100) for i in range(1000)]  # 10 a domain: the address limit is hit first
    progress, result = [0], {}

    def flood():
        try:
            result["r"] = lf_flood(srv, "127.0.0.2", senders, progress=progress)
        except Exception as e:  # reported below
            result["e"] = e
    t0 = time.monotonic()
    th = threading.Thread(target=flood)
    th.start()
    try:
        wait_for(lambda: progress[0] >= 300 or not th.is_alive(), 60, "300 forged requests")
        during = lf_subscribe(srv, "bob@example.test", "127.0.0.20")
    finally:
        th.join(secs(100))
    check(not th.is_alive() and "r" in result, "the flood did not finish: %s" % result.get("e"))
    elapsed = time.monotonic() - t0
    taken, refused = result["r"]
    after = lf_subscribe(srv, "carol@example.test", "127.0.0.21")
    wait_for(lambda: len(maildir_files(srv, "dave@other.test")) >= len(taken), 10, "the confirmations")
    queued = len(maildir_files(srv, "dave@other.test"))
    forged_pending = [p for p in lf_pending(srv) if p[2].startswith("victim")]
    print("#   1,000 forged requests from one address in %.1fs: %d taken, %d refused (%s); %d confirmations "
          "queued to forged senders, %d open requests; a real subscriber during the flood: %s; after: %s"
          % (elapsed, len(taken), len(refused), ", ".join(lf_codes(refused)) or "-", queued, len(forged_pending),
             during, after))
    check(len(taken) <= LF_PER_ADDR, "%d requests from one address taken (limit %d an hour)" % (len(taken), LF_PER_ADDR))
    check(len(taken) + len(refused) == 1000, "%d + %d answers to 1000 requests" % (len(taken), len(refused)))
    check(lf_all_450(refused), "refusals past the limit are not 450 4.7.1: %s" % lf_codes(refused))
    check(queued == len(taken), "%d requests taken but %d confirmations queued" % (len(taken), queued))
    check(len(forged_pending) == len(taken), "%d requests taken but %d open" % (len(taken), len(forged_pending)))
    check(during == "confirmed", "a real subscriber during the flood: %s" % during)
    check(after == "confirmed", "a real subscriber after the flood: %s" % after)
    # relay_networks and logged-in clients are exempt (as Postfix exempts mynetworks from anvil's limits)
    c = srv.ctx.track(Smtp(srv.smtp_port, "127.0.0.1", source="127.0.0.2"))
    check(c.reply()[0] == 220, "greeting")
    c.expect("EHLO flood.test", 250)
    c.expect("AUTH PLAIN " + plain("alice@example.test", PASSWORDS["alice@example.test"]), 235)
    c.expect("MAIL FROM:<alice@example.test>", 250)
    c.expect("RCPT TO:<news-subscribe@example.test>", 250)
    c.expect("QUIT", 221)


@test(limit=150)
def listflood_many_addresses(ctx):
    srv = lf_server(ctx, domains=lf_domains(3, "g"))
    sources = ["127.0.0.%d" % i for i in range(2, 10)]
    results, progress = {}, [0]

    def flood(src):
        try:
            results[src] = lf_flood(srv, src, ["v%s-%d@g%d.test" % (src.split(".")[3], i, i % 3) for i in range(125)],
                                    progress=progress)
        except Exception as e:
            results[src] = e
    t0 = time.monotonic()
    threads = [threading.Thread(target=flood, args=(s,)) for s in sources]
    for th in threads:
        th.start()
    try:
        wait_for(lambda: progress[0] >= 300 or not any(th.is_alive() for th in threads), 60, "300 forged requests")
        during = lf_subscribe(srv, "bob@example.test", "127.0.0.20")
    finally:
        for th in threads:
            th.join(secs(100))
    elapsed = time.monotonic() - t0
    bad = [(s, r) for s, r in results.items() if not isinstance(r, tuple)]
    check(len(results) == len(sources) and not bad, "flood sessions failed: %s" % bad)
    taken = [a for r in results.values() for a in r[0]]
    refused = [x for r in results.values() for x in r[1]]
    after = lf_subscribe(srv, "carol@example.test", "127.0.0.21")
    # a real subscriber at a flooded domain is told to come back later, not dropped
    try:
        srv_refused = srv.send(["news-subscribe@example.test"], lf_request_msg("real@g0.test"), sender="real@g0.test")
        flooded = "250"
    except smtplib.SMTPRecipientsRefused as e:
        srv_refused = e.recipients
        flooded = "%d %s" % lf_reply(srv_refused["news-subscribe@example.test"])
    wait_for(lambda: len(maildir_files(srv, "dave@other.test")) >= len(taken), 10, "the confirmations")
    queued = len(maildir_files(srv, "dave@other.test"))
    per_src = {s: len(r[0]) for s, r in results.items()}
    per_dom = collections.Counter(a.split("@")[1] for a in taken)
    print("#   1,000 forged requests from 8 addresses for 3 domains in %.1fs: %d taken (per address %s, per domain %s), "
          "%d refused (%s); %d confirmations queued; a real subscriber during: %s; after: %s; one at a flooded domain: %s"
          % (elapsed, len(taken), sorted(per_src.values()), sorted(per_dom.values()), len(refused),
             ", ".join(lf_codes(refused)) or "-", queued - (flooded == "250"), during, after, short(flooded, 80)))
    check(max(per_src.values()) <= LF_PER_ADDR, "an address got %d requests taken (limit %d)" % (max(per_src.values()), LF_PER_ADDR))
    check(max(per_dom.values()) <= LF_PER_DOMAIN, "a domain got %d requests taken (limit %d)" % (max(per_dom.values()), LF_PER_DOMAIN))
    check(len(taken) + len(refused) == 1000, "%d + %d answers to 1000 requests" % (len(taken), len(refused)))
    check(lf_all_450(refused), "refusals: %s" % lf_codes(refused))
    check(queued - (flooded == "250") == len(taken), "%d taken, %d confirmations queued" % (len(taken), queued))
    check(flooded.startswith("450 "), "a request from a flooded domain: %s" % flooded)
    check(during == "confirmed", "a real subscriber during the flood: %s" % during)
    check(after == "confirmed", "a real subscriber after the flood: %s" % after)


@test(limit=90)
def listflood_full_table_evicts_oldest(ctx):
    srv = lf_server(ctx, domains=lf_domains(100))
    # the first request, made older by an hour in the state file (as an hour of waiting would)
    taken, refused = lf_flood(srv, "127.0.1.1", ["first@f0.test"])
    check(taken == ["first@f0.test"], "the first request: %s" % refused)
    path = os.path.join(srv.spool, "example.test", ".lists", "news", "state")
    with open(path) as f:
        text = f.read()
    first = lf_pending(srv)[0]
    line = [l for l in text.splitlines() if l.startswith("pending %s " % first[0])][0]
    aged = line.replace(" %s %s " % (first[2], first[3]), " %s %d " % (first[2], int(first[3]) - 3600))
    # 989 requests of a flood from many addresses minutes ago, in the state file (filling it through
    # SMTP takes 20 s, several minutes under the sanitizers: each request rewrites the whole file);
    # the oldest request sits in the middle, then 10 more through SMTP fill the table
    now = int(first[3])
    old = ["pending %024x subscribe old%d@f%d.test %d 192.0.2.%d <old%d@flood.test>"
           % (random.getrandbits(96), i, i % 100, now - 600 + i // 10, i % 250 + 1, i) for i in range(989)]
    with open(path, "w") as f:
        f.write(text.replace(line + "\n", "\n".join(old[:500] + [aged] + old[500:]) + "\n"))
    t0 = time.monotonic()
    taken, refused = lf_flood(srv, "127.0.1.2", ["r%d@f%d.test" % (i, i) for i in range(10)])
    check(not refused, "within the limits, refused: %s" % refused[:3])
    n = 990 + len(taken)
    fill = time.monotonic() - t0
    pend = lf_pending(srv)
    check(n == LF_PENDING_MAX and len(pend) == LF_PENDING_MAX, "%d requests taken, %d open" % (n, len(pend)))
    check(first[0] in [p[0] for p in pend], "the first request is gone before the table is full")
    after = lf_subscribe(srv, "bob@example.test", "127.0.0.20")
    pend = lf_pending(srv)
    code, text = srv.rcpt_code("news-confirm-%s@example.test" % first[0])
    print("#   %d open requests (the last 10 in %.1fs), then a real subscriber: %s; open requests now %d; the oldest "
          "request's code: %d %s" % (LF_PENDING_MAX, fill, after, len(pend), code, short(text, 60)))
    check(after == "confirmed", "a real subscriber with the table full: %s" % after)
    check(first[0] not in [p[0] for p in pend], "the oldest request was not evicted")
    check(len(pend) == LF_PENDING_MAX - 1, "%d open requests after one eviction and one confirmation" % len(pend))
    check(code == 550, "the evicted request's code: %d %s" % (code, text))
    check("evicted" in srv.log_text(), "the eviction is not logged")


@test(limit=60)
def listflood_unsendable_confirmation(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = lf_server(ctx, net)
    # a sender that cannot get mail here (no such mailbox): refused at RCPT, nothing kept
    try:
        srv.send(["news-subscribe@example.test"], lf_request_msg("nobody@example.test"), sender="nobody@example.test")
        got = "250"
    except smtplib.SMTPRecipientsRefused as e:
        got = "%d %s" % lf_reply(e.recipients["news-subscribe@example.test"])
    pend = lf_pending(srv)
    print("#   a request from a sender with no mailbox: %s, %d open requests" % (short(got, 80), len(pend)))
    check(got.startswith("550 "), "a request from <nobody@example.test> (no such mailbox): %s" % got)
    check(pend == [], "an open request with no confirmation sent: %s" % pend)
    # the queue cannot be written: the confirmation to a remote sender cannot be stored
    away = srv.queue + ".away" if os.path.isdir(srv.queue) else None  # made when first needed
    if away:
        os.rename(srv.queue, away)
    with open(srv.queue, "w") as f:
        f.write("not a folder\n")
    try:
        srv.send(["news-subscribe@example.test"], lf_request_msg("ann@remote.test"), sender="ann@remote.test")
        got = "250"
    except smtplib.SMTPResponseException as e:
        got = "%d %s" % (e.smtp_code, e.smtp_error.decode("latin-1"))
    finally:
        os.unlink(srv.queue)
        if away:
            os.rename(away, srv.queue)
    pend = lf_pending(srv)
    print("#   a request whose confirmation cannot be queued: %s, %d open requests" % (short(got, 80), len(pend)))
    check(got.startswith("451 "), "a request whose confirmation cannot be queued: %s" % got)
    check(pend == [], "an open request whose confirmation was not queued: %s" % pend)
    # once the queue works again, the retried request gets its confirmation and it works
    check(srv.send(["news-subscribe@example.test"], lf_request_msg("ann@remote.test"), sender="ann@remote.test") == {}, "")
    m = sink_wait(sink, 1, 15, "the confirmation at the sink")[0]
    check(confirm(srv, "ann@remote.test", confirmations([m["data"]])[0]) == {}, "confirmation refused")
    check(members(srv) == ["ann@remote.test"], "members: %s" % members(srv))

# end of section: listflood
