//! starttls-proxy: a STARTTLS-terminating SMTP proxy.
//!
//! The modules follow the data flow of DESIGN.md §1: `listener` accepts,
//! `session` runs the pre-TLS dialogue (`smtp`), terminates TLS (`tls`) and
//! hands the session to `relay`, which talks to a `backend`; `config` and
//! `telemetry` serve them all; `cli` is what the binary runs. `probe` is
//! the client side: it diagnoses any SMTP server's STARTTLS (DESIGN.md §7).

pub mod backend;
pub mod cli;
pub mod config;
pub mod listener;
pub mod policy;
pub mod probe;
pub mod proxy_protocol;
pub mod relay;
pub mod session;
pub mod shutdown;
pub mod smtp;
pub mod telemetry;
pub mod tls;
