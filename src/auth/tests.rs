use std::time::{Duration, Instant};

use super::*;

/// `openssl passwd -6 -salt testsalt alice-pw`
const ALICE_HASH: &str = "$6$testsalt$i4yyMFQKJACF7.bISz9DrkIZ2EvZ8alMoYXKcH1dn2jtxaeT.XVaISuuqDJ.4cw8dVLd/Z1OcSRNnHEk.hl1F1";

fn sha(s: &str) -> Credential {
    Credential::Sha512Crypt(s.into())
}

#[test]
fn openssl_hash_verifies() {
    let alice = parse_credential(&format!("{{SHA512-CRYPT}}{ALICE_HASH}")).unwrap();
    assert_eq!(alice, sha(ALICE_HASH));
    assert!(verify(Some(&alice), b"alice-pw"));
    assert!(!verify(Some(&alice), b"alice-pW"));
    assert!(!verify(Some(&alice), b"alice-pw\n"));
    assert!(!verify(Some(&alice), b""));
    assert!(!verify(Some(&alice), b"alice-p"));
}

#[test]
fn scheme_names_are_case_insensitive() {
    assert_eq!(
        parse_credential(&format!("{{sha512-crypt}}{ALICE_HASH}")).unwrap(),
        sha(ALICE_HASH)
    );
    assert_eq!(
        parse_credential("{Plain}pw").unwrap(),
        Credential::Plain(b"pw".to_vec())
    );
}

#[test]
fn explicit_rounds_are_honoured() {
    let params = sha_crypt::Sha512Params::new(1000).unwrap();
    let hashed = sha_crypt::sha512_simple("pw", &params).unwrap();
    assert!(hashed.starts_with("$6$rounds=1000$"), "{hashed}");
    let cred = parse_credential(&format!("{{SHA512-CRYPT}}{hashed}")).unwrap();
    assert!(verify(Some(&cred), b"pw"));
    assert!(!verify(Some(&cred), b"pw2"));
    // `rounds=5000` spelled out is the same hash as the default.
    let default = ALICE_HASH.replace("$6$", "$6$rounds=5000$");
    assert!(verify(Some(&sha(&default)), b"alice-pw"));
}

#[test]
fn rounds_above_the_cap_are_refused_at_load_and_never_computed() {
    let hash = ALICE_HASH.rsplit('$').next().unwrap();
    let hostile = format!("$6$rounds=999999999$testsalt${hash}");
    let e = parse_credential(&format!("{{SHA512-CRYPT}}{hostile}")).unwrap_err();
    assert!(e.contains("rounds=999999999 is out of range"), "{e}");
    let just_over = format!(
        "$6$rounds={}$testsalt${hash}",
        limits::SHA512_CRYPT_MAX_ROUNDS + 1
    );
    assert!(parse_credential(&format!("{{SHA512-CRYPT}}{just_over}")).is_err());
    // Even if one got past loading, verify does not spend a billion rounds on it.
    let t0 = Instant::now();
    assert!(!verify(Some(&sha(&hostile)), b"alice-pw"));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn malformed_stored_hash_never_verifies() {
    for bad in ["", "$6$", "$6$testsalt$", "plain", "$6$testsalt$x$y"] {
        assert!(!verify(Some(&sha(bad)), b""), "{bad:?}");
        assert!(!verify(Some(&sha(bad)), b"alice-pw"), "{bad:?}");
    }
}

#[test]
fn plain_compares_whole_secrets() {
    let cred = Credential::Plain(b"bob-pw".to_vec());
    assert!(verify(Some(&cred), b"bob-pw"));
    for wrong in [&b"bob-p"[..], b"bob-pw\0", b"bob-pwx", b"", b"BOB-PW"] {
        assert!(!verify(Some(&cred), wrong), "{wrong:?}");
    }
    // Zero padding must not make a shorter secret equal a longer one.
    let padded = Credential::Plain(b"a".to_vec());
    assert!(!verify(Some(&padded), b"a\0"));
    let max = vec![b'z'; limits::PASSWORD_MAX];
    assert!(verify(Some(&Credential::Plain(max.clone())), &max));
    let mut over = max.clone();
    over.push(b'z');
    assert!(!verify(Some(&Credential::Plain(over.clone())), &over));
    assert!(!verify(Some(&Credential::Plain(max)), &over));
}

#[test]
fn unknown_user_never_verifies() {
    assert!(!verify(None, b""));
    assert!(!verify(None, b"not a password"));
    assert!(!verify(None, b"alice-pw"));
}

/// CPU time this thread has used: unlike the wall clock, it does not count the time other
/// processes on a loaded machine (a parallel build, other tests) take the CPU away.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The least CPU time of five runs of `f`.
fn fastest_of_five(f: impl Fn()) -> Duration {
    (0..5)
        .map(|_| {
            let t0 = thread_cpu_time();
            f();
            thread_cpu_time() - t0
        })
        .min()
        .unwrap()
}

#[test]
fn unknown_user_and_plain_take_as_long_as_a_real_hash() {
    let alice = sha(ALICE_HASH);
    let bob = Credential::Plain(b"bob-pw".to_vec());
    let real = fastest_of_five(|| {
        verify(Some(&alice), b"wrong");
    });
    let unknown = fastest_of_five(|| {
        verify(None, b"wrong");
    });
    let plain = fastest_of_five(|| {
        verify(Some(&bob), b"wrong");
    });
    // Same work (5 000 rounds) each; a generous bound for a loaded machine.
    for (what, took) in [("unknown user", unknown), ("plain", plain)] {
        assert!(
            took * 3 > real && took < real * 3,
            "{what}: {took:?} against {real:?} for a real hash"
        );
    }
}

#[test]
fn hash_password_makes_openssl_compatible_lines() {
    let line = hash_password(b"s3cret pw").unwrap();
    let crypt = line.strip_prefix("{SHA512-CRYPT}").unwrap();
    let parts = parse_sha512_crypt(crypt).unwrap();
    assert_eq!(parts.rounds, ROUNDS_DEFAULT);
    assert_eq!(parts.salt.len(), 16);
    assert!(parts.salt.bytes().all(|b| CRYPT_ALPHABET.contains(&b)));
    // The default rounds are not spelled out, exactly as openssl and mkpasswd print it.
    assert_eq!(crypt, format!("$6${}${}", parts.salt, parts.hash));
    // An independent check by the crate's own verifier, and ours.
    assert!(sha_crypt::sha512_check("s3cret pw", crypt).is_ok());
    let cred = parse_credential(&line).unwrap();
    assert!(verify(Some(&cred), b"s3cret pw"));
    assert!(!verify(Some(&cred), b"s3cret"));
    // Fresh salt each time.
    assert_ne!(hash_password(b"s3cret pw").unwrap(), line);
}

#[test]
fn hash_password_takes_any_octets() {
    let pw = b"caf\xe9 \xff";
    let cred = parse_credential(&hash_password(pw).unwrap()).unwrap();
    assert!(verify(Some(&cred), pw));
    assert!(!verify(Some(&cred), b"caf\xe9 "));
}

#[test]
fn hash_password_refuses_empty_and_over_long() {
    assert_eq!(hash_password(b""), Err("empty password".into()));
    let e = hash_password(&vec![b'x'; limits::PASSWORD_MAX + 1]).unwrap_err();
    assert!(e.contains("longer than 255 octets"), "{e}");
    assert!(hash_password(&vec![b'x'; limits::PASSWORD_MAX]).is_ok());
}

#[test]
fn dummy_hash_is_well_formed_with_default_rounds() {
    let parts = parse_sha512_crypt(DUMMY_HASH).unwrap();
    assert_eq!(parts.rounds, ROUNDS_DEFAULT);
    assert!(sha_crypt::sha512_check("not a password", DUMMY_HASH).is_ok());
}
