//! The station configuration: the example is valid, and every malformed file is
//! rejected with its line and a reason.

use std::path::Path;

use flashrack_config::{write_port_map, ConfigError, PortConfig, StationConfig, EXAMPLE};

fn parse(text: &str) -> Result<StationConfig, ConfigError> {
    StationConfig::parse(text, Path::new("station.toml"))
}

fn error_of(text: &str) -> (usize, String) {
    match parse(text) {
        Err(ConfigError::Invalid { line, reason, path }) => {
            assert_eq!(path, Path::new("station.toml"));
            (line, reason)
        }
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

#[test]
fn the_example_config_is_valid_loopback_by_default_and_maps_no_port() {
    let config = StationConfig::example();
    assert_eq!(config.station_id, "station-1");
    // Port paths name one machine's slots: the example (installed by the
    // Debian package as /etc/flashrack/station.toml) leaves them to
    // `flashrack ports learn`.
    assert!(config.ports.is_empty(), "{:?}", config.ports);
    assert!(!config.allow_unmapped_ports);
    assert!(config.web.listen.ip().is_loopback());
    assert!(config.allowed_buses.contains("usb") && config.allowed_buses.len() == 1);
    assert_eq!(config.max_size.bytes(), 256_000_000_000);
}

#[test]
fn an_empty_file_gets_safe_defaults() {
    let config = parse("").unwrap();
    assert!(config.ports.is_empty());
    assert!(!config.allow_unmapped_ports);
    assert_eq!(config.stall_timeout_secs, 60);
    assert!(config.reset_before_verify);
    assert_eq!(config.usb_reset, flashrack_config::UsbReset::Authorize);
}

#[test]
fn the_reset_before_the_read_back_can_be_turned_off_or_done_by_ioctl() {
    let config =
        parse("[engine]\nreset_before_verify = false\nusb_reset = \"usbdevfs\"\n").unwrap();
    assert!(!config.reset_before_verify);
    assert_eq!(config.usb_reset, flashrack_config::UsbReset::Usbdevfs);
}

#[test]
fn malformed_files_name_the_line_and_the_reason() {
    let cases: &[(&str, usize, &str)] = &[
        ("station_id = \"a\"\n[guard\n", 2, ""),
        ("station_id = \"a\"\nsurprise = 1\n", 2, "unknown field"),
        ("[guard]\nmax_size = \"12 parsecs\"\n", 2, "byte size"),
        ("[guard]\nmax_size = 0\n", 2, "more than 0"),
        ("station_id = \"a\"\ndata_dir = \"\"\n", 2, "data_dir \"\" is not an absolute path"),
        ("data_dir = \"var/lib/flashrack\"\n", 1, "not an absolute path"),
        (
            "[guard]\nmax_size = -5\n",
            2,
            "guard.max_size: invalid value: integer `-5`, expected a size",
        ),
        ("[guard]\nmax_size = 1.5\n", 2, "guard.max_size: invalid type"),
        (
            "[engine]\nstall_timeout_secs = -1\n",
            2,
            "engine.stall_timeout_secs: invalid value",
        ),
        (
            "[engine]\nstall_timeout_secs = \"60\"\n",
            2,
            "engine.stall_timeout_secs: invalid type",
        ),
        ("[web]\npublic_read = \"yes\"\n", 2, "web.public_read: invalid type"),
        (
            "[[port]]\nlabel = \"A1\"\npath = \"p\"\nrow = -1\ncolumn = 0\n",
            4,
            "port",
        ),
        ("[guard]\nallowed_buses = []\n", 2, "empty"),
        ("[guard]\nallowed_buses = [\"us b\"]\n", 2, "not a bus"),
        ("[engine]\nstall_timeout_secs = 0\n", 2, "1 to 3600"),
        ("[engine]\nusb_reset = \"power-cycle\"\n", 2, "unknown variant"),
        ("station_id = \"has space\"\n", 1, "station_id"),
        (
            "[[port]]\nlabel = \"A1\"\npath = \"p1\"\n\n[[port]]\nlabel = \"A1\"\npath = \"p2\"\n",
            6,
            "duplicate port label",
        ),
        (
            "[[port]]\nlabel = \"A1\"\npath = \"p1\"\n\n[[port]]\nlabel = \"a1\"\npath = \"p2\"\n",
            6,
            "duplicate port label \"a1\": port A1 has it already",
        ),
        (
            "[[port]]\nlabel = \"A1\"\npath = \"p1\"\n[[port]]\nlabel = \"A2\"\npath = \"p1\"\n",
            6,
            "same path as port A1",
        ),
        ("[[port]]\nlabel = \"\"\npath = \"p\"\n", 2, "port label"),
        ("[[port]]\nlabel = \"A1\"\npath = \"  \"\n", 3, "empty path"),
        ("[[port]]\nlabel = \"A1\"\n", 1, "missing field `path`"),
        ("[[port]]\nlabel = \"A1\"\npath = \"p\"\nrow = 1\n", 2, "both row and column"),
        (
            "[layout]\nrows = 1\ncolumns = 2\n[[port]]\nlabel = \"A1\"\npath = \"p\"\nrow = 0\ncolumn = 2\n",
            5,
            "outside the 1x2 layout",
        ),
        ("[web]\nlisten = \"localhost\"\n", 2, "not an address"),
        ("[web]\nlisten = \"0.0.0.0:8080\"\n", 2, "needs an operator token"),
        ("[web]\nlisten = \"0.0.0.0:8080\"\ntoken = \"short\"\n", 3, "token: the operator token must be at least 12"),
        ("[web]\ntoken = \"short\"\n", 2, "at least 12"),
    ];
    for (text, line, reason) in cases {
        let (got_line, got_reason) = error_of(text);
        assert_eq!(got_line, *line, "{text:?}: {got_reason}");
        assert!(got_reason.contains(reason), "{text:?}: {got_reason}");
    }
}

#[test]
fn the_error_message_reads_file_line_reason() {
    let error = parse("[guard]\nmax_size = 0\n").unwrap_err().to_string();
    assert_eq!(error, "station.toml:2: max_size must be more than 0");
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let error = StationConfig::load(Path::new("/nonexistent/station.toml")).unwrap_err();
    assert!(
        error.to_string().starts_with("/nonexistent/station.toml:"),
        "{error}"
    );
}

#[test]
fn a_public_listener_with_a_token_is_accepted() {
    let config = parse(
        "[web]\nlisten = \"0.0.0.0:9000\"\ntoken = \"correct-horse-battery\"\npublic_read = true\n",
    )
    .unwrap();
    assert_eq!(config.web.token.as_deref(), Some("correct-horse-battery"));
    assert!(config.web.public_read);
}

#[test]
fn a_port_marked_master_is_read_as_one_and_others_are_not() {
    let config = parse(
        "[[port]]\nlabel = \"M1\"\npath = \"p-m\"\nmaster = true\n[[port]]\nlabel = \"A1\"\npath = \"p-a\"\n",
    )
    .unwrap();
    let masters: Vec<(&str, bool)> = config
        .ports
        .iter()
        .map(|p| (p.label.as_str(), p.master))
        .collect();
    assert_eq!(masters, [("M1", true), ("A1", false)]);
    let (line, reason) = error_of("[[port]]\nlabel = \"M1\"\npath = \"p-m\"\nmaster = \"yes\"\n");
    assert_eq!(line, 4, "{reason}");
}

#[test]
fn writing_the_port_map_keeps_comments_and_the_rest_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("station.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let ports = vec![
        PortConfig {
            label: "B1".into(),
            path: "pci-x-usb-0:2.1".into(),
            position: Some((1, 0)),
            master: false,
        },
        PortConfig {
            label: "B2".into(),
            path: "pci-x-usb-0:2.2".into(),
            position: None,
            master: true,
        },
    ];
    write_port_map(&path, &ports).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("# Refuse anything bigger"), "comments kept");
    let config = StationConfig::load(&path).unwrap();
    assert_eq!(config.ports, ports);
    assert_eq!(config.station_id, "station-1");
    // An invalid map is refused and the file is left as it was.
    let dup = vec![ports[0].clone(), ports[0].clone()];
    assert!(write_port_map(&path, &dup).is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(!path.with_extension("toml.tmp").exists());
}

#[test]
fn web_defaults_allow_no_import_directory_and_no_extra_host() {
    let config = parse("").unwrap();
    assert!(config.web.import_dirs.is_empty());
    assert!(config.web.allowed_hosts.is_empty());
    assert_eq!(
        config.web.max_connections,
        flashrack_config::DEFAULT_MAX_CONNECTIONS
    );
    assert_eq!(StationConfig::example().web.max_connections, 256);
}

#[test]
fn import_directories_hosts_and_connections_are_read_and_checked() {
    let config = parse(
        "[web]\nimport_dirs = [\"/srv/images\", \"/srv/images\", \"/mnt/usb\"]\n\
         allowed_hosts = [\"Station-1.Lab\", \"10.0.0.5\"]\nmax_connections = 64\n",
    )
    .unwrap();
    assert_eq!(
        config.web.import_dirs,
        [Path::new("/srv/images"), Path::new("/mnt/usb")]
    );
    assert_eq!(config.web.allowed_hosts, ["station-1.lab", "10.0.0.5"]);
    assert_eq!(config.web.max_connections, 64);

    let cases: &[(&str, usize, &str)] = &[
        (
            "[web]\nimport_dirs = [\"images\"]\n",
            2,
            "not an absolute path",
        ),
        (
            "[web]\nimport_dirs = [\"/\"]\n",
            2,
            "any file of the station",
        ),
        ("[web]\nimport_dirs = \"/srv\"\n", 2, "invalid type"),
        (
            "[web]\nallowed_hosts = [\"http://evil.example\"]\n",
            2,
            "not a host name",
        ),
        (
            "[web]\nallowed_hosts = [\"a.example:8080\"]\n",
            2,
            "not a host name",
        ),
        ("[web]\nallowed_hosts = [\"\"]\n", 2, "not a host name"),
        ("[web]\nmax_connections = 0\n", 2, "4 to 65536"),
    ];
    for (text, line, reason) in cases {
        let (got_line, got_reason) = error_of(text);
        assert_eq!(got_line, *line, "{text:?}: {got_reason}");
        assert!(got_reason.contains(reason), "{text:?}: {got_reason}");
    }
}

#[test]
fn a_configuration_that_is_not_a_regular_file_is_refused_unread() {
    for path in ["/dev/zero", "/dev/urandom", "/"] {
        let error = StationConfig::load(Path::new(path)).unwrap_err();
        assert!(
            matches!(&error, ConfigError::NotAFile { path: p } if p == Path::new(path)),
            "{path}: {error:?}"
        );
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }
    // A FIFO would block an open for reading until a writer came.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("station.toml");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let error = StationConfig::load(&fifo).unwrap_err();
    assert!(matches!(error, ConfigError::NotAFile { .. }), "{error:?}");
}

#[test]
fn a_configuration_larger_than_the_limit_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("station.toml");
    let mut text = String::from("station_id = \"big\"\n");
    while text.len() as u64 <= flashrack_config::MAX_CONFIG_BYTES {
        text.push_str("# padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, &text).unwrap();
    let error = StationConfig::load(&path).unwrap_err();
    assert!(
        matches!(error, ConfigError::TooLarge { limit, .. } if limit == flashrack_config::MAX_CONFIG_BYTES),
        "{error:?}"
    );
    assert!(error.to_string().contains("larger than"), "{error}");
    // Just under the limit is read.
    text.truncate(flashrack_config::MAX_CONFIG_BYTES as usize - 100);
    let cut = text.rfind('\n').unwrap() + 1;
    text.truncate(cut);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(StationConfig::load(&path).unwrap().station_id, "big");
}

#[test]
fn writing_the_port_map_keeps_the_files_owner_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("station.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    // As the Debian package leaves it: root:flashrack 0640. Another group
    // when the test may give one (as root); as anyone else the file keeps its own.
    let _ = std::os::unix::fs::chown(&path, None, Some(4242));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = std::fs::metadata(&path).unwrap();
    let ports = vec![PortConfig {
        label: "A1".into(),
        path: "pci-x-usb-0:1.1".into(),
        position: Some((0, 0)),
        master: false,
    }];
    write_port_map(&path, &ports).unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_ne!(
        after.ino(),
        before.ino(),
        "written anew (temporary file, then rename)"
    );
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
}

const FLEET: &str = "station_id = \"lab-a\"\n[fleet]\nhub = \"http://hub.lab:8090/\"\ntoken_file = \"/etc/flashrack/hub-token\"\n";

#[test]
fn a_fleet_section_names_the_hub_and_the_token_file() {
    let config = parse(FLEET).unwrap();
    let fleet = config.fleet.expect("the fleet section");
    // The trailing slash is dropped: request paths are appended to the base.
    assert_eq!(fleet.hub.as_str(), "http://hub.lab:8090/");
    assert_eq!(fleet.hub.path(), "/");
    assert_eq!(fleet.station_id, "lab-a");
    assert_eq!(fleet.token_file, Path::new("/etc/flashrack/hub-token"));
    assert_eq!(parse("").unwrap().fleet, None);
    assert_eq!(StationConfig::example().fleet, None);
}

#[test]
fn a_hub_behind_a_proxy_keeps_its_path_prefix() {
    let config = parse(
        "[fleet]\nhub = \"https://proxy.lab/flashrack/\"\ntoken_file = \"/etc/t\"\nstation_id = \"lab-b\"\n",
    )
    .unwrap();
    let fleet = config.fleet.unwrap();
    assert_eq!(fleet.hub.as_str(), "https://proxy.lab/flashrack");
    // The fleet's station id is the station's when the station names none.
    assert_eq!(config.station_id, "lab-b");
    assert_eq!(fleet.station_id, "lab-b");
}

#[test]
fn malformed_fleet_sections_name_the_line_and_the_reason() {
    let cases: &[(&str, usize, &str)] = &[
        ("[fleet]\nhub = \"hub.lab:8090\"\ntoken_file = \"/t\"\n", 2, "http or https"),
        ("[fleet]\nhub = \"not a url\"\ntoken_file = \"/t\"\n", 2, "is not a URL"),
        ("[fleet]\nhub = \"ftp://hub.lab\"\ntoken_file = \"/t\"\n", 2, "http or https"),
        (
            "[fleet]\nhub = \"http://user:pw@hub.lab\"\ntoken_file = \"/t\"\n",
            2,
            "token goes in token_file",
        ),
        ("[fleet]\nhub = \"http://hub.lab/?x=1\"\ntoken_file = \"/t\"\n", 2, "query"),
        ("[fleet]\nhub = \"http://hub.lab\"\ntoken_file = \"hub-token\"\n", 3, "absolute path"),
        ("[fleet]\nhub = \"http://hub.lab\"\n", 1, "missing field `token_file`"),
        ("[fleet]\ntoken_file = \"/t\"\n", 1, "missing field `hub`"),
        ("[fleet]\nhub = \"http://h\"\ntoken_file = \"/t\"\nretry = 3\n", 4, "unknown field"),
        (
            "[fleet]\nhub = \"http://h\"\ntoken_file = \"/t\"\nstation_id = \"a b\"\n",
            4,
            "station_id",
        ),
        (
            "station_id = \"lab-a\"\n[fleet]\nhub = \"http://h\"\ntoken_file = \"/t\"\nstation_id = \"lab-b\"\n",
            5,
            "is not the station's station_id \"lab-a\"",
        ),
    ];
    for (text, line, reason) in cases {
        let (got_line, got_reason) = error_of(text);
        assert_eq!(got_line, *line, "{text:?}: {got_reason}");
        assert!(got_reason.contains(reason), "{text:?}: {got_reason}");
    }
}

fn token_file(dir: &tempfile::TempDir, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("hub-token");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn a_private_token_file_is_read_without_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o640, 0o400] {
        let path = token_file(&dir, "  s3cret-token-of-lab-a\n", mode);
        assert_eq!(
            flashrack_config::read_token_file(&path).unwrap(),
            "s3cret-token-of-lab-a",
            "mode {mode:o}"
        );
    }
}

#[test]
fn a_token_file_others_can_read_or_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o604, 0o602, 0o666] {
        let path = token_file(&dir, "s3cret-token-of-lab-a\n", mode);
        let error = flashrack_config::read_token_file(&path).unwrap_err();
        assert!(matches!(error, ConfigError::Token { .. }), "{error:?}");
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
}

#[test]
fn a_token_file_without_a_usable_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (text, reason) in [
        ("\n", "empty"),
        ("short\n", "at least 16"),
        ("two words-of-token-text\n", "printable ASCII"),
    ] {
        let path = token_file(&dir, text, 0o600);
        let error = flashrack_config::read_token_file(&path).unwrap_err();
        assert!(error.to_string().contains(reason), "{text:?}: {error}");
    }
    let error = flashrack_config::read_token_file(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    let error = flashrack_config::read_token_file(dir.path()).unwrap_err();
    assert!(matches!(error, ConfigError::NotAFile { .. }), "{error:?}");
}

#[test]
fn operators_own_tokens_are_read_and_may_guard_a_public_listener_alone() {
    let config = parse(
        "[web]\nlisten = \"0.0.0.0:9000\"\n\
         [[web.operators]]\nname = \" Ada Lovelace \"\ntoken = \"ada-s-own-token-1234\"\n\
         [[web.operators]]\nname = \"Grace Hopper\"\ntoken = \"grace-s-own-token-5678\"\n",
    )
    .unwrap();
    let names: Vec<&str> = config
        .web
        .operators
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(names, ["Ada Lovelace", "Grace Hopper"]);
    assert_eq!(config.web.operators[0].token, "ada-s-own-token-1234");
    assert_eq!(config.web.token, None);
    // Never the token in a debug print (configurations are logged).
    assert!(!format!("{config:?}").contains("ada-s-own-token"));
}

#[test]
fn malformed_operator_tokens_name_the_line_and_the_reason() {
    let op = |name: &str, token: &str| {
        format!("[[web.operators]]\nname = \"{name}\"\ntoken = \"{token}\"\n")
    };
    for (text, reason) in [
        (op("Ada", "short"), "at least 12 characters"),
        (op("", "long-enough-token-1"), "1 to 100 characters"),
        (
            op("A\\u0007da", "long-enough-token-1"),
            "control characters",
        ),
        // A right-to-left override would print the name reversed on
        // every report that names the operator.
        (
            op("Ada\\u202Eecalevol", "long-enough-token-1"),
            "invisible formatting characters",
        ),
        (
            op(&"A".repeat(101), "long-enough-token-1"),
            "1 to 100 characters",
        ),
        (
            op("Ada", "long-enough-token-1") + &op("Ada", "long-enough-token-2"),
            "named twice",
        ),
        (
            op("Ada", "long-enough-token-1") + &op("Grace", "long-enough-token-1"),
            "each must be its own",
        ),
        (
            format!(
                "[web]\ntoken = \"long-enough-token-1\"\n{}",
                op("Ada", "long-enough-token-1")
            ),
            "each must be its own",
        ),
        (
            "[[web.operators]]\nname = \"Ada\"\n".to_string(),
            "missing field `token`",
        ),
    ] {
        let (_, message) = error_of(&text);
        assert!(message.contains(reason), "{text:?}: {message}");
    }
}
