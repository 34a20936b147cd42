"""Internationalized mail: SMTPUTF8 (RFC 6531/6532), POP3 UTF8 (RFC 6856), IDNA domains, UTF-8 names."""
import base64
import os
import poplib
import smtplib

from .harness import (BOTH, DOMAINS, Net, SENDER, check, run_cli, secs, short, stored, test, tok, token_of,
                      wait_for)
from .relay import sink_wait


# =============================================================================================
# UTF-8 mailbox names and IDN domains. школа.test's A-label is xn--80atdl2c.test (RFC 3492; Python's
# "idna" codec agrees); the domain's folder in the spool is the A-label, the mailbox's its UTF-8 name.

IDN_U = "школа.test"
IDN_A = "xn--80atdl2c.test"
IVAN = "иван"
PETR = "пётр"
INTL_DOMAINS = DOMAINS + """
[domain %s]
%s = Passw0rd7

[alias %s]
postmaster = %s

[domain example.test]
%s = Passw0rd8
""" % (IDN_U, IVAN, IDN_U, IVAN, PETR)


def wire(s):
    """A str whose latin-1 encoding (the raw clients' Conn.send) is s in UTF-8."""
    return s.encode("utf-8").decode("latin-1")


def intl_msg(token, to, sender):
    return ("From: Пётр Иванов <%s>\r\nTo: <%s>\r\nSubject: Привет, %s\r\nMessage-ID: <%s@client.test>\r\n"
            "X-Test-Token: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\nЗдравствуй, %s!\r\n" % (sender, to, token, token, token, token)).encode()


def send_utf8(port, sender, rcpts, msg):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=secs(10)) as s:
        s.ehlo()
        check(s.has_extn("smtputf8"), "EHLO does not offer SMTPUTF8: %s" % s.esmtp_features)
        return s.sendmail(sender, rcpts, msg, mail_options=["SMTPUTF8"])


@test(modes=BOTH)
def intl_smtputf8_delivery(ctx, storage):
    """SMTPUTF8 (RFC 6531): EHLO offers it; a UTF-8 path needs MAIL FROM's SMTPUTF8 (553 5.6.7 without it),
    and well-formed UTF-8 (501 for an overlong form or a C1 control); иван@школа.test, иван@ШКОЛА.TEST and
    иван@xn--80atdl2c.test reach one mailbox, stored under spool/xn--80atdl2c.test/иван, with the UTF-8
    headers (RFC 6532) as sent and Received: ... with UTF8SMTP. Local parts fold ASCII case only."""
    srv = ctx.server(storage=storage, domains=INTL_DOMAINS).start()
    c = srv.smtp()
    code, text = c.cmd("EHLO client.test")
    check(code == 250 and ("\n250-SMTPUTF8" in "\n" + text or "\n250 SMTPUTF8" in "\n" + text),
          "EHLO does not list SMTPUTF8: %s" % short(text, 300))
    c.expect(wire("MAIL FROM:<%s@client.test>" % PETR), 553, "5.6.7")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect(wire("RCPT TO:<%s@%s>" % (IVAN, IDN_U)), 553, "5.6.7")
    c.expect("RCPT TO:<ivan@%s>" % IDN_A, 550)  # the A-label domain is local: no such mailbox
    c.expect("RSET", 250)
    c.expect(wire("MAIL FROM:<%s@client.test> SMTPUTF8" % PETR), 250)
    c.expect("RCPT TO:<\xd0\xb8\xc0\xaf@%s>" % IDN_A, 501, "5.1.3")  # overlong "/" after и
    c.expect("RCPT TO:<\xd0\xb8\xc2\x85@%s>" % IDN_A, 501, "5.1.3")  # U+0085, a C1 control
    c.expect("RCPT TO:<\xed\xa0\x80@%s>" % IDN_A, 501, "5.1.3")      # a surrogate
    c.expect(wire("RCPT TO:<%s@%s>" % (IVAN.upper(), IDN_U)), 550, "5.1.1")  # no case folding beyond ASCII
    c.expect(wire("RCPT TO:<%s@%s>" % (IVAN, IDN_U)), 250)
    c.expect("QUIT", 221)
    c.close()
    sent = []
    for rcpt in ("%s@%s" % (IVAN, IDN_U), "%s@%s" % (IVAN, IDN_U.upper()), "%s@%s" % (IVAN, IDN_A)):
        t = tok()
        refused = send_utf8(srv.smtp_port, "%s@client.test" % PETR, [rcpt], intl_msg(t, rcpt, "%s@client.test" % PETR))
        check(refused == {}, "refused: %s" % refused)
        sent.append(t)
    # ASCII mail to an ASCII mailbox still goes without SMTPUTF8, and so does UTF-8 in headers only
    t_ascii = tok()
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10)) as s:
        check(s.sendmail(SENDER, ["alice@example.test"], intl_msg(t_ascii, "alice@example.test", SENDER)) == {},
              "a UTF-8 header without SMTPUTF8 was refused")
    where = os.path.join(srv.spool, IDN_A, IVAN + (".mbox" if storage == "mbox" else ""))
    check(os.path.exists(where), "no %s in the spool: %s" % (where, os.listdir(srv.spool)))
    check(not os.path.exists(os.path.join(srv.spool, IDN_U)), "a folder named by the U-label")
    got = stored(srv, "%s@%s" % (IVAN, IDN_A))
    check(sorted(token_of(m) for m in got) == sorted(sent), "stored %s, sent %s" % ([token_of(m) for m in got], sent))
    for m in got:
        check(("Return-Path: <%s@client.test>" % PETR).encode() in m, "Return-Path: %s" % short(m, 300))
        check(b"with UTF8SMTP id" in m, "Received: without UTF8SMTP: %s" % short(m, 400))
        check(("Subject: Привет, %s" % token_of(m)).encode() in m, "the UTF-8 Subject changed: %s" % short(m, 400))
        check(("Здравствуй, %s!" % token_of(m)).encode() in m, "the UTF-8 body changed")
    a = stored(srv, "alice@example.test")
    check(len(a) == 1 and b"with ESMTP id" in a[0] and "Привет".encode() in a[0], "alice's message: %s" % short(a, 300))


@test(modes=BOTH)
def intl_pop3_utf8(ctx, storage):
    """POP3 UTF8 (RFC 6856): CAPA lists UTF8 USER; UTF8 is taken before the login (not after); USER/PASS with
    a UTF-8 name in either form of an IDN domain open the mailbox, whose message comes back byte for byte."""
    srv = ctx.server(storage=storage, domains=INTL_DOMAINS).start()
    t = tok()
    rcpt = "%s@%s" % (IVAN, IDN_U)
    msg = intl_msg(t, rcpt, SENDER)
    check(send_utf8(srv.smtp_port, SENDER, [rcpt], msg) == {}, "refused")
    p = srv.pop()
    p.ok("CAPA")
    caps = [l.decode() for l in p.multi()]
    check("UTF8 USER" in caps, "CAPA lacks UTF8 USER: %s" % caps)
    p.ok("UTF8")
    p.login(wire(rcpt), "Passw0rd7")
    check(p.stat()[0] == 1, "STAT")
    got = p.retr(1)
    check(token_of(got) == t and ("Subject: Привет, %s" % t).encode() in got, "RETR: %s" % short(got, 300))
    p.err("UTF8")  # RFC 6856 2: in the AUTHORIZATION state only
    p.quit()
    pp = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=secs(10))
    try:
        pp.utf8()
        pp.user("%s@%s" % (IVAN, IDN_A))  # poplib sends UTF-8 after utf8()
        pp.pass_("Passw0rd7")
        check(pp.stat()[0] == 1, "poplib STAT with the A-label")
        pp.quit()
    finally:
        pp.close()
    p = srv.pop()
    p.ok("USER " + wire(rcpt))
    r = p.err("PASS wrong")
    check(r.startswith(b"-ERR [AUTH]"), "bad password: %s" % short(r))


@test(modes=BOTH)
def intl_submission_utf8_sender(ctx, storage):
    """AUTH PLAIN with a UTF-8 name (RFC 4616 is UTF-8) on submission; sender_login = strict takes the user's
    own address with its domain in either IDN form and refuses another's; the message's Received: says
    UTF8SMTPA (RFC 6531 3.7.3)."""
    srv = ctx.server(storage=storage, domains=INTL_DOMAINS).start()
    me = "%s@%s" % (IVAN, IDN_U)
    c = srv.smtp(port=srv.sub_port)
    c.expect("AUTH PLAIN " + base64.b64encode(("\0%s\0Passw0rd7" % me).encode()).decode(), 235)
    for ok in (me, "%s@%s" % (IVAN, IDN_A), "%s@%s" % (IVAN, IDN_U.upper())):
        c.expect(wire("MAIL FROM:<%s> SMTPUTF8" % ok), 250, "2.1.0")
        c.expect("RSET", 250)
    t = c.expect(wire("MAIL FROM:<%s@example.test> SMTPUTF8" % PETR), 553, "5.7.1")
    check("not owned by user" in t, "553: %s" % short(t))
    c.expect(wire("MAIL FROM:<%s> SMTPUTF8" % me), 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    c.expect("DATA", 354)
    tk = tok()
    c.send(intl_msg(tk, "alice@example.test", me) + b".\r\n")
    code, text = c.reply()
    check(code == 250, "end of data: %s" % short(text))
    c.expect("QUIT", 221)
    got = stored(srv, "alice@example.test")
    check(len(got) == 1 and token_of(got[0]) == tk and b"with UTF8SMTPA id" in got[0] and
          ("Return-Path: <%s>" % me).encode() in got[0], "alice got: %s" % short(got, 400))


@test()
def intl_cli_utf8_names(ctx):
    """`mailsrv add/del/users` with UTF-8 names and IDN domains: add writes the names as typed (UTF-8 bytes),
    a domain given as its A-label finds its [domain] section written with the U-label, users shows both forms."""
    srv = ctx.server()
    pw = "Vzlomat-Nelzya-42"
    r = run_cli(["-c", srv.ini, "add", "%s@%s" % (IVAN, IDN_U)], input=pw + "\n")
    check(r.returncode == 0, "add: exit %d %s" % (r.returncode, short(r.stderr)))
    r = run_cli(["-c", srv.ini, "add", "%s@%s" % (PETR, IDN_A)], input=pw + "\n")
    check(r.returncode == 0, "add with the A-label: exit %d %s" % (r.returncode, short(r.stderr)))
    with open(srv.ini, "rb") as f:
        ini = f.read()
    check(("[domain %s]" % IDN_U).encode() in ini and ini.count(b"[domain ") == 3 and
          ("%s = $pbkdf2" % PETR).encode() in ini and ("%s = $pbkdf2" % IVAN).encode() in ini,
          "the INI after add: %s" % short(ini[-300:], 300))
    r = run_cli(["-c", srv.ini, "users"])
    check(r.returncode == 0 and ("domain %s (%s)" % (IDN_A, IDN_U)) in r.stdout and
          ("mailbox %s@%s" % (IVAN, IDN_A)) in r.stdout and ("mailbox %s@%s" % (PETR, IDN_A)) in r.stdout,
          "users: %s" % short(r.stdout, 600))
    r = run_cli(["-c", srv.ini, "add", "%s@%s" % (IVAN, IDN_A)], input=pw + "\n")
    check(r.returncode != 0 and "already exists" in r.stderr, "a second add: %s" % short(r.stderr))
    r = run_cli(["-c", srv.ini, "del", "%s@%s" % (PETR, IDN_A)])
    check(r.returncode == 0, "del: exit %d %s" % (r.returncode, short(r.stderr)))
    with open(srv.ini, "rb") as f:
        ini = f.read()
    check(PETR.encode() not in ini and ("%s = $pbkdf2" % IVAN).encode() in ini, "the INI after del: %s" % short(ini[-300:], 300))
    srv.start()
    rcpt = "%s@%s" % (IVAN, IDN_U)
    check(send_utf8(srv.smtp_port, SENDER, [rcpt], intl_msg(tok(), rcpt, SENDER)) == {}, "refused")
    p = srv.pop()
    p.ok("UTF8")
    p.login(wire(rcpt), pw)
    check(p.stat()[0] == 1, "the mailbox made by add got no message")
    p.quit()


@test(limit=90, unix_only=True)
def intl_postfix_delivers_cyrillic(ctx):
    """Issue 18's report: Postfix relaying to mailsrv bounced `SMTPUTF8 is required, but was not offered`.
    A real Postfix (smtputf8_enable = yes) takes a mail for иван@school.test with SMTPUTF8 and relays it to
    mailsrv (its relayhost): mailsrv offers SMTPUTF8, Postfix's client uses it, the mailbox gets the message."""
    from .peers import PostfixInstance
    srv = ctx.server(domains=DOMAINS + "\n[domain school.test]\n%s = Passw0rd7\n[alias school.test]\npostmaster = %s\n" % (IVAN, IVAN)).start()
    pf = PostfixInstance(ctx, 1000000, main=[
        "smtputf8_enable = yes", "relay_domains = school.test", "relay_transport = smtp",
        "relayhost = [127.0.0.1]:%d" % srv.smtp_port])
    t = tok()
    rcpt = "%s@school.test" % IVAN
    try:
        refused = send_utf8(pf.port, "%s@client.test" % PETR, [rcpt], intl_msg(t, rcpt, "%s@client.test" % PETR))
    except smtplib.SMTPException as e:
        refused = e
    check(refused == {}, "Postfix refused the recipient: %s; its log: %s" % (refused, short(pf.log_text()[-800:], 800)))
    got = wait_for(lambda: stored(srv, rcpt), 30, "the message in иван's mailbox (Postfix log: %s)" % pf.log_text()[-400:])
    check(len(got) == 1 and token_of(got[0]) == t, "stored: %s" % short(got, 300))
    check(b"with UTF8SMTP id" in got[0] and ("Return-Path: <%s@client.test>" % PETR).encode() in got[0],
          "Postfix did not send SMTPUTF8: %s" % short(got[0], 400))
    check("SMTPUTF8 is required" not in pf.log_text(), "Postfix: %s" % short(pf.log_text()[-600:], 600))


@test(limit=120, unix_only=True)
def intl_relay_postfix_with_and_without_smtputf8(ctx):
    """Relaying (RFC 6531 3.4) to two real Postfix next hops, one offering SMTPUTF8 and one hiding it
    (smtpd_discard_ehlo_keywords = smtputf8). To the first, a mail from пётр@example.test for иван@b.test and
    иван@тест.test goes with MAIL FROM ... SMTPUTF8, the IDN as its A-label (the [route] written with the
    U-label matches it). To the second, the same kind of mail bounces (553 5.6.7, naming SMTPUTF8) back to
    пётр's local mailbox, while an ASCII mail, and one with UTF-8 in its headers only, are delivered there."""
    from .peers import PostfixInstance
    from .relay import wait_queue_empty
    idn2_u, idn2_a = "тест.test", "xn--e1aybc.test"
    pf1 = PostfixInstance(ctx, 1000000, main=["smtputf8_enable = yes", "virtual_mailbox_domains = b.test, %s" % idn2_a])
    pf2 = PostfixInstance(ctx, 1000000, main=["smtputf8_enable = yes", "smtpd_discard_ehlo_keywords = smtputf8",
                                              "virtual_mailbox_domains = c.test"])
    srv = ctx.server(domains=INTL_DOMAINS, sections={"relay": {"retry": "1h", "timeout": "10"}, "route": {
        "b.test": "127.0.0.1:%d" % pf1.port, idn2_u: "127.0.0.1:%d" % pf1.port, "c.test": "127.0.0.1:%d" % pf2.port}}).start()
    petr = "%s@example.test" % PETR
    t1, t2, t3, t4 = tok(), tok(), tok(), tok()
    r1 = ["%s@b.test" % IVAN, "%s@%s" % (IVAN, idn2_u)]
    check(send_utf8(srv.smtp_port, petr, r1, intl_msg(t1, r1[0], petr)) == {}, "refused")
    r2 = ["%s@c.test" % IVAN, "ben@c.test"]
    check(send_utf8(srv.smtp_port, petr, r2, intl_msg(t2, r2[0], petr)) == {}, "refused")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10)) as s:
        check(s.sendmail(SENDER, ["ben@c.test"], intl_msg(t3, "ben@c.test", SENDER)) == {}, "ASCII mail refused")
    check(send_utf8(srv.smtp_port, SENDER, ["ben@c.test"], intl_msg(t4, "ben@c.test", SENDER)) == {}, "refused")
    wait_queue_empty(srv, 40)
    got1 = wait_for(lambda: len(pf1.messages()) >= 2 and pf1.messages(), 20, "two copies at the Postfix with SMTPUTF8")
    check(sorted(token_of(m) for m in got1) == [t1, t1], "at Postfix 1: %s" % [token_of(m) for m in got1])
    for m in got1:
        check(("Return-Path: <%s>" % petr).encode() in m, "Postfix 1 stored: %s" % short(m, 400))
    to1 = sorted(m.split(b"X-Original-To: ", 1)[1].split(b"\n", 1)[0].decode() for m in got1 if b"X-Original-To: " in m)
    check(to1 == sorted(["%s@b.test" % IVAN, "%s@%s" % (IVAN, idn2_a)]), "recipients at Postfix 1: %s" % to1)
    for m in got1:  # Postfix's Received: names the protocol: UTF8SMTP when MAIL FROM carried SMTPUTF8
        check(b"by mx.b.test (Postfix) with UTF8SMTP id" in m, "Postfix 1 did not get SMTPUTF8: %s" % short(m, 500))
    got2 = wait_for(lambda: len(pf2.messages()) >= 2 and pf2.messages(), 20, "the ASCII-envelope mails at Postfix 2")
    check(sorted(token_of(m) for m in got2) == sorted([t3, t4]), "at Postfix 2: %s" % [token_of(m) for m in got2])
    for m in got2:
        check(b"by mx.b.test (Postfix) with ESMTP id" in m, "Postfix 2 got: %s" % short(m, 500))
    bounce = wait_for(lambda: [m for m in stored(srv, petr) if b"multipart/report" in m], 20, "the bounce to пётр")
    check(len(bounce) == 1 and token_of(bounce[0].split(b"message/rfc822", 1)[-1]) == t2 and b"5.6.7" in bounce[0] and
          b"SMTPUTF8" in bounce[0], "the bounce: %s" % short(bounce, 800))
    for rcpt in r2:
        check(rcpt.encode() in bounce[0], "the bounce does not name %s" % rcpt)


@test()
def intl_list_on_an_idn(ctx):
    """[list news@школа.test]: the list of an IDN domain, named in either form. A subscription request to
    news-subscribe@школа.test (SMTPUTF8) gets a confirmation whose Reply-To is the list's A-label address;
    once confirmed, a post to news@школа.test reaches the member."""
    import re
    srv = ctx.server(domains=INTL_DOMAINS, sections={"list news@%s" % IDN_U: {"owner": "alice@example.test",
                                                                              "post": "members"}}).start()
    req = ("From: <alice@example.test>\r\nTo: <news-subscribe@%s>\r\nSubject: subscribe\r\nMessage-ID: <%s@client.test>"
           "\r\n\r\nplease\r\n" % (IDN_U, tok())).encode()
    check(send_utf8(srv.smtp_port, "alice@example.test", ["news-subscribe@%s" % IDN_U], req) == {}, "request refused")
    conf = wait_for(lambda: [m for m in stored(srv, "alice@example.test") if b"news-confirm-" in m], 10, "the confirmation")
    m = re.search(rb"Reply-To: <(news-confirm-[0-9a-f]+)@xn--80atdl2c\.test>", conf[0])
    check(m, "no Reply-To with the A-label: %s" % short(conf[0], 500))
    code_addr = m.group(1).decode() + "@" + IDN_U  # answered with the U-label: the same list
    ans = ("From: <alice@example.test>\r\nTo: <%s>\r\nSubject: Re: Confirm\r\nMessage-ID: <%s@client.test>\r\n\r\nyes\r\n"
           % (code_addr, tok())).encode()
    check(send_utf8(srv.smtp_port, "alice@example.test", [code_addr], ans) == {}, "confirmation refused")
    t = tok()
    check(send_utf8(srv.smtp_port, "alice@example.test", ["news@%s" % IDN_U],
                    intl_msg(t, "news@%s" % IDN_U, "alice@example.test")) == {}, "post refused")
    wait_for(lambda: t in [token_of(x) for x in stored(srv, "alice@example.test")], 10, "the post at its member")


@test(modes=BOTH)
def intl_http_api_utf8_mailbox(ctx, storage):
    """The HTTP API with a UTF-8 mailbox: a Basic login in UTF-8 (RFC 7617) by either IDN form sees the
    message, its UTF-8 Subject and its addresses as sent."""
    from .http import api_json, need_http
    need_http()
    srv = ctx.server(storage=storage, domains=INTL_DOMAINS, server={"http": "auto"}).start()
    t = tok()
    rcpt = "%s@%s" % (IVAN, IDN_U)
    check(send_utf8(srv.smtp_port, "%s@client.test" % PETR, [rcpt], intl_msg(t, rcpt, "%s@client.test" % PETR)) == {}, "refused")
    for login in (rcpt, "%s@%s" % (IVAN, IDN_A)):
        lst = api_json(srv, "/api/v1/messages", auth=(login, "Passw0rd7"))
        check(lst["total"] == 1 and lst["messages"][0]["Subject"] == "Привет, %s" % t, "as %s: %s" % (login, short(lst, 400)))
        m = lst["messages"][0]
        check(m["From"]["Address"] == "%s@client.test" % PETR and m["To"][0]["Address"] == rcpt, "addresses: %r" % m)


@test(modes=BOTH)
def intl_capture_utf8(ctx, storage):
    """Capture mode keeps mail for any UTF-8 address (SMTPUTF8) in SPOOL/A-LABEL/LOCAL, and POP3 (any password)
    opens it by either form of the domain."""
    srv = ctx.server(storage=storage, server={"capture": "yes"}).start()
    t = tok()
    rcpt = "%s@%s" % (IVAN, IDN_U)
    check(send_utf8(srv.smtp_port, SENDER, [rcpt], intl_msg(t, rcpt, SENDER)) == {}, "refused")
    want = IVAN + (".mbox" if storage == "mbox" else "")
    check(want in os.listdir(os.path.join(srv.spool, IDN_A)), "spool/%s: %s" % (IDN_A, os.listdir(srv.spool)))
    for login in (rcpt, "%s@%s" % (IVAN, IDN_A)):
        p = srv.pop()
        p.ok("UTF8")
        p.login(wire(login), "anything")
        check(p.stat()[0] == 1 and token_of(p.retr(1)) == t, "as %s" % login)
        p.quit()


@test()
def intl_alias_to_a_hop_without_8bitmime(ctx):
    """An SMTPUTF8 transaction for info@школа.test, an alias of a remote address: the envelope that
    leaves is ASCII, and so is every header line mailsrv wrote (Received: names no UTF-8 recipient),
    so a next hop with neither SMTPUTF8 nor 8BITMIME gets the ASCII message as it was sent (it was
    once sent `for <info@школа.test>`, undeclared 8-bit text the receipt had not counted)."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(extensions=["SIZE 10240000", "PIPELINING"])
    doms = INTL_DOMAINS.replace("[alias %s]\n" % IDN_U, "[alias %s]\ninfo = friend@remote.test\n" % IDN_U)
    srv = net.server(domains=doms).start()
    t = tok()
    msg = ("From: <%s>\r\nTo: <info@xn--80atdl2c.test>\r\nSubject: ascii %s\r\nX-Test-Token: %s\r\n\r\nhello\r\n"
           % (SENDER, t, t)).encode()
    check(send_utf8(srv.smtp_port, SENDER, ["info@" + IDN_U], msg) == {}, "refused")
    got = sink_wait(sink, 1, 10)
    check(got[0]["rcpts"] == ["friend@remote.test"] and token_of(got[0]["data"]) == t, "relayed: %s" % short(got, 300))
    head = got[0]["data"].partition(b"\r\n\r\n")[0]
    check(all(b < 128 for b in head), "8-bit header text went to a hop without 8BITMIME: %s" % short(head, 400))
    check("SMTPUTF8" not in got[0]["params"].upper(), "MAIL FROM declared SMTPUTF8 to a hop without it: %s" % got[0]["params"])
