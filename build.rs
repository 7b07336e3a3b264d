//! Generates the C header with cbindgen and gives the shared library its soname.
//! The header is written to `<target>/<profile>/bufpool.h`; `make header`
//! copies it to `include/bufpool.h`, and `make test` fails when they differ.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbufpool.so.0");
    // Never unmapped by dlclose: threads run our pthread key destructor (the
    // thread cache's exit hook) when they exit, whenever that is.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");

    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    let bindings = cbindgen::Builder::new()
        .with_src(dir.join("src/lib.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen can parse the sources");
    bindings.write_to_file(out.join("bufpool.h"));
    // OUT_DIR is <target>/<profile>/build/bufpool-<hash>/out.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        bindings.write_to_file(profile_dir.join("bufpool.h"));
    }
}
