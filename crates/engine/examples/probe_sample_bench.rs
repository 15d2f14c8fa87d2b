//! Benchmark of issue 16 §2 and §3 on the simulated rack, at a cheap stick's
//! speeds (20 MB/s write, 40 MB/s read): what the capacity probe adds to an
//! honest 16 GB stick, and what share of a full read-back's time a 5 %
//! sampled one takes. Side by side in one run, cases interleaved per
//! repetition; see bench/README.md ("Probe and sampled verify").
//!
//! ```sh
//! cargo run --release -p flashrack-engine --example probe_sample_bench -- [REPS]
//! ```

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashrack_core::{AttemptFigures, TargetId, Verdict, VerifyMode};
use flashrack_engine::{flash_all, EngineOptions, SourceImage};
use flashrack_simrack::sim::{SimStick, SimStickSpec};
use flashrack_target::{Target, TargetError, TargetGeometry, TargetReader, TargetWriter};
use tokio::sync::mpsc;

const MB: u64 = 1_000_000;
const MIB: usize = 1 << 20;
/// What a cheap stick sold as 16 GB claims.
const CLAIM: u64 = 16_000_000_000;
/// The image cache's chunk size.
const CHUNK: u32 = 4 << 20;

/// A stick behind the trait's defaults: it cannot be reset, so the probe
/// writes its filler instead (as on a block device without a USB reset).
struct CannotReset(SimStick);

impl Target for CannotReset {
    fn name(&self) -> String {
        self.0.name()
    }
    fn geometry(&self) -> Result<TargetGeometry, TargetError> {
        self.0.geometry()
    }
    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError> {
        self.0.open_writer()
    }
    fn open_reader(&self) -> Result<Box<dyn TargetReader>, TargetError> {
        self.0.open_reader()
    }
}

fn stick(dir: &std::path::Path, name: &str) -> SimStick {
    SimStick::create(
        SimStickSpec::new(name, CLAIM)
            .write_speed(20 * MB)
            .read_speed(40 * MB),
        dir.join(format!("{name}.img")),
    )
    .expect("a simulated stick")
}

/// Runs one attempt on `target`; its wall time and its outcome.
async fn one(
    image: &SourceImage,
    target: Arc<dyn Target>,
    options: EngineOptions,
) -> (Duration, Verdict, AttemptFigures) {
    let (tx, _rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut results = flash_all(image, vec![(TargetId::new("bench"), target)], options, tx)
        .await
        .expect("the source holds");
    let (_, verdict, figures) = results.remove(0);
    (started.elapsed(), verdict, figures)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse().expect("REPS is a number"))
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("a temporary directory");

    // The probe: 64 MiB written without a read-back, with and without the
    // probe, on a stick that can be reset and on one that cannot.
    let small = flashrack_testkit::image_bytes(64 * MIB, 1, 8 * MIB);
    let small_dir = dir.path().join("small");
    std::fs::create_dir_all(&small_dir).unwrap();
    let (path, manifest) = flashrack_testkit::image_from_bytes(&small_dir, &small, CHUNK);
    let small = SourceImage::cached(path, manifest);
    let write_only = EngineOptions {
        verify: VerifyMode::None,
        // As `flashrack flash` probes: the stick's cache defeated.
        probe: flashrack_engine::probe::ProbeOptions {
            defeat_cache: true,
            ..Default::default()
        },
        ..EngineOptions::default()
    };
    // The probe as it was before its alias window (issue 16 §3 leftovers:
    // no giants, no zeros over the window), beside it in the same run.
    let without_window = EngineOptions {
        probe: flashrack_engine::probe::ProbeOptions {
            alias_window: false,
            ..write_only.probe
        },
        ..write_only.clone()
    };
    let mut times: [Vec<f64>; 5] = Default::default();
    for rep in 0..reps {
        let off = EngineOptions {
            probe_capacity: false,
            ..write_only.clone()
        };
        let cases: [(usize, Arc<dyn Target>, EngineOptions); 5] = [
            (0, Arc::new(stick(dir.path(), &format!("off-{rep}"))), off),
            (
                1,
                Arc::new(stick(dir.path(), &format!("reset-old-{rep}"))),
                without_window.clone(),
            ),
            (
                2,
                Arc::new(stick(dir.path(), &format!("reset-{rep}"))),
                write_only.clone(),
            ),
            (
                3,
                Arc::new(CannotReset(stick(dir.path(), &format!("filler-old-{rep}")))),
                without_window.clone(),
            ),
            (
                4,
                Arc::new(CannotReset(stick(dir.path(), &format!("filler-{rep}")))),
                write_only.clone(),
            ),
        ];
        for (case, target, options) in cases {
            let (took, verdict, _) = one(&small, target, options).await;
            assert_eq!(verdict, Verdict::Pass, "an honest stick passes");
            times[case].push(took.as_secs_f64());
        }
    }
    let base = median(times[0].clone());
    println!("probe on an honest 16 GB stick, 20 MB/s write, 40 MB/s read ({reps} reps, medians):");
    println!("  64 MiB written, no probe:                          {base:.2} s");
    for (case, words) in [
        (1, "with the probe (reset), before the alias window:   "),
        (2, "with the probe (reset):                            "),
        (3, "with the probe (no reset, filler), before the window:"),
        (4, "with the probe (no reset, filler):                 "),
    ] {
        let took = median(times[case].clone());
        println!("  {words} {took:.2} s  (+{:.2} s)", took - base);
    }

    // Sampled verify: 1 GiB put on a stick's medium directly, then read back
    // without writing (an audit), every byte and a 5 % sample.
    let big = flashrack_testkit::image_bytes(1024 * MIB, 2, 8 * MIB);
    let big_dir = dir.path().join("big");
    std::fs::create_dir_all(&big_dir).unwrap();
    let (path, manifest) = flashrack_testkit::image_from_bytes(&big_dir, &big, CHUNK);
    let big_image = SourceImage::cached(path, manifest);
    let holder = stick(dir.path(), "holder");
    std::fs::OpenOptions::new()
        .write(true)
        .open(holder.path())
        .and_then(|f| f.write_all_at(&big, 0))
        .expect("the image on the medium");
    drop(big);
    let (mut full, mut sampled, mut share) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..reps {
        for percent in [None, Some(5.0)] {
            let options = EngineOptions {
                audit: true,
                sample_percent: percent,
                ..EngineOptions::default()
            };
            let (_, verdict, figures) = one(&big_image, Arc::new(holder.clone()), options).await;
            assert_eq!(verdict, Verdict::Pass, "the stick holds the image");
            match percent {
                None => full.push(figures.verify_secs),
                Some(_) => {
                    let sample = figures.sample.expect("a sample");
                    share = sample.chunks_checked as f64 / sample.chunks_total as f64;
                    sampled.push(figures.verify_secs);
                }
            }
        }
    }
    let (full, sampled) = (median(full), median(sampled));
    println!("read-back of 1 GiB at 40 MB/s ({reps} reps, medians):");
    println!("  full:        {full:.2} s");
    println!(
        "  sampled 5 %: {sampled:.2} s = {:.1} % of the full read-back's time ({:.1} % of the chunks: 5 % plus the first and the last, rounded up)",
        sampled / full * 100.0,
        share * 100.0
    );
}
