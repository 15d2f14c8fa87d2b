//! The printable HTML export: one self-contained page per run or device, from
//! the askama template `templates/report.html`.
//!
//! The template receives only text that is ready to show (dates, sizes and rates
//! are formatted here) and askama escapes every `{{ value }}` in it: nothing in
//! this module or the template writes markup around an unescaped value.

use std::fmt;

use askama::Template;
use flashrack_core::{Bound, ByteSize};

use crate::export::{ExportRow, FORMAT};
use crate::time::format_time_short;
use crate::{Counts, DeviceReport, ReportRow, RunReport};

/// The escaper askama applies to every value in an `.html` template (named in
/// `askama.toml`): `&`, `<`, `>`, `"` and `'`, the characters askama's own HTML
/// escaper replaces, as the entities the reports have always used (`&amp;`,
/// `&lt;`, `&gt;`, `&quot;`, `&#39;`; askama's own writes `&#34;` for `&quot;`
/// and so on), so that moving the reports to templates changed no byte of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Entities;

impl askama::filters::Escaper for Entities {
    fn write_escaped_str<W: fmt::Write>(&self, mut dest: W, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let entity = match byte {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            // `at` is the index of an ASCII byte: a character boundary.
            dest.write_str(&text[plain..at])?;
            dest.write_str(entity)?;
            plain = at + 1;
        }
        dest.write_str(&text[plain..])
    }
}

/// The page: a summary list, the record counts and a table row per record.
#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    /// The export format, named in the page's metadata and footer.
    format: &'static str,
    /// The page's title and heading.
    title: String,
    /// The summary's terms and values, before the counts.
    summary: Vec<Item<'a>>,
    /// The records by verdict.
    counts: Counts,
    /// Whether the table has run and image columns (a device's records span
    /// runs; a run's do not).
    with_run: bool,
    /// One per record.
    rows: Vec<Row>,
    /// When the page was made, for a person.
    generated: String,
}

/// A term of the summary and its value.
struct Item<'a> {
    term: &'a str,
    value: String,
    /// Shown in the monospace font (digests, options).
    mono: bool,
}

impl<'a> Item<'a> {
    fn text(term: &'a str, value: impl Into<String>) -> Self {
        Self {
            term,
            value: value.into(),
            mono: false,
        }
    }

    fn mono(term: &'a str, value: impl Into<String>) -> Self {
        Self {
            term,
            value: value.into(),
            mono: true,
        }
    }
}

/// A record as the table shows it: every cell as text.
struct Row {
    /// The verdict: the row's class (its colour) and its verdict cell.
    verdict: &'static str,
    /// The attempt's number, or `refusal N` for a refusal before any attempt.
    number: String,
    run: String,
    image: String,
    port: String,
    serial: String,
    vendor: String,
    model: String,
    capacity: String,
    started: String,
    finished: String,
    /// Bytes written, `≥` before a lower bound, `unknown` when nobody knows.
    written: String,
    write_rate: String,
    verify_rate: String,
    read_back_sha256: String,
    reason: String,
    offset: String,
}

impl Row {
    fn new(row: &ReportRow) -> Self {
        let e = ExportRow::new(row);
        let rate = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_default();
        Self {
            verdict: e.verdict,
            number: match (e.attempt_id, e.refusal_id) {
                (Some(id), _) => id.to_string(),
                (None, Some(id)) => format!("refusal {id}"),
                (None, None) => String::new(),
            },
            run: e.run_id.map(|id| id.to_string()).unwrap_or_default(),
            image: e.image_name.unwrap_or_default(),
            port: e.port_label,
            serial: e.serial.unwrap_or_default(),
            vendor: e.vendor.unwrap_or_default(),
            model: e.model.unwrap_or_default(),
            capacity: ByteSize(e.capacity_bytes).to_string(),
            started: format_time_short(row.started_at),
            finished: row.finished_at.map(format_time_short).unwrap_or_default(),
            written: match (e.bytes_written, row.figures.bytes_written_bound) {
                (Some(bytes), Bound::LowerBound) => format!("≥ {}", ByteSize(bytes)),
                (Some(bytes), _) => ByteSize(bytes).to_string(),
                (None, _) => "unknown".to_string(),
            },
            write_rate: rate(e.write_mb_s),
            verify_rate: rate(e.verify_mb_s),
            read_back_sha256: e.read_back_sha256.unwrap_or_default(),
            reason: e.reason_detail.unwrap_or_default(),
            offset: e.fail_offset.map(|o| o.to_string()).unwrap_or_default(),
        }
    }
}

fn render(page: Page<'_>) -> String {
    // Rendering into a `String` fails only if a value's `Display` fails, and
    // the page holds nothing but strings and integers.
    page.render().expect("the report page renders")
}

/// A run's report as one printable, self-contained HTML page, stamped as generated
/// at `generated_at` (unix milliseconds).
pub fn run_html(report: &RunReport, generated_at: i64) -> String {
    let run = &report.run.run;
    let options = serde_json::to_string(&run.options).unwrap_or_default();
    let stopped = match (run.stopped_at, run.stop_reason) {
        (Some(at), Some(reason)) => format!("{} ({reason})", format_time_short(at)),
        _ => "still open".to_string(),
    };
    render(Page {
        format: FORMAT,
        title: format!("flashrack run {}: {}", run.id, run.image_name),
        summary: vec![
            Item::text("Station", &run.station_id),
            Item::text("Image", &run.image_name),
            Item::mono("Image sha256", run.image_sha256.to_hex()),
            Item::mono("Options", options),
            Item::text("Started", format_time_short(run.started_at)),
            Item::text("Stopped", stopped),
        ],
        counts: report.run.counts,
        with_run: false,
        rows: report.rows.iter().map(Row::new).collect(),
        generated: format_time_short(generated_at),
    })
}

/// A device's report as one printable, self-contained HTML page, stamped as
/// generated at `generated_at` (unix milliseconds).
pub fn device_html(report: &DeviceReport, generated_at: i64) -> String {
    let d = &report.device;
    let opt = |value: &Option<String>| value.clone().unwrap_or_default();
    render(Page {
        format: FORMAT,
        title: format!("flashrack device {}", d.key),
        summary: vec![
            Item::text("Device", &d.key),
            Item::text("Serial", opt(&d.serial)),
            Item::text("Vendor", opt(&d.vendor)),
            Item::text("Model", opt(&d.model)),
            Item::text("Capacity", d.capacity.to_string()),
            Item::text("First seen", format_time_short(d.first_seen)),
            Item::text("Last seen", format_time_short(d.last_seen)),
        ],
        counts: report.counts,
        with_run: true,
        rows: report.rows.iter().map(Row::new).collect(),
        generated: format_time_short(generated_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use askama::filters::Escaper;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        Entities.write_escaped_str(&mut out, text).unwrap();
        out
    }

    #[test]
    fn the_escaper_covers_markup_and_quotes() {
        assert_eq!(
            escaped("<a href='x'>\"&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(escaped("Ünïcødé ≥ 5"), "Ünïcødé ≥ 5");
        assert_eq!(escaped(""), "");
    }
}
