//! The soak's client connections: their kinds and what each must do, the messages they send
//! and how an echo is checked byte for byte, how they connect (in batches, from the internet
//! host's namespace) and the tally of what came back.

use crate::{Error, MESSAGE};
use idlegate::survive::keepalive::Keepalive;
use idlegate::sys::netns;
use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Steady,
    Keepalive,
    Relay,
    Expiring,
}

pub const KINDS: [Kind; 4] = [Kind::Steady, Kind::Keepalive, Kind::Relay, Kind::Expiring];

/// How many connections go straight to the gateway and how many through the relay.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub straight: usize,
    pub relayed: usize,
}

impl Load {
    pub fn total(self) -> usize {
        self.straight + self.relayed
    }

    /// Connection `i`'s kind, in the order they connect: the relayed ones first (the relay
    /// keeps its own connections alive while the rest connect), then the straight ones a third
    /// each, the steady ones last.
    pub fn kind_of(self, i: usize) -> Kind {
        let third = self.straight / 3;
        match i.checked_sub(self.relayed) {
            None => Kind::Relay,
            Some(j) if j < third => Kind::Keepalive,
            Some(j) if j < 2 * third => Kind::Expiring,
            Some(_) => Kind::Steady,
        }
    }
}

/// Message `seq`: its number, then filler.
pub fn message(seq: u64) -> [u8; MESSAGE] {
    let mut m = [0x5a; MESSAGE];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Steady => "steady",
            Kind::Keepalive => "keepalive",
            Kind::Relay => "relay",
            Kind::Expiring => "expiring",
        }
    }

    /// The gap before the next message, from a 0..1 draw.
    pub fn gap(self, draw: f64) -> Duration {
        match self {
            Kind::Steady => Duration::from_secs_f64(0.2 + 1.8 * draw),
            // Past the 4 s idle timeout by 1.5 s at least, a margin a loaded machine holds.
            _ => Duration::from_secs_f64(5.5 + 2.5 * draw),
        }
    }
}

/// One client connection and what it is waiting for.
pub struct Client {
    pub kind: Kind,
    pub stream: TcpStream,
    pub seq: u64,
    /// The echo of message `seq` received so far: `echo[..echoed]`.
    pub echo: [u8; MESSAGE],
    pub echoed: usize,
    /// A message is out and not yet echoed whole.
    pub waiting: bool,
    pub done: bool,
    pub failed: Option<String>,
    /// When the soak saw it fail.
    pub failed_at: Option<Instant>,
}

impl Client {
    /// Sends the next message; false, and the connection done, if it could not.
    pub fn send_next(&mut self) -> bool {
        self.seq += 1;
        match self.stream.write(&message(self.seq)) {
            Ok(MESSAGE) => {
                self.waiting = true;
                self.echoed = 0;
                return true;
            }
            Ok(n) => self.failed = Some(format!("wrote {n} of {MESSAGE} bytes")),
            Err(e) => self.failed = Some(e.to_string()),
        }
        self.done = true;
        false
    }
}

#[derive(Default, Clone, Copy)]
pub struct Tally {
    pub connections: usize,
    pub messages: u64,
    pub bytes: u64,
    pub lost: u64,
    pub failed: usize,
}

/// xorshift, fixed seed: the same run every time.
pub struct Draw(pub u64);

impl Draw {
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Connects the clients `range` names from namespace `ns`, in batches of 250, eight batches at
/// once, and sends each batch on `batches` as it is made (one after another, 10,000 took over
/// 5 s), or the first failure; returns when all are made or one failed.
pub fn connect_all(
    ns: &str,
    range: std::ops::Range<usize>,
    load: Load,
    relay_at: SocketAddr,
    frontend: SocketAddr,
    keepalive: Keepalive,
    batches: std::sync::mpsc::Sender<Result<Vec<(Kind, std::net::TcpStream)>, String>>,
) {
    let indices: Vec<usize> = range.collect();
    let all: Vec<Vec<usize>> = indices.chunks(250).map(<[usize]>::to_vec).collect();
    for group in all.chunks(8) {
        let mut threads = Vec::with_capacity(group.len());
        for batch in group {
            let batch = batch.clone();
            let thread = netns::spawn_in(ns, move || {
                connect_batch(&batch, load, relay_at, frontend, keepalive)
            });
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    let _ = batches.send(Err(format!("entering {ns}: {e}")));
                    return;
                }
            }
        }
        for thread in threads {
            let made = match thread.join() {
                Ok(made) => made.map_err(|e| format!("connecting: {e}")),
                Err(_) => Err("a connect thread panicked".to_string()),
            };
            let failed = made.is_err();
            if batches.send(made).is_err() || failed {
                return;
            }
        }
    }
}

/// Registers new client connections for reading; returns their indices.
pub fn register(
    poll: &mut Poll,
    clients: &mut Vec<Client>,
    made: Vec<(Kind, std::net::TcpStream)>,
) -> Result<std::ops::Range<usize>, Error> {
    let from = clients.len();
    for (kind, stream) in made {
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        let token = Token(2 * clients.len());
        poll.registry()
            .register(&mut stream, token, Interest::READABLE)?;
        clients.push(Client {
            kind,
            stream,
            seq: 0,
            echo: [0; MESSAGE],
            echoed: 0,
            waiting: false,
            done: false,
            failed: None,
            failed_at: None,
        });
    }
    Ok(from..clients.len())
}

/// Connects the clients `batch` names, from the calling thread's namespace.
pub fn connect_batch(
    batch: &[usize],
    load: Load,
    relay_at: SocketAddr,
    frontend: SocketAddr,
    keepalive: Keepalive,
) -> std::io::Result<Vec<(Kind, std::net::TcpStream)>> {
    batch
        .iter()
        .map(|&i| {
            let kind = load.kind_of(i);
            let to = if kind == Kind::Relay {
                relay_at
            } else {
                frontend
            };
            let stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
            match kind {
                Kind::Keepalive => keepalive.apply(&stream)?,
                // The message after the gap must fail, not hang: 3 s for an ACK.
                Kind::Expiring => socket2::SockRef::from(&stream)
                    .set_tcp_user_timeout(Some(Duration::from_secs(3)))?,
                _ => {}
            }
            stream.set_nodelay(true)?;
            Ok((kind, stream))
        })
        .collect()
}

/// Reads a client's echo; a whole one, byte for byte the message sent, ends the wait for it.
pub fn receive(c: &mut Client, buf: &mut [u8], tally: &mut Tally) {
    loop {
        let room = MESSAGE - c.echoed;
        match c.stream.read(buf) {
            Ok(0) => {
                c.failed
                    .get_or_insert_with(|| "closed by the far end".into());
                c.done = true;
                return;
            }
            Ok(n) if !c.waiting || n > room => {
                c.failed = Some(format!("{n} bytes more than message {} was", c.seq));
                c.done = true;
                return;
            }
            Ok(n) => {
                c.echo[c.echoed..c.echoed + n].copy_from_slice(&buf[..n]);
                c.echoed += n;
                tally.bytes += n as u64;
                if c.echoed == MESSAGE {
                    if c.echo != message(c.seq) {
                        c.failed = Some(format!("the echo of message {} differs from it", c.seq));
                        c.done = true;
                        return;
                    }
                    c.waiting = false;
                    c.echoed = 0;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                c.failed.get_or_insert_with(|| e.to_string());
                c.done = true;
                return;
            }
        }
    }
}
