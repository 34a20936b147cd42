"""Outgrowing mailsrv (issue 17, item 6): Postfix + Dovecot take over the same spool, and nothing is
lost. Dovecot (Debian's dovecot-imapd and dovecot-pop3d, the real /usr/sbin/dovecot) reads the
spool mailsrv wrote: the same messages, byte for byte, the same POP3 sizes, and the same UIDLs, so
that POP3 clients that leave mail on the server do not download it all again; IMAP sees the read
marks mailsrv keeps (Maildir: cur/ with the S flag).

Dovecot's settings are the ones README's "Moving to Postfix and Dovecot" gives:
Maildir: mail_location = maildir:SPOOL/%d/%n, pop3_uidl_format = %f (the file name up to ":2,";
src/lib-storage/index/maildir/maildir-mail.c, MAIL_FETCH_STORAGE_ID); mbox: mail_location =
mbox:ROOT:INBOX=SPOOL/%d/%n.mbox, pop3_reuse_xuidl = yes (mailsrv's X-UIDL header). Passwords go
into a passwd-file (mailsrv's $pbkdf2-sha256$ hashes are no Dovecot 2.3 password scheme), or Dovecot
asks mailsrv: passdb driver = checkpassword, args = MAILSRV -c INI checkpassword (the last tests).

Run alone with `python3 test/e2e.py -k dovecot_takes_over` once e2e.py's SECTIONS lists "migrate"
(after "http" and "trust_storage", whose helpers it uses)."""
import grp
import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile

from .harness import (AS_ROOT, RUN, Pop, Skip, TestFailure, check, free_ports, run_cli, short, soft, secs, test, token_of,
                      tok, wait_for, BOTH)
from .http import api, api_json, need_http
from .trust_storage import Dovecot, chmod_path_for

DOMAIN = "example.test"
USERS = {"alice@example.test": "Migr8Alice", "bob@example.test": "Migr8Bob"}
# a school's mail host: Maildir names (ID.HOST,S=..,W=..) grow past RFC 1939's 70 characters for a UIDL
LONG_HOST = "mail.grammar-school-of-the-valley.example.edu"
MIGRATE_DOMAINS = """\
[domain example.test]
alice = Migr8Alice
bob = Migr8Bob

[alias example.test]
postmaster = alice
"""


def crlf(data):
    """A stored message (LF line ends, as mailsrv keeps it) as POP3 and IMAP send it."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mbox_quoted(data):
    """What Dovecot sends of a message mailsrv sends as data, from an mbox: mailsrv stores mboxrd
    (">From " quoting added at delivery, one ">" taken off each /^>*From / line when read), and
    Dovecot "doesn't remove the '>' characters before sending the data to clients" (its documentation,
    admin_manual/mailbox_formats/mbox.rst, "From Escaping"). A known difference in such lines only."""
    return re.sub(rb"(?m)^(>*From )", rb">\1", data)


def label(data):
    """A short name for a message in failure texts: its X-Test-Token, else its first bytes."""
    return token_of(data) or short(data[-40:], 50)


def msg(token, body, extra_headers=(), subject=None, ctype=None):
    hdr = ["From: <sender@client.test>", "To: <alice@example.test>", "Subject: %s" % (subject or "migrate " + token),
           "Message-ID: <%s@client.test>" % token, "X-Test-Token: %s" % token]
    if ctype:
        hdr += ["MIME-Version: 1.0", "Content-Type: %s" % ctype, "Content-Transfer-Encoding: 8bit"]
    hdr += list(extra_headers)
    if isinstance(body, str):
        body = body.encode("utf-8")
    return ("\r\n".join(hdr) + "\r\n\r\n").encode("utf-8") + body


def migration_mail():
    """(name, recipients, message): twelve messages of the kinds a spool holds. Each has its own
    X-Test-Token, except the one of a few bytes (no header at all)."""
    a, b = "alice@example.test", "bob@example.test"
    big = "".join("line %05d of a message of about 100 KB, in lines of seventy octets ...\r\n" % i for i in range(1450))
    prose = ("Dear Alice,\r\n\r\nthe minutes of Monday's meeting are below.\r\n\r\n"
             "1. Budget: approved.\r\n2. Rooms: unchanged.\r\n\r\nRegards,\r\nBob\r\n")
    utf8 = ("Grüße aus Köln, Ελληνικά, Русский текст, 日本語のテキスト, emoji \U0001F600.\r\n"
            "Zweite Zeile: äöüß\r\n")  # 8-bit, sent as it is (mailsrv offers 8BITMIME)
    dots = ".\r\n..\r\n.leading dot\r\n...three\r\n. space after the dot\r\nend.\r\n"
    fold = ["X-Long: " + "\r\n\t".join("folded part %02d %s" % (i, "x" * 50) for i in range(60))]
    long_subject = "long " + "s" * 880  # one line of about 900 octets (RFC 5322: at most 998)
    out = [
        ("tiny", [a, b], msg(tok(), "hi\r\n")),
        ("100k", [a], msg(tok(), big)),
        ("prose", [a, b], msg(tok(), prose)),
        ("utf8", [a], msg(tok(), utf8, ctype="text/plain; charset=utf-8", subject="=?utf-8?Q?Gr=C3=BC=C3=9Fe?=")),
        ("dots", [a, b], msg(tok(), dots)),
        ("fewbytes", [a], b"x\r\n"),
        ("longheader", [a, b], msg(tok(), "short body\r\n", extra_headers=fold, subject=long_subject)),
        ("noblankline", [b], b"Subject: only a header\r\nX-Test-Token: " + tok().encode() + b"\r\n"),
        ("fromline", [a, b], msg(tok(), "From the desk of Bob:\r\n>From an old quote\r\nFrom\r\nbye\r\n")),
    ]
    for i in range(3):  # plain ones, to make twelve; one of alice's is deleted over POP3
        out.append(("plain%d" % i, [a] if i % 2 == 0 else [a, b], msg(tok(), "plain message %d\r\n" % i)))
    return out


def pop_snapshot(ctx, port, user, pw):
    """One POP3 session: STAT, LIST, UIDL and every message's bytes (RETR); QUIT without deletions.
    Returns {"count", "total", "msgs": [{"n", "size", "uid", "data"}]}."""
    p = ctx.track(Pop(port))
    p.greet()
    p.login(user, pw)
    count, total = p.stat()
    sizes = p.list()
    uids = p.uidl()
    check(count == len(sizes) == len(uids), "%s: STAT %d, LIST %d, UIDL %d lines" % (user, count, len(sizes), len(uids)))
    msgs = []
    for n in sorted(sizes):
        msgs.append({"n": n, "size": sizes[n], "uid": uids.get(n), "data": p.retr(n)})
    p.quit()
    return {"count": count, "total": total, "msgs": msgs}


class DovecotExited(Exception):
    """Dovecot's master exited while the test waited for its greeting (wait_for stops at once)."""


class MigrationDovecot:
    """The real Dovecot (/usr/sbin/dovecot) on free loopback ports, IMAP and POP3, reading mailsrv's
    spool in place with the settings README's migration section gives. As root, the master runs as
    root (as it does in a real install) and the mail processes as Debian's `mail` account, which the
    spool is given to (in a real move: the account mailsrv ran as, `user =`; Dovecot refuses uid 0
    for mail processes); as a plain user everything runs as that user (Dovecot's rootless setup:
    default_internal_user and default_login_user are the user, no chroots) and the spool stays."""

    def __init__(self, ctx, spool, storage, users, checkpassword=None):
        self.bin = "/usr/sbin/dovecot"
        if not os.path.exists(self.bin):
            if os.environ.get("CI") == "true":
                raise TestFailure("/usr/sbin/dovecot is not installed (Debian packages dovecot-imapd, dovecot-pop3d)")
            raise Skip("dovecot not installed (apt-get install dovecot-imapd dovecot-pop3d)")
        if not os.path.exists("/usr/lib/dovecot/pop3") or not os.path.exists("/usr/lib/dovecot/imap"):
            raise Skip("dovecot's pop3 or imap is missing (apt-get install dovecot-imapd dovecot-pop3d)")
        self.ctx, self.spool, self.storage, self.users = ctx, spool, storage, users
        self.dir = tempfile.mkdtemp(prefix="dovecot", dir=ctx.dir)
        self.imap_port, self.pop3_port = free_ports(2)
        if AS_ROOT:
            acct = pwd.getpwnam("mail")
            self.uid, self.gid, self.user = acct.pw_uid, acct.pw_gid, acct.pw_name
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            self.user = pwd.getpwuid(self.uid).pw_name
        for d in ("run", "home", "mail"):
            os.makedirs(os.path.join(self.dir, d))
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.log = os.path.join(self.dir, "dovecot.log")
        self.passwd = os.path.join(self.dir, "users")
        with open(self.passwd, "w") as f:  # user:password:uid:gid:(gecos):home:(shell):(extra)
            for addr, pw in sorted(users.items()):
                f.write("%s:{PLAIN}%s:%d:%d::%s/home/%s::\n" % (addr, pw, self.uid, self.gid, self.dir, addr))
        if storage == "maildir":
            location = "maildir:%s/%%d/%%n" % spool
            uidl = "pop3_uidl_format = %f\n"
        else:  # mailsrv's mbox is SPOOL/DOMAIN/USER.mbox; other folders (none yet) in a root of their own
            location = "mbox:%s/mail/%%d/%%n:INBOX=%s/%%d/%%n.mbox" % (self.dir, spool)
            uidl = "pop3_reuse_xuidl = yes\npop3_uidl_format = %08Xu%08Xv\n"
        group = grp.getgrgid(self.gid).gr_name
        rootless = "" if AS_ROOT else ("default_internal_user = {u}\ndefault_internal_group = {g}\n"
                                       "default_login_user = {u}\n".format(u=self.user, g=group))
        auth = """passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
""".format(passwd=self.passwd)
        if checkpassword:  # mailsrv's own passwords (README's "Passwords"): Dovecot splits args at spaces
            auth = """auth_verbose = yes
passdb {{
  driver = checkpassword
  args = {cmd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%d/%n
}}
""".format(cmd=checkpassword, uid=self.uid, gid=self.gid, d=self.dir)
        with open(self.conf, "w") as f:
            f.write("""# mailsrv's spool taken over by Dovecot (test/e2e/migrate.py)
base_dir = {d}/run
state_dir = {d}/run
log_path = {d}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# no address-space limit on the processes (256 MB by default): `mailsrv checkpassword` runs in the
# auth process, and a sanitizer build of it needs terabytes of address space for its shadow memory
default_vsz_limit = 0
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = {location}
{uidl}{rootless}{auth}service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""".format(d=self.dir, uid=self.uid, location=location, uidl=uidl, rootless=rootless, passwd=self.passwd,
           imap=self.imap_port, pop3=self.pop3_port, auth=auth))
        self.proc = None

    def take_spool(self, *parents):
        """As root: the spool to the mail processes' account (chown -R), the folders above it passable."""
        if not AS_ROOT:
            return
        chmod_path_for(*parents, self.dir)  # Dovecot's auth process (user dovecot) reads the passwd-file
        os.chmod(self.passwd, 0o644)
        for top in (self.spool, os.path.join(self.dir, "home"), os.path.join(self.dir, "mail")):
            os.chown(top, self.uid, self.gid)
            for dp, dns, fns in os.walk(top):
                for n in dns + fns:
                    os.lchown(os.path.join(dp, n), self.uid, self.gid)

    def start(self):
        r = subprocess.run([self.bin, "-c", self.conf, "-n"], capture_output=True, text=True, timeout=secs(20))
        check(r.returncode == 0, "doveconf rejects the migration settings: %s" % short(r.stderr, 600))
        self.proc = subprocess.Popen([self.bin, "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def greets(port, what):
            if self.proc.poll() is not None:
                raise DovecotExited("dovecot exited (%s): %s" % (self.proc.returncode, short(self.log_text()[-600:], 600)))
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                return s.recv(200).startswith(what)
        try:
            wait_for(lambda: greets(self.imap_port, b"* OK"), 15, "dovecot's IMAP greeting")
            wait_for(lambda: greets(self.pop3_port, b"+OK"), 15, "dovecot's POP3 greeting")
        except DovecotExited as e:
            raise TestFailure(str(e))
        return self

    stop = Dovecot.stop  # SIGTERM to our own master, by PID (it stops its children)
    log_text = Dovecot.log_text

    def imap_all(self, user, pw):
        """SELECT INBOX and FETCH 1:* (FLAGS RFC822.SIZE BODY.PEEK[]) (PEEK: nothing becomes \\Seen).
        Returns (EXISTS, [{"flags", "size", "data"}])."""
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=secs(10))
        try:
            m.login(user, pw)
            typ, data = m.select("INBOX")
            check(typ == "OK", "dovecot IMAP SELECT INBOX as %s: %s %s" % (user, typ, data))
            exists = int(data[0])
            out = []
            if exists:
                typ, data = m.fetch("1:*", "(FLAGS RFC822.SIZE BODY.PEEK[])")
                check(typ == "OK", "dovecot IMAP FETCH: %s %s" % (typ, short(data)))
                for i, item in enumerate(data):
                    if not isinstance(item, tuple):
                        continue
                    head = item[0] + (data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b"")
                    fl = re.search(rb"FLAGS \(([^)]*)\)", head)
                    sz = re.search(rb"RFC822\.SIZE (\d+)", head)
                    check(fl and sz, "dovecot IMAP FETCH answer without FLAGS or RFC822.SIZE: %s" % short(head))
                    out.append({"flags": set(fl.group(1).decode().split()), "size": int(sz.group(1)), "data": item[1]})
            m.logout()
            return exists, out
        finally:
            try:
                m.shutdown()
            except OSError:
                pass


def compare_pop3(user, before, after, what, view=lambda d: d):
    """mailsrv's POP3 view (before) against Dovecot's (after): the same messages by their bytes (as
    view(bytes) says Dovecot shows mailsrv's), each with the same UIDL and the same LIST size. Soft:
    every difference is reported."""
    check(after["count"] == before["count"],
          "%s: %s has %d messages, mailsrv had %d" % (user, what, after["count"], before["count"]))
    old = {view(m["data"]): dict(m, size=m["size"] + len(view(m["data"])) - len(m["data"])) for m in before["msgs"]}
    new = {m["data"]: m for m in after["msgs"]}
    missing = [label(d) for d in old if d not in new]
    extra = [label(d) for d in new if d not in old]
    soft(not missing and not extra, "%s: %s RETR bytes differ from mailsrv's: not there %s, only there %s"
         % (user, what, missing, extra))
    both = [d for d in old if d in new]
    wrong = [(label(d), old[d]["uid"], new[d]["uid"]) for d in both if old[d]["uid"] != new[d]["uid"]]
    soft(not wrong, "%s: %d of %d UIDLs differ, so POP3 clients that leave mail on the server would download "
         "it again (message: mailsrv UIDL -> %s UIDL): %s" % (user, len(wrong), len(both), what,
                                                             "; ".join("%s: %s -> %s" % w for w in wrong[:3])))
    sizes = [(label(d), old[d]["size"], new[d]["size"]) for d in both if old[d]["size"] != new[d]["size"]]
    soft(not sizes, "%s: LIST sizes differ (message: mailsrv -> %s): %s" % (user, what, sizes[:4]))
    soft({(m["uid"], m["size"]) for m in after["msgs"]} == {(m["uid"], m["size"]) for m in old.values()}
         or wrong or sizes, "%s: the sets of (UIDL, size) differ" % user)
    total = sum(m["size"] for m in old.values())
    soft(after["total"] == total, "%s: %s STAT total %d, expected %d" % (user, what, after["total"], total))
    for m in after["msgs"]:
        soft(m["size"] == len(m["data"]), "%s: %s LIST %d says %d octets, RETR sent %d"
             % (user, what, m["n"], m["size"], len(m["data"])))


@test(modes=BOTH, limit=60, unix_only=True)
def dovecot_takes_over_the_spool(ctx, storage):
    """Issue 17.6: mailsrv is stopped and Dovecot (pop3 + imap) serves its spool in place, with the
    settings README gives: every message, byte for byte, with mailsrv's POP3 UIDLs and sizes (clients
    that leave mail on the server do not download it again), the one deleted over POP3 gone, and over
    IMAP the read marks mailsrv keeps (Maildir: cur/ with the S flag, set here through the HTTP API)."""
    need_http()
    srv = ctx.server(storage=storage, domains=MIGRATE_DOMAINS,
                     server={"max_message_size": "1M", "http": "auto", "hostname": LONG_HOST}).start()
    mail = migration_mail()
    for name, rcpts, data in mail:
        refused = srv.send(rcpts, data)
        check(refused == {}, "%s: refused %s" % (name, refused))
    alice, bob = sorted(USERS)
    # Maildir: two of alice's and one of bob's marked read through the HTTP API (renamed into cur/
    # with :2,S); an mbox keeps no read marks in mailsrv
    marked = {}
    if storage == "maildir":
        for user, k in ((alice, 2), (bob, 1)):
            lst = api_json(srv, "/api/v1/messages", auth=(user, USERS[user]))
            ids = [m["ID"] for m in lst["messages"]][:k]
            st, _, body = api(srv, "PUT", "/api/v1/messages", body={"IDs": ids, "Read": True}, auth=(user, USERS[user]))
            check(st == 200, "%s: PUT Read: %d %s" % (user, st, short(body)))
            cur = os.path.join(srv.spool, DOMAIN, user.split("@")[0], "cur")
            seen = [n for n in os.listdir(cur) if re.search(r"[:!]2,[A-Z]*S", n)]
            check(len(seen) == k, "%s: %d messages in cur/ with the S flag after marking %d read: %s"
                  % (user, len(seen), k, os.listdir(cur)))
            marked[user] = set()
            for n in seen:
                with open(os.path.join(cur, n), "rb") as f:
                    marked[user].add(crlf(f.read()))
    else:
        marked = {alice: set(), bob: set()}
    # POP3: alice reads some and leaves them, deletes one (plain0); bob reads one
    victim = [d for n, _, d in mail if n == "plain0"][0]
    p = srv.pop(alice, USERS[alice])
    sizes = p.list()
    gone = None
    for n in sorted(sizes):
        data = p.retr(n)
        if token_of(data) == token_of(victim):
            gone = n
    check(gone is not None, "alice: the message to delete is not in the mailbox")
    p.ok("DELE %d" % gone)
    p.quit()
    p = srv.pop(bob, USERS[bob])
    p.retr(1)
    p.quit()
    # what POP3 clients know of mailsrv: UIDL, LIST and the bytes of every message
    before = {u: pop_snapshot(ctx, srv.pop3_port, u, USERS[u]) for u in (alice, bob)}
    want = {u: sum(u in rcpts for _, rcpts, _ in mail) - (u == alice) for u in (alice, bob)}
    check(before[alice]["count"] == want[alice] and before[bob]["count"] == want[bob],
          "mailsrv: alice has %d messages (%d expected), bob %d (%d)"
          % (before[alice]["count"], want[alice], before[bob]["count"], want[bob]))
    check(not any(token_of(m["data"]) == token_of(victim) for m in before[alice]["msgs"]),
          "mailsrv still shows the message deleted over POP3")
    for u in (alice, bob):
        datas = {m["data"] for m in before[u]["msgs"]}
        check(marked[u] <= datas, "%s: the messages marked read on disk are not what POP3 sends (LF -> CRLF): %s"
              % (u, [label(d) for d in marked[u] - datas]))
    rc, killed = srv.stop()
    check(rc == 0 and not killed, "mailsrv's stop: exit status %s%s" % (rc, " (SIGKILLed)" if killed else ""))

    view = mbox_quoted if storage == "mbox" else (lambda d: d)
    dv = MigrationDovecot(ctx, srv.spool, storage, USERS)
    dv.take_spool(ctx.dir, srv.dir)
    try:
        dv.start()
        # IMAP first: Dovecot's POP3 RETR below sets \Seen
        for u in (alice, bob):
            exists, got = dv.imap_all(u, USERS[u])
            want = {view(m["data"]) for m in before[u]["msgs"]}
            soft(exists == before[u]["count"], "%s: Dovecot IMAP SELECT INBOX: %d EXISTS, mailsrv had %d"
                 % (u, exists, before[u]["count"]))
            have = {m["data"] for m in got}
            soft(have == want, "%s: Dovecot IMAP FETCH BODY[] bytes differ from mailsrv's RETR: not there %s, only there %s"
                 % (u, [label(d) for d in want - have], [label(d) for d in have - want]))
            for m in got:
                soft(m["size"] == len(m["data"]), "%s: IMAP RFC822.SIZE %d, BODY[] %d octets (%s)"
                     % (u, m["size"], len(m["data"]), label(m["data"])))
            seen = {m["data"] for m in got if "\\Seen" in m["flags"]}
            soft(seen == {view(d) for d in marked[u]}, "%s: \\Seen in Dovecot on %s, read in mailsrv: %s"
                 % (u, sorted(label(d) for d in seen), sorted(label(d) for d in marked[u])))
        after = {u: pop_snapshot(ctx, dv.pop3_port, u, USERS[u]) for u in (alice, bob)}
        for u in (alice, bob):
            compare_pop3(u, before[u], after[u], "Dovecot", view)
        # and again: Dovecot moved new/ to cur/ and set \Seen (Maildir renames, an mbox rewrite)
        again = {u: pop_snapshot(ctx, dv.pop3_port, u, USERS[u]) for u in (alice, bob)}
        for u in (alice, bob):
            compare_pop3(u, after[u], again[u], "Dovecot's second session")
        errors = [l for l in dv.log_text().splitlines() if re.search(r"\b(Error|Panic|Fatal):", l)]
        soft(not errors, "Dovecot logged errors: %s" % short(" | ".join(errors), 600))
    finally:
        dv.stop()


@test(limit=30)
def pop3_uidl_dovecot_or_short(ctx):
    """[server] pop3_uidl: `dovecot` (the default) gives a Maildir message's file name up to its flags
    (":2,"), what Dovecot's pop3_uidl_format = %f gives; `short` the name cut at its first comma, as
    mailsrv 0.1 did (clients of a server that has always run mailsrv keep their UIDLs)."""
    srv = ctx.server(storage="maildir", domains=MIGRATE_DOMAINS)
    srv.start()
    for i in range(2):
        check(srv.send(["alice@example.test"], msg(tok(), "uidl %d\r\n" % i)) == {}, "refused")
    d = os.path.join(srv.spool, DOMAIN, "alice")

    def names():
        return sorted(n for sub in ("new", "cur") for n in os.listdir(os.path.join(d, sub)))

    def uidls():
        p = srv.pop("alice@example.test", USERS["alice@example.test"])
        u = sorted(p.uidl().values())
        p.quit()
        return u
    full = sorted(re.split(r"[:!]2,", n)[0] for n in names())
    check(all(",S=" in n and ",W=" in n for n in full), "mailsrv's Maildir names: %s" % full)
    got = uidls()
    check(got == full, "pop3_uidl unset (dovecot): UIDLs %s, expected the names up to the flags %s" % (got, full))
    cut = sorted(n.split(",")[0] for n in names())  # mailsrv 0.1's
    for value, want in (("short", cut), ("dovecot", full)):
        srv.stop()
        srv.keys["pop3_uidl"] = value
        srv.write_ini()
        srv.start()
        got = uidls()
        check(got == want, "pop3_uidl = %s: UIDLs %s, expected %s" % (value, got, want))


def checkpw(srv, data, prog=None, env=None, ini=None):
    """`mailsrv -c INI checkpassword PROG...` with data on descriptor 3, as qmail and Dovecot give it
    (http://cr.yp.to/checkpwd/interface.html: login\\0password\\0timestamp\\0). The default PROG
    prints REPLY, $USER and $AUTHORIZED. Returns (exit status, stdout, stderr)."""
    prog = prog or ["/bin/sh", "-c", 'echo "REPLY $USER ${AUTHORIZED:-}"']
    r, w = os.pipe()
    try:
        os.write(w, data)
        os.close(w)
        w = None
        # the pipe's read end as descriptor 3 (Python keeps only pass_fds open, at their own numbers)
        p = subprocess.run(["/bin/sh", "-c", 'exec 3<&"$0" && exec "$@"', str(r)] + RUN + [srv.bin, "-c", ini or srv.ini,
                            "checkpassword"] + prog, pass_fds=(r,), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=secs(20), env=dict(os.environ, **(env or {})))
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def hashed_domains():
    """MIGRATE_DOMAINS with alice's password as `mailsrv passwd` hashes it ($pbkdf2-sha256$...)."""
    r = run_cli(["passwd"], input=USERS["alice@example.test"] + "\n")
    check(r.returncode == 0 and r.stdout.startswith("$pbkdf2-sha256$"), "mailsrv passwd: %d %s %s"
          % (r.returncode, short(r.stdout), short(r.stderr)))
    return MIGRATE_DOMAINS.replace("alice = Migr8Alice", "alice = " + r.stdout.strip())


@test(limit=60, unix_only=True)
def checkpassword_interface(ctx):
    """`mailsrv checkpassword PROG`: qmail's checkpassword interface over mailsrv's INI, as Dovecot uses
    it. The right password (hashed or plain text in the INI, the address in any case, or a bare name
    of one domain, as mailsrv's logins take it): PROG runs with USER=the mailbox. A wrong one, or no
    such mailbox: exit 1 and PROG does not run. AUTHORIZED=1 (a userdb lookup): PROG runs with
    AUTHORIZED=2 if the mailbox exists, else exit 3. Input not in the form: 2; 512 bytes: 1 (as
    qmail's); an INI that does not load: 111 (temporary)."""
    srv = ctx.server(domains=hashed_domains())  # not started: the command reads the INI only
    alice, bob = "alice@example.test", "bob@example.test"
    with open(srv.ini) as f:
        check("$pbkdf2-sha256$" in f.read(), "alice's password is not hashed in the INI")
    for login, pw, user in ((alice, USERS[alice], alice), ("Alice@Example.TEST", USERS[alice], alice),
                            ("alice", USERS[alice], alice), (bob, USERS[bob], bob), ("bob", USERS[bob], bob)):
        rc, out, err = checkpw(srv, b"%s\0%s\0%d\0" % (login.encode(), pw.encode(), 1700000000))
        check(rc == 0 and out == "REPLY %s" % user, "%s with its password: exit %d, PROG said %r (expected "
              "REPLY %s), stderr %s" % (login, rc, out, user, short(err)))
    rc, out, err = checkpw(srv, b"%s\0%s\0\0" % (alice.encode(), USERS[alice].encode()), prog=["/usr/bin/env"])
    check(rc == 0 and "USER=%s" % alice in out.splitlines(), "PROG /usr/bin/env: exit %d, %s" % (rc, short(out, 300)))
    for login, pw in ((alice, "Migr8alice"), (alice, USERS[bob]), (bob, "Migr8Bob "), (alice, ""),
                      ("nobody@example.test", "Migr8Alice"), ("alice@other.test", USERS[alice]), ("", "")):
        rc, out, err = checkpw(srv, b"%s\0%s\0\0" % (login.encode(), pw.encode()))
        check(rc == 1 and not out, "%r with password %r: exit %d (expected 1), PROG said %r" % (login, pw, rc, out))
    rc, out, err = checkpw(srv, b"bob@example.test\0\0\0", env={"AUTHORIZED": "1"})
    check(rc == 0 and out == "REPLY bob@example.test 2", "AUTHORIZED=1 lookup of bob: exit %d, %r" % (rc, out))
    rc, out, err = checkpw(srv, b"zed@example.test\0\0\0", env={"AUTHORIZED": "1"})
    check(rc == 3 and not out, "AUTHORIZED=1 lookup of no mailbox: exit %d (expected 3), %r" % (rc, out))
    for data in (b"", b"alice@example.test", b"alice@example.test\0Migr8Alice"):
        rc, out, err = checkpw(srv, data)
        check(rc == 2 and not out, "input %r: exit %d (expected 2), %r" % (data, rc, out))
    rc, out, err = checkpw(srv, b"alice@example.test\0" + b"x" * 600 + b"\0\0")
    check(rc == 1 and not out, "600-byte password: exit %d (expected 1), %r" % (rc, out))
    rc, out, err = checkpw(srv, b"alice@example.test\0Migr8Alice\0\0", ini=os.path.join(srv.dir, "none.ini"))
    check(rc == 111 and not out and "none.ini" in err, "missing INI: exit %d (expected 111), %r %s" % (rc, out, short(err)))
    rc, out, err = checkpw(srv, b"alice@example.test\0Migr8Alice\0\0", prog=[os.path.join(srv.dir, "no-such-program")])
    check(rc == 111 and "no-such-program" in err, "a PROG that is not there: exit %d (expected 111), %s" % (rc, short(err)))
    r = run_cli(["-c", srv.ini, "checkpassword"])
    check(r.returncode == 2 and "checkpassword PROGRAM" in r.stderr, "checkpassword without PROGRAM: exit %d"
          % r.returncode)


@test(limit=60, unix_only=True)
def dovecot_checkpassword_passdb(ctx):
    """README's "Passwords" for a move: Dovecot's passdb is `driver = checkpassword` with `args = MAILSRV
    -c INI checkpassword` (Dovecot splits args at spaces and adds its checkpassword-reply), userdb
    static. POP3 and IMAP logins through Dovecot with the passwords of mailsrv's INI, one hashed
    ($pbkdf2-sha256$, which no Dovecot 2.3 scheme reads) and one in plain text, and with a bare name;
    a wrong password fails in both."""
    if RUN:  # qemu, wine, valgrind: Dovecot runs the binary itself, without them
        raise Skip("Dovecot runs the mailsrv binary itself: only with a native server", "native")
    srv = ctx.server(storage="maildir", domains=hashed_domains()).start()
    alice, bob = "alice@example.test", "bob@example.test"
    data = msg(tok(), "through checkpassword\r\n")
    check(srv.send([alice, bob], data) == {}, "refused")
    rc, killed = srv.stop()
    check(rc == 0 and not killed, "mailsrv's stop: exit status %s" % rc)
    bindir = tempfile.mkdtemp(prefix="bin", dir=ctx.dir)  # a copy that Dovecot's auth process (as root: user dovecot) may run
    binary = os.path.join(bindir, "mailsrv")
    shutil.copy(srv.bin, binary)
    os.chmod(binary, 0o755)
    os.chmod(srv.ini, 0o644)  # a real install: chgrp dovecot mailsrv.ini; chmod 640
    dv = MigrationDovecot(ctx, srv.spool, "maildir", USERS, checkpassword="%s -c %s checkpassword" % (binary, srv.ini))
    dv.take_spool(ctx.dir, srv.dir, bindir)
    try:
        dv.start()
        for user, login in ((alice, alice), (bob, bob), (alice, "alice")):
            p = ctx.track(Pop(dv.pop3_port))
            p.greet()
            p.login(login, USERS[user])
            n, _ = p.stat()
            got = p.retr(1) if n else b""
            check(n == 1 and token_of(got) == token_of(data), "Dovecot POP3 as %s: %d messages%s" % (login, n,
                  "" if not n or token_of(got) == token_of(data) else ", not the one mailsrv delivered"))
            p.quit()
            exists, msgs = dv.imap_all(login, USERS[user])
            check(exists == 1 and msgs[0]["data"] == got, "Dovecot IMAP as %s: %d messages" % (login, exists))
        p = ctx.track(Pop(dv.pop3_port))
        p.greet()
        p.ok("USER " + alice)
        p.err("PASS " + USERS[bob])
        p.quit()
        try:
            dv.imap_all(alice, "Migr8alice")
            raise TestFailure("Dovecot IMAP took a wrong password for alice")
        except imaplib.IMAP4.error:
            pass
        log = dv.log_text()
        check(re.search(r"checkpassword\(alice@example\.test,.*Login failed \(status=1\)", log),
              "Dovecot's log shows no failed checkpassword login (exit 1) of alice: %s" % short(log[-600:], 600))
        errors = [l for l in log.splitlines() if re.search(r"\b(Error|Panic|Fatal):", l)]
        soft(not errors, "Dovecot logged errors: %s" % short(" | ".join(errors), 600))
    finally:
        dv.stop()
