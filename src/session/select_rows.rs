//! The rows of a SELECT read into shardwire as text, for statements that need them before they
//! can run (an INSERT ... SELECT's source, the parts of a query that run first): planned as if
//! sent alone, run on one shard (rows as the shard sends them) or on several and merged (the
//! merge's output kept back from the client and read here), inside the client's transaction
//! when there is one. Their size is bounded: past it the read stops and the statement fails.

use bytes::{Buf, BytesMut};

use super::Session;
use super::client::SessionError;
use super::insert_select::SelectFailure;
use super::multi::{Outcome, Source};
use crate::analyze::Facts;
use crate::backend::leg::Leg;
use crate::plan::shard::{Params, ShardPlan};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::rows::{self, Field};
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::ShardId;

/// Rows as text; `None` is NULL.
pub(super) type TextRows = Vec<Vec<Option<String>>>;

pub(super) fn too_many(limit: usize) -> SelectFailure {
    let size = match limit >= 1 << 20 {
        true => format!("{} MiB", limit >> 20),
        false => format!("{limit} bytes"),
    };
    SelectFailure::Proxy(
        SqlState::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "the statement reads rows into shardwire before it runs (an INSERT ... SELECT's rows, or a subquery, WITH query or \
             table its shards cannot answer alone), and these exceed {size} (for queries: [routing] max_intermediate_bytes); \
             insert in batches, or narrow the query with a condition on the shard key"
        ),
    )
}

impl Session {
    /// The columns and rows `select` gives, read as text (at most `limit` bytes of row data),
    /// on the nodes `facts` route to (the primaries for an INSERT's, a replica when a read's
    /// allow). `cached`: the text's shape is kept for the next time. `Ok(Err(why))`: the SELECT
    /// is not a read of one or several shards (refused, or something else). Call with the held
    /// connection quiet (or none held).
    pub(super) async fn select_rows(
        &mut self,
        select: &str,
        source: Source<'_>,
        facts: &Facts,
        limit: usize,
        cached: bool,
    ) -> Result<Result<(Vec<Field>, TextRows), String>, SelectFailure> {
        let map = self.runtime.config.map.clone();
        // Texts made here (with rows of their own in them) are used once: not cached.
        let shape = match cached {
            true => self.shared.shapes.get(select, &map),
            false => std::sync::Arc::new(crate::analyze::shard::shape(select, &map)),
        };
        let mut plan = self.plan_checked(&shape, &map, &Params::default());
        if let ShardPlan::Fenced { group, partition } = &plan {
            // A move's cutover: wait for it as any statement does, then plan under the map
            // that lifted the fence (a transaction that the move left behind gets 40001).
            if let Err((code, m)) = Box::pin(self.wait_unfenced(group, *partition)).await {
                return Err(SelectFailure::Proxy(code, m));
            }
            let map = self.runtime.config.map.clone();
            let shape = std::sync::Arc::new(crate::analyze::shard::shape(select, &map));
            plan = self.plan_checked(&shape, &map, &Params::default());
        }
        match plan {
            ShardPlan::One(s) => {
                let shard = match &self.held {
                    Some(h) if matches!(*shape, crate::analyze::shard::Shape::Neutral) => h.shard,
                    _ => s,
                };
                self.one_shard_rows(shard, select, source, facts, limit).await.map(Ok)
            }
            ShardPlan::Scatter { shards, merge } => {
                // Text results whatever the client asked for its own rows.
                let text_bind;
                let source = match source {
                    Source::Simple => Source::Simple,
                    Source::Extended { param_types, bind } => {
                        text_bind = rows::BindParts {
                            result_formats: Vec::new(),
                            ..bind.clone()
                        };
                        Source::Extended {
                            param_types,
                            bind: &text_bind,
                        }
                    }
                };
                let saved = std::mem::take(&mut self.client.wbuf);
                self.capture = Some(limit);
                let outcome = Box::pin(self.scatter(&shards, &merge, source, facts, true)).await;
                self.capture = None;
                let captured = std::mem::replace(&mut self.client.wbuf, saved);
                match outcome {
                    Ok(Outcome::Ok | Outcome::Failed) => read_captured(captured.freeze()).map(Ok),
                    Err(SessionError::Fatal(code, m)) => Err(SelectFailure::Proxy(code, m)),
                    Err(e) => Err(SelectFailure::Proxy(SqlState::SYSTEM_ERROR, e.to_string())),
                }
            }
            ShardPlan::Refuse(why) => Ok(Err(why)),
            // Fenced again at once: give up rather than wait twice.
            ShardPlan::Fenced { group, partition } => Err(SelectFailure::Proxy(
                SqlState::SERIALIZATION_FAILURE,
                format!(
                    "partition {partition} of group {group} was fenced for a move again while this statement read rows; run the statement again"
                ),
            )),
            other => Ok(Err(format!(
                "the SELECT is planned as {}, not as a read of one or several shards; select its rows and send them as VALUES",
                other.kind()
            ))),
        }
    }

    async fn one_shard_rows(
        &mut self,
        shard: ShardId,
        select: &str,
        source: Source<'_>,
        facts: &Facts,
        limit: usize,
    ) -> Result<(Vec<Field>, TextRows), SelectFailure> {
        let mut one = self
            .one_leg(shard, facts)
            .await
            .map_err(|(c, m)| SelectFailure::Proxy(c, m))?;
        let leg = &mut one.legs[0];
        let mut out = BytesMut::new();
        self.write_prelude(leg, &mut out);
        match source {
            Source::Simple => msg::query_bytes(&mut out, select.as_bytes()),
            Source::Extended { param_types, bind } => {
                msg::parse_bytes(&mut out, "", select.as_bytes(), param_types);
                rows::bind_with(&mut out, bind, None, &[0]);
                msg::describe_or_close(&mut out, b'D', b'P', "");
                rows::execute_all(&mut out);
                rows::sync(&mut out);
            }
        }
        let got = read_rows(leg, &out, limit).await;
        self.put_back(one, shard, got.is_ok());
        got
    }

    /// A connection to `shard` for one exchange of shardwire's own: inside a transaction the
    /// transaction's (the shard joins it), otherwise one routed by `facts`.
    pub(super) async fn one_leg(&mut self, shard: ShardId, facts: &Facts) -> Result<OneLeg, (SqlState, String)> {
        if self.in_transaction() {
            let (legs, wrote) = self.tx_legs(&[shard], Some(facts)).await?;
            return Ok(OneLeg {
                legs,
                wrote: Some(wrote),
            });
        }
        Ok(OneLeg {
            legs: self.legs(&[shard], facts).await?,
            wrote: None,
        })
    }

    /// Ends the exchange: a failed one leaves the connection broken (inside a transaction that
    /// fails it, see `give_back`); the transaction's connection goes back to it.
    pub(super) fn put_back(&mut self, mut one: OneLeg, shard: ShardId, ok: bool) {
        if !ok {
            one.legs[0].mark_broken();
        }
        if let Some(wrote) = one.wrote {
            self.give_back(one.legs, &[shard], wrote, false);
        }
    }
}

/// One connection lent for an exchange (`one_leg`).
pub(super) struct OneLeg {
    /// The connection, alone.
    pub(super) legs: Vec<Leg>,
    /// Inside a transaction: whether it wrote, to give it back to the transaction with.
    wrote: Option<Vec<bool>>,
}

/// The description, rows and error in a merge's output.
fn read_captured(mut out: bytes::Bytes) -> Result<(Vec<Field>, TextRows), SelectFailure> {
    let bad = || SelectFailure::Proxy(SqlState::SYSTEM_ERROR, "internal error: unreadable merged rows".into());
    let mut fields = Vec::new();
    let mut rows_out = Vec::new();
    while out.len() >= 5 {
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize + 1;
        if len < 5 || len > out.len() {
            return Err(bad());
        }
        let frame = out.split_to(len);
        match frame[0] {
            b'T' => fields = rows::parse_row_description(&frame[5..]).map_err(|_| bad())?,
            b'D' => rows_out.push(text_cells(&frame.slice(5..)).map_err(|_| bad())?),
            b'E' => return Err(SelectFailure::Server(Frame::from_raw(frame))),
            _ => {}
        }
    }
    if out.has_remaining() {
        return Err(bad());
    }
    Ok((fields, rows_out))
}

fn text_cells(body: &bytes::Bytes) -> Result<Vec<Option<String>>, crate::protocol::pg::ProtocolError> {
    Ok(rows::parse_data_row(body)?
        .into_iter()
        .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
        .collect())
}

/// Runs what `out` holds (the replay, then one statement) and reads every row as text.
async fn read_rows(leg: &mut Leg, out: &[u8], limit: usize) -> Result<(Vec<Field>, TextRows), SelectFailure> {
    let io =
        |e: std::io::Error| SelectFailure::Proxy(SqlState::CONNECTION_FAILURE, format!("shard connection failed: {e}"));
    leg.send(out).await.map_err(io)?;
    if let Some(e) = leg.skip_replay().await.map_err(io)? {
        return Err(SelectFailure::Server(e));
    }
    let mut fields = Vec::new();
    let mut rows_out = Vec::new();
    let mut bytes = 0usize;
    let mut error = None;
    loop {
        let f = leg.frame().await.map_err(io)?;
        match f.tag() {
            b'T' => fields = rows::parse_row_description(f.body()).unwrap_or_default(),
            b'D' if error.is_none() => {
                bytes += f.body().len();
                if bytes > limit {
                    return Err(too_many(limit));
                }
                rows_out.push(text_cells(&f.raw().slice(5..)).map_err(|e| io(std::io::Error::other(e.to_string())))?);
            }
            b'E' => error = error.or(Some(f)),
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(SelectFailure::Server(e)),
        None => Ok((fields, rows_out)),
    }
}

/// The error a merge's sink gives when the rows it keeps back pass `limit`.
pub(super) fn over_limit(limit: usize) -> SessionError {
    match too_many(limit) {
        SelectFailure::Proxy(code, m) => SessionError::Fatal(code, m),
        SelectFailure::Server(_) => SessionError::Gone,
    }
}
