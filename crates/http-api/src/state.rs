//! What every request handler shares: the two ports, the metrics and the service settings.
//!
//! Handlers only see `Arc<dyn VideoApi>` and `Arc<dyn ConcurrencyLimiter>`; which adapters
//! stand behind them is decided once, in `wiring` (or by a test).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use domain::DestinationPolicy;
use ports::{ConcurrencyLimiter, VideoApi, WaitOptions};
use secrecy::SecretString;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store_open::{OpenFailure, OpeningStore};
use crate::telemetry::Scrubber;
use crate::tenants::{Tenants, TenantsFile};
use app::Jobs;

/// Settings the handlers read (a subset of [`Config`], without adapter details).
#[derive(Clone)]
pub struct Settings {
    /// Whether a D-ID key is configured; without one, D-ID routes answer 503 before reading
    /// the body.
    pub api_key_configured: bool,
    /// The bearer token for API routes, if any (one implicit tenant).
    pub api_token: Option<SecretString>,
    /// The tenants file, if any (`TENANTS_FILE`).
    pub tenants_file: Option<TenantsFile>,
    /// Polling of a synchronous generate.
    pub wait: WaitOptions,
    /// Largest JSON body.
    pub json_body_limit: usize,
    /// How long the limiter may be degraded before `/ready` fails.
    pub ready_degraded_grace: Duration,
    /// The service name reported by `/health`.
    pub service_name: &'static str,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body (408 after).
    pub body_read_timeout: Duration,
    /// Longest pause between two pieces of a request body (408 after).
    pub body_idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests before cutting them off.
    pub shutdown_grace: Duration,
    /// This instance's `MAX_CONCURRENT_REQUESTS` (with Redis the fleet's limit stored there
    /// is served, which may differ: `/health` and `/stats` show both).
    pub max_concurrent: u32,
    /// Where a job's `callback_url` may point (checked when the job is submitted).
    pub callback_policy: DestinationPolicy,
    /// Whether callbacks are delivered (`CALLBACK_SECRET` is set); without, a
    /// `callback_url` is refused.
    pub callbacks_enabled: bool,
    /// Replaces the configured secrets in every response body (the logs have their own, in
    /// the log writer).
    pub scrubber: Scrubber,
    /// How often the D-ID account's credits are read (`CREDITS_CHECK_SECS`); zero: never.
    pub credits_check: Duration,
}

impl Settings {
    /// The handler settings of a configuration.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            api_key_configured: config.did_api_key.is_some(),
            api_token: config.http_api_token.clone(),
            tenants_file: config.tenants_file.clone(),
            wait: WaitOptions {
                poll_interval: config.poll_interval,
                max_wait: config.max_wait,
            },
            json_body_limit: config.json_body_limit,
            ready_degraded_grace: config.ready_degraded_grace,
            service_name: "talkgate",
            header_read_timeout: config.header_read_timeout,
            body_read_timeout: config.body_read_timeout,
            body_idle_timeout: config.body_idle_timeout,
            shutdown_grace: config.shutdown_grace,
            max_concurrent: config.max_concurrent,
            callback_policy: callback_policy(config),
            callbacks_enabled: config.callback_secret.is_some(),
            scrubber: Scrubber::from_config(config),
            credits_check: config.credits_check,
        }
    }
}

/// Where callbacks may go, as configured (`CALLBACK_ALLOW_HTTP`, `CALLBACK_ALLOWED_NETS`).
pub fn callback_policy(config: &Config) -> DestinationPolicy {
    DestinationPolicy {
        allow_http: config.callback_allow_http,
        allowed_nets: config.callback_allowed_nets.clone().unwrap_or_default(),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(&Config::default())
    }
}

/// Shared state of the service; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub video: Arc<dyn VideoApi>,
    pub limiter: Arc<dyn ConcurrencyLimiter>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Who may call, and each caller's tenant (reloaded on `SIGHUP`).
    pub tenants: Arc<Tenants>,
    /// The job engine (every generate runs as a job).
    pub jobs: Arc<Jobs>,
    /// Since when the limiter has been seen degraded (by `/ready`, `/health` or `/stats`).
    pub degraded_since: Mutex<Option<Instant>>,
    /// The job store being opened in the background, if it could not be at start.
    pub opening: Option<Arc<OpeningStore>>,
    /// The D-ID account's balance, read every `CREDITS_CHECK_SECS`.
    pub account: crate::account::SharedChecks,
    /// The upload cache (`UPLOAD_CACHE`), set by the wiring when on.
    pub uploads: std::sync::OnceLock<Arc<crate::upload_cache::Uploads>>,
    /// The process's traces (set by `main` once the subscriber is installed).
    pub traces: std::sync::OnceLock<crate::traces::Traces>,
    /// The gate in front of D-ID (adaptive limit, breaker), set by the wiring.
    pub upstream: std::sync::OnceLock<Arc<app::Upstream>>,
}

impl AppState {
    /// State over the given ports and job engine (whose video port should be `video`), with
    /// `opening`: the engine's job store when it could not be opened at start and is opened
    /// again in the background (so `/health`, `/ready` and `/stats` say why it is not open
    /// yet).
    pub fn with_opening_jobs(
        video: Arc<dyn VideoApi>,
        limiter: Arc<dyn ConcurrencyLimiter>,
        metrics: Arc<Metrics>,
        settings: Settings,
        jobs: Arc<Jobs>,
        opening: Option<Arc<OpeningStore>>,
    ) -> AppState {
        let tenants = Arc::new(Tenants::new(
            settings.tenants_file.as_ref(),
            settings.api_token.as_ref(),
        ));
        // The engine's calls (creates and polls by workers) take the same shares.
        jobs.set_shares(tenants.clone());
        AppState {
            inner: Arc::new(Inner {
                video,
                limiter,
                metrics,
                tenants,
                settings,
                jobs,
                degraded_since: Mutex::new(None),
                opening,
                account: Arc::default(),
                uploads: std::sync::OnceLock::new(),
                traces: std::sync::OnceLock::new(),
                upstream: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Why the job store is not open yet, if it is being opened in the background.
    pub fn job_store_failure(&self) -> Option<OpenFailure> {
        self.inner.opening.as_ref().and_then(|o| o.failure())
    }

    /// The upload cache, when on.
    pub fn uploads(&self) -> Option<&Arc<crate::upload_cache::Uploads>> {
        self.inner.uploads.get()
    }

    /// Turns the upload cache on (once; later calls change nothing).
    pub fn set_uploads(&self, uploads: Arc<crate::upload_cache::Uploads>) {
        let _ = self.inner.uploads.set(uploads);
    }

    /// The process's traces, if `main` set them.
    pub fn traces(&self) -> Option<&crate::traces::Traces> {
        self.inner.traces.get()
    }

    /// Sets the process's traces (once; later calls change nothing), for `/stats` and
    /// `/metrics`.
    pub fn set_traces(&self, traces: crate::traces::Traces) {
        let _ = self.inner.traces.set(traces);
    }

    /// The gate in front of D-ID, if the wiring set one.
    pub fn upstream(&self) -> Option<&Arc<app::Upstream>> {
        self.inner.upstream.get()
    }

    /// Sets the gate in front of D-ID (once; later calls change nothing), for `/stats`,
    /// `/health` and `/metrics`.
    pub fn set_upstream(&self, gate: Arc<app::Upstream>) {
        let _ = self.inner.upstream.set(gate);
    }

    /// The D-ID account's balance checks.
    pub fn account(&self) -> &crate::account::SharedChecks {
        &self.inner.account
    }

    /// The job engine.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.inner.jobs
    }

    /// The limiter (tests hold slots through it).
    pub fn limiter(&self) -> &Arc<dyn ConcurrencyLimiter> {
        &self.inner.limiter
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The tenants: who may call, with which share and priorities.
    pub fn tenants(&self) -> &Arc<Tenants> {
        &self.inner.tenants
    }

    /// Records whether the limiter is degraded now; returns for how long it has been.
    pub(crate) fn observe_degraded(&self, degraded: bool) -> Option<Duration> {
        let mut since = self
            .inner
            .degraded_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if degraded {
            let start = *since.get_or_insert_with(Instant::now);
            Some(start.elapsed())
        } else {
            *since = None;
            None
        }
    }
}
