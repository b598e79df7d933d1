//! The accept loop: one hyper HTTP/1.1 connection task per TCP connection, counted in the
//! stats, all watched for a graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::router;
use crate::state::{Shared, lock};

/// How long a shutdown waits for open connections to finish their requests.
const GRACE: Duration = Duration::from_secs(5);

/// Serves `listener` until `shutdown` turns `true` (or its sender is dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper 1 needs an explicit timer, or header_read_timeout is inert (and setting one
    // without a timer panics).
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let stopped = async move {
        // Either the flag flips or the sender is gone: both mean stop. The guard `wait_for`
        // returns is dropped at once (it is not `Send`).
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        // Typically EMFILE: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                lock(&shared.stats).connections_accepted += 1;
                let _ = stream.set_nodelay(true);
                let conn_shared = Arc::clone(&shared);
                let service = service_fn(move |req| router::handle(Arc::clone(&conn_shared), req));
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        // Includes the connections the fake cuts on purpose.
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            () = &mut stopped => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("graceful shutdown timed out; dropping open connections");
    }
}
