//! INSERT without a column list into a sharded table: the table's columns are read from the
//! default shard's catalog (every shard has the same tables), cached in `Shared::columns` until
//! DDL through shardwire or a reload, and named in the statement so it can be routed by its key.

use std::sync::Arc;

use super::Session;
use crate::backend::leg::Leg;
use crate::plan::Target;
use crate::protocol::pg::sqlstate::SqlState;

impl Session {
    /// The cached columns of `table`, if read before.
    pub(super) fn cached_columns(&self, table: &str) -> Option<Arc<Vec<String>>> {
        self.shared
            .columns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.columns_key(table))
            .cloned()
    }

    /// The cache key: the name as written resolves through the session's `search_path`, so
    /// sessions with other settings have entries of their own.
    fn columns_key(&self, table: &str) -> String {
        format!("{:016x}/{table}", self.vars.sig())
    }

    /// Reads the columns of `table` (as the statement names it, resolved with the client's
    /// settings, `search_path` included) into the cache. `written`: only those `COPY table TO`
    /// writes (generated columns left out), cached apart.
    pub(super) async fn load_columns(
        &self,
        table: &str,
        written: bool,
    ) -> Result<Arc<Vec<String>>, (SqlState, String)> {
        let key = if written {
            format!("copy {table}")
        } else {
            table.to_owned()
        };
        if let Some(c) = self.cached_columns(&key) {
            return Ok(c);
        }
        let co = self.checkout_on(Target::Primary, self.default_shard()).await?;
        let mut leg = Leg { co, replay: false };
        let sig = self.vars.sig();
        if leg.co.conn.vars_sig != sig {
            let replay = self.vars.replay_sql(leg.co.conn.vars_sig);
            if leg.simple(&replay).await != Some(None) {
                leg.mark_broken();
                return Err((
                    SqlState::CONNECTION_FAILURE,
                    "could not prepare the catalog lookup".into(),
                ));
            }
            leg.co.conn.vars_sig = sig;
        }
        leg.co.conn.unnamed = None;
        let sql = format!(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass({}) AND attnum > 0 \
             AND NOT attisdropped{} ORDER BY attnum",
            super::state::quote_literal(table),
            if written { " AND attgenerated = ''" } else { "" }
        );
        let columns = leg.rows(&sql).await.map_err(|m| {
            (
                SqlState::CONNECTION_FAILURE,
                format!("reading the columns of {table}: {m}"),
            )
        })?;
        if columns.is_empty() {
            return Err((
                SqlState::UNDEFINED_TABLE,
                format!("relation \"{table}\" does not exist"),
            ));
        }
        let columns = Arc::new(columns);
        self.shared
            .columns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.columns_key(&key), columns.clone());
        Ok(columns)
    }
}
