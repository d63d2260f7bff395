//! RFC 3339 timestamps written without `core::fmt`, for the responses that carry hundreds of
//! them (a page of clusters has three per item). chrono's own `Serialize` goes through `Debug`
//! formatting and was most of the cost of rendering a page (BENCHMARKS.md, "Uncached list").
//! The output is byte for byte chrono's: `2026-12-02T05:50:16Z`, `...16.120Z`, `...16.000123Z`.
//!
//! Use: `#[serde(serialize_with = "timestamp::serialize")]`, or `timestamp::option` for an
//! `Option`. The field stays a `chrono::DateTime<Utc>`, so its schema and `Deserialize` are chrono's.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match write(at, &mut buf) {
        Some(len) => s.serialize_str(std::str::from_utf8(&buf[..len]).expect("ASCII digits")),
        // Years outside 0..=9999 and leap seconds: chrono knows how to write those.
        None => s.collect_str(&format_args!("{at:?}")),
    }
}

pub fn option<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, s),
        None => s.serialize_none(),
    }
}

/// Writes `at` into `buf` and returns the length, or `None` when chrono must do it.
fn write(at: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    // Each of `at`'s own accessors converts it to a local (here UTC) time again.
    let (date, time) = (at.date_naive(), at.time());
    let (year, nanos) = (date.year(), time.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut len = 0;
    for (value, digits, then) in
        [(year as u32, 4, b'-'), (date.month(), 2, b'-'), (date.day(), 2, b'T'), (time.hour(), 2, b':'), (time.minute(), 2, b':'), (time.second(), 2, b'.')]
    {
        len = put(buf, len, value, digits);
        buf[len] = then;
        len += 1;
    }
    // chrono shows as many fraction digits as the value needs: none, 3, 6 or 9.
    len = match nanos {
        0 => len - 1, // no '.'
        n if n % 1_000_000 == 0 => put(buf, len, n / 1_000_000, 3),
        n if n % 1_000 == 0 => put(buf, len, n / 1_000, 6),
        n => put(buf, len, n, 9),
    };
    buf[len] = b'Z';
    Some(len + 1)
}

/// `value`'s last `digits` decimal digits at `buf[at..]`; returns the position after them.
fn put(buf: &mut [u8], at: usize, mut value: u32, digits: u32) -> usize {
    let end = at + digits as usize;
    for slot in buf[at..end].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Ours(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    #[test]
    fn writes_what_chrono_writes() {
        let mut cases: Vec<DateTime<Utc>> = vec![
            DateTime::UNIX_EPOCH,
            DateTime::from_timestamp_millis(1_764_650_000_000).unwrap(),
            DateTime::from_timestamp_millis(1_764_650_000_120).unwrap(),
            DateTime::from_timestamp(1_764_650_000, 123_000).unwrap(),
            DateTime::from_timestamp(1_764_650_000, 7).unwrap(),
            DateTime::from_timestamp(253_402_300_799, 999_999_999).unwrap(), // 9999-12-31T23:59:59.999999999
            DateTime::from_timestamp(253_402_300_800, 0).unwrap(),           // year 10000: chrono's path
            DateTime::from_timestamp(-62_167_219_200, 0).unwrap(),           // year 0
            DateTime::from_timestamp(-62_167_219_201, 0).unwrap(),           // year -1: chrono's path
        ];
        // A day every 37 hours and some milliseconds, over four centuries.
        let mut ms = -2_208_988_800_000i64; // 1900-01-01
        while ms < 4_102_444_800_000 {
            cases.push(DateTime::from_timestamp_millis(ms).unwrap());
            ms += 37 * 3_600_000 + 7_919;
        }
        for at in cases {
            assert_eq!(serde_json::to_string(&Ours(at)).unwrap(), serde_json::to_string(&at).unwrap());
        }
    }
}
