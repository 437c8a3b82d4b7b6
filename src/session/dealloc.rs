//! `DEALLOCATE` and `DISCARD ALL` under pooling: the client's protocol-level statements live in
//! the session under the client's names and on the servers under shardwire's names, shared by
//! every client of a connection, so both sides are kept in step here.

use super::{Flow, Session};
use crate::analyze::Facts;
use crate::protocol::pg::messages as msg;

impl Session {
    /// `DEALLOCATE name` of a statement the client prepared through the protocol is answered here:
    /// on the server its statement has a shardwire name and may serve other clients too.
    /// `DEALLOCATE ALL` / `DISCARD ALL` forget the client's statements and go to the server.
    pub(super) fn on_dealloc(&mut self, facts: &Facts) -> Option<Flow> {
        match facts.dealloc.as_ref()? {
            crate::analyze::Dealloc::All => {
                self.stmts.clear();
                self.unnamed = None;
                None
            }
            crate::analyze::Dealloc::Named(name) => {
                self.stmts.remove(name)?;
                let status = match &self.held {
                    Some(h) if h.in_transaction() => b'T',
                    _ => self.local_tx_status(),
                };
                let mut b = bytes::BytesMut::new();
                msg::command_complete(&mut b, "DEALLOCATE");
                msg::ready_for_query(&mut b, status);
                self.respond_synth(b.freeze());
                Some(Flow::Continue)
            }
        }
    }
}
