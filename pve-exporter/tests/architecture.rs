//! The rules of docs/architecture.md, checked on the source tree, so a change that breaks
//! them fails the suite instead of drifting:
//!
//! - sources are leaves: nothing under `src/sources/` imports a collector, the configuration,
//!   the VM model or the HTTP side;
//! - no import circles between the daemon's modules (file level);
//! - no `Result<_, String>` in sources and collectors (typed errors; text only at the edge);
//! - every collector name that `pve_exporter_collector_success` reports in the golden files
//!   is a registry line, and `--help` offers `--collector.<name>` for each line.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file below src/ (`sources/qemu/monitor.rs` -> `sources::qemu::monitor`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(SRC).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The file's code without comments and without its `#[cfg(test)]` module (tests may use
/// anything; a doc link is no import).
fn code(file: &Path) -> String {
    let t = std::fs::read_to_string(file).unwrap();
    let t = match t.find("#[cfg(test)]\nmod tests") {
        Some(i) => &t[..i],
        None => &t[..],
    };
    // Comment lines blanked, not dropped: line numbers stay those of the file.
    t.lines().map(|l| if l.trim_start().starts_with("//") { "" } else { l }).collect::<Vec<_>>().join("\n")
}

/// Every `crate::a::b::c` path the code names, with `super::` resolved against `module`.
fn crate_paths(module: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let (base, skip) = if rest.starts_with("crate::") {
            (String::new(), "crate::".len())
        } else if rest.starts_with("super::") && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let mut parent: Vec<&str> = module.split("::").collect();
            parent.pop();
            (parent.join("::"), "super::".len())
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let tail: String =
            rest[skip..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        let full = if base.is_empty() { tail.clone() } else { format!("{base}::{tail}") };
        out.push(full.trim_end_matches(':').to_string());
        // Grouped imports: `crate::sources::{a::b, c}` name `sources::a::b` and `sources::c`.
        let after = skip + tail.len();
        if rest[after..].starts_with('{') && (tail.is_empty() || tail.ends_with("::")) {
            let mut depth = 0;
            let mut end = after;
            for (k, c) in rest[after..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = after + k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let prefix = out.pop().unwrap();
            for item in split_top(&rest[after + 1..end]) {
                let item = item.trim();
                if item.is_empty() || item == "self" {
                    out.push(prefix.clone());
                    continue;
                }
                let head: String =
                    item.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
                let head = head.trim_end_matches(':');
                out.push(if prefix.is_empty() { head.to_string() } else { format!("{prefix}::{head}") });
            }
            i += end;
            continue;
        }
        i += after.max(1);
    }
    out
}

/// Split a brace group's items at its top-level commas, each with its own nested group
/// flattened into its first path (enough to find the modules it names).
fn split_top(s: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(String::new());
                continue;
            }
            _ => {}
        }
        items.last_mut().unwrap().push(c);
    }
    // `a::{b, c}` inside a group: name a::b and a::c.
    let mut out = Vec::new();
    for it in items {
        if let Some(open) = it.find('{') {
            let head = &it[..open];
            let inner = &it[open + 1..it.rfind('}').unwrap_or(it.len())];
            for sub in split_top(inner) {
                out.push(format!("{}{}", head.trim(), sub.trim()));
            }
        } else {
            out.push(it);
        }
    }
    out
}

/// The modules (files) of the crate, and for each the modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    let modules: BTreeSet<String> =
        files.iter().filter(|f| !f.starts_with(format!("{SRC}/bin"))).map(|f| module_of(f)).collect();
    let mut g = BTreeMap::new();
    for f in files.iter().filter(|f| !f.starts_with(format!("{SRC}/bin")) && !f.ends_with("main.rs")) {
        let m = module_of(f);
        let mut deps = BTreeSet::new();
        for p in crate_paths(&m, &code(f)) {
            // The longest module that prefixes the path.
            let mut parts: Vec<&str> = p.split("::").collect();
            while !parts.is_empty() {
                let cand = parts.join("::");
                if modules.contains(&cand) {
                    if cand != m && !m.starts_with(&format!("{cand}::")) {
                        deps.insert(cand);
                    }
                    break;
                }
                parts.pop();
            }
        }
        g.insert(m, deps);
    }
    g
}

#[test]
fn sources_are_leaves() {
    let forbidden = ["collector", "config", "vm", "server", "web", "service", "http_limits", "exposition"];
    let g = graph();
    let mut problems = Vec::new();
    for (m, deps) in g.iter().filter(|(m, _)| m.starts_with("sources")) {
        for d in deps {
            let top = d.split("::").next().unwrap();
            if forbidden.contains(&top) {
                problems.push(format!("{m} imports {d}"));
            }
        }
    }
    assert!(problems.is_empty(), "sources must be leaves (docs/architecture.md):\n{}", problems.join("\n"));
}

#[test]
fn no_import_circles() {
    let g = graph();
    // Depth-first search for a back edge; the circle is printed.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        found: &mut Vec<String>,
    ) {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            // A parent module (`mod.rs`) declares its children: that edge is not an import.
            if d.starts_with(&format!("{m}::")) {
                continue;
            }
            match state.get(d.as_str()).copied().unwrap_or(0) {
                0 => visit(d, g, state, stack, found),
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap();
                    found.push(format!("{} -> {d}", stack[at..].join(" -> ")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    let mut found = Vec::new();
    for m in g.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            visit(m, &g, &mut state, &mut Vec::new(), &mut found);
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn no_string_errors_in_sources_and_collectors() {
    let mut files = Vec::new();
    rust_files(&Path::new(SRC).join("sources"), &mut files);
    rust_files(&Path::new(SRC).join("collector"), &mut files);
    let mut problems = Vec::new();
    for f in files {
        for (n, line) in code(&f).lines().enumerate() {
            let l = line.replace(' ', "");
            if l.contains(",String>") && l.contains("Result<") {
                problems.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "Result<_, String> in sources/collectors:\n{}", problems.join("\n"));
}

#[test]
fn every_reported_collector_is_a_registry_line_with_a_flag() {
    let names: BTreeSet<&str> = pve_exporter::collector::REGISTRY.iter().map(|e| e.name).collect();
    assert_eq!(names.len(), pve_exporter::collector::REGISTRY.len(), "duplicate registry names");
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/golden");
    let mut reported = BTreeSet::new();
    for e in std::fs::read_dir(golden).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| l.starts_with("pve_exporter_collector_success{")) {
            let name = line.split('"').nth(1).unwrap();
            // Per-node runs of cluster scope: `<collector>/<node>`.
            reported.insert(name.split('/').next().unwrap().to_string());
        }
    }
    assert!(reported.len() >= 10, "{reported:?}");
    for r in &reported {
        assert!(names.contains(r.as_str()), "{r} is reported but is no registry line");
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_pve-exporter")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for n in &names {
        assert!(help.contains(&format!("--collector.{n}")), "--help lacks --collector.{n}");
    }
}
