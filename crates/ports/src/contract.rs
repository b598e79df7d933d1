//! The ConcurrencyLimiter contract suite (being written).
