//! Windows services, through the service control manager (SCM): [`install`] registers a service
//! that starts at boot (`SERVICE_AUTO_START`, its own process, as the account
//! `NT AUTHORITY\LocalService`: no administrator rights, none needed to listen or connect) and runs this
//! executable with the given arguments, restarted by the SCM when it fails (also when it
//! reports Stopped with an error: [`RESTART_AFTER`]); [`uninstall`] stops it (waiting a
//! bounded time) and deletes it; [`run_as_service`] is the started process's side: it gives
//! its thread to the SCM's dispatcher, reports StartPending, runs the body with a stop flag
//! that SERVICE_CONTROL_STOP and SERVICE_CONTROL_SHUTDOWN set (reporting StopPending with a
//! wait hint) and a call that reports Running once the body serves, then reports Stopped with
//! the body's outcome as the exit code (0, or service-specific 1 after an error).
//!
//! Through the `windows-service` crate (the Win32 calls `CreateServiceW`, `OpenServiceW`,
//! `ChangeServiceConfig2W`, `ControlService`, `DeleteService`, `StartServiceCtrlDispatcherW`,
//! `RegisterServiceCtrlHandlerExW`, `SetServiceStatus`). Errors name the service and, for the
//! usual causes (not an Administrator, a name taken or unknown, not started by the SCM), say
//! what to do.

use anyhow::{anyhow, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// Win32 error codes the hints are given for (winerror.h).
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
const ERROR_SERVICE_EXISTS: i32 = 1073;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
const ERROR_SERVICE_MARKED_FOR_DELETE: i32 = 1072;

/// The account a service runs as: Windows' built-in least-privileged service account.
pub const ACCOUNT: &str = "NT AUTHORITY\\LocalService";

/// What [`install`] has the SCM do when the service fails: restart it after 10 s, again after
/// 10 s, then after 60 s each time (`sc.exe failure NAME actions=
/// restart/10000/restart/10000/restart/60000`)...
pub const RESTART_AFTER: [Duration; 3] = [
    Duration::from_secs(10),
    Duration::from_secs(10),
    Duration::from_secs(60),
];
/// ... counting failures from zero again after a day without one (`reset= 86400`).
pub const FAILURES_FORGOTTEN_AFTER: Duration = Duration::from_secs(86_400);

/// How long [`uninstall`] waits for a running service to stop.
pub const STOP_WITHIN: Duration = Duration::from_secs(30);

/// What [`install`] registers.
pub struct Install {
    /// The service's name (`sc.exe NAME`), 1 to 256 characters, no `/` or `\`.
    pub name: String,
    /// The name the Services console shows.
    pub display_name: String,
    pub description: String,
    /// The executable the SCM starts, and its arguments.
    pub executable: PathBuf,
    pub arguments: Vec<OsString>,
}

/// A service name the SCM accepts: 1 to 256 characters, no `/` or `\`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 256 || name.contains(['/', '\\']) {
        anyhow::bail!(
            "--name {name:?}: a service name is 1 to 256 characters without / or \\ \
             (Microsoft, CreateServiceW, lpServiceName)"
        );
    }
    Ok(())
}

/// The error of a Win32 call on service `name`, with a hint for the usual causes.
fn explained(what: &str, name: &str, e: windows_service::Error) -> anyhow::Error {
    let code = match &e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    };
    let hint = match code {
        Some(ERROR_ACCESS_DENIED) => {
            "\nhint: the service manager lets Administrators do this: run it from an elevated \
             prompt (Run as administrator)"
                .to_string()
        }
        Some(ERROR_SERVICE_EXISTS) => format!(
            "\nhint: a service called {name} exists: `idlegate service uninstall --name {name}` \
             first, or pick another --name"
        ),
        Some(ERROR_SERVICE_DOES_NOT_EXIST) => format!(
            "\nhint: there is no service called {name} (`sc.exe query state= all` lists them)"
        ),
        Some(ERROR_SERVICE_MARKED_FOR_DELETE) => format!(
            "\nhint: {name} is being deleted; it goes once every program holding it (the \
             Services console, sc.exe) lets go of it"
        ),
        Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) => format!(
            "\nhint: this is what the service manager starts; start the service with \
             `sc.exe start {name}`, or run `idlegate relay` itself in a console"
        ),
        _ => String::new(),
    };
    let why = match e {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    };
    anyhow!("{what} service {name}: {why}{hint}")
}

/// Registers the service: started at boot, in its own process, as [`ACCOUNT`], restarted when
/// it fails (see [`Recovery`]).
pub fn install(spec: &Install) -> Result<Recovery> {
    check_name(&spec.name)?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| explained("installing", &spec.name, e))?;
    let info = ServiceInfo {
        name: spec.name.clone().into(),
        display_name: spec.display_name.clone().into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: spec.executable.clone(),
        launch_arguments: spec.arguments.clone(),
        dependencies: vec![],
        account_name: Some(ACCOUNT.into()),
        // The built-in service accounts have no password.
        account_password: None,
    };
    // SERVICE_START too: Microsoft's ChangeServiceConfig2W asks for it to set a restart
    // action.
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
        .map_err(|e| explained("installing", &spec.name, e))?;
    service
        .set_description(&spec.description)
        .map_err(|e| explained("describing", &spec.name, e))?;
    let failure_actions = ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(FAILURES_FORGOTTEN_AFTER),
        reboot_msg: None,
        command: None,
        actions: Some(
            RESTART_AFTER
                .iter()
                .map(|&delay| ServiceAction {
                    action_type: ServiceActionType::Restart,
                    delay,
                })
                .collect(),
        ),
    };
    // A relay that fails (a port taken, a key unreadable) reports Stopped with an exit code
    // rather than crashing; without the flag the SCM runs failure actions after crashes only
    // (Microsoft, SERVICE_FAILURE_ACTIONS_FLAG).
    let recovery = service
        .update_failure_actions(failure_actions)
        .map_err(|e| explained("setting the restart on failure of", &spec.name, e))
        .and_then(|()| {
            service
                .set_failure_actions_on_non_crash_failures(true)
                .map_err(|e| {
                    explained(
                        "setting the restart on a failure that is not a crash of",
                        &spec.name,
                        e,
                    )
                })
        });
    Ok(match recovery {
        Ok(()) => Recovery::Set,
        Err(e) => Recovery::Refused(e),
    })
}

/// Whether [`install`] could set the service's recovery ([`RESTART_AFTER`], also after a
/// failure that is not a crash): the service is installed either way.
pub enum Recovery {
    Set,
    /// The SCM refused it: why.
    Refused(anyhow::Error),
}

/// Stops the service if it runs (waiting at most [`STOP_WITHIN`]) and deletes it. Returns
/// whether it was running.
pub fn uninstall(name: &str) -> Result<bool> {
    check_name(name)?;
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| explained("uninstalling", name, e))?;
    let service = manager
        .open_service(
            name,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| explained("uninstalling", name, e))?;
    let state = service
        .query_status()
        .map_err(|e| explained("querying", name, e))?
        .current_state;
    let was_running = state != ServiceState::Stopped;
    if was_running {
        match service.stop() {
            Ok(_) => {}
            Err(windows_service::Error::Winapi(io))
                if io.raw_os_error() == Some(ERROR_SERVICE_NOT_ACTIVE) => {}
            Err(e) => return Err(explained("stopping", name, e)),
        }
        let deadline = Instant::now() + STOP_WITHIN;
        loop {
            let now = service
                .query_status()
                .map_err(|e| explained("querying", name, e))?
                .current_state;
            if now == ServiceState::Stopped {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "stopping service {name}: still {now:?} after {STOP_WITHIN:?}\nhint: \
                     `sc.exe query {name}` shows its state; uninstall again once it has stopped"
                );
            }
            // The SCM has no event for a state change a program can wait on without a
            // notification callback; its own tools poll too.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    service
        .delete()
        .map_err(|e| explained("deleting", name, e))?;
    Ok(was_running)
}

/// What the service runs: given the stop flag (set by SERVICE_CONTROL_STOP and
/// SERVICE_CONTROL_SHUTDOWN) and a call that reports Running, to be made once it serves.
type Body = Box<dyn FnOnce(Arc<AtomicBool>, Box<dyn FnOnce() + Send>) -> Result<()> + Send>;

/// The one service of this process: its name and body, taken by the service's main function.
static SERVICE: Mutex<Option<(String, Body)>> = Mutex::new(None);
/// The body's outcome, left for [`run_as_service`] to return.
static OUTCOME: Mutex<Option<Result<()>>> = Mutex::new(None);

/// How long starting may take before the service manager should worry (binding is quick; a
/// loaded machine resolving a name: seconds).
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long stopping may take once asked: the relay's loops look at their stop flag every
/// [`STOP_CHECK`](crate::sys::poll::STOP_CHECK), so a few of those, with margin.
const STOP_HINT: Duration =
    Duration::from_millis(crate::sys::poll::STOP_CHECK.as_millis() as u64 * 5);

define_windows_service!(ffi_service_main, service_main);

/// Runs `body` as the service `name`: blocks until the SCM has been told it stopped, then
/// returns the body's outcome. The service is StartPending until `body` calls the call it is
/// given (once it serves: its ports bound), Running from then on, StopPending once asked to
/// stop, Stopped when `body` returns. Fails at once (with a hint) when the process was not
/// started by the SCM.
pub fn run_as_service(
    name: &str,
    body: impl FnOnce(Arc<AtomicBool>, Box<dyn FnOnce() + Send>) -> Result<()> + Send + 'static,
) -> Result<()> {
    check_name(name)?;
    *SERVICE
        .lock()
        .map_err(|_| anyhow!("service state poisoned"))? = Some((name.to_string(), Box::new(body)));
    service_dispatcher::start(name, ffi_service_main)
        .map_err(|e| explained("running as", name, e))?;
    OUTCOME
        .lock()
        .map_err(|_| anyhow!("service state poisoned"))?
        .take()
        .unwrap_or_else(|| {
            Err(anyhow!(
                "service {name}: the service manager never started it"
            ))
        })
}

/// The service's main function, on the dispatcher's thread.
fn service_main(_arguments: Vec<OsString>) {
    let taken = SERVICE.lock().ok().and_then(|mut s| s.take());
    let Some((name, body)) = taken else {
        return;
    };
    let outcome = serve(&name, body);
    if let Ok(mut slot) = OUTCOME.lock() {
        *slot = Some(outcome);
    }
}

/// The service's state as told to the SCM, and the one place that tells it: the control
/// handler (StopPending) and the service's thread (Running, Stopped) report through it, so a
/// late StopPending never follows Stopped.
struct Reporter {
    handle: ServiceStatusHandle,
    state: Mutex<ServiceState>,
}

impl Reporter {
    /// Reports `to` (with the controls that state accepts), unless the service has stopped
    /// already or `only_from` names another state than the current one.
    fn report(
        &self,
        to: ServiceState,
        only_from: Option<ServiceState>,
        exit: ServiceExitCode,
    ) -> windows_service::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *state == ServiceState::Stopped || only_from.is_some_and(|from| from != *state) {
            return Ok(());
        }
        let (accepted, checkpoint, wait_hint) = match to {
            ServiceState::StartPending => (ServiceControlAccept::empty(), 1, START_WITHIN),
            ServiceState::StopPending => (ServiceControlAccept::empty(), 1, STOP_HINT),
            ServiceState::Running => (
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
                0,
                Duration::ZERO,
            ),
            _ => (ServiceControlAccept::empty(), 0, Duration::ZERO),
        };
        self.handle.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: to,
            controls_accepted: accepted,
            exit_code: exit,
            checkpoint,
            wait_hint,
            process_id: None,
        })?;
        *state = to;
        Ok(())
    }
}

/// Registers the control handler, reports StartPending, runs the body (which has Running
/// reported once it serves), reports Stopped.
fn serve(name: &str, body: Body) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let told_back: Arc<OnceLock<Reporter>> = Arc::new(OnceLock::new());
    let (flag, told) = (Arc::clone(&stop), Arc::clone(&told_back));
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            flag.store(true, Ordering::SeqCst);
            // Microsoft: a service that takes more than a moment to stop reports
            // SERVICE_STOP_PENDING with a wait hint, from the handler. A failure to report is
            // not one to act on: the relay stops anyway, and Stopped follows.
            if let Some(reporter) = told.get() {
                let _ = reporter.report(
                    ServiceState::StopPending,
                    Some(ServiceState::Running),
                    ServiceExitCode::Win32(0),
                );
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = service_control_handler::register(name, handler)
        .map_err(|e| explained("registering the control handler of", name, e))?;
    let reporter = Arc::clone(&told_back);
    reporter
        .get_or_init(|| Reporter {
            handle,
            state: Mutex::new(ServiceState::StartPending),
        })
        .report(ServiceState::StartPending, None, ServiceExitCode::Win32(0))
        .map_err(|e| explained("reporting", name, e))?;
    let (ready_reporter, ready_name) = (Arc::clone(&reporter), name.to_string());
    let ready = Box::new(move || {
        if let Some(r) = ready_reporter.get() {
            if let Err(e) = r.report(
                ServiceState::Running,
                Some(ServiceState::StartPending),
                ServiceExitCode::Win32(0),
            ) {
                tracing::warn!(target: crate::LOG_TARGET, "{:#}", explained("reporting", &ready_name, e));
            }
        }
    });
    let outcome = body(stop, ready);
    let exit = match outcome {
        Ok(()) => ServiceExitCode::Win32(0),
        Err(_) => ServiceExitCode::ServiceSpecific(1),
    };
    if let Some(r) = reporter.get() {
        r.report(ServiceState::Stopped, None, exit)
            .map_err(|e| explained("reporting", name, e))?;
    }
    outcome
}

/// What an [`EventLog`] entry is (its `EVENTLOG_*_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Error,
    Warning,
    Information,
}

/// The Application event log, written as the event source named after the service: where a
/// service's messages go, as it has no console (`RegisterEventSourceW`, `ReportEventW`).
/// The source is not registered with a message file, so Event Viewer shows each entry's text
/// after a line saying the event's description cannot be found; `Get-WinEvent` and
/// `wevtutil` show it the same way (Microsoft, ReportEventW: "If the source name cannot be
/// found, the event logging service uses the Application log").
pub struct EventLog(windows_sys::Win32::Foundation::HANDLE);

// SAFETY: an event log handle may be used from any thread (Microsoft documents no thread
// affinity for it), and [`EventLog`] never hands it out.
unsafe impl Send for EventLog {}
unsafe impl Sync for EventLog {}

impl EventLog {
    /// The log, as source `source`; `None` if the system refuses the handle (then there is
    /// nowhere else to say so).
    pub fn open(source: &str) -> Option<EventLog> {
        let name = wide(source);
        // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; a null
        // server name is the local computer.
        let handle = unsafe {
            windows_sys::Win32::System::EventLog::RegisterEventSourceW(
                std::ptr::null(),
                name.as_ptr(),
            )
        };
        (!handle.is_null()).then_some(EventLog(handle))
    }

    /// Writes one entry holding `text` (event ID 1, no category); a failure is dropped, as
    /// there is nowhere else to say it.
    pub fn write(&self, kind: EventKind, text: &str) {
        use windows_sys::Win32::System::EventLog::{
            ReportEventW, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
        };
        let kind = match kind {
            EventKind::Error => EVENTLOG_ERROR_TYPE,
            EventKind::Warning => EVENTLOG_WARNING_TYPE,
            EventKind::Information => EVENTLOG_INFORMATION_TYPE,
        };
        let text = wide(text);
        let strings = [text.as_ptr()];
        // SAFETY: the handle is open until drop; `strings` holds one NUL-terminated UTF-16
        // string, both outliving the call; no user SID and no raw data.
        unsafe {
            ReportEventW(
                self.0,
                kind,
                0,
                1,
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            );
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is closed once.
        unsafe {
            windows_sys::Win32::System::EventLog::DeregisterEventSource(self.0);
        }
    }
}

/// `text` as a NUL-terminated UTF-16 string (a NUL inside it ends it early).
fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16()
        .take_while(|&c| c != 0)
        .chain(std::iter::once(0))
        .collect()
}

/// A `tracing_subscriber` writer to an [`EventLog`]: the fmt layer formats each event and
/// writes it at once, so each event becomes one entry, of the kind its level says (ERROR,
/// WARN, or Information for the others).
pub struct EventLogWriter(Arc<EventLog>);

impl EventLogWriter {
    pub fn new(log: EventLog) -> EventLogWriter {
        EventLogWriter(Arc::new(log))
    }
}

/// One event's text, written to the log when dropped.
pub struct EventEntry {
    log: Arc<EventLog>,
    kind: EventKind,
    text: Vec<u8>,
}

impl std::io::Write for EventEntry {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventEntry {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let text = text.trim_end();
        if !text.is_empty() {
            self.log.write(self.kind, text);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EventLogWriter {
    type Writer = EventEntry;

    fn make_writer(&'a self) -> EventEntry {
        EventEntry {
            log: Arc::clone(&self.0),
            kind: EventKind::Information,
            text: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventEntry {
        let kind = match *meta.level() {
            tracing::Level::ERROR => EventKind::Error,
            tracing::Level::WARN => EventKind::Warning,
            _ => EventKind::Information,
        };
        EventEntry {
            log: Arc::clone(&self.0),
            kind,
            text: Vec::new(),
        }
    }
}
