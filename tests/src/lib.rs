//! Checks that span talkgate's crates. Today: the Rust examples of the README are compiled
//! as doctests, so the README cannot drift from the code.

/// The README, whose Rust code blocks run as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
