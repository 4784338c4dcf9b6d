//! Windows and counter names.
//!
//! Per-minute limits use fixed windows aligned to the UTC minute; budgets use calendar
//! windows aligned in UTC (hour, day, calendar month) or none (lifetime). A counter's name
//! carries its window's start, so a new window is simply a new counter, and the store
//! needs to know nothing of windows: the counter expires after its window (plus a grace
//! period, so that a late true-up still lands in the window it belongs to).

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Timelike, Utc};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::Window;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// One window of one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    /// For the counter name: `29000000` (minute index), `2025010112` (hour), `20250101`
    /// (day), `202501` (month), `all` (lifetime).
    pub label: String,
    /// When the next window starts (Unix ms); `None` for lifetime.
    pub end_ms: Option<u64>,
}

/// The minute window around `now_ms`.
pub(crate) fn minute(now_ms: u64) -> Span {
    let index = now_ms / MINUTE_MS;
    Span {
        label: index.to_string(),
        end_ms: Some((index + 1) * MINUTE_MS),
    }
}

/// The calendar window of `window` around `now_ms`. (Labels are formatted from the date's
/// numbers: a `strftime` pattern is parsed anew on every call, on every request.)
pub(crate) fn calendar(window: Window, now_ms: u64) -> Span {
    let now = DateTime::<Utc>::from_timestamp_millis(i64::try_from(now_ms).unwrap_or(i64::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let (label, end) = match window {
        Window::Lifetime => {
            return Span {
                label: "all".to_owned(),
                end_ms: None,
            };
        }
        Window::Hour => {
            let start = now
                .with_minute(0)
                .and_then(|t| t.with_second(0))
                .and_then(|t| t.with_nanosecond(0));
            (
                date_label(&now, 4),
                start.map(|s| s + chrono::TimeDelta::hours(1)),
            )
        }
        Window::Day => {
            let next = now.date_naive().succ_opt();
            (date_label(&now, 3), next.and_then(midnight))
        }
        Window::Month => {
            let next = NaiveDate::from_ymd_opt(now.year(), now.month(), 1)
                .and_then(|first| first.checked_add_months(Months::new(1)));
            (date_label(&now, 2), next.and_then(midnight))
        }
    };
    Span {
        label,
        end_ms: Some(end.map_or(u64::MAX, |e| {
            u64::try_from(e.timestamp_millis()).unwrap_or(0)
        })),
    }
}

/// The first `fields` of year (4 digits), month, day and hour (2 digits each), run
/// together: `202501`, `20250101`, `2025010112`.
fn date_label(at: &DateTime<Utc>, fields: usize) -> String {
    let mut label = String::with_capacity(10);
    let year = u64::try_from(at.year()).unwrap_or(0);
    let rest = [at.month(), at.day(), at.hour()];
    push_decimal(&mut label, year, 4);
    for value in rest.into_iter().take(fields.saturating_sub(1)) {
        push_decimal(&mut label, value.into(), 2);
    }
    label
}

/// `value` in decimal, zero-padded to at least `width` digits. Counter names and rate
/// headers are made on every request: this costs a tenth of a formatter call.
pub(crate) fn push_decimal(out: &mut String, value: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

fn midnight(day: NaiveDate) -> Option<DateTime<Utc>> {
    day.and_hms_opt(0, 0, 0).map(|t| Utc.from_utc_datetime(&t))
}

/// How long a counter is kept after its window ends: as long as a request may still
/// settle (`lease_ttl`), but never longer than the window itself.
pub(crate) fn expiry(span: &Span, window_ms: u64, lease_ttl_ms: u64) -> Option<u64> {
    span.end_ms
        .map(|end| end.saturating_add(lease_ttl_ms.min(window_ms)))
}

/// The length of a window, for [`expiry`]'s grace (months counted as 28 days: only the
/// grace depends on it).
pub(crate) fn length_ms(window: Option<Window>) -> u64 {
    match window {
        None => MINUTE_MS,
        Some(Window::Hour) => HOUR_MS,
        Some(Window::Day) => 24 * HOUR_MS,
        Some(Window::Month) => 28 * 24 * HOUR_MS,
        Some(Window::Lifetime) => u64::MAX,
    }
}

/// The longest id written as is in a counter name; longer ones are hashed.
const MAX_PART: usize = 48;

/// Appends one id to a counter name: as is when it is short and plain, else as `#` and
/// a stable 64-bit hash, so that names stay bounded in length and unambiguous (`:` is
/// the separator) and are the same on every instance.
pub(crate) fn push_part(name: &mut String, id: &str) {
    let plain = id.len() <= MAX_PART
        && !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'#');
    name.push(':');
    if plain {
        name.push_str(id);
    } else {
        use std::fmt::Write;
        let _ = write!(name, "#{:016x}", xxh3_64(id.as_bytes()));
    }
}

/// A Go-style duration (`12ms`, `1.5s`, `6m0s`, `1h2m3s`), as OpenAI's `x-ratelimit-reset-*`
/// headers write them.
pub(crate) fn go_duration(ms: u64) -> String {
    let mut out = String::with_capacity(16);
    if ms < 1000 {
        push_decimal(&mut out, ms, 1);
        out.push_str(if ms == 0 { "s" } else { "ms" });
        return out;
    }
    let hours = ms / HOUR_MS;
    let minutes = (ms % HOUR_MS) / MINUTE_MS;
    let rest = ms % MINUTE_MS;
    if hours > 0 {
        push_decimal(&mut out, hours, 1);
        out.push('h');
    }
    if hours > 0 || minutes > 0 {
        push_decimal(&mut out, minutes, 1);
        out.push('m');
    }
    push_decimal(&mut out, rest / 1000, 1);
    let frac = rest % 1000;
    if frac > 0 {
        // At least one digit is not 0, so trimming stops before the point.
        out.push('.');
        push_decimal(&mut out, frac, 3);
        while out.ends_with('0') {
            out.pop();
        }
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        let t = DateTime::parse_from_rfc3339(rfc3339).unwrap();
        u64::try_from(t.timestamp_millis()).unwrap()
    }

    #[test]
    fn decimals_match_the_formatter() {
        for (value, width) in [
            (0, 1),
            (0, 4),
            (7, 2),
            (42, 2),
            (2025, 4),
            (5, 3),
            (u64::MAX, 1),
        ] {
            let mut s = String::new();
            push_decimal(&mut s, value, width);
            assert_eq!(s, format!("{value:0width$}"));
        }
    }

    #[test]
    fn go_durations_read_like_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(12), "12ms");
        assert_eq!(go_duration(1000), "1s");
        assert_eq!(go_duration(1500), "1.5s");
        assert_eq!(go_duration(1234), "1.234s");
        assert_eq!(go_duration(59_990), "59.99s");
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(3_723_500), "1h2m3.5s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(3_600_010), "1h0m0.01s");
    }

    #[test]
    fn minute_windows_align_to_the_minute() {
        let span = minute(ms("2025-03-04T05:06:59.999Z"));
        assert_eq!(span.end_ms, Some(ms("2025-03-04T05:07:00Z")));
        assert_ne!(span, minute(ms("2025-03-04T05:07:00Z")));
        assert_eq!(span, minute(ms("2025-03-04T05:06:00Z")));
    }

    #[test]
    fn calendar_windows_align_in_utc() {
        let at = ms("2025-03-04T05:06:07.890Z");
        let hour = calendar(Window::Hour, at);
        assert_eq!(hour.label, "2025030405");
        assert_eq!(hour.end_ms, Some(ms("2025-03-04T06:00:00Z")));
        let day = calendar(Window::Day, at);
        assert_eq!(day.label, "20250304");
        assert_eq!(day.end_ms, Some(ms("2025-03-05T00:00:00Z")));
        let month = calendar(Window::Month, at);
        assert_eq!(month.label, "202503");
        assert_eq!(month.end_ms, Some(ms("2025-04-01T00:00:00Z")));
        let life = calendar(Window::Lifetime, at);
        assert_eq!((life.label.as_str(), life.end_ms), ("all", None));
    }

    #[test]
    fn months_end_on_their_last_day() {
        let dec = calendar(Window::Month, ms("2024-12-31T23:59:59.999Z"));
        assert_eq!(
            (dec.label.as_str(), dec.end_ms),
            ("202412", Some(ms("2025-01-01T00:00:00Z")))
        );
        let feb_leap = calendar(Window::Month, ms("2024-02-29T12:00:00Z"));
        assert_eq!(feb_leap.end_ms, Some(ms("2024-03-01T00:00:00Z")));
        let feb = calendar(Window::Month, ms("2025-02-28T23:59:59Z"));
        assert_eq!(feb.end_ms, Some(ms("2025-03-01T00:00:00Z")));
        assert_eq!(
            calendar(Window::Day, ms("2024-02-28T10:00:00Z")).end_ms,
            Some(ms("2024-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn long_or_odd_ids_are_hashed_in_names() {
        let mut a = String::from("tg");
        push_part(&mut a, "team-a");
        assert_eq!(a, "tg:team-a");
        let long = "x".repeat(300);
        for odd in [long.as_str(), "a:b", "", "with space", "é"] {
            let mut n = String::from("tg");
            push_part(&mut n, odd);
            assert_eq!(n.len(), 3 + 17, "{odd}");
            assert!(n.starts_with("tg:#"));
        }
    }
}
