//! `cargo xtask soak [--short] [--hours N]`: the soak and load harness
//! (`pve-exporter/tests/soak.rs`) on the release build, as the daemon runs in production: load
//! (50 scrapers on 20 real KVM guests), guest churn with eBPF on, and slow and hostile clients.
//! The figures go to `target/soak/report.md` (the table of docs/robustness.md); a failed
//! property (an error under load, a wrong count, a stale series, growth of descriptors or
//! threads, a hostile client that got through) fails the task.
//!
//! `--short` is the variant `cargo xtask test` runs (10 s of load, 20 guest lifetimes);
//! `--hours N` repeats load and churn for N hours, for release checks (not CI).

use std::{fs, process::Command};

use anyhow::{Context, Result, bail};

use crate::{run_cmd, step, workspace_root};

pub fn run(args: &[String]) -> Result<()> {
    let mut short = false;
    let mut hours = 0.0f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--short" => short = true,
            "--hours" => hours = it.next().context("--hours N")?.parse().context("--hours takes a number")?,
            other => bail!("soak: unknown option {other:?} (cargo xtask soak [--short] [--hours N])"),
        }
    }
    let ws = workspace_root();
    // The test guest on its own: built together with pve-exporter, the shared dependencies'
    // features would unify differently from `cargo test -p pve-exporter`'s, and the daemon
    // would be built twice.
    step("soak: release build of the test guest (cargo test builds the daemon)");
    run_cmd(Command::new(env!("CARGO")).current_dir(&ws).args(["build", "--release", "-p", "pve-test-guest"]))?;
    let report = ws.join("target/soak/report.md");
    fs::create_dir_all(report.parent().expect("parent"))?;
    let scale = if short { "short" } else { "full" };
    fs::write(
        &report,
        format!(
            "Soak run ({scale}{}), {}:\n\n| part | what | outcome | | | | | | |\n|---|---|---|---|---|---|---|---|---|\n",
            if hours > 0.0 { format!(", {hours} h") } else { String::new() },
            chrono_free_now()
        ),
    )?;
    step(&format!("soak: {scale} (pve-exporter/tests/soak.rs, one test at a time)"));
    let status = Command::new(env!("CARGO"))
        .current_dir(&ws)
        .args(["test", "--release", "-p", "pve-exporter", "--test", "soak", "--"])
        .args(["--ignored", "--test-threads=1", "--nocapture"])
        .env("PVE_SOAK_SCALE", scale)
        .env("PVE_SOAK_HOURS", hours.to_string())
        .env("PVE_SOAK_REPORT", &report)
        .status()
        .context("cargo test --test soak")?;
    println!("{}\n(kept in {})", fs::read_to_string(&report).unwrap_or_default(), report.display());
    if !status.success() {
        bail!("soak failed ({status}); figures so far in {}", report.display());
    }
    Ok(())
}

/// The date and time (UTC), from `date`: the report says when it was made.
fn chrono_free_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
