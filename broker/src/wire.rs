//! The few MQTT 3.1.1 / 5 packet shapes the ACL front must understand.
//!
//! rumqttd's codecs decode whole packets; before handing bytes to them the front needs to find
//! frame boundaries (and refuse oversized ones without buffering them), read CONNECT's login and
//! will topic to authenticate, read a PUBLISH's QoS and packet id (private in rumqttd's types),
//! and build the few frames it sends itself: refusing CONNACKs, DISCONNECT, the `inbox/error`
//! notice and the last will it publishes on a client's behalf. Every parser works on untrusted
//! bytes and returns [`WireError`] instead of panicking.

use bytes::{BufMut, Bytes, BytesMut};

/// Why bytes from the network are not a packet we can handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The remaining-length field is longer than four bytes.
    #[error("malformed remaining length")]
    MalformedLength,
    /// A field runs past the end of the packet.
    #[error("malformed {0} packet: truncated")]
    Truncated(&'static str),
    /// A string field is not UTF-8.
    #[error("malformed {0} packet: string is not UTF-8")]
    NotUtf8(&'static str),
    /// The first packet is not a CONNECT, or its protocol name or level is unknown.
    #[error("unsupported protocol: {0}")]
    Protocol(String),
    /// The packet is larger than the configured limit.
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size the fixed header announced.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
}

/// MQTT protocol level spoken on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Control packet types (upper nibble of the first byte).
pub mod kind {
    /// CONNECT.
    pub const CONNECT: u8 = 1;
    /// PUBLISH.
    pub const PUBLISH: u8 = 3;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 14;
}

/// Largest first frame read from an unauthenticated client: a CONNECT needs a client id, a
/// login, a will (a `presence` payload) and a few properties, never the 300 KiB of an evidence
/// chunk, so a stranger cannot make the front buffer more than this before authenticating.
pub const MAX_CONNECT_BYTES: usize = 4096;

/// Whether a client may send packets of this type after CONNECT: PUBLISH, the four acks,
/// SUBSCRIBE, UNSUBSCRIBE, PINGREQ and DISCONNECT. Anything else (a CONNACK, SUBACK, PINGRESP or
/// AUTH from a client) ends the connection before a codec sees it: rumqttd 0.20's MQTT 5 codec
/// panics (`unreachable!`) on a server-to-client packet type, which the property tests found.
pub fn from_client(kind: u8) -> bool {
    matches!(kind, 3..=8 | 10 | 12 | 14)
}

/// Length of the next complete frame at the start of `buf`: `Ok(None)` if more bytes are needed.
pub fn frame_len(buf: &[u8], limit: usize) -> Result<Option<usize>, WireError> {
    Ok(declared_len(buf, limit)?.filter(|total| buf.len() >= *total))
}

/// Length the frame at the start of `buf` declares (fixed header included), complete or not:
/// `Ok(None)` until its fixed header is in.
pub fn declared_len(buf: &[u8], limit: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut shift = 0;
    for (i, byte) in buf[1..].iter().enumerate() {
        if i == 4 {
            return Err(WireError::MalformedLength);
        }
        len |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            let total = 1 + i + 1 + len;
            if total > limit {
                return Err(WireError::TooLarge { size: total, limit });
            }
            return Ok(Some(total));
        }
        shift += 7;
    }
    if buf.len() > 5 {
        return Err(WireError::MalformedLength);
    }
    Ok(None)
}

/// Reads fields out of a packet body, failing with the packet's name when it runs short.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        let b = *self.buf.get(self.pos).ok_or(WireError::Truncated(self.what))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated(self.what))?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated(self.what))?;
        self.pos = end;
        Ok(s)
    }
    fn binary(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.binary()?).map_err(|_| WireError::NotUtf8(self.what))
    }
    fn varint(&mut self) -> Result<usize, WireError> {
        let mut v = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            v |= ((b & 0x7f) as usize) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::MalformedLength)
    }
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

/// Offset of the body (after the fixed header) in a complete frame.
fn body(frame: &[u8]) -> &[u8] {
    let mut i = 1;
    while i < frame.len() && frame[i] & 0x80 != 0 {
        i += 1;
    }
    &frame[(i + 1).min(frame.len())..]
}

/// Packet type of a complete frame.
pub fn packet_kind(frame: &[u8]) -> u8 {
    frame[0] >> 4
}

pub(crate) fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn frame(first: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(first);
    put_varint(&mut out, body.len());
    out.put_slice(body);
    out.freeze()
}

/// The parts of a CONNECT the front needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level.
    pub version: Version,
    /// Client identifier.
    pub client_id: String,
    /// User name, if present.
    pub username: Option<String>,
    /// Password, if present.
    pub password: Option<Vec<u8>>,
    /// Last-will topic, if a will is set.
    pub will_topic: Option<String>,
}

/// Parses a complete CONNECT frame.
pub fn parse_connect(frame: &[u8]) -> Result<Connect, WireError> {
    if packet_kind(frame) != kind::CONNECT {
        return Err(WireError::Protocol("first packet is not CONNECT".into()));
    }
    let mut r = Reader::new(body(frame), "CONNECT");
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (name, level) {
        ("MQTT", 4) => Version::V4,
        ("MQTT", 5) => Version::V5,
        _ => {
            return Err(WireError::Protocol(format!(
                "protocol {name:?} level {level}; MQTT 3.1.1 (4) and 5 are supported"
            )));
        }
    };
    let flags = r.u8()?;
    let _keep_alive = r.u16()?;
    if version == Version::V5 {
        let n = r.varint()?;
        r.take(n)?;
    }
    let client_id = r.string()?.to_owned();
    let mut will_topic = None;
    if flags & 0x04 != 0 {
        if version == Version::V5 {
            let n = r.varint()?;
            r.take(n)?;
        }
        will_topic = Some(r.string()?.to_owned());
        r.binary()?;
    }
    let username = if flags & 0x80 != 0 { Some(r.string()?.to_owned()) } else { None };
    let password = if flags & 0x40 != 0 { Some(r.binary()?.to_vec()) } else { None };
    Ok(Connect { version, client_id, username, password, will_topic })
}

/// CONNACK refusal reasons the front answers with itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No username/password given.
    NotAuthorized,
    /// Unknown user, wrong password, revoked account.
    BadCredentials,
    /// Client id does not match the device id.
    BadClientId,
    /// The broker behind the front is not reachable.
    Unavailable,
    /// The account already holds as many sessions as it may.
    QuotaExceeded,
}

/// Builds a refusing CONNACK with the proper code for the protocol level.
pub fn connack_refused(version: Version, why: Refusal) -> Bytes {
    match version {
        Version::V4 => {
            let code = match why {
                Refusal::BadClientId => 2,
                Refusal::Unavailable | Refusal::QuotaExceeded => 3,
                Refusal::BadCredentials => 4,
                Refusal::NotAuthorized => 5,
            };
            frame(0x20, &[0, code])
        }
        Version::V5 => {
            let code = match why {
                Refusal::BadClientId => 0x85,
                Refusal::Unavailable => 0x88,
                Refusal::QuotaExceeded => 0x97,
                Refusal::BadCredentials => 0x86,
                Refusal::NotAuthorized => 0x87,
            };
            frame(0x20, &[0, code, 0])
        }
    }
}

/// The parts of a PUBLISH the ACL needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishHead<'a> {
    /// Topic name (empty when a v5 topic alias stands in for it).
    pub topic: &'a str,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Packet id for QoS > 0.
    pub pkid: u16,
    /// v5 topic alias property, if present.
    pub topic_alias: Option<u16>,
}

/// Parses the variable header of a complete PUBLISH frame.
pub fn parse_publish(frame: &[u8], version: Version) -> Result<PublishHead<'_>, WireError> {
    let qos = (frame[0] >> 1) & 0x03;
    if qos == 3 {
        return Err(WireError::Protocol("PUBLISH with QoS 3".into()));
    }
    let mut r = Reader::new(body(frame), "PUBLISH");
    let topic = r.string()?;
    let pkid = if qos > 0 { r.u16()? } else { 0 };
    let mut topic_alias = None;
    if version == Version::V5 {
        let n = r.varint()?;
        let mut p = Reader::new(r.take(n)?, "PUBLISH");
        while !p.rest().is_empty() {
            match p.u8()? {
                0x01 => {
                    p.u8()?;
                }
                0x02 => {
                    p.take(4)?;
                }
                0x23 => topic_alias = Some(p.u16()?),
                0x08 | 0x03 => {
                    p.string()?;
                }
                0x09 => {
                    p.binary()?;
                }
                0x26 => {
                    p.string()?;
                    p.string()?;
                }
                0x0b => {
                    p.varint()?;
                }
                other => {
                    return Err(WireError::Protocol(format!("unknown PUBLISH property 0x{other:02x}")));
                }
            }
        }
    }
    Ok(PublishHead { topic, qos, pkid, topic_alias })
}

/// Builds a QoS 0 PUBLISH (used for `inbox/error` notices from the front).
pub fn publish_qos0(version: Version, topic: &str, payload: &[u8]) -> Bytes {
    publish_frame(version, topic, payload, 0, false, 0)
}

/// Builds a PUBLISH frame (the packet id is written only for QoS 1 and 2).
pub fn publish_frame(version: Version, topic: &str, payload: &[u8], qos: u8, retain: bool, pkid: u16) -> Bytes {
    let mut body = BytesMut::with_capacity(topic.len() + payload.len() + 8);
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.put_u16(pkid);
    }
    if version == Version::V5 {
        body.put_u8(0);
    }
    body.put_slice(payload);
    frame(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// Builds a v5 DISCONNECT with a reason code (v4 has no server DISCONNECT: `None`).
pub fn disconnect(version: Version, reason: u8) -> Option<Bytes> {
    match version {
        Version::V4 => None,
        Version::V5 => Some(frame(0xe0, &[reason, 0])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_frame(version: u8, client: &str, user: Option<&str>, pass: Option<&[u8]>, will: Option<&str>) -> Bytes {
        let mut b = BytesMut::new();
        put_str(&mut b, b"MQTT");
        b.put_u8(version);
        let mut flags = 0x02;
        if will.is_some() {
            flags |= 0x04 | 0x08;
        }
        if user.is_some() {
            flags |= 0x80;
        }
        if pass.is_some() {
            flags |= 0x40;
        }
        b.put_u8(flags);
        b.put_u16(30);
        if version == 5 {
            b.put_slice(&[3, 0x21, 0, 10]); // receive maximum
        }
        put_str(&mut b, client.as_bytes());
        if let Some(w) = will {
            if version == 5 {
                b.put_u8(0);
            }
            put_str(&mut b, w.as_bytes());
            put_str(&mut b, b"{\"online\":false}");
        }
        if let Some(u) = user {
            put_str(&mut b, u.as_bytes());
        }
        if let Some(p) = pass {
            put_str(&mut b, p);
        }
        frame(0x10, &b)
    }

    #[test]
    fn connect_login_and_will_are_read() {
        for v in [4u8, 5] {
            let f = connect_frame(v, "d1", Some("d1"), Some(b"secret"), Some("jd/v1/dev/d1/presence"));
            let c = parse_connect(&f).unwrap();
            assert_eq!(c.version, if v == 4 { Version::V4 } else { Version::V5 });
            assert_eq!(c.client_id, "d1");
            assert_eq!(c.username.as_deref(), Some("d1"));
            assert_eq!(c.password.as_deref(), Some(&b"secret"[..]));
            assert_eq!(c.will_topic.as_deref(), Some("jd/v1/dev/d1/presence"));
        }
        let c = parse_connect(&connect_frame(4, "x", None, None, None)).unwrap();
        assert_eq!((c.username, c.password, c.will_topic), (None, None, None));
    }

    #[test]
    fn publish_frames_round_trip() {
        for (v, version) in [(4u8, Version::V4), (5, Version::V5)] {
            let _ = v;
            let f = publish_frame(version, "jd/v1/dev/d1/presence", b"{}", 1, true, 9);
            assert_eq!(f[0], 0x33);
            let head = parse_publish(&f, version).unwrap();
            assert_eq!((head.topic, head.qos, head.pkid), ("jd/v1/dev/d1/presence", 1, 9));
        }
    }

    #[test]
    fn truncated_and_foreign_packets_are_errors_not_panics() {
        let f = connect_frame(4, "d1", Some("d1"), Some(b"secret"), None);
        for cut in 2..f.len() {
            let mut g = BytesMut::from(&f[..cut]);
            g[1] = (cut - 2) as u8;
            let _ = parse_connect(&g);
        }
        assert!(matches!(parse_connect(&connect_frame(3, "a", None, None, None)), Err(WireError::Protocol(_))));
        assert!(matches!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 1 << 30), Err(WireError::MalformedLength)));
        assert!(matches!(frame_len(&[0x30, 0x80, 0x80, 0x01], 1000), Err(WireError::TooLarge { .. })));
        assert_eq!(frame_len(&[0x30, 0x05, 0, 1], 1000), Ok(None));
        assert_eq!(frame_len(&[0x30], 1000), Ok(None));
    }

    #[test]
    fn a_partial_frame_declares_its_length_within_the_limit_only() {
        // 16,384 bytes of body behind a three-byte length: 1 + 3 + 16384 in all.
        assert_eq!(declared_len(&[0x30, 0x80, 0x80, 0x01], 1 << 20), Ok(Some(16_388)));
        assert_eq!(declared_len(&[0x30, 0x80, 0x80, 0x01, 0, 1], 1 << 20), Ok(Some(16_388)));
        assert_eq!(frame_len(&[0x30, 0x80, 0x80, 0x01, 0, 1], 1 << 20), Ok(None));
        // An unfinished length is not a length yet; beyond the limit is refused before any room
        // is made for it.
        assert_eq!(declared_len(&[0x30, 0x80, 0x80], 1 << 20), Ok(None));
        assert_eq!(declared_len(&[0x30], 1 << 20), Ok(None));
        assert!(matches!(declared_len(&[0x30, 0x80, 0x80, 0x01], 16_387), Err(WireError::TooLarge { .. })));
        assert!(matches!(
            declared_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 1 << 30),
            Err(WireError::MalformedLength)
        ));
    }

    #[test]
    fn publish_head_v4_and_v5_alias() {
        let mut b = BytesMut::new();
        put_str(&mut b, b"jd/v1/dev/d1/hb");
        b.put_u16(7);
        b.put_slice(b"{}");
        let f = frame(0x32, &b);
        let p = parse_publish(&f, Version::V4).unwrap();
        assert_eq!((p.topic, p.qos, p.pkid, p.topic_alias), ("jd/v1/dev/d1/hb", 1, 7, None));

        let mut b = BytesMut::new();
        put_str(&mut b, b"");
        b.put_slice(&[5, 0x01, 1, 0x23, 0, 3]);
        b.put_slice(b"{}");
        let f = frame(0x30, &b);
        let p = parse_publish(&f, Version::V5).unwrap();
        assert_eq!((p.topic, p.qos, p.topic_alias), ("", 0, Some(3)));
    }
}
