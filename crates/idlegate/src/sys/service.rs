//! Windows services, through the service control manager (SCM): [`install`] registers a service
//! that starts at boot (`SERVICE_AUTO_START`, its own process, as the account
//! `NT AUTHORITY\LocalService`: no administrator rights, none needed to listen or connect) and runs this
//! executable with the given arguments; [`uninstall`] stops it (waiting a bounded time) and
//! deletes it; [`run_as_service`] is the started process's side: it gives its thread to the
//! SCM's dispatcher, reports Running, runs the body with a stop flag that SERVICE_CONTROL_STOP
//! and SERVICE_CONTROL_SHUTDOWN set, then reports Stopped with the body's outcome as the exit
//! code (0, or service-specific 1 after an error).
//!
//! Through the `windows-service` crate (the Win32 calls `CreateServiceW`, `OpenServiceW`,
//! `ControlService`, `DeleteService`, `StartServiceCtrlDispatcherW`,
//! `RegisterServiceCtrlHandlerExW`, `SetServiceStatus`). Errors name the service and, for the
//! usual causes (not an Administrator, a name taken or unknown, not started by the SCM), say
//! what to do.

use anyhow::{anyhow, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
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

/// Registers the service: started at boot, in its own process, as [`ACCOUNT`].
pub fn install(spec: &Install) -> Result<()> {
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
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG)
        .map_err(|e| explained("installing", &spec.name, e))?;
    service
        .set_description(&spec.description)
        .map_err(|e| explained("describing", &spec.name, e))?;
    Ok(())
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

/// What the service runs until the stop flag is set.
type Body = Box<dyn FnOnce(Arc<AtomicBool>) -> Result<()> + Send>;

/// The one service of this process: its name and body, taken by the service's main function.
static SERVICE: Mutex<Option<(String, Body)>> = Mutex::new(None);
/// The body's outcome, left for [`run_as_service`] to return.
static OUTCOME: Mutex<Option<Result<()>>> = Mutex::new(None);

define_windows_service!(ffi_service_main, service_main);

/// Runs `body` as the service `name`: blocks until the SCM has been told it stopped, then
/// returns the body's outcome. Fails at once (with a hint) when the process was not started by
/// the SCM.
pub fn run_as_service(
    name: &str,
    body: impl FnOnce(Arc<AtomicBool>) -> Result<()> + Send + 'static,
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

fn status(
    state: ServiceState,
    accepted: ServiceControlAccept,
    exit: ServiceExitCode,
) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accepted,
        exit_code: exit,
        checkpoint: 0,
        wait_hint: Duration::ZERO,
        process_id: None,
    }
}

/// Registers the control handler, reports Running, runs the body, reports Stopped.
fn serve(name: &str, body: Body) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            flag.store(true, Ordering::SeqCst);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = service_control_handler::register(name, handler)
        .map_err(|e| explained("registering the control handler of", name, e))?;
    handle
        .set_service_status(status(
            ServiceState::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
            ServiceExitCode::Win32(0),
        ))
        .map_err(|e| explained("reporting", name, e))?;
    let outcome = body(stop);
    let exit = match outcome {
        Ok(()) => ServiceExitCode::Win32(0),
        Err(_) => ServiceExitCode::ServiceSpecific(1),
    };
    handle
        .set_service_status(status(
            ServiceState::Stopped,
            ServiceControlAccept::empty(),
            exit,
        ))
        .map_err(|e| explained("reporting", name, e))?;
    outcome
}
