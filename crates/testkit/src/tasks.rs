//! Tasks for tests that order what reaches a station.

use std::future::Future;
use std::task::Poll;

/// Runs `command` (a call on a station's handle) as a task, its command
/// sent before this returns: its future is polled once here, which sends
/// the command, so that commands started one after the other reach the
/// station in that order (a spawned task's first poll may come after a
/// later one's). Must be called within a tokio runtime.
pub async fn sent<F>(command: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut command = Box::pin(command);
    let first = std::future::poll_fn(|cx| Poll::Ready(command.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(answer) => tokio::spawn(async move { answer }),
        Poll::Pending => tokio::spawn(command),
    }
}
