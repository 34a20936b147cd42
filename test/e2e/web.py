"""The web page (issue 16), in Debian's Chromium driven by playwright-core (test/npm/web.mjs), and
the HTTP rules that keep it safe: its policies, the admin pages' API, and no cross-site request."""
import base64
import json
import os
import shutil
import signal
import smtplib
import socket
import struct
import subprocess
import threading
import time
import zlib

from .harness import (BOTH, HERE, PASSWORDS, REPO, RUN, Skip, TestFailure, check, need_program, secs, short, stored, tok,
                      test)
from .http import api, api_json, need_http
from .lists import subscribe

ALICE = ("alice@example.test", PASSWORDS["alice@example.test"])
BOB = ("bob@example.test", PASSWORDS["bob@example.test"])
# a browser keeps up to 6 connections to a server open, and the event stream: the tests' max_clients = 10 is too few
ADMIN_KEYS = {"http": "auto", "admins": "alice@example.test", "max_clients": "60"}
OUT = os.path.join(REPO, "build")  # the screenshots


def png_2x2():
    """A valid 2x2 PNG (the test checks its naturalWidth in the page)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def b64(data):
    s = base64.b64encode(data).decode()
    return "\r\n".join(s[i:i + 76] for i in range(0, len(s), 76))


def rich_mail(t, attachment, port):
    """multipart/mixed: related (alternative (text, HTML with a cid: image), the image), an attachment."""
    return ("From: Shop <shop@client.test>\r\nTo: <alice@example.test>\r\nSubject: Rich %s\r\n"
            "Message-ID: <rich%s@client.test>\r\nX-Shop: yes\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n"
            "--m\r\nContent-Type: multipart/related; boundary=\"r\"\r\n\r\n"
            "--r\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n"
            "--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain text %s\r\n"
            "--a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            "<html><body><p><b class=\"rich\">Bold %s</b></p><img id=\"logo\" src=\"cid:logo@client.test\">\r\n"
            "<p><a id=\"shop\" href=\"http://127.0.0.1:%d/livez?shop-link\">our shop</a></p></body></html>\r\n"
            "--a--\r\n"
            "--r\r\nContent-Type: image/png\r\nContent-ID: <logo@client.test>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "%s\r\n--r--\r\n"
            "--m\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"report.bin\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n%s\r\n--m--\r\n"
            % (t, t, t, t, port, b64(png_2x2()), b64(attachment))).encode()


def need_browser():
    """node, playwright-core (test/npm: `npm ci`) and Debian's chromium; a native server (under the
    sanitizers too: the browser's requests are the ones they should watch), not one under an
    emulator, wine or valgrind, too slow for a browser's patience."""
    need_http()
    if RUN:
        raise Skip("a browser against a server under an emulator, wine or valgrind: too slow", "native")
    node = need_program("node", "nodejs")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    mod = os.path.join(HERE, "npm", "node_modules", "playwright-core", "package.json")
    missing = None if chromium else "Debian's chromium"
    if not os.path.exists(mod):
        missing = "the playwright-core npm package (cd test/npm && npm ci)"
    if missing:
        if os.environ.get("CI") == "true":
            raise TestFailure("%s is not installed (.ci/run installs it)" % missing)
        raise Skip("%s is not installed" % missing)
    return node, chromium


class Canary:
    """An HTTP listener on loopback that counts the requests it gets (the mail must make none)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.paths = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:  # (e2e.py's default timeout): no client for a while
                continue
            except OSError:
                return
            c.settimeout(5)
            try:
                head = c.recv(4096).decode("latin-1")
                with self.lock:
                    self.paths.append(head.split(" ")[1] if " " in head else "?")
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            c.close()

    def seen(self):
        with self.lock:
            return list(self.paths)

    def close(self):
        self.sock.close()


def run_page(scenario, cfg, answer, limit):
    """Runs test/npm/web.mjs SCENARIO; answer(what) does what a NEED line asks. Returns the output."""
    node, chromium = need_browser()
    cfg = dict(cfg, chromium=chromium, out=OUT)
    os.makedirs(OUT, exist_ok=True)
    # a session of its own: at the time limit node and the Chromium it started are stopped together
    p = subprocess.Popen([node, os.path.join(HERE, "npm", "web.mjs"), scenario, json.dumps(cfg)], cwd=os.path.join(HERE, "npm"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    out = []

    def stop():
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    timer = threading.Timer(secs(limit), stop)
    timer.start()
    try:
        for line in p.stdout:
            out.append(line.rstrip("\n"))
            if line.startswith("NEED "):
                try:
                    answer(line[5:].strip())
                    p.stdin.write("done\n")
                except TestFailure as e:
                    p.stdin.write("fail %s\n" % str(e).replace("\n", " "))
                p.stdin.flush()
        p.wait()
    finally:
        timer.cancel()
        stop()  # also any Chromium process left behind (the group is ours alone)
        p.wait()
    text = "\n".join(out)
    check(p.returncode == 0 and "all checks passed" in text, "the page in Chromium (%s): %s" % (scenario, text[-3000:]))
    return text


@test(modes=BOTH, limit=150)
def web_page_in_a_browser(ctx, storage):
    """The page in Chromium: loads with no console error; SMTP mail appears live; the message view
    (HTML with its cid: image, text, headers, raw, the attachment's bytes); search; delete (and POP3
    agrees); the admin pages; phone width; a user sees no admin page; Russian."""
    need_browser()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: relaying there is refused
    t = tok()
    srv = ctx.server(storage=storage, server=ADMIN_KEYS,
                     sections={"route": {"far.test": "127.0.0.1:%d" % closed.getsockname()[1]}, "relay": {"retry": "1h"},
                               "list news@example.test": {"owner": "alice@example.test", "post": "members"}}).start()
    attachment = os.urandom(3000)
    srv.send(["alice@example.test"], ("From: <x@client.test>\r\nTo: <alice@example.test>\r\nSubject: Second %s\r\n\r\nhi\r\n"
                                      % t).encode())
    srv.send(["bob@example.test"], ("From: <x@client.test>\r\nTo: <bob@example.test>\r\nSubject: For bob %s\r\n\r\nhi\r\n"
                                    % t).encode())
    srv.send(["someone@far.test"], ("From: <alice@example.test>\r\nTo: <someone@far.test>\r\nSubject: Out %s\r\n\r\nhi\r\n"
                                    % t).encode(), sender="alice@example.test")
    subscribe(srv, "bob@example.test")
    end = time.monotonic() + secs(10)
    while time.monotonic() < end:  # the relay's first try has failed: an error to show
        q = api_json(srv, "/api/v1/queue", auth=ALICE)["Entries"]
        if q and q[0]["Recipients"][0]["Error"]:
            break
        time.sleep(0.1)
    check(q and q[0]["Recipients"][0]["Error"], "a queue entry with an error: %r" % q)

    accepted = threading.Event()

    def answer(what):
        if what == "send-rich":
            srv.send(["alice@example.test"], rich_mail(t, attachment, srv.http_port))
        elif what.startswith("released "):
            addr = what.split()[1]
            end = time.monotonic() + secs(5)
            while not any(("Rich " + t).encode() in m for m in stored(srv, addr)) and time.monotonic() < end:
                time.sleep(0.05)
            check(any(("Rich " + t).encode() in m for m in stored(srv, addr)), "forwarded to %s" % addr)
        elif what == "slow-next-hop":  # the retry finds a next hop that answers nothing for 2 s, then hangs up
            closed.listen(1)
            closed.settimeout(secs(10))

            def hold():
                try:
                    conn = closed.accept()[0]
                except OSError:
                    return
                accepted.set()
                time.sleep(secs(2))
                conn.close()
            threading.Thread(target=hold, daemon=True).start()
        elif what == "queue-retried":
            check(accepted.wait(secs(10)), "the page's flush made the server retry")
            check("flush requested by alice@example.test" in srv.log_text(), "the flush is logged")
        elif what == "queue-empty":
            check(api_json(srv, "/api/v1/queue", auth=ALICE)["Entries"] == [] and
                  not [f for f in os.listdir(srv.queue) if f.endswith((".env", ".msg"))], "the entry is gone, files too")
            check("deleted by alice@example.test without a bounce" in srv.log_text(), "the deletion is logged")
        elif what.startswith("pop3-gone "):
            p = srv.pop("alice@example.test")
            uidls = list(p.uidl().values())
            p.ok("QUIT")
            listed = [m["ID"] for m in api_json(srv, "/api/v1/messages?mailbox=alice%40example.test", auth=ALICE)["messages"]]
            check(what.split()[1] not in listed and len(uidls) == len(listed), "POP3 lists what the page does: %r %r"
                  % (uidls, listed))
        else:
            raise TestFailure("unknown need " + what)
    cfg = {"base": "http://127.0.0.1:%d" % srv.http_port, "admin": ALICE[0], "adminPass": ALICE[1], "user": BOB[0],
           "userPass": BOB[1], "token": t, "attachment": base64.b64encode(attachment).decode(), "queued": "someone@far.test",
           "list": "news@example.test", "member": "bob@example.test", "memberIp": "127.0.0.1",
           "readMarks": storage == "maildir", "forwardTo": "carol@example.test"}  # an mbox keeps no read marks (README)
    out = run_page("main", cfg, answer, 140)
    closed.close()
    ctx.note = [l for l in out.splitlines() if l.startswith("first render")]


XSS_HTML = ("<html>\r\n<head><meta http-equiv=\"refresh\" content=\"0;url=http://127.0.0.1:{c}/meta\">"
            "\r\n<link rel=\"stylesheet\" href=\"http://127.0.0.1:{c}/css\"><style>body{{background:url(http://127.0.0.1:{c}/bg)}}"
            "@import url(http://127.0.0.1:{c}/import);</style><base href=\"http://127.0.0.1:{c}/\"></head>"
            "\r\n<body onload=\"parent.__xss=1\"><script>parent.__xss=2;window.__xss=2</script>"
            "\r\n<img src=x onerror=\"parent.__xss=3\"><img src=\"http://127.0.0.1:{c}/img\" srcset=\"http://127.0.0.1:{c}/srcset 2x\">"
            "\r\n<a href=\"javascript:parent.__xss=4\">js link</a> <a href=\"data:text/html,<script>opener.__xss=5</script>\">data link</a>"
            "\r\n<svg onload=\"parent.__xss=6\"><image href=\"http://127.0.0.1:{c}/svgimg\"/></svg>"
            "\r\n<iframe src=\"http://127.0.0.1:{c}/frame\"></iframe><object data=\"http://127.0.0.1:{c}/object\"></object>"
            "\r\n<video poster=\"http://127.0.0.1:{c}/poster\"></video><form action=\"http://127.0.0.1:{c}/form\">"
            "\r\n<input name=q value=1><button id=sub>go</button></form>"
            "\r\n<div style=\"background-image:url('http://127.0.0.1:{c}/inline')\">styled</div></body></html>")


def xss_mails(c):
    """(subject, message) pairs: hostile subject, From name, file names, bodies."""
    svg = ("<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"window.__xss=7\"><script>window.__xss=8</script>"
           "<image href=\"http://127.0.0.1:%d/svgfile\"/></svg>" % c)
    out = []
    subj = "<script>parent.__xss=9</script><img src=x onerror=parent.__xss=10> subject"
    out.append((subj, "From: x@client.test\r\nTo: alice@example.test\r\nSubject: %s\r\n\r\nbody\r\n" % subj))
    subj = "hostile name"
    out.append((subj, "From: \"<img src=x onerror=parent.__xss=11>\" <x@client.test>\r\nTo: \"<b onmouseover=alert(1)>\" "
                      "<alice@example.test>\r\nSubject: %s\r\nX-Evil: <script>parent.__xss=12</script>\r\n\r\n"
                      "<script>parent.__xss=13</script> as text\r\n" % subj))
    subj = "hostile html body"
    out.append((subj, "From: x@client.test\r\nTo: alice@example.test\r\nSubject: %s\r\nMIME-Version: 1.0\r\n"
                      "Content-Type: text/html; charset=utf-8\r\n\r\n%s\r\n" % (subj, XSS_HTML.format(c=c))))
    subj = "hostile attachments"
    out.append((subj, "From: x@client.test\r\nTo: alice@example.test\r\nSubject: %s\r\nMIME-Version: 1.0\r\n"
                      "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
                      "--b\r\nContent-Type: image/svg+xml\r\nContent-Disposition: attachment; filename=\"x.svg\"\r\n\r\n%s\r\n"
                      "--b\r\nContent-Type: text/html\r\nContent-Disposition: attachment; "
                      "filename=\"<img src=x onerror=parent.__xss=14>.html\"\r\n\r\n<script>parent.__xss=15</script>\r\n"
                      "--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                      "filename=\"javascript:parent.__xss=16\"\r\n\r\nx\r\n--b--\r\n" % (subj, svg)))
    subj = "pixel %d" % c
    out.append((subj, "From: x@client.test\r\nTo: alice@example.test\r\nSubject: %s\r\nMIME-Version: 1.0\r\n"
                      "Content-Type: text/html\r\n\r\n<p>tracked</p><img src=\"http://127.0.0.1:%d/pixel\">\r\n" % (subj, c)))
    return out


@test(limit=120)
def web_page_runs_no_hostile_mail(ctx):
    """In capture mode (no login; the page opens on the mail of every captured address), an XSS corpus (script in the Subject, the From name, file names; javascript: and data: links;
    an SVG attachment; HTML with script, onerror, meta refresh, CSS url(), remote images, frames,
    forms) runs nothing in the page (a flag stays unset) and loads nothing (a canary listener on
    loopback gets no request) until the reader asks for remote images; then the canary sees them."""
    need_browser()
    canary = ctx.track(Canary())
    srv = ctx.server(server={"capture": "yes", "http": "auto", "max_clients": "60"}).start()  # and the page opens on every captured address
    mails = xss_mails(canary.port)
    for i, (_, m) in enumerate(mails):
        srv.send(["alice@example.test" if i % 2 else "dev%d@app.test" % i], m.encode())
    listed = api_json(srv, "/api/v1/messages", auth=ALICE)["messages"]
    att = [m for m in listed if m["Subject"] == "hostile attachments"][0]
    parts = api_json(srv, "/api/v1/message/" + att["ID"], auth=ALICE)["Attachments"]
    svg = [p for p in parts if p["FileName"] == "x.svg"][0]

    def answer(what):
        if what == "canary-zero":
            check(canary.seen() == [], "the canary got requests: %r" % canary.seen())
        elif what == "canary-pixel":
            end = time.monotonic() + secs(5)
            while "/pixel" not in canary.seen() and time.monotonic() < end:
                time.sleep(0.05)
            check("/pixel" in canary.seen(), "the remote image was not loaded when asked: %r" % canary.seen())
        else:
            raise TestFailure("unknown need " + what)
    cfg = {"base": "http://127.0.0.1:%d" % srv.http_port, "admin": ALICE[0], "adminPass": ALICE[1], "count": len(mails),
           "subjects": [s for s, _ in mails if not s.startswith("pixel")], "pixelSubject": mails[-1][0],
           "svgUrl": "/api/v1/message/%s/part/%s" % (att["ID"], svg["PartID"]),
           # Chromium logs the blocked loads (CSP, sandbox) as console errors: those are the policy working
           "allowErrors": ["Content Security Policy", "Blocked script execution", "sandboxed", "Not allowed to navigate",
                           "127.0.0.1:%d" % canary.port, "Failed to load resource"]}
    run_page("xss", cfg, answer, 110)
    check(set(canary.seen()) <= {"/pixel"}, "only the image asked for was loaded: %r" % canary.seen())


@test(modes=BOTH, limit=90)
def web_page_bulk_actions(ctx, storage):
    """130 captured messages: "Load more" to the end of the list, then select all and mark read
    (Maildir keeps read marks), then select all and delete: the API and POP3 then have none."""
    need_browser()
    srv = ctx.server(storage=storage, server={"capture": "yes", "http": "auto", "max_clients": "60"}).start()
    n = 130
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=secs(20)) as s:
        for i in range(n):
            s.sendmail("app@client.test", ["dev@app.test"], ("From: app@client.test\r\nTo: dev@app.test\r\nSubject: bulk %d\r\n"
                                                             "\r\nmessage %d\r\n" % (i, i)).encode())

    def answer(what):
        got = api_json(srv, "/api/v1/messages")
        if what == "all-read":
            check(got["total"] == n and (got["unread"] == 0 or storage == "mbox"), "after mark read: %r" % {
                k: got[k] for k in ("total", "unread")})
        elif what == "all-gone":
            check(got["total"] == 0, "after delete: %d left" % got["total"])
            p = srv.pop("dev@app.test", "any")
            check(p.stat()[0] == 0, "POP3 still lists %d" % p.stat()[0])
            p.ok("QUIT")
        else:
            raise TestFailure("unknown need " + what)
    run_page("bulk", {"base": "http://127.0.0.1:%d" % srv.http_port, "count": n}, answer, 80)


@test()
def web_page_policies_and_cross_site_requests(ctx):
    """The page's policy headers; a request another site's page makes with the browser's login (a
    form POST, a DELETE) is refused, one from the page itself and one from a client that is not a
    browser are served; the admin pages' API answers admins only."""
    need_http()
    srv = ctx.server(server=ADMIN_KEYS).start()
    t, _ = srv.deliver(to="alice@example.test")
    st, hd, body = api(srv, "GET", "/", auth=ALICE)
    csp = hd.get("content-security-policy", "")
    check(st == 200 and b"<html" in body.lower() and hd.get("content-type", "").startswith("text/html"), "the page: %d" % st)
    check("frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1]
          .split(";")[0] and hd.get("x-frame-options") == "DENY" and hd.get("x-content-type-options") == "nosniff",
          "the page's policy: %r" % hd)
    check(hd.get("cross-origin-resource-policy") == "same-origin", "no other site may embed what we serve: %r" % hd)
    for path in ("/app.js", "/app.css"):
        st, hd, body = api(srv, "GET", path, auth=ALICE)
        check(st == 200 and len(body) > 100, "%s: %d" % (path, st))
    st, hd, _ = api(srv, "GET", "/")
    check(st == 401 and hd.get("www-authenticate", "").startswith("Basic"), "the page asks for a login: %d" % st)
    mid = api_json(srv, "/api/v1/messages", auth=ALICE)["messages"][0]["ID"]
    base = "http://127.0.0.1:%d" % srv.http_port
    send = {"From": {"Email": "alice@example.test"}, "To": [{"Email": "bob@example.test"}], "Subject": "csrf " + t, "Text": "x"}
    for hdrs in ({"Origin": "http://evil.test"}, {"Origin": "null"}, {"Origin": base + ".evil.test"},
                 {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site", "Origin": base}):
        st, _, body = api(srv, "POST", "/api/v1/send", body=send, auth=ALICE, headers=hdrs)
        check(st == 403, "a cross-site POST (%r): %d %s" % (hdrs, st, short(body)))
        st, _, _ = api(srv, "DELETE", "/api/v1/messages", body={"IDs": [mid]}, auth=ALICE, headers=hdrs)
        check(st == 403, "a cross-site DELETE (%r): %d" % (hdrs, st))
    check(api_json(srv, "/api/v1/messages", auth=ALICE)["total"] == 1, "nothing deleted or sent")
    check("refused a cross-site POST /api/v1/send" in srv.log_text(), "the refusal is logged")
    st, _, body = api(srv, "POST", "/api/v1/send", body=send, auth=ALICE, headers={"Origin": base, "Sec-Fetch-Site": "same-origin"})
    check(st == 403, "a browser's POST without the page's X-Requested-With: %d %s" % (st, short(body)))
    st, _, body = api(srv, "POST", "/api/v1/send", body=send, auth=ALICE,
                      headers={"Origin": base, "Sec-Fetch-Site": "same-origin", "X-Requested-With": "mailsrv"})
    check(st == 200, "the page's own POST: %d %s" % (st, short(body)))
    st, _, body = api(srv, "PUT", "/api/v1/messages", body={"IDs": [mid], "Read": False}, auth=ALICE,
                      headers={"Origin": "http://mail.school.example", "Sec-Fetch-Site": "same-origin",
                               "X-Requested-With": "mailsrv"})
    check(st == 200, "the page behind a proxy that rewrites Host (the browser says same-origin): %d %s" % (st, short(body)))
    st, _, body = api(srv, "PUT", "/api/v1/messages", body={"IDs": [mid], "Read": True}, auth=ALICE)
    check(st == 200, "a client that is not a browser: %d %s" % (st, short(body)))
    # the admin pages' API
    for path in ("/api/v1/status", "/api/v1/queue", "/api/v1/lists"):
        st, _, _ = api(srv, "GET", path, auth=BOB)
        check(st == 403, "%s for a user: %d" % (path, st))
        api_json(srv, path, auth=ALICE)
    st, _, _ = api(srv, "POST", "/api/v1/queue/flush", auth=BOB)
    check(st == 403, "flush for a user: %d" % st)
    status = api_json(srv, "/api/v1/status", auth=ALICE)
    check(status["MessagesToday"] >= 1 and status["Sessions"]["http"] >= 1 and
          {(l["Protocol"], l["TLS"]) for l in status["Listeners"]} >= {("smtp", "none"), ("pop3", "none"), ("http", "none")},
          "status: %r" % status)
    mb = api_json(srv, "/api/v1/mailboxes", auth=BOB)
    check(mb["User"] == "bob@example.test" and not mb["Admin"] and [m["Address"] for m in mb["Mailboxes"]] == ["bob@example.test"],
          "a user's mailboxes: %r" % mb)
    mb = api_json(srv, "/api/v1/mailboxes", auth=ALICE)
    counts = {m["Address"]: m["Total"] for m in mb["Mailboxes"]}
    check(mb["Admin"] and counts.get("alice@example.test") == 1 and counts.get("bob@example.test") == 1, "an admin's: %r" % mb)
    only = api_json(srv, "/api/v1/messages?mailbox=bob%40example.test", auth=ALICE)
    check(only["total"] == 1 and "csrf" in only["messages"][0]["Subject"], "?mailbox= filters: %r" % only)
    check(api_json(srv, "/api/v1/messages?mailbox=alice%40example.test", auth=BOB)["total"] == 0,
          "?mailbox= cannot reach another's mailbox")
    st, _, _ = api(srv, "DELETE", "/api/v1/messages?mailbox=bob%40example.test", body={}, auth=ALICE)
    check(st == 200 and api_json(srv, "/api/v1/messages", auth=ALICE)["total"] == 1 and
          api_json(srv, "/api/v1/messages", auth=BOB)["total"] == 0, "an admin's delete-all of one mailbox deletes only that one's")



@test()
def web_queue_in_pages(ctx):
    """GET /api/v1/queue lists a page of the queue, as the message lists do (start, limit: 50 by
    default, 1,000 at most), with the Total: the whole queue in one answer was built in one loop
    turn (10,000 entries, 3 MB: other sessions waited 50 ms), and the page asks again each second
    while a retry goes on."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: relaying there is refused
    srv = ctx.server(server=ADMIN_KEYS, sections={"route": {"far.test": "127.0.0.1:%d" % closed.getsockname()[1]},
                                                  "relay": {"retry": "1h"}}).start()
    for i in range(3):
        srv.send(["r%d@far.test" % i], ("From: <alice@example.test>\r\nSubject: q%d\r\n\r\nhi\r\n" % i).encode(),
                 sender="alice@example.test")
    whole = api_json(srv, "/api/v1/queue", auth=ALICE)
    check(whole["Total"] == 3 and whole["Start"] == 0 and len(whole["Entries"]) == 3, "no parameters, a short queue: %r" % whole)
    ids = [e["ID"] for e in whole["Entries"]]
    first = api_json(srv, "/api/v1/queue?limit=2", auth=ALICE)
    check(first["Total"] == 3 and [e["ID"] for e in first["Entries"]] == ids[:2], "limit=2: %r" % first)
    rest = api_json(srv, "/api/v1/queue?start=2&limit=2", auth=ALICE)
    check(rest["Total"] == 3 and rest["Start"] == 2 and [e["ID"] for e in rest["Entries"]] == ids[2:], "start=2: %r" % rest)
    check(api_json(srv, "/api/v1/queue?start=9", auth=ALICE)["Entries"] == [], "start past the end: an empty page")
    for bad in ("limit=-1", "start=x", "limit=2x"):
        st, _, body = api(srv, "GET", "/api/v1/queue?" + bad, auth=ALICE)
        check(st == 400, "%s: %d %s" % (bad, st, short(body)))
    closed.close()


@test()
def web_capture_mode_refuses_rebound_names(ctx):
    """Capture mode trusts loopback clients without a login. A browser that asks for another name
    (a site whose name was made to resolve to 127.0.0.1: DNS rebinding) is refused; localhost and
    127.0.0.1 are served, as is a client that is not a browser. The HTML body's frame opens links
    in a tab of their own and sends no Referer."""
    need_http()
    srv = ctx.server(server={"capture": "yes", "http": "auto"}).start()
    srv.send(["dev@app.test"], b"From: a@b.test\r\nSubject: html\r\nContent-Type: text/html\r\n\r\n<a href=x>l</a>\r\n")
    port = srv.http_port
    for host, browser, want in (("evil.test:%d" % port, True, 403), ("127.0.0.1:%d" % port, True, 200),
                                ("localhost:%d" % port, True, 200), ("[::1]:%d" % port, True, 200),
                                ("127.0.0.1.evil.test:%d" % port, True, 403), ("evil.test", False, 200)):
        h = {"Host": host}
        if browser:
            h["Sec-Fetch-Site"] = "same-origin"
        st, _, body = api(srv, "GET", "/api/v1/messages", headers=h)
        check(st == want, "Host %s (browser: %s): %d, expected %d: %s" % (host, browser, st, want, short(body)))
    mid = api_json(srv, "/api/v1/messages")["messages"][0]["ID"]
    st, hd, body = api(srv, "GET", "/view/%s.html" % mid)
    check(st == 200 and body.startswith(b'<base target="_blank">') and hd.get("referrer-policy") == "no-referrer" and
          "sandbox" in hd.get("content-security-policy", "") and "allow-scripts" not in hd.get("content-security-policy", ""),
          "the HTML body: %d %r %s" % (st, hd, short(body)))
