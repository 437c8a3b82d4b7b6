//! Statements prepared on backend connections: a client's statement is prepared, under a name
//! derived from its text, on whichever connection needs it, within the connection's limit.

use super::Session;
use super::state::{Op, Stmt};
use crate::protocol::pg::messages as msg;

impl Session {
    /// Makes sure the held backend has `stmt` prepared (adding a Parse whose reply is swallowed)
    /// and returns its name there.
    pub(super) fn ensure_prepared(&mut self, stmt: &Stmt, named: bool) -> String {
        let converted = if stmt.ascii { None } else { self.converted(&stmt.query) };
        let text = converted.as_deref().unwrap_or(stmt.query.as_bytes());
        let held = self.held.as_mut().expect("called with a backend held");
        let conn = &mut held.checkout.conn;
        if named {
            let name = stmt.backend_name();
            if !conn.prepared.touch(stmt.hash) {
                make_room(held, stmt.hash);
                msg::parse_bytes(&mut held.wbuf, &name, text, &stmt.param_types);
                held.ops.push_back(Op::Inject {
                    forget: Some(stmt.hash),
                });
            }
            name
        } else {
            if conn.unnamed != Some(stmt.hash) {
                conn.unnamed = Some(stmt.hash);
                msg::parse_bytes(&mut held.wbuf, "", text, &stmt.param_types);
                held.ops.push_back(Op::Inject { forget: None });
            }
            String::new()
        }
    }
}

/// Records `hash` as prepared on the held backend, closing there first the least recently used
/// statement when the connection is at its limit.
pub(super) fn make_room(held: &mut super::Held, hash: u64) {
    if let Some(old) = held.checkout.conn.prepared.insert(hash) {
        msg::describe_or_close(&mut held.wbuf, b'C', b'S', &super::state::backend_name(old));
        held.ops.push_back(Op::Evict { hash: old });
    }
}
