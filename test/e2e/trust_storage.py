"""Trust (issue 11): mbox shared with other programs, deletion on a full disk, UIDLs; links,
spool .tmp cleaning, free-space reserve. Sections mbox and fs."""
import os
import re
import signal
import smtplib
import socket
import subprocess
import tempfile
import time

from .harness import (BOTH, PASSWORDS, SENDER, Skip, TESTS, TestFailure, check, dot_stuff, free_ports, header,
                      make_msg, mbox_path, need_native, Smtp, parse_mbox, need_program, need_root, run_cli, secs, short,
                      stored_tokens, test, tok, token_of, wait_for)
from .cli import read
from .hardening import FAULT_TESTS, fault_fired, fault_last_round, fault_start


# =============================================================================================
# trust: mbox shared with other programs (MUAs, Dovecot, other MDAs), deletion on a full disk, UIDLs (issue 11: 1, 9, 13b)
# (section: mbox)

import fcntl  # noqa: E402


def mbox_foreign(n, subject=None):
    """A message as another MDA stores it (mboxrd, its own From_ line, no X-UIDL)."""
    return ("From other@else.test Fri Dec  4 12:00:%02d 2026\nFrom: <other@else.test>\nTo: <alice@example.test>\n"
            "Subject: %s\nX-Test-Token: foreign%d\n\nforeign body %d\n>From quoted %d\n\n"
            % (n % 60, subject or "foreign %d" % n, n, n, n)).encode()


def dotlock_take(path, timeout=5):
    """PATH.lock as liblockfile makes it (O_EXCL); waits (bounded) while another holds it."""
    def take():
        try:
            os.close(os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return True
        except FileExistsError:
            return False
    wait_for(take, timeout, "the dotlock %s.lock" % path)


def mbox_other_append(path, data):
    """A second MDA: dotlock, then an fcntl write lock (Debian policy 11.6 order), append, fsync, unlock."""
    dotlock_take(path)
    try:
        with open(path, "ab") as f:
            wait_for(lambda: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB) is None, 5, "the fcntl lock of %s" % path)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            fcntl.lockf(f, fcntl.LOCK_UN)
    finally:
        os.unlink(path + ".lock")


def check_whole(got, expect, what):
    """got: srv.fetch() list; expect: list of (token, subject, body text): every message whole, in order."""
    check([g["token"] for g in got] == [e[0] for e in expect],
          "%s: mailbox holds %s, expected %s" % (what, [g["token"] for g in got], [e[0] for e in expect]))
    for g, (t, subj, body) in zip(got, expect):
        check(header(g["data"], "Subject") == subj, "%s: %s has Subject %s, expected %s" % (what, t, header(g["data"], "Subject"), subj))
        check(body.encode() in g["data"], "%s: %s lost its body %s: %s" % (what, t, short(body), short(g["data"], 300)))
    uids = [g["uid"] for g in got]
    check(len(set(uids)) == len(uids) and all(u and 1 <= len(u) <= 70 for u in uids), "%s: UIDLs not unique: %s" % (what, uids))
    return uids


def ours(t):
    return (t, "test " + t, "Hello %s\r\nsecond line" % t)


def theirs(n):
    return ("foreign%d" % n, "foreign %d" % n, "foreign body %d\r\nFrom quoted %d" % (n, n))


@test()
def mbox_second_writer_both_orders(ctx):
    """Issue 11.1: another MDA appends under fcntl + dotlock between mailsrv's deliveries (both orders):
    nothing is cut off, every message stays whole, UIDLs unique and stable, DELE+QUIT deletes the right ones."""
    srv = ctx.server(storage="mbox").start()
    path = mbox_path(srv, "alice@example.test")
    os.makedirs(os.path.dirname(path))
    mbox_other_append(path, mbox_foreign(1))  # the other program first
    t1, _ = srv.deliver()                      # then mailsrv
    mbox_other_append(path, mbox_foreign(2))  # the other program after mailsrv
    t2, _ = srv.deliver()
    exp = [theirs(1), ours(t1), theirs(2), ours(t2)]
    u0 = check_whole(srv.fetch("alice@example.test"), exp, "after alternating writers")
    mbox_other_append(path, mbox_foreign(3))  # written after mailsrv's last, read by a POP3 login
    exp.append(theirs(3))
    u1 = check_whole(srv.fetch("alice@example.test"), exp, "after a foreign append at the end")
    check(u1[:4] == u0, "UIDLs changed: %s -> %s" % (u0, u1))
    p = srv.pop("alice@example.test")
    p.ok("DELE 2")
    p.ok("DELE 3")
    mbox_other_append(path, mbox_foreign(4))  # arrives during the session: kept by the QUIT
    p.quit()
    exp = [exp[0], exp[3], exp[4], theirs(4)]
    u2 = check_whole(srv.fetch("alice@example.test"), exp, "after DELE 2, 3 and QUIT")
    check(u2[:3] == [u1[0], u1[3], u1[4]], "UIDLs changed by the deletion: %s -> %s" % (u1, u2))
    srv.restart()
    check([g["uid"] for g in srv.fetch("alice@example.test")] == u2, "UIDLs changed across a restart")


@test(unix_only=True)  # dotlocks and fcntl locks are Unix conventions: wine's LockFileEx does not meet them
def mbox_locked_by_other(ctx):
    """While another program holds the mbox's dotlock (dotlockfile, liblockfile-bin) or its fcntl lock,
    SMTP defers with 451 and POP3 login answers -ERR [IN-USE] (RFC 2449 8.1.1); after, both work."""
    dlf = need_program("dotlockfile", "liblockfile-bin")
    srv = ctx.server(storage="mbox").start()
    t1, _ = srv.deliver()
    path = mbox_path(srv, "alice@example.test")
    r = subprocess.run([dlf, "-l", "-r", "0", path + ".lock"], timeout=secs(10))
    check(r.returncode == 0 and os.path.exists(path + ".lock"), "dotlockfile -l failed: %s" % r.returncode)
    f = None
    try:
        for what in ("dotlock", "fcntl"):
            c = srv.smtp()
            c.expect("MAIL FROM:<%s>" % SENDER, 250)
            code, text = c.cmd("RCPT TO:<alice@example.test>")
            if code == 250:
                c.expect("DATA", 354)
                code, text = c.cmd(dot_stuff(make_msg(tok())).decode() + ".")
            check(code == 451, "%s held: delivery answered %d %s, expected 451" % (what, code, short(text)))
            c.close()
            p = srv.pop()
            p.ok("USER alice@example.test")
            r = p.cmd("PASS " + PASSWORDS["alice@example.test"])
            check(r.startswith(b"-ERR [IN-USE]"), "%s held: POP3 login %s, expected -ERR [IN-USE]" % (what, short(r)))
            p.close()
            if what == "dotlock":
                check(subprocess.run([dlf, "-u", path + ".lock"], timeout=secs(10)).returncode == 0, "dotlockfile -u")
                f = open(path, "ab")
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        if f:
            f.close()  # releases the fcntl lock
        if os.path.exists(path + ".lock"):
            os.unlink(path + ".lock")
    t2, _ = srv.deliver()
    check_whole(srv.fetch("alice@example.test"), [ours(t1), ours(t2)], "after the locks were released")


@test(unix_only=True)
def mbox_dotlock_kill_right_after_taking_it(ctx):
    """kill -9 just after mailsrv made an mbox's dotlock: restarted, it serves that mailbox at once.
    A dotlock without a PID is judged by its age (5 minutes), so one must never exist even for an
    instant: the lock is made with its PID in it, as liblockfile does (found by kill9_during_burst
    in CI: a kill between creating the lock and writing the PID locked the mailbox for 5 minutes).
    strace kills the server at its first system call on the lock's path after the one that made it."""
    need_native("strace traces the server process")
    srv = ctx.server(storage="mbox").start()
    t1, _ = srv.deliver()
    srv.stop()
    lock = mbox_path(srv, "alice@example.test") + ".lock"
    srv.wrap = [need_program("strace", "strace"), "-D", "-f", "-qq", "-o", os.devnull, "-P", lock,
                "-e", "inject=!open,openat,link,linkat:signal=KILL"]
    srv.start()
    t2 = tok()
    try:
        srv.send(["alice@example.test"], make_msg(t2))  # killed on the way: no 250
    except (smtplib.SMTPException, OSError):
        pass
    wait_for(lambda: srv.proc.poll() is not None, 10, "strace to kill the server at the dotlock")
    check(srv.proc.returncode == -signal.SIGKILL, "the server was not killed: exit status %s" % srv.proc.returncode)
    check(os.path.exists(lock), "the kill came before the dotlock was made: the test proves nothing")
    srv.wrap = []
    srv.start()
    p = srv.pop()
    p.ok("USER alice@example.test")
    r = p.cmd("PASS " + PASSWORDS["alice@example.test"])
    check(r.startswith(b"+OK"), "after a kill -9 with its dotlock taken, POP3 login answered %s" % short(r))
    p.quit()
    got = [m["token"] for m in srv.fetch("alice@example.test")]
    check(got[:1] == [t1] and set(got) <= {t1, t2}, "mailbox after the kill: %s" % got)


@test(unix_only=True, limit=120)
def mbox_crash_mid_append_other_readers(ctx):
    """Issue 12.3: kill -9 in the middle of an mbox append (strace kills the server at its second
    write of a 200 KB message to the mbox: 64 KB of it are in the file). The next delivery removes
    the unfinished append, and then Python's mailbox module and Dovecot (IMAP) read exactly the
    whole messages, as POP3 does; nothing of the dead append is left for them to misread."""
    import mailbox
    need_native("strace traces the server process")
    srv = ctx.server(storage="mbox", server={"max_message_size": "1M"}).start()
    t1, _ = srv.deliver()
    srv.stop()
    path = mbox_path(srv, "alice@example.test")
    whole = os.path.getsize(path)
    srv.wrap = [need_program("strace", "strace"), "-D", "-f", "-qq", "-o", os.devnull, "-P", path,
                "-e", "inject=pwrite64:signal=KILL:when=2"]
    srv.start()
    t2 = tok()
    try:
        srv.send(["alice@example.test"], make_msg(t2, body=("%s line of a long message\r\n" % t2) * 6000))
    except (smtplib.SMTPException, OSError):
        pass
    wait_for(lambda: srv.proc.poll() is not None, 10, "strace to kill the server in the append")
    check(srv.proc.returncode == -signal.SIGKILL, "the server was not killed: exit status %s" % srv.proc.returncode)
    check(os.path.getsize(path) > whole, "no unfinished append in the file: the test proves nothing")
    srv.wrap = []
    srv.start()
    t3, _ = srv.deliver()  # its lock removes the dead append first
    check_whole(srv.fetch("alice@example.test"), [ours(t1), ours(t3)], "POP3 after the crash")
    box = mailbox.mbox(path, create=False)
    try:
        got = [(m["X-Test-Token"], m["Subject"], m.get_payload()) for m in box]
    finally:
        box.close()
    want = [(t, "test " + t, "Hello %s\nsecond line\n" % t) for t in (t1, t3)]
    check(got == want, "Python's mailbox reads %s, expected %s" % (short(repr(got), 400), want))
    dv = Dovecot(ctx, srv, "alice@example.test")  # needs root (Dovecot's mail user): else skipped here
    dv.give(os.path.dirname(dv.mbox))
    try:
        dv.start()
        m = dv.imap()
        subj = dv.subjects(m)
        m.logout()
    finally:
        dv.stop()
    check(subj == ["test " + t1, "test " + t3], "Dovecot reads %s" % subj)
    bad = [l for l in dv.log_text().splitlines() if "Error" in l or "Panic" in l or "Fatal" in l]
    check(not bad, "Dovecot logged: %s" % bad[:3])


@test()
def mbox_uidl_sender_cannot_choose(ctx):
    """Issue 11.13b: X-UIDL headers from the sender never become the UIDL, and duplicates are made unique
    with a suffix that is checked to be free (was: abc-2, abc, abc listed as abc-2, abc, abc-2)."""
    srv = ctx.server(storage="mbox").start()
    toks = []
    for u in ("abc-2", "abc", "abc"):
        t = tok()
        srv.send(["alice@example.test"], ("X-UIDL: %s\r\n" % u).encode() + make_msg(t))
        toks.append(t)
    g = srv.fetch("alice@example.test")
    uids = [x["uid"] for x in g]
    check([x["token"] for x in g] == toks, "stored %s" % [x["token"] for x in g])
    check(len(set(uids)) == 3, "UIDLs not unique: %s" % uids)
    check(not set(uids) & {"abc", "abc-2", "abc-3"}, "a sender chose its UIDL: %s" % uids)
    # mail stored by another MDA with identical headers and the same X-UIDL: unique, free suffixes
    path = mbox_path(srv, "alice@example.test")
    same = mbox_foreign(7).replace(b"\nFrom: ", b"\nX-UIDL: abc\nFrom: ")
    with open(path, "ab") as f:
        f.write(mbox_foreign(8).replace(b"\nFrom: ", b"\nX-UIDL: dup-2\nFrom: ") + same + same)
    g = srv.fetch("alice@example.test")
    u2 = [x["uid"] for x in g]
    check(len(g) == 6 and len(set(u2)) == 6, "with copied foreign mail: UIDLs %s" % u2)
    check(u2[:3] == uids and all(u and len(u) <= 70 and all(0x21 <= ord(ch) <= 0x7e for ch in u) for u in u2),
          "UIDLs %s (before %s)" % (u2, uids))
    check([x["uid"] for x in srv.fetch("alice@example.test")] == u2, "UIDLs not stable: %s" % u2)



def chmod_path_for(*dirs):
    """Lets another user (Dovecot's mail processes) reach the spool: o+x on our own test folders."""
    for d in dirs:
        os.chmod(d, os.stat(d).st_mode | 0o011)


class Dovecot:
    """A private Dovecot (dovecot-imapd) on a free loopback port whose INBOX is mailsrv's mbox; its mail
    processes run as Debian's `mail` user (Dovecot refuses uid 0), so the test hands it the mbox's folder."""

    def __init__(self, ctx, srv, addr):
        self.bin = need_program("dovecot", "dovecot-imapd")
        need_root()
        import pwd
        self.uid = pwd.getpwnam("mail").pw_uid
        self.dir = tempfile.mkdtemp(prefix="dovecot", dir=ctx.dir)
        self.port = free_ports(1)[0]
        self.mbox = mbox_path(srv, addr)
        for d in ("run", "mail", "index", "home"):
            os.makedirs(os.path.join(self.dir, d))
        for d in ("mail", "index", "home"):
            os.chown(os.path.join(self.dir, d), self.uid, self.uid)
        chmod_path_for(ctx.dir, srv.dir, srv.spool, self.dir)
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.log = os.path.join(self.dir, "dovecot.log")
        with open(self.conf, "w") as f:
            f.write("""base_dir = {d}/run
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {uid}
passdb {{
  driver = static
  args = password=pw
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={d}/home
}}
mail_location = mbox:{d}/mail:INBOX={mbox}:INDEX={d}/index
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""".format(d=self.dir, uid=self.uid, mbox=self.mbox, port=self.port))
        self.proc = None

    def give(self, folder):
        """The mbox's folder (and the mbox) to the mail user: Dovecot makes its dotlock there."""
        os.chown(folder, self.uid, self.uid)
        if os.path.exists(self.mbox):
            os.chown(self.mbox, self.uid, self.uid)

    def start(self):
        self.proc = subprocess.Popen([self.bin, "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up():
            check(self.proc.poll() is None, "dovecot exited: %s" % self.log_text()[-500:])
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(100).startswith(b"* OK")
        wait_for(up, 15, "dovecot's IMAP greeting")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # our own child, by PID
            try:
                self.proc.wait(timeout=secs(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=secs(10))

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def imap(self):
        import imaplib
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=secs(10))
        m.login("alice", "pw")
        typ, _ = m.select("INBOX")
        check(typ == "OK", "dovecot SELECT INBOX: %s" % typ)
        return m

    def subjects(self, m):
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        check(typ == "OK", "dovecot FETCH: %s %s" % (typ, data))
        return [header(x[1], "Subject") for x in data if isinstance(x, tuple)]

    def lda(self, msg):
        """Dovecot's own MDA (dovecot-lda) delivers msg to the same INBOX (dotlock + fcntl)."""
        r = subprocess.run(["/usr/lib/dovecot/dovecot-lda", "-c", self.conf, "-d", "alice", "-f", "lda@else.test"],
                           input=msg, capture_output=True, timeout=secs(20))
        check(r.returncode == 0, "dovecot-lda: %s %s" % (r.returncode, r.stderr[-300:]))


def foreign_msg(token, subject):
    return ("From: <x@else.test>\r\nTo: <alice@example.test>\r\nSubject: %s\r\nX-Test-Token: %s\r\n\r\n"
            "%s body\r\n" % (subject, token, token)).encode()


@test(limit=120)
def mbox_dovecot_shares(ctx):
    """Issue 11.1 with Dovecot: IMAP STORE flags (Status/X-Status/X-IMAPbase/X-UID rewritten in place),
    IMAP APPEND and dovecot-lda append to the mbox between mailsrv's deliveries (both orders); POP3 sees
    every message whole with stable, unique UIDLs, DELE+QUIT deletes the right ones, Dovecot reads the
    result and finds no corruption."""
    srv = ctx.server(storage="mbox").start()
    dv = Dovecot(ctx, srv, "alice@example.test")
    t1, _ = srv.deliver()  # mailsrv first
    dv.give(os.path.dirname(dv.mbox))
    u1 = srv.fetch("alice@example.test")[0]["uid"]
    try:
        dv.start()
        m = dv.imap()
        check(m.store("1", "+FLAGS", r"(\Seen \Flagged)")[0] == "OK", "dovecot STORE")
        check(m.append("INBOX", None, None, foreign_msg("imap1", "imap append"))[0] == "OK", "dovecot APPEND")
        m.logout()
        dv.lda(foreign_msg("lda1", "lda delivery"))  # Dovecot's MDA after Dovecot's IMAP
        t2, _ = srv.deliver()                         # then mailsrv
        exp = [ours(t1), ("imap1", "imap append", "imap1 body"), ("lda1", "lda delivery", "lda1 body"), ours(t2)]
        u = check_whole(srv.fetch("alice@example.test"), exp, "after Dovecot's STORE, APPEND and LDA")
        check(u[0] == u1, "the UIDL of a message Dovecot flagged changed: %s -> %s" % (u1, u[0]))
        m = dv.imap()
        check(m.store("2:3", "+FLAGS", r"(\Seen \Answered)")[0] == "OK", "dovecot STORE 2:3")
        m.logout()
        check(check_whole(srv.fetch("alice@example.test"), exp, "after a second STORE") == u,
              "UIDLs changed when Dovecot set flags")
        p = srv.pop("alice@example.test")
        p.ok("DELE 1")
        p.ok("DELE 3")
        p.quit()
        exp = [exp[1], exp[3]]
        u2 = check_whole(srv.fetch("alice@example.test"), exp, "after POP3 DELE 1, 3")
        check(u2 == [u[1], u[3]], "UIDLs after the deletion: %s, before %s" % (u2, u))
        m = dv.imap()
        subj = dv.subjects(m)
        check(subj == ["imap append", "test " + t2], "Dovecot reads after mailsrv's deletion: %s" % subj)
        check(m.store("2", "+FLAGS", r"(\Seen)")[0] == "OK", "dovecot STORE 2")
        m.logout()
        t3, _ = srv.deliver()
        u3 = check_whole(srv.fetch("alice@example.test"), exp + [ours(t3)], "after Dovecot flagged mailsrv's mail")
        check(u3[:2] == u2, "UIDLs changed: %s -> %s" % (u2, u3))
        m = dv.imap()
        subj = dv.subjects(m)
        m.logout()
        check(subj == ["imap append", "test " + t2, "test " + t3], "Dovecot reads at the end: %s" % subj)
    finally:
        dv.stop()
    bad = [l for l in dv.log_text().splitlines() if "Error" in l or "Panic" in l or "Fatal" in l]
    check(not bad, "Dovecot logged: %s" % bad[:3])
    print("#   dovecot: STORE/APPEND/LDA between mailsrv deliveries, POP3 DELE: all whole, UIDLs stable")


def neomutt_run(ctx, mbox, keys):
    """neomutt (no user or system config) on mbox under a private tmux server, pushing keys; waits for it to quit."""
    nm = need_program("neomutt", "neomutt")
    tmux = need_program("tmux", "tmux")
    d = tempfile.mkdtemp(prefix="neomutt", dir=ctx.dir)
    os.makedirs(os.path.join(d, "Mail"))  # else it asks whether to create $folder
    rc = os.path.join(d, "neomuttrc")
    with open(rc, "w") as f:
        f.write("set mbox_type=mbox move=no quit=yes delete=yes confirmappend=no mark_old=no wait_key=no\n")
        f.write("push '%s'\n" % keys)
    sock = os.path.join(d, "tmux.sock")
    env = dict(os.environ, HOME=d, TERM="xterm")
    r = subprocess.run([tmux, "-S", sock, "new-session", "-d", "-x", "150", "-y", "40",
                        "%s -n -F %s -f %s" % (nm, rc, mbox)], env=env, timeout=secs(10))
    check(r.returncode == 0, "tmux new-session: %s" % r.returncode)
    try:
        try:
            wait_for(lambda: subprocess.run([tmux, "-S", sock, "has-session"], env=env, capture_output=True,
                                            timeout=secs(5)).returncode != 0, 30, "neomutt to sync and quit")
        except TestFailure:
            scr = subprocess.run([tmux, "-S", sock, "capture-pane", "-p"], env=env, capture_output=True, text=True,
                                 timeout=secs(5)).stdout
            raise TestFailure("neomutt did not quit; its screen: %s" % short(scr.strip(), 600))
    finally:
        subprocess.run([tmux, "-S", sock, "kill-server"], env=env, capture_output=True, timeout=secs(5))


@test(limit=120)
def mbox_neomutt_shares(ctx):
    """Issue 11.1 with neomutt, which rewrites the mbox in place (Status, X-Status, Content-Length, Lines):
    deliveries before and after it, a foreign message's derived UIDL stays, nothing is cut off; neomutt
    deletes a message after mailsrv's POP3 deletion and both still agree."""
    srv = ctx.server(storage="mbox").start()
    path = mbox_path(srv, "alice@example.test")
    os.makedirs(os.path.dirname(path))
    mbox_other_append(path, mbox_foreign(1))
    t1, _ = srv.deliver()  # mailsrv after another program
    u0 = [g["uid"] for g in srv.fetch("alice@example.test")]
    before = read(path)
    p = srv.pop("alice@example.test")  # a POP3 session open while neomutt rewrites the file under it
    neomutt_run(ctx, path, "<tag-pattern>~A<enter><tag-prefix><set-flag>!<tag-prefix><clear-flag>N<sync-mailbox><quit>")
    check(read(path) != before, "neomutt did not rewrite the mbox")
    for n, e in ((2, ours(t1)), (1, theirs(1))):
        data = p.retr(n)
        check(token_of(data) == e[0] and e[2].encode() in data and header(data, "Subject") == e[1],
              "RETR %d after neomutt's rewrite: %s" % (n, short(data, 300)))
    p.quit()
    t2, _ = srv.deliver()  # mailsrv after neomutt
    exp = [theirs(1), ours(t1), ours(t2)]
    u = check_whole(srv.fetch("alice@example.test"), exp, "after neomutt set flags")
    check(u[:2] == u0, "UIDLs changed when neomutt set flags: %s -> %s" % (u0, u[:2]))
    p = srv.pop("alice@example.test")
    p.ok("DELE 2")
    p.quit()
    exp = [exp[0], exp[2]]
    check(check_whole(srv.fetch("alice@example.test"), exp, "after POP3 DELE 2") == [u[0], u[2]], "UIDLs after DELE 2")
    neomutt_run(ctx, path, "<first-entry><delete-message><sync-mailbox><quit>")  # neomutt after mailsrv's rewrite
    t3, _ = srv.deliver()
    u3 = check_whole(srv.fetch("alice@example.test"), [exp[1], ours(t3)], "after neomutt deleted message 1")
    check(u3[0] == u[2], "UIDL of %s changed: %s -> %s" % (t2, u[2], u3[0]))
    print("#   neomutt: flags and a deletion between mailsrv deliveries and a POP3 deletion: all whole, UIDLs stable")


# ---- the mbox index (issue 14): SPOOL/DOMAIN/.USER.mbox.index, kept across sessions ----

def mbox_index_file(srv, addr):
    user, dom = addr.lower().split("@")
    return os.path.join(srv.spool, dom, "." + user + ".mbox.index")


def mbox_other_rewrite(path, edit):
    """Another program rewriting the mbox in place under both locks (as mutt and Dovecot do: the same
    inode); edit(bytes) -> bytes."""
    dotlock_take(path)
    try:
        with open(path, "r+b") as f:
            wait_for(lambda: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB) is None, 5, "the fcntl lock of %s" % path)
            data = f.read()
            new = edit(data)
            check(new != data, "the rewrite of %s changed nothing" % path)
            f.seek(0)
            f.write(new)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
            fcntl.lockf(f, fcntl.LOCK_UN)
    finally:
        os.unlink(path + ".lock")


def mbox_index_same_as_scan(srv, addr, what):
    """The mailbox as a login finds it through the index, then as a full scan finds it (the index
    removed first): the same UIDLs, sizes and RETR bytes. Returns the messages (srv.fetch)."""
    ix = mbox_index_file(srv, addr)
    check(os.path.exists(ix), "%s: no mbox index before the login" % what)
    got = srv.fetch(addr)
    check(os.path.exists(ix), "%s: no mbox index after the login" % what)
    os.unlink(ix)
    fresh = srv.fetch(addr)
    a = [(g["uid"], g["size"], g["data"]) for g in got]
    b = [(g["uid"], g["size"], g["data"]) for g in fresh]
    check(a == b, "%s: through the index %s, scanned %s" % (what, [(x[0], x[1]) for x in a], [(x[0], x[1]) for x in b]))
    return fresh


def with_status(data, status):
    return data.replace(b"\nSubject:", b"\nStatus: %s\nSubject:" % status, 1)


@test(limit=120)
def mbox_index_follows_other_programs(ctx):
    """Issue 14: the mbox index kept between POP3 sessions never answers differently from a scan of
    the file, whatever another program did in between: appends (another MDA, mailsrv), a same-length
    Status: rewrite, X-UID: lines inserted (Dovecot), a message deleted, the last one cut off, a
    POP3 deletion, a damaged index; a session open meanwhile RETRs the right bytes."""
    srv = ctx.server(storage="mbox").start()
    a = "alice@example.test"
    path = mbox_path(srv, a)
    t1, _ = srv.deliver()
    t2, _ = srv.deliver()
    mbox_other_append(path, with_status(mbox_foreign(1), b"O"))
    u0 = [g["uid"] for g in srv.fetch(a)]  # writes the index
    got = mbox_index_same_as_scan(srv, a, "after deliveries and a foreign append")
    check([g["uid"] for g in got] == u0, "UIDLs %s, before %s" % ([g["uid"] for g in got], u0))
    p = srv.pop(a)  # a session open while the others work
    sizes = p.list()
    check(p.uidl() == {i + 1: u for i, u in enumerate(u0)}, "UIDL in the open session")
    mbox_other_append(path, mbox_foreign(2))
    t3, _ = srv.deliver()
    mbox_other_rewrite(path, lambda d: d.replace(b"Status: O\n", b"Status: R\n"))
    for n in (1, 2, 3):
        data = p.retr(n)
        check(len(data) == sizes[n], "RETR %d after appends and a Status: rewrite: %d octets, LIST said %d"
              % (n, len(data), sizes[n]))
        check(token_of(data) == (t1, t2, "foreign1")[n - 1], "RETR %d gave %s" % (n, short(data, 200)))
    p.quit()
    exp = [ours(t1), ours(t2), theirs(1), theirs(2), ours(t3)]
    got = mbox_index_same_as_scan(srv, a, "after appends and a same-length Status: rewrite")
    check_whole(got, exp, "after appends and a Status: rewrite")
    check([g["uid"] for g in got[:3]] == u0, "UIDLs changed: %s -> %s" % (u0, [g["uid"] for g in got[:3]]))
    # Dovecot's X-UID: lines (every offset after them moves), then an append; the same with no append
    mbox_other_rewrite(path, lambda d: d.replace(b"\nSubject: ", b"\nX-UID: 1\nSubject: ", 1))
    mbox_other_append(path, mbox_foreign(3))
    exp.append(theirs(3))
    check_whole(mbox_index_same_as_scan(srv, a, "after an X-UID: line and an append"), exp, "after X-UID:")
    mbox_other_rewrite(path, lambda d: d.replace(b"\nX-UID: 1\n", b"\nX-UID: 1\nX-IMAPbase: 1 5\n", 1))
    check_whole(mbox_index_same_as_scan(srv, a, "after an X-IMAPbase: line"), exp, "after X-IMAPbase:")
    # another program deletes message 2; appends make the file larger than before
    msgs = read(path).split(b"\nFrom ")
    mbox_other_rewrite(path, lambda d: d.replace(b"\nFrom " + msgs[1], b"", 1))
    mbox_other_append(path, mbox_foreign(4))
    mbox_other_append(path, mbox_foreign(5))
    exp = [exp[0]] + exp[2:] + [theirs(4), theirs(5)]
    check_whole(mbox_index_same_as_scan(srv, a, "after another program deleted message 2"), exp, "after a deletion")
    # ... and cuts the last one off
    last = read(path).rsplit(b"\nFrom ", 1)[1]
    mbox_other_rewrite(path, lambda d: d[:len(d) - len(last) - 5])
    exp = exp[:-1]
    check_whole(mbox_index_same_as_scan(srv, a, "after the last message was cut off"), exp, "after a truncation")
    # a POP3 deletion writes the index of what is left; then another MDA appends
    p = srv.pop(a)
    p.ok("DELE 2")
    p.ok("DELE 4")
    p.quit()
    exp = [exp[0], exp[2]] + exp[4:]
    u = check_whole(mbox_index_same_as_scan(srv, a, "after POP3 DELE 2, 4"), exp, "after DELE")
    mbox_other_append(path, mbox_foreign(6))
    exp.append(theirs(6))
    check(check_whole(mbox_index_same_as_scan(srv, a, "after DELE and an append"), exp, "after an append")[:-1] == u,
          "UIDLs changed after an append")
    # a damaged index: a digit changed (the checksum no longer holds), then garbage
    ix = mbox_index_file(srv, a)
    srv.fetch(a)
    with open(ix, "rb") as f:
        text = f.read()
    i = text.index(b"\n", text.index(b"\n") + 1) + 1  # the first message's line
    with open(ix, "wb") as f:
        f.write(text[:i] + (b"9" if text[i:i + 1] != b"9" else b"8") + text[i + 1:])
    check_whole(mbox_index_same_as_scan(srv, a, "with a damaged index"), exp, "with a damaged index")
    with open(ix, "wb") as f:
        f.write(b"mailsrv mbox index 1\n" + b"x" * 100)
    check_whole(mbox_index_same_as_scan(srv, a, "with a garbage index"), exp, "with a garbage index")
    print("#   mbox index: appends, Status:/X-UID: rewrites, deletions, truncation, damage: same as a full scan")


@test(limit=180)
def mbox_index_dovecot_neomutt(ctx):
    """Issue 14: the mbox index across what Dovecot (IMAP STORE rewrites Status/X-UID/X-IMAPbase,
    dovecot-lda appends) and neomutt (flags, a deletion) do to the mbox between POP3 sessions: every
    login finds what a full scan finds."""
    srv = ctx.server(storage="mbox").start()
    a = "alice@example.test"
    path = mbox_path(srv, a)
    dv = Dovecot(ctx, srv, a)
    t1, _ = srv.deliver()
    t2, _ = srv.deliver()
    dv.give(os.path.dirname(dv.mbox))
    srv.fetch(a)
    try:
        dv.start()
        m = dv.imap()
        check(m.store("1", "+FLAGS", r"(\Seen \Flagged)")[0] == "OK", "dovecot STORE")
        m.logout()
        exp = [ours(t1), ours(t2)]
        u = check_whole(mbox_index_same_as_scan(srv, a, "after Dovecot's STORE"), exp, "after STORE")
        dv.lda(foreign_msg("lda1", "lda delivery"))
        exp.append(("lda1", "lda delivery", "lda1 body"))
        check(check_whole(mbox_index_same_as_scan(srv, a, "after dovecot-lda"), exp, "after LDA")[:2] == u,
              "UIDLs changed after dovecot-lda")
        m = dv.imap()
        check(m.store("2:3", "+FLAGS", r"(\Answered)")[0] == "OK", "dovecot STORE 2:3")
        m.logout()
        dv.lda(foreign_msg("lda2", "lda again"))
        exp.append(("lda2", "lda again", "lda2 body"))
        check(check_whole(mbox_index_same_as_scan(srv, a, "after STORE and LDA"), exp, "after STORE+LDA")[:2] == u,
              "UIDLs changed after STORE and LDA")
    finally:
        dv.stop()
    srv.fetch(a)
    neomutt_run(ctx, path, "<tag-pattern>~A<enter><tag-prefix><set-flag>!<sync-mailbox><quit>")
    t3, _ = srv.deliver()
    exp.append(ours(t3))
    check(check_whole(mbox_index_same_as_scan(srv, a, "after neomutt set flags"), exp, "after neomutt")[:2] == u,
          "UIDLs changed after neomutt set flags")
    neomutt_run(ctx, path, "<first-entry><delete-message><sync-mailbox><quit>")
    mbox_other_append(path, mbox_foreign(1))
    exp = exp[1:] + [theirs(1)]
    check_whole(mbox_index_same_as_scan(srv, a, "after neomutt deleted message 1"), exp, "after neomutt's deletion")
    print("#   mbox index: Dovecot STORE/LDA and neomutt between sessions: same as a full scan")


@test(limit=120)
def mbox_full_disk_delete(ctx):
    """Issue 11.9: on a really full file system (a small tmpfs, mounted by the test as root) POP3
    DELE+QUIT still frees space: the mbox is rewritten in place (was: a copy beside it, which failed)."""
    need_root()
    srv = ctx.server(storage="mbox")
    os.makedirs(srv.spool)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", srv.spool], capture_output=True, text=True,
                       timeout=secs(10))
    if r.returncode != 0:
        raise Skip("cannot mount a tmpfs: %s" % r.stderr.strip())
    try:
        srv.start()
        toks = []
        for i in range(40):  # bounded: 256 KB hold at most a dozen 20 KB messages
            t = tok()
            try:
                refused = srv.send(["alice@example.test"], make_msg(t, body="x" * 76 + "\r\n" * 1 + ("y" * 78 + "\r\n") * 250))
            except smtplib.SMTPException:
                break
            if refused:
                break
            toks.append(t)
        check(len(toks) >= 3, "only %d messages fitted" % len(toks))
        free0 = fill_disk(srv.spool)
        check(free0 < 8192, "the file system is not full: %d bytes free" % free0)
        p = srv.pop("alice@example.test")
        p.ok("DELE 1")
        p.ok("DELE 2")
        r = p.cmd("QUIT")
        check(r.startswith(b"+OK"), "QUIT on a full disk: %s" % short(r))
        st = os.statvfs(srv.spool)
        free1 = st.f_bavail * st.f_frsize
        check(free1 >= free0 + 30000, "DELE+QUIT freed %d bytes" % (free1 - free0))
        got = srv.fetch("alice@example.test")
        check([g["token"] for g in got] == toks[2:], "after the deletion: %s, expected %s" % ([g["token"] for g in got], toks[2:]))
        for g in got:
            check(g["data"].endswith(("y" * 78 + "\r\n").encode()) and len(g["data"]) > 20000, "%s is not whole" % g["token"])
        print("#   full tmpfs: %d messages, %d bytes free; DELE 1, 2 + QUIT freed %d bytes" % (len(toks), free0, free1 - free0))
    finally:
        srv.stop()
        subprocess.run(["umount", srv.spool], capture_output=True, timeout=secs(20))


def mbox_dele_round(srv, fault, n, toks, zlines, other=None):
    """One round of a fault test: with MAILSRV_FAULT=fault, DELE 1 + QUIT on the three messages toks
    (the second of zlines lines of z); then (other: a foreign message another MDA appends first)
    without the fault, the mailbox must be the old or the new one (the new one if QUIT said +OK),
    each message whole. Returns (outcome, the fault hit)."""
    t1, t2, t3 = toks
    srv.env = dict(os.environ, MAILSRV_FAULT=fault)
    srv.start()
    p = srv.pop("alice@example.test")
    p.ok("DELE 1")
    r = p.cmd("QUIT")
    check(r.startswith(b"+OK") or r.startswith(b"-ERR"), "N=%d: QUIT -> %s" % (n, short(r)))
    srv.stop()
    hit = fault_fired(srv, fault.split(":")[0], n)
    check(hit or "FAULT: " not in srv.log_text(), "N=%d: a fault fired at another call: %s" % (n, short(srv.log_text(), 300)))
    if other is not None:
        mbox_other_append(mbox_path(srv, "alice@example.test"), mbox_foreign(other))
    srv.env = None
    srv.start()
    got = srv.fetch("alice@example.test")
    have = [g["token"] for g in got]
    tail = [] if other is None else ["foreign%d" % other]
    if r.startswith(b"+OK"):
        check(have == [t2, t3] + tail, "N=%d: QUIT said +OK but the mailbox holds %s" % (n, have))
    check(have in ([t1, t2, t3] + tail, [t2, t3] + tail), "N=%d: the mailbox holds %s" % (n, have))
    exp = [ours(t1), (t2, "test " + t2, "z" * 70 + "\r\n" + "z" * 70), ours(t3)]
    check_whole(got, exp[3 - (len(have) - len(tail)):] + ([] if other is None else [theirs(other)]), "N=%d" % n)
    check(got[1 - (3 - (len(have) - len(tail)))]["data"].count(b"z" * 70) == zlines, "N=%d: message 2 is not whole" % n)
    srv.stop()
    return "%s, %s%s" % ("+OK" if r.startswith(b"+OK") else "-ERR", "new" if len(have) - len(tail) == 2 else "old",
                         "" if hit else ", no fault"), hit




def fault_mbox_dele(ctx, op, ns, other=None, least=1):
    """Issue 11.9: a POP3 DELE+QUIT in mbox mode whose Nth `op` fails (op+: and every later one, a full
    disk) leaves the old or the new mailbox, each message whole, never a broken one; the next login
    finishes an interrupted deletion (+OK means the new one). Stops once N is past the last call.
    other: another MDA appends a message before that next login (the deletion is finished to the
    file's new end)."""
    outcomes = []
    for n in ns:
        srv = ctx.server(storage="mbox").start()
        t1, _ = srv.deliver()
        t2, _ = srv.deliver(body=("z" * 70 + "\r\n") * 60)  # ~4 KB, moved down in pieces of message 1's size
        t3, _ = srv.deliver()
        srv.stop()
        fault = "%s:%d%s" % (op.rstrip("+"), n, "+" if op.endswith("+") else "")
        outcome, hit = mbox_dele_round(srv, fault, n, (t1, t2, t3), 60, other)
        outcomes.append((n, outcome))
        if not hit:
            break
    fault_last_round(op, outcomes, least, "+OK, new", "" if other is None else "then a foreign append, ")


_LEAST = {"write": 7, "fsync": 5, "write+": 7}  # the rounds that must fire: the calls the deletion is known to make
for _op in ("write", "fsync", "write+"):
    _name = "fault_mbox_dele_%s" % _op.replace("+", "_full")
    TESTS.append((_name, (lambda op: lambda ctx: fault_mbox_dele(ctx, op, range(1, 120), least=_LEAST[op]))(_op), {}, 400))
    FAULT_TESTS.add(_name)
for _op in ("write", "fsync"):  # the unfinished deletion's dotlock is gone: another MDA may append first
    _name = "fault_mbox_dele_%s_then_append" % _op
    TESTS.append((_name, (lambda op: lambda ctx: fault_mbox_dele(ctx, op, range(1, 120), other=9, least=_LEAST[op]))(_op), {}, 400))
    FAULT_TESTS.add(_name)


def fill_disk(folder):
    """Writes folder/.fill until the file system is full; returns the bytes left free."""
    fd = os.open(os.path.join(folder, ".fill"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(100000):
            os.write(fd, b"f" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def fault_mbox_dele_full_disk(ctx, op, ns, least=1):
    """Issue 11.9 on a really full tmpfs, where the journal cannot hold a piece: the deletion moves
    pieces no longer than the gap, each recorded before the next; the Nth `op` fails, the next login
    finishes the deletion (or none began). Old or new mailbox, each message whole, never a broken one."""
    need_root()
    outcomes = []
    for n in ns:
        # max_message_size: MAIL needs 1.5 x this free (the reserve), and the tmpfs is small
        srv = ctx.server(storage="mbox", server={"max_message_size": "20K"})
        os.makedirs(srv.spool)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", srv.spool], capture_output=True,
                           text=True, timeout=secs(10))
        if r.returncode != 0:
            raise Skip("cannot mount a tmpfs: %s" % r.stderr.strip())
        try:
            srv.start()
            t1, _ = srv.deliver()
            t2, _ = srv.deliver(body=("z" * 70 + "\r\n") * 120)  # ~8.5 KB: about 16 pieces of message 1's size
            t3, _ = srv.deliver()
            srv.stop()
            check(fill_disk(srv.spool) < 4096, "N=%d: the tmpfs is not full" % n)
            outcome, hit = mbox_dele_round(srv, "%s:%d" % (op, n), n, (t1, t2, t3), 120)
            outcomes.append((n, outcome))
        finally:
            srv.stop()
            subprocess.run(["umount", srv.spool], capture_output=True, timeout=secs(20))
        if not hit:
            break
    fault_last_round(op, outcomes, least, "+OK, new", "full disk, ")


for _op in ("write", "fsync"):
    _name = "fault_mbox_dele_full_disk_%s" % _op
    # about 16 pieces, each written and fsynced (some slack: the piece size follows the tmpfs's free space)
    TESTS.append((_name, (lambda op: lambda ctx: fault_mbox_dele_full_disk(ctx, op, range(1, 200), least=40))(_op), {}, 600))
    FAULT_TESTS.add(_name)

MBOX_FROM_LINE = re.compile(rb"From %s (Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                            rb"[ 1-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-6][0-9] [0-9]{4}$" % re.escape(SENDER.encode()))


def mbox_batch_body(t, i):
    """A body with a line that must be quoted (>From) and, for some messages, more than one 64 KB write."""
    lines = 3000 if i % 4 == 3 else 20
    return "".join("%s line %d\r\n" % (t, j) for j in range(lines)) + "From the middle of %s\r\n.dot line\r\n" % t


def mbox_check_ours_once(raw, before, toks, bodies, what):
    """raw: the mbox file; before: what it held first (kept as it was); toks: the messages that must follow it,
    each once, whole, with its From_ line, in any order; nothing else."""
    check(raw.startswith(before), "%s: the messages that were there before changed" % what)
    msgs = parse_mbox(raw[len(before):])
    got = [token_of(m) for _, m in msgs]
    check(sorted(got) == sorted(toks), "%s: the mbox holds %d messages %s after the old ones, expected %d: %s"
          % (what, len(got), short(repr(got), 200), len(toks), short(repr(sorted(toks)), 200)))
    for frm, m in msgs:
        t = token_of(m)
        check(MBOX_FROM_LINE.match(frm), "%s: %s has the From_ line %s" % (what, t, short(frm)))
        body = bodies[t].replace(b"\r\n", b"\n")
        check(m.endswith(b"\n\n" + body), "%s: %s is not whole: ends with %s" % (what, t, short(m[-200:])))
        check(header(m, "X-UIDL"), "%s: %s has no X-UIDL" % (what, t))


@test(limit=120)
def mbox_group_commit_concurrent_sessions(ctx):
    """Issue 14: 20 SMTP sessions at once, each pipelining its messages (MAIL, RCPT and DATA in one
    write) to one mbox, where the group commit appends the turn's messages together: every one is
    answered 250 and is in the file once, whole, behind its own From_ line (a body's "From " quoted),
    and bob's copies of the messages also for him (two batches, one per mbox) are there too."""
    import threading
    srv = ctx.server(storage="mbox", server={"max_clients": "40"}).start()
    sessions, per = 20, 6
    toks, bodies, both, errors = {}, {}, [], []

    def session(k):
        try:
            c = Smtp(srv.smtp_port)
            c.sock.settimeout(secs(60))
            code, text = c.reply()
            check(code == 220, "greeting %s" % short(text))
            c.expect("EHLO client.test", 250)
            for i in range(per):
                t = tok()
                body = mbox_batch_body(t, i + k).encode()
                rcpts = ["alice@example.test"] + (["bob@example.test"] if i == 2 else [])
                c.send("MAIL FROM:<%s>\r\n" % SENDER + "".join("RCPT TO:<%s>\r\n" % r for r in rcpts) + "DATA\r\n")
                for _ in range(len(rcpts) + 2):  # MAIL, each RCPT, DATA
                    code, text = c.reply()
                    check(code in (250, 354), "session %d: %s" % (k, short(text)))
                c.send(dot_stuff(make_msg(t, body=body)) + b".\r\n")
                code, text = c.reply()
                check(code == 250, "session %d, message %d: %s" % (k, i, short(text)))
                toks[t] = k
                bodies[t] = body
                if len(rcpts) == 2:
                    both.append(t)
            c.cmd("QUIT")
            c.close()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append("session %d: %s" % (k, e))

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(secs(100))
    check(not errors, "; ".join(errors[:3]))
    check(len(toks) == sessions * per, "%d messages answered, expected %d" % (len(toks), sessions * per))
    mbox_check_ours_once(read(mbox_path(srv, "alice@example.test")), b"", list(toks), bodies, "alice")
    mbox_check_ours_once(read(mbox_path(srv, "bob@example.test")), b"", both, bodies, "bob")
    got = srv.fetch("alice@example.test")
    check(sorted(g["token"] for g in got) == sorted(toks), "POP3 lists %d messages, expected %d" % (len(got), len(toks)))
    uids = [g["uid"] for g in got]
    check(len(set(uids)) == len(uids), "UIDLs not unique")


def server_rx_queues(port, k):
    """The bytes waiting unread in the server's end of each of its k connections on port (Linux:
    /proc/net/tcp and tcp6, established sockets whose local port is port), or None."""
    queues = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                queues.append(int(cols[4].split(":")[1], 16))
    return queues if len(queues) == k else None


def proc_stopped(pid):
    """Whether every thread of process pid is stopped (state T in /proc/PID/task/*/stat, Linux)."""
    tasks = os.listdir("/proc/%d/task" % pid)
    for t in tasks:
        with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
            if f.read().rsplit(")", 1)[1].split()[0] != "T":
                return False
    return bool(tasks)


def mbox_batch_round(ctx, op, n, outcomes, k=4):
    """One round of fault_mbox_batch: alice's mbox holds another program's message; k sessions are
    each in DATA with the body sent; the server is stopped (SIGSTOP) while the k final dots go out,
    so that the next loop turn takes all of them: one batch. Its Nth `op` fails. Replies must be
    250 or 451; a 451 from the batch (a failed lock, journal, append, fsync or journal clear) must
    come for every message of it; after a restart without the fault the mbox holds the old message
    as it was and exactly the messages answered 250, each whole and once. Returns whether the fault
    fired (None: at start)."""
    srv = ctx.server(storage="mbox")
    path = mbox_path(srv, "alice@example.test")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(mbox_foreign(1))
    before = read(path)
    srv.env = dict(os.environ, MAILSRV_FAULT="%s:%d" % (op, n))
    if not fault_start(srv, op, n, outcomes):
        srv.env = None
        return None
    conns, toks, bodies = [], [], {}
    for i in range(k):
        c = srv.smtp()
        t = tok()
        bodies[t] = mbox_batch_body(t, i).encode()
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<alice@example.test>", 250)
        c.expect("DATA", 354)
        c.send(dot_stuff(make_msg(t, body=bodies[t])))
        conns.append(c)
        toks.append(t)
    # the server has read every body before the dots go out, and every dot is waiting in its socket
    # before it runs again: its next turn takes all of them
    wait_for(lambda: server_rx_queues(srv.smtp_port, k) == [0] * k or None, 20, "the server reading the bodies")
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        # kill() returns before the server stops: woken from poll() by the signal, it would still take
        # the dots sent meanwhile, some of them (two batches), before it stops
        wait_for(lambda: proc_stopped(srv.proc.pid), 5, "the server stopping (SIGSTOP)", interval=0.005)
        for c in conns:
            c.send(".\r\n")
        wait_for(lambda: server_rx_queues(srv.smtp_port, k) == [3] * k or None, 5, "the dots reaching the server")
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    replies = [c.reply() for c in conns]
    for c in conns:
        c.close()
    srv.stop()
    hit = fault_fired(srv, op, n)
    check(hit or "FAULT: " not in srv.log_text(), "N=%d: a fault fired at another call: %s" % (n, short(srv.log_text(), 300)))
    codes = [code for code, _ in replies]
    check(all(code in (250, 451) for code in codes), "N=%d: replies %s" % (n, replies))
    tx = [code == 451 and "Local error in processing" in text for code, text in replies]  # its own .tmp write failed
    batch = [code == 451 and not tx[i] for i, (code, text) in enumerate(replies)]
    in_batch = [i for i in range(k) if not tx[i]]
    if any(batch):
        check(all(batch[i] for i in in_batch), "N=%d: the batch failed for some of its messages only: %s" % (n, replies))
    srv.env = None
    srv.start()
    got = srv.fetch("alice@example.test")  # the login's lock recovers what the journal says
    ok = [toks[i] for i in range(k) if codes[i] == 250]
    check([g["token"] for g in got][:1] == ["foreign1"], "N=%d: the old message is gone: %s" % (n, [g["token"] for g in got]))
    mbox_check_ours_once(read(path), before, ok, bodies, "N=%d" % n)
    srv.stop()
    if any(batch) and len(in_batch) >= 2:
        outcomes.append((n, "batch of %d: 451" % len(in_batch)))
    else:
        outcomes.append((n, "%d x 250%s%s" % (len(ok), ", %d refused (.tmp)" % sum(tx) if any(tx) else "", "" if hit else ", no fault")))
    return hit


def fault_mbox_batch(ctx, op, ns, least):
    """Issue 14: the Nth `op` fails while k messages to one mbox are delivered in one loop turn
    (mbox_batch_round); at least `least` rounds must fail a whole batch of two or more (the batch's
    writes: the journal's list and record, each append, the journal clear; its fsyncs: the journal,
    the mbox, the journal clear). Stops once N is past the last call."""
    outcomes = []
    for n in ns:
        if mbox_batch_round(ctx, op, n, outcomes) is False:
            break
    fault_last_round(op, outcomes, 0, "4 x 250", "mbox batch, ")
    failed = sum(1 for _, o in outcomes if str(o).startswith("batch"))
    check(failed >= least, "only %d rounds failed a whole batch, expected at least %d: %s" % (failed, least, outcomes))


for _op, _least in (("write", 7), ("fsync", 3)):  # write: list + record, 4 appends (one of them 2 writes), clear
    _name = "fault_mbox_batch_%s" % _op
    TESTS.append((_name, (lambda op, least: lambda ctx: fault_mbox_batch(ctx, op, range(1, 80), least))(_op, _least), {}, 400))
    FAULT_TESTS.add(_name)


# end of section: mbox


# =============================================================================================
# trust: nothing done as root follows a link; spool .tmp cleaned while running; free-space reserve (issue 11: 2, 10)
# (section: fs)

def fs_victims(base):
    """A file standing in for /etc/shadow (root, 0600) and a folder with old files in it."""
    victim = os.path.join(base, "shadow-standin")
    with open(victim, "w") as f:
        f.write("root:secret:1:0:99999:7:::\n")
    os.chmod(victim, 0o600)
    folder = os.path.join(base, "precious")
    os.mkdir(folder, 0o700)
    old = time.time() - 40 * 3600  # older than the 36 h after which .tmp leftovers are removed
    for name in ("a.env.tmp1", "b.msg", "c"):
        with open(os.path.join(folder, name), "w") as f:
            f.write("keep me\n")
        os.utime(os.path.join(folder, name), (old, old))
    return victim, folder


def fs_victims_intact(victim, folder, what):
    st = os.lstat(victim)
    check(st.st_uid == 0 and st.st_gid == 0 and (st.st_mode & 0o7777) == 0o600,
          "%s: the file behind the link is now uid %d gid %d mode %o (was root 600)"
          % (what, st.st_uid, st.st_gid, st.st_mode & 0o7777))
    with open(victim) as f:
        check(f.read() == "root:secret:1:0:99999:7:::\n", "%s: the file behind the link was changed" % what)
    st = os.lstat(folder)
    check(st.st_uid == 0 and (st.st_mode & 0o7777) == 0o700,
          "%s: the folder behind the link is now uid %d mode %o (was root 700)" % (what, st.st_uid, st.st_mode & 0o7777))
    names = sorted(os.listdir(folder))
    check(names == ["a.env.tmp1", "b.msg", "c"], "%s: the folder behind the link now holds %s" % (what, names))
    for n in names:
        check(os.lstat(os.path.join(folder, n)).st_uid == 0, "%s: %s in the folder behind the link changed owner" % (what, n))


@test(unix_only=True, limit=60)
def fs_root_start_follows_no_link(ctx):
    """Started as root with user = nobody, mailsrv gives spool, spool/.tmp and queue to nobody and cleans
    .tmp and the queue: none of it may go through a symbolic link that the account planted there
    (issue 11 finding 2). A link is refused at start with an error naming it (as postfix-script
    complains about wrong queue folders), and the file or folder behind it is untouched."""
    need_root()
    import pwd
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        raise Skip("no user nobody")
    os.chmod(ctx.dir, 0o755)
    for where in (".tmp", "queue", "spool"):
        for kind in ("file", "folder"):
            if where == "spool" and kind == "file":
                continue
            srv = ctx.server(server={"user": "nobody"})
            os.chmod(srv.dir, 0o755)
            victim, folder = fs_victims(srv.dir)
            link = {".tmp": os.path.join(srv.spool, ".tmp"), "queue": srv.queue, "spool": srv.spool}[where]
            if where != "spool":
                os.mkdir(srv.spool, 0o700)
            os.symlink(victim if kind == "file" else folder, link)
            srv.start(wait=False)
            what = "%s linked to a %s" % (where, kind)
            try:
                rc = srv.proc.wait(timeout=secs(10))
            except subprocess.TimeoutExpired:
                rc = None
            fs_victims_intact(victim, folder, what)
            check(rc not in (None, 0), "%s: the server started (exit status %s); log: %s" % (what, rc, short(srv.log_text(), 400)))
            log = srv.log_text()
            check(link in log and "symbolic link" in log, "%s: no error naming %s: %s" % (what, link, short(log, 400)))
            check(os.path.islink(link), "%s: the link itself is gone" % what)
    # and without links the same start works: the folders go to nobody
    srv = ctx.server(server={"user": "nobody"})
    os.chmod(srv.dir, 0o755)
    srv.start()
    nobody = pwd.getpwnam("nobody").pw_uid
    for d in (srv.spool, os.path.join(srv.spool, ".tmp"), srv.queue):
        check(os.lstat(d).st_uid == nobody, "%s not given to nobody" % d)
    t, _ = srv.deliver()
    check([g["token"] for g in srv.fetch("alice@example.test")] == [t], "delivery as nobody failed")
    # `mailsrv flush` and `reload`, run by root, create QUEUE/flush and QUEUE/reload: not through a
    # link planted there (/etc/nologin...). The server is stopped first: running, it would take a
    # FIFO planted at QUEUE/reload for a request and remove it before the command looks.
    srv.stop()
    for cmd in ("flush", "reload"):
        standin = os.path.join(srv.dir, "nologin-standin-" + cmd)
        os.symlink(standin, os.path.join(srv.queue, cmd))
        r = run_cli(["-c", srv.ini, cmd])
        check(not os.path.exists(standin), "mailsrv %s created the file behind QUEUE/%s (exit %d: %s)"
              % (cmd, cmd, r.returncode, r.stderr))
        check(r.returncode != 0, "mailsrv %s through a link: exit 0" % cmd)
        os.unlink(os.path.join(srv.queue, cmd))
        # nor open a FIFO planted there: root's open for writing would wait for a reader for ever
        os.mkfifo(os.path.join(srv.queue, cmd))
        try:
            r = run_cli(["-c", srv.ini, cmd], timeout=10)
        except subprocess.TimeoutExpired:
            raise TestFailure("mailsrv %s hangs on a FIFO at QUEUE/%s" % (cmd, cmd))
        check(r.returncode != 0, "mailsrv %s with a FIFO at QUEUE/%s: exit 0" % (cmd, cmd))
        os.unlink(os.path.join(srv.queue, cmd))


def fs_tree_state(path):
    """What a link target holds: names, sizes and contents (to see it untouched)."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return ("file", os.stat(path).st_mode & 0o7777, f.read())
    out = {}
    for dp, dns, fns in os.walk(path):
        for n in fns:
            p = os.path.join(dp, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = f.read()
        for n in dns:
            out[os.path.relpath(os.path.join(dp, n), path) + "/"] = b""
    return ("tree", out)


@test(modes=BOTH, limit=60, unix_only=True)  # wine shows a Linux link to a file as the file, not a reparse point
def fs_delivery_refuses_linked_mailbox(ctx, storage):
    """Delivery refuses a mailbox path that is a symbolic link anywhere under the spool: a DOMAIN
    folder, a Maildir folder or its new/cur/tmp, an mbox file or its journal (issue 11 finding 2).
    The answer is 451 4.3.0 (a local fault the administrator must repair; the sender retries and
    no mail is lost: a 5xx after DATA would bounce the message for every recipient), the target is
    untouched, and the log says which mailbox and why."""
    srv = ctx.server(storage=storage).start()
    dom = os.path.join(srv.spool, "example.test")
    # a first delivery creates the folders; the mailbox of bob is then replaced by links
    t0, _ = srv.deliver(to="bob@example.test")
    outside = os.path.join(srv.dir, "outside")
    os.mkdir(outside, 0o700)
    passwd = os.path.join(outside, "passwd-standin")
    with open(passwd, "wb") as f:
        f.write(b"root:x:0:0:root:/root:/bin/sh\n")
    os.chmod(passwd, 0o644)
    elsewhere = os.path.join(outside, "folder")
    for sub in ("", "new", "cur", "tmp"):
        os.makedirs(os.path.join(elsewhere, sub), 0o700, exist_ok=True)
    with open(os.path.join(elsewhere, "cur", "1.x"), "wb") as f:
        f.write(b"Subject: not mail\n\nsomeone else's file\n")
    if storage == "maildir":
        bob = os.path.join(dom, "bob")
        cases = [("bob's Maildir", bob, elsewhere), ("bob's new/", os.path.join(bob, "new"), os.path.join(elsewhere, "new")),
                 ("bob's cur/", os.path.join(bob, "cur"), os.path.join(elsewhere, "cur")),
                 ("bob's tmp/", os.path.join(bob, "tmp"), os.path.join(elsewhere, "tmp")),
                 ("the domain folder", dom, elsewhere)]
    else:
        cases = [("bob's mbox", os.path.join(dom, "bob.mbox"), passwd),
                 ("bob's journal", os.path.join(dom, ".bob.mbox.journal"), passwd),
                 ("the domain folder", dom, elsewhere)]
    for what, link, target in cases:
        if target == elsewhere and what == "the domain folder":
            os.makedirs(os.path.join(elsewhere, "bob", "new"), 0o700, exist_ok=True)  # a Maildir or mbox to find there
            with open(os.path.join(elsewhere, "bob.mbox"), "wb") as f:
                f.write(b"From x Thu Jan  1 00:00:00 2026\nSubject: other\n\nnot ours\n\n")
        before = fs_tree_state(target)
        saved = link + ".saved"
        os.rename(link, saved)
        os.symlink(target, link)
        try:
            c = srv.smtp()
            c.expect("MAIL FROM:<%s>" % SENDER, 250)
            c.expect("RCPT TO:<bob@example.test>", 250)
            c.expect("DATA", 354)
            c.send(dot_stuff(make_msg(tok(), to="bob@example.test")) + b".\r\n")
            code, text = c.reply()
            c.expect("QUIT", 221)
            check(code == 451 and "4.3.0" in text, "%s is a link: delivery answered %d %s, expected 451 4.3.0" % (what, code, text))
            check(fs_tree_state(target) == before, "%s is a link: what it points to was changed" % what)
            check(os.path.islink(link), "%s: the link was replaced" % what)
            p = srv.pop()  # POP3 refuses it too: DELE would remove files wherever the link points
            p.ok("USER bob@example.test")
            r = p.cmd("PASS " + PASSWORDS["bob@example.test"])
            check(r.startswith(b"-ERR"), "%s is a link: POP3 login answered %s" % (what, short(r)))
            p.close()
            check(fs_tree_state(target) == before, "%s is a link: what it points to was changed by POP3" % what)
            wait_for(lambda: re.search(r"delivery of \S+ failed: .*bob@example\.test.*symbolic link", srv.log_text()),
                     5, "a log line naming bob@example.test and the symbolic link (%s)" % what)
        finally:
            os.unlink(link)
            os.rename(saved, link)
    # alice, in the same domain, was never affected; bob gets mail again once the links are gone
    t1, _ = srv.deliver(to="bob@example.test")
    check(stored_tokens(srv, "bob@example.test") == [t0, t1], "bob's mailbox after the links: %s" % stored_tokens(srv, "bob@example.test"))


@test(unix_only=True, limit=60)
def fs_tmp_leftover_cleaned_while_running(ctx):
    """A kill -9 during DATA leaves SPOOL/.tmp/NAME; a later start does not remove it while it is
    young. Once it is older than 36 h, the running server removes it (every hour, and at each
    reload: here SIGHUP), as Dovecot cleans Maildir tmp/; younger files (a session in DATA) stay."""
    srv = ctx.server().start()
    tmpdir = os.path.join(srv.spool, ".tmp")
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: cut short\r\n\r\n" + b"x" * 70 + b"\r\n")
    files = wait_for(lambda: os.listdir(tmpdir), 5, "the message file in SPOOL/.tmp")
    srv.kill9()
    c.close()
    check(len(files) == 1 and os.listdir(tmpdir) == files, "after kill -9: .tmp holds %s" % os.listdir(tmpdir))
    srv.start()
    check(os.listdir(tmpdir) == files, "a young leftover was removed at start: %s" % os.listdir(tmpdir))
    # a session in DATA now: its file must survive the cleaning even when backdated
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: slow\r\n\r\n")
    live = wait_for(lambda: [n for n in os.listdir(tmpdir) if n not in files], 5, "the live session's file")
    young = os.path.join(tmpdir, "young-leftover")
    with open(young, "w") as f:
        f.write("x\n")
    old = time.time() - 37 * 3600
    os.utime(os.path.join(tmpdir, files[0]), (old, old))
    os.utime(os.path.join(tmpdir, live[0]), (old, old))
    os.utime(young, (time.time() - 35 * 3600,) * 2)
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: files[0] not in os.listdir(tmpdir), 5, "the 37 h old leftover %s removed by the running server" % files[0])
    check(srv.alive(), "server died")
    left = sorted(os.listdir(tmpdir))
    check(left == sorted(live + ["young-leftover"]), ".tmp after the cleaning: %s, expected %s" % (left, sorted(live + ["young-leftover"])))
    c.send(b"still here\r\n.\r\n")
    code, text = c.reply()
    check(code == 250, "the session in DATA lost its file: %d %s" % (code, text))
    check(re.search(r"removed .*%s" % re.escape(files[0]), srv.log_text()), "no log line for the removal")


@test(unix_only=True, limit=60)
def fs_free_space_reserve(ctx):
    """MAIL gets 452 4.3.1 (RFC 3463: mail system full) while the spool's file system has less than
    1.5 x max_message_size free (plus a declared SIZE, RFC 1870), as Postfix refuses below
    queue_minfree; the relay queue's file system too, when it is another one. Once space is freed,
    mail is accepted and delivered. Spool and queue are 2 MB tmpfs mounted by the test (root only)."""
    need_root()
    srv = ctx.server(server={"max_message_size": "400K"})
    mounts = []
    try:
        for d in (srv.spool, srv.queue):
            os.mkdir(d)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", d], capture_output=True, text=True)
            if r.returncode != 0:
                raise Skip("cannot mount a tmpfs: %s" % r.stderr.strip())
            mounts.append(d)
        srv.start()
        t0, _ = srv.deliver()

        def fill(mnt, leave):
            filler = os.path.join(mnt, "filler")
            st = os.statvfs(mnt)
            with open(filler, "ab") as f:
                f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
            st = os.statvfs(mnt)
            return filler, st.f_bavail * st.f_frsize

        def mail(what, size=None):
            c = srv.smtp()
            code, text = c.cmd("MAIL FROM:<%s>%s" % (SENDER, " SIZE=%d" % size if size else ""))
            c.expect("QUIT", 221)
            return code, text

        for mnt in mounts:
            what = "spool" if mnt == srv.spool else "queue"
            filler, free = fill(mnt, 500 * 1024)  # 500 KB left: less than 600 KB (1.5 x 400K)
            check(free < 600 * 1024, "filler: %d bytes still free" % free)
            code, text = mail(what)
            check(code == 452 and text[4:].startswith("4.3.1"),
                  "MAIL with %d KB free in the %s: %d %s, expected 452 4.3.1" % (free // 1024, what, code, text))
            check(re.search(r"MAIL refused: %s has \d+ KB free" % re.escape(mnt), srv.log_text()), "no log line for the refusal")
            os.unlink(filler)
            filler, free = fill(mnt, 700 * 1024)  # 700 KB: enough for MAIL, not for a declared 200 KB more
            check(mail(what)[0] == 250, "MAIL with %d KB free in the %s refused" % (free // 1024, what))
            code, text = mail(what, 200 * 1024)
            check(code == 452 and text[4:].startswith("4.3.1"),
                  "MAIL SIZE=200K with %d KB free in the %s: %d %s, expected 452 4.3.1" % (free // 1024, what, code, text))
            os.unlink(filler)
        t1, _ = srv.deliver()
        check(stored_tokens(srv, "alice@example.test") == [t0, t1], "after freeing space: %s" % stored_tokens(srv, "alice@example.test"))
    finally:
        srv.stop()
        for d in mounts:
            subprocess.run(["umount", d], capture_output=True)


# end of section: fs


def mbox_big_foreign(n, kb):
    """A foreign message with a body of about kb KiB (a removal moves it in pieces of 1 MiB)."""
    line = "big body line of message %d, padding padding padding padding padding padding\n" % n
    body = line * (kb * 1024 // len(line) + 1)
    return ("From other@else.test Fri Dec  4 12:00:%02d 2026\nFrom: <other@else.test>\nTo: <alice@example.test>\n"
            "Subject: foreign %d\nX-Test-Token: foreign%d\n\nforeign body %d\n>From quoted %d\n%s\n"
            % (n % 60, n, n, n, n, body)).encode()


@test(limit=180)
def mbox_quit_scattered_deletions_in_slices(ctx):
    """Issue 14: a QUIT that deletes every other message of a 400-message mbox (some of them
    several MiB, moved in pieces) is carried out across loop turns with both locks held: the client
    leaves without waiting for the answer, a delivery made meanwhile is either refused with 451 or
    kept, and afterwards exactly the kept messages are there, whole, with their UIDLs, and the
    index written at the end matches a scan."""
    srv = ctx.server(storage="mbox", server={"timeout": "120"}).start()
    path = mbox_path(srv, "alice@example.test")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for n in range(1, 401):
            f.write(mbox_big_foreign(n, 3 * 1024) if n in (2, 150, 398) else mbox_foreign(n))
    p = srv.pop("alice@example.test")
    before = p.uidl()
    check(len(before) == 400, "the mbox shows %d messages, not 400" % len(before))
    p.send("".join("DELE %d\r\n" % k for k in range(1, 401, 2)))
    for k in range(200):
        r = p.line()
        check(r.startswith(b"+OK"), "DELE: %s" % short(r))
    p.send("QUIT\r\n")
    p.sock.shutdown(socket.SHUT_RDWR)
    p.close()
    token = "duringquit"
    try:
        srv.deliver(token=token)
        refused = False
    except smtplib.SMTPDataError as e:
        check(e.smtp_code == 451, "a delivery during the QUIT got %s" % e)
        refused = True
    print("    a delivery during the QUIT's deletions: %s" % ("451" if refused else "250"))
    from .pop3 import pop_login_retry
    q = pop_login_retry(srv, "alice@example.test", timeout=60)
    after = q.uidl()
    q.quit()
    kept = [before[k] for k in range(2, 401, 2)]
    got = [u for _, u in sorted(after.items())]
    want = kept + ([] if refused else got[-1:])
    check(got == want, "after the QUIT: %d messages, expected %d (the even ones%s)"
          % (len(got), len(want), "" if refused else " and the one delivered meanwhile"))
    expect = [theirs(n) for n in range(2, 401, 2)] + ([] if refused else [ours(token)])
    check_whole(srv.fetch("alice@example.test"), expect, "after a sliced QUIT")
    os.unlink(path[:-len(os.path.basename(path))] + "." + os.path.basename(path) + ".index")
    check_whole(srv.fetch("alice@example.test"), expect, "after a sliced QUIT, without the index")
