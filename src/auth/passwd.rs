//! `postling passwd USER`: reads a password from standard input and prints the users-file line
//! `USER:{SHA512-CRYPT}$6$…` on standard output.
//!
//! On a terminal it prompts on stderr with echo off (restored however the read ends) and asks
//! twice; from a pipe it reads one line and strips only its newline, so
//! `echo 'pw' | postling passwd alice` works in scripts. Exit status: 0 success, 64 usage or an
//! invalid user name, 65 an empty, over-long or mismatched password, 71 no random salt,
//! 74 standard input unreadable.

use std::io::{self, BufRead, Read, Write};
use std::process::ExitCode;

use crate::limits;

const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_OSERR: u8 = 71;
const EX_IOERR: u8 = 74;
const USAGE: &str = "usage: postling passwd USER\n\
    Reads a password from stdin (twice, without echo, on a terminal) and prints the line\n\
    USER:{SHA512-CRYPT}$6$… to put in the users file.";

/// Why no password came out of standard input; `code` is the exit status.
#[derive(Debug, PartialEq, Eq)]
struct Refused {
    code: u8,
    message: String,
}

fn refused(code: u8, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

pub fn passwd_main(args: &[String]) -> ExitCode {
    let user = match args {
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [user] if !user.starts_with('-') => user,
        _ => {
            eprintln!("postling passwd: {USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let name = user.to_ascii_lowercase();
    if let Err(why) = crate::directory::check_user_name(&name) {
        eprintln!("postling passwd: user name {user:?} is not allowed: {why}");
        return ExitCode::from(EX_USAGE);
    }
    let stdin = io::stdin();
    let mut input = stdin.lock();
    // SAFETY: isatty only inspects the descriptor.
    let on_terminal = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let read = if on_terminal {
        match EchoOff::new(libc::STDIN_FILENO) {
            Ok(_echo_off) => password_from_terminal(&mut input, &mut io::stderr(), &name),
            Err(e) => Err(refused(
                EX_IOERR,
                format!("cannot turn off echo on the terminal: {e}"),
            )),
        }
    } else {
        password_from_pipe(&mut input)
    };
    let mut password = match read {
        Ok(p) => p,
        Err(r) => {
            eprintln!("postling passwd: {}", r.message);
            return ExitCode::from(r.code);
        }
    };
    let hashed = crate::auth::hash_password(&password);
    password.fill(0);
    std::hint::black_box(&password);
    match hashed {
        Ok(line) => {
            println!("{name}:{line}");
            ExitCode::SUCCESS
        }
        Err(e) if e.starts_with("cannot") => {
            eprintln!("postling passwd: {e}");
            ExitCode::from(EX_OSERR)
        }
        Err(e) => {
            eprintln!("postling passwd: {e}");
            ExitCode::from(EX_DATAERR)
        }
    }
}

/// One line of at most `PASSWORD_MAX` octets without its `\n`; `None` at end of input.
fn read_line_bounded(input: &mut dyn BufRead) -> Result<Option<Vec<u8>>, Refused> {
    let mut line = Vec::new();
    // One octet over the limit plus the newline tells "too long" from "exactly the limit".
    let cap = limits::PASSWORD_MAX as u64 + 2;
    match input.take(cap).read_until(b'\n', &mut line) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(refused(EX_IOERR, format!("cannot read stdin: {e}"))),
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.len() > limits::PASSWORD_MAX {
        line.fill(0);
        return Err(refused(
            EX_DATAERR,
            format!(
                "password longer than {} octets refused",
                limits::PASSWORD_MAX
            ),
        ));
    }
    Ok(Some(line))
}

fn nonempty(line: Option<Vec<u8>>) -> Result<Vec<u8>, Refused> {
    match line {
        Some(p) if !p.is_empty() => Ok(p),
        _ => Err(refused(EX_DATAERR, "empty password refused")),
    }
}

/// From a pipe or file: the first line is the password.
fn password_from_pipe(input: &mut dyn BufRead) -> Result<Vec<u8>, Refused> {
    nonempty(read_line_bounded(input)?)
}

/// From a terminal (echo already off): prompt, read, prompt again, and refuse a mismatch.
fn password_from_terminal(
    input: &mut dyn BufRead,
    prompts: &mut dyn Write,
    user: &str,
) -> Result<Vec<u8>, Refused> {
    let _ = write!(prompts, "Password for {user}: ");
    let _ = prompts.flush();
    let first = nonempty(read_line_bounded(input)?)?;
    let _ = write!(prompts, "Again: ");
    let _ = prompts.flush();
    let mut second = read_line_bounded(input)?.unwrap_or_default();
    let same = first == second;
    second.fill(0);
    if same {
        Ok(first)
    } else {
        let mut first = first;
        first.fill(0);
        Err(refused(
            EX_DATAERR,
            "the passwords do not match; nothing printed",
        ))
    }
}

/// Turns terminal echo off until dropped, also when the read fails. ECHONL keeps the newline
/// visible so the second prompt starts on its own line.
struct EchoOff {
    fd: libc::c_int,
    saved: libc::termios,
}

impl EchoOff {
    fn new(fd: libc::c_int) -> io::Result<EchoOff> {
        // SAFETY: termios is plain old data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: `quiet` is a valid termios derived from the current settings.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new` on the same descriptor.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_strips_only_the_newline() {
        let mut input = &b" pw with spaces \r\nsecond line\n"[..];
        assert_eq!(
            password_from_pipe(&mut input).unwrap(),
            b" pw with spaces \r".to_vec()
        );
        let mut no_newline = &b"last"[..];
        assert_eq!(
            password_from_pipe(&mut no_newline).unwrap(),
            b"last".to_vec()
        );
    }

    #[test]
    fn empty_and_missing_passwords_are_refused() {
        for input in [&b""[..], &b"\n"[..], &b"\nsecond\n"[..]] {
            let mut r = input;
            let e = password_from_pipe(&mut r).unwrap_err();
            assert_eq!(e.code, EX_DATAERR, "{input:?}");
            assert!(e.message.contains("empty"), "{}", e.message);
        }
    }

    #[test]
    fn length_limit_is_exact() {
        let at_limit = vec![b'x'; limits::PASSWORD_MAX];
        let mut line = at_limit.clone();
        line.push(b'\n');
        assert_eq!(password_from_pipe(&mut &line[..]).unwrap(), at_limit);
        let over = vec![b'x'; limits::PASSWORD_MAX + 1];
        let e = password_from_pipe(&mut &over[..]).unwrap_err();
        assert_eq!(e.code, EX_DATAERR);
        assert!(e.message.contains("longer than"), "{}", e.message);
        let mut huge = vec![b'y'; 100_000];
        huge.push(b'\n');
        assert_eq!(
            password_from_pipe(&mut &huge[..]).unwrap_err().code,
            EX_DATAERR
        );
    }

    #[test]
    fn terminal_asks_twice_and_refuses_a_mismatch() {
        let mut prompts = Vec::new();
        let mut input = &b"secret\nsecret\n"[..];
        let pw = password_from_terminal(&mut input, &mut prompts, "alice").unwrap();
        assert_eq!(pw, b"secret".to_vec());
        assert_eq!(prompts, b"Password for alice: Again: ".to_vec());

        let mut input = &b"secret\nsecreT\n"[..];
        let e = password_from_terminal(&mut input, &mut Vec::new(), "alice").unwrap_err();
        assert_eq!(e.code, EX_DATAERR);
        assert!(e.message.contains("do not match"), "{}", e.message);

        let mut input = &b"secret\n"[..];
        let e = password_from_terminal(&mut input, &mut Vec::new(), "alice").unwrap_err();
        assert!(e.message.contains("do not match"), "{}", e.message);

        let mut input = &b"\n\n"[..];
        let e = password_from_terminal(&mut input, &mut Vec::new(), "alice").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
    }

    #[test]
    fn echo_guard_fails_cleanly_on_a_non_terminal() {
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsRawFd;
        assert!(EchoOff::new(f.as_raw_fd()).is_err());
    }
}
