//! A query string of several statements (`BEGIN; UPDATE ...; UPDATE ...; COMMIT`), cut into
//! the statements' own texts so that each can be routed to its shard. The cuts are the
//! semicolons sqlparser's tokenizer finds (so none inside quotes, dollar quotes or comments), and
//! each piece must parse as exactly one statement: a text the cut would change (a function body
//! in `BEGIN ATOMIC ... END`) gives `None` and is not run piece by piece.

use sqlparser::ast::{CopyTarget, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The statements of a query string, in order, each its exact text without the semicolon.
#[derive(Debug, PartialEq, Eq)]
pub struct Script {
    /// Statement texts; empty statements (`;;`) are left out, as the server skips them.
    pub statements: Vec<String>,
    /// A `COPY ... FROM STDIN` is among them: it needs the client's data mid-string.
    pub copy_in: bool,
}

/// Cuts `sql` into its statements; `None` when it does not tokenize or a piece is not exactly one
/// statement.
pub fn split(sql: &str) -> Option<Script> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize_with_location().ok()?;
    // Line starts in bytes: the tokenizer gives 1-based lines and columns counted in characters.
    let mut line_starts = vec![0usize];
    line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let skip = usize::try_from(column).ok()?.checked_sub(1)?;
        match sql[start..].char_indices().nth(skip) {
            Some((i, _)) => Some(start + i),
            None => Some(sql.len()),
        }
    };
    let mut statements = Vec::new();
    let mut copy_in = false;
    let mut from = 0usize;
    let mut cuts: Vec<usize> = Vec::new();
    for t in &tokens {
        if t.token == Token::SemiColon {
            cuts.push(offset(t.span.start.line, t.span.start.column)?);
        }
    }
    cuts.push(sql.len());
    for cut in cuts {
        let piece = sql.get(from..cut)?;
        from = (cut + 1).min(sql.len());
        if piece.trim().is_empty() || only_comments(piece) {
            continue;
        }
        let parsed = Parser::parse_sql(&dialect, piece).ok()?;
        let [stmt] = &parsed[..] else { return None };
        copy_in |= matches!(
            stmt,
            Statement::Copy {
                to: false,
                target: CopyTarget::Stdin,
                ..
            }
        );
        statements.push(piece.trim().to_owned());
    }
    Some(Script { statements, copy_in })
}

/// Whether a piece holds nothing but comments (a trailing `-- done` after the last semicolon).
fn only_comments(piece: &str) -> bool {
    let dialect = PostgreSqlDialect {};
    Tokenizer::new(&dialect, piece)
        .tokenize()
        .is_ok_and(|ts| ts.iter().all(|t| matches!(t, Token::Whitespace(_) | Token::EOF)))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn statements_are_cut_at_semicolons_outside_quotes_and_comments() {
        let s = split(
            "BEGIN; UPDATE t SET a = 'x;y' WHERE id = 1 /* ; */;\n-- a; comment\nUPDATE t SET b = $$;$$ WHERE id = 2 ; COMMIT;",
        )
        .unwrap();
        assert_eq!(
            s.statements,
            [
                "BEGIN",
                "UPDATE t SET a = 'x;y' WHERE id = 1 /* ; */",
                "-- a; comment\nUPDATE t SET b = $$;$$ WHERE id = 2",
                "COMMIT"
            ]
        );
        assert!(!s.copy_in);
    }

    #[test]
    fn multibyte_text_keeps_its_offsets() {
        let s = split("INSERT INTO t VALUES ('é€'); SELECT 'ü';\nSELECT 2").unwrap();
        assert_eq!(s.statements, ["INSERT INTO t VALUES ('é€')", "SELECT 'ü'", "SELECT 2"]);
    }

    #[test]
    fn empty_statements_and_trailing_comments_are_skipped() {
        let s = split("SELECT 1;; ;SELECT 2; -- done").unwrap();
        assert_eq!(s.statements, ["SELECT 1", "SELECT 2"]);
    }

    #[test]
    fn copy_from_stdin_is_noticed() {
        assert!(split("BEGIN; COPY t FROM STDIN; COMMIT").unwrap().copy_in);
        assert!(!split("COPY t TO STDOUT; SELECT 1").unwrap().copy_in);
    }

    #[test]
    fn a_text_the_cut_would_change_is_not_split() {
        assert_eq!(split("SELECT 'unterminated; SELECT 2"), None);
        assert_eq!(split("SELECT 1; SELEC 2"), None);
    }
}
