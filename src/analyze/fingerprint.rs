//! Normalised statement texts: literals replaced by `?`, so `... WHERE id = 1` and
//! `... WHERE id = 2` share one cached analysis. Comments are kept (hints live there); quoted
//! identifiers and dollar-quoted bodies are handled so their contents are never mistaken for
//! literals or the other way round.

/// The text with string and numeric literals replaced by `?`.
pub fn fingerprint(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut last = 0; // start of the pending verbatim run
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && ident(b[i - 1]);
        let skip_to = match c {
            b'\'' => Some((literal_end(b, i), true)),
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if !prev_ident && b.get(i + 1) == Some(&b'\'') => {
                Some((literal_end(b, i + 1), true))
            }
            b'"' => Some((quoted_end(b, i, b'"'), false)),
            b'-' if b.get(i + 1) == Some(&b'-') => Some((
                b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p),
                false,
            )),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                Some((sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2), false))
            }
            b'$' if !prev_ident => dollar_end(sql, i).map(|e| (e, true)),
            b'0'..=b'9' if !prev_ident => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_') {
                    j += 1;
                }
                Some((j, true))
            }
            _ => None,
        };
        match skip_to {
            Some((end, replace)) => {
                if replace {
                    out.push_str(&sql[last..i]);
                    out.push('?');
                    last = end;
                }
                i = end.max(i + 1);
            }
            None => i += 1,
        }
    }
    out.push_str(&sql[last.min(sql.len())..]);
    out
}

/// Parameter numbers from which [`parameterize`] numbers the literals it replaces: far above any
/// parameter a client can send (PostgreSQL allows 65535).
pub const LITERAL_PARAM_BASE: usize = 100_000;

/// A text with its literals taken out by [`parameterize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiteralFree {
    /// The text, literal `k` (from 0) replaced by the parameter `$<LITERAL_PARAM_BASE + k + 1>`.
    pub text: String,
    /// The literals' values (strings unquoted), in order.
    pub values: Vec<String>,
    /// Where each literal stands in the original text, as written (quotes included).
    pub spans: Vec<std::ops::Range<usize>>,
}

/// The text with each plain string and numeric literal replaced by a parameter
/// `$<LITERAL_PARAM_BASE + k + 1>`, and the literals' values in order; `None` when a literal has a
/// form whose value is not its text (escape, bit, national and dollar-quoted strings, or a
/// backslash). Statements that differ only in their literals share the text, so its analysis is
/// reused; the values are bound back as parameters when routing.
pub fn parameterize(sql: &str) -> Option<LiteralFree> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 16);
    let mut values = Vec::new();
    let mut spans = Vec::new();
    let mut i = 0;
    let mut last = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && ident(b[i - 1]);
        let (end, value) = match c {
            b'\'' => {
                let end = literal_end(b, i);
                let body = &sql[i + 1..end.saturating_sub(1).max(i + 1)];
                if body.contains('\\') || end > b.len() || b[end - 1] != b'\'' || end == i + 1 {
                    return None;
                }
                (end, Some(body.replace("''", "'")))
            }
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if !prev_ident && b.get(i + 1) == Some(&b'\'') => {
                return None;
            }
            b'"' => (quoted_end(b, i, b'"'), None),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                (b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p), None)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => (sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2), None),
            b'$' if !prev_ident && dollar_end(sql, i).is_some() => return None,
            b'0'..=b'9' if !prev_ident => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_') {
                    j += 1;
                }
                // `1e-5` is one number: its exponent's sign would otherwise split it in two.
                if matches!(b[j - 1], b'e' | b'E')
                    && matches!(b.get(j), Some(b'+' | b'-'))
                    && b.get(j + 1).is_some_and(u8::is_ascii_digit)
                {
                    j += 1;
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                }
                (j, Some(sql[i..j].to_owned()))
            }
            _ => {
                i += 1;
                continue;
            }
        };
        if let Some(v) = value {
            out.push_str(&sql[last..i]);
            out.push('$');
            out.push_str(&(LITERAL_PARAM_BASE + values.len() + 1).to_string());
            values.push(v);
            spans.push(i..end);
            last = end;
        }
        i = end.max(i + 1);
    }
    out.push_str(&sql[last.min(sql.len())..]);
    Some(LiteralFree {
        text: out,
        values,
        spans,
    })
}

/// End (exclusive) of a '...' literal starting at `start`, with '' and backslash escapes.
pub(super) fn literal_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

pub(super) fn quoted_end(b: &[u8], start: usize, q: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// End of a `$tag$ ... $tag$` string starting at `start`, if one starts there (`$1` is a parameter).
pub(super) fn dollar_end(sql: &str, start: usize) -> Option<usize> {
    let rest = &sql[start + 1..];
    let tag_len = rest.find('$')?;
    let tag = &rest[..tag_len];
    if !tag.chars().all(|c| c.is_alphanumeric() || c == '_') || tag.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let delim = &sql[start..start + tag_len + 2];
    let body = start + delim.len();
    Some(sql[body..].find(delim).map_or(sql.len(), |p| body + p + delim.len()))
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn literals_become_placeholders() {
        let table = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = ?;",
            ),
            (
                "select * from t1 where a = 'x''y' and b = 1.5e3",
                "select * from t1 where a = ? and b = ?",
            ),
            ("SELECT E'a\\'b', $$ dollar 'q' $$, $tag$x$tag$", "SELECT ?, ?, ?"),
            (
                "SELECT \"col 1\" FROM \"t'x\" WHERE c = $1",
                "SELECT \"col 1\" FROM \"t'x\" WHERE c = $1",
            ),
            (
                "/* shardwire: primary */ SELECT 1 -- note 2\n",
                "/* shardwire: primary */ SELECT ? -- note 2\n",
            ),
            ("SELECT x'ff', t2.c3 FROM t2", "SELECT ?, t2.c3 FROM t2"),
            ("SELECT 'unterminated", "SELECT ?"),
        ];
        for (sql, want) in table {
            assert_eq!(fingerprint(sql), want, "{sql}");
        }
    }

    #[test]
    fn literals_become_parameters() {
        let sql = "SELECT * FROM t WHERE id = 42 AND name = 'o''k' AND r < 1e-5 -- 7\n";
        let lf = super::parameterize(sql).unwrap();
        assert_eq!(
            lf.text,
            "SELECT * FROM t WHERE id = $100001 AND name = $100002 AND r < $100003 -- 7\n"
        );
        assert_eq!(lf.values, ["42", "o'k", "1e-5"]);
        let raw: Vec<&str> = lf.spans.iter().map(|r| &sql[r.clone()]).collect();
        assert_eq!(raw, ["42", "'o''k'", "1e-5"]);
        let lf = super::parameterize("SELECT \"x1\" FROM t2 WHERE a = $1 AND b = 2e+3-1").unwrap();
        assert_eq!(lf.text, "SELECT \"x1\" FROM t2 WHERE a = $1 AND b = $100001-$100002");
        assert_eq!(lf.values, ["2e+3", "1"]);
        assert!(super::parameterize("SELECT E'a\\nb'").is_none());
        assert!(super::parameterize("SELECT 'a\\b'").is_none());
        assert!(super::parameterize("SELECT $q$x$q$").is_none());
    }

    #[test]
    fn same_shape_same_fingerprint() {
        assert_eq!(
            fingerprint("SELECT * FROM t WHERE id = 1"),
            fingerprint("SELECT * FROM t WHERE id = 99999")
        );
        assert_ne!(
            fingerprint("SELECT * FROM t WHERE id = 1"),
            fingerprint("DELETE FROM t WHERE id = 1")
        );
    }
}
