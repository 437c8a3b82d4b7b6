//! GTID positions of MySQL and MariaDB, compared to tell whether a replica has applied everything
//! a primary had committed at some moment (read-your-writes without asking the primary per
//! write).
//!
//! MariaDB (`@@gtid_binlog_pos`, `@@gtid_slave_pos`): `domain-server-seq` per replication
//! domain, comma separated; within a domain sequence numbers only grow, so a replica holds a
//! position when its sequence in every domain is at least the primary's.
//! MySQL (`@@gtid_executed`): `uuid:1-5:7,uuid2:1-3`, sets of transaction numbers per source;
//! a replica holds a position when the primary's set is a subset of its own.

use std::collections::HashMap;

/// A parsed position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gtid {
    /// MariaDB: highest sequence number per domain.
    Maria(HashMap<u32, u64>),
    /// MySQL: transaction number intervals (inclusive) per source uuid.
    MySql(HashMap<String, Vec<(u64, u64)>>),
}

/// Parses either format (empty text is an empty position). `None` when it is neither.
pub fn parse(text: &str) -> Option<Gtid> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if text.is_empty() {
        return Some(Gtid::Maria(HashMap::new()));
    }
    if text.contains(':') {
        let mut sets = HashMap::new();
        for part in text.split(',') {
            let mut it = part.split(':');
            let uuid = it.next()?.to_ascii_lowercase();
            let mut ranges = Vec::new();
            for r in it {
                let (a, b) = match r.split_once('-') {
                    Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                    None => {
                        let v = r.parse().ok()?;
                        (v, v)
                    }
                };
                ranges.push((a, b));
            }
            sets.entry(uuid).or_insert_with(Vec::new).extend(ranges);
        }
        return Some(Gtid::MySql(sets));
    }
    let mut domains = HashMap::new();
    for part in text.split(',') {
        let mut it = part.split('-');
        let domain: u32 = it.next()?.parse().ok()?;
        let _server: u32 = it.next()?.parse().ok()?;
        let seq: u64 = it.next()?.parse().ok()?;
        if it.next().is_some() {
            return None;
        }
        let e = domains.entry(domain).or_insert(0);
        *e = (*e).max(seq);
    }
    Some(Gtid::Maria(domains))
}

/// Whether a replica at `replica` has applied everything in `primary`.
pub fn covers(replica: &Gtid, primary: &Gtid) -> bool {
    match (replica, primary) {
        (_, Gtid::Maria(p)) if p.is_empty() => true,
        (Gtid::Maria(r), Gtid::Maria(p)) => p.iter().all(|(d, s)| r.get(d).is_some_and(|rs| rs >= s)),
        (Gtid::MySql(r), Gtid::MySql(p)) => p.iter().all(|(uuid, ranges)| {
            let have = r.get(uuid).map(Vec::as_slice).unwrap_or_default();
            ranges.iter().all(|&(a, b)| contains(have, a, b))
        }),
        _ => false,
    }
}

fn contains(have: &[(u64, u64)], a: u64, b: u64) -> bool {
    // Walk the numbers a..=b through the replica's intervals (which may be unsorted or adjacent).
    let mut next = a;
    loop {
        match have.iter().find(|&&(x, y)| x <= next && next <= y) {
            Some(&(_, y)) if y >= b => return true,
            Some(&(_, y)) => next = y + 1,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_positions() {
        let p = parse("0-1-10,1-1-5").unwrap();
        assert!(covers(&parse("0-1-10,1-2-7").unwrap(), &p));
        assert!(!covers(&parse("0-1-9,1-1-5").unwrap(), &p));
        assert!(!covers(&parse("0-1-10").unwrap(), &p), "a domain missing");
        assert!(covers(&parse("").unwrap(), &parse("").unwrap()));
        assert!(covers(&parse("0-1-3").unwrap(), &parse("").unwrap()));
        assert!(parse("0-1").is_none());
        assert!(parse("a-b-c").is_none());
    }

    #[test]
    fn mysql_positions() {
        let p = parse("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7,\n aaaa:1-2").unwrap();
        assert!(covers(
            &parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-3:4-9,aaaa:1-10").unwrap(),
            &p
        ));
        assert!(!covers(
            &parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,aaaa:1-10").unwrap(),
            &p
        ));
        assert!(!covers(&parse("aaaa:1-10").unwrap(), &p));
        assert!(!covers(&parse("0-1-5").unwrap(), &p), "formats do not mix");
        assert!(parse("uuid:x-3").is_none());
    }
}
