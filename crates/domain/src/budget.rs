//! Credit budgets: what a talk is estimated to cost before it is created, and the calendar
//! periods a tenant's budget runs over.
//!
//! D-ID bills a talk by its video's length, rounded up to whole 15-second units, at least
//! one; it refunds a talk that ends in `error`. The length is not known before the talk is
//! rendered, so a budget reserves an **estimate** ([`estimate`]) and settles the real cost
//! once D-ID reports the video's `duration`:
//!
//! | script | estimated length | error |
//! |---|---|---|
//! | `text` | characters ÷ [`TEXT_CHARS_PER_SECOND`] (12, slower than typical speech at 14–16) | runs about 15–30 % long, so the estimate errs on the high side |
//! | `audio` uploaded through talkgate | the upload's duration (D-ID's own, else from the bytes) | exact for D-ID's figure and WAV; MP3 from its first frame's bitrate |
//! | `audio` at any other URL | an assumed length (the service's setting, 60 s by default) | unknown: settled at the real cost |
//!
//! `config.pad_audio` seconds are added to every estimate, as D-ID adds them to the video.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, OffsetDateTime, Time};

use crate::request::{Script, TalkRequest};

/// Seconds of video D-ID bills as one credit.
pub const SECONDS_PER_CREDIT: f64 = 15.0;
/// Characters of a text script per second of speech, for the estimate (see the module docs).
pub const TEXT_CHARS_PER_SECOND: f64 = 12.0;

/// What `seconds` of video cost: `ceil(seconds / 15)`, at least 1.
pub fn credits_for_seconds(seconds: f64) -> u64 {
    let units = (seconds.max(0.0) / SECONDS_PER_CREDIT).ceil();
    // A talk is at most minutes long: far below u64's range; NaN becomes 0, then 1.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let units = units as u64;
    units.max(1)
}

/// What an estimate was based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimateBasis {
    /// The length of a text script.
    Text,
    /// The known duration of the audio.
    Audio,
    /// An assumed duration: the audio's is unknown.
    AssumedAudio,
}

/// A talk's estimated cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Estimated seconds of video.
    pub seconds: f64,
    /// What they cost ([`credits_for_seconds`]).
    pub credits: u64,
    /// What the estimate rests on.
    pub basis: EstimateBasis,
}

/// The estimated cost of `request`: `audio_seconds` is the audio's duration when known,
/// `assumed_audio_seconds` what an audio of unknown length is taken to last.
pub fn estimate(
    request: &TalkRequest,
    audio_seconds: Option<f64>,
    assumed_audio_seconds: f64,
) -> Estimate {
    let (speech, basis) = match request.script() {
        Script::Text { input } => {
            let chars = u32::try_from(input.chars().count()).unwrap_or(u32::MAX);
            (
                f64::from(chars) / TEXT_CHARS_PER_SECOND,
                EstimateBasis::Text,
            )
        }
        Script::Audio { .. } => match audio_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            Some(s) => (s, EstimateBasis::Audio),
            None => (assumed_audio_seconds.max(0.0), EstimateBasis::AssumedAudio),
        },
    };
    let pad = request
        .config()
        .and_then(|c| c.pad_audio)
        .filter(|p| p.is_finite() && *p > 0.0)
        .unwrap_or(0.0);
    let seconds = speech + pad;
    Estimate {
        seconds,
        credits: credits_for_seconds(seconds),
        basis,
    }
}

/// The calendar period a budget runs over, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// A UTC day.
    Day,
    /// An ISO week (Monday to Sunday, UTC).
    Week,
    /// A calendar month (UTC).
    Month,
}

/// A string that is not a budget period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a budget period is day, week or month, not {0:?}")]
pub struct InvalidBudgetPeriod(pub String);

/// One period of a budget: its key (`2026-12-07`, `2026-W49`, `2026-12`) and its bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodWindow {
    /// Names the period; the ledger keeps usage per tenant and key.
    pub key: String,
    /// When it started, ms since the epoch.
    pub starts_ms: u64,
    /// When the next one starts (the budget is whole again), ms since the epoch.
    pub ends_ms: u64,
}

impl BudgetPeriod {
    /// `day`, `week` or `month`.
    pub fn parse(text: &str) -> Result<BudgetPeriod, InvalidBudgetPeriod> {
        match text {
            "day" => Ok(BudgetPeriod::Day),
            "week" => Ok(BudgetPeriod::Week),
            "month" => Ok(BudgetPeriod::Month),
            other => Err(InvalidBudgetPeriod(other.to_owned())),
        }
    }

    /// The name [`BudgetPeriod::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Week => "week",
            BudgetPeriod::Month => "month",
        }
    }

    /// The period holding `now_ms`.
    pub fn window(self, now_ms: u64) -> PeriodWindow {
        let secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let now = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let today = now.date();
        let (start, end, key) = match self {
            BudgetPeriod::Day => (
                today,
                today.next_day().unwrap_or(today),
                format!(
                    "{:04}-{:02}-{:02}",
                    today.year(),
                    u8::from(today.month()),
                    today.day()
                ),
            ),
            BudgetPeriod::Week => {
                let monday =
                    today - Duration::days(i64::from(today.weekday().number_days_from_monday()));
                let (year, week, _) = today.to_iso_week_date();
                (
                    monday,
                    monday + Duration::days(7),
                    format!("{year:04}-W{week:02}"),
                )
            }
            BudgetPeriod::Month => {
                let first =
                    Date::from_calendar_date(today.year(), today.month(), 1).unwrap_or(today);
                let (y, m) = match today.month() {
                    Month::December => (today.year() + 1, Month::January),
                    m => (today.year(), m.next()),
                };
                let next = Date::from_calendar_date(y, m, 1).unwrap_or(first);
                (
                    first,
                    next,
                    format!("{:04}-{:02}", today.year(), u8::from(today.month())),
                )
            }
        };
        let ms = |d: Date| {
            let t = d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp();
            u64::try_from(t).unwrap_or(0).saturating_mul(1000)
        };
        PeriodWindow {
            key,
            starts_ms: ms(start),
            ends_ms: ms(end),
        }
    }
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's credit budget: at most `credits` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Credits per period (at least 1).
    pub credits: u64,
    /// The period.
    pub period: BudgetPeriod,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::TalkConfig;

    fn text(chars: usize) -> TalkRequest {
        TalkRequest::new(
            Some("https://example.test/face.jpg".into()),
            Script::Text {
                input: "a".repeat(chars),
            },
        )
        .unwrap()
    }

    #[test]
    fn credits_round_up_per_fifteen_seconds_with_a_minimum_of_one() {
        for (secs, want) in [
            (0.0, 1),
            (2.0, 1),
            (15.0, 1),
            (15.1, 2),
            (60.0, 4),
            (f64::NAN, 1),
        ] {
            assert_eq!(credits_for_seconds(secs), want, "{secs}");
        }
    }

    #[test]
    fn estimates_follow_the_script_and_add_the_padding() {
        let e = estimate(&text(180), None, 60.0);
        assert_eq!(
            (e.seconds, e.credits, e.basis),
            (15.0, 1, EstimateBasis::Text)
        );
        assert_eq!(estimate(&text(181), None, 60.0).credits, 2);
        let audio = TalkRequest::new(
            Some("https://example.test/face.jpg".into()),
            Script::Audio {
                audio_url: "https://example.test/voice.mp3".into(),
            },
        )
        .unwrap();
        let known = estimate(&audio, Some(31.0), 60.0);
        assert_eq!((known.credits, known.basis), (3, EstimateBasis::Audio));
        let assumed = estimate(&audio, None, 60.0);
        assert_eq!(
            (assumed.credits, assumed.basis),
            (4, EstimateBasis::AssumedAudio)
        );
        let padded = audio
            .with_config(TalkConfig {
                pad_audio: Some(20.0),
                ..TalkConfig::default()
            })
            .unwrap();
        assert_eq!(
            estimate(&padded, Some(10.0), 60.0).credits,
            2,
            "10 s + 20 s"
        );
    }

    #[test]
    fn periods_are_utc_calendar_days_iso_weeks_and_months() {
        // 2026-12-07T18:00:00Z, a Monday.
        let now = 1_796_666_400_000;
        let day = BudgetPeriod::Day.window(now);
        assert_eq!(day.key, "2026-12-07");
        assert_eq!(day.ends_ms - day.starts_ms, 86_400_000);
        assert!(day.starts_ms <= now && now < day.ends_ms);
        let week = BudgetPeriod::Week.window(now);
        assert_eq!(week.key, "2026-W50");
        assert_eq!(week.starts_ms, day.starts_ms, "a Monday starts its week");
        let month = BudgetPeriod::Month.window(now);
        assert_eq!(month.key, "2026-12");
        assert_eq!(month.ends_ms, 1_798_761_600_000, "2027-01-01T00:00:00Z");
        assert_eq!(
            BudgetPeriod::Month.window(month.ends_ms).key,
            "2027-01",
            "the next period starts at the bound"
        );
        assert_eq!(BudgetPeriod::parse("week"), Ok(BudgetPeriod::Week));
        assert!(BudgetPeriod::parse("year").is_err());
    }
}
