//! The `postling` command: parses the command line, loads the config, binds, and runs the
//! reactor. Exit status: 0 success, 64 bad usage, 78 config error, 71 OS failure at start;
//! `postling queue …` adds 66, 74, 75 and 77 (see `control::cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use log::{debug, error, info, warn};

use postling::config::Config;
use postling::daemon::pidfile::{PidFile, Released};
use postling::daemon::{self, Detached, Readiness, StartError, privilege};
use postling::hosts::Services;
use postling::listen;
use postling::reactor::{Reactor, Settings};

const EX_USAGE: u8 = 64;
const EX_OSERR: u8 = 71;
const EX_CONFIG: u8 = 78;
const DEFAULT_CONFIG: &str = "/etc/postling/postling.conf";

/// The help text. Written out rather than made by `getopts::Options::usage`, whose formatting
/// (with the unicode-width tables) cost about 10 KB of a binary that must stay within 3 MiB.
const USAGE: &str = "\
Usage: postling [-c FILE] [-f] [-t] [-q] [-v] [-V] [-h]
       postling [-c FILE] queue list | flush [ID...] | hold ID... | release ID...
                                | delete ID...|all | bounce ID...
       postling passwd USER   (reads a password from stdin, prints the users-file line)
       postling [-c FILE] sendmail [-t] [-i] [-f ADDR] [-F NAME] [-bm|-bs|-bp|-q] [RCPT...]
       (also installed as sendmail and mailq; see doc/operations.md)
A small SMTP, POP3 and POP2 mail server. Config file default: /etc/postling/postling.conf

Options:
    -c FILE             config file (default /etc/postling/postling.conf)
    -f                  stay in the foreground
    -t                  check the config (and the files it names) and exit
    -q                  print the mail queue and exit
    -v                  more logging (debug)
    -V                  print the version and exit
    -h                  print this help and exit
";

/// The options `USAGE` lists.
fn options() -> getopts::Options {
    let mut opts = getopts::Options::new();
    opts.optopt("c", "", "", "FILE");
    for flag in ["f", "t", "q", "v", "V", "h"] {
        opts.optflag(flag, "", "");
    }
    opts
}

fn main() -> ExitCode {
    postling::buf::allocate_buffers_outside_the_heap();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let called = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if called == "sendmail" || called == "mailq" {
        return postling::sendmail::main(&args, called == "mailq", None);
    }
    if args.first().is_some_and(|a| a == "passwd") {
        return postling::auth::passwd_main(&args[1..]);
    }
    if let Some((config, rest)) = sendmail_words(&args) {
        return postling::sendmail::main(rest, false, config);
    }
    let opts = options();
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("postling: {e}\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if m.opt_present("h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if m.opt_present("V") {
        println!("postling {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let queue_cmd = match m.free.split_first() {
        Some((first, rest)) if first == "queue" => match rest.first().map(String::as_str) {
            Some("list") if rest.len() == 1 => Some(None),
            Some("list") => {
                eprintln!("postling: queue list takes no arguments\n{USAGE}");
                return ExitCode::from(EX_USAGE);
            }
            _ => match postling::control::Command::parse(rest) {
                Ok(cmd) => Some(Some(cmd)),
                Err(e) => {
                    eprintln!("postling: {e}\n{USAGE}");
                    return ExitCode::from(EX_USAGE);
                }
            },
        },
        _ => None,
    };
    if queue_cmd.is_none() && !m.free.is_empty() {
        eprintln!("postling: unexpected argument '{}'\n{USAGE}", m.free[0]);
        return ExitCode::from(EX_USAGE);
    }
    let path = PathBuf::from(m.opt_str("c").unwrap_or_else(|| DEFAULT_CONFIG.to_string()));

    let checking = m.opt_present("t");
    // The queue listing and commands run as any user and never talk to the relay, so they do
    // not read relay_auth_file (mode 600); the daemon and `-t` do.
    let queue_only = !checking && (m.opt_present("q") || queue_cmd.is_some());
    let loaded = if queue_only {
        Config::load_without_secrets(&path)
    } else {
        Config::load(&path)
    };
    let (config, warnings) = match loaded {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            let what = if checking { "" } else { "; not started" };
            eprintln!(
                "postling: {} in {}{what}",
                count(errors.len(), "error"),
                path.display()
            );
            return ExitCode::from(EX_CONFIG);
        }
    };
    if checking {
        return check_config(&path, &config, &warnings);
    }
    if m.opt_present("q") || matches!(queue_cmd, Some(None)) {
        return print_queue(&config);
    }
    if let Some(Some(cmd)) = queue_cmd {
        return postling::control::cli::run(&config, &cmd);
    }

    let foreground = m.opt_present("f");
    let level = if m.opt_present("v") {
        log::LevelFilter::Debug
    } else {
        config.log_level
    };
    match init_logging(&config, level, foreground) {
        Ok(Some(warning)) => warn!("{warning}"),
        Ok(None) => {}
        Err(line) => {
            eprintln!("postling: {line}");
            return ExitCode::from(EX_OSERR);
        }
    }
    for w in &warnings {
        warn!("{w}");
    }
    run(config, foreground)
}

/// `postling sendmail ARGS`, `postling -c FILE sendmail ARGS` or `postling -cFILE sendmail
/// ARGS`: the config given before the word, and the words after it.
fn sendmail_words(args: &[String]) -> Option<(Option<PathBuf>, &[String])> {
    match args {
        [word, rest @ ..] if word == "sendmail" => Some((None, rest)),
        [c, file, word, rest @ ..] if c == "-c" && word == "sendmail" => {
            Some((Some(PathBuf::from(file)), rest))
        }
        [c, word, rest @ ..] if c.len() > 2 && c.starts_with("-c") && word == "sendmail" => {
            Some((Some(PathBuf::from(&c[2..])), rest))
        }
        _ => None,
    }
}

/// `-t`: the files the config names, every warning and error, and always one summary line.
fn check_config(path: &std::path::Path, config: &Config, warnings: &[String]) -> ExitCode {
    let (errors, file_warnings) = config.check();
    let warning_count = warnings.len() + file_warnings.len();
    for w in warnings.iter().chain(&file_warnings) {
        eprintln!("postling: warning: {w}");
    }
    for e in &errors {
        eprintln!("{e}");
    }
    let warned = if warning_count == 0 {
        String::new()
    } else {
        format!(" ({})", count(warning_count, "warning"))
    };
    if errors.is_empty() {
        println!("postling: config OK{warned}");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "postling: {} in {}{warned}",
            count(errors.len(), "error"),
            path.display()
        );
        ExitCode::from(EX_CONFIG)
    }
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `-q`: reads the spool directly, so it works whether or not the daemon is running.
fn print_queue(config: &Config) -> ExitCode {
    ExitCode::from(postling::sendmail::print_queue(config))
}

/// Log lines go to `log_file` when set, else to stderr with `-f` and to syslog once detached
/// (see `daemon::log`). Ok carries a warning to log (no syslog socket: stderr instead).
fn init_logging(
    config: &Config,
    level: log::LevelFilter,
    foreground: bool,
) -> Result<Option<String>, String> {
    daemon::log::init(
        daemon::log::destination(config.log_file.as_deref(), foreground),
        level,
    )
}

/// Start-up order, each step only after the previous one worked, so postling never starts
/// half-way: who to become (`user` looked up), the pid file locked (a second instance stops
/// here, naming the first), every listener bound, detach (the parent waits for the daemon's
/// report), then in the daemon: its pid written, state directories created and owned, the
/// privilege drop, the directories checked as the running user, the disk executor (its helper
/// process forked now: single-threaded, already unprivileged, before the spool and the
/// directory are loaded, so the child starts small), the reactor, `ready`.
fn run(config: Config, foreground: bool) -> ExitCode {
    info!(
        "postling {} starting with {}",
        env!("CARGO_PKG_VERSION"),
        config.path.display()
    );
    info!(
        "hostname {}, local domains {}",
        config.hostname,
        config.domains.join(", ")
    );
    info!(
        "spool {}, mailboxes {}, users {}, aliases {}",
        config.spool_dir.display(),
        config.mailbox_dir.display(),
        config.users_file.display(),
        config.aliases_file.display()
    );
    let identity = match privilege::plan(config.user.as_deref()) {
        Ok(i) => i,
        Err(e) => return start_failed(Readiness::foreground(), None, e),
    };
    let mut pid_file = match config.pid_file.as_deref().map(PidFile::lock).transpose() {
        Ok(p) => p,
        Err(e) => return start_failed(Readiness::foreground(), None, e),
    };
    let tls = match config.load_tls() {
        Ok(tls) => tls,
        Err(e) => {
            let e = StartError::config(e.to_string());
            return start_failed(Readiness::foreground(), None, e);
        }
    };
    if let Some(identity) = &tls {
        if let Some(w) = postling::config::tls_expiry_warning(&config, identity) {
            warn!("{w}");
        }
    }
    let listeners = match listen::bind_all(&postling::reactor::wanted_listeners(&config)) {
        Ok(l) => l,
        Err(e) => {
            let e = StartError::os(format!("{e} in {}", config.path.display()));
            return start_failed(Readiness::foreground(), pid_file, e);
        }
    };
    let readiness = if foreground {
        Readiness::foreground()
    } else {
        match daemonize() {
            Ok(Detached::Parent(status)) => return ExitCode::from(status),
            Ok(Detached::Child(r)) => r,
            Err(e) => return start_failed(Readiness::foreground(), pid_file, e),
        }
    };
    if let Err(e) = daemon::settle(&config, &identity, pid_file.as_mut()) {
        return start_failed(readiness, pid_file, e);
    }
    // Logs the backend it chose and why. `disk_io = uring` where io_uring is unusable ends
    // here (exit 71).
    let exec = match postling::exec::Executor::choose(config.disk_io) {
        Ok(e) => e,
        Err(e) => return start_failed(readiness, pid_file, StartError::os(e)),
    };
    let services = match Services::start(&config) {
        Ok((services, warnings)) => {
            for w in &warnings {
                warn!("{w}");
            }
            services
        }
        Err(e) => return start_failed(readiness, pid_file, e),
    };
    let mut settings = Settings::from_config(&config);
    settings.set_tls(tls.map(|identity| identity.config));
    let mut reactor = match Reactor::new(listeners, settings, services, config.path.clone()) {
        Ok(r) => r,
        Err(e) => {
            let e = StartError::os(format!("cannot start the reactor: {e}"));
            return start_failed(readiness, pid_file, e);
        }
    };
    if let Err(e) = reactor.attach_executor(exec) {
        let e = StartError::os(format!(
            "cannot register the disk executor in the poll: {e}"
        ));
        return start_failed(readiness, pid_file, e);
    }
    if let Err(e) =
        reactor.attach_outbound(postling::outbound::OutboundSettings::from_config(&config))
    {
        let e = StartError::os(format!("cannot start remote delivery: {e}"));
        return start_failed(readiness, pid_file, e);
    }
    if let Some(pid) = reactor.helper_pid() {
        info!("disk_io: helper process pid {pid}");
    }
    info!("ready");
    readiness.ready();
    let status = match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("reactor failed: {e}");
            ExitCode::from(EX_OSERR)
        }
    };
    if let Some(p) = pid_file {
        release_pid_file(p);
    }
    status
}

/// A start-up failure: the line goes to the log (unless that is stderr anyway), the pid file
/// is released first (so whoever waits sees a consistent state), then the line reaches the
/// starting terminal or init script: directly, or through the detached daemon's report.
fn start_failed(readiness: Readiness, pid_file: Option<PidFile>, e: StartError) -> ExitCode {
    if !daemon::log::logs_to_stderr() {
        error!("{e}");
    }
    if let Some(p) = pid_file {
        release_pid_file(p);
    }
    readiness.fail(&e);
    ExitCode::from(e.status)
}

fn release_pid_file(p: PidFile) {
    let path = p.path().to_path_buf();
    match p.release() {
        Ok(Released::Removed) => debug!("removed the pid file {}", path.display()),
        Ok(Released::Truncated) => info!(
            "emptied the pid file {} (its directory is not writable by the running user, so it cannot be removed)",
            path.display()
        ),
        Ok(Released::NotOurs) => warn!(
            "the pid file {} was replaced or removed while running; left alone",
            path.display()
        ),
        Err(e) => warn!("cannot remove the pid file {}: {e}", path.display()),
    }
}

/// Without `-f`: fork with a report pipe (see `daemon::detach`). Runs after the config is
/// valid and every listener is bound, and while the process still has a single thread.
fn daemonize() -> Result<Detached, StartError> {
    daemon::detach()
}
