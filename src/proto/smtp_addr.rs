//! RFC 5321 path and parameter syntax for MAIL and RCPT (§4.1.2).
