//! Shared by the CLI's process tests.

use std::process::Command;

/// The `retnet` binary as a command.
///
/// Under the cargo runner of `.ci/lavapipe-coop` (a software device with cooperative matrices,
/// whose driver lives in a root of its own) the tests run under that root's dynamic loader; a
/// binary spawned plainly would start with the host's loader, where that driver cannot load. So
/// where `LAVAPIPE_COOP_RUN` is set, the CLI is started through the same prefix.
pub fn retnet_command() -> Command {
    let binary = env!("CARGO_BIN_EXE_retnet");
    let prefix = std::env::var("LAVAPIPE_COOP_RUN").unwrap_or_default();
    let mut words = prefix.split_whitespace();
    match words.next() {
        Some(loader) => {
            let mut command = Command::new(loader);
            command.args(words).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}
