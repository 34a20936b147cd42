"""Operating a running server: `mailsrv status`, `stop`, `reload`, the log file and its rotation,
and `make run` as root."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

from .harness import (AS_ROOT, REPO, RUN, WINDOWS, TestFailure, check, free_ports, need_native, need_program, need_root,
                      run_cli, secs, short, test, wait_for)


def status_of(srv):
    """`mailsrv status` for srv's INI: (exit status, {key: value})."""
    r = run_cli(["-c", srv.ini, "status"], timeout=15)
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    return r.returncode, fields, r


@test(limit=60)
def status_and_stop_commands(ctx):
    """`mailsrv status` tells the running server's pid, sessions per protocol, queue and the last
    reload's result; `mailsrv stop` returns once the server has gone, with a session open; with no
    server running, status says so with exit status 3 (LSB) and stop with 0. A stop asked of no
    server (QUEUE/stop left behind) does not stop the next one."""
    srv = ctx.server()
    os.makedirs(srv.queue, exist_ok=True)
    with open(os.path.join(srv.queue, "stop"), "w"):
        pass  # a `mailsrv stop` that no server took
    srv.start()
    c = srv.smtp()
    p = srv.pop("alice@example.test")
    rc, f, r = status_of(srv)
    check(rc == 0, "status of a running server: exit %d, %s %s" % (rc, short(r.stdout), short(r.stderr)))
    if not WINDOWS:  # wine's pids are its own
        check(f.get("pid") == str(srv.proc.pid), "status pid %s, the server is %d" % (f.get("pid"), srv.proc.pid))
    check(f.get("sessions", "").startswith("smtp 1, submission 0, pop3 1, http 0, lmtp 0, relay 0"),
          "status sessions with one SMTP and one POP3 session open: %s" % f.get("sessions"))
    check(f.get("queue") == "0 messages" and f.get("log") == "standard error" and f.get("config") == srv.ini,
          "status queue/log/config: %s" % f)
    check(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, ok$", f.get("last load", "")), "last load: %s" % f.get("last load"))
    check(re.match(r"0d 00:00:\d\d$", f.get("uptime", "")), "uptime: %s" % f.get("uptime"))
    check(srv.alive(), "the QUEUE/stop left from before the server started stopped it")
    # a broken INI: the running server refuses it (the automatic reload), and status says so
    good = open(srv.ini).read()
    srv.write_ini(good.replace("[server]\n", "[server]\nno_such_key = 1\n", 1))
    wait_for(lambda: "refused" in status_of(srv)[1].get("last load", ""), 15, "status to tell the refused reload", 0.2)
    srv.write_ini(good)
    wait_for(lambda: status_of(srv)[1].get("last load", "").endswith(", ok"), 15, "status to tell the good reload", 0.2)
    # stop: waits for the server to be gone; the open sessions are told and closed
    t0 = time.monotonic()
    r = run_cli(["-c", srv.ini, "stop"], timeout=60)
    check(r.returncode == 0 and r.stdout.strip() == "stopped", "stop: exit %d, %s %s" % (r.returncode, short(r.stdout),
                                                                                       short(r.stderr)))
    try:
        rc = srv.proc.wait(timeout=secs(5))
    except subprocess.TimeoutExpired:
        raise TestFailure("`mailsrv stop` returned but the server is still running")
    check(rc == 0, "server stopped by `mailsrv stop`: exit status %s" % rc)
    check("stop requested (mailsrv stop)" in srv.log_text(), "no log line for the stop: %s" % short(srv.log_text()[-400:]))
    check(not os.path.exists(os.path.join(srv.queue, "stopping")), "QUEUE/stopping left behind")
    print("#   stop with two sessions open: %.1f s" % (time.monotonic() - t0))
    t0 = time.monotonic()
    rc, f, r = status_of(srv)
    took = time.monotonic() - t0
    check(rc == 3 and "not running" in r.stdout, "status with no server: exit %d, %s" % (rc, short(r.stdout)))
    check(took < secs(6), "status with no server took %.1f s" % took)
    r = run_cli(["-c", srv.ini, "stop"], timeout=20)
    check(r.returncode == 0 and "not running" in r.stdout, "stop with no server: exit %d, %s" % (r.returncode, short(r.stdout)))
    check(not os.path.exists(os.path.join(srv.queue, "stop")) and not os.path.exists(os.path.join(srv.queue, "status")),
          "control files left behind: %s" % os.listdir(srv.queue))


def log_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []


@test(unix_only=True, limit=60)
def log_file_reopened_for_logrotate(ctx):
    """[server] log = FILE: lines go there; after the file is renamed (logrotate), SIGHUP and
    `mailsrv reload` each make the next lines go to a new FILE, and the old one gets none. A FILE
    that is a symbolic link is not followed (the service account may own the log's folder): the
    log stays where it was and says why."""
    srv = ctx.server(server={"log": "logs/mailsrv.log"})
    os.makedirs(os.path.join(srv.dir, "logs"))
    log = os.path.join(srv.dir, "logs", "mailsrv.log")
    srv.start()
    srv.deliver("alice@example.test")
    wait_for(lambda: any("delivered" in l or "stored" in l for l in log_lines(log)), 5, "the delivery's line in the log file")
    check("listening for smtp" in "\n".join(log_lines(log)), "start lines not in the log file: %s" % log_lines(log)[:5])
    check("listening for smtp" not in srv.log_text(), "start lines on standard error too")
    for n, how in ((1, "SIGHUP"), (2, "mailsrv reload")):
        os.rename(log, "%s.%d" % (log, n))
        if how == "SIGHUP":
            srv.proc.send_signal(signal.SIGHUP)
        else:
            r = run_cli(["-c", srv.ini, "reload"])
            check(r.returncode == 0, "reload: %s %s" % (short(r.stdout), short(r.stderr)))
        wait_for(lambda: os.path.exists(log), 5, "a new log file after %s" % how)
        old = len(log_lines("%s.%d" % (log, n)))
        tok, _ = srv.deliver("bob@example.test")
        wait_for(lambda: any(tok in l or "bob@example.test" in l for l in log_lines(log)), 5,
                 "the next delivery's line in the new log after %s" % how)
        check(len(log_lines("%s.%d" % (log, n))) == old, "the renamed log still written after %s" % how)
    # a link in the log's place: not followed
    os.rename(log, log + ".3")
    target = os.path.join(ctx.dir, "not-a-log")
    open(target, "w").close()
    os.symlink(target, log)
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any("cannot open the log" in l for l in log_lines(log + ".3")), 5,
             "the refused link said in the log that stays")
    srv.deliver("alice@example.test")
    check(os.path.getsize(target) == 0, "the log followed a symbolic link: %s" % short(open(target).read()))
    check(srv.alive(), "server died")


@test(unix_only=True)
def allow_root_flag(ctx):
    """As root, mailsrv refuses to run without user = or allow_root = in the INI, unless the command
    line says --allow-root (what `make run` says as root); it then warns in its log. --allow-root
    belongs to the server: with a command it is a usage error."""
    need_root()
    srv = ctx.server()
    with open(srv.ini, "w") as f:
        f.write(srv.ini_text())  # no allow_root, no user
    srv.start(args=["--allow-root"])
    check("WARNING: running as root (--allow-root)" in srv.log_text(), "no warning: %s" % short(srv.log_text(), 300))
    srv.deliver("alice@example.test")
    r = run_cli(["-c", srv.ini, "--allow-root", "check"])
    check(r.returncode == 2, "--allow-root check: exit %d" % r.returncode)


@test(unix_only=True, limit=90)
def make_run_as_root_and_as_a_user(ctx):
    """The README's first command, `make run`, on the shipped mailsrv.ini (on free ports): as root it
    serves, saying in its log that it runs as root; as a user (nobody) it serves without that."""
    need_root()
    need_native("make run starts ./mailsrv")
    make = need_program("make", "make")
    setpriv = need_program("setpriv", "util-linux")
    repo = os.path.join(ctx.dir, "repo")
    os.makedirs(os.path.join(repo, "test"))
    for f in ("Makefile", "mailsrv.c", "mailsrv.h", "test/deps.sh", "mailsrv"):
        shutil.copy2(os.path.join(REPO, f), os.path.join(repo, f))
    for stamp in os.listdir(os.path.join(REPO, "build")):
        if stamp.startswith("tls-"):
            os.makedirs(os.path.join(repo, "build"), exist_ok=True)
            shutil.copy2(os.path.join(REPO, "build", stamp), os.path.join(repo, "build", stamp))
    os.utime(os.path.join(repo, "mailsrv"))  # newer than its sources: make runs it, builds nothing
    ports = free_ports(3)
    text = open(os.path.join(REPO, "mailsrv.ini")).read()
    for old, new in zip(("127.0.0.1:2525", "127.0.0.1:1100", "127.0.0.1:8025"), ports):
        check(old in text, "the shipped mailsrv.ini no longer listens on %s" % old)
        text = text.replace(old, "127.0.0.1:%d" % new)
    with open(os.path.join(repo, "mailsrv.ini"), "w") as f:
        f.write(text)
    for d, _, files in os.walk(ctx.dir):
        os.chmod(d, 0o777)  # nobody runs there
        for f in files:
            os.chmod(os.path.join(d, f), 0o755)
    for who, prefix in (("root", []), ("nobody", [setpriv, "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])):
        out = os.path.join(ctx.dir, "make-run-%s.log" % who)
        with open(out, "wb") as logf:
            proc = subprocess.Popen(prefix + [make, "-s", "run"], cwd=repo, stdout=logf, stderr=logf,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            def up():
                check(proc.poll() is None, "make run as %s exited %s: %s" % (who, proc.returncode, short(open(out).read(), 400)))
                try:
                    socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
                    return True
                except OSError:
                    return False
            wait_for(up, 30, "make run as %s to listen" % who, 0.1)
            said = open(out).read()
            check(("WARNING: running as root (--allow-root)" in said) == (who == "root"),
                  "make run as %s: %s" % (who, short(said, 400)))
        finally:
            stop_group(proc)
        wait_for(lambda: not port_open(ports[0]), 10, "make run as %s to stop" % who, 0.1)
        for d in ("spool", "queue"):  # root's: the next run is nobody's
            shutil.rmtree(os.path.join(repo, d), ignore_errors=True)


def stop_group(proc):
    """SIGTERM to the process group this test started (make, its shell, mailsrv), SIGKILL if it stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=secs(10))
            return
        except subprocess.TimeoutExpired:
            pass


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@test(limit=120)
def windows_service(ctx):
    """Windows: `mailsrv service install` registers the service "mailsrv" with the service manager
    (started at boot, `mailsrv -c INI --service`); `--service` outside the manager says what it is
    for; `service remove` unregisters it. Started by the manager (`net start`), it serves, logs to
    mailsrv.log beside the INI, `sc query` says RUNNING and `net stop` stops it cleanly. Under wine,
    whose service manager does that in a prefix where it has run services before, but in a fresh
    one may answer "Could not get handle to service" or time out: then that part is reported, not
    failed. Elsewhere the command says to use the system's own service manager."""
    srv = ctx.server()
    if not WINDOWS:
        r = run_cli(["-c", srv.ini, "service", "install"])
        check(r.returncode == 1 and "systemd" in r.stderr, "service install on Unix: exit %d, %s" % (r.returncode, short(r.stderr)))
        return
    wine = RUN  # `env WINEPREFIX=... wine`: its net.exe and sc.exe
    r = run_cli(["-c", srv.ini, "--service"], timeout=60)
    check(r.returncode == 1 and "service manager" in r.stderr, "--service in a console: exit %d, %s" % (r.returncode, short(r.stderr)))
    r = run_cli(["-c", srv.ini, "service", "install"], timeout=60)
    check(r.returncode == 0 and "--service" in r.stdout, "service install: exit %d, %s %s" % (r.returncode, short(r.stdout),
                                                                                           short(r.stderr)))
    log = os.path.join(srv.dir, "mailsrv.log")
    try:
        # what the manager keeps of it (wine's sc has no `qc`: its registry key, as Windows keeps it)
        q = subprocess.run(wine + ["reg", "query", r"HKLM\System\CurrentControlSet\Services\mailsrv"], capture_output=True,
                           text=True, timeout=secs(60))
        check(re.search(r"Start\s+REG_DWORD\s+0x2\b", q.stdout) and re.search(r"ImagePath.*--service", q.stdout) and
              "mailsrv.ini" in q.stdout and "LocalSystem" in q.stdout, "the service's registry key: %s" % short(q.stdout, 500))
        said = []
        for _ in range(3):
            r = subprocess.run(wine + ["net", "start", "mailsrv"], capture_output=True, text=True, timeout=secs(60))
            said.append(r.stdout.strip())
            if "started successfully" in r.stdout or "already running" in r.stdout:
                break
            time.sleep(1)  # wine's manager, not ours to poll: a pause before asking again
        if not any("started successfully" in x or "already running" in x for x in said):
            print("#   wine's service manager did not start the service: %s" % said)
        else:
            wait_for(lambda: port_open(srv.smtp_port), 60, "the service to listen (net start said: %s)" % said, 0.2)
            t, msg = srv.deliver("alice@example.test")
            got = srv.fetch("alice@example.test")
            check([g["token"] for g in got] == [t], "the service stored %s" % [g["token"] for g in got])
            text = "\n".join(log_lines(log))
            check("started" in text and "as a service" in text, "mailsrv.log beside the INI: %s" % short(text, 300))
            q = subprocess.run(wine + ["sc", "query", "mailsrv"], capture_output=True, text=True, timeout=secs(60))
            check(re.search(r"STATE\s*:\s*4\s+RUNNING", q.stdout), "sc query: %s" % short(q.stdout, 300))
            rc, f, r = status_of(srv)
            check(rc == 0 and f.get("log", "").endswith("mailsrv.log"), "status of the service: %s" % short(r.stdout, 300))
            r = subprocess.run(wine + ["net", "stop", "mailsrv"], capture_output=True, text=True, timeout=secs(60))
            wait_for(lambda: not port_open(srv.smtp_port), 40, "the service to stop (net stop: %s)" % short(r.stdout), 0.2)
            wait_for(lambda: "stopped" in log_lines(log)[-1], 10, "the service's last line: stopped")
    finally:
        r = run_cli(["-c", srv.ini, "service", "remove"], timeout=60)
    check(r.returncode == 0, "service remove: exit %d, %s" % (r.returncode, short(r.stderr)))
    # a removed service goes once the manager lets go of it (wine: a moment later)
    wait_for(lambda: subprocess.run(wine + ["sc", "query", "mailsrv"], capture_output=True, timeout=secs(60)).returncode != 0,
             20, "sc query to find no service mailsrv after remove", 0.5)


@test(unix_only=True)
def status_not_held_by_a_fifo(ctx):
    """Whoever owns the service account owns the queue: a FIFO in place of QUEUE/status.txt must not
    hold root's `mailsrv status` (nor logrotate's postrotate, which runs it) forever. The test plays
    the server: it takes the request and leaves the FIFO as the answer."""
    srv = ctx.server()
    os.makedirs(srv.queue, exist_ok=True)
    answer = os.path.join(srv.queue, "status.txt")
    proc = subprocess.Popen(RUN + [srv.bin, "-c", srv.ini, "status"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(os.path.join(srv.queue, "status")), 10, "the status request")
        os.mkfifo(answer)
        os.unlink(os.path.join(srv.queue, "status"))
        try:
            rc = proc.wait(timeout=secs(10))
        except subprocess.TimeoutExpired:
            raise TestFailure("`mailsrv status` still waits on a FIFO in place of status.txt after 10 s")
        check(rc != 3, "status: exit %d after the request was taken" % rc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
