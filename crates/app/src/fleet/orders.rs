//! Following the hub's orders: the run the hub wants armed here.
//!
//! A poller long-polls the hub's orders (`?after=<version>`); the live
//! reporter hands over the orders the hub answers it with too. The follower
//! compares the newest orders with what the station shows and acts as an
//! operator would:
//! - an armed order whose run is not armed here: make sure the image is in
//!   the cache — if not, fetch it from the hub by its sha256 into a partial
//!   file of the data directory (resumed after a cut or a restart), accepted
//!   only when the bytes' sha256 is the order's, then imported with that
//!   digest expected — and arm the run with the order's id in its options;
//! - an order the hub no longer wants armed (or no order at all): stop the
//!   run armed under it.
//!
//! **Invariant:** a run is armed only over an image in the cache, whose name
//! is the sha256 of its bytes: fetched bytes enter the cache only through an
//! import that checks the digest again. **A local operator still decides:**
//! a run the station's operator armed is never stopped or replaced by an
//! order (the order is reported [`OrderState::Waiting`], with that run
//! named, until the run stops; then it is followed), and a run armed under an order and
//! stopped at the station is not armed again for that order (only a new
//! order arms again). Where the follower stands is reported to the hub as the
//! live report's [`OrderProgress`].
//!
//! **What the follower did is remembered in the records** (the store's
//! [`OrderMemory`], table `fleet_orders`), not in the process: after a
//! restart an order whose run was stopped here stays stopped, an order that
//! could not be followed is not tried again, and an order whose run ended
//! only because the station did (its stop reason `shutdown` or
//! `interrupted`) is armed again, once, as a new run under the same order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flashrack_core::{RunId, Sha256Digest, StopReason};
use flashrack_engine::SourceImage;
use flashrack_fleet::{OrderProgress, OrderState, Orders, RunOrder};
use flashrack_fleet_client::FetchError;
use flashrack_image::{CachedImage, ImageCache};
use flashrack_station::{
    ArmRequest, RunOptions, RunRefusal, Snapshot, StationError, StationHandle,
};
use flashrack_store::{OrderMemory, Records, Store};
use tokio::sync::watch;

use super::{Backoff, Fleet};
use crate::ShutdownSignal;

/// How long one long poll of the orders waits at the hub.
pub const POLL_WAIT: Duration = Duration::from_secs(25);

/// Where fetched images are kept until they are imported: `fleet/images`
/// in the data directory (on the cache's file system, so a partial fetch
/// survives a restart and the import needs no copy across devices).
pub fn fetch_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("fleet").join("images")
}

/// The partial file of the image `sha256`.
pub fn partial_path(data_dir: &Path, sha256: &Sha256Digest) -> PathBuf {
    fetch_dir(data_dir).join(format!("{}.part", sha256.to_hex()))
}

/// Removes what a station process stopped while following an order (killed,
/// a power cut) left in [`fetch_dir`] that nothing will resume, and says
/// what it removed:
/// - a fetched image under its import name (`<short sha256>/<name>`, or
///   `<short sha256>-<name>` from before): the
///   verified `.part` is renamed so before the import and removed after it,
///   so a stop during the import (minutes for a large image) kept the whole
///   image there for good; the next try fetches it afresh into a `.part`
///   (the short name cannot say which image it is);
/// - the `.part` of an image the cache holds: the follower takes the cached
///   image and never fetches it again.
///
/// The `.part` of an image the cache lacks is kept: a fetch of that image
/// (the same order after a restart, or a later one) resumes from it. Any
/// other file is not the follower's and is left alone. Called at start-up,
/// before the follower runs, by the process holding the data directory.
pub fn remove_stale_fetches(data_dir: &Path, images: &ImageCache) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fetch_dir(data_dir)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<sha256>.part` holds no '-'; an import name may end in ".part"
        // (an image named so).
        let cached_part = name.strip_suffix(".part").is_some_and(|hex| {
            Sha256Digest::parse(hex)
                .ok()
                .filter(|sha| sha.to_hex() == hex)
                .is_some_and(|sha| images.get(&sha).ok().flatten().is_some())
        });
        let import_name = name.split_once('-').is_some_and(|(short, _)| {
            short.len() == 12
                && short
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        // `<short sha256>/`: the directory an import takes its name in.
        let import_dir = name.len() == 12
            && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if import_dir {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => removed.push(path),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove a fetch left behind");
                }
            }
            continue;
        }
        let stale = cached_part || import_name;
        if !stale || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove a fetch left behind");
            }
        }
    }
    removed
}

/// Long-polls the hub's orders into `orders` until `shutdown`.
pub async fn poll(fleet: Fleet, orders: watch::Sender<Option<Orders>>, shutdown: ShutdownSignal) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let stop = shutdown.raised();
    tokio::pin!(stop);
    loop {
        let after = orders.borrow().as_ref().map(|o| o.version);
        let answer = tokio::select! {
            answer = fleet.client.orders(after, POLL_WAIT) => answer,
            () = &mut stop => return,
        };
        let wait = match answer {
            Ok(answer) => {
                fleet.contact();
                backoff.reset();
                orders.send_if_modified(|held| {
                    let newer = held.as_ref().is_none_or(|h| answer.version > h.version);
                    if newer {
                        *held = Some(answer);
                    }
                    newer
                });
                // Right away: the hub held the request until something
                // changed or its wait was over.
                None
            }
            Err(error) => {
                tracing::debug!(%error, "cannot poll the hub's orders");
                fleet.failed(&error);
                Some(backoff.next_wait())
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => return,
            }
        }
    }
}

/// What the follower needs besides the fleet.
pub struct Follower {
    /// The hub's client and the fleet view (where progress is reported).
    pub fleet: Fleet,
    /// The station to arm and stop.
    pub station: StationHandle,
    /// The image cache.
    pub images: ImageCache,
    /// The data directory (partial fetches live in [`fetch_dir`]).
    pub data_dir: PathBuf,
    /// The largest image accepted (the guard's largest target).
    pub max_image_size: u64,
    /// The station's records: what it did about each order is kept there.
    pub store: Store,
}

/// What one look at the orders ended with.
enum Step {
    /// Nothing more to do until the orders or the station change.
    Settled,
    /// Try again after this long (a fetch was cut, the hub is away).
    RetryAfter(Duration),
}

impl Follower {
    /// Follows the newest orders in `orders` until `shutdown`.
    pub async fn run(self, mut orders: watch::Receiver<Option<Orders>>, shutdown: ShutdownSignal) {
        let mut state = State::default();
        let mut snapshots = self.station.watch();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let stop = shutdown.raised();
        tokio::pin!(stop);
        loop {
            orders.mark_unchanged();
            snapshots.mark_unchanged();
            let wanted = orders.borrow().as_ref().and_then(|o| o.run.clone());
            let step = tokio::select! {
                step = self.step(wanted, &mut state) => step,
                // New orders: look again (a fetch in progress is dropped; its
                // partial file stays for the next try).
                _ = orders.changed() => continue,
                () = &mut stop => return,
            };
            match step {
                Step::Settled => {
                    backoff.reset();
                    tokio::select! {
                        changed = orders.changed() => if changed.is_err() { return },
                        changed = snapshots.changed() => if changed.is_err() { return },
                        () = &mut stop => return,
                    }
                }
                Step::RetryAfter(wait) => {
                    let wait = wait.max(backoff.next_wait());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = orders.changed() => {}
                        () = &mut stop => return,
                    }
                }
            }
        }
    }

    /// Brings the station in line with `wanted`, as far as it can now.
    async fn step(&self, wanted: Option<RunOrder>, state: &mut State) -> Step {
        let snapshot = self.station.snapshot();
        let armed = armed_run(&snapshot);
        let Some(order) = wanted.filter(|o| o.armed) else {
            // The hub wants no run: stop one armed under an order.
            if let Some((_, Some(order_id))) = armed {
                tracing::info!(order_id, "the hub withdrew its order: stopping the run");
                if let Err(error) = self
                    .station
                    .stop_run(&format!("stopped by the hub (order {order_id})"))
                    .await
                {
                    tracing::warn!(%error, "cannot stop the run the hub withdrew");
                    return Step::RetryAfter(Duration::from_secs(1));
                }
                let detail = "stopped by the hub".to_string();
                if self
                    .remember(
                        state,
                        order_id,
                        OrderMemory::Stopped {
                            detail: Some(detail.clone()),
                        },
                    )
                    .await
                    .is_err()
                {
                    return Step::RetryAfter(Duration::from_secs(1));
                }
                self.report(order_id, OrderState::Stopped, Some(detail));
            }
            return Step::Settled;
        };
        let id = order.order_id;
        if let Some((run, _)) = armed.filter(|&(_, armed_id)| armed_id == Some(id)) {
            let memory = OrderMemory::Armed { run };
            if state.known.get(&id) != Some(&memory)
                && self.remember(state, id, memory).await.is_err()
            {
                return Step::RetryAfter(Duration::from_secs(1));
            }
            self.report(id, OrderState::Armed, None);
            return Step::Settled;
        }
        // What this station did about the order before: in this process or
        // in an earlier one.
        let memory = match self.recall(state, id).await {
            Ok(memory) => memory,
            Err(()) => return Step::RetryAfter(Duration::from_secs(1)),
        };
        match memory {
            Some(OrderMemory::Failed { detail }) => {
                self.report(id, OrderState::Failed, Some(detail));
                return Step::Settled;
            }
            Some(OrderMemory::Stopped { detail }) => {
                self.report(id, OrderState::Stopped, detail);
                return Step::Settled;
            }
            Some(OrderMemory::Armed { run }) => {
                // Armed here before, and no longer: how did its run end?
                match self.store.run(run).await {
                    Ok(Some(summary)) => match (summary.run.stopped_at, summary.run.stop_reason) {
                        // Not recorded as stopped yet: look again soon.
                        (None, _) => return Step::RetryAfter(Duration::from_secs(1)),
                        // The run ended with the station (a shutdown, a
                        // crash): the order still stands, armed again below.
                        (Some(_), Some(StopReason::Shutdown | StopReason::Interrupted) | None) => {
                            tracing::info!(
                                order_id = id,
                                run = run.0,
                                "the order's run ended with the station: arming it again"
                            );
                        }
                        // Stopped here (the operator, the target count, the
                        // source): not armed again for this order.
                        (Some(_), Some(reason)) => {
                            let detail = Some(format!(
                                "stopped at the station ({})",
                                stop_reason_text(reason)
                            ));
                            if self
                                .remember(
                                    state,
                                    id,
                                    OrderMemory::Stopped {
                                        detail: detail.clone(),
                                    },
                                )
                                .await
                                .is_err()
                            {
                                return Step::RetryAfter(Duration::from_secs(1));
                            }
                            self.report(id, OrderState::Stopped, detail);
                            return Step::Settled;
                        }
                    },
                    // A run the records do not hold: armed again.
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the run of the hub's order");
                        return Step::RetryAfter(Duration::from_secs(1));
                    }
                }
            }
            None => {}
        }
        match armed {
            Some((_, Some(other))) => {
                // An older order's run: the hub replaced it.
                tracing::info!(old = other, new = id, "a new order replaces the armed one");
                if let Err(error) = self
                    .station
                    .stop_run(&format!("replaced by the hub's order {id}"))
                    .await
                {
                    tracing::warn!(%error, "cannot stop the run of the replaced order");
                    return Step::RetryAfter(Duration::from_secs(1));
                }
            }
            Some((run, None)) => {
                // Not a failure: the station's snapshot changes when that
                // run stops, and the order is followed then.
                self.report(id, OrderState::Waiting, Some(waiting_for(run)));
                return Step::Settled;
            }
            None => {}
        }
        let image = match self.image(&order).await {
            Ok(image) => image,
            Err(Retry::Later(wait)) => return Step::RetryAfter(wait),
            Err(Retry::Never(why)) => {
                tracing::error!(order_id = id, %why, "cannot follow the hub's order");
                return self.give_up(state, id, why).await;
            }
        };
        let options = match run_options(&order) {
            Ok(options) => options,
            Err(why) => return self.give_up(state, id, why).await,
        };
        if let Some(refusal) = image.raw_write_refusal().filter(|_| !options.force_raw) {
            // Inspection says a raw copy would not boot; the hub's order
            // may force it with `"force_raw": true` in its options.
            let why = format!(
                "the image is refused for a raw run: {refusal} (\"force_raw\": true in the order's options)"
            );
            // In the station's event log as well as the order's memory: the
            // station's records say what it refused, whoever asked.
            if let Err(error) = self
                .station
                .record_run_refused(RunRefusal {
                    image_sha256: Some(image.manifest.sha256()),
                    image_name: order.image_name.clone(),
                    reason: refusal.reason,
                    advice: refusal.advice,
                    options,
                })
                .await
            {
                tracing::error!(order_id = id, %error, "cannot record a refused run");
            }
            return self.give_up(state, id, why).await;
        }
        // A sparse order is written by the image's block map (kept, or
        // generated now), as a sparse run of the dashboard's; none is a
        // reason the order cannot be followed.
        let mut options = options;
        let sparse = if options.sparse {
            let (images, found) = (self.images.clone(), image.clone());
            let map =
                tokio::task::spawn_blocking(move || crate::images::sparse_map(&images, &found))
                    .await
                    .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
            match map {
                Ok(map) => {
                    options.sparse_map = Some(map.source());
                    Some(std::sync::Arc::new(map.ranges))
                }
                Err(error) => {
                    let why = crate::downloads::error_chain(&error);
                    return self.give_up(state, id, why).await;
                }
            }
        } else {
            None
        };
        let request = ArmRequest {
            image: SourceImage {
                path: image.path.clone(),
                manifest: image.manifest.clone(),
                referenced: image.meta.reference.is_some(),
            },
            image_name: order.image_name.clone(),
            options,
            sparse,
        };
        match self.station.arm(request).await {
            Ok(run) => {
                tracing::info!(order_id = id, run = run.id.0, "armed the hub's order");
                // Remembered after the arming: a crash in between leaves a
                // run that the next start records as interrupted, and an
                // order without memory, armed again then, as it should be.
                if self
                    .remember(state, id, OrderMemory::Armed { run: run.id })
                    .await
                    .is_err()
                {
                    return Step::RetryAfter(Duration::from_secs(1));
                }
                self.report(id, OrderState::Armed, None);
                Step::Settled
            }
            // The station's operator armed a run between the look at the
            // snapshot and the arming: the order waits for it, as above.
            Err(StationError::AlreadyArmed(run)) => {
                self.report(id, OrderState::Waiting, Some(waiting_for(run)));
                Step::Settled
            }
            // The records are taking another run's start or the last run's
            // stop: asked again once they have (a moment, or their busy
            // timeout).
            Err(StationError::Arming | StationError::Stopping(_)) => {
                Step::RetryAfter(Duration::from_secs(1))
            }
            Err(error) => {
                // A source that cannot be read: said, and tried again when
                // something changes.
                self.report(id, OrderState::Failed, Some(error.to_string()));
                Step::Settled
            }
        }
    }

    /// Gives up order `id` for good (remembered), and says why.
    async fn give_up(&self, state: &mut State, id: i64, why: String) -> Step {
        let remembered = self
            .remember(
                state,
                id,
                OrderMemory::Failed {
                    detail: why.clone(),
                },
            )
            .await;
        self.report(id, OrderState::Failed, Some(why));
        match remembered {
            Ok(()) => Step::Settled,
            Err(()) => Step::RetryAfter(Duration::from_secs(1)),
        }
    }

    /// What the station did about order `id`: from this process's copy, or
    /// read from the records once.
    async fn recall(&self, state: &mut State, id: i64) -> Result<Option<OrderMemory>, ()> {
        if let Some(memory) = state.known.get(&id) {
            return Ok(Some(memory.clone()));
        }
        match self.store.order_memory(id).await {
            Ok(memory) => {
                if let Some(memory) = &memory {
                    state.known.insert(id, memory.clone());
                }
                Ok(memory)
            }
            Err(error) => {
                tracing::warn!(%error, order_id = id, "cannot read what was done about the order");
                Err(())
            }
        }
    }

    /// Remembers what the station did about order `id`, in the records first.
    async fn remember(&self, state: &mut State, id: i64, memory: OrderMemory) -> Result<(), ()> {
        match self.store.remember_order(id, memory.clone()).await {
            Ok(()) => {
                state.known.insert(id, memory);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, order_id = id, "cannot record what was done about the order");
                Err(())
            }
        }
    }

    /// The order's image from the cache, fetched from the hub first when the
    /// cache lacks it.
    async fn image(&self, order: &RunOrder) -> Result<CachedImage, Retry> {
        let sha = order.image_sha256;
        if let Some(image) = self.cached(sha).await {
            return Ok(image);
        }
        if order.image_size > self.max_image_size {
            return Err(Retry::Never(format!(
                "the image is {} bytes, more than the largest target this station writes",
                order.image_size
            )));
        }
        let dir = fetch_dir(&self.data_dir);
        if let Err(error) = tokio::fs::create_dir_all(&dir).await {
            return Err(Retry::Never(format!(
                "cannot create {}: {error}",
                dir.display()
            )));
        }
        let partial = partial_path(&self.data_dir, &sha);
        let size = order.image_size;
        // Whether this fetch resumes from bytes kept before (a cut, a
        // restart): their digest is known only once the rest has arrived.
        let resuming = tokio::fs::metadata(&partial)
            .await
            .is_ok_and(|m| m.len() > 0 && m.len() <= size);
        self.report(
            order.order_id,
            OrderState::Fetching,
            Some(format!("0 of {size} bytes")),
        );
        let mut told = Instant::now();
        let fetched = self
            .fleet
            .client
            .fetch_image(sha, size, &partial, |held| {
                if told.elapsed() >= Duration::from_millis(500) {
                    told = Instant::now();
                    self.report(
                        order.order_id,
                        OrderState::Fetching,
                        Some(format!("{held} of {size} bytes")),
                    );
                }
            })
            .await;
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                let words = format!("fetching the image: {error}");
                tracing::warn!(order_id = order.order_id, %error, "cannot fetch the order's image");
                let transient = match &error {
                    FetchError::Client(e) => e.is_transient(),
                    FetchError::Interrupted { .. } | FetchError::Io { .. } => true,
                    // The bytes kept from before may be the wrong ones (a
                    // damaged partial file): the partial is gone, so the
                    // next try fetches the whole image afresh. Wrong bytes
                    // from a fresh fetch are the hub's: given up.
                    FetchError::DigestMismatch { .. } => resuming,
                    _ => false,
                };
                if transient {
                    self.report(order.order_id, OrderState::Fetching, Some(words));
                    return Err(Retry::Later(Duration::from_millis(500)));
                }
                return Err(Retry::Never(words));
            }
        };
        tracing::info!(
            order_id = order.order_id,
            resumed_from = fetched.resumed_from,
            received = fetched.received,
            "fetched the order's image; its sha256 matches"
        );
        // The verified file, under the image's own name (the cache keeps
        // the name it was imported from: it was "<sha>-<name>"), imported
        // with its digest expected, and kept with where it came from: the
        // hub, for this order.
        let own_dir = dir.join(sha.short());
        let named = own_dir.join(file_name(&order.image_name));
        let images = self.images.clone();
        let max = self.max_image_size;
        let provenance = flashrack_core::Provenance {
            url: format!(
                "{}{}/{}",
                self.fleet.client.hub().trim_end_matches('/'),
                flashrack_fleet::paths::IMAGES,
                sha.to_hex()
            ),
            etag: None,
            last_modified: None,
            digest_source: flashrack_core::DigestSource::Operator { sha256: sha },
            captured: None,
            built: None,
            bmap_lookup_failed: None,
        };
        let imported = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&own_dir)?;
            std::fs::rename(&fetched.path, &named)?;
            let outcome =
                crate::images::import(&images, &named, Some(sha), flashrack_core::ByteSize(max));
            let _ = std::fs::remove_file(&named);
            let _ = std::fs::remove_dir(&own_dir);
            outcome
                .map(|mut outcome| {
                    outcome.image = images.found_with_provenance(outcome.image, provenance);
                    outcome
                })
                .map_err(std::io::Error::other)
        })
        .await;
        match imported {
            Ok(Ok(outcome)) => Ok(outcome.image),
            Ok(Err(error)) => Err(Retry::Never(format!(
                "importing the fetched image: {error}"
            ))),
            Err(error) => Err(Retry::Never(error.to_string())),
        }
    }

    async fn cached(&self, sha: Sha256Digest) -> Option<CachedImage> {
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.get(&sha).ok().flatten())
            .await
            .ok()
            .flatten()
    }

    /// Says where the station stands with order `order_id` (shown at the
    /// station's API and sent with the next live report).
    fn report(&self, order_id: i64, state: OrderState, detail: Option<String>) {
        let progress = OrderProgress {
            order_id,
            state,
            detail,
        };
        self.fleet.view.send_if_modified(|view| {
            let changed = view.order.as_ref() != Some(&progress);
            view.order = Some(progress);
            changed
        });
    }
}

/// This process's copy of what the records say was done about each order
/// (see [`OrderMemory`]): read once per order, written through.
#[derive(Default)]
struct State {
    known: HashMap<i64, OrderMemory>,
}

/// Why the image is not there yet.
enum Retry {
    /// Try again after a while (the hub is away, the transfer was cut).
    Later(Duration),
    /// Not with this order.
    Never(String),
}

/// The armed run, with the order it was armed under.
fn armed_run(snapshot: &Snapshot) -> Option<(RunId, Option<i64>)> {
    snapshot
        .run
        .as_ref()
        .filter(|run| run.armed)
        .map(|run| (run.id, run.options.order_id))
}

/// Why an order waits: the station's own run `run` is armed.
fn waiting_for(run: RunId) -> String {
    format!(
        "run {} armed by the station's operator is in the way: the order waits until it is stopped",
        run.0
    )
}

/// A stop reason as the records and the API spell it (`operator` …).
fn stop_reason_text(reason: StopReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{reason:?}"))
}

/// The run options of an order ([`RunOptions::of_order`], the rules the
/// hub judged the lot by too), with the order's id, and the hub's lot as the
/// run's lot: its records and reports name it as the hub does (they named
/// none, or a "lot" option of the order's own).
fn run_options(order: &RunOrder) -> Result<RunOptions, String> {
    let mut options = RunOptions::of_order(&order.options)?;
    options.order_id = Some(order.order_id);
    options.lot = Some(order.lot.clone());
    Ok(options)
}

/// A name for a file, from an image's name (no directories, nothing hidden).
fn file_name(name: &str) -> String {
    flashrack_core::file_name_from(name, 100).unwrap_or_else(|| "image".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(options: serde_json::Value) -> RunOrder {
        RunOrder {
            order_id: 42,
            lot: "lot-1".into(),
            image_sha256: Sha256Digest::of(b"image"),
            image_name: "image.img".into(),
            image_size: 5,
            options,
            armed: true,
        }
    }

    #[test]
    fn an_orders_options_arm_a_run_that_names_the_order() {
        let options = run_options(&order(
            serde_json::json!({ "verify": "hash", "target_count": 3 }),
        ))
        .unwrap();
        assert_eq!(options.verify, flashrack_core::VerifyMode::Hash);
        assert_eq!(options.target_count, Some(3));
        assert!(!options.eject_on_pass);
        assert_eq!(options.order_id, Some(42));
        let json = serde_json::to_value(&options).unwrap();
        assert_eq!(json["order_id"], 42);
        // An order cannot arm under another order's id.
        let options = run_options(&order(serde_json::json!({ "order_id": 7 }))).unwrap();
        assert_eq!(options.order_id, Some(42));
        // The run's lot is the hub's lot, whatever the options say (the
        // station's records named none, or an option's other name).
        assert_eq!(options.lot.as_deref(), Some("lot-1"));
        let options = run_options(&order(serde_json::json!({ "lot": "mine" }))).unwrap();
        assert_eq!(options.lot.as_deref(), Some("lot-1"));
    }

    #[test]
    fn unusable_order_options_are_said_not_guessed() {
        assert!(run_options(&order(serde_json::json!({ "verify": "maybe" }))).is_err());
        assert!(run_options(&order(serde_json::json!({ "target_count": 0 }))).is_err());
        // The station's own rules for a run, as for an operator's (both were
        // armed through the hub).
        let why = run_options(&order(serde_json::json!({ "retries": 50 }))).unwrap_err();
        assert!(why.ends_with("retries must be at most 10"), "{why}");
        let why =
            run_options(&order(serde_json::json!({ "audit": true, "retries": 2 }))).unwrap_err();
        assert!(why.ends_with("there is no write to retry"), "{why}");
        assert!(run_options(&order(serde_json::json!([1, 2]))).is_err());
        assert!(run_options(&order(serde_json::Value::Null)).is_ok());
        // A misspelt option is refused, not dropped for the default.
        let why = run_options(&order(serde_json::json!({ "target": 5 }))).unwrap_err();
        assert!(
            why.starts_with("the order's options name no option \"target\" (known: verify, "),
            "{why}"
        );
    }

    #[test]
    fn the_option_names_an_order_may_set_are_the_run_options_fields() {
        // Every field set, so that none is left out of the JSON.
        let every = RunOptions {
            verify: flashrack_core::VerifyMode::Hash,
            eject_on_pass: true,
            target_count: Some(2),
            operator: Some("ann".into()),
            lot: Some("lot".into()),
            order_id: Some(1),
            force_raw: true,
            sparse: true,
            sparse_map: Some("bmap file x.bmap (format 2.0)".into()),
            sample: Some(flashrack_core::SamplePercent::from_percent(5.0).unwrap()),
            audit: true,
            retries: 1,
        };
        let mut json = serde_json::to_value(&every).unwrap();
        // Where a sparse run's map came from is the station's to say when
        // it takes the map, not an order's.
        assert!(json.as_object_mut().unwrap().remove("sparse_map").is_some());
        let mut names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        let mut known = flashrack_core::RUN_OPTION_NAMES.to_vec();
        known.sort_unstable();
        assert_eq!(names, known);
    }

    #[test]
    fn an_image_name_becomes_a_plain_file_name() {
        assert_eq!(file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(file_name("..."), "image");
        assert_eq!(file_name("debian 13.iso"), "debian_13.iso");
    }
}
