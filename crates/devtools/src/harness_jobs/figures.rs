//! The figures of a jobs scenario, from the callers' records, did-fake's stats and the
//! instances' logs; the checks they are held to; the side-by-side table.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::*;

/// The figures of one scenario.
#[derive(Default)]
pub(super) struct Figures {
    pub(super) name: &'static str,
    pub(super) instances: usize,
    pub(super) submitted: usize,
    pub(super) accepted: usize,
    pub(super) not_accepted: Vec<String>,
    pub(super) rejected: Vec<String>,
    pub(super) multi_id_keys: Vec<String>,
    pub(super) tries: u64,
    pub(super) resubmits_other: u64,
    pub(super) keys_retried: usize,
    pub(super) replays: u64,
    pub(super) done: usize,
    pub(super) failed: usize,
    pub(super) cancelled: usize,
    pub(super) not_found: Vec<String>,
    pub(super) stuck: Vec<String>,
    pub(super) failed_codes: BTreeMap<String, usize>,
    pub(super) done_one_talk: usize,
    pub(super) done_bad: Vec<String>,
    pub(super) other_bad: Vec<String>,
    pub(super) other_with_talk: usize,
    pub(super) talks_total: u64,
    pub(super) talks_attributed: u64,
    pub(super) unattributed: Vec<String>,
    pub(super) peak: u64,
    pub(super) rate_limited: u64,
    pub(super) kills: usize,
    pub(super) adopted: usize,
    pub(super) taken_over: usize,
    pub(super) multi_process: usize,
    pub(super) left_creating: usize,
    pub(super) submit_secs: f64,
    pub(super) settle_secs: f64,
    pub(super) callbacks: CallbackFigures,
    pub(super) rate: RateFigures,
}

/// What the run cost at did-fake's D-ID API, and how long it took against what the account's
/// rate limit allows.
#[derive(Default)]
pub(super) struct RateFigures {
    /// API calls did-fake answered with anything but a 429 (each took a token of its bucket;
    /// cut connections included).
    pub(super) answered: u64,
    /// 429 answers (in-flight cap and token bucket; they take no token).
    pub(super) throttled: u64,
    /// `POST /talks`, `GET /talks/{id}` and `GET /talks` pages among `answered`.
    pub(super) creates: u64,
    pub(super) polls: u64,
    pub(super) lookup_pages: u64,
    /// did-fake's token bucket, when the run has one: requests per second and burst.
    pub(super) limit: Option<(f64, f64)>,
    /// From the first submission to the last job's `finished_at`, in seconds.
    pub(super) finished_secs: Option<f64>,
}

impl RateFigures {
    /// The least time the answered calls can take under the bucket: all but the burst it
    /// starts with, at its rate.
    pub(super) fn rate_bound_secs(&self) -> Option<f64> {
        self.limit
            .map(|(rps, burst)| (self.answered as f64 - burst).max(0.0) / rps)
    }
}

/// The rate figures of a scenario: did-fake's counts per route and status, the bucket in its
/// `faults`, and the end times of the jobs against `t0_ms` (the first submission).
pub(super) fn rate_figures(
    faults: &Value,
    stats: &Value,
    finals: &HashMap<String, Final>,
    t0_ms: u64,
) -> RateFigures {
    let mut r = RateFigures::default();
    if let Some(routes) = stats["requests"].as_object() {
        for (route, by_status) in routes {
            // The fake's S3 and unknown paths are not D-ID's API.
            if route == "GET /_fake_s3" || route == "unmatched" {
                continue;
            }
            for (status, n) in by_status.as_object().into_iter().flatten() {
                let n = n.as_u64().unwrap_or(0);
                if status == "429" {
                    r.throttled += n;
                    continue;
                }
                r.answered += n;
                match route.as_str() {
                    "POST /talks" => r.creates += n,
                    "GET /talks/{id}" => r.polls += n,
                    "GET /talks" => r.lookup_pages += n,
                    _ => {}
                }
            }
        }
    }
    r.limit = faults["rate_limit_rps"].as_f64().map(|rps| {
        let burst = faults["rate_limit_burst"]
            .as_f64()
            .unwrap_or(rps.max(1.0))
            .max(1.0);
        (rps, burst)
    });
    let last = finals
        .values()
        .filter_map(|f| match f {
            Final::Found(view) => view["finished_at"].as_str().and_then(epoch_ms),
            _ => None,
        })
        .max();
    let all_found = !finals.is_empty() && finals.values().all(|f| matches!(f, Final::Found(_)));
    r.finished_secs = last
        .filter(|_| all_found)
        .map(|t| t.saturating_sub(t0_ms) as f64 / 1000.0);
    r
}

/// Milliseconds since the epoch of an RFC 3339 timestamp.
fn epoch_ms(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// What the callback receiver got.
#[derive(Default)]
pub(super) struct CallbackFigures {
    /// Requests received (attempts, all answers).
    pub(super) received: usize,
    /// Ended jobs whose callback the receiver got at least once.
    pub(super) jobs_called_back: usize,
    /// Jobs that got more than one request (retried after a 503, or sent again after a kill).
    pub(super) jobs_retried: usize,
    /// Ended jobs whose callback is not `delivered` or never arrived.
    pub(super) not_delivered: Vec<String>,
    /// Jobs whose requests carried more than one `webhook-id`.
    pub(super) several_ids: Vec<String>,
    /// Requests the Standard Webhooks verifier refused.
    pub(super) unsigned: Vec<String>,
}

/// The callback figures of a scenario: what the receiver got against the ended jobs.
pub(super) fn callbacks(
    finals: &HashMap<String, Final>,
    received: &[test_support::receiver::Received],
) -> CallbackFigures {
    let verifier = standardwebhooks::Webhook::new(CALLBACK_SECRET).expect("the harness secret");
    let mut by_job: HashMap<String, Vec<String>> = HashMap::new();
    let mut f = CallbackFigures {
        received: received.len(),
        ..CallbackFigures::default()
    };
    for r in received {
        let mut headers = http::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            if let Some(v) = r.header(name).and_then(|v| v.parse().ok()) {
                headers.insert(name, v);
            }
        }
        let job = r.json()["data"]["job_id"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        if verifier.verify(&r.body, &headers).is_err() {
            f.unsigned.push(format!("{job}: {}", r.path));
        }
        by_job
            .entry(job)
            .or_default()
            .push(r.header("webhook-id").unwrap_or("").to_owned());
    }
    for (id, fin) in finals {
        let Final::Found(view) = fin else { continue };
        let got = by_job.get(id);
        if got.is_some() {
            f.jobs_called_back += 1;
        }
        if view["callback"]["status"] != "delivered" || got.is_none() {
            f.not_delivered.push(format!(
                "{id}: callback {} ({} request(s) received)",
                view["callback"],
                got.map_or(0, Vec::len)
            ));
        }
    }
    for (id, ids) in &by_job {
        if ids.len() > 1 {
            f.jobs_retried += 1;
        }
        let distinct: HashSet<&String> = ids.iter().collect();
        if distinct.len() != 1 {
            f.several_ids.push(format!("{id}: {distinct:?}"));
        }
    }
    f
}

impl Figures {
    pub(super) fn lost(&self) -> usize {
        self.not_found.len() + self.stuck.len()
    }

    pub(super) fn checks(&self) -> Vec<(String, bool, String)> {
        let list = |v: &[String]| {
            let mut s = v
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n        ");
            if v.len() > 10 {
                s.push_str(&format!("\n        ... and {} more", v.len() - 10));
            }
            s
        };
        vec![
            (
                "every key accepted (202) within the bounded retries".to_owned(),
                self.not_accepted.is_empty() && self.rejected.is_empty(),
                list(&[self.not_accepted.clone(), self.rejected.clone()].concat()),
            ),
            (
                "one job id per idempotency key, whichever instance answered".to_owned(),
                self.multi_id_keys.is_empty(),
                list(&self.multi_id_keys),
            ),
            (
                "no job lost (every accepted job found and terminal)".to_owned(),
                self.lost() == 0,
                list(&[self.not_found.clone(), self.stuck.clone()].concat()),
            ),
            (
                "no job stuck (non-terminal at the deadline)".to_owned(),
                self.stuck.is_empty(),
                list(&self.stuck),
            ),
            (
                "exactly 1 talk at did-fake for every done job".to_owned(),
                self.done_bad.is_empty(),
                list(&self.done_bad),
            ),
            (
                "at most 1 talk for every other job".to_owned(),
                self.other_bad.is_empty(),
                list(&self.other_bad),
            ),
            (
                "no talk at did-fake outside the accepted jobs".to_owned(),
                self.unattributed.is_empty(),
                list(&self.unattributed),
            ),
            (
                format!("did-fake peak in-flight <= C ({LIMIT})"),
                self.peak <= u64::from(LIMIT),
                format!("peak {} > {LIMIT} ({} 429s)", self.peak, self.rate_limited),
            ),
            (
                "every ended job called back (delivered, received at least once)".to_owned(),
                self.callbacks.not_delivered.is_empty() && self.callbacks.jobs_called_back > 0,
                list(&self.callbacks.not_delivered),
            ),
            (
                "one webhook-id per job across retries and kills".to_owned(),
                self.callbacks.several_ids.is_empty(),
                list(&self.callbacks.several_ids),
            ),
            (
                "every callback attempt signed (standardwebhooks verifier)".to_owned(),
                self.callbacks.unsigned.is_empty(),
                list(&self.callbacks.unsigned),
            ),
            (
                "some jobs done (the run did real work)".to_owned(),
                self.done > 0,
                "no job ended done".to_owned(),
            ),
        ]
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn figures(
    sc: &Scenario,
    subs: &[Submission],
    ids: &[String],
    finals: &HashMap<String, Final>,
    stats: &Value,
    kills: usize,
    submit_secs: f64,
    settle_secs: f64,
) -> Figures {
    let mut f = Figures {
        name: sc.name,
        instances: sc.instances,
        submitted: subs.len(),
        kills,
        submit_secs,
        settle_secs,
        peak: stats["peak_in_flight"].as_u64().unwrap_or(u64::MAX),
        rate_limited: stats["rate_limited"].as_u64().unwrap_or(0),
        talks_total: stats["talks_created"].as_u64().unwrap_or(0),
        ..Figures::default()
    };
    for s in subs {
        f.tries += u64::from(s.tries);
        f.resubmits_other += u64::from(s.resubmits_other);
        f.replays += u64::from(s.replays);
        if s.tries > 1 {
            f.keys_retried += 1;
        }
        if let Some(r) = &s.rejected {
            f.rejected.push(r.clone());
        } else if s.job_ids.is_empty() {
            f.not_accepted.push(format!(
                "{}: no 202 in {} tries; last: {}",
                s.key,
                s.tries,
                s.failures.last().map_or("-", String::as_str)
            ));
        } else {
            f.accepted += 1;
        }
        let distinct: HashSet<&String> = s.job_ids.iter().collect();
        if distinct.len() > 1 {
            f.multi_id_keys
                .push(format!("{}: job ids {:?}", s.key, s.job_ids));
        }
    }
    let talks: BTreeMap<String, u64> = stats["talks_by_user_data"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let key_of: HashMap<&str, &Submission> = subs
        .iter()
        .flat_map(|s| s.job_ids.iter().map(move |id| (id.as_str(), s)))
        .collect();
    let mut ours = HashSet::new();
    for id in ids {
        let ud = key_of
            .get(id.as_str())
            .map_or_else(String::new, |s| user_data_of(s));
        let n = talks.get(&ud).copied().unwrap_or(0);
        f.talks_attributed += n;
        ours.insert(ud);
        match finals.get(id) {
            Some(Final::Found(view)) => {
                let status = view["status"].as_str().unwrap_or("?");
                let attempts = view["attempts"].as_array().cloned().unwrap_or_default();
                if attempts
                    .iter()
                    .any(|a| a["action"] == "create (looked up first)")
                {
                    f.adopted += 1;
                }
                let owners: HashSet<&str> = attempts
                    .iter()
                    .filter_map(|a| a["worker"].as_str())
                    .map(|w| w.split('/').next().unwrap_or(w))
                    .collect();
                if owners.len() > 1 {
                    f.taken_over += 1;
                }
                let summary = || {
                    format!(
                        "{id} ({status}, talk {}, error {}): {n} talk(s) at did-fake; attempts {}",
                        view["talk_id"],
                        view["error"]["code"],
                        Value::Array(attempts.clone())
                    )
                };
                match status {
                    "done" => {
                        f.done += 1;
                        if n == 1 {
                            f.done_one_talk += 1;
                        } else {
                            f.done_bad.push(summary());
                        }
                    }
                    other => {
                        if other == "failed" {
                            f.failed += 1;
                            let code = view["error"]["code"].as_str().unwrap_or("?").to_owned();
                            *f.failed_codes.entry(code).or_default() += 1;
                        } else {
                            f.cancelled += 1;
                        }
                        if n == 1 {
                            f.other_with_talk += 1;
                        }
                        if n > 1 {
                            f.other_bad.push(summary());
                        }
                    }
                }
            }
            Some(Final::NotFound) => f.not_found.push(format!("{id}: not found (404)")),
            Some(Final::Open(view)) => f.stuck.push(match view {
                Some(v) => format!(
                    "{id}: still {} (talk {}, attempts {})",
                    v["status"], v["talk_id"], v["attempts"]
                ),
                None => format!("{id}: never read"),
            }),
            None => f.stuck.push(format!("{id}: never read")),
        }
        if n > 1 && !matches!(finals.get(id), Some(Final::Found(_))) {
            f.other_bad
                .push(format!("{id}: {n} talks at did-fake (job not terminal)"));
        }
    }
    for (ud, n) in &talks {
        if !ours.contains(ud) {
            f.unattributed.push(format!("{ud}: {n} talk(s)"));
        }
    }
    f
}

pub(super) fn print_figures(all: &[Figures]) {
    let rows: Vec<(&str, Vec<String>)> = vec![
        (
            "instances",
            all.iter().map(|f| f.instances.to_string()).collect(),
        ),
        (
            "kills (SIGKILL + restart)",
            all.iter().map(|f| f.kills.to_string()).collect(),
        ),
        (
            "jobs submitted (keys)",
            all.iter().map(|f| f.submitted.to_string()).collect(),
        ),
        (
            "jobs accepted",
            all.iter().map(|f| f.accepted.to_string()).collect(),
        ),
        (
            "POSTs sent (keys needing > 1)",
            all.iter()
                .map(|f| format!("{} ({})", f.tries, f.keys_retried))
                .collect(),
        ),
        (
            "re-submits to another instance",
            all.iter().map(|f| f.resubmits_other.to_string()).collect(),
        ),
        (
            "accepted as a replay of the key",
            all.iter().map(|f| f.replays.to_string()).collect(),
        ),
        (
            "callbacks: requests / jobs called back / jobs sent > 1",
            all.iter()
                .map(|f| {
                    format!(
                        "{} / {} / {}",
                        f.callbacks.received,
                        f.callbacks.jobs_called_back,
                        f.callbacks.jobs_retried
                    )
                })
                .collect(),
        ),
        (
            "terminal: done / failed / cancelled",
            all.iter()
                .map(|f| format!("{} / {} / {}", f.done, f.failed, f.cancelled))
                .collect(),
        ),
        (
            "failed by code",
            all.iter()
                .map(|f| {
                    if f.failed_codes.is_empty() {
                        "-".to_owned()
                    } else {
                        f.failed_codes
                            .iter()
                            .map(|(c, n)| format!("{c} {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                })
                .collect(),
        ),
        ("lost", all.iter().map(|f| f.lost().to_string()).collect()),
        (
            "stuck",
            all.iter().map(|f| f.stuck.len().to_string()).collect(),
        ),
        (
            "done jobs with exactly 1 talk",
            all.iter()
                .map(|f| format!("{} of {}", f.done_one_talk, f.done))
                .collect(),
        ),
        (
            "other jobs with > 1 talk (with 1)",
            all.iter()
                .map(|f| format!("{} ({})", f.other_bad.len(), f.other_with_talk))
                .collect(),
        ),
        (
            "talks at did-fake / done jobs",
            all.iter()
                .map(|f| format!("{} / {}", f.talks_total, f.done))
                .collect(),
        ),
        (
            "talks outside accepted jobs",
            all.iter()
                .map(|f| (f.talks_total.saturating_sub(f.talks_attributed)).to_string())
                .collect(),
        ),
        (
            "jobs that adopted a talk by look-up",
            all.iter().map(|f| f.adopted.to_string()).collect(),
        ),
        (
            "jobs with attempts by > 1 process",
            all.iter().map(|f| f.taken_over.to_string()).collect(),
        ),
        (
            "jobs moved by > 1 process (logs)",
            all.iter().map(|f| f.multi_process.to_string()).collect(),
        ),
        (
            "jobs a killed process left creating",
            all.iter().map(|f| f.left_creating.to_string()).collect(),
        ),
        (
            "peak in-flight at did-fake (C)",
            all.iter()
                .map(|f| format!("{} ({LIMIT})", f.peak))
                .collect(),
        ),
        (
            "did-fake 429s",
            all.iter().map(|f| f.rate_limited.to_string()).collect(),
        ),
        (
            "submit phase / settle (s)",
            all.iter()
                .map(|f| format!("{:.1} / {:.1}", f.submit_secs, f.settle_secs))
                .collect(),
        ),
        (
            "D-ID calls answered (not 429) / 429s",
            all.iter()
                .map(|f| format!("{} / {}", f.rate.answered, f.rate.throttled))
                .collect(),
        ),
        (
            "  creates / status polls / GET /talks pages",
            all.iter()
                .map(|f| {
                    format!(
                        "{} / {} / {}",
                        f.rate.creates, f.rate.polls, f.rate.lookup_pages
                    )
                })
                .collect(),
        ),
        (
            "rate-bound time: (answered - burst) / rps (s)",
            all.iter()
                .map(|f| match (f.rate.limit, f.rate.rate_bound_secs()) {
                    (Some((rps, burst)), Some(bound)) => {
                        format!("{bound:.1} ({rps} rps, burst {burst})")
                    }
                    _ => "- (no rate limit)".to_owned(),
                })
                .collect(),
        ),
        (
            "first submit -> last job finished (s, x rate-bound)",
            all.iter()
                .map(|f| match (f.rate.finished_secs, f.rate.rate_bound_secs()) {
                    (Some(t), Some(bound)) if bound > 0.0 => {
                        format!("{t:.1} (x{:.2})", t / bound)
                    }
                    (Some(t), _) => format!("{t:.1}"),
                    (None, _) => "- (not all finished)".to_owned(),
                })
                .collect(),
        ),
    ];
    println!("\njobs chaos figures:");
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let cols: Vec<usize> = (0..all.len())
        .map(|c| {
            rows.iter()
                .map(|(_, v)| v[c].len())
                .chain([all[c].name.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut head = format!("    {:<width$}", "");
    for (c, f) in all.iter().enumerate() {
        head.push_str(&format!("  {:>w$}", f.name, w = cols[c]));
    }
    println!("{head}");
    for (name, values) in &rows {
        let mut line = format!("    {name:<width$}");
        for (c, v) in values.iter().enumerate() {
            line.push_str(&format!("  {v:>w$}", w = cols[c]));
        }
        println!("{line}");
    }
}
