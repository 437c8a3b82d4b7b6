//! The admin console's session: `psql -d shardwire` as an admin user. Simple queries only;
//! commands parse into [`Command`] values, answered with the tables of `admin::views`.

use std::sync::Arc;

use super::client::{ClientConn, SessionError};
use crate::admin::views::{self, Table};
use crate::app::Shared;
use crate::config::User;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::sqlstate::SqlState;

/// An admin command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// SHOW SHARDS
    Shards,
    /// SHOW REPLICAS
    Replicas,
    /// SHOW POOLS
    Pools,
    /// SHOW CLIENTS
    Clients,
    /// SHOW STATS
    Stats,
    /// SHOW VERSION
    Version,
    /// SHOW HELP
    Help,
    /// RELOAD, or RELOAD DATA IN PLACE: the DBA states that rows the new map sends to other
    /// shards are already there.
    Reload {
        /// Accept a map that moves existing keys.
        data_in_place: bool,
    },
    /// SHOW MAP: version, groups, partitions per shard.
    Map,
    /// SHOW MAP HISTORY: the changes applied since start.
    MapHistory,
    /// SHOW CLUSTER: the instances sharing the map through etcd, with the version each serves.
    Cluster,
    /// SHOW MOVES: partition moves and their progress, read from the shards.
    Moves,
    /// DISABLE REPLICA <node> / ENABLE REPLICA <node>: out of (back into) the read rotation.
    Replica {
        /// The node's name, e.g. `s1/replica0` (as SHOW REPLICAS prints it).
        node: String,
        /// Take it out.
        disable: bool,
    },
    /// SET PARTITION <group> <n> TO <shard> [STATE <state>] | STATE <state> [DATA IN PLACE] [VERSION <v>] [DRY RUN]
    SetPartition {
        /// The change.
        change: crate::shardmap::edit::MapEdit,
        /// The version it is based on.
        based_on: Option<u64>,
        /// The rows are already on the new shard.
        data_in_place: bool,
        /// Only say what would change.
        dry_run: bool,
    },
    /// ADD REPLICA <shard> '<url>' / REMOVE REPLICA <shard> '<url>': the configuration file
    /// edited and reloaded.
    ChangeReplicas(crate::app::topology_change::ReplicaChange),
    /// SHOW IDS: the ID generator.
    Ids,
    /// SHOW ROUTES: statements per plan kind.
    Routes,
    /// SHOW ROUTE FOR <sql>: the plan of a statement.
    Route(String),
    /// An empty query.
    Empty,
}

const HELP: &str = "SHOW SHARDS | SHOW REPLICAS | SHOW POOLS | SHOW CLIENTS | SHOW STATS | SHOW MAP | SHOW ROUTES | \
SHOW ROUTE FOR <statement> | SHOW IDS | SHOW VERSION | SHOW HELP | RELOAD | RELOAD DATA IN PLACE | SHOW MAP HISTORY | SHOW CLUSTER | SHOW MOVES | \
SET PARTITION <group> <n> TO <shard> [STATE <state>] [DATA IN PLACE] [VERSION <v>] [DRY RUN] | \
SET PARTITION <group> <n> STATE serving|moving|fenced [VERSION <v>] [DRY RUN] | DISABLE REPLICA <node> | ENABLE REPLICA <node> | \
ADD REPLICA <shard> '<url>' | REMOVE REPLICA <shard> '<url>'";

impl Command {
    /// Parses a console query (case-insensitive, optional trailing semicolon).
    pub fn parse(sql: &str) -> Result<Command, String> {
        let trimmed = sql.trim().trim_end_matches(';').trim();
        let mut it = trimmed.splitn(4, char::is_whitespace);
        if let (Some(a), Some(b), Some(c), Some(rest)) = (it.next(), it.next(), it.next(), it.next())
            && a.eq_ignore_ascii_case("show")
            && b.eq_ignore_ascii_case("route")
            && c.eq_ignore_ascii_case("for")
        {
            return Ok(Command::Route(rest.trim().to_owned()));
        }
        if let Some(c) = set_partition(trimmed)? {
            return Ok(c);
        }
        if let Some(c) = change_replicas(trimmed)? {
            return Ok(c);
        }
        if let [verb, what, node] = trimmed.split_whitespace().collect::<Vec<_>>().as_slice()
            && what.eq_ignore_ascii_case("replica")
            && (verb.eq_ignore_ascii_case("disable") || verb.eq_ignore_ascii_case("enable"))
        {
            return Ok(Command::Replica {
                node: node.to_string(),
                disable: verb.eq_ignore_ascii_case("disable"),
            });
        }
        let words: Vec<String> = sql
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        Ok(match words.as_slice() {
            [] => Command::Empty,
            ["SHOW", "REPLICAS"] | ["SHOW", "NODES"] => Command::Replicas,
            ["SHOW", "POOLS"] => Command::Pools,
            ["SHOW", "SHARDS"] => Command::Shards,
            ["SHOW", "MAP"] => Command::Map,
            ["SHOW", "MAP", "HISTORY"] => Command::MapHistory,
            ["SHOW", "CLUSTER"] => Command::Cluster,
            ["SHOW", "MOVES"] => Command::Moves,
            ["SHOW", "IDS"] => Command::Ids,
            ["SHOW", "ROUTES"] => Command::Routes,
            ["SHOW", "CLIENTS"] => Command::Clients,
            ["SHOW", "STATS"] => Command::Stats,
            ["SHOW", "VERSION"] => Command::Version,
            ["SHOW", "HELP"] | ["HELP"] => Command::Help,
            ["RELOAD"] => Command::Reload { data_in_place: false },
            ["RELOAD", "DATA", "IN", "PLACE"] => Command::Reload { data_in_place: true },
            _ => return Err(format!("unknown admin command \"{}\"; commands: {HELP}", sql.trim())),
        })
    }
}

/// `ADD REPLICA <shard> '<url>'` or `REMOVE REPLICA ...`, or `None` for another command.
fn change_replicas(sql: &str) -> Result<Option<Command>, String> {
    let mut it = sql.splitn(3, char::is_whitespace);
    let (Some(verb), Some(what)) = (it.next(), it.next()) else {
        return Ok(None);
    };
    let add = verb.eq_ignore_ascii_case("add");
    if !(add || verb.eq_ignore_ascii_case("remove")) || !what.eq_ignore_ascii_case("replica") {
        return Ok(None);
    }
    let usage = "ADD REPLICA <shard> '<url>' or REMOVE REPLICA <shard> '<url>'";
    let rest = it.next().unwrap_or("").trim();
    let (shard, url) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let url = url.trim();
    let url = match url.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')) {
        Some(u) if !shard.is_empty() && !u.is_empty() && !u.contains('\'') => u,
        _ => return Err(format!("the shard and the URL in single quotes are needed; {usage}")),
    };
    Ok(Some(Command::ChangeReplicas(
        crate::app::topology_change::ReplicaChange {
            shard: shard.to_owned(),
            url: url.to_owned(),
            add,
        },
    )))
}

/// `SET PARTITION ...`, or `None` for another command.
fn set_partition(sql: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let is = |i: usize, k: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(k));
    if !(is(0, "SET") && is(1, "PARTITION")) {
        return Ok(None);
    }
    let usage = "SET PARTITION <group> <n> TO <shard> [STATE <state>] [DATA IN PLACE] [VERSION <v>] [DRY RUN], \
                 or SET PARTITION <group> <n> STATE serving|moving|fenced [VERSION <v>] [DRY RUN] | DISABLE REPLICA <node> | ENABLE REPLICA <node>";
    let (Some(group), Some(n), Some(value)) = (words.get(2), words.get(3), words.get(5)) else {
        return Err(format!("incomplete command; {usage}"));
    };
    let partition: u32 = n
        .parse()
        .map_err(|_| format!("`{n}` is not a partition number; {usage}"))?;
    let mut i = 6;
    let change = if is(4, "TO") {
        // `TO <shard> STATE <state>`: both in one change (a move's switch lifts its fence).
        let state = if is(6, "STATE") {
            let v = words.get(7).ok_or_else(|| format!("STATE needs a state; {usage}"))?;
            i = 8;
            Some(
                crate::shardmap::PartitionState::parse(v)
                    .ok_or_else(|| format!("`{v}` is not one of serving, moving, fenced"))?,
            )
        } else {
            None
        };
        crate::shardmap::edit::MapEdit::Assign {
            group: group.to_string(),
            partition,
            shard: value.to_string(),
            state,
        }
    } else if is(4, "STATE") {
        let state = crate::shardmap::PartitionState::parse(value)
            .ok_or_else(|| format!("`{value}` is not one of serving, moving, fenced"))?;
        crate::shardmap::edit::MapEdit::State {
            group: group.to_string(),
            partition,
            state,
        }
    } else {
        return Err(format!("expected TO or STATE after the partition number; {usage}"));
    };
    let (mut based_on, mut data_in_place, mut dry_run) = (None, false, false);
    while i < words.len() {
        if is(i, "DATA") && is(i + 1, "IN") && is(i + 2, "PLACE") {
            data_in_place = true;
            i += 3;
        } else if is(i, "DRY") && is(i + 1, "RUN") {
            dry_run = true;
            i += 2;
        } else if is(i, "VERSION") {
            let v = words
                .get(i + 1)
                .ok_or_else(|| format!("VERSION needs a number; {usage}"))?;
            based_on = Some(v.parse().map_err(|_| format!("`{v}` is not a version number"))?);
            i += 2;
        } else {
            return Err(format!("unexpected `{}`; {usage}", words[i]));
        }
    }
    Ok(Some(Command::SetPartition {
        change,
        based_on,
        data_in_place,
        dry_run,
    }))
}

/// Serves one admin client until it leaves.
pub async fn run(mut client: ClientConn, user: Arc<User>, shared: Arc<Shared>) -> Result<(), SessionError> {
    loop {
        let f = match client.read_frame().await {
            Ok(f) => f,
            Err(SessionError::Gone) => return Ok(()),
            Err(e) => {
                if let Some((code, m)) = e.fatal_message() {
                    client.fatal(code, &m).await;
                }
                return Err(e);
            }
        };
        match f.tag() {
            b'Q' => {
                // Console commands are ASCII; anything else is read leniently and then unknown.
                let sql = String::from_utf8_lossy(msg::parse_query(f.body())?);
                execute(&mut client.wbuf, &sql, &shared, &user.name).await;
                msg::ready_for_query(&mut client.wbuf, b'I');
            }
            b'X' => return Ok(()),
            b'S' => msg::ready_for_query(&mut client.wbuf, b'I'),
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                let m = "the admin console takes simple queries only";
                msg::error_response(&mut client.wbuf, Severity::Error, SqlState::FEATURE_NOT_SUPPORTED, m);
            }
            other => {
                let m = format!("invalid frontend message type {other}");
                client.fatal(SqlState::PROTOCOL_VIOLATION, &m).await;
                return Ok(());
            }
        }
        client.flush().await?;
    }
}

async fn execute(out: &mut bytes::BytesMut, sql: &str, shared: &Shared, user: &str) {
    let command = match Command::parse(sql) {
        Ok(c) => c,
        Err(m) => return msg::error_response(out, Severity::Error, SqlState::SYNTAX_ERROR, &m),
    };
    let table = match command {
        Command::Empty => return msg::empty_query(out),
        Command::Replicas => views::replicas(shared),
        Command::Pools => views::pools(shared),
        Command::Clients => views::clients(shared),
        Command::Stats => views::stats(shared),
        Command::Shards => views::shards(shared),
        Command::Map => views::map(shared),
        Command::Ids => views::ids(shared),
        Command::Routes => views::routes(shared),
        Command::Route(sql) => views::route(shared, &sql),
        Command::Version => Table {
            columns: vec!["version"],
            rows: vec![vec![Some(format!("shardwire {}", env!("CARGO_PKG_VERSION")))]],
        },
        Command::Help => Table {
            columns: vec!["commands"],
            rows: vec![vec![Some(HELP.into())]],
        },
        Command::MapHistory => views::map_history(shared),
        Command::Cluster => match views::cluster(shared).await {
            Ok(t) => t,
            Err(m) => return msg::error_response(out, Severity::Error, SqlState::CONNECTION_FAILURE, &m),
        },
        Command::Moves => match views::moves(shared).await {
            Ok(t) => t,
            Err(m) => return msg::error_response(out, Severity::Error, SqlState::CONNECTION_FAILURE, &m),
        },
        Command::Replica { node, disable } => {
            let rt = shared.runtime.load();
            return match rt
                .clusters
                .iter()
                .flat_map(|c| c.replicas.iter())
                .find(|n| n.config.name == node)
            {
                Some(n) => {
                    n.disabled.store(disable, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%node, disabled = disable, %user, "replica rotation set by an admin");
                    msg::command_complete(out, if disable { "DISABLE REPLICA" } else { "ENABLE REPLICA" });
                }
                None => {
                    let m = format!("no replica named {node}; SHOW REPLICAS lists them (e.g. s0/replica0)");
                    msg::error_response(out, Severity::Error, SqlState::INVALID_PARAMETER_VALUE, &m);
                }
            };
        }
        Command::SetPartition {
            change,
            based_on,
            data_in_place,
            dry_run,
        } => {
            return match shared.change_map(&change, based_on, data_in_place, dry_run, user).await {
                Ok(m) => {
                    msg::error_response(out, Severity::Warning, SqlState::WARNING, &m);
                    msg::command_complete(out, "SET PARTITION");
                }
                Err(e) => {
                    let m = format!("map change refused, the running map stays: {e}");
                    msg::error_response(out, Severity::Error, SqlState::CONFIG_FILE_ERROR, &m);
                }
            };
        }
        Command::ChangeReplicas(change) => {
            let tag = if change.add { "ADD REPLICA" } else { "REMOVE REPLICA" };
            return match shared.change_replicas(&change, user).await {
                Ok(m) => {
                    msg::error_response(out, Severity::Warning, SqlState::WARNING, &m);
                    msg::command_complete(out, tag);
                }
                Err(e) => {
                    let m = format!("replica change refused, the running configuration stays: {e}");
                    msg::error_response(out, Severity::Error, SqlState::CONFIG_FILE_ERROR, &m);
                }
            };
        }
        Command::Reload { data_in_place } => {
            return match shared.reload(data_in_place).await {
                Ok(m) => {
                    msg::error_response(out, Severity::Warning, SqlState::WARNING, &m);
                    msg::command_complete(out, "RELOAD");
                }
                Err(e) => {
                    let m = format!("reload failed, the running configuration stays: {e}");
                    msg::error_response(out, Severity::Error, SqlState::CONFIG_FILE_ERROR, &m);
                }
            };
        }
    };
    write_table(out, &table);
}

fn write_table(out: &mut bytes::BytesMut, t: &Table) {
    msg::row_description(out, &t.columns);
    for row in &t.rows {
        let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
        msg::data_row(out, &values);
    }
    msg::command_complete(out, &format!("SHOW {}", t.rows.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_partition_parses_with_its_options() {
        use crate::shardmap::edit::MapEdit;
        assert_eq!(
            Command::parse("set partition users 17 to s2 data in place version 4 dry run;"),
            Ok(Command::SetPartition {
                change: MapEdit::Assign {
                    group: "users".into(),
                    partition: 17,
                    shard: "s2".into(),
                    state: None,
                },
                based_on: Some(4),
                data_in_place: true,
                dry_run: true,
            })
        );
        assert_eq!(
            Command::parse("SET PARTITION users 17 TO s2 STATE moving DATA IN PLACE"),
            Ok(Command::SetPartition {
                change: MapEdit::Assign {
                    group: "users".into(),
                    partition: 17,
                    shard: "s2".into(),
                    state: Some(crate::shardmap::PartitionState::Moving),
                },
                based_on: None,
                data_in_place: true,
                dry_run: false,
            })
        );
        assert_eq!(
            Command::parse("SET PARTITION Users 3 STATE fenced"),
            Ok(Command::SetPartition {
                change: MapEdit::State {
                    group: "Users".into(),
                    partition: 3,
                    state: crate::shardmap::PartitionState::Fenced
                },
                based_on: None,
                data_in_place: false,
                dry_run: false,
            })
        );
        for bad in [
            "SET PARTITION users x TO s1",
            "SET PARTITION users 1 INTO s1",
            "SET PARTITION users 1 STATE frozen",
            "SET PARTITION users 1 TO s1 VERSION",
            "SET PARTITION users 1 TO s1 PLEASE",
            "SET PARTITION users",
        ] {
            assert!(Command::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Command::parse("show map history"), Ok(Command::MapHistory));
    }

    #[test]
    fn parses_commands() {
        assert_eq!(Command::parse("show replicas;"), Ok(Command::Replicas));
        assert_eq!(Command::parse("  SHOW   pools "), Ok(Command::Pools));
        assert_eq!(Command::parse("reload"), Ok(Command::Reload { data_in_place: false }));
        assert_eq!(
            Command::parse("RELOAD data in place;"),
            Ok(Command::Reload { data_in_place: true })
        );
        assert_eq!(Command::parse(""), Ok(Command::Empty));
        assert_eq!(
            Command::parse("show route for SELECT * FROM t WHERE Id = 1;"),
            Ok(Command::Route("SELECT * FROM t WHERE Id = 1".into()))
        );
        assert_eq!(Command::parse("SHOW MAP"), Ok(Command::Map));
        assert!(
            Command::parse("DROP TABLE x")
                .unwrap_err()
                .contains("unknown admin command")
        );
    }
}
