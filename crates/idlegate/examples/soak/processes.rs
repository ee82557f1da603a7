//! The programs the soak starts (`lab up`, the echo server in `vm1`, `idlegate relay` in the
//! internet host), each waited on until it is ready, and how they are stopped at the end.

use crate::client::Load;
use crate::traffic::soak;
use crate::{Error, AFTER_FAULT, FAULT_WAIT, FRONTEND, KEEPALIVE, RELAY_AT, SERVER};
use idlegate::sys::netns;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The soak's settings and the processes it started (stopped in reverse order at the end).
pub struct Soak {
    pub idlegate: String,
    pub lab: String,
    pub config: std::path::PathBuf,
    pub logs: std::path::PathBuf,
    pub load: Load,
    pub processes: Vec<Child>,
}

impl Soak {
    pub fn run(&mut self, length: Duration) -> Result<(), Error> {
        let lab = self.start_lab("lab.log")?;
        let echo = self.start_echo()?;
        let relay = self.start_relay()?;
        let (lab_pid, relay_pid) = (self.processes[lab].id(), self.processes[relay].id());
        let mut live = soak(
            &self.namespace("internet"),
            self.load,
            length,
            lab_pid,
            relay_pid,
        )?;
        self.kill_relay(&mut live, relay)?;
        self.kill_lab(&mut live, lab, echo)
    }

    pub fn namespace(&self, host: &str) -> String {
        format!("ig-{}-{host}", self.lab)
    }

    /// Starts `lab up` and waits for its "ready"; returns its index in `processes`.
    pub fn start_lab(&mut self, log: &str) -> Result<usize, Error> {
        let mut lab = Command::new(&self.idlegate)
            .args(["lab", "up", "--name", &self.lab, "--config"])
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.logs.join(log))?)
            .spawn()?;
        let stdout = lab.stdout.take().ok_or("lab up's stdout")?;
        self.processes.push(lab);
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l == "ready");
        if !ready {
            return Err("lab up did not print ready".into());
        }
        Ok(self.processes.len() - 1)
    }

    /// Starts the echo server in vm1 and waits for it to listen.
    pub fn start_echo(&mut self) -> Result<usize, Error> {
        let mut echo = Command::new("ip")
            .args(["netns", "exec", &self.namespace("vm1")])
            .arg(std::env::current_exe()?)
            .args(["echo", SERVER, &self.load.total().to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = echo.stdout.take();
        self.processes.push(echo);
        let listening = out.is_some_and(|out| {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "listening")
        });
        if !listening {
            return Err("the echo server did not start".into());
        }
        Ok(self.processes.len() - 1)
    }

    /// Starts `idlegate relay` in the internet host and waits for it to listen.
    pub fn start_relay(&mut self) -> Result<usize, Error> {
        let internet = self.namespace("internet");
        let relay = Command::new("ip")
            .args(["netns", "exec", &internet, &self.idlegate, "relay"])
            .args(["--listen", RELAY_AT, "--connect", FRONTEND])
            .args(["--keepalive", KEEPALIVE, "--max-connections"])
            .arg((self.load.relayed + 2 * AFTER_FAULT).to_string())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.logs.join("relay.log"))?,
            )
            .spawn()?;
        self.processes.push(relay);
        let relay_at: SocketAddr = RELAY_AT.parse()?;
        let deadline = Instant::now() + FAULT_WAIT;
        while netns::spawn_in(&internet, move || std::net::TcpStream::connect(relay_at))?
            .join()
            .map_err(|_| "probe thread")?
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("the relay did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.processes.len() - 1)
    }
}

/// The namespaces of lab `lab` that exist now.
pub fn namespaces_of(lab: &str) -> Result<Vec<String>, Error> {
    let prefix = format!("ig-{lab}-");
    Ok(netns::list()?
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect())
}

pub fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = idlegate::sys::process::signal(child.id() as i32, idlegate::sys::signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
