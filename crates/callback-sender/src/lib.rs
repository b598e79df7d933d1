//! `callback-sender`: the [`ports::CallbackSender`] adapter over reqwest — talkgate's
//! callbacks to its callers, signed per [Standard Webhooks] and kept away from internal
//! networks.
//!
//! ```no_run
//! use callback_sender::{CallbackConfig, HttpCallbackSender, Signer};
//! use ports::{CallbackDelivery, CallbackSender};
//! use secrecy::SecretString;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let signer = Signer::new(&SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None)?;
//! let sender = HttpCallbackSender::new(CallbackConfig::default(), signer)?;
//! let delivery = CallbackDelivery {
//!     url: domain::CallbackUrl::parse("https://example.com/hooks/talkgate")?,
//!     webhook_id: "msg_job_1_talk.done".to_owned(),
//!     payload: br#"{"type":"talk.done","data":{}}"#.to_vec(),
//!     trace: None,
//! };
//! match sender.send(&delivery).await {
//!     Ok(receipt) => println!("delivered: {}", receipt.status),
//!     Err(e) if e.is_permanent() => println!("giving up: {e}"),
//!     Err(e) => println!("try again later: {e}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`DestinationPolicy`] (from `domain`, where the service checks a `callback_url` when a
//!   job is submitted): https only by default; loopback, private, link-local (the metadata
//!   endpoint), unique-local, multicast and other internal addresses refused in every
//!   spelling, unless a configured network allows them. The sender checks it again at each
//!   attempt, down to the address it connects to.
//! - [`sign`]: [`Signer`] — `webhook-signature` with the current and, during a rotation, the
//!   previous `whsec_` secret, by the `standardwebhooks` crate.
//! - [`sender`]: [`HttpCallbackSender`] — one attempt: checked URL, a slot of its endpoint,
//!   a POST through [`GuardedResolver`] (the address checked is the one connected to), no
//!   redirects, no proxy, a timeout, a capped read of the answer.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

pub mod sender;
pub mod sign;

pub use domain::{DestinationPolicy, Refusal};
pub use sender::{BuildError, CallbackConfig, GuardedResolver, HttpCallbackSender};
pub use sign::{InvalidSecret, Signer};
