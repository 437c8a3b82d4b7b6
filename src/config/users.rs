//! `[[users]]`: logins and their secrets. Apart from the other sections because this is where
//! secrets are made: a plain password becomes a SCRAM verifier (postgres-protocol's, with the
//! server's salt size and iteration count) or an md5 hash once, at load, and the plain text is
//! kept only where MySQL logins need it.

use super::raw::RawUser;
use super::typed::{Auth, ScramVerifier, User};
use super::{ConfigError, err};

pub(super) fn user(path: &str, u: &RawUser, ryw_default: bool) -> Result<User, ConfigError> {
    if u.name.is_empty() {
        return Err(err(format!("{path}.name"), "must not be empty"));
    }
    let method = u.auth.as_deref().unwrap_or("scram-sha-256");
    let password = u.password.as_deref();
    let need = || err(format!("{path}.password"), format!("auth `{method}` needs a password"));
    let auth = match method {
        "trust" => Auth::Trust,
        "scram-sha-256" => {
            let pw = password.ok_or_else(need)?;
            if pw.starts_with("SCRAM-SHA-256$") {
                Auth::Scram(
                    ScramVerifier::parse(pw)
                        .ok_or_else(|| err(format!("{path}.password"), "malformed SCRAM-SHA-256 verifier"))?,
                )
            } else if pw.starts_with("md5") && pw.len() == 35 {
                return Err(err(
                    format!("{path}.password"),
                    "an md5 hash cannot be used for scram-sha-256; give the password or a SCRAM verifier",
                ));
            } else {
                // Verifier generation is postgres-protocol's: same salt size and iteration count as the server.
                let v = postgres_protocol::password::scram_sha_256(pw.as_bytes());
                Auth::Scram(ScramVerifier::parse(&v).expect("postgres-protocol produces a well-formed verifier"))
            }
        }
        "md5" => {
            let pw = password.ok_or_else(need)?;
            let hash = match pw.strip_prefix("md5") {
                Some(h) if h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) => h.to_ascii_lowercase(),
                _ => {
                    use md5::{Digest, Md5};
                    let mut m = Md5::new();
                    m.update(pw.as_bytes());
                    m.update(u.name.as_bytes());
                    format!("{:x}", m.finalize())
                }
            };
            Auth::Md5 { hash }
        }
        other => {
            return Err(err(
                format!("{path}.auth"),
                format!("`{other}` is not one of \"scram-sha-256\", \"md5\", \"trust\""),
            ));
        }
    };
    let mysql_password = match (&auth, password) {
        (Auth::Trust, _) => Some(String::new()),
        (_, Some(pw)) if !(pw.starts_with("SCRAM-SHA-256$") || pw.starts_with("md5") && pw.len() == 35) => {
            Some(pw.to_owned())
        }
        _ => None,
    };
    Ok(User {
        name: u.name.clone(),
        mysql_password,
        auth,
        admin: u.admin,
        read_your_writes: u.read_your_writes.unwrap_or(ryw_default),
    })
}
