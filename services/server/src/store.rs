//! Persistence: every SQL statement of the service, one module per table family. Each
//! function takes a connection (pool connection or transaction), so callers compose them
//! into one transaction with the audit record. Every tenant-owned query filters on org_id.

pub mod accounts;
pub mod agents;
pub mod alert_channels;
pub mod alerts;
pub mod api_tokens;
pub mod audit;
pub mod clusters;
pub mod commands;
pub mod fleet;
pub mod inventory;
pub mod leases;
pub mod login_throttle;
pub mod metric_reports;
pub mod metric_rules;
pub mod metric_series;
pub mod notifications;
pub mod pki;
pub mod policies;
pub mod releases;
pub mod rollouts;
pub mod rollups;
pub mod sessions;
pub mod signing_keys;
pub mod silences;
pub mod throttles;
pub mod trust;
pub mod ui_sessions;
pub mod upgrade_declines;
pub mod upgrade_policies;

pub type Conn = sqlx::AnyConnection;

/// Parses a stored id or enum; a failure means the row was written by something else.
pub(crate) fn parse_col<T: std::str::FromStr>(value: &str, column: &str) -> Result<T, sqlx::Error> {
    value.parse().map_err(|_| sqlx::Error::Decode(format!("bad value in column {column}: {value:?}").into()))
}

/// A stored enum written as its serde word (`"critical"`).
pub(crate) fn word<T: serde::de::DeserializeOwned>(value: String, column: &str) -> Result<T, sqlx::Error> {
    serde_json::from_value(serde_json::Value::String(value)).map_err(|e| sqlx::Error::Decode(format!("bad value in column {column}: {e}").into()))
}

/// A column holding JSON.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(r: &sqlx::any::AnyRow, column: &str) -> Result<T, sqlx::Error> {
    use sqlx::Row;
    serde_json::from_str(&r.try_get::<String, _>(column)?).map_err(|e| sqlx::Error::Decode(format!("bad value in column {column}: {e}").into()))
}

/// The row of `table` (its `columns`) with this `id` in the organization, read by `from_row`.
pub(crate) async fn one_of_org<T>(
    conn: &mut Conn,
    table: &str,
    columns: &str,
    org: crate::domain::OrgId,
    id: impl ToString,
    from_row: fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Option<T>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {columns} FROM {table} WHERE org_id = $1 AND id = $2"))
        .bind(org.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// `($1, $2), ($3, $4)` for a multi-row INSERT of `rows` rows of `cols` columns.
pub(crate) fn values_clause(rows: usize, cols: usize) -> String {
    (0..rows).map(|r| format!("({})", (1..=cols).map(|c| format!("${}", r * cols + c)).collect::<Vec<_>>().join(", "))).collect::<Vec<_>>().join(", ")
}

/// Rows per multi-row statement. SQLite looks up each `$n` parameter by name with a linear
/// scan, so a statement's cost grows with the square of its parameters: keep them near 100
/// there. PostgreSQL takes large statements in its stride.
pub(crate) fn rows_per_statement(conn: &Conn, cols: usize) -> usize {
    if conn.backend_name() == "SQLite" {
        (100 / cols).max(1)
    } else {
        200
    }
}
