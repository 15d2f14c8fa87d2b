//! Conversions between domain values and what the database columns hold (the
//! same for every database: integers, and text for stages, methods and codes).

use flashrack_core::{Bound, RefusalCode, Stage, VerifyMethod};

use crate::StoreError;

/// SQLite integers are signed 64-bit; byte counts beyond that cannot be recorded.
pub(crate) fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// Reads back a count or offset, which is never negative when this crate wrote it.
pub(crate) fn to_u64(column: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::BadValue {
        column,
        value: value.to_string(),
    })
}

const STAGES: [Stage; 5] = [
    Stage::Preparing,
    Stage::Writing,
    Stage::Flushing,
    Stage::Resetting,
    Stage::Verifying,
];

pub(crate) fn parse_stage(text: &str) -> Result<Stage, StoreError> {
    STAGES
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| StoreError::BadValue {
            column: "attempts.stage",
            value: text.to_string(),
        })
}

pub(crate) fn parse_verify_method(text: &str) -> Result<VerifyMethod, StoreError> {
    [
        VerifyMethod::None,
        VerifyMethod::Compare,
        VerifyMethod::Hash,
        VerifyMethod::Fingerprint,
        VerifyMethod::Sampled,
        VerifyMethod::Audit,
    ]
    .into_iter()
    .find(|m| m.as_str() == text)
    .ok_or_else(|| StoreError::BadValue {
        column: "attempts.verify_method",
        value: text.to_string(),
    })
}

pub(crate) fn parse_bound(text: &str) -> Result<Bound, StoreError> {
    [Bound::Exact, Bound::LowerBound, Bound::Unknown]
        .into_iter()
        .find(|b| b.as_str() == text)
        .ok_or_else(|| StoreError::BadValue {
            column: "attempts.bytes_written_bound",
            value: text.to_string(),
        })
}

pub(crate) fn parse_refusal_code(text: &str) -> Result<RefusalCode, StoreError> {
    text.parse().map_err(|_| StoreError::BadValue {
        column: "refusals.code",
        value: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_and_method_texts_match_the_serde_names() {
        for stage in STAGES {
            assert_eq!(serde_json::json!(stage), stage.as_str());
            assert_eq!(parse_stage(stage.as_str()).unwrap(), stage);
        }
        for method in [
            VerifyMethod::None,
            VerifyMethod::Compare,
            VerifyMethod::Hash,
            VerifyMethod::Fingerprint,
            VerifyMethod::Sampled,
            VerifyMethod::Audit,
        ] {
            assert_eq!(serde_json::json!(method), method.as_str());
            assert_eq!(parse_verify_method(method.as_str()).unwrap(), method);
        }
        assert!(parse_stage("sleeping").is_err());
        for bound in [Bound::Exact, Bound::LowerBound, Bound::Unknown] {
            assert_eq!(serde_json::json!(bound), bound.as_str());
            assert_eq!(parse_bound(bound.as_str()).unwrap(), bound);
        }
        assert!(parse_bound("roughly").is_err());
    }
}
