//! What the command-line test files share: running the built `flashrack`
//! binary against a data directory of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `flashrack --data-dir DATA_DIR ARGS…` (the binary this package
/// builds) to its end and returns what it printed and its exit status.
#[allow(dead_code)] // not every test file runs a command to its end
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

/// Starts `flashrack --data-dir DATA_DIR demo --listen 127.0.0.1:0 ARGS…` (the
/// station over a simulated rack, on a free port) and returns the process with
/// its dashboard's address, `http://127.0.0.1:PORT` (read from the first line
/// it prints). Stopping it, and how, is the caller's.
#[allow(dead_code)] // only the tests that run a station
pub fn start_demo(data_dir: &Path, args: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start flashrack demo");
    let line = BufReader::new(child.stdout.take().expect("its stdout"))
        .lines()
        .next()
        .expect("the demo prints its address")
        .expect("readable stdout");
    let base = line
        .strip_prefix("dashboard: ")
        .and_then(|s| s.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, base)
}
