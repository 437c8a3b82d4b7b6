//! Reads refused as written whose parts run first (`analyze::shard::materialize`): each part is
//! read into shardwire as text (`select_rows`, bounded), its columns typed by their PostgreSQL
//! type names, and the statement is planned again with the rows in its text. Outside a
//! transaction each part reads the data as of its own moment, as separate statements would.

use bytes::BytesMut;

use super::Session;
use super::insert_select::SelectFailure;
use super::multi::Source;
use super::select_rows;
use super::sql_types::{binary_param_text, type_name};
use super::state::Stmt;
use crate::analyze::Facts;
use crate::analyze::shard::materialize::{self, Materialize, ParamText, PartRows, Unwritten};
use crate::backend::leg::Leg;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::rows::{self, BindParts, Field};
use crate::protocol::pg::sqlstate::SqlState;

/// The most rows all the parts of one statement bring in: each becomes a row of VALUES in the
/// statement's text, which is parsed again (its tree is many times the text's size).
const MAX_PART_ROWS: usize = 100_000;

impl Session {
    /// The parts `sql`, refused as written, may have run first: none in a session pinned to one
    /// connection (the parts need connections of their own), and none unless some part makes
    /// it answerable.
    pub(super) fn may_materialize(&mut self, sql: &str, facts: &Facts) -> Option<Materialize> {
        // Values come back through their text form: floats printed with fewer digits than they
        // hold, or timestamps with zone abbreviations (DateStyle other than ISO), would not
        // come back the same.
        let short_floats = self
            .vars
            .setting("extra_float_digits")
            .and_then(|v| v.parse::<i32>().ok())
            .is_some_and(|d| d < 1);
        let iso_dates = self
            .vars
            .setting("datestyle")
            .is_none_or(|v| v.trim().to_ascii_lowercase().starts_with("iso"));
        let allowed = self.pinned.is_none()
            && !short_floats
            && iso_dates
            && self.runtime.config.routing.max_intermediate_bytes > 0
            && self.runtime.config.server.pool_mode != crate::config::PoolMode::Session;
        let m = allowed
            .then(|| materialize::plan(sql, &self.runtime.config.map))
            .flatten()?;
        // Parts are pure reads: they run once, on their own, before the rest (a side-effecting
        // function in one would run outside the statement's moment). A read's facts say so for
        // all of it; a write's parts are asked one by one.
        let pure = match m.write {
            false => facts.need == crate::analyze::Need::Read,
            true => m
                .parts
                .iter()
                .all(|p| self.facts_of(&p.sql).need == crate::analyze::Need::Read),
        };
        pure.then_some(m)
    }

    /// A Bind's statement with its parameters as literals of their declared types; `None` when
    /// a value cannot be written so (a binary value of a type shardwire does not decode, or a
    /// declared type outside the built-in ones).
    pub(super) async fn with_bind_inlined(&mut self, stmt: &Stmt, bind: &BindParts) -> Option<String> {
        let mut declared: Vec<u32> = (0..bind.values.len())
            .map(|i| {
                let at = 2 + 4 * i;
                stmt.param_types
                    .get(at..at + 4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            })
            .collect();
        if (0..declared.len()).any(|i| declared[i] == 0 && bind.param_format(i) != 0) {
            // Binary values of types the client left to the server (tokio-postgres, JDBC):
            // the server says which.
            declared = self.inferred_param_types(stmt).await?;
        }
        let mut params = Vec::with_capacity(bind.values.len());
        for (i, v) in bind.values.iter().enumerate() {
            let type_oid = declared.get(i).copied().unwrap_or(0);
            let ty = match type_oid {
                0 => None,
                t => Some(type_name(t, -1)?),
            };
            let value = match v {
                None => None,
                Some(raw) if bind.param_format(i) == 0 => Some(std::str::from_utf8(raw).ok()?.to_owned()),
                Some(raw) => Some(binary_param_text(type_oid, raw)?),
            };
            params.push(ParamText { value, ty });
        }
        materialize::inline_params(&stmt.query, &params)
    }

    /// The parameter types a shard infers for `stmt` (Parse and Describe of it).
    async fn inferred_param_types(&mut self, stmt: &Stmt) -> Option<Vec<u32>> {
        match self.ask_a_shard(&stmt.facts, Ask::Params(stmt)).await? {
            Answer::Params(types) => Some(types),
            Answer::Rows(_) => None,
        }
    }

    /// Whether every column of `tables` has the database's collation: the parts' rows come
    /// back as literals of the default collation, which must be theirs.
    async fn default_collations(&mut self, tables: &[String], facts: &Facts) -> bool {
        let unknown: Vec<String> = {
            let known = self.shared.default_collations.lock().unwrap_or_else(|e| e.into_inner());
            if tables.iter().any(|t| known.get(t) == Some(&false)) {
                return false;
            }
            tables.iter().filter(|t| !known.contains_key(*t)).cloned().collect()
        };
        if unknown.is_empty() {
            return true;
        }
        let names: Vec<String> = unknown
            .iter()
            .map(|t| format!("to_regclass(quote_ident('{}'))", t.replace('\'', "''")))
            .collect();
        let sql = format!(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = ANY (ARRAY[{}]::oid[]) AND attnum > 0 \
             AND NOT attisdropped AND attcollation NOT IN (0, 100)",
            names.join(", ")
        );
        let all_default = matches!(self.ask_a_shard(facts, Ask::Rows(&sql)).await, Some(Answer::Rows(r)) if r == ["0"]);
        // Known per table only when they all are (one count covers them together).
        if all_default || unknown.len() == 1 {
            let mut known = self.shared.default_collations.lock().unwrap_or_else(|e| e.into_inner());
            for t in unknown {
                known.insert(t, all_default);
            }
        }
        all_default
    }

    /// The SQL type of each column, for the casts: built-in types by their names, others
    /// (enums, domains, arrays of them, extension types) as the shard's `format_type` prints
    /// them.
    async fn type_names(&mut self, fields: &[Field], facts: &Facts) -> Result<Vec<String>, String> {
        let mut types: Vec<Option<String>> = fields.iter().map(|f| type_name(f.type_oid, f.modifier)).collect();
        let unknown: Vec<String> = fields
            .iter()
            .zip(&types)
            .filter(|(_, t)| t.is_none())
            .map(|(f, _)| format!("({}::oid, {})", f.type_oid, f.modifier))
            .collect();
        if !unknown.is_empty() {
            let sql = format!(
                "SELECT format_type(o, CASE WHEN m < 0 THEN NULL ELSE m END) FROM (VALUES {}) AS t(o, m)",
                unknown.join(", ")
            );
            if let Some(Answer::Rows(names)) = self.ask_a_shard(facts, Ask::Rows(&sql)).await {
                let mut names = names.into_iter();
                for t in types.iter_mut().filter(|t| t.is_none()) {
                    // `format_type` prints `???` for an oid it does not know.
                    *t = names.next().filter(|n| !n.is_empty() && !n.contains("???"));
                }
            }
        }
        fields
            .iter()
            .zip(types)
            .map(|(f, t)| {
                t.ok_or_else(|| {
                    format!(
                        "the statement needs rows of a subquery, WITH query or table read first, and the type of its \
                         column {} (oid {}) could not be named; give the shard key a condition that names one shard, or \
                         cast the column to a built-in type",
                        String::from_utf8_lossy(&f.name),
                        f.type_oid
                    )
                })
            })
            .collect()
    }

    /// One exchange with the shard in use (or the default one), on the transaction's
    /// connection inside one.
    async fn ask_a_shard(&mut self, facts: &Facts, ask: Ask<'_>) -> Option<Answer> {
        let shard = self.held.as_ref().map_or(self.default_shard(), |h| h.shard);
        let mut one = self.one_leg(shard, facts).await.ok()?;
        let leg = &mut one.legs[0];
        let got = match ask {
            Ask::Params(stmt) => {
                let mut out = BytesMut::new();
                self.write_prelude(leg, &mut out);
                msg::parse_bytes(&mut out, "", stmt.query.as_bytes(), &stmt.param_types);
                msg::describe_or_close(&mut out, b'D', b'S', "");
                rows::sync(&mut out);
                describe_params(leg, &out).await.map(Answer::Params)
            }
            Ask::Rows(sql) => leg.rows(sql).await.ok().map(Answer::Rows),
        };
        self.put_back(one, shard, got.is_some());
        got
    }

    /// `sql`, a read refused as written, with its parts run first: the text to run instead.
    /// `None`: no part makes it answerable, or a part is refused on its own (the statement's
    /// refusal stands). Call with the held connection quiet (or none held).
    pub(super) async fn materialized(
        &mut self,
        planned: Option<Materialize>,
        sql: &str,
        facts: &Facts,
        why: &str,
    ) -> Option<Result<String, SelectFailure>> {
        if !self.client_is_utf8() {
            return None;
        }
        // The most row data all the parts of one statement bring through shardwire.
        let mut budget = self.runtime.config.routing.max_intermediate_bytes;
        let mut rows_left = MAX_PART_ROWS;
        match self
            .with_parts_run(planned, sql, facts, &mut budget, &mut rows_left, true)
            .await?
        {
            // A part naming a column or table it does not have refers to the outer query (an
            // unqualified outer column): it cannot run on its own, and the refusal stands.
            Err(SelectFailure::Server(e)) if matches!(msg::error_field(e.body(), b'C'), Some("42703" | "42P01")) => {
                Some(Err(SelectFailure::Proxy(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!(
                        "{why} (a subquery shardwire would run first does not run on its own: {}; qualify the outer \
                         query's columns with its table names)",
                        msg::error_message(e.body())
                    ),
                )))
            }
            other => Some(other),
        }
    }

    /// `sql` with its parts run first. A part refused on its own may have parts of its own run
    /// first (`nest`), one level deep.
    async fn with_parts_run(
        &mut self,
        planned: Option<Materialize>,
        sql: &str,
        facts: &Facts,
        budget: &mut usize,
        rows_left: &mut usize,
        nest: bool,
    ) -> Option<Result<String, SelectFailure>> {
        let m = match planned {
            Some(m) => m,
            None => materialize::plan(sql, &self.runtime.config.map)?,
        };
        if !self.default_collations(&m.tables, facts).await {
            return None;
        }
        let mut all = Vec::with_capacity(m.parts.len());
        for part in &m.parts {
            let mut got = self.select_rows(&part.sql, Source::Simple, facts, *budget, true).await;
            if nest && matches!(got, Ok(Err(_))) {
                let inner =
                    match Box::pin(self.with_parts_run(None, &part.sql, facts, budget, rows_left, false)).await? {
                        Ok(text) => text,
                        Err(e) => return Some(Err(e)),
                    };
                got = self.select_rows(&inner, Source::Simple, facts, *budget, false).await;
            }
            let (fields, rows) = match got {
                Ok(Ok(got)) => got,
                // Refused on its own: the statement's refusal stands.
                Ok(Err(_)) => return None,
                Err(e) => return Some(Err(e)),
            };
            // What the rows took on the wire (DataRow bodies), NULLs included.
            let used: usize = rows
                .iter()
                .map(|r| 2 + r.iter().map(|v| 4 + v.as_ref().map_or(0, String::len)).sum::<usize>())
                .sum();
            *budget = budget.saturating_sub(used);
            *rows_left = match rows_left.checked_sub(rows.len()) {
                Some(left) => left,
                None => {
                    return Some(Err(SelectFailure::Proxy(
                        SqlState::PROGRAM_LIMIT_EXCEEDED,
                        format!(
                            "the statement needs more than {MAX_PART_ROWS} rows of its subqueries, WITH queries or tables \
                             read into shardwire before it runs (each becomes part of the statement's text); narrow the \
                             query with a condition on the shard key"
                        ),
                    )));
                }
            };
            let types = match self.type_names(&fields, facts).await {
                Ok(t) => t,
                Err(m) => return Some(Err(SelectFailure::Proxy(SqlState::FEATURE_NOT_SUPPORTED, m))),
            };
            all.push(PartRows {
                names: fields
                    .iter()
                    .map(|f| String::from_utf8_lossy(&f.name).into_owned())
                    .collect(),
                types,
                rows,
            });
        }
        // Casts make the text longer than the rows; a bound keeps the parse of it in check.
        let max_len = self.runtime.config.routing.max_intermediate_bytes.saturating_mul(4) + sql.len();
        match m.text(&all, max_len) {
            Ok(text) => Some(Ok(text)),
            Err(Unwritten::TooLong(_)) => Some(Err(select_rows::too_many(
                self.runtime.config.routing.max_intermediate_bytes,
            ))),
            Err(Unwritten::Unfit) => None,
        }
    }
}

/// What `ask_a_shard` asks.
enum Ask<'a> {
    /// The parameter types of a statement.
    Params(&'a Stmt),
    /// The first column of a query's rows.
    Rows(&'a str),
}

/// What it answers.
enum Answer {
    Params(Vec<u32>),
    Rows(Vec<String>),
}

/// Sends `out` (replay, Parse, Describe, Sync) and reads the ParameterDescription.
async fn describe_params(leg: &mut Leg, out: &[u8]) -> Option<Vec<u32>> {
    leg.send(out).await.ok()?;
    if leg.skip_replay().await.ok()?.is_some() {
        return None;
    }
    let mut types = None;
    let mut failed = false;
    loop {
        let f = leg.frame().await.ok()?;
        match f.tag() {
            b't' => {
                let b = f.body();
                let n = i16::from_be_bytes([*b.first()?, *b.get(1)?]).max(0) as usize;
                types = (0..n)
                    .map(|i| {
                        b.get(2 + 4 * i..6 + 4 * i)
                            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
                    })
                    .collect();
            }
            b'E' => failed = true,
            b'Z' => break,
            _ => {}
        }
    }
    if failed { None } else { types }
}
