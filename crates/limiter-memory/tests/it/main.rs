//! Integration tests of limiter-memory: the shared `ConcurrencyLimiter` contract, plus
//! ageing, which only this adapter has.

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
