//! Two stores of one name on one Redis, each with a client of its own (two processes, as far
//! as Redis can tell), see one queue: keys, claims and leases are shared.

use ports::{LeaseTerms, ListQuery};
use std::time::Duration;

use domain::Priority;
use jobstore_redis::RedisJobStore;
use ports::job_contract::{job_id, new_job};
use ports::{JobStore, JobStoreError, QueueLimits, ScopedKey, Submitted};
use redis_connect::RedisConnectionConfig;
use test_support::redis::RedisServer;
use test_support::unique_name;

const T0: u64 = 1_800_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const ROOMY: QueueLimits = QueueLimits { max_queued: 100 };

async fn store(server: &RedisServer, name: &str) -> RedisJobStore {
    let mut config = RedisConnectionConfig::new(server.url());
    config.op_timeout = Duration::from_secs(5);
    RedisJobStore::connect(config, name)
        .await
        .expect("the store connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_of_one_name_share_keys_claims_and_leases() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let name = unique_name("shared");
    let (a, b) = (store(&server, &name).await, store(&server, &name).await);
    let other = store(&server, &unique_name("other")).await;

    // A key submitted via A replays via B.
    let key = ScopedKey {
        tenant: domain::Tenant::parse("caller").unwrap(),
        key: "order-1".into(),
    };
    let mut job = new_job(1, Priority::Normal, T0);
    job.idempotency = Some(key.clone());
    let Submitted::Created(created) = a.submit(job, ROOMY).await.unwrap() else {
        panic!("A creates the job");
    };
    let mut replay = new_job(2, Priority::Normal, T0 + 1);
    replay.idempotency = Some(key.clone());
    assert_eq!(
        b.submit(replay, ROOMY).await.unwrap(),
        Submitted::Existing(created.clone())
    );
    assert_eq!(b.get_by_key(&key).await.unwrap(), Some(created.clone()));
    assert_eq!(
        other.get_by_key(&key).await.unwrap(),
        None,
        "names are apart"
    );

    // A job claimed via A is not claimable via B until its lease expires.
    let claimed = a
        .claim(LeaseTerms::new("wa", LEASE, T0 + 10))
        .await
        .unwrap()
        .expect("A claims");
    assert_eq!(claimed.id, job_id(1));
    assert_eq!(
        b.claim(LeaseTerms::new("wb", LEASE, T0 + 10))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        b.claim(LeaseTerms::new("wb", LEASE, T0 + 30_009))
            .await
            .unwrap(),
        None
    );
    assert!(
        !b.renew(&claimed.id, LeaseTerms::new("wb", LEASE, T0 + 20))
            .await
            .unwrap()
    );
    let taken = b
        .claim(LeaseTerms::new("wb", LEASE, T0 + 30_010))
        .await
        .unwrap()
        .expect("B takes over after the lease");
    assert_eq!(taken.id, claimed.id);
    assert_eq!(taken.version, claimed.version + 1);
    // A's stale copy can no longer be written, by A or B.
    let err = a.update(claimed).await.unwrap_err();
    assert!(matches!(err, JobStoreError::Conflict { .. }), "{err:?}");
    assert_eq!(a.counts().await.unwrap(), b.counts().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_unavailable_and_the_message_hides_the_password() {
    let port = test_support::free_port();
    let mut config = RedisConnectionConfig::new(format!("redis://u:s3cret@127.0.0.1:{port}"));
    config.connect_timeout = Duration::from_millis(300);
    let err = RedisJobStore::connect(config, "jobs").await.unwrap_err();
    let JobStoreError::Unavailable(message) = err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_submit_reports_its_own_job_and_another_with_its_id_is_corrupt() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let s = store(&server, &unique_name("replay")).await;
    let job = new_job(7, Priority::High, T0);
    let Submitted::Created(first) = s.submit(job.clone(), ROOMY).await.unwrap() else {
        panic!("created");
    };
    // fred sends the same EVALSHA again after a dropped connection: the same call.
    assert_eq!(
        s.submit(job.clone(), ROOMY).await.unwrap(),
        Submitted::Created(first)
    );
    let mut other = job;
    other.fingerprint = "another request".into();
    let err = s.submit(other, ROOMY).await.unwrap_err();
    assert!(matches!(err, JobStoreError::Corrupt(_)), "{err:?}");
    assert_eq!(
        s.list(ListQuery::new(None, 10, None))
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_leased_jobs_ahead_do_not_hide_a_runnable_one() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let s = store(&server, &unique_name("deep")).await;
    for n in 0..300 {
        s.submit(new_job(n, Priority::Critical, T0), ROOMY_DEEP)
            .await
            .unwrap();
    }
    for n in 0..300 {
        let job = s
            .claim(LeaseTerms::new("w", LEASE, T0))
            .await
            .unwrap()
            .expect("claimed");
        assert_eq!(job.id, job_id(n), "critical jobs go first, oldest first");
    }
    for n in 300..600 {
        let mut job = new_job(n, Priority::High, T0);
        job.status = ports::JobStatus::Creating;
        job.lease = Some(ports::Lease {
            owner: "sync".into(),
            until_ms: T0 + 60_000,
        });
        s.submit(job, ROOMY_DEEP).await.unwrap();
    }
    s.submit(new_job(1_000, Priority::Low, T0), ROOMY_DEEP)
        .await
        .unwrap();
    let low = s
        .claim(LeaseTerms::new("w", LEASE, T0 + 1))
        .await
        .unwrap()
        .expect("the low job");
    assert_eq!(low.id, job_id(1_000));
    assert_eq!(
        s.claim(LeaseTerms::new("w", LEASE, T0 + 1)).await.unwrap(),
        None
    );
    // Once the leases run out, the order is back: critical first.
    let next = s
        .claim(LeaseTerms::new("w2", LEASE, T0 + 30_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, job_id(0));
}

const ROOMY_DEEP: QueueLimits = QueueLimits { max_queued: 10_000 };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_went_away_is_unavailable_and_a_restarted_one_is_used_again() {
    let mut server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let mut config = RedisConnectionConfig::new(server.url());
    config.op_timeout = Duration::from_millis(500);
    let s = RedisJobStore::connect(config, &unique_name("away"))
        .await
        .unwrap();
    s.submit(new_job(1, Priority::Normal, T0), ROOMY)
        .await
        .unwrap();
    server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = s.get(&job_id(1)).await.unwrap_err();
    assert!(matches!(err, JobStoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by op_timeout"
    );
    // A restarted server without persistence is empty (see the crate docs on durability),
    // and the scripts are loaded there again by themselves.
    let _server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match s.get(&job_id(1)).await {
            Ok(found) => {
                assert_eq!(found, None, "nothing was persisted");
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "still unavailable: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        s.submit(new_job(2, Priority::Normal, T0), ROOMY)
            .await
            .unwrap(),
        Submitted::Created(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_through_one_store_wakes_the_others_of_its_name_only() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let name = unique_name("wake");
    let (a, b) = (store(&server, &name).await, store(&server, &name).await);
    let other = store(&server, &unique_name("other")).await;
    // The subscriptions are taken in the background after the connect: let them settle,
    // and swallow the wake-up each store gives when it (re)connects.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in [&a, &b, &other] {
        let _ = tokio::time::timeout(Duration::from_millis(100), s.woken()).await;
    }
    let woken =
        tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(5), b.woken()).await });
    let other_woken = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_millis(1500), other.woken()).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.submit(new_job(1, Priority::Normal, T0), ROOMY)
        .await
        .unwrap();
    assert!(
        woken.await.unwrap().is_ok(),
        "B hears of A's submit without asking Redis"
    );
    assert!(
        other_woken.await.unwrap().is_err(),
        "a store of another name is not woken"
    );
}

/// Jobs queued by a build before the fair order (no rank; in the single `due` set, scored by
/// `(3 - priority) · 2^40 + seq`) are claimed first, in their old order, after an upgrade,
/// and jobs submitted since rank behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_by_an_earlier_build_keep_their_place_after_an_upgrade() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let name = unique_name("upgrade");
    let store = store(&server, &name).await;
    let tag = format!("{{talkgate-jobs:{name}}}");
    // 40 000 jobs' worth of seqs, so that old seqs are larger than new jobs' first ranks.
    server.command(None, &["SET", &format!("{tag}:next_seq"), "40000"]);
    for n in 1..=3 {
        let Submitted::Created(_) = store
            .submit(new_job(n, Priority::Normal, T0 + n), ROOMY)
            .await
            .unwrap()
        else {
            panic!("created");
        };
    }
    // Make them what the earlier build left: no ranks, no fair state, two of them in `due`.
    for key in ["rank", "fair"] {
        server.command(None, &["DEL", &format!("{tag}:{key}")]);
    }
    let band: u64 = 1 << 40;
    for n in [1, 2] {
        let id = job_id(n).to_string();
        // Priority normal (index 2): band 3 - 2 = 1.
        let order = band + 40_000 + n;
        server.command(None, &["ZREM", &format!("{tag}:wait"), &id]);
        server.command(
            None,
            &["ZADD", &format!("{tag}:due"), &order.to_string(), &id],
        );
    }
    // Submitted after the upgrade, at the same priority and before any claim.
    let mut newer = new_job(4, Priority::Normal, T0 + 4);
    newer.tenant = domain::Tenant::parse("newcomer").unwrap();
    newer.share = domain::Share::new(100, None);
    let Submitted::Created(newer) = store.submit(newer, ROOMY).await.unwrap() else {
        panic!("created");
    };
    assert!(
        newer.rank > 40_003,
        "ranked past every old seq: {}",
        newer.rank
    );
    let mut claimed = Vec::new();
    while let Some(job) = store
        .claim(LeaseTerms::new("w", LEASE, T0 + 10))
        .await
        .unwrap()
    {
        claimed.push(job.id);
    }
    let expected: Vec<_> = [1, 2, 3, 4].into_iter().map(job_id).collect();
    assert_eq!(claimed, expected);
    assert_eq!(
        server
            .command(None, &["ZCARD", &format!("{tag}:due")])
            .trim(),
        ":0",
        "the old set is emptied"
    );
}

/// Two stores of one name (two processes' clients) reserving the last credits of one budget
/// at once never go over it together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_reserving_the_last_credits_never_go_over_the_budget() {
    use ports::{CreditLedger, Reservation, Reserved};
    use std::sync::Arc;
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let name = unique_name("budget");
    let a = Arc::new(store(&server, &name).await);
    let b = Arc::new(store(&server, &name).await);
    let web = domain::Tenant::parse("web").unwrap();
    let hold = |n: u64, credits: u64| Reservation {
        job: job_id(n),
        tenant: web.clone(),
        period: "2026-12".into(),
        credits,
        at_ms: T0 + n,
    };
    // 7 of 10 credits are spent or held; 60 talks of 1 or 2 credits race for the last 3.
    assert!(matches!(
        a.reserve(&hold(1000, 7), 10).await.unwrap(),
        Reserved::Taken(_)
    ));
    let tasks: Vec<_> = (1..=60u64)
        .map(|n| {
            let ledger = if n % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            let r = hold(n, 1 + n % 2);
            tokio::spawn(async move { (r.credits, ledger.reserve(&r, 10).await.unwrap()) })
        })
        .collect();
    let mut taken = 0;
    for task in tasks {
        if let (credits, Reserved::Taken(_)) = task.await.unwrap() {
            taken += credits;
        }
    }
    let usage = b.usage(&web, "2026-12").await.unwrap();
    assert_eq!(usage.reserved, 7 + taken);
    assert!(usage.reserved <= 10, "{usage:?}");
    assert!(taken >= 2, "the last credits were taken: {taken}");
}
