//! Generates the gRPC stubs from the repository's `protos/gradserve/v1/gradserve.proto` into
//! `OUT_DIR` (never committed), with tonic-prost-build and the `protoc` on the PATH (Debian's
//! protobuf-compiler; `PROTOC` names another). README.md says why not a vendored protoc.
//!
//! The crate is a client only. The service's server trait goes to `OUT_DIR/server`, on the
//! crate's own messages (`gradserve::pb`), for tests/retry.rs's in-process server alone.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protos");
    let proto = protos.join("gradserve/v1/gradserve.proto");
    let server_dir = PathBuf::from(std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&server_dir)?;
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    let compile = |builder: tonic_prost_build::Builder| {
        builder.compile_protos(&[&proto], &[&protos]).map_err(|error| {
            format!(
                "{error}\nThe gradserve crate compiles gradserve.proto with protoc: install it \
                 (`apt-get install protobuf-compiler`) or set PROTOC to its path."
            )
        })
    };
    compile(tonic_prost_build::configure().build_server(false))?;
    compile(
        tonic_prost_build::configure()
            .build_client(false)
            .generate_default_stubs(true)
            .extern_path(".gradserve.v1", "::gradserve::pb")
            .out_dir(&server_dir),
    )?;
    Ok(())
}
