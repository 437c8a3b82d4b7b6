//! The PostgreSQL frontend/backend protocol (version 3): framing, the few message bodies the proxy
//! must look inside, builders for the messages it answers itself, and SQLSTATE codes.
//!
//! Framing is written here rather than taken from `postgres-protocol`, whose `backend::Message`
//! parser decodes every message it reads: the proxy forwards most messages untouched and must keep
//! their raw bytes. `postgres-protocol` is still used for the backend handshake and SCRAM.
#![warn(missing_docs)]

pub mod codec;
#[cfg(test)]
mod fuzz_tests;
pub mod messages;
pub mod oid;
pub mod rows;
pub mod sqlstate;

pub use codec::{Frame, ProtocolError, StartupPacket};
