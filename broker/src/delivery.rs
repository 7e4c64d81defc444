//! Delivery to one client as MQTT 5.0 (and 3.1.1) require, on top of what rumqttd's router does.
//!
//! The router delivers a message once per matching filter, at the filter's QoS, drops the
//! publisher's QoS, and knows nothing of No Local, Message Expiry, the client's Receive Maximum
//! or Maximum Packet Size. So every PUBLISH the front passes into the router carries a private
//! [`Stamp`] (a user property no conformant client can send: its name holds U+0000) with the
//! publisher's QoS and retain flag, a message id, the arrival time and the publisher's client id;
//! the router keeps it with the message (also with retained messages). The front subscribes in
//! the router at QoS 0 or 1 only, keeps the client's subscriptions itself ([`Subscriptions`]) and,
//! for every delivery, [`Outbound`] decides: which of the client's subscriptions match (one copy
//! for overlapping subscriptions, with all their identifiers), the QoS (the lower of the
//! published and the highest granted), whether it is the client's own message under No Local,
//! whether it expired (else the remaining interval is passed on), whether it fits the client's
//! Maximum Packet Size, and when the client's Receive Maximum lets it go out. The client's
//! acknowledgements (QoS 1 and the whole QoS 2 exchange) are answered here; the router gets a
//! PUBACK for each of its deliveries in the order it sent them, once the client has taken the
//! message or the front dropped it, so a message is never lost by the router before the client
//! has it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use jiandu_schemas::topic::filter_matches;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet, Protocol, PubAck, PubAckReason, PubRel, PubRelReason, Publish, PublishProperties};
use tracing::debug;

use crate::gate::{self, EvidenceGate};
use crate::wire::{self, Version};

/// Name of the user property holding the front's [`Stamp`]; U+0000 is not allowed in an MQTT
/// string, so no conformant client can send or receive it.
const STAMP_KEY: &str = "\u{0}jd";

/// Payloads larger than this go to the client as they are, beside their encoded header
/// ([`Wire`]), instead of being copied into the output buffer.
const SPLICE_MIN: usize = 16 * 1024;

/// Bytes on their way to one client: encoded packets in a buffer, with the payloads of large
/// messages (evidence chunks) kept as the router holds them and written beside their headers
/// with vectored writes, so no payload is copied into the buffer (that copy was 4–5% of the
/// server's CPU during an upload). Derefs to the buffer for writing small packets.
#[derive(Debug, Default)]
pub(crate) struct Wire {
    buf: BytesMut,
    /// Payloads to send right after `buf[..offset]`, in order: (offset, payload).
    splices: Vec<(usize, Bytes)>,
    /// Bytes in `splices`.
    spliced: usize,
}

impl std::ops::Deref for Wire {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl std::ops::DerefMut for Wire {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

impl Wire {
    /// Bytes to write, spliced payloads included.
    pub fn len(&self) -> usize {
        self.buf.len() + self.spliced
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.splices.is_empty()
    }

    /// Forgets everything (after it was written).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.splices.clear();
        self.spliced = 0;
    }

    /// Completes the PUBLISH encoded without its payload at `buf[start..]`: its remaining length
    /// grows by the payload's, which follows it on the wire.
    fn splice_payload(&mut self, start: usize, payload: Bytes) {
        let packet = self.buf.split_off(start);
        // The packet is all that follows `start`: its remaining length is what follows the
        // fixed header (type byte, then length bytes up to the first without the high bit).
        let head = 2 + packet[1..].iter().take_while(|b| *b & 0x80 != 0).count();
        self.buf.extend_from_slice(&packet[..1]);
        wire::put_varint(&mut self.buf, packet.len() - head + payload.len());
        self.buf.extend_from_slice(&packet[head..]);
        self.spliced += payload.len();
        self.splices.push((self.buf.len(), payload));
    }

    /// Writes everything, then clears.
    pub async fn write_to<W: tokio::io::AsyncWrite + Unpin>(&mut self, wr: &mut W) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.splices.is_empty() {
            wr.write_all(&self.buf).await?;
        } else {
            let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(self.splices.len() * 2 + 1);
            let mut at = 0;
            for (offset, payload) in &self.splices {
                slices.push(std::io::IoSlice::new(&self.buf[at..*offset]));
                slices.push(std::io::IoSlice::new(payload));
                at = *offset;
            }
            slices.push(std::io::IoSlice::new(&self.buf[at..]));
            slices.retain(|s| !s.is_empty());
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = wr.write_vectored(rest).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                std::io::IoSlice::advance_slices(&mut rest, n);
            }
        }
        self.clear();
        Ok(())
    }
}

/// At most this many message ids are remembered to drop the further copies the router delivers
/// for overlapping subscriptions (forgetting one only costs a duplicate, which MQTT allows).
const MAX_COPIES_TRACKED: usize = 4096;

/// What the front records about a message when it enters the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// QoS the publisher used.
    pub qos: u8,
    /// Retain flag the publisher set.
    pub retain: bool,
    /// Unique per front: identifies the copies the router makes for overlapping filters.
    pub id: u64,
    /// Arrival, in milliseconds since the front started (for Message Expiry).
    pub at_ms: u64,
    /// The publisher's client id (for No Local).
    pub origin: String,
}

impl Stamp {
    /// Adds the stamp to a publish's properties, replacing anything a client sent under its name.
    pub fn attach(&self, props: &mut Option<PublishProperties>) {
        let p = props.get_or_insert_with(PublishProperties::default);
        p.user_properties.retain(|(k, _)| k != STAMP_KEY);
        let value = format!("{}{}|{}|{}|{}", self.qos, u8::from(self.retain), self.id, self.at_ms, self.origin);
        p.user_properties.push((STAMP_KEY.to_owned(), value));
    }

    /// Removes and parses the stamp (`None` for a message that entered the router without one).
    pub fn take(props: &mut Option<PublishProperties>) -> Option<Stamp> {
        let p = props.as_mut()?;
        let at = p.user_properties.iter().position(|(k, _)| k == STAMP_KEY)?;
        let (_, value) = p.user_properties.remove(at);
        let mut parts = value.splitn(4, '|');
        let flags = parts.next()?.as_bytes();
        let (qos, retain) = match flags {
            [q @ b'0'..=b'2', r @ (b'0' | b'1')] => (q - b'0', *r == b'1'),
            _ => return None,
        };
        Some(Stamp {
            qos,
            retain,
            id: parts.next()?.parse().ok()?,
            at_ms: parts.next()?.parse().ok()?,
            origin: parts.next()?.to_owned(),
        })
    }
}

/// One of the client's subscriptions, as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// Subscription Identifier of the SUBSCRIBE that made it.
    pub id: Option<usize>,
    /// Granted QoS (the router itself is subscribed at QoS 0 or 1).
    pub qos: u8,
    /// No Local: never deliver the client's own messages on this subscription.
    pub no_local: bool,
    /// Retain As Published: keep the publisher's retain flag on live messages.
    pub retain_as_published: bool,
    /// Retain Handling 2: send no retained messages when subscribing.
    pub no_retained: bool,
}

/// The client's subscriptions by filter (as subscribed, `$share/{group}/` included).
pub(crate) type Subscriptions = HashMap<String, Subscription>;

/// The outgoing side of one connection: see the module docs.
pub(crate) struct Outbound {
    version: Version,
    client_id: String,
    /// The client's Receive Maximum: QoS 1 and 2 deliveries unacknowledged at once.
    receive_max: usize,
    /// The client's Maximum Packet Size.
    max_packet: usize,
    /// Router deliveries at QoS 1 in the router's order, and whether they are done with.
    router_slots: VecDeque<(u16, bool)>,
    /// Deliveries to the client awaiting its acknowledgement, by the front's packet id.
    inflight: HashMap<u16, Inflight>,
    next_pkid: u16,
    /// Deliveries waiting for room in the client's Receive Maximum.
    held: VecDeque<Held>,
    /// Copies still expected from the router per message id (overlapping subscriptions).
    copies: HashMap<u64, usize>,
    copies_order: VecDeque<u64>,
    epoch: Instant,
    scratch: BytesMut,
    /// The evidence budget: an acknowledged evidence chunk gives its permits back.
    gate: Option<Arc<EvidenceGate>>,
}

struct Inflight {
    router_pkid: Option<u16>,
    /// QoS 2 after the client's PUBREC: waiting for its PUBCOMP.
    released: bool,
    /// Message id of an evidence chunk holding permits of the gate.
    gated: Option<u64>,
}

struct Held {
    publish: Publish,
    props: Option<PublishProperties>,
    qos: u8,
    router_pkid: Option<u16>,
    gated: Option<u64>,
}

impl Outbound {
    /// Delivery state for a new connection.
    pub fn new(version: Version, client_id: String, receive_max: u16, max_packet: usize, epoch: Instant) -> Self {
        Outbound {
            version,
            client_id,
            receive_max: usize::from(receive_max.max(1)),
            max_packet,
            router_slots: VecDeque::new(),
            inflight: HashMap::new(),
            next_pkid: 0,
            held: VecDeque::new(),
            copies: HashMap::new(),
            copies_order: VecDeque::new(),
            epoch,
            scratch: BytesMut::new(),
            gate: None,
        }
    }

    /// Gives acknowledged evidence chunks' permits back to `gate`.
    pub fn with_gate(mut self, gate: Arc<EvidenceGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The chunk `gated` was delivered for good (acknowledged, or sent at QoS 0).
    fn gate_done(&self, gated: Option<u64>) {
        if let (Some(gate), Some(id)) = (&self.gate, gated) {
            gate.done(id);
        }
    }

    /// Handles one PUBLISH from the router: writes it to `out`, holds it for the client's window,
    /// or drops it; acknowledgements due to the router go to `to_router`.
    pub fn deliver(
        &mut self,
        mut publish: Publish,
        mut props: Option<PublishProperties>,
        subs: &Subscriptions,
        out: &mut Wire,
        to_router: &mut Vec<Packet>,
    ) {
        let (router_qos, router_pkid) = self.head_of(&publish);
        let router_pkid = (router_qos > 0).then(|| {
            self.router_slots.push_back((router_pkid, false));
            router_pkid
        });
        let stamp = Stamp::take(&mut props);
        let gated = stamp.as_ref().filter(|_| self.gate.is_some() && gate::is_chunk(&publish.topic)).map(|s| s.id);
        let at_subscribe = publish.retain;
        match self.decide(&publish, &mut props, stamp.as_ref(), router_qos, subs) {
            Some((qos, retain)) => {
                publish.retain = retain;
                if qos == 0 {
                    self.send(publish, props, 0, None, None, out);
                    self.router_done(router_pkid);
                    self.gate_done(gated);
                } else if self.inflight.len() < self.receive_max && self.held.is_empty() {
                    if !self.send(publish, props, qos, router_pkid, gated, out) {
                        self.router_done(router_pkid);
                    }
                } else {
                    self.held.push_back(Held { publish, props, qos, router_pkid, gated });
                }
            }
            None => {
                debug!(at_subscribe, "delivery dropped for this client");
                self.router_done(router_pkid);
            }
        }
        self.flush_router_acks(to_router);
    }

    /// The QoS and retain flag to deliver with, or `None` to drop; sets the properties the
    /// client gets (subscription identifiers, remaining expiry).
    fn decide(
        &mut self,
        publish: &Publish,
        props: &mut Option<PublishProperties>,
        stamp: Option<&Stamp>,
        router_qos: u8,
        subs: &Subscriptions,
    ) -> Option<(u8, bool)> {
        let topic = std::str::from_utf8(&publish.topic).ok()?;
        let mut plain: Vec<&Subscription> = Vec::new();
        let mut shared: Vec<&Subscription> = Vec::new();
        for (filter, s) in subs {
            if filter_matches(filter, topic) {
                if filter.starts_with("$share/") { shared.push(s) } else { plain.push(s) }
            }
        }
        // The router sends one copy per matching filter: the first carries every identifier.
        if plain.len() > 1
            && let Some(stamp) = stamp
            && self.seen_copy(stamp.id, plain.len())
        {
            return None;
        }
        let mut matching = if plain.is_empty() { shared } else { plain };
        if stamp.is_some_and(|s| s.origin == self.client_id) {
            matching.retain(|s| !s.no_local);
        }
        if publish.retain {
            matching.retain(|s| !s.no_retained);
        }
        let granted = matching.iter().map(|s| s.qos).max()?;
        let published = stamp.map_or(router_qos, |s| s.qos);
        let qos = published.min(granted);

        if let Some(p) = props.as_mut() {
            if let (Some(interval), Some(stamp)) = (p.message_expiry_interval, stamp) {
                let waited = self.now_ms().saturating_sub(stamp.at_ms) / 1000;
                let left = u64::from(interval).checked_sub(waited).filter(|l| *l > 0)?;
                p.message_expiry_interval = Some(left as u32);
            }
            p.topic_alias = None;
            p.subscription_identifiers.clear();
        }
        let mut ids: Vec<usize> = matching.iter().filter_map(|s| s.id).collect();
        if !ids.is_empty() {
            ids.sort_unstable();
            ids.dedup();
            props.get_or_insert_with(PublishProperties::default).subscription_identifiers = ids;
        }
        // A retained message sent on subscribing keeps its flag; a live one only under Retain
        // As Published.
        let retain =
            publish.retain || (matching.iter().any(|s| s.retain_as_published) && stamp.is_some_and(|s| s.retain));
        Some((qos, retain))
    }

    /// True when an earlier copy of message `id` was already delivered (`copies` in all).
    fn seen_copy(&mut self, id: u64, copies: usize) -> bool {
        if let Some(left) = self.copies.get_mut(&id) {
            *left -= 1;
            if *left == 0 {
                self.copies.remove(&id);
            }
            return true;
        }
        if self.copies_order.len() >= MAX_COPIES_TRACKED
            && let Some(old) = self.copies_order.pop_front()
        {
            self.copies.remove(&old);
        }
        self.copies.insert(id, copies - 1);
        self.copies_order.push_back(id);
        false
    }

    /// Milliseconds since the front started (the clock of [`Stamp::at_ms`]).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Encodes a delivery for the client, or drops it when larger than the client accepts.
    fn send(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: u8,
        router_pkid: Option<u16>,
        gated: Option<u64>,
        out: &mut Wire,
    ) -> bool {
        let pkid = if qos > 0 { self.next_free_pkid() } else { 0 };
        let mut publish = retarget(publish, qos, pkid);
        let start = out.buf.len();
        let payload = (publish.payload.len() > SPLICE_MIN).then(|| std::mem::take(&mut publish.payload));
        crate::front::encode(self.version, Packet::Publish(publish, props), &mut out.buf);
        if out.buf.len() - start + payload.as_ref().map_or(0, Bytes::len) > self.max_packet {
            // MQTT 5 §3.1.2.11.4: discard it as if it had been sent.
            out.buf.truncate(start);
            debug!(max = self.max_packet, "message larger than the client's Maximum Packet Size dropped");
            metrics::counter!("jiandu_broker_dropped_total", "why" => "client_max_packet").increment(1);
            self.gate_done(gated);
            return false;
        }
        if let Some(payload) = payload {
            out.splice_payload(start, payload);
        }
        if qos > 0 {
            self.inflight.insert(pkid, Inflight { router_pkid, released: false, gated });
        }
        true
    }

    fn next_free_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// The client's PUBACK (QoS 1 delivery done).
    pub fn client_puback(&mut self, pkid: u16, out: &mut Wire, to_router: &mut Vec<Packet>) {
        match self.inflight.get(&pkid) {
            Some(f) if !f.released => {
                let (router_pkid, gated) = (f.router_pkid, f.gated);
                self.inflight.remove(&pkid);
                self.router_done(router_pkid);
                self.gate_done(gated);
            }
            _ => debug!(pkid, "PUBACK for no delivery in flight ignored"),
        }
        self.release_held(out, to_router);
    }

    /// The client's PUBREC (QoS 2 delivery received): answers PUBREL; the router is done.
    pub fn client_pubrec(&mut self, pkid: u16, out: &mut Wire, to_router: &mut Vec<Packet>) {
        let reason = match self.inflight.get_mut(&pkid) {
            Some(f) => {
                f.released = true;
                let (router_pkid, gated) = (f.router_pkid.take(), f.gated.take());
                self.router_done(router_pkid);
                self.gate_done(gated);
                PubRelReason::Success
            }
            None => PubRelReason::PacketIdentifierNotFound,
        };
        crate::front::encode(self.version, Packet::PubRel(PubRel { pkid, reason }, None), out);
        self.flush_router_acks(to_router);
    }

    /// The client's PUBCOMP (QoS 2 delivery complete): frees its place in the window.
    pub fn client_pubcomp(&mut self, pkid: u16, out: &mut Wire, to_router: &mut Vec<Packet>) {
        if self.inflight.get(&pkid).is_some_and(|f| f.released) {
            self.inflight.remove(&pkid);
        }
        self.release_held(out, to_router);
    }

    /// Sends held deliveries while the client's window has room.
    fn release_held(&mut self, out: &mut Wire, to_router: &mut Vec<Packet>) {
        while self.inflight.len() < self.receive_max {
            let Some(h) = self.held.pop_front() else { break };
            if !self.send(h.publish, h.props, h.qos, h.router_pkid, h.gated, out) {
                self.router_done(h.router_pkid);
            }
        }
        self.flush_router_acks(to_router);
    }

    /// Marks a router delivery done (acknowledged once all before it are).
    fn router_done(&mut self, router_pkid: Option<u16>) {
        let Some(pkid) = router_pkid else { return };
        if let Some(slot) = self.router_slots.iter_mut().find(|(p, done)| *p == pkid && !done) {
            slot.1 = true;
        }
    }

    /// PUBACKs to the router for its deliveries that are done, in its order.
    fn flush_router_acks(&mut self, to_router: &mut Vec<Packet>) {
        while self.router_slots.front().is_some_and(|(_, done)| *done) {
            if let Some((pkid, _)) = self.router_slots.pop_front() {
                to_router.push(Packet::PubAck(PubAck { pkid, reason: PubAckReason::Success }, None));
            }
        }
    }

    /// The QoS and packet id the router gave a delivery (rumqttd keeps them crate-private, so
    /// they are read back from the encoded fixed and variable header, payload left out).
    fn head_of(&mut self, publish: &Publish) -> (u8, u16) {
        let mut probe = publish.clone();
        probe.payload = Bytes::new();
        self.scratch.clear();
        if V4.write(Packet::Publish(probe, None), &mut self.scratch).is_err() {
            return (0, 0);
        }
        wire::parse_publish(&self.scratch, Version::V4).map(|h| (h.qos, h.pkid)).unwrap_or((0, 0))
    }
}

/// The same message with another QoS and packet id (rumqttd keeps those fields crate-private:
/// a header-only frame is decoded and the topic and payload moved in).
pub(crate) fn retarget(publish: Publish, qos: u8, pkid: u16) -> Publish {
    let frame = wire::publish_frame(Version::V4, "t", b"", qos, publish.retain, pkid);
    let mut frame = BytesMut::from(&frame[..]);
    match V4.read_mut(&mut frame, usize::MAX) {
        Ok(Packet::Publish(mut p, _)) => {
            p.topic = publish.topic;
            p.payload = publish.payload;
            p
        }
        _ => publish,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_replace_forgeries() {
        let s = Stamp { qos: 2, retain: true, id: 42, at_ms: 1234, origin: "city|hotline-a".into() };
        let mut props = Some(PublishProperties {
            user_properties: vec![(STAMP_KEY.into(), "00|1|1|forged".into()), ("k".into(), "v".into())],
            ..Default::default()
        });
        s.attach(&mut props);
        assert_eq!(props.as_ref().unwrap().user_properties.len(), 2);
        assert_eq!(Stamp::take(&mut props), Some(s));
        assert_eq!(props.unwrap().user_properties, vec![("k".to_owned(), "v".to_owned())]);
        assert_eq!(Stamp::take(&mut None), None);
        let mut bad =
            Some(PublishProperties { user_properties: vec![(STAMP_KEY.into(), "9x|a".into())], ..Default::default() });
        assert_eq!(Stamp::take(&mut bad), None);
    }

    #[test]
    fn retarget_sets_qos_and_packet_id() {
        let mut o = Outbound::new(Version::V5, "c".into(), 10, usize::MAX, Instant::now());
        let p = Publish::new("a/b", "payload", false);
        assert_eq!(o.head_of(&p), (0, 0));
        let q = retarget(p, 2, 77);
        assert_eq!(o.head_of(&q), (2, 77));
        assert_eq!((&q.topic[..], &q.payload[..]), (&b"a/b"[..], &b"payload"[..]));
    }

    fn sub(qos: u8, id: Option<usize>) -> Subscription {
        Subscription { id, qos, no_local: false, retain_as_published: false, no_retained: false }
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_at_the_lower_qos_in_order() {
        let mut o = Outbound::new(Version::V5, "me".into(), 1, usize::MAX, Instant::now());
        let subs = Subscriptions::from([("a/#".to_owned(), sub(2, Some(1))), ("a/+".to_owned(), sub(1, Some(2)))]);
        let stamp = Stamp { qos: 2, retain: false, id: 7, at_ms: 0, origin: "other".into() };
        let (mut out, mut to_router) = (Wire::default(), Vec::new());
        for router_pkid in [1, 2] {
            let mut props = None;
            stamp.attach(&mut props);
            o.deliver(
                retarget(Publish::new("a/b", "x", false), 1, router_pkid),
                props,
                &subs,
                &mut out,
                &mut to_router,
            );
        }
        let head = wire::parse_publish(&out, Version::V5).unwrap();
        assert_eq!(head.qos, 2, "min(published 2, highest granted 2)");
        assert_eq!(out.len(), wire::frame_len(&out, usize::MAX).unwrap().unwrap(), "one copy only");
        // The dropped copy (router pkid 2) waits for the first to be acknowledged.
        assert!(to_router.is_empty());
        o.client_pubrec(head.pkid, &mut out, &mut to_router);
        let acked: Vec<u16> =
            to_router.iter().filter_map(|p| if let Packet::PubAck(a, _) = p { Some(a.pkid) } else { None }).collect();
        assert_eq!(acked, vec![1, 2]);
    }

    #[tokio::test]
    async fn large_payloads_go_out_beside_their_headers_and_decode_whole() {
        use rumqttd::protocol::v5::V5;
        for (version, size) in [(Version::V4, 20_000usize), (Version::V5, 300_000), (Version::V4, 100)] {
            let mut o = Outbound::new(version, "me".into(), 10, usize::MAX, Instant::now());
            let subs = Subscriptions::from([("a/#".to_owned(), sub(1, Some(3)))]);
            let stamp = Stamp { qos: 1, retain: false, id: 9, at_ms: 0, origin: "other".into() };
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let (mut out, mut to_router) = (Wire::default(), Vec::new());
            // A small message, the large one, a small one: the wire keeps their order.
            for (n, body) in [(1u16, b"first".to_vec()), (2, payload.clone()), (3, b"last".to_vec())] {
                let mut props = None;
                stamp.attach(&mut props);
                let mut p = Publish::new("a/b", "", false);
                p.payload = Bytes::from(body);
                let p = retarget(p, 1, n);
                o.deliver(p, props, &subs, &mut out, &mut to_router);
            }
            assert_eq!(out.splices.len(), usize::from(size > SPLICE_MIN), "size {size}");
            let mut sent: Vec<u8> = Vec::new();
            out.write_to(&mut sent).await.unwrap();
            assert!(out.is_empty());
            let mut sent = BytesMut::from(&sent[..]);
            let mut bodies = Vec::new();
            while !sent.is_empty() {
                let packet = match version {
                    Version::V4 => V4.read_mut(&mut sent, usize::MAX),
                    Version::V5 => V5.read_mut(&mut sent, usize::MAX),
                };
                match packet {
                    Ok(Packet::Publish(p, _)) => bodies.push((p.topic.to_vec(), p.payload.to_vec())),
                    other => panic!("not a publish: {other:?}"),
                }
            }
            let topic = b"a/b".to_vec();
            assert_eq!(
                bodies,
                vec![(topic.clone(), b"first".to_vec()), (topic.clone(), payload), (topic, b"last".to_vec())]
            );
        }
    }

    #[test]
    fn a_spliced_payload_over_the_clients_maximum_is_dropped_whole() {
        let mut o = Outbound::new(Version::V5, "me".into(), 10, 50_000, Instant::now());
        let subs = Subscriptions::from([("a/#".to_owned(), sub(1, None))]);
        let (mut out, mut to_router) = (Wire::default(), Vec::new());
        let mut p = Publish::new("a/b", "", false);
        p.payload = Bytes::from(vec![7u8; 60_000]);
        o.deliver(retarget(p, 1, 1), None, &subs, &mut out, &mut to_router);
        assert!(out.is_empty(), "nothing of it is sent");
        assert_eq!(to_router.len(), 1, "the router's delivery is acknowledged as done");
    }
}
