//! Password checks of the two MySQL auth plugins clients use, on the server side. The
//! scrambles are mysql_common's (the same code its client side logs in with).
//!
//! The proxy holds each user's password, so `caching_sha2_password` always succeeds or fails on
//! its fast path: the "full authentication" round (a cleartext password over TLS, or RSA on
//! plaintext) exists for servers whose cache lacks the user's hash, which never happens here.

use bytes::{BufMut, BytesMut};

/// `mysql_native_password`: SHA-1 scramble.
pub const NATIVE: &str = "mysql_native_password";
/// `caching_sha2_password`: SHA-256 scramble (MySQL 8's default).
pub const CACHING_SHA2: &str = "caching_sha2_password";

/// A 20-byte nonce of the printable bytes servers send (no NUL, which ends it in the handshake).
pub fn nonce() -> [u8; 20] {
    let mut n = [0u8; 20];
    for b in &mut n {
        *b = rand::random_range(b'!'..=b'~');
    }
    n
}

/// Whether `response` proves `password` under `plugin` for `nonce`. An empty password is proved
/// by an empty response, as servers do.
pub fn check(plugin: &str, nonce: &[u8], password: &str, response: &[u8]) -> bool {
    if password.is_empty() {
        return response.is_empty() || response == [0];
    }
    let expected: Option<Vec<u8>> = match plugin {
        NATIVE => mysql_common::scramble::scramble_native(nonce, password.as_bytes()).map(|s| s.to_vec()),
        CACHING_SHA2 => mysql_common::scramble::scramble_sha256(nonce, password.as_bytes()).map(|s| s.to_vec()),
        _ => None,
    };
    expected.is_some_and(|e| constant_time_eq(&e, response))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An AuthSwitchRequest payload: log in again with `plugin` and this nonce.
pub fn switch_request(plugin: &str, nonce: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(2 + plugin.len() + nonce.len() + 1);
    b.put_u8(0xFE);
    b.put_slice(plugin.as_bytes());
    b.put_u8(0);
    b.put_slice(nonce);
    b.put_u8(0);
    b
}

/// `caching_sha2_password`'s "fast authentication succeeded" (an OK packet follows).
pub const FAST_AUTH_OK: [u8; 2] = [0x01, 0x03];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrambles_check() {
        let n = nonce();
        assert!(n.iter().all(|b| (b'!'..=b'~').contains(b)));
        let native = mysql_common::scramble::scramble_native(&n, b"secret").unwrap();
        assert!(check(NATIVE, &n, "secret", &native));
        assert!(!check(NATIVE, &n, "other", &native));
        assert!(
            !check(CACHING_SHA2, &n, "secret", &native),
            "a scramble proves one plugin"
        );
        let sha = mysql_common::scramble::scramble_sha256(&n, b"secret").unwrap();
        assert!(check(CACHING_SHA2, &n, "secret", &sha));
        assert!(!check("mysql_clear_password", &n, "secret", b"secret"));
        assert!(check(NATIVE, &n, "", b""));
        assert!(!check(NATIVE, &n, "secret", b""));
    }
}
