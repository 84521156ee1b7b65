//! The users and aliases file formats: every error message, and what a good file yields.

use std::fs;

use super::*;

fn errors_for_users(users: &str) -> Vec<String> {
    Fixture::new(users, Some("postmaster: alice\n")).errors()
}

fn error_for_users(users: &str) -> String {
    let errors = errors_for_users(users);
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

fn error_for_aliases(aliases: &str) -> String {
    let errors = Fixture::new(USERS, Some(aliases)).errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

// ---- users file ---------------------------------------------------------------------------

#[test]
fn users_file_parses_with_comments_blank_lines_crlf_and_lower_cases_names() {
    let f = Fixture::new(
        "  # indented comment\r\n\r\nAlice:{SHA512-CRYPT}$6$testsalt$i4yyMFQKJACF7.bISz9DrkIZ2EvZ8alMoYXKcH1dn2jtxaeT.XVaISuuqDJ.4cw8dVLd/Z1OcSRNnHEk.hl1F1\r\nbob:{plain}a:b #not a comment\n",
        Some("postmaster: alice\n"),
    );
    let (d, warnings) = f.load();
    let (name, cred) = d.credential("ALICE").unwrap();
    assert_eq!(name, "alice");
    assert_eq!(cred, &Credential::Sha512Crypt(ALICE_HASH.into()));
    // Everything after the first colon is the credential, spaces and `#` included.
    let (_, bob) = d.credential("bob").unwrap();
    assert_eq!(bob, &Credential::Plain(b"a:b #not a comment".to_vec()));
    assert!(d.credential("carol").is_none());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        warnings[0],
        format!(
            "{}:4: user bob has a {{PLAIN}} password; `postling passwd bob` prints a \
             {{SHA512-CRYPT}} line to use instead",
            f.users_path()
        )
    );
}

#[test]
fn users_line_without_colon() {
    let f = Fixture::new("alice\n", None);
    assert_eq!(
        f.errors(),
        vec![format!(
            "{}:1: no ':' after the user name (expected user:{{SHA512-CRYPT}}$6$… or \
             user:{{PLAIN}}secret)",
            f.users_path()
        )]
    );
}

#[test]
fn users_bad_names_are_errors() {
    let long = "x".repeat(256);
    for bad in [
        "../x",
        ".x",
        "a/b",
        "a\\b",
        "a b",
        " alice",
        "a@b",
        "",
        "a..b",
        "a\u{1}b",
        "a\u{7f}b",
        long.as_str(),
    ] {
        let e = error_for_users(&format!("{bad}:{{PLAIN}}x\n"));
        assert!(
            e.contains(":1: user name ") && e.contains(" is not allowed (expected 1 to 255 octets"),
            "{bad:?}: {e}"
        );
    }
    // 255 octets is still a name.
    let f = Fixture::new(&format!("{}:{{PLAIN}}x\n", "y".repeat(255)), None);
    assert!(Directory::load(f.settings.clone()).is_ok());
}

#[test]
fn users_duplicates_are_errors_whatever_the_case() {
    let e = error_for_users("alice:{PLAIN}a\n# x\nALICE:{PLAIN}b\n");
    assert!(
        e.ends_with(":3: user alice is already defined on line 1 (expected each user once)"),
        "{e}"
    );
}

#[test]
fn users_scheme_errors() {
    let cases = [
        (
            "alice:{MD5-CRYPT}$1$x$y",
            "user alice: unknown password scheme {MD5-CRYPT} (expected {SHA512-CRYPT} or {PLAIN})",
        ),
        (
            "alice:secret",
            "user alice: the password has no scheme (expected {SHA512-CRYPT}$6$… or {PLAIN}secret)",
        ),
        (
            "alice:$6$testsalt$x",
            "user alice: the hash has no scheme (expected {SHA512-CRYPT}$6$…)",
        ),
        (
            "alice:{PLAIN",
            "user alice: unterminated scheme (expected {SHA512-CRYPT}$6$… or {PLAIN}secret)",
        ),
        (
            "alice:{PLAIN}",
            "user alice: empty {PLAIN} password (expected {PLAIN}secret)",
        ),
    ];
    for (line, expected) in cases {
        let e = error_for_users(&format!("{line}\n"));
        assert!(e.ends_with(&format!(":1: {expected}")), "{line}: {e}");
    }
    let long = format!("alice:{{PLAIN}}{}\n", "p".repeat(limits::PASSWORD_MAX + 1));
    let e = error_for_users(&long);
    assert!(e.contains("{PLAIN} password longer than 255 octets"), "{e}");
}

#[test]
fn users_malformed_sha512_crypt_strings_name_the_line() {
    let hash = ALICE_HASH.rsplit('$').next().unwrap();
    let cases = [
        ("$5$testsalt$abc".to_string(), "not a SHA512-CRYPT hash"),
        (
            format!("$6$rounds=abc$salt${hash}"),
            "rounds=abc is not a number",
        ),
        (format!("$6$rounds=$salt${hash}"), "rounds= is not a number"),
        (
            format!("$6$rounds=1234567890$salt${hash}"),
            "rounds=1234567890 is not a number",
        ),
        (
            format!("$6$rounds=999$salt${hash}"),
            "rounds=999 is out of range (expected 1000 to 50000; the default is 5000)",
        ),
        (
            format!("$6$rounds=999999999$salt${hash}"),
            "rounds=999999999 is out of range (expected 1000 to 50000",
        ),
        (format!("$6$${hash}"), "bad salt \"\""),
        (
            format!("$6$12345678901234567${hash}"),
            "bad salt \"12345678901234567\"",
        ),
        (format!("$6$sa\u{7}lt${hash}"), "bad salt"),
        ("$6$testsalt".to_string(), "no hash after the salt"),
        (
            format!("$6$testsalt${hash}$more"),
            "extra `$` fields after the hash",
        ),
        (
            "$6$testsalt$short".to_string(),
            "the hash is not 86 crypt base-64 characters",
        ),
        (
            format!("$6$testsalt${}", hash.replace('.', "+")),
            "the hash is not 86 crypt base-64 characters",
        ),
        (
            format!("$6$testsalt${}A", &hash[..85]),
            "the hash is not 86 crypt base-64 characters",
        ),
    ];
    for (crypt, expected) in cases {
        let e = error_for_users(&format!("# c\nalice:{{SHA512-CRYPT}}{crypt}\n"));
        assert!(
            e.contains(":2: user alice: ") && e.contains(expected),
            "{crypt}: {e}"
        );
        assert!(e.contains("(expected"), "{e}");
    }
}

#[test]
fn users_rounds_within_the_cap_load() {
    let hash = ALICE_HASH.rsplit('$').next().unwrap();
    let f = Fixture::new(
        &format!("alice:{{SHA512-CRYPT}}$6$rounds=50000$testsalt${hash}\n"),
        Some("postmaster: alice\n"),
    );
    assert!(Directory::load(f.settings.clone()).is_ok());
}

#[test]
fn users_every_error_is_reported_and_not_utf8_is_one() {
    let mut data = b"a/b:{PLAIN}x\nok:{PLAIN}y\nc:{NOPE}z\n".to_vec();
    data.extend_from_slice(b"d\xff:{PLAIN}x\nok:{PLAIN}again\n");
    let f = Fixture::new("", None);
    fs::write(&f.settings.users_file, &data).unwrap();
    let errors = f.errors();
    let p = f.users_path();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors[0].starts_with(&format!("{p}:4: the line is not valid UTF-8")));
    assert!(errors[1].starts_with(&format!("{p}:1: user name \"a/b\"")));
    assert!(errors[2].starts_with(&format!("{p}:3: user c: unknown password scheme")));
    assert!(errors[3].starts_with(&format!("{p}:5: user ok is already defined on line 2")));
}

#[test]
fn missing_or_unreadable_users_file_is_an_error() {
    let f = Fixture::new("", Some("postmaster: alice\n"));
    fs::remove_file(&f.settings.users_file).unwrap();
    let errors = f.errors();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(&format!("{}: cannot read the users file: ", f.users_path())),
        "{}",
        errors[0]
    );
    fs::create_dir(&f.settings.users_file).unwrap();
    let errors = f.errors();
    assert!(errors[0].contains("not a regular file"), "{errors:?}");
}

#[test]
fn errors_of_both_files_are_reported_together() {
    let f = Fixture::new("bad\n", Some("also bad\n"));
    let errors = f.errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with(&format!("{}:1:", f.users_path())));
    assert!(errors[1].starts_with(&format!("{}:1:", f.aliases_path())));
}

// ---- aliases file -------------------------------------------------------------------------

#[test]
fn aliases_line_without_colon() {
    let e = error_for_aliases("# x\nteam alice\n");
    assert!(
        e.ends_with(":2: no ':' after the alias name (expected name: target, target, …)"),
        "{e}"
    );
}

#[test]
fn aliases_bad_names_are_errors() {
    for bad in ["../x", "a@b", "a b", "", ".x", "a/b"] {
        let e = error_for_aliases(&format!("{bad}: alice\n"));
        assert!(
            e.contains(":1: alias name ") && e.contains("or * for the catch-all)"),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn aliases_duplicates_are_errors() {
    let e = error_for_aliases("Team: alice\nteam: bob\n");
    assert!(
        e.ends_with(":2: alias team is already defined on line 1 (expected each name once)"),
        "{e}"
    );
    let e = error_for_aliases("*: alice\n\n*: bob\n");
    assert!(e.ends_with(":3: alias * is already defined on line 1 (expected each name once)"));
}

#[test]
fn aliases_target_errors() {
    let cases = [
        (
            "team: alice,,bob",
            "alias team: an empty target (expected name: target, target, …)",
        ),
        ("team:", "alias team: an empty target"),
        ("team: alice,", "alias team: an empty target"),
        (
            "team: |/bin/prog",
            "pipes, files and includes are not supported",
        ),
        (
            "team: /var/mail/x",
            "pipes, files and includes are not supported",
        ),
        (
            "team: :include:/etc/list",
            "pipes, files and includes are not supported",
        ),
        (
            "team: alice bob",
            "target \"alice bob\" contains whitespace",
        ),
        (
            "team: alice # comment",
            "contains whitespace (expected targets separated by commas; comments go on lines of their own)",
        ),
        (
            "team: @example.test",
            "target \"@example.test\" is not an address (expected local@domain)",
        ),
        ("team: alice@", "target \"alice@\" is not an address"),
        (
            "team: ../etc",
            "target \"../etc\" is not a valid name (expected",
        ),
    ];
    for (line, expected) in cases {
        let e = error_for_aliases(&format!("{line}\n"));
        assert!(
            e.contains(&format!(":1: {expected}")) || e.contains(expected),
            "{line}: {e}"
        );
        assert!(e.contains(":1: alias team: "), "{line}: {e}");
    }
}

#[test]
fn missing_aliases_file_is_no_aliases_with_a_warning() {
    let f = Fixture::new(USERS, None);
    let (d, warnings) = f.load();
    assert!(
        warnings.contains(&format!("{}: not found; no aliases", f.aliases_path())),
        "{warnings:?}"
    );
    assert_eq!(
        d.rcpt_verdict("team@example.test"),
        RcptVerdict::UnknownUser
    );
    assert_eq!(d.resolve("alice@example.test"), Ok(vec![local("alice")]));
}

#[test]
fn unknown_alias_targets_are_warned_about() {
    let f = Fixture::new(
        USERS,
        Some("postmaster: alice\nghost: nosuchuser\nfwd: x@elsewhere.org, nobody@example.test\n"),
    );
    let (_, warnings) = f.load();
    let p = f.aliases_path();
    assert!(warnings.contains(&format!(
        "{p}:2: alias ghost: target nosuchuser is neither a user nor an alias; mail to ghost will bounce"
    )));
    assert!(warnings.contains(&format!(
        "{p}:3: alias fwd: target nobody@example.test is neither a user nor an alias; mail to fwd will bounce"
    )));
    assert!(
        !warnings.iter().any(|w| w.contains("elsewhere.org")),
        "{warnings:?}"
    );
}
