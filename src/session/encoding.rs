//! Statement texts in the client's encoding. PostgreSQL lets a client speak LATIN9, EUC_JP, SJIS
//! and others (`client_encoding`); the server converts. shardwire analyses text as UTF-8, so a
//! non-UTF-8 text is decoded for analysis by the session's `client_encoding`, and text shardwire
//! writes to a backend (a re-prepared statement, a statement rewritten for several shards) is
//! encoded back into it: backend connections carry the client's `client_encoding`, replayed like
//! any other setting. Pure-ASCII text, the common case, is the same in every supported encoding
//! and is never converted. `encoding_rs` (the codec library of Firefox) does the conversions; only
//! LATIN1 is done here, byte for character, because encoding_rs follows the web's
//! windows-1252 for the label iso-8859-1, which differs from PostgreSQL's LATIN1 in 0x80-0x9F.

use std::borrow::Cow;

use encoding_rs::Encoding;

use super::Session;
use super::state::canonical_encoding;

/// How text of one client encoding becomes UTF-8 and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Codec {
    /// UTF-8: nothing to do.
    Utf8,
    /// A byte is a character (LATIN1).
    Bytes,
    /// Through encoding_rs.
    Other(&'static Encoding),
    /// An encoding shardwire cannot convert.
    Unsupported,
}

impl Codec {
    /// The codec for a PostgreSQL encoding name (any spelling PostgreSQL accepts).
    pub(super) fn of(name: &str) -> Codec {
        use encoding_rs as e;
        Codec::Other(match canonical_encoding(name).as_str() {
            "UTF8" => return Codec::Utf8,
            // No conversion at all: the server takes the bytes as they are, into a UTF8 database.
            "SQL_ASCII" => return Codec::Utf8,
            "LATIN1" => return Codec::Bytes,
            "LATIN2" => e::ISO_8859_2,
            "LATIN3" => e::ISO_8859_3,
            "LATIN4" => e::ISO_8859_4,
            // encoding_rs has windows-1254 only, which agrees with ISO-8859-9 outside 0x80-0x9F.
            "LATIN5" | "WIN1254" => e::WINDOWS_1254,
            "LATIN6" => e::ISO_8859_10,
            "LATIN7" => e::ISO_8859_13,
            "LATIN8" => e::ISO_8859_14,
            "LATIN9" => e::ISO_8859_15,
            "LATIN10" => e::ISO_8859_16,
            "ISO_8859_5" => e::ISO_8859_5,
            "ISO_8859_6" => e::ISO_8859_6,
            "ISO_8859_7" => e::ISO_8859_7,
            "ISO_8859_8" => e::ISO_8859_8,
            "WIN866" => e::IBM866,
            "WIN874" => e::WINDOWS_874,
            "WIN1250" => e::WINDOWS_1250,
            "WIN1251" => e::WINDOWS_1251,
            "WIN1252" => e::WINDOWS_1252,
            "WIN1253" => e::WINDOWS_1253,
            "WIN1255" => e::WINDOWS_1255,
            "WIN1256" => e::WINDOWS_1256,
            "WIN1257" => e::WINDOWS_1257,
            "WIN1258" => e::WINDOWS_1258,
            "KOI8R" => e::KOI8_R,
            "KOI8U" => e::KOI8_U,
            "EUC_JP" => e::EUC_JP,
            "EUC_KR" | "UHC" => e::EUC_KR,
            "EUC_CN" | "GBK" => e::GBK,
            "GB18030" => e::GB18030,
            "SJIS" => e::SHIFT_JIS,
            "BIG5" => e::BIG5,
            _ => return Codec::Unsupported,
        })
    }

    /// The text as UTF-8, or why it is not text of this encoding.
    pub(super) fn decode<'a>(self, raw: &'a [u8], name: &str) -> Result<Cow<'a, str>, String> {
        let invalid = || {
            let at = raw.iter().position(|b| !b.is_ascii()).unwrap_or(0);
            let bytes: Vec<String> = raw[at..].iter().take(2).map(|b| format!("0x{b:02x}")).collect();
            format!(
                "invalid byte sequence for encoding \"{}\": {}",
                canonical_encoding(name),
                bytes.join(" ")
            )
        };
        match self {
            Codec::Utf8 => std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| invalid()),
            Codec::Bytes => Ok(Cow::Owned(raw.iter().map(|&b| b as char).collect())),
            Codec::Other(e) => e
                .decode_without_bom_handling_and_without_replacement(raw)
                .ok_or_else(invalid),
            Codec::Unsupported => Err(format!(
                "shardwire cannot read statement text in client_encoding {}; use UTF8 (the server converts)",
                canonical_encoding(name)
            )),
        }
    }

    /// UTF-8 text in this encoding. Text decoded from it encodes back to the same bytes; a
    /// character it cannot hold (not from the client) stays as UTF-8, which the server rejects
    /// with its own error rather than storing something else.
    pub(super) fn encode(self, s: &str) -> Cow<'_, [u8]> {
        match self {
            Codec::Utf8 | Codec::Unsupported => Cow::Borrowed(s.as_bytes()),
            Codec::Bytes if s.chars().all(|c| (c as u32) < 256) => Cow::Owned(s.chars().map(|c| c as u8).collect()),
            Codec::Bytes => Cow::Borrowed(s.as_bytes()),
            Codec::Other(e) => match e.encode(s) {
                (bytes, _, false) => bytes,
                (_, _, true) => Cow::Borrowed(s.as_bytes()),
            },
        }
    }
}

impl Session {
    /// The session's codec (its `client_encoding`; UTF8 when never set).
    fn codec(&self) -> (Codec, String) {
        let name = self.vars.client_encoding().unwrap_or_else(|| "UTF8".into());
        (Codec::of(&name), name)
    }

    /// Whether the client's text is UTF-8 (so its bytes order as the server's UTF-8 text does).
    pub(super) fn client_is_utf8(&self) -> bool {
        self.codec().0 == Codec::Utf8
    }

    /// A statement text from the client as UTF-8.
    pub(super) fn client_text<'a>(&self, raw: &'a [u8]) -> Result<Cow<'a, str>, String> {
        if raw.is_ascii() {
            // SAFETY-free fast path: ASCII is UTF-8.
            return std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|e| e.to_string());
        }
        let (codec, name) = self.codec();
        codec.decode(raw, &name)
    }

    /// Text for a backend connection of this session, in the client's encoding.
    pub(super) fn wire<'a>(&self, sql: &'a str) -> Cow<'a, [u8]> {
        if sql.is_ascii() {
            return Cow::Borrowed(sql.as_bytes());
        }
        self.codec().0.encode(sql)
    }

    /// [`Session::wire`] when it differs from the UTF-8 bytes, else `None` (nothing allocated):
    /// for call sites that hold a borrow of the session while writing.
    pub(super) fn converted(&self, sql: &str) -> Option<Vec<u8>> {
        match self.wire(sql) {
            Cow::Borrowed(_) => None,
            Cow::Owned(b) => Some(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Codec;

    #[test]
    fn texts_round_trip_through_their_encoding() {
        for (name, raw) in [
            ("LATIN9", &b"SELECT '\xe9t\xe9 \xa4'"[..]),
            ("latin1", &b"SELECT '\xe9\x80'"[..]),
            ("EUC_JP", &b"SELECT '\xc6\xfc\xcb\xdc'"[..]),
            ("SJIS", &b"SELECT '\x93\xfa\x96\x7b'"[..]),
            ("WIN1251", &b"SELECT '\xcf\xf0\xe8'"[..]),
        ] {
            let c = Codec::of(name);
            let text = c.decode(raw, name).unwrap();
            assert!(text.starts_with("SELECT '"), "{name}: {text}");
            assert_eq!(&*c.encode(&text), raw, "{name}");
        }
        assert_eq!(Codec::of("LATIN9").decode(b"'\xa4'", "LATIN9").unwrap(), "'€'");
        assert_eq!(
            Codec::of("EUC_JP").decode(b"'\xc6\xfc\xcb\xdc'", "EUC_JP").unwrap(),
            "'日本'"
        );
    }

    #[test]
    fn bad_bytes_and_unknown_encodings_are_errors() {
        let e = Codec::of("UTF8").decode(b"SELECT '\xe9'", "utf8").unwrap_err();
        assert_eq!(e, "invalid byte sequence for encoding \"UTF8\": 0xe9 0x27");
        assert!(Codec::of("EUC_JP").decode(b"'\xff\xff'", "EUC_JP").is_err());
        assert_eq!(Codec::of("MULE_INTERNAL"), Codec::Unsupported);
        assert!(
            Codec::of("MULE_INTERNAL")
                .decode(b"\xe9", "mule_internal")
                .unwrap_err()
                .contains("use UTF8")
        );
    }
}
