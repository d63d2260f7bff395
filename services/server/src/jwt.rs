//! Access tokens: EdDSA (Ed25519) JWTs with a `kid` header. Keys live in the database (the
//! private half sealed), so every replica signs and verifies with the same set, and a new key
//! can be added without invalidating tokens signed by an older one.

use std::collections::HashMap;
use std::sync::RwLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::domain::{OrgId, SessionId, UserId};
use crate::secrets::Sealer;
use crate::store;

const ISSUER: &str = "meshfleet";
const AUDIENCE: &str = "meshfleet-api";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub org: OrgId,
    pub sid: SessionId,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

impl Claims {
    /// Expires no sooner than `ttl` from `now_ms` (the `expires_in` a log-in answers): `exp` is
    /// in whole seconds, rounded up, or a token issued late in a second would lose most of one.
    pub fn new(user: UserId, org: OrgId, session: SessionId, now_ms: i64, ttl: std::time::Duration) -> Claims {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let exp = now_ms.saturating_add(ttl_ms).saturating_add(999) / 1000;
        Claims { sub: user, org, sid: session, iat: now_ms / 1000, exp, iss: ISSUER.into(), aud: AUDIENCE.into() }
    }
}

struct Keys {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
}

pub struct Keyring {
    keys: RwLock<Keys>,
    last_reload: std::sync::Mutex<std::time::Instant>,
    /// Tokens whose signature, issuer and audience checked out, with their claims. A signature
    /// stays valid for as long as its key is loaded, so this is no staleness: it spares each
    /// request an Ed25519 verification (about 80 µs; BENCHMARKS.md, "Uncached list"). Expiry is
    /// still checked on every use, and a reload of the keys empties it.
    verified: moka::sync::Cache<String, Claims>,
}

/// How many verified tokens `Keyring` remembers, and for how long at most.
const VERIFIED_CAPACITY: u64 = 10_000;
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Tokens with an unknown `kid` trigger a reload at most this often, so forged kids cannot
/// turn into a stream of database reads.
const MIN_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("signing key {kid}: {reason}")]
    Key { kid: String, reason: String },
}

impl Keyring {
    /// Loads the keys, creating the first one on a fresh database.
    pub async fn load(db: &Db, sealer: &Sealer, now_ms: i64) -> Result<Keyring, KeyError> {
        let mut conn = db.pool.acquire().await?;
        if store::signing_keys::all(&mut conn).await?.is_empty() {
            insert_new_key(&mut conn, sealer, now_ms).await?;
        }
        let keys = read_keys(&mut conn, sealer).await?;
        let last_reload = std::sync::Mutex::new(std::time::Instant::now());
        let verified = moka::sync::Cache::builder().max_capacity(VERIFIED_CAPACITY).time_to_live(VERIFIED_TTL).build();
        Ok(Keyring { keys: RwLock::new(keys), last_reload, verified })
    }

    /// Adds a new signing key; tokens signed by the older keys stay valid until they expire.
    pub async fn rotate(&self, db: &Db, sealer: &Sealer, now_ms: i64) -> Result<String, KeyError> {
        let mut conn = db.pool.acquire().await?;
        let kid = insert_new_key(&mut conn, sealer, now_ms).await?;
        self.reload(db, sealer).await?;
        Ok(kid)
    }

    pub async fn reload(&self, db: &Db, sealer: &Sealer) -> Result<(), KeyError> {
        let mut conn = db.pool.acquire().await?;
        let keys = read_keys(&mut conn, sealer).await?;
        let mut current = self.keys.write().expect("keyring lock poisoned");
        *current = keys;
        // Under the write lock: `check_signature` remembers under the read lock, so nothing
        // verified with a key that is now gone can be remembered after this.
        self.verified.invalidate_all();
        Ok(())
    }

    /// Reloads unless a reload happened within `MIN_RELOAD_INTERVAL`; true when it reloaded.
    pub async fn reload_if_stale(&self, db: &Db, sealer: &Sealer) -> Result<bool, KeyError> {
        {
            let mut last = self.last_reload.lock().expect("keyring lock poisoned");
            if last.elapsed() < MIN_RELOAD_INTERVAL {
                return Ok(false);
            }
            *last = std::time::Instant::now();
        }
        self.reload(db, sealer).await?;
        Ok(true)
    }

    pub fn signing_kid(&self) -> String {
        self.keys.read().expect("keyring lock poisoned").signing_kid.clone()
    }

    pub fn knows(&self, kid: &str) -> bool {
        self.keys.read().expect("keyring lock poisoned").verifying.contains_key(kid)
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let keys = self.keys.read().expect("keyring lock poisoned");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &keys.signing).expect("Ed25519 signing of JSON claims cannot fail")
    }

    /// Verifies signature, algorithm, expiry, issuer and audience. Only EdDSA is accepted,
    /// so `alg: none` and HMAC-with-the-public-key confusions fail here.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, VerifyError> {
        let claims = match self.verified.get(token) {
            Some(claims) => claims,
            None => self.check_signature(token)?,
        };
        if claims.exp * 1000 <= now_ms {
            return Err(VerifyError::Invalid);
        }
        Ok(claims)
    }

    /// Verifies the signature and remembers the claims if it holds.
    fn check_signature(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(VerifyError::Malformed);
        }
        let kid = header.kid.ok_or(VerifyError::Malformed)?;
        let keys = self.keys.read().expect("keyring lock poisoned");
        let key = keys.verifying.get(&kid).ok_or(VerifyError::UnknownKey(kid))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        // Expiry is checked against the service's clock in `verify`, not the library's.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation).map(|d| d.claims).map_err(|_| VerifyError::Invalid)?;
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown signing key {0}")]
    UnknownKey(String),
    #[error("invalid or expired token")]
    Invalid,
}

async fn insert_new_key(conn: &mut store::Conn, sealer: &Sealer, now_ms: i64) -> Result<String, KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Key { kid: "new".into(), reason: "key generation failed".into() })?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Key { kid: "new".into(), reason: "generated key is unreadable".into() })?;
    let kid = uuid::Uuid::now_v7().simple().to_string();
    store::signing_keys::insert(
        conn,
        &store::signing_keys::SigningKey {
            kid: kid.clone(),
            private_key_sealed: sealer.seal(pkcs8.as_ref()),
            public_key: STANDARD.encode(pair.public_key().as_ref()),
            created_at: now_ms,
        },
    )
    .await?;
    Ok(kid)
}

async fn read_keys(conn: &mut store::Conn, sealer: &Sealer) -> Result<Keys, KeyError> {
    let rows = store::signing_keys::all(conn).await?;
    let newest = rows.first().ok_or_else(|| KeyError::Key { kid: "-".into(), reason: "no signing key".into() })?;
    let bad = |kid: &str, reason: &str| KeyError::Key { kid: kid.to_owned(), reason: reason.to_owned() };
    let pkcs8 = sealer.open(&newest.private_key_sealed).map_err(|_| bad(&newest.kid, "cannot unseal: was the sealing key changed?"))?;
    let mut verifying = HashMap::new();
    for row in &rows {
        let public = STANDARD.decode(&row.public_key).map_err(|_| bad(&row.kid, "public key is not base64"))?;
        verifying.insert(row.kid.clone(), DecodingKey::from_ed_der(&public));
    }
    Ok(Keys { signing_kid: newest.kid.clone(), signing: EncodingKey::from_ed_der(&pkcs8), verifying })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lives_at_least_its_ttl() {
        let ids = (UserId::new(), OrgId::new(), SessionId::new());
        for now_ms in [10_000, 10_001, 10_950, 10_999] {
            let claims = Claims::new(ids.0, ids.1, ids.2, now_ms, std::time::Duration::from_secs(1));
            assert!(claims.exp * 1000 >= now_ms + 1000 && claims.exp * 1000 < now_ms + 2000, "{now_ms}: exp {}", claims.exp);
            assert_eq!(claims.iat, 10);
        }
    }
}
