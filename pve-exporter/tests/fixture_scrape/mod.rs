//! Shared by the fixture tests: one scrape of a host tree through the library (no HTTP), a
//! parser of the text format, and golden files.
#![allow(dead_code)] // each test binary uses a different part

use std::{collections::BTreeSet, path::Path, sync::Arc};

use pve_exporter::{
    collector::Engine,
    config::Config,
    exposition::{self, Format},
};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");

/// The fixture host tree `fixtures/hosts/<name>`.
pub fn tree(name: &str) -> String {
    format!("{FIXTURES}/hosts/{name}")
}

/// One collection with `args` (plus `--ebpf off`), rendered in `format`.
pub fn scrape(args: &[&str], format: Format) -> String {
    let mut all = vec!["pve-exporter", "--ebpf", "off"];
    all.extend_from_slice(args);
    let engine = Engine::new(Config::from_args(all).expect("flags parse")).expect("engine starts with --ebpf off");
    exposition::render(Arc::new(engine.collect()), format)
}

// ---------------------------------------------------------------------------------------------
// Parsing the text format: `name{l="v",...} value` and `name value`.

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: String,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The label's value, "" when the sample has no such label.
    pub fn get(&self, key: &str) -> &str {
        self.label(key).unwrap_or("")
    }

    pub fn num(&self) -> f64 {
        self.value.parse().unwrap_or_else(|e| panic!("{self:?}: value is not a number: {e}"))
    }

    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name && labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Parse one sample line; None for comments and blank lines. Panics on a malformed line: the
/// exporter must never write one.
pub fn parse_sample(line: &str) -> Option<Sample> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = line[..name_end].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next().unwrap_or_else(|| panic!("unterminated labels: {line:?}"));
            match c {
                '}' if key.is_empty() => break,
                ',' if key.is_empty() => continue,
                '=' => {
                    let (_, q) = chars.next().expect("label value");
                    assert_eq!(q, '"', "label value not quoted: {line:?}");
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c @ ('\\' | '"')) => value.push(c),
                                other => panic!("bad escape {other:?} in {line:?}"),
                            },
                            Some(c) => value.push(c),
                            None => panic!("unterminated label value: {line:?}"),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        // What follows the closing brace: ` <value>`.
        rest = chars.as_str();
        assert!(rest.starts_with(' '), "no space before the value: {line:?}");
    }
    let value = rest.trim_start();
    assert!(!value.is_empty() && !value.contains(' '), "expected exactly one value (no timestamps) in {line:?}");
    Some(Sample { name, labels, value: value.to_string() })
}

pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

/// Every sample of `name` whose labels include `labels`.
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    samples(text).into_iter().filter(|s| s.matches(name, labels)).collect()
}

/// The value of the one sample of `name` with `labels`; None when there is none, panics when
/// there are several.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = series(text, name, labels);
    assert!(found.len() <= 1, "{name}{labels:?} matches {} samples: {found:?}", found.len());
    found.first().map(Sample::num)
}

#[track_caller]
pub fn assert_value(text: &str, name: &str, labels: &[(&str, &str)], want: f64) {
    match value(text, name, labels) {
        Some(v) => assert_eq!(v, want, "{name}{labels:?}"),
        None => panic!("{name}{labels:?} missing; output:\n{text}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Golden files.

/// Make a scrape comparable: timings become 0, the feature-dependent build label a constant,
/// and so does the value of every sample for which `zero` says so (machine-dependent values).
pub fn normalize(text: &str, zero: impl Fn(&Sample) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut line = line.to_string();
        if let Some(s) = parse_sample(&line) {
            if s.name.ends_with("_duration_seconds") || zero(&s) {
                let (head, _) = line.rsplit_once(' ').expect("sample has a value");
                line = format!("{head} 0");
            }
            if s.name.ends_with("_exporter_build_info") {
                line = line.replace("ebpf_programs=\"built\"", "ebpf_programs=\"absent\"");
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A readable account of how `actual` differs from `expected`: the first differing line with
/// context, then the lines only one side has.
pub fn describe_diff(expected: &str, actual: &str) -> String {
    let exp: Vec<&str> = expected.lines().collect();
    let act: Vec<&str> = actual.lines().collect();
    let mut out = format!("expected {} lines, got {} lines\n", exp.len(), act.len());
    let first = (0..exp.len().max(act.len())).find(|&i| exp.get(i) != act.get(i)).unwrap_or(0);
    out.push_str(&format!("first difference at line {}:\n", first + 1));
    for i in first.saturating_sub(2)..(first + 3).min(exp.len().max(act.len())) {
        let (e, a) = (exp.get(i), act.get(i));
        if e == a {
            out.push_str(&format!("  {:>4}   {}\n", i + 1, e.unwrap_or(&"")));
        } else {
            out.push_str(&format!("  {:>4} - {}\n", i + 1, e.unwrap_or(&"<end of file>")));
            out.push_str(&format!("  {:>4} + {}\n", i + 1, a.unwrap_or(&"<end of file>")));
        }
    }
    let exp_set: BTreeSet<&str> = exp.iter().copied().collect();
    let act_set: BTreeSet<&str> = act.iter().copied().collect();
    const MAX: usize = 40;
    for (title, mine, other, mark) in
        [("only in the golden file", &exp, &act_set, '-'), ("only in the output", &act, &exp_set, '+')]
    {
        let only: Vec<&&str> = mine.iter().filter(|l| !other.contains(**l)).collect();
        if only.is_empty() {
            continue;
        }
        out.push_str(&format!("{title} ({}):\n", only.len()));
        for l in only.iter().take(MAX) {
            out.push_str(&format!("  {mark} {l}\n"));
        }
        if only.len() > MAX {
            out.push_str(&format!("  ... {} more\n", only.len() - MAX));
        }
    }
    out
}

/// Compare a normalized scrape with `fixtures/golden/<file>`; `UPDATE_GOLDEN=1` rewrites the file
/// instead (review the diff of fixtures/golden before committing it).
#[track_caller]
pub fn check_golden(actual: &str, file: &str) {
    let golden = Path::new(FIXTURES).join("golden").join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&golden, actual).expect("write golden file");
        eprintln!("wrote {}", golden.display());
        return;
    }
    let expected = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with UPDATE_GOLDEN=1", golden.display()));
    if expected != actual {
        panic!(
            "output differs from {} (UPDATE_GOLDEN=1 rewrites it after an intended change)\n{}",
            golden.display(),
            describe_diff(&expected, actual)
        );
    }
}

/// Copy a fixture tree, keeping symlinks as symlinks (`exe`).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ty = entry.file_type().expect("file type");
        if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).expect("readlink"), &dst).expect("symlink");
        } else if ty.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}
