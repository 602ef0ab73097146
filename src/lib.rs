//! starttls-proxy: a STARTTLS-terminating SMTP proxy.
//!
//! The modules follow the data flow of DESIGN.md §1: `listener` accepts,
//! `session` runs the pre-TLS dialogue (`smtp`), terminates TLS (`tls`) and
//! relays to a `backend`; `config` and `telemetry` serve them all.

pub mod config;
pub mod smtp;
