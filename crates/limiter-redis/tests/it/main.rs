//! The integration tests of `limiter-redis`, one binary (see STYLE rule 14), all against
//! real `redis-server` processes started by [`support`].

mod behaviour;
mod contract;
mod diagnosis;
mod faults;
mod instances;
mod processes;
mod support;
mod tls;
