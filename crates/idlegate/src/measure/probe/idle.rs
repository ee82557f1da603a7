//! One test on one armed connection: its idle period, watched (a RST, an ICMP error, a FIN,
//! or echo's frames, taken as they come and bounded by the decoder), then the send or the wait
//! that says whether the path still holds the connection. What a test sees is an
//! [`Observed`]; a connection that breaks echo's protocol is [`Broken`]: nothing measured.
//! The idle period and the wait after a plain send read in slices ([`read_within`]: on Windows
//! a poll first, since a receive that timed out leaves the socket "indeterminate").

use super::{read_frame, Armed, Broken, Direction, Observed, Seen, DATA_SEQ, PLAIN_PAYLOAD};
use crate::measure::echo::frame::Frame;
use crate::sys::evidence::{self, Acknowledgement};
use crate::sys::poll::read_within;
use std::io::{self, Write};
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
        match read_within(&a.stream, &mut buf, slice) {
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
            // An end of stream that was a RST (Wine reads one as an end of stream).
            Ok(_) if evidence::ended_by_reset(&a.stream) => {
                return Some(Some(Ok(Observed::ResetAtExpiry)))
            }
            // A FIN: the far end (or a proxy on the way) closed the idle connection.
            Ok(_) => return Some(Some(Ok(Observed::Closed))),
            Err(e) if nothing_yet(&e) => {}
            Err(_) => return Some(Some(Ok(Observed::ResetAtExpiry))),
        }
    }
}

/// Whether a read that failed with `e` only ran out of its read timeout or was interrupted:
/// nothing happened on the connection yet.
fn nothing_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
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
    await_answer(a, deadline, "its data's confirmation", |frame| {
        matches!(frame, Frame::Received { seq: DATA_SEQ })
    })
    .unwrap_or_else(|| Ok(unanswered(a)))
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
        match evidence::acknowledgement(&a.stream) {
            Acknowledgement::All => return Observed::Alive,
            // Unknown: `run` refuses a plain server where acknowledgements cannot be seen.
            Acknowledgement::Pending | Acknowledgement::Unknown => {}
            Acknowledgement::NotEstablished => return Observed::ResetOnNext,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Observed::Silent;
        }
        match read_within(&a.stream, &mut buf, left.min(Duration::from_millis(20))) {
            // Whatever the server says back is its business; a RST is ours.
            Ok(_) => {}
            Err(e) if nothing_yet(&e) => {}
            Err(_) => return Observed::ResetOnNext,
        }
    }
}

/// No confirmation within the wait: unacknowledged data is a silent path; acknowledged data
/// that echo never confirmed was taken in and not delivered (checked with echo afterwards).
/// Where the system does not say what was acknowledged, both read as silent (the report says
/// so).
fn unanswered(a: &Armed) -> Observed {
    match evidence::acknowledgement(&a.stream) {
        Acknowledgement::All => Observed::AckedNotDelivered,
        _ => Observed::Silent,
    }
}

/// The server-to-client test: echo's reply is due at the end of the idle period.
fn await_later(a: &mut Armed, deadline: Instant) -> Seen {
    if a.early_reply {
        return Ok(Observed::Alive);
    }
    await_answer(a, deadline, "echo's delayed reply", |frame| {
        matches!(frame, Frame::LaterReply { seq: 1 })
    })
    .unwrap_or(Ok(Observed::Silent))
}

/// Waits until `deadline` for the frame a test waits for (`is_answer`, described by
/// `waiting_for`): `Alive` when it comes; broken by any other frame or by an end in the middle
/// of a frame; `ResetOnNext` at a FIN; what the path did at a failed read. `None` if nothing
/// came in time (the caller says what silence means).
fn await_answer(
    a: &mut Armed,
    deadline: Instant,
    waiting_for: &str,
    is_answer: impl Fn(&Frame) -> bool,
) -> Option<Seen> {
    Some(match read_frame(&mut a.stream, &mut a.decoder, deadline) {
        Ok(Some(frame)) if is_answer(&frame) => Ok(Observed::Alive),
        Ok(Some(other)) => Err(unexpected(other, waiting_for)),
        Ok(None) if a.decoder.pending() > 0 => Err(Broken(format!(
            "it ended in the middle of a frame ({} bytes)",
            a.decoder.pending()
        ))),
        Ok(None) => Ok(Observed::ResetOnNext),
        Err(e) if e.kind() == io::ErrorKind::TimedOut && e.raw_os_error().is_none() => return None,
        // Whatever reached the client itself: a RST to it, an ICMP error.
        Err(e) => read_failed(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::super::Test;
    use super::*;
    use crate::measure::echo::frame::{ConnId, Decoder};
    use std::net::{Shutdown, TcpListener, TcpStream};

    /// An armed test against echo on a loopback connection, and echo's end of it.
    fn armed(direction: Direction) -> (Armed, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (echo, _) = listener.accept().unwrap();
        let test = Test {
            direction,
            idle: Duration::ZERO,
            keepalive: None,
        };
        let a = Armed {
            test,
            echo: true,
            stream,
            decoder: Decoder::default(),
            id: ConnId { run: 1, conn: 1 },
            idle_since: Instant::now(),
            early_reply: false,
        };
        (a, echo)
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn echos_confirmation_of_the_data_is_alive() {
        let (mut a, mut echo) = armed(Direction::ClientToServer);
        echo.write_all(&Frame::Received { seq: DATA_SEQ }.encode())
            .unwrap();
        assert_eq!(send_and_confirm(&mut a, WAIT), Ok(Observed::Alive));
    }

    #[test]
    fn another_frame_than_the_one_awaited_breaks_the_protocol_and_says_what_was_awaited() {
        let (mut a, mut echo) = armed(Direction::ClientToServer);
        echo.write_all(&Frame::LaterReply { seq: 1 }.encode())
            .unwrap();
        assert_eq!(
            send_and_confirm(&mut a, WAIT),
            Err(Broken(
                "echo sent a later-reply frame while the probe waited for its data's confirmation"
                    .into()
            ))
        );
        let (mut a, mut echo) = armed(Direction::ServerToClient);
        echo.write_all(&Frame::Received { seq: 1 }.encode())
            .unwrap();
        assert_eq!(
            await_later(&mut a, Instant::now() + WAIT),
            Err(Broken(
                "echo sent a received frame while the probe waited for echo's delayed reply".into()
            ))
        );
    }

    #[test]
    fn echos_delayed_reply_is_alive() {
        let (mut a, mut echo) = armed(Direction::ServerToClient);
        echo.write_all(&Frame::LaterReply { seq: 1 }.encode())
            .unwrap();
        assert_eq!(
            await_later(&mut a, Instant::now() + WAIT),
            Ok(Observed::Alive)
        );
    }

    #[test]
    fn a_fin_instead_of_the_answer_is_a_reset_on_the_next_packet() {
        let (mut a, echo) = armed(Direction::ServerToClient);
        echo.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            await_later(&mut a, Instant::now() + WAIT),
            Ok(Observed::ResetOnNext)
        );
    }

    #[test]
    fn a_fin_in_the_middle_of_a_frame_breaks_the_protocol() {
        let (mut a, mut echo) = armed(Direction::ClientToServer);
        let frame = Frame::Received { seq: DATA_SEQ }.encode();
        echo.write_all(&frame[..3]).unwrap();
        echo.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            send_and_confirm(&mut a, WAIT),
            Err(Broken("it ended in the middle of a frame (3 bytes)".into()))
        );
    }

    #[test]
    fn no_delayed_reply_by_the_deadline_is_a_silent_path() {
        let (mut a, _echo) = armed(Direction::ServerToClient);
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(await_later(&mut a, deadline), Ok(Observed::Silent));
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn only_a_read_timeout_or_an_interruption_is_nothing_yet() {
        for kind in [
            io::ErrorKind::WouldBlock,
            io::ErrorKind::TimedOut,
            io::ErrorKind::Interrupted,
        ] {
            assert!(nothing_yet(&kind.into()), "{kind:?}");
        }
        for kind in [io::ErrorKind::ConnectionReset, io::ErrorKind::InvalidData] {
            assert!(!nothing_yet(&kind.into()), "{kind:?}");
        }
    }
}
