//! The fake's own routes under `/_fake/`, outside D-ID's path space and without auth:
//!
//! - `GET /_fake/stats`: [`FakeStats`](crate::FakeStats) as JSON.
//! - `POST /_fake/reset`: zeroes the counters (the peak restarts from the current in-flight
//!   count) and keeps talks, uploads and credits; `POST /_fake/reset?state=clear` also forgets
//!   those, so every account is back at its initial credits.
//! - `GET /_fake/faults`: the current [`Faults`](crate::Faults).
//! - `POST /_fake/faults`: replaces them with the JSON body (missing fields take defaults);
//!   400 `{"error": ...}` when the body does not parse or a value is out of range.

use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::{Resp, errors};
use crate::faults::Faults;
use crate::state::{Shared, lock};

/// Routes one `/_fake/...` request.
pub(crate) async fn handle(shared: &Shared, req: http::Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/_fake/stats") => {
            let stats = lock(&shared.stats).clone();
            errors::json(StatusCode::OK, &json!(stats))
        }
        (Method::POST, "/_fake/reset") => {
            let clear = query.split('&').any(|kv| kv == "state=clear");
            if clear {
                shared.clear_state();
            }
            lock(&shared.stats).reset();
            errors::json(
                StatusCode::OK,
                &json!({ "reset": true, "state_cleared": clear }),
            )
        }
        (Method::GET, "/_fake/faults") => errors::json(StatusCode::OK, &json!(shared.faults())),
        (Method::POST, "/_fake/faults") => {
            let bytes = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => return bad_request(&format!("cannot read body: {e}")),
            };
            // Only an object: serde would also read a struct from a JSON array.
            let faults: Faults = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) if v.is_object() => match serde_json::from_value(v) {
                    Ok(f) => f,
                    Err(e) => return bad_request(&format!("invalid faults: {e}")),
                },
                Ok(_) => return bad_request("invalid faults: expected a JSON object"),
                Err(e) => return bad_request(&format!("invalid faults: {e}")),
            };
            if let Err(e) = faults.validate() {
                return bad_request(&e);
            }
            shared.set_faults(faults.clone());
            errors::json(StatusCode::OK, &json!(faults))
        }
        _ => errors::json(
            StatusCode::NOT_FOUND,
            &json!({ "error": "no such fake route" }),
        ),
    }
}

fn bad_request(message: &str) -> Resp {
    errors::json(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}
