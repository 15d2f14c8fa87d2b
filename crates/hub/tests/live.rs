//! Live racks through the hub: stations' reports, the operators' stream,
//! LISTEN/NOTIFY between hub processes, a listener that reconnects, and the
//! stations' status. Real PostgreSQL, real HTTP on loopback.

mod common;

use common::*;
use flashrack_fleet::{paths, Orders};
use flashrack_hub::pg::Role;
use flashrack_hub::testing::spawn_hub;
use flashrack_testkit::pg::PgCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_report_reaches_the_operators_stream_and_is_answered_with_orders() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let mut stream = EventStream::open(hub.url("/api/v1/events")).await;
    stream
        .wait_for("snapshot", |s| s["stations"].as_array().unwrap().is_empty())
        .await;

    let answer = post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &live_report("lab-a", 0, "writing"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let orders: Orders = serde_json::from_value(answer.body).unwrap();
    assert_eq!(
        orders,
        Orders {
            version: 0,
            run: None
        }
    );
    let view = stream.wait_for("station", |v| v["id"] == "lab-a").await;
    assert_eq!(view["snapshot"]["ports"][0]["state"], "writing");
    assert_eq!(view["status"], "connected");
    assert_eq!(view["live_version"], 1);
    // The next report replaces it.
    post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &live_report("lab-a", 0, "passed"),
    )
    .await;
    let view = stream.wait_for("station", |v| v["id"] == "lab-a").await;
    assert_eq!(view["snapshot"]["ports"][0]["state"], "passed");
    assert_eq!(view["live_version"], 2);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_hub_process_takes_reaches_the_streams_of_another() {
    let pg = PgCluster::start();
    let one = spawn_hub(&pg.url()).await;
    let two = spawn_hub(&pg.url()).await;
    let token = one.db.add_token(Role::Station, "lab-a").await.unwrap();
    let mut stream = EventStream::open(two.url("/api/v1/events")).await;
    stream.wait_for("snapshot", |_| true).await;
    post_json(
        one.url(paths::LIVE),
        Some(&token),
        &live_report("lab-a", 0, "writing"),
    )
    .await;
    let view = stream.wait_for("station", |v| v["id"] == "lab-a").await;
    assert_eq!(view["snapshot"]["ports"][0]["state"], "writing");
    // Records too: the station's counters move on the other process.
    let sent = batch(
        "lab-a",
        entries(
            1,
            vec![
                run(1, None),
                attempt(1, "S1", 1 << 30, Some(flashrack_core::Verdict::Pass)),
            ],
        ),
        0,
    );
    assert_eq!(
        post_json(one.url(paths::RECORDS), Some(&token), &sent)
            .await
            .status,
        200
    );
    let view = stream
        .wait_for("station", |v| {
            v["id"] == "lab-a" && v["counts"]["passed"] == 1
        })
        .await;
    assert_eq!(view["acked_through"], 2);
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_listener_reconnects_the_hub_re_reads_what_it_may_have_missed() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let mut stream = EventStream::open(hub.url("/api/v1/events")).await;
    stream.wait_for("snapshot", |_| true).await;
    post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &live_report("lab-a", 0, "writing"),
    )
    .await;
    stream.wait_for("station", |v| v["id"] == "lab-a").await;

    // A change whose notice this process never hears (as if sent while its
    // listener was disconnected) …
    sqlx::query("UPDATE live SET backlog = 42, version = version + 1 WHERE station_id = 'lab-a'")
        .execute(hub.db.pool())
        .await
        .unwrap();
    // … then the listener's connection is cut.
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(hub.db.pool())
    .await
    .unwrap();
    assert_eq!(cut, vec![true], "one listener connection");
    // Listening again, the hub re-reads every station and sends them.
    let snapshot = stream
        .wait_for("snapshot", |s| {
            station(&s["stations"], "lab-a").is_some_and(|v| v["backlog"] == 42)
        })
        .await;
    assert_eq!(
        station(&snapshot["stations"], "lab-a").unwrap()["status"],
        "behind"
    );
    // And it hears notices again.
    post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &live_report("lab-a", 0, "passed"),
    )
    .await;
    stream
        .wait_for("station", |v| {
            v["snapshot"]["ports"][0]["state"] == "passed"
        })
        .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_shows_behind_with_its_backlog_and_silent_once_not_heard_from() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &live_report("lab-a", 5, "writing"),
    )
    .await;
    let views = get(hub.url("/api/v1/stations"), None).await;
    assert_eq!(views.status, 200);
    let view = station(&views.body, "lab-a").unwrap();
    assert_eq!(view["status"], "behind");
    assert_eq!(view["backlog"], 5);
    // A batch that leaves nothing behind.
    let sent = batch("lab-a", entries(1, vec![event(1, "device_added")]), 0);
    post_json(hub.url(paths::RECORDS), Some(&token), &sent).await;
    let views = get(hub.url("/api/v1/stations"), None).await;
    assert_eq!(
        station(&views.body, "lab-a").unwrap()["status"],
        "connected"
    );
    // Not heard from for an hour (the database's clock, moved back by hand).
    for moved in [
        "UPDATE live SET received_at = now() - interval '1 hour'",
        "UPDATE stations SET last_batch_at = now() - interval '1 hour'",
    ] {
        sqlx::query(moved).execute(hub.db.pool()).await.unwrap();
    }
    let views = get(hub.url("/api/v1/stations"), None).await;
    let view = station(&views.body, "lab-a").unwrap();
    assert_eq!(view["status"], "silent");
    let since = view["last_seen"].as_i64().unwrap();
    assert!(view["read_at"].as_i64().unwrap() - since >= 3_600_000);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_report_is_taken_only_under_the_tokens_own_station() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let answer = post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &live_report("lab-b", 0, "writing"),
    )
    .await;
    assert_eq!(answer.status, 403);
    let answer = post_json(hub.url(paths::LIVE), None, &live_report("lab-a", 0, "x")).await;
    assert_eq!(answer.status, 401);
    let answer = post_raw(hub.url(paths::LIVE), Some(token.clone()), "{}".into()).await;
    assert_eq!(answer.status, 400);
    // A clock gone wild: refused as the sender's fault (it was a 500, the
    // database's "interval out of range").
    for sent_at in [i64::MAX, i64::MIN] {
        let mut report = live_report("lab-a", 0, "writing");
        report.sent_at = sent_at;
        let answer = post_json(hub.url(paths::LIVE), Some(&token), &report).await;
        assert_eq!(answer.status, 400, "{sent_at}: {:?}", answer.body);
        assert!(answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not in the years 0 to 9999"));
    }
    let mut report = live_report("lab-a", 0, "writing");
    report.snapshot["ports"][0]["serial"] = "S\u{0}1".into();
    let answer = post_json(hub.url(paths::LIVE), Some(&token), &report).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert!(hub.db.station_ids().await.unwrap().is_empty());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_of_a_station_id_in_use_is_refused_and_the_view_stays_the_firsts() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let first = "1111111111111111aaaaaaaaaaaaaaaa";
    let second = "2222222222222222bbbbbbbbbbbbbbbb";
    let from = |instance: Option<&str>, state: &str| {
        let mut report = live_report("lab-a", 0, state);
        report.instance = instance.map(str::to_string);
        report
    };
    let view = |views: Answer| station(&views.body, "lab-a").unwrap().clone();
    // A station older than the instance field holds the view: one that
    // names its instance replaces it (it cannot be told from a restart).
    let answer = post_json(hub.url(paths::LIVE), Some(&token), &from(None, "empty")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let answer = post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &from(Some(first), "writing"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // Another station configured with lab-a (its token copied): refused
    // while the first reports, named or not, and the view stays the first's
    // (it was the last report's, flipping between the two).
    for (instance, words) in [
        (Some(second), "not this one (instance 222222222222…)"),
        (None, "not this one (one without a name)"),
    ] {
        let answer = post_json(hub.url(paths::LIVE), Some(&token), &from(instance, "empty")).await;
        assert_eq!(answer.status, 409, "{:?}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap();
        for said in [
            "station \"lab-a\" reports live from another instance (instance 111111111111…, heard from",
            words,
            "another station uses the station_id \"lab-a\"; give each station a station_id of its own",
        ] {
            assert!(message.contains(said), "{said:?} in {message:?}");
        }
    }
    let seen = view(get(hub.url("/api/v1/stations"), None).await);
    assert_eq!(seen["snapshot"]["ports"][0]["state"], "writing", "{seen}");
    assert_eq!(seen["live_version"], 2, "{seen}");
    // The first goes on (a restart keeps its instance).
    let answer = post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &from(Some(first), "verifying"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // Once the first is silent (not heard from for an hour, the database's
    // clock moved back by hand), the second takes its place: a station
    // replaced under its id; then the first is the one refused.
    sqlx::query("UPDATE live SET received_at = now() - interval '1 hour'")
        .execute(hub.db.pool())
        .await
        .unwrap();
    let answer = post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &from(Some(second), "passed"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let answer = post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &from(Some(first), "writing"),
    )
    .await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    let seen = view(get(hub.url("/api/v1/stations"), None).await);
    assert_eq!(seen["snapshot"]["ports"][0]["state"], "passed", "{seen}");
    assert_eq!(seen["status"], "connected", "{seen}");

    // An instance id that is not one is refused as malformed.
    let answer = post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &from(Some("a b\u{1b}"), "writing"),
    )
    .await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    // A snapshot no dashboard can draw is refused, and the view stays (it was
    // stored, and broke the hub's dashboard for every station).
    for snapshot in [
        serde_json::json!({ "ports": "garbage", "run": 5 }),
        serde_json::json!({ "ports": [{ "label": "A1" }] }),
        serde_json::json!({ "ports": [], "run": 5 }),
        serde_json::json!([1, 2]),
    ] {
        let mut report = from(Some(second), "writing");
        report.snapshot = snapshot.clone();
        let answer = post_json(hub.url(paths::LIVE), Some(&token), &report).await;
        assert_eq!(answer.status, 400, "{snapshot}: {:?}", answer.body);
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("the report's snapshot is not a station's")),
            "{:?}",
            answer.body
        );
    }
    let seen = view(get(hub.url("/api/v1/stations"), None).await);
    assert_eq!(seen["snapshot"]["ports"][0]["state"], "passed", "{seen}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_another_instance_than_the_live_one_are_refused_and_change_nothing() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let first = "1111111111111111aaaaaaaaaaaaaaaa";
    let second = "2222222222222222bbbbbbbbbbbbbbbb";
    let mut report = live_report("lab-a", 0, "writing");
    report.instance = Some(first.to_string());
    let answer = post_json(hub.url(paths::LIVE), Some(&token), &report).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let from = |instance: Option<&str>, entries| {
        let mut batch = batch("lab-a", entries, 0);
        batch.instance = instance.map(str::to_string);
        batch
    };
    // A copy of the station's data directory (another instance) ships the
    // first sequence numbers before the station does: refused, nothing kept
    // (its records took the station's history over, and the station's own
    // were refused for good).
    let copy = from(
        Some(second),
        entries(1, vec![image(), device("COPY", 2_000)]),
    );
    let answer = post_json(hub.url(paths::RECORDS), Some(&token), &copy).await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("reports live from another instance (instance 111111111111…")
            && message.contains("its records are refused"),
        "{message}"
    );
    assert!(hub
        .db
        .station_records("lab-a")
        .await
        .unwrap()
        .devices
        .is_empty());
    // The station's own instance ships them, and so does one that names
    // none (a station older than the field).
    let own = from(Some(first), entries(1, vec![image(), device("OWN", 2_000)]));
    let answer = post_json(hub.url(paths::RECORDS), Some(&token), &own).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let unnamed = from(None, entries(3, vec![device("OLD", 2_000)]));
    let answer = post_json(hub.url(paths::RECORDS), Some(&token), &unnamed).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let keys: Vec<String> = hub
        .db
        .station_records("lab-a")
        .await
        .unwrap()
        .devices
        .iter()
        .map(|d| d.key.clone())
        .collect();
    assert_eq!(keys, ["OLD", "OWN"]);
    // Once the live instance is silent, another takes the station over (a
    // station replaced under its id), its records too.
    sqlx::query("UPDATE live SET received_at = now() - interval '1 hour'")
        .execute(hub.db.pool())
        .await
        .unwrap();
    let after = from(Some(second), entries(4, vec![device("NEW", 3_000)]));
    let answer = post_json(hub.url(paths::RECORDS), Some(&token), &after).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_needs_an_operator_token_once_one_exists() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let station_token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    // On loopback without operator tokens: open.
    assert_eq!(get(hub.url("/api/v1/stations"), None).await.status, 200);
    let operator = hub.db.add_token(Role::Operator, "alice").await.unwrap();
    assert_eq!(get(hub.url("/api/v1/stations"), None).await.status, 401);
    assert_eq!(
        get(hub.url("/api/v1/stations"), Some(station_token))
            .await
            .status,
        401
    );
    assert_eq!(
        get(hub.url("/api/v1/stations"), Some(operator.clone()))
            .await
            .status,
        200
    );
    // A GET may carry it in the query (an EventSource cannot set headers) …
    let url = hub.url(&format!("/api/v1/stations?token={operator}"));
    assert_eq!(get(url, None).await.status, 200);
    // … a change may not.
    let url = hub.url(&format!("/api/v1/lots/1/stop?token={operator}"));
    assert_eq!(post_raw(url, None, String::new()).await.status, 401);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgresql_is_down_the_api_answers_503_at_once_and_serves_again_after() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let report = live_report("lab-a", 0, "writing");
    let answer = post_json(hub.url(paths::LIVE), Some(&token), &report).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    tokio::task::block_in_place(|| pg.stop());
    // The stations' side and the operators' side alike: a JSON 503 within
    // about 2 s (each waited for the pool's 10 s, then answered 500).
    let sent = batch("lab-a", entries(1, vec![run(1, None)]), 0);
    let lot = serde_json::json!({ "image_sha256": image_digest().to_hex(), "stations": ["lab-a"] });
    for (what, call) in [
        ("a live report", 0),
        ("a batch", 1),
        ("the orders", 2),
        ("the stations", 3),
        ("a lot", 4),
        ("the health check", 5),
    ] {
        let asked = std::time::Instant::now();
        let answer = match call {
            0 => post_json(hub.url(paths::LIVE), Some(&token), &report).await,
            1 => post_json(hub.url(paths::RECORDS), Some(&token), &sent).await,
            2 => get(hub.url(paths::ORDERS), Some(token.clone())).await,
            3 => get(hub.url("/api/v1/stations"), None).await,
            4 => post_json(hub.url("/api/v1/lots"), None, &lot).await,
            _ => get(hub.url("/api/v1/health"), None).await,
        };
        let took = asked.elapsed();
        assert_eq!(
            answer.status, 503,
            "{what}: {:?} after {took:?}",
            answer.body
        );
        assert_eq!(
            answer.body["error"]["code"], "unavailable",
            "{what}: {:?}",
            answer.body
        );
        assert_eq!(
            answer.body["error"]["message"], "the hub's database is unavailable: try again later",
            "{what}"
        );
        assert!(
            took < std::time::Duration::from_millis(3000),
            "{what}: answered after {took:?}"
        );
    }

    // PostgreSQL back: the hub serves again, without a restart.
    tokio::task::block_in_place(|| pg.start_again());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answer = post_json(hub.url(paths::LIVE), Some(&token), &report).await;
        if answer.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not served again: {:?}",
            answer
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let answer = post_json(hub.url(paths::RECORDS), Some(&token), &sent).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_whose_token_is_revoked_is_shown_so_not_as_silent() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let answer = post_json(
        hub.url(paths::LIVE),
        Some(&token),
        &live_report("lab-a", 0, "empty"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let revoked = |views: &serde_json::Value| views[0]["token_revoked"].clone();
    let views = get(hub.url("/api/v1/stations"), None).await.body;
    assert_eq!(revoked(&views), false, "{views:#}");
    hub.db.revoke_tokens(Role::Station, "lab-a").await.unwrap();
    let views = get(hub.url("/api/v1/stations"), None).await.body;
    assert_eq!(revoked(&views), true, "{views:#}");
    hub.stop().await;
}
