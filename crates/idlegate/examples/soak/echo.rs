//! The echo server, `soak echo ADDR CONNECTIONS`: a process of its own in `vm1` (so that it has
//! its own descriptor limit) that writes back every byte it reads, until killed.

use crate::Error;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

const LISTENER: Token = Token(usize::MAX);

/// One server-side connection: echoes what it reads.
struct Echo {
    stream: TcpStream,
    pending: Vec<u8>,
}

/// The echo server: every byte read on every connection is written back, until killed.
pub fn echo_server(addr: SocketAddr) -> Result<(), Error> {
    let std_listener = idlegate::sys::socket::listen(addr)?;
    std_listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(std_listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening");
    // By token; a connection that ended is closed and its place stays empty.
    let mut echoes: Vec<Option<Echo>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            match event.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let token = Token(echoes.len());
                            poll.registry().register(
                                &mut stream,
                                token,
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            echoes.push(Some(Echo {
                                stream,
                                pending: Vec::new(),
                            }));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                },
                Token(t) => {
                    if let Some(echo) = echoes.get_mut(t).and_then(Option::as_mut) {
                        if !serve(echo, &mut buf) {
                            poll.registry().deregister(&mut echo.stream)?;
                            echoes[t] = None;
                        }
                    }
                }
            }
        }
    }
}

/// Echoes what the server side of a connection can read, keeping what it cannot write yet
/// until the socket is writable again (and reading no more meanwhile); false once the
/// connection has ended.
fn serve(echo: &mut Echo, buf: &mut [u8]) -> bool {
    loop {
        while !echo.pending.is_empty() {
            match echo.stream.write(&echo.pending) {
                Ok(n) => drop(echo.pending.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        match echo.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => echo.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}
