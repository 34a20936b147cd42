"""Capture mode, listeners, crash safety."""
import glob
import os
import random
import smtplib
import threading
import time

from .harness import (BOTH, SEED, SENDER, check, check_message, free_ports, header, maildir_files, make_msg,
                      need_ipv6, secs, short, stored, stored_tokens, test, tok, token_of, tree, wait_for)
from .cli import read


# =============================================================================================
# capture mode


@test(modes=BOTH)
def capture_mode(ctx, storage):
    srv = ctx.server(storage=storage, server={"capture": "yes"}).start()
    t = tok()
    rc = ["Someone@Capture.Example", "other@else.where", "zed@example.test", "alice@example.test"]
    refused = srv.send(rc, make_msg(t))
    check(refused == {}, "capture mode refused %s" % refused)
    for a in rc:
        check(stored_tokens(srv, a) == [t], "%s: stored %s" % (a, stored_tokens(srv, a)))
    want = "someone" if storage == "maildir" else "someone.mbox"
    check(want in os.listdir(os.path.join(srv.spool, "capture.example")), "no spool/capture.example/%s" % want)
    p = srv.pop("someone@capture.example", "any password at all")
    check(p.stat()[0] == 1, "captured mailbox via POP3")
    check(token_of(p.retr(1)) == t, "captured message content")
    p.quit()
    p = srv.pop("other@else.where", "x")
    p.quit()


@test(modes=BOTH)
def capture_path_traversal(ctx, storage):
    srv = ctx.server(storage=storage, server={"capture": "yes"}).start()
    srv.deliver("ok@capture.example")
    before = tree(srv.dir, skip={"server.log"})
    esc = "e2e_escape_" + tok()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    for a in ["../x@capture.example", "a/b@capture.example", ".hidden@capture.example", '"a\\\\b"@capture.example',
              "a\\b@capture.example", "../../../../../../../../tmp/%s@capture.example" % esc, "x@..", "x@../..", "x@a/b.test",
              "x@.hidden", "x@a\\b", "x@" + "../" * 8 + "tmp", '".."@capture.example', "x\x01@capture.example"]:
        c.expect5("RCPT TO:<%s>" % a)
    c.expect("QUIT", 221)
    p = srv.pop()
    p.cmd("USER ../ok@capture.example")
    p.err("PASS x")
    p = srv.pop()
    p.cmd("USER ok@..")
    p.err("PASS x")
    after = tree(srv.dir, skip={"server.log"})
    check(after == before, "paths created: %s" % sorted(after - before))
    check(not glob.glob("/tmp/" + esc + "*"), "escape file created in /tmp")


# =============================================================================================
# listeners


@test()
def multiple_listeners_ipv6(ctx):
    need_ipv6()
    srv = ctx.server()
    extra = free_ports(2, "::1")
    host, fmt = "::1", "[::1]:%d"
    srv.keys["smtp"] += ", " + fmt % extra[0]
    srv.keys["pop3"] += ", " + fmt % extra[1]
    srv.write_ini()
    srv.start()
    t, msg = tok(), None
    c = srv.smtp(port=extra[0], host=host)
    msg = make_msg(t)
    code, text = c.send_mail(SENDER, ["alice@example.test"], msg)
    check(code == 250, "delivery on the second listener: %s" % short(text))
    p = srv.pop("alice@example.test", port=extra[1], host=host)
    data = p.retr(1)
    p.quit()
    check_message(data, msg)
    rec = header(data, "Received")
    check("::1" in rec, "Received header lacks the IPv6 client literal: %s" % rec)


# =============================================================================================
# crash safety


def burst_body(token):
    n = int(token.rsplit("l", 1)[1])
    lines = ["START " + token] + ["%s %05d %s" % (token, k, "x" * 60) for k in range(n)] + ["END " + token]
    return ("\r\n".join(lines) + "\r\n").encode()


@test(modes=BOTH, limit=90)
def kill9_during_burst(ctx, storage):
    """Several threads deliver continuously (unique token, START/END lines); kill -9; restart; check.
    Two rounds; in the second a POP3 session deletes messages (an mbox rewrite) while deliveries go on."""
    srv = ctx.server(storage=storage, server={"max_message_size": "1M", "max_clients": "40"}).start()
    targets = [["alice@example.test"], ["alice@example.test"], ["team@example.test"], ["bob@example.test"], ["alice@example.test"]]
    acked = {}
    deleted = set()
    lock = threading.Lock()

    def worker(i, rnd, stop):
        rng = random.Random("%s:%d:%d" % (SEED, rnd, i))  # a failing run is repeated with its seed
        try:
            s = smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="burst.test", timeout=secs(10))
        except OSError:
            return
        try:
            for n in range(5000):
                if stop.is_set():
                    break
                # most messages small (many per second), one in five up to 120 KB (several reads,
                # writes and a longer fsync each: a kill lands inside one more often)
                lines = rng.randrange(350, 1500) if rng.random() < 0.2 else rng.randrange(10, 350)
                token = "k%dx%dn%dr%06dl%d" % (rnd, i, n, rng.randrange(10 ** 6), lines)
                msg = ("From: <burst@client.test>\r\nSubject: burst\r\nX-Test-Token: %s\r\n\r\n" % token).encode() + burst_body(token)
                s.sendmail("burst@client.test", targets[i], msg)
                with lock:
                    acked[token] = targets[i]
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            s.close()

    def verify(addr, crlf_msgs, what, want):
        seen = set()
        for data in crlf_msgs:
            token = token_of(data)
            check(token, "%s: %s: message without token (half-written?): %s" % (what, addr, short(data[:200])))
            if not token.startswith("k"):
                continue
            body = data.replace(b"\r\n", b"\n").partition(b"\n\n")[2]
            exp = burst_body(token).replace(b"\r\n", b"\n")
            check(body == exp, "%s: %s: message %s incomplete or damaged (%d of %d body bytes)" % (what, addr, token, len(body), len(exp)))
            check(token not in seen, "%s: %s: message %s stored twice" % (what, addr, token))
            seen.add(token)
        missing = want[addr] - seen
        check(not missing, "%s: %s: %d acknowledged messages lost, e.g. %s" % (what, addr, len(missing), sorted(missing)[:3]))
        return seen

    for rnd in range(2):
        stop = threading.Event()
        threads = [threading.Thread(target=worker, args=(i, rnd, stop), daemon=True) for i in range(len(targets))]
        for t in threads:
            t.start()
        if rnd == 1:
            p = srv.pop("alice@example.test")
            gone = []
            for n in range(1, 6):
                gone.append(token_of(p.top(n, 0)))
                p.ok("DELE %d" % n)
            p.quit()
            deleted.update(gone)
        with lock:
            goal = len(acked) + random.randrange(40, 120)
        wait_for(lambda: len(acked) >= goal, 20, "%d acknowledged messages before the kill" % goal, 0.005)
        time.sleep(random.random() * 0.03)
        srv.kill9()
        stop.set()
        for t in threads:
            t.join(secs(15))
        srv.start()
        with lock:  # a 250 read just after the kill is still an acknowledged message
            want = {"alice@example.test": set(), "bob@example.test": set()}
            for token, rc in acked.items():
                for r in rc:
                    for a in (["alice@example.test", "bob@example.test"] if r == "team@example.test" else [r]):
                        want[a].add(token)
        want["alice@example.test"] -= deleted
        for addr in want:
            if storage == "maildir":
                verify(addr, [read(f) for f in maildir_files(srv, addr)], "round %d: files in new/cur" % rnd, want)
            seen = verify(addr, [g["data"] for g in srv.fetch(addr)], "round %d: POP3" % rnd, want)
            if rnd == 1 and addr == "alice@example.test":
                check(not (seen & deleted), "messages deleted at QUIT came back: %s" % sorted(seen & deleted)[:3])
    # a fresh delivery lands cleanly after the crashes, and the files stay well-formed
    t, m = srv.deliver()
    got = srv.fetch("alice@example.test")
    check(got[-1]["token"] == t, "new delivery after crash not last in mailbox")
    check_message(got[-1]["data"], m)
    for addr in want:
        verify(addr, stored(srv, addr), "disk after restart", want)
