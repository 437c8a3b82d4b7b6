//! The messages a scatter must look inside: Bind parameters and result formats (to route by a
//! parameter and to ask shards for the formats merging needs), RowDescription fields and DataRow
//! cells (to merge), and building them again for the client.

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolError;

/// A Bind's parameters and result formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindParts {
    /// Parameter format codes as sent (0, 1 or n of them).
    pub param_formats: Vec<i16>,
    /// Parameter values; `None` is NULL.
    pub values: Vec<Option<Bytes>>,
    /// Result format codes as sent (0, 1 or n of them).
    pub result_formats: Vec<i16>,
}

impl BindParts {
    /// The format of parameter `i`.
    pub fn param_format(&self, i: usize) -> i16 {
        format_at(&self.param_formats, i)
    }
}

/// The format code for column or parameter `i` from a 0/1/n list.
pub fn format_at(codes: &[i16], i: usize) -> i16 {
    match codes {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

fn i16_at(b: &[u8], at: usize) -> Result<i16, ProtocolError> {
    Ok(i16::from_be_bytes([
        *b.get(at).ok_or(ProtocolError::Malformed("Bind"))?,
        *b.get(at + 1).ok_or(ProtocolError::Malformed("Bind"))?,
    ]))
}

/// Splits the part of a Bind after the portal and statement names.
pub fn split_bind(rest: &Bytes) -> Result<BindParts, ProtocolError> {
    let bad = || ProtocolError::Malformed("Bind");
    let mut at = 0;
    let nf = i16_at(rest, at)?;
    at += 2;
    let mut param_formats = Vec::new();
    for _ in 0..nf.max(0) {
        param_formats.push(i16_at(rest, at)?);
        at += 2;
    }
    let np = i16_at(rest, at)?;
    at += 2;
    let mut values = Vec::new();
    for _ in 0..np.max(0) {
        let len = i32::from_be_bytes(rest.get(at..at + 4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        at += 4;
        if len < 0 {
            values.push(None);
        } else {
            if at + len as usize > rest.len() {
                return Err(bad());
            }
            values.push(Some(rest.slice(at..at + len as usize)));
            at += len as usize;
        }
    }
    let nr = i16_at(rest, at)?;
    at += 2;
    let mut result_formats = Vec::new();
    for _ in 0..nr.max(0) {
        result_formats.push(i16_at(rest, at)?);
        at += 2;
    }
    if at != rest.len() {
        return Err(bad());
    }
    Ok(BindParts {
        param_formats,
        values,
        result_formats,
    })
}

/// A Bind of the unnamed portal and statement with the given parameters (`pick` selects and
/// orders the client's parameters) and per-column result formats.
pub fn bind_with(out: &mut BytesMut, parts: &BindParts, pick: Option<&[usize]>, result_formats: &[i16]) {
    bind_named(out, "", "", parts, pick, result_formats)
}

/// A Bind of `portal` from `statement`, otherwise as [`bind_with`].
pub fn bind_named(
    out: &mut BytesMut,
    portal: &str,
    statement: &str,
    parts: &BindParts,
    pick: Option<&[usize]>,
    result_formats: &[i16],
) {
    let all: Vec<usize> = (0..parts.values.len()).collect();
    let idx = pick.unwrap_or(&all);
    let body_start = out.len();
    out.put_u8(b'B');
    out.put_i32(0);
    out.put_slice(portal.as_bytes());
    out.put_u8(0);
    out.put_slice(statement.as_bytes());
    out.put_u8(0);
    out.put_i16(idx.len() as i16);
    for &i in idx {
        out.put_i16(parts.param_format(i));
    }
    out.put_i16(idx.len() as i16);
    for &i in idx {
        match parts.values.get(i).and_then(|v| v.as_ref()) {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    out.put_i16(result_formats.len() as i16);
    for f in result_formats {
        out.put_i16(*f);
    }
    let len = (out.len() - body_start - 1) as i32;
    out[body_start + 1..body_start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Execute of the unnamed portal, all rows.
pub fn execute_all(out: &mut BytesMut) {
    out.put_u8(b'E');
    out.put_i32(9);
    out.put_u8(0);
    out.put_i32(0);
}

/// Sync.
pub fn sync(out: &mut BytesMut) {
    out.put_u8(b'S');
    out.put_i32(4);
}

/// One RowDescription field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name.
    pub name: Bytes,
    /// Table oid, column number, type oid, type size, type modifier, format code.
    pub table: u32,
    /// Column number in the table.
    pub column: i16,
    /// Type oid.
    pub type_oid: u32,
    /// Type size.
    pub size: i16,
    /// Type modifier.
    pub modifier: i32,
    /// Format code.
    pub format: i16,
}

/// Parses a RowDescription body.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<Field>, ProtocolError> {
    let bad = || ProtocolError::Malformed("RowDescription");
    let n = i16::from_be_bytes(body.get(0..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let mut at = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let end = at
            + body
                .get(at..)
                .ok_or_else(bad)?
                .iter()
                .position(|&c| c == 0)
                .ok_or_else(bad)?;
        let name = Bytes::copy_from_slice(&body[at..end]);
        at = end + 1;
        let f = body.get(at..at + 18).ok_or_else(bad)?;
        out.push(Field {
            name,
            table: u32::from_be_bytes([f[0], f[1], f[2], f[3]]),
            column: i16::from_be_bytes([f[4], f[5]]),
            type_oid: u32::from_be_bytes([f[6], f[7], f[8], f[9]]),
            size: i16::from_be_bytes([f[10], f[11]]),
            modifier: i32::from_be_bytes([f[12], f[13], f[14], f[15]]),
            format: i16::from_be_bytes([f[16], f[17]]),
        });
        at += 18;
    }
    Ok(out)
}

/// Writes a RowDescription.
pub fn row_description(out: &mut BytesMut, fields: &[Field]) {
    let start = out.len();
    out.put_u8(b'T');
    out.put_i32(0);
    out.put_i16(fields.len() as i16);
    for f in fields {
        out.put_slice(&f.name);
        out.put_u8(0);
        out.put_u32(f.table);
        out.put_i16(f.column);
        out.put_u32(f.type_oid);
        out.put_i16(f.size);
        out.put_i32(f.modifier);
        out.put_i16(f.format);
    }
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Writes the RowDescription of one computed column (no table), as the proxy's own answers have.
pub fn one_column(out: &mut BytesMut, name: &'static str, type_oid: u32, size: i16, format: i16) {
    row_description(
        out,
        &[Field {
            name: Bytes::from_static(name.as_bytes()),
            table: 0,
            column: 0,
            type_oid,
            size,
            modifier: -1,
            format,
        }],
    );
}

/// The cells of a DataRow body, as ranges into a shared buffer.
pub fn parse_data_row(body: &Bytes) -> Result<Vec<Option<Bytes>>, ProtocolError> {
    let bad = || ProtocolError::Malformed("DataRow");
    let n = i16::from_be_bytes(body.get(0..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let mut at = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let len = i32::from_be_bytes(body.get(at..at + 4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = at + len as usize;
            if end > body.len() {
                return Err(bad());
            }
            out.push(Some(body.slice(at..end)));
            at = end;
        }
    }
    Ok(out)
}

/// Writes a DataRow of the first `n` cells.
pub fn data_row(out: &mut BytesMut, cells: &[Option<Bytes>], n: usize) {
    let start = out.len();
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(n as i16);
    for c in &cells[..n.min(cells.len())] {
        match c {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// The parameter-type section of a Parse (count, then an oid each) for a subset of the client's
/// parameters, in the order `pick` names them; unknown (0) where the client gave none.
pub fn pick_types(param_types: &[u8], pick: &[usize]) -> Vec<u8> {
    let n = param_types
        .get(..2)
        .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize);
    let mut out = (pick.len() as i16).to_be_bytes().to_vec();
    for &i in pick {
        match param_types.get(2 + 4 * i..6 + 4 * i) {
            Some(t) if i < n => out.extend_from_slice(t),
            _ => out.extend_from_slice(&0u32.to_be_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_splits_and_rebuilds() {
        let parts = BindParts {
            param_formats: vec![1],
            values: vec![
                Some(Bytes::from_static(&[0, 0, 0, 7])),
                None,
                Some(Bytes::from_static(b"x")),
            ],
            result_formats: vec![0, 1],
        };
        let mut out = BytesMut::new();
        bind_with(&mut out, &parts, None, &parts.result_formats);
        // Skip tag, length and the two empty names.
        let back = split_bind(&out.clone().freeze().slice(7..)).unwrap();
        assert_eq!(back.values, parts.values);
        assert_eq!(back.result_formats, parts.result_formats);
        assert_eq!(back.param_formats, vec![1, 1, 1]);
        let mut picked = BytesMut::new();
        bind_with(&mut picked, &parts, Some(&[2]), &[]);
        assert_eq!(
            split_bind(&picked.freeze().slice(7..)).unwrap().values,
            vec![Some(Bytes::from_static(b"x"))]
        );
        assert!(split_bind(&Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 9])).is_err());
    }

    #[test]
    fn rows_round_trip() {
        let f = Field {
            name: Bytes::from_static(b"id"),
            table: 1,
            column: 2,
            type_oid: 20,
            size: 8,
            modifier: -1,
            format: 0,
        };
        let mut out = BytesMut::new();
        row_description(&mut out, std::slice::from_ref(&f));
        assert_eq!(parse_row_description(&out[5..]).unwrap(), vec![f]);
        let mut out = BytesMut::new();
        let cells = vec![Some(Bytes::from_static(b"42")), None];
        data_row(&mut out, &cells, 2);
        let body = Bytes::copy_from_slice(&out[5..]);
        assert_eq!(parse_data_row(&body).unwrap(), cells);
    }
}
