"""Command line; config: check, passwd, add, del, users."""
import os
import re
import shutil
import signal
import subprocess

from .harness import (BOTH, DOMAINS, Net, REPO, SENDER, TestFailure, check, check_message, free_ports,
                      make_msg, need_program, plain, run_cli, secs, short, stored, stored_tokens, test, tok,
                      wait_for)


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
