//! `cargo xtask bench`: the benchmarks of docs/benchmarks.md. Each part prints its results as
//! Markdown table rows and writes them to `target/bench/<part>.md`, so the results table in
//! docs/benchmarks.md is pasted from a run, never typed.
//!
//! - `host`: the daemon scraped over HTTP on generated hosts of N VMs (real QEMU for N <= 100,
//!   a generated fixture tree for 1000): wall time, CPU, RSS, series and bytes, cold and warm.
//! - `ebpf`: bpf_stats per program under an exit-heavy guest, and the guest's port writes per
//!   second with every program attached against none, alternating.
//! - `parsers`: the criterion micro-benchmarks (`cargo bench -p pve-exporter --bench parsers`).
//!
//! `--quick` (small N, few iterations) is what the test suite runs so that the benchmarks never
//! rot; it asserts nothing about time.

mod ebpf;
mod host;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{run_cmd, workspace_root};

const USAGE: &str = "usage: cargo xtask bench [--quick] [host|ebpf|parsers|all]...";

/// What every part gets.
pub struct Bench {
    /// Small N, few iterations: the test suite's mode.
    pub quick: bool,
    /// The release binaries (pve-exporter, pve-test-guest).
    pub bin: PathBuf,
    /// Scratch space and results (`target/bench`).
    pub dir: PathBuf,
}

impl Bench {
    /// Print a part's results and keep them in `target/bench/<part>.md`.
    pub fn report(&self, part: &str, markdown: &str) -> Result<()> {
        println!("{markdown}");
        let path = self.dir.join(format!("{part}{}.md", if self.quick { "-quick" } else { "" }));
        fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
        println!("(kept in {})", path.display());
        Ok(())
    }
}

pub fn target_dir(ws: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| ws.join("target"))
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut parts: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    if parts.is_empty() || parts.contains(&"all") {
        parts = vec!["parsers", "host", "ebpf"];
    }
    if let Some(p) = parts.iter().find(|p| !matches!(**p, "host" | "ebpf" | "parsers")) {
        bail!("unknown bench part {p:?}\n{USAGE}");
    }
    let ws = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Release, as operators run it; the eBPF programs are embedded by the build script.
    run_cmd(Command::new(&cargo).current_dir(&ws).args(["build", "--release", "-p", "pve-exporter", "--bins"]))?;
    let target = target_dir(&ws);
    let bench = Bench { quick, bin: target.join("release"), dir: target.join("bench") };
    fs::create_dir_all(&bench.dir)?;
    for part in parts {
        println!("==> bench {part}{}", if quick { " (quick)" } else { "" });
        match part {
            "host" => host::run(&bench)?,
            "ebpf" => ebpf::run(&bench)?,
            "parsers" => {
                let mut c = Command::new(&cargo);
                c.current_dir(&ws).args(["bench", "-p", "pve-exporter", "--bench", "parsers"]);
                if quick {
                    // Criterion's test mode: each benchmark runs once (it still has to work).
                    c.args(["--", "--test"]);
                }
                run_cmd(&mut c)?;
            }
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}
