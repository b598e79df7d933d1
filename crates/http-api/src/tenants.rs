//! Tenants: who a caller is, its share of the limiter, and the highest priority it may ask
//! for.
//!
//! # Where tenants come from
//! - `TENANTS_FILE`, a TOML file of `[[tenants]]` tables (see the README for an example):
//!   `name`, `token_sha256` (the SHA-256 of the tenant's bearer token, in hex: the file
//!   never holds a token), `weight` (1 to 100, default 1), `max_concurrent` (a cap on the
//!   slots it holds at once; unset: none), `max_priority` (`low` … `critical`, default
//!   `high`), `admin` (may call `PUT /limit` and `cleanup-expired`; default `false`) and
//!   `budget` (`{ credits = N, period = "day" | "week" | "month" }`: see
//!   [`app::credits`]; unset: none).
//!   Every problem in the file is reported at once, with the tenant it belongs to. `SIGHUP`
//!   reads the file again: a good file replaces the tenants for the requests that start
//!   after it; a bad one is reported (log, `/stats`, `/metrics`) and the tenants before it
//!   stay. Requests in flight keep the tenant they started with.
//! - `HTTP_API_TOKEN` stays one implicit tenant, named `t:` and 16 hex digits of its
//!   token's SHA-256 (the scope its idempotency keys always had), weight 1, no cap, every
//!   priority, admin.
//! - With neither, authentication is off and every caller is the `public` tenant.
//!
//! # Checking a token
//! The presented token is hashed once (SHA-256) and its digest compared with every
//! tenant's, each in constant time (`subtle`), all of them whatever matched: how long the
//! check takes says nothing about which bytes of a guess were right.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use domain::{Admission, Budget, BudgetPeriod, Priority, Share, Tenant};
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::auth::AuthFailure;
use crate::error::ApiError;

/// The most tenants a file may name (each is a label value in `/metrics`).
pub const MAX_TENANTS: usize = 256;
/// The largest `max_concurrent` a tenant may have.
pub const MAX_CAP: i64 = 100_000;
/// The keys a tenant's table may have.
const KEYS: [&str; 7] = [
    "name",
    "token_sha256",
    "weight",
    "max_concurrent",
    "max_priority",
    "admin",
    "budget",
];
/// The keys of a tenant's `budget` table.
const BUDGET_KEYS: [&str; 2] = ["credits", "period"];
/// The largest budget, in credits per period.
pub const MAX_BUDGET: i64 = 100_000_000;

/// One tenant: its name, share, highest priority and whether it may call admin routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Its name (in jobs, keys, metrics, logs and `/stats`).
    pub tenant: Tenant,
    /// Its weight and cap in the limiter.
    pub share: Share,
    /// The highest priority it may ask for; above it: 403 `priority_not_allowed`.
    pub max_priority: Priority,
    /// Whether it may call the admin routes.
    pub admin: bool,
    /// Its credit budget per period, if it has one.
    pub budget: Option<Budget>,
}

impl TenantPolicy {
    /// The tenant of a service without authentication: `public`, every priority, no admin.
    pub fn public() -> TenantPolicy {
        TenantPolicy {
            tenant: Tenant::public(),
            share: Share::default(),
            max_priority: Priority::Critical,
            admin: false,
            budget: None,
        }
    }

    /// The implicit tenant of `HTTP_API_TOKEN`: named after its token's digest, every
    /// priority, admin.
    pub fn of_token(token: &SecretString) -> TenantPolicy {
        TenantPolicy {
            tenant: tenant_of(Some(token)),
            share: Share::default(),
            max_priority: Priority::Critical,
            admin: true,
            budget: None,
        }
    }

    /// The admission of a call at `priority`, or 403 `priority_not_allowed` above the
    /// tenant's highest.
    pub fn admission(&self, priority: Priority) -> Result<Admission, ApiError> {
        if priority > self.max_priority {
            return Err(ApiError::PriorityNotAllowed {
                given: priority,
                highest: self.max_priority,
            });
        }
        Ok(Admission::new(self.tenant.clone(), priority).with_share(self.share))
    }
}

/// A tenant of the file with its token's digest.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    policy: TenantPolicy,
    digest: [u8; 32],
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A parsed tenants file: where it is and its tenants, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantsFile {
    path: PathBuf,
    entries: Arc<[Entry]>,
}

impl TenantsFile {
    /// Reads and checks the file at `raw` (the `TENANTS_FILE` value); every problem in one
    /// message, each naming its tenant.
    pub fn load(raw: &str) -> Result<TenantsFile, String> {
        let path = PathBuf::from(raw.trim());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TenantsFile::parse(&path, &text).map_err(|problems| {
            format!(
                "{}: {} problem{}: {}",
                path.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("; ")
            )
        })
    }

    /// Checks the text of a tenants file; all problems at once.
    pub fn parse(path: &Path, text: &str) -> Result<TenantsFile, Vec<String>> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            vec![format!(
                "not TOML: {}",
                e.message().lines().next().unwrap_or("syntax error")
            )]
        })?;
        let mut problems = Vec::new();
        for key in table.keys().filter(|k| *k != "tenants") {
            problems.push(format!(
                "unknown top-level key `{key}` (the file holds [[tenants]] tables)"
            ));
        }
        let tenants = match table.get("tenants") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items.clone(),
            Some(_) => {
                problems.push("`tenants` must be an array of tables ([[tenants]])".to_owned());
                Vec::new()
            }
        };
        if tenants.is_empty() && problems.is_empty() {
            problems.push("the file names no tenant: nobody could call the service".to_owned());
        }
        if tenants.len() > MAX_TENANTS {
            problems.push(format!("{} tenants: at most {MAX_TENANTS}", tenants.len()));
        }
        let mut entries = Vec::new();
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        for (i, item) in tenants.iter().enumerate() {
            let before = problems.len();
            let entry = parse_tenant(i, item, &mut problems);
            if let Some(entry) = entry
                && problems.len() == before
            {
                let label = label(i, Some(entry.policy.tenant.as_str()));
                if !names.insert(entry.policy.tenant.clone()) {
                    problems.push(format!("{label}: the name is used by an earlier tenant"));
                }
                if !digests.insert(entry.digest) {
                    problems.push(format!(
                        "{label}: token_sha256 is an earlier tenant's (one token, one tenant)"
                    ));
                }
                entries.push(entry);
            }
        }
        if problems.is_empty() {
            Ok(TenantsFile {
                path: path.to_owned(),
                entries: entries.into(),
            })
        } else {
            Err(problems)
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its tenants, in file order.
    pub fn policies(&self) -> impl Iterator<Item = &TenantPolicy> {
        self.entries.iter().map(|e| &e.policy)
    }

    /// Whether `token`'s digest is one of the file's (for the start-up cross-check with
    /// `HTTP_API_TOKEN`).
    pub fn has_token(&self, token: &SecretString) -> bool {
        let digest = digest_of(token.expose_secret());
        self.entries.iter().any(|e| e.digest == digest)
    }
}

fn label(i: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("tenants[{i}] ({name})"),
        None => format!("tenants[{i}]"),
    }
}

/// One `[[tenants]]` table, or `None` with its problems recorded.
fn parse_tenant(i: usize, item: &toml::Value, problems: &mut Vec<String>) -> Option<Entry> {
    let Some(t) = item.as_table() else {
        problems.push(format!("{}: not a table", label(i, None)));
        return None;
    };
    let raw_name = t.get("name").and_then(toml::Value::as_str);
    let at = label(i, raw_name);
    let before = problems.len();
    for key in t.keys().filter(|k| !KEYS.contains(&k.as_str())) {
        problems.push(format!(
            "{at}: unknown key `{key}` (known: {})",
            KEYS.join(", ")
        ));
    }
    let tenant = match t.get("name") {
        None => {
            problems.push(format!("{at}: `name` is missing"));
            None
        }
        Some(toml::Value::String(name)) => {
            if name == Tenant::PUBLIC || name == TOKEN_TENANT_LABEL || name.starts_with("t:") {
                problems.push(format!(
                    "{at}: the names `public` and `{TOKEN_TENANT_LABEL}` and names starting `t:` are reserved"
                ));
                None
            } else {
                match Tenant::parse(name) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        problems.push(format!("{at}: name: {e}"));
                        None
                    }
                }
            }
        }
        Some(_) => {
            problems.push(format!("{at}: `name` must be a string"));
            None
        }
    };
    let digest = match t.get("token_sha256") {
        None => {
            problems.push(format!(
                "{at}: `token_sha256` is missing (the SHA-256 of its bearer token in hex: `printf %s \"$TOKEN\" | sha256sum`)"
            ));
            None
        }
        Some(toml::Value::String(hex)) => match parse_digest(hex) {
            Some(d) => Some(d),
            None => {
                problems.push(format!(
                    "{at}: `token_sha256` must be 64 hex digits (a SHA-256), not the token itself"
                ));
                None
            }
        },
        Some(_) => {
            problems.push(format!("{at}: `token_sha256` must be a string"));
            None
        }
    };
    let weight = match t.get("weight") {
        None => Some(1),
        Some(toml::Value::Integer(w)) if (1..=i64::from(Share::MAX_WEIGHT)).contains(w) => {
            u32::try_from(*w).ok()
        }
        Some(other) => {
            problems.push(format!(
                "{at}: `weight` must be a whole number from 1 to {}, not {}",
                Share::MAX_WEIGHT,
                shown(other)
            ));
            None
        }
    };
    let cap = match t.get("max_concurrent") {
        None => Some(None),
        Some(toml::Value::Integer(c)) if (1..=MAX_CAP).contains(c) => Some(u32::try_from(*c).ok()),
        Some(other) => {
            problems.push(format!(
                "{at}: `max_concurrent` must be a whole number from 1 to {MAX_CAP}, not {}",
                shown(other)
            ));
            None
        }
    };
    let max_priority = match t.get("max_priority") {
        None => Some(Priority::High),
        Some(toml::Value::String(p)) => match p.parse::<Priority>() {
            Ok(p) => Some(p),
            Err(_) => {
                problems.push(format!(
                    "{at}: `max_priority` must be low, normal, high or critical, not {p:?}"
                ));
                None
            }
        },
        Some(other) => {
            problems.push(format!(
                "{at}: `max_priority` must be a string, not {}",
                shown(other)
            ));
            None
        }
    };
    let admin = match t.get("admin") {
        None => Some(false),
        Some(toml::Value::Boolean(b)) => Some(*b),
        Some(other) => {
            problems.push(format!(
                "{at}: `admin` must be true or false, not {}",
                shown(other)
            ));
            None
        }
    };
    let budget = match t.get("budget") {
        None => Some(None),
        Some(toml::Value::Table(b)) => parse_budget(&at, b, problems).map(Some),
        Some(other) => {
            problems.push(format!(
                "{at}: `budget` must be a table such as {{ credits = 500, period = \"month\" }}, not {}",
                shown(other)
            ));
            None
        }
    };
    if problems.len() != before {
        return None;
    }
    Some(Entry {
        policy: TenantPolicy {
            tenant: tenant?,
            share: Share::new(weight?, cap?),
            max_priority: max_priority?,
            admin: admin?,
            budget: budget?,
        },
        digest: digest?,
    })
}

/// A tenant's `budget`: `credits` (1 to [`MAX_BUDGET`]) per `period` (`day`, `week` or
/// `month`, UTC; default `month`).
fn parse_budget(
    at: &str,
    b: &toml::map::Map<String, toml::Value>,
    problems: &mut Vec<String>,
) -> Option<Budget> {
    let before = problems.len();
    for key in b.keys().filter(|k| !BUDGET_KEYS.contains(&k.as_str())) {
        problems.push(format!(
            "{at}: unknown key `budget.{key}` (known: {})",
            BUDGET_KEYS.join(", ")
        ));
    }
    let credits = match b.get("credits") {
        Some(toml::Value::Integer(c)) if (1..=MAX_BUDGET).contains(c) => u64::try_from(*c).ok(),
        None => {
            problems.push(format!("{at}: `budget.credits` is missing"));
            None
        }
        Some(other) => {
            problems.push(format!(
                "{at}: `budget.credits` must be a whole number from 1 to {MAX_BUDGET}, not {}",
                shown(other)
            ));
            None
        }
    };
    let period = match b.get("period") {
        None => Some(BudgetPeriod::Month),
        Some(toml::Value::String(p)) => match BudgetPeriod::parse(p) {
            Ok(p) => Some(p),
            Err(_) => {
                problems.push(format!(
                    "{at}: `budget.period` must be day, week or month, not {p:?}"
                ));
                None
            }
        },
        Some(other) => {
            problems.push(format!(
                "{at}: `budget.period` must be a string, not {}",
                shown(other)
            ));
            None
        }
    };
    if problems.len() != before {
        return None;
    }
    Some(Budget {
        credits: credits?,
        period: period?,
    })
}

/// A value as a problem names it: a number or boolean as written, anything else by its
/// type (a string is not echoed: it may be a token pasted in the wrong place).
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => format!("a {}", other.type_str()),
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The tenant of a deployment whose callers present `api_token`: `t:` and the first 8 bytes
/// of its SHA-256 in hex (every authorised caller presents the same token), or `public`
/// when auth is off. These are the scopes idempotency keys had before tenants, so keys
/// stored by earlier builds still match.
pub fn tenant_of(api_token: Option<&SecretString>) -> Tenant {
    let Some(token) = api_token else {
        return Tenant::public();
    };
    let digest = Sha256::digest(token.expose_secret().as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Tenant::parse(&format!("t:{hex}")).unwrap_or_default()
}

fn digest_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who may call: the file's tenants and `HTTP_API_TOKEN`'s, as of the last good load.
#[derive(Debug)]
struct Directory {
    entries: Arc<[Entry]>,
}

/// The service's tenants, reloadable: checks a request's bearer token and says whose it is.
#[derive(Debug)]
pub struct Tenants {
    /// `HTTP_API_TOKEN`'s implicit tenant.
    implicit: Option<Entry>,
    /// The file, if `TENANTS_FILE` is set.
    path: Option<PathBuf>,
    current: RwLock<Arc<Directory>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `/stats` shows of the tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantsView {
    /// Whether callers must authenticate.
    pub auth: bool,
    /// The file, if any.
    pub file: Option<String>,
    /// Every tenant, by name.
    pub tenants: BTreeMap<String, TenantPolicy>,
    /// Reloads that replaced the tenants.
    pub reloads_ok: u64,
    /// Reloads refused for a bad file (the tenants before stayed).
    pub reloads_failed: u64,
    /// Why the last reload was refused, until one succeeds.
    pub last_error: Option<String>,
}

impl Tenants {
    /// The tenants of `file` and `api_token` (either may be absent; with neither,
    /// authentication is off).
    pub fn new(file: Option<&TenantsFile>, api_token: Option<&SecretString>) -> Tenants {
        let implicit = api_token.map(|token| Entry {
            policy: TenantPolicy::of_token(token),
            digest: digest_of(token.expose_secret()),
        });
        Tenants {
            implicit,
            path: file.map(|f| f.path.clone()),
            current: RwLock::new(Arc::new(Directory {
                entries: file.map_or_else(|| Arc::from(Vec::new()), |f| f.entries.clone()),
            })),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Whether callers must present a bearer token.
    pub fn auth_required(&self) -> bool {
        self.implicit.is_some() || self.path.is_some()
    }

    fn directory(&self) -> Arc<Directory> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whose request this is: the tenant whose token it presents, or `public` when
    /// authentication is off.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<TenantPolicy, AuthFailure> {
        if !self.auth_required() {
            return Ok(TenantPolicy::public());
        }
        let token = crate::auth::bearer(headers).ok_or(AuthFailure::Missing)?;
        let digest = digest_of(token);
        let directory = self.directory();
        let mut found: Option<&Entry> = None;
        // Every digest is compared, in constant time each, whatever matched.
        for entry in self.implicit.iter().chain(directory.entries.iter()) {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found.map(|e| e.policy.clone()).ok_or(AuthFailure::Mismatch)
    }

    /// The share of `tenant` now (the default for a tenant no longer in the file, or the
    /// implicit and public ones).
    pub fn share_of(&self, tenant: &Tenant) -> Share {
        let directory = self.directory();
        directory
            .entries
            .iter()
            .find(|e| &e.policy.tenant == tenant)
            .map_or_else(Share::default, |e| e.policy.share)
    }

    /// The credit budget of `tenant` now (none for a tenant no longer in the file, or the
    /// implicit and public ones).
    pub fn budget_of(&self, tenant: &Tenant) -> Option<Budget> {
        let directory = self.directory();
        directory
            .entries
            .iter()
            .find(|e| &e.policy.tenant == tenant)
            .and_then(|e| e.policy.budget)
    }

    /// Whether any tenant of the file has a budget now.
    pub fn any_budget(&self) -> bool {
        self.directory()
            .entries
            .iter()
            .any(|e| e.policy.budget.is_some())
    }

    /// Reads the file again: a good one replaces the tenants (returns how many it names), a
    /// bad one is refused with every problem and the tenants stay as they were. Without a
    /// file, nothing to do (`Ok(0)`).
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        // (Called from the SIGHUP task through `spawn_blocking`: it reads a file.)
        let loaded = path
            .to_str()
            .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))
            .and_then(TenantsFile::load)
            .and_then(|file| {
                if let Some(implicit) = &self.implicit
                    && file.entries.iter().any(|e| e.digest == implicit.digest)
                {
                    return Err(format!(
                        "{}: a tenant has HTTP_API_TOKEN's token (it is a tenant of its own)",
                        path.display()
                    ));
                }
                Ok(file)
            });
        let mut last_error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match loaded {
            Ok(file) => {
                let n = file.entries.len();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Arc::new(Directory {
                        entries: file.entries,
                    });
                *last_error = None;
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                *last_error = Some(e.clone());
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// What `/stats` shows.
    pub fn view(&self) -> TenantsView {
        let directory = self.directory();
        let tenants = self
            .implicit
            .iter()
            .chain(directory.entries.iter())
            .map(|e| (e.policy.tenant.as_str().to_owned(), e.policy.clone()))
            .collect();
        TenantsView {
            auth: self.auth_required(),
            file: self.path.as_ref().map(|p| p.display().to_string()),
            tenants,
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// The names of every tenant now (for metric labels: a closed set).
    pub fn names(&self) -> Vec<Tenant> {
        let directory = self.directory();
        self.implicit
            .iter()
            .chain(directory.entries.iter())
            .map(|e| e.policy.tenant.clone())
            .collect()
    }
}

/// How a tenant is shown where anyone may look (`/metrics`, log lines, `/stats`): its name,
/// except `HTTP_API_TOKEN`'s implicit tenant, whose stored name (`t:` and 16 hex digits of
/// its token's SHA-256, the scope its keys always had) would let a scraper test guesses of
/// the token offline: it shows as [`TOKEN_TENANT_LABEL`].
pub fn public_name(name: &str) -> &str {
    if name.starts_with("t:") {
        TOKEN_TENANT_LABEL
    } else {
        name
    }
}

/// How `HTTP_API_TOKEN`'s tenant is shown (see [`public_name`]); the tenants file cannot use the
/// name (`t:` names are reserved, and this one has no `t:`, but it is refused too).
pub const TOKEN_TENANT_LABEL: &str = "http_api_token";

/// Where the router leaves the tenant of an authenticated request, for the server's
/// per-tenant metrics (a request extension; empty for the open routes).
#[derive(Debug, Clone, Default)]
pub struct CallerCell(Arc<std::sync::OnceLock<Tenant>>);

impl CallerCell {
    /// Records the request's tenant (the first call wins).
    pub fn set(&self, tenant: &Tenant) {
        let _ = self.0.set(tenant.clone());
    }

    /// The request's tenant, if it was authenticated.
    pub fn get(&self) -> Option<Tenant> {
        self.0.get().cloned()
    }
}

/// Reads the tenants file again on every `SIGHUP` (the binary calls it; a service without a
/// file logs that there is nothing to read). A refused file is logged with every problem
/// and the tenants before it stay.
pub fn reload_on_sighup(tenants: Arc<Tenants>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the tenants file is read at start only");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                if tenants.path.is_none() {
                    tracing::info!("SIGHUP: no TENANTS_FILE to read again");
                    continue;
                }
                let t = Arc::clone(&tenants);
                let result = tokio::task::spawn_blocking(move || t.reload())
                    .await
                    .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
                match result {
                    Ok(n) => tracing::info!(tenants = n, "SIGHUP: tenants file read again"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: tenants file refused; the tenants before it stay"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tenants;
}

/// The engine's calls for a job take its tenant's share as the file says now.
impl app::TenantShares for Tenants {
    fn share_of(&self, tenant: &Tenant) -> Share {
        Tenants::share_of(self, tenant)
    }
}

impl app::credits::TenantBudgets for Tenants {
    fn budget_of(&self, tenant: &Tenant) -> Option<Budget> {
        Tenants::budget_of(self, tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, header};

    fn sha(token: &str) -> String {
        digest_of(token)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn a_good_file_gives_each_token_its_tenant_and_policy() {
        let text = format!(
            r#"
[[tenants]]
name = "acme"
token_sha256 = "{}"
weight = 3
max_concurrent = 2
max_priority = "critical"
admin = true

[[tenants]]
name = "beta"
token_sha256 = "{}"
budget = {{ credits = 500, period = "week" }}
"#,
            sha("acme-token"),
            sha("beta-token").to_uppercase()
        );
        let file = TenantsFile::parse(Path::new("t.toml"), &text).unwrap();
        let tenants = Tenants::new(Some(&file), None);
        let acme = tenants.authenticate(&headers("acme-token")).unwrap();
        assert_eq!(acme.tenant.as_str(), "acme");
        assert_eq!((acme.share.weight(), acme.share.cap()), (3, Some(2)));
        assert_eq!((acme.max_priority, acme.admin), (Priority::Critical, true));
        let beta = tenants.authenticate(&headers("beta-token")).unwrap();
        assert_eq!(beta.share, Share::default());
        assert_eq!((beta.max_priority, beta.admin), (Priority::High, false));
        assert_eq!(
            tenants.authenticate(&headers("nope")),
            Err(AuthFailure::Mismatch)
        );
        assert_eq!(
            tenants.authenticate(&HeaderMap::new()),
            Err(AuthFailure::Missing)
        );
        let err = beta.admission(Priority::Critical).unwrap_err();
        assert!(
            matches!(err, ApiError::PriorityNotAllowed { .. }),
            "{err:?}"
        );
        let a = acme.admission(Priority::Critical).unwrap();
        assert_eq!(a.share.weight(), 3);
        assert_eq!(tenants.share_of(&acme.tenant).cap(), Some(2));
        assert_eq!(acme.budget, None);
        assert_eq!(
            tenants.budget_of(&beta.tenant),
            Some(Budget {
                credits: 500,
                period: BudgetPeriod::Week
            })
        );
        assert!(tenants.any_budget());
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_once_with_its_tenant() {
        let text = format!(
            r#"
budget = 5
[[tenants]]
name = "acme"
token_sha256 = "acme-token"
weight = 0
max_concurrent = -1
max_priority = "urgent"
admin = "yes"
credits = 100
budget = {{ credits = 0, period = "year", per = 1 }}

[[tenants]]
name = "public"
token_sha256 = "{a}"

[[tenants]]
token_sha256 = "{a}"

[[tenants]]
name = "dup"
token_sha256 = "{a}"
[[tenants]]
name = "dup"
token_sha256 = "{a}"
"#,
            a = sha("a")
        );
        let problems = TenantsFile::parse(Path::new("t.toml"), &text).unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "unknown top-level key `budget`",
            "tenants[0] (acme): unknown key `credits`",
            "tenants[0] (acme): `token_sha256` must be 64 hex digits",
            "tenants[0] (acme): `weight` must be a whole number from 1 to 100",
            "tenants[0] (acme): `max_concurrent` must be",
            "tenants[0] (acme): `max_priority` must be low, normal, high or critical",
            "tenants[0] (acme): `admin` must be true or false",
            "tenants[0] (acme): `budget.credits` must be a whole number from 1 to",
            "tenants[0] (acme): `budget.period` must be day, week or month",
            "tenants[0] (acme): unknown key `budget.per`",
            "tenants[1] (public): the names `public` and `http_api_token`",
            "tenants[2]: `name` is missing",
            "tenants[4] (dup): the name is used by an earlier tenant",
            "tenants[4] (dup): token_sha256 is an earlier tenant's",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("acme-token\""), "{all}");
        let syntax = TenantsFile::parse(Path::new("t.toml"), "[[tenants]\nname=").unwrap_err();
        assert!(syntax[0].starts_with("not TOML"), "{syntax:?}");
        let empty = TenantsFile::parse(Path::new("t.toml"), "").unwrap_err();
        assert!(empty[0].contains("names no tenant"), "{empty:?}");
    }

    #[test]
    fn without_a_file_or_token_everyone_is_public_and_the_token_is_an_admin_tenant() {
        let open = Tenants::new(None, None);
        assert!(!open.auth_required());
        assert_eq!(
            open.authenticate(&HeaderMap::new()).unwrap(),
            TenantPolicy::public()
        );
        let token = SecretString::from("s3cret");
        let one = Tenants::new(None, Some(&token));
        let caller = one.authenticate(&headers("s3cret")).unwrap();
        assert!(caller.tenant.as_str().starts_with("t:"));
        assert!(caller.admin);
        assert_eq!(caller.max_priority, Priority::Critical);
        assert_eq!(
            one.authenticate(&headers("s3cre")),
            Err(AuthFailure::Mismatch)
        );
    }

    #[test]
    fn a_reload_replaces_good_files_and_keeps_the_tenants_on_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("talkgate-tenants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tenants.toml");
        let write = |name: &str, token: &str| {
            std::fs::write(
                &path,
                format!(
                    "[[tenants]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\n",
                    sha(token)
                ),
            )
            .unwrap();
        };
        write("one", "tok-1");
        let file = TenantsFile::load(path.to_str().unwrap()).unwrap();
        let tenants = Tenants::new(Some(&file), None);
        assert!(tenants.authenticate(&headers("tok-1")).is_ok());
        write("two", "tok-2");
        assert_eq!(tenants.reload(), Ok(1));
        assert!(tenants.authenticate(&headers("tok-1")).is_err());
        assert_eq!(
            tenants
                .authenticate(&headers("tok-2"))
                .unwrap()
                .tenant
                .as_str(),
            "two"
        );
        std::fs::write(&path, "[[tenants]]\nname = 3\n").unwrap();
        let err = tenants.reload().unwrap_err();
        assert!(err.contains("`name` must be a string"), "{err}");
        assert!(
            tenants.authenticate(&headers("tok-2")).is_ok(),
            "a bad file keeps the tenants before it"
        );
        let view = tenants.view();
        assert_eq!((view.reloads_ok, view.reloads_failed), (1, 1));
        assert!(view.last_error.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tenant_is_public_without_a_token_and_a_token_digest_with_one() {
        assert_eq!(tenant_of(None), Tenant::public());
        let token = SecretString::from("s3cret-token");
        let tenant = tenant_of(Some(&token));
        let name = tenant.as_str();
        assert!(name.starts_with("t:"), "{name}");
        assert_eq!(name.len(), 2 + 16, "{name}");
        assert!(
            !name.contains("s3cret"),
            "the token itself never becomes a name"
        );
        assert_eq!(
            tenant_of(Some(&token)),
            tenant,
            "the same token, the same tenant"
        );
        assert_ne!(tenant_of(Some(&SecretString::from("other"))), tenant);
    }
}
