//! The end-of-run summary as a table for people (`flash --json` prints the
//! library's summary as it is).

use flashrack_app::summary::Summary;
use flashrack_core::ByteSize;

/// A plain-text table: a line per target, then the counts.
pub fn table(summary: &Summary) -> String {
    let header = [
        "TARGET",
        "SIZE",
        "VERDICT",
        "REASON",
        "WRITE MB/s",
        "VERIFY MB/s",
        "READ BACK",
    ];
    let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
    for r in &summary.targets {
        let speed = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        rows.push([
            r.target.to_string(),
            r.figures.capacity.to_string(),
            // A pass says what it proved: `SAMPLED (5 %)`, never a plain PASS.
            r.proof
                .as_deref()
                .unwrap_or(r.verdict.as_str())
                .to_uppercase(),
            // The last attempt's reason, and how many attempts it took.
            match (&r.detail, r.attempts) {
                (None, 1) => "-".to_string(),
                (None, n) => format!("after {n} attempts"),
                (Some(detail), 1) => detail.clone(),
                (Some(detail), n) => format!("{detail} (after {n} attempts)"),
            },
            speed(r.write_mb_per_sec),
            speed(r.verify_mb_per_sec),
            // The whole digest is in the JSON and the reports; here, whether
            // it is the image's, or the beginning of what was read instead.
            match r.figures.read_back_sha256 {
                // A sparse read-back proves the map's ranges, not the image:
                // how much of it, and how much was left unchecked.
                None if r.figures.bytes_skipped > 0 => format!(
                    "sparse: {} checked, {} skipped",
                    ByteSize(r.figures.bytes_verified),
                    ByteSize(r.figures.bytes_skipped)
                ),
                None => "-".to_string(),
                Some(d) if Some(d) == summary.image_sha256 => "= image".to_string(),
                Some(d) => d.short(),
            },
        ]);
    }
    // Within 120 columns: the reason and the target wrap, never the table.
    let mut out = crate::table::render_within(&rows, crate::table::MAX_WIDTH, &[3, 0]);
    // Counted as the records count them (`report runs`): a refusal and an
    // interruption are not failures, and each is named when there is one.
    let mut counts = format!("{} passed, {} failed", summary.passed, summary.failed);
    for (n, word) in [
        (summary.refused, "refused"),
        (summary.interrupted, "interrupted"),
    ] {
        if n > 0 {
            counts.push_str(&format!(", {n} {word}"));
        }
    }
    let image = match &summary.image_sha256 {
        Some(sha256) => format!("image {}, {}", sha256.short(), ByteSize(summary.image_size)),
        None => "image not known: stopped before its import ended".to_string(),
    };
    out.push_str(&format!(
        "{counts} in {:.1} s ({image})\n",
        summary.elapsed_secs
    ));
    out
}
