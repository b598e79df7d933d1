//! The talk lifecycle `created → started → done | error | rejected` (and stuck), with D-ID's
//! field population per state.

use std::time::Duration;

use did_fake::{DEFAULT_API_KEY, FakeDid, Timing};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{SHORT, fast, faults, spawn};
use test_support::eventually;

#[tokio::test]
async fn a_talk_ends_done_with_result_metadata_and_face() {
    let (_fake, api) = spawn(fast()).await;
    let id = api.create_talk(Some("job-7")).await;
    let t = api.wait_status(&id, &["done"], SHORT).await;
    let started_at = t["started_at"].as_str().unwrap();
    assert!(
        !started_at.ends_with('Z'),
        "started_at has no Z on D-ID: {started_at}"
    );
    assert_eq!(started_at.len(), "2023-04-10T08:09:10.622".len());
    assert!(t["modified_at"].as_str().unwrap().ends_with('Z'));
    assert!(t["modified_at"].as_str() >= t["created_at"].as_str());
    assert!(t.get("pending_url").is_none(), "{t}");
    assert!(
        t["result_url"]
            .as_str()
            .unwrap()
            .contains(&format!("/{id}/"))
    );
    assert_eq!(t["metadata"]["resolution"], json!([512, 512]));
    assert_eq!(t["metadata"]["num_frames"], 250);
    assert!(t["metadata"]["processing_fps"].as_f64().unwrap() > 0.0);
    assert_eq!(t["face"]["size"], 512);
    assert_eq!(t["config"]["result_format"], ".mp4");
    assert_eq!(t["user_data"], "job-7");
    assert!(t.get("error").is_none());
}

#[tokio::test]
async fn async_errors_end_in_error_with_a_documented_kind_and_refund() {
    let (fake, api) = spawn(fast().credits(5).faults(faults(|f| f.p_async_error = 1.0))).await;
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let id = api.create_talk(None).await;
        let t = api.wait_status(&id, &["error"], SHORT).await;
        let kind = t["error"]["kind"].as_str().unwrap().to_owned();
        assert!(
            ["FaceError", "SourceError", "UnknownError"].contains(&kind.as_str()),
            "{t}"
        );
        assert!(t["error"]["description"].is_string());
        assert!(t.get("result_url").is_none() && t.get("pending_url").is_none());
        kinds.insert(kind);
    }
    assert!(kinds.len() > 1, "kinds drawn: {kinds:?}");
    // Twelve talks with five credits: every error was refunded.
    assert_eq!(fake.remaining_credits(DEFAULT_API_KEY), Some(5));
}

#[tokio::test]
async fn rejected_talks_end_rejected() {
    let (_fake, api) = spawn(fast().faults(faults(|f| f.p_rejected = 1.0))).await;
    let id = api.create_talk(None).await;
    let t = api.wait_status(&id, &["rejected"], SHORT).await;
    assert!(t.get("result_url").is_none());
    assert_eq!(
        api.delete(&format!("/talks/{id}")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn stuck_talks_stay_started_and_cannot_be_deleted() {
    let (fake, api) = spawn(fast().faults(faults(|f| f.p_stuck = 1.0))).await;
    let id = api.create_talk(None).await;
    let t = api.wait_status(&id, &["started"], SHORT).await;
    assert!(t["started_at"].is_string());
    assert!(t["pending_url"].is_string());
    // Ten times the longest render of this scale (20 ms + 5 ms): still started.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let t = api.get(&format!("/talks/{id}")).await.json();
    assert_eq!(t["status"], "started");
    assert_eq!(
        api.delete(&format!("/talks/{id}")).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        fake.stats().renders_in_progress,
        0,
        "stuck talks hold no render slot"
    );
}

#[tokio::test]
async fn excess_talks_stay_created_until_a_render_slot_frees() {
    let timing = Timing {
        queue_delay_s: (0.0, 0.0),
        fixed_overhead_s: (0.4, 0.4),
        render_factor: 0.0,
        max_concurrent_renders: Some(1),
        ..Timing::default()
    };
    let (fake, api) = spawn(FakeDid::builder().seed(3).timing(timing)).await;
    let first = api.create_talk(None).await;
    api.wait_status(&first, &["started"], SHORT).await;
    let second = api.create_talk(None).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        api.get(&format!("/talks/{second}")).await.json()["status"],
        "created"
    );
    assert_eq!(fake.stats().renders_in_progress, 1);
    api.wait_status(&first, &["done"], SHORT).await;
    api.wait_status(&second, &["done"], SHORT).await;
    eventually(SHORT, "renders to drain", || async {
        fake.stats().renders_in_progress == 0
    })
    .await;
}

#[tokio::test]
async fn time_scale_one_is_d_id_speed() {
    // At real speed a talk takes at least queue (0.5 s) + overhead (8 s): after half a
    // second of polling it has not finished.
    let (_fake, api) = spawn(FakeDid::builder().seed(5)).await;
    let id = api.create_talk(None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = api.get(&format!("/talks/{id}")).await.json();
    assert_eq!(t["status"], "created");
}
