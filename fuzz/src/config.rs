//! The config parser under the fuzzer: the input is the whole file, loaded with
//! `Config::load` from a scratch file (the parser reads only through `load`).
//!
//! Checks: no panic; a refused file gets errors that each start with the file's path, name a
//! line that exists and hold no control character; an accepted file holds only values inside
//! the documented bounds; and loading the same bytes twice gives the same result.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use postling::config::{Config, ConfigError};
use postling::limits;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("postling-fuzz-{}.conf", std::process::id()))
    })
}

fn check_errors(path: &Path, data: &[u8], errors: &[ConfigError]) {
    assert!(!errors.is_empty(), "refused without an error");
    let lines = data.split(|&b| b == b'\n').count();
    for e in errors {
        let text = e.to_string();
        let prefix = format!("{}:", path.display());
        assert!(
            text.starts_with(&prefix),
            "an error without its file: {text}"
        );
        if let ConfigError::Bad {
            line: Some(n), key, ..
        } = e
        {
            assert!(*n >= 1 && *n <= lines, "line {n} of a {lines}-line file");
            assert!(!key.is_empty(), "an error without its key: {text}");
        }
        // Values are shown escaped, so a line of garbage cannot make a garbage message.
        assert!(
            !text.chars().any(char::is_control),
            "a control character in an error: {text:?}"
        );
    }
}

fn check_config(c: &Config) {
    let conn = 1..=limits::CONFIG_MAX_CONNECTIONS;
    assert!(
        conn.contains(&c.max_connections),
        "max_connections {}",
        c.max_connections
    );
    assert!(
        conn.contains(&c.max_connections_per_ip),
        "max_connections_per_ip {}",
        c.max_connections_per_ip
    );
    for (name, d) in [
        ("smtp_timeout", c.smtp_timeout),
        ("pop3_timeout", c.pop3_timeout),
        ("retry_min", c.retry_min),
        ("retry_max", c.retry_max),
        ("queue_lifetime", c.queue_lifetime),
        ("auth_failure_delay", c.auth_failure_delay),
    ] {
        assert!(
            !d.is_zero() && d <= limits::CONFIG_MAX_DURATION,
            "{name} = {d:?}"
        );
    }
    assert!(c.retry_min <= c.retry_max, "retry_min above retry_max");
    let t = c.outbound_timeouts;
    for (name, d) in [
        ("outbound_connect_timeout", c.outbound_connect_timeout),
        ("outbound_greeting_timeout", t.greeting),
        ("outbound_command_timeout", t.command),
        ("outbound_mail_timeout", t.mail),
        ("outbound_rcpt_timeout", t.rcpt),
        ("outbound_data_init_timeout", t.data_init),
        ("outbound_data_block_timeout", t.data_block),
        ("outbound_data_end_timeout", t.data_end),
    ] {
        assert!(
            !d.is_zero() && d <= limits::CONFIG_MAX_DURATION,
            "{name} = {d:?}"
        );
    }
    assert!(
        (1..=limits::OUTBOUND_CONCURRENCY_MAX).contains(&c.outbound_concurrency)
            && (1..=limits::OUTBOUND_MAX_CONNECTIONS_MAX).contains(&c.outbound_max_connections)
            && c.outbound_concurrency <= c.outbound_max_connections,
        "outbound limits {} / {}",
        c.outbound_concurrency,
        c.outbound_max_connections
    );
    assert!(c.outbound_port != 0, "outbound_port 0");
    assert!(
        c.dns_servers.len() <= limits::DNS_MAX_SERVERS,
        "too many dns_servers"
    );
    if let Some(r) = &c.relay_host {
        assert!(r.port != 0 && !r.host.is_empty(), "relay_host {r:?}");
        assert!(!r.host.contains(['[', ']']), "brackets kept: {r:?}");
    }
    if c.relay_auth.is_some() {
        assert!(
            c.relay_host.is_some() && c.relay_tls != postling::config::values::RelayTls::None,
            "credentials without a TLS smarthost"
        );
    }
    assert!(c.auth_failure_delay >= limits::AUTH_FAILURE_DELAY_MIN);
    assert!(!c.hostname.is_empty(), "an empty hostname");
    assert!(!c.domains.is_empty(), "no domains");
    for d in &c.domains {
        assert!(!d.is_empty(), "an empty domain");
        assert_eq!(d, &d.to_lowercase(), "a domain not lower-cased");
    }
    for p in [&c.spool_dir, &c.mailbox_dir, &c.users_file, &c.aliases_file] {
        assert!(p.is_absolute(), "a relative path survived: {}", p.display());
    }
}

/// One fuzz case: `data` is the whole config file.
pub fn fuzz(data: &[u8]) {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let first = Config::load(path);
    match &first {
        Ok((c, _warnings)) => check_config(c),
        Err(errors) => check_errors(path, data, errors),
    }
    let again = Config::load(path);
    assert_eq!(
        format!("{first:?}"),
        format!("{again:?}"),
        "the same file loaded twice differently"
    );
}
