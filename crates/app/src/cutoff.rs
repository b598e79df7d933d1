//! What a request needs to be answered when the shutdown grace runs out: the signal that the
//! grace has elapsed, and the slot where a generate records the talk it created.
//!
//! The server owns the [`CutoffTrigger`] and hands a [`Cutoff`] to every request; it races
//! the request against it and, when it fires first, answers `shutting_down` itself. The handler's future is dropped then, so whatever it knew is lost,
//! except what it wrote into its [`TalkSlot`] beforehand: that is how the answer (and the log
//! line) can name a paid talk that keeps rendering at D-ID.

use std::sync::{Arc, OnceLock};

use domain::TalkId;
use tokio::sync::watch;

/// Fires the [`Cutoff`]s made with it. Dropping it without firing fires nothing.
#[derive(Debug)]
pub struct CutoffTrigger(watch::Sender<bool>);

/// The signal "the shutdown grace has elapsed": every request still running must answer now.
#[derive(Debug, Clone)]
pub struct Cutoff(Option<watch::Receiver<bool>>);

/// A trigger and the signal it fires.
pub fn cutoff() -> (CutoffTrigger, Cutoff) {
    let (tx, rx) = watch::channel(false);
    (CutoffTrigger(tx), Cutoff(Some(rx)))
}

impl CutoffTrigger {
    /// Fires the signal; every [`Cutoff::fired`], current and future, resolves.
    pub fn fire(&self) {
        // `send_replace` stores the value even when no request is listening right now.
        self.0.send_replace(true);
    }
}

impl Cutoff {
    /// A signal that never fires (for a request served outside `run`).
    pub fn never() -> Cutoff {
        Cutoff(None)
    }

    /// Whether the signal has fired already.
    pub fn has_fired(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Resolves once the signal has fired (at once if it already has); never if the trigger
    /// was dropped without firing.
    pub async fn fired(&self) {
        if let Some(rx) = &self.0 {
            let mut rx = rx.clone();
            if rx.wait_for(|fired| *fired).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// Where a request records the talk it created (at most one: a generate creates one talk)
/// and the job it runs. The server gives one to every request and reads it if the request is
/// cut off.
#[derive(Debug, Clone, Default)]
pub struct TalkSlot(Arc<(OnceLock<TalkId>, OnceLock<String>, OnceLock<Cutoff>)>);

impl TalkSlot {
    /// Records the created talk. A second call keeps the first id.
    pub fn record(&self, id: &TalkId) {
        let _ = self.0.0.set(id.clone());
    }

    /// The recorded talk, if any.
    pub fn get(&self) -> Option<TalkId> {
        self.0.0.get().cloned()
    }

    /// Records the request's job. A second call keeps the first id.
    pub fn record_job(&self, id: &str) {
        let _ = self.0.1.set(id.to_owned());
    }

    /// The recorded job, if any.
    pub fn job(&self) -> Option<String> {
        self.0.1.get().cloned()
    }

    /// Remembers the request's cut-off signal (set once, by `server::handle`).
    pub fn watch_cutoff(&self, cutoff: Cutoff) {
        let _ = self.0.2.set(cutoff);
    }

    /// Whether the request is being cut off by the shutdown (its caller then gets a 503
    /// naming its job), rather than dropped because its caller left.
    pub fn is_cut_off(&self) -> bool {
        self.0.2.get().is_some_and(Cutoff::has_fired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_cutoff_fires_for_waiting_and_later_listeners_and_never_without_a_fire() {
        let (trigger, cutoff) = cutoff();
        let waiting = tokio::spawn({
            let c = cutoff.clone();
            async move { c.fired().await }
        });
        assert!(cutoff.fired().now_or_never().is_none(), "not fired yet");
        trigger.fire();
        waiting.await.unwrap();
        assert!(cutoff.fired().now_or_never().is_some(), "a later listener");

        let (trigger, cutoff) = super::cutoff();
        drop(trigger);
        assert!(
            cutoff.fired().now_or_never().is_none(),
            "dropped, not fired"
        );
        assert!(Cutoff::never().fired().now_or_never().is_none());
    }

    #[test]
    fn a_talk_slot_keeps_the_first_talk_and_job() {
        let slot = TalkSlot::default();
        let seen = slot.clone();
        assert_eq!(slot.get(), None);
        seen.record(&TalkId::parse("tlk_1").unwrap());
        seen.record(&TalkId::parse("tlk_2").unwrap());
        assert_eq!(slot.get().unwrap().as_str(), "tlk_1");
        seen.record_job("job_a");
        seen.record_job("job_b");
        assert_eq!(slot.job().as_deref(), Some("job_a"));
        assert!(!slot.is_cut_off(), "no cut-off watched");
    }
}
