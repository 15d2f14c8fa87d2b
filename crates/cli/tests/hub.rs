//! `flashrack hub` through the real binary over a throwaway PostgreSQL
//! cluster: a station token made by `hub token add`, the hub serving a
//! batch under it, the refusal to listen beyond loopback without an operator
//! token, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use flashrack_testkit::pg::PgCluster;

fn flashrack(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .args(args)
        .output()
        .expect("flashrack runs")
}

/// A plain HTTP/1.0 request; the status code and the body.
fn http(address: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("the hub answers");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

#[test]
fn a_station_token_made_by_the_cli_lets_the_station_ship_to_the_running_hub() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{}\"\ndata_dir = \"{}\"\n",
            pg.url(),
            dir.path().join("hub").display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let made = flashrack(&["hub", "--config", config, "token", "add", "lab-a"]);
    assert!(made.status.success(), "{made:?}");
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert_eq!(token.len(), 64);
    // Revoking a station that holds no token (a typo) fails and says so (it
    // said "revoked 0 token(s)" and succeeded).
    let typo = flashrack(&["hub", "--config", config, "token", "revoke", "lab-A"]);
    assert_eq!(typo.status.code(), Some(2), "{typo:?}");
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("no station named \"lab-A\" holds a token"),
        "{typo:?}"
    );

    // Beyond loopback without an operator token: refused, status 2.
    let open = dir.path().join("open.toml");
    std::fs::write(
        &open,
        std::fs::read_to_string(config)
            .unwrap()
            .replace("127.0.0.1:", "0.0.0.0:"),
    )
    .unwrap();
    let refused = flashrack(&["hub", "--config", open.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("operator token"));

    let mut hub = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .args(["hub", "--config", config])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The hub says where it listens once it does.
    let mut line = String::new();
    BufReader::new(hub.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    let address = format!("127.0.0.1:{port}");
    let body = r#"{"protocol":1,"station_id":"lab-a","backlog":0,"entries":[{"seq":1,"at":1,"record":{"type":"event","id":1,"at":1,"kind":"device_added","port_label":"A1","device_key":"S1","run_id":null,"attempt_id":null,"detail":{}}}]}"#;
    let (status, answer) = http(
        &address,
        &format!(
            "POST /api/v1/fleet/records HTTP/1.0\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""acked_through":1"#), "{answer}");
    let (status, _) = http(
        &address,
        &format!(
            "POST /api/v1/fleet/records HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 401);

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&hub),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let exit = hub.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}
