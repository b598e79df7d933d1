//! Naming a connection that fails for a reason fred cannot see: the wrong protocol.
//!
//! A `rediss://` URL at a plaintext port sends a TLS `ClientHello` that a plain Redis reads
//! as an inline command: it either waits for a newline that never comes (the handshake
//! times out) or answers with an error that rustls takes for a corrupt record. A `redis://`
//! URL at a TLS port sends `HELLO`/`PING` in plaintext, and the server closes the
//! connection. Either way fred reports a timeout or a closed connection, which tells an
//! operator nothing. So when a connection fails like that, [`protocol_mismatch`] asks the
//! server once with a plaintext `PING` on a fresh TCP connection: a RESP answer means the
//! port speaks plaintext, a TLS record or a close without a byte means it speaks TLS.
//!
//! Nothing here carries credentials: the probe sends only `PING`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first bytes of a RESP2/RESP3 reply (`+PONG`, `-NOAUTH …`, …).
const RESP_TYPES: &[u8] = b"+-:$*_,#!=(%~>|";

/// What the plaintext `PING` probe found out about the server at `address` (`host:port`),
/// when it contradicts the URL's scheme: `Some(explanation)` if a TLS URL (`tls`) reached a
/// plaintext server or a plaintext URL reached a TLS server, `None` if the server looks like
/// what the URL says or nothing could be told (no connection, no answer in `timeout`).
pub(crate) async fn protocol_mismatch(
    address: &str,
    tls: bool,
    timeout: Duration,
) -> Option<String> {
    // A Unix socket has no TLS; a Cluster or Sentinel URL lists several nodes: ask the first.
    let address = address.split(',').next()?;
    if address.contains('/') {
        return None;
    }
    let answer = tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 1];
        match stream.read(&mut buf).await {
            Ok(0) => Some(Answer::Closed),
            Ok(_) if RESP_TYPES.contains(&buf[0]) => Some(Answer::Resp),
            // A TLS record: an alert (0x15) or a handshake (0x16).
            Ok(_) if matches!(buf[0], 0x15 | 0x16) => Some(Answer::Tls),
            Ok(_) => None,
            // A reset right after the PING: a TLS server dropping a plaintext client.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(Answer::Closed),
            Err(_) => None,
        }
    })
    .await
    .ok()
    .flatten()?;
    match (tls, answer) {
        (true, Answer::Resp) => Some(format!(
            "the server at {address} answers a plaintext PING, so it is not a TLS port: \
             use a redis:// URL, or the server's tls-port"
        )),
        (false, Answer::Tls) => Some(format!(
            "the server at {address} answers a plaintext PING with a TLS record, so it is a \
             TLS port: use a rediss:// URL (and REDIS_TLS_CA_FILE for a private CA)"
        )),
        // Redis's TLS port sends no alert: it drops the connection without a byte. So does
        // a proxy with nothing behind it, hence the hedge.
        (false, Answer::Closed) => Some(format!(
            "the server at {address} closed the connection on a plaintext PING without a \
             byte of answer, as a Redis TLS port does (or a proxy with no server behind it): \
             if it is a TLS port, use a rediss:// URL (and REDIS_TLS_CA_FILE for a private CA)"
        )),
        _ => None,
    }
}

/// How the server answered the probe.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A RESP reply: a plaintext Redis.
    Resp,
    /// A TLS record.
    Tls,
    /// The connection closed without a byte.
    Closed,
}
