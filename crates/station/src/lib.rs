//! The duplication station: sticks arrive in physical ports, an armed run writes
//! and verifies every one that the target guard accepts, and each port shows its
//! state and verdict.
//!
//! The station sits between a hotplug source (the real udev monitor or the
//! simulated rack: the station cannot tell them apart) and the engine. It owns the
//! per-port state machines, the armed run and the guard, and it publishes a
//! [`Snapshot`] and a stream of [`StationEvent`]s for the command line and the web
//! side. Records go through the [`Journal`] seam; the station never sees SQL.
//!
//! Layout:
//! - [`model`]: ports, runs, snapshots and events, as plain serializable values;
//! - [`journal`]: the records seam and an in-memory journal;
//! - [`station`]: the event loop ([`Station::run_until_stopped`]) and the
//!   [`StationHandle`] that commands it;
//! - `recorder`: the writers that take the journal's writes off the loop, in
//!   order per port, in bounded queues, heartbeats coalesced.
//!
//! **Architecture invariant:** no stick is written unless the guard accepted it at
//! insertion *and* accepts it again at the moment its target is opened, and an
//! attempt's start is recorded before its first byte is written; its verdict is
//! committed before its port shows it. A stick in a master port is never
//! written at all: it is only offered for capture.
#![deny(missing_docs)]

pub mod journal;
pub mod model;
mod recorder;
pub mod station;

pub use journal::{
    AttemptSoFar, AttemptStart, Journal, JournalError, JournalEvent, MemoryJournal, OperatorAction,
    RunRefusal, RunStart,
};
pub use model::{
    ArmingState, ArmingView, DeviceView, PortState, PortView, Progress, RunImport, RunImportState,
    RunOptions, RunView, Snapshot, StageTimeline, StationEvent, VerdictRun,
};
pub use station::{
    ArmClaim, ArmRequest, FollowRequest, ImportEnd, MasterStick, PortSpec, Station, StationError,
    StationHandle, StationSettings,
};
