//! Both `Basic` forms D-ID accepts, and its 401 body otherwise.

use base64::Engine;
use did_fake::DEFAULT_API_KEY;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{fast, spawn};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn literal_and_base64_basic_forms_are_accepted() {
    let (_fake, api) = spawn(fast().api_key("dXNlckBleGFtcGxlLmNvbQ:AbCdEfGhIjKlMnOpQrStU")).await;
    for auth in [
        format!("Basic {DEFAULT_API_KEY}"),
        format!("Basic {}", b64(DEFAULT_API_KEY)),
        format!("basic {DEFAULT_API_KEY}~conn-42"),
        "Basic dXNlckBleGFtcGxlLmNvbQ:AbCdEfGhIjKlMnOpQrStU".to_owned(),
        format!(
            "Basic {}",
            b64("dXNlckBleGFtcGxlLmNvbQ:AbCdEfGhIjKlMnOpQrStU")
        ),
    ] {
        let r = api.with_auth(&auth).get("/credits").await;
        assert_eq!(r.status, StatusCode::OK, "{auth}: {}", r.text);
    }
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_authorization_error() {
    let (fake, api) = spawn(fast()).await;
    let unauthenticated =
        json!({"kind": "AuthorizationError", "description": "user unauthenticated"});
    for auth in [
        "".to_owned(),
        "Basic talkgate:wrong".to_owned(),
        format!("Basic {}", b64("talkgate:wrong")),
        format!("Bearer {DEFAULT_API_KEY}"),
        "Bearer fake-key".to_owned(),
        "Basic".to_owned(),
    ] {
        let r = api.with_auth(&auth).post_json("/talks", &json!({})).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.json(), unauthenticated);
    }
    // No header at all.
    let r = api.send(api.http.get(api.url("/talks"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.stats().count("POST /talks", 401), 6);
    assert_eq!(fake.stats().talks_created, 0);
}

#[tokio::test]
async fn each_key_is_its_own_user_and_fake_routes_need_no_auth() {
    let (fake, api) = spawn(fast().api_key("alice:secret")).await;
    let alice = api.with_auth("Basic alice:secret");
    let id = alice.create_talk(None).await;
    let t = alice.get(&format!("/talks/{id}")).await.json();
    assert_eq!(t["user_id"], fake.user_id("alice:secret").unwrap());
    assert_ne!(fake.user_id("alice:secret"), fake.user_id(DEFAULT_API_KEY));
    assert_eq!(
        api.get(&format!("/talks/{id}")).await.status,
        StatusCode::NOT_FOUND
    );

    let r = api.send(api.http.get(api.url("/_fake/stats"))).await;
    assert_eq!(r.status, StatusCode::OK);
}
