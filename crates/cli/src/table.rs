//! Plain-text tables: columns padded to their widest cell, trailing blanks cut;
//! too wide a table wraps its flexible columns (a long reason goes onto the
//! lines below, in its own column) rather than overflowing the terminal.

/// The widest a table is made: a terminal of 120 columns shows it unwrapped.
pub const MAX_WIDTH: usize = 120;

/// The narrowest a flexible column is wrapped to.
const MIN_FLEXIBLE: usize = 12;

/// Renders `rows` (the first is the header) as aligned columns.
pub fn render<const N: usize>(rows: &[[String; N]]) -> String {
    render_within(rows, usize::MAX, &[])
}

/// Renders `rows` within `max_width` columns where it can: the columns named
/// in `flexible` are narrowed (the widest first), their cells wrapped at
/// spaces onto continuation lines.
pub fn render_within<const N: usize>(
    rows: &[[String; N]],
    max_width: usize,
    flexible: &[usize],
) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let total = |widths: &[usize; N]| widths.iter().sum::<usize>() + 2 * N.saturating_sub(1);
    // The widest flexible column gives up a character at a time, down to its
    // floor (its header, or a few words): the long ones share the cut.
    let floor = |column: usize| {
        let header = rows.first().map_or(0, |r| r[column].chars().count());
        MIN_FLEXIBLE.max(header).min(widths[column])
    };
    let floors: Vec<usize> = flexible.iter().map(|&c| floor(c)).collect();
    while total(&widths) > max_width {
        let widest = flexible
            .iter()
            .zip(&floors)
            .filter(|(&c, &f)| widths[c] > f)
            .max_by_key(|(&c, _)| widths[c]);
        match widest {
            Some((&column, _)) => widths[column] -= 1,
            None => break,
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<Vec<String>> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| wrap(cell, width))
            .collect();
        let height = cells.iter().map(Vec::len).max().unwrap_or(1);
        for line in 0..height {
            let parts: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(cell, width)| {
                    let text = cell.get(line).map_or("", String::as_str);
                    format!("{text:<width$}")
                })
                .collect();
            out.push_str(parts.join("  ").trim_end());
            out.push('\n');
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces (a word
/// longer than the width is cut).
fn wrap(text: &str, width: usize) -> Vec<String> {
    if text.chars().count() <= width || width == 0 {
        return vec![text.to_string()];
    }
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let used = line.chars().count();
            let gap = usize::from(used > 0);
            if used + gap + word.len() <= width {
                if gap == 1 {
                    line.push(' ');
                }
                line.extend(word.iter());
                break;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            // A word longer than the column: cut it.
            let rest = word.split_off(width);
            lines.push(word.iter().collect());
            word = rest;
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
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

    #[test]
    fn a_table_too_wide_wraps_its_flexible_column_under_itself() {
        let rows = [
            ["T".to_string(), "REASON".to_string(), "X".to_string()],
            [
                "a".to_string(),
                "one two three four five six".to_string(),
                "x".to_string(),
            ],
        ];
        let text = super::render_within(&rows, 20, &[1]);
        assert_eq!(
            text,
            "T  REASON          X\n\
             a  one two three   x\n\
             \x20  four five six\n"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 20), "{text}");
    }

    #[test]
    fn a_word_longer_than_its_column_is_cut() {
        assert_eq!(super::wrap("abcdefgh ij", 3), ["abc", "def", "gh", "ij"]);
    }
}
