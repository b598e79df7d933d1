//! [`HttpCallbackSender`]: the [`CallbackSender`] over reqwest.
//!
//! One attempt is: the URL checked ([`DestinationPolicy::check_url`]), a slot of its
//! endpoint taken (at most [`CallbackConfig::per_endpoint`] at once, else
//! [`CallbackError::Busy`] at once, so a slow receiver holds back only its own deliveries),
//! one POST through a client that resolves names with [`GuardedResolver`] (so it connects
//! only to addresses the policy allows), follows no redirect, uses no proxy and gives up
//! after [`CallbackConfig::timeout`]; of the answer only the status counts, and at most
//! [`MAX_ANSWER_BYTES`] of its body are read before the connection is let go.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ports::{CallbackDelivery, CallbackError, CallbackReceipt, CallbackSender};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sign::Signer;
use domain::{DestinationPolicy, Refusal};

/// At most this much of a receiver's answer is read.
pub const MAX_ANSWER_BYTES: usize = 4096;
/// Endpoints whose slots are remembered at once; idle ones are forgotten first.
pub const MAX_ENDPOINTS: usize = 1024;

/// How callbacks are sent.
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    /// Where they may go.
    pub policy: DestinationPolicy,
    /// The whole attempt, connect to answer (default 15 s, the spec's common figure).
    pub timeout: Duration,
    /// Attempts to one endpoint (scheme, host, port) at once (default 4).
    pub per_endpoint: usize,
    /// The `User-Agent`.
    pub user_agent: String,
    /// Host names answered with these addresses instead of DNS (a receiver pinned to its
    /// address); the addresses are still checked by the policy.
    pub pinned_hosts: HashMap<String, Vec<IpAddr>>,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            policy: DestinationPolicy::default(),
            timeout: Duration::from_secs(15),
            per_endpoint: 4,
            user_agent: concat!("talkgate-callbacks/", env!("CARGO_PKG_VERSION")).to_owned(),
            pinned_hosts: HashMap::new(),
        }
    }
}

/// Why a sender could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the callback HTTP client: {0}")]
pub struct BuildError(#[source] reqwest::Error);

/// Sends signed callbacks under a [`DestinationPolicy`] (see the module docs).
#[derive(Debug)]
pub struct HttpCallbackSender {
    http: reqwest::Client,
    signer: Signer,
    config: CallbackConfig,
    endpoints: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl HttpCallbackSender {
    /// A sender signing with `signer`.
    pub fn new(config: CallbackConfig, signer: Signer) -> Result<HttpCallbackSender, BuildError> {
        let resolver = GuardedResolver {
            policy: config.policy.clone(),
            pinned: Arc::new(config.pinned_hosts.clone()),
        };
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            // A proxy would connect for us, to addresses the resolver never saw.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .dns_resolver(Arc::new(resolver))
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.per_endpoint)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(BuildError)?;
        Ok(HttpCallbackSender {
            http,
            signer,
            config,
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    /// A slot of `endpoint`, if one is free.
    fn slot(&self, endpoint: String) -> Option<OwnedSemaphorePermit> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if endpoints.len() >= MAX_ENDPOINTS && !endpoints.contains_key(&endpoint) {
            let per = self.config.per_endpoint;
            endpoints.retain(|_, slots| slots.available_permits() < per);
            if endpoints.len() >= MAX_ENDPOINTS {
                return None;
            }
        }
        let slots = endpoints
            .entry(endpoint)
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_endpoint.max(1))));
        Arc::clone(slots).try_acquire_owned().ok()
    }
}

#[async_trait]
impl CallbackSender for HttpCallbackSender {
    async fn send(&self, delivery: &CallbackDelivery) -> Result<CallbackReceipt, CallbackError> {
        let url = self
            .config
            .policy
            .check_url(&delivery.url)
            .map_err(|e| CallbackError::Refused(e.to_string()))?;
        let endpoint = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        let Some(_slot) = self.slot(endpoint) else {
            return Err(CallbackError::Busy);
        };
        let timestamp = unix_seconds();
        let signature = self
            .signer
            .signature(&delivery.webhook_id, timestamp, &delivery.payload)
            .ok_or_else(|| CallbackError::Refused("the payload is not UTF-8".to_owned()))?;
        let started = Instant::now();
        let request = self
            .http
            .post(url)
            .timeout(self.config.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.payload.clone());
        let request = match &delivery.trace {
            Some(trace) => {
                let request = request.header("traceparent", &trace.traceparent);
                match &trace.tracestate {
                    Some(state) => request.header("tracestate", state),
                    None => request,
                }
            }
            None => request,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| transport_error(&e, self.config.timeout))?;
        let status = response.status().as_u16();
        // Read a little of the answer (so a short one leaves the connection reusable), never
        // more; an error here does not change what the status said.
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        drop(response);
        if (200..300).contains(&status) {
            Ok(CallbackReceipt {
                status,
                took: started.elapsed(),
            })
        } else {
            Err(CallbackError::Status { status })
        }
    }
}

/// The port's error for a failed request.
fn transport_error(e: &reqwest::Error, timeout: Duration) -> CallbackError {
    if e.is_timeout() {
        return CallbackError::Timeout(timeout);
    }
    // A refusal by the resolver is the policy's, not the network's.
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(refusal) = err.downcast_ref::<Refusal>() {
            // A name that does not resolve (now) may resolve later (a DNS outage, a record
            // not live yet): tried again, as any transport failure. Every other refusal is
            // the policy's, and final.
            return match refusal {
                Refusal::Unresolved(_) => CallbackError::Transport(refusal.to_string()),
                _ => CallbackError::Refused(refusal.to_string()),
            };
        }
        source = err.source();
    }
    CallbackError::Transport(describe(e))
}

/// The error and its causes, on one line (reqwest's own text is only the outermost), with
/// the URL shown without its query and credentials: a caller may carry a secret there, and
/// this text is logged and stored with the attempt.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    match e.url() {
        Some(url) => text.replace(url.as_str(), &shown_url(url)),
        None => text,
    }
}

/// `scheme://host[:port]/path`: a URL without credentials, query or fragment.
fn shown_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

fn unix_seconds() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Resolves a host name and keeps only the addresses the policy allows; a name left with
/// none fails with its [`Refusal`]. The client connects to exactly what this returns, so
/// the address checked is the address connected to.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: DestinationPolicy,
    pinned: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl GuardedResolver {
    /// A resolver under `policy`, answering the `pinned` names itself.
    pub fn new(policy: DestinationPolicy, pinned: HashMap<String, Vec<IpAddr>>) -> GuardedResolver {
        GuardedResolver {
            policy,
            pinned: Arc::new(pinned),
        }
    }

    /// The allowed addresses of `host` (port 0: the client puts the URL's port in).
    pub async fn allowed(&self, host: &str) -> Result<Vec<SocketAddr>, Refusal> {
        let resolved: Vec<SocketAddr> = match self.pinned.get(host) {
            Some(addresses) => addresses.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
            None => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|_| Refusal::Unresolved(host.to_owned()))?
                .collect(),
        };
        let mut first_refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| match self.policy.check_address(addr.ip()) {
                Ok(()) => true,
                Err(refusal) => {
                    first_refusal.get_or_insert(refusal);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            return Err(first_refusal.unwrap_or_else(|| Refusal::Unresolved(host.to_owned())));
        }
        Ok(allowed)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let allowed = resolver.allowed(name.as_str()).await?;
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shown_url_has_no_credentials_query_or_fragment() {
        let url =
            url::Url::parse("https://u:pw@hooks.example.com:8443/cb/1?token=s3cret#x").unwrap();
        assert_eq!(
            super::shown_url(&url),
            "https://hooks.example.com:8443/cb/1"
        );
    }
}
