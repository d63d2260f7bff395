//! Announces a process's bound addresses once it is listening, so callers (tests, scripts) never
//! race for ports: a JSON file written atomically, and the same JSON on one stdout line.

use std::io::Write;
use std::path::Path;

pub fn announce(path: Option<&Path>, value: &serde_json::Value) -> std::io::Result<()> {
    let text = value.to_string();
    if let Some(path) = path {
        // Write then rename, so a reader polling for the file never sees half of it.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, path)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {text}")?;
    out.flush()
}
