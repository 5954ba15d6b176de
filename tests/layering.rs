//! The layering of `src/` (DESIGN.md): no import cycle between its top-level modules, and no
//! module importing one above it in
//! `main/lib` → `socket`, `http` → `state` → `relay` → `peer` → `wire`, `bus` → `auth`,
//! `metrics` → `events`.
//!
//! Reads the sources (every `crate::<module>` outside comments) and prints the graph, module →
//! modules it uses, so a failure shows where the edge is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Rank of each top-level module: a module may use modules of its own rank or a higher one.
/// The modules DESIGN.md's order does not name sit where what they hold belongs: `shutdown`
/// and `client` beside the entry points, `config` beside `state` (it is assembled into it),
/// `drain` (the accepted connections) beside `wire`, `presence` and `lifecycle` (fleet-wide
/// stores in Redis that the relay reports room entries and exits to) beside `bus`.
const RANKS: &[(&str, u8)] = &[
    ("main", 0),
    ("lib", 0),
    ("socket", 1),
    ("http", 1),
    ("shutdown", 1),
    ("state", 2),
    ("config", 2),
    ("relay", 3),
    ("peer", 4),
    ("wire", 5),
    ("bus", 5),
    ("drain", 5),
    ("presence", 5),
    ("lifecycle", 5),
    ("auth", 6),
    ("metrics", 6),
    ("events", 7),
];

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()
        .expect("a path")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level modules named as `crate::<name>` in `text`, outside comments and strings' usual
/// places (a line comment, a doc comment).
fn uses(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.insert(name);
            }
        }
    }
    used
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let entry = graph.entry(module.clone()).or_default();
        for used in uses(&text) {
            if used != module {
                entry.insert(used);
            }
        }
    }
    // `main.rs` is a separate crate: it uses the library's public face only.
    let main = std::fs::read_to_string(src.join("main.rs")).expect("main.rs");
    assert!(
        main.contains("realtime_gateway::"),
        "main.rs uses the library"
    );
    graph.insert("main".into(), BTreeSet::from(["lib".to_string()]));
    graph
}

fn rank(module: &str) -> u8 {
    RANKS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("module `{module}` has no place in the layering; add it"))
}

fn printed(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut out = String::new();
    let mut modules: Vec<&String> = graph.keys().collect();
    modules.sort_by_key(|m| (rank(m), m.as_str()));
    for m in modules {
        let used: Vec<&str> = graph[m].iter().map(String::as_str).collect();
        out.push_str(&format!("{m} -> {}\n", used.join(", ")));
    }
    out
}

#[test]
fn src_has_no_import_cycle_and_no_upward_import() {
    let graph = graph();
    let text = printed(&graph);
    println!("{text}");
    let upward: Vec<String> = graph
        .iter()
        .flat_map(|(m, used)| {
            used.iter()
                .filter(|u| rank(u) < rank(m))
                .map(move |u| format!("{m} -> {u}"))
        })
        .collect();
    assert!(upward.is_empty(), "upward imports: {upward:?}\n{text}");

    // Depth-first search for a cycle (same-rank modules could still form one).
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for u in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(u, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let cycle = visit(m, &graph, &mut Vec::new(), &mut done);
        assert!(cycle.is_none(), "import cycle: {cycle:?}\n{text}");
    }
}
