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

/// The top-level modules a source text names through `crate::` (or `super::`, in a file directly
/// under `src/`, where it means the same).
fn imports(text: &str, top_level_file: bool) -> BTreeSet<String> {
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
    let mut prefixes = vec!["crate::"];
    if top_level_file {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        for (at, _) in code.match_indices(prefix) {
            // `super::` inside a longer path (`self::super::`, `super::super::`) is not the root.
            if prefix == "super::" && code[..at].ends_with("::") {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // The heads of a group are the items separated by commas at its own depth.
                let mut depth = 0usize;
                let mut item_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if c.is_whitespace() => {}
                        _ if item_start && depth == 0 => {
                            item_start = false;
                            let head = ident(&group[i..]);
                            if !head.is_empty() {
                                names.insert(head);
                            }
                        }
                        _ => {}
                    }
                }
            } else {
                let head = ident(rest);
                if !head.is_empty() {
                    names.insert(head);
                }
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
    let manifest = std::fs::read_to_string(workspace.join("Cargo.toml")).unwrap();
    let members: Vec<String> = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("members = ["))
        .expect("the workspace lists its members on one line")
        .split(',')
        .map(|m| m.trim().trim_matches(|c| c == '"' || c == ']').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    assert!(members.len() >= 7, "members: {members:?}");
    for member in &members {
        let crate_dir = workspace.join(member);
        let src = crate_dir.join("src");
        assert!(
            src.join("lib.rs").exists() || src.join("main.rs").exists(),
            "{member} has no src/lib.rs or src/main.rs"
        );
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(module) = module_of(&src, file) else {
                continue;
            };
            let text = std::fs::read_to_string(file).unwrap();
            let top_level_file = file.parent() == Some(src.as_path());
            let edges = graph.entry(module.clone()).or_default();
            for name in imports(&text, top_level_file) {
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
                "{member}: modules import each other: {}",
                found.join(" -> ")
            );
        }
    }
}

#[test]
fn the_reader_finds_circles_and_grouped_imports() {
    let text = "use crate::a::X;\n// use crate::z;\nuse crate::{b::{Y, y::Z}, c};\nfn f() { crate::d::g() }";
    assert_eq!(
        imports(text, false),
        ["a", "b", "c", "d"].map(String::from).into()
    );
    // In a file directly under src/, `super::` is the crate root; in a part, its parent.
    let text = "use super::{e, f::G};\nuse self::super::h;";
    assert_eq!(imports(text, true), ["e", "f"].map(String::from).into());
    assert!(imports(text, false).is_empty());
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
