//! Malformed, oversized, unknown and out-of-order input: an error to that client, then (where the
//! protocol cannot recover) its connection closes; every other client carries on.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Proxy, shared};

fn startup(user: &str) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(196_608);
    for (k, v) in [("user", user), ("database", "app")] {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out
}

fn message(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
    out
}

/// A raw client connection with its own read buffer, so replies that arrive together are kept.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(proxy: &Proxy) -> Raw {
        Raw {
            s: TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Reads messages until one of `until` arrives (or the connection closes, recorded as tag 0);
    /// returns their tags and the first error's SQLSTATE.
    async fn read_until(&mut self, until: &[u8]) -> (Vec<u8>, Option<String>) {
        let mut tags = Vec::new();
        let mut code = None;
        loop {
            while self.buf.len() >= 5 {
                let buf = &self.buf;
                let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < len + 1 {
                    break;
                }
                let m = self.buf.split_to(len + 1);
                tags.push(m[0]);
                if m[0] == b'E' && code.is_none() {
                    code = error_code(&m[5..]);
                }
                if until.contains(&m[0]) {
                    return (tags, code);
                }
            }
            let n = match tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf)).await {
                Ok(r) => r.unwrap_or(0),
                Err(_) => panic!("no answer in time; got {tags:?} so far"),
            };
            if n == 0 {
                tags.push(0);
                return (tags, code);
            }
        }
    }

    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn error_code(mut fields: &[u8]) -> Option<String> {
    while let [field, rest @ ..] = fields {
        if *field == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0)?;
        if *field == b'C' {
            return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
        fields = &rest[end + 1..];
    }
    None
}

async fn logged_in(proxy: &Proxy) -> Raw {
    let mut s = Raw::connect(proxy).await;
    s.send(&startup("trusted")).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(tags.last(), Some(&b'Z'), "login: {tags:?} {code:?}");
    s
}

#[tokio::test]
async fn bad_input_gets_an_error_and_disturbs_no_one_else() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    let bystander = proxy.app().await;
    let check_bystander = || async {
        assert_eq!(
            bystander
                .query_one("SELECT 41 + 1", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            42
        )
    };

    // A startup packet with an impossible length.
    let mut s = Raw::connect(&proxy).await;
    s.send(&[0, 0, 0, 3, 1, 2, 3, 4]).await;
    let (tags, code) = s.read_until(b"").await;
    assert_eq!(
        (tags.first(), code.as_deref()),
        (Some(&b'E'), Some("08P01")),
        "{tags:?}"
    );
    check_bystander().await;

    // An unknown protocol version.
    let mut s = Raw::connect(&proxy).await;
    s.send(&[0, 0, 0, 8, 0, 9, 0, 0]).await;
    let (_, code) = s.read_until(b"").await;
    assert_eq!(code.as_deref(), Some("08P01"));

    // Random bytes as a startup packet.
    let mut s = Raw::connect(&proxy).await;
    s.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (tags, _) = s.read_until(b"").await;
    assert!(tags.contains(&0), "closed: {tags:?}");

    // An unknown message type after login.
    let mut s = logged_in(&proxy).await;
    s.send(&message(b'y', b"hello")).await;
    let (tags, code) = s.read_until(b"").await;
    assert_eq!(code.as_deref(), Some("08P01"), "{tags:?}");
    assert!(tags.contains(&0));

    // A message longer than the limit (only its header is sent).
    let mut s = logged_in(&proxy).await;
    let mut big = BytesMut::new();
    big.put_u8(b'Q');
    big.put_i32(200 << 20);
    s.send(&big).await;
    let (_, code) = s.read_until(b"").await;
    assert_eq!(code.as_deref(), Some("08P01"));

    // A length below the minimum.
    let mut s = logged_in(&proxy).await;
    s.send(&[b'Q', 0, 0, 0, 2]).await;
    let (_, code) = s.read_until(b"").await;
    assert_eq!(code.as_deref(), Some("08P01"));

    // A malformed Parse (parameter count does not match the body).
    let mut s = logged_in(&proxy).await;
    s.send(&message(b'P', b"\0SELECT 1\0\0\x05")).await;
    let (_, code) = s.read_until(b"").await;
    assert_eq!(code.as_deref(), Some("08P01"));

    // A truncated message and then the client vanishes.
    let mut s = logged_in(&proxy).await;
    s.send(&[b'Q', 0, 0, 0, 100, b'S', b'E']).await;
    drop(s);

    // A password message out of order.
    let mut s = logged_in(&proxy).await;
    s.send(&message(b'p', b"secret\0")).await;
    let (_, code) = s.read_until(b"").await;
    assert_eq!(code.as_deref(), Some("08P01"));
    check_bystander().await;
    assert_eq!(
        proxy
            .app()
            .await
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1,
        "new clients still served"
    );
}

#[tokio::test]
async fn recoverable_extended_protocol_errors_keep_the_connection() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    let mut s = logged_in(&proxy).await;
    // Bind to a statement that does not exist, then more work before Sync: all skipped.
    let mut batch = message(b'B', b"\0nope\0\0\0\0\0\0\0");
    batch.extend_from_slice(&message(b'E', b"\0\0\0\0\0"));
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(code.as_deref(), Some("26000"), "{tags:?}");
    assert_eq!(tags, vec![b'E', b'Z']);
    // Execute of a portal that does not exist.
    let mut batch = message(b'E', b"ghost\0\0\0\0\0");
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (_, code) = s.read_until(b"Z").await;
    assert_eq!(code.as_deref(), Some("34000"));
    // Parse the same name twice.
    let mut batch = message(b'P', b"dup\0SELECT 1\0\0\0");
    batch.extend_from_slice(&message(b'P', b"dup\0SELECT 2\0\0\0"));
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(code.as_deref(), Some("42P05"));
    assert_eq!(tags, vec![b'1', b'E', b'Z']);
    // A Parse the server rejects does not create the statement.
    let mut batch = message(b'P', b"bad\0SELEC nonsense\0\0\0");
    batch.extend_from_slice(&message(b'S', b""));
    batch.extend_from_slice(&message(b'B', b"\0bad\0\0\0\0\0\0\0"));
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (_, code) = s.read_until(b"Z").await;
    assert_eq!(code.as_deref(), Some("42601"));
    let (_, code) = s.read_until(b"Z").await;
    assert_eq!(code.as_deref(), Some("26000"));
    // The connection still works: a simple query, then the good statement through Bind/Execute.
    s.send(&message(b'Q', b"SELECT 1\0")).await;
    let (tags, _) = s.read_until(b"Z").await;
    assert_eq!(tags, vec![b'T', b'D', b'C', b'Z']);
    let mut batch = message(b'B', b"\0dup\0\0\0\0\0\0\0");
    batch.extend_from_slice(&message(b'E', b"\0\0\0\0\0"));
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!((tags, code), (vec![b'2', b'D', b'C', b'Z'], None));
    // Close, then Sync with no backend held: answered by the proxy in order.
    let mut batch = message(b'C', b"Sdup\0");
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, _) = s.read_until(b"Z").await;
    assert_eq!(tags, vec![b'3', b'Z']);
    s.send(&message(b'X', b"")).await;
    assert!(s.closed().await);
}

/// Parse, Bind and Execute of one statement (unnamed), without Sync.
fn extended(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let mut p = BytesMut::new();
    p.put_u8(0);
    p.put_slice(sql.as_bytes());
    p.put_u8(0);
    p.put_i16(0);
    out.extend_from_slice(&message(b'P', &p));
    out.extend_from_slice(&message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend_from_slice(&message(b'E', &[0, 0, 0, 0, 0]));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_reads_then_writes_moves_to_the_primary() {
    let topo = shared();
    let t = crate::harness::table("pipe");
    topo.primary()
        .await
        .batch_execute(&format!("CREATE TABLE {t} (v int)"))
        .await
        .unwrap();
    crate::harness::replica_caught_up(topo).await;
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let mut s = logged_in(&proxy).await;
    let mut batch = extended("SELECT pg_is_in_recovery()");
    batch.extend_from_slice(&extended(&format!("INSERT INTO {t} VALUES (1)")));
    batch.extend_from_slice(&extended("SELECT 2"));
    batch.extend_from_slice(&message(b'S', &[]));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(code, None, "{tags:?}");
    assert_eq!(tags, b"12DC12C12DCZ".to_vec(), "every answer once, in order");
    let n: i64 = topo
        .primary()
        .await
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the write ran on the primary");
    // An error before the switch skips the rest of the pipeline, as PostgreSQL would.
    let mut batch = extended("SELECT 1/0");
    batch.extend_from_slice(&extended(&format!("INSERT INTO {t} VALUES (2)")));
    batch.extend_from_slice(&message(b'S', &[]));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(code.as_deref(), Some("22012"), "{tags:?}");
    assert_eq!(tags.last(), Some(&b'Z'));
    let n: i64 = topo
        .primary()
        .await
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the INSERT after the error did not run");
    // The connection is still good.
    s.send(&extended("SELECT 3")).await;
    s.send(&message(b'S', &[])).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!((tags, code), (b"12DCZ".to_vec(), None));
}
