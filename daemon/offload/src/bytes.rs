//! Bounds-checked big- and little-endian field access. Every helper returns `None` instead of
//! panicking, so the packet code above it stays total on arbitrary input.

/// The byte at `at`.
#[inline]
pub(crate) fn byte(b: &[u8], at: usize) -> Option<u8> {
    b.get(at).copied()
}

/// The big-endian (network order) `u16` at `at`.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..)?
        .first_chunk::<2>()
        .map(|c| u16::from_be_bytes(*c))
}

/// The big-endian (network order) `u32` at `at`.
#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..)?
        .first_chunk::<4>()
        .map(|c| u32::from_be_bytes(*c))
}

/// The little-endian `u16` at `at`.
#[inline]
pub(crate) fn le16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..)?
        .first_chunk::<2>()
        .map(|c| u16::from_le_bytes(*c))
}

/// Stores `v` as one byte at `at`.
#[inline]
pub(crate) fn put_byte(b: &mut [u8], at: usize, v: u8) -> Option<()> {
    *b.get_mut(at)? = v;
    Some(())
}

/// Stores `v` big-endian at `at`.
#[inline]
pub(crate) fn put_be16(b: &mut [u8], at: usize, v: u16) -> Option<()> {
    *b.get_mut(at..)?.first_chunk_mut::<2>()? = v.to_be_bytes();
    Some(())
}

/// Stores `v` big-endian at `at`.
#[inline]
pub(crate) fn put_be32(b: &mut [u8], at: usize, v: u32) -> Option<()> {
    *b.get_mut(at..)?.first_chunk_mut::<4>()? = v.to_be_bytes();
    Some(())
}

/// Stores `v` little-endian at `at` (a checksum computed in the little-endian domain).
#[inline]
pub(crate) fn put_le16(b: &mut [u8], at: usize, v: u16) -> Option<()> {
    *b.get_mut(at..)?.first_chunk_mut::<2>()? = v.to_le_bytes();
    Some(())
}

/// Copies all of `src` to `dst[at..at + src.len()]`.
#[inline]
pub(crate) fn copy_to(dst: &mut [u8], at: usize, src: &[u8]) -> Option<()> {
    let end = at.checked_add(src.len())?;
    dst.get_mut(at..end)?.copy_from_slice(src);
    Some(())
}
