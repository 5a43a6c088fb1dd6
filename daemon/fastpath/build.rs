//! Embeds the eBPF object that `cargo xtask build-ebpf` writes, when it exists.
//!
//! With the object at `<workspace>/target/ebpf/connectopus-ebpf.o` (or at the path in the
//! build-time variable `CONNECTOPUS_EBPF_OBJECT`), sets `cfg(connectopus_embedded_ebpf)` and
//! passes the path in `CONNECTOPUS_EMBEDDED_EBPF` for `include_bytes!`; without it the crate
//! still builds, and `embedded_object()` returns `None`.
//!
//! The object's directory is watched (and created, so that there is something to watch):
//! building the object after the node re-runs this script and embeds it.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(connectopus_embedded_ebpf)");
    println!("cargo::rerun-if-env-changed=CONNECTOPUS_EBPF_OBJECT");
    let object = match std::env::var_os("CONNECTOPUS_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../../target/ebpf/connectopus-ebpf.o")
        }
    };
    if let Some(dir) = object.parent() {
        let _ = std::fs::create_dir_all(dir);
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    let is_elf = std::fs::read(&object).is_ok_and(|bytes| bytes.starts_with(b"\x7fELF"));
    if is_elf {
        let object = object.canonicalize().unwrap_or(object);
        println!("cargo::rustc-cfg=connectopus_embedded_ebpf");
        println!(
            "cargo::rustc-env=CONNECTOPUS_EMBEDDED_EBPF={}",
            object.display()
        );
    }
}
