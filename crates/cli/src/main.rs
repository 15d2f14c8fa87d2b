//! `flashrack`: the command line of the flashrack duplication station.
//!
//! A thin shell over `flashrack-app`: it parses arguments, installs logging,
//! builds the runtime, takes the data directory's lock, catches signals, calls
//! the library, prints what it returns (tables and progress bars for a
//! terminal, JSON for programs), and maps outcomes to exit statuses (0: every
//! target passed; 1: at least one target failed; 2: the command could not run).

#[macro_use]
mod out;

mod cli;
mod client;
mod demo;
mod devices_cmd;
mod docs;
mod flash;
mod hub;
mod image_cmd;
mod learn;
mod progress;
mod report_cmd;
mod serve;
mod signals;
mod summary;
mod table;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    fix_malloc_mmap_threshold();
    let args = cli::Args::parse();
    init_logging(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flashrack-async")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            errln!("flashrack: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(status) => status,
        // Whoever read the output has stopped reading (`| head -1`): nothing
        // more to say, and nowhere to say it.
        Err(error) if out::is_closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            errln!("flashrack: {}", message(&error));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, `: `-separated as `{:#}` prints them, each
/// cause once: many errors already end with their source's words (the API
/// shows them alone), which the chain would say again ("cannot read x: No
/// such file or directory (os error 2): No such file or directory (os error
/// 2)").
fn message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let words = cause.to_string();
        if text.is_empty() {
            text = words;
        } else if !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
    }
    text
}

/// Logs go to stderr; `RUST_LOG` overrides the level chosen by `-v`. rPGP's
/// own warnings (a packet of a keyring or a signature it skips) are left out
/// below `-vv`: they carry its errors' debug form, with a backtrace of a
/// hundred frames when RUST_BACKTRACE is set, and flashrack says what they
/// mean in its own words (a key skipped, a signature that fails).
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,pgp=error",
        1 => "info,pgp=error",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = log_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR"),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// Whether the log has colours: for a terminal only (a station's log goes to
/// the journal or a file, where escape sequences are noise), and never when
/// `NO_COLOR` is set to anything but nothing (<https://no-color.org>; the VM
/// suite's station logs to a serial console, a terminal, and reads its lines).
fn log_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Keeps glibc from holding on to freed chunk buffers. The engine reads a
/// followed import's chunks into page-aligned buffers of the chunk size (4 MiB)
/// on each attempt's threads and frees them once written. With glibc's dynamic
/// mmap threshold, the first such free raises the threshold above the chunk
/// size, later buffers come from per-thread arenas, and aligned allocations
/// there fragment: measured, a one-shot flash of a 512 MiB file not yet cached
/// grew to 488 MB resident (52 MB with the image cached), and 60 MB with the
/// threshold fixed at 1 MiB. A fixed threshold serves every buffer of 1 MiB or
/// more with its own mapping, returned to the kernel when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_mmap_threshold() {
    // SAFETY: mallopt only sets glibc's allocation policy; it is called first
    // thing in main, before any other thread exists or anything is allocated
    // that the new policy could not free.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_mmap_threshold() {}

#[cfg(test)]
mod tests {
    use super::log_colour;

    #[test]
    fn the_log_has_colours_on_a_terminal_unless_no_color_is_set() {
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some("".into())), "empty: not set");
        assert!(!log_colour(true, Some("1".into())));
        assert!(!log_colour(false, None));
        assert!(!log_colour(false, Some("1".into())));
    }
}
