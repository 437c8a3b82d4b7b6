//! Per-client state that must survive moving between backend connections: session parameters,
//! prepared statements, and the queue of responses expected from the backend in use.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::analyze::{Facts, SetOp};

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
        let sql = self.vars.get("client_encoding")?;
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

/// A prepared statement as the client named it.
#[derive(Debug)]
pub struct Stmt {
    /// SQL text.
    pub query: String,
    /// Parameter types, raw (count and oids).
    pub param_types: Bytes,
    /// Identity of (text, types): the backend-side name is derived from it, so clients that
    /// prepare the same statement share it on a backend connection.
    pub hash: u64,
    /// Analysis, done once at Parse.
    pub facts: Arc<Facts>,
    /// The text is ASCII: the same bytes in every client encoding, never converted.
    pub ascii: bool,
    /// The shard shape, with the map it was computed for (a reload with another map recomputes it).
    pub shape: std::sync::OnceLock<(Arc<crate::shardmap::ShardMap>, Arc<crate::analyze::shard::Shape>)>,
    /// For an INSERT that gets generated IDs: the statement with the ID column and one parameter
    /// per row added, as parsed and as prepared on backends.
    pub filled: std::sync::OnceLock<(Arc<sqlparser::ast::Statement>, Arc<Stmt>)>,
    /// For an INSERT without a column list into a sharded table: the statement with its columns
    /// named, as prepared on backends.
    pub named: std::sync::OnceLock<Arc<Stmt>>,
}

impl Stmt {
    /// Builds a statement and its identity.
    pub fn new(query: &str, param_types: &[u8], facts: Arc<Facts>) -> Stmt {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        query.hash(&mut h);
        param_types.hash(&mut h);
        Stmt {
            query: query.to_owned(),
            param_types: Bytes::copy_from_slice(param_types),
            hash: h.finish(),
            facts,
            ascii: query.is_ascii(),
            shape: std::sync::OnceLock::new(),
            filled: std::sync::OnceLock::new(),
            named: std::sync::OnceLock::new(),
        }
    }

    /// Name of the statement on backend connections.
    pub fn backend_name(&self) -> String {
        backend_name(self.hash)
    }
}

/// The name under which the proxy prepares a statement on backends.
pub fn backend_name(hash: u64) -> String {
    format!("sw_{hash:016x}")
}

/// The extended-protocol message an [`Op::Ext`] answers.
#[derive(Debug)]
pub enum ExtKind {
    /// Parse; on failure forget that the backend holds statement `forget`.
    Parse {
        /// Hash of a named statement marked prepared on the backend when sent.
        forget: Option<u64>,
        /// The client's name for it, dropped if the Parse fails.
        client_name: Option<String>,
    },
    /// Bind.
    Bind,
    /// Describe (statement or portal).
    Describe,
    /// Execute; applies `set_ops` on success.
    Execute {
        /// Session parameter changes of the executed statement.
        set_ops: Vec<SetOp>,
    },
    /// Close of a portal.
    Close,
}

/// One response (group) expected from the backend, or one the proxy produces itself, in the order
/// the client must see them.
#[derive(Debug)]
pub enum Op {
    /// A simple Query: everything up to ReadyForQuery is forwarded.
    Query {
        /// Applied when the query completes without error.
        set_ops: Vec<SetOp>,
        /// An ErrorResponse was seen.
        failed: bool,
    },
    /// An extended-protocol message.
    Ext(ExtKind),
    /// Sync: ReadyForQuery.
    Sync,
    /// A message the proxy answers itself (ParseComplete for a statement the backend already
    /// holds, CloseComplete, an error), emitted when it reaches the front.
    Synth(Bytes),
    /// A Parse the proxy added before Bind/Describe: its ParseComplete is swallowed.
    Inject {
        /// Named statement hash to forget if it fails or is skipped.
        forget: Option<u64>,
    },
    /// A Close of a statement the proxy prepared, to stay under `pool.max_prepared_statements`:
    /// its CloseComplete is swallowed.
    Evict {
        /// The statement's hash, taken back if the Close is skipped after an error.
        hash: u64,
    },
    /// Where the client ended a COPY FROM STDIN before the server said it started one: Syncs queued
    /// before it are ignored by the server. Answers nothing.
    CopyEnd,
    /// The replay of session parameters: swallowed through ReadyForQuery.
    SyncVars,
    /// A Sync the proxy added to end a pipeline on this backend so the rest of the client's
    /// pipeline can go to another node: its ReadyForQuery is swallowed. `failed`: an error came
    /// before it, so the client's remaining messages are skipped until its own Sync, as the
    /// server would have.
    PipelineSync {
        /// An error preceded it.
        failed: bool,
    },
    /// A Bind of a statement that cannot exist, sent after an error the proxy raised itself in a
    /// pipeline: it fails on the backend too, so the pipeline's implicit transaction (or the
    /// transaction block) is rolled back at Sync as when the server raises an error, and nothing
    /// the pipeline ran before the error is committed. Its ErrorResponse is swallowed.
    Abort,
    /// An extended-protocol BEGIN the proxy added in the middle of a pipeline, turning its
    /// implicit transaction into a transaction block so it can span shards: its ParseComplete,
    /// BindComplete and CommandComplete are swallowed.
    HiddenBegin,
    /// Something the proxy sent on its own (a Sync, a ROLLBACK): everything through its
    /// ReadyForQuery is swallowed, errors included.
    Hidden,
    /// `pg_current_wal_lsn()` after a write, for read-your-writes: swallowed, value kept.
    CaptureLsn {
        /// The position read.
        lsn: Option<u64>,
        /// The shard written.
        shard: crate::shardmap::ShardId,
    },
}

/// The queue of expected responses of the backend connection in use.
pub type Ops = VecDeque<Op>;

/// The client's portals and the statements they were bound from. The unnamed portal, the one
/// almost every client uses, has its own slot: no string key or hash per Bind.
#[derive(Default)]
pub struct Portals {
    unnamed: Option<Arc<Stmt>>,
    named: HashMap<String, Arc<Stmt>>,
}

impl Portals {
    /// Binds `name` (empty: the unnamed portal) to `stmt`, replacing what it held.
    pub fn insert(&mut self, name: &str, stmt: Arc<Stmt>) {
        if name.is_empty() {
            self.unnamed = Some(stmt);
        } else {
            self.named.insert(name.to_owned(), stmt);
        }
    }

    /// The statement behind a portal.
    pub fn get(&self, name: &str) -> Option<&Arc<Stmt>> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    /// Forgets a portal.
    pub fn remove(&mut self, name: &str) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {

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
    use super::*;

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

    #[test]
    fn statement_identity() {
        let f = Arc::new(Facts::unparsed());
        let a = Stmt::new("select $1", &[0, 1, 0, 0, 0, 23], f.clone());
        let b = Stmt::new("select $1", &[0, 1, 0, 0, 0, 23], f.clone());
        let c = Stmt::new("select $1", &[0, 0], f);
        assert_eq!(a.backend_name(), b.backend_name());
        assert_ne!(a.backend_name(), c.backend_name());
    }
}
