"""HTTP: the Mailpit-compatible API (issue 15): what it shows of the store, who sees what, and a
request parser that does not let two parsers disagree on where a request ends."""
import base64
import email
import http.client
import json
import os
import re
import socket
import subprocess
import time

from .harness import (BOTH, HERE, PASSWORDS, SENDER, Skip, TestFailure, check, maildir_files, need_program, need_root, run_cli,
                      secs, short, stored, stored_tokens, test, tok)
from .trust_storage import fill_disk

CAPTURE = {"capture": "yes", "http": "auto"}
_HTTP_BUILT = []


def need_http():
    """Skips (as expected) where the binary was built with make HTTP=0 (`mailsrv -V`: "HTTP: no")."""
    if not _HTTP_BUILT:
        r = run_cli(["-V"])
        _HTTP_BUILT.append("HTTP: no" not in r.stdout)
    if not _HTTP_BUILT[0]:
        raise Skip("this build has no HTTP API (make HTTP=0)", expected="nohttp")


def api(srv, method, path, body=None, auth=None, headers=None, conn=None):
    """One request; returns (status, headers dict (lower-case names), body bytes)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=secs(15))
    h = dict(headers or {})
    if auth:
        h["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % auth).encode()).decode()
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        h["Content-Type"] = "application/json"
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        if own:
            c.close()


def api_json(srv, path, auth=None, method="GET", body=None):
    st, hd, data = api(srv, method, path, body=body, auth=auth)
    check(st == 200, "%s %s: status %d: %s" % (method, path, st, short(data)))
    check(hd.get("content-type", "").startswith("application/json"), "%s: Content-Type %s" % (path, hd.get("content-type")))
    return json.loads(data)


def raw_exchange(srv, data, wait_close=True, timeout=10):
    """Sends bytes on a fresh connection; returns all the server sent until it closed (or the timeout)."""
    s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=secs(timeout))
    try:
        s.sendall(data)
        out = b""
        end = time.monotonic() + secs(timeout)
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if not wait_close and b"\r\n\r\n" in out:
                break
        return out
    finally:
        s.close()


def statuses(out):
    """The status of each answer in a stream (the bodies here never hold a status line)."""
    return [int(x) for x in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]


KOI8_SUBJECT = "Привет из класса"
CP1251_NAME = "Отчёт.txt"


def rich_message(token):
    """A message as a classroom client writes it: a KOI8-R subject (RFC 2047), a windows-1251 text
    part in quoted-printable, an HTML alternative, and a base64 attachment with an RFC 2231 name."""
    subj = "=?koi8-r?B?%s?=" % base64.b64encode(KOI8_SUBJECT.encode("koi8-r")).decode()
    text = ("Текст письма %s" % token).encode("cp1251")
    qp = "".join("=%02X" % b if b >= 0x80 or b == 0x3D else chr(b) for b in text)
    attach = bytes(range(256)) * 4
    fname = "".join("%%%02X" % b for b in CP1251_NAME.encode("utf-8"))
    return (
        "From: =?utf-8?B?%s?= <%s>\r\n" % (base64.b64encode("Иван Петров".encode()).decode(), SENDER) +
        "To: Alice <alice@example.test>, \"Bob, B.\" <bob@example.test>\r\n"
        "Cc: carol@example.test\r\n"
        "Subject: %s\r\n" % subj +
        "Message-ID: <%s@client.test>\r\n" % token +
        "Date: Fri, 04 Dec 2026 10:00:00 +0300\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
        "preamble\r\n--outer\r\n"
        "Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
        "--inner\r\nContent-Type: text/plain; charset=windows-1251\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + qp + "\r\n--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML " + token + "</p>\r\n--inner--\r\n"
        "--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename*=utf-8''" + fname + "\r\n\r\n"
        + base64.encodebytes(attach).decode().replace("\n", "\r\n") + "--outer--\r\n"), attach


@test(modes=BOTH)
def http_api_shows_what_smtp_stored(ctx, storage):
    need_http()
    srv = ctx.server(storage=storage, server=CAPTURE).start()
    t = tok()
    msg, attach = rich_message(t)
    srv.send(["alice@example.test", "bob@example.test"], msg)
    lst = api_json(srv, "/api/v1/messages")
    check(lst["total"] == 1 and lst["count"] == 1 and len(lst["messages"]) == 1,
          "one delivery to two mailboxes is one message, as in Mailpit: %s" % short(json.dumps(lst), 400))
    for key in ("total", "unread", "count", "messages_count", "messages_unread", "start", "tags", "messages"):
        check(key in lst, "the list lacks %s" % key)
    m = lst["messages"][0]
    check(m["Subject"] == KOI8_SUBJECT, "KOI8-R subject decoded: %r" % m["Subject"])
    check(m["From"] == {"Name": "Иван Петров", "Address": SENDER}, "From: %r" % m["From"])
    check([a["Address"] for a in m["To"]] == ["alice@example.test", "bob@example.test"], "To: %r" % m["To"])
    check(m["To"][1]["Name"] == "Bob, B.", "a quoted name with a comma: %r" % m["To"])
    check(m["Cc"] == [{"Name": "", "Address": "carol@example.test"}] and m["Bcc"] == [] and m["ReplyTo"] == [],
          "Cc/Bcc/ReplyTo: %r %r %r" % (m["Cc"], m["Bcc"], m["ReplyTo"]))
    check(m["MessageID"] == "%s@client.test" % t and m["Read"] is False and m["Attachments"] == 1, "summary: %r" % m)
    check(("Текст письма %s" % t) in m["Snippet"], "snippet from the windows-1251 text: %r" % m["Snippet"])
    mid = m["ID"]
    full = api_json(srv, "/api/v1/message/" + mid)
    check(full["Text"].strip() == "Текст письма %s" % t, "Text: %r" % full["Text"])
    check("<p>HTML %s</p>" % t in full["HTML"], "HTML: %r" % full["HTML"])
    check(full["Date"].startswith("2026-12-04T07:00:00"), "Date in UTC: %r" % full["Date"])
    check(len(full["Attachments"]) == 1 and full["Inline"] == [], "parts: %r" % full["Attachments"])
    a = full["Attachments"][0]
    check(a["FileName"] == CP1251_NAME and a["ContentType"] == "application/octet-stream" and a["Size"] == len(attach),
          "attachment: %r" % a)
    st, hd, data = api(srv, "GET", "/api/v1/message/%s/part/%s" % (mid, a["PartID"]))
    check(st == 200 and data == attach, "the attachment's bytes: %d, %d bytes" % (st, len(data)))
    latest = api_json(srv, "/api/v1/message/latest")
    check(latest["ID"] == mid, "latest is the newest message")
    hdrs = api_json(srv, "/api/v1/message/%s/headers" % mid)
    check(hdrs.get("Subject") == [KOI8_SUBJECT] and hdrs.get("Message-Id") == ["<%s@client.test>" % t],
          "headers: %s" % short(json.dumps(hdrs), 300))
    st, hd, raw = api(srv, "GET", "/api/v1/message/%s/raw" % mid)
    check(st == 200 and b"Content-Type: multipart/mixed" in raw and b"\r\n" in raw, "raw: %s" % short(raw))
    parsed = email.message_from_bytes(raw)
    check(parsed["Message-ID"] == "<%s@client.test>" % t, "the raw text is the message")
    st, hd, html = api(srv, "GET", "/view/%s.html" % mid)
    check(st == 200 and b"<p>HTML" in html and "sandbox" in hd.get("content-security-policy", ""),
          "view .html: %d %s" % (st, hd.get("content-security-policy")))
    st, hd, txt = api(srv, "GET", "/view/%s.txt" % mid)
    check(st == 200 and ("Текст письма %s" % t).encode() in txt, "view .txt: %d %s" % (st, short(txt)))
    st, _, data = api(srv, "GET", "/api/v1/message/nosuchid")
    check(st == 404, "an unknown ID: %d" % st)
    for path in ("/api/v1/tags", "/api/v1/message/%s/html-check" % mid, "/api/v1/message/%s/part/2/thumb" % mid):
        st, hd, data = api(srv, "GET", path)
        check(st == 404 and hd.get("content-type") == "application/json" and "Error" in json.loads(data),
              "%s: a clear JSON 404, got %d %s" % (path, st, short(data)))


@test(modes=BOTH)
def http_api_shows_long_lines(ctx, storage):
    """Issue 18.2: a message with lines of 1,500 and 100,000 octets (now accepted) is shown by the
    HTTP API whole: Text has both lines, /raw gives the message as sent."""
    need_http()
    srv = ctx.server(storage=storage, server=dict(CAPTURE, max_message_size="1M")).start()
    t = tok()
    l1 = "".join(chr(ord("a") + i % 26) for i in range(1500))
    l2 = "".join("%05d," % i for i in range(100000 // 6))
    body = "before\r\n%s\r\n%s\r\nafter\r\n" % (l1, l2)
    msg = ("From: <%s>\r\nTo: <alice@example.test>\r\nSubject: long %s\r\nMessage-ID: <%s@client.test>\r\n\r\n"
           % (SENDER, t, t) + body).encode()
    check(srv.send(["alice@example.test"], msg) == {}, "refused")
    lst = api_json(srv, "/api/v1/messages")
    check(lst["total"] == 1, "messages: %s" % short(json.dumps(lst), 300))
    mid = lst["messages"][0]["ID"]
    full = api_json(srv, "/api/v1/message/" + mid)
    check(full["Text"].replace("\r\n", "\n") == body.replace("\r\n", "\n"), "Text: %s" % short(full["Text"], 200))
    st, hd, raw = api(srv, "GET", "/api/v1/message/%s/raw" % mid)
    check(st == 200 and raw.endswith(msg.partition(b"\r\n\r\n")[2]) and msg.partition(b"\r\n\r\n")[0] in raw,
          "raw: %d %s" % (st, short(raw[-200:], 200)))


@test(modes=BOTH)
def http_api_read_and_delete_as_pop3_sees_them(ctx, storage):
    need_http()
    srv = ctx.server(storage=storage, server=CAPTURE).start()
    tokens = []
    for i in range(4):
        t, _ = srv.deliver(to="alice@example.test")
        tokens.append(t)
    lst = api_json(srv, "/api/v1/messages")
    check(lst["total"] == 4 and lst["unread"] == 4, "4 unread: %r" % {k: lst[k] for k in ("total", "unread")})
    ids = [m["ID"] for m in lst["messages"]]  # newest first
    st, _, data = api(srv, "PUT", "/api/v1/messages", body={"IDs": ids[:1], "Read": True})
    check(st == 200 and data == b"ok", "PUT Read: %d %s" % (st, short(data)))
    lst = api_json(srv, "/api/v1/messages")
    if storage == "maildir":
        check(lst["unread"] == 3 and lst["messages"][0]["Read"] is True, "read mark: %r" % lst["messages"][0])
        cur = maildir_files(srv, "alice@example.test", subs=("cur",))
        check(len(cur) == 1 and cur[0][-4:] in (":2,S", "!2,S"), "Maildir: in cur/ with the S flag: %s" % cur)
    p = srv.pop("alice@example.test")  # POP3 sees the same four (the read mark changes nothing there)
    check(p.stat()[0] == 4, "POP3 after the read mark")
    uidls = set(p.uidl().values())
    check(len(uidls) == 4, "UIDLs: %s" % uidls)
    p.quit()
    st, _, data = api(srv, "DELETE", "/api/v1/messages", body={"IDs": ids[1:3]})
    check(st == 200 and data == b"ok", "DELETE IDs: %d %s" % (st, short(data)))
    left = stored_tokens(srv, "alice@example.test")
    check(sorted(left) == sorted([tokens[3], tokens[0]]), "deleted the two asked for: left %s of %s" % (left, tokens))
    p = srv.pop("alice@example.test")
    check(p.stat()[0] == 2, "POP3 sees the deletion")
    p.ok("DELE 1")
    p.quit()
    lst = api_json(srv, "/api/v1/messages")
    check(lst["total"] == 1, "the API sees POP3's deletion: %d" % lst["total"])
    st, _, data = api(srv, "DELETE", "/api/v1/messages")
    check(st == 200 and api_json(srv, "/api/v1/messages")["total"] == 0, "DELETE without a body: all")


@test()
def http_api_search(ctx):
    need_http()
    srv = ctx.server(server=CAPTURE).start()
    srv.send(["alice@example.test"], "From: Zed <zed@far.test>\r\nTo: alice@example.test\r\nSubject: Invoice 42\r\n\r\nPay now\r\n")
    srv.send(["bob@example.test"], "From: amy@near.test\r\nTo: bob@example.test\r\nSubject: Lunch?\r\n\r\nPizza at noon\r\n")
    msg, _ = rich_message(tok())
    srv.send(["carol@example.test"], msg)

    def found(q):
        r = api_json(srv, "/api/v1/search?query=" + __import__("urllib.parse").parse.quote(q))
        check(r["messages_count"] == len(r["messages"]) or r["messages_count"] > 50, "search count: %r" % r)
        return sorted(m["Subject"] for m in r["messages"])
    check(found("subject:invoice") == ["Invoice 42"], "subject: %r" % found("subject:invoice"))
    check(found("from:near.test") == ["Lunch?"], "from: %r" % found("from:near.test"))
    check(found("pizza") == ["Lunch?"], "free text in the body: %r" % found("pizza"))
    check(found('"pay now"') == ["Invoice 42"], "a quoted phrase: %r" % found('"pay now"'))
    check(found("-subject:invoice") == sorted(["Lunch?", KOI8_SUBJECT]), "negation: %r" % found("-subject:invoice"))
    check(found("!from:zed has:attachment") == [KOI8_SUBJECT], "has:attachment: %r" % found("!from:zed has:attachment"))
    check(found("привет") == [KOI8_SUBJECT], "a Cyrillic word (as UTF-8) in a KOI8-R subject: %r" % found("привет"))
    check(found("is:unread larger:1k") == [KOI8_SUBJECT], "is:unread larger:1k: %r" % found("is:unread larger:1k"))
    check(found("to:alice smaller:1k") == ["Invoice 42"], "to: smaller: %r" % found("to:alice smaller:1k"))
    st, _, _ = api(srv, "DELETE", "/api/v1/search?query=subject%3Alunch")
    check(st == 200 and found("") == sorted(["Invoice 42", KOI8_SUBJECT]), "DELETE search: %r" % found(""))
    st, _, data = api(srv, "GET", "/api/v1/search?query=larger%3Ahuge")
    check(st == 400, "a malformed size: %d %s" % (st, short(data)))


@test()
def http_api_logins_and_isolation(ctx):
    need_http()
    srv = ctx.server(server={"http": "auto", "admins": "carol@example.test"}).start()
    ta, _ = srv.deliver(to="alice@example.test")
    tb, _ = srv.deliver(to="bob@example.test")
    st, hd, _ = api(srv, "GET", "/api/v1/messages")
    check(st == 401 and hd.get("www-authenticate", "").startswith("Basic"), "no login: %d %s" % (st, hd))
    alice = ("alice@example.test", PASSWORDS["alice@example.test"])
    bob = ("bob@example.test", PASSWORDS["bob@example.test"])
    la = api_json(srv, "/api/v1/messages", auth=alice)
    lb = api_json(srv, "/api/v1/messages", auth=bob)
    check(la["total"] == 1 and lb["total"] == 1 and ta in la["messages"][0]["Subject"] and tb in lb["messages"][0]["Subject"],
          "each sees only their own: %r / %r" % (la["messages"], lb["messages"]))
    bob_id = lb["messages"][0]["ID"]
    st, _, _ = api(srv, "GET", "/api/v1/message/" + bob_id, auth=alice)
    check(st == 404, "alice asks for bob's message by ID: %d" % st)
    st, _, _ = api(srv, "DELETE", "/api/v1/messages", body={"IDs": [bob_id]}, auth=alice)
    check(st == 200 and stored_tokens(srv, "bob@example.test") == [tb], "alice cannot delete bob's message")
    admin = api_json(srv, "/api/v1/messages", auth=("carol@example.test", PASSWORDS["carol@example.test"]))
    check(admin["total"] == 2, "an admin sees every mailbox: %d" % admin["total"])
    # a wrong password: 401 after the same delay as SMTP and POP3 (one failure: 1 s)
    t0 = time.monotonic()
    st, _, _ = api(srv, "GET", "/api/v1/messages", auth=("alice@example.test", "wrong"))
    took = time.monotonic() - t0
    check(st == 401 and took >= 0.9, "wrong password: %d after %.2fs" % (st, took))
    check("auth failed from 127.0.0.1 user=<alice@example.test>" in srv.log_text(), "logged for fail2ban")
    # the failures count for POP3 too (shared throttling): the next POP3 failure waits 2 s
    p = srv.pop()
    t0 = time.monotonic()
    p.cmd("USER alice@example.test")
    r = p.cmd("PASS nope")
    check(r.startswith(b"-ERR") and time.monotonic() - t0 >= 1.9, "POP3 after an HTTP failure: %.2fs" % (time.monotonic() - t0))
    p.close()
    # keep-alive: one connection, many requests, one login hashed
    c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=secs(10))
    for i in range(5):
        st, hd, _ = api(srv, "GET", "/api/v1/messages", auth=alice, conn=c)
        check(st == 200, "keep-alive request %d: %d" % (i, st))
    c.close()


@test()
def http_request_smuggling_and_limits(ctx):
    need_http()
    srv = ctx.server(server=dict(CAPTURE, timeout="3")).start()
    cases = [
        (b"POST /api/v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /api/v1/send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"PUT /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef", 400),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /livez HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"BREW /livez HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"PUT /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /api/v1/message/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"GET /api/v1/message/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    ]
    for req, want in cases:
        out = raw_exchange(srv, req)
        check(statuses(out)[:1] == [want], "%s: want %d, got %s" % (short(req, 80), want, short(out, 200)))
        if want != 404:
            check(b"Connection: close" in out, "%s: closes after the error" % short(req, 60))
    # pipelined requests are answered in order on one connection; HTTP/1.0 closes after its answer
    out = raw_exchange(srv, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                       b"GET /readyz HTTP/1.0\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    check(statuses(out) == [200, 404, 200], "pipelined: %s" % statuses(out))
    # a request's body that does not come, and a head sent a byte a second: cut at `timeout` (3 s) with 408
    s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=secs(10))
    t0 = time.monotonic()
    s.sendall(b"PUT /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    took = time.monotonic() - t0
    check(statuses(data) == [408] and 2.5 <= took <= secs(8), "slow body: %s after %.1fs" % (short(data), took))
    s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=secs(10))
    t0 = time.monotonic()
    closed = False
    for ch in b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 30:
        try:
            s.sendall(bytes([ch]))
        except OSError:
            closed = True
            break
        s.settimeout(0.3)
        try:
            if s.recv(4096) == b"":
                closed = True
                break
        except socket.timeout:
            pass
        if time.monotonic() - t0 > secs(8):
            break
    s.close()
    check(closed and time.monotonic() - t0 <= secs(7), "slowloris cut at the timeout: closed=%s after %.1fs"
          % (closed, time.monotonic() - t0))
    check(api(srv, "GET", "/livez")[0] == 200, "still serving")


def need_mailpit_client():
    """node and the pinned mailpit-api package (test/npm: `npm ci` there; .ci/run does it)."""
    node = need_program("node", "nodejs")
    mod = os.path.join(HERE, "npm", "node_modules", "mailpit-api", "package.json")
    if not os.path.exists(mod):
        if os.environ.get("CI") == "true":
            raise TestFailure("test/npm/node_modules lacks mailpit-api: run `npm ci` in test/npm (.ci/run does)")
        raise Skip("the mailpit-api npm package is not installed: cd test/npm && npm ci")
    return node


@test(limit=60)
def http_mailpit_api_client(ctx):
    """Every endpoint the mailpit-api npm client offers that mailsrv serves, through that client."""
    need_http()
    node = need_mailpit_client()
    srv = ctx.server(server=CAPTURE).start()
    t = tok()
    rich, _ = rich_message(t)
    srv.send(["alice@example.test"], rich)
    subj = "=?windows-1251?Q?%s?=" % "".join(
        "=%02X" % b if b >= 0x80 or b in (0x3D, 0x3F, 0x5F, 0x20) else chr(b) for b in "Проверка windows-1251".encode("cp1251"))
    srv.send(["bob@example.test"], "From: x@client.test\r\nTo: bob@example.test\r\nSubject: %s\r\n\r\nhi\r\n" % subj)
    srv.send(["alice@example.test"], "From: y@client.test\r\nTo: alice@example.test\r\nSubject: Plain %s\r\n\r\nhi\r\n" % t)
    p = subprocess.run([node, os.path.join(HERE, "npm", "mailpit_api.mjs"), "http://127.0.0.1:%d" % srv.http_port, t],
                       cwd=os.path.join(HERE, "npm"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=secs(50))
    out = p.stdout.decode("utf-8", "replace")
    check(p.returncode == 0 and "checks passed" in out, "the mailpit-api client: %s" % out[-1500:])


@test(modes=BOTH)
def http_api_send_release_and_events(ctx, storage):
    """POST /send stores as SMTP would (and a login may send only as itself under sender_login =
    strict); release sends a stored message on; the event stream says so as it happens."""
    need_http()
    srv = ctx.server(storage=storage, server=CAPTURE).start()
    ev = socket.create_connection(("127.0.0.1", srv.http_port), timeout=secs(10))
    ev.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    evf = ev.makefile("rb")
    check(evf.readline().startswith(b"HTTP/1.1 200"), "the event stream's head")
    t = tok()
    content = bytes(range(256))
    req = {"From": {"Email": "app@client.test", "Name": "Приложение"},
           "To": [{"Email": "alice@example.test", "Name": "Alice"}], "Cc": [{"Email": "bob@example.test"}],
           "Bcc": ["carol@example.test"], "Subject": "Заказ %s" % t, "Text": "Текст %s" % t, "HTML": "<b>%s</b>" % t,
           "Headers": {"X-App": "shop"},
           "Attachments": [{"Filename": "a.bin", "Content": base64.b64encode(content).decode(), "ContentType": "application/x-test"}]}
    st, hd, data = api(srv, "POST", "/api/v1/send", body=req)
    check(st == 200, "send: %d %s" % (st, short(data)))
    sid = json.loads(data)["ID"]
    for addr in ("alice@example.test", "bob@example.test", "carol@example.test"):
        got = stored(srv, addr)
        check(len(got) == 1 and b"X-App: shop" in got[0], "stored for %s (Bcc too): %d" % (addr, len(got)))
        check(addr == "carol@example.test" or b"carol" not in got[0].split(b"\n\n")[0], "no Bcc field")
    m = api_json(srv, "/api/v1/message/" + sid)
    check(m["Subject"] == "Заказ %s" % t and m["From"] == {"Name": "Приложение", "Address": "app@client.test"},
          "the sent message: %r %r" % (m["Subject"], m["From"]))
    check(m["Text"].strip() == "Текст %s" % t and "<b>%s</b>" % t in m["HTML"], "bodies: %r" % m["Text"])
    check([a["Address"] for a in m["Cc"]] == ["bob@example.test"] and m["Bcc"] == [], "Cc, and no Bcc field")
    att = m["Attachments"]
    check(len(att) == 1 and att[0]["FileName"] == "a.bin", "attachment: %r" % att)
    st, _, got = api(srv, "GET", "/api/v1/message/%s/part/%s" % (sid, att[0]["PartID"]))
    check(got == content, "attachment bytes round trip")
    hdrs = api_json(srv, "/api/v1/message/%s/headers" % sid)
    check(hdrs.get("X-App") == ["shop"], "custom header: %r" % hdrs.get("X-App"))
    line = b""
    end = time.monotonic() + secs(5)
    while b"event: new" not in line and time.monotonic() < end:
        line = evf.readline()
    data = evf.readline()
    check(b"event: new" in line and sid.encode() in data, "the stream told of the new message: %s %s" % (line, data))
    # field injection and bad input: refused, nothing stored
    for bad in ({"From": {"Email": "a@b.test\r\nBcc: x@y.test"}, "To": [{"Email": "alice@example.test"}]},
                {"From": {"Email": "a@b.test"}, "To": []},
                {"From": {"Email": "a@b.test"}, "To": [{"Email": "alice@example.test"}], "Headers": {"X-A\r\nB": "c"}},
                {"From": {"Email": "a@b.test"}, "To": [{"Email": "alice@example.test"}], "Attachments": [{"Filename": "x", "Content": "%%%"}]}):
        st, _, data = api(srv, "POST", "/api/v1/send", body=bad)
        check(st == 400 and "Error" in json.loads(data), "bad send: %d %s" % (st, short(data)))
    st, _, data = api(srv, "POST", "/api/v1/send", body="{not json")
    check(st == 400, "not JSON: %d" % st)
    # release: the stored message to another address
    st, _, data = api(srv, "POST", "/api/v1/message/%s/release" % sid, body={"To": ["dave@other.test"]})
    check(st == 200 and data == b"ok", "release: %d %s" % (st, short(data)))
    got = stored(srv, "dave@other.test")
    check(len(got) == 1 and b"X-App: shop" in got[0] and got[0].count(b"Return-Path:") == 1, "released to dave: %d" % len(got))
    st, _, _ = api(srv, "DELETE", "/api/v1/messages", body={"IDs": [sid]})
    got = b""
    end = time.monotonic() + secs(5)
    while b"event: delete" not in got and time.monotonic() < end:
        got += evf.readline()
    check(b"event: delete" in got, "the stream told of the deletion: %s" % short(got))
    ev.close()


@test()
def http_api_send_as_login_and_chaos(ctx):
    need_http()
    srv = ctx.server(server={"http": "auto", "admins": "carol@example.test", "sender_login": "strict"}).start()
    alice = ("alice@example.test", PASSWORDS["alice@example.test"])
    carol = ("carol@example.test", PASSWORDS["carol@example.test"])
    ok = {"From": {"Email": "alice@example.test"}, "To": [{"Email": "bob@example.test"}], "Subject": "hi", "Text": "x"}
    st, _, data = api(srv, "POST", "/api/v1/send", body=ok)
    check(st == 401, "send needs a login: %d" % st)
    st, _, data = api(srv, "POST", "/api/v1/send", body=ok, auth=alice)
    check(st == 200, "alice sends as herself: %d %s" % (st, short(data)))
    check(len(stored_tokens(srv, "bob@example.test")) == 1, "stored for bob")
    forged = dict(ok, From={"Email": "bob@example.test"})
    st, _, data = api(srv, "POST", "/api/v1/send", body=forged, auth=alice)
    check(st == 400 and b"sender_login" in data, "sender_login = strict: %d %s" % (st, short(data)))
    # chaos: only an admin sets it; then SMTP answers as told
    st, _, _ = api(srv, "PUT", "/api/v1/chaos", body={"Sender": {"ErrorCode": 451, "Probability": 100}}, auth=alice)
    check(st == 403, "chaos needs an admin: %d" % st)
    r = api_json(srv, "/api/v1/chaos", method="PUT", body={"Recipient": {"ErrorCode": 452, "Probability": 100}}, auth=carol)
    check(r["Recipient"] == {"ErrorCode": 452, "Probability": 100} and r["Sender"]["Probability"] == 0, "chaos set: %r" % r)
    c = srv.smtp()
    c.expect("MAIL FROM:<x@client.test>", 250)
    code, text = c.cmd("RCPT TO:<alice@example.test>")
    check(code == 452, "RCPT under chaos: %d %s" % (code, text))
    c.close()
    st, _, _ = api(srv, "PUT", "/api/v1/chaos", body={"Sender": {"ErrorCode": 700, "Probability": 5}}, auth=carol)
    check(st == 400, "a bad ErrorCode: %d" % st)
    r = api_json(srv, "/api/v1/chaos", method="PUT", auth=carol)
    check(all(v["Probability"] == 0 for v in r.values()), "reset: %r" % r)
    check(srv.rcpt_code("alice@example.test")[0] == 250, "no chaos after the reset")


@test()
def http_client_setup_documents(ctx):
    """Thunderbird's autoconfig, Outlook's autodiscover and an Apple profile: well-formed, and the
    ports the listeners really use, best first (implicit TLS, then STARTTLS, then plain)."""
    need_http()
    import xml.etree.ElementTree as ET
    srv = ctx.server(server={"http": "auto"}).start()
    for path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
        st, hd, data = api(srv, "GET", path + "?emailaddress=alice%40example.test")
        check(st == 200 and "xml" in hd.get("content-type", ""), "%s: %d" % (path, st))
        root = ET.fromstring(data)
        prov = root.find("emailProvider")
        check(prov.find("domain").text == "example.test", "domain")
        inc = prov.findall("incomingServer")
        out = prov.findall("outgoingServer")
        check([int(x.find("port").text) for x in inc] == [srv.pop3_port], "POP3 port: %s" % [x.find("port").text for x in inc])
        check([int(x.find("port").text) for x in out] == [srv.sub_port], "submission port: %s" % [x.find("port").text for x in out])
        check(inc[0].find("hostname").text == "127.0.0.1" and inc[0].find("socketType").text == "plain",
              "host: the address the client reached; plain (no TLS here)")
        check(inc[0].find("username").text == "%EMAILADDRESS%", "username")
    st, _, data = api(srv, "POST", "/autodiscover/autodiscover.xml",
                      body=b"<?xml version=\"1.0\"?><Autodiscover><Request><EMailAddress>bob@example.test</EMailAddress>"
                           b"</Request></Autodiscover>", headers={"Content-Type": "text/xml"})
    check(st == 200, "autodiscover: %d" % st)
    ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    protos = ET.fromstring(data).findall(".//r:Protocol", ns)
    got = {p.find("r:Type", ns).text: (int(p.find("r:Port", ns).text), p.find("r:LoginName", ns).text) for p in protos}
    check(got == {"POP3": (srv.pop3_port, "bob@example.test"), "SMTP": (srv.sub_port, "bob@example.test")}, "autodiscover: %r" % got)
    st, hd, data = api(srv, "GET", "/apple/mail.mobileconfig?emailaddress=carol%40example.test")
    import plistlib
    pl = plistlib.loads(data)
    acct = pl["PayloadContent"][0]
    check(acct["IncomingMailServerPortNumber"] == srv.pop3_port and acct["OutgoingMailServerPortNumber"] == srv.sub_port and
          acct["EmailAddress"] == "carol@example.test", "Apple profile: %r" % acct)
    st, _, _ = api(srv, "GET", "/mail/config-v1.1.xml?emailaddress=%3Cscript%3E")
    check(st == 400, "not an address: %d" % st)


@test(tls=True)
def http_api_over_https(ctx):
    """https = ...: the same API over TLS from the first byte (the certificate of tls_cert)."""
    need_http()
    import ssl
    from .harness import free_ports
    from .tls import tls_server
    port = free_ports(1)[0]
    srv = tls_server(ctx, implicit=False, server={"capture": "yes", "https": "127.0.0.1:%d" % port}).start()
    srv.deliver(to="alice@example.test")
    sc = ssl.create_default_context(cafile=srv.cert)
    sc.check_hostname = False
    deadline_ = time.monotonic() + secs(10)
    while True:
        try:
            c = http.client.HTTPSConnection("127.0.0.1", port, context=sc, timeout=secs(10))
            st, hd, data = api(srv, "GET", "/api/v1/messages", conn=c)
            break
        except OSError:
            check(time.monotonic() < deadline_, "https listener not answering")
            time.sleep(0.05)
    check(st == 200 and json.loads(data)["total"] == 1, "over TLS: %d %s" % (st, short(data)))
    st, _, _ = api(srv, "GET", "/livez", conn=c)
    check(st == 200, "keep-alive over TLS")
    c.close()


@test()
def http_read_mark_under_an_open_pop3_session(ctx):
    """A message marked read over HTTP (moved to cur/ with the S flag) while a POP3 session holds
    its view of the mailbox: that session still retrieves it and deletes it at QUIT."""
    need_http()
    srv = ctx.server(server=CAPTURE).start()
    t, _ = srv.deliver(to="alice@example.test")
    p = srv.pop("alice@example.test")
    check(p.stat()[0] == 1, "POP3 sees the message")
    mid = api_json(srv, "/api/v1/messages")["messages"][0]["ID"]
    st, _, _ = api(srv, "PUT", "/api/v1/messages", body={"IDs": [mid], "Read": True})
    check(st == 200 and maildir_files(srv, "alice@example.test", subs=("cur",)), "moved to cur/")
    data = p.retr(1)
    check(t.encode() in data, "RETR after the move: %s" % short(data))
    p.ok("DELE 1")
    p.quit()
    check(maildir_files(srv, "alice@example.test") == [], "deleted at QUIT: %s" % maildir_files(srv, "alice@example.test"))


@test()
def http_reload_forgets_remembered_logins(ctx):
    """A login is remembered for the next requests; a reload that changes the password ends that,
    on a keep-alive connection as on a new one."""
    need_http()
    srv = ctx.server(server={"http": "auto"}).start()
    old = ("alice@example.test", PASSWORDS["alice@example.test"])
    c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=secs(10))
    check(api(srv, "GET", "/api/v1/messages", auth=old, conn=c)[0] == 200, "the login")
    check(api(srv, "GET", "/api/v1/messages", auth=old)[0] == 200, "remembered for a new connection")
    srv.domains = srv.domains.replace("alice = Passw0rd1", "alice = N3wPassword")
    srv.write_ini()
    r = run_cli(["-c", srv.ini, "reload"])
    check(r.returncode == 0, "reload: %s" % short(r.stdout + r.stderr))
    check(api(srv, "GET", "/api/v1/messages", auth=old, conn=c)[0] == 401, "the old password on the same connection")
    c.close()
    check(api(srv, "GET", "/api/v1/messages", auth=old)[0] == 401, "the old password on a new connection")
    check(api(srv, "GET", "/api/v1/messages", auth=("alice@example.test", "N3wPassword"))[0] == 200, "the new one")


@test(modes=BOTH)
def http_events_see_pop3_deletions(ctx, storage):
    """A message POP3 deletes at QUIT is announced on the event stream as one the API deleted."""
    need_http()
    srv = ctx.server(storage=storage, server=CAPTURE).start()
    srv.deliver(to="alice@example.test")
    mid = api_json(srv, "/api/v1/messages")["messages"][0]["ID"]
    ev = socket.create_connection(("127.0.0.1", srv.http_port), timeout=secs(10))
    ev.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    evf = ev.makefile("rb")
    check(evf.readline().startswith(b"HTTP/1.1 200"), "the event stream's head")
    while evf.readline() not in (b"\n", b""):  # its head and the opening comment
        pass
    p = srv.pop("alice@example.test")
    p.ok("DELE 1")
    p.quit()
    got = b""
    end = time.monotonic() + secs(5)
    while b"event: delete" not in got and time.monotonic() < end:
        got += evf.readline()
    got += evf.readline()
    ev.close()
    check(b"event: delete" in got and mid.encode() in got, "the POP3 deletion on the stream: %s" % short(got))


@test()
def http_review_findings(ctx):
    """What a review found (each failed before its fix): a head without a line end logged past the
    buffer; a part's charset carried CR LF into the answer's fields; a part was served as active
    content on the API's origin; a body with a misspelt key deleted everything; /send's Headers
    could add a second From; large bodies were read before any login; an unbounded limit."""
    need_http()
    srv = ctx.server(server=CAPTURE).start()
    out = raw_exchange(srv, b"GET /" + b"a" * 20000)
    check(statuses(out) in ([431], [414]), "a 20 KB head without a line end: %s" % short(out))
    check(api(srv, "GET", "/livez")[0] == 200, "still serving after it")
    srv.send(["alice@example.test"], "From: x@client.test\r\nTo: alice@example.test\r\nSubject: evil\r\nMIME-Version: 1.0\r\n"
             "Content-Type: text/html; charset*=utf-8''x%0D%0AX-Injected:%20yes%0D%0A\r\n\r\n<script>alert(1)</script>\r\n")
    st, hd, data = api(srv, "GET", "/api/v1/message/latest/part/1")
    check(st == 200 and "x-injected" not in hd, "no field injected through a charset: %r" % hd)
    check("sandbox" in hd.get("content-security-policy", ""), "a part is served sandboxed: %r" % hd)
    t, _ = srv.deliver(to="bob@example.test")
    before = api_json(srv, "/api/v1/messages")["total"]
    for body in ({"ids": ["nope"]}, {"IDs": "x"}, {"IDs": None}, {"Nothing": 1}, {"Search": 5}):
        st, _, _ = api(srv, "DELETE", "/api/v1/messages", body=body)
        left = api_json(srv, "/api/v1/messages")["total"]
        check(left == before, "DELETE %r (status %d) deleted %d messages" % (body, st, before - left))
        check(st in (200, 400), "DELETE %r: %d" % (body, st))
    check(api(srv, "PUT", "/api/v1/messages", body={"ids": [], "read": True})[0] == 200 and
          api_json(srv, "/api/v1/messages")["unread"] == before, "lower-case keys, as Go's JSON decoder takes them")
    st, _, data = api(srv, "POST", "/api/v1/send", body={"From": {"Email": "a@client.test"}, "To": [{"Email": "carol@example.test"}],
                                                         "Headers": {"From": "ceo@bank.test"}})
    check(st == 400 and stored(srv, "carol@example.test") == [], "Headers may not set From: %d %s" % (st, short(data)))
    lst = api_json(srv, "/api/v1/messages?limit=100000")
    check(lst["count"] <= 1000, "limit is capped")


@test(modes=BOTH, limit=60)
def http_send_and_release_on_a_full_disk(ctx, storage):
    """POST /send and a release on a full file system (a small tmpfs, mounted by the test as root)
    answer 503, so that the client tries again later, as SMTP's 452 tells it; nothing is half
    stored. (Was 400: a client takes that as its own mistake and gives up.)"""
    need_http()
    need_root()
    srv = ctx.server(storage=storage, server={"http": "auto", "admins": "alice@example.test"})
    os.makedirs(srv.spool)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", srv.spool], capture_output=True, text=True,
                       timeout=secs(10))
    if r.returncode != 0:
        raise Skip("cannot mount a tmpfs: %s" % r.stderr.strip())
    alice = ("alice@example.test", PASSWORDS["alice@example.test"])
    try:
        srv.start()
        t, _ = srv.deliver(to="alice@example.test")
        mid = api_json(srv, "/api/v1/messages", auth=alice)["messages"][0]["ID"]
        free = fill_disk(srv.spool)
        check(free < 8192, "the file system is not full: %d bytes free" % free)
        send = {"From": {"Email": "alice@example.test"}, "To": [{"Email": "bob@example.test"}], "Subject": "full " + t,
                "Text": "y" * 20000}
        st, _, body = api(srv, "POST", "/api/v1/send", body=send, auth=alice)
        check(st == 503 and "Error" in json.loads(body), "send on a full disk: %d %s" % (st, short(body)))
        st, _, body = api(srv, "POST", "/api/v1/message/%s/release" % mid, body={"To": ["bob@example.test"]}, auth=alice)
        check(st == 503, "release on a full disk: %d %s" % (st, short(body)))
        check(api_json(srv, "/api/v1/messages?mailbox=bob%40example.test", auth=alice)["total"] == 0, "nothing stored for bob")
        os.unlink(os.path.join(srv.spool, ".fill"))
        st, _, body = api(srv, "POST", "/api/v1/send", body=send, auth=alice)
        check(st == 200, "send once there is room again: %d %s" % (st, short(body)))
    finally:
        srv.stop()
        subprocess.run(["umount", srv.spool], capture_output=True, timeout=secs(20))
