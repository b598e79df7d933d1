//! The job-store contract suite against the SQLite store, each test on a fresh file.

mod common;

use std::sync::Arc;

use common::TempDir;
use jobstore_sqlite::SqliteJobStore;
use ports::JobStore;
use ports::job_contract::Guarded;

async fn new_store() -> Arc<dyn JobStore> {
    let dir = TempDir::new();
    let store = SqliteJobStore::open(dir.path().join("jobs.db")).expect("open a fresh store");
    // The directory goes with the store.
    Arc::new(Guarded::new(store, dir))
}

ports::job_store_contract_tests!(new_store);

mod credits {
    use std::sync::Arc;

    use jobstore_sqlite::SqliteJobStore;
    use ports::CreditLedger;
    use ports::job_contract::Guarded;

    use super::common::TempDir;

    async fn new_ledger() -> Arc<dyn CreditLedger> {
        let dir = TempDir::new();
        let store = SqliteJobStore::open(dir.path().join("jobs.db")).expect("open a fresh store");
        Arc::new(Guarded::new(store, dir))
    }

    ports::credit_ledger_contract_tests!(new_ledger);
}

mod uploads {
    use std::sync::Arc;

    use jobstore_sqlite::SqliteJobStore;
    use ports::UploadCache;
    use ports::job_contract::Guarded;

    use super::common::TempDir;

    async fn new_cache() -> Arc<dyn UploadCache> {
        let dir = TempDir::new();
        let store = SqliteJobStore::open(dir.path().join("jobs.db")).expect("open a fresh store");
        Arc::new(Guarded::new(store, dir))
    }

    ports::upload_cache_contract_tests!(new_cache);
}
