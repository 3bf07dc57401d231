//! `pve-test-guest`: a tiny real KVM guest with a QEMU-like command line, standing in for a
//! Proxmox VM in integration tests and demos. See `lib.rs` for what it does.
//!
//! Example: `pve-test-guest -id 100 -name demo,debug-threads=on -smp 2 -m 64 -pio-writes 70000`
//! prints `started pid=<pid>`, then `done 140000` once both vCPUs made their 70000 port writes,
//! and stays alive until killed.

use std::process::ExitCode;

use pve_test_guest as testguest;

const USAGE: &str = "usage: pve-test-guest [-id VMID] [-name NAME[,debug-threads=on]] \
    [-smp N[,...]] [-m MiB] [-cpu MODEL] [-pio-writes N] [-pio-port PORT] \
    [-pio-interval-ms MS] [-ready-file PATH] [-pio-report] [other QEMU options, ignored]";

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os().skip(1).map(|a| a.into_string()).collect();
    let config = match args {
        Ok(args) => testguest::parse_args(&args),
        Err(arg) => Err(format!("argument {arg:?} is not valid UTF-8")),
    };
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("pve-test-guest: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match testguest::run(&config) {
        Ok(never) => match never {},
        Err(err) => {
            eprintln!("pve-test-guest: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
