//! Who is asking: a server (the station's, the hub's) answers only under its
//! own names, and takes changes only from its own pages.
//!
//! On loopback without a token, any web page open in a browser on the machine
//! could otherwise act on the server: a *simple* cross-site request (a form post, or a
//! `fetch` with `Content-Type: text/plain`) needs no preflight, so the browser
//! sends it, and the server acts before anyone reads the answer. And a page on
//! a DNS name its author controls can rebind that name to 127.0.0.1 and then
//! read the API as if it were the server's own page. Two checks close both:
//!
//! - **Host** (every request): the `Host` header must be a loopback name
//!   (`localhost`, `*.localhost`), an IP address (a page can only be served
//!   from an address if it *is* that address, so no rebinding is possible), or
//!   one of the configured `allowed_hosts`. A request without `Host` (HTTP/1.0,
//!   not a browser) passes.
//! - **Origin** (every change: any method but GET, HEAD, OPTIONS): the
//!   `Origin` header, or without it the `Referer`, must name the server as the
//!   request reached it (same host and port as `Host`); `Origin: null` and
//!   `Sec-Fetch-Site: cross-site`/`same-site` are refused. A request with
//!   neither header comes from a program (curl, `flashrack run`), not from a
//!   page in a browser, which always sends `Origin` with a cross-origin change.
//!
//! Both answer 403 with the reason; neither replaces the operator token. Each
//! server wraps [`judge`] in its own middleware, with its own allowed names.

use axum::http::{header, HeaderMap, Method};

use crate::AppError;

/// The decision, on the parts of a request it needs.
pub fn judge(
    method: &Method,
    headers: &HeaderMap,
    allowed_hosts: &[String],
) -> Result<(), AppError> {
    let host = match headers.get(header::HOST) {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| AppError::forbidden("the Host header is not text"))?;
            let authority = Authority::parse(text)
                .ok_or_else(|| AppError::forbidden(format!("Host {text:?} is not a host name")))?;
            if !host_allowed(&authority.host, allowed_hosts) {
                return Err(AppError::forbidden(format!(
                    "this server does not answer to the name {:?} (see allowed_hosts in its configuration)",
                    authority.host
                )));
            }
            Some(authority)
        }
    };
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let cross = |what: String| {
        AppError::forbidden(format!(
            "a change from another site is refused ({what}); use the server's own dashboard"
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Err(cross(format!("Sec-Fetch-Site: {site}")));
        }
    }
    let (name, value) = match (headers.get(header::ORIGIN), headers.get(header::REFERER)) {
        (Some(origin), _) => ("Origin", origin),
        (None, Some(referer)) => ("Referer", referer),
        // Not a browser page: a program that chose what to send.
        (None, None) => return Ok(()),
    };
    let text = value.to_str().unwrap_or("");
    let Some(from) = origin_of(text) else {
        return Err(cross(format!("{name}: {text:?}")));
    };
    match host {
        Some(host) if from.same_as(&host) => Ok(()),
        _ => Err(cross(format!("{name}: {text}"))),
    }
}

/// Whether `host` (lower case, no port) may be asked for.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let bare = host.trim_end_matches('.');
    bare == "localhost"
        || bare.ends_with(".localhost")
        || bare
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
        || allowed.iter().any(|a| a == bare)
}

/// A host and an optional port, as in `Host` or an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authority {
    /// Lower case; an IPv6 address keeps its brackets.
    host: String,
    port: Option<u16>,
    /// The scheme, for an origin (to know its default port).
    https: bool,
}

impl Authority {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() || text.contains(['/', '@', ' ', '?', '#']) {
            return None;
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let end = rest.find(']')?;
            let host = &text[..end + 2];
            match &rest[end + 1..] {
                "" => (host, None),
                port => (host, Some(port.strip_prefix(':')?.parse().ok()?)),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port.parse().ok()?)),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Self {
            host: host.to_ascii_lowercase(),
            port,
            https: false,
        })
    }

    fn effective_port(&self, https: bool) -> u16 {
        self.port.unwrap_or(if https { 443 } else { 80 })
    }

    /// Whether this origin is the server as reached through `host`.
    fn same_as(&self, host: &Authority) -> bool {
        self.host.trim_end_matches('.') == host.host.trim_end_matches('.')
            && self.effective_port(self.https) == host.effective_port(self.https)
    }
}

/// The origin (scheme, host, port) of an `Origin` or `Referer` value; `None`
/// for `null` or anything that is not an http(s) URL.
fn origin_of(text: &str) -> Option<Authority> {
    let (https, rest) = if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut authority = Authority::parse(&rest[..end])?;
    authority.https = https;
    Some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn allowed() -> Vec<String> {
        vec!["station.lab".to_string()]
    }

    #[test]
    fn loopback_names_addresses_and_configured_names_are_answered() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:1",
            "[::1]:8080",
            "[::1]",
            "192.168.1.50",
            "10.0.0.5:8080",
            "station.lab:8080",
            "Station.Lab.",
        ] {
            assert!(
                judge(&Method::GET, &headers(&[("host", host)]), &allowed()).is_ok(),
                "{host}"
            );
        }
        assert!(judge(&Method::GET, &HeaderMap::new(), &[]).is_ok());
    }

    #[test]
    fn any_other_host_name_is_refused_whatever_the_method() {
        for host in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "station.lab.evil.example",
            "a b",
            "",
        ] {
            for method in [Method::GET, Method::POST] {
                let error = judge(&method, &headers(&[("host", host)]), &allowed()).unwrap_err();
                assert_eq!(error.status(), axum::http::StatusCode::FORBIDDEN, "{host}");
            }
        }
    }

    #[test]
    fn a_change_must_come_from_the_station_itself() {
        let ok = [
            vec![
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            vec![
                ("host", "localhost:8080"),
                ("origin", "http://localhost:8080"),
            ],
            vec![("host", "station.lab"), ("origin", "http://station.lab")],
            vec![("host", "station.lab"), ("origin", "http://station.lab:80")],
            vec![
                ("host", "station.lab:443"),
                ("origin", "https://station.lab"),
            ],
            vec![
                ("host", "127.0.0.1:8080"),
                ("referer", "http://127.0.0.1:8080/index.html?x=1"),
            ],
            vec![
                ("host", "127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin"),
            ],
            vec![("host", "127.0.0.1:8080")],
            vec![],
        ];
        for pairs in ok {
            assert!(
                judge(&Method::POST, &headers(&pairs), &allowed()).is_ok(),
                "{pairs:?}"
            );
        }
        let refused = [
            vec![
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example"),
            ],
            vec![
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:9999"),
            ],
            vec![
                ("host", "127.0.0.1:8080"),
                ("origin", "http://localhost:8080"),
            ],
            vec![("host", "127.0.0.1:8080"), ("origin", "null")],
            vec![("host", "127.0.0.1:8080"), ("origin", "file://")],
            vec![
                ("host", "127.0.0.1:8080"),
                ("referer", "http://evil.example/page"),
            ],
            vec![("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")],
            vec![("origin", "http://127.0.0.1:8080")],
        ];
        for pairs in refused {
            for method in [Method::POST, Method::DELETE, Method::PUT] {
                let error = judge(&method, &headers(&pairs), &allowed()).unwrap_err();
                assert_eq!(
                    error.status(),
                    axum::http::StatusCode::FORBIDDEN,
                    "{pairs:?}"
                );
            }
            // Reading is not a change: only the host name counts.
            if pairs.iter().any(|(n, _)| *n == "host") {
                assert!(judge(&Method::GET, &headers(&pairs), &allowed()).is_ok());
            }
        }
    }
}
