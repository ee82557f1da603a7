//! `idlegate keygen FILE`: the tunnel's keys, written to files only their owner may read (the
//! file's mode on Unix; on Windows, the ACL the file's directory passes on, which keygen does
//! not narrow: see [`WINDOWS_KEYS`] and the book's Windows page, docs/src/deploy/windows.md).

use anyhow::Result;
use idlegate::survive::tunnel::key::{Key, PrivateKey};
use idlegate::sys::secret::OWNER_ONLY;
use std::path::Path;

/// `keygen`'s line in the Windows build's `--help` (the Linux build's is its doc comment in
/// main.rs, which says mode 0600).
#[cfg_attr(not(windows), allow(dead_code))]
pub const WINDOWS_ABOUT: &str = "Write a new tunnel key to FILE for both ends of a `relay` \
tunnel pair, or with --pair an end's own key pair for the per-peer mode (on Windows the files \
get their directory's ACL: see keygen --help)";

/// `keygen --pair`'s help in the Windows build.
#[cfg_attr(not(windows), allow(dead_code))]
pub const WINDOWS_PAIR: &str = "Write a key pair: the private key to FILE, the public key to \
FILE.pub (a line for an exit's --peers file, named after FILE), and print the public key";

/// What `keygen --help` adds on Windows: what protects a key there.
#[cfg_attr(not(windows), allow(dead_code))]
pub const WINDOWS_KEYS: &str = "On Windows a file has no mode: the key file gets the access \
control list (ACL) its directory passes on to new files, and neither keygen nor the relay \
narrows or checks it. Write keys into a directory that only SYSTEM, Administrators and \
the relay's account (a service: NT AUTHORITY\\LocalService) may read, for example one made \
with: icacls C:\\ProgramData\\idlegate /inheritance:r /grant:r \"SYSTEM:(OI)(CI)F\" \
\"Administrators:(OI)(CI)F\" \"NT AUTHORITY\\LocalService:(OI)(CI)R\"";

/// `idlegate keygen FILE`: a pair's shared tunnel key; with `pair`, an end's own key pair
/// (the public key printed on stdout, what to do with it on stderr).
pub fn keygen(file: &Path, pair: bool) -> Result<()> {
    if !pair {
        never_over(Key::generate(file))?;
        println!(
            "wrote a new tunnel key to {} ({OWNER_ONLY}); copy it to the other end of the pair",
            file.display()
        );
        return Ok(());
    }
    let key = never_over(PrivateKey::generate(file))?;
    println!("{}", key.public());
    eprintln!(
        "wrote a private key to {} ({OWNER_ONLY}; keep it there) and its public key, above, to {}: \
         an exit lists an entry's public key in its --peers file, an entry names its exit's with --exit-public-key",
        file.display(),
        PrivateKey::public_path(file).display()
    );
    Ok(())
}

/// A key file that exists already is left alone: a usage error (nothing was written), with
/// what to do.
fn never_over<T>(made: Result<T>) -> Result<T> {
    use idlegate::obs::report::{self, Report, Status};
    let exists = |e: &anyhow::Error| report::io_kind(e) == Some(std::io::ErrorKind::AlreadyExists);
    match made {
        Err(e) if exists(&e) => Err(e)
            .hint("keygen never overwrites a file: remove it first, or choose another FILE")
            .status(Status::Usage),
        other => other,
    }
}
