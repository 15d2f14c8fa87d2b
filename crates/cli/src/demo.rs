//! `flashrack demo`: the whole flashing path on a simulated rack, no hardware and
//! no configuration needed. A demo image is generated, imported into a cache and
//! written to a rack of simulated sticks, some of them faulty, with live progress
//! and the summary a real run prints. It exercises the same engine as real sticks;
//! only the targets are simulated.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use rand::{Rng, RngCore, SeedableRng};

use crate::cli::{DemoArgs, FlashArgs, VerifyArg};

/// Runs the demo.
pub async fn run(data_dir: &Path, args: DemoArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let image_path = data_dir.join(format!("demo-{}.img", args.image_size.bytes()));
    if std::fs::metadata(&image_path).map(|m| m.len()).ok() != Some(args.image_size.bytes()) {
        eprintln!("generating a {} demo image …", args.image_size);
        write_demo_image(&image_path, args.image_size.bytes())?;
    }
    let sticks = args.sticks.max(1);
    let mut targets = Vec::new();
    for n in 1..=sticks {
        let label = format!(
            "sim:{}{}",
            (b'A' + ((n - 1) / 8) as u8) as char,
            (n - 1) % 8 + 1
        );
        let extra = match n {
            3 => ":write=8MB,read=16MB".to_string(),      // a slow stick
            5 => ":fail_after=40MiB".to_string(),         // dies while writing
            7 => ":capacity=32GiB,fake=8GiB".to_string(), // lies about its size
            10 => ":corrupt_at=20000000".to_string(),     // returns a bad byte
            _ => format!(
                ":write={}MB,read={}MB",
                20 + (n * 7) % 20,
                60 + (n * 13) % 40
            ),
        };
        targets.push(format!("{label}{extra}"));
    }
    eprintln!(
        "flashing {} to {sticks} simulated sticks (3: slow, 5: failing, 7: fake capacity, 10: corrupting)",
        image_path.display()
    );
    crate::flash::run(
        data_dir,
        FlashArgs {
            image: image_path.display().to_string(),
            targets,
            sha256: None,
            verify: VerifyArg::Compare,
            allow_buses: Vec::new(),
            max_size: flashrack_core::ByteSize::parse("256G").expect("valid size"),
            stall_timeout: 60,
            no_probe: false,
            json: false,
            quiet: false,
        },
    )
    .await
}

/// Writes an image like a real installer image: random runs and zero holes.
fn write_demo_image(path: &Path, size: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let tmp = path.with_extension("img.part");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let run = rng.random_range(64 * 1024..8 << 20).min(size - pos);
        if rng.random_bool(0.6) {
            let mut left = run;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                rng.fill_bytes(&mut buf[..n]);
                file.write_all(&buf[..n])?;
                left -= n as u64;
            }
        } else {
            file.seek(SeekFrom::Current(run as i64))?;
        }
        pos += run;
    }
    file.set_len(size)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
