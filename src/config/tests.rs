use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys::{self, DefaultValue, KEYS};
use super::values;
use super::*;

const FILE: &str = "/etc/p.conf";
const BASE: &str = "/etc/postling";

fn parse_bytes(text: &[u8]) -> Result<(Config, Vec<String>), Vec<ConfigError>> {
    parse(text, Path::new(BASE), Config::defaults(Path::new(FILE)))
}

fn parsed(text: &str) -> (Config, Vec<String>) {
    match parse_bytes(text.as_bytes()) {
        Ok(r) => r,
        Err(e) => panic!("unexpected errors for {text:?}: {e:#?}"),
    }
}

fn error_lines(text: &[u8]) -> Vec<String> {
    match parse_bytes(text) {
        Ok(_) => panic!("no error for {:?}", String::from_utf8_lossy(text)),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

const MSG_SIZE: &str =
    "a size from 1 to 1G: a whole number of bytes, or with a K, M or G suffix (1K = 1024)";
const DURATION: &str =
    "a duration: a whole number with s, m, h or d (a plain number is seconds), 1s to 3650d";
const LISTEN: &str =
    "a comma-separated list of IP:PORT or [IPv6]:PORT (port 1-65535), or empty for off";

#[test]
fn errors_come_in_line_order_also_across_keys() {
    // The retry_max error is found after the whole file is read, yet it names line 1.
    let lines = error_lines(b"retry_max = 1m\nmax_message_size = 1X\nretry_min = 1h\n");
    let numbers: Vec<&str> = lines
        .iter()
        .map(|l| l.split(':').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(numbers, ["1", "2"], "{lines:#?}");
}

#[test]
fn every_error_form_names_file_line_key_and_expected() {
    let cases: &[(&[u8], String)] = &[
        (
            b"smtp_lisen = 1.2.3.4:25",
            "/etc/p.conf:1: smtp_lisen: unknown key; did you mean smtp_listen? (expected one of \
             the keys listed in postling.conf(5) and postling.conf.example)"
                .into(),
        ),
        (
            b"hostname = a.example\n# x\nhostname = b.example",
            "/etc/p.conf:3: hostname: set again; it was first set on line 1 (expected each key \
             at most once)"
                .into(),
        ),
        (
            b"max_message_size = 10X",
            format!(
                "/etc/p.conf:1: max_message_size: `10X` has an unknown suffix `X` (expected {MSG_SIZE})"
            ),
        ),
        (
            b"max_message_size = -1",
            format!("/etc/p.conf:1: max_message_size: `-1` is negative (expected {MSG_SIZE})"),
        ),
        (
            b"max_message_size = 99999999999G",
            format!(
                "/etc/p.conf:1: max_message_size: `99999999999G` is too large (expected {MSG_SIZE})"
            ),
        ),
        (
            b"max_message_size = 99999999999999999999999",
            format!(
                "/etc/p.conf:1: max_message_size: `99999999999999999999999` is too large (expected {MSG_SIZE})"
            ),
        ),
        (
            b"max_message_size = 2G",
            format!(
                "/etc/p.conf:1: max_message_size: `2G` is more than the limit of 1G (expected {MSG_SIZE})"
            ),
        ),
        (
            b"max_message_size = 0",
            format!(
                "/etc/p.conf:1: max_message_size: `0` would refuse every message (expected {MSG_SIZE})"
            ),
        ),
        (
            b"max_message_size = ten",
            format!("/etc/p.conf:1: max_message_size: `ten` is not a size (expected {MSG_SIZE})"),
        ),
        (
            b"smtp_timeout = 5x",
            format!(
                "/etc/p.conf:1: smtp_timeout: `5x` has an unknown unit `x` (expected {DURATION})"
            ),
        ),
        (
            b"smtp_timeout = 1.5m",
            format!(
                "/etc/p.conf:1: smtp_timeout: `1.5m` has an unknown unit `.5m` (expected {DURATION})"
            ),
        ),
        (
            b"smtp_timeout = 0",
            format!(
                "/etc/p.conf:1: smtp_timeout: `0` is too short: 1s is the least (expected {DURATION})"
            ),
        ),
        (
            b"queue_lifetime = 3651d",
            format!(
                "/etc/p.conf:1: queue_lifetime: `3651d` is longer than 3650d (expected {DURATION})"
            ),
        ),
        (
            b"retry_min = 99999999999999999999d",
            format!(
                "/etc/p.conf:1: retry_min: `99999999999999999999d` is longer than 3650d (expected {DURATION})"
            ),
        ),
        (
            b"pop3_timeout = -5m",
            format!("/etc/p.conf:1: pop3_timeout: `-5m` is negative (expected {DURATION})"),
        ),
        (
            b"smtp_listen = 1.2.3.4",
            format!("/etc/p.conf:1: smtp_listen: `1.2.3.4` has no port (expected {LISTEN})"),
        ),
        (
            b"smtp_listen = localhost:25",
            format!(
                "/etc/p.conf:1: smtp_listen: `localhost:25` names the host `localhost`; an IP \
                 literal is required, since start-up never uses DNS (expected {LISTEN})"
            ),
        ),
        (
            b"pop3_listen = mail.example.org",
            format!(
                "/etc/p.conf:1: pop3_listen: `mail.example.org` is a host name and has no port; \
                 an IP literal is required, since start-up never uses DNS (expected {LISTEN})"
            ),
        ),
        (
            b"smtp_listen = ::1:25",
            format!(
                "/etc/p.conf:1: smtp_listen: `::1:25` is an IPv6 address without a port; write \
                 the address in brackets and add the port, like [::1]:25 (expected {LISTEN})"
            ),
        ),
        (
            b"smtp_listen = fe80::1::2:25",
            format!(
                "/etc/p.conf:1: smtp_listen: `fe80::1::2:25`: an IPv6 address needs brackets, \
                 like [::1]:25 (expected {LISTEN})"
            ),
        ),
        (
            b"smtp_listen = 127.0.0.1:0",
            format!(
                "/etc/p.conf:1: smtp_listen: `127.0.0.1:0`: port 0 would listen on a random \
                 port no client knows (expected {LISTEN})"
            ),
        ),
        (
            b"smtp_listen = 127.0.0.1:70000",
            format!(
                "/etc/p.conf:1: smtp_listen: `127.0.0.1:70000`: port 70000 is above 65535 (expected {LISTEN})"
            ),
        ),
        (
            b"smtp_listen = 127.0.0.1:smtp",
            format!(
                "/etc/p.conf:1: smtp_listen: `127.0.0.1:smtp`: port `smtp` is not a number (expected {LISTEN})"
            ),
        ),
        (
            b"smtp_listen = 1.2.3:25",
            format!("/etc/p.conf:1: smtp_listen: `1.2.3` is not an IP address (expected {LISTEN})"),
        ),
        (
            b"smtp_listen = 127.0.0.1:25, localhost:26, 1.2.3.4",
            format!(
                "/etc/p.conf:1: smtp_listen: `localhost:26` names the host `localhost`; an IP \
                 literal is required, since start-up never uses DNS; `1.2.3.4` has no port \
                 (expected {LISTEN})"
            ),
        ),
        (
            b"log_level = verbose",
            "/etc/p.conf:1: log_level: `verbose` is not a log level (expected one of error, \
             warn, info, debug)"
                .into(),
        ),
        (
            b"fsync = sometimes",
            "/etc/p.conf:1: fsync: `sometimes` is not a sync mode (expected `file` or \
             `filesystem`)"
                .into(),
        ),
        (
            b"disk_io = bogus",
            "/etc/p.conf:1: disk_io: `bogus` is not a disk_io mode (expected `auto`, `uring` \
             or `helper`)"
                .into(),
        ),
        (
            b"auth_failure_delay = 0s",
            "/etc/p.conf:1: auth_failure_delay: `0s` is below the minimum of 1s: a quicker \
             answer helps password guessing (expected a duration of at least 1s: a whole \
             number with s, m, h or d (a plain number is seconds))"
                .into(),
        ),
        (
            b"retry_min = 2h\nretry_max = 1h",
            "/etc/p.conf:2: retry_max: retry_min 2h is longer than retry_max 1h (expected \
             retry_min no longer than retry_max)"
                .into(),
        ),
        (
            b"retry_min = 2h",
            "/etc/p.conf:1: retry_min: retry_min 2h is longer than retry_max 1h (expected \
             retry_min no longer than retry_max)"
                .into(),
        ),
        (
            b"hostname = caf\xe9.example",
            "/etc/p.conf:1: hostname: is not valid UTF-8 at column 15 (expected UTF-8 text \
             without NUL bytes)"
                .into(),
        ),
        (
            b"# fine\n\xff\xfe = 1",
            "/etc/p.conf:2: line: is not valid UTF-8 at column 1 (expected UTF-8 text without \
             NUL bytes)"
                .into(),
        ),
        (
            b"log_level = in\0fo",
            "/etc/p.conf:1: log_level: contains a NUL byte at column 15 (expected UTF-8 text \
             without NUL bytes)"
                .into(),
        ),
        (
            b"smtp_listen 127.0.0.1:25",
            "/etc/p.conf:1: smtp_listen: the line has no `=` (expected key = value, or `key =` \
             for an empty value)"
                .into(),
        ),
        (
            b" = 127.0.0.1:25",
            "/etc/p.conf:1: line: no key before `=` (expected key = value)".into(),
        ),
        (
            b"max_connections = 0",
            "/etc/p.conf:1: max_connections: `0` is below 1 (expected a whole number from 1 to \
             1000000)"
                .into(),
        ),
        (
            b"max_connections_per_ip = 1000001",
            "/etc/p.conf:1: max_connections_per_ip: `1000001` is above 1000000 (expected a \
             whole number from 1 to 1000000)"
                .into(),
        ),
        (
            b"max_connections = +5",
            "/etc/p.conf:1: max_connections: `+5` is not a whole number (expected a whole \
             number from 1 to 1000000)"
                .into(),
        ),
        (
            b"max_connections = -5",
            "/etc/p.conf:1: max_connections: `-5` is negative (expected a whole number from 1 \
             to 1000000)"
                .into(),
        ),
        (
            b"recipient_delimiter = ++",
            "/etc/p.conf:1: recipient_delimiter: `++` is more than one character (expected one \
             of the characters + - _ = . ~, or empty for off)"
                .into(),
        ),
        (
            b"recipient_delimiter = a",
            "/etc/p.conf:1: recipient_delimiter: `a` cannot separate a subaddress from a user \
             name (expected one of the characters + - _ = . ~, or empty for off)"
                .into(),
        ),
        (
            b"domains = example.org, exa_mple.org",
            "/etc/p.conf:1: domains: `exa_mple.org` contains `_`, which a domain name cannot \
             (expected a comma-separated list of domain names)"
                .into(),
        ),
        (
            b"domains = , ,",
            "/etc/p.conf:1: domains: no domain given (expected a comma-separated list of \
             domain names)"
                .into(),
        ),
        (
            b"domains = 192.0.2.1",
            "/etc/p.conf:1: domains: `192.0.2.1` is an IP address, not a domain name \
             (expected a comma-separated list of domain names)"
                .into(),
        ),
        (
            "domains = b\u{fc}cher.example".as_bytes(),
            "/etc/p.conf:1: domains: `b\u{fc}cher.example` is not ASCII; write an \
             international name in its xn-- form (expected a comma-separated list of domain \
             names)"
                .into(),
        ),
        (
            b"hostname = mail..example.org",
            "/etc/p.conf:1: hostname: `mail..example.org` has an empty label (two dots, or a \
             dot at an end) (expected a domain name, e.g. mail.example.org)"
                .into(),
        ),
        (
            b"hostname = -mail.example.org",
            "/etc/p.conf:1: hostname: label `-mail` starts or ends with a hyphen (expected a \
             domain name, e.g. mail.example.org)"
                .into(),
        ),
        (
            b"hostname =",
            "/etc/p.conf:1: hostname: no name given (expected a domain name, e.g. \
             mail.example.org)"
                .into(),
        ),
        (
            b"spool_dir =",
            "/etc/p.conf:1: spool_dir: no path given (expected a path (relative to the \
             directory of the config file))"
                .into(),
        ),
        (
            b"user = mail user",
            "/etc/p.conf:1: user: `mail user` is not a user name (expected a user name \
             (letters, digits, . _ -), or empty)"
                .into(),
        ),
        (
            b"smtp_listen = 127.0.0.1:25\npop3_listen = 127.0.0.1:25",
            "/etc/p.conf:2: pop3_listen: 127.0.0.1:25 overlaps 127.0.0.1:25 (smtp_listen, line \
             1); both cannot be bound (expected each port of an address used once; 0.0.0.0 and \
             [::] cover every address of their family)"
                .into(),
        ),
        (
            b"smtp_listen = 0.0.0.0:25, 127.0.0.1:25",
            "/etc/p.conf:1: smtp_listen: 127.0.0.1:25 overlaps 0.0.0.0:25 (smtp_listen, line \
             1); both cannot be bound (expected each port of an address used once; 0.0.0.0 and \
             [::] cover every address of their family)"
                .into(),
        ),
        (
            b"pop2_listen = 127.0.0.1:25",
            "/etc/p.conf:1: pop2_listen: 127.0.0.1:25 overlaps 0.0.0.0:25 (smtp_listen, by \
             default); both cannot be bound (expected each port of an address used once; \
             0.0.0.0 and [::] cover every address of their family)"
                .into(),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            error_lines(text),
            vec![want.clone()],
            "for {:?}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn all_errors_are_reported_together_in_file_order() {
    let text = b"hostnme = a.example\n\
                 smtp_listen = localhost:25\n\
                 max_message_size = 10X\n\
                 log_level = loud\n\
                 \xff = 1\n\
                 log_level = info\n\
                 pop3_listen = 127.0.0.1:1110\n";
    let errors = error_lines(text);
    let lines: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            "/etc/p.conf:1",
            "/etc/p.conf:2",
            "/etc/p.conf:3",
            "/etc/p.conf:4",
            "/etc/p.conf:5",
            "/etc/p.conf:6"
        ]
    );
    assert!(errors[0].contains("did you mean hostname?"));
    assert!(errors[5].contains("set again; it was first set on line 4"));
}

#[test]
fn unknown_keys_suggest_the_nearest_known_key() {
    for (typo, want) in [
        ("smtp_lsten", "smtp_listen"),
        ("pop3_timout", "pop3_timeout"),
        ("LOG_LEVEL", "log_level"),
        ("maxconnections", "max_connections"),
        ("max_connection_per_ip", "max_connections_per_ip"),
        ("domain", "domains"),
        ("spooldir", "spool_dir"),
        ("userfile", "users_file"),
        ("users", "user"),
        ("pidfile", "pid_file"),
    ] {
        assert_eq!(keys::nearest_key(typo), want, "for {typo}");
    }
    assert_eq!(keys::edit_distance("kitten", "sitting"), 3);
    assert_eq!(keys::edit_distance("", "abc"), 3);
    assert_eq!(keys::edit_distance("abc", ""), 3);
    assert_eq!(keys::edit_distance("same", "same"), 0);
    // A line of garbage gets a message of bounded length.
    let long = format!("{} = 1", "x".repeat(5000));
    let e = &error_lines(long.as_bytes())[0];
    assert!(e.len() < 300, "{e}");
}

#[test]
fn relative_paths_start_at_the_config_directory() {
    let (c, _) = parsed(
        "users_file = users\n\
         aliases_file = ./sub/aliases\n\
         spool_dir = ../var/spool\n\
         mailbox_dir = /srv/mail\n\
         log_file = logs/../postling.log\n\
         pid_file = ../../../../run/postling.pid\n",
    );
    assert_eq!(c.users_file, PathBuf::from("/etc/postling/users"));
    assert_eq!(c.aliases_file, PathBuf::from("/etc/postling/sub/aliases"));
    assert_eq!(c.spool_dir, PathBuf::from("/etc/var/spool"));
    assert_eq!(c.mailbox_dir, PathBuf::from("/srv/mail"));
    // Only leading `..` steps are folded into the (canonical) base; later ones may cross a
    // symbolic link and are kept.
    assert_eq!(
        c.log_file,
        Some(PathBuf::from("/etc/postling/logs/../postling.log"))
    );
    assert_eq!(c.pid_file, Some(PathBuf::from("/run/postling.pid")));
    let (c, _) = parsed("log_file =\npid_file =");
    assert_eq!((c.log_file, c.pid_file), (None, None));
}

#[test]
fn config_dir_is_absolute_even_for_a_relative_config_path() {
    let dir = config_dir(Path::new("postling.conf"));
    assert!(dir.is_absolute());
    assert_eq!(dir, std::fs::canonicalize(".").unwrap());
    let t = tempfile::tempdir().unwrap();
    let canonical = std::fs::canonicalize(t.path()).unwrap();
    assert_eq!(config_dir(&t.path().join("p.conf")), canonical);
}

#[test]
fn sizes_and_durations_accept_their_suffixes() {
    for (v, want) in [
        ("0", 0),
        ("5", 5),
        ("2K", 2048),
        ("3k", 3072),
        ("10M", 10 << 20),
        ("1G", 1 << 30),
        ("16777216G", 1 << 54),
    ] {
        assert_eq!(values::size(v), Ok(want), "{v}");
    }
    for (v, secs) in [
        ("1", 1),
        ("90", 90),
        ("1s", 1),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86_400),
        ("3650d", 3650 * 86_400),
    ] {
        assert_eq!(values::duration(v), Ok(Duration::from_secs(secs)), "{v}");
    }
    for (secs, text) in [
        (1, "1s"),
        (90, "90s"),
        (600, "10m"),
        (7200, "2h"),
        (432_000, "5d"),
    ] {
        assert_eq!(values::format_duration(Duration::from_secs(secs)), text);
    }
    let (c, _) = parsed(
        "max_message_size = 2K\nsmtp_timeout = 1s\nqueue_lifetime = 1s\nretry_min = 1s\n\
         retry_max = 1s\nauth_failure_delay = 1s\npop3_timeout = 3m\npop3_login_timeout = 20s",
    );
    assert_eq!(c.max_message_size, 2048);
    assert_eq!(c.smtp_timeout, Duration::from_secs(1));
    assert_eq!(c.queue_lifetime, Duration::from_secs(1));
    assert_eq!(
        (c.retry_min, c.retry_max),
        (Duration::from_secs(1), Duration::from_secs(1))
    );
    assert_eq!(c.auth_failure_delay, Duration::from_secs(1));
    assert_eq!(c.pop3_timeout, Duration::from_secs(180));
    assert_eq!(c.pop3_login_timeout, Duration::from_secs(20));
}

#[test]
fn delay_warning_time_defaults_to_4h_and_0_turns_it_off() {
    let (c, _) = parsed("");
    assert_eq!(c.delay_warning_time, Duration::from_secs(4 * 3600));
    let (c, _) = parsed("delay_warning_time = 0");
    assert_eq!(c.delay_warning_time, Duration::ZERO);
    let (c, _) = parsed("delay_warning_time = 30m");
    assert_eq!(c.delay_warning_time, Duration::from_secs(1800));
    for bad in [
        "delay_warning_time = -1s",
        "delay_warning_time = 1w",
        "delay_warning_time = 3651d",
    ] {
        let e = error_lines(bad.as_bytes());
        assert!(
            e.len() == 1 && e[0].contains("delay_warning_time"),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let (c, _) = parsed("# nothing but a comment\n\n   \n");
    let (system, _) = system_hostname();
    assert_eq!(c.hostname, system);
    assert!(c.hostname_from_system);
    assert_eq!(c.domains, vec![domain_of_hostname(&system)]);
    assert_eq!(c.smtp_listen, vec![SocketAddr::from(([0, 0, 0, 0], 25))]);
    assert_eq!(c.pop3_listen, vec![SocketAddr::from(([0, 0, 0, 0], 110))]);
    assert!(c.pop2_listen.is_empty());
    assert_eq!(c.max_connections, limits::MAX_CONNECTIONS_DEFAULT);
    assert_eq!(c.pop3_login_timeout, limits::POP_LOGIN_TIMEOUT_DEFAULT);
    assert_eq!(c.recipient_delimiter, Some('+'));
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert_eq!(c.user, None);
    assert!(c.set_on_line.is_empty());
}

/// The documented default of every key is what `Config::defaults` really uses.
#[test]
fn documented_defaults_are_the_real_defaults() {
    let defaults = format!("{:?}", Config::defaults(Path::new(FILE)));
    for spec in KEYS {
        let value = match spec.default {
            DefaultValue::Text(t) => t,
            DefaultValue::Empty => "",
            DefaultValue::Derived { .. } => continue,
        };
        let text = format!("{} = {value}", spec.name);
        let (mut c, _) = parsed(&text);
        c.set_on_line.clear();
        assert_eq!(format!("{c:?}"), defaults, "{text}");
    }
}

#[test]
fn hostname_sets_the_default_domain_and_domains_are_lower_cased() {
    let (c, w) = parsed("hostname = Mail.Example.TEST");
    assert_eq!(c.hostname, "Mail.Example.TEST");
    assert!(!c.hostname_from_system);
    assert_eq!(c.domains, ["example.test"]);
    assert!(w.is_empty(), "{w:?}");
    let (c, _) = parsed("hostname = mail.example.test\ndomains = Example.ORG, b.example,");
    assert_eq!(c.domains, ["example.org", "b.example"]);
    assert_eq!(domain_of_hostname("box"), "box");
    assert_eq!(domain_of_hostname("a.b.c"), "b.c");
}

#[test]
fn warnings_for_what_works_but_is_probably_not_meant() {
    let (c, w) = parsed("hostname = box");
    assert_eq!(c.domains, ["box"]);
    assert_eq!(
        w,
        ["hostname 'box' is not fully qualified; set `hostname = box.example.org` in /etc/p.conf"]
    );
    let (_, w) = parsed("hostname = a.example\npop3_timeout = 1m");
    assert_eq!(
        w,
        [
            "/etc/p.conf:2: pop3_timeout: 1m is shorter than the 10m RFC 1939 section 3 asks for; \
          clients that pause longer are cut off"
        ]
    );
    let (c, w) = parsed(
        "hostname = a.example\nsmtp_listen = 127.0.0.1:25, [::1]:25, 127.0.0.1:25\n\
         domains = a.example, A.example",
    );
    assert_eq!(
        c.smtp_listen,
        [
            "127.0.0.1:25".parse::<SocketAddr>().unwrap(),
            "[::1]:25".parse().unwrap()
        ]
    );
    assert_eq!(c.domains, ["a.example"]);
    assert_eq!(
        w,
        [
            "/etc/p.conf:2: smtp_listen: 127.0.0.1:25 is listed twice",
            "/etc/p.conf:3: domains: a.example is listed twice"
        ]
    );
    let (_, w) = parsed("hostname = a.example\nsmtp_listen =\npop3_listen =\npop2_listen =");
    assert_eq!(
        w,
        [
            "/etc/p.conf: smtp_listen: smtp_listen, pop3_listen, pop2_listen, smtps_listen and \
             pop3s_listen are all empty: no connections are accepted"
        ]
    );
}

#[test]
fn listen_addresses_of_both_families_and_wildcards_coexist() {
    let (c, w) = parsed(
        "hostname = a.example\nsmtp_listen = 0.0.0.0:25, [::]:25\npop3_listen = [::1]:110, \
         127.0.0.1:110\npop2_listen = 127.0.0.1:109",
    );
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.smtp_listen.len(), 2);
    assert_eq!(c.pop3_listen[0], "[::1]:110".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.pop2_listen,
        ["127.0.0.1:109".parse::<SocketAddr>().unwrap()]
    );
    let e = error_lines(b"smtp_listen = [::]:25\npop3_listen = [::1]:25");
    assert!(
        e[0].starts_with("/etc/p.conf:2: pop3_listen: [::1]:25 overlaps [::]:25"),
        "{e:?}"
    );
}

#[test]
fn comments_blank_lines_and_line_endings() {
    let (c, _) = parsed(
        "# a comment\r\n\
         \t  # an indented comment\r\n\
         hostname = mail.example.test   # after whitespace\r\n\
         \r\n\
         log_file=logs/a#b.log\n",
    );
    assert_eq!(
        c.log_file,
        Some(PathBuf::from("/etc/postling/logs/a#b.log"))
    );
    assert_eq!(c.hostname, "mail.example.test");
    assert_eq!(c.set_on_line.get("hostname"), Some(&3));
    let e = error_lines(b"log_level = debug#x");
    assert!(e[0].contains("`debug#x` is not a log level"), "{e:?}");
    let (c, _) = parsed("\u{feff}hostname = bom.example\n");
    assert_eq!(c.hostname, "bom.example", "a byte-order mark is skipped");
    let (c, _) = parsed("fsync = Filesystem\n");
    assert_eq!(c.fsync, crate::durable::SyncMode::Filesystem);
    let (c, _) = parsed("");
    assert_eq!(c.disk_io, crate::exec::DiskIo::Auto);
    for (text, mode) in [
        ("auto", crate::exec::DiskIo::Auto),
        ("uring", crate::exec::DiskIo::Uring),
        ("Helper", crate::exec::DiskIo::Helper),
    ] {
        let (c, _) = parsed(&format!("disk_io = {text}\n"));
        assert_eq!(c.disk_io, mode);
    }
    let (c, _) = parsed("recipient_delimiter =\n");
    assert_eq!(c.recipient_delimiter, None);
    let (c, _) = parsed("recipient_delimiter = -   # qmail style");
    assert_eq!(c.recipient_delimiter, Some('-'));
    let (c, _) = parsed("recipient_delimiter = =");
    assert_eq!(c.recipient_delimiter, Some('='));
    let (c, _) = parsed("user = postling\nlog_level = WARN");
    assert_eq!(c.user.as_deref(), Some("postling"));
    assert_eq!(c.log_level, log::LevelFilter::Warn);
}

#[test]
fn directory_settings_carry_what_the_directory_needs() {
    let (c, _) = parsed(
        "hostname = a.example\ndomains = a.example, b.example\nusers_file = u\n\
         aliases_file = /x/al\nrecipient_delimiter = -",
    );
    assert_eq!(
        c.directory_settings(),
        DirectorySettings {
            users_file: PathBuf::from("/etc/postling/u"),
            aliases_file: PathBuf::from("/x/al"),
            domains: vec!["a.example".into(), "b.example".into()],
            recipient_delimiter: Some('-'),
        }
    );
}

#[test]
fn the_key_table_is_consistent() {
    let mut names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    assert_eq!(names.len(), 55);
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 55, "key names are unique");
    for k in KEYS {
        assert!(keys::spec(k.name).is_some());
        assert!(
            k.meaning.is_ascii() && k.form.is_ascii(),
            "{}: docs stay ASCII",
            k.name
        );
        assert!(
            !k.meaning.contains("  "),
            "{}: meaning has double spaces",
            k.name
        );
    }
    assert!(
        !keys::RECIPIENT_DELIMITERS.contains('#'),
        "`#` starts a comment"
    );
}

#[test]
fn tls_cert_and_key_come_as_a_pair_and_implicit_tls_needs_them() {
    let errs = error_lines(b"tls_cert = /etc/c.pem");
    assert!(
        errs.iter()
            .any(|e| e.contains(":1: tls_cert: tls_cert is set but tls_key is not")),
        "{errs:?}"
    );
    let errs = error_lines(b"tls_key = /etc/k.pem");
    assert!(
        errs.iter()
            .any(|e| e.contains(":1: tls_key: tls_key is set but")),
        "{errs:?}"
    );
    let errs = error_lines(b"smtps_listen = 127.0.0.1:465");
    assert!(
        errs.iter()
            .any(|e| e.contains(":1: smtps_listen: smtps_listen needs a certificate")),
        "{errs:?}"
    );
    let (c, _) = parsed(
        "tls_cert = /etc/c.pem\ntls_key = /etc/k.pem\nsmtps_listen = 127.0.0.1:465\n\
         pop3s_listen = 127.0.0.1:995\ntls_handshake_timeout = 5s",
    );
    assert_eq!(c.smtps_listen.len(), 1);
    assert_eq!(c.pop3s_listen.len(), 1);
    assert_eq!(c.tls_handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.tls_cert.as_deref(), Some(Path::new("/etc/c.pem")));
}

#[test]
fn relay_networks_and_submission_listen() {
    let (c, _) = parsed("");
    assert_eq!(c.relay_networks, values::Cidr::loopback());
    assert!(c.submission_listen.is_empty());
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(c.relay_networks.iter().any(|n| n.contains(ip("127.1.2.3"))));
    assert!(c.relay_networks.iter().any(|n| n.contains(ip("::1"))));
    assert!(
        c.relay_networks
            .iter()
            .any(|n| n.contains(ip("::ffff:127.0.0.1")))
    );
    assert!(!c.relay_networks.iter().any(|n| n.contains(ip("10.0.0.1"))));
    assert!(!c.relay_networks.iter().any(|n| n.contains(ip("::2"))));
    let (c, _) = parsed(
        "relay_networks = 10.0.0.0/8, 2001:db8::/32, 192.0.2.7, 0.0.0.0/0\n\
                         submission_listen = 127.0.0.1:587, [::1]:587\n",
    );
    assert_eq!(c.relay_networks.len(), 4);
    assert!(c.relay_networks[0].contains(ip("10.255.0.1")));
    assert!(!c.relay_networks[0].contains(ip("11.0.0.1")));
    assert!(c.relay_networks[1].contains(ip("2001:db8:1::5")));
    assert!(c.relay_networks[2].contains(ip("192.0.2.7")));
    assert!(!c.relay_networks[2].contains(ip("192.0.2.8")));
    assert!(c.relay_networks[3].contains(ip("203.0.113.9")));
    assert_eq!(c.submission_listen.len(), 2);
    let (_, warnings) = parsed("submission_listen = 127.0.0.1:587\n");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("only loopback clients can log in")),
        "{warnings:?}"
    );
    let (c, _) = parsed("relay_networks =\n");
    assert!(c.relay_networks.is_empty());
    for bad in [
        "10.1.2.3/8",
        "10.0.0.0/33",
        "10.0.0.0/-1",
        "mail.example/8",
        "::1/129",
        "10.0.0.0/+8",
    ] {
        let errs = error_lines(format!("relay_networks = {bad}").as_bytes());
        assert!(
            errs.iter().any(|e| e.contains("relay_networks")),
            "{bad}: {errs:?}"
        );
    }
    let errs = error_lines(b"smtp_listen = 127.0.0.1:25\nsubmission_listen = 127.0.0.1:25\n");
    assert!(errs.iter().any(|e| e.contains("overlaps")), "{errs:?}");
}

fn relay(c: &Config) -> (String, u16) {
    let r = c.relay_host.as_ref().expect("relay_host set");
    (r.host.clone(), r.port)
}

#[test]
fn relay_host_takes_names_ip_literals_and_brackets() {
    let (c, w) = parsed("hostname = a.example\nrelay_host = smtp.example.net:587");
    assert_eq!(relay(&c), ("smtp.example.net".into(), 587));
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        c.relay_host.as_ref().unwrap().to_string(),
        "smtp.example.net:587"
    );
    for (value, host, port) in [
        ("smtp.example.net", "smtp.example.net", 25),
        ("smtp.example.net.", "smtp.example.net", 25),
        ("[smtp.example.net]", "smtp.example.net", 25),
        ("[smtp.example.net]:2525", "smtp.example.net", 2525),
        ("192.0.2.1", "192.0.2.1", 25),
        ("192.0.2.1:587", "192.0.2.1", 587),
        ("[192.0.2.1]:587", "192.0.2.1", 587),
        ("127.0.0.1:2525", "127.0.0.1", 2525),
        ("[2001:db8::1]", "2001:db8::1", 25),
        ("[2001:DB8::1]:587", "2001:db8::1", 587),
        ("[IPv6:2001:db8::1]:587", "2001:db8::1", 587),
        ("[::1]:2525", "::1", 2525),
    ] {
        let (c, _) = parsed(&format!("relay_host = {value}"));
        assert_eq!(relay(&c), (host.to_string(), port), "{value}");
    }
    let (c, _) = parsed("relay_host = [2001:db8::1]:587");
    let r = c.relay_host.unwrap();
    assert_eq!(r.ip(), Some("2001:db8::1".parse().unwrap()));
    assert_eq!(r.to_string(), "[2001:db8::1]:587");
    let (c, _) = parsed("relay_host =");
    assert_eq!(c.relay_host, None);
}

#[test]
fn relay_host_default_port_follows_relay_tls_in_either_order() {
    for text in [
        "relay_host = smtp.example.net\nrelay_tls = implicit",
        "relay_tls = implicit\nrelay_host = smtp.example.net",
        "relay_tls = IMPLICIT\nrelay_host = [192.0.2.1]",
    ] {
        let (c, _) = parsed(text);
        assert_eq!(relay(&c).1, 465, "{text}");
        assert_eq!(c.relay_tls, values::RelayTls::Implicit);
    }
    for text in [
        "relay_host = smtp.example.net\nrelay_tls = starttls",
        "relay_host = smtp.example.net\nrelay_tls = none",
        "relay_host = smtp.example.net",
    ] {
        assert_eq!(relay(&parsed(text).0).1, 25, "{text}");
    }
    // A written port wins.
    let (c, _) = parsed("relay_host = smtp.example.net:25\nrelay_tls = implicit");
    assert_eq!(relay(&c).1, 25);
}

#[test]
fn bad_relay_hosts_are_errors_naming_file_line_and_key() {
    let form = "HOST or HOST:PORT, HOST a host name, an IPv4 address or an [IPv6] address \
                (brackets optional around the others), or empty";
    assert_eq!(
        error_lines(b"# smarthost\nrelay_host = 2001:db8::1"),
        [format!(
            "/etc/p.conf:2: relay_host: `2001:db8::1`: an IPv6 address needs brackets, like \
             [2001:db8::1]:587 (expected {form})"
        )]
    );
    assert_eq!(
        error_lines(b"relay_host = smtp..example.net:587"),
        [format!(
            "/etc/p.conf:1: relay_host: `smtp..example.net:587`: `smtp..example.net` has an \
             empty label (two dots, or a dot at an end) (expected {form})"
        )]
    );
    for (bad, says) in [
        ("smtp.example.net:0", "port 0"),
        ("smtp.example.net:65536", "above 65535"),
        ("smtp.example.net:smtp", "not a number"),
        ("smtp.example.net:", "not a number"),
        ("[::1", "without a closing"),
        ("[::1]587", "only `:PORT`"),
        ("[]:25", "no host name"),
        (":25", "no host name"),
        ("1.2.3", "neither an IPv4 address nor a host name"),
        ("192.0.2.300", "neither an IPv4 address nor a host name"),
        ("0.0.0.0", "not an address a server can have"),
        ("[::]:25", "not an address a server can have"),
        ("224.0.0.1", "not an address a server can have"),
        ("-smtp.example.net", "hyphen"),
        ("smtp_1.example.net", "which a domain name cannot"),
        (
            "smtp.example.net smtp2.example.net",
            "which a domain name cannot",
        ),
        ("smtp.exämple.net", "not ASCII"),
    ] {
        let errs = error_lines(format!("relay_host = {bad}").as_bytes());
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].starts_with("/etc/p.conf:1: relay_host: ") && errs[0].contains(says),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn relay_tls_and_verify_and_the_meaningless_combination_warns() {
    let (c, w) = parsed("");
    assert_eq!(c.relay_tls, values::RelayTls::Starttls);
    assert!(c.relay_tls_verify);
    assert_eq!(c.tls_ca_file, None);
    assert!(w.iter().all(|w| !w.contains("relay")), "{w:?}");
    let (c, w) = parsed(
        "hostname = a.example\nrelay_host = 10.0.0.5\nrelay_tls = none\nrelay_tls_verify = no",
    );
    assert_eq!(c.relay_tls, values::RelayTls::None);
    assert!(!c.relay_tls_verify);
    assert_eq!(
        w,
        [
            "/etc/p.conf:4: relay_tls_verify: has no effect with relay_tls = none: there is no \
          certificate to verify"
        ]
    );
    let (_, w) = parsed("hostname = a.example\nrelay_tls_verify = no");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        error_lines(b"relay_tls = tls"),
        [
            "/etc/p.conf:1: relay_tls: `tls` is not starttls, implicit or none (expected \
          `starttls`, `implicit` or `none`)"
        ]
    );
    assert_eq!(
        error_lines(b"relay_tls_verify = true"),
        ["/etc/p.conf:1: relay_tls_verify: `true` is not yes or no (expected yes or no)"]
    );
    let (c, _) = parsed("tls_ca_file = ca.pem");
    assert_eq!(c.tls_ca_file, Some(PathBuf::from("/etc/postling/ca.pem")));
}

#[test]
fn relay_auth_file_needs_a_relay_host_and_tls() {
    let (c, _) = parsed("relay_host = smtp.example.net:587\nrelay_auth_file = relay_auth");
    assert_eq!(
        c.relay_auth_file,
        Some(PathBuf::from("/etc/postling/relay_auth"))
    );
    assert_eq!(c.relay_auth, None, "parse alone reads no file");
    assert_eq!(
        error_lines(b"hostname = a.example\nrelay_auth_file = /etc/postling/relay_auth"),
        [
            "/etc/p.conf:2: relay_auth_file: relay_auth_file is set but relay_host is not; \
          credentials are only sent to a smarthost, never to the MX hosts of other domains \
          (expected relay_host set, or relay_auth_file empty)"
        ]
    );
    assert_eq!(
        error_lines(
            b"relay_auth_file = /etc/postling/relay_auth\nrelay_host = 10.0.0.5\nrelay_tls = none"
        ),
        [
            "/etc/p.conf:1: relay_auth_file: relay_tls = none would send the password in plain \
          text; credentials are only sent over TLS (expected relay_tls = starttls or implicit, \
          or relay_auth_file empty)"
        ]
    );
    // A bad relay_host is one error, not two.
    let errs = error_lines(b"relay_host = a..b\nrelay_auth_file = x");
    assert_eq!(errs.len(), 1, "{errs:?}");
}

#[test]
fn outbound_limits_ports_and_nameservers() {
    let (c, _) = parsed("");
    assert_eq!(c.outbound_port, 25);
    assert!(c.dns_servers.is_empty());
    assert!(!c.outbound_allow_private);
    assert_eq!(
        (c.outbound_concurrency, c.outbound_max_connections),
        (4, 32)
    );
    let (c, w) = parsed(
        "hostname = a.example\noutbound_port = 2525\ndns_servers = 127.0.0.1:5353, [::1]:5353 \
         192.0.2.53\noutbound_allow_private = yes\noutbound_concurrency = 100\n\
         outbound_max_connections = 1000",
    );
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.outbound_port, 2525);
    assert_eq!(
        c.dns_servers,
        [
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
            "[::1]:5353".parse().unwrap(),
            "192.0.2.53:53".parse().unwrap()
        ]
    );
    assert!(c.outbound_allow_private);
    assert_eq!(
        (c.outbound_concurrency, c.outbound_max_connections),
        (100, 1000)
    );
    for (bad, says) in [
        ("outbound_port = 0", "port 0"),
        ("outbound_port = 70000", "above 65535"),
        ("dns_servers = ns.example.net", "names are not allowed"),
        ("dns_servers = 127.0.0.1:0", "port 0"),
        ("dns_servers = [b\u{7}", "\"[b\\u{7}\" is not an IP address"),
        ("outbound_allow_private = maybe", "not yes or no"),
        ("outbound_concurrency = 0", "below 1"),
        ("outbound_concurrency = 101", "above 100"),
        ("outbound_max_connections = 0", "below 1"),
        ("outbound_max_connections = 1001", "above 1000"),
    ] {
        let errs = error_lines(bad.as_bytes());
        let key = bad.split(' ').next().unwrap();
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].starts_with(&format!("/etc/p.conf:1: {key}: ")) && errs[0].contains(says),
            "{bad}: {errs:?}"
        );
    }
    assert_eq!(
        error_lines(b"outbound_max_connections = 8\noutbound_concurrency = 10"),
        [
            "/etc/p.conf:2: outbound_concurrency: outbound_concurrency 10 is more than \
          outbound_max_connections 8 (expected outbound_concurrency no more than \
          outbound_max_connections)"
        ]
    );
    // Against a default: the line of the key that was set.
    let errs = error_lines(b"# x\noutbound_max_connections = 2");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("/etc/p.conf:2: outbound_max_connections: outbound_concurrency 4"),
        "{errs:?}"
    );
}

#[test]
fn outbound_timeouts_default_to_rfc_5321_and_refuse_zero() {
    use crate::proto::smtp_client::Timeouts;
    let (c, _) = parsed("");
    assert_eq!(c.outbound_timeouts, Timeouts::default());
    assert_eq!(c.outbound_connect_timeout, Duration::from_secs(30));
    let t = c.outbound_timeouts;
    let m = |n: u64| Duration::from_secs(n * 60);
    assert_eq!(
        [
            t.greeting,
            t.command,
            t.mail,
            t.rcpt,
            t.data_init,
            t.data_block,
            t.data_end
        ],
        [m(5), m(5), m(5), m(5), m(2), m(3), m(10)]
    );
    let (c, _) = parsed(
        "outbound_connect_timeout = 5s\noutbound_greeting_timeout = 1s\n\
         outbound_command_timeout = 2s\noutbound_mail_timeout = 3s\noutbound_rcpt_timeout = 4s\n\
         outbound_data_init_timeout = 5\noutbound_data_block_timeout = 6s\n\
         outbound_data_end_timeout = 1h",
    );
    let s = Duration::from_secs;
    assert_eq!(c.outbound_connect_timeout, s(5));
    let t = c.outbound_timeouts;
    assert_eq!(
        [
            t.greeting,
            t.command,
            t.mail,
            t.rcpt,
            t.data_init,
            t.data_block,
            t.data_end
        ],
        [s(1), s(2), s(3), s(4), s(5), s(6), s(3600)]
    );
    for key in [
        "outbound_connect_timeout",
        "outbound_greeting_timeout",
        "outbound_command_timeout",
        "outbound_mail_timeout",
        "outbound_rcpt_timeout",
        "outbound_data_init_timeout",
        "outbound_data_block_timeout",
        "outbound_data_end_timeout",
    ] {
        assert_eq!(
            error_lines(format!("{key} = 0").as_bytes()),
            [format!(
                "/etc/p.conf:1: {key}: `0` is too short: 1s is the least (expected {DURATION})"
            )]
        );
    }
}

#[test]
fn relay_auth_text_takes_one_line_of_user_and_password() {
    let creds = |t: &str| values::relay_auth_text(t.as_bytes());
    let c = creds("# my provider\n\n  alice@example.net   pass word with  spaces  \r\n# end\n")
        .unwrap();
    assert_eq!(c.user, "alice@example.net");
    assert_eq!(c.password, "pass word with  spaces");
    let c = creds("bob\ts#cret").unwrap();
    assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "s#cret"));
    for (text, says) in [
        ("", "holds no `user password` line"),
        ("# only a comment\n\n", "holds no `user password` line"),
        ("alice\n", "line 1 has a user name but no password"),
        (
            "alice pw-first\n#\nbob pw-second\n",
            "line 3 is a second credential line (the first is line 1)",
        ),
        ("alice p\u{7f}w\n", "line 1 contains a control character"),
    ] {
        let e = creds(text).unwrap_err();
        assert!(e.contains(says), "{text:?}: {e}");
        assert!(!e.contains("pw-"), "never shows a password: {e}");
    }
    let long = format!("alice {}", "x".repeat(256));
    assert!(
        creds(&long)
            .unwrap_err()
            .contains("password is longer than 255")
    );
    assert!(
        values::relay_auth_text(b"alice \xff\n")
            .unwrap_err()
            .contains("line 1 is not valid UTF-8")
    );
}
