//! The RFC 5321 §4.5.3.2 timeout of every step: which deadline is armed after each server
//! flight, and what `on_timeout` makes of the open recipients.

use super::tests::*;
use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// Distinct values, so each deadline says which step armed it.
fn timeouts() -> Timeouts {
    Timeouts {
        greeting: 11 * SECOND,
        command: 12 * SECOND,
        mail: 13 * SECOND,
        rcpt: 14 * SECOND,
        data_init: 15 * SECOND,
        data_block: 16 * SECOND,
        data_end: 17 * SECOND,
    }
}

fn with(tls: TlsPolicy, credentials: Option<Credentials>) -> Rc<ClientSettings> {
    Rc::new(ClientSettings {
        helo_name: NAME.to_owned(),
        tls,
        credentials,
        timeouts: timeouts(),
    })
}

#[test]
fn defaults_are_the_rfc_figures() {
    let m = 60 * SECOND;
    let t = Timeouts::default();
    assert_eq!(
        (
            t.greeting,
            t.mail,
            t.rcpt,
            t.data_init,
            t.data_block,
            t.data_end
        ),
        (5 * m, 5 * m, 5 * m, 2 * m, 3 * m, 10 * m)
    );
}

#[test]
fn timeout_at_each_step() {
    let ehlo = "250-mx\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n";
    let creds = Some(Credentials {
        user: "u".into(),
        password: "p".into(),
    });
    let ok = "250 ok\r\n";
    let cases: &[(&str, bool, Vec<&str>, u64, &str)] = &[
        ("greeting", false, vec![], 11, "the greeting"),
        ("ehlo", false, vec![GREETING], 12, "the reply to EHLO"),
        (
            "helo",
            false,
            vec![GREETING, "502 no\r\n"],
            12,
            "the reply to HELO",
        ),
        (
            "starttls",
            false,
            vec![GREETING, ehlo],
            12,
            "the reply to STARTTLS",
        ),
        (
            "handshake",
            false,
            vec![GREETING, ehlo, "220 go\r\n"],
            12,
            "the TLS handshake",
        ),
        ("auth", true, vec![GREETING, ehlo], 12, "the reply to AUTH"),
        (
            "mail",
            true,
            vec![GREETING, ehlo, "235 ok\r\n"],
            13,
            "the reply to MAIL FROM",
        ),
        (
            "rcpt",
            true,
            vec![GREETING, ehlo, "235 ok\r\n", ok],
            14,
            "the reply to RCPT TO",
        ),
        (
            "data",
            true,
            vec![GREETING, ehlo, "235 ok\r\n", ok, ok, ok],
            15,
            "the reply to DATA",
        ),
        (
            "data block",
            true,
            vec![GREETING, ehlo, "235 ok\r\n", ok, ok, ok, "354 go\r\n"],
            16,
            "the server to take the message data",
        ),
    ];
    for ((name, tls_up, flights, secs, what), cut) in cases
        .iter()
        .flat_map(|c| [(c, Cut::Whole), (c, Cut::Bytes)])
    {
        let settings = with(
            TlsPolicy::Opportunistic,
            if *tls_up { creds.clone() } else { None },
        );
        let mut d = Driver::new(
            settings,
            msg(&["b@example.net", "c@example.net"]),
            BODY,
            *tls_up,
        );
        d.hold = true;
        let flights: Vec<&[u8]> = flights.iter().map(|f| f.as_bytes()).collect();
        d.play(&flights, cut);
        let deadline = d.client.deadline().expect("armed");
        assert_eq!(deadline - t0(), Duration::from_secs(*secs), "{name}");
        // Early calls change nothing.
        d.client.on_timeout(deadline - SECOND);
        assert!(!d.client.is_closed(), "{name}");
        d.timeout();
        assert!(d.closed, "{name}");
        assert!(d.client.deadline().is_none());
        let why = format!("temporary: timeout waiting for {what}");
        assert_eq!(d.summary(), [[why.clone(), why]], "{name}");
    }
}

/// After the data: the final reply, RSET before a second message, QUIT at the end.
#[test]
fn timeout_after_the_data() {
    let settings = with(TlsPolicy::Never, None);
    let server = [GREETING, "250 mx\r\n", "250 ok\r\n250 ok\r\n354 go\r\n"];
    let flights: Vec<&[u8]> = server.iter().map(|f| f.as_bytes()).collect();
    let mut d = Driver::new(settings.clone(), msg(&["b@example.net"]), BODY, false);
    d.play(&flights, Cut::Whole);
    assert_eq!(d.client.deadline().map(|t| t - t0()), Some(17 * SECOND));
    d.timeout();
    assert_eq!(
        d.summary(),
        [["temporary: timeout waiting for the reply to the end of data"]]
    );

    let mut d = Driver::new(settings.clone(), msg(&["b@example.net"]), BODY, false)
        .then(msg(&["c@example.net"]), BODY);
    let mut all = flights.clone();
    all.push(b"250 ok\r\n");
    d.play(&all, Cut::Whole);
    assert_eq!(d.client.deadline().map(|t| t - t0()), Some(12 * SECOND));
    d.timeout();
    assert_eq!(
        d.summary(),
        [
            ["delivered: end of data: 250 ok"],
            ["temporary: timeout waiting for the reply to RSET"]
        ]
    );

    // A silent QUIT changes no verdict.
    let mut d = Driver::new(settings, msg(&["b@example.net"]), BODY, false);
    d.play(&all, Cut::Whole);
    assert!(d.text().ends_with("QUIT\r\n"));
    assert_eq!(d.client.deadline().map(|t| t - t0()), Some(12 * SECOND));
    d.timeout();
    assert!(d.closed);
    assert_eq!(d.summary(), [["delivered: end of data: 250 ok"]]);
}

/// Each reply re-arms the deadline for the next one: a pipelined batch is not timed as one.
#[test]
fn pipelined_replies_each_get_their_own_timeout() {
    let settings = with(TlsPolicy::Never, None);
    let mut d = Driver::new(settings, msg(&["b@example.net"]), BODY, false);
    d.play(
        &[GREETING.as_bytes(), b"250-mx\r\n250 PIPELINING\r\n"],
        Cut::Whole,
    );
    assert_eq!(d.client.deadline().map(|t| t - t0()), Some(13 * SECOND));
    d.now += 10 * SECOND;
    d.send(b"250 ok\r\n");
    assert_eq!(d.client.deadline().map(|t| t - t0()), Some(24 * SECOND));
    d.now += 10 * SECOND;
    d.send(b"250 ok\r\n");
    assert_eq!(d.client.deadline().map(|t| t - t0()), Some(35 * SECOND));
}
