//! The container image (`deploy/container/Containerfile`, built by `scripts/build-image`): the
//! static binary alone in an empty image, run with podman. Privileged, it runs the lab's demo
//! (namespaces, TUN devices and links made through netlink: the image has no `ip`); as its
//! default user (65534) with no capability at all, it runs a relay between two sockets of the
//! host.
//!
//! Each test builds its own image under a unique tag and removes it, and the containers it
//! starts, when it ends, even when it fails. podman runs the containers with runc and with
//! explicit ulimits: some sandboxes' cgroups refuse podman's defaults (the book's Install page).

use super::*;
use crate::common;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

/// What `podman run` needs on machines whose sandbox limits cgroups (some CI runners): runc (crun's
/// cgroup handling fails in some sandboxes) and limits within the sandbox's own.
const RUN_FLAGS: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1000:1000",
];
/// How long a container may take: the demo's three connections take ~10 s at its time scale.
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(180);

/// An image built for one test; removed (with any container of it) when dropped.
struct Image {
    tag: String,
}

impl Image {
    fn build() -> Image {
        common::require_root();
        require_tool(
            "podman",
            "the container tests build and run the image with it",
        );
        require_tool("runc", "the container tests run their containers with it");
        static_binary();
        // The guard first: a build that fails or times out may still leave the tag.
        let image = Image {
            tag: format!("localhost/idlegate-test:{}", common::unique("img")),
        };
        let output = run(script("build-image").arg(&image.tag), STATIC_BUILD_TIMEOUT);
        assert!(
            output.status.success(),
            "scripts/build-image: {}",
            said(&output)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), image.tag);
        image
    }

    /// `podman run --rm` of this image with [`RUN_FLAGS`], `options`, then `args` for idlegate.
    fn run_command(&self, name: &str, options: &[&str], args: &[&str]) -> Command {
        let mut command = Command::new("podman");
        command
            .args(["run", "--rm", "--name", name])
            .args(RUN_FLAGS)
            .args(options)
            .arg(&self.tag)
            .args(args);
        command
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

/// A container by name, removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.0])
            .output();
    }
}

fn connection<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

/// The address the relay in `relay` listens on, from its log line `relay LISTEN → CONNECT`
/// (it logs it once bound), read within [`CONTAINER_TIMEOUT`]; the rest of its log is drained.
fn relay_address(relay: &mut std::process::Child, connect: SocketAddr) -> SocketAddr {
    use std::io::BufRead;
    let stderr = relay.stderr.take().expect("the relay's stderr, piped");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            // Read to the end even once nobody listens, so the pipe never fills.
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + CONTAINER_TIMEOUT;
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.split_once("relay ").and_then(|(_, rest)| {
                    let (listen, to) = rest.split_once(" → ")?;
                    to.starts_with(&connect.to_string())
                        .then(|| listen.parse().ok())
                        .flatten()
                });
                if let Some(address) = found {
                    return address;
                }
                said.push(line);
            }
            Err(e) => panic!(
                "the relay in the container never said where it listens ({e}); it said:\n{}",
                said.join("\n")
            ),
        }
    }
}

#[test]
fn container_runs_lab_demo_privileged_with_its_three_verdicts() {
    let image = Image::build();
    let name = common::unique("igd");
    let _container = Container(name.clone());
    // --network none: the lab makes every namespace and link it needs inside the container.
    let output = run(
        &mut image.run_command(
            &name,
            &["--user", "0", "--privileged", "--network", "none"],
            &["lab", "demo", "--json", "--name", &common::unique("dm")],
        ),
        CONTAINER_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "lab demo in the container: {}",
        said(&output)
    );
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("lab demo printed no JSON ({e}): {}", said(&output)));
    let delivered = |c: &Value| c["delivered"].clone();

    let plain = connection(&report, "no-keepalive");
    assert_eq!(delivered(plain), serde_json::json!(["a", "b"]), "{plain}");
    assert_eq!(
        (&plain["client_error"], &plain["server_error"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(plain["verdict"], "lost-silently", "{plain}");
    assert!(
        plain["explanation"]
            .as_str()
            .unwrap()
            .starts_with("LOST \"c\""),
        "{plain}"
    );

    let keepalive = connection(&report, "keepalive");
    assert_eq!(
        delivered(keepalive),
        serde_json::json!(["a", "b", "c"]),
        "{keepalive}"
    );
    assert_eq!(keepalive["verdict"], "survived", "{keepalive}");
    assert!(
        keepalive["explanation"]
            .as_str()
            .unwrap()
            .starts_with("survived"),
        "{keepalive}"
    );

    let reset = connection(&report, "tcp-reset");
    assert_eq!(delivered(reset), serde_json::json!(["a", "b"]), "{reset}");
    assert_eq!(reset["client_error"], "ECONNRESET", "{reset}");
    assert_eq!(reset["server_error"], "ECONNRESET", "{reset}");
}

#[test]
fn container_relays_bytes_between_host_sockets_as_nobody_without_capabilities() {
    let image = Image::build();
    let user = run(
        Command::new("podman").args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}",
            &image.tag,
        ]),
        COMMAND_TIMEOUT,
    );
    assert_eq!(
        String::from_utf8_lossy(&user.stdout).trim(),
        "65534:65534",
        "the image's default user: {}",
        said(&user)
    );

    let server = TcpListener::bind("127.0.0.1:0").expect("a server on loopback");
    let server_address = server.local_addr().unwrap();
    let name = common::unique("igr");
    let _container = Container(name.clone());
    let mut relay = image
        .run_command(
            &name,
            // The host's network (its loopback), the image's own user, and nothing more.
            &[
                "--network",
                "host",
                "--cap-drop",
                "all",
                "--security-opt",
                "no-new-privileges",
            ],
            // Port 0: the kernel picks a free one, which the relay logs.
            &[
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--connect",
                &server_address.to_string(),
                "--keepalive",
                "60s,10s,3",
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting podman run");
    let listen = relay_address(&mut relay, server_address);
    let mut client = TcpStream::connect(listen)
        .unwrap_or_else(|e| panic!("connecting to the relay in the container at {listen}: {e}"));
    server.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let message: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    client
        .write_all(&message)
        .expect("writing through the relay");
    let accepted = std::thread::spawn(move || {
        let (mut conn, _) = server.accept().expect("the relay's connection");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = vec![0u8; 64 * 1024];
        conn.read_exact(&mut got)
            .expect("the client's bytes, relayed");
        conn.write_all(b"answer").expect("answering");
        got
    });
    let got = accepted.join().expect("the server thread");
    assert!(
        got == message,
        "the server got other bytes than the client sent"
    );
    let mut answer = [0u8; 6];
    client
        .read_exact(&mut answer)
        .expect("the server's answer, relayed");
    assert_eq!(&answer, b"answer");

    drop(client);
    let _ = relay.kill();
    let _ = relay.wait();
}
