//! The tunnel's key: 32 random bytes shared by the two ends of a pair, kept in a file as 64
//! hex digits. It is the Noise pre-shared key (see [`super::leg`]): a peer without it cannot
//! finish a handshake.
//!
//! Contract: [`Key::generate`] writes a new key to a file that only its owner may read and
//! refuses to overwrite one; [`Key::load`] refuses a file that others may read (as ssh does
//! for private keys) or that does not hold exactly one key.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

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

    /// Writes a new key to `path`, mode 0600; an existing file is left alone.
    pub fn generate(path: &Path) -> Result<Key> {
        let key = Key::random()?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("{}: cannot create a new key file", path.display()))?;
        writeln!(file, "{}", key.hex()).with_context(|| format!("writing {}", path.display()))?;
        Ok(key)
    }

    /// Reads the key in `path`.
    pub fn load(path: &Path) -> Result<Key> {
        let shown = path.display();
        let meta = std::fs::metadata(path).with_context(|| format!("{shown}: cannot read"))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{shown}: mode {:o} lets others read the tunnel key; chmod 600 it",
                mode & 0o777
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read"))?;
        Key::parse(text.trim()).with_context(|| format!("{shown}: not a tunnel key"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_back_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.key");
        let key = Key::generate(&path).unwrap();
        assert_eq!(Key::load(&path).unwrap().0, key.0);
        assert!(Key::generate(&path).is_err(), "an existing key is kept");
        assert_eq!(Key::load(&path).unwrap().0, key.0);
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.key");
        Key::generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Key::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        assert!(Key::parse("abc").is_err());
        let e = format!("{:#}", Key::parse(&"zz".repeat(32)).unwrap_err());
        assert!(e.contains("position 1"), "{e}");
        assert!(Key::parse(&"0a".repeat(32)).is_ok());
    }
}
