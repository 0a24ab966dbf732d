//! Compiles `proto/flotilla/**.proto` with protox, a pure-Rust protobuf compiler, so a fresh machine
//! needs nothing but cargo (no system `protoc`). The same descriptor set is written to `OUT_DIR` for
//! server reflection.
//!
//! etcd's protos (`proto/etcd/**`, a trimmed copy) are a second, client-only compilation: Flotilla
//! calls etcd but does not serve it, so they stay out of the reflection descriptor set and get no
//! server code.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "flotilla/user/v1/user.proto",
    "flotilla/auth/v1/auth.proto",
    "flotilla/product/v1/product.proto",
];

/// The etcd protos, relative to `proto/etcd` (their imports are written as etcd's own tree has them,
/// `mvccpb/kv.proto`).
const ETCD_PROTOS: &[&str] = &["etcdserverpb/rpc.proto"];

const SECRET_BEARING: &[&str] = &[
    ".flotilla.user.v1.CreateUserRequest",
    ".flotilla.user.v1.AuthenticateUserRequest",
    ".flotilla.auth.v1.LoginRequest",
    ".flotilla.auth.v1.TokenPair",
    ".flotilla.auth.v1.RefreshRequest",
    ".flotilla.auth.v1.RevokeRequest",
    ".flotilla.auth.v1.ValidateTokenRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("flotilla_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages that carry a password or a token get a hand-written Debug (src/redacted.rs) that
        // prints `***` for it, so `{:?}` on a request can never leak one into a log.
        .skip_debug(SECRET_BEARING)
        .compile_fds(descriptors)?;

    let etcd_descriptors = protox::compile(ETCD_PROTOS, [proto_root.join("etcd")])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(etcd_descriptors)?;
    Ok(())
}
