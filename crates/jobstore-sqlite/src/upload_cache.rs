//! [`UploadCache`] for [`SqliteJobStore`]: the table `upload_cache` in the job file (by key,
//! with indexes by expiry and by tenant and URL), each operation one transaction on the
//! store's connection.

use async_trait::async_trait;
use domain::Tenant;
use ports::{CachedUpload, JobStoreError, UploadCache, UploadCacheError, UploadKey};
use rusqlite::{OptionalExtension, params};

use crate::codec::to_sql;
use crate::{Inner, SqliteJobStore};

fn cache_error(e: JobStoreError) -> UploadCacheError {
    match e {
        JobStoreError::Corrupt(m) => UploadCacheError::Corrupt(m),
        other => UploadCacheError::Unavailable(other.to_string()),
    }
}

impl Inner {
    fn decode_upload(&self, body: &str) -> Result<CachedUpload, JobStoreError> {
        serde_json::from_str(body).map_err(|e| {
            JobStoreError::Corrupt(format!("{}: upload cache entry: {e}", self.path.display()))
        })
    }

    pub(crate) fn cached_upload(
        &self,
        field: &str,
        now_ms: u64,
    ) -> Result<Option<CachedUpload>, JobStoreError> {
        let body: Option<String> = self.read(|tx| {
            tx.prepare_cached("SELECT body FROM upload_cache WHERE field = ?1 AND expires_ms > ?2")
                .and_then(|mut s| {
                    s.query_row(params![field, to_sql(now_ms)], |r| r.get(0))
                        .optional()
                })
                .map_err(|e| self.err(e))
        })?;
        body.map(|b| self.decode_upload(&b)).transpose()
    }

    pub(crate) fn cache_upload(
        &self,
        key: &UploadKey,
        entry: &CachedUpload,
        now_ms: u64,
        max_entries: usize,
    ) -> Result<(), JobStoreError> {
        let body = serde_json::to_string(entry).map_err(|e| {
            JobStoreError::Corrupt(format!("{}: upload cache entry: {e}", self.path.display()))
        })?;
        self.write(|tx| {
            let err = |e| self.err(e);
            tx.prepare_cached("DELETE FROM upload_cache WHERE expires_ms <= ?1")
                .and_then(|mut s| s.execute([to_sql(now_ms)]))
                .map_err(err)?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO upload_cache (field, tenant, url, body, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key.field(),
                    key.tenant.as_str(),
                    entry.asset.url,
                    body,
                    to_sql(entry.expires_ms)
                ])
            })
            .map_err(err)?;
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM upload_cache")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(err)?;
            let over = count - i64::try_from(max_entries.max(1)).unwrap_or(i64::MAX);
            if over > 0 {
                tx.prepare_cached(
                    "DELETE FROM upload_cache WHERE field IN (SELECT field FROM upload_cache
                       INDEXED BY upload_cache_expiry ORDER BY expires_ms LIMIT ?1)",
                )
                .and_then(|mut s| s.execute([over]))
                .map_err(err)?;
            }
            Ok(())
        })
    }

    pub(crate) fn uploaded_audio(
        &self,
        tenant: &str,
        url: &str,
        now_ms: u64,
    ) -> Result<Option<f64>, JobStoreError> {
        let body: Option<String> = self.read(|tx| {
            tx.prepare_cached(
                "SELECT body FROM upload_cache INDEXED BY upload_cache_url
                 WHERE tenant = ?1 AND url = ?2 AND expires_ms > ?3
                 ORDER BY expires_ms DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![tenant, url, to_sql(now_ms)], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| self.err(e))
        })?;
        Ok(body
            .map(|b| self.decode_upload(&b))
            .transpose()?
            .and_then(|e| e.audio_seconds))
    }
}

#[async_trait]
impl UploadCache for SqliteJobStore {
    async fn cached_upload(
        &self,
        key: &UploadKey,
        now_ms: u64,
    ) -> Result<Option<CachedUpload>, UploadCacheError> {
        let field = key.field();
        self.blocking(move |s| s.cached_upload(&field, now_ms))
            .await
            .map_err(cache_error)
    }

    async fn cache_upload(
        &self,
        key: &UploadKey,
        entry: &CachedUpload,
        now_ms: u64,
        max_entries: usize,
    ) -> Result<(), UploadCacheError> {
        let (key, entry) = (key.clone(), entry.clone());
        self.blocking(move |s| s.cache_upload(&key, &entry, now_ms, max_entries))
            .await
            .map_err(cache_error)
    }

    async fn uploaded_audio_seconds(
        &self,
        tenant: &Tenant,
        url: &str,
        now_ms: u64,
    ) -> Result<Option<f64>, UploadCacheError> {
        let (tenant, url) = (tenant.clone(), url.to_owned());
        self.blocking(move |s| s.uploaded_audio(tenant.as_str(), &url, now_ms))
            .await
            .map_err(cache_error)
    }
}
