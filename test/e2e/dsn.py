"""DSN (RFC 3461): the parameters of MAIL FROM and RCPT TO, the reports (RFC 3464) for local
delivery, alias expansion, relays with and without DSN, and failures that follow NOTIFY and RET;
with fake peers and with Postfix (both ways)."""
import email
import email.utils
import glob
import os
import re
import smtplib

from .harness import (BOTH, Net, check, make_msg, secs, short, stored, stored_tokens, test, tok, wait_for)
from .peers import PostfixInstance
from .relay import bounces, relay_mail, sink_wait, wait_queue_empty


def reports(srv, addr):
    """The delivery status notifications in addr's mailbox."""
    return bounces(srv, addr)


def dsn_send(srv, sender, rcpts, msg, mail_options=(), rcpt_options=()):
    """smtplib with DSN parameters; returns the refused dict."""
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10)) as s:
        s.ehlo()
        check(s.has_extn("dsn"), "EHLO does not offer DSN: %s" % s.esmtp_features)
        return s.sendmail(sender, rcpts, msg, mail_options=list(mail_options), rcpt_options=list(rcpt_options))


def parse_report(data, to):
    """An RFC 3464 report as Python's email package reads it: (message, per-message fields, {final
    recipient: fields}, the third part). Checks the frame every report has."""
    check(data.split(b"\r\n")[0] == b"Return-Path: <>", "report: first line %s" % short(data.split(b"\r\n")[0]))
    m = email.message_from_bytes(data)
    check(re.search(r"(?i)mailer-daemon@test\.local", m.get("From", "")), "report From: %s" % m.get("From"))
    check(m.get("To", "").strip("<> ") == to, "report To: %s, expected %s" % (m.get("To"), to))
    check(m.get("Auto-Submitted", "").startswith("auto-replied"), "report Auto-Submitted: %s" % m.get("Auto-Submitted"))
    check(m.get_content_type() == "multipart/report" and m.get_param("report-type") == "delivery-status",
          "report Content-Type: %s" % m.get("Content-Type"))
    parts = m.get_payload()
    check(isinstance(parts, list) and len(parts) == 3, "report has %s parts, expected 3" % (
        len(parts) if isinstance(parts, list) else "no"))
    check(parts[0].get_content_type() == "text/plain", "first part %s" % parts[0].get_content_type())
    check(parts[1].get_content_type() == "message/delivery-status", "second part %s" % parts[1].get_content_type())
    blocks = parts[1].get_payload()
    check(isinstance(blocks, list) and len(blocks) >= 2, "delivery-status without recipients: %s" % short(data, 600))
    per_msg = {k.lower(): v.strip() for k, v in blocks[0].items()}
    check(per_msg.get("reporting-mta") == "dns; test.local", "Reporting-MTA: %s" % per_msg.get("reporting-mta"))
    check(email.utils.parsedate_tz(per_msg.get("arrival-date", "")), "Arrival-Date: %s" % per_msg.get("arrival-date"))
    rcpts = {}
    for b in blocks[1:]:
        f = {k.lower(): re.sub(r"\s+", " ", v).strip() for k, v in b.items()}
        fr = re.match(r"(?i)rfc822; ?(\S+)$", f.get("final-recipient", ""))
        check(fr, "Final-Recipient: %s" % f.get("final-recipient"))
        rcpts[fr.group(1).lower()] = f
    return m, per_msg, rcpts, parts[2]


def check_rcpt(rcpts, addr, action, status, orcpt=None):
    check(addr in rcpts, "no fields for %s in %s" % (addr, sorted(rcpts)))
    f = rcpts[addr]
    check(f.get("action") == action, "%s: Action: %s, expected %s" % (addr, f.get("action"), action))
    check(f.get("status") == status, "%s: Status: %s, expected %s" % (addr, f.get("status"), status))
    check(f.get("original-recipient") == orcpt, "%s: Original-Recipient: %s, expected %s"
          % (addr, f.get("original-recipient"), orcpt))
    return f


def check_returned(part, token, full):
    """The third part: the whole message (RET=FULL) or its header only."""
    if full:
        check(part.get_content_type() == "message/rfc822", "third part %s, expected message/rfc822" % part.get_content_type())
        inner = part.get_payload()[0]
        check(inner.get("X-Test-Token") == token, "returned message: token %s" % inner.get("X-Test-Token"))
        check(("Hello %s" % token) in inner.get_payload(), "returned message without its body: %s" % short(inner.as_string()))
        check(not inner.get("Return-Path"), "the returned message keeps our Return-Path")
    else:
        check(part.get_content_type() == "text/rfc822-headers", "third part %s, expected text/rfc822-headers"
              % part.get_content_type())
        text = part.get_payload(decode=True) or b""
        check(("X-Test-Token: " + token).encode() in text, "returned header lacks the token: %s" % short(text, 300))
        check(("Hello " + token).encode() not in text, "RET=HDRS returned the body: %s" % short(text, 300))


@test()
def dsn_parameters(ctx):
    """EHLO offers DSN; RET, ENVID, NOTIFY and ORCPT are taken in any case; malformed or repeated ones
    get 501 5.5.4 (RFC 3461 4.1-4.4: NEVER alone, xtext with upper-case hex, ENVID up to 100
    characters, ORCPT up to 500); after HELO no parameter is taken. RFC 3461 4: a RCPT line may be 500
    octets longer than 512, a MAIL line 112; any other command stays within 512."""
    srv = ctx.server().start()
    c = srv.smtp(ehlo=None)
    text = c.expect("EHLO client.test", 250)
    check(re.search(r"(?m)^250[- ]DSN$", text), "EHLO does not offer DSN: %s" % short(text, 300))
    for bad in ("RET=BODY", "RET=FULL RET=HDRS", "ENVID=a+2b", "ENVID=a=b", "ENVID=", "ENVID=" + "e" * 101,
                "ENVID=x ENVID=y"):
        c.expect("MAIL FROM:<%s> %s" % ("alice@example.test", bad), 501, "5.5.4")
    c.expect("MAIL FROM:<alice@example.test> ret=hdrs ENVID=" + "e" * 100, 250)
    for bad in ("NOTIFY=NEVER,SUCCESS", "NOTIFY=MAYBE", "NOTIFY=", "NOTIFY=SUCCESS,SUCCESS", "NOTIFY=FAILURE NOTIFY=DELAY",
                "ORCPT=bob@example.test", "ORCPT=rfc822;bob+4", "ORCPT=;bob@example.test",
                "ORCPT=rfc822;a@b ORCPT=rfc822;c@d"):
        c.expect("RCPT TO:<bob@example.test> %s" % bad, 501, "5.5.4")
    c.expect("RCPT TO:<bob@example.test> notify=success,failure,delay ORCPT=rfc822;Bob+2Bx@example.test", 250)
    c.expect("RCPT TO:<carol@example.test> NOTIFY=NEVER", 250)
    long_rcpt = "RCPT TO:<dup@example.test> NOTIFY=SUCCESS ORCPT=rfc822;" + "o" * 493  # an ORCPT of 500
    check(len(long_rcpt) + 2 > 512, "the long RCPT line is not long")
    c.expect(long_rcpt, 250)
    c.expect("RCPT TO:<dup@example.test> ORCPT=rfc822;" + "o" * 494, 501, "5.5.4")  # 501 characters
    for head, limit in (("RCPT TO:<dup@example.test> ORCPT=rfc822;", 1012), ("MAIL FROM:<alice@example.test> ENVID=", 624)):
        line = head + "o" * (limit - 2 - len(head) + 1)  # one octet over, with CRLF
        check(len(line) + 2 == limit + 1, "line length")
        c.expect(line, 500, "5.5.2")
        if head.startswith("MAIL"):
            c.expect("RSET", 250)
        c.expect(line[:-1], 501, "5.5.4")  # at the limit: parsed (and its parameter too long)
    c.expect("MAIL FROM:<alice@example.test>", 250)
    c.expect("RCPT TO:<bob@example.test> notify=success,failure,delay ORCPT=rfc822;Bob+2Bx@example.test", 250)
    c.expect("NOOP " + "x" * 600, 500, "5.5.2")
    c.expect("NOOP", 250)
    c.expect("RCPT TO:<alice@example.test> NOTIFY=SUCCESS XFOO=1", 555, "5.5.4")
    c.expect("RSET", 250)
    c.expect("HELO client.test", 250)
    c.expect("MAIL FROM:<alice@example.test>", 250)
    c.expect("RCPT TO:<bob@example.test> NOTIFY=SUCCESS", 555, "5.5.4")
    c.expect("QUIT", 221)


@test(modes=BOTH)
def dsn_success_local(ctx, storage):
    """NOTIFY=SUCCESS to local mailboxes: once the message is durable the (local) sender gets one
    RFC 3464 report, every field checked with Python's email package: Action: delivered for a mailbox
    (Original-Recipient from ORCPT, decoded), expanded for an alias of several (RFC 3461 6.2.7.3:
    its members are not reported again), Original-Envelope-Id from ENVID (decoded); RET=HDRS returns
    only the header and RET=FULL the whole message. NOTIFY=NEVER, no NOTIFY, and MAIL FROM:<> get none."""
    srv = ctx.server(storage=storage).start()
    t = tok()
    msg = make_msg(t, to="carol@example.test", sender="alice@example.test")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10)) as s:
        s.ehlo()
        check(s.has_extn("dsn"), "EHLO does not offer DSN")
        s.mail("alice@example.test", ["RET=HDRS", "ENVID=QQ+2B1"])
        for rcpt, opts in (("carol@example.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Carol+2Bx@example.test"]),
                           ("team@example.test", ["NOTIFY=SUCCESS"]), ("bob@example.test", ["NOTIFY=NEVER"])):
            code, text = s.rcpt(rcpt, opts)
            check(code == 250, "RCPT %s: %d %s" % (rcpt, code, text))
        code, text = s.data(msg)
        check(code == 250, "DATA: %d %s" % (code, text))
    for who in ("carol@example.test", "bob@example.test"):
        got = [g["token"] for g in srv.fetch(who)]
        check(got == [t], "%s has %s" % (who, got))
    got = wait_for(lambda: reports(srv, "alice@example.test"), 10, "a success report in alice's mailbox")
    check(len(got) == 1, "alice has %d reports" % len(got))
    m, per_msg, rcpts, third = parse_report(got[0], "alice@example.test")
    check(m.get("Subject") == "Successful Mail Delivery Report", "Subject: %s" % m.get("Subject"))
    check(per_msg.get("original-envelope-id") == "QQ+1", "Original-Envelope-Id: %s" % per_msg.get("original-envelope-id"))
    check(set(rcpts) == {"carol@example.test", "team@example.test"}, "reported %s" % sorted(rcpts))
    check_rcpt(rcpts, "carol@example.test", "delivered", "2.0.0", "rfc822;Carol+x@example.test")
    check_rcpt(rcpts, "team@example.test", "expanded", "2.0.0")
    check_returned(third, t, full=False)
    # alice is also a member of team: her copy arrived, and no report names her
    check(t in [g["token"] for g in srv.fetch("alice@example.test")], "team's member alice did not get the message")
    # RET=FULL: the whole message comes back
    t2 = tok()
    msg2 = make_msg(t2, to="bob@example.test", sender="alice@example.test")
    check(dsn_send(srv, "alice@example.test", ["bob@example.test"], msg2, ["RET=FULL"], ["NOTIFY=SUCCESS"]) == {},
          "refused")
    got = wait_for(lambda: len(reports(srv, "alice@example.test")) >= 2 and reports(srv, "alice@example.test"), 10,
                   "a second report")
    m, per_msg, rcpts, third = parse_report(got[1], "alice@example.test")
    check("original-envelope-id" not in per_msg, "Original-Envelope-Id without ENVID: %s" % per_msg)
    check_rcpt(rcpts, "bob@example.test", "delivered", "2.0.0")
    check_returned(third, t2, full=True)
    # none: NOTIFY=NEVER alone, no NOTIFY, and the null sender
    t3 = tok()
    check(dsn_send(srv, "alice@example.test", ["bob@example.test"], make_msg(t3, to="bob@example.test"), [],
                   ["NOTIFY=NEVER"]) == {}, "refused")
    check(srv.send(["bob@example.test"], make_msg(tok(), to="bob@example.test"), sender="alice@example.test") == {}, "refused")
    check(dsn_send(srv, "", ["bob@example.test"], make_msg(tok(), to="bob@example.test"), [], ["NOTIFY=SUCCESS"]) == {},
          "refused")
    check(len(srv.fetch("bob@example.test")) == 5, "bob has %d messages, expected 5" % len(srv.fetch("bob@example.test")))
    check(len(reports(srv, "alice@example.test")) == 2, "more reports: %d" % len(reports(srv, "alice@example.test")))
    check(len(re.findall(r"success report for", srv.log_text())) == 2, "the log names %d success reports"
          % len(re.findall(r"success report for", srv.log_text())))


@test()
def dsn_capture_mode_no_report(ctx):
    """Capture mode takes the DSN parameters but stores only what the application sent: no success
    report joins the captured mail."""
    srv = ctx.server(server={"capture": "yes"}).start()
    t = tok()
    msg = make_msg(t, to="someone@capture.example", sender="app@capture.example")
    check(dsn_send(srv, "app@capture.example", ["someone@capture.example"], msg, ["RET=HDRS"], ["NOTIFY=SUCCESS"]) == {},
          "refused")
    check(stored_tokens(srv, "someone@capture.example") == [t], "captured: %s" % stored_tokens(srv, "someone@capture.example"))
    wait_for(lambda: "no success report" in srv.log_text(), 10, "the log line for the report not sent")
    check(stored(srv, "app@capture.example") == [], "a report was captured for the sender")


@test(modes=BOTH)
def dsn_failure_follows_notify(ctx, storage):
    """A relay that refuses two recipients: NOTIFY=NEVER gets no bounce, NOTIFY=FAILURE one that names
    only it, with Original-Recipient (ORCPT), Original-Envelope-Id (ENVID) and, with RET=FULL, the whole
    message (message/rfc822)."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink(rcpt_replies={"never@remote.test": "550 5.1.1 <never@remote.test>: no such user",
                                  "fail@remote.test": "550 5.1.1 <fail@remote.test>: no such user"})
    srv = net.server(storage=storage).start()
    t = tok()
    msg = make_msg(t, to="fail@remote.test", sender="alice@example.test")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10)) as s:
        s.ehlo()
        s.mail("alice@example.test", ["RET=FULL", "ENVID=id+3D7"])
        check(s.rcpt("never@remote.test", ["NOTIFY=NEVER"])[0] == 250, "RCPT never@")
        check(s.rcpt("fail@remote.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;fail@remote.test"])[0] == 250, "RCPT fail@")
        check(s.data(msg)[0] == 250, "DATA")
    wait_queue_empty(srv)
    got = wait_for(lambda: reports(srv, "alice@example.test"), 10, "a bounce in alice's mailbox")
    check(len(got) == 1, "alice has %d reports" % len(got))
    m, per_msg, rcpts, third = parse_report(got[0], "alice@example.test")
    check(m.get("Subject") == "Undelivered Mail Returned to Sender", "Subject: %s" % m.get("Subject"))
    check(set(rcpts) == {"fail@remote.test"}, "bounce names %s (NOTIFY=NEVER must not be)" % sorted(rcpts))
    f = check_rcpt(rcpts, "fail@remote.test", "failed", "5.1.1", "rfc822;fail@remote.test")
    check(f.get("diagnostic-code", "").startswith("smtp; 550 5.1.1"), "Diagnostic-Code: %s" % f.get("diagnostic-code"))
    check(per_msg.get("original-envelope-id") == "id=7", "Original-Envelope-Id: %s" % per_msg.get("original-envelope-id"))
    check_returned(third, t, full=True)
    check(re.search(r"no bounce for \S+ to=<never@remote\.test>: NOTIFY=NEVER", srv.log_text()),
          "no `no bounce ... NOTIFY=NEVER` log line")
    check(sink.messages == [], "DATA sent with no accepted recipient")


LONG_ORCPT = "ORCPT=rfc822;" + "d+2B" * 122 + "@r.tt"  # 500 characters after "ORCPT="


@test(modes=BOTH)
def dsn_relay_passes_on(ctx, storage):
    """A next hop that offers DSN gets RET and ENVID on MAIL FROM, NOTIFY and ORCPT on RCPT TO as they
    came (RFC 3461 6.2), an ORCPT of its own address for a recipient that had none (4.2), and nothing for
    a recipient without NOTIFY; mailsrv sends no report of its own for the success. The request is kept
    in the queue entry: the first attempt is deferred (451 to MAIL) and the server restarted before
    the second."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    sink.extensions = sink.extensions + ["DSN"]
    sink.script("mail", ["451 4.3.0 try again later"])
    srv = net.server(storage=storage).start()
    t = tok()
    msg = make_msg(t, to="a@remote.test", sender="alice@example.test")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="client.test", timeout=secs(10)) as s:
        s.ehlo()
        s.mail("alice@example.test", ["RET=HDRS", "ENVID=QQ+2B1"])
        check(s.rcpt("a@remote.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;A+2Bx@remote.test"])[0] == 250, "RCPT a@")
        check(s.rcpt("b@remote.test", ["NOTIFY=DELAY"])[0] == 250, "RCPT b@")
        check(s.rcpt("c@remote.test")[0] == 250, "RCPT c@")
        check(s.rcpt("d@remote.test", ["NOTIFY=FAILURE", LONG_ORCPT])[0] == 250, "RCPT d@ (a RCPT line over 512 octets)")
        check(s.data(msg)[0] == 250, "DATA")
    wait_for(lambda: sink.stage_count("mail") >= 1, 10, "the first attempt")
    srv.stop()
    envs = glob.glob(os.path.join(srv.queue, "*.env"))
    check(len(envs) == 1, "queue entries: %s" % envs)
    with open(envs[0]) as f:
        env = f.read()
    lines = [re.sub(r" 451 .*", "", l) for l in env.split("\n")]  # a rcpt line ends with its last error
    for line in ("ret hdrs", "envid QQ+2B1", "rcpt pending a@remote.test", "dsn SUCCESS,FAILURE rfc822;A+2Bx@remote.test",
                 "rcpt pending b@remote.test", "dsn DELAY -", "rcpt pending c@remote.test"):
        check(line in lines, "queue entry lacks %r: %s" % (line, env))
    check(lines.index("dsn DELAY -") == lines.index("rcpt pending b@remote.test") + 1, "b's dsn line is not after its rcpt line")
    srv.start()
    got = sink_wait(sink, 1, 10)
    wait_queue_empty(srv)
    m = got[0]
    check(m["params"].split() == ["SIZE=%s" % m["params"].split()[0][5:], "RET=HDRS", "ENVID=QQ+2B1"],
          "MAIL FROM parameters: %s" % m["params"])
    params = dict(zip([r.lower() for r in m["rcpts"]], m["rcpt_params"]))
    check(params == {"a@remote.test": "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2Bx@remote.test",
                     "b@remote.test": "NOTIFY=DELAY ORCPT=rfc822;b@remote.test", "c@remote.test": "",
                     "d@remote.test": "NOTIFY=FAILURE " + LONG_ORCPT},
          "RCPT TO parameters: %s" % params)
    check(reports(srv, "alice@example.test") == [], "mailsrv sent a report although the next hop offers DSN")
    check("success report" not in srv.log_text(), "the log names a success report")


@test(modes=BOTH)
def dsn_relayed_without_dsn(ctx, storage):
    """A next hop without DSN gets no DSN parameters; a recipient with NOTIFY=SUCCESS is reported
    "relayed" (RFC 3461 6.2.6) with Remote-MTA, to a local sender (stored) and to a remote one (relayed
    with MAIL FROM:<>)."""
    net = Net(ctx)
    net.domain("remote.test")
    sink = net.sink()
    srv = net.server(storage=storage).start()
    t = tok()
    msg = make_msg(t, to="a@remote.test", sender="alice@example.test")
    check(dsn_send(srv, "alice@example.test", ["a@remote.test", "b@remote.test"], msg, ["ENVID=e1"],
                   ["NOTIFY=SUCCESS", "ORCPT=rfc822;a@remote.test"]) == {}, "refused")
    got = sink_wait(sink, 1, 10)
    wait_queue_empty(srv)
    check(got[0]["params"].split()[1:] == [], "MAIL FROM parameters to a hop without DSN: %s" % got[0]["params"])
    check(got[0]["rcpt_params"] == ["", ""], "RCPT TO parameters to a hop without DSN: %s" % got[0]["rcpt_params"])
    rep = wait_for(lambda: reports(srv, "alice@example.test"), 10, "a relayed report in alice's mailbox")
    check(len(rep) == 1, "alice has %d reports" % len(rep))
    m, per_msg, rcpts, third = parse_report(rep[0], "alice@example.test")
    check(per_msg.get("original-envelope-id") == "e1", "Original-Envelope-Id: %s" % per_msg.get("original-envelope-id"))
    check(set(rcpts) == {"a@remote.test", "b@remote.test"}, "reported %s" % sorted(rcpts))
    for r in rcpts:
        f = check_rcpt(rcpts, r, "relayed", "2.0.0", "rfc822;a@remote.test")  # smtplib gives all the same options
        check(f.get("remote-mta") == "dns; mx.remote.test", "Remote-MTA: %s" % f.get("remote-mta"))
        check(f.get("diagnostic-code", "").startswith("smtp; 250"), "Diagnostic-Code: %s" % f.get("diagnostic-code"))
    check_returned(third, t, full=False)
    # a remote sender: the report is relayed to it, from <>
    t2 = tok()
    _, msg2 = t2, make_msg(t2, to="bob@example.test", sender="someone@remote.test")
    check(dsn_send(srv, "someone@remote.test", ["bob@example.test"], msg2, [], ["NOTIFY=SUCCESS"]) == {}, "refused")
    got = sink_wait(sink, 2, 10, "the report relayed to the remote sender")
    check(got[1]["mail_from"] == "" and [r.lower() for r in got[1]["rcpts"]] == ["someone@remote.test"],
          "report sent as MAIL FROM:<%s> RCPT %s" % (got[1]["mail_from"], got[1]["rcpts"]))
    data = got[1]["data"]
    m = email.message_from_bytes(data)
    check(m.get_content_type() == "multipart/report", "relayed report: %s" % m.get("Content-Type"))
    check(b"Action: delivered" in data and b"Final-Recipient: rfc822; bob@example.test" in data,
          "relayed report: %s" % short(data, 600))


POSTFIX_DSN_WAIT = 40


def postfix_pair(ctx, storage, main=()):
    """mailsrv routing b.test to a private Postfix that relays everything else back to mailsrv."""
    srv = ctx.server(storage=storage, sections={"relay": {"retry": "1", "timeout": "10"}})
    pf = PostfixInstance(ctx, 10000000, main=["relayhost = [127.0.0.1]:%d" % srv.smtp_port,
                                              "smtp_tls_security_level = none"] + list(main))
    srv.sections["route"] = {"b.test": "127.0.0.1:%d" % pf.port}
    srv.write_ini()
    srv.start()
    return srv, pf


@test(modes=BOTH, limit=90)
def dsn_postfix_both_ways(ctx, storage):
    """Postfix as the next hop, offering DSN: it receives NOTIFY, ORCPT, RET and ENVID (its own
    "delivered" report, sent back through mailsrv, carries them); and Postfix as the client: its
    NOTIFY=SUCCESS reaches mailsrv, whose "delivered" report goes back to the Postfix sender."""
    srv, pf = postfix_pair(ctx, storage)
    t = tok()
    msg = make_msg(t, to="ben@b.test", sender="alice@example.test")
    check(dsn_send(srv, "alice@example.test", ["ben@b.test"], msg, ["RET=HDRS", "ENVID=pf+2B1"],
                   ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Ben+2Bx@b.test"]) == {}, "refused")
    wait_for(lambda: any(("X-Test-Token: " + t).encode() in g for g in pf.messages()), POSTFIX_DSN_WAIT,
             "the message in Postfix's Maildir")
    rep = wait_for(lambda: [g for g in reports(srv, "alice@example.test") if b"mx.b.test" in g], POSTFIX_DSN_WAIT,
                   "Postfix's success report in alice's mailbox")
    m = email.message_from_bytes(rep[0])
    ds = [p for p in m.walk() if p.get_content_type() == "message/delivery-status"]
    check(ds, "Postfix's report has no message/delivery-status: %s" % short(rep[0], 600))
    blocks = ds[0].get_payload()
    per_msg = {k.lower(): v.strip() for k, v in blocks[0].items()}
    f = {k.lower(): v.strip() for k, v in blocks[1].items()}
    check(per_msg.get("original-envelope-id") == "pf+1", "Postfix's Original-Envelope-Id: %s (ENVID not passed on?)"
          % per_msg.get("original-envelope-id"))
    check(re.sub(r"\s", "", f.get("original-recipient", "")) == "rfc822;Ben+x@b.test",
          "Postfix's Original-Recipient: %s (ORCPT not passed on?)" % f.get("original-recipient"))
    check(f.get("action") == "delivered" and f.get("status", "").startswith("2."), "Postfix's report: Action %s Status %s"
          % (f.get("action"), f.get("status")))
    check(not [p for p in m.walk() if p.get_content_type() == "message/rfc822"], "RET=HDRS: Postfix returned the message")
    check(reports(srv, "alice@example.test") == rep, "mailsrv sent a report of its own too")
    check(re.search(r"dsn=2\.0\.0, status=sent", pf.log_text()), "no delivery in Postfix's log")
    # the other way: Postfix's client passes NOTIFY=SUCCESS to mailsrv, which reports to ben@b.test
    t2 = tok()
    with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.test", timeout=secs(10)) as s:
        s.ehlo()
        check(s.has_extn("dsn"), "Postfix does not offer DSN")
        s.mail("ben@b.test", ["ENVID=back"])
        check(s.rcpt("carol@example.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;carol@example.test"])[0] == 250, "RCPT")
        check(s.data(make_msg(t2, to="carol@example.test", sender="ben@b.test"))[0] == 250, "DATA")
    wait_for(lambda: t2 in [g["token"] for g in srv.fetch("carol@example.test")], POSTFIX_DSN_WAIT,
             "the message from Postfix in carol's mailbox")

    def ours():
        return [g for g in pf.messages() if b"Reporting-MTA: dns; test.local" in g and b"Original-Envelope-Id: back" in g]
    got = wait_for(ours, POSTFIX_DSN_WAIT, "mailsrv's report in ben's Maildir at Postfix")
    check(b"Action: delivered" in got[0] and b"Final-Recipient: rfc822; carol@example.test" in got[0] and
          b"Original-Recipient: rfc822;carol@example.test" in got[0], "mailsrv's report: %s" % short(got[0], 800))


@test(modes=BOTH, limit=90)
def dsn_postfix_without_dsn(ctx, storage):
    """Postfix hiding DSN (smtpd_discard_ehlo_keywords = dsn): mailsrv passes no DSN parameter and
    reports NOTIFY=SUCCESS itself as "relayed" to mx.b.test."""
    srv, pf = postfix_pair(ctx, storage, main=["smtpd_discard_ehlo_keywords = dsn"])
    t = tok()
    msg = make_msg(t, to="ben@b.test", sender="alice@example.test")
    check(dsn_send(srv, "alice@example.test", ["ben@b.test"], msg, ["ENVID=nodsn"], ["NOTIFY=SUCCESS"]) == {}, "refused")
    wait_for(lambda: any(("X-Test-Token: " + t).encode() in g for g in pf.messages()), POSTFIX_DSN_WAIT,
             "the message in Postfix's Maildir")
    rep = wait_for(lambda: reports(srv, "alice@example.test"), POSTFIX_DSN_WAIT, "the relayed report")
    m, per_msg, rcpts, third = parse_report(rep[0], "alice@example.test")
    f = check_rcpt(rcpts, "ben@b.test", "relayed", "2.0.0")
    check(f.get("remote-mta") == "dns; 127.0.0.1", "Remote-MTA: %s" % f.get("remote-mta"))
    check(per_msg.get("original-envelope-id") == "nodsn", "Original-Envelope-Id: %s" % per_msg.get("original-envelope-id"))
    wait_queue_empty(srv, 20)
    check(len(reports(srv, "alice@example.test")) == 1, "more than one report (Postfix's own?)")
