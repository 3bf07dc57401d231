//! `pve-test-qm`: a test double of PVE's `qm`, only `qm monitor <vmid>`, for the qm-mode tests.
//!
//! Like the real one it prints a banner, then the `qm> ` prompt only when its input is a
//! terminal, and sends each command line to the VM's real QEMU (one QMP connection per
//! command, as PVE's `hmp_cmd` does), printing the HMP text as QEMU returns it; `quit` ends it.
//!
//! Environment:
//! - `PVE_TEST_QM_ROOT`: host root; the socket is `<root>/var/run/qemu-server/<vmid>.qmp`.
//! - `PVE_TEST_QM_LOG`: a file to which `<vmid> <command>` is appended per command.
//! - `PVE_TEST_QM_HANG`: comma-separated vmids whose monitor never answers a command.

#[path = "../support/qmp_client.rs"]
mod qmp_client;

use std::{
    io::{BufRead, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, vmid] = args.as_slice() else {
        eprintln!("usage: qm monitor <vmid>");
        return ExitCode::from(2);
    };
    if cmd != "monitor" || vmid.is_empty() || !vmid.bytes().all(|b| b.is_ascii_digit()) {
        eprintln!("usage: qm monitor <vmid>");
        return ExitCode::from(2);
    }
    let root = PathBuf::from(std::env::var_os("PVE_TEST_QM_ROOT").unwrap_or_else(|| "/".into()));
    let socket = root.join(format!("var/run/qemu-server/{vmid}.qmp"));
    let hangs = std::env::var("PVE_TEST_QM_HANG").is_ok_and(|h| h.split(',').any(|v| v == vmid));
    let prompt = std::io::stdin().is_terminal();

    let mut out = std::io::stdout();
    let _ = writeln!(out, "Entering QEMU Monitor for VM {vmid} - type 'help' for help");
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if prompt {
            let _ = write!(out, "qm> ");
        }
        let _ = out.flush();
        let Some(Ok(line)) = lines.next() else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "quit" || line == "q" {
            break;
        }
        if let Some(log) = std::env::var_os("PVE_TEST_QM_LOG")
            && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log)
        {
            // One write: several qm runs append to the log at once.
            let _ = f.write_all(format!("{vmid} {line}\n").as_bytes());
        }
        if hangs {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        match qmp_client::Client::connect(&socket).and_then(|mut c| c.hmp(line)) {
            Ok(text) => {
                let _ = write!(out, "{text}");
            }
            Err(e) => {
                let _ = writeln!(out, "ERROR: {e}");
            }
        }
    }
    ExitCode::SUCCESS
}
