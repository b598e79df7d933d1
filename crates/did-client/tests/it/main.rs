//! did-client's integration tests: one binary, over real HTTP on loopback.
//!
//! Modules against the scripted upstream (`support::Scripted`, a wiremock server answering
//! exact bodies and headers and recording every request):
//! - `bodies`: upstream bodies are capped (a hand-rolled loopback upstream streams endless
//!   bodies, which wiremock's whole-body responses cannot);
//! - `hardening`: bounded upload waits, a slot kept until an abandoned exchange ends, early polls;
//! - `errors`: every error shape D-ID sends, and lenient parsing of what it returns;
//! - `requests`: what goes on the wire (auth header, upload content types, create token);
//! - `retries`: which failures are retried, how often, how long, within which deadline;
//! - `permits`: a permit only during the exchange — not in backoff, not between polls, not
//!   after cancellation;
//! - `waiting`: `create_talk_and_wait` to done, error, rejected and timeout; `wait_for_talk`
//!   on a talk created before.
//!
//! Modules against `did-fake` (the realistic upstream):
//! - `fake`: every operation, exactly-once create under create-then-fail, polling to each
//!   end state, what a failed create says it sent;
//! - `pacing`: after a 429 sends are paced below the fake's token bucket, a `Retry-After`
//!   holds them, and pacing off sends into the throttle.

mod bodies;
mod errors;
mod fake;
mod hardening;
mod pacing;
mod permits;
mod requests;
mod retries;
mod support;
mod waiting;
