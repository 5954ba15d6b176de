//! `rtg-loadgen`: the load generator of the benchmark harness (`bench/README.md`).
//!
//! - `clients`: many authenticated Socket.IO connections that measure delivery delay and check
//!   every room offset for loss and doubles;
//! - `publish`: events at a fixed rate through the Redis function or the publish API;
//! - `floor`: the CPU cost of one loopback TCP write of an event-sized frame.
//!
//! Every subcommand prints JSON on stdout (one object per line).

mod clients;
mod floor;
mod hist;
mod procstat;
mod proto;
mod publish;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Clients(a) => clients::run(*a),
        Command::Publish(a) => publish::run(*a),
        Command::Floor(a) => floor::run(a),
    }
}
