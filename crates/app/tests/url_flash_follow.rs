//! `flash URL TARGETS…` of an image whose size is not known before its
//! download ends (issue 14 §2): a compressed file (gzip here; xz, zstd and
//! bzip2 the same way, by magic bytes) and a raw file whose server states no
//! length. Sticks (loop devices the test attaches, as root) follow the
//! decoded stream: every target writes while the server holds the rest of
//! the file (proven by the order of events, not by timing); a wrong digest
//! fails every target before any verdict and caches nothing; so do they
//! follow a zip whose file's sizes follow its data (a data descriptor),
//! deflated or stored (its end found in the stream, past descriptor patterns
//! in its data), and a descriptor that lies fails them all the same, as
//! does data made to seem to end early, whose image the import then reads
//! from the downloaded archive into the cache; a stick too
//! small fails with its reason when the write passes its end while the other
//! passes, and the run names the real image. And a file that changes on the
//! server while a flash follows it (§3; file targets, no root): every target
//! fails before any verdict, the command says what to do, and the run's
//! report gives the cause.

use std::io::Write;
use std::path::Path;

use flashrack_app::downloads::DigestCheck;
use flashrack_app::images::open_cache;
use flashrack_app::reports::ReportFormat;
use flashrack_app::AppError;
use flashrack_core::{FailReason, RunId, Sha256Digest, Stage, TargetId};
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};
use flashrack_testkit::zips::{data_descriptor, descriptor_and_directory, streamed_zip};
use flashrack_testkit::{image_bytes, LoopDevice};

mod url_flash_support;
use url_flash_support::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Flashes `served` (the image `raw`, as the server has it) to two loop
/// devices, holding the download at `gate` until both have written.
async fn followed_to_two_sticks(served: Served, raw: &[u8], gate: usize) {
    let sha = Sha256Digest::of(raw);
    let server = FileServer::start().await;
    server.serve("/os.img.any", served);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let devices = [LoopDevice::new(32 << 20), LoopDevice::new(32 << 20)];
    let targets: Vec<&Path> = devices.iter().map(|d| d.path()).collect();
    let held = server.clone();
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.img.any", DigestCheck::Sha256(sha)),
        3,
        request(&targets),
        |events| written_before_the_gate(events, 2, &held, gate as u64, || held.open_gate()),
    )
    .await;
    let outcome = outcome.expect("the flash runs");
    assert_eq!(outcome.summary.passed, 2, "{:?}", outcome.summary);
    assert_eq!(outcome.summary.image_sha256, Some(sha));
    imported_before_any_verdict(&events, sha);
    for device in &devices {
        let written = std::fs::read(device.backing()).unwrap();
        assert_eq!(&written[..raw.len()], raw);
    }
    let image = open_cache(&data_dir)
        .unwrap()
        .get(&sha)
        .unwrap()
        .expect("cached");
    assert_eq!(image.size(), raw.len() as u64);
    assert_eq!(downloads_left(&data_dir), 0);
    let report = run_report(&data_dir).await;
    assert_eq!(
        report["run"]["image_sha256"],
        sha.to_hex().as_str(),
        "{report}"
    );
    assert_eq!(
        report["run"]["image_size_bytes"],
        raw.len() as u64,
        "{report}"
    );
    assert_eq!(report["run"]["passed"], 2);
    assert_eq!(report["run"]["stop_reason"], "completed");
    assert_eq!(server.requests_for("/os.img.any").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticks_follow_a_gzip_image_as_it_downloads_and_decompresses() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let raw = image_bytes(24 * MIB, 71, 64 << 10);
    let file = gzip(&raw);
    let gate = file.len() / 2;
    followed_to_two_sticks(
        Served::new(file, "gz-1").behaving(Behaviour::GatedAt(gate)),
        &raw,
        gate,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticks_follow_a_raw_image_whose_server_states_no_length() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let raw = image_bytes(24 * MIB, 72, MIB);
    let gate = 12 * MIB;
    followed_to_two_sticks(
        Served::new(raw.clone(), "raw-1")
            .without_length()
            .behaving(Behaviour::GatedAt(gate)),
        &raw,
        gate,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticks_follow_a_zip_whose_sizes_follow_its_data_as_it_downloads() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let raw = image_bytes(24 * MIB, 75, 64 << 10);
    let file = streamed_zip(
        &[("disk.img", Some(&raw))],
        zip::CompressionMethod::Deflated,
    );
    let gate = file.len() / 2;
    followed_to_two_sticks(
        Served::new(file, "zip-dd-1").behaving(Behaviour::GatedAt(gate)),
        &raw,
        gate,
    )
    .await;
}

/// Stored, the entry's end is where a data descriptor agrees with the data
/// before it (its data holds descriptor patterns that do not): the sticks
/// follow it as it downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticks_follow_a_stored_zip_whose_sizes_follow_its_data_as_it_downloads() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let image = image_bytes(24 * MIB, 77, 64 << 10);
    // Another entry's descriptor, then one with the right sizes for the
    // data before it and a wrong CRC-32, each before a record's signature.
    let mut raw = image[..MIB].to_vec();
    raw.extend_from_slice(&data_descriptor(&image[..4096]));
    raw.extend_from_slice(b"PK\x03\x04");
    let mut near = data_descriptor(&raw);
    near[4] ^= 0x01;
    raw.extend_from_slice(&near);
    raw.extend_from_slice(b"PK\x01\x02");
    raw.extend_from_slice(&image[MIB..]);
    let file = streamed_zip(&[("disk.img", Some(&raw))], zip::CompressionMethod::Stored);
    let gate = file.len() / 2;
    followed_to_two_sticks(
        Served::new(file, "zip-dd-3").behaving(Behaviour::GatedAt(gate)),
        &raw,
        gate,
    )
    .await;
}

/// The data descriptor comes after the entry's data, so the sticks have
/// written most of it when it is read: one whose CRC-32 lies fails every
/// stick before any verdict, and nothing is cached. Deflated, it is read
/// and disagrees; stored, none agrees with the data, so the archive ends
/// with no end found for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_whose_data_descriptor_lies_fails_every_following_stick_before_any_verdict() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    for (method, says) in [
        (zip::CompressionMethod::Deflated, "data descriptor says"),
        (zip::CompressionMethod::Stored, "no data descriptor agrees"),
    ] {
        lying_descriptor_fails_every_stick(method, says).await;
    }
}

/// Flashes a zip (`method`) whose descriptor's CRC-32 lies to two sticks,
/// and checks the flash fails with `says` and every stick before a verdict.
async fn lying_descriptor_fails_every_stick(method: zip::CompressionMethod, says: &str) {
    let raw = image_bytes(16 * MIB, 76, 64 << 10);
    let mut file = streamed_zip(&[("disk.img", Some(&raw))], method);
    let (descriptor, _) = descriptor_and_directory(&file);
    // Its CRC-32, after its signature; the central directory's is right.
    file[descriptor + 4] ^= 0xff;
    let server = FileServer::start().await;
    let gate = file.len() / 2;
    server.serve(
        "/os.zip",
        Served::new(file, "zip-dd-2").behaving(Behaviour::GatedAt(gate)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let devices = [LoopDevice::new(32 << 20), LoopDevice::new(32 << 20)];
    let targets: Vec<&Path> = devices.iter().map(|d| d.path()).collect();
    let held = server.clone();
    let (events, outcome) = flash_watching(
        &data_dir,
        import(
            &server,
            "/os.zip",
            DigestCheck::Sha256(Sha256Digest::of(&raw)),
        ),
        3,
        request(&targets),
        |events| written_before_the_gate(events, 2, &held, gate as u64, || held.open_gate()),
    )
    .await;
    let error = outcome.expect_err("the flash fails");
    let words = flashrack_app::downloads::error_chain(&error);
    assert!(words.contains(says), "{method:?}: {words}");
    let ended = verdicts(&events);
    assert_eq!(ended.len(), 2, "{ended:?}");
    for (target, verdict) in &ended {
        assert_eq!(
            verdict.failure().map(|f| &f.reason),
            Some(&FailReason::Interrupted),
            "{target}: {verdict:?}"
        );
    }
    assert!(open_cache(&data_dir).unwrap().list().unwrap().is_empty());
    let report = run_report(&data_dir).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0);
    assert_eq!(report["run"]["interrupted"], 2);
}

/// A stored file whose data holds what reads as its data descriptor seems
/// to end there as it arrives, and the sticks are given that much; once the
/// archive is whole its central directory lists the file longer. Every
/// stick fails with the reason before any verdict (none holds the image),
/// the import reads the file again from the downloaded archive, as from a
/// file, and the image is in the cache for the next flash, which writes it
/// whole from there without downloading it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticks_that_followed_a_stored_zip_made_to_seem_to_end_early_fail_and_the_image_is_cached()
{
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let image = image_bytes(16 * MIB, 78, 64 << 10);
    let mut raw = image[..MIB].to_vec();
    raw.extend_from_slice(&data_descriptor(&raw.clone()));
    raw.extend_from_slice(b"PK\x03\x04");
    raw.extend_from_slice(&image[MIB..]);
    let sha = Sha256Digest::of(&raw);
    let file = streamed_zip(&[("disk.img", Some(&raw))], zip::CompressionMethod::Stored);
    let server = FileServer::start().await;
    let gate = file.len() / 2;
    server.serve(
        "/os.zip",
        Served::new(file, "zip-made-1").behaving(Behaviour::GatedAt(gate)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let devices = [LoopDevice::new(32 << 20), LoopDevice::new(32 << 20)];
    let targets: Vec<&Path> = devices.iter().map(|d| d.path()).collect();
    let held = server.clone();
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.zip", DigestCheck::Sha256(sha)),
        3,
        request(&targets),
        |events| written_before_the_gate(events, 2, &held, gate as u64, || held.open_gate()),
    )
    .await;
    let error = outcome.expect_err("the flash fails");
    assert!(
        matches!(&error, AppError::FollowAbandoned { sha256, .. } if *sha256 == sha),
        "{error:?}"
    );
    let words = flashrack_app::downloads::error_chain(&error);
    assert!(
        words.contains(&format!("seemed to end after {MIB} bytes"))
            && words.contains(&format!("lists {} bytes", raw.len()))
            && words.contains("flash it again to write it whole"),
        "{words}"
    );
    let ended = verdicts(&events);
    assert_eq!(ended.len(), 2, "{ended:?}");
    for (target, verdict) in &ended {
        let failure = verdict.failure().expect("failed");
        assert_eq!(
            failure.reason,
            FailReason::Interrupted,
            "{target}: {verdict:?}"
        );
    }
    let cache = open_cache(&data_dir).unwrap();
    let cached = cache.get(&sha).unwrap().expect("the image is cached");
    assert_eq!(std::fs::read(&cached.path).unwrap(), raw);
    let report = run_report(&data_dir).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0);
    assert_eq!(report["run"]["interrupted"], 2);
    let detail = report["run"]["stop_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("seemed to end after"), "{report}");
    assert_eq!(server.requests_for("/os.zip").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_fails_every_following_stick_before_any_verdict_and_caches_nothing() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let raw = image_bytes(16 * MIB, 73, 64 << 10);
    let file = gzip(&raw);
    let server = FileServer::start().await;
    // Held halfway until both sticks have written: they follow the download.
    let gate = file.len() / 2;
    server.serve(
        "/os.img.gz",
        Served::new(file, "gz-2").behaving(Behaviour::GatedAt(gate)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let devices = [LoopDevice::new(32 << 20), LoopDevice::new(32 << 20)];
    let targets: Vec<&Path> = devices.iter().map(|d| d.path()).collect();
    let wrong = Sha256Digest::of(b"another image");
    let held = server.clone();
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.img.gz", DigestCheck::Sha256(wrong)),
        3,
        request(&targets),
        |events| written_before_the_gate(events, 2, &held, gate as u64, || held.open_gate()),
    )
    .await;
    let error = outcome.expect_err("the flash fails");
    let words = flashrack_app::downloads::error_chain(&error);
    assert!(words.contains(&wrong.to_hex()), "{words}");
    let ended = verdicts(&events);
    assert_eq!(ended.len(), 2, "{ended:?}");
    for (target, verdict) in &ended {
        assert_eq!(
            verdict.failure().map(|f| &f.reason),
            Some(&FailReason::Interrupted),
            "{target}: {verdict:?}"
        );
    }
    assert!(open_cache(&data_dir).unwrap().list().unwrap().is_empty());
    assert_eq!(downloads_left(&data_dir), 0, "the wrong bytes are not kept");
    let report = run_report(&data_dir).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0);
    assert_eq!(report["run"]["interrupted"], 2);
    let detail = report["run"]["stop_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&wrong.to_hex()),
        "the digest expected: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_too_small_for_an_image_of_unknown_size_fails_where_the_write_passes_its_end() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let raw = image_bytes(24 * MIB, 74, 64 << 10);
    let sha = Sha256Digest::of(&raw);
    let server = FileServer::start().await;
    server.serve("/os.img.gz", Served::new(gzip(&raw), "gz-3"));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (big, small) = (LoopDevice::new(32 << 20), LoopDevice::new(16 << 20));
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.img.gz", DigestCheck::Sha256(sha)),
        3,
        request(&[big.path(), small.path()]),
        |mut events| async move {
            let mut all = Vec::new();
            while let Some(event) = events.recv().await {
                all.push(event);
            }
            all
        },
    )
    .await;
    let outcome = outcome.expect("the flash runs");
    assert_eq!(outcome.summary.passed, 1, "{:?}", outcome.summary);
    assert_eq!(outcome.summary.failed, 1, "{:?}", outcome.summary);
    assert_eq!(outcome.summary.image_sha256, Some(sha));
    let ended = verdicts(&events);
    let small_id = TargetId::new(small.path().display().to_string());
    let (_, verdict) = ended
        .iter()
        .find(|(t, _)| *t == small_id)
        .expect("a verdict");
    let failure = verdict.failure().expect("a failure");
    assert_eq!(failure.stage, Stage::Writing, "{failure:?}");
    match &failure.reason {
        FailReason::TooSmall { capacity, needed } => {
            assert_eq!(capacity.0, 16 << 20);
            // Where the write passed the stick's end: the chunk that did not fit.
            assert!(
                needed.0 > 16 << 20 && needed.0 <= raw.len() as u64,
                "{needed:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        &std::fs::read(big.backing()).unwrap()[..raw.len()],
        &raw[..]
    );
    let report = run_report(&data_dir).await;
    assert_eq!(
        report["run"]["image_sha256"],
        sha.to_hex().as_str(),
        "{report}"
    );
    assert_eq!(report["run"]["passed"], 1);
    assert_eq!(report["run"]["failed"], 1);
    let rows = report["attempts"].as_array().unwrap();
    let small_row = rows
        .iter()
        .find(|r| r["reason_code"] == "too_small")
        .expect("the small stick's row");
    assert_eq!(small_row["stage"], "writing", "{small_row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_on_the_server_while_followed_fails_every_target_and_says_what_to_do() {
    let old = image_bytes(16 * MIB, 75, MIB);
    let new = image_bytes(16 * MIB, 76, MIB);
    let server = FileServer::start().await;
    let gate = 8 * MIB;
    // The first answer stops at the gate and is cut when the test opens it,
    // after it has put a new file (a new ETag) in the old one's place.
    server.serve(
        "/os.img",
        Served::new(old.clone(), "os-1").behaving(Behaviour::CutAtGate(gate)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let held = server.clone();
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.img", DigestCheck::None),
        3,
        request(&[&a, &b]),
        |events| {
            written_before_the_gate(events, 2, &held, gate as u64, || {
                held.serve("/os.img", Served::new(new.clone(), "os-2"));
                held.open_gate();
            })
        },
    )
    .await;
    let error = outcome.expect_err("the flash fails");
    assert!(matches!(error, AppError::SourceChanged { .. }), "{error:#}");
    let words = error.to_string();
    assert!(
        words.contains("changed on the server") && words.contains("flash it again"),
        "{words}"
    );
    // The resume asked for the rest of the old file and got the new one whole.
    let requests = server.requests_for("/os.img");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].if_range.as_deref(), Some("\"os-1\""));
    assert_eq!(requests[1].status, 200);
    let ended = verdicts(&events);
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert!(
        ended
            .iter()
            .all(|(_, v)| v.failure().map(|f| &f.reason) == Some(&FailReason::Interrupted)),
        "{ended:?}"
    );
    assert!(open_cache(&data_dir).unwrap().list().unwrap().is_empty());
    assert_eq!(
        downloads_left(&data_dir),
        0,
        "the old file's bytes are gone"
    );
    // The report gives the cause, in the run and on every record (JSON and CSV).
    let report = run_report(&data_dir).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0);
    let detail = report["run"]["stop_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("changed on the server") && detail.contains("\"os-2\""),
        "{report}"
    );
    for row in report["attempts"].as_array().unwrap() {
        assert_eq!(row["run_stop_detail"], detail, "{row}");
    }
    let csv = flashrack_app::reports::run_report(&data_dir, None, RunId(1), ReportFormat::Csv)
        .await
        .unwrap();
    let csv = csv.body;
    assert!(
        csv.lines().next().unwrap().contains(",run_stop_detail,"),
        "{csv}"
    );
    assert!(csv.contains("changed on the server"), "{csv}");
}
