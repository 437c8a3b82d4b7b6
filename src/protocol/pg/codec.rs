//! Framing: split a byte buffer into whole messages. Incomplete input is `Ok(None)`, never an
//! error, so callers read more and try again.

use bytes::{Buf, Bytes, BytesMut};

/// Protocol version 3.0 in a StartupMessage.
pub const PROTOCOL_V3: i32 = 196_608;
/// Request code of an SSLRequest.
pub const SSL_REQUEST: i32 = 80_877_103;
/// Request code of a GSSENCRequest.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// Request code of a CancelRequest.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Startup packets are small; anything larger is garbage or an attack.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Input that cannot be a valid message: the connection must be closed after reporting it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field below the minimum for its message.
    #[error("invalid message length {0}")]
    BadLength(i64),
    /// A message longer than the configured maximum.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length announced by the peer.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A body that does not match its message type.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// A startup packet with an unknown protocol version or request code.
    #[error("unsupported frontend protocol {0}.{1}")]
    UnsupportedProtocol(i32, i32),
    /// A well-formed message where the protocol does not allow it.
    #[error("{0}")]
    OutOfOrder(&'static str),
}

/// One whole regular message: type byte, length and body, kept as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl Frame {
    /// Wraps the raw bytes of a whole message (type byte, length, body).
    pub fn from_raw(raw: Bytes) -> Frame {
        debug_assert!(raw.len() >= 5);
        Frame { raw }
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body, without type byte and length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The whole message as it travels on the wire.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

/// The length (type byte included) of the regular message at the front of `buf`, once its header
/// is there; `Ok(None)` before that. The message itself may not be complete yet.
pub fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength(len.into()));
    }
    let total = len as usize + 1;
    if total > max_len {
        return Err(ProtocolError::TooLarge {
            len: total,
            max: max_len,
        });
    }
    Ok(Some(total))
}

/// Splits one regular message off the front of `buf`.
pub fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(total) = frame_len(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame::from_raw(buf.split_to(total).freeze())))
}

/// The first packet of a connection, which has no type byte.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running for the given key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
    /// A StartupMessage with its parameters in order.
    Startup {
        /// Parameter names and values (user, database, options, ...).
        params: Vec<(String, String)>,
    },
}

/// Splits a startup-phase packet off the front of `buf`.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(ProtocolError::BadLength(len.into()));
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::TooLarge {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_i32();
    match code {
        SSL_REQUEST => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST => Ok(Some(StartupPacket::GssEncRequest)),
        CANCEL_REQUEST if packet.len() == 8 => Ok(Some(StartupPacket::Cancel {
            pid: packet.get_i32(),
            secret: packet.get_i32(),
        })),
        CANCEL_REQUEST => Err(ProtocolError::Malformed("CancelRequest")),
        PROTOCOL_V3 => parse_startup_params(&packet).map(|params| Some(StartupPacket::Startup { params })),
        other => Err(ProtocolError::UnsupportedProtocol(other >> 16, other & 0xffff)),
    }
}

fn parse_startup_params(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let name = read_cstr(&mut body).ok_or(ProtocolError::Malformed("StartupMessage"))?;
        if name.is_empty() {
            break;
        }
        let value = read_cstr(&mut body).ok_or(ProtocolError::Malformed("StartupMessage"))?;
        params.push((name.to_owned(), value.to_owned()));
    }
    if !body.is_empty() {
        return Err(ProtocolError::Malformed("StartupMessage"));
    }
    Ok(params)
}

/// Reads a NUL-terminated UTF-8 string and advances past it.
pub fn read_cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    let mut b = *buf;
    let s = std::str::from_utf8(read_cbytes(&mut b)?).ok()?;
    *buf = b;
    Some(s)
}

/// A NUL-terminated string's bytes, in whatever encoding the client speaks (statement texts: the
/// session decodes them by its `client_encoding`).
pub fn read_cbytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    // CStr's search for the NUL goes a word at a time; statement texts are read on every Parse.
    let end = std::ffi::CStr::from_bytes_until_nul(buf).ok()?.to_bytes().len();
    let s = &buf[..end];
    *buf = &buf[end + 1..];
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn startup(params: &[(&str, &str)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i32(PROTOCOL_V3);
        for (k, v) in params {
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

    #[test]
    fn startup_round_trip_consumes_buffer() {
        let mut buf = startup(&[("user", "app"), ("database", "db")]);
        let got = decode_startup(&mut buf).unwrap().unwrap();
        assert_eq!(
            got,
            StartupPacket::Startup {
                params: vec![("user".into(), "app".into()), ("database".into(), "db".into())]
            }
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_partial_needs_more() {
        let full = startup(&[("user", "app")]);
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(decode_startup(&mut part).unwrap(), None);
    }

    #[test]
    fn startup_rejects_garbage() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3][..]);
        assert!(decode_startup(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0x7f, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(matches!(decode_startup(&mut buf), Err(ProtocolError::TooLarge { .. })));
        let mut buf = BytesMut::new();
        buf.put_i32(8);
        buf.put_i32(1234);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(ProtocolError::UnsupportedProtocol(..))
        ));
    }

    #[test]
    fn ssl_and_cancel() {
        let mut buf = BytesMut::new();
        buf.put_i32(8);
        buf.put_i32(SSL_REQUEST);
        buf.put_i32(16);
        buf.put_i32(CANCEL_REQUEST);
        buf.put_i32(7);
        buf.put_i32(9);
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(StartupPacket::SslRequest));
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupPacket::Cancel { pid: 7, secret: 9 })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_split_and_limit() {
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_i32(9);
        buf.put_slice(b"abcd\0");
        buf.put_u8(b'S');
        buf.put_i32(4);
        let q = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(q.tag(), b'Q');
        assert_eq!(q.body(), b"abcd\0");
        let s = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(s.tag(), b'S');
        assert!(s.body().is_empty());
        assert!(buf.is_empty());
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None);

        let mut big = BytesMut::new();
        big.put_u8(b'Q');
        big.put_i32(5000);
        assert!(matches!(
            decode_frame(&mut big, 1024),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut bad = BytesMut::new();
        bad.put_u8(b'Q');
        bad.put_i32(2);
        assert_eq!(decode_frame(&mut bad, 1024), Err(ProtocolError::BadLength(2)));
    }
}
