//! Connection setup rate, for `scripts/bench-relay`.
//!
//! `connrate serve ADDR` answers every connection's one byte with one byte and closes.
//! `connrate measure ADDR SECONDS` opens connections to ADDR from 4 threads, each one
//! exchanging a byte and closing, and prints how many completed per second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(args.get(2).ok_or("serve ADDR")?.parse()?),
        Some("measure") => {
            let addr: SocketAddr = args.get(2).ok_or("measure ADDR SECONDS")?.parse()?;
            let secs: u64 = args.get(3).ok_or("measure ADDR SECONDS")?.parse()?;
            measure(addr, Duration::from_secs(secs))
        }
        _ => Err("usage: connrate serve ADDR | connrate measure ADDR SECONDS".into()),
    }
}

fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr)?;
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut conn = conn;
            let mut byte = [0u8; 1];
            if conn.read_exact(&mut byte).is_ok() {
                let _ = conn.write_all(&byte);
            }
        });
    }
    Ok(())
}

fn measure(addr: SocketAddr, length: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut conn) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let mut byte = [7u8; 1];
                    if conn.write_all(&byte).is_ok() && conn.read_exact(&mut byte).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0}");
    Ok(())
}
