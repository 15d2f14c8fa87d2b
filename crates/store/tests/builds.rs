//! Bootable builds in the records (table `bootable_builds`): started, staged,
//! ended once, and found under way after a crash at the next start.

mod common;

use common::{TestStore, T0};
use flashrack_core::{BuildStage, BuildState, Sha256Digest};
use flashrack_store::{BuildEnd, BuiltLayout, NewBuild, INTERRUPTED_DETAIL};

fn new_build(name: &str) -> NewBuild {
    NewBuild {
        source_sha256: Sha256Digest::of(b"an installer iso"),
        source_name: "quarterly.iso".into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn a_build_is_recorded_stage_by_stage_and_ends_once() {
    let t = TestStore::new("rack-1").await;
    let id = t.store.build_started(new_build("q-usb.img")).await.unwrap();
    assert!(t
        .store
        .build_stage(id, BuildStage::Partitioning)
        .await
        .unwrap());
    let record = t.store.build(id).await.unwrap().unwrap();
    assert_eq!(record.state, BuildState::Building);
    assert_eq!(record.stage, Some(BuildStage::Partitioning));
    assert_eq!((record.started_at, record.finished_at), (T0, None));

    t.clock.advance(1500);
    let layout = Sha256Digest::of(b"the layout");
    let built = BuildEnd::Built {
        image: layout,
        size: 48 << 20,
        reused: false,
        split: vec![("sources/install.wim".into(), 3)],
    };
    assert!(t.store.build_ended(id, built).await.unwrap());
    // Ended: neither a later stage nor another end changes it.
    assert!(!t.store.build_stage(id, BuildStage::Hashing).await.unwrap());
    let cancelled = BuildEnd::Cancelled {
        detail: "too late".into(),
    };
    assert!(!t.store.build_ended(id, cancelled).await.unwrap());
    let record = t.store.build(id).await.unwrap().unwrap();
    assert_eq!(record.state, BuildState::Built);
    assert_eq!(record.stage, Some(BuildStage::Partitioning));
    assert_eq!(record.finished_at, Some(T0 + 1500));
    assert_eq!(
        record.built,
        Some(BuiltLayout {
            image: layout,
            size: 48 << 20,
            reused: false,
            split: vec![("sources/install.wim".to_string(), 3)],
        })
    );
    assert_eq!(record.detail, None);
    assert_eq!(t.store.build(id + 1).await.unwrap(), None);
}

#[tokio::test]
async fn builds_under_way_when_the_station_stopped_are_interrupted_at_the_next_start() {
    let t = TestStore::new("rack-1").await;
    let done = t.store.build_started(new_build("a.img")).await.unwrap();
    let failed = BuildEnd::Failed {
        detail: "mcopy failed".into(),
    };
    t.store.build_ended(done, failed).await.unwrap();
    let crashed = t.store.build_started(new_build("b.img")).await.unwrap();
    t.store
        .build_stage(crashed, BuildStage::CopyingFiles)
        .await
        .unwrap();
    // The station dies here; the next start finds the build under way.
    let store = t.reopen("rack-1").await;
    assert_eq!(store.interrupt_builds().await.unwrap(), 1);
    assert_eq!(store.interrupt_builds().await.unwrap(), 0);
    let builds = store.builds().await.unwrap();
    assert_eq!(
        builds
            .iter()
            .map(|b| (b.id, b.state, b.stage))
            .collect::<Vec<_>>(),
        vec![
            (
                crashed,
                BuildState::Interrupted,
                Some(BuildStage::CopyingFiles)
            ),
            (done, BuildState::Failed, None),
        ],
        "newest first"
    );
    assert_eq!(builds[0].detail.as_deref(), Some(INTERRUPTED_DETAIL));
    assert_eq!(builds[1].detail.as_deref(), Some("mcopy failed"));
    // Its thread, had it lived on, could not record another end over it.
    let late = BuildEnd::Cancelled {
        detail: "late".into(),
    };
    assert!(!store.build_ended(crashed, late).await.unwrap());
}
