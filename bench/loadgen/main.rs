//! `rtg-loadgen`: the load generator of the benchmark harness (`bench/README.md`).
//!
//! - `clients`: many authenticated Socket.IO connections (WebSocket, long-polling, or polling
//!   then upgrade) that measure delivery delay and check every room offset for loss and doubles;
//! - `publish`: events at a fixed rate through the Redis function or the publish API;
//! - `floor`: the CPU cost of one loopback TCP write of an event-sized frame;
//! - `sizes`: bytes on the wire per delivery of each catalog event, in every encoding.
//!
//! Every subcommand prints JSON on stdout (one object per line).

mod clients;
mod deflate;
mod floor;
mod hist;
mod polling;
mod procstat;
mod proto;
mod publish;
mod sizes;
mod transport;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rtg-loadgen",
    about = "Load generator for realtime-gateway benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open and hold authenticated connections; report deliveries, loss and latency.
    Clients(Box<clients::ClientsArgs>),
    /// Publish events at a fixed rate; report what was sent and each room's last offset.
    Publish(Box<publish::PublishArgs>),
    /// Measure the CPU cost of one loopback TCP write.
    Floor(floor::FloorArgs),
    /// Bytes on the wire per delivery of every catalog event, JSON / deflate / msgpack.
    Sizes(sizes::SizesArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Clients(a) => clients::run(*a),
        Command::Publish(a) => publish::run(*a),
        Command::Floor(a) => floor::run(a),
        Command::Sizes(a) => sizes::run(a),
    }
}
