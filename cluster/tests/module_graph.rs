//! The modules of every workspace crate form a graph that points one way: no two top-level modules
//! of a crate import each other, directly or through others (ARCHITECTURE § Crates and modules).
//! A module's parts (files under `src/NAME/`) belong to it: a part may use its parent.
//!
//! Read from the source text: every `crate::NAME` path and every name in a `use crate::{..}`
//! group, outside comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level module a source file belongs to (`src/a.rs` and `src/a/b.rs` → `a`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names through `crate::`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let Some(end) = group.find('}') else { continue };
            // A nested group's own braces end early; the heads before it are what counts.
            for item in group[..end].split(',') {
                let head = ident(item.trim());
                if !head.is_empty() {
                    names.insert(head);
                }
            }
        } else {
            let head = ident(rest);
            if !head.is_empty() {
                names.insert(head);
            }
        }
    }
    names
}

/// A cycle in `graph`, if it has one, as the path of module names around it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|n| n == next).unwrap_or(0);
                    let mut found = path[start..].to_vec();
                    found.push(next.clone());
                    return Some(found);
                }
                0 => {
                    if let Some(found) = visit(next, graph, state, path) {
                        return Some(found);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(found) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_circle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut crates = 0;
    for entry in std::fs::read_dir(&workspace).unwrap().flatten() {
        let src = entry.path().join("src");
        if !src.join("lib.rs").exists() && !src.join("main.rs").exists() {
            continue;
        }
        crates += 1;
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(module) = module_of(&src, file) else {
                continue;
            };
            let text = std::fs::read_to_string(file).unwrap();
            let edges = graph.entry(module.clone()).or_default();
            for name in imports(&text) {
                if name != module {
                    edges.insert(name);
                }
            }
        }
        let modules: BTreeSet<String> = graph.keys().cloned().collect();
        for edges in graph.values_mut() {
            edges.retain(|name| modules.contains(name));
        }
        if let Some(found) = cycle(&graph) {
            panic!(
                "{}: modules import each other: {}",
                entry.path().display(),
                found.join(" -> ")
            );
        }
    }
    assert!(
        crates >= 6,
        "found only {crates} crates under {workspace:?}"
    );
}

#[test]
fn the_reader_finds_circles_and_grouped_imports() {
    assert_eq!(
        imports(
            "use crate::a::X;\n// use crate::z;\nuse crate::{b::Y, c};\nfn f() { crate::d::g() }"
        ),
        ["a", "b", "c", "d"].map(String::from).into()
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    let mut acyclic = graph.clone();
    acyclic.insert("c".into(), BTreeSet::new());
    assert_eq!(cycle(&acyclic), None);
}
