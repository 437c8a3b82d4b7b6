//! Operating views: the admin console (database `shardwire` on the client port) and the HTTP
//! endpoint for Prometheus `/metrics` and `/health`. Both read the shared handles; neither
//! reaches into sessions.

pub mod console;
pub mod http;
pub mod views;
