//! `TlsSession`: one TLS connection over rustls's unbuffered API, run on buffers its caller
//! owns; `TlsServerSession` and `TlsClientSession` are its two sides, driven by the same
//! code. See the module docs of `tls` for the call order.

use std::fmt;
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncryptError, InsufficientSizeError, UnbufferedStatus};
use rustls::{CipherSuite, ClientConfig, CommonState, ProtocolVersion, ServerConfig};

use crate::limits::{
    TLS_CIPHER_OVERHEAD, TLS_IN_BUF, TLS_MAX_FRAGMENT, TLS_OUT_MIN_TRAFFIC, TLS_RECORD_HEADER,
    TLS_RECORD_OUT_MAX,
};

/// The four buffers of one `pump` call, all owned by the caller.
pub struct Buffers<'a> {
    /// Received ciphertext not yet consumed: the filled front of the connection's TLS input
    /// buffer (`TLS_IN_BUF` bytes). rustls decrypts in place, so these bytes are changed.
    pub tls_in: &'a mut [u8],
    /// Plaintext the session wrote, to be encrypted and sent.
    pub plain_out: &'a [u8],
    /// Free room in the session's input buffer for decrypted plaintext.
    pub plain_in: &'a mut [u8],
    /// Free room in the connection's output buffer for TLS records (`OUT_BUF` when empty; at
    /// least `TLS_RECORD_OUT_MAX`).
    pub tls_out: &'a mut [u8],
}

/// What one `pump` call did, and what it waits for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Progress {
    /// Drop this many bytes from the front of `tls_in`; keep the rest as it is (rustls may
    /// have half-joined a handshake message in it) and append new ciphertext after it.
    pub tls_consumed: usize,
    /// Bytes of `plain_out` encrypted; drop them from the session's output.
    pub plain_consumed: usize,
    /// Bytes of plaintext written to the front of `plain_in`; hand them to the session.
    pub plaintext_len: usize,
    /// Bytes of TLS records written to the front of `tls_out`; send them, in order.
    pub tls_out_len: usize,
    /// The handshake is complete (stays true).
    pub handshake_done: bool,
    /// The peer sent close_notify: no more plaintext will come (the session sees end of input).
    pub peer_closed: bool,
    /// Nothing more will happen on this connection: send what is in `tls_out`, then close the
    /// socket. Set after close_notify was written, after the peer's and ours, and on error.
    pub closed: bool,
    /// The call stopped because `tls_out` had too little room: send it, then call again
    /// (without waiting for the socket to become readable).
    pub needs_output_room: bool,
    /// Decrypted plaintext waits inside the session for room in `plain_in`: call again once
    /// the session consumed input, and do not read the socket meanwhile (`wants_read`).
    pub plaintext_held: bool,
    /// Why the connection failed (`closed` is set too). Logged, never shown to the peer
    /// beyond the alert rustls sends.
    pub error: Option<TlsError>,
}

/// Why a TLS connection failed.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// The peer broke the protocol or failed the handshake (rustls's reason).
    Protocol(rustls::Error),
    /// A handshake message spans more than `TLS_IN_BUF` bytes of records.
    TooLarge,
    /// The caller broke a rule of the call order (a bug, never the peer's doing); the
    /// connection is closed rather than a buffer grown or a record lost.
    Internal(&'static str),
    /// A client session was asked for a server name that is neither a DNS name nor an IP
    /// address (the name as given).
    ServerName(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "TLS error: {e}"),
            TlsError::TooLarge => {
                write!(
                    f,
                    "TLS error: handshake message larger than {TLS_IN_BUF} bytes"
                )
            }
            TlsError::Internal(what) => write!(f, "TLS transport error: {what}"),
            TlsError::ServerName(name) => {
                write!(f, "TLS error: {name:?} is not a valid server name")
            }
        }
    }
}

/// Where one step of the loop in `pump` leaves it.
enum Step {
    Again,
    Stop,
    /// rustls could not make progress without more ciphertext.
    NeedInput,
    Fail(TlsError),
}

/// What `TlsSession` needs of a rustls unbuffered connection. rustls gives its server and
/// client connections the same methods but no common trait; this is it, implemented for
/// those two only.
pub trait UnbufferedConnection: sealed::Sealed {
    /// rustls's per-side state, the type parameter of its connection states.
    type Data;
    /// rustls's `process_tls_records`.
    fn process<'c, 'i>(&'c mut self, tls_in: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// The state both sides share: handshake progress, version, cipher suite.
    fn common(&self) -> &CommonState;
}

mod sealed {
    pub trait Sealed {}
}

/// Implements `UnbufferedConnection` for one of rustls's two connection types.
macro_rules! unbuffered_connection {
    ($conn:ty, $data:ty) => {
        impl sealed::Sealed for $conn {}
        impl UnbufferedConnection for $conn {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                tls_in: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, $data> {
                self.process_tls_records(tls_in)
            }
            fn common(&self) -> &CommonState {
                self
            }
        }
    };
}
unbuffered_connection!(UnbufferedServerConnection, ServerConnectionData);
unbuffered_connection!(UnbufferedClientConnection, ClientConnectionData);

/// A server-side TLS connection: waits for the ClientHello.
pub type TlsServerSession = TlsSession<UnbufferedServerConnection>;
/// A client-side TLS connection: its first `pump` writes the ClientHello.
pub type TlsClientSession = TlsSession<UnbufferedClientConnection>;

/// One TLS connection, either side. Holds rustls's state and, only while a decrypted record
/// is being handed to a session whose input buffer is full, that record's remainder.
pub struct TlsSession<C> {
    conn: C,
    /// Decrypted plaintext that did not fit `plain_in`, from `held_from` on. Empty, with no
    /// allocation, except while the session's input buffer is full; bounded by the plaintext
    /// of one `TLS_IN_BUF` of ciphertext, because the caller reads no more ciphertext until
    /// it is delivered.
    held: Vec<u8>,
    held_from: usize,
    close_requested: bool,
    close_sent: bool,
    peer_closed: bool,
    closed: bool,
    error: Option<TlsError>,
}

impl TlsServerSession {
    /// A connection in its handshake, waiting for the ClientHello.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsServerSession, TlsError> {
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Protocol)?;
        Ok(TlsSession::with(conn))
    }
}

impl TlsClientSession {
    /// A connection in its handshake to `server_name`, a DNS name (sent as SNI, and the name
    /// a verifying `config` checks the certificate for) or an IP address literal (`192.0.2.1`,
    /// `2001:db8::1`, no brackets). The first `pump` writes the ClientHello: call it at once,
    /// before waiting for the socket to become readable.
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<TlsClientSession, TlsError> {
        let name = ServerName::try_from(server_name)
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?
            .to_owned();
        let conn = UnbufferedClientConnection::new(config, name).map_err(TlsError::Protocol)?;
        Ok(TlsSession::with(conn))
    }
}

impl<C: UnbufferedConnection> TlsSession<C> {
    fn with(conn: C) -> TlsSession<C> {
        TlsSession {
            conn,
            held: Vec::new(),
            held_from: 0,
            close_requested: false,
            close_sent: false,
            peer_closed: false,
            closed: false,
            error: None,
        }
    }

    /// Whether the caller should read more ciphertext from the socket into `tls_in`: not
    /// while plaintext waits for the session, and not after the peer's close or a failure.
    pub fn wants_read(&self) -> bool {
        !self.closed && !self.peer_closed && self.held_len() == 0
    }

    /// The handshake is complete.
    pub fn handshake_done(&self) -> bool {
        !self.conn.common().is_handshaking()
    }

    /// Room `tls_out` must have for `pump` to read input: a whole record during the handshake
    /// (a certificate record can be that large), an alert's worth after it.
    pub fn output_room_needed(&self) -> usize {
        if self.conn.common().is_handshaking() {
            TLS_RECORD_OUT_MAX
        } else {
            TLS_OUT_MIN_TRAFFIC
        }
    }

    /// Protocol version and IANA cipher suite name, once the handshake is done: for log lines
    /// and Received headers (`TLSv1.3`, `TLS_AES_256_GCM_SHA384`).
    pub fn negotiated(&self) -> Option<(&'static str, &'static str)> {
        if self.conn.common().is_handshaking() {
            return None;
        }
        let version = match self.conn.common().protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        };
        let suite = match self.conn.common().negotiated_cipher_suite()?.suite() {
            // rustls names the TLS 1.3 suites TLS13_*; RFC 8446 §B.4 names them TLS_*.
            CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
            CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
            other => other.as_str().unwrap_or("unknown"),
        };
        Some((version, suite))
    }

    /// Why the connection failed, if it did.
    pub fn error(&self) -> Option<&TlsError> {
        self.error.as_ref()
    }

    /// Asks for close_notify: the next `pump` writes it once all of its `plain_out` is
    /// encrypted, then reports `closed`. During the handshake there is nothing to send: the
    /// connection is closed at once.
    pub fn close_notify(&mut self) {
        self.close_requested = true;
        if self.conn.common().is_handshaking() {
            self.closed = true;
        }
    }

    /// Does everything possible with the given buffers: decrypts ciphertext from `tls_in`
    /// into `plain_in`, writes handshake records, encrypts `plain_out`, and writes
    /// close_notify when asked; stops when it needs more ciphertext, more output room or more
    /// plaintext room. Never allocates beyond rustls's own per-record work and `held`.
    pub fn pump(&mut self, buffers: Buffers<'_>) -> Progress {
        let Buffers {
            tls_in,
            plain_out,
            plain_in,
            tls_out,
        } = buffers;
        let mut p = Progress::default();
        if !self.closed {
            self.deliver_held(plain_in, &mut p);
            self.run(tls_in, plain_out, plain_in, tls_out, &mut p);
        }
        if self.closed {
            // Whatever the peer sent after a failure or after the end is of no use.
            p.tls_consumed = tls_in.len();
        }
        p.handshake_done = !self.conn.common().is_handshaking();
        p.peer_closed = self.peer_closed;
        p.closed = self.closed;
        p.plaintext_held = self.held_len() > 0;
        p
    }

    fn held_len(&self) -> usize {
        self.held.len() - self.held_from
    }

    /// Hands held plaintext to the session first, keeping the byte order.
    fn deliver_held(&mut self, plain_in: &mut [u8], p: &mut Progress) {
        let n = self.held_len().min(plain_in.len());
        plain_in[..n].copy_from_slice(&self.held[self.held_from..self.held_from + n]);
        p.plaintext_len += n;
        self.held_from += n;
        if self.held_len() == 0 {
            // Free the record's memory: an idle connection holds none.
            self.held = Vec::new();
            self.held_from = 0;
        }
    }

    fn run(
        &mut self,
        tls_in: &mut [u8],
        plain_out: &[u8],
        plain_in: &mut [u8],
        tls_out: &mut [u8],
        p: &mut Progress,
    ) {
        loop {
            if self.closed {
                return;
            }
            if tls_out.len() - p.tls_out_len < self.output_room_needed() {
                p.needs_output_room = true;
                return;
            }
            let status = self.conn.process(&mut tls_in[p.tls_consumed..]);
            let mut discard = status.discard;
            let step = match status.state {
                Err(e) => Step::Fail(TlsError::Protocol(e)),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Step::Again;
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                step = Step::Fail(TlsError::Protocol(e));
                                break;
                            }
                        };
                        discard += record.discard;
                        let payload = record.payload;
                        let fits = (plain_in.len() - p.plaintext_len).min(payload.len());
                        plain_in[p.plaintext_len..p.plaintext_len + fits]
                            .copy_from_slice(&payload[..fits]);
                        p.plaintext_len += fits;
                        let rest = &payload[fits..];
                        if !rest.is_empty() {
                            // The caller reads no ciphertext while plaintext is held, so
                            // this never exceeds what one input buffer decrypts to.
                            if self.held.len() - self.held_from + rest.len() > TLS_IN_BUF {
                                step = Step::Fail(TlsError::Internal(
                                    "ciphertext read while plaintext was held",
                                ));
                                break;
                            }
                            self.held.drain(..self.held_from);
                            self.held_from = 0;
                            self.held.extend_from_slice(rest);
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    match encode.encode(&mut tls_out[p.tls_out_len..]) {
                        Ok(n) => {
                            p.tls_out_len += n;
                            Step::Again
                        }
                        // `output_room_needed` makes this unreachable; closing beats
                        // dropping a record rustls has already counted as sent.
                        Err(_) => Step::Fail(TlsError::Internal(
                            "a TLS record did not fit the output room",
                        )),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The records are in `tls_out`; the caller sends them in order.
                    transmit.done();
                    Step::Again
                }
                Ok(ConnectionState::BlockedHandshake) => Step::NeedInput,
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Step::Again
                }
                Ok(ConnectionState::Closed) => {
                    self.closed = true;
                    Step::Stop
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let mut step = Step::NeedInput;
                    while p.plain_consumed < plain_out.len() {
                        let room = tls_out.len() - p.tls_out_len;
                        let Some(avail) = room
                            .checked_sub(TLS_RECORD_HEADER + TLS_CIPHER_OVERHEAD)
                            .filter(|&a| a > 0)
                        else {
                            p.needs_output_room = true;
                            break;
                        };
                        let rest = &plain_out[p.plain_consumed..];
                        let mut take = rest
                            .len()
                            .min(avail)
                            .min(TLS_MAX_FRAGMENT - TLS_RECORD_HEADER);
                        let result = loop {
                            match traffic.encrypt(&rest[..take], &mut tls_out[p.tls_out_len..]) {
                                // A TLS 1.3 KeyUpdate the peer asked for goes first and
                                // needs a few more bytes: encrypt less this time.
                                Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                    required_size,
                                })) if required_size - room < take => {
                                    take -= required_size - room;
                                }
                                other => break other,
                            }
                        };
                        match result {
                            Ok(n) => {
                                p.tls_out_len += n;
                                p.plain_consumed += take;
                            }
                            Err(EncryptError::InsufficientSize(_)) => {
                                p.needs_output_room = true;
                                break;
                            }
                            Err(EncryptError::EncryptExhausted) => {
                                step = Step::Fail(TlsError::Internal("TLS record keys exhausted"));
                                break;
                            }
                        }
                    }
                    if matches!(step, Step::NeedInput)
                        && self.close_requested
                        && !self.close_sent
                        && p.plain_consumed == plain_out.len()
                    {
                        match traffic.queue_close_notify(&mut tls_out[p.tls_out_len..]) {
                            Ok(n) => {
                                p.tls_out_len += n;
                                self.close_sent = true;
                                self.closed = true;
                            }
                            Err(_) => p.needs_output_room = true,
                        }
                    }
                    step
                }
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    // Server side only, and `max_early_data_size` is 0: rustls never accepts
                    // 0-RTT data.
                    Step::Fail(TlsError::Internal("TLS early data"))
                }
                Ok(_) => Step::Fail(TlsError::Internal("unknown rustls state")),
            };
            p.tls_consumed += discard;
            match step {
                Step::Again => {}
                Step::Stop => return,
                Step::NeedInput => {
                    // rustls joins a handshake message split over records in the input
                    // buffer; if the buffer is full and still no message is complete, no
                    // read can help.
                    if tls_in.len() - p.tls_consumed >= TLS_IN_BUF {
                        self.fail(TlsError::TooLarge, p);
                    }
                    return;
                }
                Step::Fail(e) => {
                    let send_alert = matches!(e, TlsError::Protocol(_));
                    self.fail(e, p);
                    if send_alert {
                        self.write_alert(&mut tls_in[p.tls_consumed..], tls_out, p);
                    }
                    return;
                }
            }
        }
    }

    fn fail(&mut self, e: TlsError, p: &mut Progress) {
        self.closed = true;
        p.error = Some(e.clone());
        self.error = Some(e);
    }

    /// After a protocol error rustls has queued the fatal alert that tells the peer why; it
    /// comes out of the next `process_tls_records` before any input is looked at.
    fn write_alert(&mut self, tls_in: &mut [u8], tls_out: &mut [u8], p: &mut Progress) {
        if tls_out.len() - p.tls_out_len < TLS_OUT_MIN_TRAFFIC {
            return;
        }
        let status = self.conn.process(tls_in);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            if let Ok(n) = encode.encode(&mut tls_out[p.tls_out_len..]) {
                p.tls_out_len += n;
            }
        }
    }
}
