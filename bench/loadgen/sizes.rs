//! `rtg-loadgen sizes`: bytes on the wire per delivery of every catalog event, in each shape a
//! WebSocket session may take (JSON, JSON + permessage-deflate, MessagePack, MessagePack +
//! permessage-deflate). The frames are built by the gateway's own encode-once path
//! (`Outgoing::frame_for`), so they are byte for byte what it writes; the tests prove the live
//! gateway sends exactly those frames. Counted: the whole WebSocket frame (header + payload).
//!
//! Payloads: a realistic example of each event type (`examples.json`), checked against the
//! built-in catalog first, so an example that drifts from its schema (or an event without one)
//! stops the run.

use std::sync::Arc;

use clap::Args;
use serde_json::json;

use anyhow::Context;
use realtime_gateway::{parse_payload, Catalog, Codec, Event, Outgoing, RoomName};

/// Arguments of `sizes`.
#[derive(Args, Debug, Clone)]
pub struct SizesArgs {
    /// GATEWAY_WS_COMPRESSION_MIN_BYTES: smaller messages go uncompressed.
    #[arg(long, default_value_t = 256)]
    pub min_bytes: u32,
    /// Offset of the delivery (its digits are part of the envelope).
    #[arg(long, default_value_t = 12_345)]
    pub offset: u64,
}

/// Prints one JSON object: per event type, the frame size in each shape.
pub fn run(args: SizesArgs) -> anyhow::Result<()> {
    let room = RoomName::parse("institution:3", 128).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let shapes = [
        ("json", Codec::new(false, None)),
        ("json_deflate", Codec::new(false, Some(args.min_bytes))),
        ("msgpack", Codec::new(true, None)),
        ("msgpack_deflate", Codec::new(true, Some(args.min_bytes))),
    ];
    let examples: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(include_str!("examples.json"))?;
    let catalog = Catalog::elms();
    let mut rows = Vec::new();
    let mut totals = [0usize; 4];
    let events = catalog
        .channels()
        .iter()
        .flat_map(|c| c.events().iter().map(move |e| (c, e)));
    for (channel, spec) in events {
        let example = examples
            .get(spec.name())
            .with_context(|| format!("no example of {} in examples.json", spec.name()))?;
        let payload = serde_json::value::to_raw_value(example)?;
        let parsed =
            parse_payload(&payload).map_err(|e| anyhow::anyhow!("{}: {e}", spec.name()))?;
        spec.validate(&parsed)
            .map_err(|e| anyhow::anyhow!("the example of {} is not valid: {e}", spec.name()))?;
        let event = Event {
            id: Arc::from(ulid::Ulid::new().to_string()),
            channel: Arc::from(channel.name()),
            event: Arc::from(spec.name()),
            tenant: Arc::from("3"),
            payload,
            timestamp: 1_764_300_000_123,
        };
        let raw = serde_json::value::to_raw_value(&event.client_envelope(&room, args.offset))?;
        let out = Outgoing::new(event.channel.clone(), raw);
        let mut row = json!({ "event": spec.name(), "channel": channel.name() });
        for (i, (name, codec)) in shapes.iter().enumerate() {
            let n = out.frame_for(*codec).len();
            totals[i] += n;
            row[*name] = json!(n);
        }
        rows.push(row);
    }
    let count = rows.len().max(1) as f64;
    let mean = |i: usize| (totals[i] as f64 / count * 10.0).round() / 10.0;
    let report = json!({
        "type": "sizes",
        "min_bytes": args.min_bytes,
        "events": rows,
        "mean": {
            "json": mean(0),
            "json_deflate": mean(1),
            "msgpack": mean(2),
            "msgpack_deflate": mean(3),
        },
    });
    println!("{report}");
    Ok(())
}
