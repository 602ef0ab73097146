//! Times and durations as people read them, for the page and the
//! `status` command.

use std::time::{Duration, UNIX_EPOCH};

/// `2026-03-01 12:00 UTC`.
pub fn time(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    match (s.get(..10), s.get(11..16)) {
        (Some(day), Some(hm)) => format!("{day} {hm} UTC"),
        _ => s,
    }
}

/// `3 min ago`.
pub fn ago(now: i64, then: i64) -> String {
    format!("{} ago", duration((now - then).max(0) as u64))
}

/// `2 d 3 h`, `4 h 12 min`, `12 min`, `40 s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_for_people() {
        assert_eq!(time(0), "1970-01-01 00:00 UTC");
        assert_eq!(time(1_866_703_684), "2029-02-25 08:48 UTC");
        assert_eq!(duration(40), "40 s");
        assert_eq!(duration(125), "2 min");
        assert_eq!(duration(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(duration(2 * 86_400 + 3 * 3600 + 5), "2 d 3 h");
        assert_eq!(ago(100, 40), "1 min ago");
        assert_eq!(ago(100, 200), "0 s ago");
    }
}
