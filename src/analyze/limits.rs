//! Bounds on what one statement text may cost to analyze, checked before it is parsed.
//!
//! sqlparser guards its own recursion (nesting of parentheses and subqueries), but it builds
//! operator chains (`1+1+...`, `a = 0 OR a = 1 OR ...`, `x::t::t...`, `SELECT .. UNION SELECT ..`)
//! in a loop, into a tree as deep as the chain is long. Walking, printing or dropping that tree
//! recurses once per level, so a long enough chain overflows the stack and aborts the process.
//! [`check`] bounds the depth before any tree exists, with one pass over the bytes and no
//! allocation beyond one counter per open parenthesis.
//!
//! The bound: tokens (words, literals, operator characters) of one list element add up, and so
//! do those of every element that encloses it; a comma starts a new element at its level (list
//! elements are siblings in the tree, not a chain), set operations never do (they chain across
//! the commas of their select lists). Every level of the tree a chain builds consumes at least
//! one token, so the tree is never deeper than this count times a small constant.

use super::fingerprint::{dollar_end, literal_end, quoted_end};

/// Largest [`Limits::max_depth`]. A tree is never deeper than this count, and one level of a
/// walk over it (clone, print, visit, drop) takes up to about 5.5 KiB of stack in a debug build,
/// far less optimised: 4,000 levels fit [`STACK_SIZE`] three times over. `deep_tests` checks it.
pub const MAX_DEPTH: usize = 4_000;

/// Stack of every thread that analyzes statements or handles their trees: shardwire's runtime
/// builds its threads with it (`serve::build_runtime`). Untouched stack costs address space only.
pub const STACK_SIZE: usize = 64 << 20;

/// What a statement text may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest text, in bytes.
    pub max_bytes: usize,
    /// Deepest expression, counted as the module doc says; at most [`MAX_DEPTH`].
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: 8 << 20,
            max_depth: MAX_DEPTH,
        }
    }
}

/// Why a text was not analyzed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TooComplex {
    /// Longer than [`Limits::max_bytes`].
    #[error("statement is too long: {len} bytes, the limit is {max} (server.max_statement_size)")]
    Long {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An expression deeper than [`Limits::max_depth`].
    #[error(
        "statement is too complex: an expression or operator chain of more than {max} terms \
         (server.max_expression_depth); use IN (...) or = ANY($1) for long lists of values"
    )]
    Deep {
        /// The limit.
        max: usize,
    },
}

/// Checks `sql` against `limits` without parsing it.
pub fn check(sql: &str, limits: &Limits) -> Result<(), TooComplex> {
    if sql.len() > limits.max_bytes {
        return Err(TooComplex::Long {
            len: sql.len(),
            max: limits.max_bytes,
        });
    }
    let max = limits.max_depth.min(MAX_DEPTH);
    let mut depth = Depth::default();
    let b = sql.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        i = match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i + 1,
            b'-' if next == Some(b'-') => b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p),
            b'/' if next == Some(b'*') => sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2),
            b'(' | b'[' => {
                depth.open();
                i + 1
            }
            b')' | b']' => {
                depth.close();
                i + 1
            }
            b',' => {
                depth.comma();
                i + 1
            }
            b';' => {
                depth = Depth::default();
                i + 1
            }
            b'\'' => {
                depth.token();
                literal_end(b, i).max(i + 1)
            }
            b'"' => {
                depth.token();
                quoted_end(b, i, b'"').max(i + 1)
            }
            b'$' if i == 0 || !word(b[i - 1]) => {
                depth.token();
                match dollar_end(sql, i) {
                    Some(end) => end.max(i + 1),
                    None => skip_word(b, i + 1, word),
                }
            }
            c if word(c) => {
                let end = skip_word(b, i, word);
                let w = &b[i..end];
                if ["union", "intersect", "except"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k.as_bytes()))
                {
                    depth.set_operation();
                } else {
                    depth.token();
                }
                // A prefixed literal (E'..', B'..', X'..', N'..') is one token with its quote.
                if end - i == 1 && b.get(end) == Some(&b'\'') && b"eEbBxXnN".contains(&c) {
                    literal_end(b, end).max(end + 1)
                } else {
                    end
                }
            }
            _ => {
                depth.token();
                i + 1
            }
        };
        if depth.max > max {
            return Err(TooComplex::Deep { max });
        }
    }
    Ok(())
}

fn skip_word(b: &[u8], mut i: usize, word: impl Fn(u8) -> bool) -> usize {
    while i < b.len() && word(b[i]) {
        i += 1;
    }
    i
}

/// The running depth bound. `cur` counts the tokens of the current list element, `chain` the set
/// operations at this level (not reset by commas); `outer` is the sum of both over every open
/// level, each open parenthesis counting one more.
#[derive(Default)]
struct Depth {
    cur: usize,
    chain: usize,
    outer: usize,
    open: Vec<(usize, usize)>,
    max: usize,
}

impl Depth {
    fn note(&mut self) {
        self.max = self.max.max(self.outer + self.cur + self.chain);
    }

    fn token(&mut self) {
        self.cur += 1;
        self.note();
    }

    fn set_operation(&mut self) {
        self.chain += 1;
        self.note();
    }

    fn comma(&mut self) {
        self.cur = 0;
    }

    fn open(&mut self) {
        self.cur += 1;
        self.outer += self.cur + self.chain;
        self.open.push((self.cur, self.chain));
        self.cur = 0;
        self.chain = 0;
        self.note();
    }

    fn close(&mut self) {
        // An unbalanced `)` is a syntax error the parser reports; here it only ends nothing.
        if let Some((cur, chain)) = self.open.pop() {
            self.outer -= cur + chain;
            self.cur = cur;
            self.chain = chain;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(sql: &str, max: usize) -> bool {
        check(
            sql,
            &Limits {
                max_bytes: usize::MAX,
                max_depth: max,
            },
        )
        .is_ok()
    }

    #[test]
    fn chains_count_and_lists_do_not() {
        let chain = format!("SELECT 1{}", "+1".repeat(450));
        assert!(!depth_ok(&chain, 800));
        assert!(depth_ok(&chain, 1000));
        let list = format!("SELECT * FROM t WHERE id IN ({})", vec!["1"; 100_000].join(","));
        assert!(depth_ok(&list, 20));
        let values = format!("INSERT INTO t VALUES {}", vec!["(1, 'a', -2)"; 50_000].join(","));
        assert!(depth_ok(&values, 20));
        let ors = (0..300).map(|i| format!("a = {i}")).collect::<Vec<_>>().join(" OR ");
        assert!(!depth_ok(&format!("SELECT 1 FROM t WHERE ({ors})"), 1000));
        let ors = (0..200).map(|i| format!("a = {i}")).collect::<Vec<_>>().join(" OR ");
        assert!(depth_ok(&format!("SELECT 1 FROM t WHERE ({ors})"), 1000));
    }

    #[test]
    fn set_operations_chain_across_commas() {
        let unions = vec!["SELECT 1, 2"; 800].join(" UNION ");
        assert!(!depth_ok(&unions, 700));
        assert!(depth_ok(&unions, 810));
    }

    #[test]
    fn nesting_adds_up() {
        let nested = format!("SELECT {}1{}", "(1+".repeat(300), ")".repeat(300));
        assert!(!depth_ok(&nested, 500));
        let flat_parens = format!("SELECT {}", vec!["(1+1)"; 1000].join(", "));
        assert!(depth_ok(&flat_parens, 10));
    }

    #[test]
    fn strings_comments_and_quotes_are_one_token_or_none() {
        let s = format!(
            "SELECT '{}' /* {} */ -- {}\n, \"{}\", $q${}$q$",
            "+ ".repeat(5000),
            "+ ".repeat(5000),
            "+".repeat(5000),
            "+".repeat(5000),
            "+ ".repeat(5000)
        );
        assert!(depth_ok(&s, 10));
        assert!(depth_ok(&format!("SELECT E'{}'", "\\' + ".repeat(3000)), 10));
    }

    #[test]
    fn size_is_bounded() {
        let l = Limits {
            max_bytes: 10,
            max_depth: 100,
        };
        assert_eq!(check("SELECT 1", &l), Ok(()));
        assert_eq!(check("SELECT 12345", &l), Err(TooComplex::Long { len: 12, max: 10 }));
    }

    #[test]
    fn deep_open_parentheses_stop_early() {
        let s = "(".repeat(5_000_000);
        assert_eq!(check(&s, &Limits::default()), Err(TooComplex::Deep { max: MAX_DEPTH }));
    }
}
