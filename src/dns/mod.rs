//! The stub resolver: asks the system's recursive nameservers (or `dns_servers`) for MX and
//! address records, for delivery by MX.
//!
//! - `wire`: the DNS message codec (build a query, parse a response), strict and bounded;
//! - `resolver`: the sans-I/O session a driver feeds with time, datagrams and TCP bytes;
//! - `resolv_conf`: which servers to ask (`/etc/resolv.conf`, re-read on change, or the
//!   `dns_servers` override).
//!
//! Owns no socket and no clock: the reactor (or a test harness) carries out its `Output`s.

pub mod resolv_conf;
pub mod resolver;
pub mod wire;

#[doc(hidden)]
pub mod testing;

#[cfg(test)]
mod tests;

pub use resolv_conf::{ResolvConf, parse_dns_servers, parse_resolv_conf};
pub use resolver::{
    AddrResult, Answer, LookupId, MxResult, NO_SERVERS, Output, Resolver, Stats, TcpId, Want,
};
pub use wire::{Name, NameError, QType, WireError};
