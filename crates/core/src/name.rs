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
}
