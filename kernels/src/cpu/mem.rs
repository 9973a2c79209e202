//! Zeroed memory on transparent huge pages, for the buffers a decode streams every token
//! (repacked weights, the KV cache): with 4 KiB pages each page of such a stream costs a TLB
//! miss, a nested page walk under a hypervisor. On Qwen2.5-1.5B this took generation from
//! 79% to 85–89% of the memory-bandwidth floor (docs/PERFORMANCE.md, session 21).

/// Huge-page alignment.
const HUGE: usize = 2 << 20;

/// One anonymous mapping of `len` zeroed bytes starting at a 2 MiB boundary, advised for
/// transparent huge pages (advice only: where the OS declines, the pages stay small).
#[derive(Debug)]
pub struct HugePages {
    _map: memmap2::MmapMut,
    /// First 2 MiB-aligned byte of the mapping.
    base: *mut u8,
    len: usize,
}

// SAFETY: `base` points into `_map`, which this value owns; access follows Rust's borrows of
// `self` (`as_slice`/`as_mut_slice`) or, for arena regions, disjoint ranges (`packed`).
unsafe impl Send for HugePages {}
// SAFETY: as above.
unsafe impl Sync for HugePages {}

impl HugePages {
    /// `len` zeroed bytes, or `None` when the OS refuses the mapping.
    pub fn zeroed(len: usize) -> Option<Self> {
        let mut map = memmap2::MmapMut::map_anon(len.checked_add(HUGE)?).ok()?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let pad = map.as_ptr().align_offset(HUGE);
        let base = map[pad..].as_mut_ptr();
        Some(Self { _map: map, base, len })
    }

    /// Usable bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes from `base` lie inside the mapping (it has `HUGE` spare bytes
        // for the alignment pad), which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// The bytes, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }

    /// Start of the usable bytes, for [`super::packed`]'s regions.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base
    }
}
