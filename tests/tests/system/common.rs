//! Helpers several system-test modules share.

use std::thread;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{run_tool, uri};
use daxbox_tests::{scaled, HarnessError, Machine};

/// Runs a shell command that must not report an error.
pub fn shell(machine: &mut Machine, command: &str) -> Result<String, HarnessError> {
    let output = machine.command(command)?;
    assert!(
        !output.contains("error:") && !output.contains("usage:"),
        "shell `{command}` failed:\n{output}"
    );
    Ok(output)
}

/// Waits until the NBD server completes a handshake.
pub fn wait_nbd(port: u16) {
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    loop {
        if run_tool(
            "nbdinfo",
            &["--list", &uri(port, "")],
            Duration::from_secs(60),
        )
        .success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "the NBD server never answered");
        thread::sleep(Duration::from_millis(300));
    }
}
