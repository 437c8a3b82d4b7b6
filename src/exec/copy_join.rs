//! Binary COPY output of several shards joined into one stream. Each shard's binary COPY starts
//! with a header (signature, flags, header extension) and ends with a trailer (a field count of
//! -1); one database sends one of each. The joined stream keeps the first shard's header, drops
//! the others' headers and every trailer, and ends with one trailer. Data arrives in chunks cut
//! anywhere, so the header is collected until whole and the last two bytes of each chunk are held
//! back until the next one shows they were not the trailer.

/// The fixed part of the header: signature (11 bytes), flags (4), extension length (4).
const FIXED_HEADER: usize = 19;

/// The trailer: a 16-bit field count of -1.
pub const TRAILER: [u8; 2] = [0xff, 0xff];

/// Joins the binary COPY streams of several shards, one after another.
#[derive(Default)]
pub struct BinaryJoin {
    /// The shard being read is the first.
    first: bool,
    /// Header bytes of the current shard collected so far, while it is incomplete.
    header: Vec<u8>,
    /// The current shard's header has been passed.
    in_body: bool,
    /// The last bytes of the current shard's body, held back (at most two).
    held: Vec<u8>,
}

impl BinaryJoin {
    /// A join whose next stream is the first.
    pub fn new() -> BinaryJoin {
        BinaryJoin {
            first: true,
            ..BinaryJoin::default()
        }
    }

    /// The next chunk of the current shard's stream; what of it to send now goes to `out`.
    /// `Err` when the stream does not start with a binary COPY header.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut chunk = chunk;
        if !self.in_body {
            let want = match self.header.len() {
                n if n < FIXED_HEADER => FIXED_HEADER - n,
                _ => 0,
            };
            let take = want.min(chunk.len());
            self.header.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.header.len() < FIXED_HEADER {
                return Ok(());
            }
            if !self.header.starts_with(b"PGCOPY\n\xff\r\n\0") {
                return Err("a shard's binary COPY output has no binary COPY header".into());
            }
            let ext = u32::from_be_bytes([self.header[15], self.header[16], self.header[17], self.header[18]]) as usize;
            let total = FIXED_HEADER.saturating_add(ext);
            let take = (total - self.header.len()).min(chunk.len());
            self.header.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.header.len() < total {
                return Ok(());
            }
            if self.first {
                out.extend_from_slice(&self.header);
            }
            self.header.clear();
            self.in_body = true;
        }
        self.held.extend_from_slice(chunk);
        let keep = self.held.len().saturating_sub(TRAILER.len());
        out.extend_from_slice(&self.held[..keep]);
        self.held.drain(..keep);
        Ok(())
    }

    /// The current shard's stream ended; the next one is another shard's. `Err` when it did not
    /// end with the trailer.
    pub fn end_of_shard(&mut self) -> Result<(), String> {
        let whole = self.in_body && self.held == TRAILER;
        self.first = false;
        self.in_body = false;
        self.header.clear();
        self.held.clear();
        match whole {
            true => Ok(()),
            false => Err("a shard's binary COPY output ended without its trailer".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(ext: &[u8], rows: &[&[u8]]) -> Vec<u8> {
        let mut s = b"PGCOPY\n\xff\r\n\0".to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&(ext.len() as u32).to_be_bytes());
        s.extend_from_slice(ext);
        for r in rows {
            s.extend_from_slice(r);
        }
        s.extend_from_slice(&TRAILER);
        s
    }

    /// One row of one int4 field.
    fn row(v: i32) -> Vec<u8> {
        let mut r = 1i16.to_be_bytes().to_vec();
        r.extend_from_slice(&4i32.to_be_bytes());
        r.extend_from_slice(&v.to_be_bytes());
        r
    }

    #[test]
    fn streams_join_into_one_header_rows_and_one_trailer_whatever_the_chunks() {
        let (r1, r2, r3) = (row(1), row(-1), row(3));
        // The second shard's row holds 0xffff where a trailer could be mistaken for it.
        let shards = [stream(b"", &[&r1]), stream(b"xyz", &[&r2, &r3]), stream(b"", &[])];
        let mut want = stream(b"", &[&r1, &r2, &r3]);
        want.truncate(want.len() - 2);
        for size in [1, 2, 3, 7, 19, 20, 1000] {
            let mut j = BinaryJoin::new();
            let mut out = Vec::new();
            for s in &shards {
                for c in s.chunks(size) {
                    j.feed(c, &mut out).unwrap();
                }
                j.end_of_shard().unwrap();
            }
            assert_eq!(out, want, "chunks of {size}");
        }
    }

    #[test]
    fn a_stream_without_header_or_trailer_is_an_error() {
        let mut j = BinaryJoin::new();
        assert!(j.feed(b"1\t2\n3\t4\n5\t6\n7\t8\n9\t10\n", &mut Vec::new()).is_err());
        let mut j = BinaryJoin::new();
        let mut s = stream(b"", &[&row(1)]);
        s.truncate(s.len() - 2);
        j.feed(&s, &mut Vec::new()).unwrap();
        assert!(j.end_of_shard().is_err());
    }
}
