//! Generates the C header with cbindgen and gives the shared library its soname.
//! The header is written to `<target>/<profile>/bufpool.h`; `make header`
//! copies it to `include/bufpool.h`, and `make test` fails when they differ.
//!
//! The version has one source, `version` in Cargo.toml: the soname
//! (`libbufpool.so.MAJOR`) and the header's `BUFPOOL_VERSION*` macros are
//! derived from it here, `bufpool_version()` in `src/ffi/version.rs`, and
//! the Makefile's `VERSION` from the same line.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("cargo sets {k}"));
    let (major, minor, patch) =
        (env("CARGO_PKG_VERSION_MAJOR"), env("CARGO_PKG_VERSION_MINOR"), env("CARGO_PKG_VERSION_PATCH"));
    let soname = format!("libbufpool.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    // Never unmapped by dlclose: threads run our pthread key destructor (the
    // thread cache's exit hook) when they exit, whenever that is.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");

    let dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env("OUT_DIR"));
    // The thread-local word of the caches, defined in asm (src/cache/current.rs):
    // rustc's export list names only Rust items, so a second version script
    // (GNU ld merges them) exports it for the header's inline fast path.
    let map = out.join("exports.map");
    std::fs::write(&map, "{ global: bufpool_fast_v1; };\n").expect("OUT_DIR is writable");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={}", map.display());
    let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    let version = format!(
        "\n/**\n * The version of this header: MAJOR.MINOR.PATCH. bufpool_version() returns\n \
         * the library's; the soname, libbufpool.so.MAJOR, changes with MAJOR.\n */\n\
         #define BUFPOOL_VERSION_MAJOR {major}\n#define BUFPOOL_VERSION_MINOR {minor}\n\
         #define BUFPOOL_VERSION_PATCH {patch}\n#define BUFPOOL_VERSION \"{}\"\n\n",
        env("CARGO_PKG_VERSION")
    );
    config.after_includes = Some(version + config.after_includes.as_deref().unwrap_or(""));
    let bindings = cbindgen::Builder::new()
        .with_src(dir.join("src/lib.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen can parse the sources");
    bindings.write_to_file(out.join("bufpool.h"));
    // OUT_DIR is <target>/<profile>/build/bufpool-<hash>/out.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        bindings.write_to_file(profile_dir.join("bufpool.h"));
        // The soname beside the .so, so that a plain `cargo build` gives a
        // library a C program can link (-L target/release -lbufpool) and
        // run (LD_LIBRARY_PATH=target/release). It dangles until rustc has
        // written libbufpool.so.
        let link = profile_dir.join(&soname);
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        let _ = std::os::unix::fs::symlink("libbufpool.so", &link);
    }
}
