//! Generates the gRPC stubs from the repository's `protos/gradserve/v1/gradserve.proto` into
//! `OUT_DIR` (never committed), with tonic-prost-build and the `protoc` on the PATH (Debian's
//! protobuf-compiler; `PROTOC` names another). README.md says why not a vendored protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protos");
    let proto = protos.join("gradserve/v1/gradserve.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    tonic_prost_build::configure().build_server(false).compile_protos(&[proto], &[protos]).map_err(
        |error| {
            format!(
                "{error}\nThe gradserve crate compiles gradserve.proto with protoc: install it \
                 (`apt-get install protobuf-compiler`) or set PROTOC to its path."
            )
            .into()
        },
    )
}
