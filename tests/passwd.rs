//! `postling passwd USER` run as a real process: piped password in, users-file line out.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use postling::auth::{parse_credential, verify};

fn passwd(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postling"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child may exit before reading (usage errors): a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn prints_a_line_that_verifies_like_openssl() {
    let out = passwd(&["Alice"], b"correct horse\nignored second line\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.strip_suffix('\n').unwrap();
    assert!(!line.contains('\n'));
    let credential = line.strip_prefix("alice:").unwrap();
    let crypt = credential.strip_prefix("{SHA512-CRYPT}$6$").unwrap();
    let (salt, hash) = crypt.split_once('$').unwrap();
    assert_eq!(salt.len(), 16, "{line}");
    assert_eq!(hash.len(), 86, "{line}");
    let cred = parse_credential(credential).unwrap();
    assert!(verify(Some(&cred), b"correct horse"));
    assert!(!verify(Some(&cred), b"correct horse\n"));
    assert!(!verify(Some(&cred), b"wrong"));
    // The same salt through openssl gives the same string, where openssl is installed.
    if let Ok(o) = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, "correct horse"])
        .output()
    {
        if o.status.success() {
            let theirs = String::from_utf8(o.stdout).unwrap();
            assert_eq!(
                theirs.trim_end(),
                credential.strip_prefix("{SHA512-CRYPT}").unwrap()
            );
        }
    }
}

#[test]
fn a_password_without_final_newline_is_taken_whole() {
    let out = passwd(&["bob"], b"pw with trailing space ");
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let cred = parse_credential(stdout.trim_end().strip_prefix("bob:").unwrap()).unwrap();
    assert!(verify(Some(&cred), b"pw with trailing space "));
    assert!(!verify(Some(&cred), b"pw with trailing space"));
}

#[test]
fn empty_password_is_refused() {
    for input in [&b""[..], b"\n"] {
        let out = passwd(&["bob"], input);
        assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
        assert!(stderr(&out).contains("empty password"), "{}", stderr(&out));
    }
}

#[test]
fn usage_errors_exit_64() {
    for args in [&[][..], &["a", "b"][..], &["-x"][..]] {
        let out = passwd(args, b"pw\n");
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("usage: postling passwd USER"),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty());
    }
    let out = passwd(&["--help"], b"");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: postling passwd USER"));
}

#[test]
fn invalid_user_names_exit_64() {
    for user in ["../etc", "a@b", "a:b", "a b", ".hidden"] {
        let out = passwd(&[user], b"pw\n");
        assert_eq!(out.status.code(), Some(64), "{user}: {}", stderr(&out));
        assert!(stderr(&out).contains("is not allowed"), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}
