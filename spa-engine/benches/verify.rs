//! Criterion benchmarks of the verifier (filled in below).
fn main() {}
