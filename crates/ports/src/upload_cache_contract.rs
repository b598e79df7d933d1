//! The upload-cache contract suite: the behaviour every [`UploadCache`] adapter must show,
//! run against each with [`upload_cache_contract_tests!`](crate::upload_cache_contract_tests).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use domain::{Asset, AssetId, Tenant, UploadKind};

use crate::job_contract::Guarded;
use crate::upload_cache::{CachedUpload, UploadCache, UploadCacheError, UploadKey};

const T0: u64 = 1_800_000_000_000;

/// A guarded store's cache is the store's (see [`Guarded`]).
#[async_trait]
impl<S: UploadCache> UploadCache for Guarded<S> {
    async fn cached_upload(
        &self,
        key: &UploadKey,
        now_ms: u64,
    ) -> Result<Option<CachedUpload>, UploadCacheError> {
        self.store.cached_upload(key, now_ms).await
    }
    async fn cache_upload(
        &self,
        key: &UploadKey,
        entry: &CachedUpload,
        now_ms: u64,
        max_entries: usize,
    ) -> Result<(), UploadCacheError> {
        self.store
            .cache_upload(key, entry, now_ms, max_entries)
            .await
    }
    async fn uploaded_audio_seconds(
        &self,
        tenant: &Tenant,
        url: &str,
        now_ms: u64,
    ) -> Result<Option<f64>, UploadCacheError> {
        self.store.uploaded_audio_seconds(tenant, url, now_ms).await
    }
}

fn key(tenant: &str, kind: UploadKind, n: u32) -> UploadKey {
    UploadKey {
        tenant: Tenant::parse(tenant).expect("a valid tenant"),
        kind,
        sha256: format!("{n:064x}"),
    }
}

fn entry(n: u32, seconds: Option<f64>, expires_ms: u64) -> CachedUpload {
    CachedUpload {
        asset: Asset {
            id: AssetId::parse(&format!("aud_{n}")).ok(),
            url: format!("s3://d-id-audios-prod/u/aud_{n}/a.wav"),
            duration: seconds,
        },
        audio_seconds: seconds,
        expires_ms,
    }
}

/// An entry is found by its key until it expires; other tenants and kinds are other keys.
pub async fn entries_are_found_by_key_until_they_expire<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn UploadCache>>,
{
    let cache = factory().await;
    let k = key("web", UploadKind::Audio, 1);
    assert_eq!(cache.cached_upload(&k, T0).await.unwrap(), None);
    let e = entry(1, Some(12.5), T0 + 1_000);
    cache.cache_upload(&k, &e, T0, 100).await.unwrap();
    assert_eq!(
        cache.cached_upload(&k, T0 + 999).await.unwrap(),
        Some(e.clone())
    );
    assert_eq!(
        cache.cached_upload(&k, T0 + 1_000).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        cache
            .cached_upload(&key("batch", UploadKind::Audio, 1), T0)
            .await
            .unwrap(),
        None,
        "another tenant's bytes are another key"
    );
    assert_eq!(
        cache
            .cached_upload(&key("web", UploadKind::Image, 1), T0)
            .await
            .unwrap(),
        None,
        "the same bytes as the other kind are another key"
    );
    let web = Tenant::parse("web").unwrap();
    assert_eq!(
        cache
            .uploaded_audio_seconds(&web, &e.asset.url, T0 + 1)
            .await
            .unwrap(),
        Some(12.5)
    );
    let batch = Tenant::parse("batch").unwrap();
    assert_eq!(
        cache
            .uploaded_audio_seconds(&batch, &e.asset.url, T0 + 1)
            .await
            .unwrap(),
        None,
        "found by its own tenant only"
    );
    assert_eq!(
        cache
            .uploaded_audio_seconds(&web, &e.asset.url, T0 + 1_000)
            .await
            .unwrap(),
        None,
        "expired"
    );
    // Storing again replaces the entry.
    let newer = entry(2, Some(3.0), T0 + 5_000);
    cache
        .cache_upload(&k, &newer, T0 + 2_000, 100)
        .await
        .unwrap();
    assert_eq!(
        cache.cached_upload(&k, T0 + 2_001).await.unwrap(),
        Some(newer)
    );
}

/// The cache keeps at most `max_entries`, dropping those that expire first.
pub async fn the_cache_is_bounded_and_drops_what_expires_first<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn UploadCache>>,
{
    let cache = factory().await;
    for n in 0..12u32 {
        let k = key("web", UploadKind::Image, n);
        let e = entry(n, None, T0 + 10_000 + u64::from(n));
        cache.cache_upload(&k, &e, T0, 8).await.unwrap();
    }
    let mut kept = Vec::new();
    for n in 0..12u32 {
        if cache
            .cached_upload(&key("web", UploadKind::Image, n), T0 + 1)
            .await
            .unwrap()
            .is_some()
        {
            kept.push(n);
        }
    }
    assert_eq!(kept, (4..12).collect::<Vec<_>>(), "the 8 that expire last");
    // An expired entry is removed by the next store, whatever the bound.
    cache
        .cache_upload(
            &key("web", UploadKind::Image, 99),
            &entry(99, None, T0 + 20_000),
            T0 + 10_006,
            8,
        )
        .await
        .unwrap();
    let live = (4..12u32).filter(|n| T0 + 10_000 + u64::from(*n) > T0 + 10_006);
    for n in live {
        assert!(
            cache
                .cached_upload(&key("web", UploadKind::Image, n), T0 + 10_006)
                .await
                .unwrap()
                .is_some(),
            "{n} is still live"
        );
    }
}

/// Storing a key again replaces its entry: it counts once against the bound, however often it
/// is stored.
pub async fn an_entry_stored_again_counts_once_against_the_bound<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn UploadCache>>,
{
    let cache = factory().await;
    let again = key("web", UploadKind::Audio, 1);
    for n in 0..10u64 {
        let e = entry(1, Some(1.0), T0 + 50_000 + n);
        cache.cache_upload(&again, &e, T0 + n, 3).await.unwrap();
    }
    // Two more fit beside it (they expire first, so a miscount would drop them).
    for n in 2..4u32 {
        let e = entry(n, None, T0 + 20_000);
        let k = key("web", UploadKind::Audio, n);
        cache.cache_upload(&k, &e, T0 + 20, 3).await.unwrap();
    }
    for n in 1..4u32 {
        assert!(
            cache
                .cached_upload(&key("web", UploadKind::Audio, n), T0 + 21)
                .await
                .unwrap()
                .is_some(),
            "entry {n} is kept: three entries fit a bound of three"
        );
    }
}

/// An entry replaced (at another URL) or dropped by the bound no longer gives an audio's
/// length at its old URL; the one that replaced it does at its own.
pub async fn a_replaced_or_dropped_entry_gives_no_length_at_its_url<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn UploadCache>>,
{
    let cache = factory().await;
    let web = Tenant::parse("web").unwrap();
    let k = key("web", UploadKind::Audio, 1);
    let old = entry(1, Some(4.0), T0 + 10_000);
    cache.cache_upload(&k, &old, T0, 2).await.unwrap();
    let new = entry(2, Some(6.0), T0 + 10_000);
    cache.cache_upload(&k, &new, T0 + 1, 2).await.unwrap();
    let seconds = |url: String| {
        let (cache, web) = (cache.clone(), web.clone());
        async move {
            cache
                .uploaded_audio_seconds(&web, &url, T0 + 2)
                .await
                .unwrap()
        }
    };
    assert_eq!(seconds(old.asset.url.clone()).await, None, "replaced");
    assert_eq!(seconds(new.asset.url.clone()).await, Some(6.0));
    // Two entries that expire later push it out of a bound of two.
    for n in 3..5u32 {
        let e = entry(n, Some(1.0), T0 + 20_000);
        let k = key("web", UploadKind::Audio, n);
        cache.cache_upload(&k, &e, T0 + 2, 2).await.unwrap();
    }
    assert_eq!(
        cache.cached_upload(&k, T0 + 2).await.unwrap(),
        None,
        "dropped by the bound"
    );
    assert_eq!(seconds(new.asset.url.clone()).await, None, "dropped");
    assert_eq!(seconds(entry(4, None, 0).asset.url).await, Some(1.0));
}

/// Runs the whole upload-cache contract suite as `#[tokio::test]`s against `$factory`.
#[macro_export]
macro_rules! upload_cache_contract_tests {
    ($factory:path) => {
        $crate::upload_cache_contract_tests!(@tests $factory;
            entries_are_found_by_key_until_they_expire,
            the_cache_is_bounded_and_drops_what_expires_first,
            an_entry_stored_again_counts_once_against_the_bound,
            a_replaced_or_dropped_entry_gives_no_length_at_its_url
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::upload_cache_contract::$name($factory).await;
            }
        )*
    };
}
