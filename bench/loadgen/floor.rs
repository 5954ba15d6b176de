//! `rtg-loadgen floor`: the CPU cost of one plain loopback TCP write of an event-sized frame.
//!
//! Any server that pushes one event to N WebSocket clients makes N such writes (one per
//! connection), so `1 / write_cpu_us` is a ceiling on deliveries per second per core on this
//! machine, whatever the server does besides.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::procstat::round3;

/// Arguments of `floor`.
#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Writes to make.
    #[arg(long, default_value_t = 200_000)]
    pub writes: u64,
    /// Bytes per write (a delivered event frame is about 330).
    #[arg(long, default_value_t = 330)]
    pub frame: usize,
    /// Connections written round-robin (one write per frame, like a fan-out).
    #[arg(long, default_value_t = 64)]
    pub pairs: usize,
}

fn cpu_secs(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Runs the `floor` subcommand.
pub fn run(args: FloorArgs) -> anyhow::Result<()> {
    let pairs = args.pairs.max(1);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(pairs);
    let mut readers = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let w = TcpStream::connect(addr)?;
        w.set_nodelay(true)?;
        let (r, _) = listener.accept()?;
        r.set_nonblocking(true)?;
        writers.push(w);
        readers.push(r);
    }
    let total = args.writes * args.frame as u64;
    let reader = std::thread::spawn(move || -> u64 {
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        let mut fds: Vec<libc::pollfd> = readers
            .iter()
            .map(|r| libc::pollfd {
                fd: r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while got < total {
            // SAFETY: fds is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
            if n <= 0 {
                continue;
            }
            for (i, fd) in fds.iter_mut().enumerate() {
                if fd.revents & libc::POLLIN == 0 {
                    continue;
                }
                fd.revents = 0;
                while let Ok(k) = readers[i].read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    got += k as u64;
                }
            }
        }
        got
    });
    let frame = vec![b'x'; args.frame];
    let wall = Instant::now();
    let thread0 = cpu_secs(libc::CLOCK_THREAD_CPUTIME_ID);
    let proc0 = cpu_secs(libc::CLOCK_PROCESS_CPUTIME_ID);
    for i in 0..args.writes {
        writers[(i % pairs as u64) as usize].write_all(&frame)?;
    }
    let thread_s = cpu_secs(libc::CLOCK_THREAD_CPUTIME_ID) - thread0;
    let wall_write = wall.elapsed().as_secs_f64();
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let proc_s = cpu_secs(libc::CLOCK_PROCESS_CPUTIME_ID) - proc0;
    let n = args.writes.max(1) as f64;
    let per_write = thread_s * 1e6 / n;
    println!(
        "{}",
        json!({
            "type": "floor",
            "writes": args.writes,
            "frame_bytes": args.frame,
            "pairs": pairs,
            "bytes_read": got,
            "write_cpu_us": round3(per_write),
            "write_wall_us": round3(wall_write * 1e6 / n),
            "send_and_receive_cpu_us": round3(proc_s * 1e6 / n),
            "writes_per_core_sec": if per_write > 0.0 { (1e6 / per_write).round() } else { 0.0 },
        })
    );
    Ok(())
}
