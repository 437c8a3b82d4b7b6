//! Accepting a MySQL client: the v10 handshake, TLS when configured (SSLRequest), the password
//! check under `mysql_native_password` or `caching_sha2_password` (switching an unknown plugin
//! to the native one), the database asked for, then the session.

use std::sync::Arc;
use std::time::Duration;

use mysql_common::io::ParseBuf;
use mysql_common::packets::{HandshakePacket, HandshakeResponse};
use mysql_common::proto::{MyDeserialize, MySerialize};

use super::{ClientConn, ClientError};
use crate::app::Shared;
use crate::backend::mysql::conn::CAPABILITIES;
use crate::config::TlsMode;
use crate::net::Stream;
use crate::protocol::mysql::{CapabilityFlags, StatusFlags, auth, code, ok};

/// A client must finish its login within this time.
pub(super) const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// utf8mb4_general_ci, the collation announced in the handshake.
const DEFAULT_COLLATION: u8 = 45;

/// Who logged in.
pub(super) struct Login {
    pub user: Arc<crate::config::User>,
    pub db: String,
    /// `SET NAMES` for the character set the client asked for in its handshake, when it is not
    /// the servers' connections' own (utf8mb4).
    pub names: Option<String>,
    /// The client asked for CLIENT_MULTI_STATEMENTS.
    pub multi_statements: bool,
}

pub(super) async fn login(
    mut client: ClientConn,
    id: u32,
    shared: &Shared,
) -> Result<(ClientConn, Option<Login>), ClientError> {
    let rt = shared.runtime.load_full();
    let cfg = &rt.config;
    let tls = cfg.server.tls.clone();
    let mut caps = CAPABILITIES | CapabilityFlags::CLIENT_CONNECT_ATTRS;
    if tls.is_some() {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    let nonce = auth::nonce();
    let version = rt
        .mysql
        .get(cfg.map.default_shard)
        .and_then(|s| s.primary.server_version().map(str::to_owned))
        .unwrap_or_else(|| "8.0.0-shardwire".into());
    // The second part of the nonce carries its NUL: clients read max(13, length - 8) bytes.
    let mut tail = nonce[8..].to_vec();
    tail.push(0);
    let hello = HandshakePacket::new(
        10,
        version.as_bytes(),
        id,
        nonce[..8].try_into().expect("8 bytes"),
        Some(tail.as_slice()),
        caps,
        DEFAULT_COLLATION,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(cfg.server.mysql_auth.as_bytes()),
    );
    let mut payload = Vec::new();
    hello.serialize(&mut payload);
    let mut seq = 0u8;
    client.put(&mut seq, &payload);
    client.flush().await?;
    let Some((s, mut p)) = client.packet().await? else {
        return Ok((client, None));
    };
    seq = s.wrapping_add(1);
    // SSLRequest: the first 32 bytes of a handshake response, with CLIENT_SSL, and nothing else.
    if p.len() == 32 && u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & CapabilityFlags::CLIENT_SSL.bits() != 0 {
        let Some(t) = &tls else {
            client
                .refuse(code::ACCESS_DENIED, "28000", "TLS is not configured")
                .await;
            return Ok((client, None));
        };
        let Stream::Plain(sock) = client.stream else {
            return Err(ClientError::Protocol("a second SSLRequest".into()));
        };
        let tls_sock = crate::net::tls::TlsSocket::accept_after(sock, t.server.clone(), &client.rbuf).await?;
        client = ClientConn::new(Stream::Tls(Box::new(tls_sock)), client.max_packet);
        let Some((s, q)) = client.packet().await? else {
            return Ok((client, None));
        };
        seq = s.wrapping_add(1);
        p = q;
    }
    let deny = |client: &mut ClientConn, seq: u8, msg: String| {
        let mut s = seq;
        client.put(&mut s, &crate::protocol::mysql::err(code::ACCESS_DENIED, "28000", &msg));
    };
    if tls.as_ref().is_some_and(|t| t.mode == TlsMode::Require) && !client.stream.is_tls() {
        deny(
            &mut client,
            seq,
            "TLS is required (server.tls.mode = \"require\"): connect with --ssl".into(),
        );
        client.flush().await?;
        return Ok((client, None));
    }
    let resp = match HandshakeResponse::deserialize((), &mut ParseBuf(&p)) {
        Ok(r) => r,
        Err(e) => {
            deny(&mut client, seq, format!("malformed handshake response: {e}"));
            client.flush().await?;
            return Ok((client, None));
        }
    };
    let user_name = String::from_utf8_lossy(resp.user()).into_owned();
    let multi_statements = resp.capabilities().contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS);
    let charset =
        mysql_common::collations::Collation::from(mysql_common::collations::CollationId::from(resp.collation() as u16))
            .charset()
            .to_owned();
    let names = (charset != "utf8mb4" && !charset.is_empty()).then(|| format!("SET NAMES {charset}"));
    let db = resp
        .db_name()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .filter(|d| !d.is_empty());
    let plugin = resp
        .auth_plugin()
        .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
        .unwrap_or_else(|| cfg.server.mysql_auth.to_owned());
    let mut response = resp.scramble_buf().to_vec();
    let mut nonce = nonce.to_vec();
    let mut checked = plugin.clone();
    if plugin != auth::NATIVE && plugin != auth::CACHING_SHA2 {
        // A plugin the proxy does not speak: ask for the native one, with a fresh nonce.
        let fresh = auth::nonce();
        client.put(&mut seq, &auth::switch_request(auth::NATIVE, &fresh));
        client.flush().await?;
        let Some((s, q)) = client.packet().await? else {
            return Ok((client, None));
        };
        seq = s.wrapping_add(1);
        response = q.to_vec();
        nonce = fresh.to_vec();
        checked = auth::NATIVE.to_owned();
    }
    let denied = format!(
        "Access denied for user '{user_name}' (using password: {})",
        if response.is_empty() { "NO" } else { "YES" }
    );
    let user = cfg.users.get(&user_name).cloned();
    let good = user
        .as_ref()
        .and_then(|u| u.mysql_password.as_deref())
        .is_some_and(|pw| auth::check(&checked, &nonce, pw, &response));
    tracing::debug!(user = %user_name, plugin = %checked, good, tls = client.stream.is_tls(), "MySQL login");
    let (Some(user), true) = (user, good) else {
        tokio::time::sleep(Duration::from_millis(100)).await;
        deny(&mut client, seq, denied);
        client.flush().await?;
        return Ok((client, None));
    };
    if checked == auth::CACHING_SHA2 {
        client.put(&mut seq, &auth::FAST_AUTH_OK);
    }
    let db = match db {
        Some(d) => d,
        None => cfg.server.database.clone(),
    };
    client.put(&mut seq, &ok(0, 0, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 0, ""));
    client.flush().await?;
    Ok((
        client,
        Some(Login {
            user,
            db,
            names,
            multi_statements,
        }),
    ))
}

/// COM_CHANGE_USER: the user, checked with a fresh native-password nonce (an auth switch every
/// client handles), and the database asked for. `None` when refused (the client was told).
pub(super) async fn change_user(
    client: &mut ClientConn,
    payload: &[u8],
    shared: &Shared,
) -> Result<Option<(Arc<crate::config::User>, Option<String>)>, ClientError> {
    // 0x11, user NUL, auth data (length-prefixed), database NUL, then charset and plugin.
    let body = &payload[1..];
    let Some(end) = body.iter().position(|&b| b == 0) else {
        client
            .refuse(code::MALFORMED, "HY000", "Malformed communication packet")
            .await;
        return Ok(None);
    };
    let user_name = String::from_utf8_lossy(&body[..end]).into_owned();
    let rest = &body[end + 1..];
    let auth_len = rest.first().copied().unwrap_or(0) as usize;
    let rest = rest.get(1 + auth_len..).unwrap_or_default();
    let db = rest
        .iter()
        .position(|&b| b == 0)
        .map(|e| String::from_utf8_lossy(&rest[..e]).into_owned())
        .filter(|d| !d.is_empty());
    let nonce = auth::nonce();
    let mut seq = client.reply_seq;
    client.put(&mut seq, &auth::switch_request(auth::NATIVE, &nonce));
    client.flush().await?;
    let Some((s, response)) = client.packet().await? else {
        return Err(ClientError::Protocol("closed during COM_CHANGE_USER".into()));
    };
    seq = s.wrapping_add(1);
    let cfg = shared.runtime.load().config.clone();
    let user = cfg.users.get(&user_name).cloned();
    let good = user
        .as_ref()
        .and_then(|u| u.mysql_password.as_deref())
        .is_some_and(|pw| auth::check(auth::NATIVE, &nonce, pw, &response));
    match (user, good) {
        (Some(u), true) => Ok(Some((u, db))),
        _ => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let msg = format!("Access denied for user '{user_name}'");
            client.put(
                &mut seq,
                &crate::protocol::mysql::err(code::ACCESS_DENIED, "28000", &msg),
            );
            Ok(None)
        }
    }
}
