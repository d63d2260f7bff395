//! Certificates and sealed keys of the gateway's PKI, shared by every replica.

use sqlx::Row;

use super::Conn;

pub struct PkiEntry {
    pub cert_pem: String,
    pub key_sealed: String,
    pub created_at: i64,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.pki.get", skip_all)]
pub async fn get(conn: &mut Conn, name: &str) -> Result<Option<PkiEntry>, sqlx::Error> {
    let row = sqlx::query("SELECT cert_pem, key_sealed, created_at FROM pki WHERE name = $1").bind(name).fetch_optional(conn).await?;
    row.map(|r| Ok(PkiEntry { cert_pem: r.try_get("cert_pem")?, key_sealed: r.try_get("key_sealed")?, created_at: r.try_get("created_at")? })).transpose()
}

/// Inserts the entry unless another replica got there first; returns what is stored.
#[tracing::instrument(target = "meshfleet_traces", name = "store.pki.insert_or_get", skip_all)]
pub async fn insert_or_get(conn: &mut Conn, name: &str, entry: &PkiEntry) -> Result<PkiEntry, sqlx::Error> {
    sqlx::query("INSERT INTO pki (name, cert_pem, key_sealed, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(&entry.cert_pem)
        .bind(&entry.key_sealed)
        .bind(entry.created_at)
        .execute(&mut *conn)
        .await?;
    get(conn, name).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Replaces an entry (a server certificate re-issued before expiry or for new host names).
#[tracing::instrument(target = "meshfleet_traces", name = "store.pki.replace", skip_all)]
pub async fn replace(conn: &mut Conn, name: &str, entry: &PkiEntry) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE pki SET cert_pem = $2, key_sealed = $3, created_at = $4 WHERE name = $1")
        .bind(name)
        .bind(&entry.cert_pem)
        .bind(&entry.key_sealed)
        .bind(entry.created_at)
        .execute(conn)
        .await?;
    Ok(())
}
