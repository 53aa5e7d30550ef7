//! The web page of SPEC §9 in a real browser (issue #15): Debian's chromium, headless, driven
//! through chromedriver by fantoccini, against the real daemon on loopback and the JAS simulator
//! for lookups and recordings. Nothing leaves 127.0.0.1.
//!
//! One chromedriver and one browser session for the whole file, started once by the one test
//! below, which runs the checks in order (each prints `ok:` with its time), so the file pays for
//! one browser start. Without `chromium` and `chromedriver` on `PATH` the test says it is skipped
//! and passes, except when `CI` is set: `.ci/run` installs them and the test must run there.
//!
//! The board is loaded through `Relay`, a TCP relay the test can cut, so the stream drops the way
//! a network drop does and the page's own reconnect (the browser's `EventSource`, with
//! `Last-Event-ID`) is what brings it back; the relay also keeps every request and the status it
//! got, which is how "no failed request" is checked.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use callhook::sim::{JasSim, SimRoute};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::common::*;

const SKIPPED: &str =
    "skipped: chromium/chromedriver not installed (apt-get install chromium chromium-driver)";
/// The recording that plays, and the one the simulator does not have until the test adds it.
const PLAYS: &str = "101/[Ann Lee]_101-5148888888_20250603153720(26).wav";
const MISSING: &str = "101/[Ann Lee]_101-5148888888_20250603153900(26).wav";
const ADMIN_TOKEN: &str = "browser-admin-token";

#[tokio::test]
async fn the_board_in_a_real_browser() {
    let (Some(driver), Some(chromium)) = (on_path("chromedriver"), on_path("chromium")) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser tests, but {}",
            SKIPPED.trim_start_matches("skipped: ")
        );
        eprintln!("{SKIPPED}");
        return;
    };
    let started = Instant::now();
    let (driver, browser) = start_browser(&driver, &chromium).await;
    eprintln!(
        "ok: chromedriver and chromium started ({:?})",
        started.elapsed()
    );
    // Each part in a task of its own, so that a failed check still closes the browser and stops
    // chromedriver below before the panic is passed on.
    let mut outcome = tokio::spawn(board(browser.clone())).await;
    if outcome.is_ok() {
        outcome = tokio::spawn(login(browser.clone())).await;
    }
    let _ = browser.close().await;
    drop(driver);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    eprintln!("ok: the browser checks took {:?}", started.elapsed());
}

/// The board without a token: load, a live call, its end, its recordings, Retry, and the
/// stream cut and restored.
async fn board(browser: Client) {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    for (dn, id, callid) in [
        ("101", "172", "26"),
        ("102", "173", "27"),
        ("103", "174", "28"),
    ] {
        sim.set_participant(
            dn,
            id,
            participant(dn, id, callid, "Ringing", "10000", "Wexternalline"),
        );
    }
    let audio = wav(1.0);
    sim.add_recording(PLAYS, audio.clone());
    let server = sim.start().await.unwrap();
    let app = TestApp::spawn(&Env::new(dir.path()).with_sim(&server.base_url), dir.path()).await;
    let relay = Relay::start(app.admin.trim_start_matches("http://")).await;
    let page = relay.url();
    let step = Instant::now();

    // The page loads, every request it makes is answered from this origin with a success, and
    // nothing went wrong in the page (errors, rejections, CSP violations, console errors).
    install_problem_hooks(&browser).await;
    browser.goto(&format!("{page}/")).await.unwrap();
    wait_js(
        &browser,
        "return document.getElementById('link').className === 'link up'",
        Duration::from_secs(5),
        "the stream opens (the link shows live)",
    )
    .await;
    wait_js(
        &browser,
        "return document.querySelector('#live tr.empty') !== null \
             && performance.getEntriesByType('resource').length >= 7",
        Duration::from_secs(5),
        "the page drew the empty board and made its requests",
    )
    .await;
    let loaded = js(
        &browser,
        "return performance.getEntriesByType('navigation')
             .concat(performance.getEntriesByType('resource'))
             .map(e => ({name: e.name, status: e.responseStatus}))",
    )
    .await;
    let loaded = loaded.as_array().unwrap();
    for path in [
        "/assets/app.js",
        "/assets/style.css",
        "/api/calls",
        "/api/history?limit=25",
        "/api/recordings/jobs?state=failed&limit=50",
        "/api/endpoints",
        "/api/events?limit=50",
    ] {
        assert!(
            loaded.iter().any(|e| e["name"] == format!("{page}{path}")),
            "{path} was not requested: {loaded:#?}"
        );
    }
    for e in loaded {
        let name = e["name"].as_str().unwrap();
        assert!(
            name.starts_with(&format!("{page}/")),
            "not this origin: {e}"
        );
        assert!(
            (200..300).contains(&e["status"].as_u64().unwrap_or(0)),
            "failed: {e}"
        );
    }
    assert_no_problems(&browser).await;
    eprintln!(
        "ok: the page loads, {} requests, all answered ({:?})",
        loaded.len(),
        step.elapsed()
    );

    // A signed call appears within 2 s, without a reload, and its duration counts up.
    let step = Instant::now();
    js(&browser, "window.sameDocument = 'yes'; return 1").await;
    assert_eq!(app.post_jas(&status_now("101", "172", 0, 1)).await.0, 200);
    let row = wait_js(
        &browser,
        "const r = document.querySelector('#live tr[data-call=\"jas/26\"]'); \
         return r && r.textContent",
        Duration::from_secs(2),
        "the call is on the board within 2 s",
    )
    .await;
    let shown_after = step.elapsed();
    let row = row.as_str().unwrap();
    for text in ["jas", "26", "inbound", "101 ↔ 5148888888", "Ringing"] {
        assert!(row.contains(text), "{text} not in {row:?}");
    }
    let duration = || async {
        let text = js(
            &browser,
            "return document.querySelector('#live tr[data-call=\"jas/26\"] .duration').textContent",
        )
        .await;
        minutes_seconds(text.as_str().unwrap())
    };
    let first = duration().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = duration().await;
    assert!(
        // The board redraws every second, so 2.1 s show as 1 to 4 more.
        (1..=4).contains(&(second - first)),
        "the duration went from {first} s to {second} s in 2.1 s"
    );
    assert_eq!(js(&browser, "return window.sameDocument").await, "yes");
    eprintln!(
        "ok: the call is shown {shown_after:?} after its webhook, its duration {first} s then {second} s"
    );

    // It ends: off the live board, onto the ended list with its reason.
    let step = Instant::now();
    assert_eq!(app.post_jas(&status_now("101", "172", 1, 2)).await.0, 200);
    let ended = wait_js(
        &browser,
        "const r = document.querySelector('#ended tr[data-call=\"jas/26\"]'); \
         return !document.querySelector('#live tr[data-call=\"jas/26\"]') && r && r.textContent",
        Duration::from_secs(5),
        "the call moves to the ended list",
    )
    .await;
    assert!(ended.as_str().unwrap().contains("completed"), "{ended}");
    assert_eq!(js(&browser, "return window.sameDocument").await, "yes");
    eprintln!(
        "ok: the call moved to the ended list ({:?})",
        step.elapsed()
    );

    // Its recordings: one downloads and plays in the page, the other is not there (404, failed).
    let step = Instant::now();
    for (n, name) in [(1, PLAYS), (2, MISSING)] {
        assert_eq!(app.post_jas(&recording_now("26", name, n)).await.0, 200);
    }
    wait_js(
        &browser,
        "const r = document.querySelector('#ended tr[data-call=\"jas/26\"]'); \
         return r && r.querySelectorAll('audio').length === 1 && r.textContent.includes('2: failed')",
        Duration::from_secs(10),
        "one recording playable, the other failed",
    )
    .await;
    let played = play(&browser, "jas/26").await;
    let seconds = played["duration"].as_f64();
    assert!(
        seconds.is_some_and(|s| (s - 1.0).abs() < 0.05),
        "the audio element reports {played}: not the 1 s file"
    );
    assert!(
        played["src"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{page}/api/recordings/jas/101/")),
        "{played}"
    );
    eprintln!(
        "ok: the recording plays, duration {seconds:?} s ({:?})",
        step.elapsed()
    );

    // Retry on the failed job (now that the simulator has the file) queues it again: the page's
    // list drops it, the API shows it no longer failed, the provider is asked again, and the
    // call gets its second player.
    let step = Instant::now();
    let job = wait_js(
        &browser,
        "const r = [...document.querySelectorAll('#jobs tbody tr')]
             .find(r => r.textContent.includes('jas/26') && r.querySelector('button'));
         return r && r.dataset.job",
        Duration::from_secs(5),
        "the failed job is listed with a Retry button",
    )
    .await;
    let job = job.as_str().unwrap().to_string();
    assert_eq!(job_state(&app, &job).await, "failed");
    sim.add_recording(MISSING, audio);
    let asked = sim.requests(SimRoute::Recording);
    browser
        .find(Locator::Css(&format!("#jobs tr[data-job='{job}'] button")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        &browser,
        &format!("return !document.querySelector(\"#jobs tr[data-job='{job}']\")"),
        Duration::from_secs(5),
        "the retried job leaves the failed list",
    )
    .await;
    let state = job_state(&app, &job).await;
    assert!(
        ["pending", "downloading", "downloaded"].contains(&state.as_str()),
        "job {job} is {state} after Retry"
    );
    wait_js(
        &browser,
        "const r = document.querySelector('#ended tr[data-call=\"jas/26\"]'); \
         return r && r.querySelectorAll('audio').length === 2",
        Duration::from_secs(10),
        "the retried recording is playable",
    )
    .await;
    assert_eq!(job_state(&app, &job).await, "downloaded");
    assert_eq!(sim.requests(SimRoute::Recording), asked + 1);
    eprintln!(
        "ok: Retry queued job {job} again ({state} at once, then downloaded) ({:?})",
        step.elapsed()
    );

    // The cuts below may close the media element's own fetch of the recording: until then
    // nothing at all may have gone wrong.
    assert_no_problems(&browser).await;
    // The stream is cut: the page says so; a call starts and ends meanwhile; once the network is
    // back the browser resumes with Last-Event-ID and the page shows what it missed.
    let step = Instant::now();
    relay.cut(false);
    wait_js(
        &browser,
        "const l = document.getElementById('link'); \
         return l.className === 'link down' && l.textContent.includes('disconnected')",
        Duration::from_secs(5),
        "the page shows it is disconnected",
    )
    .await;
    assert_eq!(app.post_jas(&status_now("102", "173", 0, 3)).await.0, 200);
    assert_eq!(app.post_jas(&status_now("102", "173", 1, 4)).await.0, 200);
    app.wait_call("jas", "27", |c| c["state"] == "ended").await;
    assert_eq!(
        js(
            &browser,
            "return [document.getElementById('link').className, \
                     !!document.querySelector('tr[data-call=\"jas/27\"]')]"
        )
        .await,
        json!(["link down", false]),
        "nothing came through while cut"
    );
    let cut_for = step.elapsed();
    relay.restore();
    wait_js(
        &browser,
        "return document.getElementById('link').className === 'link up' \
             && !!document.querySelector('#ended tr[data-call=\"jas/27\"]')",
        Duration::from_secs(15),
        "the stream resumes and the call that ended meanwhile is on the ended list",
    )
    .await;
    let resumed = relay
        .exchanges()
        .into_iter()
        .filter(|x| x.request.starts_with("GET /api/stream "))
        .collect::<Vec<_>>();
    assert!(
        resumed.len() >= 2
            && resumed
                .last()
                .unwrap()
                .head
                .to_ascii_lowercase()
                .contains("\r\nlast-event-id: evt_"),
        "the browser did not resume with Last-Event-ID: {resumed:#?}"
    );
    assert_eq!(js(&browser, "return window.sameDocument").await, "yes");
    eprintln!(
        "ok: cut for {cut_for:?} (disconnected shown), resumed with Last-Event-ID ({:?})",
        step.elapsed()
    );

    // Cut again, but now a proxy answers 502 meanwhile: the browser gives that stream up for
    // good, so the page opens a new one itself; it resumes nothing, so the page reads the ended
    // calls again, and the one that ended meanwhile shows.
    let step = Instant::now();
    relay.cut(true);
    wait_js(
        &browser,
        "return document.getElementById('link').className === 'link down'",
        Duration::from_secs(5),
        "the page shows it is disconnected",
    )
    .await;
    assert_eq!(app.post_jas(&status_now("103", "174", 0, 5)).await.0, 200);
    assert_eq!(app.post_jas(&status_now("103", "174", 1, 6)).await.0, 200);
    app.wait_call("jas", "28", |c| c["state"] == "ended").await;
    // Long enough for the browser's own retry to meet the 502 and close the stream.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        js(&browser, "return document.getElementById('link').className").await,
        "link down"
    );
    relay.restore();
    wait_js(
        &browser,
        "return document.getElementById('link').className === 'link up' \
             && !!document.querySelector('#ended tr[data-call=\"jas/28\"]') \
             && !!document.querySelector('#ended tr[data-call=\"jas/26\"] audio')",
        Duration::from_secs(15),
        "a new stream opens and the ended list is read again",
    )
    .await;
    let streams = relay
        .exchanges()
        .into_iter()
        .filter(|x| x.request.starts_with("GET /api/stream "))
        .collect::<Vec<_>>();
    let last = &streams.last().unwrap().head.to_ascii_lowercase();
    assert!(
        streams.len() > resumed.len() && !last.contains("last-event-id"),
        "the page did not open a stream of its own: {streams:#?}"
    );
    assert_eq!(js(&browser, "return window.sameDocument").await, "yes");
    eprintln!(
        "ok: after 502s the page opened a new stream and read the ended calls again ({:?})",
        step.elapsed()
    );

    // Everything the page asked for, through the whole session, was answered with a success.
    let exchanges = relay.exchanges();
    for x in &exchanges {
        assert!(
            x.status.is_some_and(|s| (200..400).contains(&s)),
            "a failed request: {x:#?}"
        );
    }
    // A cut closes every connection, so an audio element still fetching its file reports a
    // network error (seen in a CI run); that is the only problem a cut may leave, and the
    // recording plays again afterwards.
    let problems = js(
        &browser,
        "const p = window.problems; window.problems = []; return p",
    )
    .await;
    let recordings = format!("error: {page}/api/recordings/");
    for p in problems.as_array().unwrap() {
        assert!(
            p.as_str().unwrap().starts_with(&recordings),
            "the page had problems: {problems}"
        );
    }
    let played = play(&browser, "jas/26").await;
    assert!(
        played["duration"]
            .as_f64()
            .is_some_and(|s| (s - 1.0).abs() < 0.05),
        "after the cuts the audio element reports {played}"
    );
    assert_no_problems(&browser).await;
    eprintln!(
        "ok: {} requests through the relay, none failed",
        exchanges.len()
    );
    app.stop().await.unwrap();
}

/// With `admin.token`: the login form, a wrong token refused, the right one opens the board.
async fn login(browser: Client) {
    let step = Instant::now();
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("admin.token", ADMIN_TOKEN);
    let app = TestApp::spawn(&env, dir.path()).await;
    browser.goto(&format!("{}/", app.admin)).await.unwrap();
    let form = js(
        &browser,
        "return [!!document.querySelector('form#login input[name=token]'), !!document.getElementById('live')]",
    )
    .await;
    assert_eq!(form, json!([true, false]), "the login form, and no board");

    let submit = |token: &'static str| {
        let browser = browser.clone();
        async move {
            let input = browser
                .find(Locator::Css("form#login input[name=token]"))
                .await
                .unwrap();
            input.send_keys(token).await.unwrap();
            browser
                .find(Locator::Css("form#login button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
    };
    js(&browser, "window.sameDocument = 'login'; return 1").await;
    submit("not-the-token").await;
    let refused = wait_js(
        &browser,
        "const e = document.querySelector('form#login .error'); \
         return window.sameDocument === undefined && e && e.textContent",
        Duration::from_secs(5),
        "a wrong token gets the form again, with an error",
    )
    .await;
    assert!(refused.as_str().unwrap().contains("not the admin token"));
    assert_eq!(
        js(&browser, "return !!document.getElementById('live')").await,
        false
    );

    submit(ADMIN_TOKEN).await;
    wait_js(
        &browser,
        "return document.getElementById('link')?.className === 'link up' \
             && !!document.querySelector('#live tr.empty')",
        Duration::from_secs(5),
        "the right token opens the board, and its stream",
    )
    .await;
    // The session is an HttpOnly cookie: nothing of it for the page's scripts.
    assert_eq!(js(&browser, "return document.cookie").await, "");
    assert_no_problems(&browser).await;
    eprintln!(
        "ok: login form, wrong token refused, right one in ({:?})",
        step.elapsed()
    );
    app.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The browser.

fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// chromedriver on a free loopback port, killed when this is dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_browser(driver: &PathBuf, chromium: &PathBuf) -> (Driver, Client) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    callhook::outbound::install_crypto();
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(10), || async {
        let status = http.get(format!("{url}/status")).send().await;
        match status {
            Ok(r) => r
                .json::<Value>()
                .await
                .is_ok_and(|v| v["value"]["ready"] == true),
            Err(_) => false,
        }
    })
    .await;
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900", "--no-first-run", "--no-default-browser-check"],
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a chromium session");
    (driver, client)
}

/// A Chrome DevTools command through chromedriver (`goog/cdp/execute`).
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params});
        (Method::POST, Some(body.to_string()))
    }
}

/// Before any script of every document: what goes wrong in the page is kept in
/// `window.problems` (errors, a resource that failed to load, unhandled rejections, CSP
/// violations, `console.error`).
async fn install_problem_hooks(browser: &Client) {
    let source = r#"
        window.problems = [];
        addEventListener("error", (e) => window.problems.push("error: " +
            (e.message || (e.target && (e.target.currentSrc || e.target.src || e.target.href)) || e.type)), true);
        addEventListener("unhandledrejection", (e) => window.problems.push("rejection: " + e.reason));
        addEventListener("securitypolicyviolation", (e) =>
            window.problems.push("csp: " + e.violatedDirective + " " + e.blockedURI));
        const consoleError = console.error;
        console.error = (...args) => { window.problems.push("console: " + args.join(" ")); consoleError(...args); };
    "#;
    browser
        .issue_cmd(Cdp {
            cmd: "Page.addScriptToEvaluateOnNewDocument",
            params: json!({"source": source}),
        })
        .await
        .expect("the page's error hooks");
}

/// Loads the audio element of `call`'s row on the ended list afresh (so an earlier error does
/// not linger); its duration and source, or why not.
async fn play(browser: &Client, call: &str) -> Value {
    let script = format!(
        "const done = arguments[arguments.length - 1];
         const a = document.querySelector('#ended tr[data-call=\"{call}\"] audio');
         const report = () => done({{duration: a.duration, src: a.currentSrc}});
         a.addEventListener('loadedmetadata', report);
         a.addEventListener('error', () => done({{error: a.error && a.error.code}}));
         setTimeout(() => done({{timeout: a.readyState}}), 10000);
         a.load();"
    );
    browser.execute_async(&script, vec![]).await.unwrap()
}

async fn assert_no_problems(browser: &Client) {
    let problems = js(browser, "return window.problems").await;
    assert_eq!(problems, json!([]), "the page had problems");
}

async fn js(browser: &Client, script: &str) -> Value {
    browser
        .execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Runs `script` every 50 ms until it returns something truthy, which is returned; fails with
/// `what` and the last value after `timeout`.
async fn wait_js(browser: &Client, script: &str, timeout: Duration, what: &str) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = js(browser, script).await;
        let truthy =
            !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            let state = js(
                browser,
                "return document.body ? document.body.innerText : ''",
            )
            .await;
            panic!("not within {timeout:?}: {what} (last: {v}); the page said:\n{state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// What the daemon is sent.

/// A JAS `call_status` of DN `dn`'s participant `pid`, timed now (so the board's duration
/// starts at 0).
fn status_now(dn: &str, pid: &str, event_type: i64, seq: i64) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "eventName": "call_status",
        "timestamp": now,
        "data": {"event": {"entity": format!("/callcontrol/{dn}/participants/{pid}"),
                           "event_type": event_type}, "sequence": seq}
    })
    .to_string()
}

fn recording_now(call_id: &str, url: &str, id: i64) -> String {
    json!({
        "eventName": "new_recording",
        "data": {"call_id": call_id, "recording_url": url, "id_recording": id}
    })
    .to_string()
}

/// A PCM WAV of `seconds` (8 kHz, mono, 16 bit): a file any browser's player decodes.
fn wav(seconds: f64) -> Vec<u8> {
    let rate = 8000u32;
    let samples = (f64::from(rate) * seconds) as u32;
    let data = samples * 2;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for i in 0..samples {
        // A 400 Hz square wave, quietly.
        let v: i16 = if (i / 10) % 2 == 0 { 2000 } else { -2000 };
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// "m:ss" as seconds.
fn minutes_seconds(text: &str) -> i64 {
    let (m, s) = text
        .split_once(':')
        .unwrap_or_else(|| panic!("not a duration: {text:?}"));
    m.parse::<i64>().unwrap() * 60 + s.parse::<i64>().unwrap()
}

async fn job_state(app: &TestApp, id: &str) -> String {
    let (status, body) = app.get_admin("/api/recordings/jobs").await;
    assert_eq!(status, 200, "{body}");
    let job = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"].as_i64().map(|n| n.to_string()).as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no job {id} in {body}"))
        .clone();
    job["state"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// The relay.

/// A TCP relay on loopback in front of the admin listener. `cut` closes every connection it
/// carries and closes each new one at once until `restore`, as a dropped network would look to
/// the browser. Every byte each way is kept, so `exchanges` can list each request with the
/// status it got.
struct Relay {
    addr: String,
    state: Arc<Mutex<RelayState>>,
    accept: AbortHandle,
}

#[derive(Default)]
struct RelayState {
    cut: bool,
    /// While cut, answer each new connection `502 Bad Gateway` (as a proxy in front of a
    /// daemon that is down would) instead of closing it.
    bad_gateway: bool,
    conns: Vec<(AbortHandle, Arc<Mutex<Traffic>>)>,
}

#[derive(Default)]
struct Traffic {
    up: Vec<u8>,
    down: Vec<u8>,
}

#[derive(Debug)]
struct Exchange {
    request: String,
    head: String,
    status: Option<u16>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(RelayState::default()));
        let target = target.to_string();
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut st = shared.lock().unwrap();
                if st.cut {
                    if st.bad_gateway {
                        tokio::spawn(bad_gateway(client));
                    }
                    continue; // else dropped: closed at once
                }
                let traffic = Arc::new(Mutex::new(Traffic::default()));
                let task = tokio::spawn(relay(client, target.clone(), traffic.clone()));
                st.conns.push((task.abort_handle(), traffic));
            }
        })
        .abort_handle();
        Relay {
            addr,
            state,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self, bad_gateway: bool) {
        let mut st = self.state.lock().unwrap();
        st.cut = true;
        st.bad_gateway = bad_gateway;
        for (task, _) in &st.conns {
            task.abort();
        }
    }

    fn restore(&self) {
        self.state.lock().unwrap().cut = false;
    }

    /// Each request sent through the relay, in order per connection, with the status of its
    /// answer (none yet: `None`).
    fn exchanges(&self) -> Vec<Exchange> {
        let st = self.state.lock().unwrap();
        let mut out = vec![];
        for (_, traffic) in &st.conns {
            let t = traffic.lock().unwrap();
            let statuses: Vec<Option<u16>> = heads(&t.down)
                .iter()
                .map(|h| h.get(9..12)?.parse().ok())
                .collect();
            for (n, head) in heads(&t.up).into_iter().enumerate() {
                out.push(Exchange {
                    request: head.lines().next().unwrap_or_default().to_string(),
                    head,
                    status: statuses.get(n).copied().flatten(),
                });
            }
        }
        out
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut(false);
    }
}

/// Reads a request's head and answers 502, as a proxy whose upstream is down.
async fn bad_gateway(mut client: TcpStream) {
    let mut head = vec![];
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = client
        .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    let _ = client.shutdown().await;
}

/// The heads of the HTTP/1.1 messages one after another in `bytes` (one direction of a
/// connection), each body skipped by its `Content-Length` or its chunks; a message cut short
/// ends the list.
fn heads(bytes: &[u8]) -> Vec<String> {
    let find = |from: usize, what: &[u8]| {
        bytes
            .get(from..)?
            .windows(what.len())
            .position(|w| w == what)
            .map(|p| from + p)
    };
    let mut out = vec![];
    let mut at = 0;
    while let Some(end) = find(at, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[at..end]).into_owned();
        let lower = head.to_ascii_lowercase();
        let mut next = end + 4;
        if lower.contains("\r\ntransfer-encoding: chunked") {
            loop {
                let Some(line) = find(next, b"\r\n") else {
                    out.push(head);
                    return out;
                };
                let size = std::str::from_utf8(&bytes[next..line])
                    .ok()
                    .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                    .unwrap_or(0);
                next = line + 2 + size + 2;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = lower.split("\r\n").find_map(|l| {
            l.strip_prefix("content-length:")?
                .trim()
                .parse::<usize>()
                .ok()
        }) {
            next += len;
        }
        out.push(head);
        at = next;
    }
    out
}

async fn relay(client: TcpStream, target: String, traffic: Arc<Mutex<Traffic>>) {
    let Ok(upstream) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = pump(&mut cr, &mut uw, &traffic, true);
    let down = pump(&mut ur, &mut cw, &traffic, false);
    tokio::join!(up, down);
}

async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    traffic: &Mutex<Traffic>,
    up: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut t = traffic.lock().unwrap();
            let kept = if up { &mut t.up } else { &mut t.down };
            kept.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
