//! The "photo" a simulated inspector takes on site: a small, valid PNG (sky, a building, the
//! ground, in colours that vary per picture) so evidence in the demo is a real image a browser
//! shows, hashed, chunked and signed like any other. Encoded here with stored (uncompressed)
//! deflate blocks: a few dozen lines instead of an image-codec dependency.

/// Encodes a `width`×`height` RGB picture whose colours depend on `seed`.
pub fn png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let hue = |shift: u32| ((seed >> shift) & 0x7f) as u8;
    let sky = [120 + hue(0) / 2, 160 + hue(8) / 3, 230];
    let wall = [150 + hue(16), 90 + hue(24), 60 + hue(32) / 2];
    let ground = [80 + hue(40) / 3, 120 + hue(48) / 3, 60];
    let (w, h) = (width as usize, height as usize);
    let mut raw = Vec::with_capacity((w * 3 + 1) * h);
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            let building = x > w / 4 && x < w * 3 / 4 && y > h / 3;
            let window = building && (x / 6) % 2 == 0 && (y / 8) % 2 == 0 && y < h * 3 / 4;
            let px = if window {
                [230, 230, 190]
            } else if building {
                wall
            } else if y > h * 3 / 4 {
                ground
            } else {
                let fade = (y * 40 / h.max(1)) as u8;
                [sky[0].saturating_sub(fade), sky[1].saturating_sub(fade), sky[2]]
            };
            raw.extend_from_slice(&px);
        }
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of stored deflate blocks (RFC 1950/1951).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(65_535).collect() };
    let last = blocks.len() - 1;
    for (i, b) in blocks.into_iter().enumerate() {
        out.push(u8::from(i == last));
        let len = b.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    let (mut a, mut s) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        s = (s + a) % 65_521;
    }
    out.extend_from_slice(&((s << 16) | a).to_be_bytes());
    out
}

/// CRC-32 (IEEE), as PNG chunks use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_adler_match_known_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let z = zlib_stored(b"Wikipedia");
        assert_eq!(&z[z.len() - 4..], &0x11E6_0398u32.to_be_bytes());
    }

    #[test]
    fn photos_are_well_formed_pngs() {
        let p = png(160, 120, 42);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&p[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(p[16..20].try_into().unwrap()), 160);
        assert_eq!(u32::from_be_bytes(p[20..24].try_into().unwrap()), 120);
        assert_eq!(&p[p.len() - 8..p.len() - 4], b"IEND");
        // Every chunk's CRC checks out.
        let mut at = 8;
        while at < p.len() {
            let len = u32::from_be_bytes(p[at..at + 4].try_into().unwrap()) as usize;
            let crc = u32::from_be_bytes(p[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc32(&p[at + 4..at + 8 + len]), crc);
            at += 12 + len;
        }
        assert_eq!(at, p.len());
        // Raw image: 120 rows of (1 filter byte + 160 RGB pixels), in one stored block.
        assert_eq!(p.len(), 8 + 25 + (12 + 2 + 5 + 120 * 481 + 4) + 12);
        assert_ne!(png(160, 120, 1), png(160, 120, 2), "pictures differ");
    }
}
