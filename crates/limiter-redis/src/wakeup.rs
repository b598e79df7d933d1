//! Wake-ups: one task per limiter reads the pub/sub channel and wakes the local waiters whose
//! tokens were just granted.
//!
//! The subscriber is a dedicated fred `SubscriberClient` (a subscribed RESP2 connection can
//! run no other command). It subscribes again after every (re)connect — fred broadcasts a
//! reconnect event for the first connection too, so a limiter that started while Redis was
//! down subscribes as soon as Redis appears — and wakes *every* local waiter then, because
//! messages published while it was disconnected are lost. A lagging receiver does the same.
//! Waiters also re-check on a jittered safety poll, so a lost message costs at most one poll.

use std::sync::Weak;

use fred::clients::SubscriberClient;
use fred::interfaces::PubsubInterface;
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
                inner.wake_all();
            }
        }
    }
}
