//! COM_STMT_EXECUTE packets: where their parts are, their parameters as text (for routing by
//! the shard key) and the packet rewritten for another server connection (its statement id,
//! and the parameter types when that connection has not seen them).

use bytes::{BufMut, Bytes, BytesMut};

use super::{cmd, lenenc_int};

/// Where the parts of an execute packet are.
pub struct Layout {
    /// The NULL bitmap.
    pub nulls: std::ops::Range<usize>,
    /// The new-params-bound flag's offset (none without parameters).
    pub bound_at: Option<usize>,
    /// Parameter types, when the client sent them.
    pub types: Option<std::ops::Range<usize>>,
    /// Where the values start.
    pub values: usize,
}

impl Layout {
    /// The layout of an execute packet `p` for a statement of `n` parameters.
    pub fn read(p: &[u8], n: usize) -> Option<Layout> {
        // command, id (4), flags (1), iteration count (4)
        let mut at = 10;
        if p.len() < at {
            return None;
        }
        if n == 0 {
            return Some(Layout {
                nulls: at..at,
                bound_at: None,
                types: None,
                values: at,
            });
        }
        let nulls = at..at + n.div_ceil(8);
        at = nulls.end;
        let bound = *p.get(at)?;
        let bound_at = Some(at);
        at += 1;
        let types = if bound == 1 {
            let t = at..at + 2 * n;
            p.get(t.clone())?;
            at = t.end;
            Some(t)
        } else {
            None
        };
        Some(Layout {
            nulls,
            bound_at,
            types,
            values: at,
        })
    }
}

/// The execute for the server: its statement id, and the parameter types when the server has
/// not seen these for that statement.
pub fn rewrite(p: &[u8], l: &Layout, server_id: u32, types: Option<&Bytes>, sent: Option<&Bytes>) -> BytesMut {
    let mut out = BytesMut::with_capacity(p.len() + types.map_or(0, |t| t.len()));
    out.put_u8(cmd::STMT_EXECUTE);
    out.put_u32_le(server_id);
    // No cursor: the rows come with the response (a cursor would need COM_STMT_FETCH on the
    // same connection, which pooling does not promise); drivers read them either way.
    out.put_u8(0);
    match (l.bound_at, l.types.is_some(), types) {
        (Some(at), false, Some(t)) if sent != Some(t) => {
            out.put_slice(&p[6..at]);
            out.put_u8(1);
            out.put_slice(t);
            out.put_slice(&p[l.values..]);
        }
        _ => out.put_slice(&p[6..]),
    }
    out
}

/// The parameters as text, for routing by the shard key (`None`: NULL, or a value that is not
/// a number or a string).
pub fn param_texts(p: &[u8], l: &Layout, types: &[u8], n: usize, long: &[u16]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(n);
    let mut at = l.values;
    for i in 0..n {
        let null = p.get(l.nulls.start + i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
        if null || long.contains(&(i as u16)) {
            out.push(None);
            continue;
        }
        let (kind, unsigned) = match types.get(2 * i..2 * i + 2) {
            Some(t) => (t[0], t[1] & 0x80 != 0),
            None => break,
        };
        let fixed = |len: usize, at: usize| p.get(at..at + len);
        let (text, len) = match kind {
            0x01 => (
                fixed(1, at).map(|b| {
                    if unsigned {
                        b[0].to_string()
                    } else {
                        (b[0] as i8).to_string()
                    }
                }),
                1,
            ),
            0x02 | 0x0d => (
                fixed(2, at).map(|b| {
                    let v = u16::from_le_bytes([b[0], b[1]]);
                    if unsigned {
                        v.to_string()
                    } else {
                        (v as i16).to_string()
                    }
                }),
                2,
            ),
            0x03 | 0x09 => (
                fixed(4, at).map(|b| {
                    let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if unsigned {
                        v.to_string()
                    } else {
                        (v as i32).to_string()
                    }
                }),
                4,
            ),
            0x08 => (
                fixed(8, at).map(|b| {
                    let v = u64::from_le_bytes(b.try_into().unwrap_or_default());
                    if unsigned {
                        v.to_string()
                    } else {
                        (v as i64).to_string()
                    }
                }),
                8,
            ),
            0x04 => (None, 4),
            0x05 => (None, 8),
            0x06 => (None, 0),
            0x07 | 0x0a | 0x0b | 0x0c => (None, 1 + p.get(at).copied().unwrap_or(0) as usize),
            _ => match lenenc_int(p.get(at..).unwrap_or_default()) {
                Some((len, size)) => {
                    let end = at + size + len as usize;
                    (
                        p.get(at + size..end).map(|b| String::from_utf8_lossy(b).into_owned()),
                        size + len as usize,
                    )
                }
                None => break,
            },
        };
        out.push(text);
        at += len;
    }
    out.resize(n, None);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_packets_are_read_and_rewritten() {
        // Two parameters: BIGINT 7 and VARCHAR "ab"; the second execute leaves the types out.
        let mut p = vec![cmd::STMT_EXECUTE, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0b00, 1, 0x08, 0, 0x0f, 0];
        p.extend_from_slice(&7i64.to_le_bytes());
        p.extend_from_slice(&[2, b'a', b'b']);
        let l = Layout::read(&p, 2).unwrap();
        let types = Bytes::copy_from_slice(&p[l.types.clone().unwrap()]);
        assert_eq!(
            param_texts(&p, &l, &types, 2, &[]),
            vec![Some("7".into()), Some("ab".into())]
        );
        let mut again = p[..11].to_vec();
        again.push(0);
        again.extend_from_slice(&p[16..]);
        let l2 = Layout::read(&again, 2).unwrap();
        assert!(l2.types.is_none());
        assert_eq!(
            param_texts(&again, &l2, &types, 2, &[]),
            vec![Some("7".into()), Some("ab".into())]
        );
        // A connection that never saw the types gets them; one that did does not.
        let r = rewrite(&again, &l2, 99, Some(&types), None);
        assert_eq!(&r[1..5], &99u32.to_le_bytes());
        assert_eq!(
            &r[..],
            &[&[cmd::STMT_EXECUTE][..], &99u32.to_le_bytes(), &p[5..]].concat()[..]
        );
        let same = rewrite(&again, &l2, 99, Some(&types), Some(&types));
        assert_eq!(same.len(), again.len());
        // NULL in the bitmap, long data skipped.
        let mut n = p.clone();
        n[10] = 0b01;
        let l3 = Layout::read(&n, 2).unwrap();
        let mut short = n[..16].to_vec();
        short.extend_from_slice(&[2, b'a', b'b']);
        assert_eq!(param_texts(&short, &l3, &types, 2, &[]), vec![None, Some("ab".into())]);
        assert_eq!(param_texts(&short, &l3, &types, 2, &[1]), vec![None, None]);
        assert!(Layout::read(&p[..11], 2).is_none(), "truncated");
    }
}
