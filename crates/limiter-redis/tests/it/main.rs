//! The integration tests of `limiter-redis`, one binary (see STYLE rule 14), all against
//! real `redis-server` processes started by [`support`].

mod behaviour;
mod cluster;
mod contract;
mod diagnosis;
mod faults;
mod instances;
mod load;
mod processes;
mod sentinel;
mod support;
mod tenants;
mod tls;
