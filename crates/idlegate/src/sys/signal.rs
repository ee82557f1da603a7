//! Signals: the one place idlegate asks for them. On Linux always with one mechanism,
//! signal-hook's iterator: the handler only records the signal, and a thread of ours receives
//! it as a value and acts (no code of ours runs in a signal handler). On Windows, console
//! control events (Ctrl-C, Ctrl-Break, the console closed) through SetConsoleCtrlHandler,
//! whose handler the system runs on a thread of its own: it only sets the stop flags. (Logoff
//! and shutdown reach services only; a console program is ended at logoff without an event:
//! Microsoft, HandlerRoutine.)
//!
//! Three uses, one function each: [`stop_on_interrupt`] sets a stop flag that a serving loop
//! polls (echo, relay, audit --watch), on both systems; Linux alone: [`Interrupt`] stops a
//! gateway whose stopper exists only once setup ends, and exits at once on a second signal;
//! [`ChildSignals`] passes signals on to a program idlegate started (`idlegate run`), and
//! [`PassOn`] passes every signal on to a program run in the foreground in a process group
//! of its own (`lab exec`). SIGINT
//! and SIGTERM ([`INTERRUPTS`]) are the signals that ask idlegate itself to stop.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(windows)]
pub use windows::*;

#[cfg(windows)]
mod windows {
    use super::*;
    use std::sync::{Mutex, PoisonError};
    use windows_sys::core::BOOL;
    use windows_sys::Win32::System::Console::{
        SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT, CTRL_LOGOFF_EVENT,
        CTRL_SHUTDOWN_EVENT,
    };

    /// The flags a console control event sets.
    static STOPS: Mutex<Vec<Arc<AtomicBool>>> = Mutex::new(Vec::new());

    /// Runs on a thread the system starts for the event. For Ctrl-C and Ctrl-Break, setting
    /// the flags is all (TRUE: handled, the process goes on and stops by itself). For the
    /// console closed the system ends the process once this returns, so it gives the serving
    /// loops a moment to see their flag first (the system allows a handler 5 s for it).
    /// CTRL_LOGOFF_EVENT and CTRL_SHUTDOWN_EVENT reach services only (Microsoft,
    /// HandlerRoutine: interactive programs are ended at logoff without them); they are
    /// handled the same way in case a process that installed this handler runs as one.
    unsafe extern "system" fn on_control(event: u32) -> BOOL {
        let stops = STOPS.lock().unwrap_or_else(PoisonError::into_inner);
        for stop in stops.iter() {
            stop.store(true, Ordering::SeqCst);
        }
        drop(stops);
        match event {
            CTRL_C_EVENT | CTRL_BREAK_EVENT => 1,
            CTRL_CLOSE_EVENT | CTRL_LOGOFF_EVENT | CTRL_SHUTDOWN_EVENT => {
                std::thread::sleep(crate::sys::poll::STOP_CHECK * 3);
                1
            }
            _ => 0,
        }
    }

    /// From now on Ctrl-C, Ctrl-Break and closing the console set `stop`
    /// (and are otherwise handled: a second one does nothing more); whoever polls `stop` ends
    /// its work.
    pub fn stop_on_interrupt(stop: &Arc<AtomicBool>) -> io::Result<()> {
        let mut stops = STOPS.lock().unwrap_or_else(PoisonError::into_inner);
        if stops.is_empty() {
            // SAFETY: `on_control` has the signature the call asks for and lives for the
            // whole process.
            if unsafe { SetConsoleCtrlHandler(Some(on_control), 1) } == 0 {
                return Err(io::Error::last_os_error());
            }
        }
        stops.push(stop.clone());
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use crate::sys::process;
    use signal_hook::iterator::Signals;
    use std::sync::{mpsc, Mutex, MutexGuard, PoisonError};

    /// These lines are the command's own: [`crate::LOG_TARGET`].
    use crate::LOG_TARGET as LOG;

    pub use libc::c_int as Signal;
    pub use signal_hook::consts::{
        SIGALRM, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH,
    };

    /// The signals that ask idlegate to stop: Ctrl-C and `kill`'s default.
    pub const INTERRUPTS: [Signal; 2] = [SIGINT, SIGTERM];

    /// Receives `signals` from now on and calls `handle` with each, on a thread named `name`.
    fn on_signals(
        signals: Signals,
        name: &str,
        mut handle: impl FnMut(Signal) + Send + 'static,
    ) -> io::Result<()> {
        let mut signals = signals;
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for signal in signals.forever() {
                    handle(signal);
                }
            })?;
        Ok(())
    }

    /// From now on SIGINT and SIGTERM set `stop` (and are otherwise ignored: a second one does
    /// nothing more); whoever polls `stop` ends its work.
    pub fn stop_on_interrupt(stop: &Arc<AtomicBool>) -> io::Result<()> {
        let signals = Signals::new(INTERRUPTS)?;
        let stop = stop.clone();
        on_signals(signals, "signals", move |_| {
            stop.store(true, Ordering::SeqCst)
        })
    }

    type Stop = Box<dyn Fn() + Send>;

    /// SIGINT and SIGTERM for a whole run whose stop comes later: the first calls the attached
    /// stop (or, during setup, makes [`Interrupt::attach`] report it so the command stops as soon
    /// as setup ends, cleaning up what it built); a second exits at once with 128 + the signal.
    pub struct Interrupt {
        received: Arc<AtomicBool>,
        stop: Arc<Mutex<Option<Stop>>>,
    }

    impl Interrupt {
        /// Handles SIGINT and SIGTERM from now on.
        pub fn install() -> io::Result<Interrupt> {
            let signals = Signals::new(INTERRUPTS)?;
            let interrupt = Interrupt {
                received: Arc::default(),
                stop: Arc::default(),
            };
            let (received, stop) = (interrupt.received.clone(), interrupt.stop.clone());
            on_signals(signals, "signals", move |signal| {
                if received.swap(true, Ordering::SeqCst) {
                    eprintln!("idlegate: signal {signal} again: exiting without cleaning up");
                    std::process::exit(i32::from(process::signal_exit_code(signal)));
                }
                tracing::info!(target: LOG, "signal {signal}: stopping (send it again to exit at once)");
                if let Some(stop) = lock(&stop).as_ref() {
                    stop();
                }
            })?;
            Ok(interrupt)
        }

        /// Lets a signal call `stop`; true if one already came (then `stop` is not called: the
        /// caller stops by itself).
        pub fn attach(&self, stop: impl Fn() + Send + 'static) -> bool {
            let mut slot = lock(&self.stop);
            *slot = Some(Box::new(stop));
            self.received.load(Ordering::SeqCst)
        }
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signals caught for a child that is not started yet: caught before the start so none is
    /// lost in between, then passed on once [`ChildSignals::forward_to`] names the child. As
    /// with [`PassOn`], the thread starts in [`ChildSignals::catch`], before the child.
    pub struct ChildSignals(mpsc::Sender<i32>);

    impl ChildSignals {
        /// Catches `signals` from now on (none of them ends idlegate any more); those in
        /// `forwarded` will be passed on to the child, the others dropped.
        pub fn catch(signals: &[Signal], forwarded: &'static [Signal]) -> io::Result<ChildSignals> {
            let signals = Signals::new(signals)?;
            let (child, named) = mpsc::channel();
            let mut pid = None;
            on_signals(signals, "signals", move |signal| {
                // Signals that came before the child was named wait for it (or, with no child,
                // are dropped).
                let Some(pid) = *pid.get_or_insert_with(|| named.recv().ok()) else {
                    return;
                };
                if forwarded.contains(&signal) {
                    // The child may have exited already; then there is nobody to tell.
                    let _ = process::signal(pid, signal);
                }
            })?;
            Ok(ChildSignals(child))
        }

        /// From now on passes the caught signals on to `pid`.
        pub fn forward_to(self, pid: i32) {
            let _ = self.0.send(pid);
        }
    }

    /// The signals [`PassOn`] passes on: those that ask a program to stop, hang up, reload or
    /// look again (every one a shell's `kill` is used for that a program may handle).
    pub const PASSED_ON: [Signal; 8] = [
        SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM, SIGWINCH,
    ];

    /// [`PASSED_ON`], caught for a program that is not started yet (so none is lost in
    /// between: none of them ends idlegate any more), then passed on to it once
    /// [`PassOn::to`] names it. The thread that passes them on starts in [`PassOn::catch`],
    /// before the program exists, so that failing to start it is an ordinary error before
    /// anything runs (signal-hook keeps its handlers once installed: a catch without the
    /// thread would leave idlegate deaf to SIGTERM). Signals that come before the program is
    /// named wait, as the kernel's pending signals do (one of each kind).
    ///
    /// Every one is passed on, whoever raised it: the program runs in a process group of its
    /// own ([`crate::sys::job`]), which holds the terminal when idlegate's group held it, so a
    /// terminal's signals (Ctrl-C, Ctrl-\\, a resize) go to the program alone, and one sent to
    /// idlegate's whole group (`kill -TERM -PGID`, `kill 0`) reaches the program once,
    /// through idlegate. Two edges remain where it arrives twice: a terminal that hangs up
    /// sends SIGHUP to the program's group, the foreground one, and the shell then sends its
    /// jobs, idlegate among them, another; and systemd's KillMode=control-group signals every
    /// process of the cgroup, the program too.
    pub struct PassOn(mpsc::Sender<i32>);

    impl PassOn {
        /// Catches [`PASSED_ON`] from now on and starts the thread that will pass them on.
        pub fn catch() -> io::Result<PassOn> {
            let signals = Signals::new(PASSED_ON)?;
            let (program, named) = mpsc::channel();
            let mut pid = None;
            on_signals(signals, "signals", move |signal| {
                // No program (it could not be started): nobody to pass anything on to.
                let Some(pid) = *pid.get_or_insert_with(|| named.recv().ok()) else {
                    return;
                };
                // The program may have exited already: then nobody is left to tell.
                let _ = process::signal(pid, signal);
            })?;
            Ok(PassOn(program))
        }

        /// From now on passes each signal (and those that came since [`PassOn::catch`]) on
        /// to `pid`.
        pub fn to(self, pid: i32) {
            // The thread ends only with the process (or, above, without a pid).
            let _ = self.0.send(pid);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn stop_on_interrupt_sets_the_flag_when_sigterm_arrives() {
        // SIGTERM is caught for the rest of this test process: no other test here raises it.
        let stop = Arc::new(AtomicBool::new(false));
        stop_on_interrupt(&stop).expect("install");
        signal_hook::low_level::raise(SIGTERM).expect("raise");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(stop.load(Ordering::SeqCst), "SIGTERM did not set the flag");
    }

    #[test]
    fn a_signal_caught_before_the_child_starts_reaches_it_once_it_is_named() {
        use std::os::unix::process::ExitStatusExt;
        // SIGUSR2 is caught for the rest of this test process: no other test here raises it.
        let signals = ChildSignals::catch(&[SIGUSR2], &[SIGUSR2]).expect("catching");
        signal_hook::low_level::raise(SIGUSR2).expect("raise");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("starting sleep");
        signals.forward_to(child.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the SIGUSR2 caught before the start did not reach the child");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(status.signal(), Some(SIGUSR2));
    }
}
