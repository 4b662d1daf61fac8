//! Bounds on connections: how many may be open, how long one may sit without a request, and
//! what accepting does when the process runs out of file descriptors.
//!
//! Idleness is counted in requests, not bytes: a connection is idle while no request is in
//! flight on it (HTTP/1 before the first request and between keep-alive requests, HTTP/2
//! while no stream is open), from accept on. A request counts until its response body has
//! been sent or dropped, so a long upload or download is never cut, however slow, and HTTP/2
//! pings, which are traffic but not requests, do not keep a connection alive.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::response::Body;

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
pub(crate) struct Idle {
    state: Mutex<IdleState>,
    changed: Notify,
}

#[derive(Debug)]
struct IdleState {
    in_flight: usize,
    since: Instant,
}

impl Idle {
    /// A connection just accepted: idle from now.
    pub(crate) fn new() -> Arc<Idle> {
        Arc::new(Idle {
            state: Mutex::new(IdleState {
                in_flight: 0,
                since: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IdleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request has started; it counts until the returned guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.state().in_flight += 1;
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// Completes once no request has been in flight for `timeout`.
    pub(crate) async fn expired(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read, so no change between the two is missed.
            changed.as_mut().enable();
            let deadline = {
                let s = self.state();
                (s.in_flight == 0).then(|| s.since + timeout)
            };
            match deadline {
                None => changed.await,
                Some(d) if Instant::now() >= d => return,
                Some(d) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(d) => {}
                    }
                }
            }
        }
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut s = self.0.state();
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.since = Instant::now();
            }
        }
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
struct Held {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `body`, holding `busy` until it is done.
pub(crate) fn hold(body: Body, busy: Busy) -> Body {
    Held { body, _busy: busy }.boxed_unsync()
}

/// Serve `conn` until it ends or has been idle for `timeout`; an idle connection is dropped,
/// which closes it (nothing is in flight, so nothing is lost).
pub(crate) async fn until_idle<E>(
    conn: impl Future<Output = Result<(), E>>,
    idle: &Idle,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(), E> {
    tokio::select! {
        r = conn => r,
        () = idle.expired(timeout) => {
            metrics.connections_idle_closed.inc();
            Ok(())
        }
    }
}

/// One open connection of a listener, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    open: Arc<AtomicUsize>,
    registry: Arc<crate::Registry>,
}

impl Slot {
    /// A slot among `max` on this listener, or `None` (counted) when all are taken.
    pub(crate) fn take(
        open: &Arc<AtomicUsize>,
        max: usize,
        registry: &Arc<crate::Registry>,
    ) -> Option<Slot> {
        let taken = open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            registry.metrics.connections_refused.inc();
            return None;
        }
        registry.metrics.connections_open.inc();
        Some(Slot {
            open: open.clone(),
            registry: registry.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.registry.metrics.connections_open.dec();
    }
}

/// Accept failures of one listener: running out of file descriptors is logged once when it
/// starts and once when it ends, not at every retry.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    /// Failed accepts in the current episode of descriptor exhaustion.
    exhausted: u64,
}

/// The pause after running out of descriptors: long enough not to spin, short enough that
/// clients barely notice once descriptors are free again.
const FD_BACKOFF: Duration = Duration::from_millis(100);

/// EMFILE and ENFILE, the same on Linux, the BSDs and macOS.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

impl AcceptErrors {
    /// Note a failed accept; returns how long to pause before the next.
    pub(crate) fn failed(&mut self, e: &std::io::Error, metrics: &Metrics) -> Duration {
        if out_of_descriptors(e) {
            metrics.accept_fd_exhausted.inc();
            if self.exhausted == 0 {
                tracing::error!(error = %e, "out of file descriptors: not accepting connections until some close (raise `ulimit -n` or lower --max-connections)");
            }
            self.exhausted += 1;
            return FD_BACKOFF;
        }
        // A connection reset before it was accepted, and the like: about one client only.
        tracing::debug!(error = %e, "accept failed");
        Duration::ZERO
    }

    /// Note a successful accept.
    pub(crate) fn accepted(&mut self) {
        if self.exhausted > 0 {
            tracing::warn!(
                failed_accepts = self.exhausted,
                "file descriptors available again: accepting connections"
            );
            self.exhausted = 0;
        }
    }
}
