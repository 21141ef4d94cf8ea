//! The repository stands alone: every document (a `*.md` path) that a tracked file
//! names must exist in the repository. A comment or script that sends a reader to a
//! document outside the clone (a design note kept elsewhere) fails here, naming
//! the file and line.
//!
//! A reference is a run of `[A-Za-z0-9_./-]` characters ending in `.md` (then not a
//! letter or digit). It resolves when it names an existing file relative to the
//! referring file's directory or to the repository root; a bare name (`METRICS.md`)
//! also resolves when some tracked document has that file name. URLs (`…://…`) are not
//! references.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    // The run-time variable follows the checkout even when a shared target dir reuses
    // a test binary built in another checkout.
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
}

/// Tracked files (git), or every file under the root when git cannot tell (an export
/// without `.git`), skipping build output and installed packages.
fn tracked_files(root: &Path) -> Vec<PathBuf> {
    if let Ok(out) = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        && out.status.success()
        && !out.stdout.is_empty()
    {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .collect();
    }
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = dir.join(&name);
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if !matches!(
                    name.as_str(),
                    ".git" | "target" | "node_modules" | ".services" | "artifacts" | "data"
                ) {
                    dirs.push(rel);
                }
            } else if ft.is_file() {
                files.push(rel);
            }
        }
    }
    files
}

/// Every `*.md` reference in `text`, with its 1-based line number.
fn md_references(text: &str) -> Vec<(usize, String)> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-');
    let mut out = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i + 3 <= chars.len() {
            let is_md = chars[i] == '.'
                && chars[i + 1].eq_ignore_ascii_case(&'m')
                && chars[i + 2].eq_ignore_ascii_case(&'d')
                && chars
                    .get(i + 3)
                    .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != '_');
            if !is_md {
                i += 1;
                continue;
            }
            let end = i + 3;
            let mut start = i;
            while start > 0 && is_path_char(chars[start - 1]) {
                start -= 1;
            }
            i = end;
            let token: String = chars[start..end].iter().collect();
            let token = token.trim_start_matches("./").to_owned();
            let name = token.rsplit('/').next().unwrap_or("");
            // `.md` alone (a glob's tail, a string split in two) names nothing.
            if name.len() <= 3 || name.starts_with('.') {
                continue;
            }
            // Part of a URL: scheme://host/path.md
            if start > 0 && chars[start - 1] == ':' {
                continue;
            }
            out.push((lineno + 1, token));
        }
    }
    out
}

/// `a/b/../c` → `a/c`; `None` when `..` climbs out of the repository.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn resolves(reference: &str, from: &Path, root: &Path, md_names: &HashSet<String>) -> bool {
    if reference.starts_with('/') {
        return false;
    }
    let base = from.parent().unwrap_or(Path::new(""));
    for candidate in [base.join(reference), PathBuf::from(reference)] {
        if let Some(p) = normalize(&candidate)
            && root.join(&p).is_file()
        {
            return true;
        }
    }
    !reference.contains('/') && md_names.contains(reference)
}

#[test]
fn every_named_document_exists_in_the_repository() {
    let root = repo_root();
    let files = tracked_files(&root);
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    let md_names: HashSet<String> = files
        .iter()
        .filter(|f| root.join(f).is_file())
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.to_ascii_lowercase().ends_with(".md"))
        .collect();
    let mut missing = Vec::new();
    let mut checked = 0;
    for f in &files {
        let Ok(bytes) = std::fs::read(root.join(f)) else {
            continue; // deleted in the work tree but still in the index
        };
        if bytes.contains(&0) {
            continue; // binary (images)
        }
        let text = String::from_utf8_lossy(&bytes);
        for (line, reference) in md_references(&text) {
            checked += 1;
            if !resolves(&reference, f, &root, &md_names) {
                missing.push(format!("{}:{line}: {reference}", f.display()));
            }
        }
    }
    assert!(checked > 10, "found only {checked} document references");
    assert!(
        missing.is_empty(),
        "tracked files name documents that are not in the repository \
         (carry the facts into the repo's docs instead):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn references_are_found_and_resolved_as_documented() {
    let text = concat!(
        "see docs/PROTOCOL.md#errors and (../BENCHMARKS.md), not https://x.org/a/B.md\n",
        "glob *",
        ".md; ./docs/ARCHITECTURE.md; README.mdx is no document\n",
        "the note at /etc/NOTE",
        ".md"
    );
    let refs = md_references(text);
    let names: Vec<&str> = refs.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "docs/PROTOCOL.md",
            "../BENCHMARKS.md",
            "docs/ARCHITECTURE.md",
            concat!("/etc/NOTE", ".md")
        ]
    );
    assert_eq!(refs[2].0, 2);

    let root = repo_root();
    let names: HashSet<String> = ["METRICS.md".to_owned()].into();
    let from = Path::new("docs/ARCHITECTURE.md");
    assert!(resolves("../BENCHMARKS.md", from, &root, &names));
    assert!(resolves("PROTOCOL.md", from, &root, &names));
    assert!(resolves(
        "METRICS.md",
        Path::new("tests/x.rs"),
        &root,
        &names
    ));
    assert!(!resolves(
        concat!("../../outside", ".md"),
        from,
        &root,
        &names
    ));
    assert!(!resolves(concat!("/etc/NOTE", ".md"), from, &root, &names));
    let gone = concat!("docs/NOT_THERE", ".md");
    assert!(!resolves(gone, from, &root, &names));
}
