//! The task that walks one talk through `created → started → done | error | rejected`.
//!
//! Each talk gets one tokio task at creation. The task sleeps the scaled queue delay, waits for
//! a render slot (per user and global, so excess talks stay `created` as on a loaded D-ID),
//! marks the talk `started`, sleeps the scaled render time and writes the outcome, then hands
//! a talk with a `webhook` to [`crate::webhook`]. The store is
//! only locked for those writes, never across a sleep. The task ends early when the server
//! stops, or when the talk disappeared because the state was cleared.

use std::sync::Arc;
use std::time::Duration;

use crate::state::{Shared, Status, lock};
use crate::util::now_ms;

/// How a talk ends, decided when it is created.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ending {
    Done,
    /// `error` with this kind and description; the credits are refunded.
    Error(String, String),
    Rejected,
    /// Stays `started` forever.
    Stuck,
}

/// The schedule of one talk, in real (already scaled) time.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub queue: Duration,
    pub render: Duration,
    pub ending: Ending,
}

/// Starts the lifecycle task of talk `id`.
pub(crate) fn spawn(shared: Arc<Shared>, id: String, user: String, plan: Plan) {
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.clone();
        let stopped = async move {
            // Either the flag flips or the sender is gone: both mean the server stopped.
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::select! {
            () = run(&shared, &id, &user, plan) => {}
            () = stopped => {}
        }
    });
}

async fn run(shared: &Arc<Shared>, id: &str, user: &str, plan: Plan) {
    tokio::time::sleep(plan.queue).await;
    // Render slots: the permits live until the talk leaves `started` (or this task ends).
    let _global = match &shared.render_slots {
        Some(sem) => Some(sem.clone().acquire_owned().await.ok()),
        None => None,
    };
    let _per_user = match shared.user_slots(user) {
        Some(sem) => Some(sem.acquire_owned().await.ok()),
        None => None,
    };
    if !transition(shared, id, Status::Started, None) {
        return;
    }
    if plan.ending == Ending::Stuck {
        // A stuck talk stays `started` but does not hold render capacity.
        lock(&shared.stats).renders_in_progress -= 1;
        return;
    }
    let render = match plan.ending {
        // Failures surface before a full render would have finished.
        Ending::Error(..) | Ending::Rejected => plan.render / 4,
        _ => plan.render,
    };
    // Keep the gauge right even if this task is cancelled while rendering.
    let _rendering = RenderGauge(shared);
    tokio::time::sleep(render).await;
    let ended = match plan.ending {
        Ending::Done => transition(shared, id, Status::Done, None),
        Ending::Error(kind, description) => {
            transition(shared, id, Status::Error, Some((kind, description)))
        }
        Ending::Rejected | Ending::Stuck => transition(shared, id, Status::Rejected, None),
    };
    if ended {
        crate::webhook::talk_ended(shared, id);
    }
}

/// Decrements `renders_in_progress` when rendering ends, however it ends.
struct RenderGauge<'a>(&'a Shared);

impl Drop for RenderGauge<'_> {
    fn drop(&mut self) {
        let mut stats = lock(&self.0.stats);
        stats.renders_in_progress = stats.renders_in_progress.saturating_sub(1);
    }
}

/// Moves talk `id` to `status`; `false` when the talk no longer exists.
fn transition(shared: &Shared, id: &str, status: Status, error: Option<(String, String)>) -> bool {
    let mut store = lock(&shared.store);
    let Some(talk) = store.talks.get_mut(id) else {
        return false;
    };
    let now = now_ms();
    talk.status = status;
    talk.modified_ms = now;
    let mut refund = None;
    match status {
        Status::Started => talk.started_ms = Some(now),
        Status::Error => {
            talk.error = error;
            // "You are not billed for errors": the charge goes back.
            refund = Some((talk.user_id.clone(), talk.cost));
        }
        _ => {}
    }
    if let Some((user, cost)) = refund {
        let initial = shared.config.credits;
        store.account(&user, initial).remaining += cost;
    }
    drop(store);
    if status == Status::Started {
        lock(&shared.stats).renders_in_progress += 1;
    }
    true
}
