//! Operating views: the tables the admin console prints (the console's session, database
//! `shardwire` on the client port, is `session::admin`) and the HTTP endpoint for Prometheus
//! `/metrics` and `/health`. Both read the shared handles; neither reaches into sessions.

pub mod http;
pub mod nodes;
pub mod views;
