//! `require_root` as a contributor without root and as CI see it. This file has
//! its own harness (`harness = false`): as root, it runs a copy of its own binary
//! again as an unprivileged user (`setpriv`), where it plays a test that needs
//! root, with and without `FLASHRACK_REQUIRE_ROOT_TESTS`, and checks what that
//! test did and said. Without root it is itself a test that needs root, reported
//! as not run.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use flashrack_testkit::{require_root, REQUIRE_ROOT_TESTS};

/// Set in the child: play the test that needs root.
const PLAY: &str = "FLASHRACK_TESTKIT_PLAY_ROOT_TEST";

/// The name of the test the child plays (its thread's name, as libtest names
/// a test's thread).
const PLAYED: &str = "a_test_that_needs_root";

fn main() {
    if std::env::var_os(PLAY).is_some() {
        play();
        return;
    }
    if !require_root(&["setpriv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A copy the unprivileged user can reach wherever the build directory is.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("require_root");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();

    // Without root: not run, said so on stderr, and the test passes.
    let out = child(&copy, false, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "returned early\n");
    assert!(
        text(&out.stderr).contains(&format!("not run: {PLAYED} needs root")),
        "{}",
        text(&out.stderr)
    );
    // "0" asks for nothing.
    let out = child(&copy, false, Some("0"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "returned early\n");

    // Without root where every such test must run (CI): a failure that says why.
    let out = child(&copy, false, Some("1"));
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains(&format!("{PLAYED} needs root"))
            && text(&out.stderr).contains(REQUIRE_ROOT_TESTS),
        "{}",
        text(&out.stderr)
    );

    // As root: it runs.
    let out = child(&copy, true, Some("1"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
    assert!(!text(&out.stderr).contains("not run"));
    println!(
        "require_root: not run without root, a failure without root with \
         {REQUIRE_ROOT_TESTS}=1, run as root: ok"
    );
}

/// The child's part: a test that needs root, on a thread named like a test's.
/// Exits 101 (as libtest does for a failure) if the test panics.
fn play() {
    let test = std::thread::Builder::new()
        .name(PLAYED.into())
        .spawn(|| {
            if !require_root(&[]) {
                println!("returned early");
                return;
            }
            println!("ran");
        })
        .unwrap();
    if test.join().is_err() {
        std::process::exit(101);
    }
}

/// Runs `binary` as the child, as root or as `nobody`, with
/// `FLASHRACK_REQUIRE_ROOT_TESTS` set to `required` or unset.
fn child(binary: &Path, as_root: bool, required: Option<&str>) -> Output {
    let mut command = if as_root {
        Command::new(binary)
    } else {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary);
        command
    };
    command.env(PLAY, "1").current_dir("/");
    match required {
        Some(value) => command.env(REQUIRE_ROOT_TESTS, value),
        None => command.env_remove(REQUIRE_ROOT_TESTS),
    };
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
