//! The vocabulary of bootable builds (a stick layout built once from an
//! installer ISO): where a build is ([`BuildStage`]) and how it stands
//! ([`BuildState`]), as the application runs them, the records keep them and
//! the API shows them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a build is, in the order a build goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStage {
    /// Copying the ISO's files out of it.
    Extracting,
    /// Splitting a Windows image too large for FAT32 (`install.wim`, with
    /// wimlib); passed at once when there is nothing to split.
    Splitting,
    /// Making the GPT and the FAT32 file system.
    Partitioning,
    /// Copying the files into the FAT32.
    CopyingFiles,
    /// Hashing the layout and taking it into the cache.
    Hashing,
}

impl BuildStage {
    /// Every stage, in order.
    pub const ALL: [BuildStage; 5] = [
        BuildStage::Extracting,
        BuildStage::Splitting,
        BuildStage::Partitioning,
        BuildStage::CopyingFiles,
        BuildStage::Hashing,
    ];

    /// The stable name records and the API carry (`copying_files`).
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStage::Extracting => "extracting",
            BuildStage::Splitting => "splitting",
            BuildStage::Partitioning => "partitioning",
            BuildStage::CopyingFiles => "copying_files",
            BuildStage::Hashing => "hashing",
        }
    }

    /// The stage named `text`, if it is one.
    pub fn parse(text: &str) -> Option<BuildStage> {
        BuildStage::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Its place among [`ALL`](Self::ALL), from 1.
    pub fn number(self) -> usize {
        BuildStage::ALL
            .iter()
            .position(|s| *s == self)
            .expect("every stage is in ALL")
            + 1
    }
}

impl fmt::Display for BuildStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildStage::Extracting => "copying the ISO's files out",
            BuildStage::Splitting => "splitting install.wim",
            BuildStage::Partitioning => "partitioning (GPT and FAT32)",
            BuildStage::CopyingFiles => "copying the files in",
            BuildStage::Hashing => "hashing and caching the layout",
        })
    }
}

/// How a build stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    /// Under way.
    Building,
    /// Done: the layout is in the cache.
    Built,
    /// Ended by an error; nothing of it is cached.
    Failed,
    /// Stopped by the operator; nothing of it is cached.
    Cancelled,
    /// Under way when the station stopped (a crash, a power loss, a
    /// shutdown); found so at the next start. Nothing of it is cached.
    Interrupted,
}

impl BuildState {
    /// The stable name records and the API carry.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Building => "building",
            BuildState::Built => "built",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
            BuildState::Interrupted => "interrupted",
        }
    }

    /// The state named `text`, if it is one.
    pub fn parse(text: &str) -> Option<BuildState> {
        [
            BuildState::Building,
            BuildState::Built,
            BuildState::Failed,
            BuildState::Cancelled,
            BuildState::Interrupted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether the build has ended (every state but `building`).
    pub fn ended(self) -> bool {
        self != BuildState::Building
    }
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_and_states_read_back_from_their_names() {
        for stage in BuildStage::ALL {
            assert_eq!(BuildStage::parse(stage.as_str()), Some(stage));
            assert_eq!(
                serde_json::to_value(stage).unwrap(),
                serde_json::json!(stage.as_str())
            );
        }
        assert_eq!(BuildStage::CopyingFiles.number(), 4);
        assert_eq!(BuildStage::parse("laying_out"), None);
        for state in ["building", "built", "failed", "cancelled", "interrupted"] {
            assert_eq!(BuildState::parse(state).unwrap().as_str(), state);
        }
        assert_eq!(BuildState::parse("done"), None);
        assert!(!BuildState::Building.ended() && BuildState::Cancelled.ended());
    }
}
