//! The client's prepared statements and portals, and their identity on backends: one backend
//! connection serves many clients, so a statement is prepared there under a name derived from its
//! text and parameter types, which every client preparing the same statement shares.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::analyze::Facts;

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
    use super::*;

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
