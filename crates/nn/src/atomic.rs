//! Atomic writes of files and directories: a reader never sees a half-written output, and a
//! failed write leaves nothing behind.

use std::path::Path;

use crate::{Error, Result};

/// Writes a file by calling `write` on a temporary path in the same folder, then renaming it
/// over `path`. The temporary file is removed when `write` fails.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|source| Error::Io {
            path: tmp.display().to_string(),
            source,
        })
    })
}

/// Builds directory `out` through `write` on a temporary sibling, then renames it into place.
/// An existing `out` is refused (an input is never overwritten); when `write` fails the
/// temporary directory is removed.
pub fn write_dir<T, E: From<Error>>(
    out: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    if out.exists() {
        return Err(Error::Exists {
            path: out.display().to_string(),
        }
        .into());
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.partial", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let io = |path: &Path, source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let result = write(&tmp).and_then(|value| {
        std::fs::rename(&tmp, out).map_err(|e| io(out, e))?;
        Ok(value)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
