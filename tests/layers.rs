//! The import graph of `src/`: layers only import downward, and no modules import
//! each other in a loop. Read from the source text (every `crate::` and `super::`
//! path outside test modules), so it needs no tool. docs/DEVELOPMENT.md, *Code map*,
//! explains the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The components, lowest layer first. A component may import only from components
/// in earlier layers (or its own). `loadgen` and `fuzzing` are tooling: nothing
/// imports them.
const LAYERS: &[&[&str]] = &[
    &["eth", "rate", "redact", "dotenv", "figures"],
    &["store"],
    &["persist", "sm"],
    &["rtc", "relay"],
    &["sync"],
    &["http"],
    &["config"],
    &["daemon"],
    &["loadgen", "fuzzing"],
];

/// Imports that break the rule today, each with why it is still there. Remove an
/// entry once the import is gone (the test fails on an entry that no longer holds).
const KNOWN_UPWARD: &[(&str, &str, &str)] = &[];

/// Loops between the submodules of one component, as `a <-> b` pairs, that the
/// room/sync split (issue 21) removes.
const KNOWN_LOOPS: &[(&str, &str)] = &[];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/persist/pg/backend.rs` is `persist::pg::backend`; `mod.rs` is its folder.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The source without comments and test modules (`#[cfg(test)] mod x { ... }`, matched
/// by braces; `tests.rs` files are test modules whole).
fn without_tests(path: &Path, text: &str) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("#[cfg(test)]\nmod ") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(open) = after.find(['{', ';']) else {
            return out;
        };
        if after.as_bytes()[open] == b';' {
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every module path the code names, resolved from `crate::` or `super::`, with the
/// names inside `{...}` groups expanded one level.
fn paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let start_ok = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let (mut base, mut j) = if start_ok && rest.starts_with("crate::") {
            (Vec::new(), i + "crate::".len())
        } else if start_ok && rest.starts_with("super::") {
            let mut base = module.to_vec();
            let mut j = i;
            while code[j..].starts_with("super::") {
                base.pop();
                j += "super::".len();
            }
            (base, j)
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        loop {
            let seg: String = code[j..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if seg.is_empty() {
                if code[j..].starts_with('{') {
                    let end = code[j..].find('}').map_or(code.len(), |e| j + e);
                    for name in code[j + 1..end].split(',') {
                        let name: String = name
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !name.is_empty() && name != "self" {
                            let mut p = base.clone();
                            p.push(name);
                            out.push(p);
                        }
                    }
                }
                break;
            }
            base.push(seg.clone());
            j += seg.len();
            if code[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        out.push(base);
        i = j.max(i + 1);
    }
    out
}

struct Graph {
    /// component -> component -> the files that import it
    components: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// (component, submodule) -> submodules of the same component it imports
    submodules: BTreeMap<(String, String), BTreeSet<String>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let known: BTreeSet<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    let mut g = Graph {
        components: BTreeMap::new(),
        submodules: BTreeMap::new(),
    };
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src");
        let module = module_of(rel);
        let Some(component) = module.first().filter(|c| known.contains(c.as_str())) else {
            continue; // lib.rs, main.rs, bin/
        };
        let text = std::fs::read_to_string(&path).expect("read source");
        let code = without_tests(&path, &text);
        let file = rel.to_string_lossy().into_owned();
        for target in paths(&module, &code) {
            let Some(to) = target.first() else { continue };
            if !known.contains(to.as_str()) {
                continue;
            }
            if to != component {
                g.components
                    .entry(component.clone())
                    .or_default()
                    .entry(to.clone())
                    .or_default()
                    .insert(file.clone());
            } else if let (Some(from_sub), Some(to_sub)) = (module.get(1), target.get(1))
                && from_sub != to_sub
                && (src.join(component).join(format!("{to_sub}.rs")).exists()
                    || src.join(component).join(to_sub).is_dir())
            {
                g.submodules
                    .entry((component.clone(), from_sub.clone()))
                    .or_default()
                    .insert(to_sub.clone());
            }
        }
    }
    g
}

fn layer(component: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&component))
        .unwrap_or_else(|| panic!("{component} is in no layer: add it to LAYERS"))
}

#[test]
fn every_import_runs_down_the_layers() {
    let g = graph();
    let mut upward = Vec::new();
    for (from, targets) in &g.components {
        for (to, files) in targets {
            let tooling = layer(to) == LAYERS.len() - 1;
            if layer(to) < layer(from) && !tooling {
                continue;
            }
            for file in files {
                let known = KNOWN_UPWARD
                    .iter()
                    .any(|(f, a, b)| f == file && a == from && b == to);
                if !known {
                    upward.push(format!("{file}: {from} imports {to}"));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up the layers (or into tooling):\n{}",
        upward.join("\n")
    );
    for (file, from, to) in KNOWN_UPWARD {
        let still = g
            .components
            .get(*from)
            .and_then(|t| t.get(*to))
            .is_some_and(|files| files.contains(*file));
        assert!(
            still,
            "{file} no longer imports {to}: remove it from KNOWN_UPWARD"
        );
    }
}

#[test]
fn only_the_daemon_reads_the_configuration() {
    let g = graph();
    for (from, targets) in &g.components {
        if from == "daemon" || from == "loadgen" {
            continue;
        }
        for file in targets.get("config").into_iter().flatten() {
            let known = KNOWN_UPWARD
                .iter()
                .any(|(f, _, to)| f == file && *to == "config");
            assert!(known, "{file} reads config; only daemon/ may");
        }
        assert!(
            !targets.contains_key("daemon"),
            "{from} imports daemon: {:?}",
            targets.get("daemon")
        );
    }
}

#[test]
fn no_submodules_import_each_other_in_a_loop() {
    let g = graph();
    let mut loops = BTreeSet::new();
    for ((component, from), targets) in &g.submodules {
        for to in targets {
            // Is `from` reachable from `to`?
            let mut seen = BTreeSet::new();
            let mut stack = vec![to.clone()];
            while let Some(m) = stack.pop() {
                if !seen.insert(m.clone()) {
                    continue;
                }
                if let Some(next) = g.submodules.get(&(component.clone(), m)) {
                    stack.extend(next.iter().cloned());
                }
            }
            if seen.contains(from) {
                let (a, b) = if from < to { (from, to) } else { (to, from) };
                loops.insert(format!("{component}::{a} <-> {component}::{b}"));
            }
        }
    }
    let known: BTreeSet<String> = KNOWN_LOOPS
        .iter()
        .map(|(a, b)| format!("{a} <-> {b}"))
        .collect();
    let new: Vec<_> = loops.difference(&known).collect();
    assert!(new.is_empty(), "import loops inside a component: {new:?}");
}

#[test]
fn the_reader_sees_what_it_should() {
    let code = without_tests(
        Path::new("x.rs"),
        "use crate::a;\n#[cfg(test)]\nmod tests {\n    fn f() { crate::b::c(); }\n}\nuse crate::d;",
    );
    assert!(
        code.contains("crate::a") && code.contains("crate::d"),
        "{code}"
    );
    assert!(!code.contains("crate::b"), "{code}");
    let module = vec!["persist".to_owned(), "pg".to_owned(), "backend".to_owned()];
    let found = paths(
        &module,
        "use super::client::X;\nuse crate::persist::{error::Loaded, Backend};\nlet t = crate::rtc::peer::f();",
    );
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert!(
        found.contains(&"persist::pg::client::X".to_owned()),
        "{found:?}"
    );
    assert!(found.contains(&"persist::error".to_owned()), "{found:?}");
    assert!(found.contains(&"rtc::peer::f".to_owned()), "{found:?}");
}
