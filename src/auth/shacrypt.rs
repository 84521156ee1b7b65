//! SHA-crypt with SHA-512 (`$6$`), as glibc's crypt(3), `openssl passwd -6` and `mkpasswd -m
//! sha-512` make it (Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512", 2008), on ring's
//! SHA-512. ring is in the build as rustls's crypto provider, so this costs a page of code where
//! the RustCrypto `sha-crypt` crate with its own SHA-512 cost about 17 KB of a binary that must
//! stay within 3 MiB. The tests hold it to glibc's vectors and to that crate (a dev-dependency)
//! on random inputs.

use ring::digest::{Context, SHA512};

/// The fewest and the default rounds of the scheme (`rounds=` below the minimum counts as it).
pub const ROUNDS_MIN: usize = 1_000;
pub const ROUNDS_DEFAULT: usize = 5_000;
/// The longest salt the scheme uses; a longer one is cut.
pub const SALT_MAX: usize = 16;

const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The 86-character hash (the part after the last `$`) of `password` with `salt` (at most
/// `SALT_MAX` bytes are used) and `rounds` (at least `ROUNDS_MIN`).
pub fn sha512_crypt_b64(password: &[u8], salt: &[u8], rounds: usize) -> String {
    let salt = salt.get(..SALT_MAX).unwrap_or(salt);
    let rounds = rounds.max(ROUNDS_MIN);
    let digest = |parts: &[&[u8]]| -> [u8; 64] {
        let mut c = Context::new(&SHA512);
        for p in parts {
            c.update(p);
        }
        let mut out = [0u8; 64];
        out.copy_from_slice(c.finish().as_ref());
        out
    };
    // B: password, salt, password.
    let b = digest(&[password, salt, password]);
    // A: password, salt, B once per 64 password bytes (and the rest of a block), then per bit
    // of the password's length B (a one) or the password (a zero).
    let mut a = Context::new(&SHA512);
    a.update(password);
    a.update(salt);
    let mut left = password.len();
    while left > 64 {
        a.update(&b);
        left -= 64;
    }
    a.update(&b[..left]);
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            a.update(&b);
        } else {
            a.update(password);
        }
        bits >>= 1;
    }
    let mut result = [0u8; 64];
    result.copy_from_slice(a.finish().as_ref());
    // P: the digest of the password repeated once per byte, stretched to its length.
    let mut dp = Context::new(&SHA512);
    for _ in 0..password.len() {
        dp.update(password);
    }
    let dp = dp.finish();
    let p: Vec<u8> = dp
        .as_ref()
        .iter()
        .copied()
        .cycle()
        .take(password.len())
        .collect();
    // S: the digest of the salt repeated 16 + result[0] times, cut to the salt's length.
    let mut ds = Context::new(&SHA512);
    for _ in 0..16 + usize::from(result[0]) {
        ds.update(salt);
    }
    let ds = ds.finish();
    let s = &ds.as_ref()[..salt.len()];
    for round in 0..rounds {
        let mut c = Context::new(&SHA512);
        if round % 2 == 1 {
            c.update(&p);
        } else {
            c.update(&result);
        }
        if round % 3 != 0 {
            c.update(s);
        }
        if round % 7 != 0 {
            c.update(&p);
        }
        if round % 2 == 1 {
            c.update(&result);
        } else {
            c.update(&p);
        }
        result.copy_from_slice(c.finish().as_ref());
    }
    encode(&result)
}

/// The scheme's own base 64: the digest's bytes in a fixed interleaved order, three at a time
/// (the last alone), least significant six bits first.
fn encode(r: &[u8; 64]) -> String {
    const ORDER: [(usize, usize, usize); 21] = [
        (0, 21, 42),
        (22, 43, 1),
        (44, 2, 23),
        (3, 24, 45),
        (25, 46, 4),
        (47, 5, 26),
        (6, 27, 48),
        (28, 49, 7),
        (50, 8, 29),
        (9, 30, 51),
        (31, 52, 10),
        (53, 11, 32),
        (12, 33, 54),
        (34, 55, 13),
        (56, 14, 35),
        (15, 36, 57),
        (37, 58, 16),
        (59, 17, 38),
        (18, 39, 60),
        (40, 61, 19),
        (62, 20, 41),
    ];
    let mut out = String::with_capacity(86);
    let mut put = |w: u32, n: usize| {
        let mut w = w;
        for _ in 0..n {
            out.push(char::from(ALPHABET[(w & 0x3f) as usize]));
            w >>= 6;
        }
    };
    for (x, y, z) in ORDER {
        put(
            u32::from(r[x]) << 16 | u32::from(r[y]) << 8 | u32::from(r[z]),
            4,
        );
    }
    put(u32::from(r[63]), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc's own vectors (also what Python's `crypt.crypt` gives on this machine).
    #[test]
    fn glibc_vectors() {
        let cases: [(&[u8], &[u8], usize, &str); 5] = [
            (
                b"Hello world!",
                b"saltstring",
                5_000,
                "svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
            ),
            (
                b"Hello world!",
                b"saltstringsaltstring",
                10_000,
                "OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
            ),
            (
                b"This is just a test",
                b"toolongsaltstring",
                5_000,
                "lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
            ),
            (
                b"we have a short salt string but not a short password",
                b"short",
                77_777,
                "WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0",
            ),
            (
                &[b'a'; 200],
                b"x",
                1_000,
                "fVLi8cEZxgYW8bX.UvkmZehAB8d8rZOZB5nLt2V29jlsd5G0kWjwYFywT0fuv24L477coyRxrQ3YTzl.lbg3K1",
            ),
        ];
        for (password, salt, rounds, hash) in cases {
            assert_eq!(sha512_crypt_b64(password, salt, rounds), hash);
        }
    }

    /// The same as the RustCrypto `sha-crypt` crate on random passwords (empty to 300 bytes,
    /// across the 64-byte block boundaries), salts (1 to 16 bytes) and round counts.
    #[test]
    fn agrees_with_the_sha_crypt_crate() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..60 {
            let len = match i {
                0..=8 => [0, 1, 63, 64, 65, 127, 128, 129, 255][i],
                _ => (next() % 300) as usize,
            };
            let password: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let salt: Vec<u8> = (0..1 + next() % 16)
                .map(|_| ALPHABET[(next() % 64) as usize])
                .collect();
            let rounds = ROUNDS_MIN + (next() % 1500) as usize;
            let params = sha_crypt::Sha512Params::new(rounds).unwrap();
            let theirs = sha_crypt::sha512_crypt_b64(&password, &salt, &params).unwrap();
            assert_eq!(sha512_crypt_b64(&password, &salt, rounds), theirs, "{i}");
        }
    }
}
