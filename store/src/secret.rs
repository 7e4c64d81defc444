//! Secrets handed out once (device tokens, account tokens, generated passwords) and the hashing
//! that lets the database keep only a fingerprint of them.

use rand::Rng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A secret shown to the operator exactly once; `Debug` never prints it, so it cannot leak into
/// logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must show or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Unwraps the secret.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The stored form of a token: lowercase hex of its SHA-256. Tokens carry 256 random bits, so a
/// fast hash is enough (no dictionary to guess from).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token: 32 random bytes as 64 lowercase hex characters.
pub(crate) fn new_token() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret(hex::encode(bytes))
}

/// The key tokens are derived from when an external broker must be told them (Mosquitto's
/// dynamic security takes a plaintext password and keeps its own hash): a device's or account's
/// token is then HMAC-SHA256(key, kind ‖ 0 ‖ name) in hex, so the broker sync can compute it
/// again while the database still keeps only its SHA-256. Whoever holds the key can compute
/// every such token, so it lives in a 0600 file beside the platform key, never in the database.
#[derive(Clone)]
pub struct CredentialKey([u8; 32]);

impl CredentialKey {
    /// A fresh random key.
    pub fn generate() -> CredentialKey {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        CredentialKey(bytes)
    }

    /// Reads the key from its file form: 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<CredentialKey, crate::StoreError> {
        let bytes = hex::decode(text.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
        bytes.map(CredentialKey).ok_or_else(|| crate::StoreError::InvalidInput {
            field: "broker credential key",
            reason: "must be 64 hexadecimal characters (32 bytes)".into(),
        })
    }

    /// The file form: 64 lowercase hex characters.
    pub fn to_hex(&self) -> Secret {
        Secret(hex::encode(self.0))
    }

    /// The token of the device (`kind` "device") or account (`kind` "account") called `name`.
    pub fn token_for(&self, kind: &str, name: &str) -> Secret {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(name.as_bytes());
        Secret(hex::encode(mac.finalize().into_bytes()))
    }
}

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey([redacted])")
    }
}

/// Crockford's base32 alphabet in lowercase (no i, l, o, u), for ids people may read aloud.
const BASE32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A fresh id: `prefix` then 12 random base32 characters (60 bits).
pub(crate) fn new_id(prefix: char) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(13);
    id.push(prefix);
    for _ in 0..12 {
        id.push(BASE32[rng.random_range(0..32)] as char);
    }
    id
}

/// Characters of generated passwords: letters and digits without look-alikes (0/O, 1/l/I).
const PASSWORD_CHARS: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ";

/// A fresh 20-character password (about 115 bits).
pub(crate) fn new_password() -> Secret {
    let mut rng = rand::rng();
    Secret((0..20).map(|_| PASSWORD_CHARS[rng.random_range(0..PASSWORD_CHARS.len())] as char).collect())
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a presented token against a stored hash without an early exit on the first mismatch.
pub(crate) fn token_matches(token: &str, stored_hash: &str) -> bool {
    constant_time_eq(hash_token(token).as_bytes(), stored_hash.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn tokens_are_256_bit_hex_and_hash_to_sha256_hex() {
        let t = new_token();
        assert_eq!(t.expose().len(), 64);
        assert!(t.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(token_matches("abc", &hash_token("abc")));
        assert!(!token_matches("abd", &hash_token("abc")));
    }

    #[test]
    fn derived_tokens_are_stable_per_name_and_key() {
        let k = CredentialKey::generate();
        let again = CredentialKey::from_hex(k.to_hex().expose()).unwrap();
        assert_eq!(k.token_for("device", "d1"), again.token_for("device", "d1"));
        assert_ne!(k.token_for("device", "d1"), k.token_for("device", "d2"));
        assert_ne!(k.token_for("device", "d1"), k.token_for("account", "d1"));
        assert_ne!(k.token_for("device", "d1"), CredentialKey::generate().token_for("device", "d1"));
        assert_eq!(k.token_for("device", "d1").expose().len(), 64);
        assert!(CredentialKey::from_hex("abc").is_err());
        assert_eq!(format!("{k:?}"), "CredentialKey([redacted])");
    }

    #[test]
    fn ids_and_passwords_have_the_promised_shape() {
        let id = new_id('d');
        assert_eq!(id.len(), 13);
        assert!(id.starts_with('d'));
        assert!(id[1..].bytes().all(|b| BASE32.contains(&b)));
        let p = new_password();
        assert_eq!(p.expose().chars().count(), 20);
        assert_ne!(new_password(), p);
    }
}
