use super::*;

fn mail(args: &str) -> Result<MailArgs<'_>, ArgError<'_>> {
    parse_mail(args, true)
}

fn sender(args: &str) -> &str {
    mail(args).unwrap().path.address
}

fn rcpt(args: &str) -> Result<&str, ArgError<'_>> {
    parse_rcpt(args).map(|r| r.path.address)
}

#[test]
fn plain_paths() {
    assert_eq!(sender("FROM:<a@example.org>"), "a@example.org");
    assert_eq!(sender("from:<a@example.org>"), "a@example.org");
    assert_eq!(
        sender("From:<A.B+c@Sub.Example.ORG>"),
        "A.B+c@Sub.Example.ORG"
    );
    assert_eq!(rcpt("TO:<alice@example.test>"), Ok("alice@example.test"));
    assert_eq!(rcpt("to:<alice@example.test>"), Ok("alice@example.test"));
}

#[test]
fn tolerated_space_after_colon_and_missing_brackets() {
    assert_eq!(sender("FROM: <a@b.org>"), "a@b.org");
    assert_eq!(sender("FROM:   <a@b.org>"), "a@b.org");
    assert_eq!(sender("FROM:a@b.org"), "a@b.org");
    assert_eq!(rcpt("TO:alice@x"), Ok("alice@x"));
    assert_eq!(rcpt("TO: alice@x"), Ok("alice@x"));
    let m = mail("FROM:a@b.org SIZE=10").unwrap();
    assert_eq!((m.path.address, m.size), ("a@b.org", Some(10)));
}

#[test]
fn strict_elsewhere() {
    assert_eq!(mail("FROM <a@b.org>"), Err(ArgError::Syntax));
    assert_eq!(mail(" FROM:<a@b.org>"), Err(ArgError::Syntax));
    assert_eq!(mail("FROM:"), Err(ArgError::Syntax));
    assert_eq!(mail("FROM:   "), Err(ArgError::Syntax));
    assert_eq!(mail(""), Err(ArgError::Syntax));
    assert_eq!(mail("TO:<a@b.org>"), Err(ArgError::Syntax));
    assert_eq!(mail("FROM:<a@b.org>x"), Err(ArgError::Syntax));
    assert_eq!(mail("FROM:<a@b.org>  SIZE=1"), Err(ArgError::Syntax));
    assert_eq!(mail("FROM:<a@b.org"), Err(ArgError::BadPath("missing '>'")));
    assert_eq!(
        mail("FROM:a@b.org>"),
        Err(ArgError::BadPath("unbalanced angle brackets"))
    );
    assert_eq!(rcpt("TO <a@b.org>"), Err(ArgError::Syntax));
}

#[test]
fn null_sender_only_in_mail() {
    let m = mail("FROM:<>").unwrap();
    assert_eq!(m.path.address, "");
    assert_eq!(sender("FROM:<> BODY=8BITMIME"), "");
    assert_eq!(rcpt("TO:<>"), Err(ArgError::BadPath("empty recipient")));
}

#[test]
fn postmaster_only_in_rcpt() {
    assert_eq!(rcpt("TO:<postmaster>"), Ok("postmaster"));
    assert_eq!(rcpt("TO:<PostMaster>"), Ok("postmaster"));
    assert_eq!(rcpt("TO:postmaster"), Ok("postmaster"));
    assert_eq!(
        rcpt("TO:<postmaster@example.test>"),
        Ok("postmaster@example.test")
    );
    assert!(matches!(
        mail("FROM:<postmaster>"),
        Err(ArgError::BadPath(_))
    ));
    assert!(matches!(rcpt("TO:<alice>"), Err(ArgError::BadPath(_))));
}

#[test]
fn quoted_local_parts() {
    assert_eq!(
        rcpt("TO:<\"john doe\"@example.org>"),
        Ok("\"john doe\"@example.org")
    );
    assert_eq!(rcpt("TO:<\"a@b\"@example.org>"), Ok("\"a@b\"@example.org"));
    assert_eq!(rcpt("TO:<\"a>b\"@example.org>"), Ok("\"a>b\"@example.org"));
    assert_eq!(
        rcpt("TO:<\"a\\\"b\"@example.org>"),
        Ok("\"a\\\"b\"@example.org")
    );
    assert_eq!(
        rcpt("TO:\"john doe\"@example.org"),
        Ok("\"john doe\"@example.org")
    );
    assert!(matches!(
        rcpt("TO:<\"abc@example.org>"),
        Err(ArgError::BadPath(_))
    ));
    assert!(matches!(
        rcpt("TO:<\"abc\"x@example.org>"),
        Err(ArgError::BadPath(_))
    ));
    assert!(matches!(
        rcpt("TO:<\"a\\\"@example.org>"),
        Err(ArgError::BadPath(_))
    ));
}

#[test]
fn source_routes_are_dropped() {
    assert_eq!(rcpt("TO:<@a.org,@b.org:user@d.org>"), Ok("user@d.org"));
    assert_eq!(rcpt("TO:<@a.org:user@d.org>"), Ok("user@d.org"));
    assert_eq!(sender("FROM:<@[192.0.2.1],@[IPv6:::1]:u@d.org>"), "u@d.org");
    for bad in [
        "TO:<@a.org user@d.org>",
        "TO:<@a.org,b.org:user@d.org>",
        "TO:<@:user@d.org>",
        "TO:<@-a.org:user@d.org>",
        "TO:<@a.org;user@d.org>",
    ] {
        assert_eq!(
            rcpt(bad),
            Err(ArgError::BadPath("bad source route")),
            "{bad}"
        );
    }
}

#[test]
fn address_literals() {
    assert_eq!(rcpt("TO:<u@[192.0.2.1]>"), Ok("u@[192.0.2.1]"));
    assert_eq!(
        rcpt("TO:<u@[IPv6:2001:db8::1]>"),
        Ok("u@[IPv6:2001:db8::1]")
    );
    assert_eq!(
        rcpt("TO:<u@[ipv6:::ffff:192.0.2.1]>"),
        Ok("u@[ipv6:::ffff:192.0.2.1]")
    );
    for bad in [
        "TO:<u@[192.0.2]>",
        "TO:<u@[192.0.2.256]>",
        "TO:<u@[2001:db8::1]>",
        "TO:<u@[IPv6:2001:db8:::1]>",
        "TO:<u@[x-tag:abc]>",
        "TO:<u@[192.0.2.1>",
    ] {
        assert_eq!(rcpt(bad), Err(ArgError::BadPath("bad domain")), "{bad}");
    }
}

#[test]
fn domain_syntax() {
    assert!(is_domain_or_literal("example.org"));
    assert!(is_domain_or_literal("a-b.c0"));
    assert!(is_domain_or_literal("localhost"));
    assert!(is_domain_or_literal("exämple.org"));
    assert!(is_domain_or_literal("[127.0.0.1]"));
    for bad in [
        "",
        ".",
        "a..b",
        "a.",
        ".a",
        "-a.b",
        "a-.b",
        "a_b.c",
        "a b",
        "a\r\nX: y",
        "(x)",
    ] {
        assert!(!is_domain_or_literal(bad), "{bad:?}");
    }
    assert!(is_domain_or_literal(&"a".repeat(63)));
    assert!(!is_domain_or_literal(&"a".repeat(64)));
    let long = ["a"; 128].join(".");
    assert_eq!(long.len(), 255);
    assert!(is_domain_or_literal(&long));
    assert!(!is_domain_or_literal(&format!("{long}a")));
}

#[test]
fn local_part_syntax() {
    assert!(rcpt("TO:<a.b.c@x.org>").is_ok());
    assert!(rcpt("TO:<!#$%&'*+-=?^_`{|}~@x.org>").is_ok());
    for bad in [
        "TO:<.a@x.org>",
        "TO:<a.@x.org>",
        "TO:<a b@x.org>",
        "TO:<a(b)@x.org>",
        "TO:<a,b@x.org>",
    ] {
        assert!(matches!(rcpt(bad), Err(ArgError::BadPath(_))), "{bad}");
    }
    assert!(matches!(rcpt("TO:<@x.org>"), Err(ArgError::BadPath(_))));
    assert!(matches!(rcpt("TO:<a@>"), Err(ArgError::BadPath(_))));
    assert!(matches!(rcpt("TO:<a@b@c.org>"), Err(ArgError::BadPath(_))));
}

#[test]
fn unsafe_local_parts_are_refused_before_syntax() {
    for bad in [
        "TO:<../etc@example.test>",
        "TO:<a..b@example.test>",
        "TO:<a/b@example.test>",
        "TO:<\"a/b\"@example.test>",
        "TO:<\"a..b\"@example.test>",
        "TO:<\"a.\\.b\"@example.test>",
        "TO:<a\tb@example.test>",
        "TO:<a\x01b@example.test>",
        "TO:<a\x7fb@example.test>",
        "TO:<a\0b@example.test>",
        "TO:<a\rb@example.test>",
    ] {
        assert_eq!(rcpt(bad), Err(ArgError::UnsafeLocalPart), "{bad:?}");
    }
    // A sender is never mapped to a path: only syntax applies.
    assert!(mail("FROM:<a/b@example.org>").is_ok());
    assert!(matches!(
        mail("FROM:<a..b@example.org>"),
        Err(ArgError::BadPath(_))
    ));
}

#[test]
fn path_length_limit() {
    // <local@domain> of exactly SMTP_MAX_PATH octets is accepted, one more is not.
    let domain = format!("{}.{}.org", "d".repeat(60), "e".repeat(60));
    let local_len = limits::SMTP_MAX_PATH - 2 - 1 - domain.len();
    let ok = format!("{}@{domain}", "l".repeat(local_len));
    assert_eq!(ok.len() + 2, limits::SMTP_MAX_PATH);
    assert_eq!(rcpt(&format!("TO:<{ok}>")), Ok(ok.as_str()));
    let long = format!("l{ok}");
    assert_eq!(rcpt(&format!("TO:<{long}>")), Err(ArgError::PathTooLong));
    assert_eq!(rcpt(&format!("TO:{long}")), Err(ArgError::PathTooLong));
    assert_eq!(mail(&format!("FROM:<{long}>")), Err(ArgError::PathTooLong));
}

#[test]
fn non_ascii_is_reported() {
    let m = mail("FROM:<jörg@exämple.org> SMTPUTF8").unwrap();
    assert!(m.path.non_ascii && m.smtputf8);
    assert!(!mail("FROM:<j@example.org>").unwrap().path.non_ascii);
    let r = parse_rcpt("TO:<ü@example.test>").unwrap();
    assert!(r.path.non_ascii);
    assert_eq!(r.path.address, "ü@example.test");
}

#[test]
fn size_parameter() {
    assert_eq!(mail("FROM:<a@b.org> SIZE=0").unwrap().size, Some(0));
    assert_eq!(mail("FROM:<a@b.org> size=12345").unwrap().size, Some(12345));
    assert_eq!(
        mail("FROM:<a@b.org> SIZE=18446744073709551615")
            .unwrap()
            .size,
        Some(u64::MAX)
    );
    // 20 digits that overflow u64 saturate: over any limit, never wrapped.
    assert_eq!(
        mail("FROM:<a@b.org> SIZE=99999999999999999999")
            .unwrap()
            .size,
        Some(u64::MAX)
    );
    let bad = Err(ArgError::BadParameter("SIZE must be a number of octets"));
    for v in [
        "SIZE",
        "SIZE=-1",
        "SIZE=+1",
        "SIZE=1k",
        "SIZE=100000000000000000000",
    ] {
        assert_eq!(mail(&format!("FROM:<a@b.org> {v}")), bad, "{v}");
    }
    assert_eq!(
        mail("FROM:<a@b.org> SIZE="),
        Err(ArgError::BadParameter("malformed parameter"))
    );
    assert_eq!(
        mail("FROM:<a@b.org> SIZE=1 SIZE=2"),
        Err(ArgError::BadParameter("SIZE given twice"))
    );
}

#[test]
fn body_and_smtputf8_parameters() {
    assert_eq!(
        mail("FROM:<a@b.org> BODY=8bitmime").unwrap().body,
        Some(BodyType::EightBitMime)
    );
    assert_eq!(
        mail("FROM:<a@b.org> BODY=7BIT").unwrap().body,
        Some(BodyType::SevenBit)
    );
    assert_eq!(mail("FROM:<a@b.org>").unwrap().body, None);
    assert_eq!(
        mail("FROM:<a@b.org> BODY=BINARYMIME"),
        Err(ArgError::BadParameter("BODY must be 7BIT or 8BITMIME"))
    );
    assert_eq!(
        mail("FROM:<a@b.org> BODY=7BIT body=8BITMIME"),
        Err(ArgError::BadParameter("BODY given twice"))
    );
    let m = mail("FROM:<a@b.org> smtputf8 BODY=8BITMIME SIZE=5").unwrap();
    assert_eq!(
        (m.smtputf8, m.body, m.size),
        (true, Some(BodyType::EightBitMime), Some(5))
    );
    assert_eq!(
        mail("FROM:<a@b.org> SMTPUTF8=yes"),
        Err(ArgError::BadParameter("SMTPUTF8 takes no value"))
    );
    assert_eq!(
        mail("FROM:<a@b.org> SMTPUTF8 SMTPUTF8"),
        Err(ArgError::BadParameter("SMTPUTF8 given twice"))
    );
}

#[test]
fn unknown_and_malformed_parameters() {
    assert_eq!(
        mail("FROM:<a@b.org> RET=HDRS"),
        Err(ArgError::UnknownParameter("RET"))
    );
    assert_eq!(
        mail("FROM:<a@b.org> X-FOO"),
        Err(ArgError::UnknownParameter("X-FOO"))
    );
    assert_eq!(
        parse_rcpt("TO:<a@b.org> NOTIFY=NEVER"),
        Err(ArgError::UnknownParameter("NOTIFY"))
    );
    let malformed = Err(ArgError::BadParameter("malformed parameter"));
    for p in ["=1", "-X=1", "X=a=b", "X_Y", "X=\x01"] {
        assert_eq!(mail(&format!("FROM:<a@b.org> {p}")), malformed, "{p}");
    }
    // Without EHLO no parameter is known.
    assert_eq!(
        parse_mail("FROM:<a@b.org> SIZE=1", false),
        Err(ArgError::UnknownParameter("SIZE"))
    );
    assert!(parse_mail("FROM:<a@b.org>", false).is_ok());
}
