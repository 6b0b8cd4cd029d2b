//! Memory-mapped safetensors files, single or sharded, read as f32 whole or in pieces.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Where one tensor lives: which file, its dtype, shape and byte range in that file.
#[derive(Clone, Debug)]
struct TensorEntry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The safetensors files of a model directory, memory-mapped, with an index of every tensor.
///
/// Opening validates every header (so a truncated file or a corrupt header is reported at
/// once, naming the file); tensor data is only touched when a tensor is read.
pub struct TensorStore {
    dir: PathBuf,
    files: Vec<(PathBuf, Bytes)>,
    tensors: HashMap<String, TensorEntry>,
}

/// The bytes of one safetensors file: mapped from disk, owned, or compiled into the binary.
pub enum Bytes {
    /// A read-only memory map of a file.
    Mapped(Mmap),
    /// Bytes in memory (e.g. fetched by a browser).
    Owned(Vec<u8>),
    /// Bytes compiled into the program (`include_bytes!`).
    Static(&'static [u8]),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
            Bytes::Static(s) => s,
        }
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl TensorStore {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(SHARD_INDEX);
        let file_names: Vec<String> = if single.is_file() {
            vec![SINGLE_FILE.to_string()]
        } else if index.is_file() {
            let text = crate::files::read_bounded_text(&index, crate::files::MAX_JSON_BYTES)?;
            let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| ModelError::Json {
                path: index.clone(),
                message: e.to_string(),
            })?;
            let mut names: Vec<String> = parsed.weight_map.into_values().collect();
            names.sort();
            names.dedup();
            names
        } else if !dir.is_dir() {
            return Err(ModelError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        } else {
            return Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
            });
        };

        let mut store = Self {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        for name in file_names {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Err(ModelError::Json {
                    path: index.clone(),
                    message: format!("shard name `{name}` leaves the model directory"),
                });
            }
            store.add_file(&dir.join(name))?;
        }
        Ok(store)
    }

    /// A store over one safetensors file held in memory; `name` is used in error messages.
    pub fn from_bytes(name: &str, bytes: Bytes) -> Result<Self> {
        let mut store = Self {
            dir: PathBuf::from(name),
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        store.add_bytes(Path::new(name), bytes)?;
        Ok(store)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        // Checked before opening: a FIFO would block the open; a device cannot be mapped.
        let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
        if !meta.is_file() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "not a regular file ({}); give a file",
                        crate::files::file_kind(&meta)
                    ),
                ),
            ));
        }
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        if len < 8 {
            return Err(ModelError::Safetensors {
                path: path.to_path_buf(),
                message: format!("the file is {len} bytes long, shorter than a safetensors header"),
            });
        }
        // SAFETY: the map is read-only; a checkpoint changed by another process while we run
        // is outside what any loader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        self.add_bytes(path, Bytes::Mapped(map))
    }

    fn add_bytes(&mut self, path: &Path, map: Bytes) -> Result<()> {
        let corrupt = |message: String| ModelError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let file_index = self.files.len();
        {
            // serde (and so safetensors) keeps the last of two entries with one name: a header
            // naming a tensor twice would load one of two different tensors silently.
            if let Some(name) = header_bytes(&map).and_then(duplicate_key) {
                return Err(corrupt(format!("the header names tensor `{name}` twice")));
            }
            // `deserialize` checks the header length against the file length before reading
            // the header, and every tensor's byte range against the data, so a header that
            // claims gigabytes allocates nothing.
            let parsed = SafeTensors::deserialize(&map).map_err(|e| corrupt(describe(&e)))?;
            let (header_len, _) =
                SafeTensors::read_metadata(&map).map_err(|e| corrupt(describe(&e)))?;
            let data_start = 8 + header_len;

            for (name, view) in parsed.tensors() {
                let bytes = view.data();
                // `data()` borrows from `map`; recover its offset to avoid holding a borrow.
                let start = bytes.as_ptr() as usize - map.as_ptr() as usize;
                debug_assert!(start >= data_start);
                let entry = TensorEntry {
                    file: file_index,
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                    end: start + bytes.len(),
                };
                if self.tensors.insert(name.clone(), entry).is_some() {
                    return Err(corrupt(format!("tensor `{name}` appears in two shards")));
                }
            }
        }
        self.files.push((path.to_path_buf(), map));
        Ok(())
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// The stored dtype of a tensor, if present.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.tensors.get(name).map(|e| e.dtype)
    }

    /// A tensor of shape `expected`, for reading in pieces ([`StoredTensor::decode`]).
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<StoredTensor<'_>> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                dir: self.dir.clone(),
            })?;
        if entry.shape != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let element_bytes = match entry.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let (_, file) = self
            .files
            .get(entry.file)
            .ok_or_else(|| self.outside_file(name))?;
        let bytes = file
            .get(entry.start..entry.end)
            .ok_or_else(|| self.outside_file(name))?;
        Ok(StoredTensor {
            name: name.to_string(),
            dtype: entry.dtype,
            element_bytes,
            bytes,
            file,
            start: entry.start,
        })
    }

    fn outside_file(&self, name: &str) -> ModelError {
        ModelError::Safetensors {
            path: self.dir.clone(),
            message: format!("tensor `{name}` lies outside its file"),
        }
    }

    /// Reads a tensor as f32, checking that its shape is `expected`.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let tensor = self.tensor(name, expected)?;
        let mut values = vec![0.0; tensor.len()];
        tensor.decode(0, &mut values)?;
        tensor.release();
        Ok(values)
    }
}

/// One tensor of a [`TensorStore`], still in its file's bytes and dtype.
pub struct StoredTensor<'a> {
    name: String,
    dtype: Dtype,
    element_bytes: usize,
    bytes: &'a [u8],
    file: &'a Bytes,
    start: usize,
}

impl StoredTensor<'_> {
    /// The tensor's name in the checkpoint.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.element_bytes
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Decodes elements `start .. start + out.len()` to f32 into `out`.
    pub fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let n = self.element_bytes;
        let bytes = start
            .checked_add(out.len())
            .and_then(|end| self.bytes.get(start * n..end * n))
            .ok_or_else(|| {
                ModelError::invalid(format!(
                    "elements {start}..{} of tensor `{}` read past its {} elements",
                    start + out.len(),
                    self.name,
                    self.len()
                ))
            })?;
        decode_into(&self.name, self.dtype, bytes, out)
    }

    /// Lets the operating system drop this tensor's pages of a memory-mapped file from the
    /// process (they stay in the page cache): a model streamed tensor by tensor then never holds
    /// more than one tensor of the file in memory. Reading the tensor again maps them back in.
    pub fn release(&self) {
        #[cfg(unix)]
        if let Bytes::Mapped(map) = self.file {
            // SAFETY: the map is read-only and file-backed, so MADV_DONTNEED discards nothing:
            // the pages are read again from the file if touched. memmap2 rounds the start down
            // to a page; the neighbouring tensor that may share that page is re-read likewise.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.start,
                    self.bytes.len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = (self.file, self.start);
    }
}

/// The one decoder of stored tensor bytes (`dtype` little-endian words) to f32: every weight
/// that reaches either backend passes through here, so checks of the values belong here too.
pub(crate) fn decode_into(name: &str, dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let _ = name;
    // Byte ranges in a safetensors file need not be aligned, so decode little-endian words.
    match dtype {
        Dtype::F32 => decode_words(bytes, out, f32::from_le_bytes),
        Dtype::F16 => decode_words(bytes, out, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => decode_words(bytes, out, |b| half::bf16::from_le_bytes(b).to_f32()),
        other => {
            return Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    }
    Ok(())
}

fn decode_words<const N: usize>(bytes: &[u8], out: &mut [f32], decode: impl Fn([u8; N]) -> f32) {
    for (value, word) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        if let Ok(word) = <[u8; N]>::try_from(word) {
            *value = decode(word);
        }
    }
}

/// Decodes `bytes` as consecutive `N`-byte little-endian words (a trailing partial word, which
/// safetensors' own length checks rule out, is ignored).
pub(crate) fn le_words<const N: usize, T>(bytes: &[u8], decode: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .filter_map(|b| <[u8; N]>::try_from(b).ok())
        .map(decode)
        .collect()
}

/// The JSON header of a safetensors file, if its length prefix fits the file.
fn header_bytes(file: &[u8]) -> Option<&[u8]> {
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let end = usize::try_from(len).ok()?.checked_add(8)?;
    file.get(8..end)
}

/// The first key that a JSON object names twice, if any (nested values are skipped).
fn duplicate_key(json: &[u8]) -> Option<String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    serde::Deserializer::deserialize_map(&mut de, Keys)
        .ok()
        .flatten()
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooLarge | E::InvalidHeaderLength | E::MetadataIncompleteBuffer => {
            format!("truncated file or corrupt header length ({e:?})")
        }
        other => format!("{other}"),
    }
}
