//! Routing: which handler answers a method and path, plus the auth rule per route.
//!
//! The route table is small and fixed, so it is a `match` on the path rather than a router
//! crate. A path that matches no route is a 404; a path that matches with another method is
//! a 405 with `Allow`.
//!
//! The request head's size limits ([`check_head`](crate::head::check_head)) come first,
//! then auth: when `HTTP_API_TOKEN` is set, every path under the prefix other than the open
//! probes and metrics (`is_open`) needs the token *before* the method or the route is
//! looked at, so an unauthenticated client cannot tell an existing route from an
//! unknown one or learn which methods a route takes. The probes (`/health`, `/ready`) and
//! `/metrics`, at the root or under the prefix, never need one; nor does D-ID's webhook
//! (`/talk-webhooks/{job_id}`, authenticated by its per-job token); paths outside the
//! prefix are 404 without one.

use bytes::Bytes;
use http::{Request, Response};

use crate::body::BoxError;
use crate::error::{ApiError, Body};
use crate::handlers;
use crate::job_routes;
use crate::ops;
use crate::state::AppState;
use crate::tenants::{CallerCell, TenantPolicy};
use crate::uri::PREFIX;

/// Route templates, used as metrics labels and in logs.
pub mod templates {
    /// `POST /api/d_id_optimized/generate-video`.
    pub const GENERATE_VIDEO: &str = "/api/d_id_optimized/generate-video";
    /// `POST /api/d_id_optimized/upload-source-image`.
    pub const UPLOAD_IMAGE: &str = "/api/d_id_optimized/upload-source-image";
    /// `POST /api/d_id_optimized/upload-audio`.
    pub const UPLOAD_AUDIO: &str = "/api/d_id_optimized/upload-audio";
    /// `GET /api/d_id_optimized/talk-status/{talk_id}`.
    pub const TALK_STATUS: &str = "/api/d_id_optimized/talk-status/{talk_id}";
    /// `GET /api/d_id_optimized/stats`.
    pub const STATS: &str = "/api/d_id_optimized/stats";
    /// `GET /api/d_id_optimized/health` and `GET /health`.
    pub const HEALTH: &str = "/health";
    /// `GET /api/d_id_optimized/ready` and `GET /ready`.
    pub const READY: &str = "/ready";
    /// `GET /api/d_id_optimized/metrics` and `GET /metrics`.
    pub const METRICS: &str = "/metrics";
    /// `POST /api/d_id_optimized/cleanup-expired`.
    pub const CLEANUP: &str = "/api/d_id_optimized/cleanup-expired";
    /// `GET` and `PUT /api/d_id_optimized/limit`.
    pub const LIMIT: &str = "/api/d_id_optimized/limit";
    /// `POST` and `GET /api/d_id_optimized/jobs`.
    pub const JOBS: &str = "/api/d_id_optimized/jobs";
    /// `GET` and `DELETE /api/d_id_optimized/jobs/{job_id}`.
    pub const JOB: &str = "/api/d_id_optimized/jobs/{job_id}";
    /// `POST /api/d_id_optimized/talk-webhooks/{job_id}` (D-ID's webhook; its own token).
    pub const TALK_WEBHOOK: &str = "/api/d_id_optimized/talk-webhooks/{job_id}";
    /// Any path without a route.
    pub const UNMATCHED: &str = "unmatched";
}

/// A matched route.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    GenerateVideo,
    UploadImage,
    UploadAudio,
    TalkStatus(String),
    Stats,
    Health,
    Ready,
    Metrics,
    Cleanup,
    Limit,
    Jobs,
    Job(String),
    TalkWebhook(String),
}

impl Route {
    fn template(&self) -> &'static str {
        use templates as t;
        match self {
            Route::GenerateVideo => t::GENERATE_VIDEO,
            Route::UploadImage => t::UPLOAD_IMAGE,
            Route::UploadAudio => t::UPLOAD_AUDIO,
            Route::TalkStatus(_) => t::TALK_STATUS,
            Route::Stats => t::STATS,
            Route::Health => t::HEALTH,
            Route::Ready => t::READY,
            Route::Metrics => t::METRICS,
            Route::Cleanup => t::CLEANUP,
            Route::Limit => t::LIMIT,
            Route::Jobs => t::JOBS,
            Route::Job(_) => t::JOB,
            Route::TalkWebhook(_) => t::TALK_WEBHOOK,
        }
    }

    fn allowed(&self) -> &'static [&'static str] {
        match self {
            Route::GenerateVideo
            | Route::UploadImage
            | Route::UploadAudio
            | Route::Cleanup
            | Route::TalkWebhook(_) => &["POST"],
            Route::Jobs => &["GET", "HEAD", "POST"],
            Route::Limit => &["GET", "HEAD", "PUT"],
            Route::Job(_) => &["GET", "HEAD", "DELETE"],
            // HEAD answers like GET without a body (RFC 9110 §9.3.2); hyper drops the body.
            _ => &["GET", "HEAD"],
        }
    }
}

/// Whether `path` is answered without a token: the probes and metrics (at the root or under
/// the prefix) and every path outside the prefix (which is a 404 anyway). Probes and
/// metrics are open so that orchestrators and scrapers need no secret; they reveal no
/// credentials and no caller data.
fn is_open(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return true;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        // `/api/d_id_optimizedX` is not under the prefix.
        return true;
    }
    // D-ID's webhook carries its own per-job token (D-ID cannot send ours).
    matches!(rest, "/health" | "/ready" | "/metrics") || rest.starts_with("/talk-webhooks/")
}

fn match_path(path: &str) -> Option<Route> {
    // The probes and metrics also live at the root, where orchestrators look for them.
    match path {
        "/health" => return Some(Route::Health),
        "/ready" => return Some(Route::Ready),
        "/metrics" => return Some(Route::Metrics),
        _ => {}
    }
    let rest = path.strip_prefix(PREFIX)?;
    Some(match rest {
        "/generate-video" => Route::GenerateVideo,
        "/upload-source-image" => Route::UploadImage,
        "/upload-audio" => Route::UploadAudio,
        "/stats" => Route::Stats,
        "/health" => Route::Health,
        "/ready" => Route::Ready,
        "/metrics" => Route::Metrics,
        "/cleanup-expired" => Route::Cleanup,
        "/limit" => Route::Limit,
        "/jobs" => Route::Jobs,
        _ => {
            if let Some(id) = rest.strip_prefix("/talk-webhooks/") {
                return Some(Route::TalkWebhook(id.to_owned()));
            }
            if let Some(id) = rest.strip_prefix("/jobs/") {
                // As for talk ids: the job id parser says what is wrong with it.
                return Some(Route::Job(id.to_owned()));
            }
            // Everything after the prefix is the id, also if it holds '/' or '%': TalkId
            // rejects it with a 400 that says why, instead of a confusing 404.
            let id = rest.strip_prefix("/talk-status/")?;
            Route::TalkStatus(id.to_owned())
        }
    })
}

/// The route template of `path` (the metrics label), known before the handler runs.
pub fn template(path: &str) -> &'static str {
    match_path(path).map_or(templates::UNMATCHED, |r| r.template())
}

/// Answers one request: the route template (for metrics) and the handler's result.
pub async fn dispatch<B>(
    state: &AppState,
    req: Request<B>,
) -> (&'static str, Result<Response<Body>, ApiError>)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // An oversized head is refused before anything else looks at it, also before auth.
    if let Err(e) = crate::head::check_head(&req) {
        let template = match_path(req.uri().path()).map_or(templates::UNMATCHED, |r| r.template());
        return (template, Err(e));
    }
    let caller = if is_open(req.uri().path()) {
        TenantPolicy::public()
    } else {
        match state.tenants().authenticate(req.headers()) {
            Ok(caller) => caller,
            Err(why) => {
                tracing::info!(reason = ?why, "request not authorised");
                return (template(req.uri().path()), Err(ApiError::Unauthorized));
            }
        }
    };
    if !is_open(req.uri().path()) {
        // (An open route has no caller to name.)
        tracing::Span::current().record(
            "tenant",
            crate::tenants::public_name(caller.tenant.as_str()),
        );
        if let Some(cell) = req.extensions().get::<CallerCell>() {
            cell.set(&caller.tenant);
        }
    }
    let caller = &caller;
    let Some(route) = match_path(req.uri().path()) else {
        return (
            templates::UNMATCHED,
            Err(ApiError::RouteNotFound(
                req.uri().path().chars().take(200).collect(),
            )),
        );
    };
    let template = route.template();
    let allowed = route.allowed();
    if !allowed.contains(&req.method().as_str()) {
        return (template, Err(ApiError::MethodNotAllowed { allow: allowed }));
    }
    let result = match route {
        Route::GenerateVideo => handlers::generate_video(state, caller, req).await,
        Route::UploadImage => handlers::upload(state, caller, req, domain::UploadKind::Image).await,
        Route::UploadAudio => handlers::upload(state, caller, req, domain::UploadKind::Audio).await,
        Route::TalkStatus(id) => handlers::talk_status(state, caller, &req, &id).await,
        Route::Stats => ops::stats(state, caller).await,
        Route::Health => ops::health(state).await,
        Route::Ready => ops::ready(state).await,
        Route::Metrics => ops::metrics(state).await,
        Route::Cleanup => ops::cleanup(state, caller, req).await,
        Route::Limit if req.method() == http::Method::PUT => {
            ops::set_limit(state, caller, req).await
        }
        Route::Limit => ops::limit(state).await,
        Route::Jobs if req.method() == http::Method::POST => {
            job_routes::submit(state, caller, req).await
        }
        Route::Jobs => job_routes::list(state, caller, &req).await,
        Route::Job(id) if req.method() == http::Method::DELETE => {
            job_routes::cancel(state, caller, &id).await
        }
        Route::Job(id) => job_routes::get(state, caller, &id).await,
        Route::TalkWebhook(id) => crate::talk_webhooks::receive(state, req, &id).await,
    };
    (template, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expected: Option<Route>) {
        assert_eq!(match_path(path), expected, "{path}");
    }

    #[test]
    fn paths_map_to_routes() {
        check(
            "/api/d_id_optimized/generate-video",
            Some(Route::GenerateVideo),
        );
        check(
            "/api/d_id_optimized/upload-source-image",
            Some(Route::UploadImage),
        );
        check("/api/d_id_optimized/upload-audio", Some(Route::UploadAudio));
        check("/api/d_id_optimized/stats", Some(Route::Stats));
        check("/api/d_id_optimized/health", Some(Route::Health));
        check("/health", Some(Route::Health));
        check("/ready", Some(Route::Ready));
        check("/metrics", Some(Route::Metrics));
        check("/api/d_id_optimized/cleanup-expired", Some(Route::Cleanup));
        check("/api/d_id_optimized/limit", Some(Route::Limit));
        check(
            "/api/d_id_optimized/talk-status/tlk_1",
            Some(Route::TalkStatus("tlk_1".into())),
        );
        check(
            "/api/d_id_optimized/talk-status/../credits",
            Some(Route::TalkStatus("../credits".into())),
        );
        check("/api/d_id_optimized/jobs", Some(Route::Jobs));
        check(
            "/api/d_id_optimized/jobs/job_x",
            Some(Route::Job("job_x".into())),
        );
        check("/api/d_id_optimized/talk-status", None);
        check("/api/d_id_optimized/nope", None);
        check("/api/d_id_optimized", None);
        check("/", None);
        check("/api/d_id/generate-video", None);
    }

    #[test]
    fn only_probes_metrics_and_paths_outside_the_prefix_are_open() {
        for (path, open) in [
            ("/health", true),
            ("/ready", true),
            ("/metrics", true),
            ("/nope", true),
            ("/api/d_id_optimizedX/stats", true),
            ("/api/d_id_optimized/health", true),
            ("/api/d_id_optimized/ready", true),
            ("/api/d_id_optimized/metrics", true),
            ("/api/d_id_optimized", false),
            ("/api/d_id_optimized/", false),
            ("/api/d_id_optimized/stats", false),
            ("/api/d_id_optimized/nope", false),
            ("/api/d_id_optimized/health/x", false),
            ("/api/d_id_optimized/talk-status/tlk_1", false),
        ] {
            assert_eq!(is_open(path), open, "{path}");
        }
    }
}
