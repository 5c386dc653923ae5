//! The prefill path: dequantize a panel of weight rows into an L2-sized f32 buffer, multiply the
//! whole input by it with faer, move to the next panel. Panels are split across threads; each
//! thread writes its own output columns.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::{Isa, PackedWeight};

/// Most f32 values per panel (2 MiB). Panels much smaller than this made faer multiply thin
/// (m x 16) blocks and re-read the whole input once per panel: half the f32 speed at 4096 x 4096.
const PANEL_VALUES: usize = 512 * 1024;

/// The output pointer shared by the panel tasks, which write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the columns of its own panels (see `panels`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

pub fn panels(isa: Isa, x: &[f32], m: usize, w: &PackedWeight, out: &mut [f32], threads: usize) {
    let (n, k) = (w.rows, w.cols);
    // As large as allowed, but small enough that every thread gets an equal share of panels.
    let panel = (PANEL_VALUES / k.max(1))
        .min(n.div_ceil(threads))
        .next_multiple_of(16)
        .max(16);
    let starts: Vec<usize> = (0..n).step_by(panel).collect();
    let per_task = starts.len().div_ceil(threads);
    let ptr = OutPtr(out.as_mut_ptr());
    let xm = MatRef::from_row_major_slice(x, m, k);
    let task = |chunk: &[usize]| {
        let mut buf = vec![0f32; panel * k];
        for &s in chunk {
            let rows = panel.min(n - s);
            let wbuf = &mut buf[..rows * k];
            dequantize(isa, w, s, wbuf);
            // SAFETY: columns s..s+rows of the (m, n) row-major output belong to this panel only,
            // and `out` outlives the tasks.
            let dst = unsafe {
                let p = ptr;
                MatMut::from_raw_parts_mut(p.0.add(s), m, rows, n as isize, 1)
            };
            matmul(
                dst,
                Accum::Replace,
                xm,
                MatRef::from_row_major_slice(wbuf, rows, k).transpose(),
                1.0f32,
                Par::Seq,
            );
        }
    };
    if threads == 1 || starts.len() == 1 {
        task(&starts);
    } else {
        use rayon::prelude::*;
        starts.par_chunks(per_task).for_each(task);
    }
}

/// Dequantizes with the widest vectors the CPU has (the same loop, compiled per instruction set;
/// the values are identical).
fn dequantize(isa: Isa, w: &PackedWeight, start: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn wide(w: &PackedWeight, start: usize, out: &mut [f32]) {
            w.dequantize_rows_inline(start, out)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn medium(w: &PackedWeight, start: usize, out: &mut [f32]) {
            w.dequantize_rows_inline(start, out)
        }
        // SAFETY: the caller checked that the CPU supports `isa`.
        match isa {
            Isa::Avx512 if std::arch::is_x86_feature_detected!("avx512bw") => unsafe {
                return wide(w, start, out);
            },
            Isa::Avx512 | Isa::Avx2 => unsafe { return medium(w, start, out) },
            Isa::Portable => {}
        }
    }
    w.dequantize_rows(start, out)
}
