"""The e2e harness: raw protocol clients, messages and storage, the server under test, the
test registry and runner (check, soft, Skip, TestFailure, @test), and helpers shared by the
subject modules."""
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
import ssl
import warnings

import fakes  # test/ is on sys.path: it is the entry point's folder

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # test/, the folder above this package
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


def in_package(filename):
    """A traceback frame's file is one of this package's modules (the test code)."""
    return os.path.dirname(os.path.abspath(filename)) == os.path.dirname(os.path.abspath(__file__))


def frame_place(frame):
    """FILE:LINE of a frame in this package, as e2e/smtp.py:123."""
    return "%s:%d" % (os.path.relpath(frame.filename, HERE), frame.lineno)


def soft(cond, msg):
    """Like check(), but the test goes on so later checks still run; the test fails at the end."""
    if not cond:
        ctx = getattr(CURRENT, "ctx", None)
        if ctx is None:
            raise TestFailure(msg)
        fr = [f for f in traceback.extract_stack() if in_package(f.filename)]
        ctx.soft.append("%s (%s)" % (msg, frame_place(fr[-2]) if len(fr) > 1 else "e2e:0"))
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
    if WINDOWS and r.returncode != 0 and not r.stdout and not r.stderr:
        # as Server.start's: every failure of mailsrv's commands says why (checkpassword's silent
        # ones are Unix-only), so a non-zero exit with no word is wine failing to run the program
        # (WINEDEBUG=-all hides its own words; CI saw it once, on `mailsrv stop`): run it once more
        print("#   wine: `mailsrv %s` exited with status %d and printed nothing; run again" % (" ".join(args), r.returncode))
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
        p = free_ports(6)
        self.smtp_port, self.sub_port, self.pop3_port = p[:3]
        keys = {"hostname": "test.local", "smtp": "127.0.0.1:%d" % p[0],
                "submission": "127.0.0.1:%d" % p[1] if submission else None,
                "pop3": "127.0.0.1:%d" % p[2], "storage": storage, "spool": "spool",
                "max_message_size": "100K", "max_recipients": "5", "max_clients": "10", "timeout": "30",
                "plaintext_auth": "local", "capture": "no"}
        keys.update(server or {})
        if keys.get("submission") is None:
            self.sub_port = None
        for key, port in (("smtps", p[3]), ("pop3s", p[4]), ("http", p[5])):  # "auto" takes a free port
            if keys.get(key) == "auto":
                keys[key] = "127.0.0.1:%d" % port
        self.smtps_port = int(keys["smtps"].rsplit(":", 1)[1]) if keys.get("smtps") else None
        self.pop3s_port = int(keys["pop3s"].rsplit(":", 1)[1]) if keys.get("pop3s") else None
        self.http_port = int(keys["http"].rsplit(":", 1)[1]) if keys.get("http") else None
        self.keys = keys
        self.domains = domains
        self.sections = sections or {}  # extra sections written after [server], e.g. {"relay": {"dns": ...}}
        self.queue = os.path.join(self.dir, "queue")
        self.proc = None
        self.env = None  # the server's environment (None: ours)
        self.wrap = []  # a command put before RUN and the binary (the strace tests)
        self.wine_retried = False
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
        with open(self.ini, "w", encoding="utf-8") as f:  # UTF-8 names (test/e2e/intl.py) whatever the locale
            f.write(text)

    def listeners(self):
        out = []
        for key, kind in (("smtp", "smtp"), ("submission", "smtp"), ("pop3", "pop3"), ("smtps", "smtps"), ("pop3s", "pop3s"),
                          ("http", "http")):
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
            try:
                self.wait_ready()
            except TestFailure:
                if not self.wine_died_silently():
                    raise
                # CI saw this once in 300 wine starts (WINEDEBUG=-all hides wine's own words):
                # mailsrv logs why it stops, so an empty log is wine's failure, tried once more
                print("#   wine: mailsrv.exe exited with status %s and nothing logged; started again" % self.proc.returncode)
                return self.start(args, wait, cwd)
        return self

    def wine_died_silently(self):
        """Once per server: under wine, exited non-zero before writing a byte."""
        if not WINDOWS or self.wine_retried or self.proc.poll() is None or self.proc.returncode == 0:
            return False
        self.wine_retried = not self.log_text().strip()
        return self.wine_retried

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
            if kind == "http":  # the client speaks first: a request that needs no login
                raw.sendall(b"GET /livez HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                return raw.makefile("rb").readline(1024).startswith(b"HTTP/1.1 200")
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
DURATIONS = {}  # test name -> seconds it took (e2e.py prints the slowest: CI's time budget)
# Skips that are expected where they happen: timing measured only natively; root-only tests run as
# a user; Unix-only tests on Windows; TLS tests in the build without TLS; tests that need a native
# server process under an emulator, wine or valgrind. Any other skip (a missing
# peer program, no IPv6, a tmpfs that cannot be mounted) means the run proved less than it says:
# under CI (CI=true) it counts as a failure.
EXPECTED_SKIPS = ("timing", "root", "windows", "notls", "nohttp", "native")  # windows: also a Windows-only test elsewhere
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
    frames = [f for f in tb if in_package(f.filename)]
    return frame_place(frames[-1]) if frames else "?"


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
    DURATIONS[name] = time.monotonic() - t_start
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


# ---------------------------------------------------------------------------------------------
# helpers shared by the subject modules, moved here from theirs (tls, relay, trust_config) because
# a module before that one uses them too


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


REMOTE_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class Dnsmasq:
    """Debian's dnsmasq as the relay's resolver, in the foreground on a free loopback port.
    Without local=True it knows only its records and answers REFUSED for anything else (AAAA of
    an IPv4-only name too); with local=True (--local=/test/) a known name's missing type is NODATA."""

    def __init__(self, args, local=False):
        # args: dnsmasq's own options (records, or --server=ADDR#PORT to forward to a fake DNS)
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


# MAILSRV_TEST_RESOLVER=dnsmasq (`make relay-dnsmasq-test`): every Net's relay asks Debian's dnsmasq,
# which forwards to the test's fake DNS, not the fake itself (issue 18, item 7): the relay tests run
# once more through a real resolver, with its own ways (it asks again after an upstream SERVFAIL
# before passing it on, and answers a truncated reply's TCP retry with its own TCP query).
VIA_DNSMASQ = os.environ.get("MAILSRV_TEST_RESOLVER") == "dnsmasq"


class Net:
    """One test's fake internet: the DNS server, and sinks on REMOTE_HOSTS at one port. resolver:
    what the server asks (the fake DNS, or dnsmasq in front of it: VIA_DNSMASQ)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.dns = ctx.track(fakes.FakeDNS())
        self.resolver = self.dns
        if VIA_DNSMASQ:  # no cache: the tests change records while the server runs
            self.resolver = ctx.track(Dnsmasq(["--server=%s#%d" % (self.dns.host, self.dns.port), "--cache-size=0",
                                               "--no-negcache"]))
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
        keys = {"dns": self.resolver.addr, "port": self.port, "retry": "1", "expire": "1h", "timeout": "10"}
        keys.update(relay or {})
        sections = {"relay": keys}
        if route:
            sections["route"] = route
        return self.ctx.server(sections=sections, **kw)


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
