//! TEMPORARY: a minimal loader until the real parser (branch `config`) is merged.
use crate::config::Config;
use std::path::Path;

#[derive(Debug)]
pub struct StubError(pub String);
impl std::fmt::Display for StubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn dur(v: &str) -> std::time::Duration {
    let (n, m) = match v.as_bytes().last() {
        Some(b'm') => (&v[..v.len() - 1], 60),
        Some(b's') => (&v[..v.len() - 1], 1),
        _ => (v, 1),
    };
    std::time::Duration::from_secs(n.parse::<u64>().unwrap_or(1) * m)
}

impl Config {
    pub fn load(path: &Path) -> Result<(Config, Vec<String>), Vec<StubError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![StubError(format!("{}: {e}", path.display()))])?;
        let mut c = Config::defaults(path);
        let mut warnings = vec![];
        let rel = |v: &str| path.parent().unwrap_or(Path::new("")).join(v);
        let opt_path = |v: &str| (!v.is_empty()).then(|| rel(v));
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            let addrs = |v: &str| {
                v.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            };
            match k {
                "hostname" => {
                    c.hostname = v.into();
                    c.hostname_from_system = false;
                }
                "smtp_listen" => c.smtp_listen = addrs(v),
                "pop3_listen" => c.pop3_listen = addrs(v),
                "pop2_listen" => c.pop2_listen = addrs(v),
                "smtp_timeout" => c.smtp_timeout = dur(v),
                "pop3_timeout" => c.pop3_timeout = dur(v),
                "max_connections" => c.max_connections = v.parse().unwrap_or(1),
                "max_connections_per_ip" => c.max_connections_per_ip = v.parse().unwrap_or(1),
                "pid_file" => c.pid_file = opt_path(v),
                "log_file" => c.log_file = opt_path(v),
                "user" => c.user = (!v.is_empty()).then(|| v.to_string()),
                "spool_dir" => c.spool_dir = rel(v),
                "mailbox_dir" => c.mailbox_dir = rel(v),
                "users_file" => c.users_file = rel(v),
                "aliases_file" => c.aliases_file = rel(v),
                _ => {}
            }
        }
        if !c.hostname.contains('.') {
            warnings.push(format!("hostname '{}' is not fully qualified", c.hostname));
        }
        Ok((c, warnings))
    }
    pub fn check_files(&self) -> Vec<StubError> {
        vec![]
    }
}
