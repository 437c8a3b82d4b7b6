//! Wire protocols, bytes ⇄ messages, no sockets. Each front end has its own submodule; nothing
//! here knows about routing, pools or sessions.
pub mod mysql;
pub mod pg;
