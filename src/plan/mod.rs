//! Planning: statement facts + session context → where the statement runs. Pure, no I/O. With one
//! shard the plan is a role; shard routing builds on the same entry point.
#![warn(missing_docs)]

pub mod shard;

use crate::analyze::{Facts, Need, TxEffect};

/// Where a statement that starts a unit of work (a transaction or a statement outside one) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The primary.
    Primary,
    /// A replica under the lag bound, and (read-your-writes) one that has replayed `min_lsn`.
    Replica {
        /// The session's last commit position, when read-your-writes is on.
        min_lsn: Option<u64>,
    },
}

/// What routing needs to know about the session.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteContext {
    /// The session keeps session state on its backend (temporary tables, LISTEN, ...).
    pub pinned: bool,
    /// Read-your-writes position to wait for, if on and the session has written.
    pub ryw_lsn: Option<u64>,
}

/// Chooses the target for a statement when the session holds no backend.
pub fn route(facts: &Facts, ctx: &RouteContext) -> Target {
    let read = facts.need == Need::Read
        && !ctx.pinned
        && facts.pins_session.is_none()
        && !matches!(facts.tx, TxEffect::Begin { read_only: false } | TxEffect::End)
        && facts.set_ops.is_empty();
    if read {
        Target::Replica { min_lsn: ctx.ryw_lsn }
    } else {
        Target::Primary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::analyze;

    fn target(sql: &str, ctx: RouteContext) -> Target {
        let funcs = crate::analyze::DEFAULT_PRIMARY_FUNCTIONS
            .iter()
            .map(|s| s.to_string())
            .collect();
        route(&analyze(sql, &funcs), &ctx)
    }

    #[test]
    fn routes() {
        let c = RouteContext::default();
        assert_eq!(target("SELECT 1", c), Target::Replica { min_lsn: None });
        assert_eq!(target("BEGIN READ ONLY", c), Target::Replica { min_lsn: None });
        assert_eq!(target("BEGIN", c), Target::Primary);
        assert_eq!(target("COMMIT", c), Target::Primary);
        assert_eq!(target("INSERT INTO t VALUES (1)", c), Target::Primary);
        assert_eq!(target("SET search_path TO x", c), Target::Primary);
        assert_eq!(target("garbage", c), Target::Primary);
        let pinned = RouteContext { pinned: true, ..c };
        assert_eq!(target("SELECT 1", pinned), Target::Primary);
        let ryw = RouteContext { ryw_lsn: Some(42), ..c };
        assert_eq!(target("SELECT 1", ryw), Target::Replica { min_lsn: Some(42) });
    }
}
