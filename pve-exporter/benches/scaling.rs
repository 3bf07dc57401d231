//! The scaling check of the fuzz targets (issue 20): no parser may take super-linear time in
//! its input. Each fuzz target's body (`fuzz/fuzz_targets/targets.rs`, the same code libFuzzer
//! runs) is timed on inputs from its corpus and on the same input ten times larger, and the
//! ratio is reported: about 10 is linear, 100 quadratic. A ratio over [`LIMIT`] fails.
//!
//! `cargo xtask fuzz --scaling [TARGET ...]` runs it after the corpora exist (a fuzz run makes
//! them: `target/fuzz/corpus/<target>/`); directly:
//! `cargo bench -p pve-exporter --bench scaling -- <corpus dir> [--quick] [TARGET ...]`.
//!
//! The larger inputs are made two ways from each input, both of which the parsers met as
//! hostile input before: the input repeated (ten times the lines, sections, keys and objects,
//! with every name repeated: de-duplication that is quadratic shows here), and the input with
//! its line breaks taken out, repeated (one line ten times longer). Each base input is first
//! repeated to at least [`BASE_BYTES`] so that one call takes long enough to time. A time is the
//! fastest of several calls, which is what the code costs without the noise of other work on
//! the machine.

use std::{
    fs,
    hint::black_box,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

#[path = "../../fuzz/fuzz_targets/common.rs"]
mod common;
#[path = "../../fuzz/fuzz_targets/targets.rs"]
mod targets;

/// A ratio above this fails: linear is 10, n log n about 13, quadratic 100. The margin is for
/// caches: a 10x larger input may leave a cache the smaller one fitted in.
const LIMIT: f64 = 30.0;

/// The smallest base input (bytes): an input is repeated up to this before it is timed.
const BASE_BYTES: usize = 16 << 10;

/// Times of `f` on `base` and on `big` (10x `base`) and their ratio.
fn measure(f: targets::Body, base: &[u8], big: &[u8], min_time: Duration) -> (Duration, Duration, f64) {
    let t1 = fastest(f, base, 5, min_time);
    let t10 = fastest(f, big, 3, min_time);
    // Below a microsecond the parser stopped at the first bytes: nothing to scale.
    let ratio = if t1 < Duration::from_micros(1) && t10 < Duration::from_micros(10) {
        1.0
    } else {
        t10.as_secs_f64() / t1.as_secs_f64().max(1e-9)
    };
    (t1, t10, ratio)
}

/// The largest base input: libFuzzer's inputs are at most 64 KiB; a larger seed is cut.
const MAX_BASE_BYTES: usize = 64 << 10;

struct Options {
    corpus: PathBuf,
    quick: bool,
    targets: Vec<String>,
}

fn options() -> Result<Options, String> {
    let mut corpus = None;
    let mut quick = false;
    let mut targets = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => quick = true,
            // cargo bench passes `--bench`.
            "--bench" => {}
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            s if corpus.is_none() => corpus = Some(PathBuf::from(s)),
            s => targets.push(s.to_string()),
        }
    }
    let corpus = corpus.ok_or("usage: scaling <corpus dir> [--quick] [TARGET ...]")?;
    Ok(Options { corpus, quick, targets })
}

/// The fastest of at least `min_runs` calls of `f(input)`, calling for at least `min_time`.
fn fastest(f: targets::Body, input: &[u8], min_runs: u32, min_time: Duration) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < min_runs || start.elapsed() < min_time {
        let t = Instant::now();
        f(black_box(input));
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn repeat_to(input: &[u8], at_least: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(at_least + input.len());
    while v.len() < at_least {
        v.extend_from_slice(input);
    }
    v
}

/// The inputs of a target: the largest of its corpus (where super-linear time shows first)
/// and every seed (the real formats).
fn inputs(dir: &Path, largest: usize) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut data = fs::read(e.path()).ok()?;
            data.truncate(MAX_BASE_BYTES);
            (!data.is_empty()).then_some((name, data))
        })
        .collect();
    all.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let (seeds, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| n.starts_with("seed-"));
    rest.into_iter().take(largest).chain(seeds).collect()
}

struct Worst {
    ratio: f64,
    input: String,
    how: &'static str,
    base: usize,
    t1: Duration,
    t10: Duration,
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("scaling: {e}");
            return ExitCode::from(2);
        }
    };
    let (largest, min_time) = if o.quick { (4, Duration::from_millis(5)) } else { (16, Duration::from_millis(30)) };
    println!("| target | inputs | worst ratio (10x input) | on | base bytes | time 1x | time 10x |");
    println!("|---|---|---|---|---|---|---|");
    let mut failed = Vec::new();
    for &(name, f) in targets::ALL {
        if !o.targets.is_empty() && !o.targets.iter().any(|t| t == name) {
            continue;
        }
        let ins = inputs(&o.corpus.join(name), largest);
        if ins.is_empty() {
            println!("| `{name}` | 0 | (no corpus: run `cargo xtask fuzz {name}` first) | | | | |");
            failed.push(name);
            continue;
        }
        let mut worst: Option<Worst> = None;
        for (input, data) in &ins {
            let flat: Vec<u8> = data.iter().map(|&b| if b == b'\n' { b' ' } else { b }).collect();
            for (how, d) in [("repeated", data), ("one line, repeated", &flat)] {
                let base = repeat_to(d, BASE_BYTES);
                let big = base.repeat(10);
                let (mut t1, mut t10, mut ratio) = measure(f, &base, &big, min_time);
                // A ratio over the limit is measured again, longer, up to twice: a parser
                // that is worse than linear is over it every time, while a time of a few
                // microseconds that a preemption or a cold cache inflated once is not (a 4.8 µs
                // base gave 31x once on a loaded 2-core machine, 10x when run again).
                for retry in 1..=2 {
                    if ratio <= LIMIT {
                        break;
                    }
                    let again = measure(f, &base, &big, min_time * 4 * retry);
                    if again.2 < ratio {
                        (t1, t10, ratio) = again;
                    }
                }
                if worst.as_ref().is_none_or(|w| ratio > w.ratio) {
                    worst = Some(Worst { ratio, input: input.clone(), how, base: base.len(), t1, t10 });
                }
            }
        }
        let w = worst.expect("at least one input");
        let verdict = if w.ratio > LIMIT { " **over the limit**" } else { "" };
        println!(
            "| `{name}` | {} | {:.1}{verdict} | {} ({}) | {} | {:.1} µs | {:.1} µs |",
            ins.len(),
            w.ratio,
            w.input,
            w.how,
            w.base,
            w.t1.as_secs_f64() * 1e6,
            w.t10.as_secs_f64() * 1e6
        );
        if w.ratio > LIMIT {
            failed.push(name);
        }
    }
    if failed.is_empty() {
        println!("\nno target above {LIMIT}x on 10x its input");
        ExitCode::SUCCESS
    } else {
        eprintln!("scaling: over {LIMIT}x on 10x input, or no corpus: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
