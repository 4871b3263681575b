//! Writing a turn's frames: fed and flushed by hand, with a timeout made only for a write
//! that has to wait.

use std::future::poll_fn;
use std::task::ready;
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{FutureExt, SinkExt};

use crate::clock::now_millis;
use crate::metrics::Metrics;
use crate::subscription::Outgoing;

use super::Socket;

/// A socket that cannot take a write in time is as good as gone.
pub(super) struct WriteFailed;

/// Counted as sent when the write starts, so a client that has a frame knows it is counted.
/// A heartbeat's ping, when due, goes first. Not an `async fn`, for the reason `run` is
/// not: what it takes is used before the wait, and only the frames are kept across it.
pub(super) fn write_all(
    socket: &mut impl Socket,
    out: &mut Vec<Outgoing>,
    mut ping: bool,
    metrics: &Metrics,
    timeout: Duration,
) -> impl Future<Output = Result<(), WriteFailed>> {
    if !out.is_empty() {
        metrics.frames_sent(out.len());
        if let Some(oldest) = out.iter().filter_map(|f| f.timestamp).min() {
            metrics.delivered(now_millis() - oldest);
        }
    }
    // Taken rather than drained: what a burst grew it to is not kept by an idle socket.
    let mut frames = std::mem::take(out).into_iter();
    async move {
        if frames.as_slice().is_empty() && !ping {
            return Ok(());
        }
        // `feed` and `flush` by hand: their futures would take room in every socket's task
        // for good, for a wait most writes never make.
        let mut batch = poll_fn(|cx| {
            while ping || !frames.as_slice().is_empty() {
                ready!(socket.poll_ready_unpin(cx))?;
                let message = match std::mem::take(&mut ping) {
                    true => Message::Ping(Default::default()),
                    false => Message::Text(frames.next().expect("one is left").frame),
                };
                socket.start_send_unpin(message)?;
            }
            socket.poll_flush_unpin(cx)
        });
        // Most writes go through at once. The timer (a clock read and the runtime's handle)
        // is made only for one that has to wait, and boxed with it, so that it takes no room
        // in the socket's task while the socket waits for something else.
        let written = match (&mut batch).now_or_never() {
            Some(written) => written,
            None => Box::pin(tokio::time::timeout(timeout, batch))
                .await
                .map_err(|_| WriteFailed)?,
        };
        written.map_err(|_| WriteFailed)
    }
}
