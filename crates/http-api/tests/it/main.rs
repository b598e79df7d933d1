//! The integration tests of http-api: one binary, one module per concern.
//!
//! Everything runs over real loopback sockets: the service from `http_api::run` on
//! `127.0.0.1:0`, in front of `did-fake` (or a mock, where the interaction is the point).

mod auth;
mod budgets;
mod callbacks;
mod cli;
mod dashboard;
mod e2e;
mod gate;
mod jobs;
mod labels;
mod limits;
mod logs;
mod misconfig;
mod mock;
mod modules;
mod openapi;
mod readme;
mod redis;
mod scrub;
mod shutdown;
mod stats;
mod support;
mod talk_webhooks;
mod tenants;
mod traces;
mod transport;
mod uploads;
