//! Orders and images through the hub: lots armed and stopped by operators,
//! stations' long-polls (also across hub processes), desired against actual
//! state, and images served by sha256 with HTTP ranges. Real PostgreSQL,
//! real HTTP on loopback.

mod common;

use common::*;
use flashrack_core::Sha256Digest;
use flashrack_fleet::{paths, OrderProgress, OrderState, Orders, ORDER_ID_OPTION};
use flashrack_hub::pg::Role;
use flashrack_hub::testing::{spawn_hub, TestHub};
use flashrack_testkit::pg::PgCluster;
use serde_json::json;

/// An image's bytes: 1 MiB and a bit, not a multiple of anything.
fn image_bytes() -> Vec<u8> {
    (0..(1 << 20) + 4097u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

async fn upload(hub: &TestHub, bytes: Vec<u8>) -> String {
    let answer = post_bytes(hub.url("/api/v1/images?name=os.img"), None, bytes).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["sha256"].as_str().unwrap().to_string()
}

async fn orders(hub: &TestHub, token: &str, query: &str) -> Orders {
    let answer = get(
        hub.url(&format!("{}{query}", paths::ORDERS)),
        Some(token.into()),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    serde_json::from_value(answer.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armed_lot_reaches_its_stations_and_a_stop_disarms_it() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    hub.db.add_token(Role::Station, "lab-b").await.unwrap();
    let c = hub.db.add_token(Role::Station, "lab-c").await.unwrap();
    let sha = upload(&hub, image_bytes()).await;
    assert_eq!(sha, Sha256Digest::of(&image_bytes()).to_hex());

    let lot = post_json(
        hub.url("/api/v1/lots"),
        None,
        &json!({ "name": "batch-7", "image_sha256": sha, "stations": ["lab-a", "lab-b"],
                 "options": { "verify": "hash", "target_count": 20 } }),
    )
    .await;
    assert_eq!(lot.status, 200, "{:?}", lot.body);
    assert_eq!(lot.body["orders"].as_array().unwrap().len(), 2);
    let mine = orders(&hub, &a, "").await;
    assert_eq!(mine.version, 1);
    let run = mine.run.expect("an order");
    assert!(run.armed);
    assert_eq!(run.lot, "batch-7");
    assert_eq!(run.image_sha256.to_hex(), sha);
    assert_eq!(run.image_size, image_bytes().len() as u64);
    assert_eq!(run.options["target_count"], 20);
    // A station not in the lot has nothing to do.
    assert_eq!(
        orders(&hub, &c, "").await,
        Orders {
            version: 0,
            run: None
        }
    );

    let id = lot.body["id"].as_i64().unwrap();
    let stopped = post_raw(
        hub.url(&format!("/api/v1/lots/{id}/stop")),
        None,
        String::new(),
    )
    .await;
    assert_eq!(stopped.status, 200, "{:?}", stopped.body);
    let mine = orders(&hub, &a, "").await;
    assert_eq!(mine.version, 2);
    let run = mine.run.unwrap();
    assert!(!run.armed, "the station is told to stop its run");
    assert_eq!(
        run.order_id,
        lot.body["orders"][0]["order_id"].as_i64().unwrap()
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_when_another_hub_process_arms_the_station() {
    let pg = PgCluster::start();
    let one = spawn_hub(&pg.url()).await;
    let two = spawn_hub(&pg.url()).await;
    let a = one.db.add_token(Role::Station, "lab-a").await.unwrap();
    let sha = upload(&one, image_bytes()).await;
    let before = orders(&two, &a, "").await;
    assert_eq!(before.version, 0);
    // The poll waits on process two …
    let poll = {
        let url = two.url(&format!("{}?station=lab-a&after=0&wait=60", paths::ORDERS));
        let token = a.clone();
        tokio::spawn(async move { get(url, Some(token)).await })
    };
    // … the operator arms through process one.
    let lot = post_json(
        one.url("/api/v1/lots"),
        None,
        &json!({ "image_sha256": sha, "stations": ["lab-a"] }),
    )
    .await;
    assert_eq!(lot.status, 200, "{:?}", lot.body);
    assert!(lot.body["name"].as_str().unwrap().starts_with("lot-"));
    let answer = poll.await.unwrap();
    assert_eq!(answer.status, 200);
    let after: Orders = serde_json::from_value(answer.body).unwrap();
    assert_eq!(after.version, 1);
    assert!(after.run.unwrap().armed);
    // Without a change, a poll with no wait answers at once, unchanged.
    assert_eq!(orders(&two, &a, "?after=1").await.version, 1);
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lot_shows_desired_and_actual_state_per_station() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    hub.db.add_token(Role::Station, "lab-b").await.unwrap();
    let sha = upload(&hub, image_bytes()).await;
    let lot = post_json(
        hub.url("/api/v1/lots"),
        None,
        &json!({ "image_sha256": sha, "stations": ["lab-a", "lab-b"] }),
    )
    .await;
    let order_id = lot.body["orders"][0]["order_id"].as_i64().unwrap();
    assert!(lot.body["orders"][0]["progress"].is_null());
    // lab-a reports it armed, and ships its run under the order.
    let mut report = live_report("lab-a", 0, "writing");
    report.order = Some(OrderProgress {
        order_id,
        state: OrderState::Armed,
        detail: None,
    });
    assert_eq!(
        post_json(hub.url(paths::LIVE), Some(&a), &report)
            .await
            .status,
        200
    );
    let mut armed = run(1, None);
    if let flashrack_fleet::FleetRecord::Run(r) = &mut armed {
        r.options = json!({ ORDER_ID_OPTION: order_id });
    }
    let sent = batch(
        "lab-a",
        entries(
            1,
            vec![
                armed,
                attempt(1, "S1", 1 << 30, Some(flashrack_core::Verdict::Pass)),
            ],
        ),
        0,
    );
    assert_eq!(
        post_json(hub.url(paths::RECORDS), Some(&a), &sent)
            .await
            .status,
        200
    );
    let lots = get(hub.url("/api/v1/lots"), None).await;
    let orders = &lots.body[0]["orders"];
    assert_eq!(orders[0]["station_id"], "lab-a");
    assert_eq!(orders[0]["armed"], true);
    assert_eq!(orders[0]["progress"]["state"], "armed");
    assert_eq!(orders[0]["run_id"], 1);
    assert_eq!(orders[0]["passed"], 1);
    assert_eq!(orders[1]["station_id"], "lab-b");
    assert!(orders[1]["progress"].is_null());
    assert!(orders[1]["run_id"].is_null());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arming_is_refused_for_an_image_the_hub_lacks_and_orders_are_private() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let answer = post_json(
        hub.url("/api/v1/lots"),
        None,
        &json!({ "image_sha256": Sha256Digest::of(b"x").to_hex(), "stations": ["lab-a"] }),
    )
    .await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    let answer = get(
        hub.url(&format!("{}?station=lab-b", paths::ORDERS)),
        Some(a.clone()),
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(get(hub.url(paths::ORDERS), None).await.status, 401);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_served_whole_and_by_range_so_that_a_fetch_resumes() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let bytes = image_bytes();
    let sha = upload(&hub, bytes.clone()).await;
    let url = hub.url(&format!("{}/{sha}", paths::IMAGES));
    let auth = ("Authorization", format!("Bearer {a}"));

    let (status, headers, body) = get_bytes(url.clone(), vec![auth.clone()]).await;
    assert_eq!(status, 200);
    assert_eq!(body, bytes);
    assert_eq!(headers["accept-ranges"], "bytes");
    let etag = headers["etag"].clone();
    assert_eq!(etag, format!("\"{sha}\""));

    // Interrupted halfway, resumed from there, verified against the digest.
    let half = bytes.len() / 2;
    let (status, headers, first) = get_bytes(
        url.clone(),
        vec![auth.clone(), ("Range", format!("bytes=0-{}", half - 1))],
    )
    .await;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes 0-{}/{}", half - 1, bytes.len())
    );
    let (status, headers, rest) = get_bytes(
        url.clone(),
        vec![
            auth.clone(),
            ("Range", format!("bytes={half}-")),
            ("If-Range", etag.clone()),
        ],
    )
    .await;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes {half}-{}/{}", bytes.len() - 1, bytes.len())
    );
    let whole = [first, rest].concat();
    assert_eq!(Sha256Digest::of(&whole).to_hex(), sha);

    // A suffix range; a range beyond the end; a stale If-Range gets it all.
    let (status, _, tail) = get_bytes(
        url.clone(),
        vec![auth.clone(), ("Range", "bytes=-10".into())],
    )
    .await;
    assert_eq!((status, tail.as_slice()), (206, &bytes[bytes.len() - 10..]));
    let (status, headers, _) = get_bytes(
        url.clone(),
        vec![auth.clone(), ("Range", format!("bytes={}-", bytes.len()))],
    )
    .await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{}", bytes.len()));
    let (status, _, body) = get_bytes(
        url.clone(),
        vec![
            auth.clone(),
            ("Range", "bytes=0-9".into()),
            ("If-Range", "\"something-else\"".into()),
        ],
    )
    .await;
    assert_eq!((status, body.len()), (200, bytes.len()));

    // A token is needed; an unknown image is not found.
    assert_eq!(get_bytes(url.clone(), vec![]).await.0, 401);
    let other = hub.url(&format!(
        "{}/{}",
        paths::IMAGES,
        Sha256Digest::of(b"x").to_hex()
    ));
    assert_eq!(get_bytes(other, vec![auth]).await.0, 404);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_a_killed_hub_left_is_removed_when_a_hub_starts_over_its_directory() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let uploads = dir.path().join("hub").join("uploads");
    // What a hub killed (kill -9) mid-upload left: its staging directory
    // with the bytes received so far, named after its process, now gone.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let left = uploads.join(format!(".upload-{dead}-aB3dE9"));
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("os.img"), vec![7u8; 1 << 20]).unwrap();
    // Another hub process's upload under way (its process runs), and a
    // directory not named after a process: left alone.
    let running = uploads.join(".upload-1-Zq7Xw2");
    let unnamed = uploads.join(".upload-Yu55aU");
    for kept in [&running, &unnamed] {
        std::fs::create_dir_all(kept).unwrap();
    }
    let config = flashrack_hub::HubConfig::new(pg.url(), dir.path().join("hub"));
    let hub = flashrack_hub::testing::spawn_hub_with(
        flashrack_hub::HubConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        },
        dir,
    )
    .await;
    assert!(!left.exists(), "the killed hub's upload is still there");
    assert!(running.exists() && unnamed.exists());
    // An upload this hub staged is gone once imported.
    upload(&hub, image_bytes()).await;
    let staged: Vec<_> = std::fs::read_dir(&uploads)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(staged.len(), 2, "{staged:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lot_requests_get_a_clear_error_and_arm_nothing() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let sha = upload(&hub, image_bytes()).await;
    let lots = hub.url("/api/v1/lots");
    // The hub's errors: `{"error": {"code", "message"}}`.
    let refused = |status: u16, body: &serde_json::Value| {
        let error = body["error"]["message"].as_str().unwrap_or_default();
        (status, error.to_string())
    };
    // Not JSON, the wrong shapes, a misspelt field, a bad digest, an image
    // the hub lacks, a station named twice or not a station id.
    for (body, says) in [
        ("{not json".to_string(), "malformed request"),
        (
            json!({ "image_sha256": sha }).to_string(),
            "missing field `stations`",
        ),
        (
            json!({ "image_sha256": sha, "stations": "lab-a" }).to_string(),
            "invalid type",
        ),
        (
            json!({ "image_sha256": sha, "stations": ["lab-a"], "options": [1] }).to_string(),
            "invalid type",
        ),
        (
            json!({ "image_sha256": sha, "stations": ["lab-a"], "optoins": { "target": 3 } })
                .to_string(),
            "unknown field `optoins`",
        ),
        (
            json!({ "image_sha256": "abc", "stations": ["lab-a"] }).to_string(),
            "sha256",
        ),
        (
            json!({ "image_sha256": Sha256Digest::of(b"x").to_hex(), "stations": ["lab-a"] })
                .to_string(),
            "the hub holds no image",
        ),
        (
            json!({ "image_sha256": sha, "stations": ["lab-a", "lab-a"] }).to_string(),
            "station \"lab-a\" is named twice in the lot",
        ),
        (
            json!({ "image_sha256": sha, "stations": ["lab a"] }).to_string(),
            "\"lab a\" is not a station id",
        ),
        (
            json!({ "image_sha256": sha, "stations": [] }).to_string(),
            "a lot needs at least one station",
        ),
        // Options no station can use, judged before anything is disarmed
        // (the stations' working lot runs were stopped, then the order
        // failed there).
        (
            json!({ "image_sha256": sha, "stations": ["lab-a"], "options": { "retries": 50 } })
                .to_string(),
            "retries must be at most 10",
        ),
        (
            json!({ "image_sha256": sha, "stations": ["lab-a"], "options": { "target": 5 } })
                .to_string(),
            "the order's options name no option \"target\"",
        ),
        (
            json!({ "image_sha256": sha, "stations": ["lab-a"], "options": { "verify": "bogus" } })
                .to_string(),
            "the order's options cannot be used",
        ),
        // A name every report of the lot prints (it was stored with its
        // override, and a 1.5 MB one was a 500).
        (
            json!({ "name": "lot\u{202E}24", "image_sha256": sha, "stations": ["lab-a"] })
                .to_string(),
            "a lot's name must be at most 200 characters",
        ),
        (
            json!({ "name": "x".repeat(201), "image_sha256": sha, "stations": ["lab-a"] })
                .to_string(),
            "a lot's name must be at most 200 characters",
        ),
    ] {
        let answer = post_raw(lots.clone(), None, body.clone()).await;
        let (status, error) = refused(answer.status, &answer.body);
        assert!(
            status == 400 || (status == 409 && says.starts_with("the hub holds")),
            "{body}: {status} {:?}",
            answer.body
        );
        assert!(
            error.contains(says),
            "{body}: {error:?} should say {says:?} ({:?})",
            answer.body
        );
    }
    // Nothing was armed by any of them.
    let listed = get(lots.clone(), None).await;
    assert_eq!(listed.body, json!([]), "{:?}", listed.body);
    assert_eq!(orders(&hub, &a, "").await.run, None);

    // Unknown and malformed lot ids: 404 and 400, with the hub's words.
    for (path, status, says) in [
        ("/api/v1/lots/999/stop", 404, "no lot 999"),
        ("/api/v1/lots/abc/stop", 400, "\"abc\" is not a lot id"),
        ("/api/v1/lots/-1/stop", 400, "\"-1\" is not a lot id"),
    ] {
        let answer = post_raw(hub.url(path), None, String::new()).await;
        let (got, error) = refused(answer.status, &answer.body);
        assert_eq!(got, status, "{path}: {:?}", answer.body);
        assert!(error.contains(says), "{path}: {error:?}");
    }
    for (path, status, says) in [
        ("/api/v1/lots/999/report", 404, "no lot 999"),
        (
            "/api/v1/lots/x1/report?format=csv",
            400,
            "\"x1\" is not a lot id",
        ),
    ] {
        let answer = get(hub.url(path), None).await;
        let (got, error) = refused(answer.status, &answer.body);
        assert_eq!(got, status, "{path}: {:?}", answer.body);
        assert!(error.contains(says), "{path}: {error:?}");
    }
    // Query strings and paths that do not parse, and paths that name
    // nothing: the hub's JSON error, not axum's plain text (or an empty
    // 404), for operators and stations alike.
    for (path, token, status, says) in [
        (
            "/api/v1/lots/1/report?format=csv&format=json",
            None,
            400,
            "duplicate field `format`",
        ),
        ("/api/v1/devices/%FF", None, 400, "UTF-8"),
        (
            "/api/v1/devices/S1?format=csv&format=csv",
            None,
            400,
            "duplicate field `format`",
        ),
        (
            "/api/v1/fleet/orders?after=soon",
            Some(a.clone()),
            400,
            "after: invalid digit",
        ),
        (
            "/api/v1/fleet/orders?wait=-1",
            Some(a.clone()),
            400,
            "wait: invalid digit",
        ),
        ("/api/v1/lotz", None, 404, "no such endpoint"),
        (
            "/api/v1/fleet/nothing",
            Some(a.clone()),
            404,
            "no such endpoint",
        ),
    ] {
        let answer = get(hub.url(path), token).await;
        let (got, error) = refused(answer.status, &answer.body);
        assert_eq!(got, status, "{path}: {:?}", answer.body);
        assert!(
            error.contains(says),
            "{path}: {error:?} should say {says:?}"
        );
    }
    let answer = post_bytes(
        hub.url("/api/v1/images?name=a.img&name=b.img"),
        None,
        b"x".to_vec(),
    )
    .await;
    let (got, error) = refused(answer.status, &answer.body);
    assert_eq!(got, 400, "{:?}", answer.body);
    assert!(error.contains("duplicate field `name`"), "{error:?}");
    // A method a path does not take (a GET of the stations' POST-only
    // records): 405, the hub's JSON error too.
    let answer = get(hub.url("/api/v1/fleet/records"), Some(a.clone())).await;
    let (got, error) = refused(answer.status, &answer.body);
    assert_eq!(got, 405, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], "method_not_allowed");
    assert!(
        error.contains("GET /api/v1/fleet/records is not an endpoint"),
        "{error:?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lot_named_as_another_is_refused_with_409_and_an_unnamed_lot_takes_a_free_name() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let sha = upload(&hub, image_bytes()).await;
    let lots = hub.url("/api/v1/lots");
    let arm = |name: Option<&str>| {
        let mut body = json!({ "image_sha256": sha, "stations": ["lab-a"] });
        if let Some(name) = name {
            body["name"] = json!(name);
        }
        post_raw(lots.clone(), None, body.to_string())
    };
    let first = arm(Some("batch-7")).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let first_id = first.body["id"].as_i64().unwrap();
    // The same name again: a 409 naming the lot that has it (was a 400,
    // "a lot of that name exists already", naming neither).
    let again = arm(Some("batch-7")).await;
    assert_eq!(again.status, 409, "{:?}", again.body);
    assert_eq!(again.body["error"]["code"], "conflict", "{:?}", again.body);
    let words = again.body["error"]["message"].as_str().unwrap();
    assert!(
        words.contains(&format!(
            "a lot named \"batch-7\" exists already (lot {first_id}): give this one another name"
        )),
        "{words:?}"
    );

    // An operator names a lot as the hub names the next unnamed one
    // ("lot-<id>"): the unnamed lot takes "lot-<id>-2" (its rename was
    // refused by the unique name, a 500, and the lot not armed).
    let next: i64 = sqlx::query_scalar("SELECT last_value + 1 FROM lots_id_seq")
        .fetch_one(hub.db.pool())
        .await
        .unwrap();
    let named = arm(Some(&format!("lot-{}", next + 1))).await;
    assert_eq!(named.status, 200, "{:?}", named.body);
    assert_eq!(named.body["id"], next, "{:?}", named.body);
    let unnamed = arm(None).await;
    assert_eq!(unnamed.status, 200, "{:?}", unnamed.body);
    assert_eq!(unnamed.body["id"], next + 1, "{:?}", unnamed.body);
    assert_eq!(unnamed.body["name"], format!("lot-{}-2", next + 1));
    // The one after is plain "lot-<id>" again.
    let plain = arm(None).await;
    assert_eq!(plain.status, 200, "{:?}", plain.body);
    assert_eq!(plain.body["name"], format!("lot-{}", next + 2));

    // Four lots, each named once; the refused one armed nothing.
    let listed = get(lots.clone(), None).await;
    let names: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    let expected = [
        format!("lot-{}", next + 2),
        format!("lot-{}-2", next + 1),
        format!("lot-{}", next + 1),
        "batch-7".to_string(),
    ];
    assert_eq!(names, expected, "{:?}", listed.body);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lot_for_a_station_without_a_token_is_refused_naming_it_and_arms_nothing() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let sha = upload(&hub, image_bytes()).await;
    let lots = hub.url("/api/v1/lots");
    let arm = |stations: &[&str]| {
        post_raw(
            lots.clone(),
            None,
            json!({ "image_sha256": sha, "stations": stations }).to_string(),
        )
    };
    // lab-b never joined: its order would wait, armed, for good (it was
    // armed, 200, and the lot showed no progress for it, ever).
    for (stations, says) in [
        (
            &["lab-a", "lab-b"][..],
            "station \"lab-b\" has no station token (never joined this hub, or its token was \
             revoked), so an order would wait for it forever: make one with `flashrack hub token \
             add lab-b`, put it in the station's token_file and restart the station, or arm the \
             lot without it",
        ),
        (
            &["lab-c", "lab-a", "lab-b"][..],
            "stations \"lab-c\", \"lab-b\" have no station token",
        ),
    ] {
        let answer = arm(stations).await;
        assert_eq!(answer.status, 409, "{stations:?}: {:?}", answer.body);
        let words = answer.body["error"]["message"].as_str().unwrap();
        assert!(words.contains(says), "{stations:?}: {words:?}");
    }
    // Nothing was armed, not even for lab-a.
    assert_eq!(get(lots.clone(), None).await.body, json!([]));
    assert_eq!(orders(&hub, &a, "").await.run, None);

    // A revoked token is no token; a token made, the lot is armed.
    hub.db.revoke_tokens(Role::Station, "lab-a").await.unwrap();
    let answer = arm(&["lab-a"]).await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    let b = hub.db.add_token(Role::Station, "lab-b").await.unwrap();
    let answer = arm(&["lab-b"]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(orders(&hub, &b, "").await.run.unwrap().armed);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lots_armed_at_once_on_a_station_are_armed_in_turn_and_the_replaced_ones_stopped() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    hub.db.add_token(Role::Station, "lab-b").await.unwrap();
    let sha = upload(&hub, image_bytes()).await;
    // Ten at once on the same two stations: 6 of 10 were a 500 (the
    // one-armed-order index), and the replaced lots "still armed".
    let body = json!({ "image_sha256": sha, "stations": ["lab-b", "lab-a"], "name": "" });
    let arms = (0..10).map(|_| post_json(hub.url("/api/v1/lots"), None, &body));
    let answers = futures::future::join_all(arms).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let lots = get(hub.url("/api/v1/lots"), None).await;
    let lots = lots.body.as_array().unwrap().clone();
    assert_eq!(lots.len(), 10);
    let still_armed: Vec<&serde_json::Value> =
        lots.iter().filter(|l| l["stopped_at"].is_null()).collect();
    assert_eq!(still_armed.len(), 1, "{lots:#?}");
    // An empty name is no name: one is made up.
    for lot in &lots {
        assert!(
            lot["name"].as_str().is_some_and(|n| n.starts_with("lot-")),
            "{lot}"
        );
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_device_keys_get_a_clear_error_not_a_500_nor_the_hubs_paths() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    // A name too long for a file system: cut, keeping its extension (a 500).
    let long = format!("{}.img", "n".repeat(5000));
    let answer = post_bytes(
        hub.url(&format!("/api/v1/images?name={long}")),
        None,
        image_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let name = answer.body["name"].as_str().unwrap();
    assert!(name.len() <= 200 && name.ends_with(".img"), "{name}");
    // An empty upload is refused naming the upload, not the hub's own
    // temporary file.
    let answer = post_bytes(hub.url("/api/v1/images?name=empty.img"), None, Vec::new()).await;
    assert_eq!(answer.status, 422, "{:?}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("the upload empty.img"), "{message}");
    assert!(!message.contains("uploads/"), "{message}");
    // A device key with a NUL (PostgreSQL's text holds none: a 500).
    let answer = get(hub.url("/api/v1/devices/DEMO-0001%00"), None).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    hub.stop().await;
}
