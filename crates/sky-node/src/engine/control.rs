//! The control thread: serves `/metrics` over HTTP (tiny_http: no HTTP is
//! parsed here), sweeps expired presence entries, and hands off entries
//! after a ring change.
//!
//! **Handoff.** When gossip swaps in a new ring, clients re-register with
//! their new owners within a keepalive interval (SPEC §4); once the ring
//! has stood for `grace`, the entries this node no longer owns are dropped
//! (`Presence::retain_owned`), once. A change within the grace of the one
//! before restarts the grace, and one handoff covers both: entries are
//! never dropped against a ring younger than the grace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::snapshot::SharedRing;
use sky_proto::ring::Ring;

use super::WAKE_EVERY;

/// What the control thread needs to hand off entries after ring changes.
pub(super) struct Handoff {
    pub ring: SharedRing,
    /// This node's service endpoint, as the ring names it.
    pub me: SocketAddr,
    pub grace: Duration,
}

pub(super) fn run(
    http: Option<tiny_http::Server>,
    metrics: &Metrics,
    presence: &Presence,
    stop: &AtomicBool,
    origin: Instant,
    sweep_every: Duration,
    handoff: Handoff,
) {
    let mut last_sweep = origin.elapsed();
    let mut served: Arc<Ring> = handoff.ring.load_full();
    let mut changed_at: Option<Duration> = None;
    while !stop.load(Ordering::Relaxed) {
        match &http {
            Some(server) => match server.recv_timeout(WAKE_EVERY) {
                Ok(Some(request)) => respond(request, metrics, presence),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "metrics server error");
                    std::thread::sleep(WAKE_EVERY);
                }
            },
            None => std::thread::sleep(WAKE_EVERY),
        }
        let now = origin.elapsed();
        if now.saturating_sub(last_sweep) >= sweep_every {
            let expired = presence.sweep(now.as_secs().min(u32::MAX.into()) as u32);
            metrics.presence_expired.inc_by(expired as u64);
            if expired > 0 {
                tracing::debug!(expired, "swept expired presence entries");
            }
            last_sweep = now;
        }
        let current = handoff.ring.load_full();
        if !Arc::ptr_eq(&current, &served) {
            served = current;
            changed_at = Some(now);
        }
        if let Some(at) = changed_at
            && now.saturating_sub(at) >= handoff.grace
        {
            changed_at = None;
            let dropped = presence.retain_owned(&served, handoff.me);
            metrics.handoff_dropped.inc_by(dropped as u64);
            tracing::info!(
                dropped,
                version = served.version(),
                "handed off the entries this node no longer owns"
            );
        }
    }
}

fn respond(request: tiny_http::Request, metrics: &Metrics, presence: &Presence) {
    use tiny_http::{Header, Method, Response};
    let text = |body: String, status: u16, content_type: &str| {
        Response::from_string(body)
            .with_status_code(status)
            .with_header(
                Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                    .expect("static header"),
            )
    };
    let plain = "text/plain; charset=utf-8";
    let response = match (request.method(), request.url()) {
        (Method::Get, "/metrics") => {
            metrics.presence_entries.set(presence.len() as i64);
            text(
                metrics.render(),
                200,
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        (Method::Get, "/healthz") => text("ok\n".into(), 200, plain),
        (Method::Get, "/") => text("sky node: see /metrics\n".into(), 200, plain),
        (Method::Get, _) => text("not found\n".into(), 404, plain),
        _ => text("method not allowed\n".into(), 405, plain),
    };
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "metrics client went away");
    }
}
