"""Inbound CHUNKING (RFC 3030: BDAT) and the LMTP listener (RFC 2033)."""
import os

from .harness import (BOTH, SENDER, TestFailure, check, dot_stuff, make_msg, short, stored, stored_tokens, test, tok,
                      wait_for)


# =============================================================================================
# BDAT (RFC 3030) through raw sockets


def after_trace(data):
    """A stored message without the lines mailsrv put on top (Return-Path:, Received:): from the client's From: on."""
    i = data.find(b"From: <")
    check(i > 0, "stored message has no From: header: %s" % short(data))
    return data[i:]


def bdat(c, chunk, last=False):
    """One BDAT chunk; returns its (code, text)."""
    c.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
    return c.reply()


@test(modes=BOTH)
def bdat_chunks_stored_as_data(ctx, storage):
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    code, text = c.cmd("EHLO client.test")
    check("CHUNKING" in [l[4:].strip().upper() for l in text.split("\n")[1:]], "EHLO lacks CHUNKING: %s" % short(text))
    body = "line one\r\n.a line with a leading dot\r\n..two dots\r\nend\r\n"
    t1, t2, t3 = tok(), tok(), tok()
    m1, m2, m3 = (make_msg(t, body=body) for t in (t1, t2, t3))
    code, text = c.send_mail(SENDER, ["alice@example.test"], m1)
    check(code == 250, "DATA: %s" % short(text))
    # the same text in BDAT chunks, one of them cut between the CR and the LF of a line end
    cut = m2.index(b"\r\n.a line") + 1
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    for part in (m2[:cut], m2[cut:cut + 7]):
        code, text = bdat(c, part)
        check(code == 250, "BDAT %d: %s" % (len(part), short(text)))
    code, text = bdat(c, m2[cut + 7:], last=True)
    check(code == 250 and "delivered as" in text, "BDAT LAST: %s" % short(text))
    # pipelined: MAIL, RCPT, three BDATs and a NOOP in one write (RFC 3030 4.2), one reply each in order
    parts = [m3[:10], m3[10:200], m3[200:]]
    c.send(("MAIL FROM:<%s>\r\nRCPT TO:<alice@example.test>\r\n" % SENDER).encode() +
           b"".join(b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == 2 else b"") + p for i, p in enumerate(parts)) + b"NOOP\r\n")
    codes = [c.reply() for _ in range(6)]
    check([k for k, _ in codes] == [250] * 6, "pipelined BDAT transaction: %s" % short(codes, 600))
    check("octets received" in codes[2][1] and "delivered as" in codes[4][1], "pipelined replies: %s" % short(codes, 600))
    c.expect("QUIT", 221)
    got = stored(srv, "alice@example.test")
    check([m for m in stored_tokens(srv, "alice@example.test")] == [t1, t2, t3], "stored: %s" % stored_tokens(srv, "alice@example.test"))
    want = after_trace(got[0]).replace(t1.encode(), b"T")
    for i, t in ((1, t2), (2, t3)):
        check(after_trace(got[i]).replace(t.encode(), b"T") == want,
              "BDAT message %d stored as %s, DATA's as %s" % (i, short(got[i], 400), short(got[0], 400)))
    check(b"\n.a line with a leading dot\n..two dots\n" in got[1], "BDAT text was dot-unstuffed: %s" % short(got[1], 400))
    check(b"\r" not in got[1], "stored with CR: %s" % short(got[1], 400))


@test(modes=BOTH)
def bdat_last_empty_and_unterminated(ctx, storage):
    srv = ctx.server(storage=storage).start()
    c = srv.smtp()
    t = tok()
    msg = make_msg(t, body="no line end at the end")
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, msg)
    check(code == 250, "BDAT: %s" % short(text))
    code, text = bdat(c, b"", last=True)  # BDAT 0 LAST ends it
    check(code == 250 and "delivered as" in text, "BDAT 0 LAST: %s" % short(text))
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<bob@example.test>", 250)
    code, text = bdat(c, b"", last=True)  # an empty message: only mailsrv's own lines
    check(code == 250, "BDAT 0 LAST alone: %s" % short(text))
    c.expect("QUIT", 221)
    got = stored(srv, "alice@example.test")
    check(len(got) == 1 and got[0].endswith(b"\n\nno line end at the end\n"), "stored: %s" % short(got, 400))
    got = stored(srv, "bob@example.test")
    check(len(got) == 1 and got[0].startswith(b"Return-Path: <%s>\n" % SENDER.encode()) and b"From: " not in got[0],
          "empty BDAT message stored as %s" % short(got, 400))


@test(modes=BOTH)
def bdat_refusals_keep_in_step(ctx, storage):
    srv = ctx.server(storage=storage).start()  # max_message_size 100K
    c = srv.smtp()
    evil = b"QUIT\r\nMAIL FROM:<x@y.test>\r\n"  # octets of a refused chunk are never read as commands
    code, text = bdat(c, evil)
    check(code == 503, "BDAT without MAIL: %s" % short(text))
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    code, text = bdat(c, evil, last=True)
    check(code == 503, "BDAT without RCPT: %s" % short(text))
    c.expect("RCPT TO:<alice@example.test>", 250)
    t1 = tok()
    code, text = bdat(c, make_msg(t1))
    check(code == 250, "BDAT: %s" % short(text))
    c.expect("DATA", 503)  # RFC 3030 2: not in a BDAT transaction
    c.expect("RCPT TO:<bob@example.test>", 503)
    c.expect("MAIL FROM:<%s>" % SENDER, 503)
    c.expect("RSET", 250)  # the chunks are dropped
    code, text = bdat(c, b"x\r\n", last=True)
    check(code == 503, "BDAT after RSET: %s" % short(text))
    # too big: 552 once the octets are read, and the session goes on
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    big = (b"y" * 70 + b"\r\n") * 800  # 57 KB a chunk
    code, text = bdat(c, big)
    check(code == 250, "first chunk: %s" % short(text))
    code, text = bdat(c, big)
    check(code == 552 and "5.3.4" in text, "chunk over max_message_size: %s" % short(text))
    code, text = bdat(c, big, last=True)  # the transaction is over (the client should not send it)
    check(code == 503, "BDAT after 552: %s" % short(text))
    c.expect("NOOP", 250)
    t2 = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, make_msg(t2), last=True)
    check(code == 250, "BDAT LAST after the refusals: %s" % short(text))
    # a size that is not a number: the octets cannot be found, the session ends
    code, text = c.cmd("BDAT 12x")
    check(code == 501, "BDAT 12x: %s" % short(text))
    c.read_eof()
    check(stored_tokens(srv, "alice@example.test") == [t2], "stored: %s" % stored_tokens(srv, "alice@example.test"))
    check(stored_tokens(srv, "bob@example.test") == [], "bob got %s" % stored_tokens(srv, "bob@example.test"))


@test(modes=BOTH)
def bdat_disconnect_mid_chunk(ctx, storage):
    srv = ctx.server(storage=storage).start()
    tmp = os.path.join(srv.spool, ".tmp")
    c = srv.smtp()
    t1 = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, make_msg(t1), last=True)
    check(code == 250, "BDAT LAST: %s" % short(text))
    t2 = tok()
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<alice@example.test>", 250)
    code, text = bdat(c, make_msg(t2)[:100])
    check(code == 250, "BDAT: %s" % short(text))
    c.send(b"BDAT 5000 LAST\r\n" + make_msg(t2)[100:])
    wait_for(lambda: os.listdir(tmp), 10, "the message's file in spool/.tmp")
    c.close()
    wait_for(lambda: "connection lost during DATA" in srv.log_text(), 10, "the server to see the client go")
    check(os.listdir(tmp) == [], "spool/.tmp after the client went: %s" % os.listdir(tmp))
    check(stored_tokens(srv, "alice@example.test") == [t1], "stored: %s" % stored_tokens(srv, "alice@example.test"))
