//! The talkgate service binary: reads the configuration, installs logging, builds the
//! adapters and serves until SIGINT/SIGTERM. Everything else lives in the library.

use anyhow::Context;
use clap::Parser;
use http_api::config::{Cli, Config, EnvSource};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_source(&cli.layered(&EnvSource))?;
    http_api::telemetry::init(
        config.log_format,
        http_api::telemetry::Scrubber::from_config(&config),
    )
    .context("installing the log subscriber")?;
    tracing::info!(?config, "starting talkgate");
    if config.did_api_key.is_none() {
        tracing::warn!("D_ID_API_KEY is not set: D-ID routes answer 503 until it is");
    }
    let state = http_api::wiring::build(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("binding {}", config.bind_addr))?;
    http_api::run(listener, state, http_api::shutdown_signal()).await?;
    Ok(())
}
