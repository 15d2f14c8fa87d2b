//! Finding a file's sha256 in a checksum list as vendors publish them:
//! `sha256sum`'s output (`<hex>  name`, or `<hex> *name` for binary mode)
//! and the BSD form (`SHA256 (name) = <hex>`). Names may carry a leading
//! `./`. Lines that are neither (comments, blank lines, other digests) are
//! skipped.

use flashrack_core::Sha256Digest;

use crate::DownloadError;

/// The sha256 that the list `text` (fetched from `sums_url`) gives for
/// `file_name`. A name listed twice with different digests is an error, as
/// is a name not listed.
pub fn lookup(text: &str, file_name: &str, sums_url: &str) -> Result<Sha256Digest, DownloadError> {
    let mut found: Option<Sha256Digest> = None;
    let mut listed = Vec::new();
    // The first line that names the file but gives no sha256 of it.
    let mut malformed: Option<usize> = None;
    // A byte-order mark before the first line (a list saved by an editor).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (number, line) in text.lines().enumerate() {
        let Some((digest, name)) = parse_line(line) else {
            if malformed.is_none() && names(line, file_name) {
                malformed = Some(number + 1);
            }
            continue;
        };
        if name == file_name {
            match found {
                Some(previous) if previous != digest => {
                    return Err(DownloadError::ListedTwice {
                        sums_url: sums_url.to_string(),
                        file_name: file_name.to_string(),
                    })
                }
                _ => found = Some(digest),
            }
        } else if listed.len() < 5 {
            listed.push(name.to_string());
        }
    }
    if let (None, Some(line)) = (found, malformed) {
        return Err(DownloadError::MalformedEntry {
            sums_url: sums_url.to_string(),
            file_name: file_name.to_string(),
            line,
        });
    }
    found.ok_or_else(|| DownloadError::NotListed {
        sums_url: sums_url.to_string(),
        file_name: file_name.to_string(),
        listed,
    })
}

/// Whether `line` (one that is no sha256 line) names `file_name` as a
/// checksum line would: its last word, or within `(…)`.
fn names(line: &str, file_name: &str) -> bool {
    let line = line.trim_end_matches('\r').trim_end();
    let last = line
        .rsplit(|c: char| c.is_whitespace() || c == '*')
        .next()
        .unwrap_or_default();
    strip_dot(last) == file_name
        || line.contains(&format!("({file_name})"))
        || line.contains(&format!("(./{file_name})"))
}

/// One line's digest and name, if it is a sha256 line.
fn parse_line(line: &str) -> Option<(Sha256Digest, &str)> {
    let line = line.trim_end_matches('\r');
    // BSD (`SHA256 (name) = hex`) and openssl (`SHA256(name)= hex`,
    // `SHA2-256(name)= hex`).
    for prefix in ["SHA256 (", "SHA256(", "SHA2-256("] {
        if let Some(rest) = line.strip_prefix(prefix) {
            let (name, hex) = rest.rsplit_once(')')?;
            let hex = hex.trim_start().strip_prefix('=')?;
            return Some((Sha256Digest::parse(hex.trim()).ok()?, strip_dot(name)));
        }
    }
    let (hex, rest) = line.split_once([' ', '\t'])?;
    if hex.len() != 64 {
        return None;
    }
    let digest = Sha256Digest::parse(hex).ok()?;
    // `<hex>  name` (text mode) or `<hex> *name` (binary mode); a tab for
    // the separator as some lists are written.
    let name = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('*'))
        .or_else(|| rest.strip_prefix('\t'))
        .or_else(|| line[64..].starts_with('\t').then_some(rest))?;
    if name.is_empty() {
        return None;
    }
    Some((digest, strip_dot(name)))
}

fn strip_dot(name: &str) -> &str {
    name.strip_prefix("./").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn every_common_form_of_a_line_is_found_by_name() {
        let text = format!(
            "# comment\n\n{B} *other.iso\n{A} *ubuntu.iso\n{B}  ./text.img\r\nSHA256 (bsd.img.xz) = {A}\n"
        );
        let url = "https://example.invalid/SHA256SUMS";
        assert_eq!(lookup(&text, "ubuntu.iso", url).unwrap().to_hex(), A);
        assert_eq!(lookup(&text, "text.img", url).unwrap().to_hex(), B);
        assert_eq!(lookup(&text, "bsd.img.xz", url).unwrap().to_hex(), A);
    }

    #[test]
    fn a_bom_a_tab_and_the_openssl_forms_are_read_and_a_broken_line_is_named() {
        let url = "https://example.invalid/SHA256SUMS";
        let text = format!(
            "{}{A}  first.img\n{B}\ttab.img\nSHA256(ossl.img)= {A}\nSHA2-256(ossl2.img)= {B}\n",
            '\u{feff}'
        );
        assert_eq!(lookup(&text, "first.img", url).unwrap().to_hex(), A);
        assert_eq!(lookup(&text, "tab.img", url).unwrap().to_hex(), B);
        assert_eq!(lookup(&text, "ossl.img", url).unwrap().to_hex(), A);
        assert_eq!(lookup(&text, "ossl2.img", url).unwrap().to_hex(), B);
        // Listed, but with a digest one digit short (or long): said so, with
        // its line, not "lists no sha256 for it (it lists nothing)".
        for digest in [&A[1..], &format!("{A}a")[..]] {
            let text = format!("{B}  other.img\n{digest}  disk.img\n");
            let error = lookup(&text, "disk.img", url).unwrap_err();
            assert!(
                matches!(error, DownloadError::MalformedEntry { line: 2, .. }),
                "{error}"
            );
            assert!(error.to_string().contains("on line 2"), "{error}");
        }
        // A good line for it elsewhere wins over a broken one.
        let text = format!("{}  disk.img\n{A}  disk.img\n", &A[1..]);
        assert_eq!(lookup(&text, "disk.img", url).unwrap().to_hex(), A);
    }

    #[test]
    fn a_name_not_listed_or_listed_twice_differently_is_an_error() {
        let url = "https://example.invalid/SHA256SUMS";
        let text = format!("{A}  a.iso\n{B}  a.iso\n{A}  b.iso\n{A}  b.iso\n");
        assert!(matches!(
            lookup(&text, "a.iso", url),
            Err(DownloadError::ListedTwice { .. })
        ));
        assert_eq!(lookup(&text, "b.iso", url).unwrap().to_hex(), A);
        let error = lookup(&text, "c.iso", url).unwrap_err();
        assert!(matches!(error, DownloadError::NotListed { .. }));
        assert!(error.to_string().contains("no sha256 for c.iso"), "{error}");
        // A prefix of a listed name is not that name.
        assert!(lookup(&text, "a.is", url).is_err());
    }
}
