//! Printing that survives a closed pipe.
//!
//! `println!` panics when stdout is gone (`flashrack report runs | head -1`:
//! `head` exits after its line). Everything the commands print goes through
//! [`outln!`]/[`out!`] instead, which return the write's error: a command
//! hands it up with `?`, and `main` ends quietly when the error is a closed
//! pipe ([`is_closed_pipe`]). What goes to stderr (logs, notices, progress)
//! goes through [`errln!`], which drops a write that fails: a closed stderr
//! never stops a flash.

use std::fmt::Arguments;
use std::io::{self, Write};

/// Writes a line to stdout (`println!` that returns the error).
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to stdout (`print!` that returns the error).
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}

/// Writes a line to stderr, dropping a failed write (`eprintln!` that never
/// panics).
macro_rules! errln {
    ($($arg:tt)*) => { $crate::out::write_err(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes `text` to stdout and flushes it, so that a closed pipe shows up
/// here rather than in a panic when the buffer is flushed at exit.
pub fn write(text: Arguments<'_>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_fmt(text)?;
    stdout.flush()
}

/// Writes `text` to stderr; a failure is dropped (there is nowhere to say it).
pub fn write_err(text: Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(text);
}

/// Whether `error` is (or was caused by) a write to a pipe nobody reads.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
