//! `did-fake`: runs the fake D-ID server from the command line.
//!
//! ```text
//! cargo run -p did-fake -- --port 8787 --time-scale 0.05 --api-key user:pass --p-500 0.1
//! ```
//! Binds `127.0.0.1` unless `--host` says otherwise, prints its base url (alone, on stdout;
//! logs go to stderr), and stops gracefully on Ctrl-C. Faults can be changed while it runs
//! with `POST /_fake/faults`.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use did_fake::{CreateThenFail, Delay, FakeDid, Faults};
use tracing_subscriber::EnvFilter;

/// Command-line options. Fault flags override the same field of `--faults-json`.
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
    /// Validity of result urls in seconds.
    #[arg(long, default_value_t = 86_400)]
    result_url_ttl_secs: u64,
    /// Bytes served per result video.
    #[arg(long, default_value_t = 1024)]
    result_size: usize,
    /// Accept http:// webhooks.
    #[arg(long)]
    allow_http_webhooks: bool,
    /// Reject unknown top-level POST /talks fields.
    #[arg(long)]
    strict_fields: bool,
    /// The whole fault configuration as JSON (the body `POST /_fake/faults` takes).
    #[arg(long)]
    faults_json: Option<String>,
    /// Probability of a 500 UnknownError.
    #[arg(long)]
    p_500: Option<f64>,
    /// Probability of a 502 with an HTML body.
    #[arg(long)]
    p_502_html: Option<f64>,
    /// Probability of a 504 after a delay.
    #[arg(long)]
    p_504: Option<f64>,
    /// Delay of a 504 in ms (default: 29 s × time scale).
    #[arg(long)]
    delay_504_ms: Option<u64>,
    /// Probability of closing the connection without a response.
    #[arg(long)]
    p_reset: Option<f64>,
    /// Probability of an API Gateway explicit deny (403 `{"Message":...}`).
    #[arg(long)]
    p_gateway_deny: Option<f64>,
    /// Probability that POST /talks creates the talk and then fails anyway.
    #[arg(long)]
    p_create_then_fail: Option<f64>,
    /// What a create-then-fail answers: mixed, status500, status504 or reset.
    #[arg(long, value_parser = parse_mode)]
    create_then_fail: Option<CreateThenFail>,
    /// Probability that a talk ends `error`.
    #[arg(long)]
    p_async_error: Option<f64>,
    /// Probability that a talk ends `rejected`.
    #[arg(long)]
    p_rejected: Option<f64>,
    /// Probability that a talk stays `started` forever.
    #[arg(long)]
    p_stuck: Option<f64>,
    /// 429 when a key has more API requests in flight than this.
    #[arg(long)]
    max_in_flight_per_key: Option<u32>,
    /// Token-bucket rate per key (requests per second); over it, 429.
    #[arg(long)]
    rate_limit_rps: Option<f64>,
    /// Token-bucket size per key.
    #[arg(long)]
    rate_limit_burst: Option<f64>,
    /// Add `Retry-After: N` to 429s.
    #[arg(long)]
    retry_after_secs: Option<u64>,
    /// Added latency on every route: `MS` or `MIN-MAX` (milliseconds).
    #[arg(long, value_parser = parse_delay)]
    latency_ms: Option<Delay>,
}

impl Args {
    /// `--faults-json` (or no faults) with every fault flag given applied on top.
    fn faults(&self) -> Result<Faults, String> {
        let mut f = match &self.faults_json {
            Some(json) => serde_json::from_str(json).map_err(|e| format!("--faults-json: {e}"))?,
            None => Faults::default(),
        };
        let set = |field: &mut f64, flag: Option<f64>| {
            if let Some(v) = flag {
                *field = v;
            }
        };
        set(&mut f.p_500, self.p_500);
        set(&mut f.p_502_html, self.p_502_html);
        set(&mut f.p_504, self.p_504);
        set(&mut f.p_reset, self.p_reset);
        set(&mut f.p_gateway_deny, self.p_gateway_deny);
        set(&mut f.p_create_then_fail, self.p_create_then_fail);
        set(&mut f.p_async_error, self.p_async_error);
        set(&mut f.p_rejected, self.p_rejected);
        set(&mut f.p_stuck, self.p_stuck);
        f.delay_504_ms = self.delay_504_ms.or(f.delay_504_ms);
        f.create_then_fail = self.create_then_fail.unwrap_or(f.create_then_fail);
        f.max_in_flight_per_key = self.max_in_flight_per_key.or(f.max_in_flight_per_key);
        f.rate_limit_rps = self.rate_limit_rps.or(f.rate_limit_rps);
        f.rate_limit_burst = self.rate_limit_burst.or(f.rate_limit_burst);
        f.retry_after_secs = self.retry_after_secs.or(f.retry_after_secs);
        f.latency.all = self.latency_ms.or(f.latency.all);
        f.validate()?;
        Ok(f)
    }
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

fn parse_mode(s: &str) -> Result<CreateThenFail, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "expected mixed, status500, status504 or reset".to_owned())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let faults = args
        .faults()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut builder = FakeDid::builder()
        .bind(SocketAddr::new(args.host, args.port))
        .time_scale(args.time_scale)
        .credits(args.credits)
        .faults(faults)
        .result_url_ttl(Duration::from_secs(args.result_url_ttl_secs))
        .result_size(args.result_size)
        .allow_http_webhooks(args.allow_http_webhooks)
        .strict_fields(args.strict_fields);
    if let Some(seed) = args.seed {
        builder = builder.seed(seed);
    }
    for key in &args.api_keys {
        builder = builder.api_key(key.clone());
    }
    let fake = builder.spawn().await?;
    // The one user-facing line: scripts read the base url from stdout.
    #[allow(clippy::print_stdout)]
    {
        println!("{}", fake.base_url());
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("Ctrl-C: shutting down");
    fake.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_flag_takes_a_fixed_value_or_a_range() {
        assert_eq!(parse_delay("15"), Ok(Delay::Fixed(15)));
        assert_eq!(
            parse_delay("2-20"),
            Ok(Delay::Uniform {
                min_ms: 2,
                max_ms: 20
            })
        );
        assert!(parse_delay("20-2").is_err());
        assert!(parse_delay("x").is_err());
    }

    #[test]
    fn fault_flags_override_the_json() {
        let args = Args::parse_from([
            "did-fake",
            "--faults-json",
            r#"{"p_500": 0.2, "p_reset": 0.1, "max_in_flight_per_key": 4}"#,
            "--p-500",
            "0.5",
            "--create-then-fail",
            "reset",
            "--latency-ms",
            "1-3",
        ]);
        let f = args.faults().unwrap();
        assert_eq!((f.p_500, f.p_reset), (0.5, 0.1));
        assert_eq!(f.max_in_flight_per_key, Some(4));
        assert_eq!(f.create_then_fail, CreateThenFail::Reset);
        assert_eq!(
            f.latency.all,
            Some(Delay::Uniform {
                min_ms: 1,
                max_ms: 3
            })
        );
        assert_eq!(args.host, IpAddr::from([127, 0, 0, 1]));

        let bad = Args::parse_from(["did-fake", "--p-504", "3"]);
        assert!(bad.faults().unwrap_err().contains("p_504"));
    }
}
