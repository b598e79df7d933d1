//! Domain values of talkgate: what a request *is*, independent of how it travels.
//!
//! Every value here is validated when it is built (`parse` / `TryFrom`) and immutable
//! afterwards, so code that holds one never has to check it again: a [`TalkId`] that
//! reaches an upstream URL cannot contain `/` or `..`, a [`Priority`] is one of four
//! levels and never a silent default.
//!
//! # Layout
//! - [`adaptive`]: the adaptive concurrency limit ([`LimitState`], [`LimitPolicy`]): how
//!   D-ID's 429s, timeouts and latency move the limit, with virtual time.
//! - [`breaker`]: the circuit breaker in front of D-ID ([`BreakerState`], [`BreakerPolicy`]):
//!   open after a burst of failures, shed below `critical`, probe, close.
//! - [`admission`]: [`Admission`] (a [`Tenant`] and a [`Priority`]), what every call that
//!   takes capacity carries.
//! - [`budget`]: [`Budget`] and its [`BudgetPeriod`], and what a talk is estimated to cost
//!   ([`budget::estimate`]).
//! - [`callback`]: [`CallbackUrl`], where a job's outcome is reported.
//! - [`priority`]: [`Priority`], the four request classes the limiter orders by.
//! - [`talk`]: [`TalkId`], [`TalkStatus`], [`Talk`] and its parts, as D-ID returns them.
//! - [`request`]: [`TalkRequest`], a `POST /talks` body with D-ID's validation rules.
//! - [`upload`]: [`UploadKind`], [`MediaType`] content sniffing, [`Upload`], [`Asset`].
//!
//! This crate does no I/O and depends on nothing that does (checked by `cargo xtask test`).

pub mod adaptive;
pub mod admission;
pub mod breaker;
pub mod budget;
pub mod callback;
pub mod destination;
pub mod priority;
pub mod request;
pub mod talk;
pub mod upload;

pub use adaptive::{LimitChange, LimitPolicy, LimitReason, LimitState};
pub use admission::{Admission, InvalidTenant, Share, Tenant};
pub use breaker::{
    Admit, BreakerChange, BreakerMode, BreakerPolicy, BreakerState, Outcomes, TripReason,
};
pub use budget::{
    Budget, BudgetPeriod, Estimate, EstimateBasis, InvalidBudgetPeriod, PeriodWindow,
};
pub use callback::{CallbackUrl, InvalidCallbackUrl};
pub use destination::{DestinationPolicy, IpNet, Refusal};
pub use priority::{ParsePriorityError, Priority};
pub use request::{Script, TalkConfig, TalkRequest, TalkRequestError};
pub use talk::{
    CreatedTalk, Credits, InvalidTalkId, Talk, TalkError, TalkId, TalkPage, TalkStatus,
};
pub use upload::{
    Asset, AssetId, MediaType, Upload, UploadError, UploadKind, estimate_audio_seconds,
};
