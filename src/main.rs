//! The `postling` command: parses the command line, loads the config, binds, and runs the
//! reactor. Exit status: 0 success, 64 bad usage, 78 config error, 71 OS failure at start.

use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info, warn};

use postling::config::Config;
use postling::hosts::Services;
use postling::listen;
use postling::reactor::{Reactor, Settings};

const EX_USAGE: u8 = 64;
const EX_OSERR: u8 = 71;
const EX_CONFIG: u8 = 78;
const DEFAULT_CONFIG: &str = "/etc/postling/postling.conf";

fn usage(opts: &getopts::Options) -> String {
    opts.usage(&format!(
        "Usage: postling [-c FILE] [-f] [-t] [-q] [-v] [-V] [-h]\n\
         \x20      postling passwd USER   (reads a password from stdin, prints the users-file line)\n\
         A small SMTP, POP3 and POP2 mail server. Config file default: {DEFAULT_CONFIG}"
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "passwd") {
        return postling::auth::passwd_main(&args[1..]);
    }
    let mut opts = getopts::Options::new();
    opts.optopt(
        "c",
        "",
        "config file (default /etc/postling/postling.conf)",
        "FILE",
    );
    opts.optflag("f", "", "stay in the foreground");
    opts.optflag(
        "t",
        "",
        "check the config (and the files it names) and exit",
    );
    opts.optflag("q", "", "print the mail queue and exit");
    opts.optflag("v", "", "more logging (debug)");
    opts.optflag("V", "", "print the version and exit");
    opts.optflag("h", "", "print this help and exit");
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("postling: {e}\n{}", usage(&opts));
            return ExitCode::from(EX_USAGE);
        }
    };
    if m.opt_present("h") {
        print!("{}", usage(&opts));
        return ExitCode::SUCCESS;
    }
    if m.opt_present("V") {
        println!("postling {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if !m.free.is_empty() {
        eprintln!(
            "postling: unexpected argument '{}'\n{}",
            m.free[0],
            usage(&opts)
        );
        return ExitCode::from(EX_USAGE);
    }
    let path = PathBuf::from(m.opt_str("c").unwrap_or_else(|| DEFAULT_CONFIG.to_string()));

    let (config, warnings) = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "postling: {} error(s) in the configuration; not started",
                errors.len()
            );
            return ExitCode::from(EX_CONFIG);
        }
    };
    if m.opt_present("t") {
        let (errors, file_warnings) = config.check();
        for w in warnings.iter().chain(&file_warnings) {
            eprintln!("postling: warning: {w}");
        }
        if errors.is_empty() {
            println!("postling: config OK");
            return ExitCode::SUCCESS;
        }
        for e in &errors {
            eprintln!("{e}");
        }
        return ExitCode::from(EX_CONFIG);
    }
    if m.opt_present("q") {
        return print_queue(&config);
    }

    let foreground = m.opt_present("f");
    let level = if m.opt_present("v") {
        log::LevelFilter::Debug
    } else {
        config.log_level
    };
    if let Err(e) = init_logging(&config, level) {
        eprintln!("postling: cannot open log file: {e}");
        return ExitCode::from(EX_OSERR);
    }
    for w in &warnings {
        warn!("{w}");
    }
    run(config, foreground)
}

/// `-q`: reads the spool directly, so it works whether or not the daemon runs.
fn print_queue(config: &Config) -> ExitCode {
    match postling::spool::list_queue(&config.spool_dir) {
        Ok(entries) => {
            print!(
                "{}",
                postling::spool::format_queue(&entries, std::time::SystemTime::now())
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "Mail queue is empty (no spool at {} yet)",
                config.spool_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "postling: cannot read the queue in {}: {e}",
                config.spool_dir.display()
            );
            ExitCode::from(EX_OSERR)
        }
    }
}

fn init_logging(config: &Config, level: log::LevelFilter) -> std::io::Result<()> {
    let log_config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_location_level(log::LevelFilter::Off)
        .build();
    let result = match &config.log_file {
        Some(p) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            simplelog::WriteLogger::init(level, log_config, file)
        }
        None => simplelog::WriteLogger::init(level, log_config, std::io::stderr()),
    };
    // Only fails when a logger is already set, which cannot happen here.
    let _ = result;
    Ok(())
}

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
    let listeners = match listen::bind_all(
        &config.smtp_listen,
        &config.pop3_listen,
        &config.pop2_listen,
    ) {
        Ok(l) => l,
        Err(e) => {
            let line = format!("{e} in {}", config.path.display());
            // The init script reads stderr; the log file (if any) gets the same line.
            eprintln!("postling: {line}");
            if config.log_file.is_some() {
                error!("{line}");
            }
            return ExitCode::from(EX_OSERR);
        }
    };
    if !foreground {
        if let Err(e) = daemonize() {
            eprintln!("postling: cannot detach: {e}");
            return ExitCode::from(EX_OSERR);
        }
    }
    let services = match Services::start(&config) {
        Ok((services, warnings)) => {
            for w in &warnings {
                warn!("{w}");
            }
            services
        }
        Err(e) => {
            eprintln!("postling: {e}");
            error!("{e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let settings = Settings::from_config(&config);
    let mut reactor = match Reactor::new(listeners, settings, services, config.path.clone()) {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the reactor: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    info!("ready");
    match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("reactor failed: {e}");
            ExitCode::from(EX_OSERR)
        }
    }
}

/// Detaches from the terminal: fork, setsid, stdio to /dev/null. Runs only after the config is
/// valid and every listener is bound, so an init script sees any failure as an exit status.
fn daemonize() -> std::io::Result<()> {
    // SAFETY: single-threaded at this point; the parent exits immediately without running
    // destructors that could touch shared state.
    unsafe {
        match libc::fork() {
            -1 => return Err(std::io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() == -1 {
            return Err(std::io::Error::last_os_error());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        if null > 2 {
            libc::close(null);
        }
    }
    Ok(())
}
