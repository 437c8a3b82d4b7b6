//! Random and mutated client input through every frontend decoder: each returns a value or an
//! error, never panics, and a frame never claims more than the buffer holds. `FUZZ_INPUTS`
//! (default 200,000) sets how many inputs; `FUZZ_INPUTS=1000000 cargo test --lib fuzz` is the
//! documented long run.

use bytes::{Bytes, BytesMut};

use super::codec::{decode_frame, decode_startup};
use super::messages::{parse_bind, parse_execute, parse_parse, parse_query, parse_target};
use super::rows::split_bind;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Well-formed messages to start mutations from.
fn seeds() -> Vec<Vec<u8>> {
    let msg = |tag: u8, body: &[u8]| {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    };
    vec![
        msg(b'Q', b"SELECT 1\0"),
        msg(b'P', b"s1\0SELECT $1::int\0\0\x01\0\0\0\x17"),
        msg(b'B', b"p\0s1\0\0\x01\0\0\0\x01\0\0\0\x011\0\x01\0\x01"),
        msg(b'E', b"p\0\0\0\0\0"),
        msg(b'D', b"Ss1\0"),
        msg(b'C', b"Pp\0"),
        msg(b'S', b""),
        msg(b'd', b"1\tone\n"),
        {
            let mut s = Vec::new();
            s.extend_from_slice(&196_608i32.to_be_bytes());
            s.extend_from_slice(b"user\0app\0database\0app\0\0");
            let mut m = (s.len() as i32 + 4).to_be_bytes().to_vec();
            m.extend_from_slice(&s);
            m
        },
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m.truncate(i);
            }
            2 => {
                let n = rng.below(16);
                m.extend((0..n).map(|_| rng.next() as u8));
            }
            3 if m.len() >= 5 => {
                // A length field that lies.
                let len = [0, 3, 4, 5, i32::MAX, -1, rng.next() as i32][rng.below(7)];
                m[1..5].copy_from_slice(&len.to_be_bytes());
            }
            4 if !m.is_empty() => {
                let i = rng.below(m.len());
                m.insert(i, 0);
            }
            _ => m = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        }
    }
    m
}

fn decode_all(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    let _ = decode_startup(&mut buf.clone());
    while let Ok(Some(frame)) = decode_frame(&mut buf, 1 << 20) {
        let body = frame.body();
        assert!(frame.raw().len() >= 5);
        let _ = parse_query(body);
        let _ = parse_parse(body);
        let _ = parse_bind(body);
        let _ = parse_execute(body);
        let _ = parse_target(body, "Describe");
        let _ = split_bind(&Bytes::copy_from_slice(body));
    }
}

#[test]
fn no_input_panics_a_decoder() {
    let n: usize = std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seeds = seeds();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..n {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        decode_all(&input);
    }
}
