//! `rtg-loadgen publish`: M events at R per second, through the `rtg_publish` Redis function
//! (pipelined) or the gateway's `POST /v1/publish`. Every payload carries `sentAtUs`.
//!
//! The report lists the last offset of every room published to (`rooms`), which is what
//! `clients` compares its deliveries with.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::procstat::round3;
use crate::proto::{self, now_us};

/// Arguments of `publish`.
#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// Redis server the gateways use (with --cluster: the cluster's nodes, comma separated).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// --redis is a Redis Cluster: each event goes to its room's slot owner (SPUBLISH mode).
    #[arg(long)]
    pub cluster: bool,
    /// Publish through this gateway's HTTP API instead (`http://host:port`).
    #[arg(long)]
    pub http: Option<String>,
    /// Publish API key (with --http).
    #[arg(
        long,
        env = "PUBLISH_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub key: String,
    /// Room to publish to (repeatable; events go round-robin over them).
    #[arg(long = "room")]
    pub rooms: Vec<String>,
    /// Publish to random user rooms `user:<user-base + 0..N>` instead.
    #[arg(long, default_value_t = 0)]
    pub user_rooms: u64,
    /// First user id of --user-rooms.
    #[arg(long, default_value_t = 0)]
    pub user_base: u64,
    /// Events to send.
    #[arg(long, default_value_t = 100)]
    pub count: u64,
    /// Events per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Tenant of the rooms.
    #[arg(long, default_value = "1")]
    pub tenant: String,
    /// Key prefix (the gateways' GATEWAY_REDIS_PREFIX).
    #[arg(long, default_value = "rtg")]
    pub prefix: String,
    /// History length per room (the gateways' GATEWAY_HISTORY_MAX_LEN).
    #[arg(long, default_value_t = 1000)]
    pub history_max_len: u64,
    /// History lifetime in seconds (the gateways' GATEWAY_HISTORY_TTL).
    #[arg(long, default_value_t = 21600)]
    pub history_ttl: u64,
    /// Most commands in one Redis pipeline.
    #[arg(long, default_value_t = 100)]
    pub batch: u64,
    /// HTTP requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Also write the report to this file (written whole, then renamed into place).
    #[arg(long)]
    pub out: Option<String>,
}

/// Runs the `publish` subcommand.
pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(main(&args))?;
    println!("{report}");
    if let Some(path) = &args.out {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, report.to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

struct Tally {
    ok: u64,
    errors: u64,
    samples: Vec<String>,
    rooms: HashMap<String, u64>,
}

impl Tally {
    fn offset(&mut self, room: &str, offset: u64) {
        self.ok += 1;
        let e = self.rooms.entry(room.to_string()).or_default();
        *e = (*e).max(offset);
    }

    fn error(&mut self, n: u64, e: String) {
        self.errors += n;
        if self.samples.len() < 5 {
            self.samples.push(e.chars().take(200).collect());
        }
    }
}

fn pick_room(args: &PublishArgs, seq: u64) -> String {
    if args.user_rooms > 0 {
        let u = args.user_base + rand::thread_rng().gen_range(0..args.user_rooms);
        format!("user:{u}")
    } else {
        args.rooms[(seq % args.rooms.len() as u64) as usize].clone()
    }
}

/// Events due by now at the configured rate (the first one at once).
fn due(args: &PublishArgs, start: Instant) -> u64 {
    if args.rate <= 0.0 {
        return args.count;
    }
    let due = (start.elapsed().as_secs_f64() * args.rate).floor() as u64 + 1;
    due.min(args.count)
}

/// Waits until more than `sent` events are due at the rate; returns how many are due.
async fn wait_due(args: &PublishArgs, start: Instant, sent: u64) -> u64 {
    loop {
        let d = due(args, start);
        if d > sent {
            return d;
        }
        if args.rate > 0.0 {
            let at = start + Duration::from_secs_f64(sent as f64 / args.rate);
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

async fn main(args: &PublishArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.user_rooms > 0 || !args.rooms.is_empty(),
        "give --room (repeatable) or --user-rooms N"
    );
    let mut tally = Tally {
        ok: 0,
        errors: 0,
        samples: Vec::new(),
        rooms: HashMap::new(),
    };
    let run_id = format!("{:x}", now_us());
    let first_sent = now_us();
    let start = Instant::now();
    let mut behind_max = 0u64;
    let via = if let Some(url) = &args.http {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .build()?;
        let url = format!("{}/v1/publish", url.trim_end_matches('/'));
        let mut inflight: JoinSet<(String, Result<String, String>)> = JoinSet::new();
        let mut sent = 0;
        while sent < args.count {
            let d = wait_due(args, start, sent).await;
            behind_max = behind_max.max(d - sent);
            while inflight.len() >= args.concurrency.max(1) {
                if let Some(Ok((room, r))) = inflight.join_next().await {
                    http_result(&mut tally, &room, r);
                }
            }
            let room = pick_room(args, sent);
            let body = format!(
                r#"{{"channel":"{}","event":"{}","institutionId":{},"rooms":[{}],"id":"b{run_id}-{sent}","payload":{}}}"#,
                proto::CHANNEL,
                proto::EVENT,
                proto::json_id(&args.tenant),
                Value::String(room.clone()),
                proto::payload(sent, &args.tenant, now_us()),
            );
            let req = client
                .post(&url)
                .bearer_auth(&args.key)
                .header("content-type", "application/json")
                .body(body);
            inflight.spawn(async move {
                let r = match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.text().await {
                            Ok(t) if status == 200 => Ok(t),
                            Ok(t) => Err(format!("{status}: {t:.200}")),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                (room, r)
            });
            sent += 1;
        }
        while let Some(r) = inflight.join_next().await {
            if let Ok((room, r)) = r {
                http_result(&mut tally, &room, r);
            }
        }
        "http"
    } else if args.cluster {
        let seeds: Vec<&str> = args.redis.split(',').collect();
        let client = redis::cluster::ClusterClient::new(seeds)?;
        let con = client.get_async_connection().await?;
        let mut sent = 0;
        while sent < args.count {
            let d = wait_due(args, start, sent).await;
            behind_max = behind_max.max(d - sent);
            let k = (d - sent).min(args.batch.max(1));
            // Rooms of one batch live in different slots: one command each, concurrently.
            let calls = (sent..sent + k).map(|seq| {
                let room = pick_room(args, seq);
                let mut cmd = fcall(args, &run_id, seq, &room);
                cmd.arg("shard");
                let mut con = con.clone();
                async move { (room, cmd.query_async::<(u64, String)>(&mut con).await) }
            });
            for (room, reply) in futures_util::future::join_all(calls).await {
                match reply {
                    Ok((offset, _epoch)) => tally.offset(&room, offset),
                    Err(e) => tally.error(1, e.to_string()),
                }
            }
            sent += k;
        }
        "redis-cluster"
    } else {
        let client = redis::Client::open(args.redis.as_str())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        let mut sent = 0;
        while sent < args.count {
            let d = wait_due(args, start, sent).await;
            behind_max = behind_max.max(d - sent);
            let k = (d - sent).min(args.batch.max(1));
            let mut pipe = redis::pipe();
            let mut rooms = Vec::with_capacity(k as usize);
            for seq in sent..sent + k {
                let room = pick_room(args, seq);
                pipe.add_command(fcall(args, &run_id, seq, &room));
                rooms.push(room);
            }
            match pipe.query_async::<Vec<(u64, String)>>(&mut con).await {
                Ok(replies) => {
                    for (room, (offset, _epoch)) in rooms.iter().zip(replies) {
                        tally.offset(room, offset);
                    }
                }
                Err(e) => tally.error(k, e.to_string()),
            }
            sent += k;
        }
        "redis"
    };
    let secs = start.elapsed().as_secs_f64();
    let sent = tally.ok + tally.errors;
    Ok(json!({
        "type": "publish",
        "via": via,
        "sent": sent,
        "ok": tally.ok,
        "errors": tally.errors,
        "error_samples": tally.samples,
        "rate": args.rate,
        "achieved_rate": if secs > 0.0 { round3(sent as f64 / secs) } else { 0.0 },
        "most_behind": behind_max,
        "duration_secs": round3(secs),
        "first_sent_us": first_sent,
        "last_sent_us": now_us(),
        "rooms": tally.rooms,
    }))
}

/// One `rtg_publish` call for event `seq` in `room`.
fn fcall(args: &PublishArgs, run_id: &str, seq: u64, room: &str) -> redis::Cmd {
    let channel = format!("{}:{{{}/{}}}", args.prefix, args.tenant, room);
    let envelope = format!(
        r#"{{"id":"b{run_id}-{seq}","channel":"{}","event":"{}","institutionId":{},"payload":{},"timestamp":{}}}"#,
        proto::CHANNEL,
        proto::EVENT,
        proto::json_id(&args.tenant),
        proto::payload(seq, &args.tenant, now_us()),
        now_us() / 1000,
    );
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("rtg_publish")
        .arg(2)
        .arg(format!("{channel}:h"))
        .arg(format!("{channel}:m"))
        .arg(&channel)
        .arg(envelope)
        .arg(args.history_max_len)
        .arg(args.history_ttl);
    cmd
}

fn http_result(tally: &mut Tally, room: &str, r: Result<String, String>) {
    match r {
        Ok(text) => {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let offset = v
                .get("rooms")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(|r| r.get("offset"))
                .and_then(Value::as_u64);
            match offset {
                Some(o) => tally.offset(room, o),
                None => tally.error(1, format!("unexpected answer {text:.200}")),
            }
        }
        Err(e) => tally.error(1, e),
    }
}
