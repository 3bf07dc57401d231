//! docs/metrics.md lists exactly the families of `catalog::all()`, with the same type and labels.

use std::collections::BTreeMap;

use pve_exporter::catalog::{Def, all};

fn doc_rows() -> BTreeMap<String, (String, Vec<String>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md");
    let section = text.split("## Families").nth(1).expect("a '## Families' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", name, type, labels, source, ""]
        assert!(cells.len() >= 5, "malformed row: {line}");
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3].split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        assert!(!cells[4].is_empty(), "{name}: the Source column is empty");
        assert!(rows.insert(name.clone(), (cells[2].to_string(), labels)).is_none(), "{name} listed twice");
    }
    rows
}

fn kind(d: &Def) -> &'static str {
    d.kind.as_str()
}

#[test]
fn docs_list_every_family_with_its_type_and_labels() {
    let rows = doc_rows();
    let mut problems = Vec::new();
    for d in all() {
        let name = format!("pve_{}", d.name);
        match rows.get(&name) {
            None => problems.push(format!("{name}: in the code, missing from docs/metrics.md")),
            Some((ty, labels)) => {
                if ty != kind(d) {
                    problems.push(format!("{name}: docs say {ty}, code says {}", kind(d)));
                }
                if labels.iter().map(String::as_str).ne(d.labels.iter().copied()) {
                    problems.push(format!("{name}: docs say labels {labels:?}, code says {:?}", d.labels));
                }
            }
        }
    }
    for name in rows.keys() {
        if !all().any(|d| format!("pve_{}", d.name) == *name) {
            problems.push(format!("{name}: in docs/metrics.md, not in the code"));
        }
    }
    assert!(problems.is_empty(), "docs/metrics.md and catalog.rs disagree:\n{}", problems.join("\n"));
}

/// The Collectors table of docs/metrics.md and the README's flag table name every line of the
/// collector registry, and nothing else.
#[test]
fn docs_list_every_collector_of_the_registry() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md");
    let section = text.split("\n## Collectors").nth(1).expect("a '## Collectors' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let documented: std::collections::BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split('`').nth(1).unwrap().to_string())
        .filter(|n| !n.contains('/'))
        .collect();
    let registry: std::collections::BTreeSet<String> =
        pve_exporter::collector::REGISTRY.iter().map(|e| e.name.to_string()).collect();
    assert_eq!(documented, registry, "docs/metrics.md's Collectors table and collector::REGISTRY differ");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for n in &registry {
        assert!(readme.contains(&format!("`{n}`")), "README.md does not name the collector {n}");
    }
}
