//! The closed set of events the engine emits while it flashes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{AttemptFigures, Stage, Verdict};

/// Names one target within a fan-out: a device path, a file path or a port label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TargetId(pub String);

impl TargetId {
    /// Wraps a name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Something that happened to one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineEvent {
    /// The target it happened to.
    pub target: TargetId,
    /// What happened.
    pub kind: EngineEventKind,
}

/// What happened to a target. Progress is throttled by the engine; stage changes
/// and verdicts are never dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EngineEventKind {
    /// The attempt entered a stage.
    Stage {
        /// The new stage.
        stage: Stage,
    },
    /// The write pass is flushed and the target is being reset before its
    /// read-back (a USB reset, to drop any cache inside the stick): it may
    /// leave the system and come back under another name, which is part of
    /// the attempt. The next event is the `verifying` stage or the verdict.
    Resetting,
    /// Bytes done within the current stage.
    Progress {
        /// The current stage.
        stage: Stage,
        /// Bytes done in this stage.
        done: u64,
        /// Bytes this stage will do.
        total: u64,
        /// Recent speed in bytes a second.
        bytes_per_sec: f64,
    },
    /// The attempt ended.
    Finished {
        /// Pass or fail, with the reason.
        verdict: Verdict,
        /// What was measured.
        figures: AttemptFigures,
    },
}
