//! The station configuration: one TOML file (`config/station.toml`), read and
//! validated once at start-up into a typed [`StationConfig`] that is passed
//! explicitly to whatever needs it.
//!
//! A malformed file is rejected with the file, the line and the reason
//! (`station.toml:12: duplicate port label "A1"`); nothing starts on a bad config.
//! [`write_port_map`] rewrites only the `[[port]]` tables of a file, keeping its
//! comments, for `flashrack ports learn`.
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use flashrack_core::ByteSize;
use serde::Deserialize;
use toml::Spanned;

/// The example configuration shipped in `config/station.toml`, also the
/// embedded default.
pub const EXAMPLE: &str = include_str!("../../../config/station.toml");

/// The largest configuration file read (1 MiB): a port map of thousands of
/// ports is a few hundred KiB. Anything larger is refused unread.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Concurrent HTTP connections served by default; more wait, or push out
/// connections that never sent a request.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid, at a line.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The path is not a regular file (a FIFO, a device such as `/dev/zero`, a
    /// directory): refused before it is read.
    #[error("{path}: not a regular file; a configuration is a TOML file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than any configuration: refused rather than read
    /// without bound.
    #[error("{path}: larger than {limit} bytes; this is not a station configuration")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, [`MAX_CONFIG_BYTES`].
        limit: u64,
    },
    /// The fleet's token file cannot be used.
    #[error("token file {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// One mapped port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// What operators call it ("A1").
    pub label: String,
    /// Its udev `ID_PATH`.
    pub path: String,
    /// Grid position (row, column), 0-based.
    pub position: Option<(u32, u32)>,
    /// A master port (`master = true`): a stick in it is never written (no
    /// run starts it, not even on the operator's request); it is offered for
    /// capture into the image cache instead.
    pub master: bool,
}

/// Who may change things over the web.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Where the dashboard and API listen.
    pub listen: SocketAddr,
    /// The operator token; required to change anything when `listen` is not a
    /// loopback address.
    pub token: Option<String>,
    /// Whether viewing needs no token when not on loopback.
    pub public_read: bool,
    /// Host names (besides loopback names and IP addresses, always accepted)
    /// under which browsers may reach the station: a request whose `Host` is
    /// anything else is refused (DNS rebinding), and so is a change whose
    /// `Origin` is not the station itself.
    pub allowed_hosts: Vec<String>,
    /// Directories `POST /api/v1/images/import` may import from (besides the
    /// upload area); empty by default: no file of the station can be named.
    pub import_dirs: Vec<PathBuf>,
    /// HTTP connections served at once.
    pub max_connections: usize,
    /// The operators' own tokens (`[[web.operators]]`): a run armed with one
    /// is recorded as armed by its holder.
    pub operators: Vec<OperatorToken>,
}

/// An operator's own token (`[[web.operators]]`: `name`, `token`).
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken {
    /// The holder's name, as reports print it: at most 100 characters,
    /// without control characters or invisible formatting characters.
    pub name: String,
    /// The token: at least 12 characters, unlike every other token of the
    /// station.
    pub token: String,
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("OperatorToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The validated station configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationConfig {
    /// Records carry it.
    pub station_id: String,
    /// Where the image cache and the database live.
    pub data_dir: PathBuf,
    /// Buses the guard lets through (`usb` by default).
    pub allowed_buses: BTreeSet<String>,
    /// Largest device the guard lets through.
    pub max_size: ByteSize,
    /// Whether sticks in ports missing from the map may be written.
    pub allow_unmapped_ports: bool,
    /// Seconds without progress before a stick fails as stalled.
    pub stall_timeout_secs: u64,
    /// Whether each USB stick is reset after its write pass and before its
    /// read-back, so that no cache inside it answers the read-back (`true` by
    /// default; loop devices and files are never reset). The station's
    /// capacity probe defeats a stick's cache the same way when this is on
    /// (a reset, or its filler where the stick cannot be reset).
    pub reset_before_verify: bool,
    /// How a USB stick is reset.
    pub usb_reset: UsbReset,
    /// The port map, in file order.
    pub ports: Vec<PortConfig>,
    /// Grid size (rows, columns) for the dashboard.
    pub layout: Option<(u32, u32)>,
    /// The web side.
    pub web: WebConfig,
    /// The fleet hub this station ships its records to, if it joined one.
    pub fleet: Option<FleetConfig>,
}

/// How a USB stick is reset before its read-back (`[engine] usb_reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsbReset {
    /// De-authorize and re-authorize the USB device through sysfs
    /// (`authorize`, the default): the stick leaves and comes back as a new
    /// disk in the same port.
    #[default]
    Authorize,
    /// The `USBDEVFS_RESET` ioctl on its usbfs node (`usbdevfs`): a port
    /// reset, which `usb-storage` usually survives with the same disk.
    Usbdevfs,
}

/// The fleet hub a station joined (`[fleet]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The hub's base URL (`http` or `https`, a host, maybe a path prefix
    /// behind a proxy, whose trailing `/` is dropped; no user, query or
    /// fragment).
    pub hub: url::Url,
    /// The station's id at the hub: the station's own `station_id` (records
    /// carry it, and the hub's token for this station is bound to it).
    pub station_id: String,
    /// The file holding the station's token for the hub (read at start-up by
    /// [`FleetConfig::read_token`]; never world-readable).
    pub token_file: PathBuf,
}

/// The largest token file read: a token is a line of text.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The shortest token accepted from a token file.
pub const MIN_TOKEN_LEN: usize = 16;

impl FleetConfig {
    /// Reads the station's hub token from [`token_file`](Self::token_file).
    ///
    /// The file must be a regular file, neither readable nor writable by
    /// "others" (mode `0600` or `0640`: the token lets its holder write this
    /// station's records at the hub, so a file any local user can read is
    /// refused rather than used; group read is allowed so that a `flashrack`
    /// group can hold it), and hold one token: at least [`MIN_TOKEN_LEN`]
    /// printable ASCII characters without spaces (surrounding white space and
    /// the final newline are ignored).
    pub fn read_token(&self) -> Result<String, ConfigError> {
        read_token_file(&self.token_file)
    }
}

/// Reads a token file; see [`FleetConfig::read_token`].
pub fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let refused = |reason: String| ConfigError::Token {
        path: path.to_path_buf(),
        reason,
    };
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(refused(format!(
            "mode {mode:04o} lets every user of this machine read or change the hub token; \
             make it readable by flashrack only (chmod 600, or 640 for a group)"
        )));
    }
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(refused(format!(
            "larger than {MAX_TOKEN_FILE_BYTES} bytes: not a token file"
        )));
    }
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(refused(
            "empty: it must hold the station's hub token".into(),
        ));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(refused(
            "the token must be one line of printable ASCII without spaces".into(),
        ));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(refused(format!(
            "the token must be at least {MIN_TOKEN_LEN} characters"
        )));
    }
    Ok(token.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    station_id: Option<Spanned<String>>,
    data_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    web: RawWeb,
    layout: Option<RawLayout>,
    #[serde(default)]
    port: Vec<RawPort>,
    fleet: Option<Spanned<RawFleet>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    hub: Spanned<String>,
    station_id: Option<Spanned<String>>,
    token_file: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    allowed_buses: Option<Spanned<Vec<String>>>,
    max_size: Option<Spanned<ByteSize>>,
    #[serde(default)]
    allow_unmapped_ports: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    stall_timeout_secs: Option<Spanned<u64>>,
    #[serde(default = "yes")]
    reset_before_verify: bool,
    #[serde(default)]
    usb_reset: UsbReset,
}

fn yes() -> bool {
    true
}

/// A file without `[engine]` gets what a file with an empty one gets.
impl Default for RawEngine {
    fn default() -> Self {
        Self {
            stall_timeout_secs: None,
            reset_before_verify: yes(),
            usb_reset: UsbReset::default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    #[serde(default)]
    public_read: bool,
    allowed_hosts: Option<Spanned<Vec<String>>>,
    import_dirs: Option<Spanned<Vec<String>>>,
    max_connections: Option<Spanned<u64>>,
    #[serde(default)]
    operators: Vec<Spanned<RawOperator>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    name: String,
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayout {
    rows: u32,
    columns: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    label: Spanned<String>,
    path: Spanned<String>,
    row: Option<u32>,
    column: Option<u32>,
    #[serde(default)]
    master: bool,
}

impl StationConfig {
    /// Reads and validates a configuration file: a regular file of at most
    /// [`MAX_CONFIG_BYTES`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config_file(path)?;
        Self::parse(&text, path)
    }

    /// The embedded example configuration.
    pub fn example() -> Self {
        Self::parse(EXAMPLE, Path::new("config/station.toml")).expect("the example config is valid")
    }

    /// Validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |offset: usize, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            reason,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|mut e| {
            let offset = e.span().map_or(0, |s| s.start);
            let message = e.message().trim().to_string();
            // The field a wrong value was given for ("invalid value: integer
            // `-1`, expected u64" alone does not say which): toml names it
            // only in its display without the input.
            e.set_input(None);
            let shown = e.to_string();
            let field = shown
                .lines()
                .find_map(|line| line.strip_prefix("in `")?.strip_suffix('`'))
                .filter(|field| !message.contains(&format!("`{field}`")));
            let reason = match field {
                Some(field) => format!("{field}: {message}"),
                None => message,
            };
            invalid(offset, reason)
        })?;

        let check_id = |id: &Spanned<String>| {
            let value = id.get_ref().trim();
            if value.is_empty() || value.len() > 64 || !value.chars().all(is_name_char) {
                return Err(invalid(
                    id.span().start,
                    format!("station_id {value:?} must be 1-64 letters, digits, '-', '_' or '.'"),
                ));
            }
            Ok(value.to_string())
        };
        let fleet_id = match raw
            .fleet
            .as_ref()
            .and_then(|f| f.get_ref().station_id.as_ref())
        {
            Some(id) => Some((check_id(id)?, id.span().start)),
            None => None,
        };
        let station_id = match (&raw.station_id, fleet_id) {
            (Some(id), Some((fleet_id, at))) => {
                let id = check_id(id)?;
                if id != fleet_id {
                    return Err(invalid(
                        at,
                        format!(
                            "[fleet] station_id {fleet_id:?} is not the station's station_id {id:?}: \
                             the station's records carry its id, and the hub files them under it; \
                             give one id (either place)"
                        ),
                    ));
                }
                id
            }
            (Some(id), None) => check_id(id)?,
            (None, Some((fleet_id, _))) => fleet_id,
            (None, None) => "station-1".to_string(),
        };

        let allowed_buses = match raw.guard.allowed_buses {
            Some(buses) => {
                let mut set = BTreeSet::new();
                for bus in buses.get_ref() {
                    let bus = bus.trim().to_ascii_lowercase();
                    if bus.is_empty() || !bus.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(invalid(
                            buses.span().start,
                            format!("bus {bus:?} is not a bus name"),
                        ));
                    }
                    set.insert(bus);
                }
                if set.is_empty() {
                    return Err(invalid(
                        buses.span().start,
                        "allowed_buses is empty: nothing could ever be written".into(),
                    ));
                }
                set
            }
            None => BTreeSet::from(["usb".to_string()]),
        };

        let max_size = match raw.guard.max_size {
            Some(size) if size.get_ref().bytes() == 0 => {
                return Err(invalid(
                    size.span().start,
                    "max_size must be more than 0".into(),
                ))
            }
            Some(size) => *size.get_ref(),
            None => ByteSize(256_000_000_000),
        };

        let stall_timeout_secs = match raw.engine.stall_timeout_secs {
            Some(secs) if *secs.get_ref() == 0 || *secs.get_ref() > 3600 => {
                return Err(invalid(
                    secs.span().start,
                    "stall_timeout_secs must be 1 to 3600".into(),
                ))
            }
            Some(secs) => *secs.get_ref(),
            None => 60,
        };

        let layout = raw.layout.map(|l| (l.rows, l.columns));
        let mut labels = BTreeMap::new();
        let mut paths = BTreeMap::new();
        let mut ports = Vec::new();
        for port in raw.port {
            let label = port.label.get_ref().trim().to_string();
            if let Some(problem) = port_label_problem(&label) {
                return Err(invalid(port.label.span().start, problem));
            }
            // Case aside: a rack's printed labels cannot tell `A1` from `a1`.
            if let Some(other) = labels.insert(label.to_lowercase(), label.clone()) {
                return Err(invalid(
                    port.label.span().start,
                    if other == label {
                        format!("duplicate port label {label:?}")
                    } else {
                        format!(
                            "duplicate port label {label:?}: port {other} has it already \
                             (labels differing only in case are one label on a rack)"
                        )
                    },
                ));
            }
            let port_path = port.path.get_ref().trim().to_string();
            if port_path.is_empty() {
                return Err(invalid(
                    port.path.span().start,
                    format!("port {label} has an empty path"),
                ));
            }
            if let Some(other) = paths.insert(port_path.clone(), label.clone()) {
                return Err(invalid(
                    port.path.span().start,
                    format!("port {label} has the same path as port {other}"),
                ));
            }
            let position = match (port.row, port.column) {
                (Some(r), Some(c)) => {
                    if let Some((rows, columns)) = layout {
                        if r >= rows || c >= columns {
                            return Err(invalid(
                                port.label.span().start,
                                format!("port {label} at row {r}, column {c} is outside the {rows}x{columns} layout"),
                            ));
                        }
                    }
                    Some((r, c))
                }
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        port.label.span().start,
                        format!("port {label} needs both row and column, or neither"),
                    ))
                }
            };
            ports.push(PortConfig {
                label,
                path: port_path,
                position,
                master: port.master,
            });
        }

        let listen_text = raw
            .web
            .listen
            .as_ref()
            .map_or("127.0.0.1:8080", |l| l.get_ref().as_str());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                raw.web.listen.as_ref().map_or(0, |l| l.span().start),
                format!("listen {listen_text:?} is not an address like 127.0.0.1:8080"),
            )
        })?;
        // Where the token is written: a token too short is refused at its line.
        let token_at = raw.web.token.as_ref().map_or(0, |t| t.span().start);
        let token = raw
            .web
            .token
            .map(Spanned::into_inner)
            .filter(|t| !t.trim().is_empty());
        let operators = parse_operators(&raw.web.operators, token.as_deref(), &invalid)?;
        if !listen.ip().is_loopback() && token.is_none() && operators.is_empty() {
            return Err(invalid(
                raw.web.listen.as_ref().map_or(0, |l| l.span().start),
                format!(
                    "listening on {listen} (not loopback) needs an operator token in [web] token"
                ),
            ));
        }
        if let Some(token) = &token {
            if token.len() < 12 {
                return Err(invalid(
                    token_at,
                    "[web] token: the operator token must be at least 12 characters".into(),
                ));
            }
        }

        let allowed_hosts = match raw.web.allowed_hosts {
            Some(hosts) => {
                let mut names = Vec::new();
                for host in hosts.get_ref() {
                    let name = host.trim().to_ascii_lowercase();
                    let valid = !name.is_empty()
                        && name.len() <= 253
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                        && !name.starts_with('.')
                        && !name.starts_with('-');
                    if !valid {
                        return Err(invalid(
                            hosts.span().start,
                            format!("allowed_hosts: {host:?} is not a host name (no scheme, no port: \"station.lab\")"),
                        ));
                    }
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                names
            }
            None => Vec::new(),
        };

        let import_dirs = match raw.web.import_dirs {
            Some(dirs) => {
                let mut paths = Vec::new();
                for dir in dirs.get_ref() {
                    let path = PathBuf::from(dir.trim());
                    if !path.is_absolute() {
                        return Err(invalid(
                            dirs.span().start,
                            format!("import_dirs: {dir:?} is not an absolute path"),
                        ));
                    }
                    if path.parent().is_none() {
                        return Err(invalid(
                            dirs.span().start,
                            "import_dirs: \"/\" would let any file of the station be imported; name the directories that hold images".into(),
                        ));
                    }
                    if !paths.contains(&path) {
                        paths.push(path);
                    }
                }
                paths
            }
            None => Vec::new(),
        };

        let max_connections = match raw.web.max_connections {
            Some(n) if *n.get_ref() < 4 || *n.get_ref() > 65536 => {
                return Err(invalid(
                    n.span().start,
                    "max_connections must be 4 to 65536".into(),
                ))
            }
            Some(n) => *n.get_ref() as usize,
            None => DEFAULT_MAX_CONNECTIONS,
        };

        // The records and the image cache: an absolute path, never one that
        // depends on the directory the station happens to start in ("" is
        // the current directory: `/` under systemd).
        let data_dir = match raw.data_dir {
            Some(dir) if !dir.get_ref().is_absolute() => {
                return Err(invalid(
                    dir.span().start,
                    format!(
                        "data_dir {:?} is not an absolute path (like \"/var/lib/flashrack\")",
                        dir.get_ref()
                    ),
                ))
            }
            Some(dir) => dir.into_inner(),
            None => PathBuf::from("/var/lib/flashrack"),
        };

        let fleet = match &raw.fleet {
            Some(fleet) => Some(parse_fleet(fleet, &station_id, &invalid)?),
            None => None,
        };

        Ok(Self {
            fleet,
            station_id,
            data_dir,
            allowed_buses,
            max_size,
            allow_unmapped_ports: raw.guard.allow_unmapped_ports,
            stall_timeout_secs,
            reset_before_verify: raw.engine.reset_before_verify,
            usb_reset: raw.engine.usb_reset,
            ports,
            layout,
            web: WebConfig {
                listen,
                token,
                public_read: raw.web.public_read,
                allowed_hosts,
                import_dirs,
                max_connections,
                operators,
            },
        })
    }
}

/// Validates `[[web.operators]]`: a name of at most 100 characters without
/// control or invisible formatting characters, a token of at least 12, names and tokens all
/// different (and unlike the shared token).
fn parse_operators(
    raw: &[Spanned<RawOperator>],
    shared: Option<&str>,
    invalid: &dyn Fn(usize, String) -> ConfigError,
) -> Result<Vec<OperatorToken>, ConfigError> {
    let mut operators: Vec<OperatorToken> = Vec::new();
    for entry in raw {
        let at = entry.span().start;
        let RawOperator { name, token } = entry.get_ref();
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || flashrack_core::has_unprintable(name) {
            return Err(invalid(
                at,
                "an operator's name must be 1 to 100 characters, without control characters or \
                 invisible formatting characters (such as U+202E)"
                    .into(),
            ));
        }
        if token.trim() != token || token.len() < 12 {
            return Err(invalid(
                at,
                format!(
                    "{name}'s token must be at least 12 characters, without surrounding spaces"
                ),
            ));
        }
        if operators.iter().any(|o| o.name == name) {
            return Err(invalid(at, format!("operator {name} is named twice")));
        }
        if shared == Some(token.as_str()) || operators.iter().any(|o| &o.token == token) {
            return Err(invalid(
                at,
                format!("{name}'s token is another token of this station: each must be its own"),
            ));
        }
        operators.push(OperatorToken {
            name: name.to_string(),
            token: token.clone(),
        });
    }
    Ok(operators)
}

/// Validates `[fleet]`.
fn parse_fleet(
    fleet: &Spanned<RawFleet>,
    station_id: &str,
    invalid: &dyn Fn(usize, String) -> ConfigError,
) -> Result<FleetConfig, ConfigError> {
    let raw = fleet.get_ref();
    let hub_text = raw.hub.get_ref().trim();
    let at = raw.hub.span().start;
    let bad = |why: &str| {
        invalid(
            at,
            format!("[fleet] hub {hub_text:?} {why} (like \"http://hub.lab:8090\")"),
        )
    };
    let mut hub = url::Url::parse(hub_text).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(hub.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    if hub.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    if !hub.username().is_empty() || hub.password().is_some() {
        return Err(bad(
            "must not carry a user or password: the station's token goes in token_file",
        ));
    }
    if hub.query().is_some() || hub.fragment().is_some() {
        return Err(bad("must not have a query or a fragment"));
    }
    // A path prefix (a hub behind a proxy at /flashrack) is kept, without its
    // trailing slash, so that request paths are appended to it.
    let path = hub.path().trim_end_matches('/').to_string();
    hub.set_path(&path);
    let token_file = PathBuf::from(raw.token_file.get_ref().trim());
    if !token_file.is_absolute() {
        return Err(invalid(
            raw.token_file.span().start,
            format!(
                "[fleet] token_file {:?} is not an absolute path",
                raw.token_file.get_ref()
            ),
        ));
    }
    Ok(FleetConfig {
        hub,
        station_id: station_id.to_string(),
        token_file,
    })
}

/// Why `label` cannot label a port, in words; `None` when it can (1-16
/// letters, digits, `-`, `_` or `.`). Labels differing only in case are one
/// label on a rack (the configuration refuses the second).
pub fn port_label_problem(label: &str) -> Option<String> {
    (label.is_empty() || label.len() > 16 || !label.chars().all(is_name_char))
        .then(|| format!("port label {label:?} must be 1-16 letters, digits, '-', '_' or '.'"))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Reads a configuration file: refuses anything but a regular file before
/// opening it (a FIFO would block, `/dev/zero` never ends), and reads at most
/// [`MAX_CONFIG_BYTES`].
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let not_a_file = || ConfigError::NotAFile {
        path: path.to_path_buf(),
    };
    if !std::fs::metadata(path).map_err(read_error)?.is_file() {
        return Err(not_a_file());
    }
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    let too_large = || ConfigError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_CONFIG_BYTES,
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // The file may grow after the check: never read more than the limit.
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        ))
    })
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Replaces the `[[port]]` tables of the file at `path` with `ports`, keeping
/// everything else (comments included; a `[layout]` grows to hold the ports'
/// positions), and checks that the result is valid
/// before writing it atomically (temporary file, then rename).
pub fn write_port_map(path: &Path, ports: &[PortConfig]) -> Result<(), ConfigError> {
    let write_error = |reason: String| ConfigError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let text = match read_config_file(path) {
        Ok(text) => text,
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            EXAMPLE.to_string()
        }
        Err(error) => return Err(error),
    };
    // The new file takes the old one's owner and mode: the packaged
    // configuration is root:flashrack 0640 (the service reads it, others must
    // not read its token), which a plain new file would lose.
    let before = std::fs::metadata(path).ok();
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| write_error(e.to_string()))?;
    let mut tables = toml_edit::ArrayOfTables::new();
    for port in ports {
        let mut table = toml_edit::Table::new();
        table["label"] = toml_edit::value(port.label.as_str());
        table["path"] = toml_edit::value(port.path.as_str());
        if let Some((row, column)) = port.position {
            table["row"] = toml_edit::value(i64::from(row));
            table["column"] = toml_edit::value(i64::from(column));
        }
        if port.master {
            table["master"] = toml_edit::value(true);
        }
        tables.push(table);
    }
    doc["port"] = toml_edit::Item::ArrayOfTables(tables);
    // A `[layout]` grows to hold every port's position (a learnt B5 on the
    // example's 2x4 grid); it never shrinks.
    if let Some(layout) = doc.get_mut("layout").and_then(|l| l.as_table_like_mut()) {
        let needed = |pick: fn(&(u32, u32)) -> u32| {
            ports
                .iter()
                .filter_map(|p| p.position.as_ref().map(pick))
                .max()
                .map_or(0, |max| i64::from(max) + 1)
        };
        for (key, need) in [("rows", needed(|p| p.0)), ("columns", needed(|p| p.1))] {
            let have = layout.get(key).and_then(|v| v.as_integer()).unwrap_or(0);
            if need > have {
                layout.insert(key, toml_edit::value(need));
            }
        }
    }
    let new_text = doc.to_string();
    StationConfig::parse(&new_text, path)?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, &new_text)
        .and_then(|()| match &before {
            Some(before) => {
                use std::os::unix::fs::MetadataExt;
                std::os::unix::fs::chown(&tmp, Some(before.uid()), Some(before.gid()))?;
                std::fs::set_permissions(&tmp, before.permissions())
            }
            None => Ok(()),
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write_error(e.to_string())
        })
}
