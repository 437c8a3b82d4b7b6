//! `shardwire demo`: a local sandbox (PostgreSQL, or MariaDB with `--mysql`) in a temporary
//! folder with shardwire in front, until Ctrl-C.

use anyhow::Result;
use shardwire::sandbox::Sandbox;
use shardwire::sandbox_mysql::MariaSandbox;

use crate::{DEMO_LISTEN, serve};

/// Where the MySQL demo listens (a free port when taken).
const DEMO_MYSQL_LISTEN: &str = "127.0.0.1:3307";

pub(crate) fn demo(replicas: usize, shards: usize, listen: &str) -> Result<()> {
    // The default port may be taken (a local PgBouncer, say): take a free one rather than fail.
    let listen = match std::net::TcpListener::bind(listen) {
        Ok(_) => listen.to_string(),
        Err(e) if listen == DEMO_LISTEN => {
            eprintln!("{listen} is in use ({e}); picking a free port");
            "127.0.0.1:0".to_string()
        }
        Err(e) => anyhow::bail!("cannot listen on {listen}: {e}"),
    };
    eprintln!(
        "starting PostgreSQL: {shards} shard(s), each a primary and {replicas} replica(s), in temporary folders..."
    );
    let mut sandboxes = Vec::new();
    for _ in 0..shards {
        sandboxes.push(Sandbox::start(replicas)?);
    }
    let sandbox = &sandboxes[0];
    let urls: Vec<(String, Vec<String>)> = sandboxes
        .iter()
        .map(|sb| (sb.url(&sb.primary), sb.replicas.iter().map(|r| sb.url(r)).collect()))
        .collect();
    let shards_text = shards_section(&urls, &sandbox.dir)?;
    let config_text = format!(
        r#"# Written by `shardwire demo`.
[server]
listen = "{listen}"
admin_http = "127.0.0.1:0"

[routing]
max_replica_lag = "1s"
lag_check_interval = "200ms"

[[users]]
name = "app"
password = "app"

[[users]]
name = "admin"
password = "admin"
admin = true
{shards_text}"#
    );
    let path = sandbox.dir.join("shardwire.toml");
    std::fs::write(&path, &config_text)?;
    let config = shardwire::config::load(&path)?;
    let dir = sandbox.dir.clone();
    let workers = config.server.workers;
    let result = shardwire::serve::block_on(
        workers,
        serve(config, Some(path.clone()), move |bound, _| {
            let port = bound.pg.port();
            println!();
            println!("shardwire is up. Connect with:");
            println!(
                "  psql \"postgres://app:app@127.0.0.1:{port}/{}\"",
                shardwire::sandbox::DATABASE
            );
            if shards > 1 {
                println!(
                    "Sharded tables users (id) and orders (user_id), reference table countries: create them through shardwire,"
                );
                println!(
                    "  e.g. CREATE TABLE users (id bigint PRIMARY KEY, name text); then SHOW ROUTE FOR <query> in the admin console."
                );
            }
            println!(
                "Admin console (SHOW SHARDS, SHOW MAP, SHOW ROUTE FOR <query>, SHOW REPLICAS, SHOW POOLS, RELOAD):"
            );
            println!("  psql \"postgres://admin:admin@127.0.0.1:{port}/shardwire\"");
            if let Some(h) = bound.http {
                println!("Metrics: http://{h}/metrics   Health: http://{h}/health");
            }
            println!(
                "Config: {} (edit, then kill -HUP {} to reload)",
                path.display(),
                std::process::id()
            );
            println!(
                "Sandbox folder: {} — Ctrl-C stops everything and removes it.",
                dir.display()
            );
        }),
    );
    drop(sandboxes);
    result?
}

/// The demo's shard map: `users` and `orders` co-located by user id over 256 hash partitions
/// spread evenly, `countries` on every shard.
pub(crate) fn demo_map(shards: usize) -> String {
    let per = 256 / shards;
    let assignment: Vec<String> = (0..shards)
        .map(|i| {
            let end = if i + 1 == shards { 255 } else { (i + 1) * per - 1 };
            format!("s{i} = \"{}-{end}\"", i * per)
        })
        .collect();
    let names: Vec<String> = (0..shards).map(|i| format!("\"s{i}\"")).collect();
    format!(
        "# Written by `shardwire demo`. Format: docs/shard-maps.md\nversion = 1\nshards = [{}]\ndefault_shard = \"s0\"\n\n\
         [groups.users]\nkey_type = \"bigint\"\npartitioning = {{ kind = \"hash\", partitions = 256 }}\nassignment = {{ {} }}\n\n\
         [tables.users]\ngroup = \"users\"\nkey = \"id\"\n\n[tables.orders]\ngroup = \"users\"\nkey = \"user_id\"\n\n\
         [tables.countries]\nreference = true\n",
        names.join(", "),
        assignment.join(", ")
    )
}

/// The sandbox's shard entries and shard map section, for `[[shards]]` URLs per sandbox.
fn shards_section(urls: &[(String, Vec<String>)], dir: &std::path::Path) -> Result<String> {
    let mut out = String::new();
    if urls.len() > 1 {
        std::fs::write(dir.join("map.toml"), demo_map(urls.len()))?;
        out.push_str("\n[sharding]\nmap = \"map.toml\"\n");
    }
    for (i, (primary, replicas)) in urls.iter().enumerate() {
        let name = if urls.len() == 1 {
            "main".to_string()
        } else {
            format!("s{i}")
        };
        let r: Vec<String> = replicas.iter().map(|u| format!("\"{u}\"")).collect();
        out.push_str(&format!(
            "\n[[shards]]\nname = \"{name}\"\nprimary = \"{primary}\"\nreplicas = [{}]\n",
            r.join(", ")
        ));
    }
    Ok(out)
}

pub(crate) fn demo_mysql(replicas: usize, shards: usize) -> Result<()> {
    let listen = match std::net::TcpListener::bind(DEMO_MYSQL_LISTEN) {
        Ok(_) => DEMO_MYSQL_LISTEN,
        Err(e) => {
            eprintln!("{DEMO_MYSQL_LISTEN} is in use ({e}); picking a free port");
            "127.0.0.1:0"
        }
    };
    eprintln!(
        "starting MariaDB: {shards} shard(s), each a primary and {replicas} binlog replica(s), in temporary folders..."
    );
    let mut sandboxes = Vec::new();
    for _ in 0..shards {
        sandboxes.push(MariaSandbox::start(replicas)?);
    }
    let urls: Vec<(String, Vec<String>)> = sandboxes
        .iter()
        .map(|sb| (sb.url(&sb.primary), sb.replicas.iter().map(|r| sb.url(r)).collect()))
        .collect();
    let dir = sandboxes[0].dir.clone();
    let config_text = format!(
        r#"# Written by `shardwire demo --mysql`.
[server]
listen = "127.0.0.1:0"
mysql_listen = "{listen}"
admin_http = "127.0.0.1:0"

[routing]
max_replica_lag = "1s"
lag_check_interval = "200ms"

[[users]]
name = "app"
password = "app"
{}"#,
        shards_section(&urls, &dir)?
    );
    let path = dir.join("shardwire.toml");
    std::fs::write(&path, &config_text)?;
    let config = shardwire::config::load(&path)?;
    let workers = config.server.workers;
    let result = shardwire::serve::block_on(
        workers,
        serve(config, Some(path.clone()), move |bound, _| {
            let port = bound.mysql.map_or(0, |a| a.port());
            println!();
            println!("shardwire is up. Connect with:");
            println!(
                "  mariadb -h 127.0.0.1 -P {port} -u app -papp {}",
                shardwire::sandbox_mysql::DATABASE
            );
            if shards > 1 {
                println!("Sharded tables users (id) and orders (user_id): create them through shardwire,");
                println!("  e.g. CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR(40));");
            }
            if let Some(h) = bound.http {
                println!("Metrics: http://{h}/metrics   Health: http://{h}/health");
            }
            println!(
                "Config: {} — Ctrl-C stops everything and removes the folder.",
                path.display()
            );
        }),
    );
    drop(sandboxes);
    result?
}
