//! `GET /_fake_s3/...`: the fake S3 bucket that `result_url` points at.
//!
//! It checks the url the way S3 checks a SigV2 presigned url: a missing parameter or an
//! expired `Expires` gives `403 AccessDenied`, a tampered path or expiry gives
//! `403 SignatureDoesNotMatch`, both as S3's XML. A valid url gets a tiny MP4 (an `ftyp` box
//! padded with zeros to the configured size).

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;

use super::Resp;
use crate::state::Shared;
use crate::util::{iso_z, now_ms, s3_signature};

/// An MP4 `ftyp` box: enough for a player or `file(1)` to call the bytes an MP4.
const FTYP: &[u8] = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom";

/// `GET /_fake_s3/<bucket>/<user>/<talk>/<file>?AWSAccessKeyId=&Expires=&Signature=`.
pub(crate) fn get(shared: &Shared, path: &str, query: Option<&str>) -> Resp {
    let mut expires = None;
    let mut signature = None;
    let mut key = None;
    for (k, v) in query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "Expires" => expires = v.parse::<u64>().ok(),
            "Signature" => signature = Some(v),
            "AWSAccessKeyId" => key = Some(v),
            _ => {}
        }
    }
    let (Some(expires), Some(signature), Some(_)) = (expires, signature, key) else {
        return xml_error(
            "AccessDenied",
            "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters",
            "",
        );
    };
    let now = now_ms();
    if now / 1000 >= expires {
        let extra = format!(
            "<Expires>{}</Expires><ServerTime>{}</ServerTime>",
            iso_z(expires * 1000),
            iso_z(now)
        );
        return xml_error("AccessDenied", "Request has expired", &extra);
    }
    if s3_signature(shared.s3_secret, path, expires) != signature {
        return xml_error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            "",
        );
    }
    let mut bytes = FTYP.to_vec();
    bytes.resize(shared.config.result_size.max(FTYP.len()), 0);
    let mut resp = http::Response::new(Full::new(Bytes::from(bytes)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    resp
}

fn xml_error(code: &str, message: &str, extra: &str) -> Resp {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         {extra}<RequestId>FAKE0000000000000</RequestId><HostId>fake-s3</HostId></Error>"
    );
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp
}
