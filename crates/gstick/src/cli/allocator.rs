//! The process allocator. Tensors are large and short-lived: with the system allocator each one
//! over 32 MB was a fresh mmap, and zeroing its pages on first touch took about half of an LLM
//! forward pass. mimalloc, told to keep freed memory and not to use transparent huge pages, reuses
//! it instead (SmolLM2 perplexity: 100 -> 312 tokens/s on this machine). Memory left unused for
//! a second goes back to the system: buffers used once (the embedding table while calibration
//! windows are embedded) would otherwise stay resident for the whole run. With the delay at one
//! second the README's GPTQ run peaked at 714 MB instead of 846 MB, in the same time; at 10 ms
//! it took 37% longer.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Option indices of the vendored mimalloc v2 (`mi_option_e` in include/mimalloc.h).
const MI_OPTION_ALLOW_LARGE_OS_PAGES: libmimalloc_sys::mi_option_t = 6;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the settings above unless the user set them in the environment.
pub fn configure() {
    let set = |env: &str, option, value| {
        if std::env::var_os(env).is_none() {
            // SAFETY: setting an allocator option is a plain store inside mimalloc.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    };
    set("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 1000);
    set(
        "MIMALLOC_ALLOW_LARGE_OS_PAGES",
        MI_OPTION_ALLOW_LARGE_OS_PAGES,
        0,
    );
}
