//! Where a server's response to one command ends, read frame by frame so the relay can forward
//! frames as they come without decoding rows. Connections are opened without
//! CLIENT_DEPRECATE_EOF, so result sets end with EOF packets; a statement's results continue
//! while the last status says SERVER_MORE_RESULTS_EXISTS.

use super::{MAX_FRAME, StatusFlags, lenenc_int, parse_ok};

/// What the command was, which decides the response's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// COM_QUERY or COM_STMT_EXECUTE: OK, ERR or result sets (several with multi-statements).
    Query,
    /// COM_STMT_PREPARE: the prepare OK, parameter and column definitions.
    Prepare,
    /// OK or ERR only (COM_PING, COM_INIT_DB, COM_STMT_RESET, ...).
    Simple,
    /// COM_FIELD_LIST: column definitions up to an EOF, or ERR.
    FieldList,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Start,
    Columns(u64),
    ColumnsEof,
    Rows,
    Params { left: u64, columns: u64 },
    PrepColumns(u64),
    Done,
}

/// The malformed response of a server: the connection cannot be trusted any more.
#[derive(Debug, thiserror::Error)]
#[error("malformed response from the server: {0}")]
pub struct Malformed(&'static str);

/// A response in progress.
#[derive(Debug)]
pub struct Response {
    kind: Kind,
    state: State,
    continues: bool,
    /// Status flags of the last OK or EOF seen.
    pub status: StatusFlags,
    /// An OK or EOF with status flags was seen (an ERR or a prepare response has none).
    pub status_seen: bool,
    /// An ERR packet ended (part of) the response.
    pub failed: bool,
    /// Result sets seen (a statement that returned rows).
    pub result_sets: u32,
    /// Affected rows of the last OK.
    pub affected: u64,
    /// Last insert id of the last OK.
    pub last_insert_id: u64,
    /// Warnings of the last OK or EOF.
    pub warnings: u16,
    /// COM_STMT_PREPARE: the server's statement id, parameters and columns.
    pub prepared: Option<(u32, u16, u16)>,
}

impl Response {
    /// A response to a command of `kind`.
    pub fn new(kind: Kind) -> Response {
        Response {
            kind,
            state: if kind == Kind::FieldList {
                State::Columns(u64::MAX)
            } else {
                State::Start
            },
            continues: false,
            status: StatusFlags::empty(),
            status_seen: false,
            failed: false,
            result_sets: 0,
            affected: 0,
            last_insert_id: 0,
            warnings: 0,
            prepared: None,
        }
    }

    /// Whether the response is complete.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes one frame's payload; true when it was the response's last.
    pub fn feed(&mut self, p: &[u8]) -> Result<bool, Malformed> {
        let continuation = self.continues;
        self.continues = p.len() == MAX_FRAME;
        if continuation {
            // The rest of a long row: nothing to read in it.
            return Ok(false);
        }
        let first = *p.first().ok_or(Malformed("an empty packet"))?;
        let is_eof = first == 0xFE && p.len() < 9;
        self.state = match self.state {
            State::Done => return Err(Malformed("a packet after the response ended")),
            _ if first == 0xFF => {
                self.failed = true;
                State::Done
            }
            State::Start => match (self.kind, first) {
                (Kind::Prepare, 0x00) => {
                    let f = p.get(1..12).ok_or(Malformed("short prepare OK"))?;
                    let id = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
                    let columns = u16::from_le_bytes([f[4], f[5]]);
                    let params = u16::from_le_bytes([f[6], f[7]]);
                    self.warnings = u16::from_le_bytes([f[9], f[10]]);
                    self.prepared = Some((id, params, columns));
                    self.after_params(params as u64, columns as u64)
                }
                (Kind::Query | Kind::Simple, 0x00) | (Kind::Simple, 0xFE) => self.ok(p)?,
                (Kind::Query, 0xFB) => return Err(Malformed("LOCAL INFILE was not enabled")),
                (Kind::Query, _) => {
                    let (n, _) = lenenc_int(p).ok_or(Malformed("bad column count"))?;
                    if n == 0 {
                        return Err(Malformed("a result with no columns"));
                    }
                    self.result_sets += 1;
                    State::Columns(n)
                }
                _ => return Err(Malformed("an unexpected first packet")),
            },
            State::Columns(_) if self.kind == Kind::FieldList && is_eof => {
                self.eof(p);
                State::Done
            }
            State::Columns(1) => State::ColumnsEof,
            State::Columns(n) => State::Columns(n - 1),
            State::ColumnsEof if is_eof => {
                self.eof(p);
                State::Rows
            }
            State::ColumnsEof => return Err(Malformed("no EOF after the column definitions")),
            State::Rows if is_eof => {
                self.eof(p);
                self.next_result()
            }
            State::Rows => State::Rows,
            State::Params { left: 0, columns } if is_eof => self.after_params(0, columns),
            State::Params { left: 0, .. } => return Err(Malformed("no EOF after the parameters")),
            State::Params { left, columns } => State::Params {
                left: left - 1,
                columns,
            },
            State::PrepColumns(0) if is_eof => State::Done,
            State::PrepColumns(0) => return Err(Malformed("no EOF after the columns")),
            State::PrepColumns(n) => State::PrepColumns(n - 1),
        };
        Ok(self.state == State::Done)
    }

    fn after_params(&self, params: u64, columns: u64) -> State {
        match (params, columns) {
            (0, 0) => State::Done,
            (0, n) => State::PrepColumns(n),
            (left, columns) => State::Params { left, columns },
        }
    }

    fn ok(&mut self, p: &[u8]) -> Result<State, Malformed> {
        let (affected, last, status, warnings) = parse_ok(p).ok_or(Malformed("bad OK packet"))?;
        self.affected = affected;
        self.last_insert_id = last;
        self.status = status;
        self.status_seen = true;
        self.warnings = warnings;
        Ok(self.next_result())
    }

    fn eof(&mut self, p: &[u8]) {
        if p.len() >= 5 {
            self.warnings = u16::from_le_bytes([p[1], p[2]]);
            self.status = StatusFlags::from_bits_retain(u16::from_le_bytes([p[3], p[4]]));
            self.status_seen = true;
        }
    }

    fn next_result(&self) -> State {
        if self.kind == Kind::Query && self.status.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS) {
            State::Start
        } else {
            State::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::{ColumnDef, ColumnType, column_def, eof, err, ok, text_row};

    fn col() -> bytes::BytesMut {
        column_def(&ColumnDef {
            name: b"a",
            charset: 33,
            length: 10,
            kind: ColumnType::MYSQL_TYPE_VAR_STRING,
            flags: 0,
            decimals: 0,
        })
    }

    fn run(kind: Kind, packets: &[&[u8]]) -> (Vec<bool>, Response) {
        let mut r = Response::new(kind);
        let ends = packets.iter().map(|p| r.feed(p).unwrap()).collect();
        (ends, r)
    }

    #[test]
    fn result_sets_end_at_their_last_eof() {
        let more = StatusFlags::SERVER_MORE_RESULTS_EXISTS | StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        let row = text_row([Some(&b"x"[..])]);
        let owned: Vec<Vec<u8>> = vec![
            vec![1],
            col().to_vec(),
            eof(0, StatusFlags::empty()).to_vec(),
            row.to_vec(),
            row.to_vec(),
            eof(0, more).to_vec(),
            ok(2, 0, StatusFlags::SERVER_STATUS_IN_TRANS, 0, "").to_vec(),
        ];
        let refs: Vec<&[u8]> = owned.iter().map(|p| &p[..]).collect();
        let (ends, r) = run(Kind::Query, &refs);
        assert_eq!(ends, vec![false, false, false, false, false, false, true]);
        assert_eq!(r.result_sets, 1);
        assert_eq!(r.affected, 2);
        assert!(r.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS));
    }

    #[test]
    fn errors_end_at_once() {
        let e = err(1064, "42000", "syntax");
        let (ends, r) = run(Kind::Query, &[&e]);
        assert_eq!(ends, vec![true]);
        assert!(r.failed);
        let c = col();
        let end = eof(0, StatusFlags::empty());
        let (ends, _) = run(Kind::Query, &[&[1], &c, &end, &e]);
        assert_eq!(ends, vec![false, false, false, true]);
    }

    #[test]
    fn prepare_responses() {
        let mut head = vec![0u8; 12];
        head[1] = 9; // statement 9
        head[5] = 1; // one column
        head[7] = 2; // two parameters
        let c = col();
        let e = eof(0, StatusFlags::empty());
        let (ends, r) = run(Kind::Prepare, &[&head, &c, &c, &e, &c, &e]);
        assert_eq!(ends, vec![false, false, false, false, false, true]);
        assert_eq!(r.prepared, Some((9, 2, 1)));
        let mut none = vec![0u8; 12];
        none[1] = 1;
        assert_eq!(run(Kind::Prepare, &[&none]).0, vec![true]);
        head[5] = 0;
        assert_eq!(
            run(Kind::Prepare, &[&head, &c, &c, &e]).0,
            vec![false, false, false, true]
        );
    }

    #[test]
    fn nonsense_is_refused() {
        let mut r = Response::new(Kind::Query);
        assert!(r.feed(&[]).is_err());
        let mut r = Response::new(Kind::Simple);
        assert!(r.feed(&ok(0, 0, StatusFlags::empty(), 0, "")).unwrap());
        assert!(r.feed(&[0]).is_err());
    }
}
