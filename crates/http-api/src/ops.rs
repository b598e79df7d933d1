//! Operational routes: `/stats`, `/health`, `/ready`, `/metrics` and `/cleanup-expired`.
//!
//! `/health` is liveness: always 200 while the process serves, with the facts an operator
//! needs (key configured? limiter degraded?). `/ready` is readiness: 503 while this instance
//! cannot do useful work — no D-ID key, or a limiter that has run degraded (Redis lost, local
//! fallback) for longer than `READY_DEGRADED_GRACE_SECS`. Both name the configured and the
//! serving backend, the Redis address (never the password) and why it is unusable
//! (`auth`, `refused`, `timeout`, `tls`, `other`).

use bytes::Bytes;
use domain::Priority;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use ports::{LimiterStats, VideoApiStats};
use serde_json::{Value, json};

use crate::body::{self, BoxError};
use crate::error::{ApiError, Body, json_response};
use crate::metrics::CONTENT_TYPE;
use crate::state::AppState;
use crate::tenants::TenantPolicy;

/// The limiter as `/health` shows it under `rate_limiter`, which `/stats` extends: the
/// backend section's facts, the limit and the slots.
fn rate_limiter_json(s: &LimiterStats, configured: u32) -> Value {
    let b = &s.backend;
    json!({
        "backend": b.kind,
        "configured_backend": b.configured,
        "serving_backend": b.serving,
        "address": b.address,
        "degraded": s.degraded,
        "degraded_reason": b.degraded_reason,
        "max_concurrent": s.max_concurrent,
        "configured_max_concurrent": configured,
        "active_requests": s.active,
        "available_slots": s.available,
        "queue_size": s.queued.total(),
        "failover": b.failover,
    })
}

/// The limiter part of `/stats`, in the original's field names plus the new ones.
fn limiter_json(s: &LimiterStats, configured: u32) -> Value {
    let mut v = rate_limiter_json(s, configured);
    v["queue_by_priority"] = json!(s.queued);
    v["waits"] = json!({
        "acquired_immediately": s.counters.acquired_immediately,
        "acquired_after_wait": s.counters.acquired_after_wait,
        "timeouts": s.counters.timeouts,
        "cancelled": s.counters.cancelled,
        "max_wait_ms": s.max_wait_ms,
        "oldest_queued_ms": s.oldest_queued_ms,
    });
    // The acquire outcomes are under `waits` already; `counters` has only the rest.
    v["counters"] = json!({
        "released": s.counters.released,
        "leases_lost": s.counters.leases_lost,
        "leases_reclaimed": s.counters.leases_reclaimed,
    });
    v
}

/// The upstream client's own description, without the facts the `client` section already
/// holds under the original's names (`api_key_configured`, `pool_limits.max_keepalive`).
fn upstream_json(u: &VideoApiStats) -> Value {
    let c = &u.client;
    json!({
        "base_url": c.base_url,
        "auth_scheme": c.auth_scheme,
        "pool": {
            "idle_timeout_ms": c.pool.idle_timeout_ms,
            "connect_timeout_ms": c.pool.connect_timeout_ms,
            "request_timeout_ms": c.pool.request_timeout_ms,
            "upload_timeout_ms": c.pool.upload_timeout_ms,
        },
        "retry_policy": c.retry_policy,
        "requests": u.requests,
        "retries": u.retries,
        "transport_errors": u.transport_errors,
        "responses": u.responses,
        "creates": u.creates,
        "create_recoveries": u.create_recoveries,
        "creates_untagged": u.creates_untagged,
        "polls": u.polls,
        "lookup_pages": u.lookup_pages,
        "pacing": u.pacing,
    })
}

/// `GET /stats`.
///
/// Each fact appears once, and every duration is a number of milliseconds named `*_ms`.
/// The original's keys stay where they were (`client.api_key_configured`,
/// `client.pool_limits`); `client.upstream` is the D-ID client's configuration and counters
/// (`retries` among them) without what those keys already say.
pub async fn stats(state: &AppState, caller: &TenantPolicy) -> Result<Response<Body>, ApiError> {
    let limiter = state.limiter().stats().await;
    state.observe_degraded(limiter.degraded);
    let upstream = state.inner.video.stats();
    let client = json!({
        "api_key_configured": state.settings().api_key_configured,
        "client_initialized": true,
        "pool_limits": {
            "max_connections": limiter.max_concurrent,
            "max_keepalive": upstream.client.pool.max_idle_per_host,
        },
        "upstream": upstream_json(&upstream),
    });
    let view = state.tenants().view();
    let sees_all = caller.admin || !view.auth;
    let budgets =
        crate::budgets::rows(state, |name| sees_all || name == caller.tenant.as_str()).await;
    let mut body = json!({
        "client": client,
        "rate_limiter": limiter_json(&limiter, state.settings().max_concurrent),
        "jobs": jobs_json(state).await,
        "tenants": tenants_json(state, caller, &limiter, &budgets),
    });
    // The service's budget decisions and the account's balance are the admins'.
    if sees_all {
        body["credits"] = crate::budgets::stats_json(state, &budgets);
    }
    body["upload_cache"] = upload_cache_json(state);
    let traces = state.traces().map_or_else(
        || crate::traces::Traces::off().stats(),
        crate::traces::Traces::stats,
    );
    body["traces"] = json!(traces);
    if let Some(gate) = state.upstream() {
        body["upstream_gate"] = gate_json(&gate.stats());
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// The gate's part of `/stats`: the limit mode, the learned limit (its bounds, the level
/// held as too high, the recent changes) and the breaker (state, trips, sheds by priority,
/// probes), and whether the fleet's shared records answer.
fn gate_json(g: &app::UpstreamStats) -> Value {
    let adaptive = g.adaptive.as_ref().map(|a| {
        json!({
            "limit": a.limit,
            "floor": a.floor,
            "ceiling": a.ceiling,
            "held_level": a.held_level,
            "held_until": a.held_until_ms.map(crate::time_text::timestamp),
            "changes": a.changes,
            "changes_here": a.changes_here.iter().map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "recent": a.recent.iter().map(|c| json!({
                "from_limit": c.from, "to_limit": c.to, "why": c.reason, "at": crate::time_text::timestamp(c.at_ms),
            })).collect::<Vec<_>>(),
        })
    });
    let breaker = g.breaker.as_ref().map(|b| {
        json!({
            "state": b.state,
            "open_until": b.open_until_ms.map(crate::time_text::timestamp),
            "trip_reason": b.reason,
            "trips": b.trips,
            "shed_low": b.shed[Priority::Low.index()],
            "shed_normal": b.shed[Priority::Normal.index()],
            "shed_high": b.shed[Priority::High.index()],
            "shed_critical": b.shed[Priority::Critical.index()],
            "probes": b.probes,
            "last_change": b.last_change.map(|c| json!({
                "from_state": c.from, "to_state": c.to, "cause": c.reason, "changed_at": crate::time_text::timestamp(c.at_ms),
            })),
        })
    });
    json!({
        "limit_mode": g.limit_mode,
        "adaptive": adaptive,
        "breaker": breaker,
        "shared": g.shared,
        "records_errors": g.records_errors,
    })
}

/// The upload cache's part of `/stats`: on or off, its settings, and per kind the lookups
/// that hit (no D-ID call), missed, failed (uploaded without the cache), and entries stored.
fn upload_cache_json(state: &AppState) -> Value {
    let Some(u) = state.uploads() else {
        return json!({ "cache_enabled": false });
    };
    let mut v = json!({
        "cache_enabled": true,
        "cache_ttl_ms": ports::jobs::duration_ms(u.ttl()),
        "cache_max_entries": u.max_entries(),
    });
    for (name, kind) in [
        ("image", domain::UploadKind::Image),
        ("audio", domain::UploadKind::Audio),
    ] {
        let c = u.counts(kind);
        v[format!("{name}_hits")] = json!(c.hits);
        v[format!("{name}_misses")] = json!(c.misses);
        v[format!("{name}_errors")] = json!(c.errors);
        v[format!("{name}_stored")] = json!(c.stored);
    }
    v
}

/// The tenants part of `/stats`: whether callers authenticate, the file and its reloads,
/// and per tenant its policy and its part of the limiter now (`limiter_queued`; for a
/// capped tenant `limiter_active`). An admin caller (or everyone, without authentication)
/// sees every tenant; any other tenant only itself.
fn tenants_json(
    state: &AppState,
    caller: &TenantPolicy,
    limiter: &LimiterStats,
    budgets: &[crate::budgets::BudgetRow],
) -> Value {
    let view = state.tenants().view();
    let sees_all = caller.admin || !view.auth;
    let by_tenant: serde_json::Map<String, Value> = view
        .tenants
        .iter()
        .filter(|(name, _)| sees_all || name.as_str() == caller.tenant.as_str())
        .map(|(name, p)| {
            let slots = limiter.tenants.get(name).copied().unwrap_or_default();
            let shown = crate::tenants::public_name(name);
            let mut entry = json!({
                "weight": p.share.weight(),
                "max_concurrent": p.share.cap(),
                "max_priority": p.max_priority.as_str(),
                "admin": p.admin,
                "limiter_active": slots.active,
                "limiter_queued": slots.queued,
            });
            if let Some(row) = budgets.iter().find(|r| r.tenant == shown) {
                entry["budget"] = row.json();
            }
            (shown.to_owned(), entry)
        })
        .collect();
    let mut v = json!({
        "auth": view.auth,
        "by_tenant": by_tenant,
    });
    if view.file.is_some() && sees_all {
        v["file"] = json!(view.file);
        v["reloads_ok"] = json!(view.reloads_ok);
        v["reloads_refused"] = json!(view.reloads_failed);
        v["reload_error"] = json!(view.last_error);
    }
    v
}

/// The jobs part of `/stats`: the store, jobs per state (`<state>_jobs`), the age of the
/// oldest queued job per priority (`<priority>_queue_age_ms`, 0 when none is queued).
async fn jobs_json(state: &AppState) -> Value {
    let jobs = state.jobs();
    let config = jobs.config();
    let mut v = json!({
        "store": jobs.store().kind(),
        "workers": config.workers,
        "queue_max": config.queue.max_queued,
        "lease_ms": ports::jobs::duration_ms(config.lease),
        "retention_ms": ports::jobs::duration_ms(config.retention),
        // Read before the counts below (which are one more call).
        "store_calls": jobs.store_calls(),
    });
    // D-ID's webhooks, when taken (PUBLIC_BASE_URL): receipts on this instance.
    let hooks = jobs.talk_webhook_counts();
    v["talk_webhooks"] = json!({
        "enabled": config.talk_webhooks.is_some(),
        "accepted": hooks.accepted,
        "duplicate": hooks.duplicate,
        "rejected": hooks.rejected,
        "confirmed": hooks.confirmed,
    });
    // Callbacks to callers (CALLBACK_SECRET): attempts and outcomes on this instance; pending
    // (in the store, every instance's) below with the counts.
    let cb = jobs.callback_counts();
    v["callbacks"] = json!({
        "configured": config.callbacks.is_some(),
        "attempted": cb.attempted(),
        "succeeded": cb.delivered,
        "failed": cb.failed,
        "pending": null,
        "attempts_by_outcome": {
            "ok": cb.attempts_ok,
            "status": cb.attempts_status,
            "timed_out": cb.attempts_timeout,
            "transport": cb.attempts_transport,
            "refused": cb.attempts_refused,
        },
    });
    // Each fact once in /stats: the store's kind is `store` above, the names say the rest.
    let failure = state.job_store_failure();
    v["store_open"] = json!(failure.is_none());
    if let Some(f) = failure {
        v["store_reason"] = json!(f.reason);
        v["store_address"] = json!(f.address);
        v["store_open_error"] = json!(f.error);
        v["store_open_attempts"] = json!(f.attempts);
    }
    match jobs.store().counts().await {
        Ok(counts) => {
            let now = app::now_ms();
            v["callbacks"]["pending"] = json!(counts.callbacks_pending);
            for (status, n) in &counts.by_status {
                v[format!("{}_jobs", status.as_str())] = json!(n);
            }
            // 0 when none of that priority is queued.
            for p in Priority::ALL {
                v[format!("{}_queue_age_ms", p.as_str())] =
                    json!(counts.oldest_queued_ms[p.index()].map_or(0, |t| now.saturating_sub(t)));
            }
        }
        Err(e) => v["store_error"] = json!(e.to_string()),
    }
    v
}

/// Whether the job store is open, and if not why: `{kind, open, reason, address, error}`
/// (a Redis store that could not be opened at start is opened again in the background).
fn job_store_json(state: &AppState) -> Value {
    let failure = state.job_store_failure();
    json!({
        "kind": state.jobs().store().kind(),
        "open": failure.is_none(),
        "reason": failure.as_ref().map(|f| f.reason),
        "address": failure.as_ref().map(|f| f.address.as_str()),
        "error": failure.as_ref().map(|f| f.error.as_str()),
        "attempts": failure.as_ref().map(|f| f.attempts),
    })
}

/// `GET /health` (liveness).
pub async fn health(state: &AppState) -> Result<Response<Body>, ApiError> {
    let s = state.limiter().stats().await;
    state.observe_degraded(s.degraded);
    let store = job_store_json(state);
    let breaker = state.upstream().and_then(|g| g.stats().breaker);
    let breaker_open = breaker
        .as_ref()
        .is_some_and(|b| b.state != domain::BreakerMode::Closed);
    let status = if s.degraded || store["open"] == false || breaker_open {
        "degraded"
    } else {
        "healthy"
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "status": status,
            "service": state.settings().service_name,
            "version": env!("CARGO_PKG_VERSION"),
            "api_key_configured": state.settings().api_key_configured,
            "rate_limiter": rate_limiter_json(&s, state.settings().max_concurrent),
            "job_store": store,
            "breaker": breaker.map(|b| json!({
                "state": b.state,
                "open_until": b.open_until_ms.map(crate::time_text::timestamp),
                "reason": b.reason,
            })),
        }),
    ))
}

/// `GET /ready` (readiness).
pub async fn ready(state: &AppState) -> Result<Response<Body>, ApiError> {
    let s = state.limiter().stats().await;
    let degraded_for = state.observe_degraded(s.degraded);
    let grace = state.settings().ready_degraded_grace;
    let mut reasons = Vec::new();
    if !state.settings().api_key_configured {
        reasons.push("D_ID_API_KEY is not set".to_owned());
    }
    if let Some(d) = degraded_for
        && d >= grace
    {
        // Name what was configured, where it is, why it is unusable and what serves
        // instead: "the memory limiter has run degraded" told an operator none of that.
        let b = &s.backend;
        let configured = if b.configured.is_empty() {
            "distributed"
        } else {
            b.configured.as_str()
        };
        let at = b
            .address
            .as_deref()
            .map_or_else(String::new, |a| format!(" at {a}"));
        let why = b
            .degraded_reason
            .map_or_else(String::new, |r| format!(" ({r})"));
        reasons.push(format!(
            "the {configured} limiter{at} is degraded{why}: the {} fallback has served \
                 for {:.0}s (grace {:.0}s)",
            b.serving,
            d.as_secs_f64(),
            grace.as_secs_f64()
        ));
    }
    // The job store takes every generate and every job: one that cannot take a write (its
    // file removed, replaced or read-only, its Redis refusing writes) makes the instance
    // unready, whatever the limiter says.
    let store = state.jobs().store();
    let opening = state.job_store_failure();
    let store_error = store.check().await.err().map(|e| e.to_string());
    if let Some(e) = &store_error {
        reasons.push(format!(
            "the {} job store cannot take writes: {e}",
            store.kind()
        ));
    }
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(
        status,
        &json!({
            "ready": ready,
            "status": if ready { "ready" } else { "not_ready" },
            "reasons": reasons,
            "api_key_configured": state.settings().api_key_configured,
            "job_store": {
                "kind": store.kind(),
                "writable": store_error.is_none(),
                "error": store_error,
                "open": opening.is_none(),
                "reason": opening.as_ref().map(|f| f.reason),
                "address": opening.as_ref().map(|f| f.address.as_str()),
            },
            "limiter_degraded": s.degraded,
            "rate_limiter": {
                "configured_backend": s.backend.configured,
                "serving_backend": s.backend.serving,
                "address": s.backend.address,
                "degraded": s.degraded,
                "degraded_reason": s.backend.degraded_reason,
            },
        }),
    ))
}

/// `GET /metrics` (Prometheus text format 0.0.4).
pub async fn metrics(state: &AppState) -> Result<Response<Body>, ApiError> {
    let limiter = state.limiter().stats().await;
    let upstream = state.inner.video.stats();
    let m = state.metrics();
    m.set_snapshot(limiter, upstream);
    m.set_talk_webhooks(state.jobs().talk_webhook_counts());
    if let Some(gate) = state.upstream() {
        m.set_gate(gate.stats());
    }
    m.set_callbacks(state.jobs().callback_counts());
    if let Some(counts) = state.traces().and_then(crate::traces::Traces::counts) {
        m.set_trace_exports(counts);
    }
    let tenants = state.tenants().view();
    if tenants.file.is_some() {
        m.set_tenant_reloads(tenants.reloads_ok, tenants.reloads_failed);
    }
    if let Some(u) = state.uploads() {
        m.set_uploads([
            u.counts(domain::UploadKind::Image),
            u.counts(domain::UploadKind::Audio),
        ]);
    }
    let budgets = crate::budgets::rows(state, |_| true).await;
    m.set_credits(crate::metrics::CreditsSnapshot {
        tenants: budgets
            .iter()
            .filter_map(|r| {
                let u = r.usage.as_ref().ok()?;
                Some((r.tenant.clone(), r.budget.credits, u.spent, u.reserved))
            })
            .collect(),
        counts: state
            .jobs()
            .credits()
            .map(|c| c.counts())
            .unwrap_or_default(),
        account: state.account().snapshot(),
    });
    // The same facts as `/health` (opened?) and `/ready` (takes a write?), so an alert can
    // page on a store that generates and jobs cannot use.
    let store = state.jobs().store();
    let store_up = state.job_store_failure().is_none() && store.check().await.is_ok();
    m.set_job_store_up(store_up);
    match store.counts().await {
        Ok(counts) => m.set_jobs(counts, app::now_ms()),
        Err(e) => tracing::warn!(error = %e, "job counts unavailable for /metrics"),
    }
    let text = m
        .encode()
        .map_err(|_| ApiError::Internal("metrics encoding failed".into()))?;
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(resp)
}

/// What `PUT /limit` takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitRequest {
    max_concurrent: u32,
}

/// The limit part of `GET/PUT /limit`: the limit in force, this instance's configured one,
/// and who the limit applies to.
async fn limit_json(state: &AppState) -> Value {
    let s = state.limiter().stats().await;
    let configured = state.settings().max_concurrent;
    // While degraded the limiter admits its fallback share; the fleet's limit is still the
    // one in the backend (or a PUT waiting for it).
    let limit = match &s.backend.failover {
        Some(f) if s.degraded && f.fleet_limit > 0 => f.fleet_limit,
        _ => s.max_concurrent,
    };
    json!({
        "max_concurrent": limit,
        "configured_max_concurrent": configured,
        "limit_differs": limit != configured,
        "serving_max_concurrent": s.max_concurrent,
        "backend": s.backend.configured,
        "degraded": s.degraded,
        "applies_to": if s.backend.configured == "redis" {
            "every instance sharing this LIMITER_NAME on this Redis"
        } else {
            "this instance"
        },
    })
}

/// `GET /limit`: the concurrency limit in force (on Redis: the fleet's, stored in Redis)
/// beside this instance's `MAX_CONCURRENT_REQUESTS`.
pub async fn limit(state: &AppState) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &limit_json(state).await))
}

/// `PUT /limit` `{"max_concurrent": N}`: an admin call (it needs `HTTP_API_TOKEN`, and the
/// router has checked the bearer token). Sets the limit of every instance sharing the Redis
/// limiter (stored in Redis; each serves it at its next script, within a heartbeat), or of
/// this process with the in-memory limiter. While Redis is unreachable it is stored when
/// Redis answers again.
pub async fn set_limit<B>(
    state: &AppState,
    caller: &TenantPolicy,
    req: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require_admin(state, caller)?;
    let asked: LimitRequest = body::read_json(req, 4096).await?;
    if !(1..=MAX_LIMIT).contains(&asked.max_concurrent) {
        return Err(ApiError::InvalidBody(format!(
            "max_concurrent must be 1 to {MAX_LIMIT}, not {}",
            asked.max_concurrent
        )));
    }
    let before = state.limiter().stats().await.max_concurrent;
    state
        .limiter()
        .set_limit(asked.max_concurrent)
        .await
        .map_err(ports::VideoApiError::Limiter)?;
    tracing::warn!(
        from = before,
        to = asked.max_concurrent,
        "concurrency limit set by PUT /limit"
    );
    Ok(json_response(StatusCode::OK, &limit_json(state).await))
}

/// Admin routes need authentication (without it they are disabled) and an admin tenant:
/// `HTTP_API_TOKEN`'s, or one with `admin = true` in the tenants file.
fn require_admin(state: &AppState, caller: &TenantPolicy) -> Result<(), ApiError> {
    if !state.tenants().auth_required() {
        return Err(ApiError::AdminDisabled);
    }
    if !caller.admin {
        return Err(ApiError::AdminOnly);
    }
    Ok(())
}

/// The largest limit `PUT /limit` accepts: far above any D-ID account's concurrency, low
/// enough that a typo (an extra digit or three) is refused.
const MAX_LIMIT: u32 = 10_000;

/// `POST /cleanup-expired`: an admin call. Slots are leases now, reclaimed by the limiter
/// itself, so this only reports what was reclaimed. It needs `HTTP_API_TOKEN` to be set
/// (the router has already checked the bearer token then); `max_age_seconds` is accepted
/// for compatibility and ignored, but must be a number of seconds when given (as the
/// OpenAPI document says), so a caller's mistake is not silently swallowed.
pub async fn cleanup<B>(
    state: &AppState,
    caller: &TenantPolicy,
    req: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require_admin(state, caller)?;
    if let Some(raw) = crate::uri::query_param(req.uri(), "max_age_seconds")
        && !raw.parse::<f64>().is_ok_and(|v| v.is_finite() && v >= 0.0)
    {
        let shown: String = raw.chars().take(40).filter(|c| !c.is_control()).collect();
        return Err(ApiError::InvalidParameter {
            name: "max_age_seconds",
            message: format!("{shown:?} is not a number of seconds (zero or more)"),
        });
    }
    body::discard(req, 4096).await;
    let s = state.limiter().stats().await;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "message": "nothing to clean up: slots are leases that expire and are reclaimed by the limiter itself",
            "backend": s.backend.kind,
            "reclaimed_leases": s.counters.leases_reclaimed,
            "leases_lost": s.counters.leases_lost,
            "active_requests": s.active,
            "queue_size": s.queued.total(),
        }),
    ))
}
