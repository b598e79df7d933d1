//! Bearer auth on and off, and the admin route.

use serde_json::json;

use crate::support;
use test_support::http::{client, get_json, json, post_json, send};

const TOKEN: &str = "test-token-Xy7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_api_routes_need_it_and_probes_do_not() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("HTTP_API_TOKEN", TOKEN)]).await;
    let http = client();

    let resp = http.get(srv.api("/stats")).send().await.unwrap();
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let (status, err) = json(resp).await;
    assert_eq!(
        (status, err["error"]["code"].as_str().unwrap()),
        (401, "unauthorized")
    );
    let (status, _) = get_json(&http, srv.api("/stats"), Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = get_json(&http, srv.api("/stats"), Some(TOKEN)).await;
    assert_eq!(status, 200);

    // D-ID routes too, before any body is read.
    let body = json!({"audio_url": "https://x.test/a.wav", "source_url": "https://x.test/a.jpg", "wait": false});
    let (status, _) = post_json(&http, srv.api("/generate-video"), None, &body).await;
    assert_eq!(status, 401);
    let (status, _) = post_json(&http, srv.api("/generate-video"), Some(TOKEN), &body).await;
    assert_eq!(status, 202);
    assert_eq!(fake.stats().talks_created, 1);

    for open in [
        "/health",
        "/ready",
        "/metrics",
        "/api/d_id_optimized/health",
    ] {
        let resp = http.get(srv.url(open)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{open}");
    }

    // The admin route: 401 without the token, 200 with it.
    let (status, _) = send(http.post(srv.api("/cleanup-expired")), None).await;
    assert_eq!(status, 401);
    let (status, v) = send(
        http.post(srv.api("/cleanup-expired?max_age_seconds=600")),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reclaimed_leases"], 0);
    assert_eq!(v["backend"], "memory");
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_everything_is_open_but_admin_is_disabled() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[]).await;
    let http = client();
    let (status, _) = get_json(&http, srv.api("/stats"), None).await;
    assert_eq!(status, 200);
    let (status, err) = send(http.post(srv.api("/cleanup-expired")), Some("anything")).await;
    assert_eq!(
        (status, err["error"]["code"].as_str().unwrap()),
        (403, "admin_disabled")
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP_API_TOKEN")
    );
    srv.stop().await;
    fake.shutdown().await;
}

/// Status and code of `method path`, with or without the token.
async fn probe(
    srv: &support::Server,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let req = client().request(method.parse().unwrap(), srv.url(path));
    let (status, v) = send(req, token).await;
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_protected_paths_reveal_neither_methods_nor_routes() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("HTTP_API_TOKEN", TOKEN)]).await;
    let p = "/api/d_id_optimized";
    let cases: &[(&str, String, Option<&str>, u16, &str)] = &[
        // Unauthenticated: 401 whatever the method or the path under the prefix.
        ("TRACE", format!("{p}/stats"), None, 401, "unauthorized"),
        (
            "DELETE",
            format!("{p}/generate-video"),
            None,
            401,
            "unauthorized",
        ),
        (
            "GET",
            format!("{p}/no-such-route"),
            None,
            401,
            "unauthorized",
        ),
        ("GET", format!("{p}/talk-status"), None, 401, "unauthorized"),
        ("GET", p.to_owned(), None, 401, "unauthorized"),
        // Authenticated: the real answer.
        (
            "TRACE",
            format!("{p}/stats"),
            Some(TOKEN),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            format!("{p}/no-such-route"),
            Some(TOKEN),
            404,
            "route_not_found",
        ),
        // Open probes and paths outside the prefix need no token.
        (
            "POST",
            "/health".to_owned(),
            None,
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            format!("{p}/ready"),
            None,
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/no-such-route".to_owned(),
            None,
            404,
            "route_not_found",
        ),
    ];
    for (method, path, token, status, code) in cases {
        assert_eq!(
            probe(&srv, method, path, *token).await,
            (*status, (*code).to_owned()),
            "{method} {path} token={}",
            token.is_some()
        );
    }
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_methods_and_routes_answer_as_before() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[]).await;
    let p = "/api/d_id_optimized";
    assert_eq!(
        probe(&srv, "TRACE", &format!("{p}/stats"), None).await,
        (405, "method_not_allowed".to_owned())
    );
    assert_eq!(
        probe(&srv, "GET", &format!("{p}/no-such-route"), None).await,
        (404, "route_not_found".to_owned())
    );
    srv.stop().await;
    fake.shutdown().await;
}
