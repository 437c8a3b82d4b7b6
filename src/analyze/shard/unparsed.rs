//! Texts sqlparser does not take: sent as they are to the default shard, where the server
//! answers them (most often with its own syntax error), unless they are queries or writes that
//! name a sharded table, whose rows may be on every shard.

use super::*;

/// A text sqlparser does not take goes as it is to the default shard (the server answers it,
/// most often with its own syntax error), unless it is a query or a write that names a sharded
/// table: its rows may be on every shard, so it is refused rather than answered from one.
pub(super) fn shape(sql: &str, map: &ShardMap) -> Shape {
    use sqlparser::tokenizer::{Token, Tokenizer};
    // The words of the text: by the tokenizer, or, when even it fails (an escape it refuses),
    // cut at every character that is not part of a name (more words than there are, never fewer).
    let words: Vec<String> = match Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .filter_map(|t| match t {
                Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
                Token::Word(w) => Some(w.value.to_lowercase()),
                _ => None,
            })
            .collect(),
        Err(_) => sql
            .to_lowercase()
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let dml = words.first().is_some_and(|w| {
        matches!(
            w.to_ascii_lowercase().as_str(),
            "select" | "with" | "insert" | "update" | "delete" | "table" | "values" | "merge"
        )
    });
    let named = words
        .iter()
        .skip(1)
        .find(|n| matches!(map.table(n), Some(TableRule::Sharded { .. })))
        .cloned();
    match named {
        Some(t) if dml => Shape::Refuse(format!(
            "shardwire could not parse this statement, so it cannot tell which shards hold the rows of {t}: write it \
             in a form the parser takes (for one, E'' strings with \\x escapes of bytes above 127 are not), or run it \
             on a shard directly"
        )),
        _ => Shape::Unparsed,
    }
}
