//! `flashrack status`, `flashrack run start|stop`: commands for a running
//! station, over its HTTP API (loopback by default; the operator token from
//! `--token` or `$FLASHRACK_TOKEN` when the station listens elsewhere).

use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use flashrack_core::ByteSize;
use flashrack_station::{PortState, Snapshot};
use serde_json::{json, Value};

use crate::cli::{ClientArgs, RunCommand, VerifyArg};

/// A client of one station.
pub struct Client {
    base: String,
    token: Option<String>,
}

impl Client {
    /// From the command line (`--server`, `--token`) and the environment.
    pub fn new(args: &ClientArgs) -> Self {
        let base = args
            .server
            .clone()
            .or_else(|| std::env::var("FLASHRACK_SERVER").ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: args
                .token
                .clone()
                .or_else(|| std::env::var("FLASHRACK_TOKEN").ok()),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = ureq::request(method, &format!("{}/api/v1{path}", self.base))
            .timeout(std::time::Duration::from_secs(30));
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// Sends a request and returns the JSON answer, or the server's error message.
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let request = self.request(method, path);
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match result {
            Ok(response) => {
                let text = response.into_string()?;
                Ok(if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text)? })
            }
            Err(ureq::Error::Status(code, response)) => {
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"].as_str().unwrap_or("no details");
                Err(anyhow!("the station answered {code}: {message}"))
            }
            Err(error) => Err(anyhow!(
                "cannot reach the station at {}: {error} (is `flashrack serve` running? --server URL)",
                self.base
            )),
        }
    }
}

/// `flashrack status`
pub fn status(args: &ClientArgs, json_output: bool) -> Result<ExitCode> {
    let client = Client::new(args);
    let value = client.send("GET", "/station", None)?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let snapshot: Snapshot =
        serde_json::from_value(value).context("unexpected answer from the station")?;
    print!("{}", status_table(&snapshot));
    Ok(ExitCode::SUCCESS)
}

/// The `status` table: a line per port, then the run.
pub fn status_table(snapshot: &Snapshot) -> String {
    let mut rows = vec![[
        "PORT".to_string(),
        "STATE".into(),
        "DEVICE".into(),
        "PROGRESS".into(),
        "VERDICT".into(),
    ]];
    for port in &snapshot.ports {
        let device = port.device.as_ref().map_or("-".to_string(), |d| {
            format!(
                "{} {} {} ({})",
                d.vendor.as_deref().unwrap_or(""),
                d.model.as_deref().unwrap_or(""),
                d.serial.as_deref().unwrap_or("no serial"),
                ByteSize(d.capacity)
            )
            .trim()
            .to_string()
        });
        let progress = match (&port.progress, port.state.is_busy()) {
            (Some(p), true) if p.total > 0 => format!(
                "{}% {:.1} MB/s",
                p.done * 100 / p.total,
                p.bytes_per_sec / 1e6
            ),
            _ => "-".into(),
        };
        let verdict = match (&port.verdict, &port.refusal, port.state) {
            (_, Some(refusal), PortState::Refused) => format!("refused: {refusal}"),
            (Some(verdict), _, _) => {
                let mut text = verdict.to_string();
                // A verdict always says which run (and image) it is about; one
                // of another run is not a verdict of the current one.
                if let Some(of) = &port.verdict_run {
                    text.push_str(&format!(" (run {}, {})", of.run_id, of.image_name));
                    if snapshot
                        .run
                        .as_ref()
                        .is_some_and(|run| !port.verdict_is_of(run))
                    {
                        text.push_str(" — not this run");
                    }
                }
                if port.ejected {
                    text.push_str(" (ejected)");
                }
                text
            }
            _ => "-".into(),
        };
        rows.push([
            port.label.clone(),
            format!("{:?}", port.state).to_lowercase(),
            device,
            progress,
            verdict,
        ]);
    }
    let mut out = crate::table::render(&rows);
    match &snapshot.run {
        Some(run) => out.push_str(&format!(
            "run {}: {} ({}), {} — {} passed, {} failed, {} interrupted, {} active{}\n",
            run.id,
            run.image_name,
            run.image_sha256.short(),
            if run.armed {
                "armed".to_string()
            } else {
                format!("stopped: {}", run.stop_reason.map_or("", |r| r.describe()))
            },
            run.passed,
            run.failed,
            run.interrupted,
            run.active,
            run.remaining
                .map_or(String::new(), |r| format!(", {r} to go")),
        )),
        None => out.push_str("no run armed\n"),
    }
    out
}

/// `flashrack run start|stop`
pub fn run(command: RunCommand) -> Result<ExitCode> {
    match command {
        RunCommand::Start {
            client,
            image,
            target_count,
            verify,
            no_verify,
            eject_on_pass,
        } => {
            if target_count == Some(0) {
                bail!("--target-count must be at least 1");
            }
            let verify = if no_verify { VerifyArg::None } else { verify };
            let body = json!({
                "image": image,
                "verify": match verify { VerifyArg::Compare => "compare", VerifyArg::Hash => "hash", VerifyArg::None => "none" },
                "eject_on_pass": eject_on_pass,
                "target_count": target_count,
            });
            let run = Client::new(&client).send("POST", "/runs", Some(body))?;
            println!(
                "run {} armed: {} ({})",
                run["id"],
                run["image_name"].as_str().unwrap_or("?"),
                run["image_sha256"].as_str().unwrap_or("?")
            );
        }
        RunCommand::Stop { client, reason } => {
            let body = reason.map(|r| json!({ "reason": r }));
            Client::new(&client).send("POST", "/runs/current/stop", body)?;
            println!("run stopped");
        }
    }
    Ok(ExitCode::SUCCESS)
}
