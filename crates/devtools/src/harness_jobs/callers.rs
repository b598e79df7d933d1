//! The callers of the jobs chaos run: one per key, sending the same body with the same
//! `Idempotency-Key` until an instance accepts it, then reading every accepted job until it
//! is terminal; and the did-fake `user_data` a key's talk is filed under.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use did_client::CreateToken;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::*;
use crate::procs::PREFIX;

/// What one key's caller saw.
#[derive(Default)]
pub(super) struct Submission {
    pub(super) key: String,
    /// The body sent with every try.
    pub(super) body: Value,
    /// Every job id a 2xx answer named for this key (one, unless idempotency broke).
    pub(super) job_ids: Vec<String>,
    pub(super) tries: u32,
    /// Tries sent to another instance than the try before.
    pub(super) resubmits_other: u32,
    /// 2xx answers marked `Idempotent-Replayed: true`.
    pub(super) replays: u32,
    /// A 4xx the caller cannot retry (the key is given up).
    pub(super) rejected: Option<String>,
    /// The failures before the answer (connection errors, 5xx...).
    pub(super) failures: Vec<String>,
}

/// The final read of one accepted job.
pub(super) enum Final {
    Found(Value),
    NotFound,
    /// Not terminal at the deadline (the last view), or never read.
    Open(Option<Value>),
}

/// One caller: the same key and body until a 2xx, moving to another instance after a
/// failure.
pub(super) async fn submit(
    client: &reqwest::Client,
    bases: &[String],
    alive: &[AtomicBool],
    key: String,
    body: Value,
    mut rng: StdRng,
) -> Submission {
    let started = Instant::now();
    let mut sub = Submission {
        key,
        body: body.clone(),
        ..Submission::default()
    };
    let mut last: Option<usize> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        // The first try goes to any instance: a caller learns that one died from its failed
        // connection (a load balancer's view is as stale). Retries go to another live one.
        let i = match last {
            None => rng.random_range(0..bases.len()),
            Some(_) => pick_live(&mut rng, alive, last),
        };
        if last.is_some_and(|l| l != i) {
            sub.resubmits_other += 1;
        }
        last = Some(i);
        sub.tries += 1;
        let resp = client
            .post(format!("{}{PREFIX}/jobs", bases[i]))
            .header("Idempotency-Key", &sub.key)
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(resp) if resp.status().is_success() => {
                let replayed = resp
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|v| v == "true");
                let status = resp.status();
                match resp.json::<Value>().await {
                    Ok(v) => match v["job_id"].as_str() {
                        Some(id) => {
                            if replayed {
                                sub.replays += 1;
                            }
                            sub.job_ids.push(id.to_owned());
                            return sub;
                        }
                        None => {
                            sub.rejected =
                                Some(format!("{}: {status} without job_id: {v}", sub.key));
                            return sub;
                        }
                    },
                    // The body was cut (the instance died mid-answer): try again.
                    Err(e) => sub
                        .failures
                        .push(format!("instance {i}: {status}, body: {e}")),
                }
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                if status >= 500 || status == 409 || status == 429 {
                    sub.failures.push(format!("instance {i}: {status} {text}"));
                } else {
                    sub.rejected = Some(format!("{} on instance {i}: {status} {text}", sub.key));
                    return sub;
                }
            }
            Err(e) => sub.failures.push(format!("instance {i}: {e}")),
        }
        if started.elapsed() > SUBMIT_GIVE_UP {
            return sub;
        }
        let jitter = rng.random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_millis(800));
    }
}

/// Reads the jobs until each is terminal with its callback settled (or not found), or
/// `deadline` passes.
pub(super) async fn settle(
    client: &reqwest::Client,
    bases: &[String],
    alive: &[AtomicBool],
    ids: &[String],
    deadline: Instant,
    seed: u64,
) -> HashMap<String, Final> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7365_7474);
    let mut finals: HashMap<String, Final> = ids
        .iter()
        .map(|id| (id.clone(), Final::Open(None)))
        .collect();
    loop {
        let open: Vec<String> = finals
            .iter()
            .filter(|(_, f)| matches!(f, Final::Open(_)))
            .map(|(id, _)| id.clone())
            .collect();
        if open.is_empty() || Instant::now() > deadline {
            return finals;
        }
        for id in open {
            let i = pick_live(&mut rng, alive, None);
            let resp = client
                .get(format!("{}{PREFIX}/jobs/{id}", bases[i]))
                .send()
                .await;
            let Ok(resp) = resp else { continue };
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                finals.insert(id, Final::NotFound);
                continue;
            }
            if !resp.status().is_success() {
                continue;
            }
            let Ok(view) = resp.json::<Value>().await else {
                continue;
            };
            // Final once ended and its callback settled (delivered or given up).
            let terminal = matches!(
                view["status"].as_str(),
                Some("done" | "failed" | "cancelled")
            ) && view["callback"]["status"] != "pending";
            finals.insert(
                id,
                if terminal {
                    Final::Found(view)
                } else {
                    Final::Open(Some(view))
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The user_data did-fake files the talk of the job a key's submit made under: did-client's
/// tag (no caller `user_data`) of the token http-api derives from the key (scope `public`:
/// the harness runs without `HTTP_API_TOKEN`) and the request's fingerprint.
pub(super) fn user_data_of(sub: &Submission) -> String {
    let fingerprint = serde_json::from_value::<http_api::job_routes::TalkBody>(sub.body.clone())
        .ok()
        .and_then(|talk| {
            let (request, priority) = talk.request().ok()?;
            let callback = talk.callback_url(&super::callback_policy()).ok()?;
            Some(app::fingerprint(&request, priority, callback.as_ref()))
        })
        .unwrap_or_default();
    let key = ports::ScopedKey {
        tenant: domain::Tenant::public(),
        key: sub.key.clone(),
    };
    let token = CreateToken::derive(&app::keyed_create_key(&key, &fingerprint));
    format!("tg:{token}")
}
