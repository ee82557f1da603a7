//! The messages a tunnel leg carries once its handshake is done, each one sealed in its own
//! Noise transport message (see [`super::leg`]).
//!
//! Contract: [`Frame::encode`] writes one message into a buffer; [`Frame::decode`] reads one
//! back, borrowing data bytes from the buffer, and refuses anything malformed with a
//! [`FrameError`] (the leg is then closed: the peer holds the key, so it is broken, not
//! hostile, and guessing would risk the application's bytes). All integers are big-endian.
//!
//! | type | body |
//! |---|---|
//! | 1 Hello | session id (16), token (32), received (8) — the first message of the initiator; an all-zero session id asks for a new session |
//! | 2 Welcome | session id (16), token (32), received (8) — the responder's answer |
//! | 3 Refuse | reason (1) |
//! | 4 Data | offset (8), the application's bytes |
//! | 5 Ack | received (8), limit (8) — the offset before which every byte arrived, and the one before which the sender may send (its window; see [`super::stream`]); also the heartbeat |
//! | 6 Fin | offset (8) — the sender's application finished writing |
//! | 7 Reset | — the sender's application reset its connection; the session is over |
//! | 8 Done | — (the exit only) the session on this leg ended whole here and none of its frames will follow: the leg is free, and the entry's next frame on it is a Hello (see `super::pool`) |

use thiserror::Error;

/// The largest plaintext of one Noise transport message (65,535 bytes less the 16-byte tag).
pub const MAX_PLAINTEXT: usize = 65_535 - 16;

/// The most application bytes one Data frame carries.
pub const MAX_DATA: usize = MAX_PLAINTEXT - 9;

/// A session's name, chosen at random by the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// The id a Hello carries to ask for a new session.
    pub const NEW: SessionId = SessionId([0; 16]);
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The secret that lets a peer resume a session: given only inside the encrypted channel.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Token(pub [u8; 32]);

impl Token {
    /// Compares in constant time, so a timing does not tell how much of a guess was right.
    pub fn matches(&self, other: &Token) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Why a responder turns a Hello down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such session here, or the token is wrong (not told apart, on purpose). Behind a
    /// balancer another exit may hold it.
    UnknownSession = 1,
    /// The responder could not connect to its `--connect` target for a new session.
    TargetUnreachable = 2,
    /// The responder has as many sessions as it may hold.
    Full = 3,
    /// The session ended here and will not resume: it expired, an application reset it, the
    /// peer broke the protocol, or the peer was taken off the peers list (id and token both
    /// right).
    Ended = 4,
    /// The session finished here in order: this end had every byte and the FIN from the
    /// peer, and the peer's were all acknowledged (id and token both right).
    Finished = 5,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::UnknownSession => "no such session (expired, or never ours)",
            Refusal::TargetUnreachable => "the far end could not connect to its target",
            Refusal::Full => "the far end holds as many sessions as it may",
            Refusal::Ended => {
                "the session ended at the far end (expired, reset there, or this end's key was \
                 taken off the exit's peers list)"
            }
            Refusal::Finished => "the session finished at the far end in order",
        })
    }
}

/// One message of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello {
        session: SessionId,
        token: Token,
        received: u64,
    },
    Welcome {
        session: SessionId,
        token: Token,
        received: u64,
    },
    Refuse(Refusal),
    Data {
        offset: u64,
        bytes: &'a [u8],
    },
    Ack {
        received: u64,
        limit: u64,
    },
    Fin {
        offset: u64,
    },
    Reset,
    Done,
}

/// A message that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("an empty message")]
    Empty,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message type {kind}: {len} bytes, expected {expected}")]
    BadLength {
        kind: u8,
        len: usize,
        expected: usize,
    },
    #[error("unknown refusal reason {0}")]
    UnknownRefusal(u8),
}

impl<'a> Frame<'a> {
    /// Appends the message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Frame::Hello {
                session,
                token,
                received,
            } => greeting(out, 1, session, token, received),
            Frame::Welcome {
                session,
                token,
                received,
            } => greeting(out, 2, session, token, received),
            Frame::Refuse(reason) => out.extend_from_slice(&[3, reason as u8]),
            Frame::Data { offset, bytes } => {
                out.push(4);
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Frame::Ack { received, limit } => {
                out.push(5);
                out.extend_from_slice(&received.to_be_bytes());
                out.extend_from_slice(&limit.to_be_bytes());
            }
            Frame::Fin { offset } => {
                out.push(6);
                out.extend_from_slice(&offset.to_be_bytes());
            }
            Frame::Reset => out.push(7),
            Frame::Done => out.push(8),
        }
    }

    /// Reads one message.
    pub fn decode(msg: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let (&kind, body) = msg.split_first().ok_or(FrameError::Empty)?;
        let exact = |expected: usize| {
            if body.len() == expected {
                Ok(())
            } else {
                Err(FrameError::BadLength {
                    kind,
                    len: body.len(),
                    expected,
                })
            }
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(match kind {
            1 | 2 => {
                exact(56)?;
                let mut session = SessionId::default();
                session.0.copy_from_slice(&body[..16]);
                let mut token = Token::default();
                token.0.copy_from_slice(&body[16..48]);
                let received = u64_at(48);
                if kind == 1 {
                    Frame::Hello {
                        session,
                        token,
                        received,
                    }
                } else {
                    Frame::Welcome {
                        session,
                        token,
                        received,
                    }
                }
            }
            3 => {
                exact(1)?;
                Frame::Refuse(match body[0] {
                    1 => Refusal::UnknownSession,
                    2 => Refusal::TargetUnreachable,
                    3 => Refusal::Full,
                    4 => Refusal::Ended,
                    5 => Refusal::Finished,
                    other => return Err(FrameError::UnknownRefusal(other)),
                })
            }
            4 => {
                if body.len() < 8 {
                    exact(8)?;
                }
                Frame::Data {
                    offset: u64_at(0),
                    bytes: &body[8..],
                }
            }
            5 => {
                exact(16)?;
                Frame::Ack {
                    received: u64_at(0),
                    limit: u64_at(8),
                }
            }
            6 => {
                exact(8)?;
                Frame::Fin { offset: u64_at(0) }
            }
            7 => {
                exact(0)?;
                Frame::Reset
            }
            8 => {
                exact(0)?;
                Frame::Done
            }
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

fn greeting(out: &mut Vec<u8>, kind: u8, session: SessionId, token: Token, received: u64) {
    out.push(kind);
    out.extend_from_slice(&session.0);
    out.extend_from_slice(&token.0);
    out.extend_from_slice(&received.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_reads_back_as_written() {
        let session = SessionId([7; 16]);
        let token = Token([9; 32]);
        for frame in [
            Frame::Hello {
                session,
                token,
                received: 1 << 40,
            },
            Frame::Welcome {
                session,
                token,
                received: 3,
            },
            Frame::Refuse(Refusal::UnknownSession),
            Frame::Refuse(Refusal::TargetUnreachable),
            Frame::Refuse(Refusal::Full),
            Frame::Refuse(Refusal::Ended),
            Frame::Refuse(Refusal::Finished),
            Frame::Data {
                offset: 5,
                bytes: b"hello",
            },
            Frame::Data {
                offset: 5,
                bytes: b"",
            },
            Frame::Ack {
                received: 77,
                limit: 1 << 22,
            },
            Frame::Fin { offset: 12 },
            Frame::Reset,
            Frame::Done,
        ] {
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            assert_eq!(Frame::decode(&buf), Ok(frame));
        }
    }

    #[test]
    fn malformed_messages_are_refused_not_guessed() {
        assert_eq!(Frame::decode(b""), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[99]), Err(FrameError::UnknownType(99)));
        assert_eq!(Frame::decode(&[3, 42]), Err(FrameError::UnknownRefusal(42)));
        assert!(matches!(
            Frame::decode(&[5, 0, 0]),
            Err(FrameError::BadLength { kind: 5, .. })
        ));
        assert!(matches!(
            Frame::decode(&[4, 0]),
            Err(FrameError::BadLength { kind: 4, .. })
        ));
        assert!(matches!(
            Frame::decode(&[1; 20]),
            Err(FrameError::BadLength { kind: 1, .. })
        ));
        assert!(matches!(
            Frame::decode(&[7, 0]),
            Err(FrameError::BadLength { kind: 7, .. })
        ));
        assert!(matches!(
            Frame::decode(&[8, 0]),
            Err(FrameError::BadLength { kind: 8, .. })
        ));
    }

    #[test]
    fn tokens_compare_whole() {
        let a = Token([1; 32]);
        let mut b = a;
        assert!(a.matches(&b));
        b.0[31] ^= 1;
        assert!(!a.matches(&b));
    }
}
