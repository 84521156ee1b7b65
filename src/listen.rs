//! Binding the listening sockets, with one clear line per failure.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

use crate::conn::Proto;
use crate::limits;

pub struct Listener {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// Implicit TLS (RFC 8314): every connection starts with the TLS handshake.
    pub tls: bool,
    /// A message submission port (RFC 6409; `submission_listen`, and `smtps_listen`).
    pub submission: bool,
    pub socket: mio::net::TcpListener,
    /// The backlog may hold connections: set by a readiness event (edge-triggered, so it is
    /// not repeated), cleared when accept() says WouldBlock.
    pub backlog: bool,
}

/// A listener that could not be bound: protocol, address, OS error and what to check.
#[derive(Debug)]
pub struct BindError {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub tls: bool,
    pub submission: bool,
    pub error: io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.submission && !self.tls {
            "submission_listen".to_string()
        } else {
            format!(
                "{}{}_listen",
                self.proto.name(),
                if self.tls { "s" } else { "" }
            )
        };
        let hint = match self.error.raw_os_error() {
            Some(libc::EADDRINUSE) => format!(
                "another program is already listening on port {} (see `ss -ltnp 'sport = :{}'`); stop it or change {key}",
                self.addr.port(),
                self.addr.port()
            ),
            Some(libc::EACCES) | Some(libc::EPERM) => format!(
                "ports below 1024 need root (or CAP_NET_BIND_SERVICE); start postling as root or change {key}"
            ),
            Some(libc::EADDRNOTAVAIL) => format!(
                "{} is not an address of this machine (see `ip addr`); change {key}",
                self.addr.ip()
            ),
            Some(libc::EAFNOSUPPORT) => format!(
                "this machine has no IPv6 support; remove {} from {key}",
                self.addr
            ),
            _ => format!("check {key}"),
        };
        write!(
            f,
            "cannot listen for {} on {}: {}; {}",
            self.proto.name().to_uppercase(),
            self.addr,
            self.error,
            hint
        )
    }
}

/// Binds one address: SO_REUSEADDR so a restart works while old connections sit in TIME_WAIT,
/// IPV6_V6ONLY so `0.0.0.0:25` and `[::]:25` can both be listed.
pub fn bind(
    proto: Proto,
    addr: SocketAddr,
    tls: bool,
    submission: bool,
) -> Result<Listener, BindError> {
    let wrap = |error| BindError {
        proto,
        addr,
        tls,
        submission,
        error,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(wrap)?;
    socket.set_reuse_address(true).map_err(wrap)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(wrap)?;
    }
    socket.set_nonblocking(true).map_err(wrap)?;
    socket.set_cloexec(true).map_err(wrap)?;
    socket.bind(&addr.into()).map_err(wrap)?;
    socket.listen(limits::LISTEN_BACKLOG).map_err(wrap)?;
    let std_listener: std::net::TcpListener = socket.into();
    // The kernel picked the port if 0 was asked for; report the real one.
    let addr = std_listener.local_addr().unwrap_or(addr);
    Ok(Listener {
        proto,
        addr,
        tls,
        submission,
        socket: mio::net::TcpListener::from_std(std_listener),
        backlog: true,
    })
}

/// A configured listener: protocol, address, implicit TLS, submission port.
pub type Wanted = (Proto, SocketAddr, bool, bool);

/// Binds every configured address (protocol, address, implicit TLS, submission), or none: postling never
/// starts half-way.
pub fn bind_all(wanted: &[Wanted]) -> Result<Vec<Listener>, BindError> {
    let mut out = Vec::new();
    for &(proto, addr, tls, submission) in wanted {
        out.push(bind(proto, addr, tls, submission)?);
    }
    Ok(out)
}
