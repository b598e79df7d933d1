//! Uploads to D-ID's temporary storage: what may be uploaded, and how its type is known.
//!
//! The type of a file is decided by its first bytes ([`MediaType::sniff`]), never by the
//! client's `Content-Type` header or file name: the original service trusted the header and
//! sent every image as `image/jpeg`.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::talk::is_safe_id;

/// Which of D-ID's two upload routes a file goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadKind {
    /// `POST /images`: JPEG or PNG, at most 10 MiB.
    Image,
    /// `POST /audios`: audio (or video) files, at most 6 MiB.
    Audio,
}

impl UploadKind {
    /// The largest accepted file, in bytes (D-ID: images 10 MB, audio 6 MB).
    pub fn max_bytes(self) -> usize {
        match self {
            UploadKind::Image => 10 * 1024 * 1024,
            UploadKind::Audio => 6 * 1024 * 1024,
        }
    }

    /// The multipart field D-ID expects (`image` / `audio`).
    pub fn field_name(self) -> &'static str {
        match self {
            UploadKind::Image => "image",
            UploadKind::Audio => "audio",
        }
    }

    /// Whether a file of `media` type may be uploaded as this kind.
    pub fn accepts(self, media: MediaType) -> bool {
        match self {
            UploadKind::Image => matches!(media, MediaType::Jpeg | MediaType::Png),
            UploadKind::Audio => !matches!(media, MediaType::Jpeg | MediaType::Png),
        }
    }

    /// The name used when the caller gave none.
    fn default_stem(self) -> &'static str {
        match self {
            UploadKind::Image => "image",
            UploadKind::Audio => "audio",
        }
    }
}

impl fmt::Display for UploadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field_name())
    }
}

/// A file type recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaType {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (`89 50 4E 47 0D 0A 1A 0A`).
    Png,
    /// WAV (`RIFF....WAVE`).
    Wav,
    /// MP3 (`ID3` tag or an MPEG audio frame sync).
    Mp3,
    /// FLAC (`fLaC`).
    Flac,
    /// Ogg (`OggS`).
    Ogg,
    /// MPEG-4 audio (`ftyp` box with an `M4A ` brand).
    M4a,
    /// MPEG-4 video (any other `ftyp` box).
    Mp4,
}

impl MediaType {
    /// Recognises the type from the first bytes of a file, or `None`.
    pub fn sniff(data: &[u8]) -> Option<MediaType> {
        let starts = |magic: &[u8]| data.starts_with(magic);
        if starts(&[0xFF, 0xD8, 0xFF]) {
            Some(MediaType::Jpeg)
        } else if starts(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
            Some(MediaType::Png)
        } else if starts(b"RIFF") && data.get(8..12) == Some(b"WAVE") {
            Some(MediaType::Wav)
        } else if starts(b"fLaC") {
            Some(MediaType::Flac)
        } else if starts(b"OggS") {
            Some(MediaType::Ogg)
        } else if data.get(4..8) == Some(b"ftyp") {
            match data.get(8..12) {
                Some(b"M4A ") => Some(MediaType::M4a),
                Some(_) => Some(MediaType::Mp4),
                None => None,
            }
        } else if starts(b"ID3") || (data.len() >= 2 && data[0] == 0xFF && data[1] & 0xE0 == 0xE0) {
            Some(MediaType::Mp3)
        } else {
            None
        }
    }

    /// The MIME type to send upstream.
    pub fn mime(self) -> &'static str {
        match self {
            MediaType::Jpeg => "image/jpeg",
            MediaType::Png => "image/png",
            MediaType::Wav => "audio/wav",
            MediaType::Mp3 => "audio/mpeg",
            MediaType::Flac => "audio/flac",
            MediaType::Ogg => "audio/ogg",
            MediaType::M4a => "audio/mp4",
            MediaType::Mp4 => "video/mp4",
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            MediaType::Jpeg => "jpg",
            MediaType::Png => "png",
            MediaType::Wav => "wav",
            MediaType::Mp3 => "mp3",
            MediaType::Flac => "flac",
            MediaType::Ogg => "ogg",
            MediaType::M4a => "m4a",
            MediaType::Mp4 => "mp4",
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime())
    }
}

/// Why a file cannot be uploaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// The file has no bytes.
    #[error("the {kind} file is empty")]
    Empty {
        /// The intended upload kind.
        kind: UploadKind,
    },
    /// The file is larger than D-ID accepts.
    #[error("the {kind} file is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// The intended upload kind.
        kind: UploadKind,
        /// The file's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The content is not of a type this kind accepts.
    #[error("the file is not a supported {kind}: {}", describe(*.detected))]
    UnsupportedType {
        /// The intended upload kind.
        kind: UploadKind,
        /// What the content looks like, if recognised.
        detected: Option<MediaType>,
    },
}

fn describe(detected: Option<MediaType>) -> String {
    match detected {
        Some(m) => format!("content looks like {m}"),
        None => "content type not recognised".to_owned(),
    }
}

/// A file ready to upload: size checked, type sniffed from its content, name sanitised.
#[derive(Clone, PartialEq, Eq)]
pub struct Upload {
    kind: UploadKind,
    media_type: MediaType,
    filename: String,
    data: Bytes,
}

impl fmt::Debug for Upload {
    // The bytes are left out: a 10 MiB file in a log line helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("kind", &self.kind)
            .field("media_type", &self.media_type)
            .field("filename", &self.filename)
            .field("len", &self.data.len())
            .finish()
    }
}

impl Upload {
    /// Checks `data` for `kind` and derives a safe file name from `filename` (D-ID allows
    /// 1..=50 characters of `[A-Za-z0-9._-]`; others are dropped, and the extension is made to
    /// match the detected type).
    pub fn new(kind: UploadKind, filename: Option<&str>, data: Bytes) -> Result<Self, UploadError> {
        if data.is_empty() {
            return Err(UploadError::Empty { kind });
        }
        if data.len() > kind.max_bytes() {
            return Err(UploadError::TooLarge {
                kind,
                size: data.len(),
                max: kind.max_bytes(),
            });
        }
        let detected = MediaType::sniff(&data);
        let media_type = match detected {
            Some(m) if kind.accepts(m) => m,
            _ => return Err(UploadError::UnsupportedType { kind, detected }),
        };
        Ok(Upload {
            kind,
            media_type,
            filename: sanitize_filename(filename, kind, media_type),
            data,
        })
    }

    /// The upload route.
    pub fn kind(&self) -> UploadKind {
        self.kind
    }
    /// The sniffed type.
    pub fn media_type(&self) -> MediaType {
        self.media_type
    }
    /// The sanitised file name.
    pub fn filename(&self) -> &str {
        &self.filename
    }
    /// The content.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

/// Keeps `[A-Za-z0-9._-]` of the stem, at most 50 characters in all, extension from the type.
fn sanitize_filename(given: Option<&str>, kind: UploadKind, media: MediaType) -> String {
    let ext = media.extension();
    // Only the last path component counts: `../../etc/passwd` is just `passwd`.
    let base = given
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    // The stem is everything before the last dot; a leading dot does not start an extension.
    let stem = match base.rfind('.') {
        Some(i) if i > 0 => &base[..i],
        _ => base,
    };
    let mut clean: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    let clean_trimmed = clean.trim_matches('.');
    if clean_trimmed.is_empty() {
        clean = kind.default_stem().to_owned();
    } else {
        clean = clean_trimmed.to_owned();
    }
    let max_stem = 50 - ext.len() - 1;
    clean.truncate(max_stem);
    format!("{clean}.{ext}")
}

/// The id of an uploaded image (`img_…`) or audio file (21 characters, no prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssetId(String);

impl AssetId {
    /// Validates `s` (1..=64 characters of `[A-Za-z0-9_-]`, safe in a URL path).
    pub fn parse(s: &str) -> Result<AssetId, crate::InvalidTalkId> {
        if is_safe_id(s) {
            Ok(AssetId(s.to_owned()))
        } else {
            Err(crate::InvalidTalkId {
                given: s.chars().take(80).collect(),
            })
        }
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for AssetId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AssetId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        AssetId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An uploaded file: its id (when D-ID gives one) and the `s3://` (or https) URL to pass to
/// `POST /talks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asset {
    /// The upload's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<AssetId>,
    /// Where D-ID stored it.
    pub url: String,
    /// An audio's length in seconds, as D-ID's `POST /audios` answer gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
}

/// Seconds of audio in `bytes`, for a budget's estimate when D-ID gave no duration: exact for
/// a PCM WAV (its header's byte rate and data size); for an MP3, the size (after an ID3v2
/// tag) at the bitrate of its first frame header — exact for constant bitrate, off by the
/// ratio of the first frame's bitrate to the mean for variable bitrate; otherwise the size
/// at 128 kbit/s.
pub fn estimate_audio_seconds(bytes: &[u8]) -> f64 {
    wav_seconds(bytes)
        .or_else(|| mp3_seconds(bytes))
        .unwrap_or_else(|| bytes_at_bitrate(bytes.len(), 128_000))
}

fn bytes_at_bitrate(len: usize, bits_per_second: u32) -> f64 {
    // Uploads are at most a few MiB: exact in f64.
    let len = u32::try_from(len).map_or(f64::from(u32::MAX), f64::from);
    len * 8.0 / f64::from(bits_per_second.max(1))
}

fn wav_seconds(bytes: &[u8]) -> Option<f64> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12usize;
    let mut byte_rate = None;
    while pos.checked_add(8)? <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?);
        let data = pos + 8;
        if id == b"fmt " && data + 12 <= bytes.len() {
            byte_rate = Some(u32::from_le_bytes(
                bytes[data + 8..data + 12].try_into().ok()?,
            ));
        } else if id == b"data" {
            let rate = byte_rate.filter(|r| *r > 0)?;
            let available = u32::try_from(bytes.len() - data).unwrap_or(u32::MAX);
            // A streaming writer may leave the size at 0 or u32::MAX: use what is there.
            let size = if size == 0 || size > available {
                available
            } else {
                size
            };
            return Some(f64::from(size) / f64::from(rate));
        }
        // Chunks are padded to an even size.
        pos = data
            .checked_add(usize::try_from(size).ok()?)?
            .checked_add(size as usize & 1)?;
    }
    None
}

/// MPEG-1 Layer III bitrates in kbit/s by the header's index (0 and 15 are invalid).
const MP3_V1_L3_KBPS: [u32; 16] = [
    0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0,
];
/// MPEG-2 and 2.5 Layer III bitrates in kbit/s.
const MP3_V2_L3_KBPS: [u32; 16] = [
    0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0,
];

fn mp3_seconds(bytes: &[u8]) -> Option<f64> {
    let mut start = 0usize;
    // An ID3v2 tag: "ID3", version, flags, then a 28-bit syncsafe size (of the tag after its
    // 10-byte header, and before the 10-byte footer that v2.4's flag 0x10 announces).
    if bytes.len() >= 10 && &bytes[0..3] == b"ID3" {
        let size = bytes[6..10]
            .iter()
            .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7f));
        let footer = if bytes[5] & 0x10 != 0 { 10 } else { 0 };
        start = 10 + size + footer;
    }
    let h = bytes.get(start..start.checked_add(4)?)?;
    // Frame sync (11 bits), then the version and layer bits: Layer III only.
    if h[0] != 0xff || h[1] & 0xe0 != 0xe0 || (h[1] >> 1) & 0b11 != 0b01 {
        return None;
    }
    let version = (h[1] >> 3) & 0b11; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    let index = usize::from(h[2] >> 4);
    let kbps = match version {
        3 => MP3_V1_L3_KBPS[index],
        0 | 2 => MP3_V2_L3_KBPS[index],
        _ => 0,
    };
    (kbps > 0).then(|| bytes_at_bitrate(bytes.len() - start, kbps * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::media::{jpeg, mp3, png, silent_wav, wav};

    #[test]
    fn audio_lengths_are_read_from_wav_and_mp3_headers() {
        let close = |a: f64, b: f64| (a - b).abs() < 0.01;
        assert!(close(estimate_audio_seconds(&silent_wav(31.5)), 31.5));
        assert!(close(estimate_audio_seconds(wav()), 0.1));
        // Ten 128 kbit/s frames of 417 bytes behind a 10-byte tag: 4170 bytes at 16 000 B/s.
        assert!(close(estimate_audio_seconds(mp3()), 4170.0 / 16_000.0));
        // A v2.4 tag with a footer ("3DI"): the frames start 10 bytes later (missed, the
        // estimate would be the whole size at 128 kbit/s, 0.261875 s, not the frames' 0.260625).
        let mut footed = b"ID3\x04\x00\x10\x00\x00\x00\x003DI\x04\x00\x10\x00\x00\x00\x00".to_vec();
        footed.extend_from_slice(&mp3()[10..]);
        assert!((estimate_audio_seconds(&footed) - 0.260_625).abs() < 1e-9);
        // Anything else: the size at 128 kbit/s.
        assert!(close(estimate_audio_seconds(&[0u8; 32_000]), 2.0));
        assert!(close(
            estimate_audio_seconds(b"RIFF\0\0\0\0WAVE"),
            12.0 / 16_000.0
        ));
    }

    fn check(data: &[u8], expected: Option<MediaType>) {
        assert_eq!(MediaType::sniff(data), expected, "{data:?}");
    }

    #[test]
    fn sniffs_by_magic_bytes() {
        check(jpeg(), Some(MediaType::Jpeg));
        check(png(), Some(MediaType::Png));
        check(wav(), Some(MediaType::Wav));
        check(b"ID3\x04\x00", Some(MediaType::Mp3));
        check(&[0xFF, 0xFB, 0x90, 0x00], Some(MediaType::Mp3));
        check(b"fLaC\x00", Some(MediaType::Flac));
        check(b"OggS\x00", Some(MediaType::Ogg));
        check(b"\x00\x00\x00\x20ftypM4A \x00", Some(MediaType::M4a));
        check(b"\x00\x00\x00\x20ftypisom\x00", Some(MediaType::Mp4));
        check(b"GIF89a", None);
        check(b"<html>", None);
        check(b"", None);
        check(b"RIFF\x00\x00\x00\x00AVI ", None);
    }

    #[test]
    fn uploads_check_kind_size_and_content() {
        let png = Upload::new(
            UploadKind::Image,
            Some("face.jpg"),
            Bytes::from_static(png()),
        )
        .unwrap();
        assert_eq!(png.media_type(), MediaType::Png);
        assert_eq!(png.filename(), "face.png", "extension follows the content");
        assert!(matches!(
            Upload::new(UploadKind::Image, None, Bytes::from_static(wav())),
            Err(UploadError::UnsupportedType {
                detected: Some(MediaType::Wav),
                ..
            })
        ));
        assert!(matches!(
            Upload::new(UploadKind::Audio, None, Bytes::from_static(jpeg())),
            Err(UploadError::UnsupportedType { .. })
        ));
        assert_eq!(
            Upload::new(UploadKind::Audio, None, Bytes::new()),
            Err(UploadError::Empty {
                kind: UploadKind::Audio
            })
        );
        let mut big = wav().to_vec();
        big.resize(UploadKind::Audio.max_bytes() + 1, 0);
        assert!(matches!(
            Upload::new(UploadKind::Audio, None, Bytes::from(big)),
            Err(UploadError::TooLarge { .. })
        ));
    }

    #[test]
    fn file_names_are_sanitised() {
        let name = |given: Option<&str>| {
            Upload::new(UploadKind::Audio, given, Bytes::from_static(wav()))
                .unwrap()
                .filename()
                .to_owned()
        };
        assert_eq!(name(None), "audio.wav");
        assert_eq!(name(Some("my voice (1).mp3")), "myvoice1.wav");
        assert_eq!(name(Some("../../etc/passwd")), "passwd.wav");
        assert_eq!(name(Some("日本語.wav")), "audio.wav");
        assert!(name(Some(&"x".repeat(200))).len() <= 50);
    }
}
