//! Byte sizes that people write ("256G", "1.5 GiB") and read back.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes. Parses decimal (`k`, `M`, `G`, `T`: powers of 1000, as stick
/// vendors count) and binary (`KiB`, `MiB`, `GiB`, `TiB`) suffixes.
///
/// Displays in decimal units, as sticks are sold and labelled (a "16 GB" stick
/// holds 16,008,609,792 bytes and shows as `16 GB`), with three significant
/// digits and no trailing zeros: `512 B`, `8.59 GB`, `41.9 MB`, `256 GB`. This is
/// the one notation of sizes for people: the command line, reports, the guard's
/// and the importer's messages use it, and the dashboard's `fmtBytes`
/// (`web/js/util.js`) follows the same rule (`tests/e2e` checks both against
/// `byte_size_cases.txt`). Where an exact comparison matters (the guard's size
/// limits), [`ByteSize::exact`] adds the byte count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// Why a string is not a byte size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a byte size: {input:?} ({why})")]
pub struct ByteSizeParseError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl ByteSize {
    /// One kibibyte.
    pub const KIB: u64 = 1024;
    /// One mebibyte.
    pub const MIB: u64 = 1024 * 1024;
    /// One gibibyte.
    pub const GIB: u64 = 1024 * 1024 * 1024;

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"4096"`, `"512M"`, `"1.5GiB"`, `"256 GB"`.
    pub fn parse(text: &str) -> Result<Self, ByteSizeParseError> {
        let err = |why| ByteSizeParseError {
            input: text.to_string(),
            why,
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        if number.is_empty() {
            return Err(err("no number"));
        }
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "m" | "mb" => 1000u64.pow(2),
            "g" | "gb" => 1000u64.pow(3),
            "t" | "tb" => 1000u64.pow(4),
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return Err(err("unknown unit")),
        };
        let bytes = if let Some((whole, frac)) = number.split_once('.') {
            let whole: u64 = whole.parse().map_err(|_| err("bad number"))?;
            if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("bad fraction"));
            }
            let frac_value: u64 = frac.parse().map_err(|_| err("bad fraction"))?;
            let scale = 10u64.pow(frac.len() as u32);
            let whole_bytes = whole
                .checked_mul(multiplier)
                .ok_or_else(|| err("too large"))?;
            let frac_bytes =
                (u128::from(frac_value) * u128::from(multiplier) / u128::from(scale)) as u64;
            whole_bytes
                .checked_add(frac_bytes)
                .ok_or_else(|| err("too large"))?
        } else {
            let whole: u64 = number.parse().map_err(|_| err("bad number"))?;
            whole
                .checked_mul(multiplier)
                .ok_or_else(|| err("too large"))?
        };
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole numbers throughout, rounding half up: 9,995,000 bytes are
        // 9.995 MB, shown as 10 MB (through a float, 9.995 is 9.99499… and
        // would show as 9.99 MB). The dashboard's `fmtBytes` (web/js/util.js)
        // takes the same steps; keep them in step.
        const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
        let n = u128::from(self.0);
        let mut unit = 0;
        while unit < UNITS.len() - 1 && n >= 1000u128.pow(unit as u32 + 1) {
            unit += 1;
        }
        if unit == 0 {
            return write!(f, "{n} B");
        }
        let base = 1000u128.pow(unit as u32);
        // Three significant digits: 1.23, 12.3, 123.
        let digits: u32 = if n < 10 * base {
            2
        } else if n < 100 * base {
            1
        } else {
            0
        };
        let step = base / 10u128.pow(digits);
        let scaled = n / step + u128::from(n % step * 2 >= step);
        if scaled >= 1000 && digits == 0 && unit < UNITS.len() - 1 {
            // 999.5 kB rounds to 1000 kB, which is written 1 MB.
            return write!(f, "1 {}", UNITS[unit + 1]);
        }
        // A carry (9.996 → 10.00, 99.95 → 100.0) only adds zeros after the
        // point, which are trimmed.
        let whole = scaled / 10u128.pow(digits);
        let fraction = format!(
            "{:0width$}",
            scaled % 10u128.pow(digits),
            width = digits as usize
        );
        match fraction.trim_end_matches('0') {
            "" => write!(f, "{whole} {}", UNITS[unit]),
            fraction => write!(f, "{whole}.{fraction} {}", UNITS[unit]),
        }
    }
}

impl ByteSize {
    /// The size as displayed, followed by the exact byte count where the
    /// display rounds: `256 GB (256000000001 bytes)`, `512 bytes`. For messages
    /// that compare sizes with a limit, where rounding could make two different
    /// sizes look equal.
    pub fn exact(self) -> impl fmt::Display {
        struct Exact(u64);
        impl fmt::Display for Exact {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.0 < 1000 {
                    write!(f, "{} bytes", self.0)
                } else {
                    write!(f, "{} ({} bytes)", ByteSize(self.0), self.0)
                }
            }
        }
        Exact(self.0)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ByteSize({})", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

/// A size is a number of bytes or text with a unit; anything else is
/// refused saying what a size looks like (an untagged enum said only "data
/// did not match any variant").
impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a size: a number of bytes, or text with a unit like \"256G\" or \"512MiB\"",
                )
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                ByteSize::parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_and_binary_units() {
        assert_eq!(ByteSize::parse("4096").unwrap().bytes(), 4096);
        assert_eq!(ByteSize::parse("256G").unwrap().bytes(), 256_000_000_000);
        assert_eq!(ByteSize::parse("1.5GiB").unwrap().bytes(), 3 << 29);
        assert_eq!(ByteSize::parse(" 512 MiB ").unwrap().bytes(), 512 << 20);
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        for bad in [
            "",
            "G",
            "12X",
            "1.G",
            "99999999999999999999",
            "20000000000T",
            "-1",
        ] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    /// The cases the dashboard's `fmtBytes` is checked against too (by the
    /// browser test): one rule for both.
    const CASES: &str = include_str!("byte_size_cases.txt");

    fn cases() -> Vec<(u64, &'static str)> {
        CASES
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (bytes, text) = line.split_once('\t').expect("bytes<TAB>text");
                (bytes.parse().expect("a byte count"), text)
            })
            .collect()
    }

    #[test]
    fn displays_decimal_units_with_three_significant_digits_as_sticks_are_sold() {
        let cases = cases();
        assert!(cases.len() > 20, "the cases file is read");
        for (bytes, text) in cases {
            assert_eq!(ByteSize(bytes).to_string(), text, "{bytes} bytes");
        }
        assert_eq!(ByteSize(u64::MAX).to_string(), "18.4 EB");
    }

    #[test]
    fn the_exact_form_adds_the_byte_count_where_the_display_rounds() {
        assert_eq!(ByteSize(512).exact().to_string(), "512 bytes");
        assert_eq!(
            ByteSize(256_000_000_001).exact().to_string(),
            "256 GB (256000000001 bytes)"
        );
    }
}
