//! The shared-records contract suite: the behaviour every [`SharedRecords`] adapter must
//! show, run against each with [`records_contract_tests!`](crate::records_contract_tests).
//! Each factory call must give records no other test sees (a fresh store, or a fresh prefix).

use std::future::Future;
use std::sync::Arc;

use crate::records::{MAX_NAME_LEN, MAX_VALUE_LEN, RecordsError, SharedRecords, Swap, Versioned};

/// A record is created once, read back with its version, and replaced only from the version
/// read.
pub async fn swaps_store_only_from_the_version_read<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn SharedRecords>>,
{
    let r = factory().await;
    assert_eq!(r.load("limit").await.unwrap(), None);
    let Swap::Stored(v1) = r.swap("limit", None, "a").await.unwrap() else {
        panic!("creating a missing record must store");
    };
    assert!(v1 >= 1);
    assert_eq!(
        r.load("limit").await.unwrap(),
        Some(Versioned {
            version: v1,
            value: "a".to_owned()
        })
    );
    // Creating it again conflicts and shows what is there.
    assert_eq!(
        r.swap("limit", None, "b").await.unwrap(),
        Swap::Conflict(Some(Versioned {
            version: v1,
            value: "a".to_owned()
        }))
    );
    let Swap::Stored(v2) = r.swap("limit", Some(v1), "b").await.unwrap() else {
        panic!("a swap from the current version must store");
    };
    assert!(v2 > v1);
    // A stale version conflicts; nothing changes.
    assert_eq!(
        r.swap("limit", Some(v1), "c").await.unwrap(),
        Swap::Conflict(Some(Versioned {
            version: v2,
            value: "b".to_owned()
        }))
    );
    // Expecting a version of a record that does not exist conflicts with `None`.
    assert_eq!(
        r.swap("other", Some(3), "x").await.unwrap(),
        Swap::Conflict(None)
    );
    assert_eq!(r.load("other").await.unwrap(), None);
    assert_eq!(r.load("limit").await.unwrap().unwrap().value, "b");
}

/// Many callers swapping at once, each retrying from what the conflict showed, lose nothing.
pub async fn concurrent_swaps_lose_nothing<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn SharedRecords>>,
{
    let r = factory().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                for _ in 0..25 {
                    let mut current = r.load("count").await.unwrap();
                    loop {
                        let n: u64 = current.as_ref().map_or(0, |c| c.value.parse().unwrap());
                        match r
                            .swap(
                                "count",
                                current.as_ref().map(|c| c.version),
                                &(n + 1).to_string(),
                            )
                            .await
                            .unwrap()
                        {
                            Swap::Stored(_) => break,
                            Swap::Conflict(now) => current = now,
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(r.load("count").await.unwrap().unwrap().value, "200");
}

/// Names and values outside the bounds are refused, and store nothing.
pub async fn names_and_values_are_bounded<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn SharedRecords>>,
{
    let r = factory().await;
    for name in ["", "a b", "a/b", "ü", &"n".repeat(MAX_NAME_LEN + 1)] {
        assert!(
            matches!(r.swap(name, None, "v").await, Err(RecordsError::Invalid(_))),
            "{name:?}"
        );
        assert!(matches!(
            r.load(name).await,
            Err(RecordsError::Invalid(_)) | Ok(None)
        ));
    }
    let big = "v".repeat(MAX_VALUE_LEN + 1);
    assert!(matches!(
        r.swap("big", None, &big).await,
        Err(RecordsError::Invalid(_))
    ));
    assert_eq!(r.load("big").await.unwrap(), None);
    let most = "v".repeat(MAX_VALUE_LEN);
    assert!(matches!(
        r.swap("big", None, &most).await,
        Ok(Swap::Stored(_))
    ));
    assert_eq!(
        r.load("big").await.unwrap().unwrap().value.len(),
        MAX_VALUE_LEN
    );
    let longest = "n".repeat(MAX_NAME_LEN);
    assert!(matches!(
        r.swap(&longest, None, "{}").await,
        Ok(Swap::Stored(_))
    ));
}

/// Runs the shared-records contract suite against `$factory`, an `async fn() ->
/// Arc<dyn SharedRecords>` giving fresh records each call.
#[macro_export]
macro_rules! records_contract_tests {
    ($factory:path) => {
        $crate::records_contract_tests!(@tests $factory;
            swaps_store_only_from_the_version_read,
            concurrent_swaps_lose_nothing,
            names_and_values_are_bounded
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::records_contract::$name($factory).await;
            }
        )*
    };
}
