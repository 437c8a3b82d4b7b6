//! DDL sent to every shard. MySQL and MariaDB commit DDL as it runs, so no transaction can make
//! it all-or-nothing: shards run it one after the other, and when one fails the client learns
//! which shards applied it and which did not (the statement is usually idempotent with
//! `IF [NOT] EXISTS`, so running it again finishes the job).

use bytes::BytesMut;

use super::ClientError;
use super::session::Session;
use crate::protocol::mysql::response::Kind;
use crate::protocol::mysql::{code, ok};
use crate::shardmap::ShardId;

impl Session {
    pub async fn broadcast(&mut self, shards: &[ShardId], payload: &BytesMut) -> Result<(), ClientError> {
        // Under autocommit = 0 with nothing run yet there is no transaction to commit: DDL,
        // which commits at once on each shard, is as on one server.
        if self.held.is_some() || self.begin.is_some() || self.in_tx() {
            self.error(
                code::NOT_SUPPORTED,
                "0A000",
                "DDL for every shard inside a transaction: MySQL commits DDL at once on each shard; COMMIT first",
            );
            return Ok(());
        }
        let names = &self.rt.config.map.shards;
        let mut done: Vec<String> = Vec::new();
        let mut warnings = 0u16;
        for &s in shards {
            let node = self.rt.mysql[s].primary.clone();
            let result = async {
                let mut conn = node.checkout().await?;
                super::sync::sync(&mut conn, &self.state, self.sig).await?;
                conn.run(payload, Kind::Query).await
            }
            .await;
            match result {
                Ok(r) => {
                    warnings = warnings.saturating_add(r.warnings);
                    done.push(names[s].clone());
                }
                Err(e) => {
                    let applied = if done.is_empty() {
                        "no shard applied it".to_owned()
                    } else {
                        format!(
                            "shards {} applied it (DDL commits at once), the others did not",
                            done.join(", ")
                        )
                    };
                    let (c, state, msg) = match &e {
                        crate::backend::mysql::MyError::Server { code, state, message } => {
                            (*code, state.clone(), message.clone())
                        }
                        other => (code::SERVER_LOST, "HY000".to_owned(), other.to_string()),
                    };
                    self.error(c, &state, &format!("on shard {}: {msg}; {applied}", names[s]));
                    return Ok(());
                }
            }
        }
        self.shared.forget_columns();
        let mut seq = self.client.reply_seq;
        let p = ok(0, 0, self.status(), warnings, "");
        self.client.put(&mut seq, &p);
        Ok(())
    }
}
