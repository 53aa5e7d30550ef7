//! Every shell block the README marks `<!-- tested -->` runs here, with the freshly built
//! `callhook` first on PATH, so the README cannot rot.

use std::path::Path;
use std::process::Command;

fn tested_blocks() -> Vec<String> {
    let readme = include_str!("../README.md");
    let mut blocks = vec![];
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- tested -->" {
            continue;
        }
        assert_eq!(lines.next().map(str::trim), Some("```sh"));
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

#[test]
fn readme_blocks_run() {
    let blocks = tested_blocks();
    assert!(blocks.len() >= 3, "the README lost its tested blocks");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_callhook")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let repo = env!("CARGO_MANIFEST_DIR");
    for block in blocks {
        let dir = tempfile::tempdir().unwrap();
        // The repository's example config is reachable as config/callhook.toml.
        std::os::unix::fs::symlink(Path::new(repo).join("config"), dir.path().join("config"))
            .unwrap();
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", &block])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("RUST_LOG");
        for (k, _) in std::env::vars() {
            if k.starts_with("CALLHOOK__") {
                cmd.env_remove(k);
            }
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "block failed:\n{block}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        // Where the block shows the expected output as a comment, it must be what came out.
        for expected in block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("# "))
            .filter(|e| e.starts_with('{') || e.chars().all(|c| c.is_ascii_digit()))
        {
            assert!(
                stdout.contains(expected),
                "expected {expected} in:\n{stdout}"
            );
        }
    }
}
