//! Wake-ups: one task per limiter reads the pub/sub channel and wakes the local waiters whose
//! tokens were just granted.
//!
//! The subscriber is a dedicated fred `SubscriberClient` (a subscribed RESP2 connection can
//! run no other command). It subscribes again after every (re)connect — fred broadcasts a
//! reconnect event for the first connection too, so a limiter that started while Redis was
//! down subscribes as soon as Redis appears — and wakes *every* local waiter then, because
//! messages published while it was disconnected are lost. A lagging receiver does the same.
//! Waiters also re-check on a jittered safety poll, so a lost message costs at most one poll.
//!
//! After each (re)connect it also takes this instance's *presence* subscription (a sharded
//! subscription to `<wake channel>:<instance>`, see `Inner::presence_channel`): when the
//! process dies, its connection closes and Redis stops granting to its waiters at once,
//! long before its instance record expires.

use std::sync::Weak;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::Message;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::inner::Inner;

/// Runs until the limiter is dropped (the task is aborted) or the subscriber is closed.
pub(crate) async fn run(
    inner: Weak<Inner>,
    subscriber: SubscriberClient,
    channel: String,
    mut messages: Receiver<Message>,
    mut reconnects: Receiver<fred::types::config::Server>,
) {
    loop {
        tokio::select! {
            message = messages.recv() => {
                let Some(inner) = inner.upgrade() else { return };
                match message {
                    Ok(message) => {
                        if let Some(text) = message.value.as_str() {
                            inner.wake(text.split(' '));
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "wake-up receiver lagged; waking every waiter");
                        inner.wake_all();
                    }
                    Err(RecvError::Closed) => return,
                }
            }
            event = reconnects.recv() => {
                if matches!(event, Err(RecvError::Closed)) {
                    return;
                }
                if let Err(e) = subscriber.subscribe(channel.clone()).await {
                    tracing::warn!(error = %e, "could not subscribe to the wake-up channel");
                }
                let Some(inner) = inner.upgrade() else { return };
                if inner.listen().await && !inner.is_degraded() && inner.client.is_connected() {
                    // Tell Redis now rather than at the next heartbeat, so that a death
                    // right after the start is recognised too. A failure here is left to
                    // the heartbeat, which beats again within `instance_ttl / 4`.
                    if let Err(e) = inner.beat(&inner.adopted_tokens()).await {
                        tracing::debug!(error = %e, "early heartbeat failed");
                    }
                }
                inner.wake_all();
            }
        }
    }
}
