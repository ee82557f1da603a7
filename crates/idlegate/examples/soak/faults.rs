//! The faults, mid-traffic with the soak's connections still open: `kill -9` of the relay and
//! of `lab up`, each followed by a restart that must carry new connections.

use crate::client::{receive, Client, Kind, Tally};
use crate::processes::{namespaces_of, Soak};
use crate::{Error, AFTER_FAULT, FAULT_WAIT, FRONTEND, MESSAGE, RELAY_AT};
use idlegate::sys::netns;
use mio::{Events, Poll};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

impl Soak {
    /// Fault 1: `kill -9` of the relay while each of its clients has a message out.
    pub fn kill_relay(&mut self, live: &mut Live, relay: usize) -> Result<(), Error> {
        let out = live.send(|kind| kind == Kind::Relay);
        kill(&mut self.processes[relay])?;
        let (told, hanging) = live.wait_told(|kind| kind == Kind::Relay, FAULT_WAIT)?;
        self.start_relay()?;
        let echoed = echoes(&self.namespace("internet"), RELAY_AT.parse()?, AFTER_FAULT)?;
        println!(
            "kill -9 relay: {out} clients with a message out, {told} told within {} s, {hanging} left hanging; relay restarted on the same port: {echoed} of {AFTER_FAULT} new connections echoed",
            FAULT_WAIT.as_secs()
        );
        if hanging > 0 || echoed < AFTER_FAULT {
            return Err("the relay's kill -9 did not end as it must".into());
        }
        Ok(())
    }

    /// Fault 2: `kill -9` of `lab up` while the gateway's connections have messages out.
    pub fn kill_lab(&mut self, live: &mut Live, lab: usize, echo: usize) -> Result<(), Error> {
        let held = lab_devices(&self.lab)?;
        let out = live.send(|kind| kind != Kind::Relay);
        kill(&mut self.processes[lab])?;
        let left = namespaces_of(&self.lab)?;
        let devices = lab_devices(&self.lab)?;
        println!(
            "kill -9 lab up ({held} TUN devices): {out} connections with a message out; {} namespaces left with {devices} TUN devices in them",
            left.len()
        );
        if held == 0 || devices > 0 {
            return Err("TUN devices outlived the killed lab up (or there were none)".into());
        }
        live.clients.clear();
        self.start_lab("lab-again.log")?;
        let log = std::fs::read_to_string(self.logs.join("lab-again.log"))?;
        let removed = log.matches("left by an earlier run").count();
        let echo_gone = exits_within(&mut self.processes[echo], FAULT_WAIT);
        let flows = Command::new(&self.idlegate)
            .args(["flows", "--lab", &self.lab, "--json"])
            .output()?;
        let no_flows =
            flows.status.success() && String::from_utf8_lossy(&flows.stdout).trim() == "[]";
        self.start_echo()?;
        let echoed = echoes(&self.namespace("internet"), FRONTEND.parse()?, AFTER_FAULT)?;
        println!(
            "lab up again: removed {removed} namespaces left by the killed one, the old echo server {}, the gateway {}, {echoed} of {AFTER_FAULT} new connections echoed",
            if echo_gone { "stopped" } else { "STILL RUNNING" },
            if no_flows { "started with no flows" } else { "DID NOT START EMPTY" },
        );
        if removed != left.len() || !echo_gone || !no_flows || echoed < AFTER_FAULT {
            return Err("the restart after lab up's kill -9 did not end as it must".into());
        }
        Ok(())
    }
}

/// The soak's client connections, still open after the timed run.
pub struct Live {
    pub poll: Poll,
    pub clients: Vec<Client>,
}

impl Live {
    /// Sends one message on every open connection of the kinds `which` picks that is not
    /// waiting for an echo; returns how many went out.
    pub fn send(&mut self, which: impl Fn(Kind) -> bool) -> usize {
        let mut out = 0;
        for c in self.clients.iter_mut().filter(|c| which(c.kind) && !c.done) {
            if c.waiting || c.send_next() {
                out += 1;
            }
        }
        out
    }

    /// Reads until every open connection of the kinds `which` picks has ended (been told),
    /// or `within` has passed; returns how many were told and how many were not.
    pub fn wait_told(
        &mut self,
        which: impl Fn(Kind) -> bool,
        within: Duration,
    ) -> Result<(usize, usize), Error> {
        let picked: Vec<usize> = (0..self.clients.len())
            .filter(|&i| which(self.clients[i].kind) && !self.clients[i].done)
            .collect();
        let deadline = Instant::now() + within;
        let mut events = Events::with_capacity(1024);
        let mut buf = [0u8; 4096];
        let mut scratch = Tally::default();
        while picked.iter().any(|&i| !self.clients[i].done) && Instant::now() < deadline {
            self.poll
                .poll(&mut events, Some(Duration::from_millis(100)))?;
            for event in events.iter() {
                let c = &mut self.clients[event.token().0 / 2];
                receive(c, &mut buf, &mut scratch);
            }
        }
        let told = picked.iter().filter(|&&i| self.clients[i].done).count();
        Ok((told, picked.len() - told))
    }
}

/// Makes `count` new connections to `to` from namespace `ns`, sends a message on each and
/// returns how many were echoed whole within [`FAULT_WAIT`].
pub fn echoes(ns: &str, to: SocketAddr, count: usize) -> Result<usize, Error> {
    let echoed = netns::spawn_in(ns, move || {
        (0..count)
            .filter(|_| {
                let once = || -> std::io::Result<()> {
                    let mut s = std::net::TcpStream::connect_timeout(&to, FAULT_WAIT)?;
                    s.set_read_timeout(Some(FAULT_WAIT))?;
                    s.write_all(&[0x5a; MESSAGE])?;
                    let mut back = [0u8; MESSAGE];
                    s.read_exact(&mut back)?;
                    if back == [0x5a; MESSAGE] {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("a different echo"))
                    }
                };
                once().is_ok()
            })
            .count()
    })?
    .join()
    .map_err(|_| "echo thread")?;
    Ok(echoed)
}

/// How many TUN devices the namespaces of lab `lab` hold.
pub fn lab_devices(lab: &str) -> Result<usize, Error> {
    namespaces_of(lab)?.iter().map(|ns| devices_in(ns)).sum()
}

/// How many TUN devices namespace `ns` holds.
pub fn devices_in(ns: &str) -> Result<usize, Error> {
    let listed = Command::new("ip")
        .args(["-n", ns, "-d", "-o", "link", "show"])
        .output()?;
    if !listed.status.success() {
        return Err(format!(
            "ip -n {ns} link show: {}",
            String::from_utf8_lossy(&listed.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.contains(" tun "))
        .count())
}

/// SIGKILL, no chance to clean up; waits for the process to be gone.
pub fn kill(child: &mut Child) -> Result<(), Error> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// Whether `child` exits (by anyone's hand) within `within`.
pub fn exits_within(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}
