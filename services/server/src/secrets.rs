//! Credentials at rest: random tokens and their hashes, password hashing (argon2id), and
//! sealing (AES-256-GCM under the key-encryption key). Nothing here logs or stores a secret
//! in the clear; callers keep plaintext only long enough to show it once.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::Password;

/// What a token is for; its prefix makes leaked tokens recognisable by secret scanners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Refresh,
    Api,
    Bootstrap,
    /// The dashboard's session cookie.
    Ui,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Refresh => "mfr_",
            TokenKind::Api => "mft_",
            TokenKind::Bootstrap => "mfb_",
            TokenKind::Ui => "mfs_",
        }
    }
}

/// A fresh token with 256 bits of entropy: `<prefix><base64url>`.
pub fn new_token(kind: TokenKind) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes))
}

/// Tokens are high-entropy, so a plain SHA-256 is a safe lookup key (no salt or stretching
/// needed, unlike passwords).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The CSRF token of a dashboard session: derived from the HttpOnly cookie, so only pages the
/// service rendered for that browser know it; another site can neither read nor compute it.
pub fn csrf_token(cookie_token: &str) -> String {
    hex::encode(Sha256::digest(format!("csrf:{cookie_token}").as_bytes()))
}

pub fn hash_password(password: &Password) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .expect("argon2 with default parameters accepts any password up to the policy's length")
        .to_string()
}

pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash).map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()).unwrap_or(false)
}

/// A hash to verify against when the account does not exist, so that a login for an unknown
/// e-mail costs the same time as one for a known e-mail.
pub fn dummy_password_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&Password::parse("not-a-real-password-at-all").expect("valid")))
}

/// The key-encryption key. Seals private keys and other secrets the service must read back.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the sealing key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("sealed value is corrupt or was sealed with another key")]
    Open,
}

impl Sealer {
    pub fn from_base64(key: &str) -> Result<Self, SealError> {
        let bytes = STANDARD.decode(key.trim()).map_err(|_| SealError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SealError::BadKey)?;
        Ok(Sealer { cipher })
    }

    pub fn generate_key() -> String {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    /// `v1.<base64(nonce || ciphertext)>`; a random 96-bit nonce per value.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self.cipher.encrypt(Nonce::from_slice(&nonce), plaintext).expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        format!("v1.{}", STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = sealed.strip_prefix("v1.").ok_or(SealError::Open)?;
        let bytes = STANDARD.decode(raw).map_err(|_| SealError::Open)?;
        if bytes.len() < 12 {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_unique_and_hashed() {
        let a = new_token(TokenKind::Api);
        let b = new_token(TokenKind::Api);
        assert!(a.starts_with("mft_") && a != b);
        assert_eq!(token_hash(&a).len(), 64);
        assert!(!token_hash(&a).contains(&a[4..]));
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let p = Password::parse("correct horse battery").unwrap();
        let h = hash_password(&p);
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterz", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn sealing_round_trips_and_detects_tampering() {
        let sealer = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        let sealed = sealer.seal(b"private key");
        assert_eq!(sealer.open(&sealed).unwrap(), b"private key");
        let other = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(sealer.open("v1.AAAA").is_err());
        assert!(Sealer::from_base64("c2hvcnQ=").is_err());
    }
}
