//! Plain-text tables: columns padded to their widest cell, trailing blanks cut.

/// Renders `rows` (the first is the header) as aligned columns.
pub fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_and_lines_have_no_trailing_blanks() {
        let rows = [
            ["A".to_string(), "BB".to_string()],
            ["CCC".to_string(), "".to_string()],
        ];
        assert_eq!(super::render(&rows), "A    BB\nCCC\n");
    }
}
