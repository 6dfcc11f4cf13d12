//! Arbitrary decrypted plaintexts through `message::decode`: no panic, and whatever decodes
//! re-encodes to the same message. The body is shared with the stable test
//! `spa-engine/tests/fuzz_bodies.rs`.
#![no_main]

#[path = "../../spa-engine/tests/support/fuzz_bodies.rs"]
#[allow(dead_code)] // each target uses one of the bodies
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::message_decode(data));
