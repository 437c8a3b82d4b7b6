//! The MySQL client/server protocol, bytes ⇄ packets, no sockets: framing (3-byte length,
//! sequence id, 16 MiB continuation), length-encoded values, the packets the proxy itself sends
//! (OK, ERR, EOF, column definitions, text rows), the handshake and password checks
//! ([`auth`]) and where a server's response to a command ends ([`response`]).
//!
//! Handshake and handshake-response packets and the password scrambles are mysql_common's. The
//! small reply packets are written here: mysql_common's OK packet has no public constructor, and
//! its column definition builder would cost an allocation per field for what is a few byte
//! copies on the merge path.

pub mod auth;
pub mod execute;
pub mod response;

use bytes::{Buf, BufMut, BytesMut};

pub use mysql_common::constants::{CapabilityFlags, ColumnType, StatusFlags};

/// Largest payload of one frame; a packet this long or longer continues in the next frame.
pub const MAX_FRAME: usize = 0xFF_FFFF;

/// Command bytes (the first byte of a client's packet).
pub mod cmd {
    /// Close the connection.
    pub const QUIT: u8 = 0x01;
    /// Change the default database.
    pub const INIT_DB: u8 = 0x02;
    /// A text query.
    pub const QUERY: u8 = 0x03;
    /// Column list of a table (deprecated; the mariadb client's completion uses it).
    pub const FIELD_LIST: u8 = 0x04;
    /// Server statistics string.
    pub const STATISTICS: u8 = 0x09;
    /// Liveness.
    pub const PING: u8 = 0x0e;
    /// Log in again as another user.
    pub const CHANGE_USER: u8 = 0x11;
    /// Prepare a statement.
    pub const STMT_PREPARE: u8 = 0x16;
    /// Execute a prepared statement.
    pub const STMT_EXECUTE: u8 = 0x17;
    /// A chunk of a parameter's value.
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    /// Forget a prepared statement.
    pub const STMT_CLOSE: u8 = 0x19;
    /// Drop a statement's long data.
    pub const STMT_RESET: u8 = 0x1a;
    /// Set a connection option (multi-statements on/off).
    pub const SET_OPTION: u8 = 0x1b;
    /// Reset the session's state without logging in again.
    pub const RESET_CONNECTION: u8 = 0x1f;
}

/// Error codes the proxy answers with.
pub mod code {
    /// ER_ACCESS_DENIED_ERROR.
    pub const ACCESS_DENIED: u16 = 1045;
    /// ER_BAD_DB_ERROR.
    pub const BAD_DB: u16 = 1049;
    /// ER_UNKNOWN_COM_ERROR.
    pub const UNKNOWN_COMMAND: u16 = 1047;
    /// ER_NET_PACKET_TOO_LARGE.
    pub const PACKET_TOO_LARGE: u16 = 1153;
    /// ER_NET_PACKETS_OUT_OF_ORDER.
    pub const OUT_OF_ORDER: u16 = 1156;
    /// ER_NOT_SUPPORTED_YET: what cannot be done correctly across shards.
    pub const NOT_SUPPORTED: u16 = 1235;
    /// ER_UNKNOWN_STMT_HANDLER.
    pub const UNKNOWN_STATEMENT: u16 = 1243;
    /// ER_MALFORMED_PACKET.
    pub const MALFORMED: u16 = 1835;
    /// ER_CON_COUNT_ERROR.
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// ER_NET_READ_ERROR (the proxy lost its server connection).
    pub const SERVER_LOST: u16 = 2013;
    /// ER_LOCK_WAIT_TIMEOUT: a pool had no connection in time.
    pub const BUSY: u16 = 1205;
    /// ER_XA_RBROLLBACK-like: the transaction must be rolled back.
    pub const TX_FAILED: u16 = 1180;
    /// ER_PARSE_ERROR.
    pub const PARSE: u16 = 1064;
    /// ER_TOO_LONG_STRING-like refusal of an oversized statement.
    pub const TOO_COMPLEX: u16 = 1436;
    /// ER_CONNECTION_KILLED.
    pub const CONNECTION_KILLED: u16 = 1927;
}

/// Splits one frame off the front of `buf` when it is complete: its sequence id and payload.
pub fn take_frame(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], 0]) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    let seq = buf[3];
    buf.advance(4);
    Some((seq, buf.split_to(len)))
}

/// The length a frame header at the front of `buf` announces, once the header is there.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| u32::from_le_bytes([buf[0], buf[1], buf[2], 0]) as usize)
}

/// Appends `payload` as one packet starting at sequence id `*seq`, split into frames of at most
/// [`MAX_FRAME`] bytes (with the empty frame that ends a payload of an exact multiple).
pub fn put_packet(out: &mut BytesMut, seq: &mut u8, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME);
        let len = (n as u32).to_le_bytes();
        out.put_slice(&len[..3]);
        out.put_u8(*seq);
        *seq = seq.wrapping_add(1);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
        if n < MAX_FRAME {
            return;
        }
    }
}

/// Appends one frame as it came (a payload of at most [`MAX_FRAME`] bytes, its sequence id kept).
pub fn put_frame(out: &mut BytesMut, seq: u8, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.put_slice(&len[..3]);
    out.put_u8(seq);
    out.put_slice(payload);
}

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut impl BufMut, v: u64) {
    match v {
        0..=250 => out.put_u8(v as u8),
        251..=0xFFFF => {
            out.put_u8(0xFC);
            out.put_u16_le(v as u16);
        }
        0x1_0000..=0xFF_FFFF => {
            out.put_u8(0xFD);
            out.put_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.put_u8(0xFE);
            out.put_u64_le(v);
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_str(out: &mut impl BufMut, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.put_slice(s);
}

/// Reads a length-encoded integer at the front of `b`: its value and its size; `None` for NULL
/// (0xFB) or a truncated value.
pub fn lenenc_int(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let (size, v) = match first {
        0..=250 => return Some((first as u64, 1)),
        0xFC => (3, u16::from_le_bytes([*b.get(1)?, *b.get(2)?]) as u64),
        0xFD => (4, u32::from_le_bytes([*b.get(1)?, *b.get(2)?, *b.get(3)?, 0]) as u64),
        0xFE => (9, u64::from_le_bytes(b.get(1..9)?.try_into().ok()?)),
        _ => return None,
    };
    Some((v, size))
}

/// Reads the length-encoded strings of a text-protocol row (`None` is NULL).
pub fn text_cells(mut b: &[u8], columns: usize) -> Option<Vec<Option<&[u8]>>> {
    let mut cells = Vec::with_capacity(columns);
    for _ in 0..columns {
        if b.first() == Some(&0xFB) {
            cells.push(None);
            b = &b[1..];
            continue;
        }
        let (len, size) = lenenc_int(b)?;
        let end = size.checked_add(usize::try_from(len).ok()?)?;
        cells.push(Some(b.get(size..end)?));
        b = &b[end..];
    }
    Some(cells)
}

/// An OK packet's payload.
pub fn ok(affected: u64, last_insert_id: u64, status: StatusFlags, warnings: u16, info: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(16 + info.len());
    b.put_u8(0x00);
    put_lenenc_int(&mut b, affected);
    put_lenenc_int(&mut b, last_insert_id);
    b.put_u16_le(status.bits());
    b.put_u16_le(warnings);
    b.put_slice(info.as_bytes());
    b
}

/// An ERR packet's payload (protocol 4.1: with its SQLSTATE).
pub fn err(code: u16, sqlstate: &str, message: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(9 + message.len());
    b.put_u8(0xFF);
    b.put_u16_le(code);
    b.put_u8(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in state.iter_mut().zip(sqlstate.bytes()) {
        *d = s;
    }
    b.put_slice(&state);
    b.put_slice(message.as_bytes());
    b
}

/// An EOF packet's payload.
pub fn eof(warnings: u16, status: StatusFlags) -> BytesMut {
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(0xFE);
    b.put_u16_le(warnings);
    b.put_u16_le(status.bits());
    b
}

/// A column definition (protocol 4.1) for a result the proxy builds.
pub struct ColumnDef<'a> {
    /// Column name as the client sees it.
    pub name: &'a [u8],
    /// Collation id (63 = binary).
    pub charset: u16,
    /// Display length.
    pub length: u32,
    /// Type.
    pub kind: ColumnType,
    /// Flags (NOT_NULL, UNSIGNED, BINARY, ...).
    pub flags: u16,
    /// Decimal digits.
    pub decimals: u8,
}

/// A column definition packet's payload.
pub fn column_def(c: &ColumnDef) -> BytesMut {
    let mut b = BytesMut::with_capacity(32 + c.name.len());
    put_lenenc_str(&mut b, b"def");
    put_lenenc_str(&mut b, b"");
    put_lenenc_str(&mut b, b"");
    put_lenenc_str(&mut b, b"");
    put_lenenc_str(&mut b, c.name);
    put_lenenc_str(&mut b, c.name);
    b.put_u8(0x0C);
    b.put_u16_le(c.charset);
    b.put_u32_le(c.length);
    b.put_u8(c.kind as u8);
    b.put_u16_le(c.flags);
    b.put_u8(c.decimals);
    b.put_u16_le(0);
    b
}

/// A text-protocol row's payload.
pub fn text_row<'a>(cells: impl IntoIterator<Item = Option<&'a [u8]>>) -> BytesMut {
    let mut b = BytesMut::new();
    for c in cells {
        match c {
            None => b.put_u8(0xFB),
            Some(v) => put_lenenc_str(&mut b, v),
        }
    }
    b
}

/// What the proxy needs of a column definition a server sent: its name, type and flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Name (the alias when there is one).
    pub name: String,
    /// Collation id.
    pub charset: u16,
    /// Type.
    pub kind: u8,
    /// Flags.
    pub flags: u16,
    /// Decimals.
    pub decimals: u8,
}

/// Column flag: UNSIGNED.
pub const UNSIGNED_FLAG: u16 = 0x20;

/// Reads a column definition packet (protocol 4.1).
pub fn column_info(b: &[u8]) -> Option<ColumnInfo> {
    let mut at = 0;
    let mut name = &b[..0];
    for i in 0..6 {
        let (len, size) = lenenc_int(b.get(at..)?)?;
        let end = at + size + usize::try_from(len).ok()?;
        if i == 4 {
            name = b.get(at + size..end)?;
        }
        at = end;
    }
    let fixed = b.get(at + 1..at + 1 + 10)?;
    Some(ColumnInfo {
        name: String::from_utf8_lossy(name).into_owned(),
        charset: u16::from_le_bytes([fixed[0], fixed[1]]),
        kind: fixed[6],
        flags: u16::from_le_bytes([fixed[7], fixed[8]]),
        decimals: fixed[9],
    })
}

/// The fields of an ERR packet: code, SQLSTATE and message.
pub fn parse_err(b: &[u8]) -> Option<(u16, String, String)> {
    if b.first() != Some(&0xFF) || b.len() < 3 {
        return None;
    }
    let code = u16::from_le_bytes([b[1], b[2]]);
    let rest = &b[3..];
    let (state, msg) = match rest.first() {
        Some(b'#') if rest.len() >= 6 => (String::from_utf8_lossy(&rest[1..6]).into_owned(), &rest[6..]),
        _ => ("HY000".to_owned(), rest),
    };
    Some((code, state, String::from_utf8_lossy(msg).into_owned()))
}

/// The fields of an OK packet: affected rows, last insert id, status, warnings.
pub fn parse_ok(b: &[u8]) -> Option<(u64, u64, StatusFlags, u16)> {
    if !matches!(b.first(), Some(0x00 | 0xFE)) {
        return None;
    }
    let (affected, n1) = lenenc_int(&b[1..])?;
    let (last, n2) = lenenc_int(b.get(1 + n1..)?)?;
    let at = 1 + n1 + n2;
    let f = b.get(at..at + 4)?;
    Some((
        affected,
        last,
        StatusFlags::from_bits_retain(u16::from_le_bytes([f[0], f[1]])),
        u16::from_le_bytes([f[2], f[3]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_round_trips() {
        for v in [0u64, 250, 251, 65535, 65536, 0xFF_FFFF, 0x100_0000, u64::MAX] {
            let mut b = BytesMut::new();
            put_lenenc_int(&mut b, v);
            assert_eq!(lenenc_int(&b), Some((v, b.len())), "{v}");
        }
        assert_eq!(lenenc_int(&[0xFB]), None);
        assert_eq!(lenenc_int(&[0xFC, 1]), None);
    }

    #[test]
    fn frames_split_and_join() {
        let mut out = BytesMut::new();
        let mut seq = 3;
        let big = vec![7u8; MAX_FRAME];
        put_packet(&mut out, &mut seq, &big);
        assert_eq!(seq, 5, "a payload of exactly 16 MiB - 1 is followed by an empty frame");
        let (s, p) = take_frame(&mut out).unwrap();
        assert_eq!((s, p.len()), (3, MAX_FRAME));
        let (s, p) = take_frame(&mut out).unwrap();
        assert_eq!((s, p.len()), (4, 0));
        assert!(take_frame(&mut out).is_none());
        out.put_slice(&[5, 0, 0, 9, 1, 2]);
        assert!(take_frame(&mut out).is_none(), "incomplete");
    }

    #[test]
    fn packets_read_back() {
        let row = text_row([Some(&b"a"[..]), None, Some(&b""[..])]);
        assert_eq!(
            text_cells(&row, 3).unwrap(),
            vec![Some(&b"a"[..]), None, Some(&b""[..])]
        );
        assert!(text_cells(&row, 4).is_none());
        let e = err(1235, "42000", "no");
        assert_eq!(parse_err(&e), Some((1235, "42000".into(), "no".into())));
        let o = ok(3, 77, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 1, "");
        assert_eq!(parse_ok(&o), Some((3, 77, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 1)));
        let c = column_def(&ColumnDef {
            name: b"total",
            charset: 63,
            length: 21,
            kind: ColumnType::MYSQL_TYPE_LONGLONG,
            flags: 0,
            decimals: 0,
        });
        let info = column_info(&c).unwrap();
        assert_eq!(
            (info.name.as_str(), info.kind),
            ("total", ColumnType::MYSQL_TYPE_LONGLONG as u8)
        );
    }
}
