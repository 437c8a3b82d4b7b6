//! `COPY sharded_table TO STDOUT` (text, CSV or binary): every shard holding part of the group
//! streams its rows in turn, inside the client's transaction when there is one. The client sees
//! one COPY: the first shard's CopyOutResponse, every shard's rows (with CSV HEADER, one header
//! line; in binary, one header and one trailer, `exec::copy_join`), one CopyDone and the total
//! row count. Rows come in no particular order, as from one
//! database without ORDER BY.

use bytes::BytesMut;

use super::Session;
use super::client::SessionError;
use super::multi::Outcome;
use crate::analyze::Facts;
use crate::backend::leg::Leg;
use crate::exec::copy_join::BinaryJoin;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::ShardId;

/// Flush to the client once this much output is waiting.
const FLUSH_AT: usize = 64 * 1024;

impl Session {
    pub(super) async fn copy_out(
        &mut self,
        sql: &str,
        shards: &[ShardId],
        header: bool,
        binary: bool,
        facts: &Facts,
    ) -> Result<Outcome, SessionError> {
        let columns = match crate::analyze::shard::copy_without_columns(sql, &self.runtime.config.map) {
            Some(table) => match self.load_columns(&table, true).await {
                Ok(c) => Some(c),
                Err((code, m)) => return Ok(self.report_error(code, &m)),
            },
            None => None,
        };
        let texts = match self.own_texts(sql, shards, columns.as_deref().map(Vec::as_slice)) {
            Ok(t) => t,
            Err(e) => return Ok(self.report_error(SqlState::FEATURE_NOT_SUPPORTED, &e)),
        };
        let in_tx = self.in_transaction();
        let (mut legs, wrote) = if in_tx {
            match self.tx_legs(shards, Some(facts)).await {
                Ok(l) => l,
                Err((code, m)) => return Ok(self.report_error(code, &m)),
            }
        } else {
            match self.legs(shards, facts).await {
                Ok(l) => (l, Vec::new()),
                Err((code, m)) => return Ok(self.report_error(code, &m)),
            }
        };
        let outcome = self.stream_copies(&mut legs, &texts, header, binary).await;
        if in_tx {
            self.give_back(legs, shards, wrote, false);
        }
        outcome
    }

    async fn stream_copies(
        &mut self,
        legs: &mut [Leg],
        texts: &[std::borrow::Cow<'_, str>],
        header: bool,
        binary: bool,
    ) -> Result<Outcome, SessionError> {
        let mut rows: u64 = 0;
        let mut join = binary.then(BinaryJoin::new);
        let mut joined = Vec::new();
        for (i, leg) in legs.iter_mut().enumerate() {
            let mut out = BytesMut::new();
            self.write_prelude(leg, &mut out);
            msg::query_bytes(&mut out, &self.wire(&texts[i]));
            if let Err(e) = leg.send(&out).await {
                leg.mark_broken();
                return Ok(self.report_error(SqlState::CONNECTION_FAILURE, &format!("shard connection failed: {e}")));
            }
            match leg.skip_replay().await {
                Ok(None) => {}
                Ok(Some(e)) => {
                    leg.mark_broken();
                    self.client.wbuf.extend_from_slice(e.raw());
                    return Ok(Outcome::Failed);
                }
                Err(e) => {
                    leg.mark_broken();
                    return Ok(
                        self.report_error(SqlState::CONNECTION_FAILURE, &format!("shard connection failed: {e}"))
                    );
                }
            }
            let mut first_data = true;
            loop {
                let f = match leg.frame().await {
                    Ok(f) => f,
                    Err(e) => {
                        leg.mark_broken();
                        return Ok(self.report_error(
                            SqlState::CONNECTION_FAILURE,
                            &format!("a shard failed during the COPY: {e}"),
                        ));
                    }
                };
                match f.tag() {
                    b'H' if i == 0 => self.client.wbuf.extend_from_slice(f.raw()),
                    b'd' if join.is_some() => {
                        joined.clear();
                        if let Some(Err(m)) = join.as_mut().map(|j| j.feed(f.body(), &mut joined)) {
                            Leg::abandon(legs).await;
                            return Ok(self.report_error(SqlState::BAD_COPY_FILE_FORMAT, &m));
                        }
                        if !joined.is_empty() {
                            msg::copy_data(&mut self.client.wbuf, &joined);
                            if self.client.wbuf.len() >= FLUSH_AT {
                                self.flush_client().await?;
                            }
                        }
                    }
                    b'd' => {
                        // With HEADER every shard starts with the header line: the first one's is kept.
                        let skip = header && i > 0 && first_data;
                        first_data = false;
                        if !skip {
                            self.client.wbuf.extend_from_slice(f.raw());
                            if self.client.wbuf.len() >= FLUSH_AT {
                                self.flush_client().await?;
                            }
                        }
                    }
                    b'C' => {
                        if let Some(Err(m)) = join.as_mut().map(BinaryJoin::end_of_shard) {
                            Leg::abandon(legs).await;
                            return Ok(self.report_error(SqlState::BAD_COPY_FILE_FORMAT, &m));
                        }
                        let tag = String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body())).into_owned();
                        rows += tag.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                    }
                    b'E' => {
                        // The rest of the shards' rows are not read: their connections close.
                        self.client.wbuf.extend_from_slice(f.raw());
                        Leg::abandon(legs).await;
                        return Ok(Outcome::Failed);
                    }
                    b'Z' => break,
                    _ => {}
                }
            }
        }
        if join.is_some() {
            msg::copy_data(&mut self.client.wbuf, &crate::exec::copy_join::TRAILER);
        }
        self.client.wbuf.extend_from_slice(&msg::empty(b'c'));
        msg::command_complete(&mut self.client.wbuf, &format!("COPY {rows}"));
        Ok(Outcome::Ok)
    }
}
