//! Small pure helpers: nanoid ids, D-ID's timestamp formats, WAV durations, user ids and the
//! fake S3 signature.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// nanoid's URL-safe alphabet, which D-ID's ids are drawn from.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A 21-character nanoid, as in `tlk_TMj4G1wiEGpQrdNFvrqAk` after its prefix.
pub(crate) fn nanoid(rng: &mut impl Rng) -> String {
    (0..21)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2023-03-22T16:38:49.723Z`: D-ID's `created_at` / `modified_at`.
pub(crate) fn iso_z(ms: u64) -> String {
    format!("{}Z", iso_naive(ms))
}

/// `2023-04-10T08:09:10.622`: D-ID's `started_at`, which has no `Z`.
pub(crate) fn iso_naive(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// The D-ID user id a key maps to: `auth0|` and 24 hex digits, stable for a key.
pub(crate) fn user_id_for_key(key: &str) -> String {
    let a = hash64(&("user-a", key));
    let b = hash64(&("user-b", key));
    format!("auth0|{a:016x}{:08x}", b >> 32)
}

fn hash64(value: &impl Hash) -> u64 {
    // DefaultHasher::new() uses fixed keys, so the value is stable within one build; nothing
    // here is a security boundary.
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The fake S3 signature of a path and expiry under the server's secret. Not cryptographic:
/// it only has to make tampered or re-dated urls fail as S3's would.
pub(crate) fn s3_signature(secret: u64, path: &str, expires: u64) -> String {
    format!("{:016x}", hash64(&(secret, path, expires)))
}

/// Percent-encodes a path segment the way S3 presigned urls show user ids (`|` → `%7C`).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Keeps the characters D-ID allows in upload file names (`[A-Za-z0-9._-]`), at most 50.
pub(crate) fn sanitize_filename(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(50)
        .collect()
}

/// Seconds of audio in `bytes`: exact for a PCM WAV (RIFF) file, otherwise estimated as
/// 128 kbit/s compressed audio.
pub(crate) fn audio_duration(bytes: &[u8]) -> f64 {
    wav_duration(bytes).unwrap_or_else(|| len_f64(bytes.len()) / 16_000.0)
}

fn len_f64(n: usize) -> f64 {
    // Upload sizes are at most a few MiB, far below f64's exact integer range.
    u32::try_from(n).map_or(f64::MAX, f64::from)
}

fn wav_duration(bytes: &[u8]) -> Option<f64> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    let mut byte_rate = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?);
        let data = pos + 8;
        match id {
            b"fmt " if data + 12 <= bytes.len() => {
                byte_rate = Some(u32::from_le_bytes(
                    bytes[data + 8..data + 12].try_into().ok()?,
                ));
            }
            b"data" => {
                let rate = byte_rate.filter(|r| *r > 0)?;
                // A streaming writer may leave the size at 0 or u32::MAX: use what is there.
                let available = u32::try_from(bytes.len() - data).unwrap_or(u32::MAX);
                let size = if size == 0 || size > available {
                    available
                } else {
                    size
                };
                return Some(f64::from(size) / f64::from(rate));
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        pos = data
            .checked_add(usize::try_from(size).ok()?)?
            .checked_add(size as usize & 1)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn timestamps_use_d_id_formats() {
        let check = |ms: u64, z: &str| {
            assert_eq!(iso_z(ms), z);
            assert_eq!(iso_naive(ms), z.trim_end_matches('Z'));
        };
        check(0, "1970-01-01T00:00:00.000Z");
        check(1_679_503_129_723, "2023-03-22T16:38:49.723Z");
        check(1_709_164_800_001, "2024-02-29T00:00:00.001Z");
        check(951_868_799_999, "2000-02-29T23:59:59.999Z");
    }

    #[test]
    fn nanoids_have_21_url_safe_chars() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let id = nanoid(&mut rng);
            assert_eq!(id.len(), 21);
            assert!(id.bytes().all(|b| ALPHABET.contains(&b)), "{id}");
        }
    }

    #[test]
    fn user_ids_are_stable_auth0_subjects() {
        let a = user_id_for_key("u:p");
        assert_eq!(a, user_id_for_key("u:p"));
        assert_ne!(a, user_id_for_key("u:q"));
        let hex = a.strip_prefix("auth0|").unwrap();
        assert_eq!(hex.len(), 24);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn wav_duration_reads_the_header_and_falls_back_to_an_estimate() {
        assert!((audio_duration(&test_support::media::silent_wav(2.5)) - 2.5).abs() < 1e-9);
        assert!((audio_duration(&[0u8; 32_000]) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn filenames_and_segments() {
        assert_eq!(sanitize_filename("my face (1).JPG"), "myface1.JPG");
        assert_eq!(sanitize_filename(&"a".repeat(80)).len(), 50);
        assert_eq!(encode_segment("auth0|abc"), "auth0%7Cabc");
    }
}
