//! What the run's image is, on the run's reports: the HTML report's "Image
//! contents" line and the JSON export's `image`, and the forced raw run in the
//! options' words.

use flashrack_report::{run_html, run_json, ImageInfo, RunReport};

fn report() -> RunReport {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/run.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A non-hybrid Windows-like installer ISO, as the inspection records it.
fn windows_iso() -> ImageInfo {
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "size": 4_700_000_000u64,
        "filesystem": { "kind": "iso9660", "label": "PHOTOS_2023" },
        "iso": {
            "volume_id": "PHOTOS_2023", "udf": true, "el_torito": ["bios", "uefi"],
            "hybrid": false, "windows_installer": true
        },
        "os": { "name": "Windows installer", "evidence": "sources/install.wim|esd on the ISO" }
    }))
    .unwrap()
}

#[test]
fn a_report_without_the_images_inspection_has_no_image_contents() {
    let report = report();
    assert!(!run_html(&report, 0).contains("Image contents"));
    assert!(!run_json(&report).contains("\"image\""));
}

#[test]
fn the_run_report_says_what_the_image_is_and_that_a_raw_run_was_forced() {
    let mut report = report();
    report.image = Some(windows_iso());
    report.run.run.options["force_raw"] = serde_json::json!(true);
    let html = run_html(&report, 0);
    assert!(html.contains("Image contents"), "{html}");
    assert!(
        html.contains("ISO 9660 &quot;PHOTOS_2023&quot;, UDF, El Torito (BIOS, UEFI), not hybrid; Windows installer")
            || html.contains("ISO 9660 &#34;PHOTOS_2023&#34;, UDF, El Torito (BIOS, UEFI), not hybrid; Windows installer"),
        "{html}"
    );
    assert!(html.contains("written raw, the stick will not boot"));
    assert!(html.contains("raw run forced by the operator"));
    let json: serde_json::Value = serde_json::from_str(&run_json(&report)).unwrap();
    assert_eq!(json["image"]["iso"]["windows_installer"], true);
    assert_eq!(json["run"]["options"]["force_raw"], true);
}
