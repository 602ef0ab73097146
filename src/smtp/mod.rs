//! SMTP without I/O: the line codec, commands, reply texts, the pre-TLS
//! dialogue and the reply parser the relay uses. Bytes go in, decisions
//! come out; the session task owns the sockets.

pub mod codec;
pub mod command;
pub mod data;
pub mod dialogue;
pub mod ehlo;
pub mod received;
pub mod reply;
pub mod transaction;
