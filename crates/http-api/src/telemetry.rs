//! Logging: a `tracing` subscriber in human or JSON form, filtered by `RUST_LOG`, and the
//! [`Scrubber`] that keeps the configured secrets out of every log line and response.
//!
//! Every line written while a request is served carries the request span's fields
//! (`request_id`, `method`, `path`): as a `request{…}:` prefix in human form, as a `span`
//! object in JSON. Secrets never reach a field on purpose (the configuration prints them as
//! set/unset), but text from outside (an upstream error that echoes our `Authorization`
//! header, a client that puts the token in a path) can carry them; so [`init`] writes through
//! [`Redacting`], which replaces them with `[redacted]` in each line before it is written.
//!
//! Human logs are coloured only when stderr is a terminal and `NO_COLOR` is unset
//! ([`use_ansi`]); a log file or pipe never gets escape codes.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::Response;
use http_body_util::BodyExt as _;
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Config, LogFormat};
use crate::error::Body;
use crate::traces::{TraceSetup, Traces};

/// The default filter when `RUST_LOG` is unset (declared with the other settings).
pub const DEFAULT_FILTER: &str = crate::config::DEFAULT_LOG_FILTER;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Replaces the configured secrets in text that leaves the service: the D-ID key (raw, as
/// `AuthScheme::Literal` sends it, and base64-encoded, as `AuthScheme::Rfc7617` does), the
/// secret part of D-ID's `user:secret` key on its own, and the bearer token, each also in
/// its JSON-escaped form. Cheap to clone; `Debug` shows only how many patterns it has.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so a secret inside a longer one is not half replaced.
    needles: Arc<[Box<[u8]>]>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} patterns)", self.needles.len())
    }
}

/// Parts of a secret shorter than this are not scrubbed on their own (they would mangle
/// ordinary text); the whole secret always is.
const MIN_PART_LEN: usize = 8;

impl Scrubber {
    /// A scrubber for the D-ID key and the bearer token, either of which may be unset.
    pub fn new(did_api_key: Option<&SecretString>, api_token: Option<&SecretString>) -> Scrubber {
        let mut raw: Vec<String> = Vec::new();
        if let Some(key) = did_api_key {
            let key = key.expose_secret();
            raw.push(key.to_owned());
            raw.push(base64::engine::general_purpose::STANDARD.encode(key));
            if let Some((_, secret)) = key.rsplit_once(':')
                && secret.len() >= MIN_PART_LEN
            {
                raw.push(secret.to_owned());
            }
        }
        if let Some(token) = api_token {
            raw.push(token.expose_secret().to_owned());
        }
        Scrubber::of(raw)
    }

    /// This scrubber plus the Redis URL (whole) and its passwords (on their own, as written
    /// and percent-decoded, when at least 8 characters long: a shorter one is replaced only
    /// inside the URL, as it would mangle ordinary text): the one in the user info and a
    /// Sentinel URL's `sentinelPassword=` query parameter.
    pub fn with_redis_url(self, redis_url: Option<&SecretString>) -> Scrubber {
        let Some(url) = redis_url else {
            return self;
        };
        let url = url.expose_secret();
        let mut raw = vec![url.to_owned()];
        if let Ok(parsed) = url::Url::parse(url) {
            if let Some(password) = parsed.password() {
                let decoded = percent_encoding::percent_decode_str(password)
                    .decode_utf8_lossy()
                    .into_owned();
                for p in [password.to_owned(), decoded] {
                    if p.len() >= MIN_PART_LEN {
                        raw.push(p);
                    }
                }
            }
            let pairs = parsed.query().unwrap_or("").split('&');
            for (key, value) in pairs.filter_map(|pair| pair.split_once('=')) {
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(&s.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned()
                };
                if decode(key).eq_ignore_ascii_case("sentinelPassword") {
                    for p in [value.to_owned(), decode(value)] {
                        if p.len() >= MIN_PART_LEN {
                            raw.push(p);
                        }
                    }
                }
            }
        }
        let mut needles: Vec<Box<[u8]>> = self.needles.iter().cloned().collect();
        needles.extend(Scrubber::of(raw).needles.iter().cloned());
        Scrubber::sorted(needles)
    }

    /// This scrubber plus the values of the OTLP exporter's headers
    /// (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TRACES_HEADERS`: `key=value,…`,
    /// which carry a vendor's API key), as written and percent-decoded, when at least 8
    /// characters long. `var` reads the environment.
    pub fn with_otlp_headers(self, var: impl Fn(&str) -> Option<String>) -> Scrubber {
        let mut raw = Vec::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            let Some(list) = var(name) else { continue };
            for (_, value) in list.split(',').filter_map(|pair| pair.split_once('=')) {
                let value = value.trim();
                let decoded = percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned();
                for v in [value.to_owned(), decoded] {
                    if v.len() >= MIN_PART_LEN {
                        raw.push(v);
                    }
                }
            }
        }
        if raw.is_empty() {
            return self;
        }
        let mut needles: Vec<Box<[u8]>> = self.needles.iter().cloned().collect();
        needles.extend(Scrubber::of(raw).needles.iter().cloned());
        Scrubber::sorted(needles)
    }

    /// The needles for `raw` secrets, each also JSON-escaped.
    fn of(raw: Vec<String>) -> Scrubber {
        let mut needles: Vec<Box<[u8]>> = Vec::new();
        for s in raw.into_iter().filter(|s| !s.is_empty()) {
            // In a JSON log line or body, `"` and `\` in a secret appear escaped.
            let escaped = serde_json::to_string(&s).unwrap_or_default();
            let escaped = escaped
                .strip_prefix('"')
                .and_then(|e| e.strip_suffix('"'))
                .unwrap_or_default();
            if escaped != s && !escaped.is_empty() {
                needles.push(escaped.as_bytes().into());
            }
            needles.push(s.into_bytes().into());
        }
        Scrubber::sorted(needles)
    }

    fn sorted(mut needles: Vec<Box<[u8]>>) -> Scrubber {
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Scrubber {
            needles: needles.into(),
        }
    }

    /// The scrubber for a configuration's secrets.
    pub fn from_config(config: &Config) -> Scrubber {
        Scrubber::new(config.did_api_key.as_ref(), config.http_api_token.as_ref())
            .with_redis_url(config.redis_url.as_ref())
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `bytes` with every secret replaced by [`REDACTED`]; borrowed when there was none.
    pub fn scrub_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Option<Vec<u8>> = None;
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let hit = self
                .needles
                .iter()
                .find(|n| bytes[i..].starts_with(n))
                .map(|n| n.len());
            match hit {
                Some(len) => {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
                    o.extend_from_slice(&bytes[start..i]);
                    o.extend_from_slice(REDACTED.as_bytes());
                    i += len;
                    start = i;
                }
                None => i += 1,
            }
        }
        match out {
            None => Cow::Borrowed(bytes),
            Some(mut o) => {
                o.extend_from_slice(&bytes[start..]);
                Cow::Owned(o)
            }
        }
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Whole UTF-8 substrings were replaced by ASCII, so this is still UTF-8.
            Cow::Owned(o) => Cow::Owned(String::from_utf8_lossy(&o).into_owned()),
        }
    }
}

impl Scrubber {
    /// `resp` with every secret in its body replaced by [`REDACTED`]. The service's bodies
    /// are complete in memory ([`Body`] is `Full`), so this reads the body without waiting.
    /// Text that reaches a response from outside (an upstream description or talk field that
    /// echoes our `Authorization` header, a client's own path) is caught here, once, for
    /// every route and error.
    pub fn scrub_response(&self, resp: Response<Body>) -> Response<Body> {
        if self.is_empty() {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let bytes = match body.collect().now_or_never() {
            Some(Ok(collected)) => collected.to_bytes(),
            // `Full` is always ready and cannot fail; were it ever not, an empty body is
            // safer than one that was not checked.
            _ => Bytes::new(),
        };
        let bytes = match self.scrub_bytes(&bytes) {
            Cow::Borrowed(_) => bytes,
            Cow::Owned(o) => Bytes::from(o),
        };
        Response::from_parts(parts, Body::new(bytes))
    }
}

/// A [`MakeWriter`] that scrubs each log line before the inner writer sees it.
#[derive(Debug, Clone)]
pub struct Redacting<M> {
    inner: M,
    scrubber: Scrubber,
}

impl<M> Redacting<M> {
    /// Wraps `inner`.
    pub fn new(inner: M, scrubber: Scrubber) -> Redacting<M> {
        Redacting { inner, scrubber }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
            scrubber: &self.scrubber,
            line: Vec::new(),
        }
    }
}

/// The writer of one event: whole lines are scrubbed and passed on, so a secret split
/// across two `write` calls is still found; the rest is passed on when dropped.
pub struct RedactingWriter<'a, W: Write> {
    inner: W,
    scrubber: &'a Scrubber,
    line: Vec<u8>,
}

impl<W: Write> RedactingWriter<'_, W> {
    fn pass_on(&mut self, upto: usize) -> io::Result<()> {
        let rest = self.line.split_off(upto);
        let done = std::mem::replace(&mut self.line, rest);
        self.inner.write_all(&self.scrubber.scrub_bytes(&done))
    }
}

impl<W: Write> Write for RedactingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        if let Some(nl) = self.line.iter().rposition(|b| *b == b'\n') {
            self.pass_on(nl + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<'_, W> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            let _ = self.pass_on(self.line.len());
        }
        let _ = self.inner.flush();
    }
}

/// Whether human logs get ANSI colours: only on a terminal, and never when `NO_COLOR` is
/// set to a non-empty value (<https://no-color.org>).
pub fn use_ansi(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// Installs the global subscriber writing to stderr through [`Redacting`] with `scrubber`,
/// and the span exporter `traces` asks for (see [`crate::traces`]). Returns an error if a
/// subscriber is installed.
pub fn init(
    format: LogFormat,
    scrubber: Scrubber,
    traces: TraceSetup,
) -> Result<Traces, tracing_subscriber::util::TryInitError> {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let no_color = std::env::var("NO_COLOR").ok();
    let ansi = use_ansi(io::stderr().is_terminal(), no_color.as_deref());
    install(
        format,
        filter,
        Redacting::new(io::stderr, scrubber),
        ansi,
        traces,
    )
}

/// Installs the global subscriber with an explicit filter and writer (tests capture logs),
/// without colours. Wrap `writer` in [`Redacting`] to scrub secrets.
pub fn init_with<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install(
        format,
        filter,
        writer,
        false,
        TraceSetup::Off("not asked for"),
    )
    .map(drop)
}

/// The subscriber: the span exporter (its own filter: talkgate's spans) beside the log
/// layer (filtered by `RUST_LOG`), so a quiet log still exports every span.
fn install<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
    traces: TraceSetup,
) -> Result<Traces, tracing_subscriber::util::TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (exporter, traces) = crate::traces::layer::<tracing_subscriber::Registry>(traces);
    let registry = tracing_subscriber::registry().with(exporter);
    match format {
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer)
                    .with_filter(filter),
            )
            .try_init(),
    }?;
    crate::traces::activate(&traces);
    Ok(traces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        fn check(is_terminal: bool, no_color: Option<&str>, expected: bool) {
            assert_eq!(
                use_ansi(is_terminal, no_color),
                expected,
                "{is_terminal} {no_color:?}"
            );
        }
        check(true, None, true);
        check(true, Some(""), true);
        check(true, Some("1"), false);
        check(true, Some("yes"), false);
        check(false, None, false);
        check(false, Some(""), false);
        check(false, Some("1"), false);
    }

    const KEY: &str = "dXNlckBleGFtcGxlLmNvbQ:S3cr3t-Key-Part";
    const TOKEN: &str = "tok\"en-Secret-99";

    fn scrubber() -> Scrubber {
        Scrubber::new(
            Some(&SecretString::from(KEY)),
            Some(&SecretString::from(TOKEN)),
        )
    }

    #[test]
    fn the_redis_url_and_its_password_are_redacted() {
        let url = SecretString::from("redis://:p%40ssw0rd-long@10.0.0.5:6379/0");
        let s = scrubber().with_redis_url(Some(&url));
        let check = |input: &str, expected: &str| assert_eq!(s.scrub(input), expected);
        check(
            "connecting to redis://:p%40ssw0rd-long@10.0.0.5:6379/0",
            "connecting to [redacted]",
        );
        check("auth p@ssw0rd-long refused", "auth [redacted] refused");
        check("auth p%40ssw0rd-long refused", "auth [redacted] refused");
        // The other secrets are still there.
        check(&format!("Bearer {TOKEN}"), "Bearer [redacted]");
        // A short password is replaced inside the URL only.
        let short = SecretString::from("redis://:pw@h:6379");
        let s = Scrubber::default().with_redis_url(Some(&short));
        check_with(&s, "at redis://:pw@h:6379 (pw)", "at [redacted] (pw)");
        assert!(Scrubber::default().with_redis_url(None).is_empty());
    }

    #[test]
    fn a_sentinel_password_in_the_query_is_redacted() {
        let url = SecretString::from(
            "redis-sentinel://s1:26379/0?sentinelServiceName=main&sentinelPassword=s3nt%21nel-pw",
        );
        let s = Scrubber::default().with_redis_url(Some(&url));
        check_with(&s, "sentinel auth s3nt!nel-pw", "sentinel auth [redacted]");
        check_with(
            &s,
            "sentinel auth s3nt%21nel-pw",
            "sentinel auth [redacted]",
        );
        check_with(
            &s,
            "sentinel redis-sentinel://s1:26379/0?sentinelServiceName=main&sentinelPassword=s3nt%21nel-pw",
            "sentinel [redacted]",
        );
    }

    fn check_with(s: &Scrubber, input: &str, expected: &str) {
        assert_eq!(s.scrub(input), expected);
    }

    #[test]
    fn every_form_of_the_secrets_is_redacted() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
        let s = scrubber();
        let check = |input: String, expected: &str| assert_eq!(s.scrub(&input), expected);
        check(format!("auth: Basic {b64}"), "auth: Basic [redacted]");
        check(format!("Basic {KEY}!"), "Basic [redacted]!");
        check("only S3cr3t-Key-Part".into(), "only [redacted]");
        check(format!("Bearer {TOKEN}"), "Bearer [redacted]");
        check(
            r#"{"t":"tok\"en-Secret-99"}"#.into(),
            r#"{"t":"[redacted]"}"#,
        );
        check("nothing secret here".into(), "nothing secret here");
        assert!(matches!(s.scrub("plain"), Cow::Borrowed(_)));
        assert!(Scrubber::default().is_empty());
        assert!(!format!("{s:?}").contains("S3cr3t"));
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_redacting_writer_scrubs_secrets_split_across_writes() {
        let buf = Buf::default();
        let inner = buf.clone();
        let make = Redacting::new(move || inner.clone(), scrubber());
        {
            let mut w = make.make_writer();
            w.write_all(b"first S3cr3t-").unwrap();
            w.write_all(b"Key-Part line\nsecond ").unwrap();
            w.write_all(TOKEN.as_bytes()).unwrap();
        }
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out, "first [redacted] line\nsecond [redacted]");
    }

    /// The only test in this binary that installs the global subscriber.
    #[test]
    fn init_with_to_a_buffer_writes_human_logs_without_escape_codes() {
        let buf = Buf::default();
        let writer = buf.clone();
        init_with(LogFormat::Human, EnvFilter::new("info"), move || {
            writer.clone()
        })
        .unwrap();
        let span = tracing::info_span!("request", request_id = "r1");
        span.in_scope(|| tracing::warn!(field = 7, "a warning"));
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("a warning"), "{out}");
        assert!(!out.contains("\x1b["), "{out:?}");
    }
}
