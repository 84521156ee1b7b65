//! SASL PLAIN for POP3 AUTH (RFC 5034, RFC 4616): strict base64 decoding into a caller's
//! fixed buffer and splitting the `authzid NUL authcid NUL passwd` message.
//!
//! Nothing here allocates; the decoded password lives in the caller's stack array, which the
//! caller wipes after use.

/// Why a PLAIN response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainError {
    /// Not valid base64, or longer than the buffer.
    Base64,
    /// Not `authzid NUL authcid NUL passwd`, or an empty authcid.
    Malformed,
    /// An authzid other than the authcid: postling has no proxy authorization.
    Authzid,
}

/// The identity and password from a PLAIN response.
#[derive(Debug, PartialEq, Eq)]
pub struct Plain<'a> {
    pub authcid: &'a [u8],
    pub password: &'a [u8],
}

fn sextet(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes base64 (RFC 4648 §4, padded, no whitespace) into `out`; returns the length, or
/// None if the input is not canonical base64 or does not fit.
pub fn decode_base64(input: &[u8], out: &mut [u8]) -> Option<usize> {
    if input.len() % 4 != 0 {
        return None;
    }
    let mut len = 0;
    let quanta = input.len() / 4;
    for (q, quad) in input.chunks_exact(4).enumerate() {
        let last = q + 1 == quanta;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut bits: u32 = 0;
        for &c in quad.get(..4 - pad).unwrap_or_default() {
            bits = (bits << 6) | sextet(c)?;
        }
        bits <<= 6 * pad as u32;
        let bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
        // Unused low bits must be zero, so every byte string has exactly one encoding.
        if (pad == 1 && bytes[2] != 0) || (pad == 2 && (bytes[1] != 0 || bytes[2] != 0)) {
            return None;
        }
        let n = 3 - pad;
        out.get_mut(len..len + n)?.copy_from_slice(bytes.get(..n)?);
        len += n;
    }
    Some(len)
}

/// Splits a decoded PLAIN message (RFC 4616 §2).
pub fn parse_plain(message: &[u8]) -> Result<Plain<'_>, PlainError> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    if authcid.is_empty() || password.contains(&0) {
        return Err(PlainError::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(PlainError::Authzid);
    }
    Ok(Plain { authcid, password })
}

/// Decodes and splits a base64 PLAIN response in `buf`.
pub fn decode_plain<'a>(base64: &[u8], buf: &'a mut [u8]) -> Result<Plain<'a>, PlainError> {
    let n = decode_base64(base64, buf).ok_or(PlainError::Base64)?;
    parse_plain(buf.get(..n).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Option<Vec<u8>> {
        let mut buf = [0u8; 64];
        decode_base64(s.as_bytes(), &mut buf).map(|n| buf[..n].to_vec())
    }

    #[test]
    fn base64_strict() {
        assert_eq!(decode(""), Some(vec![]));
        assert_eq!(decode("Zg=="), Some(b"f".to_vec()));
        assert_eq!(decode("Zm8="), Some(b"fo".to_vec()));
        assert_eq!(decode("Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(decode("AGJvYgBwdw=="), Some(b"\0bob\0pw".to_vec()));
        assert_eq!(decode("+/+/"), Some(vec![0xfb, 0xff, 0xbf]));
        for bad in [
            "Zg", "Zg=", "Zm9", "Z===", "Zg==Zg==", "Zm=v", "Zm 9v", "Zm9v\r", "Zh==", "Zm9=",
            "Zm9v-_==", "====",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        let mut small = [0u8; 2];
        assert_eq!(decode_base64(b"Zm9v", &mut small), None);
    }

    #[test]
    fn plain_message_forms() {
        let ok = Plain {
            authcid: b"bob",
            password: b"pw",
        };
        assert_eq!(parse_plain(b"\0bob\0pw"), Ok(ok));
        assert_eq!(
            parse_plain(b"bob\0bob\0pw").map(|p| p.authcid),
            Ok(&b"bob"[..])
        );
        assert_eq!(
            parse_plain(b"\0bob\0"),
            Ok(Plain {
                authcid: b"bob",
                password: b""
            })
        );
        assert_eq!(parse_plain(b"alice\0bob\0pw"), Err(PlainError::Authzid));
        assert_eq!(parse_plain(b"\0\0pw"), Err(PlainError::Malformed));
        assert_eq!(parse_plain(b"\0bob"), Err(PlainError::Malformed));
        assert_eq!(parse_plain(b"bob pw"), Err(PlainError::Malformed));
        assert_eq!(parse_plain(b"\0bob\0p\0w"), Err(PlainError::Malformed));
        assert_eq!(parse_plain(b""), Err(PlainError::Malformed));
        let mut buf = [0u8; 32];
        assert_eq!(decode_plain(b"!!!!", &mut buf), Err(PlainError::Base64));
        assert_eq!(
            decode_plain(b"AGJvYgBwdw==", &mut buf).map(|p| p.password.to_vec()),
            Ok(b"pw".to_vec())
        );
    }
}
