//! Tests of reading real files: `load`, `check_files`, the shipped configs, and the generated
//! documentation against the committed files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::docs;
use super::keys::{self, KEYS};
use super::*;

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn parsed(text: &str) -> (Config, Vec<String>) {
    let defaults = Config::defaults(Path::new("/etc/p.conf"));
    match parse(text.as_bytes(), Path::new("/etc/postling"), defaults) {
        Ok(r) => r,
        Err(e) => panic!("unexpected errors: {e:#?}"),
    }
}

#[test]
fn load_reports_an_unreadable_file_in_one_line() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("none.conf");
    let e = Config::load(&missing).unwrap_err();
    assert_eq!(
        e.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )]
    );
    let e = Config::load(t.path()).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        format!(
            "{}: cannot read: Is a directory (os error 21)",
            t.path().display()
        )
    );
    let big = t.path().join("big.conf");
    std::fs::write(&big, vec![b'#'; limits::CONFIG_MAX_BYTES as usize + 1]).unwrap();
    let e = Config::load(&big).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        format!(
            "{}: cannot read: larger than 1048576 bytes; is this a config file?",
            big.display()
        )
    );
}

#[test]
fn load_resolves_paths_against_the_file_and_keeps_its_name_in_errors() {
    let t = tempfile::tempdir().unwrap();
    let conf = t.path().join("p.conf");
    std::fs::write(
        &conf,
        "hostname = a.example\nusers_file = users\nlog_level = x\n",
    )
    .unwrap();
    let e = Config::load(&conf).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        format!(
            "{}:3: log_level: `x` is not a log level (expected one of error, warn, info, debug)",
            conf.display()
        )
    );
    std::fs::write(&conf, "hostname = a.example\nusers_file = users\n").unwrap();
    let (c, w) = Config::load(&conf).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.path, conf);
    assert_eq!(
        c.users_file,
        std::fs::canonicalize(t.path()).unwrap().join("users")
    );
}

fn checked_config(dir: &Path, extra: &str) -> Config {
    let conf = dir.join("p.conf");
    std::fs::write(
        &conf,
        format!("hostname = a.example\nusers_file = users\naliases_file = aliases\n{extra}"),
    )
    .unwrap();
    Config::load(&conf).unwrap().0
}

#[test]
fn check_files_wants_readable_users_and_aliases() {
    let t = tempfile::tempdir().unwrap();
    let c = checked_config(t.path(), "");
    let errors: Vec<String> = c.check_files().iter().map(ToString::to_string).collect();
    let conf = t.path().join("p.conf");
    assert_eq!(
        errors,
        [
            format!(
                "{}:2: users_file: cannot read {}: No such file or directory (os error 2) \
                 (expected a readable file)",
                conf.display(),
                c.users_file.display()
            ),
            format!(
                "{}:3: aliases_file: cannot read {}: No such file or directory (os error 2) \
                 (expected a readable file)",
                conf.display(),
                c.aliases_file.display()
            ),
        ]
    );
    std::fs::write(t.path().join("users"), "bob:{PLAIN}x\n").unwrap();
    std::fs::create_dir(t.path().join("aliases")).unwrap();
    let errors = c.check_files();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .ends_with("aliases is not a regular file (expected a readable file)")
    );
    std::fs::remove_dir(t.path().join("aliases")).unwrap();
    std::fs::write(t.path().join("aliases"), "postmaster: bob\n").unwrap();
    assert_eq!(c.check_files(), []);
}

#[test]
fn check_files_lets_state_directories_be_missing_but_not_be_files() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users"), "bob:{PLAIN}x\n").unwrap();
    std::fs::write(t.path().join("aliases"), "").unwrap();
    let c = checked_config(t.path(), "spool_dir = var/spool\nmailbox_dir = mail\n");
    assert_eq!(
        c.check_files(),
        [],
        "missing directories are created at start"
    );
    std::fs::write(t.path().join("mail"), "").unwrap();
    let e = c.check_files();
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        format!(
            "{}:5: mailbox_dir: {} exists but is not a directory (expected a directory, or a \
             path where the server may create one)",
            t.path().join("p.conf").display(),
            c.mailbox_dir.display()
        )
    );
}

#[test]
fn check_files_wants_the_log_and_pid_directories_and_the_user() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users"), "").unwrap();
    std::fs::write(t.path().join("aliases"), "").unwrap();
    let c = checked_config(t.path(), "log_file = log/postling.log\npid_file = .\n");
    let e: Vec<String> = c.check_files().iter().map(ToString::to_string).collect();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains(":4: log_file: directory ") && e[0].contains("No such file"),
        "{e:?}"
    );
    assert!(
        e[1].contains(":5: pid_file: ")
            && e[1].ends_with("is a directory (expected a file in an existing directory)"),
        "{e:?}"
    );
    std::fs::create_dir(t.path().join("log")).unwrap();
    let c = checked_config(t.path(), "log_file = log/postling.log\nuser = root\n");
    assert_eq!(c.check_files(), []);
    let c = checked_config(t.path(), "user = no-such-user-postling\n");
    let e = c.check_files();
    assert_eq!(e.len(), 1);
    assert!(
        e[0].to_string()
            .contains(":4: user: `no-such-user-postling` is not in /etc/passwd (postling reads local accounts only")
    );
}

#[test]
fn the_shipped_config_loads_and_its_files_check() {
    let (c, w) = Config::load(&manifest("conf/postling.conf")).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.hostname, "mail.example.test");
    assert_eq!(c.domains, ["example.test"]);
    assert_eq!(
        c.smtp_listen,
        ["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        c.pop3_listen,
        ["127.0.0.1:1110".parse::<SocketAddr>().unwrap()]
    );
    assert!(c.pop2_listen.is_empty());
    let root = std::fs::canonicalize(manifest("")).unwrap();
    assert_eq!(c.spool_dir, root.join("var/spool"));
    assert_eq!(c.mailbox_dir, root.join("var/mail"));
    assert_eq!(c.users_file, root.join("conf/users"));
    assert_eq!(c.aliases_file, root.join("conf/aliases"));
    assert_eq!(c.log_file, None);
    assert_eq!(c.check_files(), []);
}

#[test]
fn the_example_config_parses_commented_and_uncommented() {
    let text = docs::example_conf();
    let (c, _) = parsed(&text);
    assert!(c.set_on_line.is_empty(), "every key is commented out");
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if keys::spec(rest.split(" =").next().unwrap_or("")).is_some() => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let (c, w) = parsed(&uncommented);
    assert_eq!(
        c.set_on_line.len(),
        KEYS.len(),
        "every key has a line to uncomment"
    );
    assert!(w.is_empty(), "{w:?}");
    for line in text.lines() {
        assert!(line.len() <= 80, "line too long: {line}");
    }
}

fn assert_plain_roff(man: &str, sections: &[&str]) {
    assert!(man.is_ascii());
    for line in man.lines() {
        assert!(!line.starts_with('\''), "{line}");
        if line.starts_with('.') {
            let request = line.split_whitespace().next().unwrap_or_default();
            assert!(
                [
                    ".\\\"", ".TH", ".SH", ".B", ".I", ".br", ".PP", ".TP", ".IP"
                ]
                .contains(&request),
                "unexpected request: {line}"
            );
        }
    }
    for section in sections {
        assert!(man.contains(&format!(".SH {section}\n")), "{section}");
    }
}

#[test]
fn roff_and_markdown_escaping() {
    let man = docs::man_page();
    assert_plain_roff(
        &man,
        &[
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "CONFIGURATION",
            "SIGNALS",
            "FILES",
            "SEE ALSO",
        ],
    );
    let conf_man = docs::conf_man_page();
    assert_plain_roff(
        &conf_man,
        &["NAME", "DESCRIPTION", "SYNTAX", "KEYS", "SEE ALSO"],
    );
    let reference = docs::reference_markdown();
    for spec in KEYS {
        assert!(conf_man.contains(&format!(".TP\n\\fB{}\\fR\n", spec.name.replace('-', "\\-"))));
        assert!(reference.contains(&format!("| `{}` |", spec.name)));
    }
}

/// The committed documentation equals what the key table generates. With
/// POSTLING_REGEN_DOCS=1 the files are rewritten instead.
#[test]
fn generated_docs_are_current() {
    let files = [
        ("conf/postling.conf.example", docs::example_conf()),
        ("doc/postling.8", docs::man_page()),
        ("doc/postling.conf.5", docs::conf_man_page()),
        ("doc/configuration.md", docs::reference_markdown()),
    ];
    let regen = std::env::var_os("POSTLING_REGEN_DOCS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (rel, want) in files {
        let path = manifest(rel);
        if regen {
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            stale.push(rel);
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from the key table in src/config/keys.rs; regenerate them with: {}",
        stale.join(", "),
        docs::REGEN_COMMAND
    );
}

/// A config with a relay and `relay_auth_file = relay_auth`; the auth file written with
/// `text` and `mode` (None: not written).
fn relay_auth_config(dir: &Path, text: Option<(&str, u32)>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let conf = dir.join("p.conf");
    std::fs::write(
        &conf,
        "hostname = a.example\nrelay_host = smtp.example.net:587\nrelay_auth_file = relay_auth\n",
    )
    .unwrap();
    let auth = dir.join("relay_auth");
    if let Some((text, mode)) = text {
        std::fs::write(&auth, text).unwrap();
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    conf
}

fn load_errors(conf: &Path) -> Vec<String> {
    match Config::load(conf) {
        Ok((c, _)) => panic!("loaded: {:?}", c.relay_auth),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn load_reads_the_relay_credentials() {
    let t = tempfile::tempdir().unwrap();
    let conf = relay_auth_config(
        t.path(),
        Some((
            "# provider login\n\nalice@example.net  s3cret pass \n",
            0o600,
        )),
    );
    let (c, w) = Config::load(&conf).unwrap();
    assert!(w.is_empty(), "{w:?}");
    let creds = c.relay_auth.expect("credentials");
    assert_eq!(creds.user, "alice@example.net");
    assert_eq!(creds.password, "s3cret pass");
    assert!(!format!("{creds:?}").contains("s3cret"), "Debug hides it");
    let (c, _) = Config::load_without_secrets(&conf).unwrap();
    assert_eq!(c.relay_auth, None);
    // Read again on every load (SIGHUP reloads with `load`): a changed file is seen.
    let auth = t.path().join("relay_auth");
    std::fs::write(&auth, "bob other\n").unwrap();
    let (c, _) = Config::load(&conf).unwrap();
    assert_eq!(c.relay_auth.unwrap().user, "bob");
    // 0400 is fine too.
    relay_auth_config(t.path(), Some(("carol x\n", 0o400)));
    assert_eq!(
        Config::load(&conf).unwrap().0.relay_auth.unwrap().user,
        "carol"
    );
}

#[test]
fn a_readable_missing_empty_or_doubled_relay_auth_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(t.path()).unwrap();
    let auth = dir.join("relay_auth");
    let conf = relay_auth_config(t.path(), Some(("alice secret\n", 0o644)));
    let expected =
        "(expected a file only its owner can read (chmod 600) holding one line `user password`)";
    assert_eq!(
        load_errors(&conf),
        [format!(
            "{}:3: relay_auth_file: {} holds a password but its mode 0644 lets other users \
             read or change it; run `chmod 600 {}` {expected}",
            conf.display(),
            auth.display(),
            auth.display()
        )]
    );
    // Without the secret, the same file does not stop sendmail or the queue listing.
    assert!(Config::load_without_secrets(&conf).is_ok());
    for mode in [0o640, 0o604, 0o620, 0o602, 0o610] {
        relay_auth_config(t.path(), Some(("alice secret\n", mode)));
        let e = load_errors(&conf);
        assert!(e[0].contains("chmod 600"), "{mode:o}: {e:?}");
    }
    std::fs::remove_file(&auth).unwrap();
    assert_eq!(
        load_errors(&conf),
        [format!(
            "{}:3: relay_auth_file: cannot read {}: No such file or directory (os error 2) \
             {expected}",
            conf.display(),
            auth.display()
        )]
    );
    for (text, says) in [
        ("", "holds no `user password` line"),
        ("# nothing yet\n", "holds no `user password` line"),
        ("alice\n", "line 1 has a user name but no password"),
        (
            "alice pw-first\n# backup:\nbob pw-second\n",
            "line 3 is a second credential line (the first is line 1)",
        ),
    ] {
        relay_auth_config(t.path(), Some((text, 0o600)));
        let e = load_errors(&conf);
        assert_eq!(e.len(), 1, "{e:?}");
        let want = format!(
            "{}:3: relay_auth_file: {}: {says}",
            conf.display(),
            auth.display()
        );
        assert!(e[0].starts_with(&want), "{text:?}: {e:?}");
        assert!(!e[0].contains("pw-"), "never shows a password: {e:?}");
    }
    // A control character in the path is shown escaped: an error stays one clean line.
    let conf2 = t.path().join("p2.conf");
    std::fs::write(
        &conf2,
        "hostname = a.example\nrelay_host = 192.0.2.1\nrelay_auth_file = a\u{1}b\n",
    )
    .unwrap();
    let e = load_errors(&conf2);
    assert!(
        e[0].contains("cannot read ") && e[0].contains("a\\u{1}b: No such file"),
        "{e:?}"
    );
    // A FIFO is refused, not waited on.
    let fifo = t.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    std::fs::write(
        &conf2,
        format!(
            "hostname = a.example\nrelay_host = 192.0.2.1\nrelay_auth_file = {}\n",
            fifo.display()
        ),
    )
    .unwrap();
    assert!(load_errors(&conf2)[0].contains("is not a regular file"));
    // A directory is not the file.
    std::fs::remove_file(&auth).unwrap();
    std::fs::create_dir(&auth).unwrap();
    assert!(load_errors(&conf)[0].contains("is not a regular file"));
}

#[test]
fn relay_auth_errors_come_with_the_other_errors_of_the_file() {
    let t = tempfile::tempdir().unwrap();
    let conf = relay_auth_config(t.path(), Some(("alice secret\n", 0o644)));
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{text}max_message_size = 1Q\n")).unwrap();
    let e = load_errors(&conf);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains(":3: relay_auth_file: ") && e[1].contains(":4: max_message_size: "));
}

#[test]
fn check_files_wants_a_pem_ca_file() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users"), "").unwrap();
    std::fs::write(t.path().join("aliases"), "").unwrap();
    let ca = manifest("tests/tls/ca-cert.pem");
    let c = checked_config(t.path(), &format!("tls_ca_file = {}\n", ca.display()));
    assert_eq!(c.check_files(), []);
    let c = checked_config(t.path(), "tls_ca_file = ca.pem\n");
    let e: Vec<String> = c.check_files().iter().map(ToString::to_string).collect();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(":4: tls_ca_file: cannot read ") && e[0].contains("No such file"),
        "{e:?}"
    );
    std::fs::write(t.path().join("ca.pem"), "not a certificate\n").unwrap();
    let e: Vec<String> = c.check_files().iter().map(ToString::to_string).collect();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(":4: tls_ca_file: ") && e[0].contains("holds no certificate"),
        "{e:?}"
    );
}

#[test]
fn check_warns_when_the_run_user_cannot_read_the_auth_file_on_reload() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users"), "").unwrap();
    std::fs::write(t.path().join("aliases"), "").unwrap();
    let auth = t.path().join("relay_auth");
    std::fs::write(&auth, "alice secret\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let relay = "relay_host = 192.0.2.1:587\nrelay_auth_file = relay_auth\n";
    // A user other than the owner of the file (which is whoever runs the test).
    // SAFETY: getuid cannot fail.
    let other = if unsafe { libc::getuid() } == 0 {
        "nobody"
    } else {
        "root"
    };
    let c = checked_config(t.path(), &format!("{relay}user = {other}\n"));
    let (errors, warnings) = c.check();
    assert_eq!(errors, []);
    let about_auth = |w: &Vec<String>| -> Vec<String> {
        w.iter()
            .filter(|w| w.contains("relay_auth_file"))
            .cloned()
            .collect()
    };
    let warnings = about_auth(&warnings);
    let auth = c.relay_auth_file.clone().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "{}:5: relay_auth_file: {} is owned by uid ",
            c.path.display(),
            auth.display()
        )) && warnings[0].ends_with(&format!("run `chown {other} {}`", auth.display())),
        "{warnings:?}"
    );
    // Owned by the run user: no warning (checkable when the test runs as root).
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        let c = checked_config(t.path(), &format!("{relay}user = root\n"));
        assert_eq!(about_auth(&c.check().1), Vec::<String>::new());
    }
    // No `user`: the daemon reads it as who started it; no warning.
    let c = checked_config(t.path(), relay);
    let (errors, warnings) = c.check();
    assert_eq!((errors, about_auth(&warnings)), (vec![], vec![]));
}
