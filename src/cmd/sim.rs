//! `sky sim`: the deterministic simulators.

use std::process::ExitCode;

/// Runs one simulator and prints its report (Markdown).
pub(crate) fn main(cmd: sky_lab::sim::SimCommand) -> ExitCode {
    match sky_lab::sim::run(cmd) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sky sim: {e}");
            ExitCode::from(2)
        }
    }
}
