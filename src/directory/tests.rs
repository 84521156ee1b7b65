use std::fs;
use std::time::{Duration, SystemTime};

use super::*;

mod files;

const ALICE_HASH: &str = "$6$testsalt$i4yyMFQKJACF7.bISz9DrkIZ2EvZ8alMoYXKcH1dn2jtxaeT.XVaISuuqDJ.4cw8dVLd/Z1OcSRNnHEk.hl1F1";

struct Fixture {
    tmp: tempfile::TempDir,
    settings: DirectorySettings,
}

impl Fixture {
    fn new(users: &str, aliases: Option<&str>) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let settings = DirectorySettings {
            users_file: tmp.path().join("users"),
            aliases_file: tmp.path().join("aliases"),
            domains: vec!["example.test".into(), "Other.Test".into()],
            recipient_delimiter: Some('+'),
        };
        fs::write(&settings.users_file, users).unwrap();
        if let Some(a) = aliases {
            fs::write(&settings.aliases_file, a).unwrap();
        }
        Fixture { tmp, settings }
    }

    fn users_path(&self) -> String {
        self.settings.users_file.display().to_string()
    }

    fn aliases_path(&self) -> String {
        self.settings.aliases_file.display().to_string()
    }

    fn load(&self) -> (Directory, Vec<String>) {
        Directory::load(self.settings.clone()).unwrap()
    }

    fn errors(&self) -> Vec<String> {
        match Directory::load(self.settings.clone()) {
            Ok(_) => panic!("expected errors"),
            Err(errors) => errors.into_iter().map(|e| e.to_string()).collect(),
        }
    }
}

const USERS: &str = "\
# demo users
alice:{SHA512-CRYPT}$6$testsalt$i4yyMFQKJACF7.bISz9DrkIZ2EvZ8alMoYXKcH1dn2jtxaeT.XVaISuuqDJ.4cw8dVLd/Z1OcSRNnHEk.hl1F1

Bob:{PLAIN}bob-pw
carol:{PLAIN}carol-pw
";

fn dir_with(aliases: &str) -> (Directory, Fixture) {
    let f = Fixture::new(USERS, Some(aliases));
    let (d, _) = f.load();
    (d, f)
}

fn local(user: &str) -> Resolved {
    Resolved::Local { user: user.into() }
}

fn remote(address: &str) -> Resolved {
    Resolved::Remote {
        address: address.into(),
    }
}

// ---- matching -----------------------------------------------------------------------------

#[test]
fn domain_and_local_part_are_case_insensitive() {
    let (d, _f) = dir_with("postmaster: alice\nTeam: alice, BOB\n");
    assert_eq!(d.rcpt_verdict("ALICE@EXAMPLE.TEST"), RcptVerdict::Accept);
    assert_eq!(d.resolve("Bob@Example.Test"), Ok(vec![local("bob")]));
    assert_eq!(
        d.resolve("TEAM@example.test"),
        Ok(vec![local("alice"), local("bob")])
    );
    // Domains in the settings are matched lower-case too.
    assert_eq!(d.resolve("carol@other.test"), Ok(vec![local("carol")]));
    assert_eq!(d.settings().domains, vec!["example.test", "other.test"]);
}

/// Only ASCII letters fold: Unicode folding maps U+212A KELVIN SIGN to `k` (and U+0130 to `i̇`,
/// U+017F LONG S to `s` under full folding), so `\u{212A}ate` would reach `kate`, a name that a
/// person reads as different.
#[test]
fn only_ascii_case_folds_in_names_aliases_and_domains() {
    let f = Fixture::new(
        "kate:{PLAIN}kate-pw\nalice:{PLAIN}a\n",
        Some("postmaster: alice\nteam: KATE\n"),
    );
    let (d, _) = f.load();
    assert_eq!(d.resolve("KATE@example.test"), Ok(vec![local("kate")]));
    assert_eq!(d.resolve("Kate@EXAMPLE.test"), Ok(vec![local("kate")]));
    assert_eq!(d.resolve("TEAM@example.test"), Ok(vec![local("kate")]));
    assert_eq!(
        d.resolve("\u{212A}ate@example.test"),
        Err(ResolveError::UnknownUser)
    );
    assert_ne!(
        d.rcpt_verdict("\u{212A}ate@example.test"),
        RcptVerdict::Accept
    );
    assert!(d.credential("\u{212A}ATE").is_none());
    assert_eq!(d.credential("KATE").map(|(n, _)| n), Some("kate"));
    // A domain with a KELVIN SIGN is another domain, not example.test.
    assert_eq!(
        d.resolve("kate@example.tes\u{212A}"),
        Err(ResolveError::NotLocal)
    );
}

#[test]
fn a_quoted_local_part_is_the_same_mailbox_as_its_content() {
    let (d, _f) = dir_with("postmaster: alice\nteam: alice, bob\n");
    assert_eq!(
        d.rcpt_verdict("\"alice\"@example.test"),
        RcptVerdict::Accept
    );
    assert_eq!(
        d.resolve("\"Alice\"@example.test"),
        Ok(vec![local("alice")])
    );
    assert_eq!(
        d.resolve("\"te\\am\"@example.test"),
        Ok(vec![local("alice"), local("bob")])
    );
    // An @ inside the quotes is part of the local part, never a second address.
    assert_eq!(
        d.rcpt_verdict("\"alice@elsewhere.example\"@example.test"),
        RcptVerdict::UnknownUser
    );
}

#[test]
fn non_local_domains() {
    let (d, _f) = dir_with("postmaster: alice\n*: carol\n");
    for rcpt in [
        "alice@elsewhere.org",
        "alice@sub.example.test",
        "alice@example.test.evil",
        "../etc@elsewhere.org",
    ] {
        assert_eq!(d.rcpt_verdict(rcpt), RcptVerdict::RelayDenied, "{rcpt}");
        assert_eq!(d.resolve(rcpt), Err(ResolveError::NotLocal), "{rcpt}");
    }
}

#[test]
fn address_without_domain_is_local() {
    let (d, _f) = dir_with("postmaster: carol\n");
    assert_eq!(d.rcpt_verdict("postmaster"), RcptVerdict::Accept);
    assert_eq!(d.rcpt_verdict("PostMaster"), RcptVerdict::Accept);
    assert_eq!(d.resolve("postmaster"), Ok(vec![local("carol")]));
    assert_eq!(d.resolve("nobody"), Err(ResolveError::UnknownUser));
}

#[test]
fn subaddresses() {
    let (d, _f) = dir_with("postmaster: alice\nteam: alice, bob\nbob+lists: carol\n");
    assert_eq!(d.rcpt_verdict("bob+tag@example.test"), RcptVerdict::Accept);
    assert_eq!(d.resolve("bob+tag@example.test"), Ok(vec![local("bob")]));
    // The first delimiter splits.
    assert_eq!(
        d.resolve("alice+a+b@example.test"),
        Ok(vec![local("alice")])
    );
    // An alias named like a subaddress wins over the user.
    assert_eq!(
        d.resolve("Bob+Lists@example.test"),
        Ok(vec![local("carol")])
    );
    // A subaddress of an alias.
    assert_eq!(
        d.resolve("team+x@example.test"),
        Ok(vec![local("alice"), local("bob")])
    );
    assert_eq!(
        d.rcpt_verdict("nobody+x@example.test"),
        RcptVerdict::UnknownUser
    );
    assert_eq!(d.resolve("+x@example.test"), Err(ResolveError::UnknownUser));
}

#[test]
fn subaddressing_off_or_with_another_delimiter() {
    let mut f = Fixture::new(USERS, Some("postmaster: alice\n"));
    f.settings.recipient_delimiter = None;
    let (d, _) = f.load();
    assert_eq!(
        d.rcpt_verdict("bob+tag@example.test"),
        RcptVerdict::UnknownUser
    );
    assert_eq!(
        d.resolve("bob+tag@example.test"),
        Err(ResolveError::UnknownUser)
    );
    f.settings.recipient_delimiter = Some('-');
    let (d, _) = f.load();
    assert_eq!(d.resolve("bob-tag@example.test"), Ok(vec![local("bob")]));
    assert_eq!(
        d.rcpt_verdict("bob+tag@example.test"),
        RcptVerdict::UnknownUser
    );
}

#[test]
fn a_user_name_containing_the_delimiter_is_matched_whole() {
    let f = Fixture::new(
        "bob:{PLAIN}x\nbob+work:{PLAIN}y\n",
        Some("postmaster: bob\n"),
    );
    let (d, _) = f.load();
    assert_eq!(
        d.resolve("bob+work@example.test"),
        Ok(vec![local("bob+work")])
    );
    assert_eq!(d.resolve("bob+home@example.test"), Ok(vec![local("bob")]));
}

#[test]
fn catch_all() {
    let (d, _f) = dir_with("postmaster: alice\n*: carol, fwd@elsewhere.org\nghost: nosuchuser\n");
    assert_eq!(d.rcpt_verdict("whoever@example.test"), RcptVerdict::Accept);
    assert_eq!(
        d.resolve("whoever@example.test"),
        Ok(vec![local("carol"), remote("fwd@elsewhere.org")])
    );
    // Users still come first.
    assert_eq!(d.resolve("bob@example.test"), Ok(vec![local("bob")]));
    // A name target never falls into the catch-all: a typo in an alias bounces.
    assert_eq!(
        d.resolve("ghost@example.test"),
        Err(ResolveError::UnknownUser)
    );
    // RCPT does not expand, so the alias name itself is accepted.
    assert_eq!(d.rcpt_verdict("ghost@example.test"), RcptVerdict::Accept);
}

#[test]
fn address_targets_in_local_domains_resolve_again_through_the_catch_all() {
    let (d, _f) = dir_with("postmaster: alice\n*: carol\nfwd: someone@example.test\n");
    assert_eq!(d.resolve("fwd@example.test"), Ok(vec![local("carol")]));
}

#[test]
fn a_catch_all_that_points_back_into_itself_is_a_loop() {
    let (d, _f) = dir_with("postmaster: alice\n*: missing@example.test\n");
    assert_eq!(
        d.resolve("x@example.test"),
        Err(ResolveError::AliasLoop("*".into()))
    );
}

#[test]
fn unsafe_local_parts_are_never_users_even_with_a_catch_all() {
    let f = Fixture::new(USERS, Some("postmaster: alice\n*: carol\n"));
    let (d, _) = f.load();
    for rcpt in [
        "../etc@example.test",
        "a/b@example.test",
        "a\\b@example.test",
        ".hidden@example.test",
        "a..b@example.test",
        "x\0y@example.test",
        "a\nb@example.test",
        "a\u{7f}@example.test",
        "@example.test",
        "",
        "..",
        "\"../etc\"@example.test",
        "\"a/b\"@example.test",
        "\"a\\\\b\"@example.test",
    ] {
        assert_eq!(d.rcpt_verdict(rcpt), RcptVerdict::UnknownUser, "{rcpt:?}");
        assert_eq!(d.resolve(rcpt), Err(ResolveError::UnknownUser), "{rcpt:?}");
    }
    // Not a path problem: dots inside a local part are fine.
    assert_eq!(
        d.rcpt_verdict("first.last@example.test"),
        RcptVerdict::Accept
    );
}

#[test]
fn nested_aliases_and_duplicates_removed() {
    let (d, _f) = dir_with(
        "postmaster: alice\nteam: alice, bob, alice\nall: team, carol, Alice@Example.Test, bob+x, \
         team@other.test\nfwd: all, Someone@Elsewhere.ORG, Someone@elsewhere.org\n",
    );
    assert_eq!(
        d.resolve("all@example.test"),
        Ok(vec![local("alice"), local("bob"), local("carol")])
    );
    assert_eq!(
        d.resolve("fwd@example.test"),
        Ok(vec![
            local("alice"),
            local("bob"),
            local("carol"),
            // The domain is lower-cased; a remote local part keeps its case.
            remote("Someone@elsewhere.org"),
        ])
    );
}

#[test]
fn unknown_target_fails_the_whole_recipient() {
    let (d, _f) = dir_with("postmaster: alice\nghost: nosuchuser\nhalf: alice, ghost\n");
    assert_eq!(
        d.resolve("ghost@example.test"),
        Err(ResolveError::UnknownUser)
    );
    assert_eq!(
        d.resolve("half@example.test"),
        Err(ResolveError::UnknownUser)
    );
    assert_eq!(d.rcpt_verdict("half@example.test"), RcptVerdict::Accept);
}

#[test]
fn loops_are_detected_and_named() {
    let (d, _f) = dir_with(
        "postmaster: alice\nloop1: loop2\nloop2: loop1\nself: self\nvia: alice, loop1@example.test\n",
    );
    assert_eq!(
        d.resolve("loop1@example.test"),
        Err(ResolveError::AliasLoop("loop1".into()))
    );
    assert_eq!(
        d.resolve("loop2@example.test"),
        Err(ResolveError::AliasLoop("loop2".into()))
    );
    assert_eq!(
        d.resolve("self@example.test"),
        Err(ResolveError::AliasLoop("self".into()))
    );
    assert_eq!(
        d.resolve("via@example.test"),
        Err(ResolveError::AliasLoop("loop1".into()))
    );
    assert_eq!(d.rcpt_verdict("loop1@example.test"), RcptVerdict::Accept);
}

#[test]
fn an_alias_naming_itself_means_the_user_of_that_name() {
    let (d, _f) = dir_with(
        "postmaster: alice\nalice: alice, alice@elsewhere.org\nbob: team\nteam: bob@example.test, carol\n",
    );
    assert_eq!(
        d.resolve("alice@example.test"),
        Ok(vec![local("alice"), remote("alice@elsewhere.org")])
    );
    assert_eq!(
        d.resolve("bob@example.test"),
        Ok(vec![local("bob"), local("carol")])
    );
}

fn chain(len: usize) -> String {
    let mut s = String::from("postmaster: alice\n");
    for i in 0..len - 1 {
        s.push_str(&format!("a{i}: a{}\n", i + 1));
    }
    s.push_str(&format!("a{}: alice\n", len - 1));
    s
}

#[test]
fn depth_cap() {
    let (d, _f) = dir_with(&chain(limits::ALIAS_MAX_DEPTH));
    assert_eq!(d.resolve("a0@example.test"), Ok(vec![local("alice")]));
    let (d, _f) = dir_with(&chain(limits::ALIAS_MAX_DEPTH + 1));
    assert_eq!(
        d.resolve("a0@example.test"),
        Err(ResolveError::AliasLoop(format!(
            "a{}",
            limits::ALIAS_MAX_DEPTH
        )))
    );
    // Deep from the start, fine from a shorter entry point.
    assert_eq!(d.resolve("a1@example.test"), Ok(vec![local("alice")]));
}

#[test]
fn expansion_cap() {
    let list = |n: usize| {
        let targets: Vec<&str> = (0..n).map(|i| ["alice", "bob", "carol"][i % 3]).collect();
        format!("postmaster: alice\nbig: {}\n", targets.join(", "))
    };
    let (d, _f) = dir_with(&list(limits::ALIAS_MAX_EXPANSION));
    assert_eq!(
        d.resolve("big@example.test"),
        Ok(vec![local("alice"), local("bob"), local("carol")])
    );
    let (d, _f) = dir_with(&list(limits::ALIAS_MAX_EXPANSION + 1));
    assert_eq!(
        d.resolve("big@example.test"),
        Err(ResolveError::AliasLoop("big".into()))
    );
}

#[test]
fn shared_sub_aliases_are_expanded_once() {
    // Without memoising, 15 levels of two references each would be 2^15 visits.
    let mut s = String::from("postmaster: alice\n");
    for i in 0..15 {
        s.push_str(&format!("b{i}: b{n}, b{n}\n", n = i + 1));
    }
    s.push_str("b15: alice, bob\n");
    let (d, _f) = dir_with(&s);
    assert_eq!(
        d.resolve("b0@example.test"),
        Ok(vec![local("alice"), local("bob")])
    );
}

#[test]
fn postmaster_falls_back_to_the_first_user_in_file_order() {
    let f = Fixture::new("zed:{PLAIN}z\nalice:{PLAIN}a\n", Some("team: alice\n"));
    let (d, warnings) = f.load();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("no postmaster user or alias in ")
                && w.ends_with("mail to postmaster goes to zed, the first user")
                && w.contains("RFC 5321 §4.5.1")),
        "{warnings:?}"
    );
    for rcpt in [
        "postmaster",
        "Postmaster@Example.Test",
        "postmaster+x@other.test",
    ] {
        assert_eq!(d.rcpt_verdict(rcpt), RcptVerdict::Accept, "{rcpt}");
        assert_eq!(d.resolve(rcpt), Ok(vec![local("zed")]), "{rcpt}");
    }
    // Not a login name.
    assert!(d.credential("postmaster").is_none());
}

#[test]
fn postmaster_user_or_alias_means_no_fallback_and_no_warning() {
    let hashed =
        format!("zed:{{SHA512-CRYPT}}{ALICE_HASH}\npostmaster:{{SHA512-CRYPT}}{ALICE_HASH}\n");
    let f = Fixture::new(&hashed, Some(""));
    let (d, warnings) = f.load();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(d.resolve("postmaster"), Ok(vec![local("postmaster")]));
    let f = Fixture::new(
        &format!("zed:{{SHA512-CRYPT}}{ALICE_HASH}\n"),
        Some("postmaster: zed\n"),
    );
    let (_, warnings) = f.load();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn no_users_at_all_is_a_warning() {
    let f = Fixture::new("# nobody yet\n", Some(""));
    let (d, warnings) = f.load();
    assert_eq!(
        warnings,
        vec![format!(
            "{} has no users: no mail can be delivered and nobody can log in",
            f.users_path()
        )]
    );
    assert_eq!(d.rcpt_verdict("postmaster"), RcptVerdict::UnknownUser);
}

#[test]
fn credential_lookup_is_case_insensitive_and_exact() {
    let (d, _f) = dir_with("postmaster: alice\n");
    assert_eq!(d.credential("BOB").map(|(n, _)| n), Some("bob"));
    assert!(d.credential("bob+x").is_none());
    assert!(d.credential("team").is_none());
    assert!(d.credential("").is_none());
}

// ---- refresh ------------------------------------------------------------------------------

fn set_mtime(path: &std::path::Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn refresh_does_not_read_unchanged_files() {
    let (mut d, _f) = dir_with("postmaster: alice\n");
    let reads = d.reads();
    assert_eq!(reads, 2);
    for _ in 0..100 {
        d.refresh();
    }
    assert_eq!(d.reads(), reads);
}

#[test]
fn refresh_sees_a_change_of_mtime_alone() {
    let (mut d, f) = dir_with("postmaster: alice\nteam: alice\n");
    let past = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&f.settings.aliases_file, past);
    d.refresh();
    let reads = d.reads();
    // Same size, same inode, different content and mtime.
    let file = fs::File::options()
        .write(true)
        .open(&f.settings.aliases_file)
        .unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"postmaster: alice\nteam: carol\n", 0)
        .unwrap();
    drop(file);
    set_mtime(&f.settings.aliases_file, past + Duration::from_secs(1));
    d.refresh();
    assert_eq!(d.reads(), reads + 1);
    assert_eq!(d.resolve("team@example.test"), Ok(vec![local("carol")]));
}

#[test]
fn refresh_sees_a_change_of_size_and_a_replacement_by_rename() {
    let (mut d, f) = dir_with("postmaster: alice\n");
    let past = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&f.settings.users_file, past);
    d.refresh();
    // Appended, mtime set back to what it was: only the size differs.
    let mut users = fs::read_to_string(&f.settings.users_file).unwrap();
    users.push_str("dave:{PLAIN}d\n");
    fs::write(&f.settings.users_file, &users).unwrap();
    set_mtime(&f.settings.users_file, past);
    d.refresh();
    assert_eq!(d.resolve("dave@example.test"), Ok(vec![local("dave")]));
    // An editor's rename over the file: a new inode.
    let tmp = f.tmp.path().join("users.new");
    fs::write(&tmp, users.replace("dave", "erin")).unwrap();
    set_mtime(&tmp, past);
    fs::rename(&tmp, &f.settings.users_file).unwrap();
    d.refresh();
    assert_eq!(d.resolve("erin@example.test"), Ok(vec![local("erin")]));
    assert_eq!(
        d.resolve("dave@example.test"),
        Err(ResolveError::UnknownUser)
    );
}

#[test]
fn refresh_keeps_the_old_tables_when_a_new_file_is_bad() {
    let (mut d, f) = dir_with("postmaster: alice\nteam: alice\n");
    let reads = d.reads();
    fs::write(&f.settings.aliases_file, "team alice\n").unwrap();
    fs::write(&f.settings.users_file, "alice:{NOPE}x\n").unwrap();
    d.refresh();
    assert_eq!(d.reads(), reads + 2);
    assert_eq!(d.resolve("team@example.test"), Ok(vec![local("alice")]));
    assert!(d.credential("bob").is_some());
    // The bad versions are not read again and again.
    d.refresh();
    d.refresh();
    assert_eq!(d.reads(), reads + 2);
    // Fixed: picked up.
    fs::write(
        &f.settings.aliases_file,
        "postmaster: alice\nteam: bob, x\n",
    )
    .unwrap();
    d.refresh();
    assert_eq!(d.rcpt_verdict("team@example.test"), RcptVerdict::Accept);
    assert_eq!(
        d.resolve("team@example.test"),
        Err(ResolveError::UnknownUser)
    );
}

#[test]
fn refresh_handles_files_that_appear_and_disappear() {
    let f = Fixture::new(USERS, None);
    let (mut d, _) = f.load();
    assert_eq!(
        d.rcpt_verdict("team@example.test"),
        RcptVerdict::UnknownUser
    );
    fs::write(&f.settings.aliases_file, "team: bob\n").unwrap();
    d.refresh();
    assert_eq!(d.resolve("team@example.test"), Ok(vec![local("bob")]));
    fs::remove_file(&f.settings.aliases_file).unwrap();
    d.refresh();
    assert_eq!(
        d.rcpt_verdict("team@example.test"),
        RcptVerdict::UnknownUser
    );
    let reads = d.reads();
    d.refresh();
    assert_eq!(d.reads(), reads);
    // A vanished users file is an error: the users read before stay.
    fs::remove_file(&f.settings.users_file).unwrap();
    d.refresh();
    assert!(d.credential("alice").is_some());
    let reads = d.reads();
    d.refresh();
    assert_eq!(d.reads(), reads);
    fs::write(&f.settings.users_file, "zoe:{PLAIN}z\n").unwrap();
    d.refresh();
    assert!(d.credential("alice").is_none());
    // The postmaster fallback follows the new users.
    assert_eq!(d.resolve("postmaster"), Ok(vec![local("zoe")]));
}

/// Submission (RFC 6409): an authenticated user may send as the user at a local domain (or a
/// subaddress), or as an alias that resolves to that user alone; never through the catch-all,
/// a shared alias, another user or another domain.
#[test]
fn sender_owned_by_the_user_alone() {
    let (d, _f) = dir_with(
        "postmaster: alice\nteam: alice, bob\nboss: alice\nfwd: alice, someone@far.example\n\
         *: carol\n",
    );
    for own in [
        "alice@example.test",
        "ALICE@Other.Test",
        "alice+lists@example.test",
        "boss@example.test",
        "postmaster@example.test",
    ] {
        assert!(d.sender_owned_by("alice", own), "{own}");
    }
    for not in [
        "bob@example.test",
        "team@example.test",
        "fwd@example.test",
        "alice@far.example",
        "nobody@example.test",
        "",
    ] {
        assert!(!d.sender_owned_by("alice", not), "{not}");
    }
    // The catch-all resolves nobody@ to carol, but does not make it carol's address.
    assert!(!d.sender_owned_by("carol", "nobody@example.test"));
    assert!(d.sender_owned_by("carol", "carol@example.test"));
}
