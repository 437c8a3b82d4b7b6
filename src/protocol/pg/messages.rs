//! Message bodies: builders for what the proxy answers itself and parsers for the few client
//! messages it must look inside (Query, Parse, Bind, Describe, Close, Execute).

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{ProtocolError, read_cbytes, read_cstr};
use super::sqlstate::SqlState;

/// Writes one message: tag, length (patched after `body` ran), body.
fn put_msg(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A message with a raw body.
pub fn put_raw(out: &mut BytesMut, tag: u8, body: &[u8]) {
    put_msg(out, tag, |b| b.put_slice(body));
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The connection is closed after this message.
    Fatal,
    /// A notice.
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Warning => "WARNING",
        }
    }
}

/// ErrorResponse ('E') or, for `Severity::Warning`, NoticeResponse ('N').
pub fn error_response(out: &mut BytesMut, severity: Severity, code: SqlState, message: &str) {
    let tag = if severity == Severity::Warning { b'N' } else { b'E' };
    put_msg(out, tag, |b| {
        for (field, value) in [
            (b'S', severity.as_str()),
            (b'V', severity.as_str()),
            (b'C', code.code()),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

/// Authentication request ('R') with its code and trailing data.
pub fn authentication(out: &mut BytesMut, code: i32, data: &[u8]) {
    put_msg(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

/// AuthenticationSASL listing the mechanisms offered.
pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    put_msg(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// ParameterStatus ('S').
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put_msg(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData ('K').
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    put_msg(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// ReadyForQuery ('Z') with transaction status `I`, `T` or `E`.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put_msg(out, b'Z', |b| b.put_u8(status));
}

/// A message with an empty body (ParseComplete '1', BindComplete '2', CloseComplete '3', NoData 'n', Sync 'S', ...).
pub fn empty(tag: u8) -> Bytes {
    let mut out = BytesMut::with_capacity(5);
    put_msg(&mut out, tag, |_| {});
    out.freeze()
}

/// RowDescription ('T') for text columns.
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    put_msg(out, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            put_cstr(b, c);
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0); // text format
        }
    });
}

/// DataRow ('D') of text values; `None` is SQL NULL.
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    put_msg(out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// CommandComplete ('C').
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    put_msg(out, b'C', |b| put_cstr(b, tag));
}

/// EmptyQueryResponse ('I').
pub fn empty_query(out: &mut BytesMut) {
    put_msg(out, b'I', |_| {});
}

/// CopyData ('d').
pub fn copy_data(out: &mut BytesMut, data: &[u8]) {
    put_msg(out, b'd', |b| b.put_slice(data));
}

/// A simple Query ('Q').
pub fn query(out: &mut BytesMut, sql: &str) {
    query_bytes(out, sql.as_bytes());
}

/// A simple Query ('Q') whose text is already in the connection's client encoding.
pub fn query_bytes(out: &mut BytesMut, sql: &[u8]) {
    put_msg(out, b'Q', |b| {
        b.put_slice(sql);
        b.put_u8(0);
    });
}

/// Parse ('P') with raw parameter type oids (the bytes after the query in the client's Parse).
pub fn parse(out: &mut BytesMut, name: &str, sql: &str, param_types: &[u8]) {
    parse_bytes(out, name, sql.as_bytes(), param_types);
}

/// Parse ('P') whose text is already in the connection's client encoding.
pub fn parse_bytes(out: &mut BytesMut, name: &str, sql: &[u8], param_types: &[u8]) {
    put_msg(out, b'P', |b| {
        put_cstr(b, name);
        b.put_slice(sql);
        b.put_u8(0);
        b.put_slice(param_types);
    });
}

/// Bind ('B') naming `statement`, with everything after the names copied from the client's Bind.
pub fn bind(out: &mut BytesMut, portal: &str, statement: &str, rest: &[u8]) {
    put_msg(out, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_slice(rest);
    });
}

/// Describe ('D') or Close ('C') of a statement or portal.
pub fn describe_or_close(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    put_msg(out, tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// The text of a simple Query, in the client's encoding.
pub fn parse_query(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut b = body;
    let q = read_cbytes(&mut b).ok_or(ProtocolError::Malformed("Query"))?;
    Ok(q)
}

/// A client's Parse message.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseMsg<'a> {
    /// Statement name, empty for the unnamed statement.
    pub name: &'a str,
    /// The SQL text, in the client's encoding.
    pub query: &'a [u8],
    /// Parameter type count and oids, raw.
    pub param_types: &'a [u8],
}

/// Parses a Parse body.
pub fn parse_parse(body: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let mut b = body;
    let name = read_cstr(&mut b).ok_or(ProtocolError::Malformed("Parse"))?;
    let query = read_cbytes(&mut b).ok_or(ProtocolError::Malformed("Parse"))?;
    if b.len() < 2 {
        return Err(ProtocolError::Malformed("Parse"));
    }
    let n = i16::from_be_bytes([b[0], b[1]]);
    if n < 0 || b.len() != 2 + 4 * n as usize {
        return Err(ProtocolError::Malformed("Parse"));
    }
    Ok(ParseMsg {
        name,
        query,
        param_types: b,
    })
}

/// A client's Bind message, split at the statement name.
#[derive(Debug, PartialEq, Eq)]
pub struct BindMsg<'a> {
    /// Destination portal.
    pub portal: &'a str,
    /// Source statement.
    pub statement: &'a str,
    /// Formats, parameter values and result formats, raw.
    pub rest: &'a [u8],
}

/// Parses a Bind body (only the names; the rest is kept raw).
pub fn parse_bind(body: &[u8]) -> Result<BindMsg<'_>, ProtocolError> {
    let mut b = body;
    let portal = read_cstr(&mut b).ok_or(ProtocolError::Malformed("Bind"))?;
    let statement = read_cstr(&mut b).ok_or(ProtocolError::Malformed("Bind"))?;
    if b.len() < 2 {
        return Err(ProtocolError::Malformed("Bind"));
    }
    Ok(BindMsg {
        portal,
        statement,
        rest: b,
    })
}

/// Describe or Close: `S` (statement) or `P` (portal) and a name.
pub fn parse_target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), ProtocolError> {
    let (&kind, mut rest) = body.split_first().ok_or(ProtocolError::Malformed(what))?;
    let name = read_cstr(&mut rest).ok_or(ProtocolError::Malformed(what))?;
    if !(kind == b'S' || kind == b'P') || !rest.is_empty() {
        return Err(ProtocolError::Malformed(what));
    }
    Ok((kind, name))
}

/// The portal name of an Execute.
pub fn parse_execute(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut b = body;
    let portal = read_cstr(&mut b).ok_or(ProtocolError::Malformed("Execute"))?;
    if b.len() != 4 {
        return Err(ProtocolError::Malformed("Execute"));
    }
    Ok(portal)
}

/// The message text of a backend ErrorResponse, for logs and admin views.
pub fn error_message(body: &[u8]) -> String {
    error_field(body, b'M').unwrap_or("unknown error").to_owned()
}

/// One field of an ErrorResponse or NoticeResponse body (`b'C'`: the SQLSTATE).
pub fn error_field(body: &[u8], want: u8) -> Option<&str> {
    let mut b = body;
    while let Some((&field, rest)) = b.split_first() {
        if field == 0 {
            break;
        }
        b = rest;
        let value = read_cstr(&mut b)?;
        if field == want {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::codec::decode_frame;
    use super::*;

    fn one(out: BytesMut) -> super::super::Frame {
        let mut out = out;
        let f = decode_frame(&mut out, 1 << 20).unwrap().unwrap();
        assert!(out.is_empty(), "buffer fully consumed");
        f
    }

    #[test]
    fn parse_round_trip() {
        let mut out = BytesMut::new();
        parse(&mut out, "s1", "select $1", &[0, 1, 0, 0, 0, 23]);
        let f = one(out);
        assert_eq!(f.tag(), b'P');
        assert_eq!(
            parse_parse(f.body()).unwrap(),
            ParseMsg {
                name: "s1",
                query: b"select $1",
                param_types: &[0, 1, 0, 0, 0, 23]
            }
        );
    }

    #[test]
    fn parse_rejects_bad_type_count() {
        let mut out = BytesMut::new();
        parse(&mut out, "s1", "select $1", &[0, 2, 0, 0, 0, 23]);
        let f = one(out);
        assert!(parse_parse(f.body()).is_err());
    }

    #[test]
    fn bind_round_trip() {
        let mut out = BytesMut::new();
        bind(&mut out, "p", "s1", &[0, 0, 0, 0, 0, 0]);
        let f = one(out);
        let b = parse_bind(f.body()).unwrap();
        assert_eq!((b.portal, b.statement, b.rest), ("p", "s1", &[0u8, 0, 0, 0, 0, 0][..]));
    }

    #[test]
    fn describe_close_round_trip() {
        for tag in [b'D', b'C'] {
            let mut out = BytesMut::new();
            describe_or_close(&mut out, tag, b'S', "stmt");
            let f = one(out);
            assert_eq!(parse_target(f.body(), "Describe").unwrap(), (b'S', "stmt"));
        }
        assert!(parse_target(b"Xname\0", "Describe").is_err());
        assert!(parse_target(b"", "Describe").is_err());
    }

    #[test]
    fn error_round_trip() {
        let mut out = BytesMut::new();
        error_response(&mut out, Severity::Error, SqlState::PROTOCOL_VIOLATION, "bad");
        let f = one(out);
        assert_eq!(f.tag(), b'E');
        assert_eq!(error_message(f.body()), "bad");
    }

    #[test]
    fn query_and_rows() {
        let mut out = BytesMut::new();
        query(&mut out, "select 1");
        let f = one(out);
        assert_eq!(parse_query(f.body()).unwrap(), b"select 1");
        let mut out = BytesMut::new();
        data_row(&mut out, &[Some("a"), None]);
        assert_eq!(one(out).body(), &[0, 2, 0, 0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff]);
    }
}
