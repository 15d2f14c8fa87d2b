//! The station's record writers: the [`Journal`]'s writes, taken off the
//! station's loop.
//!
//! A write can wait a long time: SQLite waits its busy timeout (10 s) while
//! another process holds the write lock, on every write in turn. Awaited in
//! the station's loop, each such write stood the whole rack still (every
//! port's progress, hotplug, the other ports' verdicts, the dashboard). The
//! loop hands its writes to a small fixed set of writer tasks instead, and
//! hears back, as a message in the loop ([`crate::station`]'s `Recorded`),
//! the answers it acts on: an attempt's start (nothing is written to a stick
//! before the records hold it), a verdict (no port shows one the records do
//! not hold), a run's start, stop or image, an operator's action (the
//! caller's reply waits for it, never the loop).
//!
//! - **Lanes.** Each writer drains one ordered, bounded queue (a lane). The
//!   writes of one port go to one lane, so one attempt's writes (its start,
//!   its stages, its verdict) and a port's event log entries are written in
//!   the order the station made them; the station's own writes (runs, retries)
//!   have a lane of their own. A write held up in one lane (one port's
//!   verdict) holds up its lane only: another port's start and verdict are
//!   recorded meanwhile (against a locked SQLite file every lane waits, as the
//!   database does).
//! - **Bounded.** A lane holds at most [`LANE_CAPACITY`] writes; a station
//!   that outruns its records that far waits for room (as every write did
//!   before). No task is spawned per write.
//! - **Heartbeats coalesce.** A heartbeat is not queued: the figures wait in
//!   one slot, a newer heartbeat merged into it, and a writer of its own writes
//!   the latest whenever it can. Behind a lock, heartbeats never pile up.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use flashrack_core::AttemptId;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::journal::{AttemptSoFar, Journal};

/// How many lanes carry the ports' writes (ports share them round-robin);
/// one more lane carries the station's own.
pub(crate) const PORT_LANES: usize = 4;

/// How many writes one lane holds before the station waits for room.
pub(crate) const LANE_CAPACITY: usize = 64;

/// The lane of the station's own writes (runs, retries of refused records).
pub(crate) const STATION_LANE: usize = 0;

/// One write: a future that makes its journal calls and reports where it
/// must.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The figures of the heartbeat still to be written, by attempt (merged, the
/// latest figures kept).
#[derive(Default)]
struct HeartbeatSlot {
    /// `None`: no heartbeat waits. A `std` mutex: held only to swap the map,
    /// never across an await.
    pending: Mutex<Option<BTreeMap<AttemptId, AttemptSoFar>>>,
    /// Wakes the heartbeat writer (a permit is kept when it is busy).
    wake: Notify,
    /// Set at close: the heartbeat writer writes what waits and ends.
    closing: std::sync::atomic::AtomicBool,
}

/// The writers and their queues. Made with the station; the writers run once
/// [`Recorder::start`] is called (on the station's runtime).
pub(crate) struct Recorder {
    journal: Arc<dyn Journal>,
    /// One sender per lane (lane [`STATION_LANE`] first); empty once closed.
    lanes: Vec<mpsc::Sender<Job>>,
    /// The receivers until the writers start.
    receivers: Vec<mpsc::Receiver<Job>>,
    heartbeat: Arc<HeartbeatSlot>,
    writers: Vec<JoinHandle<()>>,
}

impl Recorder {
    /// Writers over `journal` (not started).
    pub(crate) fn new(journal: Arc<dyn Journal>) -> Self {
        let (lanes, receivers) = (0..=PORT_LANES)
            .map(|_| mpsc::channel(LANE_CAPACITY))
            .unzip();
        Self {
            journal,
            lanes,
            receivers,
            heartbeat: Arc::default(),
            writers: Vec::new(),
        }
    }

    /// The journal, for the writes' futures.
    pub(crate) fn journal(&self) -> Arc<dyn Journal> {
        self.journal.clone()
    }

    /// Starts the writers: one per lane, one for heartbeats.
    pub(crate) fn start(&mut self) {
        for mut receiver in std::mem::take(&mut self.receivers) {
            self.writers.push(tokio::spawn(async move {
                while let Some(job) = receiver.recv().await {
                    job.await;
                }
            }));
        }
        let journal = self.journal.clone();
        let slot = self.heartbeat.clone();
        self.writers.push(tokio::spawn(async move {
            loop {
                let pending = slot
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some(running) = pending {
                    let running: Vec<AttemptSoFar> = running.into_values().collect();
                    if let Err(error) = journal.heartbeat(&running).await {
                        tracing::warn!(%error, "cannot record a heartbeat");
                    }
                    continue;
                }
                if slot.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                // A wake-up sent since the look above is kept (a permit).
                slot.wake.notified().await;
            }
        }));
    }

    /// Queues `job` in `lane` (its writes come after those queued there
    /// before); waits only when the lane is full.
    pub(crate) async fn push(&self, lane: usize, job: impl Future<Output = ()> + Send + 'static) {
        let Some(sender) = self.lanes.get(lane) else {
            return;
        };
        match sender.try_send(Box::pin(job)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                tracing::warn!(
                    lane,
                    "the records are {LANE_CAPACITY} writes behind; the station waits for them"
                );
                if sender.send(job).await.is_err() {
                    tracing::error!(lane, "the records' writer has stopped; a write is lost");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(lane, "the records' writer has stopped; a write is lost");
            }
        }
    }

    /// Records that the station is alive and how far `running` attempts have
    /// got, as soon as the heartbeat writer can: merged with a heartbeat still
    /// waiting (the latest figures of each attempt kept), never queued.
    pub(crate) fn heartbeat(&self, running: &[AttemptSoFar]) {
        let mut pending = self
            .heartbeat
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let merged = pending.get_or_insert_with(BTreeMap::new);
        for so_far in running {
            merged.insert(so_far.attempt_id, *so_far);
        }
        drop(pending);
        self.heartbeat.wake.notify_one();
    }

    /// Stops taking writes and waits until every write queued (and a
    /// heartbeat still waiting) is written.
    pub(crate) async fn close(&mut self) {
        self.lanes.clear();
        self.heartbeat
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.heartbeat.wake.notify_one();
        for writer in std::mem::take(&mut self.writers) {
            if let Err(error) = writer.await {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use flashrack_core::{
        AttemptFigures, AttemptId, DeviceId, RunId, Sha256Digest, Stage, StopReason, Verdict,
    };
    use flashrack_hotplug::DeviceIdentity;
    use tokio::sync::{oneshot, Semaphore};

    use super::*;
    use crate::journal::{AttemptStart, JournalError, JournalEvent, MemoryJournal, RunStart};

    /// A journal whose heartbeats each wait for a permit (the test hands
    /// them out, as a lock let go would), and count what they carried.
    struct SlowHeartbeats {
        inner: MemoryJournal,
        permits: Semaphore,
        written: Mutex<Vec<Vec<AttemptSoFar>>>,
    }

    #[async_trait]
    impl Journal for SlowHeartbeats {
        async fn run_started(&self, run: &RunStart) -> Result<RunId, JournalError> {
            self.inner.run_started(run).await
        }
        async fn run_started_following(&self, run: &RunStart) -> Result<RunId, JournalError> {
            self.inner.run_started_following(run).await
        }
        async fn run_image_known(
            &self,
            run_id: RunId,
            provisional: Sha256Digest,
            image: &RunStart,
        ) -> Result<(), JournalError> {
            self.inner.run_image_known(run_id, provisional, image).await
        }
        async fn run_stopped(
            &self,
            run_id: RunId,
            reason: StopReason,
            note: Option<&str>,
        ) -> Result<(), JournalError> {
            self.inner.run_stopped(run_id, reason, note).await
        }
        async fn device_seen(&self, identity: &DeviceIdentity) -> Result<DeviceId, JournalError> {
            self.inner.device_seen(identity).await
        }
        async fn attempt_started(&self, attempt: &AttemptStart) -> Result<AttemptId, JournalError> {
            self.inner.attempt_started(attempt).await
        }
        async fn attempt_stage(
            &self,
            attempt_id: AttemptId,
            stage: Stage,
        ) -> Result<(), JournalError> {
            self.inner.attempt_stage(attempt_id, stage).await
        }
        async fn attempt_finished(
            &self,
            attempt_id: AttemptId,
            verdict: &Verdict,
            figures: &AttemptFigures,
        ) -> Result<(), JournalError> {
            self.inner
                .attempt_finished(attempt_id, verdict, figures)
                .await
        }
        async fn event(&self, event: &JournalEvent) -> Result<(), JournalError> {
            self.inner.event(event).await
        }
        async fn heartbeat(&self, running: &[AttemptSoFar]) -> Result<(), JournalError> {
            self.permits.acquire().await.unwrap().forget();
            self.written.lock().unwrap().push(running.to_vec());
            Ok(())
        }
    }

    fn so_far(attempt: i64, written: u64) -> AttemptSoFar {
        AttemptSoFar {
            attempt_id: AttemptId(attempt),
            bytes_written: written,
            bytes_verified: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_behind_a_slow_write_are_merged_into_one_with_the_latest_figures() {
        let journal = Arc::new(SlowHeartbeats {
            inner: MemoryJournal::default(),
            permits: Semaphore::new(0),
            written: Mutex::default(),
        });
        let mut recorder = Recorder::new(journal.clone());
        recorder.start();
        // The first heartbeat is taken and waits in the journal…
        recorder.heartbeat(&[so_far(1, 10)]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while recorder.heartbeat.pending.lock().unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "never taken");
            tokio::task::yield_now().await;
        }
        // …while a thousand more come: they wait as one.
        for n in 0..1000 {
            recorder.heartbeat(&[so_far(1, 100 + n), so_far(2 + (n as i64 % 2), n)]);
        }
        journal.permits.add_permits(10);
        recorder.close().await;
        let written = journal.written.lock().unwrap().clone();
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(written[0], [so_far(1, 10)]);
        assert_eq!(
            written[1],
            [so_far(1, 1099), so_far(2, 998), so_far(3, 999)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_writes_in_order_and_another_lane_is_not_held_up_by_it() {
        let journal = Arc::new(MemoryJournal::default());
        let mut recorder = Recorder::new(journal.clone());
        recorder.start();
        let (held_tx, held_rx) = oneshot::channel::<()>();
        // Lane 1 waits on a write that does not end…
        recorder
            .push(1, async move {
                let _ = held_rx.await;
            })
            .await;
        let order = Arc::new(Mutex::new(Vec::new()));
        for n in 0..3 {
            let order = order.clone();
            recorder
                .push(1, async move { order.lock().unwrap().push(n) })
                .await;
        }
        // …another lane's write is answered meanwhile.
        let (answer_tx, answer_rx) = oneshot::channel();
        let written = journal.clone();
        recorder
            .push(2, async move {
                let event = JournalEvent::OperatorAction {
                    action: crate::journal::OperatorAction::Stop,
                    detail: "lane 2".into(),
                };
                let _ = answer_tx.send(written.event(&event).await);
            })
            .await;
        let answer = tokio::time::timeout(std::time::Duration::from_secs(30), answer_rx)
            .await
            .expect("lane 2 is not held up by lane 1");
        assert!(matches!(answer, Ok(Ok(()))));
        assert!(order.lock().unwrap().is_empty());
        held_tx.send(()).unwrap();
        recorder.close().await;
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(journal.records().events.len(), 1);
    }
}
