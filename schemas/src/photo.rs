//! Metadata removal for citizens' photos (issue 19, DESIGN §4 "Public tips").
//!
//! A phone camera writes where the reporter stood (EXIF GPS), the camera's serial number and
//! often the owner's name into every photo. A public tip must not hand any of that to the office
//! or keep it, so the web role runs each photo of a tip through [`strip_metadata`] *before* it is
//! hashed and stored: the evidence hash, ledger entry and signed receipt then cover exactly the
//! bytes kept. What goes, by type:
//!
//! - JPEG: APP1 segments (EXIF, XMP), APP13 (IPTC / Photoshop), COM (comments), and anything
//!   after the end-of-image marker (trailers some phones append). Everything else, the image data
//!   included, stays byte for byte.
//! - PNG: the `eXIf`, `tEXt`, `iTXt` and `zTXt` chunks (and anything after `IEND`).
//! - WebP: the `EXIF` and `XMP ` chunks, with their flags in `VP8X` cleared.
//!
//! Any other type (GIF, HEIC/HEIF: metadata hidden in structures we do not rewrite) and any
//! photo that does not parse as its type is refused rather than stored with metadata we could
//! not see. JPEG and PNG are parsed with the `img-parts` crate; WebP's flat chunk list is walked
//! here, because `img-parts` parses RIFF lists recursively and a crafted file of nested lists
//! would overflow the stack. Phones' evidence never comes here: it is stored as sent.
//!
//! Everything here takes hostile bytes: no input makes it panic (property-tested below).

use img_parts::Bytes;
use img_parts::jpeg::{Jpeg, markers};
use img_parts::png::Png;

use crate::PayloadError;

/// The photo types a public tip may carry: those whose metadata [`strip_metadata`] removes.
pub const STRIPPABLE_PHOTO_TYPES: &[&str] = &["image/jpeg", "image/png", "image/webp"];

/// A photo with its metadata removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrippedPhoto {
    /// The bytes to hash and keep.
    pub bytes: Vec<u8>,
    /// What was removed, in order (e.g. `exif`, `xmp`, `comment`); empty when there was nothing.
    pub removed: Vec<&'static str>,
}

/// Removes the metadata of a `mime` photo (see the module docs). The error names the field
/// `photo`; the caller renames it to the photo's place in the request (`photos[1]`).
pub fn strip_metadata(mime: &str, bytes: &[u8]) -> Result<StrippedPhoto, PayloadError> {
    let result = match mime {
        "image/jpeg" => strip_jpeg(bytes),
        "image/png" => strip_png(bytes),
        "image/webp" => strip_webp(bytes),
        other => Err(format!(
            "{other} photos cannot be cleaned of their metadata (location, camera); send {}",
            STRIPPABLE_PHOTO_TYPES.join(", ")
        )),
    };
    result.map_err(|reason| PayloadError::new("photo", reason))
}

fn strip_jpeg(b: &[u8]) -> Result<StrippedPhoto, String> {
    let mut jpeg = Jpeg::from_bytes(Bytes::copy_from_slice(b)).map_err(|e| format!("not a readable JPEG: {e}"))?;
    let Some(sos) = jpeg.segments().iter().position(|s| s.marker() == markers::SOS) else {
        return Err("not a complete JPEG: no image data".into());
    };
    let mut removed = Vec::new();
    let mut kept_before_scan = 0usize;
    let mut i = 0usize;
    jpeg.segments_mut().retain(|s| {
        let before_scan = i < sos;
        i += 1;
        let what = match s.marker() {
            markers::APP1 if s.contents().starts_with(b"Exif\0") => "exif",
            markers::APP1 if s.contents().starts_with(b"http://ns.adobe.com/") => "xmp",
            markers::APP1 => "app1",
            markers::APP13 => "iptc",
            markers::COM => "comment",
            _ => {
                if before_scan {
                    kept_before_scan += s.len();
                }
                return true;
            }
        };
        removed.push(what);
        false
    });
    let sos_len = jpeg.segments().iter().find(|s| s.marker() == markers::SOS).map_or(0, |s| s.len());
    let out = jpeg.encoder().bytes();
    // SOI, the kept segments before the scan, the scan's header: then entropy-coded data, in
    // which 0xFF is always followed by 0x00 or a marker, and 0xFFD9 is the end of the image.
    let scan = 2 + kept_before_scan + sos_len;
    let tail = out.get(scan..).ok_or("not a complete JPEG: the scan header is cut short")?;
    let end = tail.windows(2).position(|w| w == [markers::P, markers::EOI]).ok_or("the JPEG is cut short: no end")?;
    let keep = scan + end + 2;
    if keep < out.len() {
        removed.push("trailer");
    }
    Ok(StrippedPhoto { bytes: out[..keep].to_vec(), removed })
}

fn strip_png(b: &[u8]) -> Result<StrippedPhoto, String> {
    let mut png = Png::from_bytes(Bytes::copy_from_slice(b)).map_err(|e| format!("not a readable PNG: {e}"))?;
    let trailer = png.len() < b.len();
    let chunks = png.chunks();
    if chunks.first().map(|c| c.kind()) != Some(*b"IHDR") || chunks.last().map(|c| c.kind()) != Some(*b"IEND") {
        return Err("not a complete PNG: it must start with IHDR and end with IEND".into());
    }
    let mut removed = Vec::new();
    png.chunks_mut().retain(|c| {
        let what = match &c.kind() {
            b"eXIf" => "exif",
            b"tEXt" => "text",
            b"iTXt" => "itxt",
            b"zTXt" => "ztxt",
            _ => return true,
        };
        removed.push(what);
        false
    });
    let out = png.encoder().bytes();
    if trailer {
        removed.push("trailer");
    }
    Ok(StrippedPhoto { bytes: out.to_vec(), removed })
}

/// `VP8X` flag bits announcing EXIF and XMP chunks.
const VP8X_EXIF: u8 = 0x08;
const VP8X_XMP: u8 = 0x04;

fn strip_webp(b: &[u8]) -> Result<StrippedPhoto, String> {
    let truncated = || "the WebP is cut short".to_owned();
    let u32_at = |at: usize| -> Option<usize> {
        let s = b.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    if b.get(..4) != Some(b"RIFF") || b.get(8..12) != Some(b"WEBP") {
        return Err("not a WebP file".into());
    }
    let end = u32_at(4).and_then(|n| n.checked_add(8)).filter(|&e| e <= b.len()).ok_or_else(truncated)?;
    let mut out = Vec::with_capacity(end);
    out.extend_from_slice(&b[..12]);
    let mut removed = Vec::new();
    let mut image = false;
    let mut pos = 12usize;
    while pos < end {
        let id = b.get(pos..pos + 4).ok_or_else(truncated)?;
        let size = u32_at(pos + 4).ok_or_else(truncated)?;
        let next = (pos + 8).checked_add(size).and_then(|n| n.checked_add(size & 1)).ok_or_else(truncated)?;
        let chunk = b.get(pos..next.min(end)).filter(|c| c.len() >= 8 + size).ok_or_else(truncated)?;
        match id {
            b"EXIF" => removed.push("exif"),
            b"XMP " => removed.push("xmp"),
            b"RIFF" | b"LIST" => return Err("a WebP holds no nested lists".into()),
            b"VP8X" => {
                if size < 10 {
                    return Err("the WebP's VP8X chunk is too short".into());
                }
                let at = out.len() + 8;
                out.extend_from_slice(chunk);
                out[at] &= !(VP8X_EXIF | VP8X_XMP);
            }
            _ => {
                image |= matches!(id, b"VP8 " | b"VP8L" | b"ANMF");
                out.extend_from_slice(chunk);
            }
        }
        pos = next;
    }
    if !image {
        return Err("not a complete WebP: no image data".into());
    }
    let len = u32::try_from(out.len() - 8).map_err(|_| truncated())?;
    out[4..8].copy_from_slice(&len.to_le_bytes());
    if end < b.len() {
        removed.push("trailer");
    }
    Ok(StrippedPhoto { bytes: out, removed })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An 8×8 JPEG as a camera library writes it (JFIF, tables, one scan), 327 bytes.
    pub(crate) const JPEG_8X8: &str = "ffd8ffe000104a46494600010100000100010000ffdb0043000a07070807060a0808080b0a0a0b0e18100e0d0d0e1d15161118231f2524221f2221262b372f26293429212230413134393b3e3e3e252e4449433c48373d3e3bffdb0043010a0b0b0e0d0e1c10101c3b2822283b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3bffc00011080008000803012200021101031101ffc4001500010100000000000000000000000000000005ffc4001b10000104030000000000000000000000000031337173b1b2e1ffc4001501010100000000000000000000000000000506ffc4001e110001040203010000000000000000000001020304110061213141f0ffda000c03010002110311003f0086ed9b7732a00116a2934329664c722381b6c0aabe7cd0d7dd50cfffd9";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn segment(marker: u8, contents: &[u8]) -> Vec<u8> {
        let mut s = vec![0xFF, marker];
        s.extend_from_slice(&((contents.len() + 2) as u16).to_be_bytes());
        s.extend_from_slice(contents);
        s
    }

    /// The 8×8 JPEG with an EXIF block holding a GPS position and a camera serial, XMP, IPTC,
    /// a comment, and a trailer after the end of the image.
    pub(crate) fn jpeg_with_metadata() -> Vec<u8> {
        let clean = hex(JPEG_8X8);
        let mut b = clean[..2].to_vec();
        b.extend(segment(0xE1, b"Exif\0\0MM\0*\0\0\0\x08GPS 36.5012N 118.5003E SERIAL JD-CAM-0042"));
        b.extend(segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>Owner Zhang San</x:xmpmeta>"));
        b.extend(segment(0xED, b"Photoshop 3.0\0IPTC by-line Zhang San"));
        b.extend(segment(0xFE, b"taken by Zhang San"));
        b.extend_from_slice(&clean[2..]);
        b.extend_from_slice(b"SEFT trailer Zhang San");
        b
    }

    #[test]
    fn jpeg_metadata_goes_and_the_image_stays_byte_for_byte() {
        let clean = hex(JPEG_8X8);
        let s = strip_metadata("image/jpeg", &jpeg_with_metadata()).unwrap();
        assert_eq!(s.bytes, clean, "exactly the camera library's JPEG again");
        assert_eq!(s.removed, ["exif", "xmp", "iptc", "comment", "trailer"]);
        let again = strip_metadata("image/jpeg", &clean).unwrap();
        assert_eq!((again.bytes, again.removed.len()), (clean, 0), "a clean JPEG is kept as it is");
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in kind.iter().chain(data) {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        c.extend_from_slice(&(!crc).to_be_bytes());
        c
    }

    fn png(with_metadata: bool) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        b.extend(png_chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]));
        if with_metadata {
            b.extend(png_chunk(b"eXIf", b"MM\0*GPS 36.5N"));
            b.extend(png_chunk(b"tEXt", b"Author\0Zhang San"));
            b.extend(png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x/>"));
            b.extend(png_chunk(b"zTXt", b"Comment\0\0x"));
        }
        b.extend(png_chunk(b"IDAT", &[0x78, 0x01, 0x01, 0x02, 0x00, 0xFD, 0xFF, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01]));
        b.extend(png_chunk(b"IEND", &[]));
        b
    }

    #[test]
    fn png_text_and_exif_chunks_go() {
        let s = strip_metadata("image/png", &png(true)).unwrap();
        assert_eq!(s.bytes, png(false));
        assert_eq!(s.removed, ["exif", "text", "itxt", "ztxt"]);
    }

    fn webp(with_metadata: bool) -> Vec<u8> {
        let chunk = |id: &[u8; 4], data: &[u8]| {
            let mut c = id.to_vec();
            c.extend_from_slice(&(data.len() as u32).to_le_bytes());
            c.extend_from_slice(data);
            if data.len() % 2 == 1 {
                c.push(0);
            }
            c
        };
        let flags = if with_metadata { VP8X_EXIF | VP8X_XMP } else { 0 };
        let mut body = b"WEBP".to_vec();
        body.extend(chunk(b"VP8X", &[flags, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        body.extend(chunk(b"VP8L", &[0x2F, 0, 0, 0, 0x10, 0x07, 0x10, 0x11, 0x11, 0x88, 0x88, 0xFE, 0x07, 0x00]));
        if with_metadata {
            body.extend(chunk(b"EXIF", b"MM\0*GPS 36.5N"));
            body.extend(chunk(b"XMP ", b"<x:xmpmeta>Zhang San</x:xmpmeta>"));
        }
        let mut b = b"RIFF".to_vec();
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend(body);
        b
    }

    #[test]
    fn webp_exif_and_xmp_chunks_go_with_their_flags() {
        let s = strip_metadata("image/webp", &webp(true)).unwrap();
        assert_eq!(s.bytes, webp(false));
        assert_eq!(s.removed, ["exif", "xmp"]);
    }

    #[test]
    fn other_types_and_broken_files_are_refused() {
        for (mime, bytes) in [
            ("image/gif", b"GIF89a....".to_vec()),
            ("image/heic", b"\0\0\0\x18ftypheic".to_vec()),
            ("image/jpeg", vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', 0, 0, 0, 0xFF, 0xD9]),
            ("image/png", b"\x89PNG\r\n\x1a\nrest".to_vec()),
            ("image/webp", b"RIFF\x04\0\0\0WEBP".to_vec()),
        ] {
            let e = strip_metadata(mime, &bytes).unwrap_err();
            assert_eq!(e.field, "photo", "{mime}: {e}");
        }
        let mut nested = b"RIFF\0\0\0\0WEBP".to_vec();
        for _ in 0..10_000 {
            nested.extend_from_slice(b"LIST\x04\0\0\0WEBP");
        }
        assert!(strip_metadata("image/webp", &nested).is_err(), "nested lists are refused, not recursed into");
    }

    #[test]
    fn every_truncation_is_refused_or_cleaned_never_a_panic() {
        for (mime, full) in [("image/jpeg", jpeg_with_metadata()), ("image/png", png(true)), ("image/webp", webp(true))]
        {
            for n in 0..full.len() {
                if let Ok(s) = strip_metadata(mime, &full[..n]) {
                    assert!(s.bytes.len() <= n, "{mime} cut at {n} grew");
                }
            }
        }
    }

    /// How long cleaning a phone-sized photo takes next to hashing it (which the server does
    /// anyway): `cargo test -p jiandu-schemas --release -- --ignored --nocapture photo_cost`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn photo_cost() {
        use sha2::Digest;
        let mut b = jpeg_with_metadata();
        let eoi = b.len() - 2 - b"SEFT trailer Zhang San".len();
        b.splice(eoi..eoi, std::iter::repeat_n(0x5Au8, 8 * 1024 * 1024 - b.len()));
        let runs = 20;
        let t = std::time::Instant::now();
        for _ in 0..runs {
            assert_eq!(strip_metadata("image/jpeg", &b).unwrap().removed.len(), 5);
        }
        let strip = t.elapsed() / runs;
        let t = std::time::Instant::now();
        for _ in 0..runs {
            std::hint::black_box(sha2::Sha256::digest(&b));
        }
        let hash = t.elapsed() / runs;
        println!("8 MiB JPEG: strip_metadata {strip:?}, SHA-256 of the same bytes (reference) {hash:?}");
    }

    proptest! {
        #[test]
        fn garbage_after_a_magic_number_never_panics(
            kind in 0usize..3,
            body in proptest::collection::vec(any::<u8>(), 0..600),
            flip in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        ) {
            let (mime, mut b) = match kind {
                0 => ("image/jpeg", jpeg_with_metadata()),
                1 => ("image/png", png(true)),
                _ => ("image/webp", webp(true)),
            };
            let len = b.len();
            for (at, v) in flip {
                b[at % len] = v;
            }
            let _ = strip_metadata(mime, &b);
            let mut g = b[..4.min(len)].to_vec();
            g.extend(body);
            let _ = strip_metadata(mime, &g);
        }
    }
}
