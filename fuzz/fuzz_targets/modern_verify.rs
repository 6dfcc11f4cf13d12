//! Arbitrary modern-format datagrams through `Verifier::verify` with a fixed policy (two
//! modern stanzas and an fwknop one): no panic, never an accept, never a replay-store entry.
//! The first byte picks the source and whether the rest is sent as text after `SPA1.` or as a
//! binary packet given a valid MAC (so it reaches the X25519 and the AEAD). The body is shared
//! with the stable test `spa-engine/tests/fuzz_bodies.rs`.
#![no_main]

#[path = "../../spa-engine/tests/support/fuzz_bodies.rs"]
#[allow(dead_code)] // each target uses one of the bodies
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::modern_verify(data));
