//! Paying once for the same bytes: an upload whose bytes the same tenant uploaded before,
//! within `UPLOAD_CACHE_TTL_SECS`, is answered with the stored URL and no call to D-ID.
//!
//! The entries live in the job store's backend (`ports::UploadCache`: the SQLite file, or
//! Redis, shared by every instance), keyed by tenant, kind and the SHA-256 of the bytes, at
//! most `UPLOAD_CACHE_MAX_ENTRIES` of them. The cache never fails an upload: a backend that
//! cannot answer is logged (once per streak) and counted, and the upload goes to D-ID as it
//! would without a cache. Each audio entry keeps the audio's length (D-ID's `duration`, else
//! read from the bytes), which credit budgets use for their estimates
//! ([`app::credits::AudioLengths`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use domain::{Asset, Tenant, Upload, UploadKind};
use ports::{CachedUpload, UploadCache, UploadKey};
use sha2::{Digest, Sha256};

/// Uploads up to this size are hashed on the request's task (0.18 ms, measured as above).
const INLINE_HASH_BYTES: usize = 256 * 1024;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The asset of the same bytes, uploaded before.
    Hit(Asset),
    /// Not cached: upload, then [`Uploads::store`].
    Miss,
    /// The backend failed: upload without the cache.
    Failed,
}

/// The cache of one service and what it did.
pub struct Uploads {
    cache: Arc<dyn UploadCache>,
    ttl: Duration,
    max_entries: usize,
    counts: [Counts; 2],
    /// Set while the backend fails (logged once per streak).
    failing: AtomicBool,
}

/// What lookups of one kind found.
#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    stored: AtomicU64,
}

/// A snapshot of one kind's lookups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// Answered from the cache, no upstream call.
    pub hits: u64,
    /// Not cached: uploaded.
    pub misses: u64,
    /// The backend failed (the upload went upstream).
    pub errors: u64,
    /// Entries written.
    pub stored: u64,
}

fn index(kind: UploadKind) -> usize {
    match kind {
        UploadKind::Image => 0,
        UploadKind::Audio => 1,
    }
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl Uploads {
    /// A cache over `cache` whose entries last `ttl`, at most `max_entries`.
    pub fn new(cache: Arc<dyn UploadCache>, ttl: Duration, max_entries: usize) -> Uploads {
        Uploads {
            cache,
            ttl,
            max_entries,
            counts: Default::default(),
            failing: AtomicBool::new(false),
        }
    }

    /// How long an entry lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The most entries kept.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// What the lookups of `kind` found so far.
    pub fn counts(&self, kind: UploadKind) -> KindCounts {
        let c = &self.counts[index(kind)];
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KindCounts {
            hits: get(&c.hits),
            misses: get(&c.misses),
            errors: get(&c.errors),
            stored: get(&c.stored),
        }
    }

    /// The key of `upload` by `tenant`. A large upload is hashed on a blocking thread: the
    /// SHA-256 of a 10 MiB image took 7.1 ms in a release build on the 2-core test VM (with the
    /// CPU's SHA extensions; longer without), too long to hold one of the runtime's few
    /// worker threads.
    pub async fn key(tenant: &Tenant, upload: &Upload) -> UploadKey {
        let data = upload.data().clone();
        let digest = if data.len() <= INLINE_HASH_BYTES {
            Sha256::digest(&data)
        } else {
            let copy = data.clone();
            match tokio::task::spawn_blocking(move || Sha256::digest(&copy)).await {
                Ok(digest) => digest,
                // Only when the runtime is shutting down: hash here.
                Err(_) => Sha256::digest(&data),
            }
        };
        UploadKey {
            tenant: tenant.clone(),
            kind: upload.kind(),
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    fn failed(&self, kind: UploadKind, what: &str, e: &ports::UploadCacheError) {
        self.counts[index(kind)]
            .errors
            .fetch_add(1, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "upload cache: could not {what}; uploading without it");
        } else {
            tracing::debug!(error = %e, "upload cache still failing");
        }
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("upload cache: answering again");
        }
    }

    /// What the cache has for `key`.
    pub async fn lookup(&self, key: &UploadKey) -> Lookup {
        let counts = &self.counts[index(key.kind)];
        match self.cache.cached_upload(key, app::now_ms()).await {
            Ok(Some(entry)) => {
                self.recovered();
                counts.hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Hit(entry.asset)
            }
            Ok(None) => {
                self.recovered();
                counts.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Miss
            }
            Err(e) => {
                self.failed(key.kind, "look up an upload", &e);
                Lookup::Failed
            }
        }
    }

    /// Remembers `asset`, just uploaded from `upload` under `key`.
    pub async fn store(&self, key: &UploadKey, upload: &Upload, asset: &Asset) {
        let now = app::now_ms();
        let audio_seconds = (key.kind == UploadKind::Audio).then(|| {
            asset
                .duration
                .unwrap_or_else(|| domain::estimate_audio_seconds(upload.data()))
        });
        let entry = CachedUpload {
            asset: asset.clone(),
            audio_seconds,
            expires_ms: now.saturating_add(ports::jobs::duration_ms(self.ttl)),
        };
        match self
            .cache
            .cache_upload(key, &entry, now, self.max_entries)
            .await
        {
            Ok(()) => {
                self.recovered();
                self.counts[index(key.kind)]
                    .stored
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed(key.kind, "store an upload", &e),
        }
    }
}

/// The budgets' audio lengths are the cached uploads'.
#[async_trait]
impl app::credits::AudioLengths for Uploads {
    async fn seconds(&self, tenant: &Tenant, url: &str) -> Option<f64> {
        match self
            .cache
            .uploaded_audio_seconds(tenant, url, app::now_ms())
            .await
        {
            Ok(seconds) => seconds,
            Err(e) => {
                tracing::debug!(error = %e, "upload cache: an audio's length is unknown");
                None
            }
        }
    }
}
