//! `keygen` and a tunnel's key and `--heartbeat`: what is written, and what is refused before
//! the tunnel listens.

use super::*;

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tunnel.key");
    let key_arg = key.to_str().unwrap();
    let made = idlegate(&["keygen", key_arg], COMMAND_TIMEOUT);
    assert!(made.status.success(), "{}", made.stderr);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&key).unwrap();
    assert_eq!(first.trim().len(), 64);
    let again = idlegate(&["keygen", key_arg], COMMAND_TIMEOUT);
    assert!(!again.status.success());
    assert!(again.stderr.contains("tunnel.key"), "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        first,
        "the key is kept"
    );
}

#[test]
fn a_tunnel_with_a_missing_or_unprotected_key_is_refused_before_it_listens() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tunnel.key");
    let key_arg = key.to_str().unwrap();
    // No --key at all: clap names the missing flag.
    let no_key = idlegate(
        &[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:9",
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!no_key.status.success());
    assert!(no_key.stderr.contains("--key"), "{}", no_key.stderr);
    // A key file others may read.
    assert!(idlegate(&["keygen", key_arg], COMMAND_TIMEOUT)
        .status
        .success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = idlegate(
        &[
            "relay",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:9",
            "--key",
            key_arg,
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!open.status.success());
    assert!(open.stderr.contains("chmod 600"), "{}", open.stderr);
    // A file that is not a key.
    std::fs::write(&key, "not a key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bad = idlegate(
        &[
            "relay",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:9",
            "--key",
            key_arg,
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("not a tunnel key"), "{}", bad.stderr);
    // Both ends at once make no sense.
    let both = idlegate(
        &[
            "relay",
            "--tunnel",
            "127.0.0.1:9",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--key",
            key_arg,
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!both.status.success());
    assert!(both.stderr.contains("--tunnel"), "{}", both.stderr);
}

/// `--heartbeat`'s minimum is the tunnel's own (`tunnel::MIN_HEARTBEAT`, 100 ms), checked in
/// that one place: a shorter heartbeat is a usage error, refused before the entry listens, and a 100 ms one
/// starts the entry, which a SIGTERM then stops with status 0.
#[test]
fn the_heartbeat_minimum_is_the_tunnel_settings_one_and_checked_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tunnel.key");
    let key_arg = key.to_str().unwrap();
    assert!(idlegate(&["keygen", key_arg], COMMAND_TIMEOUT)
        .status
        .success());
    let entry = |heartbeat: &'static str| {
        vec![
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:9",
            "--key",
            key_arg,
            "--heartbeat",
            heartbeat,
        ]
    };
    let short = idlegate(&entry("50ms"), COMMAND_TIMEOUT);
    // A usage error (exit 2), said first: nothing (not even the descriptors line) before it.
    assert_eq!(short.status.code(), Some(2), "stderr: {}", short.stderr);
    assert_eq!(
        short.stderr.lines().next(),
        Some("idlegate: --heartbeat 50ms: at least 100ms"),
        "{}",
        short.stderr
    );
    assert!(
        !short.stderr.contains("tunnel entry 127."),
        "{}",
        short.stderr
    );

    /// Kills the entry if the test fails before it stops.
    struct Running(Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut running = Running(
        Command::new(IDLEGATE)
            .args(entry("100ms"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting idlegate relay"),
    );
    let (stderr, _reader) = collect(running.0.stderr.take().unwrap());
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while !stderr.lock().unwrap().contains("heartbeat 100ms")
        && running.0.try_wait().unwrap().is_none()
        && Instant::now() < deadline
    {
        std::thread::sleep(POLL);
    }
    assert!(
        stderr.lock().unwrap().contains("heartbeat 100ms"),
        "the entry did not start: {}",
        stderr.lock().unwrap()
    );
    signal(running.0.id() as i32, libc::SIGTERM);
    let status = wait_bounded(&mut running.0, STOP_TIMEOUT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        stderr.lock().unwrap()
    );
}
