//! The web page of SPEC §9 as HTTP sees it (`browser.rs` runs it in a browser): the page and
//! its assets are served from the binary, with `admin.token` only the login form and `/healthz`
//! answer without a session, and `ui.enabled = false` turns the page off.

use crate::common::*;

#[tokio::test]
async fn the_page_and_its_assets_come_from_the_daemon_itself() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    let page = app
        .http
        .get(format!("{}/", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("Live calls") && html.contains("/assets/app.js"));
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let r = app
            .http
            .get(format!("{}{path}", app.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_a_token_the_page_asks_for_it_once_and_the_cookie_opens_the_api() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("admin.token", "page-token-1");
    let app = TestApp::spawn(&env, dir.path()).await;
    // No redirects followed, so the login's answer is seen as it is.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, cookie: Option<&str>| {
        let mut req = http.get(format!("{}{path}", app.admin));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    let page = get("/", None).await.unwrap();
    assert_eq!(page.status(), 401);
    let form = page.text().await.unwrap();
    assert!(
        form.contains("name=\"token\"") && !form.contains("Live calls"),
        "{form}"
    );
    for path in ["/assets/app.js", "/api/calls", "/api/stream"] {
        assert_eq!(get(path, None).await.unwrap().status(), 401, "{path}");
    }
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);

    let login = |token: &str| {
        http.post(format!("{}/api/session", app.admin))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    let wrong = login("not-it").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("not the admin token"));

    let right = login("page-token-1").await.unwrap();
    assert_eq!(right.status(), 303);
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("page-token-1"),
        "the cookie is not the token: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    assert_eq!(get("/", Some(&session)).await.unwrap().status(), 200);
    assert_eq!(
        get("/api/calls", Some(&session)).await.unwrap().status(),
        200
    );
    assert_eq!(
        get("/api/calls", Some("callhook_session=forged"))
            .await
            .unwrap()
            .status(),
        401
    );

    let out = http
        .post(format!("{}/api/session/logout", app.admin))
        .send()
        .await
        .unwrap();
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    app.stop().await.unwrap();
}

/// `ui.enabled = false` (SPEC §2): the page, its assets and its login answer 404, with a
/// token or without, while the admin API answers as before.
#[tokio::test]
async fn with_ui_off_the_page_is_404_and_the_api_still_answers() {
    for token in [None, Some("ui-off-token")] {
        let dir = tempdir();
        let mut env = Env::new(dir.path());
        env.set("ui.enabled", "false");
        if let Some(t) = token {
            env.set("admin.token", t);
        }
        let app = TestApp::spawn(&env, dir.path()).await;
        let send = |req: reqwest::RequestBuilder| async move {
            let req = match token {
                Some(t) => req.bearer_auth(t),
                None => req,
            };
            req.send().await.unwrap().status().as_u16()
        };
        for path in [
            "/",
            "/assets/app.js",
            "/assets/style.css",
            "/assets/icon.svg",
        ] {
            let url = format!("{}{path}", app.admin);
            assert_eq!(send(app.http.get(&url)).await, 404, "{path}, {token:?}");
            // Without credentials too: no login form stands in for the page.
            assert_eq!(app.http.get(&url).send().await.unwrap().status(), 404);
        }
        for path in ["/api/session", "/api/session/logout"] {
            let req = app
                .http
                .post(format!("{}{path}", app.admin))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("token=ui-off-token");
            assert_eq!(send(req).await, 404, "{path}, {token:?}");
        }
        for path in [
            "/api/calls",
            "/api/history",
            "/api/recordings/jobs",
            "/readyz",
        ] {
            let url = format!("{}{path}", app.admin);
            assert_eq!(send(app.http.get(&url)).await, 200, "{path}, {token:?}");
        }
        if token.is_some() {
            let url = format!("{}/api/calls", app.admin);
            assert_eq!(app.http.get(&url).send().await.unwrap().status(), 401);
        }
        app.stop().await.unwrap();
    }
}
