//! Tidy checks: the architecture invariants of ARCHITECTURE.md, measured on the source text so
//! that they fail the build the day they drift (in the spirit of rust-analyzer's `xtask tidy`).
//!
//! Each check reads `src/` as text, leaving out test code (`#[cfg(test)]` modules and files named
//! `tests.rs`) and comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules that assemble the daemon from its parts and may read the configuration.
const WIRING: &[&str] = &["main", "lib", "cli", "demo", "daemon"];

/// Where the cloud's status words may be written: the client that parses them and the simulator
/// that plays the cloud (plus the demo's scenario text).
const WIRE_STATUS_HOMES: &[&str] = &["flink", "simulator", "demo"];

/// Where stored text (states, JSON columns) is converted to and from types.
const STORE_HOMES: &[&str] = &["store", "domain"];

/// The longest a source file outside the simulator may grow.
const MAX_LINES: usize = 700;

/// At most this many `Result<_, String>` in non-test code.
const MAX_STRING_ERRORS: usize = 5;

const WIRE_STATUSES: &[&str] = &["INIT", "EXECUTING", "FINISHED", "FAILED", "HOT_UPDATING", "HOT_UPDATED"];
const STATES: &[&str] = &["pending", "succeeded", "failed", "expired", "cancelled"];

struct Source {
    /// Path relative to `src/`, with `/` separators.
    path: String,
    /// The top-level module the file belongs to (`poller` for `src/poller/decide.rs`).
    module: String,
    /// Every line, for the module doc and the length checks.
    lines: Vec<String>,
    /// Non-test lines (blank lines and comments count towards the length, but `//` comments are
    /// cut off for the text checks).
    code: Vec<String>,
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = module_graph(&sources());
    let cycles = strongly_connected(&graph).into_iter().filter(|group| group.len() > 1).collect::<Vec<_>>();
    assert!(cycles.is_empty(), "import cycles between top-level modules: {cycles:?}\ngraph: {graph:#?}");
}

#[test]
fn only_the_wiring_imports_the_configuration() {
    let offenders = sources()
        .iter()
        .filter(|source| !WIRING.contains(&source.module.as_str()) && source.module != "config")
        .filter(|source| imports(source).contains("config"))
        .map(|source| source.path.clone())
        .collect::<Vec<_>>();
    assert!(offenders.is_empty(), "modules below the wiring that import `config`: {offenders:?}");
}

#[test]
fn only_the_client_and_the_simulator_name_wire_statuses() {
    let mut offenders = Vec::new();
    for source in sources().iter().filter(|source| !WIRE_STATUS_HOMES.contains(&source.module.as_str())) {
        for (number, line) in source.code.iter().enumerate() {
            for status in WIRE_STATUSES {
                if line.contains(&format!("\"{status}\"")) {
                    offenders.push(format!("{}:{}: {}", source.path, number + 1, line.trim()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "wire status literals outside flink/ and the simulator:\n{}", offenders.join("\n"));
}

#[test]
fn only_the_store_compares_state_strings_or_parses_stored_json() {
    let mut offenders = Vec::new();
    for source in sources().iter().filter(|source| !STORE_HOMES.contains(&source.module.as_str())) {
        for (number, line) in source.code.iter().enumerate() {
            let state_literal = STATES.iter().any(|state| line.contains(&format!("\"{state}\"")));
            let state_text = line.contains(".as_str() ==") || line.contains("== TicketState");
            let stored_json = line.contains("validation_errors") && line.contains("from_str");
            if state_literal || state_text || stored_json {
                offenders.push(format!("{}:{}: {}", source.path, number + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "state strings or stored JSON handled outside store/ and domain:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let offenders = sources()
        .iter()
        .filter(|source| !source.lines.first().is_some_and(|line| line.starts_with("//!")))
        .map(|source| source.path.clone())
        .collect::<Vec<_>>();
    assert!(offenders.is_empty(), "files without a `//!` module doc on their first line: {offenders:?}");
}

#[test]
fn source_files_stay_short_enough_to_read() {
    let offenders = sources()
        .iter()
        .filter(|source| source.module != "simulator" && source.code.len() > MAX_LINES)
        .map(|source| format!("{} ({} lines)", source.path, source.code.len()))
        .collect::<Vec<_>>();
    assert!(offenders.is_empty(), "files over {MAX_LINES} lines outside the simulator: {offenders:?}");
}

#[test]
fn errors_are_types_not_strings() {
    let mut found = Vec::new();
    for source in sources() {
        for (number, line) in source.code.iter().enumerate() {
            if string_error(line) {
                found.push(format!("{}:{}: {}", source.path, number + 1, line.trim()));
            }
        }
    }
    assert!(
        found.len() <= MAX_STRING_ERRORS,
        "{} `Result<_, String>` in non-test code (at most {MAX_STRING_ERRORS}):\n{}",
        found.len(),
        found.join("\n")
    );
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|name| name != "tests.rs"))
        .map(|path| {
            let relative = path.strip_prefix(&root).expect("under src/").to_string_lossy().replace('\\', "/");
            let module = relative.split('/').next().expect("a first component").trim_end_matches(".rs").to_owned();
            let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {relative}: {error}"));
            let lines = text.lines().map(str::to_owned).collect::<Vec<_>>();
            let code = non_test_lines(&lines).iter().map(|line| strip_comment(line)).collect();
            Source { path: relative, module, lines, code }
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("reading {}: {error}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The lines before an inline `#[cfg(test)] mod … {` (which closes a file, by the house style),
/// leaving out other `#[cfg(test)]` items' attribute lines and `mod tests;` declarations.
fn non_test_lines(lines: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index].trim();
        if line == "#[cfg(test)]" {
            let next = lines.get(index + 1).map_or("", |next| next.trim());
            if next.starts_with("mod ") && next.ends_with('{') {
                break;
            }
            index += if next.starts_with("mod ") && next.ends_with(';') { 2 } else { 1 };
            continue;
        }
        kept.push(lines[index].clone());
        index += 1;
    }
    kept
}

/// A line without its `//` comment (not inside a string literal, as far as a quote count tells).
fn strip_comment(line: &str) -> String {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for index in 0..bytes.len() {
        match bytes[index] {
            b'"' if index == 0 || bytes[index - 1] != b'\\' => in_string = !in_string,
            b'/' if !in_string && bytes.get(index + 1) == Some(&b'/') => return line[..index].to_owned(),
            _ => {}
        }
    }
    line.to_owned()
}

/// Top-level modules a file names through `crate::…` paths, grouped `use crate::{…}` included.
fn imports(source: &Source) -> BTreeSet<String> {
    let text = source.code.join("\n");
    let mut found = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                if let Some(name) = identifier(item.trim()) {
                    found.insert(name);
                }
            }
        } else if let Some(name) = identifier(rest) {
            found.insert(name);
        }
    }
    found.remove(&source.module);
    found
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0usize;
    for (index, character) in text.char_indices() {
        match character {
            '{' => depth += 1,
            '}' if depth == 0 => return index,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (index, character) in text.char_indices() {
        match character {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

fn identifier(text: &str) -> Option<String> {
    let name: String = text.chars().take_while(|character| character.is_alphanumeric() || *character == '_').collect();
    (!name.is_empty() && name.chars().next().is_some_and(|first| first.is_lowercase())).then_some(name)
}

fn module_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules = sources.iter().map(|source| source.module.clone()).collect::<BTreeSet<_>>();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let targets = imports(source).into_iter().filter(|target| modules.contains(target));
        graph.entry(source.module.clone()).or_default().extend(targets);
    }
    graph
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        groups: Vec<Vec<String>>,
    }
    fn visit<'a>(walk: &mut Walk<'a>, node: &'a str) {
        walk.index.insert(node, walk.next);
        walk.low.insert(node, walk.next);
        walk.next += 1;
        walk.stack.push(node);
        walk.on_stack.insert(node);
        if let Some(targets) = walk.graph.get(node) {
            for target in targets {
                let target = target.as_str();
                if !walk.index.contains_key(target) {
                    visit(walk, target);
                    let low = walk.low[node].min(walk.low[target]);
                    walk.low.insert(node, low);
                } else if walk.on_stack.contains(target) {
                    let low = walk.low[node].min(walk.index[target]);
                    walk.low.insert(node, low);
                }
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut group = Vec::new();
            while let Some(member) = walk.stack.pop() {
                walk.on_stack.remove(member);
                group.push(member.to_owned());
                if member == node {
                    break;
                }
            }
            walk.groups.push(group);
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        groups: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            visit(&mut walk, node);
        }
    }
    walk.groups
}

fn string_error(line: &str) -> bool {
    let mut rest = line;
    while let Some(at) = rest.find("Result<") {
        rest = &rest[at + "Result<".len()..];
        let mut depth = 1usize;
        let mut last_comma = None;
        for (index, character) in rest.char_indices() {
            match character {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' if depth == 1 => {
                    if let Some(comma) = last_comma {
                        if rest[comma + 1..index].trim() == "String" {
                            return true;
                        }
                    }
                    break;
                }
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 1 => last_comma = Some(index),
                _ => {}
            }
        }
    }
    false
}
