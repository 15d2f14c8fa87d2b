//! What the command-line test files share: running the built `flashrack`
//! binary against a data directory of the test's own.

use std::path::Path;
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
