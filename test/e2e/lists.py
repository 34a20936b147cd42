"""Mailing lists: confirmed subscription, posts, bounces, loops."""
import base64
import email
import glob
import os
import random
import re
import smtplib
import socket
import struct
import threading
import time

from .harness import (BOTH, DOMAINS, Net, PASSWORDS, Smtp, check, dot_stuff, header, make_msg, mbox_path, need_native,
                      need_program, plain, run_cli,
                      secs, short, stored, test, tok, wait_for)
from .cli import read
from .relay import queue_files, sink_wait


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


def many_members_server(ctx, n, storage="maildir"):
    """A server (not started) whose list news@example.test (post = anyone) has n members,
    m0001..mNNNN@many.test, each a mailbox of its own that has no Maildir or mbox yet. The users share
    one `mailsrv passwd` hash (a plain-text password costs a PBKDF2 each at start); the state is
    written as the list keeps it. Returns (srv, the members)."""
    r = run_cli(["passwd"], input="Passw0rdM\n")
    hashed = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    check(hashed.startswith("$"), "passwd: exit %d, %s" % (r.returncode, short(r.stdout + r.stderr)))
    addrs = ["m%04d@many.test" % i for i in range(1, n + 1)]
    domains = (DOMAINS + "\n[alias many.test]\npostmaster = alice@example.test\n\n[domain many.test]\n" +
               "".join("%s = %s\n" % (a.split("@")[0], hashed) for a in addrs))
    srv = ctx.server(storage=storage, domains=domains,
                     sections={"list " + LIST: {"owner": "alice@example.test", "post": "anyone"}})
    sdir = os.path.join(srv.spool, "example.test", ".lists", "news")
    os.makedirs(sdir)
    with open(os.path.join(sdir, "state"), "w") as f:
        f.write("mailsrv-list 1\nseq 0\n")
        for i, a in enumerate(addrs):
            f.write("member %s 1700000000 127.0.0.1 <req.%d@client.test> 1700000060 127.0.0.1 <conf.%d@client.test> 0 0\n"
                    % (a, i, i))
    return srv, addrs


def post_slowly(srv, sender, to=LIST, limit=60):
    """A post whose 250 may take long (a list of many members): its token and the final reply."""
    t = tok()
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: to everyone\r\nMessage-ID: <%s@client.test>\r\nX-Test-Token: %s\r\n\r\n"
           % (sender, to, t, t)).encode() + b"the same text for every member\r\n" * 50
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(limit)) as s:
        s.ehlo()
        s.mail(sender)
        code, text = s.rcpt(to)
        check(code == 250, "RCPT TO:<%s>: %d %s" % (to, code, text))
        code, text = s.data(msg)
    return t, code, text.decode("latin-1")


def check_one_copy_each(srv, addrs, t, seq):
    """Each of addrs holds exactly one message, post seq with token t, and all are the same text."""
    first = None
    for a in addrs:
        got = stored(srv, a)
        check(len(got) == 1, "%s holds %d messages, expected the post once" % (a, len(got)))
        first = first if first is not None else got[0]
        check(got[0] == first, "%s holds another text than %s" % (a, addrs[0]))
    check(("X-Test-Token: %s" % t).encode() in first and b"X-Mailsrv-Seq: %d\n" % seq in first,
          "the copy is not post %d of token %s: %s" % (seq, t, short(first.decode("latin-1"), 300)))


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


@test(modes=BOTH)
def list_post_long_lines(ctx, storage):
    """Issue 18.2: a list post with a 1,500-octet header line and a 100,000-octet body line (now
    accepted) reaches a member whole: both lines as they were sent."""
    lk = {"owner": "alice@example.test", "post": "anyone", "subject_prefix": "[news]"}
    srv = ctx.server(storage=storage, server={"max_message_size": "1M"}, sections={"list " + LIST: lk}).start()
    subscribe(srv, "bob@example.test")
    hline = "X-Long: " + " ".join("w%04d" % i for i in range(250))
    bline = "".join("%05d," % i for i in range(100000 // 6))
    t, refused = post(srv, "carol@example.test", subject="long", body="a\r\n%s\r\nb\r\n" % bline, extra=hline + "\r\n")
    check(refused == {}, "post refused: %s" % refused)
    got = wait_for(lambda: [d for d in posts(srv, "bob@example.test") if t.encode() in d], 10, "the post at bob")
    head, _, body = got[0].partition(b"\r\n\r\n")
    check((hline + "\r\n").encode() in head + b"\r\n", "the long header line changed: %s" % short(head, 300))
    check(body.startswith(("a\r\n%s\r\nb\r\n" % bline).encode()), "the long body line changed: %s" % short(body, 300))


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


@test(modes=BOTH, limit=180)
def list_post_to_1000_members_in_slices(ctx, storage):
    """Issue 14: a post to a list of 1,000 members (200 with mbox) is delivered a few mailboxes per
    loop turn and its folders fsynced a few per turn (the 250 comes once all are durable): every
    member, none of whom had a mailbox before, holds exactly one copy, the same text for all; a
    second post reaches each once more."""
    srv, addrs = many_members_server(ctx, 1000 if storage == "maildir" else 200, storage)
    srv.start()
    for seq in (1, 2):
        t, code, text = post_slowly(srv, "poster@client.test", limit=120)
        check(code == 250, "post %d: %d %s" % (seq, code, text))
        if seq == 1:
            check_one_copy_each(srv, addrs, t, 1)
    check("post 2 (" in srv.log_text() and "sent to %d members" % len(addrs) in srv.log_text(),
          "no log line of the posts: %s" % short(srv.log_text(), 300))
    for a in addrs:
        check(len(stored(srv, a)) == 2, "%s holds %d messages after two posts" % (a, len(stored(srv, a))))


def slow_fsync_post(ctx, n, **server):
    """A server (started) whose list has n members with mbox storage, every fsync of it made 10 ms
    slower by strace: the group commit of a post takes seconds (three fsyncs per mbox). Returns
    (srv, the members, an SMTP session at the post's final dot: its reply is owed)."""
    need_native("strace slows the server's fsyncs")
    srv, addrs = many_members_server(ctx, n, "mbox")
    srv.keys.update(server)
    srv.write_ini()
    srv.wrap = [need_program("strace", "strace"), "-D", "-f", "--seccomp-bpf", "-qq", "-o", os.devnull,
                "-e", "trace=fsync", "-e", "inject=fsync:delay_enter=10000"]
    srv.start()
    c = srv.smtp()
    c.expect("MAIL FROM:<poster@client.test>", 250)
    c.expect("RCPT TO:<%s>" % LIST, 250)
    c.expect("DATA", 354)
    t = tok()
    c.send(("From: <poster@client.test>\r\nTo: <%s>\r\nSubject: slow disk\r\nX-Test-Token: %s\r\n\r\nto all\r\n.\r\n"
            % (LIST, t)).encode())
    return srv, addrs, c, t


def members_holding(srv, addrs):
    return sum(1 for a in addrs if os.path.exists(mbox_path(srv, a)))


@test(unix_only=True, limit=120)
def list_post_commit_outlives_its_client(ctx):
    """Issue 14: the client of a post resets its connection while the post's copies are appended,
    one mbox per step: the commit still ends for every member (each holds the post once, the post is
    logged as sent, the session ends after it). Before, the session was freed half-way: the members
    appended so far had the post, the rest never got it, and nobody had been told 250."""
    srv, addrs, c, t = slow_fsync_post(ctx, 100)
    wait_for(lambda: members_holding(srv, addrs) > 0, 60, "the first member's copy")
    check(members_holding(srv, addrs) < len(addrs), "the commit ended before the client left: the test proves nothing")
    gone = srv.log_text().count("disconnect")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    wait_for(lambda: srv.log_text().count("disconnect") > gone, 60, "the session's end")
    srv.deliver()  # its 250 comes after the batch before it is committed
    check_one_copy_each(srv, addrs, t, 1)
    check("sent to %d members" % len(addrs) in srv.log_text(), "no log line of the post: %s" % short(srv.log_text()[-600:], 600))


@test(unix_only=True, limit=120)
def list_post_slow_commit_is_not_a_client_timeout(ctx):
    """Issue 14: timeout = 1s and a commit of a post that takes seconds: the client, waiting for the
    server, gets 250, not "421 timeout" (the timeout counts the client's silence, not the server's
    work; Postfix's smtpd_timeout also counts only the wait for the client), and every member holds
    the post once."""
    srv, addrs, c, t = slow_fsync_post(ctx, 100, timeout="1")
    started = time.monotonic()
    code, text = c.reply()
    check(code == 250, "after the final dot: %d %s" % (code, text))
    check(time.monotonic() - started > 1.5, "the commit took less than the timeout: the test proves nothing")
    check_one_copy_each(srv, addrs, t, 1)
    c.expect("QUIT", 221)


@test(limit=120)
def list_post_locked_member_mbox_takes_all_back(ctx):
    """Issue 14: one member's mbox is locked by another program (a dotlock) when a post's copies are
    appended, one mbox per step: the post fails as a whole (451, nothing stays: the copies appended
    before it are taken back, in steps), and the members after it are not written at all (before,
    each was appended, then truncated again, all in one loop turn). Unlocked, the retry reaches all."""
    srv, addrs = many_members_server(ctx, 60, "mbox")
    srv.start()
    locked = mbox_path(srv, addrs[29])
    os.makedirs(os.path.dirname(locked), exist_ok=True)
    with open(locked + ".lock", "w"):
        pass
    t, code, text = post_slowly(srv, "poster@client.test")
    check(code == 451, "a post with a member's mbox locked: %d %s, expected 451" % (code, text))
    for a in addrs:
        check(stored(srv, a) == [], "%s holds %d messages after the failed post" % (a, len(stored(srv, a))))
    written = [a for a in addrs[30:] if os.path.exists(mbox_path(srv, a))]
    check(not written, "members after the locked one were written: %s" % short(written))
    os.unlink(locked + ".lock")
    t, code, text = post_slowly(srv, "poster@client.test")
    check(code == 250, "the retry: %d %s" % (code, text))
    check_one_copy_each(srv, addrs, t, 2)
