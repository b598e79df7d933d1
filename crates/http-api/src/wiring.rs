//! Building the adapters a [`Config`] asks for, and the [`AppState`] over them.
//!
//! This is the only module that names adapter types. `main` calls [`build`]; end-to-end tests
//! call it too, so they exercise the same wiring as production.
//!
//! The limiter is wrapped in [`MeteredLimiter`] *before* it is handed to the D-ID client, so
//! every wait the client's exchanges spend in the queue shows up in the wait histograms.

use std::sync::Arc;

use did_client::{DidClient, DidClientConfig};
use limiter_redis::RedisLimiterConfig;
use ports::ConcurrencyLimiter;
use secrecy::ExposeSecret;

use crate::config::{Config, JobStoreKind, JobStoreSync};
use crate::metrics::{MeteredLimiter, Metrics};
use crate::state::{AppState, Settings};
use crate::store_open::{Backend, OpenFailure, OpeningStore};
use app::{Jobs, JobsConfig};

/// Why the adapters could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The D-ID client rejected its configuration.
    #[error("could not build the D-ID client")]
    DidClient(#[source] did_client::DidClientError),
    /// The Redis limiter could not be built (bad URL or settings; never the password).
    #[error("could not build the Redis limiter: {0}")]
    Redis(String),
    /// The job store could not be opened (never the password).
    #[error("could not open the job store: {0}")]
    JobStore(String),
    /// The callback sender could not be built (never the secret).
    #[error("could not set up callbacks: {0}")]
    Callbacks(String),
}

/// Logs the configuration at start-up as one structured record: a field per setting an
/// operator asks about, secrets only as whether they are set, the Redis URL as its
/// address (never the password).
pub fn log_start(config: &Config) {
    let redis = config
        .redis_url
        .as_ref()
        .map(|url| limiter_redis::config::address_of(url.expose_secret()));
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        bind_addr = %config.bind_addr,
        did_base_url = %config.did_base_url,
        did_api_key_set = config.did_api_key.is_some(),
        http_api_token_set = config.http_api_token.is_some(),
        tenants_file = config.tenants_file.as_ref().map(|f| f.path().display().to_string()).as_deref().unwrap_or("-"),
        tenants = config.tenants_file.as_ref().map_or(0, |f| f.policies().count()),
        limiter = if redis.is_some() { "redis" } else { "memory" },
        redis_address = redis.as_deref().unwrap_or("-"),
        redis_tls_ca_file = ?config.redis_tls_ca_file,
        limiter_name = %config.limiter_name,
        max_concurrent = config.max_concurrent,
        failover_policy = config.failover_policy.as_str(),
        failover_local_share = ?config.failover_local_share,
        lease_ttl_ms = ms(config.lease_ttl),
        limiter_wait_timeout_ms = ms(config.limiter_wait_timeout),
        job_store = ?config.job_store,
        job_store_path = %config.job_store_path.display(),
        job_store_sync = ?config.job_store_sync,
        job_workers = config.job_workers,
        job_queue_max = config.job_queue_max,
        job_lease_ms = ms(config.job_lease),
        job_retention_ms = ms(config.job_retention),
        public_base_url = config.public_base_url.as_deref().unwrap_or("-"),
        talk_webhook_poll_ms = ms(config.talk_webhook_poll),
        callback_allow_http = config.callback_allow_http,
        callback_allowed_nets = ?config.callback_allowed_nets,
        callback_secret_set = config.callback_secret.is_some(),
        callback_secret_previous_set = config.callback_secret_previous.is_some(),
        callback_timeout_ms = ms(config.callback_timeout),
        callback_first_retry_ms = ms(config.callback_first_retry),
        callback_horizon_ms = ms(config.callback_horizon),
        callback_per_endpoint = config.callback_per_endpoint,
        callback_workers = config.callback_workers,
        pacing = pacing_config(config).enabled,
        limit_mode = ?config.limit_mode,
        breaker = config.breaker,
        pacing_min_rps = config.pacing_min_rps,
        pacing_max_rps = config.pacing_max_rps,
        pacing_increase_rps = config.pacing_increase_rps,
        pacing_decrease = config.pacing_decrease,
        pacing_quiet_ms = ms(config.pacing_quiet),
        poll_interval_ms = ms(config.poll_interval),
        max_wait_ms = ms(config.max_wait),
        log_format = ?config.log_format,
        "starting talkgate"
    );
}

/// The limiter the configuration asks for: Redis when `REDIS_URL` is set, else in-memory.
pub async fn limiter(config: &Config) -> Result<Arc<dyn ConcurrencyLimiter>, BuildError> {
    Ok(limiter_and_records(config).await?.0)
}

/// The limiter the configuration asks for and the shared records beside it: on the Redis
/// limiter's connection when `REDIS_URL` is set (so a fleet shares its adaptive limit and
/// breaker), else in memory.
pub async fn limiter_and_records(
    config: &Config,
) -> Result<(Arc<dyn ConcurrencyLimiter>, Arc<dyn ports::SharedRecords>), BuildError> {
    match &config.redis_url {
        None if tls_requested(config) => Err(BuildError::Redis(
            "REDIS_TLS_* settings are set but REDIS_URL is not: set a rediss:// REDIS_URL \
             or remove them"
                .to_owned(),
        )),
        None => Ok((
            Arc::new(limiter_memory::MemoryLimiter::new(config.max_concurrent)),
            Arc::new(limiter_memory::MemoryRecords::new()),
        )),
        Some(_) => redis_limiter(config).await,
    }
}

/// The gate's settings from the configuration (`LIMIT_MODE`, `LIMIT_*`, `BREAKER*`).
pub fn upstream_settings(config: &Config) -> app::UpstreamSettings {
    let adaptive =
        (config.limit_mode == crate::config::LimitMode::Adaptive).then(|| domain::LimitPolicy {
            backoff: config.limit_backoff,
            probe_hold: config.limit_probe_hold,
            max_probe_hold: config
                .limit_probe_hold
                .max(std::time::Duration::from_secs(900)),
            ..domain::LimitPolicy::new(config.limit_min, config.limit_max.max(config.limit_min))
        });
    let breaker = config.breaker.then(|| domain::BreakerPolicy {
        min_failures: config.breaker_min_failures,
        failure_ratio: config.breaker_failure_ratio,
        window: config.breaker_window,
        cooldown: config.breaker_cooldown,
        max_cooldown: config.breaker_max_cooldown.max(config.breaker_cooldown),
        ..domain::BreakerPolicy::default()
    });
    app::UpstreamSettings {
        adaptive,
        breaker,
        // A pacing client answers 429s itself (it slows down); the breaker keeps to failures.
        storms_open: !pacing_config(config).enabled,
        ..app::UpstreamSettings::default()
    }
}

/// Whether any Redis TLS setting is set (they mean nothing without a Redis URL).
fn tls_requested(config: &Config) -> bool {
    config.redis_tls_ca_file.is_some()
        || config.redis_tls_cert_file.is_some()
        || config.redis_tls_key_file.is_some()
        || config.redis_tls_server_name.is_some()
        || config.redis_tls_insecure_skip_verify
}

/// The Redis settings shared by the limiter and the Redis job store (also for tools that
/// reach the same Redis as the service, such as the demo's clean-up).
pub fn redis_config(config: &Config) -> Result<RedisLimiterConfig, BuildError> {
    let Some(url) = &config.redis_url else {
        return Err(BuildError::Redis("REDIS_URL is not set".to_owned()));
    };
    let mut redis = RedisLimiterConfig::new(url.expose_secret(), config.limiter_name.clone());
    redis.max_concurrent = config.max_concurrent;
    redis.lease_ttl = config.lease_ttl;
    redis.failover_policy = config.failover_policy;
    redis.local_share = config.failover_local_share;
    redis.instance_ttl = config.instance_ttl;
    redis.connection.tls = limiter_redis::RedisTlsConfig {
        ca_file: config.redis_tls_ca_file.clone(),
        cert_file: config.redis_tls_cert_file.clone(),
        key_file: config.redis_tls_key_file.clone(),
        server_name: config.redis_tls_server_name.clone(),
        insecure_skip_verify: config.redis_tls_insecure_skip_verify,
    };
    Ok(redis)
}

async fn redis_limiter(
    config: &Config,
) -> Result<(Arc<dyn ConcurrencyLimiter>, Arc<dyn ports::SharedRecords>), BuildError> {
    let redis = redis_config(config)?;
    // An unreachable Redis is not fatal: the limiter starts degraded on its in-memory
    // fallback and switches over once Redis answers (`/ready` reports it meanwhile).
    let limiter = limiter_redis::RedisLimiter::connect_with_memory_fallback(redis)
        .await
        // The error's Display redacts the URL's password.
        .map_err(|e| BuildError::Redis(e.to_string()))?;
    let records = Arc::new(limiter.records());
    Ok((Arc::new(limiter), records))
}

/// The D-ID client configuration a service configuration asks for.
pub fn did_client_config(config: &Config) -> DidClientConfig {
    DidClientConfig {
        limiter_wait_timeout: config.limiter_wait_timeout,
        // Every permit holder should find a warm connection (up to the adaptive ceiling).
        pool_max_idle_per_host: match config.limit_mode {
            crate::config::LimitMode::Adaptive => config.limit_max.max(config.max_concurrent),
            crate::config::LimitMode::Fixed => config.max_concurrent,
        } as usize,
        pacing: pacing_config(config),
        ..DidClientConfig::new(config.did_base_url.clone(), config.did_api_key.clone())
    }
}

/// How the D-ID client paces its calls after a 429 (`PACING*`).
pub fn pacing_config(config: &Config) -> did_client::PacingConfig {
    did_client::PacingConfig {
        enabled: match config.pacing {
            crate::config::Pacing::On => true,
            crate::config::Pacing::Off => false,
            // The adaptive limit learns from the same 429s; with a pacer too, the pacer's
            // spacing hides the cap from the limit (measured: stuck at 14 over a cap of 7).
            crate::config::Pacing::Auto => config.limit_mode == crate::config::LimitMode::Fixed,
        },
        min_rps: config.pacing_min_rps,
        max_rps: config.pacing_max_rps,
        increase_rps: config.pacing_increase_rps,
        decrease: config.pacing_decrease,
        quiet: config.pacing_quiet,
        ..did_client::PacingConfig::default()
    }
}

/// State over the given ports, with jobs in memory (not durable: for tests and embedders
/// that bring no store; [`build`] makes the service's). `limiter` should be the same limiter
/// the video adapter uses (ideally wrapped in [`MeteredLimiter`] over `metrics`), so that
/// `/stats` shows what the calls wait for.
pub fn memory_state(
    video: Arc<dyn ports::VideoApi>,
    limiter: Arc<dyn ConcurrencyLimiter>,
    metrics: Arc<Metrics>,
    settings: Settings,
) -> AppState {
    let jobs = Jobs::new(
        Arc::new(jobstore_memory::MemoryJobStore::new()),
        video.clone(),
        JobsConfig {
            poll_max: settings.wait.poll_interval,
            ..JobsConfig::default()
        },
    );
    AppState::with_opening_jobs(video, limiter, metrics, settings, jobs, None)
}

/// The job engine's settings a configuration asks for.
pub fn jobs_config(config: &Config) -> JobsConfig {
    JobsConfig {
        workers: match config.job_workers {
            // A worker waiting for a slot (for a create or a poll) holds its job, so it takes
            // more workers than slots to keep every slot busy (bench scenario 8: 2× kept
            // 95 % of the budget busy under a backlog).
            0 => (config.max_concurrent as usize).saturating_mul(4).max(4),
            n => n,
        },
        lease: config.job_lease,
        queue: ports::QueueLimits {
            max_queued: config.job_queue_max,
        },
        retention: config.job_retention,
        poll_max: config.poll_interval,
        // A talk is followed at least an hour (and at least as long as a generate waits).
        max_processing: config.max_wait.max(std::time::Duration::from_secs(3600)),
        talk_webhooks: config
            .public_base_url
            .as_ref()
            .map(|base| app::TalkWebhooks {
                receiver: format!(
                    "{}{}/talk-webhooks",
                    base.trim_end_matches('/'),
                    crate::uri::PREFIX
                ),
                fallback_poll: config.talk_webhook_poll,
            }),
        // Built with their sender by `callback_settings` (it can fail).
        callbacks: None,
    }
}

/// The callbacks a configuration asks for: with `CALLBACK_SECRET`, jobs' outcomes signed
/// with it (and `CALLBACK_SECRET_PREVIOUS`) and sent by `callback-sender` under the
/// callback policy, bodies scrubbed of the configured secrets as responses are; without,
/// none.
pub fn callback_settings(config: &Config) -> Result<Option<app::CallbackSettings>, BuildError> {
    // (`CALLBACK_SECRET_PREVIOUS` without it is refused by the configuration already.)
    let Some(secret) = &config.callback_secret else {
        return Ok(None);
    };
    let signer = callback_sender::Signer::new(secret, config.callback_secret_previous.as_ref())
        .map_err(|e| BuildError::Callbacks(e.to_string()))?;
    let sender = callback_sender::HttpCallbackSender::new(
        callback_sender::CallbackConfig {
            policy: crate::state::callback_policy(config),
            timeout: config.callback_timeout,
            per_endpoint: config.callback_per_endpoint,
            ..callback_sender::CallbackConfig::default()
        },
        signer,
    )
    .map_err(|e| BuildError::Callbacks(e.to_string()))?;
    let scrubber = crate::telemetry::Scrubber::from_config(config);
    let render: app::RenderCallback = Arc::new(move |job, cb| {
        let body = crate::job_routes::callback_body(job, cb);
        scrubber.scrub_bytes(&body).into_owned()
    });
    Ok(Some(app::CallbackSettings {
        workers: config.callback_workers,
        first_retry: config.callback_first_retry,
        horizon: config.callback_horizon,
        // Beyond one attempt (its timeout), so a live worker never loses its claim.
        lease: config.callback_timeout * 2 + std::time::Duration::from_secs(5),
        ..app::CallbackSettings::new(Arc::new(sender), render)
    }))
}

/// The job store the configuration asks for (see `JOB_STORE`), and, for a Redis store that
/// could not be opened at start, the handle that says why (it is opened again in the
/// background, see [`OpeningStore`]).
pub async fn job_store(
    config: &Config,
) -> Result<(Arc<dyn Backend>, Option<Arc<OpeningStore>>), BuildError> {
    match (config.job_store, &config.redis_url) {
        (JobStoreKind::Memory, _) => Ok((Arc::new(jobstore_memory::MemoryJobStore::new()), None)),
        (JobStoreKind::Redis, None) => Err(BuildError::JobStore(
            "JOB_STORE=redis needs REDIS_URL".to_owned(),
        )),
        (JobStoreKind::Redis | JobStoreKind::Auto, Some(_)) => redis_job_store(config).await,
        (JobStoreKind::Sqlite | JobStoreKind::Auto, _) => {
            Ok((sqlite_job_store(config).await?, None))
        }
    }
}

/// The SQLite job store at `JOB_STORE_PATH` (its directory is created).
async fn sqlite_job_store(config: &Config) -> Result<Arc<dyn Backend>, BuildError> {
    let path = config.job_store_path.clone();
    let shown = path.display().to_string();
    let sync = match config.job_store_sync {
        JobStoreSync::Normal => jobstore_sqlite::Synchronous::Normal,
        JobStoreSync::Full => jobstore_sqlite::Synchronous::Full,
    };
    let store = tokio::task::spawn_blocking(move || {
        jobstore_sqlite::SqliteJobStore::open_with(&path, sync)
    })
    .await
    .map_err(|e| BuildError::JobStore(format!("JOB_STORE_PATH {shown}: {e}")))?
    .map_err(|e| BuildError::JobStore(format!("JOB_STORE_PATH {shown}: {e}")))?;
    Ok(Arc::new(store))
}

/// The Redis job store, on the limiter's Redis settings and name. A Redis that cannot be
/// reached or refuses this client (credentials, TLS, a cluster node behind a plain URL) is
/// not fatal: the store is opened again in the background and says why meanwhile. Only a
/// config that can never work stops the start.
async fn redis_job_store(
    config: &Config,
) -> Result<(Arc<dyn Backend>, Option<Arc<OpeningStore>>), BuildError> {
    let redis = redis_config(config)?.connection;
    let name = config.limiter_name.clone();
    let first = match jobstore_redis::RedisJobStore::open(redis.clone(), &name).await {
        Ok(store) => return Ok((Arc::new(store), None)),
        // Its errors name the address, never the password.
        Err(e @ jobstore_redis::OpenError::Config(_)) => {
            return Err(BuildError::JobStore(e.to_string()));
        }
        Err(jobstore_redis::OpenError::Connect(e)) => open_failure(e),
    };
    tracing::warn!(
        store = "redis",
        address = %first.address,
        reason = %first.reason,
        error = %first.error,
        "job store not open: redis at {} unusable ({}); job routes answer 503 \
         job_store_unavailable while it is opened again in the background",
        first.address,
        first.reason
    );
    let open: crate::store_open::Open = Box::new(move || {
        let (redis, name) = (redis.clone(), name.clone());
        Box::pin(async move {
            match jobstore_redis::RedisJobStore::open(redis, &name).await {
                Ok(store) => Ok(Arc::new(store) as Arc<dyn Backend>),
                Err(jobstore_redis::OpenError::Connect(e)) => Err(open_failure(e)),
                // The config was fine at start; it cannot turn bad. Kept for completeness.
                Err(e @ jobstore_redis::OpenError::Config(_)) => Err(OpenFailure {
                    reason: e.reason(),
                    address: String::new(),
                    error: e.to_string(),
                    attempts: 1,
                }),
            }
        })
    });
    let opening = OpeningStore::retrying("redis", first, open);
    Ok((opening.clone(), Some(opening)))
}

/// What a failed connection of the Redis job store says in `/health`, `/ready` and `/stats`.
fn open_failure(e: limiter_redis::ConnectError) -> OpenFailure {
    OpenFailure {
        reason: e.reason,
        address: e.address,
        error: e.message,
        attempts: 1,
    }
}

/// Builds the limiter, the D-ID client and the state over them.
pub async fn build(config: &Config) -> Result<AppState, BuildError> {
    build_with(config, did_client_config(config)).await
}

/// As [`build`], with an explicit D-ID client configuration (tests shorten its backoff).
pub async fn build_with(
    config: &Config,
    did_config: DidClientConfig,
) -> Result<AppState, BuildError> {
    let metrics = Arc::new(Metrics::new());
    let (raw, records) = limiter_and_records(config).await?;
    // The gate (adaptive limit, breaker) sits on the limiter, under the metrics, so that
    // its sheds are counted like any other refused acquire.
    let gate = app::Upstream::start(raw, records, upstream_settings(config)).await;
    let limiter: Arc<dyn ConcurrencyLimiter> =
        Arc::new(MeteredLimiter::new(gate.clone(), metrics.clone()));
    let client: Arc<dyn ports::VideoApi> = Arc::new(
        DidClient::new(did_config, limiter.clone())
            .map_err(BuildError::DidClient)?
            .with_observer(Arc::new(
                crate::metrics::UpstreamObserver::new(metrics.clone()).with_gate(gate.clone()),
            )),
    );
    let (store, opening) = job_store(config).await?;
    if opening.is_none() {
        tracing::info!(
            store = store.kind(),
            at = %store_location(config),
            "job store ready"
        );
    }
    let jobs_config = JobsConfig {
        callbacks: callback_settings(config)?,
        ..jobs_config(config)
    };
    let ledger: Arc<dyn ports::CreditLedger> = store.clone();
    let cache: Arc<dyn ports::UploadCache> = store.clone();
    let jobs = Jobs::new(store, client.clone(), jobs_config);
    // Stores and links trace contexts only while spans are exported.
    jobs.set_traces(Arc::new(crate::traces::OtelJobTraces));
    let state = AppState::with_opening_jobs(
        client,
        limiter,
        metrics,
        Settings::from_config(config),
        jobs,
        opening,
    );
    let uploads = config.upload_cache.then(|| {
        Arc::new(crate::upload_cache::Uploads::new(
            cache,
            config.upload_cache_ttl,
            config.upload_cache_max_entries,
        ))
    });
    if let Some(u) = &uploads {
        state.set_uploads(u.clone());
    }
    state.set_upstream(gate);
    // Budgets come from the tenants file (also after a reload): the engine always has the
    // ledger, and a tenant without a budget reserves nothing. Audio lengths come from the
    // upload cache's entries.
    state
        .jobs()
        .set_credits(Arc::new(app::credits::Credits::new(
            ledger,
            state.tenants().clone(),
            uploads.map(|u| u as Arc<dyn app::credits::AudioLengths>),
            config.budget_unknown_audio_secs,
        )));
    Ok(state)
}

/// Where the job store lives, for the log: the SQLite file, the Redis address (never the
/// password), or `memory`.
fn store_location(config: &Config) -> String {
    match (config.job_store, &config.redis_url) {
        (JobStoreKind::Memory, _) => "memory".to_owned(),
        (JobStoreKind::Redis | JobStoreKind::Auto, Some(url)) => {
            limiter_redis::config::address_of(url.expose_secret())
        }
        _ => config.job_store_path.display().to_string(),
    }
}
