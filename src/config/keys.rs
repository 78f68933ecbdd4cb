//! API keys as configuration holds them: SHA-256 hashes (hex, optionally `sha256:`), never the
//! keys; how a key is hashed (`embedserve hash-key`, authentication); and the demo keys this
//! repository publishes, which must never be reachable by others.

use sha2::{Digest, Sha256};

/// SHA-256 of the demo keys printed in the README and config/*.toml (`acme-dev-key`,
/// `globex-dev-key`): anyone can use them.
pub const DEMO_KEY_HASHES: [&str; 2] = [
    "7f2e6802f17f6ba210bb387707340e4fa6d03de0347ddcc5dd4ece4439694fce",
    "12cad79350669be6df490bdd33bd12237b1b5c2b917224bf9b70b380e35c3e95",
];

/// The hash to put in config for `key`, as `embedserve hash-key` prints it.
pub fn hash_key(key: &str) -> String {
    hex::encode(hash_key_bytes(key))
}

/// SHA-256 of `key`, as config stores keys.
pub fn hash_key_bytes(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A key hash as config holds it: 64 hex digits, optionally prefixed `sha256:`.
pub fn parse_key_hash(text: &str) -> Option<[u8; 32]> {
    let hex_digits = text.strip_prefix("sha256:").unwrap_or(text);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

/// Whether `hash` (as config holds it) is one of the published demo keys.
pub fn is_demo_key(hash: &str) -> bool {
    let Some(hash) = parse_key_hash(hash) else { return false };
    DEMO_KEY_HASHES.iter().filter_map(|h| parse_key_hash(h)).any(|demo| demo == hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_keys_hash_to_the_published_hashes() {
        assert_eq!(hash_key("acme-dev-key"), DEMO_KEY_HASHES[0]);
        assert_eq!(hash_key("globex-dev-key"), DEMO_KEY_HASHES[1]);
        assert!(is_demo_key(&format!("sha256:{}", DEMO_KEY_HASHES[1])));
        assert!(!is_demo_key(&hash_key("a key of my own")));
        assert_eq!(parse_key_hash("not hex"), None);
    }
}
