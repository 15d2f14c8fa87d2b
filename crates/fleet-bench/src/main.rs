//! The fleet benchmark (issue 12 §7; see `bench/README.md`): simulated
//! stations shipping their records through the real shipping code (each
//! station a whole `flashrack-app` application over a simulated rack: engine,
//! SQLite records with the outbox, shipper, live reporter) into one real hub
//! (the `flashrack hub` binary, its own process) over a throwaway PostgreSQL
//! cluster on this machine.
//!
//! `fleet` measures verdict-to-visible latency (a verdict shown at the
//! station, until the operators' event stream at the hub counts it),
//! records ingested per second, the catch-up of a backlog after the hub was
//! killed, the hub's and PostgreSQL's CPU and memory, and checks that the
//! hub holds exactly what each station shipped (no loss, no duplicates).
//! `ingest` measures the hub's ingest alone: one station's records posted in
//! batches as fast as the hub takes them.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flashrack_app::demo::{self, Demo, DemoOptions};
use flashrack_app::{Application, Recording};
use flashrack_config::FleetConfig;
use flashrack_core::{
    AttemptFigures, AttemptId, AttemptState, ByteSize, RunId, Sha256Digest, Stage, Verdict,
};
use flashrack_fleet::{
    AttemptRecord, DeviceRecord, EventRecord, FleetRecord, OutboxEntry, RecordBatch, RunRecord,
    PROTOCOL_VERSION,
};
use flashrack_fleet_client::HubClient;
use flashrack_hub::pg::{Role, StationRecords};
use flashrack_hub::HubDb;
use flashrack_station::PortState;
use flashrack_store::Store;
use flashrack_testkit::pg::PgCluster;

#[derive(Debug, Parser)]
#[command(about = "The fleet benchmark: stations, a hub and PostgreSQL on this machine")]
struct Args {
    /// The flashrack binary that runs the hub.
    #[arg(long, default_value = "target/release/flashrack")]
    flashrack: PathBuf,
    /// Where the stations' data directories and the hub's go (removed at
    /// the end); a tmpfs keeps the stations' disk writes out of the figures.
    /// A relative path is taken from the current directory; a directory that
    /// exists must be empty or one this benchmark made (see [`work_dir`]).
    #[arg(long, default_value = "/var/tmp/flashrack-fleet-bench")]
    workdir: PathBuf,
    /// PostgreSQL without durable commits (`fsync=off`), as the tests run it.
    #[arg(long)]
    no_fsync: bool,
    #[command(subcommand)]
    command: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// 50 stations × 32 ports through the real shipping code.
    Fleet {
        /// Stations.
        #[arg(long, default_value_t = 50)]
        stations: usize,
        /// Ports per station.
        #[arg(long, default_value_t = 32)]
        ports: usize,
        /// The demo image's size (each attempt writes and reads it back).
        #[arg(long, default_value = "1MiB")]
        image_size: ByteSize,
        /// Seconds of steady load before measuring.
        #[arg(long, default_value_t = 15)]
        warmup: u64,
        /// Seconds of steady load measured.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// The backlog (records, all stations together) to build up while
        /// the hub is down, then to catch up.
        #[arg(long, default_value_t = 100_000)]
        backlog: u64,
        /// The longest wait for the backlog to build up, in seconds.
        #[arg(long, default_value_t = 600)]
        backlog_timeout: u64,
    },
    /// One station's records posted in batches, as fast as the hub takes
    /// them.
    Ingest {
        /// Records in all.
        #[arg(long, default_value_t = 20_000)]
        records: u64,
        /// Records per batch.
        #[arg(long, default_value_t = 500)]
        batch: u64,
    },
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.workdir = work_dir(&args.workdir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pg = PgCluster::start_with(if args.no_fsync { "-c fsync=off" } else { "" });
    let result = runtime.block_on(async {
        match &args.command {
            What::Ingest { records, batch } => ingest(&args, &pg, *records, *batch).await,
            What::Fleet { .. } => fleet(&args, &pg).await,
        }
    });
    drop(runtime);
    drop(pg);
    let _ = std::fs::remove_dir_all(&args.workdir);
    result
}

/// The file that marks a work directory as this benchmark's: only such a
/// directory (or an empty one) is cleared at the start.
const WORKDIR_MARK: &str = ".flashrack-fleet-bench";

/// Makes `given` the benchmark's fresh, empty work directory and returns it
/// as an absolute path: the stations' and the hub's directories are named
/// from it, and the hub refuses a relative `data_dir` (its image cache would
/// depend on the directory it was started in). A directory that exists is
/// cleared only when it is empty or holds [`WORKDIR_MARK`]: the whole tree is
/// removed, so `--workdir .` or a home directory is refused, not wiped.
fn work_dir(given: &Path) -> Result<PathBuf> {
    let dir = std::path::absolute(given)
        .with_context(|| format!("--workdir {}: cannot make it absolute", given.display()))?;
    if dir.exists() {
        let mut entries = std::fs::read_dir(&dir)
            .with_context(|| format!("--workdir {}: cannot read it", dir.display()))?;
        // An empty directory is used as it is (it may be a mount point).
        if entries.next().is_some() {
            if !dir.join(WORKDIR_MARK).exists() {
                bail!(
                    "--workdir {}: refusing to clear a directory this benchmark did not make \
                     (it is not empty and holds no {WORKDIR_MARK}); name a new or empty \
                     directory",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(WORKDIR_MARK),
        "made by flashrack-fleet-bench; removed at its end\n",
    )
    .with_context(|| format!("marking {}", dir.display()))?;
    Ok(dir)
}

/// The hub's configuration in `workdir`: listening on `port`, over
/// `database_url`, its directory `workdir/hub`.
fn hub_toml(workdir: &Path, database_url: &str, port: u16) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{database_url}\"\n\
         data_dir = \"{}\"\ndatabase_connections = 16\n",
        workdir.join("hub").display()
    )
}

/// A `flashrack hub` process and how to find it.
struct HubProcess {
    child: Child,
    url: String,
}

impl HubProcess {
    /// Starts `flashrack hub` on `port`; waits for its address line.
    fn start(args: &Args, database_url: &str, port: u16) -> Result<Self> {
        let config = args.workdir.join("hub.toml");
        std::fs::write(&config, hub_toml(&args.workdir, database_url, port))?;
        let mut child = Command::new(&args.flashrack)
            .args(["hub", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", args.flashrack.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("the hub's stdout")?).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("hub: ")
            .with_context(|| format!("the hub said {line:?}"))?
            .trim_end_matches('/')
            .to_string();
        Ok(Self { child, url })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds (user + system) and memory of a process tree, from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_secs: f64,
    /// Resident memory now: RSS for one process, the sum of proportional set
    /// sizes for PostgreSQL's processes (they share their buffers).
    mem_mib: f64,
}

fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime (+ the children's that were waited for, when `children`).
fn cpu_ticks(pid: u32, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let own = get(11) + get(12);
    Some(if children {
        own + get(13) + get(14)
    } else {
        own
    })
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn pss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(parent)
        })
        .collect()
}

fn hub_usage(pid: u32, hz: f64) -> Usage {
    Usage {
        cpu_secs: cpu_ticks(pid, false).unwrap_or(0) as f64 / hz,
        mem_mib: status_kib(pid, "VmRSS:") / 1024.0,
    }
}

fn pg_usage(postmaster: u32, hz: f64) -> Usage {
    let mut usage = Usage {
        cpu_secs: cpu_ticks(postmaster, true).unwrap_or(0) as f64 / hz,
        mem_mib: pss_kib(postmaster) / 1024.0,
    };
    for child in children_of(postmaster) {
        usage.cpu_secs += cpu_ticks(child, false).unwrap_or(0) as f64 / hz;
        usage.mem_mib += pss_kib(child) / 1024.0;
    }
    usage
}

/// Peak memory and CPU between two moments, sampled every second.
#[derive(Debug, Default)]
struct Sampler {
    peak_hub_mib: f64,
    peak_pg_mib: f64,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------- ingest

/// A station's records as it ships them: per stick a device, an attempt
/// started, in two stages and finished, and two events.
fn synthetic_records(n: u64) -> Vec<FleetRecord> {
    let image = Sha256Digest::of(b"bench image");
    let mut records = vec![FleetRecord::Run(RunRecord {
        id: RunId(1),
        image_sha256: image,
        image_name: "bench.img".into(),
        options: serde_json::json!({ "verify": "compare" }),
        started_at: 1_000,
        stopped_at: None,
        stop_reason: None,
        stop_detail: None,
    })];
    let mut stick = 0i64;
    while (records.len() as u64) < n {
        stick += 1;
        let key = format!("BENCH-{stick:08}");
        records.push(FleetRecord::Device(DeviceRecord {
            key: key.clone(),
            serial: Some(key.clone()),
            vendor: Some("Sim".into()),
            model: Some("Stick".into()),
            capacity: 8 << 30,
            first_seen: 2_000 + stick,
            last_seen: 2_000 + stick,
        }));
        let attempt = |state, stage, verdict: Option<Verdict>, written| {
            FleetRecord::Attempt(AttemptRecord {
                id: AttemptId(stick),
                run_id: RunId(1),
                device_key: key.clone(),
                port_label: format!("A{}", stick % 32 + 1),
                port_path: format!("sim-usb-0:1.{}", stick % 32 + 1),
                started_at: 3_000 + stick,
                finished_at: verdict.as_ref().map(|_| 9_000 + stick),
                state,
                stage,
                verdict,
                reason_detail: None,
                figures: AttemptFigures {
                    bytes_written: written,
                    ..Default::default()
                },
            })
        };
        let event = |id: i64, kind: &str| {
            FleetRecord::Event(EventRecord {
                id,
                at: 4_000 + id,
                kind: kind.into(),
                port_label: Some(format!("A{}", stick % 32 + 1)),
                device_key: Some(key.clone()),
                run_id: Some(RunId(1)),
                attempt_id: Some(AttemptId(stick)),
                detail: serde_json::json!({ "stick": stick }),
            })
        };
        records.push(attempt(AttemptState::Running, Stage::Preparing, None, 0));
        records.push(event(2 * stick, "attempt_started"));
        records.push(attempt(
            AttemptState::Running,
            Stage::Writing,
            None,
            1 << 20,
        ));
        records.push(attempt(
            AttemptState::Running,
            Stage::Verifying,
            None,
            8 << 20,
        ));
        records.push(attempt(
            AttemptState::Passed,
            Stage::Verifying,
            Some(Verdict::Pass),
            8 << 20,
        ));
        records.push(event(2 * stick + 1, "attempt_finished"));
    }
    records.truncate(n as usize);
    records
}

async fn ingest(args: &Args, pg: &PgCluster, records: u64, batch: u64) -> Result<()> {
    let db = HubDb::connect(&pg.url(), 4).await?;
    let token = db.add_token(Role::Station, "bench-ingest").await?;
    let hub = HubProcess::start(args, &pg.url(), free_port()?)?;
    let client = HubClient::new(&url::Url::parse(&hub.url)?, "bench-ingest", &token)?;
    let entries: Vec<OutboxEntry> = synthetic_records(records)
        .into_iter()
        .enumerate()
        .map(|(i, record)| OutboxEntry {
            seq: i as u64 + 1,
            at: 10_000 + i as i64,
            record,
        })
        .collect();
    let hz = ticks_per_sec();
    let postmaster = pg.postmaster_pid().context("PostgreSQL's pid")?;
    let (hub0, pg0) = (hub_usage(hub.child.id(), hz), pg_usage(postmaster, hz));
    let load = load_average();
    let started = Instant::now();
    let mut applied = 0;
    for (i, chunk) in entries.chunks(batch as usize).enumerate() {
        let left = entries.len() as u64 - (i as u64 + 1) * batch;
        let ack = client
            .ship(&RecordBatch {
                protocol: PROTOCOL_VERSION,
                station_id: "bench-ingest".into(),
                entries: chunk.to_vec(),
                backlog: left,
                instance: None,
            })
            .await?;
        applied += ack.applied;
    }
    let secs = started.elapsed().as_secs_f64();
    let (hub1, pg1) = (hub_usage(hub.child.id(), hz), pg_usage(postmaster, hz));
    if applied != records {
        bail!("the hub applied {applied} of {records} records");
    }
    let stored = db.station_records("bench-ingest").await?;
    println!(
        "ingest: {records} records in batches of {batch}: {secs:.2} s, {:.0} records/s \
         (hub CPU {:.1} s, PostgreSQL CPU {:.1} s; load average before: {load}; stored {} attempts, {} events)",
        records as f64 / secs,
        hub1.cpu_secs - hub0.cpu_secs,
        pg1.cpu_secs - pg0.cpu_secs,
        stored.attempts.len(),
        stored.events.len(),
    );
    db.close().await;
    Ok(())
}

// ---------------------------------------------------------------- fleet

/// One simulated station running in this process.
struct Station {
    id: String,
    /// Its data directory.
    dir: PathBuf,
    store: Store,
    /// When each verdict was shown at the station, in the order seen.
    verdicts: Arc<Mutex<Vec<Instant>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), flashrack_app::AppError>>,
}

/// What every simulated station has in common.
struct Rack {
    /// Ports per station.
    ports: usize,
    /// The demo image's size.
    image_size: ByteSize,
    /// When the bench started (no verdict is timed before).
    started: Instant,
}

/// Starts station `id` (the demo's operator seeded with `seed`), joined to
/// the hub at `hub` with `token`.
async fn start_station(
    dir: &Path,
    id: &str,
    hub: &str,
    token: &str,
    rack: &Rack,
    seed: u64,
) -> Result<Station> {
    let (ports, image_size, started) = (rack.ports, rack.image_size, rack.started);
    std::fs::create_dir_all(dir)?;
    let token_file = dir.join("hub-token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let image = demo::image_path(dir, image_size);
    if demo::needs_image(&image, image_size) {
        demo::write_image(&image, image_size)?;
    }
    let options = DemoOptions {
        listen: "127.0.0.1:0".parse()?,
        ports,
        image_size,
        seed,
        burst: None,
        recording: Recording::Store,
        station_id: Some(id.to_string()),
        fleet: Some(FleetConfig {
            hub: url::Url::parse(hub)?,
            station_id: id.to_string(),
            token_file,
        }),
        arm: true,
        by_hand: false,
        master: None,
    };
    let Demo { config, parts, .. } = Demo::prepare(dir, &options)?;
    let app = Application::build(config, parts).await?;
    let store = app
        .records()
        .context("a station with records")?
        .store()
        .clone();
    let verdicts = Arc::new(Mutex::new(Vec::new()));
    // The verdicts as the station shows them (each is committed to its
    // records before its port shows it).
    let mut snapshots = app.station().watch();
    let seen_verdicts = verdicts.clone();
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        while snapshots.changed().await.is_ok() {
            let now = Instant::now();
            let snapshot = snapshots.borrow_and_update().clone();
            for port in &snapshot.ports {
                if matches!(port.state, PortState::Passed | PortState::Failed) {
                    if let Some(attempt) = port.attempt_id {
                        if seen.insert(attempt) {
                            seen_verdicts.lock().unwrap().push(now.max(started));
                        }
                    }
                }
            }
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(app.run_until_stopped(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Ok(Station {
        id: id.to_string(),
        dir: dir.to_path_buf(),
        store,
        verdicts,
        stop,
        task,
    })
}

/// What the operators' event stream has shown: per station, how many
/// attempts are finished, and when each count was first seen.
#[derive(Default)]
struct Visible {
    /// Per station: for the k-th finished attempt, when the stream first
    /// counted it.
    seen: BTreeMap<String, Vec<Instant>>,
}

/// Follows `GET /api/v1/events` until the process ends.
fn follow_events(url: String, token: String, visible: Arc<Mutex<Visible>>) {
    tokio::spawn(async move {
        loop {
            let client = reqwest::Client::new();
            let response = client
                .get(format!("{url}/api/v1/events"))
                .bearer_auth(&token)
                .send()
                .await;
            let Ok(mut response) = response else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let now = Instant::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    let data: String = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    let Ok(value) = serde_json::from_str::<serde_json::Value>(&data) else {
                        continue;
                    };
                    let views = match value.get("stations") {
                        Some(serde_json::Value::Array(all)) => all.clone(),
                        _ => vec![value],
                    };
                    let mut visible = visible.lock().unwrap();
                    for view in views {
                        let (Some(id), Some(counts)) = (view["id"].as_str(), view.get("counts"))
                        else {
                            continue;
                        };
                        let finished = counts["attempts"].as_u64().unwrap_or(0)
                            - counts["running"].as_u64().unwrap_or(0);
                        let seen = visible.seen.entry(id.to_string()).or_default();
                        while (seen.len() as u64) < finished {
                            seen.push(now);
                        }
                    }
                }
            }
            // The hub went away (killed on purpose): follow it again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// The station's records as it shipped them through `through` (the newest
/// version of each row), in the hub's order.
async fn shipped_records(store: &Store, through: u64) -> Result<(StationRecords, u64)> {
    let mut shipped = Vec::new();
    let mut after = 0;
    'pages: loop {
        let entries = store.outbox_entries(after, 5000).await?;
        let Some(last) = entries.last() else { break };
        after = last.seq;
        for entry in entries {
            if entry.seq > through {
                break 'pages;
            }
            shipped.push(entry.record);
        }
    }
    let entries_count = shipped.len() as u64;
    Ok((StationRecords::latest(shipped), entries_count))
}

/// Both sides in one order (PostgreSQL's text order may not be Rust's).
fn sorted(mut r: StationRecords) -> StationRecords {
    r.images.sort_by_key(|i| i.sha256.to_hex());
    r.devices.sort_by(|a, b| a.key.cmp(&b.key));
    r.runs.sort_by_key(|x| x.id.0);
    r.attempts.sort_by_key(|x| x.id.0);
    r.refusals.sort_by_key(|x| x.id.0);
    r.events.sort_by_key(|x| x.id);
    r
}

async fn total_backlog(stations: &[Station]) -> u64 {
    let mut total = 0;
    for station in stations {
        total += station.store.outbox_backlog().await.unwrap_or(0);
    }
    total
}

async fn fleet(args: &Args, pg: &PgCluster) -> Result<()> {
    let What::Fleet {
        stations: station_count,
        ports,
        image_size,
        warmup,
        secs,
        backlog,
        backlog_timeout,
    } = &args.command
    else {
        unreachable!()
    };
    let hz = ticks_per_sec();
    let db = HubDb::connect(&pg.url(), 4).await?;
    let operator = db.add_token(Role::Operator, "bench").await?;
    let port = free_port()?;
    let mut hub = HubProcess::start(args, &pg.url(), port)?;
    let postmaster = pg.postmaster_pid().context("PostgreSQL's pid")?;
    let visible = Arc::new(Mutex::new(Visible::default()));
    follow_events(hub.url.clone(), operator.clone(), visible.clone());

    let started = Instant::now();
    let rack = Rack {
        ports: *ports,
        image_size: *image_size,
        started,
    };
    let mut stations = Vec::new();
    for i in 0..*station_count {
        let id = format!("st-{i:03}");
        let token = db.add_token(Role::Station, &id).await?;
        let dir = args.workdir.join("stations").join(&id);
        stations.push(
            start_station(&dir, &id, &hub.url, &token, &rack, i as u64 + 1)
                .await
                .with_context(|| format!("starting station {id}"))?,
        );
    }
    println!(
        "{} stations × {ports} ports started in {:.1} s; warming up {warmup} s",
        stations.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(*warmup)).await;

    // Steady load: latency, throughput, CPU, memory.
    let load_before = load_average();
    let window_start = Instant::now();
    let (hub0, pg0, received0) = (
        hub_usage(hub.child.id(), hz),
        pg_usage(postmaster, hz),
        db.received_count().await?,
    );
    let marks: Vec<usize> = stations
        .iter()
        .map(|s| s.verdicts.lock().unwrap().len())
        .collect();
    let mut sampler = Sampler::default();
    let mut backlog_peak = 0;
    while window_start.elapsed() < Duration::from_secs(*secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sampler.peak_hub_mib = sampler
            .peak_hub_mib
            .max(hub_usage(hub.child.id(), hz).mem_mib);
        sampler.peak_pg_mib = sampler.peak_pg_mib.max(pg_usage(postmaster, hz).mem_mib);
        backlog_peak = backlog_peak.max(total_backlog(&stations).await);
    }
    let window = window_start.elapsed().as_secs_f64();
    let (hub1, pg1, received1) = (
        hub_usage(hub.child.id(), hz),
        pg_usage(postmaster, hz),
        db.received_count().await?,
    );
    let load_after = load_average();
    let ends: Vec<usize> = stations
        .iter()
        .map(|s| s.verdicts.lock().unwrap().len())
        .collect();
    // Let the stream catch up with the window's last verdicts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut latencies = Vec::new();
    let mut unseen = 0;
    {
        let visible = visible.lock().unwrap();
        for (i, station) in stations.iter().enumerate() {
            let verdicts = station.verdicts.lock().unwrap();
            let seen = visible.seen.get(&station.id);
            for k in marks[i]..ends[i] {
                match seen.and_then(|s| s.get(k)) {
                    Some(at) => {
                        latencies.push(at.saturating_duration_since(verdicts[k]).as_secs_f64())
                    }
                    None => unseen += 1,
                }
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let verdict_count: usize = ends.iter().zip(&marks).map(|(e, m)| e - m).sum();
    println!("steady load ({window:.0} s; load average {load_before} → {load_after}):");
    println!(
        "  verdicts {verdict_count} ({:.1}/s); latency verdict → operator stream: p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} not seen within 5 s of the window's end)",
        verdict_count as f64 / window,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN),
        unseen
    );
    println!(
        "  records ingested {:.0}/s; station backlog (all stations) at most {backlog_peak}",
        (received1 - received0) as f64 / window
    );
    println!(
        "  hub: CPU {:.2} s/s, RSS {:.0} MiB (peak {:.0}); PostgreSQL: CPU {:.2} s/s, PSS {:.0} MiB (peak {:.0})",
        (hub1.cpu_secs - hub0.cpu_secs) / window,
        hub1.mem_mib,
        sampler.peak_hub_mib,
        (pg1.cpu_secs - pg0.cpu_secs) / window,
        pg1.mem_mib,
        sampler.peak_pg_mib
    );

    // Catch-up: the hub killed, the backlog builds up, the hub back.
    hub.kill();
    let down = Instant::now();
    let mut built = total_backlog(&stations).await;
    while built < *backlog && down.elapsed() < Duration::from_secs(*backlog_timeout) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        built = total_backlog(&stations).await;
    }
    let mut targets = BTreeMap::new();
    for station in &stations {
        let mut last = 0;
        let mut after = 0;
        loop {
            let page = station.store.outbox_entries(after, 10_000).await?;
            let Some(end) = page.last() else { break };
            after = end.seq;
            last = end.seq;
        }
        targets.insert(station.id.clone(), last);
    }
    let acked_before = db.acked_through_all().await?;
    let backlog_at_restart: u64 = targets
        .iter()
        .map(|(id, last)| last.saturating_sub(acked_before.get(id).copied().unwrap_or(0)))
        .sum();
    println!(
        "catch-up: hub down {:.0} s, backlog {built} records unshipped ({backlog_at_restart} beyond the hub's acknowledgements)",
        down.elapsed().as_secs_f64()
    );
    let (pg_c0, load_c) = (pg_usage(postmaster, hz), load_average());
    let restart = Instant::now();
    hub = HubProcess::start(args, &pg.url(), port)?;
    let caught_up = loop {
        let acked = db.acked_through_all().await?;
        if targets
            .iter()
            .all(|(id, last)| acked.get(id).copied().unwrap_or(0) >= *last)
        {
            break restart.elapsed().as_secs_f64();
        }
        if restart.elapsed() > Duration::from_secs(600) {
            bail!("the backlog did not drain within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (hub_c1, pg_c1) = (hub_usage(hub.child.id(), hz), pg_usage(postmaster, hz));
    println!(
        "  caught up in {caught_up:.1} s from the hub's restart ({:.0} records/s; load average {load_c}); hub CPU {:.1} s, PostgreSQL CPU {:.1} s",
        backlog_at_restart as f64 / caught_up,
        hub_c1.cpu_secs,
        pg_c1.cpu_secs - pg_c0.cpu_secs
    );

    // The end: stations stop; the hub must hold exactly what each shipped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for station in &stations {
        let _ = station.stop.send(true);
    }
    let mut failures = Vec::new();
    let mut stopped = Vec::new();
    for station in stations {
        match station.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failures.push(format!("{}: {error}", station.id)),
            Err(error) => failures.push(format!("{}: {error}", station.id)),
        }
        // The application closed its records when it stopped: read them
        // again from the station's SQLite file.
        let path = flashrack_app::records::database_path(&station.dir);
        stopped.push((
            station.id.clone(),
            Store::open_read_only(&path, &station.id).await?,
        ));
    }
    let acked = db.acked_through_all().await?;
    let mut total_entries = 0;
    let mut unshipped_total = 0;
    for (id, store) in stopped {
        let through = acked.get(&id).copied().unwrap_or(0);
        let unshipped = store.outbox_unshipped(1).await?;
        // Nothing the station marked shipped is missing at the hub.
        if let Some(first) = unshipped.first() {
            if first.seq > through + 1 {
                failures.push(format!(
                    "{id}: entries up to {} marked shipped, the hub acknowledged {through}",
                    first.seq - 1
                ));
            }
        }
        unshipped_total += store.outbox_backlog().await?;
        let (mine, entries) = shipped_records(&store, through).await?;
        total_entries += entries;
        let (count, max) = db.received_of(&id).await?;
        if count != through || max != through || entries != through {
            failures.push(format!(
                "{id}: the hub received {count} entries (highest {max}), acknowledged {through}, the station has {entries} through it"
            ));
        }
        let theirs = db.station_records(&id).await?;
        let (mine, theirs) = (sorted(mine), sorted(theirs));
        if mine != theirs {
            failures.push(format!(
                "{id}: the hub's copy differs: attempts {} vs {}, events {} vs {}, devices {} vs {}",
                theirs.attempts.len(),
                mine.attempts.len(),
                theirs.events.len(),
                mine.events.len(),
                theirs.devices.len(),
                mine.devices.len()
            ));
        }
        store.close().await;
    }
    println!(
        "check: {total_entries} entries at the hub, each once, equal to the stations' records; \
         {unshipped_total} written after the last acknowledgement stay queued at the stations"
    );
    drop(hub);
    db.close().await;
    if !failures.is_empty() {
        bail!("loss or duplicates:\n{}", failures.join("\n"));
    }
    println!("no loss, no duplicates");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_workdir_is_made_absolute_and_the_hub_takes_its_configuration() {
        let parent = tempfile::tempdir().unwrap();
        let relative = Path::new("target-of-a-test").join("bench");
        // The only test here that depends on the current directory.
        std::env::set_current_dir(parent.path()).unwrap();
        let dir = work_dir(&relative).unwrap();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(dir.ends_with(&relative), "{}", dir.display());
        assert!(dir.join(WORKDIR_MARK).exists());
        // The configuration fleet-bench writes for its hub is one the hub
        // takes: before, a relative workdir made a relative data_dir, which
        // the hub refused ("data_dir ... is not an absolute path").
        let text = hub_toml(&dir, "postgres://postgres@127.0.0.1:5432/flashrack", 8090);
        let config = flashrack_hub::HubConfig::parse(&text, Path::new("hub.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.data_dir, dir.join("hub"));
    }

    #[test]
    fn a_workdir_it_did_not_make_is_refused_not_cleared() {
        let parent = tempfile::tempdir().unwrap();
        let someones = parent.path().join("someones");
        std::fs::create_dir(&someones).unwrap();
        std::fs::write(someones.join("thesis.tex"), "years of work").unwrap();
        let error = work_dir(&someones).unwrap_err().to_string();
        assert!(error.contains("refusing to clear"), "{error}");
        assert!(someones.join("thesis.tex").exists());
        // An empty directory, and one a run left (marked), are taken and
        // cleared.
        let empty = parent.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(work_dir(&empty).unwrap(), empty);
        std::fs::write(empty.join("stale"), "a crashed run's").unwrap();
        assert_eq!(work_dir(&empty).unwrap(), empty);
        assert!(!empty.join("stale").exists());
        assert!(empty.join(WORKDIR_MARK).exists());
    }
}
