"""A small authoritative DNS server for the outbound tests, on 127.0.0.1 only.

It answers from a zone given as a dict, over UDP and TCP on the same ephemeral port, from two
threads of the pytest process, and records every query (name, type, transport) so a test can
assert that TCP was used after a truncated UDP answer, or that nothing was asked at all. The
server under test is pointed at it with `dns_servers = 127.0.0.1:PORT`; nothing here ever
talks to the machine's resolver. Hand-written with `struct` (RFC 1035 §4), no dependency.

Zone: `{name: entry}`, names without the trailing dot, matched case-insensitively. An entry is

- a dict of records: `"MX": [(pref, exchange), ...]` (exchange `"."` is a null MX, RFC
  7505), `"A": ["127.0.0.1", ...]`, `"AAAA": ["::1", ...]`, `"CNAME": "target"`, plus the
  flag `"truncate": True` (over UDP: TC=1 and no records; over TCP: the full answer). A type
  the dict does not name gets NODATA (NOERROR, no answer, the SOA in authority);
- `NXDOMAIN`, `SERVFAIL`, `REFUSED` or `NEVER` (never answer, over either transport).

A name not in the zone is NXDOMAIN, except a parent of a name in it (an empty non-terminal,
RFC 8020), which is NODATA.
"""
import socket
import struct
import threading
import time
from dataclasses import dataclass

NXDOMAIN = "NXDOMAIN"
SERVFAIL = "SERVFAIL"
REFUSED = "REFUSED"
NEVER = "NEVER"

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "OPT": 41, "ANY": 255}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {"NOERROR": 0, "FORMERR": 1, SERVFAIL: 2, NXDOMAIN: 3, "NOTIMP": 4, REFUSED: 5}


@dataclass(frozen=True)
class Query:
    """One query as received: `name` lower-cased without the trailing dot, `qtype` a name
    ("MX") or the number as a string for types this server does not know, `transport` "udp"
    or "tcp", `qid` the query id."""
    name: str
    qtype: str
    transport: str
    qid: int


def encode_name(name: str) -> bytes:
    """A name in wire form, uncompressed; "" and "." are the root."""
    out = b""
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            assert len(raw) < 64, label
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def decode_name(msg: bytes, pos: int):
    """Reads a possibly compressed name at `pos`; returns (name, position after it)."""
    labels, end, jumps = [], None, 0
    while True:
        if pos >= len(msg):
            raise ValueError("name runs past the message")
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(msg) or jumps > 20:
                raise ValueError("bad compression pointer")
            if end is None:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            continue
        if n & 0xC0:
            raise ValueError("bad label type")
        if n == 0:
            return ".".join(labels), (end if end is not None else pos + 1)
        labels.append(msg[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n


def rr(name: str, rtype: str, rdata: bytes, ttl: int) -> bytes:
    return encode_name(name) + struct.pack("!HHIH", TYPES[rtype], 1, ttl, len(rdata)) + rdata


def rdata_of(rtype: str, value) -> bytes:
    if rtype == "A":
        return socket.inet_pton(socket.AF_INET, value)
    if rtype == "AAAA":
        return socket.inet_pton(socket.AF_INET6, value)
    if rtype == "MX":
        pref, exchange = value
        return struct.pack("!H", pref) + encode_name(exchange)
    if rtype in ("CNAME", "NS"):
        return encode_name(value)
    if rtype == "TXT":
        raw = value.encode()
        return bytes([len(raw)]) + raw
    raise ValueError(f"unsupported record type {rtype}")


class DNSServer:
    """Authoritative for the names in `zone`; `start()` binds 127.0.0.1:0 for UDP and the same
    port for TCP. Use as a context manager or call `stop()`."""

    def __init__(self, zone=None, ttl=300, host="127.0.0.1"):
        self.zone = {}
        self.ttl = ttl
        self.host = host
        self.port = None
        self.queries = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._conns = []
        self.set_zone(zone or {})

    # --- zone ---------------------------------------------------------------------------
    def set_zone(self, zone):
        """Replaces the zone (the server may be running)."""
        norm = {}
        for name, entry in zone.items():
            key = name.strip(".").lower()
            if isinstance(entry, dict):
                entry = {k.upper() if k != "truncate" else k: v for k, v in entry.items()}
                for rtype in entry:
                    if rtype != "truncate" and rtype not in TYPES:
                        raise ValueError(f"{name}: unsupported record type {rtype}")
            elif entry not in (NXDOMAIN, SERVFAIL, REFUSED, NEVER):
                raise ValueError(f"{name}: unknown behaviour {entry!r}")
            norm[key] = entry
        with self._lock:
            self.zone = norm

    # --- lifecycle ----------------------------------------------------------------------
    def start(self):
        # UDP and TCP on one port: the UDP port the kernel picks may be taken for TCP (a
        # listener or a client's ephemeral port of another test), so try again until both bind.
        for _ in range(100):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((self.host, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((self.host, self.port))
                break
            except OSError:
                self.tcp.close()
                self.udp.close()
        else:
            raise OSError("no port free for both UDP and TCP on " + self.host)
        self.tcp.listen(64)
        self.udp.settimeout(0.1)
        self.tcp.settimeout(0.1)
        for target in (self._serve_udp, self._serve_tcp):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for s in [self.udp, self.tcp, *self._conns]:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def address(self):
        """The value for `dns_servers`."""
        return f"{self.host}:{self.port}"

    # --- what was asked -----------------------------------------------------------------
    def asked(self, name=None, qtype=None, transport=None):
        """The recorded queries matching every given field (name case-insensitive)."""
        with self._lock:
            qs = list(self.queries)
        return [
            q for q in qs
            if (name is None or q.name == name.strip(".").lower())
            and (qtype is None or q.qtype == qtype)
            and (transport is None or q.transport == transport)
        ]

    def wait_asked(self, timeout=10, **match):
        """Waits until a query matching `match` (see `asked`) has arrived; returns them."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.asked(**match)
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no DNS query {match} after {timeout}s; got {self.asked()}")

    # --- answering ----------------------------------------------------------------------
    def _record(self, q):
        with self._lock:
            self.queries.append(q)

    def answer(self, query: bytes, transport: str):
        """The response to one query message, or None to stay silent."""
        if len(query) < 12:
            return None
        qid, flags, qdcount, _an, _ns, _ar = struct.unpack("!HHHHHH", query[:12])
        if flags & 0x8000:
            return None  # a response, not a query
        rd = flags & 0x0100
        opcode = (flags >> 11) & 0xF
        try:
            if qdcount != 1:
                raise ValueError("not one question")
            qname, pos = decode_name(query, 12)
            if pos + 4 > len(query):
                raise ValueError("short question")
            qtype_n, qclass = struct.unpack("!HH", query[pos:pos + 4])
        except ValueError:
            return struct.pack("!HHHHHH", qid, 0x8000 | rd | RCODES["FORMERR"], 0, 0, 0, 0)
        question = query[12:pos + 4]
        qtype = TYPE_NAMES.get(qtype_n, str(qtype_n))
        self._record(Query(qname.lower(), qtype, transport, qid))

        def reply(rcode, answers=(), authority=(), tc=False, aa=True):
            f = 0x8000 | (opcode << 11) | rd | RCODES[rcode]
            if aa:
                f |= 0x0400
            if tc:
                f |= 0x0200
            head = struct.pack("!HHHHHH", qid, f, 1, len(answers), len(authority), 0)
            return head + question + b"".join(answers) + b"".join(authority)

        if opcode != 0:
            return reply("NOTIMP", aa=False)
        if qclass != 1:
            return reply(REFUSED, aa=False)
        with self._lock:
            zone = self.zone
        key = qname.lower()
        entry = zone.get(key)
        if entry is None:
            if any(n.endswith("." + key) for n in zone):
                entry = {}
            else:
                return reply(NXDOMAIN, authority=[self._soa(key)])
        if entry == NEVER:
            return None
        if isinstance(entry, str):
            return reply(entry, aa=entry == NXDOMAIN,
                         authority=[self._soa(key)] if entry == NXDOMAIN else [])
        if entry.get("truncate") and transport == "udp":
            return reply("NOERROR", tc=True)
        answers = []
        if "CNAME" in entry and qtype != "CNAME":
            answers.append(rr(qname, "CNAME", rdata_of("CNAME", entry["CNAME"]), self.ttl))
        elif qtype in entry:
            values = entry[qtype]
            if not isinstance(values, (list, tuple)) or (qtype == "MX" and values and isinstance(values[0], int)):
                values = [values]
            answers = [rr(qname, qtype, rdata_of(qtype, v), self.ttl) for v in values]
        elif qtype == "ANY":
            for t, values in entry.items():
                if t in TYPES:
                    values = values if isinstance(values, list) else [values]
                    answers += [rr(qname, t, rdata_of(t, v), self.ttl) for v in values]
        if not answers:
            return reply("NOERROR", authority=[self._soa(key)])
        return reply("NOERROR", answers=answers)

    def _soa(self, name):
        """An SOA for negative answers (RFC 2308), owned by the last two labels of `name`."""
        owner = ".".join(name.split(".")[-2:]) or "."
        rdata = (encode_name("ns." + owner) + encode_name("hostmaster." + owner)
                 + struct.pack("!IIIII", 1, 3600, 600, 86400, 60))
        return rr(owner, "SOA", rdata, 60)

    def _serve_udp(self):
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            resp = self.answer(data, "udp")
            if resp is not None:
                try:
                    self.udp.sendto(resp, peer)
                except OSError:
                    pass

    def _serve_tcp(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn):
        conn.settimeout(0.2)
        buf = b""
        try:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65535)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2:
                    n = struct.unpack("!H", buf[:2])[0]
                    if len(buf) < 2 + n:
                        break
                    msg, buf = buf[2:2 + n], buf[2 + n:]
                    resp = self.answer(msg, "tcp")
                    if resp is not None:
                        conn.sendall(struct.pack("!H", len(resp)) + resp)
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass
