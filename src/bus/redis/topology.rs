//! Who owns which slot of a Redis Cluster: the slot of a key or channel, and the slot map read
//! with `CLUSTER SLOTS`.
//!
//! The subscriber keeps its own map (rather than the cluster client's) because sharded
//! subscriptions must go to one primary per slot, and it has to notice by itself when a slot's
//! owner changes so it can subscribe again and read the gap.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo, Value};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of a key or shard channel: CRC16 of its hash tag (the part between the first `{`
/// and the next `}` when not empty), else of the whole name.
pub fn slot_of(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// One contiguous range of slots and the primary that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    first: u16,
    last: u16,
    /// `host:port` of the primary.
    primary: String,
}

/// The cluster's slot map: ranges sorted by first slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    ranges: Vec<Range>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply; `asked` is the `host:port` the reply came from (a node
    /// that does not know its own address reports an empty host).
    pub fn parse(reply: &Value, asked: &str) -> Result<SlotMap, String> {
        let Value::Array(items) = reply else {
            return Err(format!("CLUSTER SLOTS answered {reply:?}"));
        };
        let asked_host = asked.rsplit_once(':').map(|(h, _)| h).unwrap_or(asked);
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let Value::Array(parts) = item else {
                return Err("CLUSTER SLOTS: a range is not an array".into());
            };
            let int = |v: Option<&Value>| match v {
                Some(Value::Int(i)) => u16::try_from(*i).ok(),
                _ => None,
            };
            let (Some(first), Some(last)) = (int(parts.first()), int(parts.get(1))) else {
                return Err("CLUSTER SLOTS: a range has no bounds".into());
            };
            let Some(Value::Array(node)) = parts.get(2) else {
                return Err("CLUSTER SLOTS: a range has no primary".into());
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_string()
            } else {
                host
            };
            let Some(Value::Int(port)) = node.get(1) else {
                return Err("CLUSTER SLOTS: a primary has no port".into());
            };
            ranges.push(Range {
                first,
                last,
                primary: format!("{host}:{port}"),
            });
        }
        ranges.sort_by_key(|r| r.first);
        Ok(SlotMap { ranges })
    }

    /// `host:port` of the primary serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let i = self.ranges.partition_point(|r| r.first <= slot);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (slot <= r.last).then_some(r.primary.as_str())
    }

    /// Every primary that serves at least one slot.
    pub fn primaries(&self) -> BTreeSet<String> {
        self.ranges.iter().map(|r| r.primary.clone()).collect()
    }

    /// Whether every slot has an owner.
    pub fn is_complete(&self) -> bool {
        let mut next: u32 = 0;
        for r in &self.ranges {
            if u32::from(r.first) != next {
                return false;
            }
            next = u32::from(r.last) + 1;
        }
        next == u32::from(SLOTS)
    }
}

/// `host:port` of a `redis://` URL.
pub fn address_of(url: &str) -> Option<String> {
    match url.into_connection_info().ok()?.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some(format!("{host}:{port}"))
        }
        _ => None,
    }
}

/// A client for the node at `host:port`, with the credentials and TLS of `seed_url`; `resp3`
/// for a connection that receives pushes (sharded pub/sub).
pub fn node_client(seed_url: &str, address: &str, resp3: bool) -> Result<redis::Client, String> {
    let info = seed_url
        .into_connection_info()
        .map_err(|e| format!("invalid seed URL: {e}"))?;
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("not a host:port address: {address}"))?;
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    let mut info = info.set_addr(addr);
    if resp3 {
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        info = info.set_redis_settings(redis);
    }
    redis::Client::open(info).map_err(|e| e.to_string())
}

/// Reads the slot map from the first of `candidates` (`host:port`) that answers.
pub async fn fetch(
    seed_url: &str,
    candidates: &[String],
    timeout: Duration,
) -> Result<SlotMap, String> {
    let mut last_error = String::from("no cluster node to ask");
    for address in candidates {
        let attempt = async {
            let client = node_client(seed_url, address, false)?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let reply: Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            SlotMap::parse(&reply, address)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(map)) if map.is_complete() => return Ok(map),
            Ok(Ok(_)) => last_error = format!("{address}: not every slot has an owner"),
            Ok(Err(e)) => last_error = format!("{address}: {e}"),
            Err(_) => last_error = format!("{address}: timed out"),
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_hash_tags() {
        // Known values from `CLUSTER KEYSLOT`.
        assert_eq!(slot_of("rtg:{1/batch:1}"), 7330);
        assert_eq!(slot_of("rtg:{1/batch:1}:h"), 7330);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{}foo"), slot_of("{}foo"));
        assert_ne!(slot_of("{}foo"), slot_of("foo"));
    }

    fn range(first: i64, last: i64, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(first),
            Value::Int(last),
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
            ]),
        ])
    }

    #[test]
    fn slot_map_finds_owners() {
        let reply = Value::Array(vec![range(5461, 16383, 2), range(0, 5460, 1)]);
        let map = SlotMap::parse(&reply, "127.0.0.1:1").unwrap();
        assert!(map.is_complete());
        assert_eq!(map.owner(0), Some("127.0.0.1:1"));
        assert_eq!(map.owner(5460), Some("127.0.0.1:1"));
        assert_eq!(map.owner(5461), Some("127.0.0.1:2"));
        assert_eq!(map.owner(16383), Some("127.0.0.1:2"));
        assert_eq!(map.primaries().len(), 2);
        let partial = SlotMap::parse(&Value::Array(vec![range(0, 10, 1)]), "x:1").unwrap();
        assert!(!partial.is_complete());
        assert_eq!(partial.owner(11), None);
    }
}
