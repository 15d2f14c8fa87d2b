//! A station installed from the Debian package. `flashrack serve` and its
//! configuration: without one it does not quietly use the example's port map
//! (which names another machine's slots) but says how to make one; with one
//! that maps no port (the installed one) it starts, writes nothing, and says so
//! in its log and on its dashboard. The data directory belongs to the service's
//! user: root does not write into it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A process this test started, killed (by its pid) if the test ends first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` from the station at `address`: the body.
fn get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{path}: {text}"
    );
    text.split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string()
}

/// The dashboard's page and every script it loads (following `src="/…"` and
/// module imports `from "./…"`), as one text.
fn dashboard_text(address: &str) -> String {
    let mut seen = Vec::new();
    let mut todo = vec!["/".to_string()];
    let mut all = String::new();
    while let Some(path) = todo.pop() {
        if seen.contains(&path) {
            continue;
        }
        seen.push(path.clone());
        let body = get(address, &path);
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir).to_string();
        for (marker, quote) in [("src=\"", '"'), ("from '", '\''), ("from \"", '"')] {
            for piece in body.split(marker).skip(1) {
                let Some((target, _)) = piece.split_once(quote) else {
                    continue;
                };
                if let Some(relative) = target.strip_prefix("./") {
                    todo.push(format!("{dir}/{relative}"));
                } else if target.starts_with('/') && target.ends_with(".js") {
                    todo.push(target.to_string());
                }
            }
        }
        all.push_str(&body);
    }
    all
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("station.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn serve_without_a_configuration_refuses_and_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(&data)
        // Not loopback and no token: should serve ever fall back to a
        // default configuration again (the example has no token), it still
        // stops at once instead of serving until the test is killed.
        .args(["serve", "--listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run flashrack");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no station configuration given"),
        "{stderr}"
    );
    assert!(
        stderr.contains("flashrack ports learn --config"),
        "{stderr}"
    );
    assert!(stderr.contains("/etc/flashrack/station.toml"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("dashboard:"),
        "it must not start"
    );
    assert!(!data.exists(), "nothing is created when nothing starts");
}

#[test]
fn serve_with_no_mapped_port_starts_and_says_so_in_its_log_and_on_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    // The example configuration as the Debian package installs it.
    let config = write_config(dir.path(), flashrack_config::EXAMPLE);
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_flashrack"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flashrack serve"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let line = stdout
        .next()
        .expect("serve prints its address")
        .expect("readable stdout");
    let address = line
        .strip_prefix("dashboard: http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_string();

    let ports: serde_json::Value = serde_json::from_str(&get(&address, "/api/v1/ports")).unwrap();
    assert_eq!(ports.as_array().map(Vec::len), Some(0), "{ports}");
    let dashboard = dashboard_text(&address);
    assert!(
        dashboard.contains("No ports are mapped") && dashboard.contains("flashrack ports learn"),
        "the dashboard's scripts say how to map ports"
    );

    // Its log, read whole once it has stopped (a missing line cannot leave
    // the test waiting for it).
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child.0),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(child.0.wait().unwrap().success());
    let mut log = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let warning = log
        .lines()
        .find(|line| line.contains("no ports are mapped"))
        .unwrap_or_else(|| panic!("the log says that no port is mapped: {log}"));
    assert!(
        warning.contains(&format!(
            "flashrack ports learn --config {}",
            config.display()
        )),
        "{warning}"
    );
    assert!(warning.contains("no stick will be written"), "{warning}");
}

#[test]
fn root_does_not_write_into_a_data_directory_of_another_user() {
    if !flashrack_testkit::require_root(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // As the Debian package leaves it: owned by the service's user.
    std::os::unix::fs::chown(&data, Some(4242), Some(4242)).unwrap();
    let image = dir.path().join("image.img");
    std::fs::write(&image, flashrack_testkit::image_bytes(1 << 20, 5, 1 << 18)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(&data)
        .args(["image", "import"])
        .arg(&image)
        .stdin(Stdio::null())
        .output()
        .expect("run flashrack");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("belongs to uid 4242"), "{stderr}");
    assert!(stderr.contains("runuser -u flashrack"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing is written there"
    );
}
