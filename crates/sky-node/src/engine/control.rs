//! The control thread: serves `/metrics` over HTTP, sweeps expired presence
//! entries, and hands off entries after a ring change.
//!
//! **HTTP.** hyper's HTTP/1 server on a current-thread tokio runtime that
//! runs on this very thread, beside the sweeps: however many clients
//! connect, the node has no more threads. At most [`MAX_CONNECTIONS`] are
//! open at once; one more closes the oldest (almost always an idle one:
//! answering a scrape takes a millisecond), so a crowd of idle or slow
//! connections costs a bounded amount of memory and never locks the next
//! scrape out. A connection that has not sent a whole request head within
//! [`HEADER_TIMEOUT`] is closed, idle keep-alive connections included.
//! (tiny_http, before, ran one thread per open connection: 500 idle
//! connections were 500 threads, and their memory stayed after they
//! closed.)
//!
//! **Handoff.** When gossip swaps in a new ring, clients re-register with
//! their new owners within a keepalive interval (SPEC §4); once the ring
//! has stood for `grace`, the entries this node no longer owns are dropped
//! (`Presence::retain_owned`), once. A change within the grace of the one
//! before restarts the grace, and one handoff covers both: entries are
//! never dropped against a ring younger than the grace.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::AbortHandle;

use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::snapshot::SharedRing;
use sky_proto::ring::Ring;

use super::WAKE_EVERY;

/// Connections to `/metrics` open at once, at most. A Prometheus server
/// or two need one each.
pub(super) const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request head, or sit idle
/// between requests: longer than the 15 s scrape interval of
/// `deploy/prometheus/scrape.yml`, so Prometheus keeps its connection.
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// What the control thread needs to hand off entries after ring changes.
pub(super) struct Handoff {
    pub ring: SharedRing,
    /// This node's service endpoint, as the ring names it.
    pub me: SocketAddr,
    pub grace: Duration,
}

/// Binds the metrics address (before the threads start, so that a taken
/// port fails `Node::start`).
pub(super) fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub(super) fn run(
    http: Option<std::net::TcpListener>,
    metrics: Arc<Metrics>,
    presence: Arc<Presence>,
    stop: &AtomicBool,
    origin: Instant,
    sweep_every: Duration,
    handoff: Handoff,
) -> io::Result<()> {
    let mut chores = Chores {
        last_sweep: origin.elapsed(),
        sweep_every,
        served: handoff.ring.load_full(),
        changed_at: None,
        handoff,
    };
    let Some(listener) = http else {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(WAKE_EVERY);
            chores.run(&metrics, &presence, origin.elapsed());
        }
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut server = Server::new(metrics.clone(), presence.clone());
        let mut tick = tokio::time::interval(WAKE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => server.serve(stream),
                    Err(e) => {
                        // Out of file descriptors, most likely: wait for
                        // some to close rather than spin.
                        tracing::warn!(error = %e, "metrics server cannot accept");
                        tokio::time::sleep(WAKE_EVERY).await;
                    }
                },
                _ = tick.tick() => chores.run(&metrics, &presence, origin.elapsed()),
            }
        }
        Ok(())
    })
    // Dropping the runtime closes every connection still open.
}

/// The sweep and the handoff, on the control thread's clock.
struct Chores {
    last_sweep: Duration,
    sweep_every: Duration,
    served: Arc<Ring>,
    changed_at: Option<Duration>,
    handoff: Handoff,
}

impl Chores {
    fn run(&mut self, metrics: &Metrics, presence: &Presence, now: Duration) {
        if now.saturating_sub(self.last_sweep) >= self.sweep_every {
            let expired = presence.sweep(now.as_secs().min(u32::MAX.into()) as u32);
            metrics.presence_expired.inc_by(expired as u64);
            if expired > 0 {
                tracing::debug!(expired, "swept expired presence entries");
            }
            self.last_sweep = now;
        }
        let current = self.handoff.ring.load_full();
        if !Arc::ptr_eq(&current, &self.served) {
            self.served = current;
            self.changed_at = Some(now);
        }
        if let Some(at) = self.changed_at
            && now.saturating_sub(at) >= self.handoff.grace
        {
            self.changed_at = None;
            let dropped = presence.retain_owned(&self.served, self.handoff.me);
            metrics.handoff_dropped.inc_by(dropped as u64);
            tracing::info!(
                dropped,
                version = self.served.version(),
                "handed off the entries this node no longer owns"
            );
        }
    }
}

/// The open HTTP connections, oldest first, and how to serve a new one.
struct Server {
    metrics: Arc<Metrics>,
    presence: Arc<Presence>,
    http: http1::Builder,
    /// Each open connection's task, by arrival; a task removes itself when
    /// its connection ends.
    open: Arc<Mutex<BTreeMap<u64, AbortHandle>>>,
    next: u64,
}

impl Server {
    fn new(metrics: Arc<Metrics>, presence: Arc<Presence>) -> Server {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(8192);
        Server {
            metrics,
            presence,
            http,
            open: Arc::default(),
            next: 0,
        }
    }

    /// Serves `stream` on a task of this thread's runtime, closing the
    /// oldest connection first if [`MAX_CONNECTIONS`] are open.
    fn serve(&mut self, stream: tokio::net::TcpStream) {
        let (metrics, presence) = (self.metrics.clone(), self.presence.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(&request, &metrics, &presence);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = self.http.serve_connection(TokioIo::new(stream), service);
        let id = self.next;
        self.next += 1;
        let open = self.open.clone();
        let mut table = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_CONNECTIONS
            && let Some((_, oldest)) = table.pop_first()
        {
            oldest.abort();
            tracing::debug!("metrics server full: closed its oldest connection");
        }
        // The task runs only once this thread awaits again, after the
        // insert below: it cannot remove itself before it is there.
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
        table.insert(id, task.abort_handle());
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    presence: &Presence,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            metrics.presence_entries.set(presence.len() as i64);
            (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(),
            )
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, PLAIN, "ok\n".into()),
        (&Method::GET, "/") => (StatusCode::OK, PLAIN, "sky node: see /metrics\n".into()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
