//! `cargo xtask fuzz [TARGET ...] [--seconds N] [--runs N] [--jobs N]`: the parsers' fuzz targets (`fuzz/`,
//! cargo-fuzz on the nightly toolchain, libFuzzer), each for N seconds (default 60) or N
//! executions, N targets at once (`--jobs`, one core each), with a corpus kept in `target/fuzz/corpus/<target>` and seeded from the fixtures (`fuzz/seeds.txt`).
//! A crash, a timeout (an input that takes over 10 s) or running out of memory fails the task
//! and leaves the input in `target/fuzz/artifacts/<target>/`; every one found becomes a
//! regression test of the normal suite. The figures (executions, coverage, crashes) go to
//! `target/fuzz/report.md` and, from a long run, into docs/robustness.md.
//!
//! `cargo xtask test` runs every target for a few seconds (`--smoke`) so they never rot.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{step, workspace_root};

/// Seconds per target in the test suite's smoke run.
pub const SMOKE_SECONDS: u64 = 3;

struct Options {
    targets: Vec<String>,
    /// Time per target; 0 is no limit (with `--runs`).
    seconds: u64,
    /// Executions per target (libFuzzer's `-runs`); 0 is no limit (the time limit ends the run).
    runs: u64,
    /// Targets run at once (one process each).
    jobs: usize,
    /// Run the scaling check (no fuzzing): every target on its corpus and on 10x the input.
    scaling: bool,
    /// The smoke run (few seconds each) and, with `scaling`, the scaling check's quick mode.
    quick: bool,
}

const USAGE: &str = "cargo xtask fuzz [TARGET ...] [--seconds N] [--runs N] [--jobs N] [--smoke] [--scaling]";

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options { targets: Vec::new(), seconds: 60, runs: 0, jobs: 1, scaling: false, quick: false };
    let mut seconds = None;
    let mut it = args.iter();
    let num = |it: &mut std::slice::Iter<'_, String>, what: &str| -> Result<u64> {
        it.next().with_context(|| format!("{what} N"))?.parse().with_context(|| format!("{what} takes a whole number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = Some(num(&mut it, "--seconds")?),
            "--runs" => o.runs = num(&mut it, "--runs")?,
            "--jobs" => o.jobs = num(&mut it, "--jobs")?.max(1) as usize,
            "--smoke" => {
                seconds = Some(SMOKE_SECONDS);
                o.quick = true;
            }
            "--scaling" => o.scaling = true,
            t if !t.starts_with('-') => o.targets.push(t.to_string()),
            other => bail!("fuzz: unknown option {other:?} ({USAGE})"),
        }
    }
    // `--runs` alone runs each target to its count, however long that takes.
    o.seconds = seconds.unwrap_or(if o.runs > 0 { 0 } else { 60 });
    Ok(o)
}

/// The targets: `fuzz/fuzz_targets/<name>.rs`, but the shared `common.rs`.
pub fn all_targets(ws: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(ws.join("fuzz/fuzz_targets"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_string))
        .filter(|n| n != "common" && n != "targets")
        .collect();
    v.sort();
    Ok(v)
}

/// cargo-fuzz, installed once (crates.io).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo-fuzz").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        crate::run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn nightly_cargo(ws: &Path) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"])
        .current_dir(ws.join("fuzz"))
        // The outer cargo's variables would pin the inner one to the stable toolchain.
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("CARGO_TARGET_DIR", ws.join("target/fuzz/build"));
    c
}

/// Copy the fixture files a target's line of `fuzz/seeds.txt` names into its corpus.
fn seed(ws: &Path, target: &str, corpus: &Path) -> Result<usize> {
    let seeds = fs::read_to_string(ws.join("fuzz/seeds.txt"))?;
    let mut n = 0;
    for line in seeds.lines().filter(|l| !l.starts_with('#')) {
        let Some((t, pattern)) = line.split_once('\t') else { continue };
        if t != target {
            continue;
        }
        let fixtures = ws.join("fixtures");
        let mut files = Vec::new();
        walk(&fixtures, &mut files)?;
        for f in files {
            let rel = f.strip_prefix(&fixtures).unwrap_or(&f).to_string_lossy().into_owned();
            if glob_match(pattern, &rel) {
                let name = format!("seed-{}", rel.replace('/', "_"));
                fs::copy(&f, corpus.join(name))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), out)?;
        } else if t.is_file() && e.metadata()?.len() <= 1 << 20 {
            out.push(e.path());
        }
    }
    Ok(())
}

/// `*` within a path part, `**` across parts.
fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(pp), Some(ss)) => part(pp, ss) && go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    fn part(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((pre, rest)) => {
                let Some(s) = s.strip_prefix(pre) else { return false };
                (0..=s.len()).filter(|i| s.is_char_boundary(*i)).any(|i| part(rest, &s[i..]))
            }
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    go(&p, &s)
}

/// One target's figures from libFuzzer's `-print_final_stats=1` and its last status line.
#[derive(Default)]
struct Figures {
    execs: u64,
    per_second: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
    outcome: String,
}

fn figures(stderr: &str, ok: bool) -> Figures {
    let mut f = Figures::default();
    let stat = |k: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().trim_start_matches(':').trim().parse().ok()))
    };
    f.execs = stat("stat::number_of_executed_units").unwrap_or(0);
    f.per_second = stat("stat::average_exec_per_sec").unwrap_or(0);
    // `#N  DONE   cov: 123 ft: 456 corp: 78/9Kb ...`
    if let Some(l) = stderr.lines().rev().find(|l| l.contains(" cov: ")) {
        let num = |k: &str| {
            l.split(k).nth(1).and_then(|r| r.split_whitespace().next()).and_then(|v| v.split('/').next()?.parse().ok())
        };
        f.coverage = num(" cov: ").unwrap_or(0);
        f.features = num(" ft: ").unwrap_or(0);
        f.corpus = num(" corp: ").unwrap_or(0);
    }
    f.outcome = if ok {
        "0 crashes".into()
    } else if stderr.contains("ERROR: libFuzzer: timeout") {
        "TIMEOUT".into()
    } else if stderr.contains("out-of-memory") {
        "OUT OF MEMORY".into()
    } else {
        "CRASH".into()
    };
    f
}

/// One target's run: its figures, whether it passed, and libFuzzer's last lines.
type Outcome = (Figures, bool, String);

fn fuzz_one(ws: &Path, t: &str, o: &Options) -> Result<Outcome> {
    let corpus = ws.join("target/fuzz/corpus").join(t);
    let artifacts = ws.join("target/fuzz/artifacts").join(t);
    fs::create_dir_all(&corpus)?;
    fs::create_dir_all(&artifacts)?;
    let seeded = seed(ws, t, &corpus)?;
    let limit = match (o.seconds, o.runs) {
        (0, r) => format!("{r} executions"),
        (s, 0) => format!("{s} s"),
        (s, r) => format!("{r} executions or {s} s"),
    };
    println!("==> fuzz {t}: {limit} ({seeded} seeds from the fixtures)");
    let mut cmd = nightly_cargo(ws);
    cmd.args(["fuzz", "run", "--sanitizer", "none", t])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={}", o.seconds))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-max_len=65536", "-print_final_stats=1"]);
    if o.runs > 0 {
        cmd.arg(format!("-runs={}", o.runs));
    }
    let out = cmd.output().with_context(|| format!("cargo fuzz run {t}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = figures(&stderr, out.status.success());
    println!("    {t}: {} executions ({}/s), coverage {} edges, {}", f.execs, f.per_second, f.coverage, f.outcome);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    Ok((f, out.status.success(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")))
}

/// The scaling check (`pve-exporter/benches/scaling.rs`): each target's body timed on the
/// inputs of its corpus (seeded from the fixtures where no fuzz run made one yet) and on ten
/// times those inputs. It fails on a ratio that is not linear (its doc says how it is judged).
fn scaling(ws: &Path, targets: &[String], quick: bool) -> Result<()> {
    let corpora = ws.join("target/fuzz/corpus");
    for t in targets {
        let corpus = corpora.join(t);
        fs::create_dir_all(&corpus)?;
        seed(ws, t, &corpus)?;
    }
    step("fuzz: scaling check, every parser on 10x its inputs (release build)");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(ws).args(["bench", "-p", "pve-exporter", "--bench", "scaling", "--"]).arg(&corpora);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.args(targets).output().context("cargo bench --bench scaling")?;
    let table = String::from_utf8_lossy(&out.stdout);
    print!("{table}");
    eprint!(
        "{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.trim_start().starts_with("Compiling"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    fs::create_dir_all(ws.join("target/fuzz"))?;
    fs::write(ws.join("target/fuzz/scaling.md"), table.as_bytes())?;
    if !out.status.success() {
        bail!("scaling check failed (table in target/fuzz/scaling.md)");
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let ws = workspace_root();
    if o.scaling {
        let targets = if o.targets.is_empty() { all_targets(&ws)? } else { o.targets.clone() };
        return scaling(&ws, &targets, o.quick);
    }
    ensure_cargo_fuzz()?;
    let targets = if o.targets.is_empty() { all_targets(&ws)? } else { o.targets.clone() };
    step("fuzz: build the targets (nightly, libFuzzer)");
    crate::run_cmd(nightly_cargo(&ws).args(["fuzz", "build", "--sanitizer", "none"]))?;
    // `--jobs N`: N targets at once, each its own libFuzzer process (one core each).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<Outcome>>>> =
        std::sync::Mutex::new((0..targets.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..o.jobs.min(targets.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(t) = targets.get(i) else { break };
                    let r = fuzz_one(&ws, t, &o);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    let mut md = String::from(
        "| target | seconds | executions | executions/s | coverage (edges) | features | corpus | result |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut failed = Vec::new();
    for (t, r) in targets.iter().zip(results.into_inner().unwrap()) {
        let (f, ok, tail) = r.context("a fuzz job did not report")??;
        if !ok {
            eprintln!("==> {t} failed:\n{tail}");
            failed.push(t.clone());
        }
        let secs = f.execs.checked_div(f.per_second).unwrap_or(o.seconds);
        let _ = writeln!(
            md,
            "| {t} | {secs} | {} | {} | {} | {} | {} | {} |",
            f.execs, f.per_second, f.coverage, f.features, f.corpus, f.outcome
        );
    }
    let report = ws.join("target/fuzz/report.md");
    fs::write(&report, &md)?;
    println!("{md}\n(kept in {})", report.display());
    if !failed.is_empty() {
        bail!("fuzz targets failed: {} (inputs in target/fuzz/artifacts/)", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("hosts/**/storage.cfg", "hosts/pve-storage/etc/pve/storage.cfg"));
        assert!(glob_match("hosts/*/proc/*/cmdline", "hosts/pve-basic/proc/3100/cmdline"));
        assert!(!glob_match("hosts/*/proc/*/cmdline", "hosts/pve-basic/proc/3100/task/1/cmdline"));
        assert!(glob_match("tracepoints/*.format", "tracepoints/kvm_kvm_exit.format"));
        assert!(glob_match("qemu/**/info-block*", "qemu/pve9/info-block.txt"));
        assert!(!glob_match("qemu/**/info-block*", "qemu/pve9/info-network.txt"));
    }

    #[test]
    fn final_stats() {
        let err = "#1024\tpulse  cov: 812 ft: 1931 corp: 40/3102b lim: 4096 exec/s: 512 rss: 40Mb\n\
                   #90000\tDONE   cov: 901 ft: 2202 corp: 55/4Kb lim: 4096 exec/s: 30000 rss: 41Mb\n\
                   Done 90000 runs in 3 second(s)\n\
                   stat::number_of_executed_units: 90000\n\
                   stat::average_exec_per_sec:     30000\n";
        let f = figures(err, true);
        assert_eq!((f.execs, f.per_second, f.coverage, f.features, f.corpus), (90000, 30000, 901, 2202, 55));
        assert_eq!(f.outcome, "0 crashes");
    }
}
