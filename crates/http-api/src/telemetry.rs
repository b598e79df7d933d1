//! Logging: a `tracing` subscriber in human or JSON form, filtered by `RUST_LOG`.
//!
//! Every line written while a request is served carries the request span's fields
//! (`request_id`, `method`, `path`): as a `request{…}:` prefix in human form, as a `span`
//! object in JSON. Secrets never reach a field: the configuration prints them as set/unset.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// The default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber writing to stderr. Returns an error if one is installed.
pub fn init(format: LogFormat) -> Result<(), tracing_subscriber::util::TryInitError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    init_with(format, filter, std::io::stderr)
}

/// Installs the global subscriber with an explicit filter and writer (tests capture logs).
pub fn init_with<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
    }
}
