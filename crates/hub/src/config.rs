//! The hub's configuration: `hub.toml`, read and validated once at start-up.
//!
//! ```toml
//! listen = "127.0.0.1:8090"          # beyond loopback only with an operator token
//! database_url = "postgres:///flashrack?host=/run/postgresql"
//! database_connections = 16
//! data_dir = "/var/lib/flashrack-hub" # the hub's image cache (an absolute path)
//! allowed_hosts = ["hub.lab"]         # names the hub answers to (besides addresses)
//! max_connections = 1024
//! silent_after_secs = 10              # a station not heard from that long is silent
//! ```
//!
//! Tokens are not in this file: they live hashed in the database, made with
//! `flashrack hub token add` (see [`crate::pg::tokens`]), so that every hub
//! process sharing the database accepts the same ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The shortest silence that makes a station silent: a station reports its
/// rack at least every 5 s even when nothing changes (`flashrack-app`'s
/// `fleet::live::KEEPALIVE`), so a shorter one would show quiet stations as
/// silent between two reports.
pub const MIN_SILENT_AFTER_SECS: u64 = 6;

/// The largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
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
}

/// The hub's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// Where the HTTP server listens. Beyond loopback only when the database
    /// holds an operator token.
    pub listen: SocketAddr,
    /// The PostgreSQL database (a `postgres://` URL).
    pub database_url: String,
    /// Connections to the database this process keeps at most.
    pub database_connections: u32,
    /// The hub's directory: its image cache.
    pub data_dir: PathBuf,
    /// Host names the hub answers to besides loopback names and addresses.
    pub allowed_hosts: Vec<String>,
    /// HTTP connections served at once.
    pub max_connections: usize,
    /// A station not heard from for this long is shown silent.
    pub silent_after: Duration,
}

impl HubConfig {
    /// A configuration for `database_url` with every other value at its
    /// default (loopback, port 8090).
    pub fn new(database_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            database_url: database_url.into(),
            database_connections: 16,
            data_dir: data_dir.into(),
            allowed_hosts: Vec::new(),
            max_connections: 1024,
            silent_after: Duration::from_secs(10),
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 1,
                reason: format!("the file is {size} bytes, more than a configuration holds"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text, path)
    }

    /// Validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |offset: usize, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: text[..offset.min(text.len())].matches('\n').count() + 1,
            reason,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let message = e.message().trim();
            // The parser's words name the type it expected, not the field
            // ("invalid type: string \"many\", expected u32"): the field is
            // the key of the line the error is on, when it does not name it.
            let reason = match key_of_line(text, at) {
                Some(key) if !message.contains(&format!("`{key}`")) => {
                    format!("{key}: {message}")
                }
                _ => message.to_string(),
            };
            invalid(at, reason)
        })?;
        let mut config = Self::new(String::new(), "/var/lib/flashrack-hub");
        match raw.database_url {
            Some(url) => {
                let value = url.get_ref().trim();
                if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
                    return Err(invalid(
                        url.span().start,
                        "database_url must be a postgres:// URL".to_string(),
                    ));
                }
                config.database_url = value.to_string();
            }
            None => return Err(invalid(0, "database_url is missing".to_string())),
        }
        if let Some(listen) = raw.listen {
            config.listen = listen.get_ref().parse().map_err(|_| {
                invalid(
                    listen.span().start,
                    format!(
                        "listen {:?} is not an address and port (like 127.0.0.1:8090)",
                        listen.get_ref()
                    ),
                )
            })?;
        }
        if let Some(n) = raw.database_connections {
            if !(1..=1000).contains(n.get_ref()) {
                return Err(invalid(
                    n.span().start,
                    "database_connections must be 1 to 1000".to_string(),
                ));
            }
            config.database_connections = *n.get_ref();
        }
        if let Some(dir) = raw.data_dir {
            // The hub's image cache: an absolute path, never one that depends
            // on the directory the hub happens to start in ("" is the current
            // directory: `/` under systemd), as the station's `data_dir`.
            if !dir.get_ref().is_absolute() {
                return Err(invalid(
                    dir.span().start,
                    format!(
                        "data_dir {:?} is not an absolute path (like \"/var/lib/flashrack-hub\")",
                        dir.get_ref()
                    ),
                ));
            }
            config.data_dir = dir.into_inner();
        }
        if let Some(hosts) = raw.allowed_hosts {
            config.allowed_hosts = hosts
                .get_ref()
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect();
            if config.allowed_hosts.iter().any(String::is_empty) {
                return Err(invalid(
                    hosts.span().start,
                    "allowed_hosts holds an empty name".to_string(),
                ));
            }
        }
        if let Some(n) = raw.max_connections {
            if *n.get_ref() == 0 {
                return Err(invalid(
                    n.span().start,
                    "max_connections must be at least 1".to_string(),
                ));
            }
            config.max_connections = *n.get_ref();
        }
        if let Some(secs) = raw.silent_after_secs {
            if !(MIN_SILENT_AFTER_SECS..=3600).contains(secs.get_ref()) {
                return Err(invalid(
                    secs.span().start,
                    format!(
                        "silent_after_secs must be {MIN_SILENT_AFTER_SECS} to 3600 (a station \
                         with nothing new reports every 5 s: a shorter silence would show \
                         quiet stations as silent)"
                    ),
                ));
            }
            config.silent_after = Duration::from_secs(*secs.get_ref());
        }
        Ok(config)
    }
}

/// The key of the `key = value` line that holds byte `offset` of `text`.
fn key_of_line(text: &str, offset: usize) -> Option<&str> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    (!key.is_empty() && !key.starts_with('#')).then_some(key)
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<toml::Spanned<String>>,
    database_url: Option<toml::Spanned<String>>,
    database_connections: Option<toml::Spanned<u32>>,
    data_dir: Option<toml::Spanned<PathBuf>>,
    allowed_hosts: Option<toml::Spanned<Vec<String>>>,
    max_connections: Option<toml::Spanned<usize>>,
    silent_after_secs: Option<toml::Spanned<u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HubConfig, ConfigError> {
        HubConfig::parse(text, Path::new("hub.toml"))
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../config/hub.toml");
        let config = parse(text).unwrap();
        assert!(config.listen.ip().is_loopback());
        assert!(config.database_url.starts_with("postgres"));
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let config = parse("database_url = \"postgres://h/db\"\n").unwrap();
        assert_eq!(
            config,
            HubConfig::new("postgres://h/db", "/var/lib/flashrack-hub")
        );
    }

    #[test]
    fn a_bad_value_is_named_with_its_line() {
        let error = parse("database_url = \"postgres://h/db\"\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("hub.toml:2:"), "{error}");
        let error = parse("database_url = \"postgres://h/db\"\n\ntokens = []\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("hub.toml:3:"), "{error}");
        let error = parse("listen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(error.contains("database_url is missing"), "{error}");
        let error = parse("database_url = \"mysql://h/db\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("postgres://"), "{error}");
    }

    #[test]
    fn a_value_the_parser_refuses_is_named_by_its_field_and_line() {
        for (line, field) in [
            (
                "database_connections = \"many\"",
                "database_connections: invalid type",
            ),
            ("max_connections = -5", "max_connections: invalid value"),
            ("allowed_hosts = \"hub.lab\"", "allowed_hosts: invalid type"),
            ("silent_after_secs = 1e3", "silent_after_secs: invalid type"),
            (
                "database_url = \"postgres://x/db\"",
                "database_url: duplicate key",
            ),
        ] {
            let error = parse(&format!("database_url = \"postgres://h/db\"\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("hub.toml:2: {field}")),
                "{line}: {error}"
            );
        }
        // A message that names its field already is left as it is.
        let error = parse("database_url = \"postgres://h/db\"\ntokenz = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("hub.toml:2: unknown field `tokenz`"),
            "{error}"
        );
    }

    #[test]
    fn a_data_dir_that_is_not_an_absolute_path_is_refused_at_its_line() {
        for (value, words) in [
            ("", "data_dir \"\" is not an absolute path"),
            ("var/lib/flashrack-hub", "not an absolute path"),
            ("./hub", "not an absolute path"),
        ] {
            let error = parse(&format!(
                "database_url = \"postgres://h/db\"\ndata_dir = \"{value}\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(error.starts_with("hub.toml:2:"), "{value:?}: {error}");
            assert!(error.contains(words), "{value:?}: {error}");
        }
        let config =
            parse("database_url = \"postgres://h/db\"\ndata_dir = \"/srv/hub\"\n").unwrap();
        assert_eq!(config.data_dir, Path::new("/srv/hub"));
    }

    #[test]
    fn a_silence_shorter_than_a_quiet_stations_report_interval_is_refused() {
        let error = parse("database_url = \"postgres://h/db\"\nsilent_after_secs = 3\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("hub.toml:2:"), "{error}");
        assert!(error.contains("every 5 s"), "{error}");
        let config = parse("database_url = \"postgres://h/db\"\nsilent_after_secs = 6\n").unwrap();
        assert_eq!(config.silent_after, Duration::from_secs(6));
    }
}
