//! The printable HTML export: one self-contained page per run or device, from
//! the askama template `templates/report.html`.
//!
//! The template receives only text that is ready to show (dates, sizes and rates
//! are formatted here) and askama escapes every `{{ value }}` in it: nothing in
//! this module or the template writes markup around an unescaped value.

use std::fmt;

use askama::Template;
use flashrack_core::{Bound, ByteSize};

use crate::export::{failures_by_reason, options_words, yield_words, ExportRow, FORMAT, VERSION};
use crate::time::format_time_short;
use crate::{Counts, DeviceReport, LotReport, ReportRow, Run, RunReport};

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
    /// Whether the table has a station column (a lot's records span
    /// stations).
    with_station: bool,
    /// One per record.
    rows: Vec<Row>,
    /// When the page was made, for a person.
    generated: String,
    /// The flashrack that made it.
    version: &'static str,
    /// The running header of every printed page (a CSS string literal).
    header_css: String,
    /// The station, in the running header (a CSS string literal).
    station_css: String,
    /// When the page was made, in the running footer (a CSS string literal).
    generated_css: String,
    /// Failures by reason, most frequent first.
    failures: Vec<(String, u64)>,
    /// Whether the page ends with the signature and approval block (a run's
    /// report, which QA signs).
    signatures: bool,
}

/// `text` as a CSS string literal for a `content:` in the page's `<style>`:
/// every character but letters, digits and spaces is written as a CSS hex
/// escape, so that nothing in a name (a quote, `</style>`) can end the string
/// or the style sheet. Safe to put into the template unescaped.
fn css_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == ' ' {
            out.push(c);
        } else {
            // A space ends the escape (and is consumed by it: CSS drops one
            // white space after a hex escape, even one of six digits).
            out.push_str(&format!("\\{:06x} ", u32::from(c)));
        }
    }
    out.push('"');
    out
}

/// A text option of the run, or "not given" (runs armed without it, and runs
/// recorded before it existed).
fn given(value: Option<&str>) -> String {
    value.unwrap_or("not given").to_string()
}

/// The image's size in words (`629 MB (629145600 bytes)`), or "not recorded".
/// What the printable report says for the digest of a run whose image was
/// never imported (see [`Run::image_imported`]).
const NOT_IMPORTED_WORDS: &str =
    "none: the run wrote while its image was being imported, and that import did not end";

fn image_size_words(run: &Run) -> String {
    run.image_size
        .map(|size| size.exact().to_string())
        .unwrap_or_else(|| "not recorded".to_string())
}

/// Where the image came from in words: the imported file's name, size and
/// sha256, or "not recorded".
fn image_source_words(run: &Run) -> String {
    match &run.image_source {
        Some(source) => format!(
            "{} ({}), sha256 {}",
            source.file_name,
            source.size,
            source.sha256.to_hex()
        ),
        None => "not recorded".to_string(),
    }
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
    /// The verdict: the row's class (its colour).
    verdict: &'static str,
    /// The verdict cell: what a pass proved (`pass`, `sampled (5 %)`, `audit
    /// pass`, `written, not verified`), else the verdict.
    verdict_words: String,
    /// The attempt's number, or `refusal N` for a refusal before any attempt.
    number: String,
    station: String,
    run: String,
    image: String,
    /// Who armed the row's run, and its lot (a device's records span runs).
    operator: String,
    lot: String,
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
    /// How the read-back was checked: `compare`, `hash`, `none`, with
    /// `after reset` when the stick was reset before it was read back.
    verify_method: String,
    reason: String,
    offset: String,
}

impl Row {
    fn new(row: &ReportRow) -> Self {
        let e = ExportRow::new(row);
        let rate = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_default();
        Self {
            verdict: e.verdict,
            verdict_words: e.verdict_words.clone(),
            number: match (e.attempt_id, e.refusal_id) {
                (Some(id), _) => id.to_string(),
                (None, Some(id)) => format!("refusal {id}"),
                (None, None) => String::new(),
            },
            station: e.station_id,
            run: e.run_id.map(|id| id.to_string()).unwrap_or_default(),
            image: e.image_name.unwrap_or_default(),
            operator: e.operator.unwrap_or_default(),
            lot: e.lot.unwrap_or_default(),
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
            // A sparse attempt proves its block map's ranges only: the cell
            // says how much was checked and how much was not.
            verify_method: match (e.verify_method, e.verified_after_reset, e.bytes_skipped) {
                // A sampled read-back: its share, the chunks it checked and
                // the seed that chose them (to repeat the choice).
                (Some(_), reset, 0) if row.figures.sample.is_some() => {
                    let sample = row.figures.sample.as_ref().expect("checked above");
                    format!(
                        "{}{}: {} of {} chunks, seed {}",
                        sample.words(),
                        if reset { " after reset" } else { "" },
                        sample.chunks_checked,
                        sample.chunks_total,
                        sample.seed
                    )
                }
                (Some(method), true, 0) => format!("{method} after reset"),
                (method, _, 0) => method.unwrap_or_default().to_string(),
                (method, reset, skipped) => format!(
                    "{}sparse: {} checked, {} skipped (not checked)",
                    method
                        .map(|m| format!("{m}{}, ", if reset { " after reset" } else { "" }))
                        .unwrap_or_default(),
                    ByteSize(e.bytes_verified),
                    ByteSize(skipped)
                ),
            },
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
    let stopped = match (run.stopped_at, run.stop_reason, &run.stop_detail) {
        (Some(at), Some(reason), Some(detail)) => format!(
            "{} ({}: {detail})",
            format_time_short(at),
            reason.describe()
        ),
        (Some(at), Some(reason), None) => {
            format!("{} ({})", format_time_short(at), reason.describe())
        }
        _ => "still open".to_string(),
    };
    let title = format!("flashrack run {}: {}", run.id, run.image_name);
    // Printed by port (A1, A2 … A10, B1), each port's records in the order
    // they were made.
    let rows = report.rows_by_port();
    let generated = format_time_short(generated_at);
    render(Page {
        format: FORMAT,
        header_css: css_string(&title),
        station_css: css_string(&format!("station {} · flashrack {VERSION}", run.station_id)),
        generated_css: css_string(&format!("generated {generated}")),
        title,
        summary: [
            Item::text("Station", &run.station_id),
            Item::text("Operator", given(run.operator())),
            Item::text("Lot", given(run.lot())),
            Item::text("flashrack", VERSION),
            Item::text("Image", &run.image_name),
            match run.image_digest() {
                Some(digest) => Item::mono("Image sha256", digest.to_hex()),
                None => Item::text("Image sha256", NOT_IMPORTED_WORDS),
            },
            Item::text("Image size", image_size_words(run)),
            Item::text("Imported from", image_source_words(run)),
        ]
        .into_iter()
        // A built image's origin is no download, nor is a captured one's.
        .chain(
            report
                .image_provenance
                .as_ref()
                .map(|p| Item::text(origin_label(p), p.to_string())),
        )
        .chain([
            Item::text("Options", options_words(&run.options)),
            Item::text("Started", format_time_short(run.started_at)),
            Item::text("Stopped", stopped),
            Item::text("Yield", yield_words(&report.run.counts, &report.rows)),
        ])
        .chain(report.image.as_ref().map(|image| {
            // What the image is; a raw write that would not boot is said
            // beside it (the options say whether it was forced).
            let mut words = image.summary();
            if let Some(refusal) = image.raw_write_refusal() {
                words.push_str(&format!("; {}", refusal.reason));
            }
            Item::text("Image contents", words)
        }))
        .collect(),
        counts: report.run.counts,
        with_run: false,
        with_station: false,
        rows: rows.into_iter().map(Row::new).collect(),
        generated,
        version: VERSION,
        failures: failures_by_reason(&report.rows),
        signatures: true,
    })
}

/// A device's report as one printable, self-contained HTML page, stamped as
/// generated at `generated_at` (unix milliseconds).
pub fn device_html(report: &DeviceReport, generated_at: i64) -> String {
    let d = &report.device;
    let opt = |value: &Option<String>| value.clone().unwrap_or_default();
    let title = format!("flashrack device {}", d.key);
    let generated = format_time_short(generated_at);
    render(Page {
        format: FORMAT,
        header_css: css_string(&title),
        station_css: css_string(&format!("flashrack {VERSION}")),
        generated_css: css_string(&format!("generated {generated}")),
        title,
        summary: vec![
            Item::text("Device", &d.key),
            Item::text("Serial", opt(&d.serial)),
            Item::text("Vendor", opt(&d.vendor)),
            Item::text("Model", opt(&d.model)),
            Item::text("Capacity", d.capacity.to_string()),
            Item::text("First seen", format_time_short(d.first_seen)),
            Item::text("Last seen", format_time_short(d.last_seen)),
            Item::text("flashrack", VERSION),
            Item::text("Yield", yield_words(&report.counts, &report.rows)),
        ]
        .into_iter()
        .chain(report.image_origins.iter().map(origin_item))
        .collect(),
        counts: report.counts,
        with_run: true,
        // A stick's history spans stations.
        with_station: true,
        rows: report.rows.iter().map(Row::new).collect(),
        generated,
        version: VERSION,
        failures: failures_by_reason(&report.rows),
        signatures: true,
    })
}

/// Where an image came from, as a summary line: "Downloaded from" (URL,
/// validators, digest source, signer), "Captured" (the master stick) or
/// "Origin" (a bootable layout built from another image).
fn origin_item(origin: &crate::ImageOrigin) -> Item<'static> {
    Item::text(
        origin_label(&origin.provenance),
        format!("{}: {}", origin.name, origin.provenance),
    )
}

/// What a report calls an image's origin: "Origin" for an image built from
/// another, "Captured" for a master stick's, "Downloaded from" for a
/// download. The hub's dashboard says it the same way.
pub fn origin_label(provenance: &flashrack_core::Provenance) -> &'static str {
    if provenance.built.is_some() {
        "Origin"
    } else if provenance.captured.is_some() {
        "Captured"
    } else {
        "Downloaded from"
    }
}

/// A lot's report (its records at every station) as one printable,
/// self-contained HTML page, stamped as generated at `generated_at` (unix
/// milliseconds).
pub fn lot_html(report: &LotReport, generated_at: i64) -> String {
    let lot = &report.lot;
    // Each station's run, and why it stopped once it has (in the station's
    // words where it gave them).
    let runs = report
        .runs
        .iter()
        .map(|r| {
            let run = &r.run;
            match (run.stop_reason, &run.stop_detail) {
                (Some(reason), Some(detail)) => format!(
                    "{} run {} ({}: {detail})",
                    run.station_id,
                    run.id,
                    reason.describe()
                ),
                (Some(reason), None) => {
                    format!("{} run {} ({})", run.station_id, run.id, reason.describe())
                }
                _ => format!("{} run {}", run.station_id, run.id),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let title = format!("flashrack lot {}: {}", lot.name, lot.image_name);
    let generated = format_time_short(generated_at);
    render(Page {
        format: FORMAT,
        header_css: css_string(&title),
        station_css: css_string(&format!("flashrack {VERSION}")),
        generated_css: css_string(&format!("generated {generated}")),
        title,
        summary: vec![
            Item::text("Lot", &lot.name),
            Item::text("flashrack", VERSION),
            Item::text("Image", &lot.image_name),
            Item::mono("Image sha256", lot.image_sha256.to_hex()),
            Item::text("Options", options_words(&lot.options)),
            Item::text("Stations", lot.stations.join(", ")),
            Item::text("Runs", runs),
            Item::text("Armed", format_time_short(lot.created_at)),
            Item::text(
                "Stopped",
                lot.stopped_at
                    .map(format_time_short)
                    .unwrap_or_else(|| "still armed".to_string()),
            ),
            Item::text("Yield", yield_words(&report.counts, &report.rows)),
        ]
        .into_iter()
        .chain(report.image_origins.iter().map(origin_item))
        .collect(),
        counts: report.counts,
        with_run: true,
        with_station: true,
        rows: report.rows.iter().map(Row::new).collect(),
        generated,
        version: VERSION,
        failures: failures_by_reason(&report.rows),
        signatures: true,
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
    fn a_css_string_cannot_end_itself_or_the_style_sheet() {
        assert_eq!(css_string("run 3"), "\"run 3\"");
        let nasty = css_string("a\"b</style><script>");
        assert!(
            !nasty[1..nasty.len() - 1].contains(['"', '<', '>']),
            "{nasty}"
        );
        assert_eq!(&nasty[..3], "\"a\\");
    }

    #[test]
    fn the_yield_counts_passes_among_passes_and_failures() {
        let counts = Counts {
            attempts: 6,
            passed: 3,
            failed: 1,
            refused: 2,
            ..Counts::default()
        };
        assert!(yield_words(&counts, &[]).starts_with("75.0 % (3 of 4 sticks passed"));
        assert_eq!(
            yield_words(&Counts::default(), &[]),
            "no stick passed or failed yet"
        );
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
