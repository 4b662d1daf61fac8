//! An S3-compatible server for tests: s3s-fs in-process on 127.0.0.1:0, with signature
//! checking, backed by a temporary directory.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The access key the test server accepts.
pub const ACCESS_KEY: &str = "pierone-test-access";
/// The secret key the test server accepts.
pub const SECRET_KEY: &str = "pierone-test-secret-key";

/// A running test server; it stops (with every open connection) when dropped or
/// [`TestS3::stop`]ped.
#[derive(Debug)]
pub struct TestS3 {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// A bucket created for this server.
    pub bucket: String,
    /// A client for `endpoint` with the test credentials.
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client for an S3-compatible endpoint with static credentials, path-style addressing,
/// and checksums only where required (some S3-compatible servers mishandle the default
/// `aws-chunked` trailing checksums).
pub fn client(endpoint: &str, access_key: &str, secret_key: &str) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            access_key, secret_key, None, None, "static",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(conf)
}

impl TestS3 {
    /// Stop serving, as if S3 went away.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Start a server and create `bucket` in it.
    pub async fn start(bucket: &str) -> TestS3 {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            // Connections live in this set, so stopping the server also cuts the ones that
            // clients keep alive: tests of an S3 outage see a real outage.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                let service = service.clone();
                connections.spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let client = client(&endpoint, ACCESS_KEY, SECRET_KEY);
        client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
        TestS3 {
            endpoint,
            bucket: bucket.to_owned(),
            client,
            task,
            _dir: dir,
        }
    }
}
