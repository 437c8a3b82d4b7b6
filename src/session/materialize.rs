//! Reads refused as written whose parts run first (`analyze::shard::materialize`): each part is
//! read into shardwire as text (`select_rows`, bounded), its columns typed by their PostgreSQL
//! type names, and the statement is planned again with the rows in its text. Outside a
//! transaction each part reads the data as of its own moment, as separate statements would.

use bytes::BytesMut;

use super::Session;
use super::insert_select::SelectFailure;
use super::multi::Source;
use super::state::Stmt;
use super::values;
use crate::analyze::Facts;
use crate::analyze::shard::materialize::{self, ParamText, PartRows};
use crate::backend::leg::Leg;
use crate::exec::merge::Value;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::oid;
use crate::protocol::pg::rows::Field;
use crate::protocol::pg::rows::{self, BindParts};
use crate::protocol::pg::sqlstate::SqlState;

impl Session {
    /// Whether `sql`, refused as written, may have parts run first: not in a session pinned to
    /// one connection (the parts need connections of their own), and some part makes it
    /// answerable.
    pub(super) fn may_materialize(&self, sql: &str) -> bool {
        // Floats printed with fewer digits than they hold would not come back the same.
        let short_floats = self
            .vars
            .setting("extra_float_digits")
            .and_then(|v| v.parse::<i32>().ok())
            .is_some_and(|d| d < 1);
        self.pinned.is_none()
            && !short_floats
            && self.runtime.config.routing.max_intermediate_bytes > 0
            && self.runtime.config.server.pool_mode != crate::config::PoolMode::Session
            && materialize::plan(sql, &self.runtime.config.map).is_some()
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
                Some(raw) => Some(match values::decode(type_oid, 1, Some(raw)).ok()? {
                    Value::Int(n) => n.to_string(),
                    Value::Float(f) => format!("{f:?}"),
                    Value::Num(d) => d.to_string(),
                    Value::Text(t) => String::from_utf8(t.to_vec()).ok()?,
                    Value::Bool(b) => b.to_string(),
                    Value::Null => return None,
                }),
            };
            params.push(ParamText { value, ty });
        }
        materialize::inline_params(&stmt.query, &params)
    }

    /// The parameter types a shard infers for `stmt` (Parse and Describe of it, on the shard in
    /// use or the default one).
    async fn inferred_param_types(&mut self, stmt: &Stmt) -> Option<Vec<u32>> {
        let shard = self.held.as_ref().map_or(self.default_shard(), |h| h.shard);
        let in_tx = self.in_transaction();
        let (mut legs, wrote) = if in_tx {
            self.tx_legs(&[shard], Some(&stmt.facts)).await.ok()?
        } else {
            (self.legs(&[shard], &stmt.facts).await.ok()?, Vec::new())
        };
        let leg = &mut legs[0];
        let mut out = BytesMut::new();
        self.write_prelude(leg, &mut out);
        msg::parse_bytes(&mut out, "", stmt.query.as_bytes(), &stmt.param_types);
        msg::describe_or_close(&mut out, b'D', b'S', "");
        rows::sync(&mut out);
        let got = describe_params(leg, &out).await;
        if got.is_none() {
            leg.mark_broken();
        }
        if in_tx {
            self.give_back(legs, &[shard], wrote, false);
        }
        got
    }

    /// `sql`, a read refused as written, with its parts run first: the text to run instead.
    /// `None`: no part makes it answerable, or a part is refused on its own (the statement's
    /// refusal stands). Call with the held connection quiet (or none held).
    pub(super) async fn materialized(
        &mut self,
        sql: &str,
        facts: &Facts,
        why: &str,
    ) -> Option<Result<String, SelectFailure>> {
        if !self.client_is_utf8() {
            return None;
        }
        // The most row data all the parts of one statement bring through shardwire.
        let mut budget = self.runtime.config.routing.max_intermediate_bytes;
        match self.with_parts_run(sql, facts, &mut budget, true).await? {
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
        sql: &str,
        facts: &Facts,
        budget: &mut usize,
        nest: bool,
    ) -> Option<Result<String, SelectFailure>> {
        let m = materialize::plan(sql, &self.runtime.config.map)?;
        let mut all = Vec::with_capacity(m.parts.len());
        for part in &m.parts {
            let mut got = self.select_rows(&part.sql, Source::Simple, facts, *budget, true).await;
            if nest && matches!(got, Ok(None)) {
                let inner = match Box::pin(self.with_parts_run(&part.sql, facts, budget, false)).await? {
                    Ok(text) => text,
                    Err(e) => return Some(Err(e)),
                };
                got = self.select_rows(&inner, Source::Simple, facts, *budget, false).await;
            }
            let (fields, rows) = match got {
                Ok(Some(got)) => got,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            *budget = budget.saturating_sub(rows.iter().flatten().flatten().map(|v| v.len() + 8).sum());
            match part_rows(&fields, rows) {
                Ok(r) => all.push(r),
                Err(m) => return Some(Err(SelectFailure::Proxy(SqlState::FEATURE_NOT_SUPPORTED, m))),
            }
        }
        m.text(&all).map(Ok)
    }
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

fn part_rows(fields: &[Field], rows: Vec<Vec<Option<String>>>) -> Result<PartRows, String> {
    let mut types = Vec::with_capacity(fields.len());
    for f in fields {
        match type_name(f.type_oid, f.modifier) {
            Some(t) => types.push(t),
            None => {
                return Err(format!(
                    "the statement needs rows of a subquery, WITH query or table read first, and its column {} has a type \
                     (oid {}) shardwire cannot write back as a literal; give the shard key a condition that names one shard, \
                     or cast the column to a built-in type",
                    String::from_utf8_lossy(&f.name),
                    f.type_oid
                ));
            }
        }
    }
    Ok(PartRows {
        names: fields
            .iter()
            .map(|f| String::from_utf8_lossy(&f.name).into_owned())
            .collect(),
        types,
        rows,
    })
}

/// The SQL name of a built-in type with its modifier, as `format_type` prints it; `None` for
/// types outside this list (their names live in each database's catalog).
fn type_name(type_oid: u32, typmod: i32) -> Option<String> {
    let base = match type_oid {
        oid::BOOL => "boolean",
        oid::BYTEA => "bytea",
        oid::CHAR => "\"char\"",
        oid::NAME => "name",
        oid::INT8 => "bigint",
        oid::INT2 => "smallint",
        oid::INT4 => "integer",
        oid::TEXT => "text",
        oid::OID => "oid",
        114 => "json",
        142 => "xml",
        oid::FLOAT4 => "real",
        oid::FLOAT8 => "double precision",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        650 => "cidr",
        oid::DATE => "date",
        1186 => "interval",
        oid::UUID => "uuid",
        3802 => "jsonb",
        1000 => "boolean[]",
        1001 => "bytea[]",
        1005 => "smallint[]",
        1007 => "integer[]",
        1016 => "bigint[]",
        1009 => "text[]",
        1015 => "character varying[]",
        1021 => "real[]",
        1022 => "double precision[]",
        1231 => "numeric[]",
        1182 => "date[]",
        1115 => "timestamp without time zone[]",
        1185 => "timestamp with time zone[]",
        2951 => "uuid[]",
        3807 => "jsonb[]",
        _ => "",
    };
    if !base.is_empty() {
        return Some(base.to_owned());
    }
    let with = |name: &str, m: Option<i32>| Some(m.map_or(name.to_owned(), |m| format!("{name}({m})")));
    let precision = (typmod >= 0).then_some(typmod);
    match type_oid {
        oid::NUMERIC if typmod >= 4 => {
            let t = typmod - 4;
            Some(format!("numeric({},{})", (t >> 16) & 0xffff, t & 0xffff))
        }
        oid::NUMERIC => Some("numeric".into()),
        oid::VARCHAR => with("character varying", (typmod >= 4).then_some(typmod - 4)),
        oid::BPCHAR => with("character", (typmod >= 4).then_some(typmod - 4)),
        1560 => with("bit", precision),
        1562 => with("bit varying", precision),
        oid::TIMESTAMP => Some(time_type("timestamp", precision, "without time zone")),
        oid::TIMESTAMPTZ => Some(time_type("timestamp", precision, "with time zone")),
        1083 => Some(time_type("time", precision, "without time zone")),
        1266 => Some(time_type("time", precision, "with time zone")),
        _ => None,
    }
}

fn time_type(name: &str, precision: Option<i32>, zone: &str) -> String {
    match precision {
        Some(p) => format!("{name}({p}) {zone}"),
        None => format!("{name} {zone}"),
    }
}

#[cfg(test)]
mod tests {
    use super::type_name;

    #[test]
    fn type_names_are_format_types() {
        assert_eq!(type_name(1700, (10 << 16) + 2 + 4).as_deref(), Some("numeric(10,2)"));
        assert_eq!(type_name(1700, -1).as_deref(), Some("numeric"));
        assert_eq!(type_name(1043, 24).as_deref(), Some("character varying(20)"));
        assert_eq!(type_name(1043, -1).as_deref(), Some("character varying"));
        assert_eq!(type_name(1184, 3).as_deref(), Some("timestamp(3) with time zone"));
        assert_eq!(type_name(20, -1).as_deref(), Some("bigint"));
        assert_eq!(type_name(16384, -1), None);
    }
}
