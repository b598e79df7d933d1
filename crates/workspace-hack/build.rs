//! Present so that Cargo applies the crate's `[build-dependencies]` (the proc-macro side,
//! e.g. `syn`'s features) to the build as well.

fn main() {}
