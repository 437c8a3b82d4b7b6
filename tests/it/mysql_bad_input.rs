//! Bad input on the MySQL port: each gets an error packet where the protocol allows one (then
//! the connection closes when it cannot go on), and a client working beside it notices nothing.

use mysql_async::prelude::Queryable;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
use mysql_common::proto::{MyDeserialize, MySerialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Proxy;
use crate::mysql::{REPLICATION, config, connect, maria};

async fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = vec![0; len];
    s.read_exact(&mut p).await.ok()?;
    Some((h[3], p))
}

async fn write_packet(s: &mut TcpStream, seq: u8, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = vec![len[0], len[1], len[2], seq];
    out.extend_from_slice(payload);
    let _ = s.write_all(&out).await;
}

/// A logged-in raw connection.
async fn login(port: u16) -> TcpStream {
    login_with(port, true).await
}

/// A logged-in raw connection, asking for CLIENT_MULTI_STATEMENTS or not.
async fn login_with(port: u16, multi: bool) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (_, hello) = read_packet(&mut s).await.unwrap();
    let hs = HandshakePacket::deserialize((), &mut ParseBuf(&hello)).unwrap();
    let scramble = mysql_common::scramble::scramble_native(&hs.nonce(), b"app").unwrap();
    let mut caps = hs.capabilities() & !mysql_common::constants::CapabilityFlags::CLIENT_SSL;
    if !multi {
        caps &= !mysql_common::constants::CapabilityFlags::CLIENT_MULTI_STATEMENTS;
    }
    let r = HandshakeResponse::new(
        Some(&scramble[..]),
        (8, 0, 0),
        Some(&b"app"[..]),
        Some(&b"app"[..]),
        Some(AuthPlugin::MysqlNativePassword),
        caps,
        None,
        1 << 24,
    );
    let mut payload = Vec::new();
    r.serialize(&mut payload);
    write_packet(&mut s, 1, &payload).await;
    let (_, ok) = read_packet(&mut s).await.unwrap();
    assert_eq!(ok[0], 0, "logged in");
    s
}

fn is_err(p: &Option<(u8, Vec<u8>)>, code: u16) -> bool {
    matches!(p, Some((_, b)) if b.first() == Some(&0xFF) && u16::from_le_bytes([b[1], b[2]]) == code)
}

#[tokio::test]
async fn bad_packets_get_errors_and_disturb_no_one() {
    let _g = REPLICATION.read().await;
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let p = Proxy::start(&config(sb, "max_message_size = 65536")).await;
    let port = p.bound.mysql.unwrap().port();
    // A client working the whole time.
    let mut bystander = connect(&p).await;
    let worker = tokio::spawn(async move {
        for i in 0..200i64 {
            let v: Option<i64> = bystander.query_first(format!("SELECT {i} + 1")).await.unwrap();
            assert_eq!(v, Some(i + 1));
        }
    });

    // A handshake response that is not one.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    read_packet(&mut s).await.unwrap();
    write_packet(&mut s, 1, &[0xde, 0xad]).await;
    assert!(is_err(&read_packet(&mut s).await, 1045), "malformed login");
    assert!(read_packet(&mut s).await.is_none(), "then closed");

    // An unknown command: an error, and the connection goes on.
    let mut s = login(port).await;
    write_packet(&mut s, 0, &[0xee, 1, 2]).await;
    assert!(is_err(&read_packet(&mut s).await, 1047));
    write_packet(&mut s, 0, b"\x03SELECT 1").await;
    let (_, first) = read_packet(&mut s).await.unwrap();
    assert_eq!(first, vec![1], "one column: the session went on");
    let mut eofs = 0;
    while let Some((_, p)) = read_packet(&mut s).await {
        // The second EOF ends the result.
        if p[0] == 0xFE && p.len() < 9 {
            eofs += 1;
            if eofs == 2 {
                break;
            }
        }
    }

    // Truncated prepared-statement commands.
    write_packet(&mut s, 0, &[0x17, 1]).await;
    assert!(is_err(&read_packet(&mut s).await, 1835), "short execute");
    write_packet(&mut s, 0, &[0x17, 9, 0, 0, 0, 0, 1, 0, 0, 0]).await;
    assert!(is_err(&read_packet(&mut s).await, 1243), "unknown statement");

    // A statement nested deeper than any limit: refused before it is parsed.
    let deep = format!("\x03SELECT {}1{}", "(".repeat(20000), ")".repeat(20000));
    write_packet(&mut s, 0, deep.as_bytes()).await;
    assert!(is_err(&read_packet(&mut s).await, 1064), "too deep");

    // A command with the wrong sequence id: an error, then the connection closes.
    write_packet(&mut s, 5, b"\x03SELECT 1").await;
    assert!(is_err(&read_packet(&mut s).await, 1156));
    assert!(read_packet(&mut s).await.is_none());

    // A packet over max_message_size: refused before it is read.
    let mut s = login(port).await;
    let mut big = vec![0x03];
    big.extend(std::iter::repeat_n(b' ', 100_000));
    write_packet(&mut s, 0, &big).await;
    assert!(is_err(&read_packet(&mut s).await, 1153));

    // Several statements from a client that did not ask for them: the server's syntax error;
    // after COM_SET_OPTION (multi-statements on) they run.
    let mut s = login_with(port, false).await;
    write_packet(&mut s, 0, b"\x03SELECT 1; SELECT 2").await;
    assert!(
        is_err(&read_packet(&mut s).await, 1064),
        "multi-statements not asked for"
    );
    write_packet(&mut s, 0, &[0x1b, 0, 0]).await;
    let (_, eof) = read_packet(&mut s).await.unwrap();
    assert_eq!(eof[0], 0xFE, "COM_SET_OPTION answered");
    write_packet(&mut s, 0, b"\x03SELECT 1; SELECT 2").await;
    let (_, first) = read_packet(&mut s).await.unwrap();
    assert_eq!(first, vec![1], "now they run");
    drop(s);

    // KILL names the proxy's ids, not a server's threads: refused rather than passed on.
    let mut s = login(port).await;
    write_packet(&mut s, 0, b"\x03KILL QUERY 5").await;
    assert!(is_err(&read_packet(&mut s).await, 1235));
    drop(s);

    // A connection that closes in the middle of a packet.
    let mut s = login(port).await;
    s.write_all(&[100, 0, 0, 0, 3, b'S']).await.unwrap();
    drop(s);

    worker.await.unwrap();
    let mut after = connect(&p).await;
    let v: Option<i64> = after.query_first("SELECT 7").await.unwrap();
    assert_eq!(v, Some(7));
}

#[tokio::test]
async fn an_answer_to_a_command_over_several_frames_continues_its_sequence() {
    let _g = REPLICATION.read().await;
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let p = Proxy::start(&config(sb, "")).await;
    let mut s = login(p.bound.mysql.unwrap().port()).await;
    // 17 MiB: two frames (sequence ids 0 and 1), over the statement size limit (8 MiB), so the
    // proxy answers itself; its ERR must carry sequence id 2.
    let mut payload = b"\x03SELECT '".to_vec();
    payload.resize(17 << 20, b'a');
    payload.push(b'\'');
    let (first, rest) = payload.split_at(0xFF_FFFF);
    write_packet(&mut s, 0, first).await;
    write_packet(&mut s, 1, rest).await;
    let answer = read_packet(&mut s).await;
    assert!(
        matches!(&answer, Some((2, b)) if b[0] == 0xFF),
        "{:?}",
        answer.map(|(q, b)| (q, b.len()))
    );
    write_packet(&mut s, 0, b"\x03SELECT 1").await;
    let (seq, first) = read_packet(&mut s).await.unwrap();
    assert_eq!((seq, first), (1, vec![1]), "the next command starts over at 1");
}
