//! One test on one armed connection: its idle period, watched (a RST, an ICMP error, a FIN,
//! or echo's frames, taken as they come and bounded by the decoder), then the send or the wait
//! that says whether the path still holds the connection. What a test sees is an
//! [`Observed`]; a connection that breaks echo's protocol is [`Broken`]: nothing measured.

use super::{read_frame, Armed, Broken, Direction, Observed, Seen, DATA_SEQ, PLAIN_PAYLOAD};
use crate::measure::echo::frame::Frame;
use crate::sys::tcp_info::all_acknowledged;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Runs one test on an armed connection: idle until its time, then send (or, for a
/// server-to-client test, wait for echo's reply). `None` if abandoned.
pub(super) fn test(mut a: Armed, wait: Duration, stop: &AtomicBool) -> Option<Seen> {
    let due = a.idle_since + a.test.idle;
    // The idle period: a RST may arrive during it (reset at expiry).
    if let Some(seen) = idle_until(&mut a, due, stop)? {
        return Some(seen);
    }
    Some(match a.test.direction {
        Direction::ClientToServer => send_and_confirm(&mut a, wait),
        Direction::ServerToClient => await_later(&mut a, due + wait),
    })
}

/// Waits until `due` watching the socket. `Some(Some(seen))` if something ended the idle
/// period early, `Some(None)` at `due`, `None` if abandoned. Echo's frames are taken as they
/// come: during the idle period echo sends nothing but, with clocks that disagree, its delayed
/// reply a little early; anything else breaks its protocol.
fn idle_until(a: &mut Armed, due: Instant, stop: &AtomicBool) -> Option<Option<Seen>> {
    let mut buf = [0u8; 512];
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Some(None);
        }
        // In slices, so an abandoned round lets go promptly.
        let slice = left.min(Duration::from_millis(200));
        if a.stream.set_read_timeout(Some(slice)).is_err() {
            return Some(Some(Ok(Observed::ResetAtExpiry)));
        }
        match a.stream.read(&mut buf) {
            Ok(n) if n > 0 && a.echo => {
                if let Err(broken) = take_idle_frames(a, &buf[..n]) {
                    return Some(Some(Err(broken)));
                }
            }
            // A plain server's chatter is not kept.
            Ok(n) if n > 0 => {}
            // Echo closes only after an error frame; a FIN in the middle of a frame is not
            // echo's doing either.
            Ok(_) if a.echo && a.decoder.pending() > 0 => {
                return Some(Some(Err(Broken(format!(
                    "it ended in the middle of a frame ({} bytes)",
                    a.decoder.pending()
                )))))
            }
            // A FIN: the far end (or a proxy on the way) closed the idle connection.
            Ok(_) => return Some(Some(Ok(Observed::Closed))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(Some(Ok(Observed::ResetAtExpiry))),
        }
    }
}

/// Takes the frames echo sent during the idle period.
fn take_idle_frames(a: &mut Armed, bytes: &[u8]) -> Result<(), Broken> {
    let broken = |e: crate::measure::echo::frame::ProtocolError| Broken(e.to_string());
    a.decoder.feed(bytes).map_err(broken)?;
    while let Some(frame) = a.decoder.decode().map_err(broken)? {
        match frame {
            Frame::LaterReply { seq: 1 }
                if a.test.direction == Direction::ServerToClient && !a.early_reply =>
            {
                a.early_reply = true;
            }
            Frame::Error(why) => return Err(Broken(format!("echo ended it: {why}"))),
            other => {
                return Err(Broken(format!(
                    "echo sent {} while the connection was idle",
                    other.kind_name()
                )))
            }
        }
    }
    Ok(())
}

/// What a frame that is not the answer a test waits for says: echo ended the connection, or
/// the far end broke the protocol.
fn unexpected(frame: Frame, waiting_for: &str) -> Broken {
    match frame {
        Frame::Error(why) => Broken(format!("echo ended it: {why}")),
        other => Broken(format!(
            "echo sent {} while the probe waited for {waiting_for}",
            other.kind_name()
        )),
    }
}

/// A read that failed: bytes that are not frames break the protocol; anything else is what
/// the path did.
fn read_failed(e: &io::Error) -> Seen {
    if e.kind() == io::ErrorKind::InvalidData {
        return Err(Broken(e.to_string()));
    }
    Ok(Observed::from_error(e, true))
}

/// The client-to-server test: send, then wait for echo's confirmation (or, against a plain
/// server, the acknowledgement).
fn send_and_confirm(a: &mut Armed, wait: Duration) -> Seen {
    if !a.echo {
        return Ok(plain_send(a, wait));
    }
    let data = Frame::Data {
        seq: DATA_SEQ,
        payload: b"after idle".to_vec(),
    };
    if let Err(e) = a.stream.write_all(&data.encode()) {
        return Ok(Observed::from_error(&e, true));
    }
    let deadline = Instant::now() + wait;
    match read_frame(&mut a.stream, &mut a.decoder, deadline) {
        Ok(Some(Frame::Received { seq: DATA_SEQ })) => Ok(Observed::Alive),
        Ok(Some(other)) => Err(unexpected(other, "its data's confirmation")),
        Ok(None) if a.decoder.pending() > 0 => Err(Broken(format!(
            "it ended in the middle of a frame ({} bytes)",
            a.decoder.pending()
        ))),
        Ok(None) => Ok(Observed::ResetOnNext),
        Err(e) if e.kind() == io::ErrorKind::TimedOut && e.raw_os_error().is_none() => {
            Ok(unanswered(a))
        }
        Err(e) => read_failed(&e),
    }
}

/// Against a server that is not echo: the data is alive once TCP acknowledges it; a RST or
/// silence as with echo. (Data acknowledged by a box and not delivered passes for alive.)
fn plain_send(a: &mut Armed, wait: Duration) -> Observed {
    if let Err(e) = a.stream.write_all(PLAIN_PAYLOAD) {
        return Observed::from_error(&e, true);
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 512];
    loop {
        match all_acknowledged(a.stream.as_raw_fd()) {
            Some(true) => return Observed::Alive,
            Some(false) => {}
            None => return Observed::ResetOnNext,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Observed::Silent;
        }
        if a.stream
            .set_read_timeout(Some(left.min(Duration::from_millis(20))))
            .is_err()
        {
            return Observed::ResetOnNext;
        }
        match a.stream.read(&mut buf) {
            // Whatever the server says back is its business; a RST is ours.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Observed::ResetOnNext,
        }
    }
}

/// No confirmation within the wait: unacknowledged data is a silent path; acknowledged data
/// that echo never confirmed was taken in and not delivered (checked with echo afterwards).
fn unanswered(a: &Armed) -> Observed {
    match all_acknowledged(a.stream.as_raw_fd()) {
        Some(true) => Observed::AckedNotDelivered,
        _ => Observed::Silent,
    }
}

/// The server-to-client test: echo's reply is due at the end of the idle period.
fn await_later(a: &mut Armed, deadline: Instant) -> Seen {
    if a.early_reply {
        return Ok(Observed::Alive);
    }
    match read_frame(&mut a.stream, &mut a.decoder, deadline) {
        Ok(Some(Frame::LaterReply { seq: 1 })) => Ok(Observed::Alive),
        Ok(Some(other)) => Err(unexpected(other, "echo's delayed reply")),
        Ok(None) if a.decoder.pending() > 0 => Err(Broken(format!(
            "it ended in the middle of a frame ({} bytes)",
            a.decoder.pending()
        ))),
        Ok(None) => Ok(Observed::ResetOnNext),
        Err(e) if e.kind() == io::ErrorKind::TimedOut && e.raw_os_error().is_none() => {
            Ok(Observed::Silent)
        }
        // Whatever reached the client itself: a RST to it, an ICMP error.
        Err(e) => read_failed(&e),
    }
}
