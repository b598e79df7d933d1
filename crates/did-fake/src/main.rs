//! `did-fake`: runs the fake D-ID server from the command line.
//!
//! ```text
//! cargo run -p did-fake -- --port 8787 --time-scale 0.05 --api-key user:pass --p-500 0.1
//! ```
//! Binds `127.0.0.1` unless `--host` says otherwise, prints its base url, and stops on Ctrl-C.

use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use did_fake::{Delay, FakeDid, Faults};
use tracing_subscriber::EnvFilter;

/// Command-line options; every fault knob of [`Faults`] has a flag.
#[derive(Debug, Parser)]
#[command(
    name = "did-fake",
    version,
    about = "A faithful fake of the D-ID talks API"
)]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to bind (0: a free port).
    #[arg(long, default_value_t = 0, env = "DID_FAKE_PORT")]
    port: u16,
    /// Multiplier of every delay of the timing model (1.0 = D-ID's real speed).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Extra valid API key `user:pass` (repeatable); `talkgate:fake-key` is always valid.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Initial credits per user.
    #[arg(long, default_value_t = 100_000)]
    credits: i64,
    /// Seed of the RNG (ids, timing, fault draws).
    #[arg(long)]
    seed: Option<u64>,
    /// Probability of a 500 UnknownError.
    #[arg(long, default_value_t = 0.0)]
    p_500: f64,
    /// Probability of a 502 with an HTML body.
    #[arg(long, default_value_t = 0.0)]
    p_502_html: f64,
    /// Probability of a 504 after a delay.
    #[arg(long, default_value_t = 0.0)]
    p_504: f64,
    /// Delay of a 504 in ms (default: 29 s × time scale).
    #[arg(long)]
    delay_504_ms: Option<u64>,
    /// Probability of closing the connection without a response.
    #[arg(long, default_value_t = 0.0)]
    p_reset: f64,
    /// Probability of an API Gateway explicit deny (403 `{"Message":...}`).
    #[arg(long, default_value_t = 0.0)]
    p_gateway_deny: f64,
    /// Probability that POST /talks creates the talk and then fails anyway.
    #[arg(long, default_value_t = 0.0)]
    p_create_then_fail: f64,
    /// Probability that a talk ends `error`.
    #[arg(long, default_value_t = 0.0)]
    p_async_error: f64,
    /// Probability that a talk ends `rejected`.
    #[arg(long, default_value_t = 0.0)]
    p_rejected: f64,
    /// Probability that a talk stays `started` forever.
    #[arg(long, default_value_t = 0.0)]
    p_stuck: f64,
    /// 429 when a key has more API requests in flight than this.
    #[arg(long)]
    max_in_flight_per_key: Option<u32>,
    /// Token-bucket rate per key (requests per second); over it, 429.
    #[arg(long)]
    rate_limit_rps: Option<f64>,
    /// Token-bucket size per key.
    #[arg(long)]
    rate_limit_burst: Option<f64>,
    /// Added latency on every route: `MS` or `MIN-MAX` (milliseconds).
    #[arg(long, value_parser = parse_delay)]
    latency_ms: Option<Delay>,
    /// Accept http:// webhooks.
    #[arg(long)]
    allow_http_webhooks: bool,
    /// Reject unknown top-level POST /talks fields.
    #[arg(long)]
    strict_fields: bool,
}

fn parse_delay(s: &str) -> Result<Delay, String> {
    let ms = |x: &str| x.trim().parse::<u64>().map_err(|e| format!("{x:?}: {e}"));
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (min_ms, max_ms) = (ms(lo)?, ms(hi)?);
            if min_ms > max_ms {
                return Err("MIN must not exceed MAX".to_owned());
            }
            Ok(Delay::Uniform { min_ms, max_ms })
        }
        None => Ok(Delay::Fixed(ms(s)?)),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut faults = Faults {
        p_500: args.p_500,
        p_502_html: args.p_502_html,
        p_504: args.p_504,
        delay_504_ms: args.delay_504_ms,
        p_reset: args.p_reset,
        p_gateway_deny: args.p_gateway_deny,
        p_create_then_fail: args.p_create_then_fail,
        p_async_error: args.p_async_error,
        p_rejected: args.p_rejected,
        p_stuck: args.p_stuck,
        max_in_flight_per_key: args.max_in_flight_per_key,
        rate_limit_rps: args.rate_limit_rps,
        rate_limit_burst: args.rate_limit_burst,
        ..Faults::default()
    };
    faults.latency.all = args.latency_ms;
    let mut builder = FakeDid::builder()
        .bind(SocketAddr::new(args.host, args.port))
        .time_scale(args.time_scale)
        .credits(args.credits)
        .faults(faults)
        .allow_http_webhooks(args.allow_http_webhooks)
        .strict_fields(args.strict_fields);
    if let Some(seed) = args.seed {
        builder = builder.seed(seed);
    }
    for key in args.api_keys {
        builder = builder.api_key(key);
    }
    let fake = builder.spawn().await?;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", fake.base_url());
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("Ctrl-C: shutting down");
    fake.shutdown().await;
    Ok(())
}
