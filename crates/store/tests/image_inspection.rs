//! An image's inspection (schema 5): recorded with the image, kept when the
//! image is recorded again without one, and read back after reopening.

mod common;

use common::{image, TestStore};
use flashrack_store::{Records, Writes};

#[tokio::test]
async fn an_images_inspection_is_recorded_kept_and_read_back_after_reopening() {
    let t = TestStore::new("station-1").await;
    let inspection = r#"{"version":1,"size":4096,"table":{"kind":"gpt","partitions":[]}}"#;
    let mut img = image();
    img.inspection = Some(inspection.to_string());
    t.store
        .write(|b| Box::pin(b.record_image(&img)))
        .await
        .unwrap();
    assert_eq!(
        t.store
            .image(img.sha256)
            .await
            .unwrap()
            .unwrap()
            .inspection
            .as_deref(),
        Some(inspection)
    );

    // Recorded again without an inspection (a caller that does not know it):
    // the one recorded stays.
    let mut again = img.clone();
    again.inspection = None;
    again.name = "renamed.img".into();
    t.store
        .write(|b| Box::pin(b.record_image(&again)))
        .await
        .unwrap();
    let row = t.store.image(img.sha256).await.unwrap().unwrap();
    assert_eq!(row.name, "renamed.img");
    assert_eq!(row.inspection.as_deref(), Some(inspection));

    let path = t.path();
    t.store.close().await;
    let reopened = flashrack_store::Store::open_read_only(&path, "station-1")
        .await
        .unwrap();
    let rows = reopened.images().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].inspection.as_deref(), Some(inspection));
}
