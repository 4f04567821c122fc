//! Atomic file writing, shared by every saver (`.npy`/`.npz`, `.keras`, safetensors).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::FormatError;

/// Counter making temporary names unique within the process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file when dropped unless disarmed, so that neither an error nor a
/// panic inside the caller's closure leaves it behind.
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes a file atomically: `write` fills a new temporary file in the same directory as
/// `path` (so the final rename stays on one file system), through a buffered writer that is
/// also seekable (as `zip::ZipWriter` needs); the file is then flushed to disk (`fsync`) and
/// renamed over `path`; on Unix the directory is synced too (best effort).
///
/// If `write` fails (or panics), or any step fails, the temporary file is removed and the file
/// at `path`, if there was one, is untouched. A replaced file gets default permissions.
/// Hand-written on `std` rather than adding `tempfile` (whose `NamedTempFile::persist` does the
/// same) for one function.
///
/// ```
/// use std::io::Write;
/// use grucell::io::atomic::atomic_write;
/// let path = std::env::temp_dir().join(format!("grucell_doc_atomic_{}.txt", std::process::id()));
/// atomic_write(&path, |f| f.write_all(b"hello"))?;
/// // A failing writer leaves the previous content in place.
/// let err = atomic_write(&path, |f| { f.write_all(b"partial")?; Err(std::io::Error::other("boom")) });
/// assert!(err.is_err());
/// assert_eq!(std::fs::read(&path).map_err(|e| grucell::FormatError::io("doc", e))?, b"hello");
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), grucell::FormatError>(())
/// ```
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), FormatError> {
    let shown = path.display().to_string();
    let Some(file_name) = path.file_name() else {
        return Err(FormatError::malformed(
            &shown,
            "path",
            "has no file name; expected a path to a file",
        ));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (file, tmp) = create_temp(&dir, &file_name.to_string_lossy())
        .map_err(|e| FormatError::io(dir.display().to_string(), e))?;
    let mut guard = TempGuard {
        path: Some(tmp.clone()),
    };
    let mut w = BufWriter::new(file);
    let result = write(&mut w)
        .and_then(|()| w.flush())
        .and_then(|()| w.get_ref().sync_all());
    drop(w);
    result.map_err(|e| FormatError::io(&shown, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FormatError::io(&shown, e))?;
    guard.path = None;
    sync_dir(&dir);
    Ok(())
}

/// Creates `.<name>.<pid>.<n>.tmp` in `dir`, never reusing an existing file.
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(File, PathBuf)> {
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..100 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{pid}.{n}.tmp"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("could not create a temporary file")))
}

/// Makes a rename durable (Unix). Best effort: some file systems refuse to sync directories,
/// and the data itself is already synced.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

// `Seek` is needed by `zip::ZipWriter`; `BufWriter<File>` provides it.
const _: fn() = || {
    fn seekable<W: std::io::Seek>() {}
    seekable::<BufWriter<File>>();
};
