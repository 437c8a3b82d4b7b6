//! Writes on several shards, atomically: one transaction per shard, then two-phase commit. All
//! shards but the first prepare (`PREPARE TRANSACTION`); the first, the coordinator, records the
//! decision in `shardwire_2pc` and commits in one transaction; then the prepared ones commit.
//! If anything fails before the coordinator commits, everything rolls back. After the
//! coordinator commits, a prepared transaction left behind by a crash or a lost connection is
//! committed by the recovery in `crate::backend::twophase`, which finds the decision record.

use bytes::BytesMut;

use super::Session;
use super::client::SessionError;
use super::multi::{Outcome, Source};
use crate::plan::Target;
use crate::plan::shard::InsertPart;
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::rows;
use crate::protocol::pg::sqlstate::SqlState;

/// The decision table, created on a shard before its first coordinated commit. Schema-qualified:
/// the client's `search_path` (pg_dump output sets it empty) must not move or hide it.
pub const DECISION_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS public.shardwire_2pc (gid text PRIMARY KEY, decided_at timestamptz NOT NULL DEFAULT now())";

/// Prefix of the transaction ids shardwire prepares: `sw:<coordinator shard>:<random>`.
pub const GID_PREFIX: &str = "sw:";

/// One shard's connection in a multi-shard write.
pub(super) struct Part {
    pub(super) leg: crate::backend::leg::Leg,
    pub(super) shard: usize,
}

impl Session {
    /// Runs each part's statement on its shard's primary and commits them atomically. A
    /// `replicated` write (a reference table) reports one shard's rows and count.
    pub(super) async fn write_all_shards(
        &mut self,
        parts: &[InsertPart],
        split: bool,
        replicated: bool,
        src: Source<'_>,
        describe: bool,
    ) -> Result<Outcome, SessionError> {
        let shards: Vec<usize> = parts.iter().map(|p| p.shard).collect();
        // A split INSERT's rows go where their keys are served and read nothing; the same write
        // on several shards leaves out the rows a shard only copies.
        let texts: Vec<std::borrow::Cow<'_, str>> = match parts.first() {
            Some(first) if !split => match self.own_texts(&first.sql, &shards, None) {
                Ok(t) => t,
                Err(e) => return Ok(self.report_error(SqlState::FEATURE_NOT_SUPPORTED, &e)),
            },
            _ => parts
                .iter()
                .map(|p| std::borrow::Cow::Borrowed(p.sql.as_str()))
                .collect(),
        };
        // Inside a transaction block the write runs on the transaction's connections and
        // commits with it; outside one it is a transaction of its own on every shard.
        let in_tx = self.in_transaction();
        let (legs, wrote) = if in_tx {
            match self.tx_legs(&shards, None).await {
                Ok(l) => l,
                Err((code, m)) => return Ok(self.report_error(code, &m)),
            }
        } else {
            match self.legs_for_write(&shards).await {
                Ok(l) => (l, Vec::new()),
                Err((code, m)) => return Ok(self.report_error(code, &m)),
            }
        };
        let mut ps: Vec<Part> = legs
            .into_iter()
            .zip(&shards)
            .map(|(leg, &shard)| Part { leg, shard })
            .collect();
        if ps.len() > 1 && !in_tx {
            self.ensure_decision_table(ps[0].shard).await;
        }
        let outcome = self
            .write_parts(&mut ps, parts, &texts, split, replicated, src, describe, in_tx)
            .await;
        if in_tx {
            let legs = ps.into_iter().map(|p| p.leg).collect();
            self.give_back(legs, &shards, wrote, true);
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_parts(
        &mut self,
        ps: &mut [Part],
        parts: &[InsertPart],
        texts: &[std::borrow::Cow<'_, str>],
        split: bool,
        replicated: bool,
        src: Source<'_>,
        describe: bool,
        in_tx: bool,
    ) -> Result<Outcome, SessionError> {
        // BEGIN and the statement on every shard at once.
        for ((p, part), text) in ps.iter_mut().zip(parts).zip(texts) {
            let mut out = BytesMut::new();
            self.write_prelude(&mut p.leg, &mut out);
            if !in_tx {
                msg::query(&mut out, "BEGIN");
            }
            match &src {
                Source::Simple => msg::query_bytes(&mut out, &self.wire(text)),
                Source::Extended { param_types, bind } => {
                    let pick = split.then_some(&part.params[..]);
                    let types = match pick {
                        Some(pk) => rows::pick_types(param_types, pk),
                        None => param_types.to_vec(),
                    };
                    msg::parse_bytes(&mut out, "", &self.wire(text), &types);
                    rows::bind_with(&mut out, bind, pick, &bind.result_formats);
                    msg::describe_or_close(&mut out, b'D', b'P', "");
                    rows::execute_all(&mut out);
                    rows::sync(&mut out);
                }
            }
            if let Err(e) = p.leg.send(&out).await {
                p.leg.mark_broken();
                return Ok(self.report_error(SqlState::CONNECTION_FAILURE, &format!("shard connection failed: {e}")));
            }
        }
        // Results: rows (RETURNING) and command tags.
        let mut description: Option<Frame> = None;
        let mut data: Vec<Frame> = Vec::new();
        let mut tags: Vec<String> = Vec::new();
        let mut failure: Option<(usize, Frame)> = None;
        let mut io_failure: Option<String> = None;
        for p in ps.iter_mut() {
            match p.leg.collect(!in_tx).await {
                Ok(r) => {
                    if let Some(e) = r.error {
                        failure.get_or_insert((p.shard, e));
                        continue;
                    }
                    // A reference table's copies answer alike: one copy's rows and count are the answer.
                    if replicated && !tags.is_empty() {
                        continue;
                    }
                    if description.is_none() {
                        description = r.description;
                    }
                    data.extend(r.rows);
                    tags.extend(r.tag);
                }
                Err(e) => {
                    p.leg.mark_broken();
                    io_failure.get_or_insert(e.to_string());
                }
            }
        }
        if failure.is_some() || io_failure.is_some() {
            for p in ps.iter_mut() {
                if in_tx {
                    // The transaction fails with the statement (see `give_back`).
                    p.leg.mark_broken();
                } else {
                    p.leg.simple("ROLLBACK").await;
                }
            }
            return Ok(match failure {
                Some((shard, f)) => {
                    let name = self.runtime.config.map.shards[shard].clone();
                    tracing::info!(shard = %name, error = %msg::error_message(f.body()), "multi-shard write failed; rolled back on every shard");
                    self.client.wbuf.extend_from_slice(f.raw());
                    Outcome::Failed
                }
                None => self.report_error(
                    SqlState::CONNECTION_FAILURE,
                    &format!(
                        "a shard failed during a multi-shard write, which was rolled back: {}",
                        io_failure.unwrap_or_default()
                    ),
                ),
            });
        }
        if !in_tx && let Err(m) = self.commit_parts(ps).await {
            return Ok(self.report_error(SqlState::TRANSACTION_ROLLBACK, &m));
        }
        let simple = matches!(src, Source::Simple);
        match &description {
            Some(d) if describe || simple => self.client.wbuf.extend_from_slice(d.raw()),
            None if describe && !simple => self.client.wbuf.extend_from_slice(&msg::empty(b'n')),
            _ => {}
        }
        for d in &data {
            self.client.wbuf.extend_from_slice(d.raw());
        }
        msg::command_complete(&mut self.client.wbuf, &combine_tags(&tags));
        Ok(Outcome::Ok)
    }

    /// Commits every part: directly for one, with two-phase commit for several; then, for
    /// read-your-writes, reads each shard's commit position.
    pub(super) async fn commit_parts(&mut self, ps: &mut [Part]) -> Result<(), String> {
        self.commit_parts_only(ps).await?;
        if self.user.read_your_writes {
            let runtime = self.runtime.clone();
            for p in ps.iter_mut().filter(|p| !runtime.clusters[p.shard].replicas.is_empty()) {
                // A shard that cannot say keeps the old position: its replicas may then serve a
                // read that misses this write, so say so in the log.
                match p
                    .leg
                    .rows(super::ryw::POSITION_SQL)
                    .await
                    .map(|r| r.first().and_then(|v| v.parse().ok()))
                {
                    Ok(Some(lsn)) => self.record_position(p.shard, lsn),
                    other => tracing::warn!(
                        shard = p.shard,
                        ?other,
                        "commit position of a multi-shard write unknown"
                    ),
                }
            }
        }
        Ok(())
    }

    async fn commit_parts_only(&mut self, ps: &mut [Part]) -> Result<(), String> {
        if let [p] = ps {
            return match p.leg.simple("COMMIT").await {
                Some(None) => Ok(()),
                Some(Some(e)) => Err(format!("commit failed: {}", msg::error_message(e.body()))),
                None => Err("the shard connection was lost during COMMIT; the outcome is unknown".into()),
            };
        }
        let map = self.runtime.config.map.clone();
        let gid = format!("{GID_PREFIX}{}:{:016x}", map.shards[ps[0].shard], rand::random::<u64>());
        let mut prepared = Vec::new();
        let mut failed = None;
        for (i, p) in ps.iter_mut().enumerate().skip(1) {
            match p.leg.simple(&format!("PREPARE TRANSACTION '{gid}'")).await {
                Some(None) => prepared.push(i),
                Some(Some(e)) => {
                    failed.get_or_insert(format!(
                        "shard {}: {}",
                        map.shards[p.shard],
                        msg::error_message(e.body())
                    ));
                }
                None => {
                    failed.get_or_insert(format!("shard {}: connection lost", map.shards[p.shard]));
                }
            }
        }
        if let Some(why) = failed {
            for &i in &prepared {
                ps[i].leg.simple(&format!("ROLLBACK PREPARED '{gid}'")).await;
            }
            ps[0].leg.simple("ROLLBACK").await;
            return Err(format!(
                "a multi-shard write could not be prepared and was rolled back everywhere: {why}"
            ));
        }
        let decide = format!("INSERT INTO public.shardwire_2pc (gid) VALUES ('{gid}'); COMMIT");
        match ps[0].leg.simple(&decide).await {
            Some(None) => pause_after_decision().await,
            outcome => {
                let why = match outcome {
                    Some(Some(e)) => {
                        // The decision failed inside the transaction: it is aborted there, and
                        // must not go back to the pool that way.
                        if ps[0].leg.simple("ROLLBACK").await != Some(None) {
                            ps[0].leg.mark_broken();
                        }
                        msg::error_message(e.body())
                    }
                    _ => "connection lost".into(),
                };
                // Without a decision record, recovery rolls the prepared parts back too.
                for &i in &prepared {
                    ps[i].leg.simple(&format!("ROLLBACK PREPARED '{gid}'")).await;
                }
                if why == "connection lost" {
                    return Err(format!(
                        "the coordinating shard {} was lost while committing a multi-shard write; it is rolled back unless its commit record exists, in which case recovery completes it",
                        map.shards[ps[0].shard]
                    ));
                }
                return Err(format!("a multi-shard write was rolled back everywhere: {why}"));
            }
        }
        for &i in &prepared {
            if !matches!(ps[i].leg.simple(&format!("COMMIT PREPARED '{gid}'")).await, Some(None)) {
                // Decided: recovery commits it when the shard is back.
                tracing::warn!(%gid, shard = %map.shards[ps[i].shard], "COMMIT PREPARED failed; recovery will finish it");
            }
        }
        Ok(())
    }

    pub(super) fn report_error(&mut self, code: SqlState, message: &str) -> Outcome {
        msg::error_response(&mut self.client.wbuf, msg::Severity::Error, code, message);
        Outcome::Failed
    }

    async fn legs_for_write(&mut self, shards: &[usize]) -> Result<Vec<crate::backend::leg::Leg>, (SqlState, String)> {
        let mut out = Vec::new();
        for &s in shards {
            out.push(crate::backend::leg::Leg::new(
                self.checkout_on(Target::Primary, s).await?,
            ));
        }
        Ok(out)
    }
}

/// One command tag for the shards' tags: counts added up ("INSERT 0 7", "UPDATE 12").
pub fn combine_tags(tags: &[String]) -> String {
    let Some(first) = tags.first() else {
        return String::new();
    };
    let counts: Option<Vec<u64>> = tags.iter().map(|t| t.rsplit(' ').next()?.parse().ok()).collect();
    match counts {
        Some(c) if first.contains(' ') => {
            let prefix = &first[..first.rfind(' ').unwrap_or(0)];
            format!("{prefix} {}", c.iter().sum::<u64>())
        }
        _ => first.clone(),
    }
}

/// `SHARDWIRE_PAUSE_AFTER_DECISION_MS`: a pause between the decision and the COMMIT PREPAREDs,
/// so that the crash tests can kill the process exactly there. Unset outside those tests.
async fn pause_after_decision() {
    static PAUSE: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("SHARDWIRE_PAUSE_AFTER_DECISION_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(p) = pause {
        tokio::time::sleep(*p).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_add_up() {
        let t = |v: &[&str]| combine_tags(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(t(&["INSERT 0 2", "INSERT 0 3"]), "INSERT 0 5");
        assert_eq!(t(&["UPDATE 1", "UPDATE 0", "UPDATE 4"]), "UPDATE 5");
        assert_eq!(t(&["CREATE TABLE", "CREATE TABLE"]), "CREATE TABLE");
    }

    #[test]
    fn parameter_types_follow_the_picked_parameters() {
        let types = [0, 3, 0, 0, 0, 20, 0, 0, 0, 25, 0, 0, 0, 23];
        assert_eq!(
            crate::protocol::pg::rows::pick_types(&types, &[2, 0]),
            vec![0, 2, 0, 0, 0, 23, 0, 0, 0, 20]
        );
        assert_eq!(
            crate::protocol::pg::rows::pick_types(&[0, 0], &[1]),
            vec![0, 1, 0, 0, 0, 0]
        );
    }
}
