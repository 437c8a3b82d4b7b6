//! Configuration: read a TOML file (`raw`), validate it (`validate`; logins and their secrets in
//! `users`) into typed values (`typed`). `serve`, `check` and `RELOAD` all go through [`load`], so
//! they accept and reject exactly the same files.

mod cluster;
mod nodes;
pub mod raw;
mod shards;
pub mod tls;
mod typed;
mod users;
pub mod validate;

use std::path::Path;

pub use tls::{TlsConfig, TlsMode};
pub use validate::{
    Auth, Balance, ClusterConfig, Config, Engine, Failover, IdsConfig, NodeConfig, PoolConfig, PoolMode, RoutingConfig,
    ScramVerifier, ServerConfig, ShardConfig, User, WhenNoReplica, WorkerId,
};

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type or unknown (with line and column).
    #[error("{0}")]
    Parse(String),
    /// Well-formed but not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `routing.when_no_replica`.
        path: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// Parses and validates a configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    validate::validate(raw, None)
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let raw: Result<raw::RawConfig, _> = toml::from_str(&text).map_err(|e| ConfigError::Parse(e.to_string()));
    raw.and_then(|raw| validate::validate(raw, path.parent()))
        .map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            ConfigError::Invalid { path: p, message } => ConfigError::Invalid {
                path: format!("{}: {p}", path.display()),
                message,
            },
            other => other,
        })
}

/// A validation error at `path` (the field, as the file names it).
pub(crate) fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// One of the named `choices`, `default` when the field is absent.
pub(crate) fn one_of<T: Copy>(
    path: &str,
    value: Option<&str>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    choices
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<_> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            err(path, format!("`{v}` is not one of {}", names.join(", ")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:6432"
        [[users]]
        name = "app"
        password = "secret"
        [[shards]]
        name = "main"
        primary = "postgres://postgres@127.0.0.1:5432/app"
        replicas = ["postgres://postgres@127.0.0.1:5433/app"]
    "#;

    #[test]
    fn minimal_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.database, "app");
        assert_eq!(c.server.pool_mode, PoolMode::Transaction);
        assert_eq!(c.shards[0].replicas.len(), 1);
        assert_eq!(c.shards[0].replicas[0].port, 5433);
        assert!(matches!(c.users["app"].auth, Auth::Scram(_)));
        assert!(c.routing.primary_functions.contains("nextval"));
    }

    #[test]
    fn rejects_with_field_path() {
        let bad = MINIMAL.replace("[[users]]", "[routing]\nwhen_no_replica = \"maybe\"\n[[users]]");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("routing.when_no_replica") && e.contains("maybe"), "{e}");
        let unknown = MINIMAL.replace("listen =", "lisen = \"x\"\nlisten =");
        let e = parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let bad_url = MINIMAL.replace("postgres://postgres@127.0.0.1:5433/app", "nonsense://");
        let e = parse(&bad_url).unwrap_err().to_string();
        assert!(e.contains("shards[0].replicas[0]"), "{e}");
        let no_statements = MINIMAL.replace("[[users]]", "[pool]\nmax_prepared_statements = 0\n[[users]]");
        let e = parse(&no_statements).unwrap_err().to_string();
        assert!(e.contains("pool.max_prepared_statements"), "{e}");
        let md5_for_scram = MINIMAL.replace("\"secret\"", "\"md5a3556571e93b0d20722ba62be61e8c2d\"");
        assert!(parse(&md5_for_scram).is_err());
    }

    #[test]
    fn md5_hash_from_plain_password() {
        let c = parse(&MINIMAL.replace("password = \"secret\"", "password = \"secret\"\nauth = \"md5\"")).unwrap();
        // md5("secretapp")
        assert_eq!(
            c.users["app"].auth,
            Auth::Md5 {
                hash: "6a422f785c9e20873908ce25d1736ae2".into()
            }
        );
    }

    #[test]
    fn the_documented_example_is_valid() {
        let c = parse(include_str!("../../examples/shardwire.toml")).unwrap();
        assert_eq!(c.shards[0].replicas.len(), 2);
        assert!(c.routing.primary_functions.contains("audit_event"));
        assert!(c.users["app"].read_your_writes);
        assert!(!c.users["reports"].read_your_writes);
        assert_eq!(
            c.users["reports"].auth,
            Auth::Md5 {
                hash: "f0b9a02b5a3b9b1aa4c0f7d0f6d52a1e".into()
            }
        );
    }

    #[test]
    fn scram_verifier_parses() {
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        let p = ScramVerifier::parse(&v).unwrap();
        assert_eq!(p.iterations, 4096);
        assert_eq!(p.stored_key.len(), 32);
        assert!(ScramVerifier::parse("SCRAM-SHA-256$x").is_none());
    }
}
