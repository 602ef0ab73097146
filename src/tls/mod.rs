//! TLS termination: certificates loaded from PEM (`load`), the immutable
//! store a handshake picks from (`store`), and the acceptor that reads the
//! ClientHello, chooses, and completes the handshake (`acceptor`).

pub mod acceptor;
pub mod hello;
pub mod load;
pub mod provider;
pub mod reload;
pub mod store;
pub mod validate;

pub use acceptor::{HandshakeError, HandshakeFailure, HandshakeInfo, TlsTerminator};
pub use store::{CertStore, SniMatch};
