//! `cargo xtask demo`: the main job, end to end. Starts did-fake (time scale chosen so a video
//! takes a few seconds) and http-api on free loopback ports — in-memory limiter, or Redis when
//! `REDIS_URL` is set — then walks the real flow with an HTTP client and prints each step:
//! upload an image and an audio file, generate videos at several priorities concurrently,
//! start one asynchronously and poll its status, show a typed error, stats and health.
//! Everything is shut down at the end, on failure, and on Ctrl-C. Exit code non-zero if any
//! step fails.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::media;
use crate::procs::{self, Server};

const PREFIX: &str = "/api/d_id_optimized";
/// did-fake's default API key (`did_fake::DEFAULT_API_KEY`).
const FAKE_KEY: &str = "talkgate:fake-key";

pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("`cargo xtask demo` takes no arguments (got {extra:?})");
    }
    procs::build(&["did-fake", "http-api"])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            result = demo() => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; servers stopped"),
        }
    })
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

fn show(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

async fn demo() -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;

    step(1, "starting the fake D-ID server and the talkgate service");
    let fake_port = procs::free_port()?;
    let mut fake = Server::spawn(
        "did-fake",
        procs::bin("did-fake"),
        &[
            "--port".into(),
            fake_port.to_string(),
            "--time-scale".into(),
            "0.15".into(),
        ],
        &[],
        fake_port,
    )?;
    fake.wait_ready(&client, "/_fake/stats", Duration::from_secs(30))
        .await?;
    println!(
        "    did-fake  {}  (log {})",
        fake.base_url,
        fake.log.display()
    );

    let api_port = procs::free_port()?;
    let mut envs = vec![
        ("D_ID_API_KEY", FAKE_KEY.to_owned()),
        ("D_ID_BASE_URL", fake.base_url.clone()),
        ("BIND_ADDR", format!("127.0.0.1:{api_port}")),
        ("MAX_CONCURRENT_REQUESTS", "2".to_owned()),
        ("POLL_INTERVAL_SECS", "0.3".to_owned()),
    ];
    let backend = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            envs.push(("REDIS_URL", url));
            "redis"
        }
        _ => "memory",
    };
    let mut api = Server::spawn("http-api", procs::bin("http-api"), &[], &envs, api_port)?;
    api.wait_ready(
        &client,
        &format!("{PREFIX}/health"),
        Duration::from_secs(30),
    )
    .await?;
    println!(
        "    http-api  {}  (limiter: {backend}, 2 slots; log {})",
        api.base_url,
        api.log.display()
    );

    let result = walk(&client, &api.base_url).await;
    step(
        9,
        "shutting down (SIGTERM: the service drains in-flight requests)",
    );
    api.stop(Duration::from_secs(15)).await?;
    fake.stop(Duration::from_secs(5)).await?;
    println!("    stopped");
    match &result {
        Ok(()) => println!("\ndemo: every step succeeded"),
        Err(_) => println!(
            "\ndemo: FAILED (server logs are in {})",
            procs::log_dir().display()
        ),
    }
    result
}

async fn walk(client: &reqwest::Client, base: &str) -> Result<()> {
    let url = |path: &str| format!("{base}{PREFIX}{path}");

    step(2, "uploading a generated 64x64 PNG and 2 s of WAV audio");
    let image_url = upload(
        client,
        &url("/upload-source-image?priority=high"),
        "face.png",
        media::png(64, 64, [200, 160, 120]),
    )
    .await?;
    println!("    image  -> {image_url}");
    let audio_url = upload(
        client,
        &url("/upload-audio?priority=high"),
        "speech.wav",
        media::wav(2.0),
    )
    .await?;
    println!("    audio  -> {audio_url}");

    step(
        3,
        "generating four videos at once, one per priority (waits until each is done)",
    );
    let started = Instant::now();
    let jobs = ["low", "normal", "high", "critical"].map(|priority| {
        let client = client.clone();
        let body = json!({"audio_url": audio_url, "source_url": image_url, "priority": priority});
        let endpoint = url("/generate-video");
        async move {
            let resp = client.post(endpoint).json(&body).send().await?;
            let status = resp.status();
            let value: Value = resp.json().await?;
            ensure!(status.is_success(), "{priority}: HTTP {status}: {value}");
            Ok::<_, anyhow::Error>((priority, started.elapsed(), value))
        }
    });
    for result in futures_join(jobs).await {
        let (priority, took, value) = result?;
        println!(
            "    {priority:<8} done in {:>4.1} s  id={}  status={}  result_url={}",
            took.as_secs_f64(),
            value["id"].as_str().unwrap_or("?"),
            value["status"].as_str().unwrap_or("?"),
            short(value["result_url"].as_str().unwrap_or("-")),
        );
        ensure!(value["status"] == "done", "{priority}: not done: {value}");
    }

    step(
        4,
        "starting a video asynchronously (\"wait\": false) and polling its status",
    );
    let resp = client
        .post(url("/generate-video"))
        .json(&json!({"audio_url": audio_url, "source_url": image_url, "priority": "normal", "wait": false}))
        .send()
        .await?;
    let status = resp.status();
    let accepted: Value = resp.json().await?;
    ensure!(
        status.as_u16() == 202,
        "expected 202, got {status}: {accepted}"
    );
    let id = accepted["id"]
        .as_str()
        .context("no id in the 202 answer")?
        .to_owned();
    println!("    202 Accepted  id={id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let value: Value = client
            .get(url(&format!("/talk-status/{id}")))
            .send()
            .await?
            .json()
            .await?;
        let status = value["status"].as_str().unwrap_or("?").to_owned();
        if status != last {
            println!("    status: {status}");
            last = status.clone();
        }
        if status == "done" {
            println!(
                "    result_url: {}",
                value["result_url"].as_str().unwrap_or("-")
            );
            break;
        }
        ensure!(
            status != "error" && status != "rejected",
            "talk failed: {value}"
        );
        ensure!(Instant::now() < deadline, "talk {id} not done within 60 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    step(
        5,
        "bad input gets a clear, typed error (unknown priority, unsafe talk id)",
    );
    let resp = client
        .post(url("/generate-video"))
        .json(&json!({"audio_url": audio_url, "source_url": image_url, "priority": "urgent"}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    println!("    priority \"urgent\" -> HTTP {status}: {body}");
    ensure!(status.is_client_error(), "expected a 4xx, got {status}");
    let resp = client.get(url("/talk-status/..%2Fcredits")).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    println!("    talk id \"../credits\" -> HTTP {status}: {body}");
    ensure!(status.is_client_error(), "expected a 4xx, got {status}");

    step(6, "health");
    let health: Value = client.get(url("/health")).send().await?.json().await?;
    println!("{}", indent(&show(&health)));

    step(7, "stats");
    let stats: Value = client.get(url("/stats")).send().await?.json().await?;
    println!("{}", indent(&show(&stats)));
    let limiter = &stats["rate_limiter"];
    ensure!(
        limiter["active_requests"] == 0,
        "permits still held after all requests finished: {limiter}"
    );

    step(8, "a few Prometheus metrics");
    let metrics = client.get(url("/metrics")).send().await?.text().await?;
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
        .filter(|l| l.contains("limiter") || l.contains("upstream"))
        .take(12)
    {
        println!("    {line}");
    }
    Ok(())
}

async fn upload(
    client: &reqwest::Client,
    endpoint: &str,
    filename: &str,
    data: Vec<u8>,
) -> Result<String> {
    let part = reqwest::multipart::Part::bytes(data).file_name(filename.to_owned());
    let form = reqwest::multipart::Form::new().part("file", part);
    let resp = client.post(endpoint).multipart(form).send().await?;
    let status = resp.status();
    let value: Value = resp.json().await?;
    ensure!(status.is_success(), "upload failed: HTTP {status}: {value}");
    Ok(value["url"]
        .as_str()
        .context("no url in the upload answer")?
        .to_owned())
}

/// Runs futures concurrently and returns their results in order.
async fn futures_join<F>(futures: [F; 4]) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles = futures.map(tokio::spawn);
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("demo task panicked"));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The start of a long URL, enough to recognise it.
fn short(url: &str) -> String {
    match url.char_indices().nth(72) {
        Some((i, _)) => format!("{}…", &url[..i]),
        None => url.to_owned(),
    }
}
