//! Copy-on-write memory images and their content hash.
//!
//! A crash image of an 8 MiB region differs from the persisted image in a
//! handful of cache lines, and the explorer builds thousands of them. A
//! [`PagedImage`] therefore keeps its bytes in reference-counted 4 KiB pages:
//! cloning an image copies only the page table, and writing a page copies
//! that one page if another image still shares it.
//!
//! The explorer identifies images by [`ImageHash`]: the wrapping sum over
//! all lines of a 128-bit hash of (line index, line bytes). Because the sum
//! is over lines, changing one line changes the hash by a difference that
//! can be computed from that line alone, so the hash of a crash image costs
//! time in proportion to the lines it changes, not to the region size.

use alloc::sync::Arc;
use alloc::vec::Vec;

use daxbox_persist::{check_range, OutOfRange, CACHE_LINE};

/// Bytes per page of a [`PagedImage`] (the copy-on-write unit).
pub const PAGE: usize = 4096;

/// Bytes per cache line, as a `usize`.
pub const LINE: usize = CACHE_LINE as usize;

/// The content of one cache line.
pub type LineBytes = [u8; LINE];

/// A byte image built from shared copy-on-write pages.
#[derive(Clone)]
pub struct PagedImage {
    pages: Vec<Arc<[u8; PAGE]>>,
}

/// An image length that is not a whole number of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPageMultiple(pub usize);

impl core::fmt::Display for NotPageMultiple {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "image length {} is not a multiple of the {PAGE}-byte page",
            self.0
        )
    }
}

impl PagedImage {
    /// A zero-filled image of `len` bytes (a whole number of pages).
    pub fn zeroed(len: usize) -> Result<Self, NotPageMultiple> {
        if !len.is_multiple_of(PAGE) {
            return Err(NotPageMultiple(len));
        }
        // All pages share one zero page until written.
        let zero = Arc::new([0u8; PAGE]);
        Ok(Self {
            pages: alloc::vec![zero; len / PAGE],
        })
    }

    /// An image holding a copy of `bytes` (a whole number of pages).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NotPageMultiple> {
        if !bytes.len().is_multiple_of(PAGE) {
            return Err(NotPageMultiple(bytes.len()));
        }
        let pages = bytes
            .chunks_exact(PAGE)
            .map(|chunk| {
                let mut page = [0u8; PAGE];
                page.copy_from_slice(chunk);
                Arc::new(page)
            })
            .collect();
        Ok(Self { pages })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        (self.pages.len() * PAGE) as u64
    }

    /// True when the image has no bytes.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Number of cache lines.
    pub fn lines(&self) -> u64 {
        self.len() / CACHE_LINE
    }

    /// The whole image as one vector (for tests and dumps).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pages.len() * PAGE);
        for page in &self.pages {
            out.extend_from_slice(&page[..]);
        }
        out
    }

    /// Copies bytes at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(offset, buf.len() as u64, self.len())?;
        // In range, so `offset` fits in usize.
        let mut at = offset as usize;
        let mut done = 0;
        while done < buf.len() {
            let (page, within) = (at / PAGE, at % PAGE);
            let n = (PAGE - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.pages[page][within..within + n]);
            done += n;
            at += n;
        }
        Ok(())
    }

    /// Copies `data` into the image at `offset` (copy-on-write per page).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(offset, data.len() as u64, self.len())?;
        let mut at = offset as usize;
        let mut done = 0;
        while done < data.len() {
            let (page, within) = (at / PAGE, at % PAGE);
            let n = (PAGE - within).min(data.len() - done);
            Arc::make_mut(&mut self.pages[page])[within..within + n]
                .copy_from_slice(&data[done..done + n]);
            done += n;
            at += n;
        }
        Ok(())
    }

    /// The bytes of line `index`. The caller keeps `index < self.lines()`.
    pub fn line(&self, index: u64) -> &LineBytes {
        let byte = index as usize * LINE;
        let page = &self.pages[byte / PAGE];
        let within = byte % PAGE;
        // A line never crosses a page: PAGE is a multiple of LINE.
        page[within..within + LINE]
            .try_into()
            .expect("a line lies inside one page")
    }

    /// Replaces line `index`. The caller keeps `index < self.lines()`.
    pub fn set_line(&mut self, index: u64, bytes: &LineBytes) {
        let byte = index as usize * LINE;
        let within = byte % PAGE;
        Arc::make_mut(&mut self.pages[byte / PAGE])[within..within + LINE].copy_from_slice(bytes);
    }

    /// The [`ImageHash`] of the whole image (costs one pass over it).
    pub fn hash(&self) -> ImageHash {
        let mut sum = ImageHash::default();
        for index in 0..self.lines() {
            sum.add_line(index, self.line(index));
        }
        sum
    }

    /// True when both images share every page (a cheap equality test that
    /// may say false for equal images).
    pub fn shares_all_pages(&self, other: &Self) -> bool {
        self.pages.len() == other.pages.len()
            && self
                .pages
                .iter()
                .zip(&other.pages)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// Order-independent hash of an image: the wrapping sum of [`line_hash`]
/// over its lines. Equal images have equal hashes; unequal images collide
/// with probability about 2^-128 per pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageHash(pub u128);

impl ImageHash {
    /// Adds line `index` holding `bytes`.
    pub fn add_line(&mut self, index: u64, bytes: &LineBytes) {
        self.0 = self.0.wrapping_add(line_hash(index, bytes));
    }

    /// Removes line `index` holding `bytes`.
    pub fn remove_line(&mut self, index: u64, bytes: &LineBytes) {
        self.0 = self.0.wrapping_sub(line_hash(index, bytes));
    }

    /// The hash after line `index` changes from `old` to `new`.
    pub fn replaced(mut self, index: u64, old: &LineBytes, new: &LineBytes) -> Self {
        if old != new {
            self.remove_line(index, old);
            self.add_line(index, new);
        }
        self
    }
}

/// The murmur3 64-bit finaliser: a bijective mix with full avalanche.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A 128-bit hash of (line index, line bytes): two independent 64-bit
/// multiply-rotate chains, each finished with the murmur3 finaliser.
pub fn line_hash(index: u64, bytes: &LineBytes) -> u128 {
    let mut a = mix(index ^ 0x243f_6a88_85a3_08d3);
    let mut b = mix(index.wrapping_add(0x1319_8a2e_0370_7344));
    for word in bytes.chunks_exact(8) {
        // chunks_exact(8) yields 8-byte slices.
        let w = u64::from_le_bytes(word.try_into().expect("8-byte chunk"));
        a = (a ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        b = (b ^ w.rotate_left(17))
            .wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
            .rotate_left(31)
            ^ a;
    }
    (u128::from(mix(a)) << 64) | u128::from(mix(b ^ 0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_copied_on_write_only() {
        let mut a = PagedImage::zeroed(4 * PAGE).unwrap();
        let b = a.clone();
        assert!(a.shares_all_pages(&b));
        a.write(PAGE as u64 - 2, &[1, 2, 3, 4]).unwrap();
        assert!(!a.shares_all_pages(&b));
        let mut buf = [0u8; 4];
        a.read(PAGE as u64 - 2, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        b.read(PAGE as u64 - 2, &mut buf).unwrap();
        assert_eq!(buf, [0; 4]);
        assert!(a.write(4 * PAGE as u64 - 1, &[0, 0]).is_err());
        assert!(PagedImage::zeroed(100).is_err());
    }

    #[test]
    fn incremental_hash_matches_full_hash() {
        let mut image = PagedImage::zeroed(2 * PAGE).unwrap();
        let mut hash = image.hash();
        let old = *image.line(5);
        let mut new = old;
        new[3] = 7;
        image.set_line(5, &new);
        hash = hash.replaced(5, &old, &new);
        assert_eq!(hash, image.hash());
        assert_ne!(hash, PagedImage::zeroed(2 * PAGE).unwrap().hash());
        // The same change on another line gives another hash.
        let mut other = PagedImage::zeroed(2 * PAGE).unwrap();
        other.set_line(6, &new);
        assert_ne!(other.hash(), image.hash());
    }
}
