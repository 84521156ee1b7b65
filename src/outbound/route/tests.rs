use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn mx(list: &[(u16, &str)]) -> Vec<(u16, Name)> {
    list.iter()
        .map(|(p, n)| (*p, Name::from_text(n).expect("test name")))
        .collect()
}

#[test]
fn destinations_group_by_domain_case_blind_or_all_to_the_relay() {
    assert_eq!(
        DestKey::of("a@Example.ORG", false),
        DestKey::Domain("example.org".into())
    );
    assert_eq!(DestKey::of("a@example.org", true), DestKey::Relay);
}

#[test]
fn endpoints_never_unspecified_multicast_broadcast_or_ourselves() {
    let own = [sa("127.0.0.1:2525"), sa("0.0.0.0:25")];
    assert_eq!(
        check_endpoint(sa("0.0.0.0:25"), &own, true),
        Err(Refusal::Unusable)
    );
    assert_eq!(
        check_endpoint(sa("224.0.0.1:25"), &own, true),
        Err(Refusal::Unusable)
    );
    assert_eq!(
        check_endpoint(sa("255.255.255.255:25"), &own, true),
        Err(Refusal::Unusable)
    );
    assert_eq!(
        check_endpoint(sa("[::]:25"), &own, true),
        Err(Refusal::Unusable)
    );
    assert_eq!(
        check_endpoint(sa("127.0.0.1:2525"), &own, true),
        Err(Refusal::Own)
    );
    // A wildcard listener on 25 covers loopback on 25.
    assert_eq!(
        check_endpoint(sa("127.0.0.2:25"), &own, true),
        Err(Refusal::Own)
    );
    assert_eq!(check_endpoint(sa("127.0.0.1:2526"), &own, true), Ok(()));
}

#[test]
fn private_destinations_only_when_allowed() {
    for a in [
        "127.0.0.1:25",
        "10.1.2.3:25",
        "172.16.0.1:25",
        "192.168.1.1:25",
        "169.254.1.1:25",
        "100.64.0.1:25",
        "[::1]:25",
        "[fd00::1]:25",
        "[fe80::1]:25",
        "[::ffff:10.0.0.1]:25",
    ] {
        assert_eq!(
            check_endpoint(sa(a), &[], false),
            Err(Refusal::Private),
            "{a}"
        );
        assert_eq!(check_endpoint(sa(a), &[], true), Ok(()), "{a}");
    }
    assert_eq!(check_endpoint(sa("192.0.2.1:25"), &[], false), Ok(()));
    assert_eq!(check_endpoint(sa("[2001:db8::1]:25"), &[], false), Ok(()));
}

#[test]
fn mx_lists_drop_this_server_and_everything_it_prefers_less() {
    let hosts = mx(&[(10, "a.example"), (20, "me.example"), (30, "c.example")]);
    assert_eq!(
        usable_mx("d", &hosts, "ME.example").expect("a remains"),
        vec!["a.example".to_string()]
    );
    let hosts = mx(&[(10, "me.example"), (20, "b.example")]);
    match usable_mx("d.example", &hosts, "me.example") {
        Err(Outcome::Permanent(r)) => assert!(r.starts_with("5.4.6 "), "{r}"),
        other => panic!("{other:?}"),
    }
    let many: Vec<(u16, &str)> = (0..9).map(|i| (i, "x.example")).collect();
    assert_eq!(
        usable_mx("d", &mx(&many), "me").expect("ok").len(),
        limits::OUTBOUND_MAX_MX
    );
}

#[test]
fn address_literals() {
    assert_eq!(
        address_literal("[192.0.2.1]"),
        Some("192.0.2.1".parse().expect("ip"))
    );
    assert_eq!(
        address_literal("[IPv6:2001:db8::1]"),
        Some("2001:db8::1".parse().expect("ip"))
    );
    assert_eq!(address_literal("example.org"), None);
    assert_eq!(address_literal("[not-an-ip]"), None);
}

#[test]
fn routes_keep_mx_order_and_explain_why_there_are_none() {
    let ok = AddrResult::Addrs(vec!["192.0.2.1".parse().expect("ip")]);
    let routes = build_routes(
        "d",
        &[("b".into(), AddrResult::NxDomain), ("a".into(), ok.clone())],
        25,
        &[],
        false,
    )
    .expect("one route");
    assert_eq!(routes[0].label(), "a[192.0.2.1]:25");

    let lo = AddrResult::Addrs(vec!["127.0.0.1".parse().expect("ip")]);
    match build_routes("d", &[("a".into(), lo.clone())], 25, &[], false) {
        Err(Outcome::Temporary(r)) => assert!(r.contains("outbound_allow_private"), "{r}"),
        other => panic!("{other:?}"),
    }
    match build_routes(
        "d",
        &[("a".into(), lo)],
        2525,
        &[sa("127.0.0.1:2525")],
        true,
    ) {
        Err(Outcome::Permanent(r)) => assert!(r.starts_with("5.4.6 "), "{r}"),
        other => panic!("{other:?}"),
    }
    match build_routes(
        "d",
        &[("a".into(), AddrResult::TempFail("SERVFAIL".into()))],
        25,
        &[],
        false,
    ) {
        Err(Outcome::Temporary(r)) => assert!(r.contains("SERVFAIL"), "{r}"),
        other => panic!("{other:?}"),
    }
    match build_routes(
        "d",
        &[("a".into(), AddrResult::NoAddresses)],
        25,
        &[],
        false,
    ) {
        Err(Outcome::Permanent(r)) => assert!(r.starts_with("5.4.4 "), "{r}"),
        other => panic!("{other:?}"),
    }
}
