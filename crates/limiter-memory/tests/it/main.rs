//! Integration tests of limiter-memory: the shared `ConcurrencyLimiter` contract, plus
//! ageing, which only this adapter has, and the `SharedRecords` contract of `MemoryRecords`.

mod ageing;
mod capped;

use std::sync::Arc;

use limiter_memory::MemoryLimiter;
use ports::ConcurrencyLimiter;

async fn new_limiter(limit: u32) -> Arc<dyn ConcurrencyLimiter> {
    Arc::new(MemoryLimiter::new(limit))
}

mod contract {
    use super::new_limiter;
    ports::limiter_contract_tests!(new_limiter);
}

async fn new_records() -> Arc<dyn ports::SharedRecords> {
    Arc::new(limiter_memory::MemoryRecords::new())
}

/// The shared-records contract, on the in-process records.
mod records_contract {
    use super::new_records;
    ports::records_contract_tests!(new_records);
}
