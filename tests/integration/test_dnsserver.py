"""The test DNS server (dnsserver.py) itself, checked with a real client (`dig`, package
bind9-dnsutils, which scripts/test installs) and with raw UDP/TCP queries built by hand, so the
outbound tests can trust what it answers. Everything on 127.0.0.1."""
import re
import shutil
import socket
import struct
import subprocess

import pytest

from dnsserver import NEVER, NXDOMAIN, SERVFAIL, DNSServer

ZONE = {
    "remote.test": {"MX": [(10, "mx.remote.test"), (20, "mx2.remote.test")]},
    "mx.remote.test": {"A": "127.0.0.1"},
    "mx2.remote.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
    "nomx.test": {"A": "127.0.0.1"},
    "nullmx.test": {"MX": (0, ".")},
    "gone.test": NXDOMAIN,
    "broken.test": SERVFAIL,
    "silent.test": NEVER,
    "big.test": {"MX": [(i, f"mx{i}.big.test") for i in range(10)], "truncate": True},
    "alias.test": {"CNAME": "mx.remote.test"},
}


@pytest.fixture
def dns():
    with DNSServer(ZONE) as d:
        yield d


def dig(dns, *args):
    assert shutil.which("dig"), "dig is missing: install bind9-dnsutils (scripts/test does)"
    r = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(dns.port), "+time=2", "+tries=1", "+norecurse", *args],
        capture_output=True, text=True, timeout=30,
    )
    return r


def status(out):
    m = re.search(r"status: (\w+)", out)
    return m.group(1) if m else None


def answers(out):
    """The answer section of dig's default output as (name, type, data) tuples."""
    section = out.split(";; ANSWER SECTION:\n", 1)
    if len(section) < 2:
        return []
    rows = []
    for line in section[1].split("\n\n", 1)[0].splitlines():
        f = line.split()
        rows.append((f[0], f[3], " ".join(f[4:])))
    return rows


def test_dig_mx_a_aaaa_over_udp(dns):
    r = dig(dns, "remote.test", "MX")
    assert r.returncode == 0, r.stderr
    assert status(r.stdout) == "NOERROR"
    assert re.search(r"flags: qr aa;", r.stdout), r.stdout
    assert answers(r.stdout) == [
        ("remote.test.", "MX", "10 mx.remote.test."), ("remote.test.", "MX", "20 mx2.remote.test."),
    ]
    assert answers(dig(dns, "mx.remote.test", "A").stdout) == [("mx.remote.test.", "A", "127.0.0.1")]
    assert answers(dig(dns, "MX2.Remote.Test", "AAAA").stdout) == [("MX2.Remote.Test.", "AAAA", "::1")]
    assert [(q.name, q.qtype, q.transport) for q in dns.asked()] == [
        ("remote.test", "MX", "udp"), ("mx.remote.test", "A", "udp"), ("mx2.remote.test", "AAAA", "udp"),
    ]


def test_dig_over_tcp_is_recorded_as_tcp(dns):
    r = dig(dns, "+tcp", "nomx.test", "A")
    assert answers(r.stdout) == [("nomx.test.", "A", "127.0.0.1")], r.stdout
    assert [(q.name, q.transport) for q in dns.asked()] == [("nomx.test", "tcp")]


def test_dig_negative_answers(dns):
    r = dig(dns, "nomx.test", "MX")  # the name exists, no MX: NODATA
    assert status(r.stdout) == "NOERROR" and answers(r.stdout) == [], r.stdout
    assert "AUTHORITY SECTION" in r.stdout and "SOA" in r.stdout
    r = dig(dns, "remote.test", "A")  # NODATA too
    assert status(r.stdout) == "NOERROR" and answers(r.stdout) == []
    assert status(dig(dns, "gone.test", "MX").stdout) == "NXDOMAIN"
    assert status(dig(dns, "unknown.test", "A").stdout) == "NXDOMAIN"
    assert status(dig(dns, "test", "A").stdout) == "NOERROR"  # a parent of zone names
    assert status(dig(dns, "broken.test", "MX").stdout) == "SERVFAIL"


def test_dig_null_mx_and_cname(dns):
    assert answers(dig(dns, "nullmx.test", "MX").stdout) == [("nullmx.test.", "MX", "0 .")]
    assert answers(dig(dns, "alias.test", "A").stdout) == [("alias.test.", "CNAME", "mx.remote.test.")]


def test_dig_retries_a_truncated_answer_over_tcp(dns):
    r = dig(dns, "big.test", "MX")
    assert r.returncode == 0, r.stderr
    assert "Truncated, retrying in TCP mode" in r.stdout
    assert len(answers(r.stdout)) == 10, r.stdout
    assert [(q.name, q.transport) for q in dns.asked()] == [("big.test", "udp"), ("big.test", "tcp")]
    # Without the retry, UDP shows TC and no records.
    r = dig(dns, "+ignore", "big.test", "MX")
    assert re.search(r"flags: qr aa tc;", r.stdout), r.stdout
    assert answers(r.stdout) == []


def test_dig_gets_no_answer_from_a_never_name(dns):
    r = dig(dns, "silent.test", "MX")
    assert r.returncode == 9, (r.returncode, r.stdout)  # dig: no reply from the server
    assert "timed out" in r.stdout
    assert [(q.name, q.transport) for q in dns.asked()] == [("silent.test", "udp")]
    r = dig(dns, "+tcp", "silent.test", "MX")
    assert r.returncode == 9, (r.returncode, r.stdout)


def test_nothing_asked_is_recorded_as_nothing(dns):
    assert dns.asked() == []
    assert dns.address == f"127.0.0.1:{dns.port}"


def test_zone_can_change_while_running(dns):
    dns.set_zone({"remote.test": NXDOMAIN})
    assert status(dig(dns, "remote.test", "MX").stdout) == "NXDOMAIN"


# --- raw queries, parsed by hand here (not with the server's own code) ----------------------
def query(qid, name, qtype):
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return head + qname + struct.pack("!HH", qtype, 1)


def test_raw_udp_query_for_an_a_record(dns):
    q = query(0x1234, "mx.remote.test", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(q, ("127.0.0.1", dns.port))
        resp, _ = s.recvfrom(4096)
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", resp[:12])
    assert qid == 0x1234
    assert flags & 0x8000 and flags & 0x0400 and flags & 0x0100  # QR, AA, RD echoed
    assert flags & 0x000F == 0 and not flags & 0x0200
    assert (qd, an, ns, ar) == (1, 1, 0, 0)
    assert resp[12:len(q)] == q[12:]  # the question echoed
    # The answer: owner name, type A, class IN, TTL, rdlength 4, 127.0.0.1.
    rec = resp[len(q):]
    owner_end = rec.index(b"\0") + 1
    assert rec[:owner_end] == q[12:len(q) - 4]
    rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", rec[owner_end:owner_end + 10])
    assert (rtype, rclass, rdlen) == (1, 1, 4) and ttl > 0
    assert rec[owner_end + 10:] == bytes([127, 0, 0, 1])


def test_raw_tcp_query_for_a_null_mx_and_a_truncated_name(dns):
    with socket.create_connection(("127.0.0.1", dns.port), timeout=5) as s:
        for qid, name in ((7, "nullmx.test"), (8, "big.test")):
            q = query(qid, name, 15)
            s.sendall(struct.pack("!H", len(q)) + q)
            n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            resp = s.recv(n, socket.MSG_WAITALL)
            assert len(resp) == n
            rid, flags, _qd, an = struct.unpack("!HHHH", resp[:8])
            assert rid == qid and not flags & 0x0200 and flags & 0x000F == 0
            if name == "nullmx.test":
                assert an == 1
                # rdata of the null MX: preference 0, exchange the root (one zero byte).
                assert resp.endswith(struct.pack("!HHIH", 15, 1, 300, 3) + b"\0\0\0")
            else:
                assert an == 10
    assert [(q.name, q.qtype, q.transport) for q in dns.asked()] == [
        ("nullmx.test", "MX", "tcp"), ("big.test", "MX", "tcp"),
    ]


def test_raw_udp_rcodes_and_truncation(dns):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for qid, name, rcode, tc in ((1, "gone.test", 3, 0), (2, "broken.test", 2, 0), (3, "big.test", 0, 0x0200)):
            s.sendto(query(qid, name, 15), ("127.0.0.1", dns.port))
            resp, _ = s.recvfrom(4096)
            rid, flags, _qd, an = struct.unpack("!HHHH", resp[:8])
            assert (rid, flags & 0x000F, flags & 0x0200, an) == (qid, rcode, tc, 0), name
        s.sendto(b"\x00\x01garbage", ("127.0.0.1", dns.port))  # too short: dropped
        s.sendto(query(4, "silent.test", 15), ("127.0.0.1", dns.port))
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recvfrom(4096)
