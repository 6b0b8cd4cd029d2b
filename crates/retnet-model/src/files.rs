//! Reading small input files (configs, shard indexes, tokenizers, state files, token lists)
//! without trusting them: only regular files are opened, and never more than a stated number
//! of bytes is read. A FIFO would block the open (or the read) forever and `/dev/zero` never
//! ends, so both are refused before anything is read.

use std::io::Read;
use std::path::Path;

use crate::error::{ModelError, Result};

/// The most a `config.json` or a shard index may hold (real ones are a few kilobytes).
pub const MAX_JSON_BYTES: u64 = 16 << 20;

/// The most a `tokenizer.json` may hold (Llama-3's, 128k entries, is 9 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// Reads the whole of `path`, a regular file (symbolic links followed) of at most `limit`
/// bytes; anything else is an error naming the path.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let refuse = |message: String| {
        ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
        )
    };
    // Checked before opening: opening a FIFO for reading blocks until a writer appears.
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if !meta.is_file() {
        return Err(refuse(format!(
            "not a regular file ({}); give a file",
            file_kind(&meta)
        )));
    }
    if meta.len() > limit {
        return Err(refuse(format!(
            "the file is {} bytes, over the {limit} bytes read from such a file",
            meta.len()
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file that grew since `metadata` from one that did not.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| ModelError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(refuse(format!(
            "the file is over the {limit} bytes read from such a file"
        )));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_text(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|_| {
        ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        )
    })
}

/// What a non-regular file is, in words.
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_bounded(&file, 10).unwrap(), b"0123456789");
        let over = read_bounded(&file, 9).unwrap_err().to_string();
        assert!(over.contains("over the 9 bytes"), "{over}");
        let dir_err = read_bounded(dir.path(), 10).unwrap_err().to_string();
        assert!(dir_err.contains("a directory"), "{dir_err}");
        #[cfg(unix)]
        {
            let zero = read_bounded(Path::new("/dev/zero"), 10)
                .unwrap_err()
                .to_string();
            assert!(zero.contains("a character device"), "{zero}");
        }
    }
}
