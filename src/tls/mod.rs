//! The TLS transport: owns the server's TLS identity (certificate chain, key, the shared
//! `rustls::ServerConfig`), the client's configurations (`client_config_verified`,
//! `client_config_unverified`) and the sans-I/O TLS state of one connection, either side:
//! `TlsServerSession` and `TlsClientSession` are one type, `TlsSession`, driven by the same
//! code. It never touches a socket, a clock or a session: the reactor moves bytes between the
//! socket, this module and the session, on buffers the connection owns (see shared/DESIGN.md,
//! "Transport").
//!
//! rustls runs through its unbuffered API (`UnbufferedServerConnection`,
//! `UnbufferedClientConnection`), which works on the caller's buffers instead of growable
//! queues of its own. Session tickets, session caches and resumption are off on both sides;
//! every outgoing record fits half of `OUT_BUF` (`TLS_RECORD_OUT_MAX`).
//!
//! # Buffers
//! A TLS connection uses four, all the caller's:
//! - `tls_in`: `TLS_IN_BUF` (18,437) bytes, one whole record of ciphertext. rustls decrypts
//!   in place and joins a handshake message split over records inside it, so its unconsumed
//!   bytes must be kept as they are between calls (new ciphertext is appended after them).
//! - `plain_in`: the session's input buffer; decrypted plaintext lands in its free room.
//! - `plain_out`: the session's output (its replies), encrypted from there.
//! - `tls_out`: `OUT_BUF` bytes for records to send. During the handshake `pump` reads input
//!   only while `tls_out` has room for a whole record, `TLS_RECORD_OUT_MAX` (see
//!   `output_room_needed`): rustls hands out a handshake record only to be written at once.
//!
//! # Call order
//! 1. `TlsIdentity::load` once (and on reload); `TlsServerSession::new(config)` per
//!    connection. A client: a config once, `TlsClientSession::new(config, server_name)` per
//!    connection, then step 3 at once (its first `pump` writes the ClientHello).
//! 2. When the socket is readable and `wants_read()`, read into the free end of `tls_in`.
//! 3. Call `pump` with the unconsumed front of `tls_in`, the session's pending output, the
//!    free room of the session's input buffer and the free room of `tls_out`. Then, in this
//!    order: drop `tls_consumed` bytes from the front of `tls_in`; drop `plain_consumed`
//!    bytes of the session's output; give the session `plaintext_len` new bytes of input
//!    (and end of input if `peer_closed`); queue `tls_out_len` bytes for the socket.
//! 4. Call `pump` again, without waiting for the socket, while it makes progress and
//!    anything is waiting: the session wrote new output, `needs_output_room` after the
//!    output buffer drained, `plaintext_held` after the session consumed input.
//! 5. Sessions write nothing before `handshake_done` (`pump` encrypts nothing until then,
//!    so their output just waits). To end a connection, call `close_notify()` and `pump`
//!    until `closed`; after `closed` send what is in `tls_out` and close the socket. A
//!    failure (`error`, e.g. garbage instead of a ClientHello) also sets `closed`, with the
//!    alert rustls chose for the peer in `tls_out`.
//!
//! Deadlines stay the reactor's: a peer that stalls mid-handshake just never completes one.

mod client;
mod identity;
mod session;

pub use client::{client_config_unverified, client_config_verified};
pub use identity::TlsIdentity;
pub use session::{
    Buffers, Progress, TlsClientSession, TlsError, TlsServerSession, TlsSession,
    UnbufferedConnection,
};

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod tests;
