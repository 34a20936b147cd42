#!/usr/bin/env python3
"""End-to-end tests for mailsrv.

Starts the real binary on free loopback ports with a temporary INI and talks to it
with smtplib, poplib, raw sockets and curl.

    python3 test/e2e.py [--bin PATH] [--run "PREFIX"] [-k SUBSTRING] [--list]

--bin   the server binary (default: ./mailsrv in the repository root, the folder above test/)
--run   a command prefix put before the binary, e.g. "qemu-arm -L /usr/arm-linux-gnueabihf" or "wine"
-k      only run tests whose name contains SUBSTRING
MAILSRV_TEST_SLACK (default 1.0) multiplies every deadline (for emulators and slow machines).
MAILSRV_TEST_KEEP=1 keeps the temporary folders of failed tests.
MAILSRV_TEST_SANLOG=DIR: the folder where the servers' sanitizer (san.PID) or valgrind (vg.PID)
reports go (test/run_tests.sh --logs/--san sets it). After each test (its servers stopped) the new
ones are renamed after it (san.PID.TEST), and a report there, or a sanitizer report in a server's
output, fails the test.

Prints `ok NAME` or `FAIL NAME: reason` per test, then `N passed, N failed`; exit status 1 if any failed.
Python 3 standard library only (plus the curl command for the curl tests).
"""
import argparse
import base64
import collections
import glob
import os
import poplib
import random
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import fakes  # test/ is on sys.path: it is this script's folder

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SLACK = float(os.environ.get("MAILSRV_TEST_SLACK", "") or "1.0")
# the run's random seed: printed at the start, so that a failure that depends on random choices
# (a kill's moment, message sizes) can be repeated with MAILSRV_TEST_SEED=N
SEED = int(os.environ.get("MAILSRV_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
BIN = os.path.join(REPO, "mailsrv")
RUN = []  # command prefix
KEEP = os.environ.get("MAILSRV_TEST_KEEP") == "1"
# MAILSRV_TEST_PLATFORM=windows: the server is mailsrv.exe under wine. Wine turns
# SIGINT into a console Ctrl+C (the Windows way to stop mailsrv), SIGTERM just
# kills it, and there is no SIGHUP: graceful stops use SIGINT and the SIGHUP
# tests are skipped (reloading on a file change is tested on every platform).
WINDOWS = os.environ.get("MAILSRV_TEST_PLATFORM") == "windows"
STOP_SIGNAL = signal.SIGINT if WINDOWS else signal.SIGTERM
SANLOG = os.environ.get("MAILSRV_TEST_SANLOG") or None
# a sanitizer report in a server's output (gcc's UBSan writes there, not to log_path)
SAN_RE = re.compile(r"runtime error:|ERROR: (Address|Leak|UndefinedBehavior|Thread|Memory)Sanitizer")


def secs(s):
    """A duration scaled by the slack factor."""
    return s * SLACK


def deadline(s):
    return time.monotonic() + secs(s)


class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)
    return cond


CURRENT = threading.local()


def soft(cond, msg):
    """Like check(), but the test goes on so later checks still run; the test fails at the end."""
    if not cond:
        ctx = getattr(CURRENT, "ctx", None)
        if ctx is None:
            raise TestFailure(msg)
        fr = [f for f in traceback.extract_stack() if os.path.abspath(f.filename) == os.path.abspath(__file__)]
        ctx.soft.append("%s (e2e.py:%d)" % (msg, fr[-2].lineno if len(fr) > 1 else 0))
    return cond


def short(b, n=160):
    """repr of bytes/str, shortened for messages."""
    r = repr(b)
    return r if len(r) <= n else r[: n // 2] + " ... " + r[-n // 2:]


def tok():
    return "tk" + "%012x" % random.getrandbits(48)


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def plain(user, pw):
    return b64("\0" + user + "\0" + pw)


def wait_for(pred, timeout, what, interval=0.05):
    """Poll pred() until it returns a true value (bounded)."""
    end = deadline(timeout)
    last = None
    while True:
        try:
            r = pred()
            if r:
                return r
        except (OSError, TestFailure, smtplib.SMTPException, poplib.error_proto) as e:
            last = e
        if time.monotonic() > end:
            raise TestFailure("timed out waiting for %s%s" % (what, " (last error: %s)" % last if last else ""))
        time.sleep(interval)


def free_ports(n, host="127.0.0.1"):
    return fakes.free_ports_on(n, (host,))


def accepts(host, port):
    """Whether something listens on host:port (a peer program the test started)."""
    try:
        socket.create_connection((host, port), 1).close()
        return True
    except OSError:
        return False


def have_ipv6():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def need_program(name, package):
    """The path of a real peer program (neomutt, dovecot, fail2ban-regex, ...) that a test drives.
    Where it is missing the test is skipped, except under CI (CI=true), where .ci/run installs it
    and its absence is a failure: a green CI never hides a peer that was not there."""
    path = shutil.which(name) or next((p for p in ("/usr/sbin/" + name, "/usr/bin/" + name) if os.path.exists(p)), None)
    if path:
        return path
    if os.environ.get("CI") == "true":
        raise TestFailure("%s is not installed (Debian package %s; .ci/run installs it)" % (name, package))
    raise Skip("%s not installed (apt-get install %s)" % (name, package))


def native_time():
    """Is time the machine's own here? Not under an emulator or wine (--run), valgrind or the
    sanitizers, or on a machine declared slow (MAILSRV_TEST_SLACK)."""
    return not (RUN or SANLOG or SLACK != 1.0)


def need_real_time():
    """Skips a test whose assertions are about time (latency, stalls, equal costs) where time is
    not the machine's own. Those runs still run every functional test."""
    if not native_time():
        raise Skip("timing is only measured natively, without valgrind/sanitizers/emulators", "timing")


def need_native(why):
    """Skips a test that needs the server to run as a plain native process (traced with strace,
    say): expected under an emulator, wine or valgrind (--run) and the sanitizers, not otherwise."""
    if RUN or SANLOG:
        raise Skip("%s: only with a plain native server" % why, "native")


def need_root():
    """Skips a test that only means something as root (CI runs as root: there the skip is not
    expected, and fails the run)."""
    if WINDOWS:
        raise Skip("needs root (Unix)", "windows")
    if os.geteuid() != 0:
        raise Skip("needs root", "root")


def need_ipv6():
    """Skips a test about IPv6 where the machine has no IPv6 loopback: never expected (CI has one),
    so the test never passes by testing IPv4 instead."""
    if not have_ipv6():
        raise Skip("no IPv6 loopback (::1)")


def run_cli(args, input=None, cwd=None, timeout=20):
    """Run the binary with args (no server); returns CompletedProcess with text output."""
    r = subprocess.run(RUN + [BIN] + list(args), input=input, capture_output=True, text=True,
                       cwd=cwd or REPO, timeout=secs(timeout))
    if SANLOG and SAN_RE.search(r.stderr or ""):
        cur = getattr(CURRENT, "ctx", None)
        if cur is not None:
            cur.san_texts.append(("`mailsrv %s`" % " ".join(args), r.stderr))
    return r


# ---------------------------------------------------------------------------------------------
# raw protocol clients


class Conn:
    """A line-oriented TCP client (CRLF lines)."""

    def __init__(self, port, host="127.0.0.1", timeout=10, source=None):
        self.sock = socket.create_connection((host, port), timeout=secs(timeout),
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.closed = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def readline(self):
        """One line without CRLF, or None at EOF."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self):
        """An SMTP reply: (code, text) with the lines joined by newlines."""
        lines = []
        while True:
            l = self.readline()
            if l is None:
                raise TestFailure("connection closed by server while waiting for a reply (got so far: %s)" % short(lines))
            lines.append(l.decode("latin-1"))
            if len(l) < 4 or l[3:4] != b"-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise TestFailure("malformed SMTP reply %s" % short(lines))
        return code, "\n".join(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def expect(self, line, code, enh=None):
        c, t = self.cmd(line)
        last = t.split("\n")[-1]
        ok = c == code and (enh is None or last[4:].startswith(enh))
        check(ok, "sent %s: got %s, expected %d%s" % (short(line, 100), short(t), code, " " + enh if enh else ""))
        return t

    def expect5(self, line, enh=None):
        c, t = self.cmd(line)
        check(500 <= c <= 599, "sent %s: got %s, expected a 5xx reply" % (short(line, 100), short(t)))
        return c, t

    def read_eof(self, timeout=5):
        """Read until the server closes; returns what arrived meanwhile."""
        self.sock.settimeout(secs(timeout))
        data = self.buf
        self.buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise TestFailure("server did not close the connection within %.1fs (got %s)" % (secs(timeout), short(data)))
        except ConnectionResetError:
            pass
        self.closed = True
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def starttls(self, context, server_hostname=None, session=None):
        """TLS handshake on this connection (after STARTTLS/STLS, or right away for implicit TLS).
        Anything the server sent in the clear after its go-ahead is a failure."""
        check(not self.buf, "the server sent %s in the clear before the TLS handshake" % short(self.buf))
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname, session=session)
        return self.sock


class Smtp(Conn):
    def send_mail(self, sender, rcpts, msg, body_extra=b""):
        """MAIL/RCPT/DATA with manual dot-stuffing; returns the (code, text) after the final dot."""
        self.expect("MAIL FROM:<%s>" % sender, 250)
        for r in rcpts:
            self.expect("RCPT TO:<%s>" % r, 250)
        self.expect("DATA", 354)
        self.send(dot_stuff(msg) + b".\r\n")
        return self.reply()


class Pop(Conn):
    def line(self):
        l = self.readline()
        if l is None:
            raise TestFailure("POP3 connection closed by server")
        return l

    def greet(self):
        l = self.line()
        check(l.startswith(b"+OK"), "POP3 greeting %s" % short(l))
        return l

    def cmd(self, s):
        self.send(s + "\r\n")
        return self.line()

    def ok(self, s):
        r = self.cmd(s)
        check(r.startswith(b"+OK"), "POP3 %s -> %s" % (short(s, 80), short(r)))
        return r

    def err(self, s):
        r = self.cmd(s)
        check(r.startswith(b"-ERR"), "POP3 %s -> %s, expected -ERR" % (short(s, 80), short(r)))
        return r

    def multi(self):
        out = []
        while True:
            l = self.line()
            if l == b".":
                return out
            if l.startswith(b"."):
                l = l[1:]
            out.append(l)

    def login(self, user, pw):
        self.ok("USER " + user)
        return self.ok("PASS " + pw)

    def stat(self):
        p = self.ok("STAT").split()
        return int(p[1]), int(p[2])

    def list(self):
        self.ok("LIST")
        return {int(l.split()[0]): int(l.split()[1]) for l in self.multi()}

    def uidl(self):
        self.ok("UIDL")
        return {int(l.split()[0]): l.split()[1].decode("latin-1") for l in self.multi()}

    def retr(self, n):
        self.ok("RETR %d" % n)
        return b"".join(l + b"\r\n" for l in self.multi())

    def top(self, n, k):
        self.ok("TOP %d %d" % (n, k))
        return b"".join(l + b"\r\n" for l in self.multi())

    def quit(self):
        self.ok("QUIT")
        self.read_eof()


def dot_stuff(msg):
    if not msg.endswith(b"\r\n"):
        msg += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", msg)


# ---------------------------------------------------------------------------------------------
# messages and storage

SENDER = "sender@client.test"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # mailsrv refuses root without allow_root or user


def make_msg(token, to="alice@example.test", subject=None, body=None, sender=SENDER):
    hdr = ["From: <%s>" % sender, "To: <%s>" % to, "Subject: %s" % (subject or "test " + token),
           "Message-ID: <%s@client.test>" % token, "X-Test-Token: %s" % token]
    if body is None:
        body = "Hello %s\r\nsecond line\r\n" % token
    if isinstance(body, str):
        body = body.encode("utf-8")
    return ("\r\n".join(hdr) + "\r\n\r\n").encode() + body


def token_of(data):
    m = re.search(rb"X-Test-Token: (\S+)", data)
    return m.group(1).decode() if m else None


def header(data, name):
    """Unfolded value of the first header `name` in a CRLF or LF message, or None."""
    head = data.replace(b"\r\n", b"\n").partition(b"\n\n")[0].decode("latin-1")
    m = re.search(r"(?im)^%s:(.*(?:\n[ \t].*)*)" % re.escape(name), head)
    return re.sub(r"\s+", " ", m.group(1)).strip() if m else None


def check_message(got, sent, sender=SENDER, what="message"):
    """got: CRLF message from POP3; sent: CRLF message as submitted."""
    lines = got.split(b"\r\n")
    rp = ("Return-Path: <%s>" % sender).encode()
    soft(lines[0] == rp, "%s: first line is %s, expected %s" % (what, short(lines[0]), short(rp)))
    soft(len(lines) > 1 and lines[1].startswith(b"Received: from "),
         "%s: second line is %s, expected 'Received: from ...'" % (what, short(lines[1] if len(lines) > 1 else b"")))
    check(rp in lines[:lines.index(b"") if b"" in lines else 0], "%s: no %s header" % (what, short(rp)))
    check(header(got, "Received") is not None, "%s: no Received: header" % what)
    gh, _, gb = got.partition(b"\r\n\r\n")
    sh, _, sb = sent.partition(b"\r\n\r\n")
    check(gb == sb, "%s: body differs: sent %s, got %s" % (what, short(sb, 300), short(gb, 300)))
    ghl = gh.split(b"\r\n")
    for l in sh.split(b"\r\n"):
        check(l in ghl, "%s: header line %s missing in %s" % (what, short(l), short(gh, 400)))


def parse_mbox(data):
    """mboxrd -> list of (from_line, message bytes with LF ends, >From unquoted)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    msgs = []
    cur = None
    for line in lines:
        if line.startswith(b"From "):
            if cur is not None:
                msgs.append(cur)
            cur = [line, []]
        else:
            if cur is None:
                cur = [b"", []]  # garbage before the first separator: keep it so checks see it
            cur[1].append(re.sub(rb"^>(>*From )", rb"\1", line))
    if cur is not None:
        msgs.append(cur)
    out = []
    for frm, body in msgs:
        if body and body[-1] == b"":
            body = body[:-1]
        out.append((frm, b"\n".join(body) + b"\n"))
    return out


def maildir_files(srv, addr, subs=("new", "cur")):
    user, dom = addr.lower().split("@")
    out = []
    for sub in subs:
        d = os.path.join(srv.spool, dom, user, sub)
        if os.path.isdir(d):
            out += [os.path.join(d, n) for n in sorted(os.listdir(d))]
    return out


def mbox_path(srv, addr):
    user, dom = addr.lower().split("@")
    return os.path.join(srv.spool, dom, user + ".mbox")


def stored(srv, addr):
    """Messages on disk for addr (LF line ends as stored, mbox unquoted)."""
    if srv.storage == "maildir":
        res = []
        for p in maildir_files(srv, addr):
            with open(p, "rb") as f:
                res.append(f.read())
        return res
    p = mbox_path(srv, addr)
    if not os.path.exists(p):
        return []
    with open(p, "rb") as f:
        return [m for _, m in parse_mbox(f.read())]


def stored_tokens(srv, addr):
    return [token_of(m) for m in stored(srv, addr)]


def tree(root, skip=()):
    out = set()
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.relpath(os.path.join(dp, n), root)
            if p not in skip:
                out.add(p)
    return out


# ---------------------------------------------------------------------------------------------
# the server under test

DOMAINS = """\
[domain example.test]
alice = Passw0rd1
bob = Passw0rd2
carol = Passw0rd3

[alias example.test]
postmaster = alice
team = alice, bob
dup = alice, bob, alice

[domain other.test]
carol = Passw0rd4
dave = Passw0rd5

[alias other.test]
postmaster = dave
* = dave
"""

PASSWORDS = {"alice@example.test": "Passw0rd1", "bob@example.test": "Passw0rd2", "carol@example.test": "Passw0rd3",
             "carol@other.test": "Passw0rd4", "dave@other.test": "Passw0rd5"}


class Server:
    def __init__(self, ctx, storage="maildir", server=None, domains=DOMAINS, submission=True, sections=None):
        self.ctx = ctx
        self.dir = tempfile.mkdtemp(prefix="srv", dir=ctx.dir)
        self.ini = os.path.join(self.dir, "mailsrv.ini")
        self.spool = os.path.join(self.dir, "spool")
        self.log = os.path.join(self.dir, "server.log")
        self.storage = storage
        p = free_ports(5)
        self.smtp_port, self.sub_port, self.pop3_port = p[:3]
        keys = {"hostname": "test.local", "smtp": "127.0.0.1:%d" % p[0],
                "submission": "127.0.0.1:%d" % p[1] if submission else None,
                "pop3": "127.0.0.1:%d" % p[2], "storage": storage, "spool": "spool",
                "max_message_size": "100K", "max_recipients": "5", "max_clients": "10", "timeout": "30",
                "plaintext_auth": "local", "capture": "no"}
        keys.update(server or {})
        if keys.get("submission") is None:
            self.sub_port = None
        for key, port in (("smtps", p[3]), ("pop3s", p[4])):  # implicit TLS: "auto" takes a free port
            if keys.get(key) == "auto":
                keys[key] = "127.0.0.1:%d" % port
        self.smtps_port = int(keys["smtps"].rsplit(":", 1)[1]) if keys.get("smtps") else None
        self.pop3s_port = int(keys["pop3s"].rsplit(":", 1)[1]) if keys.get("pop3s") else None
        self.keys = keys
        self.domains = domains
        self.sections = sections or {}  # extra sections written after [server], e.g. {"relay": {"dns": ...}}
        self.queue = os.path.join(self.dir, "queue")
        self.proc = None
        self.env = None  # the server's environment (None: ours)
        self.wrap = []  # a command put before RUN and the binary (the strace tests)
        self.bin = BIN  # the binary (a test of a build option builds its own)
        self.write_ini()

    def ini_text(self):
        lines = ["; mailsrv end-to-end test configuration", "[server]"]
        lines += ["%s = %s" % (k, v) for k, v in self.keys.items() if v is not None]
        for name, keys in self.sections.items():
            lines += ["", "[%s]" % name] + ["%s = %s" % (k, v) for k, v in keys.items() if v is not None]
        return "\n".join(lines) + "\n\n" + self.domains

    def write_ini(self, text=None):
        text = self.ini_text() if text is None else text
        if AS_ROOT and "[server]" in text and "allow_root" not in text:
            text += "\n[server]  ; the tests run as root in CI\nallow_root = yes\n"  # at the end: line numbers stay
        with open(self.ini, "w") as f:
            f.write(text)

    def listeners(self):
        out = []
        for key, kind in (("smtp", "smtp"), ("submission", "smtp"), ("pop3", "pop3"), ("smtps", "smtps"), ("pop3s", "pop3s")):
            v = self.keys.get(key)
            if not v:
                continue
            for item in v.split(","):
                host, _, port = item.strip().rpartition(":")
                out.append((host.strip("[]") or "127.0.0.1", int(port), kind))
        return out

    def start(self, args=(), wait=True, cwd=None):
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(self.wrap + RUN + [self.bin, "-c", self.ini] + list(args), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf, cwd=cwd or self.dir, env=self.env)
        finally:
            logf.close()
        if wait:
            self.wait_ready()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=None):
        # Windows: a restart after kill -9 waits for the port (TIME_WAIT under SO_EXCLUSIVEADDRUSE)
        timeout = timeout or (80 if WINDOWS else 10)
        end = deadline(timeout)
        for host, port, kind in self.listeners():
            while True:
                if self.proc.poll() is not None:
                    last = self.log_text().strip().splitlines()[-1:] or ["(nothing logged)"]
                    raise TestFailure("server exited with status %s before listening on %s:%d: %s"
                                      % (self.proc.returncode, host, port, short(last[0], 300)))
                if probe(host, port, kind):
                    break
                if time.monotonic() > end:
                    raise TestFailure("server not greeting on %s:%d within %.0fs" % (host, port, secs(timeout)))
                time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM, grace=5):
        """Signal our own process (by PID); SIGKILL after the grace period. Returns (returncode, was_killed)."""
        if WINDOWS and sig == signal.SIGTERM:
            sig = STOP_SIGNAL
        if self.proc is None:
            return None, False
        if self.proc.poll() is not None:
            return self.proc.returncode, False
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout=secs(grace)), False
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=secs(10))
            return self.proc.returncode, True

    def kill9(self):
        self.proc.kill()
        self.proc.wait(timeout=secs(10))
        if WINDOWS:
            self.move_ports()

    def move_ports(self):
        """Under wine, wineserver may hold a SIGKILLed process's listening sockets for minutes
        (seen in CI: 240 s); real Windows frees them at exit. A restart there takes fresh ports."""
        p = free_ports(3)
        for key, port in (("smtp", p[0]), ("submission", p[1]), ("pop3", p[2])):
            if self.keys.get(key):
                self.keys[key] = "127.0.0.1:%d" % port
        self.smtp_port, self.pop3_port = p[0], p[2]
        self.sub_port = p[1] if self.keys.get("submission") else None
        self.write_ini()

    def restart(self):
        rc, killed = self.stop()
        check(not killed and rc == 0, "SIGTERM: server exit status %s%s" % (rc, " (had to SIGKILL)" if killed else ""))
        return self.start()

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # clients -----------------------------------------------------------------------------
    def smtp(self, port=None, host="127.0.0.1", ehlo="client.test"):
        c = self.ctx.track(Smtp(port or self.smtp_port, host))
        code, text = c.reply()
        check(code == 220, "SMTP greeting: %s" % short(text))
        if ehlo:
            c.expect("EHLO " + ehlo, 250)
        return c

    def pop(self, user=None, pw=None, port=None, host="127.0.0.1"):
        p = self.ctx.track(Pop(port or self.pop3_port, host))
        p.greet()
        if user is not None:
            p.login(user, pw if pw is not None else PASSWORDS[user])
        return p

    def send(self, rcpts, msg, sender=SENDER, port=None):
        """Deliver with smtplib; returns the refused dict."""
        with smtplib.SMTP("127.0.0.1", port or self.smtp_port, local_hostname="client.test",
                          timeout=secs(10)) as s:
            return s.sendmail(sender, rcpts, msg)

    def deliver(self, to="alice@example.test", token=None, **kw):
        t = token or tok()
        msg = make_msg(t, to=to, **kw)
        refused = self.send([to], msg)
        check(refused == {}, "recipient refused: %s" % refused)
        return t, msg

    def fetch(self, user, pw=None):
        """Whole mailbox via raw POP3: list of dicts n, size, uid, data; also checks STAT/LIST agree."""
        p = self.pop(user, pw)
        count, total = p.stat()
        sizes = p.list()
        uids = p.uidl()
        check(count == len(sizes) and total == sum(sizes.values()),
              "STAT %d %d does not match LIST %s" % (count, total, sizes))
        out = []
        for n in sorted(sizes):
            data = p.retr(n)
            soft(len(data) == sizes[n], "LIST %d says %d octets but RETR sent %d" % (n, sizes[n], len(data)))
            out.append({"n": n, "size": sizes[n], "uid": uids.get(n), "data": data, "token": token_of(data)})
        p.quit()
        return out

    def rcpt_code(self, addr):
        c = self.smtp()
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        code, text = c.cmd("RCPT TO:<%s>" % addr)
        c.expect("QUIT", 221)
        c.close()
        return code, text


def probe(host, port, kind):
    try:
        with socket.create_connection((host, port), timeout=0.5) as raw:
            raw.settimeout(secs(2))
            s = raw
            if kind in ("smtps", "pop3s"):  # implicit TLS: the greeting comes after the handshake
                s = tls_client_ctx().wrap_socket(raw)
                kind = kind[:-1]
            with s:
                f = s.makefile("rb")
                line = f.readline(1024)
                if not line.startswith(b"220" if kind == "smtp" else b"+OK"):
                    return False
                s.sendall(b"QUIT\r\n")
                while f.read(4096):  # until the server closes: our slot is then free again
                    pass
                return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# test registry and runner

TESTS = []
SKIPPED = []  # tests that do not apply to this platform (or build)
SKIP_WHY = {}  # test name -> reason, when it is not "not on this platform"
SKIP_KIND = {}  # test name -> why the skip is expected (one of EXPECTED_SKIPS), or None
# Skips that are expected where they happen: timing measured only natively; root-only tests run as
# a user; Unix-only tests on Windows; TLS tests in the build without TLS; tests that need a native
# server process under an emulator, wine or valgrind. Any other skip (a missing
# peer program, no IPv6, a tmpfs that cannot be mounted) means the run proved less than it says:
# under CI (CI=true) it counts as a failure.
EXPECTED_SKIPS = ("timing", "root", "windows", "notls", "native")  # windows: also a Windows-only test elsewhere
TLS_TESTS = set()  # tests skipped when the binary has no TLS (`mailsrv -V` says "TLS: no")
BOTH = ("maildir", "mbox")


class Skip(Exception):
    """Raised by a test that finds it cannot run here. expected: one of EXPECTED_SKIPS when the
    skip is normal on this platform or build; None (the default) when it is not."""

    def __init__(self, why, expected=None):
        super().__init__(why)
        self.expected = expected


def test(modes=None, limit=30, unix_only=False, tls=False):
    def deco(fn):
        if unix_only and WINDOWS:
            SKIPPED.append(fn.__name__)
            SKIP_KIND[fn.__name__] = "windows"
            return fn
        names = ["%s[%s]" % (fn.__name__, m) for m in modes] if modes else [fn.__name__]
        for name, m in zip(names, modes or [None]):
            TESTS.append((name, fn, {"storage": m} if m else {}, limit))
            if tls:
                TLS_TESTS.add(name)
        return fn
    return deco


class Ctx:
    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="mailsrv-e2e-")
        self.servers = []
        self.conns = []
        self.soft = []
        self.aborted = False
        self.san_texts = []  # (where, text): sanitizer output seen outside SANLOG

    def server(self, **kw):
        s = Server(self, **kw)
        self.servers.append(s)
        return s

    def track(self, c):
        self.conns.append(c)
        return c

    def close_conns(self):
        for c in self.conns:
            c.close()

    def stop_servers(self, aborted=False):
        self.close_conns()
        for s in self.servers:
            if aborted:
                if s.alive():
                    s.kill9()
            else:
                s.stop()

    def cleanup(self, failed, aborted=False):
        self.stop_servers(aborted)
        if not (failed and KEEP):
            shutil.rmtree(self.dir, ignore_errors=True)


def is_report(path):
    """A sanitizer report, or a valgrind log with errors (valgrind logs every process; one
    SIGKILLed has no ERROR SUMMARY, only the errors it met before). Same test as run_tests.sh's."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    if not os.path.basename(path).startswith("vg."):
        return text
    if re.search(r"ERROR SUMMARY: [1-9]", text):
        return text
    if "ERROR SUMMARY:" not in text and re.search(r"^==\d+== (Invalid |Conditional jump|Use of uninitialised|Syscall param|"
                                                  r"Mismatched|Source and destination|Argument )", text, re.M):
        return text
    return None


def san_reports(ctx):
    """Once the test's servers are stopped: its sanitizer/valgrind reports, [(where, text)]. Names
    the new files in SANLOG after the test, so that run_tests.sh knows they were counted."""
    if not SANLOG:
        return []
    found = []
    texts = list(ctx.san_texts)
    for s in ctx.servers:
        text = s.log_text()
        m = SAN_RE.search(text)
        if m:
            start = text.rfind("\n", 0, m.start()) + 1
            texts.append(("server log %s" % os.path.basename(s.dir), text[start:]))
    for i, (where_, text) in enumerate(texts):  # into SANLOG too, for run_tests.sh's list
        path = os.path.join(SANLOG, "san.output%d.%s" % (i + 1, ctx.name))
        with open(path, "w") as f:
            f.write("(from %s)\n%s" % (where_, text))
        found.append((where_, text))
    for path in sorted(glob.glob(os.path.join(SANLOG, "san.*")) + glob.glob(os.path.join(SANLOG, "vg.*"))):
        if re.fullmatch(r"(san|vg)\.\d+", os.path.basename(path)):
            text = is_report(path)
            new = path + "." + ctx.name
            os.rename(path, new)
            if text is not None:
                found.append((new, text))
    return found


def where(e):
    tb = traceback.extract_tb(e.__traceback__)
    frames = [f for f in tb if os.path.abspath(f.filename) == os.path.abspath(__file__)]
    return "e2e.py:%d" % frames[-1].lineno if frames else "?"


def run_test(name, fn, kw, limit):
    random.seed("%s:%s" % (SEED, name))  # each test's random choices follow the run's seed, whatever ran before
    ctx = Ctx(name)
    res = {}
    t_start = time.monotonic()

    def body():
        CURRENT.ctx = ctx
        err = None
        try:
            fn(ctx, **kw)
        except Skip as e:
            res["skip"] = str(e)
            res["skip_kind"] = e.expected
            return
        except TestFailure as e:
            err = "%s (%s)" % (e, where(e))
        except Exception as e:  # noqa
            err = "%s: %s (%s)" % (type(e).__name__, e, where(e))
        if ctx.aborted:
            return
        errs = ctx.soft[:3] + (["and %d more soft failures" % (len(ctx.soft) - 3)] if len(ctx.soft) > 3 else [])
        if err:
            errs.append(err)
        if errs:
            res["err"] = "; ".join(errs)
        else:
            res["ok"] = True

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(secs(limit))
    aborted = t.is_alive()
    if aborted:
        ctx.aborted = True
        res["err"] = "timed out after %.0fs" % secs(limit) + ("; before that: " + "; ".join(ctx.soft[:3]) if ctx.soft else "")
        ctx.close_conns()
        for s in ctx.servers:
            if s.alive():
                s.kill9()
        t.join(secs(5))
    ok = "ok" in res and not aborted
    if SANLOG:  # stop the servers first: leaks are reported at exit
        ctx.stop_servers(aborted)
        reports = san_reports(ctx)
        if reports:
            ok = False
            res.pop("skip", None)
            what = "%d sanitizer/valgrind report(s): %s" % (len(reports), ", ".join(w for w, _ in reports))
            res["err"] = what + ("; " + res["err"] if res.get("err") else "")
    if os.environ.get("MAILSRV_TEST_TIMES"):
        sys.stderr.write("  [%.2fs %s]\n" % (time.monotonic() - t_start, name))
    if "skip" in res and not aborted:
        print("skip %s: %s" % (name, res["skip"]), flush=True)
        SKIP_WHY[name] = res["skip"]
        SKIP_KIND[name] = res.get("skip_kind")
        ctx.cleanup(False)
        return None
    if ok:
        print("ok %s" % name, flush=True)
    else:
        print("FAIL %s: %s" % (name, res.get("err", "?").replace("\n", " | ")), flush=True)
        for where_, text in (reports if SANLOG else []):
            if where_.startswith("server log "):
                continue  # in the tail below
            print("    --- %s ---" % where_)
            lines = [l for l in text.strip("\n").splitlines()  # without valgrind's banner
                     if not re.match(r"==\d+== (Memcheck,|Copyright|Using Valgrind|Command:|Parent PID:|For lists of|\s*$)", l)]
            for l in lines[:60]:
                print("    | " + l[:300])
        for s in ctx.servers:
            tail = s.log_text().splitlines()[-25:]
            if tail:
                print("    --- server log tail (%s) ---" % os.path.basename(s.dir))
                for l in tail:
                    print("    | " + l[:300])
        if KEEP:
            print("    (kept %s)" % ctx.dir)
    ctx.cleanup(not ok, aborted)
    return ok


# =============================================================================================
# command line


@test()
def version(ctx):
    r = run_cli(["-V"])
    check(r.returncode == 0, "-V exit status %d, stderr %s" % (r.returncode, short(r.stderr)))
    check(re.match(r"^mailsrv \d+\.\d+\.\d+", r.stdout.strip()), "-V printed %s" % short(r.stdout))


@test()
def sigterm_exit0(ctx):
    srv = ctx.server().start()
    srv.deliver()
    rc, killed = srv.stop(signal.SIGTERM)
    check(not killed and rc == 0, "SIGTERM: exit status %s%s" % (rc, " (needed SIGKILL)" if killed else ""))
    check(len(stored(srv, "alice@example.test")) == 1, "delivered message not on disk after SIGTERM")
    srv.start()
    rc, killed = srv.stop(signal.SIGINT)
    check(not killed and rc == 0, "SIGINT: exit status %s%s" % (rc, " (needed SIGKILL)" if killed else ""))


@test()
def sigterm_with_idle_sessions(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    p = srv.pop("alice@example.test")
    rc, killed = srv.stop(signal.SIGTERM, grace=10)
    check(not killed and rc == 0, "SIGTERM with idle SMTP and POP3 sessions open: exit status %s%s"
          % (rc, " (still running after 10s, needed SIGKILL)" if killed else ""))
    c.close()
    p.close()


@test()
def start_refuses_bad_config(ctx):
    srv = ctx.server()
    text = srv.ini_text().replace("[server]\n", "[server]\nno_such_key = 1\n", 1)
    srv.write_ini(text)
    srv.start(wait=False)
    try:
        rc = srv.proc.wait(timeout=secs(10))
    except subprocess.TimeoutExpired:
        raise TestFailure("server with an unknown key in its INI is still running after 10s")
    check(rc != 0, "server with a bad INI exited with status 0")
    check("%s:3:" % srv.ini in srv.log_text(), "log does not name %s:3: %s" % (srv.ini, short(srv.log_text())))


@test()
def spool_relative_to_ini(ctx):
    srv = ctx.server()
    other = os.path.join(ctx.dir, "elsewhere")
    os.mkdir(other)
    srv.start(cwd=other)
    srv.deliver()
    check(len(stored(srv, "alice@example.test")) == 1, "message not stored under the INI's folder/spool")
    check(not os.path.exists(os.path.join(other, "spool")), "spool created relative to the working directory")


def log_match(srv, pattern, what):
    """The one log line that pattern matches whole (after the UTC time stamp), as a match object."""
    got = [m for m in (re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ " + pattern, l)
                       for l in srv.log_text().splitlines()) if m]
    check(len(got) == 1, "%d log lines match %s for %s; log: %s" % (len(got), pattern, what, short(srv.log_text(), 3000)))
    return got[0]


@test(limit=60)
def log_lines(ctx):
    """The main log lines, field by field: session id, client address, message id, from, to, size,
    the remote reply; each as the one line matching an exact regex."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_replies={"later@remote.test": "451 4.2.0 try later", "gone@remote.test": "550 5.1.1 no such user"})
    srv = net.server(relay={"retry": "1h"}).start()  # one attempt: one deferred line
    # delivery: connect and delivered lines of one session, the id of its 250, the stored size
    c = srv.smtp()
    t = tok()
    code, text = c.send_mail(SENDER, ["alice@example.test"], make_msg(t))
    check(code == 250, "delivery: %s" % text)
    mid = text.rsplit(" ", 1)[1]
    c.expect("QUIT", 221)
    size = len(srv.fetch("alice@example.test")[0]["data"].replace(b"\r\n", b"\n"))  # stored with LF line ends
    sid = log_match(srv, r"\[s(\d+)\] delivered %s from=<%s> to=<alice@example\.test> size=%d" % (re.escape(mid),
                    re.escape(SENDER), size), "the delivery").group(1)
    log_match(srv, r"\[s%s\] connect smtp from 127\.0\.0\.1" % sid, "the delivery's session")
    # an auth failure names the client and the user
    c = srv.smtp()
    c.expect("AUTH PLAIN " + plain("bob@example.test", "wrong"), 535)
    c.expect("QUIT", 221)
    log_match(srv, r"\[s\d+\] auth failed from 127\.0\.0\.1 user=<bob@example\.test> failures=1 delay=\d+ms", "the failure")
    # a refused message names its sender and the reason
    c = srv.smtp()
    code, text = c.send_mail("big@client.test", ["alice@example.test"], make_msg(tok(), body=("y" * 998 + "\r\n") * 110))
    check(code == 552, "oversize: %s" % text)
    c.expect("QUIT", 221)
    log_match(srv, r"\[s\d+\] message refused from=<big@client\.test> \(too big\)", "the refusal")
    # relay: one recipient accepted, one deferred (451), one bounced (550) by the remote server
    c = srv.smtp()
    code, text = c.send_mail("alice@example.test", ["ok@remote.test", "later@remote.test", "gone@remote.test"],
                             make_msg(tok(), to="ok@remote.test", sender="alice@example.test"))
    check(code == 250, "relay: %s" % text)
    qid = text.rsplit(" ", 1)[1]
    c.expect("QUIT", 221)
    for r in ("ok", "later", "gone"):
        log_match(srv, r"\[s\d+\] queued %s from=<alice@example\.test> to=<%s@remote\.test> size=\d+" % (re.escape(qid), r),
                  "queued for " + r)
    wait_for(lambda: "bounced " in srv.log_text() and "deferred " in srv.log_text(), 15, "the relay's results")
    hop = r"mx\.remote\.test\[127\.0\.0\.2\]:%d" % net.port
    log_match(srv, r"\[o\d+\] relayed %s to=<ok@remote\.test> via %s: 250 .* tls=no" % (re.escape(qid), hop), "relayed")
    log_match(srv, r"\[o\d+\] deferred %s to=<later@remote\.test>: .*451 4\.2\.0 try later.*" % re.escape(qid), "deferred")
    log_match(srv, r"bounced %s to=<gone@remote\.test>: .*550 5\.1\.1 no such user.*" % re.escape(qid), "bounced")


@test()
def verbose_trace(ctx):
    srv = ctx.server().start(args=["-v"])
    c = srv.smtp(ehlo="trace-probe.example")
    c.expect("NOOP", 250)
    wait_for(lambda: "EHLO trace-probe.example" in srv.log_text(), 3, "-v trace of the client's EHLO line in the log")


@test(unix_only=True, limit=60)
def quick_start_without_root_prints_apt_line(ctx):
    """The README's quick start without root or sudo: when a package is missing, `make run` and
    `make test` stop before building anything and print the exact `sudo apt-get install ...` line
    (here libbearssl-dev, which a fake dpkg reports missing; with its `make TLS=0` way out). As root
    the commands run as nobody; sudo is a fake that refuses. `make` alone and `make mailsrv` print
    the same line and never call apt-get, even with password-less sudo (a fake that runs its
    command), with which `make run` does call it (a fake apt-get that notes its arguments, and
    fails, so nothing is built)."""
    dpkg, make = need_program("dpkg", "dpkg"), need_program("make", "make")
    repo = os.path.join(ctx.dir, "repo")
    os.makedirs(os.path.join(repo, "test"))
    for f in ("Makefile", "mailsrv.c", "mailsrv.h", "mailsrv.ini", "test/deps.sh"):
        shutil.copy2(os.path.join(REPO, f), os.path.join(repo, f))
    apt_calls = os.path.join(ctx.dir, "apt-get-calls")
    fakes = {}
    for dirname, sudo in (("fakebin", "exit 1\n"), ("fakebin-sudo", '[ "$1" = -n ] && shift\nexec "$@"\n')):
        fakes[dirname] = os.path.join(ctx.dir, dirname)
        os.makedirs(fakes[dirname])
        for name, text in (("dpkg", 'case "$2" in libbearssl-dev) exit 1;; esac\nexec %s "$@"\n' % dpkg),
                           ("sudo", sudo),
                           ("apt-get", 'echo "$*" >> %s\nexit 1\n' % apt_calls)):
            with open(os.path.join(fakes[dirname], name), "w") as f:
                f.write("#!/bin/sh\n" + text)
            os.chmod(os.path.join(fakes[dirname], name), 0o755)
    as_user = []
    if os.geteuid() == 0:
        as_user = [need_program("setpriv", "util-linux"), "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
        for d, _, files in os.walk(ctx.dir):
            os.chmod(d, 0o777)  # nobody builds there
            for f in files:
                os.chmod(os.path.join(d, f), 0o755)

    def apt_get_calls():
        return read(apt_calls).decode() if os.path.exists(apt_calls) else ""

    def make_fails(fakebin, target):
        env = dict(os.environ, PATH=fakes[fakebin] + ":/usr/bin:/bin", HOME=ctx.dir)
        r = subprocess.run(as_user + [make, "-s"] + ([target] if target else []), cwd=repo, env=env,
                           capture_output=True, timeout=secs(60))
        err = r.stderr.decode(errors="replace")
        what = "make %s (%s)" % (target, fakebin) if target else "make (%s)" % fakebin
        check(apt_get_calls() == "", "%s called apt-get: %s" % (what, short(apt_get_calls())))
        check(r.returncode != 0, "%s without libbearssl-dev succeeded: %s" % (what, short(err, 300)))
        check("install them with:  sudo apt-get install libbearssl-dev\n" in err and "make TLS=0" in err,
              "%s printed no exact apt-get line: %s" % (what, short(err, 400)))
        check(not os.path.exists(os.path.join(repo, "mailsrv")), "%s built mailsrv anyway" % what)

    for target in ("run", "test", "", "mailsrv"):
        make_fails("fakebin", target)
    for target in ("", "mailsrv"):
        make_fails("fakebin-sudo", target)
    env = dict(os.environ, PATH=fakes["fakebin-sudo"] + ":/usr/bin:/bin", HOME=ctx.dir)
    r = subprocess.run(as_user + [make, "-s", "run"], cwd=repo, env=env, capture_output=True, timeout=secs(60))
    check(r.returncode != 0 and "install -y -qq --no-install-recommends libbearssl-dev" in apt_get_calls(),
          "make run with password-less sudo did not call apt-get install libbearssl-dev: %s %s"
          % (short(apt_get_calls()), short(r.stderr, 300)))


@test()
def shipped_ini_works(ctx):
    """The repository's mailsrv.ini passes `check` and, on free ports, serves its demo mailboxes."""
    shipped = os.path.join(REPO, "mailsrv.ini")
    check(os.path.exists(shipped), "no mailsrv.ini in the repository root")
    r = run_cli(["-c", shipped, "check"])
    check(r.returncode == 0, "check of the shipped mailsrv.ini: exit %d %s" % (r.returncode, short(r.stderr, 400)))
    text = read(shipped).decode()
    srv = ctx.server(submission=False)
    ports = iter(free_ports(8))
    mapping = {}

    def newport(m):
        old = m.group(0)
        if old not in mapping:
            mapping[old] = "%s:%d" % (m.group(1), next(ports))
        return mapping[old]
    # only listener lines: other values (relay_networks = ..., ::1) contain colons too
    text = re.sub(r"(?m)^\s*(?:smtp|submission|pop3)\s*=.*$", lambda m: re.sub(
        r"(127\.0\.0\.1|\[::1\]|localhost|0\.0\.0\.0|\[::\]|):(\d+)\b", newport, m.group(0)), text)
    srv.write_ini(text)
    srv.keys = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(smtp|submission|pop3)\s*=\s*([^;#]+)", line)
        if m:
            srv.keys[m.group(1)] = m.group(2).strip()
    check(srv.keys.get("smtp") and srv.keys.get("pop3"), "no smtp/pop3 listeners found in the shipped INI")
    srv.smtp_port = int(srv.keys["smtp"].split(",")[0].rsplit(":", 1)[1])
    srv.pop3_port = int(srv.keys["pop3"].split(",")[0].rsplit(":", 1)[1])
    srv.start()
    dom = re.search(r"(?m)^\[domain ([^\]]+)\]\s*\n((?:[^\[].*\n)*)", text)
    check(dom, "no [domain] section in the shipped INI")
    box = re.search(r"(?m)^\s*([a-z0-9._-]+)\s*=\s*([^\s;$][^\s;]*)", dom.group(2))
    check(box, "no plain-text demo mailbox in the shipped INI")
    addr = "%s@%s" % (box.group(1), dom.group(1).strip())
    t, msg = srv.deliver(addr)
    got = srv.fetch(addr, box.group(2))
    check([g["token"] for g in got] == [t], "demo mailbox %s holds %s" % (addr, [g["token"] for g in got]))
    check_message(got[0]["data"], msg)


# =============================================================================================
# config: check, passwd, add, del, users


def check_cli(srv):
    return run_cli(["-c", srv.ini, "check"])


def expect_check_error(srv, lines, what, contains=None):
    r = check_cli(srv)
    check(r.returncode == 1, "check with %s: exit status %d (stdout %s, stderr %s)"
          % (what, r.returncode, short(r.stdout), short(r.stderr)))
    errs = r.stderr.splitlines()
    pats = ["%s:%d:" % (srv.ini, n) for n in lines]
    hit = [l for l in errs if any(l.startswith(p) for p in pats)]
    check(hit, "check with %s: no stderr line starting with %s; stderr: %s" % (what, " or ".join(pats), short(r.stderr, 400)))
    if contains:
        check(contains.lower() in r.stderr.lower(), "check with %s: stderr does not mention %r: %s"
              % (what, contains, short(r.stderr, 400)))
    return r


@test()
def config_check_ok(ctx):
    srv = ctx.server()
    r = check_cli(srv)
    check(r.returncode == 0, "check on a good INI: exit %d, stderr %s" % (r.returncode, short(r.stderr, 400)))
    check(len(r.stdout.strip().splitlines()) == 1, "check summary is not one line: %s" % short(r.stdout))
    for key, vals in (("max_message_size", ["10M", "1024K", "2048"]), ("timeout", ["30s", "5m", "2h", "1d", "45"])):
        for v in vals:
            srv.keys[key] = v
            srv.write_ini()
            r = check_cli(srv)
            check(r.returncode == 0, "check with %s = %s: exit %d, stderr %s" % (key, v, r.returncode, short(r.stderr)))


@test()
def config_check_unknown_key(ctx):
    srv = ctx.server()
    lines = srv.ini_text().split("\n")
    lines.insert(5, "bogus_key = 1")  # line 6
    srv.write_ini("\n".join(lines))
    expect_check_error(srv, [6], "an unknown key")


@test()
def config_check_unknown_section(ctx):
    srv = ctx.server()
    text = srv.ini_text()
    n = text.count("\n") + 1
    srv.write_ini(text + "[bogus]\nfoo = bar\n")
    expect_check_error(srv, [n, n + 1], "an unknown section")


@test()
def config_check_bad_size(ctx):
    srv = ctx.server()
    lines = srv.ini_text().split("\n")
    i = [k for k, l in enumerate(lines) if l.startswith("max_message_size")][0]
    lines[i] = "max_message_size = 10Q"
    srv.write_ini("\n".join(lines))
    expect_check_error(srv, [i + 1], "max_message_size = 10Q")


@test()
def config_check_bad_time(ctx):
    srv = ctx.server()
    lines = srv.ini_text().split("\n")
    i = [k for k, l in enumerate(lines) if l.startswith("timeout")][0]
    lines[i] = "timeout = 5x"
    srv.write_ini("\n".join(lines))
    expect_check_error(srv, [i + 1], "timeout = 5x")


@test()
def config_check_missing_postmaster(ctx):
    srv = ctx.server(domains=DOMAINS + "\n[domain lonely.test]\nsolo = Passw0rd1\n")
    r = expect_check_error(srv, range(1, 200), "a domain without postmaster", contains="postmaster")
    check("lonely.test" in r.stderr, "check does not name the domain lonely.test: %s" % short(r.stderr))


@test()
def config_check_capture_warning(ctx):
    srv = ctx.server(server={"capture": "yes", "smtp": "0.0.0.0:%d" % free_ports(1)[0]})
    r = check_cli(srv)
    check("warn" in (r.stdout + r.stderr).lower(), "check of capture mode on 0.0.0.0 gives no warning: stdout %s stderr %s"
          % (short(r.stdout), short(r.stderr)))


HASH_RE = r"^\$pbkdf2-sha256\$\d+\$[^$\s]+\$[^$\s]+$"


@test()
def passwd_hash_login(ctx):
    pw = "S3cret-Passw0rd"
    r = run_cli(["passwd"], input=pw + "\n")
    check(r.returncode == 0, "passwd: exit %d, stderr %s" % (r.returncode, short(r.stderr)))
    out = [l for l in r.stdout.splitlines() if l.strip()]
    check(out and re.match(HASH_RE, out[-1].strip()), "passwd printed %s" % short(r.stdout))
    h = out[-1].strip()
    r2 = run_cli(["passwd"], input=pw + "\n")
    check(r2.stdout.strip().splitlines()[-1].strip() != h, "two passwd runs gave the same hash (no salt?)")
    srv = ctx.server(domains=DOMAINS.replace("bob = Passw0rd2", "bob = " + h)).start()
    p = srv.pop("bob@example.test", pw)
    p.quit()
    c = srv.smtp()
    c.expect("AUTH PLAIN " + plain("bob@example.test", pw), 235, "2.7.0")
    p = srv.pop()
    p.ok("USER bob@example.test")
    p.err("PASS Passw0rd2")


def read(path):
    with open(path, "rb") as f:
        return f.read()


FANCY_INI = """\
; mailsrv test configuration with comments
# a hash comment line
[server]
hostname = test.local   ; trailing comment
smtp = 127.0.0.1:{p1}
pop3 = 127.0.0.1:{p2}
storage = {storage}
spool = spool
max_message_size = 100K
max_recipients=5
    ; an indented comment
max_clients = 10
timeout\t=\t30
plaintext_auth = local
capture = no

; the demo domain
[domain example.test]
alice = Passw0rd1   ; alice's password
bob = Passw0rd2

; group addresses
[alias example.test]
postmaster = alice
team = alice, bob
"""


def fancy_server(ctx, storage="maildir"):
    srv = ctx.server(storage=storage, submission=False)
    srv.write_ini(FANCY_INI.format(p1=srv.smtp_port, p2=srv.pop3_port, storage=storage))
    return srv


def add_cli(srv, addr, pw):
    return run_cli(["-c", srv.ini, "add", addr], input=pw + "\n")


def del_cli(srv, addr):
    return run_cli(["-c", srv.ini, "del", addr])


def section_of(lines, i):
    for j in range(i, -1, -1):
        if lines[j].strip().startswith(b"["):
            return lines[j].strip()
    return None


def find_added(orig, new, user):
    """new must be orig plus exactly one `user = ...` line; returns (index, lines)."""
    nl = new.split(b"\n")
    for i, l in enumerate(nl):
        if re.match(rb"^%s\s*=" % re.escape(user.encode()), l.strip()):
            if b"\n".join(nl[:i] + nl[i + 1:]) == orig:
                return i, nl
    raise TestFailure("INI after add is not the original plus one '%s = ...' line:\n%s" % (user, short(new, 1200)))


@test()
def add_password_policy(ctx):
    srv = fancy_server(ctx)
    orig = read(srv.ini)
    for pw in ["Sh0rtPw", "alllowercase1", "ALLUPPERCASE1", "NoDigitsHere", ""]:
        r = add_cli(srv, "eve@example.test", pw)
        check(r.returncode == 1, "add with weak password %r: exit %d" % (pw, r.returncode))
        check((r.stdout + r.stderr).strip(), "add with weak password %r gave no reason" % pw)
        check(read(srv.ini) == orig, "add with weak password %r changed the INI" % pw)


@test()
def add_del_preserve_file(ctx):
    srv = fancy_server(ctx)
    orig = read(srv.ini)
    r = add_cli(srv, "eve@example.test", "Str0ngPassw0rd")
    check(r.returncode == 0, "add eve@example.test: exit %d, %s" % (r.returncode, short(r.stderr)))
    new = read(srv.ini)
    i, nl = find_added(orig, new, "eve")
    check(section_of(nl, i) == b"[domain example.test]", "added line is in section %s" % short(section_of(nl, i)))
    check(re.match(rb"^eve\s*=\s*\$pbkdf2-sha256\$", nl[i].strip()), "added line is not a hash: %s" % short(nl[i]))
    r = check_cli(srv)
    check(r.returncode == 0, "check after add: exit %d %s" % (r.returncode, short(r.stderr)))
    r = add_cli(srv, "eve@example.test", "An0therPassw0rd")
    check(r.returncode == 1, "adding an existing mailbox: exit %d" % r.returncode)
    check(read(srv.ini) == new, "adding an existing mailbox changed the INI")
    r = del_cli(srv, "eve@example.test")
    check(r.returncode == 0, "del eve@example.test: exit %d %s" % (r.returncode, short(r.stderr)))
    check(read(srv.ini) == orig, "add then del did not give back the original file byte for byte:\n%s" % short(read(srv.ini), 1200))
    r = del_cli(srv, "eve@example.test")
    check(r.returncode == 1, "del of a missing mailbox: exit %d" % r.returncode)
    check(read(srv.ini) == orig, "del of a missing mailbox changed the INI")
    # a new domain gets a new section at the end
    r = add_cli(srv, "frank@fresh.test", "Str0ngPassw0rd")
    check(r.returncode == 0, "add frank@fresh.test (new domain): exit %d %s" % (r.returncode, short(r.stderr)))
    new = read(srv.ini)
    check(new.startswith(orig), "add to a new domain changed the existing text:\n%s" % short(new, 1200))
    rest = new[len(orig):].split(b"\n")
    sec = [k for k, l in enumerate(rest) if l.strip() == b"[domain fresh.test]"]
    check(sec, "no [domain fresh.test] section appended: %s" % short(new[len(orig):]))
    check(any(re.match(rb"^frank\s*=\s*\$pbkdf2-sha256\$", l.strip()) for l in rest[sec[0]:]),
          "no frank = hash line in the new section: %s" % short(new[len(orig):]))


@test(limit=40)
def add_del_live_reload(ctx):
    srv = ctx.server().start()
    code, text = srv.rcpt_code("eve@example.test")
    check(code == 550, "RCPT eve before add: %s" % short(text))
    r = add_cli(srv, "eve@example.test", "Str0ngPassw0rd")
    check(r.returncode == 0, "add: exit %d %s" % (r.returncode, short(r.stderr)))
    wait_for(lambda: srv.rcpt_code("eve@example.test")[0] == 250, 10, "RCPT eve@example.test to be accepted after add (no restart)", 0.2)
    p = srv.pop("eve@example.test", "Str0ngPassw0rd")
    p.quit()
    c = srv.smtp()
    c.expect("AUTH PLAIN " + plain("eve@example.test", "Str0ngPassw0rd"), 235)
    r = del_cli(srv, "eve@example.test")
    check(r.returncode == 0, "del: exit %d %s" % (r.returncode, short(r.stderr)))
    wait_for(lambda: srv.rcpt_code("eve@example.test")[0] == 550, 10, "RCPT eve@example.test to be refused after del", 0.2)


@test()
def del_keeps_mail(ctx):
    srv = ctx.server().start()
    t, _ = srv.deliver("carol@example.test")
    r = del_cli(srv, "carol@example.test")
    check(r.returncode == 0, "del carol: exit %d %s" % (r.returncode, short(r.stderr)))
    check("carol = Passw0rd4" in read(srv.ini).decode(), "del carol@example.test removed carol@other.test")
    wait_for(lambda: srv.rcpt_code("carol@example.test")[0] == 550, 10, "RCPT carol@example.test refused after del", 0.2)
    check(stored_tokens(srv, "carol@example.test") == [t], "carol's mail is gone from disk after del")


@test(modes=BOTH)
def users_listing(ctx, storage):
    srv = ctx.server(storage=storage).start()
    srv.deliver()
    srv.deliver()
    r = run_cli(["-c", srv.ini, "users"])
    check(r.returncode == 0, "users: exit %d %s" % (r.returncode, short(r.stderr)))
    out = r.stdout.splitlines()
    strip = [l.strip() for l in out]

    def find(rx):
        for k, l in enumerate(strip):
            if re.match(rx + r"$", l):
                return k
        raise TestFailure("users output has no line matching %r:\n%s" % (rx, r.stdout))

    d1 = find(r"domain example\.test")
    d2 = find(r"domain other\.test")
    a = find(r"mailbox alice@example\.test messages=2 bytes=[1-9]\d*")
    b = find(r"mailbox bob@example\.test messages=0 bytes=0")
    al = find(r"alias team@example\.test -> alice@example\.test, bob@example\.test")
    find(r"mailbox dave@other\.test messages=0 bytes=0")
    check(d1 < a < d2 and d1 < b < d2 and d1 < al < d2, "users: example.test entries not under its domain line:\n" + r.stdout)


@test(unix_only=True)
def sighup_reload(ctx):
    srv = ctx.server().start()
    c = srv.smtp()  # a session that must survive the reload
    p = srv.pop("bob@example.test")
    st = os.stat(srv.ini)
    text = read(srv.ini).decode()
    new = text.replace("carol = Passw0rd3", "cathy = Passw0rd3", 1)
    check(len(new) == len(text), "test bug: size changed")
    srv.write_ini(new)
    os.utime(srv.ini, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only SIGHUP can tell
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: srv.rcpt_code("cathy@example.test")[0] == 250, 1.5, "SIGHUP to make cathy@example.test valid", 0.1)
    code, text = srv.rcpt_code("carol@example.test")
    check(code == 550, "carol@example.test after the reload removed it: %s" % short(text))
    c.expect("NOOP", 250)
    p.ok("NOOP")
    check(srv.alive(), "server died on SIGHUP")


@test(unix_only=True)
def sighup_bad_config_kept(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    p = srv.pop("bob@example.test")
    good = read(srv.ini).decode()
    size0 = len(srv.log_text())
    srv.write_ini(good.replace("[server]\n", "[server]\nno_such_key = 1\n", 1).replace("carol = Passw0rd3", "zed = Passw0rd3"))
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(srv.log_text()) > size0, 4, "a log line about the refused config")
    check(srv.alive(), "server exited on SIGHUP with a bad config")
    c.expect("NOOP", 250)
    p.ok("NOOP")
    check(srv.rcpt_code("alice@example.test")[0] == 250, "old config not kept: alice refused")
    check(srv.rcpt_code("carol@example.test")[0] == 250, "old config not kept: carol refused after a bad reload")
    check(srv.rcpt_code("zed@example.test")[0] == 550, "bad config partly applied: zed accepted")
    srv.write_ini(good.replace("carol = Passw0rd3", "erin = Passw0rd3"))
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: srv.rcpt_code("erin@example.test")[0] == 250, 5, "the fixed config to load (erin accepted)", 0.1)


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


@test(modes=BOTH)
def long_text_line(ctx, storage):
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    t = tok()
    longline = "L" * 2000
    code, text = c.send_mail(SENDER, ["alice@example.test"], make_msg(t, body="before\r\n" + longline + "\r\nafter\r\n"))
    check(500 <= code <= 599, "message with a 2000-octet line: %s (expected 5xx, never 250)" % short(text))
    c.expect("NOOP", 250)
    code, text = c.send_mail(SENDER, ["alice@example.test"], make_msg(tok(), body="x\r\n" + "M" * 999 + "\r\n"))
    check(500 <= code <= 599, "message with a 1001-octet line: %s (expected 5xx)" % short(text))
    check(stored(srv, "alice@example.test") == [], "message with an over-long line was stored")
    # 998 + CRLF = 1000 octets: the maximum, accepted and intact
    t2 = tok()
    edge = "E" * 998
    msg = make_msg(t2, body="x\r\n" + edge + "\r\n" + "." + "D" * 997 + "\r\n")
    code, text = c.send_mail(SENDER, ["alice@example.test"], msg)
    check(code == 250, "message with a 1000-octet line: %s" % short(text))
    got = srv.fetch("alice@example.test")
    check(len(got) == 1, "expected 1 message, got %d" % len(got))
    check_message(got[0]["data"], msg)


@test()
def size_param_552(ctx):
    srv = ctx.server().start()
    c = srv.smtp()
    c.expect("MAIL FROM:<%s> SIZE=200000" % SENDER, 552, "5.3.4")
    c.expect("MAIL FROM:<%s> SIZE=1000" % SENDER, 250)
    c.expect("RSET", 250)
    c.expect("MAIL FROM:<%s> SIZE=102400" % SENDER, 250)


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


# =============================================================================================
# relay: outbound queue, MX lookup, routes, smarthost, retries, bounces, relay access control.
# The rest of the internet is played by test/fakes.py: one FakeDNS and SMTP sinks on
# 127.0.0.2-3 sharing one port ([relay] port); nothing listens on 127.0.0.4 (connection refused).

import email  # noqa: E402

REMOTE_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class Net:
    """One test's fake internet: the DNS server, and sinks on REMOTE_HOSTS at one port."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.dns = ctx.track(fakes.FakeDNS())
        self.port = fakes.free_port_on(REMOTE_HOSTS)

    def sink(self, host="127.0.0.2", port=None, **attrs):
        k = self.ctx.track(fakes.SmtpSink(host, port or self.port))
        for name, v in attrs.items():
            setattr(k, name, v)
        return k

    def domain(self, dom, host="127.0.0.2"):
        """dom has one MX, mx.dom, at host."""
        self.dns.mx(dom, [(10, "mx." + dom)])
        self.dns.a("mx." + dom, [host])

    def server(self, relay=None, route=None, **kw):
        keys = {"dns": self.dns.addr, "port": self.port, "retry": "1", "expire": "1h", "timeout": "10"}
        keys.update(relay or {})
        sections = {"relay": keys}
        if route:
            sections["route"] = route
        return self.ctx.server(sections=sections, **kw)


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
    lines = data.split(b"\r\n")
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


def tls_client_ctx(cafile=None, minv=None, maxv=None, ciphers=None):
    """A client context; without cafile it accepts any certificate (self-signed ones: `-k`)."""
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        c.load_verify_locations(cafile)  # check_hostname stays on: pass server_hostname
    else:
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
    c.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if minv:
            c.minimum_version = minv
        if maxv:
            c.maximum_version = maxv
    if ciphers:
        c.set_ciphers(ciphers)
    return c


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


# =============================================================================================
# mailing lists: confirmed subscription, posts with RFC 2369/2919 headers, bounces, loops.

LIST = "news@example.test"


def list_server(ctx, net=None, storage="maildir", **keys):
    """A server with [list news@example.test] owned by alice (keys override the list's)."""
    lk = {"owner": "alice@example.test", "post": "members", "reply_to": "list", "subject_prefix": "[news]"}
    lk.update(keys)
    if net:
        srv = net.server(storage=storage)
        srv.sections["list " + LIST] = lk
        srv.write_ini()
        return srv.start()
    return ctx.server(storage=storage, sections={"list " + LIST: lk}).start()


def list_cli(srv, *args):
    r = run_cli(["-c", srv.ini, "list"] + list(args))
    check(r.returncode == 0, "list: exit %d, stderr %s" % (r.returncode, short(r.stderr)))
    return r.stdout


def members(srv):
    out = list_cli(srv, LIST)
    return sorted(l.strip() for l in out.splitlines()[1:] if l and not l.startswith(" ") and "@" in l
                  and not l.startswith("open request"))


def list_req(srv, sender, kind, msgid=None):
    """Mail to news-KIND@ from sender; returns the refused dict."""
    msg = ("From: <%s>\r\nTo: <news-%s@example.test>\r\nSubject: %s\r\nMessage-ID: <%s>\r\n\r\nplease\r\n"
           % (sender, kind, kind, msgid or tok() + "@client.test")).encode()
    return srv.send(["news-%s@example.test" % kind], msg, sender=sender)


def confirmations(datas):
    """The confirmation codes found in a list of messages (in order)."""
    out = []
    for d in datas:
        m = re.search(rb"Reply-To: <news-confirm-([0-9a-f]+)@example\.test>", d)
        if m:
            out.append(m.group(1).decode())
    return out


def local_confirmation(srv, addr, n=1):
    return wait_for(lambda: len(confirmations(g["data"] for g in srv.fetch(addr))) >= n and
                    confirmations(g["data"] for g in srv.fetch(addr))[n - 1], 10, "confirmation %d for %s" % (n, addr))


def confirm(srv, sender, code, msgid=None):
    msg = ("From: <%s>\r\nTo: <news-confirm-%s@example.test>\r\nSubject: Re: Confirm\r\nMessage-ID: <%s>\r\n\r\nyes\r\n"
           % (sender, code, msgid or tok() + "@client.test")).encode()
    return srv.send(["news-confirm-%s@example.test" % code], msg, sender=sender)


def subscribe(srv, addr):
    n = len(confirmations(g["data"] for g in srv.fetch(addr)))
    check(list_req(srv, addr, "subscribe") == {}, "subscribe request refused")
    code = local_confirmation(srv, addr, n + 1)
    check(confirm(srv, addr, code) == {}, "confirmation refused")
    return code


def post(srv, sender, subject="hello", body="post body\r\n", extra="", to=LIST):
    t = tok()
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@client.test>\r\nX-Test-Token: %s\r\n%s\r\n"
           % (sender, to, subject, t, t, extra)).encode() + body.encode()
    try:
        return t, srv.send([to], msg, sender=sender)
    except smtplib.SMTPRecipientsRefused as e:
        return t, e.recipients


def posts(srv, addr):
    return [g["data"] for g in srv.fetch(addr) if b"X-Mailsrv-Seq:" in g["data"]]


def list_state_text(srv):
    with open(os.path.join(srv.spool, "example.test", ".lists", "news", "state")) as f:
        return f.read()


def check_list_headers(data, what, post_to="<mailto:news@example.test>"):
    """Every header README "Posts" promises, once each, with its exact value."""
    head = data.replace(b"\r\n", b"\n").partition(b"\n\n")[0].decode("latin-1")
    for name, want in (("List-Id", "<news.example.test>"), ("List-Unsubscribe", "<mailto:news-unsubscribe@example.test>"),
                       ("List-Post", post_to), ("List-Help", "<mailto:news-help@example.test>"),
                       ("List-Subscribe", "<mailto:news-subscribe@example.test>"),
                       ("List-Owner", "<mailto:news-owner@example.test>"), ("Precedence", "list")):
        check(header(data, name) == want, "%s: %s is %s, expected %s" % (what, name, header(data, name), want))
        n = len(re.findall(r"(?im)^%s:" % re.escape(name), head))
        check(n == 1, "%s: %d %s: lines, expected one" % (what, n, name))
    check(header(data, "List-Unsubscribe-Post") is None, "%s: has List-Unsubscribe-Post (RFC 8058 needs HTTPS)" % what)
    check(b"To unsubscribe, send a message to news-unsubscribe@example.test" in data, "%s: no footer: %s" % (what, short(data, 600)))


@test(modes=BOTH, limit=60)
def list_subscribe_confirm_post(ctx, storage):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = list_server(ctx, net, storage=storage)
    t_req = time.time()
    check(list_req(srv, "bob@example.test", "subscribe", "req-bob@client.test") == {}, "subscribe refused")
    t_req = (t_req, time.time())
    conf = wait_for(lambda: [g["data"] for g in srv.fetch("bob@example.test")], 10, "the confirmation for bob")
    check(len(conf) == 1, "bob got %d messages, expected one confirmation" % len(conf))
    check(header(conf[0], "Auto-Submitted") == "auto-replied", "confirmation Auto-Submitted: %s" % header(conf[0], "Auto-Submitted"))
    check(conf[0].startswith(b"Return-Path: <news-bounces@example.test>"), "confirmation envelope: %s" % short(conf[0][:60]))
    code = confirmations(conf)[0]
    check(re.fullmatch(r"[0-9a-f]{24}", code), "code %r is not 24 hex digits" % code)
    check(members(srv) == [], "bob is a member before confirming: %s" % members(srv))
    # bob replies to the confirmation (to its Reply-To), as a mail client does, from another
    # address (127.0.0.2) than his request's, so that the two IPs kept are told apart
    t_conf = time.time()
    msg = ("From: <bob@example.test>\r\nTo: <news-confirm-%s@example.test>\r\nSubject: Re: Confirm\r\n"
           "Message-ID: <conf-bob@client.test>\r\n\r\nyes\r\n" % code).encode()
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10),
                      source_address=("127.0.0.2", 0)) as s:
        check(s.sendmail("bob@example.test", ["news-confirm-%s@example.test" % code], msg) == {}, "confirmation refused")
    t_conf = (t_conf, time.time())
    # a remote subscriber confirms through the relay
    check(list_req(srv, "ann@remote.test", "subscribe", "req-ann@remote.test") == {}, "remote subscribe refused")
    m = sink_wait(sink, 1, 10, "confirmation at the sink")[0]
    check(m["mail_from"] == "news-bounces@example.test", "confirmation MAIL FROM %s" % m["mail_from"])
    check(confirm(srv, "ann@remote.test", confirmations([m["data"]])[0], "conf-ann@remote.test") == {},
          "remote confirmation refused")
    check(members(srv) == ["ann@remote.test", "bob@example.test"], "members: %s" % members(srv))
    # README "Proof of consent": when and from which IP the request and the confirmation came, with
    # both Message-IDs, field by field: the state file's member line, then what `list` prints of it
    recs = {}
    for line in list_state_text(srv).splitlines():
        if line.startswith("member "):
            f = line.split(" ")
            check(len(f) == 10, "member line with %d fields: %r" % (len(f), line))
            recs[f[1]] = f[2:]
    check(sorted(recs) == ["ann@remote.test", "bob@example.test"], "member lines for %s" % sorted(recs))
    req_t, req_ip, req_id, conf_t, conf_ip, conf_id, nb, lastb = recs["bob@example.test"]
    check(int(t_req[0]) <= int(req_t) <= t_req[1], "request time %s outside %s" % (req_t, t_req))
    check(int(t_conf[0]) <= int(conf_t) <= t_conf[1], "confirmation time %s outside %s" % (conf_t, t_conf))
    check((req_ip, req_id, conf_ip, conf_id, nb, lastb) ==
          ("127.0.0.1", "<req-bob@client.test>", "127.0.0.2", "<conf-bob@client.test>", "0", "-1"),
          "bob's consent record: %s" % recs["bob@example.test"])
    check(recs["ann@remote.test"][1:3] + recs["ann@remote.test"][4:6] ==
          ["127.0.0.1", "<req-ann@remote.test>", "127.0.0.1", "<conf-ann@remote.test>"],
          "ann's consent record: %s" % recs["ann@remote.test"])
    out = list_cli(srv, LIST)

    def utc(t):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(t)))
    want = ("news@example.test: 2 members, 0 posts\n" + "".join(
        "%s\n  requested %s from [%s], message %s\n  confirmed %s from [%s], message %s\n"
        % (a, utc(r[0]), r[1], r[2], utc(r[3]), r[4], r[5]) for a, r in sorted(recs.items())))
    check(sorted(out.splitlines()) == sorted(want.splitlines()) and out.startswith(want.splitlines()[0]),
          "`list` prints %r, expected %r" % (out, want))
    t, refused = post(srv, "bob@example.test", subject="first post")
    check(refused == {}, "member post refused: %s" % refused)
    # README "Storage": "A list post is stored for all members before the poster gets 250": right
    # after the 250, with no waiting, bob's copy is in his mailbox and ann's is in the queue (or,
    # when the relay was quicker, at the sink: the queue entry goes only after the sink's 250)
    got = posts(srv, "bob@example.test")
    check(len(got) == 1, "right after the 250 bob has %d copies of the post, expected 1" % len(got))
    got = got[0]

    def ann_copy():
        for env in glob.glob(os.path.join(srv.queue, "*.env")):
            try:
                if "ann@remote.test" in read(env).decode() and b"X-Mailsrv-Seq: 1" in read(env[:-4] + ".msg"):
                    return True
            except OSError:
                pass  # sent meanwhile: then the sink has it
        return any("ann@remote.test" in x["rcpts"] and b"X-Mailsrv-Seq: 1" in x["data"] for x in list(sink.messages))
    check(ann_copy(), "right after the 250 ann's copy is neither queued nor sent: %s" % queue_files(srv))
    check_list_headers(got, "local copy")
    check(header(got, "Subject") == "[news] first post", "Subject: %s" % header(got, "Subject"))
    check(header(got, "Reply-To") == "<news@example.test>", "Reply-To: %s" % header(got, "Reply-To"))
    check(got.startswith(b"Return-Path: <news-bounces@example.test>"), "Return-Path: %s" % short(got[:60]))
    check(b"post body\r\n" in got and header(got, "X-Test-Token") == t, "body or token lost: %s" % short(got, 500))
    r = sink_wait(sink, 3, 10, "welcome and post at the sink")
    p = [x for x in r if b"X-Mailsrv-Seq" in x["data"]]
    check(len(p) == 1 and p[0]["rcpts"] == ["ann@remote.test"], "remote copies: %s" % [x["rcpts"] for x in p])
    check(p[0]["mail_from"] == "news-bounces@example.test", "post MAIL FROM %s" % p[0]["mail_from"])
    check_list_headers(p[0]["data"], "remote copy")
    check(posts(srv, "alice@example.test") == [], "alice (owner, not a member) got the post")


@test()
def list_unconfirmed_gets_nothing(ctx):
    srv = list_server(ctx, post="anyone")
    check(list_req(srv, "bob@example.test", "subscribe") == {}, "subscribe refused")
    local_confirmation(srv, "bob@example.test")
    t, refused = post(srv, "carol@example.test")
    check(refused == {}, "post=anyone refused a post: %s" % refused)
    wait_for(lambda: "post 1 " in srv.log_text(), 10, "the post to be handled")
    check(posts(srv, "bob@example.test") == [], "an unconfirmed subscriber got a post")
    out = list_cli(srv, LIST)
    check("0 members" in out and "open request: subscribe bob@example.test" in out, "`list`: %s" % out)


@test()
def list_attacker_cannot_subscribe_others(ctx):
    srv = list_server(ctx)
    # README: the code goes "to the address that asked (the envelope sender)": with From: bob and
    # envelope sender carol, carol gets exactly one confirmation, naming her, and bob gets nothing
    msg = b"From: <bob@example.test>\r\nSubject: subscribe\r\n\r\nsubscribe me\r\n"
    check(srv.send(["news-subscribe@example.test"], msg, sender="carol@example.test") == {}, "refused")
    got = [g["data"] for g in srv.fetch("carol@example.test")]  # stored before the 250: no waiting
    check(len(got) == 1 and len(confirmations(got)) == 1, "carol (the envelope sender) got %s" % [short(d, 300) for d in got])
    check(header(got[0], "To") == "<carol@example.test>" and b"<carol@example.test>" in got[0]
          and b"bob@" not in got[0], "the confirmation names the wrong address: %s" % short(got[0], 600))
    check(srv.fetch("bob@example.test") == [], "bob (the From: address) got mail: %s"
          % [short(g["data"], 300) for g in srv.fetch("bob@example.test")])
    check("pending %s subscribe carol@example.test " % confirmations(got)[0] in list_state_text(srv),
          "the open request is not carol's: %s" % list_state_text(srv))
    # the same with a remote envelope sender (no route: its copy stays queued): nothing to bob
    check(srv.send(["news-subscribe@example.test"], msg, sender="mallory@client.test") == {}, "refused")
    check(srv.fetch("bob@example.test") == [], "a code for mallory went to bob")
    # with a forged envelope sender the code goes to the victim, whom the attacker cannot read
    check(list_req(srv, "bob@example.test", "subscribe") == {}, "refused")
    local_confirmation(srv, "bob@example.test")
    # guessing a code
    for code in ("0" * 24, "%024x" % random.getrandbits(96), "deadbeef", "x"):
        code_, text = srv.rcpt_code("news-confirm-%s@example.test" % code)
        check(code_ == 550 and "5.1.1" in text, "guessed code %s: %d %s" % (code, code_, text))
    check(members(srv) == [], "someone got subscribed: %s" % members(srv))
    # the requests to the victim went nowhere else
    check(all(b"bob@example.test" in d for d in (g["data"] for g in srv.fetch("bob@example.test"))), "bob's mail")
    check(len(srv.fetch("bob@example.test")) == 1, "bob got %d messages, expected his own one" % len(srv.fetch("bob@example.test")))
    check(len(srv.fetch("carol@example.test")) == 1, "carol got more than her one confirmation")
    check(confirmations(g["data"] for g in srv.fetch("alice@example.test")) == [], "a code went to alice")


@test()
def list_forged_used_expired_codes(ctx):
    srv = list_server(ctx)
    code = subscribe(srv, "bob@example.test")
    check(members(srv) == ["bob@example.test"], "members %s" % members(srv))
    c, text = srv.rcpt_code("news-confirm-%s@example.test" % code)
    check(c == 550, "a used code was accepted again: %d %s" % (c, text))
    check(list_req(srv, "carol@example.test", "subscribe") == {}, "refused")
    code = local_confirmation(srv, "carol@example.test")
    # age the request by 8 days in the state file, as 8 days of waiting would
    path = os.path.join(srv.spool, "example.test", ".lists", "news", "state")
    with open(path) as f:
        text = f.read()
    parts = re.search(r"(?m)^pending %s subscribe carol@example.test (\d+) " % code, text)
    check(parts, "no pending request in the state file: %s" % text)
    aged = parts.group(0).replace(parts.group(1), str(int(parts.group(1)) - 8 * 86400))
    with open(path, "w") as f:
        f.write(text.replace(parts.group(0), aged))
    c, text = srv.rcpt_code("news-confirm-%s@example.test" % code)
    check(c == 550 and "expired" in text, "an 8-day-old code: %d %s" % (c, text))
    check(members(srv) == ["bob@example.test"], "members %s" % members(srv))


@test()
def list_unsubscribe_one_round(ctx):
    srv = list_server(ctx)
    subscribe(srv, "bob@example.test")
    subscribe(srv, "carol@example.test")
    check(list_req(srv, "bob@example.test", "unsubscribe") == {}, "unsubscribe refused")
    code = local_confirmation(srv, "bob@example.test", 2)
    check(members(srv) == ["bob@example.test", "carol@example.test"], "removed before confirming: %s" % members(srv))
    check(confirm(srv, "bob@example.test", code) == {}, "confirmation refused")
    check(members(srv) == ["carol@example.test"], "members after unsubscribe: %s" % members(srv))
    wait_for(lambda: any(b"Goodbye from news@example.test" in g["data"] for g in srv.fetch("bob@example.test")), 10,
             "the goodbye notice")
    post(srv, "carol@example.test")
    wait_for(lambda: posts(srv, "carol@example.test"), 10, "the post at carol")
    check(posts(srv, "bob@example.test") == [], "bob got a post after leaving")
    # the owner was never needed
    check(srv.fetch("alice@example.test") == [], "the owner got mail: %s" % [short(g["data"], 200) for g in srv.fetch("alice@example.test")])


@test()
def list_post_permissions(ctx):
    srv = list_server(ctx)
    subscribe(srv, "bob@example.test")
    for sender in ("carol@example.test", "stranger@client.test", ""):
        c = srv.smtp()
        c.expect("MAIL FROM:<%s>" % sender, 250)
        code, text = c.cmd("RCPT TO:<%s>" % LIST)
        check(code == 550 and "5.7.2" in text, "non-member <%s> may post: %d %s" % (sender, code, text))
        c.expect("QUIT", 221)
    t, refused = post(srv, "alice@example.test")  # the owner may post to a members list
    check(refused == {}, "owner refused: %s" % refused)
    wait_for(lambda: posts(srv, "bob@example.test"), 10, "the owner's post")
    # an announcement list: only the owner
    srv.sections["list " + LIST]["post"] = "owner"
    srv.write_ini()
    srv.restart()
    t, refused = post(srv, "bob@example.test")
    check(LIST in refused and refused[LIST][0] == 550, "a member posted to an announcement list: %s" % refused)
    t, refused = post(srv, "alice@example.test", subject="announce")
    check(refused == {}, "owner refused: %s" % refused)
    got = wait_for(lambda: [p for p in posts(srv, "bob@example.test") if b"announce" in p], 10, "the announcement")[0]
    check(header(got, "List-Post") == "NO", "announcement List-Post: %s (RFC 2369 3.4: NO)" % header(got, "List-Post"))
    check_list_headers(got, "announcement", post_to="NO")
    # from a client outside relay_networks (127.0.0.2; only 127.0.0.1 may relay): the local owner
    # posts only after AUTH (README "Who may post"); a forged owner sender, a member, and a member
    # logged in as himself all get 550 5.7.2 at RCPT
    srv.keys["relay_networks"] = "127.0.0.1/32"
    srv.write_ini()
    srv.restart()
    for sender, login in (("alice@example.test", None), ("bob@example.test", None), ("bob@example.test", "bob"),
                          ("alice@example.test", "alice")):
        c = ctx.track(Smtp(srv.smtp_port, source="127.0.0.2"))
        check(c.reply()[0] == 220, "greeting")
        c.expect("EHLO client.test", 250)
        if login:
            addr = login + "@example.test"
            c.expect("AUTH PLAIN " + plain(addr, PASSWORDS[addr]), 235)
        c.expect("MAIL FROM:<%s>" % sender, 250)
        code, text = c.cmd("RCPT TO:<%s>" % LIST)
        if login != "alice":
            check(code == 550 and text.startswith("550 5.7.2 "), "<%s>%s from 127.0.0.2 may post to an announcement list: %d %s"
                  % (sender, " logged in" if login else "", code, text))
            c.expect("QUIT", 221)
            continue
        check(code == 250, "the owner, logged in, from 127.0.0.2 was refused: %d %s" % (code, text))
        t = tok()
        c.expect("DATA", 354)
        c.send(dot_stuff(make_msg(t, to=LIST, sender=sender, subject="from outside")) + b".\r\n")
        code, text = c.reply()
        check(code == 250, "the owner's post from 127.0.0.2: %d %s" % (code, text))
        c.expect("QUIT", 221)
        check(t in [header(p, "X-Test-Token") for p in posts(srv, "bob@example.test")],
              "the owner's post from 127.0.0.2 is not at bob's after its 250")


@test()
def list_bounces_remove_member(ctx):
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = list_server(ctx, net, bounce_limit="3")
    subscribe(srv, "bob@example.test")
    check(list_req(srv, "gone@remote.test", "subscribe") == {}, "refused")
    check(confirm(srv, "gone@remote.test", confirmations([sink_wait(sink, 1, 10)[0]["data"]])[0]) == {}, "refused")
    sink_wait(sink, 2, 10, "the welcome notice")
    sink.rcpt_replies["gone@remote.test"] = "550 5.1.1 mailbox gone"
    for i in range(1, 4):
        post(srv, "bob@example.test", subject="post %d" % i)
        wait_for(lambda: "post %d to <gone@remote.test> bounced" % i in srv.log_text(), 15, "bounce %d counted" % i)
        if i < 3:
            check(members(srv) == ["bob@example.test", "gone@remote.test"], "removed after %d bounces" % i)
    wait_for(lambda: members(srv) == ["bob@example.test"], 10, "gone@remote.test removed after 3 bounces")
    note = wait_for(lambda: [g["data"] for g in srv.fetch("alice@example.test") if b"removed from" in g["data"]], 10,
                    "the owner's notice")
    check(b"gone@remote.test" in note[0], "notice: %s" % short(note[0], 400))
    check(not any(b"multipart/report" in g["data"] for g in srv.fetch("bob@example.test")), "the poster got a bounce")


@test()
def list_dsn_by_mail_counts_once_per_post(ctx):
    srv = list_server(ctx, bounce_limit="2")
    subscribe(srv, "bob@example.test")
    subscribe(srv, "carol@example.test")

    def dsn(seq):
        return ("From: MAILER-DAEMON@far.test\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
                "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
                "--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
                "Reporting-MTA: dns; far.test\r\n\r\nFinal-Recipient: rfc822; carol@example.test\r\nAction: failed\r\n"
                "Status: 5.2.2\r\n\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: [news] x\r\n"
                "X-Mailsrv-Seq: %d\r\n\r\n--b--\r\n" % seq).encode()
    for seq in (1, 1, 1):  # three reports about one post count once
        check(srv.send(["news-bounces@example.test"], dsn(seq), sender="") == {}, "DSN refused")
    check("carol@example.test" in members(srv), "removed after one post's bounces: %s" % members(srv))
    check(srv.send(["news-bounces@example.test"], dsn(2), sender="") == {}, "DSN refused")
    check(members(srv) == ["bob@example.test"], "not removed after 2 posts in a row: %s" % members(srv))
    # mail to -bounces that is not a report goes to the owner
    check(srv.send(["news-bounces@example.test"], b"Subject: out of office\r\n\r\naway\r\n", sender="x@client.test") == {}, "")
    wait_for(lambda: any(b"out of office" in g["data"] for g in srv.fetch("alice@example.test")), 10, "owner copy")


@test()
def list_loops_and_automatic_mail(ctx):
    srv = list_server(ctx, post="anyone")
    subscribe(srv, "bob@example.test")
    before = len(srv.fetch("bob@example.test"))
    post(srv, "carol@example.test", subject="looped", extra="List-Id: <news.example.test>\r\n")
    post(srv, "carol@example.test", subject="vacation", extra="Auto-Submitted: auto-replied\r\n")
    t, refused = post(srv, "", subject="from the daemon")
    check(refused == {}, "refused %s" % refused)
    wait_for(lambda: len([g for g in srv.fetch("alice@example.test") if b"from the daemon" in g["data"]
                          or b"vacation" in g["data"]]) == 2, 10, "automatic mail given to the owner")
    check(len(srv.fetch("bob@example.test")) == before, "a looped or automatic post was redistributed")
    check("a loop, dropped" in srv.log_text(), "the loop was not logged")
    # automatic requests get no answer and subscribe nobody
    msg = b"From: <carol@example.test>\r\nAuto-Submitted: auto-replied\r\nSubject: subscribe\r\n\r\nx\r\n"
    check(srv.send(["news-subscribe@example.test"], msg, sender="carol@example.test") == {}, "refused")
    check(srv.send(["news-subscribe@example.test"], b"Subject: x\r\n\r\nx\r\n", sender="") == {}, "refused")
    wait_for(lambda: srv.log_text().count("no answer to automatic mail") == 2, 10, "both requests ignored")
    check(confirmations(g["data"] for g in srv.fetch("carol@example.test")) == [], "an auto-reply got a code")


@test()
def list_mime_post_gets_footer_part(ctx):
    srv = list_server(ctx, post="anyone")
    subscribe(srv, "bob@example.test")
    body = ("--xyz\r\nContent-Type: text/plain\r\n\r\nplain part\r\n--xyz\r\nContent-Type: text/html\r\n\r\n"
            "<p>html part</p>\r\n--xyz--\r\n")
    post(srv, "carol@example.test", subject="mime", body=body,
         extra="MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"xyz\"\r\n")
    post(srv, "carol@example.test", subject="b64", body=base64.b64encode(b"hello base64\n").decode() + "\r\n",
         extra="Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n")
    got = wait_for(lambda: len(posts(srv, "bob@example.test")) == 2 and posts(srv, "bob@example.test"), 10, "2 posts")
    for data, inner in zip(got, ("multipart/alternative", "text/plain")):
        m = email.message_from_bytes(data)
        check(m.get_content_type() == "multipart/mixed", "top type %s" % m.get_content_type())
        parts = m.get_payload()
        check(len(parts) == 2 and parts[0].get_content_type() == inner, "parts %s" % [p.get_content_type() for p in parts])
        check(b"news-unsubscribe@example.test" in parts[1].get_payload(decode=True), "footer part: %s" % parts[1])
    check(email.message_from_bytes(got[1]).get_payload()[0].get_payload(decode=True) == b"hello base64\n", "base64 part changed")
    alt = email.message_from_bytes(got[0]).get_payload()[0]
    check([p.get_content_type() for p in alt.get_payload()] == ["text/plain", "text/html"], "alternative parts")


@test()
def list_help_and_owner(ctx):
    srv = list_server(ctx)
    check(list_req(srv, "carol@example.test", "help") == {}, "help refused")
    h = wait_for(lambda: [g["data"] for g in srv.fetch("carol@example.test")], 10, "the help text")[0]
    check(b"news-subscribe@example.test" in h and b"news-unsubscribe@example.test" in h, "help: %s" % short(h, 500))
    check(srv.send(["news-owner@example.test"], b"Subject: to the owner\r\n\r\nhi\r\n", sender="carol@example.test") == {}, "")
    wait_for(lambda: any(b"to the owner" in g["data"] for g in srv.fetch("alice@example.test")), 10, "owner mail")
    code, text = srv.rcpt_code("news-nonsense@example.test")
    check(code == 550, "news-nonsense: %d %s" % (code, text))


@test(limit=60)
def list_state_survives_restart_and_kill9(ctx):
    srv = list_server(ctx, post="anyone")
    subscribe(srv, "bob@example.test")
    srv.restart()
    check(members(srv) == ["bob@example.test"], "after restart: %s" % members(srv))
    # kill -9 while requests and confirmations are being written: every confirmation that got a 250
    # is a member afterwards, and the state file is whole
    addrs = ["u%d@client.test" % i for i in range(40)]
    srv2 = srv
    confirmed = []
    done = threading.Event()

    def worker():
        for a in addrs:
            if done.is_set():
                return
            try:
                list_req(srv2, a, "subscribe")
            except (OSError, smtplib.SMTPException):
                return
    # the codes for client.test go nowhere (no route): read them from the state file instead
    th = threading.Thread(target=worker)
    th.start()
    path = os.path.join(srv.spool, "example.test", ".lists", "news", "state")
    try:
        wait_for(lambda: open(path).read().count("pending ") >= 10, 20, "10 open requests")
        for line in open(path).read().splitlines():
            if line.startswith("pending "):
                code, addr = line.split()[1], line.split()[3]
                try:
                    if confirm(srv, addr, code) == {}:
                        confirmed.append(addr)
                except (OSError, smtplib.SMTPException):
                    break
                if len(confirmed) == 5:
                    srv.kill9()
                    break
    finally:
        done.set()
        th.join(secs(20))
    srv.start()
    got = members(srv)
    for a in confirmed:
        check(a in got, "%s was confirmed (250) but is not a member after kill -9: %s" % (a, got))
    check(open(path).read().startswith("mailsrv-list 1\n"), "state file damaged")
    post(srv, "bob@example.test", subject="after crash")
    wait_for(lambda: posts(srv, "bob@example.test"), 10, "a post after the crash")


@test()
def list_config_errors(ctx):
    srv = ctx.server()
    base = srv.ini_text()
    for section, want in (
            ("[list news@nowhere.test]\nowner = alice@example.test\n", "nowhere.test is not a [domain]"),
            ("[list news@example.test]\npost = members\n", "has no owner"),
            ("[list news@example.test]\nowner = nobody@example.test\n", "the owner 'nobody@example.test'"),
            ("[list bob-help@example.test]\nowner = alice@example.test\n[list bob@example.test]\nowner = alice@example.test\n",
             "both a mailbox and an address of the list"),
            ("[list news@example.test]\nowner = alice@example.test\npost = everyone\n", "post:"),
            ("[list %s@a.b]\nowner = alice@example.test\n" % ("n" * 32), "not a list address"),
            ("[list %s@example.test]\nowner = alice@example.test\n" % ("n" * 31), "too long")):  # inih's limit
        srv.write_ini(base + "\n" + section)
        r = run_cli(["-c", srv.ini, "check"])
        check(r.returncode != 0 and want in r.stderr and re.search(r"mailsrv\.ini:\d+: ", r.stderr),
              "config %r: exit %d, %s" % (section, r.returncode, short(r.stderr, 300)))


# =============================================================================================
# hardening: resource limits under abuse, auth back-off, privilege drop, fault injection.


def rss_kib(srv):
    """The server's resident memory (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/%d/status" % srv.proc.pid) as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    except (OSError, AttributeError):
        return None


@test()
def abuse_max_per_ip(ctx):
    # relay_networks are exempt (as Postfix exempts mynetworks): here nobody is
    srv = ctx.server(server={"max_per_ip": "3", "max_clients": "10", "relay_networks": ""}).start()
    held = [srv.smtp() for _ in range(3)]
    c = srv.ctx.track(Smtp(srv.smtp_port))
    code, text = c.reply()
    check(code == 421, "4th connection from one address: %d %s, expected 421" % (code, text))
    p = srv.ctx.track(Pop(srv.pop3_port))
    check(p.readline().startswith(b"-ERR"), "4th connection (POP3) was greeted")
    check("max_per_ip (3) reached" in srv.log_text(), "no log line for the refusal")
    held[0].expect("QUIT", 221)
    held[0].read_eof()
    wait_for(lambda: srv.smtp() is not None, 5, "a slot freed by QUIT")


@test()
def abuse_slowloris_cut_at_timeout(ctx):
    srv = ctx.server(server={"timeout": "2"}).start()
    c = srv.smtp()
    t0 = time.monotonic()
    cut = False
    for ch in "MAIL FROM:<slow@client.test>" * 4:  # one byte at a time, never a line end
        try:
            c.send(ch)
        except OSError:  # the server has closed
            cut = True
            break
        time.sleep(0.25)
        if time.monotonic() - t0 > secs(8):
            break
    elapsed = time.monotonic() - t0
    try:
        data = c.read_eof(timeout=8)
    except OSError:
        data = b""
    check(b"421 4.4.2" in data or cut, "a byte-at-a-time client was not cut: %s" % short(data))
    check(elapsed < secs(6), "cut after %.1fs with timeout = 2" % elapsed)
    check(srv.smtp() is not None, "no slot after the cut")


@test(limit=60)
def abuse_client_never_reads(ctx):
    srv = ctx.server(server={"timeout": "3"}).start()
    before = rss_kib(srv)
    c = srv.smtp()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = 0
    c.sock.settimeout(secs(5))
    try:  # 20 MB of HELOs (not NOOPs: max_junk_commands would end it), never reading a reply: the server stops reading, then times out
        chunk = b"HELO client.test\r\n" * 10000
        while sent < 20 * 1024 * 1024:
            c.sock.sendall(chunk)
            sent += len(chunk)
    except (socket.timeout, OSError):
        pass
    during = rss_kib(srv)
    print("#   never-reading client: the server took %d KB of commands, RSS %s -> %s KiB" % (sent // 1024, before, during))
    check(sent < 20 * 1024 * 1024, "the server read 20 MB of commands without their replies being read")
    if before and during:
        check(during - before < 4096, "RSS grew by %d KiB for one client that never reads" % (during - before))
    wait_for(lambda: "timeout" in srv.log_text(), 15, "the session cut at the timeout")
    check(srv.smtp() is not None, "the server stopped answering")


@test(limit=60)
def abuse_10000_rcpts(ctx):
    srv = ctx.server().start()  # max_recipients = 5
    before = rss_kib(srv)
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send("".join("RCPT TO:<alice@example.test>\r\n" for _ in range(10000)))  # pipelined at once
    codes = collections.Counter(c.reply()[0] for _ in range(10000))
    check(codes[250] == 5 and codes[452] == 9995, "replies to 10,000 RCPTs: %s" % dict(codes))
    c.expect("RSET", 250)
    after = rss_kib(srv)
    print("#   10,000 RCPTs: RSS %s -> %s KiB" % (before, after))
    if before and after:
        check(after - before < 2048, "RSS grew by %d KiB" % (after - before))


@test(limit=90)
def abuse_100mb_message_not_buffered(ctx):
    srv = ctx.server().start()  # max_message_size = 100K
    before = rss_kib(srv)
    c = srv.smtp()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    tmp = os.path.join(srv.spool, ".tmp")
    biggest = [0]
    line = b"x" * 78 + b"\r\n"
    block = line * 13000  # about 1 MB

    def sample():
        for f in glob.glob(os.path.join(tmp, "*")):
            try:
                biggest[0] = max(biggest[0], os.path.getsize(f))
            except OSError:
                pass
    for i in range(100):
        c.send(block)
        if i % 10 == 0:
            sample()
    sample()  # before the final dot: the file is still there, at its last size
    c.send(".\r\n")
    code, text = c.reply()
    check(code == 552, "100 MB message: %d %s, expected 552" % (code, text))
    print("#   100 MB message: largest spool file %d bytes, RSS %s -> %s KiB" % (biggest[0], before, rss_kib(srv)))
    # max_message_size = 100K: the body bytes written never pass 102,400 (mailsrv stops writing once
    # the count passes the limit and only ever flushes buffers counted within it); the file also
    # holds the Return-Path: and Received: lines mailsrv puts first, about 250 bytes here (short
    # EHLO, sender and host names), so 1 KB covers them with room; 100 MB of input must not grow it
    check(biggest[0] > 64 * 1024, "the spool file was never seen near its limit (%d bytes)" % biggest[0])
    check(biggest[0] <= 100 * 1024 + 1024, "a file of %d bytes was written for a 100K limit (at most 102,400 + 1,024)"
          % biggest[0])
    after = rss_kib(srv)
    if before and after:
        check(after - before < 2048, "RSS grew by %d KiB while receiving 100 MB" % (after - before))
    check(not glob.glob(os.path.join(tmp, "*")), "spool/.tmp not cleaned: %s" % os.listdir(tmp))
    check(stored_tokens(srv, "alice@example.test") == [], "the refused message was stored")
    c.expect("NOOP", 250)


@test(limit=60)
def auth_backoff_per_address(ctx):
    srv = ctx.server().start()
    delays = []
    for i in range(3):  # a new connection each time: the back-off follows the address
        c = srv.smtp()
        t0 = time.monotonic()
        c.expect("AUTH PLAIN " + plain("alice@example.test", "wrong%d" % i), 535, "5.7.8")
        delays.append(time.monotonic() - t0)
        c.close()
    check(delays[0] >= 0.9 and delays[1] >= 1.9 and delays[2] >= 3.9,
          "delays after 1, 2, 3 failures: %s, expected about 1, 2, 4 s" % ["%.1f" % d for d in delays])
    p = srv.pop()
    t0 = time.monotonic()
    p.send("USER alice@example.test\r\nPASS nope\r\n")
    p.readline()
    check(p.readline().startswith(b"-ERR") and time.monotonic() - t0 >= 7.5, "POP3 failure after 3 SMTP ones: not delayed 8 s")
    c = srv.smtp()  # a success resets the address
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)
    c = srv.smtp()
    t0 = time.monotonic()
    c.expect("AUTH PLAIN " + plain("alice@example.test", "wrong"), 535)
    # reset: this failure costs what the first one did (about 1 s), not the 2 s of a second one
    took = time.monotonic() - t0
    check(took < delays[0] + 0.9, "the back-off was not reset by a successful login: %.1fs, the first failure took %.1fs"
          % (took, delays[0]))
    # each failure is one log line that the shipped fail2ban filter matches, through fail2ban-regex
    # itself (skipped without Debian's fail2ban; a failure under CI)
    lines = [l for l in srv.log_text().splitlines() if "auth failed" in l]
    check(len(lines) == 5, "5 failures, log lines: %s" % lines)
    got = fail2ban_regex(srv.log)
    check(got == ["127.0.0.1"] * 5, "fail2ban-regex with the shipped filter found %s in %s" % (got, lines))


@test(unix_only=True)
def root_refused_without_user(ctx):
    need_root()
    srv = ctx.server()
    text = srv.ini_text()
    with open(srv.ini, "w") as f:
        f.write(text)  # no allow_root, no user
    srv.start(wait=False)
    rc = srv.proc.wait(timeout=secs(10))
    check(rc != 0 and "refusing to run as root" in srv.log_text(), "root without user: exit %s, log %s" % (rc, short(srv.log_text(), 300)))


def elf_has_interpreter(path):
    """Whether path is a dynamically linked ELF program (a PT_INTERP program header), which the
    dynamic loader starts and LD_PRELOAD reaches; static ones (the musl build) ignore it."""
    import struct
    with open(path, "rb") as f:
        data = f.read(65536)
    if data[:4] != b"\x7fELF":
        return False
    e = "<" if data[5] == 1 else ">"
    if data[4] == 2:
        phoff, (phentsize, phnum) = struct.unpack_from(e + "Q", data, 0x20)[0], struct.unpack_from(e + "HH", data, 0x36)
    else:
        phoff, (phentsize, phnum) = struct.unpack_from(e + "I", data, 0x1C)[0], struct.unpack_from(e + "HH", data, 0x2A)
    return any(struct.unpack_from(e + "I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))  # PT_INTERP


@test(unix_only=True, limit=60)
def privilege_drop_checks_root_cannot_come_back(ctx):
    """After dropping root mailsrv checks that root cannot come back (setuid(0) must fail) and
    refuses to run if it can. A preloaded setuid() that only changes the effective uid (the real
    and saved uids stay 0: the mistake this check is for) must stop the start; the same server
    starts without it."""
    need_root()
    need_native("LD_PRELOAD of a shim into the server")
    if not elf_has_interpreter(BIN):
        raise Skip("a static binary (musl): LD_PRELOAD does not apply", "native")
    import pwd
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        raise Skip("no user nobody")
    shim = os.path.join(ctx.dir, "half_setuid.so")
    src = shim[:-3] + ".c"
    with open(src, "w") as f:
        f.write("#include <unistd.h>\nint setuid(uid_t u) { return seteuid(u); }\n")
    r = subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o", shim, src], capture_output=True, timeout=secs(60))
    check(r.returncode == 0, "building the shim: %s" % short(r.stderr, 300))
    srv = ctx.server(server={"user": "nobody"})
    os.chmod(ctx.dir, 0o755)  # nobody must reach its folders
    os.chmod(srv.dir, 0o755)
    srv.env = dict(os.environ, LD_PRELOAD=shim)
    srv.start(wait=False)
    wait_for(lambda: srv.proc.poll() is not None, 10, "the server to refuse: root could come back")
    check(srv.proc.returncode != 0 and "root came back" in srv.log_text(),
          "with a half setuid: exit %s, log %s" % (srv.proc.returncode, short(srv.log_text(), 300)))
    srv.env = None
    srv.start()
    srv.deliver()


@test(unix_only=True, limit=60)
def random_from_urandom_without_getentropy(ctx):
    """Built with -DMS_HAVE_GETENTROPY=0 (systems without getentropy) mailsrv takes its random bytes
    from /dev/urandom and refuses to start without them: with /dev/null mounted over /dev/urandom
    (in a private mount namespace) that build refuses, and the normal build, which uses getentropy,
    starts all the same (so the refusal is the build option's doing)."""
    need_root()  # a mount namespace
    need_native("builds and runs a native binary")
    unshare = need_program("unshare", "util-linux")
    alt = os.path.join(ctx.dir, "mailsrv-urandom")
    r = subprocess.run([os.environ.get("CC", "cc"), "-std=c99", "-O1", "-DMS_HAVE_GETENTROPY=0", "-DMAILSRV_ENABLE_TLS=0",
                        "-o", alt, os.path.join(REPO, "mailsrv.c"), "-linih"], capture_output=True, timeout=secs(120))
    check(r.returncode == 0, "build with -DMS_HAVE_GETENTROPY=0: %s" % short(r.stderr, 400))
    no_urandom = [unshare, "-m", "sh", "-c", 'mount --bind /dev/null /dev/urandom && exec "$@"', "sh"]
    srv = ctx.server()
    srv.bin, srv.wrap = alt, no_urandom
    srv.start(wait=False)
    wait_for(lambda: srv.proc.poll() is not None, 10, "the -DMS_HAVE_GETENTROPY=0 build to refuse to start without /dev/urandom")
    rc = srv.proc.returncode
    check(rc != 0 and "random generator does not work" in srv.log_text(),
          "without /dev/urandom: exit %s, log %s" % (rc, short(srv.log_text(), 300)))
    srv.bin = BIN
    srv.start()  # getentropy: no /dev/urandom needed
    srv.deliver()
    srv.stop()
    srv.bin, srv.wrap = alt, []
    srv.start()
    t, _ = srv.deliver()
    check([m["token"] for m in srv.fetch("alice@example.test")][-1:] == [t], "the -DMS_HAVE_GETENTROPY=0 build did not deliver")


@test(unix_only=True, limit=40)
def privilege_drop_to_user(ctx):
    need_root()
    import pwd
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise Skip("no user nobody")
    srv = ctx.server(server={"user": "nobody"})
    os.chmod(ctx.dir, 0o755)  # nobody must reach its folders
    os.chmod(srv.dir, 0o755)
    srv.write_ini(srv.ini_text())
    srv.start()
    with open("/proc/%d/status" % srv.proc.pid) as f:
        status = f.read()
    uids = re.search(r"Uid:\s+(.*)", status).group(1).split()
    gids = re.search(r"Gid:\s+(.*)", status).group(1).split()
    groups = re.search(r"Groups:\s*(.*)", status).group(1).split()
    check(set(uids) == {str(nobody.pw_uid)} and set(gids) == {str(nobody.pw_gid)},
          "after start: Uid %s Gid %s, expected nobody (%d/%d)" % (uids, gids, nobody.pw_uid, nobody.pw_gid))
    check(set(groups) <= {str(nobody.pw_gid)}, "supplementary groups kept: %s" % groups)
    t, msg = srv.deliver()
    got = srv.fetch("alice@example.test")
    check(len(got) == 1 and got[0]["token"] == t, "delivery as nobody failed")
    for path in maildir_files(srv, "alice@example.test"):
        st = os.stat(path)
        check(st.st_uid == nobody.pw_uid and (st.st_mode & 0o777) == 0o600, "%s: uid %d mode %o" % (path, st.st_uid, st.st_mode & 0o777))
    for d in (os.path.join(srv.spool, "example.test"), os.path.join(srv.spool, "example.test", "alice")):
        st = os.stat(d)
        check((st.st_mode & 0o777) == 0o700, "%s: mode %o, expected 700" % (d, st.st_mode & 0o777))
    srv2 = ctx.server(server={"user": "no-such-user-here"})
    srv2.start(wait=False)
    check(srv2.proc.wait(timeout=secs(10)) != 0 and "no such user" in srv2.log_text(), "user = unknown: %s" % short(srv2.log_text(), 300))


# ---- fault injection: a build with -DMAILSRV_FAULTS=1 (`make fault-test`) -------------------

FAULT_TESTS = set()


def fault_test(op, ns, least, modes=BOTH, limit=240):
    """Registers fault_OP[mode]: fault_rounds for each storage mode (run only on a fault build);
    least: {mode: the rounds that must fire} (how often the path is known to call op)."""
    for m in modes:
        name = "fault_%s[%s]" % (op.replace("+", "_full"), m)
        TESTS.append((name, lambda ctx, storage: fault_rounds(ctx, op, ns, storage, least[storage]), {"storage": m}, limit))
        FAULT_TESTS.add(name)


def fault_fired(srv, op, n):
    """Whether the fault build's log says the injected fault fired at call n of op (mailsrv.c fault())."""
    return ("FAULT: %s call %d fails" % (op.rstrip("+"), n)) in srv.log_text()


def fault_start(srv, op, n, outcomes):
    """Starts srv with its fault set; False (the round noted) when the fault made the start fail,
    which must be the fault's doing."""
    try:
        srv.start()
        return True
    except TestFailure:
        check(fault_fired(srv, op, n), "N=%d: died at start, but no fault fired: %s" % (n, short(srv.log_text(), 300)))
        outcomes.append((n, "died at start"))
        return False


def fault_last_round(op, outcomes, least, normal, what=""):
    """The rounds (N, outcome) ended at one where no fault fired (N past the last call of op) and
    whose outcome was the normal one, after at least `least` rounds that did fire (the path is known
    to call op that often); prints them."""
    last = str(outcomes[-1][1]) if outcomes else ""
    check(last.startswith(normal) and last.endswith("no fault"),
          "the rounds did not end past the last %s with %s (raise the range?): %s" % (op, normal, outcomes))
    check(len(outcomes) - 1 >= least, "only %d rounds fired a %s fault, expected at least %d: %s"
          % (len(outcomes) - 1, op, least, outcomes))
    print("#   %s%s: %s" % (what, op, ", ".join("N=%s: %s" % o for o in outcomes)))


def fault_smtp(srv, rcpts, msg, sender=SENDER):
    """Sends msg; returns the reply that counts: 250 (all accepted), the 4xx/5xx code (a refused MAIL,
    RCPT or DATA; smtplib raises SMTPRecipientsRefused, which is no SMTPResponseException, when every
    RCPT is refused), or -1 when the connection closed before a reply (a crash)."""
    try:
        refused = srv.send(rcpts, msg, sender=sender)
    except smtplib.SMTPRecipientsRefused as e:
        codes = sorted(set(c for c, _ in e.recipients.values()))
        check(len(codes) == 1, "recipients refused with different codes: %s" % e.recipients)
        return codes[0]
    except smtplib.SMTPResponseException as e:  # SMTPSenderRefused, SMTPDataError and other replies
        return e.smtp_code
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        return -1
    check(refused == {}, "some recipients refused, some accepted: %s" % refused)
    return 250


def fault_rounds(ctx, op, ns, storage, least=1):
    """For N in ns: a server whose Nth `op` fails gets one message for a local and a remote
    recipient. The log must show the fault fired at call N. A 250 means both are (or will be)
    delivered whole; a 4xx that neither is; a closed connection (only a malloc failure aborts)
    that after a restart each copy is whole or absent, the remote one at most once; anything
    else (a 5xx after a temporary fault) fails. Checked after a restart without the fault. Stops
    at the first round whose fault never fired (N is past the last call), which must get 250;
    at least `least` rounds must have fired (the path is known to use op that often)."""
    outcomes = []
    for n in ns:
        net = Net(ctx)
        net.domain("remote.test")
        sink = net.sink()
        sink.script("rcpt", ["451 4.3.0 try again"])  # the first attempt defers: the queue entry is rewritten
        srv = net.server(storage=storage)
        srv.env = dict(os.environ, MAILSRV_FAULT="%s:%s" % (op.rstrip("+"), "%d%s" % (n, "+" if op.endswith("+") else "")))
        if not fault_start(srv, op, n, outcomes):
            srv.env = None
            continue
        t = tok()
        msg = make_msg(t, to="alice@example.test")
        code = fault_smtp(srv, ["alice@example.test", "user@remote.test"], msg)
        died = code == -1 and op == "malloc"
        check(code == 250 or 400 <= code < 500 or died, "N=%d: reply %d after a %s fault: must be 250 or 4xx%s"
              % (n, code, op, " (or a crash)" if op == "malloc" else ""))
        if code == 250:
            wait_for(lambda: sink.messages or "FAULT" in srv.log_text(), 10, "N=%d: the delivery, or a fault" % n)
        srv.stop()
        hit = fault_fired(srv, op, n)
        check(hit or "FAULT: " not in srv.log_text(), "N=%d: a fault fired at another call: %s" % (n, short(srv.log_text(), 300)))
        srv.env = None
        srv.start()  # no fault now: whatever the queue holds goes out
        local = [g["token"] for g in srv.fetch("alice@example.test")]
        if died:  # died before its reply: each copy is whole or absent, the remote one at most once
            check(local in ([], [t]), "N=%d: after the crash alice has %s" % (n, local))
            wait_queue_empty(srv, 20)
            check(len(sink.messages) <= 1, "N=%d: after the crash the remote got %d copies" % (n, len(sink.messages)))
            if sink.messages:
                check_relayed(sink.messages[0]["data"], msg, "N=%d: the remote copy after the crash" % n)
            code = "crash, local %d, remote %d" % (len(local), len(sink.messages))
        elif code == 250:
            check(local == [t], "N=%d: 250 but alice has %s" % (n, local))
            sink_wait(sink, 1, 15, "N=%d: the remote copy after 250" % n)
            check_relayed(sink.messages[0]["data"], msg, "N=%d" % n)
            wait_queue_empty(srv)
            check(len(sink.messages) == 1, "N=%d: 250 but the remote got %d copies" % (n, len(sink.messages)))
        else:
            check(local == [], "N=%d: reply %d but alice has %s" % (n, code, local))
            wait_queue_empty(srv)
            check(not sink.messages, "N=%d: reply %d but the remote got it" % (n, code))
        srv.stop()
        outcomes.append((n, code if hit else "%s, no fault" % code))
        if not hit:
            break
    fault_last_round(op, outcomes, least, "250", "")


fault_test("write", range(1, 40), {"maildir": 4, "mbox": 8})
fault_test("write+", [1, 2, 3, 4, 6, 8, 12, 60], {"maildir": 4}, modes=("maildir",))  # a full disk: every write fails from then on
fault_test("fsync", range(1, 40), {"maildir": 15, "mbox": 15})
fault_test("rename", range(1, 20), {"maildir": 1, "mbox": 1})
fault_test("link", range(1, 20), {"maildir": 3, "mbox": 1})
fault_test("malloc", range(1, 400), {"maildir": 72}, modes=("maildir",))


def fault_bounce(ctx, op, ns, storage, least):
    """Issue 12.2: alice relays to a sink that answers 550 for good; the Nth `op` fails (during the
    submission or while the bounce is written). 4xx: nothing anywhere. 250: after a restart without
    the fault, alice has exactly one bounce, whole, and the queue is empty (the bounce was delivered
    or the entry stayed to retry): nothing lost, no half bounce. Stops past the last call."""
    outcomes = []
    for n in ns:
        net = Net(ctx)
        net.domain("remote.test")
        sink = net.sink(rcpt_reply="550 5.1.1 no such user")
        srv = net.server(storage=storage)
        srv.env = dict(os.environ, MAILSRV_FAULT="%s:%d" % (op, n))
        if not fault_start(srv, op, n, outcomes):
            continue
        t = tok()
        msg = make_msg(t, to="nobody@remote.test", sender="alice@example.test")
        code = fault_smtp(srv, ["nobody@remote.test"], msg, sender="alice@example.test")
        check(code == 250 or 400 <= code < 500, "N=%d: reply %d after a %s fault: must be 250 or 4xx" % (n, code, op))
        if code == 250:  # the attempt, then the bounce (or its fault)
            wait_for(lambda: re.search(r"bounced \S+ to=<nobody@remote\.test>", srv.log_text()) or fault_fired(srv, op, n),
                     10, "N=%d: the 550, or the fault" % n)
        srv.stop()
        hit = fault_fired(srv, op, n)
        check(hit or "FAULT: " not in srv.log_text(), "N=%d: a fault fired at another call: %s" % (n, short(srv.log_text(), 300)))
        srv.env = None
        srv.start()
        if code == 250:
            wait_for(lambda: bounces(srv, "alice@example.test"), 20, "N=%d: after 250, a bounce in alice's mailbox" % n)
        wait_queue_empty(srv, 20)
        got = srv.fetch("alice@example.test")
        if code == 250:
            check(len(got) == 1, "N=%d: alice has %d messages, expected one bounce" % (n, len(got)))
            check_dsn(got[0]["data"], {"nobody@remote.test": "5.1.1"}, t, diag="550 5.1.1 no such user")
            check(("X-Test-Token: %s" % t).encode() in got[0]["data"], "N=%d: the bounce lacks the returned headers" % n)
        else:
            check(got == [], "N=%d: reply %d but alice has %d messages" % (n, code, len(got)))
        check(sink.messages == [], "N=%d: DATA sent with no accepted recipient" % n)
        srv.stop()
        outcomes.append((n, code if hit else "%s, no fault" % code))
        if not hit:
            break
    fault_last_round(op, outcomes, least, "250", "bounce, ")


def fault_list_round(srv, op, n, rcpts, msg, sender):
    """Sends msg from sender to a list address on srv, started with its fault: the reply must be
    250 or 4xx. Then restarts srv without the fault, for the state to be checked. Returns (the
    reply, whether the fault fired)."""
    r = fault_smtp(srv, rcpts, msg, sender=sender)
    check(r == 250 or 400 <= r < 500, "N=%d: reply %d after a %s fault: must be 250 or 4xx" % (n, r, op))
    srv.stop()
    hit = fault_fired(srv, op, n)
    check(hit or "FAULT: " not in srv.log_text(), "N=%d: a fault fired at another call: %s" % (n, short(srv.log_text(), 300)))
    srv.env = None
    srv.start()
    return r, hit


def fault_list_confirm(ctx, op, ns, least):
    """Issue 12.2: bob confirms his subscription to a server whose Nth `op` fails. Afterwards (restarted
    without the fault) the list state is the old (bob's request still open, not a member) or the new
    (bob a member), never broken; 250 means the new, the old means the client got 4xx."""
    outcomes = []
    bob = "bob@example.test"
    for n in ns:
        srv = list_server(ctx, post="anyone")
        check(list_req(srv, bob, "subscribe") == {}, "N=%d: subscribe refused" % n)
        code = local_confirmation(srv, bob)
        srv.stop()
        srv.env = dict(os.environ, MAILSRV_FAULT="%s:%d" % (op, n))
        if not fault_start(srv, op, n, outcomes):
            continue
        msg = ("From: <%s>\r\nTo: <news-confirm-%s@example.test>\r\nSubject: Re: Confirm\r\nMessage-ID: <%s@client.test>"
               "\r\n\r\nyes\r\n" % (bob, code, tok())).encode()
        r, hit = fault_list_round(srv, op, n, ["news-confirm-%s@example.test" % code], msg, bob)
        out = list_cli(srv, LIST)
        m = members(srv)
        old = m == [] and "open request: subscribe %s" % bob in out
        check(old or (m == [bob] and "open request" not in out), "N=%d: the list state is broken: %s" % (n, short(out, 300)))
        check(r != 250 or not old, "N=%d: 250 but bob is no member: %s" % (n, short(out, 300)))
        check(not old or r != 250, "N=%d: the old state but the reply was %d" % (n, r))
        srv.stop()
        outcomes.append((n, "%s, %s%s" % (r, "old" if old else "new", "" if hit else ", no fault")))
        if not hit:
            break
    fault_last_round(op, outcomes, least, "250", "list confirm, ")


def fault_list_subscribe(ctx, op, ns, least):
    """Issue 12.2: bob asks to subscribe, to a server whose Nth `op` fails. Afterwards (restarted
    without the fault) the list has no open request (the old state) or one whose confirmation is
    stored whole in bob's mailbox (the new): never a request whose code bob cannot have. A 250
    means the new state; no member either way, nothing changes until bob confirms."""
    outcomes = []
    bob = "bob@example.test"
    for n in ns:
        srv = list_server(ctx, post="anyone")
        srv.stop()
        srv.env = dict(os.environ, MAILSRV_FAULT="%s:%d" % (op, n))
        if not fault_start(srv, op, n, outcomes):
            continue
        msg = ("From: <%s>\r\nTo: <news-subscribe@example.test>\r\nSubject: subscribe\r\nMessage-ID: <%s@client.test>"
               "\r\n\r\nplease\r\n" % (bob, tok())).encode()
        r, hit = fault_list_round(srv, op, n, ["news-subscribe@example.test"], msg, bob)
        out = list_cli(srv, LIST)
        codes = confirmations(g["data"] for g in srv.fetch(bob))
        pending = re.findall(r"open request: subscribe (\S+),", out)
        check(members(srv) == [], "N=%d: a member without a confirmation: %s" % (n, short(out, 300)))
        check(pending in ([], [bob]), "N=%d: the list state is broken: %s" % (n, short(out, 300)))
        new = pending == [bob]
        check(not new or codes, "N=%d: an open request, but no confirmation reached bob: %s" % (n, short(out, 300)))
        check(r != 250 or new, "N=%d: 250 but no open request: %s" % (n, short(out, 300)))
        if new:  # the code bob holds is the one the list keeps: his reply makes him a member
            check(confirm(srv, bob, codes[-1]) == {}, "N=%d: confirmation refused" % n)
            check(members(srv) == [bob], "N=%d: bob's stored code %s did not confirm him" % (n, codes[-1]))
        srv.stop()
        outcomes.append((n, "%s, %s%s" % (r, "new" if new else "old", "" if hit else ", no fault")))
        if not hit:
            break
    fault_last_round(op, outcomes, least, "250", "list subscribe, ")


for _op, _least in (("write", 4), ("fsync", 12), ("rename", 1), ("link", 2)):  # least: the calls a request is known to make
    _name = "fault_list_subscribe_%s" % _op
    TESTS.append((_name, (lambda op, least: lambda ctx: fault_list_subscribe(ctx, op, range(1, 80), least))(_op, _least), {}, 300))
    FAULT_TESTS.add(_name)


for _op, _least in (("write", 4), ("fsync", 5), ("rename", 1), ("link", 1)):  # least: the calls a confirmation is known to make
    _name = "fault_list_confirm_%s" % _op
    TESTS.append((_name, (lambda op, least: lambda ctx: fault_list_confirm(ctx, op, range(1, 80), least))(_op, _least), {}, 300))
    FAULT_TESTS.add(_name)


for _op, _least in (("write", {"maildir": 4, "mbox": 8}), ("fsync", {"maildir": 14, "mbox": 14}),
                    ("link", {"maildir": 3, "mbox": 1})):  # a bounce calls no rename
    for _m in BOTH:
        _name = "fault_bounce_%s[%s]" % (_op, _m)
        TESTS.append((_name, (lambda op, least: lambda ctx, storage: fault_bounce(ctx, op, range(1, 60), storage, least[storage]))(_op, _least),
                      {"storage": _m}, 300))
        FAULT_TESTS.add(_name)


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


# =============================================================================================
# trust: randomness, half-written INI and `mailsrv reload`, TLS renegotiation, gencert names (issue 11: 3, 7, 8, 11)
# (section: cfg)


class _Piped:
    """A running program whose stdout+stderr a thread collects; wait_text polls it (bounded)."""
    def __init__(self, args):
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = b""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            b = self.proc.stdout.read1(4096)
            if not b:
                return
            with self.lock:
                self.out += b

    def text(self):
        with self.lock:
            return self.out.decode("latin-1")

    def send(self, s):
        try:
            self.proc.stdin.write(s.encode())
            self.proc.stdin.flush()
        except OSError:
            pass

    def wait_text(self, pred, timeout, what):
        return wait_for(lambda: pred(self.text()) or (self.proc.poll() is not None and pred(self.text())), timeout, what)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=secs(10))
        self.thread.join(timeout=secs(5))


@test(tls=True, limit=60)
def cfg_tls_renegotiation_refused(ctx):
    """Issue 11 (8): a client's renegotiation (RFC 5746 secure renegotiation included) is refused: each one
    costs the server a full handshake. openssl s_client's `R` line renegotiates; BearSSL with
    BR_OPT_NO_RENEGOTIATION answers a no_renegotiation alert (RFC 5246 7.2.2), which OpenSSL takes as fatal."""
    srv = tls_server(ctx).start()
    if not shutil.which("openssl"):
        raise TestFailure("the openssl command is not installed")
    p = _Piped(["openssl", "s_client", "-connect", "127.0.0.1:%d" % srv.smtps_port, "-crlf", "-tls1_2",
                "-servername", TLS_HOST])
    try:
        p.wait_text(lambda t: re.search(r"(?m)^220 ", t), 20, "the smtps greeting through s_client")
        p.send("EHLO client.test\n")
        p.wait_text(lambda t: re.search(r"(?m)^250 ", t), 10, "the EHLO reply")
        p.send("R\n")
        p.wait_text(lambda t: "RENEGOTIATING" in t, 10, "s_client starting a renegotiation")
        p.send("NOOP\n")  # the renegotiation handshake runs before this is sent
        # refused: s_client gets the alert and exits; accepted: NOOP gets its 250 on the renegotiated session
        p.wait_text(lambda t: p.proc.poll() is not None or len(re.findall(r"(?m)^250 ", t)) >= 2, 20,
                    "s_client to end or NOOP to be answered")
        out = p.text()
        check(len(re.findall(r"(?m)^250 ", out)) < 2, "the server renegotiated (NOOP answered on the new session): %s"
              % short(out[-600:], 600))
        check(re.search(r"(?i)no.renegotiation|handshake failure|alert", out),
              "s_client ended without a renegotiation refusal: %s" % short(out[-600:], 600))
    finally:
        p.close()
    # the server itself is fine: a new session works
    c = smtps_conn(srv)
    c.expect("QUIT", 221)


@test(tls=True, limit=60)
def tls_relay_client_refuses_renegotiation(ctx):
    """README: no renegotiation as relay client either. The next hop is openssl s_server behind a
    plain-text SMTP prelude the test plays (220, EHLO offering STARTTLS, 220 to STARTTLS; then the
    bytes go to s_server). Once the relay's EHLO arrived over TLS, s_server's `R` line sends a
    HelloRequest: the relay answers a no_renegotiation alert (RFC 5246 7.2.2), never a second
    ClientHello, and the message is not delivered there."""
    openssl = need_program("openssl", "openssl")
    d = os.path.join(ctx.dir, "hop")
    os.mkdir(d)
    cert, key = make_cert(d, "ec-pkcs8", host="mx.b.test")
    tls_port, smtp_port = free_ports(2)
    hop = _Piped([openssl, "s_server", "-accept", "127.0.0.1:%d" % tls_port, "-tls1_2", "-cert", cert, "-key", key,
                  "-crlf", "-msg"])
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", smtp_port))
    lsock.listen(1)
    lsock.settimeout(secs(20))

    def prelude_then_splice():
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        with c:
            c.settimeout(secs(20))
            f = c.makefile("rb")
            c.sendall(b"220 mx.b.test ESMTP\r\n")
            f.readline()  # EHLO
            c.sendall(b"250-mx.b.test\r\n250 STARTTLS\r\n")
            f.readline()  # STARTTLS
            c.sendall(b"220 2.0.0 go ahead\r\n")
            t = socket.create_connection(("127.0.0.1", tls_port), timeout=secs(20))
            with t:
                def pump(src, dst):
                    try:
                        while True:
                            b = src.recv(65536)
                            if not b:
                                break
                            dst.sendall(b)
                    except OSError:
                        pass
                    for s_ in (src, dst):
                        try:
                            s_.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                th = threading.Thread(target=pump, args=(t, c), daemon=True)
                th.start()
                pump(c, t)
                th.join(timeout=secs(20))

    splice = threading.Thread(target=prelude_then_splice, daemon=True)
    try:
        hop.wait_text(lambda t: "ACCEPT" in t, 20, "s_server to listen")
        splice.start()
        a = ctx.server(server={"hostname": "mx.a.test"}, domains=A_DOMAINS,
                       sections={"relay": {"retry": "1h", "timeout": "10"}, "route": {"b.test": "127.0.0.1:%d" % smtp_port}})
        a.start()
        relay_one(a)
        hop.wait_text(lambda t: re.search(r"(?m)^EHLO ", t), 20, "the relay's EHLO over TLS at s_server")
        hop.send("R\n")
        hop.wait_text(lambda t: re.search(r"(?m)^<<< TLS [\d.]+, Alert .*no_renegotiation", t), 10,
                      "the relay's no_renegotiation alert (s_server -msg: <<< ... Alert ... no_renegotiation)")
        out = hop.text()
        check(out.count("ClientHello") == 1, "the relay renegotiated (%d ClientHellos): %s" % (out.count("ClientHello"), short(out[-800:], 800)))
        check(not re.search(r"(?m)^MAIL FROM", out), "the relay went on to MAIL FROM after the HelloRequest")
    finally:
        hop.close()
        lsock.close()
        splice.join(timeout=secs(20))


def _lcg_rebuild(code, pid, secs_range, ms_range):
    """The confirmation code `code` (hex) as the old fallback made it from time(NULL) + pid + monotonic ms
    (state 0 at the process's first call; each byte: state = state * A + time + pid + ms; byte = state >> 33),
    rebuilt as an attacker would from the log's second, the pid and the uptime: True when it matches."""
    want = bytes.fromhex(code)
    a, mask = 6364136223846793005, (1 << 64) - 1

    def walk(state, v, i):
        if i == len(want):
            return True
        for step in range(4):  # the clock may tick between two bytes
            s = (state * a + v + step) & mask
            if (s >> 33) & 0xff == want[i] and walk(s, v + step, i + 1):
                return True
        return False
    lo = secs_range[0] + pid + ms_range[0]
    hi = secs_range[1] + pid + ms_range[1]
    return any(walk(0, v, 0) for v in range(lo, hi + 1))


def _mono_ms():
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1000)


@test(unix_only=True, limit=60)
def cfg_random_without_dev_urandom(ctx):
    """Issue 11 (3): with no /dev/urandom (a chroot; here an empty /dev in a private mount namespace), the server
    still takes its randomness from the system (getentropy: no descriptor, no file). Before, it fell back to a
    time+pid LCG, and a list confirmation code was rebuilt from the log's time, the pid and the uptime."""
    need_root()
    unshare = need_program("unshare", "util-linux")
    probe = subprocess.run([unshare, "-m", "sh", "-c", "mount -t tmpfs none /dev && ! test -e /dev/urandom"],
                           capture_output=True, text=True, timeout=secs(10))
    if probe.returncode != 0:  # a container without CAP_SYS_ADMIN: no mount namespace
        why = "cannot hide /dev in a mount namespace here: %s" % short(probe.stderr)
        if os.environ.get("CI") == "true":
            raise TestFailure(why)
        raise Skip(why)
    srv = ctx.server(sections={"list " + LIST: {"owner": "alice@example.test", "post": "members"}})
    logf = open(srv.log, "ab")
    try:  # Server.start, with /dev hidden by an empty tmpfs in the server's own mount namespace
        srv.proc = subprocess.Popen([unshare, "-m", "sh", "-c", 'mount -t tmpfs none /dev && exec "$@"', "sh"]
                                    + RUN + [BIN, "-c", srv.ini], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    cwd=srv.dir)
    finally:
        logf.close()
    srv.wait_ready()
    t0, m0 = int(time.time()), _mono_ms()
    check(list_req(srv, "bob@example.test", "subscribe") == {}, "subscribe request refused: %s" % short(srv.log_text()[-400:]))
    code = local_confirmation(srv, "bob@example.test")
    t1, m1 = int(time.time()) + 1, _mono_ms() + 1
    check(len(code) == 24, "confirmation code %r: not 24 hex digits" % code)
    check(not _lcg_rebuild(code, srv.proc.pid, (t0, t1), (m0, m1)),
          "confirmation code %s rebuilt from time %d-%d, pid %d and uptime %d-%d ms: the time+pid fallback made it"
          % (code, t0, t1, srv.proc.pid, m0, m1))
    # and the code works
    check(confirm(srv, "bob@example.test", code) == {}, "confirmation refused")
    wait_for(lambda: members(srv) == ["bob@example.test"], 10, "bob to be a member")


def cfg_fault_random(ctx):
    """Issue 11 (3), on the fault build (MAILSRV_FAULT=random:N): when the system's generator fails, nothing
    weak is used instead. At start: the server refuses to start and says why. Later: a list request gets a 4xx
    (and a log line), no confirmation code is made; `mailsrv passwd` makes no hash."""
    srv = ctx.server(sections={"list " + LIST: {"owner": "alice@example.test", "post": "members"}})
    srv.env = dict(os.environ, MAILSRV_FAULT="random:1")
    srv.start(wait=False)
    try:
        rc = srv.proc.wait(timeout=secs(10))
    except subprocess.TimeoutExpired:
        raise TestFailure("the server started without a working random generator")
    check(rc != 0, "exit status %d without a random generator" % rc)
    check("random generator does not work" in srv.log_text(), "no reason given: %s" % short(srv.log_text()[-400:]))
    srv.env = dict(os.environ, MAILSRV_FAULT="random:2+")  # works at start, then fails every time
    srv.start()
    try:
        refused = list_req(srv, "bob@example.test", "subscribe")
        code = 250 if refused == {} else 0
    except smtplib.SMTPResponseException as e:
        code = e.smtp_code
    check(400 <= code < 500, "subscribe without a random generator: reply %d, expected 4xx" % code)
    wait_for(lambda: "random generator failed" in srv.log_text(), 5, "the log line")
    check(confirmations(g["data"] for g in srv.fetch("bob@example.test")) == [], "a confirmation code was sent")
    r = subprocess.run(RUN + [BIN, "passwd"], input="a good passw0rd\n", capture_output=True, text=True,
                       timeout=secs(20), env=dict(os.environ, MAILSRV_FAULT="random:1"))
    check(r.returncode != 0 and "$pbkdf2" not in r.stdout, "passwd without a generator: exit %d, %s"
          % (r.returncode, short(r.stdout + r.stderr)))
    srv.stop()


TESTS.append(("cfg_fault_random", cfg_fault_random, {}, 60))
FAULT_TESTS.add("cfg_fault_random")  # only on the fault build, which `make fault-test` runs


def _own_address():
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            a = s.getsockname()[0]
            return None if a.startswith("127.") or a == "0.0.0.0" else a
    except OSError:
        return None


@test(tls=True, limit=90)
def cfg_gencert_names(ctx):
    """Issue 11 (11): gencert's certificate names what clients connect to: hostname, the machine's name,
    localhost, 127.0.0.1, ::1, the machine's own addresses, and --name/--ip (repeatable). Clients that verify
    (Python ssl with check_hostname, msmtp) then accept it by IP and by localhost (RFC 6125 6.4, RFC 5280 4.2.1.6)."""
    six = have_ipv6()
    srv = ctx.server(server={"hostname": "mail.gen.test", "tls_cert": "cert.pem", "tls_key": "key.pem",
                             "smtps": "auto"})
    if six:
        srv.keys["smtps"] += ", [::1]:%d" % srv.smtps_port
        srv.write_ini()
    r = run_cli(["-c", srv.ini, "gencert", "--name", "mx.extra.test", "--name", "Other.Example", "--ip", "192.0.2.77",
                 "--ip", "2001:db8::77"], cwd=ctx.dir)
    check(r.returncode == 0, "gencert --name --ip: exit %d, %s" % (r.returncode, short(r.stdout + r.stderr, 400)))
    cert = os.path.join(srv.dir, "cert.pem")
    text = openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName").stdout
    sans = set(x.strip() for x in text.split("\n", 1)[-1].replace("\n", ",").split(",") if x.strip())
    want = {"DNS:mail.gen.test", "DNS:localhost", "DNS:mx.extra.test", "DNS:other.example", "IP Address:127.0.0.1",
            "IP Address:0:0:0:0:0:0:0:1", "IP Address:192.0.2.77", "IP Address:2001:DB8:0:0:0:0:0:77"}
    machine = socket.gethostname()
    if machine and not WINDOWS:  # wine's computer name need not be the host's
        want.add("DNS:" + machine.lower())
    own = _own_address()
    if own:
        want.add("IP Address:" + own)
    check(want <= sans, "subjectAltName lacks %s; has %s" % (sorted(want - sans), sorted(sans)))
    check(re.search(r"(?i)subject\s*[:=].*CN\s*=\s*mail\.gen\.test", openssl("x509", "-in", cert, "-noout", "-subject").stdout),
          "the CN is not hostname")
    # bad options are refused, and write nothing
    for bad in (["--ip", "300.1.1.1"], ["--name", "bad name"], ["--name"], ["--bogus", "x"]):
        r = run_cli(["-c", srv.ini, "gencert"] + bad, cwd=ctx.dir)
        check(r.returncode != 0, "gencert %s: exit 0" % " ".join(bad))
    srv.start()
    targets = [("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "localhost"), ("127.0.0.1", "mail.gen.test")]
    if six:
        targets.append(("::1", "::1"))
    for addr, name in targets:  # verifying clients: the certificate as the CA, host names checked
        c = ctx.track(Smtp(srv.smtps_port, addr))
        handshake(c, tls_client_ctx(cafile=cert), "smtps to %s as %s" % (addr, name), server_hostname=name)
        code, text = c.reply()
        check(code == 220, "greeting to %s: %s" % (name, short(text)))
        c.expect("QUIT", 221)
    msmtp = need_program("msmtp", "msmtp")
    for host in ["127.0.0.1", "localhost"] + (["::1"] if six else []):
        r = subprocess.run([msmtp, "--serverinfo", "--host=" + host, "--port=%d" % srv.smtps_port, "--tls=on",
                            "--tls-starttls=off", "--tls-trust-file=" + cert, "--domain=client.test"],
                           capture_output=True, text=True, timeout=secs(30))
        check(r.returncode == 0 and "mail.gen.test" in r.stdout,
              "msmtp --host=%s (verifying): exit %d, %s" % (host, r.returncode, short(r.stdout + r.stderr, 400)))


def _write_now(path, text):
    with open(path, "w") as f:
        f.write(text)
        f.flush()


@test(limit=90)
def cfg_reload_half_written_ini(ctx):
    """Issue 11 (7): an INI written in two steps with a pause (an editor, scp, a slow script) is not loaded
    half-way. The first part is valid INI but lacks the group address (alias) and the list: loaded, those
    would answer 550 until the rest came. The server loads a file only once its size, mtime and inode have
    stayed the same for MS_RELOAD_STABLE_MS (3 s); the old one loaded whatever it found every 2 s."""
    srv = ctx.server()
    srv.write_ini(srv.ini_text() + "\n[list %s]\nowner = alice@example.test\npost = members\n" % LIST)
    srv.start()
    full = read(srv.ini).decode()
    # valid INI on its own, with its postmaster, but without the group team@ and the list (they come after)
    cut = full.index("postmaster = alice\n") + len("postmaster = alice\n")
    probes = ("team@example.test", "news-help@example.test")
    check(all(srv.rcpt_code(a)[0] == 250 for a in probes), "test bug: %s not accepted at first" % (probes,))
    for rnd in range(3):  # a round whose pause was stretched (a loaded machine) proves nothing: again
        base = len(re.findall(r"configuration loaded", srv.log_text()))
        full2 = full.replace("carol = Passw0rd3", "carol%d = Passw0rd3" % rnd, 1)  # a real change, same sections
        t0 = time.monotonic()
        _write_now(srv.ini, full2[:cut])
        codes = []
        while time.monotonic() - t0 < 2.2:  # longer than the old check interval: it saw the half file
            for addr in probes:
                codes.append((addr, srv.rcpt_code(addr)[0]))
            time.sleep(0.1)
        _write_now(srv.ini, full2)
        pause = time.monotonic() - t0
        if pause > 2.8:
            print("#   round %d: the pause took %.1fs: again" % (rnd, pause))
            continue
        bad = [c for c in codes if c[1] != 250]
        check(not bad, "while the INI was half-written: %s (log: %s)" % (bad[:4], short(srv.log_text()[-500:], 500)))
        wait_for(lambda: len(re.findall(r"configuration loaded", srv.log_text())) > base, 10, "the whole file to load")
        check(srv.rcpt_code("carol%d@example.test" % rnd)[0] == 250, "the whole file's change is not in force")
        check(all(srv.rcpt_code(a)[0] == 250 for a in probes), "group or list lost")
        check(len(re.findall(r"configuration loaded", srv.log_text())) == base + 1,
              "loaded more than once: %s" % short(srv.log_text()[-500:], 500))
        return
    # natively a pause of 2.2 s three times stretched past 2.8 s is not expected: CI fails on it
    raise Skip("every pause was stretched past 2.8 s (machine too loaded)", None if native_time() else "timing")


@test(limit=60)
def cfg_reload_command(ctx):
    """Issue 11 (7): `mailsrv reload` makes the running server load its INI now (no debounce: the admin says
    the file is complete), through a request file in the queue folder as `flush` does (every platform; no
    pid file, no signal). It checks the file first, and says when no server took the request."""
    srv = ctx.server().start()
    text = read(srv.ini).decode()
    srv.write_ini(text.replace("carol = Passw0rd3", "cathy = Passw0rd3", 1))
    r = run_cli(["-c", srv.ini, "reload"])
    check(r.returncode == 0, "reload: exit %d, %s" % (r.returncode, short(r.stdout + r.stderr, 300)))
    # done when it returns: the server took the request and loaded the file
    check(srv.rcpt_code("cathy@example.test")[0] == 250, "cathy not valid right after `mailsrv reload` returned")
    check(srv.rcpt_code("carol@example.test")[0] == 550, "carol still valid after `mailsrv reload`")
    # a file with errors: refused by the command, the server keeps the running configuration
    srv.write_ini(text.replace("[server]\n", "[server]\nno_such_key = 1\n", 1))
    r = run_cli(["-c", srv.ini, "reload"])
    check(r.returncode == 1 and "no_such_key" in r.stderr, "reload of a bad file: exit %d, %s"
          % (r.returncode, short(r.stdout + r.stderr, 300)))
    check(srv.rcpt_code("cathy@example.test")[0] == 250, "the running configuration was not kept")
    # no server running: it says so, and leaves no request behind
    srv.write_ini(text)
    srv.stop()
    r = run_cli(["-c", srv.ini, "reload"])
    check(r.returncode == 1 and "no running server" in r.stderr, "reload without a server: exit %d, %s"
          % (r.returncode, short(r.stdout + r.stderr, 300)))
    check(not os.path.exists(os.path.join(srv.queue, "reload")), "the request file stayed behind")


@test(limit=60)
def cfg_reload_storage_refused(ctx):
    """Issue 11 (7): storage, spool, queue and user are only read at start: a reload that changes them logs
    "... takes effect after a restart" and keeps the running value; everything else in the file applies.
    Before, maildir -> mbox on a reload hid every message (POP3 looked in the mbox files)."""
    srv = ctx.server().start()
    t, _ = srv.deliver("bob@example.test")
    text = read(srv.ini).decode()
    new = text.replace("storage = maildir", "storage = mbox", 1).replace("spool = spool", "spool = other-spool", 1)
    new = new.replace("carol = Passw0rd3", "cathy = Passw0rd3", 1)
    check(new.count("mbox") == 1 and "other-spool" in new, "test bug: keys not found in %s" % short(text, 300))
    base = len(re.findall(r"configuration loaded", srv.log_text()))
    srv.write_ini(new)
    wait_for(lambda: len(re.findall(r"configuration loaded", srv.log_text())) > base, 15, "the reload")
    log = srv.log_text()
    check(re.search(r"storage = mbox.*takes effect after a restart", log), "no refusal of storage: %s" % short(log[-600:], 600))
    check(re.search(r"spool = .*other-spool.*takes effect after a restart", log), "no refusal of spool: %s" % short(log[-600:], 600))
    check(srv.rcpt_code("cathy@example.test")[0] == 250, "the rest of the file did not apply")
    got = [m["token"] for m in srv.fetch("bob@example.test")]
    check(got == [t], "bob's mail after the reload: %s (expected the message delivered before)" % got)
    t2, _ = srv.deliver("bob@example.test")
    check([m["token"] for m in srv.fetch("bob@example.test")] == [t, t2], "a new message is not beside the old one")
    check(not os.path.exists(os.path.join(srv.dir, "other-spool")), "the new spool was used")
    # a restart takes them
    srv.restart()
    check("mbox storage in" in srv.log_text() and "other-spool" in srv.log_text().split("started")[-1],
          "the restart did not take the new storage and spool: %s" % short(srv.log_text()[-400:], 400))

# end of section: cfg


# =============================================================================================
# trust: the fail2ban filter through fail2ban-regex, header overflow, over-long paths (issue 11: 12, 13a, 13c)
# (section: smtpfix)
# Finding 12: the fail2ban filter shipped in packaging/fail2ban/, through the real fail2ban.

F2B_FILTER = os.path.join(REPO, "packaging", "fail2ban", "filter.d", "mailsrv.conf")
F2B_JAIL = os.path.join(REPO, "packaging", "fail2ban", "jail.d", "mailsrv.conf")


def fail2ban_regex(log):
    """The addresses fail2ban-regex (Debian's fail2ban) finds in the file log with the shipped filter:
    one per matched line."""
    prog = need_program("fail2ban-regex", "fail2ban")
    check(os.path.exists(F2B_FILTER), "no filter at %s" % F2B_FILTER)
    # an absolute path: a bare file name is taken as a regex
    r = subprocess.run([prog, "-o", "ip", log, F2B_FILTER], capture_output=True, text=True, timeout=secs(60))
    check(r.returncode == 0, "fail2ban-regex: exit %d: %s %s" % (r.returncode, short(r.stdout, 600), short(r.stderr, 600)))
    return r.stdout.split()


def smtp_from(srv, host, source=None):
    c = srv.ctx.track(Smtp(srv.smtp_port if host == "127.0.0.1" else srv.smtp6_port, host, source=source))
    check(c.reply()[0] == 220, "no SMTP greeting")
    c.expect("EHLO client.test", 250)
    return c


@test(limit=90)
def smtpfix_fail2ban_regex(ctx):
    need_ipv6()
    srv = ctx.server()
    p6 = free_ports(2, "::1")
    srv.keys["smtp"] += ", [::1]:%d" % p6[0]
    srv.keys["pop3"] += ", [::1]:%d" % p6[1]
    srv.smtp6_port = p6[0]
    srv.write_ini()
    srv.start(args=["-v"])  # the client's commands are logged too: none of them may match
    # a client writing what a failure line looks like, where the log shows what it sent
    c = smtp_from(srv, "127.0.0.1")
    c.expect("NOOP [s1] auth failed from 10.6.6.6 user=<x>", 250)
    c.expect("AUTH PLAIN " + plain("alice@example.test", "Passw0rd1"), 235)  # a success
    c.close()
    # four failures: SMTP and POP3, IPv4 and IPv6 (the user name imitates a log line too)
    fake = "x> [s1] auth failed from 10.7.7.7 user=<y"
    c = smtp_from(srv, "127.0.0.1")
    c.expect("AUTH PLAIN " + plain(fake, "wrong"), 535)
    c = smtp_from(srv, "::1")
    c.expect("AUTH PLAIN " + plain("alice@example.test", "wrong"), 535)
    for host, port in (("127.0.0.1", srv.pop3_port), ("::1", p6[1])):
        p = ctx.track(Pop(port, host))
        p.greet()
        p.ok("USER alice@example.test")
        p.err("PASS wrong")
    fails = lambda: [l for l in srv.log_text().splitlines() if re.match(r"\S+ \[[sp]\d+\] auth failed from ", l)]
    wait_for(lambda: len(fails()) == 4, 10, "four failures in the log")
    text = srv.log_text()
    f = os.path.join(ctx.dir, "fail.log")
    with open(f, "w") as out:
        out.write(text)
    got = fail2ban_regex(f)
    check(sorted(got) == sorted(["127.0.0.1", "127.0.0.1", "::1", "::1"]),
          "fail2ban-regex found %s in a log with 2 failures from 127.0.0.1 and 2 from ::1:\n%s" % (got, text))
    # everything else mailsrv wrote (a success, commands, sessions): nothing matches
    rest = os.path.join(ctx.dir, "rest.log")
    with open(rest, "w") as out:
        out.write("".join(l + "\n" for l in text.splitlines() if not re.match(r"\S+ \[[sp]\d+\] auth failed from ", l)))
    got = fail2ban_regex(rest)
    check(got == [], "fail2ban-regex matched %s in lines that are not failures" % got)


def need_debian_piece(ok, what, package):
    """need_program's rule for what is not a program on PATH: skipped where missing, a failure under CI."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        raise TestFailure("%s is missing (Debian package %s; .ci/run installs it)" % (what, package))
    raise Skip("%s missing (apt-get install %s)" % (what, package))


@test(limit=60, unix_only=True)
def smtpfix_fail2ban_journal(ctx):
    """backend = systemd: mailsrv's lines as journald keeps a service's stderr (MESSAGE with
    SYSLOG_IDENTIFIER, _PID, _SYSTEMD_UNIT), in a journal file written by systemd-journal-remote,
    read by fail2ban-regex through fail2ban's own systemd backend."""
    regex = need_program("fail2ban-regex", "fail2ban")
    remote = "/lib/systemd/systemd-journal-remote"
    need_debian_piece(os.path.exists(remote), remote, "systemd-journal-remote")
    with open(regex) as f:  # fail2ban's interpreter (Debian's python3), not ours
        py = f.readline()[2:].split()
    need_debian_piece(subprocess.run(py + ["-c", "import systemd.journal"], capture_output=True).returncode == 0,
                      "the Python module systemd.journal", "python3-systemd")
    srv = ctx.server().start()
    c = smtp_from(srv, "127.0.0.1")
    c.expect("NOOP [s1] auth failed from 10.6.6.6 user=<x>", 250)
    c.expect("AUTH PLAIN " + plain("alice@example.test", "wrong"), 535)
    c.close()
    p = ctx.track(Pop(srv.pop3_port, "127.0.0.1"))
    p.greet()
    p.ok("USER alice@example.test")
    p.err("PASS wrong")
    lines = [l for l in srv.log_text().splitlines() if l.strip()]
    check(sum(" auth failed from 127.0.0.1 " in l for l in lines) == 2, "two failures in %s" % lines)
    now = int(time.time() * 1e6)
    export = "".join("__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n_BOOT_ID=%s\n_HOSTNAME=box\n"
                     "SYSLOG_IDENTIFIER=mailsrv\n_PID=4242\n_SYSTEMD_UNIT=mailsrv.service\nMESSAGE=%s\n\n"
                     % (now + i, 1000 + i, "0123456789abcdef0123456789abcdef", l) for i, l in enumerate(lines))
    journal = os.path.join(ctx.dir, "mailsrv.journal")
    r = subprocess.run([remote, "-o", journal, "-"], input=export, capture_output=True, text=True, timeout=secs(30))
    check(r.returncode == 0 and os.path.exists(journal), "systemd-journal-remote: %s %s" % (r.returncode, short(r.stderr)))
    r = subprocess.run([regex, "-o", "ip", 'systemd-journal[journalfiles="%s"]' % journal, F2B_FILTER],
                       capture_output=True, text=True, timeout=secs(60))
    check(r.returncode == 0, "fail2ban-regex: %d %s %s" % (r.returncode, short(r.stdout, 400), short(r.stderr, 400)))
    check(r.stdout.split() == ["127.0.0.1", "127.0.0.1"],
          "fail2ban-regex read %s from the journal, expected 127.0.0.1 twice" % r.stdout.split())


def f2b_wait_ban(path, ip, timeout):
    def banned():
        try:
            with open(path) as f:
                return ip in f.read().split()
        except OSError:
            return False
    wait_for(banned, timeout, "fail2ban's ban action for %s" % ip, 0.2)


@test(limit=120, unix_only=True)
def smtpfix_fail2ban_server_bans(ctx):
    need_root()
    server = need_program("fail2ban-server", "fail2ban")
    client = need_program("fail2ban-client", "fail2ban")
    srv = ctx.server()
    srv.keys["relay_networks"] = "127.0.0.1/32"  # 127.0.0.5 is an outsider
    srv.write_ini()
    srv.start()
    conf = os.path.join(ctx.dir, "f2b")
    for d in ("filter.d", "action.d", "jail.d"):
        os.makedirs(os.path.join(conf, d))
    shutil.copy(F2B_FILTER, os.path.join(conf, "filter.d", "mailsrv.conf"))
    shutil.copy(F2B_JAIL, os.path.join(conf, "jail.d", "mailsrv.conf"))
    banned = os.path.join(ctx.dir, "banned")
    sock, pid = os.path.join(ctx.dir, "f2b.sock"), os.path.join(ctx.dir, "f2b.pid")
    with open(os.path.join(conf, "fail2ban.conf"), "w") as f:
        f.write("[Definition]\nloglevel = INFO\nlogtarget = %s\nsocket = %s\npidfile = %s\ndbfile = :memory:\n"
                % (os.path.join(ctx.dir, "f2b.log"), sock, pid))
    with open(os.path.join(conf, "action.d", "tofile.conf"), "w") as f:  # instead of a firewall
        f.write("[Definition]\nactionstart =\nactionstop =\nactioncheck =\n"
                "actionban = echo <ip> >> %s\nactionunban =\n" % banned)
    with open(os.path.join(conf, "jail.conf"), "w") as f:  # the shipped jail, pointed at this server
        f.write("[DEFAULT]\nbackend = polling\nbanaction = tofile\naction = tofile\n")
    with open(os.path.join(conf, "jail.local"), "w") as f:
        f.write("[mailsrv]\nlogpath = %s\nmaxretry = 3\n" % srv.log)
    proc = subprocess.Popen([server, "-f", "-x", "-c", conf, "-s", sock, "-p", pid], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def ready():
            r = subprocess.run([client, "-c", conf, "-s", sock, "status", "mailsrv"], capture_output=True,
                               text=True, timeout=secs(20))
            return r.returncode == 0 and "Currently failed" in r.stdout
        wait_for(ready, 30, "fail2ban-server with the jail mailsrv", 0.3)
        for i in range(3):  # from 127.0.0.5, a new connection each time
            c = ctx.track(Smtp(srv.smtp_port, "127.0.0.1", source="127.0.0.5"))
            c.reply()
            c.expect("EHLO client.test", 250)
            c.expect("AUTH PLAIN " + plain("alice@example.test", "wrong%d" % i), 535)
            c.close()
        f2b_wait_ban(banned, "127.0.0.5", 30)
        with open(banned) as f:
            check(f.read().split() == ["127.0.0.5"], "banned: %s" % short(open(banned).read()))
    finally:
        subprocess.run([client, "-c", conf, "-s", sock, "stop"], capture_output=True, timeout=secs(30))
        try:
            proc.wait(timeout=secs(20))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=secs(10))


# Finding 13a: the Received/Return-Path header of a message whose parts are all long.

def long_domain(n, tld="test"):
    """A valid domain name of exactly n octets (labels of at most 63)."""
    m, labels = n - len(tld), []  # m: the labels' octets, each with its dot
    while m > 0:
        k = min(63, m - 1)
        if m - (k + 1) == 1:  # never leave room for a dot alone
            k -= 1
        labels.append(chr(ord("a") + len(labels) % 26) * k)
        m -= k + 1
    return ".".join(labels + [tld])


def long_addr(n, tld="test", c="l"):
    """An address (no brackets) of exactly n octets: a 64-octet local part."""
    return c * 64 + "@" + long_domain(n - 65, tld)


@test(limit=60)
def smtpfix_received_header_long(ctx):
    need_ipv6()
    net = Net(ctx)
    host = long_domain(181, "example")  # the INI takes lines up to 198 characters
    rcpt = long_addr(254, "remote")      # the longest paths: 256 octets with the brackets
    sender = long_addr(254, "sender", "s")
    helo = long_domain(255, "client")    # the longest EHLO argument mailsrv takes
    net.domain(rcpt.split("@")[1])
    sink = net.sink()
    p6 = free_ports(1, "::1")
    srv = net.server(server={"hostname": host, "relay_networks": "::1"})
    srv.keys["smtp"] += ", [::1]:%d" % p6[0]
    srv.write_ini()
    srv.start()
    c = ctx.track(Smtp(p6[0], "::1"))
    check(c.reply()[0] == 220, "no greeting")
    c.expect("EHLO " + helo, 250)
    t = tok()
    msg = make_msg(t, to=rcpt, sender=sender)
    code, text = c.send_mail(sender, [rcpt], msg)
    check(code == 250, "message from a relay client over IPv6: %s" % short(text))
    got = sink_wait(sink, 1, 20)[0]["data"]
    # what mailsrv adds, built from its known parts (the id and date are its own; Return-Path is
    # dropped when relaying): anything else, a byte of the server's stack, fails
    want = (re.escape("Received: from %s ([::1])\r\n\tby %s (mailsrv) with ESMTP id " % (helo, host)).encode()
            + rb"[0-9A-Za-z.]+" + re.escape("\r\n\tfor <%s>;\r\n\t" % rcpt).encode()
            + rb"[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000\r\n")
    m = re.match(want, got)
    check(m is not None, "relayed trace header is not what it should be: %r" % got[:1400])
    check(got[m.end():] == msg, "after the trace header: %s, expected the message as sent"
          % short(got[m.end():], 600))
    check(len(m.group(0)) + len("Return-Path: <%s>\n" % sender) > 1024, "the header is short: the test tests nothing")


# Finding 13c: paths at RFC 5321's limit (4.5.3.1.3: 256 octets with the angle brackets).

@test(limit=60)
def smtpfix_rcpt_path_length(ctx):
    srv = ctx.server(server={"capture": "yes"}).start()  # every address is a mailbox here
    c = srv.smtp()
    for n in (254, 255, 256, 257, 258):  # the path's octets, "<" and ">" included
        addr = long_addr(n - 2)
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        code, text = c.cmd("RCPT TO:<%s>" % addr)
        if n <= 256:
            check(code == 250, "RCPT with a %d-octet path: %s, expected 250" % (n, short(text)))
            t = tok()
            c.expect("DATA", 354)
            c.send(dot_stuff(make_msg(t, to=addr)) + b".\r\n")
            code, text = c.reply()
            if WINDOWS and code == 451:
                # Windows' MAX_PATH (260) is shorter than SPOOL/DOMAIN/LOCAL here: refused with 451,
                # which loses nothing (the sender keeps it); what matters is never 250 and then nothing
                check(stored_tokens(srv, addr) == [], "451 for a %d-octet path, but stored" % n)
                continue
            check(code == 250, "DATA to a %d-octet path: %s" % (n, short(text)))
            check(stored_tokens(srv, addr) == [t], "250 for a %d-octet path, but stored: %s"
                  % (n, stored_tokens(srv, addr)))
        else:
            check(code == 501 and "5.1.3" in text, "RCPT with a %d-octet path: %s, expected 501 5.1.3 (%s)"
                  % (n, short(text), "and then nothing stored" if code == 250 else ""))
            c.expect("RSET", 250)
    for n in (256, 257):  # the reverse-path has the same limit
        code, text = c.cmd("MAIL FROM:<%s>" % long_addr(n - 2, "sender"))
        check(code == (250 if n == 256 else 501) and (n == 256 or "5.1.7" in text),
              "MAIL FROM with a %d-octet path: %s" % (n, short(text)))
        c.expect("RSET", 250)
    # a local part of 65 octets (4.5.3.1.1: 64), a domain of 256 (4.5.3.1.2: 255)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    for addr in ("l" * 65 + "@example.test", "l@" + long_domain(256)):
        c.expect("RCPT TO:<%s>" % addr, 501, "5.1.3")

# end of section: smtpfix


# (section: peers)
# Debian's own programs as the other side, where the suite had only its own models of them.


class Dnsmasq:
    """Debian's dnsmasq as the relay's resolver, in the foreground on a free loopback port.
    Without local=True it knows only its records and answers REFUSED for anything else (AAAA of
    an IPv4-only name too); with local=True (--local=/test/) a known name's missing type is NODATA."""

    def __init__(self, args, local=False):
        exe = need_program("dnsmasq", "dnsmasq-base")
        self.proc = None
        port = fakes.free_ports_on(1, udp=True)[0]
        self.addr = "127.0.0.1:%d" % port
        self.pidfile = tempfile.mktemp(prefix="ms-dnsmasq-", suffix=".pid")
        cmd = [exe, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--port=%d" % port,
               "--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file=" + self.pidfile, "--log-queries",
               "--log-facility=-"] + (["--local=/test/"] if local else []) + args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: self._answers(port), 10, "dnsmasq answering on %s" % self.addr, 0.1)
        except BaseException:
            self.close()  # not yet tracked by the test: stop it here
            raise

    def _answers(self, port):
        if self.proc.poll() is not None:
            raise TestFailure("dnsmasq exited %d: %s" % (self.proc.returncode, short(self.proc.stderr.read())))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.3)
        try:  # any answer to an A query for "test." means it listens
            s.sendto(b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04test\x00\x00\x01\x00\x01", ("127.0.0.1", port))
            return len(s.recv(512)) >= 12
        except OSError:
            return False
        finally:
            s.close()

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.exists(self.pidfile):
            os.unlink(self.pidfile)


def dnsmasq_net(ctx, args, local=False):
    net = Net(ctx)
    net.dns.close()  # the fake DNS is not asked: dnsmasq answers
    net.dns = ctx.track(Dnsmasq(args, local))
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

    def __init__(self, ctx, size_limit):
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
                "virtual_uid_maps = static:%d" % pw.pw_uid, "virtual_gid_maps = static:%d" % pw.pw_gid, ""]))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("127.0.0.1:%d inet n - n - - smtpd\n" % self.port + "".join(d + "\n" for d in self.DAEMONS))
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
    line = "port %d is still in use; waiting up to 240 s for it" % a.smtp_port
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
    dotlock_take(path)  # rewritten in place under both locks, as a MUA does
    try:
        with open(path, "r+b") as f:
            wait_for(lambda: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB) is None, 5, "the fcntl lock of %s" % path)
            f.write(b"".join(edited))
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
            fcntl.lockf(f, fcntl.LOCK_UN)
    finally:
        os.unlink(path + ".lock")
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


# =============================================================================================


def main():
    global BIN, RUN
    ap = argparse.ArgumentParser(description="mailsrv end-to-end tests")
    ap.add_argument("--bin", default=os.path.join(REPO, "mailsrv"))
    ap.add_argument("--run", default="", help="command prefix, e.g. 'qemu-arm -L /usr/arm-linux-gnueabihf'")
    ap.add_argument("-k", dest="filter", action="append", default=None,
                    help="only tests whose name contains this (repeatable: any of them)")
    ap.add_argument("--list", action="store_true", help="list the test names and exit")
    a = ap.parse_args()
    BIN = os.path.abspath(a.bin)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:
        pass
    RUN = shlex.split(a.run)
    print("# random seed %d (MAILSRV_TEST_SEED=%d repeats this run's random choices)" % (SEED, SEED))
    socket.setdefaulttimeout(secs(10))
    sel = [t for t in TESTS if not a.filter or any(f in t[0] for f in a.filter)]
    if a.list:
        for t in sel:
            print(t[0])
        return 0
    faults = "FAULT INJECTION" in run_cli(["-V"]).stdout
    sel = [t for t in sel if (t[0] in FAULT_TESTS) == faults]  # fault tests run only on a fault build, and alone
    if any(t[0] in TLS_TESTS for t in sel) and not tls_built():
        for t in sel:
            if t[0] in TLS_TESTS:
                SKIPPED.append(t[0])
                SKIP_WHY[t[0]] = "no TLS in this build"
                SKIP_KIND[t[0]] = "notls"
        sel = [t for t in sel if t[0] not in TLS_TESTS]
    passed = failed = 0
    t0 = time.monotonic()
    for name, fn, kw, limit in sel:
        r = run_test(name, fn, kw, limit)
        if r is None:
            SKIPPED.append(name)
        elif r:
            passed += 1
        else:
            failed += 1
    print("# %d tests in %.1fs" % (passed + failed, time.monotonic() - t0))
    ci = os.environ.get("CI") == "true"
    skipped = []
    for name in SKIPPED:
        kind = SKIP_KIND.get(name)
        why = SKIP_WHY.get(name, "not on this platform")
        if kind is None and ci:  # CI installs every peer and runs as root: such a skip hides a test
            print("FAIL %s: skipped under CI, which should run it (%s)" % (name, why))
            failed += 1
        else:
            skipped.append(name)
            print("skipped %s (%s%s)" % (name, why, "" if kind else "; not expected"))
    print("%d passed, %d failed%s" % (passed, failed, ", %d skipped" % len(skipped) if skipped else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
