//! One module per `sky` subcommand: parsing and presentation only. What a
//! library user would need lives in the crates (`sky-node`, `sky-earth`,
//! `sky-lab`).

pub(crate) mod bench;
pub(crate) mod earth;
pub(crate) mod node;
mod notify;
pub(crate) mod probe;
pub(crate) mod sim;

/// A stop flag set by SIGINT and SIGTERM.
pub(crate) fn stop_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    stop
}
