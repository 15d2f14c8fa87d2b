//! The names records give to runs, devices, attempts and refusals, and why a run
//! stopped.
//!
//! The store assigns the ids; everyone else (station, journal, web, command line)
//! carries them as these types, so that a run id is never taken for an attempt
//! id and no `-1` stands in for "not recorded".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::text::stable_text;

macro_rules! record_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            /// Parses a record id as people and URLs write it: a positive number.
            pub fn parse(text: &str) -> Result<Self, IdParseError> {
                text.parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .map($name)
                    .ok_or_else(|| IdParseError {
                        what: $what,
                        text: text.to_string(),
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(text: &str) -> Result<Self, IdParseError> {
                Self::parse(text)
            }
        }
    };
}

record_id!(
    /// Names a run (a batch: one image, its options, its attempts).
    RunId,
    "run"
);
record_id!(
    /// Names a device record (a stick, by its key).
    DeviceId,
    "device"
);
record_id!(
    /// Names an attempt (one device in one port under one run).
    AttemptId,
    "attempt"
);
record_id!(
    /// Names a refusal: a stick the target guard refused before any attempt.
    RefusalId,
    "refusal"
);

/// A record id that is not a positive number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} id {text:?} is not a positive number")]
pub struct IdParseError {
    what: &'static str,
    text: String,
}

/// Why a run stopped. A closed set: the records store its code, the screens
/// show its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An operator stopped it.
    Operator,
    /// It reached its target count of passes.
    TargetReached,
    /// A one-shot run gave every target its verdict.
    Completed,
    /// The station or command shut down cleanly (SIGTERM, Ctrl-C).
    Shutdown,
    /// The image could not be read; every attempt was stopped.
    SourceFailed,
    /// The station stopped without shutting down (crash, kill, power loss);
    /// set when the records are next opened.
    Interrupted,
}

impl StopReason {
    /// Every reason, in declaration order.
    pub const ALL: &'static [StopReason] = &[
        StopReason::Operator,
        StopReason::TargetReached,
        StopReason::Completed,
        StopReason::Shutdown,
        StopReason::SourceFailed,
        StopReason::Interrupted,
    ];

    /// The stable code stored in the records and used in reports and the API.
    pub fn code(self) -> &'static str {
        match self {
            StopReason::Operator => "operator",
            StopReason::TargetReached => "target_reached",
            StopReason::Completed => "completed",
            StopReason::Shutdown => "shutdown",
            StopReason::SourceFailed => "source_failed",
            StopReason::Interrupted => "interrupted",
        }
    }

    /// The reason in words, for people.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::Operator => "stopped by the operator",
            StopReason::TargetReached => "target count reached",
            StopReason::Completed => "every target has its verdict",
            StopReason::Shutdown => "station shut down",
            StopReason::SourceFailed => "the image could not be read",
            StopReason::Interrupted => "station stopped unexpectedly",
        }
    }
}

stable_text!(StopReason, code, StopReasonParseError, "a stop reason");

/// Where an attempt stands in the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Started and not yet finished.
    Running,
    /// Finished with a pass.
    Passed,
    /// Finished with a failure of the stick (or of the station's access to it).
    Failed,
    /// Stopped by the operator, a shutdown, a crash or a shortage of the
    /// station's: says nothing about the stick.
    Interrupted,
}

impl AttemptState {
    /// Every state, in declaration order.
    pub const ALL: &'static [AttemptState] = &[
        AttemptState::Running,
        AttemptState::Passed,
        AttemptState::Failed,
        AttemptState::Interrupted,
    ];

    /// The stable text stored in the records and shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Running => "running",
            AttemptState::Passed => "passed",
            AttemptState::Failed => "failed",
            AttemptState::Interrupted => "interrupted",
        }
    }
}

stable_text!(
    AttemptState,
    as_str,
    AttemptStateParseError,
    "an attempt state"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_positive_numbers() {
        assert_eq!(RunId::parse("12"), Ok(RunId(12)));
        assert!(RunId::parse("0").is_err());
        assert!(AttemptId::parse("-3").is_err());
        assert!(DeviceId::parse("x").is_err());
        assert_eq!(
            RunId::parse("abc").unwrap_err().to_string(),
            "run id \"abc\" is not a positive number"
        );
    }

    #[test]
    fn attempt_states_round_trip_and_match_serde() {
        for &state in AttemptState::ALL {
            assert_eq!(state.as_str().parse::<AttemptState>(), Ok(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert!("done".parse::<AttemptState>().is_err());
    }

    #[test]
    fn stop_reason_codes_round_trip_and_match_serde() {
        for &reason in StopReason::ALL {
            assert_eq!(reason.code().parse::<StopReason>(), Ok(reason));
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, reason.code());
        }
        assert!("completed!".parse::<StopReason>().is_err());
    }
}
