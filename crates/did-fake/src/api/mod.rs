//! Handlers of the D-ID routes and of the fake's own routes, one module per resource.
//!
//! Every handler returns a complete response; D-ID's error bodies are built in [`errors`] only,
//! so the shapes stay consistent. A handler that must cut the connection on purpose returns
//! [`CutConnection`], which the server turns into a closed socket.

pub(crate) mod auth;
pub(crate) mod control;
pub(crate) mod credits;
pub(crate) mod errors;
pub(crate) mod s3;
pub(crate) mod talks;
pub(crate) mod uploads;

use bytes::Bytes;
use http_body_util::Full;

/// Response body of every route: the fake always answers with a complete body.
pub(crate) type Body = Full<Bytes>;
/// A complete response.
pub(crate) type Resp = http::Response<Body>;

/// Returned by the service to make hyper close the connection without writing a response.
#[derive(Debug, thiserror::Error)]
#[error("connection cut on purpose by the fake")]
pub(crate) struct CutConnection;

/// What a handler produces: a response, or a deliberately cut connection.
pub(crate) type Outcome = Result<Resp, CutConnection>;
