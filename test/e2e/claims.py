"""README promises that had no test (section claims), the Windows port wait (winunit), the
CLAIMS.md table check (claimstable) and the claims tests of sections claimsA and claimsB."""
import glob
import os
import re
import socket
import subprocess
import threading
import time

import fakes  # test/ is on sys.path: it is the entry point's folder

from .harness import (DOMAINS, HERE, Net, PASSWORDS, Pop, REPO, SENDER, SKIPPED, STOP_SIGNAL, Skip, Smtp,
                      TESTS, TestFailure, WINDOWS, check, dot_stuff, free_ports, make_msg, mbox_path,
                      need_real_time, need_root, plain, run_cli, secs, short, stored_tokens, test, tok,
                      token_of, tree, wait_for)
from .cli import add_cli, check_cli, del_cli, find_added, read, section_of
from .relay import check_relayed, queue_cli, queue_files, relay_mail, sink_wait, wait_queue_empty
from .tls import ehlo_words, gencert, pem_to_der, smtps_conn, starttls_conn, tls_server
from .lists import confirm, confirmations, list_req, list_server, local_confirmation, members, subscribe
from .trust_storage import check_whole, mbox_foreign, mbox_other_append, mbox_other_rewrite, ours
from .trust_abuse import AnvilNetns, lf_pending


# claims: README promises that had no test (issue 12, point 8)
# (section: claims)


def claims_reload(srv):
    """`mailsrv reload`: returns once the new file is in force (README, Command line)."""
    r = run_cli(["-c", srv.ini, "reload"])
    check(r.returncode == 0, "reload: exit %d, %s" % (r.returncode, short(r.stdout + r.stderr, 300)))


@test(limit=60)
def claims_reload_domains_aliases(ctx):
    """README: "Domains, mailboxes, aliases ... change without dropping sessions" on a reload: a new alias
    delivers, a removed alias is refused, a new domain is accepted."""
    srv = ctx.server().start()
    c = srv.smtp()  # a session that must survive the reload
    check(srv.rcpt_code("team@example.test")[0] == 250, "test bug: team@ not an alias before the reload")
    code, text = srv.rcpt_code("crew@example.test")
    check(code == 550, "RCPT crew@ before the reload: %s" % short(text))
    text = read(srv.ini).decode()
    new = text.replace("team = alice, bob\n", "crew = bob\n", 1) + "\n[domain new.test]\nnina = Passw0rd9\n\n[alias new.test]\npostmaster = nina\n"
    check("crew = bob" in new and "team =" not in new, "test bug: alias line not found")
    srv.write_ini(new)
    claims_reload(srv)
    t, _ = srv.deliver("crew@example.test")
    check([m["token"] for m in srv.fetch("bob@example.test")] == [t], "the new alias crew@ did not reach bob")
    code, text = srv.rcpt_code("team@example.test")
    check(code == 550 and "5.1.1" in text, "RCPT to the removed alias team@: %s" % short(text))
    # 127.0.0.1 may relay, so a 250 at RCPT proves nothing: the message must land in the new mailbox
    t2, _ = srv.deliver("nina@new.test")
    check([m["token"] for m in srv.fetch("nina@new.test", "Passw0rd9")] == [t2], "the new domain's mailbox got nothing")
    c.expect("NOOP", 250)


@test(limit=60)
def claims_reload_listener_needs_restart(ctx):
    """README: the listeners are read at start only: a reload that moves the smtp and pop3 ports logs that
    the change takes effect after a restart; the old listeners keep working, the new ports stay closed."""
    srv = ctx.server().start()
    new_smtp, new_pop = free_ports(2)
    text = read(srv.ini).decode()
    new = text.replace("smtp = 127.0.0.1:%d\n" % srv.smtp_port, "smtp = 127.0.0.1:%d\n" % new_smtp, 1)
    new = new.replace("pop3 = 127.0.0.1:%d\n" % srv.pop3_port, "pop3 = 127.0.0.1:%d\n" % new_pop, 1)
    new = new.replace("carol = Passw0rd3", "cathy = Passw0rd3", 1)  # shows the rest of the file applied
    check(str(new_smtp) in new and str(new_pop) in new, "test bug: listener lines not found")
    srv.write_ini(new)
    claims_reload(srv)
    log = srv.log_text()
    check("listener changes take effect after a restart" in log, "no log line about the listeners: %s"
          % short(log[-600:], 600))
    check(srv.rcpt_code("cathy@example.test")[0] == 250, "the rest of the file did not apply")
    srv.smtp().expect("QUIT", 221)  # the old SMTP listener still greets
    srv.pop("bob@example.test").quit()
    for port in (new_smtp, new_pop):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=secs(2))
        except OSError:
            continue
        s.close()
        raise TestFailure("the new port %d was opened by a reload" % port)


@test(limit=60)
def claims_received_loop_bounces(ctx):
    """README, Relaying: "A message with more than 30 Received: lines bounces as a mail loop (5.4.6)": it is
    never sent on, and the local sender gets a bounce with that status; 29 lines (30 with ours) still go."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server().start()
    sender = "alice@example.test"
    for n, loops in ((29, False), (31, True)):
        t = tok()
        hops = "".join("Received: from hop%d.test by hop%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i + 1)
                       for i in range(n)).encode()
        msg = hops + make_msg(t, to="user@remote.test", sender=sender)
        refused = srv.send(["user@remote.test"], msg, sender=sender)
        check(refused == {}, "%d Received: lines: refused %s" % (n, refused))
        wait_queue_empty(srv)
        sent = [m for m in sink.messages if t.encode() in m["data"]]
        if not loops:
            check(len(sent) == 1, "%d Received: lines: %d copies at the MX, expected 1" % (n, len(sent)))
            continue
        check(sent == [], "%d Received: lines: relayed anyway" % n)
        wait_for(lambda: any(t in m["data"].decode("latin-1") for m in srv.fetch(sender, "Passw0rd1")), 10, "the bounce")
        b = [m["data"].decode("latin-1") for m in srv.fetch(sender, "Passw0rd1") if t in m["data"].decode("latin-1")][0]
        check(re.search(r"(?m)^Status: 5\.4\.6\r?$", b), "the bounce has no Status: 5.4.6: %s" % short(b, 800))
        check("more than 30 Received: lines (a mail loop?)" in b, "the bounce does not say why: %s" % short(b, 800))


@test()
def claims_http_verbs_on_smtp(ctx):
    """README, Security: an HTTP request line as a first SMTP command (GET, POST, CONNECT: a browser or a
    proxy scanner) gets 554 5.7.0 and the connection is closed at once."""
    srv = ctx.server().start()
    for line in ("GET / HTTP/1.1", "POST /submit HTTP/1.0", "CONNECT mx.example.test:25 HTTP/1.1"):
        c = srv.smtp(ehlo=None)
        c.send(line + "\r\nHost: x\r\n\r\n")
        code, text = c.reply()
        check(code == 554 and text.startswith("554 5.7.0"), "%s: got %s, expected 554 5.7.0" % (line, short(text)))
        rest = c.read_eof()
        check(rest == b"", "%s: more after the 554: %s" % (line, short(rest)))
    check(srv.alive(), "the server died")


@test(unix_only=True, limit=60)
def claims_queue_owned_by_user(ctx):
    """README, Security: started as root with `user`, mailsrv gives the queue to that account and "creates
    files 0600 and folders 0700": a relayed message waiting in the queue (the MX defers it) is nobody's,
    0600, in a 0700 folder owned by nobody."""
    need_root()
    import pwd
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        raise Skip("no user nobody")
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_reply="451 4.3.0 try later")
    srv = net.server(server={"user": "nobody"}, relay={"retry": "3600"})
    os.chmod(ctx.dir, 0o755)  # nobody must reach its folders
    os.chmod(srv.dir, 0o755)
    srv.write_ini(srv.ini_text())
    srv.start()
    relay_mail(srv, ["user@remote.test"])
    wait_for(lambda: "deferred " in srv.log_text(), 10, "the deferral (the .env is rewritten then)")
    check(sink.messages == [], "the MX took the message: %s" % sink.messages)
    files = queue_files(srv)
    check(len(files) == 2, "queue files %s, expected one .env and one .msg" % files)
    for p in files + [srv.queue]:
        st = os.lstat(p)
        want = 0o700 if p == srv.queue else 0o600
        check(st.st_uid == nobody and (st.st_mode & 0o777) == want, "%s: uid %d mode %o, expected nobody (%d) and %o"
              % (p, st.st_uid, st.st_mode & 0o777, nobody, want))


def claims_list_request(srv, sender, kind):
    """A request to news-KIND@ by hand: every reply, the queue ids blanked."""
    c = srv.smtp()
    out = [c.cmd("MAIL FROM:<%s>" % sender), c.cmd("RCPT TO:<news-%s@example.test>" % kind), c.cmd("DATA")]
    c.send("From: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@client.test>\r\n\r\nplease\r\n.\r\n" % (sender, kind, tok()))
    out.append(c.reply())
    c.expect("QUIT", 221)
    return [(code, re.sub(r"[0-9A-Za-z]{8,}", "ID", text)) for code, text in out]


@test(limit=60)
def claims_list_members_never_revealed(ctx):
    """README, Mailing lists: "No mail command reveals the members". A stranger's unsubscribe gets the same
    SMTP replies as a member's, and no reply nor mail a stranger gets (help, subscribe, unsubscribe) names
    a member."""
    srv = list_server(ctx)
    subscribe(srv, "bob@example.test")
    check(members(srv) == ["bob@example.test"], "test bug: members %s" % members(srv))
    member = claims_list_request(srv, "bob@example.test", "unsubscribe")
    stranger = claims_list_request(srv, "carol@example.test", "unsubscribe")
    check(member == stranger, "a member's and a stranger's unsubscribe differ:\n%s\n%s" % (member, stranger))
    replies = [t for _, t in stranger]
    for kind in ("help", "subscribe"):
        replies += [t for _, t in claims_list_request(srv, "carol@example.test", kind)]
    got = wait_for(lambda: len(srv.fetch("carol@example.test")) >= 3 and srv.fetch("carol@example.test"), 10,
                   "carol's three answers")
    local_confirmation(srv, "bob@example.test", 2)  # bob's unsubscribe was answered to bob
    # A stranger's unsubscribe is answered "you are not subscribed", but only to its envelope sender, the
    # address it is about: a forger sees only the SMTP replies above, the same as for a member.
    for text in replies + [g["data"].decode("latin-1") for g in got]:
        check("bob" not in text.lower(), "a member's name in what a stranger got: %s" % short(text, 600))
    check(members(srv) == ["bob@example.test"], "members changed without a confirmation: %s" % members(srv))


def claims_backdate_pending(srv, secs_ago):
    """Makes every open request of the list secs_ago older in its state file (as waiting would)."""
    path = os.path.join(srv.spool, "example.test", ".lists", "news", "state")
    with open(path) as f:
        lines = f.read().split("\n")
    for i, l in enumerate(lines):
        w = l.split(" ")
        if w[0] == "pending":
            w[4] = str(int(w[4]) - secs_ago)
            lines[i] = " ".join(w)
    with open(path, "w") as f:
        f.write("\n".join(lines))


@test(limit=60)
def claims_list_repeat_within_10_minutes(ctx):
    """README: "A repeat of the same request within 10 minutes sends no second message"; one after that
    sends a new code, which replaces the old one. Time passes by backdating the open request in the state file."""
    srv = list_server(ctx)
    addr = "carol@example.test"
    check(list_req(srv, addr, "subscribe") == {}, "subscribe request refused")
    first = local_confirmation(srv, addr, 1)
    claims_backdate_pending(srv, 540)  # 9 minutes ago
    check(list_req(srv, addr, "subscribe") == {}, "the repeated request refused")
    wait_for(lambda: "repeated within 600s: no new mail" in srv.log_text(), 10, "the log line of the repeat")
    check(len(confirmations(g["data"] for g in srv.fetch(addr))) == 1, "a second confirmation within 10 minutes")
    check([p[0] for p in lf_pending(srv)] == [first], "open requests %s, expected the first one" % lf_pending(srv))
    claims_backdate_pending(srv, 120)  # 11 minutes ago
    check(list_req(srv, addr, "subscribe") == {}, "the request after 10 minutes refused")
    second = local_confirmation(srv, addr, 2)
    check(second != first and [p[0] for p in lf_pending(srv)] == [second],
          "after 10 minutes: codes %s then %s, open %s" % (first, second, lf_pending(srv)))
    code, text = srv.rcpt_code("news-confirm-%s@example.test" % first)
    check(code == 550, "the replaced code: %s" % short(text))
    check(confirm(srv, addr, second) == {} and members(srv) == [addr], "the new code does not subscribe")


@test(tls=True, limit=60)
def claims_tls_renewed_certificate_after_reload(ctx):
    """README, TLS: "A reload (file change or SIGHUP) picks up a renewed certificate. Sessions already open
    keep the old one." The certificate is renewed with gencert (old files moved away), then `mailsrv reload`."""
    srv = tls_server(ctx)
    srv.start()
    old = pem_to_der(srv.cert)
    c = smtps_conn(srv)
    check(c.sock.getpeercert(binary_form=True) == old, "test bug: not the first certificate")
    key = os.path.join(srv.dir, "key.pem")
    for p in (srv.cert, key):
        os.rename(p, p + ".old")
    gencert(srv)
    new = pem_to_der(srv.cert)
    check(new != old, "test bug: gencert made the same certificate")
    claims_reload(srv)
    for what, conn in (("smtps", smtps_conn(srv)), ("STARTTLS", starttls_conn(srv))):
        got = conn.sock.getpeercert(binary_form=True)
        check(got == new, "%s after the reload: %s certificate" % (what, "the old" if got == old else "another"))
        conn.expect("QUIT", 221)
    c.expect("NOOP", 250)  # the open session goes on with the old one
    check(c.sock.getpeercert(binary_form=True) == old, "the open session's certificate changed")


@test(limit=60, unix_only=True)
def claims_plaintext_auth_local_refuses_remote(ctx):
    """README: `plaintext_auth = local` (the default): AUTH and USER/PASS without TLS only from a loopback
    client. In a network namespace of the test's own (root), a client at fd00:0:0:1::2 (not loopback)
    gets no AUTH in EHLO, 538 5.7.11 to AUTH and -ERR [AUTH] to USER; a ::1 client of the same server logs in."""
    need_root()
    with AnvilNetns(ctx) as ns:
        host, remote = ns.NS_ADDRS[0], ns.NS_ADDRS[1]
        srv = ctx.server(server={"smtp": "[%s]:2525, [::1]:2525" % host, "submission": None,
                                 "pop3": "[%s]:1110, [::1]:1110" % host, "plaintext_auth": "local"})
        srv.smtp_port, srv.pop3_port = 2525, 1110
        srv.start()
        c = ctx.track(Smtp(2525, host, source=remote))
        check(c.reply()[0] == 220, "no greeting")
        check("AUTH" not in ehlo_words(c.expect("EHLO client.test", 250)), "EHLO offers AUTH to a remote client")
        c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 538, "5.7.11")
        p = ctx.track(Pop(1110, host, source=remote))
        p.greet()
        line = p.err("USER alice@example.test")
        check(line.startswith(b"-ERR [AUTH] Plain-text logins are not allowed from this address"),
              "USER from a remote client: %s" % short(line))
        # the same server, from loopback
        c = ctx.track(Smtp(2525, "::1"))
        check(c.reply()[0] == 220, "no greeting on ::1")
        check("AUTH" in ehlo_words(c.expect("EHLO client.test", 250)), "EHLO offers no AUTH on ::1")
        c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)
        p = ctx.track(Pop(1110, "::1"))
        p.greet()
        p.login("alice@example.test", "Passw0rd1")
        srv.stop()  # inside the namespace, before it goes


@test(limit=60, unix_only=True)
def claims_plaintext_auth_yes_lets_remote_in(ctx):
    """README: `plaintext_auth = yes` lets clients on other machines log in over plain text. The same
    remote client (fd00:0:0:1::2, in a network namespace of the test's own) that `local` refuses
    (claims_plaintext_auth_local_refuses_remote) sees AUTH in EHLO, gets 235 to AUTH PLAIN, logs in
    by USER/PASS and reads its mail."""
    need_root()
    with AnvilNetns(ctx) as ns:
        host, remote = ns.NS_ADDRS[0], ns.NS_ADDRS[1]
        srv = ctx.server(server={"smtp": "[%s]:2525" % host, "submission": None, "pop3": "[%s]:1110" % host,
                                 "plaintext_auth": "yes"})
        srv.smtp_port, srv.pop3_port = 2525, 1110
        srv.start()
        c = ctx.track(Smtp(2525, host, source=remote))
        check(c.reply()[0] == 220, "no greeting")
        check("AUTH" in ehlo_words(c.expect("EHLO client.test", 250)), "EHLO offers no AUTH to a remote client")
        c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)
        t = tok()
        c.expect("MAIL FROM:<alice@example.test>", 250)
        c.expect("RCPT TO:<alice@example.test>", 250)
        c.expect("DATA", 354)
        c.expect(dot_stuff(make_msg(t)).decode() + ".", 250)
        p = ctx.track(Pop(1110, host, source=remote))
        p.greet()
        p.login("alice@example.test", "Passw0rd1")
        check(token_of(p.retr(1)) == t, "the remote client did not read its message")
        p.quit()
        srv.stop()  # inside the namespace, before it goes


@test(limit=90)
def claims_sigterm_drain_cap(ctx):
    """README: "SIGTERM or SIGINT: stop accepting, let messages in flight finish (30 s at most), exit 0".
    The cap is fixed (MS_STOP_GRACE_MS), so this waits ~30 s: native runs only. One session in DATA finishes
    its message after the signal and gets 250; one stalled in DATA holds the server no longer than 30 s
    (timeout = 300 here, so only the cap can end it), and its half message is not stored."""
    need_real_time()
    srv = ctx.server(server={"timeout": "300"}).start()
    done, stalled = tok(), tok()
    sessions = []
    for t in (done, stalled):
        c = srv.smtp()
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<alice@example.test>", 250)
        c.expect("DATA", 354)
        c.send(make_msg(t)[:40])
        sessions.append(c)
    base = len(srv.log_text())
    t0 = time.monotonic()
    srv.proc.send_signal(STOP_SIGNAL)
    wait_for(lambda: "stopping" in srv.log_text()[base:], 5, "the stopping log line")
    check(srv.alive(), "the server did not wait for the sessions in DATA")
    sessions[0].send(make_msg(done)[40:] + b"\r\n.\r\n")
    code, text = sessions[0].reply()
    check(code == 250, "the message in flight after SIGTERM: %s" % short(text))
    try:
        rc = srv.proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        raise TestFailure("still running 45 s after SIGTERM (the cap is 30 s)")
    took = time.monotonic() - t0
    print("#   exit %d %.1f s after SIGTERM with a session stalled in DATA" % (rc, took))
    check(rc == 0, "exit status %d after the drain" % rc)
    check(29 <= took <= 40, "exited %.1f s after SIGTERM, expected the 30 s cap" % took)
    check(stored_tokens(srv, "alice@example.test") == [done], "stored: %s, expected only the finished message"
          % stored_tokens(srv, "alice@example.test"))

# end of section: claims


# =============================================================================================
# (section: winunit)
@test(limit=240)
def windows_bind_waits_for_busy_port(ctx):
    """Windows: a server whose port is taken logs that it waits, retries each second (MS_BIND_WAIT_S,
    for a crashed predecessor's connections in TIME_WAIT under SO_EXCLUSIVEADDRUSE) and listens once
    the port is free. Wine cannot stage the crash itself: it binds over TIME_WAIT, and may hold a
    SIGKILLed process's sockets for minutes (Server.move_ports), so a live holder takes the port here."""
    if not WINDOWS:
        raise Skip("Windows only: elsewhere a busy port fails the start at once (MS_BIND_WAIT_S 0)", "windows")
    a = ctx.server(submission=False).start()
    b = ctx.server(submission=False, server={"smtp": a.keys["smtp"], "pop3": a.keys["pop3"]})
    b.smtp_port, b.pop3_port = a.smtp_port, a.pop3_port  # its clients' ports too
    b.start(wait=False)
    line = "127.0.0.1:%d is still in use; waiting up to 240 s for it" % a.smtp_port  # (the listener's name: LMTP's may be a path)
    wait_for(lambda: line in b.log_text(), 60, "the waiting line in the second server's log")
    time.sleep(3)  # not a synchronisation: the port stays busy over several of its 1 s retries
    check(b.alive() and "listening for" not in b.log_text(),
          "the second server did not wait: %s" % short(b.log_text(), 400))
    rc, killed = a.stop()
    check(rc == 0 and not killed, "first server: exit status %s%s" % (rc, " (killed)" if killed else ""))
    b.wait_ready(timeout=10)  # it retries each second, so it takes the port within about one
    check("listening for smtp on 127.0.0.1:%d" % a.smtp_port in b.log_text(),
          "no listening line: %s" % short(b.log_text(), 400))
    t, _ = b.deliver()
    check(b.fetch("alice@example.test")[0]["token"] == t, "the second server did not store the message")

# end of section: winunit


# =============================================================================================
# (section: claimstable)
# issue 12 (8): test/CLAIMS.md maps every promise of README.md to the tests that prove it. This test
# keeps the map honest: a promise whose row names no test, or names a test that does not exist,
# fails here, all of them listed at once, so a claim without a test cannot go unnoticed.


def claims_rows(text):
    r"""(line number, section, promise, [test names]) for each row of CLAIMS.md's table. Cells are
    split on `|` not preceded by a backslash (a promise may write `a \| b`)."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if cells[:1] == ["README section"] or all(re.match(r"^:?-+:?$", c) for c in cells):
            continue  # the header and the separator
        tests = [t.strip() for t in cells[-1].split(",")] if len(cells) == 3 else []
        rows.append((n, cells[0] if cells else "", cells[1] if len(cells) > 1 else "", [t for t in tests if t], len(cells)))
    return rows


CLAIMS_UNTESTED = 0  # NONE rows in test/CLAIMS.md: a new promise comes with its test


@test()
def claims_table(ctx):
    text = read(os.path.join(HERE, "CLAIMS.md")).decode()
    readme = read(os.path.join(REPO, "README.md")).decode()
    heads = [h.strip() for h in re.findall(r"(?m)^#{2,3} (.+)$", readme)]
    unit = read(os.path.join(HERE, "unit.c")).decode()
    makefile = read(os.path.join(REPO, "Makefile")).decode()
    e2e = {re.sub(r"\[.*\]$", "", name) for name, _, _, _ in TESTS} | set(SKIPPED)
    rows = claims_rows(text)
    check(len(rows) >= 100, "test/CLAIMS.md has only %d rows" % len(rows))
    untested, unknown, bad = [], [], []
    for n, section, promise, tests, ncells in rows:
        where = "CLAIMS.md:%d (%s: %s)" % (n, section, promise)
        if ncells != 3 or not promise:
            bad.append("%s: expected | section | promise | tests |" % where)
            continue
        if not any(re.match(re.escape(section) + r"(:| \(|$)", h) for h in heads):  # "Quick start (Debian...)"
            bad.append("%s: no README heading %r" % (where, section))
        if not tests:
            bad.append("%s: no tests cell (NONE if there is no test)" % where)
            continue
        if tests == ["NONE"]:
            untested.append(where)
            continue
        for t in tests:
            name = re.sub(r" \(.*\)$", "", t)  # "name (what it leaves out)"
            if name.startswith("make "):
                words = name.split()  # make TARGET [VAR=value...]
                ok = len(words) > 1 and re.search(r"(?m)^%s\s*:" % re.escape(words[1]), makefile)
            elif name.startswith("fuzz:"):
                ok = os.path.exists(os.path.join(HERE, "fuzz", name[5:] + ".c"))
            elif name.startswith("test_"):
                ok = re.search(r"(?m)^%s\(void\)$" % re.escape(name), unit) and name + "();" in unit
            else:
                ok = name in e2e
            if not ok:
                unknown.append("%s: %s" % (where, t))
    for where in untested:
        print("#   no test yet: %s" % where)
    problems = []
    if len(untested) > CLAIMS_UNTESTED:
        problems.append("%d promises without a test, %d known: add the test (a new promise needs one)"
                        % (len(untested), CLAIMS_UNTESTED))
    if unknown:
        problems.append("%d tests that do not exist:\n  %s" % (len(unknown), "\n  ".join(unknown)))
    if bad:
        problems.append("%d malformed rows:\n  %s" % (len(bad), "\n  ".join(bad)))
    check(not problems, "test/CLAIMS.md:\n" + "\n".join(problems))
    print("#   %d promises, %d of them with a test" % (len(rows), len(rows) - len(untested)))

# end of section: claimstable


# (section: claimsA)
# Promises of README.md that test/CLAIMS.md listed without a test (NONE), each proved here through
# the command line or real clients, on a server started by the test.


def claimsA_sections(text):
    """{section header: [(key, value), ...]} of an INI text (sections met twice are joined)."""
    out, cur = {}, None
    for line in text.splitlines():
        s = re.sub(r"\s+;.*$", "", line).strip()
        if not s or s[0] in ";#":
            continue
        if s.startswith("["):
            cur = out.setdefault(s, [])
        elif cur is not None and "=" in s:
            k, _, v = s.partition("=")
            cur.append((k.strip(), v.strip()))
    return out


@test(limit=60)
def claimsA_add_new_domain_postmaster(ctx):
    """README, Command line: `add` on a new domain creates its [domain] section "with the new mailbox as its
    postmaster": the INI gets [alias fresh.test] postmaster = nina, and once the running server has loaded
    it, mail to postmaster@fresh.test reaches nina's mailbox. The domain's second mailbox is not made its
    postmaster."""
    srv = ctx.server().start()
    orig = read(srv.ini)
    r = add_cli(srv, "Nina@Fresh.Test", "Str0ngPassw0rd")
    check(r.returncode == 0, "add nina@fresh.test: exit %d, %s" % (r.returncode, short(r.stderr)))
    check("it is also its postmaster" in r.stdout, "add on a new domain did not say so: %s" % short(r.stdout))
    new = read(srv.ini)
    check(new.startswith(orig), "add to a new domain changed the existing text:\n%s" % short(new, 1200))
    added = claimsA_sections(new[len(orig):].decode())
    dom = added.get("[domain fresh.test]", [])
    check([k for k, v in dom] == ["nina"] and dom[0][1].startswith("$pbkdf2-sha256$"),
          "[domain fresh.test] after add: %s" % short(dom))
    check(added.get("[alias fresh.test]") == [("postmaster", "nina")],
          "[alias fresh.test] after add: %s (appended text %s)" % (added.get("[alias fresh.test]"), short(new[len(orig):], 600)))
    claims_reload(srv)
    # 127.0.0.1 may relay, so a 250 at RCPT proves nothing: the messages must land in nina's mailbox
    t1, _ = srv.deliver("postmaster@fresh.test")
    t2, _ = srv.deliver("PostMaster@FRESH.test")
    got = [m["token"] for m in srv.fetch("nina@fresh.test", "Str0ngPassw0rd")]
    check(sorted(got) == sorted([t1, t2]), "nina@fresh.test got %s, expected the two postmaster messages %s" % (got, [t1, t2]))
    check(not queue_files(srv), "mail to postmaster@fresh.test was queued for relaying: %s" % queue_files(srv))
    # the domain exists now: its next mailbox is only a mailbox
    before = read(srv.ini)
    r = add_cli(srv, "omar@fresh.test", "Str0ngPassw0rd")
    check(r.returncode == 0, "add omar@fresh.test: exit %d, %s" % (r.returncode, short(r.stderr)))
    check("postmaster" not in r.stdout, "the second mailbox of fresh.test was called its postmaster: %s" % short(r.stdout))
    i, nl = find_added(before, read(srv.ini), "omar")
    check(section_of(nl, i) == b"[domain fresh.test]", "omar added in section %s" % short(section_of(nl, i)))


@test()
def claimsA_del_aliased_mailbox_refused(ctx):
    """README, Command line: "removing a mailbox that an alias still names is refused": `del` of a mailbox
    named by an alias of its domain (bare) or of another domain (user@domain) exits 1, names the alias,
    and leaves the INI as it was byte for byte; also in a domain with a catch-all, where the file would
    stay valid (the alias would silently go to the catch-all). A mailbox no alias names is removed."""
    domains = DOMAINS.replace("* = dave\n", "* = dave\nboard = carol@example.test\nstaff = dave, carol\n", 1)
    srv = ctx.server(domains=domains.replace("dave = Passw0rd5\n", "dave = Passw0rd5\nerin = Passw0rd6\n", 1))
    check(b"staff = dave, carol" in read(srv.ini) and b"erin =" in read(srv.ini), "test bug: the INI lacks the test's lines")
    orig = read(srv.ini)
    for addr, alias in (("bob@example.test", "team@example.test"), ("alice@example.test", "postmaster@example.test"),
                        ("carol@example.test", "board@other.test"), ("carol@other.test", "staff@other.test")):
        r = del_cli(srv, addr)
        check(r.returncode == 1, "del %s (named by %s): exit %d, stdout %s" % (addr, alias, r.returncode, short(r.stdout)))
        check(alias in r.stderr, "del %s: the refusal does not name the alias %s: %s" % (addr, alias, short(r.stderr, 600)))
        check(read(srv.ini) == orig, "a refused del %s changed the INI:\n%s" % (addr, short(read(srv.ini), 1200)))
    r = check_cli(srv)
    check(r.returncode == 0, "check after the refused dels: exit %d %s" % (r.returncode, short(r.stderr)))
    # control: erin@other.test is named by no alias: it goes, and only its line
    r = del_cli(srv, "erin@other.test")
    check(r.returncode == 0, "del erin@other.test (no alias names it): exit %d %s" % (r.returncode, short(r.stderr)))
    check(read(srv.ini) == orig.replace(b"erin = Passw0rd6\n", b"", 1) != orig,
          "del erin@other.test did not remove just its line:\n%s" % short(read(srv.ini), 1200))


@test(limit=60)
def claimsA_queue_relative_to_ini(ctx):
    """README, Configuration reference: `queue = outq` is relative to the INI file's folder, like `spool`
    (spool_relative_to_ini): with the server started in another working directory, a message that must
    wait for its retry is queued as ID.msg + ID.env in the INI's folder/outq, nothing in the working
    directory; `mailsrv queue`, run from that other directory too, finds it there."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    sink.script("data", ["451 4.3.0 try later"])
    srv = net.server(server={"queue": "outq"}, relay={"retry": "1h"})  # the message waits: no retry in the test
    srv.queue = os.path.join(srv.dir, "outq")
    other = os.path.join(ctx.dir, "elsewhere")
    os.mkdir(other)
    srv.start(cwd=other)
    t, _ = relay_mail(srv, ["user@remote.test"])  # the entry is written before the 250
    check(os.listdir(other) == [], "the server wrote into its working directory: %s" % sorted(tree(other)))
    check(os.path.isdir(srv.queue), "no folder %s beside the INI" % srv.queue)
    wait_for(lambda: sink.stage_count("data") >= 1, 10, "the first attempt (451 to DATA) at the remote server")
    wait_for(lambda: "tries=1" in queue_cli(srv), 10, "the failed attempt to be recorded (`queue`: tries=1)", 0.2)
    names = sorted(os.listdir(srv.queue))
    ids = {n[:-4] for n in names if n.endswith(".msg")}
    check(len(ids) == 1 and names == sorted([i + ".msg" for i in ids] + [i + ".env" for i in ids]),
          "%s holds %s, expected one ID.msg and its ID.env" % (srv.queue, names))
    check(token_of(read(os.path.join(srv.queue, ids.pop() + ".msg"))) == t, "the queued message is not the one sent")
    check(os.listdir(other) == [], "the server wrote into its working directory: %s" % os.listdir(other))
    check(not os.path.exists(os.path.join(srv.dir, "queue")), "the default queue folder was made beside the INI")
    r = run_cli(["-c", srv.ini, "queue"], cwd=other)
    check(r.returncode == 0 and "tries=1" in r.stdout and "queued in %s\n" % srv.queue in r.stdout,
          "`queue` from another directory: exit %d, %s" % (r.returncode, short(r.stdout + r.stderr, 500)))


@test()
def claimsA_max_per_ip_relay_networks_exempt(ctx):
    """README, Configuration reference: `max_per_ip` (relay_networks are exempt): with max_per_ip = 2 and
    relay_networks = 127.0.0.1/32, five sessions from 127.0.0.1 are all greeted; 127.0.0.2, outside, gets
    421 4.3.2 at its third, and so does 127.0.0.1 on a server without relay_networks."""
    keys = {"max_per_ip": "2", "max_clients": "10"}
    srv = ctx.server(server=dict(keys, relay_networks="127.0.0.1/32")).start()
    held = [srv.smtp(ehlo=None) for _ in range(4)] + [srv.pop()]  # srv.smtp/pop check the greeting
    got = [ctx.track(Smtp(srv.smtp_port, source="127.0.0.2")).reply() for _ in range(3)]  # one after the other
    check([c for c, _ in got[:2]] == [220, 220], "127.0.0.2's first two sessions: %s" % short(got[:2]))
    check(got[2][0] == 421 and "4.3.2" in got[2][1], "127.0.0.2's third session got %s, expected 421 4.3.2 (the control)"
          % short(got[2][1]))
    for c in held[:4]:
        c.expect("NOOP", 250)  # still served
    other = ctx.server(server=dict(keys, relay_networks="")).start()
    for _ in range(2):
        other.smtp(ehlo=None)
    c = ctx.track(Smtp(other.smtp_port))
    code, text = c.reply()
    check(code == 421 and "4.3.2" in text, "without relay_networks, 127.0.0.1's third session got %s, expected 421 4.3.2"
          % short(text))


@test(limit=60)
def claimsA_relay_rcpt_dot_atom_only(ctx):
    """README, Relaying: "Remote recipients must be plain dot-atoms (quoted local parts and address literals
    get 553 5.1.3)", for a client that may relay (127.0.0.1, in relay_networks); a plain remote recipient in
    the same transaction is accepted, and only it reaches the remote server."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server().start()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    for a in ('"a b"@remote.test', '"x@y"@remote.test', "user@[192.0.2.1]", "user@[127.0.0.2]", "user@[IPv6:::1]"):
        c.expect("RCPT TO:<%s>" % a, 553, "5.1.3")
    c.expect("RCPT TO:<user@remote.test>", 250)
    t = tok()
    msg = make_msg(t, to="user@remote.test")
    c.expect("DATA", 354)
    c.send(dot_stuff(msg) + b".\r\n")
    code, text = c.reply()
    check(code == 250, "DATA: %s" % short(text))
    c.expect("QUIT", 221)
    got = sink_wait(sink, 1, 10)
    check(len(got) == 1 and [r.lower() for r in got[0]["rcpts"]] == ["user@remote.test"],
          "the remote server got %s" % [m["rcpts"] for m in got])
    check(token_of(got[0]["data"]) == t, "the relayed message is not the one sent")
    wait_queue_empty(srv)
    check(sink.connections == 1, "%d connections to the remote server, expected 1" % sink.connections)

# end of section: claimsA


# (section: claimsB)


def claimsb_probe(srv, addr):
    """(POP3 login's first reply line, SMTP delivery's final code, the token sent) for addr's mailbox."""
    p = srv.pop()
    p.ok("USER " + addr)
    r = p.cmd("PASS " + PASSWORDS[addr])
    if r.startswith(b"+OK"):
        p.quit()
    else:
        p.close()
    t = tok()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    code, text = c.cmd("RCPT TO:<%s>" % addr)
    if code == 250:
        c.expect("DATA", 354)
        code, text = c.cmd(dot_stuff(make_msg(t, to=addr)).decode() + ".")
    c.expect("QUIT", 221)
    c.close()
    return r, code, t


@test(unix_only=True, limit=60)
def mbox_dotlock_stale_by_age(ctx):
    """README, Storage layout: a dotlock without a PID is stale after 5 minutes, one with a live PID
    after an hour (a PID may be reused). Each lock is made here by hand and aged with utime: a stale
    one is taken over (POP3 login +OK, delivery 250, the lock gone after), a live one makes the
    mailbox busy (-ERR [IN-USE], 451) and is left as it was. The ages either side of each limit
    show the limits themselves; the live PID is this test's own."""
    srv = ctx.server(storage="mbox").start()
    t0, _ = srv.deliver()
    want = [t0]
    lock = mbox_path(srv, "alice@example.test") + ".lock"
    mine = "%d\n" % os.getpid()
    cases = [("", 4 * 60, False), ("", 6 * 60, True), ("", 0, False),
             (mine, 0, False), (mine, 55 * 60, False), (mine, 65 * 60, True), (mine, 2 * 3600, True)]
    try:
        for content, age, stale in cases:
            what = "%s lock %d min old" % ("a PID" if content else "an empty", age // 60)
            with open(lock, "w") as f:
                f.write(content)
            then = time.time() - age
            os.utime(lock, (then, then))
            r, code, t = claimsb_probe(srv, "alice@example.test")
            if stale:
                check(r.startswith(b"+OK"), "%s: POP3 login %s, expected +OK (stale)" % (what, short(r)))
                check(code == 250, "%s: delivery got %d, expected 250 (stale)" % (what, code))
                check(not os.path.exists(lock), "%s: a lock is left after the takeover" % what)
                want.append(t)
            else:
                check(r.startswith(b"-ERR [IN-USE]"), "%s: POP3 login %s, expected -ERR [IN-USE]" % (what, short(r)))
                check(code == 451, "%s: delivery got %d, expected 451 (busy)" % (what, code))
                check(read(lock).decode() == content, "%s: the lock was changed: %s" % (what, short(read(lock))))
                os.unlink(lock)
    finally:
        if os.path.exists(lock):
            os.unlink(lock)
    check_whole(srv.fetch("alice@example.test"), [ours(t) for t in want], "after the locks")


def claimsb_blocks(data):
    """An mbox's bytes cut at each From_ line (every block holds its message and separator line)."""
    starts = [m.start() for m in re.finditer(rb"(?m)^From ", data)]
    check(starts[:1] == [0], "test bug: the mbox does not start with a From_ line")
    return [data[a:b] for a, b in zip(starts, starts[1:] + [len(data)])]


@test(limit=60)
def mbox_quit_keeps_message_not_found_again(ctx):
    """README, Protocols: at QUIT the deletions are applied by UIDL to the mbox as it is then, and a
    message that cannot be found again is kept. Six messages, four of them deleted in a session;
    before QUIT another program edits the file: it drops the X-UIDL line of mailsrv's message 3 and
    rewrites the Subject of foreign message 4 (whose UIDL is derived from its header), so neither
    is found again, and adds a Status: line to foreign message 5 (a field the UIDL leaves out).
    After QUIT the file is blocks 1, 3, 4 and 6 exactly as that program left them: 3 and 4 are kept,
    2 and 5, found again, are removed (the control), and nothing else was touched."""
    srv = ctx.server(storage="mbox").start()
    t1, _ = srv.deliver()
    t2, _ = srv.deliver()
    t3, _ = srv.deliver()
    path = mbox_path(srv, "alice@example.test")
    mbox_other_append(path, mbox_foreign(4) + mbox_foreign(5))
    t6, _ = srv.deliver()
    p = srv.pop("alice@example.test")
    order = [token_of(p.top(n, 0)) for n in range(1, 7)]
    check(order == [t1, t2, t3, "foreign4", "foreign5", t6], "test bug: the mailbox holds %s" % order)
    for n in (2, 3, 4, 5):
        p.ok("DELE %d" % n)
    blocks = claimsb_blocks(read(path))
    check(len(blocks) == 6, "test bug: %d From_ lines" % len(blocks))
    b3 = re.sub(rb"(?m)^X-UIDL: .*\n", b"", blocks[2], count=1)
    b4 = blocks[3].replace(b"Subject: foreign 4\n", b"Subject: foreign 4 (edited)\n")
    b5 = blocks[4].replace(b"\n\n", b"\nStatus: RO\n\n", 1)
    check(b3 != blocks[2] and b4 != blocks[3] and b5 != blocks[4], "test bug: an edit did not apply")
    edited = [blocks[0], blocks[1], b3, b4, b5, blocks[5]]
    mbox_other_rewrite(path, lambda data: b"".join(edited))  # in place under both locks, as a MUA does
    p.quit()
    after = read(path)
    check(after == b"".join(edited[i] for i in (0, 2, 3, 5)),
          "the mbox after QUIT holds %s, expected %s (messages 3 and 4 kept as edited, 2 and 5 removed)"
          % ([token_of(b) for b in claimsb_blocks(after)], [t1, t3, "foreign4", t6]))
    got = srv.fetch("alice@example.test")
    check([g["token"] for g in got] == [t1, t3, "foreign4", t6], "POP3 shows %s" % [g["token"] for g in got])


def claimsb_env(srv):
    """The one queue entry's `tries` and `next` (wall-clock seconds) as ID.env holds them."""
    envs = glob.glob(os.path.join(srv.queue, "*.env"))
    check(len(envs) == 1, "%d queue entries" % len(envs))
    text = read(envs[0]).decode()
    return int(re.search(r"(?m)^tries (\d+)$", text).group(1)), int(re.search(r"(?m)^next (\d+)$", text).group(1))


@test(limit=60)
def relay_retry_capped_at_an_hour(ctx):
    """README, Configuration reference: `retry` is the first retry's delay, then doubling, capped at
    1 h. The MX defers every attempt; `mailsrv flush` brings each next attempt at once, so no hour
    passes: after each the queue entry's next try is retry, 2 x retry, then 1 h (not 4 x retry =
    80 min), and 1 h again, counted from the attempt's end (retry = 20 min)."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_reply="451 4.2.1 mailbox busy")
    srv = net.server(relay={"retry": "20m", "expire": "1d"}).start()
    t_before = time.time()
    relay_mail(srv, ["user@remote.test"])
    for k, delay in enumerate((1200, 2400, 3600, 3600), 1):
        if k > 1:
            t_before = time.time()
            r = run_cli(["-c", srv.ini, "flush"])
            check(r.returncode == 0, "flush: exit %d, %s" % (r.returncode, short(r.stderr)))
        tries, nxt = wait_for(lambda: (lambda e: e if e[0] >= k else None)(claimsb_env(srv)), 10,
                              "attempt %d in the queue entry" % k, 0.1)
        t_after = time.time()
        check(tries == k, "tries %d after attempt %d" % (tries, k))
        check(sink.stage_count("rcpt") == k, "the MX saw %d RCPTs after %d attempts" % (sink.stage_count("rcpt"), k))
        check(int(t_before) + delay <= nxt <= int(t_after) + delay,
              "attempt %d: next try in %d s, expected %d s" % (k, nxt - int(t_after), delay))
    check(srv.alive(), "the server died")


class ClaimsbHoldSink(fakes.SmtpSink):
    """A sink that greets nobody until release() and counts the outbound sessions open at once: at
    each new connection, the earlier ones the server has not closed (its sockets are kept open here,
    so an EOF can only be the server's). The server closes a session a loop turn before it starts
    the next, so the count never sees one that was over."""

    def __init__(self, host, port):
        self.gate = threading.Event()
        self.held = []
        self.peak = 0
        super().__init__(host, port)

    @staticmethod
    def _open(s):
        import select
        try:  # nothing to read yet, or data: open; readable and empty: the server's EOF
            return not select.select([s], [], [], 0)[0] or s.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def _session(self, conn, peer):
        with self.cond:
            self.peak = max(self.peak, 1 + sum(1 for s in self.held if self._open(s)))
            self.held.append(conn)
            self.cond.notify_all()
        self.gate.wait(secs(30))
        try:
            self._talk(conn, conn.makefile("rb"), peer)
        except (OSError, ValueError):
            pass  # closed by close() at the end, with the others



def claimsb_two_sessions_held(sink):
    """max_outbound = 2: two sessions reach the holding MX, and no third comes."""
    wait_for(lambda: len(sink.held) >= 2, 10, "two outbound sessions at the MX")
    time.sleep(secs(0.5))  # not a synchronisation: a third session, if the limit failed, would come meanwhile
    check(len(sink.held) == 2 and sink.peak == 2, "%d sessions opened (%d at once) with max_outbound = 2"
          % (len(sink.held), sink.peak))


@test(limit=60)
def relay_max_outbound(ctx):
    """README: `[relay] max_outbound` is the most outbound sessions at once. Four queued messages for
    four domains routed to one MX that greets nobody until released, max_outbound = 2: two sessions
    open and wait, the other two messages stay queued; released, all four are delivered, and never
    were more than two sessions open at once."""
    net = Net(ctx)
    sink = ctx.track(ClaimsbHoldSink("127.0.0.2", net.port))
    doms = ["d%d.test" % i for i in range(1, 5)]
    srv = net.server(relay={"max_outbound": "2", "timeout": "60"},
                     route={d: "127.0.0.2:%d" % net.port for d in doms}).start()
    try:
        sent = {relay_mail(srv, ["user@" + d])[0]: d for d in doms}
        claimsb_two_sessions_held(sink)
    finally:
        sink.gate.set()
    got = sink_wait(sink, 4, 20, "messages after the release")
    check(sorted((token_of(g["data"]), g["rcpts"]) for g in got) == sorted((t, ["user@" + d]) for t, d in sent.items()),
          "the MX got %s" % [(token_of(g["data"]), g["rcpts"]) for g in got])
    wait_queue_empty(srv)
    check(sink.peak == 2, "%d outbound sessions at once with max_outbound = 2" % sink.peak)


@test(limit=60)
def relay_reuses_connection(ctx):
    """Messages queued for one domain while a session to it is open go over that session, one
    transaction after another (Postfix's connection reuse): three messages, max_outbound = 1, a
    next hop that greets nobody until released; released, it gets all three over one connection."""
    net = Net(ctx)
    sink = ctx.track(ClaimsbHoldSink("127.0.0.2", net.port))
    srv = net.server(relay={"max_outbound": "1", "timeout": "60"},
                     route={"far.test": "127.0.0.2:%d" % net.port}).start()
    try:
        sent = [relay_mail(srv, ["user@far.test"])[0]]
        wait_for(lambda: len(sink.held) >= 1, 10, "the outbound session at the next hop")
        sent += [relay_mail(srv, ["user@far.test"])[0] for _ in range(2)]
    finally:
        sink.gate.set()
    got = sink_wait(sink, 3, 20, "messages after the release")
    check(sorted(token_of(g["data"]) for g in got) == sorted(sent), "the next hop got %s, expected %s"
          % ([token_of(g["data"]) for g in got], sent))
    wait_queue_empty(srv)
    check(sink.connections == 1, "%d connections for three messages to one domain, expected 1" % sink.connections)


class ClaimsbMuteSink(fakes.SmtpSink):
    """A sink that greets, then reads every line and answers none; notes when it greeted, the
    lines, and when the server closed."""

    def __init__(self, host, port):
        self.greeted = self.eof = None
        self.lines = []
        super().__init__(host, port)

    def _session(self, conn, peer):
        conn.sendall(b"220 mute.test ESMTP\r\n")
        self.greeted = time.monotonic()
        f = conn.makefile("rb")
        try:
            for line in iter(lambda: f.readline(4096), b""):
                self.lines.append(line)
        except OSError:
            pass
        self.eof = time.monotonic()


class ClaimsbSlowSink(fakes.SmtpSink):
    """A sink that waits `delay` seconds before each reply (before its last line)."""
    delay = 1.0

    def _session(self, conn, peer):
        sink = self

        class Slow:
            def sendall(self, data):
                if data[3:4] != b"-":
                    time.sleep(sink.delay)
                conn.sendall(data)
        try:
            self._talk(Slow(), conn.makefile("rb"), peer)
        except (OSError, ValueError):
            pass


@test(limit=60)
def relay_timeout_reply(ctx):
    """README: `[relay] timeout` bounds each outbound step. An MX that greets and never answers EHLO:
    with timeout = 2 the session is closed no sooner than 2 s after the greeting, the recipient is
    deferred (not bounced) with the error naming the timeout, in `mailsrv queue` and the log; local
    mail goes on meanwhile, and the server answers after."""
    net = Net(ctx)
    mute = ctx.track(ClaimsbMuteSink("127.0.0.2", net.port))
    srv = net.server(relay={"timeout": "2", "retry": "1h"}, route={"mute.test": "127.0.0.2:%d" % net.port}).start()
    relay_mail(srv, ["user@mute.test"])
    wait_for(lambda: any(l.upper().startswith(b"EHLO ") for l in mute.lines), 10, "EHLO at the mute MX")
    t, _ = srv.deliver()  # the hanging session blocks nothing
    check([g["token"] for g in srv.fetch("alice@example.test")] == [t], "local delivery during the hang")
    out = wait_for(lambda: (lambda o: o if "timeout after 2s" in o else None)(queue_cli(srv)), 15,
                   "the timeout in `mailsrv queue`", 0.2)
    check(re.search(r"(?m)^\s+<user@mute\.test> pending, tries=1: 4\.4\.2 timeout after 2s waiting for ", out),
          "`queue` recipient line: %s" % short(out, 400))
    check(re.search(r"deferred \S+ to=<user@mute\.test>: 4\.4\.2 timeout after 2s", srv.log_text()),
          "no `deferred ... timeout` log line: %s" % short(srv.log_text()[-600:], 600))
    wait_for(lambda: mute.eof, 5, "the server to close the mute session")
    check(mute.eof - mute.greeted >= 2 - 0.05, "closed %.2f s after the greeting, before timeout = 2"
          % (mute.eof - mute.greeted))
    check([l.split()[0].upper() for l in mute.lines] == [b"EHLO"], "the server sent %s" % short(mute.lines))
    srv.smtp().expect("NOOP", 250)


@test(limit=60)
def relay_timeout_per_step(ctx):
    """README: `[relay] timeout` is per step, not per session: an MX that takes 1 s before every reply
    (over 5 s in all) with timeout = 3 still gets the message, and no timeout is logged."""
    need_real_time()
    net = Net(ctx)
    slow = ctx.track(ClaimsbSlowSink("127.0.0.2", net.port))
    srv = net.server(relay={"timeout": "3", "retry": "1h"}, route={"slow.test": "127.0.0.2:%d" % net.port}).start()
    start = time.monotonic()
    t, msg = relay_mail(srv, ["user@slow.test"])
    got = sink_wait(slow, 1, 20, "the message at the slow MX")
    check(time.monotonic() - start > 4, "test bug: the MX was not slow (%.1f s)" % (time.monotonic() - start))
    check_relayed(got[0]["data"], msg)
    wait_queue_empty(srv)
    check("timeout" not in srv.log_text(), "a timeout was logged: %s" % short(srv.log_text()[-600:], 600))


@test(limit=60)
def relay_max_outbound_one_message(ctx):
    """README: at most `max_outbound` sessions at once, also for one message to more domains than
    that: max_outbound = 2 and a message for three domains (retry = 1 h), the first of which defers:
    two sessions open while the MX holds them; released, the third domain's session follows at once
    (no retry delay), the deferring domain is not tried again in that attempt, and it waits in the
    queue with one try counted. (mailsrv used to open one session per domain of such a message.)"""
    net = Net(ctx)
    sink = ctx.track(ClaimsbHoldSink("127.0.0.2", net.port))
    sink.rcpt_replies = {"user@d1.test": "451 4.2.1 mailbox busy"}
    doms = ["d%d.test" % i for i in range(1, 4)]
    srv = net.server(relay={"max_outbound": "2", "timeout": "60", "retry": "1h"},
                     route={d: "127.0.0.2:%d" % net.port for d in doms}).start()
    try:
        t, _ = relay_mail(srv, ["user@" + d for d in doms])
        claimsb_two_sessions_held(sink)
    finally:
        sink.gate.set()
    got = sink_wait(sink, 2, 20, "transactions after the release")
    check(sorted(r for g in got for r in g["rcpts"]) == ["user@d2.test", "user@d3.test"] and
          all(token_of(g["data"]) == t for g in got), "the MX got %s" % [(token_of(g["data"]), g["rcpts"]) for g in got])
    out = wait_for(lambda: (lambda o: o if "tries=1" in o else None)(queue_cli(srv)), 10, "tries=1 in `queue`", 0.2)
    check(re.search(r"(?m)^\s+<user@d1\.test> pending, tries=1: .*451", out) and
          all(re.search(r"(?m)^\s+<user@%s> delivered" % re.escape(d), out) for d in doms[1:]),
          "`queue` after the attempt: %s" % short(out, 400))
    asked = [e for e in sink.events if e[0] == "rcpt" and e[1] == "user@d1.test"]
    check(len(asked) == 1, "user@d1.test was asked %d times in one attempt" % len(asked))
    check(sink.peak == 2, "%d outbound sessions at once with max_outbound = 2" % sink.peak)


# end of section: claimsB
