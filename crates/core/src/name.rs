//! Names that come from outside (a file's name, a URL's last segment, an
//! operator's name), as flashrack keeps and shows them: a control character
//! (ESC, a newline, a bell) or an invisible formatting character (a bidi
//! override such as U+202E, a zero-width space) becomes U+FFFD, so that no
//! name drives the terminal it is printed on, breaks a line of a list or a
//! report into two, or shows other text than it holds (`gpj.exe` printed as
//! `exe.jpg`).

/// Whether `c` would not print as itself: a control character (C0, DEL, C1)
/// or an invisible formatting character that reorders or hides the text
/// around it (the bidi embeddings, overrides, isolates and marks, zero-width
/// spaces and joiners, the word joiner, the byte order mark).
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Whether `name` holds a character that would not print as itself (see
/// [`is_unprintable`]).
pub fn has_unprintable(name: &str) -> bool {
    name.chars().any(is_unprintable)
}

/// `name` with each unprintable character replaced by U+FFFD (`�`).
pub fn printable_name(name: &str) -> String {
    name.chars()
        .map(|c| if is_unprintable(c) { '\u{FFFD}' } else { c })
        .collect()
}

/// Whether `c` may stand in a file name flashrack makes from a name given
/// from outside (an upload's, an image's, a capture's): a letter or digit of
/// any script, `.`, `-`, `_` or `+`. Never a path separator, a space, a
/// quote, a control or an invisible formatting character.
pub fn is_file_name_char(c: char) -> bool {
    (c.is_alphanumeric() && !is_unprintable(c)) || matches!(c, '.' | '-' | '_' | '+')
}

/// The longest tail of extensions [`file_name_from`] keeps when it cuts a
/// name (`.img.xz`, `.iso`), in characters.
const MAX_KEPT_EXTENSION: usize = 16;

/// The most bytes of a name [`file_name_from`] makes: Linux file systems take
/// 255, and flashrack may add a suffix of its own (`.part`, `.bmap`).
pub const MAX_FILE_NAME_BYTES: usize = 200;

/// A file name made from `name`: each character [`is_file_name_char`]
/// refuses becomes `_`, leading dots are dropped (nothing hidden), and a
/// name longer than `max_chars` characters or [`MAX_FILE_NAME_BYTES`] bytes
/// is cut in its stem, keeping its extensions (`.img.xz`) when they are
/// short. `None` when nothing is left.
pub fn file_name_from(name: &str, max_chars: usize) -> Option<String> {
    let cleaned: String = name
        .chars()
        .map(|c| if is_file_name_char(c) { c } else { '_' })
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    let fits = |chars: &[char]| {
        chars.len() <= max_chars
            && chars.iter().map(|c| c.len_utf8()).sum::<usize>() <= MAX_FILE_NAME_BYTES
    };
    let chars: Vec<char> = cleaned.chars().collect();
    if chars.is_empty() || max_chars == 0 {
        return None;
    }
    if fits(&chars) {
        return Some(cleaned.to_string());
    }
    // The extensions: from the first dot (after the first character) whose
    // tail is short enough to keep and leaves room for a stem.
    let extension_at = (1..chars.len())
        .find(|&at| chars[at] == '.' && chars.len() - at <= MAX_KEPT_EXTENSION.min(max_chars - 1));
    let (mut stem, extension) = match extension_at {
        Some(at) => (chars[..at].to_vec(), &chars[at..]),
        None => (chars, &[][..]),
    };
    while !fits(&[&stem[..], extension].concat()) {
        stem.pop();
    }
    Some(stem.iter().chain(extension).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_of_a_name_are_replaced() {
        assert_eq!(printable_name("ubuntu 24.04.iso"), "ubuntu 24.04.iso");
        assert_eq!(
            printable_name("red\u{1b}[31m\nnl\u{7}.img"),
            "red\u{FFFD}[31m\u{FFFD}nl\u{FFFD}.img"
        );
        assert_eq!(printable_name("Ünïcødé"), "Ünïcødé");
    }

    #[test]
    fn characters_that_reorder_or_hide_text_are_unprintable() {
        assert_eq!(
            printable_name("photo\u{202E}gpj.exe"),
            "photo\u{FFFD}gpj.exe"
        );
        assert_eq!(
            printable_name("a\u{200B}b\u{2066}c\u{FEFF}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}"
        );
        assert!(has_unprintable("Ada\u{202E}"));
        assert!(!has_unprintable("Zoë 映像 🚀 (lab 2)"));
    }

    #[test]
    fn a_file_name_keeps_letters_of_every_script_and_its_extension() {
        assert_eq!(
            file_name_from("ünïcode-映像.img", 128).as_deref(),
            Some("ünïcode-映像.img")
        );
        assert_eq!(
            file_name_from("Win 11 \"x\"/..\\a\u{202E}.iso", 128).as_deref(),
            Some("Win_11__x__.._a_.iso")
        );
        assert_eq!(file_name_from("...hidden", 128).as_deref(), Some("hidden"));
        assert_eq!(file_name_from("...", 128), None);
        assert_eq!(file_name_from("", 128), None);
        // Cut in the stem, by characters (never inside one), the extensions
        // kept.
        let long = format!("{}.img.xz", "é".repeat(300));
        let cut = file_name_from(&long, 64).unwrap();
        assert_eq!(cut.chars().count(), 64);
        assert!(cut.ends_with("é.img.xz"), "{cut}");
        // A tail too long to be extensions is cut like the rest.
        let dotted = format!("a.{}", "b".repeat(300));
        assert_eq!(file_name_from(&dotted, 10).as_deref(), Some("a.bbbbbbbb"));
        assert_eq!(file_name_from("abcdef.img", 4).as_deref(), Some("abcd"));
        // Never more bytes than a file system takes in a name.
        let wide = file_name_from(&format!("{}.iso", "映".repeat(128)), 128).unwrap();
        assert!(wide.len() <= MAX_FILE_NAME_BYTES, "{}", wide.len());
        assert!(wide.starts_with('映') && wide.ends_with("映.iso"), "{wide}");
    }
}
