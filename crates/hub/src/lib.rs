//! The fleet hub: the central server of a lab's duplication stations.
//!
//! Each station keeps its own SQLite records as the durable truth and ships
//! them, through its outbox, to the hub; the hub stores every station's rows
//! in PostgreSQL, idempotently by (station, sequence), and serves them to
//! operators. It knows no engine, no hardware and no station internals: it
//! speaks `flashrack-fleet`'s protocol over HTTP (`flashrack-http`'s
//! plumbing) and SQL (its own [`pg`] module), nothing else.
//!
//! The hub is stateless: several hub processes may serve one database. What
//! one process learns reaches the others through PostgreSQL's
//! `LISTEN/NOTIFY` on [`pg::CHANNEL`].
//!
//! Layout:
//! - [`config`]: [`HubConfig`], read from `hub.toml`;
//! - [`pg`]: every SQL statement (migrations in `migrations/postgres/`);
//! - [`api`]: the HTTP routes;
//! - [`watch`]: the process's `LISTEN` connection, turned into fresh views
//!   for the operators' streams and wake-ups for the stations' long-polls;
//! - [`Hub`]: [`Hub::build`] then [`Hub::run_until_stopped`], as the station's
//!   application does.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod pg;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::{ConfigError, HubConfig};
pub use pg::{HubDb, PgError};

/// Why the hub cannot start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] PgError),
    /// Listening beyond loopback without any operator token.
    #[error("refusing to listen on {0} (not loopback) without an operator token: make one with `flashrack hub token add --operator NAME`")]
    NoToken(SocketAddr),
    /// The listen address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The hub's directory cannot be made.
    #[error("cannot create {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The hub's image cache cannot be opened.
    #[error("the hub's image cache: {0}")]
    Images(flashrack_image::ImageError),
    /// The server failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// A hub, built and bound, ready to run.
pub struct Hub {
    /// The bound address (a port 0 resolved).
    address: SocketAddr,
    listener: tokio::net::TcpListener,
    state: api::HubState,
    limits: flashrack_http::ServerLimits,
}

impl Hub {
    /// Connects to the database (bringing its schema up to date), checks
    /// that a listen address beyond loopback has operator tokens to guard
    /// it, and binds the listener.
    pub async fn build(config: HubConfig) -> Result<Self, HubError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| HubError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        api::remove_stale_uploads(&config.data_dir.join("uploads"));
        let images = flashrack_image::ImageCache::open(config.data_dir.join("cache"))
            .map_err(HubError::Images)?;
        let db = HubDb::connect(&config.database_url, config.database_connections).await?;
        if !config.listen.ip().is_loopback() && !db.has_operator_tokens().await? {
            db.close().await;
            return Err(HubError::NoToken(config.listen));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| HubError::Bind {
                address: config.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| HubError::Bind {
            address: config.listen,
            source,
        })?;
        Ok(Self {
            address,
            listener,
            state: api::HubState {
                db,
                allowed_hosts: Arc::new(config.allowed_hosts),
                loopback: config.listen.ip().is_loopback(),
                silent_after_ms: config.silent_after.as_millis() as i64,
                watch: watch::Watch::new(),
                images,
                data_dir: config.data_dir,
                stopped: None,
            },
            limits: flashrack_http::ServerLimits {
                max_connections: config.max_connections,
                header_timeout: Duration::from_secs(10),
                shutdown_grace: Duration::from_secs(5),
            },
        })
    }

    /// Where the hub listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The hub's database.
    pub fn db(&self) -> &HubDb {
        &self.state.db
    }

    /// Serves until `shutdown` completes; requests in flight get a grace to
    /// finish, then the database pool is closed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HubError> {
        let (raise, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = raise.send(true);
        });
        let db = self.state.db.clone();
        let listener = tokio::spawn(watch::run_listener(
            db.clone(),
            self.state.watch.clone(),
            self.state.silent_after_ms,
            stopped.clone(),
        ));
        // Serve once the listener listens (the database answered at build,
        // so it does at once), or after a while regardless: the operators'
        // streams re-read the fleet when it does.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.state.watch.listening()).await;
        let state = api::HubState {
            stopped: Some(stopped.clone()),
            ..self.state
        };
        let served =
            flashrack_http::server::run(self.listener, api::router(state), self.limits, stopped)
                .await;
        // The listener has stopped by itself on a shutdown; after a failure
        // of the server it is stopped here.
        listener.abort();
        let _ = listener.await;
        db.close().await;
        served.map_err(HubError::Serve)
    }
}
