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
    for line in text.lines() {
        let Some((digest, name)) = parse_line(line) else {
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
    found.ok_or_else(|| DownloadError::NotListed {
        sums_url: sums_url.to_string(),
        file_name: file_name.to_string(),
        listed,
    })
}

/// One line's digest and name, if it is a sha256 line.
fn parse_line(line: &str) -> Option<(Sha256Digest, &str)> {
    let line = line.trim_end_matches('\r');
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, hex) = rest.rsplit_once(") = ")?;
        return Some((Sha256Digest::parse(hex.trim()).ok()?, strip_dot(name)));
    }
    let (hex, rest) = line.split_once(' ')?;
    if hex.len() != 64 {
        return None;
    }
    let digest = Sha256Digest::parse(hex).ok()?;
    // `<hex>  name` (text mode) or `<hex> *name` (binary mode).
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
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
