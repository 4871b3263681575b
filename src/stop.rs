//! The signal that ends one socket from outside its task: the registry when its queue
//! overflows, a revocation that covers its token, the hub's shutdown.
//!
//! The socket's loop checks it on every turn, once per record, so it is an atomic flag and an
//! `AtomicWaker` rather than a `CancellationToken`, whose every poll takes two locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    why: AtomicU8,
    waker: AtomicWaker,
}

/// Why a socket was told to stop. When several reasons come together, shutdown goes before
/// revocation, and revocation before lagging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    GoingAway,
    Revoked,
    Lagged,
}

const GOING_AWAY: u8 = 1;
const REVOKED: u8 = 2;
const LAGGED: u8 = 4;

impl Stop {
    /// The hub is shutting down.
    pub fn going_away(&self) {
        self.set(GOING_AWAY);
    }

    /// A revocation covers the connection's token.
    pub fn revoked(&self) {
        self.set(REVOKED);
    }

    /// The queue overflowed: the connection can no longer be given every record.
    pub fn lagged(&self) {
        self.set(LAGGED);
    }

    pub fn has_lagged(&self) -> bool {
        self.0.why.load(Ordering::Acquire) & LAGGED != 0
    }

    fn set(&self, why: u8) {
        self.0.why.fetch_or(why, Ordering::AcqRel);
        self.0.waker.wake();
    }

    /// Ready once told to stop.
    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<StopReason> {
        if let Some(reason) = self.reason() {
            return Poll::Ready(reason);
        }
        self.0.waker.register(cx.waker());
        // Re-checked after registering, or a stop set in between is a lost wake-up.
        self.reason().map_or(Poll::Pending, Poll::Ready)
    }

    pub fn reason(&self) -> Option<StopReason> {
        let why = self.0.why.load(Ordering::Acquire);
        if why & GOING_AWAY != 0 {
            Some(StopReason::GoingAway)
        } else if why & REVOKED != 0 {
            Some(StopReason::Revoked)
        } else if why & LAGGED != 0 {
            Some(StopReason::Lagged)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_outranks_revocation_which_outranks_lagging() {
        let stop = Stop::default();
        assert_eq!(stop.reason(), None);
        stop.lagged();
        assert_eq!(stop.reason(), Some(StopReason::Lagged));
        stop.revoked();
        assert_eq!(stop.reason(), Some(StopReason::Revoked));
        stop.going_away();
        assert_eq!(stop.reason(), Some(StopReason::GoingAway));
        assert!(stop.has_lagged());
    }

    #[test]
    fn a_stop_wakes_the_task_waiting_for_it() {
        let stop = Stop::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(stop.poll_stopped(&mut cx).is_pending());
        stop.clone().revoked();
        assert_eq!(stop.poll_stopped(&mut cx), Poll::Ready(StopReason::Revoked));
    }
}
