//! The session key that signs cookies: read from a file (a mounted Secret, say), or generated
//! into that file when absent, so every agent that shares the file accepts every cookie.
use crate::sticky::cookie::KEY_LEN;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Shorter than this is a mistake, not a key.
const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("session key {path}: cannot read")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("session key {path}: cannot create")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "session key {path}: {len} bytes is too short; use at least {MIN_KEY_BYTES} random bytes"
    )]
    TooShort { path: PathBuf, len: usize },
    #[error("cannot get random bytes: {0}")]
    Random(String),
    #[error(
        "session key {path}: a symlink to {target}, outside its directory; refusing it (a Secret volume's links stay inside)"
    )]
    SymlinkOutside { path: PathBuf, target: PathBuf },
}

/// Reads the key at `path`, creating it (mode 0600) if it does not exist.
///
/// Any content of at least 16 bytes is a key: it is hashed to 32 bytes, so a Secret holding a
/// passphrase or raw bytes works as well as the hex this function writes.
pub fn load_or_create(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    check_link(path)?;
    match std::fs::read(path) {
        Ok(content) => {
            warn_if_exposed(path);
            derive(path, &content)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            create(path)?;
            // Read back what is there: another agent may have won the race to create it.
            let content = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            derive(path, &content)
        }
        Err(source) => Err(KeyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A key file may be a symlink (Kubernetes mounts Secrets as links into a `..data` directory
/// beside them), but one that leads out of its directory is someone pointing tether at a file
/// it should not read, or sign with.
fn check_link(path: &Path) -> Result<(), KeyError> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return Ok(());
    }
    let read = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let target = std::fs::canonicalize(path).map_err(read)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).map_err(read)?;
    if target.starts_with(&dir) {
        Ok(())
    } else {
        Err(KeyError::SymlinkOutside {
            path: path.to_path_buf(),
            target,
        })
    }
}

/// Anyone who can read the key can mint cookies for any target.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "session key file is readable by group or others: whoever reads it can forge cookies; chmod 0600 (or a Secret volume's defaultMode: 0400)"
            );
        }
    }
}

/// The key from content read elsewhere (a Kubernetes Secret's data); `origin` names it in
/// errors. The same derivation as a key file's, so a Secret and a file with the same content
/// are the same key.
pub fn from_content(origin: &str, content: &[u8]) -> Result<[u8; KEY_LEN], KeyError> {
    derive(Path::new(origin), content)
}

/// A key for this process only: cookies will not survive a restart or work on another agent.
pub fn ephemeral() -> Result<[u8; KEY_LEN], KeyError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(key)
}

fn derive(path: &Path, content: &[u8]) -> Result<[u8; KEY_LEN], KeyError> {
    let trimmed = content.trim_ascii();
    if trimmed.len() < MIN_KEY_BYTES {
        return Err(KeyError::TooShort {
            path: path.to_path_buf(),
            len: trimmed.len(),
        });
    }
    let mut hasher = Sha256::new();
    hasher.update(b"tether-session-key-v1\0");
    hasher.update(trimmed);
    Ok(hasher.finalize().into())
}

fn create(path: &Path) -> Result<(), KeyError> {
    let fail = |source| KeyError::Create {
        path: path.to_path_buf(),
        source,
    };
    let random = ephemeral()?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let temporary = dir.join(format!(".tether-key-{}", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(fail)?;
        file.write_all(format!("{hex}\n").as_bytes())
            .map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    // A hard link publishes the complete file atomically and fails if someone else was first.
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(fail(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tether-key-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("key")
    }

    #[test]
    fn creates_once_and_reads_the_same_key_back() {
        let path = scratch("create");
        let first = load_or_create(&path).expect("created");
        let second = load_or_create(&path).expect("read");
        assert_eq!(first, second);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_symlink_out_of_its_directory_is_refused() {
        let path = scratch("link-out");
        let dir = path.parent().expect("dir").to_path_buf();
        std::fs::create_dir_all(dir.join("..data")).expect("dir");
        let outside = scratch("outside");
        std::fs::create_dir_all(outside.parent().expect("dir")).expect("dir");
        std::fs::write(&outside, "a key that lives somewhere else entirely").expect("write");
        std::os::unix::fs::symlink(&outside, &path).expect("link");
        let error = load_or_create(&path).expect_err("refused");
        assert!(matches!(error, KeyError::SymlinkOutside { .. }), "{error}");

        // A Secret volume's layout: key -> ..data/key, all inside the directory.
        let inside = dir.join("..data").join("key");
        std::fs::write(&inside, "a key mounted the way kubelet does it").expect("write");
        let secret = dir.join("secret-key");
        std::os::unix::fs::symlink("..data/key", &secret).expect("link");
        load_or_create(&secret).expect("a link inside its directory is fine");
    }

    #[test]
    fn a_short_key_is_refused() {
        let path = scratch("short");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        std::fs::write(&path, "short\n").expect("write");
        assert!(matches!(
            load_or_create(&path),
            Err(KeyError::TooShort { len: 5, .. })
        ));
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn any_long_content_is_a_key() {
        let path = scratch("passphrase");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        std::fs::write(&path, "correct horse battery staple").expect("write");
        let key = load_or_create(&path).expect("key");
        std::fs::write(&path, "correct horse battery staple\n").expect("write");
        assert_eq!(load_or_create(&path).expect("key"), key);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
