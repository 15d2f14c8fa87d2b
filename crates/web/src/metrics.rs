//! `GET /metrics`: Prometheus text format.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use flashrack_station::PortState;

use crate::WebState;

const STATES: [(PortState, &str); 13] = [
    (PortState::Empty, "empty"),
    (PortState::Detected, "detected"),
    (PortState::Master, "master"),
    (PortState::Capturing, "capturing"),
    (PortState::Refused, "refused"),
    (PortState::Waiting, "waiting"),
    (PortState::Preparing, "preparing"),
    (PortState::Writing, "writing"),
    (PortState::Flushing, "flushing"),
    (PortState::Resetting, "resetting"),
    (PortState::Verifying, "verifying"),
    (PortState::Passed, "passed"),
    (PortState::Failed, "failed"),
];

/// The handler.
pub async fn metrics(State(state): State<WebState>) -> impl IntoResponse {
    let snapshot = state.station.snapshot();
    let mut out = String::new();
    let station = &snapshot.station_id;
    let _ = writeln!(out, "# HELP flashrack_ports Ports by state.");
    let _ = writeln!(out, "# TYPE flashrack_ports gauge");
    for (port_state, name) in STATES {
        let count = snapshot
            .ports
            .iter()
            .filter(|p| p.state == port_state)
            .count();
        let _ = writeln!(
            out,
            "flashrack_ports{{station=\"{station}\",state=\"{name}\"}} {count}"
        );
    }
    let run = snapshot.run.as_ref();
    let metrics = [
        (
            "flashrack_run_passed",
            "Sticks that passed in the current run.",
            "counter",
            run.map_or(0, |r| u64::from(r.passed)),
        ),
        (
            "flashrack_run_failed",
            "Sticks that failed in the current run (interrupted attempts and refusals not included).",
            "counter",
            run.map_or(0, |r| u64::from(r.failed)),
        ),
        (
            "flashrack_run_interrupted",
            "Attempts of the current run interrupted by a stop, a shutdown or a source failure.",
            "counter",
            run.map_or(0, |r| u64::from(r.interrupted)),
        ),
        (
            "flashrack_run_refused",
            "Sticks the target guard refused in the current run (nothing written; not failures).",
            "counter",
            run.map_or(0, |r| u64::from(r.refused)),
        ),
        (
            "flashrack_run_active",
            "Attempts running now.",
            "gauge",
            run.map_or(0, |r| u64::from(r.active)),
        ),
        (
            "flashrack_run_bytes_written",
            "Bytes written to sticks in the current run.",
            "counter",
            run.map_or(0, |r| r.bytes_written),
        ),
        (
            "flashrack_run_armed",
            "Whether a run is armed.",
            "gauge",
            u64::from(run.is_some_and(|r| r.armed)),
        ),
    ];
    for (name, help, kind, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{station=\"{station}\"}} {value}");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
