//! `cargo xtask bench ebpf`: see docs/benchmarks.md.

use anyhow::Result;

use super::Bench;

pub fn run(_bench: &Bench) -> Result<()> {
    anyhow::bail!("not written yet")
}
