//! A hub for tests: [`spawn_hub`] runs one on port 0 over a given database
//! (a `flashrack_testkit::pg::PgCluster`'s), with its directory in a
//! temporary directory.

use std::net::SocketAddr;

use crate::{Hub, HubConfig, HubDb};

/// A running hub; stopped when dropped.
pub struct TestHub {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its database.
    pub db: HubDb,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), crate::HubError>>>,
    /// The hub's directory (image cache).
    pub dir: tempfile::TempDir,
}

/// Starts a hub on 127.0.0.1, port 0, over `database_url`.
pub async fn spawn_hub(database_url: &str) -> TestHub {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = HubConfig::new(database_url, dir.path().join("hub"));
    config.listen = "127.0.0.1:0".parse().expect("an address");
    config.database_connections = 4;
    spawn_hub_with(config, dir).await
}

/// Starts a hub with `config`, keeping `dir` alive as long as it runs.
pub async fn spawn_hub_with(config: HubConfig, dir: tempfile::TempDir) -> TestHub {
    let hub = Hub::build(config).await.expect("the hub builds");
    let address = hub.address();
    let db = hub.db().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(hub.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestHub {
        address,
        db,
        stop: Some(stop),
        task: Some(task),
        dir,
    }
}

impl TestHub {
    /// The URL of `path` on this hub.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops the hub and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("the hub task")
                .expect("the hub stops cleanly");
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
