//! A run's options: how its sticks are written and checked, who armed it and
//! its lot, as the station, its records and a fleet hub's orders share them.

use serde::{Deserialize, Serialize};

use crate::{SamplePercent, VerifyMode};

/// Options of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    /// How to verify: `compare` (default), `hash` or `none`.
    pub verify: VerifyMode,
    /// Eject each stick after it passes.
    pub eject_on_pass: bool,
    /// Stop the run by itself after this many passes.
    pub target_count: Option<u32>,
    /// Who armed the run (a name the operator gives), printed on its report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The lot or batch the run's sticks belong to, printed on its report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lot: Option<String>,
    /// The fleet hub's order the run was armed under (`order_id` in the
    /// run's options, `flashrack_fleet::ORDER_ID_OPTION`); `None` when an
    /// operator armed it at the station.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<i64>,
    /// The operator forced a raw run of an image that would not boot when
    /// written raw (a non-hybrid installer ISO); kept in the run's options so
    /// that its records and reports say so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_raw: bool,
    /// A sparse run: each stick gets only the image's block map's ranges,
    /// written and read back; the rest of it is left as it was, unchecked
    /// (the attempts' figures say how many bytes were skipped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
    /// Where a sparse run's block map came from, in words ("bmap file
    /// disk.bmap (format 2.0)", "generated from ext4 …"): set by the station
    /// when it takes the map, so that the run's records and reports say
    /// which map its sticks were written by (a later map of the image may
    /// be another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_map: Option<String>,
    /// Check only this share of each stick's chunks after writing (a sampled
    /// verify: every verdict says `sampled (x %)`); `None` checks every byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<SamplePercent>,
    /// An audit: write nothing, read each stick back and compare it with the
    /// image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// Write a stick again this many times when it fails for a reason that
    /// may pass ([`flashrack_core::FailReason::is_retryable`]: a write error,
    /// a stall while writing), each time as an attempt of its own; never for
    /// a capacity lie or a read-only stick.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RunOptions {
    /// The most automatic retries a run may ask for each stick.
    pub const MAX_RETRIES: u32 = 10;

    /// Whether the options make a run, whoever armed it (an operator at the
    /// station or a fleet hub's order): the reason in words when they do not.
    pub fn check(&self) -> Result<(), String> {
        if self.target_count == Some(0) {
            return Err("target_count must be at least 1".into());
        }
        if self.audit && self.verify == VerifyMode::None {
            return Err(
                "an audit reads the sticks back: verify \"none\" would check nothing".into(),
            );
        }
        if self.retries > Self::MAX_RETRIES {
            return Err(format!("retries must be at most {}", Self::MAX_RETRIES));
        }
        if self.audit && self.retries > 0 {
            return Err("an audit writes nothing: there is no write to retry".into());
        }
        if self.sample.is_some() && self.verify == VerifyMode::None {
            return Err(
                "a sampled verify needs a verify mode that reads back (compare or hash)".into(),
            );
        }
        Ok(())
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            verify: VerifyMode::Compare,
            eject_on_pass: false,
            target_count: None,
            operator: None,
            lot: None,
            order_id: None,
            force_raw: false,
            sparse: false,
            sparse_map: None,
            sample: None,
            audit: false,
            retries: 0,
        }
    }
}

/// The names of a run's options ([`RunOptions`]' fields as JSON names
/// them, but the one the station sets itself, `sparse_map`): what an order
/// of a fleet hub may set.
pub const RUN_OPTION_NAMES: &[&str] = &[
    "verify",
    "eject_on_pass",
    "target_count",
    "operator",
    "lot",
    "order_id",
    "force_raw",
    "sparse",
    "sample",
    "audit",
    "retries",
];

impl RunOptions {
    /// The options an order's `options` (a JSON object, or null) arm: the
    /// defaults, with what it sets, held to [`check`](Self::check). Refused
    /// in words: a name no option has (a misspelt one would be dropped and
    /// the run armed with the default in its place: a lot's `"target": 5`
    /// armed a run without a target count), a value of the wrong type, or
    /// options that make no run. The hub judges a lot's options so before
    /// it arms it, the station each order it follows.
    pub fn of_order(options: &serde_json::Value) -> Result<Self, String> {
        let mut merged = serde_json::to_value(Self::default()).map_err(|e| e.to_string())?;
        if let (Some(base), Some(given)) = (merged.as_object_mut(), options.as_object()) {
            for (key, value) in given {
                if !RUN_OPTION_NAMES.contains(&key.as_str()) {
                    return Err(format!(
                        "the order's options name no option {key:?} (known: {})",
                        RUN_OPTION_NAMES.join(", ")
                    ));
                }
                base.insert(key.clone(), value.clone());
            }
        } else if !options.is_null() {
            return Err("the order's options are not a JSON object".into());
        }
        let options: Self = serde_json::from_value(merged)
            .map_err(|e| format!("the order's options cannot be used: {e}"))?;
        options
            .check()
            .map_err(|why| format!("the order's options cannot be used: {why}"))?;
        Ok(options)
    }
}
