//! The job-store contract suite against the in-memory store.

use std::sync::Arc;

use jobstore_memory::MemoryJobStore;
use ports::JobStore;

async fn new_store() -> Arc<dyn JobStore> {
    Arc::new(MemoryJobStore::new())
}

ports::job_store_contract_tests!(new_store);

mod credits {
    use std::sync::Arc;

    use jobstore_memory::MemoryJobStore;
    use ports::CreditLedger;

    async fn new_ledger() -> Arc<dyn CreditLedger> {
        Arc::new(MemoryJobStore::new())
    }

    ports::credit_ledger_contract_tests!(new_ledger);
}

mod uploads {
    use std::sync::Arc;

    use jobstore_memory::MemoryJobStore;
    use ports::UploadCache;

    async fn new_cache() -> Arc<dyn UploadCache> {
        Arc::new(MemoryJobStore::new())
    }

    ports::upload_cache_contract_tests!(new_cache);
}
