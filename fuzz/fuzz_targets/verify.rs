//! Arbitrary datagrams through `Verifier::verify` with a fixed policy: no panic, never an
//! accept, never a replay-store entry. The body is shared with the stable test
//! `spa-engine/tests/fuzz_bodies.rs`.
#![no_main]

#[path = "../../spa-engine/tests/support/fuzz_bodies.rs"]
#[allow(dead_code)] // each target uses one of the bodies
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::verify(data));
