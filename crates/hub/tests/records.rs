//! Stations' record batches into the hub: real PostgreSQL (a throwaway
//! cluster per test), real HTTP on loopback.

mod common;

use common::*;
use flashrack_core::Verdict;
use flashrack_fleet::{paths, BatchAck, FleetRecord};
use flashrack_hub::pg::Role;
use flashrack_hub::testing::spawn_hub;
use flashrack_hub::{Hub, HubConfig, HubError};
use flashrack_testkit::pg::PgCluster;

fn ack(answer: &Answer) -> BatchAck {
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    serde_json::from_value(answer.body.clone()).unwrap()
}

/// The first batch of a station: an image, a stick, a run, an attempt that
/// starts and finishes, a refusal, events.
fn first_records() -> Vec<FleetRecord> {
    vec![
        image(),
        device("S1", 4_000),
        run(1, None),
        attempt(1, "S1", 0, None),
        event(1, "attempt_started"),
        refusal(1),
        attempt(1, "S1", 1 << 30, Some(Verdict::Pass)),
        event(2, "attempt_finished"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_stored_whole_and_acknowledged() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();

    let answer = post_json(
        hub.url(paths::RECORDS),
        Some(&token),
        &batch("lab-a", entries(1, first_records()), 3),
    )
    .await;
    assert_eq!(
        ack(&answer),
        BatchAck {
            acked_through: 8,
            applied: 8,
            duplicates: 0
        }
    );
    let stored = hub.db.station_records("lab-a").await.unwrap();
    let FleetRecord::Image(i) = image() else {
        unreachable!()
    };
    assert_eq!(stored.images, vec![i]);
    let FleetRecord::Device(d) = device("S1", 4_000) else {
        unreachable!()
    };
    assert_eq!(stored.devices, vec![d]);
    let FleetRecord::Run(r) = run(1, None) else {
        unreachable!()
    };
    assert_eq!(stored.runs, vec![r]);
    // The attempt as it stood last: finished, with its figures.
    let FleetRecord::Attempt(a) = attempt(1, "S1", 1 << 30, Some(Verdict::Pass)) else {
        unreachable!()
    };
    assert_eq!(stored.attempts, vec![a]);
    let FleetRecord::Refusal(f) = refusal(1) else {
        unreachable!()
    };
    assert_eq!(stored.refusals, vec![f]);
    assert_eq!(stored.events.len(), 2);
    assert_eq!(stored.events[1].kind, "attempt_finished");
    // A failure's words travel with its verdict.
    let answer = post_json(
        hub.url(paths::RECORDS),
        Some(&token),
        &batch(
            "lab-a",
            entries(9, vec![attempt(2, "S1", 4096, Some(mismatch()))]),
            0,
        ),
    )
    .await;
    assert_eq!(ack(&answer).acked_through, 9);
    let stored = hub.db.station_records("lab-a").await.unwrap();
    assert_eq!(
        stored.attempts[1].reason_detail.as_deref(),
        Some("verify mismatch at byte 4096")
    );
    assert_eq!(stored.attempts[1].verdict, Some(mismatch()));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_changes_nothing_and_is_counted_as_duplicates() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let sent = batch("lab-a", entries(1, first_records()), 0);
    ack(&post_json(hub.url(paths::RECORDS), Some(&token), &sent).await);
    let before = hub.db.station_records("lab-a").await.unwrap();

    // The acknowledgement was lost: the station sends the same batch again.
    let again = ack(&post_json(hub.url(paths::RECORDS), Some(&token), &sent).await);
    assert_eq!(
        again,
        BatchAck {
            acked_through: 8,
            applied: 0,
            duplicates: 8
        }
    );
    assert_eq!(hub.db.station_records("lab-a").await.unwrap(), before);
    // A batch overlapping the one before applies only what is new.
    let mut overlapping = entries(7, vec![]);
    overlapping.extend(sent.entries[6..].iter().cloned());
    overlapping.extend(entries(9, vec![event(3, "run_stopped")]));
    let answer = ack(&post_json(
        hub.url(paths::RECORDS),
        Some(&token),
        &batch("lab-a", overlapping, 0),
    )
    .await);
    assert_eq!((answer.applied, answer.duplicates), (1, 2));
    assert_eq!(
        hub.db.station_records("lab-a").await.unwrap().events.len(),
        3
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_applied_out_of_order_keep_the_newest_version_of_each_row() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let older = batch(
        "lab-a",
        entries(
            1,
            vec![
                device("S1", 4_000),
                run(1, None),
                attempt(1, "S1", 0, None),
                attempt(1, "S1", 1 << 20, None),
            ],
        ),
        2,
    );
    let newer = batch(
        "lab-a",
        entries(
            5,
            vec![
                device("S1", 8_000),
                attempt(1, "S1", 1 << 30, Some(Verdict::Pass)),
                run(1, Some(9_500)),
            ],
        ),
        0,
    );
    // The newer batch arrives first (a retry of the older one came late).
    ack(&post_json(hub.url(paths::RECORDS), Some(&token), &newer).await);
    let answer = ack(&post_json(hub.url(paths::RECORDS), Some(&token), &older).await);
    assert_eq!(answer.applied, 4);
    let stored = hub.db.station_records("lab-a").await.unwrap();
    let FleetRecord::Attempt(a) = attempt(1, "S1", 1 << 30, Some(Verdict::Pass)) else {
        unreachable!()
    };
    assert_eq!(stored.attempts, vec![a]);
    assert_eq!(stored.devices[0].last_seen, 8_000);
    assert_eq!(stored.runs[0].stopped_at, Some(9_500));
    // And in order, the same result.
    let token_b = hub.db.add_token(Role::Station, "lab-b").await.unwrap();
    for sent in [&older, &newer] {
        let mut sent = sent.clone();
        sent.station_id = "lab-b".into();
        ack(&post_json(hub.url(paths::RECORDS), Some(&token_b), &sent).await);
    }
    assert_eq!(hub.db.station_records("lab-b").await.unwrap(), stored);
    // The late older batch did not set the station's backlog back.
    let backlog: i64 = sqlx::query_scalar("SELECT backlog FROM stations WHERE id = 'lab-a'")
        .fetch_one(hub.db.pool())
        .await
        .unwrap();
    assert_eq!(backlog, 0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_cannot_write_under_another_stations_id() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token_a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    hub.db.add_token(Role::Station, "lab-b").await.unwrap();
    let answer = post_json(
        hub.url(paths::RECORDS),
        Some(&token_a),
        &batch("lab-b", entries(1, first_records()), 0),
    )
    .await;
    assert_eq!(answer.status, 403, "{:?}", answer.body);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("lab-a"));
    assert!(hub.db.station_ids().await.unwrap().is_empty());
    assert_eq!(
        hub.db.station_records("lab-b").await.unwrap(),
        Default::default()
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_station_under_an_id_in_use_is_refused_not_counted_as_duplicates() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let first = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    // A second station configured with the same station_id, with a token
    // made for it (or a copy of the first's).
    let second = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let shipped = batch("lab-a", entries(1, first_records()), 0);
    ack(&post_json(hub.url(paths::RECORDS), Some(&first), &shipped).await);
    let before = hub.db.station_records("lab-a").await.unwrap();

    // Its own history numbers its entries from 1 as well: other records,
    // written at other times. Acknowledged as duplicates, the second
    // station marked them shipped and they were lost.
    let mut other = entries(
        1,
        vec![
            device("S9", 70_000),
            run(1, Some(80_000)),
            event(1, "device_added"),
        ],
    );
    // The same kinds in the same order, written at other times: another
    // history too.
    let mut same_kinds = shipped.entries.clone();
    for entry in other.iter_mut().chain(&mut same_kinds) {
        entry.at += 60_000;
    }
    // One entry beyond what the first shipped does not carry the rest.
    let mut overlapping = other.clone();
    overlapping.extend(entries(9, vec![event(9, "device_added")]));
    for (token, sent) in [
        (&second, other),
        (&second, same_kinds),
        (&first, overlapping),
    ] {
        let answer = post_json(
            hub.url(paths::RECORDS),
            Some(token),
            &batch("lab-a", sent, 0),
        )
        .await;
        assert_eq!(answer.status, 409, "{:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], "conflict");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("already shipped another entry 1")
                && message.contains("another station uses the station_id \"lab-a\""),
            "{message}"
        );
    }
    assert_eq!(hub.db.station_records("lab-a").await.unwrap(), before);
    assert_eq!(hub.db.received_of("lab-a").await.unwrap(), (8, 8));
    // The refusal is shown with the station (it showed only "behind", the
    // records never arriving: a station restored from a backup).
    let refused = |views: &serde_json::Value| {
        views.as_array().unwrap()[0]["records_refused"]
            .as_str()
            .map(str::to_string)
    };
    let views = get(hub.url("/api/v1/stations"), None).await.body;
    assert!(
        refused(&views).is_some_and(|r| r.contains("already shipped another entry 1")),
        "{views:#}"
    );

    // The first station's own replay is still a duplicate, and what it
    // ships next is applied; the refusal shown is over.
    let again = ack(&post_json(hub.url(paths::RECORDS), Some(&first), &shipped).await);
    assert_eq!((again.applied, again.duplicates), (0, 8));
    let next = batch("lab-a", entries(9, vec![event(3, "run_stopped")]), 0);
    assert_eq!(
        ack(&post_json(hub.url(paths::RECORDS), Some(&first), &next).await).applied,
        1
    );
    let views = get(hub.url("/api/v1/stations"), None).await.body;
    assert_eq!(refused(&views), None, "{views:#}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_unknown_revoked_or_operator_token_cannot_ship_records() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let operator = hub.db.add_token(Role::Operator, "lab-a").await.unwrap();
    let sent = batch("lab-a", entries(1, first_records()), 0);
    // A token one character off (never the token itself, whatever its last character).
    let last = if token.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &token[..token.len() - 1]);
    assert_ne!(wrong, token);
    for bad in [None, Some(wrong.as_str()), Some(operator.as_str())] {
        let answer = post_json(hub.url(paths::RECORDS), bad, &sent).await;
        assert_eq!(answer.status, 401, "{bad:?}: {:?}", answer.body);
    }
    assert_eq!(
        hub.db.revoke_tokens(Role::Station, "lab-a").await.unwrap(),
        1
    );
    let answer = post_json(hub.url(paths::RECORDS), Some(&token), &sent).await;
    assert_eq!(answer.status, 401);
    assert!(hub.db.station_ids().await.unwrap().is_empty());
    // The database holds no token, only its hash.
    let stored: Vec<String> = sqlx::query_scalar("SELECT sha256 FROM tokens")
        .fetch_all(hub.db.pool())
        .await
        .unwrap();
    assert!(!stored.contains(&token));
    assert!(stored.contains(&flashrack_hub::pg::tokens::token_hash(&token)));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_batch_is_refused_and_stores_nothing() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let good = batch("lab-a", entries(1, first_records()), 0);
    let mut wrong_protocol = good.clone();
    wrong_protocol.protocol = 99;
    let mut unordered = good.clone();
    unordered.entries.swap(2, 3);
    let mut zero = good.clone();
    zero.entries[0].seq = 0;
    let mut huge = good.clone();
    huge.entries[7].seq = u64::MAX;
    let mut too_big = good.clone();
    if let FleetRecord::Device(d) = &mut too_big.entries[1].record {
        d.capacity = u64::MAX;
    }
    // Times beyond the years 0 to 9999 (a station's clock gone wild):
    // PostgreSQL failed the statement (interval or timestamp out of range),
    // a 500 the station would have retried for ever.
    let mut far_future = good.clone();
    if let FleetRecord::Event(e) = &mut far_future.entries[4].record {
        e.at = i64::MAX;
    }
    let mut far_past = good.clone();
    if let FleetRecord::Device(d) = &mut far_past.entries[1].record {
        d.first_seen = i64::MIN;
    }
    let mut year_300000 = good.clone();
    if let FleetRecord::Attempt(a) = &mut year_300000.entries[6].record {
        a.finished_at = Some(9_404_006_400_000_000);
    }
    // A NUL in a text (a serial, an event's detail, one of its keys):
    // PostgreSQL's text and jsonb cannot hold it, the statement failed (a
    // 500).
    let mut nul_serial = good.clone();
    if let FleetRecord::Device(d) = &mut nul_serial.entries[1].record {
        d.serial = Some("S\u{0}1".into());
    }
    let mut nul_detail = good.clone();
    if let FleetRecord::Event(e) = &mut nul_detail.entries[7].record {
        e.detail = serde_json::json!({ "words": ["fine", "not\u{0}fine"] });
    }
    let mut nul_key = good.clone();
    if let FleetRecord::Event(e) = &mut nul_key.entries[7].record {
        e.detail = serde_json::json!({ "k\u{0}": 1 });
    }
    let mut bodies: Vec<String> = [
        wrong_protocol,
        unordered,
        zero,
        huge,
        too_big,
        far_future,
        far_past,
        year_300000,
        nul_serial,
        nul_detail,
        nul_key,
    ]
    .iter()
    .map(|b| serde_json::to_string(b).unwrap())
    .collect();
    bodies.push("{not json".into());
    bodies.push(r#"{"protocol":1,"station_id":"lab-a","entries":[{"seq":1,"at":0,"record":{"type":"bogus"}}],"backlog":0}"#.into());
    for body in bodies {
        let answer = post_raw(hub.url(paths::RECORDS), Some(token.clone()), body.clone()).await;
        assert_eq!(answer.status, 400, "{body}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], "bad_request");
    }
    assert_eq!(
        hub.db.station_records("lab-a").await.unwrap(),
        Default::default()
    );
    // Nothing was taken, so the good batch is applied whole.
    let answer = ack(&post_json(hub.url(paths::RECORDS), Some(&token), &good).await);
    assert_eq!(answer.applied, 8);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hub_processes_taking_the_same_batch_at_once_apply_it_once() {
    let pg = PgCluster::start();
    let one = spawn_hub(&pg.url()).await;
    let two = spawn_hub(&pg.url()).await;
    let token = one.db.add_token(Role::Station, "lab-a").await.unwrap();
    let records: Vec<FleetRecord> = (1..=200).map(|i| event(i, "device_added")).collect();
    let sent = batch("lab-a", entries(1, records), 0);
    let (a, b) = tokio::join!(
        post_json(one.url(paths::RECORDS), Some(&token), &sent),
        post_json(two.url(paths::RECORDS), Some(&token), &sent),
    );
    let (a, b) = (ack(&a), ack(&b));
    assert_eq!(a.applied + b.applied, 200);
    assert_eq!(a.duplicates + b.duplicates, 200);
    assert_eq!(
        one.db.station_records("lab-a").await.unwrap().events.len(),
        200
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refuses_to_listen_beyond_loopback_without_an_operator_token() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = HubConfig::new(pg.url(), dir.path().join("hub"));
    config.listen = "0.0.0.0:0".parse().unwrap();
    let error = Hub::build(config.clone()).await.err().expect("refused");
    assert!(matches!(error, HubError::NoToken(_)), "{error}");
    // A station token does not open the operator API: still refused.
    let hub = spawn_hub(&pg.url()).await;
    hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    assert!(matches!(
        Hub::build(config.clone()).await.err(),
        Some(HubError::NoToken(_))
    ));
    hub.db.add_token(Role::Operator, "alice").await.unwrap();
    let built = Hub::build(config).await.expect("with an operator token");
    assert!(!built.address().ip().is_loopback());
    drop(built);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_reached_is_named_with_the_reason() {
    // A port nothing listens on (taken, then let go).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = flashrack_hub::pg::HubDb::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/flashrack"),
        2,
    )
    .await
    .unwrap_err();
    let words = error.to_string();
    // It said only "pool timed out while waiting for an open connection".
    assert!(
        words.contains(&format!(
            "cannot connect to 127.0.0.1:{port} (database flashrack)"
        )),
        "{words}"
    );
    assert!(words.to_lowercase().contains("refused"), "{words}");
}
