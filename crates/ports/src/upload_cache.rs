//! The upload-cache port: an upload whose bytes a tenant sent before, within D-ID's URL
//! validity, is answered with the stored URL instead of being uploaded (and stored at D-ID)
//! again. The cache lives in the job store's backend, so every instance sharing the store
//! shares it; it also remembers each audio upload's length, which the credit budgets use.
//!
//! # Contract
//! Every adapter guarantees, and the contract suite (`ports::upload_cache_contract`) checks:
//! - an entry is found by its [`UploadKey`] (tenant, kind and SHA-256 of the bytes: another
//!   tenant, or the same bytes as the other kind, is another key) until its `expires_ms`,
//!   never after;
//! - [`UploadCache::cache_upload`] replaces an entry of the same key, removes expired
//!   entries, and keeps at most `max_entries`, dropping the ones that expire first;
//! - [`UploadCache::uploaded_audio_seconds`] finds an unexpired audio entry's length by its
//!   tenant and URL.
//!
//! Times are passed in by the caller, ms since the epoch, as in the job store.

use async_trait::async_trait;
use domain::{Asset, Tenant, UploadKind};
use serde::{Deserialize, Serialize};

/// What an upload is cached under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadKey {
    /// Who uploaded it.
    pub tenant: Tenant,
    /// Image or audio.
    pub kind: UploadKind,
    /// The SHA-256 of its bytes, in lowercase hex.
    pub sha256: String,
}

impl UploadKey {
    /// One string naming the key (the tenant's byte length first, so no two keys share one).
    pub fn field(&self) -> String {
        let t = self.tenant.as_str();
        format!("{}:{t}{}:{}", t.len(), self.kind, self.sha256)
    }
}

/// A cached upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedUpload {
    /// What D-ID answered.
    pub asset: Asset,
    /// An audio's length in seconds (D-ID's, else estimated from the bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_seconds: Option<f64>,
    /// When it stops being served, ms since the epoch.
    pub expires_ms: u64,
}

/// What an upload cache can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadCacheError {
    /// The backend could not be reached or failed.
    #[error("upload cache unavailable: {0}")]
    Unavailable(String),
    /// The backend holds data this version cannot read.
    #[error("upload cache data is corrupt: {0}")]
    Corrupt(String),
}

/// A cache kept in a job store's backend fails as the store does: corrupt data stays
/// corrupt, anything else is the backend unavailable.
impl From<crate::jobs::JobStoreError> for UploadCacheError {
    fn from(e: crate::jobs::JobStoreError) -> Self {
        match e {
            crate::jobs::JobStoreError::Corrupt(m) => Self::Corrupt(m),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// Uploads by content. Object-safe; inject it as `Arc<dyn UploadCache>`.
#[async_trait]
pub trait UploadCache: Send + Sync {
    /// The unexpired entry of `key`.
    async fn cached_upload(
        &self,
        key: &UploadKey,
        now_ms: u64,
    ) -> Result<Option<CachedUpload>, UploadCacheError>;
    /// Stores `entry` under `key` (see the module's contract for the bound).
    async fn cache_upload(
        &self,
        key: &UploadKey,
        entry: &CachedUpload,
        now_ms: u64,
        max_entries: usize,
    ) -> Result<(), UploadCacheError>;
    /// The length of the unexpired audio `tenant` uploaded to `url`, if cached with one.
    async fn uploaded_audio_seconds(
        &self,
        tenant: &Tenant,
        url: &str,
        now_ms: u64,
    ) -> Result<Option<f64>, UploadCacheError>;
}
