//! Compiles onnx.proto (path in argv[1]) with protox and writes prost's Rust to argv[2].
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (proto, out) = (&args[1], &args[2]);
    let dir = std::path::Path::new(proto).parent().expect("proto directory");
    let fds = protox::compile([proto], [dir]).expect("onnx.proto does not compile");
    std::fs::create_dir_all(out).expect("output directory");
    prost_build::Config::new()
        .out_dir(out)
        .compile_fds(fds)
        .expect("code generation failed");
}
