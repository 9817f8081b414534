//! The Postgres wire endpoint: psql, psycopg and BI tools connect to the node
//! as to a PostgreSQL server (protocol v3, simple and extended query).
//!
//! ```text
//! accept ─ connection permit (connections_max, else FATAL 53300) ─► pgwire codec
//!   ► handler.rs: SET/SHOW/BEGIN/COMMIT/ROLLBACK → session state
//!                 SELECT over keyspace tables → Db::sql_with (the router)
//!                 SELECT over pg_catalog / information_schema → catalog.rs
//!                 INSERT/UPDATE/DELETE → dml.rs → the CQL executor → Db::execute
//!   errors → sqlstate.rs (one mapping to SQLSTATE codes)
//! ```
//!
//! A keyspace is a Postgres schema; see `design/sql-endpoints.md`.

pub mod catalog;
pub mod dml;
pub mod handler;
pub mod sqlstate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::Db;

/// Where the endpoint listens when not configured (PostgreSQL's 5432 stays
/// free for a real PostgreSQL beside the node).
pub const LISTEN_ADDRESS_DEFAULT: &str = "127.0.0.1:5433";
/// The most concurrent Postgres connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = 256;
/// The longest query text accepted, in bytes.
pub const QUERY_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// How long a refused connection may take to send its startup packet.
const REFUSE_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest startup packet read from a connection that is refused.
const REFUSE_STARTUP_BYTES_MAX: usize = 10_000;

/// The endpoint's enforced limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connections_max: usize,
    pub query_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            query_bytes_max: QUERY_BYTES_MAX_DEFAULT,
        }
    }
}

/// A running Postgres wire endpoint.
#[derive(Debug)]
pub struct PgServer {
    local_address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PgServer {
    /// Binds `address` and serves connections until stopped.
    ///
    /// # Errors
    /// The bind failure (address in use, permission).
    pub async fn start(
        db: Arc<Db>,
        address: SocketAddr,
        limits: Limits,
    ) -> std::io::Result<PgServer> {
        assert!(limits.connections_max > 0 && limits.query_bytes_max > 0);
        let listener = TcpListener::bind(address).await?;
        let local_address = listener.local_addr()?;
        let handlers = Arc::new(handler::Handlers::new(db, limits, local_address));
        let permits = Arc::new(Semaphore::new(limits.connections_max));
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((socket, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                        Ok(permit) => {
                            let handlers = Arc::clone(&handlers);
                            tokio::spawn(async move {
                                let _permit = permit;
                                tracing::debug!(%peer, "pg connection opened");
                                if let Err(error) =
                                    ::pgwire::tokio::process_socket(socket, None, handlers).await
                                {
                                    tracing::debug!(%peer, %error, "pg connection ended");
                                }
                            });
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "pg connection refused: connections_max reached");
                            tokio::spawn(refuse(socket, limits.connections_max));
                        }
                    },
                    Err(error) => {
                        tracing::warn!(%error, "pg accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        Ok(PgServer {
            local_address,
            task,
        })
    }

    /// The address it listens on (with the port the OS chose for port 0).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Stops accepting; open connections end with the runtime.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Answers a connection over `connections_max` the way PostgreSQL does: a
/// `FATAL 53300` error after its startup packet (declining TLS first), then
/// close.
async fn refuse(mut socket: TcpStream, connections_max: usize) {
    let read = async {
        loop {
            let length = socket.read_i32().await? as usize;
            if !(8..=REFUSE_STARTUP_BYTES_MAX).contains(&length) {
                return Ok::<(), std::io::Error>(());
            }
            let mut body = vec![0u8; length - 4];
            socket.read_exact(&mut body).await?;
            let code = body
                .get(..4)
                .map(|code| i32::from_be_bytes([code[0], code[1], code[2], code[3]]));
            // SSLRequest or GSSENCRequest: decline and read the real startup.
            if matches!(code, Some(80_877_103 | 80_877_104)) {
                socket.write_all(b"N").await?;
                continue;
            }
            return Ok(());
        }
    };
    if tokio::time::timeout(REFUSE_READ_TIMEOUT, read)
        .await
        .is_err()
    {
        return;
    }
    let message = format!(
        "sorry, too many clients already: the node serves at most {connections_max} Postgres connections (pg_connections_max)"
    );
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', message.as_str()),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut frame = vec![b'E'];
    frame.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    frame.extend_from_slice(&body);
    let _ = socket.write_all(&frame).await;
    let _ = socket.shutdown().await;
}
