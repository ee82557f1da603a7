//! The tunnel's responder, in both modes: whatever an unauthenticated peer sends (records of
//! any length, Noise messages of any content, a stream cut anywhere) ends in a refusal, never
//! a panic and never a leg. In the per-peer mode the fuzzer knows neither the exit's key nor a
//! listed one, as an attacker would not.
#![no_main]
use idlegate::survive::tunnel::key::{Key, PrivateKey};
use idlegate::survive::tunnel::leg::{Leg, Responding};
use idlegate::survive::tunnel::peers::PeerList;
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

struct Fixture {
    listener: TcpListener,
    key: Key,
    exit: PrivateKey,
    peers: Arc<PeerList>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let listed = PrivateKey::from_secret([0x17; 32]).expect("a key pair");
        Fixture {
            listener: TcpListener::bind("127.0.0.1:0").expect("a loopback listener"),
            key: Key::parse(&"5a".repeat(32)).expect("a key"),
            exit: PrivateKey::from_secret([0x5a; 32]).expect("a key pair"),
            peers: Arc::new(
                PeerList::parse(&format!("{} site", listed.public()), "peers").expect("a list"),
            ),
        }
    })
}

/// The whole input, then the end of the stream, to a responder: it must not wait past it.
fn respond(bytes: &[u8], keys: Responding) -> bool {
    let f = fixture();
    let addr = f.listener.local_addr().expect("its address");
    let mut peer = TcpStream::connect(addr).expect("connecting on loopback");
    let (stream, _) = f.listener.accept().expect("accepting on loopback");
    let _ = peer.write_all(bytes);
    let _ = peer.shutdown(Shutdown::Write);
    Leg::respond(stream, keys, Duration::from_millis(200)).is_ok()
}

fuzz_target!(|bytes: &[u8]| {
    let f = fixture();
    assert!(
        !respond(bytes, Responding::Psk(&f.key)),
        "a peer without the key never gets a leg"
    );
    let peers = Responding::Peers {
        own: &f.exit,
        list: f.peers.clone(),
    };
    assert!(
        !respond(bytes, peers),
        "a peer without a listed key never gets a leg"
    );
});
