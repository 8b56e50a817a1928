//! The module map in docs/architecture.md is true of the code: every `crate::` path a module
//! uses points to its own layer or a lower one, and no two modules import each other (directly
//! or round a longer loop). rustc allows module cycles, so this test looks.
//!
//! Reads the layer table between `<!-- layers:begin -->` and `<!-- layers:end -->` in
//! docs/architecture.md and the sources under core/src. Test-only code (inline `#[cfg(test)]`
//! modules, files declared `#[cfg(test)] mod …;`) is not part of the map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Layer number by top-level module, from the doc's table (`| 0 | clock, plan | … |`).
fn layers() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md"),
    )
    .unwrap();
    let begin = doc
        .find("<!-- layers:begin -->")
        .expect("layers:begin marker");
    let end = doc.find("<!-- layers:end -->").expect("layers:end marker");
    let mut out = BTreeMap::new();
    for line in doc[begin..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let Ok(layer) = cells[1].parse::<usize>() else {
            continue;
        };
        for m in cells[2].split(',') {
            let m = m.trim().trim_matches('`');
            if !m.is_empty() {
                out.insert(m.to_string(), layer);
            }
        }
    }
    assert!(
        !out.is_empty(),
        "no layer rows found in docs/architecture.md"
    );
    out
}

/// A source file: its module path (`["dataplane", "host"]`) and its non-test code.
struct Source {
    module: Vec<String>,
    path: PathBuf,
    code: String,
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Without comments and without the test module at the end of the file.
fn production_code(text: &str) -> (String, Vec<String>) {
    let mut code = String::new();
    let mut test_files = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]" {
            // Other attributes may stand between the cfg and the item.
            while lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("#["))
            {
                lines.next();
            }
            let next = lines
                .peek()
                .map(|l| l.trim().to_string())
                .unwrap_or_default();
            let decl = next
                .strip_prefix("pub(crate) mod ")
                .or_else(|| next.strip_prefix("pub mod "))
                .or_else(|| next.strip_prefix("mod "));
            if let Some(rest) = decl {
                if let Some(name) = rest.strip_suffix(';') {
                    test_files.push(name.to_string());
                    lines.next();
                    continue;
                }
                // An inline test module: by convention the rest of the file.
                break;
            }
        }
        if t.starts_with("//") {
            continue;
        }
        // A trailing comment holds no imports (and may hold `crate::` in prose).
        let line = match line.find(" // ") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    (code, test_files)
}

fn sources() -> Vec<Source> {
    let root = src();
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&root).unwrap().to_path_buf();
        let module = module_of(&rel);
        if module == ["lib"] || module == ["main"] {
            continue;
        }
        let (code, tests) = production_code(&std::fs::read_to_string(&path).unwrap());
        let parent: Vec<String> = if rel.ends_with("mod.rs") || rel.components().count() == 1 {
            module.clone()
        } else {
            module[..module.len() - 1].to_vec()
        };
        for t in tests {
            let mut m = parent.clone();
            m.push(t);
            test_only.insert(m);
        }
        out.push(Source { module, path, code });
    }
    out.retain(|s| !test_only.iter().any(|t| s.module.starts_with(t)));
    out
}

/// Every module path a piece of code names through `crate::` or `super::`, as written
/// (`crate::dataplane::host::X` → `["dataplane", "host", "X"]`), with its line.
fn references(s: &Source) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    for (n, line) in s.code.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::").or_else(|| rest.find("super::")) {
            let is_super = rest[i..].starts_with("super::");
            let before = rest[..i].chars().last();
            let tail = &rest[i + "crate::".len()..];
            rest = tail;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let base: Vec<String> = if is_super {
                // `super` of `a::b` (a/b.rs or a/b/mod.rs) is `a`.
                let mut m = s.module.clone();
                m.pop();
                m
            } else {
                Vec::new()
            };
            for path in expand(tail) {
                let mut full = base.clone();
                full.extend(path);
                if !full.is_empty() {
                    out.push((full, n + 1));
                }
            }
        }
    }
    out
}

/// `a::b::X` → [[a, b, X]]; `{a, b::{c, d}}` → [[a], [b, c], [b, d]] (first level is enough).
fn expand(tail: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(inner) = tail.strip_prefix('{') {
        let mut depth = 0;
        let mut end = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let mut out = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let body = &inner[..end];
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(expand(body[start..i].trim()));
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.extend(expand(body[start..].trim()));
        return out;
    }
    let mut path = Vec::new();
    let mut rest = tail;
    loop {
        let id = ident(rest);
        if id.is_empty() || id == "self" {
            break;
        }
        rest = &rest[id.len()..];
        path.push(id);
        match rest.strip_prefix("::") {
            Some(r) if r.starts_with('{') => {
                return expand(r)
                    .into_iter()
                    .map(|mut p| {
                        let mut full = path.clone();
                        full.append(&mut p);
                        full
                    })
                    .collect();
            }
            Some(r) => rest = r,
            None => break,
        }
    }
    vec![path]
}

/// The longest prefix of `path` that is a module (a file or directory under src).
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

#[test]
fn no_module_imports_a_higher_layer() {
    let layers = layers();
    let sources = sources();
    let mut problems = Vec::new();
    for s in &sources {
        let top = &s.module[0];
        let Some(&mine) = layers.get(top) else {
            problems.push(format!(
                "{}: module {top} is not in the layer table",
                s.path.display()
            ));
            continue;
        };
        for (r, line) in references(s) {
            let target = &r[0];
            if target == top {
                continue;
            }
            // Names not in the table are items of the crate root (lib.rs), not modules.
            if let Some(&theirs) = layers.get(target)
                && theirs > mine
            {
                problems.push(format!(
                    "{}:{line}: {top} (layer {mine}) imports {} (layer {theirs})",
                    s.path.display(),
                    r.join("::")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_two_modules_import_each_other() {
    let sources = sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    // Edges between modules that are neither the other's ancestor nor descendant (a parent
    // declares its children, and children use the parent's items: that is not a cycle).
    let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
    for s in &sources {
        for (r, line) in references(s) {
            let Some(to) = resolve(&r, &modules) else {
                continue;
            };
            if to.starts_with(&s.module) || s.module.starts_with(&to) {
                continue;
            }
            edges
                .entry(s.module.clone())
                .or_default()
                .entry(to)
                .or_insert_with(|| format!("{}:{line}", s.path.display()));
        }
    }
    // Lift edges to every ancestor pair that is not nested, so `a::x → b::y` and
    // `b::z → a::w` are a cycle between a and b.
    let mut lifted: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
    for (from, tos) in &edges {
        for (to, at) in tos {
            for i in 1..=from.len() {
                for j in 1..=to.len() {
                    let (a, b) = (from[..i].to_vec(), to[..j].to_vec());
                    if a.starts_with(&b) || b.starts_with(&a) {
                        continue;
                    }
                    lifted.entry(a).or_default().entry(b).or_insert(at.clone());
                }
            }
        }
    }
    let mut cycles = Vec::new();
    for (a, tos) in &lifted {
        for (b, at) in tos {
            if a < b
                && let Some(back) = lifted.get(b).and_then(|m| m.get(a))
            {
                cycles.push(format!(
                    "{} <-> {}: {at} and {back}",
                    a.join("::"),
                    b.join("::")
                ));
            }
        }
    }
    // Longer loops: a depth-first search over the lifted graph of top-level modules.
    let tops: BTreeMap<String, BTreeSet<String>> = lifted
        .iter()
        .filter(|(a, _)| a.len() == 1)
        .map(|(a, tos)| {
            (
                a[0].clone(),
                tos.keys()
                    .filter(|b| b.len() == 1)
                    .map(|b| b[0].clone())
                    .collect(),
            )
        })
        .collect();
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == n) {
            if path.len() - i > 2 {
                found.push(format!("{} -> {n}", path[i..].join(" -> ")));
            }
            return;
        }
        if done.contains(n) {
            return;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, path, done, found);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in tops.keys() {
        visit(n, &tops, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_reads_grouped_and_nested_imports() {
    assert_eq!(
        expand("{a, b::{c, d}, e::f::G}; rest"),
        [
            vec!["a".to_string()],
            vec!["b".into(), "c".into()],
            vec!["b".into(), "d".into()],
            vec!["e".into(), "f".into(), "G".into()],
        ]
    );
    assert_eq!(
        expand("dataplane::host::X;"),
        [vec!["dataplane".to_string(), "host".into(), "X".into()]]
    );
    let (code, tests) = production_code(
        "use crate::a;\n// crate::b in prose\n#[cfg(test)]\nmod fake;\nx; // crate::c\n#[cfg(test)]\n#[allow(dead_code)]\nmod tests {\nuse crate::d;\n}\n",
    );
    assert!(code.contains("crate::a") && !code.contains("crate::b"));
    assert!(!code.contains("crate::c") && !code.contains("crate::d"));
    assert_eq!(tests, ["fake"]);
}
