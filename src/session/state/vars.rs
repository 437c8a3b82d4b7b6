//! Session parameters: what the client set (startup parameters, `options`, SET), kept as the
//! statements that set them so any backend connection can be brought to the same settings, and
//! a signature so a connection already there is not sent them again.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use crate::analyze::SetOp;

/// Session parameters set by the client (startup parameters and SET), replayed on every backend
/// connection it uses. Kept as the statements that set them.
#[derive(Debug, Default, Clone)]
pub struct SessionVars {
    vars: BTreeMap<String, String>,
    sig: u64,
    /// The settings at each savepoint of the open transaction, oldest first: ROLLBACK TO
    /// returns to them, as the server does.
    savepoints: Vec<(String, BTreeMap<String, String>)>,
}

impl SessionVars {
    /// The signature of a connection with nothing set.
    pub const EMPTY_SIG: u64 = crate::backend::conn::EMPTY_VARS_SIG;

    /// A signature that differs whenever the settings differ, so a backend connection whose
    /// signature matches needs no replay.
    pub fn sig(&self) -> u64 {
        self.sig
    }

    /// Applies a change.
    pub fn apply(&mut self, op: &SetOp) {
        match op {
            SetOp::Set { name, sql } => {
                self.vars.insert(name.clone(), sql.clone());
            }
            SetOp::Reset { name } => {
                self.vars.remove(name);
            }
            SetOp::ResetAll => self.vars.clear(),
            SetOp::Savepoint { name } => self.savepoints.push((name.clone(), self.vars.clone())),
            SetOp::RollbackTo { name } => {
                // The savepoint stays (it can be rolled back to again); later ones go.
                if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                    self.savepoints.truncate(i + 1);
                    self.vars = self.savepoints[i].1.clone();
                }
            }
            SetOp::Release { name } => {
                if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                    self.savepoints.truncate(i);
                }
            }
        }
        self.sig = if self.vars.is_empty() {
            Self::EMPTY_SIG
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.vars.hash(&mut h);
            h.finish() | 1
        };
    }

    /// The transaction ended: its savepoints are gone.
    pub fn end_transaction(&mut self) {
        self.savepoints.clear();
    }

    /// Records a startup parameter (`application_name`, `DateStyle`, `-c name=value` options, ...).
    pub fn apply_startup(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        let sql = format!("SET {} TO {}", quote_ident(&name), quote_literal(value));
        self.apply(&SetOp::Set { name, sql });
    }

    /// The SQL that brings a connection with signature `backend_sig` to these settings.
    pub fn replay_sql(&self, backend_sig: u64) -> String {
        let mut sql = String::new();
        if backend_sig != Self::EMPTY_SIG {
            sql.push_str("RESET ALL;");
        }
        for s in self.vars.values() {
            sql.push_str(s);
            sql.push(';');
        }
        sql
    }

    /// The client's `client_encoding` as last set (startup or SET), if it set one. The value is
    /// read back from the statement kept for replay: what follows its last `TO` or `=`.
    pub fn client_encoding(&self) -> Option<String> {
        self.setting("client_encoding")
    }

    /// A parameter's value as the client last set it (startup or SET), if it set one, read back
    /// from the statement kept for replay: what follows its last `TO` or `=`.
    pub fn setting(&self, name: &str) -> Option<String> {
        let sql = self.vars.get(name)?;
        let upper = sql.to_ascii_uppercase();
        let at = [upper.rfind(" TO "), upper.rfind('=')].into_iter().flatten().max()?;
        let value = sql[at..].trim_start_matches([' ', '=']);
        let value = value
            .strip_prefix("TO ")
            .or_else(|| value.strip_prefix("to "))
            .unwrap_or(value);
        let value = value.trim().trim_end_matches(';').trim().trim_matches(['\'', '"']);
        (!value.eq_ignore_ascii_case("default")).then(|| value.to_owned())
    }

    /// The savepoints of the open transaction, oldest first.
    pub fn savepoint_names(&self) -> impl Iterator<Item = &str> {
        self.savepoints.iter().map(|(n, _)| n.as_str())
    }

    /// The current settings, for SHOW CLIENTS.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.vars.iter()
    }
}

/// An encoding name as the server reports it (`utf8`, `utf-8`, `Unicode` → `UTF8`; `latin9`,
/// `iso-8859-15` → `LATIN9`), following PostgreSQL's own alias table for the common names: the
/// server ignores case and punctuation in the name and reports its canonical spelling.
pub fn canonical_encoding(name: &str) -> String {
    let key: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let canonical = match key.as_str() {
        "utf8" | "unicode" => "UTF8",
        "sqlascii" => "SQL_ASCII",
        "latin1" | "iso88591" => "LATIN1",
        "latin2" | "iso88592" => "LATIN2",
        "latin3" | "iso88593" => "LATIN3",
        "latin4" | "iso88594" => "LATIN4",
        "latin5" | "iso88599" => "LATIN5",
        "latin6" | "iso885910" => "LATIN6",
        "latin7" | "iso885913" => "LATIN7",
        "latin8" | "iso885914" => "LATIN8",
        "latin9" | "iso885915" => "LATIN9",
        "latin10" | "iso885916" => "LATIN10",
        "iso88595" => "ISO_8859_5",
        "iso88596" => "ISO_8859_6",
        "iso88597" => "ISO_8859_7",
        "iso88598" => "ISO_8859_8",
        "eucjp" => "EUC_JP",
        "euccn" => "EUC_CN",
        "euckr" => "EUC_KR",
        "euctw" => "EUC_TW",
        "eucjis2004" => "EUC_JIS_2004",
        "sjis" | "shiftjis" | "mskanji" | "win932" | "windows932" => "SJIS",
        "shiftjis2004" => "SHIFT_JIS_2004",
        "big5" | "win950" | "windows950" => "BIG5",
        "gbk" | "win936" | "windows936" => "GBK",
        "gb18030" => "GB18030",
        "uhc" | "win949" | "windows949" => "UHC",
        "johab" => "JOHAB",
        "koi8" | "koi8r" => "KOI8R",
        "koi8u" => "KOI8U",
        "mulecode" => "MULE_INTERNAL",
        k => {
            if let Some(n) = k.strip_prefix("windows").or_else(|| k.strip_prefix("win")) {
                return format!("WIN{n}");
            }
            return name.to_ascii_uppercase();
        }
    };
    canonical.to_string()
}

/// Parses a startup `options` value: `-c name=value` and `--name=value`, whitespace separated,
/// with backslash escaping a space.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next()
        } else {
            w.strip_prefix("--")
                .map(str::to_owned)
                .or_else(|| w.strip_prefix("-c").map(str::to_owned))
        };
        if let Some((k, v)) = kv.as_deref().and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

/// `'...'` with quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"..."` with quotes doubled, unless the name is a plain lower-case identifier.
pub fn quote_ident(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::SetOp;

    fn set(v: &mut super::SessionVars, name: &str, value: &str) {
        v.apply(&SetOp::Set {
            name: name.into(),
            sql: format!("SET {name} TO {value}"),
        });
    }

    fn sp(op: fn(String) -> SetOp, name: &str) -> SetOp {
        op(name.into())
    }

    #[test]
    fn savepoints_restore_settings_as_the_server_does() {
        let mut v = super::SessionVars::default();
        set(&mut v, "search_path", "a");
        let at_a = v.sig();
        v.apply(&sp(|name| SetOp::Savepoint { name }, "s1"));
        set(&mut v, "search_path", "b");
        let at_b = v.sig();
        v.apply(&sp(|name| SetOp::Savepoint { name }, "s2"));
        set(&mut v, "search_path", "c");
        v.apply(&sp(|name| SetOp::RollbackTo { name }, "s2"));
        assert_eq!(v.sig(), at_b);
        // s2 survives its rollback: rolling back to it again works.
        set(&mut v, "search_path", "d");
        v.apply(&sp(|name| SetOp::RollbackTo { name }, "s2"));
        assert_eq!(v.sig(), at_b);
        // Rolling back to s1 drops s2.
        v.apply(&sp(|name| SetOp::RollbackTo { name }, "s1"));
        assert_eq!(v.sig(), at_a);
        v.apply(&sp(|name| SetOp::RollbackTo { name }, "s2"));
        assert_eq!(v.sig(), at_a, "s2 is gone");
        // RELEASE keeps what was set.
        set(&mut v, "search_path", "e");
        let at_e = v.sig();
        v.apply(&sp(|name| SetOp::Release { name }, "s1"));
        assert_eq!(v.sig(), at_e);
        v.apply(&sp(|name| SetOp::RollbackTo { name }, "s1"));
        assert_eq!(v.sig(), at_e, "s1 was released");
        // A savepoint from an ended transaction is not rolled back to.
        v.apply(&sp(|name| SetOp::Savepoint { name }, "s3"));
        v.end_transaction();
        set(&mut v, "search_path", "f");
        let at_f = v.sig();
        v.apply(&sp(|name| SetOp::RollbackTo { name }, "s3"));
        assert_eq!(v.sig(), at_f);
    }
    #[test]
    fn the_client_encoding_is_read_back_from_its_setting() {
        let mut v = SessionVars::default();
        assert_eq!(v.client_encoding(), None);
        v.apply_startup("client_encoding", "latin9");
        assert_eq!(v.client_encoding().as_deref(), Some("latin9"));
        for (sql, want) in [
            ("SET client_encoding = 'EUC_JP'", Some("EUC_JP")),
            ("set client_encoding to sjis;", Some("sjis")),
            ("SET client_encoding TO DEFAULT", None),
        ] {
            v.apply(&SetOp::Set {
                name: "client_encoding".into(),
                sql: sql.into(),
            });
            assert_eq!(v.client_encoding().as_deref(), want, "{sql}");
        }
    }

    #[test]
    fn vars_signature_and_replay() {
        let mut v = SessionVars::default();
        assert_eq!(v.sig(), SessionVars::EMPTY_SIG);
        assert_eq!(canonical_encoding("utf8"), "UTF8");
        assert_eq!(canonical_encoding("Utf-8"), "UTF8");
        assert_eq!(canonical_encoding("iso-8859-15"), "LATIN9");
        assert_eq!(canonical_encoding("euc_jp"), "EUC_JP");
        assert_eq!(canonical_encoding("windows-1252"), "WIN1252");
        v.apply_startup("application_name", "it's");
        let s1 = v.sig();
        assert_ne!(s1, SessionVars::EMPTY_SIG);
        assert_eq!(v.replay_sql(SessionVars::EMPTY_SIG), "SET application_name TO 'it''s';");
        assert!(v.replay_sql(123).starts_with("RESET ALL;"));
        v.apply(&SetOp::Set {
            name: "search_path".into(),
            sql: "SET search_path = a".into(),
        });
        assert_ne!(v.sig(), s1);
        v.apply(&SetOp::Reset {
            name: "search_path".into(),
        });
        assert_eq!(v.sig(), s1);
        v.apply(&SetOp::ResetAll);
        assert_eq!(v.sig(), SessionVars::EMPTY_SIG);
    }

    #[test]
    fn options_parse() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -csearch_path=c\\ d"),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("search_path".into(), "c d".into())
            ]
        );
    }
}
