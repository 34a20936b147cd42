"""Fake network peers for mailsrv's relay tests: a DNS server and receiving SMTP servers.

Python 3 standard library only; everything listens on loopback and runs in daemon threads.

    dns = FakeDNS()                        # UDP and TCP on dns.addr ("127.0.0.1:PORT")
    dns.mx("remote.test", [(10, "mx1.remote.test")]); dns.a("mx1.remote.test", ["127.0.0.2"])
    port = free_port_on(["127.0.0.2", "127.0.0.3"])
    sink = SmtpSink("127.0.0.2", port)     # sink.messages: one dict per completed transaction
"""
import collections
import ipaddress
import os
import random
import socket
import struct
import threading
import time

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 255: "ANY"}
NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; Windows (and wine's host) start at 49152


_PORTS = random.Random(os.urandom(16))  # not the tests' seeded random: two runs side by side differ
_PORTS_GIVEN = set()  # never the same port twice in one run: the last user's TIME_WAITs may linger


def free_ports_on(n, hosts=("127.0.0.1",), udp=False):
    """n distinct port numbers that are free for TCP (and UDP) on every host in hosts, for a server
    that binds them later. They come from below the kernel's ephemeral range: a port picked there,
    released and bound later can meanwhile become some client's local port, or the local port of
    the very probe that connects to it (a TCP self-connect), and the server then fails to bind."""
    low, high = 10000, min(_ephemeral_low(), 65536) - 1
    ports = []
    for _ in range(1000 * n):
        if len(ports) == n:
            return ports
        port = _PORTS.randint(low, high) if high - low >= 1000 else 0
        if port in _PORTS_GIVEN:
            continue
        socks = []
        try:
            for h in hosts:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,):
                    s = socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((h, port))
                    port = s.getsockname()[1]  # 0 (no range to pick from): the kernel's choice
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        _PORTS_GIVEN.add(port)
        ports.append(port)
    raise OSError("no port free on all of %s" % (hosts,))


def free_port_on(hosts):
    """A TCP port number that is free on every host in hosts (e.g. several 127.0.0.x addresses)."""
    return free_ports_on(1, hosts)[0]


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class FakeDNS:
    """An authoritative-looking DNS server answering from records the test sets."""

    def __init__(self, host="127.0.0.1"):
        self.host = host
        self.records = {}  # name -> {qtype: [rdata values]}; a name present here exists
        self.flags = {}  # name -> "nxdomain" | "servfail" | "truncate"
        self.queries = []  # (qname, qtype name, "udp" | "tcp")
        self.lock = threading.Lock()
        self.closed = False
        for _ in range(100):  # UDP and TCP on the same port number
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((host, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        else:
            raise OSError("no port free for both UDP and TCP")
        self.tcp.listen(16)
        self.addr = "%s:%d" % (host, self.port)
        for fn in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=fn, daemon=True).start()

    # records -----------------------------------------------------------------------------
    def _set(self, name, qtype, values):
        with self.lock:
            self.records.setdefault(name.lower().rstrip("."), {})[qtype] = list(values)

    def mx(self, domain, entries):
        self._set(domain, 15, entries)

    def a(self, name, ips):
        self._set(name, 1, ips)

    def aaaa(self, name, ips):
        self._set(name, 28, ips)

    def null_mx(self, domain):
        self._set(domain, 15, [(0, ".")])

    def nxdomain(self, name):
        with self.lock:
            self.records.pop(name.lower().rstrip("."), None)
            self.flags[name.lower().rstrip(".")] = "nxdomain"

    def servfail(self, name):
        with self.lock:
            self.flags[name.lower().rstrip(".")] = "servfail"

    def drop(self, name):
        """Never answer queries for name (a resolver timeout)."""
        with self.lock:
            self.flags[name.lower().rstrip(".")] = "drop"

    def clear(self, name):
        """Undo nxdomain/servfail/truncate/drop for name."""
        with self.lock:
            self.flags.pop(name.lower().rstrip("."), None)

    def truncate(self, name):
        """UDP answers for name carry TC=1 and no records; TCP answers are complete."""
        with self.lock:
            self.flags[name.lower().rstrip(".")] = "truncate"

    def asked(self, qname=None, qtype=None, transport=None):
        with self.lock:
            return [q for q in self.queries if (qname is None or q[0] == qname.lower().rstrip("."))
                    and (qtype is None or q[1] == qtype) and (transport is None or q[2] == transport)]

    # wire format -------------------------------------------------------------------------
    @staticmethod
    def _read_name(msg, off):
        """(name, offset after the name in place); follows compression pointers."""
        labels, end, hops = [], None, 0
        while True:
            n = msg[off]
            if n & 0xC0 == 0xC0:
                if end is None:
                    end = off + 2
                off = ((n & 0x3F) << 8) | msg[off + 1]
                hops += 1
                if hops > 20:
                    raise ValueError("pointer loop")
                continue
            off += 1
            if n == 0:
                break
            labels.append(msg[off:off + n].decode("latin-1"))
            off += n
        return ".".join(labels), (end if end is not None else off)

    @staticmethod
    def _encode_name(name, table, pos):
        """Name in wire form, compressed against table (suffix -> offset); adds new suffixes at pos."""
        labels = [l for l in name.rstrip(".").split(".") if l]
        out = b""
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            if suffix in table:
                return out + struct.pack(">H", 0xC000 | table[suffix])
            if pos + len(out) < 0x3FFF:
                table[suffix] = pos + len(out)
            lab = labels[i].encode("latin-1")
            out += bytes([len(lab)]) + lab
        return out + b"\0"

    def answer(self, query, transport):
        if len(query) < 12:
            return None
        qid, flags, qd = struct.unpack(">HHH", query[:6])
        if flags & 0x8000 or qd != 1:
            return None
        qname, off = self._read_name(query, 12)
        qtype, _qclass = struct.unpack(">HH", query[off:off + 4])
        question = query[12:off + 4]
        key = qname.lower().rstrip(".")
        with self.lock:
            self.queries.append((key, QTYPES.get(qtype, str(qtype)), transport))
            flag = self.flags.get(key)
            rrs = list(self.records.get(key, {}).get(qtype, []))
            known = key in self.records
        rcode, tc = NOERROR, 0
        if flag == "drop":
            return None
        if flag == "servfail":
            rcode, rrs = SERVFAIL, []
        elif flag == "truncate" and transport == "udp":
            tc, rrs = 1, []
        elif flag == "nxdomain" or not known:
            rcode, rrs = NXDOMAIN, []
        opcode_rd = flags & 0x7900  # opcode and RD echoed
        hdr_flags = 0x8000 | opcode_rd | 0x0400 | (0x0200 if tc else 0) | 0x0080 | rcode
        msg = struct.pack(">HHHHHH", qid, hdr_flags, 1, len(rrs), 0, 0) + question
        table = {}
        labels = key.split(".") if key else []
        for i in range(len(labels)):  # question name suffixes, for compression against it
            table[".".join(labels[i:])] = 12 + sum(len(l) + 1 for l in labels[:i])
        for v in rrs:
            rr = struct.pack(">H", 0xC00C) + struct.pack(">HHI", qtype, 1, 60)
            if qtype == 15:
                pref, host = v
                rdata = struct.pack(">H", pref) + (b"\0" if host.strip() == "." else
                                                   self._encode_name(host, table, len(msg) + len(rr) + 4))
            elif qtype == 1:
                rdata = socket.inet_pton(socket.AF_INET, v)
            elif qtype == 28:
                rdata = ipaddress.IPv6Address(v).packed
            else:
                rdata = v
            msg += rr + struct.pack(">H", len(rdata)) + rdata
        return msg

    def _serve_udp(self):
        while not self.closed:
            try:
                data, peer = self.udp.recvfrom(4096)
            except socket.timeout:  # (e2e.py's default timeout): a quiet spell, not the end
                continue
            except OSError:
                return
            try:
                resp = self.answer(data, "udp")
                if resp:
                    self.udp.sendto(resp, peer)
            except (ValueError, IndexError, struct.error, OSError):
                pass

    def _serve_tcp(self):
        while not self.closed:
            try:
                conn, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn):
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    ln = _recv_exact(conn, 2)
                    if ln is None:
                        return
                    data = _recv_exact(conn, struct.unpack(">H", ln)[0])
                    if data is None:
                        return
                    resp = self.answer(data, "tcp")
                    if resp:
                        conn.sendall(struct.pack(">H", len(resp)) + resp)
            except (ValueError, IndexError, struct.error, OSError):
                pass

    def close(self):
        self.closed = True
        for s in (self.udp, self.tcp):
            try:
                s.close()
            except OSError:
                pass


class _Reader:
    """Buffered reading of one connection that numbers its recv() calls: a command's packet is the
    number of the recv that completed it, so commands a client wrote at once (RFC 2920 pipelining)
    share one number, and one the client wrote after a reply has a higher one."""

    def __init__(self, sock):
        self.sock, self.buf, self.pos, self.packet = sock, b"", 0, 0

    def _more(self):
        data = self.sock.recv(65536)
        if data:
            self.packet += 1
            self.buf = self.buf[self.pos:] + data
            self.pos = 0
        return bool(data)

    def readline(self, limit=4096):
        while True:
            n = self.buf.find(b"\n", self.pos, self.pos + limit)
            if n >= 0:
                n += 1
                break
            if len(self.buf) - self.pos >= limit or not self._more():
                n = min(self.pos + limit, len(self.buf))
                break
        line, self.pos = self.buf[self.pos:n], n
        return line

    def read(self, n):
        while len(self.buf) - self.pos < n:
            if not self._more():
                break
        data = self.buf[self.pos:self.pos + n]
        self.pos += len(data)
        return data


class SmtpSink:
    """A receiving SMTP server recording each completed transaction as a dict:
    mail_from, params (MAIL parameters), rcpts (accepted ones), rcpt_params (their RCPT parameters, in turn),
    data (un-dot-stuffed, CRLF), helo, helo_verb, peer, bdat (the sizes of the BDAT chunks that carried
    the text, None when DATA did).

    Behaviour knobs (plain attributes, change them any time):
      greeting      first line sent ("220 ..."); a 421 greeting closes, another non-2xx answers 503 to all but QUIT
      ehlo          False: EHLO gets 502 so the client must fall back to HELO
      extensions    EHLO keywords
      mail_reply, rcpt_reply, data_reply   default replies (data_reply: after the final dot)
      rcpt_replies  address (lower case) -> reply, or a list of replies used in turn (the last one sticks)
      blackhole     accept connections and never send anything
      data_without_rcpts  DATA with no accepted recipient gets 354 (as RFC 2920 3.1 warns a server may), the
                    text read is kept in empty_data, and the end of it gets 554
      tls_context   an ssl.SSLContext (server side): EHLO offers STARTTLS and it works; each
                    message dict then has "tls": the TLS version string, or None in the clear
      starttls_last STARTTLS is the last EHLO line (else the first keyword after the name)
    A reply may hold several lines separated by "\n" (sent as a multi-line reply); "DROP" closes the
    connection instead of replying.
    sink.script(stage, [replies]) queues replies for the next times stage ("greeting", "mail", "rcpt", "data",
    "bdat": a chunk that is not the last; the LAST chunk's reply is "data"'s; "rcpt-without-mail": an RCPT
    after no accepted MAIL, by default 503) is hit.
    BDAT (RFC 3030) is always understood; add "CHUNKING" to extensions to offer it.
    sink.commands: (session number, packet number, command line) for every command line read,
    bdat chunk data left out; sink.groups() gives the verbs in the groups the client wrote at once.
    """

    def __init__(self, host="127.0.0.2", port=None, name="sink.test"):
        self.host = host
        self.name = name
        self.greeting = "220 %s ESMTP fake" % name
        self.ehlo = True
        self.extensions = ["SIZE 10240000", "PIPELINING", "8BITMIME"]
        self.mail_reply = "250 2.1.0 Ok"
        self.rcpt_reply = "250 2.1.5 Ok"
        self.rcpt_replies = {}
        self.data_reply = "250 2.0.0 Ok: queued"
        self.blackhole = False
        self.data_without_rcpts = False
        self.empty_data = []  # what came after such a 354, one entry per DATA
        self.tls_context = None
        self.starttls_last = False
        self.messages = []
        self.events = []  # (stage, argument, reply) for every command seen, across connections
        self.commands = []  # (session number, packet number, line)
        self.talks = 0
        self.connections = 0
        self.scripts = collections.defaultdict(collections.deque)
        self.cond = threading.Condition()
        self.socks = []
        self.closed = False
        self.srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((host, port or 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def script(self, stage, replies):
        with self.cond:
            self.scripts[stage].extend(replies)

    def _reply_for(self, stage, default):
        with self.cond:
            q = self.scripts.get(stage)
            return q.popleft() if q else default

    def _rcpt_reply(self, addr):
        with self.cond:
            r = self.rcpt_replies.get(addr.lower())
            if isinstance(r, list):
                return r.pop(0) if len(r) > 1 else r[0]
        return r if r is not None else self._reply_for("rcpt", self.rcpt_reply)

    def wait_messages(self, n, timeout):
        """The message list once it holds at least n transactions; AssertionError after timeout seconds."""
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("sink %s:%d: %d of %d messages after %.0fs"
                                         % (self.host, self.port, len(self.messages), n, timeout))
                self.cond.wait(left)
            return list(self.messages)

    def stage_count(self, stage):
        with self.cond:
            return sum(1 for e in self.events if e[0] == stage)

    def groups(self):
        """The command verbs, upper case, as lists of those that arrived in one packet, in order."""
        out, key = [], None
        with self.cond:
            cmds = list(self.commands)
        for conn, packet, line in cmds:
            if (conn, packet) != key:
                out.append([])
                key = (conn, packet)
            out[-1].append(line.split(" ")[0].upper())
        return out

    def _accept(self):
        while not self.closed:
            try:
                conn, peer = self.srv.accept()
            except socket.timeout:  # (e2e.py's default timeout): no client for a while, not the end
                continue
            except OSError:
                return
            with self.cond:
                self.connections += 1
                self.socks.append(conn)
                self.cond.notify_all()
            threading.Thread(target=self._session, args=(conn, peer), daemon=True).start()

    def _log(self, stage, arg, reply):
        with self.cond:
            self.events.append((stage, arg, reply))
            self.cond.notify_all()

    def _session(self, conn, peer):
        f = _Reader(conn)
        try:
            if self.blackhole:
                while conn.recv(4096):  # until the client gives up
                    pass
                return
            self._talk(conn, f, peer)
        except (OSError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _talk(self, conn, f, peer):
        # f: a _Reader (subclasses may pass a file from makefile(): packet numbers are then 0)
        def send(reply):
            if reply == "DROP":
                raise ConnectionAbortedError("scripted drop")
            conn.sendall(b"".join(l.encode("latin-1") + b"\r\n" for l in reply.split("\n")))

        tls = None
        with self.cond:
            self.talks += 1
            number = self.talks
        greet = self._reply_for("greeting", self.greeting)
        self._log("greeting", "", greet)
        send(greet)
        if greet.startswith("421"):
            return
        refusing = not greet.startswith("2")
        helo = helo_verb = mail_from = None
        params, rcpts, rparams = "", [], []
        chunks, bdat_data = None, b""  # the BDAT chunks of the transaction going on
        while True:
            raw = f.readline(4096)
            if not raw:
                return
            line = raw.rstrip(b"\r\n").decode("latin-1")
            with self.cond:
                self.commands.append((number, getattr(f, "packet", 0), line))
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                self._log("quit", "", "221")
                send("221 2.0.0 Bye")
                return
            if refusing:
                send("503 5.5.1 Not now")
            elif verb == "EHLO":
                if not self.ehlo:
                    self._log("ehlo", arg, "502")
                    send("502 5.5.2 EHLO not supported")
                    continue
                helo, helo_verb, mail_from, rcpts, rparams = arg, "EHLO", None, [], []
                self._log("ehlo", arg, "250")
                lines = [self.name] + self.extensions
                if self.tls_context and not tls:
                    lines.insert(len(lines) if self.starttls_last else 1, "STARTTLS")
                for i, l in enumerate(lines):
                    send("250%s%s" % ("-" if i < len(lines) - 1 else " ", l))
            elif verb == "HELO":
                helo, helo_verb, mail_from, rcpts = arg, "HELO", None, []
                self._log("helo", arg, "250")
                send("250 " + self.name)
            elif verb == "MAIL":
                r = self._reply_for("mail", self.mail_reply)
                self._log("mail", arg, r)
                if r.startswith("2"):
                    path = arg.split(":", 1)[1].strip() if ":" in arg else ""
                    mail_from, _, params = path.partition(" ")
                    mail_from, rcpts, rparams = mail_from.strip("<>"), [], []
                send(r)
            elif verb == "RCPT":
                addr = (arg.split(":", 1)[1].strip() if ":" in arg else "").split(" ")[0].strip("<>")
                r = self._rcpt_reply(addr) if mail_from is not None else self._reply_for("rcpt-without-mail", "503 5.5.1 MAIL first")
                self._log("rcpt", addr, r)
                if r.startswith("2"):
                    rcpts.append(addr)
                    rparams.append(arg.split(">", 1)[1].strip() if ">" in arg else "")
                send(r)
            elif verb == "DATA":
                if (mail_from is None or not rcpts) and self.data_without_rcpts:
                    self._log("data-start", "", "354")
                    send("354 End data with <CR><LF>.<CR><LF>")
                    data = b""
                    while True:
                        l = f.readline(1 << 20)
                        if not l or l in (b".\r\n", b".\n"):
                            break
                        data += l
                    with self.cond:
                        self.empty_data.append(data)
                    send("554 5.5.1 No valid recipients")
                    continue
                if mail_from is None or not rcpts:
                    self._log("data-start", "", "554")
                    send("554 5.5.1 No valid recipients")
                    continue
                send("354 End data with <CR><LF>.<CR><LF>")
                data = b""
                while True:
                    l = f.readline(1 << 20)
                    if not l:
                        return
                    if l in (b".\r\n", b".\n"):
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    data += l
                r = self._reply_for("data", self.data_reply)
                if r.startswith("2"):
                    with self.cond:
                        self.messages.append({"mail_from": mail_from, "params": params, "rcpts": list(rcpts),
                                              "rcpt_params": list(rparams),
                                              "data": data, "helo": helo, "helo_verb": helo_verb, "peer": peer,
                                              "tls": tls, "bdat": None})
                self._log("data", "", r)
                send(r)
                mail_from, rcpts = None, []
            elif verb == "BDAT":  # RFC 3030 2: BDAT size [LAST]; the chunk is read whatever the reply
                words = arg.split()
                if not words or not words[0].isdigit() or len(words) > 2 or (len(words) == 2 and words[1].upper() != "LAST"):
                    self._log("bdat", arg, "501")
                    send("501 5.5.4 Syntax: BDAT size [LAST]")
                    continue
                size, last = int(words[0]), len(words) == 2
                data = f.read(size)
                if len(data) < size:
                    return
                if mail_from is None or not rcpts:
                    self._log("bdat", arg, "503")
                    send("503 5.5.1 No valid recipients")
                    continue
                chunks = (chunks or []) + [size]
                bdat_data += data
                if not last:
                    r = self._reply_for("bdat", "250 2.0.0 %d octets received" % size)
                    self._log("bdat", arg, r)
                    if not r.startswith("2"):
                        mail_from, rcpts, chunks, bdat_data = None, [], None, b""
                    send(r)
                    continue
                r = self._reply_for("data", self.data_reply)
                if r.startswith("2"):
                    with self.cond:
                        self.messages.append({"mail_from": mail_from, "params": params, "rcpts": list(rcpts),
                                              "rcpt_params": list(rparams),
                                              "data": bdat_data, "helo": helo, "helo_verb": helo_verb, "peer": peer,
                                              "tls": tls, "bdat": chunks})
                self._log("data", "", r)
                send(r)
                mail_from, rcpts, chunks, bdat_data = None, [], None, b""
            elif verb == "STARTTLS" and self.tls_context and not tls:
                send("220 2.0.0 Ready to start TLS")
                try:
                    conn = self.tls_context.wrap_socket(conn, server_side=True)
                except OSError as e:
                    self._log("starttls", str(e), "failed")
                    return
                tls = conn.version()
                self._log("starttls", tls, "ok")
                packet, f = getattr(f, "packet", 0), _Reader(conn)
                f.packet = packet
                helo = helo_verb = mail_from = None
                params, rcpts = "", []
            elif verb == "RSET":
                mail_from, rcpts, chunks, bdat_data = None, [], None, b""
                send("250 2.0.0 Ok")
            elif verb == "NOOP":
                send("250 2.0.0 Ok")
            else:
                send("502 5.5.2 Command not recognized")

    def close(self):
        self.closed = True
        with self.cond:
            socks = list(self.socks)
        for s in [self.srv] + socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
