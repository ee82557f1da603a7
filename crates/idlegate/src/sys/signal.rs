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
//! [`PassOn`] passes every signal a process sends on to a program run in the foreground
//! (`lab exec`), but not those the kernel raised for a terminal, which reach the program
//! too. SIGINT
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
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// These lines are the command's own: [`crate::LOG_TARGET`].
    use crate::LOG_TARGET as LOG;

    pub use libc::c_int as Signal;
    pub use signal_hook::consts::{
        SIGALRM, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH,
    };
    use signal_hook::iterator::exfiltrator::origin::WithOrigin;
    use signal_hook::iterator::SignalsInfo;
    use signal_hook::low_level::siginfo::Cause;

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
    /// lost in between, then [`ChildSignals::forward_to`] the child once it runs.
    pub struct ChildSignals(Signals);

    impl ChildSignals {
        /// Catches `signals` from now on: none of them ends idlegate any more.
        pub fn catch(signals: &[Signal]) -> io::Result<ChildSignals> {
            Ok(ChildSignals(Signals::new(signals)?))
        }

        /// Passes each caught signal that is in `forwarded` on to `pid`; the others are dropped.
        pub fn forward_to(self, pid: i32, forwarded: &'static [Signal]) -> io::Result<()> {
            on_signals(self.0, "signals", move |signal| {
                if forwarded.contains(&signal) {
                    // The child may have exited already; then there is nobody to tell.
                    let _ = process::signal(pid, signal);
                }
            })
        }
    }

    /// The signals [`PassOn`] passes on: those that ask a program to stop, hang up, reload or
    /// look again (every one a shell's `kill` is used for that a program may handle).
    pub const PASSED_ON: [Signal; 8] = [
        SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM, SIGWINCH,
    ];

    /// [`PASSED_ON`], caught for a program that is not started yet (so none is lost in
    /// between: none of them ends idlegate any more), then passed on to it with
    /// [`PassOn::to`]. A signal another process sent (kill(2), sigqueue(3)) is passed on; one
    /// the kernel raised is not: those are a terminal's (Ctrl-C's SIGINT, Ctrl-\'s SIGQUIT, a
    /// hang-up's SIGHUP, a resize's SIGWINCH), which the kernel sends to the terminal's whole
    /// foreground process group, so the program, in idlegate's group, has it already; passing
    /// it on would deliver it twice.
    pub struct PassOn(SignalsInfo<WithOrigin>);

    impl PassOn {
        pub fn catch() -> io::Result<PassOn> {
            Ok(PassOn(SignalsInfo::with_exfiltrator(
                PASSED_ON,
                WithOrigin::default(),
            )?))
        }

        /// From now on passes each signal a process sends on to `pid`, on a thread of its own.
        pub fn to(self, pid: i32) -> io::Result<()> {
            let mut signals = self.0;
            std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    for origin in signals.forever() {
                        if !from_a_process(&origin.cause) {
                            continue;
                        }
                        // The program may have exited already: then nobody is left to tell.
                        let _ = process::signal(pid, origin.signal);
                    }
                })?;
            Ok(())
        }
    }

    /// Whether a signal was sent by a process rather than raised by the kernel (a terminal's
    /// keys, a hang-up). An unknown cause counts as sent: better twice than never.
    fn from_a_process(cause: &Cause) -> bool {
        !matches!(cause, Cause::Kernel)
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
}
