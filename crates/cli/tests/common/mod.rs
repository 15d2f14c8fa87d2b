//! What the command-line test files share: running the built `flashrack`
//! binary against a data directory of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `flashrack --data-dir DATA_DIR ARGS…` (the binary this package
/// builds) to its end and returns what it printed and its exit status.
pub fn flashrack(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run flashrack")
}

/// Bytes a command printed, as text (invalid UTF-8 replaced).
#[allow(dead_code)] // not every test file prints output as text
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a command printed on stderr, as text.
#[allow(dead_code)] // not every test file reads stderr
pub fn stderr(output: &Output) -> String {
    text(&output.stderr)
}

/// Every file below `dir` for which `keep` holds, with its length and a hash
/// of its bytes, in path order: compared before and after a command, it says
/// whether the command changed anything.
#[allow(dead_code)] // only the tests of what commands leave alone
pub fn snapshot(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<(PathBuf, usize, u64)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if keep(&path) {
                let bytes = std::fs::read(&path).unwrap();
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&bytes, &mut hasher);
                files.push((path, bytes.len(), std::hash::Hasher::finish(&hasher)));
            }
        }
    }
    files.sort();
    files
}
