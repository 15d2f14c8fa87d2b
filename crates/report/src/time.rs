//! Timestamps as reports write them, through the `time` crate's formatters.

use std::num::NonZeroU8;

use time::format_description::well_known::iso8601::{self, Iso8601, TimePrecision};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// RFC 3339 in UTC with exactly three fraction digits
/// (`2025-03-01T09:30:00.000Z`): `time`'s ISO 8601 formatter set to seconds with
/// three decimals, which is RFC 3339's profile of ISO 8601. (`time`'s `Rfc3339`
/// formatter trims trailing zeros, `…:00Z` for `…:00.000Z`, and the format
/// documents milliseconds in every timestamp.)
const RFC3339_MILLIS: iso8601::EncodedConfig = iso8601::Config::DEFAULT
    .set_time_precision(TimePrecision::Second {
        decimal_digits: NonZeroU8::new(3),
    })
    .encode();

/// For a person: `2025-03-01 09:30:00 UTC`.
const SHORT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");

/// Unix milliseconds as RFC 3339 in UTC with milliseconds:
/// `2025-03-01T09:30:00.000Z`. Times outside the years 0–9999 are shown as the
/// plain number.
pub fn format_time(ms: i64) -> String {
    utc(ms)
        .and_then(|at| at.format(&Iso8601::<RFC3339_MILLIS>).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Unix milliseconds for a person: `2025-03-01 09:30:00 UTC` (the printable
/// report's dates). Times outside the years 0–9999 are shown as the plain number.
pub fn format_time_short(ms: i64) -> String {
    utc(ms)
        .and_then(|at| at.format(SHORT).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The moment, if it falls in the years 0–9999 (four-digit years).
fn utc(ms: i64) -> Option<OffsetDateTime> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    (0..=9999).contains(&at.year()).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_740_821_400_123), "2025-03-01T09:30:00.123Z");
        assert_eq!(format_time(1_740_821_400_000), "2025-03-01T09:30:00.000Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_time_short(1_740_821_400_123),
            "2025-03-01 09:30:00 UTC"
        );
        assert_eq!(format_time(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn times_beyond_four_digit_years_are_the_plain_number() {
        // One millisecond before the year 0, and the first of the year 10000.
        for ms in [-62_167_219_200_001, 253_402_300_800_000] {
            assert_eq!(format_time(ms), ms.to_string());
            assert_eq!(format_time_short(ms), ms.to_string());
        }
        assert_eq!(format_time(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }
}
