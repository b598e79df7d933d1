//! Reading request bodies: JSON and multipart uploads, always through a size limit.
//!
//! Every body is wrapped in `http_body_util::Limited` before a byte is buffered, so no
//! request can make the service hold more than its route's limit in memory. Uploads are also
//! bounded per field by multer, and their type is decided by [`domain::Upload::new`] from the
//! content's magic bytes — the client's `Content-Type` and file name are not trusted.
//!
//! Every body is also wrapped, before dispatch, in a [`TimedBody`]: it must arrive whole
//! within `BODY_READ_TIMEOUT_SECS` and may not pause for longer than `BODY_IDLE_TIMEOUT_SECS`,
//! or reading it fails with [`BodyTimeout`], which the readers here turn into a 408.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use domain::{Upload, UploadKind};
use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Frame, SizeHint};
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};

use crate::error::{ApiError, BodyTimeout};

/// A boxed error, as bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that must arrive whole by a deadline and without long pauses.
///
/// Both limits are tokio timers polled next to the inner body, so a stalled client costs
/// no task of its own; the timers only run while someone reads the body (see `server` for
/// bodies nobody reads). Once a limit fired the body reports the error on every later poll.
pub struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
    total: Duration,
    gap: Duration,
    failed: Option<BodyTimeout>,
}

impl<B> TimedBody<B> {
    /// Wraps `inner`: whole within `total` from now, no pause longer than `gap`.
    pub fn new(inner: B, total: Duration, gap: Duration) -> TimedBody<B> {
        let now = Instant::now();
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(now + total)),
            idle: Box::pin(tokio::time::sleep_until(now + gap)),
            total,
            gap,
            failed: None,
        }
    }
}

impl<B> hyper::body::Body for TimedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed {
            return Poll::Ready(Some(Err(Box::new(e))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Progress: the idle gap starts again.
                this.idle.as_mut().reset(Instant::now() + this.gap);
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let fired = if this.deadline.as_mut().poll(cx).is_ready() {
            Some(BodyTimeout::Deadline(this.total))
        } else if this.idle.as_mut().poll(cx).is_ready() {
            Some(BodyTimeout::Idle(this.gap))
        } else {
            None
        };
        match fired {
            Some(e) => {
                this.failed = Some(e);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body-timeout in an error's chain, if that is what it was.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> Option<BodyTimeout> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<BodyTimeout>() {
            return Some(*t);
        }
        cur = err.source();
    }
    None
}

/// Room for multipart headers, boundaries and a `priority` field next to the file.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// The media type of a request (`essence`: lowercase, without parameters).
fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = ct.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// Whether a body-read error was the size limit.
fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether the request declares (`Content-Length`) a body longer than `limit`: it is
/// refused at once, 413, without waiting for bytes that would only be thrown away (a
/// client that declares 10 MB and sends nothing was answered 408 after the idle timeout).
/// A chunked body has no declared length (hyper decodes the chunk framing and does not
/// expose a chunk's size), so it is refused as soon as its bytes pass the limit.
fn declared_too_large(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// Reads a JSON body of at most `limit` bytes into `T`.
///
/// 415 without a JSON content type, 413 over the limit, 400 for malformed JSON, 422 for
/// JSON of the wrong shape.
pub async fn read_json<T, B>(req: Request<B>, limit: usize) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if !is_json(req.headers()) {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        });
    }
    if declared_too_large(req.headers(), limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if let Some(t) = timed_out(e.as_ref()) {
                ApiError::BodyTimeout(t)
            } else if is_too_large(e.as_ref()) {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedJson("the request body could not be read".to_owned())
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::InvalidBody(e.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::MalformedJson(e.to_string())
            }
        }
    })
}

/// Drains a body the route does not read, up to `limit` bytes, so a keep-alive connection
/// stays usable. Errors are ignored: the response does not depend on the body.
pub async fn discard<B>(req: Request<B>, limit: usize)
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let _ = Limited::new(req.into_body(), limit).collect().await;
}

/// An upload form: the checked file, and the `priority` form field if one was sent.
#[derive(Debug)]
pub struct UploadForm {
    /// The file, its type sniffed from its bytes.
    pub upload: Upload,
    /// The `priority` form field, unparsed.
    pub priority: Option<String>,
}

/// Reads a `multipart/form-data` body with a `file` part of `kind` (and optionally a
/// `priority` part). Unknown parts are skipped; only the first `file` part counts.
pub async fn read_upload<B>(req: Request<B>, kind: UploadKind) -> Result<UploadForm, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if media_type(req.headers()).as_deref() != Some("multipart/form-data") {
        return Err(ApiError::UnsupportedMediaType {
            expected: "multipart/form-data",
        });
    }
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| {
            ApiError::MalformedMultipart("the content type has no boundary".to_owned())
        })?;

    let max = kind.max_bytes();
    let whole = max + MULTIPART_OVERHEAD;
    if declared_too_large(req.headers(), whole) {
        return Err(ApiError::PayloadTooLarge { limit: whole });
    }
    let limits = multer::SizeLimit::new()
        .whole_stream(whole as u64)
        .per_field(MULTIPART_OVERHEAD as u64)
        .for_field("file", max as u64)
        .for_field("priority", 64);
    let stream = Limited::new(req.into_body(), whole).into_data_stream();
    let mut multipart = multer::Multipart::with_constraints(
        stream,
        boundary,
        multer::Constraints::new().size_limit(limits),
    );

    let map_err = |e: multer::Error| -> ApiError {
        if let multer::Error::StreamReadFailed(inner) = &e
            && let Some(t) = timed_out(inner.as_ref())
        {
            return ApiError::BodyTimeout(t);
        }
        match e {
            multer::Error::FieldSizeExceeded { field_name, .. }
                if field_name.as_deref() == Some("file") =>
            {
                ApiError::FileTooLarge { kind, max }
            }
            multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
                ApiError::PayloadTooLarge { limit: whole }
            }
            multer::Error::StreamReadFailed(inner) if is_too_large(inner.as_ref()) => {
                ApiError::PayloadTooLarge { limit: whole }
            }
            other => ApiError::MalformedMultipart(other.to_string()),
        }
    };

    let mut file: Option<(Option<String>, Bytes)> = None;
    let mut priority = None;
    while let Some(field) = multipart.next_field().await.map_err(map_err)? {
        match field.name() {
            Some("file") if file.is_none() => {
                let name = field.file_name().map(str::to_owned);
                let data = field.bytes().await.map_err(map_err)?;
                file = Some((name, data));
            }
            Some("priority") if priority.is_none() => {
                priority = Some(field.text().await.map_err(map_err)?);
            }
            // Other parts are skipped (as the original did); `next_field` drains them.
            _ => {}
        }
    }
    let (name, data) = file.ok_or(ApiError::MissingFile)?;
    let upload = Upload::new(kind, name.as_deref(), data)?;
    Ok(UploadForm { upload, priority })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn request(content_type: Option<&str>, body: Vec<u8>) -> Request<Full<Bytes>> {
        let mut b = Request::post("/x");
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    }

    fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, data) in parts {
            out.extend_from_slice(b"--XBOUNDARY\r\n");
            let disp = match filename {
                Some(f) => {
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n")
                }
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
            };
            out.extend_from_slice(disp.as_bytes());
            out.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XBOUNDARY--\r\n");
        out
    }

    const MP: &str = "multipart/form-data; boundary=XBOUNDARY";
    use test_support::media::png;

    async fn upload(ct: Option<&str>, body: Vec<u8>) -> Result<UploadForm, &'static str> {
        read_upload(request(ct, body), UploadKind::Image)
            .await
            .map_err(|e| e.code())
    }

    #[tokio::test]
    async fn json_bodies_are_checked_for_type_size_and_syntax() {
        async fn read(
            ct: Option<&str>,
            body: &str,
            limit: usize,
        ) -> Result<serde_json::Value, &'static str> {
            read_json(request(ct, body.as_bytes().to_vec()), limit)
                .await
                .map_err(|e| e.code())
        }
        assert!(
            read(Some("application/json"), r#"{"a":1}"#, 100)
                .await
                .is_ok()
        );
        assert!(
            read(Some("Application/JSON; charset=utf-8"), "{}", 100)
                .await
                .is_ok()
        );
        assert!(
            read(Some("application/vnd.x+json"), "{}", 100)
                .await
                .is_ok()
        );
        assert_eq!(
            read(Some("text/plain"), "{}", 100).await,
            Err("unsupported_media_type")
        );
        assert_eq!(read(None, "{}", 100).await, Err("unsupported_media_type"));
        assert_eq!(
            read(Some("application/json"), "{", 100).await,
            Err("malformed_json")
        );
        assert_eq!(
            read(Some("application/json"), "[1,", 100).await,
            Err("malformed_json")
        );
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(200));
        assert_eq!(
            read(Some("application/json"), &big, 100).await,
            Err("payload_too_large")
        );
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Need {
            a: u32,
        }
        let r = read_json::<Need, _>(
            request(Some("application/json"), b"{\"b\":1}".to_vec()),
            100,
        )
        .await;
        assert_eq!(r.unwrap_err().code(), "invalid_request");
    }

    #[tokio::test]
    async fn uploads_are_typed_by_content_and_bounded() {
        let ok = upload(
            Some(MP),
            multipart(&[("priority", None, b"high"), ("file", Some("a.gif"), png())]),
        )
        .await
        .unwrap();
        assert_eq!(ok.upload.filename(), "a.png");
        assert_eq!(ok.priority.as_deref(), Some("high"));

        let skipped = upload(
            Some(MP),
            multipart(&[("other", None, b"x"), ("file", None, png())]),
        )
        .await;
        assert!(skipped.is_ok());

        assert_eq!(
            upload(Some("application/json"), b"{}".to_vec())
                .await
                .unwrap_err(),
            "unsupported_media_type"
        );
        assert_eq!(
            upload(Some("multipart/form-data"), vec![])
                .await
                .unwrap_err(),
            "malformed_multipart"
        );
        assert_eq!(
            upload(Some(MP), multipart(&[("priority", None, b"low")]))
                .await
                .unwrap_err(),
            "missing_file"
        );
        assert_eq!(
            upload(Some(MP), multipart(&[("file", Some("e.png"), b"")]))
                .await
                .unwrap_err(),
            "empty_file"
        );
        assert_eq!(
            upload(
                Some(MP),
                multipart(&[("file", Some("x.png"), b"GIF89a...")])
            )
            .await
            .unwrap_err(),
            "unsupported_file_type"
        );
        let mut big = png().to_vec();
        big.resize(UploadKind::Image.max_bytes() + 1, 0);
        assert_eq!(
            upload(Some(MP), multipart(&[("file", Some("b.png"), &big)]))
                .await
                .unwrap_err(),
            "file_too_large"
        );
        assert_eq!(
            upload(Some(MP), b"garbage".to_vec()).await.unwrap_err(),
            "malformed_multipart"
        );
    }
}
