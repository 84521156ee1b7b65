"""Outbound delivery (issue 13): mail for other domains forwarded to a smarthost (`relay_host`)
or by MX through postling's own stub resolver, against real peers on 127.0.0.1 only: a second
postling (plain, STARTTLS verified with a test CA, implicit TLS, AUTH), Postfix's smtp-sink
with injected replies, a server that stops answering, and the test DNS server of dnsserver.py.

Every postling here gets `dns_servers` pointing at a test DNS server, so none of them can ask
the machine's resolver anything. Retries are an hour away (`retry_min = 1h`): a test that
wants another attempt says `postling queue flush`. Outcomes are asserted where they are
observable: a file in a Maildir or in smtp-sink's dump, a DSN in the sender's Maildir, the
`to=<...> relay=... status=...` log line, the text of `postling -q`.
"""
import os
import re
import smtplib
import subprocess
import time

from conftest import BIN, free_port
from dnsserver import NXDOMAIN, SERVFAIL
from outbound_fixtures import (  # noqa: F401 (fixtures)
    dns_server, sink, smarthost, stall_server, outbound_ca, wait_until,
)
from test_smtp import maildir_messages, wait_maildir, wait_queue_empty

SENDER = "carol@example.test"  # local on the sending postling: its bounces land in a Maildir

# The zone the MX tests share; `outbound_port` sends every connection to the test's peer.
ZONE = {
    "remote.test": {"MX": [(10, "mx.remote.test")]},
    "mx.remote.test": {"A": "127.0.0.1"},
    "nomx.test": {"A": "127.0.0.1"},
    "nullmx.test": {"MX": (0, ".")},
    "gone.test": NXDOMAIN,
    "broken.test": SERVFAIL,
    "big.test": {"MX": [(10, "mx.big.test")], "truncate": True},
    "mx.big.test": {"A": "127.0.0.1"},
    "loop.test": {"MX": [(10, "mx.loop.test")]},
    "mx.loop.test": {"A": "127.0.0.1"},
    "smarthost.test": {"A": "127.0.0.1"},
}


# --- helpers ------------------------------------------------------------------------------
def sender_server(server_factory, dns, start=True, **settings):
    """The postling under test: local for example.test, lets loopback clients relay, resolves
    only through `dns` (a DNSServer or an address), retries only when flushed."""
    base = dict(relay_networks="127.0.0.0/8", dns_servers=getattr(dns, "address", dns), retry_min="1h", retry_max="1h")
    base.update(settings)
    s = server_factory(**base)
    return s.start() if start else s


def auth_file(s, line):
    p = s.dir / "relay-auth"
    p.write_text(line + "\n")
    os.chmod(p, 0o600)
    return str(p)


def send(s, rcpts, subject, sender=SENDER):
    """One message; returns its queue id."""
    with smtplib.SMTP("127.0.0.1", s.smtp_port, local_hostname="client.test", timeout=10) as c:
        c.ehlo("client.test")
        assert c.mail(sender)[0] == 250
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, (r, code, text)
        code, text = c.data(f"From: {sender}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode())
    assert code == 250, text
    m = re.search(rb"queued as (\w+)", text)
    assert m, text
    return m.group(1).decode()


def to_line(s, qid, rcpt, status, timeout=20):
    """Waits for the log line `QID: to=<rcpt> ... relay=R ... status=STATUS (REASON)` and
    returns (relay, reason)."""
    pat = re.compile(
        rf"{qid}: to=<{re.escape(rcpt)}>(?: orig_to=<[^>]*>)? relay=(\S+) .*?status={status} \((.*)\)$", re.M
    )

    def found():
        return pat.search(s.log())
    try:
        m = wait_until(found, f"{qid} to=<{rcpt}> status={status}", timeout)
    except AssertionError:
        raise AssertionError(f"no '{qid}: to=<{rcpt}> ... status={status}' line in:\n{s.log()}")
    if status == "deferred":
        # The `to=` lines come before the attempt is recorded in the queue entry; `deferred
        # for` comes after, so `postling -q` shows the reasons from then on.
        wait_until(lambda: f"{qid}: deferred for " in s.log(), f"{qid} deferral recorded", timeout)
    return m.group(1), m.group(2)


def listing(s):
    r = subprocess.run([str(BIN), "-c", str(s.conf), "-q"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def flush(s):
    r = subprocess.run([str(BIN), "-c", str(s.conf), "queue", "flush"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.stdout, r.stderr)


def dsn_fields(dsn: bytes):
    """{recipient: (Status, Diagnostic-Code)} of a delivery status notification."""
    text = dsn.decode(errors="replace")
    out = {}
    for block in re.split(r"\r?\n\r?\n", text):
        m = re.search(r"^Final-Recipient: rfc822; ?(\S+)", block, re.M | re.I)
        if m:
            status = re.search(r"^Status: (\S+)", block, re.M | re.I)
            diag = re.search(r"^Diagnostic-Code: (.*(?:\r?\n[ \t].*)*)", block, re.M | re.I)
            out[m.group(1)] = (status.group(1) if status else None, diag.group(1) if diag else "")
    return out


def only_dsn(s, user=SENDER.split("@")[0]):
    """The one DSN in the sender's Maildir once the queue is empty."""
    wait_maildir(s, user, 1, timeout=30)
    wait_queue_empty(s, timeout=30)
    files = maildir_messages(s, user)
    assert len(files) == 1, [f.read_bytes()[:300] for f in files]
    dsn = files[0].read_bytes()
    assert b"report-type=delivery-status" in dsn and b"Return-Path: <>" in dsn, dsn
    return dsn


def assert_no_dsn(s, user=SENDER.split("@")[0]):
    assert maildir_messages(s, user) == [], "a deferral must not bounce"


def smarthost_b(server_factory, ca, dns_server):
    """The second postling, with a DNS server of its own (empty: it has nothing to look up),
    so the sender's DNS server records the sender's queries only."""
    return smarthost(server_factory, ca, dns_servers=dns_server({}).address)


def mx_server(server_factory, dns, port, **settings):
    """Delivery by MX with every connection going to 127.0.0.1:port."""
    return sender_server(server_factory, dns, outbound_port=str(port), outbound_allow_private="yes", **settings)


# --- relay_host: a second postling as smarthost -------------------------------------------
def test_relay_host_plain_to_a_second_postling(server_factory, outbound_ca, dns_server):
    dns = dns_server(ZONE)
    b = smarthost_b(server_factory, outbound_ca, dns_server)
    a = sender_server(server_factory, dns, relay_host=f"127.0.0.1:{b.smtp_port}", relay_tls="none")
    qid = send(a, ["bob@remote.test"], "plain relay")
    got = wait_maildir(b, "bob", 1, timeout=20)[0].read_bytes()
    assert b"Subject: plain relay" in got
    assert b" with ESMTP id" in got and b"ESMTPS" not in got, got  # no TLS asked for, none used
    relay, reply = to_line(a, qid, "bob@remote.test", "sent")
    assert re.fullmatch(rf"\S*\[127\.0\.0\.1\]:{b.smtp_port}", relay), relay
    assert reply.startswith("250"), reply
    wait_queue_empty(a)
    assert_no_dsn(a)
    assert [q for q in dns.asked() if q.qtype in ("A", "AAAA", "MX")] == [], "an IP literal needs no lookup"


def test_relay_host_starttls_verified_with_the_test_ca(server_factory, outbound_ca, dns_server):
    dns = dns_server(ZONE)
    b = smarthost_b(server_factory, outbound_ca, dns_server)
    # relay_tls is not set: STARTTLS, verified, is the default.
    a = sender_server(server_factory, dns, relay_host=f"127.0.0.1:{b.smtp_port}", tls_ca_file=str(outbound_ca.ca))
    qid = send(a, ["bob@remote.test"], "starttls relay")
    got = wait_maildir(b, "bob", 1, timeout=20)[0].read_bytes()
    assert b"Subject: starttls relay" in got
    assert b"with ESMTPS (version=TLS" in got, got
    to_line(a, qid, "bob@remote.test", "sent")
    wait_queue_empty(a)


def test_relay_host_by_name_through_the_resolver_verifies_that_name(server_factory, outbound_ca, dns_server):
    dns = dns_server(ZONE)
    b = smarthost_b(server_factory, outbound_ca, dns_server)
    a = sender_server(server_factory, dns, relay_host=f"smarthost.test:{b.smtp_port}",
                      relay_tls="starttls", tls_ca_file=str(outbound_ca.ca))
    qid = send(a, ["bob@remote.test"], "named relay")
    assert b"with ESMTPS" in wait_maildir(b, "bob", 1, timeout=20)[0].read_bytes()
    relay, _ = to_line(a, qid, "bob@remote.test", "sent")
    assert relay == f"smarthost.test[127.0.0.1]:{b.smtp_port}", relay
    assert dns.asked(name="smarthost.test"), dns.asked()
    assert not dns.asked(name="remote.test", qtype="MX"), "relay_host replaces MX routing"


def test_relay_host_implicit_tls_with_auth_to_smtps(server_factory, outbound_ca, dns_server):
    # B's smtps_listen is a submission port (RFC 8314): it takes mail after AUTH only, from
    # the user's own address.
    dns = dns_server(ZONE)
    b = smarthost_b(server_factory, outbound_ca, dns_server)
    a = sender_server(server_factory, dns, start=False, relay_host=f"127.0.0.1:{b.smtps_port}",
                      relay_tls="implicit", tls_ca_file=str(outbound_ca.ca))
    a.settings["relay_auth_file"] = auth_file(a, "bob bob-pw")
    a.write_config()
    a.start()
    qid = send(a, ["alice@remote.test"], "implicit relay", sender="bob@remote.test")
    got = wait_maildir(b, "alice", 1, timeout=20)[0].read_bytes()
    assert b"Subject: implicit relay" in got and b"with ESMTPSA (version=TLS" in got, got
    relay, _ = to_line(a, qid, "alice@remote.test", "sent")
    assert relay.endswith(f"[127.0.0.1]:{b.smtps_port}"), relay
    b.wait_log("auth=bob")


def test_relay_host_auth_over_starttls_to_submission(server_factory, outbound_ca, dns_server):
    dns = dns_server(ZONE)
    b = smarthost_b(server_factory, outbound_ca, dns_server)
    a = sender_server(server_factory, dns, start=False, relay_host=f"127.0.0.1:{b.sub_port}",
                      relay_tls="starttls", tls_ca_file=str(outbound_ca.ca))
    a.settings["relay_auth_file"] = auth_file(a, "bob bob-pw")
    a.write_config()
    a.start()
    qid = send(a, ["alice@remote.test"], "submitted relay", sender="bob@remote.test")
    got = wait_maildir(b, "alice", 1, timeout=20)[0].read_bytes()
    assert b"Subject: submitted relay" in got and b"with ESMTPSA" in got, got
    to_line(a, qid, "alice@remote.test", "sent")
    b.wait_log("auth=bob")
    wait_queue_empty(a)


def test_relay_auth_file_readable_by_others_is_refused(server_factory, dns_server):
    dns = dns_server(ZONE)
    a = sender_server(server_factory, dns, start=False, relay_host="127.0.0.1:1", relay_tls="starttls")
    path = auth_file(a, "bob bob-pw")
    a.settings["relay_auth_file"] = path
    a.write_config()
    a.start()  # mode 0600: fine
    a.stop()
    os.chmod(path, 0o644)
    a.start(wait=False)
    try:
        code = a.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"started with a group/other-readable relay_auth_file:\n{a.log()}")
    assert code != 0
    err = a.log()[a.log_mark:]
    assert "relay-auth" in err or "relay_auth_file" in err, err


def test_relay_host_with_a_wrong_ca_is_deferred_not_bounced(server_factory, outbound_ca, dns_server):
    dns = dns_server(ZONE)
    b = smarthost_b(server_factory, outbound_ca, dns_server)
    a = sender_server(server_factory, dns, relay_host=f"127.0.0.1:{b.smtp_port}",
                      relay_tls="starttls", tls_ca_file=str(outbound_ca.other_ca))
    qid = send(a, ["bob@remote.test"], "wrong ca")
    _, reason = to_line(a, qid, "bob@remote.test", "deferred")
    assert re.search(r"certificate|verif|issuer|tls", reason, re.I), reason
    q = listing(a)
    assert qid in q and "bob@remote.test" in q, q
    assert re.search(r"certificate|verif|issuer", q, re.I), q
    # Tried again: still deferred, never bounced (a TLS failure at the smarthost is ours).
    flush(a)
    wait_until(lambda: len(re.findall(rf"{qid}: to=<bob@remote.test> .*status=deferred", a.log())) >= 2,
               "a second deferral", 20)
    assert "status=bounced" not in a.log()
    assert_no_dsn(a)
    assert maildir_messages(b, "bob") == []


def test_relay_host_with_a_wrong_password_is_deferred_not_bounced(server_factory, outbound_ca, dns_server):
    dns = dns_server(ZONE)
    b = smarthost_b(server_factory, outbound_ca, dns_server)
    a = sender_server(server_factory, dns, start=False, relay_host=f"127.0.0.1:{b.sub_port}",
                      relay_tls="starttls", tls_ca_file=str(outbound_ca.ca))
    a.settings["relay_auth_file"] = auth_file(a, "bob not-bobs-password")
    a.write_config()
    a.start()
    qid = send(a, ["alice@remote.test"], "wrong password", sender="bob@remote.test")
    _, reason = to_line(a, qid, "alice@remote.test", "deferred", timeout=30)
    assert re.search(r"535|auth", reason, re.I), reason
    q = listing(a)
    assert "alice@remote.test" in q and re.search(r"535|auth", q, re.I), q
    assert "status=bounced" not in a.log()
    assert maildir_messages(b, "alice") == []


# --- relay_host: smtp-sink with injected replies -------------------------------------------
def test_relay_to_smtp_sink_is_accepted_and_logged(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink()
    a = sender_server(server_factory, dns, relay_host=sk.address, relay_tls="none")
    qid = send(a, ["bob@remote.test", "alice@remote.test"], "to the sink")
    [dump] = sk.wait_messages(1)
    # One transaction carries every recipient of the message for that destination.
    assert b"X-Mail-Args: <carol@example.test>" in dump
    assert b"X-Rcpt-Args: <bob@remote.test>\n" in dump and b"X-Rcpt-Args: <alice@remote.test>\n" in dump
    assert b"Subject: to the sink\n" in dump and b"body of to the sink\n" in dump
    for rcpt in ("bob@remote.test", "alice@remote.test"):
        relay, reply = to_line(a, qid, rcpt, "sent")
        assert re.fullmatch(rf"\S*\[127\.0\.0\.1\]:{sk.port}", relay), relay
        assert reply.startswith("250 "), reply
    wait_queue_empty(a)
    assert len(sk.messages()) == 1
    # Once the mail is out the server is idle again: the outbound connection said QUIT and
    # nothing (resolver, connection deadlines) is left to wake it.
    a.wait_log("at rest: memory handed back", timeout=20)
    t0, w0 = a.cpu_ticks(), int(a.status("voluntary_ctxt_switches"))
    time.sleep(2)
    t1, w1 = a.cpu_ticks(), int(a.status("voluntary_ctxt_switches"))
    assert (t1 - t0, w1 - w0) == (0, 0), "wake-ups after relaying"


def test_greylisting_4xx_at_rcpt_defers_then_flush_delivers_exactly_once(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink("-r", "rcpt")
    a = sender_server(server_factory, dns, relay_host=sk.address, relay_tls="none")
    qid = send(a, ["bob@remote.test"], "greylisted")
    _, reason = to_line(a, qid, "bob@remote.test", "deferred")
    assert "450" in reason and "4.3.0" in reason, reason
    q = listing(a)
    assert "bob@remote.test" in q and "450 4.3.0" in q, q
    assert sk.messages() == []
    sk.restart()
    flush(a)
    to_line(a, qid, "bob@remote.test", "sent")
    wait_queue_empty(a)
    dumps = sk.messages()
    assert len(dumps) == 1 and dumps[0].count(b"Subject: greylisted") == 1, dumps
    assert_no_dsn(a)


def test_5xx_at_data_bounces_with_one_dsn(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink("-f", "data")
    a = sender_server(server_factory, dns, relay_host=sk.address, relay_tls="none")
    qid = send(a, ["bob@remote.test"], "refused at data")
    _, reason = to_line(a, qid, "bob@remote.test", "bounced")
    assert "500" in reason and "5.3.0" in reason, reason
    dsn = only_dsn(a)
    fields = dsn_fields(dsn)
    assert set(fields) == {"bob@remote.test"}, dsn
    status, diag = fields["bob@remote.test"]
    assert status == "5.3.0", dsn
    # The remote server's own words: its reply in the diagnostic, its code in the report.
    assert "Error: command failed" in diag, dsn
    assert re.search(rb"500[ -]5\.3\.0", dsn), dsn
    assert b"Subject: refused at data" in dsn  # the original headers are attached
    assert sk.messages() == []


def test_a_server_that_never_greets_is_deferred_on_timeout_and_local_mail_flows(server_factory, dns_server, stall_server):
    dns = dns_server(ZONE)
    st = stall_server(greet=False)
    a = sender_server(server_factory, dns, relay_host=st.address, relay_tls="none",
                      outbound_greeting_timeout="6s")
    qid = send(a, ["bob@remote.test"], "stalled")
    assert st.connected.wait(10), a.log()
    # While that connection waits for a greeting, local mail is delivered.
    local = send(a, ["bob@example.test"], "local meanwhile")
    assert b"Subject: local meanwhile" in wait_maildir(a, "bob", 1)[0].read_bytes()
    to_line(a, local, "bob@example.test", "sent")
    assert not st.closed.is_set(), "local delivery waited for the stalled remote"
    assert f"{qid}: to=<bob@remote.test>" not in a.log()
    _, reason = to_line(a, qid, "bob@remote.test", "deferred", timeout=30)
    assert re.search(r"time(d)? ?out", reason, re.I), reason
    assert st.closed.wait(10)
    q = listing(a)
    assert "bob@remote.test" in q and re.search(r"time(d)? ?out", q, re.I), q
    assert_no_dsn(a)


def test_kill_9_mid_transaction_loses_nothing(server_factory, dns_server, stall_server, sink):
    dns = dns_server(ZONE)
    st = stall_server(answer_until=".")
    a = sender_server(server_factory, dns, relay_host=st.address, relay_tls="none")
    send(a, ["bob@remote.test"], "survives")
    assert st.got_data.wait(20), a.log()
    assert b"Subject: survives" in st.data
    a.kill9()  # the message went out, its 250 never came
    port = st.port
    st.stop()
    sk = sink(port=port)
    a.start()
    flush(a)
    dumps = sk.wait_messages(1, timeout=20)
    wait_queue_empty(a, timeout=20)
    dumps = sk.messages()
    assert len(dumps) == 1 and dumps[0].count(b"Subject: survives") == 1, dumps
    assert_no_dsn(a)


# --- delivery by MX through the test DNS server ---------------------------------------------
def test_mx_routes_to_the_exchange(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink()
    a = mx_server(server_factory, dns, sk.port)
    qid = send(a, ["bob@remote.test"], "by mx")
    [dump] = sk.wait_messages(1)
    assert b"X-Rcpt-Args: <bob@remote.test>" in dump and b"Subject: by mx" in dump
    relay, reply = to_line(a, qid, "bob@remote.test", "sent")
    assert relay == f"mx.remote.test[127.0.0.1]:{sk.port}", relay
    assert reply.startswith("250"), reply
    assert dns.asked(name="remote.test", qtype="MX")
    assert dns.asked(name="mx.remote.test", qtype="A")
    wait_queue_empty(a)


def test_no_mx_falls_back_to_the_a_record(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink()
    a = mx_server(server_factory, dns, sk.port)
    qid = send(a, ["bob@nomx.test"], "implicit mx")
    assert b"X-Rcpt-Args: <bob@nomx.test>" in sk.wait_messages(1)[0]
    relay, _ = to_line(a, qid, "bob@nomx.test", "sent")
    assert relay == f"nomx.test[127.0.0.1]:{sk.port}", relay
    assert dns.asked(name="nomx.test", qtype="MX") and dns.asked(name="nomx.test", qtype="A")


def test_null_mx_bounces_saying_the_domain_takes_no_mail(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink()
    a = mx_server(server_factory, dns, sk.port)
    qid = send(a, ["bob@nullmx.test"], "null mx")
    to_line(a, qid, "bob@nullmx.test", "bounced")
    dsn = only_dsn(a)
    status, diag = dsn_fields(dsn)["bob@nullmx.test"]
    assert re.fullmatch(r"5\.1\.10|5\.1\.2|5\.7\.27", status), dsn  # RFC 7505 §4.2
    assert re.search(r"null mx|accepts no mail|does not accept mail|no mail", diag, re.I), dsn
    assert sk.messages() == []


def test_nxdomain_bounces(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink()
    a = mx_server(server_factory, dns, sk.port)
    qid = send(a, ["bob@gone.test"], "no such domain")
    to_line(a, qid, "bob@gone.test", "bounced")
    status, diag = dsn_fields(only_dsn(a))["bob@gone.test"]
    assert status.startswith("5."), status
    assert re.search(r"nxdomain|not exist|no such|not found", diag, re.I), diag
    assert sk.messages() == []


def test_servfail_defers_with_the_reason_in_the_queue_listing(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink()
    a = mx_server(server_factory, dns, sk.port)
    qid = send(a, ["bob@broken.test"], "servfail")
    _, reason = to_line(a, qid, "bob@broken.test", "deferred", timeout=30)
    assert re.search(r"servfail|server fail", reason, re.I), reason
    q = listing(a)
    assert "bob@broken.test" in q and re.search(r"servfail|server fail", q, re.I), q
    assert_no_dsn(a)
    assert sk.messages() == []


def test_truncated_udp_answer_is_retried_over_tcp(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink()
    a = mx_server(server_factory, dns, sk.port)
    qid = send(a, ["bob@big.test"], "truncated")
    assert b"X-Rcpt-Args: <bob@big.test>" in sk.wait_messages(1)[0]
    relay, _ = to_line(a, qid, "bob@big.test", "sent")
    assert relay == f"mx.big.test[127.0.0.1]:{sk.port}", relay
    assert dns.asked(name="big.test", qtype="MX", transport="udp")
    assert dns.asked(name="big.test", qtype="MX", transport="tcp"), dns.asked()


def test_mx_pointing_at_postling_itself_bounces_as_a_loop(server_factory, dns_server):
    dns = dns_server(ZONE)
    a = sender_server(server_factory, dns, start=False, outbound_allow_private="yes")
    a.settings["outbound_port"] = str(a.smtp_port)  # mx.loop.test = 127.0.0.1 = this server
    a.write_config()
    a.start()
    qid = send(a, ["bob@loop.test"], "loops")
    to_line(a, qid, "bob@loop.test", "bounced")
    dsn = only_dsn(a)
    status, diag = dsn_fields(dsn)["bob@loop.test"]
    assert status.startswith("5."), dsn
    assert re.search(r"loop", diag, re.I), dsn
    # Never delivered to itself: the only message it accepted from carol is the one we sent.
    assert len(re.findall(r": from=<carol@example\.test> ", a.log())) == 1, a.log()


def test_mx_on_loopback_without_outbound_allow_private_is_not_connected(server_factory, dns_server, stall_server):
    dns = dns_server(ZONE)
    st = stall_server(answer_until=".")  # counts connections; would even take the message
    a = sender_server(server_factory, dns, outbound_port=str(st.port))
    qid = send(a, ["bob@remote.test"], "private")
    pat = re.compile(rf"{qid}: to=<bob@remote\.test> .*status=(deferred|bounced) \((.*)\)$", re.M)
    m = wait_until(lambda: pat.search(a.log()), "a deferral or bounce", 30)
    assert re.search(r"private|loopback|not allowed", m.group(2), re.I), m.group(0)
    assert st.connections == 0 and st.lines == []


def test_mixed_outcomes_give_one_dsn_for_both_failures(server_factory, outbound_ca, dns_server):
    dns = dns_server(ZONE)
    b = smarthost_b(server_factory, outbound_ca, dns_server)
    a = mx_server(server_factory, dns, b.smtp_port)  # remote.test's MX is B
    qid = send(a, ["bob@example.test", "ghost@remote.test", "x@gone.test"], "mixed")
    assert b"Subject: mixed" in wait_maildir(a, "bob", 1)[0].read_bytes()
    to_line(a, qid, "bob@example.test", "sent")
    _, reason = to_line(a, qid, "ghost@remote.test", "bounced")
    assert re.search(r"said: 550 5\.1\.1 .*\(in reply to RCPT TO\)", reason), reason
    to_line(a, qid, "x@gone.test", "bounced")
    dsn = only_dsn(a)
    fields = dsn_fields(dsn)
    assert set(fields) == {"ghost@remote.test", "x@gone.test"}, dsn
    assert fields["ghost@remote.test"][0] == "5.1.1", dsn
    assert re.search(rb"550[ -]5\.1\.1", dsn), dsn  # B's reply, quoted
    assert fields["x@gone.test"][0].startswith("5."), dsn
    assert len(maildir_messages(a, "bob")) == 1
    for u in ("alice", "bob", "carol"):
        assert maildir_messages(b, u) == []


def test_no_resolver_starts_and_defers_with_the_reason(server_factory, dns_server):
    nowhere = free_port(host="127.0.0.1")  # nothing listens there, UDP or TCP
    a = sender_server(server_factory, f"127.0.0.1:{nowhere}")
    qid = send(a, ["bob@remote.test"], "no resolver")
    _, reason = to_line(a, qid, "bob@remote.test", "deferred", timeout=60)
    assert re.search(r"dns|resolv|name ?server|lookup", reason, re.I), reason
    q = listing(a)
    assert "bob@remote.test" in q and re.search(r"dns|resolv|name ?server|lookup", q, re.I), q
    assert_no_dsn(a)


def test_log_lines_for_a_sent_and_a_bounced_remote_recipient(server_factory, dns_server, sink):
    dns = dns_server(ZONE)
    sk = sink()
    a = mx_server(server_factory, dns, sk.port)
    qid = send(a, ["bob@remote.test", "bob@gone.test"], "two fates")
    sent = re.compile(
        rf"{qid}: to=<bob@remote\.test> relay=mx\.remote\.test\[127\.0\.0\.1\]:{sk.port} "
        rf"delay=\d+(\.\d+)? (\S+ )*status=sent \(250 .*\)$", re.M)
    bounced = re.compile(rf"{qid}: to=<bob@gone\.test> relay=\S+ delay=\d+(\.\d+)? (\S+ )*status=bounced \(.+\)$", re.M)
    wait_until(lambda: sent.search(a.log()) and bounced.search(a.log()), "the sent and bounced lines", 30)
    lines = [l for l in a.log().splitlines() if f"{qid}: to=<" in l]
    assert len(lines) == 2, lines  # one line per recipient
    a.wait_log(f"{qid}: removed\n")


class BrokenTlsMx:
    """An MX that offers STARTTLS and then answers the handshake with garbage, and takes the
    mail in plain text on a connection that does not ask for TLS."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.starttls = 0
        self.messages = []
        self.done = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rb")
                conn.sendall(b"220 mx.remote.test ESMTP\r\n")
                data = None
                for line in f:
                    cmd = line.strip().upper()
                    if data is not None:
                        if line in (b".\r\n", b".\n"):
                            self.messages.append(b"".join(data))
                            data = None
                            conn.sendall(b"250 2.0.0 taken\r\n")
                            self.done.set()
                        else:
                            data.append(line)
                    elif cmd.startswith(b"EHLO"):
                        conn.sendall(b"250-mx.remote.test\r\n250 STARTTLS\r\n")
                    elif cmd == b"STARTTLS":
                        self.starttls += 1
                        conn.sendall(b"220 go ahead\r\n")
                        f.read(1)  # the ClientHello's first byte
                        conn.sendall(b"this is not TLS\r\n")
                        break
                    elif cmd == b"DATA":
                        data = []
                        conn.sendall(b"354 go\r\n")
                    elif cmd == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        break
                    else:
                        conn.sendall(b"250 ok\r\n")

    def stop(self):
        self.sock.close()


def test_an_mx_whose_starttls_fails_gets_the_mail_in_plain_text(server_factory, dns_server):
    """Opportunistic TLS (RFC 7435): a failed handshake is not a reason to keep the mail."""
    mx = BrokenTlsMx()
    try:
        dns = dns_server(ZONE)
        a = mx_server(server_factory, dns, mx.port)
        qid = send(a, ["bob@remote.test"], "tls broken")
        relay, reply = to_line(a, qid, "bob@remote.test", "sent")
        assert reply.startswith("250 2.0.0 taken"), reply
        assert mx.starttls == 1 and len(mx.messages) == 1
        assert b"Subject: tls broken" in mx.messages[0]
        assert "STARTTLS with mx.remote.test[127.0.0.1]" in a.log() and "trying again without TLS" in a.log()
    finally:
        mx.stop()
