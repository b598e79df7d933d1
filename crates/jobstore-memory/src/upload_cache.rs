//! The [`UploadCache`] of the in-memory store: entries by key, an index by expiry (to drop
//! what expires first), and one by tenant and URL (for an audio's length).

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use domain::Tenant;
use ports::{CachedUpload, UploadCache, UploadCacheError, UploadKey};

use crate::MemoryJobStore;

#[derive(Debug, Default)]
pub(crate) struct Uploads {
    entries: HashMap<UploadKey, CachedUpload>,
    by_expiry: BTreeSet<(u64, String)>,
    fields: HashMap<String, UploadKey>,
    by_url: HashMap<(Tenant, String), UploadKey>,
}

impl Uploads {
    fn remove(&mut self, key: &UploadKey) {
        if let Some(old) = self.entries.remove(key) {
            let field = key.field();
            self.by_expiry.remove(&(old.expires_ms, field.clone()));
            self.fields.remove(&field);
            let url = (key.tenant.clone(), old.asset.url);
            if self.by_url.get(&url) == Some(key) {
                self.by_url.remove(&url);
            }
        }
    }

    /// Drops the entry that expires first.
    fn drop_first(&mut self) -> bool {
        let Some((_, field)) = self.by_expiry.first().cloned() else {
            return false;
        };
        match self.fields.get(&field).cloned() {
            Some(key) => self.remove(&key),
            None => {
                self.by_expiry.pop_first();
            }
        }
        true
    }
}

#[async_trait]
impl UploadCache for MemoryJobStore {
    async fn cached_upload(
        &self,
        key: &UploadKey,
        now_ms: u64,
    ) -> Result<Option<CachedUpload>, UploadCacheError> {
        Ok(self
            .uploads()
            .entries
            .get(key)
            .filter(|e| e.expires_ms > now_ms)
            .cloned())
    }

    async fn cache_upload(
        &self,
        key: &UploadKey,
        entry: &CachedUpload,
        now_ms: u64,
        max_entries: usize,
    ) -> Result<(), UploadCacheError> {
        let mut u = self.uploads();
        while u.by_expiry.first().is_some_and(|(at, _)| *at <= now_ms) {
            u.drop_first();
        }
        u.remove(key);
        let field = key.field();
        u.by_expiry.insert((entry.expires_ms, field.clone()));
        u.fields.insert(field, key.clone());
        u.by_url
            .insert((key.tenant.clone(), entry.asset.url.clone()), key.clone());
        u.entries.insert(key.clone(), entry.clone());
        while u.entries.len() > max_entries.max(1) && u.drop_first() {}
        Ok(())
    }

    async fn uploaded_audio_seconds(
        &self,
        tenant: &Tenant,
        url: &str,
        now_ms: u64,
    ) -> Result<Option<f64>, UploadCacheError> {
        let u = self.uploads();
        Ok(u.by_url
            .get(&(tenant.clone(), url.to_owned()))
            .and_then(|k| u.entries.get(k))
            .filter(|e| e.expires_ms > now_ms)
            .and_then(|e| e.audio_seconds))
    }
}
