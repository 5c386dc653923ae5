//! The integer GEMM on every instruction set this CPU has against plain integer loops, and the
//! unfolding of quantized images.

use gstick_quant::int8::im2col::{im2col_u8, ConvShape};
use gstick_quant::int8::{gemm_u8i8, ActQuant, Int8Rows, IntIsa, K_ALIGN};

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

#[test]
fn every_integer_gemm_equals_the_plain_sum() {
    for (m, n, k) in [
        (1, 1, 1),
        (5, 7, 75),
        (9, 16, 150),
        (33, 6, 64),
        (4, 4, 400),
    ] {
        let w: Vec<i8> = bytes(n as u64, n * k)
            .into_iter()
            .map(|b| b as i8)
            .collect();
        let b = Int8Rows::new(&w, n, k);
        assert_eq!(b.k_padded % K_ALIGN, 0);
        assert!(b.k_padded >= k);
        for r in 0..n {
            let sum: i32 = w[r * k..(r + 1) * k].iter().map(|&v| v as i32).sum();
            assert_eq!(b.row_sums[r], sum);
        }
        let raw = bytes(100 + m as u64, m * k);
        let mut a = vec![0u8; m * b.k_padded];
        for i in 0..m {
            a[i * b.k_padded..i * b.k_padded + k].copy_from_slice(&raw[i * k..(i + 1) * k]);
        }
        let want: Vec<i32> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                (0..k)
                    .map(|c| raw[i * k + c] as i32 * w[j * k + c] as i32)
                    .sum()
            })
            .collect();
        for isa in [IntIsa::Avx512Vnni, IntIsa::Avx2, IntIsa::Portable] {
            if !isa.supported() {
                continue;
            }
            let mut out = vec![0i32; m * n];
            gemm_u8i8(isa, &a, m, &b, &mut out);
            assert_eq!(out, want, "{isa:?} m {m} n {n} k {k}");
        }
    }
    // Extremes: 255 * -128 over long rows must not saturate anywhere.
    let k = 512;
    let b = Int8Rows::new(&vec![-128i8; 4 * k], 4, k);
    let a = vec![255u8; 4 * b.k_padded];
    for isa in [IntIsa::Avx512Vnni, IntIsa::Avx2, IntIsa::Portable] {
        if isa.supported() {
            let mut out = vec![0i32; 16];
            gemm_u8i8(isa, &a, 4, &b, &mut out);
            assert!(out.iter().all(|&v| v == 255 * -128 * k as i32), "{isa:?}");
        }
    }
}

#[test]
fn im2col_reads_the_zero_point_outside_the_image() {
    // One 2x2 channel, 3x3 kernel, padding 1: output 2x2, each window 9 values.
    let image = [1u8, 2, 3, 4];
    let s = ConvShape {
        channels: 1,
        height: 2,
        width: 2,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        padding: 1,
        dilation: 1,
    };
    assert_eq!(s.out_hw(), (2, 2));
    let mut rows = vec![9u8; 4 * 64];
    im2col_u8(&image, &s, 7, 64, &mut rows);
    // Top-left output: window rows y=-1..1, x=-1..1.
    assert_eq!(&rows[..9], &[7, 7, 7, 7, 1, 2, 7, 3, 4]);
    assert!(
        rows[9..64].iter().all(|&v| v == 0),
        "padding of the row is 0"
    );
    // Bottom-right output.
    assert_eq!(&rows[3 * 64..3 * 64 + 9], &[1, 2, 7, 3, 4, 7, 7, 7, 7]);
}

#[test]
fn activation_quantization_round_trips_on_its_grid() {
    // Range [-1, 3) with zero point 64 and scale 4/255, as the fake quantizer nudges it.
    let s = 4.0f32 / 255.0;
    let q = ActQuant {
        scale: s,
        zero_point: 64,
        min: -64.0 * s,
        max: 191.0 * s,
    };
    assert_eq!(q.quantize(0.0), 64);
    assert_eq!(q.dequantize(64), 0.0);
    assert_eq!(q.quantize(-5.0), 0);
    assert_eq!(q.quantize(5.0), 255);
    for u in 0..=255u8 {
        assert_eq!(q.quantize(q.dequantize(u)), u);
    }
    // The same integers as the plain saturating cast, for every kind of input and for ranges
    // wider than the grid (where the cast saturates at 255).
    let reference = |q: &ActQuant, x: f32| {
        let c = x.clamp(q.min, q.max);
        ((c - q.min) / q.scale + 0.5) as u8
    };
    let wide = ActQuant {
        scale: s / 2.0,
        ..q
    };
    for q in [q, wide] {
        let mut inputs = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        inputs.extend((-4000..4000).map(|i| i as f32 * 1e-3));
        for x in inputs {
            assert_eq!(
                q.quantize(x),
                reference(&q, x),
                "{x} with scale {}",
                q.scale
            );
        }
    }
}

#[test]
fn im2col_equals_a_plain_window_walk_for_strides_dilations_and_padding() {
    for (c, h, w, k, stride, padding, dilation) in [
        (3, 7, 9, 3, 1, 1, 1),
        (2, 8, 8, 3, 2, 1, 1),
        (1, 9, 7, 3, 1, 2, 2),
        (4, 6, 6, 1, 2, 0, 1),
        (2, 5, 5, 5, 1, 2, 1),
    ] {
        let s = ConvShape {
            channels: c,
            height: h,
            width: w,
            kernel_h: k,
            kernel_w: k,
            stride,
            padding,
            dilation,
        };
        let image = bytes(c as u64 * 31 + h as u64, c * h * w);
        let (oh, ow) = s.out_hw();
        let kp = s.window().div_ceil(64) * 64;
        let mut rows = vec![77u8; oh * ow * kp];
        im2col_u8(&image, &s, 5, kp, &mut rows);
        for oy in 0..oh {
            for ox in 0..ow {
                let mut idx = 0;
                for ch in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let y = (oy * stride + ky * dilation) as isize - padding as isize;
                            let x = (ox * stride + kx * dilation) as isize - padding as isize;
                            let want = if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                                image[ch * h * w + y as usize * w + x as usize]
                            } else {
                                5
                            };
                            assert_eq!(
                                rows[(oy * ow + ox) * kp + idx],
                                want,
                                "{s:?} ({oy},{ox}) {idx}"
                            );
                            idx += 1;
                        }
                    }
                }
                assert!(rows[(oy * ow + ox) * kp + idx..(oy * ow + ox + 1) * kp]
                    .iter()
                    .all(|&v| v == 0));
            }
        }
    }
}

#[test]
fn channels_last_unfolding_with_reordered_weights_gives_the_same_products() {
    use gstick_quant::int8::im2col::{im2col_hwc_u8, reorder_to_taps, to_hwc};
    let s = ConvShape {
        channels: 16,
        height: 6,
        width: 5,
        kernel_h: 3,
        kernel_w: 3,
        stride: 2,
        padding: 1,
        dilation: 1,
    };
    let image = bytes(4, 16 * 6 * 5);
    let (oh, ow) = s.out_hw();
    let k = s.window();
    let w: Vec<i8> = bytes(5, 8 * k).into_iter().map(|b| b as i8).collect();
    let chw_rows = Int8Rows::new(&w, 8, k);
    let tap_rows = Int8Rows::new(&reorder_to_taps(&w, 8, 16, 16, (3, 3)), 8, k);
    let kp = chw_rows.k_padded;
    let mut a = vec![0u8; oh * ow * kp];
    im2col_u8(&image, &s, 9, kp, &mut a);
    let mut hwc = vec![0u8; image.len()];
    to_hwc(&image, 16, 6, 5, &mut hwc);
    let mut b = vec![0u8; oh * ow * kp];
    im2col_hwc_u8(&hwc, &s, 9, kp, &mut b);
    let (mut x, mut y) = (vec![0i32; oh * ow * 8], vec![0i32; oh * ow * 8]);
    gemm_u8i8(IntIsa::Portable, &a, oh * ow, &chw_rows, &mut x);
    gemm_u8i8(IntIsa::Portable, &b, oh * ow, &tap_rows, &mut y);
    assert_eq!(x, y);
    assert_eq!(chw_rows.row_sums, tap_rows.row_sums);
}

#[test]
fn the_quad_layout_gemm_equals_the_row_major_one_for_every_conv_geometry() {
    use gstick_quant::int8::im2col::{
        im2col_quads_u8, pad_into_quads, reorder_to_taps, InPlaceQuads,
    };
    use gstick_quant::int8::quads::{
        gemm_quads, gemm_quads_at, quad_row_sums, quad_row_sums_at, QuadShape,
    };
    let zero_point = 7;
    // (channels, height, width, kernel, stride, padding, dilation, output channels): channel
    // counts below, at and past a quad; rows that are and are not whole 16-row blocks; 1 to 9
    // output channels (every tile width of the kernel).
    for (i, &(c, h, w, kk, st, pad, d, co)) in [
        (1, 28, 28, 5, 1, 0, 1, 6),
        (6, 12, 12, 5, 1, 0, 1, 16),
        (16, 7, 7, 3, 1, 1, 1, 9),
        (4, 9, 8, 3, 2, 1, 1, 3),
        (8, 6, 5, 1, 2, 0, 1, 5),
        (3, 10, 11, 3, 1, 2, 2, 1),
        (32, 4, 4, 3, 1, 1, 1, 33),
    ]
    .iter()
    .enumerate()
    {
        let s = ConvShape {
            channels: c,
            height: h,
            width: w,
            kernel_h: kk,
            kernel_w: kk,
            stride: st,
            padding: pad,
            dilation: d,
        };
        let (oh, ow) = s.out_hw();
        let (m, k) = (oh * ow, s.window());
        let image = bytes(10 + i as u64, c * h * w);
        let wv: Vec<i8> = bytes(20 + i as u64, co * k)
            .into_iter()
            .map(|b| b as i8)
            .collect();
        // Reference: channels-first windows, row-major GEMM, plain row sums.
        let rows = Int8Rows::new(&wv, co, k);
        let mut a = vec![0u8; m * rows.k_padded];
        im2col_u8(&image, &s, zero_point, rows.k_padded, &mut a);
        let mut want = vec![0i32; m * co];
        gemm_u8i8(IntIsa::Portable, &a, m, &rows, &mut want);
        let want_sums: Vec<i32> = a
            .chunks_exact(rows.k_padded)
            .map(|r| r[..k].iter().map(|&v| v as i32).sum())
            .collect();

        let cp = c.div_ceil(4) * 4;
        let quad_rows = Int8Rows::new(&reorder_to_taps(&wv, co, c, cp, (kk, kk)), co, cp * kk * kk);
        assert_eq!(quad_rows.row_sums, rows.row_sums);
        let shape = QuadShape {
            m,
            k: quad_rows.cols,
        };
        let mut quads = vec![0u8; shape.len()];
        let mut scratch = Vec::new();
        im2col_quads_u8(&image, &s, zero_point, &mut scratch, &mut quads);
        let mut sums = vec![0i32; m];
        quad_row_sums(&quads, shape, &mut sums);
        assert_eq!(sums, want_sums, "case {i}: activation sums");
        for isa in [IntIsa::Avx512Vnni, IntIsa::Portable] {
            if !isa.supported() {
                continue;
            }
            let mut got = vec![-1i32; m * co];
            gemm_quads(isa, &quads, shape, &quad_rows, &mut got);
            for p in 0..m {
                for o in 0..co {
                    assert_eq!(
                        got[o * m + p],
                        want[p * co + o],
                        "case {i} {isa:?} ({p}, {o})"
                    );
                }
            }
        }
        // Stride 1: the same sums read in place from the padded planes, at virtual rows
        // oy * pitch + ox.
        let Some(in_place) = InPlaceQuads::new(&s) else {
            assert_ne!(st, 1, "case {i}: stride 1 has an in-place layout");
            continue;
        };
        let mut planes = Vec::new();
        pad_into_quads(&image, &s, zero_point, in_place.tail, &mut planes);
        let rows = in_place.rows;
        for isa in [IntIsa::Avx512Vnni, IntIsa::Portable] {
            if !isa.supported() {
                continue;
            }
            let mut got = vec![-1i32; rows * co];
            gemm_quads_at(isa, &planes, &in_place.bases, rows, &quad_rows, &mut got);
            let mut sums = vec![-1i32; rows];
            quad_row_sums_at(isa, &planes, &in_place.bases, rows, &mut sums);
            for oy in 0..oh {
                for ox in 0..ow {
                    let (p, r) = (oy * ow + ox, oy * in_place.pitch + ox);
                    assert_eq!(sums[r], want_sums[p], "case {i} {isa:?} in place: sum {p}");
                    for o in 0..co {
                        assert_eq!(
                            got[o * rows + r],
                            want[p * co + o],
                            "case {i} {isa:?} in place ({p}, {o})"
                        );
                    }
                }
            }
        }
    }
}
