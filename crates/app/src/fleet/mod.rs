//! The station's side of the fleet: shipping its records to the hub, reporting
//! its rack live, and following the hub's orders. Three tasks beside the
//! station, started by [`Application`](crate::Application) when the
//! configuration has a `[fleet]` section:
//! - [`shipper`]: reads the outbox in order, sends batches, marks them
//!   shipped only on the hub's acknowledgement, backs off while the hub is
//!   down and drains the backlog when it is back;
//! - [`live`]: the station's snapshot pushed to the hub when it changes (at
//!   most 4 times a second) and every few seconds regardless;
//! - [`orders`]: long-polls the hub's orders, fetches a missing image by its
//!   sha256 (resumable, verified) and arms or stops the run the hub asks for.
//!
//! **Architecture invariant:** the station never waits on the network. The
//! tasks only read what the station publishes (snapshots, events) and the
//! outbox its records already hold, and send it the same commands an operator
//! does; nothing of the station, its journal or the web side awaits them.
//! With the hub down, sticks are written, verdicts recorded and reports
//! served as before, and the outbox grows.

pub mod live;
pub mod orders;
pub mod shipper;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashrack_fleet_client::HubClient;
use flashrack_web::FleetView;
use tokio::sync::watch;

/// The file in a data directory holding the station's instance id.
pub const INSTANCE_FILE: &str = "fleet-instance";

/// The station's instance id at the hub ([`LiveReport::instance`](flashrack_fleet::LiveReport::instance)),
/// kept in `data_dir`'s [`INSTANCE_FILE`]; made (32 random hex digits) the
/// first time.
///
/// One per data directory, not per process: two stations running under one
/// station id have two data directories (one flashrack process holds a data
/// directory), so they have two instances and the hub refuses the second's
/// live reports, while a station restarted (an upgrade, a crash) is the same
/// instance and is taken at once, not refused until the hub calls its last
/// process silent. A station whose data directory is started afresh is a new
/// instance, as its records are a new history.
///
/// [`BINDING_FILE`] beside it names the directory the id was made for
/// ([`made_for`]: the machine's id and the directory's inode). A data
/// directory copied to make another station (`cp -a`, a restored backup, on
/// this machine or another) does not match it, and gets a new id: two
/// stations started from copies of one directory are two instances, not one
/// the hub cannot tell apart. An id without a binding (made by an older
/// flashrack) is kept and bound. The id file keeps its format, so that an
/// older flashrack started on the directory (a rollback) still reads it.
pub fn instance_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join(INSTANCE_FILE);
    let binding_path = data_dir.join(BINDING_FILE);
    let here = made_for(data_dir)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if !valid_instance(id) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("it holds {:?}, not an instance id (32 hex digits); remove it to have a new one made", text.chars().take(80).collect::<String>()),
                ));
            }
            let bound = match std::fs::read_to_string(&binding_path) {
                Ok(bound) => Some(bound.trim().to_string()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => return Err(error),
            };
            match bound {
                Some(bound) if bound == here => return Ok(id.to_string()),
                Some(bound) => {
                    tracing::warn!(file = %binding_path.display(), made_for = %bound, %here,
                        "the data directory is a copy of another station's: this station is a new instance at the hub");
                }
                None => {
                    write_whole(data_dir, &binding_path, &here)?;
                    return Ok(id.to_string());
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // The id first: a crash before the binding is written leaves an id bound
    // to nothing or to the original, which the next start replaces again,
    // never the original's id bound here.
    write_whole(data_dir, &path, &id)?;
    write_whole(data_dir, &binding_path, &here)?;
    Ok(id)
}

/// The file beside [`INSTANCE_FILE`] naming the data directory its id was
/// made for ([`instance_id`]).
pub const BINDING_FILE: &str = "fleet-instance.for";

/// Writes `line` as the whole of the file at `path`, whole or not at all: a
/// crash leaves no half line.
fn write_whole(
    data_dir: &std::path::Path,
    path: &std::path::Path,
    line: &str,
) -> std::io::Result<()> {
    let mut staged = tempfile::NamedTempFile::new_in(data_dir)?;
    std::io::Write::write_all(&mut staged, format!("{line}\n").as_bytes())?;
    staged.as_file().sync_all()?;
    staged.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The line naming the data directory an instance id is made for: the
/// machine's id (`/etc/machine-id`, empty where there is none) and the
/// directory's inode number. A copy of the directory has another inode; a
/// copy on another machine, another machine id. The device number is left
/// out: it may change from one boot to the next (a btrfs subvolume's), the
/// inode does not.
fn made_for(data_dir: &std::path::Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let inode = std::fs::metadata(data_dir)?.ino();
    Ok(format!("for machine={} dir-inode={inode}", machine.trim()))
}

/// Whether `id` is an instance id as [`instance_id`] makes them.
fn valid_instance(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The fleet's shared state: the client, and the view the web side shows.
#[derive(Clone)]
pub struct Fleet {
    /// The hub's client.
    pub client: HubClient,
    /// The station's instance id ([`instance_id`]), sent with every live
    /// report.
    pub instance: String,
    /// The station's link to the hub, as shown at `GET /api/v1/fleet`.
    pub view: Arc<watch::Sender<FleetView>>,
    /// Whether the shipper's last batch failed: its error then stays the
    /// view's `last_error` until a batch is acknowledged, whatever the live
    /// reports and orders' polls meet. The hub may answer those and refuse
    /// every batch (another station ships under this station's id): their
    /// success must not hide why the backlog only grows. An atomic: set by
    /// the shipper, read by every task's `contact`.
    batch_failed: Arc<AtomicBool>,
    /// Whether the hub refused the live reporter's last report with a 409
    /// (another instance reports under this station's id): its words stay
    /// the view's `last_error` until a report is taken, whatever the
    /// batches and the orders' polls meet, for the reason above. An atomic:
    /// set by the live reporter, read by every task's `contact`.
    live_refused: Arc<AtomicBool>,
}

impl Fleet {
    /// A fleet link over `client`, as the station `instance`, not yet
    /// connected.
    pub fn new(client: HubClient, instance: String) -> Self {
        let view = FleetView::new(client.hub(), client.station_id());
        Self {
            client,
            instance,
            view: Arc::new(watch::channel(view).0),
            batch_failed: Arc::new(AtomicBool::new(false)),
            live_refused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Records an exchange with the hub that succeeded.
    /// A batch refused or lost, or a live report refused, stays the
    /// `last_error` (see [`shipped`](Self::shipped) and
    /// [`reported`](Self::reported)).
    pub(crate) fn contact(&self) {
        let keep_error =
            self.batch_failed.load(Ordering::Relaxed) || self.live_refused.load(Ordering::Relaxed);
        self.view.send_if_modified(|view| {
            let changed = !view.connected || (!keep_error && view.last_error.is_some());
            view.connected = true;
            if !keep_error {
                view.last_error = None;
            }
            view.last_contact_at = Some(now_ms());
            changed
        });
    }

    /// Records a batch the hub acknowledged: the shipper's error, if any,
    /// is over.
    pub(crate) fn shipped(&self) {
        self.batch_failed.store(false, Ordering::Relaxed);
        self.contact();
    }

    /// Records a batch that failed (the hub unreachable, or refusing it):
    /// its error stays the `last_error` until a batch is acknowledged.
    pub(crate) fn ship_failed(&self, error: &str) {
        self.batch_failed.store(true, Ordering::Relaxed);
        self.lost(error);
    }

    /// Records a live report the hub took: a refusal of the reports, if
    /// any, is over.
    pub(crate) fn reported(&self) {
        self.live_refused.store(false, Ordering::Relaxed);
        self.contact();
    }

    /// Records a live report that failed. A 409 (the hub's view of this
    /// station id is another instance's) stays the `last_error` until a
    /// report is taken; any other failure is as [`failed`](Self::failed).
    pub(crate) fn report_failed(&self, error: &flashrack_fleet_client::ClientError) {
        use flashrack_fleet_client::ClientError;
        if let ClientError::Status { status: 409, .. } = error {
            tracing::warn!(%error, "the hub refuses this station's live reports");
            self.live_refused.store(true, Ordering::Relaxed);
            self.lost(&error.to_string());
        } else {
            self.failed(error);
        }
    }

    /// Records a failed request of the live reporter or the orders' poller:
    /// the hub is unreachable or refuses the token. Another answer (a hub
    /// without that endpoint, a 5xx) is only logged: the shipper's batches
    /// say whether records reach the hub.
    pub(crate) fn failed(&self, error: &flashrack_fleet_client::ClientError) {
        use flashrack_fleet_client::ClientError;
        match error {
            ClientError::Unreachable(_) | ClientError::Refused { .. } => {
                self.lost(&error.to_string());
            }
            _ => tracing::warn!(%error, "the hub refused a request"),
        }
    }

    /// Records an exchange with the hub that failed.
    pub(crate) fn lost(&self, error: &str) {
        self.view.send_if_modified(|view| {
            let changed = view.connected || view.last_error.as_deref() != Some(error);
            view.connected = false;
            view.last_error = Some(error.to_string());
            changed
        });
    }
}

/// Unix milliseconds now, by the station's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Waits between tries while the hub cannot be reached: doubling from
/// `first` up to `max`, with ±20 % jitter so that a rack of stations that lost
/// the hub together do not come back in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The next wait, and doubles the one after.
    pub(crate) fn next_wait(&mut self) -> Duration {
        use rand::Rng;
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait.mul_f64(rand::rng().random_range(0.8..1.2))
    }

    /// After a success: the next failure waits `first` again.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn the_backoff_doubles_up_to_its_maximum_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait()).collect();
        let nominal = [250, 500, 1000, 2000, 4000, 5000, 5000, 5000];
        for (wait, nominal) in waits.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *wait >= nominal.mul_f64(0.8) && *wait <= nominal.mul_f64(1.2),
                "{wait:?} vs {nominal:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(300));
    }

    #[test]
    fn an_instance_id_is_made_once_per_data_directory_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = super::instance_id(dir.path()).unwrap();
        assert_eq!(made.len(), 32, "{made}");
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
        // A restart reads the same id: the hub takes it as the same station.
        assert_eq!(super::instance_id(dir.path()).unwrap(), made);
        // Another data directory is another station.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(super::instance_id(other.path()).unwrap(), made);
        // The id file holds the id alone (an older flashrack reads it);
        // the file beside it names the directory it was made for.
        let text = std::fs::read_to_string(dir.path().join(super::INSTANCE_FILE)).unwrap();
        assert_eq!(text, format!("{made}\n"));
        let bound = std::fs::read_to_string(dir.path().join(super::BINDING_FILE)).unwrap();
        assert!(bound.starts_with("for machine="), "{bound}");
        // A copy of the data directory (`cp -a`) is another station: the
        // files came along, but were made for the original.
        let copy = tempfile::tempdir().unwrap();
        for file in [super::INSTANCE_FILE, super::BINDING_FILE] {
            std::fs::copy(dir.path().join(file), copy.path().join(file)).unwrap();
        }
        let copied = super::instance_id(copy.path()).unwrap();
        assert_ne!(copied, made);
        assert_eq!(super::instance_id(copy.path()).unwrap(), copied);
        // The original is still itself.
        assert_eq!(super::instance_id(dir.path()).unwrap(), made);
        // An id an older flashrack made (no binding) keeps its id, and is
        // bound to its directory from now on.
        let older = tempfile::tempdir().unwrap();
        let old_id = "0123456789abcdef0123456789abcdef";
        std::fs::write(
            older.path().join(super::INSTANCE_FILE),
            format!("{old_id}\n"),
        )
        .unwrap();
        assert_eq!(super::instance_id(older.path()).unwrap(), old_id);
        assert!(older.path().join(super::BINDING_FILE).exists());
        assert_eq!(super::instance_id(older.path()).unwrap(), old_id);
        assert_eq!(
            std::fs::read_to_string(older.path().join(super::INSTANCE_FILE)).unwrap(),
            format!("{old_id}\n"),
            "the id file is as an older flashrack reads it"
        );
        // A file that holds no id is refused, not replaced: a new id would
        // make the station another one at the hub.
        std::fs::write(dir.path().join(super::INSTANCE_FILE), "half").unwrap();
        let error = super::instance_id(dir.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("holds \"half\", not an instance id"),
            "{error}"
        );
    }
}
