//! Command-line arguments and dispatch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use flashrack_app::lock::{DataDirLock, LockHolder, Wait};
use flashrack_app::records::Recovered;
use flashrack_core::{ByteSize, SamplePercent, VerifyMode};

/// flashrack: turn one disk image into many verified USB sticks.
#[derive(Debug, Parser)]
#[command(
    name = "flashrack",
    version,
    about = "Turn one disk image into many verified USB sticks",
    long_about = None
)]
pub struct Args {
    /// Where the image cache and records live [default: $FLASHRACK_DATA_DIR, else
    /// /var/lib/flashrack as root, else ~/.local/share/flashrack].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// When another flashrack is using the data directory, wait for it instead
    /// of stopping (commands that write the records or the image cache).
    #[arg(long, global = true)]
    pub wait: bool,

    /// More log output on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the image cache.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Write an image to targets concurrently and verify each from the medium.
    Flash(FlashArgs),
    /// Audit sticks: read each target back and compare it with the image,
    /// writing nothing (a box of sticks from last month, or from another
    /// duplicator). Block devices are judged by the target guard's rules for
    /// reading and opened read-only and exclusively; every result is recorded.
    Verify(VerifyArgs),
    /// The disks attached now: port, size, vendor, model, serial, bus, and
    /// whether an armed run would write each (or why the target guard refuses
    /// it). Nothing is written.
    #[command(visible_alias = "drives")]
    Devices(DevicesArgs),
    /// The station and its dashboard over a simulated rack (no hardware, no
    /// configuration): sticks are plugged in and pulled out over time.
    Demo(DemoArgs),
    /// Run the station: watch the rack, write armed runs, serve the dashboard.
    Serve(ServeArgs),
    /// Show the ports of a running station.
    Status {
        /// Which station.
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Arm or stop a run on a running station.
    #[command(subcommand)]
    Run(RunCommand),
    /// Build the port map.
    #[command(subcommand)]
    Ports(PortsCommand),
    /// Per-run and per-device reports from the records (of --data-dir; without
    /// records there, of the last `scripts/demo`).
    #[command(subcommand)]
    Report(ReportCommand),
    /// Print the shell completion script for SHELL (e.g. `flashrack
    /// completions bash > /etc/bash_completion.d/flashrack`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, or write one per command into a directory.
    Man {
        /// Write flashrack.1 and a page per subcommand (flashrack-report-run.1
        /// …) into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The fleet hub: every station's records and live racks in PostgreSQL.
    Hub(crate::hub::HubArgs),
}

/// Report formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReportFormatArg {
    /// Comma-separated values, one row per attempt.
    Csv,
    /// JSON (format "flashrack-report/12").
    Json,
    /// Printable HTML.
    Html,
    /// A printable sheet of labels (HTML), one per stick that passed: port,
    /// serial, verdict, image, date and a QR code of the record.
    Labels,
}

/// `flashrack report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// List runs: image, start, passes and failures.
    Runs {
        /// Only what this station did. Several stations may keep their records
        /// in one data directory (a copied database, a shared one); each is
        /// known by the `station_id` of its configuration file (`station-1`
        /// unless it names another; `flash` records as `station-1`, the demo as
        /// `demo`). Without it: every station's records.
        #[arg(long, value_name = "STATION_ID")]
        station: Option<String>,
    },
    /// One run, a row per device.
    Run {
        /// The run id.
        id: flashrack_core::RunId,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormatArg::Csv)]
        format: ReportFormatArg,
        /// Only what this station did. Several stations may keep their records
        /// in one data directory (a copied database, a shared one); each is
        /// known by the `station_id` of its configuration file (`station-1`
        /// unless it names another; `flash` records as `station-1`, the demo as
        /// `demo`). Without it: every station's records.
        #[arg(long, value_name = "STATION_ID")]
        station: Option<String>,
    },
    /// Every attempt ever made on a stick.
    Device {
        /// Its serial (or key).
        serial: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormatArg::Csv)]
        format: ReportFormatArg,
        /// Only what this station did. Several stations may keep their records
        /// in one data directory (a copied database, a shared one); each is
        /// known by the `station_id` of its configuration file (`station-1`
        /// unless it names another; `flash` records as `station-1`, the demo as
        /// `demo`). Without it: every station's records.
        #[arg(long, value_name = "STATION_ID")]
        station: Option<String>,
    },
}

/// How to reach a running station.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The station's address [default: $FLASHRACK_SERVER, else http://127.0.0.1:8080].
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The operator token [default: $FLASHRACK_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// `flashrack run …`
// One value per process, parsed once: boxing `Start`'s arguments to make
// `Stop` smaller would save nothing that matters and make the match noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Arm a run: every accepted stick plugged into a mapped port is written and
    /// verified.
    Start {
        /// Which station.
        #[command(flatten)]
        client: ClientArgs,
        /// The image: sha256, a unique prefix, or its name in the cache; or
        /// an http(s) URL the station downloads while the sticks follow the
        /// download (as `flash URL` does).
        #[arg(required_unless_present = "station_file")]
        image: Option<String>,
        /// Instead of IMAGE: a file on the station (in its `[web]
        /// import_dirs`) that it imports while the sticks follow.
        #[arg(long, value_name = "PATH", conflicts_with = "image")]
        station_file: Option<String>,
        /// The expected sha256 of the downloaded file or station file (or of
        /// the raw image inside); not with a cached image.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// For a URL: a checksum list (SHA256SUMS) giving the file's sha256.
        #[arg(long, value_name = "URL", conflicts_with = "sha256")]
        sha256sums: Option<String>,
        /// For a URL: the checksum list's detached OpenPGP signature
        /// (SHA256SUMS.gpg), checked by the station against --keyring before
        /// anything else is downloaded; a signature that does not hold arms
        /// nothing.
        #[arg(
            long,
            value_name = "URL",
            requires_all = ["sha256sums", "keyring"],
            conflicts_with = "sha256"
        )]
        signature: Option<String>,
        /// The public keys to trust for --signature (armored or binary, as
        /// `gpg --export` writes them): read here and sent to the station.
        #[arg(long, value_name = "FILE", requires = "signature")]
        keyring: Option<PathBuf>,
        /// For a URL: the image's block map (bmaptool's XML) at its own
        /// http(s) URL, which the station fetches and checks against the
        /// image in the import's one pass (a map that does not match fails
        /// the run's import). Without it, a map beside the image on its
        /// server is used if there is one.
        #[arg(long, value_name = "URL")]
        bmap: Option<String>,
        /// For a URL: look for no block map beside the image on its server
        /// (a lookup there that meets a server error or a timeout is only a
        /// warning anyway).
        #[arg(long, conflicts_with = "bmap")]
        no_bmap: bool,
        /// For a URL of a zip archive of several files: the one to write.
        #[arg(long, value_name = "NAME")]
        zip_entry: Option<String>,
        /// Stop by itself after this many passes.
        #[arg(long)]
        target_count: Option<u32>,
        /// How to verify.
        #[arg(long, value_parser = verify_modes(), default_value_t = VerifyMode::Compare)]
        verify: VerifyMode,
        /// Do not verify (same as --verify none).
        #[arg(long, conflicts_with = "verify")]
        no_verify: bool,
        /// Eject each stick after it passes.
        #[arg(long)]
        eject_on_pass: bool,
        /// Who arms the run: a name printed on its report.
        #[arg(long, value_name = "NAME")]
        operator: Option<String>,
        /// The lot or batch the sticks belong to, printed on the report.
        #[arg(long, value_name = "ID")]
        lot: Option<String>,
        /// Write the image raw even though inspection says the sticks would
        /// not boot (a non-hybrid installer ISO); recorded in the run.
        #[arg(long)]
        force_raw: bool,
    },
    /// Stop the armed run; running attempts stop as interrupted.
    Stop {
        /// Which station.
        #[command(flatten)]
        client: ClientArgs,
        /// Why, for the records.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `flashrack ports …`
#[derive(Debug, Subcommand)]
pub enum PortsCommand {
    /// Plug a stick into each port in turn and name it; writes the port map into
    /// the configuration file.
    Learn {
        /// The configuration file to update (created from the example if missing).
        #[arg(long, value_name = "FILE", default_value = "config/station.toml")]
        config: PathBuf,
    },
}

/// `flashrack demo …`
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the dashboard listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// How many simulated ports (8 to a row).
    #[arg(long, default_value_t = 16)]
    pub ports: usize,
    /// Size of the generated demo image.
    #[arg(long, default_value = "64MiB")]
    pub image_size: ByteSize,
    /// Seed of the simulated operator's choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instead of the operator scenario, plug this many healthy sticks at once
    /// (a measurement: how the station starts a burst of sticks).
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Write speed of the burst's sticks.
    #[arg(long, default_value = "20MB", requires = "burst")]
    pub write_speed: ByteSize,
    /// Read speed of the burst's sticks.
    #[arg(long, default_value = "40MB", requires = "burst")]
    pub read_speed: ByteSize,
    /// Exit when every stick of the burst has its verdict, printing a JSON line
    /// with the finish times.
    #[arg(long, requires = "burst")]
    pub exit_when_done: bool,
    /// Keep records in memory only (to measure what recording costs).
    #[arg(long)]
    pub no_records: bool,
    /// Take the station's id and its `[fleet]` section (the hub it joins)
    /// from this station configuration; the rack stays simulated.
    #[arg(long, value_name = "FILE", conflicts_with = "no_records")]
    pub config: Option<PathBuf>,
    /// The scripted operator plugs sticks but arms no run: a run armed by the
    /// hub's orders (or over the API) writes them.
    #[arg(long, conflicts_with = "burst")]
    pub no_arm: bool,
    /// No scripted operator: you plug and pull the sticks, one command a line
    /// on standard input — `plug PORT [NAME[:key=value,...]]` (a stick as
    /// `flash` takes `sim:` targets, e.g. `plug A3 slow:write=2MB`) and `pull
    /// PORT`; each is answered on standard output.
    #[arg(long, conflicts_with = "burst")]
    pub by_hand: bool,
    /// With --by-hand: make port PORT the station's master port (never
    /// written; its stick is offered for capture), into which `plug PORT
    /// /dev/loopN` plugs a real block device to capture. A real device is
    /// refused in any other port: the demo never writes one.
    #[arg(long, value_name = "PORT", requires = "by_hand")]
    pub master: Option<String>,
}

/// `flashrack serve …`
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The station configuration (required: without one, serve says how to
    /// make one with `flashrack ports learn` and does not start).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen here instead of the configured address.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `flashrack image …`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an image (raw .img/.iso, or gzip, xz, zstd, bzip2, zip): decompress
    /// once, hash, and cache it under its sha256. An http or https URL is
    /// downloaded and imported in the same pass (resumed after a cut or a
    /// restart; a zip archive's file is read as it arrives, or from the
    /// whole download when it is stored and its sizes follow its data).
    Import {
        /// The file or URL to import.
        #[arg(value_name = "FILE|URL")]
        file: PathBuf,
        /// Expected sha256, of the file as given or of the raw image.
        #[arg(long, value_name = "HEX", conflicts_with = "sha256sums")]
        sha256: Option<String>,
        /// A URL's expected sha256 is the one this checksum list (SHA256SUMS)
        /// gives for the URL's file name.
        #[arg(long, value_name = "URL")]
        sha256sums: Option<String>,
        /// The checksum list's detached OpenPGP signature (SHA256SUMS.gpg),
        /// checked against --keyring before anything else is downloaded.
        #[arg(
            long,
            value_name = "URL",
            requires_all = ["sha256sums", "keyring"],
            conflicts_with = "sha256"
        )]
        signature: Option<String>,
        /// The public keys to trust for --signature (armored or binary, as
        /// `gpg --export` writes them).
        #[arg(long, value_name = "FILE", requires = "signature")]
        keyring: Option<PathBuf>,
        /// Refuse an image larger than this: the largest target the guard lets
        /// through (`[guard] max_size`), since a larger image could never be
        /// written.
        #[arg(long, default_value = "256G", value_name = "SIZE")]
        max_size: ByteSize,
        /// A bmaptool block map of the image (XML format 1.x/2.x), checked
        /// against it (its own checksum, the image's size, every range's
        /// checksum) and kept with it for sparse runs; a map that does not
        /// match is refused. For an image from a URL it may be a URL too.
        /// Without it, FILE.bmap beside the image (for a URL: beside it on
        /// its server, by bmaptool's names) is used, checked in the same
        /// pass, else a map is generated from the image's file systems where
        /// they can be read. A lookup beside a URL that meets a server
        /// error or a timeout is a warning: the image is imported without
        /// that map (its provenance says so).
        #[arg(long, value_name = "FILE|URL")]
        bmap: Option<PathBuf>,
        /// For a URL: look for no block map beside the image on its server.
        #[arg(long, conflicts_with = "bmap")]
        no_bmap: bool,
        /// For a zip archive holding more than one file: the one to import
        /// (its name in the archive). Without it such an archive is refused
        /// with the names of its files. A zip from a URL is downloaded
        /// (resumable) and its file read as it arrives, or from the whole
        /// download when it is stored and its sizes follow its data.
        #[arg(long, value_name = "NAME")]
        zip_entry: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Capture a master stick into the cache: read (never written) through
    /// the guard's rules for reading (a whole disk on an allowed bus, not
    /// mounted), up to the end of its last partition (MBR or GPT) unless
    /// --whole, hashed and cached in the same pass.
    Capture {
        /// The master's block device.
        device: PathBuf,
        /// The name to keep the image under.
        #[arg(long)]
        name: Option<String>,
        /// Read the whole device, not only up to the end of its last partition.
        #[arg(long)]
        whole: bool,
        /// Also read a device on this bus (`loop` for loop devices); usb always.
        #[arg(long = "allow-bus", value_name = "BUS")]
        allow_buses: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List cached images.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a cached image is: its partition table, partitions and
    /// file systems, ISO structure, best-guess OS, and whether a raw run of
    /// it is refused.
    Show {
        /// Its sha256, a unique prefix, or its name.
        image: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image from the cache.
    Remove {
        /// Its sha256 or a unique prefix of at least 6 hex digits.
        image: String,
    },
    /// Build a bootable USB layout from a UEFI-bootable installer ISO that
    /// would not boot written raw (a Windows installer ISO): GPT with one
    /// FAT32 EFI system partition holding the ISO's files (install.wim too
    /// large for FAT32 split into .swm parts), cached like any other image
    /// and flashed and verified as one. Built once: asked again, the cached
    /// layout is answered. Needs xorriso, fdisk, dosfstools, mtools, wimtools.
    BuildBootable {
        /// The ISO: a file to import, or a cached image's sha256, prefix or name.
        iso: String,
        /// The name of the built image in the cache.
        #[arg(long)]
        name: String,
        /// Split install.wim into parts no larger than this (FAT32 holds
        /// files up to 4 GiB − 1 byte); any other larger file is refused.
        #[arg(long, default_value = "4294967295", value_name = "SIZE")]
        split_above: ByteSize,
        /// Refuse an ISO or a layout larger than this (the guard's largest
        /// target).
        #[arg(long, default_value = "256G", value_name = "SIZE")]
        max_size: ByteSize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--verify`'s values: the core's [`VerifyMode`] by its stable names (the
/// API's and the records' spelling), each with a line of help.
fn verify_modes() -> impl clap::builder::TypedValueParser<Value = VerifyMode> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let help = |mode: VerifyMode| match mode {
        VerifyMode::Compare => {
            "Compare every byte read back with the cached image (default; the image's \
             chunks are checked once per run against their import-time fingerprints). \
             Targets that follow the import of a new file check each chunk read back \
             against its fingerprint instead (recorded as `fingerprint`)"
        }
        VerifyMode::Hash => "Hash every byte read back with sha256",
        VerifyMode::None => "Do not read back (no proof: the verdict says so)",
    };
    let values = VerifyMode::ALL
        .iter()
        .map(move |&mode| PossibleValue::new(mode.as_str()).help(help(mode)));
    PossibleValuesParser::new(values).map(|text| {
        text.parse::<VerifyMode>()
            .expect("clap accepts only the possible values")
    })
}

/// `flashrack devices …`
#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Judge as this station would: its port map (labels), buses and size
    /// limit. Without it, as `flash` would: usb (and --allow-bus), any port.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also allow disks on this bus (e.g. `loop`). Repeatable.
    #[arg(long = "allow-bus", value_name = "BUS")]
    pub allow_buses: Vec<String>,
    /// Refuse disks larger than this (without --config).
    #[arg(long, default_value = "256G", value_name = "SIZE")]
    pub max_size: ByteSize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `flashrack flash …`
#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// The image: a file (imported into the cache as the targets are
    /// written), an http or https URL (downloaded and imported as the
    /// targets are written; see `image import`), or the sha256 (or a unique
    /// prefix) of a cached image.
    pub image: String,
    /// Targets: block devices (/dev/sdX, through the target guard), regular files
    /// (created or grown), or simulated sticks `sim:NAME[:key=value,...]` with keys
    /// capacity, write, read (B/s), fail_after, fail_once_after (one write
    /// error, then writes succeed), bad_block (an offset whose block
    /// fails every write), read_fail_after, corrupt_at, fake (real size),
    /// vanish (real size, writes past it dropped), cache and lossy_cache (a
    /// volatile cache that answers the read-back until a reset), read_only, remove_after, stall_after (until the stick is removed),
    /// hang_write_after, hang_read_after (a call that never returns, as one stuck
    /// in the kernel).
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Expected sha256 of the image file or download (when IMAGE is a file
    /// or a URL), of the file as given or of the raw image; checked when
    /// the import ends, before any verdict.
    #[arg(long, value_name = "HEX", conflicts_with = "sha256sums")]
    pub sha256: Option<String>,
    /// For a URL: its expected sha256 is the one this checksum list
    /// (SHA256SUMS) gives for the URL's file name.
    #[arg(long, value_name = "URL")]
    pub sha256sums: Option<String>,
    /// The checksum list's detached OpenPGP signature (SHA256SUMS.gpg),
    /// checked against --keyring before anything else is downloaded.
    #[arg(
        long,
        value_name = "URL",
        requires_all = ["sha256sums", "keyring"],
        conflicts_with = "sha256"
    )]
    pub signature: Option<String>,
    /// The public keys to trust for --signature (armored or binary, as
    /// `gpg --export` writes them).
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub keyring: Option<PathBuf>,
    /// How to verify.
    #[arg(long, value_parser = verify_modes(), default_value_t = VerifyMode::Compare)]
    pub verify: VerifyMode,
    /// Also allow block devices on this bus (usb is always allowed); e.g. `loop`
    /// for loop devices. Repeatable.
    #[arg(long = "allow-bus", value_name = "BUS")]
    pub allow_buses: Vec<String>,
    /// Refuse block devices larger than this (bigger is probably a hard disk),
    /// and an image larger than this (it could never be written).
    #[arg(long, default_value = "256G", value_name = "SIZE")]
    pub max_size: ByteSize,
    /// Seconds without progress before a target fails as stalled (1 to
    /// 3600, as a station's `stall_timeout_secs`).
    #[arg(long, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_timeout: u64,
    /// Skip the capacity probe of sticks (fake-capacity detection).
    #[arg(long)]
    pub no_probe: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No live progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Write the image raw even though inspection says the sticks would not
    /// boot (a non-hybrid installer ISO, such as a Windows installer);
    /// recorded in the run.
    #[arg(long)]
    pub force_raw: bool,
    /// Sparse run: write only the ranges of the image's block map and read
    /// back exactly those (the rest of each stick is left as it was and not
    /// checked; the summary and the records say how much). The map is the
    /// one given with --bmap, found beside the image (IMAGE.bmap, or
    /// disk.img.bmap, disk.bmap beside disk.img.xz), kept in the cache, or
    /// generated from the image's ext2/3/4, FAT, NTFS and exFAT file
    /// systems.
    #[arg(long)]
    pub sparse: bool,
    /// A bmaptool block map of the image (XML format 1.x/2.x), checked
    /// against it (its own checksum, every range's) and kept with it in the
    /// cache; a map that does not match is refused.
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,
    /// For a URL: look for no block map beside the image on its server (a
    /// lookup there that meets a server error or a timeout is only a
    /// warning anyway).
    #[arg(long, conflicts_with = "bmap")]
    pub no_bmap: bool,
    /// For an image in a zip archive holding more than one file (a file or
    /// a URL): the one to write (its name in the archive). Without it such
    /// an archive is refused with the names of its files.
    #[arg(long, value_name = "NAME")]
    pub zip_entry: Option<String>,
    /// Verify only this share of each stick, in percent (above 0, below
    /// 100): chunks chosen at random per stick, plus the first and the last.
    /// A weaker proof: every verdict says `sampled (x %)`. Default: every byte.
    #[arg(long, value_name = "PERCENT")]
    pub sample: Option<SamplePercent>,
    /// Write a target again, up to N times, after a failure that may pass
    /// the next time (a write or flush error, the capacity probe's write or
    /// flush error, a stall while writing); never after a capacity lie, a
    /// read-only stick or a verify mismatch. Each retry is an attempt of its
    /// own in the records; the summary and the exit status give each
    /// target's last verdict. At most 10, as for a station's run.
    #[arg(long, default_value_t = 0, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,
}

/// `flashrack verify`: an audit of sticks written earlier or elsewhere.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The image the sticks should hold: a file or an http or https URL
    /// (imported into the cache first) or the sha256 (or a unique prefix) of
    /// a cached image.
    pub image: String,
    /// Targets: block devices (/dev/sdX: the target guard's rules for reading
    /// apply, no system or mounted disk is read), regular files (which must
    /// exist), or simulated sticks `sim:NAME[:key=value,...]`.
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Expected sha256 of the image file or download (when IMAGE is a file
    /// or a URL), of the file as given or of the raw image; checked when
    /// the import ends, before any verdict.
    #[arg(long, value_name = "HEX", conflicts_with = "sha256sums")]
    pub sha256: Option<String>,
    /// For a URL: its expected sha256 is the one this checksum list
    /// (SHA256SUMS) gives for the URL's file name.
    #[arg(long, value_name = "URL")]
    pub sha256sums: Option<String>,
    /// The checksum list's detached OpenPGP signature (SHA256SUMS.gpg),
    /// checked against --keyring before anything else is downloaded.
    #[arg(
        long,
        value_name = "URL",
        requires_all = ["sha256sums", "keyring"],
        conflicts_with = "sha256"
    )]
    pub signature: Option<String>,
    /// The public keys to trust for --signature (armored or binary, as
    /// `gpg --export` writes them).
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub keyring: Option<PathBuf>,
    /// Also allow block devices on this bus (usb is always allowed); e.g. `loop`
    /// for loop devices. Repeatable.
    #[arg(long = "allow-bus", value_name = "BUS")]
    pub allow_buses: Vec<String>,
    /// Refuse an image larger than this.
    #[arg(long, default_value = "256G", value_name = "SIZE")]
    pub max_size: ByteSize,
    /// Seconds without progress before a target fails as stalled (1 to
    /// 3600, as a station's `stall_timeout_secs`).
    #[arg(long, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_timeout: u64,
    /// Read back only this share of each stick, in percent (see `flash
    /// --sample`). Default: every byte.
    #[arg(long, value_name = "PERCENT")]
    pub sample: Option<SamplePercent>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No live progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

impl From<VerifyArgs> for FlashArgs {
    /// An audit runs as a flash that writes nothing: the same records,
    /// progress, summary and exit statuses.
    fn from(args: VerifyArgs) -> Self {
        FlashArgs {
            image: args.image,
            targets: args.targets,
            sha256: args.sha256,
            sha256sums: args.sha256sums,
            signature: args.signature,
            keyring: args.keyring,
            verify: VerifyMode::Compare,
            allow_buses: args.allow_buses,
            max_size: args.max_size,
            stall_timeout: args.stall_timeout,
            no_probe: true,
            json: args.json,
            quiet: args.quiet,
            force_raw: false,
            sparse: false,
            bmap: None,
            no_bmap: false,
            zip_entry: None,
            sample: args.sample,
            // Nothing is written: nothing to write again.
            retries: 0,
        }
    }
}

/// Runs the parsed command and returns the exit status.
pub async fn run(args: Args) -> Result<ExitCode> {
    let data_dir_flag = args
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("FLASHRACK_DATA_DIR").map(PathBuf::from));
    let data_dir = data_dir(args.data_dir);
    // Commands that write the records or the image cache hold the data
    // directory's lock for as long as they run (`serve` takes it once it knows its
    // data directory from the configuration).
    let _lock = match &args.command {
        Command::Flash(_)
        | Command::Verify(_)
        | Command::Demo(_)
        | Command::Image(
            ImageCommand::Import { .. }
            | ImageCommand::Remove { .. }
            | ImageCommand::Capture { .. },
        ) => Some(lock(&data_dir, args.wait)?),
        _ => None,
    };
    let status = match args.command {
        Command::Image(cmd) => crate::image_cmd::run(&data_dir, cmd)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Flash(flash) => crate::flash::run(&data_dir, flash, false).await,
        Command::Verify(verify) => crate::flash::run(&data_dir, verify.into(), true).await,
        Command::Devices(devices) => {
            let flag = data_dir_flag.clone();
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || crate::devices_cmd::run(flag, dir, devices)).await?
        }
        Command::Demo(demo) => crate::demo::run(&data_dir, demo).await,
        Command::Serve(serve) => crate::serve::run(data_dir_flag, args.wait, serve).await,
        Command::Status { client, json } => {
            tokio::task::spawn_blocking(move || crate::client::status(&client, json)).await?
        }
        Command::Run(command) => {
            tokio::task::spawn_blocking(move || crate::client::run(command)).await?
        }
        Command::Report(command) => {
            crate::report_cmd::run(&data_dir, data_dir_flag.is_some(), command).await
        }
        Command::Hub(hub) => crate::hub::run(hub).await,
        Command::Completions { shell } => crate::docs::completions(shell),
        Command::Man { dir } => crate::docs::man(dir.as_deref()),
        Command::Ports(PortsCommand::Learn { config }) => crate::learn::learn(&config).await,
    };
    // Whatever the outcome, the records a command wrote end up in the database
    // file itself, not only in its write-ahead log.
    flashrack_app::records::close_all().await;
    status
}

/// Takes the data directory's lock; with `wait`, says whose it is and waits.
pub fn lock(data_dir: &Path, wait: bool) -> Result<DataDirLock> {
    refuse_root_in_foreign_data_dir(data_dir)?;
    let waiting = |holder: LockHolder| {
        errln!(
            "waiting for another flashrack ({holder}) to release {} …",
            data_dir.display()
        );
    };
    let wait = if wait { Wait::Yes(&waiting) } else { Wait::No };
    Ok(DataDirLock::acquire(data_dir, wait)?)
}

/// Root must not write a data directory that belongs to another user (the
/// Debian package's service runs as `flashrack`): the files root would create
/// there (records, cache entries) could not be written by the station any more.
fn refuse_root_in_foreign_data_dir(data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(data_dir) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    anyhow::bail!(
        "{} belongs to uid {} (the station's user, flashrack on a packaged station), not \
         root: run this command as that user (`runuser -u flashrack -- flashrack …`), or \
         files it writes there could not be written by the station",
        data_dir.display(),
        meta.uid()
    )
}

/// Says what opening the records found left by an unclean stop, if anything.
pub fn say_recovered(recovered: Recovered) {
    if recovered.any() {
        errln!("{}", recovered_words(recovered));
    }
}

/// What opening the records found left by an unclean stop, in words.
pub fn recovered_words(recovered: Recovered) -> String {
    format!(
        "recovered from an unclean stop: {} attempt(s) marked interrupted, {} run(s) stopped",
        recovered.attempts, recovered.runs
    )
}

/// The data directory: the flag, then `$FLASHRACK_DATA_DIR`, then a default
/// that depends on whether we run as root.
fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = flag.or_else(|| std::env::var_os("FLASHRACK_DATA_DIR").map(PathBuf::from)) {
        return dir;
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/flashrack");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("flashrack")
}
