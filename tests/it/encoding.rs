//! Clients that speak another encoding than UTF-8 (`client_encoding` LATIN9, EUC_JP, ...): their
//! statement texts are read in that encoding, forwarded as they came, and written back in it when
//! shardwire prepares or rewrites them; text that is not valid in the client's encoding gets the
//! server's error (22021) and the session goes on.

use bytes::{BufMut, BytesMut};

use crate::bad_input::{Raw, message, startup_with};
use crate::harness::{Proxy, shared};

async fn latin9(proxy: &Proxy) -> Raw {
    let mut s = Raw::connect(proxy).await;
    s.send(&startup_with("trusted", &[("client_encoding", "LATIN9")])).await;
    let m = s.messages_until(b"Z").await;
    assert_eq!(m.last().map(|(t, _)| *t), Some(b'Z'), "login: {m:?}");
    s
}

/// The cells of the DataRows among `messages`.
fn cells(messages: &[(u8, Vec<u8>)]) -> Vec<Vec<Vec<u8>>> {
    messages
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, body)| {
            let n = i16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2;
            (0..n)
                .map(|_| {
                    let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
                    at += 4;
                    let c = body[at..at + len].to_vec();
                    at += len;
                    c
                })
                .collect()
        })
        .collect()
}

fn parse(name: &str, sql: &[u8]) -> BytesMut {
    let mut p = BytesMut::new();
    p.put_slice(name.as_bytes());
    p.put_u8(0);
    p.put_slice(sql);
    p.put_u8(0);
    p.put_i16(0);
    message(b'P', &p)
}

fn bind_execute(statement: &str) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_slice(statement.as_bytes());
    b.put_u8(0);
    b.put_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = message(b'B', &b);
    out.extend_from_slice(&message(b'E', &[0, 0, 0, 0, 0]));
    out
}

#[tokio::test]
async fn latin9_texts_run_in_both_protocols() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    let mut s = latin9(&proxy).await;
    // 'été €' in LATIN9: 0xe9 t 0xe9 space 0xa4.
    let q = b"SELECT '\xe9t\xe9 \xa4' AS v, length('\xe9t\xe9 \xa4') AS n";
    s.send(&message(b'Q', &[&q[..], b"\0"].concat())).await;
    let m = s.messages_until(b"Z").await;
    assert_eq!(
        cells(&m),
        vec![vec![b"\xe9t\xe9 \xa4".to_vec(), b"5".to_vec()]],
        "{m:?}"
    );
    // A named statement, then the same on whatever backend connection the next Bind gets: the
    // proxy prepares it there itself, from the text it decoded, encoded back to LATIN9.
    for round in 0..3 {
        let mut batch = BytesMut::new();
        if round == 0 {
            batch.extend_from_slice(&parse("enc", q));
        }
        batch.extend_from_slice(&bind_execute("enc"));
        batch.extend_from_slice(&message(b'S', b""));
        s.send(&batch).await;
        let m = s.messages_until(b"Z").await;
        assert_eq!(
            cells(&m),
            vec![vec![b"\xe9t\xe9 \xa4".to_vec(), b"5".to_vec()]],
            "round {round}: {m:?}"
        );
    }

    // A UTF8 client's invalid bytes: the server's error, and the session goes on.
    let mut u = crate::bad_input::logged_in(&proxy).await;
    u.send(&message(b'Q', b"SELECT '\xe9'\0")).await;
    let (tags, code) = u.read_until(b"Z").await;
    assert_eq!((tags, code.as_deref()), (vec![b'E', b'Z'], Some("22021")));
    u.send(&message(b'Q', b"SELECT 1\0")).await;
    let (tags, code) = u.read_until(b"Z").await;
    assert_eq!((tags, code), (vec![b'T', b'D', b'C', b'Z'], None));
}

/// A statement rewritten for several shards (a hidden ORDER BY column added) carries the client's
/// non-ASCII literal to every shard in the client's encoding.
#[tokio::test]
async fn a_rewritten_scatter_keeps_the_client_s_encoding() {
    let (topo, _guard) = crate::shards::sharded().await;
    let proxy = Proxy::start(&topo.config(crate::shards::MAP)).await;
    let c = proxy.app().await;
    c.batch_execute("DROP TABLE IF EXISTS users").await.unwrap();
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, country text, score int)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO users (id, name) VALUES (1, 'été'), (2, 'été'), (3, 'x'), (4, 'été'), (5, 'été')")
        .await
        .unwrap();
    let mut s = latin9(&proxy).await;
    s.send(&message(
        b'Q',
        b"SELECT name FROM users WHERE name = '\xe9t\xe9' ORDER BY id DESC\0",
    ))
    .await;
    let m = s.messages_until(b"Z").await;
    assert_eq!(cells(&m), vec![vec![b"\xe9t\xe9".to_vec()]; 4], "{m:?}");
    c.batch_execute("DROP TABLE users").await.unwrap();
}
