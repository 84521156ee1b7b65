//! The `sendmail` command line, parsed without touching anything: the flags programs on the box
//! pass to `/usr/sbin/sendmail` (Postfix's and Sendmail's common set), each either acted on,
//! ignored with a note, or refused as a usage error.
//!
//! Syntax as getopt: flags may be bundled (`-ti`), a flag that takes a value takes the rest of
//! its word or the next word (`-fADDR`, `-f ADDR`, `-oi`, `-o i`), `--` ends the flags. The
//! first word that is not a flag starts the recipients, as in Postfix.

use std::path::PathBuf;

/// What the invocation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-bm` (the default): read a message from standard input and queue it.
    Deliver,
    /// `-bs`: SMTP on standard input and output (see `bs.rs`).
    Smtp,
    /// `-bp` or the `mailq` name: list the queue.
    ListQueue,
    /// `-q`: ask the running daemon for a queue run.
    Flush,
    /// `-bi`/`-I` (newaliases): postling reads its aliases file by itself.
    NewAliases,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub mode: Mode,
    /// `-C FILE`.
    pub config: Option<PathBuf>,
    /// `-t`: recipients from the To, Cc and Bcc headers (plus any given as arguments).
    pub from_headers: bool,
    /// `-i`/`-oi`: a line holding a single `.` is not the end of the input.
    pub ignore_dots: bool,
    /// `-f ADDR` / `-r ADDR`: the envelope sender asked for (`<>` and empty mean the null sender).
    pub sender: Option<String>,
    /// `-F NAME`: the full name for a generated From: header.
    pub full_name: Option<String>,
    pub verbose: bool,
    pub recipients: Vec<String>,
    /// Flags accepted and ignored, one note each for standard error.
    pub notes: Vec<String>,
}

/// Flags that take a value and are ignored (delivery status notification options, queue
/// options, logging, Sendmail's protocol and hop-count settings).
const IGNORED_WITH_VALUE: &[char] = &['B', 'N', 'R', 'X', 'L', 'h', 'p', 'e', 'V', 'O'];
/// Flags without a value that are ignored (Sendmail's `-U` initial submission, `-m` me too,
/// `-n` no aliasing, `-x`, `-c`, `-G` gateway submission).
const IGNORED_PLAIN: &[char] = &['U', 'm', 'n', 'x', 'c', 'G'];

/// Parses the arguments after the program name. `Err` carries the usage error's text.
pub fn parse(args: &[String], mailq: bool) -> Result<Invocation, String> {
    let mut inv = Invocation {
        mode: if mailq {
            Mode::ListQueue
        } else {
            Mode::Deliver
        },
        config: None,
        from_headers: false,
        ignore_dots: false,
        sender: None,
        full_name: None,
        verbose: false,
        recipients: Vec::new(),
        notes: Vec::new(),
    };
    let mut i = 0;
    while let Some(word) = args.get(i) {
        i += 1;
        if word == "--" {
            break;
        }
        let Some(flags) = word.strip_prefix('-').filter(|f| !f.is_empty()) else {
            i -= 1;
            break;
        };
        for (at, flag) in flags.char_indices() {
            let rest = flags.get(at + flag.len_utf8()..).unwrap_or("");
            if takes_value(flag) {
                let value = if rest.is_empty() {
                    let v = args
                        .get(i)
                        .ok_or_else(|| format!("option -{flag} needs a value"))?;
                    i += 1;
                    v.clone()
                } else {
                    rest.to_string()
                };
                apply_valued(&mut inv, flag, &value)?;
                break;
            }
            match flag {
                't' => inv.from_headers = true,
                'i' => inv.ignore_dots = true,
                'v' => inv.verbose = true,
                'I' => inv.mode = Mode::NewAliases,
                'q' => {
                    inv.mode = Mode::Flush;
                    if !rest.is_empty() {
                        inv.notes.push(format!(
                            "-q{rest}: queue-run intervals and selections are not supported; asking for one queue run now"
                        ));
                    }
                    break;
                }
                c if IGNORED_PLAIN.contains(&c) => inv.notes.push(format!("-{c} ignored")),
                c => return Err(format!("unknown option -{c}")),
            }
        }
    }
    inv.recipients = args.get(i..).unwrap_or_default().to_vec();
    Ok(inv)
}

fn takes_value(flag: char) -> bool {
    matches!(flag, 'f' | 'r' | 'F' | 'C' | 'o' | 'b') || IGNORED_WITH_VALUE.contains(&flag)
}

fn apply_valued(inv: &mut Invocation, flag: char, value: &str) -> Result<(), String> {
    match flag {
        'f' | 'r' => inv.sender = Some(value.to_string()),
        'F' => inv.full_name = Some(value.to_string()),
        'C' => inv.config = Some(PathBuf::from(value)),
        'o' => match value {
            "i" => inv.ignore_dots = true,
            v if v.starts_with('i') && v.len() > 1 => {
                // -oi with a value (`-oiTrue`): Sendmail's long form of the same switch.
                inv.ignore_dots = !v.eq_ignore_ascii_case("ifalse");
            }
            v => inv.notes.push(format!("-o{v} ignored")),
        },
        'b' => {
            inv.mode = match value {
                "m" => Mode::Deliver,
                "s" => Mode::Smtp,
                "p" => Mode::ListQueue,
                "i" => Mode::NewAliases,
                v => return Err(format!("-b{v} is not supported (use -bm, -bs, -bp or -bi)")),
            }
        }
        c => inv.notes.push(format!("-{c} {value} ignored")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(words: &[&str]) -> Result<Invocation, String> {
        let v: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        parse(&v, false)
    }

    #[test]
    fn the_usual_cron_line() {
        let inv = p(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "alice"]).unwrap();
        assert_eq!(inv.mode, Mode::Deliver);
        assert_eq!(inv.full_name.as_deref(), Some("CronDaemon"));
        assert!(inv.ignore_dots && !inv.from_headers);
        assert_eq!(inv.recipients, ["alice"]);
        assert_eq!(inv.notes, ["-B 8BITMIME ignored", "-oem ignored"]);
    }

    #[test]
    fn bundled_flags_and_separate_values() {
        let inv = p(&["-tiv", "-f", "root@x.test", "-F", "Full Name", "-C", "/c"]).unwrap();
        assert!(inv.from_headers && inv.ignore_dots && inv.verbose);
        assert_eq!(inv.sender.as_deref(), Some("root@x.test"));
        assert_eq!(inv.full_name.as_deref(), Some("Full Name"));
        assert_eq!(inv.config, Some(PathBuf::from("/c")));
        assert!(inv.recipients.is_empty());
        let inv = p(&["-tfroot@x.test", "bob"]).unwrap();
        assert!(inv.from_headers);
        assert_eq!(inv.sender.as_deref(), Some("root@x.test"));
        assert_eq!(inv.recipients, ["bob"]);
    }

    #[test]
    fn modes() {
        assert_eq!(p(&["-bp"]).unwrap().mode, Mode::ListQueue);
        assert_eq!(p(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(p(&["-b", "m"]).unwrap().mode, Mode::Deliver);
        assert_eq!(p(&["-q"]).unwrap().mode, Mode::Flush);
        let inv = p(&["-q30m"]).unwrap();
        assert_eq!(inv.mode, Mode::Flush);
        assert_eq!(inv.notes.len(), 1);
        assert_eq!(p(&["-bi"]).unwrap().mode, Mode::NewAliases);
        assert_eq!(parse(&[], true).unwrap().mode, Mode::ListQueue);
        assert!(p(&["-bd"]).unwrap_err().contains("-bd is not supported"));
    }

    #[test]
    fn ignored_flags_each_leave_a_note() {
        let inv = p(&[
            "-odi",
            "-oQ/var/q",
            "-N",
            "never",
            "-R",
            "hdrs",
            "-X",
            "/log",
            "-U",
            "-L",
            "tag",
            "-oi",
            "-r",
            "a@b.test",
            "bob",
        ])
        .unwrap();
        assert_eq!(
            inv.notes,
            [
                "-odi ignored",
                "-oQ/var/q ignored",
                "-N never ignored",
                "-R hdrs ignored",
                "-X /log ignored",
                "-U ignored",
                "-L tag ignored"
            ]
        );
        assert!(inv.ignore_dots);
        assert_eq!(inv.sender.as_deref(), Some("a@b.test"));
        assert_eq!(inv.recipients, ["bob"]);
    }

    #[test]
    fn recipients_start_at_the_first_non_flag_or_after_dashdash() {
        let inv = p(&["bob", "-t"]).unwrap();
        assert_eq!(inv.recipients, ["bob", "-t"]);
        assert!(!inv.from_headers);
        let inv = p(&["-i", "--", "-weird@x.test"]).unwrap();
        assert_eq!(inv.recipients, ["-weird@x.test"]);
        // A lone "-" is a recipient word, not a flag.
        assert_eq!(p(&["-"]).unwrap().recipients, ["-"]);
    }

    #[test]
    fn usage_errors() {
        assert_eq!(p(&["-Z"]).unwrap_err(), "unknown option -Z");
        assert_eq!(p(&["-f"]).unwrap_err(), "option -f needs a value");
        assert_eq!(p(&["-ti", "-C"]).unwrap_err(), "option -C needs a value");
    }
}
