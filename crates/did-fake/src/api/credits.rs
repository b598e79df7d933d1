//! `GET /credits`: the user's balance in D-ID's `UserCredits` shape, one credit line.

use http::StatusCode;
use serde_json::json;

use super::{Resp, errors};
use crate::state::{Shared, lock};
use crate::util::iso_z;

/// Thirty days, the validity the fake gives its single credit line.
const PERIOD_MS: u64 = 30 * 24 * 3600 * 1000;

/// `GET /credits`.
pub(crate) fn get(shared: &Shared, user: &str) -> Resp {
    let account = *lock(&shared.store).account(user, shared.config.credits);
    let start = shared.started_ms;
    errors::json(
        StatusCode::OK,
        &json!({
            "credits": [{
                "owner_id": user,
                "created_at": iso_z(start),
                "modified_at": iso_z(start),
                "valid_from": iso_z(start),
                "expire_at": iso_z(start + PERIOD_MS),
                "remaining": account.remaining,
                "total": account.total,
                "product_id": "prod_fake",
                "price_id": "price_fake",
                "plan_group": "fake",
                "product_billing_interval": "month",
            }],
            "remaining": account.remaining,
            "total": account.total,
        }),
    )
}
