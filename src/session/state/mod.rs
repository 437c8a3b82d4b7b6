//! Per-client state that must survive moving between backend connections: session parameters
//! (`vars`), prepared statements and portals (`stmt`), and the queue of responses expected from
//! the backend in use (`ops`).

mod ops;
mod stmt;
mod vars;

pub use ops::{ExtKind, Op, Ops};
pub use stmt::{Portals, Stmt, backend_name};
pub use vars::{SessionVars, canonical_encoding, parse_options, quote_ident, quote_literal};
