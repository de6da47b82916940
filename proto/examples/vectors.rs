//! Prints the `test-vectors` block of docs/PROTOCOL.md with every output
//! recomputed from the inputs it holds: run it as `cargo run -p xtask --
//! vectors` after a deliberate change of the format, or to add a vector
//! (write its inputs into the block, then paste the output over the block).
//!
//! The generator shares its code with proto/tests/vectors.rs, which checks
//! that the document holds exactly what this prints.
// The shared test helpers assert with unwrap/panic (clippy.toml exempts only
// #[test] fns).
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    print!("{}", common::vectors::render(&common::vectors::vectors()));
}
