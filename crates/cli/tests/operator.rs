//! The command line as an operator uses it (issue 13 §3): the disks attached
//! now, images named as people name them, output that survives `| head`, a
//! summary that fits the terminal, reports that find the demo's records, shell
//! completions and manual pages. Every test runs the real binary.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use flashrack_testkit::{require_root, LoopDevice};

mod common;
use common::{flashrack, stderr};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Writes an image file called `name` (contents from `seed`).
fn image_file(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        flashrack_testkit::image_bytes(1 << 20, seed, 1 << 16),
    )
    .unwrap();
    path
}

fn import(data: &Path, file: &Path) {
    let out = flashrack(data, &["image", "import", text(file)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A file whose name holds ESC or a newline (a name from outside: a
/// vendor's archive, an upload) is kept and listed with U+FFFD in their
/// place: `image list` does not drive the terminal, and its image is on one
/// line. Before, the name was printed as it was.
#[test]
fn an_image_name_holding_control_characters_is_listed_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = image_file(dir.path(), "red\u{1b}[31mX\nsecond line.img", 61);
    import(&data, &file);
    let out = flashrack(&data, &["image", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(!listed.contains('\u{1b}'), "{listed:?}");
    assert_eq!(listed.lines().count(), 1, "{listed:?}");
    assert!(
        listed.contains("red\u{FFFD}[31mX\u{FFFD}second line.img"),
        "{listed:?}"
    );
}

#[test]
fn flash_takes_a_unique_beginning_of_an_image_name_as_the_readme_shows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    import(&data, &image_file(dir.path(), "ubuntu-24.04.img", 1));
    import(&data, &image_file(dir.path(), "debian-12.img", 2));
    // `flashrack flash ubuntu /dev/sdb …`, with a file for a target.
    let target = dir.path().join("out.img");
    let out = flashrack(&data, &["flash", "ubuntu", text(&target), "-q", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(dir.path().join("ubuntu-24.04.img")).unwrap()
    );
    assert_eq!(summary["passed"], 1);
}

#[test]
fn an_unknown_or_ambiguous_image_name_is_answered_with_the_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    import(&data, &image_file(dir.path(), "ubuntu-22.04.img", 1));
    import(&data, &image_file(dir.path(), "ubuntu-24.04.img", 2));
    let target = dir.path().join("out.img");

    let out = flashrack(&data, &["flash", "ubuntu", text(&target), "-q"]);
    assert_eq!(out.status.code(), Some(2));
    let said = stderr(&out);
    assert!(
        said.contains("matches 2 cached images")
            && said.contains("ubuntu-22.04.img")
            && said.contains("ubuntu-24.04.img"),
        "{said}"
    );

    let out = flashrack(&data, &["flash", "xubuntu-24", text(&target), "-q"]);
    assert_eq!(out.status.code(), Some(2));
    let said = stderr(&out);
    assert!(
        said.contains("did you mean one of: ubuntu-22.04.img, ubuntu-24.04.img?"),
        "{said}"
    );
    assert!(!target.exists(), "nothing written");
}

/// `flashrack demo` on a free port, stopped (SIGTERM) on drop.
struct Demo {
    child: Child,
    server: String,
}

impl Demo {
    fn start(data: &Path) -> Demo {
        let (child, server) = common::start_demo(data, &["--image-size", "4MiB", "--ports", "8"]);
        Demo { child, server }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flashrack"))
            .args(args)
            .args(["--server", &self.server])
            .output()
            .unwrap()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

#[test]
fn run_start_takes_a_unique_beginning_of_an_image_name_and_suggests_on_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(&dir.path().join("data"));
    // The demo arms a run of its image (`demo-4194304.img`) by itself.
    let out = demo.run(&["run", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = demo.run(&["run", "start", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("did you mean demo-4194304.img?"),
        "{}",
        stderr(&out)
    );

    // `flashrack run start ubuntu …` as the README has it, with this cache;
    // the operator's name and the lot go to the run's report.
    let out = demo.run(&[
        "run",
        "start",
        "demo",
        "--target-count",
        "2",
        "--operator",
        "Ada Lovelace",
        "--lot",
        "LOT-2026-12",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("armed: demo-4194304.img"), "{said}");
    let run = said
        .strip_prefix("run ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{said}"));
    let report = flashrack(
        &dir.path().join("data"),
        &["report", "run", run, "--format", "json"],
    );
    assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(json["run"]["options"]["operator"], "Ada Lovelace");
    assert_eq!(json["run"]["options"]["lot"], "LOT-2026-12");
    let report = flashrack(
        &dir.path().join("data"),
        &["report", "run", run, "--format", "html"],
    );
    let html = stdout(&report);
    assert!(
        html.contains("<dt>Operator</dt><dd>Ada Lovelace</dd>")
            && html.contains("<dt>Lot</dt><dd>LOT-2026-12</dd>"),
        "{html}"
    );
}

#[test]
fn a_stop_without_a_reason_records_no_detail_and_a_sigterm_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let demo = Demo::start(&data);
    let stop_of = |run: &str| -> serde_json::Value {
        let report = flashrack(&data, &["report", "run", run, "--format", "json"]);
        assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
        let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
        json["run"].clone()
    };
    // The demo arms run 1 by itself; stopped with no reason, its stop says
    // "operator" and nothing beside (it said "stopped by the operator"
    // twice in the printed report).
    let out = demo.run(&["run", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = stop_of("1");
    assert_eq!(run["stop_reason"], "operator", "{run:#}");
    assert_eq!(run["stop_detail"], serde_json::Value::Null, "{run:#}");
    let out = demo.run(&["run", "start", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Shut down by SIGTERM with the run armed: the signal is the detail.
    drop(demo);
    let run = stop_of("2");
    assert_eq!(run["stop_reason"], "shutdown", "{run:#}");
    assert_eq!(run["stop_detail"], "SIGTERM", "{run:#}");
}

/// Runs `flashrack` with its stdout on a pipe whose reading end is already
/// closed: its first write fails with `EPIPE`, as under `| head -1` once
/// `head` has its line.
fn with_closed_stdout(data: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(Stdio::from(OwnedFd::from(writer)))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_pipe_ends_every_printing_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = image_file(dir.path(), "disk.img", 3);
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&image),
            text(&dir.path().join("out.img")),
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let commands: [&[&str]; 9] = [
        &["report", "runs"],
        &["report", "run", "1"],
        &["report", "run", "1", "--format", "html"],
        &["report", "run", "1", "--format", "json"],
        &["image", "list"],
        &["image", "list", "--json"],
        &["completions", "bash"],
        &["man"],
        &["devices"],
    ];
    for args in commands {
        let out = with_closed_stdout(&data, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    // A flash whose summary nobody reads still says how it went.
    let out = with_closed_stdout(
        &data,
        &["flash", text(&image), "sim:a:fail_after=64KiB", "-q"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn the_flash_summary_fits_120_columns_and_names_the_image_without_a_stray_space() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = image_file(dir.path(), "disk.img", 4);
    let long = dir
        .path()
        .join("a-target-file-with-a-rather-long-name-as-by-id-paths-are.img");
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&image),
            text(&long),
            "sim:stick-with-a-bad-block:bad_block=300KiB",
            "sim:lying-stick:fake=512KiB",
            "sim:c:capacity=64KiB",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let table = stdout(&out);
    for line in table.lines() {
        assert!(
            line.chars().count() <= 120,
            "{} columns: {line:?}\n{table}",
            line.chars().count()
        );
    }
    // No line holds a whole digest (64 hex digits) on its own.
    assert!(
        !table.lines().any(|l| {
            let t = l.trim();
            t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())
        }),
        "{table}"
    );
    let last = table.lines().last().unwrap();
    assert!(
        last.starts_with("1 passed, 3 failed in ") && last.ends_with(", 1.05 MB)"),
        "{last:?}"
    );
    assert!(!last.contains(" ,"), "{last:?}");
    // The failures' reasons are there, wrapped within their column.
    assert!(table.contains("FAIL"), "{table}");
}

#[test]
fn report_reads_the_demos_records_when_the_data_directory_has_none() {
    let dir = tempfile::tempdir().unwrap();
    // Where scripts/demo keeps them: $TMPDIR/flashrack-demo.
    let demo_dir = dir.path().join("flashrack-demo");
    let image = image_file(dir.path(), "disk.img", 5);
    let out = flashrack(
        &demo_dir,
        &[
            "flash",
            text(&image),
            text(&dir.path().join("out.img")),
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // No --data-dir, no $FLASHRACK_DATA_DIR: the default directory, which has
    // no records (as root: /var/lib/flashrack; else under $HOME).
    let home = dir.path().join("home");
    let report = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flashrack"))
            .args(args)
            .env_remove("FLASHRACK_DATA_DIR")
            .env("TMPDIR", dir.path())
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("share"))
            .output()
            .unwrap()
    };
    assert!(
        !Path::new("/var/lib/flashrack/flashrack.db").exists(),
        "this test needs a machine without a station's records in /var/lib/flashrack"
    );
    let out = report(&["report", "runs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("disk.img"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("reading the demo's, in {}", demo_dir.display())),
        "{}",
        stderr(&out)
    );
    // A directory named on the command line is read, records or not.
    let out = report(&["--data-dir", text(&home), "report", "runs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no records in"), "{}", stderr(&out));
}

#[test]
fn station_in_report_help_is_explained_in_operator_words() {
    let dir = tempfile::tempdir().unwrap();
    let out = flashrack(dir.path(), &["report", "runs", "--help"]);
    let help = stdout(&out);
    assert!(help.contains("Only what this station did"), "{help}");
    assert!(help.contains("station_id"), "{help}");
}

#[test]
fn report_station_keeps_only_that_stations_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = image_file(dir.path(), "disk.img", 6);
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&image),
            text(&dir.path().join("out.img")),
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runs = |station: &str| {
        let out = flashrack(&data, &["report", "runs", "--station", station]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out).lines().count() - 1
    };
    assert_eq!(runs("station-1"), 1);
    assert_eq!(runs("lab-2"), 0);
    let out = flashrack(&data, &["report", "run", "1", "--station", "lab-2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("run 1 was made by station \"station-1\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_and_manual_pages_are_generated_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = flashrack(dir.path(), &["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        // Every subcommand is completed, `devices` included.
        for word in ["flash", "devices", "report", "completions"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let out = flashrack(dir.path(), &["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH flashrack 1"), "{page}");
    assert!(page.contains("verified USB sticks"), "{page}");

    let pages = dir.path().join("man1");
    let out = flashrack(dir.path(), &["man", "--dir", text(&pages)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for name in [
        "flashrack.1",
        "flashrack-devices.1",
        "flashrack-report-run.1",
    ] {
        let page = std::fs::read_to_string(pages.join(name)).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{name}");
    }
}

/// The row `devices --json` gives for `device`.
fn device_row(data: &Path, device: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["devices", "--json"];
    all.extend_from_slice(args);
    let out = flashrack(data, &all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .find(|row| row["device"] == text(device))
        .unwrap_or_else(|| panic!("{} not listed: {}", device.display(), stdout(&out)))
}

#[test]
fn devices_lists_attached_disks_with_what_the_guard_would_say() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stick = LoopDevice::new(8 << 20);

    let row = device_row(&data, stick.path(), &["--allow-bus", "loop"]);
    assert_eq!(row["bus"], "loop");
    assert_eq!(row["size"], 8 << 20);
    assert_eq!(row["refusals"], serde_json::json!([]), "{row}");

    let row = device_row(&data, stick.path(), &[]);
    assert_eq!(row["refusals"][0]["code"], "bus_not_allowed", "{row}");

    let row = device_row(
        &data,
        stick.path(),
        &["--allow-bus", "loop", "--max-size", "4MiB"],
    );
    assert_eq!(row["refusals"][0]["code"], "too_large", "{row}");

    // As a station would judge it: its configuration allows loop devices but
    // maps no port for this one.
    let config = dir.path().join("station.toml");
    std::fs::write(&config, "[guard]\nallowed_buses = [\"usb\", \"loop\"]\n").unwrap();
    let row = device_row(&data, stick.path(), &["--config", text(&config)]);
    assert_eq!(row["refusals"][0]["code"], "port_not_mapped", "{row}");
    assert_eq!(row["port"], serde_json::Value::Null);

    // The table says it in words, one line per disk.
    let out = flashrack(&data, &["devices", "--allow-bus", "loop"]);
    let table = stdout(&out);
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", text(stick.path()))))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("8.39 MB") && line.ends_with("would write"),
        "{line}"
    );
    assert!(table.starts_with("DEVICE"), "{table}");

    // A read-only stick: the guard accepts it, but no run writes it (it said
    // "would write", and the run then failed it as read_only).
    let locked = LoopDevice::new_read_only(8 << 20);
    let row = device_row(&data, locked.path(), &["--allow-bus", "loop"]);
    assert_eq!(row["read_only"], true, "{row}");
    let out = flashrack(&data, &["devices", "--allow-bus", "loop"]);
    let table = stdout(&out);
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", text(locked.path()))))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.ends_with("would fail: read-only (its write protection is on)"),
        "{line}"
    );
}

/// `ports learn` on a new configuration, its stdout read line by line.
struct Learn {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Learn {
    fn start(config: &Path) -> Learn {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashrack"))
            .args(["ports", "learn", "--config", text(config)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Learn { child, lines }
    }

    /// Reads lines until one starts with `prefix`.
    fn until(&mut self, prefix: &str) {
        for line in self.lines.by_ref() {
            if line.unwrap().starts_with(prefix) {
                return;
            }
        }
        panic!("no line starting with {prefix:?}");
    }

    /// Waits for the end (the test's own timeout guards a hang) and returns
    /// the rest of stdout.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let rest: Vec<String> = self.lines.by_ref().map(Result::unwrap).collect();
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(err, "");
        (status, rest.join("\n"))
    }
}

#[test]
fn ports_learn_ends_on_done_or_end_of_input_while_waiting_for_a_stick() {
    if !require_root(&["udevadm", "losetup"]) {
        return;
    }
    flashrack_testkit::udev_stick::ensure_udevd();
    let dir = tempfile::tempdir().unwrap();
    for done in [true, false] {
        let config = dir.path().join("station.toml");
        let mut learn = Learn::start(&config);
        learn.until("plug a stick into the next port");
        let mut stdin = learn.child.stdin.take().unwrap();
        if done {
            // Typed, the input still open.
            std::io::Write::write_all(&mut stdin, b"done\n").unwrap();
        } else {
            // Ctrl-D: the end of input.
            drop(stdin);
            stdin = std::process::ChildStdin::from(OwnedFd::from(
                std::fs::File::open("/dev/null").unwrap(),
            ));
        }
        let (status, rest) = learn.finish();
        drop(stdin);
        assert!(status.success(), "done: {done}: {status}");
        assert!(rest.starts_with("0 port(s) mapped"), "done: {done}: {rest}");
    }
}

#[test]
fn ports_learn_suggests_labels_by_physical_port_and_writes_them_in_label_order() {
    use flashrack_testkit::udev_stick::TestStick;
    use std::io::Write;

    if !require_root(&["udevadm", "losetup"]) {
        return;
    }
    let usb = |chain: &str| format!("pci-0000:00:14.0-usb-0:{chain}:1.0-scsi-0:0:0:0");
    let first = TestStick::create();
    first.move_to_port(&usb("1.4"));
    let second = TestStick::create();
    second.move_to_port(&usb("1.1"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("station.toml");
    let mut learn = Learn::start(&config);
    let mut stdin = learn.child.stdin.take().unwrap();
    learn.until("plug a stick into the next port");

    // The first stick goes into port 4 of the hub: A4 is offered, not A1.
    first.plug();
    learn.until(&format!("stick in {}", usb("1.4")));
    stdin.write_all(b"\n").unwrap();
    let answer = learn.lines.next().unwrap().unwrap();
    assert!(
        answer.starts_with("  label [A4]:   mapped A4"),
        "{answer:?}"
    );
    first.pull();

    // The next, into port 1: A1, not A5. A label that will not do (not a
    // label, then one taken, in another case) is asked again for the same
    // stick (it was dropped, with a configuration line that does not exist).
    second.plug();
    learn.until(&format!("stick in {}", usb("1.1")));
    stdin.write_all(b"<x>\na4\n\n").unwrap();
    let answer = learn.lines.next().unwrap().unwrap();
    assert!(
        answer.starts_with("  label [A1]:   port label \"<x>\" must be 1-16 letters")
            && answer.contains(
                "; label [A1]:   port A4 is labelled so already; label [A1]:   mapped A1"
            ),
        "{answer:?}"
    );
    drop(stdin);
    let (status, rest) = learn.finish();
    assert!(status.success(), "{status}");
    let listed: Vec<&str> = rest.lines().skip(1).collect();
    assert_eq!(
        listed,
        [
            format!("  A1     {}  (row 1, column 1)", usb("1.1")),
            format!("  A4     {}  (row 1, column 4)", usb("1.4")),
        ],
        "{rest}"
    );
    let written = std::fs::read_to_string(&config).unwrap();
    let a1 = written.find("label = \"A1\"").expect("A1 written");
    let a4 = written.find("label = \"A4\"").expect("A4 written");
    assert!(a1 < a4, "{written}");
    assert!(
        written[a1..a4].contains("row = 0") && written[a1..a4].contains("column = 0"),
        "{written}"
    );
    assert!(written[a4..].contains("column = 3"), "{written}");
}

/// `flashrack run start URL` arms a run on the running station whose sticks
/// follow the download (the station's `POST /runs` with `download`); the
/// demo's own sticks then pass with the image once it is imported, and
/// with `--no-bmap` no bmap is looked for beside the image. Bad
/// combinations are refused before anything is asked, and the station's
/// refusals (a file that is not there, a URL its server does not have) are
/// printed with its words.
#[test]
fn run_start_of_a_url_arms_a_run_that_follows_the_download() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let raw = flashrack_testkit::image_bytes(4 << 20, 91, 1 << 16);
    let sha = flashrack_core::Sha256Digest::of(&raw).to_hex();
    let server = runtime.block_on(flashrack_testkit::http_files::FileServer::start());
    server.serve(
        "/os.img",
        flashrack_testkit::http_files::Served::new(raw.clone(), "cli-1"),
    );
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(&dir.path().join("data"));
    let out = demo.run(&["run", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Refused here: options of a download with a cached image.
    let out = demo.run(&["run", "start", "demo", "--sha256", &sha]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("not a cached image"),
        "{}",
        stderr(&out)
    );
    // Refused by the station, with its words.
    let out = demo.run(&["run", "start", "--station-file", "/nowhere/os.img"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("the station answered 403"),
        "{}",
        stderr(&out)
    );
    let missing = server.url("/missing.img");
    let out = demo.run(&["run", "start", &missing]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("422") && stderr(&out).contains("not found"),
        "{}",
        stderr(&out)
    );

    let url = server.url("/os.img");
    // --no-bmap goes to the station: it looks for no bmap beside the image.
    let out = demo.run(&["run", "start", &url, "--sha256", &sha, "--no-bmap"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains(&format!("armed: os.img, following its import from {url}")),
        "{said}"
    );
    // The run names the image once it is imported (the download is not
    // held: it ends at once), and the demo's sticks pass with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let out = demo.run(&["status", "--json"]);
        let station: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let run = &station["run"];
        if run["image_sha256"] == sha.as_str()
            && run["import"]["state"] == "done"
            && run["passed"].as_u64().unwrap_or(0) > 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never passed a stick with the downloaded image: {run}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(server.requests_for("/os.img").len(), 1);
    for name in ["/os.img.bmap", "/os.bmap"] {
        assert_eq!(server.requests_for(name).len(), 0, "{name} asked for");
    }
}

/// A key pair made for the test (ed25519: quick to make).
fn key_pair(user: &str) -> pgp::composed::SignedSecretKey {
    let mut params = pgp::composed::SecretKeyParamsBuilder::default();
    params
        .key_type(pgp::composed::KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(pgp::composed::EncryptionCaps::None)
        .primary_user_id(user.into());
    params
        .build()
        .unwrap()
        .generate(rand08::thread_rng())
        .unwrap()
}

/// `key`'s armored detached signature of `data`.
fn sign(key: &pgp::composed::SignedSecretKey, data: &[u8]) -> Vec<u8> {
    pgp::composed::DetachedSignature::sign_binary_data(
        rand08::thread_rng(),
        &key.primary_key,
        &pgp::types::Password::empty(),
        pgp::crypto::hash::HashAlgorithm::Sha256,
        data,
    )
    .unwrap()
    .to_armored_bytes(pgp::composed::ArmorOptions::default())
    .unwrap()
}

/// A keyring holding a good key and a damaged one (a truncated export):
/// the good key checks the signature, and the damaged one is named in one
/// short warning, even with RUST_BACKTRACE set. Before, the warning carried
/// rPGP's error in its debug form, with a backtrace of about a hundred
/// frames on one line.
#[test]
fn a_damaged_key_in_a_keyring_is_one_short_warning() {
    use pgp::ser::Serialize;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let raw = flashrack_testkit::image_bytes(1 << 20, 93, 1 << 16);
    let sha = flashrack_core::Sha256Digest::of(&raw).to_hex();
    let vendor = key_pair("Vendor <release@example.invalid>");
    let other = key_pair("Other <other@example.invalid>");
    let sums = format!("{sha}  os.img\n");
    let server = runtime.block_on(flashrack_testkit::http_files::FileServer::start());
    let served = |path: &str, body: Vec<u8>| {
        server.serve(
            path,
            flashrack_testkit::http_files::Served::new(body, &format!("{path}-1")),
        )
    };
    served("/os.img", raw);
    served("/SHA256SUMS", sums.clone().into_bytes());
    served("/SHA256SUMS.gpg", sign(&vendor, sums.as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keys.gpg");
    let mut bytes = pgp::composed::SignedPublicKey::from(vendor)
        .to_bytes()
        .unwrap();
    let damaged = pgp::composed::SignedPublicKey::from(other)
        .to_bytes()
        .unwrap();
    bytes.extend_from_slice(&damaged[..damaged.len() / 2]);
    std::fs::write(&keyring, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .args([
            "--data-dir",
            text(&dir.path().join("data")),
            "image",
            "import",
            &server.url("/os.img"),
            "--sha256sums",
            &server.url("/SHA256SUMS"),
            "--signature",
            &server.url("/SHA256SUMS.gpg"),
            "--keyring",
            text(&keyring),
        ])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("a key of the keyring cannot be read"),
        "{said}"
    );
    assert!(!said.to_lowercase().contains("backtrace"), "{said}");
    assert!(said.lines().all(|line| line.len() < 400), "{said}");
    drop(server);
}

/// `flashrack run start URL --sha256sums --signature --keyring` (the
/// options of `image import URL`, and the API's `download`): a signature by
/// a key outside the keyring exits non-zero with the station's reason and
/// records no run; a file that holds no key is refused before the station
/// is asked; a good signature (the keyring given in binary form, as `gpg
/// --export` writes it) arms the run, whose report names the signer. A
/// `--bmap` that is not a URL is the station's refusal, in its words.
#[test]
fn run_start_of_a_url_checks_the_signature_of_its_checksum_list() {
    use pgp::ser::Serialize;
    use pgp::types::KeyDetails;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let raw = flashrack_testkit::image_bytes(4 << 20, 92, 1 << 16);
    let sha = flashrack_core::Sha256Digest::of(&raw).to_hex();
    let vendor = key_pair("Vendor <release@example.invalid>");
    let stranger = key_pair("Mallory <m@example.invalid>");
    let sums = format!("{sha}  os.img\n");
    let server = runtime.block_on(flashrack_testkit::http_files::FileServer::start());
    let served = |path: &str, body: Vec<u8>| {
        server.serve(
            path,
            flashrack_testkit::http_files::Served::new(body, &format!("{path}-1")),
        )
    };
    served("/os.img", raw.clone());
    served("/SHA256SUMS", sums.clone().into_bytes());
    served("/SHA256SUMS.gpg", sign(&vendor, sums.as_bytes()));
    served("/SHA256SUMS.mallory.gpg", sign(&stranger, sums.as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("vendor.gpg");
    std::fs::write(
        &keyring,
        pgp::composed::SignedPublicKey::from(vendor.clone())
            .to_bytes()
            .unwrap(),
    )
    .unwrap();
    let not_keys = dir.path().join("notes.txt");
    std::fs::write(&not_keys, "not a key\n").unwrap();
    let data = dir.path().join("data");
    let demo = Demo::start(&data);
    let out = demo.run(&["run", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run_id = |demo: &Demo| {
        let out = demo.run(&["status", "--json"]);
        let station: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        station["run"]["id"].as_u64().unwrap()
    };
    let stopped = run_id(&demo);
    let (url, sums_url) = (server.url("/os.img"), server.url("/SHA256SUMS"));
    let start = |signature: &str, keyring: &Path, more: &[&str]| {
        let mut args = vec![
            "run",
            "start",
            url.as_str(),
            "--sha256sums",
            sums_url.as_str(),
            "--signature",
            signature,
            "--keyring",
            text(keyring),
        ];
        args.extend_from_slice(more);
        demo.run(&args)
    };

    // A signature without a keyring: the same rule as `image import`.
    let out = demo.run(&[
        "run",
        "start",
        &url,
        "--sha256sums",
        &sums_url,
        "--signature",
        &server.url("/SHA256SUMS.gpg"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--keyring"), "{}", stderr(&out));

    // A keyring file that holds no key: refused here, the station not asked.
    let out = start(&server.url("/SHA256SUMS.gpg"), &not_keys, &[]);
    assert_ne!(out.status.code(), Some(0));
    let said = stderr(&out);
    assert!(
        said.contains("keyring") && said.contains(text(&not_keys)),
        "{said}"
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // Signed by a key the keyring does not hold: the station's reason, no run.
    let bad = server.url("/SHA256SUMS.mallory.gpg");
    let out = start(&bad, &keyring, &[]);
    assert_ne!(out.status.code(), Some(0));
    let said = stderr(&out);
    assert!(
        said.contains("422") && said.contains("is not a valid signature by any key of the keyring"),
        "{said}"
    );
    assert!(said.contains(&bad), "{said}");
    assert_eq!(run_id(&demo), stopped, "no run armed");
    let report = flashrack(&data, &["report", "run", &(stopped + 1).to_string()]);
    assert_ne!(report.status.code(), Some(0), "no run recorded");
    assert!(
        server.requests_for("/os.img").is_empty(),
        "nothing downloaded"
    );

    // A block map that is not at a URL: the station says so.
    let out = start(
        &server.url("/SHA256SUMS.gpg"),
        &keyring,
        &["--bmap", "/srv/os.img.bmap"],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("bmap must be an http or https URL"),
        "{}",
        stderr(&out)
    );
    assert_eq!(run_id(&demo), stopped, "no run armed");

    // Signed by the vendor: armed, and the report names the signer.
    let out = start(&server.url("/SHA256SUMS.gpg"), &keyring, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = run_id(&demo);
    assert_eq!(run, stopped + 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let out = demo.run(&["status", "--json"]);
        let station: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let now = &station["run"];
        if now["image_sha256"] == sha.as_str() && now["import"]["state"] == "done" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never named the downloaded image: {now}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let fingerprint = format!("{:X}", vendor.fingerprint());
    let report = flashrack(
        &data,
        &["report", "run", &run.to_string(), "--format", "json"],
    );
    assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let source = &json["image_provenance"]["digest_source"];
    assert_eq!(source["kind"], "sums", "{json}");
    assert_eq!(
        source["signature"]["signer_fingerprint"],
        fingerprint.as_str()
    );
    assert_eq!(json["image_provenance"]["url"], url.as_str());
    let report = flashrack(
        &data,
        &["report", "run", &run.to_string(), "--format", "html"],
    );
    assert!(
        stdout(&report).contains(&fingerprint),
        "{}",
        stdout(&report)
    );
}
