//! The share of a stick a sampled verify reads back.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The share of each stick's chunks a sampled verify reads back, in percent:
/// above 0 and below 100, with at most two decimals (`5`, `0.5`, `12.25`).
/// Kept in hundredths of a percent so that it compares exactly; written as a
/// number of percent in JSON (`5.0`) and as `5 %` for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SamplePercent(u32);

/// A share that is not a sampled verify's: not a number, not above 0 and
/// below 100, or with more than two decimals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sample share: give a percentage above 0 and below 100, with at most two decimals (5, 0.5)")]
pub struct SamplePercentError(pub String);

impl SamplePercent {
    /// The share from a number of percent.
    pub fn from_percent(percent: f64) -> Result<Self, SamplePercentError> {
        let hundredths = (percent * 100.0).round();
        let exact = ((hundredths / 100.0) - percent).abs() < 1e-9;
        if percent.is_finite() && exact && (1.0..10_000.0).contains(&hundredths) {
            Ok(Self(hundredths as u32))
        } else {
            Err(SamplePercentError(percent.to_string()))
        }
    }

    /// The share in percent.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl FromStr for SamplePercent {
    type Err = SamplePercentError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = text.trim().trim_end_matches('%').trim_end();
        number
            .parse::<f64>()
            .map_err(|_| SamplePercentError(text.to_string()))
            .and_then(|p| Self::from_percent(p).map_err(|_| SamplePercentError(text.to_string())))
    }
}

impl fmt::Display for SamplePercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, part) = (self.0 / 100, self.0 % 100);
        match part {
            0 => write!(f, "{whole} %"),
            p if p % 10 == 0 => write!(f, "{whole}.{} %", p / 10),
            p => write!(f, "{whole}.{p:02} %"),
        }
    }
}

impl Serialize for SamplePercent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.percent())
    }
}

impl<'de> Deserialize<'de> for SamplePercent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let percent = f64::deserialize(deserializer)?;
        Self::from_percent(percent).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_above_0_and_below_100_with_two_decimals_parse() {
        for (text, shown) in [
            ("5", "5 %"),
            ("0.5", "0.5 %"),
            ("12.25%", "12.25 %"),
            ("99.99", "99.99 %"),
        ] {
            let share: SamplePercent = text.parse().unwrap();
            assert_eq!(share.to_string(), shown, "{text}");
        }
        assert_eq!("5".parse::<SamplePercent>().unwrap().percent(), 5.0);
    }

    #[test]
    fn a_share_of_nothing_everything_or_nonsense_is_refused() {
        for bad in ["0", "100", "150", "-5", "0.001", "five", "", "NaN", "inf"] {
            let error = bad.parse::<SamplePercent>().unwrap_err();
            assert!(
                error.to_string().contains("not a sample share"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn json_holds_the_number_of_percent_and_refuses_a_bad_one() {
        let share: SamplePercent = "2.5".parse().unwrap();
        assert_eq!(serde_json::to_string(&share).unwrap(), "2.5");
        assert_eq!(serde_json::from_str::<SamplePercent>("2.5").unwrap(), share);
        assert!(serde_json::from_str::<SamplePercent>("100").is_err());
        assert!(serde_json::from_str::<SamplePercent>("0").is_err());
    }
}
