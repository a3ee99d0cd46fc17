//! Repository hygiene: every Rust module starts with a `//!` header saying
//! what it owns, and no module imports a module that imports it (the
//! import graph of each crate, through `crate::` and `super::` paths
//! outside unit tests, has no circle).

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // A build folder (e.g. `tests/fuzz/target`) holds generated code.
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_has_a_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "shared/src", "tracker/src", "peer/src", "bench/load/src", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(missing.is_empty(), "modules without a //! header: {missing:?}");
}

/// A crate's module name for a source file (`peer/src/local/scan.rs` ->
/// `local::scan`, `local.rs` -> `local`, `lib.rs`/`main.rs` -> ``).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [only] if only == "lib" || only == "main" => String::new(),
        _ => parts.join("::"),
    }
}

/// The modules `text` (the module `me`) refers to through `crate::` and
/// `super::` paths outside comments and its unit tests, resolved to the
/// longest known module prefix.
fn references(me: &str, text: &str, known: &std::collections::BTreeSet<String>) -> Vec<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let parent = match me.rfind("::") {
        Some(i) => me[..i].to_owned(),
        None => String::new(),
    };
    let mut out = Vec::new();
    for line in code.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        for (prefix, base) in [("crate::", String::new()), ("super::", parent.clone())] {
            let mut rest = line;
            while let Some(at) = rest.find(prefix) {
                let tail = &rest[at + prefix.len()..];
                let segs: Vec<&str> = tail
                    .split("::")
                    .map(|s| s.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or(""))
                    .take_while(|s| !s.is_empty())
                    .collect();
                let mut best = None;
                for n in 1..=segs.len() {
                    let path = segs[..n].join("::");
                    let full = if base.is_empty() { path } else { format!("{base}::{path}") };
                    if known.contains(&full) {
                        best = Some(full);
                    }
                }
                if let Some(target) = best.filter(|t| t != me) {
                    out.push(target);
                }
                rest = &line[line.len() - tail.len()..];
            }
        }
    }
    out
}

/// Finds a cycle in `edges` (module -> modules it imports), if any.
fn find_cycle(edges: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &std::collections::BTreeMap<String, Vec<String>>,
        state: &mut std::collections::HashMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = std::collections::HashMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, edges, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for krate in ["src", "shared/src", "tracker/src", "peer/src", "bench/load/src"] {
        let src = root.join(krate);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let known: std::collections::BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
        let mut edges = std::collections::BTreeMap::new();
        for file in &files {
            let me = module_of(&src, file);
            let text = std::fs::read_to_string(file).unwrap();
            let mut refs = references(&me, &text, &known);
            refs.sort();
            refs.dedup();
            edges.insert(me, refs);
        }
        assert!(edges.len() > 3, "{krate}: found only {} modules", edges.len());
        if let Some(cycle) = find_cycle(&edges) {
            panic!("{krate}: import circle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut m: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
        for (a, b) in pairs {
            m.entry(a.to_string()).or_default().push(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(find_cycle(&edges(&[("a", "b"), ("b", "c")])), None);
    let cycle = find_cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    let known = ["local", "local::error", "local::scan"].iter().map(|s| s.to_string()).collect();
    let refs = references(
        "local::scan",
        "use crate::local::error::LocalError;\nuse super::error::X;\n// crate::nope\n",
        &known,
    );
    assert_eq!(refs, ["local::error", "local::error"]);
}

/// The non-test part of a source file (before its `#[cfg(test)] mod tests`).
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests").map_or(text, |at| &text[..at])
}

#[test]
fn synced_paths_are_touched_only_through_the_jail() {
    // The peer's local state and sync engine reach the synced folder only
    // through `peer::jail` (which never follows a symlink); `local/dirs.rs`
    // lays out `.dartsync/` itself, before any jail exists.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/src");
    let mut files = Vec::new();
    for dir in ["local", "sync"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.push(root.join("local.rs"));
    files.push(root.join("sync.rs"));
    // `sync/tracker_pin.rs` keeps the tracker's identity in `.dartsync/`,
    // and `sync/locate.rs` its address found on the LAN: never a synced
    // path.
    files.retain(|f| {
        !f.ends_with("local/dirs.rs")
            && !f.ends_with("local/tests.rs")
            && !f.ends_with("sync/tracker_pin.rs")
            && !f.ends_with("sync/locate.rs")
    });
    assert!(files.len() > 10, "found only {} files", files.len());
    let forbidden = [
        "fs::read",
        "fs::write",
        "fs::remove",
        "fs::rename",
        "fs::create",
        "fs::set_",
        "fs::metadata",
        "fs::symlink_metadata",
        "fs::hard_link",
        "fs::copy",
        "fs::canonicalize",
        "File::open",
        "File::create",
        "OpenOptions",
    ];
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in non_test_code(&text).lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if let Some(what) = forbidden.iter().find(|f| code.contains(*f)) {
                offenders.push(format!("{}:{}: {what}: {code}", file.display(), n + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "file-system calls outside the jail:\n{}", offenders.join("\n"));
}
