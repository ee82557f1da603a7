//! Writes the seed corpora: one message of every kind for the protocols, so that fuzzing starts
//! from valid input. `cargo run --manifest-path fuzz/Cargo.toml --bin seeds` (stable is enough);
//! the seeds are committed, this only remakes them.
use idlegate::measure::echo::frame::{ConnId, Frame as Echo, LaterOutcome, Report};
use idlegate::survive::tunnel::frame::{Frame as Tunnel, Refusal, SessionId, Token};
use std::path::Path;

fn write(dir: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(dir);
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    std::fs::write(dir.join(name), bytes).expect("a seed");
}

fn main() {
    let id = ConnId {
        run: 0x1d1e_9a7e,
        conn: 3,
    };
    let echo = [
        ("hello", Echo::Hello(id)),
        ("welcome", Echo::Welcome(id)),
        (
            "data",
            Echo::Data {
                seq: 1,
                payload: b"probe".to_vec(),
            },
        ),
        ("received", Echo::Received { seq: 1 }),
        (
            "later",
            Echo::Later {
                seq: 2,
                delay_ms: 1500,
            },
        ),
        ("later-reply", Echo::LaterReply { seq: 2 }),
        ("status", Echo::Status(id)),
        (
            "report",
            Echo::Report(Some(Report {
                last_received: Some(1),
                later: LaterOutcome::Failed(104),
            })),
        ),
        ("report-none", Echo::Report(None)),
        ("error", Echo::Error("not a probe".into())),
    ];
    // One stream of every frame too: the decoder must cut them apart.
    let mut stream = Vec::new();
    for (name, frame) in &echo {
        // The target reads (bytes, cuts); a plain seed is mostly bytes.
        write("echo_protocol", name, &frame.encode());
        stream.extend_from_slice(&frame.encode());
    }
    write("echo_protocol", "all", &stream);

    let session = SessionId([7; 16]);
    let token = Token([9; 32]);
    let tunnel = [
        (
            "hello",
            Tunnel::Hello {
                session,
                token,
                received: 0,
            },
        ),
        (
            "welcome",
            Tunnel::Welcome {
                session,
                token,
                received: 4096,
            },
        ),
        ("refuse", Tunnel::Refuse(Refusal::UnknownSession)),
        (
            "data",
            Tunnel::Data {
                offset: 4096,
                bytes: b"bytes",
            },
        ),
        (
            "ack",
            Tunnel::Ack {
                received: 4101,
                limit: 4101 + (4 << 20),
            },
        ),
        ("fin", Tunnel::Fin { offset: 4101 }),
        ("reset", Tunnel::Reset),
    ];
    for (name, frame) in &tunnel {
        let mut out = Vec::new();
        frame.encode(&mut out);
        write("tunnel_frame", name, &out);
    }
    // A Noise record the length of a real first message (32-byte ephemeral key, 16-byte tag).
    let mut record = vec![0, 48];
    record.extend_from_slice(&[0x42; 48]);
    write("tunnel_handshake", "first-message-shape", &record);
    // The per-peer mode's: an ephemeral key, the sealed static key (32 + 16), a tag.
    let mut record = vec![0, 96];
    record.extend_from_slice(&[0x42; 96]);
    write("tunnel_handshake", "peer-first-message-shape", &record);
    write(
        "tunnel_handshake",
        "oversized-length",
        &[0xff, 0xff, 1, 2, 3],
    );
}
