//! What the scripts answer: every reply of a [`crate::scripts`] script decoded into a type,
//! here and nowhere else.
//!
//! The scripts answer with bare integers (Lua has no enums); the meaning of each number is
//! written once, in the `decode` functions below, which must agree with the `return`
//! statements of the script they decode. A reply no script can give is a
//! [`redis_connect::reply::UnexpectedReply`], turned into a [`BackendError`] (as if Redis had
//! failed), never silently read as something else.

use fred::types::Value;
use redis_connect::BackendError;
use redis_connect::reply::unexpected;

/// The answer of [`ACQUIRE`](crate::scripts::ACQUIRE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquire {
    /// `0`: the token is queued (a new ticket, or a refreshed one).
    Queued,
    /// `1`: the token holds a slot with a full lease (taken now, or a grant confirmed).
    Granted,
    /// `2`: no free slot, and the `try` mode does not queue.
    Refused,
    /// `3`: the token was cancelled or released already (its tombstone is alive): a stale
    /// command, and nothing was created.
    Tombstoned,
}

impl Acquire {
    pub(crate) fn decode(reply: i64) -> Result<Self, BackendError> {
        match reply {
            0 => Ok(Acquire::Queued),
            1 => Ok(Acquire::Granted),
            2 => Ok(Acquire::Refused),
            3 => Ok(Acquire::Tombstoned),
            other => Err(unexpected("acquire", other).into()),
        }
    }
}

/// The answer of [`RENEW`](crate::scripts::RENEW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renew {
    /// `1`: the lease was live and now ends a full `lease_ttl` from now.
    Extended,
    /// `2`: the lease had passed its deadline or was gone (Redis lost its data, or
    /// reclaimed it while its holder was alive): it is re-established, but the slot may have
    /// been granted to someone else meanwhile, so the permit counts as lost.
    Reestablished,
    /// `0`: the token was released or cancelled already: nothing is re-created, the permit
    /// is lost.
    Lost,
}

impl Renew {
    /// One code per token renewed, as many as were sent.
    pub(crate) fn decode_all(reply: Vec<i64>, sent: usize) -> Result<Vec<Self>, BackendError> {
        if reply.len() != sent {
            return Err(unexpected("renew", reply).into());
        }
        reply.into_iter().map(Self::decode).collect()
    }

    pub(crate) fn decode(reply: i64) -> Result<Self, BackendError> {
        match reply {
            1 => Ok(Renew::Extended),
            2 => Ok(Renew::Reestablished),
            0 => Ok(Renew::Lost),
            other => Err(unexpected("renew", other).into()),
        }
    }
}

/// What giving a token back freed: the answer of [`RELEASE`](crate::scripts::RELEASE) or
/// [`CANCEL`](crate::scripts::CANCEL). Either way the token is tombstoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GivenBack {
    /// The token held a slot (release `1`) or had been granted one (cancel `2`): the slot
    /// is free again.
    Slot,
    /// The token was queued (cancel `1`): its ticket is gone.
    Ticket,
    /// Nothing was left to give back (`0`): a second release or cancel, or a lease that had
    /// been reclaimed already.
    Nothing,
}

impl GivenBack {
    pub(crate) fn decode_release(reply: i64) -> Result<Self, BackendError> {
        match reply {
            1 => Ok(GivenBack::Slot),
            0 => Ok(GivenBack::Nothing),
            other => Err(unexpected("release", other).into()),
        }
    }

    pub(crate) fn decode_cancel(reply: i64) -> Result<Self, BackendError> {
        match reply {
            2 => Ok(GivenBack::Slot),
            1 => Ok(GivenBack::Ticket),
            0 => Ok(GivenBack::Nothing),
            other => Err(unexpected("cancel", other).into()),
        }
    }
}

/// The answer of [`SET_LIMIT`](crate::scripts::SET_LIMIT), which only ever answers `1`.
pub(crate) fn decode_set_limit(reply: i64) -> Result<(), BackendError> {
    match reply {
        1 => Ok(()),
        other => Err(unexpected("set_limit", other).into()),
    }
}

/// The answer of [`STATS`](crate::scripts::STATS), field by field, as Redis counted it
/// (after its reclaim and promote steps). Values are as the script returned them; the
/// caller clamps them into its own types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stats {
    /// The global limit stored in Redis.
    pub(crate) limit: i64,
    /// Slots held (confirmed leases and unconfirmed grants).
    pub(crate) active: i64,
    /// Tickets queued per priority, `[low, normal, high, critical]`.
    pub(crate) queued: [i64; 4],
    /// Leases and tickets reclaimed after their deadline, since the data was created.
    pub(crate) reclaimed: i64,
    /// The longest wait from queueing to grant seen, in ms.
    pub(crate) max_wait_ms: i64,
    /// How long the oldest queued ticket has waited, in ms (0 with an empty queue).
    pub(crate) oldest_ms: i64,
    /// Live instance records.
    pub(crate) instances: i64,
    /// The data's epoch (when Redis created it, ms): a new one means Redis lost its data.
    pub(crate) epoch: i64,
    /// Instances declared dead since the data was created.
    pub(crate) instances_reclaimed: i64,
    /// Every tenant that holds or waits for a slot: `(tenant, slots held, waiters queued)`.
    pub(crate) tenants: Vec<(String, i64, i64)>,
}

impl Stats {
    /// Twelve integers in the order of the fields, then one `tenant, held, queued` triple
    /// per tenant.
    pub(crate) fn decode(reply: Vec<Value>) -> Result<Self, BackendError> {
        let bad = |reply: &[Value]| BackendError::from(unexpected("stats", reply));
        let int = |v: &Value| match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        };
        let (counts, rest) = reply.split_at(reply.len().min(12));
        let counts: Vec<i64> = counts.iter().map_while(int).collect();
        let [
            limit,
            active,
            low,
            normal,
            high,
            critical,
            reclaimed,
            max_wait_ms,
            oldest_ms,
            instances,
            epoch,
            instances_reclaimed,
        ] = counts[..]
        else {
            return Err(bad(&reply));
        };
        if rest.len() % 3 != 0 {
            return Err(bad(&reply));
        }
        let mut tenants = Vec::with_capacity(rest.len() / 3);
        for triple in rest.chunks(3) {
            let name = match &triple[0] {
                Value::String(s) => s.to_string(),
                Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                _ => return Err(bad(&reply)),
            };
            let (Some(held), Some(queued)) = (int(&triple[1]), int(&triple[2])) else {
                return Err(bad(&reply));
            };
            tenants.push((name, held, queued));
        }
        Ok(Stats {
            limit,
            active,
            queued: [low, normal, high, critical],
            reclaimed,
            max_wait_ms,
            oldest_ms,
            instances,
            epoch,
            instances_reclaimed,
            tenants,
        })
    }
}

/// The answer of [`BEAT`](crate::scripts::BEAT), the instance heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Beat {
    /// The instance had no record: its first beat, or Redis lost its data or declared it
    /// dead (then its holders must be re-established).
    pub(crate) was_unknown: bool,
    /// Live instance records, this one included.
    pub(crate) instances: u32,
    /// The global limit stored in Redis.
    pub(crate) limit: u32,
    /// The data's epoch.
    pub(crate) epoch: i64,
    /// Tokens of this beat that Redis did not hold and now does.
    pub(crate) reestablished: u32,
    /// Subscribers of this instance's presence channel (0 while it is not subscribed, or
    /// on a server without sharded pub/sub).
    pub(crate) listening: u32,
}

impl Beat {
    pub(crate) fn decode(reply: Vec<i64>) -> Result<Self, BackendError> {
        let u32_of = |x: i64| u32::try_from(x.max(0)).unwrap_or(u32::MAX);
        match reply[..] {
            [
                added @ (0 | 1),
                instances,
                limit,
                epoch,
                reestablished,
                listening,
            ] => Ok(Beat {
                was_unknown: added == 1,
                instances: u32_of(instances),
                limit: u32_of(limit),
                epoch,
                reestablished: u32_of(reestablished),
                listening: u32_of(listening),
            }),
            _ => Err(unexpected("beat", reply).into()),
        }
    }
}

/// The answer of [`LEAVE`](crate::scripts::LEAVE), which only ever answers `1`.
pub(crate) fn decode_leave(reply: i64) -> Result<(), BackendError> {
    match reply {
        1 => Ok(()),
        other => Err(unexpected("leave", other).into()),
    }
}

#[cfg(test)]
mod tests {
    use ports::DegradedReason;

    use super::*;

    /// Decodes every reply in `cases` with `decode` and compares; `None` means "an error".
    fn check<T: PartialEq + std::fmt::Debug>(
        decode: impl Fn(i64) -> Result<T, BackendError>,
        cases: &[(i64, Option<T>)],
    ) {
        for (reply, expected) in cases {
            let got = decode(*reply).ok();
            assert_eq!(&got, expected, "reply {reply}");
        }
    }

    /// The integer literals a Lua script body returns (`return 3`), in order.
    fn returned_literals(lua: &str) -> Vec<i64> {
        lua.split("return ")
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect()
    }

    #[test]
    fn every_number_the_acquire_script_returns_is_decoded_and_every_answer_is_returned() {
        let mut returned = returned_literals(crate::scripts::ACQUIRE);
        for reply in &returned {
            assert!(Acquire::decode(*reply).is_ok(), "acquire returns {reply}");
        }
        returned.sort_unstable();
        returned.dedup();
        assert_eq!(returned, [0, 1, 2, 3]);
        use Acquire::*;
        check(
            Acquire::decode,
            &[
                (0, Some(Queued)),
                (1, Some(Granted)),
                (2, Some(Refused)),
                (3, Some(Tombstoned)),
                (4, None),
                (-1, None),
            ],
        );
    }

    #[test]
    fn renew_and_set_limit_replies() {
        check(
            Renew::decode,
            &[
                (1, Some(Renew::Extended)),
                (2, Some(Renew::Reestablished)),
                (0, Some(Renew::Lost)),
                (3, None),
            ],
        );
        assert_eq!(
            Renew::decode_all(vec![1, 2, 0], 3).unwrap(),
            [Renew::Extended, Renew::Reestablished, Renew::Lost]
        );
        assert!(Renew::decode_all(vec![1, 2], 3).is_err());
        assert!(Renew::decode_all(vec![1, 7], 2).is_err());
        check(decode_set_limit, &[(1, Some(())), (0, None)]);
        assert_eq!(returned_literals(crate::scripts::SET_LIMIT), [1]);
    }

    #[test]
    fn release_and_cancel_say_what_was_given_back() {
        use GivenBack::*;
        check(
            GivenBack::decode_release,
            &[(1, Some(Slot)), (0, Some(Nothing)), (2, None)],
        );
        check(
            GivenBack::decode_cancel,
            &[
                (2, Some(Slot)),
                (1, Some(Ticket)),
                (0, Some(Nothing)),
                (3, None),
            ],
        );
        // The cancel script's other answer is `ZREM`'s count of one token: 0 or 1.
        assert_eq!(returned_literals(crate::scripts::CANCEL), [2]);
    }

    #[test]
    fn stats_and_beat_replies_are_numbers_in_the_documented_order() {
        let ints = |xs: &[i64]| xs.iter().map(|&x| Value::Integer(x)).collect::<Vec<_>>();
        let mut reply = ints(&[5, 2, 1, 2, 3, 4, 7, 80, 9, 3, 1700, 2]);
        reply.extend([Value::from("capped"), Value::Integer(2), Value::Integer(1)]);
        reply.extend([Value::from("12"), Value::Integer(0), Value::Integer(3)]);
        let stats = Stats::decode(reply).unwrap();
        assert_eq!(
            stats,
            Stats {
                limit: 5,
                active: 2,
                queued: [1, 2, 3, 4],
                reclaimed: 7,
                max_wait_ms: 80,
                oldest_ms: 9,
                instances: 3,
                epoch: 1700,
                instances_reclaimed: 2,
                tenants: vec![("capped".to_owned(), 2, 1), ("12".to_owned(), 0, 3)],
            }
        );
        let plain = Stats::decode(ints(&[5, 2, 1, 2, 3, 4, 7, 80, 9, 3, 1700, 2])).unwrap();
        assert!(plain.tenants.is_empty());
        let mut torn = ints(&[5, 2, 1, 2, 3, 4, 7, 80, 9, 3, 1700, 2]);
        torn.extend([Value::from("capped"), Value::Integer(2)]);
        assert!(Stats::decode(torn).is_err(), "a tenant without its counts");
        let mut unnamed = ints(&[5, 2, 1, 2, 3, 4, 7, 80, 9, 3, 1700, 2]);
        unnamed.extend(ints(&[7, 2, 1]));
        assert!(
            Stats::decode(unnamed).is_err(),
            "a tenant's name must be a string"
        );
        let beat = Beat::decode(vec![1, 4, 6, 1700, 2, 1]).unwrap();
        assert!(beat.was_unknown);
        assert_eq!(
            (
                beat.instances,
                beat.limit,
                beat.reestablished,
                beat.listening
            ),
            (4, 6, 2, 1)
        );
        assert!(Beat::decode(vec![2, 4, 6, 1700, 2]).is_err());
        assert!(Beat::decode(vec![1, 4]).is_err());
        let err = Stats::decode(ints(&[5, 2])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stats script returned [Integer(5), Integer(2)]"
        );
        assert_eq!(err.reason, DegradedReason::Other);
    }
}
