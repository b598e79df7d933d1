//! Integration tests of the fake D-ID server, over real HTTP on loopback (one test binary,
//! one module per concern).

mod auth;
mod conformance;
mod faults;
mod lifecycle;
mod routes;
mod stats;
mod support;
mod webhooks;
