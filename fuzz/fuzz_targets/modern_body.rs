//! Arbitrary decrypted modern bodies through `modern::Body::decode`: no panic, and whatever
//! decodes encodes back to exactly the same bytes (one request, one encoding). The body is
//! shared with the stable test `spa-engine/tests/fuzz_bodies.rs`.
#![no_main]

#[path = "../../spa-engine/tests/support/fuzz_bodies.rs"]
#[allow(dead_code)] // each target uses one of the bodies
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::modern_body(data));
