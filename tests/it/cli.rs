//! The command line as a user meets it (§1): help, version, check-config, sign, send, and exit
//! codes 0 / 1 / 2.

use std::process::{Command, Output, Stdio};

use crate::common::*;

fn callhook(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callhook"));
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("CALLHOOK__") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn help_and_version() {
    let out = callhook(&["--version"], &[]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    for sub in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["demo", "--help"],
        vec!["check-config", "--help"],
        vec!["sign", "--help"],
        vec!["send", "--help"],
        vec!["webhooks", "--help"],
        vec!["webhooks", "register", "--help"],
        vec!["healthcheck", "--help"],
    ] {
        let out = callhook(&sub, &[]);
        assert!(out.status.success(), "{sub:?}");
        assert!(text(&out.stdout).contains("Usage"), "{sub:?}");
    }
    let out = callhook(&["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_prints_secrets_as_stars() {
    let dir = tempdir();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[jas]\nwebhook_secret = [\"hunter2\", \"older\"]\ntoken = \"tok-abc\"\n[admin]\ntoken = \"adm-xyz\"\n",
    )
    .unwrap();
    let out = callhook(
        &["check-config", "--config", file.to_str().unwrap()],
        &[("CALLHOOK__TELECMI__SECRET", "tcmi-secret")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for secret in ["hunter2", "older", "tok-abc", "adm-xyz", "tcmi-secret"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
        assert!(!text(&out.stderr).contains(secret));
    }
    assert!(
        stdout.contains("webhook_secret = [\"***\",\"***\"]"),
        "{stdout}"
    );
    assert!(stdout.contains("listen = \"0.0.0.0:9999\""), "{stdout}");
}

#[test]
fn check_config_exits_2_naming_the_key() {
    let dir = tempdir();
    let missing = dir.path().join("nope").join("secret");
    for (env, key) in [
        (("CALLHOOK__SERVER__LISTEN", "localhost"), "server.listen"),
        (("CALLHOOK__JAS__API_BASE", "ftp://x"), "jas.api_base"),
        (
            ("CALLHOOK__TELECMI__ALLOW_IPS", "10.0.0.0/33"),
            "telecmi.allow_ips",
        ),
        (("CALLHOOK__JAS__TYPO", "1"), "jas.typo"),
        (
            ("CALLHOOK__JAS__TOKEN_FILE", missing.to_str().unwrap()),
            "jas.token_file",
        ),
    ] {
        let file = dir.path().join("empty.toml");
        std::fs::write(&file, "").unwrap();
        let out = callhook(
            &["check-config", "--config", file.to_str().unwrap()],
            &[env],
        );
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "{stderr} should name {key}");
    }
    let out = callhook(&["check-config", "--config", "/nonexistent.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sign_prints_the_x_sig_of_a_file_or_stdin() {
    let dir = tempdir();
    let body = dir.path().join("body.json");
    std::fs::write(&body, b"what do ya want for nothing?").unwrap();
    let out = callhook(
        &["sign", "--secret-env", "K", body.to_str().unwrap()],
        &[("K", "Jefe")],
    );
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let out = callhook(&["sign", "--secret-env", "UNSET_VAR_X", "-"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_posts_a_signed_event_and_prints_the_reply() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    let event = dir.path().join("event.json");
    std::fs::write(&event, call_status("101", "1", 0, 1)).unwrap();
    let url = format!("{}/webhooks/jas", app.public);
    let out = tokio::task::block_in_place(|| {
        callhook(
            &["send", "--url", &url, event.to_str().unwrap()],
            &[("CALLHOOK__JAS__WEBHOOK_SECRET", SECRET)],
        )
    });
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("200\n"), "{stdout}");
    assert!(stdout.contains("\"accepted\""), "{stdout}");
    // With the wrong secret the daemon answers 401 and send exits 1.
    let out = tokio::task::block_in_place(|| {
        callhook(
            &["send", "--url", &url, event.to_str().unwrap()],
            &[("CALLHOOK__JAS__WEBHOOK_SECRET", "wrong")],
        )
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).starts_with("401"));
}

#[test]
fn send_to_nothing_says_why_without_the_url() {
    let dir = tempdir();
    let event = dir.path().join("event.json");
    std::fs::write(&event, call_status("101", "1", 0, 1)).unwrap();
    // A port nothing listens on; the path holds a TeleCMI-style token, which is a credential.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/webhooks/telecmi/tok-s3cr3t-path");
    let out = callhook(
        &["send", "--url", &url, event.to_str().unwrap()],
        &[("CALLHOOK__JAS__WEBHOOK_SECRET", SECRET)],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("connection failed: "), "{stderr}");
    // The cause is told (reqwest's own Display stops at "error sending request").
    assert!(stderr.to_ascii_lowercase().contains("refused"), "{stderr}");
    assert!(!stderr.contains("tok-s3cr3t-path"), "{stderr}");
}

#[test]
fn demo_runs_the_whole_pipeline_and_exits_0() {
    // Its files go where --dir says and nowhere else: nothing is left in the temporary directory.
    let tmp = tempdir();
    let dir = tempdir();
    let demo_dir = dir.path().join("demo");
    let out = callhook(
        &["demo", "--dir", demo_dir.to_str().unwrap()],
        &[("TMPDIR", tmp.path().to_str().unwrap())],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("{\"status\":\"duplicate\"}"), "{stdout}");
    let row = |id: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("jas/{id}")))
            .unwrap_or_else(|| panic!("no row for call {id}:\n{stdout}"))
            .to_string()
    };
    assert!(row("26").contains("outbound") && row("26").contains("ended"));
    assert!(row("27").contains("inbound"));
    // The call whose hang-up webhook was lost is ended by reconciliation, and says so.
    assert!(row("28").contains("ended (reconciled)"), "{}", row("28"));
    assert!(
        stdout.contains("POST /api/reconcile -> 200: 0 added, 1 removed, 1 call ended"),
        "{stdout}"
    );
    // The recording path it prints exists and is whole.
    let path = row("26")
        .split_whitespace()
        .skip_while(|w| !w.starts_with('/'))
        .collect::<Vec<_>>()
        .join(" ");
    let bytes = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .len();
    assert!(
        stdout.contains(&format!("recording: {bytes} bytes")),
        "{stdout}"
    );
    // Its receiver got the calls' events, each signed with its key.
    let received = stdout
        .split_once("call events delivered to the demo receiver")
        .unwrap_or_else(|| panic!("no receiver section:\n{stdout}"))
        .1;
    let got = |call: &str, kind: &str| {
        received.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.first() == Some(&call) && words.get(1) == Some(&kind)
        })
    };
    for (call, kind) in [
        ("jas/26", "call.started"),
        ("jas/26", "call.answered"),
        ("jas/26", "recording.ready"),
        ("jas/26", "call.ended"),
        ("jas/27", "call.started"),
        ("jas/27", "call.ended"),
        ("jas/28", "call.ended"),
    ] {
        assert!(got(call, kind), "no {kind} for {call}:\n{received}");
    }
    assert!(
        received
            .lines()
            .any(|l| l.contains("jas/28") && l.contains("call.ended (reconciled)")),
        "{received}"
    );
    assert!(!received.contains("BAD SIGNATURE"), "{received}");
    assert!(received.contains("signature verified"), "{received}");
    assert!(stdout.contains("webhooks unregistered: true"));
    // It says where it left its files, and they are there.
    assert!(path.starts_with(demo_dir.to_str().unwrap()), "{path}");
    assert!(
        stdout.contains(&format!("files kept in {}", demo_dir.display())),
        "{stdout}"
    );
    assert!(demo_dir.join("data/callhook.db").is_file());
    assert!(stdout.contains(&format!("rm -r {}", demo_dir.display())));
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left in the temporary directory: {left:?}");

    // A folder holding an earlier demo is refused rather than mixed into this one.
    let out = callhook(&["demo", "--dir", demo_dir.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_register_list_unregister_by_hand() {
    let sim = callhook::sim::JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    let env = [
        ("CALLHOOK__JAS__API_BASE", server.base_url.as_str()),
        ("CALLHOOK__JAS__TOKEN", TOKEN),
        (
            "CALLHOOK__JAS__CALLBACK_URL",
            "https://hooks.example.com/webhooks/jas",
        ),
        ("CALLHOOK__JAS__EVENTS", "call_status,new_recording"),
    ];
    let dir = tempdir();
    let file = dir.path().join("empty.toml");
    std::fs::write(&file, "").unwrap();
    let config = file.to_str().unwrap();
    let run = |sub: &str| {
        tokio::task::block_in_place(|| callhook(&["webhooks", sub, "--config", config], &env))
    };

    let out = run("register");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("registered call_status -> https://hooks.example.com/webhooks/jas"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(sim.registrations().len(), 2);

    let out = run("list");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("new_recording"),
        "{}",
        text(&out.stdout)
    );

    let out = run("unregister");
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("unregistered call_status"));
    assert!(sim.registrations().is_empty());

    // Without credentials there is nothing to manage them with: a usage error.
    let out =
        tokio::task::block_in_place(|| callhook(&["webhooks", "list", "--config", config], &[]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("jas.token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_exits_0_against_a_running_daemon_and_1_with_nothing_listening() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    let file = dir.path().join("empty.toml");
    std::fs::write(&file, "").unwrap();
    let config = file.to_str().unwrap().to_string();
    let check = |admin: String| {
        let config = config.clone();
        tokio::task::block_in_place(move || {
            callhook(
                &["healthcheck", "--config", &config],
                // A token, since an admin listener off loopback is refused without one;
                // /healthz needs none.
                &[
                    ("CALLHOOK__ADMIN__LISTEN", &admin),
                    ("CALLHOOK__ADMIN__TOKEN", "t"),
                ],
            )
        })
    };
    let admin = app.admin.trim_start_matches("http://").to_string();
    let out = check(admin.clone());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // 0.0.0.0 in the configuration is reached on loopback.
    let port = admin.rsplit(':').next().unwrap();
    let out = check(format!("0.0.0.0:{port}"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    app.stop().await.unwrap();
    let out = check(admin.clone());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&admin), "{stderr}");

    // A bad configuration is unhealthy too: 1, never Docker's reserved 2.
    let out = check("not an address".into());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}
