//! The timed run: every client connected, messages exchanged for the soak's length, the table
//! of what came back, and the gateway's and the relay's memory and descriptors sampled at the
//! start and the end.

use crate::client::{connect_all, receive, register, Client, Draw, Kind, Load, Tally, KINDS};
use crate::faults::Live;
use crate::{Error, FRONTEND, IDLE_TIMEOUT, KEEPALIVE, RELAY_AT};
use idlegate::survive::keepalive::Keepalive;
use mio::{Events, Poll, Token};
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The timed run: connects every client from the internet host, exchanges messages for
/// `length`, prints the table and returns the connections, still open.
pub fn soak(
    internet: &str,
    load: Load,
    length: Duration,
    lab_pid: u32,
    relay_pid: u32,
) -> Result<Live, Error> {
    let frontend: SocketAddr = FRONTEND.parse()?;
    let relay_at: SocketAddr = RELAY_AT.parse()?;
    let mut poll = Poll::new()?;
    let keepalive = Keepalive::parse(KEEPALIVE)?;
    let mut clients: Vec<Client> = Vec::with_capacity(load.total());
    let relay_base = sample(relay_pid).1;
    let drops_before = backlog_drops();
    // The relayed connections first, all of them, from the internet host's namespace: the
    // relay keeps its own connections to the gateway alive meanwhile.
    let (batches, connected) = std::sync::mpsc::channel();
    connect_all(
        internet,
        0..load.relayed,
        load,
        relay_at,
        frontend,
        keepalive,
        batches,
    );
    for made in connected.iter() {
        register(&mut poll, &mut clients, made?)?;
    }
    // A connect returns once the kernel has the connection, before the relay accepts it: go
    // on once the relay holds them all (two descriptors each), or has taken no more for a
    // second (the table will show what it did not carry).
    let (mut held, mut since) = (0, Instant::now());
    while held < relay_base + 2 * load.relayed && since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
        let now = sample(relay_pid).1;
        if now != held {
            (held, since) = (now, Instant::now());
        }
    }
    // Then the straight ones, in the background while the soak runs: each sends its first
    // message within a second of connecting, or four for those kept alive (all at once, 20,000
    // first messages in one second overflowed this 2-core machine's kernel backlog).
    let (batches, connected) = std::sync::mpsc::channel();
    let straight = load.relayed..load.total();
    let ns = internet.to_string();
    std::thread::spawn(move || {
        connect_all(&ns, straight, load, relay_at, frontend, keepalive, batches)
    });
    let mut connecting = Some(connected);
    let mut start = None;

    let mut draw = Draw(0x2545_f491_4f6c_dd1d);
    let mut due: BinaryHeap<std::cmp::Reverse<(Instant, usize)>> = BinaryHeap::new();
    let first = |kind: Kind, draw: &mut Draw| match kind {
        Kind::Steady | Kind::Expiring => Duration::from_secs_f64(draw.next()),
        Kind::Keepalive | Kind::Relay => Duration::from_secs_f64(4.0 * draw.next()),
    };
    let begin = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        due.push(std::cmp::Reverse((begin + first(c.kind, &mut draw), i)));
    }
    let end = begin + length;
    let mut tally = [Tally::default(); 4];
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(connected) = &connecting {
            match connected.try_recv() {
                Ok(made) => {
                    let now = Instant::now();
                    for i in register(&mut poll, &mut clients, made?)? {
                        let kind = clients[i].kind;
                        due.push(std::cmp::Reverse((now + first(kind, &mut draw), i)));
                    }
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    // Every connection is up: the figures at the start.
                    connecting = None;
                    println!(
                        "connected: {} through the relay, then {} straight in {:.1} s of the soak",
                        load.relayed,
                        load.straight,
                        begin.elapsed().as_secs_f64()
                    );
                    start = Some((sample(lab_pid), sample(relay_pid)));
                }
            }
        }
        let now = Instant::now();
        // Send what is due, unless the soak is over.
        while let Some(std::cmp::Reverse((at, i))) = due.peek().copied() {
            if at > now {
                break;
            }
            due.pop();
            let c = &mut clients[i];
            if c.done || c.waiting || now >= end {
                continue;
            }
            if c.send_next() {
                tally[c.kind as usize].messages += 1;
            }
        }
        let all_idle = clients.iter().all(|c| c.done || !c.waiting);
        if now >= end && (all_idle || now >= end + Duration::from_secs(10)) {
            break;
        }
        let next = due
            .peek()
            .map(|std::cmp::Reverse((at, _))| at.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        poll.poll(&mut events, Some(next))?;
        for event in events.iter() {
            let Token(t) = event.token();
            let c = &mut clients[t / 2];
            receive(c, &mut buf, &mut tally[c.kind as usize]);
            if c.done && c.failed_at.is_none() {
                c.failed_at = Some(Instant::now());
            }
            if !c.done && !c.waiting {
                let gap = c.kind.gap(draw.next());
                due.push(std::cmp::Reverse((Instant::now() + gap, t / 2)));
            }
        }
    }
    let ((start_gateway, start_relay), end_gateway, end_relay) = match start {
        Some(start) => (start, sample(lab_pid), sample(relay_pid)),
        None => return Err("the soak ended before every connection was up".into()),
    };
    for c in &clients {
        tally[c.kind as usize].connections += 1;
    }

    // A message still out at the end is lost, except on a connection that expired as designed.
    let mut expired_as_designed = 0;
    for c in &clients {
        let t = &mut tally[c.kind as usize];
        match (c.kind, &c.failed) {
            (Kind::Expiring, Some(_)) => expired_as_designed += 1,
            (Kind::Expiring, None) => {}
            (_, Some(e)) => {
                t.failed += 1;
                let at = c
                    .failed_at
                    .map_or(0.0, |at| at.duration_since(begin).as_secs_f64());
                eprintln!(
                    "{} connection failed {at:.1} s into the soak: {e}",
                    c.kind.name()
                );
            }
            (_, None) => t.lost += u64::from(c.waiting),
        }
    }
    println!(
        "soak: {} connections through the relay and {} straight, all through the lab's gateway, for {} s (idle timeout {} s)",
        load.relayed,
        load.straight,
        length.as_secs(),
        IDLE_TIMEOUT.as_secs()
    );
    println!(
        "{:<10} {:>11} {:>10} {:>12} {:>6} {:>7}",
        "kind", "connections", "messages", "bytes echoed", "lost", "failed"
    );
    for kind in KINDS {
        let t = tally[kind as usize];
        println!(
            "{:<10} {:>11} {:>10} {:>12} {:>6} {:>7}",
            kind.name(),
            t.connections,
            t.messages,
            t.bytes,
            if kind == Kind::Expiring {
                "-".to_string()
            } else {
                t.lost.to_string()
            },
            if kind == Kind::Expiring {
                "-".to_string()
            } else {
                t.failed.to_string()
            }
        );
    }
    println!(
        "kernel backlog drops (softnet, whole machine) while connecting and running: {}",
        backlog_drops() - drops_before
    );
    let expiring = tally[Kind::Expiring as usize].connections;
    println!("expiring: {expired_as_designed} of {expiring} lost their connection after the long gap, as the box promises");
    for (what, start, end) in [
        ("gateway (lab up)", start_gateway, end_gateway),
        ("relay", start_relay, end_relay),
    ] {
        println!(
            "{what:<17} RSS {} → {} KiB, open descriptors {} → {}",
            start.0, end.0, start.1, end.1
        );
    }
    let broken: u64 = [Kind::Steady, Kind::Keepalive, Kind::Relay]
        .iter()
        .map(|&k| tally[k as usize].lost + tally[k as usize].failed as u64)
        .sum();
    if broken > 0 {
        return Err(format!("{broken} promised messages or connections lost").into());
    }
    for (what, start, end) in [
        ("gateway", start_gateway, end_gateway),
        ("relay", start_relay, end_relay),
    ] {
        if end.1 > start.1 || end.0 > start.0 + start.0 / 20 + 1024 {
            return Err(format!("the {what}'s descriptors or memory grew").into());
        }
    }
    Ok(Live { poll, clients })
}

/// Packets this machine's kernel dropped for a full backlog (softnet), all CPUs.
pub fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum()
}

/// A process's resident memory (KiB) and open descriptors.
pub fn sample(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}
