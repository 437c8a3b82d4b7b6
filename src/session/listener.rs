//! Accepting clients: the startup packet (TLS when configured, GSS encryption declined, cancel
//! requests forwarded), login, the greeting (ParameterStatus, BackendKeyData, ReadyForQuery),
//! then the data-path session or the admin console.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Session;
use super::client::{ClientConn, SessionError};
use super::state::{SessionVars, parse_options};
use crate::app::Shared;
use crate::config::{TlsConfig, TlsMode};
use crate::protocol::pg::codec::decode_startup;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::sqlstate::SqlState;
use crate::protocol::pg::{ProtocolError, StartupPacket};

/// A client must finish its startup and login within this time.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Database name of the admin console.
pub const ADMIN_DATABASE: &str = "shardwire";

/// Accepts clients until `shutdown` fires. Then sessions without a transaction in progress close
/// (57P01), the others finish their transaction first; whatever is left when
/// `server.shutdown_timeout` runs out is cut off.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let grace_of = shared.clone();
    crate::net::accept::serve(
        listener,
        shutdown.clone(),
        move || grace_of.runtime.load().config.server.shutdown_timeout,
        move |stream, addr| {
            let shared = shared.clone();
            let soft = shutdown.clone();
            async move {
                if let Err(e) = handle(stream, addr, shared, soft).await {
                    tracing::debug!(%addr, error = %e, "client session ended with an error");
                }
            }
        },
    )
    .await;
}

async fn handle(
    stream: TcpStream,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    let (max_message, tls) = {
        let runtime = shared.runtime.load();
        (
            runtime.config.server.max_message_size,
            runtime.config.server.tls.clone(),
        )
    };
    let mut client = ClientConn::new(stream, BytesMut::with_capacity(1024), max_message)?;
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let params = loop {
        match tokio::time::timeout_at(deadline, read_startup(&mut client, tls.as_ref())).await {
            Err(_) => return Ok(()),
            Ok(Err(e @ SessionError::Protocol(_))) => {
                if let Some((code, m)) = e.fatal_message() {
                    client.fatal(code, &m).await;
                }
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(Startup::Cancel { pid, secret }))) => {
                shared.clients.cancel(pid, secret).await;
                return Ok(());
            }
            Ok(Ok(Some(Startup::Tls(config)))) => {
                client = match tokio::time::timeout_at(deadline, client.into_tls(config)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "TLS handshake failed");
                        return Ok(());
                    }
                    Err(_) => return Ok(()),
                };
            }
            Ok(Ok(Some(Startup::Params(p)))) => break p,
        }
    };
    if tls.as_ref().is_some_and(|t| t.mode == TlsMode::Require) && !client.sock.is_tls() {
        let m = format!(
            "connection from {} without TLS refused: server.tls.mode is \"require\" (connect with sslmode=require)",
            addr.ip()
        );
        client.fatal(SqlState::INVALID_AUTHORIZATION, &m).await;
        return Ok(());
    }
    match tokio::time::timeout(STARTUP_TIMEOUT, login(&mut client, &params, addr, &shared)).await {
        Err(_) => {
            client.fatal(SqlState::PROTOCOL_VIOLATION, "login took too long").await;
            Ok(())
        }
        Ok(Err(e)) => {
            if let Some((code, m)) = e.fatal_message() {
                client.fatal(code, &m).await;
            }
            Err(e)
        }
        Ok(Ok(Login::Admin(user))) => tokio::select! {
            r = super::admin::run(client, user, shared) => r,
            () = shutdown.cancelled() => Ok(()),
        },
        Ok(Ok(Login::Session(ok))) => {
            let LoginOk {
                user,
                vars,
                handle,
                runtime,
            } = *ok;
            let session = Session {
                shared,
                client,
                handle,
                user,
                runtime,
                vars,
                stmts: Default::default(),
                unnamed: None,
                portals: Default::default(),
                held: None,
                spare: None,
                pinned: None,
                ending: None,
                retry: Default::default(),
                retrying: false,
                replay: Default::default(),
                between_batches: true,
                ryw: Default::default(),
                ignore_till_sync: false,
                stalled: None,
                last_facts: None,
                vars_before_txn: None,
                pending_begin: None,
                parked: Vec::new(),
                tx_begin: None,
                tx_read_only: false,
                lent_from: None,
                switch_wait: false,
                implicit_multi: false,
                script: None,
                capture: None,
                rollback_at_sync: false,
                ddl_in_tx: false,
                tx_refused: false,
                multi_portal: None,
                early: Default::default(),
                local_portal: None,
                shutdown: Box::pin(shutdown.cancelled_owned()),
            };
            session.run().await
        }
    }
}

enum Startup {
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// The client asked for TLS and was told yes ('S'): the handshake comes next.
    Tls(Arc<rustls::ServerConfig>),
    Params(Vec<(String, String)>),
}

async fn read_startup(client: &mut ClientConn, tls: Option<&TlsConfig>) -> Result<Option<Startup>, SessionError> {
    loop {
        match decode_startup(&mut client.rbuf)? {
            Some(StartupPacket::SslRequest) if client.sock.is_tls() => {
                return Err(ProtocolError::OutOfOrder("SSLRequest on a connection that is already encrypted").into());
            }
            Some(StartupPacket::SslRequest) => match tls {
                Some(t) => {
                    // Bytes sent before the handshake would be read as if they had been encrypted
                    // (CVE-2021-23214): refuse them, as PostgreSQL does.
                    if !client.rbuf.is_empty() {
                        return Err(ProtocolError::OutOfOrder("received unencrypted data after SSL request").into());
                    }
                    client.sock.write_all(b"S").await?;
                    return Ok(Some(Startup::Tls(t.server.clone())));
                }
                // Not offered: the client goes on unencrypted or gives up, as it chooses.
                None => client.sock.write_all(b"N").await?,
            },
            // GSSAPI encryption is not offered.
            Some(StartupPacket::GssEncRequest) => client.sock.write_all(b"N").await?,
            Some(StartupPacket::Cancel { pid, secret }) => return Ok(Some(Startup::Cancel { pid, secret })),
            Some(StartupPacket::Startup { params }) => return Ok(Some(Startup::Params(params))),
            None => {
                if client.sock.read_some(&mut client.rbuf, 1024).await? == 0 {
                    return Ok(None);
                }
            }
        }
    }
}

enum Login {
    Admin(Arc<crate::config::User>),
    Session(Box<LoginOk>),
}

struct LoginOk {
    user: Arc<crate::config::User>,
    vars: SessionVars,
    handle: Arc<crate::app::clients::ClientHandle>,
    runtime: Arc<crate::app::Runtime>,
}

async fn login(
    client: &mut ClientConn,
    params: &[(String, String)],
    addr: std::net::SocketAddr,
    shared: &Arc<Shared>,
) -> Result<Login, SessionError> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let user_name = get("user").ok_or_else(|| {
        SessionError::Fatal(
            SqlState::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet".into(),
        )
    })?;
    let database = get("database").filter(|d| !d.is_empty()).unwrap_or(user_name);
    if get("replication").is_some_and(|v| !matches!(v, "false" | "off" | "0" | "no")) {
        return Err(SessionError::Fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through shardwire".into(),
        ));
    }
    let runtime = shared.runtime.load_full();
    let config = &runtime.config;
    if shared.clients.len() >= config.server.max_client_connections {
        return Err(SessionError::Fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already".into(),
        ));
    }
    let user = config.users.get(user_name).cloned().ok_or_else(|| {
        SessionError::Fatal(
            SqlState::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user_name}\""),
        )
    })?;
    if database != ADMIN_DATABASE
        && let Some(my) = config.server.mysql_listen
    {
        return Err(SessionError::Fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!("this shardwire serves MySQL shards: connect with a MySQL client to {my}"),
        ));
    }
    if database != ADMIN_DATABASE && database != config.server.database {
        return Err(SessionError::Fatal(
            SqlState::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ));
    }
    super::auth::authenticate(client, &user).await?;
    if database == ADMIN_DATABASE {
        if !user.admin {
            return Err(SessionError::Fatal(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!("user \"{user_name}\" may not use the admin console (set admin = true for it)"),
            ));
        }
        for (k, v) in [
            ("server_version", "15.0 (shardwire)"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            msg::parameter_status(&mut client.wbuf, k, v);
        }
        msg::backend_key_data(&mut client.wbuf, 0, 0);
        msg::ready_for_query(&mut client.wbuf, b'I');
        client.flush().await?;
        return Ok(Login::Admin(user));
    }
    let server_params = match runtime.default_cluster().server_params() {
        Some(p) => p,
        None => {
            // The first client of a fresh cluster: learn what the server reports from a real connection.
            let c = runtime.default_cluster().writer().checkout().await.map_err(|e| {
                SessionError::Fatal(
                    SqlState::CONNECTION_FAILURE,
                    format!(
                        "cannot reach the primary of shard {}: {e}",
                        runtime.default_cluster().name
                    ),
                )
            })?;
            runtime.default_cluster().learn_server_params(&c.conn.params);
            runtime.default_cluster().server_params().unwrap_or_default()
        }
    };
    let mut vars = SessionVars::default();
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => parse_options(v).iter().for_each(|(k, v)| vars.apply_startup(k, v)),
            _ => vars.apply_startup(k, v),
        }
    }
    let app = get("application_name").unwrap_or("");
    if get("application_name").is_none() {
        // The server connections shardwire opens are named after it; a client that names
        // itself nothing sees an empty name, as on the server.
        vars.apply_startup("application_name", "");
    }
    for (name, value) in server_params.iter() {
        let own = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let shown = match (name.as_str(), own) {
            ("client_encoding", Some(v)) => super::state::canonical_encoding(v),
            ("application_name", None) => String::new(),
            (_, own) => own.unwrap_or(value).to_owned(),
        };
        msg::parameter_status(&mut client.wbuf, name, &shown);
    }
    let handle = shared
        .clients
        .register(user_name, database, app, addr, client.sock.tls_description());
    msg::backend_key_data(&mut client.wbuf, handle.pid, handle.secret);
    msg::ready_for_query(&mut client.wbuf, b'I');
    client.flush().await?;
    Ok(Login::Session(Box::new(LoginOk {
        user,
        vars,
        handle,
        runtime,
    })))
}
