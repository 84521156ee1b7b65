#!/usr/bin/env python3
"""Writes the committed seed corpus under fuzz/corpus/<target>/: real dialogs and edge cases.

Session seeds are `[flags][seed][client bytes]` (see fuzz/src/lib.rs and the flag lists in
fuzz/src/smtp.rs and fuzz/src/pop.rs); config seeds are whole files. File names are the
seed's purpose, so a crash found from a seed says which dialog it grew from. Run it again
after changing a dialog; it replaces the directory's seeds (the fuzzer's own findings live
in a scratch corpus, never here).
"""
import base64
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# ---- SMTP ------------------------------------------------------------------------------------
# flags: 1 begin Full, 2 begin Failed, 4 commit fails, 8 durable commit fails,
# 0x10 max_message_size 100, 0x20 end by timeout, 0x40 slow drain
BEGIN_FULL, BEGIN_FAILED, COMMIT_FAILS, DURABLE_FAILS, SMALL, TIMEOUT, SLOW = 1, 2, 4, 8, 0x10, 0x20, 0x40

ENVELOPE = b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n.\r\n"


def smtp_seeds():
    s = {}
    s["plain"] = (0, 0, ENVELOPE + MESSAGE + b"QUIT\r\n")
    s["plain_bytewise"] = (0, 1, ENVELOPE + MESSAGE + b"QUIT\r\n")
    s["plain_random_cuts"] = (0, 77, ENVELOPE + MESSAGE + b"QUIT\r\n")
    s["helo"] = (0, 0, b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n")
    s["pipelined"] = (0, 0, b"EHLO p\r\nMAIL FROM:<p@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
                      b"RCPT TO:<unknown@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                      b"Subject: p\r\n\r\nbody\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    s["two_messages"] = (0, 5, ENVELOPE + MESSAGE + b"MAIL FROM:<b@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + MESSAGE)
    s["smuggling"] = (0, 0, ENVELOPE + b"Subject: s\r\n\r\none\n.\nMAIL FROM:<evil@example.org>\r\n"
                      b"two\n.\r\nRCPT TO:<bob@example.test>\r\nthree\r.\rDATA\r\n..leading\r\n.\r\nQUIT\r\n")
    s["dot_stuffing"] = (0, 3, ENVELOPE + b"..\r\n...\r\n.x\r\n. \r\n.\r\r\n\r\n.\r\n")
    s["bare_lf_commands"] = (0, 0, b"EHLO lf\nMAIL FROM:<a@example.org>\nRCPT TO:<alice@example.test>\nDATA\nbody\n.\n.\r\n")
    s["long_command"] = (0, 0, b"EHLO x\r\nNOOP " + b"x" * 600 + b"\r\nNOOP\r\n")
    s["long_command_no_end"] = (0, 0, b"EHLO x\r\n" + b"A" * 3000)
    s["long_data_line"] = (0, 0, ENVELOPE + b"L" * 3000 + b"\r\n.\r\n")
    s["size_limit"] = (SMALL, 0, ENVELOPE + b"x" * 200 + b"\r\n.\r\nNOOP\r\n")
    s["size_limit_exact"] = (SMALL, 9, ENVELOPE + b"y" * 98 + b"\r\n.\r\n")
    s["size_param"] = (0, 0, b"EHLO s\r\nMAIL FROM:<a@example.org> SIZE=99999999999999999999999\r\n"
                       b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<alice@example.test>\r\nQUIT\r\n")
    s["smtputf8"] = (0, 0, "EHLO u\r\nMAIL FROM:<jörg@exämple.org> SMTPUTF8 BODY=8BITMIME\r\n"
                     "RCPT TO:<älice@example.test>\r\nDATA\r\nSubject: grüße\r\n\r\nÜ\r\n.\r\n".encode())
    s["utf8_without_smtputf8"] = (0, 0, "EHLO u\r\nMAIL FROM:<jörg@exämple.org>\r\n".encode())
    s["relay_hacks"] = (0, 0, b"EHLO r\r\nMAIL FROM:<a@example.org>\r\n"
                        b"RCPT TO:<user%other.example@example.test>\r\n"
                        b"RCPT TO:<other.example!user@example.test>\r\n"
                        b"RCPT TO:<\"user@other.example\"@example.test>\r\n"
                        b"RCPT TO:<@example.test:user@other.example>\r\n"
                        b"RCPT TO:<@a.example,@b.example:user@example.test>\r\n"
                        b"RCPT TO:<user@EXAMPLE.TEST.>\r\n"
                        b"RCPT TO:<user@[127.0.0.1]>\r\n"
                        b"RCPT TO:<user@[IPv6:::1]>\r\n"
                        b"RCPT TO:<user@other.example>\r\nQUIT\r\n")
    s["path_traversal"] = (0, 0, b"EHLO t\r\nMAIL FROM:<a@example.org>\r\n"
                           b"RCPT TO:<../etc@example.test>\r\nRCPT TO:<a/b@example.test>\r\n"
                           b"RCPT TO:<\"../x\"@example.test>\r\nRCPT TO:<\".\\.\"@example.test>\r\n"
                           b"RCPT TO:<..@example.test>\r\nRCPT TO:<.@example.test>\r\nQUIT\r\n")
    s["vrfy_expn_help"] = (0, 0, b"EHLO v\r\nVRFY alice\r\nVRFY nobody\r\nEXPN team\r\nHELP\r\nHELP DATA\r\nNOOP x\r\nQUIT\r\n")
    s["sequence_errors"] = (0, 0, b"MAIL FROM:<a@b>\r\nDATA\r\nEHLO\r\nHELO\r\nEHLO x\r\nRCPT TO:<alice@example.test>\r\n"
                            b"DATA\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA extra\r\nRSET x\r\nQUIT x\r\n")
    s["error_budget"] = (0, 0, b"BOGUS\r\n" * 11)
    s["rejected_rcpt_budget"] = (0, 0, b"EHLO h\r\nMAIL FROM:<a@example.org>\r\n" + b"RCPT TO:<unknown@example.test>\r\n" * 22)
    s["many_recipients"] = (0, 0, b"EHLO m\r\nMAIL FROM:<a@example.org>\r\n"
                            + b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(102)) + b"DATA\r\nx\r\n.\r\n")
    s["tempfail_rcpt"] = (0, 0, b"EHLO t\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<temp@example.test>\r\nDATA\r\n")
    s["http_probe"] = (0, 0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    s["http_post_later"] = (0, 0, b"EHLO x\r\nPOST /x HTTP/1.0\r\n")
    s["nul_bytes"] = (0, 0, b"EH\0LO x\r\nEHLO x\0y\r\nMAIL FROM:<a\0@example.org>\r\nMAIL FROM:<a@example.org>\r\n"
                      b"RCPT TO:<alice@example.test>\r\nDATA\r\nnul\0in\0data\r\n\0.\r\n.\r\n")
    s["begin_full"] = (BEGIN_FULL, 0, ENVELOPE + MESSAGE + b"NOOP\r\n")
    s["begin_failed"] = (BEGIN_FAILED, 0, ENVELOPE + MESSAGE + b"EHLO again\r\n")
    s["commit_fails"] = (COMMIT_FAILS, 0, ENVELOPE + MESSAGE + b"NOOP\r\n")
    s["durable_fails"] = (DURABLE_FAILS, 0, ENVELOPE + MESSAGE + b"RSET\r\n" + ENVELOPE[len(b"EHLO client.example.org\r\n"):] + MESSAGE)
    s["slow_client_pipeline"] = (SLOW, 0, b"EHLO a\r\n" * 40 + b"NOOP\r\n" * 200)
    s["timeout_mid_data"] = (TIMEOUT, 0, ENVELOPE + b"partial line")
    s["shutdown_mid_command"] = (0, 0, b"EHLO x\r\nMAIL FROM:<a@exa")
    s["leading_spaces"] = (0, 0, b"  EHLO spaced\r\nmail from: <a@example.org>\r\nrcpt to:alice@example.test\r\nquit\r\n")
    s["empty_lines"] = (0, 0, b"\r\n\r\n\n\r\nEHLO x\r\n\r\n")
    s["crlf_split"] = (0, 2, ENVELOPE + b"a\r\n\r\n.\r\n")
    return s


# ---- SMTP client -----------------------------------------------------------------------------
# Server bytes. flags: bits 0-1 STARTTLS policy (0 never, 1 opportunistic, 2 required), 4 AUTH
# credentials, 8 implicit TLS, 0x10 8-bit body, 0x20 UTF-8 recipient, 0x40 a second message,
# 0x80 end by timeout. The cut byte's top two bits add recipients (0x40: 2, 0xc0: 4).
C_OPP, C_REQ, C_AUTH, C_IMPLICIT, C_8BIT, C_UTF8, C_TWO, C_TIMEOUT = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80

C_GREET = b"220 mx.example.net ESMTP\r\n"
C_EHLO = b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n"
C_EHLO_AUTH = b"250-mx.example.net\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n"
C_TX1 = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n250 2.0.0 queued\r\n"


def smtp_client_seeds():
    s = {}
    s["plain"] = (0, 0, C_GREET + b"250-mx\r\n250 8BITMIME\r\n" + C_TX1 + b"221 bye\r\n")
    s["plain_bytewise"] = (0, 1, C_GREET + b"250 mx\r\n" + C_TX1 + b"221 bye\r\n")
    s["pipelined_mixed"] = (0, 0xc0 | 77, C_GREET + C_EHLO + b"250 ok\r\n250 ok\r\n450 4.2.1 busy\r\n"
                            b"550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n")
    s["helo_fallback"] = (0, 0, C_GREET + b"502 5.5.2 no\r\n250 mx\r\n" + C_TX1)
    s["starttls"] = (C_OPP, 0, C_GREET + C_EHLO + b"220 ready\r\n" + C_EHLO + C_TX1 + b"221 bye\r\n")
    s["starttls_injection"] = (C_REQ, 5, C_GREET + C_EHLO + b"220 ready\r\n250 injected\r\n" + C_EHLO + C_TX1)
    s["tls_required_missing"] = (C_REQ, 0, C_GREET + b"250 mx\r\n221 bye\r\n")
    s["auth_plain"] = (C_AUTH | C_IMPLICIT, 0, C_GREET + C_EHLO_AUTH + b"235 2.7.0 ok\r\n" + C_TX1 + b"221 bye\r\n")
    s["auth_login"] = (C_AUTH | C_IMPLICIT, 3, C_GREET + b"250-mx\r\n250 AUTH LOGIN\r\n334 VXNlcm5hbWU6\r\n"
                       b"334 UGFzc3dvcmQ6\r\n235 ok\r\n" + C_TX1)
    s["auth_535"] = (C_AUTH | C_IMPLICIT, 0, C_GREET + C_EHLO_AUTH + b"535 5.7.8 no\r\n221 bye\r\n")
    s["size_too_big"] = (0, 0, C_GREET + b"250-mx\r\n250 SIZE 10\r\n221 bye\r\n")
    s["eight_bit_refused"] = (C_8BIT, 0, C_GREET + b"250 mx\r\n221 bye\r\n")
    s["utf8"] = (C_UTF8 | C_8BIT, 0, C_GREET + C_EHLO + b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
    s["mail_4xx"] = (0, 0x40, C_GREET + C_EHLO + b"451 4.3.0 later\r\n503 no\r\n503 no\r\n503 no\r\n221 bye\r\n")
    s["greeting_554"] = (0, 0, b"554 5.7.1 go away\r\n221 bye\r\n")
    s["greeting_421"] = (0, 0, b"421 4.3.2 busy\r\n")
    s["multiline"] = (0, 9, b"220-a\r\n220-b\r\n220 c\r\n" + C_EHLO + b"250 ok\r\n550-5.1.1 a\r\n550 5.1.1 b\r\n221 bye\r\n")
    s["garbage"] = (0, 0, b"SSH-2.0-OpenSSH_9.6\r\n")
    s["bare_lf"] = (0, 0, b"220 mx\n250 mx\n")
    s["long_line"] = (0, 0, b"220 " + b"x" * 5000 + b"\r\n250 mx\r\n" + C_TX1)
    s["many_lines"] = (0, 0, C_GREET + b"250-mx\r\n" * 300 + b"250 PIPELINING\r\n" + C_TX1)
    s["two_messages"] = (C_TWO, 0, C_GREET + C_EHLO + C_TX1 + b"250 reset\r\n" + C_TX1 + b"221 bye\r\n")
    s["timeout_mid_rcpt"] = (C_TIMEOUT, 0, C_GREET + C_EHLO + b"250 ok\r\n")
    s["closed_after_data"] = (0, 0, C_GREET + b"250 mx\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    s["all_refused_354"] = (0, 0, C_GREET + C_EHLO + b"250 ok\r\n550 no\r\n354 go\r\n250 ok\r\n221 bye\r\n")
    s["shutting_down"] = (0, 0x40, C_GREET + C_EHLO + b"250 ok\r\n421 4.4.2 bye\r\n")
    return s


# ---- POP3 / POP2 -----------------------------------------------------------------------------
# flags: 1 open InUse, 2 open Temporary, 4 update fails, 8 reads fail from octet 1000,
# 0x10 7-octet reads, 0x20 throttled, 0x40 end by timeout, 0x80 slow drain
IN_USE, OPEN_TEMP, UPDATE_FAILS, READ_FAILS, SHORT_READS, THROTTLED, P_TIMEOUT, P_SLOW = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80

LOGIN = b"USER bob\r\nPASS bob-pw\r\n"


def pop3_seeds():
    s = {}
    s["full_session"] = (0, 0, b"CAPA\r\n" + LOGIN + b"STAT\r\nLIST\r\nUIDL\r\nLIST 2\r\nUIDL 1\r\nRETR 1\r\n"
                         b"RETR 2\r\nTOP 1 0\r\nTOP 2 1\r\nDELE 1\r\nRETR 1\r\nRSET\r\nDELE 2\r\nNOOP\r\nQUIT\r\n")
    s["full_session_bytewise"] = (0, 1, LOGIN + b"STAT\r\nRETR 2\r\nQUIT\r\n")
    s["big_retr"] = (0, 0, LOGIN + b"RETR 4\r\nTOP 4 3\r\nQUIT\r\n")
    s["big_retr_slow"] = (P_SLOW, 0, LOGIN + b"RETR 4\r\nNOOP\r\nQUIT\r\n")
    s["big_retr_short_reads"] = (SHORT_READS, 6, LOGIN + b"RETR 4\r\nQUIT\r\n")
    s["read_error_mid_stream"] = (READ_FAILS, 0, LOGIN + b"RETR 4\r\nSTAT\r\n")
    s["read_error_small"] = (READ_FAILS, 0, LOGIN + b"RETR 1\r\nRETR 3\r\nQUIT\r\n")
    s["empty_message"] = (0, 0, LOGIN + b"RETR 3\r\nTOP 3 0\r\nLIST 3\r\nQUIT\r\n")
    s["auth_plain"] = (0, 0, b"AUTH PLAIN " + base64.b64encode(b"\0bob\0bob-pw") + b"\r\nSTAT\r\nQUIT\r\n")
    s["auth_plain_continuation"] = (0, 0, b"AUTH PLAIN\r\n" + base64.b64encode(b"alice\0alice\0alice-pw") + b"\r\nLIST\r\n")
    s["auth_plain_cancel"] = (0, 0, b"AUTH PLAIN\r\n*\r\nAUTH PLAIN =\r\nAUTH LOGIN\r\nAUTH\r\n")
    s["auth_plain_bad_base64"] = (0, 0, b"AUTH PLAIN !!!!\r\nAUTH PLAIN " + base64.b64encode(b"\0bob") + b"\r\n")
    s["auth_plain_long"] = (0, 0, b"AUTH PLAIN\r\n" + b"A" * 1100 + b"\r\nUSER bob\r\n")
    s["wrong_passwords"] = (0, 0, b"USER bob\r\nPASS x\r\nUSER bob\r\nPASS y\r\nUSER nobody\r\nPASS z\r\n" + LOGIN)
    s["throttled"] = (THROTTLED, 0, LOGIN + b"STAT\r\n")
    s["in_use"] = (IN_USE, 0, LOGIN + LOGIN + b"QUIT\r\n")
    s["open_temporary"] = (OPEN_TEMP, 0, LOGIN + b"STAT\r\n")
    s["update_fails"] = (UPDATE_FAILS, 0, LOGIN + b"DELE 1\r\nDELE 2\r\nQUIT\r\n")
    s["bad_numbers"] = (0, 0, LOGIN + b"LIST 4294967297\r\nRETR 0\r\nRETR 99\r\nRETR -1\r\nRETR +1\r\nRETR 01\r\n"
                        b"TOP 1\r\nTOP 1 -1\r\nTOP 1 99999999999999999999\r\nDELE 1\r\nDELE 1\r\nLIST 1\r\nUIDL x\r\n")
    s["wrong_state"] = (0, 0, b"STAT\r\nRETR 1\r\nPASS x\r\nLIST\r\nQUIT\r\n")
    s["quit_in_authorization"] = (0, 0, b"USER bob\r\nQUIT\r\n")
    s["long_line"] = (0, 0, b"USER " + b"b" * 300 + b"\r\n" + LOGIN + b"NOOP " + b"n" * 3000 + b"\r\nSTAT\r\n")
    s["error_budget"] = (0, 0, b"BOGUS\r\n" * 12)
    s["pipelined"] = (0, 0, LOGIN + b"LIST\r\nUIDL\r\n" * 20 + b"RETR 4\r\nRETR 2\r\nQUIT\r\n")
    s["pipelined_slow"] = (P_SLOW, 33, LOGIN + b"LIST\r\nUIDL\r\nTOP 4 100\r\nQUIT\r\n")
    s["case_and_spaces"] = (0, 0, b"user bob\r\npass bob-pw\r\nstat \r\nlist  1\r\nRetr 1\r\nquit\r\n")
    s["nul_bytes"] = (0, 0, b"US\0ER bob\r\nUSER b\0b\r\nPASS bob-pw\0\r\n" + LOGIN + b"RETR\0 1\r\n")
    s["bare_lf"] = (0, 0, b"USER bob\nPASS bob-pw\nSTAT\nQUIT\n")
    s["timeout_mid_retr"] = (P_TIMEOUT | P_SLOW, 0, LOGIN + b"RETR 4\r\n")
    s["shutdown_mid_listing"] = (P_SLOW, 0, LOGIN + b"UIDL\r\n")
    s["no_line_end"] = (0, 0, LOGIN + b"STAT")
    return s


def pop2_seeds():
    s = {}
    hello = b"HELO bob bob-pw\r\n"
    s["full_session"] = (0, 0, hello + b"FOLD INBOX\r\nREAD\r\nRETR\r\nACKS\r\nRETR\r\nACKD\r\nRETR\r\nNACK\r\nRETR\r\nACKD\r\nQUIT\r\n")
    s["full_session_bytewise"] = (0, 1, hello + b"READ 1\r\nRETR\r\nACKD\r\nQUIT\r\n")
    s["big_retr"] = (0, 0, hello + b"READ 4\r\nRETR\r\nACKS\r\nQUIT\r\n")
    s["big_retr_slow"] = (P_SLOW, 0, hello + b"READ 4\r\nRETR\r\nACKD\r\nQUIT\r\n")
    s["big_retr_short_reads"] = (SHORT_READS, 5, hello + b"READ 4\r\nRETR\r\nQUIT\r\n")
    s["read_error"] = (READ_FAILS, 0, hello + b"READ 4\r\nRETR\r\nACKS\r\n")
    s["empty_message"] = (0, 0, hello + b"READ 3\r\nRETR\r\nACKD\r\nQUIT\r\n")
    s["wrong_password"] = (0, 0, b"HELO bob wrong\r\nHELO bob bob-pw\r\n")
    s["unknown_user"] = (0, 0, b"HELO nobody pw\r\nREAD\r\n")
    s["throttled"] = (THROTTLED, 0, hello + b"READ\r\n")
    s["in_use"] = (IN_USE, 0, hello + b"READ\r\n")
    s["open_temporary"] = (OPEN_TEMP, 0, hello + b"READ\r\n")
    s["update_fails"] = (UPDATE_FAILS, 0, hello + b"READ 1\r\nRETR\r\nACKD\r\nQUIT\r\n")
    s["other_folder"] = (0, 0, hello + b"FOLD Archive\r\nREAD\r\nRETR\r\nFOLD inbox\r\nREAD 2\r\n")
    s["bad_numbers"] = (0, 0, hello + b"READ 0\r\nREAD 99\r\nREAD 99999999999999999999\r\nREAD -1\r\nREAD x\r\nRETR\r\nACKS\r\n")
    s["wrong_state"] = (0, 0, b"READ\r\nRETR\r\nACKS\r\nFOLD INBOX\r\n" + hello + b"ACKS\r\nACKD\r\nNACK\r\nHELO bob bob-pw\r\n")
    s["bad_helo"] = (0, 0, b"HELO\r\nHELO bob\r\nHELO a b c\r\n")
    s["long_line"] = (0, 0, b"HELO " + b"b" * 300 + b" pw\r\n" + hello + b"READ " + b"9" * 3000 + b"\r\n")
    s["error_budget"] = (0, 0, b"BOGUS\r\n" * 12)
    s["pipelined"] = (0, 0, hello + b"READ 1\r\nRETR\r\nACKS\r\nRETR\r\nACKS\r\nRETR\r\nACKS\r\nRETR\r\nACKS\r\nQUIT\r\n")
    s["nul_bytes"] = (0, 0, b"HE\0LO bob bob-pw\r\nHELO bob bob-pw\0\r\n")
    s["bare_lf"] = (0, 0, b"HELO bob bob-pw\nREAD\nRETR\nACKD\nQUIT\n")
    s["timeout_mid_retr"] = (P_TIMEOUT | P_SLOW, 0, hello + b"READ 4\r\nRETR\r\n")
    s["lower_case"] = (0, 0, b"helo bob bob-pw\r\nfold inbox\r\nread\r\nretr\r\nacks\r\nquit\r\n")
    return s


# ---- config ----------------------------------------------------------------------------------

def config_seeds():
    s = {}
    for name in ("postling.conf", "postling.conf.example"):
        p = ROOT / "conf" / name
        if p.exists():
            s["shipped_" + name.replace(".", "_")] = p.read_bytes()
    s["empty"] = b""
    s["minimal"] = b"hostname = mail.example.test\n"
    s["every_key"] = b"""hostname = mail.example.test
domains = example.test, Example.ORG,, other.example
smtp_listen = 127.0.0.1:2525, [::1]:2525
pop3_listen = 0.0.0.0:110
pop2_listen = [::]:109
spool_dir = spool
mailbox_dir = /var/mail/postling
users_file = ../users
aliases_file = aliases
max_connections = 1000000
max_connections_per_ip = 1
max_message_size = 10M
smtp_timeout = 5m
pop3_timeout = 10m
log_file = postling.log
log_level = debug
pid_file = /run/postling.pid
recipient_delimiter = -
retry_min = 1s
retry_max = 3650d
queue_lifetime = 5d
auth_failure_delay = 2s
user = postling
"""
    s["outbound"] = b"""hostname = mail.example.test
relay_host = [smtp.example.net]:587
relay_tls = implicit
relay_tls_verify = no
tls_ca_file = ca.pem
relay_auth_file = /nonexistent/relay_auth
outbound_port = 2525
dns_servers = 127.0.0.1:5353 [::1]:53, 192.0.2.53
outbound_allow_private = yes
outbound_concurrency = 4
outbound_max_connections = 32
outbound_connect_timeout = 30s
outbound_greeting_timeout = 5m
outbound_command_timeout = 5m
outbound_mail_timeout = 5m
outbound_rcpt_timeout = 5m
outbound_data_init_timeout = 2m
outbound_data_block_timeout = 3m
outbound_data_end_timeout = 10m
"""
    s["outbound_errors"] = b"""relay_host = 2001:db8::1
relay_host = [::1
relay_tls = tls
relay_auth_file = x
outbound_concurrency = 50
outbound_max_connections = 10
outbound_data_end_timeout = 0
dns_servers = ns.example.net
"""
    s["empty_values"] = b"smtp_listen =\npop3_listen =\npop2_listen =\nlog_file =\npid_file =\nrecipient_delimiter =\nuser =\n"
    s["errors"] = b"""hostnme = x
hostname = bad..name
hostname = twice
smtp_listen = localhost:25
pop3_listen = 127.0.0.1:0, 127.0.0.1:65536, 1.2.3:4
max_connections = 0
max_connections_per_ip = 1000001
max_message_size = 99999999999999999999G
smtp_timeout = 0
pop3_timeout = 3651d
retry_min = 2h
retry_max = 1h
auth_failure_delay = 0s
log_level = loud
recipient_delimiter = ++
user = not a user
= value
just a line
"""
    s["comments_and_hash"] = b"# comment\n   # indented\nhostname = a#b.example # trailing\ndomains = x.example#y\n"
    s["crlf_and_bom"] = b"\xef\xbb\xbfhostname = mail.example.test\r\ndomains = example.test\r\n"
    s["nul_and_bad_utf8"] = b"hostname = a\0b\nhostname = \xff\xfe\ndomains = \xc3\x28\n"
    s["control_chars"] = b"hostname = a\x1bb\x07\ndomains = x\r.example\n\x0c\n"
    s["sizes"] = b"max_message_size = 1K\n" + b"max_message_size = 0\n" + b"max_message_size = 18446744073709551615\n" + b"max_message_size = 17179869184G\n"
    s["durations"] = b"smtp_timeout = 1\npop3_timeout = 9m\nretry_min = 1d\nretry_max = 1d\nqueue_lifetime = 3650d\nauth_failure_delay = 1s\n"
    s["duration_overflow"] = b"queue_lifetime = 99999999999999999999d\nretry_max = 18446744073709551615s\n"
    s["ipv6_listen"] = b"smtp_listen = [::1]:25, [fe80::1%lo]:25, [::ffff:127.0.0.1]:26, [::1]\n"
    s["long_value"] = b"hostname = " + b"a" * 70 + b"." + b"b" * 300 + b"\n"
    s["long_line"] = b"domains = " + b"x.example," * 400 + b"\n"
    s["no_equals_key_only"] = b"hostname\n=\n==\nhostname ==\n"
    s["unicode"] = "hostname = mäil.exämple.test\ndomains = é.example\nuser = jörg\n".encode()
    s["relative_paths"] = b"spool_dir = .\nmailbox_dir = ..\nusers_file = ./a/../b\naliases_file = ~/aliases\nlog_file = /\n"
    return s


# ---- DNS -------------------------------------------------------------------------------------
# `[flags][response]` answering a query for example.org (see fuzz/src/dns.rs): flags bits 0-1
# the type (0 MX, 1 A, 2 AAAA), 4 keep the message's id, 8 over TCP after a truncated answer.
DNS_A, DNS_AAAA, DNS_KEEP_ID, DNS_TCP = 1, 2, 4, 8
T_A, T_CNAME, T_MX, T_AAAA = 1, 5, 15, 28


def dns_name(text):
    out = b""
    for label in text.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def dns_ptr(offset):
    return struct.pack(">H", 0xC000 | offset)


def dns_rr(owner, rtype, rdata, rclass=1):
    return owner + struct.pack(">HHIH", rtype, rclass, 300, len(rdata)) + rdata


def dns_response(qtype, answers, rcode=0, tc=False, qname="example.org", ident=0x1234):
    flags = 0x8180 | rcode | (0x0200 if tc else 0)
    m = struct.pack(">HHHHHH", ident, flags, 1, len(answers), 0, 0)
    m += dns_name(qname) + struct.pack(">HH", qtype, 1)
    return m + b"".join(answers)


def dns_seeds():
    q = dns_ptr(12)
    mx = lambda pref, host: dns_rr(q, T_MX, struct.pack(">H", pref) + host)
    s = {}
    s["mx_compressed"] = bytes([0]) + dns_response(T_MX, [mx(10, b"\x03mx1" + q), mx(20, b"\x03mx2" + q)])
    s["mx_uncompressed"] = bytes([0]) + dns_response(T_MX, [dns_rr(dns_name("example.org"), T_MX, b"\0\5" + dns_name("mail.example.net"))])
    s["null_mx"] = bytes([0]) + dns_response(T_MX, [mx(0, b"\0")])
    s["no_mx"] = bytes([0]) + dns_response(T_MX, [])
    s["nxdomain"] = bytes([0]) + dns_response(T_MX, [], rcode=3)
    s["servfail"] = bytes([0]) + dns_response(T_MX, [], rcode=2)
    s["truncated"] = bytes([0]) + dns_response(T_MX, [], tc=True)
    s["wrong_id"] = bytes([DNS_KEEP_ID]) + dns_response(T_MX, [mx(1, q)], ident=0x4321)
    s["wrong_question"] = bytes([0]) + dns_response(T_MX, [mx(1, q)], qname="example.net")
    s["a"] = bytes([DNS_A]) + dns_response(T_A, [dns_rr(q, T_A, bytes([192, 0, 2, 1])), dns_rr(q, T_A, bytes([192, 0, 2, 2]))])
    s["aaaa"] = bytes([DNS_AAAA]) + dns_response(T_AAAA, [dns_rr(q, T_AAAA, bytes(15) + b"\1")])
    s["cname_chain"] = bytes([DNS_A]) + dns_response(T_A, [
        dns_rr(q, T_CNAME, b"\x01a" + q),
        dns_rr(dns_name("a.example.org"), T_CNAME, dns_name("b.example.org")),
        dns_rr(dns_name("b.example.org"), T_A, bytes([192, 0, 2, 3]))])
    s["cname_outside"] = bytes([0]) + dns_response(T_MX, [dns_rr(q, T_CNAME, dns_name("elsewhere.example"))])
    s["pointer_loop"] = bytes([0]) + dns_response(T_MX, [dns_rr(dns_ptr(60), T_MX, b"\0\1" + dns_ptr(12))])
    s["skipped_types"] = bytes([0]) + dns_response(T_MX, [dns_rr(q, 16, b"\x05hello"), dns_rr(q, T_MX, b"\0\1\0", rclass=3), mx(7, q)])
    s["tcp_mx"] = bytes([DNS_TCP]) + dns_response(T_MX, [mx(i, bytes([3]) + b"m%02d" % i + q) for i in range(40)])
    s["tcp_aaaa"] = bytes([DNS_TCP | DNS_AAAA]) + dns_response(T_AAAA, [dns_rr(q, T_AAAA, bytes(16))])
    return s


def write(target, seeds):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for name, seed in seeds.items():
        if isinstance(seed, tuple):
            flags, cut, script = seed
            data = bytes([flags, cut]) + script
        else:
            data = seed
        (d / name).write_bytes(data)
    print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    write("smtp_session", smtp_seeds())
    write("smtp_client_session", smtp_client_seeds())
    write("pop3_session", pop3_seeds())
    write("pop2_session", pop2_seeds())
    write("config_parse", config_seeds())
    write("dns_message", dns_seeds())
