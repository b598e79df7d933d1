//! The fake's shared state: configuration, the store of talks and uploads, credits, the RNG,
//! the fault knobs and the counters.
//!
//! Every lock here is a `std::sync::Mutex` held for a few field updates and never across an
//! `.await`, so handlers on different connections only ever wait for each other briefly.
//! Lock order when two are needed at once: `store` before `stats`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use tokio::sync::{Semaphore, watch};

use crate::faults::Faults;
use crate::stats::FakeStats;
use crate::timing::Timing;

/// Configuration fixed when the fake starts.
#[derive(Debug)]
pub(crate) struct Config {
    /// Valid credentials (`user:pass`) and the D-ID user id each maps to.
    pub keys: HashMap<String, String>,
    pub time_scale: f64,
    pub credits: i64,
    pub timing: Timing,
    pub allow_http_webhooks: bool,
    pub strict_fields: bool,
    pub upload_ttl: Duration,
    pub result_url_ttl: Duration,
    /// Bytes served for a finished video (a tiny MP4 header padded with zeros).
    pub result_size: usize,
}

impl Config {
    /// A real-world duration in seconds, scaled by `time_scale`.
    pub fn scaled(&self, seconds: f64) -> Duration {
        Duration::try_from_secs_f64(seconds * self.time_scale).unwrap_or(Duration::ZERO)
    }
}

/// Lifecycle state of a talk, as D-ID spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Created,
    Started,
    Done,
    Error,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Started => "started",
            Self::Done => "done",
            Self::Error => "error",
            Self::Rejected => "rejected",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Error | Self::Rejected)
    }
}

/// One talk as the fake keeps it; rendered to D-ID's JSON by `api::talks`.
#[derive(Clone, Debug)]
pub(crate) struct TalkRecord {
    pub id: String,
    pub user_id: String,
    pub status: Status,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub modified_ms: u64,
    pub source_url: String,
    pub audio_url: Option<String>,
    /// The request's `config` merged over D-ID's defaults (as GET shows it).
    pub config: serde_json::Value,
    pub subtitles: bool,
    /// Seconds of video (audio or speech length plus `pad_audio`).
    pub duration: f64,
    pub user_data: Option<String>,
    pub name: Option<String>,
    pub webhook: Option<String>,
    /// Credits charged, refunded if the talk ends `error`.
    pub cost: i64,
    /// Render seconds at D-ID's speed (unscaled), for `metadata.processing_fps`.
    pub render_seconds: f64,
    pub error: Option<(String, String)>,
}

/// An upload from `POST /images` or `POST /audios`.
#[derive(Clone, Debug)]
pub(crate) struct UploadRecord {
    pub user_id: String,
    pub uploaded: Instant,
    /// Audio length in seconds (images: 0).
    pub duration: f64,
}

/// Credits of one user.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Account {
    pub total: i64,
    pub remaining: i64,
}

/// Talks, uploads and credits.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub talks: HashMap<String, TalkRecord>,
    /// Talk ids in creation order (oldest first); `GET /talks` walks it backwards.
    pub order: Vec<String>,
    pub images: HashMap<String, UploadRecord>,
    pub audios: HashMap<String, UploadRecord>,
    pub accounts: HashMap<String, Account>,
}

impl Store {
    /// The account of `user`, opened with `initial` credits on first use.
    pub fn account(&mut self, user: &str, initial: i64) -> &mut Account {
        self.accounts.entry(user.to_owned()).or_insert(Account {
            total: initial,
            remaining: initial,
        })
    }
}

/// A token bucket of one key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    pub tokens: f64,
    pub last: Instant,
}

/// Everything the server's tasks share, behind one `Arc`.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    /// `http://127.0.0.1:PORT`, used in result urls.
    pub base_url: String,
    pub faults: RwLock<Faults>,
    pub rng: Mutex<StdRng>,
    pub stats: Mutex<FakeStats>,
    pub store: Mutex<Store>,
    /// API requests in flight per user, for `max_in_flight_per_key`.
    pub key_in_flight: Mutex<HashMap<String, u32>>,
    pub buckets: Mutex<HashMap<String, Bucket>>,
    /// Global render slots (`Timing::max_concurrent_renders`).
    pub render_slots: Option<Arc<Semaphore>>,
    /// Render slots per user (`Timing::max_concurrent_renders_per_user`).
    pub user_render_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Secret of the fake S3 signatures.
    pub s3_secret: u64,
    pub started_ms: u64,
    /// Webhook delivery (its client and bounds).
    pub deliveries: crate::webhook::Deliveries,
    /// Becomes `true` when the server stops; lifecycle tasks watch it.
    pub shutdown: watch::Receiver<bool>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical
/// section here leaves the data consistent, so the poison carries no information.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *self
            .faults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
    }

    /// A uniform draw in `[0, 1)`.
    pub fn roll(&self) -> f64 {
        use rand::Rng;
        lock(&self.rng).random::<f64>()
    }

    /// A uniform draw in `[lo, hi]` (`lo` when the range is empty).
    pub fn uniform(&self, lo: f64, hi: f64) -> f64 {
        if hi > lo {
            lo + (hi - lo) * self.roll()
        } else {
            lo
        }
    }

    pub fn nanoid(&self) -> String {
        crate::util::nanoid(&mut *lock(&self.rng))
    }

    /// The per-user render semaphore, created on first use.
    pub fn user_slots(&self, user: &str) -> Option<Arc<Semaphore>> {
        let per_user = self.config.timing.max_concurrent_renders_per_user?;
        let mut map = lock(&self.user_render_slots);
        Some(
            map.entry(user.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(per_user as usize)))
                .clone(),
        )
    }

    /// Forgets talks, uploads and credit use (lifecycle tasks of forgotten talks stop at their
    /// next step).
    pub fn clear_state(&self) {
        *lock(&self.store) = Store::default();
    }
}
