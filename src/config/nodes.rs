//! The nodes of `[[shards]]`: connection URLs (PostgreSQL or MySQL) → [`NodeConfig`], and the
//! protocol a cluster speaks.

use std::str::FromStr;
use std::time::Duration;

use super::ConfigError;
use super::err;

/// The protocol a cluster's servers speak, from their URLs' scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mysql://` or `mariadb://`: MySQL or MariaDB servers.
    MySql,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Postgres => "PostgreSQL",
            Engine::MySql => "MySQL",
        })
    }
}

/// One backend server.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The protocol it speaks.
    pub engine: Engine,
    /// Name shown in admin views and metrics, e.g. "main/replica1".
    pub name: String,
    /// Host to connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Login password, if any.
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}://{}@{}:{}/{})",
            self.name,
            if self.engine == Engine::MySql {
                "mysql"
            } else {
                "postgres"
            },
            self.user,
            self.host,
            self.port,
            self.dbname
        )
    }
}

impl NodeConfig {
    /// tokio-postgres settings for monitor connections.
    pub fn pg_config(&self, connect_timeout: Duration) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host).port(self.port).user(&self.user).dbname(&self.dbname);
        c.application_name("shardwire-monitor").connect_timeout(connect_timeout);
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }
}

/// One shard: a primary and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardConfig {
    /// Shard name.
    pub name: String,
    /// The primary.
    pub primary: NodeConfig,
    /// Streaming replicas.
    pub replicas: Vec<NodeConfig>,
}

pub(super) fn node(name: &str, path: &str, url: &str) -> Result<NodeConfig, ConfigError> {
    if let Some(rest) = url.strip_prefix("mysql://").or_else(|| url.strip_prefix("mariadb://")) {
        return mysql_node(name, path, &format!("mysql://{rest}"));
    }
    let c = tokio_postgres::Config::from_str(url).map_err(|e| err(path, format!("not a connection URL: {e}")))?;
    let host = match c.get_hosts() {
        [tokio_postgres::config::Host::Tcp(h)] => h.clone(),
        [] => return Err(err(path, "the URL names no host")),
        [_] => return Err(err(path, "only TCP hosts are supported")),
        _ => return Err(err(path, "give one host per URL")),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let user = c
        .get_user()
        .ok_or_else(|| err(path, "the URL names no user"))?
        .to_owned();
    let password = c.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
    let dbname = c.get_dbname().unwrap_or(&user).to_owned();
    Ok(NodeConfig {
        engine: Engine::Postgres,
        name: name.to_owned(),
        host,
        port,
        user,
        password,
        dbname,
    })
}

/// A `mysql://user:password@host:port/db` URL, read by mysql_async (the driver the proxy's own
/// MySQL queries use), so both agree on what it means.
fn mysql_node(name: &str, path: &str, url: &str) -> Result<NodeConfig, ConfigError> {
    let o = mysql_async::Opts::from_url(url).map_err(|e| err(path, format!("not a MySQL URL: {e}")))?;
    let user = o.user().ok_or_else(|| err(path, "the URL names no user"))?.to_owned();
    let dbname = o
        .db_name()
        .ok_or_else(|| {
            err(
                path,
                "the URL names no database (mysql://user:password@host:port/database)",
            )
        })?
        .to_owned();
    Ok(NodeConfig {
        engine: Engine::MySql,
        name: name.to_owned(),
        host: o.ip_or_hostname().to_owned(),
        port: o.tcp_port(),
        user,
        password: o.pass().map(str::to_owned),
        dbname,
    })
}
