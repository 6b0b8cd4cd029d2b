//! Where outputs go: files given with `--out` / `--save-state`, and stdout.
//!
//! A regular file (or a new path) is written through a hidden temporary file next to it, then
//! renamed over it, so a failure never leaves a partial or clobbered file. A character device
//! (`/dev/null`, `/dev/full`, a terminal) or a FIFO is written to in place: renaming a file over
//! it would replace the device node itself. Anything else (a directory, a socket) is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::CliError;

/// Writes `bytes` to `path` (see the module documentation).
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let fail = |message: String| CliError::Output {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => write_atomically(path, bytes),
        Ok(meta) if is_stream(&meta) => write_in_place(path, bytes),
        Ok(meta) => Err(fail(format!(
            "not a regular file ({}); give a file path",
            retnet_model::files::file_kind(&meta)
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomically(path, bytes),
        Err(e) => Err(fail(format!("I/O error: {e}"))),
    }
}

#[cfg(unix)]
fn is_stream(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_char_device() || meta.file_type().is_fifo()
}

#[cfg(not(unix))]
fn is_stream(_: &std::fs::Metadata) -> bool {
    false
}

/// Writes to a device or FIFO as it is. A FIFO is opened without blocking, so that one nobody
/// reads is an error at once rather than a hang.
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let fail = |e: std::io::Error| CliError::Output {
        path: path.to_path_buf(),
        message: format!("I/O error: {e}"),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| match e.raw_os_error() {
        #[cfg(unix)]
        Some(libc::ENXIO) => CliError::Output {
            path: path.to_path_buf(),
            message: "a FIFO that no process reads".into(),
        },
        _ => fail(e),
    })?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // Back to blocking writes now that a reader exists (a full pipe then waits for it).
        // SAFETY: fcntl on a file descriptor this function owns, with integer arguments only.
        let fd = file.as_raw_fd();
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
    }
    let mut file = file;
    file.write_all(bytes)
        .and_then(|()| file.flush())
        .map_err(fail)
}

/// The hidden file next to `path` that an output is written to before it is renamed.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Writes through a hidden file next to `path` (synced, so a full disk shows here and not
/// later), then renames it into place; on any failure the temporary file is removed and
/// `path` is left as it was.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    if path.file_name().is_none() {
        return Err(CliError::Output {
            path: path.to_path_buf(),
            message: "not a file path".into(),
        });
    }
    let tmp = tmp_path(path);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Output {
            path: path.to_path_buf(),
            message: format!("I/O error: {e}"),
        }
    })
}

/// A write to stdout that failed: a closed pipe ends the command quietly, anything else
/// (a full disk, an I/O error) is an error naming stdout.
pub fn stdout_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::ClosedPipe
    } else {
        CliError::Output {
            path: "stdout".into(),
            message: format!("I/O error: {e}"),
        }
    }
}

/// Lines on stdout, each write checked ([`stdout_error`]); `println!` would panic.
pub struct Stdout(std::io::StdoutLock<'static>);

impl Stdout {
    /// Locks stdout.
    pub fn new() -> Self {
        Self(std::io::stdout().lock())
    }

    /// Writes one line.
    pub fn line(&mut self, line: std::fmt::Arguments<'_>) -> Result<(), CliError> {
        writeln!(self.0, "{line}").map_err(stdout_error)
    }

    /// Writes bytes as they are and flushes them (streamed text).
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.0
            .write_all(bytes)
            .and_then(|()| self.0.flush())
            .map_err(stdout_error)
    }

    /// Flushes what is buffered.
    pub fn finish(mut self) -> Result<(), CliError> {
        self.0.flush().map_err(stdout_error)
    }
}
