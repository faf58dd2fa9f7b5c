//! `cargo xtask modgraph`: the import graph between the top-level modules
//! of the `lb-userspace` library, and a check that it has no cycle: no
//! module imports, directly or through others, a module that imports it.
//! `cargo xtask test` runs the check.
//!
//! A module is a file or folder directly under `lb-userspace/src` (a
//! folder's files count as one module: `owner/` is `owner`). An import is
//! any path `crate::NAME` in its source, tests included (`use` lines, paths
//! in code, and `crate::{a, b::c}` groups). The binary (`main.rs`, `cli/`)
//! is a crate of its own on top of the library and is left out.
//!
//! The same check holds every file of `lb-userspace/src` (the binary's
//! too) to [`MAX_FILE_LINES`] lines of code outside its tests (a
//! `#[cfg(test)] mod tests` at its end, or a `tests.rs`); clippy's
//! `too_many_lines` holds functions to 120.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The most lines of non-test code a file of lb-userspace may have.
pub(crate) const MAX_FILE_LINES: usize = 700;

/// Lines of `text` before its test module.
fn code_lines(text: &str) -> usize {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines().count()
}

/// The files over [`MAX_FILE_LINES`], with their counts.
fn oversized(src: &Path) -> Result<Vec<(PathBuf, usize)>> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    let mut out = Vec::new();
    for f in files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let n = code_lines(&text);
        if n > MAX_FILE_LINES {
            out.push((f, n));
        }
    }
    Ok(out)
}

/// Module → the modules it imports, with one place for each import.
pub(crate) type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The library's import graph.
pub(crate) fn graph(src: &Path) -> Result<Graph> {
    let lib = fs::read_to_string(src.join("lib.rs"))
        .with_context(|| format!("reading {}", src.join("lib.rs").display()))?;
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_string())
        })
        .collect();
    let mut g = Graph::new();
    for m in &modules {
        let mut files = Vec::new();
        let file = src.join(format!("{m}.rs"));
        if file.exists() {
            files.push(file);
        }
        let dir = src.join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files)?;
        }
        if files.is_empty() {
            bail!(
                "module {m} of lib.rs has no {m}.rs and no {m}/ under {}",
                src.display()
            );
        }
        let edges = g.entry(m.clone()).or_default();
        for f in files {
            let text =
                fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            for (line, target) in imports(&text) {
                if target != *m && modules.contains(&target) {
                    let at = format!("{}:{line}", f.strip_prefix(src).unwrap_or(&f).display());
                    edges.entry(target).or_insert(at);
                }
            }
        }
    }
    Ok(g)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// Every `crate::NAME` a source names, with its line: `crate::a::b`,
/// `crate::{a, b::c, d::{e, f}}` (the first segment of each item of a
/// group). Comments are skipped.
pub(crate) fn imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        // `crate` must be a whole word (not `lb_crate::`, `$crate::`).
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || matches!(bytes[at - 1], b'_' | b'$'))
        {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            let mut word = String::new();
            let mut flush = |word: &mut String, item_start: &mut bool, k: usize| {
                if *item_start && !word.is_empty() {
                    out.push((line_of(from + 1 + k), std::mem::take(word)));
                }
                word.clear();
                *item_start = false;
            };
            for (k, c) in group.char_indices() {
                match c {
                    '{' => {
                        flush(&mut word, &mut item_start, k);
                        depth += 1;
                    }
                    '}' if depth == 0 => {
                        flush(&mut word, &mut item_start, k);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        flush(&mut word, &mut item_start, k);
                        item_start = true;
                    }
                    c if item_start && (c.is_alphanumeric() || c == '_') => word.push(c),
                    c if c.is_whitespace() && word.is_empty() => {}
                    _ => flush(&mut word, &mut item_start, k),
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((line_of(at), name));
            }
        }
    }
    out
}

/// The cycles of `g` (its strongly connected components of more than one
/// module), each as its modules in name order.
pub(crate) fn cycles(g: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm, recursive: the graph has a few dozen nodes.
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The modules from the bottom up: each after every module it imports.
fn layers(g: &Graph) -> Vec<Vec<String>> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < g.len() {
        let layer: Vec<String> = g
            .iter()
            .filter(|(m, e)| {
                !done.contains(m.as_str()) && e.keys().all(|d| done.contains(d.as_str()))
            })
            .map(|(m, _)| m.clone())
            .collect();
        if layer.is_empty() {
            break; // a cycle: `check` says which
        }
        done.extend(g.keys().filter(|m| layer.contains(m)).map(String::as_str));
        out.push(layer);
    }
    out
}

/// Fails, naming each cycle and the import lines that make it, when the
/// library's modules import each other in a cycle.
pub(crate) fn check(root: &Path) -> Result<()> {
    let src = root.join("lb-userspace/src");
    let big = oversized(&src)?;
    if !big.is_empty() {
        let list: Vec<String> = big
            .iter()
            .map(|(f, n)| format!("  {} has {n} lines of non-test code", f.display()))
            .collect();
        bail!(
            "files of lb-userspace over {MAX_FILE_LINES} lines of non-test code:\n{}\nSplit each by \
             concept (docs/architecture.md lists what lives where).",
            list.join("\n")
        );
    }
    let g = graph(&src)?;
    let found = cycles(&g);
    if found.is_empty() {
        println!(
            "module graph: {} modules of lb-userspace, no import cycle; no file over {MAX_FILE_LINES} \
             lines of non-test code",
            g.len()
        );
        return Ok(());
    }
    let mut msg = String::from("lb-userspace's modules import each other in a cycle:\n");
    for c in &found {
        msg += &format!("  {}\n", c.join(" <-> "));
        for a in c {
            for (b, at) in &g[a] {
                if c.contains(b) {
                    msg += &format!("    {a} -> {b} ({at})\n");
                }
            }
        }
    }
    msg += "A producer sends its own event type and never imports its consumer; move the \
            shared type down (model.rs, stats.rs) or the code up (owner/). See \
            docs/architecture.md.";
    bail!(msg)
}

/// Prints the graph from the bottom layer up.
pub(crate) fn print(root: &Path) -> Result<()> {
    let g = graph(&root.join("lb-userspace/src"))?;
    for (i, layer) in layers(&g).iter().enumerate() {
        for m in layer {
            let deps: Vec<&str> = g[m].keys().map(String::as_str).collect();
            println!("{i}  {m:<10} -> {}", deps.join(", "));
        }
    }
    check(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_found_in_paths_and_groups_but_not_comments() {
        let src = "use crate::{\n    config::{Config, VipConfig},\n    model::VipAddr,\n    stats,\n};\n\
                   // crate::owner is not imported here\nfn f() { crate::health::probe(); }\n\
                   macro_rules! m { () => { $crate::api } }\n";
        let names: Vec<(usize, String)> = imports(src);
        assert_eq!(
            names,
            [
                (2, "config".to_string()),
                (3, "model".to_string()),
                (4, "stats".to_string()),
                (7, "health".to_string()),
            ]
        );
    }

    #[test]
    fn test_modules_do_not_count() {
        assert_eq!(code_lines("a\nb\n#[cfg(test)]\nmod tests {\n x\n}\n"), 2);
        assert_eq!(code_lines("a\nb\nc\n"), 3);
    }

    #[test]
    fn cycles_are_found_and_layers_stop_at_them() {
        let edge = |a: &str, bs: &[&str]| {
            (
                a.to_string(),
                bs.iter()
                    .map(|b| (b.to_string(), "x".to_string()))
                    .collect(),
            )
        };
        let g: Graph = [
            edge("model", &[]),
            edge("health", &["model", "owner"]),
            edge("owner", &["health", "model"]),
            edge("api", &["owner"]),
        ]
        .into_iter()
        .collect();
        assert_eq!(cycles(&g), [["health", "owner"]]);
        let acyclic: Graph = [
            edge("model", &[]),
            edge("health", &["model"]),
            edge("owner", &["health", "model"]),
        ]
        .into_iter()
        .collect();
        assert!(cycles(&acyclic).is_empty());
        assert_eq!(
            layers(&acyclic),
            [
                vec!["model".to_string()],
                vec!["health".to_string()],
                vec!["owner".to_string()]
            ]
        );
    }
}
