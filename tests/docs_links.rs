//! The pages under `docs/` name files and the functions, kernels and types in them; this test keeps the names
//! true to the code, so a renamed function, a moved file or a deleted kernel fails here until its page follows.
//!
//! The convention (also stated at the top of `docs/README.md`), outside fenced code blocks:
//! - a backticked repo-relative path (`src/cpu/ops.rs`, `cuda/attention.cu`, `tests/fixtures/`) must exist;
//! - `` `name` in `path` `` (or a list: `` `a`, `b` and `c` in `path` ``) says each name is defined in that file:
//!   in Rust a `fn`, `struct`, `enum`, `trait`, `type`, `const`, `static`, `mod`, `macro_rules!`, enum variant or
//!   `pub` field; in CUDA/C++ a function definition, a `#define` or a `KERNEL_REGISTER("name", ...)`; in a shell
//!   script a function; in any other file the word. `Type::method` checks both names; a trailing `()` is ignored.
//! - in the `## Code walk` section, every backticked identifier of a list item is defined in one of the files
//!   that item names (so every function, kernel and type the walk mentions is checked, not only those written
//!   with `in`).
//!
//! Every page under `docs/` must be linked from `docs/README.md`, the top-level README must link
//! `docs/README.md`, and every relative Markdown link must resolve.

use std::path::{Path, PathBuf};

/// Top-level directories and files a backticked path may start with.
const ROOTS: &[&str] = &["src/", "cuda/", "tests/", "bench/", "tools/", "ptx/", "web/", "docs/"];
const TOP_FILES: &[&str] = &["Cargo.toml", "build.rs", "README.md", "rustfmt.toml"];

/// One claim a page makes about the code.
#[derive(Debug, PartialEq)]
enum Claim {
    File(String),
    Defined { name: String, file: String },
}

/// The page's text outside fenced code blocks, every run of whitespace (line breaks and the indentation of
/// list items included) made one space, so a claim may wrap across lines.
fn prose(page: &str) -> String {
    let mut words = Vec::new();
    let mut fenced = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            words.extend(line.split_whitespace());
        }
    }
    words.join(" ")
}

/// The backticked spans of `text`: (start of the opening backtick, end after the closing one, contents).
fn spans(text: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(a) = text[rest..].find('`').map(|i| i + rest) {
        // A run of backticks (``` `` ```) opens a span closed by the same run; only single ones matter here.
        let run = text[a..].chars().take_while(|&c| c == '`').count();
        let open = &text[a..a + run];
        let Some(b) = text[a + run..].find(open).map(|i| i + a + run) else {
            break;
        };
        if run == 1 {
            out.push((a, b + 1, &text[a + 1..b]));
        }
        rest = b + run;
    }
    out
}

fn is_path(s: &str) -> bool {
    let plain = !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || "*<>{}$|,".contains(c));
    plain && (ROOTS.iter().any(|r| s.starts_with(r)) || TOP_FILES.contains(&s))
}

fn is_ident(s: &str) -> bool {
    let s = s.strip_suffix("()").unwrap_or(s);
    !s.is_empty()
        && s.split("::").all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !p.starts_with(|c: char| c.is_ascii_digit())
        })
}

/// Every claim of one page.
fn claims(page: &str) -> Vec<Claim> {
    let text = prose(page);
    let sp = spans(&text);
    let mut out = Vec::new();
    for (i, &(start, _, s)) in sp.iter().enumerate() {
        if !is_path(s) {
            continue;
        }
        out.push(Claim::File(s.to_string()));
        // `name` in `path`: walk back over the names joined by ", ", " and ", ", and ", " or ".
        if i == 0 || !text[..start].ends_with(" in ") {
            continue;
        }
        let mut j = i;
        let mut end_of_prev_gap = start - " in ".len();
        while j > 0 {
            let (_, e, name) = sp[j - 1];
            if e != end_of_prev_gap || !is_ident(name) {
                break;
            }
            out.push(Claim::Defined {
                name: name.trim_end_matches("()").to_string(),
                file: s.to_string(),
            });
            j -= 1;
            let before = &text[..sp[j].0];
            match [", and ", ", ", " and ", " or "].iter().find(|g| before.ends_with(*g)) {
                Some(g) => end_of_prev_gap = sp[j].0 - g.len(),
                None => break,
            }
        }
    }
    out
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `text` has `word` at byte `i` with no identifier character right before or after it.
fn whole_word_at(text: &str, i: usize, word: &str) -> bool {
    let before = text[..i].chars().next_back();
    let after = text[i + word.len()..].chars().next();
    !before.is_some_and(ident_char) && !after.is_some_and(ident_char)
}

fn defined_in_rust(src: &str, name: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "fn", "struct", "enum", "trait", "type", "const", "static", "mod", "union",
    ];
    let upper = name.starts_with(|c: char| c.is_ascii_uppercase());
    src.lines().filter(|l| !l.trim_start().starts_with("//")).any(|line| {
        let t = line.trim();
        // A public field (`pub name: T,`), or an enum variant on its own line (`Name,`, `Name(T),`, `Name {`).
        if t.strip_prefix("pub ")
            .and_then(|r| r.strip_prefix(name))
            .is_some_and(|r| r.starts_with(':'))
        {
            return true;
        }
        if upper
            && t.strip_prefix(name)
                .is_some_and(|r| [",", "(", " {", " ="].iter().any(|e| r.starts_with(e)))
        {
            return true;
        }
        line.match_indices(name).any(|(i, _)| {
            if !whole_word_at(line, i, name) {
                return false;
            }
            let before = line[..i].trim_end();
            KEYWORDS
                .iter()
                .any(|k| before.ends_with(k) && whole_word_at(before, before.len() - k.len(), k))
                || before.ends_with("macro_rules!")
        })
    })
}

fn defined_in_c(src: &str, name: &str) -> bool {
    if src.contains(&format!("KERNEL_REGISTER(\"{name}\"")) {
        return true;
    }
    src.lines().any(|line| {
        let code = line.split("//").next().unwrap_or("");
        code.match_indices(name).any(|(i, _)| {
            if !whole_word_at(code, i, name) {
                return false;
            }
            let before = code[..i].trim();
            if before == "#define" {
                return true;
            }
            if !code[i + name.len()..].trim_start().starts_with('(') || before.starts_with('#') {
                return false;
            }
            // A definition: only a return type and qualifiers before the name.
            let mut prefix = before.replace("extern \"C\"", " ");
            for (open, close) in [("__launch_bounds__(", ")"), ("__attribute__((", "))")] {
                if let Some(a) = prefix.find(open) {
                    if let Some(b) = prefix[a..].find(close) {
                        prefix.replace_range(a..a + b + close.len(), " ");
                    }
                }
            }
            let last = prefix.split_whitespace().last().unwrap_or("");
            !prefix.trim().is_empty()
                && prefix.chars().all(|c| ident_char(c) || " *&:<>,".contains(c))
                && !["return", "else", "case", "new", "delete", "throw"].contains(&last)
        })
    })
}

fn defined_in_shell(src: &str, name: &str) -> bool {
    src.lines().any(|l| {
        let l = l.trim_start();
        let l = l.strip_prefix("function ").unwrap_or(l);
        l.strip_prefix(name).is_some_and(|r| r.trim_start().starts_with("()"))
    })
}

/// Whether `name` (possibly `Type::method`) is defined in `file`, judged by the file's language.
fn defined(file: &Path, src: &str, name: &str) -> bool {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    name.split("::").all(|part| match ext {
        "rs" => defined_in_rust(src, part),
        "cu" | "cuh" | "h" | "hpp" | "cpp" | "cc" | "c" => defined_in_c(src, part),
        "sh" => defined_in_shell(src, part),
        _ => src.match_indices(part).any(|(i, _)| whole_word_at(src, i, part)),
    })
}

/// The claims of `page` that do not hold for the tree at `root`, one line each.
fn broken(root: &Path, page: &str) -> Vec<String> {
    let mut out = Vec::new();
    for c in claims(page) {
        match c {
            Claim::File(f) => {
                if !root.join(&f).exists() {
                    out.push(format!("`{f}` does not exist"));
                }
            }
            Claim::Defined { name, file } => match std::fs::read_to_string(root.join(&file)) {
                Ok(src) if defined(Path::new(&file), &src, &name) => {}
                Ok(_) => out.push(format!("`{name}` is not defined in `{file}`")),
                Err(e) => out.push(format!("`{file}` (named for `{name}`) cannot be read: {e}")),
            },
        }
    }
    // In the code walk every backticked name is defined in a file its item names.
    for item in code_walk_items(page) {
        let text = prose(&item);
        let sp = spans(&text);
        let mut files: Vec<&str> = sp
            .iter()
            .map(|s| s.2)
            .filter(|s| is_path(s) && root.join(s).is_file())
            .collect();
        files.sort();
        files.dedup();
        let sources: Vec<(&str, String)> = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(root.join(f)).ok().map(|src| (*f, src)))
            .collect();
        for name in sp.iter().map(|s| s.2).filter(|s| !is_path(s) && is_ident(s)) {
            let name = name.trim_end_matches("()");
            if !sources.iter().any(|(f, src)| defined(Path::new(f), src, name)) {
                out.push(format!(
                    "code walk: `{name}` is not defined in any file its item names ({})",
                    files.join(", ")
                ));
            }
        }
    }
    // Relative Markdown links: [text](target) where target is not a URL or an anchor.
    let text = prose(page);
    for (i, _) in text.match_indices("](") {
        let rest = &text[i + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = rest[..end].split('#').next().unwrap_or("");
        if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        // Links are relative to the page's directory; pages live in docs/.
        if !root.join("docs").join(target).exists() {
            out.push(format!("link target `{target}` does not exist"));
        }
    }
    out
}

/// The items of the page's `## Code walk` section: each top-level `- ` bullet with its continuation lines.
fn code_walk_items(page: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    let mut inside = false;
    for line in page.lines() {
        if line.starts_with("## ") {
            inside = line.trim() == "## Code walk";
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(rest) = line.strip_prefix("- ") {
            items.push(rest.to_string());
        } else if let Some(last) = items.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    items
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pages() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_named_file_and_definition_exists() {
    let mut failures = Vec::new();
    for p in pages() {
        let text = std::fs::read_to_string(&p).unwrap();
        for b in broken(&root(), &text) {
            failures.push(format!("{}: {b}", p.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(
        failures.is_empty(),
        "docs name things the code does not have:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_module_page_names_its_code() {
    for p in pages() {
        if p.file_name().unwrap() == "README.md" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let c = claims(&text);
        let defs = c.iter().filter(|c| matches!(c, Claim::Defined { .. })).count();
        let files = c.iter().filter(|c| matches!(c, Claim::File(_))).count();
        assert!(
            defs >= 8 && files >= 5,
            "{}: names only {defs} definitions in {files} files",
            p.display()
        );
        assert!(text.contains("```"), "{}: no data-flow diagram", p.display());
    }
}

#[test]
fn reading_order_lists_every_page_and_the_readme_links_it() {
    let index = std::fs::read_to_string(root().join("docs/README.md")).unwrap();
    for p in pages() {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name != "README.md" {
            assert!(
                index.contains(&format!("]({name})")),
                "docs/README.md does not link {name}"
            );
        }
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("](docs/README.md)"),
        "README.md does not link docs/README.md"
    );
}

// The checker itself, on made-up input: each rule must be able to fail.

#[test]
fn claims_are_parsed_from_prose_only() {
    let page = "See `fast` in `src/a.rs`, and `x`, `y::z()` and `w` in\n  `src/b.rs`; `src/c.rs` alone.\n\
                ```\n`ghost` in `src/nothing.rs`\n```\n`not a path` and `attention` in the text.";
    let want = vec![
        Claim::File("src/a.rs".into()),
        Claim::Defined {
            name: "fast".into(),
            file: "src/a.rs".into(),
        },
        Claim::File("src/b.rs".into()),
        Claim::Defined {
            name: "w".into(),
            file: "src/b.rs".into(),
        },
        Claim::Defined {
            name: "y::z".into(),
            file: "src/b.rs".into(),
        },
        Claim::Defined {
            name: "x".into(),
            file: "src/b.rs".into(),
        },
        Claim::File("src/c.rs".into()),
    ];
    assert_eq!(claims(page), want);
}

#[test]
fn definitions_are_told_from_uses() {
    let rs = "pub struct Muon;\nimpl Muon {\n    pub(crate) fn step<T>(x: T) {}\n}\n// fn commented()\n\
              fn main() { step(1); let stepper = 2; }\nconst EPS: f32 = 1.0;";
    assert!(defined_in_rust(rs, "Muon") && defined_in_rust(rs, "step") && defined_in_rust(rs, "EPS"));
    assert!(!defined_in_rust(rs, "commented") && !defined_in_rust(rs, "stepper") && !defined_in_rust(rs, "ste"));
    let rs = "pub enum Slot {\n    Wte,\n    Lm(u8),\n}\npub struct S {\n    pub pos0: usize,\n    hidden: u8,\n}\n\
              let x = Wte;\nfoo(pos1: 3);";
    assert!(defined_in_rust(rs, "Wte") && defined_in_rust(rs, "Lm") && defined_in_rust(rs, "pos0"));
    assert!(!defined_in_rust(rs, "hidden") && !defined_in_rust(rs, "x") && !defined_in_rust(rs, "pos1"));
    let cu = "extern \"C\" __global__ void __launch_bounds__(128) k_fwd(float* x) {\n    helper(x);\n}\n\
              __device__ __forceinline__ float helper(float* x) { return x[0]; }\n#define TILE 64\n\
              KERNEL_REGISTER(\"k_fwd\", k_fwd);\n    float y = other(3);\n    return other2(y);\n\
              static __attribute__((noinline)) void run_grid(int* l) {}";
    assert!(defined_in_c(cu, "k_fwd") && defined_in_c(cu, "helper") && defined_in_c(cu, "TILE"));
    assert!(defined_in_c(cu, "run_grid"));
    assert!(!defined_in_c(cu, "other") && !defined_in_c(cu, "other2") && !defined_in_c(cu, "x"));
    assert!(defined_in_shell("set -e\nbuild() {\n  nvcc\n}\nbuild", "build"));
    assert!(!defined_in_shell("set -e\nbuild\n", "build"));
}

#[test]
fn a_renamed_function_or_missing_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("src/a.rs"), "pub fn renamed_step() {}\n").unwrap();
    std::fs::write(dir.path().join("docs/b.md"), "").unwrap();
    let page = "`step` in `src/a.rs`, `renamed_step` in `src/a.rs`, `src/gone.rs`, [b](b.md), [c](c.md)\n\
                ## Code walk\n\n- `src/a.rs` has `renamed_step` and\n  `old_step`.\n- `lone_name`\n## After\n`free`";
    assert_eq!(
        broken(dir.path(), page),
        vec![
            "`step` is not defined in `src/a.rs`".to_string(),
            "`src/gone.rs` does not exist".to_string(),
            "code walk: `old_step` is not defined in any file its item names (src/a.rs)".to_string(),
            "code walk: `lone_name` is not defined in any file its item names ()".to_string(),
            "link target `c.md` does not exist".to_string(),
        ]
    );
}
