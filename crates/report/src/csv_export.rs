//! The CSV export: RFC 4180 through the `csv` crate, with the spreadsheet
//! formula guard on every text field.

use std::borrow::Cow;

use crate::export::{float, ExportRow, CSV_EXTRA_FIELDS, FIELDS, FORMAT, VERSION};
use crate::html::origin_label;
use crate::{ImageOrigin, ReportRow, RunReport};

/// The records as CSV, in the order given: a header line of [`FIELDS`] and
/// [`CSV_EXTRA_FIELDS`], then a line per row, `\n` line ends. A device's
/// report (its records oldest first) and a fleet hub's lot report use it as
/// it is, with their `origins`: each line's `image_origin` is where its
/// image came from, among them (empty for an image imported from a file or
/// uploaded).
pub fn csv(rows: &[ReportRow], origins: &[ImageOrigin]) -> String {
    write_csv(rows.iter(), |row| {
        let mut words: Vec<String> = origins
            .iter()
            .filter(|origin| row.image_sha256 == Some(origin.sha256))
            .map(|origin| origin_words(&origin.provenance))
            .collect();
        words.dedup();
        words.join(" | ")
    })
}

/// A run's records as CSV, by port as the printed report lists them (A2
/// before A10; each port's records in the order they were made), each line's
/// `image_origin` the run's image's.
pub fn run_csv(report: &RunReport) -> String {
    let origin = report
        .image_provenance
        .as_ref()
        .map(origin_words)
        .unwrap_or_default();
    write_csv(report.rows_by_port().into_iter(), |_| origin.clone())
}

/// An image's origin as one CSV cell: the printed report's label and words
/// (`Downloaded from: https://… (ETag …); digest …, signed by …`).
fn origin_words(provenance: &flashrack_core::Provenance) -> String {
    format!("{}: {provenance}", origin_label(provenance))
}

fn write_csv<'a>(
    rows: impl Iterator<Item = &'a ReportRow>,
    origin_of: impl Fn(&ReportRow) -> String,
) -> String {
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to a `Vec` cannot fail, and every record has as many fields as
    // the header.
    out.write_record(FIELDS.iter().chain(CSV_EXTRA_FIELDS.iter()))
        .expect("csv header");
    for row in rows {
        let export = ExportRow::new(row);
        let origin = origin_of(row);
        let extra = [FORMAT, VERSION, &formula_guard(&origin)];
        out.write_record(
            cells(&export)
                .iter()
                .map(|cell| cell.as_bytes())
                .chain(extra.iter().map(|cell| cell.as_bytes())),
        )
        .expect("csv record");
    }
    let bytes = out.into_inner().expect("csv flush into a vec");
    String::from_utf8(bytes).expect("csv of utf-8 fields is utf-8")
}

/// The cells of a record in [`FIELDS`] order: text guarded against formulas,
/// numbers as they are, absent values empty.
fn cells(row: &ExportRow) -> [Cow<'_, str>; FIELDS.len()] {
    fn text(value: Option<&str>) -> Cow<'_, str> {
        value.map(formula_guard).unwrap_or_default()
    }
    fn number(value: Option<String>) -> Cow<'static, str> {
        Cow::Owned(value.unwrap_or_default())
    }
    [
        number(row.attempt_id.map(|id| id.to_string())),
        number(row.refusal_id.map(|id| id.to_string())),
        text(Some(&row.station_id)),
        number(row.run_id.map(|id| id.to_string())),
        text(Some(&row.port_label)),
        text(Some(&row.port_path)),
        text(Some(&row.device_key)),
        text(row.serial.as_deref()),
        text(row.vendor.as_deref()),
        text(row.model.as_deref()),
        number(Some(row.capacity_bytes.to_string())),
        text(row.image_name.as_deref()),
        text(row.image_sha256.as_deref()),
        text(Some(&row.started_at)),
        text(row.finished_at.as_deref()),
        text(Some(row.verdict)),
        text(Some(&row.verdict_words)),
        text(row.stage),
        text(row.reason_code.as_deref()),
        text(row.reason_detail.as_deref()),
        number(row.fail_offset.map(|o| o.to_string())),
        number(row.bytes_written.map(|b| b.to_string())),
        text(Some(row.bytes_written_bound)),
        number(Some(float(row.write_secs))),
        number(row.write_mb_s.map(float)),
        number(Some(row.bytes_verified.to_string())),
        number(Some(float(row.verify_secs))),
        number(row.verify_mb_s.map(float)),
        text(row.read_back_sha256.as_deref()),
        text(row.verify_method),
        text(Some(if row.verified_after_reset {
            "true"
        } else {
            "false"
        })),
        number(Some(row.bytes_skipped.to_string())),
        number(row.sample_percent.map(float)),
        number(row.sample_seed.clone()),
        number(row.sample_chunks_checked.map(|c| c.to_string())),
        number(row.sample_chunks_total.map(|c| c.to_string())),
        text(row.operator.as_deref()),
        text(row.lot.as_deref()),
        text(row.run_options.as_deref()),
        text(row.run_stop_reason),
        text(row.run_stop_detail.as_deref()),
        number(row.image_size_bytes.map(|b| b.to_string())),
        text(row.image_source_name.as_deref()),
        text(row.image_source_sha256.as_deref()),
    ]
}

/// A text field that starts with `=`, `+`, `-`, `@`, a tab or a carriage return
/// gets a `'` prepended, so that a spreadsheet never runs a device's vendor
/// string as a formula (device descriptors are whatever the stick says).
/// Numbers are never guarded: a negative number is not a formula.
fn formula_guard(text: &str) -> Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One field written as a CSV line, without the line end.
    fn field(text: &str) -> String {
        let mut out = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        out.write_record([formula_guard(text).as_bytes()]).unwrap();
        let line = String::from_utf8(out.into_inner().unwrap()).unwrap();
        line.strip_suffix('\n').unwrap().to_string()
    }

    #[test]
    fn csv_quotes_separators_and_defuses_formulas() {
        assert_eq!(field("Kingston, \"DT\""), "\"Kingston, \"\"DT\"\"\"");
        assert_eq!(field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(field("plain"), "plain");
        for formula in ["+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(
                field(formula).trim_matches('"').starts_with('\''),
                "{formula:?}"
            );
        }
    }

    #[test]
    fn text_with_line_breaks_or_padding_reads_back_as_it_was() {
        let fields = [
            "two\nlines",
            "cr\r\nlf",
            " padded vendor ",
            "a,b",
            "q\"q",
            "",
        ];
        let mut out = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        out.write_record(fields.map(|f| formula_guard(f).into_owned()))
            .unwrap();
        let bytes = out.into_inner().unwrap();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes.as_slice());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(record.iter().collect::<Vec<_>>(), fields);
    }
}
