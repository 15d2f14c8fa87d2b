//! The web API through `oneshot` (no server) and through a real server on port 0:
//! every endpoint, with good and bad input.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_simrack::sim_hotplug::SimRackControl;
use flashrack_station::StationHandle;
use flashrack_web::{router, AccessPolicy, NamedToken, WebState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::{start_station, TestStation, MIB};

struct Rig {
    state: WebState,
    control: SimRackControl,
    journal: std::sync::Arc<flashrack_station::MemoryJournal>,
    image_sha: String,
    image_file: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    dir: tempfile::TempDir,
}

async fn rig(access: AccessPolicy) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    // The one directory imports by path may come from.
    std::fs::create_dir(dir.path().join("import")).unwrap();
    let image_file = dir.path().join("import/test.img");
    let TestStation {
        images,
        image_sha,
        station: handle,
        control,
        journal,
        stop,
    } = start_station(dir.path(), &image_file);
    let state = WebState {
        station: handle,
        images,
        reports: None,
        access,
        upload_dir: dir.path().join("uploads"),
        max_upload_bytes: 4 * MIB,
        max_image_bytes: 8 * MIB,
        import_dirs: vec![dir.path().join("import")],
        limits: Default::default(),
        shutting_down: None,
        events: Default::default(),
        fleet: None,
        url_imports: None,
        captures: None,
        builds: None,
        followed_runs: None,
    };
    Rig {
        state,
        control,
        journal,
        image_sha,
        image_file,
        stop: Some(stop),
        dir,
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Rig {
    fn app(&self) -> Router {
        router(self.state.clone())
    }

    fn station(&self) -> &StationHandle {
        &self.state.station
    }
}

async fn call(
    app: Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, value)
}

async fn get(rig: &Rig, uri: &str) -> (StatusCode, Value) {
    call(rig.app(), Method::GET, uri, None, None).await
}

async fn post(rig: &Rig, uri: &str, body: Value) -> (StatusCode, Value) {
    call(rig.app(), Method::POST, uri, Some(body), None).await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Asserts the answer is the station's 409 for a run being armed
/// (`StationError::Arming`); `asked` names the request in the failure.
fn refused_being_armed(asked: &str, status: StatusCode, reply: &Value) {
    assert_eq!(
        (status, error_code(reply)),
        (StatusCode::CONFLICT, "conflict"),
        "{asked}: {reply}"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("being armed")),
        "{asked}: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_station_ports_and_health() {
    let rig = rig(AccessPolicy::default()).await;
    let (status, body) = get(&rig, "/api/v1/health").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = get(&rig, "/api/v1/station").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ports"].as_array().unwrap().len(), 2);
    assert_eq!(body["run"], Value::Null);
    let (status, body) = get(&rig, "/api/v1/ports/A2").await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("empty"))
    );
    let (status, body) = get(&rig, "/api/v1/ports/Z9").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = get(&rig, "/api/v1/runs/current").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = get(&rig, "/api/v1/no/such/thing").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = get(&rig, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.as_str().unwrap().contains("<html"));
    let (status, body) = get(&rig, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body
        .as_str()
        .unwrap()
        .contains("flashrack_ports{station=\"web-test\",state=\"empty\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_path_does_not_take_is_405_as_json_with_the_allowed_methods() {
    let rig = rig(AccessPolicy::default()).await;
    for (method, uri, allowed) in [
        (Method::PUT, "/api/v1/runs", "GET,HEAD,POST"),
        (Method::DELETE, "/api/v1/station", "GET,HEAD"),
        (Method::GET, "/api/v1/runs/current/stop", "POST"),
        (Method::POST, "/metrics", "GET,HEAD"),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = rig.app().oneshot(request).await.unwrap();
        let status = response.status();
        let allow = response
            .headers()
            .get(header::ALLOW)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{method} {uri}: not JSON: {bytes:?}"));
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            "{method} {uri}: {body}"
        );
        assert_eq!(allow.as_deref(), Some(allowed), "{method} {uri}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("{method} {uri}"))),
            "{body}"
        );
    }
    // The run was not touched by the refused requests.
    assert_eq!(get(&rig, "/api/v1/station").await.1["run"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arming_stopping_and_starting_ports_with_good_and_bad_input() {
    let rig = rig(AccessPolicy::default()).await;
    // Malformed and wrong bodies.
    let bad = Request::post("/api/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let response = rig.app().oneshot(bad).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    for (body, code) in [
        (
            json!({"image": rig.image_sha, "surprise": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"image": rig.image_sha, "verify": "maybe"}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"verify": "hash"}), StatusCode::BAD_REQUEST),
        (
            json!({"image": rig.image_sha, "target_count": 0}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"image": "ffffffffffff"}), StatusCode::NOT_FOUND),
        (json!({"image": "ab"}), StatusCode::BAD_REQUEST),
        (
            json!({"image": rig.image_sha, "operator": "Ada\u{7}"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"image": rig.image_sha, "operator": "Ada\u{202E}ecalevoL"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"image": rig.image_sha, "lot": "L".repeat(101)}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"image": rig.image_sha, "target_count": 1e20}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, reply) = post(&rig, "/api/v1/runs", body.clone()).await;
        assert_eq!(status, code, "{body}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
        // A number out of range is said in numbers, not serde's type names.
        if body
            .get("target_count")
            .is_some_and(|n| n.as_f64() > Some(1e9))
        {
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("target_count")
                    && message.contains("expected a whole number from 0 to 4294967295"),
                "{message}"
            );
        }
    }
    let (status, body) = post(&rig, "/api/v1/ports/A1/start", json!({})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "conflict")
    );

    let (status, run) = post(
        &rig,
        "/api/v1/runs",
        json!({"image": &rig.image_sha[..10], "target_count": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["armed"], true);
    assert_eq!(run["remaining"], 5);
    let (status, _) = post(&rig, "/api/v1/runs", json!({"image": rig.image_sha})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = post(&rig, "/api/v1/ports/Z9/start", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(&rig, "/api/v1/ports/A1/start", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "an empty port cannot start");

    // A stick arrives and is written; the API shows it.
    rig.control
        .plug("p1", "SER-1", SimStickSpec::new("", 8 * MIB))
        .unwrap();
    let mut watch = rig.station().watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.ports[0].state == flashrack_station::PortState::Passed),
    )
    .await
    .unwrap()
    .unwrap();
    let (_, port) = get(&rig, "/api/v1/ports/A1").await;
    assert_eq!(port["verdict"]["verdict"], "pass");
    assert_eq!(port["device"]["serial"], "SER-1");
    let (status, _) = post(&rig, "/api/v1/ports/A1/start", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "rewrite on request");

    // Stop: malformed body, then no body, then again.
    let (status, _) = call(
        rig.app(),
        Method::POST,
        "/api/v1/runs/current/stop",
        Some(json!({"reason": 5})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A reason goes into the records and every report, printed on
    // terminals too: no control characters (an escape sequence, a NUL, a
    // newline), and at most 500 characters, counted as characters.
    for reason in [
        "bad\u{1b}[31m red".to_string(),
        "bad\nreason".to_string(),
        "nul\u{0}".to_string(),
        "spoof\u{202E}gnitirw".to_string(),
        "zero\u{200B}width".to_string(),
        "é".repeat(501),
    ] {
        let (status, body) = call(
            rig.app(),
            Method::POST,
            "/api/v1/runs/current/stop",
            Some(json!({ "reason": reason })),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reason:?}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("without control characters")),
            "{body}"
        );
    }
    let (_, run) = get(&rig, "/api/v1/runs/current").await;
    assert_eq!(run["armed"], true, "refused stops stop nothing");
    let (status, body) = call(
        rig.app(),
        Method::POST,
        "/api/v1/runs/current/stop",
        Some(json!({ "reason": "é".repeat(300) })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = call(
        rig.app(),
        Method::POST,
        "/api/v1/runs/current/stop",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, run) = get(&rig, "/api/v1/runs/current").await;
    assert_eq!(run["armed"], false);
    assert_eq!(run["stop_reason"], "operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_import_upload_lookup_and_delete() {
    let rig = rig(AccessPolicy::default()).await;
    let (status, list) = get(&rig, "/api/v1/images").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, image) = get(&rig, &format!("/api/v1/images/{}", rig.image_sha)).await;
    assert_eq!(
        (status, image["size"].as_u64()),
        (StatusCode::OK, Some(2 * MIB))
    );
    let (status, _) = get(&rig, "/api/v1/images/not-a-digest").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&rig, &format!("/api/v1/images/{}", "0".repeat(64))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Import by path: relative, missing, a directory, corrupt, good, again.
    let (status, _) = post(
        &rig,
        "/api/v1/images/import",
        json!({"path": "relative.img"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(
        &rig,
        "/api/v1/images/import",
        json!({"path": rig.dir.path().join("import/x.img")}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &rig,
        "/api/v1/images/import",
        json!({"path": rig.dir.path().join("import")}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let corrupt = rig.dir.path().join("import/corrupt.img.gz");
    std::fs::write(&corrupt, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4]).unwrap();
    let (status, body) = post(&rig, "/api/v1/images/import", json!({"path": corrupt})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = post(
        &rig,
        "/api/v1/images/import",
        json!({"path": rig.image_file, "sha256": "0".repeat(64)}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = post(
        &rig,
        "/api/v1/images/import",
        json!({"path": rig.image_file}),
    )
    .await;
    assert_eq!(
        (status, body["already_cached"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    // Uploads: good, empty, oversized, bad name.
    let upload = |uri: &str, bytes: Vec<u8>| Request::post(uri).body(Body::from(bytes)).unwrap();
    let new_image = flashrack_testkit::image_bytes(MIB as usize, 9, 64 * 1024);
    let response = rig
        .app()
        .oneshot(upload(
            "/api/v1/images/upload?name=new.img",
            new_image.clone(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["name"], "new.img");
    assert_eq!(
        body["sha256"],
        flashrack_core::Sha256Digest::of(&new_image).to_hex()
    );
    let response = rig
        .app()
        .oneshot(upload("/api/v1/images/upload?name=empty.img", Vec::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = rig
        .app()
        .oneshot(upload(
            "/api/v1/images/upload?name=big.img",
            vec![1u8; 5 * MIB as usize],
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let response = rig
        .app()
        .oneshot(upload("/api/v1/images/upload?name=..", vec![1u8; 10]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // A name in another script is kept as it is (it was `_n_code-__.img`);
    // a name that could spoof the reports loses its override.
    for (seed, name, kept) in [
        (
            10,
            "%C3%BCn%C3%AFcode-%E6%98%A0%E5%83%8F.img",
            "ünïcode-映像.img",
        ),
        (12, "photo%E2%80%AEgpj.img", "photo_gpj.img"),
    ] {
        let response = rig
            .app()
            .oneshot(upload(
                &format!("/api/v1/images/upload?name={name}"),
                flashrack_testkit::image_bytes(MIB as usize, seed, 64 * 1024),
            ))
            .await
            .unwrap();
        assert!(response.status().is_success(), "{name}");
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(body["name"], kept, "{name}: {body}");
    }
    // A wrong digest names the upload, not the station's temporary file.
    let wrong = flashrack_core::Sha256Digest::of(b"not this").to_hex();
    let response = rig
        .app()
        .oneshot(upload(
            &format!("/api/v1/images/upload?name=wrongsha.img&sha256={wrong}"),
            flashrack_testkit::image_bytes(MIB as usize, 11, 64 * 1024),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("the upload wrongsha.img"), "{message}");
    assert!(!message.contains("upload-"), "{message}");
    // Nothing is left behind in the upload directory.
    let leftovers = std::fs::read_dir(rig.dir.path().join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0);

    // Delete: refused while the armed run uses it, then allowed.
    post(&rig, "/api/v1/runs", json!({"image": rig.image_sha})).await;
    let (status, _) = call(
        rig.app(),
        Method::DELETE,
        &format!("/api/v1/images/{}", rig.image_sha),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    call(
        rig.app(),
        Method::POST,
        "/api/v1/runs/current/stop",
        None,
        None,
    )
    .await;
    let (status, _) = call(
        rig.app(),
        Method::DELETE,
        &format!("/api/v1/images/{}", rig.image_sha),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        rig.app(),
        Method::DELETE,
        &format!("/api/v1/images/{}", rig.image_sha),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_without_records_and_with_bad_parameters() {
    let rig = rig(AccessPolicy::default()).await;
    let (status, _) = get(&rig, "/api/v1/runs/1/report?format=csv").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = get(&rig, "/api/v1/runs/abc/report").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&rig, "/api/v1/runs/1/report?format=pdf").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&rig, "/api/v1/devices").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // A query string that does not parse is answered as every error is: a
    // JSON body saying what is wrong (it was axum's plain text).
    for uri in [
        "/api/v1/port-history?last=-1",
        "/api/v1/port-history?last=many",
        "/api/v1/runs/1/report?format=csv&format=json",
        "/api/v1/devices/SER-1/report?format=csv&format=html",
    ] {
        let (status, body) = get(&rig, uri).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{uri}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("query string")),
            "{uri}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_changes_need_the_operator_token() {
    let token = "correct-horse-battery";
    let rig = rig(AccessPolicy {
        token: Some(token.into()),
        public_read: false,
        ..AccessPolicy::default()
    })
    .await;
    let app = || rig.app();
    assert_eq!(
        call(app(), Method::GET, "/api/v1/station", None, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            app(),
            Method::GET,
            "/api/v1/station",
            None,
            Some("wrong-token-here")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(app(), Method::GET, "/api/v1/station", None, Some(token))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(app(), Method::GET, "/api/v1/health", None, None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(app(), Method::GET, "/", None, None).await.0,
        StatusCode::OK,
        "the page loads to ask for the token"
    );
    let arm = json!({"image": rig.image_sha});
    assert_eq!(
        call(app(), Method::POST, "/api/v1/runs", Some(arm.clone()), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // A token in the query string is for reading (EventSource) only.
    assert_eq!(
        call(
            app(),
            Method::POST,
            &format!("/api/v1/runs?token={token}"),
            Some(arm.clone()),
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            app(),
            Method::GET,
            &format!("/api/v1/station?token={token}"),
            None,
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED,
        "only the event stream and report downloads take a token in the URL"
    );
    // A report download may (no records here: 503, but not 401).
    assert_eq!(
        call(
            app(),
            Method::GET,
            &format!("/api/v1/runs/1/report?format=csv&token={token}"),
            None,
            None
        )
        .await
        .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(app(), Method::POST, "/api/v1/runs", Some(arm), Some(token))
            .await
            .0,
        StatusCode::CREATED
    );

    let open = rig.state.clone();
    let open = router(WebState {
        access: AccessPolicy {
            token: Some(token.into()),
            public_read: true,
            ..AccessPolicy::default()
        },
        ..open
    });
    assert_eq!(
        call(open.clone(), Method::GET, "/api/v1/station", None, None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(open, Method::POST, "/api/v1/runs/current/stop", None, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

/// A request with the headers a browser sends, and its status.
async fn browser(
    app: Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app.oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_site_can_neither_stop_the_run_nor_upload() {
    // Loopback, no token: the case where only the browser stands between a
    // page elsewhere and the station.
    let rig = rig(AccessPolicy::default()).await;
    let (status, _) = post(&rig, "/api/v1/runs", json!({"image": rig.image_sha})).await;
    assert_eq!(status, StatusCode::CREATED);
    let station = [("host", "127.0.0.1:8080")];
    let foreign = [
        ("host", "127.0.0.1:8080"),
        ("origin", "http://evil.example"),
        ("content-type", "text/plain"),
    ];

    // A simple request (no preflight): text/plain from a foreign origin.
    let (status, body) = browser(
        rig.app(),
        Method::POST,
        "/api/v1/runs/current/stop",
        &foreign,
        Body::from("{}"),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(rig.station().snapshot().run.unwrap().armed, "still armed");

    let new_image = flashrack_testkit::image_bytes(MIB as usize, 11, 64 * 1024);
    let (status, _) = browser(
        rig.app(),
        Method::POST,
        "/api/v1/images/upload?name=evil.img",
        &foreign,
        Body::from(new_image.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, list) = get(&rig, "/api/v1/images").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing was uploaded");

    // Without Origin, a foreign Referer or Sec-Fetch-Site gives it away too.
    for headers in [
        vec![
            ("host", "127.0.0.1:8080"),
            ("referer", "http://evil.example/x"),
        ],
        vec![("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")],
        vec![("host", "127.0.0.1:8080"), ("origin", "null")],
    ] {
        let (status, _) = browser(
            rig.app(),
            Method::POST,
            "/api/v1/ports/A1/start",
            &headers,
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }

    // The station's own page may: same origin as the Host it asked.
    let own = [
        ("host", "127.0.0.1:8080"),
        ("origin", "http://127.0.0.1:8080"),
    ];
    let (status, _) = browser(
        rig.app(),
        Method::POST,
        "/api/v1/images/upload?name=own.img",
        &own,
        Body::from(new_image),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = browser(
        rig.app(),
        Method::POST,
        "/api/v1/runs/current/stop",
        &own,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!rig.station().snapshot().run.unwrap().armed);
    // Reading from the station's names is open as before.
    let (status, _) = browser(
        rig.app(),
        Method::GET,
        "/api/v1/station",
        &station,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_station_does_not_have_is_refused_dns_rebinding() {
    let rig = rig(AccessPolicy {
        allowed_hosts: vec!["station.lab".into()],
        ..AccessPolicy::default()
    })
    .await;
    // evil.example rebound to 127.0.0.1: the browser thinks the page and the
    // API share an origin and sends Host: evil.example.
    for uri in ["/api/v1/station", "/api/v1/events", "/", "/metrics"] {
        let (status, body) = browser(
            rig.app(),
            Method::GET,
            uri,
            &[("host", "evil.example:8080")],
            Body::empty(),
        )
        .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{uri}"
        );
    }
    let (status, _) = browser(
        rig.app(),
        Method::POST,
        "/api/v1/runs",
        &[
            ("host", "evil.example:8080"),
            ("origin", "http://evil.example:8080"),
            ("content-type", "application/json"),
        ],
        Body::from(json!({"image": rig.image_sha}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(rig.station().snapshot().run.is_none());
    for host in [
        "127.0.0.1:8080",
        "localhost:8080",
        "[::1]:8080",
        "station.lab:8080",
    ] {
        let (status, _) = browser(
            rig.app(),
            Method::GET,
            "/api/v1/station",
            &[("host", host)],
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_by_path_reads_only_the_configured_directories() {
    let rig = rig(AccessPolicy::default()).await;
    let import = rig.dir.path().join("import");
    let outside = rig.dir.path().join("outside.img");
    std::fs::write(
        &outside,
        flashrack_testkit::image_bytes(MIB as usize, 12, 4096),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, import.join("link.img")).unwrap();
    std::os::unix::fs::symlink("/etc", import.join("etc")).unwrap();
    for path in [
        std::path::PathBuf::from("/etc/shadow"),
        std::path::PathBuf::from("/proc/self/environ"),
        std::path::PathBuf::from("/etc/passwd"),
        std::path::PathBuf::from("/nonexistent/secret.img"),
        outside.clone(),
        import.join("link.img"),
        import.join("etc/passwd"),
        import.join("../outside.img"),
        import.join("../../../../etc/shadow"),
    ] {
        let (status, body) = post(&rig, "/api/v1/images/import", json!({ "path": path })).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{path:?}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("import_dirs"),
            "{body}"
        );
    }
    let (_, list) = get(&rig, "/api/v1/images").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing was imported");

    // Inside: a FIFO is refused at once, a file is imported.
    let fifo = import.join("pipe.img");
    flashrack_testkit::run("mkfifo", &[fifo.to_str().unwrap()]);
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(60),
        post(&rig, "/api/v1/images/import", json!({ "path": fifo })),
    )
    .await
    .expect("a FIFO does not block the import");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a regular file"));
    let inside = import.join("new.img");
    let bytes = flashrack_testkit::image_bytes(MIB as usize, 13, 4096);
    std::fs::write(&inside, &bytes).unwrap();
    let (status, body) = post(&rig, "/api/v1/images/import", json!({ "path": inside })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["sha256"],
        flashrack_core::Sha256Digest::of(&bytes).to_hex()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_larger_than_the_largest_target_is_refused() {
    let rig = rig(AccessPolicy::default()).await;
    // 64 MiB of a pattern in a small gzip, against the rig's 8 MiB maximum.
    let raw: Vec<u8> = (0..64 * MIB as usize)
        .map(|i| (i / 4096) as u8 | 1)
        .collect();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &raw).unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < MIB as usize);
    let path = rig.dir.path().join("import/bomb.img.gz");
    std::fs::write(&path, &bomb).unwrap();
    let (status, body) = post(&rig, "/api/v1/images/import", json!({ "path": path })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let response = rig
        .app()
        .oneshot(
            Request::post("/api/v1/images/upload?name=bomb.img.gz")
                .body(Body::from(bomb))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, list) = get(&rig, "/api/v1/images").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let leftovers = std::fs::read_dir(rig.dir.path().join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_on_port_zero_streams_a_snapshot_then_changes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = rig(AccessPolicy::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flashrack_web::serve(listener, rig.state.clone(), async {
        let _ = stop_rx.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = vec![0u8; 16384];
    // The first event is the snapshot.
    while !seen.contains("event: snapshot") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    // A change arrives as an event without asking again.
    rig.control
        .plug("p2", "SER-2", SimStickSpec::new("", 8 * MIB))
        .unwrap();
    while !seen.contains("event: port") || !seen.contains("SER-2") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // Shutting down with the client still listening: the stream ends and the
    // server stops (an endless stream must not hold the shutdown up).
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops with an event stream open")
        .unwrap()
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the client sees its stream end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_view_names_the_run_and_image_of_its_verdict_and_metrics_count_apart() {
    let rig = rig(AccessPolicy::default()).await;
    let (status, run) = post(
        &rig,
        "/api/v1/runs",
        json!({"image": rig.image_sha, "target_count": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["interrupted"], 0);
    // A stick in flight (held in the middle of its write until the run is
    // stopped) covers the target: the next one waits.
    rig.control
        .plug(
            "p1",
            "SLOW",
            SimStickSpec::new("", 8 * MIB).stall_after_written(MIB),
        )
        .unwrap();
    let mut watch = rig.station().watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.ports[0].state == flashrack_station::PortState::Writing),
    )
    .await
    .unwrap()
    .unwrap();
    rig.control
        .plug("p2", "NEXT", SimStickSpec::new("", 8 * MIB))
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.ports[1].state == flashrack_station::PortState::Waiting),
    )
    .await
    .unwrap()
    .unwrap();
    let (_, port) = get(&rig, "/api/v1/ports/A2").await;
    assert_eq!(port["state"], "waiting");
    let (_, metrics) = get(&rig, "/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("flashrack_ports{station=\"web-test\",state=\"waiting\"} 1"),
        "{metrics}"
    );
    // Stopped mid-write: interrupted, not failed, in the run view and metrics.
    let (status, _) = call(
        rig.app(),
        Method::POST,
        "/api/v1/runs/current/stop",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Told to stop, the stick let go stops at its next safe point.
    rig.control.stick_at("p1").unwrap().1.release();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.run.as_ref().is_some_and(|r| r.active == 0)),
    )
    .await
    .unwrap()
    .unwrap();
    let (_, run) = get(&rig, "/api/v1/runs/current").await;
    assert_eq!(
        (&run["failed"], &run["interrupted"]),
        (&json!(0), &json!(1)),
        "{run}"
    );
    let (_, metrics) = get(&rig, "/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("flashrack_run_failed{station=\"web-test\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flashrack_run_interrupted{station=\"web-test\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flashrack_ports{station=\"web-test\",state=\"waiting\"} 0"),
        "the waiting stick is detected again once the run is over: {metrics}"
    );
    // The interrupted verdict names its run and image.
    let (_, port) = get(&rig, "/api/v1/ports/A1").await;
    assert_eq!(port["verdict"]["reason"], "interrupted", "{port}");
    assert_eq!(port["verdict_run"]["run_id"], run["id"], "{port}");
    assert_eq!(port["verdict_run"]["image_name"], "test.img", "{port}");
    assert_eq!(port["verdict_run"]["image_sha256"], rig.image_sha, "{port}");
}

#[tokio::test(start_paused = true)]
async fn a_quiet_event_stream_pings_so_that_a_client_can_tell_it_from_a_lost_one() {
    use futures::StreamExt;
    let rig = rig(AccessPolicy::default()).await;
    let response = rig
        .app()
        .oneshot(Request::get("/api/v1/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let mut body = response.into_body().into_data_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: snapshot"));
    let started = tokio::time::Instant::now();
    // Nothing happens at the station: time runs until the ping.
    let next = body.next().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&next).into_owned();
    assert!(text.contains("event: ping\n"), "{text:?}");
    assert!(
        text.contains("data: "),
        "EventSource only dispatches events with data: {text:?}"
    );
    assert_eq!(started.elapsed(), flashrack_web::events::PING_INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_port_shows_the_guards_code_and_its_sentence() {
    let rig = rig(AccessPolicy::default()).await;
    let (status, _) = post(&rig, "/api/v1/runs", json!({"image": rig.image_sha})).await;
    assert_eq!(status, StatusCode::CREATED);
    // Larger than the guard's default maximum of 256 GB.
    rig.control
        .plug("p2", "HUGE", SimStickSpec::new("", 300_000_000_000))
        .unwrap();
    let mut watch = rig.station().watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.ports[1].state == flashrack_station::PortState::Refused),
    )
    .await
    .unwrap()
    .unwrap();
    let (status, port) = get(&rig, "/api/v1/ports/A2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(port["state"], "refused");
    assert_eq!(port["refusal"]["code"], "too_large", "{port}");
    assert!(
        port["refusal"]["message"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{port}"
    );
    let (_, run) = get(&rig, "/api/v1/runs/current").await;
    assert_eq!(
        (run["refused"].as_u64(), run["failed"].as_u64()),
        (Some(1), Some(0))
    );
    let (_, metrics) = get(&rig, "/metrics").await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("flashrack_run_refused{station=\"web-test\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flashrack_run_failed{station=\"web-test\"} 0"),
        "{metrics}"
    );
}

/// GETs `uri` through the router: status, content type and body as text.
async fn fetch_text(rig: &Rig, uri: &str) -> (StatusCode, String, String) {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = rig.app().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_modules_are_served_as_javascript_and_every_import_resolves() {
    let rig = rig(AccessPolicy::default()).await;
    let (status, _, index) = fetch_text(&rig, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        index.contains(r#"<script type="module" src="/js/main.js"></script>"#),
        "the page loads its entry module"
    );
    // Follow every `from './x.js'` from the entry module: each is served, as
    // JavaScript (a browser refuses to run a module served as anything else).
    let mut todo = vec!["main.js".to_string()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let (status, content_type, body) = fetch_text(&rig, &format!("/js/{name}")).await;
        assert_eq!(status, StatusCode::OK, "/js/{name}");
        assert!(
            content_type.starts_with("text/javascript"),
            "/js/{name} is served as {content_type}"
        );
        for part in body.split("from './").skip(1) {
            todo.push(part.split('\'').next().unwrap().to_string());
        }
    }
    let served: std::collections::BTreeSet<String> = flashrack_web::assets::MODULES
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(
        seen, served,
        "every embedded module is used, and only those"
    );
    let (status, _, _) = fetch_text(&rig, "/js/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = fetch_text(&rig, "/app.js").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the old single script is gone"
    );
}

/// Arms a run with `token` and `operator` in the body, stopping it again if
/// it was armed: the status, and the operator the run recorded.
async fn arm_as(rig: &Rig, token: Option<&str>, operator: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({"image": rig.image_sha});
    if let Some(operator) = operator {
        body["operator"] = json!(operator);
    }
    let (status, run) = call(rig.app(), Method::POST, "/api/v1/runs", Some(body), token).await;
    if status == StatusCode::CREATED {
        let (stopped, reply) = call(
            rig.app(),
            Method::POST,
            "/api/v1/runs/current/stop",
            Some(json!({})),
            token,
        )
        .await;
        assert_eq!(stopped, StatusCode::NO_CONTENT, "{reply}");
        return (status, run["options"]["operator"].clone());
    }
    (status, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_tokens_holder_is_who_armed_the_run_and_a_form_cannot_name_another() {
    let shared = "shared-token-of-the-lab";
    let ada = "ada-s-own-token-1234";
    let grace = "grace-s-own-token-5678";
    let rig = rig(AccessPolicy {
        token: Some(shared.into()),
        operators: vec![
            NamedToken {
                name: "Ada Lovelace".into(),
                token: ada.into(),
            },
            NamedToken {
                name: "Grace Hopper".into(),
                token: grace.into(),
            },
        ],
        ..AccessPolicy::default()
    })
    .await;
    // Each named token records its own holder, with or without the name.
    assert_eq!(
        arm_as(&rig, Some(ada), None).await,
        (StatusCode::CREATED, json!("Ada Lovelace"))
    );
    assert_eq!(
        arm_as(&rig, Some(grace), Some("Grace Hopper")).await,
        (StatusCode::CREATED, json!("Grace Hopper"))
    );
    // Another name with a named token is refused, and nothing is armed.
    let (status, reply) = arm_as(&rig, Some(ada), Some("Grace Hopper")).await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Ada Lovelace"),
        "{reply}"
    );
    assert!(rig.station().snapshot().run.is_none_or(|run| !run.armed));
    // The shared token names nobody: the body's name is recorded as given.
    assert_eq!(
        arm_as(&rig, Some(shared), Some("Night shift")).await,
        (StatusCode::CREATED, json!("Night shift"))
    );
    // No token, or an unknown one, is refused as before.
    assert_eq!(arm_as(&rig, None, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        arm_as(&rig, Some("ada-s-own-token-12345"), None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_tokens_alone_guard_a_station_and_on_loopback_still_name_their_holder() {
    let ada = "ada-s-own-token-1234";
    let operators = vec![NamedToken {
        name: "Ada Lovelace".into(),
        token: ada.into(),
    }];
    // Off loopback with only named tokens: a change needs one.
    let guarded = rig(AccessPolicy {
        operators: operators.clone(),
        ..AccessPolicy::default()
    })
    .await;
    assert_eq!(
        arm_as(&guarded, None, Some("Ada Lovelace")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        arm_as(&guarded, Some(ada), None).await,
        (StatusCode::CREATED, json!("Ada Lovelace"))
    );
    // On loopback nothing needs a token, but a named one still names its
    // holder and cannot be given another name.
    let local = rig(AccessPolicy {
        operators,
        loopback: true,
        ..AccessPolicy::default()
    })
    .await;
    assert_eq!(
        arm_as(&local, None, Some("Someone")).await,
        (StatusCode::CREATED, json!("Someone"))
    );
    assert_eq!(
        arm_as(&local, Some(ada), None).await,
        (StatusCode::CREATED, json!("Ada Lovelace"))
    );
    assert_eq!(
        arm_as(&local, Some(ada), Some("Someone")).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_like_installer_iso_is_shown_and_refused_for_a_raw_run_unless_forced() {
    let rig = rig(AccessPolicy::default()).await;
    // Named like anything but an ISO: inspection goes by content.
    let iso = rig.dir.path().join("import/quarterly-report.img");
    flashrack_testkit::iso::windows_like_iso(&iso);
    let (status, image) = post(&rig, "/api/v1/images/import", json!({"path": iso})).await;
    assert_eq!(status, StatusCode::CREATED, "{image}");
    assert_eq!(
        image["inspection"]["iso"]["windows_installer"], true,
        "{image}"
    );
    assert_eq!(image["inspection"]["iso"]["hybrid"], false);
    assert_eq!(image["inspection"]["os"]["name"], "Windows installer");
    assert!(image["raw_write_refusal"]["reason"]
        .as_str()
        .unwrap()
        .contains("Windows installer ISO"));
    let sha = image["sha256"].as_str().unwrap().to_string();
    let (_, listed) = get(&rig, "/api/v1/images").await;
    let listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sha256"] == sha.as_str())
        .cloned()
        .unwrap();
    assert!(
        listed["summary"].as_str().unwrap().contains("not hybrid"),
        "{listed}"
    );
    // The plain test image is not refused.
    let (_, plain) = get(&rig, &format!("/api/v1/images/{}", rig.image_sha)).await;
    assert_eq!(plain["raw_write_refusal"], Value::Null);

    let (status, body) = post(&rig, "/api/v1/runs", json!({"image": sha})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("refused for a raw run") && message.contains("force_raw"),
        "{message}"
    );
    assert!(rig.station().snapshot().run.is_none(), "nothing armed");

    let (status, run) = post(
        &rig,
        "/api/v1/runs",
        json!({"image": sha, "force_raw": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(
        run["options"]["force_raw"], true,
        "the force is kept with the run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_audit_and_retry_runs_are_armed_over_the_api_and_bad_ones_refused() {
    let rig = rig(AccessPolicy::default()).await;
    for body in [
        json!({"image": rig.image_sha, "sample": 0}),
        json!({"image": rig.image_sha, "sample": 100}),
        json!({"image": rig.image_sha, "sample": "five"}),
        json!({"image": rig.image_sha, "sample": 5, "verify": "none"}),
        json!({"image": rig.image_sha, "audit": true, "verify": "none"}),
        json!({"image": rig.image_sha, "audit": true, "retries": 1}),
        json!({"image": rig.image_sha, "retries": 11}),
        json!({"image": rig.image_sha, "retries": -1}),
    ] {
        let (status, reply) = post(&rig, "/api/v1/runs", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
    }
    // Nothing to retry without an armed run.
    let (status, _) = post(&rig, "/api/v1/runs/current/retry-failed", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, run) = post(
        &rig,
        "/api/v1/runs",
        json!({"image": rig.image_sha, "sample": 2.5, "retries": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["options"]["sample"], 2.5);
    assert_eq!(run["options"]["retries"], 2);
    rig.control
        .plug("p1", "SER-1", SimStickSpec::new("", 8 * MIB))
        .unwrap();
    let mut watch = rig.station().watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.ports[0].state == flashrack_station::PortState::Passed),
    )
    .await
    .unwrap()
    .unwrap();
    let (_, port) = get(&rig, "/api/v1/ports/A1").await;
    assert_eq!(port["figures"]["verify_method"], "sampled", "{port}");
    assert_eq!(port["figures"]["sample"]["percent"], 2.5);
    assert!(port["figures"]["read_back_sha256"].is_null());
    // Nothing failed: nothing to retry.
    let (status, reply) = post(&rig, "/api/v1/runs/current/retry-failed", json!({})).await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"ports": []})));
}

/// An 8 MiB ext4 image holding 2 MiB of data, made by `mkfs.ext4 -d`.
fn ext4_image(dir: &std::path::Path, path: &std::path::Path) {
    let root = dir.join("ext4-root");
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..2 * MIB as usize)
        .map(|i| (i * 31 % 253) as u8 | 1)
        .collect();
    std::fs::write(root.join("data.bin"), data).unwrap();
    std::fs::File::create(path)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(path)
        .output()
        .expect("run mkfs.ext4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sparse_runs_are_armed_for_an_image_with_a_block_map_and_refused_otherwise() {
    let rig = rig(AccessPolicy::default()).await;
    // Imported by path, an ext4 image gets a map from its allocation; the
    // test image (random bytes) has none.
    let file = rig.dir.path().join("import/fs.img");
    ext4_image(rig.dir.path(), &file);
    let (status, imported) = post(&rig, "/api/v1/images/import", json!({"path": file})).await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    let sha = imported["sha256"].as_str().unwrap().to_string();
    let map = &imported["block_map"];
    flashrack_testkit::bmap::assert_generated_map(map, "ext4", 8 * MIB, 2 * MIB, 8 * MIB);
    let (_, shown) = get(&rig, &format!("/api/v1/images/{sha}")).await;
    assert_eq!(&shown["block_map"], map);
    let (_, listed) = get(&rig, "/api/v1/images").await;
    let row = |sha: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["sha256"] == sha)
            .unwrap_or_else(|| panic!("{sha} not in {listed}"))
            .clone()
    };
    assert_eq!(&row(&sha)["block_map"], map);
    assert!(row(&rig.image_sha)["block_map"].is_null(), "{listed}");

    // A sparse value that is not a boolean: a clear 400, nothing armed.
    for bad in [json!("yes"), json!(1), json!(null)] {
        let body = json!({"image": sha, "sparse": bad});
        let (status, reply) = post(&rig, "/api/v1/runs", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert!(reply.to_string().contains("sparse"), "{body}: {reply}");
    }
    // An image with no map: 422 with the reason.
    let (status, reply) = post(
        &rig,
        "/api/v1/runs",
        json!({"image": rig.image_sha, "sparse": true}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(
        reply
            .to_string()
            .contains("the image has no block map, so it can only be written whole"),
        "{reply}"
    );
    let (_, current) = get(&rig, "/api/v1/runs/current").await;
    assert!(current["armed"] != json!(true), "{current}");

    // The mapped image: armed, sparse, and a stick passes.
    let (status, run) = post(&rig, "/api/v1/runs", json!({"image": sha, "sparse": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["options"]["sparse"], true, "{run}");
    assert!(
        run["options"]["sparse_map"]
            .as_str()
            .is_some_and(|m| m.starts_with("generated from") || m.starts_with("bmap file")),
        "the run says which map: {run}"
    );
    rig.control
        .plug("p1", "SER-1", SimStickSpec::new("", 8 * MIB))
        .unwrap();
    let mut watch = rig.station().watch();
    tokio::time::timeout(
        Duration::from_secs(20),
        watch.wait_for(|s| s.ports[0].state == flashrack_station::PortState::Passed),
    )
    .await
    .unwrap()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_with_a_bad_name_is_refused_and_one_on_a_station_that_does_not_capture_is_404() {
    let rig = rig(AccessPolicy::default()).await;
    let (status, body) = post(&rig, "/api/v1/images/capture", json!({ "name": "../x" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be 1-128 letters"),
        "{body}"
    );
    let (status, body) = post(&rig, "/api/v1/images/capture", json!({ "name": "golden" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = get(&rig, "/api/v1/images/captures").await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
}

/// The application's side of followed runs, counting what it is asked: a
/// follow that reached it would have begun its download.
#[derive(Default)]
struct CountedImports {
    asked: std::sync::atomic::AtomicUsize,
}

impl flashrack_web::FollowedRuns for CountedImports {
    fn arm(
        &self,
        _request: flashrack_web::FollowArm,
    ) -> futures::future::BoxFuture<'_, Result<flashrack_web::Followed, flashrack_web::AppError>>
    {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Err(flashrack_web::AppError::unprocessable("not served here")) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_while_a_run_is_being_armed_is_refused_409_before_its_import_begins() {
    let mut rig = rig(AccessPolicy::default()).await;
    let imports = std::sync::Arc::new(CountedImports::default());
    rig.state.followed_runs = Some(imports.clone());
    // The records take the run's start slowly: it is being armed.
    rig.journal.hold_runs();
    let arming = tokio::spawn(call(
        rig.app(),
        Method::POST,
        "/api/v1/runs",
        Some(json!({ "image": rig.image_sha })),
        None,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rig.station().snapshot().arming.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never shown arming");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for body in [
        json!({ "download": { "url": "http://127.0.0.1:9/os.img" } }),
        json!({ "file": { "path": rig.image_file.with_file_name("other.img") } }),
    ] {
        let (status, reply) = post(&rig, "/api/v1/runs", body.clone()).await;
        refused_being_armed(&body.to_string(), status, &reply);
    }
    assert_eq!(
        imports.asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a refused follow began its import"
    );
    rig.journal.release_runs();
    let (status, run) = tokio::time::timeout(Duration::from_secs(10), arming)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{run}");
    // Once armed, a follow is refused as before (AlreadyArmed), still
    // before its import.
    let (status, _) = post(
        &rig,
        "/api/v1/runs",
        json!({ "download": { "url": "http://127.0.0.1:9/os.img" } }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(imports.asked.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A plain arm of the rig's cached image, as the station's handle takes it.
fn arm_request(rig: &Rig) -> flashrack_station::ArmRequest {
    let image = rig.state.images.find(&rig.image_sha).unwrap();
    flashrack_station::ArmRequest {
        image: flashrack_engine::SourceImage {
            path: image.path.clone(),
            manifest: image.manifest.clone(),
            referenced: image.meta.reference.is_some(),
        },
        image_name: image.meta.original_name.clone(),
        options: flashrack_station::RunOptions::default(),
        sparse: None,
    }
}

/// Waits until the records hold a run's start or stop (`hold_runs`).
async fn until_run_held(rig: &Rig) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rig.journal.runs_held() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_while_an_arm_waits_for_a_runs_stop_is_refused_409_before_its_import_begins() {
    let mut rig = rig(AccessPolicy::default()).await;
    let imports = std::sync::Arc::new(CountedImports::default());
    rig.state.followed_runs = Some(imports.clone());
    let (status, first) = post(&rig, "/api/v1/runs", json!({ "image": rig.image_sha })).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // The records take the run's stop slowly: it is being stopped.
    rig.journal.hold_runs();
    let stopping = tokio::spawn(call(
        rig.app(),
        Method::POST,
        "/api/v1/runs/current/stop",
        None,
        None,
    ));
    until_run_held(&rig).await;
    // A plain arm waits for the stop's record (its command sent before the
    // follow is asked).
    let waiting = flashrack_testkit::tasks::sent({
        let station = rig.station().clone();
        let request = arm_request(&rig);
        async move { station.arm(request).await }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "answered before the stop's record");
    // The follow would be refused once its import has begun (the waiting
    // arm is armed first): it is refused now, before anything is imported.
    for body in [
        json!({ "download": { "url": "http://127.0.0.1:9/os.img" } }),
        json!({ "file": { "path": rig.image_file.with_file_name("other.img") } }),
    ] {
        let (status, reply) = tokio::time::timeout(
            Duration::from_secs(10),
            post(&rig, "/api/v1/runs", body.clone()),
        )
        .await
        .expect("answered while the stop is being recorded");
        refused_being_armed(&body.to_string(), status, &reply);
    }
    assert_eq!(
        imports.asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a refused follow began its import"
    );
    rig.journal.release_runs();
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let next = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(next.id.0, first["id"].as_i64().unwrap());
}

/// The application's side of followed runs, held by the test: once let go
/// (one permit each), it answers that the cache knew the image (the rig's),
/// with the request's claim, as the application does.
struct FoundCached {
    image: flashrack_image::CachedImage,
    asked: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl flashrack_web::FollowedRuns for FoundCached {
    fn arm(
        &self,
        request: flashrack_web::FollowArm,
    ) -> futures::future::BoxFuture<'_, Result<flashrack_web::Followed, flashrack_web::AppError>>
    {
        Box::pin(async move {
            self.asked.notify_one();
            self.release.acquire().await.unwrap().forget();
            Ok(flashrack_web::Followed::Cached(
                Box::new(self.image.clone()),
                request.claim,
            ))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follows_claim_is_shown_refuses_other_arms_arms_its_run_and_is_released_when_dropped() {
    let mut rig = rig(AccessPolicy::default()).await;
    let found = std::sync::Arc::new(FoundCached {
        image: rig.state.images.find(&rig.image_sha).unwrap(),
        asked: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
    });
    rig.state.followed_runs = Some(found.clone());
    let url = "http://127.0.0.1:9/images/os%20v2.img";
    let follow = tokio::spawn(call(
        rig.app(),
        Method::POST,
        "/api/v1/runs",
        Some(json!({ "download": { "url": url } })),
        None,
    ));
    tokio::time::timeout(Duration::from_secs(10), found.asked.notified())
        .await
        .expect("the follow reaches the application");
    // The station holds the right to arm for it: the snapshot says which
    // run is being armed, and another arm is refused.
    let (_, station) = get(&rig, "/api/v1/station").await;
    assert_eq!(station["arming"]["state"], "claimed", "{station}");
    assert_eq!(station["arming"]["source"], url, "{station}");
    assert_eq!(station["arming"]["image_name"], "os v2.img", "{station}");
    assert!(station["run"].is_null(), "{station}");
    let (status, reply) = post(&rig, "/api/v1/runs", json!({ "image": rig.image_sha })).await;
    refused_being_armed("a plain arm while a claim is held", status, &reply);
    found.release.add_permits(1);
    let (status, run) = tokio::time::timeout(Duration::from_secs(10), follow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["image_sha256"], rig.image_sha.as_str(), "{run}");
    let (_, station) = get(&rig, "/api/v1/station").await;
    assert!(station.get("arming").is_none(), "{station}");
    assert_eq!(station["run"]["id"], run["id"], "{station}");

    // A follow whose request is dropped (its client left) while the
    // application holds it lets its claim go: the station is free.
    let (status, _) = post(&rig, "/api/v1/runs/current/stop", json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let left = tokio::time::timeout(
        Duration::from_millis(300),
        call(
            rig.app(),
            Method::POST,
            "/api/v1/runs",
            Some(json!({ "download": { "url": url } })),
            None,
        ),
    )
    .await;
    assert!(left.is_err(), "answered: {left:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rig.station().snapshot().arming.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, again) = post(&rig, "/api/v1/runs", json!({ "image": rig.image_sha })).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
}
