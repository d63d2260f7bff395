//! The release catalog as the service runs it: at start the repository's own mesh version is
//! seeded and the operators' catalog file (`release_catalog`) is written; every replica reads
//! the catalog through a short-lived cache, since it changes rarely and health assessment
//! looks at it for every cluster.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::db::Db;
use crate::domain::releases::{Catalog, Channel, Release, ReleaseSpec};
use crate::store;

/// How long a replica reuses the catalog it read: a write on another replica shows within it.
const FRESH_MS: i64 = 5_000;

/// The mesh this repository builds: the workspace versions the service and the mesh together.
pub fn own_release(today: chrono::NaiveDate) -> Release {
    let spec = ReleaseSpec {
        version: env!("CARGO_PKG_VERSION").into(),
        channel: Channel::Stable,
        released_on: today,
        controller_image: None,
        proxy_image: None,
        min_agent_version: Some(env!("CARGO_PKG_VERSION").into()),
        notes: "The mesh built from this repository.".into(),
        cautions: Vec::new(),
        yanked: false,
    };
    spec.parse().expect("the workspace version is a semantic version")
}

/// The catalog file: `releases:`, a list of releases as the operator API takes them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    releases: Vec<ReleaseSpec>,
}

/// Reads and checks a catalog file; every problem is reported, each with where it is.
pub fn read_catalog_file(path: &Path) -> anyhow::Result<Vec<Release>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the release catalog {}", path.display()))?;
    let file: CatalogFile = serde_yaml_ng::from_str(&text).with_context(|| format!("release catalog {}", path.display()))?;
    let mut releases = Vec::new();
    let mut problems = Vec::new();
    for (i, spec) in file.releases.iter().enumerate() {
        match spec.parse() {
            Ok(r) => releases.push(r),
            Err(errors) => problems.extend(errors.into_iter().map(|(field, message)| format!("releases[{i}].{field}: {message}"))),
        }
    }
    let mut versions: Vec<_> = releases.iter().map(|r| &r.version).collect();
    versions.sort();
    if let Some(w) = versions.windows(2).find(|w| w[0] == w[1]) {
        problems.push(format!("version {} is listed twice", w[0]));
    }
    anyhow::ensure!(problems.is_empty(), "release catalog {}:\n  {}", path.display(), problems.join("\n  "));
    Ok(releases)
}

/// Seeds the repository's own release (when absent) and writes the catalog file's releases
/// (the file wins over what an earlier file or the API wrote for the same version).
pub async fn prepare(db: &Db, file: Option<&Path>, now: i64) -> anyhow::Result<()> {
    let from_file = file.map(read_catalog_file).transpose()?.unwrap_or_default();
    let today = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default().date_naive();
    let mut tx = db.begin().await?;
    store::releases::save(&mut tx, &own_release(today), "seed", now, false).await?;
    for r in &from_file {
        store::releases::save(&mut tx, r, "file", now, true).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The catalog as this replica last read it.
#[derive(Default)]
pub struct ReleaseCache {
    read: Mutex<Option<(i64, Arc<Catalog>)>>,
}

impl ReleaseCache {
    /// The catalog, read again when older than `FRESH_MS`.
    pub async fn get(&self, db: &Db, now: i64) -> Result<Arc<Catalog>, sqlx::Error> {
        if let Some((at, catalog)) = self.read.lock().expect("release cache lock poisoned").as_ref() {
            if now - at < FRESH_MS {
                return Ok(catalog.clone());
            }
        }
        let mut conn = db.pool.acquire().await?;
        let catalog = Arc::new(Catalog::new(store::releases::all(&mut conn).await?));
        *self.read.lock().expect("release cache lock poisoned") = Some((now, catalog.clone()));
        Ok(catalog)
    }

    /// After a write on this replica: the next read goes to the database.
    pub fn invalidate(&self) {
        *self.read.lock().expect("release cache lock poisoned") = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_file_reports_every_problem_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.yaml");
        std::fs::write(
            &path,
            "releases:\n- {version: 1.0.0, released_on: 2026-01-01}\n- {version: one, released_on: 2026-01-01, cautions: ['']}\n- {version: 1.0.0, released_on: 2026-02-01}\n",
        )
        .unwrap();
        let err = read_catalog_file(&path).unwrap_err().to_string();
        assert!(err.contains("releases[1].version: \"one\" is not a semantic version"), "{err}");
        assert!(err.contains("releases[1].cautions[0]: must be 1 to 1,000 characters"), "{err}");
        assert!(err.contains("version 1.0.0 is listed twice"), "{err}");
        std::fs::write(&path, "releases:\n- {version: 2.0.0, released_on: 2026-01-01, colour: red}\n").unwrap();
        assert!(format!("{:#}", read_catalog_file(&path).unwrap_err()).contains("unknown field `colour`"));
        std::fs::write(&path, "releases:\n- {version: 2.0.0, released_on: 2026-01-01, channel: edge}\n").unwrap();
        let r = read_catalog_file(&path).unwrap();
        assert_eq!((r[0].channel, r[0].proxy_image.as_str()), (Channel::Edge, "meshfleet/proxy:2.0.0"));
    }

    #[test]
    fn the_own_release_is_the_workspace_version() {
        let r = own_release(chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
        assert_eq!(r.version.to_string(), env!("CARGO_PKG_VERSION"));
        assert_eq!(r.controller_image, format!("meshfleet/controller:{}", env!("CARGO_PKG_VERSION")));
    }
}
