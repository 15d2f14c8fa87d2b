//! The `flashrack` binary's contracts: exit statuses, `--json`, and clear errors
//! for bad input.

use std::path::Path;

mod common;
use common::{flashrack, stderr};

fn write_image(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("image.img");
    std::fs::write(&path, flashrack_testkit::image_bytes(3 << 20, 5, 1 << 18)).unwrap();
    path
}

#[test]
fn flash_exits_0_when_all_pass_1_when_one_fails_and_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path());
    let image = image.to_str().unwrap();
    let data = dir.path().join("data");
    let target = dir.path().join("out.img");
    let ok = flashrack(
        &data,
        &[
            "flash",
            image,
            target.to_str().unwrap(),
            "sim:a",
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let summary: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(
        (summary["passed"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(summary["targets"][1]["target"], "sim:a");
    assert_eq!(
        summary["targets"][1]["read_back_sha256"],
        summary["image_sha256"]
    );

    let failing = flashrack(
        &data,
        &[
            "flash",
            image,
            "sim:b",
            "sim:c:fail_after=1MiB",
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(failing.status.code(), Some(1), "{}", stderr(&failing));
    let summary: serde_json::Value = serde_json::from_slice(&failing.stdout).unwrap();
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["targets"][1]["reason"], "write_error");
    assert!(summary["targets"][1]["offset"].as_u64().is_some());

    // Both flashes are recorded runs.
    let runs = flashrack(&data, &["report", "runs"]);
    assert_eq!(runs.status.code(), Some(0), "{}", stderr(&runs));
    assert_eq!(
        String::from_utf8_lossy(&runs.stdout).lines().count(),
        3,
        "a header and two runs"
    );
    let csv = flashrack(&data, &["report", "run", "2", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout).into_owned();
    assert!(
        csv.starts_with("attempt_id,refusal_id,station_id,run_id,port_label"),
        "{csv}"
    );
    assert!(
        csv.contains(",sim:c,") && csv.contains(",write_error,"),
        "{csv}"
    );
    // The label sheet of each: a label per stick that passed.
    for (run, labels) in [("1", 2), ("2", 1)] {
        let sheet = flashrack(&data, &["report", "run", run, "--format", "labels"]);
        assert_eq!(sheet.status.code(), Some(0), "{}", stderr(&sheet));
        let sheet = String::from_utf8_lossy(&sheet.stdout).into_owned();
        assert_eq!(sheet.matches("class=\"label\"").count(), labels, "{sheet}");
        assert_eq!(sheet.matches("<svg").count(), labels, "{sheet}");
    }
}

#[test]
fn bad_input_exits_2_with_a_clear_message_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A corrupt compressed image.
    let corrupt = dir.path().join("broken.img.xz");
    std::fs::write(&corrupt, [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2, 3, 4, 5]).unwrap();
    let out = flashrack(&data, &["image", "import", corrupt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("broken.img.xz"), "{}", stderr(&out));
    let listed = flashrack(&data, &["image", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    // A wrong checksum.
    let image = write_image(dir.path());
    let out = flashrack(
        &data,
        &[
            "image",
            "import",
            image.to_str().unwrap(),
            "--sha256",
            &"ab".repeat(32),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("sha256"), "{}", stderr(&out));
    // Unknown image, malformed simulated stick, a /dev path that is no device.
    for args in [
        vec!["flash", "nosuchimage", "sim:a"],
        vec!["flash", image.to_str().unwrap(), "sim:a:speed=fast"],
        vec!["flash", image.to_str().unwrap(), "/dev/not-a-device"],
        vec!["flash", image.to_str().unwrap(), "sim:a", "sim:a"],
    ] {
        let out = flashrack(&data, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let last = stderr(&out).lines().last().unwrap_or("").to_string();
        assert!(
            last.starts_with("flashrack: "),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A malformed configuration names the file and the line.
    let config = dir.path().join("station.toml");
    std::fs::write(
        &config,
        "station_id = \"x\"\n[guard]\nmax_size = \"lots\"\n",
    )
    .unwrap();
    let out = flashrack(&data, &["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("station.toml:3:"), "{}", stderr(&out));
}

#[test]
fn logs_to_a_pipe_carry_no_terminal_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path());
    let data = dir.path().join("data");
    // A checksum that does not hold fails the image source: logged as an
    // error while the target is stopped. Stderr is a pipe here, as it is
    // for the station's service (the journal) or a log file.
    let out = flashrack(
        &data,
        &[
            "flash",
            image.to_str().unwrap(),
            "sim:a",
            "--sha256",
            &"cd".repeat(32),
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ERROR"),
        "a log line: {}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains('\u{1b}'),
        "no escape sequences: {:?}",
        stderr(&out)
    );
}

#[test]
fn a_stall_timeout_out_of_range_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path());
    let data = dir.path().join("data");
    // 0 stalled a stick at once ("no progress for 1 s"); u64::MAX overflowed
    // an Instant, a panic in the attempt's supervisor.
    for command in ["flash", "verify"] {
        for secs in ["0", "3601", "18446744073709551615"] {
            let out = flashrack(
                &data,
                &[
                    command,
                    image.to_str().unwrap(),
                    "sim:a",
                    "--stall-timeout",
                    secs,
                    "-q",
                ],
            );
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} {secs}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("--stall-timeout") && !stderr(&out).contains("panicked"),
                "{command} {secs}: {}",
                stderr(&out)
            );
        }
    }
    assert!(!data.join("flashrack.db").exists(), "nothing ran");
}

/// A signature is checked on a checksum list: beside `--sha256` it would be
/// checked by nobody, so every command that takes one refuses the pair
/// before it reaches for the network or the station. Before, `image import
/// URL --sha256 … --signature … --keyring …` downloaded and cached the image
/// with the signature never fetched (and `run start` armed a run with it).
#[test]
fn a_signature_beside_a_digest_is_a_usage_error_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keyring = dir.path().join("vendor.gpg");
    std::fs::write(&keyring, b"not read").unwrap();
    let digest = "ab".repeat(32);
    // Port 9 (discard): nothing listens; a request would fail differently.
    let url = "http://127.0.0.1:9/os.img";
    let pair = [
        "--sha256",
        digest.as_str(),
        "--signature",
        "http://127.0.0.1:9/SHA256SUMS.gpg",
        "--keyring",
        keyring.to_str().unwrap(),
    ];
    for command in [
        vec!["image", "import", url],
        vec!["flash", url, "sim:a"],
        vec!["run", "start", url, "--server", "http://127.0.0.1:9"],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(pair).collect();
        let out = flashrack(&data, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot be used with"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(!data.join("flashrack.db").exists(), "nothing ran");
}

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("missing.img.xz");
    let out = flashrack(&data, &["image", "import", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("No such file or directory").count(),
        1,
        "{}",
        stderr(&out)
    );
}

#[test]
fn each_target_that_cannot_be_written_fails_with_its_real_cause() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path());
    let data = dir.path().join("data");
    let missing_dir_target = dir.path().join("no-such-dir").join("out.img");
    let out = flashrack(
        &data,
        &[
            "flash",
            image.to_str().unwrap(),
            missing_dir_target.to_str().unwrap(),
            "sim:empty:capacity=0",
            "sim:probe:capacity=64MiB,fail_after=4KiB",
            "sim:bad:bad_block=2000001",
            "sim:good",
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |i: usize| &summary["targets"][i];
    // A file target in a missing directory was never there: not `removed`.
    assert_eq!(row(0)["reason"], "unavailable", "{}", row(0));
    let detail = row(0)["detail"].as_str().unwrap();
    assert!(detail.contains("No such file or directory"), "{detail}");
    assert!(!missing_dir_target.parent().unwrap().exists());
    // A device of zero bytes holds no medium; it is not "too small".
    assert_eq!(row(1)["reason"], "no_medium", "{}", row(1));
    assert_eq!(row(1)["stage"], "preparing");
    // A write error in the capacity probe says it was the probe.
    assert_eq!(row(2)["reason"], "probe_error", "{}", row(2));
    assert_eq!(row(2)["stage"], "preparing");
    // Its markers go from the highest offset down, one 512-byte block each:
    // eight are written (4 KiB), the ninth fails: the last block, then the
    // giants every alias window (128 KiB for 64 MiB) from the top, the
    // eighth of them at 64 MiB less eight windows.
    assert_eq!(row(2)["offset"], (64 << 20) - 8 * (128 << 10));
    let detail = row(2)["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("capacity probe failed: writing"),
        "{detail}"
    );
    // A bad block names its own block, and the failed request it was found in.
    assert_eq!(row(3)["reason"], "write_error", "{}", row(3));
    assert_eq!(row(3)["offset"], 2_000_001 / 512 * 512);
    let detail = row(3)["detail"].as_str().unwrap();
    assert!(detail.contains("-byte write at offset 0"), "{detail}");
    assert_eq!(row(4)["verdict"], "pass");
}

#[test]
fn a_missing_dev_path_is_said_not_to_exist_and_a_non_block_one_not_to_be_a_block_device() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path());
    let data = dir.path().join("data");
    let missing = "/dev/flashrack-test-no-such-disk";
    assert!(!Path::new(missing).exists());
    let out = flashrack(&data, &["flash", image.to_str().unwrap(), missing]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{missing} does not exist")),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("not a block device"),
        "{}",
        stderr(&out)
    );
    let out = flashrack(&data, &["flash", image.to_str().unwrap(), "/dev/null"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/dev/null is not a block device"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_station_refuses_to_listen_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = flashrack(
        dir.path(),
        &["demo", "--listen", "0.0.0.0:0", "--image-size", "4MiB"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("without an operator token"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_demos_master_port_must_be_one_of_its_ports_and_is_for_the_demo_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let out = flashrack(
        dir.path(),
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--image-size",
            "1MiB",
            "--by-hand",
            "--master",
            "Z9",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("demo: no port Z9 in the demo's rack of 16 ports"),
        "{}",
        stderr(&out)
    );
    let out = flashrack(dir.path(), &["demo", "--master", "A1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--by-hand"), "{}", stderr(&out));
}
