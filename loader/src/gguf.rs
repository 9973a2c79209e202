//! The GGUF parser. Everything in a GGUF file is untrusted: every count and length is
//! checked against the bytes that remain before anything is allocated, nesting is bounded,
//! and sizes are computed with checked arithmetic. Errors name the byte offset.

use crate::error::GgufError;
use crate::types::GgmlType;
use crate::value::{Array, Metadata, Value, ValueType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// "GGUF" as a little-endian u32.
const MAGIC: &[u8; 4] = b"GGUF";
/// Default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;
/// ggml's GGML_MAX_NAME: tensor names are shorter than this.
pub const MAX_NAME: u64 = 64;
/// Arrays of arrays nest at most this deep (no real file needs more than 2).
pub const MAX_ARRAY_DEPTH: u32 = 8;

/// One tensor's entry in the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost first (ggml's `ne`): a matrix of `rows × cols` is `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Number of elements.
    pub n_elements: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Rows of a matrix (product of all dims but the first).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Elements per row (the first dim).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// A parsed GGUF header: version, metadata and tensor table, validated against the length
/// of the bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct Gguf {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata, in file order.
    pub metadata: Metadata,
    /// Tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Alignment of tensor data.
    pub alignment: u64,
    /// Total length of the file the header was validated against.
    pub file_len: u64,
}

/// A little-endian cursor that reports where it failed.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::at(
                self.offset(),
                format!("truncated: {what} needs {n} bytes, {} remain", self.remaining()),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let b = self.bytes(N as u64, what)?;
        Ok(b.try_into().expect("length checked"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed UTF-8 string; the length is checked against what remains.
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.offset();
        let len = self.u64(what)?;
        let b = self.bytes(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|e| {
            GgufError::at(at + 8 + e.utf8_error().valid_up_to() as u64, format!("{what} is not valid UTF-8"))
        })
    }

    /// `count` elements of `elem_size` bytes each must fit in what remains: checked before any
    /// allocation, so a forged count cannot make us allocate more than the file holds.
    fn check_count(&self, count: u64, elem_size: u64, what: &str) -> Result<usize, GgufError> {
        let need = count.checked_mul(elem_size);
        match need {
            Some(n) if n <= self.remaining() => Ok(count as usize),
            _ => Err(GgufError::at(
                self.offset(),
                format!(
                    "{what}: count {count} needs at least {} bytes, only {} remain",
                    need.map_or("more than 2^64".to_string(), |n| n.to_string()),
                    self.remaining()
                ),
            )),
        }
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType, GgufError> {
        let at = self.offset();
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| GgufError::at(at, format!("{what}: unknown value type {id}")))
    }

    fn value(&mut self, ty: ValueType, key: &str) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8(key)?),
            ValueType::I8 => Value::I8(self.u8(key)? as i8),
            ValueType::U16 => Value::U16(self.u16(key)?),
            ValueType::I16 => Value::I16(self.u16(key)? as i16),
            ValueType::U32 => Value::U32(self.u32(key)?),
            ValueType::I32 => Value::I32(self.u32(key)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(key)?)),
            ValueType::U64 => Value::U64(self.u64(key)?),
            ValueType::I64 => Value::I64(self.u64(key)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(key)?)),
            ValueType::Bool => {
                let at = self.offset();
                match self.u8(key)? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(GgufError::at(at, format!("{key}: bool byte is {b}, not 0 or 1"))),
                }
            }
            ValueType::String => Value::String(self.string(key)?),
            ValueType::Array => Value::Array(self.array_value(key, 1)?),
        })
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Result<Array, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::at(
                self.offset(),
                format!("{key}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let ty = self.value_type(key)?;
        let count = self.u64(key)?;
        let n = self.check_count(count, ty.min_size(), key)?;
        macro_rules! scalars {
            ($variant:ident, $read:expr) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push($read(&mut *self)?);
                }
                Array::$variant(v)
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.bytes(count, key)?.to_vec()),
            ValueType::I8 => Array::I8(self.bytes(count, key)?.iter().map(|&b| b as i8).collect()),
            ValueType::U16 => scalars!(U16, |r: &mut Self| r.u16(key)),
            ValueType::I16 => scalars!(I16, |r: &mut Self| r.u16(key).map(|x| x as i16)),
            ValueType::U32 => scalars!(U32, |r: &mut Self| r.u32(key)),
            ValueType::I32 => scalars!(I32, |r: &mut Self| r.u32(key).map(|x| x as i32)),
            ValueType::F32 => scalars!(F32, |r: &mut Self| r.u32(key).map(f32::from_bits)),
            ValueType::U64 => scalars!(U64, |r: &mut Self| r.u64(key)),
            ValueType::I64 => scalars!(I64, |r: &mut Self| r.u64(key).map(|x| x as i64)),
            ValueType::F64 => scalars!(F64, |r: &mut Self| r.u64(key).map(f64::from_bits)),
            ValueType::Bool => scalars!(Bool, |r: &mut Self| match r.value(ValueType::Bool, key)? {
                Value::Bool(b) => Ok(b),
                _ => unreachable!("value(Bool) returns a Bool"),
            }),
            ValueType::String => scalars!(String, |r: &mut Self| r.string(key)),
            ValueType::Array => scalars!(Array, |r: &mut Self| r.array_value(key, depth + 1)),
        })
    }
}

impl Gguf {
    /// Parses and validates the header of a GGUF file held in `bytes` (the whole file: tensor
    /// data is checked to lie inside it).
    pub fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let magic = r.array::<4>("magic")?;
        if &magic != MAGIC {
            return Err(GgufError::at(0, format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")")));
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err(GgufError::at(4, "GGUF version 1 is not supported (re-convert the model)")),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(GgufError::at(4, "big-endian GGUF is not supported"))
            }
            v => return Err(GgufError::at(4, format!("unsupported GGUF version {v}"))),
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // A KV entry takes at least 8 (key length) + 4 (type) + 1 bytes.
        let n_kv = r.check_count(n_kv, 13, "metadata count")?;

        let mut metadata = Metadata::default();
        for i in 0..n_kv {
            let at = r.offset();
            let key = r.string(&format!("metadata key #{i}"))?;
            if key.is_empty() {
                return Err(GgufError::at(at, format!("metadata key #{i} is empty")));
            }
            let ty = r.value_type(&key)?;
            let value = r.value(ty, &key)?;
            if !metadata.insert(key.clone(), value) {
                return Err(GgufError::at(at, format!("duplicate metadata key {key}")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => *a as u64,
            Some(v) => {
                return Err(GgufError::at(
                    r.offset(),
                    format!("general.alignment must be a u32 power of two, found {} {v}", v.type_name()),
                ))
            }
        };

        // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        let n_tensors = r.check_count(n_tensors, 24, "tensor count")?;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut by_name = HashMap::with_capacity(n_tensors);
        let mut offset_fields = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let at = r.offset();
            let name = r.string(&format!("tensor #{i} name"))?;
            if name.len() as u64 >= MAX_NAME {
                return Err(GgufError::at(
                    at,
                    format!("tensor #{i} name is {} bytes (limit {})", name.len(), MAX_NAME - 1),
                ));
            }
            let dims_at = r.offset();
            let n_dims = r.u32(&name)?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::at(
                    dims_at,
                    format!("tensor {name}: {n_dims} dimensions (limit {MAX_DIMS})"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut n_elements: u64 = 1;
            for _ in 0..n_dims {
                let d = r.u64(&name)?;
                if d > i64::MAX as u64 {
                    return Err(GgufError::at(
                        r.offset() - 8,
                        format!("tensor {name}: dimension {d} is negative as i64"),
                    ));
                }
                n_elements =
                    n_elements.checked_mul(d).filter(|&n| n <= i64::MAX as u64).ok_or_else(|| {
                        GgufError::at(dims_at, format!("tensor {name}: element count overflows"))
                    })?;
                dims.push(d);
            }
            let type_at = r.offset();
            let type_id = r.u32(&name)?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| {
                GgufError::at(type_at, format!("tensor {name}: unknown tensor type id {type_id}"))
            })?;
            let row = dims.first().copied().unwrap_or(1);
            if row % ty.block_elems() != 0 {
                return Err(GgufError::at(
                    dims_at,
                    format!(
                        "tensor {name}: row of {row} values is not a whole number of {ty} blocks ({})",
                        ty.block_elems()
                    ),
                ));
            }
            let n_bytes = ty
                .bytes_for(n_elements)
                .ok_or_else(|| GgufError::at(dims_at, format!("tensor {name}: byte size overflows")))?;
            let off_at = r.offset();
            let offset = r.u64(&name)?;
            offset_fields.push(off_at);
            if offset % alignment != 0 {
                return Err(GgufError::at(
                    off_at,
                    format!("tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if by_name.insert(name.clone(), i).is_some() {
                return Err(GgufError::at(at, format!("duplicate tensor name {name}")));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, n_elements, n_bytes });
        }

        let end_of_header = r.offset();
        let data_offset = end_of_header.div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        if !tensors.is_empty() && data_offset > file_len {
            return Err(GgufError::at(end_of_header, "truncated: the tensor data section is missing"));
        }
        let data_len = file_len.saturating_sub(data_offset);
        // Every tensor lies inside the file, and no two overlap.
        let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let end = t.offset.checked_add(t.n_bytes);
            match end {
                Some(end) if end <= data_len => spans.push((t.offset, end, i)),
                _ => {
                    return Err(GgufError::at(
                        offset_fields[i],
                        format!(
                            "tensor {}: data [{}, +{}) lies outside the file (data section holds {data_len} bytes; truncated?)",
                            t.name, t.offset, t.n_bytes
                        ),
                    ))
                }
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(GgufError::at(
                    data_offset + w[1].0,
                    format!("tensors {} and {} overlap", tensors[w[0].2].name, tensors[w[1].2].name),
                ));
            }
        }
        Ok(Gguf { version, metadata, tensors, by_name, data_offset, alignment, file_len })
    }

    /// A tensor's entry by name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Total bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }

    /// Total number of tensor elements (the parameter count).
    pub fn n_params(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_elements).sum()
    }

    /// The byte range of a tensor in the file (validated at parse time).
    pub fn tensor_range(&self, t: &TensorInfo) -> std::ops::Range<usize> {
        let start = (self.data_offset + t.offset) as usize;
        start..start + t.n_bytes as usize
    }
}

/// A GGUF file mapped into memory: the parsed header plus zero-copy views of tensor data.
#[derive(Debug)]
pub struct GgufFile {
    map: memmap2::Mmap,
    header: Gguf,
    path: PathBuf,
}

/// A tensor's metadata and its bytes inside the mapping.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// The table entry.
    pub info: &'a TensorInfo,
    /// The raw bytes (borrowed from the mapping).
    pub data: &'a [u8],
}

impl GgufFile {
    /// Maps and parses a file. Only the header pages are touched; tensor data stays on disk
    /// until a kernel reads it.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only. Another process truncating the file while it is
        // mapped would fault, as it would for every mmap-based loader (llama.cpp included);
        // model files are not expected to change under a running engine.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header = Gguf::parse(&map)?;
        Ok(GgufFile { map, header, path: path.to_path_buf() })
    }

    /// The parsed header.
    pub fn header(&self) -> &Gguf {
        &self.header
    }

    /// Metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// The tensor table.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.file_len
    }

    /// Reads every page of tensor data once so that the first forward pass does not wait on
    /// the disk, calling `progress(done, total)` in bytes along the way. Returns the bytes
    /// touched. (Pages stay owned by the OS page cache: nothing is copied.)
    pub fn prefetch(&self, mut progress: impl FnMut(u64, u64)) -> u64 {
        const PAGE: usize = 4096;
        const REPORT_EVERY: usize = 16 << 20;
        let data = &self.map[(self.header.data_offset as usize).min(self.map.len())..];
        let total = data.len() as u64;
        let mut acc = 0u8;
        for (i, chunk) in data.chunks(REPORT_EVERY).enumerate() {
            for page in chunk.chunks(PAGE) {
                acc ^= page[0];
            }
            progress(((i + 1) * REPORT_EVERY).min(data.len()) as u64, total);
        }
        std::hint::black_box(acc);
        total
    }

    /// Drops the whole pages of `range` from this process's resident set, for a tensor
    /// that the backend has copied into memory of its own (repacked weights): resident
    /// memory then counts the model once, not twice. The pages stay in the OS page cache,
    /// and reading them again (an embedding row of a tied output matrix) faults them back
    /// in with the same bytes. Best effort: an error only means the pages stay.
    pub fn release(&self, range: std::ops::Range<usize>) {
        // 4 KiB pages (x86, where tensors get repacked). With larger pages a start that is
        // not page-aligned makes the call fail (the pages stay), and an aligned one may drop
        // the rest of the last page, a neighbour's bytes, which only fault back in.
        const PAGE: usize = 4096;
        let start = range.start.next_multiple_of(PAGE);
        let end = range.end.min(self.map.len()) / PAGE * PAGE;
        if start >= end {
            return;
        }
        #[cfg(unix)]
        {
            // SAFETY: the mapping is a read-only, shared file mapping: MADV_DONTNEED only
            // unmaps its pages, and any later read (through a slice that is still borrowed,
            // too) maps the file's unchanged bytes again, as the first read did. The range is
            // inside the mapping (clamped above).
            let _ = unsafe {
                self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// The whole mapping (tensor ranges from `Gguf::tensor_range` index into it).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// A tensor's bytes, zero-copy.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[self.header.tensor_range(t)]
    }

    /// A tensor by name, or a "missing tensor" error.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, crate::error::MetadataError> {
        let info = self
            .header
            .tensor_info(name)
            .ok_or_else(|| crate::error::MetadataError::Missing(format!("tensor {name}")))?;
        Ok(TensorView { info, data: self.data(info) })
    }

    /// A tensor by name if present.
    pub fn try_tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.header.tensor_info(name).map(|info| TensorView { info, data: self.data(info) })
    }
}
