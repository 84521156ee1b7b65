//! postling: a small SMTP, POP3 and POP2 mail server in one thread around one `mio` reactor.
//!
//! Module map (see shared/DESIGN.md): `proto` holds the sans-I/O sessions; `reactor` and
//! `conn` own sockets, buffers and deadlines; `tls` is the sans-I/O TLS transport below the
//! sessions; `spool` owns durability; `deliver` owns delivery and its schedule; `config` and
//! `directory` turn files into typed values.

pub mod auth;
pub mod buf;
pub mod config;
pub mod conn;
pub mod control;
pub mod daemon;
pub mod date;
pub mod deadline;
pub mod deliver;
pub mod directory;
pub mod dirfd;
pub mod dns;
pub mod durable;
pub mod exec;
pub mod hosts;
pub mod lf;
pub mod limits;
pub mod listen;
pub mod mail;
pub mod mailbox;
pub mod maildir;
pub mod outbound;
pub mod pickup;
pub mod proto;
pub mod reactor;
pub mod sendmail;
pub mod spool;
pub mod throttle;
pub mod tls;
pub mod turnstat;
