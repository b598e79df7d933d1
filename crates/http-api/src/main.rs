//! The talkgate service binary: reads the configuration, installs logging, builds the
//! adapters and serves until SIGINT/SIGTERM. Everything else lives in the library.
//!
//! Start-up errors are printed as one plain line on stderr (never as a `Debug` value with a
//! backtrace, which `RUST_BACKTRACE=1` would add): exit code 2 for a bad configuration, as
//! for a usage error, and 1 for anything else.

use std::process::ExitCode;

use anyhow::Context;
use http_api::config::{Cli, Config, EnvSource};

#[allow(clippy::print_stderr)] // the binary's user-facing output
fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let config = match Config::from_source(&cli.layered(&EnvSource)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("http-api: {}", cli.describe(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http-api: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok();
    let traces = http_api::telemetry::init(
        config.log_format,
        http_api::telemetry::Scrubber::from_config(&config).with_otlp_headers(env),
        http_api::traces::TraceSetup::from_env(env),
    )
    .context("installing the log subscriber")?;
    http_api::wiring::log_start(&config);
    http_api::traces::log_setup(&traces);
    for problem in http_api::traces::otlp_header_problems(env) {
        tracing::warn!(%problem, "an OTLP export header is dropped");
    }
    if config.did_api_key.is_none() {
        tracing::warn!("D_ID_API_KEY is not set: D-ID routes answer 503 until it is");
    }
    let state = http_api::wiring::build(&config).await?;
    state.set_traces(traces.clone());
    http_api::tenants::reload_on_sighup(state.tenants().clone());
    let listener = tokio::net::TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("binding {}", config.bind_addr))?;
    let served = http_api::run(listener, state, http_api::shutdown_signal()).await;
    // The last spans (the shutdown's among them) leave before the process does.
    tokio::task::spawn_blocking(move || traces.shutdown())
        .await
        .ok();
    served?;
    Ok(())
}
