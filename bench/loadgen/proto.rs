//! Wire details shared by the subcommands: tokens, the benchmark event, and cheap scanning of
//! received event frames (no full JSON parse per delivery).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// An HS256 token for user `sub` of `tenant`, valid for `ttl_secs`.
pub fn token(key: &EncodingKey, sub: u64, tenant: &str, role: &str, ttl_secs: u64) -> String {
    let exp = now_us() / 1_000_000 + ttl_secs;
    let claims =
        json!({ "sub": sub.to_string(), "institutionId": tenant, "role": role, "exp": exp });
    encode(&Header::default(), &claims, key).unwrap_or_default()
}

/// Channel of the benchmark event.
pub const CHANNEL: &str = "incident";
/// Event type of the benchmark event.
pub const EVENT: &str = "incident_updated";

/// The catalog payload of `incident_updated` with the send time in `sentAtUs` (microseconds),
/// about 200 bytes; the frame a client receives is about 330 bytes.
pub fn payload(seq: u64, tenant: &str, sent_at_us: u64) -> String {
    format!(
        concat!(
            r#"{{"incidentId":{seq},"status":"open","severity":"low","#,
            r#""updatedBy":7,"updatedByName":"Invigilator","#,
            r#""updatedAt":"2026-11-28T10:00:00Z","institutionId":{tenant},"sentAtUs":{sent}}}"#
        ),
        seq = seq,
        tenant = json_id(tenant),
        sent = sent_at_us
    )
}

/// A tenant id as JSON: a number when it is one, else a string.
pub fn json_id(id: &str) -> String {
    if !id.is_empty() && id.len() < 16 && id.bytes().all(|b| b.is_ascii_digit()) {
        id.to_string()
    } else {
        serde_json::Value::String(id.to_string()).to_string()
    }
}

/// The leading unsigned integer of `s`.
fn leading_u64(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    s[..digits].parse().ok()
}

/// What the generator needs from one event frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// Client-facing room name (`batch:1`, `user:7`).
    pub room: &'a str,
    /// The room's offset of this event.
    pub offset: u64,
    /// The publisher's send time, when the payload carries one.
    pub sent_at_us: Option<u64>,
}

/// Reads room, offset and `payload.sentAtUs` from the body of an event packet (the text after
/// `42`). A delivery ends with `"room":"<name>","offset":<n>}]` (the envelope's last fields,
/// after the payload), so those are read from the end, and anything else (`authenticated`,
/// `pong`) is not a delivery; `sentAtUs` is read from the start.
pub fn scan_event(p: &str) -> Option<Delivery<'_>> {
    let head = p.strip_suffix("}]")?;
    let digits = head.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (head, offset) = head.split_at(head.len() - digits);
    let offset = offset.parse().ok()?;
    let head = head.strip_suffix("\",\"offset\":")?;
    let room_at = head.rfind("\"room\":\"")? + 8;
    let room = &head[room_at..];
    if room.contains('"') {
        return None;
    }
    let sent_at_us = p
        .find("\"sentAtUs\":")
        .and_then(|i| leading_u64(&p[i + 11..]));
    Some(Delivery {
        room,
        offset,
        sent_at_us,
    })
}

/// Splits the body of an ack packet (the text after `43`) into its id and its arguments.
pub fn split_ack(p: &str) -> Option<(u64, &str)> {
    let digits = p.bytes().take_while(u8::is_ascii_digit).count();
    Some((p[..digits].parse().ok()?, &p[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_a_gateway_frame() {
        let pl = payload(3, "1", 1_764_300_000_123_456);
        let frame = format!(
            r#"["incident",{{"id":"01J","channel":"incident","event":"incident_updated","payload":{pl},"timestamp":5,"room":"batch:1","offset":42}}]"#
        );
        let d = scan_event(&frame).unwrap();
        assert_eq!(
            d,
            Delivery {
                room: "batch:1",
                offset: 42,
                sent_at_us: Some(1_764_300_000_123_456)
            }
        );
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v[1]["payload"]["institutionId"], 1);
        assert!(scan_event(r#"["authenticated",{"userId":"1"}]"#).is_none());
        let auth =
            r#"["authenticated",{"rooms":[{"room":"user:1","epoch":"1","offset":0}],"exp":9}]"#;
        assert!(scan_event(auth).is_none());
    }

    #[test]
    fn frame_is_about_330_bytes() {
        let pl = payload(123456, "1", now_us());
        let frame = format!(
            r#"42["incident",{{"id":"b19a3c5e7f2d4-123456","channel":"incident","event":"incident_updated","payload":{pl},"timestamp":1764300000000,"room":"batch:1","offset":123}}]"#
        );
        assert!((320..345).contains(&frame.len()), "{}", frame.len());
    }

    #[test]
    fn splits_acks() {
        assert_eq!(split_ack("12[{}]"), Some((12, "[{}]")));
        assert_eq!(split_ack("[{}]"), None);
    }
}
