//! A bounded cache of analyses, so a repeated statement is parsed once. Keyed by the statement's
//! fingerprint (literals replaced), so simple-protocol queries that differ only in their values
//! share an entry; statements whose facts carry literal values (SET) are keyed by their exact
//! text instead. Prepared statements are analyzed once at Parse and keep their facts themselves.
//!
//! Both caches bound the total length of the texts they hold, not only their number, so a long
//! statement analyzed off the runtime's threads stays cached for the session that sent it (which
//! looks it up again on its own thread) without letting a few huge texts fill the memory.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::fingerprint::fingerprint;
use super::shard::Shape;
use super::{Facts, Limits, analyze_within};
use crate::shardmap::ShardMap;

/// Total length of the texts one cache keeps; a text over a quarter of it is never kept.
const TEXT_BUDGET: usize = 64 << 20;

/// An LRU map from texts whose total key length stays under [`TEXT_BUDGET`].
struct Bounded<V> {
    map: LruCache<String, V>,
    bytes: usize,
}

impl<V: Clone> Bounded<V> {
    fn new(capacity: NonZeroUsize) -> Bounded<V> {
        Bounded {
            map: LruCache::new(capacity),
            bytes: 0,
        }
    }

    fn get(&mut self, key: &str) -> Option<V> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: String, value: V) {
        if key.len() > TEXT_BUDGET / 4 {
            return;
        }
        self.bytes += key.len();
        if let Some((old, _)) = self.map.push(key, value) {
            self.bytes -= old.len();
        }
        while self.bytes > TEXT_BUDGET {
            match self.map.pop_lru() {
                Some((old, _)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

/// MySQL analyses, keyed by the text with its literals replaced
/// ([`super::mysql::template`]), or by the exact text when the facts carry values (SET, USE,
/// autocommit) or the text has no template. Shared by all sessions, locked as
/// [`AnalysisCache`].
pub struct MyFactsCache {
    entries: Mutex<Bounded<Arc<super::mysql::MyFacts>>>,
}

impl MyFactsCache {
    /// A cache holding at most `capacity` texts.
    pub fn new(capacity: NonZeroUsize) -> MyFactsCache {
        MyFactsCache {
            entries: Mutex::new(Bounded::new(capacity)),
        }
    }

    /// The facts of `sql`, from the cache or freshly analyzed within `limits`.
    pub fn get(&self, sql: &str, primary_functions: &HashSet<String>, limits: &Limits) -> Arc<super::mysql::MyFacts> {
        if super::limits::check(sql, limits).is_err() {
            return Arc::new(super::mysql::analyze(sql, primary_functions, limits));
        }
        let lock = || self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = super::mysql::template(sql);
        if let Some(f) = key.as_deref().and_then(|k| lock().get(k)).or_else(|| lock().get(sql)) {
            return f;
        }
        let facts = Arc::new(super::mysql::analyze(sql, primary_functions, limits));
        let by_values = !facts.facts.set_ops.is_empty() || facts.autocommit.is_some() || facts.use_db.is_some();
        let key = match key {
            Some(k) if !by_values => k,
            _ => sql.to_owned(),
        };
        lock().put(key, facts.clone());
        facts
    }

    /// Forgets every analysis (the primary functions or limits changed).
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Shared by all sessions. The lock is a std Mutex held only for a map lookup or insert, never
/// across an await or a parse.
pub struct AnalysisCache {
    entries: Mutex<Bounded<Arc<Facts>>>,
}

impl AnalysisCache {
    /// A cache holding at most `capacity` texts.
    pub fn new(capacity: NonZeroUsize) -> AnalysisCache {
        AnalysisCache {
            entries: Mutex::new(Bounded::new(capacity)),
        }
    }

    /// The facts of `sql`, from the cache or freshly analyzed within `limits`.
    pub fn get(&self, sql: &str, primary_functions: &HashSet<String>, limits: &Limits) -> Arc<Facts> {
        self.get_keyed(fingerprint(sql), sql, primary_functions, limits)
    }

    /// The facts of `sql` under a literal-free `key` the caller already has (the fingerprint, or
    /// the text with its literals as parameters, which identifies the same statements).
    pub fn get_keyed(
        &self,
        key: String,
        sql: &str,
        primary_functions: &HashSet<String>,
        limits: &Limits,
    ) -> Arc<Facts> {
        if sql.len() > limits.max_bytes {
            // Checked before the lookup: texts of one fingerprint differ in their literals' length.
            return Arc::new(analyze_within(sql, primary_functions, limits));
        }
        if let Some(f) = self.lock().get(&key) {
            return f;
        }
        if let Some(f) = self.lock().get(sql) {
            return f;
        }
        let facts = Arc::new(analyze_within(sql, primary_functions, limits));
        // SET statements are replayed by their text: the values matter.
        let key = if facts.set_ops.is_empty()
            && !matches!(
                facts.proxy_call,
                Some(super::ProxyCall::NextIds(_) | super::ProxyCall::Signal { .. })
            ) {
            key
        } else {
            sql.to_owned()
        };
        self.lock().put(key, facts.clone());
        facts
    }

    /// Forgets everything, e.g. when the list of primary functions changes on reload.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// No cached texts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bounded<Arc<Facts>>> {
        // A poisoned lock only means another thread panicked mid-lookup; the map is still valid.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shard shapes by exact statement text (key values differ between texts, so no fingerprint),
/// each with the map snapshot it was computed under: a session still on an older snapshot during
/// a reload neither gets a shape of the new map nor leaves one of its own for the others.
pub struct ShapeCache {
    inner: Mutex<Bounded<(Arc<ShardMap>, Arc<Shape>)>>,
}

impl ShapeCache {
    /// An empty cache holding up to `capacity` shapes.
    pub fn new(capacity: NonZeroUsize) -> ShapeCache {
        ShapeCache {
            inner: Mutex::new(Bounded::new(capacity)),
        }
    }

    /// The shape of `sql` under `map`, computed on a miss or when the cached one is of another map.
    pub fn get(&self, sql: &str, map: &Arc<ShardMap>) -> Arc<Shape> {
        if let Some((m, s)) = self.lock().get(sql)
            && Arc::ptr_eq(&m, map)
        {
            return s;
        }
        let shape = Arc::new(crate::analyze::shard::shape(sql, map));
        self.lock().put(sql.to_owned(), (map.clone(), shape.clone()));
        shape
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bounded<(Arc<ShardMap>, Arc<Shape>)>> {
        // A poisoned lock only means another thread panicked mid-lookup; the map is still valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every shape (and with them the maps they hold).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_and_bounds() {
        let c = AnalysisCache::new(NonZeroUsize::new(2).unwrap());
        let f = HashSet::new();
        let a = c.get("SELECT 1", &f, &Limits::default());
        let b = c.get("SELECT 1", &f, &Limits::default());
        assert!(Arc::ptr_eq(&a, &b));
        let other = c.get("SELECT 2", &f, &Limits::default());
        assert!(Arc::ptr_eq(&a, &other), "literals do not matter");
        c.get("SELECT x FROM t", &f, &Limits::default());
        c.get("SELECT y FROM t", &f, &Limits::default());
        c.get("SELECT z FROM t", &f, &Limits::default());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn shapes_are_of_the_map_they_were_computed_under() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shard-maps/example.toml");
        let old = Arc::new(crate::shardmap::load(&path).unwrap());
        let new = Arc::new(crate::shardmap::load(&path).unwrap());
        let c = ShapeCache::new(NonZeroUsize::new(10).unwrap());
        let sql = "SELECT * FROM customers WHERE id = 7";
        let a = c.get(sql, &old);
        assert!(Arc::ptr_eq(&a, &c.get(sql, &old)), "cached for the same map");
        let b = c.get(sql, &new);
        assert!(!Arc::ptr_eq(&a, &b), "another map's shape is not used");
        assert!(!Arc::ptr_eq(&b, &c.get(sql, &old)), "nor the other way round");
    }

    #[test]
    fn set_statements_keep_their_values() {
        let c = AnalysisCache::new(NonZeroUsize::new(10).unwrap());
        let f = HashSet::new();
        let a = c.get("SET search_path TO a", &f, &Limits::default());
        let b = c.get("SET search_path TO b", &f, &Limits::default());
        assert_ne!(a.set_ops, b.set_ops);
        let a2 = c.get("SET work_mem = '64MB'", &f, &Limits::default());
        let b2 = c.get("SET work_mem = '1MB'", &f, &Limits::default());
        assert_ne!(a2.set_ops, b2.set_ops);
    }
}
