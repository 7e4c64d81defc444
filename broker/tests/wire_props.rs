//! Property tests of the MQTT front's packet reader: whatever bytes a stranger sends, the frame
//! splitter, the CONNECT and PUBLISH parsers and rumqttd's codecs (the path every client byte
//! takes in `front.rs`) return an error instead of panicking, and never allocate more than a
//! small multiple of the bytes actually received — a length field announcing 256 MiB must not
//! make the broker reserve 256 MiB.
//!
//! Allocation is measured with a counting global allocator (peak live bytes on this thread while
//! the reader runs). The case count is bounded for CI (`PROPTEST_CASES` overrides it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use jiandu_broker::wire::{self, Version};
use proptest::prelude::*;
use rumqttd::protocol::Protocol;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            let now = l.get() + layout.size();
            l.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated (beyond what was live before) while `f` runs.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, peak.saturating_sub(base))
}

/// The limit the front reads client packets with (`max_packet_bytes` default).
const LIMIT: usize = 300 * 1024;

/// Allowed allocation: a few copies of the input plus a constant for codec bookkeeping.
fn budget(input: usize) -> usize {
    4 * input + 16 * 1024
}

/// What the front does with the bytes of an authenticated connection (`Session::drain_client`).
fn drain(bytes: &[u8], version: Version) {
    let mut buf = BytesMut::from(bytes);
    loop {
        let n = match wire::frame_len(&buf, LIMIT) {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => return,
        };
        let mut frame = buf.split_to(n);
        if !wire::from_client(wire::packet_kind(&frame)) {
            // The front closes the connection here.
            return;
        }
        if wire::packet_kind(&frame) == wire::kind::PUBLISH && wire::parse_publish(&frame, version).is_err() {
            continue;
        }
        let _ = match version {
            Version::V4 => V4.read_mut(&mut frame, LIMIT),
            Version::V5 => V5.read_mut(&mut frame, LIMIT),
        };
    }
}

/// Bytes that look like MQTT: a packet type, a remaining length that may lie, and a body.
fn framed() -> impl Strategy<Value = Vec<u8>> {
    (0u8..=255, 0usize..=4096, proptest::collection::vec(any::<u8>(), 0..2048), any::<bool>()).prop_map(
        |(first, announced, body, honest)| {
            let len = if honest { body.len() } else { announced };
            let mut out = vec![first];
            let mut v = len;
            loop {
                let mut b = (v % 128) as u8;
                v /= 128;
                if v > 0 {
                    b |= 0x80;
                }
                out.push(b);
                if v == 0 {
                    break;
                }
            }
            out.extend_from_slice(&body);
            out
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frame_len_never_panics_and_respects_the_limit(bytes in proptest::collection::vec(any::<u8>(), 0..64), limit in 0usize..1_000_000) {
        match wire::frame_len(&bytes, limit) {
            Ok(Some(n)) => {
                prop_assert!(n <= limit && n <= bytes.len() && n >= 2);
            }
            Ok(None) => {}
            Err(wire::WireError::TooLarge { size, limit: l }) => prop_assert!(size > l),
            Err(_) => {}
        }
    }

    #[test]
    fn connect_parser_on_arbitrary_frames(bytes in framed()) {
        let (_, peak) = peak_allocation(|| {
            // The front hands the first frame to a codec only when it is a CONNECT.
            if let Ok(Some(n)) = wire::frame_len(&bytes, wire::MAX_CONNECT_BYTES)
                && wire::packet_kind(&bytes) == wire::kind::CONNECT
            {
                let frame = &bytes[..n];
                if let Ok(c) = wire::parse_connect(frame) {
                    assert!(c.client_id.len() + c.username.map_or(0, |u| u.len()) <= n);
                }
                let mut f = BytesMut::from(frame);
                let _ = V4.read_mut(&mut f, wire::MAX_CONNECT_BYTES);
                let mut f = BytesMut::from(frame);
                let _ = V5.read_mut(&mut f, wire::MAX_CONNECT_BYTES);
            }
        });
        prop_assert!(peak <= budget(bytes.len()), "{peak} bytes allocated for {} received", bytes.len());
    }

    #[test]
    fn publish_parser_on_arbitrary_frames(bytes in framed(), v5 in any::<bool>()) {
        let version = if v5 { Version::V5 } else { Version::V4 };
        if let Ok(Some(n)) = wire::frame_len(&bytes, LIMIT)
            && let Ok(head) = wire::parse_publish(&bytes[..n], version)
        {
            prop_assert!(head.qos <= 2);
            prop_assert!(head.topic.len() <= n);
        }
    }

    #[test]
    fn codec_path_on_arbitrary_streams(chunks in proptest::collection::vec(framed(), 1..8), v5 in any::<bool>()) {
        let bytes: Vec<u8> = chunks.concat();
        let version = if v5 { Version::V5 } else { Version::V4 };
        let ((), peak) = peak_allocation(|| drain(&bytes, version));
        prop_assert!(peak <= budget(bytes.len()), "{peak} bytes allocated for {} received", bytes.len());
    }

    #[test]
    fn codec_path_on_raw_noise(bytes in proptest::collection::vec(any::<u8>(), 0..4096), v5 in any::<bool>()) {
        let version = if v5 { Version::V5 } else { Version::V4 };
        let ((), peak) = peak_allocation(|| drain(&bytes, version));
        prop_assert!(peak <= budget(bytes.len()), "{peak} bytes allocated for {} received", bytes.len());
    }
}

#[test]
fn server_packet_types_never_reach_the_codec() {
    // rumqttd's MQTT 5 codec panics on these (found by the properties above); the front refuses
    // them first.
    for kind in [0u8, 1, 2, 9, 11, 13, 15] {
        assert!(!wire::from_client(kind), "type {kind}");
    }
    for kind in [3u8, 4, 5, 6, 7, 8, 10, 12, 14] {
        assert!(wire::from_client(kind), "type {kind}");
    }
}

#[test]
fn a_lying_length_is_refused_before_anything_is_buffered() {
    // 268,435,455 bytes announced (the MQTT maximum), 5 received.
    let bytes = [0x30, 0xff, 0xff, 0xff, 0x7f];
    let (r, peak) = peak_allocation(|| wire::frame_len(&bytes, LIMIT));
    assert!(matches!(r, Err(wire::WireError::TooLarge { .. })), "{r:?}");
    assert_eq!(peak, 0);
    let r = wire::frame_len(&[0x10, 0x80, 0x40], wire::MAX_CONNECT_BYTES);
    assert!(matches!(r, Err(wire::WireError::TooLarge { .. })), "a CONNECT over 4 KiB: {r:?}");
}
