//! Small, valid media files for upload tests, generated once per process: a PNG (real zlib
//! stream and CRCs), the start of a JPEG, a WAV of silence and an MP3 of silent frames.
//!
//! The fixed fixtures ([`png`], [`jpeg`], [`wav`], [`mp3`]) are `&'static [u8]`, so a test can
//! put one in a `Bytes::from_static` or `.to_vec()` it and change the copy; the generators
//! ([`png_of`], [`silent_wav`]) are for tests that need a size or a duration of their own.

use std::sync::OnceLock;

/// A 2×2 RGB PNG, a complete file any decoder reads.
pub fn png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| png_of(2, 2, [200, 120, 40]))
}

/// The start of a JFIF JPEG (SOI, an APP0 `JFIF` segment, EOI): what content sniffing reads,
/// not a picture (nothing in the tests decodes one).
pub fn jpeg() -> &'static [u8] {
    &[
        0xFF, 0xD8, // SOI
        0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, // APP0
        0xFF, 0xD9, // EOI
    ]
}

/// 0.1 s of silence as a WAV file (16 kHz mono 16-bit PCM).
pub fn wav() -> &'static [u8] {
    static WAV: OnceLock<Vec<u8>> = OnceLock::new();
    WAV.get_or_init(|| silent_wav(0.1))
}

/// An MP3 of ten silent MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz, about 0.26 s) behind an
/// empty ID3v2.4 tag.
pub fn mp3() -> &'static [u8] {
    static MP3: OnceLock<Vec<u8>> = OnceLock::new();
    MP3.get_or_init(|| {
        // 144 * 128000 / 44100 = 417 bytes a frame (no padding). An all-zero side info means
        // no main data: every granule decodes to silence.
        const FRAME: usize = 417;
        let mut out = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
        for _ in 0..10 {
            let start = out.len();
            out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x00]);
            out.resize(start + FRAME, 0);
        }
        out
    })
}

/// A `width`×`height` RGB PNG filled with one colour.
pub fn png_of(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    // Raw scanlines: a filter byte (0 = none) then the pixels.
    let scanline: Vec<u8> = std::iter::once(0)
        .chain((0..width).flat_map(|_| rgb))
        .collect();
    let raw = scanline.repeat(height as usize);
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit depth, truecolour, no interlace
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// `seconds` of silence as a WAV file: 16 kHz mono 16-bit PCM, a 44-byte header.
pub fn silent_wav(seconds: f64) -> Vec<u8> {
    const RATE: u32 = 16_000;
    // Truncation to whole samples is intended.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let samples = (seconds.max(0.0) * f64::from(RATE)) as u32;
    let data_len = samples * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.resize(44 + data_len as usize, 0);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).expect("a PNG chunk below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of uncompressed ("stored") deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(usize::from(u16::MAX)).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = u16::try_from(block.len()).expect("blocks are at most 65535 bytes");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::MediaType;

    #[test]
    fn crc_and_adler_match_known_values() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn png_chunks_carry_correct_crcs() {
        let data = png_of(3, 2, [10, 20, 30]);
        let mut pos = 8;
        let mut kinds = Vec::new();
        while pos < data.len() {
            let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            let body = &data[pos + 4..pos + 8 + len];
            let crc = u32::from_be_bytes(data[pos + 8 + len..pos + 12 + len].try_into().unwrap());
            assert_eq!(crc32(body), crc);
            kinds.push(String::from_utf8_lossy(&body[..4]).into_owned());
            pos += 12 + len;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
    }

    #[test]
    fn wav_headers_say_their_duration() {
        let w = silent_wav(0.5);
        assert_eq!((&w[..4], &w[8..12]), (&b"RIFF"[..], &b"WAVE"[..]));
        assert_eq!(w.len(), 44 + 16_000);
        assert_eq!(wav().len(), 44 + 3_200);
    }

    #[test]
    fn every_fixture_is_sniffed_as_what_it_claims() {
        // The service decides by content (domain's sniffer), so a fixture it misreads would
        // make an upload test pass or fail for the wrong reason.
        let check = |data: &[u8], want| assert_eq!(MediaType::sniff(data), Some(want));
        check(png(), MediaType::Png);
        check(jpeg(), MediaType::Jpeg);
        check(wav(), MediaType::Wav);
        check(mp3(), MediaType::Mp3);
    }
}
