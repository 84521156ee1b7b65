//! The DATA decoder: CRLF.CRLF framing, dot-unstuffing, bare-LF normalisation (RFC 5321 §4.5.2).
