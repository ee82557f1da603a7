//! The echo protocol on the wire: frames, their encoding, and a decoder for a byte stream.
//!
//! Every frame is `"IG"`, a version byte (1), a kind byte, a big-endian `u16` body length (at
//! most [`MAX_BODY`]) and the body. A probe names each connection with [`Frame::Hello`] (a run
//! id and a connection number), then sends [`Frame::Data`] with sequence numbers, which echo
//! confirms with [`Frame::Received`] once it has really read them, and [`Frame::Later`] to have
//! echo send [`Frame::LaterReply`] after a delay (the server-to-client direction after idle).
//! On a fresh connection, [`Frame::Status`] asks what echo got and did on a named connection;
//! echo answers [`Frame::Report`]. [`Frame::Error`] tells why echo closes a connection that
//! broke the protocol.
//!
//! [`Decoder::decode`] takes what a stream delivered so far and returns a frame once a whole
//! one is there; it never panics and never trusts a length it has not checked.

use std::fmt;
use thiserror::Error;

/// The protocol's magic bytes.
pub const MAGIC: [u8; 2] = *b"IG";
/// The version this build speaks.
pub const VERSION: u8 = 1;
/// The longest body a frame may carry.
pub const MAX_BODY: usize = 1024;
/// Magic, version, kind, length.
pub const HEADER_LEN: usize = 6;

/// Names one probe connection: the probe run and its connection number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub run: u64,
    pub conn: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{}", self.run, self.conn)
    }
}

/// What became of a [`Frame::Later`] request on echo's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaterOutcome {
    /// None was asked for, or its delay has not run out.
    Pending,
    /// The reply was written to the socket (and not acknowledged within a second).
    Sent,
    /// The reply was written and TCP acknowledged it.
    Acknowledged,
    /// Writing it failed, or the connection failed while it was due or after it was written,
    /// with this OS error code of **echo's** system: an errno from a Linux echo (`ECONNRESET`
    /// 104, `EPIPE`, `ETIMEDOUT`...), a Winsock code from a Windows one (`WSAECONNRESET` 10054,
    /// `WSAETIMEDOUT`...). The two builds talk to each other, so a probe reads only that it
    /// failed, never the number as one of its own system's.
    Failed(u16),
    /// The connection ended (EOF or error) before the delay ran out.
    Closed,
}

/// What echo knows of one named connection, for [`Frame::Report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The highest `Data` sequence number echo read on it, if any.
    pub last_received: Option<u32>,
    pub later: LaterOutcome,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Probe → echo, first on a connection.
    Hello(ConnId),
    /// Echo → probe: the connection is named.
    Welcome(ConnId),
    /// Probe → echo: data to confirm.
    Data { seq: u32, payload: Vec<u8> },
    /// Echo → probe: `Data` with this sequence number was read.
    Received { seq: u32 },
    /// Probe → echo: send `LaterReply { seq }` `delay_ms` after this request (echo sends
    /// nothing else on the connection meanwhile, unless asked).
    Later { seq: u32, delay_ms: u32 },
    /// Echo → probe, `delay_ms` after the `Later` it answers.
    LaterReply { seq: u32 },
    /// Probe → echo, on a fresh connection: what happened on `ConnId`?
    Status(ConnId),
    /// Echo → probe: the answer to `Status`; `None` if echo never saw that connection.
    Report(Option<Report>),
    /// Echo → probe, before closing a connection that broke the protocol.
    Error(String),
}

/// Why a stream is not speaking the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("bad magic {0:02x?} (not an idlegate probe)")]
    BadMagic([u8; 2]),
    #[error("protocol version {0}, this echo speaks {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame body of {0} bytes, at most {MAX_BODY}")]
    TooLong(usize),
    #[error("{kind} frame with a body of {len} bytes")]
    BadBody { kind: &'static str, len: usize },
    #[error("{0} bytes sent and not yet taken as frames, at most {MAX_BUFFERED}: the peer floods")]
    Flooded(usize),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const DATA: u8 = 2;
    pub const LATER: u8 = 3;
    pub const STATUS: u8 = 4;
    pub const WELCOME: u8 = 129;
    pub const RECEIVED: u8 = 130;
    pub const LATER_REPLY: u8 = 131;
    pub const REPORT: u8 = 132;
    pub const ERROR: u8 = 255;
}

impl Frame {
    /// The frame as bytes on the wire. A `Data` payload or `Error` text longer than a body
    /// may be is cut to fit.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, mut body) = match self {
            Frame::Hello(id) => (kind::HELLO, conn_id(id)),
            Frame::Welcome(id) => (kind::WELCOME, conn_id(id)),
            Frame::Status(id) => (kind::STATUS, conn_id(id)),
            Frame::Data { seq, payload } => {
                let mut b = seq.to_be_bytes().to_vec();
                b.extend_from_slice(payload);
                (kind::DATA, b)
            }
            Frame::Received { seq } => (kind::RECEIVED, seq.to_be_bytes().to_vec()),
            Frame::Later { seq, delay_ms } => {
                let mut b = seq.to_be_bytes().to_vec();
                b.extend_from_slice(&delay_ms.to_be_bytes());
                (kind::LATER, b)
            }
            Frame::LaterReply { seq } => (kind::LATER_REPLY, seq.to_be_bytes().to_vec()),
            Frame::Report(report) => (kind::REPORT, report_body(report)),
            Frame::Error(text) => {
                // Cut at a character boundary: half a character is not text.
                let end = (0..=MAX_BODY.min(text.len()))
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                (kind::ERROR, text.as_bytes()[..end].to_vec())
            }
        };
        body.truncate(MAX_BODY);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The frame's kind as the protocol names it, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "a hello frame",
            Frame::Welcome(_) => "a welcome frame",
            Frame::Data { .. } => "a data frame",
            Frame::Received { .. } => "a received frame",
            Frame::Later { .. } => "a later frame",
            Frame::LaterReply { .. } => "a later-reply frame",
            Frame::Status(_) => "a status frame",
            Frame::Report(_) => "a report frame",
            Frame::Error(_) => "an error frame",
        }
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<Frame, ProtocolError> {
        let bad = |kind: &'static str| ProtocolError::BadBody {
            kind,
            len: body.len(),
        };
        let u32_at =
            |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        let frame = match kind {
            kind::HELLO | kind::WELCOME | kind::STATUS => {
                let name = match kind {
                    kind::HELLO => "hello",
                    kind::WELCOME => "welcome",
                    _ => "status",
                };
                if body.len() != 12 {
                    return Err(bad(name));
                }
                let mut run = [0u8; 8];
                run.copy_from_slice(&body[..8]);
                let id = ConnId {
                    run: u64::from_be_bytes(run),
                    conn: u32_at(8),
                };
                match kind {
                    kind::HELLO => Frame::Hello(id),
                    kind::WELCOME => Frame::Welcome(id),
                    _ => Frame::Status(id),
                }
            }
            kind::DATA if body.len() >= 4 => Frame::Data {
                seq: u32_at(0),
                payload: body[4..].to_vec(),
            },
            kind::DATA => return Err(bad("data")),
            kind::RECEIVED if body.len() == 4 => Frame::Received { seq: u32_at(0) },
            kind::RECEIVED => return Err(bad("received")),
            kind::LATER if body.len() == 8 => Frame::Later {
                seq: u32_at(0),
                delay_ms: u32_at(4),
            },
            kind::LATER => return Err(bad("later")),
            kind::LATER_REPLY if body.len() == 4 => Frame::LaterReply { seq: u32_at(0) },
            kind::LATER_REPLY => return Err(bad("later-reply")),
            kind::REPORT => Frame::Report(parse_report(body).ok_or_else(|| bad("report"))?),
            kind::ERROR => Frame::Error(String::from_utf8_lossy(body).into_owned()),
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        Ok(frame)
    }
}

fn conn_id(id: &ConnId) -> Vec<u8> {
    let mut b = id.run.to_be_bytes().to_vec();
    b.extend_from_slice(&id.conn.to_be_bytes());
    b
}

/// `Report` body: a presence byte (0: echo never saw the connection), then a flag byte (bit 0:
/// something was received), the last sequence number, the `Later` outcome (0 pending, 1 sent,
/// 2 failed, 3 closed, 4 sent and acknowledged) and its errno.
fn report_body(report: &Option<Report>) -> Vec<u8> {
    let Some(r) = report else {
        return vec![0];
    };
    let mut b = vec![1, u8::from(r.last_received.is_some())];
    b.extend_from_slice(&r.last_received.unwrap_or(0).to_be_bytes());
    let (code, errno) = match r.later {
        LaterOutcome::Pending => (0u8, 0u16),
        LaterOutcome::Sent => (1, 0),
        LaterOutcome::Failed(errno) => (2, errno),
        LaterOutcome::Closed => (3, 0),
        LaterOutcome::Acknowledged => (4, 0),
    };
    b.push(code);
    b.extend_from_slice(&errno.to_be_bytes());
    b
}

fn parse_report(body: &[u8]) -> Option<Option<Report>> {
    match body {
        [0] => Some(None),
        [1, received, s0, s1, s2, s3, code, e0, e1] => {
            let seq = u32::from_be_bytes([*s0, *s1, *s2, *s3]);
            let errno = u16::from_be_bytes([*e0, *e1]);
            let later = match code {
                0 => LaterOutcome::Pending,
                1 => LaterOutcome::Sent,
                2 => LaterOutcome::Failed(errno),
                3 => LaterOutcome::Closed,
                4 => LaterOutcome::Acknowledged,
                _ => return None,
            };
            let last_received = match received {
                0 => None,
                1 => Some(seq),
                _ => return None,
            };
            Some(Some(Report {
                last_received,
                later,
            }))
        }
        _ => None,
    }
}

/// The most bytes a [`Decoder`] holds that are not yet taken as frames: sixteen of the
/// longest frames. A reader that takes every whole frame after each read never comes near it;
/// a peer that floods a reader which is not taking frames (a probe connection in its idle
/// period) reaches it, and [`Decoder::feed`] refuses more.
pub const MAX_BUFFERED: usize = 16 * (HEADER_LEN + MAX_BODY);

/// Collects the bytes of a stream and cuts whole frames out of them, in place: decoding moves
/// an offset, and the bytes already decoded are dropped (one copy of what is left) only when
/// the next [`Decoder::feed`] needs the room. It never holds more than [`MAX_BUFFERED`] bytes
/// of undecoded input.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Where the bytes not yet decoded begin in `buf`.
    start: usize,
}

impl Decoder {
    /// Appends what the stream delivered, or refuses it (keeping what it held) if the bytes
    /// not yet decoded would pass [`MAX_BUFFERED`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let pending = self.pending();
        if pending + bytes.len() > MAX_BUFFERED {
            return Err(ProtocolError::Flooded(pending + bytes.len()));
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.buf.len() + bytes.len() > self.buf.capacity() {
            // Make room by dropping what was decoded rather than by growing.
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(pending);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole frame, `None` if more bytes are needed, or why the stream is not the
    /// protocol (checked as soon as the header is there, before waiting for a body).
    pub fn decode(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let held = &self.buf[self.start..];
        if held.len() >= 2 && held[..2] != MAGIC {
            return Err(ProtocolError::BadMagic([held[0], held[1]]));
        }
        if held.len() < HEADER_LEN {
            return Ok(None);
        }
        if held[2] != VERSION {
            return Err(ProtocolError::Version(held[2]));
        }
        let len = usize::from(u16::from_be_bytes([held[4], held[5]]));
        if len > MAX_BODY {
            return Err(ProtocolError::TooLong(len));
        }
        let Some(body) = held.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let frame = Frame::decode_body(held[3], body);
        self.start += HEADER_LEN + len;
        frame.map(Some)
    }

    /// Bytes received but not yet part of a whole frame (a stream that ends with some is
    /// truncated).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Frame> {
        let id = ConnId {
            run: 0xdead_beef_0000_0001,
            conn: 7,
        };
        vec![
            Frame::Hello(id),
            Frame::Welcome(id),
            Frame::Status(id),
            Frame::Data {
                seq: 3,
                payload: b"abc".to_vec(),
            },
            Frame::Data {
                seq: 4,
                payload: Vec::new(),
            },
            Frame::Received { seq: 3 },
            Frame::Later {
                seq: 5,
                delay_ms: 7300,
            },
            Frame::LaterReply { seq: 5 },
            Frame::Report(None),
            Frame::Report(Some(Report {
                last_received: Some(9),
                later: LaterOutcome::Failed(104),
            })),
            Frame::Report(Some(Report {
                last_received: None,
                later: LaterOutcome::Pending,
            })),
            Frame::Error("bad magic".into()),
        ]
    }

    #[test]
    fn every_frame_survives_the_wire_even_one_byte_at_a_time() {
        let frames = all_kinds();
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for b in bytes {
            decoder.feed(&[b]).unwrap();
            while let Some(frame) = decoder.decode().unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, frames);
        assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn a_stream_that_breaks_the_protocol_is_named_as_soon_as_it_can_be() {
        let cases: [(&[u8], ProtocolError); 5] = [
            (b"GET / HTTP/1.1", ProtocolError::BadMagic(*b"GE")),
            (b"IG\x02\x01\x00\x00", ProtocolError::Version(2)),
            (b"IG\x01\x09\x00\x00", ProtocolError::UnknownKind(9)),
            (b"IG\x01\x02\x04\x01", ProtocolError::TooLong(1025)),
            (
                b"IG\x01\x01\x00\x02ab",
                ProtocolError::BadBody {
                    kind: "hello",
                    len: 2,
                },
            ),
        ];
        for (bytes, error) in cases {
            let mut decoder = Decoder::default();
            decoder.feed(bytes).unwrap();
            assert_eq!(decoder.decode(), Err(error), "{bytes:?}");
        }
    }

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        // Found by fuzzing: cutting at MAX_BODY bytes split a character in two.
        let text = "é".repeat(MAX_BODY);
        let bytes = Frame::Error(text).encode();
        let mut decoder = Decoder::default();
        decoder.feed(&bytes).unwrap();
        let Ok(Some(Frame::Error(back))) = decoder.decode() else {
            panic!("an error frame");
        };
        assert_eq!(back, "é".repeat(MAX_BODY / 2));
    }

    #[test]
    fn a_peer_that_floods_a_reader_not_taking_frames_is_refused_at_the_bound() {
        let frame = Frame::Received { seq: 1 }.encode();
        let mut decoder = Decoder::default();
        let mut fed = 0;
        while decoder.feed(&frame).is_ok() {
            fed += frame.len();
            assert!(fed <= MAX_BUFFERED, "fed {fed} bytes without refusal");
        }
        assert!(fed + frame.len() > MAX_BUFFERED);
        assert_eq!(
            decoder.feed(&frame),
            Err(ProtocolError::Flooded(fed + frame.len()))
        );
        // What it held is still there, frame by frame.
        assert_eq!(decoder.decode(), Ok(Some(Frame::Received { seq: 1 })));
    }

    #[test]
    fn a_long_stream_is_decoded_in_place_in_a_buffer_that_does_not_grow() {
        let chunk: Vec<u8> = (0..1000u32)
            .flat_map(|seq| Frame::Received { seq }.encode())
            .collect();
        let mut decoder = Decoder::default();
        let mut decoded = 0u64;
        // Cut at an odd size, so frames straddle the feeds.
        for _ in 0..200 {
            for piece in chunk.chunks(4093) {
                decoder.feed(piece).unwrap();
                while let Some(frame) = decoder.decode().unwrap() {
                    assert_eq!(
                        frame,
                        Frame::Received {
                            seq: (decoded % 1000) as u32
                        }
                    );
                    decoded += 1;
                }
            }
        }
        assert_eq!(decoded, 200_000);
        assert_eq!(decoder.pending(), 0);
        assert!(
            decoder.buf.capacity() <= 2 * 4093,
            "{}",
            decoder.buf.capacity()
        );
    }

    #[test]
    fn a_truncated_frame_waits_for_more() {
        let bytes = Frame::Data {
            seq: 1,
            payload: vec![1; 100],
        }
        .encode();
        let mut decoder = Decoder::default();
        decoder.feed(&bytes[..50]).unwrap();
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.pending(), 50);
    }
}
