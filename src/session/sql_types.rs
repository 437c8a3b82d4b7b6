//! SQL type names and the text of values, for writing rows and Bind values back into a
//! statement as typed literals (`analyze::shard::materialize`): a column's type from its oid and
//! modifier as `format_type` prints it, and a binary Bind value in PostgreSQL's text form.

use super::values;
use crate::exec::merge::Value;
use crate::protocol::pg::oid;

/// A binary Bind value in PostgreSQL's text form, for the types whose binary form is their
/// text's or a number; `None` for the others (dates and times travel as counts since 2000).
pub(super) fn binary_param_text(type_oid: u32, raw: &[u8]) -> Option<String> {
    match type_oid {
        oid::BYTEA => {
            let mut hex = String::with_capacity(2 + 2 * raw.len());
            hex.push_str("\\x");
            for b in raw {
                hex.push_str(&format!("{b:02x}"));
            }
            Some(hex)
        }
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC | oid::BOOL => {
            Some(match values::decode(type_oid, 1, Some(raw)).ok()? {
                Value::Int(n) => n.to_string(),
                Value::Float(f) => format!("{f:?}"),
                Value::Num(d) => d.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            })
        }
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => String::from_utf8(raw.to_vec()).ok(),
        _ => None,
    }
}

/// The SQL name of a built-in type with its modifier, as `format_type` prints it; `None` for
/// types outside this list (their names live in each database's catalog).
pub(super) fn type_name(type_oid: u32, typmod: i32) -> Option<String> {
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
            // The scale is 11 bits, signed (negative scales since PostgreSQL 15).
            let scale = ((t & 0x7ff) ^ 0x400) - 0x400;
            Some(format!("numeric({},{scale})", (t >> 16) & 0xffff))
        }
        oid::NUMERIC => Some("numeric".into()),
        oid::VARCHAR => with("character varying", (typmod >= 4).then_some(typmod - 4)),
        // Without a length `character` and `bit` would mean length 1 and cut the value: the
        // internal names have none.
        oid::BPCHAR if typmod >= 4 => with("character", Some(typmod - 4)),
        oid::BPCHAR => Some("bpchar".into()),
        1560 if typmod >= 0 => with("bit", precision),
        1560 => Some("\"bit\"".into()),
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
        assert_eq!(type_name(1042, -1).as_deref(), Some("bpchar"));
        assert_eq!(type_name(1042, 7).as_deref(), Some("character(3)"));
        assert_eq!(type_name(1560, -1).as_deref(), Some("\"bit\""));
        // numeric(5,-2) (PostgreSQL 15): scale stored as 11 signed bits.
        assert_eq!(
            type_name(1700, ((5 << 16) | (-2i32 & 0x7ff)) + 4).as_deref(),
            Some("numeric(5,-2)")
        );
        assert_eq!(type_name(16384, -1), None);
    }
}
