//! `flashrack demo`: the station and its dashboard over a simulated rack, no
//! hardware and no configuration needed (see `flashrack_app::demo`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flashrack_app::demo::{self, Burst, Demo, DemoOptions, HandRack};
use flashrack_app::{Application, Recording};

use crate::cli::DemoArgs;

/// Runs the demo until SIGTERM or Ctrl-C (or, with `--exit-when-done`, until
/// the burst is over).
pub async fn run(data_dir: &Path, args: DemoArgs) -> Result<ExitCode> {
    let image = demo::image_path(data_dir, args.image_size);
    if demo::needs_image(&image, args.image_size) {
        errln!("generating a {} demo image …", args.image_size);
        demo::write_image(&image, args.image_size)?;
    }
    let station = match &args.config {
        Some(path) => Some(flashrack_config::StationConfig::load(path)?),
        None => None,
    };
    let options = DemoOptions {
        station_id: station.as_ref().map(|c| c.station_id.clone()),
        fleet: station.and_then(|c| c.fleet),
        arm: !args.no_arm,
        by_hand: args.by_hand,
        master: args.master,
        listen: args.listen,
        ports: args.ports,
        image_size: args.image_size,
        seed: args.seed,
        burst: args.burst.map(|sticks| Burst {
            sticks,
            write_speed: args.write_speed.bytes(),
            read_speed: args.read_speed.bytes(),
            exit_when_done: args.exit_when_done,
        }),
        recording: if args.no_records {
            Recording::Memory
        } else {
            Recording::Store
        },
    };
    let Demo {
        config,
        parts,
        rack,
        burst_report,
        hand,
    } = Demo::prepare(data_dir, &options)?;
    errln!(
        "records: {dir} (flashrack --data-dir {dir} report runs)",
        dir = data_dir.display()
    );
    let shutdown = crate::signals::named_shutdown()?;
    let app = Application::build(config, parts).await?;
    crate::cli::say_recovered(app.recovered());
    // A demo whose stdout is closed carries on (its address was not wanted).
    let _ = outln!("dashboard: http://{}/", app.address());
    // The burst's figures, as one JSON line, as soon as they are in (a
    // benchmark reads them while the demo runs on).
    let printed = burst_report.map(|report| {
        tokio::spawn(async move {
            if let Ok(report) = report.await {
                let _ = outln!("{}", serde_json::json!(report));
            }
        })
    });
    if let Some(hand) = hand {
        by_hand(hand);
    }
    let result = app.run_until_signalled(shutdown).await;
    // Printed by now, or never will be (the demo stopped before the burst
    // was over: its sender is gone).
    if let Some(printed) = printed {
        let _ = printed.await;
    }
    rack.pull_all();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the rack's commands from standard input on a thread of its own (a
/// blocking read), answering each on standard output; the end of the input
/// leaves the demo running.
fn by_hand(mut hand: HandRack) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if line.trim().is_empty() {
                continue;
            }
            let answer = match hand.command(&line) {
                Ok(done) => outln!("{done}"),
                Err(error) => outln!("error: {error}"),
            };
            if answer.is_err() {
                return;
            }
        }
    });
}
