//! The tunnel's responder: whatever an unauthenticated peer sends (records of any length,
//! Noise messages of any content, a stream cut anywhere) ends in a refusal, never a panic and
//! never a leg.
#![no_main]
use idlegate::tunnel::key::Key;
use idlegate::tunnel::leg::Leg;
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

struct Fixture {
    listener: TcpListener,
    key: Key,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        listener: TcpListener::bind("127.0.0.1:0").expect("a loopback listener"),
        key: Key::parse(&"5a".repeat(32)).expect("a key"),
    })
}

fuzz_target!(|bytes: &[u8]| {
    let f = fixture();
    let addr = f.listener.local_addr().expect("its address");
    let mut peer = TcpStream::connect(addr).expect("connecting on loopback");
    let (stream, _) = f.listener.accept().expect("accepting on loopback");
    // The whole input, then the end of the stream: the responder must not wait past it.
    let _ = peer.write_all(bytes);
    let _ = peer.shutdown(Shutdown::Write);
    let leg = Leg::respond(stream, &f.key, Duration::from_millis(200));
    assert!(leg.is_err(), "a peer without the key never gets a leg");
});
