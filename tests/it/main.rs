//! Integration tests: real PostgreSQL (a primary with a streaming replica) started in temporary
//! folders, shardwire in-process in front, real clients (tokio-postgres, psql, pgbench).

mod admin;
mod auth;
mod bad_input;
mod cli;
mod clients;
mod cluster;
mod collation;
mod differential;
mod drivers;
mod encoding;
mod failover;
mod harness;
mod ids;
mod inserts;
mod lag;
mod limits;
mod map_admin;
mod map_churn;
mod map_swap;
mod mysql;
mod mysql_bad_input;
mod mysql_clients;
mod mysql_sharding;
mod mysql_state;
mod mysql_xa;
mod node_loss;
mod protocol;
mod rebalance;
mod routing;
mod session_state;
mod sharding;
mod shards;
mod tls;
mod topology_reload;
mod transactions;
