//! The storage seam: what a database of records does for the station's journal
//! and for the reports ([`Records`]), and the writes of one transaction
//! ([`Writes`]), handed to a [`Records::write`] closure as a [`Batch`].
//!
//! The station's SQLite store ([`Store`](crate::Store), in [`sqlite`](crate::sqlite))
//! implements both; a PostgreSQL backend for a lab's hub implements the same
//! two traits, and everything written against them (the journal adapter, the
//! reports, the tests of the records) works with either. Nothing here names a
//! database: the values are the domain's and the report data is
//! `flashrack-report`'s.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;

use flashrack_core::{AttemptFigures, Sha256Digest, Stage, Verdict};

use crate::{
    AttemptId, AttemptRecord, DeviceId, DeviceRecord, DeviceReport, DeviceRow, DeviceSummary,
    Event, EventId, EventRow, ImageRow, Recovery, RefusalId, RefusalRow, ReportRow, RunId,
    RunReport, RunSummary, RunningFigures, StopReason, StoreError,
};

/// A boxed future that may move between threads: what a [`Records::write`]
/// closure returns (`Box::pin(async move { … })`, or `Box::pin(batch.…(…))` for
/// a single write).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The records of one database, as the station's journal and the reports use
/// them: one entry point for writing ([`write`](Self::write)), start-up
/// recovery, and the queries.
///
/// Every timestamp a backend writes comes from its clock ([`now`](Self::now)),
/// in unix milliseconds (UTC); every record carries the backend's station
/// ([`station_id`](Self::station_id)).
pub trait Records: Send + Sync {
    /// The backend's writes: the methods of one open transaction.
    type Writes: Writes;

    /// The station this store writes for.
    fn station_id(&self) -> &str;

    /// The store's clock, in unix milliseconds.
    fn now(&self) -> i64;

    /// Opens a transaction, hands it to `f` as a [`Batch`], and commits it
    /// durably when `f` returns `Ok`: when `write` returns `Ok`, every write of
    /// the batch survives a power cut. When `f` returns an error (or the
    /// future is dropped), nothing of the batch is recorded.
    ///
    /// ```no_run
    /// # use flashrack_store::{Records, Store, StoreError, Writes, StopReason, RunId};
    /// # async fn example(store: &Store, run: RunId) -> Result<(), StoreError> {
    /// // One write:
    /// store.write(|batch| Box::pin(batch.stop_run(run, StopReason::Operator, None))).await?;
    /// // Several, all or none:
    /// let stopped = store
    ///     .write(|batch| {
    ///         Box::pin(async move {
    ///             batch.stop_run(run, StopReason::Operator, None).await?;
    ///             batch.heartbeat().await?;
    ///             Ok(run)
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A batch holds the database's write lock until it is committed, so other
    /// writes wait for it: keep batches short. Each write is stamped with the
    /// clock's time when it is made.
    ///
    /// Code generic over the backend (`R: Records`) that ends up in a spawned
    /// task returns a [`BoxFuture`] (`Box::pin(async move { … })`, which is what
    /// `async_trait` makes of a method): the compiler proves that box `Send` from
    /// this trait's bounds. It cannot yet prove the same of a plain `async fn`
    /// generic over `R` once a task spawns it with a concrete backend
    /// (rust-lang/rust#100013). Code written for one backend needs neither.
    fn write<'s, T, F>(&'s self, f: F) -> impl Future<Output = Result<T, StoreError>> + Send + 's
    where
        T: Send + 's,
        F: for<'b> FnOnce(&'b mut Batch<'s, Self::Writes>) -> BoxFuture<'b, Result<T, StoreError>>
            + Send
            + 's;

    /// Cleans up after a crash or power loss; call it once at start-up, before
    /// starting any attempt.
    ///
    /// Every attempt of this station left `running` by an earlier session becomes
    /// `interrupted` (a failure with reason `interrupted` in the stage it had
    /// reached), and every run of this station left open is stopped with reason
    /// [`StopReason::Interrupted`]: a station that went down unexpectedly comes back
    /// disarmed, and the operator arms it again — writing sticks on its own after a
    /// power cut is the kind of surprise auto-start must not have.
    ///
    /// The time recorded as their end is when the station was last known alive: the
    /// latest timestamp among its records and heartbeats as they were when the
    /// store was opened (never before the attempt's or run's own start). Records
    /// of other stations sharing the database, and records this session has made
    /// since, are never touched.
    fn recover_interrupted(&self) -> impl Future<Output = Result<Recovery, StoreError>> + Send;

    /// Every run of every station sharing the database, newest first, with counts.
    fn list_runs(&self) -> impl Future<Output = Result<Vec<RunSummary>, StoreError>> + Send;

    /// One run with its counts.
    fn run(
        &self,
        run: RunId,
    ) -> impl Future<Output = Result<Option<RunSummary>, StoreError>> + Send;

    /// This station's open run (the newest, should there be several), if any.
    fn active_run(&self) -> impl Future<Output = Result<Option<RunSummary>, StoreError>> + Send;

    /// A run's report: the run and one row per record (attempts, and refusals
    /// made under the run before any attempt) in the order they were made, read
    /// from one consistent snapshot.
    fn run_report(
        &self,
        run: RunId,
    ) -> impl Future<Output = Result<Option<RunReport>, StoreError>> + Send;

    /// One attempt.
    fn attempt(
        &self,
        attempt: AttemptId,
    ) -> impl Future<Output = Result<Option<AttemptRecord>, StoreError>> + Send;

    /// This station's attempts that are running now, oldest first.
    fn running_attempts(
        &self,
    ) -> impl Future<Output = Result<Vec<AttemptRecord>, StoreError>> + Send;

    /// The device recorded under this key, or else with this serial.
    fn device(
        &self,
        serial_or_key: &str,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, StoreError>> + Send;

    /// Every device ever seen, most recently seen first, at most `limit`.
    fn devices(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, StoreError>> + Send;

    /// Every device ever seen, most recently seen first, at most `limit`, each
    /// with its number of attempts and its latest attempt's verdict.
    fn device_summaries(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeviceSummary>, StoreError>> + Send;

    /// This station's finished attempts (passed, failed, refused at opening,
    /// interrupted), the latest `per_port` of each port, as report rows, newest
    /// first within a port.
    fn port_history(
        &self,
        per_port: u32,
    ) -> impl Future<Output = Result<Vec<ReportRow>, StoreError>> + Send;

    /// A device's report (found by key, or else by serial): the device, its
    /// counts and its records (attempts and refusals) across runs and stations,
    /// oldest first, read from one consistent snapshot.
    fn device_report(
        &self,
        serial_or_key: &str,
    ) -> impl Future<Output = Result<Option<DeviceReport>, StoreError>> + Send;

    /// Every record of a device (found by key, or else by serial): its attempts
    /// and refusals, across runs and stations, oldest first. Empty if there is
    /// no such device.
    fn device_history(
        &self,
        serial_or_key: &str,
    ) -> impl Future<Output = Result<Vec<ReportRow>, StoreError>> + Send {
        async move {
            Ok(self
                .device_report(serial_or_key)
                .await?
                .map(|report| report.rows)
                .unwrap_or_default())
        }
    }

    /// One recorded image.
    fn image(
        &self,
        sha256: Sha256Digest,
    ) -> impl Future<Output = Result<Option<ImageRow>, StoreError>> + Send;

    /// Every recorded image, newest import first.
    fn images(&self) -> impl Future<Output = Result<Vec<ImageRow>, StoreError>> + Send;

    /// The last `limit` events of this station, oldest first.
    fn recent_events(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// Every event about an attempt, oldest first.
    fn attempt_events(
        &self,
        attempt: AttemptId,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
}

/// Every write of the records, as the methods of one open transaction. Nothing
/// is recorded until the [`Records::write`] that opened it commits.
///
/// This is where each record is written, once: a write that belongs with every
/// record (the fleet's outbox, shipped to the hub) goes here, in the same
/// transaction as the record.
pub trait Writes: Send {
    /// Records an imported image, or updates its name and format if its sha256 is
    /// already recorded (the first import time is kept).
    fn record_image(
        &mut self,
        image: &ImageRow,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Starts a run of a recorded image with `options` (a JSON object: verify mode,
    /// eject on pass, target count …). Fails with [`StoreError::NotFound`] if the
    /// image was never recorded.
    fn start_run(
        &mut self,
        image_sha256: Sha256Digest,
        image_name: &str,
        options: &serde_json::Value,
    ) -> impl Future<Output = Result<RunId, StoreError>> + Send;

    /// Names the image a run wrote once it is known: a one-shot flash that
    /// writes while it imports starts its run under a provisional image row
    /// (the file's name, no digest yet) and, once the import has succeeded and
    /// before any verdict, records the image and sets it here. The run's
    /// image becomes `image_sha256` (which must be recorded); the provisional
    /// row `provisional` is removed when no run refers to it any more. Fails
    /// with [`StoreError::NotFound`] for an unknown run or image.
    fn set_run_image(
        &mut self,
        run: RunId,
        image_sha256: Sha256Digest,
        image_name: &str,
        provisional: Sha256Digest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stops a run; it takes no new attempts afterwards. Attempts still running carry
    /// on and are finished as usual. Fails with [`StoreError::RunStopped`] for a
    /// run stopped already. `detail`: what the station says of the stop
    /// beside its reason (a source's failure with its causes, a signal, an
    /// operator's note), given by the run's reports.
    fn stop_run(
        &mut self,
        run: RunId,
        reason: StopReason,
        detail: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a device by its [key](DeviceRow::key): inserts it, or updates its
    /// identity fields, capacity and last-seen time.
    fn upsert_device(
        &mut self,
        device: &DeviceRow,
    ) -> impl Future<Output = Result<DeviceId, StoreError>> + Send;

    /// Records that an attempt starts: commit it, and await the commit, before
    /// the first byte is written. The attempt is `running` in stage `preparing`,
    /// with the device's recorded capacity. The run must be open.
    fn start_attempt(
        &mut self,
        run: RunId,
        device: DeviceId,
        port_label: &str,
        port_path: &str,
    ) -> impl Future<Output = Result<AttemptId, StoreError>> + Send;

    /// Records that a running attempt entered `stage`, and logs it.
    fn attempt_stage(
        &mut self,
        attempt: AttemptId,
        stage: Stage,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a running attempt's verdict and figures; show the verdict only
    /// once the batch is committed. A failure with reason
    /// [`Interrupted`](flashrack_core::FailReason::Interrupted) or
    /// [`StationError`](flashrack_core::FailReason::StationError) (the station's
    /// side, not the stick's) makes the attempt `interrupted`, any other
    /// failure `failed`. Byte counts never go
    /// down: a heartbeat may have recorded more than the verdict's figures
    /// know, and then those are a lower bound.
    fn finish_attempt(
        &mut self,
        attempt: AttemptId,
        verdict: &Verdict,
        figures: &AttemptFigures,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Appends an entry to the event log (operator actions, ports and devices
    /// coming and going).
    fn record_event(
        &mut self,
        event: &EventRow,
    ) -> impl Future<Output = Result<EventId, StoreError>> + Send;

    /// Records that the target guard refused a device before any attempt
    /// (nothing was written), with the device's capacity as recorded, and logs
    /// it. A refusal at the moment of opening is the attempt's verdict instead
    /// ([`finish_attempt`](Self::finish_attempt) with reason `refused`).
    fn record_refusal(
        &mut self,
        refusal: &RefusalRow,
    ) -> impl Future<Output = Result<RefusalId, StoreError>> + Send;

    /// Notes that the station is alive. Call it now and then (every minute or so)
    /// while attempts run: after a crash, their end is recorded as the last moment
    /// the station was known alive, and a heartbeat makes that moment precise.
    fn heartbeat(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A [`heartbeat`](Self::heartbeat) that also records how far this station's
    /// running attempts have got: the bytes each target acknowledged, and the
    /// bytes read back. Call it every few seconds, not per progress tick. Counts
    /// never go down, and attempts that are no longer running (or belong to
    /// another station) are left alone. After a crash,
    /// [`Records::recover_interrupted`] keeps the last recorded count as a lower
    /// bound.
    fn record_progress(
        &mut self,
        running: &[RunningFigures],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One open transaction, as a [`Records::write`] closure gets it: the backend's
/// [`Writes`], through `Deref` (`batch.start_run(…)`).
///
/// Why a wrapper and not the backend's type itself: the closure's argument
/// `&'b mut Batch<'s, W>` tells the compiler that the batch lives no longer than
/// the borrow of the store (`'s`), so the future the closure returns may borrow
/// the caller's values (`batch.record_image(&image)`). Over a bare associated
/// type (`&'b mut R::Writes`) it could not know that, and a caller generic over
/// the backend could pass in only values it owns.
#[derive(Debug)]
pub struct Batch<'s, W> {
    /// The backend's open transaction.
    writes: W,
    /// Ties the batch to the borrow of its store.
    _store: PhantomData<&'s ()>,
}

impl<W: Writes> Batch<'_, W> {
    /// Wraps a backend's open transaction (for backends).
    pub fn new(writes: W) -> Self {
        Self {
            writes,
            _store: PhantomData,
        }
    }

    /// The backend's transaction, to commit it (for backends).
    pub fn into_writes(self) -> W {
        self.writes
    }
}

impl<W> Deref for Batch<'_, W> {
    type Target = W;

    fn deref(&self) -> &W {
        &self.writes
    }
}

impl<W> DerefMut for Batch<'_, W> {
    fn deref_mut(&mut self) -> &mut W {
        &mut self.writes
    }
}
