//! Sampled verify from the command line: `flash --sample 5` writes every byte
//! and reads back a seeded 5 % of the chunks; its summary (table and JSON) and
//! the run's report read back from the records (`report run`, JSON and CSV)
//! say `sampled (5 %)` with the same share, seed and chunks, never a plain
//! pass. A share out of range is refused with a clear error.

use std::fs;
use std::path::Path;

mod common;
use common::{flashrack, text};

const MIB: usize = 1 << 20;

/// A 64 MiB image of varied bytes and a target file of its size.
fn image_and_target(dir: &Path) -> (String, String) {
    let image = dir.join("disk.img");
    let bytes: Vec<u8> = (0..64 * MIB).map(|i| (i * 131 % 251) as u8).collect();
    fs::write(&image, bytes).unwrap();
    let target = dir.join("stick.img");
    fs::write(&target, vec![0u8; 64 * MIB]).unwrap();
    (
        image.to_str().unwrap().to_string(),
        target.to_str().unwrap().to_string(),
    )
}

fn import(data_dir: &Path, image: &str) -> String {
    let out = flashrack(data_dir, &["image", "import", image, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let imported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    imported["sha256"].as_str().unwrap().to_string()
}

#[test]
fn a_sampled_flash_and_its_report_agree_on_the_share_and_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (image, target) = image_and_target(dir.path());
    let sha = import(&data_dir, &image);

    let out = flashrack(
        &data_dir,
        &["flash", &sha, &target, "--sample", "5", "--json", "--quiet"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &summary["targets"][0];
    assert_eq!(row["verdict"], "pass", "{summary}");
    assert_eq!(row["proof"], "sampled (5 %)", "{summary}");
    assert_eq!(row["verify_method"], "sampled", "{summary}");
    let sample = &row["sample"];
    assert_eq!(sample["percent"], 5.0, "{summary}");
    let seed = sample["seed"].as_u64().expect("a seed");
    let checked = sample["chunks_checked"].as_u64().unwrap();
    let total = sample["chunks_total"].as_u64().unwrap();
    assert!(checked > 0 && checked < total, "{summary}");
    assert_eq!(
        fs::read(&target).unwrap(),
        fs::read(&image).unwrap(),
        "every byte is written"
    );

    let report = flashrack(&data_dir, &["report", "run", "1", "--format", "json"]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["format"], "flashrack-report/12");
    let attempt = &report["attempts"][0];
    assert_eq!(attempt["verdict"], "pass", "{report}");
    assert_eq!(attempt["verdict_words"], "sampled (5 %)", "{report}");
    assert_eq!(attempt["verify_method"], "sampled", "{report}");
    assert_eq!(attempt["sample_percent"], 5.0, "{report}");
    assert_eq!(attempt["sample_seed"], seed.to_string(), "{report}");
    assert_eq!(attempt["sample_chunks_checked"], checked, "{report}");
    assert_eq!(attempt["sample_chunks_total"], total, "{report}");
    assert_eq!(
        attempt["bytes_verified"], row["bytes_verified"],
        "{report} / {summary}"
    );

    let csv = flashrack(&data_dir, &["report", "run", "1", "--format", "csv"]);
    assert!(csv.status.success(), "{}", text(&csv.stderr));
    let csv = text(&csv.stdout);
    let mut reader = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let line = reader.records().next().unwrap().unwrap();
    assert_eq!(&line[at("verdict_words")], "sampled (5 %)", "{csv}");
    assert_eq!(&line[at("sample_percent")], "5.0", "{csv}");
    assert_eq!(&line[at("sample_seed")], seed.to_string(), "{csv}");

    // The table says it too (its verdicts in capitals: `PASS`, `FAIL`).
    let table = flashrack(
        &data_dir,
        &["flash", &sha, &target, "--sample", "5", "--quiet"],
    );
    assert_eq!(table.status.code(), Some(0), "{}", text(&table.stderr));
    assert!(
        text(&table.stdout).contains("SAMPLED (5 %)"),
        "{}",
        text(&table.stdout)
    );
}

#[test]
fn a_share_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (image, target) = image_and_target(dir.path());
    let sha = import(&data_dir, &image);
    for share in ["0", "100", "-5", "5.001", "lots"] {
        let share = format!("--sample={share}");
        let out = flashrack(&data_dir, &["flash", &sha, &target, &share]);
        assert_eq!(out.status.code(), Some(2), "{share}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("is not a sample share"),
            "{share}: {}",
            text(&out.stderr)
        );
    }
}
