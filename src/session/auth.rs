//! Client authentication: SCRAM-SHA-256 (server side), md5 and trust.
//!
//! postgres-protocol implements only the client side of SCRAM and pgwire's server side is tied to
//! its own handler traits, so the server side of the exchange (RFC 5802/7677 message parsing and
//! proof check) is written here over the `hmac` and `sha2` primitives; verifiers come from
//! postgres-protocol (`config::users`).

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::client::{ClientConn, SessionError};
use crate::config::{Auth, ScramVerifier, User};
use crate::protocol::pg::messages::{authentication, authentication_sasl};
use crate::protocol::pg::sqlstate::SqlState;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn failed(user: &str) -> SessionError {
    SessionError::Fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Runs the configured method to completion and sends AuthenticationOk.
pub async fn authenticate(client: &mut ClientConn, user: &User) -> Result<(), SessionError> {
    match &user.auth {
        Auth::Trust => {}
        Auth::Md5 { hash } => md5(client, user, hash).await?,
        Auth::Scram(v) => scram(client, user, v).await?,
    }
    authentication(&mut client.wbuf, 0, &[]);
    Ok(())
}

async fn password_message(client: &mut ClientConn) -> Result<bytes::Bytes, SessionError> {
    client.flush().await?;
    let f = client.read_frame().await?;
    if f.tag() != b'p' {
        return Err(SessionError::Fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("expected a password message, got message type '{}'", f.tag() as char),
        ));
    }
    Ok(f.raw().slice(5..))
}

async fn md5(client: &mut ClientConn, user: &User, hash: &str) -> Result<(), SessionError> {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    authentication(&mut client.wbuf, 5, &salt);
    let body = password_message(client).await?;
    let got = body.strip_suffix(b"\0").unwrap_or(&body);
    let mut m = md5::Md5::new();
    m.update(hash.as_bytes());
    m.update(salt);
    let want = format!("md5{:x}", m.finalize());
    if constant_time_eq(got, want.as_bytes()) {
        Ok(())
    } else {
        Err(failed(&user.name))
    }
}

async fn scram(client: &mut ClientConn, user: &User, v: &ScramVerifier) -> Result<(), SessionError> {
    let bad =
        |what: &str| SessionError::Fatal(SqlState::PROTOCOL_VIOLATION, format!("malformed SCRAM message: {what}"));
    authentication_sasl(&mut client.wbuf, &["SCRAM-SHA-256"]);
    let body = password_message(client).await?;
    let mut b = &body[..];
    let mechanism = crate::protocol::pg::codec::read_cstr(&mut b).ok_or_else(|| bad("mechanism"))?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(SessionError::Fatal(
            SqlState::INVALID_AUTHORIZATION,
            format!("unsupported SASL mechanism {mechanism}"),
        ));
    }
    if b.len() < 4 {
        return Err(bad("length"));
    }
    let client_first = std::str::from_utf8(&b[4..]).map_err(|_| bad("utf-8"))?;
    let first = ClientFirst::parse(client_first).ok_or_else(|| bad("client-first-message"))?;

    let mut nonce = [0u8; 18];
    rand::rng().fill_bytes(&mut nonce);
    let nonce = format!("{}{}", first.nonce, B64.encode(nonce));
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&v.salt), v.iterations);
    authentication(&mut client.wbuf, 11, server_first.as_bytes());

    let body = password_message(client).await?;
    let client_final = std::str::from_utf8(&body).map_err(|_| bad("utf-8"))?;
    let (without_proof, proof) = client_final
        .rsplit_once(",p=")
        .ok_or_else(|| bad("client-final-message"))?;
    let mut channel_binding = None;
    let mut final_nonce = None;
    for attr in without_proof.split(',') {
        match attr.split_at_checked(2) {
            Some(("c=", val)) => channel_binding = Some(val),
            Some(("r=", val)) => final_nonce = Some(val),
            _ => {}
        }
    }
    if channel_binding != Some(B64.encode(first.gs2_header).as_str()) || final_nonce != Some(nonce.as_str()) {
        return Err(failed(&user.name));
    }
    let proof = B64.decode(proof).map_err(|_| bad("proof"))?;
    let auth_message = format!("{},{server_first},{without_proof}", first.bare);
    let client_signature = hmac(&v.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Err(failed(&user.name));
    }
    let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
    if !constant_time_eq(&Sha256::digest(&client_key), &v.stored_key) {
        return Err(failed(&user.name));
    }
    let server_signature = hmac(&v.server_key, auth_message.as_bytes());
    authentication(
        &mut client.wbuf,
        12,
        format!("v={}", B64.encode(server_signature)).as_bytes(),
    );
    Ok(())
}

struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    nonce: &'a str,
}

impl<'a> ClientFirst<'a> {
    /// `n,,n=user,r=nonce` (or `y,,...`); channel binding (`p=`) is not offered, so not accepted.
    fn parse(s: &'a str) -> Option<ClientFirst<'a>> {
        let (flag, rest) = s.split_once(',')?;
        if flag != "n" && flag != "y" {
            return None;
        }
        let (authzid, bare) = rest.split_once(',')?;
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return None;
        }
        let gs2_header = &s[..flag.len() + authzid.len() + 2];
        let nonce = bare.split(',').find_map(|a| a.strip_prefix("r="))?;
        if nonce.is_empty() {
            return None;
        }
        Some(ClientFirst {
            gs2_header,
            bare,
            nonce,
        })
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_first_parses() {
        let f = ClientFirst::parse("n,,n=,r=abc").unwrap();
        assert_eq!((f.gs2_header, f.bare, f.nonce), ("n,,", "n=,r=abc", "abc"));
        assert!(ClientFirst::parse("p=tls-server-end-point,,n=,r=abc").is_none());
        assert!(ClientFirst::parse("n,,n=").is_none());
    }

    /// The proof check accepts what postgres-protocol's client computes and nothing else.
    #[test]
    fn scram_proof_matches_client_library() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let v = ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        let mut c = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let first_msg = String::from_utf8(c.message().to_vec()).unwrap();
        let first = ClientFirst::parse(&first_msg).unwrap();
        let server_first = format!("r={}srv,s={},i={}", first.nonce, B64.encode(&v.salt), v.iterations);
        c.update(server_first.as_bytes()).unwrap();
        let fin = String::from_utf8(c.message().to_vec()).unwrap();
        let (without_proof, proof) = fin.rsplit_once(",p=").unwrap();
        let auth_message = format!("{},{server_first},{without_proof}", first.bare);
        let sig = hmac(&v.stored_key, auth_message.as_bytes());
        let key: Vec<u8> = B64
            .decode(proof)
            .unwrap()
            .iter()
            .zip(&sig)
            .map(|(a, b)| a ^ b)
            .collect();
        assert!(constant_time_eq(&Sha256::digest(&key), &v.stored_key));
        let server_sig = hmac(&v.server_key, auth_message.as_bytes());
        c.finish(format!("v={}", B64.encode(server_sig)).as_bytes()).unwrap();
    }
}
