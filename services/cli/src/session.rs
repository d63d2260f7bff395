//! The saved session: the API's URL and the tokens to act with, in the user's config
//! directory. The file is created readable by the user alone (0600, never wider, not even
//! while it is written) and its tokens are never printed.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::error::Error;

const FILE: &str = "session.json";

/// Where the session is kept: `MESHFLEET_CONFIG_DIR`, else `$XDG_CONFIG_HOME/meshfleet`, else
/// `$HOME/.config/meshfleet` (relative XDG values are ignored, as the XDG spec asks).
pub fn config_dir(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("MESHFLEET_CONFIG_DIR") {
        return Some(dir);
    }
    let base = set("XDG_CONFIG_HOME").filter(|p| p.is_absolute()).or_else(|| Some(set("HOME")?.join(".config")))?;
    Some(base.join("meshfleet"))
}

#[derive(Deserialize)]
pub struct Session {
    pub url: String,
    pub access_token: SecretString,
    /// For a log-in with a password: rotated when the access token is about to expire.
    pub refresh_token: Option<SecretString>,
    /// When the access token expires (Unix seconds); none for an API token.
    pub access_expires_at: Option<i64>,
}

/// The session as written: the same fields, the secrets exposed only to the file.
#[derive(Serialize)]
struct Stored<'a> {
    url: &'a str,
    access_token: &'a str,
    refresh_token: Option<&'a str>,
    access_expires_at: Option<i64>,
}

impl Session {
    pub fn load(dir: &Path) -> Result<Option<Session>, Error> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Writes the session: to a new file created with mode 0600, then renamed over the old.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        let stored = Stored {
            url: &self.url,
            access_token: self.access_token.expose_secret(),
            refresh_token: self.refresh_token.as_ref().map(|t| t.expose_secret()),
            access_expires_at: self.access_expires_at,
        };
        let body = serde_json::to_vec_pretty(&stored).expect("a session always serializes");
        let (path, temp) = (dir.join(FILE), dir.join(format!(".{FILE}.{}", std::process::id())));
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(io(&temp))?;
        file.write_all(&body).and_then(|()| file.sync_all()).map_err(io(&temp))?;
        std::fs::rename(&temp, &path).map_err(io(&path))
    }

    /// Whether the access token should be renewed first: it is a log-in's, and expires within
    /// a margin (so it does not expire between this check and the request).
    pub fn expiring(&self, now: i64) -> bool {
        self.refresh_token.is_some() && self.access_expires_at.is_some_and(|at| at <= now + 30)
    }

    /// Forgets the session; false when there was none.
    pub fn remove(dir: &Path) -> Result<bool, Error> {
        let path = dir.join(FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Io { path, source }),
        }
    }
}

/// Held while a session is renewed: refresh tokens are single use, and a second `meshfleet`
/// running at once must not present the one the first just used (the server would take it for
/// a replay and end the session). The lock file is removed on drop; one left by a killed
/// process is taken over after `STALE`.
pub struct RefreshLock(PathBuf);

impl RefreshLock {
    const STALE: Duration = Duration::from_secs(30);

    pub async fn acquire(dir: &Path) -> Result<RefreshLock, Error> {
        let path = dir.join(format!(".{FILE}.lock"));
        let deadline = Instant::now() + Self::STALE;
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(_) => return Ok(RefreshLock(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                    if age.is_some_and(|a| a > Self::STALE) || Instant::now() > deadline {
                        let _ = std::fs::remove_file(&path);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(source) => return Err(Error::Io { path, source }),
            }
        }
    }
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir(vars: &[(&str, &str)]) -> Option<PathBuf> {
        config_dir(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into()))
    }

    #[test]
    fn the_session_lives_in_the_users_config_directory() {
        assert_eq!(dir(&[("HOME", "/home/ada")]), Some(PathBuf::from("/home/ada/.config/meshfleet")));
        assert_eq!(dir(&[("HOME", "/home/ada"), ("XDG_CONFIG_HOME", "/cfg")]), Some(PathBuf::from("/cfg/meshfleet")));
        assert_eq!(dir(&[("HOME", "/home/ada"), ("XDG_CONFIG_HOME", "cfg")]), Some(PathBuf::from("/home/ada/.config/meshfleet")));
        assert_eq!(dir(&[("HOME", "/home/ada"), ("MESHFLEET_CONFIG_DIR", "/tmp/mf")]), Some(PathBuf::from("/tmp/mf")));
        assert_eq!(dir(&[]), None);
    }

    #[test]
    fn a_saved_session_is_the_users_alone_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("meshfleet");
        let session = Session {
            url: "http://127.0.0.1:1".into(),
            access_token: "mfa_secret".to_owned().into(),
            refresh_token: Some("mfr_secret".to_owned().into()),
            access_expires_at: Some(42),
        };
        session.save(&dir).unwrap();
        session.save(&dir).unwrap(); // over an existing one
        let mode = std::fs::metadata(dir.join(FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let back = Session::load(&dir).unwrap().unwrap();
        assert_eq!((back.url.as_str(), back.access_token.expose_secret(), back.access_expires_at), ("http://127.0.0.1:1", "mfa_secret", Some(42)));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left behind");
        assert!(Session::remove(&dir).unwrap() && !Session::remove(&dir).unwrap());
        assert!(Session::load(&dir).unwrap().is_none());
    }
}
