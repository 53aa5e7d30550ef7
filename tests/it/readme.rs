//! Every shell block the README marks `<!-- tested -->` runs here, with the freshly built
//! `callhook` first on PATH, so the README cannot rot.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tested_blocks() -> Vec<String> {
    let readme = include_str!("../../README.md");
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
        let (stdout, stderr) = (dir.path().join(".stdout"), dir.path().join(".stderr"));
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", &block])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("RUST_LOG")
            // Files, not pipes: a daemon the block left behind would hold a pipe open forever.
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            // Its own process group, so whatever it started can be found (and stopped) after it.
            .process_group(0);
        for (k, _) in std::env::vars() {
            if k.starts_with("CALLHOOK__") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().unwrap();
        let group = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // A block run in a terminal must stop the daemon it started, or the next block's daemon
        // cannot bind and its commands talk to the first one.
        let left_running = signal_group("-0", group);
        if left_running || status.is_none() {
            signal_group("-KILL", group);
            let _ = child.wait();
        }
        let stdout = std::fs::read_to_string(&stdout).unwrap_or_default();
        let stderr = std::fs::read_to_string(&stderr).unwrap_or_default();
        let status = status.unwrap_or_else(|| {
            panic!("block ran over 60 s:\n{block}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        });
        assert!(
            status.success(),
            "block failed:\n{block}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        assert!(
            !left_running,
            "block left a process running (kill and wait for its daemon at the end):\n{block}"
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

/// Sends `signal` (`-0` only asks) to every process of a group; true when any received it.
fn signal_group(signal: &str, group: u32) -> bool {
    Command::new("bash")
        .args(["-c", &format!("kill {signal} -- -{group} 2> /dev/null")])
        .status()
        .unwrap()
        .success()
}

/// What the Docker image promises, read from the Dockerfile (Docker itself is not on the CI
/// machine, and base images come from a registry it cannot reach): fully qualified base images
/// (podman refuses short names), a stripped binary, the health check through `callhook
/// healthcheck` (no curl, no hard-coded port), volumes where the README says, and a build
/// context without `target/`.
#[test]
fn the_dockerfile_keeps_what_the_readme_says() {
    let dockerfile = include_str!("../../Dockerfile");
    let readme = include_str!("../../README.md");
    let ignore = include_str!("../../.dockerignore");
    for from in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = from.split_whitespace().nth(1).unwrap();
        assert!(
            image.starts_with("docker.io/"),
            "not fully qualified: {from}"
        );
    }
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=true"));
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/callhook", "healthcheck"]"#));
    assert!(
        !dockerfile
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains("curl")),
        "curl in an instruction"
    );
    for volume in ["/var/lib/callhook/data", "/var/lib/callhook/recordings"] {
        assert!(dockerfile.contains(volume), "{volume}");
        assert!(readme.contains(volume), "README lacks {volume}");
    }
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    // What the image's build copies is not ignored.
    for copied in ["Cargo.toml", "Cargo.lock", "src", "config"] {
        assert!(dockerfile.contains(&format!("COPY {copied}")) || dockerfile.contains(copied));
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == copied)
        );
    }
}
