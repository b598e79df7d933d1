//! One request's path through the fake: route matching, stats, auth, throttling, injected
//! latency and faults, then the handler.
//!
//! The order mirrors D-ID's stack: API Gateway matches the route (unknown → 403 "Missing
//! Authentication Token"), its authorizer checks the key (401), throttling refuses excess
//! (429), and only then does the backend (latency, 5xx, the handlers) see the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use hyper::body::Incoming;

use crate::api::{CutConnection, Outcome, auth, control, credits, errors, s3, talks, uploads};
use crate::faults::{Delay, Faults};
use crate::state::{Bucket, Shared, lock};

/// A D-ID route, with its path parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    UploadImage,
    DeleteImage(String),
    UploadAudio,
    DeleteAudio(String),
    CreateTalk,
    ListTalks,
    GetTalk(String),
    DeleteTalk(String),
    Credits,
}

impl Route {
    /// Matches a method and path against D-ID's routes.
    pub fn parse(method: &Method, path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        let id = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Some(match (method, segments.as_slice()) {
            (&Method::POST, ["images"]) => Self::UploadImage,
            (&Method::DELETE, ["images", i]) => Self::DeleteImage(id(i)?),
            (&Method::POST, ["audios"]) => Self::UploadAudio,
            (&Method::DELETE, ["audios", i]) => Self::DeleteAudio(id(i)?),
            (&Method::POST, ["talks"]) => Self::CreateTalk,
            (&Method::GET, ["talks"]) => Self::ListTalks,
            (&Method::GET, ["talks", i]) => Self::GetTalk(id(i)?),
            (&Method::DELETE, ["talks", i]) => Self::DeleteTalk(id(i)?),
            (&Method::GET, ["credits"]) => Self::Credits,
            _ => return None,
        })
    }

    /// The key of this route in stats and fault settings.
    pub fn key(&self) -> &'static str {
        match self {
            Self::UploadImage => "POST /images",
            Self::DeleteImage(_) => "DELETE /images/{id}",
            Self::UploadAudio => "POST /audios",
            Self::DeleteAudio(_) => "DELETE /audios/{id}",
            Self::CreateTalk => "POST /talks",
            Self::ListTalks => "GET /talks",
            Self::GetTalk(_) => "GET /talks/{id}",
            Self::DeleteTalk(_) => "DELETE /talks/{id}",
            Self::Credits => "GET /credits",
        }
    }
}

/// Stats key of requests that match no route.
pub(crate) const UNMATCHED: &str = "unmatched";
/// Stats key of the fake S3 route.
pub(crate) const FAKE_S3: &str = "GET /_fake_s3";

/// The service function: every request of every connection comes through here.
pub(crate) async fn handle(shared: Arc<Shared>, req: http::Request<Incoming>) -> Outcome {
    let path = req.uri().path().to_owned();
    if path == "/_fake" || path.starts_with("/_fake/") {
        return Ok(control::handle(&shared, req).await);
    }
    if path.starts_with("/_fake_s3/") && req.method() == Method::GET {
        let resp = s3::get(&shared, &path, req.uri().query());
        lock(&shared.stats).record(FAKE_S3, resp.status().as_u16());
        return Ok(resp);
    }
    let route = Route::parse(req.method(), &path);
    let key = route.as_ref().map_or(UNMATCHED, Route::key);
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        lock(&shared.stats).traceparent(key, tp);
    }
    let _in_flight = InFlight::enter(&shared);
    let outcome = api(&shared, route, req).await;
    let mut stats = lock(&shared.stats);
    match &outcome {
        Ok(resp) => stats.record(key, resp.status().as_u16()),
        Err(CutConnection) => {
            stats.record(key, 0);
            stats.connections_reset += 1;
        }
    }
    outcome
}

async fn api(shared: &Arc<Shared>, route: Option<Route>, req: http::Request<Incoming>) -> Outcome {
    let Some(route) = route else {
        return Ok(errors::missing_token());
    };
    let Some(user) = auth::authenticate(req.headers(), &shared.config.keys) else {
        return Ok(errors::unauthenticated());
    };
    let user = user.to_owned();
    let faults = shared.faults();

    let _slot = match KeySlot::enter(shared, &user, faults.max_in_flight_per_key) {
        Some(slot) => slot,
        None => return Ok(throttled(shared, &faults)),
    };
    if !take_token(shared, &user, &faults) {
        return Ok(throttled(shared, &faults));
    }

    if let Some(delay) = faults.latency.for_route(route.key()) {
        tokio::time::sleep(draw_delay(shared, delay)).await;
    }
    if faults.routes.is_empty() || faults.routes.iter().any(|r| r == route.key()) {
        let u = shared.roll();
        let mut edge = 0.0;
        for (p, fault) in [
            (faults.p_reset, Fault::Reset),
            (faults.p_500, Fault::Internal),
            (faults.p_502_html, Fault::BadGateway),
            (faults.p_504, Fault::Timeout),
            (faults.p_gateway_deny, Fault::Deny),
        ] {
            edge += p;
            if u < edge {
                return fault.respond(shared, &faults).await;
            }
        }
    }

    Ok(match route {
        Route::UploadImage => uploads::upload(shared, &user, uploads::Kind::Image, req).await,
        Route::UploadAudio => uploads::upload(shared, &user, uploads::Kind::Audio, req).await,
        Route::DeleteImage(id) => uploads::delete(shared, &user, uploads::Kind::Image, &id),
        Route::DeleteAudio(id) => uploads::delete(shared, &user, uploads::Kind::Audio, &id),
        Route::CreateTalk => return talks::create(shared, &user, req).await,
        Route::ListTalks => talks::list(shared, &user, req.uri().query()),
        Route::GetTalk(id) => talks::get(shared, &user, &id),
        Route::DeleteTalk(id) => talks::delete(shared, &user, &id),
        Route::Credits => credits::get(shared, &user),
    })
}

/// An injected response fault.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Reset,
    Internal,
    BadGateway,
    Timeout,
    Deny,
}

impl Fault {
    async fn respond(self, shared: &Shared, faults: &Faults) -> Outcome {
        match self {
            Self::Reset => Err(CutConnection),
            Self::Internal => Ok(errors::internal()),
            Self::BadGateway => Ok(errors::bad_gateway_html()),
            Self::Timeout => {
                tokio::time::sleep(talks::delay_504(shared, faults)).await;
                Ok(errors::gateway_timeout())
            }
            Self::Deny => Ok(errors::explicit_deny()),
        }
    }
}

fn throttled(shared: &Shared, faults: &Faults) -> crate::api::Resp {
    lock(&shared.stats).rate_limited += 1;
    errors::too_many_requests(faults.kind_429, faults.retry_after_secs)
}

fn draw_delay(shared: &Shared, delay: Delay) -> Duration {
    match delay {
        Delay::Fixed(ms) => Duration::from_millis(ms),
        Delay::Uniform { min_ms, max_ms } => {
            // Millisecond delays are far below f64's exact integer range.
            #[allow(clippy::cast_precision_loss)]
            let ms = shared.uniform(min_ms as f64, max_ms as f64);
            Duration::from_secs_f64(ms.max(0.0) / 1000.0)
        }
    }
}

/// Takes one token from the key's bucket; `true` when allowed (or no rate limit is set).
fn take_token(shared: &Shared, user: &str, faults: &Faults) -> bool {
    let Some(rps) = faults.rate_limit_rps.filter(|r| *r > 0.0) else {
        return true;
    };
    let burst = faults.rate_limit_burst.unwrap_or(rps.max(1.0)).max(1.0);
    let now = Instant::now();
    let mut buckets = lock(&shared.buckets);
    let bucket = buckets.entry(user.to_owned()).or_insert(Bucket {
        tokens: burst,
        last: now,
    });
    let refill = now.duration_since(bucket.last).as_secs_f64() * rps;
    bucket.tokens = (bucket.tokens + refill).min(burst);
    bucket.last = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// Counts one API request in flight for the stats; leaves on drop, so a request whose
/// connection died mid-way is not counted forever.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        lock(&shared.stats).enter();
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.0.stats).leave();
    }
}

/// One of a key's in-flight slots for `max_in_flight_per_key`; released on drop.
struct KeySlot<'a> {
    shared: &'a Shared,
    user: String,
}

impl<'a> KeySlot<'a> {
    /// Takes a slot; `None` when the key already has `cap` requests in flight.
    fn enter(shared: &'a Shared, user: &str, cap: Option<u32>) -> Option<Self> {
        let mut map = lock(&shared.key_in_flight);
        let n = map.entry(user.to_owned()).or_default();
        if cap.is_some_and(|cap| *n >= cap) {
            return None;
        }
        *n += 1;
        Some(Self {
            shared,
            user: user.to_owned(),
        })
    }
}

impl Drop for KeySlot<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.shared.key_in_flight);
        if let Some(n) = map.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_d_id_paths_only() {
        let check = |m: Method, p: &str, want: Option<&str>| {
            assert_eq!(Route::parse(&m, p).map(|r| r.key()), want, "{m} {p}");
        };
        check(Method::POST, "/talks", Some("POST /talks"));
        check(Method::GET, "/talks", Some("GET /talks"));
        check(Method::GET, "/talks/tlk_1", Some("GET /talks/{id}"));
        check(Method::DELETE, "/talks/tlk_1", Some("DELETE /talks/{id}"));
        check(Method::POST, "/images", Some("POST /images"));
        check(Method::DELETE, "/images/img_1", Some("DELETE /images/{id}"));
        check(Method::POST, "/audios", Some("POST /audios"));
        check(Method::DELETE, "/audios/a1", Some("DELETE /audios/{id}"));
        check(Method::GET, "/credits", Some("GET /credits"));
        check(Method::PUT, "/talks", None);
        check(Method::GET, "/talks/", None);
        check(Method::GET, "/talks/a/b", None);
        check(Method::GET, "/clips", None);
        check(Method::GET, "/", None);
    }
}
