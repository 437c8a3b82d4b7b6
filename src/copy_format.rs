//! COPY data in PostgreSQL's text and CSV formats (no wire protocol: the options are SQL, the
//! rows are data), as far as routing needs it: where each row ends (however the client chunked its
//! CopyData) and the value of one column of a row.

/// The format of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    /// CSV (else text).
    pub csv: bool,
    /// Field delimiter (tab for text, comma for CSV by default).
    pub delimiter: u8,
    /// CSV quote character.
    pub quote: u8,
    /// CSV escape character (defaults to the quote).
    pub escape: u8,
    /// The first row is a header.
    pub header: bool,
    /// The NULL marker (`\N` in text, the empty unquoted string in CSV).
    pub null: Vec<u8>,
}

impl CopyFormat {
    /// PostgreSQL's defaults for text or CSV.
    pub fn new(csv: bool) -> CopyFormat {
        CopyFormat {
            csv,
            delimiter: if csv { b',' } else { b'\t' },
            quote: b'"',
            escape: b'"',
            header: false,
            null: if csv { Vec::new() } else { b"\\N".to_vec() },
        }
    }
}

/// Splits a stream of CopyData payloads into whole rows (each with its line end).
#[derive(Debug, Default)]
pub struct RowSplitter {
    carry: Vec<u8>,
    in_quotes: bool,
}

impl RowSplitter {
    /// Feeds data; `row` receives every row completed by it.
    pub fn push(&mut self, f: &CopyFormat, data: &[u8], mut row: impl FnMut(&[u8])) {
        let mut start = 0;
        let mut i = 0;
        while i < data.len() {
            let c = data[i];
            if f.csv && c == f.quote {
                self.in_quotes = !self.in_quotes;
            } else if c == b'\n' && !self.in_quotes {
                if self.carry.is_empty() {
                    row(&data[start..=i]);
                } else {
                    self.carry.extend_from_slice(&data[start..=i]);
                    row(&self.carry);
                    self.carry.clear();
                }
                start = i + 1;
            }
            i += 1;
        }
        self.carry.extend_from_slice(&data[start..]);
    }

    /// What is left after the last line end (a last row without one), if anything.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.carry);
        (!rest.is_empty()).then_some(rest)
    }
}

/// The text of column `idx` of a row (`None` for NULL); `Err` when the row has fewer columns.
pub fn field(f: &CopyFormat, row: &[u8], idx: usize) -> Result<Option<String>, String> {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    let row = row.strip_suffix(b"\r").unwrap_or(row);
    let mut col = 0;
    let mut i = 0;
    loop {
        // One field from i.
        let mut value = Vec::new();
        let mut quoted = false;
        if f.csv {
            let mut in_q = false;
            while i < row.len() {
                let c = row[i];
                if in_q {
                    // An escaped quote ("" by default, or ESCAPE followed by the quote).
                    if c == f.escape && row.get(i + 1) == Some(&f.quote) {
                        value.push(f.quote);
                        i += 2;
                        continue;
                    }
                    if c == f.quote {
                        in_q = false;
                    } else {
                        value.push(c);
                    }
                } else if c == f.quote {
                    in_q = true;
                    quoted = true;
                } else if c == f.delimiter {
                    break;
                } else {
                    value.push(c);
                }
                i += 1;
            }
        } else {
            while i < row.len() && row[i] != f.delimiter {
                value.push(row[i]);
                i += 1;
            }
        }
        if col == idx {
            let is_null = !quoted && value == f.null;
            if is_null {
                return Ok(None);
            }
            let v = if f.csv { value } else { unescape_text(&value) };
            return String::from_utf8(v)
                .map(Some)
                .map_err(|_| "the value is not UTF-8".into());
        }
        if i >= row.len() {
            return Err(format!(
                "the row has {} column(s), the shard key is column {}",
                col + 1,
                idx + 1
            ));
        }
        i += 1; // the delimiter
        col += 1;
    }
}

/// Text-format backslash escapes.
fn unescape_text(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' && i + 1 < v.len() {
            let c = v[i + 1];
            out.push(match c {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 8,
                b'f' => 12,
                b'v' => 11,
                other => other,
            });
            i += 2;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(f: &CopyFormat, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = RowSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(f, c, |r| out.push(r.to_vec()));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn rows_split_across_chunks() {
        let text = CopyFormat::new(false);
        assert_eq!(
            rows(&text, &[b"1\ta\n2\t", b"b\n3", b"\tc"]),
            vec![b"1\ta\n".to_vec(), b"2\tb\n".to_vec(), b"3\tc".to_vec()]
        );
        let csv = CopyFormat::new(true);
        assert_eq!(
            rows(&csv, &[b"1,\"multi\nline\"\n2,", b"\"x\"\"y\"\n"]),
            vec![b"1,\"multi\nline\"\n".to_vec(), b"2,\"x\"\"y\"\n".to_vec()]
        );
    }

    #[test]
    fn fields_in_text_and_csv() {
        let text = CopyFormat::new(false);
        assert_eq!(field(&text, b"42\tab\\tc\t\\N\n", 0), Ok(Some("42".into())));
        assert_eq!(field(&text, b"42\tab\\tc\t\\N\n", 1), Ok(Some("ab\tc".into())));
        assert_eq!(field(&text, b"42\tab\\tc\t\\N\n", 2), Ok(None));
        assert!(field(&text, b"42\n", 1).is_err());
        let csv = CopyFormat::new(true);
        assert_eq!(field(&csv, b"\"4,2\",x\r\n", 0), Ok(Some("4,2".into())));
        assert_eq!(field(&csv, b"1,\"a\"\"b\",,\"\"\n", 1), Ok(Some("a\"b".into())));
        assert_eq!(field(&csv, b"1,\"a\"\"b\",,\"\"\n", 2), Ok(None));
        assert_eq!(field(&csv, b"1,\"a\"\"b\",,\"\"\n", 3), Ok(Some(String::new())));
    }
}
