//! What the station shows: ports, runs, and the events that change them. Plain
//! serializable values, for the command line, the web side and the records.

use flashrack_core::{
    AttemptFigures, AttemptId, GuardRefusal, RunId, Sha256Digest, Stage, StopReason, Verdict,
};
use flashrack_hotplug::PluggedDevice;
use serde::{Deserialize, Serialize};

/// The state of one port, as in DESIGN.md: `empty → detected → (refused |
/// waiting | preparing → writing → flushing → [resetting →] verifying) → passed |
/// failed`, and
/// back to `empty` when the stick is pulled (a stick pulled during an attempt
/// leaves its port `failed`, verdict `removed`, until the next stick arrives).
/// A stick in a master port is `master` (never written) until it is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortState {
    /// No stick.
    Empty,
    /// A stick is present and identified; nothing is armed for it.
    Detected,
    /// A stick is in a master port: it is never written (no run starts it,
    /// not even on the operator's request), only offered for capture.
    Master,
    /// The stick in a master port is being read into the image cache (a
    /// capture): `progress` says how far. Never written either; back to
    /// `master` when the capture ends.
    Capturing,
    /// The target guard refused the stick; see `refusal`.
    Refused,
    /// The armed run would write the stick, but its passes plus the attempts in
    /// flight already reach its target count: it starts if one of those fails,
    /// and goes back to `detected` when the run stops.
    Waiting,
    /// Opening, size check, capacity probe.
    Preparing,
    /// Writing the image.
    Writing,
    /// Committing the write.
    Flushing,
    /// The stick is being reset before its read-back (to drop any cache
    /// inside it): it may leave the system and come back under another name,
    /// which is part of the attempt, not a pull and a new insertion.
    Resetting,
    /// Reading back from the medium.
    Verifying,
    /// The stick holds the image, proven (see `verdict`, `figures`).
    Passed,
    /// The attempt failed; see `verdict`.
    Failed,
}

impl std::fmt::Display for PortState {
    /// The state as the API names it (`preparing`, `passed`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortState::Empty => "empty",
            PortState::Detected => "detected",
            PortState::Master => "master",
            PortState::Capturing => "capturing",
            PortState::Refused => "refused",
            PortState::Waiting => "waiting",
            PortState::Preparing => "preparing",
            PortState::Writing => "writing",
            PortState::Flushing => "flushing",
            PortState::Resetting => "resetting",
            PortState::Verifying => "verifying",
            PortState::Passed => "passed",
            PortState::Failed => "failed",
        })
    }
}

impl PortState {
    /// The busy state for an engine stage.
    pub fn for_stage(stage: Stage) -> Self {
        match stage {
            Stage::Preparing => PortState::Preparing,
            Stage::Writing => PortState::Writing,
            Stage::Flushing => PortState::Flushing,
            Stage::Resetting => PortState::Resetting,
            Stage::Verifying => PortState::Verifying,
        }
    }

    /// Whether an attempt is running in this state.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            PortState::Preparing
                | PortState::Writing
                | PortState::Flushing
                | PortState::Resetting
                | PortState::Verifying
        )
    }
}

/// A stick as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Serial, or the vendor/model/size fallback key.
    pub key: String,
    /// Serial number, if any.
    pub serial: Option<String>,
    /// Vendor.
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Reported capacity in bytes.
    pub capacity: u64,
    /// The kernel's name (`sdb`).
    pub kernel_name: String,
}

impl From<&PluggedDevice> for DeviceView {
    fn from(d: &PluggedDevice) -> Self {
        Self {
            key: d.identity.key(),
            serial: d.identity.serial.clone(),
            vendor: d.identity.vendor.clone(),
            model: d.identity.model.clone(),
            capacity: d.identity.capacity,
            kernel_name: d.kernel_name.clone(),
        }
    }
}

/// Progress of the current stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes done in this stage.
    pub done: u64,
    /// Bytes the stage will do.
    pub total: u64,
    /// Recent speed.
    pub bytes_per_sec: f64,
}

/// The run a verdict was given under: a verdict is only ever a statement about
/// that run's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRun {
    /// The run.
    pub run_id: RunId,
    /// Its image's name.
    pub image_name: String,
    /// Its image's sha256.
    pub image_sha256: Sha256Digest,
}

impl VerdictRun {
    /// The run `run` as a verdict's origin.
    pub fn of(run: &RunView) -> Self {
        Self {
            run_id: run.id,
            image_name: run.image_name.clone(),
            image_sha256: run.image_sha256,
        }
    }
}

/// One port as the operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortView {
    /// The label ("A1"), or `?<kernel name>` for a stick in an unmapped port.
    pub label: String,
    /// The physical port path (udev `ID_PATH`).
    pub port_path: Option<String>,
    /// Whether the port is in the port map.
    pub mapped: bool,
    /// Whether it is a master port (the configuration's `master = true`): a
    /// stick in it is never written, only captured.
    #[serde(default)]
    pub master: bool,
    /// Grid position from the configuration (row, column), if any.
    pub position: Option<(u32, u32)>,
    /// What the port is doing.
    pub state: PortState,
    /// The stick in it.
    pub device: Option<DeviceView>,
    /// Progress of the running stage.
    pub progress: Option<Progress>,
    /// The verdict of the last attempt on the stick in this port.
    pub verdict: Option<Verdict>,
    /// The run (and image) that verdict was given under; set whenever `verdict`
    /// is. A verdict of another run than the current one says nothing about the
    /// current run's image (see [`PortView::verdict_is_of`]).
    pub verdict_run: Option<VerdictRun>,
    /// Figures of the last attempt.
    pub figures: Option<AttemptFigures>,
    /// Why the guard refused the stick: its code and its sentence.
    pub refusal: Option<GuardRefusal>,
    /// Whether a passed stick was ejected and may be pulled.
    pub ejected: bool,
    /// The record of the current or last attempt.
    pub attempt_id: Option<AttemptId>,
    /// Set while the records are taking the port's attempt's start (nothing
    /// is written to the stick before they hold it) or its verdict (shown
    /// only once they hold it): the port stays in its stage meanwhile, with
    /// no progress, and no verdict.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recording: bool,
    /// Set while the stick in it shows the serial (and vendor, model and
    /// size) of a stick that passed in the armed run: the attempt that
    /// passed. It may be that stick put in again, or another stick with the
    /// same serial (cheap sticks share them), which nothing but a read-back
    /// tells apart: it is neither written nor shown as passed until the
    /// operator asks (`start_port`, "write it").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_before: Option<AttemptId>,
}

impl PortView {
    /// An empty port.
    pub fn empty(
        label: String,
        port_path: Option<String>,
        mapped: bool,
        position: Option<(u32, u32)>,
    ) -> Self {
        Self {
            label,
            port_path,
            mapped,
            master: false,
            position,
            state: PortState::Empty,
            device: None,
            progress: None,
            verdict: None,
            verdict_run: None,
            figures: None,
            refusal: None,
            ejected: false,
            attempt_id: None,
            recording: false,
            passed_before: None,
        }
    }

    /// Whether the port's verdict was given under `run` (same run, same image):
    /// only then is a pass a pass of that run. `false` without a verdict.
    pub fn verdict_is_of(&self, run: &RunView) -> bool {
        self.verdict.is_some()
            && self
                .verdict_run
                .as_ref()
                .is_some_and(|v| v.run_id == run.id && v.image_sha256 == run.image_sha256)
    }

    /// Back to empty, keeping the port's identity (a master port stays one).
    pub fn clear(&mut self) {
        let master = self.master;
        *self = Self::empty(
            std::mem::take(&mut self.label),
            self.port_path.take(),
            self.mapped,
            self.position,
        );
        self.master = master;
    }
}

pub use flashrack_core::RunOptions;

/// A run as the operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// Its record id.
    pub id: RunId,
    /// The image's sha256.
    pub image_sha256: Sha256Digest,
    /// The image's name.
    pub image_name: String,
    /// Image size in bytes.
    pub image_size: u64,
    /// The run's options.
    pub options: RunOptions,
    /// Whether new sticks are still being written.
    pub armed: bool,
    /// Passes so far.
    pub passed: u32,
    /// Failures so far: sticks found bad (or pulled), not counting `interrupted`
    /// nor refusals (see `refused`).
    pub failed: u32,
    /// Attempts interrupted by a stop, a shutdown or a source failure: they say
    /// nothing about the stick (the records count them apart too).
    pub interrupted: u32,
    /// Sticks the target guard refused under this run, at insertion or at the
    /// moment of opening: nothing was written to them (the records count them
    /// apart too).
    #[serde(default)]
    pub refused: u32,
    /// Attempts running now.
    pub active: u32,
    /// Bytes written to sticks by finished attempts of this run.
    pub bytes_written: u64,
    /// Passes still wanted, when there is a target count.
    pub remaining: Option<u32>,
    /// Why the run stopped, once it has.
    pub stop_reason: Option<StopReason>,
    /// The import the run follows, for a run armed with an image that was
    /// not cached yet (a URL being downloaded, a file on the station being
    /// imported): how far it has got. `None` for a run of a cached image.
    /// Until the import ends, `image_sha256` is a provisional digest of no
    /// image (unique to the run) and `image_size` the size known so far (0
    /// when the image's size is known only at its end).
    /// (Boxed: most runs have none, and a run view travels in every run
    /// event.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<Box<RunImport>>,
    /// Set while the records do not hold the run's end yet. With `armed`:
    /// the run is stopping (its sticks were told to stop at once, nothing
    /// more starts under it) and is shown ended only once the records take
    /// its stop. Without: the records refused its stop; it is stopped all
    /// the same (nothing more is written under it) and its stop is written
    /// again at each heartbeat until they take it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recording: bool,
}

/// A run being armed ([`Snapshot::arming`]): the station holds the right
/// to arm it for a caller who readies its image first (`claimed`), its arm
/// waits for the last run's stop to be recorded (`waiting_for_stop`), or
/// the records are taking its start (`recording`). Nothing is written under
/// it, and it is not shown as the run, until the records hold it; another
/// arm is refused meanwhile. If the records refuse it, or its caller gives
/// up (an import that fails or is abandoned), it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmingView {
    /// Which step it is at.
    #[serde(default)]
    pub state: ArmingState,
    /// The image's sha256 (a provisional digest for an image still being
    /// imported, see [`RunView::import`]); `None` while `claimed`: no
    /// digest names it before its import begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<Sha256Digest>,
    /// The image's name.
    pub image_name: String,
    /// Where the image comes from, for a run that follows its import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Which step a run being armed is at ([`ArmingView::state`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmingState {
    /// The station holds the right to arm it ([`crate::ArmClaim`]) while
    /// its caller readies the image: a followed run's import, until its
    /// first chunk. Nothing is recorded yet.
    Claimed,
    /// Its image is ready (a followed run's import has begun, and goes on)
    /// and its arm was asked, but the last run's stop is still being
    /// recorded: it is armed once the records hold that stop. Nothing of
    /// it is recorded yet.
    WaitingForStop,
    /// The records are taking its start.
    #[default]
    Recording,
}

/// The import a run follows ([`RunView::import`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunImport {
    /// Where the image comes from: the URL or the file, as the operator
    /// named it.
    pub source: String,
    /// `importing` (downloading, decompressing, hashing), `recording` (the
    /// image is in the cache and the records are taking it as the run's: no
    /// stick passes before they hold it), `done` (the records hold it; the
    /// run names it) or `failed` (see `error`).
    pub state: RunImportState,
    /// Bytes received so far: of the download for a URL, of the image
    /// stored for a file.
    pub done: u64,
    /// What `done` will reach, when known (a server's declared length, a
    /// file's size).
    pub total: Option<u64>,
    /// Bytes of the image the run's sticks read again from the import's
    /// file because the import had passed them before they asked (added as
    /// each attempt ends): 0 when every stick kept up with the import. A
    /// figure of the station's work, not of any stick: not recorded.
    #[serde(default)]
    pub reread_bytes: u64,
    /// Why the import failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How far a followed import is ([`RunImport::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunImportState {
    /// Still arriving.
    Importing,
    /// In the cache; the records are taking it as the run's image (the
    /// run's view still names the provisional digest, and the import's
    /// feed has not ended: no stick passes meanwhile).
    Recording,
    /// In the cache and in the records; the run names its image.
    Done,
    /// Failed: every attempt of the run failed as a source failure.
    Failed,
}

/// Everything the station shows, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The station's id.
    pub station_id: String,
    /// Every mapped port in configuration order, then sticks in unmapped ports.
    pub ports: Vec<PortView>,
    /// The current (or last) run.
    pub run: Option<RunView>,
    /// A run being armed: claimed for a caller readying its image, or its
    /// start being recorded (`run` is still the last one meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arming: Option<ArmingView>,
}

/// A change the station publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StationEvent {
    /// A port changed.
    Port {
        /// The port as it is now (boxed: a port view is much larger than the
        /// other events).
        port: Box<PortView>,
    },
    /// A port went away (an unmapped one, emptied).
    PortGone {
        /// Its label.
        label: String,
    },
    /// The run changed (armed, counters, stopped).
    Run {
        /// The run as it is now.
        run: Option<RunView>,
    },
    /// A run began or ended being armed, or went on to its next step
    /// ([`Snapshot::arming`]): claimed or its start being recorded
    /// (`Some`), or no longer (`None`: a `run` event follows if the records
    /// took it).
    Arming {
        /// The run being armed, if one is.
        arming: Option<ArmingView>,
    },
}

/// When an attempt's write pass and read-back ran, from the stages it
/// entered: the times recorded for an attempt whose thread's own figures
/// are lost (abandoned at a stop, stuck, its source failed).
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimeline {
    writing: Option<std::time::Instant>,
    written: Option<std::time::Instant>,
    verifying: Option<std::time::Instant>,
}

impl StageTimeline {
    /// Notes that the attempt entered `stage` `at`.
    pub fn enter(&mut self, stage: Stage, at: std::time::Instant) {
        match stage {
            Stage::Writing => self.writing = Some(at),
            Stage::Preparing | Stage::Flushing => {}
            Stage::Resetting | Stage::Verifying => {
                if self.writing.is_some() && self.written.is_none() {
                    self.written = Some(at);
                }
                if stage == Stage::Verifying {
                    self.verifying = Some(at);
                }
            }
        }
    }

    /// The seconds spent writing (flush included) and reading back, until
    /// `now` for the pass that has not ended.
    pub fn secs(&self, now: std::time::Instant) -> (f64, f64) {
        let span = |from: Option<std::time::Instant>, to: Option<std::time::Instant>| {
            from.map_or(0.0, |from| {
                to.unwrap_or(now).duration_since(from).as_secs_f64()
            })
        };
        (span(self.writing, self.written), span(self.verifying, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_port_state_is_said_as_the_api_names_it() {
        for state in [
            PortState::Empty,
            PortState::Detected,
            PortState::Master,
            PortState::Capturing,
            PortState::Refused,
            PortState::Waiting,
            PortState::Preparing,
            PortState::Writing,
            PortState::Flushing,
            PortState::Resetting,
            PortState::Verifying,
            PortState::Passed,
            PortState::Failed,
        ] {
            let api = serde_json::to_value(state).unwrap();
            assert_eq!(api.as_str(), Some(state.to_string().as_str()));
        }
    }

    #[test]
    fn a_timeline_times_the_write_pass_to_the_read_back_and_that_to_now() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut timeline = StageTimeline::default();
        assert_eq!(timeline.secs(at(5_000)), (0.0, 0.0));
        timeline.enter(Stage::Preparing, at(0));
        timeline.enter(Stage::Writing, at(1_000));
        // Writing, so far.
        assert_eq!(timeline.secs(at(3_000)), (2.0, 0.0));
        // The flush counts as writing; a reset ends it.
        timeline.enter(Stage::Flushing, at(4_000));
        timeline.enter(Stage::Resetting, at(5_000));
        timeline.enter(Stage::Verifying, at(6_000));
        assert_eq!(timeline.secs(at(8_500)), (4.0, 2.5));
    }
}
