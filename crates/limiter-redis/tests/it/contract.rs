//! The shared `ConcurrencyLimiter` contract suite, run against the Redis limiter (each test
//! on its own fresh `redis-server`).

use crate::support::contract_limiter;

ports::limiter_contract_tests!(contract_limiter);
