//! The subcommands of the `gstick` binary: argument parsing and output around calls into the
//! library (`gstick` and the crates below it).

pub mod allocator;
pub mod bench;
pub mod cnn_bench;
pub mod datasets;
pub mod decode_bench;
pub mod gptq_bench;
pub mod graph_cmd;
pub mod kernel_bench;
pub mod llm_cmd;
pub mod models;
pub mod qat_cmd;
pub mod quantize_cmd;
pub mod train_cmd;
