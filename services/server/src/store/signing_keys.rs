//! Access-token signing keys. The private key is stored sealed; every replica reads the same set.

use sqlx::Row;

use super::Conn;

pub struct SigningKey {
    pub kid: String,
    pub private_key_sealed: String,
    pub public_key: String,
    pub created_at: i64,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.signing_keys.insert", skip_all)]
pub async fn insert(conn: &mut Conn, key: &SigningKey) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO signing_keys (kid, private_key_sealed, public_key, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&key.kid)
        .bind(&key.private_key_sealed)
        .bind(&key.public_key)
        .bind(key.created_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// All keys, newest first: the newest signs, every one still verifies.
#[tracing::instrument(target = "meshfleet_traces", name = "store.signing_keys.all", skip_all)]
pub async fn all(conn: &mut Conn) -> Result<Vec<SigningKey>, sqlx::Error> {
    let rows = sqlx::query("SELECT kid, private_key_sealed, public_key, created_at FROM signing_keys ORDER BY created_at DESC, kid").fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            Ok(SigningKey {
                kid: r.try_get("kid")?,
                private_key_sealed: r.try_get("private_key_sealed")?,
                public_key: r.try_get("public_key")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}
