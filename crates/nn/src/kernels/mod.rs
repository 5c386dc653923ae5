//! CPU kernels that candle does not provide fast enough, exposed as candle custom ops with
//! their own backward passes (so autodiff goes through them).

/// Runs `$body` on the contiguous data of one f32 or f64 storage, binding it to `$x`, and wraps
/// the result in a storage of the same type; other dtypes are an error naming `$op`.
macro_rules! dispatch1 {
    ($op:expr, $s:expr, $l:expr, |$x:ident| $body:expr) => {
        match $s {
            candle_core::CpuStorage::F32(v) => {
                let $x = $crate::kernels::contiguous(v, $l)?;
                candle_core::CpuStorage::F32($body)
            }
            candle_core::CpuStorage::F64(v) => {
                let $x = $crate::kernels::contiguous(v, $l)?;
                candle_core::CpuStorage::F64($body)
            }
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "{} supports f32 and f64 only",
                    $op
                )))
            }
        }
    };
}

/// [`dispatch1`] for two operands of the same dtype.
macro_rules! dispatch2 {
    ($op:expr, $s1:expr, $l1:expr, $s2:expr, $l2:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (candle_core::CpuStorage::F32(a), candle_core::CpuStorage::F32(b)) => {
                let ($a, $b) = (
                    $crate::kernels::contiguous(a, $l1)?,
                    $crate::kernels::contiguous(b, $l2)?,
                );
                candle_core::CpuStorage::F32($body)
            }
            (candle_core::CpuStorage::F64(a), candle_core::CpuStorage::F64(b)) => {
                let ($a, $b) = (
                    $crate::kernels::contiguous(a, $l1)?,
                    $crate::kernels::contiguous(b, $l2)?,
                );
                candle_core::CpuStorage::F64($body)
            }
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "{} supports f32 and f64 operands of one dtype",
                    $op
                )))
            }
        }
    };
}

pub mod attention;
pub mod bf16_gemm;
pub mod channel_bias;
pub mod conv2d;
pub mod linear;
pub mod linear_nll;
pub mod max_pool2d;
pub mod relu;
pub mod rows;
pub mod spin_pool;
pub mod vector_math;

/// Float element types the kernels are written for.
pub trait Elem: Copy + Default + PartialOrd + Send + Sync + 'static + std::ops::AddAssign {
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn is_nan(self) -> bool;
}

impl Elem for f32 {
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Elem for f64 {
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// The contiguous slice behind a storage and layout, or an error for a strided view (callers make
/// inputs contiguous before applying an op).
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(candle_core::Error::Msg(
            "kernel needs a contiguous tensor".into(),
        )),
    }
}

/// Calls `f(index, chunk)` for every `chunk`-sized piece of `data`, spread over the machine's
/// cores in contiguous runs (the calling thread takes the first run). Scoped threads instead of a
/// pool: pool workers spin between calls and, on a 2-core machine, steal time from the serial
/// work in between. Each piece is computed the same way whatever the split, so results do not
/// depend on the number of threads.
pub fn for_each_chunk<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let pieces = data.len().div_ceil(chunk);
    let threads = cores().min(pieces).max(1);
    let run = |first: usize, part: &mut [T]| {
        for (i, piece) in part.chunks_mut(chunk).enumerate() {
            f(first + i, piece);
        }
    };
    if threads == 1 || data.len() < MIN_PARALLEL_ELEMENTS {
        run(0, data);
        return;
    }
    let per = pieces.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = data.chunks_mut(per * chunk).enumerate();
        let first = parts.next();
        for (p, part) in parts {
            let run = &run;
            scope.spawn(move || run(p * per, part));
        }
        if let Some((_, part)) = first {
            run(0, part);
        }
    });
}

/// Calls `f` on every item, item i on thread i mod n, so items whose cost grows with their index
/// (causal attention blocks) spread evenly. `work` is a rough count of the values computed: below
/// [`MIN_PARALLEL_ELEMENTS`] everything runs on the calling thread.
pub fn for_each_interleaved<T: Send>(items: Vec<T>, work: usize, f: impl Fn(T) + Sync) {
    let threads = cores().min(items.len()).max(1);
    if threads == 1 || work < MIN_PARALLEL_ELEMENTS {
        items.into_iter().for_each(f);
        return;
    }
    let mut buckets: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        buckets[i % threads].push(item);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let mut buckets = buckets.into_iter();
        let first = buckets.next();
        for bucket in buckets {
            scope.spawn(move || bucket.into_iter().for_each(f));
        }
        first.into_iter().flatten().for_each(f);
    });
}

/// Runs `f` on the contiguous f32 values of `t` (copied first only when `t` is a strided view).
pub fn with_f32<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => Ok(f(contiguous(v, layout)?)),
        _ => Err(candle_core::Error::Msg(format!(
            "kernel needs an f32 tensor on the CPU, got {:?}",
            t.dtype()
        ))),
    }
}

/// Deterministic test values in [-1, 1) from a multiplicative hash of the index.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 97)
                >> 8;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Below this many output values a kernel runs on the calling thread (spawning costs more).
const MIN_PARALLEL_ELEMENTS: usize = 16 * 1024;

/// The arithmetic of inference matrix products (the Linear layers of `Mode::Eval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// f32 throughout (the default).
    F32,
    /// Operands of the Linear layers, the LM head and attention's two products rounded to
    /// bfloat16, f32 sums: on AMX tiles where the CPU has them. Elsewhere the Linear layers and
    /// the LM head round the same way on the f32 GEMM and attention stays f32. Norms, softmax
    /// and the NLL stay f32 everywhere.
    Bf16,
}

impl Compute {
    /// Where the bf16 products run on this machine, for reports.
    pub fn engine(self) -> &'static str {
        match self {
            Compute::F32 => "f32",
            Compute::Bf16 => match bf16_gemm::hardware_name() {
                Some("AMX tiles") => "bf16 on AMX tiles",
                Some(_) => "bf16 on AVX512-BF16",
                None => {
                    "bf16 Linear layers emulated on the f32 GEMM, attention in f32 (no AMX or AVX512-BF16 on this CPU)"
                }
            },
        }
    }
}

static COMPUTE_BF16: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the arithmetic of inference matrix products for the whole process.
pub fn set_compute(compute: Compute) {
    COMPUTE_BF16.store(
        compute == Compute::Bf16,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The arithmetic set by [`set_compute`] (f32 unless changed).
pub fn compute() -> Compute {
    if COMPUTE_BF16.load(std::sync::atomic::Ordering::Relaxed) {
        Compute::Bf16
    } else {
        Compute::F32
    }
}

/// Threads the kernels use; 0 means one per core (or `GSTICK_THREADS` when set).
static KERNEL_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets how many threads the kernels use (`None`: one per core). Results do not depend on it.
pub fn set_kernel_threads(threads: Option<usize>) {
    KERNEL_THREADS.store(threads.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
}

/// faer's parallelism over the kernel threads (faer gives the same bits for any count).
pub fn faer_par() -> faer::Par {
    match cores() {
        1 => faer::Par::Seq,
        t => faer::Par::rayon(t),
    }
}

/// Threads the kernels run on now (see [`set_kernel_threads`]).
pub fn kernel_threads() -> usize {
    cores()
}

pub(crate) fn cores() -> usize {
    static DEFAULT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match KERNEL_THREADS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => *DEFAULT.get_or_init(|| {
            std::env::var("GSTICK_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1)
        }),
        n => n,
    }
}

/// Shortens how long candle's element-wise worker threads spin after each op before they sleep
/// (25,000 rounds by default). On a 2-core machine the spinning worker takes a core away from the
/// serial work between ops: LeNet-5 training ran 8.4k images/s with the default and 11.2k with 100
/// rounds. Call at the start of `main`, before any other thread exists; a value already in the
/// environment wins.
pub fn tune_candle_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
}
