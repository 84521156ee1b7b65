//! RFC 5321 path and parameter syntax for MAIL and RCPT (§4.1.2).
//!
//! Owns the grammar of what follows `MAIL` and `RCPT`: the `FROM:`/`TO:` prefix, the path
//! (`<local@domain>`, quoted local parts, `<>`, source routes, address literals, `<postmaster>`)
//! and the ESMTP parameters (SIZE, BODY, SMTPUTF8). Parsing borrows from the command line and
//! allocates nothing. Two tolerances for real clients, strict everywhere else: spaces after the
//! colon (`MAIL FROM: <a@b>`) and a path without its angle brackets (`RCPT TO:alice@x`).
//! Non-ASCII (RFC 6531) is parsed and reported; whether it is allowed is the session's call.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::limits;
use crate::mail::BodyType;

/// A parsed path, without angle brackets or source route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path<'a> {
    /// `local@domain` as sent (a quoted local part keeps its quotes); empty for the null
    /// reverse-path `<>`; `postmaster` for the forward-path `<postmaster>`.
    pub address: &'a str,
    /// Any octet of the path is non-ASCII (needs SMTPUTF8, RFC 6531 §3.3).
    pub non_ascii: bool,
}

/// `MAIL FROM:` with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailArgs<'a> {
    pub path: Path<'a>,
    /// RFC 1870 `SIZE=`; a value too large for u64 is `u64::MAX` (over any limit).
    pub size: Option<u64>,
    /// RFC 6152 `BODY=`.
    pub body: Option<BodyType>,
    /// RFC 6531 `SMTPUTF8`.
    pub smtputf8: bool,
}

/// `RCPT TO:` (no parameters are supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RcptArgs<'a> {
    pub path: Path<'a>,
}

/// What is wrong with a MAIL or RCPT argument; each maps to one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgError<'a> {
    /// Not `FROM:`/`TO:` followed by a path and optional parameters (501 5.5.2).
    Syntax,
    /// The path is malformed; says how (501 5.1.7 for a sender, 5.1.3 for a recipient).
    BadPath(&'static str),
    /// The path is longer than `limits::SMTP_MAX_PATH` (§4.5.3.1.3).
    PathTooLong,
    /// A recipient local part with `/`, `..` or a control character: it could name a path
    /// outside a mailbox directory, so it is refused before anything looks it up (550 5.1.3).
    UnsafeLocalPart,
    /// A well-formed parameter this server does not support (555 5.5.4); the keyword as sent.
    UnknownParameter(&'a str),
    /// A supported parameter with a bad value, or given twice (501 5.5.4); says which.
    BadParameter(&'static str),
}

/// Parses what follows `MAIL `. `esmtp`: the client said EHLO, so parameters are allowed.
pub fn parse_mail(args: &str, esmtp: bool) -> Result<MailArgs<'_>, ArgError<'_>> {
    let (inner, params) = split_command(args, "FROM:")?;
    let path = if inner.is_empty() {
        Path {
            address: "",
            non_ascii: false,
        }
    } else {
        parse_mailbox_path(inner, false)?
    };
    let mut mail = MailArgs {
        path,
        size: None,
        body: None,
        smtputf8: false,
    };
    for param in parameters(params) {
        let (keyword, value) = param?;
        if !esmtp {
            return Err(ArgError::UnknownParameter(keyword));
        }
        if keyword.eq_ignore_ascii_case("SIZE") {
            if mail.size.is_some() {
                return Err(ArgError::BadParameter("SIZE given twice"));
            }
            mail.size = Some(parse_size(value)?);
        } else if keyword.eq_ignore_ascii_case("BODY") {
            if mail.body.is_some() {
                return Err(ArgError::BadParameter("BODY given twice"));
            }
            mail.body = Some(match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => BodyType::SevenBit,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => BodyType::EightBitMime,
                _ => return Err(ArgError::BadParameter("BODY must be 7BIT or 8BITMIME")),
            });
        } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
            if mail.smtputf8 {
                return Err(ArgError::BadParameter("SMTPUTF8 given twice"));
            }
            if value.is_some() {
                return Err(ArgError::BadParameter("SMTPUTF8 takes no value"));
            }
            mail.smtputf8 = true;
        } else {
            return Err(ArgError::UnknownParameter(keyword));
        }
    }
    Ok(mail)
}

/// Parses what follows `RCPT `.
pub fn parse_rcpt(args: &str) -> Result<RcptArgs<'_>, ArgError<'_>> {
    let (inner, params) = split_command(args, "TO:")?;
    if inner.is_empty() {
        return Err(ArgError::BadPath("empty recipient"));
    }
    // RFC 5321 §4.5.1: every server accepts mail for `<postmaster>` without a domain.
    let path = if inner.eq_ignore_ascii_case("postmaster") {
        Path {
            address: "postmaster",
            non_ascii: false,
        }
    } else {
        parse_mailbox_path(inner, true)?
    };
    if let Some(param) = parameters(params).next() {
        let (keyword, _) = param?;
        return Err(ArgError::UnknownParameter(keyword));
    }
    Ok(RcptArgs { path })
}

/// Is `s` a syntactically valid Domain or address literal (§4.1.2, with RFC 6531 U-labels)?
pub fn is_domain_or_literal(s: &str) -> bool {
    if s.starts_with('[') {
        is_address_literal(s)
    } else {
        is_domain(s)
    }
}

/// Splits `FROM:<path> params` into the path without brackets and the parameter text.
fn split_command<'a>(args: &'a str, prefix: &str) -> Result<(&'a str, &'a str), ArgError<'a>> {
    let head = args.get(..prefix.len()).ok_or(ArgError::Syntax)?;
    if !head.eq_ignore_ascii_case(prefix) {
        return Err(ArgError::Syntax);
    }
    let rest = args
        .get(prefix.len()..)
        .unwrap_or("")
        .trim_start_matches(' ');
    if rest.is_empty() {
        return Err(ArgError::Syntax);
    }
    let (inner, after, bracketed) = if let Some(body) = rest.strip_prefix('<') {
        let close = find_outside_quotes(body, b'>').ok_or(ArgError::BadPath("missing '>'"))?;
        (
            body.get(..close).unwrap_or(""),
            body.get(close + 1..).unwrap_or(""),
            true,
        )
    } else {
        let end = find_outside_quotes(rest, b' ').unwrap_or(rest.len());
        (
            rest.get(..end).unwrap_or(""),
            rest.get(end..).unwrap_or(""),
            false,
        )
    };
    if inner.len() + 2 > limits::SMTP_MAX_PATH {
        return Err(ArgError::PathTooLong);
    }
    if !bracketed && (inner.contains('<') || inner.contains('>')) {
        return Err(ArgError::BadPath("unbalanced angle brackets"));
    }
    let params = match after.strip_prefix(' ') {
        Some(p) => p,
        None if after.is_empty() => "",
        None => return Err(ArgError::Syntax),
    };
    Ok((inner, params))
}

/// Index of the first `target` octet not inside a quoted string (backslash escapes inside
/// quotes are honoured).
fn find_outside_quotes(s: &str, target: u8) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
        } else if in_quotes && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_quotes = !in_quotes;
        } else if !in_quotes && b == target {
            return Some(i);
        }
    }
    None
}

/// `[ A-d-l ":" ] Mailbox` (the route is checked and dropped, §4.1.2 and Appendix C).
fn parse_mailbox_path(inner: &str, recipient: bool) -> Result<Path<'_>, ArgError<'_>> {
    let mailbox = if inner.starts_with('@') {
        skip_source_route(inner)?
    } else {
        inner
    };
    let (local, domain) = split_mailbox(mailbox)?;
    if recipient && local_part_is_unsafe(local) {
        return Err(ArgError::UnsafeLocalPart);
    }
    if !local_part_is_valid(local) {
        return Err(ArgError::BadPath("bad local part"));
    }
    if !is_domain_or_literal(domain) {
        return Err(ArgError::BadPath("bad domain"));
    }
    Ok(Path {
        address: mailbox,
        non_ascii: !mailbox.is_ascii(),
    })
}

/// Checks `@d1,@d2:` and returns what follows the colon.
fn skip_source_route(inner: &str) -> Result<&str, ArgError<'_>> {
    const BAD_ROUTE: ArgError<'static> = ArgError::BadPath("bad source route");
    let mut rest = inner;
    loop {
        let after_at = rest.strip_prefix('@').ok_or(BAD_ROUTE)?;
        let end = if after_at.starts_with('[') {
            after_at.find(']').map(|i| i + 1).ok_or(BAD_ROUTE)?
        } else {
            after_at.find([',', ':']).ok_or(BAD_ROUTE)?
        };
        let domain = after_at.get(..end).ok_or(BAD_ROUTE)?;
        if !is_domain_or_literal(domain) {
            return Err(BAD_ROUTE);
        }
        let tail = after_at.get(end..).unwrap_or("");
        if let Some(next) = tail.strip_prefix(',') {
            rest = next;
        } else if let Some(mailbox) = tail.strip_prefix(':') {
            return Ok(mailbox);
        } else {
            return Err(BAD_ROUTE);
        }
    }
}

/// Splits `local@domain`; a quoted local part may itself contain `@`.
fn split_mailbox(mailbox: &str) -> Result<(&str, &str), ArgError<'_>> {
    let at = if mailbox.starts_with('"') {
        let close =
            quoted_end(mailbox).ok_or(ArgError::BadPath("unterminated quoted local part"))?;
        if mailbox.as_bytes().get(close + 1) != Some(&b'@') {
            return Err(ArgError::BadPath(
                "expected '@' after the quoted local part",
            ));
        }
        close + 1
    } else {
        mailbox
            .rfind('@')
            .ok_or(ArgError::BadPath("no domain (expected local@domain)"))?
    };
    let local = mailbox.get(..at).unwrap_or("");
    let domain = mailbox.get(at + 1..).unwrap_or("");
    if local.is_empty() {
        return Err(ArgError::BadPath("empty local part"));
    }
    if domain.is_empty() {
        return Err(ArgError::BadPath("empty domain"));
    }
    Ok((local, domain))
}

/// Index of the closing quote of a quoted string starting at index 0.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in s.as_bytes().iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i);
        }
    }
    None
}

/// The local part's content, quotes and escapes removed, octet by octet.
fn local_part_content(local: &str) -> impl Iterator<Item = u8> + '_ {
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    let body = if quoted {
        local.get(1..local.len() - 1).unwrap_or("")
    } else {
        local
    };
    let mut escaped = false;
    body.bytes().filter(move |&b| {
        if quoted && !escaped && b == b'\\' {
            escaped = true;
            return false;
        }
        escaped = false;
        true
    })
}

fn local_part_is_unsafe(local: &str) -> bool {
    let mut previous = 0u8;
    for b in local_part_content(local) {
        if b == b'/' || b < 0x20 || b == 0x7f || (b == b'.' && previous == b'.') {
            return true;
        }
        previous = b;
    }
    false
}

/// `Dot-string / Quoted-string` (§4.1.2), non-ASCII allowed as in RFC 6531 §3.3.
fn local_part_is_valid(local: &str) -> bool {
    if local.starts_with('"') {
        return quoted_end(local) == Some(local.len() - 1) && quoted_content_is_valid(local);
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

fn quoted_content_is_valid(local: &str) -> bool {
    let body = local.get(1..local.len() - 1).unwrap_or("");
    let mut escaped = false;
    for b in body.bytes() {
        if escaped {
            // quoted-pairSMTP = %d92 %d32-126
            if !(32..=126).contains(&b) {
                return false;
            }
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if !(b == 32 || b == 33 || (35..=91).contains(&b) || (93..=126).contains(&b))
            && b < 0x80
        {
            return false;
        }
    }
    !escaped
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// `sub-domain *("." sub-domain)`, each a letter-digit-hyphen label (or a U-label).
fn is_domain(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    s.split('.').all(|label| {
        let bytes = label.as_bytes();
        let let_dig = |b: &u8| b.is_ascii_alphanumeric() || *b >= 0x80;
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes.first().is_some_and(let_dig)
            && bytes.last().is_some_and(let_dig)
            && bytes.iter().all(|b| let_dig(b) || *b == b'-')
    })
}

/// `[1.2.3.4]` or `[IPv6:...]`. General address literals have no registered tag besides
/// IPv6, so they are refused.
fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner
            .get(5..)
            .is_some_and(|a| a.parse::<Ipv6Addr>().is_ok()),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    }
}

/// `SIZE=` value: 1*20 DIGIT (RFC 1870); overflow saturates, so it is simply over the limit.
fn parse_size(value: Option<&str>) -> Result<u64, ArgError<'static>> {
    const BAD: ArgError<'static> = ArgError::BadParameter("SIZE must be a number of octets");
    let v = value.ok_or(BAD)?;
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    Ok(v.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// `esmtp-param *(SP esmtp-param)`: yields (keyword, value) pairs or the first error.
fn parameters(
    params: &str,
) -> impl Iterator<Item = Result<(&str, Option<&str>), ArgError<'_>>> + '_ {
    params
        .split(' ')
        .filter(move |_| !params.is_empty())
        .map(|param| {
            if param.is_empty() {
                return Err(ArgError::Syntax);
            }
            let (keyword, value) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param, None),
            };
            // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
            let keyword_ok = keyword
                .as_bytes()
                .first()
                .is_some_and(u8::is_ascii_alphanumeric)
                && keyword
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            // esmtp-value = 1*(%d33-60 / %d62-126), UTF-8 allowed by RFC 6531 §3.3
            let value_ok = value.is_none_or(|v| {
                !v.is_empty()
                    && v.bytes()
                        .all(|b| ((33..=126).contains(&b) && b != b'=') || b >= 0x80)
            });
            if keyword_ok && value_ok {
                Ok((keyword, value))
            } else {
                Err(ArgError::BadParameter("malformed parameter"))
            }
        })
}

#[cfg(test)]
#[path = "smtp_addr_tests.rs"]
mod tests;
