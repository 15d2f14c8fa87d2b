//! The signals that stop flashrack: SIGTERM (systemd, `kill`) and SIGINT
//! (Ctrl-C). Only the binary catches them; the library is handed a future
//! (`serve`, `demo`) or a channel (`flash`).

use anyhow::{Context, Result};
use flashrack_app::flash::StopSignal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Catches SIGTERM and SIGINT now (so that one arriving while the station is
/// being built is not lost) and returns a future that completes at the first.
pub fn shutdown() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut stops = stops()?;
    Ok(async move {
        let _ = stops.recv().await;
    })
}

/// As [`shutdown`], the future answering the signal's name (`SIGTERM`), for
/// the records of a run the shutdown stops.
pub fn named_shutdown() -> Result<impl std::future::Future<Output = &'static str> + Send + 'static>
{
    let mut stops = stops()?;
    Ok(async move {
        match stops.recv().await {
            Some(signal) => signal.name(),
            None => "the signal handler ended",
        }
    })
}

/// Catches SIGTERM and SIGINT now; every one that arrives from now on is sent
/// on the returned channel.
pub fn stops() -> Result<mpsc::UnboundedReceiver<StopSignal>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                _ = interrupt.recv() => StopSignal::Interrupt,
                _ = terminate.recv() => StopSignal::Terminate,
            };
            if tx.send(stop).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
