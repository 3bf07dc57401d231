//! `pve-test-container`: a container laid out as PVE's LXC lays one out (cgroups
//! `lxc/<ctid>/ns`, an init that is pid 1 of its namespace, a tmpfs root, a veth), for
//! pve-exporter's tests and demo on hosts without LXC. See `container.rs` in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match pve_test_guest::container::parse_container_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "pve-test-container: {e}\nusage: pve-test-container CTID [--rootfs-mib N] [--memory-mib N] \
                 [--touch-mib N] [--file-bytes N] [--veth]"
            );
            return ExitCode::from(2);
        }
    };
    match pve_test_guest::container::run_container(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pve-test-container: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
