//! The release catalog (`mesh_releases`), shared by every organization: service operators
//! write it (a catalog file at start, or the operator API); everyone reads it.

use sqlx::Row;

use super::{json_col, parse_col, Conn};
use crate::domain::releases::{parse_version, Release};

const COLUMNS: &str = "version, channel, released_on, controller_image, proxy_image, min_agent_version, notes, cautions, yanked";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Release, sqlx::Error> {
    let version = |column: &str| -> Result<semver::Version, sqlx::Error> {
        let raw: String = r.try_get(column)?;
        parse_version(&raw).map_err(|e| sqlx::Error::Decode(format!("bad value in column mesh_releases.{column}: {e}").into()))
    };
    Ok(Release {
        version: version("version")?,
        channel: parse_col(&r.try_get::<String, _>("channel")?, "mesh_releases.channel")?,
        released_on: parse_col(&r.try_get::<String, _>("released_on")?, "mesh_releases.released_on")?,
        controller_image: r.try_get("controller_image")?,
        proxy_image: r.try_get("proxy_image")?,
        min_agent_version: version("min_agent_version")?,
        notes: r.try_get("notes")?,
        cautions: json_col(r, "cautions")?,
        yanked: r.try_get::<i64, _>("yanked")? != 0,
    })
}

/// Every release; `Catalog::new` orders them by version.
#[tracing::instrument(target = "meshfleet_traces", name = "store.releases.all", skip_all)]
pub async fn all(conn: &mut Conn) -> Result<Vec<Release>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM mesh_releases")).fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

/// Adds the release; one with its version already there is replaced when `replace`, else
/// left as it is. `source` says who wrote it (`seed`, `file` or `api`). Returns whether the
/// version was new.
#[tracing::instrument(target = "meshfleet_traces", name = "store.releases.save", skip_all)]
pub async fn save(conn: &mut Conn, r: &Release, source: &str, now: i64, replace: bool) -> Result<bool, sqlx::Error> {
    let existed = sqlx::query("SELECT 1 FROM mesh_releases WHERE version = $1").bind(r.version.to_string()).fetch_optional(&mut *conn).await?.is_some();
    let on_conflict = if replace {
        "DO UPDATE SET channel = $2, released_on = $3, controller_image = $4, proxy_image = $5, min_agent_version = $6, notes = $7,
           cautions = $8, yanked = $9, source = $10, updated_at = $11"
    } else {
        "DO NOTHING"
    };
    sqlx::query(&format!(
        "INSERT INTO mesh_releases ({COLUMNS}, source, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
         ON CONFLICT (version) {on_conflict}"
    ))
    .bind(r.version.to_string())
    .bind(r.channel.as_str())
    .bind(r.released_on.to_string())
    .bind(&r.controller_image)
    .bind(&r.proxy_image)
    .bind(r.min_agent_version.to_string())
    .bind(&r.notes)
    .bind(serde_json::to_string(&r.cautions).expect("strings always serialize"))
    .bind(i64::from(r.yanked))
    .bind(source)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(!existed)
}
