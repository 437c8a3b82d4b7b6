//! A bounded cache of analyses keyed by statement text, so a repeated statement is parsed once.
//! Prepared statements are analyzed once at Parse and keep their facts themselves.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::{Facts, analyze};

/// Shared by all sessions. The lock is a std Mutex held only for a map lookup or insert, never
/// across an await or a parse.
pub struct AnalysisCache {
    entries: Mutex<LruCache<String, Arc<Facts>>>,
}

/// Texts longer than this are analyzed every time: long texts are rarely repeated verbatim and
/// would crowd the cache.
const MAX_CACHED_LEN: usize = 16 * 1024;

impl AnalysisCache {
    /// A cache holding at most `capacity` texts.
    pub fn new(capacity: NonZeroUsize) -> AnalysisCache {
        AnalysisCache {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The facts of `sql`, from the cache or freshly analyzed.
    pub fn get(&self, sql: &str, primary_functions: &HashSet<String>) -> Arc<Facts> {
        if sql.len() > MAX_CACHED_LEN {
            return Arc::new(analyze(sql, primary_functions));
        }
        if let Some(f) = self.lock().get(sql) {
            return f.clone();
        }
        let facts = Arc::new(analyze(sql, primary_functions));
        self.lock().put(sql.to_owned(), facts.clone());
        facts
    }

    /// Forgets everything, e.g. when the list of primary functions changes on reload.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No cached texts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Arc<Facts>>> {
        // A poisoned lock only means another thread panicked mid-lookup; the map is still valid.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_and_bounds() {
        let c = AnalysisCache::new(NonZeroUsize::new(2).unwrap());
        let f = HashSet::new();
        let a = c.get("SELECT 1", &f);
        let b = c.get("SELECT 1", &f);
        assert!(Arc::ptr_eq(&a, &b));
        c.get("SELECT 2", &f);
        c.get("SELECT 3", &f);
        assert_eq!(c.len(), 2);
    }
}
