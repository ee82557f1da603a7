//! An exit's allow-list of entries for the per-peer mode (`--peers FILE`): the public keys it
//! accepts, each with an optional name for the log.
//!
//! Contract: the file holds one peer a line, `PUBLIC_KEY [NAME]` (the key as
//! `idlegate keygen --pair` writes it, 44 characters of base64; a name of letters, digits and
//! `.`, `_`, `-`, `@`, at most 64), with `#` comments and blank lines; a malformed line, a key
//! listed twice or a name given twice is an error naming the file and line. [`Peers::load`]
//! refuses a bad file before anything starts. While the exit runs, [`Peers::refresh`] rereads
//! the file (at most once every [`RECHECK`]); a change is acted on once two reads in a row
//! agree (a file caught half-written is never used), so within two seconds. A changed file
//! that parses replaces the list, and the keys it no longer holds are revoked: their next
//! handshake is refused and the exit ends their sessions. A changed file that does not parse,
//! or that cannot be read, is logged once and the list in force is kept.

use super::key::PublicKey;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the exit looks at its peers file again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The peers accepted now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerList {
    names: HashMap<PublicKey, Arc<str>>,
}

impl PeerList {
    /// Parses the text of a peers file; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<PeerList> {
        let mut names = HashMap::new();
        let mut lines_of_names: HashMap<String, usize> = HashMap::new();
        let mut lines_of_keys: HashMap<PublicKey, usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let at = i + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(key), name, None) = (words.next(), words.next(), words.next()) else {
                bail!("{file}:{at}: expected PUBLIC_KEY [NAME], found more words");
            };
            let key =
                PublicKey::parse(key).with_context(|| format!("{file}:{at}: not a public key"))?;
            if let Some(first) = lines_of_keys.insert(key, at) {
                bail!("{file}:{at}: the key of line {first} again");
            }
            let name: Arc<str> = match name {
                Some(name) => {
                    valid_name(name).with_context(|| format!("{file}:{at}: name {name:?}"))?;
                    if let Some(first) = lines_of_names.insert(name.to_string(), at) {
                        bail!("{file}:{at}: the name {name:?} of line {first} again");
                    }
                    name.into()
                }
                None => format!("key {}", key.short()).into(),
            };
            names.insert(key, name);
        }
        Ok(PeerList { names })
    }

    /// The name of `key`, if it is listed.
    pub fn name(&self, key: &PublicKey) -> Option<Arc<str>> {
        self.names.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Refuses a peer name that would be hard to read in a log line.
pub fn valid_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        bail!("1 to 64 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        bail!("{c:?} is not allowed (letters, digits, '.', '_', '-', '@')");
    }
    Ok(())
}

/// The exit's peers file and the list in force.
#[derive(Debug)]
pub struct Peers {
    path: PathBuf,
    /// The list in force: what the workers read, never held across a read of the file.
    list: Mutex<Arc<PeerList>>,
    /// The rereads' own state, held across a read of the file (by the one thread that
    /// rereads it), so a slow file system delays no worker that only asks for the list.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The file's bytes at the last read (None: it could not be read), to see a change and
    /// whether it has settled.
    last_read: Option<Vec<u8>>,
    /// The version last put in force or reported.
    acted_on: Option<Vec<u8>>,
    read_at: Instant,
}

/// What a reread found.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing, or not time yet.
    None,
    /// A new list is in force; these keys (with their names) are no longer on it.
    Replaced { revoked: Vec<(PublicKey, Arc<str>)> },
    /// The file changed and cannot be used; the list in force is kept.
    Refused(String),
}

impl Peers {
    /// Reads `path`; a bad file is an error.
    pub fn load(path: &Path) -> Result<Peers> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let list = parse_bytes(&bytes, path)?;
        Ok(Peers {
            path: path.to_owned(),
            list: Mutex::new(Arc::new(list)),
            state: Mutex::new(State {
                last_read: Some(bytes.clone()),
                acted_on: Some(bytes),
                read_at: Instant::now(),
            }),
        })
    }

    /// The list in force.
    pub fn list(&self) -> Arc<PeerList> {
        match self.list.lock() {
            Ok(list) => list.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rereads the file if [`RECHECK`] has passed since the last read. A change is acted on
    /// once two reads in a row agree, so that a file caught half-written is never used.
    pub fn refresh(&self) -> Change {
        let Ok(mut state) = self.state.lock() else {
            return Change::None;
        };
        if state.read_at.elapsed() < RECHECK {
            return Change::None;
        }
        state.read_at = Instant::now();
        let read = std::fs::read(&self.path);
        let now = read.as_ref().ok().cloned();
        let settled = now == state.last_read;
        state.last_read = now.clone();
        if !settled || now == state.acted_on {
            return Change::None;
        }
        state.acted_on = now;
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) => {
                return Change::Refused(format!(
                    "{}: cannot read: {e}; the list read before stays in force",
                    self.path.display()
                ))
            }
        };
        match parse_bytes(&bytes, &self.path) {
            Ok(list) => {
                let revoked = self
                    .list()
                    .names
                    .iter()
                    .filter(|(key, _)| !list.names.contains_key(*key))
                    .map(|(key, name)| (*key, name.clone()))
                    .collect();
                match self.list.lock() {
                    Ok(mut in_force) => *in_force = Arc::new(list),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(list),
                }
                Change::Replaced { revoked }
            }
            Err(e) => Change::Refused(format!("{e:#}; the list read before stays in force")),
        }
    }
}

fn parse_bytes(bytes: &[u8], path: &Path) -> Result<PeerList> {
    let shown = path.display().to_string();
    let text = std::str::from_utf8(bytes).with_context(|| format!("{shown}: not UTF-8 text"))?;
    PeerList::parse(text, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survive::tunnel::key::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::random().unwrap().public()
    }

    #[test]
    fn a_peers_file_with_names_comments_and_a_nameless_key_parses() {
        let (a, b) = (key(), key());
        let text = format!("# sites\n\n{a} site-a   # the first\n  {b}\n");
        let list = PeerList::parse(&text, "peers").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.name(&a).as_deref(), Some("site-a"));
        assert_eq!(
            list.name(&b).unwrap().to_string(),
            format!("key {}", b.short())
        );
        assert_eq!(list.name(&key()), None);
    }

    #[test]
    fn bad_peers_lines_are_refused_with_file_and_line() {
        let (a, b) = (key(), key());
        for (text, want) in [
            (format!("{a} x\nnot-a-key\n"), "peers:2: not a public key"),
            (format!("{a} x y\n"), "peers:1: expected PUBLIC_KEY [NAME]"),
            (
                format!("{a} x\n# c\n{a} y\n"),
                "peers:3: the key of line 1 again",
            ),
            (
                format!("{a} x\n{b} x\n"),
                "peers:2: the name \"x\" of line 1 again",
            ),
            (format!("{a} bad/name\n"), "peers:1: name \"bad/name\""),
            (
                format!("{}\n", &a.to_string()[..43]),
                "peers:1: not a public key",
            ),
        ] {
            let e = format!("{:#}", PeerList::parse(&text, "peers").unwrap_err());
            assert!(e.contains(want), "{e} should say {want}");
        }
    }

    #[test]
    fn a_reread_list_revokes_the_keys_it_no_longer_holds_and_a_bad_one_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        let (a, b) = (key(), key());
        std::fs::write(&path, format!("{a} a\n{b} b\n")).unwrap();
        let peers = Peers::load(&path).unwrap();
        assert_eq!(peers.refresh(), Change::None, "not time yet");
        std::fs::write(&path, format!("{a} a\n")).unwrap();
        std::thread::sleep(RECHECK);
        assert_eq!(peers.refresh(), Change::None, "seen once: not settled yet");
        std::thread::sleep(RECHECK);
        assert_eq!(
            peers.refresh(),
            Change::Replaced {
                revoked: vec![(b, "b".into())]
            }
        );
        assert_eq!(peers.list().name(&b), None);
        std::fs::write(&path, format!("{a} a\nrubbish\n")).unwrap();
        std::thread::sleep(RECHECK);
        assert_eq!(peers.refresh(), Change::None);
        std::thread::sleep(RECHECK);
        assert!(matches!(peers.refresh(), Change::Refused(e) if e.contains(":2:")));
        std::thread::sleep(RECHECK);
        assert_eq!(peers.refresh(), Change::None, "reported once");
        assert_eq!(
            peers.list().name(&a).as_deref(),
            Some("a"),
            "still in force"
        );
    }

    #[test]
    fn a_file_caught_half_written_is_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        let (a, b, c) = (key(), key(), key());
        std::fs::write(&path, format!("{a} a\n{b} b\n")).unwrap();
        let peers = Peers::load(&path).unwrap();
        // Truncated by an editor that is about to write the new version.
        std::fs::write(&path, "").unwrap();
        std::thread::sleep(RECHECK);
        assert_eq!(peers.refresh(), Change::None);
        std::fs::write(&path, format!("{a} a\n{b} b\n{c} c\n")).unwrap();
        std::thread::sleep(RECHECK);
        assert_eq!(peers.refresh(), Change::None);
        std::thread::sleep(RECHECK);
        assert_eq!(peers.refresh(), Change::Replaced { revoked: vec![] });
        assert_eq!(peers.list().len(), 3, "nobody was revoked on the way");
    }
}
