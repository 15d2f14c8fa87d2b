//! The fleet through the real binaries: a throwaway PostgreSQL cluster, the
//! `flashrack hub` process and stations as `flashrack demo --config`
//! processes (simulated racks, SQLite files, `[fleet]` sections with tokens
//! made by `flashrack hub token add`). Processes are killed with SIGKILL
//! where a test says so, and restarted on the same data. Every wait is for a
//! condition read from the APIs or the files, with a generous deadline.

mod support;

use std::time::Duration;

use flashrack_core::{AttemptState, StopReason};
use flashrack_testkit::pg::PgCluster;
use serde_json::{json, Value};
use support::{until, Hub, Relay, Station};

const MIB: u64 = 1 << 20;

/// Whether a port is in the middle of an attempt.
fn busy(state: &str) -> bool {
    matches!(
        state,
        "preparing" | "resetting" | "writing" | "flushing" | "verifying"
    )
}

fn port_states(station: &support::Process) -> Result<Vec<String>, String> {
    let ports = station.try_get("/api/v1/ports")?;
    Ok(ports
        .as_array()
        .ok_or("no ports")?
        .iter()
        .map(|p| p["state"].as_str().unwrap_or("?").to_string())
        .collect())
}

/// How many ports hold a stick whose attempt the station's records hold:
/// busy, and not still `preparing` while the records take the attempt's start
/// (a port shows its stick at once, and nothing is written to it, nor is its
/// attempt in the records, before they hold that start).
fn recorded_busy_ports(station: &support::Process) -> Result<usize, String> {
    let ports = station.try_get("/api/v1/ports")?;
    let ports = ports.as_array().ok_or("no ports")?;
    Ok(ports
        .iter()
        .filter(|p| {
            let state = p["state"].as_str().unwrap_or("?");
            let recording = p["recording"].as_bool().unwrap_or(false);
            busy(state) && !(state == "preparing" && recording) && !p["attempt_id"].is_null()
        })
        .count())
}

fn station_view<'v>(views: &'v Value, name: &str) -> Option<&'v Value> {
    views.as_array()?.iter().find(|v| v["id"] == name)
}

#[test]
fn three_stations_records_reach_the_hub_exactly_through_a_hub_crash_and_a_station_crash() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new(dir.path(), &pg.url());
    let hub_url = format!("http://127.0.0.1:{}", hub.port);
    // Four sticks a station, all at once, slow enough (16 MiB at 1 MB/s)
    // that a burst is still writing when the hub and a station are killed.
    let burst = [
        "--ports",
        "4",
        "--burst",
        "4",
        "--image-size",
        "16MiB",
        "--write-speed",
        "1MB",
        "--read-speed",
        "8MB",
    ];
    let names = ["lab-a", "lab-b", "lab-c"];
    let stations: Vec<Station> = names
        .iter()
        .map(|name| {
            let token = hub.token_file(name);
            Station::new(dir.path(), name, &hub_url, &token, &burst)
        })
        .collect();
    let mut hub_process = Some(hub.start());
    let mut running: Vec<support::Process> = stations.iter().map(Station::start).collect();

    // Every station ships to the hub while its sticks are written.
    until("every station's first records at the hub", || {
        let views = hub_process.as_ref().unwrap().try_get("/api/v1/stations")?;
        for name in names {
            let acked =
                station_view(&views, name).map_or(0, |v| v["acked_through"].as_u64().unwrap_or(0));
            if acked == 0 {
                return Err(format!("{name}: nothing acknowledged yet: {views}"));
            }
        }
        Ok(())
    });
    for (station, process) in stations.iter().zip(&running) {
        // All four: lab-c's first run is checked at the hub for its four
        // attempts, so each must have begun before the kill (under load the
        // burst's sticks start one after another), its start in the records:
        // a port shows its stick as preparing while the records take that
        // start, and a kill then leaves no attempt, rightly.
        until(
            &format!("{}'s four sticks being written", station.name),
            || {
                let recorded = recorded_busy_ports(process)?;
                (recorded == 4).then_some(()).ok_or(format!(
                    "{recorded} of 4 recorded: {:?}",
                    port_states(process)?
                ))
            },
        );
    }

    // kill -9 a station mid-write; it comes back on the same data.
    let lab_c = &stations[2];
    let in_flight = port_states(&running[2])
        .unwrap()
        .iter()
        .filter(|s| busy(s))
        .count();
    running.remove(2).kill();
    running.push(lab_c.start());
    until("lab-c writing again after its restart", || {
        let states = port_states(&running[2])?;
        states
            .iter()
            .any(|s| busy(s))
            .then_some(())
            .ok_or(format!("{states:?}"))
    });

    // kill -9 the hub while every station is mid-run.
    let backlog_at_kill: Vec<u64> = running
        .iter()
        .map(|p| p.get("/api/v1/fleet")["backlog"].as_u64().unwrap())
        .collect();
    hub_process.take().unwrap().kill();
    for (station, process) in stations.iter().zip(&running) {
        let states = port_states(process).unwrap();
        assert!(
            states.iter().any(|s| busy(s)),
            "{} is not mid-run when the hub goes: {states:?}",
            station.name
        );
    }

    // The stations go on: every burst ends with its verdicts, recorded and
    // queued while the hub is away.
    let mut backlog_while_away = Vec::new();
    for (station, process) in stations.iter().zip(&running) {
        let fleet = until(
            &format!("{}'s burst over with the hub away", station.name),
            || {
                let states = port_states(process)?;
                if !states.iter().all(|s| s == "passed") {
                    return Err(format!("{states:?}"));
                }
                let fleet = process.try_get("/api/v1/fleet")?;
                (fleet["connected"] == false && fleet["backlog"].as_u64() > Some(0))
                    .then_some(fleet.clone())
                    .ok_or(fleet.to_string())
            },
        );
        backlog_while_away.push(fleet["backlog"].as_u64().unwrap());
    }

    // The hub is back on the same address: the backlogs drain.
    let hub_process = hub.start();
    let mut evidence = Vec::new();
    for (i, (station, process)) in stations.iter().zip(&running).enumerate() {
        until(&format!("{}'s backlog drained", station.name), || {
            let fleet = process.try_get("/api/v1/fleet")?;
            (fleet["connected"] == true && fleet["backlog"] == 0)
                .then_some(())
                .ok_or(fleet.to_string())
        });
        // The station is idle (its burst is over): what it holds now is
        // final, and the hub holds exactly that, nothing doubled.
        let (ours, last_seq) = station.records();
        let (theirs, acked) = hub.records(&station.name);
        assert_eq!(
            acked, last_seq,
            "{}: the hub acknowledged every entry",
            station.name
        );
        assert_eq!(
            theirs.counts(),
            ours.counts(),
            "{}: counts per kind",
            station.name
        );
        assert_eq!(
            theirs, ours,
            "{}: the hub's rows are the station's",
            station.name
        );
        // The hub's view follows (it hears the backlog with the next batch
        // or live report).
        until(&format!("{} connected at the hub", station.name), || {
            let views = hub_process.try_get("/api/v1/stations")?;
            let view = station_view(&views, &station.name).ok_or(views.to_string())?;
            (view["status"] == "connected" && view["backlog"] == 0)
                .then_some(())
                .ok_or(view.to_string())
        });
        evidence.push(format!(
            "{}: backlog {} at the hub's kill, {} while it was away, 0 after; \
             images, devices, runs, attempts, refusals, events = {:?}; last seq {last_seq}",
            station.name,
            backlog_at_kill[i],
            backlog_while_away[i],
            ours.counts()
        ));
    }

    // lab-c's interrupted attempts reached the hub, under its first run,
    // which the crash ended.
    let (at_hub, _) = hub.records("lab-c");
    assert_eq!(at_hub.runs.len(), 2, "{:?}", at_hub.runs);
    let first = &at_hub.runs[0];
    assert_eq!(
        first.stop_reason,
        Some(StopReason::Interrupted),
        "{first:?}"
    );
    let interrupted = at_hub
        .attempts
        .iter()
        .filter(|a| a.run_id == first.id && a.state == AttemptState::Interrupted)
        .count();
    assert!(interrupted >= 1, "{:?}", at_hub.attempts);
    assert_eq!(
        interrupted
            + at_hub
                .attempts
                .iter()
                .filter(|a| a.run_id == first.id && a.state != AttemptState::Interrupted)
                .count(),
        4
    );
    evidence.push(format!(
        "lab-c: {in_flight} ports busy when killed; {interrupted} interrupted attempts at the hub"
    ));
    eprintln!("{}", evidence.join("\n"));
    for process in running {
        process.stop();
    }
}

/// 8 MiB that no demo makes: the order's image, which the station lacks.
fn order_image(seed: u64, size: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut bytes = Vec::with_capacity(size as usize);
    while (bytes.len() as u64) < size {
        // xorshift64: deterministic, incompressible enough.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(size as usize);
    bytes
}

fn upload(hub: &support::Process, name: &str, bytes: &[u8]) -> String {
    let answer: Value = ureq::post(&hub.url(&format!("/api/v1/images?name={name}")))
        .timeout(Duration::from_secs(120))
        .send_bytes(bytes)
        .unwrap()
        .into_json()
        .unwrap();
    answer["sha256"].as_str().unwrap().to_string()
}

/// Arms a lot of `sha256` on `station` at the hub; its id and its order's.
fn arm_lot(hub: &support::Process, name: &str, sha256: &str, station: &str) -> (i64, i64) {
    let (status, body) = hub.post(
        "/api/v1/lots",
        Some(json!({
            "name": name,
            "image_sha256": sha256,
            "options": { "verify": "hash", "target_count": 500 },
            "stations": [station],
        })),
    );
    assert_eq!(status, 200, "{body}");
    let lot: Value = serde_json::from_str(&body).unwrap();
    (
        lot["id"].as_i64().unwrap(),
        lot["orders"][0]["order_id"].as_i64().unwrap(),
    )
}

/// The hub's view of lot `id`'s one order.
fn hub_order(hub: &support::Process, id: i64) -> Result<Value, String> {
    let lots = hub.try_get("/api/v1/lots")?;
    lots.as_array()
        .and_then(|l| l.iter().find(|l| l["id"] == id))
        .map(|l| l["orders"][0].clone())
        .ok_or(format!("no lot {id}: {lots}"))
}

/// The station's runs armed under `order`.
fn runs_of_order(station: &support::Process, order: i64) -> Vec<Value> {
    station
        .get("/api/v1/runs")
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["options"]["order_id"] == order)
        .cloned()
        .collect()
}

/// Waits until the station reports order `order` in `state`; panics when it
/// reports it in a state that is neither that nor one of `on_the_way` (a
/// stopped order shown `armed` after a restart, say).
fn until_order_state(
    station: &support::Process,
    order: i64,
    state: &str,
    on_the_way: &[&str],
) -> Value {
    until(&format!("order {order} {state} at the station"), || {
        let fleet = station.try_get("/api/v1/fleet")?;
        let progress = &fleet["order"];
        if progress["order_id"] != order {
            return Err(fleet.to_string());
        }
        let now = progress["state"].as_str().unwrap_or("");
        if now == state {
            return Ok(fleet.clone());
        }
        assert!(
            on_the_way.contains(&now),
            "order {order} is {now}, not {state}: {fleet}"
        );
        Err(fleet.to_string())
    })
}

#[test]
fn a_station_armed_by_the_hub_fetches_its_image_through_two_cuts_and_never_rearms_a_stopped_order()
{
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new(dir.path(), &pg.url());
    let token = hub.token_file("lab-x");
    let mut hub_process = hub.start();
    // The station reaches the hub through a relay that holds the first image
    // answer after 2 MiB and the second after 3 MiB more.
    let relay = Relay::start(
        format!("127.0.0.1:{}", hub.port).parse().unwrap(),
        &[Some(2 * MIB), Some(3 * MIB)],
    );
    let station = Station::new(
        dir.path(),
        "lab-x",
        &format!("http://{}", relay.address),
        &token,
        &[
            "--no-arm",
            "--ports",
            "4",
            "--image-size",
            "4MiB",
            "--seed",
            "7",
        ],
    );
    let mut process = station.start();

    // The operator arms a run at the hub with an image the station lacks.
    let size = 8 * MIB;
    let image = order_image(12, size);
    let sha = upload(&hub_process, "order.img", &image);
    let (lot, order) = arm_lot(&hub_process, "lot-1", &sha, "lab-x");
    let partial = station
        .data_dir
        .join("fleet/images")
        .join(format!("{sha}.part"));
    let partial_len = || std::fs::metadata(&partial).map_or(0, |m| m.len());

    // Cut 1: the transfer stalls at 2 MiB and the hub dies (kill -9).
    relay.until_held();
    until("2 MiB in the partial file", || {
        (partial_len() == 2 * MIB)
            .then_some(())
            .ok_or(partial_len().to_string())
    });
    until("the hub showing the fetch", || {
        let o = hub_order(&hub_process, lot)?;
        (o["armed"] == true && o["progress"]["state"] == "fetching")
            .then_some(())
            .ok_or(o.to_string())
    });
    hub_process.kill();
    relay.cut_held();
    hub_process = hub.start();

    // Cut 2: resumed from 2 MiB, it stalls at 5 MiB and the station dies.
    relay.until_held();
    until("5 MiB in the partial file", || {
        (partial_len() == 5 * MIB)
            .then_some(())
            .ok_or(partial_len().to_string())
    });
    process.kill();
    relay.cut_held();
    process = station.start();

    // Resumed from 5 MiB, verified, imported, armed.
    let fleet = until_order_state(&process, order, "armed", &["fetching"]);
    let exchanges = relay.answered();
    eprintln!("image requests: {exchanges:#?}");
    assert_eq!(exchanges.len(), 3, "{exchanges:?}");
    assert_eq!(exchanges[0].range, None);
    assert_eq!(exchanges[0].passed, 2 * MIB);
    assert_eq!(exchanges[1].range.as_deref(), Some("bytes=2097152-"));
    assert_eq!(exchanges[1].status, 206);
    assert_eq!(
        exchanges[1].content_range.as_deref(),
        Some("bytes 2097152-8388607/8388608")
    );
    assert_eq!(exchanges[1].passed, 3 * MIB);
    assert_eq!(exchanges[2].range.as_deref(), Some("bytes=5242880-"));
    assert_eq!(exchanges[2].status, 206);
    assert_eq!(exchanges[2].passed, 3 * MIB, "only the rest was asked for");
    assert!(
        !partial.exists(),
        "the partial file became the cached image"
    );
    let run = process.get("/api/v1/runs/current");
    assert_eq!(run["armed"], true, "{run}");
    assert_eq!(run["image_sha256"], sha.as_str());
    assert_eq!(run["options"]["order_id"], order);
    assert_eq!(run["options"]["verify"], "hash");
    assert_eq!(run["options"]["target_count"], 500);
    eprintln!("armed by the hub: {fleet}");

    // The hub shows desired against actual: armed and armed, with the run.
    let run_id = run["id"].as_i64().unwrap();
    until("the hub showing the armed run", || {
        let o = hub_order(&hub_process, lot)?;
        (o["armed"] == true && o["progress"]["state"] == "armed" && o["run_id"] == run_id)
            .then_some(())
            .ok_or(o.to_string())
    });
    // Sticks are written under the order.
    until("a pass under the hub's run", || {
        let run = process.try_get("/api/v1/runs/current")?;
        (run["passed"].as_u64() > Some(0))
            .then_some(())
            .ok_or(run.to_string())
    });

    // Stopped from the hub.
    let (status, body) = hub_process.post(&format!("/api/v1/lots/{lot}/stop"), None);
    assert_eq!(status, 200, "{body}");
    until_order_state(&process, order, "stopped", &["armed"]);
    let run = process.get("/api/v1/runs/current");
    assert_eq!(run["armed"], false, "{run}");
    assert_eq!(run["stop_reason"], "operator", "{run}");
    until("the hub showing the stop", || {
        let o = hub_order(&hub_process, lot)?;
        (o["armed"] == false && o["run_stopped"] == true)
            .then_some(())
            .ok_or(o.to_string())
    });

    // A second lot of the same image: armed from the cache (no fetch), then
    // stopped by the station's own operator.
    let (lot2, order2) = arm_lot(&hub_process, "lot-2", &sha, "lab-x");
    until_order_state(&process, order2, "armed", &["stopped"]);
    assert_eq!(
        relay.answered().len(),
        3,
        "the cached image is not fetched again"
    );
    let (status, body) = process.post("/api/v1/runs/current/stop", None);
    assert_eq!(status, 204, "{body}");
    until_order_state(&process, order2, "stopped", &["armed"]);
    until("the hub showing desired armed, actual stopped", || {
        let o = hub_order(&hub_process, lot2)?;
        (o["armed"] == true && o["progress"]["state"] == "stopped" && o["run_stopped"] == true)
            .then_some(())
            .ok_or(o.to_string())
    });

    // The station restarts (kill -9): the order the hub still wants armed was
    // stopped here, and stays stopped; the hub-stopped lot stays stopped.
    process.kill();
    process = station.start();
    until_order_state(&process, order2, "stopped", &[]);
    assert_eq!(runs_of_order(&process, order).len(), 1);
    assert_eq!(runs_of_order(&process, order2).len(), 1);
    assert!(
        process.try_get("/api/v1/runs/current").is_err()
            || process.get("/api/v1/runs/current")["armed"] == false
    );

    // An armed order survives a restart: armed again once, as one new run.
    let (lot3, order3) = arm_lot(&hub_process, "lot-3", &sha, "lab-x");
    until_order_state(&process, order3, "armed", &["stopped"]);
    let before = process.get("/api/v1/runs/current")["id"].as_i64().unwrap();
    process.kill();
    process = station.start();
    until_order_state(&process, order3, "armed", &[]);
    let runs = runs_of_order(&process, order3);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let armed: Vec<&Value> = runs.iter().filter(|r| r["stopped_at"].is_null()).collect();
    assert_eq!(armed.len(), 1, "one run armed under the order: {runs:?}");
    assert_ne!(armed[0]["id"], before);
    let interrupted = runs.iter().find(|r| r["id"] == before).unwrap();
    assert_eq!(interrupted["stop_reason"], "interrupted", "{interrupted}");
    until("the hub showing lot 3's new run", || {
        let o = hub_order(&hub_process, lot3)?;
        (o["progress"]["state"] == "armed" && o["run_id"] == armed[0]["id"])
            .then_some(())
            .ok_or(o.to_string())
    });
    // The lots the station had stopped were not armed again meanwhile.
    assert_eq!(runs_of_order(&process, order).len(), 1);
    assert_eq!(runs_of_order(&process, order2).len(), 1);
    process.stop();
}

#[test]
fn a_station_never_arms_an_image_whose_bytes_do_not_match_the_orders_digest() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new(dir.path(), &pg.url());
    let token = hub.token_file("lab-y");
    let hub_process = hub.start();
    let station = Station::new(
        dir.path(),
        "lab-y",
        &format!("http://127.0.0.1:{}", hub.port),
        &token,
        &["--no-arm", "--ports", "2", "--image-size", "4MiB"],
    );
    let process = station.start();

    // The hub's cached copy rots after its upload: one byte changes.
    let image = order_image(99, 4 * MIB);
    let sha = upload(&hub_process, "rotten.img", &image);
    let cached = hub.data_dir.join("cache/images").join(format!("{sha}.img"));
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes[3 * MIB as usize] ^= 0x20;
    std::fs::write(&cached, &bytes).unwrap();

    let (lot, order) = arm_lot(&hub_process, "lot-rotten", &sha, "lab-y");
    let fleet = until_order_state(&process, order, "failed", &["fetching"]);
    let detail = fleet["order"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("the fetched bytes have sha256") && detail.contains(&sha),
        "{detail}"
    );
    until("the hub showing desired armed, actual failed", || {
        let o = hub_order(&hub_process, lot)?;
        (o["armed"] == true && o["progress"]["state"] == "failed" && o["run_id"].is_null())
            .then_some(())
            .ok_or(o.to_string())
    });
    // Nothing armed, nothing cached, nothing left of the transfer.
    assert!(runs_of_order(&process, order).is_empty());
    let images = process.get("/api/v1/images");
    assert!(
        !images.to_string().contains(&sha),
        "the wrong bytes entered the cache: {images}"
    );
    assert!(!station
        .data_dir
        .join("fleet/images")
        .join(format!("{sha}.part"))
        .exists());
    process.stop();
}

#[test]
fn a_damaged_partial_image_is_fetched_afresh_and_only_the_verified_image_is_armed() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new(dir.path(), &pg.url());
    let token = hub.token_file("lab-z");
    let hub_process = hub.start();
    let relay = Relay::start(
        format!("127.0.0.1:{}", hub.port).parse().unwrap(),
        &[Some(2 * MIB)],
    );
    let station = Station::new(
        dir.path(),
        "lab-z",
        &format!("http://{}", relay.address),
        &token,
        &["--no-arm", "--ports", "2", "--image-size", "4MiB"],
    );
    let mut process = station.start();
    let size = 8 * MIB;
    let sha = upload(&hub_process, "order.img", &order_image(5, size));
    let (_, order) = arm_lot(&hub_process, "lot-z", &sha, "lab-z");
    let partial = station
        .data_dir
        .join("fleet/images")
        .join(format!("{sha}.part"));

    // The transfer stalls at 2 MiB; the station dies, and a byte of what it
    // kept is damaged while it is down.
    relay.until_held();
    until("2 MiB in the partial file", || {
        let len = std::fs::metadata(&partial).map_or(0, |m| m.len());
        (len == 2 * MIB).then_some(()).ok_or(len.to_string())
    });
    process.kill();
    relay.cut_held();
    let mut kept = std::fs::read(&partial).unwrap();
    kept[MIB as usize] ^= 0x01;
    std::fs::write(&partial, &kept).unwrap();

    // Resumed, the whole does not match: fetched afresh, then armed.
    process = station.start();
    until_order_state(&process, order, "armed", &["fetching"]);
    let exchanges = relay.answered();
    eprintln!("image requests: {exchanges:#?}");
    assert_eq!(exchanges.len(), 3, "{exchanges:?}");
    assert_eq!(exchanges[1].range.as_deref(), Some("bytes=2097152-"));
    assert_eq!(exchanges[1].passed, size - 2 * MIB);
    assert_eq!(exchanges[2].range, None, "the second try starts afresh");
    assert_eq!(exchanges[2].passed, size);
    let run = process.get("/api/v1/runs/current");
    assert_eq!(run["image_sha256"], sha.as_str());
    assert_eq!(run["armed"], true);
    let images = process.get("/api/v1/images");
    let cached: Vec<&Value> = images
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.to_string().contains(&sha))
        .collect();
    assert_eq!(cached.len(), 1, "{images}");
    process.stop();
}
