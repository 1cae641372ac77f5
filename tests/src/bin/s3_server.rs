//! `ctcluster-s3`: the S3-compatible server the storage tests and the loader benchmark start,
//! a real HTTP server on loopback: s3s's S3 protocol service (SigV4 authentication, XML, the
//! object and multipart calls) over s3s-fs's file-system store. It is built with the workspace,
//! so its HTTP stack is compiled once with everything else rather than by a separate
//! `cargo install`.

use std::path::PathBuf;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
#[command(about = "S3-compatible test server over a local folder (s3s + s3s-fs)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed on start).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Access key clients sign with.
    #[arg(long)]
    access_key: String,
    /// Secret key clients sign with.
    #[arg(long)]
    secret_key: String,
    /// Once listening, write the address to this file (`s3 ADDR`), whole or not at all.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Folder holding the buckets (one sub-folder each).
    root: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = s3s_fs::FileSystem::new(&args.root)
        .map_err(|e| format!("{}: {e:?}", args.root.display()))?;
    let mut builder = S3ServiceBuilder::new(store);
    builder.set_auth(SimpleAuth::from_single(args.access_key, args.secret_key));
    let service = builder.build();
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    if let Some(path) = &args.addr_file {
        ctcluster_common::addr_file::write_addr_file(path, &[("s3", local)])?;
    }
    let http = Builder::new(TokioExecutor::new());
    // Every connection is a task of this set: they end with the server.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        continue;
                    }
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        eprintln!("connection: {e}");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    connections.shutdown().await;
    Ok(())
}
