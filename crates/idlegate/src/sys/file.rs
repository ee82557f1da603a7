//! Files: advisory locks and identities.
//!
//! Contract: [`try_lock`] takes an flock(2) lock without waiting and says whether it got it
//! (the lock lives as long as the descriptor, or until released); [`inode`] is the inode
//! number of the file behind a descriptor (fstat), how two descriptors of one file are told.

use std::os::fd::{AsFd, AsRawFd};

/// An flock(2) lock: one holder, or many readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Exclusive,
    Shared,
}

/// Takes `lock` on `file` without waiting; false if another descriptor holds a conflicting one
/// (or flock fails).
pub fn try_lock(file: &impl AsFd, lock: Lock) -> bool {
    let op = match lock {
        Lock::Exclusive => libc::LOCK_EX,
        Lock::Shared => libc::LOCK_SH,
    };
    // SAFETY: flock on a descriptor the caller keeps open.
    unsafe { libc::flock(file.as_fd().as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// The inode of the file behind `fd` (fstat).
pub fn inode(fd: &impl AsFd) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` when it returns 0.
    if unsafe { libc::fstat(fd.as_fd().as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat returned 0, so `st` is initialised.
    Some(unsafe { st.assume_init() }.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("idlegate-sys-file-{name}-{}", std::process::id()))
    }

    #[test]
    fn an_exclusive_lock_excludes_other_descriptors_until_dropped() {
        let path = scratch("lock");
        let open = || std::fs::File::create(&path).unwrap();
        let holder = open();
        assert!(try_lock(&holder, Lock::Exclusive));
        let other = open();
        assert!(!try_lock(&other, Lock::Exclusive));
        assert!(!try_lock(&other, Lock::Shared));
        drop(holder);
        assert!(try_lock(&other, Lock::Shared));
        let third = open();
        assert!(try_lock(&third, Lock::Shared), "shared locks share");
        assert!(
            !try_lock(&third, Lock::Exclusive),
            "not while another shares it"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn two_opens_of_one_file_have_one_inode_and_another_file_another() {
        let (a, b) = (scratch("a"), scratch("b"));
        let fa = std::fs::File::create(&a).unwrap();
        let fa2 = std::fs::File::open(&a).unwrap();
        let fb = std::fs::File::create(&b).unwrap();
        assert_eq!(inode(&fa), inode(&fa2));
        assert_ne!(inode(&fa), inode(&fb));
        let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    }
}
