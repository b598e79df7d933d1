//! Upstream bodies are capped: an answer larger than the cap (declared or streamed) is a
//! protocol error, read no further than the cap, so a hostile or broken upstream can not make
//! the client buffer it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use domain::{Priority, TalkId};
use ports::{VideoApi, VideoApiError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{client, config, limiter};

/// How the streaming upstream frames its endless body.
#[derive(Clone, Copy)]
enum Framing {
    /// `Transfer-Encoding: chunked`, chunks forever.
    Chunked,
    /// `Content-Length: 1 GiB`, then bytes until the client hangs up.
    Declared,
}

/// A loopback upstream answering every request with `status` and a body that never ends;
/// counts the body bytes it managed to hand to the socket.
struct Endless {
    base_url: String,
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endless {
    async fn start(status: u16, framing: Framing) -> Endless {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let written = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let written = written.clone();
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let written = written.clone();
                    tokio::spawn(async move {
                        // The requests here have no body: the head is all there is to read.
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let chunked = matches!(framing, Framing::Chunked);
                        let framing = match framing {
                            Framing::Chunked => "transfer-encoding: chunked".to_owned(),
                            Framing::Declared => format!("content-length: {}", 1u64 << 30),
                        };
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
                        );
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let payload = vec![b' '; 64 * 1024];
                        let chunk = if chunked {
                            let mut c = format!("{:x}\r\n", payload.len()).into_bytes();
                            c.extend_from_slice(&payload);
                            c.extend_from_slice(b"\r\n");
                            c
                        } else {
                            payload.clone()
                        };
                        // Until the client hangs up (then the write fails).
                        while stream.write_all(&chunk).await.is_ok() {
                            written.fetch_add(payload.len() as u64, Ordering::Relaxed);
                        }
                    });
                }
            }
        });
        Endless {
            base_url,
            written,
            task,
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The cap the tests configure: 256 KiB of JSON, 16 KiB of error body.
const CAP: usize = 256 * 1024;

async fn get_talk_from(server: &Endless) -> (Result<domain::Talk, VideoApiError>, u64) {
    let mut cfg = config(&server.base_url);
    cfg.max_body_bytes = CAP;
    cfg.max_error_body_bytes = 16 * 1024;
    // A guard only: before the cap existed the call read until this timeout.
    cfg.request_timeout = Duration::from_secs(5);
    let did = client(cfg, limiter(1));
    let id = TalkId::parse("tlk_huge").unwrap();
    let result = did.get_talk(&id, &Priority::Normal.into()).await;
    (result, did.stats().requests)
}

/// The error of a body past the cap.
fn assert_too_large(err: &VideoApiError) {
    assert!(
        matches!(err, VideoApiError::Protocol { message } if message.contains("larger than")),
        "{err:?}"
    );
}

/// The client stopped reading at the cap: what the server got rid of beyond it sits in
/// loopback socket buffers (a few MiB at most), not in the client.
fn assert_read_no_further(server: &Endless) {
    let written = server.written();
    assert!(
        written < 64 * 1024 * 1024,
        "the server wrote {written} bytes"
    );
}

#[tokio::test]
async fn an_endless_json_body_is_a_protocol_error_read_no_further_than_the_cap() {
    let server = Endless::start(200, Framing::Chunked).await;
    let (result, requests) = get_talk_from(&server).await;
    assert_too_large(&result.unwrap_err());
    assert_eq!(requests, 1, "a protocol error is not retried");
    assert_read_no_further(&server);
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_it_is_read() {
    let server = Endless::start(200, Framing::Declared).await;
    let (result, _) = get_talk_from(&server).await;
    assert_too_large(&result.unwrap_err());
    assert_read_no_further(&server);
}

#[tokio::test]
async fn an_endless_error_body_keeps_its_status_and_is_cut_at_the_small_cap() {
    // A 404 with a body that never ends: still D-ID's 404 (the status decides), the body is
    // ignored past the error cap and not read further.
    let server = Endless::start(404, Framing::Chunked).await;
    let (result, requests) = get_talk_from(&server).await;
    let err = result.unwrap_err();
    assert_eq!(
        err,
        VideoApiError::NotFound {
            description: "Not Found".into()
        }
    );
    assert_eq!(requests, 1);
    assert_read_no_further(&server);
}
