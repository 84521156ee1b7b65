//! Documentation generated from the key table (`keys::KEYS`): the example config, the
//! configuration reference (`doc/configuration.md`) and the man pages `postling(8)` and
//! `postling.conf(5)`. Pure functions; a unit test keeps the committed files equal to their
//! output (`POSTLING_REGEN_DOCS=1 cargo test --lib config` rewrites them).

use super::keys::{DefaultValue, KEYS, KeySpec};

/// The command that rewrites the generated files.
pub const REGEN_COMMAND: &str = "POSTLING_REGEN_DOCS=1 cargo test --lib config";

/// The syntax of the file, one rule per item; `backticks` mark literal text.
pub const SYNTAX: &[&str] = &[
    "One `key = value` per line; blank lines are ignored.",
    "`#` at the start of a line or after whitespace begins a comment that runs to the end of \
     the line; inside a word (`a#b`) it is part of the value.",
    "Each key may appear once. An unknown key is an error that names the nearest known key.",
    "Values are trimmed of surrounding whitespace. Lists are separated by commas; empty items \
     are ignored. An empty value (`key =`) turns off what the key describes, where that is \
     allowed.",
    "Relative paths are relative to the directory of the config file.",
    "Sizes are a whole number of bytes, or with a binary suffix `K`, `M` or `G` (1K = 1024).",
    "Durations are a whole number with a unit `s`, `m`, `h` or `d`; a plain number is seconds. \
     Zero is refused, and so is anything above 3650d.",
    "Every error in the file is reported at once, each as `FILE:LINE: key: what is wrong \
     (expected ...)`; `postling -t` checks a file, and the files it names, without starting.",
];

fn default_text(spec: &KeySpec) -> String {
    match spec.default {
        DefaultValue::Text(t) => format!("`{t}`"),
        DefaultValue::Empty => "empty".to_string(),
        DefaultValue::Derived { text, .. } => text.to_string(),
    }
}

/// Greedy word wrap of `text` into lines of at most `width` characters after the prefix:
/// `first` before the first line, `rest` before the others.
fn wrap_hanging(text: &str, width: usize, first: &str, rest: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(if out.is_empty() { first } else { rest });
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(if out.is_empty() { first } else { rest });
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn wrap(text: &str, width: usize, prefix: &str) -> String {
    wrap_hanging(text, width, prefix, prefix)
}

/// `conf/postling.conf.example`: every key commented out, with its meaning, form and default.
pub fn example_conf() -> String {
    let mut out = String::new();
    out.push_str(
        "# postling.conf.example: every configuration key with its meaning and default.\n\
         #\n\
         # Generated from the key table in src/config/keys.rs; edit the table, then run\n",
    );
    out.push_str(&format!("#   {REGEN_COMMAND}\n"));
    out.push_str(
        "# Copy it to /etc/postling/postling.conf and uncomment the lines you change; a\n\
         # commented-out key has the default shown. Check the result with `postling -t`.\n\
         #\n\
         # Syntax:\n",
    );
    for rule in SYNTAX {
        out.push_str(&wrap_hanging(rule, 72, "#   - ", "#     "));
    }
    for spec in KEYS {
        out.push_str("\n# ---- ");
        out.push_str(spec.name);
        out.push(' ');
        out.push_str(&"-".repeat(70usize.saturating_sub(spec.name.len())));
        out.push('\n');
        out.push_str(&wrap(spec.meaning, 76, "# "));
        out.push_str(&wrap(&format!("Expected: {}.", spec.form), 76, "# "));
        let line = match spec.default {
            DefaultValue::Text(t) => {
                out.push_str(&wrap(&format!("Default: {t}"), 76, "# "));
                format!("#{} = {t}", spec.name)
            }
            DefaultValue::Empty => {
                out.push_str("# Default: empty.\n");
                format!("#{} =", spec.name)
            }
            DefaultValue::Derived { text, example } => {
                out.push_str(&wrap(&format!("Default: {text}. For example:"), 76, "# "));
                format!("#{} = {example}", spec.name)
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// `doc/configuration.md`: the syntax of the file and every key.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "<!-- Generated from src/config/keys.rs by `{REGEN_COMMAND}`; do not edit. -->\n"
    ));
    out.push_str("# Configuration reference\n\n");
    out.push_str(
        "Generated from the key table the parser itself uses (`src/config/keys.rs`), as are\n\
         `conf/postling.conf.example` and the man page `postling.conf(5)`\n",
    );
    out.push_str(&format!(
        "(`man -l doc/postling.conf.5`); after changing the table run `{REGEN_COMMAND}`.\n\n"
    ));
    out.push_str("## Syntax\n\n");
    for rule in SYNTAX {
        out.push_str("- ");
        out.push_str(rule);
        out.push('\n');
    }
    out.push_str(
        "\n## Keys\n\n| key | default | expected | meaning |\n| --- | --- | --- | --- |\n",
    );
    for spec in KEYS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            spec.name,
            markdown_cell(&default_text(spec)),
            markdown_cell(spec.form),
            markdown_cell(spec.meaning)
        ));
    }
    out
}

/// Roff text for one line of prose: backslashes escaped, `code` in bold with real minus
/// signs, and a leading `.` or `'` guarded so it is not read as a request.
fn roff(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        let escaped = part.replace('\\', "\\e");
        if i % 2 == 1 {
            out.push_str("\\fB");
            out.push_str(&escaped.replace('-', "\\-"));
            out.push_str("\\fR");
        } else {
            out.push_str(&escaped);
        }
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

fn roff_tagged(out: &mut String, tag: &str, body: &[&str]) {
    out.push_str(".TP\n");
    out.push_str(&roff(tag));
    out.push('\n');
    for (i, paragraph) in body.iter().enumerate() {
        if i > 0 {
            out.push_str(".br\n");
        }
        out.push_str(&roff(paragraph));
        out.push('\n');
    }
}

const DESCRIPTION: &[&str] = &[
    "`postling` is a small, hard-to-break mail server for low-resource machines. One process \
     with one thread serves every SMTP, POP3 and POP2 connection, keeps accepted mail in a \
     durable spool, and delivers it into local Maildirs. It starts without DNS, says plainly \
     what is missing, never spins the CPU and never lets one client stall the others.",
    "Without `-f` it detaches (fork, setsid, standard streams to /dev/null) only after the \
     configuration is valid and every listener is bound, so an init script sees any failure \
     as a non-zero exit status with the message on standard error.",
    "`postling passwd USER` reads a password from standard input (twice when that is a \
     terminal) and prints the line to put in the users file (`USER:{SHA512-CRYPT}$6$...`).",
    "`postling queue` controls the mail queue, with the daemon running or stopped (the daemon \
     acts on a command at once, without a restart): `queue list` prints it as `-q` does (held \
     messages show `HELD`); `queue flush` makes every queued message due now, `queue flush ID...` \
     those; `queue hold ID...` keeps messages from delivery (a held message is never \
     attempted and never expires while held; flushing leaves it held); `queue release ID...` \
     ends the hold and makes them due now; `queue delete ID...` (or `queue delete all`) removes \
     messages without a bounce; `queue bounce ID...` fails every pending recipient now with \
     `5.0.0 returned by the administrator` and sends the sender a delivery status \
     notification. Every ID is processed even when one is unknown. While the daemon runs, the \
     command is sent over `spool_dir/control.sock` and carried out by the daemon between two \
     delivery steps; with no daemon the command changes the spool itself under the spool \
     lock. Run it as root or as the user postling runs as.",
    "Invoked as `sendmail` (the link /usr/sbin/sendmail, or `postling [-c FILE] sendmail`) it \
     reads a message on standard input and drops it into the spool's `maildrop/` directory, \
     from which the daemon queues it at once (or at its next start): `-t` takes the recipients \
     from To, Cc and Bcc, `-i` or `-oi` keeps a line holding a single dot, `-f` sets the \
     envelope sender (root and the daemon's user only; others always send as their own \
     address), `-F` the full name of a generated From, `-C` the configuration, `-bp` (or the \
     name `mailq`) lists the queue, `-q` asks the daemon for a queue run, `-bs` speaks SMTP on \
     standard input and output. Exit status per sysexits.h: 64 usage, 65 bad or too large \
     input, 67 bad recipient, 75 temporary, 77 maildrop not writable, 78 configuration.",
];

const OPTIONS: &[(&str, &str)] = &[
    (
        "`-c` FILE",
        "Read the configuration from FILE instead of /etc/postling/postling.conf.",
    ),
    (
        "`-f`",
        "Stay in the foreground; with an empty `log_file`, log to standard error.",
    ),
    (
        "`-t`",
        "Check the configuration and the files it names (users and aliases files readable and \
         valid; spool and mailbox directories, if they exist, are directories; the directories \
         of the log and pid files exist; `user` exists), print `postling: config OK` or every \
         error, and exit. The spool and mailbox directories need not exist yet.",
    ),
    (
        "`-q`",
        "Print the mail queue and exit (the same as `postling queue list`). It is read from the \
         spool directly, whether or not the daemon runs; held messages show `HELD` as their \
         next attempt.",
    ),
    ("`-v`", "Log at debug level, whatever `log_level` says."),
    ("`-V`", "Print the version and exit."),
    ("`-h`", "Print the usage and exit."),
];

const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Success: also `-h`, `-V`, `-t` with a good configuration, and a clean stop on \
         SIGTERM or SIGINT.",
    ),
    ("64", "Bad usage: an unknown option or a stray argument."),
    (
        "66",
        "`postling queue`: an ID names no message in the queue (or is not a queue id); the \
         other IDs were processed.",
    ),
    (
        "71",
        "An operating system failure at start: a listener cannot be bound (the message names \
         the protocol, the address, the error and what to check), or a state directory cannot \
         be created.",
    ),
    (
        "74",
        "`postling queue`: the spool refused a change (an I/O error); that message is as it was.",
    ),
    (
        "75",
        "`postling queue`: a daemon holds the spool but did not answer on its control socket \
         (starting, stopping, or stuck). If it was cut off while waiting for the answer, the \
         command may have been carried out: check with `postling queue list`.",
    ),
    (
        "77",
        "`postling queue`: the spool cannot be reached with the caller's rights (run it as root \
         or as the user postling runs as).",
    ),
    (
        "78",
        "A configuration error; every error is printed as `FILE:LINE: key: what is wrong \
         (expected ...)`.",
    ),
];

const SIGNALS: &[(&str, &str)] = &[
    (
        "HUP",
        "Re-read the configuration, users and aliases. A bad new configuration is logged and \
         the running one kept; changed listen addresses are bound or closed; open sessions \
         continue.",
    ),
    (
        "TERM, INT",
        "Stop accepting, send every session its protocol's shutdown reply, finish a commit \
         already in flight, and exit 0 within two seconds.",
    ),
    (
        "USR1",
        "Reopen `log_file`, for log rotation: rename the file, then send the signal.",
    ),
    (
        "USR2",
        "Make every queued message due for delivery now (held messages stay held), and look \
         at `maildrop/` again (`sendmail -q` sends it).",
    ),
];

const FILES: &[(&str, &str)] = &[
    ("/etc/postling/postling.conf", "The configuration file."),
    (
        "/etc/postling/users",
        "Users and password hashes (`users_file`).",
    ),
    ("/etc/postling/aliases", "Aliases (`aliases_file`)."),
    ("/var/spool/postling", "The mail queue (`spool_dir`)."),
    (
        "/var/spool/postling/control.sock",
        "The running daemon's control socket for `postling queue` (mode 0600).",
    ),
    (
        "/var/spool/postling/maildrop",
        "Messages from `sendmail` waiting for the daemon (mode 1733); refused ones in `bad/`.",
    ),
    (
        "/usr/sbin/sendmail, /usr/sbin/mailq",
        "Links to postling made by the installer where no other mail system has them.",
    ),
    (
        "/var/mail/postling/USER",
        "The Maildir of each user (`mailbox_dir`).",
    ),
];

fn roff_section_tagged(out: &mut String, section: &str, items: &[(&str, &str)]) {
    out.push_str(&format!(".SH {section}\n"));
    for (tag, text) in items {
        roff_tagged(out, &format!("`{tag}`"), &[text]);
    }
}

/// The first lines of a generated man page: where it comes from, `.TH` and NAME.
fn man_header(source: &str, title: &str, name: &str) -> String {
    format!(
        ".\\\" Generated from {source} by `{REGEN_COMMAND}`; do not edit.\n.TH {title}\n.SH NAME\n{name}\n"
    )
}

/// `doc/postling.8`: the command, its options, exit status, signals and files.
pub fn man_page() -> String {
    let mut out = man_header(
        "src/config/docs.rs",
        "POSTLING 8 \"\" \"postling\" \"System Manager's Manual\"",
        "postling \\- small SMTP, POP3 and POP2 mail server",
    );
    out.push_str(
        ".SH SYNOPSIS\n.B postling\n\
         [\\fB\\-c\\fR \\fIFILE\\fR] [\\fB\\-f\\fR] [\\fB\\-t\\fR] [\\fB\\-q\\fR] \
         [\\fB\\-v\\fR] [\\fB\\-V\\fR] [\\fB\\-h\\fR]\n\
         .br\n.B postling\n[\\fB\\-c\\fR \\fIFILE\\fR] \\fBqueue\\fR \
         \\fBlist\\fR | \\fBflush\\fR [\\fIID\\fR...] | \\fBhold\\fR \\fIID\\fR... | \
         \\fBrelease\\fR \\fIID\\fR... | \\fBdelete\\fR \\fIID\\fR...|\\fBall\\fR | \
         \\fBbounce\\fR \\fIID\\fR...\n\
         .br\n.B postling passwd\n.I USER\n\
         .br\n.B sendmail\n\
         [\\fB\\-t\\fR] [\\fB\\-i\\fR] [\\fB\\-f\\fR \\fIADDR\\fR] [\\fB\\-F\\fR \\fINAME\\fR] \
         [\\fB\\-C\\fR \\fIFILE\\fR] [\\fB\\-v\\fR] [\\fB\\-bm\\fR|\\fB\\-bs\\fR|\\fB\\-bp\\fR|\\fB\\-q\\fR] \
         [\\fIRECIPIENT\\fR ...]\n\
         .br\n.B mailq\n",
    );
    out.push_str(".SH DESCRIPTION\n");
    for (i, paragraph) in DESCRIPTION.iter().enumerate() {
        if i > 0 {
            out.push_str(".PP\n");
        }
        out.push_str(&roff(paragraph));
        out.push('\n');
    }
    out.push_str(".SH OPTIONS\n");
    for (tag, text) in OPTIONS {
        roff_tagged(&mut out, tag, &[text]);
    }
    roff_section_tagged(&mut out, "EXIT STATUS", EXIT_STATUS);
    out.push_str(".SH CONFIGURATION\n");
    out.push_str(&roff(
        "The configuration is a flat file of `key = value` lines (default \
         /etc/postling/postling.conf, see `-c`); every key is described in `postling.conf`(5).",
    ));
    out.push('\n');
    roff_section_tagged(&mut out, "SIGNALS", SIGNALS);
    out.push_str(".SH FILES\n");
    for (tag, text) in FILES {
        roff_tagged(&mut out, tag, &[text]);
    }
    out.push_str(".SH SEE ALSO\n");
    out.push_str(&roff(
        "`postling.conf`(5); the manual in the `doc/` directory of the source tree (operations, \
         SMTP, POP, spool and delivery, architecture).",
    ));
    out.push('\n');
    out
}

/// `doc/postling.conf.5`: the syntax of the configuration file and every key of the table.
pub fn conf_man_page() -> String {
    let mut out = man_header(
        "src/config/keys.rs",
        "POSTLING.CONF 5 \"\" \"postling\" \"File Formats Manual\"",
        "postling.conf \\- configuration file of the postling mail server",
    );
    out.push_str(".SH DESCRIPTION\n");
    out.push_str(&roff(
        "The configuration is a flat file of `key = value` lines, by default \
         /etc/postling/postling.conf. `postling -t` checks it, and the files it names, \
         without starting the server.",
    ));
    out.push('\n');
    out.push_str(".SH SYNTAX\n");
    for rule in SYNTAX {
        out.push_str(".IP \\(bu 2\n");
        out.push_str(&roff(rule));
        out.push('\n');
    }
    out.push_str(".SH KEYS\n");
    for spec in KEYS {
        let expected = format!("Expected: {}.", spec.form);
        let default = format!("Default: {}", default_text(spec));
        roff_tagged(
            &mut out,
            &format!("`{}`", spec.name),
            &[spec.meaning, &expected, &default],
        );
    }
    out.push_str(".SH SEE ALSO\n");
    out.push_str(&roff(
        "`postling`(8), `conf/postling.conf.example` in the source tree (every key commented \
         out with its default).",
    ));
    out.push('\n');
    out
}
