//! How results are printed: aligned columns for people, or the API's JSON as it was sent.

use std::io::Write;

use meshfleet_client::Reply;

pub use super::args::Output;

impl Output {
    /// The API's JSON, or `table` of the typed answer.
    pub fn show<T>(self, reply: &Reply<T>, table: impl FnOnce(&T) -> String) {
        match self {
            Output::Json => json(&reply.json),
            Output::Table => out(&table(&reply.value)),
        }
    }
}

pub fn json(value: &serde_json::Value) {
    out(&format!("{}\n", serde_json::to_string_pretty(value).expect("JSON always serializes")));
}

/// Writes to standard output; a reader that went away (`| head`) is not an error.
pub fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Columns aligned under their headers, two spaces apart; the last is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, &w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut s = line(&mut headers.iter().copied());
    for row in rows {
        s.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    s
}

/// `-` for a value that is not there.
pub fn or_dash(v: Option<&str>) -> String {
    v.filter(|v| !v.is_empty()).unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_under_their_headers() {
        let t = super::table(&["NAME", "STATUS"], &[vec!["prod-eu-1".into(), "pending".into()], vec!["dev".into(), "connected".into()]]);
        assert_eq!(t, "NAME       STATUS\nprod-eu-1  pending\ndev        connected\n");
    }
}
