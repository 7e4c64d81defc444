//! Builds the browser view (`web/ui/`, a Vite project) into `web/ui/dist` when it is missing or older
//! than its sources, and writes `$OUT_DIR/assets.rs`, which embeds every file of `web/ui/dist` in the
//! binary. So `cargo build` on a fresh checkout needs npm and the registry once, and the binary
//! needs neither (nor the internet) at run time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

fn newest(path: &Path, out: &mut Vec<PathBuf>) -> SystemTime {
    let mut t = SystemTime::UNIX_EPOCH;
    let Ok(meta) = std::fs::metadata(path) else { return t };
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            t = t.max(newest(&entry.path(), out));
        }
    } else {
        out.push(path.to_owned());
        t = meta.modified().unwrap_or(t);
    }
    t
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn npm(web: &Path, args: &[&str]) {
    let status = Command::new("npm").args(args).current_dir(web).status().unwrap_or_else(|e| {
        panic!("cannot run `npm {}` in {} ({e}); install Node.js 20+ with npm", args.join(" "), web.display())
    });
    assert!(status.success(), "`npm {}` in {} failed with {status}", args.join(" "), web.display());
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = manifest.join("ui").canonicalize().expect("the ui/ front-end project inside the web crate");
    let mut inputs = Vec::new();
    let mut sources = SystemTime::UNIX_EPOCH;
    for name in ["index.html", "package.json", "package-lock.json", "vite.config.js", "src", "public", "app", "tip"] {
        sources = sources.max(newest(&web.join(name), &mut inputs));
    }
    println!("cargo:rerun-if-changed={}", web.join("src").display());
    println!("cargo:rerun-if-changed={}", web.join("app").display());
    println!("cargo:rerun-if-changed={}", web.join("dist").display());
    for f in &inputs {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let dist = web.join("dist");
    let built = mtime(&dist.join("index.html"));
    if built.is_none_or(|b| b < sources) {
        let lock = mtime(&web.join("package-lock.json"));
        let installed = mtime(&web.join("node_modules/.package-lock.json"));
        if installed.is_none() || lock > installed {
            npm(&web, &["ci", "--no-audit", "--no-fund"]);
        }
        npm(&web, &["run", "build"]);
    }
    let mut files = Vec::new();
    newest(&dist, &mut files);
    files.sort();
    let mut code = String::from("/// Every file of `web/ui/dist`: path relative to it, and the bytes.\n");
    code.push_str("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for f in &files {
        let rel = f.strip_prefix(&dist).expect("under dist").to_string_lossy().replace('\\', "/");
        code.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", f.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("assets.rs");
    std::fs::write(&out, code).expect("writing assets.rs");
}
