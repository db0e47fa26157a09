//! The library's layering, read from the source: which top-level module names which (`crate::x` paths in
//! `use` lines and in code, comments stripped). No module may reach a module that reaches it back, and
//! inference (`engine`) and the kernel devices (`device`) never reach the training loop (`train`), so a
//! program that only runs a model links no training code and the model code has one direction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module of a file under `src/` (`device/kernels/rmsnorm.rs` -> `device`).
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules named by `crate::` paths in `text`, including those inside `crate::{a, b::c}`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let word = |s: &str| -> String {
            s.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(word).filter(|w| !w.is_empty()));
        } else {
            out.insert(word(rest));
        }
    }
    out
}

/// Edges `module -> modules it names`, over every library file (binaries are users, not layers).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let tops: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| module_of(Path::new(&e.file_name())))
        .filter(|m| m != "lib" && m != "bin")
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let me = module_of(rel);
        if me == "lib" || me == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let names = named_modules(&text);
        let entry = g.entry(me.clone()).or_default();
        entry.extend(names.into_iter().filter(|n| tops.contains(n) && *n != me));
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let (mut seen, mut todo) = (BTreeSet::new(), vec![from.to_string()]);
    while let Some(m) = todo.pop() {
        for n in g.get(&m).into_iter().flatten() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                todo.push(n.clone());
            }
        }
    }
    false
}

#[test]
fn the_parser_sees_grouped_and_inline_paths() {
    let text = "use crate::{config::X, model};\n// crate::train is a comment\nlet a = crate::rng::Rng::new(1);";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["config", "model", "rng"]);
}

#[test]
fn no_module_reaches_itself() {
    let g = graph();
    assert!(g.contains_key("device") && g["device"].contains("model"), "{g:?}");
    let cyclic: Vec<&String> = g.keys().filter(|m| reaches(&g, m, m)).collect();
    assert!(cyclic.is_empty(), "modules on an import cycle: {cyclic:?}\n{g:#?}");
}

#[test]
fn inference_and_kernels_do_not_reach_training() {
    let g = graph();
    for m in ["engine", "device", "model", "checkpoint", "cpu", "serve"] {
        assert!(!reaches(&g, m, "train"), "{m} reaches train:\n{g:#?}");
    }
}
