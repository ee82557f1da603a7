//! The tunnel's keys, in files.
//!
//! - [`Key`], the pair's pre-shared key: 32 random bytes shared by the two ends, kept in a
//!   file as 64 hex digits. It is the Noise pre-shared key of the PSK mode (see
//!   [`super::leg`]): a peer without it cannot finish a handshake.
//! - [`PrivateKey`] and [`PublicKey`], an end's own X25519 key pair for the per-peer mode:
//!   each end keeps its private key and gives its public key (44 characters of base64, as
//!   WireGuard writes them) to the other; an exit lists its entries' public keys in a
//!   [`super::peers`] file.
//!
//! [`entry_keys`] and [`exit_keys`] load what an end's flags name, with errors that say which
//! flag and file failed, why, and what to do.
//!
//! Contract: [`Key::generate`] and [`PrivateKey::generate`] write a new key to a file that
//! only its owner may read and refuse to overwrite one; [`Key::load`] and [`PrivateKey::load`]
//! refuse a file that others may read (as ssh does for private keys) or that does not hold
//! exactly one key of its kind. Who may read is the file's mode on Unix; on Windows it is the
//! ACL the key's directory passes on, not set nor checked here ([`crate::sys::secret`]).

use crate::obs::report::Report;
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::leg::{EntryKeys, ExitKeys};
use super::peers::Peers;
use crate::sys::secret::{self, Readers};

/// A tunnel key.
#[derive(Clone)]
pub struct Key(pub(crate) [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// A new random key, from the operating system's generator.
    pub fn random() -> Result<Key> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
        Ok(Key(bytes))
    }

    /// Writes a new key to `path`, mode 0600 (on Windows: the ACL its directory passes on;
    /// see [`crate::sys::secret`]); an existing file is left alone.
    pub fn generate(path: &Path) -> Result<Key> {
        let key = Key::random()?;
        let mut file = secret::create_new(path, Readers::Owner)
            .with_context(|| format!("{}: cannot create a new key file", path.display()))?;
        writeln!(file, "{}", key.hex()).with_context(|| format!("writing {}", path.display()))?;
        Ok(key)
    }

    /// Reads the key in `path`.
    pub fn load(path: &Path) -> Result<Key> {
        let text = read_secret(path, "the tunnel key")?;
        Key::parse(text.trim()).with_context(|| format!("{}: not a tunnel key", path.display()))
    }

    /// Parses 64 hex digits.
    pub fn parse(hex: &str) -> Result<Key> {
        if hex.len() != 64 || !hex.is_ascii() {
            bail!(
                "expected 64 hex digits (made by `idlegate keygen FILE`), found {} characters",
                hex.chars().count()
            );
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).with_context(|| {
                format!(
                    "{:?} at position {} is not hex",
                    &hex[2 * i..2 * i + 2],
                    2 * i + 1
                )
            })?;
        }
        Ok(Key(bytes))
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Reads a file that holds a secret, refusing one that others may read.
fn read_secret(path: &Path, what: &str) -> Result<String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("{shown}: cannot read"))?;
    if let Some(exposed) = secret::exposed(path, &meta) {
        return Err(anyhow!("{shown}: {} lets others read {what}", exposed.why)).hint(exposed.fix);
    }
    std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read"))
}

/// Creates `path` readable by `readers`, never over an existing file.
fn create_new(path: &Path, readers: Readers, what: &str) -> Result<std::fs::File> {
    secret::create_new(path, readers)
        .with_context(|| format!("{}: cannot create a new {what} file", path.display()))
}

/// An end's public X25519 key: shareable, written as 44 characters of base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl PublicKey {
    /// Parses 44 characters of base64 (32 bytes).
    pub fn parse(text: &str) -> Result<PublicKey> {
        Ok(PublicKey(parse_base64_key(text)?))
    }

    /// The first 8 characters: enough to tell keys apart in a log line.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

fn parse_base64_key(text: &str) -> Result<[u8; 32]> {
    if text.len() != 44 {
        bail!(
            "expected 44 characters of base64 (made by `idlegate keygen --pair FILE`), found {}",
            text.chars().count()
        );
    }
    let bytes = BASE64
        .decode(text)
        .map_err(|e| anyhow::anyhow!("not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("not a 32-byte key"))
}

/// An end's own X25519 key pair for the per-peer mode. The private half never leaves the
/// file and this process.
#[derive(Clone)]
pub struct PrivateKey {
    pub(crate) secret: [u8; 32],
    public: PublicKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey(public {})", self.public)
    }
}

/// The first line of a private key file.
const PRIVATE_HEADER: &str = "# idlegate tunnel private key (X25519); keep it secret";

impl PrivateKey {
    /// A new key pair, from the operating system's generator.
    pub fn random() -> Result<PrivateKey> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
        PrivateKey::from_secret(secret)
    }

    /// The key pair of a given private key (any 32 bytes; X25519 clamps them).
    pub fn from_secret(secret: [u8; 32]) -> Result<PrivateKey> {
        use snow::resolvers::CryptoResolver;
        let mut dh = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .context("no X25519 in this build")?;
        dh.set(&secret);
        let public = PublicKey(
            dh.pubkey()
                .try_into()
                .map_err(|_| anyhow::anyhow!("an X25519 public key is not 32 bytes"))?,
        );
        Ok(PrivateKey { secret, public })
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Where [`PrivateKey::generate`] writes the public half of `path`: `path` with `.pub`
    /// added.
    pub fn public_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".pub");
        PathBuf::from(name)
    }

    /// Writes a new key pair: the private key to `path` (mode 0600), the public key to
    /// `path.pub` (mode 0644) (on Windows both with the ACL their directory passes on) as a line for an exit's peers file, named after the file
    /// (`site-a.key` → `site-a`). Existing files are left alone.
    pub fn generate(path: &Path) -> Result<PrivateKey> {
        let key = PrivateKey::random()?;
        let public_path = PrivateKey::public_path(path);
        for path in [path, &public_path] {
            if path.exists() {
                bail!("{}: already exists; not overwritten", path.display());
            }
        }
        let mut file = create_new(path, Readers::Owner, "private key")?;
        writeln!(file, "{PRIVATE_HEADER}\n{}", BASE64.encode(key.secret))
            .with_context(|| format!("writing {}", path.display()))?;
        let mut file = create_new(&public_path, Readers::Anyone, "public key")?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| super::peers::valid_name(s).is_ok());
        let line = match name {
            Some(name) => format!("{} {name}", key.public),
            None => key.public.to_string(),
        };
        writeln!(file, "{line}").with_context(|| format!("writing {}", public_path.display()))?;
        Ok(key)
    }

    /// Reads the private key in `path` (comment lines, starting with `#`, are skipped).
    pub fn load(path: &Path) -> Result<PrivateKey> {
        let shown = path.display();
        let text = read_secret(path, "the private key")?;
        let mut found = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if found.is_some() {
                bail!(
                    "{shown}:{}: a second key; a private key file holds one",
                    i + 1
                );
            }
            let secret = parse_base64_key(line).with_context(|| {
                format!(
                    "{shown}:{}: not a private key (a tunnel key made by `idlegate keygen FILE` \
                     goes to --key)",
                    i + 1
                )
            })?;
            found = Some(PrivateKey::from_secret(secret)?);
        }
        found.with_context(|| format!("{shown}: no key in it"))
    }
}

/// What to tell someone who has no key yet.
const MAKE_KEYS: &str =
    "make the pair's key with `idlegate keygen FILE` (the same file on both ends), \
     or each end's key pair with `idlegate keygen --pair FILE`";

/// The key in `path`; a failure says `--key` and, unless it has a hint of its own (a file
/// others may read), how to make one.
fn load_psk(path: &Path) -> Result<Key> {
    Key::load(path).context("--key").hint(MAKE_KEYS)
}

fn load_private(path: &Path) -> Result<PrivateKey> {
    PrivateKey::load(path)
        .context("--private-key")
        .hint(MAKE_KEYS)
}

/// An entry's keys from its flags: `--key FILE`, or `--private-key FILE` with
/// `--exit-public-key KEY`. Errors name the flag, carry a hint, and are usage errors (a
/// file the flags name is wrong: nothing was started).
pub fn entry_keys(
    key: Option<&Path>,
    private: Option<&Path>,
    exit_public: Option<&str>,
) -> Result<EntryKeys> {
    use crate::obs::report::{Report, Status};
    entry_keys_of(key, private, exit_public).status(Status::Usage)
}

fn entry_keys_of(
    key: Option<&Path>,
    private: Option<&Path>,
    exit_public: Option<&str>,
) -> Result<EntryKeys> {
    match (key, private, exit_public) {
        (Some(path), _, _) => Ok(EntryKeys::Psk(load_psk(path)?)),
        (None, Some(path), Some(exit)) => Ok(EntryKeys::Peer {
            own: load_private(path)?,
            exit: exit_public_key(exit)?,
        }),
        (None, Some(_), None) => Err(anyhow!(
            "--private-key on a tunnel entry: --exit-public-key is missing"
        ))
        .hint("give the exit's public key (its FILE.pub from `idlegate keygen --pair FILE`)"),
        (None, None, _) => Err(anyhow!("--tunnel: no key given")).hint(format!(
            "give --key FILE, or --private-key FILE and --exit-public-key KEY; {MAKE_KEYS}"
        )),
    }
}

/// An exit's keys from its flags: `--key FILE`, or `--private-key FILE` with `--peers FILE`.
/// Errors are usage errors, as [`entry_keys`]'.
pub fn exit_keys(
    key: Option<&Path>,
    private: Option<&Path>,
    peers: Option<&Path>,
) -> Result<ExitKeys> {
    use crate::obs::report::{Report, Status};
    exit_keys_of(key, private, peers).status(Status::Usage)
}

fn exit_keys_of(
    key: Option<&Path>,
    private: Option<&Path>,
    peers: Option<&Path>,
) -> Result<ExitKeys> {
    match (key, private, peers) {
        (Some(path), _, _) => Ok(ExitKeys::Psk(load_psk(path)?)),
        (None, Some(path), Some(list)) => {
            let peers = Peers::load(list).context("--peers").hint(
                "one entry a line: PUBLIC_KEY [NAME] (an entry's FILE.pub holds its line); # starts a comment",
            )?;
            Ok(ExitKeys::Peers {
                own: load_private(path)?,
                peers: Arc::new(peers),
            })
        }
        (None, Some(_), None) => Err(anyhow!(
            "--private-key on a tunnel exit: --peers is missing"
        ))
        .hint("give --peers FILE, the entries' public keys, one `PUBLIC_KEY [NAME]` a line"),
        (None, None, _) => Err(anyhow!("--tunnel-listen: no key given")).hint(format!(
            "give --key FILE, or --private-key FILE and --peers FILE; {MAKE_KEYS}"
        )),
    }
}

/// `--exit-public-key`: a key, or a file that holds one (its first word that is not a
/// comment).
fn exit_public_key(value: &str) -> Result<PublicKey> {
    let parsed = PublicKey::parse(value);
    let Err(why) = parsed else {
        return parsed;
    };
    let text = std::fs::read_to_string(value)
        .map_err(|e| {
            anyhow!(
                "--exit-public-key {value}: not a public key ({why:#}), nor a file that holds one ({e})"
            )
        })
        .hint("give the exit's public key, 44 characters of base64, or its FILE.pub")?;
    let first = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .and_then(|l| l.split_whitespace().next())
        .with_context(|| format!("--exit-public-key {value}: no key in the file"))?;
    PublicKey::parse(first).with_context(|| format!("--exit-public-key {value}: not a public key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_key_loads_back_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.key");
        let key = Key::generate(&path).unwrap();
        assert_eq!(Key::load(&path).unwrap().0, key.0);
        assert!(Key::generate(&path).is_err(), "an existing key is kept");
        assert_eq!(Key::load(&path).unwrap().0, key.0);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.key");
        Key::generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = crate::obs::report::render(&Key::load(&path).unwrap_err());
        assert!(e.contains("others read"), "{e}");
        assert!(e.contains("\nhint: chmod 600"), "{e}");
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        assert!(Key::parse("abc").is_err());
        let e = format!("{:#}", Key::parse(&"zz".repeat(32)).unwrap_err());
        assert!(e.contains("position 1"), "{e}");
        assert!(Key::parse(&"0a".repeat(32)).is_ok());
    }

    #[test]
    fn a_generated_pair_loads_back_and_its_public_half_is_a_peers_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site-a.key");
        let key = PrivateKey::generate(&path).unwrap();
        let loaded = PrivateKey::load(&path).unwrap();
        assert_eq!(loaded.secret, key.secret);
        assert_eq!(loaded.public(), key.public());
        #[cfg(unix)]
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let line = std::fs::read_to_string(dir.path().join("site-a.key.pub")).unwrap();
        assert_eq!(line, format!("{} site-a\n", key.public()));
        assert_eq!(
            PublicKey::parse(&key.public().to_string()).unwrap(),
            key.public()
        );
        assert!(
            PrivateKey::generate(&path).is_err(),
            "an existing key is kept"
        );
        assert_eq!(PrivateKey::load(&path).unwrap().secret, key.secret);
    }

    #[cfg(unix)]
    #[test]
    fn a_private_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.key");
        PrivateKey::generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = crate::obs::report::render(&PrivateKey::load(&path).unwrap_err());
        assert!(e.contains("others read"), "{e}");
        assert!(e.contains("\nhint: chmod 600"), "{e}");
    }

    #[test]
    fn a_tunnel_key_given_as_a_private_key_is_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.key");
        Key::generate(&path).unwrap();
        let e = format!("{:#}", PrivateKey::load(&path).unwrap_err());
        assert!(e.contains("pair.key:1: not a private key"), "{e}");
    }

    #[test]
    fn the_public_key_follows_from_the_private_key() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let mut secret = [0u8; 32];
        let hex = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
        for (i, b) in secret.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let key = PrivateKey::from_secret(secret).unwrap();
        let public: String = key.public().0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            public,
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
