//! An S3-compatible server on 127.0.0.1 for local runs and benchmarks: s3s-fs with the test
//! credentials, one bucket. Prints `endpoint=... bucket=...` and serves until killed.
//!
//! `cargo run --release -p pierone-s3 --features test-server --example test-s3-server [PORT]`

#[tokio::main]
async fn main() {
    let s3 = pierone_s3::test_server::TestS3::start("pierone").await;
    println!(
        "endpoint={} bucket={} access_key={} secret_key={}",
        s3.endpoint,
        s3.bucket,
        pierone_s3::test_server::ACCESS_KEY,
        pierone_s3::test_server::SECRET_KEY
    );
    let _ = tokio::signal::ctrl_c().await;
}
