//! Least privilege for a running gateway: once its TUN devices are open and its sockets bound,
//! it needs no privilege at all to forward, so it gives every one of them up.
//!
//! Contract: call [`drop_all`] while the process has one thread (capabilities and
//! `no_new_privs` are per thread; threads started later inherit them). It sets `no_new_privs`,
//! becomes `user` if given and not already (supplementary groups cleared, then the user's
//! group, then the user: CAP_SETGID and CAP_SETUID, which root has), then empties every
//! capability set it may: effective, permitted, inheritable, ambient, and the bounding set when
//! it holds CAP_SETPCAP (root does; a process started with only CAP_NET_ADMIN does not, and
//! no_new_privs already keeps an exec from gaining anything). It then reads its capabilities
//! back and fails unless the effective and permitted sets (and the bounding set, if it was
//! dropped) are empty, so a partial drop never runs silently. The open TUN fds, sockets and
//! files keep working: access is checked when they are opened, not when they are used.

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability};
use std::ffi::CString;
use std::path::Path;

/// A user to run as: its ids, looked up once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Why a user could not be looked up (the user's name is for the caller to add).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("a user name has no NUL byte")]
    Nul,
    #[error("looking the user up failed: {0}")]
    Failed(std::io::Error),
    #[error("no such user")]
    NoSuchUser,
    #[error("has uid 0, which gives nothing up")]
    Root,
}

impl User {
    /// Looks up `name` in the user database. A user with uid 0 is refused: running as it
    /// would give nothing up.
    pub fn lookup(name: &str) -> Result<User, LookupError> {
        let c = CString::new(name).map_err(|_| LookupError::Nul)?;
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0u8; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf` outlives the result's use.
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc != 0 {
            return Err(LookupError::Failed(std::io::Error::from_raw_os_error(rc)));
        }
        if found.is_null() {
            return Err(LookupError::NoSuchUser);
        }
        if pwd.pw_uid == 0 {
            return Err(LookupError::Root);
        }
        Ok(User {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// Hands `path` (the control socket) to `user`, so that it can still be reached by that user
/// alone once the gateway runs as it; the mode stays 0600.
pub fn give(path: &Path, user: User) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("handing {} to uid {}", path.display(), user.uid))
}

/// Gives up every privilege: see the module documentation.
pub fn drop_all(user: Option<User>) -> Result<()> {
    // SAFETY: prctl with these arguments only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting no_new_privs");
    }
    if let Some(user) = user {
        become_user(user)?;
    }
    // Dropping from the bounding set needs CAP_SETPCAP. Without it the bounding set stays as
    // it was: it grants nothing without a permitted set, and no_new_privs keeps an exec from
    // filling one.
    let bounding = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .context("reading the capabilities")?;
    if bounding {
        // Only what this kernel knows (a capability newer than it cannot be dropped, nor held).
        for cap in caps::runtime::thread_all_supported() {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    caps::clear(None, CapSet::Effective).context("clearing the effective capabilities")?;
    caps::clear(None, CapSet::Permitted).context("clearing the permitted capabilities")?;
    let sets: &[CapSet] = if bounding {
        &[CapSet::Effective, CapSet::Permitted, CapSet::Bounding]
    } else {
        &[CapSet::Effective, CapSet::Permitted]
    };
    for &set in sets {
        let left = caps::read(None, set).context("reading the capabilities back")?;
        if !left.is_empty() {
            bail!("capabilities left in the {set:?} set after dropping them: {left:?}");
        }
    }
    // SAFETY: plain syscall; it must fail.
    if let Some(user) = user {
        if unsafe { libc::setuid(0) } == 0 {
            bail!("could become root again after dropping to uid {}", user.uid);
        }
    }
    Ok(())
}

fn become_user(user: User) -> Result<()> {
    // SAFETY: plain syscalls on this process's credentials; each result is checked.
    unsafe {
        let (mut r, mut e, mut s) = (0, 0, 0);
        let (mut gr, mut ge, mut gs) = (0, 0, 0);
        if libc::getresuid(&mut r, &mut e, &mut s) == 0
            && libc::getresgid(&mut gr, &mut ge, &mut gs) == 0
            && [r, e, s] == [user.uid; 3]
            && [gr, ge, gs] == [user.gid; 3]
        {
            // Started as the user already (say, by systemd with User= and only
            // CAP_NET_ADMIN): nothing to change, and no CAP_SETUID to change it with.
            return Ok(());
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error())
                .context("clearing the groups (becoming another user needs CAP_SETGID and CAP_SETUID, as root has)");
        }
        if libc::setgid(user.gid) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("becoming group {}", user.gid));
        }
        if libc::setuid(user.uid) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("becoming user {}", user.uid));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_user_and_root_are_refused_without_naming_any_flag() {
        let unknown = User::lookup("no-such-user-here").unwrap_err();
        assert!(matches!(unknown, LookupError::NoSuchUser), "{unknown}");
        assert_eq!(unknown.to_string(), "no such user");
        let root = User::lookup("root").unwrap_err();
        assert!(matches!(root, LookupError::Root), "{root}");
        assert_eq!(root.to_string(), "has uid 0, which gives nothing up");
        assert!(matches!(User::lookup("a\0b"), Err(LookupError::Nul)));
    }

    #[test]
    fn a_user_other_than_root_is_found_with_its_ids() {
        // `nobody` exists on every Linux system this runs on (Debian's uid 65534).
        let nobody = User::lookup("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
    }
}
