//! The web page of SPEC §9 as HTTP sees it (the browser tests are issue #15's next step): the
//! page and its assets are served from the binary, and with `admin.token` only the login form
//! and `/healthz` answer without a session.

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
