//! The house rules the compiler does not check by itself: `unsafe` lives in `src/fs/sys.rs` alone, each block with a
//! SAFETY note, and the gate's path stays free of the async runtime.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|p| (p.strip_prefix(root).unwrap().display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

#[test]
fn unsafe_lives_in_fs_sys_alone_and_each_block_says_why() {
    for (path, text) in all_sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains("allow(unsafe_code)") {
                assert_eq!(path, "src/fs/mod.rs", "{path}:{}: only fs::sys may allow unsafe code", n + 1);
            }
            if code.contains("unsafe {") || code.contains("unsafe fn") || code.contains("unsafe impl") {
                assert_eq!(path, "src/fs/sys.rs", "{path}:{}: unsafe outside fs::sys", n + 1);
                let noted = lines[..n].iter().rev().take(4).any(|l| l.trim_start().starts_with("// SAFETY:"));
                assert!(noted, "{path}:{}: an unsafe block without a SAFETY note just above it", n + 1);
            }
        }
    }
}

#[test]
fn the_gate_path_does_not_touch_the_async_runtime() {
    for (path, text) in all_sources() {
        let gate_path = path.starts_with("src/gate/") || path == "src/bin/evosync-gate.rs";
        if gate_path {
            for word in ["tokio", "axum", "crate::serve"] {
                assert!(!text.contains(word), "{path} names {word}: the gate stays free of the async runtime");
            }
        }
    }
}
