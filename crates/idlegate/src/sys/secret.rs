//! Files that hold secrets (the tunnel's keys): who may read them, set when they are made and
//! checked when they are read.
//!
//! Contract: [`create_new`] makes a new file, never over an existing one, readable by
//! [`Readers::Owner`] alone or by [`Readers::Anyone`]; [`exposed`] says how an existing
//! secret's file lets others read it, if it does. On Unix both are the file's mode: 0600 or
//! 0644 made, any group or other bit refused (as ssh refuses a private key). Windows has no
//! modes: a new file gets the access control list its directory passes on to new files (ACL
//! inheritance), which this build neither narrows nor checks, so there [`exposed`] never
//! finds anything and what protects a key is its directory's ACL (the book's Windows page, docs/src/deploy/windows.md).

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::path::Path;

/// How a file [`create_new`] made for [`Readers::Owner`] keeps others out, in words for a
/// message to the operator.
#[cfg(unix)]
pub const OWNER_ONLY: &str = "mode 0600";
/// How a file [`create_new`] made for [`Readers::Owner`] keeps others out, in words for a
/// message to the operator.
#[cfg(not(unix))]
pub const OWNER_ONLY: &str = "no mode on Windows: it has the ACL its directory passes on";

/// Who may read a file [`create_new`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Its owner alone (mode 0600 on Unix).
    Owner,
    /// Anyone (mode 0644 on Unix): a public key.
    Anyone,
}

/// How a secret's file lets others read it, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    /// What lets them: `mode 644`.
    pub why: String,
    /// The command that mends it: `chmod 600 PATH`.
    pub fix: String,
}

/// Creates `path` for writing, readable by `readers`; fails if it exists.
pub fn create_new(path: &Path, readers: Readers) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match readers {
            Readers::Owner => 0o600,
            Readers::Anyone => 0o644,
        });
    }
    // Windows: the ACL inherited from the directory, whoever the readers (see the module).
    #[cfg(not(unix))]
    let _ = readers;
    options.open(path)
}

/// How the file at `path` (with `meta`) lets others than its owner read it: on Unix a mode
/// with any group or other bit; on Windows nothing is checked (see the module).
pub fn exposed(path: &Path, meta: &Metadata) -> Option<Exposed> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        (mode & 0o077 != 0).then(|| Exposed {
            why: format!("mode {:o}", mode & 0o777),
            fix: format!("chmod 600 {}", path.display()),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (path, meta);
        None
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_is_made_for_its_owner_alone_and_found_exposed_once_others_may_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        create_new(&path, Readers::Owner).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(exposed(&path, &meta), None);
        assert!(
            create_new(&path, Readers::Owner).is_err(),
            "never over a file"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let found = exposed(&path, &std::fs::metadata(&path).unwrap()).unwrap();
        assert_eq!(found.why, "mode 640");
        assert_eq!(found.fix, format!("chmod 600 {}", path.display()));
        let public = dir.path().join("p");
        create_new(&public, Readers::Anyone).unwrap();
        let mode = std::fs::metadata(&public).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
