//! The `POST /talks` body rules of the spec's §10.4, with D-ID's error bodies.
//!
//! D-ID validates with tsoa: schema errors are collected into one
//! `400 {"kind":"ValidationError","description":"validation failed","details":{path: {message,
//! value?}}}`, booleans and numbers sent as strings are coerced, and the `source_url` check is a
//! separate `400 BadRequestError "invalid actor url"` once the schema passed. The regular
//! expressions of D-ID's schema are matched by hand here (the workspace has no regex crate);
//! each matcher's doc names the pattern it implements.
//!
//! The file stays whole although it is long: the rules are one schema, checked in one pass
//! that collects every error into one body, so they are read and changed together; the last
//! quarter is the tests that pin D-ID's answers.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::api::{Resp, errors};

/// `source_url` when the request has none (the schema's default).
pub(crate) const DEFAULT_SOURCE_URL: &str =
    "https://d-id-public-bucket.s3.us-west-2.amazonaws.com/alice.jpg";
const AUDIO_URL_PATTERN: &str =
    r"^(https|s3):\/\/[\S]+\.(?:m4a|M4A|flac|FLAC|mp3|MP3|mp4|MP4|wav|WAV)([?#][\w.\/=&#%-]+)?$";
const WEBHOOK_PATTERN: &str = r"^(?:https):\/\/[\S]+$";
const RESULT_URL_PATTERN: &str = r"((https|s3):\/\/.+)";
const NOT_BLANK_PATTERN: &str = r"^(?!\s*$).+$";
const TOP_LEVEL: [&str; 7] = [
    "source_url",
    "script",
    "config",
    "user_data",
    "name",
    "webhook",
    "result_url",
];

/// Switches of the validation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    /// Accept `http://` webhooks (local tests have no TLS).
    pub allow_http_webhooks: bool,
    /// Reject unknown top-level fields instead of ignoring them.
    pub strict_fields: bool,
}

/// The script of a valid request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Script {
    Audio { audio_url: String },
    Text { input: String },
}

/// A `POST /talks` body that passed validation.
#[derive(Clone, Debug)]
pub(crate) struct ValidTalk {
    pub source_url: String,
    pub script: Script,
    pub subtitles: bool,
    /// The request's config merged over D-ID's defaults, as `GET /talks/{id}` shows it.
    pub config: Value,
    pub pad_audio: f64,
    pub user_data: Option<String>,
    pub name: Option<String>,
    pub webhook: Option<String>,
}

/// The body D-ID answers when it got no JSON at all (or no `script`).
pub(crate) fn script_required() -> Resp {
    errors::validation("body.script", "'script' is required", None)
}

/// Field errors, keyed by tsoa path.
#[derive(Default)]
struct Errors(BTreeMap<String, Value>);

impl Errors {
    fn add(&mut self, path: &str, message: &str, value: Option<&Value>) {
        let mut entry = json!({ "message": message });
        if let Some(v) = value {
            entry["value"] = v.clone();
        }
        self.0.entry(path.to_owned()).or_insert(entry);
    }
}

/// Validates a `POST /talks` body.
pub(crate) fn create_talk(body: &Value, opts: Options) -> Result<ValidTalk, Resp> {
    let Some(obj) = body.as_object() else {
        return Err(script_required());
    };
    let mut errs = Errors::default();

    if opts.strict_fields {
        for key in obj.keys().filter(|k| !TOP_LEVEL.contains(&k.as_str())) {
            errs.add(
                &format!("body.{key}"),
                &format!("'{key}' is an excess property and therefore is not allowed"),
                Some(&Value::String(key.clone())),
            );
        }
    }

    let script = match obj.get("script") {
        None | Some(Value::Null) => {
            errs.add("body.script", "'script' is required", None);
            None
        }
        Some(Value::Object(s)) => script(s, &mut errs),
        Some(other) => {
            errs.add("body.script", "invalid object", Some(other));
            None
        }
    };
    let subtitles = obj
        .get("script")
        .and_then(|s| s.get("subtitles"))
        .and_then(|v| boolean("body.script.subtitles", v, &mut errs))
        .unwrap_or(false);

    let (config, pad_audio) = config(obj.get("config"), &mut errs);

    let user_data = optional_string(obj, "user_data", &mut errs).filter(|u| {
        let n = u.chars().count();
        if n < 1 {
            errs.add("body.user_data", "minLength 1", Some(&json!(u)));
            false
        } else if n > 1000 {
            errs.add("body.user_data", "maxLength 1000", Some(&json!(u)));
            false
        } else if u.trim().is_empty() {
            errs.add(
                "body.user_data",
                &not_match(NOT_BLANK_PATTERN),
                Some(&json!(u)),
            );
            false
        } else {
            true
        }
    });
    let name = optional_string(obj, "name", &mut errs);
    // "In a case of empty value, the webhook will not be triggered": "" means no webhook.
    let webhook = optional_string(obj, "webhook", &mut errs).filter(|w| !w.is_empty());
    if let Some(w) = &webhook
        && !webhook_ok(w, opts.allow_http_webhooks)
    {
        errs.add("body.webhook", &not_match(WEBHOOK_PATTERN), Some(&json!(w)));
    }
    if let Some(r) = optional_string(obj, "result_url", &mut errs)
        && !result_url_ok(&r)
    {
        errs.add(
            "body.result_url",
            &not_match(RESULT_URL_PATTERN),
            Some(&json!(r)),
        );
    }
    let source_url = optional_string(obj, "source_url", &mut errs);

    if !errs.0.is_empty() {
        return Err(errors::did_details(
            http::StatusCode::BAD_REQUEST,
            "ValidationError",
            "validation failed",
            Value::Object(errs.0.into_iter().collect()),
        ));
    }
    let source_url = source_url.unwrap_or_else(|| DEFAULT_SOURCE_URL.to_owned());
    if !source_url_ok(&source_url) {
        return Err(errors::did(
            http::StatusCode::BAD_REQUEST,
            "BadRequestError",
            "invalid actor url",
        ));
    }
    let Some(script) = script else {
        return Err(script_required());
    };
    Ok(ValidTalk {
        source_url,
        script,
        subtitles,
        config,
        pad_audio,
        user_data,
        name,
        webhook,
    })
}

fn script(s: &Map<String, Value>, errs: &mut Errors) -> Option<Script> {
    let one_of = "should be one of the following; ['text','audio']";
    match s.get("type") {
        Some(Value::String(t)) if t == "audio" => {
            let url = required_string(s, "body.script.audio_url", "audio_url", errs)?;
            if audio_url_ok(&url) {
                Some(Script::Audio { audio_url: url })
            } else {
                errs.add(
                    "body.script.audio_url",
                    &not_match(AUDIO_URL_PATTERN),
                    Some(&json!(url)),
                );
                None
            }
        }
        Some(Value::String(t)) if t == "text" => {
            if let Some(v) = s.get("ssml") {
                boolean("body.script.ssml", v, errs);
            }
            let input = required_string(s, "body.script.input", "input", errs)?;
            let n = input.chars().count();
            if n < 3 {
                errs.add("body.script.input", "minLength 3", Some(&json!(input)));
                None
            } else if n > 40_000 {
                errs.add("body.script.input", "maxLength 40000", None);
                None
            } else {
                Some(Script::Text { input })
            }
        }
        None => {
            errs.add("body.script.type", "'type' is required", None);
            None
        }
        Some(other) => {
            errs.add("body.script.type", one_of, Some(other));
            None
        }
    }
}

/// Validates `config` and merges it over D-ID's defaults (the internal keys real responses
/// carry); returns the merged config and `pad_audio`.
fn config(config: Option<&Value>, errs: &mut Errors) -> (Value, f64) {
    let mut merged = json!({
        "stitch": false,
        "pad_audio": 0,
        "align_driver": true,
        "sharpen": true,
        "auto_match": true,
        "normalization_factor": 1,
        "logo": { "url": "ai", "position": [0, 0] },
        "motion_factor": 1,
        "result_format": ".mp4",
        "fluent": false,
        "align_expand_factor": 0.3
    });
    let mut pad = 0.0;
    let c = match config {
        None | Some(Value::Null) => return (merged, pad),
        Some(Value::Object(c)) => c,
        Some(other) => {
            errs.add("body.config", "invalid object", Some(other));
            return (merged, pad);
        }
    };
    for key in ["fluent", "stitch"] {
        if let Some(v) = c.get(key)
            && let Some(b) = boolean(&format!("body.config.{key}"), v, errs)
        {
            merged[key] = json!(b);
        }
    }
    if let Some(v) = c.get("pad_audio")
        && let Some(p) = number("body.config.pad_audio", v, errs)
    {
        if p < 0.0 {
            errs.add("body.config.pad_audio", "min 0", Some(v));
        } else if p > 60.0 {
            errs.add("body.config.pad_audio", "max 60", Some(v));
        } else {
            pad = p;
            merged["pad_audio"] = json!(p);
        }
    }
    if let Some(v) = c.get("result_format") {
        match v.as_str() {
            Some(f @ ("mp4" | "mov")) => merged["result_format"] = json!(format!(".{f}")),
            _ => errs.add(
                "body.config.result_format",
                "should be one of the following; ['mp4','mov']",
                Some(v),
            ),
        }
    }
    if let Some(v) = c.get("logo") {
        let url_ok = v
            .get("url")
            .and_then(Value::as_str)
            .is_some_and(result_url_ok);
        let pos_ok = v
            .get("position")
            .and_then(Value::as_array)
            .is_some_and(|p| p.len() == 2 && p.iter().all(Value::is_i64));
        if url_ok && pos_ok {
            merged["logo"] = v.clone();
        } else {
            errs.add("body.config.logo", "invalid object", Some(v));
        }
    }
    if let Some(v) = c.get("driver_expressions") {
        if v.get("expressions").is_some_and(Value::is_array) {
            merged["driver_expressions"] = v.clone();
        } else {
            errs.add(
                "body.config.driver_expressions.expressions",
                "'expressions' is required",
                None,
            );
        }
    }
    (merged, pad)
}

fn required_string(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    errs: &mut Errors,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => {
            errs.add(path, &format!("'{key}' is required"), None);
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errs.add(path, "invalid string value", Some(other));
            None
        }
    }
}

fn optional_string(obj: &Map<String, Value>, key: &str, errs: &mut Errors) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errs.add(&format!("body.{key}"), "invalid string value", Some(other));
            None
        }
    }
}

/// A boolean, or the strings `"true"` / `"false"` (tsoa coerces them).
fn boolean(path: &str, v: &Value, errs: &mut Errors) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        other => {
            errs.add(path, "invalid boolean value", Some(other));
            None
        }
    }
}

/// A number, or a string holding one (tsoa coerces it).
fn number(path: &str, v: &Value, errs: &mut Errors) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    };
    if n.is_none() {
        errs.add(path, "invalid float number", Some(v));
    }
    n
}

fn not_match(pattern: &str) -> String {
    format!("Not match in '{pattern}'")
}

/// `^(https|s3):\/\/[\S]+\.(?:m4a|M4A|flac|FLAC|mp3|MP3|mp4|MP4|wav|WAV)([?#][\w.\/=&#%-]+)?$`
pub(crate) fn audio_url_ok(url: &str) -> bool {
    const EXTS: [&str; 10] = [
        "m4a", "M4A", "flac", "FLAC", "mp3", "MP3", "mp4", "MP4", "wav", "WAV",
    ];
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("s3://"))
    else {
        return false;
    };
    // Try every '.' as the extension's dot, as the regex would by backtracking.
    rest.char_indices()
        .filter(|(_, c)| *c == '.')
        .any(|(dot, _)| {
            let body = &rest[..dot];
            if body.is_empty() || body.chars().any(char::is_whitespace) {
                return false;
            }
            let after = &rest[dot + 1..];
            EXTS.iter().any(|ext| {
                after.strip_prefix(ext).is_some_and(|tail| {
                    tail.is_empty()
                        || (tail.len() > 1
                            && tail.starts_with(['?', '#'])
                            && tail[1..]
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_./=&#%-".contains(c)))
                })
            })
        })
}

/// `(https|s3):.*\.(jpg|jpeg|png)`, unanchored like tsoa's `RegExp.test`, and case-insensitive
/// for the extension as the spec's §10.4 asks.
pub(crate) fn source_url_ok(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    ["https:", "s3:"].iter().any(|scheme| {
        lower.match_indices(scheme).any(|(i, _)| {
            let rest = &lower[i + scheme.len()..];
            [".jpg", ".jpeg", ".png"]
                .iter()
                .any(|ext| rest.contains(ext))
        })
    })
}

/// `^(?:https):\/\/[\S]+$` (also `http://` when local webhooks are allowed).
fn webhook_ok(url: &str, allow_http: bool) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://").filter(|_| allow_http));
    rest.is_some_and(|r| !r.is_empty() && !r.chars().any(char::is_whitespace))
}

/// `((https|s3):\/\/.+)`, unanchored.
fn result_url_ok(url: &str) -> bool {
    ["https://", "s3://"].iter().any(|p| {
        url.match_indices(p)
            .any(|(i, _)| url[i + p.len()..].chars().any(|c| c != '\n'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn check(url: &str, want: bool) {
        assert_eq!(audio_url_ok(url), want, "{url}");
    }

    #[test]
    fn audio_url_follows_d_id_regex() {
        check("https://x.test/a.wav", true);
        check("s3://d-id-audios-prod/auth0|1/abc/audio.wav", true);
        check("https://x.test/a.MP3?sig=a%2Fb&e=1", true);
        check("https://x.test/a.mp3#t=1", true);
        check("https://x.test/a.Mp3", false);
        check("http://x.test/a.wav", false);
        check("https://x.test/a", false);
        check("https://x.test/a.wav?", false);
        check("https://x.test/a.wav?x=y z", false);
        check("https://x.test/a b.wav", false);
        check("https://.wav", false);
        check("https://x.test/a.wav.bak", false);
        check("https://x.test/a.wav.mp3", true);
    }

    #[test]
    fn source_url_needs_a_scheme_and_an_image_extension() {
        for (url, want) in [
            ("https://x.test/face.jpg", true),
            ("s3://d-id-images-prod/u/img_1/face.PNG", true),
            ("https://x.test/face.jpeg?sig=1", true),
            ("https://x.test/face.gif", false),
            ("ftp://x.test/face.jpg", false),
            ("face.jpg", false),
        ] {
            assert_eq!(source_url_ok(url), want, "{url}");
        }
    }

    async fn error_body(resp: Resp) -> (u16, Value) {
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn bodies_are_validated_like_d_id() {
        let opts = Options::default();
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!("nope"), "ValidationError", "body.script"),
            (json!({}), "ValidationError", "body.script"),
            (
                json!({"script": {"type": "video"}}),
                "ValidationError",
                "body.script.type",
            ),
            (
                json!({"script": {"type": "audio"}}),
                "ValidationError",
                "body.script.audio_url",
            ),
            (
                json!({"script": {"type": "audio", "audio_url": "https://x/a.ogg"}}),
                "ValidationError",
                "body.script.audio_url",
            ),
            (
                json!({"script": {"type": "text", "input": "hi"}}),
                "ValidationError",
                "body.script.input",
            ),
            (
                json!({"script": {"type": "text", "input": "hello"}, "user_data": "  "}),
                "ValidationError",
                "body.user_data",
            ),
            (
                json!({"script": {"type": "text", "input": "hello"}, "webhook": "http://x/h"}),
                "ValidationError",
                "body.webhook",
            ),
            (
                json!({"script": {"type": "text", "input": "hello"}, "config": {"pad_audio": 61}}),
                "ValidationError",
                "body.config.pad_audio",
            ),
            (
                json!({"script": {"type": "text", "input": "hello"}, "config": {"fluent": "yes"}}),
                "ValidationError",
                "body.config.fluent",
            ),
            (
                json!({"script": {"type": "text", "input": "hello"}, "source_url": "https://x/a.gif"}),
                "BadRequestError",
                "",
            ),
        ];
        for (body, kind, path) in cases {
            let Err(resp) = create_talk(&body, opts) else {
                panic!("accepted {body}");
            };
            let (status, err) = error_body(resp).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(err["kind"], kind, "{body}: {err}");
            if !path.is_empty() {
                assert!(err["details"][path]["message"].is_string(), "{body}: {err}");
            }
        }
    }

    #[test]
    fn strings_are_coerced_and_config_is_merged() {
        let body = json!({
            "script": {"type": "audio", "audio_url": "https://x.test/a.wav", "subtitles": "true"},
            "config": {"fluent": "true", "pad_audio": "1.5", "result_format": "mov"},
            "user_data": "job-1",
            "webhook": ""
        });
        let v = create_talk(&body, Options::default()).unwrap();
        assert!(v.subtitles);
        assert_eq!(v.pad_audio, 1.5);
        assert_eq!(v.config["fluent"], true);
        assert_eq!(v.config["result_format"], ".mov");
        assert_eq!(v.config["sharpen"], true);
        assert_eq!(v.source_url, DEFAULT_SOURCE_URL);
        assert_eq!(v.webhook, None);
        assert_eq!(v.user_data.as_deref(), Some("job-1"));
    }

    #[test]
    fn unknown_fields_are_ignored_unless_strict() {
        let body =
            json!({"script": {"type": "text", "input": "hello"}, "driver_url": "bank://lively"});
        assert!(create_talk(&body, Options::default()).is_ok());
        let strict = Options {
            strict_fields: true,
            ..Options::default()
        };
        assert!(create_talk(&body, strict).is_err());
    }
}
