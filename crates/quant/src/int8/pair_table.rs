//! A function of two bytes stored as a table over every pair (`table[(u << 8) | v]`), applied
//! element-wise to two byte arrays. The int8 residual Add computes its requantized sum this way:
//! the table is made from the same float arithmetic as the fake-quantized model, so the lookup
//! equals it bit for bit. On AVX-512 sixteen lookups are one gather (each reads four bytes at a
//! byte offset and keeps the low one, so the table carries three bytes of padding); the scalar
//! loop costs about two cycles an element, a sixth of a ResNet-20 int8 forward pass.

use super::IntIsa;

const PAIRS: usize = 1 << 16;
/// A gather reads a 32-bit word at each index; the last index reads three bytes past the table.
const PADDING: usize = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct PairTable {
    bytes: Vec<u8>,
}

impl PairTable {
    pub fn from_fn(f: impl Fn(u8, u8) -> u8) -> PairTable {
        let mut bytes = vec![0u8; PAIRS + PADDING];
        for (i, b) in bytes[..PAIRS].iter_mut().enumerate() {
            *b = f((i >> 8) as u8, i as u8);
        }
        PairTable { bytes }
    }

    #[inline]
    pub fn get(&self, u: u8, v: u8) -> u8 {
        self.bytes[((u as usize) << 8) | v as usize]
    }

    /// `then(self(u, v))` as one table.
    pub fn then(&self, then: impl Fn(u8) -> u8) -> PairTable {
        PairTable::from_fn(|u, v| then(self.get(u, v)))
    }

    /// `out[i] = self(x[i], y[i])`.
    pub fn apply(&self, isa: IntIsa, x: &[u8], y: &[u8], out: &mut [u8]) {
        assert!(
            x.len() == out.len() && y.len() == out.len(),
            "PairTable::apply: operand sizes"
        );
        assert!(isa.supported(), "PairTable: {} not supported", isa.name());
        match isa {
            // SAFETY: support was checked above; lengths are equal; gather indices are below
            // PAIRS and the table holds PAIRS + PADDING bytes.
            #[cfg(target_arch = "x86_64")]
            IntIsa::Avx512Vnni => unsafe { apply_avx512(&self.bytes, x, y, out) },
            _ => apply_portable(&self.bytes, x, y, out),
        }
    }
}

fn apply_portable(table: &[u8], x: &[u8], y: &[u8], out: &mut [u8]) {
    for ((d, &u), &v) in out.iter_mut().zip(x).zip(y) {
        *d = table[((u as usize) << 8) | v as usize];
    }
}

/// # Safety
/// AVX-512F must be present; `x`, `y` and `out` have one length; `table` holds
/// `PAIRS + PADDING` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn apply_avx512(table: &[u8], x: &[u8], y: &[u8], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let base = table.as_ptr();
    let mut i = 0;
    while i + 16 <= n {
        let u = _mm512_cvtepu8_epi32(_mm_loadu_si128(x.as_ptr().add(i) as *const _));
        let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(y.as_ptr().add(i) as *const _));
        let index = _mm512_or_si512(_mm512_slli_epi32::<8>(u), v);
        let words = _mm512_i32gather_epi32::<1>(index, base as *const _);
        // vpmovdb keeps each word's low byte: the looked-up value.
        _mm_storeu_si128(
            out.as_mut_ptr().add(i) as *mut _,
            _mm512_cvtepi32_epi8(words),
        );
        i += 16;
    }
    apply_portable(table, &x[i..], &y[i..], &mut out[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_equals_the_scalar_lookup() {
        let table =
            PairTable::from_fn(|u, v| (u as u32 * 7 + v as u32 * 13 + (u ^ v) as u32) as u8);
        // Every pair once, plus a tail that is not a multiple of 16.
        let n = PAIRS + 9;
        let x: Vec<u8> = (0..n).map(|i| (i >> 8) as u8).collect();
        let y: Vec<u8> = (0..n).map(|i| (i * 31 + 5) as u8).collect();
        let want: Vec<u8> = x.iter().zip(&y).map(|(&u, &v)| table.get(u, v)).collect();
        for isa in [IntIsa::Avx512Vnni, IntIsa::Avx2, IntIsa::Portable] {
            if !isa.supported() {
                continue;
            }
            let mut out = vec![0u8; n];
            table.apply(isa, &x, &y, &mut out);
            assert_eq!(out, want, "{}", isa.name());
        }
    }

    #[test]
    fn then_composes() {
        let table = PairTable::from_fn(|u, v| u.wrapping_add(v));
        let both = table.then(|s| s / 2);
        assert_eq!(both.get(200, 100), 44 / 2);
        assert_eq!(both.get(3, 4), 3);
    }
}
