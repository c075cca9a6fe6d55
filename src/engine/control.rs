//! The control thread: serves `/metrics` over HTTP (tiny_http: no HTTP is
//! parsed here) and sweeps expired presence entries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::presence::Presence;

use super::WAKE_EVERY;

pub(super) fn run(
    http: Option<tiny_http::Server>,
    metrics: &Metrics,
    presence: &Presence,
    stop: &AtomicBool,
    origin: Instant,
    sweep_every: Duration,
) {
    let mut last_sweep = origin.elapsed();
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
