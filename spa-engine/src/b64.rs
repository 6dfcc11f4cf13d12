//! Base64 as fwknop writes it: the standard alphabet, never any `=` padding.
//!
//! fwknop strips `=` from every base64 string it puts in a packet (fields, digest, ciphertext,
//! HMAC). Its decoder is lenient about trailing bits; ours is not, so that one ciphertext has
//! exactly one wire form and a replay cannot hide behind a re-encoding.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Encodes without padding; decodes with or without padding, rejecting non-zero trailing bits.
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(false),
);

/// Encodes `bytes` the way fwknop puts base64 on the wire: no `=` padding.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    ENGINE.encode(bytes)
}

/// Appends the unpadded encoding of `bytes` to `out` without an intermediate allocation.
pub fn encode_into(bytes: impl AsRef<[u8]>, out: &mut String) {
    ENGINE.encode_string(bytes, out);
}

/// Decodes standard base64 with or without padding; `None` for anything not canonical.
pub fn decode(text: impl AsRef<[u8]>) -> Option<Vec<u8>> {
    ENGINE.decode(text).ok()
}

/// Decodes into `out` (cleared first); `false` for anything not canonical base64.
pub fn decode_into(text: impl AsRef<[u8]>, out: &mut Vec<u8>) -> bool {
    out.clear();
    ENGINE.decode_vec(text, out).is_ok()
}

/// Decodes into `out` without allocating; the number of bytes written, or `None` for anything
/// not canonical base64 or too long for `out`.
pub fn decode_slice(text: impl AsRef<[u8]>, out: &mut [u8]) -> Option<usize> {
    ENGINE.decode_slice(text, out).ok()
}

/// Length of the unpadded encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// True when every byte is in fwknopd's accepted SPA alphabet `[A-Za-z0-9+/=]`.
///
/// fwknopd drops a datagram that fails this before it looks at anything else.
pub fn is_wire_charset(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_without_padding() {
        assert_eq!(encode(b"root"), "cm9vdA");
        assert_eq!(encode(b"1.2.3.4,tcp/22"), "MS4yLjMuNCx0Y3AvMjI");
    }

    #[test]
    fn decodes_padded_and_unpadded() {
        assert_eq!(decode("cm9vdA").unwrap(), b"root");
        assert_eq!(decode("cm9vdA==").unwrap(), b"root");
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "cm9vdB" differs from "cm9vdA" only in bits that fwknop's decoder ignores.
        assert!(decode("cm9vdB").is_none());
    }

    #[test]
    fn encoded_len_matches_encoder() {
        for n in 0..100 {
            assert_eq!(encoded_len(n), encode(vec![0u8; n]).len());
        }
    }

    #[test]
    fn wire_charset() {
        assert!(is_wire_charset(b"abcXYZ019+/="));
        assert!(!is_wire_charset(b"abc\n"));
        assert!(!is_wire_charset(b"a-b"));
    }
}
