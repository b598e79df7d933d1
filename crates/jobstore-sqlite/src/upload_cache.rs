//! [`UploadCache`] for [`SqliteJobStore`]: the table `upload_cache` in the job file (by key,
//! with indexes by expiry and by tenant and URL), each operation one transaction on the
//! store's connection.
//!
//! The bound needs the number of entries on every store; `COUNT(*)` walks a whole index
//! (37 ms at 1 000 000 entries, with the store's connection held), so the table
//! `upload_cache_size` keeps the number instead, moved by triggers in the same transaction as
//! the row, and counted afresh once at open ([`prepare`]: 1.3 s at 1 000 000 entries with a
//! cold page cache, a store then 0.6 ms; measured on the 2-core test VM). It needs no schema
//! version: every statement is `IF NOT EXISTS`, and a file opened by a build without it is
//! recounted.

use std::path::Path;

use async_trait::async_trait;
use domain::Tenant;
use ports::{CachedUpload, JobStoreError, UploadCache, UploadCacheError, UploadKey};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::codec::{db_error, to_sql};
use crate::{Inner, SqliteJobStore};

/// The entry count and its triggers, then the count itself, run at every open. The
/// triggers fire on plain inserts and deletes only, hence [`PUT`]'s upsert (a `REPLACE`
/// deletes without firing delete triggers).
const SIZE: &str = "
CREATE TABLE IF NOT EXISTS upload_cache_size (
  id INTEGER PRIMARY KEY CHECK (id = 0),
  n INTEGER NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS upload_cache_added AFTER INSERT ON upload_cache
  BEGIN UPDATE upload_cache_size SET n = n + 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS upload_cache_removed AFTER DELETE ON upload_cache
  BEGIN UPDATE upload_cache_size SET n = n - 1 WHERE id = 0; END;
INSERT OR REPLACE INTO upload_cache_size (id, n) SELECT 0, COUNT(*) FROM upload_cache;
";

/// Expired entries swept by one store (`?1`: now), the ones that expired first; the rest go
/// with later stores (they are never served), so one store after a long pause is not a
/// transaction as large as the cache.
const SWEEP: &str = "DELETE FROM upload_cache WHERE field IN (SELECT field FROM upload_cache
  INDEXED BY upload_cache_expiry WHERE expires_ms <= ?1 ORDER BY expires_ms LIMIT 256)";
/// Stores an entry, replacing the key's (an update: the count stays).
const PUT: &str = "INSERT INTO upload_cache (field, tenant, url, body, expires_ms)
  VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (field) DO UPDATE SET tenant = excluded.tenant,
  url = excluded.url, body = excluded.body, expires_ms = excluded.expires_ms";
/// The number of entries, kept by the triggers.
const SIZE_NOW: &str = "SELECT n FROM upload_cache_size WHERE id = 0";
/// Drops the `?1` entries that expire first.
const TRIM: &str = "DELETE FROM upload_cache WHERE field IN (SELECT field FROM upload_cache
  INDEXED BY upload_cache_expiry ORDER BY expires_ms LIMIT ?1)";
/// The live entry of a key (`?1` field, `?2` now).
const GET: &str = "SELECT body FROM upload_cache WHERE field = ?1 AND expires_ms > ?2";
/// The live entry at a tenant's URL (`?1`, `?2`; `?3` now), the one that expires last.
const BY_URL: &str = "SELECT body FROM upload_cache INDEXED BY upload_cache_url
  WHERE tenant = ?1 AND url = ?2 AND expires_ms > ?3 ORDER BY expires_ms DESC LIMIT 1";

/// Creates the entry count and its triggers if missing and counts the entries, in one
/// transaction (at open, after the schema's migration).
pub(crate) fn prepare(conn: &mut Connection, path: &Path) -> Result<(), JobStoreError> {
    let err = |e| db_error(path, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch(SIZE).map_err(err)?;
    tx.commit().map_err(err)
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
            tx.prepare_cached(GET)
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
            tx.prepare_cached(SWEEP)
                .and_then(|mut s| s.execute([to_sql(now_ms)]))
                .map_err(err)?;
            tx.prepare_cached(PUT)
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
                .prepare_cached(SIZE_NOW)
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(err)?;
            let over = count - i64::try_from(max_entries.max(1)).unwrap_or(i64::MAX);
            if over > 0 {
                tx.prepare_cached(TRIM)
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
            tx.prepare_cached(BY_URL)
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
            .map_err(UploadCacheError::from)
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
            .map_err(UploadCacheError::from)
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
            .map_err(UploadCacheError::from)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::schema::SCHEMA;
    use crate::schema::tests::plan;

    #[test]
    fn the_cache_queries_walk_their_indexes_without_sorting_or_scanning() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(SIZE).unwrap();
        for (sql, uses) in [
            (GET, &["PRIMARY KEY"][..]),
            (BY_URL, &["upload_cache_url"]),
            (SWEEP, &["upload_cache_expiry", "PRIMARY KEY"]),
            (TRIM, &["upload_cache_expiry", "PRIMARY KEY"]),
            (SIZE_NOW, &["INTEGER PRIMARY KEY"]),
        ] {
            let p = plan(&conn, sql);
            for index in uses {
                assert!(p.contains(index), "{sql}: {p}");
            }
            assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
            // A walk of an index in its order up to a LIMIT is fine; the table itself never.
            assert!(
                p.split("; ").all(|step| step != "SCAN upload_cache"),
                "{sql}: {p}"
            );
        }
    }

    fn count(conn: &Connection) -> (i64, i64) {
        let kept: i64 = conn.query_row(SIZE_NOW, [], |r| r.get(0)).unwrap();
        let real: i64 = conn
            .query_row("SELECT COUNT(*) FROM upload_cache", [], |r| r.get(0))
            .unwrap();
        (kept, real)
    }

    #[test]
    fn the_kept_count_follows_inserts_replacements_deletes_and_is_recounted_at_open() {
        let dir = std::env::temp_dir().join(format!(
            "jobstore-sqlite-upload-size-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("size.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        // A file of a build before the count: entries, no count table, no triggers.
        for n in 0..5 {
            conn.execute(
                "INSERT INTO upload_cache VALUES (?1, 't', ?2, '{}', ?3)",
                params![format!("f{n}"), format!("u{n}"), 100 + n],
            )
            .unwrap();
        }
        prepare(&mut conn, &path).unwrap();
        assert_eq!(count(&conn), (5, 5), "counted at open");
        conn.execute(PUT, params!["f0", "t", "u0b", "{}", 500])
            .unwrap();
        conn.execute(PUT, params!["f9", "t", "u9", "{}", 600])
            .unwrap();
        assert_eq!(count(&conn), (6, 6), "a replacement is not a new entry");
        conn.execute(SWEEP, [102]).unwrap();
        assert_eq!(count(&conn), (4, 4), "swept f1 and f2");
        conn.execute(TRIM, [3]).unwrap();
        assert_eq!(count(&conn), (1, 1));
        // Rows removed behind the triggers' back (a table dropped) are recounted at open.
        conn.execute_batch("DROP TABLE upload_cache").unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        prepare(&mut conn, &path).unwrap();
        assert_eq!(count(&conn), (0, 0));
        drop(conn);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
