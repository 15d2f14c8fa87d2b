//! The label sheet of a run: one printable label per stick that passed, to
//! stick on the stick or its sleeve (port, serial, verdict, image, date and a
//! QR code of the record's reference), from the askama template
//! `templates/labels.html`.
//!
//! The QR code is drawn as inline SVG by the `qrcode` crate from the
//! record's reference ([`record_reference`]); every other value is escaped by
//! the template engine.

use askama::Template;
use qrcode::render::svg;
use qrcode::QrCode;

use crate::export::{FORMAT, VERSION};
use crate::time::format_time_short;
use crate::{DeviceReport, ReportRow, ReportVerdict, RunReport};

/// How many hex digits of the image's sha256 a label prints.
pub const LABEL_SHA256_DIGITS: usize = 12;

/// How many hex digits of the image's sha256 a record reference carries.
const REFERENCE_SHA256_DIGITS: usize = 16;

/// A record's reference, the text of its label's QR code: the station, run
/// and attempt that name the record in the station's records (its run
/// report, `GET /api/v1/runs/{run}/report`, and the stick's history), and
/// what the label claims about it, so that a scan can be checked against the
/// records: `flashrack:rack-1/run/1/attempt/5?serial=…&image=<16 hex digits
/// of the image's sha256>&verdict=pass`. A pass says what it proved, never a
/// plain `pass` for a weaker proof (as every other view of it):
/// `verdict=sampled&sample=5` for a sampled verify of 5 % of the chunks,
/// `verdict=audit_pass` for an audit, `verdict=unverified` for a stick written
/// and not read back, `verdict=sparse` for a sparse run's pass (its block
/// map's ranges written and read back, the rest of the image neither),
/// `verdict=sparse_sampled&sample=5` for a sample of those ranges. Text that is not a letter, a digit or one of `-._~` is
/// percent-encoded (UTF-8). `None` for a row without an attempt (a refusal
/// before any attempt is no stick's record).
pub fn record_reference(row: &ReportRow) -> Option<String> {
    let attempt = row.attempt_id?;
    let run = row.run_id?;
    let mut text = format!(
        "flashrack:{}/run/{}/attempt/{}?serial={}",
        percent(&row.station_id),
        run.0,
        attempt.0,
        percent(row.serial.as_deref().unwrap_or(&row.device_key)),
    );
    if let Some(sha) = row.image_sha256 {
        text.push_str("&image=");
        text.push_str(&sha.to_hex()[..REFERENCE_SHA256_DIGITS]);
    }
    text.push_str("&verdict=");
    match row.verdict {
        ReportVerdict::Pass => text.push_str(&pass_token(&row.figures)),
        other => text.push_str(other.as_str()),
    }
    Some(text)
}

/// What a pass proved, as a reference's `verdict` (and `sample`) value.
fn pass_token(figures: &flashrack_core::AttemptFigures) -> String {
    use flashrack_core::VerifyMethod;
    let sparse = if figures.bytes_skipped > 0 {
        "sparse_"
    } else {
        ""
    };
    match (figures.verify_method, &figures.sample) {
        (Some(VerifyMethod::Sampled), Some(sample)) => format!(
            "{sparse}sampled&sample={}",
            percent(&trim_percent(sample.percent))
        ),
        (Some(VerifyMethod::Sampled), None) => format!("{sparse}sampled"),
        (Some(VerifyMethod::Audit), _) => "audit_pass".into(),
        (Some(VerifyMethod::None), _) => "unverified".into(),
        _ if figures.bytes_skipped > 0 => "sparse".into(),
        _ => "pass".into(),
    }
}

/// A percentage with at most two decimals and no trailing zeros (`5`,
/// `0.5`, `12.25`), as the verdict's words give it.
fn trim_percent(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `text` percent-encoded but for ASCII letters, digits and `-._~`.
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One label as the template shows it.
struct Label {
    port: String,
    serial: String,
    /// What the pass proved: `pass`, `sampled (5 %)`, `audit pass`.
    verdict: String,
    image: String,
    sha256: String,
    date: String,
    reference: String,
    /// The QR code as an `<svg>` element (no user text inside: rectangles
    /// only), or `None` when the reference does not fit in a QR code.
    qr_svg: Option<String>,
}

/// The label sheet's page.
#[derive(Template)]
#[template(path = "labels.html")]
struct Sheet {
    format: &'static str,
    version: &'static str,
    title: String,
    generated: String,
    labels: Vec<Label>,
}

/// `text` as a QR code in an `<svg>` element, black on white with its quiet
/// zone; `None` when it does not fit in a QR code.
fn qr_svg(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let image = code
        .render::<svg::Color>()
        .min_dimensions(160, 160)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // Inline in HTML: the `<svg>` element without the XML declaration.
    image.find("<svg").map(|at| image[at..].to_string())
}

/// The label sheet of a run as one printable, self-contained HTML page: a
/// label per attempt that passed, by port (A2 before A10), stamped as
/// generated at `generated_at` (unix milliseconds). A run without a pass
/// gives a sheet that says so.
pub fn labels_html(report: &RunReport, generated_at: i64) -> String {
    let run = &report.run.run;
    sheet(
        format!(
            "flashrack run {}: {} — labels (station {})",
            run.id, run.image_name, run.station_id
        ),
        report.rows_by_port(),
        generated_at,
    )
}

/// The label sheet of a device: a label per attempt of it that passed,
/// oldest first (a stick flashed again gets the label of each pass).
pub fn device_labels_html(report: &DeviceReport, generated_at: i64) -> String {
    sheet(
        format!("flashrack device {} — labels", report.device.key),
        report.rows.iter().collect(),
        generated_at,
    )
}

fn sheet(title: String, rows: Vec<&ReportRow>, generated_at: i64) -> String {
    let labels = rows
        .into_iter()
        .filter(|row| row.verdict == ReportVerdict::Pass)
        .filter_map(|row| {
            let reference = record_reference(row)?;
            Some(Label {
                port: row.port_label.clone(),
                serial: row.serial.clone().unwrap_or_else(|| row.device_key.clone()),
                verdict: crate::export::verdict_words(row),
                image: row.image_name.clone().unwrap_or_default(),
                sha256: row
                    .image_sha256
                    .map(|d| d.to_hex()[..LABEL_SHA256_DIGITS].to_string())
                    .unwrap_or_default(),
                date: format_time_short(row.finished_at.unwrap_or(row.started_at))
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                qr_svg: qr_svg(&reference),
                reference,
            })
        })
        .collect();
    let sheet = Sheet {
        format: FORMAT,
        version: VERSION,
        title,
        generated: format_time_short(generated_at),
        labels,
    };
    // Rendering into a `String` fails only if a value's `Display` fails, and
    // the sheet holds nothing but strings.
    sheet.render().expect("the label sheet renders")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_escapes_what_is_not_plain() {
        assert_eq!(percent("AA-00_1.2~"), "AA-00_1.2~");
        assert_eq!(percent("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn a_weaker_pass_is_never_a_plain_pass_in_a_reference() {
        use flashrack_core::{AttemptFigures, VerifyMethod, VerifySample};
        let with = |method, sample| AttemptFigures {
            verify_method: Some(method),
            sample,
            ..AttemptFigures::default()
        };
        let sample = |percent| {
            Some(VerifySample {
                percent,
                seed: 7,
                chunks_checked: 3,
                chunks_total: 100,
            })
        };
        assert_eq!(pass_token(&with(VerifyMethod::Compare, None)), "pass");
        assert_eq!(
            pass_token(&with(VerifyMethod::Sampled, sample(5.0))),
            "sampled&sample=5"
        );
        assert_eq!(
            pass_token(&with(VerifyMethod::Sampled, sample(12.25))),
            "sampled&sample=12.25"
        );
        assert_eq!(
            pass_token(&with(VerifyMethod::Sampled, sample(0.5))),
            "sampled&sample=0.5"
        );
        assert_eq!(pass_token(&with(VerifyMethod::Audit, None)), "audit_pass");
        assert_eq!(pass_token(&with(VerifyMethod::None, None)), "unverified");
        let sparse = flashrack_core::AttemptFigures {
            bytes_verified: 4096,
            bytes_skipped: 8192,
            ..with(VerifyMethod::Compare, None)
        };
        assert_eq!(pass_token(&sparse), "sparse");
        // A sample of a sparse run's ranges: both.
        let sparse_sample = flashrack_core::AttemptFigures {
            bytes_skipped: 8192,
            ..with(VerifyMethod::Sampled, sample(5.0))
        };
        assert_eq!(pass_token(&sparse_sample), "sparse_sampled&sample=5");
    }

    #[test]
    fn a_qr_code_is_an_svg_element_of_rectangles_only() {
        let svg = qr_svg("flashrack:rack-1/run/1/attempt/5?serial=%3Cscript%3E").unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(!svg.contains("script"), "{svg}");
    }
}
