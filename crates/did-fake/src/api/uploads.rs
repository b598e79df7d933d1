//! `POST /images`, `POST /audios`, `DELETE /images/{id}`, `DELETE /audios/{id}`: the temporary
//! upload store, parsed with multer.

use std::time::Instant;

use http::StatusCode;
use hyper::body::Incoming;
use serde_json::json;

use super::{Resp, errors};
use crate::state::{Shared, UploadRecord, lock};
use crate::util::{audio_duration, sanitize_filename};

const IMAGE_LIMIT: u64 = 10 * 1024 * 1024;
const AUDIO_LIMIT: u64 = 6 * 1024 * 1024;

/// Which kind of upload a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Image,
    Audio,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Audio => "audio",
        }
    }

    fn limit(self) -> u64 {
        match self {
            Self::Image => IMAGE_LIMIT,
            Self::Audio => AUDIO_LIMIT,
        }
    }

    fn invalid(self) -> Resp {
        let description = match self {
            Self::Image => "invalid image",
            Self::Audio => "invalid audio",
        };
        errors::did(StatusCode::BAD_REQUEST, "BadRequestError", description)
    }

    fn too_large(self) -> Resp {
        let description = match self {
            Self::Image => "image size exceeds the limit of 10MB",
            Self::Audio => "audio size exceeds the limit of 6MB",
        };
        errors::did(StatusCode::BAD_REQUEST, "InvalidFileSizeError", description)
    }

    /// The part's content type is acceptable. D-ID documents `image/jpeg` and `image/png`;
    /// the common misspelling `image/jpg` is accepted too, as the clients that send it work.
    fn accepts(self, mime: &str) -> bool {
        match self {
            Self::Image => matches!(mime, "image/jpeg" | "image/png" | "image/jpg"),
            Self::Audio => mime.starts_with("audio/") || mime.starts_with("video/"),
        }
    }

    fn unsupported(self, received: &str) -> Resp {
        let supported = match self {
            Self::Image => json!(["image/jpeg", "image/png"]),
            Self::Audio => json!(["audio/*", "video/*"]),
        };
        errors::did_details(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMimeTypeError",
            "The provided mime type is not supported",
            json!({ "received": received, "supported": supported }),
        )
    }
}

/// The file part of an upload request.
struct Part {
    bytes: bytes::Bytes,
    file_name: Option<String>,
    detect_faces: bool,
}

/// `POST /images` and `POST /audios`.
pub(crate) async fn upload(
    shared: &Shared,
    user: &str,
    kind: Kind,
    req: http::Request<Incoming>,
) -> Resp {
    // Uploads are free but need a funded account, as D-ID's 402 on these routes says.
    {
        let mut store = lock(&shared.store);
        if store.account(user, shared.config.credits).remaining <= 0 {
            return errors::not_enough_credits();
        }
    }
    let part = match read_part(kind, req).await {
        Ok(part) => part,
        Err(resp) => return resp,
    };
    let id = match kind {
        Kind::Image => format!("img_{}", shared.nanoid()),
        Kind::Audio => shared.nanoid(),
    };
    let name = part
        .file_name
        .as_deref()
        .map(sanitize_filename)
        .filter(|n| !n.is_empty());
    let record = UploadRecord {
        user_id: user.to_owned(),
        uploaded: Instant::now(),
        duration: if kind == Kind::Audio {
            audio_duration(&part.bytes)
        } else {
            0.0
        },
    };
    let body = match kind {
        Kind::Image => {
            let file = name.unwrap_or_else(|| "image.jpg".to_owned());
            let mut body = json!({
                "id": id,
                "url": format!("s3://d-id-images-prod/{user}/{id}/{file}"),
            });
            if part.detect_faces {
                body["faces"] = json!([{
                    "size": 512,
                    "top_left": [98, 119],
                    "overlap": "NO",
                    "face_id": "0",
                    "detect_confidence": 0.9998300075531006,
                    "detection": { "top": 198, "left": 224, "bottom": 553, "right": 484 }
                }]);
            }
            body
        }
        Kind::Audio => {
            // D-ID stores audio as 16 kHz WAV, so the url keeps the stem with a `.wav` suffix.
            let stem = name
                .as_deref()
                .map(|n| n.rsplit_once('.').map_or(n, |(stem, _)| stem).to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "audio".to_owned());
            json!({
                "url": format!("s3://d-id-audios-prod/{user}/{id}/{stem}.wav"),
                "id": id,
                "duration": record.duration,
                "moderation_metadata": {},
            })
        }
    };
    let mut store = lock(&shared.store);
    match kind {
        Kind::Image => store.images.insert(id, record),
        Kind::Audio => store.audios.insert(id, record),
    };
    errors::json(StatusCode::CREATED, &body)
}

async fn read_part(kind: Kind, req: http::Request<Incoming>) -> Result<Part, Resp> {
    let boundary = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| kind.invalid())?;
    let limits = multer::SizeLimit::new()
        .whole_stream(kind.limit() + 1024 * 1024)
        .per_field(kind.limit());
    let stream = http_body_util::BodyExt::into_data_stream(req.into_body());
    let mut mp = multer::Multipart::with_constraints(
        stream,
        boundary,
        multer::Constraints::new().size_limit(limits),
    );
    let mut file = None;
    let mut detect_faces = false;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multer_error(kind, &e)),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == kind.field() && file.is_none() {
            let mime = field.content_type().map_or_else(
                || "application/octet-stream".to_owned(),
                |m| m.essence_str().to_owned(),
            );
            if !kind.accepts(&mime) {
                return Err(kind.unsupported(&mime));
            }
            let file_name = field.file_name().map(str::to_owned);
            let bytes = field.bytes().await.map_err(|e| multer_error(kind, &e))?;
            file = Some((bytes, file_name));
        } else if name == "detect_faces" {
            let text = field.text().await.map_err(|e| multer_error(kind, &e))?;
            detect_faces = text.trim() == "true";
        } else {
            // Other documented parts (metadata, source_url, result_url, persist) are accepted
            // and ignored.
            field.bytes().await.map_err(|e| multer_error(kind, &e))?;
        }
    }
    match file {
        Some((bytes, file_name)) if !bytes.is_empty() => Ok(Part {
            bytes,
            file_name,
            detect_faces,
        }),
        _ => Err(kind.invalid()),
    }
}

fn multer_error(kind: Kind, e: &multer::Error) -> Resp {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            kind.too_large()
        }
        _ => kind.invalid(),
    }
}

/// `DELETE /images/{id}` and `DELETE /audios/{id}`: 204, or 404 for an unknown id or another
/// user's upload.
pub(crate) fn delete(shared: &Shared, user: &str, kind: Kind, id: &str) -> Resp {
    let mut store = lock(&shared.store);
    let map = match kind {
        Kind::Image => &mut store.images,
        Kind::Audio => &mut store.audios,
    };
    if map.get(id).is_some_and(|u| u.user_id == user) {
        map.remove(id);
        errors::empty(StatusCode::NO_CONTENT)
    } else {
        let description = match kind {
            Kind::Image => "image not found",
            Kind::Audio => "audio not found",
        };
        errors::did(StatusCode::NOT_FOUND, "NotFoundError", description)
    }
}

/// What an `s3://` url in a talk request refers to.
#[derive(Clone, Debug)]
pub(crate) enum Lookup {
    /// Not a url of the upload store (e.g. a public `https` url).
    NotAnUpload,
    /// An upload url whose upload does not exist, was deleted or expired.
    Missing,
    /// A live upload.
    Found(UploadRecord),
}

/// Looks up the upload an `s3://d-id-<kind>s-prod/<user>/<id>/<file>` url names.
pub(crate) fn lookup(shared: &Shared, kind: Kind, url: &str) -> Lookup {
    let prefix = match kind {
        Kind::Image => "s3://d-id-images-prod/",
        Kind::Audio => "s3://d-id-audios-prod/",
    };
    let Some(rest) = url.strip_prefix(prefix) else {
        return Lookup::NotAnUpload;
    };
    let Some(id) = rest.split('/').nth(1) else {
        return Lookup::Missing;
    };
    let store = lock(&shared.store);
    let map = match kind {
        Kind::Image => &store.images,
        Kind::Audio => &store.audios,
    };
    match map.get(id) {
        Some(record) if record.uploaded.elapsed() < shared.config.upload_ttl => {
            Lookup::Found(record.clone())
        }
        _ => Lookup::Missing,
    }
}
