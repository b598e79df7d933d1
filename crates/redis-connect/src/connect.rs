//! [`connect`]: a first connection whose failure is a typed [`ConnectError`] (`auth`,
//! `tls`, `refused`, … — fred's last connection error, not "timed out"), and [`diagnosed`],
//! which names the wrong protocol (see `diagnose`) when a failure says nothing better.

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface};
use ports::DegradedReason;

use crate::config::{RedisConnectionConfig, address_of};
use crate::diagnose;
use crate::failure::BackendError;

/// Why a client could not connect: what kind of failure it was and what went wrong, with
/// the address and never the password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis at {address}: {message}")]
pub struct ConnectError {
    /// What kind of failure it was (`auth`, `tls`, `refused`, `timeout`, `cluster`, `other`).
    pub reason: DegradedReason,
    /// The server (or servers) the URL names, `host:port`.
    pub address: String,
    /// What went wrong, safe to show.
    pub message: String,
}

impl ConnectError {
    /// A failed command of a connected client, classified as [`BackendError::fred`]
    /// classifies it (a cluster redirection also says to use a cluster URL); for stores that
    /// check a connection with a command of their own.
    pub fn from_fred(address: &str, context: &str, e: &fred::error::Error) -> ConnectError {
        let failure = BackendError::fred(context, e);
        ConnectError {
            reason: failure.reason,
            address: address.to_owned(),
            message: failure.message,
        }
    }
}

/// Connects `client` (built by [`client`](crate::client) for `config`, not connected yet) and waits until
/// it is, at most `connect_timeout`. On failure the client keeps reconnecting in the
/// background (quit it to stop), and the error says why, as precisely as can be told: fred
/// retries a refused connection, a wrong password or a failed handshake internally until
/// the timeout, so the last connection error it reported is the reason, not "timed out";
/// and a timeout or a closed connection is checked for the wrong protocol (a `rediss://` URL
/// at a plaintext port, a `redis://` URL at a TLS port, see `diagnose`).
pub async fn connect(client: &Client, config: &RedisConnectionConfig) -> Result<(), ConnectError> {
    use tokio::sync::broadcast::error::RecvError;
    let mut errors = client.error_rx();
    let _task = client.connect();
    let address = address_of(&config.url);
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let connected = client.wait_for_connect();
    tokio::pin!(connected);
    let mut errors_open = true;
    // The newest connection error fred reported while it retried, if any.
    let mut last: Option<BackendError> = None;
    let failure = loop {
        let next_error = async {
            if errors_open {
                errors.recv().await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            outcome = &mut connected => match outcome {
                Ok(()) => return Ok(()),
                Err(e) => break BackendError::fred("connect", &e),
            },
            error = next_error => match error {
                Ok((e, _server)) => {
                    let failure = BackendError::fred("connect", &e);
                    // Retrying cannot fix a refusal, a wrong password or a failed
                    // handshake within the timeout: say so now.
                    if matches!(
                        failure.reason,
                        DegradedReason::Auth | DegradedReason::Tls | DegradedReason::Refused
                    ) {
                        break failure;
                    }
                    last = Some(failure);
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => errors_open = false,
            },
            () = tokio::time::sleep_until(deadline) => {
                break last.take().unwrap_or_else(|| BackendError::new(
                    DegradedReason::Timeout,
                    format!("connect: no connection within {:?}", config.connect_timeout),
                ));
            }
        }
    };
    let failure = diagnosed(failure, &address, config).await;
    Err(ConnectError {
        reason: failure.reason,
        address,
        message: failure.message,
    })
}

/// `failure` named more precisely when it is a timeout or an unexplained error and the
/// server speaks the other protocol than the URL's scheme (see `diagnose`).
pub async fn diagnosed(
    failure: BackendError,
    address: &str,
    config: &RedisConnectionConfig,
) -> BackendError {
    if !matches!(
        failure.reason,
        DegradedReason::Timeout | DegradedReason::Other
    ) {
        return failure;
    }
    match diagnose::protocol_mismatch(address, config.uses_tls(), config.connect_timeout).await {
        Some(why) => BackendError::new(DegradedReason::Tls, format!("{failure}; {why}")),
        None => failure,
    }
}
