//! `/metrics` labels come from closed sets: whatever methods and paths clients send, the
//! number of `talkgate_http_requests_total` series stays bounded.

use std::collections::BTreeSet;
use std::time::Duration;

use http_api::Settings;
use ports::MockVideoApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;

const STANDARD: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// `(method, route, status)` of every `talkgate_http_requests_total` series.
pub fn series(metrics: &str) -> Vec<(String, String, String)> {
    metrics
        .lines()
        .filter(|l| l.starts_with("talkgate_http_requests_total{"))
        .map(|l| {
            let labels = &l[l.find('{').unwrap() + 1..l.rfind('}').unwrap()];
            let get = |name: &str| {
                let start = labels.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                let end = start + labels[start..].find('"').unwrap();
                labels[start..end].to_owned()
            };
            (get("method"), get("route"), get("status"))
        })
        .collect()
}

/// A random request line: a standard or made-up method and a path under or outside the
/// prefix, with ids that a raw-path label would keep.
fn random_request(rng: &mut impl rand::Rng) -> String {
    let word = |rng: &mut dyn rand::RngCore, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b'A' + (rng.next_u32() % 26) as u8))
            .collect()
    };
    // CONNECT needs an authority target, so it is left out of the random mix.
    let method = match rng.random_range(0..3) {
        0 => STANDARD[rng.random_range(0..STANDARD.len() - 1)].to_owned(),
        _ => {
            let n = rng.random_range(1..40);
            word(rng, n)
        }
    };
    let id = word(rng, 12);
    let path = match rng.random_range(0..5) {
        0 => format!("/{id}"),
        1 => format!("/api/d_id_optimized/{id}"),
        2 => format!("/api/d_id_optimized/talk-status/tlk_{id}"),
        3 => "/api/d_id_optimized/generate-video".to_owned(),
        _ => "/health".to_owned(),
    };
    format!("{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
}

/// Sends `n` pipelined requests on one keep-alive connection; returns how many answers
/// came back (reading stops at `n`; bodies never contain a status line).
async fn pipeline(addr: std::net::SocketAddr, n: usize, seed: u64) -> usize {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let batch: String = (0..n).map(|_| random_request(&mut rng)).collect();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // Written while reading, or both sides' buffers fill up and stall.
    let writer = tokio::spawn(async move { wr.write_all(batch.as_bytes()).await.map(|()| wr) });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut answered = 0;
    while answered < n {
        let got = rd.read(&mut buf).await.unwrap();
        if got == 0 {
            break;
        }
        // Count in the new bytes plus a tail of the old, for a status line split in two.
        let from = out.len().saturating_sub(8);
        out.extend_from_slice(&buf[..got]);
        let tail = String::from_utf8_lossy(&out[from..])
            .matches("HTTP/1.1 ")
            .count();
        let head = String::from_utf8_lossy(&out[from..out.len() - got])
            .matches("HTTP/1.1 ")
            .count();
        answered += tail - head;
    }
    drop(writer.await.unwrap().unwrap());
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_methods_and_paths_do_not_grow_the_request_series() {
    // No D-ID key: D-ID routes answer 503 before any upstream call.
    let srv = support::mock_service(MockVideoApi::new(), Settings::default(), 2).await;
    let addr = srv.addr;
    let mut tasks = Vec::new();
    for seed in 0..4u64 {
        tasks.push(tokio::spawn(pipeline(addr, 2_500, seed)));
    }
    let mut answered = 0;
    for t in tasks {
        answered += tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("pipelines finish")
            .unwrap();
    }
    assert_eq!(answered, 10_000);

    let text = srv.metrics().await;
    let series = series(&text);
    let methods: BTreeSet<&str> = series.iter().map(|s| s.0.as_str()).collect();
    let routes: BTreeSet<&str> = series.iter().map(|s| s.1.as_str()).collect();
    let closed_methods: BTreeSet<&str> = STANDARD.iter().copied().chain(["other"]).collect();
    assert!(
        methods.is_subset(&closed_methods),
        "{} method labels, e.g. {:?}",
        methods.len(),
        methods.iter().take(12).collect::<Vec<_>>()
    );
    assert!(methods.contains("other"), "{methods:?}");
    let templates: BTreeSet<&str> = [
        "unmatched",
        "/health",
        "/metrics",
        "/api/d_id_optimized/talk-status/{talk_id}",
        "/api/d_id_optimized/generate-video",
    ]
    .into_iter()
    .collect();
    assert!(routes.is_subset(&templates), "{routes:?}");
    assert!(series.iter().all(|s| s.2.parse::<u16>().is_ok()));
    // 10 methods x 5 routes x a handful of statuses, nowhere near 10,000.
    assert!(series.len() <= 60, "{} series", series.len());
    srv.stop().await;
}
