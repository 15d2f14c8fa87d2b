//! Names that come from outside (a file's name, a URL's last segment), as
//! flashrack keeps and shows them: a control character (ESC, a newline, a
//! bell) becomes U+FFFD, so that no name drives the terminal it is printed
//! on or breaks a line of a list or a report into two.

/// `name` with each control character replaced by U+FFFD (`�`).
pub fn printable_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
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
}
